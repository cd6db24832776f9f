//! Spawning child programs: `posix_spawn` attributes, the inherited
//! environment, and the [`Spawner`] that starts a job's handler with the
//! connection on fds 0 and 1 and the tcpserver environment.
//!
//! Used by workers (handlers) and by the disconnect watch (hook programs).
//! It starts processes and returns their pids; it never signals or reaps.

use std::ffi::CString;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use nix::spawn::{PosixSpawnAttr, PosixSpawnFileActions, PosixSpawnFlags};
use nix::sys::signal::{SigSet, Signal};
use nix::unistd::Pid;

use crate::config::{JobLimit, JobSpec};

/// This process's environment as `KEY=VALUE` strings for a child, without
/// the keys in `except`.
pub(crate) fn environ(except: &[&str]) -> Vec<CString> {
    std::env::vars_os()
        .filter(|(k, _)| !except.iter().any(|o| k == o))
        .filter_map(|(k, v)| {
            let mut kv = k.into_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            CString::new(kv).ok()
        })
        .collect()
}

/// `posix_spawn` attributes for a child of a worker or the supervisor: a
/// new process group, an empty signal mask (ours blocks the signals read
/// from a signalfd) and SIGPIPE back to its default (Rust ignores it).
pub(crate) fn spawn_attr() -> io::Result<PosixSpawnAttr> {
    let mut attr = PosixSpawnAttr::init()?;
    attr.set_flags(
        PosixSpawnFlags::POSIX_SPAWN_SETPGROUP
            | PosixSpawnFlags::POSIX_SPAWN_SETSIGMASK
            | PosixSpawnFlags::POSIX_SPAWN_SETSIGDEF,
    )?;
    attr.set_pgroup(Pid::from_raw(0))?;
    attr.set_sigmask(&SigSet::empty())?;
    let mut dfl = SigSet::empty();
    dfl.add(Signal::SIGPIPE);
    attr.set_sigdefault(&dfl)?;
    Ok(attr)
}

/// Spawns handlers with `posix_spawn` (glibc: `clone(CLONE_VM |
/// CLONE_VFORK)`), far cheaper than forking the worker: a new process
/// group, an empty signal mask (the worker blocks its signals for its
/// signalfd), SIGPIPE back to default, and the connection on fds 0 and 1.
/// Program, arguments and the inherited environment are converted once per
/// worker.
pub(crate) struct Spawner {
    program: CString,
    argv: Vec<CString>,
    base_env: Vec<CString>,
    attr: PosixSpawnAttr,
    /// `--job-limit`: rlimits set in a forked child before the exec (no
    /// posix_spawn attribute sets rlimits).
    limits: Vec<JobLimit>,
}

impl Spawner {
    /// Prepares spawning the handler program (None for closure jobs).
    pub(crate) fn new(job: &JobSpec, limits: &[JobLimit]) -> io::Result<Option<Spawner>> {
        let JobSpec::Handler { program, args } = job else {
            return Ok(None);
        };
        let c = |s: &std::ffi::OsStr| {
            CString::new(s.as_bytes())
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL byte in an argument"))
        };
        let prog = c(program.as_os_str())?;
        let mut argv = vec![prog.clone()];
        for a in args {
            argv.push(c(a)?);
        }
        let ours = [
            "PROTO",
            "TCPLOCALIP",
            "TCPLOCALPORT",
            "TCPREMOTEIP",
            "TCPREMOTEPORT",
            "JOBD_JOB_ID",
            "JOBD_SLOT",
        ];
        let base_env = environ(&ours);
        let attr = spawn_attr()?;
        Ok(Some(Spawner {
            program: prog,
            argv,
            base_env,
            attr,
            limits: limits.to_vec(),
        }))
    }

    /// Spawns the handler for one job: `conn` as stdin and stdout, the
    /// inherited environment plus the tcpserver variables and
    /// `JOBD_JOB_ID` / `JOBD_SLOT`. Returns the handler's pid, which is
    /// also its process group.
    pub(crate) fn spawn_job(
        &self,
        conn: BorrowedFd<'_>,
        job_id: u64,
        slot: usize,
        peer: SocketAddr,
        local: SocketAddr,
    ) -> io::Result<Pid> {
        let mut env = self.base_env.clone();
        let mut var = |k: &str, v: &str| {
            if let Ok(c) = CString::new(format!("{k}={v}")) {
                env.push(c);
            }
        };
        var("PROTO", if peer.is_ipv4() { "TCP" } else { "TCP6" });
        var("TCPLOCALIP", &ip_str(&local));
        var("TCPLOCALPORT", &local.port().to_string());
        var("TCPREMOTEIP", &ip_str(&peer));
        var("TCPREMOTEPORT", &peer.port().to_string());
        var("JOBD_JOB_ID", &job_id.to_string());
        var("JOBD_SLOT", &slot.to_string());
        if !self.limits.is_empty() {
            return self.spawn_limited(conn, &env);
        }
        let mut fa = PosixSpawnFileActions::init()?;
        fa.add_dup2(conn.as_raw_fd(), 0)?;
        fa.add_dup2(conn.as_raw_fd(), 1)?;
        Ok(nix::spawn::posix_spawn(
            self.program.as_c_str(),
            &fa,
            &self.attr,
            &self.argv,
            &env,
        )?)
    }

    /// The spawn with `--job-limit`: a fork of the (single-threaded)
    /// worker that sets up what posix_spawn would (its own process group,
    /// an empty signal mask, SIGPIPE by default, the connection on fds 0
    /// and 1), sets the rlimits, and execs the handler. A failed setup or
    /// exec is reported as posix_spawn reports it. Slower than posix_spawn
    /// (a full fork), so only then.
    fn spawn_limited(&self, conn: BorrowedFd<'_>, env: &[CString]) -> io::Result<Pid> {
        use nix::sys::resource::{Resource, setrlimit};
        // A close-on-exec pipe reports a failed setup or exec to the
        // parent (as posix_spawn does): EOF means the exec happened.
        let (rd, wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        match crate::sys::fork()? {
            crate::sys::Forked::Parent(pid) => {
                drop(wr);
                let mut errno = [0u8; 4];
                let mut got = 0;
                while got < errno.len() {
                    match nix::unistd::read(&rd, &mut errno[got..]) {
                        Ok(0) => break,
                        Ok(n) => got += n,
                        Err(nix::errno::Errno::EINTR) => continue,
                        Err(_) => break,
                    }
                }
                if got < errno.len() {
                    return Ok(pid);
                }
                // The child exits at once: reap it here, it never ran.
                let _ = nix::sys::wait::waitpid(pid, None);
                Err(io::Error::from_raw_os_error(i32::from_le_bytes(errno)))
            }
            crate::sys::Forked::Child => {
                drop(rd);
                let setup = || -> nix::Result<()> {
                    nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0))?;
                    nix::sys::signal::sigprocmask(
                        nix::sys::signal::SigmaskHow::SIG_SETMASK,
                        Some(&SigSet::empty()),
                        None,
                    )?;
                    crate::sys::default_sigpipe().map_err(|_| nix::errno::Errno::EINVAL)?;
                    nix::unistd::dup2_stdin(conn)?;
                    nix::unistd::dup2_stdout(conn)?;
                    for l in &self.limits {
                        let (res, soft, hard) = match *l {
                            // SIGXCPU at the limit, SIGKILL one second on.
                            JobLimit::Cpu(s) => (Resource::RLIMIT_CPU, s, s + 1),
                            JobLimit::As(b) => (Resource::RLIMIT_AS, b, b),
                            JobLimit::Nofile(n) => (Resource::RLIMIT_NOFILE, n, n),
                            JobLimit::Nproc(n) => (Resource::RLIMIT_NPROC, n, n),
                            JobLimit::Core(b) => (Resource::RLIMIT_CORE, b, b),
                            JobLimit::Fsize(b) => (Resource::RLIMIT_FSIZE, b, b),
                        };
                        setrlimit(res, soft, hard)?;
                    }
                    nix::unistd::execve(self.program.as_c_str(), &self.argv, env)?;
                    Ok(())
                };
                if let Err(e) = setup() {
                    let _ = nix::unistd::write(&wr, &(e as i32).to_le_bytes());
                }
                // The exec failed: no destructors, no atexit handlers of the
                // worker may run in this copy of it.
                crate::sys::daemon::exit_now(127)
            }
        }
    }
}

fn ip_str(a: &SocketAddr) -> String {
    match a {
        SocketAddr::V4(v) => v.ip().to_string(),
        SocketAddr::V6(v) => match v.ip().to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => v.ip().to_string(),
        },
    }
}

/// Starts the `--disconnect-hook` program with `line` (the event as one
/// JSON line) on its stdin: an empty signal mask, its own process group, stdout on
/// /dev/null, stderr shared. Returns its pid; the caller waits for it
/// without blocking.
pub(crate) fn spawn_hook(prog: &std::path::Path, line: &str) -> io::Result<Pid> {
    let (rd, wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let attr = spawn_attr()?;
    let mut fa = PosixSpawnFileActions::init()?;
    fa.add_dup2(rd.as_raw_fd(), 0)?;
    fa.add_open(
        1,
        c"/dev/null",
        nix::fcntl::OFlag::O_WRONLY,
        nix::sys::stat::Mode::empty(),
    )?;
    let path = std::ffi::CString::new(prog.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let env = environ(&[]);
    let pid = nix::spawn::posix_spawn(
        path.as_c_str(),
        &fa,
        &attr,
        std::slice::from_ref(&path),
        &env,
    )?;
    drop(rd);
    // The event is far smaller than a pipe's buffer: this write never
    // blocks. A hook that does not read its stdin is not an error.
    let mut wr = std::fs::File::from(wr);
    let _ = wr.write_all(line.as_bytes());
    Ok(pid)
}
