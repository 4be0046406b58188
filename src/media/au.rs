//! Access units: the NAL units of one picture, and the assembler that finds
//! picture boundaries in a NAL unit stream (H.264 7.4.1.2.3, H.265 7.4.2.4.4).

use bytes::Bytes;

use super::{Codec, NalKind};

/// One coded picture and the non-VCL units that go with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessUnit {
    pub codec: Codec,
    /// NAL units without start codes or length prefixes; slices of the
    /// ingest buffers.
    pub nals: Vec<Bytes>,
    /// Contains an IDR (H.264) or IRAP (H.265) picture: a decoder can start here.
    pub key: bool,
}

impl AccessUnit {
    /// Builds an access unit from NAL units, checking each one.
    pub fn new(codec: Codec, nals: Vec<Bytes>) -> Result<Self, AuError> {
        let mut key = false;
        for (i, nal) in nals.iter().enumerate() {
            match codec.classify(nal) {
                NalKind::Invalid => return Err(invalid_nal(codec, nal, i)),
                NalKind::Vcl { key: true, .. } => key = true,
                _ => {}
            }
        }
        Ok(AccessUnit { codec, nals, key })
    }

    pub fn byte_len(&self) -> usize {
        self.nals.iter().map(Bytes::len).sum()
    }

    pub fn has_vcl(&self) -> bool {
        self.nals.iter().any(|n| self.codec.classify(n).is_vcl())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuError {
    #[error(
        "{codec} NAL unit #{index} of an access unit has type {nal_type:?}, which a byte stream may not carry (first bytes {head:02x?})"
    )]
    InvalidNal {
        codec: Codec,
        index: usize,
        nal_type: Option<u8>,
        head: Vec<u8>,
    },
    #[error(
        "access unit exceeds {limit} {what}: the stream has no picture boundaries (wrong codec?)"
    )]
    TooLarge { what: &'static str, limit: usize },
}

fn invalid_nal(codec: Codec, nal: &[u8], index: usize) -> AuError {
    AuError::InvalidNal {
        codec,
        index,
        nal_type: codec.nal_type(nal),
        head: nal.iter().take(4).copied().collect(),
    }
}

/// Whether a NAL unit of this kind, following a picture's VCL units, begins
/// the next access unit (H.264 7.4.1.2.3, H.265 7.4.2.4.4).
fn starts_access_unit(kind: NalKind) -> bool {
    match kind {
        NalKind::Vcl {
            first_in_picture, ..
        } => first_in_picture,
        NalKind::Aud | NalKind::Vps | NalKind::Sps | NalKind::Pps | NalKind::PrefixNonVcl => true,
        NalKind::OtherNonVcl | NalKind::Invalid => false,
    }
}

/// Limits on one access unit. A 4K picture in 8 slices with SEI is a few
/// dozen NAL units and a few MB; these bounds only stop runaway input.
pub const MAX_AU_NALS: usize = 1024;
pub const MAX_AU_BYTES: usize = 32 * 1024 * 1024;

/// Groups a NAL unit stream into access units. Sans-IO: the caller passes in
/// each NAL unit with the time it arrived, and gets back each completed
/// access unit with the arrival time of its first NAL unit.
pub struct AuAssembler<T> {
    codec: Codec,
    nals: Vec<Bytes>,
    bytes: usize,
    has_vcl: bool,
    key: bool,
    started: Option<T>,
}

impl<T: Copy> AuAssembler<T> {
    pub fn new(codec: Codec) -> Self {
        AuAssembler {
            codec,
            nals: Vec::new(),
            bytes: 0,
            has_vcl: false,
            key: false,
            started: None,
        }
    }

    /// Adds a NAL unit; returns the previous access unit if this one starts a
    /// new picture.
    pub fn push(&mut self, nal: Bytes, at: T) -> Result<Option<(AccessUnit, T)>, AuError> {
        let kind = self.codec.classify(&nal);
        if kind == NalKind::Invalid {
            return Err(invalid_nal(self.codec, &nal, self.nals.len()));
        }
        let starts_new = self.has_vcl && starts_access_unit(kind);
        let done = if starts_new { self.take() } else { None };
        if self.nals.len() >= MAX_AU_NALS {
            return Err(AuError::TooLarge {
                what: "NAL units",
                limit: MAX_AU_NALS,
            });
        }
        if self.bytes + nal.len() > MAX_AU_BYTES {
            return Err(AuError::TooLarge {
                what: "bytes",
                limit: MAX_AU_BYTES,
            });
        }
        if let NalKind::Vcl { key, .. } = kind {
            self.has_vcl = true;
            self.key |= key;
        }
        self.started.get_or_insert(at);
        self.bytes += nal.len();
        self.nals.push(nal);
        Ok(done)
    }

    /// Bytes of a NAL unit's start needed by [`AuAssembler::boundary_ahead`]:
    /// the header and the first byte of a slice header.
    pub fn head_len(&self) -> usize {
        self.codec.nal_header_len() + 1
    }

    /// Looks at the start of the next NAL unit (still being received): if it
    /// begins a new access unit, the current one is complete and returned
    /// now rather than when that unit ends.
    pub fn boundary_ahead(&mut self, head: &[u8]) -> Option<(AccessUnit, T)> {
        if self.has_vcl && starts_access_unit(self.codec.classify(head)) {
            self.take()
        } else {
            None
        }
    }

    /// At end of stream: the last access unit, if it has a picture.
    pub fn flush(&mut self) -> Option<(AccessUnit, T)> {
        if self.has_vcl {
            self.take()
        } else {
            let _ = self.reset();
            None
        }
    }

    /// Forgets a partial access unit; returns how many bytes it held.
    pub fn reset(&mut self) -> usize {
        let bytes = self.bytes;
        self.nals.clear();
        self.bytes = 0;
        self.has_vcl = false;
        self.key = false;
        self.started = None;
        bytes
    }

    fn take(&mut self) -> Option<(AccessUnit, T)> {
        let at = self.started.take()?;
        let au = AccessUnit {
            codec: self.codec,
            nals: std::mem::take(&mut self.nals),
            key: self.key,
        };
        let _ = self.reset();
        Some((au, at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &[u8]) -> Bytes {
        Bytes::copy_from_slice(s)
    }

    #[test]
    fn h264_boundaries() {
        let mut a = AuAssembler::new(Codec::H264);
        let stream: &[(&[u8], u32)] = &[
            (&[0x67, 1], 0),
            (&[0x68, 1], 0),
            (&[0x06, 5], 0),
            (&[0x65, 0x88], 1), // IDR, first slice
            (&[0x65, 0x08], 2), // IDR, second slice
            (&[0x41, 0x9a], 3), // P, new picture
            (&[0x41, 0x9b], 4), // P, new picture
            (&[0x09, 0xf0], 5), // AUD, new AU
            (&[0x41, 0x9c], 6),
        ];
        let mut out = Vec::new();
        for (nal, t) in stream {
            if let Some(done) = a.push(b(nal), *t).unwrap() {
                out.push(done);
            }
        }
        out.extend(a.flush());
        let shape: Vec<(usize, bool, u32)> = out
            .iter()
            .map(|(au, t)| (au.nals.len(), au.key, *t))
            .collect();
        assert_eq!(
            shape,
            vec![(5, true, 0), (1, false, 3), (1, false, 4), (2, false, 5)]
        );
    }

    #[test]
    fn h265_boundaries() {
        let mut a = AuAssembler::new(Codec::H265);
        let stream: &[&[u8]] = &[
            &[0x40, 1],
            &[0x42, 1],
            &[0x44, 1],
            &[0x4e, 1, 5],    // prefix SEI
            &[0x28, 1, 0xaf], // IDR_N_LP (type 20), first slice
            &[0x28, 1, 0x2f], // same picture
            &[0x50, 1, 0x01], // suffix SEI (40) stays
            &[0x02, 1, 0xd0], // TRAIL_R, new picture
        ];
        let mut out = Vec::new();
        for nal in stream {
            out.extend(a.push(b(nal), ()).unwrap());
        }
        out.extend(a.flush());
        let shape: Vec<(usize, bool)> = out.iter().map(|(au, _)| (au.nals.len(), au.key)).collect();
        assert_eq!(shape, vec![(7, true), (1, false)]);
    }

    #[test]
    fn boundary_ahead_releases_the_picture_early() {
        let mut a = AuAssembler::new(Codec::H264);
        assert!(a.push(b(&[0x65, 0x88]), 1).unwrap().is_none());
        assert!(
            a.boundary_ahead(&[0x65, 0x08]).is_none(),
            "second slice of the same picture"
        );
        let (au, t) = a
            .boundary_ahead(&[0x41, 0x9a])
            .expect("a new picture begins");
        assert_eq!((au.nals.len(), t), (1, 1));
        // When that unit completes, it starts a fresh access unit.
        assert!(a.push(b(&[0x41, 0x9a, 7]), 2).unwrap().is_none());
        assert_eq!(a.flush().unwrap().1, 2);
    }

    #[test]
    fn invalid_nal_is_an_error() {
        let mut a = AuAssembler::new(Codec::H264);
        let err = a.push(b(&[0x7c, 0x85]), ()).unwrap_err();
        assert!(err.to_string().contains("type Some(28)"), "{err}");
        assert!(AccessUnit::new(Codec::H265, vec![b(&[0x62, 1])]).is_err());
    }

    #[test]
    fn flush_without_picture_yields_nothing() {
        let mut a = AuAssembler::new(Codec::H264);
        a.push(b(&[0x67, 1]), ()).unwrap();
        assert!(a.flush().is_none());
    }
}
