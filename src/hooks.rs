//! Hook traits and the values they receive: the job context given to Rust
//! jobs, the disconnect event and the verdict of a disconnect hook, and the
//! registry (`Hooks`) the builder fills.
//!
//! Hooks run in the supervisor (disconnect, lifecycle) or in a worker (the
//! job closure). Nothing here forks or signals.

use std::net::SocketAddr;
use std::time::SystemTime;

use serde::Serialize;

use crate::scoreboard::Slot;

/// What a Rust job is told about itself.
pub struct JobContext<'a> {
    /// The job id (never repeats within a run).
    pub job_id: u64,
    /// The worker's scoreboard slot.
    pub slot: usize,
    /// The client's address.
    pub peer: SocketAddr,
    /// Our address of the connection.
    pub local: SocketAddr,
    pub(crate) board_slot: &'a Slot,
}

impl JobContext<'_> {
    /// Whether the supervisor asked to cancel this job (its client went
    /// away, or a timeout or a shutdown). A closure that checks it can stop
    /// early; one that does not is killed with its worker after the kill
    /// grace.
    pub fn is_cancelled(&self) -> bool {
        self.board_slot.cancel_requested(self.job_id).is_some()
    }
}

/// Why a client counts as gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum DisconnectReason {
    /// The client sent a FIN (close or half-close): our socket is CLOSE_WAIT.
    ClientClosed,
    /// The client reset the connection, or its socket vanished.
    ClientReset,
    /// The client stopped acknowledging data: TCP_USER_TIMEOUT or
    /// keepalive gave up on it (a peer gone without a packet).
    ClientUnresponsive,
}

impl DisconnectReason {
    /// The name used in logs (`client-closed`, `client-reset`).
    pub fn as_str(self) -> &'static str {
        match self {
            DisconnectReason::ClientClosed => "client-closed",
            DisconnectReason::ClientReset => "client-reset",
            DisconnectReason::ClientUnresponsive => "client-unresponsive",
        }
    }
}

/// A client disconnect, as given to `on_client_disconnect` hooks (and, as
/// JSON, to a `--disconnect-hook` program).
#[derive(Debug, Clone, Serialize)]
pub struct DisconnectEvent {
    /// Worker slot.
    pub slot: usize,
    /// Worker pid.
    pub pid: i32,
    /// Job id.
    pub job_id: u64,
    /// `TCP` or `TCP6`.
    pub proto: &'static str,
    /// Our address.
    pub local_host: String,
    /// Our port.
    pub local_port: u16,
    /// The client's address.
    pub foreign_host: String,
    /// The client's port.
    pub foreign_port: u16,
    /// Why the client counts as gone.
    pub reason: DisconnectReason,
    /// `--proxy-protocol`: the balancer's address (the foreign host and
    /// port are then the real client's, from the PROXY header).
    pub proxy_peer: Option<String>,
    /// Job start (unix ms).
    pub job_start_unix_ms: u64,
    /// When the supervisor detected it (unix ms).
    pub detected_unix_ms: u64,
}

impl DisconnectEvent {
    /// Job start as a `SystemTime`.
    pub fn job_start(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(self.job_start_unix_ms)
    }
}

/// A disconnect hook's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Cancel the job (the default).
    Cancel,
    /// Let the job run.
    Keep,
}

/// A Rust disconnect callback.
pub type DisconnectHook = dyn Fn(&DisconnectEvent) -> Verdict;

/// Told to `after_init`: the bound address.
#[derive(Debug, Clone)]
pub struct InitInfo {
    /// The address actually bound (with the real port for port 0).
    pub local_addr: SocketAddr,
}

/// Told to `on_worker_exit`: a worker was reaped.
#[derive(Debug, Clone)]
pub struct WorkerExit {
    /// Its slot.
    pub slot: usize,
    /// Its pid (reaped: information only).
    pub pid: i32,
    /// `exit N` or `signal NAME`.
    pub status: String,
    /// Whether jobd asked it to exit (reload, stop, shrink, recycling).
    pub planned: bool,
}

type InitHook = dyn Fn(&InitInfo);
type ShutdownHook = dyn Fn();
type WorkerExitHook = dyn Fn(&WorkerExit);
type AutoReloadHook = dyn Fn() -> bool;

/// Lifecycle and disconnect hooks.
#[derive(Default)]
pub(crate) struct Hooks {
    pub(crate) after_init: Option<Box<InitHook>>,
    pub(crate) before_shutdown: Option<Box<ShutdownHook>>,
    pub(crate) on_disconnect: Vec<Box<DisconnectHook>>,
    pub(crate) on_worker_exit: Option<Box<WorkerExitHook>>,
    pub(crate) auto_reload: Option<Box<AutoReloadHook>>,
}
