//! The pool's pure decisions: when a dead worker's slot is refilled.
//!
//! No process is touched here; the supervisor feeds events in and carries
//! out the answers, so these rules are unit-tested without forking.

use std::time::Duration;

/// A worker that lived less than this and was not asked to exit counts as a
/// quick death (a crash loop), which slows down respawning.
pub const QUICK_DEATH: Duration = Duration::from_secs(1);

/// Longest wait before refilling a slot whose workers keep dying.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// How a worker's exit affects its slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Respawn {
    /// Wait this long before forking the replacement (None: leave empty).
    pub after: Option<Duration>,
    /// The slot's new count of consecutive quick deaths.
    pub quick_deaths: u32,
}

/// Decides when to refill a slot after its worker exited.
///
/// - `planned`: the supervisor asked it to exit (reload, recycling):
///   refill at once.
/// - `stopping`: the pool is shutting down: never refill.
/// - otherwise a worker that died within [`QUICK_DEATH`] of its start
///   doubles the wait (50 ms, 100 ms, … up to [`MAX_BACKOFF`]); one that
///   lived longer resets the count and is replaced at once.
pub fn on_exit(planned: bool, stopping: bool, lifetime: Duration, quick_deaths: u32) -> Respawn {
    if stopping {
        return Respawn {
            after: None,
            quick_deaths,
        };
    }
    if planned || lifetime >= QUICK_DEATH {
        return Respawn {
            after: Some(Duration::ZERO),
            quick_deaths: 0,
        };
    }
    let n = quick_deaths.saturating_add(1);
    let wait = Duration::from_millis(50)
        .saturating_mul(1u32 << (n - 1).min(16))
        .min(MAX_BACKOFF);
    Respawn {
        after: Some(wait),
        quick_deaths: n,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn planned_exit_refills_at_once() {
        let r = on_exit(true, false, Duration::from_millis(1), 5);
        assert_eq!(
            r,
            Respawn {
                after: Some(Duration::ZERO),
                quick_deaths: 0
            }
        );
    }

    #[test]
    fn stopping_never_refills() {
        assert_eq!(on_exit(false, true, Duration::from_secs(9), 0).after, None);
        assert_eq!(on_exit(true, true, Duration::from_secs(9), 0).after, None);
    }

    #[test]
    fn crash_loop_backs_off_exponentially_to_a_cap() {
        let mut q = 0;
        let mut waits = vec![];
        for _ in 0..10 {
            let r = on_exit(false, false, Duration::from_millis(10), q);
            q = r.quick_deaths;
            waits.push(r.after.unwrap());
        }
        assert_eq!(waits[0], Duration::from_millis(50));
        assert_eq!(waits[1], Duration::from_millis(100));
        assert_eq!(waits[2], Duration::from_millis(200));
        assert!(waits.windows(2).all(|w| w[1] >= w[0]));
        assert_eq!(*waits.last().unwrap(), MAX_BACKOFF);
    }

    #[test]
    fn long_lived_worker_resets_backoff() {
        let r = on_exit(false, false, Duration::from_secs(30), 7);
        assert_eq!(
            r,
            Respawn {
                after: Some(Duration::ZERO),
                quick_deaths: 0
            }
        );
    }
}
