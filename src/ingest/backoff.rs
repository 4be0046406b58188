//! Reconnect delays: capped exponential backoff with jitter. Sans-IO: the
//! caller passes the random draw in.

use std::time::Duration;

/// A session that delivered pictures for at least this long counts as a
/// success: the next failure starts again from the shortest delay.
pub const STABLE_SESSION: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max: max.max(min),
            attempt: 0,
        }
    }

    /// The delay before the next attempt. `jitter` in [0, 1) spreads it over
    /// 75%..125% of the exponential step, so cameras that failed together do
    /// not all reconnect in the same instant.
    pub fn next_delay(&mut self, jitter: f64) -> Duration {
        let step = self
            .min
            .saturating_mul(1u32 << self.attempt.min(20))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        step.mul_f64(0.75 + 0.5 * jitter.clamp(0.0, 1.0))
            .min(self.max)
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    pub fn attempt(&self) -> u32 {
        self.attempt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(5));
        let mid: Vec<u128> = (0..6).map(|_| b.next_delay(0.5).as_millis()).collect();
        assert_eq!(mid, vec![500, 1000, 2000, 4000, 5000, 5000]);
        b.reset();
        assert_eq!(b.next_delay(0.0), Duration::from_millis(375));
        assert_eq!(b.next_delay(0.999_999).as_millis(), 1249);
        for _ in 0..100 {
            assert!(b.next_delay(1.0) <= Duration::from_secs(5));
        }
    }
}
