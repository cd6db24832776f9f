//! Every `unsafe` block of jobd lives here, behind small safe functions.
//!
//! Owns: fork, pidfds, the shared scoreboard mapping, raw socket options
//! (`SO_COOKIE`, `TCP_USER_TIMEOUT`), process-group signals and the
//! parent-death signal. Nothing outside this folder calls `libc` in an
//! unsafe way; callers hold descriptors as `OwnedFd` / `BorrowedFd`.

pub mod daemon;

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;

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

/// A shared memory mapping (the scoreboard), `MAP_SHARED`, read-write.
pub struct SharedMap {
    ptr: NonNull<u8>,
    len: usize,
}

impl SharedMap {
    /// An anonymous shared mapping of `len` zeroed bytes, inherited by
    /// forked children.
    pub fn anonymous(len: usize) -> io::Result<SharedMap> {
        let nz = std::num::NonZeroUsize::new(len)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty mapping"))?;
        use nix::sys::mman::{MapFlags, ProtFlags};
        // SAFETY: a fresh anonymous mapping aliases no Rust object.
        let ptr = unsafe {
            nix::sys::mman::mmap_anonymous(
                None,
                nz,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
            )
        }
        .map_err(io::Error::from)?;
        Ok(SharedMap {
            ptr: ptr.cast(),
            len,
        })
    }

    /// Maps `len` bytes of `file` shared; with `writable` false, read-only.
    pub fn file(file: &std::fs::File, len: usize, writable: bool) -> io::Result<SharedMap> {
        let nz = std::num::NonZeroUsize::new(len)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty mapping"))?;
        use nix::sys::mman::{MapFlags, ProtFlags};
        let prot = if writable {
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE
        } else {
            ProtFlags::PROT_READ
        };
        // SAFETY: the file is at least `len` bytes long (checked by the
        // caller); the mapping aliases no Rust object, and all access to it
        // goes through atomics.
        let ptr = unsafe { nix::sys::mman::mmap(None, nz, prot, MapFlags::MAP_SHARED, file, 0) }
            .map_err(io::Error::from)?;
        Ok(SharedMap {
            ptr: ptr.cast(),
            len,
        })
    }

    /// A reference to a `T` at byte `offset`. Panics when the offset is out
    /// of bounds or misaligned (a programming error).
    pub fn get<T: Shared>(&self, offset: usize) -> &T {
        assert!(
            offset + std::mem::size_of::<T>() <= self.len,
            "offset out of mapping"
        );
        assert_eq!(offset % std::mem::align_of::<T>(), 0, "misaligned offset");
        // SAFETY: bounds and alignment are checked above; `T: Shared`
        // promises any bit pattern is valid and all fields are atomics, so
        // concurrent writes by other processes are sound; the mapping lives
        // as long as `self`.
        unsafe { &*self.ptr.as_ptr().add(offset).cast::<T>() }
    }
}

/// Types that may live in memory shared with other processes.
///
/// # Safety
///
/// The type must be `#[repr(C)]`, valid for any bit pattern (including all
/// zeroes), and every field written after mapping must be an atomic.
pub unsafe trait Shared {}

// SAFETY: Header is #[repr(C)] and made only of atomics.
unsafe impl Shared for crate::scoreboard::Header {}
// SAFETY: Slot is #[repr(C)] and made only of atomics.
unsafe impl Shared for crate::scoreboard::Slot {}

impl Drop for SharedMap {
    fn drop(&mut self) {
        // SAFETY: ptr/len describe a mapping we created and nobody uses after drop.
        let _ = unsafe { nix::sys::mman::munmap(self.ptr.cast(), self.len) };
    }
}

/// In a freshly forked worker: default dispositions for every signal the
/// supervisor handles, then exactly `mask` blocked (for the worker's own
/// signalfd), so that no signal slips through between the two steps.
pub fn reset_signals(mask: &nix::sys::signal::SigSet) -> io::Result<()> {
    use nix::sys::signal::{SigHandler, SigmaskHow, sigprocmask};
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(mask), None).map_err(io::Error::from)?;
    for sig in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGCHLD,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        Signal::SIGTTIN,
        Signal::SIGTTOU,
    ] {
        // SAFETY: installing SIG_DFL runs no Rust code in signal context.
        unsafe { nix::sys::signal::signal(sig, SigHandler::SigDfl) }.map_err(io::Error::from)?;
    }
    sigprocmask(SigmaskHow::SIG_SETMASK, Some(mask), None).map_err(io::Error::from)
}

/// Ignores SIGPIPE (a write to a hung-up client must be an EPIPE error,
/// not the death of a worker).
pub fn ignore_sigpipe() -> io::Result<()> {
    use nix::sys::signal::SigHandler;
    // SAFETY: SIG_IGN runs no code in signal context.
    unsafe { nix::sys::signal::signal(Signal::SIGPIPE, SigHandler::SigIgn) }
        .map(|_| ())
        .map_err(io::Error::from)
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

/// The slot whose `kill_req` the SIGUSR2 handler of a closure worker checks.
static SELF_KILL_SLOT: std::sync::atomic::AtomicPtr<crate::scoreboard::Slot> =
    std::sync::atomic::AtomicPtr::new(std::ptr::null_mut());

extern "C" fn self_kill_handler(_: libc::c_int) {
    let p = SELF_KILL_SLOT.load(std::sync::atomic::Ordering::Acquire);
    if p.is_null() {
        return;
    }
    // SAFETY: the pointer was set by `arm_self_kill` to a slot of the
    // scoreboard mapping, which stays mapped until the worker exits; only
    // atomics are read, which is async-signal-safe.
    let slot = unsafe { &*p };
    if slot.closure_job_to_kill() {
        // SAFETY: kill(getpid(), SIGKILL) is async-signal-safe.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}

/// Closure jobs run inside the worker and cannot be interrupted by the
/// worker's own loop. While one runs, SIGUSR2 is unblocked with a handler
/// that kills this worker if, and only if, the slot's `kill_req` names the
/// job the slot runs at that instant: a signal that arrives after the job
/// ended (or for another job) does nothing. Returns a guard that blocks
/// SIGUSR2 again.
pub fn arm_self_kill(slot: &crate::scoreboard::Slot) -> io::Result<SelfKillGuard> {
    use nix::sys::signal::{
        SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, sigaction, sigprocmask,
    };
    SELF_KILL_SLOT.store(
        slot as *const crate::scoreboard::Slot as *mut crate::scoreboard::Slot,
        std::sync::atomic::Ordering::Release,
    );
    let act = SigAction::new(
        SigHandler::Handler(self_kill_handler),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    // SAFETY: the handler only reads atomics and calls kill/getpid, which
    // are async-signal-safe.
    unsafe { sigaction(Signal::SIGUSR2, &act) }.map_err(io::Error::from)?;
    let mut set = SigSet::empty();
    set.add(Signal::SIGUSR2);
    sigprocmask(SigmaskHow::SIG_UNBLOCK, Some(&set), None).map_err(io::Error::from)?;
    Ok(SelfKillGuard(()))
}

/// Blocks SIGUSR2 again (back to the worker's signalfd) when dropped.
pub struct SelfKillGuard(());

impl Drop for SelfKillGuard {
    fn drop(&mut self) {
        use nix::sys::signal::{SigSet, SigmaskHow, sigprocmask};
        let mut set = SigSet::empty();
        set.add(Signal::SIGUSR2);
        let _ = sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None);
    }
}
