//! Every `unsafe` block of jobd lives here, behind small safe functions.
//!
//! Owns: fork, pidfds, the shared scoreboard mapping ([`shm`]), signal
//! dispositions and masks ([`signals`]), the daemon's detach and locks
//! ([`daemon`]), socket options, poll, process-group signals and the
//! parent-death signal. Where rustix (already in the tree through procfs)
//! has a safe call, it is used: pidfd_open, pidfd_send_signal, SO_COOKIE,
//! poll with POLLRDHUP, flock. Nothing outside this folder calls `libc` in
//! an unsafe way; callers hold descriptors as `OwnedFd` / `BorrowedFd`.
//! Knows nothing of jobd's types: the scoreboard's layout implements
//! [`Shared`] itself, through [`shared_struct!`].

pub mod daemon;
pub mod files;
pub(crate) mod shm;
mod signals;

pub use shm::SharedMap;
pub(crate) use shm::shared_struct;
pub use signals::{
    SelfKillGuard, arm_self_kill, default_signals, handled_set, handled_signalfd, ignore_sigpipe,
    reset_signals,
};

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

/// Marks every descriptor above 2 that this process inherited without
/// close-on-exec as close-on-exec, so that the programs it starts get
/// only 0, 1 and 2 (the `jobd` command, at its start). Returns how many
/// it marked.
pub fn cloexec_inherited() -> usize {
    let Ok(rd) = std::fs::read_dir("/proc/self/fd") else {
        return 0;
    };
    let fds: Vec<i32> = rd
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|&fd| fd > 2)
        .collect();
    let mut marked = 0;
    for fd in fds {
        // SAFETY: only the descriptor flags of `fd` are read and set, for
        // the duration of this call; a number that is no longer open (the
        // directory's own descriptor) fails with EBADF.
        let b = unsafe { BorrowedFd::borrow_raw(fd) };
        if let Ok(fl) = nix::fcntl::fcntl(b, nix::fcntl::FcntlArg::F_GETFD) {
            let fl = nix::fcntl::FdFlag::from_bits_retain(fl);
            if !fl.contains(nix::fcntl::FdFlag::FD_CLOEXEC)
                && nix::fcntl::fcntl(
                    b,
                    nix::fcntl::FcntlArg::F_SETFD(fl | nix::fcntl::FdFlag::FD_CLOEXEC),
                )
                .is_ok()
            {
                marked += 1;
            }
        }
    }
    marked
}

/// Takes ownership of a descriptor a service manager passed (socket
/// activation: fd 3 onwards, announced by `LISTEN_FDS`).
pub fn take_passed_fd(raw: std::os::fd::RawFd) -> OwnedFd {
    // SAFETY: the descriptor was passed to this process by its service
    // manager for it to own; nothing else in jobd holds or closes it.
    unsafe { std::os::fd::FromRawFd::from_raw_fd(raw) }
}

/// Puts descriptor `from` on number `to`, inheritable (no close-on-exec):
/// in a forked child about to exec.
pub fn put_on_fd(from: std::os::fd::RawFd, to: std::os::fd::RawFd) -> io::Result<()> {
    if from == to {
        // SAFETY: `from` is open in this process (the caller's listener).
        let b = unsafe { BorrowedFd::borrow_raw(from) };
        nix::fcntl::fcntl(
            b,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
        )?;
        return Ok(());
    }
    // SAFETY: dup2 onto a number of the calling (forked) process; whatever
    // was there is replaced, as the caller wants.
    if unsafe { libc::dup2(from, to) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The result of [`fork`], as in `nix::unistd::ForkResult`.
pub enum Forked {
    /// In the parent: the child's pid.
    Parent(Pid),
    /// In the child.
    Child,
}

/// Forks the calling process, after checking that it is single-threaded
/// (jobd forks before any thread exists), so that the child may run
/// arbitrary code, not only async-signal-safe functions. Fails closed,
/// without forking, when the process has threads or when its thread count
/// cannot be read.
pub fn fork() -> io::Result<Forked> {
    let threads = thread_count()?;
    if threads != 1 {
        return Err(io::Error::other(format!(
            "refusing to fork a process with {threads} threads"
        )));
    }
    // SAFETY: checked just above that the process has a single thread, so
    // the child may run any code.
    match unsafe { nix::unistd::fork() }.map_err(io::Error::from)? {
        nix::unistd::ForkResult::Parent { child } => Ok(Forked::Parent(child)),
        nix::unistd::ForkResult::Child => Ok(Forked::Child),
    }
}

/// [`fork`], and in the child, closes the descriptors that `close` lists
/// (the parent's own, which the child has no use for: the supervisor's
/// pidfds of its other workers). `close` is a lazy iterator, walked in the
/// child: no memory is allocated or written for the list, in the parent
/// (whose writes would copy pages its earlier children share) or in the
/// child. The child must never drop their owners: it runs its body and
/// exits, never returning into the parent's records.
pub fn fork_closing(close: impl IntoIterator<Item = std::os::fd::RawFd>) -> io::Result<Forked> {
    let forked = fork()?;
    if let Forked::Child = forked {
        for fd in close {
            // SAFETY: these descriptors are open in this new process (a
            // copy of the parent's table), and their owners are never
            // used or dropped here (documented above): no double close.
            unsafe {
                libc::close(fd);
            }
        }
    }
    Ok(forked)
}

/// The number of threads of this process (from `/proc/self/status`).
///
/// # Errors
///
/// Fails when the file cannot be read or has no `Threads:` line.
pub fn thread_count() -> io::Result<usize> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| {
            l.strip_prefix("Threads:")
                .and_then(|v| v.trim().parse().ok())
        })
        .ok_or_else(|| io::Error::other("/proc/self/status has no Threads: line"))
}

/// A pidfd: a handle on one process that is never confused with another
/// process that later gets the same pid.
#[derive(Debug)]
pub struct PidFd(OwnedFd);

impl PidFd {
    /// Opens a pidfd for `pid`. Call it on a child that has not been reaped
    /// yet, so that the pid cannot have been recycled.
    pub fn open(pid: Pid) -> io::Result<PidFd> {
        let pid = rustix::process::Pid::from_raw(pid.as_raw())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a pid"))?;
        Ok(PidFd(rustix::process::pidfd_open(
            pid,
            rustix::process::PidfdFlags::empty(),
        )?))
    }

    /// Sends `sig` to the process. Fails with ESRCH once it has exited.
    pub fn signal(&self, sig: Signal) -> io::Result<()> {
        let sig = rustix::process::Signal::from_named_raw(sig as i32)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a signal"))?;
        Ok(rustix::process::pidfd_send_signal(&self.0, sig)?)
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

/// The group and session ids of a process, from `/proc/<pid>/stat`.
pub fn group_and_session(pid: Pid) -> Option<(i32, i32)> {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid.as_raw())).ok()?;
    // The command name may hold spaces and parentheses: the fields after
    // the last ')' are `state ppid pgrp session ...`.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut f = rest.split_whitespace().skip(2);
    Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
}

/// This process's children, from `/proc/thread-self/children` (jobd's
/// processes are single-threaded: the one task has them all), zombies
/// included.
pub fn children() -> Vec<Pid> {
    // One task: its children file, three system calls (no directory walk:
    // this runs at the end of every job).
    use std::io::Read;
    let Ok(mut f) = std::fs::File::open("/proc/thread-self/children") else {
        return Vec::new();
    };
    // Read without asking the size first (procfs files have none).
    let mut text = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match f.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => text.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&text)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .map(Pid::from_raw)
        .collect()
}

/// `PR_SET_PDEATHSIG`, then checks that the parent `expected_parent` is still
/// alive (it may have died before the call). Returns false when it already
/// died: the caller must exit.
pub fn die_with_parent(sig: Signal, expected_parent: Pid) -> io::Result<bool> {
    nix::sys::prctl::set_pdeathsig(sig).map_err(io::Error::from)?;
    Ok(nix::unistd::getppid() == expected_parent)
}

/// The socket's cookie (`SO_COOKIE`): a 64-bit id that is never reused
/// while the system runs.
pub fn socket_cookie(fd: BorrowedFd<'_>) -> io::Result<u64> {
    Ok(rustix::net::sockopt::socket_cookie(fd)?)
}

/// What a TCP socket has sent and what its peer acknowledged, from
/// `TCP_INFO`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TcpProgress {
    /// Data bytes sent (`tcpi_bytes_sent`, retransmissions included).
    pub bytes_sent: u64,
    /// Data bytes the peer acknowledged (`tcpi_bytes_acked`).
    pub bytes_acked: u64,
    /// Segments sent and not yet acknowledged.
    pub unacked: u32,
    /// Bytes written by the application and not yet sent.
    pub notsent: u32,
}

impl TcpProgress {
    /// Whether something was sent and all of it is acknowledged, with
    /// nothing left to send: the peer has every byte of the answer so far.
    pub fn all_acked(&self) -> bool {
        self.bytes_acked > 0 && self.unacked == 0 && self.notsent == 0
    }
}

/// `TCP_INFO` of a connected TCP socket, through one chokepoint.
pub fn tcp_progress(fd: BorrowedFd<'_>) -> io::Result<TcpProgress> {
    // SAFETY: tcp_info is plain integers, valid when zeroed.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: `info` is a valid, writable tcp_info and `len` its size; the
    // kernel writes at most `len` bytes (an older kernel writes fewer, and
    // the rest stays zero).
    let r = unsafe {
        libc::getsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(TcpProgress {
        bytes_sent: info.tcpi_bytes_sent,
        bytes_acked: info.tcpi_bytes_acked,
        unacked: info.tcpi_unacked,
        notsent: info.tcpi_notsent_bytes,
    })
}

/// CPU time and peak memory of a reaped child and of the descendants it
/// reaped itself (`wait4`'s rusage).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ChildUsage {
    /// User CPU time, µs.
    pub user_us: u64,
    /// System CPU time, µs.
    pub sys_us: u64,
    /// Peak resident set size, KiB (the largest of them).
    pub max_rss_kib: u64,
}

impl ChildUsage {
    /// Adds `other` (CPU times add up; the peak is the larger one).
    pub fn add(&mut self, other: ChildUsage) {
        self.user_us += other.user_us;
        self.sys_us += other.sys_us;
        self.max_rss_kib = self.max_rss_kib.max(other.max_rss_kib);
    }
}

fn tv_us(t: libc::timeval) -> u64 {
    (t.tv_sec.max(0) as u64) * 1_000_000 + t.tv_usec.max(0) as u64
}

/// Reaps the exited (or exiting) child `pid`, blocking, with its rusage.
/// Call it only for a child of this process that nobody else reaps.
pub fn reap_with_usage(pid: Pid) -> io::Result<(nix::sys::wait::WaitStatus, ChildUsage)> {
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: rusage is plain integers, valid when zeroed.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: `status` and `ru` are valid, writable and live for the
        // call; wait4 writes at most one int and one rusage.
        let r = unsafe { libc::wait4(pid.as_raw(), &mut status, 0, &mut ru) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let st = nix::sys::wait::WaitStatus::from_raw(Pid::from_raw(r), status)?;
        let usage = ChildUsage {
            user_us: tv_us(ru.ru_utime),
            sys_us: tv_us(ru.ru_stime),
            max_rss_kib: ru.ru_maxrss.max(0) as u64,
        };
        return Ok((st, usage));
    }
}

/// This process's own CPU time (user, system) in µs, for a closure job.
pub fn self_cpu_us() -> (u64, u64) {
    match nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF) {
        Ok(u) => (
            tv_us(*u.user_time().as_ref()),
            tv_us(*u.system_time().as_ref()),
        ),
        Err(_) => (0, 0),
    }
}

/// The pending error of a socket (`SO_ERROR`), e.g. `ETIMEDOUT` after
/// `TCP_USER_TIMEOUT` or keepalive gave up on the peer.
pub fn socket_error(fd: BorrowedFd<'_>) -> Option<io::Error> {
    match rustix::net::sockopt::socket_error(fd) {
        Ok(Err(e)) => Some(e.into()),
        _ => None,
    }
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

pub use rustix::event::{PollFd, PollFlags};

/// `poll(2)`; `None` waits forever. EINTR is returned as an error of kind
/// `Interrupted`.
pub fn poll(fds: &mut [PollFd<'_>], timeout: Option<std::time::Duration>) -> io::Result<usize> {
    let ts = timeout.map(|d| rustix::event::Timespec {
        tv_sec: d.as_secs().min(i64::MAX as u64) as i64,
        tv_nsec: i64::from(d.subsec_nanos()),
    });
    Ok(rustix::event::poll(fds, ts.as_ref())?)
}
