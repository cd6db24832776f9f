//! The disconnect watch: detection, verdict and cancellation of jobs whose
//! client went away, and the job timeout. It runs in the supervisor, and
//! in the one process of `--prefork 0`, through the same code.
//!
//! Every `--check-interval`, and at once when a worker reports that its
//! client hung up, the watch lists the listener's TCP sockets (sock_diag or
//! procfs), diffs them against the jobs in the scoreboard
//! ([`crate::detect::diff`]), confirms each candidate (an exact lookup or a
//! second read, the slot's job id and phase, and the worker's
//! `/proc/<pid>/fd`), asks for a verdict ([`verdict`]), and cancels
//! ([`cancel`]). A job is judged once: a verdict is never asked for again
//! on the next tick.
//!
//! The processes behind the slots are reached only through [`Workers`],
//! which the caller answers from its own records: nothing read from the
//! scoreboard is ever a signal target.

mod cancel;
#[cfg(test)]
mod testutil;
mod verdict;
mod workers;

use crate::episode::Episode;
use crate::scoreboard::Counter;
pub(crate) use workers::{Workers, proc_fd_holds};

use std::collections::HashSet;
use std::time::{Duration, Instant};

use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;

use crate::config::{Config, DetectorKind, FinPolicy};
use crate::detect::procfs::ProcNet;
use crate::detect::sockdiag::SockDiag;
use crate::detect::{
    Gone, JOB_SOCKET_STATES, RunningJob, SockEntry, SocketSource, diff, tcp_state,
};
use crate::hooks::{DisconnectEvent, DisconnectReason, Hooks};
use crate::scoreboard::{
    CancelReason, CancelRequest, Hangup, JobPhase, JobView, Scoreboard, SeenBy, VerdictBy,
    now_unix_ms,
};
use crate::sys;

use cancel::Canceller;
use verdict::{FirstStep, Judged, PendingHooks};

enum Backend {
    Diag(SockDiag),
    Proc(ProcNet),
}

impl Backend {
    fn source(&mut self) -> &mut dyn SocketSource {
        match self {
            Backend::Diag(d) => d,
            Backend::Proc(p) => p,
        }
    }
}

/// How many ticks apart the full scan covers jobs whose worker watches them.
const BACKSTOP_TICKS: u32 = 10;

pub(crate) struct Watch {
    backend: Backend,
    port: u16,
    interval: Duration,
    next: Instant,
    last_scan: Instant,
    /// Jobs whose worker watches its socket are covered by the full scan
    /// only this often (the backstop); unwatched jobs every tick.
    next_backstop: Instant,
    seen: Vec<SockEntry>,
    judged: HashSet<u64>,
    canceller: Canceller,
    /// `--disconnect-hook` programs running, one per judged job.
    hooks: PendingHooks,
    /// A scan failing, episode by episode.
    scan_fault: Episode,
    /// A check of a worker's descriptors failing.
    holds_fault: Episode,
    /// Where this watch has read the scoreboard's hang-up ring to.
    hangup_cursor: u64,
    /// Slots whose reported hang-up could not be checked (out of
    /// descriptors): looked at again at the next tick.
    retry: Vec<usize>,
    /// When the walk over every slot (job timeouts, the scan's job list)
    /// is next needed, when every job is watched by its worker: at the
    /// backstop scan, or at the first job timeout due, whichever is first.
    next_walk: Instant,
    /// Jobs are not watched by their worker (`--worker-watch off`, or
    /// closure jobs): every tick walks and scans.
    always_walk: bool,
}

fn event(slot: usize, pid: Pid, job: &JobView, reason: DisconnectReason) -> DisconnectEvent {
    let peer = job.shown_peer().unwrap_or_else(|| ([0, 0, 0, 0], 0).into());
    let local = job.local.unwrap_or_else(|| ([0, 0, 0, 0], 0).into());
    DisconnectEvent {
        slot,
        pid: pid.as_raw(),
        job_id: job.job_id,
        proto: if peer.is_ipv4() { "TCP" } else { "TCP6" },
        local_host: local.ip().to_string(),
        local_port: local.port(),
        foreign_host: peer.ip().to_string(),
        foreign_port: peer.port(),
        reason,
        proxy_peer: job.proxy_peer().map(|p| p.to_string()),
        job_start_unix_ms: job.start_unix_ms,
        detected_unix_ms: now_unix_ms(),
    }
}

impl Watch {
    pub(crate) fn new(cfg: &Config, sb: &Scoreboard) -> std::io::Result<Watch> {
        let listen = sb.listen().unwrap_or(cfg.listen);
        let port = listen.port();
        // Accepted sockets have the listener's family: scan only that one.
        let v6 = listen.is_ipv6();
        let open_diag = || {
            SockDiag::open().map(|mut d| {
                d.only_family(v6);
                d
            })
        };
        let mut backend = match cfg.detector {
            DetectorKind::Procfs => Backend::Proc(ProcNet::for_family(v6)),
            DetectorKind::SockDiag => Backend::Diag(open_diag().map_err(std::io::Error::other)?),
            DetectorKind::Auto => {
                let probe = open_diag().and_then(|mut d| {
                    let mut v = Vec::new();
                    d.dump(port, JOB_SOCKET_STATES, &mut v).map(|_| d)
                });
                match probe {
                    Ok(d) => Backend::Diag(d),
                    Err(e) => {
                        tracing::warn!(error = %e, "netlink sock_diag is unavailable; falling back to /proc/net/tcp");
                        Backend::Proc(ProcNet::for_family(v6))
                    }
                }
            }
        };
        let name = backend.source().name();
        tracing::info!(
            detector = name,
            check_interval_ms = cfg.check_interval.as_millis() as u64,
            worker_watch = cfg.worker_watch,
            "disconnect detection on"
        );
        let now = Instant::now();
        Ok(Watch {
            backend,
            port,
            interval: cfg.check_interval,
            next: now + cfg.check_interval,
            last_scan: now,
            next_backstop: now,
            seen: Vec::with_capacity(256),
            judged: HashSet::new(),
            canceller: Canceller::default(),
            hooks: PendingHooks::default(),
            scan_fault: Episode::new("disconnect scan"),
            holds_fault: Episode::new("check of a worker's descriptors"),
            // From the ring's start: a watch made after reports were
            // written (in tests) reads them, or walks every slot once.
            hangup_cursor: 0,
            retry: Vec::new(),
            next_walk: now,
            always_walk: !cfg.worker_watch || matches!(cfg.job, crate::config::JobSpec::Closure(_)),
        })
    }

    /// When the watch needs its next tick.
    pub(crate) fn next_due(&self) -> Instant {
        [self.canceller.next_due(), self.hooks.next_due()]
            .into_iter()
            .flatten()
            .fold(self.next, Instant::min)
    }

    /// The worker of `slot` is gone.
    pub(crate) fn forget_slot(&mut self, slot: usize) {
        self.canceller.forget_slot(slot);
    }

    /// Whether `pid` is a hook program of ours (its reaper hands its status
    /// over with [`Watch::hook_exited`]).
    pub(crate) fn owns(&self, pid: Pid) -> bool {
        self.hooks.owns(pid)
    }

    /// A hook program was reaped.
    pub(crate) fn hook_exited(&mut self, pid: Pid, status: WaitStatus) {
        self.hooks.exited(pid, status);
    }

    /// Reaps the hook programs that exited, for a process without a reaping
    /// loop of its own (`--prefork 0`).
    pub(crate) fn reap_hooks(&mut self) {
        self.hooks.reap();
    }

    /// Kills the hook programs still running (the watch's owner stops).
    pub(crate) fn kill_hooks(&mut self) {
        self.hooks.kill_all();
    }

    /// Keeps the reset candidates whose socket is really gone: an exact
    /// lookup by cookie (sock_diag), or one second read of the tables
    /// (procfs, which is no snapshot: a socket missed once must be missed
    /// twice).
    fn confirm_resets(&mut self, sb: &Scoreboard, gone: &mut Vec<Gone>) {
        if !gone
            .iter()
            .any(|g| g.reason == DisconnectReason::ClientReset)
        {
            return;
        }
        match &mut self.backend {
            Backend::Diag(d) => gone.retain(|g| {
                g.reason != DisconnectReason::ClientReset
                    || sb
                        .slot(g.slot)
                        .job()
                        .is_some_and(|job| match (job.local, job.peer) {
                            (Some(l), Some(p)) => matches!(d.lookup(job.cookie, l, p), Ok(None)),
                            _ => false,
                        })
            }),
            Backend::Proc(p) => {
                let mut again = Vec::new();
                if p.dump(self.port, JOB_SOCKET_STATES, &mut again).is_err() {
                    gone.retain(|g| g.reason != DisconnectReason::ClientReset);
                    return;
                }
                let still: HashSet<u64> = again.iter().map(|e| e.inode).collect();
                gone.retain(|g| {
                    g.reason != DisconnectReason::ClientReset
                        || sb
                            .slot(g.slot)
                            .job()
                            .is_some_and(|job| !still.contains(&job.inode))
                });
            }
        }
    }

    /// Jobs whose worker saw its client hang up (the worker watch woke us),
    /// judged at once without a full scan. With sock_diag the worker's
    /// report is checked by an exact lookup of the socket; with procfs a
    /// full read costs milliseconds, so the worker's own poll result (the
    /// kernel's state of its socket) is taken. The periodic scan stays the
    /// authority for everything else.
    fn reported(&mut self, sb: &Scoreboard, workers: &dyn Workers, fin_counts: bool) -> Vec<Gone> {
        let mut out = Vec::new();
        // The slots named in the hang-up ring, or every slot when the ring
        // cannot say: O(reports), not O(slots), per wake.
        let (named, cursor) = sb.hangups_since(self.hangup_cursor);
        self.hangup_cursor = cursor;
        let retry = std::mem::take(&mut self.retry);
        let slots: Box<dyn Iterator<Item = (usize, &crate::scoreboard::Slot)>> = match named {
            Some(mut v) => {
                for i in retry {
                    if !v.contains(&i) {
                        v.push(i);
                    }
                }
                Box::new(v.into_iter().map(|i| (i, sb.slot(i))))
            }
            None => Box::new(sb.slots()),
        };
        for (i, s) in slots {
            if workers.pid(i).is_none() {
                continue;
            }
            let Some((kind, _)) = s.hangup() else {
                continue;
            };
            let Some(job) = s.job() else { continue };
            if self.judged.contains(&job.job_id) || s.phase() != JobPhase::Running {
                continue;
            }
            let reason = match &mut self.backend {
                Backend::Diag(d) => match (job.local, job.peer) {
                    (Some(l), Some(p)) => match d.lookup(job.cookie, l, p) {
                        Ok(None) if kind == Hangup::Unresponsive => {
                            Some(DisconnectReason::ClientUnresponsive)
                        }
                        Ok(None) => Some(DisconnectReason::ClientReset),
                        Ok(Some(e))
                            if fin_counts
                                && matches!(
                                    e.state,
                                    tcp_state::CLOSE_WAIT
                                        | tcp_state::LAST_ACK
                                        | tcp_state::CLOSING
                                ) =>
                        {
                            Some(DisconnectReason::ClientClosed)
                        }
                        _ => None,
                    },
                    _ => None,
                },
                Backend::Proc(_) => match kind {
                    Hangup::Reset => Some(DisconnectReason::ClientReset),
                    Hangup::Unresponsive => Some(DisconnectReason::ClientUnresponsive),
                    Hangup::Fin if fin_counts => Some(DisconnectReason::ClientClosed),
                    Hangup::Fin => None,
                },
            };
            if let Some(reason) = reason {
                out.push(Gone {
                    slot: i,
                    job_id: job.job_id,
                    reason,
                });
            }
        }
        out
    }

    /// One round: closure kills and hook verdicts that are due, the jobs
    /// whose worker reported a hang-up (`woken`), and, when its time has
    /// come, the job timeouts and the scan.
    pub(crate) fn tick(
        &mut self,
        cfg: &Config,
        hooks: &Hooks,
        sb: &Scoreboard,
        workers: &dyn Workers,
        woken: bool,
    ) {
        let now = Instant::now();
        self.canceller.kill_overdue(sb, workers, now);
        for (j, verdict, by) in self.hooks.resolve(cfg, now) {
            if sb.slot(j.slot).still_runs(&j.job) {
                self.canceller
                    .carry_out(sb, workers, cfg.kill_grace, &j, verdict, by);
            }
        }
        let fin_counts = cfg.on_fin == FinPolicy::Cancel;
        if woken || !self.retry.is_empty() {
            let prev = self.last_scan;
            for g in self.reported(sb, workers, fin_counts) {
                self.judge(cfg, hooks, sb, workers, g, prev);
            }
        }
        if now < self.next {
            return;
        }
        self.next = now + self.interval;
        // With every job watched by its worker, a tick in which nothing was
        // reported costs nothing per slot: the walk over the slots runs at
        // the backstop scan's rate, or when a job timeout is due.
        if !self.always_walk && now < self.next_walk {
            return;
        }
        let scan_start = sys::monotonic_ns();
        let mut jobs = Vec::new();
        let mut overdue = Vec::new();
        let mut live_ids = HashSet::new();
        let mut first_timeout_ns = u64::MAX;
        for (i, s) in sb.slots() {
            if !self.judged.is_empty()
                && let Some(v) = s.job()
            {
                live_ids.insert(v.job_id);
            }
            if workers.pid(i).is_none() {
                continue;
            }
            if let Some(v) = s.job()
                && s.phase() == JobPhase::Running
                && !self.judged.contains(&v.job_id)
            {
                if cfg.job_timeout.is_some_and(|t| {
                    scan_start.saturating_sub(v.start_mono_ns) > t.as_nanos() as u64
                }) {
                    overdue.push((i, v));
                    continue;
                }
                if let Some(t) = cfg.job_timeout {
                    first_timeout_ns =
                        first_timeout_ns.min(v.start_mono_ns.saturating_add(t.as_nanos() as u64));
                }
                jobs.push(RunningJob {
                    slot: i,
                    job_id: v.job_id,
                    inode: v.inode,
                    cookie: v.cookie,
                    start_mono_ns: v.start_mono_ns,
                });
            }
        }
        for (i, v) in overdue {
            self.time_out(cfg, sb, workers, i, v);
        }
        self.judged.retain(|id| live_ids.contains(id));
        // A worker that watches its own client reports a hang-up at once;
        // its job needs the full scan only as a backstop, every
        // BACKSTOP_TICKS ticks. A job nobody watches (a closure, or
        // --worker-watch off) is scanned every tick.
        let unwatched = jobs.iter().any(|j| !sb.slot(j.slot).watched());
        if !unwatched {
            // The backstop covers the jobs that have run a whole backstop
            // period: a younger one is covered by the next, if it lives
            // on. Short jobs under load (many sockets in TIME_WAIT, which
            // a dump walks past) then cost no scan at all.
            let period = (self.interval * BACKSTOP_TICKS).as_nanos() as u64;
            jobs.retain(|j| scan_start.saturating_sub(j.start_mono_ns) >= period);
        }
        let scanning = !jobs.is_empty() && (unwatched || now >= self.next_backstop);
        if scanning {
            self.next_backstop = now + self.interval * BACKSTOP_TICKS;
        }
        // The next walk: at the next tick while a job is unwatched; else
        // at the backstop, the first timeout due, or a job timeout from
        // now (a job started after this walk times out no sooner).
        self.next_walk = if unwatched {
            now
        } else {
            let timeout_in = |ns: u64| Duration::from_nanos(ns.saturating_sub(scan_start));
            [
                Some(if jobs.is_empty() {
                    now + self.interval * BACKSTOP_TICKS
                } else {
                    self.next_backstop.max(now + self.interval)
                }),
                cfg.job_timeout.map(|t| now + t),
                (first_timeout_ns != u64::MAX).then(|| now + timeout_in(first_timeout_ns)),
            ]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(now)
        };
        if !scanning {
            return;
        }
        let prev_scan = std::mem::replace(&mut self.last_scan, now);
        let mut seen = std::mem::take(&mut self.seen);
        seen.clear();
        let scan_began = Instant::now();
        let res = self
            .backend
            .source()
            .dump(self.port, JOB_SOCKET_STATES, &mut seen);
        sb.header().count(Counter::Scans);
        sb.header()
            .add(Counter::ScanUs, scan_began.elapsed().as_micros() as u64);
        if let Err(e) = res {
            self.seen = seen;
            // Logged once per episode, counted; the next tick scans again
            // (the backstop is not pushed back).
            sb.header().count(Counter::DetectFailures);
            self.scan_fault.failed(None, &e);
            self.next_backstop = now;
            return;
        }
        self.scan_fault.ok(None);
        let mut gone = diff(&jobs, &mut seen, scan_start, fin_counts);
        self.seen = seen;
        self.confirm_resets(sb, &mut gone);
        for g in gone {
            self.judge(cfg, hooks, sb, workers, g, prev_scan);
        }
    }

    /// Cancels a job that ran past `--job-timeout` (no hooks are asked).
    fn time_out(
        &mut self,
        cfg: &Config,
        sb: &Scoreboard,
        workers: &dyn Workers,
        slot: usize,
        job: JobView,
    ) {
        let Some(pid) = workers.pid(slot) else {
            return;
        };
        self.judged.insert(job.job_id);
        let req = CancelRequest::plain(CancelReason::Timeout, VerdictBy::Timeout);
        if self
            .canceller
            .cancel(sb, workers, slot, &job, req, cfg.kill_grace)
        {
            tracing::debug!(
                slot,
                pid = pid.as_raw(),
                job = job.job_id,
                "job past --job-timeout: cancel requested"
            );
        }
    }

    /// Confirms one candidate, asks for the verdict, and cancels or keeps.
    fn judge(
        &mut self,
        cfg: &Config,
        hooks: &Hooks,
        sb: &Scoreboard,
        workers: &dyn Workers,
        g: Gone,
        prev_scan: Instant,
    ) {
        let Some(pid) = workers.pid(g.slot) else {
            return;
        };
        let board = sb.slot(g.slot);
        let Some(job) = board.job().filter(|v| v.job_id == g.job_id) else {
            return;
        };
        if self.judged.contains(&job.job_id) || !board.still_runs(&job) {
            return; // judged already, or ending and closing its socket itself
        }
        match workers.holds(g.slot, job.inode) {
            Ok(true) => self.holds_fault.ok(None),
            Ok(false) => return, // the record is not this worker's socket any more
            Err(e) => {
                // Nobody can tell (out of descriptors): no verdict now;
                // the next tick (or scan) finds the job again and retries.
                sb.header().count(Counter::DetectFailures);
                self.holds_fault.failed(Some(g.slot), &e);
                if !self.retry.contains(&g.slot) {
                    self.retry.push(g.slot);
                }
                return;
            }
        }
        // Re-check after the confirmations: still the same job, running.
        if !board.still_runs(&job) {
            return;
        }
        self.judged.insert(job.job_id);
        let ev = event(g.slot, pid, &job, g.reason);
        let detected = sys::monotonic_ns();
        let (seen_after_ns, seen_by) = match board.hangup() {
            Some((_, at)) if at <= detected => (detected - at, SeenBy::WorkerWatch),
            _ => (prev_scan.elapsed().as_nanos() as u64, SeenBy::Scan),
        };
        let judged = Judged {
            slot: g.slot,
            pid,
            job,
            reason: g.reason,
            seen_after_us: (seen_after_ns / 1000).min(u64::from(u32::MAX)) as u32,
            seen_by,
        };
        let (verdict, by) = match verdict::first_step(cfg, hooks, &ev) {
            FirstStep::Decided(v, by) => (v, by),
            FirstStep::AskProgram(prog) => {
                match self
                    .hooks
                    .start(prog, cfg.hook_timeout, &ev, judged.clone())
                {
                    Ok(()) => return, // the hook's exit gives the verdict
                    Err(e) => {
                        tracing::warn!(job = job.job_id, hook = %prog.display(), error = %e, "disconnect hook failed to start; applying --on-disconnect");
                        (verdict::policy(cfg), VerdictBy::Policy)
                    }
                }
            }
        };
        self.canceller
            .carry_out(sb, workers, cfg.kill_grace, &judged, verdict, by);
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::rc::Rc;

    use super::testutil::{FakeWorkers, job, running};
    use super::*;
    use crate::config::JobSpec;
    use crate::hooks::Verdict;
    use crate::scoreboard::JobKind;

    fn cfg() -> Config {
        let mut c = Config::new(JobSpec::Handler {
            program: "/bin/cat".into(),
            args: vec![],
        });
        c.detector = DetectorKind::Procfs;
        c.listen = "127.0.0.1:1".parse().unwrap();
        c
    }

    fn board(n: usize) -> Scoreboard {
        let sb = Scoreboard::anonymous(n).unwrap();
        sb.set_listen("127.0.0.1:1".parse().unwrap());
        sb
    }

    #[test]
    fn a_reported_reset_is_cancelled_once() {
        let (cfg, sb) = (cfg(), board(2));
        let w = FakeWorkers::with(&[(1, 77)]);
        let j = running(&sb, 1, job(9, JobKind::Handler));
        sb.slot(1).report_hangup(Hangup::Reset);
        sb.note_hangup(1);
        let mut watch = Watch::new(&cfg, &sb).unwrap();
        watch.tick(&cfg, &Hooks::default(), &sb, &w, true);
        assert_eq!(
            sb.slot(1).cancel_requested(j.job_id).map(|r| r.reason),
            Some(CancelReason::ClientReset)
        );
        watch.tick(&cfg, &Hooks::default(), &sb, &w, true);
        assert_eq!(w.pokes(), vec![1], "a job is judged once");
        assert!(
            sb.header().verdicts().contains(&("policy", 0, 1)),
            "{:?}",
            sb.header().verdicts()
        );
    }

    /// Defect 7 of issue 11: out of descriptors, the check that the worker
    /// still holds the socket failed silently and the hang-up was lost.
    /// Now it is counted, no verdict is given while nobody can tell, and
    /// the next tick acts.
    #[test]
    fn a_hangup_seen_while_out_of_descriptors_is_counted_and_retried() {
        let (cfg, sb) = (cfg(), board(1));
        let w = FakeWorkers::with(&[(0, 77)]);
        let j = running(&sb, 0, job(9, JobKind::Handler));
        sb.slot(0).report_hangup(Hangup::Reset);
        sb.note_hangup(0);
        let mut watch = Watch::new(&cfg, &sb).unwrap();
        w.holds_fails.set(true);
        watch.tick(&cfg, &Hooks::default(), &sb, &w, true);
        watch.tick(&cfg, &Hooks::default(), &sb, &w, true);
        assert_eq!(sb.slot(0).cancel_requested(j.job_id), None);
        assert_eq!(sb.header().get(Counter::DetectFailures), 2);
        assert!(watch.holds_fault.active());
        w.holds_fails.set(false);
        watch.tick(&cfg, &Hooks::default(), &sb, &w, true);
        assert_eq!(
            sb.slot(0).cancel_requested(j.job_id).map(|r| r.reason),
            Some(CancelReason::ClientReset)
        );
        assert!(!watch.holds_fault.active());
    }

    #[test]
    fn a_keep_callback_keeps_the_job_and_is_asked_once() {
        let (cfg, sb) = (cfg(), board(1));
        let w = FakeWorkers::with(&[(0, 77)]);
        let j = running(&sb, 0, job(3, JobKind::Handler));
        sb.slot(0).report_hangup(Hangup::Fin);
        sb.note_hangup(0);
        let asked = Rc::new(Cell::new(0));
        let mut hooks = Hooks::default();
        let a = asked.clone();
        hooks.on_disconnect.push(Box::new(move |ev| {
            assert_eq!(ev.reason, DisconnectReason::ClientClosed);
            a.set(a.get() + 1);
            Verdict::Keep
        }));
        let mut watch = Watch::new(&cfg, &sb).unwrap();
        watch.tick(&cfg, &hooks, &sb, &w, true);
        watch.tick(&cfg, &hooks, &sb, &w, true);
        assert_eq!(asked.get(), 1);
        assert_eq!(sb.slot(0).cancel_requested(j.job_id), None);
        assert!(w.pokes().is_empty());
        // Counted once, as kept by the callback.
        assert!(
            sb.header().verdicts().contains(&("callback", 1, 0)),
            "{:?}",
            sb.header().verdicts()
        );
    }

    #[test]
    fn a_fin_under_on_fin_keep_is_no_disconnect() {
        let (mut cfg, sb) = (cfg(), board(1));
        cfg.on_fin = FinPolicy::Keep;
        let w = FakeWorkers::with(&[(0, 77)]);
        let j = running(&sb, 0, job(3, JobKind::Handler));
        sb.slot(0).report_hangup(Hangup::Fin);
        sb.note_hangup(0);
        let mut watch = Watch::new(&cfg, &sb).unwrap();
        watch.tick(&cfg, &Hooks::default(), &sb, &w, true);
        assert_eq!(sb.slot(0).cancel_requested(j.job_id), None);
    }

    /// Regression guard: `--job-timeout` is applied by the watch, whichever
    /// process runs it (it was ignored with `--prefork 0`).
    #[test]
    fn a_job_past_its_timeout_is_cancelled_for_timeout() {
        let (mut cfg, sb) = (cfg(), board(2));
        cfg.job_timeout = Some(Duration::from_secs(5));
        let w = FakeWorkers::with(&[(0, 70), (1, 71)]);
        let mut old = job(4, JobKind::Handler);
        old.start_mono_ns = sys::monotonic_ns().saturating_sub(6_000_000_000);
        let old = running(&sb, 0, old);
        let young = running(&sb, 1, job(5, JobKind::Handler));
        let mut watch = Watch::new(&cfg, &sb).unwrap();
        watch.next = Instant::now(); // the periodic part is due
        // Both jobs are watched by their (fake) workers: no backstop scan,
        // which would find their made-up sockets absent.
        watch.next_backstop = Instant::now() + Duration::from_secs(3600);
        watch.tick(&cfg, &Hooks::default(), &sb, &w, false);
        assert_eq!(
            sb.slot(0).cancel_requested(old.job_id).map(|r| r.reason),
            Some(CancelReason::Timeout)
        );
        assert_eq!(sb.slot(1).cancel_requested(young.job_id), None);
    }

    #[test]
    fn an_unwatched_job_whose_socket_is_in_no_table_is_a_reset() {
        let (cfg, sb) = (cfg(), board(1));
        let w = FakeWorkers::with(&[(0, 77)]);
        let mut j = job(6, JobKind::Closure);
        j.start_mono_ns = sys::monotonic_ns().saturating_sub(1_000_000_000);
        sb.slot(0).begin_job(&j, false);
        let mut watch = Watch::new(&cfg, &sb).unwrap();
        watch.next = Instant::now();
        watch.tick(&cfg, &Hooks::default(), &sb, &w, false);
        assert_eq!(
            sb.slot(0).cancel_requested(j.job_id).map(|r| r.reason),
            Some(CancelReason::ClientReset)
        );
    }

    #[test]
    fn a_slot_without_a_worker_of_ours_is_never_judged() {
        let (cfg, sb) = (cfg(), board(1));
        let w = FakeWorkers::with(&[]);
        let j = running(&sb, 0, job(3, JobKind::Handler));
        sb.slot(0).report_hangup(Hangup::Reset);
        sb.note_hangup(0);
        let mut watch = Watch::new(&cfg, &sb).unwrap();
        watch.next = Instant::now();
        watch.tick(&cfg, &Hooks::default(), &sb, &w, true);
        assert_eq!(sb.slot(0).cancel_requested(j.job_id), None);
    }
}
