//! The failover controller: which server emits whose channels.
//!
//! A controller is a state machine without I/O: the runtime feeds it
//! observations ([`Input`]: a peer's health answer or its silence, the
//! verified beacons in which the servers say what they emit, this server's disks,
//! requests from peers and operators, copy results) with the time, and
//! carries out what it asks ([`Action`]) and the channels it wants run
//! ([`Controller::wanted`]). The runtime is the only place with sockets
//! and clocks, so every rule here is tested in virtual time.
//!
//! Controllers: `none` (every server emits its own channels, nothing else),
//! `embedded` (servers watch each other over the control API and by their
//! beacons; [`embedded`]) and `etcd` (leases and transactions on
//! an etcd cluster, self-fencing emitters; [`etcd`]). The site chooses
//! with `[site.failover] controller`.

pub mod beacon;
pub mod embedded;
pub mod etcd;
#[cfg(feature = "etcd")]
pub mod etcd_store;
pub mod sim;
#[cfg(test)]
mod tests;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::config::Site;

/// Site-wide failover settings (`[site.failover]`).
#[derive(Clone, Debug)]
pub struct Settings {
    pub controller: ControllerKind,
    /// How often every server asks each peer's `/health` (as Milestone
    /// polls), and the unit of the standbys' stagger.
    pub poll_interval: Duration,
    /// How long a restored server stays healthy before it takes its role
    /// back (VRRP's preempt delay): a flapping server must not flap the site.
    pub failback_delay: Duration,
    /// etcd: each server's lease time to live. A role holder stops
    /// emitting `lease_ttl / 2` after its last confirmed keep-alive was
    /// sent; a standby takes a role only once its holder's lease expired.
    pub lease_ttl: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ControllerKind {
    /// A single server, or servers that never cover each other.
    None,
    /// Servers watch each other (the default).
    Embedded,
    /// Leases and transactions on an etcd cluster.
    Etcd,
}

/// What one server of the site is to the controller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    /// "Use as a failover VMS server".
    pub standby: bool,
    /// "VMS Server failover is enabled for this VMS server".
    pub protected: bool,
    /// It has a multicast interface: it sends beacons, so its peers hear
    /// whether it emits.
    pub multicast: bool,
    pub inaccessible_period: Duration,
    pub automatic_failback: bool,
    pub automatic_material_copying: bool,
    pub delay_failover: bool,
    /// Its material disks by name (the seed's "same drive letters"): a
    /// failover server covers only a server with the same layout.
    pub disk_layout: Vec<String>,
}

impl Member {
    /// The members of `site`, in site order.
    pub fn of_site(site: &Site) -> Vec<Member> {
        site.servers()
            .iter()
            .map(|s| Member {
                name: s.name.clone(),
                standby: s.failover.use_as_failover_server,
                protected: s.failover.failover_enabled,
                multicast: s.multicast.is_some(),
                inaccessible_period: s.failover.inaccessible_period,
                automatic_failback: s.failover.automatic_failback,
                automatic_material_copying: s.failover.automatic_material_copying,
                delay_failover: s.failover.delay_failover,
                disk_layout: s.storage.layout(),
            })
            .collect()
    }
}

/// What a server says of itself in `/health`, for its peers' controllers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// All its material disks are broken (the seed's other trigger).
    pub disks_broken: bool,
    pub role: ReportedRole,
    /// It has heard a verified beacon of another server since it started
    /// (its listener is on the beacon group and it has the site key): a
    /// failover server that has not takes nothing over, and its peers do
    /// not count it as free.
    #[serde(default = "yes")]
    pub hears_beacons: bool,
}

fn yes() -> bool {
    true
}

/// What a failover server that hears no valid beacon says of itself.
pub const DEAF: &str = "standby, hears no valid beacon: takes nothing over (is the site key the others' and the beacon group reachable?)";

/// No server of `members` but `me` sends beacons (has a multicast
/// interface).
fn nobody_beacons(members: &[Member], me: usize) -> bool {
    members
        .iter()
        .enumerate()
        .all(|(i, m)| i == me || !m.multicast)
}

/// Whether a verified beacon of `sender` is another server's of `members`.
fn from_peer(members: &[Member], me: usize, sender: &str) -> bool {
    members
        .iter()
        .position(|m| m.name == sender)
        .is_some_and(|s| s != me)
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum ReportedRole {
    /// A server running its own channels (`emitting`: on its groups now).
    Recorder { emitting: bool },
    /// A failover server with nothing to cover.
    Standby,
    /// A failover server taking `owner`'s role: asked it to release, or
    /// waiting for its groups to fall silent.
    Claiming { owner: String },
    /// A failover server emitting `owner`'s channels since `since_unix_ms`
    /// (wall clock, for the material copy back).
    Covering { owner: String, since_unix_ms: u64 },
}

/// An observation, with the time it was made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// The answer of `server`'s `/health` to one poll (`None`: no answer
    /// within the poll's timeout).
    Health {
        server: String,
        report: Option<Report>,
    },
    /// A verified beacon ([`beacon`]): `sender` emits the roles of the
    /// owners in `emits` now (with their epochs), and no other. What
    /// reaches a controller was authenticated with the site key, fresh and
    /// not replayed; a packet's source address decides nothing.
    Beacon {
        sender: String,
        emits: Vec<(String, Option<i64>)>,
    },
    /// This server's material disks: all broken, or not.
    Disks { all_broken: bool },
    /// `by` asks this server to stop emitting its own channels (it found
    /// all their disks broken and will cover them).
    ReleaseAsked { by: String },
    /// `owner` asks this server, which covers it, to hand its role back:
    /// the cover that began at `since_unix_ms` (whose material it copied).
    HandBackAsked { owner: String, since_unix_ms: u64 },
    /// `by` stopped emitting `owner`'s channels, as asked (the runtime
    /// has its streams' last points).
    Released { owner: String, by: String },
    /// An operator's `mcrelay failback` for this server.
    FailbackCommanded,
    /// The copy of this server's missing material from `from` finished.
    CopyDone { from: String, ok: bool },
    /// The outcome of an etcd operation ([`Action::Etcd`]).
    Etcd(etcd::Outcome),
    /// The link of this server's multicast interface: carrier and
    /// administrative state (`up: false`: cable out, port down, interface
    /// down).
    Link { up: bool },
}

/// What the controller asks the runtime to do besides running the
/// channels of [`Controller::wanted`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Ask `to` (a recorder whose disks broke) to release its groups.
    AskRelease { to: String },
    /// Ask `to` (the failover server covering this one) to hand back the
    /// cover that began at `since_unix_ms`.
    AskHandBack { to: String, since_unix_ms: u64 },
    /// Tell `to` that this server stopped emitting `owner`'s channels
    /// (with their streams' points, added by the runtime).
    ConfirmRelease { to: String, owner: String },
    /// Copy this server's missing material from `from`, recorded since
    /// `since_unix_ms`.
    StartCopy { from: String, since_unix_ms: u64 },
    /// An operation on the etcd cluster; its outcome comes back as
    /// [`Input::Etcd`].
    Etcd(etcd::Op),
}

/// How this server runs one owner's channels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Run {
    /// Cameras ingested and recorded, nothing sent on the groups (a
    /// restored server before its role comes back).
    Warm,
    /// Cameras ingested, recorded, and emitted on the owner's groups.
    Emit,
}

/// The site as this server's controller sees it, for `/status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SiteView {
    /// "VMS servers": recorders that are fine, or inaccessible but not
    /// (yet) broken.
    pub recorders: Vec<ServerView>,
    /// "Failover servers": standby, or covering.
    pub failover: Vec<ServerView>,
    /// "Broken VMS servers": why, and who covers them or why nobody does.
    pub broken: Vec<ServerView>,
}

impl SiteView {
    /// Every server's state as a short code, for metrics: ok,
    /// inaccessible, still_streaming, starting, restored, disks_broken
    /// (not yet broken), standby, taking_over, covering, broken.
    pub fn states(&self) -> Vec<(String, &'static str)> {
        let recorder = |s: &ServerView| match s.state.as_str() {
            "ok" => "ok",
            st if st.contains("still streaming") => "still_streaming",
            st if st.starts_with("inaccessible") => "inaccessible",
            st if st.starts_with("starting") => "starting",
            st if st.starts_with("restored") => "restored",
            st if st.contains("disks broken") => "disks_broken",
            _ => "other",
        };
        let standby = |s: &ServerView| match s.state.as_str() {
            st if st.starts_with("covering") => "covering",
            st if st.starts_with("taking over") => "taking_over",
            st if st.starts_with("inaccessible") => "inaccessible",
            _ => "standby",
        };
        let named = |s: &ServerView, code| (s.name.clone(), code);
        self.recorders
            .iter()
            .map(|s| named(s, recorder(s)))
            .chain(self.failover.iter().map(|s| named(s, standby(s))))
            .chain(self.broken.iter().map(|s| named(s, "broken")))
            .collect()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ServerView {
    pub name: String,
    /// ok, inaccessible, inaccessible, still streaming, standby,
    /// covering S, broken: ...
    pub state: String,
    /// Seconds since the state began, as this server saw it.
    pub for_seconds: Option<u64>,
    /// Covered by (for a broken server), or why not.
    pub cover: Option<String>,
}

/// A failover controller (see the module documentation).
pub trait Controller: Send {
    fn handle(&mut self, now: Instant, input: Input);
    /// The next action to carry out, if any.
    fn poll_action(&mut self) -> Option<Action>;
    /// When the controller wants to be asked again without new input.
    fn poll_timeout(&self) -> Option<Instant>;
    /// Let time pass (the runtime calls this at the timeout and after
    /// each input).
    fn tick(&mut self, now: Instant);
    /// Whose channels this server runs, and how.
    fn wanted(&self) -> Vec<(String, Run)>;
    /// What this server says of itself in `/health`.
    fn report(&self, now: Instant) -> Report;
    fn view(&self, now: Instant) -> SiteView;
    /// The instant after which this server must not send on any group
    /// (its lease is no longer confirmed); `None`: no fence. The runtime
    /// checks it before every send, whatever [`Controller::wanted`] says.
    fn fence(&self) -> Option<Instant> {
        None
    }
    /// The epoch of the role this server emits under (etcd: the role
    /// key's create revision); `None` without one.
    fn epoch(&self) -> Option<i64> {
        None
    }
    /// Whether the server may emit at `now`, by [`Controller::fence`].
    fn may_emit(&self, now: Instant) -> bool {
        self.fence().is_none_or(|d| now < d)
    }
}

/// `none`: every server emits its own channels, always.
pub struct NoController {
    me: String,
    disks_broken: bool,
}

impl Controller for NoController {
    fn handle(&mut self, _now: Instant, input: Input) {
        if let Input::Disks { all_broken } = input {
            self.disks_broken = all_broken;
        }
    }
    fn poll_action(&mut self) -> Option<Action> {
        None
    }
    fn poll_timeout(&self) -> Option<Instant> {
        None
    }
    fn tick(&mut self, _now: Instant) {}
    fn wanted(&self) -> Vec<(String, Run)> {
        vec![(self.me.clone(), Run::Emit)]
    }
    fn report(&self, _now: Instant) -> Report {
        Report {
            disks_broken: self.disks_broken,
            role: ReportedRole::Recorder { emitting: true },
            hears_beacons: true,
        }
    }
    fn view(&self, _now: Instant) -> SiteView {
        SiteView::default()
    }
}

/// Whether server `me` of `members` fences itself under `settings` (its
/// emitter then starts closed and sends only while
/// [`Controller::fence`] allows): on etcd a server that holds a role by
/// lease; embedded, a protected recorder of a site with a failover
/// server.
pub fn fences(settings: &Settings, members: &[Member], me: &str) -> bool {
    let Some(m) = members.iter().find(|m| m.name == me) else {
        return false;
    };
    match settings.controller {
        ControllerKind::None => false,
        ControllerKind::Etcd => m.protected || m.standby,
        ControllerKind::Embedded => embedded::fences(members, m),
    }
}

/// The controller the site's settings choose, for server `me` of `members`,
/// started at `now`, when the wall clock read `wall_unix_ms`; an error if
/// `me` is not a member.
pub fn controller(
    settings: &Settings,
    members: Vec<Member>,
    me: &str,
    now: Instant,
    wall_unix_ms: u64,
) -> Result<Box<dyn Controller>, String> {
    Ok(match settings.controller {
        ControllerKind::None => Box::new(NoController {
            me: me.to_string(),
            disks_broken: false,
        }),
        ControllerKind::Embedded => Box::new(embedded::Embedded::new(
            settings.clone(),
            members,
            me,
            now,
            wall_unix_ms,
        )?),
        ControllerKind::Etcd => Box::new(etcd::EtcdController::new(
            settings.clone(),
            members,
            me,
            now,
            wall_unix_ms,
        )?),
    })
}

/// The roles a verified beacon of `sender` says are emitted, as (owner,
/// emitter) indices of `members`; none from this server (`me`) itself.
fn beacon_roles(
    members: &[Member],
    me: usize,
    sender: &str,
    emits: &[(String, Option<i64>)],
) -> Vec<(usize, usize)> {
    let index = |n: &str| members.iter().position(|m| m.name == n);
    let Some(s) = index(sender).filter(|&s| s != me) else {
        return Vec::new();
    };
    emits
        .iter()
        .filter_map(|(owner, _)| Some((index(owner)?, s)))
        .collect()
}

/// Owners in a set of wanted channels that are emitted.
pub fn emitted(wanted: &[(String, Run)]) -> BTreeSet<String> {
    wanted
        .iter()
        .filter(|(_, r)| *r == Run::Emit)
        .map(|(o, _)| o.clone())
        .collect()
}
