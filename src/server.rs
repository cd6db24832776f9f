//! The public entry point: [`ServerBuilder`] and [`Server::run`].
//!
//! `run` validates the configuration, takes the pid file, binds the
//! listener (backlog 1024), creates the scoreboard, opens the logs,
//! daemonizes, drops privileges, calls `after_init`, and then either hands
//! over to the supervisor (`prefork >= 1`) or serves jobs one at a time in
//! this process (`prefork == 0`).

use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use crate::cgroup::CgroupTree;
use crate::config::{
    Config, ConfigError, Containment, DetectorKind, DisconnectPolicy, FinPolicy, JobSpec,
};
use crate::error::Error;
use crate::hooks::{DisconnectEvent, Hooks, InitInfo, JobContext, Verdict};
use crate::logfiles;
use crate::net::{bind, set_keepalive};
use crate::pidfile::PidFile;
use crate::scoreboard::Scoreboard;
use crate::supervisor::Supervisor;
use crate::sys;
use crate::sys::daemon::{self, Daemonized, Ready};
use crate::worker::run_inline;

/// Builds a [`Server`].
///
/// ```no_run
/// use jobd::Server;
/// use std::io::{BufRead, BufReader, Write};
///
/// Server::builder()
///     .listen("127.0.0.1:7000".parse().unwrap())
///     .prefork(4)
///     .job_fn(|conn, ctx| {
///         let mut line = String::new();
///         BufReader::new(&conn).read_line(&mut line)?;
///         writeln!(&conn, "job {} from {}: {}", ctx.job_id, ctx.peer, line.trim())
///     })
///     .build()
///     .unwrap()
///     .run()
///     .unwrap();
/// ```
pub struct ServerBuilder {
    cfg: Config,
    job_set: bool,
    hooks: Hooks,
}

impl ServerBuilder {
    /// Address to listen on (default `127.0.0.1:7000`; port 0 picks one).
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.cfg.listen = addr;
        self
    }

    /// Workers forked at start (default 4); 0 runs jobs one at a time in
    /// the calling process.
    pub fn prefork(mut self, n: usize) -> Self {
        self.cfg.prefork = n;
        self
    }

    /// Runs `program` with `args` for each client, the connection on stdin
    /// and stdout.
    pub fn handler(mut self, program: impl Into<PathBuf>, args: Vec<std::ffi::OsString>) -> Self {
        self.cfg.job = JobSpec::Handler {
            program: program.into(),
            args,
        };
        self.job_set = true;
        self
    }

    /// Runs `f` in the worker for each client.
    pub fn job_fn<F>(mut self, f: F) -> Self
    where
        F: Fn(std::net::TcpStream, &JobContext) -> std::io::Result<()> + 'static,
    {
        self.cfg.job = JobSpec::Closure(Rc::new(f));
        self.job_set = true;
        self
    }

    /// A scoreboard file that `jobd status` can read.
    pub fn scoreboard(mut self, path: impl Into<PathBuf>) -> Self {
        self.cfg.scoreboard = Some(path.into());
        self
    }

    /// SIGTERM: how long running jobs may finish (default 30 s).
    pub fn grace(mut self, d: Duration) -> Self {
        self.cfg.grace = d;
        self
    }

    /// Cancelling: SIGTERM, then SIGKILL after this (default 2 s).
    pub fn kill_grace(mut self, d: Duration) -> Self {
        self.cfg.kill_grace = d;
        self
    }

    /// Period of the disconnect scan (default 100 ms).
    pub fn check_interval(mut self, d: Duration) -> Self {
        self.cfg.check_interval = d;
        self
    }

    /// Scan backend (default auto).
    pub fn detector(mut self, d: DetectorKind) -> Self {
        self.cfg.detector = d;
        self
    }

    /// Whether workers watch their client socket while a handler runs
    /// (default on).
    pub fn worker_watch(mut self, on: bool) -> Self {
        self.cfg.worker_watch = on;
        self
    }

    /// FIN policy (default cancel).
    pub fn on_fin(mut self, p: FinPolicy) -> Self {
        self.cfg.on_fin = p;
        self
    }

    /// After a FIN from a client that has acknowledged all it was sent,
    /// how long the handler may still exit by itself (default 250 ms; zero:
    /// a FIN cancels at once).
    pub fn fin_grace(mut self, d: Duration) -> Self {
        self.cfg.fin_grace = d;
        self
    }

    /// Adds a per-job rlimit for each handler (see [`crate::config::JobLimit`]).
    pub fn job_limit(mut self, l: crate::config::JobLimit) -> Self {
        self.cfg.job_limits.push(l);
        self
    }

    /// How a job's process tree is contained (default auto: a cgroup v2
    /// per slot when jobd can create cgroups, else subreaper).
    pub fn containment(mut self, c: crate::config::Containment) -> Self {
        self.cfg.containment = c;
        self
    }

    /// Keepalive idle time and TCP_USER_TIMEOUT (default 60 s; zero: off).
    pub fn keepalive(mut self, d: Duration) -> Self {
        self.cfg.keepalive = d;
        self
    }

    /// Default action when a client disconnects and no hook decided.
    pub fn on_disconnect(mut self, p: DisconnectPolicy) -> Self {
        self.cfg.on_disconnect = p;
        self
    }

    /// Registers a disconnect callback; several run in order, and the first
    /// `Keep` keeps the job. A panicking callback counts as `Cancel`.
    pub fn on_client_disconnect<F>(mut self, f: F) -> Self
    where
        F: Fn(&DisconnectEvent) -> Verdict + 'static,
    {
        self.hooks.on_disconnect.push(Box::new(f));
        self
    }

    /// Called after binding, before forking.
    pub fn after_init<F: Fn(&InitInfo) + 'static>(mut self, f: F) -> Self {
        self.hooks.after_init = Some(Box::new(f));
        self
    }

    /// Called when a stop begins (SIGTERM or SIGINT), before workers stop.
    pub fn before_shutdown<F: Fn() + 'static>(mut self, f: F) -> Self {
        self.hooks.before_shutdown = Some(Box::new(f));
        self
    }

    /// Upper bound on workers (default 150): the pool grows to it when all
    /// are busy.
    pub fn max_children(mut self, n: usize) -> Self {
        self.cfg.max_children = n;
        self
    }

    /// Idle workers above `prefork` are retired after this long (default
    /// 10 s).
    pub fn idle_timeout(mut self, d: Duration) -> Self {
        self.cfg.idle_timeout = d;
        self
    }

    /// A worker exits and is replaced after `n` jobs plus a random
    /// `0..=jitter` (0: never).
    pub fn max_requests_per_child(mut self, n: u64, jitter: u64) -> Self {
        self.cfg.max_requests_per_child = n;
        self.cfg.max_requests_jitter = jitter;
        self
    }

    /// Cancel jobs running longer than this (reason `timeout`); zero
    /// means off, as on the command line.
    pub fn job_timeout(mut self, d: Duration) -> Self {
        self.cfg.job_timeout = (!d.is_zero()).then_some(d);
        self
    }

    /// Check for a reload this often: the handler file and the executable,
    /// or the `auto_reload_handler` when one is set.
    pub fn reload_check_every(mut self, d: Duration) -> Self {
        self.cfg.reload_check_every = (!d.is_zero()).then_some(d);
        self
    }

    /// Detach from the terminal (needs pid file, error log and access log).
    pub fn daemonize(mut self, on: bool) -> Self {
        self.cfg.daemonize = on;
        self
    }

    /// Pid file, locked for the server's life.
    pub fn pid_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.cfg.pid_file = Some(path.into());
        self
    }

    /// Error log (the log and the handlers' stderr).
    pub fn error_log(mut self, path: impl Into<PathBuf>) -> Self {
        self.cfg.error_log = Some(path.into());
        self
    }

    /// Access log: one line per job.
    pub fn access_log(mut self, path: impl Into<PathBuf>) -> Self {
        self.cfg.access_log = Some(path.into());
        self
    }

    /// Format of the access log (text or JSON lines).
    pub fn log_format(mut self, f: crate::config::LogFormat) -> Self {
        self.cfg.log_format = f;
        self
    }

    /// Refuse to start unless root.
    pub fn require_root(mut self, on: bool) -> Self {
        self.cfg.require_root = on;
        self
    }

    /// Run as this user (and group) after binding and opening files.
    pub fn user(mut self, user: impl Into<String>, group: Option<String>) -> Self {
        self.cfg.user = Some(user.into());
        self.cfg.group = group;
        self
    }

    /// Called in the supervisor each time a worker is reaped.
    pub fn on_worker_exit<F: Fn(&crate::hooks::WorkerExit) + 'static>(mut self, f: F) -> Self {
        self.hooks.on_worker_exit = Some(Box::new(f));
        self
    }

    /// Decides, every `reload_check_every`, whether to reload (replace
    /// workers once idle), instead of watching the handler file.
    pub fn auto_reload_handler<F: Fn() -> bool + 'static>(mut self, f: F) -> Self {
        self.hooks.auto_reload = Some(Box::new(f));
        self
    }

    /// Replaces the whole configuration (the command uses this).
    pub fn config(mut self, cfg: Config) -> Self {
        self.cfg = cfg;
        self.job_set = true;
        self
    }

    /// Validates and builds.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when no job was given or the configuration is
    /// invalid (see [`Config::validate`]).
    pub fn build(self) -> Result<Server, Error> {
        if !self.job_set {
            return Err(ConfigError::NoJob.into());
        }
        self.cfg.validate()?;
        Ok(Server {
            cfg: self.cfg,
            hooks: self.hooks,
        })
    }
}

/// A configured job server.
pub struct Server {
    cfg: Config,
    hooks: Hooks,
}

impl Server {
    /// A builder with the defaults.
    pub fn builder() -> ServerBuilder {
        ServerBuilder {
            cfg: Config::new(JobSpec::Handler {
                program: PathBuf::new(),
                args: vec![],
            }),
            job_set: false,
            hooks: Hooks::default(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Binds, forks and serves until SIGTERM or SIGINT. Returns after a
    /// clean stop, with no worker or job process of its own left.
    ///
    /// The start, in this order: validate; take the pid file (refused when
    /// another jobd holds it); bind; create the scoreboard; open the logs;
    /// daemonize; write the daemon's pid; resolve `--user`; `after_init`;
    /// serve. On a clean stop the pid file is removed.
    ///
    /// With `daemonize`, relative paths are made absolute first (the daemon
    /// runs in `/`), and the calling process does not return on success: it
    /// exits with status 0 once the daemon reports that it is up (bound,
    /// pid written); when the daemon fails to start, it
    /// returns [`Error::DaemonFailed`] with the daemon's message.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for an invalid configuration (exit status 2), and
    /// for everything that fails at start (pid file taken, address in use,
    /// scoreboard, logs, privileges, daemon) the [`Error`] variant naming
    /// the step (exit status 1).
    pub fn run(&self) -> Result<(), Error> {
        self.cfg.validate()?;
        match sys::thread_count() {
            Ok(1) => {}
            Ok(threads) => return Err(Error::Threaded(threads)),
            Err(e) => return Err(Error::Setup(e)),
        }
        // An upgrade's new jobd (started by the old supervisor, our parent,
        // with its listener): it is already detached, it takes the pid file
        // and a fresh scoreboard over, and tells the old one when it serves.
        let upgrade_from = crate::supervisor::upgrade::upgrading_from();
        let owned;
        let cfg = if self.cfg.daemonize || upgrade_from.is_some() {
            let mut c = absolute_paths(&self.cfg).map_err(Error::Daemonize)?;
            if upgrade_from.is_some() {
                c.daemonize = false;
            }
            owned = c;
            &owned
        } else {
            &self.cfg
        };
        let mut pid_file = match (cfg.pid_file.as_deref(), upgrade_from) {
            (Some(p), Some(old)) => Some(PidFile::take_over(p, old)?),
            (Some(p), None) => Some(PidFile::acquire(p)?),
            (None, _) => None,
        };
        // systemd socket activation, else our own bind. An explicit
        // (non-default) --listen must match the passed socket.
        let default_listen = Config::default_listen();
        // (An upgrade's new jobd inherits the socket whatever --listen said:
        // port 0 picked the one it has.)
        let want = (cfg.listen != default_listen && upgrade_from.is_none()).then_some(cfg.listen);
        let listener = match crate::net::activated(want).map_err(ConfigError::Activation)? {
            Some(l) => l,
            None => {
                bind(cfg.listen, cfg.backlog, cfg.reuse_port).map_err(|source| Error::Bind {
                    addr: cfg.listen,
                    source,
                })?
            }
        };
        let local = listener.local_addr().map_err(Error::Setup)?;
        // `--metrics-listen`: bound now (an address in use is an error at
        // start), served by the supervisor's loop.
        let metrics_listener = match cfg.metrics_listen {
            Some(addr) => {
                // SO_REUSEPORT: an upgrade's new jobd binds it while the old one drains.
                let l = bind(addr, 1024, true).map_err(|source| Error::Bind { addr, source })?;
                Some(l)
            }
            None => None,
        };
        if let Err(e) = set_keepalive(&listener, cfg.keepalive) {
            tracing::warn!(error = %e, "failed to set TCP keepalive on the listener");
        }
        let sb = match &cfg.scoreboard {
            Some(p) if upgrade_from.is_some() => Scoreboard::create_replacing(p, cfg.slots())?,
            Some(p) => Scoreboard::create(p, cfg.slots())?,
            None => Scoreboard::anonymous(cfg.slots())?,
        };
        let error_log = logfiles::open(
            cfg.error_log.as_deref(),
            cfg.access_log.as_deref(),
            cfg.log_format,
        )?;
        let ready = if cfg.daemonize {
            let Some(log) = &error_log else {
                return Err(ConfigError::DaemonNeeds("--error-log").into());
            };
            match daemon::daemonize(log.file().as_fd()).map_err(Error::Daemonize)? {
                Daemonized::Foreground(reader) => return foreground_wait(reader),
                Daemonized::Daemon(writer) => Some(writer),
            }
        } else {
            if let Some(log) = &error_log {
                log.redirect_stderr()?;
            }
            None
        };
        drop(error_log); // fd 2 holds it now
        let started = (|| -> Result<(), Error> {
            if let Some(p) = pid_file.as_mut().filter(|_| cfg.daemonize) {
                p.write_pid(std::process::id())?;
            }
            // `--user`: handlers and hook programs run as that user; a
            // closure job runs in its worker, which drops to the user
            // itself. jobd stays as it was started.
            if let Some(u) = &cfg.user {
                crate::spawn::set_run_as(u, cfg.group.as_deref()).map_err(|e| {
                    Error::Privileges {
                        user: u.clone(),
                        group: cfg.group.clone().unwrap_or_else(|| "(primary)".into()),
                        source: std::io::Error::other(e),
                    }
                })?;
            }
            sys::ignore_sigpipe().map_err(Error::Setup)?;
            // From the moment the pid is known (the pid file, `up`), a
            // signal must not kill us with its default action: block the
            // signals that the supervisor (or the inline worker) reads from
            // its signalfd; pending ones are read there.
            sys::handled_set()
                .thread_block()
                .map_err(|e| Error::Setup(e.into()))
        })();
        if let Err(e) = started {
            if let Some(w) = ready {
                w.send(&Ready::Failed(error_chain(&e)));
            }
            return Err(e);
        }
        let h = sb.header();
        h.set_supervisor_pid(std::process::id() as i32);
        h.set_prefork(cfg.prefork);
        h.set_generation(1);
        sb.set_listen(local);
        tracing::info!(
            prefork = cfg.prefork,
            pid = std::process::id(),
            "listening on {local}"
        );
        if let Some(m) = metrics_listener.as_ref().and_then(|l| l.local_addr().ok()) {
            tracing::info!(
                "metrics on {m} (GET /metrics, /status, /status.json; no authentication)"
            );
        }
        if let Some(w) = ready {
            w.send(&Ready::Up {
                pid: std::process::id() as i32,
            });
        }
        if let Some(f) = &self.hooks.after_init {
            f(&InitInfo { local_addr: local });
        }
        if upgrade_from.is_some() {
            // The pid file names us only now that everything is set up:
            // a new jobd that failed before leaves the old one's in place.
            if let Some(p) = pid_file.as_mut() {
                p.write_pid(std::process::id())?;
            }
            crate::supervisor::upgrade::tell_old_ready();
        }
        let result = if cfg.prefork == 0 {
            // The one process contains its jobs by their process group.
            if cfg.containment == Containment::Cgroup {
                return Err(Error::Containment(
                    "not available with --prefork 0 (the one process contains its jobs by their process group)".into(),
                ));
            }
            sb.header().set_containment_group();
            if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
                tracing::debug!(error = %e, "sd_notify failed");
            }
            let code = run_inline(cfg, &self.hooks, &sb, &listener);
            sb.header().set_supervisor_pid(0);
            if code == 0 {
                Ok(())
            } else {
                Err(Error::Setup(std::io::Error::other("worker loop failed")))
            }
        } else {
            let cgroups = resolve_containment(cfg)?;
            sb.header().set_containment(cgroups.is_some());
            let sup = Supervisor::new(
                cfg,
                &self.hooks,
                &sb,
                &listener,
                cgroups.as_ref(),
                metrics_listener,
            );
            let result = sup.map_err(Error::Setup).map(Supervisor::run);
            if let Some(t) = &cgroups {
                t.remove();
            }
            result.map(|_| ())
        };
        if let Some(p) = pid_file {
            p.remove();
        }
        result
    }
}

/// `--containment`: the cgroup tree when cgroups are used (auto: when they
/// can be; cgroup: or fail), None for the subreaper fallback. Logged with
/// the reason when cgroups are not used.
fn resolve_containment(cfg: &Config) -> Result<Option<CgroupTree>, Error> {
    if cfg.containment == Containment::Subreaper {
        tracing::info!(
            containment = "subreaper",
            "job containment: the worker is its jobs' subreaper"
        );
        return Ok(None);
    }
    let tree = CgroupTree::create();
    match (tree, cfg.containment) {
        (Ok(t), _) => {
            tracing::info!(containment = "cgroup", cgroup = %t.base().display(), "job containment: a cgroup per slot");
            Ok(Some(t))
        }
        (Err(why), Containment::Cgroup) => Err(Error::Containment(why)),
        (Err(why), _) => {
            tracing::info!(containment = "subreaper", why = %why, "job containment: cgroups not usable; the worker is its jobs' subreaper");
            Ok(None)
        }
    }
}

/// `--daemonize`, in the foreground process: waits for the daemon's word;
/// exits 0 when it is up, returns its failure otherwise.
fn foreground_wait(reader: daemon::ReadyReader) -> Result<(), Error> {
    match reader.wait() {
        Ok(Ready::Up { pid }) => {
            tracing::info!(pid, "daemon started");
            // Exit without running destructors: the pid file, the
            // listener and the scoreboard now belong to the daemon.
            std::process::exit(0)
        }
        Ok(Ready::Failed(msg)) => Err(Error::DaemonFailed(msg)),
        Err(e) => Err(Error::DaemonFailed(format!(
            "{e}; see the error log for what happened"
        ))),
    }
}

/// The configuration with every file path made absolute (from the current
/// directory), for a daemon that runs in `/`.
fn absolute_paths(cfg: &Config) -> std::io::Result<Config> {
    fn abs(p: &mut PathBuf) -> std::io::Result<()> {
        if p.is_relative() {
            *p = std::path::absolute(&*p)?;
        }
        Ok(())
    }
    let mut c = cfg.clone();
    if let JobSpec::Handler { program, .. } = &mut c.job {
        abs(program)?;
    }
    for p in [
        &mut c.scoreboard,
        &mut c.pid_file,
        &mut c.error_log,
        &mut c.access_log,
        &mut c.disconnect_hook,
    ]
    .into_iter()
    .flatten()
    {
        abs(p)?;
    }
    Ok(c)
}

/// An error and its causes on one line, as the binary prints them.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
