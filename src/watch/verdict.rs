//! The verdict on a confirmed disconnect: the Rust callbacks (in order,
//! the first `Keep` wins, a panic counts as cancel), then a
//! `--disconnect-hook` program, then `--on-disconnect`. A hook program is
//! asynchronous: the watch never waits for it; its exit (reaped by whoever
//! reaps this process's children) or its deadline resolves it.
//!
//! Signals only its own hook programs, by pid, while they are unreaped.
//! Knows nothing of scans or of cancelling.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::sys::wait::{WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::config::{Config, DisconnectPolicy};
use crate::hooks::{DisconnectEvent, DisconnectReason, Hooks, Verdict};
use crate::scoreboard::{JobView, SeenBy, VerdictBy};

/// A disconnect confirmed on a running job, waiting for its verdict.
#[derive(Debug, Clone)]
pub(crate) struct Judged {
    pub(crate) slot: usize,
    /// The worker, from the caller's own records.
    pub(crate) pid: Pid,
    pub(crate) job: JobView,
    pub(crate) reason: DisconnectReason,
    /// From the hang-up to its detection (an upper bound for the scan).
    pub(crate) seen_after_us: u32,
    pub(crate) seen_by: SeenBy,
}

/// Who gave a verdict (logged as `verdict_by`).
pub(crate) type By = VerdictBy;

/// The first step of a verdict.
pub(crate) enum FirstStep<'a> {
    /// Decided at once, by the callbacks or by the policy.
    Decided(Verdict, By),
    /// The hook program at this path must be asked.
    AskProgram(&'a std::path::Path),
}

/// The verdict, at once, of the callbacks or (without a hook program) of
/// the policy; else the hook program to ask.
pub(crate) fn first_step<'a>(
    cfg: &'a Config,
    hooks: &Hooks,
    ev: &DisconnectEvent,
) -> FirstStep<'a> {
    if let Some(v) = callbacks_verdict(hooks, ev) {
        return FirstStep::Decided(v, VerdictBy::Callback);
    }
    match &cfg.disconnect_hook {
        Some(prog) => FirstStep::AskProgram(prog),
        None => FirstStep::Decided(policy(cfg), VerdictBy::Policy),
    }
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
pub(crate) fn policy(cfg: &Config) -> Verdict {
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

/// A `--disconnect-hook` program at work.
struct PendingHook {
    pid: Pid,
    deadline: Instant,
    killed: bool,
    status: Option<WaitStatus>,
    judged: Judged,
}

/// The hook programs at work, one per judged job.
#[derive(Default)]
pub(crate) struct PendingHooks {
    hooks: Vec<PendingHook>,
}

impl PendingHooks {
    /// Starts `prog` for `judged` with the event as one JSON line on its
    /// stdin. On failure, the caller applies the policy.
    pub(crate) fn start(
        &mut self,
        prog: &std::path::Path,
        timeout: Duration,
        ev: &DisconnectEvent,
        judged: Judged,
    ) -> std::io::Result<()> {
        let line = serde_json::to_string(ev).map_err(std::io::Error::other)? + "\n";
        let pid = crate::spawn::spawn_hook(prog, &line)?;
        self.hooks.push(PendingHook {
            pid,
            deadline: Instant::now() + timeout,
            killed: false,
            status: None,
            judged,
        });
        Ok(())
    }

    /// When the next hook needs attention (now, for one that exited).
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.hooks
            .iter()
            .map(|h| {
                if h.status.is_some() {
                    Instant::now()
                } else {
                    h.deadline
                }
            })
            .min()
    }

    /// Whether `pid` is a hook program of ours.
    pub(crate) fn owns(&self, pid: Pid) -> bool {
        self.hooks.iter().any(|h| h.pid == pid)
    }

    /// A hook program was reaped by the caller.
    pub(crate) fn exited(&mut self, pid: Pid, status: WaitStatus) {
        if let Some(h) = self.hooks.iter_mut().find(|h| h.pid == pid) {
            h.status = Some(status);
        }
    }

    /// Reaps the hook programs that exited (for a process that has no
    /// reaping loop of its own: `--prefork 0`). Only our own unreaped
    /// children are waited for, by pid.
    pub(crate) fn reap(&mut self) {
        for h in self.hooks.iter_mut().filter(|h| h.status.is_none()) {
            match nix::sys::wait::waitpid(h.pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => {}
                Ok(st) => h.status = Some(st),
            }
        }
    }

    /// Kills the hook programs still running (their owner is stopping).
    pub(crate) fn kill_all(&mut self) {
        for h in &self.hooks {
            if h.status.is_none() {
                // Our own child, not reaped yet: its pid is still its own.
                let _ = nix::sys::signal::kill(h.pid, Signal::SIGKILL);
            }
        }
    }

    /// Kills the hooks past their deadline (their exit then leaves the
    /// verdict to the policy) and returns the verdicts of those that
    /// exited.
    pub(crate) fn resolve(&mut self, cfg: &Config, now: Instant) -> Vec<(Judged, Verdict, By)> {
        for h in self.hooks.iter_mut() {
            if h.status.is_none() && now >= h.deadline && !h.killed {
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
        let (done, running): (Vec<_>, Vec<_>) = std::mem::take(&mut self.hooks)
            .into_iter()
            .partition(|h| h.status.is_some());
        self.hooks = running;
        done.into_iter()
            .map(|h| match hook_verdict(h.status.as_ref()) {
                Some(v) => (h.judged, v, VerdictBy::HookProgram),
                None => {
                    if !h.killed {
                        tracing::warn!(job = h.judged.job.job_id, status = ?h.status, "disconnect hook gave no verdict; applying --on-disconnect");
                    }
                    (h.judged, policy(cfg), VerdictBy::Policy)
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, JobSpec};

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
            proxy_peer: None,
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
