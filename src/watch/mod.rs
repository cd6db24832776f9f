//! SUPERVISOR ONLY: the disconnect watch.
//!
//! Every `--check-interval`, and at once when a worker reports that its
//! client hung up, the watch lists the listener's TCP sockets (sock_diag or
//! procfs), diffs them against the jobs in the scoreboard
//! ([`crate::detect::diff`]), confirms each candidate (an exact lookup or a
//! second read, the slot's job id and phase, and the worker's
//! `/proc/<pid>/fd`), asks the hooks, and cancels. A job is judged once:
//! a verdict is never asked for again on the next tick.
//!
//! Cancelling never signals a pid read from the scoreboard: the watch writes
//! the job id to cancel into the slot and pokes the worker through its pidfd;
//! the worker, which is the handler's parent, kills the job's group only if
//! the id is still its current job. A closure job cannot be interrupted
//! inside its worker, so after `--kill-grace` the watch names the job in
//! the slot's `kill_req` and pokes the worker, whose signal handler kills
//! the worker only if it still runs that very job.

mod cancel;
mod verdict;

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use nix::unistd::Pid;

use crate::config::{Config, DetectorKind, FinPolicy};
use crate::detect::procfs::ProcNet;
use crate::detect::sockdiag::SockDiag;
use crate::detect::{
    DetectError, Gone, JOB_SOCKET_STATES, RunningJob, SockEntry, SocketSource, diff, tcp_state,
};
use crate::hooks::{DisconnectEvent, DisconnectReason, Hooks};
use crate::scoreboard::{JobView, Scoreboard, job_phase, now_unix_ms};
use crate::sys::{self, PidFd};

use cancel::PendingKill;
use verdict::PendingHook;

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

/// A disconnect judged, waiting for its verdict.
struct Judged {
    slot: usize,
    pid: Pid,
    job: JobView,
    reason: DisconnectReason,
    seen_after_ms: f64,
    seen_by: &'static str,
    ran_ms: u64,
}

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
    pending_kills: Vec<PendingKill>,
    /// `--disconnect-hook` programs running, one per judged job.
    pending_hooks: Vec<PendingHook>,
    last_error_log: Option<Instant>,
}

/// Whether `/proc/<pid>/fd` holds `socket:[inode]`. An unreadable
/// directory (EACCES) does not count against the candidate.
fn worker_holds(pid: Pid, inode: u64) -> bool {
    let dir = format!("/proc/{}/fd", pid.as_raw());
    let want = format!("socket:[{inode}]");
    match std::fs::read_dir(&dir) {
        Ok(rd) => rd
            .flatten()
            .any(|e| std::fs::read_link(e.path()).is_ok_and(|l| l.as_os_str() == want.as_str())),
        Err(e) => e.kind() == std::io::ErrorKind::PermissionDenied,
    }
}

fn event(slot: usize, pid: Pid, job: &JobView, reason: DisconnectReason) -> DisconnectEvent {
    let peer = job.peer.unwrap_or_else(|| ([0, 0, 0, 0], 0).into());
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
        job_start_unix_ms: job.start_unix_ms,
        detected_unix_ms: now_unix_ms(),
    }
}

impl Watch {
    pub(crate) fn new(cfg: &Config, sb: &Scoreboard) -> std::io::Result<Option<Watch>> {
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
        Ok(Some(Watch {
            backend,
            port,
            interval: cfg.check_interval,
            next: now + cfg.check_interval,
            last_scan: now,
            next_backstop: now,
            seen: Vec::with_capacity(256),
            judged: HashSet::new(),
            pending_kills: Vec::new(),
            pending_hooks: Vec::new(),
            last_error_log: None,
        }))
    }

    pub(crate) fn next_due(&self) -> Instant {
        let hooks = self.pending_hooks.iter().map(|h| {
            if h.status.is_some() {
                Instant::now()
            } else {
                h.deadline
            }
        });
        self.pending_kills
            .iter()
            .map(|k| k.at)
            .chain(hooks)
            .fold(self.next, Instant::min)
    }

    pub(crate) fn forget_slot(&mut self, slot: usize) {
        self.pending_kills.retain(|k| k.slot != slot);
    }

    fn log_error(&mut self, e: &DetectError) {
        let now = Instant::now();
        if self
            .last_error_log
            .is_none_or(|t| now.duration_since(t) > Duration::from_secs(60))
        {
            self.last_error_log = Some(now);
            tracing::warn!(error = %e, "disconnect scan failed");
        }
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
    fn reported(
        &mut self,
        sb: &Scoreboard,
        workers: &[Option<(Pid, &PidFd)>],
        fin_counts: bool,
    ) -> Vec<Gone> {
        let mut out = Vec::new();
        for (i, s) in sb.slots() {
            if workers.get(i).and_then(|w| w.as_ref()).is_none()
                || s.hangup_mono_ns.load(Ordering::Acquire) == 0
            {
                continue;
            }
            let Some(job) = s.job() else { continue };
            if self.judged.contains(&job.job_id)
                || s.job_phase.load(Ordering::Acquire) != job_phase::RUNNING
            {
                continue;
            }
            let kind = s.hangup_kind.load(Ordering::Relaxed);
            let reason = match &mut self.backend {
                Backend::Diag(d) => match (job.local, job.peer) {
                    (Some(l), Some(p)) => match d.lookup(job.cookie, l, p) {
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
                    2 => Some(DisconnectReason::ClientReset),
                    1 if fin_counts => Some(DisconnectReason::ClientClosed),
                    _ => None,
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

    pub(crate) fn tick(
        &mut self,
        cfg: &Config,
        hooks: &Hooks,
        sb: &Scoreboard,
        workers: &[Option<(Pid, &PidFd)>],
        woken: bool,
    ) {
        let now = Instant::now();
        self.kill_overdue_closures(sb, workers, now);
        self.resolve_hooks(cfg, sb, workers, now);
        let fin_counts = cfg.on_fin == FinPolicy::Cancel;
        if woken {
            let prev = self.last_scan;
            for g in self.reported(sb, workers, fin_counts) {
                self.judge(cfg, hooks, sb, workers, g, prev);
            }
        }
        if now < self.next {
            return;
        }
        self.next = now + self.interval;
        let scan_start = sys::monotonic_ns();
        let mut jobs = Vec::new();
        let mut overdue = Vec::new();
        for (i, s) in sb.slots() {
            if workers.get(i).and_then(|w| w.as_ref()).is_none() {
                continue;
            }
            if let Some(v) = s.job()
                && s.job_phase.load(Ordering::Acquire) == job_phase::RUNNING
                && !self.judged.contains(&v.job_id)
            {
                if cfg.job_timeout.is_some_and(|t| {
                    scan_start.saturating_sub(v.start_mono_ns) > t.as_nanos() as u64
                }) {
                    overdue.push((i, v));
                    continue;
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
        self.judged.retain(|id| {
            sb.slots()
                .any(|(_, s)| s.job_id.load(Ordering::Relaxed) == *id)
        });
        if jobs.is_empty() {
            return;
        }
        // A worker that watches its own client reports a hang-up at once;
        // its job needs the full scan only as a backstop, every
        // BACKSTOP_TICKS ticks. A job nobody watches (a closure, or
        // --worker-watch off) is scanned every tick.
        let unwatched = jobs
            .iter()
            .any(|j| sb.slot(j.slot).watching.load(Ordering::Acquire) == 0);
        if !unwatched && now < self.next_backstop {
            return;
        }
        self.next_backstop = now + self.interval * BACKSTOP_TICKS;
        let prev_scan = std::mem::replace(&mut self.last_scan, now);
        let mut seen = std::mem::take(&mut self.seen);
        seen.clear();
        let res = self
            .backend
            .source()
            .dump(self.port, JOB_SOCKET_STATES, &mut seen);
        if let Err(e) = res {
            self.seen = seen;
            self.log_error(&e);
            return;
        }
        let mut gone = diff(&jobs, &mut seen, scan_start, fin_counts);
        self.seen = seen;
        self.confirm_resets(sb, &mut gone);
        for g in gone {
            self.judge(cfg, hooks, sb, workers, g, prev_scan);
        }
    }

    /// Confirms one candidate, asks the hooks, and cancels or keeps.
    fn judge(
        &mut self,
        cfg: &Config,
        hooks: &Hooks,
        sb: &Scoreboard,
        workers: &[Option<(Pid, &PidFd)>],
        g: Gone,
        prev_scan: Instant,
    ) {
        let Some((pid, pidfd)) = workers.get(g.slot).and_then(|w| *w) else {
            return;
        };
        let board = sb.slot(g.slot);
        let Some(job) = board.job().filter(|v| v.job_id == g.job_id) else {
            return;
        };
        if self.judged.contains(&job.job_id)
            || board.job_phase.load(Ordering::Acquire) != job_phase::RUNNING
        {
            return; // judged already, or ending and closing its socket itself
        }
        if !worker_holds(pid, job.inode) {
            return; // the record is not this worker's socket any more
        }
        // Re-check after the confirmations: still the same job, running.
        if board.job() != Some(job) || board.job_phase.load(Ordering::Acquire) != job_phase::RUNNING
        {
            return;
        }
        self.judged.insert(job.job_id);
        let ev = event(g.slot, pid, &job, g.reason);
        let detected = sys::monotonic_ns();
        let hangup = board.hangup_mono_ns.load(Ordering::Acquire);
        let (seen_after_ms, seen_by) = if hangup != 0 && hangup <= detected {
            ((detected - hangup) as f64 / 1e6, "worker-watch")
        } else {
            (prev_scan.elapsed().as_secs_f64() * 1e3, "scan")
        };
        let ran_ms = detected.saturating_sub(job.start_mono_ns) / 1_000_000;
        let judged = Judged {
            slot: g.slot,
            pid,
            job,
            reason: g.reason,
            seen_after_ms,
            seen_by,
            ran_ms,
        };
        self.decide(cfg, hooks, sb, pidfd, judged, &ev);
    }
}
