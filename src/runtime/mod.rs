//! The runtime: the only place with tokio tasks, listeners and the clock.
//!
//! One server of the site runs here. For each channel it emits there is a
//! camera task (ingest + packetize + publish) and, in multicast mode, a
//! sender task. The set of channels can change while running ([`Server::apply`]):
//! failover hands a server another server's channels, on that server's groups.

pub mod beacons;
pub mod client;
pub mod failover;
pub mod http;
pub mod limits;
pub mod rtsp;

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use crate::channel::resume::{self, ChannelPoint, Resume, StateFile};
use crate::channel::{Channel, Directory, Publisher};
use crate::config::{ServerConfig, Site, plan};
use crate::control::{self, AppState, ServerInfo};
use crate::emit::SendMode;
use crate::metrics::Metrics;
use crate::record::Recorder;
use crate::spec::ChannelSpec;

/// How long a shutdown waits for tasks to say goodbye (RTCP BYE, RTSP
/// TEARDOWN) before giving up on them.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// A camera task that panicked is started again after this.
const PANIC_RESTART: Duration = Duration::from_secs(1);

#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Overrides the server's `control` address.
    pub control: Option<SocketAddr>,
    /// Overrides the server's `rtsp.listen` address.
    pub rtsp: Option<SocketAddr>,
    pub send_mode: SendMode,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            control: None,
            rtsp: None,
            send_mode: SendMode::Gso,
        }
    }
}

struct Running {
    spec: ChannelSpec,
    cancel: CancellationToken,
}

/// The channel supervisor of one server.
pub struct Server {
    local: ServerConfig,
    /// The site's servers (for the sources of source-specific groups).
    servers: Vec<ServerConfig>,
    metrics: Metrics,
    directory: watch::Sender<Directory>,
    running: HashMap<u32, Running>,
    cancel: CancellationToken,
    tasks: TaskTracker,
    send_mode: SendMode,
    recorder: Option<Arc<Recorder>>,
    state: Arc<StreamState>,
    /// Checked before every multicast send ([`crate::emit::Fence`]).
    fence: crate::emit::Fence,
}

/// Where the server's channels' streams stand, kept on disk so that a
/// restarted server continues them ([`crate::channel::resume`]).
struct StreamState {
    dir: PathBuf,
    /// Every channel's last point, running or not: a channel stopped and
    /// started again (or handed back after a failover) continues too.
    points: std::sync::Mutex<BTreeMap<u32, ChannelPoint>>,
    /// The last write failed (logged once until one succeeds).
    failing: std::sync::atomic::AtomicBool,
}

impl StreamState {
    fn load(dir: PathBuf) -> StreamState {
        let points = StateFile::load(&dir).channels;
        if !points.is_empty() {
            tracing::info!(dir = %dir.display(), channels = points.len(), "continuing the streams where they stood");
        }
        StreamState {
            dir,
            points: std::sync::Mutex::new(points),
            failing: Default::default(),
        }
    }

    /// A stopped channel's last point (written with the next store).
    fn keep_last(&self, channel: u32, point: ChannelPoint) {
        self.lock().insert(channel, point);
    }

    fn saved(&self, channel: u32) -> Option<ChannelPoint> {
        self.lock().get(&channel).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u32, ChannelPoint>> {
        self.points.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the running channels' points and writes them all.
    fn store(&self, channels: &Directory) {
        let file = {
            let mut points = self.lock();
            for (id, ch) in channels.iter() {
                if let Some(p) = ch.point() {
                    points.insert(*id, p);
                }
            }
            StateFile {
                channels: points.clone(),
            }
        };
        use std::sync::atomic::Ordering;
        match file.store(&self.dir) {
            Ok(_) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!(dir = %self.dir.display(), "stream state written again");
                }
            }
            Err(e) => {
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(dir = %self.dir.display(), error = %e, "cannot write the stream state: a restart will start the streams afresh (workstations joined by SDP then need a restart)");
                }
            }
        }
    }

    /// Writes every [`resume::STATE_EVERY`] until `cancel`.
    async fn keep(
        self: Arc<Self>,
        channels: watch::Receiver<Directory>,
        cancel: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(resume::STATE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = cancel.cancelled() => return,
            }
            let dir = channels.borrow().clone();
            let me = self.clone();
            let _ = tokio::task::spawn_blocking(move || me.store(&dir)).await;
        }
    }
}

impl Server {
    pub fn new(site: &Site, name: &str, send_mode: SendMode) -> anyhow::Result<Server> {
        let local = site.server(name).cloned().with_context(|| {
            let names: Vec<&str> = site.servers().iter().map(|s| s.name.as_str()).collect();
            format!(
                "{}: no server named {name:?} (servers: {})",
                site.path.display(),
                names.join(", ")
            )
        })?;
        let recorder = if local.storage.record && !local.storage.disks.is_empty() {
            let r = Recorder::start(&local.name, &local.storage)
                .with_context(|| format!("server {name:?}: cannot start the recorder"))?;
            for d in r.disks() {
                tracing::info!(disk = %d.path.display(), status = ?d.status, segments = d.segments, "material disk");
            }
            Some(r)
        } else {
            None
        };
        let state_dir = local.state_dir.clone().unwrap_or_else(|| {
            site.path
                .parent()
                .unwrap_or(Path::new("."))
                .join("mcrelay-state")
                .join(&local.name)
        });
        let state_dir = std::path::absolute(&state_dir).unwrap_or(state_dir);
        let metrics = Metrics::new();
        // A server that holds its groups by an etcd lease, or a protected
        // recorder of the embedded controller, fences itself; closed until
        // the controller opens it. An unprotected recorder is never taken
        // over, so it needs no fence.
        let fence = if crate::failover::fences(
            &site.file.site.failover.settings(),
            &crate::failover::Member::of_site(site),
            name,
        ) {
            crate::emit::Fence::closed(metrics.failover.fenced_sends.clone())
        } else {
            crate::emit::Fence::OPEN
        };
        Ok(Server {
            fence,
            servers: site.servers().to_vec(),
            state: Arc::new(StreamState::load(state_dir)),
            recorder,
            local,
            metrics,
            directory: watch::Sender::new(Arc::new(BTreeMap::new())),
            running: HashMap::new(),
            cancel: CancellationToken::new(),
            tasks: TaskTracker::new(),
            send_mode,
        })
    }

    /// The channels of `owner` (this server, or one it covers) as this
    /// server runs them; a channel whose spec cannot be made is logged.
    pub fn channel_specs(&self, owner: &ServerConfig) -> Vec<ChannelSpec> {
        owner
            .channels
            .iter()
            .filter_map(|c| match ChannelSpec::new(owner, c, &self.local, self.send_mode) {
                Ok(mut s) => {
                    s.ssm_sources = plan::ssm_sources(&self.servers, owner);
                    if let Some(m) = &mut s.multicast {
                        m.fence = self.fence;
                    }
                    Some(s)
                }
                Err(e) => {
                    tracing::error!(owner = %owner.name, channel = c.id, "cannot run the channel: {e}");
                    None
                }
            })
            .collect()
    }

    /// Channels started from now continue these points where they are
    /// later than the ones kept (streams heard on their groups).
    pub fn continue_from(&self, points: &HashMap<u32, ChannelPoint>) {
        let mut kept = self.state.lock();
        for (id, p) in points {
            match kept.get_mut(id) {
                Some(k) if k.video.sent_unix_ms >= p.video.sent_unix_ms => {}
                Some(k) => {
                    // Heard on the group: the video only; the tracks'
                    // points kept stay.
                    k.video = p.video;
                    k.tracks.extend(p.tracks.clone());
                }
                None => {
                    kept.insert(*id, p.clone());
                }
            }
        }
    }

    /// The channels of `owner` that run here.
    pub fn channels_of(&self, owner: &str) -> Vec<Arc<Channel>> {
        self.directory
            .borrow()
            .values()
            .filter(|c| c.spec.owner == owner)
            .cloned()
            .collect()
    }

    /// All the server's material disks are broken (it has some).
    pub fn all_disks_broken(&self) -> bool {
        self.recorder.as_ref().is_some_and(|r| r.all_disks_broken())
    }

    /// The server's own channels.
    pub fn own_channels(&self) -> anyhow::Result<Vec<ChannelSpec>> {
        self.local
            .channels
            .iter()
            .map(|c| {
                ChannelSpec::new(&self.local, c, &self.local, self.send_mode).map_err(|e| {
                    anyhow::anyhow!("server {:?} channel {}: {e}", self.local.name, c.id)
                })
            })
            .collect()
    }

    /// Runs exactly `specs`: stops channels no longer wanted (or changed),
    /// starts new ones.
    pub fn apply(&mut self, specs: Vec<ChannelSpec>) {
        let wanted: HashMap<u32, ChannelSpec> = specs.into_iter().map(|s| (s.id, s)).collect();
        let stale: Vec<u32> = self
            .running
            .iter()
            .filter(|(id, r)| wanted.get(id).is_none_or(|w| !same_spec(w, &r.spec)))
            .map(|(id, _)| *id)
            .collect();
        for id in stale {
            self.stop_channel(id);
        }
        for (id, spec) in wanted {
            if !self.running.contains_key(&id) {
                self.start_channel(spec);
            }
        }
    }

    fn start_channel(&mut self, spec: ChannelSpec) {
        let id = spec.id;
        let channel = Channel::new(spec.clone(), self.metrics.channel(id), SystemTime::now());
        let cancel = self.cancel.child_token();
        // The site's SSRC for the channel, continuing where its streams
        // last stood when this server sent them.
        let resume = Resume::for_channel(
            &spec.owner,
            id,
            self.state.saved(id).as_ref(),
            SystemTime::now(),
            rand::random(),
        );
        let interface = spec
            .multicast
            .map(|e| e.interface.to_string())
            .unwrap_or_default();
        // The stream's name, whoever sends it: the owner's; the sender's
        // interface and (etcd) the role's epoch tell who sends it.
        let mut cname = format!("{}/{}@{}", spec.owner, id, interface);
        if let Some(epoch) = spec.multicast.and_then(|e| e.epoch) {
            cname.push_str(&format!("/e{epoch}"));
        }
        let mut publisher = Publisher::new(channel.clone(), resume.video, cname);
        if resume.continued {
            publisher.resume(resume.tracks, Instant::now());
        }
        if let Some(r) = &self.recorder {
            publisher.set_recorder(r.channel(id, self.metrics.record(id)));
        }
        let span = tracing::info_span!("channel", id, owner = %spec.owner);
        let camera_spec = spec.clone();
        let camera_cancel = cancel.clone();
        let state = self.state.clone();
        let camera = async move {
            // A bug that panics (release builds check arithmetic overflow in
            // mcrelay's own code) costs the channel a restart, not its life.
            loop {
                let run =
                    crate::ingest::run_camera(&camera_spec, &mut publisher, camera_cancel.clone());
                match futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(run)).await {
                    Ok(()) => break,
                    Err(panic) => {
                        let what = panic
                            .downcast_ref::<&str>()
                            .map(|s| s.to_string())
                            .or_else(|| panic.downcast_ref::<String>().cloned())
                            .unwrap_or_default();
                        tracing::error!(
                            channel = camera_spec.id,
                            "camera task panicked ({what}); restarting it in {PANIC_RESTART:?}"
                        );
                        tokio::select! {
                            () = tokio::time::sleep(PANIC_RESTART) => {}
                            () = camera_cancel.cancelled() => break,
                        }
                    }
                }
            }
            // Nothing of the channel is sent from here on: its last point
            // is exact, for a restart or a server that takes it over.
            if let Some(p) = publisher.finish() {
                state.keep_last(camera_spec.id, p);
            }
        };
        self.tasks
            .spawn(camera.instrument(tracing::info_span!(parent: &span, "camera")));
        tracing::info!(channel = id, name = %spec.name, source = %spec.source, owner = %spec.owner, "channel started");
        self.running.insert(id, Running { spec, cancel });
        self.directory.send_modify(|d| {
            Arc::make_mut(d).insert(id, channel);
        });
    }

    fn stop_channel(&mut self, id: u32) {
        if let Some(r) = self.running.remove(&id) {
            r.cancel.cancel();
            self.directory.send_modify(|d| {
                Arc::make_mut(d).remove(&id);
            });
            self.metrics.remove_channel(id);
            tracing::info!(channel = id, "channel stopped");
        }
    }

    /// The address SDPs name as origin: the multicast interface, else the
    /// control address.
    fn origin(&self) -> Ipv4Addr {
        self.local
            .multicast
            .as_ref()
            .map(|m| m.interface)
            .or(match self.local.control.ip() {
                std::net::IpAddr::V4(a) if !a.is_unspecified() => Some(a),
                _ => None,
            })
            .unwrap_or(Ipv4Addr::LOCALHOST)
    }

    pub fn app_state(
        &self,
        clients: Option<Arc<rtsp::Clients>>,
        auth: Option<Arc<crate::serve::auth::Authenticator>>,
        (failover, failover_requests): (
            watch::Receiver<failover::FailoverStatus>,
            tokio::sync::mpsc::Sender<failover::ApiRequest>,
        ),
    ) -> AppState {
        let origin = self.origin();
        AppState {
            server: Arc::new(ServerInfo {
                name: self.local.name.clone(),
                description: self.local.description.clone(),
                protocol: self.local.protocol,
                failover_server: self.local.failover.use_as_failover_server,
                origin,
            }),
            channels: self.directory.subscribe(),
            metrics: self.metrics.clone(),
            started: SystemTime::now(),
            clients,
            recorder: self.recorder.clone(),
            auth,
            failover,
            failover_requests,
        }
    }

    /// Stops every channel and waits (bounded) for the tasks to finish.
    pub async fn shutdown(&mut self) {
        self.cancel.cancel();
        self.running.clear();
        self.tasks.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("some channel tasks did not stop within {SHUTDOWN_GRACE:?}");
        }
        // Where the streams stopped, for the next start to continue.
        let (state, dir) = (self.state.clone(), self.directory.borrow().clone());
        let _ = tokio::task::spawn_blocking(move || state.store(&dir)).await;
        // Finish the segments being written (their threads sync and index
        // them) so that a clean stop loses no material.
        if let Some(r) = self.recorder.take() {
            let done = tokio::task::spawn_blocking(move || r.shutdown());
            if tokio::time::timeout(SHUTDOWN_GRACE, done).await.is_err() {
                tracing::warn!(
                    "the recorder did not finish its segments within {SHUTDOWN_GRACE:?}"
                );
            }
        }
    }
}

/// Two specs describe the same running channel (a change restarts it).
fn same_spec(a: &ChannelSpec, b: &ChannelSpec) -> bool {
    a.source == b.source
        && a.allow == b.allow
        && a.codec == b.codec
        && a.owner == b.owner
        && a.tracks == b.tracks
        && a.multicast.map(emit_key) == b.multicast.map(emit_key)
}

/// What of an [`EmitSpec`] a running channel cannot change (the fence is
/// the server's, the same for every spec).
fn emit_key(m: crate::spec::EmitSpec) -> impl PartialEq {
    (
        m.dest,
        m.audio,
        m.metadata,
        m.interface,
        m.loopback,
        m.mode,
        m.epoch,
    )
}

/// A server started by [`start`].
pub struct Handle {
    pub control_addr: SocketAddr,
    /// Where the RTSP server listens, if the server has one.
    pub rtsp_addr: Option<SocketAddr>,
    pub server: Server,
    http: tokio::task::JoinHandle<std::io::Result<()>>,
    http_stop: CancellationToken,
    failover: Option<failover::Driver>,
}

/// Binds the control API and starts the server's own channels.
pub async fn start(site: &Site, name: &str, opts: RunOptions) -> anyhow::Result<Handle> {
    let mut server = Server::new(site, name, opts.send_mode)?;
    for w in &site.warnings {
        tracing::warn!("{}: {w}", site.path.display());
    }
    // Descriptors: raised, then shared out so that connections never take
    // what cameras and disks need.
    let nofile = limits::raise_nofile();
    let rtsp_wanted = server
        .local
        .rtsp
        .as_ref()
        .map_or(0, rtsp::RtspShared::connections_wanted);
    // A failover server may come to carry every channel of the site.
    let site_channels: usize = site.servers().iter().map(|s| s.channels.len()).sum();
    let (budget, shrunk) = limits::budget(
        nofile,
        site_channels.max(server.local.channels.len()),
        server.local.storage.disks.len(),
        failover::listening_sockets(site, name),
        rtsp_wanted,
    );
    if let Some(w) = shrunk {
        tracing::warn!("server {name:?}: {w}");
    }
    let addr = opts.control.unwrap_or(server.local.control);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("server {name:?}: cannot listen on control address {addr} (in use? change `control` or pass --control)"))?;
    let control_addr = listener.local_addr()?;
    let (rtsp_addr, clients) = match server.local.rtsp.clone() {
        Some(mut cfg) => {
            if let Some(a) = opts.rtsp {
                cfg.listen = a;
            }
            let l = tokio::net::TcpListener::bind(cfg.listen).await.with_context(|| {
                format!("server {name:?}: cannot listen on RTSP address {} (in use? change rtsp.listen)", cfg.listen)
            })?;
            let addr = l.local_addr()?;
            let auth = site.password(&server.local)?.map(|pw| {
                Arc::new(crate::serve::auth::Authenticator::new(
                    cfg.user.clone(),
                    pw,
                    cfg.basic_auth,
                    rand::random(),
                ))
            });
            let clients = rtsp::Clients::new(cfg.max_clients, cfg.max_clients_per_channel);
            let shared = Arc::new(rtsp::RtspShared {
                max_connections: budget.rtsp,
                multicast_allowed: server.local.protocol == crate::config::Protocol::RtpMulticast,
                auth,
                channels: server.directory.subscribe(),
                origin: server.origin(),
                clients: clients.clone(),
                metrics: server.metrics.clone(),
                cfg,
            });
            server
                .tasks
                .spawn(rtsp::serve(l, shared, server.cancel.child_token()));
            tracing::info!(server = name, rtsp = %addr, "RTSP server listening");
            (Some(addr), Some(clients))
        }
        None => (None, None),
    };
    server.tasks.spawn(
        server
            .state
            .clone()
            .keep(server.directory.subscribe(), server.cancel.child_token()),
    );
    // The failover controller decides whose channels run: a protected
    // server listens and asks before it emits its own.
    let mut driver = failover::Driver::new(site, name, server.cancel.child_token())?;
    driver.start_beacons(&server);
    driver.reconcile(&mut server);
    // The control API's material endpoints take the server password, as
    // the RTSP user (or "admin") with Digest.
    let api_auth = site.password(&server.local)?.map(|pw| {
        let (user, basic) = server
            .local
            .rtsp
            .as_ref()
            .map_or(("admin".to_string(), false), |r| {
                (r.user.clone(), r.basic_auth)
            });
        Arc::new(crate::serve::auth::Authenticator::new(user, pw, basic, rand::random()).with_qop())
    });
    let app =
        control::router(server.app_state(clients, api_auth, (driver.status(), driver.requests())));
    let http_stop = CancellationToken::new();
    let http = tokio::spawn(http::serve(
        listener,
        app,
        budget.control,
        http_stop.clone(),
    ));
    tracing::info!(server = name, control = %control_addr, "control API listening");
    Ok(Handle {
        control_addr,
        rtsp_addr,
        server,
        http,
        http_stop,
        failover: Some(driver),
    })
}

impl Handle {
    /// Runs until `shutdown` is cancelled, then stops cleanly.
    pub async fn run_until(mut self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let driver = self.failover.take();
        let ended = {
            let server = &mut self.server;
            let controller = async move {
                match driver {
                    Some(d) => d.run(server).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => None,
                () = controller => None,
                r = &mut self.http => Some(r),
            }
        };
        if let Some(r) = ended {
            self.server.shutdown().await;
            return match r {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(anyhow::Error::from(e).context("control API failed")),
                Err(e) => Err(anyhow::Error::from(e).context("control API task failed")),
            };
        }
        tracing::info!("shutting down");
        self.server.shutdown().await;
        self.http_stop.cancel();
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, self.http).await;
        Ok(())
    }
}
