//! A channel's multicast, sent by the camera task itself.
//!
//! The camera task that packetized a frame sends it to the group at once,
//! with one non-blocking system call per frame (GSO). Nothing waits: a full
//! socket buffer drops the rest of that frame (counted and logged), so
//! multicast can never hold up ingest, and no other task has to wake for each
//! frame: measured, that wake was the largest cost per channel. RTCP sender
//! reports ride along: the first with the first frame, then every interval
//! while frames flow; a BYE for a track that is replaced (a stopped
//! channel's stream goes on elsewhere or later, and says no goodbye).

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use crate::emit::MulticastSender;
use crate::metrics::ChannelMetrics;
use crate::rtp::Frame;
use crate::rtp::report_clock::{ReportClock, SLEW, Step};
use crate::rtp::rtcp::{DEFAULT_INTERVAL, RtcpSender};
use crate::spec::EmitSpec;

/// Delay before retrying a socket that could not be opened (interface
/// missing, address not configured yet).
const REOPEN_DELAY: Duration = Duration::from_secs(5);
/// Repeated send errors are logged at most this often.
const WARN_EVERY: Duration = Duration::from_secs(10);

pub struct Emitter {
    spec: EmitSpec,
    channel: u32,
    sender: Option<MulticastSender>,
    retry_at: Option<Instant>,
    rtcp: RtcpSender,
    last_warn: Option<Instant>,
    ssrc: u32,
    clock_rate: u32,
}

impl Emitter {
    pub fn new(channel: u32, spec: EmitSpec, cname: String, ssrc: u32) -> Self {
        Self::for_track(channel, spec, cname, ssrc, crate::media::time::CLOCK_RATE)
    }

    fn sender(&mut self, now: Instant) -> Option<&mut MulticastSender> {
        if self.sender.is_none() && self.retry_at.is_none_or(|t| now >= t) {
            match MulticastSender::open(
                self.spec.dest,
                self.spec.interface,
                self.spec.loopback,
                self.spec.mode,
            ) {
                Ok(s) => {
                    tracing::info!(channel = self.channel, group = %self.spec.dest.rtp(), interface = %self.spec.interface, mode = ?self.spec.mode, "sending to multicast group");
                    self.sender = Some(s);
                }
                Err(e) => {
                    tracing::error!(channel = self.channel, error = %e, "cannot open the multicast socket; retrying in {REOPEN_DELAY:?}");
                    self.retry_at = Some(now + REOPEN_DELAY);
                }
            }
        }
        self.sender.as_mut()
    }

    /// The emitter of a track besides video: its own destination, SSRC
    /// and RTP clock.
    /// Tracks of one channel share the CNAME, so receivers sync them
    /// (RFC 3550 6.5.1).
    pub fn for_track(
        channel: u32,
        spec: EmitSpec,
        cname: String,
        ssrc: u32,
        clock_rate: u32,
    ) -> Self {
        Emitter {
            spec,
            channel,
            sender: None,
            retry_at: None,
            rtcp: RtcpSender::new(ssrc, cname, DEFAULT_INTERVAL).with_clock_rate(clock_rate),
            last_warn: None,
            ssrc,
            clock_rate,
        }
    }

    pub fn ssrc(&self) -> u32 {
        self.ssrc
    }

    pub fn clock_rate(&self) -> u32 {
        self.clock_rate
    }

    /// Sends a frame (and an RTCP report if one is due).
    pub fn send(&mut self, frame: &Frame, m: &ChannelMetrics, now: Instant) {
        let channel = self.channel;
        let dest = self.spec.dest.rtp();
        // A server whose lease is no longer confirmed sends nothing: not
        // the frame, not its report.
        if !self.spec.fence.allows() {
            return;
        }
        let Some(sender) = self.sender(now) else {
            m.mc_errors.inc();
            return;
        };
        let (stats, res) = sender.try_send(&frame.packets);
        m.mc_packets.inc_by(stats.packets as u64);
        m.mc_syscalls.inc_by(stats.syscalls as u64);
        let bytes: usize = frame.packets[..stats.packets].iter().map(|p| p.len()).sum();
        m.mc_bytes.inc_by(bytes as u64);
        if let Err(e) = res {
            if e.kind() == std::io::ErrorKind::WouldBlock {
                m.mc_skipped.inc();
            } else {
                m.mc_errors.inc();
            }
            if self
                .last_warn
                .is_none_or(|t| now.duration_since(t) >= WARN_EVERY)
            {
                self.last_warn = Some(now);
                tracing::warn!(channel, group = %dest, error = %e, "multicast send failed; rest of the frame dropped");
            }
        }
        if stats.packets > 0 {
            self.rtcp.on_sent(frame, now);
        }
        // The clocks are read only when a report is due; the report states
        // the RTP time and the report time of the frame's arrival.
        if self.rtcp.poll_timeout().is_none_or(|due| now < due) {
            return;
        }
        if let Some(report) = self.rtcp.poll_report(now, report_time(now))
            && let Some(s) = self.sender.as_ref()
        {
            match s.try_send_rtcp(&report) {
                Ok(()) => {
                    m.rtcp_reports.inc();
                }
                Err(e) => tracing::debug!(channel, error = %e, "RTCP send failed"),
            }
        }
    }

    /// RFC 3550 6.6: say goodbye so receivers drop the source at once.
    pub fn bye(&mut self, now: Instant) {
        if let Some(s) = &self.sender
            && self.spec.fence.allows()
        {
            let _ = s.try_send_rtcp(&self.rtcp.bye(now, report_time(now)));
        }
    }
}

/// The process's report clock: one for every track, so that the tracks of
/// a channel stay in sync.
static REPORT_CLOCK: Mutex<ReportClock> = Mutex::new(ReportClock::new());

/// The time RTCP sender reports state for the instant `at`: the wall clock
/// carried on by the monotonic clock ([`ReportClock`]), so that a step of
/// the host's clock does not move every frame the viewers place by the
/// reports. Both clocks are read together, under the lock.
pub fn report_time(at: Instant) -> SystemTime {
    let mut clock = REPORT_CLOCK.lock().unwrap_or_else(PoisonError::into_inner);
    let (now, wall) = (Instant::now(), SystemTime::now());
    match clock.observe(now, wall) {
        Some(Step::Stepped { offset_secs }) => tracing::warn!(
            offset_secs,
            "the wall clock stepped {offset_secs:+.3} s from the time RTCP sender reports state; \
             the reports follow it at {} ppm only, so that viewers keep decoding",
            SLEW * 1e6
        ),
        Some(Step::Back) => {
            tracing::info!("the wall clock and the time RTCP sender reports state met again")
        }
        None => {}
    }
    clock.at(at).unwrap_or(wall)
}
