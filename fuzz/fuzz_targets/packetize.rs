//! Arbitrary access units through the RTP packetizers, checked by an
//! independent reassembly: every packet fits the payload limit, sequence
//! numbers are consecutive, the marker is on the last packet only, and the
//! NAL units come back whole, in order (plus inserted parameter sets).
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use mcrelay::media::{AccessUnit, Codec, NalKind};
use mcrelay::rtp::{Packetizer, PacketizerConfig};

fn reassemble(codec: Codec, payloads: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut fu: Option<Vec<u8>> = None;
    let hl = codec.nal_header_len();
    for p in payloads {
        let t = codec.nal_type(p).expect("payload header");
        let (agg, frag) = match codec {
            Codec::H264 => (24, 28),
            Codec::H265 => (48, 49),
        };
        if t == agg {
            let mut i = hl;
            while i < p.len() {
                let n = u16::from_be_bytes([p[i], p[i + 1]]) as usize;
                out.push(p[i + 2..i + 2 + n].to_vec());
                i += 2 + n;
            }
        } else if t == frag {
            let fh = p[hl];
            let (start, end, inner) = (fh & 0x80 != 0, fh & 0x40 != 0, fh & 0x3f);
            if start {
                assert!(fu.is_none());
                fu = Some(match codec {
                    Codec::H264 => vec![(p[0] & 0xe0) | (fh & 0x1f)],
                    Codec::H265 => vec![(p[0] & 0x81) | (inner << 1), p[1]],
                });
            }
            fu.as_mut()
                .expect("FU without start")
                .extend_from_slice(&p[hl + 1..]);
            if end {
                out.push(fu.take().expect("set"));
            }
        } else {
            out.push(p.clone());
        }
    }
    assert!(fu.is_none(), "unfinished FU");
    out
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let codec = if data[0] & 1 == 0 {
        Codec::H264
    } else {
        Codec::H265
    };
    let max = 64 + u16::from_be_bytes([data[1], data[2]]) as usize % 3000;
    let seq = u16::from(data[3]) << 8 | 0xf0;
    let mut nals = Vec::new();
    let mut rest = &data[4..];
    while rest.len() >= 2 && nals.len() < 16 {
        let len = (u16::from_be_bytes([rest[0], rest[1]]) as usize % 9000).min(rest.len() - 2);
        nals.push(Bytes::copy_from_slice(&rest[2..2 + len]));
        rest = &rest[2 + len..];
    }
    let Ok(au) = AccessUnit::new(codec, nals) else {
        return;
    };
    let mut p = Packetizer::new(
        codec,
        PacketizerConfig {
            payload_type: 96,
            ssrc: 7,
            max_payload: max,
            aggregate: data[0] & 2 == 0,
        },
        seq,
    );
    let (packets, _) = p.packetize(&au, 1234);
    let expected: Vec<&Bytes> = au
        .nals
        .iter()
        .filter(|n| codec.classify(n) != NalKind::Invalid && !n.is_empty())
        .collect();
    if expected.is_empty() {
        return;
    }
    assert!(!packets.is_empty());
    for (i, pk) in packets.iter().enumerate() {
        assert!(
            pk.len() <= max + 12,
            "packet of {} bytes, limit {}",
            pk.len(),
            max + 12
        );
        assert_eq!(pk.seq(), seq.wrapping_add(i as u16));
        assert_eq!(pk.timestamp(), 1234);
        assert_eq!(pk.marker(), i + 1 == packets.len());
    }
    let payloads: Vec<Vec<u8>> = packets
        .iter()
        .map(|pk| pk.to_vec()[12..].to_vec())
        .collect();
    let got = reassemble(codec, &payloads);
    // The input's units in order; anything else must be an inserted parameter set.
    let mut want = expected.iter().peekable();
    for n in &got {
        if want.peek().is_some_and(|w| w.as_ref() == n.as_slice()) {
            want.next();
        } else {
            assert!(
                codec.classify(n).is_parameter_set(),
                "unexpected unit {:02x?}",
                &n[..n.len().min(4)]
            );
        }
    }
    assert!(want.peek().is_none(), "units lost");
});
