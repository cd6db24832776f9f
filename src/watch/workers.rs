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

    /// Whether the worker of `slot` holds the socket with this inode.
    fn holds(&self, slot: usize, inode: u64) -> bool;
}

/// Whether `/proc/<pid>/fd` holds `socket:[inode]`. An unreadable
/// directory (EACCES) does not count against it.
pub(crate) fn proc_fd_holds(pid: Pid, inode: u64) -> bool {
    let dir = format!("/proc/{}/fd", pid.as_raw());
    let want = format!("socket:[{inode}]");
    match std::fs::read_dir(&dir) {
        Ok(rd) => rd
            .flatten()
            .any(|e| std::fs::read_link(e.path()).is_ok_and(|l| l.as_os_str() == want.as_str())),
        Err(e) => e.kind() == io::ErrorKind::PermissionDenied,
    }
}
