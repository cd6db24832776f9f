//! Cancelling a job: the request written into the job's slot and the poke
//! of its worker, the verdict carried out (`job cancelled` or `job kept`),
//! and the kill of a closure job's worker after `--kill-grace`.
//!
//! Never signals a pid read from the scoreboard, and never signals a job
//! itself: the worker, the handler's parent, kills the job's group only if
//! the request names its current job; a closure worker kills itself only
//! if the kill request names the job it runs when the poke lands.

use std::time::{Duration, Instant};

use super::verdict::{By, Judged};
use super::workers::Workers;
use crate::hooks::{DisconnectReason, Verdict};
use crate::scoreboard::{CancelReason, Counter, JobKind, JobView, Scoreboard};

impl From<DisconnectReason> for CancelReason {
    fn from(r: DisconnectReason) -> CancelReason {
        match r {
            DisconnectReason::ClientClosed => CancelReason::ClientClosed,
            DisconnectReason::ClientReset => CancelReason::ClientReset,
        }
    }
}

/// A closure job asked to cancel: its worker is killed if it still runs
/// the job at `at`.
struct PendingKill {
    slot: usize,
    job: JobView,
    at: Instant,
}

/// Cancels jobs and follows up on closure jobs that ignore it.
#[derive(Default)]
pub(crate) struct Canceller {
    pending_kills: Vec<PendingKill>,
}

impl Canceller {
    /// When the next closure kill is due.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.pending_kills.iter().map(|k| k.at).min()
    }

    /// The worker of `slot` is gone: nothing left to kill there.
    pub(crate) fn forget_slot(&mut self, slot: usize) {
        self.pending_kills.retain(|k| k.slot != slot);
    }

    /// Asks the worker of `slot` to cancel `job`, if the slot still runs
    /// that very job, and pokes it. Returns whether the request was made
    /// and delivered.
    pub(crate) fn cancel(
        &mut self,
        sb: &Scoreboard,
        workers: &dyn Workers,
        slot: usize,
        job: &JobView,
        reason: CancelReason,
        kill_grace: Duration,
    ) -> bool {
        if workers.pid(slot).is_none() || !sb.slot(slot).request_cancel(job, reason) {
            return false;
        }
        if let Err(e) = workers.poke(slot) {
            tracing::warn!(slot, job = job.job_id, error = %e, "failed to poke the worker to cancel its job");
            return false;
        }
        if job.kind == JobKind::Closure {
            self.pending_kills.push(PendingKill {
                slot,
                job: *job,
                at: Instant::now() + kill_grace,
            });
        }
        true
    }

    /// Carries out a verdict: cancels (and logs `job cancelled`) or logs
    /// that the job is kept.
    pub(crate) fn carry_out(
        &mut self,
        sb: &Scoreboard,
        workers: &dyn Workers,
        kill_grace: Duration,
        j: &Judged,
        verdict: Verdict,
        by: By,
    ) {
        let peer = j.job.peer.map(|p| p.to_string()).unwrap_or_default();
        match verdict {
            Verdict::Keep => {
                tracing::info!(slot = j.slot, pid = j.pid.as_raw(), job = j.job.job_id, peer = %peer, reason = %j.reason.as_str(), verdict_by = by, "client disconnected; job kept");
            }
            Verdict::Cancel => {
                // The same worker must still run the same job.
                if workers.pid(j.slot) != Some(j.pid) {
                    return;
                }
                if self.cancel(sb, workers, j.slot, &j.job, j.reason.into(), kill_grace) {
                    sb.header().count(Counter::CancelledDisconnect);
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

    /// Closure jobs asked to cancel that still run after the kill grace:
    /// their worker is asked to kill itself (and is replaced).
    pub(crate) fn kill_overdue_closures(
        &mut self,
        sb: &Scoreboard,
        workers: &dyn Workers,
        now: Instant,
    ) {
        self.pending_kills.retain(|k| {
            if k.at > now {
                return true;
            }
            let board = sb.slot(k.slot);
            if let Some(pid) = workers.pid(k.slot)
                && board.request_kill(&k.job)
            {
                tracing::warn!(
                    slot = k.slot,
                    pid = pid.as_raw(),
                    job = k.job.job_id,
                    "closure job ignored its cancellation; killing its worker"
                );
                // The worker kills itself only if it still runs this very
                // job when the poke lands (Slot::arm_kill_switch).
                let _ = workers.poke(k.slot);
            }
            false
        });
    }
}
