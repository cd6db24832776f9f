//! SUPERVISOR ONLY: the supervisor's children. A [`Worker`] record (pid,
//! pidfd, generation), the fork of a worker, the reaping primitives, and
//! what a reaped worker means: whether its exit was planned, and the
//! [`JobEnd`] of a job it took with it.
//!
//! Signals a worker only through its pidfd; knows nothing of the pool.

use std::time::Instant;

use nix::sys::signal::Signal;
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::job_end::{EndReason, Finish, JobEnd, Outcome};
use crate::scoreboard::{CancelRequest, JobView};
use crate::sys::{self, Forked, PidFd};

pub(super) struct Worker {
    pub(super) pid: Pid,
    pub(super) pidfd: Option<PidFd>,
    pub(super) generation: u32,
    pub(super) started: Instant,
    /// Asked to exit (reload, stop): its exit is planned.
    pub(super) retiring: bool,
}

impl Worker {
    pub(super) fn signal(&self, sig: Signal) {
        match &self.pidfd {
            Some(fd) => {
                if let Err(e) = fd.signal(sig)
                    && e.raw_os_error() != Some(libc::ESRCH)
                {
                    tracing::warn!(pid = self.pid.as_raw(), signal = sig.as_str(), error = %e, "failed to signal worker");
                }
            }
            None => tracing::warn!(
                pid = self.pid.as_raw(),
                "no pidfd for worker; not signalling it"
            ),
        }
    }
}

/// Forks a worker that runs `body` and exits with its code, with the
/// supervisor's descriptors `close` closed; in the parent, returns its pid
/// and a pidfd (None, logged, when pidfd_open failed: such a worker is
/// never signalled).
pub(super) fn fork_worker(
    slot: usize,
    close: impl IntoIterator<Item = std::os::fd::RawFd>,
    body: impl FnOnce() -> i32,
) -> std::io::Result<(Pid, Option<PidFd>)> {
    match sys::fork_closing(close)? {
        Forked::Child => std::process::exit(body()),
        Forked::Parent(pid) => {
            let pidfd = match PidFd::open(pid) {
                Ok(fd) => Some(fd),
                Err(e) => {
                    tracing::error!(slot, pid = pid.as_raw(), error = %e, "pidfd_open failed; this worker cannot be signalled");
                    None
                }
            };
            Ok((pid, pidfd))
        }
    }
}

/// The next child that exited, without reaping it (so that its pid stays
/// its own while the caller decides), or None when none did.
pub(super) fn next_exited() -> Option<Pid> {
    loop {
        let peek = nix::sys::wait::waitid(
            Id::All,
            WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT,
        );
        return match peek {
            Ok(WaitStatus::StillAlive) | Err(nix::errno::Errno::ECHILD) => None,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                tracing::error!(error = %e, "waitid failed");
                None
            }
            Ok(st) => st.pid(),
        };
    }
}

/// What is left of the jobs of dead workers: the children of this process
/// (adopted as subreaper) that are not `known` (workers, hook programs) and
/// lead a process group of their own: a handler whose worker died, or what
/// a job moved out of its group with `setsid` or `setpgid`. Each is an
/// unreaped child of ours, so neither its pid nor its group id can have
/// been recycled: signalling its group hits exactly that. A child the
/// embedding program started itself (a library user's `Command` in a
/// callback runs in the supervisor's group) is not one of them. Nothing
/// here is read from the scoreboard.
pub(super) fn adopted_groups(known: impl Fn(Pid) -> bool) -> Vec<Pid> {
    sys::children()
        .into_iter()
        .filter(|&c| !known(c))
        .filter(|&c| sys::group_and_session(c).is_some_and(|(pgid, _)| pgid == c.as_raw()))
        .collect()
}

/// Reaps `pid`, which [`next_exited`] returned.
pub(super) fn reap(pid: Pid) -> nix::Result<WaitStatus> {
    nix::sys::wait::waitpid(pid, Some(WaitPidFlag::WNOHANG))
}

/// What the supervisor knows of a worker it just reaped.
pub(super) struct Reaped<'a> {
    pub(super) slot: usize,
    pub(super) worker: &'a Worker,
    pub(super) status: &'a nix::Result<WaitStatus>,
    /// The job its slot still showed, if any.
    pub(super) job: Option<JobView>,
    /// The cancel request of that job, if one was made.
    pub(super) cancel: Option<CancelRequest>,
    /// Whether the supervisor asked it to kill itself (its closure job
    /// ignored a cancel).
    pub(super) kill_requested: bool,
}

/// The supervisor's reading of a reaped worker.
#[derive(Debug)]
pub(super) struct ExitReading {
    /// `exit N` or `signal NAME`.
    pub(super) status: String,
    /// Asked to exit (retiring, killed on purpose) or exited 0 by itself
    /// (recycled after its request limit): not a death.
    pub(super) planned: bool,
    /// The end of the job it took with it.
    pub(super) job_end: Option<JobEnd>,
}

/// Reads a reaped worker (pure: no process is touched).
pub(super) fn read_exit(r: &Reaped<'_>, now_mono_ns: u64) -> ExitReading {
    let finish = Finish::from_wait(r.status);
    let status = finish.describe();
    let planned =
        r.worker.retiring || r.kill_requested || matches!(r.status, Ok(WaitStatus::Exited(_, 0)));
    let job_end = r.job.map(|job| {
        let (outcome, reason) = match r.cancel {
            Some(c) => (Outcome::Cancelled, EndReason::Cancel(c.reason)),
            None => (Outcome::Failed, EndReason::WorkerDied),
        };
        JobEnd {
            job_id: job.job_id,
            slot: r.slot,
            pid: r.worker.pid.as_raw(),
            peer: job.shown_peer(),
            proxy_peer: job.proxy_peer(),
            duration_ms: now_mono_ns.saturating_sub(job.start_mono_ns) / 1_000_000,
            outcome,
            reason: Some(reason),
            finish: Finish::Other(format!("worker {status}")),
            progress: None,
            client_closed_after_ms: None,
            seen_after_us: None,
            latency: None,
            usage: None,
        }
    });
    ExitReading {
        status,
        planned,
        job_end,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scoreboard::{CancelReason, JobKind};

    fn worker(retiring: bool) -> Worker {
        Worker {
            pid: Pid::from_raw(321),
            pidfd: None,
            generation: 1,
            started: Instant::now(),
            retiring,
        }
    }

    fn job() -> JobView {
        JobView {
            job_id: 12,
            kind: JobKind::Handler,
            pgid: 0,
            cookie: 1,
            inode: 2,
            peer: Some("127.0.0.1:4000".parse().unwrap()),
            local: None,
            client: None,
            start_unix_ms: 0,
            start_mono_ns: 1_000_000_000,
        }
    }

    fn read(
        w: &Worker,
        status: nix::Result<WaitStatus>,
        job: Option<JobView>,
        cancel: Option<CancelRequest>,
        kill_requested: bool,
    ) -> ExitReading {
        read_exit(
            &Reaped {
                slot: 3,
                worker: w,
                status: &status,
                job,
                cancel,
                kill_requested,
            },
            3_500_000_000,
        )
    }

    #[test]
    fn stat_ids_of_this_process() {
        let me = nix::unistd::getpid();
        let (pgid, sid) = sys::group_and_session(me).expect("own stat");
        assert_eq!(pgid, nix::unistd::getpgrp().as_raw());
        assert_eq!(sid, nix::unistd::getsid(None).unwrap().as_raw());
    }

    #[test]
    fn planned_exits_are_not_deaths() {
        let killed = Ok(WaitStatus::Signaled(
            Pid::from_raw(321),
            Signal::SIGKILL,
            false,
        ));
        assert!(read(&worker(true), killed, None, None, false).planned);
        assert!(read(&worker(false), killed, None, None, true).planned);
        let recycled = Ok(WaitStatus::Exited(Pid::from_raw(321), 0));
        assert!(read(&worker(false), recycled, None, None, false).planned);
        let died = read(&worker(false), killed, None, None, false);
        assert!(!died.planned);
        assert_eq!(died.status, "signal SIGKILL");
        assert!(died.job_end.is_none());
    }

    /// Regression guard: a job lost with its worker gets its end record
    /// (it used to get no access-log line).
    #[test]
    fn a_job_lost_with_its_worker_ends_failed() {
        let killed = Ok(WaitStatus::Signaled(
            Pid::from_raw(321),
            Signal::SIGKILL,
            false,
        ));
        let r = read(&worker(false), killed, Some(job()), None, false);
        let end = r.job_end.expect("a job end");
        assert_eq!((end.job_id, end.slot, end.pid), (12, 3, 321));
        assert_eq!(end.outcome, Outcome::Failed);
        assert_eq!(end.reason, Some(EndReason::WorkerDied));
        assert_eq!(end.duration_ms, 2500);
        assert_eq!(end.finish, Finish::Other("worker signal SIGKILL".into()));
    }

    #[test]
    fn a_cancelled_job_whose_worker_died_ends_cancelled() {
        let killed = Ok(WaitStatus::Signaled(
            Pid::from_raw(321),
            Signal::SIGKILL,
            false,
        ));
        let r = read(
            &worker(false),
            killed,
            Some(job()),
            Some(CancelRequest::plain(
                CancelReason::ClientReset,
                crate::scoreboard::VerdictBy::Policy,
            )),
            true,
        );
        assert!(r.planned);
        let end = r.job_end.expect("a job end");
        assert_eq!(end.outcome, Outcome::Cancelled);
        assert_eq!(
            end.reason,
            Some(EndReason::Cancel(CancelReason::ClientReset))
        );
    }
}
