//! WORKER ONLY: one job, from accept to its [`JobEnd`]: the checks that the
//! client is still there, the handler program (spawned in its own process
//! group, then waited for while the client socket and the worker's signals
//! are watched) or the Rust closure, and the one end record.
//!
//! Runs in a worker (or in the single process with `--prefork 0`). It kills
//! only its own job's process group, and only while the handler is an
//! unreaped child of this process, so that the group id cannot have been
//! recycled.

use std::cell::RefCell;
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use nix::sys::eventfd::EventFd;
use nix::sys::signal::Signal;
use nix::sys::signalfd::SignalFd;
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::inline::InlineWatch;
use super::signals::{self, AfterJob};
use crate::config::{Config, FinPolicy, JobSpec};
use crate::hooks::JobContext;
use crate::job_end::{EndReason, Finish, JobEnd, Outcome};
use crate::scoreboard::{CancelReason, Counter, Hangup, JobKind, JobView, Scoreboard, Slot};
use crate::spawn::Spawner;
use crate::sys::{self, PollFd, PollFlags};

/// Who judges this worker's jobs.
pub(crate) enum Overseer<'a, 'w> {
    /// The supervisor: woken through its eventfd when the worker sees its
    /// client hang up; it pokes back with SIGUSR2.
    Supervisor(&'a EventFd),
    /// `--prefork 0`: this process runs the watch itself, between polls.
    Inline(&'a RefCell<InlineWatch<'w>>),
}

impl Overseer<'_, '_> {
    /// The worker saw its client hang up.
    fn wake(&self) {
        match self {
            Overseer::Supervisor(w) => {
                let _ = w.write(1);
            }
            Overseer::Inline(i) => i.borrow_mut().tick(true),
        }
    }

    /// Gives the inline watch its turn (nothing for a supervisor's worker).
    fn turn(&self) {
        if let Overseer::Inline(i) = self {
            i.borrow_mut().tick(false);
        }
    }

    /// Whether this process is its own supervisor (`--prefork 0`): it then
    /// also keeps the grace period of a SIGTERM itself.
    fn is_inline(&self) -> bool {
        matches!(self, Overseer::Inline(_))
    }

    /// When the inline watch wants its next turn.
    fn next_due(&self) -> Option<Instant> {
        match self {
            Overseer::Supervisor(_) => None,
            Overseer::Inline(i) => Some(i.borrow().next_due()),
        }
    }
}

/// The environment of one worker, shared by its jobs.
pub(crate) struct Runner<'a, 'w> {
    pub(crate) cfg: &'a Config,
    pub(crate) sb: &'a Scoreboard,
    /// Our slot index.
    pub(crate) slot: usize,
    /// The worker's signalfd ([`crate::sys::HANDLED`]).
    pub(crate) sigfd: &'a SignalFd,
    pub(crate) overseer: Overseer<'a, 'w>,
    /// Prepared handler spawning (None for closure jobs).
    pub(crate) spawner: Option<&'a Spawner>,
}

/// How the job's own work finished: the process (or closure) result, the
/// cancellation it was asked for, and what the worker must do next.
struct Ran {
    finish: Finish,
    /// It ran to its end with success (exit 0, or the closure's `Ok`).
    success: bool,
    cancel: Option<CancelReason>,
    after: AfterJob,
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

/// What the poll of the client socket says: a reset (POLLHUP, POLLERR), a
/// FIN (POLLRDHUP), or nothing.
fn hangup_of(revents: PollFlags) -> Option<Hangup> {
    if revents.intersects(PollFlags::HUP | PollFlags::ERR) {
        Some(Hangup::Reset)
    } else if revents.contains(PollFlags::RDHUP) {
        Some(Hangup::Fin)
    } else {
        None
    }
}

/// Whether the client is already gone (checked right after accept).
fn client_gone(conn: &TcpStream, on_fin: FinPolicy) -> bool {
    let mut fds = [PollFd::new(conn, PollFlags::RDHUP)];
    if sys::poll(&mut fds, Some(Duration::ZERO)).is_err() {
        return false;
    }
    match hangup_of(fds[0].revents()) {
        Some(Hangup::Reset) => true,
        Some(Hangup::Fin) => on_fin == FinPolicy::Cancel,
        None => false,
    }
}

impl Runner<'_, '_> {
    fn board(&self) -> &Slot {
        self.sb.slot(self.slot)
    }

    /// Serves one accepted client (`peer` as accept returned it; `local`
    /// the listener's address when it is not a wildcard). Returns what the
    /// worker must do next.
    pub(crate) fn serve(
        &self,
        conn: TcpStream,
        peer: SocketAddr,
        local: Option<SocketAddr>,
    ) -> AfterJob {
        let Some(job) = self.open_job(&conn, peer, local) else {
            return AfterJob::default();
        };
        let started = Instant::now();
        let ran = match &self.cfg.job {
            JobSpec::Handler { .. } => self.run_handler(&conn, job),
            JobSpec::Closure(f) => self.run_closure(&conn, job, f.as_ref()),
        };
        let (outcome, reason) = match (ran.cancel, ran.success) {
            (Some(c), _) => (Outcome::Cancelled, Some(EndReason::Cancel(c))),
            (None, true) => (Outcome::Done, None),
            (None, false) => (Outcome::Failed, None),
        };
        let end = JobEnd {
            job_id: job.job_id,
            slot: self.slot,
            pid: std::process::id() as i32,
            peer: Some(peer),
            duration_ms: started.elapsed().as_millis() as u64,
            outcome,
            reason,
            finish: ran.finish,
        };
        let board = self.board();
        board.job_ending();
        drop(conn);
        board.end_job();
        end.record(self.sb.header());
        ran.after
    }

    /// The job's record, unless the client is already gone.
    fn open_job(
        &self,
        conn: &TcpStream,
        peer: SocketAddr,
        local: Option<SocketAddr>,
    ) -> Option<JobView> {
        let (slot, pid) = (self.slot, std::process::id());
        let local = match local.map_or_else(|| conn.local_addr(), Ok) {
            Ok(l) if !client_gone(conn, self.cfg.on_fin) => l,
            Ok(_) => {
                self.sb.header().count(Counter::GoneBeforeStart);
                tracing::info!(slot, pid, peer = %peer, "client gone before job start");
                return None;
            }
            Err(_) => {
                // ENOTCONN: reset before we could ask.
                self.sb.header().count(Counter::GoneBeforeStart);
                tracing::info!(slot, pid, "client gone before job start");
                return None;
            }
        };
        Some(JobView {
            job_id: self.sb.next_job_id(),
            kind: match self.cfg.job {
                JobSpec::Handler { .. } => JobKind::Handler,
                JobSpec::Closure(_) => JobKind::Closure,
            },
            pgid: 0,
            cookie: sys::socket_cookie(conn.as_fd()).unwrap_or(0),
            inode: nix::sys::stat::fstat(conn.as_fd())
                .map(|s| s.st_ino)
                .unwrap_or(0),
            peer: Some(peer),
            local: Some(local),
            start_unix_ms: crate::scoreboard::now_unix_ms(),
            start_mono_ns: sys::monotonic_ns(),
        })
    }

    /// Spawns the handler, publishes the job, and waits for the handler.
    fn run_handler(&self, conn: &TcpStream, mut job: JobView) -> Ran {
        let (slot, pid) = (self.slot, std::process::id());
        let peer = job.peer.expect("a job has a peer");
        let spawned = self
            .spawner
            .ok_or_else(|| io::Error::other("no handler program"))
            .and_then(|sp| {
                sp.spawn_job(
                    conn.as_fd(),
                    job.job_id,
                    slot,
                    peer,
                    job.local.expect("a job has a local address"),
                )
            });
        let child = match spawned {
            Ok(child) => child,
            Err(e) => {
                let program = match &self.cfg.job {
                    JobSpec::Handler { program, .. } => program.display().to_string(),
                    JobSpec::Closure(_) => String::new(),
                };
                tracing::error!(slot, pid, job = job.job_id, peer = %peer, program = %program, error = %e, "failed to start handler");
                return Ran {
                    finish: Finish::Other(format!("exec error: {e}")),
                    success: false,
                    cancel: None,
                    after: AfterJob::default(),
                };
            }
        };
        job.pgid = child.as_raw();
        self.board().begin_job(&job, self.cfg.worker_watch);
        tracing::info!(slot, pid, job = job.job_id, peer = %peer, handler_pid = child.as_raw(), "job started");
        self.wait_handler(child, conn, job.job_id)
    }

    /// Waits for the handler, watching the client and the worker's
    /// signals, and carrying out a cancel request for this job.
    fn wait_handler(&self, child: Pid, conn: &TcpStream, job_id: u64) -> Ran {
        let pgid = child;
        let board = self.board();
        let mut after = AfterJob::default();
        let mut watching = self.cfg.worker_watch;
        // Under --on-fin keep only a reset counts: POLLHUP and POLLERR are
        // always reported, POLLRDHUP only when asked for.
        let mut watch_events = if self.cfg.on_fin == FinPolicy::Cancel {
            PollFlags::RDHUP
        } else {
            PollFlags::empty()
        };
        let mut cancel: Option<CancelReason> = None;
        let mut kill_at: Option<Instant> = None;
        // `--prefork 0`: the end of the grace period of a SIGTERM (in the
        // pool, the supervisor keeps it and sends SIGINT).
        let mut grace_at: Option<Instant> = None;
        let mut draining = false;
        loop {
            let next = [kill_at, grace_at, self.overseer.next_due()]
                .into_iter()
                .flatten()
                .min();
            let timeout = next.map(|t| t.saturating_duration_since(Instant::now()));
            let (sig_ready, conn_ev) = {
                let mut fds = [
                    PollFd::new(self.sigfd, PollFlags::IN),
                    PollFd::new(conn, watch_events),
                ];
                let n = if watching { 2 } else { 1 };
                match sys::poll(&mut fds[..n], timeout) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        tracing::error!(slot = self.slot, error = %e, "poll failed in worker")
                    }
                }
                let conn_ev = if watching {
                    fds[1].revents()
                } else {
                    PollFlags::empty()
                };
                (!fds[0].revents().is_empty(), conn_ev)
            };
            match hangup_of(conn_ev) {
                Some(Hangup::Fin) if self.cfg.on_fin == FinPolicy::Keep => {
                    // A FIN under --on-fin keep: from now on only a reset counts.
                    watch_events = PollFlags::empty();
                }
                Some(kind) => {
                    tracing::debug!(
                        slot = self.slot,
                        job = job_id,
                        ?kind,
                        "worker saw its client hang up"
                    );
                    board.report_hangup(kind);
                    watching = false;
                    self.overseer.wake();
                }
                None => {}
            }
            if sig_ready && signals::drain(self.sigfd, self.slot, &mut after) {
                // SIGINT: the job dies now.
                cancel.get_or_insert(CancelReason::Shutdown);
                let _ = sys::kill_group(pgid, Signal::SIGKILL);
            }
            if after.retire && !draining && self.overseer.is_inline() {
                draining = true;
                tracing::info!(
                    grace_ms = self.cfg.grace.as_millis() as u64,
                    "SIGTERM: stopping; the running job may finish"
                );
                grace_at = Some(Instant::now() + self.cfg.grace);
            }
            if let Some(t) = grace_at
                && Instant::now() >= t
            {
                grace_at = None;
                tracing::warn!(
                    job = job_id,
                    "grace period over: cancelling the job still running"
                );
                cancel.get_or_insert(CancelReason::Shutdown);
                let _ = sys::kill_group(pgid, Signal::SIGKILL);
            }
            self.overseer.turn();
            if cancel.is_none()
                && let Some(r) = board.cancel_requested(job_id)
            {
                cancel = Some(r);
                let _ = sys::kill_group(pgid, Signal::SIGTERM);
                kill_at = Some(Instant::now() + self.cfg.kill_grace);
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
                Err(nix::errno::Errno::EINTR) => continue,
                peeked => {
                    if let Err(e) = &peeked {
                        tracing::error!(slot = self.slot, error = %e, "waitid on handler failed");
                    }
                    // The job is over: whatever it left in its group goes too.
                    let _ = sys::kill_group(pgid, Signal::SIGKILL);
                    board.handler_reaped();
                    let status = reap(child);
                    let finish = match peeked {
                        Ok(_) => Finish::from_wait(&status),
                        Err(e) => Finish::Other(format!("wait error: {e}")),
                    };
                    return Ran {
                        success: finish == Finish::Exited(0),
                        finish,
                        cancel,
                        after,
                    };
                }
            }
        }
    }

    /// Runs a closure job in this process, with the kill switch armed.
    fn run_closure(&self, conn: &TcpStream, job: JobView, f: &crate::config::JobFn) -> Ran {
        let (slot, pid) = (self.slot, std::process::id());
        let peer = job.peer.expect("a job has a peer");
        let board = self.board();
        board.begin_job(&job, false);
        tracing::info!(slot, pid, job = job.job_id, peer = %peer, "job started");
        let stream = match conn.try_clone() {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(slot, pid, job = job.job_id, error = %e, "failed to duplicate the client socket");
                return Ran {
                    finish: Finish::Other(format!("error: {e}")),
                    success: false,
                    cancel: None,
                    after: AfterJob::default(),
                };
            }
        };
        let ctx = JobContext {
            job_id: job.job_id,
            slot,
            peer,
            local: job.local.expect("a job has a local address"),
            board_slot: board,
        };
        let guard = match board.arm_kill_switch() {
            Ok(g) => Some(g),
            Err(e) => {
                tracing::warn!(slot, error = %e, "failed to arm the closure kill switch");
                None
            }
        };
        // A panicking job fails; its worker goes on serving (the panic
        // message is on stderr, from the panic hook).
        let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(stream, &ctx)));
        drop(guard);
        let cancel = board.cancel_requested(job.job_id);
        let finish = Finish::Other(match (&res, cancel) {
            (_, Some(_)) => "returned".to_string(),
            (Ok(Ok(())), _) => "ok".to_string(),
            (Ok(Err(e)), _) => format!("error: {e}"),
            (Err(_), _) => "panicked".to_string(),
        });
        let mut after = AfterJob::default();
        signals::drain(self.sigfd, slot, &mut after);
        Ran {
            finish,
            success: matches!(res, Ok(Ok(()))),
            cancel,
            after,
        }
    }
}
