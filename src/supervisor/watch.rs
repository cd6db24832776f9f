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

use std::collections::HashSet;
use std::io::Write;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;

use crate::config::{Config, DetectorKind, DisconnectPolicy, FinPolicy};
use crate::detect::procfs::ProcNet;
use crate::detect::sockdiag::SockDiag;
use crate::detect::{
    DetectError, Gone, JOB_SOCKET_STATES, RunningJob, SockEntry, SocketSource, diff, tcp_state,
};
use crate::hooks::{DisconnectEvent, DisconnectReason, Verdict};
use crate::job::reason;
use crate::scoreboard::{JobView, Scoreboard, job_kind, job_phase, now_unix_ms};
use crate::server::Hooks;
use crate::sys::{self, PidFd};

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

/// A `--disconnect-hook` program at work: the supervisor never waits for
/// it; its exit (reaped by the supervisor) or its deadline resolves it.
struct PendingHook {
    pid: Pid,
    deadline: Instant,
    killed: bool,
    status: Option<WaitStatus>,
    judged: Judged,
}

struct PendingKill {
    slot: usize,
    job_id: u64,
    at: Instant,
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

/// The verdict of the Rust callbacks (in order; the first `Keep` wins; a
/// panic counts as cancel), or None when none is registered.
fn callbacks_verdict(hooks: &Hooks, ev: &DisconnectEvent) -> Option<Verdict> {
    if hooks.on_disconnect.is_empty() {
        return None;
    }
    for (i, h) in hooks.on_disconnect.iter().enumerate() {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| h(ev))) {
            Ok(Verdict::Keep) => return Some(Verdict::Keep),
            Ok(Verdict::Cancel) => {}
            Err(_) => {
                tracing::error!(
                    job = ev.job_id,
                    hook = i,
                    "on_client_disconnect callback panicked; treating it as cancel"
                );
            }
        }
    }
    Some(Verdict::Cancel)
}

/// `--on-disconnect`: what happens when no hook decides.
fn policy(cfg: &Config) -> Verdict {
    match cfg.on_disconnect {
        DisconnectPolicy::Cancel => Verdict::Cancel,
        DisconnectPolicy::Log => Verdict::Keep,
    }
}

/// The verdict of a `--disconnect-hook` program from its exit: 0 cancels,
/// 3 keeps, anything else (another code, a signal, a timeout) leaves it to
/// the policy.
fn hook_verdict(status: Option<&WaitStatus>) -> Option<Verdict> {
    match status {
        Some(WaitStatus::Exited(_, 0)) => Some(Verdict::Cancel),
        Some(WaitStatus::Exited(_, 3)) => Some(Verdict::Keep),
        _ => None,
    }
}

/// Starts the `--disconnect-hook` program with the event as one JSON line
/// on its stdin: an empty signal mask, its own process group, stdout on
/// /dev/null, stderr shared. Returns its pid; the caller waits for it
/// without blocking.
fn spawn_hook(prog: &std::path::Path, ev: &DisconnectEvent) -> std::io::Result<Pid> {
    use nix::spawn::PosixSpawnFileActions;
    use std::os::fd::AsRawFd;
    use std::os::unix::ffi::OsStrExt;
    let json = serde_json::to_string(ev).map_err(std::io::Error::other)? + "\n";
    let (rd, wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let attr = crate::job::spawn_attr()?;
    let mut fa = PosixSpawnFileActions::init()?;
    fa.add_dup2(rd.as_raw_fd(), 0)?;
    fa.add_open(
        1,
        c"/dev/null",
        nix::fcntl::OFlag::O_WRONLY,
        nix::sys::stat::Mode::empty(),
    )?;
    let path =
        std::ffi::CString::new(prog.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    let env = crate::job::environ(&[]);
    let pid = nix::spawn::posix_spawn(
        path.as_c_str(),
        &fa,
        &attr,
        std::slice::from_ref(&path),
        &env,
    )?;
    drop(rd);
    // The event is far smaller than a pipe's buffer: this write never
    // blocks. A hook that does not read its stdin is not an error.
    let mut wr = std::fs::File::from(wr);
    let _ = wr.write_all(json.as_bytes());
    Ok(pid)
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

    /// Cancels a job that ran past `--job-timeout` (no hooks are asked).
    fn time_out(
        &mut self,
        cfg: &Config,
        sb: &Scoreboard,
        workers: &[Option<(Pid, &PidFd)>],
        slot: usize,
        job: JobView,
    ) {
        let Some((pid, pidfd)) = workers.get(slot).and_then(|w| *w) else {
            return;
        };
        self.judged.insert(job.job_id);
        if self.cancel(sb, slot, &job, reason::TIMEOUT, pidfd, cfg.kill_grace) {
            sb.header()
                .cancelled_timeout
                .fetch_add(1, Ordering::Relaxed);
            let ran_ms = sys::monotonic_ns().saturating_sub(job.start_mono_ns) / 1_000_000;
            let peer = job.peer.map(|p| p.to_string()).unwrap_or_default();
            tracing::info!(slot, pid = pid.as_raw(), job = job.job_id, peer = %peer, reason = %"timeout", ran_ms, "job cancelled");
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
        if let Some(v) = callbacks_verdict(hooks, &ev) {
            self.act(cfg, sb, pidfd, &judged, v, "callback");
            return;
        }
        if let Some(prog) = &cfg.disconnect_hook {
            match spawn_hook(prog, &ev) {
                Ok(hook) => {
                    self.pending_hooks.push(PendingHook {
                        pid: hook,
                        deadline: Instant::now() + cfg.hook_timeout,
                        killed: false,
                        status: None,
                        judged,
                    });
                    return;
                }
                Err(e) => {
                    tracing::warn!(job = job.job_id, hook = %prog.display(), error = %e, "disconnect hook failed to start; applying --on-disconnect");
                }
            }
        }
        self.act(cfg, sb, pidfd, &judged, policy(cfg), "policy");
    }

    /// Whether `pid` is a hook program of ours (the supervisor reaps it and
    /// hands its status over with [`Watch::hook_exited`]).
    pub(crate) fn owns(&self, pid: Pid) -> bool {
        self.pending_hooks.iter().any(|h| h.pid == pid)
    }

    /// A hook program was reaped.
    pub(crate) fn hook_exited(&mut self, pid: Pid, status: WaitStatus) {
        if let Some(h) = self.pending_hooks.iter_mut().find(|h| h.pid == pid) {
            h.status = Some(status);
        }
    }

    /// Kills the hook programs still running (the supervisor is stopping).
    pub(crate) fn kill_hooks(&mut self) {
        for h in &self.pending_hooks {
            if h.status.is_none() {
                // Our own child, not reaped yet: its pid is still its own.
                let _ = nix::sys::signal::kill(h.pid, Signal::SIGKILL);
            }
        }
    }

    /// Applies the verdicts of hook programs that exited; kills those past
    /// their deadline (their exit then leaves the verdict to the policy).
    fn resolve_hooks(
        &mut self,
        cfg: &Config,
        sb: &Scoreboard,
        workers: &[Option<(Pid, &PidFd)>],
        now: Instant,
    ) {
        let mut done = Vec::new();
        for (i, h) in self.pending_hooks.iter_mut().enumerate() {
            if h.status.is_some() {
                done.push(i);
            } else if now >= h.deadline && !h.killed {
                tracing::warn!(
                    job = h.judged.job.job_id,
                    timeout_ms = cfg.hook_timeout.as_millis() as u64,
                    "disconnect hook gave no answer in time; killing it"
                );
                // Our own child, not reaped yet: its pid is still its own.
                let _ = nix::sys::signal::kill(h.pid, Signal::SIGKILL);
                h.killed = true;
            }
        }
        for i in done.into_iter().rev() {
            let h = self.pending_hooks.swap_remove(i);
            let verdict = match hook_verdict(h.status.as_ref()) {
                Some(v) => (v, "hook-program"),
                None => {
                    if !h.killed {
                        tracing::warn!(job = h.judged.job.job_id, status = ?h.status, "disconnect hook gave no verdict; applying --on-disconnect");
                    }
                    (policy(cfg), "policy")
                }
            };
            // The same worker must still run the same job.
            let Some((pid, pidfd)) = workers.get(h.judged.slot).and_then(|w| *w) else {
                continue;
            };
            if pid != h.judged.pid || sb.slot(h.judged.slot).job() != Some(h.judged.job) {
                continue;
            }
            self.act(cfg, sb, pidfd, &h.judged, verdict.0, verdict.1);
        }
    }

    /// Carries out a verdict: cancels (and logs `job cancelled`) or logs
    /// that the job is kept.
    fn act(
        &mut self,
        cfg: &Config,
        sb: &Scoreboard,
        pidfd: &PidFd,
        j: &Judged,
        verdict: Verdict,
        by: &'static str,
    ) {
        let peer = j.job.peer.map(|p| p.to_string()).unwrap_or_default();
        match verdict {
            Verdict::Keep => {
                tracing::info!(slot = j.slot, pid = j.pid.as_raw(), job = j.job.job_id, peer = %peer, reason = %j.reason.as_str(), verdict_by = by, "client disconnected; job kept");
            }
            Verdict::Cancel => {
                let code = match j.reason {
                    DisconnectReason::ClientClosed => reason::CLIENT_CLOSED,
                    DisconnectReason::ClientReset => reason::CLIENT_RESET,
                };
                if self.cancel(sb, j.slot, &j.job, code, pidfd, cfg.kill_grace) {
                    sb.header()
                        .cancelled_disconnect
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::info!(
                        slot = j.slot,
                        pid = j.pid.as_raw(),
                        job = j.job.job_id,
                        peer = %peer,
                        reason = %j.reason.as_str(),
                        ran_ms = j.ran_ms,
                        seen_after_ms = format_args!("{:.1}", j.seen_after_ms),
                        seen_by = j.seen_by,
                        verdict_by = by,
                        "job cancelled"
                    );
                }
            }
        }
    }

    /// Asks the worker to cancel `job`, after checking that its slot still
    /// runs that very job on that very socket.
    fn cancel(
        &mut self,
        sb: &Scoreboard,
        slot: usize,
        job: &JobView,
        code: u32,
        pidfd: &PidFd,
        kill_grace: Duration,
    ) -> bool {
        let board = sb.slot(slot);
        match board.job() {
            Some(v) if v.job_id == job.job_id && v.cookie == job.cookie => {}
            _ => return false,
        }
        board.cancel_reason.store(code, Ordering::Relaxed);
        board.cancel_req.store(job.job_id, Ordering::Release);
        if let Err(e) = pidfd.signal(Signal::SIGUSR2) {
            tracing::warn!(slot, job = job.job_id, error = %e, "failed to poke the worker to cancel its job");
            return false;
        }
        if job.kind == job_kind::CLOSURE {
            self.pending_kills.push(PendingKill {
                slot,
                job_id: job.job_id,
                at: Instant::now() + kill_grace,
            });
        }
        true
    }

    /// Closure jobs asked to cancel that are still running after the kill
    /// grace: their worker is killed (and replaced).
    fn kill_overdue_closures(
        &mut self,
        sb: &Scoreboard,
        workers: &[Option<(Pid, &PidFd)>],
        now: Instant,
    ) {
        self.pending_kills.retain(|k| {
            if k.at > now {
                return true;
            }
            let board = sb.slot(k.slot);
            let still = board.job().is_some_and(|v| v.job_id == k.job_id);
            if still && let Some(Some((pid, fd))) = workers.get(k.slot) {
                tracing::warn!(
                    slot = k.slot,
                    pid = pid.as_raw(),
                    job = k.job_id,
                    "closure job ignored its cancellation; killing its worker"
                );
                // The worker kills itself only if it still runs this very
                // job when the signal lands (see sys::arm_self_kill).
                board.kill_req.store(k.job_id, Ordering::Release);
                let _ = fd.signal(Signal::SIGUSR2);
            }
            false
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::JobSpec;

    fn ev() -> DisconnectEvent {
        DisconnectEvent {
            slot: 0,
            pid: 1,
            job_id: 7,
            proto: "TCP",
            local_host: "127.0.0.1".into(),
            local_port: 7000,
            foreign_host: "127.0.0.1".into(),
            foreign_port: 40000,
            reason: DisconnectReason::ClientClosed,
            job_start_unix_ms: 0,
            detected_unix_ms: 0,
        }
    }

    fn cfg() -> Config {
        Config::new(JobSpec::Handler {
            program: "/bin/cat".into(),
            args: vec![],
        })
    }

    #[test]
    fn no_hook_follows_the_policy() {
        let mut c = cfg();
        assert_eq!(callbacks_verdict(&Hooks::default(), &ev()), None);
        assert_eq!(policy(&c), Verdict::Cancel);
        c.on_disconnect = DisconnectPolicy::Log;
        assert_eq!(policy(&c), Verdict::Keep);
    }

    #[test]
    fn hook_program_exit_codes() {
        let p = Pid::from_raw(1);
        assert_eq!(
            hook_verdict(Some(&WaitStatus::Exited(p, 0))),
            Some(Verdict::Cancel)
        );
        assert_eq!(
            hook_verdict(Some(&WaitStatus::Exited(p, 3))),
            Some(Verdict::Keep)
        );
        assert_eq!(hook_verdict(Some(&WaitStatus::Exited(p, 1))), None);
        assert_eq!(
            hook_verdict(Some(&WaitStatus::Signaled(p, Signal::SIGKILL, false))),
            None
        );
        assert_eq!(hook_verdict(None), None);
    }

    #[test]
    fn callbacks_run_in_order_and_the_first_keep_wins() {
        let calls = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
        let mut h = Hooks::default();
        for (i, v) in [
            (1, Verdict::Cancel),
            (2, Verdict::Keep),
            (3, Verdict::Cancel),
        ] {
            let calls = calls.clone();
            h.on_disconnect.push(Box::new(move |_| {
                calls.borrow_mut().push(i);
                v
            }));
        }
        assert_eq!(callbacks_verdict(&h, &ev()), Some(Verdict::Keep));
        assert_eq!(*calls.borrow(), vec![1, 2]);
    }

    /// Regression guard: a panicking callback must not take the supervisor
    /// down; it counts as cancel, and the next callbacks still run.
    #[test]
    fn panicking_callback_counts_as_cancel() {
        let mut h = Hooks::default();
        h.on_disconnect.push(Box::new(|_| panic!("hook bug")));
        assert_eq!(callbacks_verdict(&h, &ev()), Some(Verdict::Cancel));
        h.on_disconnect.push(Box::new(|_| Verdict::Keep));
        assert_eq!(callbacks_verdict(&h, &ev()), Some(Verdict::Keep));
    }
}
