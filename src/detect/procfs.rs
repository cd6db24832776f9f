//! The procfs backend: lists TCP sockets from `/proc/net/tcp` and
//! `/proc/net/tcp6` through the `procfs` crate.
//!
//! Owns the reading of those two tables and the mapping of the crate's
//! `TcpState` to the kernel state numbers of [`tcp_state`]. Filtering by
//! local port and state happens here, in userspace, after the kernel has
//! formatted every TCP socket of the namespace as text: this backend is the
//! slow fallback and the cross-check of [`super::sockdiag`], never the hot
//! path. It cannot know socket cookies (they are reported as 0).
//!
//! The tables are no snapshot: the kernel hands them out a page per read and
//! resumes each read by hash bucket and offset, so while sockets come and go
//! a socket may be listed twice (removed here) or not at all. An absence
//! seen only through this backend must be confirmed before it counts as a
//! reset.

use std::io;

use procfs::ProcError;
use procfs::net::{TcpNetEntry, TcpState};

use super::{DetectError, SockEntry, SocketSource, tcp_state};

const TCP4_PATH: &str = "/proc/net/tcp";
const TCP6_PATH: &str = "/proc/net/tcp6";

/// TCP socket lister over `/proc/net/tcp` and `/proc/net/tcp6`.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProcNet {
    /// Read only `tcp6` (Some(true)) or only `tcp` (Some(false)).
    only_v6: Option<bool>,
}

impl ProcNet {
    /// A lister of both tables; it holds nothing open between dumps.
    pub fn new() -> Self {
        Self::default()
    }

    /// A lister of the listener's family only: half the reading. (An IPv6
    /// listener's IPv4 clients are IPv4-mapped and listed in `tcp6`.)
    pub fn for_family(v6: bool) -> Self {
        Self { only_v6: Some(v6) }
    }
}

impl SocketSource for ProcNet {
    fn name(&self) -> &'static str {
        "procfs"
    }

    fn dump(
        &mut self,
        port: u16,
        states: u32,
        out: &mut Vec<SockEntry>,
    ) -> Result<(), DetectError> {
        let start = out.len();
        if self.only_v6 != Some(true) {
            let v4 = procfs::net::tcp().map_err(|e| procfs_error(TCP4_PATH, e))?;
            push_matching(&v4, port, states, out);
        }
        if self.only_v6 != Some(false) {
            match procfs::net::tcp6() {
                Ok(v6) => push_matching(&v6, port, states, out),
                // A kernel booted without IPv6 has no tcp6 table: no sockets.
                Err(ProcError::NotFound(_)) => {}
                Err(e) => return Err(procfs_error(TCP6_PATH, e)),
            }
        }
        dedup_tail(out, start);
        Ok(())
    }
}

fn push_matching(entries: &[TcpNetEntry], port: u16, states: u32, out: &mut Vec<SockEntry>) {
    for e in entries {
        let state = kernel_state(&e.state);
        if e.local_address.port() != port || states & (1u32 << state) == 0 {
            continue;
        }
        out.push(SockEntry {
            state,
            local: e.local_address,
            remote: e.remote_address,
            inode: e.inode,
            cookie: 0,
            rqueue: e.rx_queue,
            wqueue: e.tx_queue,
            uid: e.uid,
        });
    }
}

/// Drops repeated sockets from `out[start..]`. The kernel writes these
/// tables one page per read() and resumes each read by hash bucket and
/// offset, so a socket created or removed meanwhile can make another one
/// appear twice (seen in tests running in parallel). A socket is its
/// 4-tuple and inode: SO_REUSEPORT listeners share the first, TIME_WAIT
/// sockets all have inode 0.
fn dedup_tail(out: &mut Vec<SockEntry>, start: usize) {
    let key = |e: &SockEntry| (e.local, e.remote, e.inode);
    let mut tail = out.split_off(start);
    tail.sort_unstable_by_key(key);
    tail.dedup_by_key(|e| key(e));
    out.append(&mut tail);
}

/// The kernel's number for a state (`include/net/tcp_states.h`).
fn kernel_state(state: &TcpState) -> u8 {
    match state {
        TcpState::Established => tcp_state::ESTABLISHED,
        TcpState::SynSent => tcp_state::SYN_SENT,
        TcpState::SynRecv => tcp_state::SYN_RECV,
        TcpState::FinWait1 => tcp_state::FIN_WAIT1,
        TcpState::FinWait2 => tcp_state::FIN_WAIT2,
        TcpState::TimeWait => tcp_state::TIME_WAIT,
        TcpState::Close => tcp_state::CLOSE,
        TcpState::CloseWait => tcp_state::CLOSE_WAIT,
        TcpState::LastAck => tcp_state::LAST_ACK,
        TcpState::Listen => tcp_state::LISTEN,
        TcpState::Closing => tcp_state::CLOSING,
        TcpState::NewSynRecv => tcp_state::NEW_SYN_RECV,
    }
}

/// Keeps the io::Error of a failed read as it is; wraps the crate's other
/// failures (a line it could not parse) as `InvalidData`.
fn procfs_error(path: &'static str, err: ProcError) -> DetectError {
    let source = match err {
        ProcError::Io(e, _) => e,
        ProcError::PermissionDenied(_) => io::ErrorKind::PermissionDenied.into(),
        ProcError::NotFound(_) => io::ErrorKind::NotFound.into(),
        ProcError::Incomplete(_) => io::ErrorKind::UnexpectedEof.into(),
        other => io::Error::new(io::ErrorKind::InvalidData, other),
    };
    DetectError::Procfs { path, source }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::detect::sockdiag::SockDiag;
    use crate::detect::sockdiag::tests::{
        V4, V6, close_wait, connect, dump, established, key_set, listener, port_filter, reset,
        wait_for,
    };
    use crate::detect::{JOB_SOCKET_STATES, state_mask};

    #[test]
    fn established_found_with_inode_v4() {
        let (_conns, entries) = established(&mut ProcNet::new(), V4);
        assert!(entries.iter().all(|e| e.cookie == 0));
    }

    #[test]
    fn established_found_with_inode_v6() {
        let (_conns, entries) = established(&mut ProcNet::new(), V6);
        assert!(entries.iter().all(|e| e.cookie == 0));
    }

    #[test]
    fn client_close_gives_close_wait_v4() {
        close_wait(&mut ProcNet::new(), V4);
    }

    #[test]
    fn client_close_gives_close_wait_v6() {
        close_wait(&mut ProcNet::new(), V6);
    }

    #[test]
    fn client_reset_leaves_table_v4() {
        reset(&mut ProcNet::new(), V4);
    }

    #[test]
    fn client_reset_leaves_table_v6() {
        reset(&mut ProcNet::new(), V6);
    }

    #[test]
    fn port_filter_excludes_other_listener_v4() {
        port_filter(&mut ProcNet::new(), V4);
    }

    #[test]
    fn port_filter_excludes_other_listener_v6() {
        port_filter(&mut ProcNet::new(), V6);
    }

    #[test]
    fn every_kernel_state_maps_to_its_number() {
        for n in 1..=12u8 {
            let state = TcpState::from_u8(n).unwrap();
            assert_eq!(kernel_state(&state), n, "{state:?}");
        }
    }

    /// Both backends see the same (state, local, remote, inode) set: live,
    /// CLOSE_WAIT and LISTEN sockets, IPv4, IPv6 and IPv4-mapped.
    fn backends_agree(ip: IpAddr) {
        let mut sd = SockDiag::open().unwrap();
        let mut pn = ProcNet::new();
        let l = listener(ip, 16);
        let at = l.local_addr().unwrap();
        let live: Vec<_> = (0..3).map(|_| connect(&l)).collect();
        let closed: Vec<_> = (0..2).map(|_| connect(&l)).collect();
        let servers: Vec<_> = closed.into_iter().map(|c| c.server).collect();
        let want = wait_for("3 ESTABLISHED and 2 CLOSE_WAIT", || {
            let e = dump(&mut sd, at, JOB_SOCKET_STATES);
            let cw = e
                .iter()
                .filter(|e| e.state == tcp_state::CLOSE_WAIT)
                .count();
            (e.len() == 5 && cw == 2).then_some(e)
        });
        assert_eq!(key_set(&want).len(), 5);

        let all_but_listen = !state_mask(&[tcp_state::LISTEN]);
        let listen = state_mask(&[tcp_state::LISTEN]);
        let close_wait = state_mask(&[tcp_state::CLOSE_WAIT]);
        for states in [JOB_SOCKET_STATES, all_but_listen, listen, close_wait] {
            let a = key_set(&dump(&mut sd, at, states));
            assert!(!a.is_empty());
            // procfs is no snapshot (see the module doc): other tests' churn
            // can hide a line from one read, so re-read until it agrees.
            let mut last = None;
            let agreed = (0..100).any(|_| {
                let b = key_set(&dump(&mut pn, at, states));
                let same = a == b;
                last = Some(b);
                same
            });
            assert!(
                agreed,
                "states {states:#x}: sock_diag {a:?}, procfs {last:?}"
            );
        }
        let uid = nix::unistd::getuid().as_raw();
        assert!(dump(&mut pn, at, u32::MAX).iter().all(|e| e.uid == uid));
        drop((live, servers));
    }

    #[test]
    fn backends_agree_v4() {
        backends_agree(V4);
    }

    #[test]
    fn backends_agree_v6() {
        backends_agree(V6);
    }

    #[test]
    fn backends_agree_ipv4_mapped() {
        backends_agree(IpAddr::V6(Ipv4Addr::LOCALHOST.to_ipv6_mapped()));
    }

    #[test]
    fn unparsable_tables_report_the_path() {
        let e = procfs_error(TCP6_PATH, ProcError::Other("bad line".into()));
        assert_eq!(e.to_string(), "failed to read /proc/net/tcp6");
    }
}
