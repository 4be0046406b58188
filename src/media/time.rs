//! Media time: 90 kHz ticks, extended past the 32-bit RTP wrap-around.
//!
//! Three clocks stay apart: monotonic time (`std::time::Instant`, for
//! timers and arrival), wall-clock time (`SystemTime`, only for RTCP's NTP
//! field) and media time ([`MediaTime`]). Nothing here reads a clock; the
//! caller passes `now` in.

use std::time::{Duration, Instant};

/// RTP clock rate of H.264 and H.265 (RFC 6184 / RFC 7798).
pub const CLOCK_RATE: u32 = 90_000;

/// A media timestamp in 90 kHz ticks. 64 bits: never wraps in practice; the
/// RTP timestamp is this value modulo 2^32 plus a random base.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MediaTime(pub i64);

impl MediaTime {
    pub fn from_duration(d: Duration) -> Self {
        MediaTime((d.as_nanos() * u128::from(CLOCK_RATE) / 1_000_000_000) as i64)
    }

    /// The 32-bit RTP timestamp: `base + self` modulo 2^32.
    pub fn rtp(self, base: u32) -> u32 {
        base.wrapping_add(self.0 as u32)
    }

    pub fn ticks(self) -> i64 {
        self.0
    }
}

impl std::ops::Add<i64> for MediaTime {
    type Output = MediaTime;
    fn add(self, rhs: i64) -> MediaTime {
        MediaTime(self.0.saturating_add(rhs))
    }
}

/// Maps each ingest session's timestamps onto one continuous output timeline,
/// so that RTP timestamps continue across camera reconnects: the first frame
/// of a new session is placed after the last frame sent by the real time
/// elapsed between them, and at least one frame interval after it (an
/// encoder that replaces another may start within milliseconds, and two
/// frames closer than a frame interval collide in players' frame-rate
/// time bases).
#[derive(Debug)]
pub struct Timeline {
    /// output = source + offset, for the current session.
    offset: i64,
    anchored: bool,
    last: Option<(MediaTime, Instant)>,
    /// The last step between two frames, for the gap at a session change.
    step: i64,
}

/// Frame interval assumed before two frames were seen: 25 fps.
const DEFAULT_STEP: i64 = CLOCK_RATE as i64 / 25;

impl Default for Timeline {
    fn default() -> Self {
        Timeline {
            offset: 0,
            anchored: false,
            last: None,
            step: DEFAULT_STEP,
        }
    }
}

impl Timeline {
    pub fn new() -> Self {
        Self::default()
    }

    /// A new ingest session begins; its first frame re-anchors the mapping.
    pub fn new_session(&mut self) {
        self.anchored = false;
    }

    /// Maps a source timestamp of the current session to output time.
    pub fn map(&mut self, source: MediaTime, now: Instant) -> MediaTime {
        if !self.anchored {
            let target = match self.last {
                Some((t, at)) => {
                    let gap = MediaTime::from_duration(now.saturating_duration_since(at)).0;
                    t + gap.max(self.step)
                }
                None => MediaTime(0),
            };
            self.offset = target.0.saturating_sub(source.0);
            self.anchored = true;
        } else if let Some((t, _)) = self.last {
            // Camera timestamps may be anything: saturate, never wrap.
            let step = source.0.saturating_add(self.offset).saturating_sub(t.0);
            // Plausible frame steps only (1 ms .. 1 s): not B-frame reordering
            // or a camera's clock jump.
            if (90..=i64::from(CLOCK_RATE)).contains(&step) {
                self.step = step;
            }
        }
        let out = MediaTime(source.0.saturating_add(self.offset));
        if self.last.is_none_or(|(t, _)| out >= t) {
            self.last = Some((out, now));
        }
        out
    }

    /// The last output time and when it was produced.
    pub fn last(&self) -> Option<(MediaTime, Instant)> {
        self.last
    }

    /// `output - source` of the current session, once its first frame
    /// anchored it: the other tracks of the session, whose source times
    /// share the video's time line, are placed with it.
    pub fn offset(&self) -> Option<i64> {
        self.anchored.then_some(self.offset)
    }
}

/// How raw Annex-B streams, which carry no timestamps, are timed. A named
/// camera-quirk policy: encoders that push a raw byte stream differ in
/// whether their SPS/VPS states a frame rate and whether they pace output.
#[derive(Copy, Clone, Debug, Default, PartialEq, serde::Serialize)]
pub enum TimingPolicy {
    /// The frame rate from the stream's timing information (H.264 SPS VUI,
    /// H.265 SPS VUI or VPS), else arrival time. The default.
    #[default]
    Auto,
    /// Arrival time of each access unit's first byte. Follows the encoder's
    /// pacing exactly, jitter included.
    Arrival,
    /// A fixed frame rate, for encoders whose timing information is absent
    /// or wrong.
    Fps(f64),
}

/// Within one session, frame-rate timestamps are re-anchored to arrival time
/// when they drift further than this from it (an encoder pause or a wrong
/// frame rate); one second keeps normal network jitter from triggering it.
const MAX_DRIFT: i64 = CLOCK_RATE as i64;

/// Timestamps the access units of one raw Annex-B session.
#[derive(Debug)]
pub struct AnnexBClock {
    policy: TimingPolicy,
    start: Option<Instant>,
    next: f64,
    last: Option<i64>,
    resyncs: u64,
}

impl AnnexBClock {
    pub fn new(policy: TimingPolicy) -> Self {
        AnnexBClock {
            policy,
            start: None,
            next: 0.0,
            last: None,
            resyncs: 0,
        }
    }

    /// Times of re-anchoring to arrival time, for diagnostics.
    pub fn resyncs(&self) -> u64 {
        self.resyncs
    }

    /// The timestamp of an access unit that arrived at `arrival`; `stream_fps`
    /// is the frame rate the parameter sets state, if any.
    pub fn stamp(&mut self, arrival: Instant, stream_fps: Option<f64>) -> MediaTime {
        let start = *self.start.get_or_insert(arrival);
        let arrived = MediaTime::from_duration(arrival.saturating_duration_since(start)).0;
        let fps = match self.policy {
            TimingPolicy::Arrival => None,
            TimingPolicy::Fps(f) => Some(f),
            TimingPolicy::Auto => stream_fps,
        }
        .filter(|f| f.is_finite() && *f > 0.0);
        let t = match fps {
            Some(fps) => {
                let mut t = self.next.round() as i64;
                if self.last.is_none() || (t - arrived).abs() > MAX_DRIFT {
                    if self.last.is_some() {
                        self.resyncs += 1;
                    }
                    t = arrived;
                    self.next = arrived as f64;
                }
                self.next += f64::from(CLOCK_RATE) / fps;
                t
            }
            None => arrived,
        };
        // Strictly increasing: two units arriving in the same tick still differ.
        let t = match self.last {
            Some(last) if t <= last => last + 1,
            _ => t,
        };
        self.last = Some(t);
        MediaTime(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rtp_wraps_but_media_time_does_not() {
        let t = MediaTime(u32::MAX as i64 + 10);
        assert_eq!(t.rtp(0), 9);
        assert_eq!(MediaTime(5).rtp(u32::MAX), 4);
        assert_eq!(MediaTime::from_duration(Duration::from_millis(40)).0, 3600);
    }

    #[test]
    fn timeline_is_continuous_across_sessions() {
        let t0 = Instant::now();
        let mut tl = Timeline::new();
        tl.new_session();
        assert_eq!(tl.map(MediaTime(1000), t0), MediaTime(0));
        assert_eq!(
            tl.map(MediaTime(4600), t0 + Duration::from_millis(40)),
            MediaTime(3600)
        );
        // Camera reconnects 2 s later with timestamps starting at 0 again.
        tl.new_session();
        let out = tl.map(MediaTime(0), t0 + Duration::from_millis(2040));
        assert_eq!(out, MediaTime(3600 + 180_000));
        assert_eq!(
            tl.map(MediaTime(3600), t0 + Duration::from_millis(2080)),
            out + 3600
        );
    }

    #[test]
    fn extreme_camera_timestamps_saturate_instead_of_wrapping() {
        let t0 = Instant::now();
        let mut tl = Timeline::new();
        tl.new_session();
        tl.map(MediaTime(i64::MAX), t0);
        tl.map(MediaTime(i64::MIN), t0 + Duration::from_millis(40));
        tl.map(MediaTime(0), t0 + Duration::from_millis(80));
        tl.new_session();
        // Reached without an overflow (a panic in debug builds, a silent
        // wrap in release before).
        tl.map(MediaTime(i64::MIN), t0 + Duration::from_millis(120));
        assert!(tl.last().is_some());
    }

    #[test]
    fn annexb_clock_uses_frame_rate_and_resyncs_on_drift() {
        let t0 = Instant::now();
        let mut c = AnnexBClock::new(TimingPolicy::Auto);
        // Jittery arrival, 25 fps stated: timestamps are exact.
        let jitter = [0u64, 45, 78, 121, 160];
        let stamps: Vec<i64> = jitter
            .iter()
            .map(|ms| c.stamp(t0 + Duration::from_millis(*ms), Some(25.0)).0)
            .collect();
        assert_eq!(stamps, vec![0, 3600, 7200, 10800, 14400]);
        // A 3 s pause: re-anchored to arrival.
        let t = c.stamp(t0 + Duration::from_millis(3200), Some(25.0));
        assert_eq!(t, MediaTime(288_000));
        assert_eq!(c.resyncs(), 1);
    }

    #[test]
    fn annexb_clock_arrival_is_strictly_increasing() {
        let t0 = Instant::now();
        let mut c = AnnexBClock::new(TimingPolicy::Arrival);
        assert_eq!(c.stamp(t0, Some(25.0)), MediaTime(0));
        assert_eq!(c.stamp(t0, Some(25.0)), MediaTime(1));
        assert_eq!(
            c.stamp(t0 + Duration::from_millis(10), None),
            MediaTime(900)
        );
    }
}
