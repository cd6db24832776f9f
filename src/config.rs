//! Validated configuration: what a pool runs and how it watches its clients.
//!
//! Built by the `jobd` command from its arguments (its `cli` module) or by
//! the library's [`crate::ServerBuilder`]; both go through [`Config::validate`]
//! so that bad input fails before anything is bound or forked.

use std::ffi::OsString;
use std::fmt;
use std::net::{IpAddr, SocketAddr, TcpStream};
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

/// `--proxy-protocol`: whether each connection starts with a PROXY
/// protocol header (HAProxy's `send-proxy` / `send-proxy-v2`) naming the
/// real client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProxyProtocol {
    /// No header: the peer is the client.
    #[default]
    Off,
    /// The text header (`PROXY TCP4 ...\r\n`).
    V1,
    /// The binary header.
    V2,
    /// Either.
    Any,
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

/// The documented range of a duration setting (README's flag table and
/// `--help` say the same); [`Config::validate`] refuses a value outside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationRange {
    /// The command-line flag that sets it.
    pub flag: &'static str,
    /// The smallest value.
    pub min: Duration,
    /// The largest value.
    pub max: Duration,
    /// Whether 0 is accepted too, meaning off (on the command line; a
    /// [`Config`] says off with `None`).
    pub zero_is_off: bool,
}

impl DurationRange {
    const fn new(flag: &'static str, min: Duration, max: Duration) -> DurationRange {
        DurationRange {
            flag,
            min,
            max,
            zero_is_off: false,
        }
    }

    /// Whether `d` is in the range (0 too when it means off).
    pub fn contains(&self, d: Duration) -> bool {
        (self.zero_is_off && d.is_zero()) || (self.min <= d && d <= self.max)
    }

    /// The range as the documentation writes it: `10ms to 1h`,
    /// `0 (off) or 1s to 32767s`.
    pub fn describe(&self) -> String {
        let span = format!(
            "{} to {}",
            format_duration(self.min),
            format_duration(self.max)
        );
        if self.zero_is_off {
            format!("0 (off) or {span}")
        } else {
            span
        }
    }

    /// `Ok` when `d` is in the range, else [`ConfigError::OutOfRange`].
    ///
    /// # Errors
    ///
    /// [`ConfigError::OutOfRange`], naming the flag, the value and the range.
    pub fn check(&self, d: Duration) -> Result<(), ConfigError> {
        if self.contains(d) {
            return Ok(());
        }
        Err(ConfigError::OutOfRange {
            flag: self.flag,
            value: format_duration(d),
            range: self.describe(),
        })
    }
}

/// The documented range of a count (whole number) setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CountRange {
    /// The command-line flag that sets it.
    pub flag: &'static str,
    /// The smallest value.
    pub min: u64,
    /// The largest value.
    pub max: u64,
}

impl CountRange {
    /// The range as the documentation writes it: `0 to 1000000000`.
    pub fn describe(&self) -> String {
        format!("{} to {}", self.min, self.max)
    }

    /// `Ok` when `n` is in the range, else [`ConfigError::OutOfRange`].
    ///
    /// # Errors
    ///
    /// [`ConfigError::OutOfRange`], naming the flag, the value and the range.
    pub fn check(&self, n: u64) -> Result<(), ConfigError> {
        if (self.min..=self.max).contains(&n) {
            return Ok(());
        }
        Err(ConfigError::OutOfRange {
            flag: self.flag,
            value: n.to_string(),
            range: self.describe(),
        })
    }
}

const fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

const fn millis(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

/// `--grace`: 0 (running jobs are cancelled at once) to 24 hours.
pub const GRACE_RANGE: DurationRange = DurationRange::new("--grace", Duration::ZERO, secs(86_400));
/// `--kill-grace`: 0 (SIGKILL at once) to 10 minutes.
pub const KILL_GRACE_RANGE: DurationRange =
    DurationRange::new("--kill-grace", Duration::ZERO, secs(600));
/// `--check-interval`: 10 ms (below it the scan is a busy loop) to 1 hour
/// (the longest a disconnect may go unseen by the scan; worker-watch still
/// sees it at once).
pub const CHECK_INTERVAL_RANGE: DurationRange =
    DurationRange::new("--check-interval", millis(10), secs(3_600));
/// `--fin-grace`: 0 (a FIN cancels at once) to 1 minute.
pub const FIN_GRACE_RANGE: DurationRange =
    DurationRange::new("--fin-grace", Duration::ZERO, secs(60));
/// `--keepalive`: 0 (off) or 1 s to 32767 s, the kernel's limit for
/// `TCP_KEEPIDLE` (whole seconds: a fraction is dropped).
pub const KEEPALIVE_RANGE: DurationRange = DurationRange {
    zero_is_off: true,
    ..DurationRange::new("--keepalive", secs(1), secs(32_767))
};
/// `--hook-timeout`: 10 ms to 10 minutes.
pub const HOOK_TIMEOUT_RANGE: DurationRange =
    DurationRange::new("--hook-timeout", millis(10), secs(600));
/// `--slow-job-log`: 100 ms to 24 hours.
pub const SLOW_JOB_RANGE: DurationRange =
    DurationRange::new("--slow-job-log", millis(100), secs(86_400));
/// `--proxy-timeout`: 10 ms to 1 minute.
pub const PROXY_TIMEOUT_RANGE: DurationRange =
    DurationRange::new("--proxy-timeout", millis(10), secs(60));
/// `--idle-timeout`: 1 s (the pool's maintenance tick) to 24 hours.
pub const IDLE_TIMEOUT_RANGE: DurationRange =
    DurationRange::new("--idle-timeout", secs(1), secs(86_400));
/// `--job-timeout`: 0 (off, as PHP-FPM's `request_terminate_timeout = 0`
/// and gunicorn's `--timeout 0`) or 100 ms to 720 hours (30 days).
pub const JOB_TIMEOUT_RANGE: DurationRange = DurationRange {
    zero_is_off: true,
    ..DurationRange::new("--job-timeout", millis(100), secs(720 * 3_600))
};
/// `--reload-check-every`: 0 (off) or 100 ms to 24 hours.
pub const RELOAD_CHECK_RANGE: DurationRange = DurationRange {
    zero_is_off: true,
    ..DurationRange::new("--reload-check-every", millis(100), secs(86_400))
};
/// `jobd ctl --timeout`: 100 ms to 48 hours (twice the longest `--grace`).
pub const CTL_TIMEOUT_RANGE: DurationRange =
    DurationRange::new("--timeout", millis(100), secs(2 * 86_400));

/// `--prefork`: 0 (jobs one at a time in one process) to [`MAX_SLOTS`].
pub const PREFORK_RANGE: CountRange = CountRange {
    flag: "--prefork",
    min: 0,
    max: MAX_SLOTS as u64,
};
/// `--max-children`: 1 to [`MAX_SLOTS`], and at least `--prefork`.
pub const MAX_CHILDREN_RANGE: CountRange = CountRange {
    flag: "--max-children",
    min: 1,
    max: MAX_SLOTS as u64,
};
/// `--max-requests-per-child`: 0 (never) to 10^9; with the jitter's own
/// bound, the sum a worker computes cannot overflow.
pub const MAX_REQUESTS_RANGE: CountRange = CountRange {
    flag: "--max-requests-per-child",
    min: 0,
    max: 1_000_000_000,
};
/// `--max-requests-jitter`: 0 to 10^9.
pub const MAX_REQUESTS_JITTER_RANGE: CountRange = CountRange {
    flag: "--max-requests-jitter",
    min: 0,
    max: 1_000_000_000,
};
/// The listen backlog ([`Config::backlog`]; no flag, 1024): 1 to 65535 (the
/// kernel caps it at `net.core.somaxconn`).
pub const BACKLOG_RANGE: CountRange = CountRange {
    flag: "backlog",
    min: 1,
    max: 65_535,
};

/// `--job-limit nofile=`: at least this (stdin, stdout and stderr take 3;
/// a dynamically linked program needs one more to load its libraries).
pub const MIN_NOFILE: u64 = 4;
/// `--job-limit as=`: at least this (1M; less cannot even map a program).
pub const MIN_AS: u64 = 1 << 20;

/// A duration as the flags take it: `0`, `250ms`, `30s`, `2m`, `1h`,
/// `1us` (the largest unit that divides it), else seconds with a fraction.
pub fn format_duration(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns == 0 {
        return "0".into();
    }
    for (unit, per) in [
        ("h", 3_600_000_000_000u128),
        ("m", 60_000_000_000),
        ("s", 1_000_000_000),
        ("ms", 1_000_000),
        ("us", 1_000),
    ] {
        if ns.is_multiple_of(per) {
            return format!("{}{unit}", ns / per);
        }
    }
    format!("{}s", d.as_secs_f64())
}

/// A size as `--job-limit` takes it: `4K`, `2G`, or bytes.
fn format_size(b: u64) -> String {
    for (unit, shift) in [("T", 40), ("G", 30), ("M", 20), ("K", 10)] {
        if b != 0 && b.trailing_zeros() >= shift {
            return format!("{}{unit}", b >> shift);
        }
    }
    b.to_string()
}

impl fmt::Display for JobLimit {
    /// `KEY=VALUE` as `--job-limit` takes it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            JobLimit::Cpu(s) => write!(f, "cpu={s}s"),
            JobLimit::As(b) | JobLimit::Core(b) | JobLimit::Fsize(b) => {
                write!(f, "{}={}", self.key(), format_size(b))
            }
            JobLimit::Nofile(n) | JobLimit::Nproc(n) => write!(f, "{}={n}", self.key()),
        }
    }
}

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
    /// At most this many jobs at once from one client address (None: no
    /// limit); a connection over it is closed at once.
    pub max_per_source: Option<usize>,
    /// Handlers start from an empty environment (plus `PATH`, the
    /// tcpserver and `JOBD_*` variables, `pass_env` and `env`).
    pub clear_env: bool,
    /// Variables set for every handler, after everything else.
    pub env: Vec<(String, String)>,
    /// With `clear_env`: variables of jobd's environment passed on.
    pub pass_env: Vec<String>,
    /// Each connection starts with a PROXY protocol header.
    pub proxy_protocol: ProxyProtocol,
    /// How long a connection may take to send its PROXY header.
    pub proxy_timeout: Duration,
    /// `SO_REUSEPORT` on the listener: several jobds share one port.
    pub reuse_port: bool,
    /// Serve `/metrics`, `/status` and `/status.json` over HTTP here.
    pub metrics_listen: Option<SocketAddr>,
    /// Report a job running longer than this, once, with its process tree.
    pub slow_job_log: Option<Duration>,
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
    /// A number or a duration outside its documented range.
    #[error("{flag} {value}: out of range: must be {range}")]
    OutOfRange {
        /// The flag.
        flag: &'static str,
        /// The value given, as the flag takes it.
        value: String,
        /// The range, as the documentation writes it.
        range: String,
    },
    /// `Some(Duration::ZERO)` for a setting whose off is `None` (on the
    /// command line, 0 is off).
    #[error("{flag} 0: 0 means off; leave it unset (None) instead of Some(0)")]
    ZeroIsOff {
        /// The flag.
        flag: &'static str,
    },
    /// `--listen` on an address that no TCP client can connect to.
    #[error("--listen {addr}: {why}")]
    Listen {
        /// The address given.
        addr: SocketAddr,
        /// What is wrong.
        why: String,
    },
    /// Socket activation: the passed socket is unusable, or `--listen`
    /// names another address.
    #[error("{0}")]
    Activation(String),
    /// A `--job-limit` value that no handler could run under, or that
    /// jobd could not set.
    #[error("--job-limit {limit}: {why}")]
    JobLimitValue {
        /// The limit, as `KEY=VALUE`.
        limit: String,
        /// What is wrong.
        why: String,
    },
}

impl Config {
    /// `--listen`'s default, 127.0.0.1:7000.
    pub fn default_listen() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 7000))
    }

    /// Defaults for everything but the job.
    pub fn new(job: JobSpec) -> Config {
        Config {
            listen: Config::default_listen(),
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
            max_per_source: None,
            clear_env: false,
            env: Vec::new(),
            pass_env: Vec::new(),
            proxy_protocol: ProxyProtocol::Off,
            proxy_timeout: Duration::from_secs(5),
            reuse_port: false,
            metrics_listen: None,
            slow_job_log: None,
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
        self.check_ranges()?;
        check_listen(self.listen)?;
        self.check_handler()?;
        if self.prefork == 0 && matches!(self.job, JobSpec::Closure(_)) {
            return Err(ConfigError::InlineClosure);
        }
        if self.prefork == 0 && self.metrics_listen.is_some() {
            return Err(ConfigError::OutOfRange {
                flag: "--metrics-listen",
                value: self
                    .metrics_listen
                    .map(|a| a.to_string())
                    .unwrap_or_default(),
                range: "needs --prefork 1 or more (the supervisor serves it)".into(),
            });
        }
        if !self.job_limits.is_empty() && matches!(self.job, JobSpec::Closure(_)) {
            return Err(ConfigError::LimitsNeedHandler);
        }
        self.check_job_limits()?;
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
        if let Some(n) = self.max_per_source
            && (n == 0 || n > self.slots())
        {
            return Err(ConfigError::OutOfRange {
                flag: "--max-per-source",
                value: n.to_string(),
                range: format!("1 to --max-children ({})", self.slots()),
            });
        }
        for (k, v) in &self.env {
            if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
                return Err(ConfigError::OutOfRange {
                    flag: "--env",
                    value: format!("{k}={v}"),
                    range: "KEY=VALUE with a KEY of no '=' and no NUL byte".into(),
                });
            }
        }
        if !self.pass_env.is_empty() && !self.clear_env {
            return Err(ConfigError::OutOfRange {
                flag: "--pass-env",
                value: self.pass_env.join(","),
                range: "only with --clear-env (without it, every variable is passed)".into(),
            });
        }
        for k in &self.pass_env {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                return Err(ConfigError::OutOfRange {
                    flag: "--pass-env",
                    value: k.clone(),
                    range: "a variable name (no '=', no NUL byte)".into(),
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
        Ok(())
    }

    /// Every number and duration against its documented range (see the
    /// `*_RANGE` constants), so that nothing computed from them overflows
    /// and no value makes jobd spin or cancel every job.
    fn check_ranges(&self) -> Result<(), ConfigError> {
        for (range, d) in [
            (GRACE_RANGE, self.grace),
            (KILL_GRACE_RANGE, self.kill_grace),
            (CHECK_INTERVAL_RANGE, self.check_interval),
            (FIN_GRACE_RANGE, self.fin_grace),
            (KEEPALIVE_RANGE, self.keepalive),
            (HOOK_TIMEOUT_RANGE, self.hook_timeout),
            (IDLE_TIMEOUT_RANGE, self.idle_timeout),
            (PROXY_TIMEOUT_RANGE, self.proxy_timeout),
            (
                SLOW_JOB_RANGE,
                self.slow_job_log.unwrap_or(SLOW_JOB_RANGE.min),
            ),
        ] {
            range.check(d)?;
        }
        for (range, d) in [
            (JOB_TIMEOUT_RANGE, self.job_timeout),
            (RELOAD_CHECK_RANGE, self.reload_check_every),
        ] {
            match d {
                Some(d) if d.is_zero() => return Err(ConfigError::ZeroIsOff { flag: range.flag }),
                Some(d) => range.check(d)?,
                None => {}
            }
        }
        MAX_REQUESTS_RANGE.check(self.max_requests_per_child)?;
        MAX_REQUESTS_JITTER_RANGE.check(self.max_requests_jitter)?;
        if u64::try_from(self.backlog).map_or(true, |b| BACKLOG_RANGE.check(b).is_err()) {
            return Err(ConfigError::OutOfRange {
                flag: BACKLOG_RANGE.flag,
                value: self.backlog.to_string(),
                range: BACKLOG_RANGE.describe(),
            });
        }
        Ok(())
    }

    /// Each `--job-limit` once, at least what a program needs to start,
    /// and at most what jobd can set: its own hard limit unless it may
    /// raise it (`CAP_SYS_RESOURCE`), and the kernel's `fs.nr_open` for
    /// `nofile` (setrlimit fails at job time otherwise, and every job with it).
    fn check_job_limits(&self) -> Result<(), ConfigError> {
        use nix::sys::resource::{Resource, getrlimit};
        let can_raise = has_cap_sys_resource();
        for (i, l) in self.job_limits.iter().enumerate() {
            let bad = |why: String| {
                Err(ConfigError::JobLimitValue {
                    limit: l.to_string(),
                    why,
                })
            };
            if self.job_limits[..i].iter().any(|o| o.key() == l.key()) {
                return bad(format!("{} is given twice", l.key()));
            }
            let (res, v, floor, why_floor) = match *l {
                JobLimit::Cpu(s) => (Resource::RLIMIT_CPU, s, 1, ""),
                JobLimit::As(b) => (
                    Resource::RLIMIT_AS,
                    b,
                    MIN_AS,
                    " (less cannot even map a program)",
                ),
                JobLimit::Nofile(n) => (
                    Resource::RLIMIT_NOFILE,
                    n,
                    MIN_NOFILE,
                    " (stdin, stdout and stderr take 3, and a program needs one more to start)",
                ),
                JobLimit::Nproc(n) => (Resource::RLIMIT_NPROC, n, 1, ""),
                JobLimit::Core(b) => (Resource::RLIMIT_CORE, b, 0, ""),
                JobLimit::Fsize(b) => (Resource::RLIMIT_FSIZE, b, 0, ""),
            };
            if v < floor {
                return bad(format!(
                    "must be at least {}{why_floor}",
                    l.with_value(floor).value_text()
                ));
            }
            // The hard limit jobd sets: one second more than the soft one
            // for cpu (SIGKILL after SIGXCPU), else the value.
            let hard_wanted = match l {
                JobLimit::Cpu(s) => s.saturating_add(1),
                _ => v,
            };
            if !can_raise
                && let Ok((_, hard)) = getrlimit(res)
                && hard != libc::RLIM_INFINITY
                && hard_wanted > hard
            {
                let (most, why) = match l {
                    JobLimit::Cpu(_) => (
                        hard.saturating_sub(1),
                        ", a second under jobd's own hard limit (SIGKILL follows SIGXCPU by a second)",
                    ),
                    _ => (hard, ", jobd's own hard limit"),
                };
                return bad(format!(
                    "must be at most {}{why}, which it cannot raise without CAP_SYS_RESOURCE \
                     (raise it with ulimit -H or systemd's Limit*=, or lower the value)",
                    l.with_value(most).value_text(),
                ));
            }
            if let JobLimit::Nofile(n) = l
                && let Some(nr_open) = std::fs::read_to_string("/proc/sys/fs/nr_open")
                    .ok()
                    .and_then(|s| s.trim().parse::<u64>().ok())
                && *n > nr_open
            {
                return bad(format!(
                    "must be at most {nr_open}, the kernel's limit (fs.nr_open)"
                ));
            }
        }
        Ok(())
    }
}

impl JobLimit {
    /// The same kind of limit with value `v`.
    fn with_value(&self, v: u64) -> JobLimit {
        match self {
            JobLimit::Cpu(_) => JobLimit::Cpu(v),
            JobLimit::As(_) => JobLimit::As(v),
            JobLimit::Nofile(_) => JobLimit::Nofile(v),
            JobLimit::Nproc(_) => JobLimit::Nproc(v),
            JobLimit::Core(_) => JobLimit::Core(v),
            JobLimit::Fsize(_) => JobLimit::Fsize(v),
        }
    }

    /// The value as `--job-limit` takes it (`60s`, `2G`, `1024`).
    fn value_text(&self) -> String {
        let s = self.to_string();
        s.split_once('=').map_or(s.clone(), |(_, v)| v.to_string())
    }
}

/// Whether this process may raise its hard rlimits (`CAP_SYS_RESOURCE` in
/// its effective set; root in a container often lacks it).
fn has_cap_sys_resource() -> bool {
    const CAP_SYS_RESOURCE: u32 = 24;
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << CAP_SYS_RESOURCE) != 0)
}

/// `--listen`: refuses what bind() accepts but no client can reach
/// (multicast, broadcast), and a link-local IPv6 address without a scope
/// or with the index of no interface.
fn check_listen(addr: SocketAddr) -> Result<(), ConfigError> {
    let bad = |why: String| Err(ConfigError::Listen { addr, why });
    match addr.ip().to_canonical() {
        IpAddr::V4(ip) if ip.is_multicast() => {
            return bad(
                "a multicast address (224.0.0.0/4): no TCP client can connect to it".into(),
            );
        }
        IpAddr::V4(ip) if ip.is_broadcast() => {
            return bad("the broadcast address: no TCP client can connect to it".into());
        }
        IpAddr::V6(ip) if ip.is_multicast() => {
            return bad("a multicast address (ff00::/8): no TCP client can connect to it".into());
        }
        _ => {}
    }
    if let SocketAddr::V6(a) = addr
        && a.ip().is_unicast_link_local()
    {
        if a.scope_id() == 0 {
            return bad(
                "a link-local address needs its interface's index as scope: [fe80::...%N]:PORT \
                 (N from `ip link`)"
                    .into(),
            );
        }
        // (nix's if_indextoname reports no error for an unknown index.)
        if nix::net::if_::if_nameindex()
            .is_ok_and(|list| !list.iter().any(|i| i.index() == a.scope_id()))
        {
            return bad(format!(
                "scope {}: no interface has this index (see `ip link`)",
                a.scope_id()
            ));
        }
    }
    Ok(())
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

    /// Issue 11: the library's configuration is checked against the same
    /// ranges as the command line's, so nothing computed from it wraps.
    #[test]
    fn validate_checks_ranges_listen_and_limits() {
        let ok = || {
            Config::new(JobSpec::Handler {
                program: "/bin/cat".into(),
                args: vec![],
            })
        };
        ok().validate().unwrap();
        let refused = |f: &dyn Fn(&mut Config), want: &str| {
            let mut c = ok();
            f(&mut c);
            let e = c.validate().expect_err(want).to_string();
            assert!(e.contains(want), "{e} (want {want:?})");
        };
        refused(
            &|c| c.max_requests_jitter = u64::MAX,
            "--max-requests-jitter 18446744073709551615: out of range: must be 0 to 1000000000",
        );
        refused(
            &|c| c.max_requests_per_child = u64::MAX - 5,
            "--max-requests-per-child",
        );
        refused(
            &|c| c.check_interval = Duration::from_micros(1),
            "--check-interval 1us: out of range: must be 10ms to 1h",
        );
        refused(
            &|c| c.job_timeout = Some(Duration::ZERO),
            "--job-timeout 0: 0 means off",
        );
        refused(
            &|c| c.reload_check_every = Some(Duration::ZERO),
            "--reload-check-every 0",
        );
        refused(&|c| c.backlog = -1, "backlog -1: out of range");
        refused(&|c| c.backlog = 0, "backlog 0: out of range");
        refused(
            &|c| c.keepalive = Duration::from_millis(500),
            "--keepalive 500ms: out of range: must be 0 (off) or 1s to 32767s",
        );
        refused(
            &|c| c.listen = "239.1.2.3:7000".parse().unwrap(),
            "multicast",
        );
        refused(
            &|c| c.listen = "255.255.255.255:7000".parse().unwrap(),
            "broadcast",
        );
        refused(&|c| c.listen = "[fe80::1]:7000".parse().unwrap(), "scope");
        refused(
            &|c| c.job_limits = vec![JobLimit::Nofile(3)],
            "--job-limit nofile=3: must be at least 4",
        );
        refused(
            &|c| c.job_limits = vec![JobLimit::As(4096)],
            "--job-limit as=4K: must be at least 1M",
        );
        refused(
            &|c| c.job_limits = vec![JobLimit::Core(0), JobLimit::Core(1 << 20)],
            "--job-limit core=1M: core is given twice",
        );
        let mut c = ok();
        c.keepalive = Duration::ZERO;
        c.grace = Duration::ZERO;
        c.kill_grace = Duration::ZERO;
        c.fin_grace = Duration::ZERO;
        c.max_requests_per_child = MAX_REQUESTS_RANGE.max;
        c.max_requests_jitter = MAX_REQUESTS_JITTER_RANGE.max;
        c.job_timeout = Some(JOB_TIMEOUT_RANGE.max);
        c.job_limits = vec![JobLimit::Core(0), JobLimit::Fsize(0), JobLimit::Nofile(4)];
        c.validate().unwrap();
    }

    #[test]
    fn durations_are_shown_as_the_flags_take_them() {
        for (d, s) in [
            (Duration::ZERO, "0"),
            (Duration::from_micros(1), "1us"),
            (Duration::from_millis(250), "250ms"),
            (Duration::from_millis(1500), "1500ms"),
            (Duration::from_secs(60), "1m"),
            (Duration::from_secs(32_767), "32767s"),
            (Duration::from_secs(720 * 3600), "720h"),
            (Duration::from_nanos(100), "0.0000001s"),
        ] {
            assert_eq!(format_duration(d), s);
            assert_eq!(parse_duration(s).unwrap(), d, "{s}");
        }
        assert_eq!(JobLimit::As(2 << 30).to_string(), "as=2G");
        assert_eq!(JobLimit::Cpu(60).to_string(), "cpu=60s");
        assert_eq!(JobLimit::Fsize(1000).to_string(), "fsize=1000");
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
