//! [`JobEnd`]: the one record of a job that ended, built where the job
//! ended (its worker, or the supervisor for a job lost with its worker),
//! from which the `job ended` log line, the access-log line and the
//! scoreboard's totals are all written.
//!
//! Plain data and its writing; nothing here signals or waits.

use std::net::SocketAddr;

use nix::sys::signal::Signal;
use nix::sys::wait::WaitStatus;

use crate::logfiles::{self, AccessRecord};
use crate::scoreboard::{CancelReason, CancelRequest, Counter, Header, SeenBy};
use crate::sys::{ChildUsage, TcpProgress};

/// How a job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Ran to its end with success.
    Done = 0,
    /// Could not start, exited non-zero, died of a signal it was not sent,
    /// or was lost with its worker.
    Failed = 1,
    /// Cancelled (client gone, timeout or shutdown).
    Cancelled = 2,
}

/// Why a job did not simply run to its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EndReason {
    /// It was asked to stop.
    Cancel(CancelReason),
    /// Its worker died in the middle of it.
    WorkerDied,
    /// Killed by its `--job-limit cpu=` (SIGXCPU, or SIGKILL past it).
    LimitCpu,
    /// Killed by its `--job-limit fsize=` (SIGXFSZ).
    LimitFsize,
}

impl EndReason {
    fn as_str(self) -> &'static str {
        match self {
            EndReason::Cancel(r) => r.as_str(),
            EndReason::WorkerDied => "worker-died",
            EndReason::LimitCpu => "limit-cpu",
            EndReason::LimitFsize => "limit-fsize",
        }
    }
}

/// How the job's process (or closure) finished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Finish {
    /// The handler exited with this code.
    Exited(i32),
    /// The handler died of this signal.
    Signaled(Signal),
    /// Anything else, as text: a closure's result, an exec or wait error,
    /// a worker that died.
    Other(String),
}

impl Finish {
    /// From a reaped handler's status.
    pub(crate) fn from_wait(st: &nix::Result<WaitStatus>) -> Finish {
        match st {
            Ok(WaitStatus::Exited(_, c)) => Finish::Exited(*c),
            Ok(WaitStatus::Signaled(_, s, _)) => Finish::Signaled(*s),
            Ok(other) => Finish::Other(format!("{other:?}")),
            Err(e) => Finish::Other(format!("wait error: {e}")),
        }
    }

    /// The readable status: `exit 0`, `signal SIGTERM`, or the text.
    pub(crate) fn describe(&self) -> String {
        match self {
            Finish::Exited(c) => format!("exit {c}"),
            Finish::Signaled(s) => format!("signal {}", s.as_str()),
            Finish::Other(t) => t.clone(),
        }
    }
}

/// A job that ended.
#[derive(Debug, Clone)]
pub(crate) struct JobEnd {
    /// Job id.
    pub(crate) job_id: u64,
    /// Worker slot.
    pub(crate) slot: usize,
    /// Worker pid.
    pub(crate) pid: i32,
    /// The client.
    pub(crate) peer: Option<SocketAddr>,
    /// The balancer, when a PROXY header named the client.
    pub(crate) proxy_peer: Option<SocketAddr>,
    /// How long it ran.
    pub(crate) duration_ms: u64,
    /// How it ended.
    pub(crate) outcome: Outcome,
    /// Why, when it did not run to its end by itself.
    pub(crate) reason: Option<EndReason>,
    /// How its process finished.
    pub(crate) finish: Finish,
    /// What the client had been sent and had acknowledged at the end
    /// (`TCP_INFO`), when it could be read.
    pub(crate) progress: Option<TcpProgress>,
    /// When the client closed (FIN) during a job that was not cancelled
    /// for it (it had its answer): ms from the job's start.
    pub(crate) client_closed_after_ms: Option<u64>,
    /// For a job cancelled on a disconnect: from the hang-up to its
    /// detection, in µs (as on its `job cancelled` line).
    pub(crate) seen_after_us: Option<u32>,
    /// A disconnect's cancellation: who saw the hang-up, the hang-up to
    /// its detection and to the job's tree gone, µs (into the histograms).
    pub(crate) latency: Option<(SeenBy, u64, u64)>,
    /// CPU time and peak memory of the job's processes (the handler and
    /// every descendant reaped; for a closure, the worker's CPU time while
    /// it ran), when known.
    pub(crate) usage: Option<ChildUsage>,
}

impl JobEnd {
    /// The outcome's name in logs: `timeout` for a job cancelled by
    /// `--job-timeout`.
    fn outcome_name(&self) -> &'static str {
        match (self.outcome, self.reason) {
            (Outcome::Cancelled, Some(EndReason::Cancel(CancelReason::Timeout))) => "timeout",
            (Outcome::Cancelled, _) => "cancelled",
            (Outcome::Done, _) => "done",
            (Outcome::Failed, _) => "failed",
        }
    }

    /// The access-log record of this job.
    fn access_record<'a>(&'a self, peer: &'a str, status: &'a str) -> AccessRecord<'a> {
        AccessRecord {
            job_id: self.job_id,
            slot: self.slot,
            pid: self.pid as u32,
            peer,
            proxy_peer: self.proxy_peer.map(|p| p.to_string()),
            duration_ms: self.duration_ms,
            outcome: self.outcome_name(),
            reason: self.reason.map(EndReason::as_str),
            status,
            exit_code: match self.finish {
                Finish::Exited(c) => Some(c),
                _ => None,
            },
            signal: match self.finish {
                Finish::Signaled(s) => Some(s.as_str()),
                _ => None,
            },
            bytes_sent: self.progress.map(|p| p.bytes_sent),
            bytes_acked: self.progress.map(|p| p.bytes_acked),
            client_closed_after_ms: self.client_closed_after_ms,
            seen_after_ms: self.seen_after_us.map(|us| f64::from(us) / 1e3),
            cpu_user_ms: self.usage.map(|u| u.user_us / 1000),
            cpu_sys_ms: self.usage.map(|u| u.sys_us / 1000),
            max_rss_kib: self.usage.map(|u| u.max_rss_kib).filter(|&k| k > 0),
        }
    }

    /// Counts the job in the scoreboard's totals, writes the access-log
    /// line and logs `job ended`.
    pub(crate) fn record(&self, header: &Header) {
        self.record_then(header, || {});
    }

    /// [`JobEnd::record`], calling `committed` as soon as the record is
    /// written (the counters and the access log line), before the log
    /// line, whose write may block on a slow stderr: the worker marks its
    /// slot then, so that the window in which its death would have the job
    /// recorded twice is a few instructions.
    pub(crate) fn record_then(&self, header: &Header, committed: impl FnOnce()) {
        header.count(Counter::JobsServed);
        header.observe_duration(self.outcome as usize, self.duration_ms.saturating_mul(1000));
        if let Some(u) = self.usage {
            header.note_rss(u.max_rss_kib);
        }
        if let (Outcome::Cancelled, Some(EndReason::Cancel(r))) = (self.outcome, self.reason) {
            header.note_cancel(
                self.job_id,
                r,
                self.latency.map_or(SeenBy::Nobody, |l| l.0),
                self.latency.map(|(_, d, g)| (d, g)),
                self.peer,
            );
        }
        if let Some((by, detect, gone)) = self.latency {
            use crate::scoreboard::Latency;
            let (d, g) = match by {
                SeenBy::WorkerWatch => (Latency::DetectWatch, Latency::GoneWatch),
                _ => (Latency::DetectScan, Latency::GoneScan),
            };
            header.observe(d, detect);
            header.observe(g, gone);
        }
        if let Some(u) = self.usage {
            header.add(Counter::CpuUserMs, u.user_us / 1000);
            header.add(Counter::CpuSysMs, u.sys_us / 1000);
        }
        match (self.outcome, self.reason) {
            (Outcome::Failed, _) => header.count(Counter::JobsFailed),
            (Outcome::Cancelled, Some(EndReason::Cancel(r))) => {
                for c in cancel_counters(r) {
                    header.count(*c);
                }
            }
            _ => {}
        }
        let peer = self.peer.map(|p| p.to_string()).unwrap_or_default();
        let status = self.finish.describe();
        logfiles::access(&self.access_record(&peer, &status));
        committed();
        let (slot, pid, job, duration_ms) = (self.slot, self.pid, self.job_id, self.duration_ms);
        let outcome = self.outcome_name();
        let reason = self.reason.map_or("-", EndReason::as_str);
        let (sent, acked) = progress_fields(self.progress);
        let (cpu_user, cpu_sys, rss) = match self.usage {
            Some(u) => (
                (u.user_us / 1000).to_string(),
                (u.sys_us / 1000).to_string(),
                if u.max_rss_kib > 0 {
                    u.max_rss_kib.to_string()
                } else {
                    "-".into()
                },
            ),
            None => ("-".into(), "-".into(), "-".into()),
        };
        let closed = self
            .client_closed_after_ms
            .map_or_else(|| "-".to_string(), |ms| ms.to_string());
        if let Some(us) = self.seen_after_us {
            let seen_after_ms = f64::from(us) / 1e3;
            tracing::info!(slot, pid, job, peer = %peer, duration_ms, status = ?status, outcome = %outcome, reason = %reason, bytes_sent = %sent, bytes_acked = %acked, seen_after_ms = format_args!("{seen_after_ms:.1}"), cpu_user_ms = %cpu_user, cpu_sys_ms = %cpu_sys, max_rss_kib = %rss, "job ended");
        } else if self.reason == Some(EndReason::WorkerDied) {
            tracing::warn!(slot, pid, job, peer = %peer, duration_ms, status = ?status, outcome = %outcome, reason = %reason, bytes_sent = %sent, bytes_acked = %acked, cpu_user_ms = %cpu_user, cpu_sys_ms = %cpu_sys, max_rss_kib = %rss, "job ended");
        } else if self.client_closed_after_ms.is_some() {
            tracing::info!(slot, pid, job, peer = %peer, duration_ms, status = ?status, outcome = %outcome, reason = %reason, bytes_sent = %sent, bytes_acked = %acked, client_closed_after_ms = %closed, cpu_user_ms = %cpu_user, cpu_sys_ms = %cpu_sys, max_rss_kib = %rss, "job ended");
        } else {
            tracing::info!(slot, pid, job, peer = %peer, duration_ms, status = ?status, outcome = %outcome, reason = %reason, bytes_sent = %sent, bytes_acked = %acked, cpu_user_ms = %cpu_user, cpu_sys_ms = %cpu_sys, max_rss_kib = %rss, "job ended");
        }
    }
}

/// The counters a cancellation for `r` adds to.
fn cancel_counters(r: CancelReason) -> &'static [Counter] {
    match r {
        CancelReason::ClientClosed => {
            &[Counter::CancelledDisconnect, Counter::CancelledClientClosed]
        }
        CancelReason::ClientReset => &[Counter::CancelledDisconnect, Counter::CancelledClientReset],
        CancelReason::ClientUnresponsive => &[
            Counter::CancelledDisconnect,
            Counter::CancelledClientUnresponsive,
        ],
        CancelReason::Timeout => &[Counter::CancelledTimeout],
        CancelReason::Shutdown => &[Counter::CancelledShutdown],
    }
}

/// `bytes_sent` and `bytes_acked` as log values (`-` when unknown).
fn progress_fields(p: Option<TcpProgress>) -> (String, String) {
    match p {
        Some(p) => (p.bytes_sent.to_string(), p.bytes_acked.to_string()),
        None => ("-".into(), "-".into()),
    }
}

/// Logs `job cancelled`: the moment jobd acts on a cancel request (the
/// worker, as it signals the job; or the supervisor, for a closure job
/// whose worker it had to kill), always before the job's `job ended`.
pub(crate) fn log_cancelled(
    slot: usize,
    pid: i32,
    job: u64,
    peer: Option<SocketAddr>,
    req: &CancelRequest,
    ran_ms: u64,
    progress: Option<TcpProgress>,
) {
    let peer = peer.map(|p| p.to_string()).unwrap_or_default();
    let (sent, acked) = progress_fields(progress);
    let (reason, by) = (req.reason.as_str(), req.by.as_str());
    if req.seen_by == SeenBy::Nobody {
        tracing::info!(slot, pid, job, peer = %peer, reason = %reason, ran_ms, verdict_by = by, bytes_sent = %sent, bytes_acked = %acked, "job cancelled");
    } else {
        let seen_after_ms = f64::from(req.seen_after_us) / 1e3;
        tracing::info!(
            slot,
            pid,
            job,
            peer = %peer,
            reason = %reason,
            ran_ms,
            seen_after_ms = format_args!("{seen_after_ms:.1}"),
            seen_by = req.seen_by.as_str(),
            verdict_by = by,
            bytes_sent = %sent,
            bytes_acked = %acked,
            "job cancelled"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn end(outcome: Outcome, reason: Option<EndReason>, finish: Finish) -> JobEnd {
        JobEnd {
            job_id: 7,
            slot: 1,
            pid: 42,
            peer: Some("127.0.0.1:5000".parse().unwrap()),
            proxy_peer: None,
            duration_ms: 12,
            outcome,
            reason,
            finish,
            progress: None,
            client_closed_after_ms: None,
            seen_after_us: None,
            latency: None,
            usage: None,
        }
    }

    #[test]
    fn timeout_is_named_and_exit_fields_split() {
        let e = end(
            Outcome::Cancelled,
            Some(EndReason::Cancel(CancelReason::Timeout)),
            Finish::Signaled(Signal::SIGTERM),
        );
        let r = e.access_record("p", "signal SIGTERM");
        assert_eq!(r.outcome, "timeout");
        assert_eq!(r.reason, Some("timeout"));
        assert_eq!(r.signal, Some("SIGTERM"));
        assert_eq!(r.exit_code, None);
        let d = end(Outcome::Failed, None, Finish::Exited(3));
        let r = d.access_record("p", "exit 3");
        assert_eq!((r.exit_code, r.signal, r.reason), (Some(3), None, None));
        assert_eq!(r.outcome, "failed");
    }

    #[test]
    fn a_job_lost_with_its_worker_is_a_failure() {
        let e = end(
            Outcome::Failed,
            Some(EndReason::WorkerDied),
            Finish::Other("worker signal SIGKILL".into()),
        );
        let r = e.access_record("p", "x");
        assert_eq!((r.outcome, r.reason), ("failed", Some("worker-died")));
        assert_eq!((r.exit_code, r.signal), (None, None));
    }
}
