//! The system calls of the daemon lifecycle: `flock`, the double fork that
//! detaches a daemon (with a pipe that tells the foreground process whether
//! the daemon came up), and the privilege drop.
//!
//! Owns every `unsafe` of the pid file, the logs and `--daemonize`; the
//! callers (`pidfile`, `logfiles`, `server`, `ctl`) hold descriptors as
//! `File` / `OwnedFd` and call only the safe functions here. It decides
//! nothing: what to lock, log or report is the caller's business.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use nix::unistd::{Gid, Uid};

use super::{Forked, fork};

/// `flock(2)` through one chokepoint. Returns `Ok(false)` when another open
/// file description holds a conflicting lock (`EWOULDBLOCK`).
///
/// The lock belongs to the open file description: forked children share it,
/// and it is released only when the last descriptor of it is closed. Nothing
/// here ever unlocks explicitly (nix's `Flock` unlocks on drop, which would
/// release the lock for every process sharing it).
fn flock(fd: BorrowedFd<'_>, op: rustix::fs::FlockOperation) -> io::Result<bool> {
    loop {
        match rustix::fs::flock(fd, op) {
            Ok(()) => return Ok(true),
            Err(rustix::io::Errno::WOULDBLOCK) => return Ok(false),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Takes an exclusive lock without waiting; `Ok(false)` when someone else
/// holds a lock on the same file.
pub fn try_lock_exclusive(fd: BorrowedFd<'_>) -> io::Result<bool> {
    flock(fd, rustix::fs::FlockOperation::NonBlockingLockExclusive)
}

/// Whether some other open file description holds an exclusive lock on the
/// file: tries a shared lock on `fd`, which must be a descriptor of the
/// caller's own (freshly opened, not shared with any other process), and
/// lets it go when the caller closes `fd`.
pub fn is_locked_by_other(fd: BorrowedFd<'_>) -> io::Result<bool> {
    flock(fd, rustix::fs::FlockOperation::NonBlockingLockShared).map(|got| !got)
}

/// What the daemon tells the foreground process through the ready pipe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ready {
    /// The daemon is bound, has written its pid and serves.
    Up {
        /// The daemon's pid.
        pid: i32,
    },
    /// The daemon failed to start; the message says why.
    Failed(String),
}

impl Ready {
    fn encode(&self) -> Vec<u8> {
        match self {
            Ready::Up { pid } => format!("up {pid}\n").into_bytes(),
            Ready::Failed(msg) => format!("failed {msg}\n").into_bytes(),
        }
    }

    fn decode(bytes: &[u8]) -> Option<Ready> {
        let s = String::from_utf8_lossy(bytes);
        let s = s.trim_end_matches('\n');
        if let Some(pid) = s.strip_prefix("up ") {
            return pid.parse().ok().map(|pid| Ready::Up { pid });
        }
        s.strip_prefix("failed ")
            .map(|m| Ready::Failed(m.to_string()))
    }
}

/// The daemon's end of the ready pipe.
#[derive(Debug)]
pub struct ReadyWriter(OwnedFd);

impl ReadyWriter {
    /// Tells the foreground process how the start went, and closes the pipe.
    /// A foreground process that is already gone is not an error worth
    /// reporting: the daemon goes on.
    pub fn send(self, msg: &Ready) {
        let mut f = std::fs::File::from(self.0);
        let _ = f.write_all(&msg.encode());
    }
}

/// The foreground process's end of the ready pipe.
#[derive(Debug)]
pub struct ReadyReader(OwnedFd);

impl ReadyReader {
    /// Waits until the daemon reports; an error of kind `UnexpectedEof` when
    /// it exited (or closed the pipe) without a word.
    pub fn wait(self) -> io::Result<Ready> {
        let mut f = std::fs::File::from(self.0);
        let mut buf = Vec::new();
        f.read_to_end(&mut buf)?;
        Ready::decode(&buf).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the daemon exited before it reported",
            )
        })
    }
}

/// Which process returns from [`daemonize`].
#[derive(Debug)]
pub enum Daemonized {
    /// The original (foreground) process: wait for the daemon's word.
    Foreground(ReadyReader),
    /// The daemon: a grandchild of the original process, in a session of
    /// its own, in `/`, with umask 022, stdin and stdout on `/dev/null` and
    /// stderr on the given descriptor. Tell the foreground once it is up.
    Daemon(ReadyWriter),
}

/// Detaches the calling process: fork, `setsid` in the child, fork again,
/// and in the grandchild `chdir("/")`, `umask(022)`, stdin and stdout from
/// and to `/dev/null`, stderr onto `stderr`. The intermediate child exits at
/// once and is reaped here, so the daemon is not a session leader and can
/// never acquire a controlling terminal.
///
/// When a step in a child fails, the child reports it through the ready
/// pipe and exits 1, and the foreground's [`ReadyReader::wait`] returns it.
/// Fails without forking when the process has threads.
pub fn daemonize(stderr: BorrowedFd<'_>) -> io::Result<Daemonized> {
    let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(io::Error::from)?;
    match fork()? {
        Forked::Parent(child) => {
            drop(w);
            // Reap the intermediate child (it exits at once).
            while let Err(nix::errno::Errno::EINTR) = nix::sys::wait::waitpid(child, None) {}
            Ok(Daemonized::Foreground(ReadyReader(r)))
        }
        Forked::Child => {
            drop(r);
            let w = ReadyWriter(w);
            if let Err(e) = nix::unistd::setsid() {
                w.send(&Ready::Failed(format!("setsid failed: {e}")));
                exit_now(1);
            }
            match fork() {
                Err(e) => {
                    w.send(&Ready::Failed(format!("second fork failed: {e}")));
                    exit_now(1);
                }
                Ok(Forked::Parent(_)) => exit_now(0),
                Ok(Forked::Child) => match detach_stdio(stderr) {
                    Ok(()) => Ok(Daemonized::Daemon(w)),
                    Err(e) => {
                        w.send(&Ready::Failed(e));
                        exit_now(1);
                    }
                },
            }
        }
    }
}

/// Ends a forked child at once (of [`daemonize`], or a handler whose exec
/// failed), without running destructors or `atexit` handlers (they belong
/// to the original process).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit ends the process; it touches no memory of ours.
    unsafe { libc::_exit(code) }
}

/// The daemon's environment: `/`, umask 022, stdio redirected.
fn detach_stdio(stderr: BorrowedFd<'_>) -> Result<(), String> {
    nix::unistd::chdir("/").map_err(|e| format!("chdir / failed: {e}"))?;
    nix::sys::stat::umask(Mode::from_bits_truncate(0o022));
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|e| format!("failed to open /dev/null: {e}"))?;
    nix::unistd::dup2_stdin(null.as_fd()).map_err(|e| format!("dup2 onto stdin failed: {e}"))?;
    nix::unistd::dup2_stdout(null.as_fd()).map_err(|e| format!("dup2 onto stdout failed: {e}"))?;
    nix::unistd::dup2_stderr(stderr).map_err(|e| format!("dup2 onto stderr failed: {e}"))?;
    Ok(())
}

/// Points fd 2 at `fd` (the error log). fd 2 stays inheritable, so that
/// handlers write their stderr there too.
pub fn redirect_stderr(fd: BorrowedFd<'_>) -> io::Result<()> {
    nix::unistd::dup2_stderr(fd).map_err(io::Error::from)
}

/// Makes `target` (an open descriptor of ours, close-on-exec) refer to the
/// file of `new`, keeping its number: every process that inherited the
/// number writes to the new file from then on (log reopen).
pub fn replace_fd(new: BorrowedFd<'_>, target: &mut OwnedFd) -> io::Result<()> {
    nix::unistd::dup3(new, target, OFlag::O_CLOEXEC).map_err(io::Error::from)
}

/// Drops root: clears the supplementary groups, then `setgid(gid)` and
/// `setuid(uid)` (in that order: after setuid, setgid is no longer
/// allowed), and checks that root cannot be regained.
///
/// The process stays non-dumpable (the kernel clears the flag on a
/// credential change): its `/proc/<pid>/` files stay root's, so that no
/// process of `uid` can read its descriptors; the supervisor, still root,
/// can.
pub fn drop_privileges(uid: Uid, gid: Gid) -> io::Result<()> {
    nix::unistd::setgroups(&[]).map_err(|e| io::Error::other(format!("setgroups: {e}")))?;
    nix::unistd::setgid(gid).map_err(|e| io::Error::other(format!("setgid {gid}: {e}")))?;
    nix::unistd::setuid(uid).map_err(|e| io::Error::other(format!("setuid {uid}: {e}")))?;
    if !uid.is_root() && nix::unistd::setuid(Uid::from_raw(0)).is_ok() {
        return Err(io::Error::other("could regain root after setuid"));
    }
    if nix::unistd::getuid() != uid
        || nix::unistd::geteuid() != uid
        || nix::unistd::getgid() != gid
        || nix::unistd::getegid() != gid
    {
        return Err(io::Error::other("the user and group did not change"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_messages_round_trip() {
        for m in [
            Ready::Up { pid: 42 },
            Ready::Failed("failed to listen on 127.0.0.1:1: Address in use".into()),
        ] {
            assert_eq!(Ready::decode(&m.encode()), Some(m));
        }
        assert_eq!(Ready::decode(b""), None);
        assert_eq!(Ready::decode(b"up x\n"), None);
    }

    #[test]
    fn lock_is_seen_by_another_description() {
        let dir = std::env::temp_dir().join(format!("jobd-flock-{}", std::process::id()));
        std::fs::write(&dir, "").unwrap();
        let a = std::fs::File::open(&dir).unwrap();
        let b = std::fs::File::open(&dir).unwrap();
        assert!(try_lock_exclusive(a.as_fd()).unwrap());
        assert!(!try_lock_exclusive(b.as_fd()).unwrap());
        assert!(is_locked_by_other(b.as_fd()).unwrap());
        drop(a);
        let c = std::fs::File::open(&dir).unwrap();
        assert!(!is_locked_by_other(c.as_fd()).unwrap());
        std::fs::remove_file(&dir).unwrap();
    }
}
