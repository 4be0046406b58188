//! An MPEG-2 transport stream writer (ISO/IEC 13818-1) for one video stream.
//! Sans-IO: access units in, 188-byte packets appended to a buffer.
//!
//! Why MPEG-TS and not fragmented MP4 for the material segments: tried on the
//! shipped clips with ffmpeg (`-c copy`, `-f mpegts` and `-f mp4 -movflags
//! frag_keyframe+empty_moov`), both open in ffprobe with the right duration,
//! but a file cut at 60% of its length (a kill -9 in the middle of a write)
//! reads cleanly as TS (every 188-byte packet stands alone) while fMP4 reports
//! "partial file" and NAL splitting errors. TS also stores the camera's Annex-B
//! as it is (MP4 needs avcC/hvcC and length prefixes) and has no header to
//! finalize, so a segment is always a playable prefix while it is written.
//! Its cost is size: about 3% over the elementary stream at 4 Mbit/s (a
//! 4-byte header per 184 payload bytes, and per picture a PES header, an
//! AUD, the PCR and half a packet of stuffing on average), against under 1%
//! for fMP4 — a fair price for material that must survive a crash.
//!
//! Layout: PAT (PID 0) and PMT (PID 0x1000) before every key frame, one video
//! PID (0x100) that also carries the PCR, one PES per access unit with PTS
//! (= DTS: cameras send no B-frames; the relay keeps decode order), an access
//! unit delimiter first (H.264 and H.265 in TS require it), parameter sets
//! before each key frame that lacks them.

use bytes::Bytes;

use crate::media::{Codec, NalKind};

pub const PACKET: usize = 188;
const PMT_PID: u16 = 0x1000;
const VIDEO_PID: u16 = 0x100;
const PROGRAM: u16 = 1;
/// The PCR runs this far ahead of the PTS: a decoder buffers a little before
/// presenting (T-STD); 100 ms covers a key frame of a few hundred KB.
const PCR_LEAD: u64 = 9_000;
const PTS_MASK: u64 = (1 << 33) - 1;

/// The stream type of the PMT entry (ISO/IEC 13818-1 table 2-34).
fn stream_type(codec: Codec) -> u8 {
    match codec {
        Codec::H264 => 0x1b,
        Codec::H265 => 0x24,
    }
}

fn aud(codec: Codec) -> &'static [u8] {
    match codec {
        // nal_unit_type 9, primary_pic_type 7 (any slice type), stop bit.
        Codec::H264 => &[0x09, 0xf0],
        // nal_unit_type 35, layer 0, temporal id 1; pic_type 2, stop bit.
        Codec::H265 => &[0x46, 0x01, 0x50],
    }
}

/// Writes one program with one video stream.
pub struct TsWriter {
    codec: Codec,
    cc_pat: u8,
    cc_pmt: u8,
    cc_video: u8,
}

impl TsWriter {
    pub fn new(codec: Codec) -> Self {
        TsWriter {
            codec,
            cc_pat: 0,
            cc_pmt: 0,
            cc_video: 0,
        }
    }

    pub fn codec(&self) -> Codec {
        self.codec
    }

    /// Appends one access unit (NAL units without start codes) presented at
    /// `pts` (90 kHz, any epoch; taken modulo 2^33). `params` are written
    /// before a key frame that carries none of its own.
    pub fn write_au(
        &mut self,
        nals: &[Bytes],
        key: bool,
        params: &[Bytes],
        pts: u64,
        out: &mut Vec<u8>,
    ) {
        if key {
            self.write_psi(out);
        }
        let pts = pts & PTS_MASK;
        let has_aud = nals
            .first()
            .is_some_and(|n| self.codec.classify(n) == NalKind::Aud);
        let has_params = nals.iter().any(|n| {
            matches!(
                self.codec.classify(n),
                NalKind::Vps | NalKind::Sps | NalKind::Pps
            )
        });
        let mut es: Vec<&[u8]> = Vec::with_capacity(nals.len() + params.len() + 1);
        if !has_aud {
            es.push(aud(self.codec));
        }
        if key && !has_params {
            es.extend(params.iter().map(|p| &p[..]));
        }
        es.extend(nals.iter().map(|n| &n[..]));
        let es_len: usize = es.iter().map(|n| 4 + n.len()).sum();

        // PES header: start code, stream id, length 0 (unbounded: video),
        // '10' marker, flags PTS only, header data length 5, PTS.
        let mut head = [0u8; 14];
        head[..4].copy_from_slice(&[0, 0, 1, 0xe0]);
        head[6] = 0x80;
        head[7] = 0x80;
        head[8] = 5;
        put_timestamp(&mut head[9..14], 0x2, pts);

        let mut chunks = PesBytes::new(&head, &es);
        let total = head.len() + es_len;
        let mut written = 0;
        let mut first = true;
        while written < total {
            let remaining = total - written;
            let start = out.len();
            out.resize(start + PACKET, 0xff);
            let p = &mut out[start..];
            p[0] = 0x47;
            p[1] = (if first { 0x40 } else { 0 }) | (VIDEO_PID >> 8) as u8;
            p[2] = VIDEO_PID as u8;
            // Adaptation field: PCR and random access on the first packet,
            // stuffing on the last.
            let af_min = if first { 8 } else { 0 };
            let room = PACKET - 4 - af_min;
            let (af_len, payload) = if remaining >= room {
                (af_min, room)
            } else {
                let af = PACKET - 4 - remaining;
                (af, remaining)
            };
            self.cc_video = (self.cc_video + 1) & 0x0f;
            p[3] = (if af_len > 0 { 0x30 } else { 0x10 }) | self.cc_video;
            if af_len > 0 {
                // adaptation_field_length counts the bytes after itself.
                p[4] = (af_len - 1) as u8;
                if af_len > 1 {
                    p[5] = 0;
                    if first {
                        p[5] = if key { 0x50 } else { 0x10 };
                        let pcr = pts.wrapping_sub(PCR_LEAD) & PTS_MASK;
                        put_pcr(&mut p[6..12], pcr);
                    }
                }
            }
            let at = 4 + af_len;
            chunks.fill(&mut p[at..at + payload]);
            written += payload;
            first = false;
        }
    }

    /// Appends the PAT and the PMT.
    pub fn write_psi(&mut self, out: &mut Vec<u8>) {
        // PAT: program 1 -> PMT PID.
        let mut pat = vec![0x00, 0xb0, 0, 0x00, 0x01, 0xc1, 0x00, 0x00];
        pat.extend_from_slice(&PROGRAM.to_be_bytes());
        pat.extend_from_slice(&(0xe000 | PMT_PID).to_be_bytes());
        self.cc_pat = (self.cc_pat + 1) & 0x0f;
        section(out, 0, self.cc_pat, &mut pat);
        // PMT: PCR on the video PID, one elementary stream.
        let mut pmt = vec![0x02, 0xb0, 0];
        pmt.extend_from_slice(&PROGRAM.to_be_bytes());
        pmt.extend_from_slice(&[0xc1, 0x00, 0x00]);
        pmt.extend_from_slice(&(0xe000 | VIDEO_PID).to_be_bytes());
        pmt.extend_from_slice(&[0xf0, 0x00]);
        pmt.push(stream_type(self.codec));
        pmt.extend_from_slice(&(0xe000 | VIDEO_PID).to_be_bytes());
        pmt.extend_from_slice(&[0xf0, 0x00]);
        self.cc_pmt = (self.cc_pmt + 1) & 0x0f;
        section(out, PMT_PID, self.cc_pmt, &mut pmt);
    }
}

/// Writes a PSI section (its length field filled in, CRC appended) as one
/// packet.
fn section(out: &mut Vec<u8>, pid: u16, cc: u8, body: &mut Vec<u8>) {
    let len = body.len() - 3 + 4;
    body[1] = 0xb0 | (len >> 8) as u8;
    body[2] = len as u8;
    let crc = crc32_mpeg(body);
    body.extend_from_slice(&crc.to_be_bytes());
    let start = out.len();
    out.resize(start + PACKET, 0xff);
    let p = &mut out[start..];
    p[0] = 0x47;
    p[1] = 0x40 | (pid >> 8) as u8;
    p[2] = pid as u8;
    p[3] = 0x10 | cc;
    p[4] = 0; // pointer field
    p[5..5 + body.len()].copy_from_slice(body);
}

/// The PES header followed by the access unit's NAL units, each behind a
/// 4-byte start code, read out in pieces.
struct PesBytes<'a> {
    head: &'a [u8],
    nals: &'a [&'a [u8]],
    /// Position: index into `nals` (`usize::MAX` = in `head`) and offset
    /// within the 4-byte start code + NAL unit.
    nal: usize,
    off: usize,
}

const START_CODE: [u8; 4] = [0, 0, 0, 1];

impl<'a> PesBytes<'a> {
    fn new(head: &'a [u8], nals: &'a [&'a [u8]]) -> Self {
        PesBytes {
            head,
            nals,
            nal: usize::MAX,
            off: 0,
        }
    }

    fn fill(&mut self, mut dst: &mut [u8]) {
        while !dst.is_empty() {
            let src: &[u8] = if self.nal == usize::MAX {
                &self.head[self.off..]
            } else if self.off < 4 {
                &START_CODE[self.off..]
            } else {
                &self.nals[self.nal][self.off - 4..]
            };
            if src.is_empty() {
                self.nal = self.nal.wrapping_add(1);
                self.off = 0;
                if self.nal >= self.nals.len() {
                    return;
                }
                continue;
            }
            let n = src.len().min(dst.len());
            dst[..n].copy_from_slice(&src[..n]);
            self.off += n;
            dst = &mut dst[n..];
        }
    }
}

/// A 33-bit PTS/DTS in the 5-byte PES form with a 4-bit prefix.
fn put_timestamp(b: &mut [u8], prefix: u8, t: u64) {
    b[0] = (prefix << 4) | (((t >> 30) as u8 & 0x07) << 1) | 1;
    b[1] = (t >> 22) as u8;
    b[2] = (((t >> 15) as u8 & 0x7f) << 1) | 1;
    b[3] = (t >> 7) as u8;
    b[4] = ((t as u8 & 0x7f) << 1) | 1;
}

/// A PCR with base `t` (90 kHz) and extension 0.
fn put_pcr(b: &mut [u8], t: u64) {
    b[0] = (t >> 25) as u8;
    b[1] = (t >> 17) as u8;
    b[2] = (t >> 9) as u8;
    b[3] = (t >> 1) as u8;
    b[4] = ((t as u8 & 1) << 7) | 0x7e;
    b[5] = 0;
}

/// CRC-32/MPEG-2 (polynomial 0x04C11DB7, not reflected, no final xor).
pub fn crc32_mpeg(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in data {
        crc ^= u32::from(b) << 24;
        for _ in 0..8 {
            crc = if crc & 0x8000_0000 != 0 {
                (crc << 1) ^ 0x04c1_1db7
            } else {
                crc << 1
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_matches_the_standard_check_value() {
        // CRC-32/MPEG-2 of "123456789".
        assert_eq!(crc32_mpeg(b"123456789"), 0x0376_e6e7);
    }

    #[test]
    fn pes_is_split_into_whole_packets_with_continuity() {
        let mut w = TsWriter::new(Codec::H264);
        let mut out = Vec::new();
        let idr = Bytes::from([&[0x65u8][..], &[0xab; 3000][..]].concat());
        let sps = Bytes::from_static(&[0x67, 0x42, 0, 0x1e]);
        let pps = Bytes::from_static(&[0x68, 0xce, 0x3c, 0x80]);
        w.write_au(
            std::slice::from_ref(&idr),
            true,
            &[sps, pps],
            90_000,
            &mut out,
        );
        assert_eq!(out.len() % PACKET, 0);
        assert!(out.chunks(PACKET).all(|p| p[0] == 0x47));
        // PAT, PMT, then the video PID with counters 1, 2, 3...
        let video: Vec<&[u8]> = out
            .chunks(PACKET)
            .filter(|p| (u16::from(p[1] & 0x1f) << 8 | u16::from(p[2])) == VIDEO_PID)
            .collect();
        for (i, p) in video.iter().enumerate() {
            assert_eq!(p[3] & 0x0f, ((i + 1) & 0x0f) as u8);
        }
        // Payload unit start only on the first; random access flag set.
        assert_eq!(video[0][1] & 0x40, 0x40);
        assert!(video[1..].iter().all(|p| p[1] & 0x40 == 0));
        assert_eq!(video[0][5] & 0x40, 0x40);
        // The elementary stream round-trips: AUD, SPS, PPS, the slice.
        let mut es = Vec::new();
        for p in &video {
            let start = if p[3] & 0x20 != 0 {
                5 + p[4] as usize
            } else {
                4
            };
            es.extend_from_slice(&p[start..]);
        }
        assert_eq!(&es[..4], &[0, 0, 1, 0xe0]);
        let body = &es[14..];
        assert_eq!(&body[..6], &[0, 0, 0, 1, 0x09, 0xf0]);
        assert_eq!(&body[6..11], &[0, 0, 0, 1, 0x67]);
        assert_eq!(body.len(), 6 + 8 + 8 + 4 + idr.len());
        assert_eq!(&body[body.len() - idr.len()..], &idr[..]);
    }

    #[test]
    fn timestamps_encode_33_bits() {
        let mut b = [0u8; 5];
        let t = (1u64 << 33) - 2;
        put_timestamp(&mut b, 2, t);
        let back = (u64::from(b[0] >> 1) & 7) << 30
            | u64::from(b[1]) << 22
            | u64::from(b[2] >> 1) << 15
            | u64::from(b[3]) << 7
            | u64::from(b[4] >> 1);
        assert_eq!(back, t);
        assert_eq!(b[0] >> 4, 2);
    }
}
