//! `jobd ctl`: controls a running jobd through its pid file (Proc::Launcher's
//! is_running / stop / restart / force_stop, with locking).
//!
//! Owns nothing of a running jobd: it reads the pid file, checks it, and
//! signals only the pid of a *locked* pid file whose process holds that
//! file open (a jobd keeps its pid file open and locked for life) or, when
//! its `/proc/<pid>/fd` cannot be read (another user), whose command line
//! is a jobd's. The check is made again after a pidfd is opened on the
//! process, and every signal goes through that pidfd, so a recycled pid is
//! never hit.
//!
//! | verb | does | exit status |
//! |---|---|---|
//! | `status` | prints `jobd is running (pid N)` or `jobd is not running (why)` | 0 running, 3 not running (no pid file, or a stale one), 4 unknown (the file holds no pid, names a process that is not a jobd, or cannot be read) |
//! | `stop` | SIGTERM, then waits (pidfd, no polling loop) until the process is gone, at most `--timeout` | 0 stopped or not running, 1 timeout or failure |
//! | `reload` | SIGHUP (workers are replaced once idle) | 0 sent, 7 not running, 1 failure |
//! | `restart` | stop, then start again with the same arguments | the new `jobd`'s status; 7 not running and no arguments given, 2 arguments unusable, 1 failure |
//! | `force-stop` | SIGKILL to the supervisor, every process of its tree and the job process groups | 0 killed or not running, 1 failure |
//!
//! Not running is a success for `stop` and `force-stop` (LSB: stopping a
//! stopped service succeeds); the message still says why (no pid file,
//! stale pid file). A stale pid file is left in place: the next jobd takes
//! it over.
//!
//! **How restart knows the arguments.** Before stopping, it reads the
//! running supervisor's command line from `/proc/<pid>/cmdline`; arguments
//! given after `--` (`jobd ctl restart --pid-file P -- --daemonize ...`)
//! replace them. The new jobd is this executable, run with those arguments
//! from the current directory of `jobd ctl restart`: **relative paths in
//! them are resolved from that directory**, not from the one the old jobd
//! was started in. The arguments must include `--daemonize` (a foreground
//! jobd belongs to the service manager that started it); they are checked
//! before anything is stopped.
//!
//! **force-stop** lists the supervisor's descendants from `/proc/*/stat`
//! (by parent pid; job processes that were orphaned are reparented to the
//! supervisor, a child subreaper, and so belong to the tree), opens a pidfd
//! on each (checking its start time, so a pid recycled meanwhile is not
//! taken), SIGKILLs the supervisor first so that nothing is respawned, then
//! the job process groups and every descendant, and waits until all are
//! gone.

use std::collections::{BTreeSet, HashMap};
use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::pidfile::{PidStatus, read_status};
use crate::sys::PidFd;

/// LSB: the program is not running (status).
const NOT_RUNNING_STATUS: i32 = 3;
/// LSB: status unknown.
const UNKNOWN: i32 = 4;
/// LSB: the program is not running (other actions).
const NOT_RUNNING: i32 = 7;

/// A `jobd ctl` verb (Proc::Launcher's start / stop / restart / is_running /
/// force_stop).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    /// Exit 0 and print the pid when running, exit 3 when not (LSB).
    Status,
    /// SIGTERM, then wait until the pid is gone (bounded by the timeout).
    Stop,
    /// SIGHUP: replace workers once idle.
    Reload,
    /// Stop, then start again with the same arguments, or with `args`.
    Restart,
    /// SIGKILL the supervisor, its workers and their job process trees.
    ForceStop,
    /// SIGUSR2: the supervisor starts the jobd executable again with the
    /// listening socket inherited, and drains once the new one serves;
    /// waits until the pid file names the new supervisor.
    Upgrade,
}

/// One `jobd ctl` request.
#[derive(Debug, Clone)]
pub struct Request {
    /// What to do.
    pub verb: Verb,
    /// The pid file the jobd was started with.
    pub pid_file: PathBuf,
    /// How long stop (and restart's stop) waits for the daemon to exit.
    pub timeout: Duration,
    /// restart: start with these arguments instead of the running ones.
    pub args: Vec<OsString>,
}

/// Checks the arguments restart would start jobd with; `Err` says why
/// they are unusable (the command parses them as its own arguments).
pub type StartArgsCheck<'a> = &'a dyn Fn(&[OsString]) -> Result<(), String>;

/// Runs one `jobd ctl` verb and prints its outcome; returns the exit code
/// (see the table above). `check_start` vets restart's arguments before
/// anything is stopped.
pub fn run(req: &Request, check_start: StartArgsCheck<'_>) -> i32 {
    let args = req;
    let path = args.pid_file.as_path();
    match args.verb {
        Verb::Status => status(path),
        Verb::Stop => match find(path) {
            Found::Running(j) => match stop(&j, args.timeout) {
                Ok(()) => 0,
                Err(e) => fail("stop", &e),
            },
            Found::NotRunning(why) => {
                println!("jobd is not running ({why}); nothing to stop");
                0
            }
            Found::Unknown(why) => fail("stop", &why),
        },
        Verb::Reload => match find(path) {
            Found::Running(j) => match j.signal(Signal::SIGHUP) {
                Ok(()) => {
                    println!(
                        "jobd (pid {}) is reloading: workers are replaced once idle",
                        j.pid
                    );
                    0
                }
                Err(e) => fail("reload", &e),
            },
            Found::NotRunning(why) => {
                eprintln!("jobd ctl reload: jobd is not running ({why})");
                NOT_RUNNING
            }
            Found::Unknown(why) => fail("reload", &why),
        },
        Verb::Restart => restart(args, check_start),
        Verb::Upgrade => match find(path) {
            Found::Running(j) => upgrade(path, &j, args.timeout),
            Found::NotRunning(why) => {
                eprintln!("jobd ctl upgrade: jobd is not running ({why})");
                NOT_RUNNING
            }
            Found::Unknown(why) => fail("upgrade", &why),
        },
        Verb::ForceStop => match find(path) {
            Found::Running(j) => match force_stop(&j, args.timeout) {
                Ok(n) => {
                    println!(
                        "jobd (pid {}) and {n} process(es) of its tree were killed",
                        j.pid
                    );
                    0
                }
                Err(e) => fail("force-stop", &e),
            },
            Found::NotRunning(why) => {
                println!("jobd is not running ({why}); nothing to kill");
                0
            }
            Found::Unknown(why) => fail("force-stop", &why),
        },
    }
}

fn fail(verb: &str, why: &str) -> i32 {
    eprintln!("jobd ctl {verb}: {why}");
    1
}

fn status(path: &Path) -> i32 {
    match find(path) {
        Found::Running(j) => {
            println!("jobd is running (pid {})", j.pid);
            0
        }
        Found::NotRunning(why) => {
            println!("jobd is not running ({why})");
            NOT_RUNNING_STATUS
        }
        Found::Unknown(why) => {
            eprintln!("jobd ctl status: {why}");
            UNKNOWN
        }
    }
}

/// A checked, running jobd: the pid of a locked pid file, held through a
/// pidfd opened and then checked again.
struct Running {
    pid: i32,
    pidfd: PidFd,
}

impl Running {
    fn signal(&self, sig: Signal) -> Result<(), String> {
        self.pidfd.signal(sig).map_err(|e| {
            if e.raw_os_error() == Some(libc::EPERM) {
                format!(
                    "not allowed to signal pid {} (run as the daemon's user or as root)",
                    self.pid
                )
            } else {
                format!("failed to send {} to pid {}: {e}", sig.as_str(), self.pid)
            }
        })
    }

    /// Waits until the process exited, at most `timeout`.
    fn wait_gone(&self, timeout: Duration) -> bool {
        wait_pidfd(&self.pidfd, Instant::now() + timeout)
    }
}

enum Found {
    Running(Running),
    /// Not running: the message says why (no pid file, stale pid file).
    NotRunning(String),
    /// Cannot tell: the file holds no pid, cannot be read, or names a
    /// process that is not a jobd.
    Unknown(String),
}

/// `upgrade`: SIGUSR2, then waits until the pid file names another running
/// jobd (the new supervisor writes it once it serves). 0 then; 1 when the
/// old one still names itself after `timeout` (it keeps serving; its log
/// says why the new one did not start).
fn upgrade(path: &Path, old: &Running, timeout: Duration) -> i32 {
    if let Err(e) = old.signal(Signal::SIGUSR2) {
        return fail("upgrade", &e);
    }
    let deadline = Instant::now() + timeout;
    loop {
        if let Found::Running(new) = find(path)
            && new.pid != old.pid
        {
            println!(
                "jobd upgraded: pid {} serves; pid {} drains its running jobs",
                new.pid, old.pid
            );
            return 0;
        }
        if Instant::now() >= deadline {
            return fail(
                "upgrade",
                &format!(
                    "no new jobd took over within {timeout:?}; pid {} keeps serving (its log says why)",
                    old.pid
                ),
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Reads and checks the pid file.
fn find(path: &Path) -> Found {
    let shown = path.display();
    let pid = match read_status(path) {
        Err(e) => return Found::Unknown(format!("pid file {shown}: {e}")),
        Ok(PidStatus::Missing) => return Found::NotRunning(format!("no pid file {shown}")),
        Ok(PidStatus::Garbage) => {
            return Found::Unknown(format!("pid file {shown} does not hold a pid"));
        }
        Ok(PidStatus::Stale { pid, locked, alive }) => {
            return Found::NotRunning(match (locked, alive) {
                (false, false) => format!("stale pid file {shown}: pid {pid} is dead"),
                (false, true) => format!(
                    "stale pid file {shown}: no process holds its lock, so pid {pid} is not its jobd"
                ),
                (true, _) => format!(
                    "pid file {shown} names pid {pid}, which is dead; its lock is still held, \
                     perhaps by workers that are exiting"
                ),
            });
        }
        Ok(PidStatus::Running(pid)) => pid,
    };
    if let Some(why) = not_jobd(pid, path) {
        return Found::Unknown(why);
    }
    let pidfd = match PidFd::open(Pid::from_raw(pid)) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {
            return Found::NotRunning(format!("pid {pid} of pid file {shown} just exited"));
        }
        Err(e) => return Found::Unknown(format!("failed to open a pidfd for pid {pid}: {e}")),
    };
    // The pidfd now pins the process; check that it is still the one the
    // locked pid file names.
    match read_status(path) {
        Ok(PidStatus::Running(p)) if p == pid => {}
        _ => {
            return Found::NotRunning(format!(
                "pid {pid} of pid file {shown} exited while being checked"
            ));
        }
    }
    if let Some(why) = not_jobd(pid, path) {
        return Found::Unknown(why);
    }
    Found::Running(Running { pid, pidfd })
}

/// Why `pid` is not the jobd of the pid file at `path`, or None when it is.
fn not_jobd(pid: i32, path: &Path) -> Option<String> {
    let argv = cmdline(pid);
    let shown_cmd = if argv.is_empty() {
        "no command line".to_string()
    } else {
        argv.iter()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    };
    let holds = holds_file(pid, path);
    let jobd_like = argv.first().is_some_and(|a0| {
        Path::new(a0)
            .file_name()
            .is_some_and(|n| n.as_bytes().starts_with(b"jobd"))
    }) || argv.iter().any(|a| a.as_bytes() == b"--pid-file");
    match holds {
        Some(true) => None,
        Some(false) => Some(format!(
            "pid file {} names pid {pid}, which is not a jobd: it does not hold the pid file open ({shown_cmd})",
            path.display()
        )),
        None if jobd_like => None,
        None => Some(format!(
            "pid file {} names pid {pid}, which does not look like a jobd ({shown_cmd})",
            path.display()
        )),
    }
}

/// Whether process `pid` has the file at `path` open; None when its
/// `/proc/<pid>/fd` cannot be read (another user's process).
fn holds_file(pid: i32, path: &Path) -> Option<bool> {
    let want = std::fs::symlink_metadata(path).ok()?;
    let want = (want.dev(), want.ino());
    let rd = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    Some(
        rd.flatten()
            .any(|e| std::fs::metadata(e.path()).is_ok_and(|m| (m.dev(), m.ino()) == want)),
    )
}

/// The command line of `pid`, from `/proc/<pid>/cmdline`.
fn cmdline(pid: i32) -> Vec<OsString> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    raw.split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| std::ffi::OsStr::from_bytes(a).to_os_string())
        .collect()
}

fn stop(j: &Running, timeout: Duration) -> Result<(), String> {
    j.signal(Signal::SIGTERM)?;
    if j.wait_gone(timeout) {
        println!("jobd (pid {}) stopped", j.pid);
        Ok(())
    } else {
        Err(format!(
            "jobd (pid {}) is still running after {timeout:?}: running jobs may take up to \
             its --grace to finish; give a longer --timeout, or use force-stop",
            j.pid
        ))
    }
}

fn restart(args: &Request, check_start: StartArgsCheck<'_>) -> i32 {
    let found = find(&args.pid_file);
    let start_args: Vec<OsString> = match (&found, args.args.is_empty()) {
        (Found::Unknown(why), _) => return fail("restart", why),
        (_, false) => args.args.clone(),
        (Found::Running(j), true) => {
            let argv = cmdline(j.pid);
            if argv.is_empty() {
                return fail(
                    "restart",
                    &format!(
                        "cannot read the command line of pid {}; give the arguments after --",
                        j.pid
                    ),
                );
            }
            argv[1..].to_vec()
        }
        (Found::NotRunning(why), true) => {
            eprintln!(
                "jobd ctl restart: jobd is not running ({why}); give the arguments to start it with after --"
            );
            return NOT_RUNNING;
        }
    };
    if let Err(why) = check_start(&start_args) {
        eprintln!("jobd ctl restart: {why}");
        return 2;
    }
    match &found {
        Found::Running(j) => {
            if let Err(e) = stop(j, args.timeout) {
                return fail("restart", &e);
            }
        }
        Found::NotRunning(why) => println!("jobd is not running ({why}); starting it"),
        Found::Unknown(_) => unreachable!("returned above"),
    }
    let exe = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => return fail("restart", &format!("cannot find the jobd executable: {e}")),
    };
    match Command::new(&exe)
        .args(&start_args)
        .stdin(Stdio::null())
        .status()
    {
        Ok(st) => st.code().unwrap_or(1),
        Err(e) => fail("restart", &format!("failed to run {}: {e}", exe.display())),
    }
}

/// One process as `/proc/<pid>/stat` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ProcStat {
    pid: i32,
    ppid: i32,
    pgid: i32,
    start: u64,
}

/// Parses `/proc/<pid>/stat` (the command name may hold spaces and
/// parentheses: the fields start after the last `)`).
fn parse_stat(s: &str) -> Option<ProcStat> {
    let (head, rest) = s.rsplit_once(')')?;
    let pid = head.split_whitespace().next()?.parse().ok()?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // f[0] is field 3 (state): field k is f[k - 3].
    Some(ProcStat {
        pid,
        ppid: f.get(1)?.parse().ok()?,
        pgid: f.get(2)?.parse().ok()?,
        start: f.get(19)?.parse().ok()?,
    })
}

fn read_stat(pid: i32) -> Option<ProcStat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Every process, from `/proc`.
fn all_processes() -> Vec<ProcStat> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(read_stat)
        .collect()
}

/// The descendants of `root` among `procs` (children, grandchildren...).
fn descendants(root: i32, procs: &[ProcStat]) -> Vec<ProcStat> {
    let mut children: HashMap<i32, Vec<ProcStat>> = HashMap::new();
    for p in procs {
        children.entry(p.ppid).or_default().push(*p);
    }
    let mut out = vec![];
    let mut todo = vec![root];
    while let Some(p) = todo.pop() {
        for c in children.get(&p).into_iter().flatten() {
            if c.pid != root && !out.iter().any(|o: &ProcStat| o.pid == c.pid) {
                out.push(*c);
                todo.push(c.pid);
            }
        }
    }
    out
}

/// SIGKILLs the supervisor, the job process groups and every descendant;
/// waits until they are gone. Returns how many descendants were killed.
fn force_stop(j: &Running, timeout: Duration) -> Result<usize, String> {
    let deadline = Instant::now() + timeout;
    let me = read_stat(j.pid).ok_or_else(|| format!("pid {} exited", j.pid))?;
    let tree = descendants(j.pid, &all_processes());
    // Pin each descendant with a pidfd, and keep it only if it is still the
    // process that was listed (same start time): a pid reused since the
    // listing is not ours.
    let mut pinned: Vec<(ProcStat, PidFd)> = vec![];
    for p in &tree {
        if let Ok(fd) = PidFd::open(Pid::from_raw(p.pid))
            && read_stat(p.pid).is_some_and(|now| now.start == p.start)
        {
            pinned.push((*p, fd));
        }
    }
    // Job process groups: groups of the tree other than the supervisor's
    // own (which, for a jobd run in the foreground, may hold processes that
    // are not jobd's, such as a shell pipeline's).
    let groups: BTreeSet<i32> = pinned
        .iter()
        .map(|(p, _)| p.pgid)
        .filter(|g| *g != me.pgid && *g > 1)
        .collect();
    j.signal(Signal::SIGKILL)?;
    for g in &groups {
        // ESRCH: the group is already gone.
        let _ = nix::sys::signal::killpg(Pid::from_raw(*g), Signal::SIGKILL);
    }
    for (_, fd) in &pinned {
        let _ = fd.signal(Signal::SIGKILL);
    }
    let mut left = vec![];
    if !wait_pidfd(&j.pidfd, deadline) {
        left.push(j.pid);
    }
    for (p, fd) in &pinned {
        if !wait_pidfd(fd, deadline) {
            left.push(p.pid);
        }
    }
    if left.is_empty() {
        Ok(pinned.len())
    } else {
        Err(format!(
            "processes still alive after SIGKILL and {timeout:?}: {left:?}"
        ))
    }
}

/// Waits until the pidfd's process exits (the pidfd turns readable), at most
/// until `deadline`.
fn wait_pidfd(fd: &PidFd, deadline: Instant) -> bool {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut fds = [crate::sys::PollFd::new(fd, crate::sys::PollFlags::IN)];
        match crate::sys::poll(&mut fds, Some(left)) {
            Ok(n) if n > 0 => return true,
            Ok(_) => return false,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_odd_command_names() {
        let line =
            "4242 (a) b (c)) S 10 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        let s = parse_stat(line).unwrap();
        assert_eq!(
            s,
            ProcStat {
                pid: 4242,
                ppid: 10,
                pgid: 4242,
                start: 987654
            }
        );
        assert_eq!(parse_stat("garbage"), None);
        let me = read_stat(std::process::id() as i32).unwrap();
        assert_eq!(me.pid, std::process::id() as i32);
    }

    #[test]
    fn descendants_walk_the_tree() {
        let p = |pid, ppid| ProcStat {
            pid,
            ppid,
            pgid: pid,
            start: 0,
        };
        let procs = [p(1, 0), p(10, 1), p(11, 10), p(12, 10), p(13, 12), p(20, 1)];
        let mut d: Vec<i32> = descendants(10, &procs).iter().map(|s| s.pid).collect();
        d.sort();
        assert_eq!(d, vec![11, 12, 13]);
        assert!(descendants(20, &procs).is_empty());
    }
}
