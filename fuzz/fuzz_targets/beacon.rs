//! The beacon reader (`failover::beacon::Verifier`) on what any host of
//! the LAN can send to the beacon group: arbitrary bytes, and bodies
//! sealed with the site key (a server of the site that is hostile or on
//! another site file: huge counters, unknown owners, points for channels
//! its owner lacks). Nothing panics; nothing unauthenticated is taken;
//! what is taken is what the site file allows and is never taken twice.
#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use mcrelay::failover::beacon::{Layout, SiteKey, Verifier};
use mcrelay::media::TrackKind;

const KEY: &str = "00112233445566778899aabbccddeeff";
const OTHER_KEY: &str = "ffeeddccbbaa99887766554433221100";
/// The receiver's clock, near the counters the seeds carry.
const NOW_MS: u64 = 1_800_000_000_000;

fn site() -> Vec<(String, Layout)> {
    let layout = |ids: &[u32]| Layout {
        channels: ids.iter().map(|&id| (id, vec![TrackKind::Audio])).collect(),
    };
    vec![
        ("recorder-1".to_string(), layout(&[1, 2, 3])),
        ("recorder-2".to_string(), layout(&[7])),
        ("failover-1".to_string(), layout(&[])),
    ]
}

fuzz_target!(|data: &[u8]| {
    let key = SiteKey::from_hex(KEY).unwrap();
    let layouts: HashMap<String, Layout> = site().into_iter().collect();
    let mut v = Verifier::new(key.clone(), site());
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    // Datagrams: split at 0xFE (several in a row exercise the replay
    // window).
    let mut datagrams: Vec<Vec<u8>> = Vec::new();
    for part in rest.split(|&b| b == 0xFE) {
        let mut d = part.to_vec();
        match mode % 3 {
            // As heard.
            0 => {}
            // A body sealed with the site key: authenticated hostile input.
            1 => d = seal(&key, &d),
            // A body sealed with another key: forged.
            _ => d = seal(&SiteKey::from_hex(OTHER_KEY).unwrap(), &d),
        }
        datagrams.push(d);
    }
    let mut taken: Vec<(String, u64)> = Vec::new();
    for (i, d) in datagrams.iter().enumerate() {
        let now = NOW_MS + i as u64 * 7;
        let Ok(b) = v.verify(d, now) else { continue };
        assert_eq!(mode % 3, 1, "an unauthenticated beacon was taken");
        assert!(layouts.contains_key(&b.sender), "unknown sender taken");
        assert!(b.sent_unix_ms().abs_diff(now) <= 2000, "stale beacon taken");
        assert!(
            !taken.contains(&(b.sender.clone(), b.counter)),
            "a counter taken twice"
        );
        taken.push((b.sender.clone(), b.counter));
        for e in &b.emits {
            let l = layouts.get(&e.owner).expect("owner of the site");
            for c in &e.channels {
                let tracks = l.channels.get(&c.id).expect("channel of the owner");
                for t in &c.tracks {
                    assert!(t.kind == TrackKind::Video || tracks.contains(&t.kind));
                }
            }
        }
        // What was taken seals back to the same datagram.
        assert_eq!(&b.seal(&key), d, "a beacon read differently than written");
    }
});

/// `body` after the magic and version, authenticated with `key`.
fn seal(key: &SiteKey, body: &[u8]) -> Vec<u8> {
    mcrelay::failover::beacon::seal_bytes(key, body)
}
