//! # jobd: a connection-aware prefork job server
//!
//! jobd runs one long job per TCP client and cancels it the moment the
//! client goes away.
//!
//! ## Process model
//!
//! A supervisor (one process, one thread, a poll loop) binds the listening
//! socket, creates the scoreboard, and forks `prefork` workers into
//! scoreboard slots, keeping a pidfd for each. Each worker accepts one client
//! at a time and runs one job for it: a handler program with the connection
//! as its stdin and stdout (the inetd / tcpserver convention), in a process
//! group of its own, or a Rust closure given through [`ServerBuilder::job_fn`].
//! A worker that dies is reaped and replaced in the same slot, with a
//! growing delay when workers keep dying young. Workers die with the
//! supervisor (`PR_SET_PDEATHSIG`); when a worker dies, the supervisor (the
//! subreaper of its job trees) finds the orphaned handler among its own
//! children and kills its process group.
//! Handlers are spawned with `posix_spawn` (no fork of the worker).
//! With `prefork = 0`, the calling process serves handler jobs one at a
//! time itself and runs the same disconnect watch (detection, hooks, job
//! timeout) between the polls of its job loop; a closure job needs
//! `prefork >= 1`.
//!
//! The supervisor never runs job code and never signals a pid it read from
//! the scoreboard: it signals its workers through pidfds, and a job's process
//! group only while the group's leader is an unreaped child (a zombie keeps
//! the group id from being reused).
//!
//! ## Signals (to the supervisor)
//!
//! - `SIGTERM`: stop accepting, let running jobs finish within the grace
//!   period (`--grace`, 30 s), then kill them; exit 0.
//! - `SIGINT`:  kill every job now and exit 0.
//! - `SIGHUP`:  reload: check the handler again and replace each worker once
//!   it is idle (running jobs finish in their old worker).
//! - `SIGTTIN` / `SIGTTOU`: one worker more / less (gunicorn).
//! - `SIGUSR1`: reopen the error and access logs (logrotate).
//!
//! ## Pool
//!
//! The pool starts with `prefork` workers. Every maintenance tick (250 ms),
//! when no worker is idle it forks more, doubling the number per tick up to
//! 32 (Apache prefork) and never past `max_children`; at the cap, clients
//! wait in the listen queue and `max children reached` is logged once per
//! episode. Workers idle longer than `idle_timeout` are retired, one per
//! tick, down to `prefork`. A worker exits after `max_requests_per_child`
//! jobs (plus jitter) and is replaced, never in the middle of a job.
//!
//! ## Disconnects
//!
//! Each worker records its client's socket (cookie, inode, addresses) in
//! its slot. Every `check_interval` the supervisor lists the listener's TCP
//! sockets through sock_diag netlink (or `/proc/net/tcp`), and a job whose
//! socket is in CLOSE_WAIT (the client sent a FIN) or gone (reset) lost its
//! client; while a handler runs, its worker also polls the socket and wakes
//! the supervisor at once. The `on_client_disconnect` hooks decide (cancel
//! by default), once per job. Cancelling sends SIGTERM to the job's process
//! group, then SIGKILL after `kill_grace`.
//!
//! ## Handler contract
//!
//! The handler is executed directly (no shell) with the client connection on
//! fds 0 and 1, jobd's stderr on fd 2, and the tcpserver environment:
//! `PROTO` (`TCP` or `TCP6`), `TCPLOCALIP`, `TCPLOCALPORT`, `TCPREMOTEIP`,
//! `TCPREMOTEPORT`, plus `JOBD_JOB_ID` and `JOBD_SLOT`. When the handler
//! exits, whatever is left in its process group is killed, and so is what it
//! moved out of its group: with [`Containment::Cgroup`] every process of the
//! worker's job cgroup but the worker, else every child the worker (the
//! job's subreaper) adopted. A job's processes do not outlive it. Its CPU
//! time and peak memory go into the job-end record; `--job-limit` rlimits
//! are set in the handler before it runs.
//!
//! ## Layout
//!
//! One module per process role, pure logic apart, every `unsafe` in `sys/`;
//! a module below never imports one above it.
//!
//! | module | owns |
//! |---|---|
//! | [`server`] | the builder and [`Server::run`]: the start-up phases |
//! | [`config`] | the validated [`Config`] (no CLI types) |
//! | [`hooks`] | the hook types and events given to library users |
//! | `supervisor/` | SUPERVISOR ONLY: the poll loop and its phases, its children (fork, reap, what a dead worker means), the pool rules, reload checks |
//! | `worker/` | WORKER ONLY: a worker's life (and the `prefork = 0` process), its signals, one job from accept to its end record |
//! | `watch/` | disconnect detection, verdicts and cancellation, in the supervisor or the `prefork = 0` process, reaching processes only through a `Workers` boundary |
//! | `scoreboard` | the shared slots and the typed supervisor↔worker protocol |
//! | `job_end` | the one end record of a job: counters, the `job ended` line, the access log |
//! | `cgroup` | the cgroup v2 tree of job containment: slots, job cgroups, cleanup |
//! | `spawn`, `net`, `logfiles`, `pidfile` | posix_spawn of handlers and hook programs; the listener; log files; the pid file |
//! | [`detect`] | socket tables (sock_diag, procfs) behind one trait, and the pure diff |
//! | [`control`] | `jobd ctl` and `jobd status`, the processes that talk to a running jobd |
//! | `sys/` | every `unsafe`: fork, pidfds, the shared mapping, signals, daemonizing |
//!
//! ## Library example
//!
//! ```no_run
//! use std::io::{BufRead, BufReader, Write};
//!
//! jobd::Server::builder()
//!     .listen("127.0.0.1:0".parse().unwrap())
//!     .prefork(2)
//!     .after_init(|info| eprintln!("bound {}", info.local_addr))
//!     .job_fn(|conn, ctx| {
//!         let mut line = String::new();
//!         BufReader::new(&conn).read_line(&mut line)?;
//!         writeln!(&conn, "{}", line.trim().to_uppercase())?;
//!         eprintln!("job {} for {} done", ctx.job_id, ctx.peer);
//!         Ok(())
//!     })
//!     .build()
//!     .unwrap()
//!     .run()
//!     .unwrap();
//! ```
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]

mod cgroup;
pub mod config;
pub mod control;
pub mod detect;
mod episode;
mod error;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod hooks;
mod job_end;
mod logfiles;
mod net;
mod pidfile;
mod proxy;
mod scoreboard;
pub mod server;
mod spawn;
mod supervisor;
mod sys;
mod watch;
mod worker;

pub use control::status;

pub use config::{
    Config, ConfigError, Containment, DetectorKind, DisconnectPolicy, FinPolicy, JobSpec, LogFormat,
};
pub use error::Error;
pub use hooks::{DisconnectEvent, DisconnectReason, InitInfo, JobContext, Verdict};
pub use logfiles::{LogError, LossyStderr};
pub use pidfile::PidFileError;
pub use scoreboard::{ScoreboardError, SlotState};
pub use server::{Server, ServerBuilder};
pub use sys::cloexec_inherited;
