//! The SDP (RFC 4566) of a channel on its multicast group: what a
//! workstation opens to receive it (`ffplay -i http://.../channels/1.sdp`).

use std::net::Ipv4Addr;

use sdp_types::{Attribute, Connection, MediaType, Origin, Session, Time, TransportProto};

use crate::config::Destination;
use crate::media::Codec;
use crate::media::params::{ParamSets, VideoInfo};
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
}

/// The track's control URL, relative to the DESCRIBE's Content-Base.
pub const TRACK_CONTROL: &str = "trackID=0";

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
            });
            assert!(sdp.contains(want), "{sdp}");
            assert!(!sdp.contains("framerate"), "{sdp}");
            let controls = sdp.lines().filter(|l| l.starts_with("a=control:"));
            assert_eq!(controls.count(), 2, "{sdp}");
        }
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
        });
        assert!(sdp.contains("s=Channel 2\r\n"), "{sdp}");
        assert!(sdp.contains("a=rtpmap:96 H265/90000\r\n"), "{sdp}");
        assert!(!sdp.contains("a=fmtp"), "{sdp}");
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
