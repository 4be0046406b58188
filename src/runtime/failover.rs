//! Drives the server's failover controller ([`crate::failover`]): polls
//! the peers' `/health`, sends this server's beacons and hears the
//! others' (verified, [`super::beacons`]), tells the controller what it
//! saw with the time, and runs the channels it wants. The only place of
//! the failover with sockets and clocks.

use std::collections::{BTreeMap, HashMap};
use std::net::{SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::Server;
use super::beacons::{self, BeaconLog, BeaconSender, BeaconStatus};
use super::client::HttpClient;
use crate::channel::resume::{ChannelPoint, StreamPoint, unix_ms};
use crate::config::{Secret, ServerConfig, Site, plan};
use crate::failover::{
    self, Action, Controller, ControllerKind, Input, Member, Report, ReportedRole, Run, SiteView,
};
use crate::media::TrackKind;
use crate::metrics::{ServerLabel, ServerStateLabel};

/// What the control API shows of the controller.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FailoverStatus {
    /// `none` or `embedded`.
    pub controller: Option<ControllerKind>,
    /// What this server says of itself to its peers.
    pub report: Option<Report>,
    /// The site as this server sees it.
    pub site: SiteView,
    /// The beacons heard: verified, refused (forged ones among them).
    pub beacons: BeaconStatus,
}

/// How often the published status is refreshed without a change of role.
const STATUS_EVERY: Duration = Duration::from_millis(100);
/// etcd operations failing in a row, for the log.
#[derive(Default)]
struct EtcdFailing {
    /// The first failure since the last answer.
    since: Option<Instant>,
    count: u32,
    /// The last warning.
    warned: Option<Instant>,
    /// A warning was said since the last answer.
    said: bool,
}

/// How often a warning repeats while etcd does not answer.
const ETCD_WARN_EVERY: Duration = Duration::from_secs(10);
/// A request to a peer (release, hand back) is given this long.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// Where each stream stands as its emitter's beacons said (or as
/// released), by channel (ids are unique in the site) and kind.
type Learned = HashMap<(u32, TrackKind), StreamPoint>;

/// The points of the streams a server stopped sending, by channel.
pub type Points = BTreeMap<u32, ChannelPoint>;

/// A peer's request through the control API, with where the answer goes:
/// the points of the streams released, or why not.
pub struct ApiRequest {
    pub input: Input,
    pub reply: tokio::sync::oneshot::Sender<Result<Points, String>>,
}

/// How to reach a server of the site with its password.
#[derive(Clone)]
struct Peer {
    name: String,
    addr: SocketAddr,
    user: String,
    password: Option<Secret>,
}

pub struct Driver {
    ctl: Box<dyn Controller>,
    kind: ControllerKind,
    me: String,
    servers: Vec<ServerConfig>,
    poll: Duration,
    client: HttpClient,
    tx: mpsc::Sender<Input>,
    rx: mpsc::Receiver<Input>,
    status: watch::Sender<FailoverStatus>,
    /// Where each channel's stream stands, by its emitter's beacons.
    learned: Arc<Mutex<Learned>>,
    /// This server's beacons (`None`: no failover, or no interface).
    beacon: Option<BeaconSender>,
    /// Verified beacons of the other servers.
    beacon_tx: mpsc::Sender<beacons::Heard>,
    beacon_rx: mpsc::Receiver<beacons::Heard>,
    beacon_log: Arc<BeaconLog>,
    /// The site key (a site with failover has one).
    key: Option<crate::failover::beacon::SiteKey>,
    /// Every server's channels and tracks, for the beacons' verifier.
    layouts: Vec<(String, crate::failover::beacon::Layout)>,
    /// The site's beacon group.
    beacon_group: SocketAddrV4,
    /// This server's multicast interface address, and its link's state
    /// as last told to the controller.
    link: Option<(std::net::Ipv4Addr, bool)>,
    applied: Option<Vec<(String, Run)>>,
    disks_broken: Option<bool>,
    cancel: CancellationToken,
    peers: Vec<Peer>,
    api_tx: mpsc::Sender<ApiRequest>,
    api_rx: mpsc::Receiver<ApiRequest>,
    /// This server's settings.
    local: ServerConfig,
    /// When this server decided to take over a server (owner, wall
    /// clock): the start of the takeover time.
    decided: Option<(String, SystemTime)>,
    /// The servers' states last exported as metrics.
    states: Vec<(String, &'static str)>,
    /// When the status was last published.
    status_at: Option<Instant>,
    /// The epoch of the role emitted under, as last applied.
    epoch: Option<i64>,
    /// etcd operations failing, for the log.
    etcd_failing: EtcdFailing,
    /// The etcd controller's handle on the cluster.
    #[cfg(feature = "etcd")]
    etcd: Option<crate::failover::etcd_store::Store>,
}

impl Driver {
    pub fn new(site: &Site, me: &str, cancel: CancellationToken) -> anyhow::Result<Driver> {
        let settings = site.file.site.failover.settings();
        let members = Member::of_site(site);
        let now = Instant::now();
        let local = site
            .server(me)
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("no server named {me:?} in the site"))?;
        let ctl = failover::controller(
            &settings,
            members.clone(),
            me,
            now,
            unix_ms(SystemTime::now()),
        )
        .map_err(anyhow::Error::msg)?;
        #[cfg(feature = "etcd")]
        let etcd = match settings.controller {
            ControllerKind::Etcd => {
                let conn = crate::failover::etcd_store::Connection::of_site(site)
                    .map_err(anyhow::Error::msg)?;
                Some(crate::failover::etcd_store::Store::new(
                    &conn,
                    &site.etcd_prefix(),
                    me,
                    &settings,
                ))
            }
            _ => None,
        };
        #[cfg(not(feature = "etcd"))]
        if settings.controller == ControllerKind::Etcd {
            anyhow::bail!(
                "the site chooses controller = \"etcd\", and this mcrelay was built without it: build it with --features etcd"
            );
        }
        let (tx, rx) = mpsc::channel(1024);
        let (api_tx, api_rx) = mpsc::channel(16);
        let (beacon_tx, beacon_rx) = mpsc::channel(beacons::QUEUE);
        let key = if settings.controller == ControllerKind::None {
            None
        } else {
            site.site_key()?
        };
        let layouts = site
            .servers()
            .iter()
            .map(|s| {
                let channels = s
                    .channels
                    .iter()
                    .map(|c| {
                        let tracks = c
                            .tracks
                            .iter()
                            .copied()
                            .filter(|k| *k != TrackKind::Video)
                            .collect();
                        (c.id, tracks)
                    })
                    .collect();
                (s.name.clone(), crate::failover::beacon::Layout { channels })
            })
            .collect();
        let peers = site
            .servers()
            .iter()
            .map(|s| Peer {
                name: s.name.clone(),
                addr: s.control,
                user: s
                    .rtsp
                    .as_ref()
                    .map_or("admin".to_string(), |r| r.user.clone()),
                password: site.password(s).ok().flatten(),
            })
            .collect();
        Ok(Driver {
            #[cfg(feature = "etcd")]
            etcd,
            epoch: None,
            etcd_failing: EtcdFailing::default(),
            status_at: None,
            decided: None,
            states: Vec::new(),
            local,
            peers,
            api_tx,
            api_rx,
            ctl,
            kind: settings.controller,
            me: me.to_string(),
            servers: site.servers().to_vec(),
            poll: settings.poll_interval,
            client: HttpClient::new(),
            tx,
            rx,
            status: watch::Sender::new(FailoverStatus {
                controller: Some(settings.controller),
                ..Default::default()
            }),
            learned: Arc::default(),
            beacon: None,
            beacon_tx,
            beacon_rx,
            beacon_log: Arc::default(),
            key,
            layouts,
            beacon_group: site.file.site.failover.beacon_group,
            link: None,
            applied: None,
            disks_broken: None,
            cancel,
        })
    }

    pub fn status(&self) -> watch::Receiver<FailoverStatus> {
        self.status.subscribe()
    }

    /// Where the control API sends peers' requests.
    pub fn requests(&self) -> mpsc::Sender<ApiRequest> {
        self.api_tx.clone()
    }

    fn peer(&self, name: &str) -> Option<&Peer> {
        self.peers.iter().find(|p| p.name == name)
    }

    /// Opens this server's beacon sender and starts the listener on the
    /// beacon group (every server: a recorder learns from them who covers
    /// it, a standby who still emits). Nothing joins a media group.
    pub fn start_beacons(&mut self, server: &Server) {
        if self.kind == ControllerKind::None {
            return;
        }
        let Some(key) = self.key.clone() else {
            // The site file's check refuses a site with failover and no
            // key; a site without protected servers needs none.
            tracing::info!("the site has no key: this server sends and hears no beacon");
            return;
        };
        let Some(iface) = self.local.multicast.as_ref().map(|m| m.interface) else {
            let why = format!(
                "server {:?} has no [server.multicast] interface: it sends and hears no beacon, so it takes no server over and no standby can tell whether it emits",
                self.me
            );
            tracing::warn!("{why}");
            self.beacon_log.problem(why);
            return;
        };
        self.link = Some((iface, true));
        match BeaconSender::open(
            &self.me,
            self.beacon_group,
            iface,
            key.clone(),
            server.fence,
            server.metrics.failover.clone(),
        ) {
            Ok(s) => self.beacon = Some(s),
            Err(e) => {
                tracing::error!(error = %e, group = %self.beacon_group, "cannot send beacons: this server's peers cannot tell that it emits")
            }
        }
        // On a source-specific group, the servers that may send there.
        let ssm_sources = if plan::is_ssm(*self.beacon_group.ip()) {
            self.servers
                .iter()
                .filter_map(|s| s.multicast.as_ref().map(|m| m.interface))
                .collect()
        } else {
            Vec::new()
        };
        let listen = beacons::Listen {
            me: self.me.clone(),
            group: self.beacon_group,
            interface: iface,
            ssm_sources,
            key,
            site: self.layouts.clone(),
        };
        server.tasks.spawn(beacons::listen(
            listen,
            self.beacon_tx.clone(),
            self.beacon_log.clone(),
            server.metrics.failover.clone(),
            self.cancel.clone(),
        ));
    }

    /// Takes a verified beacon: its points into what was learned, its
    /// roles to the controller.
    fn heard(&mut self, b: beacons::Heard) {
        {
            let mut l = self.learned.lock().unwrap_or_else(|e| e.into_inner());
            for e in &b.emits {
                for c in &e.channels {
                    for t in &c.tracks {
                        let newer = l
                            .get(&(c.id, t.kind))
                            .is_none_or(|k| k.sent_unix_ms <= t.point.sent_unix_ms);
                        if newer {
                            l.insert((c.id, t.kind), t.point);
                        }
                    }
                }
            }
        }
        let emits = b.emits.into_iter().map(|e| (e.owner, e.epoch)).collect();
        self.ctl.handle(
            Instant::now(),
            Input::Beacon {
                sender: b.sender,
                emits,
            },
        );
    }

    /// Tells the controller when this server's link goes down or up (read
    /// at each beacon: the interface's carrier and state).
    fn watch_link(&mut self, now: Instant) {
        let Some((iface, told)) = self.link else {
            return;
        };
        if self
            .beacon
            .as_ref()
            .is_some_and(|b| b.due().is_some_and(|t| now < t))
        {
            return;
        }
        let up = beacons::link_up(iface);
        if up != told {
            self.link = Some((iface, up));
            if up {
                tracing::info!(interface = %iface, "the link of this server's multicast interface is up again");
            } else {
                tracing::warn!(interface = %iface, "the link of this server's multicast interface is down: a protected recorder stops sending until it is back and it has heard the site");
            }
            self.ctl.handle(now, Input::Link { up });
        }
    }

    /// Sends this server's beacon if one is due: the roles it emits now,
    /// with their channels' points.
    fn beat(&mut self, server: &Server) {
        let now = Instant::now();
        self.watch_link(now);
        let Some(sender) = self.beacon.as_mut() else {
            return;
        };
        if sender.due().is_some_and(|t| now < t) {
            return;
        }
        let epoch = self.ctl.epoch();
        let emitted = self
            .applied
            .iter()
            .flatten()
            .filter(|(_, r)| *r == Run::Emit)
            .map(|(owner, _)| {
                let points = server
                    .channels_of(owner)
                    .iter()
                    .filter_map(|c| Some((c.spec.id, c.point()?)))
                    .collect();
                (owner.clone(), epoch, points)
            })
            .collect();
        sender.beat(now, emitted);
    }

    /// Polls, listens and decides until cancelled.
    pub async fn run(mut self, server: &mut Server) {
        self.reconcile(server);
        if self.kind == ControllerKind::None {
            self.cancel.cancelled().await;
            return;
        }
        let mut tick = tokio::time::interval(self.poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let wake = self
                .ctl
                .poll_timeout()
                .unwrap_or_else(|| Instant::now() + self.poll);
            let wake = self
                .beacon
                .as_ref()
                .and_then(BeaconSender::due)
                .map_or(wake, |b| b.min(wake));
            let mut reply = None;
            tokio::select! {
                () = self.cancel.cancelled() => return,
                Some(req) = self.api_rx.recv() => {
                    self.ctl.handle(Instant::now(), req.input);
                    reply = Some(req.reply);
                }
                _ = tick.tick() => {
                    // On etcd, the cluster says who is alive.
                    if self.kind != ControllerKind::Etcd {
                        self.poll_peers();
                    }
                    let broken = server.all_disks_broken();
                    if self.disks_broken != Some(broken) {
                        self.disks_broken = Some(broken);
                        self.ctl.handle(Instant::now(), Input::Disks { all_broken: broken });
                    }
                    self.ctl.tick(Instant::now());
                }
                Some(b) = self.beacon_rx.recv() => self.heard(b),
                Some(input) = self.rx.recv() => {
                    self.take_released(&input);
                    self.say_etcd(&input);
                    self.ctl.handle(Instant::now(), input);
                }
                () = tokio::time::sleep_until(wake.into()) => self.ctl.tick(Instant::now()),
            }
            // The lease just confirmed (or not): before anything is sent.
            server.fence.set(self.ctl.fence());
            let mut confirmed = None;
            let mut etcd_ops = Vec::new();
            while let Some(a) = self.ctl.poll_action() {
                match a {
                    Action::ConfirmRelease { owner, .. } => confirmed = Some(owner),
                    Action::Etcd(op) => {
                        // A release through etcd: the channels, taken
                        // before they stop, give their last points.
                        let channels = match &op {
                            crate::failover::etcd::Op::ConfirmRelease { owner, .. } => {
                                Some(server.channels_of(owner))
                            }
                            _ => None,
                        };
                        etcd_ops.push((op, channels));
                    }
                    a => self.carry_out(server, a),
                }
            }
            // The released channels, taken before they stop.
            let released = confirmed.as_deref().map(|o| server.channels_of(o));
            self.reconcile(server);
            self.beat(server);
            for (op, channels) in etcd_ops {
                self.run_etcd(op, channels);
            }
            if let Some(reply) = reply {
                match released {
                    Some(channels) => {
                        tokio::spawn(answer_release(channels, reply));
                    }
                    None => {
                        let _ = reply.send(Err("not released: this server keeps the role".into()));
                    }
                }
            }
        }
    }

    /// Carries out an etcd operation in the background; its outcome comes
    /// back as an input. A release first waits for `channels` to stop and
    /// writes their last points with it.
    #[cfg(feature = "etcd")]
    fn run_etcd(
        &self,
        op: crate::failover::etcd::Op,
        channels: Option<Vec<Arc<crate::channel::Channel>>>,
    ) {
        let Some(store) = self.etcd.clone() else {
            return;
        };
        let tx = self.tx.clone();
        if !op.routine() {
            tracing::info!(?op, "etcd");
        }
        tokio::spawn(async move {
            let points = match channels {
                Some(c) if !c.is_empty() => serde_json::to_string(&last_points(c).await).ok(),
                _ => None,
            };
            let outcome = store.run(op, points).await;
            match &outcome {
                crate::failover::etcd::Outcome::Failed { op, error } => {
                    tracing::debug!(?op, %error, "etcd operation failed")
                }
                o @ (crate::failover::etcd::Outcome::Acquired { .. }
                | crate::failover::etcd::Outcome::Released { .. }) => {
                    tracing::info!(outcome = ?o, "etcd")
                }
                _ => {}
            }
            let _ = tx.send(Input::Etcd(outcome)).await;
        });
    }

    #[cfg(not(feature = "etcd"))]
    fn run_etcd(
        &self,
        _op: crate::failover::etcd::Op,
        _channels: Option<Vec<Arc<crate::channel::Channel>>>,
    ) {
    }

    /// The streams' last points a server wrote with its release on etcd,
    /// read back: where they are later than what was heard on the groups,
    /// a takeover continues them.
    fn take_released(&self, input: &Input) {
        let Input::Etcd(crate::failover::etcd::Outcome::Read { snapshot, .. }) = input else {
            return;
        };
        for (owner, json) in &snapshot.released {
            match serde_json::from_str::<Points>(json) {
                Ok(points) => learn(&self.learned, points, true),
                Err(e) => {
                    tracing::debug!(owner = %owner, error = %e, "released points do not parse")
                }
            }
        }
    }

    /// Says when etcd stops answering (a warning at most every
    /// [`ETCD_WARN_EVERY`], however often it fails and answers in turn)
    /// and when it answers again after a warning.
    fn say_etcd(&mut self, input: &Input) {
        use crate::failover::etcd::Outcome;
        let Input::Etcd(o) = input else { return };
        let now = Instant::now();
        let f = &mut self.etcd_failing;
        match o {
            Outcome::Failed { op, error } => {
                let since = *f.since.get_or_insert(now);
                f.count += 1;
                if f.warned
                    .is_none_or(|t| now.duration_since(t) >= ETCD_WARN_EVERY)
                {
                    f.warned = Some(now);
                    f.said = true;
                    tracing::warn!(?op, %error, failed = f.count, for_ms = now.duration_since(since).as_millis() as u64,
                        "etcd does not answer: this server keeps no role it cannot confirm and takes none over");
                }
            }
            _ => {
                if let (Some(since), true) = (f.since, f.said) {
                    tracing::info!(
                        failed = f.count,
                        for_ms = now.duration_since(since).as_millis() as u64,
                        "etcd answers again"
                    );
                }
                f.since = None;
                f.count = 0;
                f.said = false;
            }
        }
    }

    /// Carries out a request to a peer, or a copy, in the background; the
    /// outcome comes back as an input.
    fn carry_out(&self, server: &Server, action: Action) {
        let (path, peer, released_owner) = match &action {
            Action::AskRelease { to } => (
                format!("/failover/release?by={}", self.me),
                to.clone(),
                to.clone(),
            ),
            Action::AskHandBack { to, since_unix_ms } => (
                format!("/failover/handback?owner={}&since={since_unix_ms}", self.me),
                to.clone(),
                self.me.clone(),
            ),
            Action::StartCopy {
                from,
                since_unix_ms,
            } => {
                self.start_copy(server, from, *since_unix_ms);
                return;
            }
            Action::ConfirmRelease { .. } | Action::Etcd(_) => return,
        };
        let Some(p) = self.peer(&peer).cloned() else {
            return;
        };
        let Some(password) = p.password.clone() else {
            tracing::warn!(peer = %p.name, "no password for server {:?}: cannot ask it to hand over", p.name);
            return;
        };
        let (client, tx, learned) = (self.client.clone(), self.tx.clone(), self.learned.clone());
        tracing::info!(peer = %p.name, ?action, "asking");
        tokio::spawn(async move {
            match client
                .post_digest(p.addr, &path, &p.user, &password, REQUEST_TIMEOUT)
                .await
            {
                Ok((200, body)) => {
                    let points: Points = serde_json::from_slice(&body).unwrap_or_default();
                    learn(&learned, points, false);
                    let _ = tx
                        .send(Input::Released {
                            owner: released_owner,
                            by: p.name.clone(),
                        })
                        .await;
                }
                Ok((code, body)) => {
                    tracing::info!(peer = %p.name, code, answer = %String::from_utf8_lossy(&body).trim(), "hand-over refused");
                }
                Err(e) => tracing::info!(peer = %p.name, error = %e, "hand-over request failed"),
            }
        });
    }

    /// Copies this server's material missing since `since_unix_ms` from
    /// `from`, every channel; the outcome comes back as `CopyDone`.
    fn start_copy(&self, server: &Server, from: &str, since_unix_ms: u64) {
        let (Some(src), Some(dst)) = (self.peer(from), self.peer(&self.me)) else {
            return;
        };
        let (Some(sp), Some(dp)) = (src.password.clone(), dst.password.clone()) else {
            tracing::warn!("material copy needs both servers' passwords");
            let tx = self.tx.clone();
            let from = from.to_string();
            tokio::spawn(async move { tx.send(Input::CopyDone { from, ok: false }).await });
            return;
        };
        let endpoint = |p: &Peer, password: Secret| crate::record::copy::Endpoint {
            name: p.name.clone(),
            addr: p.addr,
            user: p.user.clone(),
            password,
        };
        let (from_ep, to_ep) = (endpoint(src, sp), endpoint(dst, dp));
        let channels: Vec<u32> = server.local.channels.iter().map(|c| c.id).collect();
        let (tx, from, client) = (self.tx.clone(), from.to_string(), self.client.clone());
        let metrics = server.metrics.failover.clone();
        // A little before the cover began: segments rotate at key frames.
        let from_ms = (since_unix_ms as i64).saturating_sub(60_000);
        tracing::info!(from = %from, channels = channels.len(), "copying the material recorded while covered");
        tokio::spawn(async move {
            // A failover server that just stopped finishes its last segment
            // first (synced, renamed, indexed): give it a moment.
            tokio::time::sleep(Duration::from_secs(2)).await;
            let to_ms = unix_ms(SystemTime::now()) as i64 + 60_000;
            let mut ok = true;
            for ch in channels {
                match crate::record::copy::copy_missing(
                    &client,
                    &from_ep,
                    &to_ep,
                    ch,
                    from_ms,
                    to_ms,
                    None,
                    |_| {},
                )
                .await
                {
                    Ok(r) => {
                        tracing::info!(
                            channel = ch,
                            copied = r.copied,
                            bytes = r.copied_bytes,
                            failed = r.failed.len(),
                            "material copied back"
                        );
                        metrics.copied_segments.inc_by(r.copied as u64);
                        metrics.copied_bytes.inc_by(r.copied_bytes);
                        ok &= r.failed.is_empty();
                    }
                    Err(e) => {
                        tracing::warn!(channel = ch, error = %e, "material copy failed; tried again later");
                        ok = false;
                    }
                }
            }
            let _ = tx.send(Input::CopyDone { from, ok }).await;
        });
    }

    fn poll_peers(&self) {
        let timeout = self.poll.mul_f32(0.8);
        for s in self.servers.iter().filter(|s| s.name != self.me) {
            let (client, tx, name, addr) = (
                self.client.clone(),
                self.tx.clone(),
                s.name.clone(),
                s.control,
            );
            tokio::spawn(async move {
                let report = poll_health(&client, addr, timeout).await;
                let _ = tx
                    .send(Input::Health {
                        server: name,
                        report,
                    })
                    .await;
            });
        }
    }

    /// Runs the channels the controller wants, and publishes its status.
    pub(super) fn reconcile(&mut self, server: &mut Server) {
        let now = Instant::now();
        let wanted = self.ctl.wanted();
        let epoch = self.ctl.epoch();
        let changed = self.applied.as_ref() != Some(&wanted) || epoch != self.epoch;
        // The status for /health and /status: on a change, else at most
        // every STATUS_EVERY (group listeners give the controller many
        // inputs a second).
        if changed
            || self
                .status_at
                .is_none_or(|t| now.duration_since(t) >= STATUS_EVERY)
        {
            self.status_at = Some(now);
            let report = self.ctl.report(now);
            match &report.role {
                ReportedRole::Claiming { owner } | ReportedRole::Covering { owner, .. } => {
                    if self.decided.as_ref().is_none_or(|(o, _)| o != owner) {
                        self.decided = Some((owner.clone(), SystemTime::now()));
                    }
                }
                _ => self.decided = None,
            }
            let site = self.ctl.view(now);
            let states = site.states();
            if states != self.states {
                let family = &server.metrics.failover.server_state;
                family.clear();
                for (name, state) in &states {
                    family
                        .get_or_create(&ServerStateLabel {
                            server: name.clone(),
                            state,
                        })
                        .set(1);
                }
                self.states = states;
            }
            let heard = self.beacon_log.status(now);
            self.status.send_modify(|s| {
                s.report = Some(report);
                s.site = site;
                s.beacons = heard;
            });
        }
        if !changed {
            return;
        }
        let before = self.applied.take().unwrap_or_default();
        for (owner, run) in &wanted {
            if !before.contains(&(owner.clone(), *run)) && *owner != self.me {
                tracing::warn!(owner = %owner, run = ?run, epoch, "taking over the channels of server {owner:?} on its groups");
            } else if *owner == self.me && *run == Run::Emit && epoch != self.epoch {
                tracing::info!(epoch, "emitting this server's channels on its groups");
            }
        }
        self.epoch = epoch;
        for (owner, _) in &before {
            if !wanted.iter().any(|(o, _)| o == owner) {
                tracing::warn!(owner = %owner, "no longer running the channels of server {owner:?}");
            }
        }
        let mut specs = Vec::new();
        for (owner, run) in &wanted {
            let Some(o) = self.servers.iter().find(|s| s.name == *owner) else {
                continue;
            };
            for mut spec in server.channel_specs(o) {
                if *run == Run::Warm {
                    spec.multicast = None;
                }
                if let Some(m) = &mut spec.multicast {
                    m.epoch = epoch;
                }
                specs.push(spec);
            }
        }
        // A covered channel continues the streams heard on its group.
        let learned = channel_points(&self.learned.lock().unwrap_or_else(|e| e.into_inner()));
        server.continue_from(&learned);
        server.apply(specs);
        self.measure(server, &before, &wanted, &learned);
        self.applied = Some(wanted);
    }

    /// Exports a takeover's time (decided to first packet) and a
    /// failback's gap (the cover's last packet to this server's first)
    /// once the first packet is out.
    fn measure(
        &self,
        server: &Server,
        before: &[(String, Run)],
        wanted: &[(String, Run)],
        learned: &HashMap<u32, ChannelPoint>,
    ) {
        let m = server.metrics.failover.clone();
        for (owner, run) in wanted {
            if *run != Run::Emit || before.contains(&(owner.clone(), Run::Emit)) {
                continue;
            }
            let channels = server.channels_of(owner);
            if *owner != self.me {
                let label = ServerLabel {
                    server: owner.clone(),
                };
                m.takeovers.get_or_create(&label).inc();
                let decided = self
                    .decided
                    .as_ref()
                    .filter(|(o, _)| o == owner)
                    .map_or_else(SystemTime::now, |(_, t)| *t);
                let (m, cancel) = (m.clone(), self.cancel.clone());
                tokio::spawn(async move {
                    if let Some(first) = first_sent(&channels, &cancel).await {
                        let took = first.duration_since(decided).unwrap_or_default();
                        m.takeover_seconds
                            .get_or_create(&label)
                            .set(took.as_secs_f64());
                        tracing::info!(owner = %label.server, took_ms = took.as_millis() as u64, "first packet on the groups of {:?} after deciding to take them", label.server);
                    }
                });
            } else if before.contains(&(owner.clone(), Run::Warm)) {
                // The role back from a failover server: the gap after its
                // last packet heard (or its released point).
                m.failbacks.inc();
                let cover_last = channels
                    .iter()
                    .filter_map(|c| learned.get(&c.spec.id))
                    .map(|p| p.video.sent_unix_ms)
                    .max();
                let cancel = self.cancel.clone();
                let m = m.clone();
                tokio::spawn(async move {
                    let (Some(first), Some(last)) =
                        (first_sent(&channels, &cancel).await, cover_last)
                    else {
                        return;
                    };
                    let gap_ms = unix_ms(first).saturating_sub(last);
                    m.failback_gap_seconds.set(gap_ms as f64 / 1000.0);
                    tracing::info!(
                        gap_ms,
                        "role back: first packet on this server's groups after the failover server's last"
                    );
                });
            }
        }
    }
}

/// The sockets server `me` keeps for the failover: its beacons' sender
/// and listener (for the descriptor budget).
pub fn listening_sockets(site: &Site, me: &str) -> usize {
    let in_use = site.file.site.failover.in_use(site.servers());
    if in_use && site.server(me).is_some() {
        2
    } else {
        0
    }
}

/// Takes a released server's last points into what was learned (`only_newer`:
/// only where they are later than what was heard).
fn learn(learned: &Mutex<Learned>, points: Points, only_newer: bool) {
    let mut l = learned.lock().unwrap_or_else(|e| e.into_inner());
    for (id, point) in points {
        let streams = std::iter::once((TrackKind::Video, point.video)).chain(point.tracks);
        for (kind, p) in streams {
            let keep = only_newer
                && l.get(&(id, kind))
                    .is_some_and(|k| k.sent_unix_ms >= p.sent_unix_ms);
            if !keep {
                l.insert((id, kind), p);
            }
        }
    }
}

/// How long a release waits for its channels to stop sending.
const RELEASE_WAIT: Duration = Duration::from_secs(1);

/// Answers a release once the released channels have sent their last
/// packet (or after [`RELEASE_WAIT`]): their exact last points, so that
/// the taker, which starts only on this answer, continues ahead of
/// everything sent; never two emitters on the group at once.
async fn answer_release(
    channels: Vec<Arc<crate::channel::Channel>>,
    reply: tokio::sync::oneshot::Sender<Result<Points, String>>,
) {
    let _ = reply.send(Ok(last_points(channels).await));
}

/// The last points of `channels`, once they have sent their last packet
/// (or after [`RELEASE_WAIT`]).
async fn last_points(channels: Vec<Arc<crate::channel::Channel>>) -> Points {
    let waits = channels.iter().map(|c| c.ended());
    if tokio::time::timeout(RELEASE_WAIT, futures::future::join_all(waits))
        .await
        .is_err()
    {
        tracing::warn!(
            "released channels still running after {RELEASE_WAIT:?}; answering with their last points"
        );
    }
    channels
        .iter()
        .filter_map(|c| Some((c.spec.id, c.point()?)))
        .collect()
}

/// When the first of `channels` sent its first multicast packet (checked
/// every 10 ms for a minute).
async fn first_sent(
    channels: &[Arc<crate::channel::Channel>],
    cancel: &CancellationToken,
) -> Option<SystemTime> {
    for _ in 0..6000 {
        if let Some(t) = channels.iter().filter_map(|c| c.first_sent()).min() {
            return Some(t);
        }
        tokio::select! {
            () = cancel.cancelled() => return None,
            () = tokio::time::sleep(Duration::from_millis(10)) => {}
        }
    }
    None
}

async fn poll_health(client: &HttpClient, addr: SocketAddr, timeout: Duration) -> Option<Report> {
    let (_, body) = client.get(addr, "/health", timeout).await.ok()?;
    let v: serde_json::Value = serde_json::from_slice(&body).ok()?;
    serde_json::from_value(v.get("failover")?.clone()).ok()
}

/// The points of the channels whose video was heard (or released), with
/// the tracks heard besides.
fn channel_points(learned: &Learned) -> HashMap<u32, ChannelPoint> {
    let mut points: HashMap<u32, ChannelPoint> = learned
        .iter()
        .filter(|((_, kind), _)| *kind == TrackKind::Video)
        .map(|((id, _), video)| {
            (
                *id,
                ChannelPoint {
                    video: *video,
                    tracks: Default::default(),
                },
            )
        })
        .collect();
    for ((id, kind), p) in learned {
        if let (Some(c), false) = (points.get_mut(id), *kind == TrackKind::Video) {
            c.tracks.insert(*kind, *p);
        }
    }
    points
}
