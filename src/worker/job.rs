//! Running one job: the handler program (exec, environment, fds, process
//! group) or the Rust closure, and watching its client while it runs.
//!
//! Runs in a worker (or in the single process with `--prefork 0`). It kills
//! only its own job's process group, and only while the handler is an
//! unreaped child of this process, so that the group id cannot have been
//! recycled.

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::sys::signalfd::SignalFd;
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::config::{Config, FinPolicy, JobSpec};
use crate::hooks::JobContext;
use crate::scoreboard::{JobView, Scoreboard, Slot, job_kind};
use crate::spawn::Spawner;
use crate::sys;

/// How a job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Ran to its end with success.
    Done,
    /// Could not start, exited non-zero, or died of a signal it was not sent.
    Failed,
    /// Cancelled (client gone, timeout or shutdown).
    Cancelled,
}

impl Outcome {
    /// Log name.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Done => "done",
            Outcome::Failed => "failed",
            Outcome::Cancelled => "cancelled",
        }
    }
}

/// Cancel reasons as stored in a slot's `cancel_reason`.
pub mod reason {
    /// Client closed (FIN).
    pub const CLIENT_CLOSED: u32 = 1;
    /// Client reset or socket vanished.
    pub const CLIENT_RESET: u32 = 2;
    /// Job timeout.
    pub const TIMEOUT: u32 = 3;
    /// Shutdown (SIGINT or grace expired).
    pub const SHUTDOWN: u32 = 4;

    /// Log name of a reason code.
    pub fn name(code: u32) -> &'static str {
        match code {
            CLIENT_CLOSED => "client-closed",
            CLIENT_RESET => "client-reset",
            TIMEOUT => "timeout",
            SHUTDOWN => "shutdown",
            _ => "unknown",
        }
    }
}

/// What the worker should do after a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AfterJob {
    /// SIGTERM arrived: exit once idle.
    pub retire: bool,
    /// SIGINT arrived: exit now.
    pub exit_now: bool,
}

/// The environment of one worker, shared by its jobs.
pub struct Runner<'a> {
    /// Configuration.
    pub cfg: &'a Config,
    /// Scoreboard.
    pub sb: &'a Scoreboard,
    /// Our slot index.
    pub slot: usize,
    /// The worker's signalfd (SIGTERM, SIGINT, SIGUSR2, SIGCHLD).
    pub sigfd: &'a SignalFd,
    /// Wakes the supervisor (the worker watch); None in `--prefork 0`.
    pub wake: Option<&'a nix::sys::eventfd::EventFd>,
    /// Prepared handler spawning (None for closure jobs).
    pub spawner: Option<&'a Spawner>,
}

fn describe(status: &WaitStatus) -> String {
    match status {
        WaitStatus::Exited(_, c) => format!("exit {c}"),
        WaitStatus::Signaled(_, sig, _) => format!("signal {}", sig.as_str()),
        other => format!("{other:?}"),
    }
}

/// Reaps the handler (blocking: it has exited, as `waitid` said).
fn reap(child: Pid) -> nix::Result<WaitStatus> {
    loop {
        match nix::sys::wait::waitpid(child, None) {
            Err(nix::errno::Errno::EINTR) => continue,
            other => return other,
        }
    }
}

/// Whether the client is already gone (checked right after accept).
fn client_gone(conn: &TcpStream, on_fin: FinPolicy) -> bool {
    let mut fds = [sys::Polled::new(conn.as_fd(), libc::POLLRDHUP)];
    if sys::poll(&mut fds, Some(Duration::ZERO)).is_err() {
        return false;
    }
    let ev = fds[0].revents;
    let hard = ev & (libc::POLLHUP | libc::POLLERR) != 0;
    let fin = ev & libc::POLLRDHUP != 0;
    hard || (fin && on_fin == FinPolicy::Cancel)
}

impl Runner<'_> {
    fn board(&self) -> &Slot {
        self.sb.slot(self.slot)
    }

    /// Serves one accepted client (`peer` as accept returned it; `local`
    /// the listener's address when it is not a wildcard). Returns what the
    /// worker must do next.
    pub fn serve(&self, conn: TcpStream, peer: SocketAddr, local: Option<SocketAddr>) -> AfterJob {
        let pid = std::process::id();
        let slot = self.slot;
        let local = match local {
            Some(l) => Ok(l),
            None => conn.local_addr(),
        };
        let (peer, local) = match local {
            Ok(l) => (peer, l),
            _ => {
                // ENOTCONN: reset before we could ask.
                self.sb
                    .header()
                    .gone_before_start
                    .fetch_add(1, Ordering::Relaxed);
                tracing::info!(slot, pid, "client gone before job start");
                return AfterJob::default();
            }
        };

        if client_gone(&conn, self.cfg.on_fin) {
            self.sb
                .header()
                .gone_before_start
                .fetch_add(1, Ordering::Relaxed);
            tracing::info!(slot, pid, peer = %peer, "client gone before job start");
            return AfterJob::default();
        }
        let cookie = sys::socket_cookie(conn.as_fd()).unwrap_or(0);
        let inode = nix::sys::stat::fstat(conn.as_fd())
            .map(|s| s.st_ino)
            .unwrap_or(0);
        let job_id = self.sb.next_job_id();
        let mut view = JobView {
            job_id,
            kind: job_kind::HANDLER,
            pgid: 0,
            cookie,
            inode,
            peer: Some(peer),
            local: Some(local),
            start_unix_ms: crate::scoreboard::now_unix_ms(),
            start_mono_ns: sys::monotonic_ns(),
        };
        let started = Instant::now();
        let (outcome, status, reason, after) = match &self.cfg.job {
            JobSpec::Handler { program, .. } => {
                match self
                    .spawner
                    .ok_or_else(|| io::Error::other("no handler program"))
                    .and_then(|sp| sp.spawn_job(conn.as_fd(), job_id, slot, peer, local))
                {
                    Ok(child) => {
                        view.pgid = child.as_raw();
                        self.board()
                            .watching
                            .store(u8::from(self.cfg.worker_watch), Ordering::Relaxed);
                        self.board().begin_job(&view);
                        tracing::info!(slot, pid, job = job_id, peer = %peer, handler_pid = child.as_raw(), "job started");
                        self.wait_handler(child, &conn, job_id, peer, started)
                    }
                    Err(e) => {
                        tracing::error!(slot, pid, job = job_id, peer = %peer, program = %program.display(), error = %e, "failed to start handler");
                        (
                            Outcome::Failed,
                            format!("exec error: {e}"),
                            0,
                            AfterJob::default(),
                        )
                    }
                }
            }
            JobSpec::Closure(f) => {
                view.kind = job_kind::CLOSURE;
                self.board().begin_job(&view);
                tracing::info!(slot, pid, job = job_id, peer = %peer, "job started");
                let ctx = JobContext {
                    job_id,
                    slot,
                    peer,
                    local,
                    board_slot: self.board(),
                };
                let stream = match conn.try_clone() {
                    Ok(s) => s,
                    Err(e) => {
                        self.board().job_ending();
                        self.board().end_job();
                        tracing::error!(slot, pid, job = job_id, error = %e, "failed to duplicate the client socket");
                        return AfterJob::default();
                    }
                };
                let guard = match sys::arm_self_kill(self.board()) {
                    Ok(g) => Some(g),
                    Err(e) => {
                        tracing::warn!(slot, error = %e, "failed to arm the closure kill switch");
                        None
                    }
                };
                // A panicking job fails; its worker goes on serving (the
                // panic message is on stderr, from the panic hook).
                let res =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(stream, &ctx)));
                drop(guard);
                let req = self.board().cancel_req.load(Ordering::Acquire) == job_id;
                let (outcome, status) = match (&res, req) {
                    (_, true) => (Outcome::Cancelled, "returned".to_string()),
                    (Ok(Ok(())), _) => (Outcome::Done, "ok".to_string()),
                    (Ok(Err(e)), _) => (Outcome::Failed, format!("error: {e}")),
                    (Err(_), _) => (Outcome::Failed, "panicked".to_string()),
                };
                let r = if req {
                    self.board().cancel_reason.load(Ordering::Relaxed)
                } else {
                    0
                };
                (outcome, status, r, self.drain_signals_after_closure())
            }
        };
        self.board().job_ending();
        drop(conn);
        self.board().end_job();
        let h = self.sb.header();
        h.jobs_served.fetch_add(1, Ordering::Relaxed);
        if outcome == Outcome::Failed {
            h.jobs_failed.fetch_add(1, Ordering::Relaxed);
        }
        if outcome == Outcome::Cancelled && reason == reason::SHUTDOWN {
            h.cancelled_shutdown.fetch_add(1, Ordering::Relaxed);
        }
        let duration_ms = started.elapsed().as_millis() as u64;
        let outcome_name = match (outcome, reason) {
            (Outcome::Cancelled, reason::TIMEOUT) => "timeout",
            (o, _) => o.as_str(),
        };
        crate::logfiles::access(&crate::logfiles::AccessRecord {
            job_id,
            slot,
            pid,
            peer: &peer.to_string(),
            duration_ms,
            outcome: outcome_name,
            status: &status,
        });
        if outcome == Outcome::Cancelled {
            tracing::info!(slot, pid, job = job_id, peer = %peer, duration_ms, status = ?status, outcome = %outcome_name, reason = %reason::name(reason), "job ended");
        } else {
            tracing::info!(slot, pid, job = job_id, peer = %peer, duration_ms, status = ?status, outcome = %outcome.as_str(), "job ended");
        }
        after
    }

    /// Waits for the handler, watching the client and the worker's signals.
    /// Returns (outcome, status, cancel reason, after).
    fn wait_handler(
        &self,
        child: Pid,
        conn: &TcpStream,
        job_id: u64,
        peer: SocketAddr,
        started: Instant,
    ) -> (Outcome, String, u32, AfterJob) {
        let pgid = child;
        let mut after = AfterJob::default();
        let mut watch = self.cfg.worker_watch;
        let mut watch_events: i16 = if self.cfg.on_fin == FinPolicy::Cancel {
            libc::POLLRDHUP
        } else {
            0
        };
        let mut cancel: u32 = 0;
        let mut kill_at: Option<Instant> = None;
        loop {
            let timeout = kill_at.map(|t| t.saturating_duration_since(Instant::now()));
            let (sig_ready, conn_ev) = {
                let mut fds = [
                    sys::Polled::new(self.sigfd.as_fd(), libc::POLLIN),
                    sys::Polled::new(conn.as_fd(), watch_events),
                ];
                let n = if watch { 2 } else { 1 };
                match sys::poll(&mut fds[..n], timeout) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        tracing::error!(slot = self.slot, error = %e, "poll failed in worker")
                    }
                }
                (fds[0].revents != 0, if watch { fds[1].revents } else { 0 })
            };
            if conn_ev != 0 {
                let hard = conn_ev & (libc::POLLHUP | libc::POLLERR) != 0;
                if hard || (conn_ev & libc::POLLRDHUP != 0 && self.cfg.on_fin == FinPolicy::Cancel)
                {
                    let b = self.board();
                    b.hangup_kind
                        .store(if hard { 2 } else { 1 }, Ordering::Relaxed);
                    b.hangup_mono_ns
                        .store(sys::monotonic_ns(), Ordering::Release);
                    match self.wake {
                        Some(w) => {
                            let _ = w.write(1);
                        }
                        None if cancel == 0 => {
                            // `--prefork 0`: no supervisor; the one process
                            // cancels its own job on what it saw.
                            cancel = if hard {
                                reason::CLIENT_RESET
                            } else {
                                reason::CLIENT_CLOSED
                            };
                            self.sb
                                .header()
                                .cancelled_disconnect
                                .fetch_add(1, Ordering::Relaxed);
                            let ran_ms = started.elapsed().as_millis() as u64;
                            tracing::info!(slot = self.slot, pid = std::process::id(), job = job_id, peer = %peer, reason = %reason::name(cancel), ran_ms, seen_after_ms = 0, seen_by = "worker-watch", "job cancelled");
                            let _ = sys::kill_group(pgid, Signal::SIGTERM);
                            kill_at = Some(Instant::now() + self.cfg.kill_grace);
                        }
                        None => {}
                    }
                    tracing::debug!(
                        slot = self.slot,
                        job = job_id,
                        hard,
                        "worker saw its client hang up"
                    );
                    watch = false;
                    b.watching.store(0, Ordering::Release);
                } else {
                    // A FIN under --on-fin keep: from now on only a reset counts.
                    watch_events = 0;
                }
            }
            if sig_ready {
                while let Ok(Some(info)) = self.sigfd.read_signal() {
                    match Signal::try_from(info.ssi_signo as i32) {
                        Ok(Signal::SIGUSR2) => {
                            let b = self.board();
                            if b.cancel_req.load(Ordering::Acquire) == job_id && cancel == 0 {
                                cancel = b.cancel_reason.load(Ordering::Relaxed).max(1);
                                let _ = sys::kill_group(pgid, Signal::SIGTERM);
                                kill_at = Some(Instant::now() + self.cfg.kill_grace);
                            }
                        }
                        Ok(Signal::SIGTERM) => after.retire = true,
                        Ok(Signal::SIGUSR1) => super::signals::reopen_logs(self.slot),
                        Ok(Signal::SIGINT) => {
                            after.exit_now = true;
                            if cancel == 0 {
                                cancel = reason::SHUTDOWN;
                            }
                            let _ = sys::kill_group(pgid, Signal::SIGKILL);
                        }
                        _ => {}
                    }
                }
            }
            if let Some(t) = kill_at
                && Instant::now() >= t
            {
                let _ = sys::kill_group(pgid, Signal::SIGKILL);
                kill_at = None;
            }
            // Has the handler exited? Peek without reaping: while it is an
            // unreaped zombie its group id cannot be recycled.
            match nix::sys::wait::waitid(
                Id::Pid(pgid),
                WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT,
            ) {
                Ok(WaitStatus::StillAlive) => continue,
                Ok(_) => {
                    // The job is over: whatever it left in its group goes too.
                    let _ = sys::kill_group(pgid, Signal::SIGKILL);
                    self.board().job_pgid.store(0, Ordering::Release);
                    let status = reap(child);
                    let desc = match &status {
                        Ok(st) => describe(st),
                        Err(e) => format!("wait error: {e}"),
                    };
                    let outcome = if cancel != 0 {
                        Outcome::Cancelled
                    } else if matches!(status, Ok(WaitStatus::Exited(_, 0))) {
                        Outcome::Done
                    } else {
                        Outcome::Failed
                    };
                    return (outcome, desc, cancel, after);
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    tracing::error!(slot = self.slot, error = %e, "waitid on handler failed");
                    let _ = sys::kill_group(pgid, Signal::SIGKILL);
                    self.board().job_pgid.store(0, Ordering::Release);
                    let _ = reap(child);
                    return (Outcome::Failed, format!("wait error: {e}"), cancel, after);
                }
            }
        }
    }

    /// After a closure job: read signals that arrived while it ran.
    fn drain_signals_after_closure(&self) -> AfterJob {
        let mut after = AfterJob::default();
        while let Ok(Some(info)) = self.sigfd.read_signal() {
            match Signal::try_from(info.ssi_signo as i32) {
                Ok(Signal::SIGTERM) => after.retire = true,
                Ok(Signal::SIGINT) => after.exit_now = true,
                Ok(Signal::SIGUSR1) => super::signals::reopen_logs(self.slot),
                _ => {}
            }
        }
        after
    }
}
