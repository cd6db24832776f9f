//! WORKER ONLY: what a worker's signals mean, decoded once for the accept
//! loop, the handler wait and the end of a closure job.
//!
//! - `SIGTERM`: retire: finish the current job, then exit 0.
//! - `SIGINT`:  kill the current job now and exit.
//! - `SIGUSR2`: a poke: read the slot's requests (cancel, kill).
//! - `SIGUSR1`: reopen the error and access logs.
//! - `SIGCHLD`: a child exited (the handler, or a hook program with
//!   `--prefork 0`).
//! - `SIGHUP`, `SIGTTIN`, `SIGTTOU`: the supervisor's business; ignored.
//!
//! Touches only this process: it reopens the logs; it never signals.

use nix::sys::signal::Signal;
use nix::sys::signalfd::SignalFd;

/// What the worker must do once its current job (if any) is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct AfterJob {
    /// SIGTERM arrived: exit once idle.
    pub(crate) retire: bool,
    /// SIGINT arrived: exit now.
    pub(crate) exit_now: bool,
}

impl AfterJob {
    /// Adds what `other` asks for.
    pub(crate) fn merge(&mut self, other: AfterJob) {
        self.retire |= other.retire;
        self.exit_now |= other.exit_now;
    }
}

/// Reads every pending signal, notes SIGTERM and SIGINT in `after`, and
/// reopens the logs on SIGUSR1. Returns whether a SIGINT was among them.
pub(crate) fn drain(sigfd: &SignalFd, slot: usize, after: &mut AfterJob) -> bool {
    let mut interrupted = false;
    for signo in pending(sigfd) {
        match Signal::try_from(signo as i32) {
            Ok(Signal::SIGTERM) => after.retire = true,
            Ok(Signal::SIGINT) => {
                after.exit_now = true;
                interrupted = true;
            }
            Ok(Signal::SIGUSR1) => reopen_logs(slot),
            _ => {}
        }
    }
    interrupted
}

/// The numbers of the pending signals, read in as few reads as there are
/// batches of [`BATCH`] (one, almost always: no read ends in `EAGAIN`
/// unless none was pending).
fn pending(sigfd: &SignalFd) -> Vec<u32> {
    const INFO: usize = std::mem::size_of::<libc::signalfd_siginfo>();
    let mut out = Vec::new();
    let mut buf = [0u8; BATCH * INFO];
    loop {
        match nix::unistd::read(sigfd, &mut buf) {
            Ok(n) => {
                // ssi_signo is each record's first field.
                out.extend(
                    buf[..n]
                        .chunks_exact(INFO)
                        .map(|r| u32::from_ne_bytes([r[0], r[1], r[2], r[3]])),
                );
                if n < buf.len() {
                    return out;
                }
            }
            Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return out, // EAGAIN: none (left)
        }
    }
}

/// Signals read at once.
const BATCH: usize = 8;

/// SIGUSR1: reopen the error and access logs in this process.
fn reopen_logs(slot: usize) {
    if let Err(e) = crate::logfiles::reopen() {
        tracing::error!(slot, error = %e, "failed to reopen the logs");
    }
}
