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
use crate::cgroup::JobCgroup;
use crate::config::{Config, FinPolicy, JobSpec};
use crate::hooks::JobContext;
use crate::job_end::{EndReason, Finish, JobEnd, Outcome, log_cancelled};
use crate::scoreboard::{
    CancelReason, CancelRequest, Counter, Hangup, JobKind, JobView, Scoreboard, SeenBy, Slot,
    VerdictBy,
};
use crate::spawn::Spawner;
use crate::sys::{self, ChildUsage, PollFd, PollFlags, TcpProgress};

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
    /// This worker's job cgroup (it lives in it; its handlers are born
    /// in it).
    pub(crate) job_cgroup: Option<JobCgroup>,
    /// This process's pid (read once: `getpid` is a system call).
    pub(crate) me: u32,
}

/// How the job's own work finished: the process (or closure) result, the
/// cancellation it was asked for, and what the worker must do next.
struct Ran {
    finish: Finish,
    /// It ran to its end with success (exit 0, or the closure's `Ok`).
    success: bool,
    /// The cancel request that ended it.
    cancel: Option<CancelRequest>,
    /// The cancel was not logged yet (a closure job: it returned).
    cancel_unlogged: bool,
    /// When the client closed during a job that went on to its end.
    client_closed_after_ms: Option<u64>,
    /// What the client had received when jobd cancelled the job (read
    /// before the connection was shut down).
    progress: Option<TcpProgress>,
    /// CPU time and peak memory of the job's processes.
    usage: Option<ChildUsage>,
    after: AfterJob,
    /// When the worker first read the job's cancel request (the latency
    /// from the hang-up to the tree gone is measured from it).
    cancel_seen_at: Option<Instant>,
}

impl Ran {
    /// A job that could not run.
    fn failed(why: String) -> Ran {
        Ran {
            finish: Finish::Other(why),
            success: false,
            cancel: None,
            cancel_unlogged: false,
            client_closed_after_ms: None,
            progress: None,
            usage: None,
            after: AfterJob::default(),
            cancel_seen_at: None,
        }
    }
}

/// What the poll of the client socket says: a reset (POLLHUP, POLLERR), an
/// unresponsive client (the same, with ETIMEDOUT: TCP_USER_TIMEOUT or
/// keepalive gave up), a FIN (POLLRDHUP), or nothing.
fn hangup_of(revents: PollFlags, conn: &TcpStream) -> Option<Hangup> {
    if revents.intersects(PollFlags::HUP | PollFlags::ERR) {
        let timed_out = sys::socket_error(conn.as_fd())
            .is_some_and(|e| e.raw_os_error() == Some(libc::ETIMEDOUT));
        Some(if timed_out {
            Hangup::Unresponsive
        } else {
            Hangup::Reset
        })
    } else if revents.contains(PollFlags::RDHUP) {
        Some(Hangup::Fin)
    } else {
        None
    }
}

/// The client right after accept.
enum AtAccept {
    /// Nothing happened yet.
    Here,
    /// It half-closed, and `--on-fin keep` serves it anyway.
    HalfClosed,
    /// It is gone: why.
    Gone(&'static str),
}

/// Checks the client right after accept.
fn at_accept(conn: &TcpStream, on_fin: FinPolicy) -> AtAccept {
    let mut fds = [PollFd::new(conn, PollFlags::RDHUP)];
    if sys::poll(&mut fds, Some(Duration::ZERO)).is_err() {
        return AtAccept::Here;
    }
    match hangup_of(fds[0].revents(), conn) {
        Some(Hangup::Reset | Hangup::Unresponsive) => AtAccept::Gone("reset"),
        Some(Hangup::Fin) if on_fin == FinPolicy::Keep => AtAccept::HalfClosed,
        Some(Hangup::Fin) => AtAccept::Gone(
            "it closed (or half-closed) first; a client that half-closes on purpose needs --on-fin keep",
        ),
        None => AtAccept::Here,
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
        client: Option<SocketAddr>,
        local: Option<SocketAddr>,
    ) -> AfterJob {
        let Some((job, half_closed)) = self.open_job(&conn, peer, client, local) else {
            return AfterJob::default();
        };
        let started = Instant::now();
        let ran = match &self.cfg.job {
            JobSpec::Handler { .. } => self.run_handler(&conn, job, half_closed, started),
            JobSpec::Closure(f) => self.run_closure(&conn, job, f.as_ref()),
        };
        let (outcome, reason) = match (ran.cancel, ran.success) {
            (Some(c), _) => (Outcome::Cancelled, Some(EndReason::Cancel(c.reason))),
            (None, true) => (Outcome::Done, None),
            (None, false) => (Outcome::Failed, self.limit_hit(&ran)),
        };
        let progress = ran
            .progress
            .or_else(|| sys::tcp_progress(conn.as_fd()).ok());
        if let Some(req) = &ran.cancel
            && ran.cancel_unlogged
        {
            let ran_ms = started.elapsed().as_millis() as u64;
            log_cancelled(
                self.slot,
                self.me as i32,
                job.job_id,
                job.shown_peer(),
                req,
                ran_ms,
                progress,
            );
        }
        let end = JobEnd {
            job_id: job.job_id,
            slot: self.slot,
            pid: self.me as i32,
            peer: job.shown_peer(),
            proxy_peer: job.proxy_peer(),
            duration_ms: started.elapsed().as_millis() as u64,
            outcome,
            reason,
            finish: ran.finish,
            progress,
            client_closed_after_ms: ran.client_closed_after_ms,
            usage: ran.usage,
            seen_after_us: ran
                .cancel
                .filter(|c| c.seen_by != SeenBy::Nobody)
                .map(|c| c.seen_after_us),
            // Hang-up to tree gone: the hang-up to its detection, plus the
            // detection (as the worker read its request) to now, the job
            // reaped and swept.
            latency: match (ran.cancel, ran.cancel_seen_at) {
                (Some(c), Some(at)) if c.seen_by != SeenBy::Nobody => Some((
                    c.seen_by,
                    u64::from(c.seen_after_us),
                    u64::from(c.seen_after_us) + at.elapsed().as_micros() as u64,
                )),
                _ => None,
            },
        };
        let board = self.board();
        board.job_ending();
        drop(conn);
        // `--max-per-source`: the place is free before the end is told.
        board.release_source();
        // The record first, then the slot cleared: a worker that dies in
        // between leaves the job marked recorded, which the supervisor does
        // not record again; one that dies before leaves it for the
        // supervisor to record (worker-died).
        end.record_then(self.sb.header(), || board.job_recorded());
        board.end_job();
        ran.after
    }

    /// The `--job-limit` that killed a failed job, when one did: SIGXCPU
    /// (or SIGKILL with the CPU limit used up, jobd having sent none),
    /// SIGXFSZ, of the handler or, as a shell reports it, of its child.
    fn limit_hit(&self, ran: &Ran) -> Option<EndReason> {
        let cpu_limit = self.cfg.job_limits.iter().find_map(|l| match l {
            crate::config::JobLimit::Cpu(s) => Some(*s),
            _ => None,
        });
        let used_s = ran.usage.map_or(0, |u| (u.user_us + u.sys_us) / 1_000_000);
        // A shell handler reports its child's death by signal N as exit
        // 128 + N.
        const XCPU: i32 = 128 + Signal::SIGXCPU as i32;
        const XFSZ: i32 = 128 + Signal::SIGXFSZ as i32;
        match ran.finish {
            Finish::Signaled(Signal::SIGXCPU) | Finish::Exited(XCPU) => Some(EndReason::LimitCpu),
            Finish::Signaled(Signal::SIGKILL) if cpu_limit.is_some_and(|l| used_s >= l) => {
                Some(EndReason::LimitCpu)
            }
            Finish::Signaled(Signal::SIGXFSZ) | Finish::Exited(XFSZ) => Some(EndReason::LimitFsize),
            _ => None,
        }
    }

    /// The job's record (and whether its client already half-closed),
    /// unless the client is already gone.
    fn open_job(
        &self,
        conn: &TcpStream,
        peer: SocketAddr,
        client: Option<SocketAddr>,
        local: Option<SocketAddr>,
    ) -> Option<(JobView, bool)> {
        let (slot, pid) = (self.slot, self.me);
        let (local, half_closed) = match local.map_or_else(|| conn.local_addr(), Ok) {
            Ok(l) => match at_accept(conn, self.cfg.on_fin) {
                AtAccept::Here => (l, false),
                AtAccept::HalfClosed => (l, true),
                AtAccept::Gone(why) => {
                    self.sb.header().count(Counter::GoneBeforeStart);
                    tracing::info!(slot, pid, peer = %peer, why, "client gone before job start");
                    return None;
                }
            },
            Err(_) => {
                // ENOTCONN: reset before we could ask.
                self.sb.header().count(Counter::GoneBeforeStart);
                tracing::info!(slot, pid, why = "reset", "client gone before job start");
                return None;
            }
        };
        let view = JobView {
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
            client,
            start_unix_ms: crate::scoreboard::now_unix_ms(),
            start_mono_ns: sys::monotonic_ns(),
        };
        Some((view, half_closed))
    }

    /// Spawns the handler, publishes the job, and waits for the handler.
    fn run_handler(
        &self,
        conn: &TcpStream,
        mut job: JobView,
        half_closed: bool,
        started: Instant,
    ) -> Ran {
        let (slot, pid) = (self.slot, self.me);
        let peer = job.shown_peer().expect("a job has a peer");
        // With cgroups, the handler is born in the worker's job cgroup.
        let in_job_cgroup = self.job_cgroup.is_some();
        // Published before the spawn: a worker that dies from here on
        // leaves a job its supervisor records (and whose handler it kills).
        self.board().begin_job(&job, self.cfg.worker_watch);
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
                    job.proxy_peer(),
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
                return Ran::failed(format!("exec error: {e}"));
            }
        };
        job.pgid = child.as_raw();
        self.board().set_job_pgid(job.pgid);
        let containment = if in_job_cgroup {
            "cgroup"
        } else if self.overseer.is_inline() {
            "process-group"
        } else {
            "subreaper"
        };
        match job.proxy_peer() {
            Some(proxy) => {
                tracing::info!(slot, pid, job = job.job_id, peer = %peer, proxy_peer = %proxy, handler_pid = child.as_raw(), containment, "job started")
            }
            None => {
                tracing::info!(slot, pid, job = job.job_id, peer = %peer, handler_pid = child.as_raw(), containment, "job started")
            }
        }
        if half_closed {
            self.log_kept_fin(job.job_id);
        }
        HandlerWait::new(self, child, conn, &job, half_closed, started).run()
    }

    /// Logs, once per job, that its client's FIN is kept (`--on-fin keep`).
    fn log_kept_fin(&self, job: u64) {
        tracing::info!(
            slot = self.slot,
            job,
            "client half-closed; job kept (--on-fin keep): only a reset cancels it"
        );
    }

    /// Runs a closure job in this process, with the kill switch armed.
    fn run_closure(&self, conn: &TcpStream, job: JobView, f: &crate::config::JobFn) -> Ran {
        let (slot, pid) = (self.slot, self.me);
        let peer = job.shown_peer().expect("a job has a peer");
        let board = self.board();
        board.begin_job(&job, false);
        tracing::info!(slot, pid, job = job.job_id, peer = %peer, "job started");
        let stream = match conn.try_clone() {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(slot, pid, job = job.job_id, error = %e, "failed to duplicate the client socket");
                return Ran::failed(format!("error: {e}"));
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
        let cpu_before = sys::self_cpu_us();
        let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(stream, &ctx)));
        let cpu_after = sys::self_cpu_us();
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
            cancel_unlogged: cancel.is_some(),
            client_closed_after_ms: None,
            progress: None,
            // The worker's own CPU time while the closure ran; its peak
            // memory is the worker's, not the job's: not given.
            usage: Some(ChildUsage {
                user_us: cpu_after.0.saturating_sub(cpu_before.0),
                sys_us: cpu_after.1.saturating_sub(cpu_before.1),
                max_rss_kib: 0,
            }),
            after,
            cancel_seen_at: None,
        }
    }
}

/// The wait for one handler: the client socket and the worker's signals
/// are watched, cancel requests are carried out (after the FIN grace when
/// the client closed having received all it was sent), and the handler's
/// own exit decides the outcome unless jobd signalled it first.
struct HandlerWait<'r, 'a, 'w> {
    runner: &'r Runner<'a, 'w>,
    child: Pid,
    conn: &'r TcpStream,
    job: &'r JobView,
    started: Instant,
    after: AfterJob,
    /// Poll the client socket (`--worker-watch`; off after a reset).
    watching: bool,
    /// The client's FIN is kept: only a reset counts.
    fin_kept: bool,
    /// The FIN was reported to the overseer.
    fin_reported: bool,
    /// When the client's FIN was seen.
    fin_at: Option<Instant>,
    /// A reset (or an unresponsive client) was seen.
    reset_seen: bool,
    /// A cancel request deferred by the FIN grace, and its deadline.
    deferred: Option<(CancelRequest, Instant)>,
    /// The request jobd acted on (it signalled the job).
    cancel: Option<CancelRequest>,
    /// What the client had received at that moment.
    progress_at_cancel: Option<TcpProgress>,
    kill_at: Option<Instant>,
    /// When the cancel request was first read.
    cancel_seen_at: Option<Instant>,
    /// `--prefork 0`: the end of a SIGTERM's grace period.
    grace_at: Option<Instant>,
    draining: bool,
}

impl<'r, 'a, 'w> HandlerWait<'r, 'a, 'w> {
    fn new(
        runner: &'r Runner<'a, 'w>,
        child: Pid,
        conn: &'r TcpStream,
        job: &'r JobView,
        fin_kept: bool,
        started: Instant,
    ) -> Self {
        HandlerWait {
            runner,
            child,
            conn,
            job,
            started,
            after: AfterJob::default(),
            watching: runner.cfg.worker_watch,
            fin_kept,
            fin_reported: false,
            fin_at: None,
            reset_seen: false,
            deferred: None,
            cancel: None,
            progress_at_cancel: None,
            kill_at: None,
            cancel_seen_at: None,
            grace_at: None,
            draining: false,
        }
    }

    fn cfg(&self) -> &Config {
        self.runner.cfg
    }

    fn board(&self) -> &Slot {
        self.runner.board()
    }

    /// The events polled on the client socket: POLLRDHUP while a FIN still
    /// matters; POLLHUP and POLLERR are always reported.
    fn conn_events(&self) -> PollFlags {
        if self.fin_kept || self.fin_at.is_some() || self.cfg().on_fin == FinPolicy::Keep {
            PollFlags::empty()
        } else {
            PollFlags::RDHUP
        }
    }

    /// Whether the handler has exited (peeked, not reaped: while it is an
    /// unreaped zombie its group id cannot be recycled).
    fn exited(&self) -> nix::Result<bool> {
        loop {
            match nix::sys::wait::waitid(
                Id::Pid(self.child),
                WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT,
            ) {
                Ok(WaitStatus::StillAlive) => return Ok(false),
                Err(nix::errno::Errno::EINTR) => continue,
                Ok(_) => return Ok(true),
                Err(e) => return Err(e),
            }
        }
    }

    /// Carries out `req`: logs `job cancelled`, shuts the connection down
    /// (a handler blocked on it gets EOF or EPIPE at once), and sends
    /// SIGTERM and SIGCONT to the job's group (SIGKILL with `hard`), then
    /// SIGKILL after the kill grace. Not when the handler already exited
    /// by itself: its own exit status decides then.
    fn act(&mut self, req: CancelRequest, hard: bool) {
        if self.cancel.is_some() || self.exited().unwrap_or(false) {
            return;
        }
        let pgid = self.child;
        let ran_ms = self.started.elapsed().as_millis() as u64;
        // What the client had, read before the shutdown adds our FIN.
        let progress = sys::tcp_progress(self.conn.as_fd()).ok();
        let _ = self.conn.shutdown(std::net::Shutdown::Both);
        if hard {
            let _ = sys::kill_group(pgid, Signal::SIGKILL);
            self.kill_cgroup();
        } else {
            let _ = sys::kill_group(pgid, Signal::SIGTERM);
            let _ = sys::kill_group(pgid, Signal::SIGCONT);
            self.kill_at = Some(Instant::now() + self.cfg().kill_grace);
        }
        // Logged once the signals are on their way (still before the job's
        // end line, which comes after the handler is reaped).
        log_cancelled(
            self.runner.slot,
            self.runner.me as i32,
            self.job.job_id,
            self.job.shown_peer(),
            &req,
            ran_ms,
            progress,
        );
        self.cancel = Some(req);
        self.progress_at_cancel = progress;
        self.deferred = None;
    }

    /// Kills every process of the worker's job cgroup but the worker, when
    /// there is a job cgroup; returns how many.
    fn kill_cgroup(&self) -> usize {
        match &self.runner.job_cgroup {
            Some(c) => c.kill_others(self.runner.me, Duration::from_secs(2)),
            None => 0,
        }
    }

    /// A hang-up seen on the client socket.
    /// Records the hang-up in the slot, names the slot to the
    /// supervisor and wakes it.
    fn report(&self, kind: Hangup) {
        self.board().report_hangup(kind);
        self.runner.sb.note_hangup(self.runner.slot);
        self.runner.overseer.wake();
    }

    fn on_hangup(&mut self, kind: Hangup) {
        let job_id = self.job.job_id;
        match kind {
            Hangup::Fin => {
                self.fin_at.get_or_insert_with(Instant::now);
                if self.fin_kept {
                    return;
                }
                if self.cfg().on_fin == FinPolicy::Keep {
                    self.fin_kept = true;
                    self.runner.log_kept_fin(job_id);
                } else if !self.fin_reported {
                    tracing::debug!(
                        slot = self.runner.slot,
                        job = job_id,
                        "worker saw its client close"
                    );
                    self.fin_reported = true;
                    self.report(Hangup::Fin);
                }
            }
            Hangup::Reset | Hangup::Unresponsive => {
                tracing::debug!(
                    slot = self.runner.slot,
                    job = job_id,
                    ?kind,
                    "worker saw its client hang up"
                );
                self.reset_seen = true;
                self.watching = false;
                self.report(kind);
                // A reset ends a FIN grace: the client did not have it all.
                if let Some((req, _)) = self.deferred.take() {
                    self.act(req, false);
                }
            }
        }
    }

    /// A new cancel request: acted on at once, or after the FIN grace when
    /// the client closed having acknowledged every byte it was sent.
    fn on_request(&mut self, req: CancelRequest) {
        self.cancel_seen_at.get_or_insert_with(Instant::now);
        let grace = self.cfg().fin_grace;
        let answered = req.reason == CancelReason::ClientClosed
            && !grace.is_zero()
            && !self.reset_seen
            && sys::tcp_progress(self.conn.as_fd()).is_ok_and(|p| p.all_acked());
        if answered {
            tracing::debug!(
                slot = self.runner.slot,
                job = self.job.job_id,
                fin_grace_ms = grace.as_millis() as u64,
                "client closed after its answer; the handler may still finish"
            );
            self.deferred = Some((req, Instant::now() + grace));
        } else {
            self.act(req, false);
        }
    }

    fn run(mut self) -> Ran {
        let job_id = self.job.job_id;
        loop {
            let next = [
                self.kill_at,
                self.grace_at,
                self.deferred.map(|d| d.1),
                self.runner.overseer.next_due(),
            ]
            .into_iter()
            .flatten()
            .min();
            let timeout = next.map(|t| t.saturating_duration_since(Instant::now()));
            let (sig_ready, conn_ev) = {
                let mut fds = [
                    PollFd::new(self.runner.sigfd, PollFlags::IN),
                    PollFd::new(self.conn, self.conn_events()),
                ];
                let n = if self.watching { 2 } else { 1 };
                match sys::poll(&mut fds[..n], timeout) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        tracing::error!(slot = self.runner.slot, error = %e, "poll failed in worker")
                    }
                }
                let conn_ev = if self.watching {
                    fds[1].revents()
                } else {
                    PollFlags::empty()
                };
                (!fds[0].revents().is_empty(), conn_ev)
            };
            if let Some(kind) = hangup_of(conn_ev, self.conn) {
                self.on_hangup(kind);
            }
            if sig_ready && signals::drain(self.runner.sigfd, self.runner.slot, &mut self.after) {
                // SIGINT: the job dies now.
                self.act(
                    CancelRequest::plain(CancelReason::Shutdown, VerdictBy::Stop),
                    true,
                );
            }
            if self.after.retire && !self.draining && self.runner.overseer.is_inline() {
                self.draining = true;
                tracing::info!(
                    grace_ms = self.cfg().grace.as_millis() as u64,
                    "SIGTERM: stopping; the running job may finish"
                );
                self.grace_at = Some(Instant::now() + self.cfg().grace);
            }
            if let Some(t) = self.grace_at
                && Instant::now() >= t
            {
                self.grace_at = None;
                tracing::warn!(
                    job = job_id,
                    "grace period over: cancelling the job still running"
                );
                self.act(
                    CancelRequest::plain(CancelReason::Shutdown, VerdictBy::Stop),
                    true,
                );
            }
            self.runner.overseer.turn();
            if self.cancel.is_none()
                && self.deferred.is_none()
                && let Some(req) = self.board().cancel_requested(job_id)
            {
                self.on_request(req);
            }
            if let Some((req, t)) = self.deferred
                && Instant::now() >= t
            {
                self.act(req, false);
            }
            if let Some(t) = self.kill_at
                && Instant::now() >= t
            {
                let _ = sys::kill_group(self.child, Signal::SIGKILL);
                self.kill_cgroup();
                self.kill_at = None;
            }
            match self.exited() {
                Ok(false) => continue,
                peeked => return self.finish(peeked),
            }
        }
    }

    /// Kills and reaps every child this worker still has: as the job's
    /// subreaper it adopted whatever the job moved out of its group (setsid,
    /// a double fork) once its parent exited. Each is an unreaped child of
    /// ours, so its pid is its own. Repeats while killing one hands us its
    /// children.
    fn sweep(&self) -> ChildUsage {
        let mut usage = ChildUsage::default();
        // `--prefork 0`: the one process may be a library user's, with
        // children of its own; it is no subreaper and sweeps nothing.
        if self.runner.overseer.is_inline() {
            return usage;
        }
        // The common case, no child left at all, in one system call.
        if matches!(
            nix::sys::wait::waitid(
                Id::All,
                WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT,
            ),
            Err(nix::errno::Errno::ECHILD)
        ) {
            return usage;
        }
        // Counted (and logged) are the processes that had left the job's
        // group; the group's own, already SIGKILLed, may be reparented
        // here before they exit.
        let mut swept = 0;
        for _ in 0..64 {
            let left: Vec<Pid> = sys::children()
                .into_iter()
                .filter(|&p| p != self.child)
                .collect();
            if left.is_empty() {
                break;
            }
            for &p in &left {
                if sys::group_and_session(p).is_some_and(|(g, _)| g != self.child.as_raw()) {
                    swept += 1;
                }
                let _ = nix::sys::signal::kill(p, Signal::SIGKILL);
            }
            for &p in &left {
                if let Ok((_, u)) = sys::reap_with_usage(p) {
                    usage.add(u);
                }
            }
        }
        if swept > 0 {
            tracing::info!(
                slot = self.runner.slot,
                job = self.job.job_id,
                processes = swept,
                "killed what the job left outside its process group"
            );
        }
        usage
    }

    /// The handler exited: kill what it left in its group, reap it.
    fn finish(self, peeked: nix::Result<bool>) -> Ran {
        if let Err(e) = &peeked {
            tracing::error!(slot = self.runner.slot, error = %e, "waitid on handler failed");
        }
        // The job is over: whatever it left in its group goes too.
        let _ = sys::kill_group(self.child, Signal::SIGKILL);
        self.board().handler_reaped();
        let (status, mut usage) = match sys::reap_with_usage(self.child) {
            Ok((st, u)) => (Ok(st), u),
            Err(e) => (
                Err(nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(0))),
                ChildUsage::default(),
            ),
        };
        // Everything left in the job's cgroup goes (wherever it moved in
        // the process tree); then the worker reaps what it adopted.
        // Everything left in the job's cgroup goes (wherever it moved in
        // the process tree); then the worker reaps what it adopted.
        let killed = match &self.runner.job_cgroup {
            Some(c) if !c.others(self.runner.me).is_empty() => self.kill_cgroup(),
            _ => 0,
        };
        usage.add(self.sweep());
        if killed > 0
            && let Some(c) = &self.runner.job_cgroup
            && !c.others(self.runner.me).is_empty()
        {
            tracing::warn!(slot = self.runner.slot, job = self.job.job_id, cgroup = %c.path().display(), "processes of the job are still in its cgroup after 2 s");
        }
        let finish = match peeked {
            Ok(_) => Finish::from_wait(&status),
            Err(e) => Finish::Other(format!("wait error: {e}")),
        };
        // The client closed while the job went on to its end: when.
        let client_closed_after_ms = match (self.cancel, self.fin_at) {
            (None, Some(at)) => Some(at.saturating_duration_since(self.started).as_millis() as u64),
            _ => None,
        };
        Ran {
            success: finish == Finish::Exited(0),
            finish,
            cancel: self.cancel,
            cancel_unlogged: false,
            client_closed_after_ms,
            progress: self.progress_at_cancel,
            usage: Some(usage),
            after: self.after,
            cancel_seen_at: self.cancel_seen_at,
        }
    }
}
