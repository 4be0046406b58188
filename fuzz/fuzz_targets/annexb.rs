//! Arbitrary bytes, in arbitrary read sizes, through the Annex-B reader
//! (splitter, access-unit assembler, timing). It may reject the stream; it
//! may not panic, deliver a malformed NAL unit, or go back in time.
#![no_main]

use std::time::{Duration, Instant};

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use mcrelay::ingest::Sink;
use mcrelay::ingest::annexb::Reader;
use mcrelay::media::time::TimingPolicy;
use mcrelay::media::{AccessUnit, Codec, MediaTime, NalKind};

struct Check {
    codec: Codec,
    last: Option<MediaTime>,
    bytes: usize,
}

impl Sink for Check {
    fn session_started(&mut self, _: Codec) {}
    fn parameters(&mut self, _: Vec<Bytes>) {}
    fn access_unit(&mut self, au: AccessUnit, t: MediaTime, _: Instant) {
        assert!(!au.nals.is_empty());
        assert!(au.has_vcl(), "an access unit without a picture");
        for n in &au.nals {
            assert!(!n.is_empty() && n[0] & 0x80 == 0);
            assert_ne!(self.codec.classify(n), NalKind::Invalid);
            self.bytes += n.len();
        }
        assert!(self.last.is_none_or(|l| t > l), "time went back");
        self.last = Some(t);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, stream)) = data.split_first() else {
        return;
    };
    let codec = if ctl & 1 == 0 {
        Codec::H264
    } else {
        Codec::H265
    };
    let timing = match (ctl >> 1) & 3 {
        0 => TimingPolicy::Auto,
        1 => TimingPolicy::Arrival,
        _ => TimingPolicy::Fps(25.0),
    };
    let chunk = 1 + (ctl as usize >> 3) * 7;
    let mut reader = Reader::new(codec, timing);
    let mut sink = Check {
        codec,
        last: None,
        bytes: 0,
    };
    let t0 = Instant::now();
    for (i, c) in stream.chunks(chunk).enumerate() {
        reader.splitter.push(c);
        if reader
            .drain(t0 + Duration::from_millis(i as u64 * 13), &mut sink)
            .is_err()
        {
            return;
        }
    }
    let _ = reader.discard();
    assert!(sink.bytes <= stream.len());
});
