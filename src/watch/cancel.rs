//! Cancelling a job: the request written into the job's slot and the poke
//! of its worker, the verdict carried out (`job cancelled` or `job kept`),
//! the kill of a closure job's worker after `--kill-grace`, and of a
//! handler job's worker that did not carry out its cancel in time (a
//! stopped worker).
//!
//! Never signals a pid read from the scoreboard, and never signals a job
//! itself: the worker, the handler's parent, kills the job's group only if
//! the request names its current job; a closure worker kills itself only
//! if the kill request names the job it runs when the poke lands.

use std::time::{Duration, Instant};

use super::verdict::{By, Judged};
use super::workers::Workers;
use crate::hooks::{DisconnectReason, Verdict};
use crate::scoreboard::{CancelReason, CancelRequest, JobKind, JobView, Scoreboard};

impl From<DisconnectReason> for CancelReason {
    fn from(r: DisconnectReason) -> CancelReason {
        match r {
            DisconnectReason::ClientClosed => CancelReason::ClientClosed,
            DisconnectReason::ClientReset => CancelReason::ClientReset,
            DisconnectReason::ClientUnresponsive => CancelReason::ClientUnresponsive,
        }
    }
}

/// How long after the kill grace a handler job still running after its
/// cancel request makes the supervisor kill its worker.
const HANDLER_FOLLOW_UP: Duration = Duration::from_millis(500);

/// A job asked to cancel: its worker is killed if it still runs the job at
/// `at`.
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
        req: CancelRequest,
        kill_grace: Duration,
    ) -> bool {
        if workers.pid(slot).is_none() || !sb.slot(slot).request_cancel(job, req) {
            return false;
        }
        if let Err(e) = workers.poke(slot) {
            tracing::warn!(slot, job = job.job_id, error = %e, "failed to poke the worker to cancel its job");
            return false;
        }
        // A closure is followed up at the kill grace; a handler job is its
        // worker's to end (it SIGKILLs the job at the kill grace), and is
        // followed up only if the worker has not done so a while later.
        let at = match job.kind {
            JobKind::Closure => kill_grace,
            _ => kill_grace + HANDLER_FOLLOW_UP,
        };
        self.pending_kills.push(PendingKill {
            slot,
            job: *job,
            at: Instant::now() + at,
        });
        true
    }

    /// Carries out a verdict: asks the worker to cancel (the worker logs
    /// `job cancelled` when it acts), or logs that the job is kept.
    pub(crate) fn carry_out(
        &mut self,
        sb: &Scoreboard,
        workers: &dyn Workers,
        kill_grace: Duration,
        j: &Judged,
        verdict: Verdict,
        by: By,
    ) {
        let peer = j
            .job
            .shown_peer()
            .map(|p| p.to_string())
            .unwrap_or_default();
        sb.header().count_verdict(verdict == Verdict::Cancel, by);
        match verdict {
            Verdict::Keep => {
                tracing::info!(slot = j.slot, pid = j.pid.as_raw(), job = j.job.job_id, peer = %peer, reason = %j.reason.as_str(), verdict_by = by.as_str(), "client disconnected; job kept");
            }
            Verdict::Cancel => {
                // The same worker must still run the same job.
                if workers.pid(j.slot) != Some(j.pid) {
                    return;
                }
                let req = CancelRequest {
                    reason: j.reason.into(),
                    by,
                    seen_by: j.seen_by,
                    seen_after_us: j.seen_after_us,
                };
                if self.cancel(sb, workers, j.slot, &j.job, req, kill_grace) {
                    tracing::debug!(slot = j.slot, job = j.job.job_id, reason = %j.reason.as_str(), verdict_by = by.as_str(), "cancel requested");
                }
            }
        }
    }

    /// Closure jobs asked to cancel that still run after the kill grace:
    /// their worker is asked to kill itself (and is replaced).
    pub(crate) fn kill_overdue(&mut self, sb: &Scoreboard, workers: &dyn Workers, now: Instant) {
        self.pending_kills.retain(|k| {
            if k.at > now {
                return true;
            }
            let board = sb.slot(k.slot);
            if k.job.kind != JobKind::Closure {
                // The worker (our own child) should have ended this job by
                // now; one that has not is stopped or stuck. It is killed,
                // and with it goes its job: the supervisor kills what a dead
                // worker leaves (its job cgroup, its adopted groups).
                if let Some(pid) = workers.pid(k.slot)
                    && board.still_runs(&k.job)
                {
                    tracing::warn!(
                        slot = k.slot,
                        pid = pid.as_raw(),
                        job = k.job.job_id,
                        stopped = workers.stopped(k.slot),
                        "the worker did not carry out the cancel within the kill grace; killing the worker and its job"
                    );
                    // Recorded first, so that the worker's death reads as
                    // planned (no crash-loop back-off).
                    board.request_kill(&k.job);
                    if let Err(e) = workers.kill(k.slot) {
                        tracing::error!(slot = k.slot, error = %e, "failed to kill the worker");
                    }
                }
                return false;
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scoreboard::VerdictBy;
    use crate::watch::testutil::{FakeWorkers, job, running};

    fn req(r: CancelReason) -> CancelRequest {
        CancelRequest::plain(r, VerdictBy::Policy)
    }

    #[test]
    fn cancel_writes_the_request_and_pokes_the_worker() {
        let sb = Scoreboard::anonymous(2).unwrap();
        let w = FakeWorkers::with(&[(1, 4242)]);
        let j = running(&sb, 1, job(7, JobKind::Handler));
        let mut c = Canceller::default();
        assert!(c.cancel(&sb, &w, 1, &j, req(CancelReason::Timeout), Duration::ZERO));
        assert_eq!(
            sb.slot(1).cancel_requested(7).map(|r| r.reason),
            Some(CancelReason::Timeout)
        );
        assert_eq!(w.pokes(), vec![1]);
        assert!(c.next_due().is_some(), "a handler job is followed up");
        // Its worker ended it in time: the follow-up kills nothing.
        sb.slot(1).end_job();
        c.kill_overdue(&sb, &w, Instant::now() + Duration::from_secs(5));
        assert!(w.kills().is_empty());
        assert_eq!(c.next_due(), None);
    }

    /// Defect 9 of issue 11: a stopped worker did not carry out a cancel
    /// until it resumed. After the kill grace (and a margin) the supervisor
    /// kills the worker, its own child, and the job goes with it.
    #[test]
    fn a_worker_that_does_not_end_its_cancelled_job_is_killed() {
        let sb = Scoreboard::anonymous(2).unwrap();
        let w = FakeWorkers::with(&[(1, 4242)]);
        let j = running(&sb, 1, job(7, JobKind::Handler));
        let mut c = Canceller::default();
        assert!(c.cancel(
            &sb,
            &w,
            1,
            &j,
            req(CancelReason::ClientReset),
            Duration::from_millis(100)
        ));
        c.kill_overdue(&sb, &w, Instant::now());
        assert!(w.kills().is_empty(), "not before the kill grace");
        c.kill_overdue(&sb, &w, Instant::now() + Duration::from_secs(1));
        assert_eq!(w.kills(), vec![1]);
    }

    /// Regression guard: a decision taken on a job that has since ended (or
    /// been replaced by the next job) must not cancel the slot's new job.
    #[test]
    fn cancel_of_a_stale_job_does_nothing() {
        let sb = Scoreboard::anonymous(1).unwrap();
        let w = FakeWorkers::with(&[(0, 4242)]);
        let old = running(&sb, 0, job(7, JobKind::Handler));
        sb.slot(0).end_job();
        let new = running(&sb, 0, job(8, JobKind::Handler));
        let mut c = Canceller::default();
        assert!(!c.cancel(
            &sb,
            &w,
            0,
            &old,
            req(CancelReason::ClientReset),
            Duration::ZERO
        ));
        assert_eq!(sb.slot(0).cancel_requested(new.job_id), None);
        assert_eq!(sb.slot(0).cancel_requested(old.job_id), None);
        assert!(w.pokes().is_empty());
        // An ending job is not cancelled either.
        sb.slot(0).job_ending();
        assert!(!c.cancel(
            &sb,
            &w,
            0,
            &new,
            req(CancelReason::ClientReset),
            Duration::ZERO
        ));
        assert!(w.pokes().is_empty());
    }

    #[test]
    fn no_worker_of_ours_no_cancel() {
        let sb = Scoreboard::anonymous(1).unwrap();
        let w = FakeWorkers::with(&[]);
        let j = running(&sb, 0, job(7, JobKind::Handler));
        let mut c = Canceller::default();
        assert!(!c.cancel(&sb, &w, 0, &j, req(CancelReason::Timeout), Duration::ZERO));
        assert_eq!(sb.slot(0).cancel_requested(7), None);
    }

    #[test]
    fn a_closure_that_ignores_its_cancel_gets_a_kill_request_for_that_job_only() {
        let sb = Scoreboard::anonymous(2).unwrap();
        let w = FakeWorkers::with(&[(0, 10), (1, 11)]);
        let a = running(&sb, 0, job(7, JobKind::Closure));
        let b = running(&sb, 1, job(8, JobKind::Closure));
        let mut c = Canceller::default();
        assert!(c.cancel(
            &sb,
            &w,
            0,
            &a,
            req(CancelReason::ClientClosed),
            Duration::ZERO
        ));
        assert!(c.cancel(
            &sb,
            &w,
            1,
            &b,
            req(CancelReason::ClientClosed),
            Duration::ZERO
        ));
        assert!(c.next_due().is_some());
        // Job 8 returns in time; job 7 does not.
        sb.slot(1).end_job();
        c.kill_overdue(&sb, &w, Instant::now());
        assert!(sb.slot(0).kill_requested(7));
        assert!(!sb.slot(1).kill_requested(8));
        assert_eq!(w.pokes(), vec![0, 1, 0]);
        assert_eq!(c.next_due(), None);
    }

    #[test]
    fn verdicts_are_carried_out_only_on_the_same_worker() {
        let sb = Scoreboard::anonymous(1).unwrap();
        let j = running(&sb, 0, job(7, JobKind::Handler));
        let judged = |pid| Judged {
            slot: 0,
            pid: nix::unistd::Pid::from_raw(pid),
            job: j,
            reason: DisconnectReason::ClientClosed,
            seen_after_us: 1500,
            seen_by: crate::scoreboard::SeenBy::Scan,
        };
        let mut c = Canceller::default();
        let w = FakeWorkers::with(&[(0, 50)]);
        c.carry_out(
            &sb,
            &w,
            Duration::ZERO,
            &judged(50),
            Verdict::Keep,
            VerdictBy::Callback,
        );
        assert_eq!(sb.slot(0).cancel_requested(7), None);
        // The slot's worker was replaced since the judgement: nothing.
        c.carry_out(
            &sb,
            &w,
            Duration::ZERO,
            &judged(49),
            Verdict::Cancel,
            VerdictBy::Policy,
        );
        assert_eq!(sb.slot(0).cancel_requested(7), None);
        c.carry_out(
            &sb,
            &w,
            Duration::ZERO,
            &judged(50),
            Verdict::Cancel,
            VerdictBy::Policy,
        );
        let r = sb.slot(0).cancel_requested(7).expect("a request");
        assert_eq!(r.reason, CancelReason::ClientClosed);
        assert_eq!((r.by, r.seen_after_us), (VerdictBy::Policy, 1500));
        assert_eq!(r.seen_by, crate::scoreboard::SeenBy::Scan);
    }
}
