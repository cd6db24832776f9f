//! The service manager's notification protocol (`sd_notify`, when
//! `NOTIFY_SOCKET` is set; the `sd-notify` crate writes the datagrams):
//! `READY=1` once serving, `RELOADING=1` and `READY=1` around a reload,
//! `STOPPING=1`, a one-line `STATUS=` when it changes (at most once a
//! second), and `WATCHDOG=1` every half of `WATCHDOG_USEC`.
//!
//! Without `NOTIFY_SOCKET` every call is a no-op.

use std::time::{Duration, Instant};

use sd_notify::NotifyState;

/// What the supervisor tells its service manager.
pub(super) struct Notifier {
    enabled: bool,
    watchdog: Option<Duration>,
    next_ping: Instant,
    next_status: Instant,
    last_status: String,
}

impl Notifier {
    pub(super) fn new() -> Notifier {
        let enabled = std::env::var_os("NOTIFY_SOCKET").is_some();
        let watchdog =
            sd_notify::watchdog_enabled().map(|d| (d / 2).max(Duration::from_millis(10)));
        Notifier {
            enabled,
            watchdog,
            next_ping: Instant::now(),
            next_status: Instant::now(),
            last_status: String::new(),
        }
    }

    fn send(&self, state: &[NotifyState<'_>]) {
        if self.enabled
            && let Err(e) = sd_notify::notify(state)
        {
            tracing::debug!(error = %e, "sd_notify failed");
        }
    }

    /// Serving.
    pub(super) fn ready(&self) {
        self.send(&[NotifyState::Ready]);
    }

    /// A reload begins (the new generation is forked at once).
    pub(super) fn reloading(&self) {
        self.send(&[NotifyState::Reloading]);
        self.send(&[NotifyState::Ready]);
    }

    /// Another process (the upgraded jobd) is now the service's main one.
    pub(super) fn main_pid(&self, pid: nix::unistd::Pid) {
        self.send(&[NotifyState::MainPid(pid.as_raw() as u32)]);
    }

    /// Stopping (drain or kill).
    pub(super) fn stopping(&self) {
        self.send(&[NotifyState::Stopping]);
    }

    /// The periodic part: the watchdog ping and the status line. Returns
    /// when it is due again, if ever.
    /// Whether a status line is due (the caller then passes one to
    /// [`Notifier::tick`]).
    pub(super) fn wants_status(&self, now: Instant) -> bool {
        self.enabled && now >= self.next_status
    }

    pub(super) fn tick(&mut self, now: Instant, status: Option<String>) -> Option<Instant> {
        if !self.enabled {
            return None;
        }
        if let Some(every) = self.watchdog
            && now >= self.next_ping
        {
            self.send(&[NotifyState::Watchdog]);
            self.next_ping = now + every;
        }
        if let Some(s) = status {
            if s != self.last_status {
                self.send(&[NotifyState::Status(&s)]);
                self.last_status = s;
            }
            self.next_status = now + Duration::from_secs(1);
        }
        Some(match self.watchdog {
            Some(_) => self.next_ping.min(self.next_status),
            None => self.next_status,
        })
    }
}
