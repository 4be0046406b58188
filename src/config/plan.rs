//! The address plan: which multicast group and port each channel is sent to.
//!
//! A pure function of the site file, so it is the same on every restart and
//! on every server: a failover server that takes over a broken server's
//! channels computes that server's destinations and sends there, and joined
//! workstations keep receiving without rejoining.
//!
//! - One group per server (`groups = 1`, the default, as the seed has one
//!   multicast address per server): channel n goes to the group on port
//!   `port + 2n`, its RTCP to `port + 2n + 1` (RFC 3550 11: RTP on an even
//!   port, RTCP on the next).
//! - One group per channel (`groups = N > 1`): channel n goes to group
//!   `address + (n mod N)` on `port`. Receivers then get only the channels
//!   they join, which matters on links slower than the server's total rate.
//! - A channel's audio and metadata go to the same group as its video, on
//!   the video port moved to another base: `audio_port` (default `port +
//!   2000` with one group, `port + 2` with one per channel) and
//!   `metadata_port` (default `port + 4000`, or `port + 4`). Video ports
//!   stay where they were before tracks existed.

use std::net::{Ipv4Addr, SocketAddrV4};

use super::types::{MulticastConfig, ServerConfig};
use crate::media::TrackKind;

/// Where one channel's RTP (and, one port up, RTCP) goes.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub struct Destination {
    pub group: Ipv4Addr,
    pub port: u16,
    pub ttl: u32,
}

impl Destination {
    pub fn rtp(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.group, self.port)
    }

    pub fn rtcp(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.group, self.port.wrapping_add(1))
    }
}

/// The destination of channel `id` on a server with this multicast setting.
pub fn destination(mc: &MulticastConfig, id: u32) -> Result<Destination, String> {
    if mc.groups <= 1 {
        let port = u32::from(mc.port) + 2 * id;
        if port + 1 > u32::from(u16::MAX) {
            return Err(format!(
                "channel {id} would use port {port} (port {} + 2 x {id}) and RTCP {}, beyond 65535",
                mc.port,
                port + 1
            ));
        }
        Ok(Destination {
            group: mc.address,
            port: port as u16,
            ttl: mc.ttl,
        })
    } else {
        let first = u32::from(mc.address);
        let group = first
            .checked_add(id % mc.groups)
            .ok_or_else(|| format!("the group range from {} overflows", mc.address))?;
        Ok(Destination {
            group: Ipv4Addr::from(group),
            port: mc.port,
            ttl: mc.ttl,
        })
    }
}

/// The destination of a kind of track of channel `id`: the video
/// destination with its port moved to the kind's base port
/// ([`MulticastConfig::track_port`]).
pub fn track_destination(
    mc: &MulticastConfig,
    id: u32,
    kind: TrackKind,
) -> Result<Destination, String> {
    let video = destination(mc, id)?;
    let shifted = u32::from(video.port) - u32::from(mc.port) + mc.track_port(kind);
    if shifted + 1 > u32::from(u16::MAX) {
        let setting = match kind {
            TrackKind::Video => "port",
            TrackKind::Audio => "audio_port",
            TrackKind::Metadata => "metadata_port",
        };
        return Err(format!(
            "channel {id}'s {kind} would use port {shifted} and RTCP {}, beyond 65535 (multicast.{setting} is {})",
            shifted + 1,
            mc.track_port(kind)
        ));
    }
    Ok(Destination {
        port: shifted as u16,
        ..video
    })
}

/// Source-specific multicast (RFC 4607): 232.0.0.0/8. A receiver joins a
/// group there by (source, group) and hears only the sources it named.
pub fn is_ssm(group: Ipv4Addr) -> bool {
    group.octets()[0] == 232
}

/// The sources `owner`'s channels may come from when its groups are SSM:
/// its own interface, then the interface of each failover server that may
/// cover it (site order); its SDPs list them all (RFC 4570
/// `source-filter`), so that a receiver that joined by source keeps
/// receiving after a takeover. Empty for any-source groups.
pub fn ssm_sources(servers: &[ServerConfig], owner: &ServerConfig) -> Vec<Ipv4Addr> {
    let Some(mc) = owner.multicast.as_ref().filter(|m| is_ssm(m.address)) else {
        return Vec::new();
    };
    let mut sources = vec![mc.interface];
    if owner.failover.failover_enabled {
        let covers = servers
            .iter()
            .filter(|s| s.failover.use_as_failover_server && s.name != owner.name)
            .filter_map(|s| s.multicast.as_ref().map(|m| m.interface));
        for a in covers {
            if !sources.contains(&a) {
                sources.push(a);
            }
        }
    }
    sources
}

/// The multicast addresses a server owns: `[first, last]` as integers.
pub fn group_range(mc: &MulticastConfig) -> (u32, u32) {
    let first = u32::from(mc.address);
    let last = first.saturating_add(mc.groups.max(1) - 1);
    (first, last)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mc(groups: u32) -> MulticastConfig {
        MulticastConfig {
            address: Ipv4Addr::new(239, 192, 0, 1),
            port: 5000,
            interface: Ipv4Addr::LOCALHOST,
            ttl: 4,
            loopback: true,
            groups,
            audio_port: None,
            metadata_port: None,
        }
    }

    #[test]
    fn shared_group_uses_even_ports() {
        let d = destination(&mc(1), 3).unwrap();
        assert_eq!(d.rtp(), "239.192.0.1:5006".parse().unwrap());
        assert_eq!(d.rtcp(), "239.192.0.1:5007".parse().unwrap());
        assert_eq!(d.ttl, 4);
        assert!(destination(&mc(1), 30_267).is_ok());
        assert!(
            destination(&mc(1), 30_268)
                .unwrap_err()
                .contains("beyond 65535")
        );
    }

    #[test]
    fn group_per_channel() {
        let d = destination(&mc(16), 3).unwrap();
        assert_eq!(d.rtp(), "239.192.0.4:5000".parse().unwrap());
        assert_eq!(
            destination(&mc(16), 19).unwrap().group,
            Ipv4Addr::new(239, 192, 0, 4)
        );
        assert_eq!(
            group_range(&mc(16)),
            (
                u32::from(Ipv4Addr::new(239, 192, 0, 1)),
                u32::from(Ipv4Addr::new(239, 192, 0, 16))
            )
        );
    }

    #[test]
    fn tracks_move_the_video_port_to_their_base() {
        let one = mc(1);
        let audio = track_destination(&one, 3, TrackKind::Audio).unwrap();
        assert_eq!(audio.rtp(), "239.192.0.1:7006".parse().unwrap());
        let meta = track_destination(&one, 3, TrackKind::Metadata).unwrap();
        assert_eq!(meta.rtp(), "239.192.0.1:9006".parse().unwrap());
        assert_eq!(
            track_destination(&one, 3, TrackKind::Video).unwrap(),
            destination(&one, 3).unwrap()
        );
        let per = mc(16);
        let a = track_destination(&per, 3, TrackKind::Audio).unwrap();
        assert_eq!(a.rtp(), "239.192.0.4:5002".parse().unwrap());
        let set = MulticastConfig {
            audio_port: Some(64000),
            ..mc(1)
        };
        assert_eq!(
            track_destination(&set, 10, TrackKind::Audio).unwrap().port,
            64020
        );
        let err = track_destination(&set, 800, TrackKind::Audio).unwrap_err();
        assert!(err.contains("multicast.audio_port is 64000"), "{err}");
    }

    #[test]
    fn stable_for_the_same_input() {
        // The plan depends on nothing but its arguments.
        let a: Vec<_> = (1..50).map(|i| destination(&mc(8), i)).collect();
        let b: Vec<_> = (1..50).map(|i| destination(&mc(8), i)).collect();
        assert_eq!(a, b);
    }
}
