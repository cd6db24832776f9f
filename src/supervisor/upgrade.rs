//! Zero-downtime binary upgrade (SIGUSR2, `jobd ctl upgrade`): the
//! supervisor forks and execs the jobd executable again, with the same
//! arguments, the listening socket on fd 3 (announced as systemd's socket
//! activation announces it: `LISTEN_FDS=1`, `LISTEN_PID`), and
//! `JOBD_UPGRADE_FROM` (our pid) and `JOBD_UPGRADE_NOTIFY` (a datagram
//! socket of ours) in its environment. The new jobd takes the pid file and
//! a fresh scoreboard over from us, and sends `READY=1` to that socket once
//! it serves; then this supervisor drains, without closing the shared
//! listener. If the new one exits or is not ready in time, it is killed
//! (our own child) and this one goes on serving.
//!
//! The new supervisor stays our child until we exit: it is a known child,
//! never taken for an orphaned job.

use std::ffi::CString;
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::unistd::Pid;

use crate::sys;

/// How long the new jobd has to say it serves.
pub(super) const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The variables of the upgrade protocol (never passed to handlers).
pub(crate) const UPGRADE_FROM: &str = "JOBD_UPGRADE_FROM";
pub(crate) const UPGRADE_NOTIFY: &str = "JOBD_UPGRADE_NOTIFY";

/// An upgrade under way.
pub(super) struct Upgrade {
    pub(super) pid: Pid,
    sock: UnixDatagram,
    path: PathBuf,
    pub(super) deadline: Instant,
}

/// What the new jobd said.
pub(super) enum Heard {
    Nothing,
    Ready,
}

impl Upgrade {
    /// Starts the new jobd. `exe` is the executable's path as it was when
    /// this jobd started (a new binary installed at that path is what
    /// runs).
    pub(super) fn start(exe: &std::path::Path, listener: &TcpListener) -> std::io::Result<Upgrade> {
        let me = std::process::id();
        let path = std::env::temp_dir().join(format!("jobd-upgrade-{me}.sock"));
        let _ = std::fs::remove_file(&path);
        let sock = UnixDatagram::bind(&path)?;
        sock.set_nonblocking(true)?;
        let prog = CString::new(exe.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
        let mut argv = vec![prog.clone()];
        for a in std::env::args_os().skip(1) {
            argv.push(CString::new(a.as_bytes()).map_err(std::io::Error::other)?);
        }
        let skip = [
            "LISTEN_PID",
            "LISTEN_FDS",
            "LISTEN_FDNAMES",
            "WATCHDOG_USEC",
            "WATCHDOG_PID",
            UPGRADE_FROM,
            UPGRADE_NOTIFY,
        ];
        let mut env: Vec<CString> = std::env::vars_os()
            .filter(|(k, _)| !skip.iter().any(|s| k == s))
            .filter_map(|(k, v)| {
                let mut kv = k.as_bytes().to_vec();
                kv.push(b'=');
                kv.extend_from_slice(v.as_bytes());
                CString::new(kv).ok()
            })
            .collect();
        env.push(c"LISTEN_FDS=1".to_owned());
        env.push(CString::new(format!("{UPGRADE_FROM}={me}")).expect("no NUL"));
        let mut notify = format!("{UPGRADE_NOTIFY}=").into_bytes();
        notify.extend_from_slice(path.as_os_str().as_bytes());
        env.push(CString::new(notify).map_err(std::io::Error::other)?);
        let lfd = listener.as_raw_fd();
        match sys::fork()? {
            sys::Forked::Parent(pid) => Ok(Upgrade {
                pid,
                sock,
                path,
                deadline: Instant::now() + READY_TIMEOUT,
            }),
            sys::Forked::Child => {
                // Single-threaded copy of the supervisor: anything goes
                // until the exec.
                let _ = sys::default_signals();
                let _ = nix::sys::signal::sigprocmask(
                    nix::sys::signal::SigmaskHow::SIG_SETMASK,
                    Some(&nix::sys::signal::SigSet::empty()),
                    None,
                );
                if sys::put_on_fd(lfd, 3).is_err() {
                    sys::daemon::exit_now(127);
                }
                env.push(
                    CString::new(format!("LISTEN_PID={}", std::process::id())).expect("no NUL"),
                );
                let _ = nix::unistd::execve(prog.as_c_str(), &argv, &env);
                sys::daemon::exit_now(127)
            }
        }
    }

    /// Reads what the new jobd sent, without blocking.
    pub(super) fn poll(&self) -> Heard {
        let mut buf = [0u8; 1024];
        while let Ok(n) = self.sock.recv(&mut buf) {
            if String::from_utf8_lossy(&buf[..n])
                .lines()
                .any(|l| l == "READY=1")
            {
                return Heard::Ready;
            }
        }
        Heard::Nothing
    }
}

impl Drop for Upgrade {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// In the new jobd: tells the old supervisor it serves, when it is an
/// upgrade's child.
pub(crate) fn tell_old_ready() {
    let Some(path) = std::env::var_os(UPGRADE_NOTIFY) else {
        return;
    };
    match UnixDatagram::unbound().and_then(|s| s.send_to(b"READY=1\n", &path)) {
        Ok(_) => tracing::info!("upgrade: told the old supervisor that this one serves"),
        Err(e) => tracing::warn!(error = %e, "upgrade: could not tell the old supervisor"),
    }
}

/// The old supervisor's pid, when this jobd is an upgrade's child (and
/// that pid is our parent: the claim is checked, not trusted).
pub(crate) fn upgrading_from() -> Option<i32> {
    let pid: i32 = std::env::var(UPGRADE_FROM).ok()?.parse().ok()?;
    (nix::unistd::getppid().as_raw() == pid).then_some(pid)
}
