//! RTCP sender reports (RFC 3550 6.4.1) with SDES CNAME, and BYE. Sans-IO:
//! the emitter tells [`RtcpSender`] what it sent and asks it, with the
//! current monotonic and wall-clock time, for the report that is due.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::Frame;

/// Seconds from the NTP epoch (1900) to the Unix epoch (1970).
const NTP_UNIX_OFFSET: u64 = 2_208_988_800;

/// The sender-report interval. Reports go out with frames, so a receiver
/// that joins a channel's group learns the RTP-to-wall-clock mapping within
/// the interval plus a frame interval: 0.54 s at 25 fps, 1 s at 1 fps.
///
/// RFC 3550 6.2 bounds RTCP by bandwidth: at most 5% of the session
/// bandwidth, a quarter of that for senders when they are at most a quarter
/// of the members (here one sender per group). One report is an SR (28
/// bytes) and an SDES CNAME chunk (about 28 bytes: `ch1@recorder-1`) in one
/// UDP datagram, 84 bytes with the IP and UDP headers, 672 bits. The
/// sender's share of a 1 Mbit/s camera is 12.5 kbit/s, one report per 54 ms;
/// of 4 Mbit/s, one per 13 ms. The fixed 5 s minimum on top of that is
/// RECOMMENDED, for low-bandwidth sessions; an active sender MAY use the
/// reduced minimum of 360 / (session bandwidth in kbit/s) seconds instead:
/// 0.36 s at 1 Mbit/s, 0.09 s at 4 Mbit/s. 0.5 s is longer than both for
/// every stream of 720 kbit/s or more, which camera streams are; below that
/// it is shorter than the reduced minimum (0.5 s is 1.44 s's third at the
/// demo's 250 kbit/s) but its 1.3 kbit/s is still within the 5% of any
/// stream above 27 kbit/s, the bound that protects the network. No random
/// spread (6.3.1): it keeps many members of one group from reporting in
/// step, and each group has one sender.
pub const DEFAULT_INTERVAL: Duration = Duration::from_millis(500);

/// How far a frame may arrive off the reports' RTP-to-real-time mapping
/// before the mapping moves to it: more than network jitter, less than a
/// viewer notices as lip sync.
pub const REANCHOR: Duration = Duration::from_millis(100);

/// How long frames must keep arriving [`REANCHOR`] late before the mapping
/// follows them: a stall or a busy host delays frames for a moment; a
/// camera clock that runs slow, or a gap the time line did not see, does
/// so for good.
pub const LATE_FOR: Duration = Duration::from_secs(5);

/// When the real-time mapping of a stream moves ([`RtcpSender::anchor`]):
/// at once to a frame that arrives [`REANCHOR`] earlier than it implies
/// (the anchor itself came late, or a new camera session began), and to
/// one that arrives that much later only after frames have done so for
/// [`LATE_FOR`]. A move back in time would make receivers that sync by
/// reports see their timestamps repeat, so it waits to be sure.
#[derive(Debug, Default, Clone, Copy)]
pub struct AnchorRule {
    late_since: Option<Instant>,
}

impl AnchorRule {
    /// Whether a frame that arrived `at`, where the anchor implies
    /// `implied` (`None`: no anchor yet), moves the anchor to it.
    pub fn moves(&mut self, implied: Option<Instant>, at: Instant) -> bool {
        let Some(implied) = implied else {
            self.late_since = None;
            return true;
        };
        if implied > at + REANCHOR {
            self.late_since = None;
            return true;
        }
        if at > implied + REANCHOR {
            let since = *self.late_since.get_or_insert(at);
            if at.saturating_duration_since(since) >= LATE_FOR {
                self.late_since = None;
                return true;
            }
            return false;
        }
        self.late_since = None;
        false
    }
}

/// A 64-bit NTP timestamp: seconds since 1900 in the high word, fraction in the low.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct NtpTime(pub u64);

impl NtpTime {
    pub fn from_system(t: SystemTime) -> Self {
        let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
        let secs = d.as_secs() + NTP_UNIX_OFFSET;
        let frac = (u64::from(d.subsec_nanos()) << 32) / 1_000_000_000;
        NtpTime((secs << 32) | frac)
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct SenderReport {
    pub ssrc: u32,
    pub ntp: NtpTime,
    pub rtp_timestamp: u32,
    pub packet_count: u32,
    pub octet_count: u32,
}

impl SenderReport {
    /// SR with no reception report blocks (RFC 3550 6.4.1).
    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&[0x80, 200]); // V=2, P=0, RC=0; PT=SR
        out.extend_from_slice(&6u16.to_be_bytes()); // length in words - 1
        out.extend_from_slice(&self.ssrc.to_be_bytes());
        out.extend_from_slice(&self.ntp.0.to_be_bytes());
        out.extend_from_slice(&self.rtp_timestamp.to_be_bytes());
        out.extend_from_slice(&self.packet_count.to_be_bytes());
        out.extend_from_slice(&self.octet_count.to_be_bytes());
    }
}

/// SDES with one chunk holding the CNAME item (RFC 3550 6.5), which every
/// compound packet must carry.
fn write_sdes_cname(ssrc: u32, cname: &str, out: &mut Vec<u8>) {
    let name = &cname.as_bytes()[..cname.len().min(255)];
    // ssrc + type + len + text + at least one null, padded to 32 bits.
    let chunk_len = (4 + 2 + name.len() + 1).div_ceil(4) * 4;
    out.extend_from_slice(&[0x81, 202]); // V=2, SC=1; PT=SDES
    out.extend_from_slice(&((chunk_len / 4) as u16).to_be_bytes());
    let start = out.len();
    out.extend_from_slice(&ssrc.to_be_bytes());
    out.extend_from_slice(&[1, name.len() as u8]); // CNAME
    out.extend_from_slice(name);
    out.resize(start + chunk_len, 0);
}

fn write_bye(ssrc: u32, out: &mut Vec<u8>) {
    out.extend_from_slice(&[0x81, 203]); // V=2, SC=1; PT=BYE
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&ssrc.to_be_bytes());
}

/// Sender-side RTCP state of one RTP stream.
#[derive(Debug)]
pub struct RtcpSender {
    ssrc: u32,
    cname: String,
    interval: Duration,
    /// The stream's RTP clock (90 kHz for video).
    clock_rate: u32,
    packets: u32,
    octets: u32,
    /// The RTP timestamp and instant that every report's mapping follows
    /// ([`RtcpSender::anchor`]).
    anchor: Option<(u32, Instant)>,
    rule: AnchorRule,
    last_sent: Option<Instant>,
    next_report: Option<Instant>,
}

impl RtcpSender {
    pub fn new(ssrc: u32, cname: String, interval: Duration) -> Self {
        RtcpSender {
            ssrc,
            cname,
            interval,
            clock_rate: crate::media::time::CLOCK_RATE,
            packets: 0,
            octets: 0,
            anchor: None,
            rule: AnchorRule::default(),
            last_sent: None,
            next_report: None,
        }
    }

    /// The same for a stream with another RTP clock (audio).
    pub fn with_clock_rate(mut self, clock_rate: u32) -> Self {
        self.clock_rate = clock_rate.max(1);
        self
    }

    /// Records a frame sent at `now` (all of its packets). The first frame
    /// of the stream makes a report due at once.
    pub fn on_sent(&mut self, frame: &Frame, now: Instant) {
        self.packets = self.packets.wrapping_add(frame.packets.len() as u32);
        self.octets = self.octets.wrapping_add(frame.payload_len() as u32);
        self.anchor(frame.rtp_timestamp, frame.arrival);
        self.last_sent = Some(now);
        if self.next_report.is_none() {
            self.next_report = Some(now);
        }
    }

    /// When the next report is due, if one is.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_report
    }

    /// The compound packet (SR + SDES) due at `now`, if any. A stream that
    /// has sent nothing for two intervals is no longer a sender (RFC 3550
    /// 6.4): it reports nothing until it sends again.
    pub fn poll_report(&mut self, now: Instant, wall: SystemTime) -> Option<Vec<u8>> {
        let due = self.next_report?;
        if now < due {
            return None;
        }
        let sending = self
            .last_sent
            .is_some_and(|t| now.saturating_duration_since(t) < 2 * self.interval);
        if !sending {
            self.next_report = None;
            return None;
        }
        self.next_report = Some(now + self.interval);
        let mut out = Vec::with_capacity(64);
        self.sender_report(now, wall)?.write(&mut out);
        write_sdes_cname(self.ssrc, &self.cname, &mut out);
        Some(out)
    }

    /// SR + SDES + BYE, for a stream that stops (RFC 3550 6.6).
    pub fn bye(&self, now: Instant, wall: SystemTime) -> Vec<u8> {
        let mut out = Vec::with_capacity(72);
        if let Some(sr) = self.sender_report(now, wall) {
            sr.write(&mut out);
        } else {
            // RR with no blocks: a compound packet must start with SR or RR.
            out.extend_from_slice(&[0x80, 201, 0, 1]);
            out.extend_from_slice(&self.ssrc.to_be_bytes());
        }
        write_sdes_cname(self.ssrc, &self.cname, &mut out);
        write_bye(self.ssrc, &mut out);
        out
    }

    /// The instant frame (rtp, at) implies for RTP time `r`: its arrival
    /// moved by the media time between them.
    fn implied(&self, (rtp, at): (u32, Instant), r: u32) -> Option<Instant> {
        let ticks = i64::from(r.wrapping_sub(rtp) as i32);
        let d = Duration::from_nanos(
            (u128::from(ticks.unsigned_abs()) * 1_000_000_000 / u128::from(self.clock_rate)) as u64,
        );
        if ticks >= 0 {
            at.checked_add(d)
        } else {
            at.checked_sub(d)
        }
    }

    /// The mapping of RTP time to real time that reports state: fixed at
    /// the stream's first frame, so that arrival jitter never moves it from
    /// report to report (a receiver that syncs tracks by reports sees every
    /// move as a jump of its timestamps). It moves by [`AnchorRule`]: to a
    /// frame [`REANCHOR`] early at once, to frames that late only after
    /// [`LATE_FOR`]. The channel's tracks besides video are
    /// placed by the same rule on the same frames (`channel::core`), so
    /// their reports move together with the video's.
    fn anchor(&mut self, rtp: u32, at: Instant) {
        let implied = self.anchor.and_then(|a| self.implied(a, rtp));
        if self.rule.moves(implied, at) {
            self.anchor = Some((rtp, at));
        }
    }

    /// The report for `now`: its RTP timestamp extrapolated from the anchor
    /// by the real time since.
    pub fn sender_report(&self, now: Instant, wall: SystemTime) -> Option<SenderReport> {
        let (rtp, arrival) = self.anchor?;
        // A track's frame may stand for an instant after now (audio that
        // arrives with less delay than the video it is placed by): then
        // the time runs back from it.
        let ticks =
            |d: Duration| (d.as_nanos() * u128::from(self.clock_rate) / 1_000_000_000) as u32;
        let rtp_now = if now >= arrival {
            rtp.wrapping_add(ticks(now - arrival))
        } else {
            rtp.wrapping_sub(ticks(arrival - now))
        };
        Some(SenderReport {
            ssrc: self.ssrc,
            ntp: NtpTime::from_system(wall),
            rtp_timestamp: rtp_now,
            packet_count: self.packets,
            octet_count: self.octets,
        })
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::media::MediaTime;
    use crate::rtp::RtpPacket;

    fn frame(rtp_timestamp: u32, arrival: Instant, payloads: &[usize]) -> Frame {
        let packets = payloads
            .iter()
            .map(|n| RtpPacket::new(Bytes::from(vec![0x80; 12]), Bytes::from(vec![1; *n])))
            .collect();
        Frame {
            packets,
            key: false,
            time: MediaTime(0),
            rtp_timestamp,
            arrival,
            track: 0,
            interleaved: Default::default(),
        }
    }

    #[test]
    fn ntp_time_of_unix_epoch_and_half_second() {
        assert_eq!(NtpTime::from_system(UNIX_EPOCH).0, NTP_UNIX_OFFSET << 32);
        let t = UNIX_EPOCH + Duration::from_millis(1500);
        assert_eq!(
            NtpTime::from_system(t).0,
            ((NTP_UNIX_OFFSET + 1) << 32) | (1 << 31)
        );
    }

    #[test]
    fn first_report_at_stream_start_then_every_interval() {
        let t0 = Instant::now();
        let wall = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut s = RtcpSender::new(0xabcd, "ch1@recorder-1".into(), DEFAULT_INTERVAL);
        assert_eq!(s.poll_timeout(), None);
        s.on_sent(&frame(1000, t0, &[1400, 600]), t0);
        assert_eq!(s.poll_timeout(), Some(t0));
        let raw = s
            .poll_report(t0 + Duration::from_millis(20), wall)
            .expect("due at start");
        assert!(s.poll_report(t0 + DEFAULT_INTERVAL / 2, wall).is_none());
        assert_eq!(
            s.poll_timeout(),
            Some(t0 + Duration::from_millis(20) + DEFAULT_INTERVAL)
        );

        // Decode with webrtc-rs's rtcp crate, an independent implementation.
        let pkts = rtcp::packet::unmarshal(&mut &raw[..]).expect("valid compound RTCP");
        let sr = pkts[0]
            .as_any()
            .downcast_ref::<rtcp::sender_report::SenderReport>()
            .expect("SR first");
        assert_eq!(sr.ssrc, 0xabcd);
        assert_eq!(sr.packet_count, 2);
        assert_eq!(sr.octet_count, 2000);
        // 20 ms after the frame arrived: 1800 ticks later.
        assert_eq!(sr.rtp_time, 2800);
        assert_eq!(sr.ntp_time >> 32, 1_700_000_000 + NTP_UNIX_OFFSET);
        let sdes = pkts[1]
            .as_any()
            .downcast_ref::<rtcp::source_description::SourceDescription>()
            .expect("SDES second");
        assert_eq!(sdes.chunks[0].items[0].text, Bytes::from("ch1@recorder-1"));
    }

    /// Drives a sender at `fps` for 20 s of virtual time and returns when
    /// each report went out (reports go out with frames, as the emitter
    /// sends them).
    fn report_times(fps: u32) -> Vec<Duration> {
        // 1 fps: a report with every frame, 1 s apart; 2 fps and more: at
        // most the interval and a frame interval.
        let t0 = Instant::now();
        let wall = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut s = RtcpSender::new(1, "ch1@recorder-1".into(), DEFAULT_INTERVAL);
        let step = Duration::from_secs(1) / fps;
        let mut out = Vec::new();
        for k in 0..20 * fps {
            let now = t0 + step * k;
            s.on_sent(&frame(k * 90_000 / fps, now, &[1400; 10]), now);
            if s.poll_report(now, wall + step * k).is_some() {
                out.push(now - t0);
            }
        }
        out
    }

    #[test]
    fn a_receiver_joining_at_any_moment_gets_a_report_within_a_second() {
        for fps in [1, 5, 25, 60] {
            let times = report_times(fps);
            let frame = Duration::from_secs(1) / fps;
            assert_eq!(
                times[0],
                Duration::ZERO,
                "{fps} fps: the first at the start"
            );
            // The longest wait of a receiver joining just after a report.
            let longest = times.windows(2).map(|w| w[1] - w[0]).max().unwrap();
            assert!(
                longest <= DEFAULT_INTERVAL + frame && longest <= Duration::from_secs(1),
                "{fps} fps: {longest:?} between reports"
            );
        }
    }

    #[test]
    fn reports_stay_within_the_senders_rtcp_share_of_a_camera_stream() {
        // RFC 3550 6.2: senders get 25% of the 5% of session bandwidth.
        let mut s = RtcpSender::new(1, "ch12@recorder-12".into(), DEFAULT_INTERVAL);
        let t0 = Instant::now();
        s.on_sent(&frame(0, t0, &[100]), t0);
        let report = s.poll_report(t0, SystemTime::now()).unwrap();
        let bits_per_s = (report.len() + 28) as f64 * 8.0 / DEFAULT_INTERVAL.as_secs_f64();
        let camera = 1_000_000.0; // 1 Mbit/s, a small camera stream
        assert!(
            bits_per_s <= 0.05 * 0.25 * camera,
            "{bits_per_s} bit/s of RTCP"
        );
        // And at or above the reduced minimum 360 / kbit/s from 720 kbit/s.
        assert!(DEFAULT_INTERVAL.as_secs_f64() >= 360.0 / 720.0);
    }

    #[test]
    fn jitter_does_not_move_the_mapping_from_report_to_report() {
        // 25 fps whose frames arrive 0-30 ms late: every report maps the
        // same instant to the same RTP time, that of the earliest arrival.
        let t0 = Instant::now();
        let wall = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let base = u32::MAX - 50_000;
        let mut s = RtcpSender::new(1, "x".into(), DEFAULT_INTERVAL);
        let mut mapped = Vec::new();
        for k in 0..100u32 {
            let late = Duration::from_millis(u64::from((k * 7919) % 31));
            let at = t0 + Duration::from_millis(40) * k + late;
            s.on_sent(
                &frame(k.wrapping_mul(3600).wrapping_add(base), at, &[100]),
                at,
            );
            if k >= 10 && k % 10 == 0 {
                // The RTP time of t0 + 10 s, as a report would state it.
                let when = t0 + Duration::from_secs(10);
                mapped.push(s.sender_report(when, wall).unwrap().rtp_timestamp);
            }
        }
        // Frame 0 arrived on time: t0 + 10 s is 900000 ticks after it.
        assert_eq!(mapped[0], base.wrapping_add(900_000));
        assert!(mapped.iter().all(|&m| m == mapped[0]), "{mapped:?}");
        // A stall of 300 ms does not move it; frames that stay 300 ms late
        // for 5 s (a slow camera clock) do.
        let when = t0 + Duration::from_secs(10);
        let late = |k: u32| t0 + Duration::from_millis(40) * k + Duration::from_millis(300);
        let rtp = |k: u32| k.wrapping_mul(3600).wrapping_add(base);
        s.on_sent(&frame(rtp(100), late(100), &[100]), late(100));
        assert_eq!(
            s.sender_report(when, wall).unwrap().rtp_timestamp,
            mapped[0]
        );
        for k in 101..300u32 {
            s.on_sent(&frame(rtp(k), late(k), &[100]), late(k));
        }
        let moved = s.sender_report(when, wall).unwrap().rtp_timestamp;
        assert_eq!(mapped[0].wrapping_sub(moved), 300 * 90, "300 ms later");
        // A frame 200 ms earlier than the mapping moves it at once.
        let early = t0 + Duration::from_millis(40) * 300 + Duration::from_millis(100);
        s.on_sent(&frame(rtp(300), early, &[100]), early);
        let back = s.sender_report(when, wall).unwrap().rtp_timestamp;
        assert_eq!(back.wrapping_sub(moved), 200 * 90, "200 ms earlier");
    }

    #[test]
    fn a_frame_standing_for_a_later_instant_maps_back_not_to_now() {
        let t0 = Instant::now();
        let mut s = RtcpSender::new(1, "x".into(), DEFAULT_INTERVAL).with_clock_rate(8000);
        // An audio frame placed 120 ms after now by the video's clock.
        s.on_sent(&frame(16_000, t0 + Duration::from_millis(120), &[160]), t0);
        let sr = s.sender_report(t0, SystemTime::now()).unwrap();
        assert_eq!(sr.rtp_timestamp, 16_000 - 960, "120 ms at 8 kHz before it");
    }

    #[test]
    fn silent_stream_stops_reporting_and_bye_is_valid() {
        let t0 = Instant::now();
        let wall = SystemTime::now();
        let mut s = RtcpSender::new(7, "x".into(), DEFAULT_INTERVAL);
        s.on_sent(&frame(0, t0, &[100]), t0);
        assert!(s.poll_report(t0, wall).is_some());
        assert!(s.poll_report(t0 + Duration::from_secs(11), wall).is_none());
        assert_eq!(s.poll_timeout(), None);
        let bye = s.bye(t0, wall);
        let pkts = rtcp::packet::unmarshal(&mut &bye[..]).expect("valid BYE");
        assert_eq!(pkts.len(), 3);
        assert!(
            pkts[2]
                .as_any()
                .downcast_ref::<rtcp::goodbye::Goodbye>()
                .is_some()
        );
        // Never sent: BYE starts with an empty RR.
        let fresh = RtcpSender::new(9, "y".into(), DEFAULT_INTERVAL);
        assert!(rtcp::packet::unmarshal(&mut &fresh.bye(t0, wall)[..]).is_ok());
    }
}
