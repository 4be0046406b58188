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

fn pcmu() -> crate::media::TrackDesc {
    crate::media::TrackDesc::pcmu()
}

/// A publisher of `ch` with SSRC 1, numbered from 0.
fn publisher(ch: &Arc<Channel>) -> Publisher {
    let ids = StreamIds {
        ssrc: 1,
        initial_seq: 0,
        rtp_base: 0,
    };
    Publisher::new(ch.clone(), ids, String::new())
}

#[test]
fn sound_that_came_before_a_sessions_first_picture_starts_with_it() {
    let ch = channel();
    let mut p = publisher(&ch);
    p.session_started(Codec::H264);
    p.tracks(vec![pcmu()], Vec::new());
    let mut sound = ch.subscribe_tracks();
    let t = Instant::now();
    // 128 ms frames at 0, 0.128 and 0.256 s of the camera's time line; its
    // first picture at 0.2 s.
    for k in 0..3 {
        p.track_frame(0, Bytes::from(vec![0xd5; 1024]), k * 1024, t);
    }
    assert!(sound.try_recv().is_err(), "nothing to place them by yet");
    p.access_unit(au(true), MediaTime(18_000), t);
    // The frame that covers the picture (from 0.128 s) and the one after
    // it go on; the first, over before the picture, does not.
    let times: Vec<i64> = std::iter::from_fn(|| sound.try_recv().ok())
        .map(|f| f.time.0)
        .collect();
    assert_eq!(times, vec![11_520 - 18_000, 23_040 - 18_000]);
    let start = ch.subscribe_with_tracks();
    assert_eq!(start.tracks.len(), 2, "cached for TCP clients too");
    // A later frame goes at once.
    p.track_frame(0, Bytes::from(vec![0xd5; 1024]), 3 * 1024, t);
    assert_eq!(sound.try_recv().unwrap().time.0, 34_560 - 18_000);
}

#[test]
fn a_resumed_channel_tells_its_tracks_new_numbering_at_its_first_picture() {
    let ch = channel();
    let mut p = publisher(&ch);
    let t0 = Instant::now();
    let audio = StreamIds {
        ssrc: 2,
        initial_seq: 5,
        rtp_base: 1000,
    };
    p.resume(vec![(crate::media::TrackKind::Audio, audio, 8000)], t0);
    p.session_started(Codec::H264);
    p.tracks(vec![pcmu()], Vec::new());
    assert_eq!(ch.info.borrow().tracks[0].rtp_base, 1000);
    // The first picture half a second after the numbering was computed:
    // every timestamp moves on by as much, and sinks (RTP-Info) learn it.
    p.access_unit(
        au(true),
        MediaTime(0),
        t0 + std::time::Duration::from_millis(500),
    );
    let info = ch.info.borrow().tracks[0].clone();
    assert_eq!(info.rtp_base, 1000 + 4000);
    p.track_frame(0, Bytes::from(vec![0xd5; 160]), 0, t0);
    let f = ch.subscribe_with_tracks().tracks[0].clone();
    assert_eq!(f.rtp_timestamp, info.rtp_at(f.time));
}
