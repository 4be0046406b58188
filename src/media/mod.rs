//! Media: codecs, NAL units, access units, parameter sets and media time.
//!
//! Everything here is sans-IO: bytes and times go in, values come out.
//! NAL units are `Bytes` slices of the ingest buffers; nothing here copies
//! a payload.

pub mod annexb;
pub mod au;
pub mod params;
pub mod time;
pub mod track;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

pub use au::{AccessUnit, AuAssembler, AuError};
pub use params::ParamSets;
pub use time::MediaTime;
pub use track::{Payload, TrackDesc, TrackKind};

/// The video codecs mcrelay relays.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Codec {
    H264,
    H265,
}

impl Codec {
    /// The RTP encoding name (RFC 6184 / RFC 7798), as written in `a=rtpmap`.
    pub fn encoding_name(self) -> &'static str {
        match self {
            Codec::H264 => "H264",
            Codec::H265 => "H265",
        }
    }

    /// Length of the NAL unit header: one byte for H.264, two for H.265.
    pub fn nal_header_len(self) -> usize {
        match self {
            Codec::H264 => 1,
            Codec::H265 => 2,
        }
    }

    /// The NAL unit type, or `None` if `nal` is shorter than its header.
    pub fn nal_type(self, nal: &[u8]) -> Option<u8> {
        match self {
            Codec::H264 => nal.first().map(|b| b & 0x1f),
            Codec::H265 if nal.len() >= 2 => Some((nal[0] >> 1) & 0x3f),
            Codec::H265 => None,
        }
    }

    /// Classifies a NAL unit (see [`NalKind`]).
    pub fn classify(self, nal: &[u8]) -> NalKind {
        let Some(t) = self.nal_type(nal) else {
            return NalKind::Invalid;
        };
        match self {
            Codec::H264 => match t {
                5 => NalKind::Vcl {
                    key: true,
                    first_in_picture: first_bit_after_header(nal, 1),
                },
                1..=4 => NalKind::Vcl {
                    key: false,
                    first_in_picture: first_bit_after_header(nal, 1),
                },
                7 => NalKind::Sps,
                8 => NalKind::Pps,
                9 => NalKind::Aud,
                // SEI and the types that, like it, may only precede the first
                // VCL NAL of a picture (H.264 7.4.1.2.3).
                6 | 14..=18 => NalKind::PrefixNonVcl,
                // Types 0 and 24..=31 are unspecified by H.264 and used by
                // RFC 6184 itself (STAP-A, FU-A...): never valid in a stream.
                0 | 24..=31 => NalKind::Invalid,
                _ => NalKind::OtherNonVcl,
            },
            Codec::H265 => match t {
                16..=23 => NalKind::Vcl {
                    key: true,
                    first_in_picture: first_bit_after_header(nal, 2),
                },
                0..=31 => NalKind::Vcl {
                    key: false,
                    first_in_picture: first_bit_after_header(nal, 2),
                },
                32 => NalKind::Vps,
                33 => NalKind::Sps,
                34 => NalKind::Pps,
                35 => NalKind::Aud,
                // Prefix SEI and reserved types that start an access unit
                // when they follow a VCL NAL (H.265 7.4.2.4.4).
                39 | 41..=44 => NalKind::PrefixNonVcl,
                // 48..=63 are unspecified by H.265; RFC 7798 uses 48 (AP),
                // 49 (FU), 50 (PACI).
                48..=63 => NalKind::Invalid,
                _ => NalKind::OtherNonVcl,
            },
        }
    }
}

impl std::fmt::Display for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Codec::H264 => "h264",
            Codec::H265 => "h265",
        })
    }
}

/// True if the first bit after the NAL header is set: `first_mb_in_slice == 0`
/// for H.264 (ue(v) coded, so "1" means zero), `first_slice_segment_in_pic_flag`
/// for H.265. Either way: this slice starts a new picture.
fn first_bit_after_header(nal: &[u8], header_len: usize) -> bool {
    nal.get(header_len).is_some_and(|b| b & 0x80 != 0)
}

/// What a NAL unit is, as far as relaying it is concerned.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum NalKind {
    /// A coded slice.
    Vcl {
        key: bool,
        first_in_picture: bool,
    },
    Vps,
    Sps,
    Pps,
    /// Access unit delimiter.
    Aud,
    /// SEI and others which start an access unit when they follow a VCL NAL.
    PrefixNonVcl,
    /// Other non-VCL units (end of sequence, filler, suffix SEI...).
    OtherNonVcl,
    /// Not allowed in a byte stream (or too short to have a header).
    Invalid,
}

impl NalKind {
    pub fn is_vcl(self) -> bool {
        matches!(self, NalKind::Vcl { .. })
    }

    pub fn is_parameter_set(self) -> bool {
        matches!(self, NalKind::Vps | NalKind::Sps | NalKind::Pps)
    }
}

/// Splits an AVCC/HVCC style buffer (4-byte big-endian length before each NAL,
/// as the RTSP client delivers frames) into NAL slices without copying.
pub fn split_length_prefixed(data: &Bytes) -> Result<Vec<Bytes>, String> {
    let mut nals = Vec::new();
    let mut pos = 0usize;
    while pos < data.len() {
        let Some(len_bytes) = data.get(pos..pos + 4) else {
            return Err(format!(
                "truncated NAL length at offset {pos} of a {}-byte frame",
                data.len()
            ));
        };
        let len = u32::from_be_bytes(len_bytes.try_into().expect("slice of 4")) as usize;
        let start = pos + 4;
        let end = start
            .checked_add(len)
            .filter(|&e| e <= data.len())
            .ok_or_else(|| {
                format!(
                    "NAL at offset {pos} claims {len} bytes but the frame has {} left",
                    data.len() - start
                )
            })?;
        if len > 0 {
            nals.push(data.slice(start..end));
        }
        pos = end;
    }
    Ok(nals)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_h264() {
        let c = Codec::H264;
        assert_eq!(c.classify(&[0x67, 0x42]), NalKind::Sps);
        assert_eq!(c.classify(&[0x68, 0xce]), NalKind::Pps);
        assert_eq!(
            c.classify(&[0x65, 0x88]),
            NalKind::Vcl {
                key: true,
                first_in_picture: true
            }
        );
        assert_eq!(
            c.classify(&[0x41, 0x40]),
            NalKind::Vcl {
                key: false,
                first_in_picture: false
            }
        );
        assert_eq!(c.classify(&[0x7c, 0x85]), NalKind::Invalid); // FU-A
        assert_eq!(c.classify(&[]), NalKind::Invalid);
    }

    #[test]
    fn classifies_h265() {
        let c = Codec::H265;
        assert_eq!(c.classify(&[0x40, 0x01]), NalKind::Vps);
        assert_eq!(c.classify(&[0x42, 0x01]), NalKind::Sps);
        assert_eq!(c.classify(&[0x44, 0x01]), NalKind::Pps);
        assert_eq!(
            c.classify(&[0x26, 0x01, 0xaf]),
            NalKind::Vcl {
                key: true,
                first_in_picture: true
            }
        );
        assert_eq!(
            c.classify(&[0x02, 0x01, 0x2f]),
            NalKind::Vcl {
                key: false,
                first_in_picture: false
            }
        );
        assert_eq!(c.classify(&[0x62, 0x01]), NalKind::Invalid); // FU
        assert_eq!(c.classify(&[0x40]), NalKind::Invalid);
    }

    #[test]
    fn splits_length_prefixed() {
        let data = Bytes::from_static(&[0, 0, 0, 2, 0x67, 1, 0, 0, 0, 1, 0x68]);
        let nals = split_length_prefixed(&data).unwrap();
        assert_eq!(nals, vec![&[0x67, 1][..], &[0x68][..]]);
        let bad = Bytes::from_static(&[0, 0, 0, 9, 0x67]);
        assert!(
            split_length_prefixed(&bad)
                .unwrap_err()
                .contains("claims 9")
        );
        let trunc = Bytes::from_static(&[0, 0, 0, 1, 0x67, 0, 0]);
        assert!(split_length_prefixed(&trunc).is_err());
    }
}
