//! The SDP a workstation opens, written from arbitrary channel names,
//! parameter sets and frame rates, parsed back with sdp-types: it always
//! parses, has one session name line, one video media and one media per
//! track (AAC with an arbitrary config, PCMU, ONVIF metadata), and what was
//! written (group, port, payload type, parameter sets, AAC config) reads
//! back.
#![no_main]

use std::net::Ipv4Addr;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use mcrelay::config::Destination;
use mcrelay::control::sdp::{ChannelDescription, Delivery, TrackLine, channel_sdp};
use mcrelay::media::{Codec, Payload, TrackDesc, TrackKind};
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
    // Bits 2..5 of the first byte pick the tracks; the AAC config is the
    // name's bytes.
    let mut descs = Vec::new();
    if head[0] & 4 != 0 {
        descs.push(TrackDesc {
            kind: TrackKind::Audio,
            encoding: "MPEG4-GENERIC".into(),
            clock_rate: 8000 + u32::from(head[1]) * 100,
            channels: Some(u16::from(head[2] % 8)),
            payload: Payload::Aac {
                config: Bytes::copy_from_slice(name.as_bytes()),
            },
        });
    }
    if head[0] & 8 != 0 {
        descs.push(TrackDesc {
            kind: TrackKind::Audio,
            encoding: "PCMU".into(),
            clock_rate: 8000,
            channels: None,
            payload: Payload::Frame,
        });
    }
    if head[0] & 16 != 0 {
        descs.push(TrackDesc {
            kind: TrackKind::Metadata,
            encoding: "vnd.onvif.metadata".into(),
            clock_rate: 90000,
            channels: None,
            payload: Payload::Message,
        });
    }
    let tracks: Vec<TrackLine<'_>> = descs
        .iter()
        .enumerate()
        .map(|(i, d)| TrackLine {
            desc: d,
            payload_type: d.payload_type(i),
            dest: Some(Destination {
                port: dest.port.wrapping_add(2 * (i as u16 + 1)),
                ..dest
            }),
        })
        .collect();
    // A source-specific group's sources: up to three, from the header.
    let sources: Vec<Ipv4Addr> = (0..(head[0] >> 6))
        .map(|i| Ipv4Addr::new(198, 18, head[0], i))
        .collect();
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
        tracks: &tracks,
        sources: &sources,
    });
    assert!(!sdp.is_empty());
    assert_eq!(
        sdp.lines().filter(|l| l.starts_with("s=")).count(),
        1,
        "{sdp}"
    );
    assert_eq!(
        sdp.lines().filter(|l| l.starts_with("m=")).count(),
        1 + tracks.len(),
        "{sdp}"
    );
    let s = sdp_types::Session::parse(sdp.as_bytes()).unwrap_or_else(|e| panic!("{e:?} in\n{sdp}"));
    // One source filter, naming every source, on a multicast SDP only.
    let filters: Vec<&str> = s
        .attributes
        .iter()
        .filter(|a| a.attribute == "source-filter")
        .filter_map(|a| a.value.as_deref())
        .collect();
    if multicast && !sources.is_empty() {
        assert_eq!(filters.len(), 1, "{sdp}");
        let listed: Vec<&str> = filters[0].split_whitespace().skip(4).collect();
        let want: Vec<String> = sources.iter().map(|a| a.to_string()).collect();
        assert_eq!(listed, want, "{sdp}");
    } else {
        assert!(filters.is_empty(), "{sdp}");
    }
    assert_eq!(s.medias.len(), 1 + tracks.len());
    for (t, m) in tracks.iter().zip(&s.medias[1..]) {
        assert_eq!(m.media, t.desc.kind.sdp_media(), "{sdp}");
        assert_eq!(m.fmt, t.payload_type.to_string(), "{sdp}");
        if multicast {
            assert_eq!(Some(m.port), t.dest.map(|d| d.port), "{sdp}");
        }
        let want = t.desc.fmtp().map(|f| format!("{} {f}", t.payload_type));
        assert_eq!(
            m.get_first_attribute_value("fmtp").flatten(),
            want.as_deref(),
            "{sdp}"
        );
    }
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
