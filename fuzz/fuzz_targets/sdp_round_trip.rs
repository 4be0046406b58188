//! The SDP a workstation opens, written from arbitrary channel names,
//! parameter sets and frame rates, parsed back with sdp-types: it always
//! parses, has one session name line and one video media, and what was
//! written (group, port, payload type, parameter sets) reads back.
#![no_main]

use std::net::Ipv4Addr;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use mcrelay::config::Destination;
use mcrelay::control::sdp::{ChannelDescription, Delivery, channel_sdp};
use mcrelay::media::Codec;
use mcrelay::media::params::{ParamSets, VideoInfo};

fuzz_target!(|data: &[u8]| {
    if data.len() < 16 {
        return;
    }
    let (head, rest) = data.split_at(16);
    let codec = if head[0] & 1 == 0 {
        Codec::H264
    } else {
        Codec::H265
    };
    let multicast = head[0] & 2 == 0;
    let fps = f64::from_le_bytes(head[1..9].try_into().unwrap());
    let port = u16::from_le_bytes([head[9], head[10]]) & !1;
    let group = Ipv4Addr::new(239, head[11], head[12], head[13]);
    let channel_id = u32::from(u16::from_le_bytes([head[14], head[15]]));
    // The name up to the first 0xff, then NAL units separated by 0xff.
    let mut pieces = rest.split(|&b| b == 0xff);
    let name = String::from_utf8_lossy(pieces.next().unwrap_or_default()).into_owned();
    let mut params = ParamSets::default();
    for nal in pieces.take(8) {
        params.update(codec, &Bytes::copy_from_slice(nal));
    }
    let video = VideoInfo {
        width: None,
        height: None,
        fps: Some(fps),
    };
    let dest = Destination {
        group,
        port: port.max(2),
        ttl: u32::from(head[13]),
    };
    let sdp = channel_sdp(&ChannelDescription {
        channel_id,
        name: &name,
        origin: Ipv4Addr::new(198, 18, 0, 1),
        delivery: if multicast {
            Delivery::Multicast(dest)
        } else {
            Delivery::Rtsp
        },
        codec,
        params: &params,
        video: &video,
        version: 1,
    });
    assert!(!sdp.is_empty());
    assert_eq!(
        sdp.lines().filter(|l| l.starts_with("s=")).count(),
        1,
        "{sdp}"
    );
    assert_eq!(
        sdp.lines().filter(|l| l.starts_with("m=")).count(),
        1,
        "{sdp}"
    );
    let s = sdp_types::Session::parse(sdp.as_bytes()).unwrap_or_else(|e| panic!("{e:?} in\n{sdp}"));
    assert_eq!(s.medias.len(), 1);
    let m = &s.medias[0];
    assert_eq!(m.media, "video");
    assert_eq!(m.fmt, "96");
    if multicast {
        assert_eq!(m.port, dest.port);
        let c = s.connection.as_ref().expect("c= line");
        assert!(
            c.connection_address.starts_with(&group.to_string()),
            "{sdp}"
        );
    } else {
        assert_eq!(m.port, 0);
    }
    let fmtp = params.fmtp(codec);
    let got = m.get_first_attribute_value("fmtp").flatten();
    if fmtp.is_empty() {
        assert!(got.is_none(), "{sdp}");
    } else {
        assert_eq!(got, Some(format!("96 {fmtp}").as_str()), "{sdp}");
    }
    if let Some(rate) = m.get_first_attribute_value("framerate").flatten() {
        let r: f64 = rate
            .parse()
            .unwrap_or_else(|_| panic!("framerate {rate:?}"));
        assert!(r.is_finite() && r > 0.0, "{sdp}");
    }
});
