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
//! PID (0x100) that also carries the PCR, an AAC audio PID (0x101, ADTS, one
//! PES per AAC frame) when the camera sends AAC, a metadata PID (0x102, PES
//! private data, one PES per ONVIF document) when it sends metadata, an audio
//! PID (0x103, PES private data, the encoding named in the PMT) for G.711,
//! G.722 or L16, which MPEG-TS has no stream type for, one PES
//! per access unit with
//! PTS, and DTS when a B-frame camera's differ ([`super::reorder`]), an access
//! unit delimiter first (H.264 and H.265 in TS require it), parameter sets
//! before each key frame that lacks them.

use bytes::Bytes;

use crate::media::{Codec, NalKind};

pub const PACKET: usize = 188;
const PMT_PID: u16 = 0x1000;
const VIDEO_PID: u16 = 0x100;
const AUDIO_PID: u16 = 0x101;
const METADATA_PID: u16 = 0x102;
const RAW_AUDIO_PID: u16 = 0x103;
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
    audio: Option<TsAudio>,
    /// The metadata PID's continuity counter, when there is one.
    metadata: Option<u8>,
    /// Audio MPEG-TS has no stream type for (G.711, G.722, L16), kept as
    /// PES private data: its continuity counter and its rtpmap.
    raw_audio: Option<(u8, String)>,
}

impl TsWriter {
    pub fn new(codec: Codec) -> Self {
        TsWriter {
            codec,
            cc_pat: 0,
            cc_pmt: 0,
            cc_video: 0,
            audio: None,
            metadata: None,
            raw_audio: None,
        }
    }

    /// With an AAC stream (ADTS, PID 0x101) beside the video.
    pub fn with_aac(mut self, adts: Adts) -> Self {
        self.audio = Some(TsAudio { adts, cc: 0 });
        self
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
        self.write_au_dts(nals, key, params, pts, pts, out);
    }

    /// [`TsWriter::write_au`] with a decode time of its own (B-frames):
    /// the PES carries both, and the PCR follows the decode time.
    pub fn write_au_dts(
        &mut self,
        nals: &[Bytes],
        key: bool,
        params: &[Bytes],
        pts: u64,
        dts: u64,
        out: &mut Vec<u8>,
    ) {
        if key {
            self.write_psi(out);
        }
        let pts = pts & PTS_MASK;
        let dts = dts & PTS_MASK;
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
        // '10' marker, flags PTS (and DTS when it differs), header data
        // length, the times.
        let mut head_buf = [0u8; 19];
        head_buf[..4].copy_from_slice(&[0, 0, 1, 0xe0]);
        head_buf[6] = 0x80;
        let head = if dts == pts {
            head_buf[7] = 0x80;
            head_buf[8] = 5;
            put_timestamp(&mut head_buf[9..14], 0x2, pts);
            &head_buf[..14]
        } else {
            head_buf[7] = 0xc0;
            head_buf[8] = 10;
            put_timestamp(&mut head_buf[9..14], 0x3, pts);
            put_timestamp(&mut head_buf[14..19], 0x1, dts);
            &head_buf[..]
        };

        let mut chunks = PesBytes::new(head, &es);
        let total = head.len() + es_len;
        let pcr = Some((dts.wrapping_sub(PCR_LEAD) & PTS_MASK, key));
        write_pes(VIDEO_PID, &mut self.cc_video, pcr, &mut chunks, total, out);
    }

    /// Appends one AAC access unit (raw, as RFC 3640 carries it) presented
    /// at `pts`, as ADTS in a PES of its own. Nothing without an audio
    /// stream ([`TsWriter::with_aac`]).
    pub fn write_audio(&mut self, au: &[u8], pts: u64, out: &mut Vec<u8>) {
        let Some(a) = &mut self.audio else { return };
        let Some(adts) = a.adts.header(au.len()) else {
            return;
        };
        let pts = pts & PTS_MASK;
        // PES: audio stream 0, a bounded length, PTS only.
        let pes_len = 3 + 5 + adts.len() + au.len();
        let mut head = [0u8; 14];
        head[..4].copy_from_slice(&[0, 0, 1, 0xc0]);
        head[4..6].copy_from_slice(&(pes_len.min(0xffff) as u16).to_be_bytes());
        head[6] = 0x80;
        head[7] = 0x80;
        head[8] = 5;
        put_timestamp(&mut head[9..14], 0x2, pts);
        let body = [&adts[..], au];
        let mut chunks = PesBytes::raw(&head, &body);
        let total = head.len() + adts.len() + au.len();
        write_pes(AUDIO_PID, &mut a.cc, None, &mut chunks, total, out);
    }

    /// Whether the stream has an audio PID.
    pub fn has_audio(&self) -> bool {
        self.audio.is_some()
    }

    /// With an audio stream of an encoding MPEG-TS has no stream type for
    /// (PID 0x103, PES private data): the frames as the camera sent them,
    /// each in a PES at its time, and the encoding (`rtpmap`, e.g.
    /// "PCMU/8000/1") in a descriptor of the PMT, so that nothing of the
    /// material is lost and it can be told apart and extracted.
    pub fn with_raw_audio(mut self, rtpmap: &str) -> Self {
        let mut name: String = rtpmap.chars().filter(char::is_ascii_graphic).collect();
        name.truncate(64);
        self.raw_audio = Some((0, name));
        self
    }

    pub fn has_raw_audio(&self) -> bool {
        self.raw_audio.is_some()
    }

    /// Appends one frame of the raw audio stream, presented at `pts`.
    pub fn write_raw_audio(&mut self, frame: &[u8], pts: u64, out: &mut Vec<u8>) {
        let Some((cc, _)) = &mut self.raw_audio else {
            return;
        };
        write_private(RAW_AUDIO_PID, cc, frame, pts, out);
    }

    /// With a metadata stream (PES private data, PID 0x102) for the
    /// camera's ONVIF metadata documents.
    pub fn with_metadata(mut self) -> Self {
        self.metadata = Some(0);
        self
    }

    pub fn has_metadata(&self) -> bool {
        self.metadata.is_some()
    }

    /// Appends one metadata document (ONVIF XML, as the camera sent it)
    /// presented at `pts`, in a PES of its own (private stream 1).
    pub fn write_metadata(&mut self, doc: &[u8], pts: u64, out: &mut Vec<u8>) {
        let Some(cc) = &mut self.metadata else { return };
        write_private(METADATA_PID, cc, doc, pts, out);
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
        if self.audio.is_some() {
            // ISO/IEC 13818-7 ADTS.
            pmt.push(0x0f);
            pmt.extend_from_slice(&(0xe000 | AUDIO_PID).to_be_bytes());
            pmt.extend_from_slice(&[0xf0, 0x00]);
        }
        if let Some((_, rtpmap)) = &self.raw_audio {
            // PES private data, with a user private descriptor (tag 0xa0)
            // that names the encoding as RTP does.
            pmt.push(0x06);
            pmt.extend_from_slice(&(0xe000 | RAW_AUDIO_PID).to_be_bytes());
            let desc_len = 2 + rtpmap.len();
            pmt.extend_from_slice(&(0xf000 | desc_len as u16).to_be_bytes());
            pmt.extend_from_slice(&[0xa0, rtpmap.len() as u8]);
            pmt.extend_from_slice(rtpmap.as_bytes());
        }
        if self.metadata.is_some() {
            // PES private data.
            pmt.push(0x06);
            pmt.extend_from_slice(&(0xe000 | METADATA_PID).to_be_bytes());
            pmt.extend_from_slice(&[0xf0, 0x00]);
        }
        self.cc_pmt = (self.cc_pmt + 1) & 0x0f;
        section(out, PMT_PID, self.cc_pmt, &mut pmt);
    }
}

/// Cuts a PES into packets of `pid`. With `pcr`, the first packet's
/// adaptation field carries it (and the random access flag for a key
/// frame); the last packet is filled up with adaptation-field stuffing.
fn write_pes(
    pid: u16,
    cc: &mut u8,
    pcr: Option<(u64, bool)>,
    chunks: &mut PesBytes<'_>,
    total: usize,
    out: &mut Vec<u8>,
) {
    let mut written = 0;
    let mut first = true;
    while written < total {
        let remaining = total - written;
        let start = out.len();
        out.resize(start + PACKET, 0xff);
        let p = &mut out[start..];
        p[0] = 0x47;
        p[1] = (if first { 0x40 } else { 0 }) | (pid >> 8) as u8;
        p[2] = pid as u8;
        let with_pcr = pcr.filter(|_| first);
        let af_min = if with_pcr.is_some() { 8 } else { 0 };
        let room = PACKET - 4 - af_min;
        let (af_len, payload) = if remaining >= room {
            (af_min, room)
        } else {
            let af = PACKET - 4 - remaining;
            (af, remaining)
        };
        *cc = (*cc + 1) & 0x0f;
        p[3] = (if af_len > 0 { 0x30 } else { 0x10 }) | *cc;
        if af_len > 0 {
            // adaptation_field_length counts the bytes after itself.
            p[4] = (af_len - 1) as u8;
            if af_len > 1 {
                p[5] = 0;
                if let Some((pcr, key)) = with_pcr {
                    p[5] = if key { 0x50 } else { 0x10 };
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

/// One PES of private data (stream id 0xbd, private stream 1) at `pts`:
/// a bounded length, or 0 (unbounded) past 64 KiB.
fn write_private(pid: u16, cc: &mut u8, data: &[u8], pts: u64, out: &mut Vec<u8>) {
    let pts = pts & PTS_MASK;
    let pes_len = 3 + 5 + data.len();
    let mut head = [0u8; 14];
    head[..4].copy_from_slice(&[0, 0, 1, 0xbd]);
    let len = if pes_len > 0xffff { 0 } else { pes_len as u16 };
    head[4..6].copy_from_slice(&len.to_be_bytes());
    head[6] = 0x80;
    head[7] = 0x80;
    head[8] = 5;
    put_timestamp(&mut head[9..14], 0x2, pts);
    let body = [data];
    let mut chunks = PesBytes::raw(&head, &body);
    write_pes(pid, cc, None, &mut chunks, head.len() + data.len(), out);
}

/// The fixed part of an ADTS header (ISO/IEC 14496-3 1.A.2) for an AAC
/// stream, from its AudioSpecificConfig.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Adts {
    /// ADTS profile: audio object type - 1 (AAC Main, LC, SSR, LTP).
    profile: u8,
    freq_index: u8,
    channels: u8,
}

impl Adts {
    /// Reads the object type, sampling frequency index and channel
    /// configuration of an AudioSpecificConfig; HE-AAC (SBR, PS) is
    /// written as its AAC core, which every decoder plays (implicit SBR).
    pub fn from_config(config: &[u8]) -> Result<Adts, String> {
        let bits = |from: usize, n: usize| -> Option<u32> {
            let mut v = 0u32;
            for i in from..from + n {
                let byte = *config.get(i / 8)?;
                v = (v << 1) | u32::from((byte >> (7 - i % 8)) & 1);
            }
            Some(v)
        };
        let short = || {
            format!(
                "an AudioSpecificConfig of {} bytes is too short",
                config.len()
            )
        };
        let mut object = bits(0, 5).ok_or_else(short)?;
        let freq_index = bits(5, 4).ok_or_else(short)?;
        let channels = bits(9, 4).ok_or_else(short)?;
        if freq_index == 15 {
            return Err("an explicit sampling rate, which ADTS cannot state".into());
        }
        if object == 5 || object == 29 {
            // SBR/PS: extension frequency, then the core's object type.
            object = bits(17, 5).ok_or_else(short)?;
        }
        if !(1..=4).contains(&object) {
            return Err(format!(
                "audio object type {object}, which ADTS cannot carry"
            ));
        }
        if channels == 0 || channels > 7 {
            return Err(format!(
                "channel configuration {channels}, which ADTS cannot state"
            ));
        }
        Ok(Adts {
            profile: (object - 1) as u8,
            freq_index: freq_index as u8,
            channels: channels as u8,
        })
    }

    /// The 7-byte header (no CRC) of a frame of `len` payload bytes.
    fn header(&self, len: usize) -> Option<[u8; 7]> {
        let frame = len + 7;
        if frame >= 1 << 13 {
            return None;
        }
        let f = frame as u16;
        Some([
            0xff,
            0xf1, // MPEG-4, layer 0, no CRC
            (self.profile << 6) | (self.freq_index << 2) | (self.channels >> 2),
            ((self.channels & 3) << 6) | (f >> 11) as u8,
            (f >> 3) as u8,
            ((f as u8 & 7) << 5) | 0x1f, // buffer fullness 0x7ff: variable
            0xfc,
        ])
    }
}

/// The audio stream of a [`TsWriter`].
struct TsAudio {
    adts: Adts,
    cc: u8,
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
    /// Bytes before each piece: a start code for NAL units, none for audio.
    prefix: &'static [u8],
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
            prefix: &START_CODE,
            nal: usize::MAX,
            off: 0,
        }
    }

    /// The pieces as they are, without start codes.
    fn raw(head: &'a [u8], pieces: &'a [&'a [u8]]) -> Self {
        PesBytes {
            prefix: &[],
            ..PesBytes::new(head, pieces)
        }
    }

    fn fill(&mut self, mut dst: &mut [u8]) {
        while !dst.is_empty() {
            let pre = self.prefix.len();
            let src: &[u8] = if self.nal == usize::MAX {
                &self.head[self.off..]
            } else if self.off < pre {
                &self.prefix[self.off..]
            } else {
                &self.nals[self.nal][self.off - pre..]
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

/// What [`TsScanner`] found in a transport stream: the video stream's
/// presentation times, enough to index a segment from its file alone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScanSummary {
    /// Whole 188-byte packets read.
    pub packets: u64,
    /// Packets without the sync byte (damage), skipped.
    pub bad_packets: u64,
    /// PES packets (access units) with a PTS on the video PID.
    pub frames: u64,
    /// The first frame's PTS, as written (90 kHz, 33 bits).
    pub first_pts: Option<u64>,
    /// Ticks the frames cover: per run of frames without a clock jump
    /// (a step over one second either way), its last minus its first
    /// presentation time plus one frame.
    pub span: i64,
    /// The last forward step between two frames (a frame's duration).
    pub last_step: Option<i64>,
    /// Bytes after the last whole packet (a file cut short).
    pub trailing: usize,
}

impl ScanSummary {
    /// The time the frames cover, ms.
    pub fn duration_ms(&self) -> i64 {
        self.span / 90
    }
}

/// Reads a transport stream in pieces (sans-IO) and notes the presentation
/// times of its video stream: the PAT names the PMT, the PMT names the
/// first H.264/H.265 stream. Tolerates damage: packets without a sync byte
/// are counted and skipped, PES headers it cannot read are ignored.
#[derive(Debug, Default)]
pub struct TsScanner {
    carry: Vec<u8>,
    pmt_pid: Option<u16>,
    video_pid: Option<u16>,
    last_raw: Option<u64>,
    /// Unwrapped PTS of the last frame, relative to the current run's first.
    last: i64,
    /// The current run's extremes (B-frames present out of order).
    run: (i64, i64),
    /// Ticks covered by the runs before the current one.
    done: i64,
    sum: ScanSummary,
}

impl TsScanner {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, mut data: &[u8]) {
        if !self.carry.is_empty() {
            let need = PACKET - self.carry.len();
            let take = need.min(data.len());
            self.carry.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.carry.len() < PACKET {
                return;
            }
            let p = std::mem::take(&mut self.carry);
            self.packet(&p);
        }
        let mut chunks = data.chunks_exact(PACKET);
        for p in &mut chunks {
            self.packet(p);
        }
        self.carry.extend_from_slice(chunks.remainder());
    }

    pub fn finish(mut self) -> ScanSummary {
        self.sum.trailing = self.carry.len();
        if self.sum.frames > 0 {
            self.sum.span = self.done.saturating_add(self.run_span());
        }
        self.sum
    }

    fn run_span(&self) -> i64 {
        self.run.1 - self.run.0 + self.sum.last_step.unwrap_or(3600)
    }

    fn packet(&mut self, p: &[u8]) {
        self.sum.packets += 1;
        if p[0] != 0x47 {
            self.sum.bad_packets += 1;
            return;
        }
        let start = p[1] & 0x40 != 0;
        let pid = (u16::from(p[1] & 0x1f) << 8) | u16::from(p[2]);
        let afc = (p[3] >> 4) & 0x3;
        if afc & 0x1 == 0 {
            return; // no payload
        }
        let at = if afc == 0x3 { 5 + usize::from(p[4]) } else { 4 };
        let Some(payload) = p.get(at..) else {
            return;
        };
        if pid == 0 && start {
            self.pmt_pid = self.pmt_pid.or_else(|| pat_pmt_pid(payload));
        } else if Some(pid) == self.pmt_pid && start {
            self.video_pid = self.video_pid.or_else(|| pmt_video_pid(payload));
        } else if Some(pid) == self.video_pid
            && start
            && let Some(pts) = pes_pts(payload)
        {
            self.frame(pts);
        }
    }

    fn frame(&mut self, raw: u64) {
        self.sum.frames += 1;
        let Some(prev) = self.last_raw else {
            self.last_raw = Some(raw);
            self.sum.first_pts = Some(raw);
            return;
        };
        // The step as a signed 33-bit difference: wraps are not jumps.
        let wrapped = raw.wrapping_sub(prev) & PTS_MASK;
        let step = if wrapped >= 1 << 32 {
            wrapped as i64 - (1i64 << 33)
        } else {
            wrapped as i64
        };
        self.last_raw = Some(raw);
        if step.abs() > i64::from(crate::media::time::CLOCK_RATE) {
            // A clock jump: the time between is no material.
            self.done = self.done.saturating_add(self.run_span());
            self.run = (0, 0);
            self.last = 0;
            return;
        }
        if step > 0 {
            self.sum.last_step = Some(step);
        }
        self.last += step;
        self.run = (self.run.0.min(self.last), self.run.1.max(self.last));
    }
}

/// The PMT PID of the first program in a PAT section.
fn pat_pmt_pid(payload: &[u8]) -> Option<u16> {
    let sec = payload.get(1 + usize::from(*payload.first()?)..)?;
    if *sec.first()? != 0x00 {
        return None;
    }
    let len = (usize::from(sec.get(1)? & 0x0f) << 8) | usize::from(*sec.get(2)?);
    // Programs from byte 8 to the CRC; program 0 is the network PID.
    let body = sec.get(8..(3 + len).checked_sub(4)?)?;
    body.chunks_exact(4)
        .find(|e| u16::from_be_bytes([e[0], e[1]]) != 0)
        .map(|e| (u16::from(e[2] & 0x1f) << 8) | u16::from(e[3]))
}

/// The PID of the first H.264 or H.265 stream in a PMT section.
fn pmt_video_pid(payload: &[u8]) -> Option<u16> {
    let sec = payload.get(1 + usize::from(*payload.first()?)..)?;
    if *sec.first()? != 0x02 {
        return None;
    }
    let len = (usize::from(sec.get(1)? & 0x0f) << 8) | usize::from(*sec.get(2)?);
    let end = (3 + len).checked_sub(4)?;
    let info = (usize::from(sec.get(10)? & 0x0f) << 8) | usize::from(*sec.get(11)?);
    let mut at = 12 + info;
    while at + 5 <= end {
        let e = sec.get(at..at + 5)?;
        let pid = (u16::from(e[1] & 0x1f) << 8) | u16::from(e[2]);
        if matches!(e[0], 0x1b | 0x24) {
            return Some(pid);
        }
        at += 5 + ((usize::from(e[3] & 0x0f) << 8) | usize::from(e[4]));
    }
    None
}

/// The PTS of a PES header at the start of `payload`, if it has one.
fn pes_pts(payload: &[u8]) -> Option<u64> {
    let h = payload.get(..14)?;
    if h[..3] != [0, 0, 1] || h[7] & 0x80 == 0 {
        return None;
    }
    let b = &h[9..14];
    Some(
        (u64::from(b[0] >> 1) & 7) << 30
            | u64::from(b[1]) << 22
            | u64::from(b[2] >> 1) << 15
            | u64::from(b[3]) << 7
            | u64::from(b[4] >> 1),
    )
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
    fn adts_headers_follow_the_audio_specific_config() {
        // AAC LC, 48 kHz, mono: the config GStreamer's voaacenc sends.
        let lc = Adts::from_config(&[0x11, 0x88]).unwrap();
        assert_eq!(
            lc.header(100).unwrap(),
            [0xff, 0xf1, 0x4c, 0x40, 0x0d, 0x7f, 0xfc]
        );
        // HE-AAC (explicit SBR, 24 kHz core, stereo) is written as its core.
        let he = Adts::from_config(&[0x2b, 0x11, 0x88, 0x00]).unwrap();
        assert_eq!(he.profile, 1);
        for bad in [
            &[][..],
            &[0x17, 0x80, 0, 0, 0],
            &[0xf8, 0x88],
            &[0x11, 0x80],
        ] {
            assert!(Adts::from_config(bad).is_err(), "{bad:02x?}");
        }
        assert!(lc.header(8192).is_none(), "13 bits of frame length");
    }

    #[test]
    fn audio_has_its_own_pid_and_the_scanner_still_reads_the_video() {
        let mut w = TsWriter::new(Codec::H264).with_aac(Adts::from_config(&[0x11, 0x88]).unwrap());
        let mut out = Vec::new();
        let idr = Bytes::from([&[0x65u8][..], &[0xab; 3000][..]].concat());
        let aac: Vec<u8> = (0..300).map(|i| i as u8).collect();
        for i in 0..10u64 {
            w.write_au(
                std::slice::from_ref(&idr),
                i == 0,
                &[],
                90_000 + i * 3600,
                &mut out,
            );
            w.write_audio(&aac, 90_000 + i * 1920, &mut out);
        }
        let audio: Vec<&[u8]> = out
            .chunks(PACKET)
            .filter(|p| (u16::from(p[1] & 0x1f) << 8 | u16::from(p[2])) == AUDIO_PID)
            .collect();
        assert_eq!(
            audio.len(),
            20,
            "300 bytes of AAC + headers: two packets each"
        );
        for (i, p) in audio.iter().enumerate() {
            assert_eq!(p[3] & 0x0f, ((i + 1) & 0x0f) as u8, "continuity");
        }
        // The PES: stream 0xc0, bounded length, then ADTS and the frame.
        let mut es = Vec::new();
        for p in &audio[..2] {
            let start = if p[3] & 0x20 != 0 {
                5 + p[4] as usize
            } else {
                4
            };
            es.extend_from_slice(&p[start..]);
        }
        assert_eq!(&es[..4], &[0, 0, 1, 0xc0]);
        assert_eq!(u16::from_be_bytes([es[4], es[5]]) as usize, 3 + 5 + 7 + 300);
        assert_eq!(&es[14..16], &[0xff, 0xf1]);
        assert_eq!(&es[21..], &aac[..]);
        let mut s = TsScanner::new();
        s.push(&out);
        let sum = s.finish();
        assert_eq!((sum.frames, sum.first_pts), (10, Some(90_000)));
    }

    fn segment(frames: usize, first_pts: u64, step: u64) -> Vec<u8> {
        let mut w = TsWriter::new(Codec::H264);
        let mut out = Vec::new();
        let idr = Bytes::from([&[0x65u8][..], &[0xab; 3000][..]].concat());
        let p = Bytes::from([&[0x41u8][..], &[0xcd; 500][..]].concat());
        for i in 0..frames {
            let key = i % 25 == 0;
            let nal = if key { &idr } else { &p };
            let pts = first_pts.wrapping_add(i as u64 * step);
            w.write_au(std::slice::from_ref(nal), key, &[], pts, &mut out);
        }
        out
    }

    #[test]
    fn the_scanner_reads_back_what_the_writer_wrote() {
        let data = segment(100, 90_000, 3600);
        // Fed in awkward pieces.
        let mut s = TsScanner::new();
        for piece in data.chunks(1000) {
            s.push(piece);
        }
        let sum = s.finish();
        assert_eq!(sum.frames, 100);
        assert_eq!(sum.first_pts, Some(90_000));
        assert_eq!(sum.span, 100 * 3600);
        assert_eq!(sum.last_step, Some(3600));
        assert_eq!(sum.duration_ms(), 4000);
        assert_eq!((sum.bad_packets, sum.trailing), (0, 0));
        assert_eq!(sum.packets as usize * PACKET, data.len());
    }

    #[test]
    fn the_scanner_unwraps_33_bits_and_survives_damage() {
        let mut data = segment(50, (1 << 33) - 3600 * 10, 3600);
        assert_eq!(scan(&data).duration_ms(), 2000);
        // A damaged packet and a file cut mid-packet.
        data[188 * 5] = 0;
        data.truncate(data.len() - 100);
        let sum = scan(&data);
        assert_eq!(sum.bad_packets, 1);
        assert_eq!(sum.trailing, 88);
        assert!(sum.frames >= 48);
        // Not a transport stream at all: nothing claimed.
        let sum = scan(&[0x55; 5000]);
        assert_eq!((sum.frames, sum.duration_ms()), (0, 0));
    }

    #[test]
    fn a_clock_jump_inside_a_file_claims_no_more_than_its_frames() {
        let mut data = segment(10, 0, 3600);
        data.extend(segment(10, 90_000 * 3600, 3600));
        let sum = scan(&data);
        assert_eq!(sum.frames, 20);
        assert_eq!(sum.duration_ms(), 800, "two runs of 10 frames");
    }

    fn scan(data: &[u8]) -> ScanSummary {
        let mut s = TsScanner::new();
        s.push(data);
        s.finish()
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
