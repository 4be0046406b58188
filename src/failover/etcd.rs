//! The etcd controller: leases and transactions on an etcd cluster, and
//! emitters that fence themselves.
//!
//! Keys under the site's prefix (written by [`super::etcd_store`]):
//! - `alive/<server>`: what the server says of itself ([`Report`]), on its
//!   lease: present while its lease lives.
//! - `role/<owner>`: who emits `owner`'s channels on its groups
//!   ([`RoleValue`]), on the holder's lease, created only by a transaction
//!   on `create_revision == 0`; that revision is the role's **epoch**.
//! - `handback/<owner>`: a restored owner asks for its role back (the cover
//!   it copied, by its start), on the owner's lease.
//! - `released/<owner>`: the streams' last points, written by the holder in
//!   the transaction that deletes the role (guarded by its epoch).
//!
//! Rules (DESIGN.md, "On etcd"):
//! - **Self-fencing.** A holder may send only until `lease_ttl / 2` after
//!   the send time of its last confirmed keep-alive ([`Controller::fence`];
//!   the runtime checks it before every send). Its lease lives at least
//!   `lease_ttl` after that keep-alive reached etcd, so a holder cut off
//!   from etcd stops at least `lease_ttl / 2` before anyone may take its
//!   role.
//! - **A standby takes a role only when** the role key is gone (the holder's
//!   lease expired, or it deleted the key after stopping), the owner is
//!   broken (inaccessible for its period, counted from its lease's last
//!   renewal as far as etcd shows it, or all its disks broken), and nobody
//!   has said in a verified beacon that it emits the owner's role for the
//!   silence window (the data plane, as in the embedded controller). Only with a lease it can
//!   confirm and a fresh read: a server that cannot reach etcd takes
//!   nothing over.
//! - Takeovers are rate-limited: one per standby per `lease_ttl`, and none
//!   for a `lease_ttl` after most protected servers' leases vanished in one
//!   read (etcd has revoked every lease at once after a stuck leader).
//! - Failback through the same keys: the restored owner copies first when
//!   `delay_failover` says so, then asks (`handback`); the standby stops,
//!   deletes the role guarded by its epoch, and the owner takes it with the
//!   same transaction as any taker.
//!
//! Pure like the embedded controller: etcd operations are actions
//! ([`Op`]) and their outcomes inputs ([`Outcome`]), each with the times
//! the runtime measured.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{
    Action, Controller, Input, Member, Report, ReportedRole, Run, ServerView, Settings, SiteView,
};

/// An etcd lease id.
pub type LeaseId = i64;

/// An operation on etcd for the runtime to carry out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// A new lease of `lease_ttl`.
    Grant,
    /// One keep-alive of `lease`.
    KeepAlive { lease: LeaseId },
    /// Every key under the site's prefix (linearizable).
    Read,
    /// `alive/<me>` = `report`, on `lease`.
    Publish { lease: LeaseId, report: Report },
    /// Takes `owner`'s role: puts `role/<owner>` on `lease` if the key does
    /// not exist (`create_revision == 0`).
    Acquire {
        owner: String,
        lease: LeaseId,
        since_unix_ms: u64,
    },
    /// This server stopped emitting `owner`'s channels: deletes
    /// `role/<owner>` if its create revision is `epoch`, and writes the
    /// streams' last points (the runtime adds them).
    ConfirmRelease { owner: String, epoch: i64 },
    /// Asks for this server's role back: `handback/<me>` = the start of the
    /// cover whose material it copied, on `lease`.
    AskHandBack { lease: LeaseId, since_unix_ms: u64 },
    /// Deletes `handback/<me>`.
    WithdrawHandBack,
}

impl Op {
    pub fn kind(&self) -> OpKind {
        match self {
            Op::Grant => OpKind::Grant,
            Op::KeepAlive { .. } => OpKind::KeepAlive,
            Op::Read => OpKind::Read,
            Op::Publish { .. } => OpKind::Publish,
            Op::Acquire { .. } => OpKind::Acquire,
            Op::ConfirmRelease { .. } => OpKind::ConfirmRelease,
            Op::AskHandBack { .. } => OpKind::AskHandBack,
            Op::WithdrawHandBack => OpKind::WithdrawHandBack,
        }
    }

    /// Routine upkeep (lease, reads, the published report), as opposed to
    /// the operations that move a role.
    pub fn routine(&self) -> bool {
        matches!(
            self,
            Op::Grant | Op::KeepAlive { .. } | Op::Read | Op::Publish { .. }
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpKind {
    Grant,
    KeepAlive,
    Read,
    Publish,
    Acquire,
    ConfirmRelease,
    AskHandBack,
    WithdrawHandBack,
}

/// What an [`Op`] came to, with the times the runtime measured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A lease, granted to a request sent at `sent_at`.
    Granted { lease: LeaseId, sent_at: Instant },
    /// The answer to a keep-alive sent at `sent_at`: `alive` false when
    /// etcd no longer knows the lease (expired or revoked).
    KeptAlive {
        lease: LeaseId,
        sent_at: Instant,
        alive: bool,
    },
    /// The keys, read by a request sent at `sent_at`.
    Read {
        sent_at: Instant,
        snapshot: Snapshot,
    },
    /// `epoch`: the role's create revision when this server got it; `None`
    /// when another had it.
    Acquired { owner: String, epoch: Option<i64> },
    /// The role is no longer this server's (`deleted`: by this release;
    /// else it was not this server's any more).
    Released { owner: String, deleted: bool },
    /// Done (publish, hand-back request or its withdrawal).
    Done { op: OpKind },
    /// Not done: etcd unreachable, a timeout or an error.
    Failed { op: OpKind, error: String },
}

/// The site's keys as one read saw them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub roles: Vec<RoleKey>,
    /// `alive/<server>`: the server and its report.
    pub alive: Vec<(String, Report)>,
    /// `handback/<owner>`: the owner and the cover's start it asks back.
    pub hand_backs: Vec<(String, u64)>,
    /// `released/<owner>`: the last points of its streams (JSON), for the
    /// runtime.
    pub released: Vec<(String, String)>,
}

/// A role key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoleKey {
    pub owner: String,
    pub holder: String,
    /// When the holder took it (wall clock, Unix ms): names the cover.
    pub since_unix_ms: u64,
    /// The key's create revision.
    pub epoch: i64,
    /// The holder's lease.
    pub lease: LeaseId,
}

/// The value of a role key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleValue {
    pub holder: String,
    pub since_unix_ms: u64,
}

/// Key names under the site's prefix.
pub mod keys {
    pub const ALIVE: &str = "alive/";
    pub const ROLE: &str = "role/";
    pub const HANDBACK: &str = "handback/";
    pub const RELEASED: &str = "released/";
}

/// How often a lease is kept alive: eight times per time to live, so that
/// a holder's fence (half the time to live) survives three lost answers.
/// Each keep-alive is given half the time to live ([`keep_alive_limit`]),
/// so up to four are in flight at once on a slow link.
pub fn keep_alive_every(ttl: Duration) -> Duration {
    (ttl / 8).max(Duration::from_millis(50))
}

/// How long a keep-alive may take: its answer extends the fence to half
/// the time to live after it was sent, so one later than that is of no use.
pub fn keep_alive_limit(ttl: Duration) -> Duration {
    ttl / 2
}

/// How often the keys are read: twice per poll.
fn read_every(s: &Settings) -> Duration {
    s.poll_interval / 2
}

/// How long a group must stay silent before a server takes it: two polls,
/// and at least a second (as in the embedded controller).
fn silence(s: &Settings) -> Duration {
    (s.poll_interval * 2).max(Duration::from_secs(1))
}

#[derive(Debug, Default, Clone)]
struct Peer {
    /// Its `alive` key in the last read.
    alive: Option<Report>,
    /// The send time of the first read without its `alive` key since it was
    /// last there (or since this server started).
    absent_since: Option<Instant>,
    /// Its role key in the last read.
    role: Option<RoleKey>,
    /// Its hand-back request in the last read.
    hand_back: Option<u64>,
    heard_own: Option<Instant>,
    heard_other: Option<(Instant, usize)>,
    broken_since: Option<Instant>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Role {
    // A failover server's roles.
    Standby,
    /// An `Acquire` of `owner`'s role in flight.
    Claiming {
        owner: usize,
        since_unix_ms: u64,
    },
    Covering {
        owner: usize,
        epoch: i64,
        since_unix_ms: u64,
    },
    /// Stopped emitting `owner`'s channels for its hand-back; the role's
    /// deletion in flight.
    HandingBack {
        owner: usize,
        epoch: i64,
    },
    // A recorder's roles.
    /// Waiting for a lease and a read to know who has the role.
    Starting,
    /// An `Acquire` of its own role in flight (`back`: after a hand-back,
    /// from whom, the cover's start, and whether to copy after).
    Acquiring {
        back: Option<(usize, u64, bool)>,
    },
    Emitting {
        epoch: i64,
    },
    /// All disks broken and a failover server free: stopped, deleting the
    /// role so that it takes over.
    Releasing {
        epoch: i64,
    },
    /// Another server has the role (`by`, when known).
    Covered {
        by: Option<usize>,
    },
    Copying {
        from: usize,
        since_unix_ms: u64,
    },
    Reclaiming {
        from: usize,
        since_unix_ms: u64,
        copy_after: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Health {
    Ok,
    /// No lease since about this instant.
    Inaccessible(Instant),
    DisksBroken,
}

/// The etcd controller of one server.
pub struct EtcdController {
    settings: Settings,
    members: Vec<Member>,
    me: usize,
    started: Instant,
    wall_at_start: u64,
    /// A verified beacon of another server was heard since the start.
    heard_beacon: bool,
    last_now: Instant,
    actions: VecDeque<Action>,
    lease: Option<LeaseId>,
    granting: bool,
    grant_at: Instant,
    /// The send time of the last confirmed keep-alive (or grant) of `lease`.
    confirmed: Option<Instant>,
    next_keep_alive: Instant,
    /// A read in flight since.
    reading: Option<Instant>,
    next_read: Instant,
    /// The send time of the last read that came back.
    last_read: Option<Instant>,
    /// The report in `alive/<me>` (`None`: to be written).
    published: Option<Report>,
    publishing: bool,
    peers: Vec<Peer>,
    disks_broken: bool,
    healthy_since: Option<Instant>,
    failback_commanded: bool,
    role: Role,
    role_since: Instant,
    why_not: Vec<Option<String>>,
    retry_at: Option<Instant>,
    covered_since: Option<Instant>,
    /// This server's last takeover (rate limit).
    last_takeover: Option<Instant>,
    /// No takeovers until then (most leases vanished at once).
    hold_until: Option<Instant>,
    /// A hand-back request written and not withdrawn.
    hand_back_put: bool,
    /// A role operation (acquire, release, hand-back) in flight.
    role_op: bool,
    /// After a failed operation, the next of its kind waits until then
    /// (etcd out of reach answers at once).
    backoff: Option<Instant>,
    /// The next publication of the report, after a failed one.
    publish_at: Option<Instant>,
}

impl EtcdController {
    pub fn new(
        settings: Settings,
        members: Vec<Member>,
        me: &str,
        now: Instant,
        wall_unix_ms: u64,
    ) -> Result<EtcdController, String> {
        let me = members
            .iter()
            .position(|m| m.name == me)
            .ok_or_else(|| format!("no server named {me:?} in the site"))?;
        if settings.lease_ttl < Duration::from_secs(2) {
            return Err(format!(
                "lease_ttl {:?} is shorter than 2 s",
                settings.lease_ttl
            ));
        }
        let role = if members[me].standby {
            Role::Standby
        } else if !members[me].protected {
            // Nobody takes an unprotected server's groups: it emits
            // whatever etcd does, unfenced (epoch 0: no role key).
            Role::Emitting { epoch: 0 }
        } else {
            Role::Starting
        };
        let n = members.len();
        Ok(EtcdController {
            settings,
            members,
            me,
            started: now,
            wall_at_start: wall_unix_ms,
            heard_beacon: false,
            last_now: now,
            actions: VecDeque::new(),
            lease: None,
            granting: false,
            grant_at: now,
            confirmed: None,
            next_keep_alive: now,
            reading: None,
            next_read: now,
            last_read: None,
            published: None,
            publishing: false,
            peers: vec![Peer::default(); n],
            disks_broken: false,
            healthy_since: Some(now),
            failback_commanded: false,
            role,
            role_since: now,
            why_not: vec![None; n],
            retry_at: None,
            covered_since: None,
            last_takeover: None,
            hold_until: None,
            hand_back_put: false,
            role_op: false,
            backoff: None,
            publish_at: None,
        })
    }

    fn ttl(&self) -> Duration {
        self.settings.lease_ttl
    }

    fn wall(&self, t: Instant) -> u64 {
        let d = t.saturating_duration_since(self.started).as_millis() as u64;
        self.wall_at_start.saturating_add(d)
    }

    fn name(&self, i: usize) -> String {
        self.members[i].name.clone()
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
            if restoring(&role) && !restoring(&self.role) {
                self.covered_since = Some(now);
            }
            self.role = role;
            self.role_since = now;
            self.retry_at = None;
        }
    }

    fn op(&mut self, op: Op) {
        if !op.routine() {
            self.role_op = true;
        }
        self.actions.push_back(Action::Etcd(op));
    }

    /// A read that came back within two read intervals: what this server
    /// knows of the site is current.
    fn fresh(&self, now: Instant) -> bool {
        self.last_read
            .is_some_and(|t| now.saturating_duration_since(t) <= read_every(&self.settings) * 3)
    }

    /// Its lease is confirmed (the last keep-alive sent less than half a
    /// time to live ago came back): it may act.
    fn confirmed_at(&self, now: Instant) -> bool {
        self.lease.is_some() && self.confirmed.is_some_and(|c| now < c + self.ttl() / 2)
    }

    fn health(&self, i: usize) -> Health {
        let p = &self.peers[i];
        match &p.alive {
            Some(r) if r.disks_broken => Health::DisksBroken,
            Some(_) => Health::Ok,
            // Its lease expired at the earliest a time to live after its
            // last renewal: inaccessible since then, as far as etcd says.
            None => Health::Inaccessible(
                p.absent_since
                    .unwrap_or(self.started)
                    .checked_sub(self.ttl())
                    .unwrap_or(self.started),
            ),
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
            Health::Inaccessible(since) => {
                now.saturating_duration_since(since) > m.inaccessible_period
            }
        }
    }

    fn streaming(&self, i: usize, now: Instant) -> bool {
        self.members[i].multicast
            && self.peers[i]
                .heard_own
                .is_some_and(|t| now.saturating_duration_since(t) < silence(&self.settings))
    }

    fn foreign_on(&self, i: usize, now: Instant) -> Option<usize> {
        self.peers[i]
            .heard_other
            .filter(|(t, _)| now.saturating_duration_since(*t) < silence(&self.settings))
            .map(|(_, s)| s)
    }

    fn silent(&self, i: usize, now: Instant) -> bool {
        !self.streaming(i, now) && self.foreign_on(i, now).is_none()
    }

    /// Who holds `owner`'s role, by the last read (this server too).
    fn holder(&self, owner: usize) -> Option<usize> {
        self.peers[owner]
            .role
            .as_ref()
            .and_then(|r| self.index(&r.holder))
    }

    /// The failover server that covers or claims `owner`.
    fn coverer(&self, owner: usize) -> Option<usize> {
        match self.role {
            Role::Claiming { owner: o, .. } | Role::Covering { owner: o, .. } if o == owner => {
                return Some(self.me);
            }
            _ => {}
        }
        self.holder(owner).filter(|&s| s != owner)
    }

    /// Free failover servers in site order: this one in standby, others
    /// whose `alive` says standby and that hold no role.
    fn free_standbys(&self) -> Vec<usize> {
        (0..self.members.len())
            .filter(|&s| {
                self.members[s].standby
                    && if s == self.me {
                        // Fail closed: a standby that hears no valid
                        // beacon cannot tell who still emits.
                        self.role == Role::Standby && self.hears_beacons()
                    } else {
                        self.peers[s]
                            .alive
                            .as_ref()
                            .is_some_and(|r| r.role == ReportedRole::Standby && r.hears_beacons)
                            && !(0..self.members.len()).any(|o| self.holder(o) == Some(s))
                    }
            })
            .collect()
    }

    /// As the embedded controller's: broken servers in site order to free
    /// failover servers of the same layout in site order, the k-th of
    /// those waiting k times two polls (a transaction decides a race, the
    /// stagger avoids it).
    fn assignment(&mut self, now: Instant) -> Option<(usize, Instant)> {
        let free = self.free_standbys();
        let mut taken = vec![false; free.len()];
        let mut mine = None;
        for owner in 0..self.members.len() {
            self.why_not[owner] = None;
            if !self.broken(owner, now) || self.coverer(owner).is_some() {
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
                        mine = Some((owner, since + self.settings.poll_interval * 2 * rank as u32));
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

    fn may_take(&self, now: Instant) -> bool {
        self.confirmed_at(now)
            && self.fresh(now)
            && !self.role_op
            && self.backoff.is_none_or(|t| now >= t)
            && self.hold_until.is_none_or(|t| now >= t)
            && self.last_takeover.is_none_or(|t| now >= t + self.ttl())
    }

    fn standby_tick(&mut self, now: Instant, target: Option<(usize, Instant)>) {
        match self.role.clone() {
            Role::Standby => {
                let Some((owner, at)) = target else { return };
                if now < at || !self.may_take(now) || self.peers[owner].role.is_some() {
                    return;
                }
                let go = match self.health(owner) {
                    // It deleted its role itself, after it stopped.
                    Health::DisksBroken => true,
                    Health::Inaccessible(_) => self.silent(owner, now),
                    Health::Ok => false,
                };
                if go && let Some(lease) = self.lease {
                    let since_unix_ms = self.wall(now);
                    self.set_role(
                        now,
                        Role::Claiming {
                            owner,
                            since_unix_ms,
                        },
                    );
                    self.op(Op::Acquire {
                        owner: self.name(owner),
                        lease,
                        since_unix_ms,
                    });
                }
            }
            Role::Covering {
                owner,
                epoch,
                since_unix_ms,
            } if self.peers[owner].hand_back == Some(since_unix_ms) => {
                self.set_role(now, Role::HandingBack { owner, epoch });
                self.op(Op::ConfirmRelease {
                    owner: self.name(owner),
                    epoch,
                });
            }
            Role::HandingBack { owner, epoch }
                if !self.role_op && self.retry_at.is_some_and(|t| now >= t) =>
            {
                self.op(Op::ConfirmRelease {
                    owner: self.name(owner),
                    epoch,
                });
            }
            _ => {}
        }
    }

    fn healthy_for(&self, now: Instant) -> Option<Duration> {
        self.healthy_since.map(|t| now.saturating_duration_since(t))
    }

    /// A failover server free to take this server's role when it lets go:
    /// one in standby with its disk layout.
    fn free_standby_for_me(&self) -> bool {
        let layout = &self.members[self.me].disk_layout;
        self.free_standbys()
            .iter()
            .any(|&s| &self.members[s].disk_layout == layout)
    }

    fn acquire_own(&mut self, now: Instant, back: Option<(usize, u64, bool)>) {
        if let Some(lease) = self.lease {
            self.set_role(now, Role::Acquiring { back });
            self.op(Op::Acquire {
                owner: self.name(self.me),
                lease,
                since_unix_ms: self.wall(now),
            });
        }
    }

    /// An unprotected recorder: no role key, no fence.
    fn unprotected(&self) -> bool {
        let m = &self.members[self.me];
        !m.protected && !m.standby
    }

    fn recorder_tick(&mut self, now: Instant) {
        let me = self.me;
        if self.unprotected() {
            return;
        }
        let ready_to_act = self.confirmed_at(now)
            && self.fresh(now)
            && !self.role_op
            && self.backoff.is_none_or(|t| now >= t);
        let holder = self.holder(me);
        match self.role.clone() {
            Role::Starting if ready_to_act => match holder {
                None if self.foreign_on(me, now).is_none() => self.acquire_own(now, None),
                Some(s) if s != me => self.set_role(now, Role::Covered { by: Some(s) }),
                // Its previous process's key: it goes with that lease.
                _ => {}
            },
            Role::Emitting { epoch }
                if self.disks_broken && ready_to_act && self.free_standby_for_me() =>
            {
                self.set_role(now, Role::Releasing { epoch });
                self.op(Op::ConfirmRelease {
                    owner: self.name(me),
                    epoch,
                });
            }
            Role::Releasing { epoch }
                if !self.role_op && self.retry_at.is_some_and(|t| now >= t) =>
            {
                self.op(Op::ConfirmRelease {
                    owner: self.name(me),
                    epoch,
                });
            }
            Role::Covered { .. } => {
                match holder {
                    Some(s) if s != me => self.role = Role::Covered { by: Some(s) },
                    None => {
                        // Nobody has it (the failover server gone): back,
                        // once the groups are silent, unless a failover
                        // server is to take it from broken disks.
                        if ready_to_act
                            && !(self.disks_broken && self.free_standby_for_me())
                            && self.silent(me, now)
                            && now.saturating_duration_since(self.role_since)
                                >= silence(&self.settings)
                        {
                            self.acquire_own(now, None);
                        }
                        return;
                    }
                    _ => return,
                }
                let Some(from) = holder else { return };
                let Some(since_unix_ms) = self.peers[me].role.as_ref().map(|r| r.since_unix_ms)
                else {
                    return;
                };
                let m = &self.members[me];
                let wants = m.automatic_failback || self.failback_commanded;
                let ready = self
                    .healthy_for(now)
                    .zip(self.covered_since.map(|t| now.saturating_duration_since(t)))
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
                        from: self.name(from),
                        since_unix_ms,
                    });
                } else {
                    let copy_after = m.automatic_material_copying;
                    self.reclaim(now, from, since_unix_ms, copy_after);
                }
            }
            Role::Copying { from, .. } if self.healthy_since.is_none() || holder != Some(from) => {
                self.set_role(now, Role::Covered { by: Some(from) });
            }
            Role::Reclaiming {
                from,
                since_unix_ms,
                copy_after,
            } => {
                if self.healthy_since.is_none() {
                    self.set_role(now, Role::Covered { by: Some(from) });
                    self.withdraw();
                } else if holder.is_none() && ready_to_act {
                    self.acquire_own(now, Some((from, since_unix_ms, copy_after)));
                } else if holder.is_some_and(|h| h != from && h != me) {
                    self.set_role(now, Role::Covered { by: holder });
                    self.withdraw();
                } else if !self.hand_back_put
                    && !self.role_op
                    && self.retry_at.is_none_or(|t| now >= t)
                    && let Some(lease) = self.lease
                {
                    self.op(Op::AskHandBack {
                        lease,
                        since_unix_ms,
                    });
                }
            }
            _ => {}
        }
    }

    fn reclaim(&mut self, now: Instant, from: usize, since_unix_ms: u64, copy_after: bool) {
        self.set_role(
            now,
            Role::Reclaiming {
                from,
                since_unix_ms,
                copy_after,
            },
        );
        self.hand_back_put = false;
        if let Some(lease) = self.lease {
            self.op(Op::AskHandBack {
                lease,
                since_unix_ms,
            });
        }
    }

    fn withdraw(&mut self) {
        if self.hand_back_put {
            self.hand_back_put = false;
            self.actions.push_back(Action::Etcd(Op::WithdrawHandBack));
        }
    }

    /// The lease is gone: every role with it.
    fn lose_lease(&mut self, now: Instant) {
        self.lease = None;
        self.confirmed = None;
        self.published = None;
        self.hand_back_put = false;
        self.grant_at = now;
        if self.unprotected() {
            return;
        }
        let role = match self.role.clone() {
            Role::Claiming { .. } | Role::Covering { .. } | Role::HandingBack { .. } => {
                Role::Standby
            }
            Role::Acquiring {
                back: Some((from, ..)),
            }
            | Role::Reclaiming { from, .. } => Role::Covered { by: Some(from) },
            Role::Acquiring { back: None } | Role::Emitting { .. } | Role::Releasing { .. } => {
                Role::Starting
            }
            r => r,
        };
        self.set_role(now, role);
    }

    fn on_outcome(&mut self, now: Instant, o: Outcome) {
        match o {
            Outcome::Granted { lease, sent_at } => {
                self.granting = false;
                self.lease = Some(lease);
                self.confirmed = Some(sent_at);
                self.next_keep_alive = sent_at + keep_alive_every(self.ttl());
                self.published = None;
            }
            Outcome::KeptAlive {
                lease,
                sent_at,
                alive,
            } => {
                if self.lease != Some(lease) {
                    return;
                }
                if alive {
                    self.confirmed = Some(self.confirmed.map_or(sent_at, |c| c.max(sent_at)));
                } else {
                    self.lose_lease(now);
                }
            }
            Outcome::Read { sent_at, snapshot } => {
                self.reading = None;
                self.last_read = Some(sent_at);
                self.absorb(now, sent_at, snapshot);
            }
            Outcome::Acquired { owner, epoch } => {
                self.role_op = false;
                let o = self.index(&owner);
                match (self.role.clone(), epoch) {
                    (
                        Role::Claiming {
                            owner: c,
                            since_unix_ms,
                        },
                        Some(epoch),
                    ) if Some(c) == o => {
                        self.last_takeover = Some(now);
                        self.set_role(
                            now,
                            Role::Covering {
                                owner: c,
                                epoch,
                                since_unix_ms,
                            },
                        );
                    }
                    (Role::Claiming { .. }, _) => self.set_role(now, Role::Standby),
                    (Role::Acquiring { back }, Some(epoch)) if o == Some(self.me) => {
                        self.set_role(now, Role::Emitting { epoch });
                        self.failback_commanded = false;
                        if let Some((from, since_unix_ms, copy_after)) = back {
                            self.withdraw();
                            if copy_after {
                                self.actions.push_back(Action::StartCopy {
                                    from: self.name(from),
                                    since_unix_ms,
                                });
                            }
                        }
                    }
                    (
                        Role::Acquiring {
                            back: Some((from, since_unix_ms, copy_after)),
                        },
                        None,
                    ) => {
                        self.set_role(
                            now,
                            Role::Reclaiming {
                                from,
                                since_unix_ms,
                                copy_after,
                            },
                        );
                    }
                    (Role::Acquiring { back: None }, None) => self.set_role(now, Role::Starting),
                    _ => {}
                }
                // What the key says now: the next read, at once.
                self.next_read = now;
            }
            Outcome::Released { owner, .. } => {
                self.role_op = false;
                let o = self.index(&owner);
                match self.role.clone() {
                    Role::HandingBack { owner: c, .. } if Some(c) == o => {
                        self.set_role(now, Role::Standby);
                    }
                    Role::Releasing { .. } if o == Some(self.me) => {
                        self.set_role(now, Role::Covered { by: None });
                    }
                    _ => {}
                }
                self.next_read = now;
            }
            Outcome::Done { op } => match op {
                OpKind::Publish => self.publishing = false,
                OpKind::AskHandBack => {
                    self.role_op = false;
                    self.hand_back_put = true;
                }
                _ => self.role_op = false,
            },
            Outcome::Failed { op, .. } => match op {
                OpKind::Grant => {
                    self.granting = false;
                    self.grant_at = now + self.settings.poll_interval;
                }
                OpKind::KeepAlive => {}
                OpKind::Read => self.reading = None,
                OpKind::Publish => {
                    self.publishing = false;
                    self.published = None;
                    self.publish_at = Some(now + self.settings.poll_interval);
                }
                OpKind::Acquire => {
                    self.backoff = Some(now + self.settings.poll_interval);
                    // The answer may be lost after etcd applied it: the
                    // next read shows a key of this lease, and it is taken
                    // up then.
                    self.role_op = false;
                    match self.role.clone() {
                        Role::Claiming { .. } => self.set_role(now, Role::Standby),
                        Role::Acquiring {
                            back: Some((from, since_unix_ms, copy_after)),
                        } => self.set_role(
                            now,
                            Role::Reclaiming {
                                from,
                                since_unix_ms,
                                copy_after,
                            },
                        ),
                        Role::Acquiring { back: None } => self.set_role(now, Role::Starting),
                        _ => {}
                    }
                }
                OpKind::ConfirmRelease | OpKind::AskHandBack | OpKind::WithdrawHandBack => {
                    self.role_op = false;
                    self.retry_at = Some(now + self.settings.poll_interval);
                }
            },
        }
    }

    /// Takes in a read.
    fn absorb(&mut self, now: Instant, sent_at: Instant, s: Snapshot) {
        let n = self.members.len();
        let protected: Vec<usize> = (0..n)
            .filter(|&i| self.members[i].protected && !self.members[i].standby)
            .collect();
        let mut vanished = 0;
        for i in 0..n {
            let name = &self.members[i].name;
            let alive = s
                .alive
                .iter()
                .find(|(a, _)| a == name)
                .map(|(_, r)| r.clone());
            let p = &mut self.peers[i];
            if p.alive.is_some() && alive.is_none() && protected.contains(&i) {
                vanished += 1;
            }
            match &alive {
                Some(_) => p.absent_since = None,
                None => {
                    p.absent_since.get_or_insert(sent_at);
                }
            }
            p.alive = alive;
            p.role = s.roles.iter().find(|r| &r.owner == name).cloned();
            p.hand_back = s
                .hand_backs
                .iter()
                .find(|(o, _)| o == name)
                .map(|(_, t)| *t);
        }
        // Most protected servers' leases gone in one read: etcd revoked
        // them (a stuck leader), not a site on fire.
        if vanished >= 2 && vanished * 2 >= protected.len() {
            self.hold_until = Some(now + self.ttl());
        }
        let me = self.me;
        if self.unprotected() {
            return;
        }
        let mine = |r: &RoleKey| Some(r.lease) == self.lease && r.holder == self.members[me].name;
        match self.role.clone() {
            Role::Emitting { epoch } | Role::Releasing { epoch } => {
                let ok = self.peers[me]
                    .role
                    .as_ref()
                    .is_some_and(|r| mine(r) && r.epoch == epoch);
                if !ok && !self.role_op {
                    let by = self.holder(me).filter(|&s| s != me);
                    let role = if by.is_some() {
                        Role::Covered { by }
                    } else {
                        Role::Starting
                    };
                    self.set_role(now, role);
                }
            }
            Role::Covering { owner, epoch, .. } => {
                let ok = self.peers[owner]
                    .role
                    .as_ref()
                    .is_some_and(|r| mine(r) && r.epoch == epoch);
                if !ok {
                    self.set_role(now, Role::Standby);
                }
            }
            // A key of this lease whose acquisition's answer was lost.
            Role::Starting => {
                if let Some(r) = self.peers[me].role.clone().filter(|r| mine(r)) {
                    self.set_role(now, Role::Emitting { epoch: r.epoch });
                }
            }
            Role::Standby => {
                if let Some((owner, r)) = (0..n)
                    .filter_map(|o| Some((o, self.peers[o].role.clone()?)))
                    .find(|(_, r)| mine(r))
                {
                    self.set_role(
                        now,
                        Role::Covering {
                            owner,
                            epoch: r.epoch,
                            since_unix_ms: r.since_unix_ms,
                        },
                    );
                }
            }
            _ => {}
        }
    }

    /// The upkeep: the lease, its keep-alives, reads, the report.
    fn upkeep(&mut self, now: Instant) {
        let ka = keep_alive_every(self.ttl());
        match self.lease {
            None if !self.granting && now >= self.grant_at => {
                self.granting = true;
                self.actions.push_back(Action::Etcd(Op::Grant));
            }
            // Every interval, whether the last ones came back or not: each
            // may take up to half the time to live (an answer after that
            // extends nothing), and the fence counts from the latest sent
            // of those that came back.
            Some(lease) if now >= self.next_keep_alive => {
                self.next_keep_alive = now + ka;
                self.actions
                    .push_back(Action::Etcd(Op::KeepAlive { lease }));
            }
            _ => {}
        }
        let every = match self.role {
            // Faster while a role is about to move.
            Role::Reclaiming { .. } | Role::HandingBack { .. } | Role::Releasing { .. } => {
                read_every(&self.settings) / 5
            }
            _ => read_every(&self.settings),
        };
        if now >= self.next_read
            && self
                .reading
                .is_none_or(|t| now >= t + self.settings.poll_interval * 2)
        {
            self.reading = Some(now);
            self.next_read = now + every;
            self.actions.push_back(Action::Etcd(Op::Read));
        }
        if let Some(lease) = self.lease {
            let report = self.report(now);
            if self.published.as_ref() != Some(&report)
                && !self.publishing
                && self.publish_at.is_none_or(|t| now >= t)
            {
                self.publishing = true;
                self.published = Some(report.clone());
                self.actions
                    .push_back(Action::Etcd(Op::Publish { lease, report }));
            }
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
            let name = |s: usize| self.name(s);
            return match &self.role {
                Role::Standby if !self.hears_beacons() => {
                    (1, view(super::DEAF.into(), since, None))
                }
                Role::Standby => (1, view("standby".into(), since, None)),
                Role::Claiming { owner, .. } => (
                    1,
                    view(format!("taking over {}", name(*owner)), since, None),
                ),
                Role::Covering { owner, epoch, .. } => (
                    1,
                    view(
                        format!("covering {} (epoch {epoch})", name(*owner)),
                        since,
                        None,
                    ),
                ),
                Role::HandingBack { owner, .. } => (
                    1,
                    view(
                        format!("covering {}, handing back", name(*owner)),
                        since,
                        None,
                    ),
                ),
                Role::Starting | Role::Acquiring { back: None } => {
                    let why = if self.lease.is_none() {
                        "starting: no etcd lease yet"
                    } else {
                        "starting: taking its role"
                    };
                    (0, view(why.into(), since, None))
                }
                Role::Emitting { .. } | Role::Releasing { .. } if self.disks_broken => {
                    (2, view("all material disks broken".into(), since, None))
                }
                Role::Emitting { epoch } if !self.may_emit(now) => (
                    0,
                    view(
                        format!("inaccessible: lease unconfirmed, not sending (epoch {epoch})"),
                        since,
                        None,
                    ),
                ),
                Role::Emitting { epoch: 0 } => (0, view("ok (not protected)".into(), since, None)),
                Role::Emitting { epoch } => (0, view(format!("ok (epoch {epoch})"), since, None)),
                Role::Releasing { .. } => (0, view("releasing its role".into(), since, None)),
                Role::Covered { by } => (0, view("restored, covered".into(), since, by.map(name))),
                Role::Copying { from, .. } => (
                    0,
                    view(
                        "restored, copying its material back".into(),
                        since,
                        Some(name(*from)),
                    ),
                ),
                Role::Reclaiming { from, .. }
                | Role::Acquiring {
                    back: Some((from, ..)),
                } => (
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
            let held = (0..self.members.len()).find(|&o| self.holder(o) == Some(i) && o != i);
            let state = match (held, &p.alive) {
                (Some(o), _) => format!("covering {}", self.name(o)),
                (None, Some(r)) => match &r.role {
                    ReportedRole::Claiming { owner } => format!("taking over {owner}"),
                    _ if !r.hears_beacons => super::DEAF.to_string(),
                    _ => "standby".to_string(),
                },
                (None, None) => "inaccessible".to_string(),
            };
            return (1, view(state, None, None));
        }
        let health = self.health(i);
        if self.broken(i, now) {
            let state = match health {
                Health::DisksBroken => "all material disks broken".to_string(),
                Health::Inaccessible(since) => format!(
                    "inaccessible for {} s",
                    now.saturating_duration_since(since).as_secs()
                ),
                Health::Ok => "broken".to_string(),
            };
            let cover = self
                .coverer(i)
                .map(|s| format!("covered by {}", self.name(s)))
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

impl Controller for EtcdController {
    fn handle(&mut self, now: Instant, input: Input) {
        match input {
            Input::Etcd(o) => self.on_outcome(now, o),
            Input::Beacon { sender, emits } => {
                self.heard_beacon |= super::from_peer(&self.members, self.me, &sender);
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
            Input::FailbackCommanded => self.failback_commanded = true,
            // The lease fences this controller: a cut link fails its
            // keep-alives.
            Input::Link { .. } => {}
            Input::CopyDone { from, ok } => {
                if let Role::Copying {
                    from: f,
                    since_unix_ms,
                } = self.role.clone()
                    && self.index(&from) == Some(f)
                {
                    if ok {
                        // And once more after the hand-back: what the
                        // failover server recorded during this copy.
                        self.reclaim(now, f, since_unix_ms, true);
                    } else {
                        self.set_role(now, Role::Covered { by: Some(f) });
                        self.retry_at = Some(now + self.settings.poll_interval);
                    }
                }
            }
            // The control plane's polls and requests are the embedded
            // controller's: here etcd says who is alive and who has a role.
            Input::Health { .. }
            | Input::ReleaseAsked { .. }
            | Input::HandBackAsked { .. }
            | Input::Released { .. } => {}
        }
        self.tick(now);
    }

    fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        let mut at = vec![self.next_read];
        match self.lease {
            Some(_) => at.push(self.next_keep_alive),
            None => at.push(self.grant_at),
        }
        at.extend(self.fence());
        at.extend(self.retry_at);
        at.extend(self.backoff);
        at.extend(self.publish_at);
        at.extend(self.hold_until);
        at.extend(self.last_takeover.map(|t| t + self.ttl()));
        for (i, p) in self.peers.iter().enumerate() {
            if let Health::Inaccessible(since) = self.health(i) {
                at.push(since + self.members[i].inaccessible_period + Duration::from_millis(1));
            }
            at.extend(p.heard_own.map(|t| t + silence(&self.settings)));
            at.extend(p.heard_other.map(|(t, _)| t + silence(&self.settings)));
            at.extend(
                p.broken_since
                    .map(|t| t + self.settings.poll_interval * 2 * self.members.len() as u32),
            );
        }
        at.extend(self.healthy_since.map(|t| t + self.settings.failback_delay));
        at.extend(self.covered_since.map(|t| t + self.settings.failback_delay));
        at.push(self.role_since + silence(&self.settings));
        at.into_iter().filter(|&t| t > self.last_now).min()
    }

    fn tick(&mut self, now: Instant) {
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
        let target = self.assignment(now);
        if self.members[self.me].standby {
            self.standby_tick(now, target);
        } else {
            self.recorder_tick(now);
        }
        self.upkeep(now);
    }

    fn wanted(&self) -> Vec<(String, Run)> {
        match &self.role {
            Role::Covering { owner, .. } => vec![(self.name(*owner), Run::Emit)],
            Role::Emitting { .. } => vec![(self.name(self.me), Run::Emit)],
            Role::Copying { .. } | Role::Reclaiming { .. } | Role::Acquiring { back: Some(_) } => {
                vec![(self.name(self.me), Run::Warm)]
            }
            Role::Standby
            | Role::Claiming { .. }
            | Role::HandingBack { .. }
            | Role::Starting
            | Role::Acquiring { back: None }
            | Role::Releasing { .. }
            | Role::Covered { .. } => Vec::new(),
        }
    }

    fn report(&self, _now: Instant) -> Report {
        let role = match &self.role {
            Role::Standby => ReportedRole::Standby,
            Role::Claiming { owner, .. } => ReportedRole::Claiming {
                owner: self.name(*owner),
            },
            Role::Covering {
                owner,
                since_unix_ms,
                ..
            } => ReportedRole::Covering {
                owner: self.name(*owner),
                since_unix_ms: *since_unix_ms,
            },
            Role::HandingBack { owner, .. } => ReportedRole::Claiming {
                owner: self.name(*owner),
            },
            r => ReportedRole::Recorder {
                emitting: matches!(r, Role::Emitting { .. }),
            },
        };
        Report {
            disks_broken: self.disks_broken,
            role,
            hears_beacons: self.hears_beacons(),
        }
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

    fn epoch(&self) -> Option<i64> {
        match self.role {
            Role::Emitting { epoch }
            | Role::Releasing { epoch }
            | Role::Covering { epoch, .. }
            | Role::HandingBack { epoch, .. } => Some(epoch).filter(|&e| e != 0),
            _ => None,
        }
    }

    fn fence(&self) -> Option<Instant> {
        if self.unprotected() {
            return None;
        }
        // Open only for a role held by a confirmed lease: a server that
        // just lost its role (or its lease, and got a new one) sends
        // nothing more, even from channels still stopping (a camera task
        // that resumes from a pause with frames queued). Closed since the
        // start when it is not.
        let holds = matches!(self.role, Role::Emitting { .. } | Role::Covering { .. });
        Some(match self.confirmed {
            Some(c) if holds => c + self.ttl() / 2,
            _ => self.started,
        })
    }
}
