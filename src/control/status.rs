//! `jobd status`: reads a scoreboard file and renders it as a table or JSON.
//!
//! Read-only: it maps the file without write access and signals nothing.

use std::path::Path;

use serde::Serialize;

use crate::scoreboard::{Counter, Scoreboard, now_unix_ms};
pub use crate::scoreboard::{ScoreboardError, SlotState};

/// One slot as shown by `jobd status`.
#[derive(Debug, Serialize)]
pub struct SlotStatus {
    /// Slot index.
    pub slot: usize,
    /// Worker pid (0 when empty).
    pub pid: i32,
    /// idle, busy, starting, exiting or empty.
    pub state: SlotState,
    /// Worker generation.
    pub generation: u32,
    /// Current job id.
    pub job_id: Option<u64>,
    /// Current client (the one a PROXY header named, behind a balancer).
    pub peer: Option<String>,
    /// The balancer's address, behind `--proxy-protocol`.
    pub proxy_peer: Option<String>,
    /// Current job's age in milliseconds.
    pub job_age_ms: Option<u64>,
    /// Jobs this worker served.
    pub jobs_served: u64,
    /// CPU time (user and system) the running job has used so far, ms:
    /// its handler's and that of the descendants the handler reaped, read
    /// from `/proc` (None for closure jobs, or when the handler is no
    /// longer the worker's child).
    pub job_cpu_ms: Option<u64>,
}

/// Pool totals.
#[derive(Debug, Serialize)]
pub struct Totals {
    /// Live workers.
    pub workers: usize,
    /// Idle workers.
    pub idle: usize,
    /// Busy workers.
    pub busy: usize,
    /// Starting workers.
    pub starting: usize,
    /// Jobs ended since start.
    pub jobs_served: u64,
    /// Jobs that failed.
    pub jobs_failed: u64,
    /// Jobs cancelled because the client went away.
    pub cancelled_disconnect: u64,
    /// Of those: the client closed (FIN).
    pub cancelled_client_closed: u64,
    /// Of those: the client reset the connection.
    pub cancelled_client_reset: u64,
    /// Of those: the client stopped acknowledging (TCP_USER_TIMEOUT).
    pub cancelled_client_unresponsive: u64,
    /// Jobs cancelled by shutdown.
    pub cancelled_shutdown: u64,
    /// Jobs cancelled by `--job-timeout`.
    pub timeouts: u64,
    /// Times the pool hit `--max-children` with every worker busy.
    pub max_children_reached: u64,
    /// `--max-children`.
    pub max_children: u32,
    /// Current minimum of workers (`--prefork`, moved by SIGTTIN / SIGTTOU).
    pub min_workers: u32,
    /// Connections waiting in the listen queue (sock_diag; None when it
    /// could not be read).
    pub listen_queue: Option<u32>,
    /// The listen backlog as the kernel applied it.
    pub listen_backlog: Option<u32>,
    /// Clients gone before their job started.
    pub gone_before_start: u64,
    /// User CPU time of the jobs that ended, ms.
    pub cpu_user_ms: u64,
    /// System CPU time of the jobs that ended, ms.
    pub cpu_sys_ms: u64,
    /// Workers forked since start.
    pub workers_spawned: u64,
    /// Failures of the disconnect detection path that the next scan
    /// retried (out of descriptors, netlink errors).
    pub detect_failures: u64,
    /// Failed `accept` calls in workers (EMFILE, ENOBUFS...).
    pub accept_failures: u64,
    /// Connections closed at once by `--max-per-source`.
    pub per_source_refused: u64,
    /// Disconnect scans done, and their total duration (µs).
    pub scans: u64,
    /// Total duration of the scans, µs.
    pub scan_us: u64,
    /// The largest peak memory of a job that ended, KiB.
    pub max_job_rss_kib: u64,
    /// When the supervisor started, unix ms.
    pub started_unix_ms: u64,
    /// Disconnect verdicts by who decided (`policy`, `callback`,
    /// `hook-program`): (by, kept, cancelled).
    pub verdicts: Vec<(&'static str, u64, u64)>,
}

/// A cancellation latency histogram (jobs cancelled on a disconnect).
#[derive(Debug, Serialize)]
pub struct LatencyHistogram {
    /// `detection` (hang-up to its detection) or `gone` (hang-up to the
    /// job's whole tree gone).
    pub what: &'static str,
    /// Who saw the hang-up: `worker-watch` or `scan`.
    pub by: &'static str,
    /// Upper bounds in seconds (the last is +Inf, shown as null in JSON)
    /// and the count in each bucket (not cumulative).
    pub buckets: Vec<(Option<f64>, u64)>,
    /// The sum of the observations, seconds.
    pub sum_seconds: f64,
    /// How many.
    pub count: u64,
}

/// A job duration histogram, for one outcome.
#[derive(Debug, Serialize)]
pub struct DurationHistogram {
    /// `done`, `failed` or `cancelled`.
    pub outcome: &'static str,
    /// Upper bounds in seconds (the last is +Inf, shown as null in JSON)
    /// and the count in each bucket (not cumulative).
    pub buckets: Vec<(Option<f64>, u64)>,
    /// The sum of the durations, seconds.
    pub sum_seconds: f64,
    /// How many jobs.
    pub count: u64,
}

/// One of the last cancellations.
#[derive(Debug, Serialize)]
pub struct RecentCancellation {
    /// Job id.
    pub job_id: u64,
    /// When (unix ms).
    pub at_unix_ms: u64,
    /// The client.
    pub peer: Option<String>,
    /// Why (`client-closed`, `timeout`...).
    pub reason: &'static str,
    /// Who saw the hang-up (`worker-watch`, `scan`; `nobody` for a
    /// timeout or a shutdown).
    pub seen_by: &'static str,
    /// Hang-up to detection, ms.
    pub seen_after_ms: Option<f64>,
    /// Hang-up to the job's tree gone, ms.
    pub gone_ms: Option<f64>,
}

/// The whole status.
#[derive(Debug, Serialize)]
pub struct Status {
    /// Supervisor pid, 0 when stopped.
    pub supervisor_pid: i32,
    /// Whether the supervisor process is alive.
    pub running: bool,
    /// Listen address.
    pub listen: Option<String>,
    /// Current worker generation.
    pub generation: u32,
    /// Job containment in force: `cgroup` or `subreaper` (`unknown` with
    /// `--prefork 0` or before the pool starts).
    pub containment: &'static str,
    /// Totals.
    pub totals: Totals,
    /// Slots (empty slots omitted).
    pub slots: Vec<SlotStatus>,
    /// Cancellation latencies since start.
    pub latency: Vec<LatencyHistogram>,
    /// Job durations since start, by outcome.
    pub job_durations: Vec<DurationHistogram>,
    /// The last cancellations, newest first (at most 8).
    pub recent_cancellations: Vec<RecentCancellation>,
}

/// Reads the scoreboard at `path`.
///
/// # Errors
///
/// [`ScoreboardError::Open`] when the file cannot be opened or mapped,
/// [`ScoreboardError::NotAScoreboard`] when it is not a jobd scoreboard.
pub fn read(path: &Path) -> Result<Status, ScoreboardError> {
    let sb = Scoreboard::open_read(path)?;
    Ok(snapshot(&sb))
}

/// A snapshot of a mapped scoreboard.
pub(crate) fn snapshot(sb: &Scoreboard) -> Status {
    let h = sb.header();
    let now = now_unix_ms();
    let mut slots = Vec::new();
    let (mut idle, mut busy, mut starting) = (0, 0, 0);
    for (i, s) in sb.slots() {
        let state = s.state();
        if state == SlotState::Empty {
            continue;
        }
        let job = s.job();
        match state {
            SlotState::Idle => idle += 1,
            SlotState::Busy => busy += 1,
            SlotState::Starting => starting += 1,
            _ => {}
        }
        slots.push(SlotStatus {
            slot: i,
            pid: s.pid(),
            state,
            generation: s.generation(),
            job_id: job.map(|j| j.job_id),
            peer: job.and_then(|j| j.shown_peer()).map(|p| p.to_string()),
            proxy_peer: job.and_then(|j| j.proxy_peer()).map(|p| p.to_string()),
            job_age_ms: job.map(|j| now.saturating_sub(j.start_unix_ms)),
            jobs_served: s.jobs_served(),
            job_cpu_ms: job.and_then(|j| handler_cpu_ms(s.pid(), j.pgid)),
        });
    }
    let pid = h.supervisor_pid();
    let queue = sb.listen().filter(|_| pid > 0).and_then(listen_queue);
    let running = pid > 0 && nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok();
    Status {
        supervisor_pid: pid,
        running,
        listen: sb.listen().map(|a| a.to_string()),
        generation: h.generation(),
        containment: h.containment(),
        totals: Totals {
            workers: slots.len(),
            idle,
            busy,
            starting,
            jobs_served: h.get(Counter::JobsServed),
            jobs_failed: h.get(Counter::JobsFailed),
            cancelled_disconnect: h.get(Counter::CancelledDisconnect),
            cancelled_client_closed: h.get(Counter::CancelledClientClosed),
            cancelled_client_reset: h.get(Counter::CancelledClientReset),
            cancelled_client_unresponsive: h.get(Counter::CancelledClientUnresponsive),
            cancelled_shutdown: h.get(Counter::CancelledShutdown),
            timeouts: h.get(Counter::CancelledTimeout),
            max_children_reached: h.get(Counter::MaxChildrenReached),
            max_children: h.max_children(),
            min_workers: h.min_workers(),
            listen_queue: queue.map(|q| q.0),
            listen_backlog: queue.map(|q| q.1),
            gone_before_start: h.get(Counter::GoneBeforeStart),
            cpu_user_ms: h.get(Counter::CpuUserMs),
            cpu_sys_ms: h.get(Counter::CpuSysMs),
            workers_spawned: h.get(Counter::WorkersSpawned),
            detect_failures: h.get(Counter::DetectFailures),
            accept_failures: h.get(Counter::AcceptFailures),
            per_source_refused: h.get(Counter::PerSourceRefused),
            scans: h.get(Counter::Scans),
            scan_us: h.get(Counter::ScanUs),
            max_job_rss_kib: h.max_rss_kib(),
            verdicts: h.verdicts(),
            started_unix_ms: h.started_unix_ms(),
        },
        slots,
        latency: latencies(h),
        job_durations: durations(h),
        recent_cancellations: h
            .recent_cancels()
            .into_iter()
            .map(|c| RecentCancellation {
                job_id: c.job_id,
                at_unix_ms: c.at_unix_ms,
                peer: c.peer.map(|p| p.to_string()),
                reason: c.reason,
                seen_by: c.seen_by,
                seen_after_ms: c.seen_after_us.map(|us| us as f64 / 1e3),
                gone_ms: c.gone_us.map(|us| us as f64 / 1e3),
            })
            .collect(),
    }
}

/// A histogram's buckets as (upper bound in seconds, count), the last
/// one unbounded; its sum in seconds and its count.
fn buckets(h: &crate::scoreboard::Hist, bounds: &[u64; 10]) -> (Vec<(Option<f64>, u64)>, f64, u64) {
    let (b, sum_us, count) = h.read();
    let buckets = b
        .iter()
        .enumerate()
        .map(|(i, &n)| (bounds.get(i).map(|&us| us as f64 / 1e6), n))
        .collect();
    (buckets, sum_us as f64 / 1e6, count)
}

fn durations(h: &crate::scoreboard::Header) -> Vec<DurationHistogram> {
    ["done", "failed", "cancelled"]
        .into_iter()
        .enumerate()
        .map(|(i, outcome)| {
            let (buckets, sum_seconds, count) =
                buckets(h.duration(i), &crate::scoreboard::DURATION_BUCKETS_US);
            DurationHistogram {
                outcome,
                buckets,
                sum_seconds,
                count,
            }
        })
        .collect()
}

fn latencies(h: &crate::scoreboard::Header) -> Vec<LatencyHistogram> {
    use crate::scoreboard::{LATENCY_BUCKETS_US, Latency};
    [
        (Latency::DetectWatch, "detection", "worker-watch"),
        (Latency::DetectScan, "detection", "scan"),
        (Latency::GoneWatch, "gone", "worker-watch"),
        (Latency::GoneScan, "gone", "scan"),
    ]
    .into_iter()
    .map(|(which, what, by)| {
        let (buckets, sum_seconds, count) = buckets(h.latency(which), &LATENCY_BUCKETS_US);
        LatencyHistogram {
            what,
            by,
            buckets,
            sum_seconds,
            count,
        }
    })
    .collect()
}

/// The listener's accept queue length and backlog, over sock_diag (as
/// PHP-FPM's status shows its listen queue).
fn listen_queue(addr: std::net::SocketAddr) -> Option<(u32, u32)> {
    let mut d = crate::detect::sockdiag::SockDiag::open().ok()?;
    let socks = d.listen_queue(addr.port()).ok()?;
    let unspecified = |a: &std::net::SocketAddr| a.ip().is_unspecified();
    socks
        .iter()
        .find(|e| e.local == addr || (unspecified(&addr) && unspecified(&e.local)))
        .or_else(|| socks.first())
        .map(|e| (e.rqueue, e.wqueue))
}

/// The CPU time so far of the handler `pgid` of the worker `worker`, ms.
/// The slot's numbers are only a hint: the process must be the worker's
/// child and lead its own group, or nothing is shown.
fn handler_cpu_ms(worker: i32, pgid: i32) -> Option<u64> {
    if worker <= 0 || pgid <= 0 {
        return None;
    }
    let st = procfs::process::Process::new(pgid).ok()?.stat().ok()?;
    if st.ppid != worker || st.pgrp != pgid {
        return None;
    }
    let ticks = st.utime + st.stime + st.cutime.max(0) as u64 + st.cstime.max(0) as u64;
    Some(ticks.saturating_mul(1000) / procfs::ticks_per_second().max(1))
}

fn fmt_age(ms: u64) -> String {
    if ms < 10_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else if ms < 3_600_000 {
        format!("{}m{:02}s", ms / 60_000, (ms / 1000) % 60)
    } else {
        format!("{}h{:02}m", ms / 3_600_000, (ms / 60_000) % 60)
    }
}

impl Status {
    /// The human-readable table.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let state = if self.running {
            "running"
        } else {
            "not running"
        };
        out.push_str(&format!(
            "jobd {} (pid {}) on {}, generation {}, containment {}\n",
            state,
            self.supervisor_pid,
            self.listen.as_deref().unwrap_or("?"),
            self.generation,
            self.containment
        ));
        let t = &self.totals;
        out.push_str(&format!(
            "workers {} (min {}, max {})  idle {}  busy {}  starting {}  max children reached {}\n",
            t.workers,
            t.min_workers,
            t.max_children,
            t.idle,
            t.busy,
            t.starting,
            t.max_children_reached
        ));
        out.push_str(&format!(
            "jobs served {}  failed {}  cancelled {} (disconnect {}: closed {}, reset {}, unresponsive {}; timeout {}, shutdown {})  gone before start {}\n",
            t.jobs_served,
            t.jobs_failed,
            t.cancelled_disconnect
                .saturating_add(t.timeouts)
                .saturating_add(t.cancelled_shutdown),
            t.cancelled_disconnect,
            t.cancelled_client_closed,
            t.cancelled_client_reset,
            t.cancelled_client_unresponsive,
            t.timeouts,
            t.cancelled_shutdown,
            t.gone_before_start
        ));
        out.push_str(&format!(
            "jobs' CPU {} ms user, {} ms system\n",
            t.cpu_user_ms, t.cpu_sys_ms
        ));
        out.push_str(&format!(
            "faults: detection {}  accept {}  refused per source {}\n",
            t.detect_failures, t.accept_failures, t.per_source_refused
        ));
        let q = |v: Option<u32>| v.map(|n| n.to_string()).unwrap_or_else(|| "?".into());
        out.push_str(&format!(
            "listen queue {} (backlog {})\n\n",
            q(t.listen_queue),
            q(t.listen_backlog)
        ));
        out.push_str(&format!(
            "{:>5} {:>8} {:<9} {:>4} {:>10} {:<40} {:>8} {:>8} {:>8}\n",
            "SLOT", "PID", "STATE", "GEN", "JOB", "PEER", "AGE", "CPU", "SERVED"
        ));
        for s in &self.slots {
            out.push_str(&format!(
                "{:>5} {:>8} {:<9} {:>4} {:>10} {:<40} {:>8} {:>8} {:>8}\n",
                s.slot,
                s.pid,
                s.state.as_str(),
                s.generation,
                s.job_id
                    .map(|j| j.to_string())
                    .unwrap_or_else(|| "-".into()),
                s.peer.as_deref().unwrap_or("-"),
                s.job_age_ms.map(fmt_age).unwrap_or_else(|| "-".into()),
                s.job_cpu_ms
                    .map(|ms| format!("{:.2}s", ms as f64 / 1000.0))
                    .unwrap_or_else(|| "-".into()),
                s.jobs_served
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by `cargo fuzz` (scoreboard target): counters read from a
    /// corrupt file overflowed the cancellations' sum in the table (a
    /// panic in debug builds); it saturates now.
    #[test]
    fn render_survives_counters_at_their_limit() {
        let sb = Scoreboard::anonymous(1).unwrap();
        sb.header().add(Counter::CancelledDisconnect, u64::MAX);
        sb.header().add(Counter::CancelledTimeout, 1);
        sb.header().add(Counter::CancelledShutdown, 1);
        let text = snapshot(&sb).render();
        assert!(text.contains(&format!("cancelled {}", u64::MAX)), "{text}");
    }
}
