//! The multicast sender task of one channel: subscribes to the channel's
//! ring, sends each frame to the group, and RTCP sender reports beside it.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use crate::channel::{Channel, EmitSpec};
use crate::emit::MulticastSender;
use crate::rtp::rtcp::{DEFAULT_INTERVAL, RtcpSender};

/// Delay before retrying to open a socket that failed (interface missing,
/// address not yet configured).
const REOPEN_DELAY: Duration = Duration::from_secs(5);

/// Repeated send errors are logged at most this often.
const WARN_EVERY: Duration = Duration::from_secs(10);

pub async fn run(channel: Arc<Channel>, spec: EmitSpec, cname: String, cancel: CancellationToken) {
    let id = channel.spec.id;
    let mut sender = loop {
        match MulticastSender::open(spec.dest, spec.interface, spec.loopback, spec.mode) {
            Ok(s) => break s,
            Err(e) => {
                tracing::error!(channel = id, error = %e, "cannot open the multicast socket; retrying");
                tokio::select! {
                    () = tokio::time::sleep(REOPEN_DELAY) => {}
                    () = cancel.cancelled() => return,
                }
            }
        }
    };
    tracing::info!(channel = id, group = %spec.dest.rtp(), interface = %spec.interface, mode = ?spec.mode, "sending to multicast group");
    let ssrc = channel.info.borrow().ssrc;
    let mut rtcp = RtcpSender::new(ssrc, cname, DEFAULT_INTERVAL);
    let mut rx = channel.subscribe();
    let m = channel.metrics.clone();
    // After missing frames, wait for a key frame so receivers never get a
    // picture whose references were skipped.
    let mut skipping = false;
    let mut last_warn: Option<Instant> = None;

    loop {
        let rtcp_due = rtcp.poll_timeout();
        tokio::select! {
            r = rx.recv() => match r {
                Ok(frame) => {
                    if skipping && !frame.key {
                        m.mc_skipped.inc();
                        continue;
                    }
                    skipping = false;
                    let (stats, res) = sender.send(&frame.packets).await;
                    m.mc_packets.inc_by(stats.packets as u64);
                    m.mc_syscalls.inc_by(stats.syscalls as u64);
                    let sent_bytes: usize = frame.packets[..stats.packets].iter().map(|p| p.len()).sum();
                    m.mc_bytes.inc_by(sent_bytes as u64);
                    let now = Instant::now();
                    if let Err(e) = res {
                        m.mc_errors.inc();
                        if last_warn.is_none_or(|t| now.duration_since(t) >= WARN_EVERY) {
                            last_warn = Some(now);
                            tracing::warn!(channel = id, group = %spec.dest.rtp(), error = %e, "multicast send failed; frame dropped");
                        }
                    }
                    if stats.packets > 0 {
                        rtcp.on_sent(&frame, now);
                    }
                }
                Err(RecvError::Lagged(n)) => {
                    m.mc_skipped.inc_by(n);
                    skipping = true;
                    tracing::warn!(channel = id, frames = n, "multicast sender fell behind; resuming at the next key frame");
                }
                Err(RecvError::Closed) => break,
            },
            () = sleep_until(rtcp_due) => {
                if let Some(report) = rtcp.poll_report(Instant::now(), SystemTime::now()) {
                    match sender.send_rtcp(&report).await {
                        Ok(()) => {
                            m.rtcp_reports.inc();
                        }
                        Err(e) => tracing::debug!(channel = id, error = %e, "RTCP send failed"),
                    }
                }
            }
            () = cancel.cancelled() => break,
        }
    }
    // RFC 3550 6.6: say goodbye so receivers drop the source at once.
    let _ = sender
        .send_rtcp(&rtcp.bye(Instant::now(), SystemTime::now()))
        .await;
}

async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}
