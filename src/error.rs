//! [`Error`]: what [`crate::Server::run`] can fail with, and the exit status
//! the command uses for each (2 for usage and configuration, 1 otherwise).
//!
//! Plain data over the per-module error enums; nothing here runs.

use std::net::SocketAddr;

use crate::config::ConfigError;
use crate::logfiles::LogError;
use crate::pidfile::PidFileError;
use crate::scoreboard::ScoreboardError;

/// Errors of [`crate::Server::run`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is invalid (exit status 2).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The listen address could not be bound (exit status 1).
    #[error("failed to listen on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The scoreboard could not be created.
    #[error(transparent)]
    Scoreboard(#[from] ScoreboardError),
    /// The process has threads, so it must not fork.
    #[error("jobd must fork before any thread exists, but this process has {0} threads")]
    Threaded(usize),
    /// A system call the supervisor needs failed.
    #[error("failed to set up the supervisor")]
    Setup(#[source] std::io::Error),
    /// The pid file could not be taken (another jobd runs with it, or it
    /// cannot be written).
    #[error(transparent)]
    PidFile(#[from] PidFileError),
    /// A log file could not be opened.
    #[error(transparent)]
    Logs(#[from] LogError),
    /// `--daemonize`: the detach itself failed (in the foreground process).
    #[error("failed to daemonize")]
    Daemonize(#[source] std::io::Error),
    /// `--daemonize`: the daemon reported that it failed to start (the
    /// foreground process returns this; the daemon logged it too).
    #[error("the daemon failed to start: {0}")]
    DaemonFailed(String),
    /// `--containment cgroup`, and cgroups are not usable here (exit 2).
    #[error("--containment cgroup: {0}")]
    Containment(String),
    /// `--user` / `--group`: the privileges could not be dropped.
    #[error("failed to switch to user {user} and group {group}")]
    Privileges {
        /// The user name.
        user: String,
        /// The group name (or the user's primary group id).
        group: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// The exit status the command uses for this error: 2 for usage and
    /// configuration errors, 1 otherwise.
    ///
    /// Whatever jobd can tell is wrong with its input is a configuration
    /// error: a path it refuses or cannot open for its logs, scoreboard or
    /// pid file, an address no interface has, a port it may not bind, an
    /// unknown user. What depends on the moment is a runtime failure: an
    /// address or a pid file or scoreboard that another process holds.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Config(_) | Error::Containment(_) => 2,
            Error::Logs(LogError::Open { .. }) => 2,
            Error::Scoreboard(ScoreboardError::Refused { .. } | ScoreboardError::Create { .. }) => {
                2
            }
            Error::PidFile(
                PidFileError::Symlink { .. }
                | PidFileError::NotAFile { .. }
                | PidFileError::Open { .. },
            ) => 2,
            Error::Bind { source, .. } => match source.raw_os_error() {
                Some(
                    libc::EADDRNOTAVAIL
                    | libc::EACCES
                    | libc::EINVAL
                    | libc::EAFNOSUPPORT
                    | libc::ENODEV,
                ) => 2,
                _ => 1,
            },
            _ => 1,
        }
    }
}
