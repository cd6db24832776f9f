//! `--slow-job-log DURATION` (as PHP-FPM's slowlog, for any handler): once
//! a job has run longer than DURATION, one warning with its client, its
//! age and its process tree (each process's pid, state, CPU so far and
//! command line, read from `/proc`); never more than one per job. The last
//! [`RECENT`] reports are kept for `/status` (`--metrics-listen`).
//!
//! Reads only: the tree is the descendants of the slot's worker (our own
//! child, from our records), which are all the job's (the handler and
//! what the worker adopted as subreaper).

use std::collections::HashSet;
use std::time::Duration;

use nix::unistd::Pid;

/// One process as `/proc/PID/stat` and `cmdline` show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Proc {
    pub(super) pid: i32,
    pub(super) ppid: i32,
    pub(super) state: char,
    pub(super) cpu_ms: u64,
    pub(super) cmd: String,
}

fn read_proc(pid: i32, ticks: u64) -> Option<Proc> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let state = f.first()?.chars().next()?;
    let ppid = f.get(1)?.parse().ok()?;
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    let cmd = std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            String::from_utf8_lossy(&b)
                .trim_end_matches('\0')
                .replace('\0', " ")
        })
        .unwrap_or_default();
    Some(Proc {
        pid,
        ppid,
        state,
        cpu_ms: (utime + stime).saturating_mul(1000) / ticks.max(1),
        cmd,
    })
}

/// The descendants of `root` (not `root` itself) among `all`, parents
/// before children. Pure.
pub(super) fn descendants(root: i32, all: &[Proc]) -> Vec<Proc> {
    let mut out: Vec<Proc> = Vec::new();
    let mut frontier = vec![root];
    while let Some(p) = frontier.pop() {
        for c in all.iter().filter(|c| c.ppid == p && c.pid != root) {
            if !out.iter().any(|o| o.pid == c.pid) {
                out.push(c.clone());
                frontier.push(c.pid);
            }
        }
    }
    out
}

fn all_procs() -> Vec<Proc> {
    let ticks = procfs::ticks_per_second();
    std::fs::read_dir("/proc")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
                .filter_map(|pid| read_proc(pid, ticks))
                .collect()
        })
        .unwrap_or_default()
}

/// How many slow-job reports `/status` shows.
pub(super) const RECENT: usize = 8;

/// One slow-job report, as logged.
#[derive(Debug, Clone)]
pub(super) struct Report {
    pub(super) job_id: u64,
    pub(super) slot: usize,
    pub(super) peer: Option<std::net::SocketAddr>,
    /// The job's age when it was reported.
    pub(super) age: Duration,
    /// When it was reported (unix ms).
    pub(super) at_unix_ms: u64,
    /// The job's processes, parents first.
    pub(super) tree: Vec<Proc>,
}

/// The jobs reported already (kept only while they run), and the last
/// reports.
#[derive(Default)]
pub(super) struct SlowLog {
    reported: HashSet<u64>,
    recent: std::collections::VecDeque<Report>,
}

impl SlowLog {
    /// Reports each running job older than `after` once. `jobs` are the
    /// running jobs: (slot, worker pid from our records, job id, client,
    /// age).
    pub(super) fn check(
        &mut self,
        after: Duration,
        jobs: &[(usize, Pid, u64, Option<std::net::SocketAddr>, Duration)],
    ) {
        self.reported
            .retain(|id| jobs.iter().any(|(_, _, j, _, _)| j == id));
        let slow: Vec<_> = jobs
            .iter()
            .filter(|(_, _, id, _, age)| *age >= after && !self.reported.contains(id))
            .collect();
        if slow.is_empty() {
            return;
        }
        let all = all_procs();
        for (slot, worker, id, peer, age) in slow {
            self.reported.insert(*id);
            let procs = descendants(worker.as_raw(), &all);
            let tree: Vec<String> = procs
                .iter()
                .map(|p| {
                    format!(
                        "pid={} ppid={} state={} cpu_ms={} cmd={:?}",
                        p.pid, p.ppid, p.state, p.cpu_ms, p.cmd
                    )
                })
                .collect();
            tracing::warn!(
                slot,
                pid = worker.as_raw(),
                job = id,
                peer = %peer.map(|p| p.to_string()).unwrap_or_default(),
                age_ms = age.as_millis() as u64,
                processes = tree.len(),
                tree = %tree.join("; "),
                "slow job: running longer than --slow-job-log"
            );
            if self.recent.len() == RECENT {
                self.recent.pop_front();
            }
            self.recent.push_back(Report {
                job_id: *id,
                slot: *slot,
                peer: *peer,
                age: *age,
                at_unix_ms: crate::scoreboard::now_unix_ms(),
                tree: procs,
            });
        }
    }

    /// The last reports, newest first.
    pub(super) fn recent(&self) -> impl Iterator<Item = &Report> {
        self.recent.iter().rev()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pid: i32, ppid: i32) -> Proc {
        Proc {
            pid,
            ppid,
            state: 'S',
            cpu_ms: 0,
            cmd: format!("p{pid}"),
        }
    }

    #[test]
    fn the_tree_is_the_workers_descendants() {
        let all = vec![
            p(1, 0),
            p(10, 1),
            p(11, 10),
            p(12, 11),
            p(13, 10),
            p(20, 1),
            p(21, 20),
        ];
        let d: Vec<i32> = descendants(10, &all).iter().map(|p| p.pid).collect();
        let mut sorted = d.clone();
        sorted.sort();
        assert_eq!(sorted, vec![11, 12, 13]);
        assert!(d.iter().position(|&x| x == 11) < d.iter().position(|&x| x == 12));
        assert!(descendants(21, &all).is_empty());
    }
}
