//! The `jobd` command line: clap's parse of the arguments, then validation
//! into a [`Config`] (parse first, then validate, as ripgrep's
//! `LowArgs` → `HiArgs`). The clap types live here, in the binary; the
//! library's configuration knows nothing of clap.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use clap::ValueEnum;
use jobd::config::{
    CTL_TIMEOUT_RANGE, Config, ConfigError, Containment, DetectorKind, DisconnectPolicy, FinPolicy,
    JobSpec, LogFormat, parse_duration,
};
use jobd::control::ctl;

/// jobd: a connection-aware prefork job server.
///
/// Preforks workers; each accepts a TCP client and runs one job for it (the
/// handler program, with the connection on stdin and stdout). When a client
/// goes away, its job is cancelled.
///
/// Signals: SIGTERM stops gracefully (jobs finish within --grace), SIGINT
/// kills every job and exits, SIGHUP replaces workers once idle, SIGTTIN /
/// SIGTTOU add / remove a worker, SIGUSR1 reopens the logs.
#[derive(Debug, Parser)]
#[command(name = "jobd", version, args_conflicts_with_subcommands = true, after_help = AFTER_HELP)]
pub struct Cli {
    /// A subcommand; without one, jobd serves.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Serving options.
    #[command(flatten)]
    pub run: RunArgs,
}

const AFTER_HELP: &str = "\
Handler environment: PROTO (TCP or TCP6), TCPLOCALIP, TCPLOCALPORT, TCPREMOTEIP,
TCPREMOTEPORT, JOBD_JOB_ID, JOBD_SLOT.

Examples:
  jobd --listen 127.0.0.1:7000 --prefork 4 --script ./examples/handler.sh
  jobd --scoreboard /tmp/jobd.sb --script ./handler -- --verbose
  jobd status --scoreboard /tmp/jobd.sb --json
  jobd --daemonize --pid-file /run/jobd.pid --error-log /var/log/jobd.err \\
       --access-log /var/log/jobd.log --script /srv/handler
  jobd ctl stop --pid-file /run/jobd.pid";

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show the slots and totals of a running jobd from its scoreboard file.
    Status(StatusArgs),
    /// A live view of a running jobd from its scoreboard file, redrawn
    /// every second (q quits); plain snapshots when stdout is not a
    /// terminal.
    Top(TopArgs),
    /// Control a running jobd through its pid file: status, stop, reload,
    /// restart, force-stop.
    Ctl(CtlArgs),
}

/// `jobd ctl` verbs (Proc::Launcher's start / stop / restart / is_running /
/// force_stop).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CtlVerb {
    /// Exit 0 and print the pid when running, exit 3 when not (LSB).
    Status,
    /// SIGTERM, then wait until the pid is gone (bounded by --timeout).
    Stop,
    /// SIGHUP: replace workers once idle.
    Reload,
    /// Stop, then start again with the same arguments (read from the running
    /// process's /proc/PID/cmdline), or with the arguments after `--`;
    /// relative paths in them are resolved from the current directory of
    /// `jobd ctl restart`.
    Restart,
    /// SIGKILL the supervisor, its workers and their job process trees.
    ForceStop,
    /// Zero-downtime binary upgrade: SIGUSR2 makes the supervisor start the
    /// jobd executable again (same path and arguments) with the listening
    /// socket inherited; once the new one serves, the old one drains (its
    /// running jobs finish, still watched). Exit 0 when the pid file names
    /// the new supervisor, 1 when none took over within --timeout.
    Upgrade,
}

/// `jobd ctl` options.
///
/// Exit codes (LSB): status: 0 running, 3 not running, 4 unknown (no pid in
/// the file, or not a jobd); stop and force-stop: 0 (also when not
/// running), 1 on timeout or failure; reload: 0 sent, 7 not running;
/// restart: the new jobd's exit code, 7 when not running and no arguments
/// were given, 2 for unusable arguments.
#[derive(Debug, Args)]
pub struct CtlArgs {
    /// What to do.
    #[arg(value_enum)]
    pub verb: CtlVerb,
    /// The pid file given to jobd with --pid-file.
    #[arg(long, value_name = "PATH")]
    pub pid_file: PathBuf,
    /// How long stop (and restart's stop) waits for the daemon to exit.
    /// Range: 100ms to 48h.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = ctl_timeout, allow_hyphen_values = true)]
    pub timeout: Duration,
    /// restart: start with these arguments instead of the running ones.
    #[arg(last = true, value_name = "ARGS")]
    pub args: Vec<OsString>,
}

/// `jobd status` options.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The scoreboard file given to jobd with --scoreboard.
    #[arg(long, value_name = "PATH")]
    pub scoreboard: PathBuf,
    /// Print one JSON object instead of a table (same as --format json).
    #[arg(long)]
    pub json: bool,
    /// table, json, or openmetrics (OpenMetrics text for a textfile
    /// collector, ending in `# EOF`).
    #[arg(long, value_enum, default_value = "table")]
    pub format: StatusFormat,
}

/// `jobd status --format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StatusFormat {
    /// The human-readable table.
    Table,
    /// One JSON object.
    Json,
    /// OpenMetrics text.
    Openmetrics,
}

/// `jobd top` options.
#[derive(Debug, Args)]
pub struct TopArgs {
    /// The scoreboard file given to jobd with --scoreboard.
    #[arg(long, value_name = "PATH")]
    pub scoreboard: PathBuf,
    /// Stop after N screens (default: until q, or until stdout closes).
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
}

/// `--detector`: which socket table the periodic scan reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DetectorArg {
    /// sock_diag, falling back to procfs with a warning when unavailable.
    Auto,
    /// NETLINK_SOCK_DIAG dumps filtered in the kernel.
    SockDiag,
    /// `/proc/net/tcp` and `/proc/net/tcp6` (the netstat way).
    Procfs,
}

impl From<DetectorArg> for DetectorKind {
    fn from(a: DetectorArg) -> DetectorKind {
        match a {
            DetectorArg::Auto => DetectorKind::Auto,
            DetectorArg::SockDiag => DetectorKind::SockDiag,
            DetectorArg::Procfs => DetectorKind::Procfs,
        }
    }
}

/// `--on-fin`: what a FIN from the client means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FinArg {
    /// A FIN (close or half-close) is a disconnect: cancel the job.
    Cancel,
    /// A FIN may be a half-close: keep the job; only a reset counts.
    Keep,
}

impl From<FinArg> for FinPolicy {
    fn from(a: FinArg) -> FinPolicy {
        match a {
            FinArg::Cancel => FinPolicy::Cancel,
            FinArg::Keep => FinPolicy::Keep,
        }
    }
}

/// `--on-disconnect`: what to do when a client disconnects and no hook
/// decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DisconnectArg {
    /// Cancel the job.
    Cancel,
    /// Log the disconnect and let the job run.
    Log,
}

impl From<DisconnectArg> for DisconnectPolicy {
    fn from(a: DisconnectArg) -> DisconnectPolicy {
        match a {
            DisconnectArg::Cancel => DisconnectPolicy::Cancel,
            DisconnectArg::Log => DisconnectPolicy::Log,
        }
    }
}

/// `--containment`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ContainmentArg {
    /// cgroup when usable, else subreaper.
    Auto,
    /// A cgroup v2 per slot; refuse to start without.
    Cgroup,
    /// The worker is its jobs' subreaper.
    Subreaper,
}

impl From<ContainmentArg> for Containment {
    fn from(a: ContainmentArg) -> Containment {
        match a {
            ContainmentArg::Auto => Containment::Auto,
            ContainmentArg::Cgroup => Containment::Cgroup,
            ContainmentArg::Subreaper => Containment::Subreaper,
        }
    }
}

/// `--proxy-protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProxyArg {
    /// No header: the peer is the client.
    Off,
    /// The text header (HAProxy `send-proxy`).
    V1,
    /// The binary header (HAProxy `send-proxy-v2`).
    V2,
    /// Either.
    Any,
}

impl From<ProxyArg> for jobd::config::ProxyProtocol {
    fn from(a: ProxyArg) -> Self {
        use jobd::config::ProxyProtocol as P;
        match a {
            ProxyArg::Off => P::Off,
            ProxyArg::V1 => P::V1,
            ProxyArg::V2 => P::V2,
            ProxyArg::Any => P::Any,
        }
    }
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormatArg {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl From<LogFormatArg> for LogFormat {
    fn from(a: LogFormatArg) -> LogFormat {
        match a {
            LogFormatArg::Text => LogFormat::Text,
            LogFormatArg::Json => LogFormat::Json,
        }
    }
}

impl From<CtlVerb> for ctl::Verb {
    fn from(v: CtlVerb) -> ctl::Verb {
        match v {
            CtlVerb::Status => ctl::Verb::Status,
            CtlVerb::Stop => ctl::Verb::Stop,
            CtlVerb::Reload => ctl::Verb::Reload,
            CtlVerb::Restart => ctl::Verb::Restart,
            CtlVerb::ForceStop => ctl::Verb::ForceStop,
            CtlVerb::Upgrade => ctl::Verb::Upgrade,
        }
    }
}

impl CtlArgs {
    /// The library's request for these arguments.
    pub fn request(&self) -> ctl::Request {
        ctl::Request {
            verb: self.verb.into(),
            pid_file: self.pid_file.clone(),
            timeout: self.timeout,
            args: self.args.clone(),
        }
    }
}

fn duration(s: &str) -> Result<Duration, String> {
    parse_duration(s)
}

/// `jobd ctl --timeout`: a duration in [`CTL_TIMEOUT_RANGE`] (no
/// configuration to validate it later).
fn ctl_timeout(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    CTL_TIMEOUT_RANGE.check(d).map_err(|e| e.to_string())?;
    Ok(d)
}

/// 0 means off for `--job-timeout` and `--reload-check-every` (as PHP-FPM's
/// `request_terminate_timeout = 0`); the configuration says off with None.
fn zero_is_off(d: Option<Duration>) -> Option<Duration> {
    d.filter(|d| !d.is_zero())
}

/// Serving options.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Address to listen on (IPv4 or `[IPv6]:port`; port 0 picks a free port).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7000")]
    pub listen: SocketAddr,

    /// Workers forked at start (0: one process runs jobs one at a time).
    /// Range: 0 to 10000.
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u32).range(0..=10_000), allow_negative_numbers = true)]
    pub prefork: u32,

    /// The handler program, run for each client with the connection on
    /// stdin and stdout (arguments for it go after `--`).
    #[arg(long, value_name = "PATH")]
    pub script: Option<PathBuf>,

    /// Arguments for the handler.
    #[arg(last = true, value_name = "ARGS")]
    pub script_args: Vec<OsString>,

    /// Scoreboard file (mode 0640) for `jobd status`; default: anonymous memory.
    #[arg(long, value_name = "PATH")]
    pub scoreboard: Option<PathBuf>,

    /// On SIGTERM, how long running jobs may finish before they are killed.
    /// Range: 0 to 24h (0: they are cancelled at once).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = duration, allow_hyphen_values = true)]
    pub grace: Duration,

    /// When cancelling a job: SIGTERM, then SIGKILL after this.
    /// Range: 0 to 10m (0: SIGKILL at once).
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = duration, allow_hyphen_values = true)]
    pub kill_grace: Duration,

    /// Period of the disconnect scan. Range: 10ms to 1h.
    #[arg(long, value_name = "DURATION", default_value = "100ms", value_parser = duration, allow_hyphen_values = true)]
    pub check_interval: Duration,

    /// Socket table for the disconnect scan (auto: sock_diag, else procfs).
    #[arg(long, value_enum, default_value = "auto")]
    pub detector: DetectorArg,

    /// Workers also watch their client's socket while a handler runs.
    #[arg(long, value_name = "on|off", default_value = "on", value_parser = on_off, action = clap::ArgAction::Set)]
    pub worker_watch: bool,

    /// What a FIN from the client means: cancel the job, or keep it (the
    /// client may have half-closed on purpose; a reset still cancels).
    #[arg(long, value_enum, default_value = "cancel")]
    pub on_fin: FinArg,

    /// After a FIN from a client that acknowledged every byte the handler
    /// sent (it has its answer), how long the handler may go on to exit by
    /// itself before it is cancelled (0: a FIN cancels at once). A FIN
    /// during a silent phase, and any reset, cancel at once. Range: 0 to 1m.
    #[arg(long, value_name = "DURATION", default_value = "250ms", value_parser = duration, allow_hyphen_values = true)]
    pub fin_grace: Duration,

    /// A per-job limit, applied to each handler as an rlimit before it runs
    /// (repeatable): cpu=DURATION, as=SIZE, nofile=N, nproc=N, core=SIZE,
    /// fsize=SIZE (sizes with K, M, G). A job killed by its CPU or file
    /// size limit ends reason=limit-cpu / limit-fsize. Each key once;
    /// range: cpu at least 1s, as at least 1M, nofile at least 4, nproc at
    /// least 1, and each at most jobd's own hard limit (unless it has
    /// CAP_SYS_RESOURCE; nofile also at most fs.nr_open).
    #[arg(long = "job-limit", value_name = "KEY=VALUE", value_parser = jobd::config::parse_job_limit)]
    pub job_limits: Vec<jobd::config::JobLimit>,

    /// How a job's whole process tree is contained: a cgroup v2 per slot,
    /// killed with cgroup.kill (auto: when jobd can create cgroups, as root
    /// or in a delegated subtree), or the
    /// worker as its jobs' subreaper.
    #[arg(long, value_enum, default_value = "auto")]
    pub containment: ContainmentArg,

    /// TCP keepalive idle time and TCP_USER_TIMEOUT for clients, in whole
    /// seconds. Range: 0 (off) or 1s to 32767s.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = duration, allow_hyphen_values = true)]
    pub keepalive: Duration,

    /// What to do when a client disconnects and no hook decided.
    #[arg(long, value_enum, default_value = "cancel")]
    pub on_disconnect: DisconnectArg,

    /// Program run with each disconnect event as JSON on stdin; exit 0
    /// cancels, exit 3 keeps, anything else applies --on-disconnect.
    #[arg(long, value_name = "PATH")]
    pub disconnect_hook: Option<PathBuf>,

    /// Time limit for --disconnect-hook. Range: 10ms to 10m.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = duration, allow_hyphen_values = true)]
    pub hook_timeout: Duration,

    /// Log format on stderr (and of the access log).
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormatArg,

    /// Upper bound on workers: when all are busy, the pool grows (doubling
    /// the spawn rate each maintenance tick, up to 32 per tick) to this.
    /// Range: 1 to 10000, and at least --prefork.
    /// [default: 150, or --prefork when larger]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=10_000), allow_negative_numbers = true)]
    pub max_children: Option<u32>,

    /// Workers idle this long are retired, one per tick, down to --prefork.
    /// Range: 1s to 24h.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = duration, allow_hyphen_values = true)]
    pub idle_timeout: Duration,

    /// A worker exits and is replaced after this many jobs (0: never).
    /// Range: 0 to 1000000000.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 0,
        allow_negative_numbers = true
    )]
    pub max_requests_per_child: u64,

    /// Adds a random 0..=J to --max-requests-per-child for each worker, so
    /// that workers do not all recycle at once. Range: 0 to 1000000000.
    #[arg(
        long,
        value_name = "J",
        default_value_t = 0,
        allow_negative_numbers = true
    )]
    pub max_requests_jitter: u64,

    /// Cancel a job that runs longer than this (reason `timeout`).
    /// Off by default. Range: 0 (off) or 100ms to 720h.
    #[arg(long, value_name = "DURATION", value_parser = duration, allow_hyphen_values = true)]
    pub job_timeout: Option<Duration>,

    /// Check the handler file and jobd's executable this often (mtime,
    /// size, inode); reload as on SIGHUP when one changed.
    /// Off by default. Range: 0 (off) or 100ms to 24h.
    #[arg(long, value_name = "DURATION", value_parser = duration, allow_hyphen_values = true)]
    pub reload_check_every: Option<Duration>,

    /// Detach: double fork, setsid, chdir /, umask 022, stdin from
    /// /dev/null. Needs --pid-file, --error-log and --access-log.
    #[arg(long)]
    pub daemonize: bool,

    /// Pid file: created without following symlinks, written atomically,
    /// locked for jobd's whole life, removed on a clean exit.
    #[arg(long, value_name = "PATH")]
    pub pid_file: Option<PathBuf>,

    /// Error log: jobd's log and the handlers' stderr (SIGUSR1 reopens it).
    #[arg(long, value_name = "PATH")]
    pub error_log: Option<PathBuf>,

    /// Access log: one line per job (SIGUSR1 reopens it).
    #[arg(long, value_name = "PATH")]
    pub access_log: Option<PathBuf>,

    /// Refuse to start unless running as root.
    #[arg(long)]
    pub require_root: bool,

    /// Run handlers and hook programs as this user (needs root); jobd
    /// itself stays root, out of their reach.
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,

    /// With --user: the group handlers run as (default: the user's).
    #[arg(long, value_name = "NAME")]
    pub group: Option<String>,

    /// At most N jobs at once from one client address (as xinetd's
    /// per_source, systemd's MaxConnectionsPerSource=): a connection over
    /// the limit gets no job and is closed at once.
    /// Range: 1 to --max-children. [default: no limit]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub max_per_source: Option<u32>,

    /// Start handlers from an empty environment: only PATH (jobd's, or
    /// /usr/local/bin:/usr/bin:/bin), the tcpserver and JOBD_* variables,
    /// --pass-env and --env (and HOME, USER, LOGNAME with --user).
    #[arg(long)]
    pub clear_env: bool,

    /// Set KEY=VALUE in every handler's environment (repeatable; applied
    /// last, over everything else).
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = key_value)]
    pub env: Vec<(String, String)>,

    /// With --clear-env: pass jobd's own KEY on to handlers (repeatable).
    #[arg(long, value_name = "KEY")]
    pub pass_env: Vec<String>,

    /// Each connection starts with a PROXY protocol header (from HAProxy
    /// or another balancer) naming the real client: handlers, logs,
    /// events and status then show that client. A LOCAL header (a health
    /// check) starts no job; a missing or bad header closes the connection.
    #[arg(long, value_enum, default_value = "off")]
    pub proxy_protocol: ProxyArg,

    /// How long a connection may take to send its PROXY header.
    /// Range: 10ms to 1m.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = duration, allow_hyphen_values = true)]
    pub proxy_timeout: Duration,

    /// Set SO_REUSEPORT on the listener, so that several jobds (or an
    /// upgraded one) share the port; the kernel spreads new connections.
    #[arg(long)]
    pub reuse_port: bool,

    /// Serve GET /metrics (OpenMetrics, or the Prometheus text format),
    /// /status (an HTML page) and /status.json over HTTP on this address
    /// (port 0 picks a free one; logged as `metrics on IP:PORT`). No
    /// authentication: bind it to loopback or a private network.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,

    /// Once a job has run longer than this, log one warning with its
    /// client, age and process tree (pid, state, CPU, command line of each
    /// process), as PHP-FPM's slowlog; the last 8 reports are also on
    /// --metrics-listen's /status. Range: 100ms to 24h. [default: off]
    #[arg(long, value_name = "DURATION", value_parser = duration, allow_hyphen_values = true)]
    pub slow_job_log: Option<Duration>,
}

fn key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?}: expected KEY=VALUE")),
    }
}

fn on_off(s: &str) -> Result<bool, String> {
    match s {
        "on" | "true" | "yes" | "1" => Ok(true),
        "off" | "false" | "no" | "0" => Ok(false),
        _ => Err(format!("{s:?}: expected on or off")),
    }
}

impl RunArgs {
    /// Validates the arguments into a configuration.
    pub fn to_config(&self) -> Result<Config, ConfigError> {
        let program = self.script.clone().ok_or(ConfigError::NoJob)?;
        let mut c = Config::new(JobSpec::Handler {
            program,
            args: self.script_args.clone(),
        });
        c.listen = self.listen;
        c.prefork = self.prefork as usize;
        c.scoreboard = self.scoreboard.clone();
        c.grace = self.grace;
        c.kill_grace = self.kill_grace;
        c.check_interval = self.check_interval;
        c.detector = self.detector.into();
        c.worker_watch = self.worker_watch;
        c.on_fin = self.on_fin.into();
        c.fin_grace = self.fin_grace;
        c.containment = self.containment.into();
        c.job_limits = self.job_limits.clone();
        c.keepalive = self.keepalive;
        c.on_disconnect = self.on_disconnect.into();
        c.disconnect_hook = self.disconnect_hook.clone();
        c.hook_timeout = self.hook_timeout;
        c.log_format = self.log_format.into();
        // The default cap follows a larger --prefork; an explicit cap below
        // --prefork is an error (see Config::validate).
        c.max_children = match self.max_children {
            Some(n) => n as usize,
            None => (self.prefork as usize).max(150),
        };
        c.idle_timeout = self.idle_timeout;
        c.max_requests_per_child = self.max_requests_per_child;
        c.max_requests_jitter = self.max_requests_jitter;
        c.job_timeout = zero_is_off(self.job_timeout);
        c.reload_check_every = zero_is_off(self.reload_check_every);
        c.daemonize = self.daemonize;
        c.pid_file = self.pid_file.clone();
        c.error_log = self.error_log.clone();
        c.access_log = self.access_log.clone();
        c.require_root = self.require_root;
        c.user = self.user.clone();
        c.group = self.group.clone();
        c.max_per_source = self.max_per_source.map(|n| n as usize);
        c.clear_env = self.clear_env;
        c.env = self.env.clone();
        c.pass_env = self.pass_env.clone();
        c.proxy_protocol = self.proxy_protocol.into();
        c.proxy_timeout = self.proxy_timeout;
        c.reuse_port = self.reuse_port;
        c.metrics_listen = self.metrics_listen;
        c.slow_job_log = self.slow_job_log;
        c.validate()?;
        Ok(c)
    }
}

/// Checks that `args` start a daemon: they parse as jobd's arguments and
/// include `--daemonize`.
pub fn check_start_args(args: &[OsString]) -> Result<(), String> {
    let shown = args
        .iter()
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ");
    let cli =
        Cli::try_parse_from(std::iter::once(OsString::from("jobd")).chain(args.iter().cloned()))
            .map_err(|e| {
                let first = e.to_string();
                let first = first
                    .lines()
                    .next()
                    .unwrap_or("")
                    .trim_start_matches("error: ");
                format!("the arguments to start with are not jobd's ({first}): {shown}")
            })?;
    if cli.command.is_some() || !cli.run.daemonize {
        return Err(format!(
            "the arguments to start with have no --daemonize (a foreground jobd is restarted by \
             the service manager that runs it): {shown}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_command() {
        let cli =
            Cli::try_parse_from(["jobd", "--prefork", "4", "--script", "/bin/cat", "--", "-u"])
                .unwrap();
        assert!(cli.command.is_none());
        assert_eq!(cli.run.prefork, 4);
        assert_eq!(cli.run.script_args, vec![OsString::from("-u")]);
        let c = cli.run.to_config().unwrap();
        assert_eq!(c.listen, "127.0.0.1:7000".parse().unwrap());
        assert_eq!(c.grace, Duration::from_secs(30));
    }

    #[test]
    fn rejects_bad_numbers_and_addresses() {
        assert!(
            Cli::try_parse_from(["jobd", "--prefork", "many", "--script", "/bin/cat"]).is_err()
        );
        assert!(
            Cli::try_parse_from(["jobd", "--prefork", "10001", "--script", "/bin/cat"]).is_err()
        );
        assert!(
            Cli::try_parse_from(["jobd", "--listen", "nowhere:x", "--script", "/bin/cat"]).is_err()
        );
        assert!(Cli::try_parse_from(["jobd", "--grace", "-1s", "--script", "/bin/cat"]).is_err());
        let ok =
            Cli::try_parse_from(["jobd", "--listen", "[::1]:0", "--script", "/bin/cat"]).unwrap();
        assert!(ok.run.listen.is_ipv6());
    }

    /// Every numeric flag's range is in its `--help` and in README's flag
    /// table, as the configuration checks it.
    #[test]
    fn help_and_readme_give_each_range() {
        use clap::CommandFactory;
        use jobd::config as c;
        let durations = [
            c::GRACE_RANGE,
            c::KILL_GRACE_RANGE,
            c::CHECK_INTERVAL_RANGE,
            c::FIN_GRACE_RANGE,
            c::KEEPALIVE_RANGE,
            c::HOOK_TIMEOUT_RANGE,
            c::IDLE_TIMEOUT_RANGE,
            c::JOB_TIMEOUT_RANGE,
            c::RELOAD_CHECK_RANGE,
        ]
        .map(|r| (r.flag, r.describe()));
        let counts = [
            c::PREFORK_RANGE,
            c::MAX_CHILDREN_RANGE,
            c::MAX_REQUESTS_RANGE,
            c::MAX_REQUESTS_JITTER_RANGE,
        ]
        .map(|r| (r.flag, r.describe()));
        let cmd = Cli::command();
        let help = |cmd: &clap::Command, flag: &str| {
            let a = cmd
                .get_arguments()
                .find(|a| a.get_long() == flag.strip_prefix("--"))
                .unwrap_or_else(|| panic!("no {flag}"));
            a.get_long_help()
                .or(a.get_help())
                .map(|h| h.to_string())
                .unwrap_or_default()
        };
        let readme = include_str!("../../../README.md");
        for (flag, range) in durations.iter().chain(&counts) {
            let h = help(&cmd, flag);
            assert!(h.contains(&format!("Range: {range}")), "{flag}: {h:?}");
            let row = readme
                .lines()
                .find(|l| l.starts_with(&format!("| `{flag} ")))
                .unwrap_or_else(|| panic!("no README row for {flag}"));
            assert!(row.contains(range.as_str()), "README {flag}: {row}");
        }
        let ctl = cmd.find_subcommand("ctl").unwrap();
        let h = help(ctl, "--timeout");
        assert!(
            h.contains(&format!("Range: {}", c::CTL_TIMEOUT_RANGE.describe())),
            "{h}"
        );
    }

    /// 0 is off for --job-timeout and --reload-check-every; the ranges are
    /// checked at start, and ctl --timeout when parsed.
    #[test]
    fn ranges_are_checked() {
        let cfg = |args: &[&str]| {
            let mut v = vec!["jobd", "--script", "/bin/cat"];
            v.extend_from_slice(args);
            Cli::try_parse_from(v).unwrap().run.to_config()
        };
        let c = cfg(&["--job-timeout", "0", "--reload-check-every", "0"]).unwrap();
        assert_eq!((c.job_timeout, c.reload_check_every), (None, None));
        for (args, want) in [
            (&["--check-interval", "1us"][..], "--check-interval 1us"),
            (&["--job-timeout", "1ms"], "--job-timeout 1ms"),
            (
                &["--max-requests-jitter", "18446744073709551615"],
                "--max-requests-jitter 18446744073709551615",
            ),
            (&["--keepalive", "500ms"], "--keepalive 500ms"),
        ] {
            let e = cfg(args).unwrap_err().to_string();
            assert!(e.starts_with(want) && e.contains("out of range"), "{e}");
        }
        let e = Cli::try_parse_from(["jobd", "ctl", "stop", "--pid-file", "p", "--timeout", "0"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--timeout") && e.contains("100ms to 48h"), "{e}");
    }

    #[test]
    fn status_subcommand() {
        let cli =
            Cli::try_parse_from(["jobd", "status", "--scoreboard", "/tmp/x", "--json"]).unwrap();
        match cli.command {
            Some(Command::Status(s)) => assert!(s.json),
            _ => panic!("expected status"),
        }
    }

    #[test]
    fn start_args_must_daemonize() {
        let os = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        assert!(
            check_start_args(&os(&["--script", "/bin/cat"]))
                .unwrap_err()
                .contains("--daemonize")
        );
        assert!(
            check_start_args(&os(&["--bogus"]))
                .unwrap_err()
                .contains("not jobd's")
        );
        assert!(
            check_start_args(&os(&["status", "--scoreboard", "/x"]))
                .unwrap_err()
                .contains("--daemonize")
        );
        check_start_args(&os(&[
            "--daemonize",
            "--pid-file",
            "/p",
            "--error-log",
            "/e",
            "--access-log",
            "/a",
            "--script",
            "/bin/cat",
        ]))
        .unwrap();
    }
}
