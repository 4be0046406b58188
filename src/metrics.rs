//! Prometheus metrics (served at `/metrics`). Counters are atomics: each
//! task holds its own clones and never takes a lock per packet.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChannelLabel {
    pub channel: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub channel: String,
    pub state: CameraState,
}

/// What a camera's ingest is doing.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CameraState {
    /// Opening the connection or the RTSP session.
    Connecting,
    /// Pictures are arriving.
    Streaming,
    /// Waiting before the next reconnect.
    Backoff,
    /// The channel is stopped.
    Stopped,
}

impl CameraState {
    pub fn as_str(self) -> &'static str {
        match self {
            CameraState::Connecting => "connecting",
            CameraState::Streaming => "streaming",
            CameraState::Backoff => "backoff",
            CameraState::Stopped => "stopped",
        }
    }

    pub const ALL: [CameraState; 4] = [
        CameraState::Connecting,
        CameraState::Streaming,
        CameraState::Backoff,
        CameraState::Stopped,
    ];
}

impl EncodeLabelValue for CameraState {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        use std::fmt::Write as _;
        encoder.write_str(self.as_str())
    }
}

/// The registry and every metric family.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    frames: Family<ChannelLabel, Counter>,
    key_frames: Family<ChannelLabel, Counter>,
    packets: Family<ChannelLabel, Counter>,
    bytes: Family<ChannelLabel, Counter>,
    reconnects: Family<ChannelLabel, Counter>,
    camera_state: Family<StateLabel, Gauge>,
    mc_packets: Family<ChannelLabel, Counter>,
    mc_bytes: Family<ChannelLabel, Counter>,
    mc_syscalls: Family<ChannelLabel, Counter>,
    mc_errors: Family<ChannelLabel, Counter>,
    mc_skipped: Family<ChannelLabel, Counter>,
    rtcp_reports: Family<ChannelLabel, Counter>,
    clients: Family<TransportLabel, Gauge>,
    tcp_packets: Family<ChannelLabel, Counter>,
    tcp_bytes: Family<ChannelLabel, Counter>,
    key_frame_skips: Family<ChannelLabel, Counter>,
    stall_disconnects: Family<ChannelLabel, Counter>,
    track_frames: Family<ChannelLabel, Counter>,
    track_errors: Family<ChannelLabel, Counter>,
    rtsp_unauthorized: Counter,
    rtsp_refused: Counter,
    record: RecordFamilies,
    pub failover: FailoverMetrics,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServerLabel {
    pub server: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServerStateLabel {
    pub server: String,
    pub state: &'static str,
}

/// The failover controller's series (see the README's Failover section).
#[derive(Clone, Default)]
pub struct FailoverMetrics {
    /// 1 for each server of the site, labelled with its state as this
    /// server sees it.
    pub server_state: Family<ServerStateLabel, Gauge>,
    /// Servers this one took over, by owner.
    pub takeovers: Family<ServerLabel, Counter>,
    /// The last takeover, by owner: from deciding the owner is broken to
    /// this server's first packet on the owner's groups.
    pub takeover_seconds: Family<ServerLabel, Gauge<f64, AtomicU64>>,
    /// Roles this server took back from a failover server.
    pub failbacks: Counter,
    /// The last failback: the failover server's last packet to this
    /// server's first, on its groups.
    pub failback_gap_seconds: Gauge<f64, AtomicU64>,
    /// Material copied back from a failover server.
    pub copied_segments: Counter,
    pub copied_bytes: Counter,
    /// Multicast sends refused by this server's fence (etcd: the lease
    /// not confirmed in time; embedded: the recorder cut off from the
    /// site, or paused past its fence).
    pub fenced_sends: Counter,
    /// Beacons heard and verified (the site key's, fresh, not replayed).
    pub beacons_verified: Counter,
    /// Datagrams on the beacon group refused, by reason (`malformed`,
    /// `forged`, `unknown_server`, `replayed`, `stale`, `inconsistent`).
    pub beacons_rejected: Family<ReasonLabel, Counter>,
    /// Beacons this server sent.
    pub beacons_sent: Counter,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

/// The recorder's series, by channel.
#[derive(Clone, Default)]
struct RecordFamilies {
    frames: Family<ChannelLabel, Counter>,
    bytes: Family<ChannelLabel, Counter>,
    segments: Family<ChannelLabel, Counter>,
    dropped_frames: Family<ChannelLabel, Counter>,
}

/// One channel's recorder counters.
#[derive(Clone, Default)]
pub struct RecordMetrics {
    pub frames: Counter,
    pub bytes: Counter,
    pub segments: Counter,
    pub dropped_frames: Counter,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransportLabel {
    pub channel: String,
    pub transport: String,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut r = Registry::with_prefix("mcrelay");
        let frames = Family::default();
        let key_frames = Family::default();
        let packets = Family::default();
        let bytes = Family::default();
        let reconnects = Family::default();
        let camera_state = Family::default();
        let mc_packets = Family::default();
        let mc_bytes = Family::default();
        let mc_syscalls = Family::default();
        let mc_errors = Family::default();
        let mc_skipped = Family::default();
        let rtcp_reports = Family::default();
        let clients = Family::default();
        let tcp_packets = Family::default();
        let tcp_bytes = Family::default();
        let key_frame_skips = Family::default();
        let stall_disconnects = Family::default();
        let track_frames = Family::default();
        let track_errors = Family::default();
        let rtsp_unauthorized = Counter::default();
        let rtsp_refused = Counter::default();
        let record = RecordFamilies::default();
        r.register(
            "recorded_frames",
            "Access units written to material segments",
            record.frames.clone(),
        );
        r.register(
            "recorded_bytes",
            "Bytes of material (MPEG-TS) written",
            record.bytes.clone(),
        );
        r.register(
            "recorded_segments",
            "Material segments completed and indexed",
            record.segments.clone(),
        );
        r.register(
            "record_dropped_frames",
            "Access units not recorded: disk queue full, disk broken or no usable disk",
            record.dropped_frames.clone(),
        );
        r.register(
            "rtsp_clients",
            "Workstations playing the channel, by transport (tcp, multicast)",
            clients.clone(),
        );
        r.register(
            "tcp_packets",
            "RTP packets written to TCP (interleaved) clients",
            tcp_packets.clone(),
        );
        r.register(
            "tcp_bytes",
            "Bytes written to TCP (interleaved) clients, framing included",
            tcp_bytes.clone(),
        );
        r.register(
            "tcp_key_frame_skips",
            "Times a TCP client fell behind and skipped to the next key frame",
            key_frame_skips.clone(),
        );
        r.register(
            "tcp_stall_disconnects",
            "TCP clients dropped because their socket accepted nothing for the stall time",
            stall_disconnects.clone(),
        );
        r.register(
            "track_frames",
            "Audio and metadata frames received from the camera and packetized",
            track_frames.clone(),
        );
        r.register(
            "track_errors",
            "Audio and metadata frames dropped: empty or too large for their RTP payload format",
            track_errors.clone(),
        );
        r.register(
            "rtsp_unauthorized",
            "RTSP requests answered 401",
            rtsp_unauthorized.clone(),
        );
        r.register(
            "rtsp_refused",
            "RTSP clients refused over a limit (503)",
            rtsp_refused.clone(),
        );
        r.register(
            "channel_frames",
            "Access units received from the camera and packetized",
            frames.clone(),
        );
        r.register(
            "channel_key_frames",
            "Key frames (IDR / IRAP) received",
            key_frames.clone(),
        );
        r.register(
            "channel_packets",
            "RTP packets built (once, shared by every sink)",
            packets.clone(),
        );
        r.register(
            "channel_bytes",
            "RTP bytes built (headers included)",
            bytes.clone(),
        );
        r.register(
            "camera_reconnects",
            "Camera sessions that ended and were retried",
            reconnects.clone(),
        );
        r.register(
            "camera_state",
            "1 for the camera's current ingest state",
            camera_state.clone(),
        );
        r.register(
            "multicast_packets",
            "RTP packets sent to the channel's multicast group",
            mc_packets.clone(),
        );
        r.register(
            "multicast_bytes",
            "RTP bytes (UDP payload) sent to the multicast group",
            mc_bytes.clone(),
        );
        r.register(
            "multicast_syscalls",
            "System calls made to send RTP to the multicast group",
            mc_syscalls.clone(),
        );
        r.register(
            "multicast_send_errors",
            "Multicast sends that failed (the rest of the frame was dropped)",
            mc_errors.clone(),
        );
        r.register(
            "multicast_skipped_frames",
            "Frames (partly) dropped because the socket send buffer was full",
            mc_skipped.clone(),
        );
        r.register(
            "rtcp_sender_reports",
            "RTCP sender reports sent",
            rtcp_reports.clone(),
        );
        let failover = FailoverMetrics::default();
        r.register(
            "failover_server_state",
            "1 for each server of the site, by its state as this server sees it",
            failover.server_state.clone(),
        );
        r.register(
            "failover_takeovers",
            "Servers this one took over, by owner",
            failover.takeovers.clone(),
        );
        r.register(
            "failover_takeover_seconds",
            "The last takeover of the owner: deciding it is broken to the first packet on its groups",
            failover.takeover_seconds.clone(),
        );
        r.register(
            "failover_failbacks",
            "Roles this server took back from a failover server",
            failover.failbacks.clone(),
        );
        r.register(
            "failover_failback_gap_seconds",
            "The last failback: the failover server's last packet to this server's first on its groups",
            failover.failback_gap_seconds.clone(),
        );
        r.register(
            "failover_copied_segments",
            "Segments copied back from a failover server",
            failover.copied_segments.clone(),
        );
        r.register(
            "failover_copied_bytes",
            "Bytes of material copied back from a failover server",
            failover.copied_bytes.clone(),
        );
        r.register(
            "failover_fenced_sends",
            "Multicast sends refused by this server's fence (etcd: its lease not confirmed within lease_ttl / 2; embedded: cut off from the site, or paused, past half its inaccessible_period)",
            failover.fenced_sends.clone(),
        );
        // Every reason from zero, so that a first forgery shows as a rise.
        for reason in crate::failover::beacon::Rejection::REASONS {
            let _ = failover
                .beacons_rejected
                .get_or_create(&ReasonLabel { reason });
        }
        r.register(
            "failover_beacons_verified",
            "Beacons heard on the beacon group and verified with the site key",
            failover.beacons_verified.clone(),
        );
        r.register(
            "failover_beacons_rejected",
            "Datagrams on the beacon group refused, by reason (forged: not the site key's)",
            failover.beacons_rejected.clone(),
        );
        r.register(
            "failover_beacons_sent",
            "Beacons this server sent on the beacon group",
            failover.beacons_sent.clone(),
        );
        Metrics {
            failover,
            registry: Arc::new(r),
            frames,
            key_frames,
            packets,
            bytes,
            reconnects,
            camera_state,
            mc_packets,
            mc_bytes,
            mc_syscalls,
            mc_errors,
            mc_skipped,
            rtcp_reports,
            clients,
            tcp_packets,
            tcp_bytes,
            key_frame_skips,
            stall_disconnects,
            track_frames,
            track_errors,
            rtsp_unauthorized,
            rtsp_refused,
            record,
        }
    }

    /// The recorder counters of one channel, created on first use.
    pub fn record(&self, id: u32) -> RecordMetrics {
        let l = ChannelLabel {
            channel: id.to_string(),
        };
        RecordMetrics {
            frames: get(&self.record.frames, &l),
            bytes: get(&self.record.bytes, &l),
            segments: get(&self.record.segments, &l),
            dropped_frames: get(&self.record.dropped_frames, &l),
        }
    }

    pub fn rtsp_unauthorized(&self) -> &Counter {
        &self.rtsp_unauthorized
    }

    pub fn rtsp_refused(&self) -> &Counter {
        &self.rtsp_refused
    }

    /// The counters of one channel, created on first use.
    pub fn channel(&self, id: u32) -> ChannelMetrics {
        let l = ChannelLabel {
            channel: id.to_string(),
        };
        // Each lookup returns a read guard on its family; taking them one
        // function call at a time drops each guard before the next lookup
        // (two lookups in one family within one statement deadlock when the
        // second must insert).
        let c = |f: &Family<ChannelLabel, Counter>| get(f, &l);
        let clients = |transport: &str| {
            get(
                &self.clients,
                &TransportLabel {
                    channel: l.channel.clone(),
                    transport: transport.into(),
                },
            )
        };
        let states = CameraState::ALL.map(|state| {
            get(
                &self.camera_state,
                &StateLabel {
                    channel: l.channel.clone(),
                    state,
                },
            )
        });
        ChannelMetrics {
            frames: c(&self.frames),
            key_frames: c(&self.key_frames),
            packets: c(&self.packets),
            bytes: c(&self.bytes),
            reconnects: c(&self.reconnects),
            states,
            mc_packets: c(&self.mc_packets),
            mc_bytes: c(&self.mc_bytes),
            mc_syscalls: c(&self.mc_syscalls),
            mc_errors: c(&self.mc_errors),
            mc_skipped: c(&self.mc_skipped),
            rtcp_reports: c(&self.rtcp_reports),
            clients_tcp: clients("tcp"),
            clients_multicast: clients("multicast"),
            tcp_packets: c(&self.tcp_packets),
            tcp_bytes: c(&self.tcp_bytes),
            key_frame_skips: c(&self.key_frame_skips),
            stall_disconnects: c(&self.stall_disconnects),
            track_frames: c(&self.track_frames),
            track_errors: c(&self.track_errors),
        }
    }

    /// Drops a channel's series (when this server stops emitting it).
    pub fn remove_channel(&self, id: u32) {
        let l = ChannelLabel {
            channel: id.to_string(),
        };
        for f in [
            &self.frames,
            &self.key_frames,
            &self.packets,
            &self.bytes,
            &self.reconnects,
            &self.mc_packets,
            &self.mc_bytes,
            &self.mc_syscalls,
            &self.mc_errors,
            &self.mc_skipped,
            &self.rtcp_reports,
            &self.tcp_packets,
            &self.tcp_bytes,
            &self.key_frame_skips,
            &self.stall_disconnects,
            &self.track_frames,
            &self.track_errors,
            &self.record.frames,
            &self.record.bytes,
            &self.record.segments,
            &self.record.dropped_frames,
        ] {
            f.remove(&l);
        }
        for transport in ["tcp", "multicast"] {
            self.clients.remove(&TransportLabel {
                channel: l.channel.clone(),
                transport: transport.into(),
            });
        }
        for state in CameraState::ALL {
            self.camera_state.remove(&StateLabel {
                channel: l.channel.clone(),
                state,
            });
        }
    }

    /// The Prometheus/OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// A family member, cloned out of its read guard (which this call drops).
fn get<L, M>(family: &Family<L, M>, label: &L) -> M
where
    L: Clone + std::hash::Hash + Eq,
    M: Clone + prometheus_client::metrics::TypedMetric + Default,
{
    family.get_or_create(label).clone()
}

/// One channel's counters.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_can_be_created_and_removed_repeatedly() {
        // Guards of one family must not overlap: this deadlocked once.
        let m = Metrics::new();
        for round in 0..3 {
            for id in 1..=4 {
                let c = m.channel(id);
                c.set_state(CameraState::Streaming);
                c.clients_tcp.inc();
            }
            let text = m.encode();
            assert!(
                text.contains("mcrelay_rtsp_clients{channel=\"4\",transport=\"tcp\"} 1"),
                "round {round}: {text}"
            );
            for id in 1..=4 {
                m.remove_channel(id);
            }
            assert!(!m.encode().contains("channel=\"4\""));
        }
    }
}

#[derive(Clone)]
pub struct ChannelMetrics {
    pub frames: Counter,
    pub key_frames: Counter,
    pub packets: Counter,
    pub bytes: Counter,
    pub reconnects: Counter,
    states: [Gauge; 4],
    pub mc_packets: Counter,
    pub mc_bytes: Counter,
    pub mc_syscalls: Counter,
    pub mc_errors: Counter,
    pub mc_skipped: Counter,
    pub rtcp_reports: Counter,
    pub clients_tcp: Gauge,
    pub clients_multicast: Gauge,
    pub tcp_packets: Counter,
    pub tcp_bytes: Counter,
    pub key_frame_skips: Counter,
    pub stall_disconnects: Counter,
    pub track_frames: Counter,
    pub track_errors: Counter,
}

impl ChannelMetrics {
    pub fn set_state(&self, state: CameraState) {
        for (s, g) in CameraState::ALL.iter().zip(&self.states) {
            g.set(i64::from(*s == state));
        }
    }
}
