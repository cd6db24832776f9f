//! The verdict on a disconnect: the Rust callbacks (in order, the first
//! `Keep` wins, a panic counts as cancel), then a `--disconnect-hook`
//! program (asynchronous: its exit, reaped by its owner, or its deadline
//! resolves it), then `--on-disconnect`. Carries the verdict out through
//! [`super::cancel`].
//!
//! Signals only its own hook programs, unreaped, by pid.

use std::sync::atomic::Ordering;
use std::time::Instant;

use nix::sys::signal::Signal;
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;

use super::{Judged, Watch};
use crate::config::{Config, DisconnectPolicy};
use crate::hooks::{DisconnectEvent, DisconnectReason, Hooks, Verdict};
use crate::scoreboard::Scoreboard;
use crate::sys::PidFd;
use crate::worker::job::reason;

/// A `--disconnect-hook` program at work: the supervisor never waits for
/// it; its exit (reaped by the supervisor) or its deadline resolves it.
pub(super) struct PendingHook {
    pub(super) pid: Pid,
    pub(super) deadline: Instant,
    pub(super) killed: bool,
    pub(super) status: Option<WaitStatus>,
    pub(super) judged: Judged,
}

/// The verdict of the Rust callbacks (in order; the first `Keep` wins; a
/// panic counts as cancel), or None when none is registered.
fn callbacks_verdict(hooks: &Hooks, ev: &DisconnectEvent) -> Option<Verdict> {
    if hooks.on_disconnect.is_empty() {
        return None;
    }
    for (i, h) in hooks.on_disconnect.iter().enumerate() {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| h(ev))) {
            Ok(Verdict::Keep) => return Some(Verdict::Keep),
            Ok(Verdict::Cancel) => {}
            Err(_) => {
                tracing::error!(
                    job = ev.job_id,
                    hook = i,
                    "on_client_disconnect callback panicked; treating it as cancel"
                );
            }
        }
    }
    Some(Verdict::Cancel)
}

/// `--on-disconnect`: what happens when no hook decides.
fn policy(cfg: &Config) -> Verdict {
    match cfg.on_disconnect {
        DisconnectPolicy::Cancel => Verdict::Cancel,
        DisconnectPolicy::Log => Verdict::Keep,
    }
}

/// The verdict of a `--disconnect-hook` program from its exit: 0 cancels,
/// 3 keeps, anything else (another code, a signal, a timeout) leaves it to
/// the policy.
fn hook_verdict(status: Option<&WaitStatus>) -> Option<Verdict> {
    match status {
        Some(WaitStatus::Exited(_, 0)) => Some(Verdict::Cancel),
        Some(WaitStatus::Exited(_, 3)) => Some(Verdict::Keep),
        _ => None,
    }
}

impl Watch {
    /// Asks for the verdict on a confirmed disconnect: the callbacks, else
    /// the hook program (pending until it exits), else the policy.
    pub(super) fn decide(
        &mut self,
        cfg: &Config,
        hooks: &Hooks,
        sb: &Scoreboard,
        pidfd: &PidFd,
        judged: Judged,
        ev: &DisconnectEvent,
    ) {
        if let Some(v) = callbacks_verdict(hooks, ev) {
            self.act(cfg, sb, pidfd, &judged, v, "callback");
            return;
        }
        if let Some(prog) = &cfg.disconnect_hook {
            let line = serde_json::to_string(ev)
                .map_err(std::io::Error::other)
                .map(|j| j + "\n");
            match line.and_then(|l| crate::spawn::spawn_hook(prog, &l)) {
                Ok(hook) => {
                    self.pending_hooks.push(PendingHook {
                        pid: hook,
                        deadline: Instant::now() + cfg.hook_timeout,
                        killed: false,
                        status: None,
                        judged,
                    });
                    return;
                }
                Err(e) => {
                    tracing::warn!(job = judged.job.job_id, hook = %prog.display(), error = %e, "disconnect hook failed to start; applying --on-disconnect");
                }
            }
        }
        self.act(cfg, sb, pidfd, &judged, policy(cfg), "policy");
    }

    /// Whether `pid` is a hook program of ours (the supervisor reaps it and
    /// hands its status over with [`Watch::hook_exited`]).
    pub(crate) fn owns(&self, pid: Pid) -> bool {
        self.pending_hooks.iter().any(|h| h.pid == pid)
    }

    /// A hook program was reaped.
    pub(crate) fn hook_exited(&mut self, pid: Pid, status: WaitStatus) {
        if let Some(h) = self.pending_hooks.iter_mut().find(|h| h.pid == pid) {
            h.status = Some(status);
        }
    }

    /// Kills the hook programs still running (the supervisor is stopping).
    pub(crate) fn kill_hooks(&mut self) {
        for h in &self.pending_hooks {
            if h.status.is_none() {
                // Our own child, not reaped yet: its pid is still its own.
                let _ = nix::sys::signal::kill(h.pid, Signal::SIGKILL);
            }
        }
    }

    /// Applies the verdicts of hook programs that exited; kills those past
    /// their deadline (their exit then leaves the verdict to the policy).
    pub(super) fn resolve_hooks(
        &mut self,
        cfg: &Config,
        sb: &Scoreboard,
        workers: &[Option<(Pid, &PidFd)>],
        now: Instant,
    ) {
        let mut done = Vec::new();
        for (i, h) in self.pending_hooks.iter_mut().enumerate() {
            if h.status.is_some() {
                done.push(i);
            } else if now >= h.deadline && !h.killed {
                tracing::warn!(
                    job = h.judged.job.job_id,
                    timeout_ms = cfg.hook_timeout.as_millis() as u64,
                    "disconnect hook gave no answer in time; killing it"
                );
                // Our own child, not reaped yet: its pid is still its own.
                let _ = nix::sys::signal::kill(h.pid, Signal::SIGKILL);
                h.killed = true;
            }
        }
        for i in done.into_iter().rev() {
            let h = self.pending_hooks.swap_remove(i);
            let verdict = match hook_verdict(h.status.as_ref()) {
                Some(v) => (v, "hook-program"),
                None => {
                    if !h.killed {
                        tracing::warn!(job = h.judged.job.job_id, status = ?h.status, "disconnect hook gave no verdict; applying --on-disconnect");
                    }
                    (policy(cfg), "policy")
                }
            };
            // The same worker must still run the same job.
            let Some((pid, pidfd)) = workers.get(h.judged.slot).and_then(|w| *w) else {
                continue;
            };
            if pid != h.judged.pid || sb.slot(h.judged.slot).job() != Some(h.judged.job) {
                continue;
            }
            self.act(cfg, sb, pidfd, &h.judged, verdict.0, verdict.1);
        }
    }

    /// Carries out a verdict: cancels (and logs `job cancelled`) or logs
    /// that the job is kept.
    pub(super) fn act(
        &mut self,
        cfg: &Config,
        sb: &Scoreboard,
        pidfd: &PidFd,
        j: &Judged,
        verdict: Verdict,
        by: &'static str,
    ) {
        let peer = j.job.peer.map(|p| p.to_string()).unwrap_or_default();
        match verdict {
            Verdict::Keep => {
                tracing::info!(slot = j.slot, pid = j.pid.as_raw(), job = j.job.job_id, peer = %peer, reason = %j.reason.as_str(), verdict_by = by, "client disconnected; job kept");
            }
            Verdict::Cancel => {
                let code = match j.reason {
                    DisconnectReason::ClientClosed => reason::CLIENT_CLOSED,
                    DisconnectReason::ClientReset => reason::CLIENT_RESET,
                };
                if self.cancel(sb, j.slot, &j.job, code, pidfd, cfg.kill_grace) {
                    sb.header()
                        .cancelled_disconnect
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::info!(
                        slot = j.slot,
                        pid = j.pid.as_raw(),
                        job = j.job.job_id,
                        peer = %peer,
                        reason = %j.reason.as_str(),
                        ran_ms = j.ran_ms,
                        seen_after_ms = format_args!("{:.1}", j.seen_after_ms),
                        seen_by = j.seen_by,
                        verdict_by = by,
                        "job cancelled"
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::JobSpec;

    fn ev() -> DisconnectEvent {
        DisconnectEvent {
            slot: 0,
            pid: 1,
            job_id: 7,
            proto: "TCP",
            local_host: "127.0.0.1".into(),
            local_port: 7000,
            foreign_host: "127.0.0.1".into(),
            foreign_port: 40000,
            reason: DisconnectReason::ClientClosed,
            job_start_unix_ms: 0,
            detected_unix_ms: 0,
        }
    }

    fn cfg() -> Config {
        Config::new(JobSpec::Handler {
            program: "/bin/cat".into(),
            args: vec![],
        })
    }

    #[test]
    fn no_hook_follows_the_policy() {
        let mut c = cfg();
        assert_eq!(callbacks_verdict(&Hooks::default(), &ev()), None);
        assert_eq!(policy(&c), Verdict::Cancel);
        c.on_disconnect = DisconnectPolicy::Log;
        assert_eq!(policy(&c), Verdict::Keep);
    }

    #[test]
    fn hook_program_exit_codes() {
        let p = Pid::from_raw(1);
        assert_eq!(
            hook_verdict(Some(&WaitStatus::Exited(p, 0))),
            Some(Verdict::Cancel)
        );
        assert_eq!(
            hook_verdict(Some(&WaitStatus::Exited(p, 3))),
            Some(Verdict::Keep)
        );
        assert_eq!(hook_verdict(Some(&WaitStatus::Exited(p, 1))), None);
        assert_eq!(
            hook_verdict(Some(&WaitStatus::Signaled(p, Signal::SIGKILL, false))),
            None
        );
        assert_eq!(hook_verdict(None), None);
    }

    #[test]
    fn callbacks_run_in_order_and_the_first_keep_wins() {
        let calls = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
        let mut h = Hooks::default();
        for (i, v) in [
            (1, Verdict::Cancel),
            (2, Verdict::Keep),
            (3, Verdict::Cancel),
        ] {
            let calls = calls.clone();
            h.on_disconnect.push(Box::new(move |_| {
                calls.borrow_mut().push(i);
                v
            }));
        }
        assert_eq!(callbacks_verdict(&h, &ev()), Some(Verdict::Keep));
        assert_eq!(*calls.borrow(), vec![1, 2]);
    }

    /// Regression guard: a panicking callback must not take the supervisor
    /// down; it counts as cancel, and the next callbacks still run.
    #[test]
    fn panicking_callback_counts_as_cancel() {
        let mut h = Hooks::default();
        h.on_disconnect.push(Box::new(|_| panic!("hook bug")));
        assert_eq!(callbacks_verdict(&h, &ev()), Some(Verdict::Cancel));
        h.on_disconnect.push(Box::new(|_| Verdict::Keep));
        assert_eq!(callbacks_verdict(&h, &ev()), Some(Verdict::Keep));
    }
}
