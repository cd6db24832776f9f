//! The boundary between the watch and the processes it judges: who runs
//! each slot's job, how it is poked to read its slot's requests, and
//! whether it holds a socket. The supervisor answers through the pidfds of
//! its children; with `--prefork 0` the one process answers for itself;
//! the unit tests answer with a fake.
//!
//! Nothing here is read from the scoreboard: a pid comes only from the
//! caller's own records.

use std::io;

use nix::unistd::Pid;

/// The workers as the watch sees them.
pub(crate) trait Workers {
    /// The pid of the live worker of `slot`, from the caller's own records
    /// (never from the scoreboard), or None when the caller has none there.
    fn pid(&self, slot: usize) -> Option<Pid>;

    /// Wakes the worker of `slot` so that it reads its slot's requests
    /// (SIGUSR2 through a pidfd). Fails when it cannot be reached.
    fn poke(&self, slot: usize) -> io::Result<()>;

    /// SIGKILLs the worker of `slot` (through its pidfd, or its pid while it
    /// is the caller's unreaped child).
    fn kill(&self, slot: usize) -> io::Result<()>;

    /// Whether the worker of `slot` is stopped (SIGSTOP), for the log.
    fn stopped(&self, slot: usize) -> bool {
        self.pid(slot).is_some_and(|p| {
            std::fs::read_to_string(format!("/proc/{}/stat", p.as_raw()))
                .ok()
                .and_then(|s| s.rsplit(") ").next().and_then(|r| r.chars().next()))
                == Some('T')
        })
    }

    /// Whether the worker of `slot` holds the socket with this inode; an
    /// error when it cannot tell (out of descriptors), for the caller to
    /// retry.
    fn holds(&self, slot: usize, inode: u64) -> io::Result<bool>;
}

/// Whether `/proc/<pid>/fd` holds `socket:[inode]`. An unreadable
/// directory (EACCES) does not count against it; a failure to open it
/// (EMFILE, ENOMEM) is an error: nobody can tell.
pub(crate) fn proc_fd_holds(pid: Pid, inode: u64) -> io::Result<bool> {
    let dir = format!("/proc/{}/fd", pid.as_raw());
    let want = format!("socket:[{inode}]");
    match std::fs::read_dir(&dir) {
        Ok(rd) => Ok(rd
            .flatten()
            .any(|e| std::fs::read_link(e.path()).is_ok_and(|l| l.as_os_str() == want.as_str()))),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => Ok(true),
        // The worker is gone: its record is stale.
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}
