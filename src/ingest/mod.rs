//! Ingest: each camera read once, over TCP.
//!
//! - `rtsp://`: RTSP with RTP interleaved on the TCP connection (retina).
//! - `tcp://host:port`: connect and read a raw Annex-B byte stream.
//! - `tcp-listen://addr:port`: accept an encoder that pushes one.
//!
//! A session ends only with an error (a live stream has no normal end); the
//! camera task then waits a backoff delay and reconnects. Everything the
//! camera sends is validated; bad input ends the session with an error that
//! says where, never a panic.

pub mod annexb;
pub mod backoff;
pub mod rtsp;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Source;
use crate::media::annexb::AnnexBError;
use crate::media::{AccessUnit, AuError, Codec, MediaTime, TrackDesc, TrackKind};
use crate::spec::ChannelSpec;
use backoff::{Backoff, STABLE_SESSION};

/// Receives what a camera session produces.
pub trait Sink {
    /// A session is up and will deliver `codec`.
    fn session_started(&mut self, codec: Codec);
    /// Parameter sets learned out of band (the camera's SDP).
    fn parameters(&mut self, nals: Vec<Bytes>);
    /// One access unit; `source_time` is in 90 kHz ticks of the session's
    /// own timeline, `arrival` when its first byte arrived.
    fn access_unit(&mut self, au: AccessUnit, source_time: MediaTime, arrival: Instant);
    /// The session's tracks besides video (their index is `track_frame`'s),
    /// and what the camera offered that is not taken, by name and reason.
    /// Called after `session_started`, before the first frame.
    fn tracks(&mut self, _tracks: Vec<TrackDesc>, _not_carried: Vec<String>) {}
    /// One frame of track `index`: `elapsed` is in the track's clock since
    /// the session's start, on the same time line as the video's
    /// `source_time`.
    fn track_frame(&mut self, _index: usize, _data: Bytes, _elapsed: i64, _arrival: Instant) {}
    /// The session is about to set up tracks besides video (after the
    /// camera described them): from now a failure may be theirs.
    fn setting_up_tracks(&mut self) {}
    /// Connecting (or waiting for an encoder to connect).
    fn connecting(&mut self) {}
    /// The session ended with `error`; a reconnect follows.
    fn session_ended(&mut self, _error: &IngestError) {}
    /// The camera task stopped.
    fn stopped(&mut self) {}
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("read error after {offset} bytes: {source}")]
    Read { offset: u64, source: std::io::Error },
    #[error("the camera closed the connection after {offset} bytes{}", unfinished_note(*.discarded))]
    Closed {
        offset: u64,
        /// Bytes of an unfinished access unit dropped at the close.
        discarded: usize,
    },
    /// An RTSP camera ended the session. The RTSP client does not count the
    /// connection's bytes; what the session delivered is what it says.
    #[error("the camera closed the RTSP session {}", rtsp_session_note(*.frames, *.bytes, *.after))]
    RtspClosed {
        /// Pictures delivered since PLAY, and their bytes.
        frames: u64,
        bytes: u64,
        /// Time since PLAY.
        after: Duration,
    },
    #[error("no picture for {0:?}: the camera stalled")]
    Stalled(Duration),
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout { after: Duration, what: &'static str },
    #[error("malformed Annex-B stream: {0}")]
    AnnexB(#[from] AnnexBError),
    #[error("malformed access unit: {0}")]
    Au(#[from] AuError),
    #[error("malformed frame from the camera: {0}")]
    Frame(String),
    #[error("RTSP: {0}")]
    Rtsp(String),
    #[error("the camera offers no H.264 or H.265 video stream (it offers: {0})")]
    NoVideo(String),
    #[error("a new encoder connected from {peer}, sent a picture, and replaced this one")]
    Replaced {
        peer: SocketAddr,
        /// The new connection, taken over by the next session.
        ready: Option<Box<annexb::Ready>>,
    },
}

fn rtsp_session_note(frames: u64, bytes: u64, after: Duration) -> String {
    let secs = after.as_secs_f64();
    if frames == 0 {
        format!("{secs:.1} s after PLAY, before sending a picture")
    } else {
        let size = if bytes < 1_000_000 {
            format!("{} kB", bytes.div_ceil(1000))
        } else {
            format!("{:.1} MB", bytes as f64 / 1e6)
        };
        format!("after {frames} pictures ({size} of video) in {secs:.1} s")
    }
}

fn unfinished_note(discarded: usize) -> String {
    if discarded == 0 {
        String::new()
    } else {
        format!(" (an unfinished picture of {discarded} bytes was dropped, not relayed)")
    }
}

/// Runs a camera until `cancel`: sessions, and backoff between them.
pub async fn run_camera(spec: &ChannelSpec, sink: &mut impl Sink, cancel: CancellationToken) {
    let ing = &spec.ingest;
    let mut backoff = Backoff::new(ing.reconnect_min, ing.reconnect_max);
    let mut listener: Option<TcpListener> = None;
    let mut candidates = spec
        .codec
        .map(|c| annexb::Candidates::new(c, spec.timing, ing.stall_timeout));
    let mut pending: Option<annexb::Ready> = None;
    let mut continuity = Continuity::default();
    let mut breaker = TrackBreaker::default();
    loop {
        sink.connecting();
        let started = Instant::now();
        let mut frames = 0;
        let mut tracks_tried = false;
        let wanted = breaker.wanted(&spec.tracks, started);
        let mut error = {
            let mut tracker = Tracker {
                inner: sink,
                frames: &mut frames,
                continuity: &mut continuity,
                channel: spec.id,
                tracks_tried: &mut tracks_tried,
            };
            tokio::select! {
                e = session(spec, &wanted, &mut tracker, &mut listener, candidates.as_mut(), pending.take()) => e,
                () = cancel.cancelled() => break,
            }
        };
        continuity.session_ended();
        let delivered = frames > 0;
        tracing::warn!(channel = spec.id, source = %spec.source, %error, frames, "camera session ended");
        // A session that failed before it set up any track (a camera not
        // ready to DESCRIBE) says nothing about the tracks.
        if !tracks_tried {
            breaker.not_tried();
        }
        if let Some(off) = breaker.session_ended(&error, Instant::now()) {
            tracing::warn!(
                channel = spec.id,
                "the session with audio/metadata failed; the next sessions take the video only for {off:?}, then try the tracks again"
            );
        }
        sink.session_ended(&error);
        if let IngestError::Replaced { ready, .. } = &mut error {
            // The newer encoder takes over at once: no backoff.
            pending = ready.take().map(|r| *r);
            continue;
        }
        if delivered && started.elapsed() >= STABLE_SESSION {
            backoff.reset();
        }
        let delay = backoff.next_delay(rand::random::<f64>());
        tracing::debug!(
            channel = spec.id,
            ?delay,
            attempt = backoff.attempt(),
            "reconnecting after backoff"
        );
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = cancel.cancelled() => break,
        }
    }
    sink.stopped();
}

/// Keeps a camera's audio or metadata from costing its video: a session
/// that asked for tracks and failed with an RTSP or packet error before it
/// was stable (a track the camera sends badly, a SETUP it refuses...)
/// makes the next sessions take the video only, for a cool-down that
/// doubles on each repeat (1 min up to 1 h) and resets once a session with
/// tracks has run for [`STABLE_SESSION`]. Sans-IO: time is passed in.
#[derive(Debug)]
struct TrackBreaker {
    off_until: Option<Instant>,
    cooldown: Duration,
    /// When the current session with tracks started.
    with_tracks_since: Option<Instant>,
}

const TRACK_COOLDOWN_MIN: Duration = Duration::from_secs(60);
const TRACK_COOLDOWN_MAX: Duration = Duration::from_secs(3600);

impl Default for TrackBreaker {
    fn default() -> Self {
        TrackBreaker {
            off_until: None,
            cooldown: TRACK_COOLDOWN_MIN,
            with_tracks_since: None,
        }
    }
}

impl TrackBreaker {
    /// The tracks the session starting at `now` asks for.
    fn wanted(&mut self, tracks: &[TrackKind], now: Instant) -> Vec<TrackKind> {
        self.with_tracks_since = None;
        if self.off_until.is_some_and(|t| now < t) {
            return vec![TrackKind::Video];
        }
        self.off_until = None;
        if tracks.iter().any(|k| *k != TrackKind::Video) {
            self.with_tracks_since = Some(now);
        }
        tracks.to_vec()
    }

    /// The session ended before it set up any track besides video.
    fn not_tried(&mut self) {
        self.with_tracks_since = None;
    }

    /// A session that asked for tracks ended; returns the cool-down when
    /// that turns them off: an RTSP or packet error before the session was
    /// stable (a SETUP or PLAY the tracks broke, a track the camera sends
    /// badly). One that ran longer resets the cool-down and costs nothing.
    fn session_ended(&mut self, error: &IngestError, now: Instant) -> Option<Duration> {
        let since = self.with_tracks_since.take()?;
        if now.saturating_duration_since(since) >= STABLE_SESSION {
            self.cooldown = TRACK_COOLDOWN_MIN;
            return None;
        }
        if !matches!(error, IngestError::Rtsp(_)) {
            return None;
        }
        let off = self.cooldown;
        self.off_until = Some(now + off);
        self.cooldown = (self.cooldown * 2).min(TRACK_COOLDOWN_MAX);
        Some(off)
    }
}

/// Counts a session's pictures (for the backoff reset and the log) and
/// logs the first one after an outage.
struct Tracker<'a, S> {
    inner: &'a mut S,
    frames: &'a mut u64,
    continuity: &'a mut Continuity,
    channel: u32,
    /// The session got as far as setting up tracks besides video.
    tracks_tried: &'a mut bool,
}

/// When a camera's pictures stopped and came back, across its sessions.
/// Sans-IO: the arrival times are the pictures'.
#[derive(Debug, Default)]
struct Continuity {
    last_picture: Option<Instant>,
    /// A session ended since the last picture.
    interrupted: bool,
}

impl Continuity {
    /// A picture arrived at `at`. Returns how long the pictures had stopped
    /// if this is the first one after a session ended.
    fn picture(&mut self, at: Instant) -> Option<Duration> {
        let outage = self
            .last_picture
            .filter(|_| self.interrupted)
            .map(|t| at.saturating_duration_since(t));
        self.interrupted = false;
        self.last_picture = Some(at);
        outage
    }

    fn session_ended(&mut self) {
        self.interrupted = true;
    }
}

impl<S: Sink> Sink for Tracker<'_, S> {
    fn session_started(&mut self, codec: Codec) {
        self.inner.session_started(codec);
    }
    fn parameters(&mut self, nals: Vec<Bytes>) {
        self.inner.parameters(nals);
    }
    fn access_unit(&mut self, au: AccessUnit, t: MediaTime, arrival: Instant) {
        if let Some(outage) = self.continuity.picture(arrival) {
            tracing::info!(
                channel = self.channel,
                outage_ms = outage.as_millis() as u64,
                "camera back after {:.1} s",
                outage.as_secs_f64()
            );
        }
        *self.frames += 1;
        self.inner.access_unit(au, t, arrival);
    }
    fn tracks(&mut self, tracks: Vec<TrackDesc>, not_carried: Vec<String>) {
        self.inner.tracks(tracks, not_carried);
    }
    fn setting_up_tracks(&mut self) {
        *self.tracks_tried = true;
    }
    fn track_frame(&mut self, index: usize, data: Bytes, elapsed: i64, arrival: Instant) {
        self.inner.track_frame(index, data, elapsed, arrival);
    }
}

async fn session(
    spec: &ChannelSpec,
    wanted: &[TrackKind],
    sink: &mut impl Sink,
    listener: &mut Option<TcpListener>,
    candidates: Option<&mut annexb::Candidates>,
    pending: Option<annexb::Ready>,
) -> IngestError {
    let stall = spec.ingest.stall_timeout;
    match &spec.source {
        Source::Rtsp(url) => rtsp::session(url, stall, wanted, sink).await,
        Source::TcpConnect { host, port } => {
            let Some(codec) = spec.codec else {
                return IngestError::Frame("raw Annex-B source without a codec".into());
            };
            let addr = format!("{host}:{port}");
            let stream =
                match tokio::time::timeout(stall, tokio::net::TcpStream::connect(&addr)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(source)) => return IngestError::Connect { addr, source },
                    Err(_) => {
                        return IngestError::Timeout {
                            after: stall,
                            what: "the TCP connection",
                        };
                    }
                };
            let _ = stream.set_nodelay(true);
            annexb::session(stream, &[], codec, spec.timing, stall, sink, None).await
        }
        Source::TcpListen(addr) => {
            let (Some(codec), Some(candidates)) = (spec.codec, candidates) else {
                return IngestError::Frame("raw Annex-B source without a codec".into());
            };
            if listener.is_none() {
                match TcpListener::bind(addr).await {
                    Ok(l) => *listener = Some(l),
                    Err(source) => {
                        return IngestError::Listen {
                            addr: *addr,
                            source,
                        };
                    }
                }
            }
            let l = listener.as_ref().expect("bound above");
            // No encoder yet: the first allowed connection (or one already
            // proven while the last session ended) becomes it.
            let ready = match pending {
                Some(r) => r,
                None => loop {
                    tokio::select! {
                        a = l.accept() => match a {
                            Ok((stream, peer)) if candidates.allowed(peer, &spec.allow) => {
                                break annexb::Ready { stream, peer, prefix: Vec::new() };
                            }
                            Ok(_) => {}
                            Err(source) => {
                                return IngestError::Listen {
                                    addr: *addr,
                                    source,
                                };
                            }
                        },
                        r = candidates.ready() => break r,
                    }
                },
            };
            let _ = ready.stream.set_nodelay(true);
            tracing::info!(channel = spec.id, peer = %ready.peer, "encoder connected");
            annexb::session(
                ready.stream,
                &ready.prefix,
                codec,
                spec.timing,
                stall,
                sink,
                Some(annexb::Replacement {
                    listener: l,
                    candidates,
                    allow: &spec.allow,
                }),
            )
            .await
        }
    }
}

#[cfg(test)]
mod breaker_tests {
    use super::*;

    #[test]
    fn a_camera_that_fails_before_its_tracks_are_set_up_keeps_them() {
        let all = TrackKind::ALL;
        let t0 = Instant::now();
        let mut b = TrackBreaker::default();
        assert_eq!(b.wanted(&all, t0), all);
        // The DESCRIBE failed (a camera not ready yet): not the tracks.
        b.not_tried();
        let e = IngestError::Rtsp("503 Service Unavailable".into());
        assert_eq!(b.session_ended(&e, t0 + Duration::from_millis(10)), None);
        assert_eq!(b.wanted(&all, t0 + Duration::from_millis(400)), all);
    }

    #[test]
    fn failing_tracks_cost_the_video_one_reconnect_then_wait_out_a_growing_cool_down() {
        let all = TrackKind::ALL;
        let rtsp = IngestError::Rtsp("bad audio packet".into());
        let t0 = Instant::now();
        let mut b = TrackBreaker::default();
        assert_eq!(b.wanted(&all, t0), all);
        // Fails at once: video only for a minute, then the tracks again.
        let t1 = t0 + Duration::from_secs(2);
        assert_eq!(b.session_ended(&rtsp, t1), Some(TRACK_COOLDOWN_MIN));
        assert_eq!(b.wanted(&all, t1), [TrackKind::Video]);
        assert_eq!(
            b.session_ended(&rtsp, t1 + Duration::from_secs(5)),
            None,
            "video-only sessions never trip it"
        );
        let t2 = t1 + TRACK_COOLDOWN_MIN;
        assert_eq!(b.wanted(&all, t2), all);
        assert_eq!(
            b.session_ended(&rtsp, t2 + Duration::from_secs(1)),
            Some(2 * TRACK_COOLDOWN_MIN)
        );
        // A stable session with tracks resets the cool-down; a camera that
        // is merely unreachable never trips it.
        let t3 = t2 + Duration::from_secs(3600);
        assert_eq!(b.wanted(&all, t3), all);
        assert_eq!(b.session_ended(&rtsp, t3 + STABLE_SESSION), None);
        assert_eq!(b.wanted(&all, t3 + STABLE_SESSION), all);
        let refused = IngestError::Timeout {
            after: Duration::from_secs(1),
            what: "x",
        };
        assert_eq!(b.session_ended(&refused, t3 + STABLE_SESSION), None);
        assert_eq!(b.wanted(&all, t3 + STABLE_SESSION), all);
        assert_eq!(
            b.session_ended(&rtsp, t3 + STABLE_SESSION),
            Some(TRACK_COOLDOWN_MIN)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continuity_measures_the_outage_from_the_last_picture_to_the_next() {
        let t0 = Instant::now();
        let mut c = Continuity::default();
        assert_eq!(c.picture(t0), None, "the first picture ends no outage");
        assert_eq!(c.picture(t0 + Duration::from_millis(40)), None);
        // The session ends a while after its last picture; the next one
        // comes 12.3 s after that picture.
        c.session_ended();
        let back = t0 + Duration::from_millis(40 + 12_300);
        assert_eq!(c.picture(back), Some(Duration::from_millis(12_300)));
        assert_eq!(c.picture(back + Duration::from_millis(40)), None);
        // Sessions that fail before a picture do not reset the start.
        c.session_ended();
        c.session_ended();
        assert_eq!(
            c.picture(back + Duration::from_secs(5)),
            Some(Duration::from_millis(4960))
        );
    }

    #[test]
    fn an_rtsp_session_end_says_what_the_session_delivered() {
        let e = IngestError::RtspClosed {
            frames: 4500,
            bytes: 62_500_000,
            after: Duration::from_millis(180_040),
        };
        assert_eq!(
            e.to_string(),
            "the camera closed the RTSP session after 4500 pictures (62.5 MB of video) in 180.0 s"
        );
        let e = IngestError::RtspClosed {
            frames: 0,
            bytes: 0,
            after: Duration::from_millis(1500),
        };
        assert_eq!(
            e.to_string(),
            "the camera closed the RTSP session 1.5 s after PLAY, before sending a picture"
        );
        let e = IngestError::RtspClosed {
            frames: 78,
            bytes: 96_512,
            after: Duration::from_millis(3020),
        };
        assert_eq!(
            e.to_string(),
            "the camera closed the RTSP session after 78 pictures (97 kB of video) in 3.0 s"
        );
    }
}
