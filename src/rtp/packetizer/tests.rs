//! Packetizer round trips through an independent decoder: webrtc-rs's `rtp`
//! crate parses every packet and reassembles the NAL units.

use bytes::Bytes;
use rtp::codecs::h264::H264Packet;
use rtp::codecs::h265::{H265Packet, H265Payload};
use rtp::packetizer::Depacketizer;
use webrtc_util::Unmarshal;

use super::*;
use crate::media::{AccessUnit, Codec};

const SSRC: u32 = 0x1234_5678;

fn packetizer(codec: Codec, max_payload: usize, seq: u16) -> Packetizer {
    Packetizer::new(
        codec,
        PacketizerConfig {
            payload_type: 96,
            ssrc: SSRC,
            max_payload,
            aggregate: true,
        },
        seq,
    )
}

/// A NAL unit of `len` bytes with the given header, its body a counting pattern.
fn nal(header: &[u8], len: usize) -> Bytes {
    let mut v = header.to_vec();
    v.extend((0..len - header.len()).map(|i| (i % 251) as u8 + 1));
    Bytes::from(v)
}

struct Decoded {
    nals: Vec<Vec<u8>>,
    headers: Vec<rtp::header::Header>,
    sizes: Vec<usize>,
}

fn decode(codec: Codec, packets: &[RtpPacket]) -> Decoded {
    let mut out = Decoded {
        nals: Vec::new(),
        headers: Vec::new(),
        sizes: Vec::new(),
    };
    let mut h264 = H264Packet::default();
    let mut fu: Option<Vec<u8>> = None;
    for p in packets {
        let raw = p.to_vec();
        out.sizes.push(raw.len());
        let parsed = rtp::packet::Packet::unmarshal(&mut &raw[..]).expect("valid RTP");
        assert_eq!(parsed.header.version, 2);
        assert_eq!(parsed.header.ssrc, SSRC);
        assert_eq!(parsed.header.payload_type, 96);
        out.headers.push(parsed.header.clone());
        match codec {
            Codec::H264 => {
                let annexb = h264
                    .depacketize(&parsed.payload)
                    .expect("valid H.264 payload");
                // The decoder emits 00 00 00 01 + NAL for each complete unit.
                let mut rest: &[u8] = &annexb;
                while !rest.is_empty() {
                    assert_eq!(&rest[..4], &[0, 0, 0, 1]);
                    let next = rest[4..]
                        .windows(4)
                        .position(|w| w == [0, 0, 0, 1])
                        .map_or(rest.len(), |p| p + 4);
                    out.nals.push(rest[4..next].to_vec());
                    rest = &rest[next..];
                }
            }
            Codec::H265 => {
                let mut pkt = H265Packet::default();
                pkt.depacketize(&parsed.payload)
                    .expect("valid H.265 payload");
                match pkt.payload() {
                    H265Payload::H265SingleNALUnitPacket(s) => {
                        let h = s.payload_header().0.to_be_bytes();
                        let mut v = h.to_vec();
                        v.extend_from_slice(&s.payload());
                        out.nals.push(v);
                    }
                    H265Payload::H265AggregationPacket(ap) => {
                        out.nals
                            .push(ap.first_unit().expect("first unit").nal_unit().to_vec());
                        for u in ap.other_units() {
                            out.nals.push(u.nal_unit().to_vec());
                        }
                    }
                    H265Payload::H265FragmentationUnitPacket(f) => {
                        let fh = f.fu_header();
                        if fh.s() {
                            assert!(fu.is_none(), "FU start inside an FU");
                            let ph = f.payload_header().0.to_be_bytes();
                            fu = Some(vec![(ph[0] & 0x81) | (fh.fu_type() << 1), ph[1]]);
                        }
                        let buf = fu.as_mut().expect("FU continuation without start");
                        buf.extend_from_slice(&f.payload());
                        if fh.e() {
                            out.nals.push(fu.take().expect("set above"));
                        }
                    }
                    H265Payload::H265PACIPacket(_) => panic!("mcrelay never sends PACI"),
                }
            }
        }
    }
    out
}

const SPS: &[u8] = &[0x67, 0x4d, 0x40, 0x1e, 0xd9, 0x00, 0xa0, 0x2f];
const PPS: &[u8] = &[0x68, 0xeb, 0xcc, 0xb2];

#[test]
fn small_nal_is_one_packet_sharing_the_ingest_buffer() {
    let mut p = packetizer(Codec::H264, 1400, 10);
    let slice = nal(&[0x41, 0x9a], 500);
    let au = AccessUnit::new(Codec::H264, vec![slice.clone()]).unwrap();
    let (packets, changed) = p.packetize(&au, 90_000);
    assert!(!changed);
    assert_eq!(packets.len(), 1);
    assert_eq!(
        packets[0].body().as_ptr(),
        slice.as_ptr(),
        "payload was copied"
    );
    let d = decode(Codec::H264, &packets);
    assert_eq!(d.nals, vec![slice.to_vec()]);
    assert!(d.headers[0].marker);
    assert_eq!(d.headers[0].sequence_number, 10);
    assert_eq!(d.headers[0].timestamp, 90_000);
    assert_eq!(p.next_seq(), 11);
}

#[test]
fn h264_key_frame_gets_parameter_sets_and_fu_a() {
    let mut p = packetizer(Codec::H264, 1400, 0);
    assert!(p.update_params([Bytes::from_static(SPS), Bytes::from_static(PPS)]));
    let idr = nal(&[0x65, 0x88], 5000);
    let au = AccessUnit::new(Codec::H264, vec![idr.clone()]).unwrap();
    let (packets, _) = p.packetize(&au, 7);
    let d = decode(Codec::H264, &packets);
    assert_eq!(d.nals, vec![SPS.to_vec(), PPS.to_vec(), idr.to_vec()]);
    // One STAP-A, then ceil(4999 / 1398) = 4 fragments.
    assert_eq!(packets.len(), 5);
    assert_eq!(
        packets[0].to_vec()[12] & 0x1f,
        24,
        "first packet is a STAP-A"
    );
    let markers: Vec<bool> = d.headers.iter().map(|h| h.marker).collect();
    assert_eq!(markers, vec![false, false, false, false, true]);
    // Full-size fragments except the last: GSO can send them in one call.
    assert_eq!(&d.sizes[1..4], &[1412, 1412, 1412]);
    assert!(d.sizes[4] < 1412);
    assert!(d.sizes.iter().all(|s| *s <= 1412));
    let seqs: Vec<u16> = d.headers.iter().map(|h| h.sequence_number).collect();
    assert_eq!(seqs, vec![0, 1, 2, 3, 4]);
    assert!(d.headers.iter().all(|h| h.timestamp == 7));
}

#[test]
fn in_band_parameter_sets_are_not_duplicated_and_are_learned() {
    let mut p = packetizer(Codec::H264, 1400, 0);
    let aud = Bytes::from_static(&[0x09, 0xf0]);
    let au = AccessUnit::new(
        Codec::H264,
        vec![
            aud.clone(),
            Bytes::from_static(SPS),
            Bytes::from_static(PPS),
            nal(&[0x65, 0x88], 300),
        ],
    )
    .unwrap();
    let (packets, changed) = p.packetize(&au, 0);
    assert!(changed, "in-band SPS/PPS are learned");
    let d = decode(Codec::H264, &packets);
    assert_eq!(d.nals.len(), 4);
    assert_eq!(d.nals[0], aud.to_vec(), "AUD stays first");
    assert_eq!(p.params().sps.as_deref(), Some(SPS));

    // The next key frame without them gets them, after its AUD.
    let au = AccessUnit::new(Codec::H264, vec![aud.clone(), nal(&[0x65, 0x88], 300)]).unwrap();
    let (packets, changed) = p.packetize(&au, 3600);
    assert!(!changed);
    let d = decode(Codec::H264, &packets);
    assert_eq!(
        d.nals,
        vec![
            aud.to_vec(),
            SPS.to_vec(),
            PPS.to_vec(),
            nal(&[0x65, 0x88], 300).to_vec()
        ]
    );

    // A P frame gets none.
    let au = AccessUnit::new(Codec::H264, vec![nal(&[0x41, 0x9a], 300)]).unwrap();
    assert_eq!(decode(Codec::H264, &p.packetize(&au, 7200).0).nals.len(), 1);
}

#[test]
fn fragment_boundaries_at_the_payload_limit() {
    for (len, expect) in [(100, 1), (101, 2), (197, 2), (198, 3)] {
        let mut p = packetizer(Codec::H264, 100, 0);
        let n = nal(&[0x41, 0x9a], len);
        let au = AccessUnit::new(Codec::H264, vec![n.clone()]).unwrap();
        let (packets, _) = p.packetize(&au, 0);
        // 100 fits whole; above that each FU-A carries 98 of the bytes after the NAL header.
        assert_eq!(packets.len(), expect, "NAL of {len} bytes");
        assert!(packets.iter().all(|pk| pk.payload_len() <= 100));
        assert_eq!(decode(Codec::H264, &packets).nals, vec![n.to_vec()]);
    }
}

#[test]
fn sequence_numbers_wrap() {
    let mut p = packetizer(Codec::H264, 100, 65534);
    let au = AccessUnit::new(Codec::H264, vec![nal(&[0x41, 0x9a], 350)]).unwrap();
    let (packets, _) = p.packetize(&au, u32::MAX);
    let seqs: Vec<u16> = packets.iter().map(RtpPacket::seq).collect();
    assert_eq!(seqs, vec![65534, 65535, 0, 1]);
    assert!(packets.iter().all(|pk| pk.timestamp() == u32::MAX));
    assert_eq!(p.next_seq(), 2);
}

const VPS: &[u8] = &[0x40, 0x01, 0x0c, 0x01, 0xff, 0xff, 0x01, 0x60];
const SPS5: &[u8] = &[0x42, 0x01, 0x01, 0x01, 0x60, 0x00, 0x00, 0x03];
const PPS5: &[u8] = &[0x44, 0x01, 0xc1, 0x72, 0xb4, 0x62, 0x40];

#[test]
fn h265_key_frame_gets_parameter_sets_ap_and_fu() {
    let mut p = packetizer(Codec::H265, 1400, 100);
    p.update_params([VPS, SPS5, PPS5].map(Bytes::from_static));
    let idr = nal(&[0x28, 0x01, 0xaf], 4000);
    let trail = nal(&[0x02, 0x01, 0xd0], 900);
    let au = AccessUnit::new(Codec::H265, vec![idr.clone()]).unwrap();
    assert!(au.key);
    let (packets, _) = p.packetize(&au, 1);
    let d = decode(Codec::H265, &packets);
    assert_eq!(
        d.nals,
        vec![VPS.to_vec(), SPS5.to_vec(), PPS5.to_vec(), idr.to_vec()]
    );
    assert_eq!((packets[0].to_vec()[12] >> 1) & 0x3f, 48, "AP first");
    // 3998 bytes after the header in 1397-byte fragments: 3 FUs.
    assert_eq!(packets.len(), 4);
    assert_eq!(&d.sizes[1..3], &[1412, 1412]);
    assert!(d.headers.last().unwrap().marker);
    assert_eq!(d.headers.iter().filter(|h| h.marker).count(), 1);

    let au = AccessUnit::new(Codec::H265, vec![trail.clone()]).unwrap();
    let (packets, _) = p.packetize(&au, 3601);
    assert_eq!(decode(Codec::H265, &packets).nals, vec![trail.to_vec()]);
    assert_eq!(packets[0].seq(), 104);
}

/// Many access units of pseudo-random shapes, both codecs, several payload
/// sizes: what goes in comes out, in order, with one marker per unit.
#[test]
fn random_access_units_round_trip() {
    let mut seed = 0x9e37_79b9_u32;
    let mut rnd = move |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        seed as usize % n
    };
    for codec in [Codec::H264, Codec::H265] {
        for max in [64, 300, 1400, 8000] {
            let mut p = packetizer(codec, max, rnd(65536) as u16);
            let mut expect_seq = p.next_seq();
            for au_i in 0..50 {
                let mut nals = Vec::new();
                for _ in 0..1 + rnd(4) {
                    let big = rnd(4) == 0;
                    let len = 3 + rnd(if big { 20_000 } else { 600 });
                    let sei = rnd(2) == 0;
                    nals.push(match codec {
                        Codec::H264 => nal(&[if sei { 0x06 } else { 0x41 }, 0x9a], len),
                        Codec::H265 => nal(&[if sei { 0x4e } else { 0x02 }, 0x01, 0xd0], len),
                    });
                }
                let au = AccessUnit::new(codec, nals.clone()).unwrap();
                let (packets, _) = p.packetize(&au, au_i * 3600);
                let d = decode(codec, &packets);
                let expected: Vec<Vec<u8>> = nals.iter().map(|n| n.to_vec()).collect();
                assert_eq!(d.nals, expected, "{codec} max {max} AU {au_i}");
                assert!(d.sizes.iter().all(|s| *s <= max + 12), "{codec} max {max}");
                for h in &d.headers {
                    assert_eq!(h.sequence_number, expect_seq);
                    expect_seq = expect_seq.wrapping_add(1);
                }
                assert_eq!(d.headers.iter().filter(|h| h.marker).count(), 1);
                assert!(d.headers.last().unwrap().marker);
            }
        }
    }
}
