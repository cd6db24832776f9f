//! Validated configuration: what a pool runs and how it watches its clients.
//!
//! Built by the `jobd` command from its arguments (its `cli` module) or by
//! the library's [`crate::ServerBuilder`]; both go through [`Config::validate`]
//! so that bad input fails before anything is bound or forked.

use std::ffi::OsString;
use std::fmt;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use crate::hooks::JobContext;
use crate::scoreboard::MAX_SLOTS;

/// A Rust job: runs in the worker with the client connection.
pub type JobFn = dyn Fn(TcpStream, &JobContext) -> std::io::Result<()>;

/// What a worker runs for each client.
#[derive(Clone)]
pub enum JobSpec {
    /// A handler program, executed directly (no shell) with the connection
    /// on stdin and stdout.
    Handler {
        /// The program path.
        program: PathBuf,
        /// Its arguments.
        args: Vec<OsString>,
    },
    /// A Rust closure run in the worker process.
    Closure(Rc<JobFn>),
}

impl fmt::Debug for JobSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JobSpec::Handler { program, args } => f
                .debug_struct("Handler")
                .field("program", program)
                .field("args", args)
                .finish(),
            JobSpec::Closure(_) => f.write_str("Closure(..)"),
        }
    }
}

/// Which socket table the periodic scan reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DetectorKind {
    /// sock_diag, falling back to procfs with a warning when unavailable.
    Auto,
    /// NETLINK_SOCK_DIAG dumps filtered in the kernel.
    SockDiag,
    /// `/proc/net/tcp` and `/proc/net/tcp6` (the netstat way).
    Procfs,
}

/// What a FIN from the client means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinPolicy {
    /// A FIN (close or half-close) is a disconnect: cancel the job.
    Cancel,
    /// A FIN may be a half-close: keep the job; only a reset counts.
    Keep,
}

/// What to do when a client disconnects and no hook decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisconnectPolicy {
    /// Cancel the job.
    Cancel,
    /// Log the disconnect and let the job run.
    Log,
}

/// How a job's whole process tree is contained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Containment {
    /// A cgroup v2 per slot when jobd can create cgroups, else subreaper.
    Auto,
    /// A cgroup v2 per slot (`cgroup.kill`); refuse to start without.
    Cgroup,
    /// The worker is its jobs' child subreaper and kills what they leave.
    Subreaper,
}

/// A per-job resource limit (`--job-limit KEY=VALUE`), applied to the
/// handler as an rlimit before it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobLimit {
    /// `cpu=DURATION`: CPU time, whole seconds (rounded up); the handler
    /// gets SIGXCPU at the limit and SIGKILL a second later.
    Cpu(u64),
    /// `as=SIZE`: address space, bytes.
    As(u64),
    /// `nofile=N`: open files.
    Nofile(u64),
    /// `nproc=N`: processes of the handler's user (not enforced for root).
    Nproc(u64),
    /// `core=SIZE`: core file size, bytes.
    Core(u64),
    /// `fsize=SIZE`: file size, bytes (SIGXFSZ past it).
    Fsize(u64),
}

impl JobLimit {
    /// The key as given on the command line.
    pub fn key(&self) -> &'static str {
        match self {
            JobLimit::Cpu(_) => "cpu",
            JobLimit::As(_) => "as",
            JobLimit::Nofile(_) => "nofile",
            JobLimit::Nproc(_) => "nproc",
            JobLimit::Core(_) => "core",
            JobLimit::Fsize(_) => "fsize",
        }
    }
}

/// A size: a number with an optional `K`, `M`, `G` or `T` (powers of 1024).
fn parse_size(s: &str) -> Option<u64> {
    let (num, mult) = match s.chars().last()? {
        'k' | 'K' => (&s[..s.len() - 1], 1u64 << 10),
        'm' | 'M' => (&s[..s.len() - 1], 1 << 20),
        'g' | 'G' => (&s[..s.len() - 1], 1 << 30),
        't' | 'T' => (&s[..s.len() - 1], 1 << 40),
        _ => (s, 1),
    };
    num.parse::<u64>().ok()?.checked_mul(mult)
}

/// Parses `KEY=VALUE` for `--job-limit`.
///
/// # Errors
///
/// A message naming the text and what is wrong; `memory=` and `pids=` are
/// refused: they need cgroup controllers that jobd does not manage yet.
pub fn parse_job_limit(s: &str) -> Result<JobLimit, String> {
    let (k, v) = s.split_once('=').ok_or_else(|| {
        format!("{s:?}: expected KEY=VALUE (cpu, as, nofile, nproc, core, fsize)")
    })?;
    let bad = |what: &str| format!("{s:?}: {what}");
    let size = || parse_size(v).ok_or_else(|| bad("expected a size such as 512M or 2G"));
    let count = || v.parse::<u64>().map_err(|_| bad("expected a whole number"));
    Ok(match k {
        "cpu" => {
            let d = parse_duration(v).map_err(|_| bad("expected a duration such as 60s"))?;
            if d.is_zero() {
                return Err(bad("must be greater than zero"));
            }
            JobLimit::Cpu(d.as_secs() + u64::from(d.subsec_nanos() > 0))
        }
        "as" => JobLimit::As(size()?),
        "nofile" => JobLimit::Nofile(count()?),
        "nproc" => JobLimit::Nproc(count()?),
        "core" => JobLimit::Core(size()?),
        "fsize" => JobLimit::Fsize(size()?),
        "memory" | "pids" => {
            return Err(bad(
                "needs the memory / pids controller of cgroup v2, which jobd does not manage yet; \
                 use as= or nproc= (rlimits)",
            ));
        }
        _ => return Err(bad("unknown limit (cpu, as, nofile, nproc, core, fsize)")),
    })
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The default `--fin-grace`: see README, "Disconnects" (an sh handler
/// exits within a few ms of its last write, a Python one within about
/// 50 ms; this leaves room for cleanup and a loaded machine).
pub const DEFAULT_FIN_GRACE: Duration = Duration::from_millis(250);

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Workers forked at start; 0 runs jobs one at a time in one process.
    pub prefork: usize,
    /// Scoreboard file, or None for an anonymous mapping.
    pub scoreboard: Option<PathBuf>,
    /// SIGTERM: how long running jobs may finish.
    pub grace: Duration,
    /// Cancelling: SIGTERM, then SIGKILL after this.
    pub kill_grace: Duration,
    /// Period of the disconnect scan.
    pub check_interval: Duration,
    /// Scan backend.
    pub detector: DetectorKind,
    /// Whether workers watch their client socket while a handler runs.
    pub worker_watch: bool,
    /// FIN policy.
    pub on_fin: FinPolicy,
    /// After a FIN from a client that acknowledged every byte it was sent,
    /// how long the handler may go on to exit by itself before it is
    /// cancelled (zero: a FIN cancels at once).
    pub fin_grace: Duration,
    /// How a job's process tree is contained.
    pub containment: Containment,
    /// Per-job rlimits, applied to each handler before it runs.
    pub job_limits: Vec<JobLimit>,
    /// Keepalive idle time and TCP_USER_TIMEOUT for accepted sockets
    /// (zero disables both).
    pub keepalive: Duration,
    /// Default action on disconnect.
    pub on_disconnect: DisconnectPolicy,
    /// External disconnect hook program.
    pub disconnect_hook: Option<PathBuf>,
    /// Time limit for the disconnect hook program.
    pub hook_timeout: Duration,
    /// Listen backlog.
    pub backlog: i32,
    /// Upper bound on workers; the pool grows to it when all are busy.
    pub max_children: usize,
    /// Idle workers above `prefork` are retired after this long.
    pub idle_timeout: Duration,
    /// A worker exits after this many jobs (0: never).
    pub max_requests_per_child: u64,
    /// Random extra jobs (0..=jitter) added per worker to the above.
    pub max_requests_jitter: u64,
    /// A job running longer is cancelled with reason `timeout`.
    pub job_timeout: Option<Duration>,
    /// Check the handler file and jobd's executable this often; reload when
    /// one changed.
    pub reload_check_every: Option<Duration>,
    /// Detach from the terminal (needs pid file, error log, access log).
    pub daemonize: bool,
    /// Pid file, locked for the daemon's life.
    pub pid_file: Option<PathBuf>,
    /// Error log (jobd's log and handlers' stderr).
    pub error_log: Option<PathBuf>,
    /// Access log: one line per job.
    pub access_log: Option<PathBuf>,
    /// Log format (also of the access log).
    pub log_format: LogFormat,
    /// Refuse to start unless root.
    pub require_root: bool,
    /// Run handlers and hook programs as this user (closure jobs: their
    /// workers); jobd itself keeps the user it was started as.
    pub user: Option<String>,
    /// The group for `user` (default: the user's primary group).
    pub group: Option<String>,
    /// The job.
    pub job: JobSpec,
}

/// A configuration error (exit status 2 in the command).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// No job was given.
    #[error("no job: give --script PATH (or a job in the library builder)")]
    NoJob,
    /// The handler program does not exist.
    #[error("script {path}: no such file")]
    ScriptMissing {
        /// The path given.
        path: String,
    },
    /// The handler program is not an executable file.
    #[error("script {path}: {why}")]
    ScriptNotExecutable {
        /// The path given.
        path: String,
        /// What is wrong.
        why: &'static str,
    },
    /// `--prefork` out of range.
    #[error("--prefork {0}: must be at most {MAX_SLOTS}")]
    Prefork(usize),
    /// The scoreboard's directory does not exist.
    #[error("--scoreboard {path}: directory {dir} does not exist")]
    ScoreboardDir {
        /// The path given.
        path: String,
        /// Its parent directory.
        dir: String,
    },
    /// A duration is zero where it must not be.
    #[error("{flag}: must be greater than zero")]
    ZeroDuration {
        /// The flag.
        flag: &'static str,
    },
    /// `--max-children` out of range.
    #[error("--max-children {max}: must be at least --prefork ({prefork}) and at most {MAX_SLOTS}")]
    MaxChildren {
        /// The value given.
        max: usize,
        /// The prefork count.
        prefork: usize,
    },
    /// `--daemonize` without a required companion flag.
    #[error("--daemonize needs {0} (a daemon has no terminal to write to)")]
    DaemonNeeds(&'static str),
    /// `--require-root` and not root.
    #[error("--require-root: jobd runs as uid {0}, not as root")]
    NotRoot(u32),
    /// `--user` or `--group` and not root.
    #[error("{0} needs root: only root can change its user or group")]
    PrivNeedsRoot(&'static str),
    /// An unknown user or group.
    #[error("{flag} {name}: no such {what}")]
    UnknownId {
        /// The flag.
        flag: &'static str,
        /// The name given.
        name: String,
        /// "user" or "group".
        what: &'static str,
    },
    /// A file's directory does not exist.
    #[error("{flag} {path}: directory {dir} does not exist")]
    MissingDir {
        /// The flag.
        flag: &'static str,
        /// The path given.
        path: String,
        /// Its directory.
        dir: String,
    },
    /// `prefork = 0` with a closure job: the one process runs the closure
    /// itself, so nothing could watch its client or cancel it.
    #[error(
        "prefork 0 runs a closure job in the calling process, where no disconnect watch can run while it works; use prefork 1 or more"
    )]
    InlineClosure,
    /// `--job-limit` with a closure job: limits apply to handler programs.
    #[error("--job-limit applies to handler programs; a closure job runs inside its worker")]
    LimitsNeedHandler,
    /// The disconnect hook program is unusable.
    #[error("--disconnect-hook {path}: {why}")]
    Hook {
        /// The path given.
        path: String,
        /// What is wrong.
        why: &'static str,
    },
}

impl Config {
    /// Defaults for everything but the job.
    pub fn new(job: JobSpec) -> Config {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 7000)),
            prefork: 4,
            scoreboard: None,
            grace: Duration::from_secs(30),
            kill_grace: Duration::from_secs(2),
            check_interval: Duration::from_millis(100),
            detector: DetectorKind::Auto,
            worker_watch: true,
            on_fin: FinPolicy::Cancel,
            fin_grace: DEFAULT_FIN_GRACE,
            containment: Containment::Auto,
            job_limits: Vec::new(),
            keepalive: Duration::from_secs(60),
            on_disconnect: DisconnectPolicy::Cancel,
            disconnect_hook: None,
            hook_timeout: Duration::from_secs(5),
            backlog: 1024,
            max_children: 150,
            idle_timeout: Duration::from_secs(10),
            max_requests_per_child: 0,
            max_requests_jitter: 0,
            job_timeout: None,
            reload_check_every: None,
            daemonize: false,
            pid_file: None,
            error_log: None,
            access_log: None,
            log_format: LogFormat::Text,
            require_root: false,
            user: None,
            group: None,
            job,
        }
    }

    /// Number of scoreboard slots.
    pub fn slots(&self) -> usize {
        self.prefork.max(self.max_children).max(1)
    }

    /// Checks the handler program again (on reload: it may have changed).
    ///
    /// # Errors
    ///
    /// [`ConfigError::NoJob`], [`ConfigError::ScriptMissing`] or
    /// [`ConfigError::ScriptNotExecutable`] for a handler that cannot run.
    pub fn check_handler(&self) -> Result<(), ConfigError> {
        if let JobSpec::Handler { program, .. } = &self.job {
            check_program(program).map_err(|e| match e {
                ProgramError::Missing => ConfigError::ScriptMissing {
                    path: program.display().to_string(),
                },
                ProgramError::Bad(why) => ConfigError::ScriptNotExecutable {
                    path: program.display().to_string(),
                    why,
                },
            })?;
        }
        Ok(())
    }

    /// Checks everything that can be checked before binding.
    ///
    /// # Errors
    ///
    /// The first [`ConfigError`] found, naming the flag and what is wrong.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.prefork > MAX_SLOTS {
            return Err(ConfigError::Prefork(self.prefork));
        }
        self.check_handler()?;
        if self.prefork == 0 && matches!(self.job, JobSpec::Closure(_)) {
            return Err(ConfigError::InlineClosure);
        }
        if !self.job_limits.is_empty() && matches!(self.job, JobSpec::Closure(_)) {
            return Err(ConfigError::LimitsNeedHandler);
        }
        if let Some(hook) = &self.disconnect_hook {
            check_program(hook).map_err(|e| ConfigError::Hook {
                path: hook.display().to_string(),
                why: match e {
                    ProgramError::Missing => "no such file",
                    ProgramError::Bad(why) => why,
                },
            })?;
        }
        if let Some(sb) = &self.scoreboard
            && let Some(dir) = missing_dir(sb)
        {
            return Err(ConfigError::ScoreboardDir {
                path: sb.display().to_string(),
                dir,
            });
        }
        for (flag, p) in [
            ("--pid-file", &self.pid_file),
            ("--error-log", &self.error_log),
            ("--access-log", &self.access_log),
        ] {
            if let Some(p) = p
                && let Some(dir) = missing_dir(p)
            {
                return Err(ConfigError::MissingDir {
                    flag,
                    path: p.display().to_string(),
                    dir,
                });
            }
        }
        if self.prefork > 0 && (self.max_children < self.prefork || self.max_children > MAX_SLOTS) {
            return Err(ConfigError::MaxChildren {
                max: self.max_children,
                prefork: self.prefork,
            });
        }
        if self.daemonize {
            if self.pid_file.is_none() {
                return Err(ConfigError::DaemonNeeds("--pid-file"));
            }
            if self.error_log.is_none() {
                return Err(ConfigError::DaemonNeeds("--error-log"));
            }
            if self.access_log.is_none() {
                return Err(ConfigError::DaemonNeeds("--access-log"));
            }
        }
        let uid = nix::unistd::geteuid();
        if self.require_root && !uid.is_root() {
            return Err(ConfigError::NotRoot(uid.as_raw()));
        }
        if let Some(u) = &self.user {
            if !uid.is_root() {
                return Err(ConfigError::PrivNeedsRoot("--user"));
            }
            if !matches!(nix::unistd::User::from_name(u), Ok(Some(_))) {
                return Err(ConfigError::UnknownId {
                    flag: "--user",
                    name: u.clone(),
                    what: "user",
                });
            }
        }
        if let Some(g) = &self.group {
            if !uid.is_root() {
                return Err(ConfigError::PrivNeedsRoot("--group"));
            }
            if !matches!(nix::unistd::Group::from_name(g), Ok(Some(_))) {
                return Err(ConfigError::UnknownId {
                    flag: "--group",
                    name: g.clone(),
                    what: "group",
                });
            }
        }
        if self.check_interval.is_zero() {
            return Err(ConfigError::ZeroDuration {
                flag: "--check-interval",
            });
        }
        Ok(())
    }
}

/// The directory of `path` when it does not exist.
fn missing_dir(path: &Path) -> Option<String> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    (!dir.is_dir()).then(|| dir.display().to_string())
}

enum ProgramError {
    Missing,
    Bad(&'static str),
}

/// Checks that `path` is an executable regular file.
fn check_program(path: &Path) -> Result<(), ProgramError> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(ProgramError::Missing),
        Err(_) => return Err(ProgramError::Bad("cannot be read (permission denied?)")),
    };
    if meta.is_dir() {
        return Err(ProgramError::Bad("is a directory, not a program"));
    }
    if !meta.is_file() {
        return Err(ProgramError::Bad("is not a regular file"));
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err(ProgramError::Bad("is not executable (chmod +x?)"));
    }
    if nix::unistd::access(path, nix::unistd::AccessFlags::X_OK).is_err() {
        return Err(ProgramError::Bad("is not executable by this user"));
    }
    Ok(())
}

/// Parses a duration: a number with a unit (`100ms`, `2s`, `1.5m`, `1h`) or
/// a bare number of seconds.
///
/// # Errors
///
/// A message naming the text when it is no duration.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("empty duration".into());
    }
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() {
        if t.starts_with('-') {
            return Err(format!("{s:?} is negative; durations are 0 or more"));
        }
        return Err(format!(
            "{s:?} is not a duration (use e.g. 100ms, 2s, 1m or a number of seconds)"
        ));
    }
    let n: f64 = num.parse().map_err(|_| {
        format!("{s:?} is not a duration (use e.g. 100ms, 2s, 1m or a number of seconds)")
    })?;
    let scale = match unit.trim() {
        "" | "s" | "sec" | "secs" => 1.0,
        "ms" => 1e-3,
        "us" => 1e-6,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        other => return Err(format!("{s:?}: unknown unit {other:?} (use ms, s, m or h)")),
    };
    let secs = n * scale;
    if !secs.is_finite() || secs > 1e9 {
        return Err(format!("{s:?} is too large"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("100ms").unwrap(), Duration::from_millis(100));
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("1m").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert_eq!(parse_duration("0.5").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert!(parse_duration("-1s").unwrap_err().contains("negative"));
        assert!(parse_duration("abc").is_err());
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn job_limits_parse_and_bad_ones_are_named() {
        assert_eq!(parse_job_limit("cpu=60s"), Ok(JobLimit::Cpu(60)));
        assert_eq!(parse_job_limit("cpu=1.5s"), Ok(JobLimit::Cpu(2)));
        assert_eq!(parse_job_limit("as=2G"), Ok(JobLimit::As(2 << 30)));
        assert_eq!(parse_job_limit("nofile=1024"), Ok(JobLimit::Nofile(1024)));
        assert_eq!(parse_job_limit("core=0"), Ok(JobLimit::Core(0)));
        assert_eq!(parse_job_limit("fsize=1M"), Ok(JobLimit::Fsize(1 << 20)));
        for bad in [
            "cpu",
            "cpu=0",
            "as=lots",
            "nofile=-1",
            "color=red",
            "memory=2G",
            "pids=10",
        ] {
            let e = parse_job_limit(bad).unwrap_err();
            assert!(e.contains(&format!("{bad:?}")), "{e}");
        }
    }

    /// Regression guard: prefork 0 with a closure job would run the closure
    /// where nothing can watch or cancel it; refused, not ignored.
    #[test]
    fn prefork_zero_refuses_a_closure_job() {
        let mut c = Config::new(JobSpec::Closure(Rc::new(|_, _| Ok(()))));
        c.validate().unwrap();
        c.prefork = 0;
        assert!(matches!(c.validate(), Err(ConfigError::InlineClosure)));
    }

    #[test]
    fn validate_rejects_missing_script_and_dir() {
        let mut c = Config::new(JobSpec::Handler {
            program: "/nonexistent/x".into(),
            args: vec![],
        });
        assert!(matches!(
            c.validate(),
            Err(ConfigError::ScriptMissing { .. })
        ));
        let plain = std::env::temp_dir().join(format!("jobd-plain-{}", std::process::id()));
        std::fs::write(&plain, "x").unwrap();
        c.job = JobSpec::Handler {
            program: plain.clone(),
            args: vec![],
        };
        assert!(matches!(
            c.validate(),
            Err(ConfigError::ScriptNotExecutable { .. })
        ));
        std::fs::remove_file(&plain).unwrap();
        c.job = JobSpec::Handler {
            program: "/bin/cat".into(),
            args: vec![],
        };
        c.validate().unwrap();
        c.scoreboard = Some("/nonexistent-dir/sb".into());
        assert!(matches!(
            c.validate(),
            Err(ConfigError::ScoreboardDir { .. })
        ));
    }
}
