//! The error log and the access log, and their reopening on SIGUSR1.
//!
//! Owns two process-wide descriptors, set in the supervisor before it forks
//! (workers inherit them):
//!
//! - `--error-log PATH`: the file is put on fd 2, so that jobd's own log
//!   (tracing writes to stderr) and the handlers' stderr go there.
//! - `--access-log PATH`: one line per ended job, written with a single
//!   `write` to a descriptor opened `O_APPEND`, so that lines from several
//!   workers never interleave. Text lines are `key=value` pairs as in
//!   jobd's log; with `--log-format json`, one JSON object per line. Fields:
//!   `time` (RFC 3339, UTC, milliseconds), `job`, `slot`, `pid`, `peer`,
//!   `duration_ms`, `outcome`, `status`.
//!
//! [`reopen`] opens both paths again and `dup`s the new files onto the same
//! descriptor numbers (fd 2 and the access log's), so that every holder of
//! those numbers writes to the new files: logrotate's `mv` followed by
//! SIGUSR1, sent to the supervisor and passed on to the workers, each of
//! which calls [`reopen`] itself. Handlers that are already running keep the
//! old stderr until they exit. Files are created with mode 0640, owned by
//! jobd's user (`--user` changes only the handlers' user).
//!
//! It touches no other descriptor and writes nothing but these two files.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::config::LogFormat;
use crate::sys::daemon::{redirect_stderr as dup_onto_stderr, replace_fd};
use crate::sys::files::{self, Refused};

/// A writer to fd 2 that never fails and never panics: jobd's own log
/// goes through it, so a full disk under `--error-log`, a closed pipe
/// (`jobd 2>&1 | head -1`) or `/dev/full` cannot take the service down.
/// A write that fails is dropped and counted; the first line written
/// after an episode of failures says how many were lost and why, so each
/// episode is reported once, where it can be. Use it as the tracing
/// writer: `tracing_subscriber::fmt().with_writer(|| LossyStderr)` (with
/// `log_internal_errors(false)`, whose own report is an `eprintln!`,
/// which panics on such a stderr).
#[derive(Debug, Clone, Copy, Default)]
pub struct LossyStderr;

/// Writes lost since the last one that succeeded, and the last error.
static LOST: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static LOST_ERRNO: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

impl LossyStderr {
    /// Log writes this process lost since its last successful one.
    pub fn lost() -> u64 {
        LOST.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn write_once(buf: &[u8]) -> io::Result<()> {
        let mut rest = buf;
        while !rest.is_empty() {
            match rustix::io::write(std::io::stderr().as_fd(), rest) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => rest = &rest[n..],
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

impl io::Write for LossyStderr {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        use std::sync::atomic::Ordering::Relaxed;
        let lost = LOST.load(Relaxed);
        if lost > 0 {
            let why = io::Error::from_raw_os_error(LOST_ERRNO.load(Relaxed));
            let note = format!(
                "jobd: {lost} log line(s) of pid {} were lost: writing stderr failed: {why}\n",
                std::process::id()
            );
            if Self::write_once(note.as_bytes()).is_ok() {
                LOST.store(0, Relaxed);
            }
        }
        if let Err(e) = Self::write_once(buf) {
            LOST.fetch_add(1, Relaxed);
            LOST_ERRNO.store(e.raw_os_error().unwrap_or(0), Relaxed);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// One access log record: a job that ended.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AccessRecord<'a> {
    /// Job id.
    #[serde(rename = "job")]
    pub job_id: u64,
    /// Worker slot.
    pub slot: usize,
    /// Worker pid.
    pub pid: u32,
    /// Client address.
    pub peer: &'a str,
    /// The balancer's address, behind `--proxy-protocol`.
    pub proxy_peer: Option<String>,
    /// How long the job ran.
    pub duration_ms: u64,
    /// done, failed, cancelled or timeout.
    pub outcome: &'a str,
    /// Why it was cancelled or failed (`client-closed`, `timeout`,
    /// `worker-died`...); none for a job that ran to its end by itself.
    pub reason: Option<&'a str>,
    /// Exit status or signal, readable (`exit 0`, `signal SIGTERM`).
    pub status: &'a str,
    /// The handler's exit code, when it exited.
    pub exit_code: Option<i32>,
    /// The signal that killed the handler, when one did.
    pub signal: Option<&'a str>,
    /// Data bytes sent to the client (`TCP_INFO`), when known.
    pub bytes_sent: Option<u64>,
    /// Data bytes the client acknowledged, when known.
    pub bytes_acked: Option<u64>,
    /// When the client closed during a job that went on to its end: ms
    /// from the job's start.
    pub client_closed_after_ms: Option<u64>,
    /// For a job cancelled on a disconnect: from the hang-up to its
    /// detection, ms.
    pub seen_after_ms: Option<f64>,
    /// User CPU time of the job's processes, ms.
    pub cpu_user_ms: Option<u64>,
    /// System CPU time of the job's processes, ms.
    pub cpu_sys_ms: Option<u64>,
    /// Peak resident memory of the job's largest process, KiB.
    pub max_rss_kib: Option<u64>,
}

/// Errors of opening the logs.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// A log file could not be opened or created.
    #[error("failed to open {flag} {}", .path.display())]
    Open {
        /// The flag (`--error-log`, `--access-log`).
        flag: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: Refused,
    },
    /// The error log could not be put on fd 2.
    #[error("failed to redirect stderr to --error-log {}", .path.display())]
    Redirect {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

struct AccessLog {
    path: PathBuf,
    fd: OwnedFd,
}

struct State {
    error_log: Option<PathBuf>,
    access: Option<AccessLog>,
    format: LogFormat,
    /// Writing the access log failing (a full disk): one line per
    /// episode.
    access_fault: crate::episode::Episode,
}

/// The process-wide log state. jobd's processes are single-threaded (the
/// lock is never held across `fork`); the mutex only makes it a safe global.
static STATE: Mutex<State> = Mutex::new(State {
    error_log: None,
    access: None,
    format: LogFormat::Text,
    access_fault: crate::episode::Episode::new("writing the access log"),
});

fn state() -> std::sync::MutexGuard<'static, State> {
    STATE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Opens (or creates, mode 0640) a log for appending: never through a
/// symlink, never a FIFO or device, only jobd's own file (see
/// [`crate::sys::files`]).
fn open_append(path: &Path) -> Result<File, Refused> {
    files::open_own(
        path,
        files::Want {
            mode: 0o640,
            append: true,
            create: true,
        },
    )
}

/// The opened error log, to be put on fd 2 with [`ErrorLog::redirect_stderr`]
/// (or handed to the daemonizing code, which does it in the daemon).
#[derive(Debug)]
pub struct ErrorLog {
    path: PathBuf,
    file: File,
}

impl ErrorLog {
    /// Points fd 2 at the error log.
    pub fn redirect_stderr(&self) -> Result<(), LogError> {
        dup_onto_stderr(self.file.as_fd()).map_err(|source| LogError::Redirect {
            path: self.path.clone(),
            source,
        })
    }

    /// The open file.
    pub fn file(&self) -> &File {
        &self.file
    }
}

/// Opens the logs of this process: the access log becomes the process-wide
/// access descriptor (inherited by workers forked later), and the error log
/// is returned for the caller to put on fd 2 when it is time (the
/// foreground of `--daemonize` keeps its terminal until the daemon is up).
pub fn open(
    error_log: Option<&Path>,
    access_log: Option<&Path>,
    format: LogFormat,
) -> Result<Option<ErrorLog>, LogError> {
    let err = match error_log {
        Some(p) => Some(ErrorLog {
            path: p.to_path_buf(),
            file: open_append(p).map_err(|source| LogError::Open {
                flag: "--error-log",
                path: p.to_path_buf(),
                source,
            })?,
        }),
        None => None,
    };
    let access = match access_log {
        Some(p) => Some(AccessLog {
            path: p.to_path_buf(),
            fd: open_append(p)
                .map_err(|source| LogError::Open {
                    flag: "--access-log",
                    path: p.to_path_buf(),
                    source,
                })?
                .into(),
        }),
        None => None,
    };
    let mut st = state();
    st.error_log = error_log.map(Path::to_path_buf);
    st.access = access;
    st.format = format;
    Ok(err)
}

/// Appends one line to the access log, when there is one. A failed write
/// (a full disk) is logged once per episode of failures, with the count
/// when writes work again, and otherwise ignored: it never fails a job.
pub fn access(rec: &AccessRecord<'_>) {
    let mut guard = state();
    let st = &mut *guard;
    let Some(log) = &st.access else {
        return;
    };
    let time = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
    let line = format_line(&time, rec, st.format);
    // One write: O_APPEND makes it land whole at the end of the file.
    let r = match nix::unistd::write(log.fd.as_fd(), line.as_bytes()) {
        Ok(n) if n == line.len() => Ok(()),
        Ok(n) => Err(io::Error::other(format!(
            "short write ({n} of {} bytes)",
            line.len()
        ))),
        Err(e) => Err(io::Error::from(e)),
    };
    match r {
        Ok(()) => st.access_fault.ok(None),
        Err(e) => {
            let e = io::Error::new(e.kind(), format!("{}: {e}", log.path.display()));
            st.access_fault.failed(Some(rec.slot), &e);
        }
    }
}

/// Formats one access log line (with its newline).
fn format_line(time: &str, rec: &AccessRecord<'_>, format: LogFormat) -> String {
    match format {
        LogFormat::Json => {
            #[derive(serde::Serialize)]
            struct Line<'a> {
                time: &'a str,
                #[serde(flatten)]
                rec: &'a AccessRecord<'a>,
            }
            let mut s = serde_json::to_string(&Line { time, rec })
                .unwrap_or_else(|e| format!("{{\"error\":{:?}}}", e.to_string()));
            s.push('\n');
            s
        }
        LogFormat::Text => format!(
            "time={} job={} slot={} pid={} peer={} proxy_peer={} duration_ms={} outcome={} reason={} status={} exit_code={} signal={} bytes_sent={} bytes_acked={} client_closed_after_ms={} seen_after_ms={} cpu_user_ms={} cpu_sys_ms={} max_rss_kib={}\n",
            time,
            rec.job_id,
            rec.slot,
            rec.pid,
            text_value(rec.peer),
            text_value(rec.proxy_peer.as_deref().unwrap_or("-")),
            rec.duration_ms,
            text_value(rec.outcome),
            text_value(rec.reason.unwrap_or("-")),
            text_value(rec.status),
            dash(rec.exit_code),
            text_value(rec.signal.unwrap_or("-")),
            dash(rec.bytes_sent),
            dash(rec.bytes_acked),
            dash(rec.client_closed_after_ms),
            rec.seen_after_ms
                .map_or_else(|| "-".to_string(), |ms| format!("{ms:.1}")),
            dash(rec.cpu_user_ms),
            dash(rec.cpu_sys_ms),
            dash(rec.max_rss_kib),
        ),
    }
}

/// A number, or `-` when unknown.
fn dash<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

/// A text value as tracing's text lines show it: bare when it is one plain
/// word, quoted and escaped otherwise.
fn text_value(v: &str) -> String {
    let plain = !v.is_empty()
        && v.chars()
            .all(|c| c.is_ascii_graphic() && c != '"' && c != '=' && c != '\\');
    if plain {
        v.to_string()
    } else {
        format!("{v:?}")
    }
}

fn to_io(e: Refused) -> io::Error {
    match e {
        Refused::Io(e) => e,
        other => io::Error::other(other.to_string()),
    }
}

/// Reopens the error log and the access log of this process (SIGUSR1): the
/// paths are opened again (created when logrotate moved them away) and put
/// on the same descriptor numbers. Both are attempted; the first failure is
/// returned, naming the path, and that log keeps its old file.
pub fn reopen() -> io::Result<()> {
    let mut st = state();
    let mut first: Option<io::Error> = None;
    let mut fail = |path: &Path, e: io::Error| {
        if first.is_none() {
            first = Some(io::Error::new(
                e.kind(),
                format!("failed to reopen {}: {e}", path.display()),
            ));
        }
    };
    if let Some(p) = st.error_log.clone() {
        match open_append(&p) {
            Ok(f) => {
                if let Err(e) = dup_onto_stderr(f.as_fd()) {
                    fail(&p, e);
                }
            }
            Err(e) => fail(&p, to_io(e)),
        }
    }
    if let Some(log) = st.access.as_mut() {
        match open_append(&log.path) {
            Ok(f) => {
                if let Err(e) = replace_fd(f.as_fd(), &mut log.fd) {
                    fail(&log.path, e);
                }
            }
            Err(e) => fail(&log.path, to_io(e)),
        }
    }
    match first {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec() -> AccessRecord<'static> {
        AccessRecord {
            job_id: 7,
            slot: 1,
            pid: 4242,
            peer: "127.0.0.1:5555",
            proxy_peer: None,
            duration_ms: 12,
            outcome: "cancelled",
            reason: Some("client-closed"),
            status: "signal SIGTERM",
            exit_code: None,
            signal: Some("SIGTERM"),
            bytes_sent: Some(120),
            bytes_acked: Some(100),
            client_closed_after_ms: None,
            seen_after_ms: Some(1.25),
            cpu_user_ms: Some(3),
            cpu_sys_ms: Some(1),
            max_rss_kib: None,
        }
    }

    #[test]
    fn text_line() {
        let l = format_line("2026-01-02T03:04:05.678Z", &rec(), LogFormat::Text);
        assert_eq!(
            l,
            "time=2026-01-02T03:04:05.678Z job=7 slot=1 pid=4242 peer=127.0.0.1:5555 \
             proxy_peer=- duration_ms=12 outcome=cancelled reason=client-closed status=\"signal SIGTERM\" \
             exit_code=- signal=SIGTERM bytes_sent=120 bytes_acked=100 client_closed_after_ms=- seen_after_ms=1.2 cpu_user_ms=3 cpu_sys_ms=1 \
             max_rss_kib=-\n"
        );
        assert_eq!(text_value(""), "\"\"");
        assert_eq!(text_value("[::1]:80"), "[::1]:80");
    }

    #[test]
    fn json_line() {
        let l = format_line("2026-01-02T03:04:05.678Z", &rec(), LogFormat::Json);
        assert!(l.ends_with('\n') && !l[..l.len() - 1].contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&l).unwrap();
        assert_eq!(v["time"], "2026-01-02T03:04:05.678Z");
        assert_eq!(v["job"], 7);
        assert_eq!(v["slot"], 1);
        assert_eq!(v["pid"], 4242);
        assert_eq!(v["peer"], "127.0.0.1:5555");
        assert_eq!(v["duration_ms"], 12);
        assert_eq!(v["outcome"], "cancelled");
        assert_eq!(v["status"], "signal SIGTERM");
        assert_eq!(v["reason"], "client-closed");
        assert_eq!(v["exit_code"], serde_json::Value::Null);
        assert_eq!(v["signal"], "SIGTERM");
    }

    /// The only test of this binary that touches the process-wide state.
    #[test]
    fn access_lines_and_reopen_after_rename() {
        let d = tempfile::Builder::new()
            .prefix("jobd-logs-")
            .tempdir()
            .unwrap();
        let live = d.path().join("access.log");
        let rotated = d.path().join("access.log.1");
        assert!(open(None, Some(&live), LogFormat::Text).unwrap().is_none());
        access(&rec());
        std::fs::rename(&live, &rotated).unwrap();
        access(&rec()); // still the old file until reopen
        reopen().unwrap();
        access(&rec());
        let old = std::fs::read_to_string(&rotated).unwrap();
        let new = std::fs::read_to_string(&live).unwrap();
        assert_eq!(old.lines().count(), 2, "{old}");
        assert_eq!(new.lines().count(), 1, "{new}");
        assert!(new.starts_with("time=") && new.contains(" job=7 "), "{new}");
        open(None, None, LogFormat::Text).unwrap();
        access(&rec()); // no access log: a no-op
        assert_eq!(std::fs::read_to_string(&live).unwrap(), new);
    }

    #[test]
    fn time_is_rfc3339_utc_with_millis() {
        let t = humantime::format_rfc3339_millis(std::time::SystemTime::UNIX_EPOCH).to_string();
        assert_eq!(t, "1970-01-01T00:00:00.000Z");
    }
}
