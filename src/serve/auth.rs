//! RTSP authentication with the server password: Digest (RFC 2617 / RFC 7616
//! style, MD5 as RTSP clients support it, with or without `qop=auth`), and
//! Basic only when configured. Sans-IO: the caller passes the time.
//!
//! Nonces are stateless: the issue time and an HMAC-SHA256 of it under a
//! per-process secret. A nonce older than [`NONCE_LIFETIME`] is stale: the
//! client is asked to retry with a fresh one (`stale=true`).

use base64::Engine as _;
use hmac::{KeyInit, Mac};
use md5::{Digest, Md5};

use crate::config::Secret;

/// Nonces stay valid this long; keep-alives of a long session renew them
/// through `stale=true` challenges.
pub const NONCE_LIFETIME_SECS: u64 = 600;

pub const REALM: &str = "mcrelay";

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

pub struct Authenticator {
    user: String,
    password: Secret,
    basic: bool,
    secret: [u8; 32],
}

/// The outcome of checking a request's credentials.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// Credentials missing or wrong: answer 401 with these challenges.
    Denied {
        stale: bool,
    },
}

impl Authenticator {
    /// `secret` keys the nonces; draw it at random once per process.
    pub fn new(user: String, password: Secret, basic: bool, secret: [u8; 32]) -> Self {
        Authenticator {
            user,
            password,
            basic,
            secret,
        }
    }

    /// `WWW-Authenticate` header values for a 401, Digest first.
    pub fn challenges(&self, now_unix: u64, stale: bool) -> Vec<String> {
        let mut v = vec![format!(
            "Digest realm=\"{REALM}\", nonce=\"{}\", algorithm=MD5{}",
            self.nonce(now_unix),
            if stale { ", stale=true" } else { "" }
        )];
        if self.basic {
            v.push(format!("Basic realm=\"{REALM}\""));
        }
        v
    }

    /// Checks the `Authorization` header of a request with `method`.
    pub fn check(&self, method: &str, authorization: Option<&str>, now_unix: u64) -> Verdict {
        let Some(h) = authorization.map(str::trim) else {
            return Verdict::Denied { stale: false };
        };
        let (scheme, rest) = h.split_once(' ').unwrap_or((h, ""));
        if scheme.eq_ignore_ascii_case("basic") {
            return if self.basic && self.check_basic(rest.trim()) {
                Verdict::Allowed
            } else {
                Verdict::Denied { stale: false }
            };
        }
        if !scheme.eq_ignore_ascii_case("digest") {
            return Verdict::Denied { stale: false };
        }
        let p = parse_params(rest);
        let get = |k: &str| {
            p.iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(k))
                .map(|(_, v)| v.as_str())
        };
        let (Some(user), Some(realm), Some(nonce), Some(uri), Some(response)) = (
            get("username"),
            get("realm"),
            get("nonce"),
            get("uri"),
            get("response"),
        ) else {
            return Verdict::Denied { stale: false };
        };
        if get("algorithm").is_some_and(|a| !a.eq_ignore_ascii_case("md5")) {
            return Verdict::Denied { stale: false };
        }
        let ha1 = md5_hex(&format!("{user}:{realm}:{}", self.password.expose()));
        let ha2 = md5_hex(&format!("{method}:{uri}"));
        let expected = match (get("qop"), get("nc"), get("cnonce")) {
            (Some(qop), Some(nc), Some(cnonce)) if qop.eq_ignore_ascii_case("auth") => {
                md5_hex(&format!("{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}"))
            }
            (None, _, _) => md5_hex(&format!("{ha1}:{nonce}:{ha2}")),
            _ => return Verdict::Denied { stale: false },
        };
        let right = ct_eq(user.as_bytes(), self.user.as_bytes())
            & ct_eq(realm.as_bytes(), REALM.as_bytes())
            & ct_eq(
                response.to_ascii_lowercase().as_bytes(),
                expected.as_bytes(),
            );
        match (right, self.nonce_state(nonce, now_unix)) {
            (true, NonceState::Fresh) => Verdict::Allowed,
            (true, NonceState::Stale) => Verdict::Denied { stale: true },
            _ => Verdict::Denied { stale: false },
        }
    }

    fn check_basic(&self, b64: &str) -> bool {
        let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(b64) else {
            return false;
        };
        let Ok(text) = String::from_utf8(raw) else {
            return false;
        };
        let Some((user, password)) = text.split_once(':') else {
            return false;
        };
        ct_eq(user.as_bytes(), self.user.as_bytes())
            & ct_eq(password.as_bytes(), self.password.expose().as_bytes())
    }

    fn mac(&self, issued: u64) -> String {
        let mut m = HmacSha256::new_from_slice(&self.secret).expect("HMAC takes any key length");
        m.update(&issued.to_be_bytes());
        hex(&m.finalize().into_bytes()[..16])
    }

    fn nonce(&self, now_unix: u64) -> String {
        format!("{now_unix:016x}{}", self.mac(now_unix))
    }

    fn nonce_state(&self, nonce: &str, now_unix: u64) -> NonceState {
        let (Some(ts), Some(mac)) = (nonce.get(..16), nonce.get(16..)) else {
            return NonceState::Invalid;
        };
        let Ok(issued) = u64::from_str_radix(ts, 16) else {
            return NonceState::Invalid;
        };
        if !ct_eq(mac.as_bytes(), self.mac(issued).as_bytes())
            || issued > now_unix.saturating_add(60)
        {
            return NonceState::Invalid;
        }
        if now_unix.saturating_sub(issued) > NONCE_LIFETIME_SECS {
            NonceState::Stale
        } else {
            NonceState::Fresh
        }
    }
}

enum NonceState {
    Fresh,
    Stale,
    Invalid,
}

fn md5_hex(s: &str) -> String {
    hex(&Md5::digest(s.as_bytes()))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Compares without an early exit, so timing does not reveal a prefix.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `k=v, k="v, with comma", ...` as in Authorization headers.
/// The client side: an `Authorization` header answering a Digest
/// `WWW-Authenticate` challenge (MD5, with `qop=auth` when offered).
pub fn digest_answer(
    challenge: &str,
    user: &str,
    password: &str,
    method: &str,
    uri: &str,
    cnonce: &str,
) -> Option<String> {
    let (scheme, rest) = challenge.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("digest") {
        return None;
    }
    let p = parse_params(rest);
    let get = |k: &str| {
        p.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.as_str())
    };
    let (realm, nonce) = (get("realm")?, get("nonce")?);
    if get("algorithm").is_some_and(|a| !a.eq_ignore_ascii_case("md5")) {
        return None;
    }
    let ha1 = md5_hex(&format!("{user}:{realm}:{password}"));
    let ha2 = md5_hex(&format!("{method}:{uri}"));
    let auth_qop = get("qop").is_some_and(|q| q.split(',').any(|v| v.trim() == "auth"));
    Some(if auth_qop {
        let nc = "00000001";
        let response = md5_hex(&format!("{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}"));
        format!(
            "Digest username=\"{user}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", algorithm=MD5, qop=auth, nc={nc}, cnonce=\"{cnonce}\", response=\"{response}\""
        )
    } else {
        let response = md5_hex(&format!("{ha1}:{nonce}:{ha2}"));
        format!(
            "Digest username=\"{user}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", algorithm=MD5, response=\"{response}\""
        )
    })
}

/// The `uri` a Digest `Authorization` header names (HTTP checks it against
/// the request's own).
pub fn digest_uri(authorization: &str) -> Option<String> {
    let (scheme, rest) = authorization.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("digest") {
        return None;
    }
    parse_params(rest)
        .into_iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("uri"))
        .map(|(_, v)| v)
}

fn parse_params(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let Some(eq) = rest.find('=') else { break };
        let name = rest[..eq].trim().trim_start_matches(',').trim().to_string();
        rest = rest[eq + 1..].trim_start();
        let value;
        if let Some(r) = rest.strip_prefix('"') {
            let mut v = String::new();
            let mut chars = r.char_indices();
            let mut end = r.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, n)) = chars.next() {
                            v.push(n);
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => v.push(c),
                }
            }
            value = v;
            rest = &r[end.min(r.len())..];
        } else {
            let end = rest.find(',').unwrap_or(rest.len());
            value = rest[..end].trim().to_string();
            rest = &rest[end..];
        }
        rest = rest.trim_start().trim_start_matches(',').trim_start();
        out.push((name, value));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(basic: bool) -> Authenticator {
        Authenticator::new("admin".into(), Secret::new("demo".into()), basic, [7; 32])
    }

    #[test]
    fn the_client_answer_passes_and_names_its_uri() {
        let a = auth(false);
        let challenge = &a.challenges(1000, false)[0];
        let uri = "/channels/1/material?from=x";
        let h = digest_answer(challenge, "admin", "demo", "PUT", uri, "c0ffee").unwrap();
        assert_eq!(a.check("PUT", Some(&h), 1001), Verdict::Allowed);
        assert_eq!(digest_uri(&h).as_deref(), Some(uri));
        // Another method or password fails.
        assert_ne!(a.check("GET", Some(&h), 1001), Verdict::Allowed);
        let wrong = digest_answer(challenge, "admin", "nope", "PUT", uri, "c0ffee").unwrap();
        assert_ne!(a.check("PUT", Some(&wrong), 1001), Verdict::Allowed);
    }

    /// What a client computes (RFC 2617 3.2.2, without qop).
    fn digest(user: &str, pass: &str, nonce: &str, method: &str, uri: &str) -> String {
        let ha1 = md5_hex(&format!("{user}:{REALM}:{pass}"));
        let ha2 = md5_hex(&format!("{method}:{uri}"));
        let r = md5_hex(&format!("{ha1}:{nonce}:{ha2}"));
        format!(
            "Digest username=\"{user}\", realm=\"{REALM}\", nonce=\"{nonce}\", uri=\"{uri}\", response=\"{r}\""
        )
    }

    fn nonce_of(challenge: &str) -> String {
        let p = parse_params(challenge.strip_prefix("Digest ").unwrap());
        p.into_iter().find(|(k, _)| k == "nonce").unwrap().1
    }

    #[test]
    fn rfc_2617_example_response() {
        // RFC 2617 3.5, adapted to MD5 without the opaque: HA1/HA2/response.
        let ha1 = md5_hex("Mufasa:testrealm@host.com:Circle Of Life");
        assert_eq!(ha1, "939e7578ed9e3c518a452acee763bce9");
        let ha2 = md5_hex("GET:/dir/index.html");
        assert_eq!(ha2, "39aff3a2bab6126f332b942af96d3366");
        let r = md5_hex(&format!(
            "{ha1}:dcd98b7102dd2f0e8b11d0f600bfb0c093:00000001:0a4f113b:auth:{ha2}"
        ));
        assert_eq!(r, "6629fae49393a05397450978507c4ef1");
    }

    #[test]
    fn digest_round_trip_and_failures() {
        let a = auth(false);
        let now = 1_800_000_000;
        let ch = a.challenges(now, false);
        assert_eq!(ch.len(), 1, "no Basic unless configured");
        let nonce = nonce_of(&ch[0]);
        let uri = "rtsp://127.0.0.1:8554/1";
        let ok = digest("admin", "demo", &nonce, "DESCRIBE", uri);
        assert_eq!(a.check("DESCRIBE", Some(&ok), now + 5), Verdict::Allowed);
        // Same credentials for another method do not match.
        assert_eq!(
            a.check("SETUP", Some(&ok), now),
            Verdict::Denied { stale: false }
        );
        let wrong = digest("admin", "nope", &nonce, "DESCRIBE", uri);
        assert_eq!(
            a.check("DESCRIBE", Some(&wrong), now),
            Verdict::Denied { stale: false }
        );
        let other_user = digest("root", "demo", &nonce, "DESCRIBE", uri);
        assert_eq!(
            a.check("DESCRIBE", Some(&other_user), now),
            Verdict::Denied { stale: false }
        );
        // A forged or foreign nonce is refused; an old one is stale.
        let forged = digest(
            "admin",
            "demo",
            "00000000deadbeef0123456789abcdef0123456789abcdef",
            "DESCRIBE",
            uri,
        );
        assert_eq!(
            a.check("DESCRIBE", Some(&forged), now),
            Verdict::Denied { stale: false }
        );
        assert_eq!(
            a.check("DESCRIBE", Some(&ok), now + NONCE_LIFETIME_SECS + 1),
            Verdict::Denied { stale: true }
        );
        assert_eq!(
            a.check("DESCRIBE", None, now),
            Verdict::Denied { stale: false }
        );
        assert_eq!(
            a.check("DESCRIBE", Some("Digest garbage"), now),
            Verdict::Denied { stale: false }
        );
    }

    #[test]
    fn digest_with_qop_auth() {
        let a = auth(false);
        let now = 1_800_000_000;
        let nonce = nonce_of(&a.challenges(now, false)[0]);
        let uri = "rtsp://h/1";
        let ha1 = md5_hex("admin:mcrelay:demo");
        let ha2 = md5_hex(&format!("PLAY:{uri}"));
        let r = md5_hex(&format!("{ha1}:{nonce}:00000001:abcd:auth:{ha2}"));
        let h = format!(
            "Digest username=\"admin\", realm=\"mcrelay\", nonce=\"{nonce}\", uri=\"{uri}\", qop=auth, nc=00000001, cnonce=\"abcd\", response=\"{r}\", algorithm=MD5"
        );
        assert_eq!(a.check("PLAY", Some(&h), now), Verdict::Allowed);
    }

    #[test]
    fn basic_only_when_configured() {
        let creds = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("admin:demo")
        );
        assert_eq!(
            auth(false).check("DESCRIBE", Some(&creds), 0),
            Verdict::Denied { stale: false }
        );
        let a = auth(true);
        assert_eq!(a.challenges(0, false).len(), 2);
        assert_eq!(a.check("DESCRIBE", Some(&creds), 0), Verdict::Allowed);
        let bad = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("admin:x")
        );
        assert_eq!(
            a.check("DESCRIBE", Some(&bad), 0),
            Verdict::Denied { stale: false }
        );
    }

    #[test]
    fn parses_quoted_params() {
        let p = parse_params(r#"username="a,b", realm="r\"q", nonce=abc, uri="rtsp://h/x""#);
        assert_eq!(p[0], ("username".into(), "a,b".into()));
        assert_eq!(p[1], ("realm".into(), "r\"q".into()));
        assert_eq!(p[2], ("nonce".into(), "abc".into()));
        assert_eq!(p[3], ("uri".into(), "rtsp://h/x".into()));
    }
}
