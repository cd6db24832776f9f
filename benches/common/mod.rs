//! Shared by the benches: starting and stopping servers by pid, finding
//! their port, installing the anchors (tcpserver, socat), building the
//! handlers, pidfds, CPU and memory readings from procfs, percentiles and
//! scan timing, the file-descriptor limit, and the socket calls the benches
//! make (loopback listeners, `SO_COOKIE`, resets on close). The system
//! calls go through rustix and nix, safe wrappers all.
//!
//! Every process a bench starts carries a marker in its environment (one
//! marker per server), which its handlers inherit; stopping a server ends
//! with a sweep that kills whatever still carries that marker, after pinning
//! the process with a pidfd and checking the marker again.
#![allow(dead_code)]

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jobd::detect::sockdiag::SockDiag;
use jobd::detect::{SockEntry, SocketSource, state_mask, tcp_state};
use nix::sys::resource::{Resource, UsageWho, getrlimit, getrusage, setrlimit};
use nix::sys::socket::{
    AddressFamily, Backlog, SockFlag, SockType, SockaddrStorage, bind, listen, setsockopt, socket,
    sockopt,
};
use nix::unistd::{SysconfVar, sysconf};
use rustix::event::{PollFd, PollFlags, Timespec, poll};
use rustix::process::{Pid, PidfdFlags, Signal};

/// Environment variable that marks every process of one server.
pub const MARKER_ENV: &str = "JOBD_E2E_BENCH_MARKER";

/// The shell echo handler.
pub const SH_ECHO: &str = "#!/bin/sh\nread -r l\necho \"$l\"\n";

/// The compiled echo handler: one line from fd 0 to fd 1, no libc stdio.
pub const C_ECHO: &str = r#"#include <unistd.h>
int main(void) {
    char buf[4096];
    size_t n = 0;
    while (n < sizeof buf) {
        ssize_t r = read(0, buf + n, sizeof buf - n);
        if (r <= 0) break;
        n += (size_t)r;
        if (buf[n - 1] == '\n') break;
    }
    size_t off = 0;
    while (off < n) {
        ssize_t w = write(1, buf + off, n - off);
        if (w <= 0) return 1;
        off += (size_t)w;
    }
    return 0;
}
"#;

/// An environment variable as a positive integer, or `default`.
pub fn env_usize(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(s) if !s.trim().is_empty() => s
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}: expected a non-negative integer, got {s:?}")),
        _ => default,
    }
}

/// An environment variable as a number of seconds (fractions allowed).
pub fn env_secs(name: &str, default: f64) -> Duration {
    match std::env::var(name) {
        Ok(s) if !s.trim().is_empty() => {
            let v: f64 = s
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("{name}: expected seconds, got {s:?}"));
            Duration::from_secs_f64(v.clamp(0.05, 3600.0))
        }
        _ => Duration::from_secs_f64(default),
    }
}

/// A unique marker for one server of this bench run.
pub fn new_marker(what: &str) -> String {
    let ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{}-{what}-{ns}", std::process::id())
}

/// Nearest-rank percentile of sorted values.
pub fn percentile<T: Copy>(sorted: &[T], p: f64) -> Option<T> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Median of unsorted values (mean of the middle two for an even count).
pub fn median(v: &[f64]) -> Option<f64> {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if s.is_empty() {
        return None;
    }
    s.sort_by(f64::total_cmp);
    let m = s.len() / 2;
    Some(if s.len() % 2 == 1 {
        s[m]
    } else {
        (s[m - 1] + s[m]) / 2.0
    })
}

/// User + system CPU seconds of `who` so far (getrusage: this process, or
/// its reaped children).
pub fn rusage_cpu_s(who: UsageWho) -> f64 {
    let tv = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    getrusage(who).map_or(0.0, |u| tv(u.user_time()) + tv(u.system_time()))
}

/// This thread's CPU time from `/proc/thread-self/schedstat` (exact, where
/// getrusage is tick-sampled and overcharges threads woken by timers).
pub fn thread_cpu_s() -> f64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0.0, |ns| ns as f64 / 1e9)
}

/// Busy and total jiffies of the whole machine (first line of /proc/stat).
pub fn machine_jiffies() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> = s
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total.saturating_sub(idle), total)
}

/// The sum of the clock-tick fields 14 (utime), 15 (stime) and, with
/// `children`, 16 and 17 (cutime, cstime) of `/proc/<pid>/stat`.
fn stat_ticks(pid: i32, children: bool) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses: f[0] is
    // field 3 (state), so utime (field 14) is f[11].
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let last = if children { 15 } else { 13 };
    let mut t = 0;
    for i in 11..last {
        t += f.get(i)?.parse::<i64>().ok()?.max(0) as u64;
    }
    Some(t)
}

/// utime + stime of a process in clock ticks, from `/proc/<pid>/stat`.
pub fn proc_cpu_ticks(pid: i32) -> Option<u64> {
    stat_ticks(pid, false)
}

/// utime + stime + cutime + cstime (reaped children included) of a process
/// and of its live children, in seconds: the CPU of a server's whole tree
/// (a child's time moves into its parent's cutime when it is reaped, so
/// nothing is counted twice).
pub fn tree_cpu_s(pid: i32) -> Option<f64> {
    let mut ticks = stat_ticks(pid, true)?;
    for c in children_of(pid) {
        ticks += stat_ticks(c, true).unwrap_or(0);
    }
    Some(ticks as f64 / clk_tck())
}

/// CPU nanoseconds of a process's main thread from `/proc/<pid>/schedstat`.
pub fn proc_runtime_ns(pid: i32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/schedstat"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Clock ticks per second.
pub fn clk_tck() -> f64 {
    match sysconf(SysconfVar::CLK_TCK) {
        Ok(Some(t)) if t > 0 => t as f64,
        _ => 100.0,
    }
}

/// A `/proc/<pid>/status` field in kB (e.g. `VmRSS`).
pub fn status_kib(pid: i32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Children of a process (all its threads).
pub fn children_of(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in rd.flatten() {
            if let Ok(s) = std::fs::read_to_string(t.path().join("children")) {
                out.extend(s.split_whitespace().filter_map(|x| x.parse::<i32>().ok()));
            }
        }
    }
    out
}

/// Raises the soft RLIMIT_NOFILE to at least `need` (up to the hard limit).
pub fn raise_nofile(need: u64) -> Result<u64, String> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(|e| format!("getrlimit: {e}"))?;
    if soft >= need {
        return Ok(soft);
    }
    let want = need.min(hard);
    setrlimit(Resource::RLIMIT_NOFILE, want, hard).map_err(|e| format!("setrlimit: {e}"))?;
    if want < need {
        return Err(format!(
            "RLIMIT_NOFILE hard limit {hard} is below the {need} needed"
        ));
    }
    Ok(want)
}

/// A pidfd on `pid`: pins the process, so that a later signal cannot hit
/// a recycled pid.
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    let pid = Pid::from_raw(pid).ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    Ok(rustix::process::pidfd_open(pid, PidfdFlags::empty())?)
}

/// Signal through a pidfd: never hits a recycled pid.
pub fn pidfd_signal(fd: &OwnedFd, sig: Signal) -> io::Result<()> {
    Ok(rustix::process::pidfd_send_signal(fd, sig)?)
}

/// Whether the process of a pidfd has exited (a poll that does not wait).
pub fn pidfd_exited(fd: &OwnedFd) -> bool {
    poll_exited(&[fd], Duration::ZERO)[0]
}

/// Polls pidfds (readable = the process exited) for at most `timeout`
/// (rounded up to whole milliseconds, at most 1 s per call); returns which
/// have exited.
pub fn poll_exited(fds: &[&OwnedFd], timeout: Duration) -> Vec<bool> {
    let ms = timeout.as_micros().div_ceil(1000).min(1000) as u64;
    let ts = Timespec::try_from(Duration::from_millis(ms)).unwrap_or_default();
    let mut pfds: Vec<PollFd> = fds
        .iter()
        .map(|f| PollFd::from_borrowed_fd(f.as_fd(), PollFlags::IN))
        .collect();
    match poll(&mut pfds, Some(&ts)) {
        Ok(_) => pfds.iter().map(|p| !p.revents().is_empty()).collect(),
        Err(_) => vec![false; fds.len()],
    }
}

fn has_marker(pid: &str, needle: &[u8]) -> bool {
    std::fs::read(format!("/proc/{pid}/environ"))
        .is_ok_and(|env| env.split(|&b| b == 0).any(|kv| kv == needle))
}

/// Pids of live processes whose environment holds `marker`.
pub fn marked_pids(marker: &str) -> Vec<i32> {
    let needle = format!("{MARKER_ENV}={marker}").into_bytes();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let me = std::process::id() as i32;
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&p| p != me && has_marker(&p.to_string(), &needle))
        .collect()
}

/// SIGKILLs every process whose environment holds `marker` (a server's
/// handlers and their children inherit it). Returns the pids killed.
pub fn kill_marked(marker: &str) -> Vec<i32> {
    let needle = format!("{MARKER_ENV}={marker}").into_bytes();
    let mut killed = Vec::new();
    // A few passes: a dying parent may have forked a child meanwhile.
    for _ in 0..5 {
        let pids = marked_pids(marker);
        if pids.is_empty() {
            break;
        }
        for pid in pids {
            let Ok(fd) = pidfd_open(pid) else { continue };
            // Checked again with the process pinned by the pidfd.
            if has_marker(&pid.to_string(), &needle)
                && !pidfd_exited(&fd)
                && pidfd_signal(&fd, Signal::KILL).is_ok()
            {
                killed.push(pid);
                let _ = poll_exited(&[&fd], Duration::from_millis(200));
            }
        }
    }
    killed
}

/// Looks a program up in PATH (and the usual sbin directories).
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let extra = ["/usr/sbin", "/usr/bin", "/sbin", "/bin", "/usr/local/bin"];
    std::env::split_paths(&path)
        .chain(extra.iter().map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Runs a command with a time limit; returns (success, combined output).
fn run_limited(cmd: &mut Command, limit: Duration) -> (bool, String) {
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => return (false, format!("tempdir: {e}")),
    };
    let out_path = dir.path().join("out");
    let Ok(out) = File::create(&out_path) else {
        return (false, "cannot create output file".into());
    };
    let Ok(err) = out.try_clone() else {
        return (false, "cannot dup output file".into());
    };
    let mut child = match cmd
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return (false, format!("spawn: {e}")),
    };
    let until = Instant::now() + limit;
    let ok = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st.success(),
            Ok(None) if Instant::now() < until => std::thread::sleep(Duration::from_millis(50)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break false;
            }
        }
    };
    let text = std::fs::read_to_string(&out_path).unwrap_or_default();
    (ok, text)
}

/// The anchors found (or installed): tcpserver and socat.
pub struct Anchors {
    pub tcpserver: Option<PathBuf>,
    pub socat: Option<PathBuf>,
    /// What happened, for the report.
    pub notes: Vec<String>,
}

/// Finds tcpserver and socat; when one is missing, tries once
/// `apt-get install -y ucspi-tcp socat` (and `apt-get update` first only if
/// the install failed for lack of package lists). Says what it did.
pub fn ensure_anchors() -> Anchors {
    let mut a = Anchors {
        tcpserver: which("tcpserver"),
        socat: which("socat"),
        notes: Vec::new(),
    };
    if a.tcpserver.is_some() && a.socat.is_some() {
        return a;
    }
    let missing: Vec<&str> = [
        ("ucspi-tcp", a.tcpserver.is_none()),
        ("socat", a.socat.is_none()),
    ]
    .iter()
    .filter(|x| x.1)
    .map(|x| x.0)
    .collect();
    let Some(apt) = which("apt-get") else {
        a.notes.push(format!(
            "anchors missing ({}) and no apt-get to install them",
            missing.join(", ")
        ));
        return a;
    };
    eprintln!("anchors: installing {} with apt-get", missing.join(" "));
    let install = |apt: &Path| {
        let mut c = Command::new(apt);
        c.args(["install", "-y", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive");
        run_limited(&mut c, Duration::from_secs(300))
    };
    let (ok, out) = install(&apt);
    if ok {
        a.notes
            .push(format!("installed {} with apt-get", missing.join(" ")));
    } else if out.contains("Unable to locate package") || out.contains("no installation candidate")
    {
        eprintln!("anchors: apt-get install found no package lists; running apt-get update");
        let mut c = Command::new(&apt);
        c.arg("update").env("DEBIAN_FRONTEND", "noninteractive");
        let (uok, uout) = run_limited(&mut c, Duration::from_secs(300));
        let (ok2, out2) = install(&apt);
        if ok2 {
            a.notes.push(format!(
                "installed {} with apt-get (after apt-get update)",
                missing.join(" ")
            ));
        } else {
            a.notes.push(format!(
                "apt-get install {} failed (update ok: {uok}): {}",
                missing.join(" "),
                last_lines(&format!("{uout}\n{out2}"), 3)
            ));
        }
    } else {
        a.notes.push(format!(
            "apt-get install {} failed: {}",
            missing.join(" "),
            last_lines(&out, 3)
        ));
    }
    a.tcpserver = which("tcpserver");
    a.socat = which("socat");
    a
}

pub fn last_lines(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

/// Writes an executable script.
pub fn write_script(dir: &Path, name: &str, text: &str) -> io::Result<PathBuf> {
    let p = dir.join(name);
    std::fs::write(&p, text)?;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))?;
    Ok(p)
}

/// Builds the compiled echo handler with `cc -O2 -static`, falling back to a
/// dynamic build. Returns the path and how it was linked.
pub fn build_c_echo(dir: &Path) -> Result<(PathBuf, &'static str), String> {
    let src = dir.join("echo.c");
    std::fs::write(&src, C_ECHO).map_err(|e| format!("write echo.c: {e}"))?;
    let out = dir.join("echo-c");
    let cc = which("cc").or_else(|| which("gcc")).ok_or("no cc or gcc")?;
    let mut c = Command::new(&cc);
    c.arg("-O2").arg("-static").arg("-o").arg(&out).arg(&src);
    let (ok, text) = run_limited(&mut c, Duration::from_secs(60));
    if ok {
        return Ok((out, "static"));
    }
    eprintln!(
        "echo-c: `cc -O2 -static` failed ({}); building it dynamically linked",
        last_lines(&text, 2)
    );
    let mut c = Command::new(&cc);
    c.arg("-O2").arg("-o").arg(&out).arg(&src);
    let (ok, text) = run_limited(&mut c, Duration::from_secs(60));
    if ok {
        Ok((out, "dynamic (static link failed)"))
    } else {
        Err(format!("cc failed: {}", last_lines(&text, 3)))
    }
}

/// A free loopback port (bound then released; the caller retries if another
/// program takes it meanwhile).
pub fn free_port() -> io::Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// Socket inodes among a process's open descriptors.
pub fn socket_inodes(pid: i32) -> Vec<u64> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        for e in rd.flatten() {
            if let Ok(t) = std::fs::read_link(e.path())
                && let Some(s) = t.to_str()
                && let Some(n) = s.strip_prefix("socket:[")
                && let Ok(i) = n.trim_end_matches(']').parse::<u64>()
            {
                out.push(i);
            }
        }
    }
    out
}

/// Whether `pid` holds a LISTEN socket on 127.0.0.1:`port` (sock_diag).
pub fn holds_listener(pid: i32, port: u16) -> bool {
    let Ok(mut sd) = SockDiag::open() else {
        return false;
    };
    let mut seen = Vec::new();
    if sd
        .dump(port, state_mask(&[tcp_state::LISTEN]), &mut seen)
        .is_err()
        || seen.is_empty()
    {
        return false;
    }
    let mine = socket_inodes(pid);
    seen.iter().any(|e| mine.contains(&e.inode))
}

/// A server process this bench started (its stdout and stderr go to a log
/// file), and the address it listens on.
pub struct Spawned {
    pub name: String,
    pub child: Child,
    pub addr: SocketAddr,
    pub log: PathBuf,
    pub marker: String,
}

impl Spawned {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Stops the server: SIGTERM to the pid of our unreaped child, wait up
    /// to `grace`, SIGKILL; then kills anything still carrying its marker.
    /// Returns a description.
    pub fn stop(self, grace: Duration) -> String {
        self.stop_with(Signal::TERM, grace)
    }

    /// As [`Spawned::stop`], with another first signal (SIGINT: jobd kills
    /// its running jobs at once).
    pub fn stop_with(mut self, sig: Signal, grace: Duration) -> String {
        let how = stop_child(&mut self.child, sig, grace);
        let left = kill_marked(&self.marker);
        if left.is_empty() {
            how
        } else {
            format!(
                "{how}; killed {} left-over process(es) {left:?}",
                left.len()
            )
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Sends `sig` to our unreaped child, waits up to `grace`, then SIGKILLs.
pub fn stop_child(child: &mut Child, sig: Signal, grace: Duration) -> String {
    if let Ok(Some(st)) = child.try_wait() {
        return format!("had already exited ({st})");
    }
    // The pid of our own unreaped child: it cannot have been reused.
    let _ = rustix::process::kill_process(Pid::from_child(child), sig);
    let until = Instant::now() + grace;
    while Instant::now() < until {
        match child.try_wait() {
            Ok(Some(st)) => return format!("stopped ({st})"),
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => return format!("wait error: {e}"),
        }
    }
    let _ = child.kill();
    match child.wait() {
        Ok(st) => format!("did not stop within {grace:?}; SIGKILLed ({st})"),
        Err(e) => format!("wait error after SIGKILL: {e}"),
    }
}

/// A command for a server: `program args`, carrying `marker` in its
/// environment, without `JOBD_LOG`, with stdin from /dev/null.
pub fn marked_command(program: &Path, args: &[OsString], marker: &str) -> Command {
    let mut c = Command::new(program);
    c.args(args)
        .env(MARKER_ENV, marker)
        .env_remove("JOBD_LOG")
        .stdin(Stdio::null());
    c
}

fn spawn_logged(
    program: &Path,
    args: &[OsString],
    envs: &[(&str, &str)],
    marker: &str,
    log: &Path,
) -> Result<Child, String> {
    let out = File::create(log).map_err(|e| format!("create {}: {e}", log.display()))?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    let mut c = marked_command(program, args, marker);
    c.stdout(Stdio::from(out)).stderr(Stdio::from(err));
    for (k, v) in envs {
        c.env(k, v);
    }
    c.spawn()
        .map_err(|e| format!("spawn {}: {e}", program.display()))
}

/// Checks `ready` every 10 ms until it gives a value. If the child exits or
/// `timeout` passes first, stops it (SIGTERM, SIGKILL after 5 s), kills
/// whatever carries `marker`, and returns how the child ended.
fn await_ready<T>(
    child: &mut Child,
    marker: &str,
    timeout: Duration,
    mut ready: impl FnMut(&Child) -> Option<T>,
) -> Result<T, String> {
    let until = Instant::now() + timeout;
    loop {
        if let Some(v) = ready(child) {
            return Ok(v);
        }
        let exited = matches!(child.try_wait(), Ok(Some(_)));
        if exited || Instant::now() >= until {
            let how = stop_child(child, Signal::TERM, Duration::from_secs(5));
            kill_marked(marker);
            return Err(how);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The jobd binary of this build.
pub fn jobd_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_jobd"))
}

/// Starts the jobd binary with `args` and waits for its `listening on`
/// line.
pub fn spawn_jobd(
    name: &str,
    args: &[OsString],
    dir: &Path,
    timeout: Duration,
) -> Result<Spawned, String> {
    spawn_jobd_like(name, jobd_bin(), args, &[], dir, timeout)
}

/// Starts a server that logs `listening on IP:PORT` (jobd, or this bench
/// re-executed as a library server) and waits for that line.
pub fn spawn_jobd_like(
    name: &str,
    program: &Path,
    args: &[OsString],
    envs: &[(&str, &str)],
    dir: &Path,
    timeout: Duration,
) -> Result<Spawned, String> {
    let marker = new_marker(name);
    let log = dir.join(format!("{}.log", name.replace('/', "_")));
    let mut child = spawn_logged(program, args, envs, &marker, &log)?;
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    match await_ready(&mut child, &marker, timeout, |_| {
        parse_listening(&read_log())
    }) {
        Ok(addr) => Ok(Spawned {
            name: name.into(),
            child,
            addr,
            log,
            marker,
        }),
        Err(how) => Err(format!(
            "{name}: no `listening on` line ({how}); log: {}",
            last_lines(&read_log(), 4)
        )),
    }
}

/// Reads one line (at most 128 bytes) from `s`, byte by byte so that
/// nothing after the newline is consumed.
pub fn read_line(mut s: &std::net::TcpStream) -> io::Result<String> {
    let mut buf = Vec::with_capacity(32);
    let mut b = [0u8; 1];
    while buf.len() < 128 {
        match s.read(&mut b)? {
            0 => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "EOF")),
            _ if b[0] == b'\n' => break,
            _ => buf.push(b[0]),
        }
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// Reads a job's first line, two pids (the handler's `$$ $!`).
pub fn read_pid_pair(s: &std::net::TcpStream) -> Result<(i32, i32), String> {
    let line = read_line(s).map_err(|e| format!("reading the pid line: {e}"))?;
    let pids: Vec<i32> = line
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    match pids[..] {
        [a, b] => Ok((a, b)),
        _ => Err(format!("pid line {line:?}")),
    }
}

/// The first `listening on IP:PORT` in a log.
pub fn parse_listening(text: &str) -> Option<SocketAddr> {
    for line in text.lines() {
        if let Some(i) = line.find("listening on ") {
            let rest = &line[i + "listening on ".len()..];
            if let Some(a) = rest
                .split_whitespace()
                .next()
                .and_then(|w| w.trim_matches(|c| c == '"' || c == ',').parse().ok())
            {
                return Some(a);
            }
        }
    }
    None
}

/// Starts a server that takes its port on the command line (tcpserver,
/// socat): picks a free port, substitutes it for `{port}` in the arguments,
/// and waits until the process holds a LISTEN socket on it. Retries with
/// another port (up to 3 times) if the server exits at once.
pub fn spawn_on_free_port(
    name: &str,
    program: &Path,
    args: &[String],
    dir: &Path,
    timeout: Duration,
) -> Result<Spawned, String> {
    let mut last = String::new();
    for attempt in 0..3 {
        let port = free_port().map_err(|e| format!("free port: {e}"))?;
        let args: Vec<OsString> = args
            .iter()
            .map(|a| OsString::from(a.replace("{port}", &port.to_string())))
            .collect();
        let marker = new_marker(name);
        let log = dir.join(format!("{}-{attempt}.log", name.replace('/', "_")));
        let mut child = spawn_logged(program, &args, &[], &marker, &log)?;
        match await_ready(&mut child, &marker, timeout, |c| {
            holds_listener(c.id() as i32, port).then_some(())
        }) {
            Ok(()) => {
                return Ok(Spawned {
                    name: name.into(),
                    child,
                    addr: SocketAddr::from(([127, 0, 0, 1], port)),
                    log,
                    marker,
                });
            }
            Err(how) => {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                last = format!(
                    "{name}: not listening on port {port} ({how}); log: {}",
                    last_lines(&text, 3)
                );
            }
        }
    }
    Err(last)
}

/// Machine and kernel, for the report.
pub fn machine_line() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let n = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{n} x {cpu}, Linux {}", kernel.trim())
}

/// The socket's cookie (`SO_COOKIE`), the key of a sock_diag lookup.
pub fn socket_cookie(s: impl AsFd) -> io::Result<u64> {
    Ok(rustix::net::sockopt::socket_cookie(s)?)
}

/// SO_LINGER 0: closing the socket sends a reset (and leaves no
/// TIME_WAIT), not a FIN.
pub fn reset_on_close(s: impl AsFd) -> io::Result<()> {
    Ok(rustix::net::sockopt::set_socket_linger(
        s,
        Some(Duration::ZERO),
    )?)
}

/// A new IPv4 TCP socket, close-on-exec.
pub fn tcp4_socket() -> nix::Result<OwnedFd> {
    socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
}

/// A blocking listener on 127.0.0.1, port 0, with an explicit backlog
/// (and SO_REUSEADDR if `reuse_addr`).
pub fn loopback_listener(backlog: Backlog, reuse_addr: bool) -> nix::Result<TcpListener> {
    let fd = tcp4_socket()?;
    if reuse_addr {
        setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    }
    let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);
    bind(fd.as_raw_fd(), &SockaddrStorage::from(addr))?;
    listen(&fd, backlog)?;
    Ok(TcpListener::from(fd))
}

/// TCP sockets in this network namespace (every dump walks them all): all
/// of them, and those in TIME_WAIT (left by other programs' connections),
/// counted from `/proc/net/tcp` and `/proc/net/tcp6`.
pub fn namespace_sockets() -> (usize, usize) {
    let mut all = 0;
    let mut tw = 0;
    for p in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(p).unwrap_or_default();
        for l in text.lines().skip(1) {
            all += 1;
            if l.split_whitespace().nth(3) == Some("06") {
                tw += 1;
            }
        }
    }
    (all, tw)
}

/// One kind of scan, timed.
pub struct ScanTimes {
    /// The time of each timed scan, sorted.
    pub times: Vec<Duration>,
    /// Entries returned, fewest and most over the timed scans.
    pub entries: (usize, usize),
}

impl ScanTimes {
    /// The middle time (the upper one of the middle two for an even count).
    pub fn median(&self) -> Duration {
        self.times[self.times.len() / 2]
    }

    pub fn p99(&self) -> Duration {
        percentile(&self.times, 0.99).unwrap_or_default()
    }
}

/// Runs `scan` three times untimed, then `iters` (at least 1) times timed,
/// each time into the cleared `out`.
pub fn time_scans(
    iters: usize,
    out: &mut Vec<SockEntry>,
    mut scan: impl FnMut(&mut Vec<SockEntry>) -> Result<(), String>,
) -> Result<ScanTimes, String> {
    for _ in 0..3 {
        out.clear();
        scan(out)?;
    }
    let iters = iters.max(1);
    let mut times = Vec::with_capacity(iters);
    let mut entries = (usize::MAX, 0);
    for _ in 0..iters {
        out.clear();
        let t = Instant::now();
        scan(out)?;
        times.push(t.elapsed());
        entries = (entries.0.min(out.len()), entries.1.max(out.len()));
    }
    times.sort_unstable();
    Ok(ScanTimes { times, entries })
}

/// A scan for [`time_scans`]: one dump of `src` for `port` and `states`.
pub fn dump_of<'a>(
    src: &'a mut dyn SocketSource,
    port: u16,
    states: u32,
) -> impl FnMut(&mut Vec<SockEntry>) -> Result<(), String> + 'a {
    move |out| src.dump(port, states, out).map_err(|e| e.to_string())
}

/// The `Accept` header Prometheus sends: OpenMetrics first, which jobd
/// then answers in (a body that ends in `# EOF`).
pub const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0;q=0.5,\
     application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.1";

/// The first `metrics on IP:PORT` (jobd's `--metrics-listen` address) in
/// a log.
pub fn parse_metrics_on(text: &str) -> Option<SocketAddr> {
    text.lines().find_map(|line| {
        let i = line.find("metrics on ")?;
        line[i + "metrics on ".len()..]
            .split_whitespace()
            .next()?
            .trim_matches(|c| c == '"' || c == ',')
            .parse()
            .ok()
    })
}

impl Spawned {
    /// The address of jobd's `--metrics-listen` server, from its `metrics
    /// on` line (logged just after `listening on`), waiting up to
    /// `timeout` for it.
    pub fn metrics_addr(&self, timeout: Duration) -> Result<SocketAddr, String> {
        let until = Instant::now() + timeout;
        loop {
            if let Some(a) = parse_metrics_on(&self.log_text()) {
                return Ok(a);
            }
            if Instant::now() >= until {
                return Err(format!(
                    "{}: no `metrics on` line within {timeout:?}; log: {}",
                    self.name,
                    last_lines(&self.log_text(), 4)
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// An HTTP answer.
pub struct HttpReply {
    pub status: u16,
    pub body: Vec<u8>,
    /// From the start of `connect` to the end of the answer (EOF).
    pub elapsed: Duration,
}

/// One `GET path HTTP/1.1` (`Connection: close`, with `accept` as the
/// `Accept` header if given), the whole exchange bounded by `timeout` and
/// the answer by `max` bytes; reads until EOF.
pub fn http_get(
    addr: SocketAddr,
    path: &str,
    accept: Option<&str>,
    timeout: Duration,
    max: usize,
) -> Result<HttpReply, String> {
    use std::io::Write;
    let t0 = Instant::now();
    let until = t0 + timeout;
    let left = || {
        until
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1))
    };
    let mut s = std::net::TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| format!("connect: {e}"))?;
    let accept = accept.map_or(String::new(), |a| format!("Accept: {a}\r\n"));
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{accept}Connection: close\r\n\r\n");
    s.set_write_timeout(Some(left()))
        .and_then(|()| s.write_all(req.as_bytes()))
        .map_err(|e| format!("send: {e}"))?;
    let mut buf = Vec::with_capacity(16 * 1024);
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if Instant::now() >= until {
            return Err(format!("no complete answer within {timeout:?}"));
        }
        s.set_read_timeout(Some(left()))
            .map_err(|e| format!("set timeout: {e}"))?;
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if buf.len() > max {
                    return Err(format!("answer longer than {max} bytes"));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(format!("read after {} bytes: {e}", buf.len()));
            }
        }
    }
    let elapsed = t0.elapsed();
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Err(if buf.is_empty() {
            "closed without an answer (EOF)".into()
        } else {
            format!("no header end in {} bytes", buf.len())
        });
    };
    let status = std::str::from_utf8(&buf[..end])
        .ok()
        .and_then(|h| h.split_whitespace().nth(1)?.parse().ok())
        .ok_or_else(|| {
            format!(
                "bad status line {:?}",
                String::from_utf8_lossy(&buf[..end.min(40)])
            )
        })?;
    Ok(HttpReply {
        status,
        body: buf[end + 4..].to_vec(),
        elapsed,
    })
}

/// One scrape as Prometheus makes it: `GET /metrics` with its `Accept`
/// header; it succeeds on a 200 whose body ends in `# EOF`. Returns the
/// latency (connect to EOF).
pub fn scrape_metrics(addr: SocketAddr, timeout: Duration) -> Result<Duration, String> {
    let r = http_get(addr, "/metrics", Some(PROMETHEUS_ACCEPT), timeout, 4 << 20)?;
    if r.status != 200 {
        return Err(format!("status {}", r.status));
    }
    if !r.body.ends_with(b"# EOF\n") {
        return Err(format!(
            "body ({} bytes) does not end in `# EOF`",
            r.body.len()
        ));
    }
    Ok(r.elapsed)
}

/// The scrapes of one [`spawn_scraper`] thread.
#[derive(Clone, Default)]
pub struct Scrapes {
    /// Latencies of the successful scrapes, ms, in order.
    pub ok_ms: Vec<f64>,
    pub failed: usize,
    pub first_error: Option<String>,
}

impl Scrapes {
    pub fn total(&self) -> usize {
        self.ok_ms.len() + self.failed
    }

    fn sorted(&self) -> Vec<f64> {
        let mut v = self.ok_ms.clone();
        v.sort_by(f64::total_cmp);
        v
    }

    /// p50 of the successful scrapes' latencies, ms (NaN if none).
    pub fn p50_ms(&self) -> f64 {
        percentile(&self.sorted(), 0.5).unwrap_or(f64::NAN)
    }

    /// The slowest successful scrape, ms (NaN if none).
    pub fn max_ms(&self) -> f64 {
        self.sorted().last().copied().unwrap_or(f64::NAN)
    }

    pub fn merge(&mut self, o: &Scrapes) {
        self.ok_ms.extend_from_slice(&o.ok_ms);
        self.failed += o.failed;
        if self.first_error.is_none() {
            self.first_error.clone_from(&o.first_error);
        }
    }
}

/// A thread that scrapes `addr` (see [`scrape_metrics`], each bounded by
/// `timeout`) at `start`, `start + period`, ... while before `until` and
/// `stop` is not set. Scrapes do not overlap: one that overruns its period
/// delays the next.
pub fn spawn_scraper(
    addr: SocketAddr,
    start: Instant,
    period: Duration,
    until: Instant,
    timeout: Duration,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<Scrapes> {
    std::thread::spawn(move || {
        let mut out = Scrapes::default();
        let mut next = start;
        loop {
            let now = Instant::now();
            if now >= until || stop.load(std::sync::atomic::Ordering::Relaxed) {
                break;
            }
            if now < next {
                std::thread::sleep((next - now).min(Duration::from_millis(50)));
                continue;
            }
            match scrape_metrics(addr, timeout) {
                Ok(d) => out.ok_ms.push(d.as_secs_f64() * 1e3),
                Err(e) => {
                    out.failed += 1;
                    if out.first_error.is_none() {
                        out.first_error = Some(e);
                    }
                }
            }
            next += period;
            if next < Instant::now() {
                next = Instant::now();
            }
        }
        out
    })
}

/// Removes a cgroup directory and its child cgroups, deepest first (only
/// empty cgroups can go); the ones that could not be removed.
pub fn remove_cgroup_tree(base: &Path) -> Result<(), Vec<String>> {
    fn walk(d: &Path, out: &mut Vec<PathBuf>) {
        if let Ok(rd) = std::fs::read_dir(d) {
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    walk(&e.path(), out);
                }
            }
        }
        out.push(d.to_path_buf());
    }
    let mut dirs = Vec::new();
    walk(base, &mut dirs);
    let failed: Vec<String> = dirs
        .iter()
        .filter(|d| std::fs::remove_dir(d).is_err())
        .map(|d| d.display().to_string())
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(failed)
    }
}

/// A figure rounded to two decimals for the `JSON ` lines (null when not
/// finite).
pub fn round2(x: f64) -> serde_json::Value {
    if x.is_finite() {
        serde_json::json!((x * 100.0).round() / 100.0)
    } else {
        serde_json::Value::Null
    }
}
