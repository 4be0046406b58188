//! Annex-B byte stream splitter (H.264 / H.265 Annex B): start codes in,
//! NAL units out, without copying.
//!
//! The runtime reads straight into [`AnnexBSplitter::read_buf`]; each complete
//! NAL unit is split off that buffer and frozen into a `Bytes` that shares its
//! allocation. A NAL unit is complete only when the next start code is seen,
//! so the last one of a stream is released by [`AnnexBSplitter::finish`].

use bytes::{Bytes, BytesMut};
use memchr::memmem;

/// Errors of a malformed byte stream. Offsets count bytes since the start of
/// the stream (connection).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AnnexBError {
    #[error(
        "no Annex-B start code in {searched} bytes from stream offset {offset}: not an H.264/H.265 byte stream, or a NAL unit larger than the {max} byte limit"
    )]
    NoStartCode {
        offset: u64,
        searched: usize,
        max: usize,
    },
    #[error(
        "NAL unit at stream offset {offset} has its forbidden_zero_bit set (first byte {first:#04x}): corrupt stream"
    )]
    ForbiddenBit { offset: u64, first: u8 },
}

const START_CODE: &[u8] = &[0, 0, 1];

/// Read granularity. Big enough that a 4 Mbit/s stream needs a few reads per
/// frame, small enough that 500 idle channels hold little memory.
pub const READ_CHUNK: usize = 64 * 1024;

/// Largest NAL unit accepted: a 4K intra frame in one slice at high quality is
/// a few MB; beyond this the stream is treated as garbage.
pub const DEFAULT_MAX_NAL: usize = 8 * 1024 * 1024;

pub struct AnnexBSplitter {
    buf: BytesMut,
    /// True once `buf` starts just after a start code (inside a NAL unit).
    in_nal: bool,
    /// Where to resume searching for the next start code.
    scan_from: usize,
    /// Stream offset of `buf[0]`.
    offset: u64,
    max_nal: usize,
    /// Bytes skipped before the first start code (resynchronisation).
    skipped: u64,
}

impl AnnexBSplitter {
    pub fn new(max_nal: usize) -> Self {
        AnnexBSplitter {
            buf: BytesMut::new(),
            in_nal: false,
            scan_from: 0,
            offset: 0,
            max_nal,
            skipped: 0,
        }
    }

    /// The buffer to read into; reserves room for one read first.
    pub fn read_buf(&mut self) -> &mut BytesMut {
        self.buf.reserve(READ_CHUNK);
        &mut self.buf
    }

    /// Appends data (tests, fuzzing, and callers that already hold a slice).
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Bytes discarded before the first start code.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// Bytes buffered but not yet returned as NAL units.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The buffered bytes themselves.
    pub fn buffered_bytes(&self) -> &[u8] {
        &self.buf
    }

    /// The first bytes of the NAL unit being received (not yet terminated by
    /// a start code), once at least `n` of them are buffered. They tell
    /// whether it starts a new picture, so the previous one can be released
    /// without waiting for this unit to end.
    pub fn pending_head(&self, n: usize) -> Option<&[u8]> {
        (self.in_nal && self.buf.len() >= n).then(|| &self.buf[..n])
    }

    /// The next complete NAL unit, if the buffer holds one.
    pub fn next_nal(&mut self) -> Result<Option<Bytes>, AnnexBError> {
        loop {
            if !self.in_nal {
                // Resynchronise: skip to the first start code.
                match memmem::find(&self.buf[self.scan_from..], START_CODE) {
                    Some(i) => {
                        let sc_end = self.scan_from + i + START_CODE.len();
                        self.skipped += (self.scan_from + i) as u64;
                        self.advance(sc_end);
                        self.in_nal = true;
                    }
                    None => {
                        self.check_limit()?;
                        // Keep two bytes: they may begin a start code.
                        let keep = self.buf.len().min(2);
                        let drop = self.buf.len() - keep;
                        self.skipped += drop as u64;
                        self.advance(drop);
                        self.scan_from = 0;
                        return Ok(None);
                    }
                }
            }
            match memmem::find(&self.buf[self.scan_from..], START_CODE) {
                Some(i) => {
                    let sc = self.scan_from + i;
                    let nal_offset = self.offset;
                    let nal = self.buf.split_to(sc).freeze();
                    self.offset += sc as u64;
                    self.advance(START_CODE.len());
                    if let Some(nal) = trim_and_check(nal, nal_offset)? {
                        return Ok(Some(nal));
                    }
                    // Empty (two start codes in a row, or zero padding): go on.
                }
                None => {
                    self.check_limit()?;
                    self.scan_from = self.buf.len().saturating_sub(START_CODE.len() - 1);
                    return Ok(None);
                }
            }
        }
    }

    /// At end of stream: the last NAL unit, which no start code terminates.
    pub fn finish(&mut self) -> Result<Option<Bytes>, AnnexBError> {
        if !self.in_nal {
            self.buf.clear();
            return Ok(None);
        }
        let offset = self.offset;
        let nal = self.buf.split().freeze();
        self.offset += nal.len() as u64;
        self.in_nal = false;
        self.scan_from = 0;
        trim_and_check(nal, offset)
    }

    fn advance(&mut self, n: usize) {
        let _ = self.buf.split_to(n);
        self.offset += n as u64;
        self.scan_from = 0;
    }

    fn check_limit(&self) -> Result<(), AnnexBError> {
        if self.buf.len() > self.max_nal {
            return Err(AnnexBError::NoStartCode {
                offset: self.offset,
                searched: self.buf.len(),
                max: self.max_nal,
            });
        }
        Ok(())
    }
}

/// Drops trailing zero bytes (the leading zero of a 4-byte start code, and
/// `trailing_zero_8bits`); checks the forbidden bit. `None` for an empty unit.
fn trim_and_check(nal: Bytes, offset: u64) -> Result<Option<Bytes>, AnnexBError> {
    let len = nal.iter().rposition(|&b| b != 0).map_or(0, |p| p + 1);
    if len == 0 {
        return Ok(None);
    }
    if nal[0] & 0x80 != 0 {
        return Err(AnnexBError::ForbiddenBit {
            offset,
            first: nal[0],
        });
    }
    Ok(Some(nal.slice(..len)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split_all(chunks: &[&[u8]]) -> Result<Vec<Vec<u8>>, AnnexBError> {
        let mut s = AnnexBSplitter::new(1024);
        let mut out = Vec::new();
        for c in chunks {
            s.push(c);
            while let Some(n) = s.next_nal()? {
                out.push(n.to_vec());
            }
        }
        if let Some(n) = s.finish()? {
            out.push(n.to_vec());
        }
        Ok(out)
    }

    #[test]
    fn splits_three_and_four_byte_start_codes() {
        let stream = [
            0, 0, 0, 1, 0x67, 1, 2, 0, 0, 1, 0x68, 3, 0, 0, 0, 1, 0x65, 4, 5,
        ];
        let nals = split_all(&[&stream]).unwrap();
        assert_eq!(
            nals,
            vec![vec![0x67, 1, 2], vec![0x68, 3], vec![0x65, 4, 5]]
        );
    }

    #[test]
    fn start_code_split_across_reads() {
        let stream = [0, 0, 0, 1, 0x67, 9, 0, 0, 0, 1, 0x68, 7];
        for cut in 0..stream.len() {
            let nals = split_all(&[&stream[..cut], &stream[cut..]]).unwrap();
            assert_eq!(nals, vec![vec![0x67, 9], vec![0x68, 7]], "cut at {cut}");
        }
        // Byte by byte.
        let chunks: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(split_all(&chunks).unwrap().len(), 2);
    }

    #[test]
    fn resynchronises_after_leading_garbage() {
        let mut s = AnnexBSplitter::new(1024);
        s.push(&[0x55, 0xaa, 0x12, 0, 0, 1, 0x67, 1, 0, 0, 1, 0x68]);
        assert_eq!(s.next_nal().unwrap().unwrap().as_ref(), &[0x67, 1]);
        assert_eq!(s.skipped(), 3);
    }

    #[test]
    fn garbage_without_start_code_is_an_error() {
        let mut s = AnnexBSplitter::new(64);
        s.push(&[0x55; 100]);
        assert!(matches!(s.next_nal(), Err(AnnexBError::NoStartCode { .. })));
        // An oversized NAL unit, too.
        let mut s = AnnexBSplitter::new(64);
        s.push(&[0, 0, 1, 0x65]);
        s.push(&[0x55; 100]);
        assert!(matches!(s.next_nal(), Err(AnnexBError::NoStartCode { .. })));
    }

    #[test]
    fn forbidden_bit_is_an_error_with_offset() {
        let err = split_all(&[&[0, 0, 1, 0x67, 0, 0, 1, 0xe5, 1, 0, 0, 1, 0x41]]).unwrap_err();
        assert_eq!(
            err,
            AnnexBError::ForbiddenBit {
                offset: 7,
                first: 0xe5
            }
        );
    }

    #[test]
    fn pending_head_shows_the_unit_being_received() {
        let mut s = AnnexBSplitter::new(1024);
        s.push(&[0, 0, 1, 0x65, 1, 0, 0, 1, 0x41]);
        assert!(s.pending_head(1).is_none(), "not scanned yet");
        assert_eq!(s.next_nal().unwrap().unwrap().as_ref(), &[0x65, 1]);
        assert_eq!(s.pending_head(1), Some(&[0x41][..]));
        assert!(s.pending_head(2).is_none());
        s.push(&[0x9a]);
        assert_eq!(s.pending_head(2), Some(&[0x41, 0x9a][..]));
    }

    #[test]
    fn nals_share_the_read_buffer() {
        let mut s = AnnexBSplitter::new(1 << 20);
        let stream = [0, 0, 1, 0x65, 1, 2, 3, 0, 0, 1, 0x41, 0];
        s.read_buf().extend_from_slice(&stream);
        let base = s.buf.as_ptr() as usize;
        let nal = s.next_nal().unwrap().unwrap();
        assert_eq!(nal.as_ptr() as usize, base + 3, "NAL was copied");
    }
}
