//! The embedded controller: servers watch each other over the control API
//! and by their beacons, with no service besides themselves.
//!
//! Rules (DESIGN.md, "Failover controller"):
//! - A protected server is **broken** when it has not answered its
//!   `/health` for longer than its `inaccessible_period`, or when it
//!   answers that all its material disks are broken.
//! - Two planes: a standby never takes over a server whose own verified
//!   beacons still say it emits ("inaccessible, still streaming"): a hung
//!   API or a cut control link is not a dead recorder.
//! - The broken servers that nobody covers go, in site order, to the free
//!   failover servers with the same disk layout, in site order; each waits
//!   one `poll_interval` per rank among the free ones before it takes its
//!   server, and backs off when one before it in site order claims it.
//! - An owner alive with broken disks is asked to release its groups; the
//!   standby starts when it confirms, or when no beacon says it emits.
//! - An owner yields at once to a server whose beacon says it emits its role,
//!   or reported covering it; at start it listens and asks before it emits.
//! - Failback is break-before-make after `failback_delay` of health: the
//!   owner warms its cameras, copies first when `delay_failover` says so,
//!   asks for its role back, and emits once the standby confirms it
//!   stopped (or its beacons stopped saying so because the standby is gone).
//!
//! What it cannot promise: under a partition in which a standby cannot
//! reach an owner that still emits to some receivers, neither plane tells
//! the standby the truth. Sites that need a guarantee use the etcd
//! controller.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::{
    Action, Controller, Input, Member, Report, ReportedRole, Run, ServerView, Settings, SiteView,
};

/// The embedded controller of one server.
pub struct Embedded {
    settings: Settings,
    members: Vec<Member>,
    me: usize,
    started: Instant,
    peers: Vec<Peer>,
    disks_broken: bool,
    /// Since when this server's disks have been usable.
    healthy_since: Option<Instant>,
    failback_commanded: bool,
    role: Role,
    /// Since when the role is what it is (status).
    role_since: Instant,
    actions: VecDeque<Action>,
    /// Why broken servers are not covered, by member (status).
    why_not: Vec<Option<String>>,
    /// When a retry of a request or a copy is due.
    retry_at: Option<Instant>,
    /// The time of the last input or tick.
    last_now: Instant,
    /// Since when another server has had this server's role, as far as
    /// this server knows.
    covered_since: Option<Instant>,
    /// The wall clock at `started` (Unix ms): covers are named by when
    /// they began on it.
    wall_at_start: u64,
    /// A verified beacon of another server was heard since the start.
    heard_beacon: bool,
    /// When a verified beacon of another server was last heard.
    contact: Option<Instant>,
    /// Since when it has heard the site without a break (of more than
    /// [`HEARING`]).
    hearing_since: Option<Instant>,
    /// This server's link is up (carrier and interface).
    link_up: bool,
    /// Sends are allowed until then (a protected recorder's own fence).
    deadline: Option<Instant>,
    /// Since when the fence, closed, could open again: the site heard (or
    /// the link up, in a site of two) without a break.
    rejoin_since: Option<Instant>,
}

/// A server that hears the site has heard a beacon within this: every
/// server sends one at least every 500 ms (an idle one), so a longer
/// silence is a break.
const HEARING: Duration = Duration::from_millis(600);

/// What a failover server waits past a recorder's fence: a beacon
/// interval (the recorder's last beacon heard may precede its last
/// contact by one) and the drain of its last sends.
const FENCE_MARGIN: Duration = Duration::from_millis(500);

/// Whether `m` of `members` fences itself: a protected recorder of a site
/// with a failover server (one may take its groups) that hears the site's
/// beacons (it has a multicast interface; one without has no groups).
pub fn fences(members: &[Member], m: &Member) -> bool {
    m.protected && !m.standby && m.multicast && members.iter().any(|s| s.standby)
}

#[derive(Debug, Default, Clone)]
struct Peer {
    /// When it last answered a poll, and what.
    last_answer: Option<Instant>,
    report: Option<Report>,
    /// The last poll got no answer.
    silent: bool,
    /// The first poll without an answer since the last answer: the server
    /// is inaccessible since then (it was there at its last answer, and
    /// nobody knows better until a poll fails).
    silent_since: Option<Instant>,
    /// When its own beacon last said it emits its role.
    heard_own: Option<Instant>,
    /// When another server's beacon last said it emits this one's role, and
    /// which.
    heard_other: Option<(Instant, usize)>,
    /// When this server first found it broken.
    broken_since: Option<Instant>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Role {
    // A failover server's roles.
    Standby,
    /// Taking `owner`'s role: asked it to release, or waiting for silence.
    Claiming {
        owner: usize,
    },
    Covering {
        owner: usize,
        since: Instant,
    },
    // A recorder's roles.
    /// Listening on its groups and asking the failover servers before it
    /// emits.
    Starting {
        until: Instant,
    },
    Emitting,
    /// Another server has the role (`by`, when known).
    Covered {
        by: Option<usize>,
    },
    /// Restored, copying the material recorded while covered from `from`
    /// before the role comes back.
    Copying {
        from: usize,
        since_unix_ms: u64,
    },
    /// Restored, asked `from` to hand the role back.
    Reclaiming {
        from: usize,
        since_unix_ms: u64,
        copy_after: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Health {
    Ok,
    /// No answer since this instant.
    Inaccessible(Instant),
    DisksBroken,
}

impl Embedded {
    pub fn new(
        settings: Settings,
        members: Vec<Member>,
        me: &str,
        now: Instant,
        wall_unix_ms: u64,
    ) -> Result<Embedded, String> {
        let me = members
            .iter()
            .position(|m| m.name == me)
            .ok_or_else(|| format!("no server named {me:?} in the site"))?;
        let role = if members[me].standby {
            Role::Standby
        } else if members[me].protected && members.iter().any(|m| m.standby) {
            Role::Starting {
                until: now + settings.poll_interval * 3 + silence(&settings),
            }
        } else {
            Role::Emitting
        };
        let n = members.len();
        Ok(Embedded {
            settings,
            members,
            me,
            started: now,
            peers: vec![Peer::default(); n],
            disks_broken: false,
            healthy_since: Some(now),
            failback_commanded: false,
            role,
            role_since: now,
            actions: VecDeque::new(),
            why_not: vec![None; n],
            retry_at: None,
            last_now: now,
            covered_since: None,
            wall_at_start: wall_unix_ms,
            heard_beacon: false,
            contact: None,
            hearing_since: None,
            link_up: true,
            deadline: None,
            rejoin_since: None,
        })
    }

    /// The wall clock at `t`, by this process's reading at its start.
    fn wall(&self, t: Instant) -> u64 {
        let d = t.saturating_duration_since(self.started).as_millis() as u64;
        self.wall_at_start.saturating_add(d)
    }

    fn index(&self, name: &str) -> Option<usize> {
        self.members.iter().position(|m| m.name == name)
    }

    fn set_role(&mut self, now: Instant, role: Role) {
        if role != self.role {
            let restoring = |r: &Role| {
                matches!(
                    r,
                    Role::Covered { .. } | Role::Copying { .. } | Role::Reclaiming { .. }
                )
            };
            // Restored from the moment it learns that another server has
            // its role: the failback delay runs from then.
            if restoring(&role) && !restoring(&self.role) {
                self.covered_since = Some(now);
            }
            self.role = role;
            self.role_since = now;
            self.retry_at = None;
        }
    }

    /// A report is fresh while its server answered within a few polls.
    fn fresh(&self, i: usize, now: Instant) -> Option<&Report> {
        let p = &self.peers[i];
        let at = p.last_answer?;
        (!p.silent || now.duration_since(at) <= self.settings.poll_interval * 4)
            .then_some(p.report.as_ref())
            .flatten()
    }

    fn health(&self, i: usize) -> Health {
        let p = &self.peers[i];
        if p.silent || p.last_answer.is_none() {
            Health::Inaccessible(p.silent_since.unwrap_or(self.started))
        } else if p.report.as_ref().is_some_and(|r| r.disks_broken) {
            Health::DisksBroken
        } else {
            Health::Ok
        }
    }

    fn broken(&self, i: usize, now: Instant) -> bool {
        let m = &self.members[i];
        if !m.protected || m.standby || i == self.me {
            return false;
        }
        match self.health(i) {
            Health::Ok => false,
            Health::DisksBroken => true,
            Health::Inaccessible(since) => now.duration_since(since) > m.inaccessible_period,
        }
    }

    /// Its own beacons said it emits its role within the silence window,
    /// or this server has not heard the site for that long (a silence it
    /// was not there to hear is no silence: it just started hearing after
    /// a start, a cut of its own, a pause).
    fn streaming(&self, i: usize, now: Instant) -> bool {
        let since = match (self.peers[i].heard_own, self.hearing_since) {
            (Some(h), Some(s)) => Some(h.max(s)),
            (h, s) => h.or(s),
        };
        self.members[i].multicast
            && since.is_some_and(|t| now.duration_since(t) < self.silence_of(i))
    }

    /// How long `i`'s beacons must be silent before its groups are taken:
    /// the silence window, and for a recorder that fences itself longer
    /// than its fence ([`Self::fence_after`] of its period, from its last
    /// contact with the site, which is no earlier than its last beacon
    /// heard here less a beacon interval) with room for its last sends to
    /// drain. A recorder whose API was already out of reach and whose
    /// link is then cut has stopped by then.
    fn silence_of(&self, i: usize) -> Duration {
        let s = silence(&self.settings);
        if fences(&self.members, &self.members[i]) {
            s.max(self.members[i].inaccessible_period / 2 + FENCE_MARGIN)
        } else {
            s
        }
    }

    /// No beacon said `i`'s role is emitted within the silence window: not the
    /// owner, not another failover server.
    fn silent(&self, i: usize, now: Instant) -> bool {
        !self.streaming(i, now) && self.foreign_on(i, now).is_none()
    }

    /// Another server's beacon said it emits `i`'s role within the silence window.
    fn foreign_on(&self, i: usize, now: Instant) -> Option<usize> {
        self.peers[i]
            .heard_other
            .filter(|(t, _)| now.duration_since(*t) < silence(&self.settings))
            .map(|(_, s)| s)
    }

    /// The failover server that covers or claims `owner`, by this
    /// server's view (itself included); the first in site order.
    fn coverer(&self, owner: usize, now: Instant) -> Option<usize> {
        match self.role {
            Role::Claiming { owner: o } | Role::Covering { owner: o, .. } if o == owner => {
                return Some(self.me);
            }
            _ => {}
        }
        let name = &self.members[owner].name;
        (0..self.members.len()).find(|&s| {
            s != self.me
                && self.members[s].standby
                && self.fresh(s, now).is_some_and(|r| match &r.role {
                    ReportedRole::Claiming { owner } => owner == name,
                    ReportedRole::Covering { owner, .. } => owner == name,
                    _ => false,
                })
        })
    }

    /// Free failover servers, in site order: this one when in standby,
    /// others whose fresh report says standby; each only if it hears
    /// valid beacons (fail closed: a standby without the site key, or off
    /// the beacon group, cannot tell who still emits).
    fn free_standbys(&self, now: Instant) -> Vec<usize> {
        (0..self.members.len())
            .filter(|&s| {
                self.members[s].standby
                    && if s == self.me {
                        self.role == Role::Standby && self.hears_beacons()
                    } else {
                        self.fresh(s, now)
                            .is_some_and(|r| r.role == ReportedRole::Standby && r.hears_beacons)
                    }
            })
            .collect()
    }

    /// The broken server this standby is to take, and since when it may:
    /// the uncovered broken servers go, in site order, to the free failover
    /// servers with the same disk layout, in site order. Records why the
    /// others are not covered.
    fn assignment(&mut self, now: Instant) -> Option<(usize, Instant)> {
        let free = self.free_standbys(now);
        let mut taken = vec![false; free.len()];
        let mut mine = None;
        for owner in 0..self.members.len() {
            self.why_not[owner] = None;
            if !self.broken(owner, now) {
                continue;
            }
            if self.coverer(owner, now).is_some() {
                continue;
            }
            let layout = &self.members[owner].disk_layout;
            let same: Vec<usize> = free
                .iter()
                .copied()
                .filter(|&s| &self.members[s].disk_layout == layout)
                .collect();
            let pick = (0..free.len())
                .find(|&k| !taken[k] && &self.members[free[k]].disk_layout == layout);
            match pick {
                Some(k) => {
                    taken[k] = true;
                    if free[k] == self.me {
                        let rank = same.iter().position(|&s| s == self.me).unwrap_or(0);
                        let since = self.peers[owner].broken_since.unwrap_or(now);
                        mine = Some((owner, since + self.settings.poll_interval * rank as u32));
                    }
                }
                None => {
                    let mismatch: Vec<&str> = (0..self.members.len())
                        .filter(|&s| {
                            self.members[s].standby && &self.members[s].disk_layout != layout
                        })
                        .map(|s| self.members[s].name.as_str())
                        .collect();
                    self.why_not[owner] = Some(if same.is_empty() && !mismatch.is_empty() {
                        format!(
                            "no failover server available with its disk layout [{}] ({} differ)",
                            layout.join(", "),
                            mismatch.join(", ")
                        )
                    } else {
                        "no failover server available".to_string()
                    });
                }
            }
        }
        mine
    }

    /// A failover server before `s` in site order covers or claims `owner`.
    fn earlier_claim(&self, owner: usize, now: Instant) -> bool {
        let name = &self.members[owner].name;
        (0..self.me).any(|s| {
            self.members[s].standby
                && self.fresh(s, now).is_some_and(|r| match &r.role {
                    ReportedRole::Claiming { owner } => owner == name,
                    ReportedRole::Covering { owner, .. } => owner == name,
                    _ => false,
                })
        })
    }

    fn standby_tick(&mut self, now: Instant, target: Option<(usize, Instant)>) {
        match self.role.clone() {
            Role::Standby => {
                let Some((owner, at)) = target else { return };
                if now < at || self.earlier_claim(owner, now) {
                    return;
                }
                match self.health(owner) {
                    Health::DisksBroken => {
                        self.set_role(now, Role::Claiming { owner });
                        self.ask_release(now, owner);
                    }
                    Health::Inaccessible(_) if self.silent(owner, now) => {
                        self.cover(now, owner);
                    }
                    _ => {}
                }
            }
            Role::Claiming { owner } => {
                if !self.broken(owner, now) || self.earlier_claim(owner, now) {
                    self.set_role(now, Role::Standby);
                } else if self.silent(owner, now)
                    && now.duration_since(self.role_since) >= silence(&self.settings)
                {
                    // The owner fell silent without confirming.
                    self.cover(now, owner);
                } else if self.retry_at.is_some_and(|t| now >= t) {
                    self.ask_release(now, owner);
                }
            }
            // Two failover servers on one group (their beacons say so, or
            // an earlier one's report, for a server without beacons): the
            // later in site order yields.
            Role::Covering { owner, .. }
                if self
                    .foreign_on(owner, now)
                    .is_some_and(|s| s < self.me && self.members[s].standby)
                    || self.earlier_claim(owner, now) =>
            {
                self.set_role(now, Role::Standby);
            }
            _ => {}
        }
    }

    fn ask_release(&mut self, now: Instant, owner: usize) {
        self.actions.push_back(Action::AskRelease {
            to: self.members[owner].name.clone(),
        });
        self.retry_at = Some(now + self.settings.poll_interval);
    }

    fn cover(&mut self, now: Instant, owner: usize) {
        self.set_role(now, Role::Covering { owner, since: now });
    }

    /// A failover server covering this one, by the freshest reports:
    /// covering (not merely claiming), the first in site order.
    fn covered_by(&self, now: Instant) -> Option<(usize, u64)> {
        let me = &self.members[self.me].name;
        (0..self.members.len()).find_map(|s| {
            if s == self.me || !self.members[s].standby {
                return None;
            }
            match &self.fresh(s, now)?.role {
                ReportedRole::Covering {
                    owner,
                    since_unix_ms,
                } if owner == me => Some((s, *since_unix_ms)),
                _ => None,
            }
        })
    }

    fn claimed_by(&self, now: Instant) -> Option<usize> {
        let me = &self.members[self.me].name;
        (0..self.members.len()).find(|&s| {
            s != self.me
                && self.members[s].standby
                && self.fresh(s, now).is_some_and(
                    |r| matches!(&r.role, ReportedRole::Claiming { owner } if owner == me),
                )
        })
    }

    fn healthy_for(&self, now: Instant) -> Option<Duration> {
        self.healthy_since.map(|t| now.duration_since(t))
    }

    fn recorder_tick(&mut self, now: Instant) {
        let me = self.me;
        let foreign = self.foreign_on(me, now);
        match self.role.clone() {
            Role::Starting { until } => {
                let by = self
                    .covered_by(now)
                    .map(|(s, _)| s)
                    .or(self.claimed_by(now));
                if by.is_some() || foreign.is_some() {
                    self.set_role(now, Role::Covered { by: by.or(foreign) });
                } else if now >= until && self.may_take_role(now) {
                    // Its fence opened during the listening, after the
                    // rejoin window of hearing the site.
                    self.set_role(now, Role::Emitting);
                }
            }
            Role::Emitting => {
                // Yield at once to a server heard on the groups or one that
                // says it covers this one (a healed link, a standby that
                // took over while this one could not reach it).
                let by = foreign.or(self.covered_by(now).map(|(s, _)| s));
                if by.is_some() {
                    self.set_role(now, Role::Covered { by });
                }
            }
            Role::Covered { .. } => {
                let cover = self.covered_by(now);
                let claimed = self.claimed_by(now);
                if let Some((f, _)) = cover {
                    self.role = Role::Covered { by: Some(f) };
                }
                if cover.is_none() && claimed.is_none() {
                    // Nobody has the role (the failover server is gone): the
                    // server takes it back once its groups are silent (live
                    // video even with broken disks; a free failover server
                    // asks for it again).
                    if foreign.is_none()
                        && now.duration_since(self.role_since) >= silence(&self.settings)
                        && self.may_take_role(now)
                    {
                        self.take_role(now);
                    }
                    return;
                }
                let Some((from, since_unix_ms)) = cover else {
                    return;
                };
                let m = &self.members[me];
                let wants = m.automatic_failback || self.failback_commanded;
                let ready = self
                    .healthy_for(now)
                    .zip(self.covered_since.map(|t| now.duration_since(t)))
                    .is_some_and(|(h, c)| h.min(c) >= self.settings.failback_delay);
                if !(wants && ready) || self.retry_at.is_some_and(|t| now < t) {
                    return;
                }
                if m.automatic_material_copying && m.delay_failover {
                    self.set_role(
                        now,
                        Role::Copying {
                            from,
                            since_unix_ms,
                        },
                    );
                    self.actions.push_back(Action::StartCopy {
                        from: self.members[from].name.clone(),
                        since_unix_ms,
                    });
                } else {
                    self.set_role(
                        now,
                        Role::Reclaiming {
                            from,
                            since_unix_ms,
                            copy_after: m.automatic_material_copying,
                        },
                    );
                    self.ask_hand_back(now, from, since_unix_ms);
                }
            }
            // The failover server gone, or the disks broken again: no role
            // comes back this way.
            Role::Copying { from, .. }
                if self.healthy_since.is_none() || self.covered_by(now).is_none() =>
            {
                self.set_role(now, Role::Covered { by: Some(from) });
            }
            Role::Reclaiming {
                from,
                since_unix_ms,
                ..
            } => {
                if self.healthy_since.is_none() {
                    self.set_role(now, Role::Covered { by: Some(from) });
                } else if self.covered_by(now).is_none()
                    && self.claimed_by(now).is_none()
                    && foreign.is_none()
                    && now.duration_since(self.role_since) >= silence(&self.settings)
                    && self.may_take_role(now)
                {
                    // The failover server went away without confirming.
                    self.take_role(now);
                } else if self.retry_at.is_some_and(|t| now >= t) {
                    self.ask_hand_back(now, from, since_unix_ms);
                }
            }
            _ => {}
        }
    }

    fn ask_hand_back(&mut self, now: Instant, from: usize, since_unix_ms: u64) {
        self.actions.push_back(Action::AskHandBack {
            to: self.members[from].name.clone(),
            since_unix_ms,
        });
        self.retry_at = Some(now + self.settings.poll_interval);
    }

    /// How long a protected recorder emits without confirming that it is
    /// still part of the site: half its `inaccessible_period`, so that it
    /// stops at least that long before any failover server may take its
    /// groups (they wait the whole period without an answer from it).
    fn fence_after(&self) -> Duration {
        self.members[self.me].inaccessible_period / 2
    }

    /// How long a fenced recorder hears the site again before it opens its
    /// fence: a covering standby's beacon (every 200 ms) and its health
    /// answer (every poll) reach it first, and it yields.
    fn rejoin_window(&self) -> Duration {
        self.settings.poll_interval * 3
    }

    /// Until when this server may send by what it knows now: half its
    /// period past its last confirmation. Its link must be up; in a site
    /// of three or more servers that send beacons, the confirmation is the
    /// last verified beacon of another server it heard (cut off, it hears
    /// none: every other server dying at once is the rarer case); in a
    /// site of two, its only peer is the failover server, whose silence
    /// cannot tell a cut link from a dead standby, so the link seen up now
    /// confirms (a cut beyond this server's port is not seen: the README
    /// says what that site shape gets). `None`: it cannot confirm.
    fn confirmed_until(&self, now: Instant) -> Option<Instant> {
        if !self.link_up {
            return None;
        }
        let at = if self.beacon_peers() <= 1 {
            now
        } else {
            self.contact?
        };
        Some(at + self.fence_after()).filter(|&d| d > now)
    }

    /// The other servers that send beacons (have a multicast interface).
    fn beacon_peers(&self) -> usize {
        (0..self.members.len())
            .filter(|&i| i != self.me && self.members[i].multicast)
            .count()
    }

    /// Its link is up and, in a site of three or more servers that send
    /// beacons, it heard another server's verified beacon within `within`.
    fn hears_site(&self, now: Instant, within: Duration) -> bool {
        if !self.link_up {
            return false;
        }
        if self.beacon_peers() <= 1 {
            return true;
        }
        self.contact
            .is_some_and(|c| now.saturating_duration_since(c) < within)
    }

    /// Whether this server may take its role back on its own (nobody
    /// seems to have it): only while it could confirm its fence, so that
    /// a recorder cut off from the site, which sees nobody cover it, does
    /// not start sending while a failover server does.
    fn may_take_role(&self, now: Instant) -> bool {
        !fences(&self.members, &self.members[self.me]) || self.hears_site(now, HEARING)
    }

    /// Takes this server's role on its own because nobody seems to have
    /// it: its fence closed, it sends only once it
    /// has heard the site for the rejoin window from now. It may have been
    /// cut a moment ago without knowing yet (it hears the site within
    /// [`HEARING`]), while a failover server takes the role it saw
    /// nobody emit; the window, longer than that, finds the cut first, or
    /// brings the failover server's beacon, and it yields.
    fn take_role(&mut self, now: Instant) {
        self.set_role(now, Role::Emitting);
        if fences(&self.members, &self.members[self.me]) {
            self.deadline = None;
            self.rejoin_since = Some(now);
        }
    }

    /// A protected recorder's fence: moved on while it can confirm; once it
    /// has run out (cut off, or the process paused past it), it opens again
    /// only after the rejoin window without a break, so that a healed or
    /// resumed recorder learns who covers it before it sends anything.
    fn update_fence(&mut self, now: Instant) {
        if !fences(&self.members, &self.members[self.me]) {
            self.deadline = None;
            return;
        }
        let open = self.deadline.is_some_and(|d| now < d);
        if open {
            // Moved on while it can confirm; else it runs out.
            if let Some(d) = self.confirmed_until(now) {
                self.deadline = Some(d);
            }
            return;
        }
        // Opened only while it hears the site now (not a second ago: it
        // may have been cut since, and a cover's silence then means
        // nothing), for the rejoin window without a break.
        let ok = self.hears_site(now, HEARING);
        match self.rejoin_since {
            _ if !ok => self.rejoin_since = None,
            None => self.rejoin_since = Some(now),
            Some(t) if now.saturating_duration_since(t) >= self.rejoin_window() => {
                if let Some(d) = self.confirmed_until(now) {
                    self.rejoin_since = None;
                    self.deadline = Some(d);
                }
            }
            Some(_) => {}
        }
    }

    /// It has heard a verified beacon of another server since it
    /// started, or no other server of the site sends beacons (none has a
    /// multicast interface: a site of TCP servers, whose data plane is
    /// the control API alone).
    fn hears_beacons(&self) -> bool {
        self.heard_beacon || super::nobody_beacons(&self.members, self.me)
    }

    fn server_view(&self, i: usize, now: Instant) -> (u8, ServerView) {
        let m = &self.members[i];
        let secs = |t: Instant| Some(now.saturating_duration_since(t).as_secs());
        let view = |state: String, since: Option<u64>, cover: Option<String>| ServerView {
            name: m.name.clone(),
            state,
            for_seconds: since,
            cover,
        };
        if i == self.me {
            let since = secs(self.role_since);
            let name = |s: usize| self.members[s].name.clone();
            return match &self.role {
                Role::Standby if !self.hears_beacons() => {
                    (1, view(super::DEAF.into(), since, None))
                }
                Role::Standby => (1, view("standby".into(), since, None)),
                Role::Claiming { owner } => (
                    1,
                    view(format!("taking over {}", name(*owner)), since, None),
                ),
                Role::Covering { owner, .. } => {
                    (1, view(format!("covering {}", name(*owner)), since, None))
                }
                Role::Starting { .. } => (
                    0,
                    view("starting: listening on its groups".into(), since, None),
                ),
                Role::Emitting if self.deadline.is_some_and(|d| now >= d) => (
                    0,
                    view(
                        "cut off from the site: sends nothing until it hears the site again".into(),
                        since,
                        None,
                    ),
                ),
                Role::Emitting if self.disks_broken => {
                    (2, view("all material disks broken".into(), since, None))
                }
                Role::Emitting => (0, view("ok".into(), since, None)),
                Role::Covered { by } => (0, view("restored, covered".into(), since, by.map(name))),
                Role::Copying { from, .. } => (
                    0,
                    view(
                        "restored, copying its material back".into(),
                        since,
                        Some(name(*from)),
                    ),
                ),
                Role::Reclaiming { from, .. } => (
                    0,
                    view(
                        "restored, taking its role back".into(),
                        since,
                        Some(name(*from)),
                    ),
                ),
            };
        }
        let p = &self.peers[i];
        if m.standby {
            let state = match self.fresh(i, now).map(|r| &r.role) {
                Some(ReportedRole::Covering { owner, .. }) => format!("covering {owner}"),
                Some(ReportedRole::Claiming { owner }) => format!("taking over {owner}"),
                Some(_) if !self.fresh(i, now).is_some_and(|r| r.hears_beacons) => {
                    super::DEAF.to_string()
                }
                Some(_) => "standby".to_string(),
                None => "inaccessible".to_string(),
            };
            return (1, view(state, None, None));
        }
        let health = self.health(i);
        if self.broken(i, now) {
            let state = match health {
                Health::DisksBroken => "all material disks broken".to_string(),
                Health::Inaccessible(since) => {
                    format!(
                        "inaccessible for {} s",
                        now.saturating_duration_since(since).as_secs()
                    )
                }
                Health::Ok => "broken".to_string(),
            };
            let cover = self
                .coverer(i, now)
                .map(|s| format!("covered by {}", self.members[s].name))
                .or_else(|| self.why_not[i].clone())
                .or_else(|| {
                    self.streaming(i, now)
                        .then(|| "still streaming: not taken over".to_string())
                });
            return (2, view(state, p.broken_since.and_then(secs), cover));
        }
        match health {
            Health::Ok => (0, view("ok".into(), None, None)),
            Health::DisksBroken => (0, view("all material disks broken".into(), None, None)),
            Health::Inaccessible(since) if self.streaming(i, now) => (
                0,
                view("inaccessible, still streaming".into(), secs(since), None),
            ),
            Health::Inaccessible(since) => (0, view("inaccessible".into(), secs(since), None)),
        }
    }
}

/// How long a group must stay silent before a server takes it: two polls,
/// and at least a second.
fn silence(s: &Settings) -> Duration {
    (s.poll_interval * 2).max(Duration::from_secs(1))
}

impl Controller for Embedded {
    fn handle(&mut self, now: Instant, input: Input) {
        match input {
            Input::Health { server, report } => {
                if let Some(i) = self.index(&server).filter(|&i| i != self.me) {
                    let p = &mut self.peers[i];
                    match report {
                        Some(r) => {
                            p.last_answer = Some(now);
                            p.report = Some(r);
                            p.silent = false;
                            p.silent_since = None;
                        }
                        None => {
                            p.silent = true;
                            if p.last_answer.is_some() {
                                p.silent_since.get_or_insert(now);
                            }
                        }
                    }
                }
            }
            Input::Beacon { sender, emits } => {
                if super::from_peer(&self.members, self.me, &sender) {
                    self.heard_beacon = true;
                    if self
                        .contact
                        .is_none_or(|c| now.saturating_duration_since(c) > HEARING)
                    {
                        self.hearing_since = Some(now);
                    }
                    self.contact = Some(now);
                }
                for (o, s) in super::beacon_roles(&self.members, self.me, &sender, &emits) {
                    if o == s {
                        self.peers[o].heard_own = Some(now);
                    } else {
                        self.peers[o].heard_other = Some((now, s));
                    }
                }
            }
            Input::Disks { all_broken } => {
                self.disks_broken = all_broken;
                if all_broken {
                    self.healthy_since = None;
                } else if self.healthy_since.is_none() {
                    self.healthy_since = Some(now);
                }
            }
            Input::ReleaseAsked { by } => {
                if let Some(s) = self.index(&by).filter(|&s| self.members[s].standby)
                    && self.disks_broken
                    && matches!(self.role, Role::Emitting | Role::Starting { .. })
                {
                    self.set_role(now, Role::Covered { by: Some(s) });
                    self.actions.push_back(Action::ConfirmRelease {
                        to: by,
                        owner: self.members[self.me].name.clone(),
                    });
                }
            }
            Input::HandBackAsked {
                owner,
                since_unix_ms,
            } => {
                // Only the cover whose material the owner copied: a later
                // one (this server restarted and took the owner again)
                // recorded material the owner does not have yet.
                if let Some(o) = self.index(&owner)
                    && matches!(self.role, Role::Covering { owner: c, since } if c == o && self.wall(since) == since_unix_ms)
                {
                    self.set_role(now, Role::Standby);
                    // The request is the owner's proof of life, and it
                    // emits from now: it counts as answering and as heard,
                    // so that it must be inaccessible for its period and its
                    // groups silent again before this server takes them (its
                    // API may still be out of this server's reach).
                    let p = &mut self.peers[o];
                    p.last_answer = Some(now);
                    p.silent = false;
                    p.silent_since = None;
                    p.report = None;
                    p.heard_own = Some(now);
                    self.actions.push_back(Action::ConfirmRelease {
                        to: owner.clone(),
                        owner,
                    });
                }
            }
            Input::Released { owner, by } => {
                let (o, b) = (self.index(&owner), self.index(&by));
                match (self.role.clone(), o, b) {
                    (Role::Claiming { owner: c }, Some(o), Some(b)) if c == o && b == o => {
                        self.cover(now, o);
                    }
                    (
                        Role::Reclaiming {
                            from,
                            since_unix_ms,
                            copy_after,
                        },
                        Some(o),
                        Some(b),
                    ) if o == self.me && b == from => {
                        // Its last report still says it covers this one:
                        // forgotten, the next poll brings the new one.
                        // So are its packets heard on the groups before it
                        // stopped.
                        self.peers[from].report = None;
                        self.peers[self.me].heard_other = None;
                        self.set_role(now, Role::Emitting);
                        self.failback_commanded = false;
                        if copy_after {
                            self.actions.push_back(Action::StartCopy {
                                from: by,
                                since_unix_ms,
                            });
                        }
                    }
                    _ => {}
                }
            }
            // etcd's outcomes are the etcd controller's.
            Input::Etcd(_) => {}
            Input::Link { up } => self.link_up = up,
            Input::FailbackCommanded => self.failback_commanded = true,
            Input::CopyDone { from, ok } => {
                if let Role::Copying {
                    from: f,
                    since_unix_ms,
                } = self.role.clone()
                    && self.index(&from) == Some(f)
                {
                    if ok {
                        self.set_role(
                            now,
                            // And once more after the hand-back: what the
                            // failover server recorded during this copy.
                            Role::Reclaiming {
                                from: f,
                                since_unix_ms,
                                copy_after: true,
                            },
                        );
                        self.ask_hand_back(now, f, since_unix_ms);
                    } else {
                        // Tried again after a poll (the copy resumes: only
                        // what is still missing moves).
                        self.set_role(now, Role::Covered { by: Some(f) });
                        self.retry_at = Some(now + self.settings.poll_interval);
                    }
                }
            }
        }
        self.tick(now);
    }

    fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        let mut at: Vec<Instant> = Vec::new();
        if let Role::Starting { until } = self.role {
            at.push(until);
        }
        // The fence: renewed at half its life, opened after the rejoin.
        at.extend(self.deadline.map(|d| d - self.fence_after() / 2));
        at.extend(self.deadline);
        at.extend(self.rejoin_since.map(|t| t + self.rejoin_window()));
        at.extend(self.retry_at);
        for (i, p) in self.peers.iter().enumerate() {
            if let Health::Inaccessible(since) = self.health(i) {
                at.push(since + self.members[i].inaccessible_period + Duration::from_millis(1));
            }
            at.extend(p.heard_own.map(|t| t + self.silence_of(i)));
            at.extend(
                p.broken_since
                    .map(|t| t + self.settings.poll_interval * self.members.len() as u32),
            );
        }
        at.extend(self.healthy_since.map(|t| t + self.settings.failback_delay));
        at.extend(self.covered_since.map(|t| t + self.settings.failback_delay));
        at.push(self.role_since + silence(&self.settings));
        at.into_iter().filter(|&t| t > self.last_now).min()
    }

    fn tick(&mut self, now: Instant) {
        self.update_fence(now);
        self.last_now = now;
        for i in 0..self.members.len() {
            let broken = self.broken(i, now);
            let p = &mut self.peers[i];
            match (broken, p.broken_since) {
                (true, None) => p.broken_since = Some(now),
                (false, Some(_)) => p.broken_since = None,
                _ => {}
            }
        }
        // Every server works out who covers whom (its status says why a
        // broken server is not covered); failover servers act on it.
        let target = self.assignment(now);
        if self.members[self.me].standby {
            self.standby_tick(now, target);
        } else {
            self.recorder_tick(now);
        }
    }

    fn wanted(&self) -> Vec<(String, Run)> {
        let name = |i: usize| self.members[i].name.clone();
        match &self.role {
            Role::Covering { owner, .. } => vec![(name(*owner), Run::Emit)],
            Role::Emitting => vec![(name(self.me), Run::Emit)],
            Role::Copying { .. } | Role::Reclaiming { .. } => vec![(name(self.me), Run::Warm)],
            Role::Standby
            | Role::Claiming { .. }
            | Role::Starting { .. }
            | Role::Covered { .. } => Vec::new(),
        }
    }

    fn report(&self, _now: Instant) -> Report {
        let name = |i: usize| self.members[i].name.clone();
        let role = match &self.role {
            Role::Standby => ReportedRole::Standby,
            Role::Claiming { owner } => ReportedRole::Claiming {
                owner: name(*owner),
            },
            Role::Covering { owner, since } => ReportedRole::Covering {
                owner: name(*owner),
                since_unix_ms: self.wall(*since),
            },
            r => ReportedRole::Recorder {
                emitting: *r == Role::Emitting,
            },
        };
        Report {
            disks_broken: self.disks_broken,
            role,
            hears_beacons: self.hears_beacons(),
        }
    }

    fn fence(&self) -> Option<Instant> {
        if !fences(&self.members, &self.members[self.me]) {
            return None;
        }
        // Closed (a past instant) until it opens.
        Some(self.deadline.unwrap_or(self.started))
    }

    fn view(&self, now: Instant) -> SiteView {
        let mut v = SiteView::default();
        for i in 0..self.members.len() {
            let (folder, s) = self.server_view(i, now);
            match folder {
                0 => v.recorders.push(s),
                1 => v.failover.push(s),
                _ => v.broken.push(s),
            }
        }
        v
    }
}
