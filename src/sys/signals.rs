//! Signal dispositions and masks: the reset of a freshly forked worker,
//! SIGPIPE ignored, and the kill switch of a closure worker.

use std::io;

use nix::sys::signal::Signal;

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
