//! The RTP packetizer of audio and metadata tracks, fed arbitrary frames
//! and payload sizes: every packet fits the payload size; AAC comes back
//! whole through an independent RFC 3640 AAC-hbr reader (every fragment
//! naming the whole AU's size, the marker on the last); a G.711-style
//! frame is the payload byte for byte; a message joins back from its
//! packets with the marker on the last; sequence numbers never skip.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use mcrelay::media::Payload;
use mcrelay::rtp::track::{AAC_MAX_AU, TrackPacketizer};

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let (head, rest) = data.split_at(4);
    let payload = match head[0] % 3 {
        0 => Payload::Aac {
            config: Bytes::from_static(&[0x11, 0x88]),
        },
        1 => Payload::Frame,
        _ => Payload::Message,
    };
    let max = 64 + usize::from(u16::from_le_bytes([head[1], head[2]]) % 1400);
    let seq0 = u16::from(head[3]) << 8 | u16::from(head[3]);
    let mut p = TrackPacketizer::new(payload.clone(), 97, 7, seq0, max);
    let mut next_seq = seq0;
    // Frames: a length byte pair, then that many bytes (repeated to reach
    // AAC sizes).
    let mut at = 0;
    let mut ts = 0u32;
    while at + 2 <= rest.len() {
        let n = usize::from(u16::from_le_bytes([rest[at], rest[at + 1]]) % 9000);
        at += 2;
        let src = &rest[at..(at + n.min(64)).min(rest.len())];
        at += src.len();
        let frame: Vec<u8> = if src.is_empty() {
            Vec::new()
        } else {
            src.iter().cycle().take(n).copied().collect()
        };
        let frame = Bytes::from(frame);
        ts = ts.wrapping_add(1024);
        let Ok(packets) = p.packetize(&frame, ts) else {
            // Refused: only an empty frame, an AU past 13 bits, or a frame
            // past one datagram.
            assert!(
                frame.is_empty()
                    || (matches!(payload, Payload::Aac { .. }) && frame.len() > AAC_MAX_AU)
                    || (payload == Payload::Frame && frame.len() > max.max(1460)),
                "refused a {}-byte frame",
                frame.len()
            );
            assert_eq!(p.next_seq(), next_seq, "a refused frame uses no number");
            continue;
        };
        assert!(!packets.is_empty());
        for pk in &packets {
            assert_eq!(pk.seq(), next_seq);
            next_seq = next_seq.wrapping_add(1);
            assert_eq!(pk.timestamp(), ts);
            if payload != Payload::Frame {
                assert!(pk.payload_len() <= max, "{} > {max}", pk.payload_len());
            }
        }
        let marks = packets.iter().filter(|p| p.marker()).count();
        let joined: Vec<u8> = match payload {
            Payload::Aac { .. } => {
                assert_eq!(marks, 1);
                assert!(packets.last().unwrap().marker());
                let mut v = Vec::new();
                for pk in &packets {
                    let raw = pk.to_vec();
                    let pl = &raw[12..];
                    assert_eq!(u16::from_be_bytes([pl[0], pl[1]]), 16);
                    let size = usize::from(u16::from_be_bytes([pl[2], pl[3]]) >> 3);
                    assert_eq!(size, frame.len(), "every fragment names the AU's size");
                    v.extend_from_slice(&pl[4..]);
                }
                v
            }
            Payload::Frame => {
                assert_eq!(packets.len(), 1);
                packets[0].body().to_vec()
            }
            Payload::Message => {
                assert_eq!(marks, 1);
                assert!(packets.last().unwrap().marker());
                packets.iter().flat_map(|p| p.body().to_vec()).collect()
            }
        };
        assert_eq!(joined, frame.to_vec());
    }
});
