//! `--prefork 0`: the one process is its own supervisor for the watch. It
//! runs the same disconnect watch ([`crate::watch`]) as the pool, between
//! the polls of its job loop: the same detection, the same verdict
//! (callbacks, `--disconnect-hook`, `--on-disconnect`) and the same job
//! timeout. Its requests land in its own slot, which the job loop reads
//! after every tick, so a poke needs no signal.
//!
//! Signals nothing itself; the watch signals only its own hook programs.

use std::time::Instant;

use nix::unistd::Pid;

use crate::config::Config;
use crate::hooks::Hooks;
use crate::scoreboard::Scoreboard;
use crate::watch::{Watch, Workers};

/// This process, as the watch's only worker (slot 0).
struct Myself(Pid);

impl Workers for Myself {
    fn pid(&self, slot: usize) -> Option<Pid> {
        (slot == 0).then_some(self.0)
    }

    fn poke(&self, _slot: usize) -> std::io::Result<()> {
        Ok(()) // the job loop reads the slot after every tick
    }

    fn kill(&self, _slot: usize) -> std::io::Result<()> {
        // The one process runs the watch: it is not stopped, and it ends
        // its own job (the job loop acts on the request after every tick).
        Ok(())
    }

    fn holds(&self, slot: usize, _inode: u64) -> std::io::Result<bool> {
        Ok(slot == 0) // the job's socket is ours: we accepted it
    }
}

/// The watch of a `--prefork 0` process.
pub(crate) struct InlineWatch<'a> {
    watch: Watch,
    me: Myself,
    cfg: &'a Config,
    hooks: &'a Hooks,
    sb: &'a Scoreboard,
}

impl<'a> InlineWatch<'a> {
    /// Opens the watch (the detector backend) for this process.
    pub(crate) fn new(
        cfg: &'a Config,
        hooks: &'a Hooks,
        sb: &'a Scoreboard,
    ) -> std::io::Result<InlineWatch<'a>> {
        Ok(InlineWatch {
            watch: Watch::new(cfg, sb)?,
            me: Myself(nix::unistd::getpid()),
            cfg,
            hooks,
            sb,
        })
    }

    /// When the watch wants its next tick.
    pub(crate) fn next_due(&self) -> Instant {
        self.watch.next_due()
    }

    /// Reaps finished hook programs and runs the watch; `woken`: the job
    /// loop saw its client hang up.
    pub(crate) fn tick(&mut self, woken: bool) {
        self.watch.reap_hooks();
        self.watch
            .tick(self.cfg, self.hooks, self.sb, &self.me, woken);
    }

    /// Kills the hook programs still running (the process stops).
    pub(crate) fn stop(&mut self) {
        self.watch.kill_hooks();
    }
}
