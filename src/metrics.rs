//! Prometheus metrics (served at `/metrics`). Counters are atomics: each
//! task holds its own clones and never takes a lock per packet.

use std::sync::Arc;

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
            "Frames the multicast sender skipped because it fell behind",
            mc_skipped.clone(),
        );
        r.register(
            "rtcp_sender_reports",
            "RTCP sender reports sent",
            rtcp_reports.clone(),
        );
        Metrics {
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
        }
    }

    /// The counters of one channel, created on first use.
    pub fn channel(&self, id: u32) -> ChannelMetrics {
        let l = ChannelLabel {
            channel: id.to_string(),
        };
        let states = CameraState::ALL.map(|state| {
            self.camera_state
                .get_or_create(&StateLabel {
                    channel: l.channel.clone(),
                    state,
                })
                .clone()
        });
        ChannelMetrics {
            frames: self.frames.get_or_create(&l).clone(),
            key_frames: self.key_frames.get_or_create(&l).clone(),
            packets: self.packets.get_or_create(&l).clone(),
            bytes: self.bytes.get_or_create(&l).clone(),
            reconnects: self.reconnects.get_or_create(&l).clone(),
            states,
            mc_packets: self.mc_packets.get_or_create(&l).clone(),
            mc_bytes: self.mc_bytes.get_or_create(&l).clone(),
            mc_syscalls: self.mc_syscalls.get_or_create(&l).clone(),
            mc_errors: self.mc_errors.get_or_create(&l).clone(),
            mc_skipped: self.mc_skipped.get_or_create(&l).clone(),
            rtcp_reports: self.rtcp_reports.get_or_create(&l).clone(),
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
        ] {
            f.remove(&l);
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

/// One channel's counters.
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
}

impl ChannelMetrics {
    pub fn set_state(&self, state: CameraState) {
        for (s, g) in CameraState::ALL.iter().zip(&self.states) {
            g.set(i64::from(*s == state));
        }
    }
}
