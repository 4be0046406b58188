use super::*;

const KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
const NOW_MS: u64 = 1_800_000_000_000;

fn key() -> SiteKey {
    SiteKey::from_hex(KEY).unwrap()
}

fn point(ssrc: u32, seq: u16) -> StreamPoint {
    StreamPoint {
        ssrc,
        next_seq: seq,
        rtp_timestamp: 3_000_000_000,
        clock_rate: 90_000,
        sent_unix_ms: NOW_MS - 40,
        packet_rate: 400,
        frame_ticks: 3600,
    }
}

fn channel(id: u32) -> ChannelPoints {
    ChannelPoints {
        id,
        tracks: vec![
            TrackPoint {
                kind: TrackKind::Video,
                point: point(0x1000 + id, 65_000),
                roc: 7,
            },
            TrackPoint {
                kind: TrackKind::Audio,
                point: StreamPoint {
                    clock_rate: 8000,
                    ..point(0x2000 + id, 12)
                },
                roc: 0,
            },
        ],
    }
}

fn layout(ids: impl IntoIterator<Item = u32>) -> Layout {
    Layout {
        channels: ids
            .into_iter()
            .map(|id| (id, vec![TrackKind::Audio]))
            .collect(),
    }
}

fn verifier() -> Verifier {
    Verifier::new(
        key(),
        [
            ("recorder-1".to_string(), layout(1..=60)),
            ("failover-1".to_string(), layout([])),
        ],
    )
}

fn beacon(counter: u64, channels: u32) -> Beacon {
    Beacon {
        sender: "recorder-1".into(),
        counter,
        emits: vec![Emits {
            owner: "recorder-1".into(),
            epoch: Some(42),
            channels: (1..=channels).map(channel).collect(),
        }],
    }
}

fn at(ms: u64) -> u64 {
    ms * 1000
}

#[test]
fn a_beacon_round_trips() {
    let b = beacon(at(NOW_MS), 3);
    let got = verifier().verify(&b.seal(&key()), NOW_MS + 1).unwrap();
    assert_eq!(got, b);
    let standby = Beacon {
        sender: "failover-1".into(),
        counter: at(NOW_MS),
        emits: vec![],
    };
    assert_eq!(
        verifier().verify(&standby.seal(&key()), NOW_MS).unwrap(),
        standby
    );
}

#[test]
fn a_tampered_beacon_is_refused_whatever_byte_changes() {
    let d = beacon(at(NOW_MS), 2).seal(&key());
    for i in 6..d.len() {
        let mut t = d.clone();
        t[i] ^= 0x01;
        assert_eq!(
            verifier().verify(&t, NOW_MS),
            Err(Rejection::Forged),
            "byte {i}"
        );
    }
    let other = SiteKey::from_hex(&SiteKey::generate()).unwrap();
    assert_eq!(
        verifier().verify(&beacon(at(NOW_MS), 2).seal(&other), NOW_MS),
        Err(Rejection::Forged)
    );
}

#[test]
fn a_truncated_or_foreign_datagram_is_refused() {
    let d = beacon(at(NOW_MS), 2).seal(&key());
    for n in 0..d.len() {
        let r = verifier().verify(&d[..n], NOW_MS);
        assert!(
            matches!(r, Err(Rejection::Malformed(_) | Rejection::Forged)),
            "{n}: {r:?}"
        );
    }
    // An RTP packet on the beacon group.
    let mut rtp = vec![0x80, 96, 0, 1];
    rtp.resize(200, 0);
    assert_eq!(
        verifier().verify(&rtp, NOW_MS),
        Err(Rejection::Malformed("not a beacon"))
    );
}

#[test]
fn a_replayed_beacon_is_refused_and_a_reordered_one_taken_once() {
    let mut v = verifier();
    let first = beacon(at(NOW_MS), 1).seal(&key());
    let second = beacon(at(NOW_MS) + 200_000, 1).seal(&key());
    v.verify(&second, NOW_MS).unwrap();
    // Arrived after a later one, within the reorder window: taken once.
    v.verify(&first, NOW_MS).unwrap();
    assert_eq!(
        v.verify(&first, NOW_MS),
        Err(Rejection::Replayed("recorder-1".into()))
    );
    assert_eq!(
        v.verify(&second, NOW_MS),
        Err(Rejection::Replayed("recorder-1".into()))
    );
    // Older than the reorder window behind the newest: refused.
    let old = beacon(at(NOW_MS) - 400_000, 1).seal(&key());
    assert_eq!(
        v.verify(&old, NOW_MS),
        Err(Rejection::Replayed("recorder-1".into()))
    );
    v.verify(&beacon(at(NOW_MS) + 400_000, 1).seal(&key()), NOW_MS)
        .unwrap();
}

#[test]
fn a_full_window_takes_nothing_older_than_it_remembers() {
    let mut v = verifier();
    let base = at(NOW_MS);
    for i in 0..REMEMBERED as u64 {
        v.verify(&beacon(base + 1000 + i, 1).seal(&key()), NOW_MS)
            .unwrap();
    }
    // Within the reorder window, never seen, but older than every counter
    // remembered: it may have been taken and forgotten.
    assert_eq!(
        v.verify(&beacon(base, 1).seal(&key()), NOW_MS),
        Err(Rejection::Replayed("recorder-1".into()))
    );
}

#[test]
fn a_stale_or_future_beacon_is_refused() {
    let skew = MAX_SKEW.as_millis() as u64;
    for sent in [NOW_MS - skew - 1, NOW_MS + skew + 1] {
        let r = verifier().verify(&beacon(at(sent), 1).seal(&key()), NOW_MS);
        assert!(matches!(r, Err(Rejection::Stale { .. })), "{r:?}");
    }
    for sent in [NOW_MS - skew, NOW_MS + skew] {
        verifier()
            .verify(&beacon(at(sent), 1).seal(&key()), NOW_MS)
            .unwrap();
    }
}

#[test]
fn a_beacon_that_does_not_match_the_site_is_refused() {
    let v = || verifier();
    let mut unknown = beacon(at(NOW_MS), 1);
    unknown.sender = "intruder".into();
    assert_eq!(
        v().verify(&unknown.seal(&key()), NOW_MS),
        Err(Rejection::UnknownServer("intruder".into()))
    );
    let mut foreign_owner = beacon(at(NOW_MS), 1);
    foreign_owner.emits[0].owner = "recorder-9".into();
    let mut foreign_channel = beacon(at(NOW_MS), 1);
    foreign_channel.emits[0].channels.push(channel(61));
    let mut no_such_track = beacon(at(NOW_MS), 1);
    no_such_track.emits[0].channels[0].tracks[1].kind = TrackKind::Metadata;
    let mut twice = beacon(at(NOW_MS), 1);
    twice.emits.push(twice.emits[0].clone());
    for b in [foreign_owner, foreign_channel, no_such_track, twice] {
        let r = v().verify(&b.seal(&key()), NOW_MS);
        assert!(matches!(r, Err(Rejection::Inconsistent { .. })), "{r:?}");
    }
    // A refused beacon does not move the window: the same counter, right,
    // is taken.
    let mut w = v();
    let mut bad = beacon(at(NOW_MS), 1);
    bad.emits[0].channels.push(channel(61));
    assert!(w.verify(&bad.seal(&key()), NOW_MS).is_err());
    w.verify(&beacon(at(NOW_MS), 1).seal(&key()), NOW_MS)
        .unwrap();
}

#[test]
fn many_channels_split_into_datagrams_that_each_state_the_role() {
    let b = beacon(at(NOW_MS), 60);
    let parts = b.clone().split(MAX_DATAGRAM);
    assert!(parts.len() > 1, "{} parts", parts.len());
    let mut v = verifier();
    let mut channels = Vec::new();
    for (i, mut p) in parts.into_iter().enumerate() {
        p.counter += i as u64;
        let d = p.seal(&key());
        assert!(d.len() <= MAX_DATAGRAM, "{} bytes", d.len());
        let got = v.verify(&d, NOW_MS).unwrap();
        assert_eq!(got.emits.len(), 1);
        assert_eq!(got.emits[0].owner, "recorder-1");
        assert_eq!(got.emits[0].epoch, Some(42));
        channels.extend(got.emits[0].channels.clone());
    }
    assert_eq!(channels, b.emits[0].channels);
    // Nothing to spread: one part.
    assert_eq!(beacon(at(NOW_MS), 0).split(MAX_DATAGRAM).len(), 1);
}

#[test]
fn site_keys_are_long_random_hex_and_never_printed() {
    let k = SiteKey::generate();
    assert_eq!(k.len(), 64);
    assert_ne!(k, SiteKey::generate());
    let parsed = SiteKey::from_hex(&k).unwrap();
    let shown = format!("{parsed:?}");
    assert!(!shown.contains(&k[..8]), "{shown}");
    assert!(shown.contains("redacted"));
    for bad in [
        "",
        "0011223344556677",                 // 64 bits
        "00112233445566778899aabbccddeef",  // odd
        "zz112233445566778899aabbccddeeff", // not hex
        "00000000000000000000000000000000", // one byte repeated
    ] {
        let e = SiteKey::from_hex(bad).unwrap_err();
        assert!(bad.is_empty() || !e.contains(bad), "{e}");
    }
    SiteKey::from_hex("00112233445566778899aabbccddeeff").unwrap();
}
