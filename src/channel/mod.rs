//! The per-channel hub: one camera in, RTP frames out to every sink.
//!
//! The camera task owns the channel's [`core::ChannelCore`] and publishes each
//! frame once into a bounded broadcast ring. Sinks (the multicast sender now,
//! TCP clients and the recorder later) subscribe; one that falls behind is
//! told how many frames it missed and resumes at the next key frame. The
//! producer never waits for a consumer.

pub mod core;
pub mod emitter;
pub mod resume;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use tokio::sync::{broadcast, watch};

use self::core::{ChannelCore, StreamIds};
use crate::ingest::{IngestError, Sink};
use crate::media::params::VideoInfo;
use crate::media::{AccessUnit, Codec, MediaTime, ParamSets, TrackDesc, TrackKind};
use crate::metrics::{CameraState, ChannelMetrics};
use crate::rtp::Frame;
use crate::spec::{ChannelSpec, EmitSpec};

#[cfg(test)]
mod tests;

/// Frames kept in a channel's ring: 64 frames are 2.5 s at 25 fps, enough
/// to ride out scheduling hiccups of a busy host; at 4 Mbit/s they hold about
/// 1.3 MB of shared buffers per channel.
pub const RING_FRAMES: usize = 64;

/// The largest audio frame or metadata document relayed and recorded
/// (ONVIF documents are a few kB; AAC frames under 8 kB).
pub const MAX_TRACK_FRAME: usize = 256 * 1024;

/// Frames kept in a channel's ring of audio and metadata: AAC at 48 kHz
/// sends 47 frames a second, so 128 hold 2.7 s; a few kB each.
pub const TRACK_RING_FRAMES: usize = 128;

/// The channels a server runs, by id: an immutable snapshot, republished
/// whenever the set changes (at start, and when failover hands over channels).
pub type Directory = Arc<std::collections::BTreeMap<u32, Arc<Channel>>>;

/// What sinks and the SDP need to know about the stream.
#[derive(Clone, Debug, Default)]
pub struct StreamInfo {
    pub codec: Option<Codec>,
    pub params: ParamSets,
    pub video: VideoInfo,
    pub ssrc: u32,
    /// The tracks besides video, as the camera's last session had them.
    pub tracks: Vec<TrackInfo>,
    /// What the camera offers that the channel does not carry, and why.
    pub not_carried: Vec<String>,
    /// Bumped on every change (the SDP's session version).
    pub version: u64,
}

/// A track besides video, as sinks and the SDP see it.
#[derive(Clone, Debug)]
pub struct TrackInfo {
    pub desc: TrackDesc,
    pub ssrc: u32,
    pub payload_type: u8,
    /// The RTP timestamp of media time 0 (give or take a tick): with it, a
    /// media time of the channel is an RTP time of the track, as RTSP's
    /// RTP-Info needs.
    pub rtp_base: u32,
}

impl TrackInfo {
    /// The track's RTP timestamp at channel media time `t`.
    pub fn rtp_at(&self, t: MediaTime) -> u32 {
        let ticks = (i128::from(t.0) * i128::from(self.desc.clock_rate))
            .div_euclid(i128::from(crate::media::time::CLOCK_RATE));
        (ticks + i128::from(self.rtp_base)).rem_euclid(1 << 32) as u32
    }
}

/// The camera's ingest status, for `/status`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CameraStatus {
    pub state: CameraState,
    #[serde(with = "rfc3339")]
    pub since: SystemTime,
    pub last_error: Option<String>,
    #[serde(with = "rfc3339_opt")]
    pub last_error_at: Option<SystemTime>,
    pub reconnects: u64,
}

mod rfc3339 {
    pub fn serialize<S: serde::Serializer>(
        t: &std::time::SystemTime,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_rfc3339_millis(*t))
    }
}

mod rfc3339_opt {
    pub fn serialize<S: serde::Serializer>(
        t: &Option<std::time::SystemTime>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.collect_str(&humantime::format_rfc3339_millis(*t)),
            None => s.serialize_none(),
        }
    }
}

/// Bounds on the key-frame cache: 300 frames is 12 s at 25 fps, longer than
/// any GOP a camera feeding live viewing should use; 16 MB holds a GOP of a
/// 10 Mbit/s camera with room. Beyond either, new clients wait for the next
/// key frame live instead.
pub const GOP_MAX_FRAMES: usize = 300;
pub const GOP_MAX_BYTES: usize = 16 * 1024 * 1024;

/// Bounds on the sound and metadata kept beside the key-frame cache, so
/// that a client that starts at the cached key frame hears it from there:
/// 2048 frames are 43 s of AAC at 48 kHz (47 a second), more than the
/// 12 s of pictures the cache keeps at 25 fps and the 30 s at 10 fps; 4 MB
/// are that much sound at any audio bitrate a camera sends, or 16 of the
/// largest metadata documents ([`MAX_TRACK_FRAME`]). Beyond either, the
/// oldest go, and new clients wait for the next key frame live instead.
pub const TRACK_CACHE_MAX_FRAMES: usize = 2048;
pub const TRACK_CACHE_MAX_BYTES: usize = 4 * 1024 * 1024;

/// The frames since the last key frame, so that a new TCP client starts
/// with a picture at once; and beside them the tracks' frames since its
/// instant, so that it starts with its sound too.
#[derive(Default)]
struct GopCache {
    frames: Vec<Arc<Frame>>,
    bytes: usize,
    /// The current GOP outgrew the bounds (or did not start with a key frame).
    broken: bool,
    /// The last picture's media time and RTP timestamp.
    last: Option<(MediaTime, u32)>,
    /// Frames of the tracks besides video, in the order they were
    /// published: of each track the one that covers the key frame's
    /// instant (the last that starts at or before it) and all after.
    tracks: std::collections::VecDeque<Arc<Frame>>,
    track_bytes: usize,
    /// The bounds made the tracks' cache lose frames since the cached key
    /// frame: a client that starts there would miss sound.
    tracks_lost: bool,
}

impl GopCache {
    fn push(&mut self, frame: &Arc<Frame>) {
        self.last = Some((frame.time, frame.rtp_timestamp));
        if frame.key {
            self.frames.clear();
            self.bytes = 0;
            self.broken = false;
            self.trim_tracks(frame.time);
        } else if self.frames.is_empty() {
            self.broken = true;
        }
        if self.broken {
            return;
        }
        if self.frames.len() >= GOP_MAX_FRAMES || self.bytes + frame.byte_len() > GOP_MAX_BYTES {
            self.frames.clear();
            self.bytes = 0;
            self.broken = true;
            return;
        }
        self.bytes += frame.byte_len();
        self.frames.push(frame.clone());
    }

    /// A new key frame at `key`: the tracks' frames before its instant go,
    /// but for the one of each track that covers it.
    fn trim_tracks(&mut self, key: MediaTime) {
        let covering = covering(self.tracks.iter().map(|f| (f.track, f.time)), key);
        let mut i = 0;
        let mut bytes = 0;
        self.tracks.retain(|f| {
            let keep = f.time > key || covering.contains(&i);
            i += 1;
            if keep {
                bytes += f.byte_len();
            }
            keep
        });
        self.track_bytes = bytes;
        self.tracks_lost = false;
    }

    fn push_track(&mut self, frame: &Arc<Frame>) {
        self.track_bytes += frame.byte_len();
        self.tracks.push_back(frame.clone());
        while self.tracks.len() > TRACK_CACHE_MAX_FRAMES || self.track_bytes > TRACK_CACHE_MAX_BYTES
        {
            let Some(old) = self.tracks.pop_front() else {
                break;
            };
            self.track_bytes -= old.byte_len();
            // Only frames from the key frame's instant on are kept: one
            // lost now is one a client starting there would miss.
            self.tracks_lost |= !self.frames.is_empty();
        }
    }

    fn clear(&mut self) {
        self.frames.clear();
        self.bytes = 0;
        self.broken = true;
        self.tracks.clear();
        self.track_bytes = 0;
    }
}

/// Of frames given as (track, media time) in order, the positions of the
/// one of each track that covers the instant `at`: the last that starts at
/// or before it (of two at one time, the later given).
fn covering<T: PartialEq>(
    frames: impl Iterator<Item = (T, MediaTime)>,
    at: MediaTime,
) -> Vec<usize> {
    let mut found: Vec<(T, MediaTime, usize)> = Vec::new();
    for (i, (track, time)) in frames.enumerate() {
        if time > at {
            continue;
        }
        match found.iter_mut().find(|(t, ..)| *t == track) {
            Some(c) if c.1 <= time => (c.1, c.2) = (time, i),
            Some(_) => {}
            None => found.push((track, time, i)),
        }
    }
    found.into_iter().map(|(.., i)| i).collect()
}

/// Where a new TCP client starts ([`Channel::subscribe_with_tracks`]).
pub struct Start {
    /// The frames of the current GOP, from its key frame (empty: the client
    /// waits for the next key frame).
    pub gop: Vec<Arc<Frame>>,
    /// The tracks' cached frames, in publishing order: of each, the one
    /// that covers the key frame's instant and all after.
    pub tracks: Vec<Arc<Frame>>,
    /// Every picture after `gop`.
    pub rx: broadcast::Receiver<Arc<Frame>>,
    /// Every track frame after `tracks`.
    pub tracks_rx: broadcast::Receiver<Arc<Frame>>,
}

/// A running channel, shared read-only with sinks and the control API.
/// Only its camera task writes to `info` and `status`.
pub struct Channel {
    pub spec: ChannelSpec,
    frames: broadcast::Sender<Arc<Frame>>,
    /// Frames of the tracks besides video (their `track` says which), apart
    /// from the video's ring so that they never push pictures out of it.
    track_frames: broadcast::Sender<Arc<Frame>>,
    /// Held only to push a frame and send it, or to subscribe and copy the
    /// cache: never across an await.
    gop: std::sync::Mutex<GopCache>,
    pub info: watch::Sender<StreamInfo>,
    pub status: watch::Sender<CameraStatus>,
    pub metrics: ChannelMetrics,
    /// Where the channel's streams stand (refreshed by the camera task every
    /// [`resume::POINT_EVERY`]), for the runtime to keep.
    point: std::sync::Mutex<Option<resume::ChannelPoint>>,
    /// Cancelled when the camera task has ended: nothing of the channel is
    /// sent after, and its point is the last one.
    ended: tokio_util::sync::CancellationToken,
    /// When the channel sent its first multicast packet.
    first_sent: std::sync::OnceLock<SystemTime>,
}

impl Channel {
    pub fn new(spec: ChannelSpec, metrics: ChannelMetrics, now: SystemTime) -> Arc<Channel> {
        let (frames, _) = broadcast::channel(RING_FRAMES);
        let (track_frames, _) = broadcast::channel(TRACK_RING_FRAMES);
        metrics.set_state(CameraState::Connecting);
        Arc::new(Channel {
            spec,
            frames,
            track_frames,
            gop: std::sync::Mutex::new(GopCache::default()),
            info: watch::Sender::new(StreamInfo::default()),
            status: watch::Sender::new(CameraStatus {
                state: CameraState::Connecting,
                since: now,
                last_error: None,
                last_error_at: None,
                reconnects: 0,
            }),
            metrics,
            point: std::sync::Mutex::new(None),
            ended: Default::default(),
            first_sent: Default::default(),
        })
    }

    /// Where the channel's streams last stood; `None` before its first
    /// picture.
    pub fn point(&self) -> Option<resume::ChannelPoint> {
        self.point.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set_point(&self, p: resume::ChannelPoint) {
        *self.point.lock().unwrap_or_else(|e| e.into_inner()) = Some(p);
    }

    /// When the channel sent its first multicast packet; `None` before.
    pub fn first_sent(&self) -> Option<SystemTime> {
        self.first_sent.get().copied()
    }

    /// Until the camera task has ended ([`Publisher::finish`]).
    pub async fn ended(&self) {
        self.ended.cancelled().await;
    }

    /// A new sink: receives every frame published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Frame>> {
        self.frames.subscribe()
    }

    /// A new sink that starts at a key frame: the frames of the current GOP
    /// (empty if none is cached), and a receiver for every frame after them.
    /// No frame is in both, none is missing between them.
    pub fn subscribe_from_key_frame(&self) -> (Vec<Arc<Frame>>, broadcast::Receiver<Arc<Frame>>) {
        let gop = self.gop.lock().unwrap_or_else(|e| e.into_inner());
        (gop.frames.clone(), self.frames.subscribe())
    }

    /// A new sink of pictures and of the tracks besides them, that starts at
    /// the cached key frame with the tracks' frames from its instant on
    /// ([`Start`]). No frame is in both a cache and its receiver, none is
    /// missing between them. When the tracks' cache no longer reaches back
    /// to the key frame, the client waits for the next one.
    pub fn subscribe_with_tracks(&self) -> Start {
        let gop = self.gop.lock().unwrap_or_else(|e| e.into_inner());
        let whole = !gop.tracks_lost;
        Start {
            gop: if whole {
                gop.frames.clone()
            } else {
                Vec::new()
            },
            tracks: if whole && !gop.frames.is_empty() {
                gop.tracks.iter().cloned().collect()
            } else {
                Vec::new()
            },
            rx: self.frames.subscribe(),
            tracks_rx: self.track_frames.subscribe(),
        }
    }

    /// The last picture's media time and RTP timestamp, if one was sent.
    pub fn last_picture(&self) -> Option<(MediaTime, u32)> {
        self.gop.lock().unwrap_or_else(|e| e.into_inner()).last
    }

    /// A new sink of the tracks besides video, from now on.
    pub fn subscribe_tracks(&self) -> broadcast::Receiver<Arc<Frame>> {
        self.track_frames.subscribe()
    }

    fn publish_track(&self, frame: Frame) {
        let frame = Arc::new(frame);
        let mut gop = self.gop.lock().unwrap_or_else(|e| e.into_inner());
        gop.push_track(&frame);
        let _ = self.track_frames.send(frame);
    }

    /// Publishes a frame to every sink.
    fn publish(&self, frame: Frame) {
        let frame = Arc::new(frame);
        let mut gop = self.gop.lock().unwrap_or_else(|e| e.into_inner());
        gop.push(&frame);
        // No subscribers is fine: the frame is simply dropped.
        let _ = self.frames.send(frame);
    }

    fn clear_gop(&self) {
        self.gop.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    fn set_state(&self, state: CameraState) {
        self.metrics.set_state(state);
        self.status.send_if_modified(|s| {
            if s.state == state {
                return false;
            }
            s.state = state;
            s.since = SystemTime::now();
            true
        });
    }
}

/// The camera task's side of a channel: receives ingest events, packetizes
/// with the channel core, sends the channel's multicast, publishes to the
/// other sinks.
pub struct Publisher {
    core: ChannelCore,
    channel: Arc<Channel>,
    streaming: bool,
    emitter: Option<emitter::Emitter>,
    /// One per track besides video, in the core's order (`None`: the
    /// channel sends that kind nowhere by multicast).
    track_emitters: Vec<Option<emitter::Emitter>>,
    cname: String,
    recorder: Option<crate::record::ChannelRecorder>,
    /// What was last logged as not carried, so a reconnecting camera does
    /// not log it again.
    logged_not_carried: Vec<String>,
    last_track_warn: Option<Instant>,
    /// When the last picture went to the multicast emitter.
    last_sent: Option<SystemTime>,
    /// The tracks' frames that came in this session before its first
    /// picture, which nothing places in time yet: at it, the one of each
    /// track that covers its instant and those after go on, so its sound
    /// starts with it. At most [`PENDING_TRACK_FRAMES`] (the oldest go).
    pending_tracks: std::collections::VecDeque<(usize, Bytes, i64, Instant)>,
}

/// Track frames held for a session's first picture: 2.7 s of AAC at 48 kHz,
/// longer than cameras take from their first sound to their first picture.
const PENDING_TRACK_FRAMES: usize = TRACK_RING_FRAMES;

impl Publisher {
    /// `cname` names the RTCP source when the channel is sent by multicast.
    pub fn new(channel: Arc<Channel>, ids: StreamIds, cname: String) -> Self {
        let core = ChannelCore::new(ids, channel.spec.ingest.payload_size);
        channel.info.send_modify(|i| i.ssrc = ids.ssrc);
        let emitter = channel
            .spec
            .multicast
            .map(|spec| emitter::Emitter::new(channel.spec.id, spec, cname.clone(), ids.ssrc));
        Publisher {
            core,
            channel,
            streaming: false,
            emitter,
            track_emitters: Vec::new(),
            cname,
            recorder: None,
            logged_not_carried: Vec::new(),
            last_track_warn: None,
            last_sent: None,
            pending_tracks: Default::default(),
        }
    }

    /// The channel continues an earlier emitter's streams, numbered as
    /// of `at` ([`ChannelCore::resume`]).
    pub fn resume(&mut self, tracks: Vec<(TrackKind, StreamIds, u32)>, at: Instant) {
        self.core.resume(tracks, at);
    }

    /// The camera task ends: the channel's point becomes the exact one of
    /// its last packets (nothing more is sent after it, so a stream that
    /// continues it needs no margin for packets sent since), and whoever
    /// waits on [`Channel::ended`] goes on. Returns that point.
    pub fn finish(&mut self) -> Option<resume::ChannelPoint> {
        let last = self
            .core
            .point(Instant::now(), SystemTime::now, Duration::ZERO)
            .map(|mut p| {
                // Sent when the last picture was (a later sound packet
                // only makes its continuation start further ahead).
                let sent = self.last_sent.map_or(p.video.sent_unix_ms, resume::unix_ms);
                for s in std::iter::once(&mut p.video).chain(p.tracks.values_mut()) {
                    s.packet_rate = 0;
                    s.sent_unix_ms = sent;
                }
                p
            });
        if let Some(p) = &last {
            self.channel.set_point(p.clone());
        }
        self.channel.ended.cancel();
        last.or_else(|| self.channel.point())
    }

    /// Refreshes the channel's point when it is due.
    fn keep_point(&mut self, now: Instant) {
        if let Some(p) = self.core.point(now, SystemTime::now, resume::POINT_EVERY) {
            self.channel.set_point(p);
        }
    }

    /// Records the channel's material too.
    pub fn set_recorder(&mut self, recorder: crate::record::ChannelRecorder) {
        self.recorder = Some(recorder);
    }

    /// The tracks as sinks and the SDP see them.
    fn track_infos(&self) -> Vec<TrackInfo> {
        self.core
            .tracks()
            .iter()
            .map(|t| TrackInfo {
                desc: t.desc.clone(),
                ssrc: t.ids.ssrc,
                payload_type: t.payload_type,
                rtp_base: t.ids.rtp_base,
            })
            .collect()
    }

    /// The session's first picture went: the tracks' frames held for it
    /// go on, from the one of each track that covers its instant.
    fn release_pending_tracks(&mut self, picture: MediaTime) {
        let pending = std::mem::take(&mut self.pending_tracks);
        let times: Vec<Option<MediaTime>> = pending
            .iter()
            .map(|(i, _, elapsed, _)| self.core.track_time(*i, *elapsed))
            .collect();
        // Of each track, the frame that covers the picture's instant.
        let covering = covering(
            pending
                .iter()
                .zip(&times)
                // A frame nothing places (an unknown track) covers nothing.
                .map(|((i, ..), t)| (*i, t.unwrap_or(MediaTime(i64::MAX)))),
            picture,
        );
        for (k, ((i, data, elapsed, arrival), t)) in pending.into_iter().zip(times).enumerate() {
            if t.is_some_and(|t| t > picture) || covering.contains(&k) {
                self.track_frame(i, data, elapsed, arrival);
            }
        }
    }

    fn publish_info(&self) {
        let (Some(codec), Some(params)) = (self.core.codec(), self.core.params()) else {
            return;
        };
        let params = params.clone();
        self.channel.info.send_modify(|i| {
            i.video = params.video_info(codec);
            i.codec = Some(codec);
            i.params = params;
            i.version += 1;
        });
    }
}

impl Sink for Publisher {
    fn session_started(&mut self, codec: Codec) {
        self.core.start_session(codec);
        self.pending_tracks.clear();
        // The new session's pictures do not follow the old GOP.
        self.channel.clear_gop();
        self.streaming = false;
        if self.channel.info.borrow().codec != Some(codec) {
            self.publish_info();
        }
    }

    fn parameters(&mut self, nals: Vec<Bytes>) {
        if self.core.set_params(nals) {
            self.publish_info();
        }
    }

    fn access_unit(&mut self, au: AccessUnit, source_time: MediaTime, arrival: Instant) {
        let Some((frame, params_changed)) = self.core.push(&au, source_time, arrival) else {
            return;
        };
        if params_changed {
            self.publish_info();
        }
        if !self.streaming {
            self.streaming = true;
            self.channel.set_state(CameraState::Streaming);
        }
        let m = &self.channel.metrics;
        m.frames.inc();
        if frame.key {
            m.key_frames.inc();
        }
        m.packets.inc_by(frame.packets.len() as u64);
        m.bytes.inc_by(frame.byte_len() as u64);
        let wall = SystemTime::now();
        if let Some(e) = &mut self.emitter {
            e.send(&frame, m, arrival);
            if self.last_sent.is_none() {
                let _ = self.channel.first_sent.set(wall);
            }
            self.last_sent = Some(wall);
        }
        if let Some(r) = &mut self.recorder {
            let params: Vec<Bytes> = if au.key {
                self.core
                    .params()
                    .map(|p| p.iter().cloned().collect())
                    .unwrap_or_default()
            } else {
                Vec::new()
            };
            r.push(&au, &params, frame.time, wall);
        }
        let picture = frame.time;
        self.channel.publish(frame);
        if self.core.take_rebased() {
            // A resumed channel moved its tracks' timestamps on at this
            // picture: RTP-Info must name the new ones.
            let infos = self.track_infos();
            self.channel.info.send_modify(|i| {
                i.tracks = infos;
                i.version += 1;
            });
        }
        if !self.pending_tracks.is_empty() {
            self.release_pending_tracks(picture);
        }
        self.keep_point(arrival);
    }

    fn tracks(&mut self, tracks: Vec<TrackDesc>, not_carried: Vec<String>) {
        let id = self.channel.spec.id;
        if not_carried != self.logged_not_carried {
            for what in &not_carried {
                tracing::warn!(channel = id, "the camera offers {what}: not carried");
            }
            self.logged_not_carried = not_carried.clone();
        }
        let changed = self.core.set_tracks(tracks);
        // Held frames were numbered by the tracks before.
        self.pending_tracks.clear();
        if let Some(r) = &mut self.recorder {
            let descs: Vec<TrackDesc> = self.core.tracks().iter().map(|t| t.desc.clone()).collect();
            r.set_tracks(&descs);
        }
        // Sockets and RTCP state follow the tracks: kept for a track whose
        // identity and clock stayed, opened for a new one.
        let mut old = std::mem::take(&mut self.track_emitters);
        for t in self.core.tracks() {
            let kept = old
                .iter_mut()
                .find(|e| {
                    e.as_ref().is_some_and(|e| {
                        e.ssrc() == t.ids.ssrc && e.clock_rate() == t.desc.clock_rate
                    })
                })
                .and_then(Option::take);
            let emitter = kept.or_else(|| {
                let spec = self.channel.spec.multicast?;
                let dest = spec.track(t.desc.kind)?;
                Some(emitter::Emitter::for_track(
                    id,
                    EmitSpec { dest, ..spec },
                    self.cname.clone(),
                    t.ids.ssrc,
                    t.desc.clock_rate,
                ))
            });
            if changed {
                tracing::info!(channel = id, track = %t.desc.name(), ssrc = t.ids.ssrc, multicast = emitter.is_some(), "track set up");
            }
            self.track_emitters.push(emitter);
        }
        let now = Instant::now();
        for e in old.iter_mut().flatten() {
            e.bye(now);
        }
        let infos = self.track_infos();
        self.channel.info.send_if_modified(|i| {
            if !changed && i.not_carried == not_carried {
                return false;
            }
            i.tracks = infos;
            i.not_carried = not_carried;
            i.version += 1;
            true
        });
    }

    fn track_frame(&mut self, index: usize, data: Bytes, elapsed: i64, arrival: Instant) {
        let m = &self.channel.metrics;
        if data.len() > MAX_TRACK_FRAME {
            // A metadata document without end (the depacketizer joins until
            // a marker): dropped, counted, never held.
            m.track_errors.inc();
            return;
        }
        if self.core.awaits_first_picture() && index < self.core.tracks().len() {
            if self.pending_tracks.len() >= PENDING_TRACK_FRAMES {
                self.pending_tracks.pop_front();
            }
            self.pending_tracks
                .push_back((index, data, elapsed, arrival));
            return;
        }
        match self.core.push_track(index, &data, elapsed) {
            None => {}
            Some(Err(e)) => {
                m.track_errors.inc();
                if self
                    .last_track_warn
                    .is_none_or(|t| arrival.duration_since(t) >= Duration::from_secs(10))
                {
                    self.last_track_warn = Some(arrival);
                    let name = self.core.tracks().get(index).map(|t| t.desc.name());
                    tracing::warn!(channel = self.channel.spec.id, track = name.unwrap_or_default(), error = %e, "track frame dropped");
                }
            }
            Some(Ok(frame)) => {
                m.track_frames.inc();
                if let Some(Some(e)) = self.track_emitters.get_mut(index) {
                    e.send(&frame, m, arrival);
                }
                if let Some(r) = &mut self.recorder {
                    r.push_track(index, &data, frame.time);
                }
                self.channel.publish_track(frame);
            }
        }
    }

    fn connecting(&mut self) {
        self.channel.set_state(CameraState::Connecting);
    }

    fn session_ended(&mut self, error: &IngestError) {
        self.core.end_session();
        self.pending_tracks.clear();
        if let Some(r) = &mut self.recorder {
            r.end();
        }
        self.streaming = false;
        self.channel.metrics.reconnects.inc();
        self.channel.status.send_modify(|s| {
            s.last_error = Some(error.to_string());
            s.last_error_at = Some(SystemTime::now());
            s.reconnects += 1;
        });
        self.channel.set_state(CameraState::Backoff);
    }

    fn stopped(&mut self) {
        if let Some(r) = &mut self.recorder {
            r.end();
        }
        // No RTCP BYE: the stream goes on after a restart of this server,
        // or from the failover server that takes the channel, with the same
        // SSRC, and a player told goodbye drops the source for good (ffmpeg
        // ends its input when every stream said BYE). Receivers see a gap.
        self.channel.set_state(CameraState::Stopped);
    }
}
