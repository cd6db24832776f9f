//! Every `unsafe` block of jobd lives here, behind small safe functions.
//!
//! Owns: fork, pidfds, the shared scoreboard mapping, raw socket options
//! (`SO_COOKIE`, `TCP_USER_TIMEOUT`), process-group signals and the
//! parent-death signal. Nothing outside this folder calls `libc` in an
//! unsafe way; callers hold descriptors as `OwnedFd` / `BorrowedFd`.

pub mod daemon;
mod shm;
mod signals;

pub use shm::SharedMap;
pub use signals::{arm_self_kill, ignore_sigpipe, reset_signals};

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

/// The result of [`fork`], as in `nix::unistd::ForkResult`.
pub enum Forked {
    /// In the parent: the child's pid.
    Parent(Pid),
    /// In the child.
    Child,
}

/// Forks the calling process, after checking that it is single-threaded
/// (jobd forks before any thread exists), so that the child may run
/// arbitrary code, not only async-signal-safe functions. Fails, without
/// forking, when the process has threads.
pub fn fork() -> io::Result<Forked> {
    let threads = thread_count();
    if threads > 1 {
        return Err(io::Error::other(format!(
            "refusing to fork a process with {threads} threads"
        )));
    }
    // SAFETY: checked just above that the process has a single thread.
    match unsafe { nix::unistd::fork() }.map_err(io::Error::from)? {
        nix::unistd::ForkResult::Parent { child } => Ok(Forked::Parent(child)),
        nix::unistd::ForkResult::Child => Ok(Forked::Child),
    }
}

/// Whether the current process has more than one thread (read from
/// `/proc/self/status`). Used to refuse forking from a threaded process.
pub fn thread_count() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Threads:").map(|v| v.trim().parse().ok()))
                .flatten()
        })
        .unwrap_or(1)
}

/// A pidfd: a handle on one process that is never confused with another
/// process that later gets the same pid.
#[derive(Debug)]
pub struct PidFd(OwnedFd);

impl PidFd {
    /// Opens a pidfd for `pid`. Call it on a child that has not been reaped
    /// yet, so that the pid cannot have been recycled.
    pub fn open(pid: Pid) -> io::Result<PidFd> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1;
        // no memory is passed.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the syscall returned a fresh descriptor that nothing else owns.
        Ok(PidFd(unsafe { OwnedFd::from_raw_fd(fd as i32) }))
    }

    /// Sends `sig` to the process. Fails with ESRCH once it has exited.
    pub fn signal(&self, sig: Signal) -> io::Result<()> {
        // SAFETY: the fd is a pidfd we own; a null siginfo is allowed.
        let r = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.0.as_raw_fd(),
                sig as libc::c_int,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
}

impl AsFd for PidFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// Sends `sig` to the process group `pgid`.
///
/// Only for a group whose leader is an unreaped child of the caller (or
/// an unreaped child reparented to the caller as subreaper): the zombie keeps
/// the group id from being recycled.
pub fn kill_group(pgid: Pid, sig: Signal) -> io::Result<()> {
    nix::sys::signal::killpg(pgid, sig).map_err(io::Error::from)
}

/// `PR_SET_PDEATHSIG`, then checks that the parent `expected_parent` is still
/// alive (it may have died before the call). Returns false when it already
/// died: the caller must exit.
pub fn die_with_parent(sig: Signal, expected_parent: Pid) -> io::Result<bool> {
    nix::sys::prctl::set_pdeathsig(sig).map_err(io::Error::from)?;
    Ok(nix::unistd::getppid() == expected_parent)
}

/// Reads a socket option through one chokepoint (as pingora's `get_opt`).
fn get_opt<T: Copy + Default>(fd: BorrowedFd<'_>, level: i32, name: i32) -> io::Result<T> {
    let mut val = T::default();
    let mut len = std::mem::size_of::<T>() as libc::socklen_t;
    // SAFETY: `val` is a valid, writable T and `len` its size; the kernel
    // writes at most `len` bytes.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&mut val as *mut T).cast(),
            &mut len,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(val)
    }
}

/// The socket's cookie (`SO_COOKIE`): a 64-bit id that is never reused
/// while the system runs.
pub fn socket_cookie(fd: BorrowedFd<'_>) -> io::Result<u64> {
    get_opt::<u64>(fd, libc::SOL_SOCKET, libc::SO_COOKIE)
}

/// The listen backlog as the kernel applied it cannot be read back; this
/// reads `/proc/sys/net/core/somaxconn` to report the effective cap.
pub fn somaxconn() -> i32 {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(4096)
}

/// `CLOCK_MONOTONIC` in nanoseconds: one clock for every process of the
/// machine, so that a worker's timestamps compare with the supervisor's.
pub fn monotonic_ns() -> u64 {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .expect("CLOCK_MONOTONIC is always available");
    ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64
}

/// One descriptor for [`poll`]: `events` and `revents` are raw `POLL*`
/// bits, so that `POLLRDHUP` (which nix's `PollFlags` lacks) works.
pub struct Polled<'a> {
    /// The descriptor.
    pub fd: BorrowedFd<'a>,
    /// Requested events.
    pub events: i16,
    /// Returned events.
    pub revents: i16,
}

impl<'a> Polled<'a> {
    /// A descriptor to poll for `events`.
    pub fn new(fd: BorrowedFd<'a>, events: i16) -> Polled<'a> {
        Polled {
            fd,
            events,
            revents: 0,
        }
    }
}

/// `poll(2)` over at most 8 descriptors; `None` waits forever. EINTR is
/// returned as an error of kind `Interrupted`.
pub fn poll(fds: &mut [Polled<'_>], timeout: Option<std::time::Duration>) -> io::Result<usize> {
    assert!(fds.len() <= 8, "poll: at most 8 descriptors");
    let mut raw = [libc::pollfd {
        fd: -1,
        events: 0,
        revents: 0,
    }; 8];
    for (r, f) in raw.iter_mut().zip(fds.iter()) {
        r.fd = f.fd.as_raw_fd();
        r.events = f.events;
    }
    let ms = match timeout {
        None => -1,
        Some(d) => {
            d.as_millis().min(i32::MAX as u128) as i32
                + i32::from(d.subsec_nanos() % 1_000_000 != 0)
        }
    };
    // SAFETY: `raw` holds `fds.len()` initialised pollfd entries whose fds are
    // borrowed (open) for the duration of the call.
    let n = unsafe { libc::poll(raw.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    for (r, f) in raw.iter().zip(fds.iter_mut()) {
        f.revents = r.revents;
    }
    Ok(n as usize)
}
