//! The SDP (RFC 4566) of a channel on its multicast group: what a
//! workstation opens to receive it (`ffplay -i http://.../channels/1.sdp`).

use std::net::Ipv4Addr;

use sdp_types::{Attribute, Connection, MediaType, Origin, Session, Time, TransportProto};

use crate::config::Destination;
use crate::media::params::{ParamSets, VideoInfo};
use crate::media::{Codec, TrackDesc, TrackKind};
use crate::rtp::VIDEO_PAYLOAD_TYPE;

/// How the described stream reaches the workstation.
#[derive(Clone, Copy, Debug)]
pub enum Delivery {
    /// A file for players that join the group directly.
    Multicast(Destination),
    /// The answer to an RTSP DESCRIBE: transport comes with SETUP.
    Rtsp,
}

/// Everything the SDP says about one channel.
#[derive(Clone, Debug)]
pub struct ChannelDescription<'a> {
    pub channel_id: u32,
    pub name: &'a str,
    /// The sending server's address (the `o=` line).
    pub origin: Ipv4Addr,
    pub delivery: Delivery,
    pub codec: Codec,
    pub params: &'a ParamSets,
    pub video: &'a VideoInfo,
    /// Bumped whenever the description changes (parameter sets).
    pub version: u64,
    /// The tracks besides video, each on its own `m=` line.
    pub tracks: &'a [TrackLine<'a>],
    /// A source-specific group's sources (RFC 4570 `source-filter`): the
    /// owner and the failover servers that may cover it. Empty: any source.
    pub sources: &'a [Ipv4Addr],
}

/// A track besides video (audio, metadata) as the SDP lists it.
#[derive(Clone, Copy, Debug)]
pub struct TrackLine<'a> {
    pub desc: &'a TrackDesc,
    pub payload_type: u8,
    /// Where it is sent, for a multicast SDP (a track without one is left
    /// out of it).
    pub dest: Option<Destination>,
}

/// The video track's control URL, relative to the DESCRIBE's Content-Base.
pub const TRACK_CONTROL: &str = "trackID=0";

/// The control URL of track `n` (0: video).
pub fn track_control(n: usize) -> String {
    format!("trackID={n}")
}

/// Writes the SDP. Multicast: `c=IN IP4 group/ttl`, `m=video port RTP/AVP
/// 96`, `a=rtcp`. RTSP: `c=IN IP4 0.0.0.0`, port 0 and `a=control`. Both:
/// `a=rtpmap`, and `a=fmtp` with the parameter sets.
pub fn channel_sdp(d: &ChannelDescription<'_>) -> String {
    let pt = VIDEO_PAYLOAD_TYPE;
    let mut origin = Origin::with_ip_addr(d.channel_id, d.version, d.origin);
    origin.set_username("-");
    // The name is one SDP line: control characters (a line break would
    // start a line of its own) become spaces.
    let name: String = d
        .name
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let name = if name.trim().is_empty() {
        format!("Channel {}", d.channel_id)
    } else {
        name
    };
    let mut s = Session::new(origin, name);
    s.connection = Some(match d.delivery {
        Delivery::Multicast(dest) => {
            Connection::from_ip_addr_ttl(dest.group, Some(dest.ttl.min(255) as u8))
        }
        Delivery::Rtsp => Connection::from_ip_addr(Ipv4Addr::UNSPECIFIED),
    });
    s.times.push(Time::new(0, 0));
    s.attributes.push(Attribute::with_value(
        "tool",
        concat!("mcrelay ", env!("CARGO_PKG_VERSION")),
    ));
    s.attributes.push(Attribute::new("recvonly"));
    if let (Delivery::Multicast(dest), false) = (d.delivery, d.sources.is_empty()) {
        // Session level: every m= line of the channel is on this group.
        let list: Vec<String> = d.sources.iter().map(|a| a.to_string()).collect();
        s.attributes.push(Attribute::with_value(
            "source-filter",
            format!(" incl IN IP4 {} {}", dest.group, list.join(" ")),
        ));
    }
    if let Delivery::Rtsp = d.delivery {
        s.attributes.push(Attribute::with_value("control", "*"));
        s.attributes
            .push(Attribute::with_value("range", "npt=now-"));
    }
    let port = match d.delivery {
        Delivery::Multicast(dest) => dest.port,
        Delivery::Rtsp => 0,
    };
    let mut m = sdp_types::Media::new(MediaType::Video, port, TransportProto::RtpAvp, pt);
    if let Delivery::Multicast(dest) = d.delivery {
        m.add_attribute_with_value(
            "rtcp",
            format!("{} IN IP4 {}", dest.rtcp().port(), dest.group),
        );
    }
    m.add_attribute_with_value("rtpmap", format!("{pt} {}/90000", d.codec.encoding_name()));
    let fmtp = d.params.fmtp(d.codec);
    if !fmtp.is_empty() {
        m.add_attribute_with_value("fmtp", format!("{pt} {fmtp}"));
    }
    // A rate from a camera's SPS can be anything; only a plausible one is
    // written (it formats as a positive number).
    if let Some(fps) = d.video.fps.filter(|f| (0.001..=1000.0).contains(f)) {
        m.add_attribute_with_value("framerate", format_fps(fps));
    }
    if let Delivery::Rtsp = d.delivery {
        m.add_attribute_with_value("control", TRACK_CONTROL);
    }
    s.medias.push(m);

    for (i, t) in d.tracks.iter().enumerate() {
        let media = match t.desc.kind {
            TrackKind::Audio => MediaType::Audio,
            TrackKind::Video => MediaType::Video,
            TrackKind::Metadata => MediaType::Application,
        };
        let (port, dest) = match (d.delivery, t.dest) {
            (Delivery::Multicast(_), None) => continue,
            (Delivery::Multicast(video), Some(dest)) => (dest.port, Some((video, dest))),
            (Delivery::Rtsp, _) => (0, None),
        };
        let pt = t.payload_type;
        let mut m = sdp_types::Media::new(media, port, TransportProto::RtpAvp, pt);
        if let Some((video, dest)) = dest {
            if dest.group != video.group {
                m.connections.push(Connection::from_ip_addr_ttl(
                    dest.group,
                    Some(dest.ttl.min(255) as u8),
                ));
            }
            m.add_attribute_with_value(
                "rtcp",
                format!("{} IN IP4 {}", dest.rtcp().port(), dest.group),
            );
        }
        m.add_attribute_with_value("rtpmap", format!("{pt} {}", t.desc.rtpmap()));
        if let Some(fmtp) = t.desc.fmtp() {
            m.add_attribute_with_value("fmtp", format!("{pt} {fmtp}"));
        }
        if let Delivery::Rtsp = d.delivery {
            m.add_attribute_with_value("control", track_control(i + 1));
        }
        s.medias.push(m);
    }

    let mut out = Vec::new();
    // Writing to a Vec cannot fail.
    let _ = s.write(&mut out);
    String::from_utf8(out).unwrap_or_default()
}

fn format_fps(fps: f64) -> String {
    if (fps - fps.round()).abs() < 1e-6 {
        format!("{}", fps.round() as u64)
    } else {
        format!("{fps:.3}")
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    #[test]
    fn a_name_is_one_line_and_an_absurd_rate_is_left_out() {
        // Found by the sdp_round_trip fuzz target.
        let params = ParamSets::default();
        for (name, fps, want) in [
            ("Gate\r\na=control:evil", 0.0, "s=Gate  a=control:evil\r\n"),
            ("\n", f64::NAN, "s=Channel 7\r\n"),
            ("Yard", 1e300, "s=Yard\r\n"),
            ("Yard", -25.0, "s=Yard\r\n"),
        ] {
            let video = VideoInfo {
                width: None,
                height: None,
                fps: Some(fps),
            };
            let sdp = channel_sdp(&ChannelDescription {
                channel_id: 7,
                name,
                origin: Ipv4Addr::LOCALHOST,
                delivery: Delivery::Rtsp,
                codec: Codec::H264,
                params: &params,
                video: &video,
                version: 1,
                tracks: &[],
                sources: &[],
            });
            assert!(sdp.contains(want), "{sdp}");
            assert!(!sdp.contains("framerate"), "{sdp}");
            let controls = sdp.lines().filter(|l| l.starts_with("a=control:"));
            assert_eq!(controls.count(), 2, "{sdp}");
        }
    }

    #[test]
    fn a_source_specific_group_lists_its_sources() {
        let sources = [Ipv4Addr::new(198, 18, 0, 1), Ipv4Addr::new(198, 18, 0, 2)];
        let (params, video) = (ParamSets::default(), VideoInfo::default());
        let d = |sources| ChannelDescription {
            channel_id: 1,
            name: "Gate",
            origin: Ipv4Addr::new(198, 18, 0, 1),
            delivery: Delivery::Multicast(Destination {
                group: Ipv4Addr::new(232, 1, 1, 1),
                port: 5002,
                ttl: 1,
            }),
            codec: Codec::H264,
            params: &params,
            video: &video,
            version: 1,
            tracks: &[],
            sources,
        };
        let sdp = channel_sdp(&d(&sources));
        assert!(
            sdp.contains("a=source-filter: incl IN IP4 232.1.1.1 198.18.0.1 198.18.0.2\r\n"),
            "{sdp}"
        );
        assert!(!channel_sdp(&d(&[])).contains("source-filter"));
    }

    #[test]
    fn h264_multicast_sdp() {
        let mut params = ParamSets::default();
        params.update(
            Codec::H264,
            &Bytes::from_static(&[0x67, 0x4d, 0x40, 0x1e, 0xd9]),
        );
        params.update(Codec::H264, &Bytes::from_static(&[0x68, 0xeb, 0xcc, 0xb2]));
        let video = VideoInfo {
            width: Some(640),
            height: Some(360),
            fps: Some(25.0),
        };
        let sdp = channel_sdp(&ChannelDescription {
            channel_id: 1,
            name: "Entrance",
            origin: Ipv4Addr::LOCALHOST,
            delivery: Delivery::Multicast(Destination {
                group: Ipv4Addr::new(239, 255, 77, 1),
                port: 5002,
                ttl: 1,
            }),
            codec: Codec::H264,
            params: &params,
            video: &video,
            version: 3,
            tracks: &[],
            sources: &[],
        });
        for line in [
            "v=0\r\n",
            "o=- 1 3 IN IP4 127.0.0.1\r\n",
            "s=Entrance\r\n",
            "c=IN IP4 239.255.77.1/1\r\n",
            "t=0 0\r\n",
            "m=video 5002 RTP/AVP 96\r\n",
            "a=rtcp:5003 IN IP4 239.255.77.1\r\n",
            "a=rtpmap:96 H264/90000\r\n",
            "a=fmtp:96 packetization-mode=1;profile-level-id=4D401E;sprop-parameter-sets=Z01AHtk=,aOvMsg==\r\n",
            "a=framerate:25\r\n",
        ] {
            assert!(sdp.contains(line), "missing {line:?} in\n{sdp}");
        }
        // An independent parser reads it back.
        let parsed = Session::parse(sdp.as_bytes()).unwrap();
        assert_eq!(parsed.medias[0].port, 5002);
        assert!(parsed.connection.unwrap().is_multicast());
    }

    #[test]
    fn h265_sdp_without_known_parameter_sets_is_still_valid() {
        let sdp = channel_sdp(&ChannelDescription {
            channel_id: 2,
            name: "",
            origin: Ipv4Addr::LOCALHOST,
            delivery: Delivery::Multicast(Destination {
                group: Ipv4Addr::new(239, 255, 77, 1),
                port: 5004,
                ttl: 4,
            }),
            codec: Codec::H265,
            params: &ParamSets::default(),
            video: &VideoInfo::default(),
            version: 0,
            tracks: &[],
            sources: &[],
        });
        assert!(sdp.contains("s=Channel 2\r\n"), "{sdp}");
        assert!(sdp.contains("a=rtpmap:96 H265/90000\r\n"), "{sdp}");
        assert!(!sdp.contains("a=fmtp"), "{sdp}");
        assert!(Session::parse(sdp.as_bytes()).is_ok());
    }

    #[test]
    fn every_track_is_an_m_line_on_its_own_port() {
        use crate::media::Payload;
        let aac = TrackDesc {
            kind: TrackKind::Audio,
            encoding: "MPEG4-GENERIC".into(),
            clock_rate: 48000,
            channels: Some(1),
            payload: Payload::Aac {
                config: Bytes::from_static(&[0x11, 0x88]),
            },
        };
        let onvif = TrackDesc {
            kind: TrackKind::Metadata,
            encoding: "vnd.onvif.metadata".into(),
            clock_rate: 90000,
            channels: None,
            payload: Payload::Message,
        };
        let group = Ipv4Addr::new(239, 255, 77, 1);
        let at = |port| Destination {
            group,
            port,
            ttl: 1,
        };
        let tracks = [
            TrackLine {
                desc: &aac,
                payload_type: 97,
                dest: Some(at(7002)),
            },
            TrackLine {
                desc: &onvif,
                payload_type: 98,
                dest: Some(at(9002)),
            },
        ];
        let sdp = channel_sdp(&ChannelDescription {
            channel_id: 1,
            name: "Gate",
            origin: Ipv4Addr::LOCALHOST,
            delivery: Delivery::Multicast(at(5002)),
            codec: Codec::H264,
            params: &ParamSets::default(),
            video: &VideoInfo::default(),
            version: 1,
            tracks: &tracks,
            sources: &[],
        });
        let parsed = Session::parse(sdp.as_bytes()).unwrap();
        let m: Vec<(&str, u16, &str)> = parsed
            .medias
            .iter()
            .map(|m| (m.media.as_str(), m.port, m.fmt.as_str()))
            .collect();
        assert_eq!(
            m,
            [
                ("video", 5002, "96"),
                ("audio", 7002, "97"),
                ("application", 9002, "98")
            ],
            "{sdp}"
        );
        for line in [
            "a=rtpmap:97 MPEG4-GENERIC/48000/1\r\n",
            "a=fmtp:97 streamtype=5;profile-level-id=1;mode=AAC-hbr;sizelength=13;indexlength=3;indexdeltalength=3;config=1188\r\n",
            "a=rtcp:7003 IN IP4 239.255.77.1\r\n",
            "a=rtpmap:98 vnd.onvif.metadata/90000\r\n",
        ] {
            assert!(sdp.contains(line), "missing {line:?} in\n{sdp}");
        }
        // RTSP: one control URL per track.
        let sdp = channel_sdp(&ChannelDescription {
            delivery: Delivery::Rtsp,
            channel_id: 1,
            name: "Gate",
            origin: Ipv4Addr::LOCALHOST,
            codec: Codec::H264,
            params: &ParamSets::default(),
            video: &VideoInfo::default(),
            version: 1,
            tracks: &tracks,
            sources: &[],
        });
        assert!(sdp.contains("a=control:trackID=1\r\n"), "{sdp}");
        assert!(sdp.contains("a=control:trackID=2\r\n"), "{sdp}");
        assert!(Session::parse(sdp.as_bytes()).is_ok());
    }

    #[test]
    fn rtsp_describe_sdp() {
        let sdp = channel_sdp(&ChannelDescription {
            channel_id: 2,
            name: "Gate",
            origin: Ipv4Addr::LOCALHOST,
            delivery: Delivery::Rtsp,
            codec: Codec::H264,
            params: &ParamSets::default(),
            video: &VideoInfo::default(),
            version: 1,
            tracks: &[],
            sources: &[],
        });
        for line in [
            "c=IN IP4 0.0.0.0\r\n",
            "a=control:*\r\n",
            "m=video 0 RTP/AVP 96\r\n",
            "a=control:trackID=0\r\n",
        ] {
            assert!(sdp.contains(line), "missing {line:?} in\n{sdp}");
        }
        assert!(!sdp.contains("a=rtcp"), "{sdp}");
        assert!(Session::parse(sdp.as_bytes()).is_ok());
    }
}
