//! Authentication with the server password: Digest (RFC 2617 / RFC 7616
//! style, MD5 as RTSP clients support it, with or without `qop=auth`), and
//! Basic only when configured. Sans-IO: the caller passes the time.
//!
//! What a captured header is worth, and why:
//! - Nonces are stateless: the issue time and an HMAC-SHA256 of it, of the
//!   client's address and of a binding under a per-process secret. A nonce
//!   works only from the address it was issued to, and an RTSP nonce only
//!   on the connection it was issued on (the binding is a random id per
//!   connection), so a header captured on one connection is refused on any
//!   other.
//! - The `uri` of a Digest response must be the request's own (a header
//!   computed for channel 1 does not open channel 2).
//! - With `qop=auth` (offered by the control API), each nonce's count
//!   (`nc`) must grow: a replayed request is refused.
//! - A nonce older than [`NONCE_LIFETIME_SECS`], or one bound elsewhere,
//!   with the right response is answered `stale=true`: the client retries
//!   with a fresh nonce without asking its user.
//! - Failed attempts are counted per client address: after
//!   [`MAX_FAILURES`] within [`FAILURE_WINDOW_SECS`] the address is refused
//!   without a check for [`LOCKOUT_SECS`].

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

use base64::Engine as _;
use hmac::{KeyInit, Mac};
use md5::{Digest, Md5};

use crate::config::Secret;

/// Nonces stay valid this long; keep-alives of a long session renew them
/// through `stale=true` challenges.
pub const NONCE_LIFETIME_SECS: u64 = 600;
/// Failed attempts from one address within the window before it is
/// refused for the lockout: a person who mistyped gets ten tries a minute,
/// a password guesser ten a minute and a half.
pub const MAX_FAILURES: u32 = 10;
pub const FAILURE_WINDOW_SECS: u64 = 60;
pub const LOCKOUT_SECS: u64 = 30;
/// Bounds on the memory the checks keep: addresses with failures, nonces
/// with counts. Beyond them the oldest are forgotten.
const MAX_TRACKED: usize = 4096;

pub const REALM: &str = "mcrelay";

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

pub struct Authenticator {
    user: String,
    password: Secret,
    basic: bool,
    /// Offer `qop=auth` and track nonce counts (the control API).
    qop: bool,
    secret: [u8; 32],
    tracked: Mutex<Tracked>,
}

#[derive(Default)]
struct Tracked {
    /// Failures by address: (count, first failure of the window).
    failures: HashMap<IpAddr, (u32, u64)>,
    /// The highest `nc` seen per nonce (qop only), with the nonce's issue
    /// time for pruning.
    counts: HashMap<String, (u64, u32)>,
}

/// A request's credentials and where they come from.
#[derive(Debug, Clone, Copy)]
pub struct Attempt<'a> {
    pub method: &'a str,
    /// The request URI as the request line has it.
    pub uri: &'a str,
    pub authorization: Option<&'a str>,
    pub peer: IpAddr,
    /// Nonces issued with a binding work only with the same binding (RTSP:
    /// a random id per connection); 0 for none.
    pub binding: u64,
}

/// The outcome of checking a request's credentials.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// Credentials missing or wrong: answer 401 with these challenges.
    Denied {
        stale: bool,
    },
    /// Too many failures from this address: refused for this long without
    /// a check.
    Throttled {
        retry_after_secs: u64,
    },
}

impl Authenticator {
    /// `secret` keys the nonces; draw it at random once per process.
    /// `qop`: offer `qop=auth` and refuse replayed nonce counts.
    pub fn new(user: String, password: Secret, basic: bool, secret: [u8; 32]) -> Self {
        Authenticator {
            user,
            password,
            basic,
            qop: false,
            secret,
            tracked: Mutex::default(),
        }
    }

    /// Offers `qop=auth` and refuses a nonce count that does not grow.
    pub fn with_qop(mut self) -> Self {
        self.qop = true;
        self
    }

    fn tracked(&self) -> std::sync::MutexGuard<'_, Tracked> {
        self.tracked.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `WWW-Authenticate` header values for a 401 to `peer` on `binding`,
    /// Digest first.
    pub fn challenges(
        &self,
        now_unix: u64,
        stale: bool,
        peer: IpAddr,
        binding: u64,
    ) -> Vec<String> {
        let mut v = vec![format!(
            "Digest realm=\"{REALM}\", nonce=\"{}\", algorithm=MD5{}{}",
            self.nonce(now_unix, peer, binding),
            if self.qop { ", qop=\"auth\"" } else { "" },
            if stale { ", stale=true" } else { "" }
        )];
        if self.basic {
            v.push(format!("Basic realm=\"{REALM}\""));
        }
        v
    }

    /// Checks a request's credentials.
    pub fn check(&self, a: &Attempt<'_>, now_unix: u64) -> Verdict {
        if let Some(retry_after_secs) = self.locked_out(a.peer, now_unix) {
            return Verdict::Throttled { retry_after_secs };
        }
        let Some(h) = a.authorization.map(str::trim) else {
            return Verdict::Denied { stale: false };
        };
        let verdict = self.check_header(a, h, now_unix);
        if verdict == (Verdict::Denied { stale: false }) {
            self.failed(a.peer, now_unix);
        }
        verdict
    }

    fn check_header(&self, a: &Attempt<'_>, h: &str, now_unix: u64) -> Verdict {
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
        // The response must be for this request, not another channel's.
        if !same_uri(uri, a.uri) {
            return Verdict::Denied { stale: false };
        }
        let ha1 = md5_hex(&format!("{user}:{realm}:{}", self.password.expose()));
        let ha2 = md5_hex(&format!("{}:{uri}", a.method));
        let (expected, nc) = match (get("qop"), get("nc"), get("cnonce")) {
            (Some(qop), Some(nc), Some(cnonce)) if qop.eq_ignore_ascii_case("auth") => {
                let Ok(count) = u32::from_str_radix(nc, 16) else {
                    return Verdict::Denied { stale: false };
                };
                (
                    md5_hex(&format!("{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")),
                    Some(count),
                )
            }
            (None, _, _) => (md5_hex(&format!("{ha1}:{nonce}:{ha2}")), None),
            _ => return Verdict::Denied { stale: false },
        };
        let right = ct_eq(user.as_bytes(), self.user.as_bytes())
            & ct_eq(realm.as_bytes(), REALM.as_bytes())
            & ct_eq(
                response.to_ascii_lowercase().as_bytes(),
                expected.as_bytes(),
            );
        if !right {
            return Verdict::Denied { stale: false };
        }
        let issued = match self.nonce_state(nonce, now_unix, a.peer, a.binding) {
            NonceState::Fresh(issued) => issued,
            // Right password, nonce expired or bound elsewhere: retry.
            NonceState::Stale | NonceState::Invalid => return Verdict::Denied { stale: true },
        };
        if self.qop {
            // The control API offers qop: a response without it could be
            // replayed, and is not taken.
            let Some(nc) = nc else {
                return Verdict::Denied { stale: false };
            };
            if !self.count(nonce, issued, nc, now_unix) {
                return Verdict::Denied { stale: false };
            }
        }
        Verdict::Allowed
    }

    /// Notes `nc` for `nonce`; false when it does not exceed the last one
    /// (a replay).
    fn count(&self, nonce: &str, issued: u64, nc: u32, now_unix: u64) -> bool {
        let mut t = self.tracked();
        if t.counts.len() >= MAX_TRACKED && !t.counts.contains_key(nonce) {
            t.counts
                .retain(|_, (at, _)| now_unix.saturating_sub(*at) <= NONCE_LIFETIME_SECS);
            if t.counts.len() >= MAX_TRACKED
                && let Some(oldest) = t
                    .counts
                    .iter()
                    .min_by_key(|(_, (at, _))| *at)
                    .map(|(k, _)| k.clone())
            {
                t.counts.remove(&oldest);
            }
        }
        let last = t.counts.entry(nonce.to_string()).or_insert((issued, 0));
        if nc <= last.1 {
            return false;
        }
        last.1 = nc;
        true
    }

    /// Seconds an address is still locked out for, if it is.
    fn locked_out(&self, peer: IpAddr, now_unix: u64) -> Option<u64> {
        let t = self.tracked();
        let &(count, since) = t.failures.get(&peer)?;
        let until = since.saturating_add(FAILURE_WINDOW_SECS.max(LOCKOUT_SECS));
        (count >= MAX_FAILURES && now_unix < until).then(|| until - now_unix)
    }

    fn failed(&self, peer: IpAddr, now_unix: u64) {
        let mut t = self.tracked();
        if t.failures.len() >= MAX_TRACKED && !t.failures.contains_key(&peer) {
            t.failures.retain(|_, (_, since)| {
                now_unix.saturating_sub(*since) <= FAILURE_WINDOW_SECS.max(LOCKOUT_SECS)
            });
            if t.failures.len() >= MAX_TRACKED
                && let Some(oldest) = t
                    .failures
                    .iter()
                    .min_by_key(|(_, (_, since))| *since)
                    .map(|(k, _)| *k)
            {
                t.failures.remove(&oldest);
            }
        }
        let e = t.failures.entry(peer).or_insert((0, now_unix));
        if now_unix.saturating_sub(e.1) > FAILURE_WINDOW_SECS.max(LOCKOUT_SECS) {
            *e = (0, now_unix);
        }
        e.0 += 1;
        if e.0 == MAX_FAILURES {
            tracing::warn!(%peer, "{MAX_FAILURES} failed authentications: refusing this address for {LOCKOUT_SECS} s");
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

    fn mac(&self, issued: u64, salt: u64, peer: IpAddr, binding: u64) -> String {
        let mut m = HmacSha256::new_from_slice(&self.secret).expect("HMAC takes any key length");
        m.update(&issued.to_be_bytes());
        m.update(&salt.to_be_bytes());
        m.update(&binding.to_be_bytes());
        match peer {
            IpAddr::V4(a) => m.update(&a.octets()),
            IpAddr::V6(a) => m.update(&a.octets()),
        }
        hex(&m.finalize().into_bytes()[..16])
    }

    /// The issue time, a random salt (every challenge's nonce is new, so
    /// its counts start afresh), and the MAC that binds them to the
    /// address and the binding.
    fn nonce(&self, now_unix: u64, peer: IpAddr, binding: u64) -> String {
        let salt: u64 = rand::random();
        format!(
            "{now_unix:016x}{salt:016x}{}",
            self.mac(now_unix, salt, peer, binding)
        )
    }

    fn nonce_state(&self, nonce: &str, now_unix: u64, peer: IpAddr, binding: u64) -> NonceState {
        let (Some(ts), Some(salt), Some(mac)) =
            (nonce.get(..16), nonce.get(16..32), nonce.get(32..))
        else {
            return NonceState::Invalid;
        };
        let (Ok(issued), Ok(salt)) = (u64::from_str_radix(ts, 16), u64::from_str_radix(salt, 16))
        else {
            return NonceState::Invalid;
        };
        if !ct_eq(
            mac.as_bytes(),
            self.mac(issued, salt, peer, binding).as_bytes(),
        ) || issued > now_unix.saturating_add(60)
        {
            return NonceState::Invalid;
        }
        if now_unix.saturating_sub(issued) > NONCE_LIFETIME_SECS {
            NonceState::Stale
        } else {
            NonceState::Fresh(issued)
        }
    }
}

enum NonceState {
    Fresh(u64),
    Stale,
    Invalid,
}

/// Whether a Digest `uri` names the request's URI: the same path and query,
/// whether written absolute (`rtsp://host:port/1`) or as a path (`/1`), a
/// trailing slash aside.
fn same_uri(digest: &str, request: &str) -> bool {
    fn path(u: &str) -> &str {
        let p = match u.split_once("://") {
            Some((_, rest)) => rest.find('/').map_or("", |i| &rest[i..]),
            None => u,
        };
        p.strip_suffix('/').unwrap_or(p)
    }
    digest == request || path(digest) == path(request)
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

/// The client side: an `Authorization` header answering a Digest
/// `WWW-Authenticate` challenge (MD5, with `qop=auth` when offered).
pub fn digest_answer(
    challenge: &str,
    user: &str,
    password: &str,
    method: &str,
    uri: &str,
    cnonce: &str,
    nc: u32,
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
    // Quoted values as RFC 7230 quoted-strings: `"` and `\` escaped (the
    // hashes are over the values themselves).
    let q = |v: &str| v.replace('\\', "\\\\").replace('"', "\\\"");
    let (user_q, realm_q, nonce_q, uri_q, cnonce_q) =
        (q(user), q(realm), q(nonce), q(uri), q(cnonce));
    let auth_qop = get("qop").is_some_and(|q| q.split(',').any(|v| v.trim() == "auth"));
    Some(if auth_qop {
        let nc = format!("{nc:08x}");
        let response = md5_hex(&format!("{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}"));
        format!(
            "Digest username=\"{user_q}\", realm=\"{realm_q}\", nonce=\"{nonce_q}\", uri=\"{uri_q}\", algorithm=MD5, qop=auth, nc={nc}, cnonce=\"{cnonce_q}\", response=\"{response}\""
        )
    } else {
        let response = md5_hex(&format!("{ha1}:{nonce}:{ha2}"));
        format!(
            "Digest username=\"{user_q}\", realm=\"{realm_q}\", nonce=\"{nonce_q}\", uri=\"{uri_q}\", algorithm=MD5, response=\"{response}\""
        )
    })
}

/// `k=v, k="v, with comma", ...` as in Authorization headers.
pub fn parse_params(s: &str) -> Vec<(String, String)> {
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
    use std::net::Ipv4Addr;

    use super::*;

    const PEER: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 7));
    const OTHER: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 8));

    fn auth(basic: bool) -> Authenticator {
        Authenticator::new("admin".into(), Secret::new("demo".into()), basic, [7; 32])
    }

    fn attempt<'a>(method: &'a str, uri: &'a str, h: Option<&'a str>) -> Attempt<'a> {
        Attempt {
            method,
            uri,
            authorization: h,
            peer: PEER,
            binding: 0,
        }
    }

    #[test]
    fn the_client_answer_passes_and_counts_up() {
        let a = auth(false).with_qop();
        let challenge = &a.challenges(1000, false, PEER, 0)[0];
        assert!(challenge.contains("qop=\"auth\""));
        let uri = "/channels/1/material?from=x";
        let h = digest_answer(challenge, "admin", "demo", "PUT", uri, "c0ffee", 1).unwrap();
        assert_eq!(
            a.check(&attempt("PUT", uri, Some(&h)), 1001),
            Verdict::Allowed
        );
        // The same header again is a replay.
        assert_eq!(
            a.check(&attempt("PUT", uri, Some(&h)), 1002),
            Verdict::Denied { stale: false }
        );
        let h2 = digest_answer(challenge, "admin", "demo", "PUT", uri, "c0ffee", 2).unwrap();
        assert_eq!(
            a.check(&attempt("PUT", uri, Some(&h2)), 1002),
            Verdict::Allowed
        );
        // Another method or password fails.
        let h3 = digest_answer(challenge, "admin", "demo", "PUT", uri, "c0ffee", 3).unwrap();
        assert_ne!(
            a.check(&attempt("GET", uri, Some(&h3)), 1001),
            Verdict::Allowed
        );
        let wrong = digest_answer(challenge, "admin", "nope", "PUT", uri, "c0ffee", 4).unwrap();
        assert_ne!(
            a.check(&attempt("PUT", uri, Some(&wrong)), 1001),
            Verdict::Allowed
        );
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
    fn quotes_and_backslashes_in_the_user_round_trip() {
        // Found by the digest_header fuzz target: the answer wrote the
        // user name unescaped inside its quotes.
        for user in ["ad\"min", "a\\b", "\"", "x\\\""] {
            let a = Authenticator::new(user.into(), Secret::new("pw".into()), false, [7; 32])
                .with_qop();
            let challenge = &a.challenges(1000, false, PEER, 0)[0];
            let h = digest_answer(challenge, user, "pw", "GET", "/a\"b", "c\"n", 1).unwrap();
            assert_eq!(
                a.check(&attempt("GET", "/a\"b", Some(&h)), 1001),
                Verdict::Allowed,
                "{h}"
            );
        }
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
        let ch = a.challenges(now, false, PEER, 0);
        assert_eq!(ch.len(), 1, "no Basic unless configured");
        let nonce = nonce_of(&ch[0]);
        let uri = "rtsp://127.0.0.1:8554/1";
        let ok = digest("admin", "demo", &nonce, "DESCRIBE", uri);
        let check = |m, h: &str, t| a.check(&attempt(m, uri, Some(h)), t);
        assert_eq!(check("DESCRIBE", &ok, now + 5), Verdict::Allowed);
        // Same credentials for another method do not match.
        assert_eq!(check("SETUP", &ok, now), Verdict::Denied { stale: false });
        let wrong = digest("admin", "nope", &nonce, "DESCRIBE", uri);
        assert_eq!(
            check("DESCRIBE", &wrong, now),
            Verdict::Denied { stale: false }
        );
        let other_user = digest("root", "demo", &nonce, "DESCRIBE", uri);
        assert_eq!(
            check("DESCRIBE", &other_user, now),
            Verdict::Denied { stale: false }
        );
        // A forged nonce with the right password: retry with a fresh one.
        let forged = digest(
            "admin",
            "demo",
            "00000000deadbeef00000000000000000123456789abcdef0123456789abcdef",
            "DESCRIBE",
            uri,
        );
        assert_eq!(
            check("DESCRIBE", &forged, now),
            Verdict::Denied { stale: true }
        );
        // An old nonce is stale.
        assert_eq!(
            check("DESCRIBE", &ok, now + NONCE_LIFETIME_SECS + 1),
            Verdict::Denied { stale: true }
        );
        assert_eq!(
            a.check(&attempt("DESCRIBE", uri, None), now),
            Verdict::Denied { stale: false }
        );
        assert_eq!(
            check("DESCRIBE", "Digest garbage", now),
            Verdict::Denied { stale: false }
        );
    }

    #[test]
    fn a_response_is_bound_to_its_uri_its_address_and_its_connection() {
        let a = auth(false);
        let now = 1_800_000_000;
        let nonce = nonce_of(&a.challenges(now, false, PEER, 42)[0]);
        let h = digest("admin", "demo", &nonce, "PLAY", "rtsp://h/1");
        let on = |uri, peer, binding| {
            a.check(
                &Attempt {
                    method: "PLAY",
                    uri,
                    authorization: Some(&h),
                    peer,
                    binding,
                },
                now,
            )
        };
        assert_eq!(on("rtsp://h/1", PEER, 42), Verdict::Allowed);
        assert_eq!(
            on("rtsp://h:554/1/", PEER, 42),
            Verdict::Allowed,
            "same path"
        );
        assert_eq!(on("rtsp://h/2", PEER, 42), Verdict::Denied { stale: false });
        // Another connection or another address: the nonce is not theirs.
        assert_eq!(on("rtsp://h/1", PEER, 43), Verdict::Denied { stale: true });
        assert_eq!(on("rtsp://h/1", OTHER, 42), Verdict::Denied { stale: true });
    }

    #[test]
    fn an_address_that_keeps_failing_is_locked_out_for_a_while() {
        let a = auth(false);
        let now = 1_800_000_000;
        let nonce = nonce_of(&a.challenges(now, false, PEER, 0)[0]);
        let uri = "rtsp://h/1";
        let wrong = digest("admin", "guess", &nonce, "DESCRIBE", uri);
        let right = digest("admin", "demo", &nonce, "DESCRIBE", uri);
        for _ in 0..MAX_FAILURES {
            assert_eq!(
                a.check(&attempt("DESCRIBE", uri, Some(&wrong)), now),
                Verdict::Denied { stale: false }
            );
        }
        assert!(matches!(
            a.check(&attempt("DESCRIBE", uri, Some(&right)), now + 1),
            Verdict::Throttled { .. }
        ));
        // Another address is not affected.
        let other_nonce = nonce_of(&a.challenges(now, false, OTHER, 0)[0]);
        let other = digest("admin", "demo", &other_nonce, "DESCRIBE", uri);
        let mut at = attempt("DESCRIBE", uri, Some(&other));
        at.peer = OTHER;
        assert_eq!(a.check(&at, now + 1), Verdict::Allowed);
        // After the lockout the right password works again.
        let later = now + FAILURE_WINDOW_SECS.max(LOCKOUT_SECS) + 1;
        let nonce = nonce_of(&a.challenges(later, false, PEER, 0)[0]);
        let right = digest("admin", "demo", &nonce, "DESCRIBE", uri);
        assert_eq!(
            a.check(&attempt("DESCRIBE", uri, Some(&right)), later),
            Verdict::Allowed
        );
    }

    #[test]
    fn digest_with_qop_auth() {
        let a = auth(false);
        let now = 1_800_000_000;
        let nonce = nonce_of(&a.challenges(now, false, PEER, 0)[0]);
        let uri = "rtsp://h/1";
        let ha1 = md5_hex("admin:mcrelay:demo");
        let ha2 = md5_hex(&format!("PLAY:{uri}"));
        let r = md5_hex(&format!("{ha1}:{nonce}:00000001:abcd:auth:{ha2}"));
        let h = format!(
            "Digest username=\"admin\", realm=\"mcrelay\", nonce=\"{nonce}\", uri=\"{uri}\", qop=auth, nc=00000001, cnonce=\"abcd\", response=\"{r}\", algorithm=MD5"
        );
        assert_eq!(
            a.check(&attempt("PLAY", uri, Some(&h)), now),
            Verdict::Allowed
        );
    }

    #[test]
    fn basic_only_when_configured() {
        let creds = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("admin:demo")
        );
        assert_eq!(
            auth(false).check(&attempt("DESCRIBE", "/", Some(&creds)), 0),
            Verdict::Denied { stale: false }
        );
        let a = auth(true);
        assert_eq!(a.challenges(0, false, PEER, 0).len(), 2);
        assert_eq!(
            a.check(&attempt("DESCRIBE", "/", Some(&creds)), 0),
            Verdict::Allowed
        );
        let bad = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("admin:x")
        );
        assert_eq!(
            a.check(&attempt("DESCRIBE", "/", Some(&bad)), 0),
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
