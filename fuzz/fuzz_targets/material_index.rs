//! Arbitrary bytes as a material index file and as segment names. Replay may
//! report problems; it may not panic, list an entry whose name does not
//! parse, or claim more valid bytes than it was given. A name that parses
//! prints back as itself and is one path component that does not start with a dot.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcrelay::record::index::{SegmentName, replay};

fuzz_target!(|data: &[u8]| {
    let r = replay(data);
    assert!(r.valid_len <= data.len());
    for ((channel, segment), e) in &r.entries {
        assert_eq!(*channel, e.channel);
        assert_eq!(segment, &e.segment);
        let name = SegmentName::parse(segment).expect("replay lists only valid names");
        assert_eq!(name.start_ms, e.start_ms);
        assert!(e.end_ms >= e.start_ms);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        for line in text.lines() {
            if let Ok(n) = SegmentName::parse(line) {
                assert_eq!(n.to_string(), line);
                // One path component, never "." or "..".
                assert!(!line.contains('/') && !line.contains('\\') && !line.contains('\0'));
                assert!(!line.starts_with('.'));
            }
        }
    }
});
