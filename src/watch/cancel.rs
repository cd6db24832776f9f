//! Cancelling a job: the request written into the job's slot and the poke
//! of its worker through the worker's pidfd, the job timeout, and the kill
//! of a closure job's worker after `--kill-grace`.
//!
//! Never signals a pid read from the scoreboard: the worker, the handler's
//! parent, kills the job's group only if the request names its current job.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use super::Watch;
use crate::config::Config;
use crate::scoreboard::{JobView, Scoreboard, job_kind};
use crate::sys::{self, PidFd};
use crate::worker::job::reason;

pub(super) struct PendingKill {
    pub(super) slot: usize,
    pub(super) job_id: u64,
    pub(super) at: Instant,
}

impl Watch {
    /// Cancels a job that ran past `--job-timeout` (no hooks are asked).
    pub(super) fn time_out(
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

    /// Asks the worker to cancel `job`, after checking that its slot still
    /// runs that very job on that very socket.
    pub(super) fn cancel(
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
    pub(super) fn kill_overdue_closures(
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
