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

/// The listening socket passed by systemd (socket activation: `LISTEN_PID`
/// is ours and `LISTEN_FDS` at least 1), when there is one: fd 3, checked
/// to be a listening TCP socket; `want` (an explicit `--listen`) must be
/// its address. Its backlog and options are the service manager's.
pub(crate) fn activated(want: Option<SocketAddr>) -> Result<Option<TcpListener>, String> {
    let mut fds = sd_notify::listen_fds().map_err(|e| format!("socket activation: {e}"))?;
    let Some(raw) = fds.next() else {
        return Ok(None);
    };
    if fds.len() > 0 {
        tracing::warn!(
            more = fds.len(),
            "socket activation passed several sockets; jobd serves on the first (fd 3)"
        );
    }
    let fd = sys::take_passed_fd(raw);
    let listening = socket::getsockopt(&fd, sockopt::AcceptConn).unwrap_or(false);
    let stream = socket::getsockopt(&fd, sockopt::SockType).is_ok_and(|t| t == SockType::Stream);
    let addr = socket::getsockname::<SockaddrStorage>(fd.as_raw_fd())
        .ok()
        .and_then(|a| {
            a.as_sockaddr_in()
                .map(|v4| SocketAddr::from(std::net::SocketAddrV4::from(*v4)))
                .or_else(|| {
                    a.as_sockaddr_in6()
                        .map(|v6| SocketAddr::from(std::net::SocketAddrV6::from(*v6)))
                })
        });
    let Some(addr) = addr.filter(|_| listening && stream) else {
        return Err("socket activation: fd 3 is not a listening TCP socket".into());
    };
    if let Some(w) = want
        && w != addr
    {
        return Err(format!(
            "--listen {w} does not match the socket passed by the service manager ({addr}); leave --listen out"
        ));
    }
    let fl = nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_GETFL).map_err(|e| e.to_string())?;
    let fl = nix::fcntl::OFlag::from_bits_retain(fl) | nix::fcntl::OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_SETFL(fl)).map_err(|e| e.to_string())?;
    tracing::info!(listen = %addr, "serving on the socket passed by the service manager");
    Ok(Some(TcpListener::from(fd)))
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
