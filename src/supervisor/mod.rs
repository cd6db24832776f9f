//! SUPERVISOR ONLY: the poll loop that owns the pool.
//!
//! The supervisor forks workers into scoreboard slots, holds a pidfd for
//! each, reaps them (it is also the child subreaper of their job trees),
//! refills slots with back-off, and carries out the signals below. It never
//! runs job code and never signals a pid read from the scoreboard: workers
//! through their pidfds, and a job's process group only while the group's
//! leader is an unreaped child (a zombie keeps the id from being reused).
//!
//! - `SIGTERM`: stop accepting, let jobs finish within `--grace`, then kill them
//! - `SIGINT`:  cancel all jobs now and exit
//! - `SIGHUP`:  reload: check the handler again, replace each worker once idle
//! - `SIGCHLD`: reap workers, orphaned job processes and hook programs
//! - `SIGTTIN` / `SIGTTOU`: one worker more / less
//! - `SIGUSR1`: reopen the logs, and pass it on to the workers
//!
//! The loop runs the disconnect watch ([`crate::watch`]) through the
//! workers' pidfds, and the pool rules ([`pool`], pure) every tick.

mod children;
mod metrics;
mod notify;
pub(crate) mod pool;
mod reload;
mod slowlog;
pub(crate) mod upgrade;

use std::net::TcpListener;
use std::os::fd::{AsFd, AsRawFd};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::eventfd::EventFd;
use nix::sys::signal::Signal;
use nix::sys::signalfd::SignalFd;
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;

use crate::cgroup::CgroupTree;
use crate::config::Config;
use crate::hooks::Hooks;
use crate::scoreboard::{Counter, Scoreboard, SlotState};
use crate::sys;
use crate::watch::{Watch, Workers, proc_fd_holds};

use children::Worker;
use reload::ReloadWatch;

/// How often the supervisor's slower checks run (the scoreboard file's
/// length, slow jobs).
const PERIODIC: Duration = Duration::from_millis(100);

/// The pool's workers as the watch sees them: pids and pidfds from the
/// supervisor's own records.
struct PoolWorkers<'a>(&'a [SlotRec]);

impl Workers for PoolWorkers<'_> {
    fn pid(&self, slot: usize) -> Option<Pid> {
        self.0.get(slot)?.worker.as_ref().map(|w| w.pid)
    }

    /// Through the worker's pidfd; without one (pidfd_open failed, out of
    /// descriptors), by its pid, which is safe only because it is our own
    /// unreaped child: its pid cannot be reused before we reap it, and
    /// its record goes when we do.
    fn poke(&self, slot: usize) -> std::io::Result<()> {
        let w = self
            .0
            .get(slot)
            .and_then(|s| s.worker.as_ref())
            .ok_or_else(|| std::io::Error::other("no worker in this slot"))?;
        match &w.pidfd {
            Some(fd) => fd.signal(Signal::SIGUSR2),
            None => nix::sys::signal::kill(w.pid, Signal::SIGUSR2).map_err(std::io::Error::from),
        }
    }

    fn kill(&self, slot: usize) -> std::io::Result<()> {
        let w = self
            .0
            .get(slot)
            .and_then(|s| s.worker.as_ref())
            .ok_or_else(|| std::io::Error::other("no worker in this slot"))?;
        match &w.pidfd {
            Some(fd) => fd.signal(Signal::SIGKILL),
            None => nix::sys::signal::kill(w.pid, Signal::SIGKILL).map_err(std::io::Error::from),
        }
    }

    fn holds(&self, slot: usize, inode: u64) -> std::io::Result<bool> {
        match self.pid(slot) {
            Some(pid) => proc_fd_holds(pid, inode),
            None => Ok(false),
        }
    }
}

#[derive(Default)]
struct SlotRec {
    worker: Option<Worker>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Running,
    /// SIGTERM: workers retire after their job; at the deadline, kill.
    Draining {
        deadline: Instant,
    },
    /// SIGINT or grace over: workers kill their jobs; at the deadline, SIGKILL.
    Killing {
        deadline: Instant,
    },
}

pub(crate) struct Supervisor<'a> {
    cfg: &'a Config,
    hooks: &'a Hooks,
    sb: &'a Scoreboard,
    listener: &'a TcpListener,
    sigfd: SignalFd,
    wake: EventFd,
    slots: Vec<SlotRec>,
    /// The slot of each live worker, by pid (our own records, as `slots`).
    by_pid: std::collections::HashMap<Pid, usize>,
    generation: u32,
    phase: Phase,
    me: Pid,
    watch: Watch,
    /// Minimum of workers: `--prefork`, moved by SIGTTIN / SIGTTOU.
    min_workers: usize,
    /// Workers to fork at the next growth tick.
    rate: usize,
    next_pool_tick: Instant,
    /// Crash-loop back-off: no fork before this.
    hold_until: Option<Instant>,
    /// The worker set may have changed (a signal, a child reaped, a
    /// reload): count the workers against the minimum at the next wake,
    /// not at every wake (a count over every slot).
    pool_changed: bool,
    quick_deaths: u32,
    /// Inside a "max children reached" episode (logged once per episode).
    cap_episode: bool,
    reload_watch: Option<ReloadWatch>,
    /// SIGCHLD arrived: reap (a waitid over every child costs with 1,000
    /// workers, so only then).
    child_exited: bool,
    /// After a worker died: when to look again for processes of its job
    /// reparented to us since.
    sweep_orphans_at: Option<Instant>,
    /// `--containment cgroup`: jobd's cgroup tree (a cgroup per slot).
    cgroups: Option<&'a CgroupTree>,
    /// The children this process had before the pool started: an
    /// embedding program's own, never taken for orphaned jobs.
    own_before: Vec<Pid>,
    /// `--max-per-source` refusals: the count at the last change, when,
    /// and the count when the episode began.
    refused: (u64, Instant, u64),
    /// Forking a worker failing.
    fork_fault: crate::episode::Episode,
    /// `sd_notify` to the service manager.
    notifier: notify::Notifier,
    /// The executable as it was at start (an upgrade runs what is there now).
    exe: Option<std::path::PathBuf>,
    /// An upgrade under way, and the new supervisor once it took over (our
    /// child until we exit).
    upgrade: Option<upgrade::Upgrade>,
    upgraded_to: Option<Pid>,
    /// `--metrics-listen`: the HTTP server, in this loop.
    metrics: Option<metrics::Metrics>,
    /// `--slow-job-log`: the jobs reported.
    slowlog: slowlog::SlowLog,
    /// When [`Supervisor::maintain`]'s slower checks are due.
    next_periodic: Instant,
}

impl<'a> Supervisor<'a> {
    pub(crate) fn new(
        cfg: &'a Config,
        hooks: &'a Hooks,
        sb: &'a Scoreboard,
        listener: &'a TcpListener,
        cgroups: Option<&'a CgroupTree>,
        metrics_listener: Option<TcpListener>,
    ) -> std::io::Result<Supervisor<'a>> {
        let sigfd = sys::handled_signalfd()?;
        let wake = EventFd::from_value_and_flags(
            0,
            nix::sys::eventfd::EfdFlags::EFD_NONBLOCK | nix::sys::eventfd::EfdFlags::EFD_CLOEXEC,
        )?;
        let own_before = sys::children();
        nix::sys::prctl::set_child_subreaper(true)?;
        let watch = Watch::new(cfg, sb)?;
        let reload_watch = reload::ReloadWatch::new(cfg, hooks);
        let h = sb.header();
        h.set_max_children(cfg.max_children);
        h.set_min_workers(cfg.prefork);

        Ok(Supervisor {
            cfg,
            hooks,
            sb,
            listener,
            sigfd,
            wake,
            slots: (0..cfg.slots()).map(|_| SlotRec::default()).collect(),
            // Sized once: a rehash after forks would write pages the
            // earlier workers share (copied into each of them).
            by_pid: std::collections::HashMap::with_capacity(cfg.slots()),
            generation: 1,
            phase: Phase::Running,
            me: nix::unistd::getpid(),
            watch,
            min_workers: cfg.prefork,
            rate: 1,
            next_pool_tick: Instant::now() + pool::TICK,
            hold_until: None,
            pool_changed: true,
            quick_deaths: 0,
            cap_episode: false,
            reload_watch,
            child_exited: false,
            sweep_orphans_at: None,
            cgroups,
            own_before,
            refused: (0, Instant::now(), 0),
            fork_fault: crate::episode::Episode::new("forking a worker"),
            notifier: notify::Notifier::new(),
            exe: std::fs::read_link("/proc/self/exe").ok(),
            upgrade: None,
            upgraded_to: None,
            metrics: metrics_listener.map(metrics::Metrics::new),
            slowlog: slowlog::SlowLog::default(),
            next_periodic: Instant::now(),
        })
    }

    /// Runs the pool until it stops. Returns the exit code.
    pub(crate) fn run(mut self) -> i32 {
        self.sb.header().set_generation(self.generation);
        for i in 0..self.cfg.prefork {
            self.spawn(i);
        }
        self.notifier.ready();
        loop {
            let now = Instant::now();
            let mut next: Option<Instant> = None;
            let mut earliest = |t: Instant| next = Some(next.map_or(t, |n: Instant| n.min(t)));
            if let Some(t) = self.hold_until {
                earliest(t);
            }
            if let Some(r) = &self.reload_watch {
                earliest(r.next_due());
            }
            match self.phase {
                Phase::Running => earliest(self.next_pool_tick),
                Phase::Draining { deadline } | Phase::Killing { deadline } => earliest(deadline),
            }
            earliest(self.watch.next_due());
            if self.upgrade.is_some() {
                earliest(now + Duration::from_millis(20));
            }
            if let Some(t) = self.metrics.as_ref().and_then(|m| m.next_due()) {
                earliest(t);
            }
            if self.cfg.slow_job_log.is_some() {
                earliest(self.next_periodic);
            }
            let line = self.notifier.wants_status(now).then(|| self.status_line());
            if let Some(t) = self.notifier.tick(now, line) {
                earliest(t);
            }
            if let Some(t) = self.sweep_orphans_at {
                earliest(t);
            }
            let timeout = match next {
                Some(t) => PollTimeout::try_from(
                    t.saturating_duration_since(now) + Duration::from_micros(500),
                )
                .unwrap_or(PollTimeout::MAX),
                None => PollTimeout::NONE,
            };
            let (sig_ready, wake_ready, http_ready) = {
                let mut fds = vec![
                    PollFd::new(self.sigfd.as_fd(), PollFlags::POLLIN),
                    PollFd::new(self.wake.as_fd(), PollFlags::POLLIN),
                ];
                if let Some(m) = &self.metrics {
                    fds.extend(m.fds().into_iter().map(|(fd, what)| PollFd::new(fd, what)));
                }
                match nix::poll::poll(&mut fds, timeout) {
                    Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                    Err(e) => tracing::error!(error = %e, "poll failed in supervisor"),
                }
                let ready = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
                (ready(&fds[0]), ready(&fds[1]), fds[2..].iter().any(ready))
            };
            if http_ready
                || self
                    .metrics
                    .as_ref()
                    .and_then(|m| m.next_due())
                    .is_some_and(|t| Instant::now() >= t)
            {
                let sb = self.sb;
                if let Some(m) = &mut self.metrics {
                    m.serve(&|| crate::control::status::snapshot(sb), &self.slowlog);
                }
            }
            if sig_ready {
                self.handle_signals();
                self.pool_changed = true;
            }
            let woken = wake_ready && self.wake.read().is_ok();
            if woken || Instant::now() >= self.watch.next_due() {
                let workers = PoolWorkers(&self.slots);
                self.watch
                    .tick(self.cfg, self.hooks, self.sb, &workers, woken);
            }
            if std::mem::take(&mut self.child_exited) {
                self.reap();
                self.pool_changed = true;
            }
            self.maintain();
            if self.phase != Phase::Running && self.live_workers() == 0 {
                break;
            }
        }
        // Orphaned job processes left by workers are reaped (they were
        // killed with their group when their worker was reaped), and hook
        // programs still running are killed.
        self.watch.kill_hooks();
        self.reap();
        self.sb.header().set_supervisor_pid(0);
        tracing::info!("jobd stopped");
        0
    }

    /// The scoreboard file was truncated under us: its length was put
    /// back (by the SIGBUS guard) and the pages read as zeroes. The header
    /// is made valid again from what the supervisor knows; the counters
    /// restart from zero, and each worker's slot is rewritten at its next
    /// change. Nothing the supervisor decides rests on the zeroed slots
    /// alone: its own records name its workers.
    fn after_truncation(&self) {
        tracing::warn!(
            "the scoreboard file was truncated by someone else; its length is restored and its counters restart from zero"
        );
        self.sb.repair();
        let h = self.sb.header();
        h.set_supervisor_pid(self.me.as_raw());
        h.set_prefork(self.cfg.prefork);
        h.set_generation(self.generation);
        h.set_max_children(self.cfg.max_children);
        h.set_min_workers(self.min_workers);
        h.set_containment(self.cgroups.is_some());
        if let Ok(a) = self.listener.local_addr() {
            self.sb.set_listen(a);
        }
    }

    /// Ends a `--max-per-source` episode a second after its last refusal,
    /// with one line saying how many connections it refused.
    fn per_source_episode(&mut self, now: Instant) {
        let n = self.sb.header().get(Counter::PerSourceRefused);
        let (last, at, start) = self.refused;
        if n != last {
            self.refused = (n, now, start);
        } else if now.duration_since(at) >= Duration::from_secs(1)
            && self.sb.header().end_per_source_episode()
        {
            tracing::info!(
                refused = n - start,
                "--max-per-source: no refusal for a second; the episode is over"
            );
            self.refused = (n, at, n);
        }
    }

    /// `--slow-job-log`: the running jobs (of workers in our records), and
    /// a report of each one past `after`, once.
    fn report_slow_jobs(&mut self, after: Duration) {
        let now_ns = sys::monotonic_ns();
        let jobs: Vec<_> = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                let w = s.worker.as_ref()?;
                let job = self.sb.slot(i).job()?;
                let age = Duration::from_nanos(now_ns.saturating_sub(job.start_mono_ns));
                Some((i, w.pid, job.job_id, job.shown_peer(), age))
            })
            .collect();
        self.slowlog.check(after, &jobs);
    }

    /// The one-line summary for the service manager's `STATUS=`.
    fn status_line(&self) -> String {
        let h = self.sb.header();
        format!(
            "{} workers ({} busy); {} jobs served, {} cancelled",
            self.live_workers(),
            self.busy_count(),
            h.get(Counter::JobsServed),
            h.get(Counter::CancelledDisconnect)
                .saturating_add(h.get(Counter::CancelledTimeout))
                .saturating_add(h.get(Counter::CancelledShutdown))
        )
    }

    fn live_workers(&self) -> usize {
        self.slots.iter().filter(|s| s.worker.is_some()).count()
    }

    fn handle_signals(&mut self) {
        while let Ok(Some(info)) = self.sigfd.read_signal() {
            let Ok(sig) = Signal::try_from(info.ssi_signo as i32) else {
                continue;
            };
            match sig {
                Signal::SIGCHLD => self.child_exited = true,
                Signal::SIGTERM => self.begin_drain(),
                Signal::SIGUSR2 => self.begin_upgrade(),
                Signal::SIGINT => self.begin_kill("SIGINT"),
                Signal::SIGHUP => self.reload("SIGHUP"),
                Signal::SIGTTIN => self.add_worker(),
                Signal::SIGTTOU => self.remove_worker(),
                Signal::SIGUSR1 => {
                    match crate::logfiles::reopen() {
                        Ok(()) => tracing::info!("SIGUSR1: logs reopened"),
                        Err(e) => tracing::error!(error = %e, "SIGUSR1: failed to reopen the logs"),
                    }
                    for s in &self.slots {
                        if let Some(w) = &s.worker {
                            w.signal(Signal::SIGUSR1);
                        }
                    }
                }

                other => tracing::debug!(signal = other.as_str(), "signal ignored"),
            }
        }
    }

    fn run_before_shutdown(&self) {
        if let Some(h) = &self.hooks.before_shutdown
            && std::panic::catch_unwind(std::panic::AssertUnwindSafe(h)).is_err()
        {
            tracing::error!("before_shutdown hook panicked");
        }
    }

    fn begin_drain(&mut self) {
        self.drain(true);
    }

    /// SIGUSR2: starts the jobd executable again with our listener (see
    /// [`upgrade`]); this supervisor drains once the new one serves.
    fn begin_upgrade(&mut self) {
        if self.phase != Phase::Running || self.upgrade.is_some() || self.upgraded_to.is_some() {
            tracing::warn!(
                "SIGUSR2: an upgrade is already under way, or jobd is stopping; ignored"
            );
            return;
        }
        let Some(exe) = self.exe.clone() else {
            tracing::error!("SIGUSR2: upgrade refused: the executable's path is unknown");
            return;
        };
        match upgrade::Upgrade::start(&exe, self.listener) {
            Ok(u) => {
                tracing::info!(exe = %exe.display(), pid = u.pid.as_raw(), "SIGUSR2: upgrade: started the new jobd; this one serves until it is ready");
                self.upgrade = Some(u);
            }
            Err(e) => {
                tracing::error!(error = %e, "SIGUSR2: upgrade failed to start; this jobd keeps serving")
            }
        }
    }

    /// Follows an upgrade under way: the new jobd ready (we drain), gone or
    /// late (we keep serving).
    fn follow_upgrade(&mut self, now: Instant) {
        let Some(u) = &self.upgrade else {
            return;
        };
        match u.poll() {
            upgrade::Heard::Ready => {
                let pid = u.pid;
                self.upgrade = None;
                self.upgraded_to = Some(pid);
                crate::pidfile::handed_over();
                tracing::info!(
                    new_pid = pid.as_raw(),
                    "upgrade: the new jobd serves; this one stops accepting and drains"
                );
                self.notifier.main_pid(pid);
                self.drain(false);
            }
            upgrade::Heard::Nothing if now >= u.deadline => {
                let pid = u.pid;
                // Our own unreaped child: its pid is its own.
                let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
                if let Some(u) = &mut self.upgrade {
                    u.deadline = now + Duration::from_secs(3600); // reaped soon
                }
                tracing::error!(
                    new_pid = pid.as_raw(),
                    timeout_s = upgrade::READY_TIMEOUT.as_secs(),
                    "upgrade failed: the new jobd was not ready in time and was killed; this jobd keeps serving"
                );
            }
            upgrade::Heard::Nothing => {}
        }
    }

    /// Stops accepting and lets the running jobs finish within --grace;
    /// `close_listener`: the listener is shut down for every process that
    /// shares it (not when a new jobd serves on it).
    fn drain(&mut self, close_listener: bool) {
        if self.phase != Phase::Running {
            return;
        }
        tracing::info!(
            grace_ms = self.cfg.grace.as_millis() as u64,
            busy = self.busy_count(),
            "SIGTERM: stopping; running jobs may finish"
        );
        self.run_before_shutdown();
        if self.upgraded_to.is_none() {
            self.notifier.stopping();
        }
        // Stop accepting at once, for every process that shares the
        // listening socket: new connections are refused (a balancer's next
        // health check fails and new clients go elsewhere), while running
        // jobs finish and are still watched.
        if close_listener
            && let Err(e) = nix::sys::socket::shutdown(
                std::os::fd::AsRawFd::as_raw_fd(self.listener),
                nix::sys::socket::Shutdown::Read,
            )
        {
            tracing::warn!(error = %e, "failed to close the listener; workers stop accepting anyway");
        }
        self.phase = Phase::Draining {
            deadline: Instant::now() + self.cfg.grace,
        };
        for s in &mut self.slots {
            if let Some(w) = &mut s.worker {
                w.retiring = true;
                w.signal(Signal::SIGTERM);
            }
        }
    }

    fn begin_kill(&mut self, why: &str) {
        if matches!(self.phase, Phase::Killing { .. }) {
            return;
        }
        if self.phase == Phase::Running {
            self.run_before_shutdown();
        }
        self.notifier.stopping();
        tracing::info!(
            busy = self.busy_count(),
            "{why}: cancelling all jobs and stopping"
        );
        self.phase = Phase::Killing {
            deadline: Instant::now() + self.cfg.kill_grace + Duration::from_secs(1),
        };
        for s in &mut self.slots {
            if let Some(w) = &mut s.worker {
                w.retiring = true;
                w.signal(Signal::SIGINT);
            }
        }
    }

    fn busy_count(&self) -> usize {
        self.sb.slots().filter(|(_, s)| s.busy()).count()
    }

    /// SIGTTIN: one more worker, for good (gunicorn).
    fn add_worker(&mut self) {
        if self.phase != Phase::Running {
            return;
        }
        if self.min_workers >= self.cfg.max_children {
            tracing::warn!(
                workers = self.min_workers,
                max_children = self.cfg.max_children,
                "SIGTTIN: already at max children"
            );
            return;
        }
        self.min_workers += 1;
        self.sb.header().set_min_workers(self.min_workers);
        tracing::info!(min_workers = self.min_workers, "SIGTTIN: one more worker");
    }

    /// SIGTTOU: one worker less (an idle one now, else a busy one after its
    /// job), never below one.
    fn remove_worker(&mut self) {
        if self.phase != Phase::Running {
            return;
        }
        if self.min_workers <= 1 {
            tracing::warn!("SIGTTOU: already at one worker");
            return;
        }
        self.min_workers -= 1;
        self.sb.header().set_min_workers(self.min_workers);
        let pick = self.pick_idle(Duration::ZERO).or_else(|| {
            (0..self.slots.len())
                .rev()
                .find(|&i| self.slots[i].worker.as_ref().is_some_and(|w| !w.retiring))
        });
        if let Some(i) = pick {
            self.retire(i);
        }
        tracing::info!(min_workers = self.min_workers, "SIGTTOU: one worker less");
    }

    /// The highest slot whose worker has been idle for at least `min_idle`.
    fn pick_idle(&self, min_idle: Duration) -> Option<usize> {
        let now = sys::monotonic_ns();
        let need = min_idle.as_nanos() as u64;
        (0..self.slots.len()).rev().find(|&i| {
            let b = self.sb.slot(i);
            self.slots[i].worker.as_ref().is_some_and(|w| !w.retiring)
                && b.state() == SlotState::Idle
                && b.idle_since_mono_ns()
                    .is_some_and(|since| now.saturating_sub(since) >= need)
        })
    }

    fn retire(&mut self, i: usize) {
        if let Some(w) = &mut self.slots[i].worker {
            w.retiring = true;
            w.signal(Signal::SIGTERM);
        }
    }

    /// Refills slots whose time has come; escalates a stop at its deadline.
    fn maintain(&mut self) {
        let now = Instant::now();
        // The slower checks, at most every PERIODIC (this runs at every
        // wake of the loop, hang-ups and child exits included): the
        // scoreboard file's length (an fstat) and the slow-job walk over
        // every slot.
        let periodic = now >= self.next_periodic;
        if periodic {
            self.next_periodic = now + PERIODIC;
        }
        // Truncated: the supervisor faulted on it itself, the file is
        // short, or the header reads as zeroes (a worker faulted first and
        // restored the length).
        if sys::shm::take_truncated() | (periodic && self.sb.restore_length())
            || !self.sb.header_valid()
        {
            self.after_truncation();
        }
        self.follow_upgrade(now);
        if periodic && let Some(after) = self.cfg.slow_job_log {
            self.report_slow_jobs(after);
        }
        self.per_source_episode(now);
        // The tick's look: again while it finds something.
        if self.sweep_orphans_at.is_some_and(|t| now >= t) {
            self.sweep_orphans_at = self.sweep_orphans().then(|| now + pool::TICK);
        }
        match self.phase {
            Phase::Running => {
                if self
                    .reload_watch
                    .as_mut()
                    .is_some_and(|r| r.check(now, self.hooks))
                {
                    self.reload("auto-reload");
                    self.pool_changed = true;
                }
                self.manage_pool(now);
            }
            Phase::Draining { deadline } if now >= deadline => {
                tracing::warn!(
                    busy = self.busy_count(),
                    "grace period over: cancelling the jobs still running"
                );
                self.begin_kill("grace period over");
            }
            Phase::Killing { deadline } if now >= deadline => {
                for s in &mut self.slots {
                    if let Some(w) = &s.worker {
                        tracing::warn!(
                            pid = w.pid.as_raw(),
                            "worker did not exit in time; sending SIGKILL"
                        );
                        w.signal(Signal::SIGKILL);
                    }
                }
                self.phase = Phase::Killing {
                    deadline: now + Duration::from_secs(3600),
                };
            }
            _ => {}
        }
    }

    /// Workers alive and not asked to exit.
    fn live(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| s.worker.as_ref().is_some_and(|w| !w.retiring))
            .count()
    }

    /// Refills to the minimum at once; grows, shrinks and watches the cap
    /// each pool tick.
    fn manage_pool(&mut self, now: Instant) {
        let held = self.hold_until.is_some_and(|t| now < t);
        let tick = now >= self.next_pool_tick;
        if !held && (self.pool_changed || self.hold_until.is_some() || tick) {
            self.hold_until = None;
            self.pool_changed = false;
            let live = self.live();
            if live < self.min_workers {
                self.spawn_n(self.min_workers - live);
            }
        }
        if !tick {
            return;
        }
        self.next_pool_tick = now + pool::TICK;
        let (mut idle, mut live) = (0, 0);
        for (i, s) in self.slots.iter().enumerate() {
            if s.worker.as_ref().is_some_and(|w| !w.retiring) {
                live += 1;
                if matches!(
                    self.sb.slot(i).state(),
                    SlotState::Idle | SlotState::Starting
                ) {
                    idle += 1;
                }
            }
        }
        let expired = usize::from(self.pick_idle(self.cfg.idle_timeout).is_some());
        let p = pool::plan(pool::PoolView {
            live,
            idle,
            min: self.min_workers,
            max: self.cfg.max_children,
            rate: self.rate,
            idle_expired: expired,
        });
        self.rate = p.next_rate;
        if p.at_cap {
            if !self.cap_episode {
                self.cap_episode = true;
                self.sb.header().count(Counter::MaxChildrenReached);
                tracing::warn!(
                    max_children = self.cfg.max_children,
                    "max children reached: every worker is busy; clients wait in the listen queue"
                );
            }
        } else if idle > 0 {
            self.cap_episode = false;
        }
        if p.spawn > 0 && !held {
            tracing::debug!(spawn = p.spawn, live, "all workers busy: growing the pool");
            self.spawn_n(p.spawn);
        }
        if p.retire > 0
            && let Some(i) = self.pick_idle(self.cfg.idle_timeout)
        {
            tracing::debug!(slot = i, "retiring an idle worker");
            self.retire(i);
        }
    }

    fn reload(&mut self, why: &str) {
        if self.phase != Phase::Running {
            return;
        }

        if let Err(e) = self.cfg.check_handler() {
            tracing::error!(error = %e, "{why}: reload refused; keeping the current workers");
            return;
        }
        self.generation += 1;
        self.sb.header().set_generation(self.generation);
        self.notifier.reloading();
        tracing::info!(
            generation = self.generation,
            "{why}: reloading; workers are replaced once idle"
        );
        for s in &mut self.slots {
            if let Some(w) = &mut s.worker
                && w.generation < self.generation
                && !w.retiring
            {
                w.retiring = true;
                w.signal(Signal::SIGTERM);
            }
        }
    }

    /// Forks `n` workers into the lowest free slots.
    fn spawn_n(&mut self, n: usize) {
        for _ in 0..n {
            let Some(i) = self.slots.iter().position(|s| s.worker.is_none()) else {
                return;
            };
            self.spawn(i);
            if self.hold_until.is_some() {
                return; // fork failed: back off
            }
        }
    }

    fn spawn(&mut self, i: usize) {
        let board = self.sb.slot(i);
        board.claim(0, self.generation);
        let (cfg, sb, listener, wake, me) = (self.cfg, self.sb, self.listener, &self.wake, self.me);
        // The slot's cgroups, from our own slot index (never the scoreboard).
        let cg = self.cgroups.map(|t| t.slot(i)).and_then(|c| match c.create() {
            Ok(()) => Some(c),
            Err(e) => {
                tracing::error!(slot = i, error = %e, "failed to create the slot's cgroups; this worker's jobs are contained by subreaper only");
                None
            }
        });
        // The worker has no use for the supervisor's pidfds of the other
        // workers, nor for the metrics server's sockets: closed in it (the
        // N-th worker held N-1 pidfds, which the check of its descriptors
        // on each hang-up listed and read one by one).
        let (slots, metrics) = (&self.slots, &self.metrics);
        let close = slots
            .iter()
            .filter_map(|s| s.worker.as_ref()?.pidfd.as_ref())
            .map(|p| p.as_fd().as_raw_fd())
            .chain(
                metrics
                    .iter()
                    .flat_map(|m| m.fds())
                    .map(|(fd, _)| fd.as_raw_fd()),
            );
        match children::fork_worker(i, close, || {
            crate::worker::worker_main(cfg, sb, i, listener, wake, me, cg)
        }) {
            Ok((pid, pidfd)) => {
                board.set_pid(pid.as_raw());
                self.sb.header().count(Counter::WorkersSpawned);
                tracing::debug!(
                    slot = i,
                    pid = pid.as_raw(),
                    generation = self.generation,
                    "worker started"
                );
                self.by_pid.insert(pid, i);
                self.slots[i].worker = Some(Worker {
                    pid,
                    pidfd,
                    generation: self.generation,
                    started: Instant::now(),
                    retiring: false,
                });
                self.fork_fault.ok(None);
            }
            Err(e) => {
                board.release();
                let r = pool::on_exit(false, false, Duration::ZERO, self.quick_deaths);
                self.quick_deaths = r.quick_deaths;
                self.hold_until = r.after.map(|d| Instant::now() + d);
                // RLIMIT_NPROC, memory: one line per episode; the back-off
                // above retries.
                self.fork_fault.failed(Some(i), &e);
            }
        }
    }

    /// Kills what is left of the jobs of dead workers: the process group of
    /// each adopted group leader (see [`children::adopted_groups`]), and
    /// looks again next tick: a process is reparented to us only when its
    /// parent exits, which may come after this reap.
    fn kill_orphaned_jobs(&mut self) {
        self.sweep_orphans();
        self.sweep_orphans_at = Some(Instant::now() + pool::TICK);
    }

    /// One look for adopted group leaders, killing their groups; returns
    /// whether there were any.
    fn sweep_orphans(&self) -> bool {
        let known = |p: Pid| {
            self.slot_of(p).is_some()
                || self.watch.owns(p)
                || self.own_before.contains(&p)
                || self.upgrade.as_ref().is_some_and(|u| u.pid == p)
                || self.upgraded_to == Some(p)
                // Under cgroups a job process is in jobd's tree.
                || self.cgroups.is_some_and(|t| !t.holds(p.as_raw()))
        };
        let left = children::adopted_groups(known);
        for &g in &left {
            if sys::kill_group(g, Signal::SIGKILL).is_ok() {
                tracing::debug!(pgid = g.as_raw(), "killed what a dead worker's job left");
            }
        }
        !left.is_empty()
    }

    fn slot_of(&self, pid: Pid) -> Option<usize> {
        self.by_pid
            .get(&pid)
            .copied()
            .filter(|&i| self.slots[i].worker.as_ref().is_some_and(|w| w.pid == pid))
    }

    /// Reaps every exited child: hook programs (their status goes to the
    /// watch), workers (refilling their slots) and job processes orphaned
    /// by a dead worker (we are their subreaper).
    fn reap(&mut self) {
        // Workers reaped in this round: what their jobs left is killed once
        // for all of them (a look over every child of ours), then each is
        // read and its slot refilled.
        let mut workers = Vec::new();
        while let Some(pid) = children::next_exited() {
            if self.watch.owns(pid) {
                if let Ok(st) = children::reap(pid) {
                    self.watch.hook_exited(pid, st);
                }
                continue;
            }
            if let Some(i) = self.slot_of(pid) {
                workers.push((i, children::reap(pid)));
            } else if self.upgrade.as_ref().is_some_and(|u| u.pid == pid) {
                let st = children::reap(pid);
                self.upgrade = None;
                tracing::error!(new_pid = pid.as_raw(), status = ?st, "upgrade failed: the new jobd exited before it served; this jobd keeps serving");
            } else if self.upgraded_to == Some(pid) {
                let st = children::reap(pid);
                tracing::warn!(new_pid = pid.as_raw(), status = ?st, "the jobd that took over from this one exited");
            } else if let Some(k) = self.own_before.iter().position(|&p| p == pid) {
                // The embedding program's own child: reaped (it would stay
                // a zombie otherwise), its group left alone.
                self.own_before.swap_remove(k);
                let _ = children::reap(pid);
            } else if self.cgroups.is_some() {
                // Under cgroups the dead worker's job cgroup was killed
                // whole; a group named after an unknown child is not
                // touched.
                let _ = children::reap(pid);
            } else {
                // An orphaned job process, adopted as subreaper. While this
                // zombie is unreaped its pid is held, so a group with that
                // id can only be the one it led (a handler whose worker
                // died): what is left of it goes too.
                if sys::kill_group(pid, Signal::SIGKILL).is_ok() {
                    tracing::debug!(
                        pgid = pid.as_raw(),
                        "killed the rest of an orphaned job group"
                    );
                }
                let _ = children::reap(pid);
            }
        }
        if workers.is_empty() {
            return;
        }
        // A worker that died in the middle of a job: its handler was
        // reparented to us (the subreaper). It is found among our own
        // children, never from the slot, and killed with its group; with
        // cgroups, the slot's job cgroup (named from our own slot index) is
        // killed whole.
        if let Some(t) = self.cgroups {
            for &(i, _) in &workers {
                t.slot(i).kill_jobs();
            }
        }
        self.kill_orphaned_jobs();
        for (i, status) in workers {
            self.worker_exited(i, status);
        }
    }

    /// A reaped worker (what its jobs left is killed already): its job's
    /// record, its slot refilled.
    fn worker_exited(&mut self, i: usize, status: nix::Result<WaitStatus>) {
        let Some(w) = self.slots[i].worker.take() else {
            return;
        };
        self.by_pid.remove(&w.pid);
        let board = self.sb.slot(i);
        let job = board.job();
        let reading = children::read_exit(
            &children::Reaped {
                slot: i,
                worker: &w,
                status: &status,
                job,
                cancel: job.and_then(|j| board.cancel_requested(j.job_id)),
                kill_requested: job.is_some_and(|j| board.kill_requested(j.job_id)),
            },
            sys::monotonic_ns(),
        );
        // A job its worker recorded before dying is not recorded again.
        let recorded = board.phase() == crate::scoreboard::JobPhase::Recorded;
        if let (Some(end), Some(j), false) = (&reading.job_end, job, recorded) {
            // A closure worker killed because its job ignored the cancel:
            // its worker never got to say so.
            if let Some(req) = board.cancel_requested(j.job_id)
                && board.kill_requested(j.job_id)
            {
                crate::job_end::log_cancelled(
                    i,
                    w.pid.as_raw(),
                    j.job_id,
                    j.shown_peer(),
                    &req,
                    end.duration_ms,
                    None,
                );
            }
            end.record(self.sb.header());
        }
        board.release();
        self.watch.forget_slot(i);
        let (desc, planned) = (reading.status, reading.planned);
        let stopping = self.phase != Phase::Running;
        if planned {
            tracing::debug!(slot = i, pid = w.pid.as_raw(), status = %desc, "worker exited");
        } else {
            tracing::warn!(slot = i, pid = w.pid.as_raw(), status = %desc, "worker died; replacing it");
        }
        if let Some(h) = &self.hooks.on_worker_exit {
            let ev = crate::hooks::WorkerExit {
                slot: i,
                pid: w.pid.as_raw(),
                status: desc.clone(),
                planned,
            };
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| h(&ev))).is_err() {
                tracing::error!(slot = i, "on_worker_exit hook panicked");
            }
        }
        let r = pool::on_exit(planned, stopping, w.started.elapsed(), self.quick_deaths);
        self.quick_deaths = r.quick_deaths;
        if let Some(d) = r.after
            && !d.is_zero()
        {
            self.hold_until = Some(Instant::now() + d);
            tracing::warn!(
                slot = i,
                delay_ms = d.as_millis() as u64,
                quick_deaths = r.quick_deaths,
                "workers are dying quickly; backing off before respawning"
            );
        }
    }
}
