//! The RTSP server's runtime: accepts workstations, drives each connection's
//! state machine ([`crate::serve::session`]) and writes the channel's shared
//! packets to TCP clients as interleaved frames.
//!
//! A TCP client reads the channel's broadcast ring from its own position:
//! the ring is its bounded queue. It starts with the cached GOP (a picture
//! at once, the rest paced by [`crate::serve::catch_up`] until it is live),
//! receives each batch of frames in one vectored write (`$`, channel,
//! length, then the packet's header part and body, shared with every other
//! sink), skips to the next key frame when it falls a ring behind (counted),
//! and is dropped when its socket accepts nothing for the stall time. Nothing
//! it does reaches the camera task, the multicast sender or another client.

use std::collections::BTreeMap;
use std::io::IoSlice;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::channel::{
    Channel, Directory, GOP_MAX_FRAMES, RING_FRAMES, TRACK_CACHE_MAX_FRAMES, TRACK_RING_FRAMES,
};
use crate::config::{CatchUpPolicy, RtspConfig};
use crate::control::sdp::{self, ChannelDescription, Delivery};
use crate::metrics::{ChannelMetrics, Metrics};
use crate::rtp::Frame;
use crate::serve::auth::Authenticator;
use crate::serve::catch_up::{CatchUp, Interleave};
use crate::serve::request::{Incoming, RequestError, RequestReader};
use crate::serve::session::{
    Action, Catalog, ChannelEntry, Connection, Refusal, SessionTransport, refusal_response,
};

/// Frames written in one go when a client has several waiting: bounded so a
/// client that caught up after a hiccup does not hold one huge write.
const MAX_BATCH_FRAMES: usize = 16;
const MAX_BATCH_BYTES: usize = 512 * 1024;
/// writev takes at most IOV_MAX (1024 on Linux) slices.
const IOV_MAX: usize = 1024;
/// Connections beyond the client limit, for DESCRIBE probes and setups.
const EXTRA_CONNECTIONS: usize = 64;
/// While a client catches up, the frames that come meanwhile wait in its
/// backlog, so that the ring does not lap a client that is behind only
/// because it is paced: at most the largest cached GOP plus a ring. Beyond
/// it, the ring laps it like any slow client.
const CATCH_UP_MAX_FRAMES: usize = GOP_MAX_FRAMES + RING_FRAMES;
/// A client this far behind its catch-up schedule is held back by its own
/// link, not by the pacing: it is then fed like any other.
const CATCH_UP_BEHIND: Duration = Duration::from_secs(1);
/// The tracks' frames a client holds while its pictures catch up: the
/// channel's cache of them plus a ring. Beyond it, the oldest go.
const CATCH_UP_MAX_TRACK_FRAMES: usize = TRACK_CACHE_MAX_FRAMES + TRACK_RING_FRAMES;

/// Everything a connection needs, shared by all of them.
pub struct RtspShared {
    pub cfg: RtspConfig,
    /// Open connections at most (the descriptor budget's share).
    pub max_connections: usize,
    /// The server's protocol is `rtp-multicast`.
    pub multicast_allowed: bool,
    pub auth: Option<Arc<Authenticator>>,
    pub channels: watch::Receiver<Directory>,
    /// The address the SDP names as origin.
    pub origin: Ipv4Addr,
    pub clients: Arc<Clients>,
    pub metrics: Metrics,
}

impl RtspShared {
    /// Connections a server with `cfg` wants open at most: its clients,
    /// and room for DESCRIBE probes and setups.
    pub fn connections_wanted(cfg: &RtspConfig) -> usize {
        cfg.max_clients + EXTRA_CONNECTIONS
    }
}

/// The workstations playing, for limits and `/status`.
pub struct Clients {
    max_total: usize,
    max_per_channel: usize,
    next: AtomicU64,
    entries: Mutex<BTreeMap<u64, ClientEntry>>,
}

struct ClientEntry {
    channel: u32,
    peer: SocketAddr,
    tcp: bool,
    since: SystemTime,
    queue: Arc<AtomicUsize>,
    bytes: Arc<AtomicU64>,
}

/// One client, as `/status` shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ClientStatus {
    pub address: SocketAddr,
    pub transport: &'static str,
    pub since: String,
    /// Frames waiting for it in the channel's ring (TCP).
    pub queue_depth: usize,
    pub bytes_sent: u64,
}

impl Clients {
    pub fn new(max_total: usize, max_per_channel: usize) -> Arc<Clients> {
        Arc::new(Clients {
            max_total,
            max_per_channel,
            next: AtomicU64::new(1),
            entries: Mutex::new(BTreeMap::new()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, ClientEntry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn admit(&self, channel: u32) -> Result<(), Refusal> {
        let e = self.lock();
        let total = e.values().filter(|c| c.tcp).count();
        let here = e.values().filter(|c| c.tcp && c.channel == channel).count();
        if total >= self.max_total {
            Err(Refusal::ServerFull(total))
        } else if here >= self.max_per_channel {
            Err(Refusal::ChannelFull(here))
        } else {
            Ok(())
        }
    }

    /// Admits a TCP client under the limits and registers it in one step,
    /// so concurrent PLAYs cannot together overshoot them.
    fn reserve(self: &Arc<Self>, entry: ClientEntry, gauge: Gauge) -> Result<ClientGuard, Refusal> {
        let mut e = self.lock();
        let total = e.values().filter(|c| c.tcp).count();
        let here = e
            .values()
            .filter(|c| c.tcp && c.channel == entry.channel)
            .count();
        if total >= self.max_total {
            return Err(Refusal::ServerFull(total));
        }
        if here >= self.max_per_channel {
            return Err(Refusal::ChannelFull(here));
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        e.insert(id, entry);
        drop(e);
        gauge.inc();
        Ok(ClientGuard {
            clients: self.clone(),
            id,
            gauge,
        })
    }

    fn add(self: &Arc<Self>, entry: ClientEntry, gauge: Gauge) -> ClientGuard {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(id, entry);
        gauge.inc();
        ClientGuard {
            clients: self.clone(),
            id,
            gauge,
        }
    }

    /// The clients of `channel`.
    pub fn of_channel(&self, channel: u32) -> Vec<ClientStatus> {
        self.lock()
            .values()
            .filter(|c| c.channel == channel)
            .map(|c| ClientStatus {
                address: c.peer,
                transport: if c.tcp { "tcp" } else { "multicast" },
                since: humantime::format_rfc3339_seconds(c.since).to_string(),
                queue_depth: c.queue.load(Ordering::Relaxed),
                bytes_sent: c.bytes.load(Ordering::Relaxed),
            })
            .collect()
    }
}

/// Removes a client from the registry when its session or connection ends.
struct ClientGuard {
    clients: Arc<Clients>,
    id: u64,
    gauge: Gauge,
}

impl Drop for ClientGuard {
    fn drop(&mut self) {
        self.clients.lock().remove(&self.id);
        self.gauge.dec();
    }
}

struct DirCatalog<'a> {
    dir: &'a Directory,
    shared: &'a RtspShared,
}

impl DirCatalog<'_> {
    fn channel(&self, key: &str) -> Option<&Arc<Channel>> {
        match key.parse::<u32>() {
            Ok(id) => self.dir.get(&id),
            Err(_) => self.dir.values().find(|c| c.spec.name == key),
        }
    }
}

impl Catalog for DirCatalog<'_> {
    fn find(&self, key: &str) -> Option<ChannelEntry> {
        let ch = self.channel(key)?;
        let info = ch.info.borrow().clone();
        let lines: Vec<sdp::TrackLine<'_>> = info
            .tracks
            .iter()
            .map(|t| sdp::TrackLine {
                desc: &t.desc,
                payload_type: t.payload_type,
                dest: None,
            })
            .collect();
        let sdp = info.codec.or(ch.spec.codec).map(|codec| {
            sdp::channel_sdp(&ChannelDescription {
                channel_id: ch.spec.id,
                name: &ch.spec.name,
                origin: self.shared.origin,
                delivery: Delivery::Rtsp,
                codec,
                params: &info.params,
                video: &info.video,
                version: info.version,
                tracks: &lines,
                sources: &[],
            })
        });
        Some(ChannelEntry {
            id: ch.spec.id,
            sdp,
            multicast: ch.spec.multicast.map(|e| e.dest),
            tracks: info
                .tracks
                .iter()
                .map(|t| ch.spec.multicast.and_then(|e| e.track(t.desc.kind)))
                .collect(),
        })
    }

    fn admit(&self, id: u32) -> Result<(), Refusal> {
        self.shared.clients.admit(id)
    }
}

/// Connections open, and those that have not authenticated yet (oldest
/// first: ids grow).
#[derive(Default)]
struct Gate {
    open: usize,
    next: u64,
    unauthenticated: BTreeMap<u64, (Instant, CancellationToken)>,
}

/// A connection that has not authenticated this long had its chance: when
/// the pool is full, a new connection takes its place (a real client's
/// handshake takes milliseconds).
const EVICTABLE_AFTER: Duration = Duration::from_secs(1);

/// A connection's place at the gate; freed on drop.
struct Ticket {
    gate: Arc<Mutex<Gate>>,
    id: u64,
    /// Cancelled when a newer connection takes this one's unauthenticated
    /// place.
    evicted: CancellationToken,
}

impl Ticket {
    fn lock(&self) -> std::sync::MutexGuard<'_, Gate> {
        self.gate.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The connection authenticated: it leaves the small pool.
    fn authenticated(&mut self) {
        self.lock().unauthenticated.remove(&self.id);
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut g = self.lock();
        g.open -= 1;
        g.unauthenticated.remove(&self.id);
    }
}

/// Admits a new connection, or says why not: the server's connection cap,
/// and (with a password) the pool of connections that have not
/// authenticated yet. A full pool makes room by closing its oldest
/// connection if that one had at least [`EVICTABLE_AFTER`]: connections
/// that never authenticate can delay a workstation, not lock it out.
fn admit(
    gate: &Arc<Mutex<Gate>>,
    shared: &RtspShared,
    now: Instant,
) -> Result<Ticket, &'static str> {
    let mut g = gate.lock().unwrap_or_else(|e| e.into_inner());
    if g.open >= shared.max_connections {
        return Err("connection cap");
    }
    let id = g.next;
    g.next += 1;
    let evicted = CancellationToken::new();
    if shared.auth.is_some() {
        if g.unauthenticated.len() >= shared.cfg.max_unauthenticated {
            let oldest = g
                .unauthenticated
                .first_key_value()
                .filter(|(_, (since, _))| now.saturating_duration_since(*since) >= EVICTABLE_AFTER)
                .map(|(k, _)| *k);
            let Some(oldest) = oldest.and_then(|k| g.unauthenticated.remove(&k)) else {
                return Err("unauthenticated connection cap");
            };
            oldest.1.cancel();
        }
        g.unauthenticated.insert(id, (now, evicted.clone()));
    }
    g.open += 1;
    Ok(Ticket {
        gate: gate.clone(),
        id,
        evicted,
    })
}

/// Accepts connections until `cancel`.
pub async fn serve(listener: TcpListener, shared: Arc<RtspShared>, cancel: CancellationToken) {
    let gate = Arc::new(Mutex::new(Gate::default()));
    let mut refusals: u64 = 0;
    loop {
        let (mut stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of descriptors, most likely: back off a little.
                    tracing::warn!(error = %e, "RTSP accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = cancel.cancelled() => return,
        };
        let ticket = match admit(&gate, &shared, Instant::now()) {
            Ok(t) => t,
            Err(why) => {
                shared.metrics.rtsp_refused().inc();
                refusals += 1;
                if refusals.is_power_of_two() {
                    tracing::warn!(%peer, refusals, "RTSP connection refused: {why}");
                }
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(
                        Duration::from_secs(1),
                        stream.write_all(
                            b"RTSP/1.0 503 Service Unavailable\r\nServer: mcrelay\r\n\r\n",
                        ),
                    )
                    .await;
                });
                continue;
            }
        };
        let shared = shared.clone();
        let cancel = cancel.clone();
        let span = tracing::info_span!("rtsp", %peer);
        tokio::spawn(
            async move {
                let _ = stream.set_nodelay(true);
                // Best effort: the kernel may round or cap it.
                let _ =
                    socket2::SockRef::from(&stream).set_send_buffer_size(shared.cfg.send_buffer);
                let (rd, wr) = stream.into_split();
                connection(rd, wr, peer, &shared, cancel, Some(ticket)).await;
            }
            .instrument(span),
        );
    }
}

/// A TCP client being fed frames.
struct Player {
    channel: Arc<Channel>,
    rx: broadcast::Receiver<Arc<Frame>>,
    /// The tracks besides video, when the client set any up; each goes on
    /// the interleaved channel the client set it up on.
    tracks_rx: Option<broadcast::Receiver<Arc<Frame>>>,
    /// Per track besides video (by index): the client's interleaved
    /// channel and the SSRC the track had at PLAY. A camera that comes
    /// back with other tracks renumbers them: a frame goes out only if its
    /// SSRC is the one the client set up.
    track_channels: Vec<Option<(u8, u32)>>,
    /// The frames waiting to go, pictures and tracks in media-time order:
    /// at first the cached GOP with its sound, then what the rings gave
    /// while earlier frames waited.
    backlog: Interleave,
    rtp_channel: u8,
    waiting_key: bool,
    /// Set while the client works through the cached GOP towards live.
    catch_up: Option<CatchUp>,
    started: Instant,
    queue: Arc<AtomicUsize>,
    bytes: Arc<AtomicU64>,
    _guard: ClientGuard,
}

enum Next {
    Frames(Vec<Arc<Frame>>),
    /// The channel was stopped on this server.
    Gone,
}

impl Player {
    /// The next frames to send: the backlog first, then the rings; paced
    /// while the client catches up. A client that fell a whole ring behind
    /// resumes at the next key frame.
    async fn next(&mut self) -> Next {
        if self.catch_up.is_some()
            && let Some(batch) = self.next_paced().await
        {
            return Next::Frames(batch);
        }
        loop {
            let mut batch = Vec::new();
            let mut bytes = 0;
            while batch.len() < MAX_BATCH_FRAMES && bytes < MAX_BATCH_BYTES {
                // Whatever the rings hold joins the backlog first: the
                // next frame in media time may be in either.
                if self.backlog.video_len() == 0 {
                    self.try_video();
                }
                self.try_tracks();
                let Some(f) = self.backlog.pop() else { break };
                bytes += f.byte_len();
                batch.push(f);
            }
            self.queue
                .store(self.rx.len() + self.backlog.len(), Ordering::Relaxed);
            if !batch.is_empty() {
                return Next::Frames(batch);
            }
            // Nothing may go: wait for a picture or a track's frame.
            tokio::select! {
                r = self.rx.recv() => {
                    if self.received(r) {
                        return Next::Gone;
                    }
                }
                f = next_track(&mut self.tracks_rx, &self.track_channels) => {
                    self.backlog.push_track(f);
                }
            }
        }
    }

    /// Takes a picture from the ring into the backlog, if one is there.
    fn try_video(&mut self) {
        let r = match self.rx.try_recv() {
            Ok(f) => Ok(f),
            Err(TryRecvError::Lagged(n)) => Err(RecvError::Lagged(n)),
            Err(TryRecvError::Closed) => Err(RecvError::Closed),
            Err(TryRecvError::Empty) => return,
        };
        // Closed: the caller's wait sees it once the backlog is out.
        let _ = self.received(r);
    }

    /// A picture from the ring: into the backlog (unless the client waits
    /// for a key frame and this is none). A client that fell a ring behind
    /// starts over at the next key frame, sound and all. Returns whether
    /// the channel is gone.
    fn received(&mut self, r: Result<Arc<Frame>, RecvError>) -> bool {
        match r {
            Ok(f) if self.waiting_key && !f.key => {}
            Ok(f) => {
                self.waiting_key = false;
                self.backlog.push_video(f);
            }
            Err(RecvError::Lagged(n)) => {
                self.channel.metrics.key_frame_skips.inc();
                tracing::debug!(
                    frames = n,
                    catching_up = self.catch_up.is_some(),
                    "TCP client fell behind; skipping to the next key frame"
                );
                self.skip_to_key_frame();
            }
            Err(RecvError::Closed) => return true,
        }
        false
    }

    fn skip_to_key_frame(&mut self) {
        self.backlog.restart();
        self.waiting_key = true;
        self.catch_up = None;
    }

    /// Takes every frame of the client's tracks the ring holds into the
    /// backlog (which keeps the newest [`CATCH_UP_MAX_TRACK_FRAMES`]). A
    /// client that fell behind on them just goes on with the next: every
    /// audio frame stands alone.
    fn try_tracks(&mut self) {
        let Some(rx) = &mut self.tracks_rx else {
            return;
        };
        loop {
            match rx.try_recv() {
                Ok(f) if wanted(&self.track_channels, &f) => self.backlog.push_track(f),
                Ok(_) | Err(TryRecvError::Lagged(_)) => {}
                Err(_) => break,
            }
        }
    }

    /// The next frames while the client catches up, each when it is due
    /// ([`CatchUp`]; a track's frame by the same schedule as the pictures
    /// around it); `None` once it is live, lapped or held back by its own
    /// link, and frames go as they come. Cancel-safe: the frames taken from
    /// the rings wait in the backlog.
    async fn next_paced(&mut self) -> Option<Vec<Arc<Frame>>> {
        // Twice at most: sleep until the front frame is due, then take it.
        loop {
            while self.backlog.video_len() < CATCH_UP_MAX_FRAMES {
                match self.rx.try_recv() {
                    Ok(f) => self.backlog.push_video(f),
                    Err(TryRecvError::Lagged(n)) => {
                        // The frames after the backlog are lost: the client
                        // resumes at the next key frame, live.
                        self.received(Err(RecvError::Lagged(n)));
                        return None;
                    }
                    // Closed: the backlog still goes out; the caller sees the end.
                    Err(_) => break,
                }
            }
            self.try_tracks();
            let cu = self.catch_up.as_mut()?;
            let now = Instant::now();
            let live = match self.backlog.front() {
                None => true,
                Some(f) => cu.is_live(f.time, f.arrival),
            };
            let due = self.backlog.front().map_or(now, |f| cu.due(f.time));
            if live || now.saturating_duration_since(due) > CATCH_UP_BEHIND {
                tracing::debug!(
                    after = ?self.started.elapsed(),
                    behind_schedule = ?now.saturating_duration_since(due),
                    "TCP client caught up"
                );
                self.catch_up = None;
                return None;
            }
            if due > now {
                tokio::time::sleep_until(due.into()).await;
                continue;
            }
            let mut batch = Vec::new();
            let mut bytes = 0;
            while batch.len() < MAX_BATCH_FRAMES && bytes < MAX_BATCH_BYTES {
                match self.backlog.front() {
                    Some(f) if cu.due(f.time) <= now && !cu.is_live(f.time, f.arrival) => {}
                    _ => break,
                }
                let f = self
                    .backlog
                    .pop()
                    .expect("pop takes the front just matched");
                // The schedule steps at pictures only: a track's frame goes
                // when the pictures' schedule reaches its time.
                if f.track == 0 {
                    cu.sent(f.time);
                }
                bytes += f.byte_len();
                batch.push(f);
            }
            self.queue
                .store(self.rx.len() + self.backlog.len(), Ordering::Relaxed);
            return Some(batch);
        }
    }
}

/// Whether the client set up the track of `f`, as it was at PLAY.
fn wanted(channels: &[Option<(u8, u32)>], f: &Frame) -> bool {
    let ssrc = f.packets.first().map(crate::rtp::RtpPacket::ssrc);
    usize::from(f.track)
        .checked_sub(1)
        .and_then(|i| channels.get(i))
        .is_some_and(|c| c.is_some_and(|(_, s)| Some(s) == ssrc))
}

/// The next frame of a track the client set up; never, without tracks.
/// Cancel-safe (a broadcast receive is). A client that fell behind on
/// them just goes on with the next: every audio frame stands alone.
async fn next_track(
    rx: &mut Option<broadcast::Receiver<Arc<Frame>>>,
    channels: &[Option<(u8, u32)>],
) -> Arc<Frame> {
    let Some(rx) = rx else {
        return std::future::pending().await;
    };
    loop {
        match rx.recv().await {
            Ok(f) if wanted(channels, &f) => return f,
            Ok(_) | Err(RecvError::Lagged(_)) => {}
            Err(RecvError::Closed) => return std::future::pending().await,
        }
    }
}

/// Writes frames of several tracks: each run of one track on the
/// interleaved channel its track was set up on (video: `video`).
async fn write_tracks<W: AsyncWrite + Unpin>(
    w: &mut W,
    frames: &[Arc<Frame>],
    video: u8,
    tracks: &[Option<(u8, u32)>],
    stall: Duration,
) -> std::io::Result<(usize, usize)> {
    let (mut bytes, mut packets) = (0, 0);
    for run in frames.chunk_by(|a, b| a.track == b.track) {
        let channel = match usize::from(run[0].track).checked_sub(1) {
            None => Some(video),
            Some(i) => tracks.get(i).copied().flatten().map(|(c, _)| c),
        };
        let Some(channel) = channel else { continue };
        let (b, p) = write_frames(w, run, channel, stall).await?;
        bytes += b;
        packets += p;
    }
    Ok((bytes, packets))
}

/// Clients whose receiver times frames by their arrival (see
/// [`crate::serve::catch_up`]), by their `User-Agent`: GStreamer's
/// `rtspsrc` says `GStreamer/1.22.0` unless an application changes it (then
/// set `rtsp.catch_up = "paced"`).
fn times_by_arrival(user_agent: &str) -> bool {
    user_agent.to_ascii_lowercase().contains("gstreamer")
}

async fn next_frames(player: &mut Option<Player>) -> Next {
    match player {
        Some(p) => p.next().await,
        None => std::future::pending().await,
    }
}

/// Writes all of `bufs`; fails if the socket takes nothing for `stall`.
async fn write_all_vectored<W: AsyncWrite + Unpin>(
    w: &mut W,
    mut bufs: &mut [IoSlice<'_>],
    stall: Duration,
) -> std::io::Result<()> {
    while !bufs.is_empty() {
        let n = bufs.len().min(IOV_MAX);
        let written = match tokio::time::timeout(stall, w.write_vectored(&bufs[..n])).await {
            Err(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "client stalled",
                ));
            }
            Ok(r) => r?,
        };
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut bufs, written);
    }
    Ok(())
}

/// Writes frames as interleaved data on `channel`: `$`, channel, length,
/// then the packet. On channel 0 (what clients ask for) each frame goes as
/// its shared interleaved buffer; on another channel as three slices per
/// packet (framing, then the packet's two shared parts). Returns bytes and
/// packets written.
pub async fn write_frames<W: AsyncWrite + Unpin>(
    w: &mut W,
    frames: &[Arc<Frame>],
    channel: u8,
    stall: Duration,
) -> std::io::Result<(usize, usize)> {
    let packets: usize = frames.iter().map(|f| f.packets.len()).sum();
    if channel == 0 {
        // The usual case: the frames' shared interleaved buffers, one slice
        // per frame.
        let mut slices: Vec<IoSlice<'_>> = frames
            .iter()
            .map(|f| IoSlice::new(f.interleaved()))
            .collect();
        let total = slices.iter().map(|s| s.len()).sum();
        write_all_vectored(w, &mut slices, stall).await?;
        return Ok((total, packets));
    }
    let mut framing = Vec::with_capacity(packets);
    for p in frames.iter().flat_map(|f| &f.packets) {
        let len = p.len() as u16;
        framing.push([b'$', channel, (len >> 8) as u8, len as u8]);
    }
    let mut slices = Vec::with_capacity(packets * 3);
    let mut total = 0;
    for (p, f) in frames.iter().flat_map(|f| &f.packets).zip(&framing) {
        slices.push(IoSlice::new(f));
        slices.push(IoSlice::new(p.head()));
        if !p.body().is_empty() {
            slices.push(IoSlice::new(p.body()));
        }
        total += 4 + p.len();
    }
    write_all_vectored(w, &mut slices, stall).await?;
    Ok((total, packets))
}

async fn write_response<W: AsyncWrite + Unpin>(
    w: &mut W,
    r: &rtsp_types::Response<Vec<u8>>,
    stall: Duration,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(512 + r.body().len());
    r.write(&mut buf)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    match tokio::time::timeout(stall, w.write_all(&buf)).await {
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "client stalled",
        )),
        Ok(r) => r,
    }
}

fn error_response(status: rtsp_types::StatusCode, why: &str) -> rtsp_types::Response<Vec<u8>> {
    rtsp_types::Response::builder(rtsp_types::Version::V1_0, status)
        .header(rtsp_types::headers::SERVER, crate::serve::session::SERVER)
        .header(rtsp_types::headers::CONTENT_TYPE, "text/plain")
        .build(format!("{why}\r\n").into_bytes())
}

/// Serves one connection until it closes, fails, idles out or `cancel`.
async fn connection<R, W>(
    mut rd: R,
    mut wr: W,
    peer: SocketAddr,
    shared: &RtspShared,
    cancel: CancellationToken,
    mut ticket: Option<Ticket>,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let cfg = &shared.cfg;
    let stall = cfg.stall_timeout;
    let mut reader = RequestReader::new(cfg.max_request_bytes, cfg.max_headers);
    let connected = Instant::now();
    let mut conn = Connection::new(
        shared.auth.clone(),
        shared.multicast_allowed,
        cfg.session_timeout,
        connected,
        peer.ip(),
        rand::random(),
    );
    let mut player: Option<Player> = None;
    let mut viewer: Option<ClientGuard> = None;
    loop {
        let deadline = if !conn.authenticated() {
            // Requests answered 401 buy no time.
            Some(connected + cfg.auth_timeout)
        } else if player.is_some() {
            None
        } else {
            Some(
                conn.expiry()
                    .unwrap_or(conn.last_request() + cfg.idle_timeout),
            )
        };
        tokio::select! {
            r = rd.read_buf(reader.read_buf()) => {
                match r {
                    Ok(0) => break,
                    Err(e) => {
                        tracing::debug!(error = %e, "read failed");
                        break;
                    }
                    Ok(_) => {}
                }
                let keep = drain_requests(&mut reader, &mut conn, &mut wr, peer, shared, &mut player, &mut viewer).await;
                if conn.authenticated()
                    && let Some(t) = &mut ticket
                {
                    t.authenticated();
                }
                if !keep {
                    break;
                }
            }
            next = next_frames(&mut player) => {
                let Some(p) = player.as_mut() else { continue };
                let frames = match next {
                    Next::Frames(f) => f,
                    Next::Gone => break,
                };
                match write_tracks(&mut wr, &frames, p.rtp_channel, &p.track_channels, stall).await {
                    Ok((bytes, packets)) => {
                        let m: &ChannelMetrics = &p.channel.metrics;
                        m.tcp_bytes.inc_by(bytes as u64);
                        m.tcp_packets.inc_by(packets as u64);
                        p.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                        p.channel.metrics.stall_disconnects.inc();
                        tracing::info!(stall = ?stall, "TCP client stalled; disconnecting it");
                        break;
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "TCP client write failed");
                        break;
                    }
                }
            }
            () = sleep_until(deadline) => {
                if conn.authenticated() {
                    tracing::debug!("connection idle or session expired; closing");
                } else {
                    tracing::debug!(timeout = ?cfg.auth_timeout, "connection did not authenticate in time; closing");
                }
                break;
            }
            () = evicted(ticket.as_ref()) => {
                tracing::debug!("connection did not authenticate and a newer one needed its place; closing");
                break;
            }
            () = cancel.cancelled() => break,
        }
    }
    drop(player);
    drop(viewer);
    let _ = wr.shutdown().await;
}

async fn evicted(t: Option<&Ticket>) {
    match t {
        Some(t) => t.evicted.cancelled().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

/// Handles every complete message in the buffer. Returns false to close.
async fn drain_requests<W: AsyncWrite + Unpin>(
    reader: &mut RequestReader,
    conn: &mut Connection,
    wr: &mut W,
    peer: SocketAddr,
    shared: &RtspShared,
    player: &mut Option<Player>,
    viewer: &mut Option<ClientGuard>,
) -> bool {
    let stall = shared.cfg.stall_timeout;
    loop {
        let req = match reader.next_message() {
            Ok(None) => return true,
            Ok(Some(Incoming::Request(r))) => r,
            // The client's RTCP receiver reports; stray responses.
            Ok(Some(_)) => continue,
            Err(e) => {
                let status = match e {
                    RequestError::TooLarge { .. } => {
                        rtsp_types::StatusCode::RequestMessageBodyTooLarge
                    }
                    _ => rtsp_types::StatusCode::BadRequest,
                };
                tracing::debug!(error = %e, "bad request; closing");
                let _ = write_response(wr, &error_response(status, &e.to_string()), stall).await;
                return false;
            }
        };
        let now_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let dir = shared.channels.borrow().clone();
        let catalog = DirCatalog { dir: &dir, shared };
        let mut out = conn.handle(&req, Instant::now(), now_unix, rand::random(), &catalog);
        match out.response.status() {
            rtsp_types::StatusCode::Unauthorized => {
                shared.metrics.rtsp_unauthorized().inc();
            }
            rtsp_types::StatusCode::ServiceUnavailable => {
                shared.metrics.rtsp_refused().inc();
            }
            _ => {}
        }
        let mut start = None;
        match out.action.clone() {
            Action::Play {
                channel,
                transport,
                tracks,
            } => {
                let Some(ch) = dir.get(&channel).cloned() else {
                    let _ = write_response(
                        wr,
                        &error_response(rtsp_types::StatusCode::NotFound, "the channel stopped"),
                        stall,
                    )
                    .await;
                    return false;
                };
                match transport {
                    SessionTransport::Tcp { rtp, .. } => {
                        let sub = ch.subscribe_with_tracks();
                        let gop = sub.gop;
                        let rx = sub.rx;
                        // Tracks besides video start at the first picture's
                        // instant; their RTP-Info maps its time into their
                        // clocks, which is how a TCP client (no RTCP) syncs.
                        let info = ch.info.borrow().clone();
                        let mut track_channels = vec![None; info.tracks.len()];
                        for (n, t) in &tracks {
                            if let (SessionTransport::Tcp { rtp, .. }, Some(slot), Some(ti)) =
                                (t, track_channels.get_mut(n - 1), info.tracks.get(n - 1))
                            {
                                *slot = Some((*rtp, ti.ssrc));
                            }
                        }
                        let with_tracks = track_channels.iter().any(Option::is_some);
                        let tracks_rx = with_tracks.then_some(sub.tracks_rx);
                        // Sound that can be cut (G.711) starts exactly at
                        // the first picture; other tracks at their first
                        // frame from it on.
                        let cut = info
                            .tracks
                            .iter()
                            .map(|t| t.desc.byte_per_tick().then_some(t.desc.clock_rate))
                            .collect();
                        let mut backlog = Interleave::new(CATCH_UP_MAX_TRACK_FRAMES, cut);
                        if !gop.is_empty() {
                            for f in sub
                                .tracks
                                .into_iter()
                                .filter(|f| wanted(&track_channels, f))
                            {
                                backlog.push_track(f);
                            }
                        }
                        // The first cached picture; without one (the client
                        // waits for the next key frame), the last picture
                        // sent: every track's rtptime names the same instant.
                        let reference =
                            match gop.first().and_then(|f| Some((f, f.packets.first()?))) {
                                Some((f, p)) => Some((f.time, f.rtp_timestamp, Some(p.seq()))),
                                None => ch.last_picture().map(|(t, rtp)| (t, rtp, None)),
                            };
                        if let Some((time, rtptime, seq)) = reference {
                            let url = req.request_uri().map(|u| u.to_string()).unwrap_or_default();
                            let base = url.trim_end_matches('/');
                            let mut rtp_info = format!("url={base}/{}", sdp::TRACK_CONTROL);
                            if let Some(seq) = seq {
                                rtp_info.push_str(&format!(";seq={seq}"));
                            }
                            rtp_info.push_str(&format!(";rtptime={rtptime}"));
                            for (i, t) in info.tracks.iter().enumerate() {
                                if track_channels[i].is_some() {
                                    rtp_info.push_str(&format!(
                                        ",url={base}/{};rtptime={}",
                                        sdp::track_control(i + 1),
                                        t.rtp_at(time)
                                    ));
                                }
                            }
                            out.response
                                .insert_header(rtsp_types::headers::RTP_INFO, rtp_info);
                        }
                        // Admitted and registered at once, before the
                        // awaited write: concurrent PLAYs cannot overshoot.
                        let queue = Arc::new(AtomicUsize::new(gop.len()));
                        let bytes = Arc::new(AtomicU64::new(0));
                        match shared.clients.reserve(
                            ClientEntry {
                                channel,
                                peer,
                                tcp: true,
                                since: SystemTime::now(),
                                queue: queue.clone(),
                                bytes: bytes.clone(),
                            },
                            ch.metrics.clients_tcp.clone(),
                        ) {
                            Ok(guard) => {
                                start = Some((
                                    ch,
                                    rtp,
                                    (gop, backlog),
                                    rx,
                                    (tracks_rx, track_channels),
                                    queue,
                                    bytes,
                                    guard,
                                ))
                            }
                            Err(r) => {
                                shared.metrics.rtsp_refused().inc();
                                out.response = refusal_response(&req, r);
                            }
                        }
                    }
                    SessionTransport::Multicast(_) => {
                        let gauge = ch.metrics.clients_multicast.clone();
                        *viewer = Some(shared.clients.add(
                            ClientEntry {
                                channel,
                                peer,
                                tcp: false,
                                since: SystemTime::now(),
                                queue: Arc::default(),
                                bytes: Arc::default(),
                            },
                            gauge,
                        ));
                    }
                }
            }
            Action::Stop => {
                *player = None;
                *viewer = None;
            }
            Action::None | Action::Close => {}
        }
        if write_response(wr, &out.response, stall).await.is_err() {
            return false;
        }
        if let Some((
            ch,
            rtp,
            (gop, mut backlog),
            rx,
            (tracks_rx, track_channels),
            queue,
            bytes,
            guard,
        )) = start
        {
            let paced = match shared.cfg.catch_up {
                CatchUpPolicy::Paced => true,
                CatchUpPolicy::Burst => false,
                CatchUpPolicy::Auto => req
                    .header(&rtsp_types::headers::USER_AGENT)
                    .is_some_and(|ua| times_by_arrival(ua.as_str())),
            };
            tracing::info!(
                channel = ch.spec.id,
                cached_frames = gop.len(),
                "TCP client playing"
            );
            let now = Instant::now();
            let waiting_key = gop.is_empty();
            let catch_up = gop
                .first()
                .filter(|_| paced)
                .map(|key| CatchUp::new(key.time, now));
            for f in gop {
                backlog.push_video(f);
            }
            *player = Some(Player {
                waiting_key,
                catch_up,
                started: now,
                backlog,
                channel: ch,
                rx,
                tracks_rx,
                track_channels,
                rtp_channel: rtp,
                queue,
                bytes,
                _guard: guard,
            });
        }
        if out.action == Action::Close {
            return false;
        }
    }
}
