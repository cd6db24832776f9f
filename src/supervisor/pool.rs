//! The pool's pure decisions: when to fork after a worker died (crash-loop
//! back-off), and how the pool grows and shrinks each maintenance tick.
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

/// Maintenance period of the pool (growth and shrinking). Apache's prefork
/// uses 1 s; jobs here are long and clients wait in the backlog while the
/// pool grows, so the tick is shorter.
pub const TICK: Duration = Duration::from_millis(250);

/// Most workers forked in one tick (Apache prefork's cap).
pub const MAX_SPAWN_RATE: usize = 32;

/// What the pool looks like at a maintenance tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolView {
    /// Live workers.
    pub live: usize,
    /// Workers idle or starting (about to accept).
    pub idle: usize,
    /// Minimum (`--prefork`, moved by SIGTTIN / SIGTTOU).
    pub min: usize,
    /// `--max-children`.
    pub max: usize,
    /// Workers to fork this tick if the pool must grow.
    pub rate: usize,
    /// Idle workers idle for longer than `--idle-timeout`.
    pub idle_expired: usize,
}

/// What to do at this tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// Workers to fork.
    pub spawn: usize,
    /// Idle workers to retire (0 or 1).
    pub retire: usize,
    /// The spawn rate for the next tick.
    pub next_rate: usize,
    /// Every worker is busy and the pool is at `max`: clients wait.
    pub at_cap: bool,
}

/// The pool's rules, as Apache prefork's `perform_idle_server_maintenance`:
///
/// - below `min`, fork the missing workers at once;
/// - when no worker is idle, fork `rate` more (never past `max`), doubling
///   the rate for the next tick up to [`MAX_SPAWN_RATE`];
/// - when some are idle, the rate falls back to 1, and one worker idle for
///   longer than the idle timeout is retired per tick, down to `min`.
pub fn plan(v: PoolView) -> Plan {
    let room = v.max.saturating_sub(v.live);
    if v.live < v.min {
        return Plan {
            spawn: (v.min - v.live).min(room),
            retire: 0,
            next_rate: v.rate.max(1),
            at_cap: false,
        };
    }
    if v.idle == 0 {
        if room == 0 {
            return Plan {
                spawn: 0,
                retire: 0,
                next_rate: v.rate.max(1),
                at_cap: true,
            };
        }
        let spawn = v.rate.max(1).min(room);
        return Plan {
            spawn,
            retire: 0,
            next_rate: (v.rate.max(1) * 2).min(MAX_SPAWN_RATE),
            at_cap: false,
        };
    }
    let retire = usize::from(v.idle_expired > 0 && v.live > v.min);
    Plan {
        spawn: 0,
        retire,
        next_rate: 1,
        at_cap: false,
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

    fn view(live: usize, idle: usize, rate: usize, expired: usize) -> PoolView {
        PoolView {
            live,
            idle,
            min: 2,
            max: 40,
            rate,
            idle_expired: expired,
        }
    }

    #[test]
    fn grows_doubling_up_to_32_per_tick_and_never_past_max() {
        let mut live = 2;
        let mut rate = 1;
        let mut steps = vec![];
        while live < 40 {
            let p = plan(view(live, 0, rate, 0));
            assert!(p.spawn > 0);
            steps.push(p.spawn);
            live += p.spawn;
            rate = p.next_rate;
        }
        assert_eq!(steps, vec![1, 2, 4, 8, 16, 7]);
        assert_eq!(live, 40);
        let p = plan(view(40, 0, rate, 0));
        assert_eq!((p.spawn, p.at_cap), (0, true));
        let big = plan(PoolView {
            live: 100,
            idle: 0,
            min: 2,
            max: 1000,
            rate: 32,
            idle_expired: 0,
        });
        assert_eq!((big.spawn, big.next_rate), (32, 32));
    }

    #[test]
    fn refills_to_min_first() {
        let p = plan(view(0, 0, 8, 0));
        assert_eq!(p.spawn, 2);
    }

    #[test]
    fn idle_pool_resets_rate_and_retires_one_expired_worker_per_tick() {
        let p = plan(view(10, 5, 16, 3));
        assert_eq!((p.spawn, p.retire, p.next_rate), (0, 1, 1));
        // Never below min.
        let p = plan(view(2, 2, 1, 2));
        assert_eq!(p.retire, 0);
        // Idle but not expired: keep.
        let p = plan(view(10, 5, 1, 0));
        assert_eq!(p.retire, 0);
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
