//! The PROXY protocol header (HAProxy's `send-proxy` and `send-proxy-v2`):
//! read from an accepted connection before its job starts, parsed with the
//! `ppp` crate, and consumed exactly, so that the bytes the client sent
//! after it reach the handler untouched.
//!
//! Reads only the header, within a deadline; never more than
//! [`MAX_HEADER`] bytes.

use std::io::{self, Read};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use ppp::PartialResult;

use crate::config::ProxyProtocol;

/// The longest header accepted: a v1 line is at most 107 bytes; a v2
/// header is 16 bytes and its addresses and TLVs (HAProxy sends a few
/// dozen bytes). Anything longer is refused as oversized.
pub(crate) const MAX_HEADER: usize = 16 + 512;

/// The v2 signature, and the v1 prefix.
const V2_SIG: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";
const V1_PREFIX: &[u8] = b"PROXY ";

/// What the header said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Header {
    /// The connection is for this client (source) and this address of
    /// the balancer (destination).
    Proxied {
        /// The real client.
        client: SocketAddr,
        /// The address the client connected to.
        destination: SocketAddr,
    },
    /// v2 `LOCAL` (a health check of the balancer's own) or v1 `UNKNOWN`:
    /// no client behind it.
    Local,
}

/// Why no header could be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HeaderError {
    /// The peer closed before or while sending the header.
    #[error("closed before its PROXY header")]
    Closed,
    /// Not within `--proxy-timeout`.
    #[error("sent no complete PROXY header within {0:?}")]
    Timeout(Duration),
    /// Not a PROXY header, or not of the version `--proxy-protocol` allows.
    #[error("sent no valid PROXY header: {0}")]
    Invalid(String),
    /// Longer than [`MAX_HEADER`].
    #[error("sent a PROXY header longer than {MAX_HEADER} bytes")]
    Oversized,
    /// A read failed.
    #[error("PROXY header read failed: {0}")]
    Io(#[from] io::Error),
}

/// Parses a complete header at the start of `buf`: Ok(Some((header,
/// length))) when one is there, Ok(None) when more bytes are needed, Err
/// when it can never be one `mode` allows. Pure; the fuzz target's entry.
pub(crate) fn parse(buf: &[u8], mode: ProxyProtocol) -> Result<Option<(Header, usize)>, String> {
    let v2 = V2_SIG.starts_with(&buf[..buf.len().min(V2_SIG.len())]);
    let v1 = V1_PREFIX.starts_with(&buf[..buf.len().min(V1_PREFIX.len())]);
    let allowed_v2 = matches!(mode, ProxyProtocol::V2 | ProxyProtocol::Any);
    let allowed_v1 = matches!(mode, ProxyProtocol::V1 | ProxyProtocol::Any);
    if buf.is_empty() {
        return Ok(None);
    }
    if v2 && allowed_v2 {
        let r = ppp::v2::Header::try_from(buf);
        if r.is_incomplete() {
            return Ok(None);
        }
        let h = r.map_err(|e| format!("v2: {e}"))?;
        let header = match (h.command, h.addresses) {
            (ppp::v2::Command::Local, _) => Header::Local,
            (_, ppp::v2::Addresses::IPv4(a)) => Header::Proxied {
                client: SocketAddr::from((a.source_address, a.source_port)),
                destination: SocketAddr::from((a.destination_address, a.destination_port)),
            },
            (_, ppp::v2::Addresses::IPv6(a)) => Header::Proxied {
                client: SocketAddr::from((a.source_address, a.source_port)),
                destination: SocketAddr::from((a.destination_address, a.destination_port)),
            },
            // PROXY over UNIX or unspecified addresses: nobody to name.
            (_, _) => Header::Local,
        };
        return Ok(Some((header, h.len())));
    }
    if v1 && allowed_v1 {
        let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
            return if buf.len() >= 107 {
                Err("v1: no CRLF within 107 bytes".into())
            } else {
                Ok(None)
            };
        };
        let len = end + 2;
        let h = ppp::v1::Header::try_from(&buf[..len]).map_err(|e| format!("v1: {e}"))?;
        let header = match h.addresses {
            ppp::v1::Addresses::Tcp4(a) => Header::Proxied {
                client: SocketAddr::from((a.source_address, a.source_port)),
                destination: SocketAddr::from((a.destination_address, a.destination_port)),
            },
            ppp::v1::Addresses::Tcp6(a) => Header::Proxied {
                client: SocketAddr::from((a.source_address, a.source_port)),
                destination: SocketAddr::from((a.destination_address, a.destination_port)),
            },
            ppp::v1::Addresses::Unknown => Header::Local,
        };
        return Ok(Some((header, len)));
    }
    Err(match mode {
        ProxyProtocol::V1 => "expected a v1 header (PROXY ...)".into(),
        ProxyProtocol::V2 => "expected a v2 header".into(),
        _ => "expected a v1 or v2 header".into(),
    })
}

/// Reads the header from `conn` within `timeout`, consuming exactly its
/// bytes: it peeks at what has arrived; once the header is complete it
/// reads the header's length; while it is not, every byte seen belongs to
/// it and is consumed, so that the next wait blocks until more come.
pub(crate) fn read_header(
    conn: &TcpStream,
    mode: ProxyProtocol,
    timeout: Duration,
) -> Result<Header, HeaderError> {
    use rustix::event::{PollFd, PollFlags, Timespec};
    let deadline = Instant::now() + timeout;
    let mut got: Vec<u8> = Vec::new();
    let mut buf = [0u8; MAX_HEADER];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(HeaderError::Timeout(timeout));
        }
        let mut fds = [PollFd::new(conn, PollFlags::IN)];
        let ts = Timespec {
            tv_sec: left.as_secs() as i64,
            tv_nsec: i64::from(left.subsec_nanos()),
        };
        match rustix::event::poll(&mut fds, Some(&ts)) {
            Ok(0) => return Err(HeaderError::Timeout(timeout)),
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(HeaderError::Io(e.into())),
        }
        let room = MAX_HEADER - got.len();
        let n = match rustix::net::recv(
            conn,
            &mut buf[..room],
            rustix::net::RecvFlags::PEEK | rustix::net::RecvFlags::DONTWAIT,
        ) {
            Ok((n, _)) => n,
            Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(HeaderError::Io(e.into())),
        };
        if n == 0 {
            return Err(HeaderError::Closed);
        }
        let mut all = got.clone();
        all.extend_from_slice(&buf[..n]);
        match parse(&all, mode) {
            Ok(Some((h, len))) => {
                (&*conn).read_exact(&mut buf[..len - got.len()])?;
                return Ok(h);
            }
            Ok(None) if all.len() >= MAX_HEADER => return Err(HeaderError::Oversized),
            Ok(None) => {
                (&*conn).read_exact(&mut buf[..n])?;
                got = all;
            }
            Err(why) => return Err(HeaderError::Invalid(why)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(client: SocketAddr, dest: SocketAddr) -> Vec<u8> {
        ppp::v2::Builder::with_addresses(
            ppp::v2::Version::Two | ppp::v2::Command::Proxy,
            ppp::v2::Protocol::Stream,
            (client, dest),
        )
        .build()
        .unwrap()
    }

    #[test]
    fn parses_v1_v2_local_and_refuses_the_wrong_version() {
        let c: SocketAddr = "203.0.113.9:51000".parse().unwrap();
        let d: SocketAddr = "192.0.2.1:80".parse().unwrap();
        let mut b = v2(c, d);
        let len = b.len();
        b.extend_from_slice(b"payload");
        assert_eq!(
            parse(&b, ProxyProtocol::V2).unwrap(),
            Some((
                Header::Proxied {
                    client: c,
                    destination: d
                },
                len
            ))
        );
        assert_eq!(
            parse(&b[..len - 1], ProxyProtocol::Any).unwrap(),
            None,
            "incomplete"
        );
        assert!(parse(&b, ProxyProtocol::V1).is_err());
        let line = b"PROXY TCP6 2001:db8::1 2001:db8::2 4000 80\r\nGET /";
        let (h, n) = parse(line, ProxyProtocol::Any).unwrap().unwrap();
        assert_eq!(n, line.len() - 5);
        assert_eq!(
            h,
            Header::Proxied {
                client: "[2001:db8::1]:4000".parse().unwrap(),
                destination: "[2001:db8::2]:80".parse().unwrap()
            }
        );
        assert!(parse(line, ProxyProtocol::V2).is_err());
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\n", ProxyProtocol::V1).unwrap(),
            Some((Header::Local, 15))
        );
        let local = ppp::v2::Builder::with_addresses(
            ppp::v2::Version::Two | ppp::v2::Command::Local,
            ppp::v2::Protocol::Unspecified,
            ppp::v2::Addresses::Unspecified,
        )
        .build()
        .unwrap();
        assert_eq!(
            parse(&local, ProxyProtocol::V2).unwrap(),
            Some((Header::Local, local.len()))
        );
        assert!(parse(b"GET / HTTP/1.0\r\n", ProxyProtocol::Any).is_err());
        assert!(parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 x 80\r\n", ProxyProtocol::Any).is_err());
        assert!(parse(&[b'P'; 200], ProxyProtocol::V1).is_err());
        assert_eq!(parse(b"PRO", ProxyProtocol::V1).unwrap(), None);
    }
}
