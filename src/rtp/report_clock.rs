//! The wall-clock time that RTCP sender reports state. Sans-IO.
//!
//! A receiver places each frame by its sender's reports (RFC 3550 6.4.1:
//! the NTP time of the report against its RTP time). If a report simply
//! said the host's wall clock, a step of that clock (an NTP step, an
//! operator's `date -s`, a VM resumed with an old clock) would move every
//! frame of the stream by the step: ffmpeg, placing frames by the reports,
//! then holds or drops them for as long as the step (measured: 29 of 300
//! frames decoded after an hour's step back). So the report time is the
//! wall clock at the first report, carried on by the monotonic clock, and
//! it follows the wall clock only as ntpd slews, by at most [`SLEW`] of
//! the time that passes. A step is reported once ([`Step::Stepped`]), and
//! again when the two clocks meet ([`Step::Back`]).
//!
//! One clock serves every track of the process, so the tracks of a channel
//! stay in sync with one another (lip sync).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How fast the report time follows the wall clock: 500 ppm, ntpd's
/// largest slew rate. A clock that ntpd slews is followed exactly.
pub const SLEW: f64 = 500e-6;
/// A gap between the wall clock and the report time over this is a step.
pub const STEP: Duration = Duration::from_secs(1);
/// ... and once it is under this, the clocks have met again (below
/// [`STEP`], so that a gap about the threshold does not flap).
pub const MET: Duration = Duration::from_millis(500);

/// What a reading of the wall clock found.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Step {
    /// The wall clock is this many seconds from the report time (ahead
    /// when positive): it stepped, or it stepped the other way.
    Stepped { offset_secs: f64 },
    /// The wall clock and the report time are within [`MET`] again.
    Back,
}

/// The report time: an instant of the monotonic clock and the report time
/// at it, moved on at each reading of the wall clock.
#[derive(Debug, Default)]
pub struct ReportClock {
    anchor: Option<(Instant, SystemTime)>,
    /// The sign of the step reported and not yet met (+1 ahead, -1 back).
    stepped: Option<i8>,
}

impl ReportClock {
    pub const fn new() -> Self {
        ReportClock {
            anchor: None,
            stepped: None,
        }
    }

    /// Takes a reading of both clocks, `wall` read at `now`: the report
    /// time moves on to `now`, towards `wall` by at most [`SLEW`] of the
    /// time since the last reading. Returns what the reading found, if it
    /// is news.
    pub fn observe(&mut self, now: Instant, wall: SystemTime) -> Option<Step> {
        let Some((then, report_then)) = self.anchor else {
            self.anchor = Some((now, wall));
            return None;
        };
        // A reading older than the anchor (threads racing to the lock) is
        // no news.
        let elapsed = now.checked_duration_since(then)?;
        let predicted = report_then.checked_add(elapsed).unwrap_or(report_then);
        let offset = signed_nanos(wall, predicted);
        let room = (elapsed.as_nanos() as f64 * SLEW) as i128;
        let report = add_nanos(predicted, offset.clamp(-room, room));
        self.anchor = Some((now, report));
        let left = offset - offset.clamp(-room, room);
        let gap = left.unsigned_abs();
        let sign: i8 = if left >= 0 { 1 } else { -1 };
        match self.stepped {
            _ if gap > STEP.as_nanos() && self.stepped != Some(sign) => {
                self.stepped = Some(sign);
                Some(Step::Stepped {
                    offset_secs: left as f64 / 1e9,
                })
            }
            Some(_) if gap < MET.as_nanos() => {
                self.stepped = None;
                Some(Step::Back)
            }
            _ => None,
        }
    }

    /// The report time at `at` (before or after the last reading), or None
    /// before the first reading.
    pub fn at(&self, at: Instant) -> Option<SystemTime> {
        let (then, report) = self.anchor?;
        Some(match at.checked_duration_since(then) {
            Some(d) => report.checked_add(d).unwrap_or(report),
            None => report.checked_sub(then - at).unwrap_or(report),
        })
    }
}

/// `a - b` in nanoseconds.
fn signed_nanos(a: SystemTime, b: SystemTime) -> i128 {
    match a.duration_since(b) {
        Ok(d) => d.as_nanos() as i128,
        Err(e) => -(e.duration().as_nanos() as i128),
    }
}

fn add_nanos(t: SystemTime, n: i128) -> SystemTime {
    let d = Duration::from_nanos(n.unsigned_abs().min(u64::MAX as u128) as u64);
    let moved = if n >= 0 {
        t.checked_add(d)
    } else {
        t.checked_sub(d)
    };
    moved.unwrap_or(UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    /// The report time's distance from `wall`, in seconds (positive when
    /// the report time is behind).
    fn behind(c: &ReportClock, at: Instant, wall: SystemTime) -> f64 {
        signed_nanos(wall, c.at(at).unwrap()) as f64 / 1e9
    }

    #[test]
    fn follows_a_steady_wall_clock_exactly() {
        let (t0, w0) = (Instant::now(), UNIX_EPOCH + secs(1.8e9));
        let mut c = ReportClock::new();
        assert!(c.at(t0).is_none());
        assert_eq!(c.observe(t0, w0), None);
        for k in 1..=100 {
            let d = secs(k as f64 * 5.0);
            assert_eq!(c.observe(t0 + d, w0 + d), None);
            assert_eq!(c.at(t0 + d), Some(w0 + d));
        }
        // Any instant maps, before and after the last reading.
        assert_eq!(c.at(t0 + secs(10.0)), Some(w0 + secs(10.0)));
        assert_eq!(c.at(t0 + secs(1000.0)), Some(w0 + secs(1000.0)));
    }

    #[test]
    fn a_step_back_is_reported_and_followed_at_the_slew_rate_only() {
        let (t0, w0) = (Instant::now(), UNIX_EPOCH + secs(1.8e9));
        let mut c = ReportClock::new();
        c.observe(t0, w0);
        // The host's clock steps an hour back at t0 + 10 s.
        let wall = |t: f64| {
            if t < 10.0 {
                w0 + secs(t)
            } else {
                w0 + secs(t) - secs(3600.0)
            }
        };
        let mut events = Vec::new();
        for k in 1..=40 {
            let t = k as f64 * 0.5;
            if let Some(e) = c.observe(t0 + secs(t), wall(t)) {
                events.push((t, e));
            }
        }
        assert_eq!(events.len(), 1, "{events:?}");
        let (at, Step::Stepped { offset_secs }) = events[0] else {
            panic!("{events:?}")
        };
        assert_eq!(at, 10.0);
        assert!((offset_secs + 3600.0).abs() < 0.01, "{offset_secs}");
        // By t0 + 20 s, the report time has moved 500 ppm of the 10.5 s
        // since the reading before the step: 5.25 ms of the hour.
        let t = t0 + secs(20.0);
        let gap = behind(&c, t, wall(20.0));
        assert!((gap + 3600.0 - 0.00525).abs() < 1e-6, "{gap}");
        // Frame after frame, the report time runs as the monotonic clock:
        // 40 ms apart stay 40 ms apart.
        let a = c.at(t).unwrap();
        let b = c.at(t + secs(0.04)).unwrap();
        assert_eq!(b.duration_since(a).unwrap(), secs(0.04));
    }

    #[test]
    fn a_slewed_clock_is_followed_and_a_small_step_absorbed_quietly() {
        let (t0, w0) = (Instant::now(), UNIX_EPOCH + secs(1.8e9));
        let mut c = ReportClock::new();
        c.observe(t0, w0);
        // ntpd slewing at 400 ppm: followed exactly.
        for k in 1..=100 {
            let t = k as f64;
            assert_eq!(c.observe(t0 + secs(t), w0 + secs(t * 1.0004)), None);
            assert!(behind(&c, t0 + secs(t), w0 + secs(t * 1.0004)).abs() < 1e-6);
        }
        // A step of 0.3 s ahead: no event, absorbed at 500 ppm (600 s).
        let base = w0 + secs(100.04);
        let wall = |t: f64| base + secs(t - 100.0 + 0.3);
        for k in 101..=800 {
            let t = k as f64;
            assert_eq!(c.observe(t0 + secs(t), wall(t)), None);
        }
        assert!(behind(&c, t0 + secs(800.0), wall(800.0)).abs() < 1e-6);
    }

    #[test]
    fn the_clocks_meeting_again_and_a_step_the_other_way_are_reported() {
        let (t0, w0) = (Instant::now(), UNIX_EPOCH + secs(1.8e9));
        let mut c = ReportClock::new();
        c.observe(t0, w0);
        // Two seconds ahead: a step (what is left after a second's slew).
        let e = c.observe(t0 + secs(1.0), w0 + secs(3.0));
        assert!(
            matches!(e, Some(Step::Stepped { offset_secs }) if (offset_secs - 1.9995).abs() < 1e-6),
            "{e:?}"
        );
        // Still ahead: no news, however often it is read.
        for k in 2..10 {
            let t = k as f64;
            assert_eq!(c.observe(t0 + secs(t), w0 + secs(t + 2.0)), None);
        }
        // The operator steps it back two seconds: within MET at once.
        assert_eq!(
            c.observe(t0 + secs(10.0), w0 + secs(10.0)),
            Some(Step::Back)
        );
        assert_eq!(c.observe(t0 + secs(11.0), w0 + secs(11.0)), None);
        // A step back: reported with its sign; then one ahead past the
        // report time (a sign flip without meeting): reported again.
        let e = c.observe(t0 + secs(12.0), w0 + secs(12.0) - secs(5.0));
        assert!(
            matches!(e, Some(Step::Stepped { offset_secs }) if (offset_secs + 5.0).abs() < 0.01),
            "{e:?}"
        );
        let e = c.observe(t0 + secs(13.0), w0 + secs(13.0) + secs(5.0));
        assert!(
            matches!(e, Some(Step::Stepped { offset_secs }) if (offset_secs - 5.0).abs() < 0.01),
            "{e:?}"
        );
    }

    #[test]
    fn a_reading_older_than_the_last_changes_nothing() {
        let (t0, w0) = (Instant::now(), UNIX_EPOCH + secs(1.8e9));
        let mut c = ReportClock::new();
        c.observe(t0 + secs(1.0), w0 + secs(1.0));
        assert_eq!(c.observe(t0, w0 - secs(3600.0)), None);
        assert_eq!(c.at(t0 + secs(1.0)), Some(w0 + secs(1.0)));
        assert_eq!(c.at(t0), Some(w0));
    }
}
