//! SUPERVISOR ONLY: the disconnect watch (filled in by the detection work).

use std::time::Instant;

use nix::unistd::Pid;

use crate::config::Config;
use crate::scoreboard::Scoreboard;
use crate::server::Hooks;
use crate::sys::PidFd;

pub(crate) struct Watch {
    next: Instant,
}

impl Watch {
    pub(crate) fn new(_cfg: &Config, _sb: &Scoreboard) -> std::io::Result<Option<Watch>> {
        Ok(None)
    }

    pub(crate) fn next_due(&self) -> Instant {
        self.next
    }

    pub(crate) fn tick(&mut self, _cfg: &Config, _hooks: &Hooks, _sb: &Scoreboard, _pidfds: &[Option<(Pid, &PidFd)>], _woken: bool) {}

    pub(crate) fn forget_slot(&mut self, _slot: usize) {}
}
