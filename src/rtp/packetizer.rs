//! Access units to RTP packets: RFC 6184 (H.264) and RFC 7798 (H.265).
//!
//! - A NAL unit that fits is sent as a single NAL unit packet; its body is
//!   the NAL unit itself, not a copy.
//! - A larger one is split into fragmentation units (FU-A / H.265 FU) whose
//!   bodies are slices of the NAL unit. Every fragment but the last of a NAL
//!   unit has the full payload size, so a run of them can leave in one UDP GSO
//!   send.
//! - Runs of small non-VCL units (AUD, parameter sets, SEI) are aggregated
//!   into one STAP-A / AP packet: one packet instead of three or four before
//!   every key frame. Those few bytes are copied into the header part.
//! - Before every key frame the latest VPS/SPS/PPS are sent unless the access
//!   unit carries them itself, so a viewer who joins mid-stream decodes from
//!   the next key frame.
//! - The marker bit is set on the last packet of each access unit.
//!
//! The header parts of all packets of an access unit share one allocation.

use bytes::{Bytes, BytesMut};
use rtp_rs::{RtpPacketBuilder, Seq};

use super::{RTP_HEADER_LEN, RtpPacket};
use crate::media::{AccessUnit, Codec, NalKind, ParamSets};

/// Default RTP payload size: 1400 bytes keeps the IP packet (1440 bytes with
/// RTP, UDP and IPv4 headers) under a 1500-byte Ethernet MTU with room for a
/// VLAN tag or a tunnel.
pub const DEFAULT_MAX_PAYLOAD: usize = 1400;

/// Smallest payload size that still leaves room for an FU header and data.
pub const MIN_MAX_PAYLOAD: usize = 64;

#[derive(Copy, Clone, Debug)]
pub struct PacketizerConfig {
    pub payload_type: u8,
    pub ssrc: u32,
    /// Largest RTP payload (excluding the 12-byte RTP header).
    pub max_payload: usize,
    /// Aggregate runs of small non-VCL NAL units (STAP-A / AP).
    pub aggregate: bool,
}

pub struct Packetizer {
    codec: Codec,
    cfg: PacketizerConfig,
    seq: u16,
    params: ParamSets,
}

/// How one or more NAL units of an access unit become packets.
enum Unit {
    Single(usize),
    /// NAL units `[start, end)` in one aggregation packet of `size` payload bytes.
    Aggregate {
        start: usize,
        end: usize,
        size: usize,
    },
    Fragmented(usize),
}

impl Packetizer {
    pub fn new(codec: Codec, cfg: PacketizerConfig, initial_seq: u16) -> Self {
        let cfg = PacketizerConfig {
            max_payload: cfg.max_payload.max(MIN_MAX_PAYLOAD),
            payload_type: cfg.payload_type & 0x7f,
            ..cfg
        };
        Packetizer {
            codec,
            cfg,
            seq: initial_seq,
            params: ParamSets::default(),
        }
    }

    pub fn codec(&self) -> Codec {
        self.codec
    }

    pub fn config(&self) -> &PacketizerConfig {
        &self.cfg
    }

    /// The parameter sets sent before key frames.
    pub fn params(&self) -> &ParamSets {
        &self.params
    }

    /// Learns parameter sets out of band (from a camera's SDP). Returns true
    /// if any changed.
    pub fn update_params(&mut self, nals: impl IntoIterator<Item = Bytes>) -> bool {
        let mut changed = false;
        for nal in nals {
            changed |= self.params.update(self.codec, &nal);
        }
        changed
    }

    /// The sequence number of the next packet.
    pub fn next_seq(&self) -> u16 {
        self.seq
    }

    fn fu_overhead(&self) -> usize {
        match self.codec {
            Codec::H264 => 2, // FU indicator + FU header
            Codec::H265 => 3, // PayloadHdr + FU header
        }
    }

    fn aggregate_header(&self) -> usize {
        self.codec.nal_header_len()
    }

    /// Packetizes one access unit. Returns the packets and whether the
    /// parameter sets changed (in-band update).
    pub fn packetize(&mut self, au: &AccessUnit, rtp_timestamp: u32) -> (Vec<RtpPacket>, bool) {
        let codec = self.codec;
        let mut params_changed = false;
        for nal in &au.nals {
            params_changed |= self.params.update(codec, nal);
        }
        let nals = self.with_parameter_sets(au);
        let units = self.plan(&nals);

        let head_len: usize = units
            .iter()
            .map(|u| match *u {
                Unit::Single(_) => RTP_HEADER_LEN,
                Unit::Aggregate { size, .. } => RTP_HEADER_LEN + size,
                Unit::Fragmented(i) => {
                    self.fragment_count(nals[i].len()) * (RTP_HEADER_LEN + self.fu_overhead())
                }
            })
            .sum();
        let mut heads = BytesMut::with_capacity(head_len);
        let mut packets = Vec::with_capacity(units.len());
        let last_unit = units.len().saturating_sub(1);

        for (ui, unit) in units.iter().enumerate() {
            let last = ui == last_unit;
            match *unit {
                Unit::Single(i) => {
                    self.write_header(&mut heads, rtp_timestamp, last);
                    packets.push(RtpPacket::new(heads.split().freeze(), nals[i].clone()));
                }
                Unit::Aggregate { start, end, .. } => {
                    self.write_header(&mut heads, rtp_timestamp, last);
                    self.write_aggregate(&mut heads, &nals[start..end]);
                    packets.push(RtpPacket::new(heads.split().freeze(), Bytes::new()));
                }
                Unit::Fragmented(i) => {
                    let nal = &nals[i];
                    let hl = codec.nal_header_len();
                    let chunk = self.cfg.max_payload - self.fu_overhead();
                    let n = self.fragment_count(nal.len());
                    for f in 0..n {
                        let from = hl + f * chunk;
                        let to = (from + chunk).min(nal.len());
                        let (start, end) = (f == 0, f + 1 == n);
                        self.write_header(&mut heads, rtp_timestamp, last && end);
                        self.write_fu_header(&mut heads, nal, start, end);
                        packets.push(RtpPacket::new(heads.split().freeze(), nal.slice(from..to)));
                    }
                }
            }
        }
        (packets, params_changed)
    }

    /// The access unit's NAL units, with the stored parameter sets inserted
    /// before a key frame that lacks them (after a leading AUD, which must
    /// stay first). Invalid and empty units are dropped.
    fn with_parameter_sets(&self, au: &AccessUnit) -> Vec<Bytes> {
        let codec = self.codec;
        let mut out = Vec::with_capacity(au.nals.len() + 3);
        let mut missing: Vec<Bytes> = Vec::new();
        if au.key {
            let has = |want: NalKind| au.nals.iter().any(|n| codec.classify(n) == want);
            let wanted: &[(NalKind, &Option<Bytes>)] = match codec {
                Codec::H264 => &[
                    (NalKind::Sps, &self.params.sps),
                    (NalKind::Pps, &self.params.pps),
                ],
                Codec::H265 => &[
                    (NalKind::Vps, &self.params.vps),
                    (NalKind::Sps, &self.params.sps),
                    (NalKind::Pps, &self.params.pps),
                ],
            };
            for (kind, stored) in wanted {
                if let Some(p) = stored.as_ref().filter(|_| !has(*kind)) {
                    missing.push(p.clone());
                }
            }
        }
        let mut inserted = missing.is_empty();
        for nal in &au.nals {
            let kind = codec.classify(nal);
            if kind == NalKind::Invalid {
                continue;
            }
            if !inserted && kind != NalKind::Aud {
                out.append(&mut missing);
                inserted = true;
            }
            out.push(nal.clone());
        }
        if !inserted {
            out.append(&mut missing);
        }
        out
    }

    fn plan(&self, nals: &[Bytes]) -> Vec<Unit> {
        let max = self.cfg.max_payload;
        let mut units = Vec::with_capacity(nals.len());
        let mut i = 0;
        while i < nals.len() {
            if self.cfg.aggregate {
                let mut size = self.aggregate_header();
                let mut end = i;
                while end < nals.len()
                    && !self.codec.classify(&nals[end]).is_vcl()
                    && size + 2 + nals[end].len() <= max
                {
                    size += 2 + nals[end].len();
                    end += 1;
                }
                if end - i >= 2 {
                    units.push(Unit::Aggregate {
                        start: i,
                        end,
                        size,
                    });
                    i = end;
                    continue;
                }
            }
            units.push(if nals[i].len() <= max {
                Unit::Single(i)
            } else {
                Unit::Fragmented(i)
            });
            i += 1;
        }
        units
    }

    fn fragment_count(&self, nal_len: usize) -> usize {
        let data = nal_len.saturating_sub(self.codec.nal_header_len());
        data.div_ceil(self.cfg.max_payload - self.fu_overhead())
            .max(1)
    }

    fn write_header(&mut self, buf: &mut BytesMut, timestamp: u32, marker: bool) {
        let mut h = [0u8; RTP_HEADER_LEN];
        RtpPacketBuilder::new()
            .payload_type(self.cfg.payload_type)
            .ssrc(self.cfg.ssrc)
            .sequence(Seq::from(self.seq))
            .timestamp(timestamp)
            .marked(marker)
            .build_into_unchecked(&mut h);
        buf.extend_from_slice(&h);
        self.seq = self.seq.wrapping_add(1);
    }

    /// STAP-A (RFC 6184 5.7.1) or AP (RFC 7798 4.4.2) payload.
    fn write_aggregate(&self, buf: &mut BytesMut, nals: &[Bytes]) {
        match self.codec {
            Codec::H264 => {
                let f = nals.iter().fold(0, |a, n| a | (n[0] & 0x80));
                let nri = nals.iter().map(|n| n[0] & 0x60).max().unwrap_or(0);
                buf.extend_from_slice(&[f | nri | 24]);
            }
            Codec::H265 => {
                let f = nals.iter().fold(0, |a, n| a | (n[0] & 0x80));
                let layer = nals
                    .iter()
                    .map(|n| (u16::from(n[0] & 1) << 5) | u16::from(n[1] >> 3))
                    .min()
                    .unwrap_or(0);
                let tid = nals.iter().map(|n| n[1] & 7).min().unwrap_or(1);
                buf.extend_from_slice(&[
                    f | (48 << 1) | (layer >> 5) as u8,
                    ((layer as u8 & 0x1f) << 3) | tid,
                ]);
            }
        }
        for nal in nals {
            buf.extend_from_slice(&(nal.len() as u16).to_be_bytes());
            buf.extend_from_slice(nal);
        }
    }

    /// FU-A (RFC 6184 5.8) or FU (RFC 7798 4.4.3) payload header.
    fn write_fu_header(&self, buf: &mut BytesMut, nal: &[u8], start: bool, end: bool) {
        let se = (u8::from(start) << 7) | (u8::from(end) << 6);
        match self.codec {
            Codec::H264 => buf.extend_from_slice(&[(nal[0] & 0xe0) | 28, se | (nal[0] & 0x1f)]),
            Codec::H265 => {
                let t = (nal[0] >> 1) & 0x3f;
                buf.extend_from_slice(&[(nal[0] & 0x81) | (49 << 1), nal[1], se | t]);
            }
        }
    }
}

#[cfg(test)]
mod tests;
