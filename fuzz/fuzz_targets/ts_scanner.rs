//! The MPEG-TS segment scanner that re-indexes segments from their files.
//!
//! First byte even: the rest is an arbitrary file, pushed whole and in
//! pieces (split where the input says): the same summary either way, the
//! packet and trailing counts add up, no panic.
//! First byte odd: the rest describes access units (flags, time step,
//! size) written by our TsWriter, with AAC frames and metadata documents
//! between them when the input says (bits 2 and 3 of the first byte); the
//! scanner finds every video
//! frame (never an audio one), the first PTS, no damage, and a span that
//! covers the steps it was given.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use mcrelay::media::Codec;
use mcrelay::record::ts::{Adts, TsScanner, TsWriter};

fn scan_whole(data: &[u8]) -> mcrelay::record::ts::ScanSummary {
    let mut s = TsScanner::new();
    s.push(data);
    s.finish()
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        let whole = scan_whole(rest);
        assert_eq!(whole.packets, (rest.len() / 188) as u64);
        assert_eq!(whole.trailing, rest.len() % 188);
        assert!(whole.bad_packets <= whole.packets);
        assert!(whole.frames <= whole.packets);
        assert!(whole.span >= 0 || whole.frames == 0, "{whole:?}");
        // Pieces: sizes taken from the input itself.
        let mut s = TsScanner::new();
        let mut at = 0;
        let mut i = 0;
        while at < rest.len() {
            let n = (usize::from(rest[i % rest.len()]) * 3 + 1).min(rest.len() - at);
            s.push(&rest[at..at + n]);
            at += n;
            i += 1;
        }
        assert_eq!(s.finish(), whole);
        return;
    }
    let codec = if mode & 2 == 0 {
        Codec::H264
    } else {
        Codec::H265
    };
    let mut w = TsWriter::new(codec);
    if mode & 4 != 0 {
        w = w.with_aac(Adts::from_config(&[0x11, 0x88]).expect("AAC LC"));
    }
    if mode & 8 != 0 {
        w = w.with_metadata();
    }
    if mode & 16 != 0 {
        w = w.with_raw_audio("PCMU/8000/1");
    }
    let mut out = Vec::new();
    let start_pts = u64::from(mode) << 25;
    let mut pts = start_pts;
    let mut frames = 0u64;
    let params: Vec<Bytes> = Vec::new();
    for au in rest.chunks(4).take(300) {
        if au.len() < 4 {
            break;
        }
        let key = au[0] & 1 == 1 || frames == 0;
        // Steps of 0..=4095 ticks forward (no jumps).
        let step = u64::from(u16::from_be_bytes([au[1], au[2]]) & 0x0fff);
        let size = usize::from(au[3]) * 7 + 1;
        let nal_type = match codec {
            Codec::H264 => {
                if key {
                    0x65
                } else {
                    0x41
                }
            }
            Codec::H265 => {
                if key {
                    0x26
                } else {
                    0x02
                }
            }
        };
        let mut nal = vec![0xabu8; size + 1];
        nal[0] = nal_type;
        if codec == Codec::H265 {
            nal.insert(1, 0x01);
        }
        if frames > 0 {
            pts += step;
        }
        w.write_au(&[Bytes::from(nal)], key, &params, pts, &mut out);
        frames += 1;
        if au[0] & 2 != 0 {
            let aac = vec![au[2]; usize::from(au[3]) * 5 + 1];
            w.write_audio(&aac, pts.wrapping_add(u64::from(au[1])), &mut out);
        }
        if au[0] & 8 != 0 {
            w.write_raw_audio(&[0xff; 160], pts, &mut out);
        }
        if au[0] & 4 != 0 {
            // A metadata document, up to 75 KiB (past a PES length field).
            let doc = vec![au[1]; usize::from(au[3]) * 300 + 1];
            w.write_metadata(&doc, pts, &mut out);
        }
    }
    assert_eq!(out.len() % 188, 0);
    let sum = scan_whole(&out);
    assert_eq!(sum.frames, frames);
    assert_eq!(sum.bad_packets, 0);
    assert_eq!(sum.trailing, 0);
    if frames > 0 {
        assert_eq!(sum.first_pts, Some(start_pts & ((1 << 33) - 1)));
        // Every step is under a second: one run, spanning first to last.
        let covered = (pts - start_pts) as i64;
        assert!(sum.span >= covered, "{sum:?} < {covered}");
    }
});
