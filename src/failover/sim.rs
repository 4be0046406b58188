//! A site in virtual time for the controllers' tests and fuzzing: servers
//! that die, restart, lose their link, their control port or their disks;
//! polls and multicast hearing delivered as the runtime would; actions
//! carried out; and the invariants checked after every step:
//! - never two servers emitting one owner's groups onto the LAN;
//! - only failover servers emit another server's channels;
//! - under `delay_failover` with material copying, the role never returns
//!   to its owner before the copy of the material it missed completed.
//!
//! With the etcd controller the world runs in real time against a real
//! etcd (started by the world, on loopback): leases expire on etcd's clock.
//! A server off the network reaches etcd no more than its peers.

use std::time::{Duration, Instant};

use super::{Action, Controller, Input, Member, Run, Settings};

/// One server of the simulated site.
pub struct Node {
    pub ctl: Box<dyn Controller>,
    pub alive: bool,
    /// Its control API answers (off: a hung API or a blocked port).
    pub api_up: bool,
    /// Its network link (off: nothing in or out, control or multicast).
    pub link_up: bool,
    /// Its port's carrier (off with a cut it can see: its cable, its
    /// switch port; on with a cut beyond them).
    pub carrier: bool,
    /// Since when its link is cut (`None`: on the LAN).
    cut_since: Option<Instant>,
    /// Since when it emits each owner's role, on the LAN or not.
    emitting_since: Vec<Option<Instant>>,
    pub disks_broken: bool,
    /// It has the site key: its beacons verify at the others, theirs at it
    /// (off: a server whose key is not the site's).
    pub has_key: bool,
    /// Its beacons reach the others (off: the beacon group blocked for
    /// them, while the control plane works).
    pub beacons_out: bool,
    /// Paused (SIGSTOP, a VM freeze): it sends, hears and answers nothing,
    /// and its controller sees no time pass until it is thawed.
    pub frozen: bool,
    /// A copy of its missing material in progress: from whom, done when.
    copy: Option<(String, Instant)>,
    /// A copy completed since its role last went to another server.
    copied: bool,
}

pub struct World {
    pub t0: Instant,
    pub now: Instant,
    pub settings: Settings,
    pub members: Vec<Member>,
    pub nodes: Vec<Node>,
    /// How long a material copy takes.
    pub copy_time: Duration,
    /// Who emitted each owner's channels onto the LAN at the last step.
    last_emitters: Vec<Vec<usize>>,
    /// Since when two servers emit an owner's channels.
    overlap_since: Vec<Option<Instant>>,
    next_poll: Instant,
    /// Events, for a failing test's message.
    pub log: Vec<String>,
    /// Role returns seen (owner, at).
    pub hand_backs: Vec<(usize, Instant)>,
    /// Violations of an invariant (empty in a correct world).
    pub violations: Vec<String>,
    /// The etcd of an etcd world, and each server's handle on it.
    #[cfg(feature = "etcd")]
    etcd: Option<EtcdWorld>,
}

#[cfg(feature = "etcd")]
struct EtcdWorld {
    _server: super::etcd_store::testing::EtcdServer,
    rt: tokio::runtime::Runtime,
    stores: Vec<super::etcd_store::Store>,
}

#[cfg(feature = "etcd")]
impl EtcdWorld {
    fn start(settings: &Settings, members: &[Member]) -> EtcdWorld {
        use super::etcd_store::{Connection, Store, testing::EtcdServer};
        let server = EtcdServer::start_local().expect("etcd starts (Debian's etcd-server)");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for the etcd client");
        let conn = Connection {
            endpoints: vec![server.endpoint.clone()],
            ..Default::default()
        };
        let stores = members
            .iter()
            .map(|m| Store::new(&conn, "/mcrelay/sim/", &m.name, settings))
            .collect();
        EtcdWorld {
            _server: server,
            rt,
            stores,
        }
    }
}

/// The wall clock at the start of the world, Unix ms.
const WALL0: u64 = 1_800_000_000_000;

/// The step of virtual time: a tenth of a poll.
pub fn step_of(settings: &Settings) -> Duration {
    settings.poll_interval / 10
}

impl World {
    pub fn new(settings: Settings, members: Vec<Member>) -> World {
        #[cfg(feature = "etcd")]
        let etcd = (settings.controller == super::ControllerKind::Etcd)
            .then(|| EtcdWorld::start(&settings, &members));
        let t0 = Instant::now();
        let nodes = members
            .iter()
            .map(|m| Node {
                ctl: super::controller(&settings, members.clone(), &m.name, t0, WALL0)
                    .expect("every member of the world has a controller"),
                alive: true,
                api_up: true,
                link_up: true,
                carrier: true,
                cut_since: None,
                emitting_since: vec![None; members.len()],
                disks_broken: false,
                has_key: true,
                beacons_out: true,
                frozen: false,
                copy: None,
                copied: false,
            })
            .collect();
        let n = members.len();
        World {
            #[cfg(feature = "etcd")]
            etcd,
            t0,
            now: t0,
            next_poll: t0,
            settings,
            members,
            nodes,
            copy_time: Duration::from_secs(3),
            last_emitters: vec![Vec::new(); n],
            overlap_since: vec![None; n],
            log: Vec::new(),
            hand_backs: Vec::new(),
            violations: Vec::new(),
        }
    }

    pub fn index(&self, name: &str) -> usize {
        self.members
            .iter()
            .position(|m| m.name == name)
            .unwrap_or_else(|| panic!("no server {name}"))
    }

    fn wall_ms(&self) -> u64 {
        WALL0 + self.now.duration_since(self.t0).as_millis() as u64
    }

    fn reachable(&self, a: usize, b: usize) -> bool {
        let up = |i: usize| {
            let n = &self.nodes[i];
            n.alive && n.link_up && !n.frozen
        };
        // `a` asks `b`: both on the network, `b`'s API answering.
        up(a) && up(b) && self.nodes[b].api_up
    }

    fn on_lan(&self, i: usize) -> bool {
        let n = &self.nodes[i];
        n.alive && n.link_up && !n.frozen
    }

    /// Who emits `owner`'s channels onto the LAN.
    pub fn emitters(&self, owner: usize) -> Vec<usize> {
        let name = &self.members[owner].name;
        (0..self.nodes.len())
            .filter(|&i| {
                self.on_lan(i)
                    && self.nodes[i].ctl.may_emit(self.now)
                    && self.nodes[i]
                        .ctl
                        .wanted()
                        .iter()
                        .any(|(o, r)| o == name && *r == Run::Emit)
            })
            .collect()
    }

    fn deliver(&mut self, to: usize, input: Input) {
        if !self.nodes[to].alive || self.nodes[to].frozen {
            return;
        }
        let now = self.now;
        self.nodes[to].ctl.handle(now, input);
        self.drain(to);
    }

    /// Carries out `i`'s actions (requests go only where the control
    /// plane reaches).
    fn drain(&mut self, i: usize) {
        while let Some(a) = self.nodes[i].ctl.poll_action() {
            let me = self.members[i].name.clone();
            if let Action::Etcd(op) = a {
                self.etcd_op(i, op);
                continue;
            }
            self.log.push(format!(
                "{:>7.2}s {me}: {a:?}",
                self.now.duration_since(self.t0).as_secs_f64()
            ));
            match a {
                Action::AskRelease { to } => {
                    let t = self.index(&to);
                    if self.reachable(i, t) {
                        self.deliver(t, Input::ReleaseAsked { by: me });
                    }
                }
                Action::AskHandBack { to, since_unix_ms } => {
                    let t = self.index(&to);
                    if self.reachable(i, t) {
                        self.deliver(
                            t,
                            Input::HandBackAsked {
                                owner: me,
                                since_unix_ms,
                            },
                        );
                    }
                }
                Action::ConfirmRelease { to, owner } => {
                    // The answer to `to`'s request: it goes back on the
                    // connection `to` opened.
                    let t = self.index(&to);
                    if self.reachable(t, i) {
                        // A failover server handing the role back.
                        if t == self.index(&owner) {
                            self.handed_back(t, i);
                        }
                        self.deliver(t, Input::Released { owner, by: me });
                    }
                }
                Action::StartCopy { from, .. } => {
                    self.nodes[i].copy = Some((from, self.now + self.copy_time));
                }
                Action::Etcd(_) => {}
            }
        }
    }

    /// A hand-back seen: the role returns to `owner` from `by`.
    fn handed_back(&mut self, owner: usize, by: usize) {
        if !self.members[by].standby {
            return;
        }
        self.hand_backs.push((owner, self.now));
        let m = &self.members[owner];
        if m.delay_failover && m.automatic_material_copying && !self.nodes[owner].copied {
            let at = self.now.duration_since(self.t0).as_secs_f64();
            self.violations.push(format!(
                "{at:.2}s: {} took its role back before its copy",
                m.name
            ));
        }
    }

    /// Carries out an etcd operation of server `i` (only while it is on the
    /// network) and gives it the outcome.
    #[cfg(feature = "etcd")]
    fn etcd_op(&mut self, i: usize, op: super::etcd::Op) {
        use super::etcd::{Op, Outcome};
        let Some(etcd) = &self.etcd else { return };
        if !op.routine() {
            let me = &self.members[i].name;
            self.log.push(format!(
                "{:>7.2}s {me}: Etcd({op:?})",
                self.now.duration_since(self.t0).as_secs_f64()
            ));
        }
        let outcome = if self.on_lan(i) {
            etcd.rt.block_on(etcd.stores[i].run(op.clone(), None))
        } else {
            Outcome::Failed {
                op: op.kind(),
                error: "cut off".into(),
            }
        };
        if let (Op::ConfirmRelease { owner, .. }, Outcome::Released { deleted: true, .. }) =
            (&op, &outcome)
        {
            let o = self.index(owner);
            if o != i {
                self.handed_back(o, i);
            }
        }
        // Straight to the controller: its next actions come out of the
        // loop of `drain` that called this (no recursion per operation).
        let now = self.now;
        self.nodes[i].ctl.handle(now, Input::Etcd(outcome));
    }

    #[cfg(not(feature = "etcd"))]
    fn etcd_op(&mut self, _i: usize, _op: super::etcd::Op) {}

    /// The next instant of the world: a step of virtual time, or of real
    /// time against etcd.
    fn advance(&mut self, step: Duration) {
        #[cfg(feature = "etcd")]
        if self.etcd.is_some() {
            let next = self.now + step;
            let now = Instant::now();
            if next > now {
                std::thread::sleep(next - now);
            }
            self.now = Instant::now();
            return;
        }
        self.now += step;
    }

    /// Runs `d` of virtual time.
    pub fn run(&mut self, d: Duration) {
        let end = self.now + d;
        let step = step_of(&self.settings);
        while self.now < end {
            self.advance(step);
            self.step();
        }
    }

    /// Runs until `f` holds (at most `limit`); returns how long it took.
    pub fn run_until(
        &mut self,
        limit: Duration,
        mut f: impl FnMut(&World) -> bool,
    ) -> Option<Duration> {
        let start = self.now;
        let step = step_of(&self.settings);
        while self.now.duration_since(start) < limit {
            if f(self) {
                return Some(self.now.duration_since(start));
            }
            self.advance(step);
            self.step();
        }
        f(self).then(|| self.now.duration_since(start))
    }

    fn step(&mut self) {
        let n = self.nodes.len();
        let now = self.now;
        // Copies finish (or fail, if the source went out of reach).
        for i in 0..n {
            if let Some((from, at)) = self.nodes[i].copy.clone()
                && now >= at
            {
                self.nodes[i].copy = None;
                let ok = self.reachable(i, self.index(&from));
                if ok {
                    self.nodes[i].copied = true;
                }
                self.deliver(i, Input::CopyDone { from, ok });
            }
        }
        // Polls.
        if now >= self.next_poll {
            self.next_poll = now + self.settings.poll_interval;
            for i in 0..n {
                for j in 0..n {
                    if i == j || !self.nodes[i].alive {
                        continue;
                    }
                    let report = self.reachable(i, j).then(|| self.nodes[j].ctl.report(now));
                    let server = self.members[j].name.clone();
                    self.deliver(i, Input::Health { server, report });
                }
            }
        }
        // Beacons: every server on the LAN hears every other's, which
        // says what it emits (nothing past its fence).
        for x in 0..n {
            // Only a server with a multicast interface sends beacons.
            if !self.on_lan(x) || !self.nodes[x].beacons_out || !self.members[x].multicast {
                continue;
            }
            let emits: Vec<(String, Option<i64>)> = if self.nodes[x].ctl.may_emit(now) {
                let epoch = self.nodes[x].ctl.epoch();
                self.nodes[x]
                    .ctl
                    .wanted()
                    .into_iter()
                    .filter(|(_, r)| *r == Run::Emit)
                    .map(|(o, _)| (o, epoch))
                    .collect()
            } else {
                Vec::new()
            };
            for y in 0..n {
                // A beacon verifies only where both have the site key, and
                // is heard only by a server with a multicast interface.
                let verified =
                    self.nodes[x].has_key && self.nodes[y].has_key && self.members[y].multicast;
                if y != x && self.on_lan(y) && verified {
                    self.deliver(
                        y,
                        Input::Beacon {
                            sender: self.members[x].name.clone(),
                            emits: emits.clone(),
                        },
                    );
                }
            }
        }
        for i in 0..n {
            if self.nodes[i].alive && !self.nodes[i].frozen {
                self.nodes[i].ctl.tick(now);
                self.drain(i);
            }
        }
        // What each server emits, on the LAN or not.
        for i in 0..n {
            let wanted = if self.nodes[i].alive && self.nodes[i].ctl.may_emit(now) {
                self.nodes[i].ctl.wanted()
            } else {
                Vec::new()
            };
            for o in 0..n {
                let on = wanted
                    .iter()
                    .any(|(w, r)| *w == self.members[o].name && *r == Run::Emit);
                let since = &mut self.nodes[i].emitting_since[o];
                match (on, *since) {
                    (true, None) => *since = Some(now),
                    (false, Some(_)) => *since = None,
                    _ => {}
                }
            }
            let cut = !self.nodes[i].link_up;
            let c = &mut self.nodes[i].cut_since;
            match (cut, *c) {
                (true, None) => *c = Some(now),
                (false, Some(_)) => *c = None,
                _ => {}
            }
        }
        self.check();
    }

    fn check(&mut self) {
        let t = self.now.duration_since(self.t0).as_secs_f64();
        for owner in 0..self.nodes.len() {
            let now = self.emitters(owner);
            let name = &self.members[owner].name;
            // Multicast: never two on the groups. A server without groups
            // (TCP) is known to be covered only by its next poll.
            let grace = if self.members[owner].multicast {
                Duration::ZERO
            } else {
                self.settings.poll_interval + step_of(&self.settings)
            };
            if now.len() > 1 {
                let since = *self.overlap_since[owner].get_or_insert(self.now);
                if self.now.duration_since(since) > grace {
                    self.violations
                        .push(format!("{t:.2}s: {name} emitted by {now:?}"));
                }
            } else {
                self.overlap_since[owner] = None;
            }
            // A server cut off from the LAN stops before a failover server
            // may take its groups: never still sending (into its cut
            // segment, where some viewers may be) while another covers it.
            // Embedded, that holds for a cut it sees (its carrier) or when
            // it has two peers or more to hear (README: a site of two
            // cannot tell a cut beyond its port from a dead standby).
            let peers = (0..self.members.len())
                .filter(|&i| i != owner && self.members[i].multicast)
                .count();
            let promised = self.members[owner].multicast
                && (self.settings.controller != super::ControllerKind::Embedded
                    || !self.nodes[owner].carrier
                    || peers >= 2);
            // Who started emitting the owner's role since the owner's cut
            // (a cover that was already on, cut off itself, is another
            // fault: a cut failover server does not fence itself).
            let cut_at = self.nodes[owner].cut_since;
            let started_since_cut = |e: usize| {
                cut_at.is_some_and(|c| self.nodes[e].emitting_since[owner].is_some_and(|s| s >= c))
            };
            // The promise is for a recorder that was emitting when it was
            // cut. One that takes its role back on its own within a moment
            // of a cut it has not noticed yet (`HEARING` of the embedded
            // controller) is a known limit (README).
            let emitting_when_cut = cut_at
                .is_some_and(|c| self.nodes[owner].emitting_since[owner].is_some_and(|s| s < c));
            let cut_still_sends = promised
                && emitting_when_cut
                && self.nodes[owner].alive
                && !self.nodes[owner].frozen
                && !self.on_lan(owner)
                && self.nodes[owner].ctl.may_emit(self.now)
                && self.nodes[owner]
                    .ctl
                    .wanted()
                    .iter()
                    .any(|(o, r)| o == name && *r == Run::Emit);
            if cut_still_sends && now.iter().any(|&e| e != owner && started_since_cut(e)) {
                self.violations.push(format!(
                    "{t:.2}s: {name}, cut off, still emits while {now:?} cover it"
                ));
            }
            for &e in &now {
                if e != owner && !self.members[e].standby {
                    self.violations.push(format!(
                        "{t:.2}s: {} (not a failover server) emits {name}",
                        self.members[e].name
                    ));
                }
            }
            // A failover server that starts covering the owner records
            // material the owner will have to copy back.
            let before = &self.last_emitters[owner];
            if now.iter().any(|e| *e != owner && !before.contains(e)) {
                self.nodes[owner].copied = false;
            }
            self.last_emitters[owner] = now;
        }
    }

    pub fn kill(&mut self, name: &str) {
        let i = self.index(name);
        self.nodes[i].alive = false;
        self.nodes[i].frozen = false;
        self.nodes[i].copy = None;
        self.log_event(format!("kill {name}"));
    }

    /// Starts a dead server again: a new controller, as a new process.
    pub fn restart(&mut self, name: &str) {
        let i = self.index(name);
        // Each process reads the wall clock at its start (a restarted one
        // a little off: clocks are never quite the same).
        let wall = self.wall_ms() + 7;
        let ctl = super::controller(&self.settings, self.members.clone(), name, self.now, wall)
            .expect("a server of the world (found by index above)");
        let n = &mut self.nodes[i];
        n.ctl = ctl;
        n.alive = true;
        self.log_event(format!("restart {name}"));
        let all_broken = self.nodes[i].disks_broken;
        self.deliver(i, Input::Disks { all_broken });
        let up = self.nodes[i].carrier;
        self.deliver(i, Input::Link { up });
    }

    /// Pauses `name` (SIGSTOP) or lets it go on (SIGCONT).
    pub fn set_frozen(&mut self, name: &str, frozen: bool) {
        let i = self.index(name);
        self.nodes[i].frozen = frozen;
        self.log_event(format!(
            "{} {name}",
            if frozen { "SIGSTOP" } else { "SIGCONT" }
        ));
    }

    /// Cuts or heals `name`'s link beyond its port: the server's carrier
    /// stays up (a switch's uplink, a VLAN), so only what it hears tells it.
    pub fn set_link_beyond_port(&mut self, name: &str, up: bool) {
        let i = self.index(name);
        self.nodes[i].link_up = up;
        self.log_event(format!(
            "link beyond the port of {name} {}",
            if up { "up" } else { "down" }
        ));
    }

    /// Cuts or heals `name`'s link; the server sees its carrier go.
    pub fn set_link(&mut self, name: &str, up: bool) {
        let i = self.index(name);
        self.nodes[i].link_up = up;
        self.nodes[i].carrier = up;
        self.log_event(format!("link {name} {}", if up { "up" } else { "down" }));
        self.deliver(i, Input::Link { up });
    }

    /// Gives `name` the site key, or another one.
    pub fn set_key(&mut self, name: &str, right: bool) {
        let i = self.index(name);
        self.nodes[i].has_key = right;
        self.log_event(format!(
            "key {name} {}",
            if right { "right" } else { "wrong" }
        ));
    }

    /// Lets `name`'s beacons reach the others, or not.
    pub fn set_beacons_out(&mut self, name: &str, out: bool) {
        let i = self.index(name);
        self.nodes[i].beacons_out = out;
        self.log_event(format!(
            "beacons of {name} {}",
            if out { "out" } else { "lost" }
        ));
    }

    pub fn set_api(&mut self, name: &str, up: bool) {
        let i = self.index(name);
        self.nodes[i].api_up = up;
        self.log_event(format!("api {name} {}", if up { "up" } else { "down" }));
    }

    pub fn set_disks_broken(&mut self, name: &str, broken: bool) {
        let i = self.index(name);
        self.nodes[i].disks_broken = broken;
        self.log_event(format!("disks {name} broken={broken}"));
        self.deliver(i, Input::Disks { all_broken: broken });
    }

    /// One fault (or its repair) by number: 0 kill or restart, 1 the link,
    /// 2 the control API, 3 the disks, 5 a pause, 6 the link beyond the
    /// port (each toggled), 4 a failback command, anything else nothing.
    pub fn fault(&mut self, name: &str, kind: u8) {
        let i = self.index(name);
        match kind {
            0 if self.nodes[i].alive => self.kill(name),
            0 => self.restart(name),
            1 => {
                let up = !self.nodes[i].link_up;
                self.set_link(name, up);
            }
            2 => {
                let up = !self.nodes[i].api_up;
                self.set_api(name, up);
            }
            3 => {
                let b = !self.nodes[i].disks_broken;
                self.set_disks_broken(name, b);
            }
            4 => self.command_failback(name),
            5 => {
                let f = !self.nodes[i].frozen;
                self.set_frozen(name, f);
            }
            6 => {
                let up = !self.nodes[i].link_up;
                self.set_link_beyond_port(name, up);
            }
            _ => {}
        }
    }

    pub fn command_failback(&mut self, name: &str) {
        let i = self.index(name);
        self.deliver(i, Input::FailbackCommanded);
    }

    fn log_event(&mut self, e: String) {
        let t = self.now.duration_since(self.t0).as_secs_f64();
        self.log.push(format!("{t:>7.2}s == {e}"));
    }

    /// Who emits `owner` now, by name.
    pub fn emitter_names(&self, owner: &str) -> Vec<String> {
        self.emitters(self.index(owner))
            .into_iter()
            .map(|i| self.members[i].name.clone())
            .collect()
    }

    /// The log, for a failing assertion.
    pub fn story(&self) -> String {
        let mut s = self.log.join("\n");
        if !self.violations.is_empty() {
            s.push_str("\nviolations:\n");
            s.push_str(&self.violations.join("\n"));
        }
        s
    }
}
