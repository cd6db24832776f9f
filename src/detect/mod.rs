//! Disconnect detection: which clients of running jobs have gone away.
//!
//! Owns the [`SocketSource`] trait and its two backends ([`sockdiag`] over
//! NETLINK_SOCK_DIAG, [`procfs`] over `/proc/net/tcp` and `/proc/net/tcp6`),
//! and the pure [`diff`] of "jobs running" against "sockets seen". It never
//! signals anything: it only says which jobs lost their client and why.

pub mod procfs;
pub mod sockdiag;

use std::net::SocketAddr;

/// Kernel TCP states (`include/net/tcp_states.h`).
#[allow(missing_docs)]
pub mod tcp_state {
    pub const ESTABLISHED: u8 = 1;
    pub const SYN_SENT: u8 = 2;
    pub const SYN_RECV: u8 = 3;
    pub const FIN_WAIT1: u8 = 4;
    pub const FIN_WAIT2: u8 = 5;
    pub const TIME_WAIT: u8 = 6;
    pub const CLOSE: u8 = 7;
    pub const CLOSE_WAIT: u8 = 8;
    pub const LAST_ACK: u8 = 9;
    pub const LISTEN: u8 = 10;
    pub const CLOSING: u8 = 11;
    pub const NEW_SYN_RECV: u8 = 12;
    pub const BOUND_INACTIVE: u8 = 13;
}

/// A set of TCP states as the kernel's `idiag_states` bit mask (`1 << state`).
pub const fn state_mask(states: &[u8]) -> u32 {
    let mut m = 0u32;
    let mut i = 0;
    while i < states.len() {
        m |= 1 << states[i];
        i += 1;
    }
    m
}

/// The states an accepted socket of a running job can be in while its fd is
/// open on our side: everything but LISTEN, TIME_WAIT, the SYN states and
/// CLOSE (a reset socket is CLOSE and absent from every dump).
pub const JOB_SOCKET_STATES: u32 = state_mask(&[
    tcp_state::ESTABLISHED,
    tcp_state::FIN_WAIT1,
    tcp_state::FIN_WAIT2,
    tcp_state::CLOSE_WAIT,
    tcp_state::LAST_ACK,
    tcp_state::CLOSING,
]);

/// One TCP socket as a backend saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SockEntry {
    /// Kernel TCP state number (see [`tcp_state`]).
    pub state: u8,
    /// Our address (the listener's address and port for accepted sockets).
    pub local: SocketAddr,
    /// The client's address.
    pub remote: SocketAddr,
    /// Socket inode (as in `/proc/<pid>/fd/N -> socket:[inode]`).
    pub inode: u64,
    /// Socket cookie (`SO_COOKIE`); 0 when the backend cannot know it (procfs).
    pub cookie: u64,
    /// Receive queue length (for a LISTEN socket: the accept queue length).
    pub rqueue: u32,
    /// Send queue length (for a LISTEN socket: the backlog limit).
    pub wqueue: u32,
    /// Owner uid.
    pub uid: u32,
}

/// Errors of the detection backends.
#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    /// Opening or binding the netlink socket failed.
    #[error("failed to open a NETLINK_SOCK_DIAG socket")]
    Socket(#[source] std::io::Error),
    /// Sending a request failed.
    #[error("failed to send a sock_diag request")]
    Send(#[source] std::io::Error),
    /// Receiving a reply failed.
    #[error("failed to receive a sock_diag reply")]
    Recv(#[source] std::io::Error),
    /// The kernel answered with an error code.
    #[error("sock_diag request failed with kernel error {0}")]
    Kernel(i32),
    /// A reply could not be parsed.
    #[error("malformed sock_diag reply: {0}")]
    Malformed(String),
    /// Reading a procfs table failed.
    #[error("failed to read {path}")]
    Procfs {
        /// The file that failed.
        path: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// A way to list TCP sockets. Both backends must agree on the same live
/// sockets (a test checks it).
pub trait SocketSource {
    /// Short name for logs (`sock-diag`, `procfs`).
    fn name(&self) -> &'static str;

    /// Appends to `out` every TCP socket, IPv4 and IPv6, whose local port is
    /// `port` and whose state bit is in `states` (see [`state_mask`]).
    /// `out` is not cleared.
    fn dump(&mut self, port: u16, states: u32, out: &mut Vec<SockEntry>) -> Result<(), DetectError>;
}
