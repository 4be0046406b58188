//! A TCP client's catch-up from the cached key frame to the live stream,
//! paced. Sans-IO: the runtime asks when the next frame is due and says when
//! it sent one.
//!
//! A new TCP client starts at the channel's cached key frame, so it has a
//! picture at once; the frames since then are old. Sent in one burst, they
//! arrive a GOP's worth of media time within milliseconds, and a receiver
//! that derives presentation times from arrival times cannot follow.
//! GStreamer's `rtpjitterbuffer` (the default `slave` mode of `rtspsrc`)
//! does exactly that: its clock-skew estimate moves from the first packet's
//! arrival towards the smallest (arrival − RTP time) seen, with a weight
//! that grows as `(media time / 2 s)²` over its first 2 s window and is 1/125
//! per frame after it, and it re-bases when that difference jumps by more
//! than 1 s. A burst of more than half a second of frames makes it stamp
//! frames alike (it never lets a timestamp go backwards), its parser then
//! interpolates past them and its decoder logs "decreasing timestamp" for
//! each later one: measured, 8 to 42 per connection.
//!
//! So the key frame goes at once and the frames after it at a bounded
//! speed-up, which such a receiver follows as a stream whose clock runs a
//! little fast:
//!
//! - within the first [`FAST_SPAN`] of media time after the key frame, at
//!   twice real time (each frame half its media interval after the previous);
//! - after it, each frame at most [`SLOW_CUT`] (and a quarter of its
//!   interval) earlier than its media interval: the estimator then trails
//!   the lead by about 125 × 4 ms = 0.5 s, half its re-base threshold.
//!
//! Both bounds were checked against a model of that jitter buffer (its
//! skew window, weights, re-base and no-going-back rules) for 5 to 60 fps,
//! joins 0.3 to 12 s into a GOP and arrival jitter up to 15 ms: every
//! presentation time increases, by 0.2 ms or more at 60 fps and 5 ms at
//! 25 fps, and it never re-bases (above 60 fps the margin thins out). And
//! against GStreamer 1.22 itself (`tests/rtsp_workstations.rs`; by hand, 40 s
//! from 3 s into a 4 s GOP: no warning, steps from 6 ms back to 36 ms). A client that joined 1 s
//! into a 25 fps GOP is live after 1 s; 2 s into it, after about 10 s.
//! ffmpeg, which times frames by their RTP timestamps only, decodes the
//! same frames either way.
//!
//! The catch-up ends at the first frame that arrived from the camera no
//! earlier than it was due: from then on the client is live and frames go
//! as they come.
//!
//! Sound and metadata start at the key frame's instant too ([`from_start`]),
//! from the channel's cache of them, and go in media-time order with the
//! pictures ([`Interleave`]), paced by the same schedule: a viewer hears the
//! first picture's sound, not silence until the pictures are live (a
//! client that joined late in a GOP heard nothing for up to the GOP).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::media::MediaTime;
use crate::media::time::CLOCK_RATE;
use crate::rtp::Frame;

/// The part of a track's frame from `start` on: all of it if it starts
/// there or later; of one that starts before, its part from `start` when
/// the track can be cut at any tick (`rate`: its clock rate; G.711), else
/// nothing (it would start before the client's first picture, earlier than
/// the client's RTP-Info names, and ffmpeg then drops it or times it back).
pub fn from_start(f: Arc<Frame>, start: MediaTime, rate: Option<u32>) -> Option<Arc<Frame>> {
    if f.time >= start {
        return Some(f);
    }
    let rate = i128::from(rate.filter(|r| *r > 0)?);
    // Ticks of the track's clock to cut, rounded up: the rest starts at
    // `start` or within a tick after.
    let behind = i128::from(start.0.saturating_sub(f.time.0));
    let clock = i128::from(CLOCK_RATE);
    let ticks = usize::try_from((behind * rate + clock - 1) / clock).ok()?;
    let at = i128::from(f.time.0) + (ticks as i128) * clock / rate;
    let at = MediaTime(i64::try_from(at).ok()?);
    crate::rtp::track::trim_front(&f, ticks, at).map(Arc::new)
}

/// A client's frames waiting to go, pictures and the tracks' frames
/// interleaved in media time: a track's frame goes before a picture if it
/// starts before that picture (or before the furthest picture sent: with
/// B-frames, pictures go back in media time). No track frame goes before
/// the first picture (without it a client has nothing to place it by), and
/// none starts before it: each is taken [`from_start`] of that picture,
/// whether it was cached, held for it or comes late.
#[derive(Debug, Default)]
pub struct Interleave {
    video: VecDeque<Arc<Frame>>,
    tracks: VecDeque<Arc<Frame>>,
    /// The furthest media time of the pictures taken; `None` before the first.
    high: Option<MediaTime>,
    /// The first picture's media time.
    start: Option<MediaTime>,
    /// Per track besides video (`track` − 1): its clock rate if its frames
    /// can be cut at any tick ([`crate::media::TrackDesc::byte_per_tick`]).
    cut: Vec<Option<u32>>,
    /// Track frames held at most: the oldest go beyond it.
    track_cap: usize,
}

impl Interleave {
    /// Holds at most `track_cap` frames of the tracks (the oldest go); `cut`
    /// as [`Interleave::cut`].
    pub fn new(track_cap: usize, cut: Vec<Option<u32>>) -> Self {
        Interleave {
            track_cap: track_cap.max(1),
            cut,
            ..Default::default()
        }
    }

    /// Starts over, as before a first picture (a client that skips to the
    /// next key frame).
    pub fn restart(&mut self) {
        self.video.clear();
        self.tracks.clear();
        self.high = None;
        self.start = None;
    }

    pub fn push_video(&mut self, f: Arc<Frame>) {
        self.video.push_back(f);
    }

    pub fn push_track(&mut self, f: Arc<Frame>) {
        let rate = self.rate(f.track);
        let f = match self.start {
            Some(start) => match from_start(f, start, rate) {
                Some(f) => f,
                None => return,
            },
            None => f,
        };
        if self.tracks.len() >= self.track_cap {
            self.tracks.pop_front();
        }
        self.tracks.push_back(f);
    }

    fn rate(&self, track: u8) -> Option<u32> {
        let i = usize::from(track).checked_sub(1)?;
        self.cut.get(i).copied().flatten()
    }

    pub fn video_len(&self) -> usize {
        self.video.len()
    }

    pub fn len(&self) -> usize {
        self.video.len() + self.tracks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.video.is_empty() && self.tracks.is_empty()
    }

    /// Whether a picture went already.
    pub fn started(&self) -> bool {
        self.high.is_some()
    }

    /// Whether the next frame to go is a picture (`Some(true)`) or a
    /// track's; `None` if none may go now.
    fn next_is_video(&self) -> Option<bool> {
        match (self.video.front(), self.tracks.front(), self.high) {
            (Some(v), Some(a), Some(h)) => Some(a.time >= h.max(v.time)),
            (Some(_), _, _) => Some(true),
            (None, Some(_), Some(_)) => Some(false),
            (None, _, _) => None,
        }
    }

    /// The next frame to go, if one may go now.
    pub fn front(&self) -> Option<&Arc<Frame>> {
        if self.next_is_video()? {
            self.video.front()
        } else {
            self.tracks.front()
        }
    }

    /// Takes [`Interleave::front`].
    pub fn pop(&mut self) -> Option<Arc<Frame>> {
        let video = self.next_is_video()?;
        if !video {
            return self.tracks.pop_front();
        }
        let v = self.video.pop_front()?;
        if self.start.is_none() {
            // The first picture: the tracks' frames held for it start at it.
            self.start = Some(v.time);
            let held = std::mem::take(&mut self.tracks);
            self.tracks = held
                .into_iter()
                .filter_map(|a| {
                    let rate = self.rate(a.track);
                    from_start(a, v.time, rate)
                })
                .collect();
        }
        self.high = Some(self.high.map_or(v.time, |h| h.max(v.time)));
        Some(v)
    }
}

/// Media time after the key frame sent at twice real time: the length of
/// GStreamer's skew-estimation window.
pub const FAST_SPAN: Duration = Duration::from_secs(2);
/// After [`FAST_SPAN`], how much earlier than its media interval a frame may
/// go: GStreamer's estimator follows 1/125 of a change per frame, so a lead
/// cut by 4 ms per frame keeps it 0.5 s behind, half of the 1 s at which it
/// re-bases (and breaks the timeline).
pub const SLOW_CUT: Duration = Duration::from_millis(4);

const FAST_SPAN_TICKS: i64 = FAST_SPAN.as_millis() as i64 * CLOCK_RATE as i64 / 1000;
const SLOW_CUT_TICKS: i64 = SLOW_CUT.as_millis() as i64 * CLOCK_RATE as i64 / 1000;

/// The schedule of one client's catch-up.
#[derive(Clone, Debug)]
pub struct CatchUp {
    /// Media time of the key frame the client started at.
    origin: MediaTime,
    /// The highest media time sent so far (B-frames go back in media time;
    /// the schedule never does).
    high: MediaTime,
    /// When the last frame sent was due.
    last_due: Instant,
}

impl CatchUp {
    /// A client that starts at `now` with the key frame at media time `key`.
    pub fn new(key: MediaTime, now: Instant) -> Self {
        CatchUp {
            origin: key,
            high: key,
            last_due: now,
        }
    }

    /// When the next frame, at media time `t`, is due.
    pub fn due(&self, t: MediaTime) -> Instant {
        // Media times come from the camera: saturate, never wrap.
        let gap = t.0.saturating_sub(self.high.0).max(0);
        let step = if self.high.0.saturating_sub(self.origin.0) < FAST_SPAN_TICKS {
            gap / 2
        } else {
            gap - (gap / 4).min(SLOW_CUT_TICKS)
        };
        // A jump of years cannot overflow the clock: such a frame is due now.
        self.last_due
            .checked_add(ticks_to_duration(step))
            .unwrap_or(self.last_due)
    }

    /// The frame at media time `t` was sent.
    pub fn sent(&mut self, t: MediaTime) {
        self.last_due = self.due(t);
        self.high = self.high.max(t);
    }

    /// Whether a frame at `t` that arrived from the camera at `arrival` is
    /// live: it came no earlier than it is due, so the catch-up is over.
    pub fn is_live(&self, t: MediaTime, arrival: Instant) -> bool {
        self.due(t) <= arrival
    }
}

fn ticks_to_duration(ticks: i64) -> Duration {
    Duration::from_nanos(
        (ticks.max(0) as u64).saturating_mul(1_000_000_000) / u64::from(CLOCK_RATE),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRAME: i64 = CLOCK_RATE as i64 / 25;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// A client joins `cached` frames into a 25 fps GOP at `t0`: the frames
    /// of the cache arrived one interval apart until just now, the live ones
    /// keep coming. Returns when each frame went out and when it was live.
    fn join(cached: i64, frames: i64) -> (Vec<Instant>, Option<i64>) {
        let t0 = Instant::now() + Duration::from_secs(60);
        let arrival = |k: i64| {
            let d = Duration::from_millis(40 * (k - cached + 1).unsigned_abs());
            if k < cached - 1 { t0 - d } else { t0 + d }
        };
        let mut c = CatchUp::new(MediaTime(0), t0);
        let mut sent = Vec::new();
        let mut live = None;
        for k in 0..frames {
            let t = MediaTime(k * FRAME);
            let at = if live.is_none() && c.is_live(t, arrival(k)) {
                live = Some(k);
                arrival(k)
            } else if live.is_some() {
                arrival(k)
            } else {
                let at = c.due(t).max(arrival(k));
                c.sent(t);
                at
            };
            sent.push(at);
        }
        (sent, live)
    }

    #[test]
    fn key_frame_at_once_then_twice_real_time_for_two_seconds() {
        let t0 = Instant::now();
        let mut c = CatchUp::new(MediaTime(1000), t0);
        assert_eq!(c.due(MediaTime(1000)), t0, "the key frame goes at once");
        c.sent(MediaTime(1000));
        let mut t = MediaTime(1000);
        for k in 1..=50 {
            t = t + FRAME;
            assert_eq!(c.due(t), t0 + ms(20 * k), "frame {k}");
            c.sent(t);
        }
        // 2 s of media are out after 1 s; from now on 4 ms per frame.
        t = t + FRAME;
        assert_eq!(c.due(t), t0 + ms(1000 + 36));
        c.sent(t);
        // At 10 fps too the cut is 4 ms; at 100 fps a quarter interval.
        t = t + 9000;
        assert_eq!(c.due(t), t0 + ms(1036 + 96));
        c.sent(t);
        t = t + 900;
        assert_eq!(c.due(t), t0 + ms(1132) + Duration::from_micros(7500));
    }

    #[test]
    fn frames_going_back_in_media_time_do_not_move_the_schedule_back() {
        let t0 = Instant::now();
        let mut c = CatchUp::new(MediaTime(0), t0);
        c.sent(MediaTime(3 * FRAME));
        let after_p = c.due(MediaTime(3 * FRAME));
        // B-frames before it in media time: due with it, not before.
        assert_eq!(c.due(MediaTime(FRAME)), after_p);
        c.sent(MediaTime(FRAME));
        assert_eq!(c.due(MediaTime(2 * FRAME)), after_p);
        assert_eq!(c.due(MediaTime(4 * FRAME)), after_p + ms(20));
    }

    #[test]
    fn a_client_one_second_into_the_gop_is_live_after_a_second() {
        let (sent, live) = join(25, 200);
        let live = live.expect("caught up");
        let t0 = sent[0];
        // Live at the frame whose arrival meets the schedule, 48 frames on,
        // within a second of the start; never a frame sent before it arrived or
        // two frames closer than 20 ms.
        assert_eq!(live, 48);
        assert!(
            sent[live as usize] - t0 <= ms(1000),
            "{:?}",
            sent[live as usize] - t0
        );
        for w in sent.windows(2) {
            assert!(
                w[1] >= w[0] + ms(20) - Duration::from_micros(1),
                "{:?}",
                w[1] - w[0]
            );
        }
    }

    #[test]
    fn a_long_gop_is_caught_up_slowly_and_surely() {
        // 6 s into a GOP: 1 s of the lead goes in the first second, the
        // other 4.96 s at 4 ms per 40 ms frame, 1240 frames (50 s) later.
        let (sent, live) = join(150, 2000);
        assert_eq!(live, Some(50 + 1240));
        for w in sent.windows(2) {
            assert!(w[1] > w[0]);
        }
    }

    #[test]
    fn a_live_frame_ends_it() {
        let t0 = Instant::now();
        let mut c = CatchUp::new(MediaTime(0), t0);
        c.sent(MediaTime(0));
        // The next frame arrives after it would be due: live.
        assert!(c.is_live(MediaTime(FRAME), t0 + ms(40)));
        assert!(!c.is_live(MediaTime(FRAME), t0 + ms(10)));
        // A camera outage in between: its frame is live however long it was.
        assert!(c.is_live(
            MediaTime(90 * CLOCK_RATE as i64),
            t0 + Duration::from_secs(91)
        ));
    }

    /// A channel that ran `gops` GOPs of 1 s at 25 fps and then
    /// `into_last` frames of the next, with sound beside it: `audio`'s
    /// frames of `samples` each, published in media-time order with the
    /// pictures.
    fn channel_with_sound(
        audio: crate::media::TrackDesc,
        samples: i64,
        into_last: i64,
    ) -> Arc<crate::channel::Channel> {
        use crate::channel::Publisher;
        use crate::channel::core::StreamIds;
        use crate::ingest::Sink;
        use crate::media::{AccessUnit, Codec};
        let spec = crate::spec::ChannelSpec::standalone(
            1,
            "s",
            crate::config::Source::TcpConnect {
                host: "h".into(),
                port: 1,
            },
            Codec::H264,
        );
        let ch = crate::channel::Channel::new(
            spec,
            crate::metrics::Metrics::new().channel(1),
            std::time::SystemTime::now(),
        );
        let ids = StreamIds {
            ssrc: 1,
            initial_seq: 0,
            rtp_base: 0,
        };
        let mut p = Publisher::new(ch.clone(), ids, String::new());
        p.session_started(Codec::H264);
        let rate = i64::from(audio.clock_rate);
        p.tracks(vec![audio], Vec::new());
        let t0 = Instant::now();
        let mut next_audio = 0;
        for k in 0..=(50 + into_last) {
            let t = k * FRAME;
            let nal = if k % 25 == 0 {
                vec![0x65, 0x88, 1]
            } else {
                vec![0x41, 0x9a, 1]
            };
            let au = AccessUnit::new(Codec::H264, vec![bytes::Bytes::from(nal)]).unwrap();
            p.access_unit(au, MediaTime(t), t0 + ms(40 * k as u64));
            // The sound that starts before the next picture.
            while next_audio * i64::from(CLOCK_RATE) / rate < t + FRAME {
                let data = bytes::Bytes::from(vec![0xd5; samples as usize]);
                p.track_frame(0, data, next_audio, t0 + ms(40 * k as u64));
                next_audio += samples;
            }
        }
        ch
    }

    /// What a paced client that joins `ch` now is sent, in order, with
    /// when each frame goes (relative to the key frame).
    fn play(ch: &crate::channel::Channel, cut: Option<u32>) -> Vec<(Arc<Frame>, Duration)> {
        let sub = ch.subscribe_with_tracks();
        let key = sub.gop[0].time;
        let mut backlog = Interleave::new(64, vec![cut]);
        for f in sub.tracks {
            backlog.push_track(f);
        }
        for f in sub.gop {
            backlog.push_video(f);
        }
        let t0 = Instant::now();
        let mut cu = CatchUp::new(key, t0);
        let mut out = Vec::new();
        while let Some(f) = backlog.pop() {
            let at = cu.due(f.time);
            if f.track == 0 {
                cu.sent(f.time);
            }
            out.push((f, at - t0));
        }
        out
    }

    #[test]
    fn a_client_joining_late_in_a_gop_hears_the_key_frames_instant() {
        // 0.9 s into a 1 s GOP, G.711 in 128 ms frames: the frame that
        // covers the key frame started 80 ms before it (at 1.92 s).
        let ch = channel_with_sound(crate::media::TrackDesc::pcmu(), 1024, 22);
        let out = play(&ch, Some(8000));
        let key = out[0].0.time;
        assert_eq!(key, MediaTime(50 * FRAME));
        assert!(out[0].0.key && out[0].0.track == 0);
        // The sound starts at the key frame's instant, sent with it: the
        // covering frame's last 48 ms (384 of its 1024 samples).
        let (first, at) = &out[1];
        assert_eq!((first.track, first.time, *at), (1, key, Duration::ZERO));
        let p = &first.packets[0];
        assert_eq!(p.body().len(), 384);
        assert_eq!(p.timestamp(), first.rtp_timestamp);
        let info = ch.info.borrow().tracks[0].clone();
        assert_eq!(first.rtp_timestamp, info.rtp_at(key), "what RTP-Info names");
        // Then every frame of both, pictures and sound in media-time order,
        // each going when the pictures' schedule reaches its time: the
        // 0.9 s of pictures in 0.45 s, the sound with them.
        let pictures: Vec<_> = out.iter().filter(|(f, _)| f.track == 0).collect();
        let sound: Vec<_> = out.iter().filter(|(f, _)| f.track == 1).collect();
        assert_eq!(pictures.len(), 23);
        // 1.92 + 128 ms k up to the last picture (2.88 s): 2.0, 2.048 ... 2.816.
        assert_eq!(
            sound.len(),
            8,
            "{:?}",
            sound.iter().map(|(f, _)| f.time).collect::<Vec<_>>()
        );
        for w in out.windows(2) {
            assert!(w[1].1 >= w[0].1, "never earlier than the frame before");
        }
        for (f, at) in &out {
            let media = Duration::from_micros((f.time.0 - key.0) as u64 * 1_000_000 / 90_000);
            assert_eq!(*at, media / 2, "{f:?}");
        }
        let mut high = MediaTime(i64::MIN);
        for (f, _) in &out {
            if f.track == 0 {
                high = high.max(f.time);
            } else {
                assert!(f.time >= high, "sound before the picture it goes with");
            }
        }
    }

    #[test]
    fn uncut_sound_starts_at_its_first_frame_after_the_key_frame() {
        // AAC frames cannot be cut: the first one that starts at or after
        // the key frame, within one frame (21.3 ms) of it.
        let aac = crate::media::TrackDesc {
            kind: crate::media::TrackKind::Audio,
            encoding: "MPEG4-GENERIC".into(),
            clock_rate: 48_000,
            channels: Some(1),
            payload: crate::media::Payload::Aac {
                config: bytes::Bytes::from_static(&[0x11, 0x88]),
            },
        };
        let ch = channel_with_sound(aac, 1024, 22);
        let out = play(&ch, None);
        let key = out[0].0.time;
        let first = out.iter().find(|(f, _)| f.track == 1).unwrap();
        let after = first.0.time.0 - key.0;
        assert!(
            (0..1920).contains(&after),
            "{after} ticks after the picture"
        );
        // G.711 asked not to be cut: the same rule.
        let ch = channel_with_sound(crate::media::TrackDesc::pcmu(), 1024, 22);
        let out = play(&ch, None);
        let first = out.iter().find(|(f, _)| f.track == 1).unwrap();
        assert_eq!(first.0.time.0 - out[0].0.time.0, 48 * 90);
    }

    #[test]
    fn the_cache_keeps_sound_from_the_key_frame_only() {
        // Two GOPs in, at the third key frame: no sound of the GOPs before
        // but the frame that covers the key frame's instant.
        let ch = channel_with_sound(crate::media::TrackDesc::pcmu(), 160, 0);
        let sub = ch.subscribe_with_tracks();
        assert_eq!(sub.gop.len(), 1);
        let key = sub.gop[0].time;
        let times: Vec<i64> = sub.tracks.iter().map(|f| f.time.0 - key.0).collect();
        // 20 ms frames: the last that starts before the key frame (it ends
        // at it, as the cache cannot know), one at its instant, one after
        // (the sound before the next picture).
        assert_eq!(times, vec![-1800, 0, 1800]);
        // A client gets nothing of the first: cut at the key frame it is empty.
        let sent: Vec<i64> = sub
            .tracks
            .into_iter()
            .filter_map(|f| from_start(f, key, Some(8000)))
            .map(|f| f.time.0 - key.0)
            .collect();
        assert_eq!(sent, vec![0, 1800]);
    }

    fn frame(track: u8, time: i64) -> Arc<Frame> {
        Arc::new(Frame {
            packets: Vec::new(),
            key: track == 0 && time == 0,
            time: MediaTime(time),
            rtp_timestamp: time as u32,
            arrival: Instant::now(),
            track,
            interleaved: Default::default(),
        })
    }

    #[test]
    fn interleave_holds_sound_until_a_picture_and_orders_by_media_time() {
        let mut q = Interleave::new(3, vec![None]);
        // Sound before any picture is held; the oldest goes beyond the cap.
        for t in [-200, -100, 50, 100] {
            q.push_track(frame(1, t));
        }
        assert!(q.front().is_none(), "nothing before the first picture");
        assert_eq!(q.len(), 3);
        // B-frames: I 0, P 300, B 100, B 200, then P 600.
        for t in [0, 300, 100, 200, 600] {
            q.push_video(frame(0, t));
        }
        q.push_track(frame(1, 350));
        let order: Vec<(u8, i64)> = std::iter::from_fn(|| q.pop())
            .map(|f| (f.track, f.time.0))
            .collect();
        // The sound held from before the picture is dropped; sound goes
        // before a picture that is ahead of it, after the furthest one sent.
        assert_eq!(
            order,
            vec![
                (0, 0),
                (1, 50),
                (1, 100),
                (0, 300),
                (0, 100),
                (0, 200),
                (1, 350),
                (0, 600)
            ]
        );
        // Live: sound goes as it comes once a picture went; a restart holds it again.
        q.push_track(frame(1, 700));
        assert_eq!(q.pop().map(|f| f.time.0), Some(700));
        q.push_track(frame(1, 800));
        q.restart();
        q.push_track(frame(1, 900));
        assert!(q.pop().is_none());
        assert!(!q.started());
    }

    /// A G.711 frame of `samples` at media time `time` (90 kHz), timestamp
    /// its 8 kHz time.
    fn pcmu(time: i64, samples: usize) -> Arc<Frame> {
        let mut p =
            crate::rtp::track::TrackPacketizer::new(crate::media::Payload::Frame, 0, 7, 100, 1400);
        let ts = (time * 8000 / 90_000) as u32;
        let packets = p
            .packetize(&bytes::Bytes::from(vec![0xd5; samples]), ts)
            .unwrap();
        Arc::new(Frame {
            packets,
            key: true,
            time: MediaTime(time),
            rtp_timestamp: ts,
            arrival: Instant::now(),
            track: 1,
            interleaved: Default::default(),
        })
    }

    #[test]
    fn sound_that_comes_after_the_first_picture_but_starts_before_it_is_cut_at_it() {
        // G.711 can be cut: the 128 ms frame that started 80 ms before the
        // picture arrives after it went; its last 48 ms go, stamped at it.
        let mut q = Interleave::new(8, vec![Some(8000)]);
        q.push_video(frame(0, 90_000));
        assert_eq!(q.pop().unwrap().time.0, 90_000);
        q.push_track(pcmu(90_000 - 7200, 1024));
        q.push_track(pcmu(90_000 - 7200 - 11_520, 1024));
        let a = q.pop().unwrap();
        assert_eq!((a.time.0, a.rtp_timestamp), (90_000, 8000));
        assert_eq!(a.packets[0].timestamp(), 8000);
        assert_eq!(a.packets[0].body().len(), 384);
        assert_eq!(a.packets[0].seq(), 100, "the frame's own packet, shortened");
        assert!(
            q.pop().is_none(),
            "the frame that ended before it is dropped"
        );
        // A track that cannot be cut: a frame starting before the picture
        // is dropped, one at it goes whole.
        let mut q = Interleave::new(8, vec![None]);
        q.push_track(pcmu(90_000 - 7200, 1024));
        q.push_track(pcmu(90_000, 1024));
        q.push_video(frame(0, 90_000));
        assert_eq!(q.pop().unwrap().track, 0);
        let a = q.pop().unwrap();
        assert_eq!((a.time.0, a.packets[0].body().len()), (90_000, 1024));
        assert!(q.pop().is_none());
    }
}
