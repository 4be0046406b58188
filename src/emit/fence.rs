//! The self-fence of a server that holds its groups by a lease (the etcd
//! controller): a deadline after which nothing may be sent on any group,
//! checked before every send.
//!
//! The deadline is kept on `CLOCK_BOOTTIME`, which, unlike the monotonic
//! clock, keeps counting while the host is suspended: a process resumed
//! from SIGSTOP, a VM freeze or a suspend finds its deadline passed and
//! sends nothing stale. Neither clock moves with a wall-clock step.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Instant;

use prometheus_client::metrics::counter::Counter;

struct State {
    /// Nanoseconds of `CLOCK_BOOTTIME`; `i64::MIN`: closed.
    deadline: AtomicI64,
    /// Sends refused.
    refused: Counter,
}

/// A server's fence; `OPEN` (no lease, the embedded controller) lets
/// every send through. Copy: one per server, shared by every emitter.
#[derive(Clone, Copy)]
pub struct Fence(Option<&'static State>);

impl std::fmt::Debug for Fence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            None => f.write_str("Fence(open)"),
            Some(s) => write!(
                f,
                "Fence(deadline {} ns)",
                s.deadline.load(Ordering::Relaxed)
            ),
        }
    }
}

impl Fence {
    pub const OPEN: Fence = Fence(None);

    /// A fence closed until [`Fence::set`] opens it; `refused` counts the
    /// sends it stops. One per server process (it lives as long as it).
    pub fn closed(refused: Counter) -> Fence {
        Fence(Some(Box::leak(Box::new(State {
            deadline: AtomicI64::new(i64::MIN),
            refused,
        }))))
    }

    /// Sends are allowed until `deadline` (a monotonic instant, turned into
    /// boot time now); `None` closes the fence.
    pub fn set(&self, deadline: Option<Instant>) {
        let Some(s) = self.0 else { return };
        let ns = match deadline {
            None => i64::MIN,
            Some(d) => {
                let now = Instant::now();
                let ahead = d.saturating_duration_since(now).as_nanos() as i64;
                let behind = now.saturating_duration_since(d).as_nanos() as i64;
                boottime_ns().saturating_add(ahead).saturating_sub(behind)
            }
        };
        s.deadline.store(ns, Ordering::Release);
    }

    /// Whether a send may go now; a refusal is counted.
    #[inline]
    pub fn allows(&self) -> bool {
        let Some(s) = self.0 else { return true };
        let ok = boottime_ns() < s.deadline.load(Ordering::Acquire);
        if !ok {
            s.refused.inc();
        }
        ok
    }
}

fn boottime_ns() -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    // time_t and c_long are 32 bits on some targets.
    #[allow(clippy::unnecessary_cast)]
    (ts.tv_sec as i64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as i64)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_fence_opens_until_its_deadline_and_counts_refusals() {
        assert!(Fence::OPEN.allows());
        let refused = Counter::default();
        let f = Fence::closed(refused.clone());
        assert!(!f.allows(), "closed until set");
        f.set(Some(Instant::now() + Duration::from_secs(5)));
        assert!(f.allows());
        f.set(Some(Instant::now() + Duration::from_millis(30)));
        assert!(f.allows());
        std::thread::sleep(Duration::from_millis(60));
        assert!(!f.allows(), "past its deadline");
        f.set(None);
        assert!(!f.allows());
        assert_eq!(refused.get(), 3);
    }
}
