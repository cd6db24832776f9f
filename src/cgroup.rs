//! Job containment in cgroup v2: each slot has a `worker` cgroup (its
//! worker lives there) and a `job` cgroup (its jobs run there), under
//! `<jobd's own cgroup>/jobd-<supervisor pid>/slot-<n>/`. A handler is
//! born inside `job` (`clone3` with `CLONE_INTO_CGROUP`: no window in which
//! it could fork outside, and no migration, which costs milliseconds). Ending or cancelling a job writes `cgroup.kill`,
//! which kills every process in it, however it left its process group;
//! "the job is gone" is `populated 0` in `cgroup.events`.
//!
//! The cgroup v2 mount is read from `/proc/self/mountinfo` and jobd's own
//! cgroup from `/proc/self/cgroup`, never assumed. Trees left by a jobd
//! that was SIGKILLed (`jobd-<pid>` of a pid that no longer exists) are
//! killed and removed at the next start. Paths come from the caller's own
//! slot index, never from the scoreboard.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The cgroup v2 mount point in a `/proc/self/mountinfo` text.
fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        let fstype = right.split_whitespace().next()?;
        let point = left.split_whitespace().nth(4)?;
        (fstype == "cgroup2").then(|| PathBuf::from(point))
    })
}

/// This process's cgroup v2 path in a `/proc/self/cgroup` text (the
/// `0::PATH` line).
fn own_cgroup(proc_cgroup: &str) -> Option<String> {
    proc_cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::").map(str::to_string))
}

/// Writes `value` to a cgroup control file.
fn write_control(path: &Path, value: &str) -> io::Result<()> {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)?
        .write_all(value.as_bytes())
}

/// Kills everything in the cgroup `dir` and its descendants, waits (at
/// most `patience`) until they are gone, and removes the directories,
/// deepest first. Errors are ignored: it is cleanup.
fn kill_and_remove(dir: &Path, patience: Duration) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                kill_and_remove(&e.path(), patience);
            }
        }
    }
    let _ = write_control(&dir.join("cgroup.kill"), "1");
    wait_empty(dir, Instant::now() + patience);
    let _ = std::fs::remove_dir(dir);
}

/// Whether the cgroup `dir` holds no process (`populated 0`).
fn is_empty(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("cgroup.events"))
        .map(|t| t.lines().any(|l| l == "populated 0"))
        .unwrap_or(true)
}

/// Waits until the cgroup `dir` is empty or `deadline` passes; returns
/// whether it is empty. `cgroup.events` signals changes with POLLPRI.
fn wait_empty(dir: &Path, deadline: Instant) -> bool {
    let Ok(events) = std::fs::File::open(dir.join("cgroup.events")) else {
        return true;
    };
    loop {
        if is_empty(dir) {
            return true;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        let mut fds = [crate::sys::PollFd::new(
            &events,
            crate::sys::PollFlags::PRI | crate::sys::PollFlags::ERR,
        )];
        // A change wakes the poll; so does the timeout, bounded by 50 ms in
        // case a change came between the read and the poll.
        let _ = crate::sys::poll(&mut fds, Some(left.min(Duration::from_millis(50))));
    }
}

/// Whether `name` is a `jobd-<pid>` tree whose process is gone (or a
/// zombie: a SIGKILLed jobd its parent has not reaped yet). A tree whose
/// pid is alive is never touched, whatever runs under that pid now: a
/// recycled pid leaves a stale tree in place, which is a leak, never a
/// kill of someone else's jobs.
fn stale(name: &str) -> bool {
    let Some(pid) = name
        .strip_prefix("jobd-")
        .and_then(|p| p.parse::<u32>().ok())
    else {
        return false;
    };
    if pid == std::process::id() {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the last ')' (the command may hold one).
        Ok(stat) => stat.rsplit(") ").next().is_some_and(|r| r.starts_with('Z')),
        Err(_) => !Path::new(&format!("/proc/{pid}")).exists(),
    }
}

/// jobd's cgroup tree: `<own cgroup>/jobd-<pid>`.
#[derive(Debug)]
pub(crate) struct CgroupTree {
    mount: PathBuf,
    base: PathBuf,
}

impl CgroupTree {
    /// Creates the tree under this process's own cgroup, after removing the
    /// trees of jobds that died without cleaning up. `Err` says why cgroup
    /// containment is not usable here.
    pub(crate) fn create() -> Result<CgroupTree, String> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
        let mount = cgroup2_mount(&mountinfo).ok_or("no cgroup2 file system is mounted")?;
        let own = std::fs::read_to_string("/proc/self/cgroup")
            .ok()
            .and_then(|t| own_cgroup(&t))
            .ok_or("this process has no cgroup v2 path in /proc/self/cgroup")?;
        let parent = mount.join(own.trim_start_matches('/'));
        if let Ok(rd) = std::fs::read_dir(&parent) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if stale(&name) {
                    tracing::info!(cgroup = %e.path().display(), "removing the cgroups of a jobd that is gone");
                    kill_and_remove(&e.path(), Duration::from_secs(2));
                }
            }
        }
        let base = parent.join(format!("jobd-{}", std::process::id()));
        std::fs::create_dir(&base).map_err(|e| format!("cannot create {}: {e}", base.display()))?;
        if !base.join("cgroup.kill").exists() {
            let _ = std::fs::remove_dir(&base);
            return Err(format!(
                "{} has no cgroup.kill (Linux 5.14 or later is needed)",
                base.display()
            ));
        }
        Ok(CgroupTree { mount, base })
    }

    /// Whether the live process `pid` is in this tree (its
    /// `/proc/PID/cgroup` path is under `jobd-<pid>/`).
    pub(crate) fn holds(&self, pid: i32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .ok()
            .and_then(|t| own_cgroup(&t))
            .is_some_and(|p| {
                self.mount
                    .join(p.trim_start_matches('/'))
                    .starts_with(&self.base)
            })
    }

    /// The root of the tree.
    pub(crate) fn base(&self) -> &Path {
        &self.base
    }

    /// The cgroups of slot `i` (from the caller's own slot index).
    pub(crate) fn slot(&self, i: usize) -> SlotCgroups {
        SlotCgroups {
            dir: self.base.join(format!("slot-{i}")),
        }
    }

    /// Kills what is left in the tree and removes it.
    pub(crate) fn remove(&self) {
        kill_and_remove(&self.base, Duration::from_secs(2));
    }
}

/// The cgroup directory of one slot: `slot-N/`, holding the job cgroup of
/// the slot's current worker (`job-<worker pid>`), and those of earlier
/// workers until they are empty.
#[derive(Debug, Clone)]
pub(crate) struct SlotCgroups {
    dir: PathBuf,
}

impl SlotCgroups {
    /// Creates the slot's directory (it may exist from an earlier worker).
    pub(crate) fn create(&self) -> io::Result<()> {
        match std::fs::create_dir(&self.dir) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(e),
            _ => Ok(()),
        }
    }

    /// Creates the job cgroup `job-<name>` and moves the calling worker
    /// into it for good: every handler it spawns is then born inside (no
    /// migration per job, no window outside). Removes the empty job
    /// cgroups of earlier workers of the slot.
    pub(crate) fn enter_job(&self, name: &str) -> io::Result<JobCgroup> {
        let path = self.dir.join(format!("job-{name}"));
        match std::fs::create_dir(&path) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
            _ => {}
        }
        write_control(&path.join("cgroup.procs"), "0")?;
        for d in self.job_dirs().into_iter().filter(|d| *d != path) {
            let _ = std::fs::remove_dir(d);
        }
        // Kept open: read again at offset 0 after each job (cheaper than
        // an open, a statx and a close per job).
        let procs = std::fs::File::open(path.join("cgroup.procs")).ok();
        Ok(JobCgroup { path, procs })
    }

    /// The slot's job cgroups.
    fn job_dirs(&self) -> Vec<PathBuf> {
        std::fs::read_dir(&self.dir)
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with("job-"))
                    .map(|e| e.path())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Kills every process in the slot's job cgroups: their worker died,
    /// so `cgroup.kill` takes only what its jobs left.
    pub(crate) fn kill_jobs(&self) {
        for d in self.job_dirs() {
            let _ = write_control(&d.join("cgroup.kill"), "1");
        }
    }
}

/// The whole of an open file read with `pread` from offset 0 (a cgroup
/// file lists its state afresh on each read from the start).
fn read_from_start(f: &std::fs::File) -> io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match f.read_at(&mut buf, out.len() as u64) {
            Ok(0) => return Ok(out),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// A worker's job cgroup: the worker and its jobs. `cgroup.kill` would
/// take the worker too, so what a job leaves is killed process by process:
/// each pid listed in `cgroup.procs` (by the kernel, not the scoreboard) is
/// pinned with a pidfd, checked to be still in the cgroup, and signalled
/// through the pidfd, so a recycled pid is never hit.
#[derive(Debug)]
pub(crate) struct JobCgroup {
    path: PathBuf,
    /// Its `cgroup.procs`, open.
    procs: Option<std::fs::File>,
}

impl JobCgroup {
    /// The path (for logs).
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The processes in the cgroup other than `me`.
    pub(crate) fn others(&self, me: u32) -> Vec<i32> {
        let text = match &self.procs {
            Some(f) => read_from_start(f),
            None => std::fs::read(self.path.join("cgroup.procs")),
        };
        text.map(|t| {
            String::from_utf8_lossy(&t)
                .lines()
                .filter_map(|l| l.trim().parse::<i32>().ok())
                .filter(|&p| p != me as i32)
                .collect()
        })
        .unwrap_or_default()
    }

    /// SIGKILLs every process in the cgroup but `me`, and waits (at most
    /// `patience`) until they are gone, repeating while new ones appear.
    /// Returns how many were killed.
    pub(crate) fn kill_others(&self, me: u32, patience: Duration) -> usize {
        let deadline = Instant::now() + patience;
        let mut killed = 0;
        while Instant::now() < deadline {
            let left = self.others(me);
            if left.is_empty() {
                break;
            }
            let mut pinned = Vec::new();
            for p in left {
                let Ok(fd) = crate::sys::PidFd::open(nix::unistd::Pid::from_raw(p)) else {
                    continue; // gone already
                };
                // Still ours now that it is pinned: the pidfd names it.
                if self.others(me).contains(&p)
                    && fd.signal(nix::sys::signal::Signal::SIGKILL).is_ok()
                {
                    killed += 1;
                    pinned.push(fd);
                }
            }
            // A pidfd turns readable when its process exits.
            for fd in &pinned {
                let left = deadline.saturating_duration_since(Instant::now());
                let mut fds = [crate::sys::PollFd::new(fd, crate::sys::PollFlags::IN)];
                let _ = crate::sys::poll(&mut fds, Some(left));
            }
        }
        killed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_v2_mount_and_the_own_path() {
        let mi = "\
35 24 0:30 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
        assert_eq!(
            cgroup2_mount(mi),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            cgroup2_mount("35 24 0:30 / /x rw - cgroup cgroup rw\n"),
            None
        );
        let pc = "4:memory:/a/b\n0::/system.slice/jobd.service\n";
        assert_eq!(
            own_cgroup(pc).as_deref(),
            Some("/system.slice/jobd.service")
        );
        assert_eq!(own_cgroup("4:memory:/a\n"), None);
    }

    #[test]
    fn only_trees_of_gone_jobds_are_stale() {
        assert!(!stale("slot-1"));
        assert!(!stale("jobd-x"));
        assert!(!stale(&format!("jobd-{}", std::process::id())));
        assert!(!stale("jobd-1"), "pid 1 lives");
        assert!(stale("jobd-4194304"), "beyond pid_max: no such process");
    }
}
