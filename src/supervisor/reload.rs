//! SUPERVISOR ONLY: reloading. SIGHUP, and `--reload-check-every` (the
//! handler file and jobd's executable, or the library's
//! `auto_reload_handler`), replace each worker once it is idle.
//!
//! This file only decides that a reload is due; the supervisor asks the
//! workers to retire and the pool forks their successors.

use std::time::{Duration, Instant};

use crate::config::{Config, JobSpec};
use crate::hooks::Hooks;

/// What a file looked like, for `--reload-check-every`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileSig {
    mtime_ns: i128,
    size: u64,
    ino: u64,
    dev: u64,
}

fn file_sig(path: &std::path::Path) -> Option<FileSig> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some(FileSig {
        mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
        size: m.size(),
        ino: m.ino(),
        dev: m.dev(),
    })
}

/// `--reload-check-every`: the handler file and jobd's own executable.
pub(super) struct ReloadWatch {
    every: Duration,
    next: Instant,
    files: Vec<(std::path::PathBuf, Option<FileSig>)>,
}

impl ReloadWatch {
    /// The watch of `--reload-check-every`, if set.
    pub(super) fn new(cfg: &Config, hooks: &Hooks) -> Option<ReloadWatch> {
        cfg.reload_check_every.map(|every| {
            let mut files = Vec::new();
            if hooks.auto_reload.is_none() {
                if let JobSpec::Handler { program, .. } = &cfg.job {
                    files.push(program.clone());
                }
                if let Ok(exe) = std::fs::read_link("/proc/self/exe") {
                    files.push(exe);
                }
            }
            ReloadWatch {
                every,
                next: Instant::now() + every,
                files: files
                    .into_iter()
                    .map(|f| {
                        let sig = file_sig(&f);
                        (f, sig)
                    })
                    .collect(),
            }
        })
    }
}

impl ReloadWatch {
    /// When the next check is due.
    pub(super) fn next_due(&self) -> Instant {
        self.next
    }

    /// At most once per `every`: whether a reload is wanted (the library's
    /// `auto_reload_handler` says so, or a watched file changed).
    pub(super) fn check(&mut self, now: Instant, hooks: &Hooks) -> bool {
        if now < self.next {
            return false;
        }
        self.next = now + self.every;
        match &hooks.auto_reload {
            Some(f) => match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
                Ok(v) => v,
                Err(_) => {
                    tracing::error!("auto_reload_handler panicked; not reloading");
                    false
                }
            },
            None => {
                let mut changed = false;
                for (path, sig) in &mut self.files {
                    let now_sig = file_sig(path);
                    if now_sig != *sig {
                        tracing::info!(file = %path.display(), "file changed");
                        *sig = now_sig;
                        changed = true;
                    }
                }
                changed
            }
        }
    }
}
