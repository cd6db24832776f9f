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
    ///
    /// # Errors
    ///
    /// [`DetectError`] when the table cannot be read.
    fn dump(&mut self, port: u16, states: u32, out: &mut Vec<SockEntry>)
    -> Result<(), DetectError>;
}

/// A job the scoreboard says is running, as the diff needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunningJob {
    /// Worker slot.
    pub slot: usize,
    /// Job id.
    pub job_id: u64,
    /// Client socket inode.
    pub inode: u64,
    /// Client socket cookie (0 when unknown).
    pub cookie: u64,
    /// Job start, `CLOCK_MONOTONIC` ns.
    pub start_mono_ns: u64,
}

/// A job whose client is gone, with the reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gone {
    /// Worker slot.
    pub slot: usize,
    /// Job id.
    pub job_id: u64,
    /// Why.
    pub reason: crate::hooks::DisconnectReason,
}

/// The pure diff of "jobs running" against "sockets seen" in one scan.
///
/// - A job that started at or after `scan_start_ns` is skipped: its socket
///   may be newer than the scan.
/// - A job's socket (matched by inode, and by cookie where both sides know
///   it) that is absent from the scan was reset or vanished:
///   `client-reset`, whatever the FIN policy.
/// - A socket in CLOSE_WAIT, LAST_ACK or CLOSING received the client's FIN:
///   `client-closed`, unless `fin_counts` is false (`--on-fin keep`).
/// - ESTABLISHED and the FIN_WAIT states (our side closed) are never a
///   disconnect.
///
/// `seen` must hold every socket of the listener's port in
/// [`JOB_SOCKET_STATES`]; it is sorted by inode here.
pub fn diff(
    jobs: &[RunningJob],
    seen: &mut [SockEntry],
    scan_start_ns: u64,
    fin_counts: bool,
) -> Vec<Gone> {
    use crate::hooks::DisconnectReason;
    seen.sort_unstable_by_key(|e| e.inode);
    let mut out = Vec::new();
    for job in jobs {
        if job.start_mono_ns >= scan_start_ns || job.inode == 0 {
            continue;
        }
        let lo = seen.partition_point(|e| e.inode < job.inode);
        let entry = seen[lo..]
            .iter()
            .take_while(|e| e.inode == job.inode)
            .find(|e| e.cookie == 0 || job.cookie == 0 || e.cookie == job.cookie);
        let reason = match entry {
            None => Some(DisconnectReason::ClientReset),
            Some(e) => match e.state {
                tcp_state::CLOSE_WAIT | tcp_state::LAST_ACK | tcp_state::CLOSING if fin_counts => {
                    Some(DisconnectReason::ClientClosed)
                }
                _ => None,
            },
        };
        if let Some(reason) = reason {
            out.push(Gone {
                slot: job.slot,
                job_id: job.job_id,
                reason,
            });
        }
    }
    out
}

#[cfg(test)]
mod diff_tests {
    use super::*;
    use crate::hooks::DisconnectReason::*;

    fn entry(inode: u64, state: u8, cookie: u64) -> SockEntry {
        SockEntry {
            state,
            local: "127.0.0.1:7000".parse().unwrap(),
            remote: "127.0.0.1:40000".parse().unwrap(),
            inode,
            cookie,
            rqueue: 0,
            wqueue: 0,
            uid: 0,
        }
    }

    fn job(slot: usize, inode: u64, cookie: u64, start: u64) -> RunningJob {
        RunningJob {
            slot,
            job_id: 100 + slot as u64,
            inode,
            cookie,
            start_mono_ns: start,
        }
    }

    #[test]
    fn classifies_fin_reset_and_live() {
        let jobs = [
            job(0, 10, 1, 5),
            job(1, 11, 2, 5),
            job(2, 12, 3, 5),
            job(3, 13, 4, 5),
        ];
        let mut seen = [
            entry(10, tcp_state::ESTABLISHED, 1),
            entry(11, tcp_state::CLOSE_WAIT, 2),
            entry(13, tcp_state::FIN_WAIT2, 4),
        ];
        let gone = diff(&jobs, &mut seen, 100, true);
        assert_eq!(
            gone,
            vec![
                Gone {
                    slot: 1,
                    job_id: 101,
                    reason: ClientClosed
                },
                Gone {
                    slot: 2,
                    job_id: 102,
                    reason: ClientReset
                },
            ]
        );
    }

    #[test]
    fn fin_keep_only_counts_resets() {
        let jobs = [job(0, 10, 1, 5), job(1, 11, 2, 5)];
        let mut seen = [entry(10, tcp_state::CLOSE_WAIT, 1)];
        let gone = diff(&jobs, &mut seen, 100, false);
        assert_eq!(
            gone,
            vec![Gone {
                slot: 1,
                job_id: 101,
                reason: ClientReset
            }]
        );
    }

    /// Regression guard: a job accepted while the scan ran is not in the
    /// dump, and must not be taken for a reset one.
    #[test]
    fn job_newer_than_the_scan_is_skipped() {
        let jobs = [job(0, 10, 1, 100), job(1, 11, 2, 150)];
        let gone = diff(&jobs, &mut [], 100, true);
        assert!(gone.is_empty());
    }

    /// A socket with the same inode but another cookie is another socket.
    #[test]
    fn cookie_mismatch_is_absence() {
        let jobs = [job(0, 10, 7, 5)];
        let mut seen = [entry(10, tcp_state::ESTABLISHED, 8)];
        assert_eq!(diff(&jobs, &mut seen, 100, true)[0].reason, ClientReset);
        // procfs does not know cookies: the inode alone matches.
        let mut seen = [entry(10, tcp_state::ESTABLISHED, 0)];
        assert!(diff(&jobs, &mut seen, 100, true).is_empty());
    }
}
