use std::time::{Instant, SystemTime};

use bytes::Bytes;

use super::core::StreamIds;
use super::*;
use crate::config::Source;
use crate::ingest::Sink;
use crate::media::{AccessUnit, Codec, MediaTime};
use crate::metrics::Metrics;

fn channel() -> Arc<Channel> {
    let spec = ChannelSpec::standalone(
        1,
        "s",
        Source::TcpConnect {
            host: "h".into(),
            port: 1,
        },
        Codec::H264,
    );
    Channel::new(spec, Metrics::new().channel(1), SystemTime::now())
}

fn au(key: bool) -> AccessUnit {
    let nal = if key {
        vec![0x65, 0x88, 1]
    } else {
        vec![0x41, 0x9a, 1]
    };
    AccessUnit::new(Codec::H264, vec![Bytes::from(nal)]).unwrap()
}

#[test]
fn new_sinks_start_at_the_last_key_frame_without_gap_or_overlap() {
    let ch = channel();
    let mut p = Publisher::new(
        ch.clone(),
        StreamIds {
            ssrc: 1,
            initial_seq: 0,
            rtp_base: 0,
        },
        String::new(),
    );
    p.session_started(Codec::H264);
    let t = Instant::now();
    // Before any key frame: nothing to start from.
    p.access_unit(au(false), MediaTime(0), t);
    assert!(ch.subscribe_from_key_frame().0.is_empty());
    for i in 1..=7 {
        p.access_unit(au(i == 3), MediaTime(i * 3600), t);
    }
    let (gop, mut rx) = ch.subscribe_from_key_frame();
    let times: Vec<i64> = gop.iter().map(|f| f.time.0).collect();
    assert!(gop[0].key);
    assert_eq!(gop.len(), 5, "key frame 3 and frames 4..=7: {times:?}");
    p.access_unit(au(false), MediaTime(8 * 3600), t);
    let next = rx.try_recv().unwrap();
    assert_eq!(
        next.time.0 - gop.last().unwrap().time.0,
        3600,
        "the frame right after the cache"
    );
    // A new camera session invalidates the cache until its first key frame.
    p.session_started(Codec::H264);
    p.access_unit(au(false), MediaTime(0), t);
    assert!(ch.subscribe_from_key_frame().0.is_empty());
    p.access_unit(au(true), MediaTime(3600), t);
    assert_eq!(ch.subscribe_from_key_frame().0.len(), 1);
}

#[test]
fn an_overlong_gop_is_not_cached() {
    let ch = channel();
    let mut p = Publisher::new(
        ch.clone(),
        StreamIds {
            ssrc: 1,
            initial_seq: 0,
            rtp_base: 0,
        },
        String::new(),
    );
    p.session_started(Codec::H264);
    let t = Instant::now();
    p.access_unit(au(true), MediaTime(0), t);
    for i in 1..=GOP_MAX_FRAMES as i64 {
        p.access_unit(au(false), MediaTime(i), t);
    }
    assert!(ch.subscribe_from_key_frame().0.is_empty());
    p.access_unit(au(true), MediaTime(1_000_000), t);
    assert_eq!(ch.subscribe_from_key_frame().0.len(), 1);
}

#[tokio::test]
async fn the_shared_interleaved_buffer_is_what_per_packet_framing_writes() {
    let ch = channel();
    let mut p = Publisher::new(
        ch.clone(),
        StreamIds {
            ssrc: 9,
            initial_seq: 65_530,
            rtp_base: 7,
        },
        String::new(),
    );
    p.session_started(Codec::H264);
    let big = AccessUnit::new(
        Codec::H264,
        vec![Bytes::from(
            [&[0x65u8, 0x88][..], &[0xab; 5000][..]].concat(),
        )],
    )
    .unwrap();
    p.access_unit(big, MediaTime(0), Instant::now());
    p.access_unit(au(false), MediaTime(3600), Instant::now());
    let (frames, _) = ch.subscribe_from_key_frame();
    assert_eq!(frames.len(), 2);
    let stall = std::time::Duration::from_secs(1);
    let (mut zero, mut two) = (Vec::new(), Vec::new());
    let a = crate::runtime::rtsp::write_frames(&mut zero, &frames, 0, stall)
        .await
        .unwrap();
    let b = crate::runtime::rtsp::write_frames(&mut two, &frames, 2, stall)
        .await
        .unwrap();
    assert_eq!(a, b);
    assert!(frames[0].packets.len() > 3);
    // Same bytes but the channel byte after each '$'.
    let mut at = 0;
    while at < two.len() {
        assert_eq!((two[at], two[at + 1]), (b'$', 2));
        two[at + 1] = 0;
        at += 4 + usize::from(u16::from_be_bytes([two[at + 2], two[at + 3]]));
    }
    assert_eq!(zero, two);
}
