//! The pid file: created without following symlinks, written atomically,
//! locked (`flock`) for jobd's whole life, removed on a clean exit.
//!
//! Owns the pid file and nothing else; it signals nobody (`jobd ctl` does,
//! after [`read_status`]).
//!
//! How it stays both atomic and locked: [`PidFile::acquire`] opens the path
//! (`O_NOFOLLOW`) and takes an exclusive, non-blocking `flock` on it; a lock
//! held by someone else means a jobd runs (refused, naming its pid). Then
//! each write goes to a temporary file in the same directory, locked before
//! it is written, and `rename`d over the path: a reader never sees a half
//! written pid, and the inode the path names is always a locked one. Every
//! lock is kept for life, the first one included (a jobd starting at the
//! same moment may hold a descriptor of the old inode: that lock is what
//! refuses it). Locks belong to open file descriptions, so they survive
//! `fork`: the daemon's final process (and its workers) keep them.
//!
//! A pid file left unlocked is stale (its jobd died without a clean exit):
//! it is taken over with a warning that names the old pid.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::sys::daemon::{is_locked_by_other, try_lock_exclusive};

/// Errors of the pid file.
#[derive(Debug, thiserror::Error)]
pub enum PidFileError {
    /// Another process holds the lock: a jobd runs with this pid file.
    #[error("jobd is already running ({}): pid file {} is locked", pid_text(*.pid), .path.display())]
    AlreadyRunning {
        /// The pid file.
        path: PathBuf,
        /// The pid it holds (None when it holds no pid).
        pid: Option<i32>,
    },
    /// The path is a symbolic link (never followed).
    #[error("pid file {}: is a symbolic link; refusing to follow it", .path.display())]
    Symlink {
        /// The pid file.
        path: PathBuf,
    },
    /// The path is not a regular file.
    #[error("pid file {}: not a regular file", .path.display())]
    NotAFile {
        /// The pid file.
        path: PathBuf,
    },
    /// The pid file could not be opened or created.
    #[error("failed to open pid file {}", .path.display())]
    Open {
        /// The pid file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The pid file could not be locked.
    #[error("failed to lock pid file {}", .path.display())]
    Lock {
        /// The pid file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The pid could not be written.
    #[error("failed to write pid file {}", .path.display())]
    Write {
        /// The pid file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

fn pid_text(pid: Option<i32>) -> String {
    match pid {
        Some(p) => format!("pid {p}"),
        None => "pid unknown: the file holds no pid".to_string(),
    }
}

/// A pid file held (locked) by this process.
#[derive(Debug)]
pub struct PidFile {
    path: PathBuf,
    /// Every locked description, kept open for life.
    held: Vec<File>,
    /// Device and inode of the file the path names (the last one written).
    current: (u64, u64),
    /// The process that wrote it last: only it removes the file (a forked
    /// child or the foreground of a daemon does not).
    owner: u32,
}

impl PidFile {
    /// Opens or creates `path` (mode 0644, `O_NOFOLLOW | O_CLOEXEC`), locks
    /// it, and writes this process's pid into it atomically.
    ///
    /// Fails with [`PidFileError::AlreadyRunning`] when another process holds
    /// the lock. An unlocked file with a pid in it is stale: it is taken
    /// over with a warning naming the old pid.
    pub fn acquire(path: &Path) -> Result<PidFile, PidFileError> {
        use crate::sys::files::{self, Refused};
        let mut file = files::open_own(
            path,
            files::Want {
                mode: 0o644,
                append: false,
                create: true,
            },
        )
        .map_err(|why| match why {
            Refused::Io(source) => open_error(path, source),
            Refused::Symlink => PidFileError::Symlink { path: path.into() },
            Refused::NotRegular(_) => PidFileError::NotAFile { path: path.into() },
            other => PidFileError::Open {
                path: path.into(),
                source: std::io::Error::other(other.to_string()),
            },
        })?;
        let meta = file.metadata().map_err(|source| open_error(path, source))?;
        let locked = try_lock_exclusive(file.as_fd()).map_err(|source| PidFileError::Lock {
            path: path.into(),
            source,
        })?;
        if !locked {
            // Read through the path: it names the file the running jobd wrote
            // last (the description we hold may be of an older inode).
            let pid = std::fs::read_to_string(path)
                .ok()
                .and_then(|s| parse_pid(&s));
            return Err(PidFileError::AlreadyRunning {
                path: path.into(),
                pid,
            });
        }
        let mut old = String::new();
        let _ = file.read_to_string(&mut old);
        match parse_pid(&old) {
            Some(pid) => tracing::warn!(
                path = %path.display(),
                old_pid = pid,
                "pid file is stale (not locked: pid {pid} exited without removing it); taking it over"
            ),
            None if !old.trim().is_empty() => tracing::warn!(
                path = %path.display(),
                "pid file held no pid and was not locked; taking it over"
            ),
            None => {}
        }
        let mut pf = PidFile {
            path: path.into(),
            current: (meta.dev(), meta.ino()),
            held: vec![file],
            owner: std::process::id(),
        };
        pf.write_pid(std::process::id())?;
        Ok(pf)
    }

    /// An upgrade's new jobd: the pid file is locked by `old`, the
    /// supervisor that started us (checked by the caller: our parent).
    /// Taken over without waiting for its lock: [`PidFile::write_pid`]
    /// puts a new locked file in its place; the old jobd does not remove
    /// a path that no longer names its file.
    pub fn take_over(path: &Path, old: i32) -> Result<PidFile, PidFileError> {
        match PidFile::acquire(path) {
            Err(PidFileError::AlreadyRunning { pid: Some(p), .. }) if p == old => Ok(PidFile {
                path: path.into(),
                current: (0, 0),
                held: Vec::new(),
                owner: std::process::id(),
            }),
            other => other,
        }
    }

    /// Writes `pid` (after daemonizing, the pid changed): a new file in the
    /// same directory, locked, written, then renamed over the path. The
    /// calling process becomes the one that removes the file at exit.
    pub fn write_pid(&mut self, pid: u32) -> Result<(), PidFileError> {
        let write_err = |source| PidFileError::Write {
            path: self.path.clone(),
            source,
        };
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "jobd.pid".into());
        let me = std::process::id();
        let (tmp_path, mut tmp) = (0..100)
            .find_map(|n| {
                let p = dir.join(format!(".{name}.{me}.{n}.tmp"));
                match OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o644)
                    .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                    .open(&p)
                {
                    Ok(f) => Some(Ok((p, f))),
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => None,
                    Err(e) => Some(Err(e)),
                }
            })
            .unwrap_or_else(|| Err(std::io::Error::other("no free temporary file name")))
            .map_err(write_err)?;
        let result = (|| {
            if !try_lock_exclusive(tmp.as_fd())? {
                return Err(std::io::Error::other(
                    "the new temporary file is locked by another process",
                ));
            }
            // The mode is 0644 whatever the umask: `jobd ctl` may run as
            // another user than the daemon.
            tmp.set_permissions(std::fs::Permissions::from_mode(0o644))?;
            tmp.write_all(format!("{pid}\n").as_bytes())?;
            std::fs::rename(&tmp_path, &self.path)?;
            tmp.metadata()
        })();
        match result {
            Ok(meta) => {
                self.current = (meta.dev(), meta.ino());
                self.held.push(tmp);
                self.owner = me;
                Ok(())
            }
            Err(e) => {
                let _ = std::fs::remove_file(&tmp_path);
                Err(write_err(e))
            }
        }
    }

    /// Removes the pid file on a clean exit, when called by the process
    /// that wrote it last and only if the path still names the file it
    /// wrote (someone may have replaced it). Locks go with the process.
    pub fn remove(mut self) {
        self.remove_inner();
    }

    fn remove_inner(&mut self) {
        if self.owner != std::process::id() {
            return;
        }
        self.owner = 0;
        match std::fs::symlink_metadata(&self.path) {
            Ok(m) if (m.dev(), m.ino()) == self.current => {
                if let Err(e) = std::fs::remove_file(&self.path) {
                    tracing::warn!(path = %self.path.display(), error = %e, "failed to remove the pid file");
                }
            }
            Ok(_) if HANDED_OVER.load(std::sync::atomic::Ordering::Relaxed) => tracing::info!(
                path = %self.path.display(),
                "the pid file names the jobd that took over; leaving it"
            ),
            Ok(_) => tracing::warn!(
                path = %self.path.display(),
                "the pid file was replaced by another file; leaving it"
            ),
            Err(_) => {}
        }
    }
}

/// Set once an upgrade handed the service over: the new jobd's pid file
/// in our place is expected, not a warning.
static HANDED_OVER: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// An upgrade handed the service (and the pid file) to a new jobd.
pub(crate) fn handed_over() {
    HANDED_OVER.store(true, std::sync::atomic::Ordering::Relaxed);
}

impl Drop for PidFile {
    /// An error path of the start (a failed bind, say) removes the file
    /// too: it was ours, and nothing runs with it.
    fn drop(&mut self) {
        self.remove_inner();
    }
}

fn open_error(path: &Path, source: std::io::Error) -> PidFileError {
    if source.raw_os_error() == Some(libc::ELOOP) {
        PidFileError::Symlink { path: path.into() }
    } else {
        PidFileError::Open {
            path: path.into(),
            source,
        }
    }
}

/// A pid as written in a pid file: a positive decimal number on one line.
pub fn parse_pid(s: &str) -> Option<i32> {
    s.trim().parse::<i32>().ok().filter(|p| *p > 0)
}

/// What a pid file says about its jobd (for `jobd ctl`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PidStatus {
    /// The file is locked by some process and its pid is alive.
    Running(i32),
    /// Not running: the pid is dead, or nobody holds the file's lock.
    Stale {
        /// The pid in the file.
        pid: i32,
        /// Whether some process still holds the lock (workers of a jobd
        /// that died may hold it until they exit too).
        locked: bool,
        /// Whether the pid is alive (then it is not the file's jobd).
        alive: bool,
    },
    /// No such file.
    Missing,
    /// The file holds no pid.
    Garbage,
}

/// Reads the pid file at `path` without taking it (a shared lock probe on
/// a descriptor of our own, released at once).
pub fn read_status(path: &Path) -> std::io::Result<PidStatus> {
    let mut f = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(PidStatus::Missing),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(std::io::Error::other(
                "is a symbolic link; refusing to follow it",
            ));
        }
        Err(e) => return Err(e),
    };
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let mut s = String::new();
    if f.read_to_string(&mut s).is_err() {
        return Ok(PidStatus::Garbage);
    }
    let Some(pid) = parse_pid(&s) else {
        return Ok(PidStatus::Garbage);
    };
    let locked = is_locked_by_other(f.as_fd())?;
    drop(f);
    let alive = pid_alive(pid);
    Ok(if locked && alive {
        PidStatus::Running(pid)
    } else {
        PidStatus::Stale { pid, locked, alive }
    })
}

/// Whether `pid` names a live (not zombie) process.
pub fn pid_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.chars().next())
            .is_some_and(|state| state != 'Z' && state != 'X'),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp() -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix("jobd-pf-")
            .tempdir()
            .unwrap()
    }

    #[test]
    fn acquire_write_read_remove() {
        let d = tmp();
        let p = d.path().join("j.pid");
        let pf = PidFile::acquire(&p).unwrap();
        let me = std::process::id() as i32;
        assert_eq!(std::fs::read_to_string(&p).unwrap(), format!("{me}\n"));
        // Held by a description of this process: the probe sees it locked.
        assert_eq!(read_status(&p).unwrap(), PidStatus::Running(me));
        // A second acquire (another description) is refused, naming the pid.
        match PidFile::acquire(&p) {
            Err(PidFileError::AlreadyRunning { pid, .. }) => assert_eq!(pid, Some(me)),
            other => panic!("{other:?}"),
        }
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
        pf.remove();
        assert!(!p.exists());
        assert_eq!(read_status(&p).unwrap(), PidStatus::Missing);
    }

    #[test]
    fn stale_and_garbage() {
        let d = tmp();
        let p = d.path().join("j.pid");
        std::fs::write(&p, "hello\n").unwrap();
        assert_eq!(read_status(&p).unwrap(), PidStatus::Garbage);
        std::fs::write(&p, format!("{}\n", std::process::id())).unwrap();
        assert!(matches!(
            read_status(&p).unwrap(),
            PidStatus::Stale {
                locked: false,
                alive: true,
                ..
            }
        ));
        let pf = PidFile::acquire(&p).unwrap();
        drop(pf);
        assert!(!p.exists(), "dropped by its owner: removed");
    }

    #[test]
    fn symlink_is_refused() {
        let d = tmp();
        let target = d.path().join("target");
        std::fs::write(&target, "").unwrap();
        let p = d.path().join("j.pid");
        std::os::unix::fs::symlink(&target, &p).unwrap();
        assert!(matches!(
            PidFile::acquire(&p),
            Err(PidFileError::Symlink { .. })
        ));
        assert!(read_status(&p).is_err());
    }

    #[test]
    fn replaced_file_is_not_removed() {
        let d = tmp();
        let p = d.path().join("j.pid");
        let pf = PidFile::acquire(&p).unwrap();
        std::fs::remove_file(&p).unwrap();
        std::fs::write(&p, "1\n").unwrap();
        pf.remove();
        assert!(p.exists());
    }
}
