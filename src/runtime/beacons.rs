//! The beacons' sockets: the sender the failover driver calls on its beat,
//! and the listener that verifies what the beacon group carries and hands
//! the driver verified beacons only ([`crate::failover::beacon`]).

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::channel::resume::{ChannelPoint, unix_ms};
use crate::emit::Fence;
use crate::failover::beacon::{
    Beacon, ChannelPoints, Emits, Layout, MAX_DATAGRAM, SiteKey, TrackPoint, Verifier,
};
use crate::media::TrackKind;
use crate::metrics::{FailoverMetrics, ReasonLabel};

/// How often a server that emits sends its beacon: five times a second.
/// A standby decides a takeover on the silence of beacons (at least a
/// second, [`crate::failover`]'s silence window), so five lost in a row
/// are needed before a live emitter looks silent; and the points they
/// carry are at most 200 ms old, well inside the resume margin (2 s of
/// packets, `channel::resume`).
pub const BEACON_EVERY: Duration = Duration::from_millis(200);
/// How often a server that emits nothing sends its beacon (a standby, a
/// recorder waiting for its role): what it says changes only with its
/// role, and its peers need it only to know it is there.
pub const IDLE_BEACON_EVERY: Duration = Duration::from_millis(500);
/// Warnings about refused beacons, at most this often.
const WARN_EVERY: Duration = Duration::from_secs(10);
/// Verified beacons waiting for the driver; beyond, the newest are
/// dropped (a peer's next beacon says the same a beat later). Forty
/// servers' beacons of a second.
pub const QUEUE: usize = 256;

/// A verified beacon for the driver.
pub type Heard = Beacon;

/// What the listener saw, for the status: counts by reason and the last
/// refusal.
#[derive(Debug, Default)]
pub struct BeaconLog {
    inner: Mutex<BeaconStatus>,
}

/// The beacons as `/status?detail` shows them.
#[derive(Clone, Debug, Default, Serialize)]
pub struct BeaconStatus {
    /// The listener is on the beacon group (false: why not in `problem`).
    pub listening: bool,
    /// Why the server hears no beacon, if it knows.
    pub problem: Option<String>,
    pub verified: u64,
    /// Refused, by reason.
    pub rejected: HashMap<&'static str, u64>,
    /// The last refusal: what, and how long ago (seconds).
    pub last_rejected: Option<String>,
    #[serde(skip)]
    last_rejected_at: Option<Instant>,
    pub last_rejected_seconds_ago: Option<u64>,
}

impl BeaconLog {
    /// Says why this server hears no beacon.
    pub fn problem(&self, why: String) {
        self.update(|s| s.problem = Some(why));
    }

    fn update(&self, f: impl FnOnce(&mut BeaconStatus)) {
        f(&mut self.inner.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// A copy for the status, with the ages as of `now`.
    pub fn status(&self, now: Instant) -> BeaconStatus {
        let mut s = self.inner.lock().unwrap_or_else(|e| e.into_inner()).clone();
        s.last_rejected_seconds_ago = s
            .last_rejected_at
            .map(|t| now.saturating_duration_since(t).as_secs());
        s
    }
}

/// A role this server emits: the owner, its epoch, its channels' points.
pub type Emitted = (String, Option<i64>, Vec<(u32, ChannelPoint)>);

/// Sends this server's beacons: from its own interface address, through
/// the fence its media passes (a server that may not emit says it emits
/// nothing).
pub struct BeaconSender {
    me: String,
    sock: tokio::net::UdpSocket,
    key: SiteKey,
    counter: u64,
    /// Per stream, the last next sequence number seen and its rollover
    /// count (a stream wraps in minutes; beacons come every 200 ms).
    roc: HashMap<(u32, TrackKind), (u16, u32)>,
    next: Option<Instant>,
    fence: Fence,
    metrics: FailoverMetrics,
    warned: Option<Instant>,
}

impl BeaconSender {
    pub fn open(
        me: &str,
        group: SocketAddrV4,
        interface: Ipv4Addr,
        key: SiteKey,
        fence: Fence,
        metrics: FailoverMetrics,
    ) -> std::io::Result<BeaconSender> {
        // Loop on: servers of one host (a lab, the demo) hear each other.
        let sock = crate::emit::socket::open_multicast(group, interface, 16, true)?;
        Ok(BeaconSender {
            me: me.to_string(),
            sock,
            key,
            counter: 0,
            roc: HashMap::new(),
            next: None,
            fence,
            metrics,
            warned: None,
        })
    }

    /// When the next beacon is due.
    pub fn due(&self) -> Option<Instant> {
        self.next
    }

    /// Sends a beacon at `now` if one is due: the roles of `emitted` (owner,
    /// epoch, its channels' points).
    pub fn beat(&mut self, now: Instant, emitted: Vec<Emitted>) {
        if self.next.is_some_and(|t| now < t) {
            return;
        }
        // The fence the media passes: a server that may not emit says so.
        let emitted = if self.fence.allows() {
            emitted
        } else {
            Vec::new()
        };
        self.next = Some(
            now + if emitted.is_empty() {
                IDLE_BEACON_EVERY
            } else {
                BEACON_EVERY
            },
        );
        let emits = emitted
            .into_iter()
            .map(|(owner, epoch, channels)| Emits {
                owner,
                epoch,
                channels: channels
                    .into_iter()
                    .map(|(id, p)| ChannelPoints {
                        id,
                        tracks: std::iter::once((TrackKind::Video, p.video))
                            .chain(p.tracks)
                            .map(|(kind, point)| TrackPoint {
                                kind,
                                point,
                                roc: self.rollover(id, kind, point.next_seq),
                            })
                            .collect(),
                    })
                    .collect(),
            })
            .collect();
        let beacon = Beacon {
            sender: self.me.clone(),
            counter: 0,
            emits,
        };
        for mut part in beacon.split(MAX_DATAGRAM) {
            // Strictly increasing, and the wall clock's microseconds.
            let us = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_micros() as u64);
            self.counter = us.max(self.counter + 1);
            part.counter = self.counter;
            match self.sock.try_send(&part.seal(&self.key)) {
                Ok(_) => {
                    self.metrics.beacons_sent.inc();
                }
                Err(e) => {
                    if self
                        .warned
                        .is_none_or(|t| now.duration_since(t) >= WARN_EVERY)
                    {
                        self.warned = Some(now);
                        tracing::warn!(error = %e, "cannot send this server's beacon: its peers may take it for gone");
                    }
                }
            }
        }
    }

    fn rollover(&mut self, id: u32, kind: TrackKind, seq: u16) -> u32 {
        let e = self.roc.entry((id, kind)).or_insert((seq, 0));
        // Wrapped since the last beacon: the number went down by more than
        // half the space (a stream never goes back).
        if seq < e.0 && e.0 - seq > 0x8000 {
            e.1 = e.1.wrapping_add(1);
        }
        e.0 = seq;
        e.1
    }
}

/// What the listener needs: the group, the interface to join on, the
/// servers that may send there (a source-specific group), the site.
pub struct Listen {
    pub me: String,
    pub group: SocketAddrV4,
    pub interface: Ipv4Addr,
    pub ssm_sources: Vec<Ipv4Addr>,
    pub key: SiteKey,
    pub site: Vec<(String, Layout)>,
}

/// Listens on the beacon group until cancelled: verified beacons of the
/// other servers go to `tx`; refusals are counted and said.
pub async fn listen(
    l: Listen,
    tx: mpsc::Sender<Heard>,
    log: std::sync::Arc<BeaconLog>,
    metrics: FailoverMetrics,
    cancel: CancellationToken,
) {
    let sock = match join(l.group, l.interface, &l.ssm_sources) {
        Ok(s) => s,
        Err(e) => {
            let why = format!(
                "cannot join the beacon group {} on {}: {e}",
                l.group, l.interface
            );
            tracing::error!("{why}: this server hears no beacon, so it takes no server over");
            log.update(|s| s.problem = Some(why));
            return;
        }
    };
    log.update(|s| s.listening = true);
    let mut verifier = Verifier::new(l.key, l.site);
    let mut buf = vec![0u8; 2048];
    let mut warned: Option<Instant> = None;
    loop {
        let n = tokio::select! {
            () = cancel.cancelled() => return,
            r = sock.recv(&mut buf) => match r {
                Ok(n) => n,
                Err(_) => continue,
            },
        };
        let now = Instant::now();
        match verifier.verify(&buf[..n], unix_ms(SystemTime::now())) {
            Ok(b) if b.sender == l.me => {}
            Ok(b) => {
                metrics.beacons_verified.inc();
                log.update(|s| s.verified += 1);
                if tx.try_send(b).is_err() {
                    tracing::debug!("beacon queue full: a beacon dropped");
                }
            }
            Err(r) => {
                let reason = r.reason();
                metrics
                    .beacons_rejected
                    .get_or_create(&ReasonLabel { reason })
                    .inc();
                let said = r.to_string();
                log.update(|s| {
                    *s.rejected.entry(reason).or_default() += 1;
                    s.last_rejected = Some(said.clone());
                    s.last_rejected_at = Some(now);
                });
                if warned.is_none_or(|t| now.duration_since(t) >= WARN_EVERY) {
                    warned = Some(now);
                    tracing::warn!(
                        reason,
                        "{said}; refused (said at most every {WARN_EVERY:?})"
                    );
                }
            }
        }
    }
}

/// A socket on the beacon group: joined by each of `sources` on a
/// source-specific group, else by the group alone.
fn join(
    group: SocketAddrV4,
    iface: Ipv4Addr,
    sources: &[Ipv4Addr],
) -> std::io::Result<tokio::net::UdpSocket> {
    let s = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    s.set_reuse_address(true)?;
    s.bind(&group.into())?;
    if sources.is_empty() {
        s.join_multicast_v4(group.ip(), &iface)?;
    }
    for src in sources {
        s.join_ssm_v4(src, group.ip(), &iface)?;
    }
    s.set_nonblocking(true)?;
    tokio::net::UdpSocket::from_std(s.into())
}

/// Whether the interface that holds `addr` is up with its carrier
/// (`IFF_UP` and `IFF_RUNNING`: a cable out, a switch port down or the
/// interface set down all clear it); false when no interface holds it.
pub fn link_up(addr: Ipv4Addr) -> bool {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list` with a list it allocates, which is
    // walked read-only below and freed once with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return false;
    }
    let mut up = false;
    let mut at = list;
    while !at.is_null() {
        // SAFETY: `at` is a node of the list getifaddrs returned, alive
        // until freeifaddrs; `ifa_addr` is null or points to a sockaddr
        // whose family says its type.
        let ifa = unsafe { &*at };
        at = ifa.ifa_next;
        if ifa.ifa_addr.is_null() {
            continue;
        }
        // SAFETY: as above.
        let family = unsafe { (*ifa.ifa_addr).sa_family };
        if i32::from(family) != libc::AF_INET {
            continue;
        }
        // SAFETY: an AF_INET address is a sockaddr_in.
        let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
        if Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)) == addr {
            let flags = ifa.ifa_flags;
            up = flags & libc::IFF_UP as u32 != 0 && flags & libc::IFF_RUNNING as u32 != 0;
            break;
        }
    }
    // SAFETY: the list getifaddrs returned, freed once.
    unsafe { libc::freeifaddrs(list) };
    up
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_up_and_an_address_of_no_interface_is_not() {
        assert!(link_up(Ipv4Addr::LOCALHOST));
        assert!(!link_up(Ipv4Addr::new(198, 51, 100, 254)));
    }
}
