//! SUPERVISOR ONLY: the supervisor's children. Forks workers into slots
//! (with a pidfd each), reaps them and the job processes orphaned to it as
//! subreaper, and accounts for a worker that died.
//!
//! Signals a worker only through its pidfd.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::{Phase, Supervisor, pool};
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

impl Supervisor<'_> {
    /// Forks `n` workers into the lowest free slots.
    pub(super) fn spawn_n(&mut self, n: usize) {
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

    pub(super) fn spawn(&mut self, i: usize) {
        let board = self.sb.slot(i);
        board.claim(0, self.generation);
        match sys::fork() {
            Ok(Forked::Child) => {
                let code = crate::worker::worker_main(
                    self.cfg,
                    self.sb,
                    i,
                    self.listener,
                    Some(&self.wake),
                    self.me,
                );
                std::process::exit(code);
            }
            Ok(Forked::Parent(pid)) => {
                board.pid.store(pid.as_raw(), Ordering::Relaxed);
                let pidfd = match PidFd::open(pid) {
                    Ok(fd) => Some(fd),
                    Err(e) => {
                        tracing::error!(slot = i, pid = pid.as_raw(), error = %e, "pidfd_open failed; this worker cannot be signalled");
                        None
                    }
                };
                self.sb
                    .header()
                    .workers_spawned
                    .fetch_add(1, Ordering::Relaxed);
                tracing::debug!(
                    slot = i,
                    pid = pid.as_raw(),
                    generation = self.generation,
                    "worker started"
                );
                self.slots[i].worker = Some(Worker {
                    pid,
                    pidfd,
                    generation: self.generation,
                    started: Instant::now(),
                    retiring: false,
                });
            }
            Err(e) => {
                board.release();
                let r = pool::on_exit(false, false, Duration::ZERO, self.quick_deaths);
                self.quick_deaths = r.quick_deaths;
                self.hold_until = r.after.map(|d| Instant::now() + d);
                tracing::error!(slot = i, error = %e, "fork failed; retrying later");
            }
        }
    }

    pub(super) fn slot_of(&self, pid: Pid) -> Option<usize> {
        self.slots
            .iter()
            .position(|s| s.worker.as_ref().is_some_and(|w| w.pid == pid))
    }

    /// Reaps every exited child: workers (refilling their slots) and job
    /// processes orphaned by a dead worker (we are their subreaper).
    pub(super) fn reap(&mut self) {
        loop {
            let peek = nix::sys::wait::waitid(
                Id::All,
                WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT,
            );
            let pid = match peek {
                Ok(WaitStatus::StillAlive) | Err(nix::errno::Errno::ECHILD) => return,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    tracing::error!(error = %e, "waitid failed");
                    return;
                }
                Ok(st) => match st.pid() {
                    Some(p) => p,
                    None => return,
                },
            };
            if let Some(w) = &mut self.watch
                && w.owns(pid)
            {
                if let Ok(st) =
                    nix::sys::wait::waitpid(pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG))
                {
                    w.hook_exited(pid, st);
                }
                continue;
            }
            if let Some(i) = self.slot_of(pid) {
                let status =
                    nix::sys::wait::waitpid(pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG));
                self.worker_exited(i, status);
            } else {
                // An orphaned job process. If it leads the process group of a
                // job whose worker died, kill the rest of that group while
                // this zombie still holds the group id.
                for (i, s) in self.sb.slots() {
                    if s.job_pgid.load(Ordering::Acquire) == pid.as_raw() {
                        let _ = sys::kill_group(pid, Signal::SIGKILL);
                        s.job_pgid.store(0, Ordering::Release);
                        tracing::debug!(
                            slot = i,
                            pgid = pid.as_raw(),
                            "killed the job group of a dead worker"
                        );
                    }
                }
                let _ = nix::sys::wait::waitpid(pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG));
            }
        }
    }

    pub(super) fn worker_exited(&mut self, i: usize, status: nix::Result<WaitStatus>) {
        let Some(w) = self.slots[i].worker.take() else {
            return;
        };
        let board = self.sb.slot(i);
        // A worker that died in the middle of a job: its handler was
        // reparented to us and killed by its parent-death signal, but not
        // reaped yet, so its group id is still its own.
        let pgid = board.job_pgid.swap(0, Ordering::AcqRel);
        let job = board.job();
        // A worker killed on purpose (its closure job ignored a cancel).
        let killed_on_purpose =
            job.is_some_and(|j| board.kill_req.load(Ordering::Acquire) == j.job_id);
        if pgid != 0 {
            let _ = sys::kill_group(Pid::from_raw(pgid), Signal::SIGKILL);
        }
        if let Some(job) = job {
            let peer = job.peer.map(|p| p.to_string()).unwrap_or_default();
            let h = self.sb.header();
            h.jobs_served.fetch_add(1, Ordering::Relaxed);
            if board.cancel_req.load(Ordering::Acquire) == job.job_id {
                let why =
                    crate::worker::job::reason::name(board.cancel_reason.load(Ordering::Relaxed));
                tracing::info!(slot = i, pid = w.pid.as_raw(), job = job.job_id, peer = %peer, outcome = %"cancelled", reason = %why, "job ended");
            } else {
                h.jobs_failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(slot = i, pid = w.pid.as_raw(), job = job.job_id, peer = %peer, outcome = %"failed", "job lost: its worker died");
            }
        }
        board.release();
        if let Some(watch) = &mut self.watch {
            watch.forget_slot(i);
        }
        let desc = match status {
            Ok(WaitStatus::Exited(_, c)) => format!("exit {c}"),
            Ok(WaitStatus::Signaled(_, s, _)) => format!("signal {}", s.as_str()),
            Ok(other) => format!("{other:?}"),
            Err(e) => format!("wait error: {e}"),
        };
        let stopping = self.phase != Phase::Running;
        // Asked to exit, or exited 0 by itself (recycled after its request
        // limit): planned. Anything else is a death.
        let planned =
            w.retiring || killed_on_purpose || matches!(status, Ok(WaitStatus::Exited(_, 0)));
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
