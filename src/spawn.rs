//! Spawning child programs: `posix_spawn` attributes, the inherited
//! environment, and the [`Spawner`] that starts a job's handler with the
//! connection on fds 0 and 1 and the tcpserver environment.
//!
//! Used by workers (handlers) and by the disconnect watch (hook programs).
//! It starts processes and returns their pids; it never signals or reaps.

use std::ffi::CString;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use nix::spawn::{PosixSpawnAttr, PosixSpawnFileActions, PosixSpawnFlags};
use nix::sys::signal::SigSet;
use nix::unistd::Pid;

use crate::config::{Config, JobLimit, JobSpec};

/// systemd's variables for jobd itself (socket activation, notify,
/// watchdog): never passed on.
const SERVICE_VARS: [&str; 8] = [
    "JOBD_UPGRADE_FROM",
    "JOBD_UPGRADE_NOTIFY",
    "LISTEN_PID",
    "LISTEN_FDS",
    "LISTEN_FDNAMES",
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
];

/// This process's environment as `KEY=VALUE` strings for a child, without
/// the keys in `except` and the service manager's.
pub(crate) fn environ(except: &[&str]) -> Vec<CString> {
    std::env::vars_os()
        .filter(|(k, _)| !except.iter().any(|o| k == o))
        // The service manager's protocol is jobd's, not its children's.
        .filter(|(k, _)| !SERVICE_VARS.iter().any(|o| k == o))
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
/// from a signalfd) and every signal at its default action: SIGPIPE (Rust
/// ignores it), and whatever jobd's own parent left ignored (a SIGQUIT or
/// SIGHUP ignored by `nohup` or a service manager).
pub(crate) fn spawn_attr() -> io::Result<PosixSpawnAttr> {
    let mut attr = PosixSpawnAttr::init()?;
    attr.set_flags(
        PosixSpawnFlags::POSIX_SPAWN_SETPGROUP
            | PosixSpawnFlags::POSIX_SPAWN_SETSIGMASK
            | PosixSpawnFlags::POSIX_SPAWN_SETSIGDEF,
    )?;
    attr.set_pgroup(Pid::from_raw(0))?;
    attr.set_sigmask(&SigSet::empty())?;
    attr.set_sigdefault(&SigSet::all())?;
    Ok(attr)
}

/// Who handlers and hook programs run as: `--user` (and `--group`),
/// resolved once by [`set_run_as`] before any fork. jobd itself (the
/// supervisor and its workers) keeps the user it was started as, so that
/// a handler can neither signal it nor reach its descriptors.
#[derive(Debug, Clone)]
pub(crate) struct RunAs {
    uid: nix::unistd::Uid,
    gid: nix::unistd::Gid,
    name: String,
    home: std::path::PathBuf,
}

static RUN_AS: std::sync::OnceLock<RunAs> = std::sync::OnceLock::new();

/// Resolves `--user` / `--group` (the user's primary group without
/// `--group`) for every spawn of this process and its forks.
pub(crate) fn set_run_as(user: &str, group: Option<&str>) -> Result<(), String> {
    let u = nix::unistd::User::from_name(user)
        .map_err(|e| format!("--user {user}: {e}"))?
        .ok_or_else(|| format!("--user {user}: no such user"))?;
    let gid = match group {
        Some(g) => {
            nix::unistd::Group::from_name(g)
                .map_err(|e| format!("--group {g}: {e}"))?
                .ok_or_else(|| format!("--group {g}: no such group"))?
                .gid
        }
        None => u.gid,
    };
    let r = RunAs {
        uid: u.uid,
        gid,
        name: u.name,
        home: u.dir,
    };
    tracing::info!(user = %r.name, uid = r.uid.as_raw(), gid = r.gid.as_raw(), "handlers and hook programs run as this user; jobd itself keeps its own");
    let _ = RUN_AS.set(r);
    Ok(())
}

/// For a worker that runs closure jobs under `--user`: the worker itself
/// becomes the user (a closure runs in it). No-op without `--user`.
pub(crate) fn become_run_as() -> io::Result<()> {
    match run_as() {
        Some(r) => crate::sys::daemon::drop_privileges(r.uid, r.gid),
        None => Ok(()),
    }
}

fn run_as() -> Option<&'static RunAs> {
    RUN_AS.get()
}

/// The environment variables `--user` sets for its programs.
const USER_VARS: [&str; 3] = ["HOME", "USER", "LOGNAME"];

/// Whether `kv` (`KEY=VALUE`) sets `key`.
fn is_var(kv: &CString, key: &str) -> bool {
    kv.as_bytes()
        .strip_prefix(key.as_bytes())
        .is_some_and(|r| r.first() == Some(&b'='))
}

/// Only the variables `keys` of this process's environment.
fn only(keys: &[&str]) -> Vec<CString> {
    environ(&[])
        .into_iter()
        .filter(|kv| keys.iter().any(|k| is_var(kv, k)))
        .collect()
}

fn add_user_vars(env: &mut Vec<CString>) {
    if let Some(r) = run_as() {
        env.retain(|kv| !USER_VARS.iter().any(|k| is_var(kv, k)));
        let mut home = b"HOME=".to_vec();
        home.extend_from_slice(r.home.as_os_str().as_bytes());
        env.extend(CString::new(home).ok());
        env.extend(CString::new(format!("USER={}", r.name)).ok());
        env.extend(CString::new(format!("LOGNAME={}", r.name)).ok());
    }
}

/// What a forked child sets up before it execs (see [`fork_exec`]).
struct ChildSetup<'a> {
    /// (source, target) descriptors to `dup2`.
    fds: &'a [(BorrowedFd<'a>, i32)],
    /// Open `/dev/null` on fd 1.
    stdout_null: bool,
    limits: &'a [JobLimit],
}

/// Forks the (single-threaded) calling process and execs `program` in the
/// child, after setting up what posix_spawn would (a process group of its
/// own, an empty signal mask, every signal at its default) plus what it
/// cannot: rlimits, and the `--user` identity (supplementary groups
/// cleared, then the group, then the user; checked not to be root again).
/// A failed setup or exec is reported through a close-on-exec pipe, as
/// posix_spawn reports it. Slower than posix_spawn (a full fork), so only
/// when needed.
fn fork_exec(
    program: &std::ffi::CStr,
    argv: &[CString],
    env: &[impl AsRef<std::ffi::CStr>],
    setup: &ChildSetup<'_>,
) -> io::Result<Pid> {
    use nix::sys::resource::{Resource, setrlimit};
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
            let run = || -> nix::Result<()> {
                nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0))?;
                crate::sys::default_signals().map_err(|_| nix::errno::Errno::EINVAL)?;
                nix::sys::signal::sigprocmask(
                    nix::sys::signal::SigmaskHow::SIG_SETMASK,
                    Some(&SigSet::empty()),
                    None,
                )?;
                for (from, to) in setup.fds {
                    crate::sys::put_on_fd(from.as_raw_fd(), *to).map_err(|e| {
                        nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(libc::EBADF))
                    })?;
                }
                if setup.stdout_null {
                    let null = nix::fcntl::open(
                        c"/dev/null",
                        nix::fcntl::OFlag::O_WRONLY,
                        nix::sys::stat::Mode::empty(),
                    )?;
                    nix::unistd::dup2_stdout(&null)?;
                }
                for l in setup.limits {
                    let (res, soft, hard) = match *l {
                        // SIGXCPU at the limit, SIGKILL one second on.
                        JobLimit::Cpu(s) => (Resource::RLIMIT_CPU, s, s.saturating_add(1)),
                        JobLimit::As(b) => (Resource::RLIMIT_AS, b, b),
                        JobLimit::Nofile(n) => (Resource::RLIMIT_NOFILE, n, n),
                        JobLimit::Nproc(n) => (Resource::RLIMIT_NPROC, n, n),
                        JobLimit::Core(b) => (Resource::RLIMIT_CORE, b, b),
                        JobLimit::Fsize(b) => (Resource::RLIMIT_FSIZE, b, b),
                    };
                    setrlimit(res, soft, hard)?;
                }
                if let Some(r) = run_as() {
                    nix::unistd::setgroups(&[])?;
                    nix::unistd::setgid(r.gid)?;
                    nix::unistd::setuid(r.uid)?;
                    if !r.uid.is_root()
                        && nix::unistd::setuid(nix::unistd::Uid::from_raw(0)).is_ok()
                    {
                        return Err(nix::errno::Errno::EPERM);
                    }
                }
                nix::unistd::execve(program, argv, env)?;
                Ok(())
            };
            if let Err(e) = run() {
                let _ = nix::unistd::write(&wr, &(e as i32).to_le_bytes());
            }
            // The exec failed: no destructors, no atexit handlers of the
            // worker may run in this copy of it.
            crate::sys::daemon::exit_now(127)
        }
    }
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
    pub(crate) fn new(cfg: &Config) -> io::Result<Option<Spawner>> {
        let JobSpec::Handler { program, args } = &cfg.job else {
            return Ok(None);
        };
        let limits = &cfg.job_limits;
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
            "TCPPROXYIP",
            "TCPPROXYPORT",
        ];
        let mut base_env = if cfg.clear_env {
            // PATH (a handler that runs `sh` or `curl` needs one), and the
            // variables asked for.
            let mut keep: Vec<&str> = vec!["PATH"];
            keep.extend(cfg.pass_env.iter().map(String::as_str));
            let mut env = only(&keep);
            if std::env::var_os("PATH").is_none() {
                env.push(c"PATH=/usr/local/bin:/usr/bin:/bin".to_owned());
            }
            env
        } else {
            environ(&ours)
        };
        add_user_vars(&mut base_env);
        // --env last, over what it names (but never over the tcpserver and
        // JOBD_* variables, set per job).
        for (k, v) in cfg.env.iter().filter(|(k, _)| !ours.contains(&k.as_str())) {
            base_env.retain(|kv| !is_var(kv, k));
            if let Ok(c) = CString::new(format!("{k}={v}")) {
                base_env.push(c);
            }
        }
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
        proxy: Option<SocketAddr>,
    ) -> io::Result<Pid> {
        // The job's own variables; the base environment is borrowed, not
        // copied (it may hold a hundred variables).
        let mut own = Vec::with_capacity(9);
        let mut var = |k: &str, v: &str| {
            if let Ok(c) = CString::new(format!("{k}={v}")) {
                own.push(c);
            }
        };
        var("PROTO", if peer.is_ipv4() { "TCP" } else { "TCP6" });
        var("TCPLOCALIP", &ip_str(&local));
        var("TCPLOCALPORT", &local.port().to_string());
        var("TCPREMOTEIP", &ip_str(&peer));
        var("TCPREMOTEPORT", &peer.port().to_string());
        var("JOBD_JOB_ID", &job_id.to_string());
        var("JOBD_SLOT", &slot.to_string());
        if let Some(p) = proxy {
            var("TCPPROXYIP", &ip_str(&p));
            var("TCPPROXYPORT", &p.port().to_string());
        }
        let env: Vec<&std::ffi::CStr> = self
            .base_env
            .iter()
            .chain(own.iter())
            .map(CString::as_c_str)
            .collect();
        if !self.limits.is_empty() || run_as().is_some() {
            let fds = [(conn, 0), (conn, 1)];
            let setup = ChildSetup {
                fds: &fds,
                stdout_null: false,
                limits: &self.limits,
            };
            return fork_exec(&self.program, &self.argv, &env, &setup);
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
    let mut env = environ(&[]);
    add_user_vars(&mut env);
    let pid = if run_as().is_some() {
        let fds = [(rd.as_fd(), 0)];
        let setup = ChildSetup {
            fds: &fds,
            stdout_null: true,
            limits: &[],
        };
        fork_exec(&path, std::slice::from_ref(&path), &env, &setup)?
    } else {
        nix::spawn::posix_spawn(
            path.as_c_str(),
            &fa,
            &attr,
            std::slice::from_ref(&path),
            &env,
        )?
    };
    drop(rd);
    // The event is far smaller than a pipe's buffer: this write never
    // blocks. A hook that does not read its stdin is not an error.
    let mut wr = std::fs::File::from(wr);
    let _ = wr.write_all(line.as_bytes());
    Ok(pid)
}
