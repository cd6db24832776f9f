//! WORKER ONLY: what a worker does with the signals it reads from its
//! signalfd, decoded once for the accept loop, the handler wait and the
//! closure job.
//!
//! Touches only this process: it reopens the logs; it never signals.

/// SIGUSR1: reopen the error and access logs in this process.
pub(crate) fn reopen_logs(slot: usize) {
    if let Err(e) = crate::logfiles::reopen() {
        tracing::error!(slot, error = %e, "failed to reopen the logs");
    }
}
