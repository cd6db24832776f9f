//! Signal dispositions and masks: the one list of the signals jobd handles
//! (read from a signalfd by the supervisor and by each worker, and reset to
//! their defaults for every program jobd starts), the reset of a freshly
//! forked worker, SIGPIPE ignored, and the kill switch of a closure worker.

use std::io;
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};

use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

/// The signals jobd handles. The supervisor and every worker block them
/// and read them from a signalfd (each process decodes what they mean to
/// it); a forked worker resets them to their defaults before it blocks
/// them; spawned programs get an empty mask.
pub const HANDLED: [Signal; 8] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGCHLD,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGTTIN,
    Signal::SIGTTOU,
];

/// [`HANDLED`] as a set.
pub fn handled_set() -> SigSet {
    let mut set = SigSet::empty();
    for s in HANDLED {
        set.add(s);
    }
    set
}

/// Blocks [`HANDLED`] in this thread and opens a non-blocking signalfd for
/// them.
pub fn handled_signalfd() -> io::Result<SignalFd> {
    let set = handled_set();
    set.thread_block()?;
    Ok(SignalFd::with_flags(
        &set,
        SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC,
    )?)
}

/// In a freshly forked worker: default dispositions for every signal the
/// supervisor handles, then exactly `mask` blocked (for the worker's own
/// signalfd), so that no signal slips through between the two steps.
/// Dispositions set by the supervisor must not survive into the worker.
pub fn reset_signals() -> io::Result<()> {
    use nix::sys::signal::{SigHandler, SigmaskHow, sigprocmask};
    let mask = handled_set();
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&mask), None).map_err(io::Error::from)?;
    for sig in HANDLED {
        // SAFETY: installing SIG_DFL runs no Rust code in signal context.
        unsafe { nix::sys::signal::signal(sig, SigHandler::SigDfl) }.map_err(io::Error::from)?;
    }
    sigprocmask(SigmaskHow::SIG_SETMASK, Some(&mask), None).map_err(io::Error::from)
}

/// Every signal back to its default action (in a forked child about to
/// exec a program): what jobd handles, what Rust ignores (SIGPIPE), and
/// what jobd's own parent left ignored.
pub fn default_signals() -> io::Result<()> {
    for n in 1..=libc::SIGRTMAX() {
        if n == libc::SIGKILL || n == libc::SIGSTOP {
            continue;
        }
        // SAFETY: SIG_DFL runs no code in signal context; numbers the
        // kernel refuses (glibc's reserved real-time ones) return EINVAL.
        unsafe {
            libc::signal(n, libc::SIG_DFL);
        }
    }
    Ok(())
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

/// The two words the SIGUSR2 handler of a closure worker compares: the kill
/// request and the job the worker runs (both in the worker's own slot).
static KILL_REQUEST: AtomicPtr<AtomicU64> = AtomicPtr::new(std::ptr::null_mut());
static CURRENT_JOB: AtomicPtr<AtomicU64> = AtomicPtr::new(std::ptr::null_mut());

extern "C" fn self_kill_handler(_: libc::c_int) {
    let (req, cur) = (
        KILL_REQUEST.load(Ordering::Acquire),
        CURRENT_JOB.load(Ordering::Acquire),
    );
    if req.is_null() || cur.is_null() {
        return;
    }
    // SAFETY: both pointers were set by `arm_self_kill` from references
    // that outlive its guard, and the guard clears them (after blocking
    // SIGUSR2) before they can dangle; only atomics are read, which is
    // async-signal-safe.
    let (req, cur) = unsafe { (&*req, &*cur) };
    let k = req.load(Ordering::Acquire);
    if k != 0 && k == cur.load(Ordering::Acquire) {
        // SAFETY: kill(getpid(), SIGKILL) is async-signal-safe.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}

/// Closure jobs run inside the worker and cannot be interrupted by the
/// worker's own loop. While one runs, SIGUSR2 is unblocked with a handler
/// that kills this worker if, and only if, `request` (the kill request)
/// names the job `current` holds at that instant: a signal that arrives
/// after the job ended (or for another job) does nothing. Returns a guard
/// that blocks SIGUSR2 again and disarms the handler.
pub fn arm_self_kill<'a>(
    request: &'a AtomicU64,
    current: &'a AtomicU64,
) -> io::Result<SelfKillGuard<'a>> {
    use nix::sys::signal::{
        SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, sigaction, sigprocmask,
    };
    KILL_REQUEST.store(std::ptr::from_ref(request).cast_mut(), Ordering::Release);
    CURRENT_JOB.store(std::ptr::from_ref(current).cast_mut(), Ordering::Release);
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
    Ok(SelfKillGuard(std::marker::PhantomData))
}

/// Blocks SIGUSR2 again (back to the worker's signalfd) and disarms the
/// kill switch when dropped.
pub struct SelfKillGuard<'a>(std::marker::PhantomData<&'a AtomicU64>);

impl Drop for SelfKillGuard<'_> {
    fn drop(&mut self) {
        use nix::sys::signal::{SigSet, SigmaskHow, sigprocmask};
        let mut set = SigSet::empty();
        set.add(Signal::SIGUSR2);
        let _ = sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None);
        KILL_REQUEST.store(std::ptr::null_mut(), Ordering::Release);
        CURRENT_JOB.store(std::ptr::null_mut(), Ordering::Release);
    }
}
