//! The runtime's plan of one channel: whose it is, where its camera is,
//! where it goes. Ingest, channel and failover all read it; the failover
//! controller makes specs of the channels a server covers.

use std::net::Ipv4Addr;

use crate::config::{
    ChannelConfig, Destination, IngestConfig, Protocol, ServerConfig, Source, plan,
};
use crate::emit::SendMode;
use crate::media::time::TimingPolicy;
use crate::media::{Codec, TrackKind};

/// Everything needed to run one channel on this server.
#[derive(Clone, Debug)]
pub struct ChannelSpec {
    pub id: u32,
    pub name: String,
    /// The server whose channel this is (this one, or one it covers).
    pub owner: String,
    pub source: Source,
    pub codec: Option<Codec>,
    pub timing: TimingPolicy,
    pub ingest: IngestConfig,
    /// Where to send it, when the owner's protocol is RTP multicast.
    pub multicast: Option<EmitSpec>,
    /// Encoders allowed to connect to a `tcp-listen://` source (empty: any).
    pub allow: Vec<crate::config::Allowed>,
    /// The camera's tracks to take (video always among them).
    pub tracks: Vec<TrackKind>,
    /// The sources its SDP lists when the owner's groups are
    /// source-specific ([`plan::ssm_sources`]; empty otherwise).
    pub ssm_sources: Vec<Ipv4Addr>,
}

#[derive(Clone, Copy, Debug)]
pub struct EmitSpec {
    /// The owner's group and port (the address plan), so that a takeover
    /// sends where workstations already listen.
    pub dest: Destination,
    /// This server's interface.
    pub interface: Ipv4Addr,
    pub loopback: bool,
    pub mode: SendMode,
    /// The owner's destinations of the channel's audio and metadata, when
    /// the channel takes them.
    pub audio: Option<Destination>,
    pub metadata: Option<Destination>,
    /// This server's fence: nothing goes out once it is past.
    pub fence: crate::emit::Fence,
    /// etcd: the epoch of the role this server emits under (the role
    /// key's create revision), in the RTCP CNAME so that a receiver can
    /// tell epochs apart.
    pub epoch: Option<i64>,
}

impl EmitSpec {
    /// Where a kind of track goes.
    pub fn track(&self, kind: TrackKind) -> Option<Destination> {
        match kind {
            TrackKind::Video => Some(self.dest),
            TrackKind::Audio => self.audio,
            TrackKind::Metadata => self.metadata,
        }
    }
}

impl ChannelSpec {
    /// A channel outside any site: no multicast, default ingest and timing
    /// (the camera simulator, benches, tests).
    pub fn standalone(id: u32, owner: &str, source: Source, codec: Codec) -> Self {
        ChannelSpec {
            id,
            name: String::new(),
            owner: owner.to_string(),
            source,
            codec: Some(codec),
            timing: TimingPolicy::Auto,
            ingest: IngestConfig::default(),
            multicast: None,
            allow: Vec::new(),
            tracks: TrackKind::ALL.to_vec(),
            ssm_sources: Vec::new(),
        }
    }

    /// The spec of `channel`, owned by `owner`, run by `local`.
    pub fn new(
        owner: &ServerConfig,
        channel: &ChannelConfig,
        local: &ServerConfig,
        mode: SendMode,
    ) -> Result<Self, String> {
        let multicast = match (&owner.multicast, owner.protocol) {
            (Some(mc), Protocol::RtpMulticast) => {
                let dest = plan::destination(mc, channel.id)?;
                let track = |kind| {
                    channel
                        .tracks
                        .contains(&kind)
                        .then(|| plan::track_destination(mc, channel.id, kind))
                        .transpose()
                };
                let (interface, loopback) = local
                    .multicast
                    .as_ref()
                    .map_or((mc.interface, mc.loopback), |l| (l.interface, l.loopback));
                Some(EmitSpec {
                    dest,
                    interface,
                    loopback,
                    mode,
                    audio: track(TrackKind::Audio)?,
                    metadata: track(TrackKind::Metadata)?,
                    fence: crate::emit::Fence::OPEN,
                    epoch: None,
                })
            }
            _ => None,
        };
        Ok(ChannelSpec {
            id: channel.id,
            name: channel.name.clone(),
            owner: owner.name.clone(),
            source: channel.source.clone(),
            codec: channel.codec,
            timing: channel.timing.0,
            ingest: local.ingest.clone(),
            multicast,
            allow: channel.allow.clone(),
            tracks: channel.tracks.clone(),
            ssm_sources: Vec::new(),
        })
    }
}
