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

use std::time::{Duration, Instant};

use crate::media::MediaTime;
use crate::media::time::CLOCK_RATE;

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
}
