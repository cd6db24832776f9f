//! The integration harness: starts the real `jobd` binary on 127.0.0.1:0,
//! reads the bound port from its log, collects its stderr, and on `Drop`
//! stops it and every process it started (found by a tag in their
//! environment), by PID.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Generous deadline for anything a test waits on.
pub const DEADLINE: Duration = Duration::from_secs(20);

static COUNTER: AtomicU64 = AtomicU64::new(0);

pub fn jobd_bin() -> &'static str {
    env!("CARGO_BIN_EXE_jobd")
}

/// A unique tag put in jobd's environment; every process it starts
/// inherits it, so that the test can find them all.
fn new_tag() -> String {
    format!(
        "{}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

type Log = Arc<(Mutex<Vec<String>>, Condvar)>;

pub struct Jobd {
    pub child: Child,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    pub tag: String,
    log: Log,
    exited: Option<ExitStatus>,
    reader: Option<std::thread::JoinHandle<()>>,
}

/// Writes an executable shell script into `dir` and returns its path.
pub fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("jobd-test-")
        .tempdir()
        .unwrap()
}

/// Runs jobd to completion (for bad-input tests): (status, stdout, stderr).
pub fn run_jobd(args: &[&str]) -> (ExitStatus, String, String) {
    let tag = new_tag();
    let mut child = Command::new(jobd_bin())
        .args(args)
        .env("JOBD_TEST_TAG", &tag)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            let mut out = String::new();
            let mut err = String::new();
            child
                .stdout
                .take()
                .unwrap()
                .read_to_string(&mut out)
                .unwrap();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            assert_no_tagged(&tag);
            return (st, out, err);
        }
        if !poll_until(deadline, || child.try_wait().ok().flatten().is_some()) {
            let _ = child.kill();
            let _ = child.wait();
            kill_tagged(&tag);
            panic!("jobd {args:?} did not exit within {DEADLINE:?}");
        }
    }
}

impl Jobd {
    /// Starts jobd in `dir` with `args` (plus `--listen 127.0.0.1:0`
    /// unless args has `--listen`) and waits for its port.
    pub fn start_in(dir: tempfile::TempDir, args: &[&str]) -> Jobd {
        let tag = new_tag();
        let mut full: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        if !args.contains(&"--listen") {
            full.insert(0, "127.0.0.1:0".into());
            full.insert(0, "--listen".into());
        }
        let mut child = Command::new(jobd_bin())
            .args(&full)
            .env("JOBD_TEST_TAG", &tag)
            .env_remove("JOBD_LOG")
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log: Log = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
        let stderr = child.stderr.take().unwrap();
        let l2 = log.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let (m, cv) = &*l2;
                m.lock().unwrap().push(line);
                cv.notify_all();
            }
        });
        let mut j = Jobd {
            child,
            addr: "0.0.0.0:0".parse().unwrap(),
            dir,
            tag,
            log,
            exited: None,
            reader: Some(reader),
        };
        let deadline = Instant::now() + DEADLINE;
        let line = loop {
            if let Some(l) = j.logs().into_iter().find(|l| l.contains("listening on ")) {
                break l;
            }
            if let Some(st) = j.child.try_wait().unwrap() {
                j.exited = Some(st);
                // The reader thread ends at EOF: its last lines are in.
                if let Some(r) = j.reader.take() {
                    let _ = r.join();
                }
                panic!(
                    "jobd {full:?} exited with {st:?} before listening; log:\n{}",
                    j.dump()
                );
            }
            assert!(
                Instant::now() < deadline,
                "jobd did not report its port; log:\n{}",
                j.dump()
            );
            let (m, cv) = &*j.log;
            let g = m.lock().unwrap();
            let _ = cv.wait_timeout(g, Duration::from_millis(50)).unwrap();
        };
        let rest = line.split("listening on ").nth(1).unwrap();
        let addr = rest
            .split(|c: char| c.is_whitespace() || c == '"')
            .next()
            .unwrap();
        j.addr = addr
            .parse()
            .unwrap_or_else(|_| panic!("bad address in {line:?}"));
        j
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn logs(&self) -> Vec<String> {
        self.log.0.lock().unwrap().clone()
    }

    pub fn dump(&self) -> String {
        self.logs().join("\n")
    }

    pub fn count(&self, pred: impl Fn(&str) -> bool) -> usize {
        self.logs().iter().filter(|l| pred(l)).count()
    }

    /// Waits for a log line matching `pred`; panics with the log on timeout.
    pub fn wait_log(&self, pred: impl Fn(&str) -> bool) -> String {
        self.wait_log_n(1, &pred).pop().unwrap()
    }

    /// Waits until `n` log lines match `pred`; returns them.
    pub fn wait_log_n(&self, n: usize, pred: &dyn Fn(&str) -> bool) -> Vec<String> {
        let deadline = Instant::now() + DEADLINE;
        let (m, cv) = &*self.log;
        let mut g = m.lock().unwrap();
        loop {
            let found: Vec<String> = g.iter().filter(|l| pred(l)).cloned().collect();
            if found.len() >= n {
                return found;
            }
            let now = Instant::now();
            if now >= deadline {
                let all = g.join("\n");
                drop(g);
                panic!("timed out waiting for {n} matching log lines; log:\n{all}");
            }
            g = cv.wait_timeout(g, deadline - now).unwrap().0;
        }
    }

    /// Sends a signal (`"TERM"`, `"INT"`, `"HUP"`, ...) to jobd.
    pub fn signal(&self, sig: &str) {
        send(self.pid(), sig);
    }

    /// Waits for jobd to exit; panics after the deadline.
    pub fn wait_exit(&mut self) -> ExitStatus {
        if let Some(s) = self.exited {
            return s;
        }
        let mut status = None;
        let exited = poll_until(Instant::now() + DEADLINE, || {
            status = self.child.try_wait().unwrap();
            status.is_some()
        });
        assert!(exited, "jobd did not exit; log:\n{}", self.dump());
        self.exited = status;
        // Every line jobd and its processes wrote is read once the last of
        // them closed the pipe: then the log is complete.
        if let Some(r) = self.reader.take() {
            if poll_until(Instant::now() + DEADLINE, || r.is_finished()) {
                let _ = r.join();
            } else {
                self.reader = Some(r);
            }
        }
        status.unwrap()
    }

    pub fn connect(&self) -> TcpStream {
        connect(self.addr)
    }

    /// Sends `input`, keeps the connection open, reads one line.
    pub fn request_line(&self, input: &str) -> (TcpStream, String) {
        let mut s = self.connect();
        s.write_all(input.as_bytes()).unwrap();
        let mut line = String::new();
        BufReader::new(s.try_clone().unwrap())
            .read_line(&mut line)
            .unwrap();
        (s, line)
    }

    /// Sends `input`, keeps the write side open, and reads everything until
    /// jobd closes the connection (the job has ended).
    pub fn request_all(&self, input: &str) -> String {
        request_all(self.addr, input)
    }

    /// `jobd status --scoreboard PATH --json`.
    pub fn status_json(sb: &Path) -> serde_json::Value {
        let out = Command::new(jobd_bin())
            .args(["status", "--scoreboard"])
            .arg(sb)
            .arg("--json")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Stops jobd with SIGTERM, expects exit 0 and no tagged process left.
    pub fn stop_clean(&mut self) {
        self.signal("TERM");
        let st = self.wait_exit();
        assert!(
            st.success(),
            "jobd exited with {st:?}; log:\n{}",
            self.dump()
        );
        wait_gone(&self.tag);
    }
}

impl Drop for Jobd {
    fn drop(&mut self) {
        if self.exited.is_none() && self.child.try_wait().ok().flatten().is_none() {
            let _ = try_send(self.pid(), "INT");
            let deadline = Instant::now() + Duration::from_secs(5);
            poll_until(deadline, || self.child.try_wait().ok().flatten().is_some());
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        kill_tagged(&self.tag);
    }
}

/// Live (non-zombie) processes whose environment has JOBD_TEST_TAG=tag.
pub fn tagged_pids(tag: &str) -> Vec<i32> {
    let needle = format!("JOBD_TEST_TAG={tag}\0");
    let mut out = vec![];
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        if !env.windows(needle.len()).any(|w| w == needle.as_bytes()) {
            continue;
        }
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat.rsplit(") ").next().and_then(|s| s.chars().next());
        if state != Some('Z') && state.is_some() {
            out.push(pid);
        }
    }
    out
}

pub fn kill_tagged(tag: &str) {
    for pid in tagged_pids(tag) {
        let _ = try_send(pid, "KILL");
    }
}

/// Waits until no tagged process is alive; panics naming them otherwise.
pub fn wait_gone(tag: &str) {
    if poll_until(Instant::now() + DEADLINE, || tagged_pids(tag).is_empty()) {
        return;
    }
    let desc: Vec<String> = tagged_pids(tag)
        .iter()
        .map(|p| {
            format!(
                "{p}: {}",
                std::fs::read_to_string(format!("/proc/{p}/cmdline"))
                    .unwrap_or_default()
                    .replace('\0', " ")
            )
        })
        .collect();
    kill_tagged(tag);
    panic!("processes left behind: {desc:?}");
}

fn assert_no_tagged(tag: &str) {
    wait_gone(tag);
}

/// The parent of process `pid` (the worker of a handler), from
/// `/proc/PID/stat` (the fields after the command's last ')').
pub fn parent_of(pid: i32) -> i32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    stat[stat.rfind(')').unwrap() + 1..]
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap()
}

/// Whether process `pid` is alive (not a zombie).
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit(") ").next().and_then(|s| s.chars().next()) != Some('Z'),
        Err(_) => false,
    }
}

/// Checks `pred` every 10 ms until it holds (true) or `deadline` passes
/// (false): the one polling loop of the harness, for conditions that give
/// no event to wait on (the process table, files, another process's exit).
pub fn poll_until(deadline: Instant, mut pred: impl FnMut() -> bool) -> bool {
    loop {
        if pred() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits until `pred` holds; panics with `what` after the deadline.
pub fn wait_until(what: &str, pred: impl FnMut() -> bool) {
    assert!(
        poll_until(Instant::now() + DEADLINE, pred),
        "timed out waiting for {what}"
    );
}

/// Reads a pid written by a handler into `path`, waiting for the file.
pub fn read_pid(path: &Path) -> i32 {
    let mut pid = 0;
    wait_until(&format!("pid file {}", path.display()), || {
        pid = std::fs::read_to_string(path)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        pid > 0
    });
    pid
}

fn try_send(pid: i32, sig: &str) -> nix::Result<()> {
    let sig: nix::sys::signal::Signal = format!("SIG{sig}").parse().expect("a signal name");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig)
}

/// Sends signal `sig` (`"TERM"`, `"KILL"`, ...) to `pid`; panics on failure.
pub fn send(pid: i32, sig: &str) {
    try_send(pid, sig).unwrap_or_else(|e| panic!("kill -{sig} {pid}: {e}"));
}

// ---- The daemon lifecycle (daemon.rs, ctl.rs) ----

/// A fresh tag for processes started outside [`Jobd`].
pub fn fresh_tag() -> String {
    new_tag()
}

/// Runs `jobd ARGS` in `dir` with `tag` in its environment and waits for it
/// to exit: (status, stdout, stderr). Unlike [`run_jobd`], processes it
/// leaves behind (a daemon) are the caller's to check and stop.
pub fn run_tagged<S: AsRef<std::ffi::OsStr>>(
    dir: &Path,
    tag: &str,
    args: &[S],
) -> (ExitStatus, String, String) {
    let child = Command::new(jobd_bin())
        .args(args)
        .env("JOBD_TEST_TAG", tag)
        .env_remove("JOBD_LOG")
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A daemon does not keep these pipes (its stdio is /dev/null and the
    // error log), so reading them to EOF ends when jobd exits.
    let out = child.wait_with_output().unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Waits until the file at `path` has a line matching `pred`; returns it.
pub fn wait_file_line(path: &Path, pred: impl Fn(&str) -> bool) -> String {
    let mut found = None;
    wait_until(&format!("a matching line in {}", path.display()), || {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        found = text.lines().find(|l| pred(l)).map(str::to_string);
        found.is_some()
    });
    found.unwrap()
}

/// The value of `key=` in a text line (bare or quoted).
pub fn field(line: &str, key: &str) -> String {
    let start = line
        .find(&format!(" {key}="))
        .map(|i| i + key.len() + 2)
        .or_else(|| {
            line.starts_with(&format!("{key}="))
                .then_some(key.len() + 1)
        })
        .unwrap_or_else(|| panic!("no {key} in {line:?}"));
    let rest = &line[start..];
    if let Some(q) = rest.strip_prefix('"') {
        q[..q.find('"').unwrap()].to_string()
    } else {
        rest.split_whitespace().next().unwrap().to_string()
    }
}

/// Waits until `path` has at least `n` lines; returns them.
pub fn wait_file_lines(path: &Path, n: usize) -> Vec<String> {
    let mut lines = Vec::new();
    wait_until(&format!("{n} lines in {}", path.display()), || {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        lines = text.lines().map(str::to_string).collect();
        lines.len() >= n
    });
    lines
}

/// The address in a `listening on ADDR` log line (text or JSON).
pub fn listen_addr(line: &str) -> SocketAddr {
    let rest = line.split("listening on ").nth(1).unwrap();
    let addr = rest
        .split(|c: char| c.is_whitespace() || c == '"')
        .next()
        .unwrap();
    addr.parse()
        .unwrap_or_else(|_| panic!("bad address in {line:?}"))
}

/// A jobd started with `--daemonize` in a temp dir, with relative paths:
/// `jobd.pid`, `error.log`, `access.log`. On `Drop`, every process carrying
/// its tag (the daemon, its workers, their jobs, a restarted daemon) is
/// killed by PID.
pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub tag: String,
    pub pid: i32,
    pub addr: SocketAddr,
    /// The arguments it was started with.
    pub args: Vec<String>,
}

impl Daemon {
    /// The arguments of a daemon with the three files in the current
    /// directory, then `extra`.
    pub fn args(extra: &[&str]) -> Vec<String> {
        let mut a: Vec<String> = [
            "--daemonize",
            "--listen",
            "127.0.0.1:0",
            "--pid-file",
            "jobd.pid",
            "--error-log",
            "error.log",
            "--access-log",
            "access.log",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    }

    /// Starts `jobd --daemonize ...` in `dir`; expects the foreground to
    /// exit 0, and reads the daemon's pid and address.
    pub fn start(dir: tempfile::TempDir, extra: &[&str]) -> Daemon {
        let args = Daemon::args(extra);
        let tag = new_tag();
        let (st, out, err) = run_tagged(dir.path(), &tag, &args);
        let mut d = Daemon {
            dir,
            tag,
            pid: 0,
            addr: "0.0.0.0:0".parse().unwrap(),
            args,
        };
        assert!(
            st.success(),
            "jobd {:?} exited with {st:?}\nstdout: {out}\nstderr: {err}\nerror log:\n{}",
            d.args,
            d.error_log_text()
        );
        d.refresh();
        d
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn pid_file(&self) -> PathBuf {
        self.path("jobd.pid")
    }

    pub fn error_log(&self) -> PathBuf {
        self.path("error.log")
    }

    pub fn access_log(&self) -> PathBuf {
        self.path("access.log")
    }

    pub fn error_log_text(&self) -> String {
        std::fs::read_to_string(self.error_log()).unwrap_or_default()
    }

    /// Reads the pid file and the last `listening on` line again (after a
    /// restart).
    pub fn refresh(&mut self) {
        let text = std::fs::read_to_string(self.pid_file()).unwrap_or_default();
        self.pid = text
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("pid file holds {text:?}"));
        let pid = self.pid.to_string();
        let line = wait_file_line(&self.error_log(), |l| {
            l.contains("listening on ") && l.contains(&pid)
        });
        self.addr = listen_addr(&line);
    }

    /// `jobd ctl VERB --pid-file jobd.pid EXTRA`, run in the daemon's dir
    /// with its tag (a restarted daemon carries it too).
    pub fn ctl(&self, verb: &str, extra: &[&str]) -> (ExitStatus, String, String) {
        let mut a = vec!["ctl", verb, "--pid-file", "jobd.pid"];
        a.extend_from_slice(extra);
        run_tagged(self.dir.path(), &self.tag, &a)
    }

    pub fn connect(&self) -> TcpStream {
        connect(self.addr)
    }

    /// Sends `input` and reads until jobd closes the connection.
    pub fn request_all(&self, input: &str) -> String {
        request_all(self.addr, input)
    }

    /// SIGTERM, then waits until the daemon and everything it started are
    /// gone.
    pub fn stop(&self) {
        send(self.pid, "TERM");
        wait_until("the daemon to exit", || !alive(self.pid));
        wait_gone(&self.tag);
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        kill_tagged(&self.tag);
    }
}

/// Closes `s` with a reset (SO_LINGER 0) instead of a FIN.
pub fn reset(s: TcpStream) {
    use std::os::fd::AsFd;
    nix::sys::socket::setsockopt(
        &s.as_fd(),
        nix::sys::socket::sockopt::Linger,
        &libc::linger {
            l_onoff: 1,
            l_linger: 0,
        },
    )
    .unwrap();
    drop(s);
}

impl Jobd {
    /// Starts jobd in a fresh temp dir serving the shell script `body`
    /// (written there as `h.sh`), with `args` after `--script`.
    pub fn with_script(body: &str, args: &[&str]) -> Jobd {
        let dir = tempdir();
        let h = script(dir.path(), "h.sh", body);
        let h = h.to_str().unwrap().to_string();
        let mut full = vec!["--script", h.as_str()];
        full.extend_from_slice(args);
        Jobd::start_in(dir, &full)
    }

    /// As [`Jobd::with_script`], with a scoreboard file; returns its path.
    pub fn with_script_sb(body: &str, args: &[&str]) -> (Jobd, PathBuf) {
        let dir = tempdir();
        let sb = dir.path().join("sb");
        let h = script(dir.path(), "h.sh", body);
        let (h, sbs) = (
            h.to_str().unwrap().to_string(),
            sb.to_str().unwrap().to_string(),
        );
        let mut full = vec!["--script", h.as_str(), "--scoreboard", sbs.as_str()];
        full.extend_from_slice(args);
        (Jobd::start_in(dir, &full), sb)
    }
}

/// A client of `addr` with the harness's read deadline.
pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s
}

/// Sends `input`, keeps the write side open, and reads everything until the
/// server closes the connection (the job has ended).
pub fn request_all(addr: SocketAddr, input: &str) -> String {
    let mut s = connect(addr);
    s.write_all(input.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// Sets the soft RLIMIT_NOFILE of process `pid` (as root may, for any
/// process; the hard limit stays: raising it needs CAP_SYS_RESOURCE).
/// Returns the soft limit it had.
pub fn set_nofile(pid: i32, n: u64) -> u64 {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit reading into a valid rlimit.
    let r = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, std::ptr::null(), &mut old) };
    assert_eq!(r, 0, "prlimit {pid}: {}", std::io::Error::last_os_error());
    let lim = libc::rlimit {
        rlim_cur: n,
        rlim_max: old.rlim_max,
    };
    // SAFETY: prlimit with a valid rlimit and no old-value pointer.
    let r = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, &lim, std::ptr::null_mut()) };
    assert_eq!(r, 0, "prlimit {pid}: {}", std::io::Error::last_os_error());
    old.rlim_cur
}

/// The lowest descriptor number `pid` has free: with RLIMIT_NOFILE at
/// this, its next open fails with EMFILE.
pub fn lowest_free_fd(pid: i32) -> u64 {
    let nums: std::collections::HashSet<u64> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    (0..).find(|n| !nums.contains(n)).unwrap()
}
