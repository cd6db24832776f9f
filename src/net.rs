//! The listening socket: bind with `SO_REUSEADDR` and the backlog, and the
//! TCP keepalive / `TCP_USER_TIMEOUT` options that accepted sockets inherit
//! from it.
//!
//! Used once by the start-up in [`crate::server`]; nothing here accepts,
//! reads or writes a connection.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::Duration;

use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, SockaddrStorage, sockopt};

use crate::sys;

/// Binds a listening TCP socket with SO_REUSEADDR (and SO_REUSEPORT with
/// `reuse_port`) and the given backlog.
pub(crate) fn bind(addr: SocketAddr, backlog: i32, reuse_port: bool) -> io::Result<TcpListener> {
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd: OwnedFd = socket::socket(
        family,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    socket::setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    if reuse_port {
        socket::setsockopt(&fd, sockopt::ReusePort, &true)?;
    }
    socket::bind(fd.as_raw_fd(), &SockaddrStorage::from(addr))?;
    let backlog = backlog.min(sys::somaxconn().max(128));
    socket::listen(
        &fd,
        socket::Backlog::new(backlog).unwrap_or(socket::Backlog::MAXCONN),
    )?;
    Ok(TcpListener::from(fd))
}

/// TCP keepalive and TCP_USER_TIMEOUT, set once on the listener: accepted
/// sockets inherit them (Linux copies these options at accept), which saves
/// five system calls per job.
pub(crate) fn set_keepalive(conn: &impl AsFd, idle: Duration) -> io::Result<()> {
    if idle.is_zero() {
        return Ok(());
    }
    let secs = idle.as_secs().clamp(1, 32767) as u32;
    let fd = conn.as_fd();
    socket::setsockopt(&fd, sockopt::KeepAlive, &true)?;
    socket::setsockopt(&fd, sockopt::TcpKeepIdle, &secs)?;
    let intvl = (secs / 6).clamp(1, 10);
    socket::setsockopt(&fd, sockopt::TcpKeepInterval, &intvl)?;
    socket::setsockopt(&fd, sockopt::TcpKeepCount, &3)?;
    // Unacknowledged data for longer than idle + 3 probes: the peer is gone.
    let uto_ms = (secs + 3 * intvl).saturating_mul(1000);
    socket::setsockopt(&fd, sockopt::TcpUserTimeout, &uto_ms)?;
    Ok(())
}
