//! The beacon: what a server says of itself to the site several times a
//! second, on a beacon group no viewer joins, authenticated with the site
//! key. Bytes in, a verified [`Beacon`] or a typed [`Rejection`] out; no
//! sockets, no clock (the time is an argument).
//!
//! A beacon is the data plane of the failover: it says which roles its
//! sender emits now (its own, or the owners it covers, with the epoch
//! where the controller has one) and where each emitted stream stands
//! (SSRC, next sequence number with its rollover count, last RTP
//! timestamp and the wall-clock instant of it), so that a standby learns
//! everything it needs to continue a stream without joining the media
//! groups (IGMP is per group: a standby that joins them receives all it
//! protects).
//!
//! Wire format (version 1, big-endian), one UDP datagram:
//!
//! ```text
//! "MCRB" | version u8 | flags u8 (0) | counter u64 | sender: len u8, name
//! | owners u8 | per owner: len u8, name | epoch i64 (0: none) | channels u16
//! |   per channel: id u32 | tracks u8 | per track: kind u8 | ssrc u32
//! |     | next_seq u16 | roc u32 | rtp_timestamp u32 | clock_rate u32
//! |     | sent_unix_ms u64 | packet_rate u32 | frame_ticks u32
//! | tag: HMAC-SHA-256 of everything before it (32 bytes)
//! ```
//!
//! The counter is the sender's wall clock in microseconds, kept strictly
//! increasing: it never goes back (replays are refused) and it says when
//! the beacon was sent (stale beacons are refused). A sender with many
//! channels splits its points over several datagrams ([`Beacon::split`]);
//! each is a whole beacon that states every role its sender emits.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use hmac::{KeyInit, Mac};

use crate::channel::resume::StreamPoint;
use crate::media::TrackKind;

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

const MAGIC: [u8; 4] = *b"MCRB";
const VERSION: u8 = 1;
const TAG_LEN: usize = 32;
/// magic, version, flags, counter, sender's name length.
const HEADER_LEN: usize = 4 + 1 + 1 + 8 + 1;
/// One track's point on the wire.
const TRACK_LEN: usize = 1 + 4 + 2 + 4 + 4 + 4 + 8 + 4 + 4;

/// The largest datagram a sender makes: 1500-byte Ethernet less IPv4 and
/// UDP headers (28) and room for a VLAN tag or a tunnel's header, so that
/// a beacon is never fragmented (a lost fragment loses the whole beacon).
pub const MAX_DATAGRAM: usize = 1400;
/// Longest name of a server (as the site file's names).
pub const MAX_NAME: usize = crate::config::MAX_SERVER_NAME;
/// Roles one beacon may state: more than any standby carries.
pub const MAX_OWNERS: usize = 64;
/// A channel has video and at most one track of each other kind.
pub const MAX_TRACKS: usize = TrackKind::ALL.len();

/// How far a beacon's time may be from the receiver's clock. NTP keeps a
/// LAN's hosts within milliseconds; two seconds allows for a host whose
/// clock is still being set, and is short enough that a beacon recorded
/// and replayed to a receiver that never saw it (one just restarted) says
/// nothing older than a fraction of any `inaccessible_period`.
pub const MAX_SKEW: Duration = Duration::from_secs(2);
/// How late a datagram may arrive after a later one of its sender (LAN
/// reordering, a sender's parts sent back to back) and still be taken.
const REORDER_US: u64 = 500_000;
/// Counters remembered per sender within [`REORDER_US`]: a sender sends
/// at most 5 beacons a second of at most a few datagrams each (64 is 2.5
/// s of 5 datagrams at 5/s); once full, nothing older than the oldest
/// remembered is taken.
const REMEMBERED: usize = 64;

/// The site key: what authenticates beacons (and, later, derives media
/// keys). Made from the `[site] key` secret; never printed.
#[derive(Clone)]
pub struct SiteKey {
    /// The beacons' HMAC key, derived from the site key (HKDF-SHA-256), so
    /// that no other use of the site key ever shares it.
    beacon: [u8; 32],
}

impl std::fmt::Debug for SiteKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SiteKey(<redacted>)")
    }
}

/// Fewest bits of a site key: 128, as the issue and NIST SP 800-107 ask of
/// an HMAC key.
pub const MIN_KEY_BITS: usize = 128;

impl SiteKey {
    /// A key from its hexadecimal form (what `mcrelay key` prints): at
    /// least 32 hex digits (128 bits). The error never repeats the key.
    pub fn from_hex(text: &str) -> Result<SiteKey, String> {
        let text = text.trim();
        if !text.len().is_multiple_of(2) || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(
                "the site key is not hexadecimal digits (make one with `mcrelay key`)".into(),
            );
        }
        let bytes: Vec<u8> = (0..text.len())
            .step_by(2)
            .filter_map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
            .collect();
        if bytes.len() * 8 < MIN_KEY_BITS {
            return Err(format!(
                "the site key has {} bits; it needs at least {MIN_KEY_BITS} (32 hex digits; make one with `mcrelay key`)",
                bytes.len() * 8
            ));
        }
        if bytes.iter().all(|&b| b == bytes[0]) {
            return Err("the site key is one byte repeated: make one with `mcrelay key`".into());
        }
        let hk = hkdf::Hkdf::<sha2::Sha256>::new(None, &bytes);
        let mut beacon = [0u8; 32];
        hk.expand(b"mcrelay beacon v1", &mut beacon)
            .expect("32 bytes is a valid HKDF-SHA-256 output length");
        Ok(SiteKey { beacon })
    }

    /// A new random key, as `mcrelay key` prints it: 256 bits in hex.
    pub fn generate() -> String {
        let bytes: [u8; 32] = rand::random();
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn mac(&self) -> HmacSha256 {
        HmacSha256::new_from_slice(&self.beacon).expect("HMAC takes any key length")
    }
}

/// One track's point, with the rollover count of its sequence numbers
/// (what SRTP needs besides the 16-bit number).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrackPoint {
    pub kind: TrackKind,
    pub point: StreamPoint,
    pub roc: u32,
}

/// Where one emitted channel's streams stand.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelPoints {
    pub id: u32,
    pub tracks: Vec<TrackPoint>,
}

/// A role the sender emits now: `owner`'s channels on `owner`'s groups.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Emits {
    pub owner: String,
    /// The role's epoch (etcd: the role key's create revision).
    pub epoch: Option<i64>,
    /// The channels of this datagram (a sender may spread them over
    /// several).
    pub channels: Vec<ChannelPoints>,
}

/// What one beacon says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Beacon {
    pub sender: String,
    /// Microseconds of the sender's wall clock when sent, strictly
    /// increasing from one datagram to the next.
    pub counter: u64,
    /// Every role the sender emits now (none: it emits nothing).
    pub emits: Vec<Emits>,
}

impl Beacon {
    /// When it was sent, by its sender's clock (Unix ms).
    pub fn sent_unix_ms(&self) -> u64 {
        self.counter / 1000
    }

    fn body_len(&self) -> usize {
        HEADER_LEN
            + self.sender.len()
            + 1
            + self
                .emits
                .iter()
                .map(|e| {
                    1 + e.owner.len() + 8 + 2 + e.channels.iter().map(channel_len).sum::<usize>()
                })
                .sum::<usize>()
    }

    /// The beacon as one authenticated datagram.
    pub fn seal(&self, key: &SiteKey) -> Vec<u8> {
        let mut b = Vec::with_capacity(self.body_len() + TAG_LEN);
        b.extend_from_slice(&MAGIC);
        b.push(VERSION);
        b.push(0);
        b.extend_from_slice(&self.counter.to_be_bytes());
        put_name(&mut b, &self.sender);
        b.push(self.emits.len().min(MAX_OWNERS) as u8);
        for e in self.emits.iter().take(MAX_OWNERS) {
            put_name(&mut b, &e.owner);
            b.extend_from_slice(&e.epoch.unwrap_or(0).to_be_bytes());
            b.extend_from_slice(
                &(e.channels.len().min(usize::from(u16::MAX)) as u16).to_be_bytes(),
            );
            for c in e.channels.iter().take(usize::from(u16::MAX)) {
                b.extend_from_slice(&c.id.to_be_bytes());
                b.push(c.tracks.len().min(MAX_TRACKS) as u8);
                for t in c.tracks.iter().take(MAX_TRACKS) {
                    let p = &t.point;
                    b.push(kind_code(t.kind));
                    b.extend_from_slice(&p.ssrc.to_be_bytes());
                    b.extend_from_slice(&p.next_seq.to_be_bytes());
                    b.extend_from_slice(&t.roc.to_be_bytes());
                    b.extend_from_slice(&p.rtp_timestamp.to_be_bytes());
                    b.extend_from_slice(&p.clock_rate.to_be_bytes());
                    b.extend_from_slice(&p.sent_unix_ms.to_be_bytes());
                    b.extend_from_slice(&p.packet_rate.to_be_bytes());
                    b.extend_from_slice(&p.frame_ticks.to_be_bytes());
                }
            }
        }
        let mut mac = key.mac();
        mac.update(&b);
        b.extend_from_slice(&mac.finalize().into_bytes());
        b
    }

    /// The beacon in parts of at most `max` bytes sealed: each part states
    /// every role, and the channels' points are spread over the parts (the
    /// counter of each is the caller's to set). At least one part.
    pub fn split(self, max: usize) -> Vec<Beacon> {
        let roles: Vec<Emits> = self
            .emits
            .iter()
            .map(|e| Emits {
                owner: e.owner.clone(),
                epoch: e.epoch,
                channels: Vec::new(),
            })
            .collect();
        let empty = Beacon {
            sender: self.sender.clone(),
            counter: self.counter,
            emits: roles,
        };
        let room = max.saturating_sub(TAG_LEN);
        let mut parts = vec![empty.clone()];
        let mut len = empty.body_len();
        for (i, e) in self.emits.into_iter().enumerate() {
            for c in e.channels {
                let need = channel_len(&c);
                if len + need > room && len > empty.body_len() {
                    parts.push(empty.clone());
                    len = empty.body_len();
                }
                len += need;
                let last = parts.last_mut().expect("parts starts with one");
                last.emits[i].channels.push(c);
            }
        }
        parts
    }
}

/// `rest` as a beacon's body after its magic and version, authenticated
/// with `key`, whatever it holds: for fuzzing the reader with what a
/// hostile server of the site could send.
pub fn seal_bytes(key: &SiteKey, rest: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(5 + rest.len() + TAG_LEN);
    b.extend_from_slice(&MAGIC);
    b.push(VERSION);
    b.extend_from_slice(rest);
    let mut mac = key.mac();
    mac.update(&b);
    b.extend_from_slice(&mac.finalize().into_bytes());
    b
}

fn channel_len(c: &ChannelPoints) -> usize {
    4 + 1 + c.tracks.len().min(MAX_TRACKS) * TRACK_LEN
}

fn put_name(b: &mut Vec<u8>, name: &str) {
    let n = &name.as_bytes()[..name.len().min(MAX_NAME)];
    b.push(n.len() as u8);
    b.extend_from_slice(n);
}

fn kind_code(k: TrackKind) -> u8 {
    match k {
        TrackKind::Video => 0,
        TrackKind::Audio => 1,
        TrackKind::Metadata => 2,
    }
}

/// Why a datagram on the beacon group was not taken.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// Not a beacon of this format (too short, wrong magic or version), or
    /// an authenticated beacon that does not parse.
    #[error("malformed beacon: {0}")]
    Malformed(&'static str),
    /// Its tag is not the site key's: forged, or sent under another key.
    #[error("beacon not authenticated by the site key (forged, or another site's key)")]
    Forged,
    /// Authenticated, from a name that is not a server of the site.
    #[error("beacon from {0:?}, which is not a server of the site")]
    UnknownServer(String),
    /// Its counter is not ahead of what its sender already said.
    #[error("beacon from {0:?} replayed (its counter is not ahead)")]
    Replayed(String),
    /// Sent too long ago, or ahead of this server's clock.
    #[error(
        "beacon from {sender:?} is {skew_ms} ms from this server's clock (more than {MAX_SKEW:?}): stale, or the clocks disagree"
    )]
    Stale { sender: String, skew_ms: i64 },
    /// Authenticated, and not what the site file says of its sender: a
    /// role of a server that is not in the site, or a channel or track its
    /// owner does not have (servers on different site files).
    #[error("beacon from {sender:?} does not match the site file: {what}")]
    Inconsistent { sender: String, what: String },
}

impl Rejection {
    /// The metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::Malformed(_) => "malformed",
            Rejection::Forged => "forged",
            Rejection::UnknownServer(_) => "unknown_server",
            Rejection::Replayed(_) => "replayed",
            Rejection::Stale { .. } => "stale",
            Rejection::Inconsistent { .. } => "inconsistent",
        }
    }

    /// Every label, for metrics that start at zero.
    pub const REASONS: [&'static str; 6] = [
        "malformed",
        "forged",
        "unknown_server",
        "replayed",
        "stale",
        "inconsistent",
    ];
}

/// What the site file says a server has: its channels and each one's
/// tracks besides video.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Layout {
    pub channels: HashMap<u32, Vec<TrackKind>>,
}

/// Verifies the datagrams heard on the beacon group: authenticated by the
/// site key, from a server of the site, fresh, not replayed, consistent
/// with the site file.
pub struct Verifier {
    key: SiteKey,
    site: HashMap<String, Layout>,
    seen: HashMap<String, Window>,
}

/// The counters a sender used lately.
#[derive(Default)]
struct Window {
    newest: u64,
    recent: VecDeque<u64>,
}

impl Window {
    fn fresh(&self, c: u64) -> bool {
        if c > self.newest {
            return true;
        }
        let floor = if self.recent.len() >= REMEMBERED {
            self.recent.iter().copied().min().unwrap_or(0)
        } else {
            0
        };
        self.newest - c <= REORDER_US && c > floor && !self.recent.contains(&c)
    }

    fn take(&mut self, c: u64) {
        if self.recent.len() >= REMEMBERED {
            self.recent.pop_front();
        }
        self.recent.push_back(c);
        self.newest = self.newest.max(c);
    }
}

impl Verifier {
    /// A verifier for a site of `servers` (name and layout).
    pub fn new(key: SiteKey, servers: impl IntoIterator<Item = (String, Layout)>) -> Verifier {
        Verifier {
            key,
            site: servers.into_iter().collect(),
            seen: HashMap::new(),
        }
    }

    /// Takes a datagram heard at `now_unix_ms` (this server's wall clock).
    pub fn verify(&mut self, datagram: &[u8], now_unix_ms: u64) -> Result<Beacon, Rejection> {
        if datagram.len() < HEADER_LEN + 1 + TAG_LEN {
            return Err(Rejection::Malformed("shorter than a beacon"));
        }
        if datagram[..4] != MAGIC {
            return Err(Rejection::Malformed("not a beacon"));
        }
        if datagram[4] != VERSION {
            return Err(Rejection::Malformed(
                "a beacon version this server does not read",
            ));
        }
        let (body, tag) = datagram.split_at(datagram.len() - TAG_LEN);
        let mut mac = self.key.mac();
        mac.update(body);
        // Constant time (the hmac crate's comparison).
        mac.verify_slice(tag).map_err(|_| Rejection::Forged)?;
        let beacon = parse(body).map_err(Rejection::Malformed)?;
        if !self.site.contains_key(&beacon.sender) {
            return Err(Rejection::UnknownServer(beacon.sender));
        }
        let skew_ms = now_unix_ms as i64 - beacon.sent_unix_ms() as i64;
        if skew_ms.unsigned_abs() > MAX_SKEW.as_millis() as u64 {
            return Err(Rejection::Stale {
                sender: beacon.sender,
                skew_ms,
            });
        }
        if self
            .seen
            .get(&beacon.sender)
            .is_some_and(|w| !w.fresh(beacon.counter))
        {
            return Err(Rejection::Replayed(beacon.sender));
        }
        self.consistent(&beacon)?;
        self.seen
            .entry(beacon.sender.clone())
            .or_default()
            .take(beacon.counter);
        Ok(beacon)
    }

    fn consistent(&self, b: &Beacon) -> Result<(), Rejection> {
        let bad = |what: String| Rejection::Inconsistent {
            sender: b.sender.clone(),
            what,
        };
        for (i, e) in b.emits.iter().enumerate() {
            if b.emits[..i].iter().any(|o| o.owner == e.owner) {
                return Err(bad(format!("the role of {:?} twice", e.owner)));
            }
            let Some(layout) = self.site.get(&e.owner) else {
                return Err(bad(format!(
                    "emits for {:?}, not a server of the site",
                    e.owner
                )));
            };
            for c in &e.channels {
                let Some(tracks) = layout.channels.get(&c.id) else {
                    return Err(bad(format!(
                        "channel {} is not one of {:?}'s",
                        c.id, e.owner
                    )));
                };
                for (k, t) in c.tracks.iter().enumerate() {
                    if t.kind != TrackKind::Video && !tracks.contains(&t.kind) {
                        return Err(bad(format!(
                            "channel {} of {:?} has no {} track",
                            c.id,
                            e.owner,
                            t.kind.as_str()
                        )));
                    }
                    if c.tracks[..k].iter().any(|o| o.kind == t.kind) {
                        return Err(bad(format!(
                            "channel {} has two {} tracks",
                            c.id,
                            t.kind.as_str()
                        )));
                    }
                }
            }
        }
        Ok(())
    }
}

/// Reads a beacon's body (after its tag was checked).
fn parse(body: &[u8]) -> Result<Beacon, &'static str> {
    let mut r = Reader { b: body, at: 5 };
    if r.u8()? != 0 {
        return Err("flags this server does not know");
    }
    let counter = r.u64()?;
    let sender = r.name()?;
    let owners = usize::from(r.u8()?);
    if owners > MAX_OWNERS {
        return Err("too many roles");
    }
    let mut emits = Vec::with_capacity(owners);
    for _ in 0..owners {
        let owner = r.name()?;
        let epoch = match r.u64()? as i64 {
            0 => None,
            e if e > 0 => Some(e),
            _ => return Err("a negative epoch"),
        };
        let n = usize::from(r.u16()?);
        // Each channel takes at least 5 bytes: a count beyond what is left
        // is a lie, found before anything is allocated for it.
        if n * 5 > r.left() {
            return Err("more channels than bytes");
        }
        let mut channels = Vec::with_capacity(n);
        for _ in 0..n {
            let id = r.u32()?;
            let t = usize::from(r.u8()?);
            if t > MAX_TRACKS {
                return Err("too many tracks in a channel");
            }
            let mut tracks = Vec::with_capacity(t);
            for _ in 0..t {
                let kind = match r.u8()? {
                    0 => TrackKind::Video,
                    1 => TrackKind::Audio,
                    2 => TrackKind::Metadata,
                    _ => return Err("unknown kind of track"),
                };
                let ssrc = r.u32()?;
                let next_seq = r.u16()?;
                let roc = r.u32()?;
                let point = StreamPoint {
                    ssrc,
                    next_seq,
                    rtp_timestamp: r.u32()?,
                    clock_rate: r.u32()?,
                    sent_unix_ms: r.u64()?,
                    packet_rate: r.u32()?,
                    frame_ticks: r.u32()?,
                };
                tracks.push(TrackPoint { kind, point, roc });
            }
            channels.push(ChannelPoints { id, tracks });
        }
        emits.push(Emits {
            owner,
            epoch,
            channels,
        });
    }
    if r.left() != 0 {
        return Err("bytes after the last role");
    }
    Ok(Beacon {
        sender,
        counter,
        emits,
    })
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], &'static str> {
        let s = self
            .b
            .get(self.at..self.at + n)
            .ok_or("ends in the middle of a field")?;
        self.at += n;
        Ok(s)
    }
    fn left(&self) -> usize {
        self.b.len() - self.at
    }
    fn u8(&mut self) -> Result<u8, &'static str> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, &'static str> {
        Ok(u16::from_be_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }
    fn u32(&mut self) -> Result<u32, &'static str> {
        Ok(u32::from_be_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64, &'static str> {
        Ok(u64::from_be_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn name(&mut self) -> Result<String, &'static str> {
        let n = usize::from(self.u8()?);
        if n == 0 || n > MAX_NAME {
            return Err("a name is empty or too long");
        }
        let s = std::str::from_utf8(self.take(n)?).map_err(|_| "a name is not UTF-8")?;
        crate::config::check_server_name(s)?;
        Ok(s.to_string())
    }
}

#[cfg(test)]
mod tests;
