//! RTP: packets built once and shared by every sink, the H.264/H.265
//! packetizers, and RTCP sender reports. Sans-IO.

pub mod packetizer;
pub mod report_clock;
pub mod rtcp;
pub mod track;

use std::time::Instant;

use bytes::Bytes;

use crate::media::MediaTime;

pub use packetizer::{Packetizer, PacketizerConfig};

/// Fixed RTP header length (RFC 3550 5.1; mcrelay writes no CSRCs or extensions).
pub const RTP_HEADER_LEN: usize = 12;

/// Dynamic payload type used for video (RFC 3551 section 3: 96-127 are dynamic).
pub const VIDEO_PAYLOAD_TYPE: u8 = 96;

/// One RTP packet: a small header part (RTP header plus the payload header of
/// an FU or aggregation packet) and a body that is a slice of an ingest
/// buffer. Sinks write both parts with one vectored write; nobody copies the
/// body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RtpPacket {
    head: Bytes,
    body: Bytes,
}

impl RtpPacket {
    /// `head` must hold at least the 12-byte RTP header.
    pub fn new(head: Bytes, body: Bytes) -> Self {
        debug_assert!(head.len() >= RTP_HEADER_LEN);
        RtpPacket { head, body }
    }

    pub fn head(&self) -> &Bytes {
        &self.head
    }

    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// Total length on the wire (UDP payload).
    pub fn len(&self) -> usize {
        self.head.len() + self.body.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// RTP payload length (without the 12-byte header): RTCP's octet count.
    pub fn payload_len(&self) -> usize {
        self.len() - RTP_HEADER_LEN
    }

    pub fn seq(&self) -> u16 {
        u16::from_be_bytes([self.head[2], self.head[3]])
    }

    pub fn timestamp(&self) -> u32 {
        u32::from_be_bytes([self.head[4], self.head[5], self.head[6], self.head[7]])
    }

    pub fn ssrc(&self) -> u32 {
        u32::from_be_bytes([self.head[8], self.head[9], self.head[10], self.head[11]])
    }

    pub fn marker(&self) -> bool {
        self.head[1] & 0x80 != 0
    }

    /// The packet as one contiguous buffer (tests and diagnostics; the send
    /// paths use [`RtpPacket::head`] and [`RtpPacket::body`]).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.len());
        v.extend_from_slice(&self.head);
        v.extend_from_slice(&self.body);
        v
    }
}

/// The packets of one access unit, as published to every sink of a channel.
#[derive(Debug)]
pub struct Frame {
    pub packets: Vec<RtpPacket>,
    /// A decoder can start at this frame (parameter sets included).
    pub key: bool,
    /// Output media time (continuous across camera reconnects).
    pub time: MediaTime,
    pub rtp_timestamp: u32,
    /// When the access unit arrived at ingest (monotonic): maps media time to
    /// real time for RTCP and pacing.
    pub arrival: Instant,
    /// Which track of the channel: 0 the video, n the n-th track besides it
    /// (the SDP's `trackID=n`).
    pub track: u8,
    /// The frame as RTSP interleaved data on channel 0, built by the first
    /// TCP client that sends it and shared by all the others.
    pub interleaved: std::sync::OnceLock<Bytes>,
}

impl Frame {
    /// The packets framed as interleaved data (`$`, channel 0, length,
    /// packet) in one buffer: one copy per frame and channel, however many
    /// TCP clients write it. A write of one contiguous buffer costs the
    /// kernel far less than one of three small slices per packet.
    pub fn interleaved(&self) -> &Bytes {
        self.interleaved.get_or_init(|| {
            let mut v = Vec::with_capacity(self.byte_len() + 4 * self.packets.len());
            for p in &self.packets {
                let len = p.len() as u16;
                v.extend_from_slice(&[b'$', 0, (len >> 8) as u8, len as u8]);
                v.extend_from_slice(p.head());
                v.extend_from_slice(p.body());
            }
            Bytes::from(v)
        })
    }

    pub fn byte_len(&self) -> usize {
        self.packets.iter().map(RtpPacket::len).sum()
    }

    pub fn payload_len(&self) -> usize {
        self.packets.iter().map(RtpPacket::payload_len).sum()
    }
}
