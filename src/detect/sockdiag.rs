//! The NETLINK_SOCK_DIAG backend: lists TCP sockets by asking the kernel.
//!
//! Owns one netlink socket, its receive buffer and its sequence counter, and
//! everything about the wire format: building `inet_diag_req_v2` requests
//! (with a hand-appended `INET_DIAG_REQ_BYTECODE` filter `sport == port`),
//! walking every message of every reply datagram, and turning
//! `inet_diag_msg` headers into [`SockEntry`] values. It keeps no state about
//! jobs and never acts on a socket: it only reports what the kernel holds.
//!
//! After warm-up a [`SocketSource::dump`] allocates nothing: the request is
//! built on the stack and every reply datagram lands in the same buffer.
//! A kernel error comes back as [`DetectError::Kernel`] holding the positive
//! errno (`NLMSG_ERROR`, or the code of `NLMSG_DONE`).

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use netlink_packet_core::{
    DoneBuffer, ErrorBuffer, NLM_F_DUMP, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR, NLMSG_NOOP,
    NLMSG_OVERRUN, NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload, Parseable,
};
use netlink_packet_sock_diag::inet::{
    ExtensionFlags, InetRequest, InetResponseHeader, SocketId, StateFlags,
};
use netlink_packet_sock_diag::{
    AF_INET, AF_INET6, IPPROTO_TCP, SOCK_DIAG_BY_FAMILY, SockDiagMessage,
};
use netlink_sys::{Socket, SocketAddr as NetlinkAddr, protocols::NETLINK_SOCK_DIAG};
use nix::sys::socket::{setsockopt, sockopt::ReceiveTimeout};
use nix::sys::time::{TimeVal, TimeValLike};

use super::{DetectError, SockEntry, SocketSource, state_mask, tcp_state};

/// Size of the receive buffer. The kernel never builds a dump datagram
/// larger than `SKB_WITH_OVERHEAD(32768)`, so a datagram always fits.
const RECV_BUF_LEN: usize = 32 * 1024;

/// Upper bound for one blocking `recv`. The kernel answers a request from the
/// `send` and `recv` calls themselves, so this only guards against a bug.
const RECV_TIMEOUT: Duration = Duration::from_secs(5);

/// `INET_DIAG_REQ_BYTECODE`: the request attribute carrying a filter program.
const INET_DIAG_REQ_BYTECODE: u16 = 1;

/// `INET_DIAG_BC_S_EQ`: accept when the local port equals the operand.
const INET_DIAG_BC_S_EQ: u8 = 11;

/// Length of the whole bytecode attribute: a 4-byte `rtattr` header, the
/// `S_EQ` op and its operand op (4 bytes each).
const BYTECODE_ATTR_LEN: usize = 4 + 8;

/// Room for one request: header, `inet_diag_req_v2` (56 bytes) and the
/// bytecode attribute.
const REQUEST_BUF_LEN: usize = 128;

/// Reads after an aborted request, at most, before giving up on draining.
const DRAIN_LIMIT: usize = 1 << 16;

/// TCP socket lister over NETLINK_SOCK_DIAG.
///
/// One instance serves one thread; requests are strictly sequential.
pub struct SockDiag {
    sock: Socket,
    /// Receive buffer, reused for every datagram (`recv` fills its spare
    /// capacity only, so it is cleared, never shrunk).
    buf: Vec<u8>,
    /// Sequence number of the last request sent.
    seq: u32,
    /// Dump only this address family (AF_INET or AF_INET6); 0: both.
    family: u8,
}

/// How a reply ended, as seen by the message walker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    /// More datagrams belong to this reply.
    More,
    /// The reply is complete.
    Done,
}

impl SockDiag {
    /// Opens and binds a NETLINK_SOCK_DIAG socket. Needs no privilege.
    ///
    /// # Errors
    ///
    /// [`DetectError`] when the kernel has no sock_diag or refuses the socket.
    pub fn open() -> Result<Self, DetectError> {
        let mut sock = Socket::new(NETLINK_SOCK_DIAG).map_err(DetectError::Socket)?;
        sock.bind_auto().map_err(DetectError::Socket)?;
        sock.connect(&NetlinkAddr::new(0, 0))
            .map_err(DetectError::Socket)?;
        let timeout = TimeVal::milliseconds(RECV_TIMEOUT.as_millis() as i64);
        setsockopt(&sock, ReceiveTimeout, &timeout)
            .map_err(|e| DetectError::Socket(io::Error::from(e)))?;
        Ok(Self {
            sock,
            buf: Vec::with_capacity(RECV_BUF_LEN),
            seq: 0,
            family: 0,
        })
    }

    /// Restricts dumps to one address family: the listener's. Every dump
    /// walks the kernel's whole TCP hash, so one family costs half of two.
    /// (An IPv6 listener's IPv4 clients are IPv4-mapped AF_INET6 sockets.)
    pub fn only_family(&mut self, v6: bool) {
        self.family = if v6 { AF_INET6 } else { AF_INET };
    }

    /// Finds one socket exactly, by its cookie and 4-tuple, whatever its
    /// state. `Ok(None)` when the kernel no longer holds it in its lookup
    /// tables (a reset socket, or a closed one).
    ///
    /// # Errors
    ///
    /// [`DetectError`] when the request or its reply fails.
    ///
    /// `local` decides the address family: pass the addresses as the kernel
    /// reports them (an IPv4 client of an IPv6 listener is IPv4-mapped).
    pub fn lookup(
        &mut self,
        cookie: u64,
        local: SocketAddr,
        remote: SocketAddr,
    ) -> Result<Option<SockEntry>, DetectError> {
        let mut socket_id = match local {
            SocketAddr::V4(_) => SocketId::new_v4(),
            SocketAddr::V6(_) => SocketId::new_v6(),
        };
        socket_id.source_port = local.port();
        socket_id.destination_port = remote.port();
        socket_id.source_address = local.ip();
        socket_id.destination_address = remote.ip();
        socket_id.cookie = cookie_to_wire(cookie);
        let request = InetRequest {
            family: family_of(&local),
            protocol: IPPROTO_TCP,
            extensions: ExtensionFlags::empty(),
            states: StateFlags::from_bits_retain(u32::MAX),
            socket_id,
        };
        let mut found = None;
        let result = self.transact(request, NLM_F_REQUEST, None, |entry| found = Some(entry));
        match result {
            Ok(()) => Ok(found),
            // ENOENT: nothing has this 4-tuple and cookie; ESTALE: only a
            // socket with another cookie (older kernels answer so).
            Err(DetectError::Kernel(code)) if code == libc::ENOENT || code == libc::ESTALE => {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// The LISTEN sockets on `port`, IPv4 and IPv6: `rqueue` is the accept
    /// queue length, `wqueue` the backlog limit.
    ///
    /// # Errors
    ///
    /// [`DetectError`] when a dump fails.
    pub fn listen_queue(&mut self, port: u16) -> Result<Vec<SockEntry>, DetectError> {
        let mut out = Vec::new();
        self.dump(port, state_mask(&[tcp_state::LISTEN]), &mut out)?;
        Ok(out)
    }

    /// One dump of one address family, filtered by state and local port.
    fn dump_family(
        &mut self,
        family: u8,
        port: u16,
        states: u32,
        out: &mut Vec<SockEntry>,
    ) -> Result<(), DetectError> {
        let request = InetRequest {
            family,
            protocol: IPPROTO_TCP,
            extensions: ExtensionFlags::empty(),
            // Bits 12 and 13 (NEW_SYN_RECV, BOUND_INACTIVE) have no flag.
            states: StateFlags::from_bits_retain(states),
            socket_id: if family == AF_INET {
                SocketId::new_v4()
            } else {
                SocketId::new_v6()
            },
        };
        let bytecode = sport_eq(port);
        self.transact(
            request,
            NLM_F_REQUEST | NLM_F_DUMP,
            Some(&bytecode),
            |entry| out.push(entry),
        )
    }

    /// Sends one request and hands every socket of its reply to `on_entry`.
    /// A reply cut short on our side is drained, so that the next request
    /// does not meet a dump still in progress (the kernel would say EBUSY).
    fn transact(
        &mut self,
        request: InetRequest,
        flags: u16,
        bytecode: Option<&[u8; 8]>,
        mut on_entry: impl FnMut(SockEntry),
    ) -> Result<(), DetectError> {
        self.seq = self.seq.wrapping_add(1);
        let mut req = [0u8; REQUEST_BUF_LEN];
        let len = encode_request(&mut req, request, flags, self.seq, bytecode);
        let sent = loop {
            match self.sock.send(&req[..len], 0) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other,
            }
        };
        match sent {
            Ok(n) if n == len => {}
            Ok(n) => {
                return Err(DetectError::Send(io::Error::other(format!(
                    "short send: {n} of {len} bytes"
                ))));
            }
            Err(e) => return Err(DetectError::Send(e)),
        }
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        loop {
            match self.recv_datagram(dump, &mut on_entry) {
                Ok(Flow::More) => {}
                Ok(Flow::Done) => return Ok(()),
                Err(e) => {
                    // After a kernel error nothing of this reply is left,
                    // but an older dump might be (then the error is EBUSY):
                    // one non-blocking read costs nothing, so drain always.
                    self.drain();
                    return Err(e);
                }
            }
        }
    }

    /// Receives one datagram and walks all of its messages.
    fn recv_datagram(
        &mut self,
        dump: bool,
        on_entry: &mut impl FnMut(SockEntry),
    ) -> Result<Flow, DetectError> {
        self.buf.clear();
        let size = loop {
            match self.sock.recv(&mut self.buf, libc::MSG_TRUNC) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other.map_err(DetectError::Recv)?,
            }
        };
        if size > self.buf.len() {
            return Err(DetectError::Malformed(format!(
                "reply datagram truncated: {size} bytes, buffer holds {}",
                self.buf.len()
            )));
        }
        walk_datagram(&self.buf[..size], self.seq, dump, on_entry)
    }

    /// Discards whatever is left of an aborted reply, without blocking.
    /// Each read lets the kernel build the next part of a running dump, so
    /// reading until EAGAIN also finishes the dump.
    fn drain(&mut self) {
        for _ in 0..DRAIN_LIMIT {
            self.buf.clear();
            match self
                .sock
                .recv(&mut self.buf, libc::MSG_DONTWAIT | libc::MSG_TRUNC)
            {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    }
}

impl std::fmt::Debug for SockDiag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::os::fd::AsRawFd;
        f.debug_struct("SockDiag")
            .field("fd", &self.sock.as_raw_fd())
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

impl SocketSource for SockDiag {
    fn name(&self) -> &'static str {
        "sock-diag"
    }

    fn dump(
        &mut self,
        port: u16,
        states: u32,
        out: &mut Vec<SockEntry>,
    ) -> Result<(), DetectError> {
        if self.family != AF_INET6 {
            self.dump_family(AF_INET, port, states, out)?;
        }
        if self.family != AF_INET {
            self.dump_family(AF_INET6, port, states, out)?;
        }
        Ok(())
    }
}

/// Writes one request into `buf` and returns its length: the crate's
/// serialized `InetRequest`, then (for dumps) the bytecode attribute, with
/// the netlink header's length patched to cover it.
fn encode_request(
    buf: &mut [u8; REQUEST_BUF_LEN],
    request: InetRequest,
    flags: u16,
    seq: u32,
    bytecode: Option<&[u8; 8]>,
) -> usize {
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = seq;
    let mut message = NetlinkMessage::new(
        header,
        NetlinkPayload::from(SockDiagMessage::InetRequest(request)),
    );
    message.finalize();
    let base = message.buffer_len();
    message.serialize(&mut buf[..base]);
    let Some(bytecode) = bytecode else {
        return base;
    };
    // `base` is 16 + 56 = 72, already 4-aligned, so the attribute follows
    // directly; its own length (12) is 4-aligned too.
    let attr = &mut buf[base..base + BYTECODE_ATTR_LEN];
    attr[0..2].copy_from_slice(&(BYTECODE_ATTR_LEN as u16).to_ne_bytes());
    attr[2..4].copy_from_slice(&INET_DIAG_REQ_BYTECODE.to_ne_bytes());
    attr[4..12].copy_from_slice(bytecode);
    let total = base + BYTECODE_ATTR_LEN;
    NetlinkBuffer::new(&mut buf[..total]).set_length(total as u32);
    total
}

/// The filter program `sport == port`, as `ss` builds it: an `S_EQ` op
/// (`struct inet_diag_bc_op { u8 code; u8 yes; u16 no; }`) whose "yes"
/// jumps 8 bytes to the end (accept) and whose "no" jumps 12 bytes, past
/// the end (reject), then an operand op carrying the port in its `no` field,
/// in host byte order.
fn sport_eq(port: u16) -> [u8; 8] {
    let mut bc = [0u8; 8];
    bc[0] = INET_DIAG_BC_S_EQ;
    bc[1] = 8;
    bc[2..4].copy_from_slice(&12u16.to_ne_bytes());
    bc[6..8].copy_from_slice(&port.to_ne_bytes());
    bc
}

/// Walks every message of one datagram. Messages of other sequence numbers
/// (left over from an aborted request) are skipped.
fn walk_datagram(
    mut rest: &[u8],
    seq: u32,
    dump: bool,
    on_entry: &mut impl FnMut(SockEntry),
) -> Result<Flow, DetectError> {
    while !rest.is_empty() {
        let msg = NetlinkBuffer::new_checked(rest)
            .map_err(|e| DetectError::Malformed(format!("bad netlink header: {e}")))?;
        let len = msg.length() as usize;
        let payload = msg.payload();
        let msg_seq = msg.sequence_number();
        let msg_type = msg.message_type();
        // Messages are 4-byte aligned; the last one may lack its padding.
        rest = rest.get(align4(len)..).unwrap_or(&[]);
        if msg_seq != seq {
            continue;
        }
        match msg_type {
            NLMSG_NOOP => {}
            NLMSG_ERROR => {
                let err = ErrorBuffer::new_checked(payload)
                    .map_err(|e| DetectError::Malformed(format!("bad error message: {e}")))?;
                return match err.code() {
                    // An acknowledgement: the request is complete.
                    None => Ok(Flow::Done),
                    Some(code) => Err(DetectError::Kernel(code.get().wrapping_neg())),
                };
            }
            NLMSG_DONE => {
                // Older kernels may send a bare header; newer ones a code.
                if payload.len() >= 4 {
                    let done = DoneBuffer::new_checked(payload)
                        .map_err(|e| DetectError::Malformed(format!("bad done message: {e}")))?;
                    if done.code() != 0 {
                        return Err(DetectError::Kernel(done.code().wrapping_neg()));
                    }
                }
                return Ok(Flow::Done);
            }
            NLMSG_OVERRUN => {
                return Err(DetectError::Malformed("netlink overrun".into()));
            }
            SOCK_DIAG_BY_FAMILY => {
                let header = InetResponseHeader::parse(payload)
                    .map_err(|e| DetectError::Malformed(format!("bad inet_diag_msg: {e}")))?;
                on_entry(entry_of(&header));
                if !dump {
                    return Ok(Flow::Done);
                }
            }
            other => {
                return Err(DetectError::Malformed(format!(
                    "unexpected netlink message type {other}"
                )));
            }
        }
    }
    Ok(Flow::More)
}

fn align4(len: usize) -> usize {
    (len + 3) & !3
}

fn family_of(addr: &SocketAddr) -> u8 {
    match addr {
        SocketAddr::V4(_) => AF_INET,
        SocketAddr::V6(_) => AF_INET6,
    }
}

/// `idiag_cookie` is two native-endian `u32`s, low half first.
fn cookie_of(wire: [u8; 8]) -> u64 {
    let lo = u32::from_ne_bytes([wire[0], wire[1], wire[2], wire[3]]);
    let hi = u32::from_ne_bytes([wire[4], wire[5], wire[6], wire[7]]);
    u64::from(lo) | (u64::from(hi) << 32)
}

fn cookie_to_wire(cookie: u64) -> [u8; 8] {
    let mut wire = [0u8; 8];
    wire[0..4].copy_from_slice(&(cookie as u32).to_ne_bytes());
    wire[4..8].copy_from_slice(&((cookie >> 32) as u32).to_ne_bytes());
    wire
}

fn entry_of(header: &InetResponseHeader) -> SockEntry {
    let id = &header.socket_id;
    SockEntry {
        state: header.state,
        local: SocketAddr::new(id.source_address, id.source_port),
        remote: SocketAddr::new(id.destination_address, id.destination_port),
        inode: u64::from(header.inode),
        cookie: cookie_of(id.cookie),
        rqueue: header.recv_queue,
        wqueue: header.send_queue,
        uid: header.uid,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    //! Real loopback sockets; the scenario helpers are shared with the procfs
    //! backend's tests, which run the same checks against the same kernel.

    use std::collections::BTreeSet;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
    use std::os::fd::{AsRawFd, OwnedFd};
    use std::time::{Duration, Instant};

    use nix::sys::socket::{
        AddressFamily, Backlog, SockFlag, SockType, SockaddrStorage, bind, getsockopt, listen,
        setsockopt, socket, sockopt::Linger,
    };

    use nix::{getsockopt_impl, sockopt_impl};

    use super::*;
    use crate::detect::JOB_SOCKET_STATES;

    sockopt_impl!(
        /// `SO_COOKIE`, which nix does not name: nix's own macro writes the
        /// getsockopt call, so this file holds no unsafe code.
        SoCookie,
        GetOnly,
        libc::SOL_SOCKET,
        libc::SO_COOKIE,
        u64
    );

    pub(crate) const V4: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
    pub(crate) const V6: IpAddr = IpAddr::V6(Ipv6Addr::LOCALHOST);

    /// A listener on `ip`, port 0, with an explicit backlog.
    pub(crate) fn listener(ip: IpAddr, backlog: i32) -> TcpListener {
        let family = match ip {
            IpAddr::V4(_) => AddressFamily::Inet,
            IpAddr::V6(_) => AddressFamily::Inet6,
        };
        let fd: OwnedFd =
            socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).expect("socket");
        bind(
            fd.as_raw_fd(),
            &SockaddrStorage::from(SocketAddr::new(ip, 0)),
        )
        .expect("bind");
        listen(&fd, Backlog::new(backlog).expect("backlog")).expect("listen");
        TcpListener::from(fd)
    }

    /// One accepted connection: its server side and its client side.
    pub(crate) struct Conn {
        pub(crate) server: TcpStream,
        pub(crate) client: TcpStream,
        /// The server side's 4-tuple, as the kernel reports it.
        pub(crate) local: SocketAddr,
        pub(crate) remote: SocketAddr,
    }

    impl Conn {
        pub(crate) fn inode(&self) -> u64 {
            nix::sys::stat::fstat(&self.server).expect("fstat").st_ino
        }

        pub(crate) fn cookie(&self) -> u64 {
            getsockopt(&self.server, SoCookie).expect("SO_COOKIE")
        }

        /// Client reset: SO_LINGER 0, then close.
        pub(crate) fn reset_client(self) -> TcpStream {
            set_abortive_close(&self.client);
            drop(self.client);
            self.server
        }
    }

    /// SO_LINGER 0: close() then resets instead of sending a FIN.
    pub(crate) fn set_abortive_close(s: &TcpStream) {
        let abort = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        setsockopt(s, Linger, &abort).expect("SO_LINGER");
    }

    /// A connection to `l`. Its server side closes abortively when dropped
    /// (before the client side, by field order), so tests leave no
    /// TIME_WAIT sockets behind to weigh on later dumps.
    pub(crate) fn connect(l: &TcpListener) -> Conn {
        let client = TcpStream::connect(l.local_addr().unwrap()).expect("connect");
        let (server, _) = l.accept().expect("accept");
        set_abortive_close(&server);
        Conn {
            local: server.local_addr().unwrap(),
            remote: server.peer_addr().unwrap(),
            server,
            client,
        }
    }

    /// Re-evaluates `f` until it gives a value or ten seconds have passed.
    pub(crate) fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(v) = f() {
                return v;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::yield_now();
        }
    }

    /// The sockets whose local address is `at` (a listener's address), in
    /// the given states. Other sockets may share the port in the other
    /// family (a TIME_WAIT left by an earlier test on 127.0.0.1:P does not
    /// stop a listener on [::1]:P), so the port filter alone is not enough
    /// for exact counts; it is checked on every call all the same.
    pub(crate) fn dump(src: &mut dyn SocketSource, at: SocketAddr, states: u32) -> Vec<SockEntry> {
        let mut out = Vec::new();
        src.dump(at.port(), states, &mut out)
            .unwrap_or_else(|e| panic!("{} dump: {e:#?}", src.name()));
        assert!(
            out.iter().all(|e| e.local.port() == at.port()),
            "{}: port filter let through {out:?}",
            src.name()
        );
        out.retain(|e| e.local == at);
        out
    }

    fn find(entries: &[SockEntry], c: &Conn) -> Option<SockEntry> {
        entries
            .iter()
            .copied()
            .find(|e| e.local == c.local && e.remote == c.remote)
    }

    /// Accepted ESTABLISHED sockets are found, exactly, with their inodes.
    pub(crate) fn established(
        src: &mut dyn SocketSource,
        ip: IpAddr,
    ) -> (Vec<Conn>, Vec<SockEntry>) {
        let l = listener(ip, 16);
        let at = l.local_addr().unwrap();
        let conns: Vec<Conn> = (0..3).map(|_| connect(&l)).collect();
        let entries = wait_for("three ESTABLISHED sockets", || {
            let e = dump(src, at, JOB_SOCKET_STATES);
            let all = e.len() == 3
                && conns
                    .iter()
                    .all(|c| find(&e, c).is_some_and(|s| s.state == tcp_state::ESTABLISHED));
            all.then_some(e)
        });
        for c in &conns {
            let e = find(&entries, c).unwrap();
            assert_eq!(e.inode, c.inode(), "{}: inode of {}", src.name(), c.remote);
            assert_eq!(e.local.ip(), ip);
        }
        (conns, entries)
    }

    /// A client close() leaves the accepted socket in CLOSE_WAIT.
    pub(crate) fn close_wait(src: &mut dyn SocketSource, ip: IpAddr) {
        let l = listener(ip, 16);
        let at = l.local_addr().unwrap();
        let keep = connect(&l);
        let gone = connect(&l);
        let (server, local, remote) = (gone.server, gone.local, gone.remote);
        drop(gone.client);
        let e = wait_for("CLOSE_WAIT", || {
            dump(src, at, JOB_SOCKET_STATES).into_iter().find(|e| {
                e.local == local && e.remote == remote && e.state == tcp_state::CLOSE_WAIT
            })
        });
        assert_eq!(e.inode, nix::sys::stat::fstat(&server).unwrap().st_ino);
        // Only CLOSE_WAIT: the live connection is not in that dump.
        let only = wait_for("a CLOSE_WAIT-only dump", || {
            let e = dump(src, at, state_mask(&[tcp_state::CLOSE_WAIT]));
            (e.len() == 1).then_some(e)
        });
        assert!(find(&only, &keep).is_none());
    }

    /// A client reset removes the accepted socket from every dump, though
    /// its fd is still open. Returns the gone socket's (cookie, local, remote).
    pub(crate) fn reset(
        src: &mut dyn SocketSource,
        ip: IpAddr,
    ) -> (TcpStream, u64, SocketAddr, SocketAddr) {
        let l = listener(ip, 16);
        let at = l.local_addr().unwrap();
        let keep = connect(&l);
        let gone = connect(&l);
        let (cookie, local, remote) = (gone.cookie(), gone.local, gone.remote);
        wait_for("both sockets", || {
            (dump(src, at, JOB_SOCKET_STATES).len() == 2).then_some(())
        });
        let server = gone.reset_client();
        // Every state but LISTEN: the reset socket is in none of them, while
        // the other connection stays.
        wait_for("the reset socket to leave the dump", || {
            let e = dump(src, at, !state_mask(&[tcp_state::LISTEN]));
            let gone = !e.iter().any(|e| e.remote == remote);
            (gone && e.len() == 1 && find(&e, &keep).is_some()).then_some(())
        });
        // Its fd is still open on our side.
        assert_eq!(server.local_addr().unwrap(), local);
        (server, cookie, local, remote)
    }

    /// Sockets of another listener never pass the port filter.
    pub(crate) fn port_filter(src: &mut dyn SocketSource, ip: IpAddr) {
        let a = listener(ip, 16);
        let b = listener(ip, 16);
        let (pa, pb) = (a.local_addr().unwrap(), b.local_addr().unwrap());
        let ca: Vec<Conn> = (0..2).map(|_| connect(&a)).collect();
        let cb: Vec<Conn> = (0..3).map(|_| connect(&b)).collect();
        let ea = wait_for("a's sockets", || {
            let e = dump(src, pa, JOB_SOCKET_STATES);
            (e.len() == 2).then_some(e)
        });
        assert!(ea.iter().all(|e| e.local == pa));
        assert!(ca.iter().all(|c| find(&ea, c).is_some()));
        assert!(cb.iter().all(|c| find(&ea, c).is_none()));
        let eb = wait_for("b's sockets", || {
            let e = dump(src, pb, JOB_SOCKET_STATES);
            (e.len() == 3).then_some(e)
        });
        assert!(cb.iter().all(|c| find(&eb, c).is_some()));
    }

    /// The (state, local, remote, inode) set of a dump, for comparisons.
    pub(crate) fn key_set(entries: &[SockEntry]) -> BTreeSet<(u8, SocketAddr, SocketAddr, u64)> {
        entries
            .iter()
            .map(|e| (e.state, e.local, e.remote, e.inode))
            .collect()
    }

    fn open() -> SockDiag {
        SockDiag::open().expect("open sock_diag")
    }

    fn established_with_cookies(ip: IpAddr) {
        let mut sd = open();
        let (conns, entries) = established(&mut sd, ip);
        for c in &conns {
            let e = find(&entries, c).unwrap();
            assert_eq!(e.cookie, c.cookie(), "cookie of {}", c.remote);
            assert_ne!(e.cookie, 0);
            let exact = sd.lookup(e.cookie, c.local, c.remote).unwrap();
            assert_eq!(exact, Some(e));
            assert_eq!(exact.unwrap().state, tcp_state::ESTABLISHED);
        }
        // The right 4-tuple with another socket's cookie is not found.
        let (a, b) = (&conns[0], &conns[1]);
        assert_eq!(sd.lookup(b.cookie(), a.local, a.remote).unwrap(), None);
    }

    #[test]
    fn established_found_with_inode_and_cookie_v4() {
        established_with_cookies(V4);
    }

    #[test]
    fn established_found_with_inode_and_cookie_v6() {
        established_with_cookies(V6);
    }

    #[test]
    fn client_close_gives_close_wait_v4() {
        close_wait(&mut open(), V4);
    }

    #[test]
    fn client_close_gives_close_wait_v6() {
        close_wait(&mut open(), V6);
    }

    fn reset_then_lookup(ip: IpAddr) {
        let mut sd = open();
        let (server, cookie, local, remote) = reset(&mut sd, ip);
        // The fd is still open, yet the exact lookup finds nothing (without
        // the cookie it would find the listener instead).
        assert_eq!(sd.lookup(cookie, local, remote).unwrap(), None);
        drop(server);
    }

    #[test]
    fn client_reset_leaves_dump_and_lookup_v4() {
        reset_then_lookup(V4);
    }

    #[test]
    fn client_reset_leaves_dump_and_lookup_v6() {
        reset_then_lookup(V6);
    }

    #[test]
    fn port_filter_excludes_other_listener_v4() {
        port_filter(&mut open(), V4);
    }

    #[test]
    fn port_filter_excludes_other_listener_v6() {
        port_filter(&mut open(), V6);
    }

    fn listen_queue_counts_pending(ip: IpAddr) {
        let mut sd = open();
        let l = listener(ip, 16);
        let addr = l.local_addr().unwrap();
        let _clients: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(addr).unwrap()).collect();
        let q = wait_for("three queued connections", || {
            let q = sd.listen_queue(addr.port()).unwrap();
            (q.len() == 1 && q[0].rqueue == 3).then_some(q[0])
        });
        assert_eq!(q.state, tcp_state::LISTEN);
        assert_eq!(q.local, addr);
        assert_eq!(q.wqueue, 16, "backlog");
        assert_eq!(q.inode, nix::sys::stat::fstat(&l).unwrap().st_ino);
        let (first, _) = l.accept().unwrap();
        set_abortive_close(&first);
        wait_for("one accepted", || {
            (sd.listen_queue(addr.port()).unwrap()[0].rqueue == 2).then_some(())
        });
    }

    #[test]
    fn listen_queue_reports_pending_connections_v4() {
        listen_queue_counts_pending(V4);
    }

    #[test]
    fn listen_queue_reports_pending_connections_v6() {
        listen_queue_counts_pending(V6);
    }

    #[test]
    fn ipv4_mapped_addresses_stay_v6() {
        let mut sd = open();
        let mapped = IpAddr::V6(Ipv4Addr::LOCALHOST.to_ipv6_mapped());
        let l = listener(mapped, 16);
        let at = l.local_addr().unwrap();
        let c = connect(&l);
        let e = wait_for("the mapped socket", || {
            dump(&mut sd, at, JOB_SOCKET_STATES).first().copied()
        });
        assert_eq!(e.local.ip(), mapped);
        assert!(matches!(e.remote, SocketAddr::V6(_)));
        assert_eq!((e.local, e.remote, e.inode), (c.local, c.remote, c.inode()));
    }

    #[test]
    fn dump_appends_and_reuses_the_buffer() {
        let mut sd = open();
        let l = listener(V4, 16);
        let at = l.local_addr().unwrap();
        let _c = connect(&l);
        let sentinel = dump(&mut sd, at, JOB_SOCKET_STATES)[0];
        let mut out = vec![sentinel];
        sd.dump(at.port(), JOB_SOCKET_STATES, &mut out).unwrap();
        assert_eq!(out[0], sentinel);
        assert_eq!(out[1..].iter().filter(|e| **e == sentinel).count(), 1);
        assert_eq!(sd.buf.capacity(), RECV_BUF_LEN);
    }

    /// Guards against a dump left running after we stop reading it (a
    /// truncated or malformed datagram): the kernel refuses every new dump
    /// on that socket with EBUSY until the old one has been read out.
    #[test]
    fn aborted_dump_is_drained_so_the_next_dump_works() {
        let mut sd = open();
        let l = listener(V4, 64);
        let at = l.local_addr().unwrap();
        // Enough sockets for several reply datagrams.
        let conns: Vec<Conn> = (0..600).map(|_| connect(&l)).collect();

        // Start a dump and read only its first datagram.
        sd.seq = sd.seq.wrapping_add(1);
        let request = InetRequest {
            family: AF_INET,
            protocol: IPPROTO_TCP,
            extensions: ExtensionFlags::empty(),
            states: StateFlags::from_bits_retain(JOB_SOCKET_STATES),
            socket_id: SocketId::new_v4(),
        };
        let mut req = [0u8; REQUEST_BUF_LEN];
        let flags = NLM_F_REQUEST | NLM_F_DUMP;
        let len = encode_request(&mut req, request, flags, sd.seq, Some(&sport_eq(at.port())));
        sd.sock.send(&req[..len], 0).unwrap();
        let mut first = 0;
        let flow = sd.recv_datagram(true, &mut |_| first += 1).unwrap();
        assert_eq!(flow, Flow::More);
        assert!(first > 0 && first < conns.len(), "{first}");

        // A new dump meets the old one (its datagrams are skipped by
        // sequence number), and the reply is drained after the error...
        let mut out = Vec::new();
        let r = sd.dump(at.port(), JOB_SOCKET_STATES, &mut out);
        assert!(matches!(r, Err(DetectError::Kernel(libc::EBUSY))), "{r:?}");
        // ...so the next one sees every socket.
        out.clear();
        sd.dump(at.port(), JOB_SOCKET_STATES, &mut out).unwrap();
        out.retain(|e| e.local == at);
        assert_eq!(out.len(), conns.len());
    }

    #[test]
    fn request_layout_carries_the_bytecode() {
        let mut buf = [0u8; REQUEST_BUF_LEN];
        let request = InetRequest {
            family: AF_INET6,
            protocol: IPPROTO_TCP,
            extensions: ExtensionFlags::empty(),
            states: StateFlags::from_bits_retain(JOB_SOCKET_STATES),
            socket_id: SocketId::new_v6(),
        };
        let len = encode_request(
            &mut buf,
            request,
            NLM_F_REQUEST | NLM_F_DUMP,
            7,
            Some(&sport_eq(8080)),
        );
        assert_eq!(len, 16 + 56 + 12);
        assert_eq!(
            u32::from_ne_bytes(buf[0..4].try_into().unwrap()),
            len as u32
        );
        assert_eq!(
            u16::from_ne_bytes(buf[4..6].try_into().unwrap()),
            SOCK_DIAG_BY_FAMILY
        );
        assert_eq!(u32::from_ne_bytes(buf[8..12].try_into().unwrap()), 7);
        assert_eq!(buf[16], AF_INET6);
        assert_eq!(buf[17], IPPROTO_TCP);
        assert_eq!(
            u32::from_ne_bytes(buf[20..24].try_into().unwrap()),
            JOB_SOCKET_STATES
        );
        assert_eq!(&buf[72..76], &[12, 0, 1, 0][..]);
        assert_eq!(buf[76..80], [INET_DIAG_BC_S_EQ, 8, 12, 0]);
        assert_eq!(u16::from_ne_bytes(buf[82..84].try_into().unwrap()), 8080);
    }

    /// One netlink message: header, then `payload`, padded to 4 bytes.
    fn message(msg_type: u16, seq: u32, payload: &[u8], out: &mut Vec<u8>) {
        let len = 16 + payload.len();
        out.extend_from_slice(&(len as u32).to_ne_bytes());
        out.extend_from_slice(&msg_type.to_ne_bytes());
        out.extend_from_slice(&0u16.to_ne_bytes());
        out.extend_from_slice(&seq.to_ne_bytes());
        out.extend_from_slice(&0u32.to_ne_bytes());
        out.extend_from_slice(payload);
        out.resize(align4(out.len()), 0);
    }

    /// An `inet_diag_msg` for 127.0.0.1:port -> 127.0.0.2:9.
    fn diag_msg(port: u16, inode: u32) -> Vec<u8> {
        let mut p = vec![AF_INET, tcp_state::CLOSE_WAIT, 0, 0];
        p.extend_from_slice(&port.to_be_bytes());
        p.extend_from_slice(&9u16.to_be_bytes());
        p.extend_from_slice(&[127, 0, 0, 1]);
        p.extend_from_slice(&[0; 12]);
        p.extend_from_slice(&[127, 0, 0, 2]);
        p.extend_from_slice(&[0; 12]);
        p.extend_from_slice(&0u32.to_ne_bytes()); // if
        p.extend_from_slice(&cookie_to_wire(0x1122_3344_5566_7788));
        for v in [0u32, 1, 2, 1000, inode] {
            p.extend_from_slice(&v.to_ne_bytes()); // expires rq wq uid inode
        }
        // An attribute (INET_DIAG_SHUTDOWN, 5 bytes, padded), as the kernel
        // always adds one: the walker must skip it with the message.
        p.extend_from_slice(&[5, 0, 8, 0, 1, 0, 0, 0]);
        p
    }

    #[test]
    fn walker_reads_every_message_and_skips_stale_ones() {
        let mut dgram = Vec::new();
        message(SOCK_DIAG_BY_FAMILY, 3, &diag_msg(80, 11), &mut dgram);
        message(SOCK_DIAG_BY_FAMILY, 4, &diag_msg(80, 12), &mut dgram);
        message(SOCK_DIAG_BY_FAMILY, 4, &diag_msg(80, 13), &mut dgram);
        let mut seen = Vec::new();
        let flow = walk_datagram(&dgram, 4, true, &mut |e| seen.push(e)).unwrap();
        assert_eq!(flow, Flow::More);
        assert_eq!(seen.iter().map(|e| e.inode).collect::<Vec<_>>(), [12, 13]);
        let e = seen[0];
        assert_eq!(e.local, "127.0.0.1:80".parse().unwrap());
        assert_eq!(e.remote, "127.0.0.2:9".parse().unwrap());
        assert_eq!(
            (e.state, e.rqueue, e.wqueue, e.uid),
            (tcp_state::CLOSE_WAIT, 1, 2, 1000)
        );
        assert_eq!(e.cookie, 0x1122_3344_5566_7788);

        let mut done = Vec::new();
        message(SOCK_DIAG_BY_FAMILY, 4, &diag_msg(80, 14), &mut done);
        message(NLMSG_DONE, 4, &0i32.to_ne_bytes(), &mut done);
        seen.clear();
        assert_eq!(
            walk_datagram(&done, 4, true, &mut |e| seen.push(e)).unwrap(),
            Flow::Done
        );
        assert_eq!(seen.len(), 1);
    }

    #[test]
    fn walker_reports_kernel_errors() {
        let mut done = Vec::new();
        message(NLMSG_DONE, 1, &(-libc::EINTR).to_ne_bytes(), &mut done);
        let r = walk_datagram(&done, 1, true, &mut |_| {});
        assert!(matches!(r, Err(DetectError::Kernel(libc::EINTR))), "{r:?}");

        let mut err = Vec::new();
        let mut payload = (-libc::ENOENT).to_ne_bytes().to_vec();
        payload.extend_from_slice(&[0; 16]); // the echoed request header
        message(NLMSG_ERROR, 1, &payload, &mut err);
        let r = walk_datagram(&err, 1, false, &mut |_| {});
        assert!(matches!(r, Err(DetectError::Kernel(libc::ENOENT))), "{r:?}");

        let mut cut = Vec::new();
        message(SOCK_DIAG_BY_FAMILY, 1, &diag_msg(80, 1), &mut cut);
        cut.truncate(cut.len() - 20);
        let r = walk_datagram(&cut, 1, true, &mut |_| {});
        assert!(matches!(r, Err(DetectError::Malformed(_))), "{r:?}");

        let mut short = Vec::new();
        message(SOCK_DIAG_BY_FAMILY, 1, &[AF_INET, 1, 0, 0], &mut short);
        let r = walk_datagram(&short, 1, true, &mut |_| {});
        assert!(matches!(r, Err(DetectError::Malformed(_))), "{r:?}");
    }

    /// Found by `cargo fuzz` (sock_diag target): an error or done code of
    /// i32::MIN overflowed the negation into an errno (a panic in debug
    /// builds). Both inputs are the fuzzer's, byte for byte.
    #[test]
    fn an_i32_min_error_code_does_not_overflow() {
        let err = hex("240000000200000000000000000000000000008000000000000000000000000000000000");
        let r = walk_datagram(&err, 0, true, &mut |_| {});
        assert!(matches!(r, Err(DetectError::Kernel(i32::MIN))), "{r:?}");
        let done = hex("1400000003000000000000000000000000000080");
        let r = walk_datagram(&done, 0, true, &mut |_| {});
        assert!(matches!(r, Err(DetectError::Kernel(i32::MIN))), "{r:?}");
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn invalid_state_bits_still_dump() {
        // Bits 12 and 13 have no StateFlags constant; they must reach the
        // kernel untouched rather than be dropped (or rejected).
        let mut sd = open();
        let mut out = Vec::new();
        sd.dump(
            1,
            state_mask(&[tcp_state::NEW_SYN_RECV, tcp_state::BOUND_INACTIVE]),
            &mut out,
        )
        .unwrap();
        assert!(out.is_empty());
    }
}
