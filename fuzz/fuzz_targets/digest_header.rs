//! The Digest check with arbitrary headers, and the round trip of our own
//! client answer. The input is split at newlines into: an Authorization
//! header, user, password, method, URI, cnonce.
//!
//! - No header panics the check, and no arbitrary header is let in (the
//!   nonce carries an HMAC under a secret the input never sees).
//! - Any user, password and URI that an RTSP or HTTP header can carry
//!   round trip: the answer to a challenge is allowed, for that URI only;
//!   with `qop=auth` the same header again is a replay and refused.
#![no_main]

use std::net::{IpAddr, Ipv4Addr};

use libfuzzer_sys::fuzz_target;
use mcrelay::config::Secret;
use mcrelay::serve::auth::{Attempt, Authenticator, Verdict, digest_answer};

const NOW: u64 = 1_800_000_000;
const PEER: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 7));

fn header_safe(s: &str) -> bool {
    !s.chars().any(char::is_control)
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.split('\n');
    let header = parts.next().unwrap_or_default();
    let user = parts.next().unwrap_or("admin");
    let password = parts.next().unwrap_or("pw");
    let method = parts.next().unwrap_or("DESCRIBE");
    let uri = parts.next().unwrap_or("/1");
    let cnonce = parts.next().unwrap_or("c");

    for qop in [false, true] {
        let mut a = Authenticator::new(
            user.to_string(),
            Secret::new(password.to_string()),
            true,
            [7; 32],
        );
        if qop {
            a = a.with_qop();
        }
        let attempt = Attempt {
            method,
            uri,
            authorization: Some(header),
            peer: PEER,
            binding: 9,
        };
        // A header from the input cannot carry a valid nonce MAC; Basic
        // with the right password is the only way in.
        let v = a.check(&attempt, NOW);
        if v == Verdict::Allowed {
            assert!(
                header.trim_start().len() >= 5
                    && header.trim_start()[..5].eq_ignore_ascii_case("basic"),
                "allowed without a nonce: {header:?}"
            );
        }

        if !(header_safe(user)
            && header_safe(password)
            && header_safe(method)
            && header_safe(uri)
            && header_safe(cnonce))
            || method.is_empty()
            || method.contains(' ')
            || uri.is_empty()
            || uri.contains(' ')
        {
            continue;
        }
        let fresh = Authenticator::new(
            user.to_string(),
            Secret::new(password.to_string()),
            false,
            [7; 32],
        );
        let fresh = if qop { fresh.with_qop() } else { fresh };
        let challenge = &fresh.challenges(NOW, false, PEER, 9)[0];
        let answer = digest_answer(challenge, user, password, method, uri, cnonce, 1)
            .expect("our own challenge is answered");
        assert!(header_safe(&answer), "{answer:?}");
        let ok = Attempt {
            method,
            uri,
            authorization: Some(&answer),
            peer: PEER,
            binding: 9,
        };
        assert_eq!(fresh.check(&ok, NOW + 1), Verdict::Allowed, "{answer}");
        // The same header for another path (another channel) is refused;
        // the host part may differ (clients write it as they please).
        let other = format!("{}/x", uri.trim_end_matches('/'));
        let elsewhere = Attempt { uri: &other, ..ok };
        assert_ne!(fresh.check(&elsewhere, NOW + 1), Verdict::Allowed);
        // From another connection: stale, never allowed.
        let moved = Attempt { binding: 10, ..ok };
        assert_ne!(fresh.check(&moved, NOW + 1), Verdict::Allowed);
        if qop {
            assert_ne!(fresh.check(&ok, NOW + 2), Verdict::Allowed, "replay let in");
        }
    }
});
