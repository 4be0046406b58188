//! RTP packets of a track besides video (audio, ONVIF metadata): the
//! camera's payload bytes as they came, under mcrelay's RTP header.
//!
//! - [`Payload::Frame`] (G.711, G.722, L16): the frame is the payload.
//! - [`Payload::Aac`]: RFC 3640 AAC-hbr, one access unit per packet behind
//!   its AU header section (AU-headers-length 16, then AU-size in 13 bits
//!   and AU-index 0 in 3); an AU larger than a packet is fragmented, every
//!   fragment with the same AU header (3.2.3), marker on the last.
//! - [`Payload::Message`]: the message split into packets of the payload
//!   size, marker on the last (ONVIF Streaming Specification 5.2.1.1).
//!
//! Bodies are slices of the frame, never copies.

use bytes::Bytes;
use rtp_rs::{RtpPacketBuilder, Seq};

use super::{Frame, RTP_HEADER_LEN, RtpPacket};
use crate::media::{MediaTime, Payload};

/// The largest AU an AAC-hbr header can size: 13 bits.
pub const AAC_MAX_AU: usize = (1 << 13) - 1;
/// AU-headers-length (2 bytes) and one AU header (2 bytes).
const AAC_HEADER_LEN: usize = 4;

pub struct TrackPacketizer {
    payload: Payload,
    payload_type: u8,
    ssrc: u32,
    seq: u16,
    max_payload: usize,
}

/// Why a frame was not sent.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TrackError {
    #[error("an empty frame")]
    Empty,
    #[error("a {0}-byte AAC access unit (AAC-hbr sizes at most {AAC_MAX_AU})")]
    AacTooLarge(usize),
    #[error(
        "a {len}-byte frame does not fit one {max}-byte RTP payload, and this encoding cannot be split"
    )]
    FrameTooLarge { len: usize, max: usize },
}

impl TrackPacketizer {
    /// `max_payload` is the largest RTP payload, as for video; at least 64.
    pub fn new(
        payload: Payload,
        payload_type: u8,
        ssrc: u32,
        initial_seq: u16,
        max_payload: usize,
    ) -> Self {
        TrackPacketizer {
            payload,
            payload_type,
            ssrc,
            seq: initial_seq,
            max_payload: max_payload.max(super::packetizer::MIN_MAX_PAYLOAD),
        }
    }

    pub fn next_seq(&self) -> u16 {
        self.seq
    }

    pub fn payload(&self) -> &Payload {
        &self.payload
    }

    /// The packets of one frame with RTP timestamp `ts`.
    pub fn packetize(&mut self, data: &Bytes, ts: u32) -> Result<Vec<RtpPacket>, TrackError> {
        if data.is_empty() {
            return Err(TrackError::Empty);
        }
        match self.payload {
            Payload::Frame => {
                // A camera sends each frame in one packet; one that exceeds a
                // packet of ours would need an IP fragment: still one datagram.
                if data.len() > self.max_payload.max(1472 - RTP_HEADER_LEN) {
                    return Err(TrackError::FrameTooLarge {
                        len: data.len(),
                        max: self.max_payload,
                    });
                }
                let head = self.header(ts, false, &[]);
                Ok(vec![RtpPacket::new(head, data.clone())])
            }
            Payload::Aac { .. } => {
                if data.len() > AAC_MAX_AU {
                    return Err(TrackError::AacTooLarge(data.len()));
                }
                let size = (data.len() as u16) << 3;
                let au = [0x00, 0x10, (size >> 8) as u8, size as u8];
                let room = self.max_payload - AAC_HEADER_LEN;
                let n = data.len().div_ceil(room);
                Ok((0..n)
                    .map(|i| {
                        let body = data.slice(i * room..((i + 1) * room).min(data.len()));
                        RtpPacket::new(self.header(ts, i + 1 == n, &au), body)
                    })
                    .collect())
            }
            Payload::Message => {
                let room = self.max_payload;
                let n = data.len().div_ceil(room);
                Ok((0..n)
                    .map(|i| {
                        let body = data.slice(i * room..((i + 1) * room).min(data.len()));
                        RtpPacket::new(self.header(ts, i + 1 == n, &[]), body)
                    })
                    .collect())
            }
        }
    }

    fn header(&mut self, ts: u32, marker: bool, extra: &[u8]) -> Bytes {
        let mut h = vec![0u8; RTP_HEADER_LEN + extra.len()];
        RtpPacketBuilder::new()
            .payload_type(self.payload_type)
            .ssrc(self.ssrc)
            .sequence(Seq::from(self.seq))
            .timestamp(ts)
            .marked(marker)
            .build_into_unchecked(&mut h[..RTP_HEADER_LEN]);
        h[RTP_HEADER_LEN..].copy_from_slice(extra);
        self.seq = self.seq.wrapping_add(1);
        Bytes::from(h)
    }
}

/// The rest of a one-packet frame of a byte-per-tick encoding
/// ([`crate::media::TrackDesc::byte_per_tick`], G.711) from `ticks` in: the
/// same packet (sequence number, marker, SSRC) with its first `ticks` bytes
/// cut and its timestamp moved on by as many, at media time `time`. `None`
/// when nothing is left, or the frame is not one packet with a plain header.
pub fn trim_front(frame: &Frame, ticks: usize, time: MediaTime) -> Option<Frame> {
    let [p] = &frame.packets[..] else {
        return None;
    };
    if p.head().len() != RTP_HEADER_LEN || ticks >= p.body().len() {
        return None;
    }
    let mut head = p.head().to_vec();
    let ts = p.timestamp().wrapping_add(ticks as u32);
    head[4..8].copy_from_slice(&ts.to_be_bytes());
    // The instant it stands for moves on with its media time.
    let ahead = u64::try_from(time.0.saturating_sub(frame.time.0)).unwrap_or(0);
    let arrival = frame
        .arrival
        .checked_add(std::time::Duration::from_nanos(
            ahead.saturating_mul(1_000_000_000) / u64::from(crate::media::time::CLOCK_RATE),
        ))
        .unwrap_or(frame.arrival);
    Some(Frame {
        packets: vec![RtpPacket::new(Bytes::from(head), p.body().slice(ticks..))],
        key: frame.key,
        time,
        rtp_timestamp: ts,
        arrival,
        track: frame.track,
        interleaved: Default::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(len: usize) -> Bytes {
        Bytes::from((0..len).map(|i| (i % 251) as u8).collect::<Vec<_>>())
    }

    /// An independent RFC 3640 AAC-hbr reader: AUs back from packets.
    fn read_aac(packets: &[RtpPacket]) -> Vec<Vec<u8>> {
        let mut aus = Vec::new();
        let mut partial: Option<(usize, Vec<u8>)> = None;
        for p in packets {
            let v = p.to_vec();
            let payload = &v[RTP_HEADER_LEN..];
            let headers_bits = u16::from_be_bytes([payload[0], payload[1]]) as usize;
            assert_eq!(headers_bits, 16, "one AU header of 16 bits");
            let h = u16::from_be_bytes([payload[2], payload[3]]);
            let (size, index) = ((h >> 3) as usize, h & 7);
            assert_eq!(index, 0);
            let data = &payload[4..];
            let (want, mut buf) = partial.take().unwrap_or((size, Vec::new()));
            assert_eq!(want, size, "every fragment names the whole AU's size");
            buf.extend_from_slice(data);
            if p.marker() {
                assert_eq!(buf.len(), size);
                aus.push(buf);
            } else {
                assert!(buf.len() < size);
                partial = Some((size, buf));
            }
        }
        assert!(partial.is_none(), "the last AU was finished");
        aus
    }

    #[test]
    fn aac_units_round_trip_whole_and_fragmented() {
        let aac = Payload::Aac {
            config: Bytes::from_static(&[0x11, 0x90]),
        };
        let mut p = TrackPacketizer::new(aac, 97, 7, 65534, 100);
        let mut packets = Vec::new();
        let aus: Vec<Bytes> = [1usize, 96, 97, 400, AAC_MAX_AU]
            .iter()
            .map(|&n| pattern(n))
            .collect();
        for (i, au) in aus.iter().enumerate() {
            let out = p.packetize(au, 1000 * i as u32).unwrap();
            assert!(out.iter().all(|pk| pk.payload_len() <= 100));
            assert!(out.iter().all(|pk| pk.timestamp() == 1000 * i as u32));
            assert_eq!(out.iter().filter(|pk| pk.marker()).count(), 1);
            packets.extend(out);
        }
        let back = read_aac(&packets);
        assert_eq!(back.len(), aus.len());
        for (a, b) in aus.iter().zip(&back) {
            assert_eq!(&a[..], &b[..]);
        }
        // Sequence numbers continue through the wrap.
        let seqs: Vec<u16> = packets.iter().map(RtpPacket::seq).collect();
        assert_eq!(seqs[..3], [65534, 65535, 0]);
        assert!(seqs.windows(2).all(|w| w[1] == w[0].wrapping_add(1)));
        assert_eq!(
            p.packetize(&pattern(AAC_MAX_AU + 1), 0),
            Err(TrackError::AacTooLarge(AAC_MAX_AU + 1))
        );
    }

    #[test]
    fn frames_pass_through_and_messages_split_with_the_marker_last() {
        let mut g711 = TrackPacketizer::new(Payload::Frame, 0, 9, 10, 1400);
        let frame = pattern(160);
        let out = g711.packetize(&frame, 320).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(&out[0].body()[..], &frame[..], "the payload, untouched");
        assert_eq!(out[0].head()[1] & 0x7f, 0, "payload type 0");
        assert_eq!(g711.packetize(&Bytes::new(), 0), Err(TrackError::Empty));

        let mut onvif = TrackPacketizer::new(Payload::Message, 98, 9, 0, 64);
        let xml = pattern(200);
        let out = onvif.packetize(&xml, 5).unwrap();
        assert_eq!(out.len(), 4);
        let marks: Vec<bool> = out.iter().map(RtpPacket::marker).collect();
        assert_eq!(marks, [false, false, false, true]);
        let joined: Vec<u8> = out.iter().flat_map(|p| p.body().to_vec()).collect();
        assert_eq!(joined, xml.to_vec());
    }
}
