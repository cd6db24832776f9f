//! Hang-up → job-gone latency of the real `jobd` binary.
//!
//! For each variant (detector × worker watch, plus resets with the scan
//! alone), the bench starts `jobd --prefork C` on a free loopback port with a
//! handler script that starts `sleep 300 &`, prints `$$ $!` (its own pid and
//! the sleep's) and `wait`s: each job is a tree of two processes. C client
//! threads each loop: connect, read the pid line, open pidfds on both pids,
//! wait a random 0–50 ms, take t0, close the socket (FIN, or RST through
//! SO_LINGER 0), and poll the pidfds until both processes have exited. The
//! latency is the time from t0 to the exit of the last of the two. A finished
//! client is replaced at once, so about C jobs run all the time.
//!
//! A job process that dies *before* its client hung up is counted as
//! `died_early` (a wrong kill), and one still alive 10 s after the hang-up as
//! `not_gone`.
//!
//! Environment: `CANCEL_N` (cancellations per variant, default 200),
//! `CANCEL_CONCURRENCY` (default 32), `CANCEL_DEADLINE_S` (hard deadline per
//! variant, default 60), `CANCEL_VARIANTS` (comma-separated variant names to
//! run, default all), `CANCEL_LOG_DIR` (write each variant's jobd log
//! there).
//!
//! Output: a table, one `JSON ` line per variant, and PASS/MISS against the
//! targets (p99 ≤ 25 ms with the worker watch; ≤ check interval + 25 ms by
//! the periodic scan alone). The targets are information, not assertions.
//!
//! Cleanup: jobd is stopped with SIGTERM (by the PID of the child this bench
//! started) and waited for; job processes still alive are killed through the
//! pidfds the clients opened, and any process that carries this run's marker
//! in its environment (inherited from jobd) is killed after a pidfd is opened
//! on it and the marker checked again.

mod common;

use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{
    env_usize, jobd_bin, kill_marked, marked_command, new_marker, parse_listening, percentile,
    pidfd_exited, pidfd_open, pidfd_signal, poll_exited, read_pid_pair, reset_on_close,
    rusage_cpu_s, stop_child, thread_cpu_s, write_script,
};
use nix::sys::resource::UsageWho;
use rustix::process::Signal;

const CHECK_INTERVAL: Duration = Duration::from_millis(100);
const WATCH_TARGET_MS: f64 = 25.0;
/// Longest wait for the job to go after a hang-up.
const GONE_TIMEOUT: Duration = Duration::from_secs(10);
/// Random delay between the pid line and the hang-up: 0 to this.
const MAX_DELAY_MS: u64 = 50;
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

const HANDLER: &str = "#!/bin/sh\nsleep 300 &\necho \"$$ $!\"\nwait\n";

#[derive(Clone, Copy)]
struct Variant {
    name: &'static str,
    detector: &'static str,
    worker_watch: bool,
    reset: bool,
}

const VARIANTS: &[Variant] = &[
    Variant {
        name: "sock-diag/watch-on/fin",
        detector: "sock-diag",
        worker_watch: true,
        reset: false,
    },
    Variant {
        name: "sock-diag/watch-off/fin",
        detector: "sock-diag",
        worker_watch: false,
        reset: false,
    },
    Variant {
        name: "procfs/watch-on/fin",
        detector: "procfs",
        worker_watch: true,
        reset: false,
    },
    Variant {
        name: "procfs/watch-off/fin",
        detector: "procfs",
        worker_watch: false,
        reset: false,
    },
    Variant {
        name: "sock-diag/watch-off/rst",
        detector: "sock-diag",
        worker_watch: false,
        reset: true,
    },
    Variant {
        name: "procfs/watch-off/rst",
        detector: "procfs",
        worker_watch: false,
        reset: true,
    },
];

impl Variant {
    fn target_ms(&self) -> f64 {
        if self.worker_watch {
            WATCH_TARGET_MS
        } else {
            CHECK_INTERVAL.as_secs_f64() * 1e3 + WATCH_TARGET_MS
        }
    }
}

fn main() -> std::process::ExitCode {
    let n = env_usize("CANCEL_N", 200).max(1);
    let conc = env_usize("CANCEL_CONCURRENCY", 32).clamp(1, 1000);
    let deadline = Duration::from_secs(env_usize("CANCEL_DEADLINE_S", 60) as u64);
    let only: Option<Vec<String>> = std::env::var("CANCEL_VARIANTS")
        .ok()
        .map(|s| s.split(',').map(|v| v.trim().to_string()).collect());
    let dir = tempfile::tempdir().expect("temp dir");
    let handler = write_script(dir.path(), "handler.sh", HANDLER).expect("write handler");

    let started = Instant::now();
    println!(
        "cancel_latency: {n} cancellations per variant, {conc} concurrent jobs, \
         check interval {} ms, deadline {} s per variant",
        CHECK_INTERVAL.as_millis(),
        deadline.as_secs()
    );
    let mut reports = Vec::new();
    for v in VARIANTS {
        if only
            .as_ref()
            .is_some_and(|o| !o.iter().any(|x| x == v.name))
        {
            continue;
        }
        let r = run_variant(v, &handler, n, conc, deadline);
        print_problems(&r);
        reports.push(r);
    }
    print_table(&reports);
    for r in &reports {
        println!("JSON {}", r.json());
    }
    println!(
        "cancel_latency: total wall time {:.1} s",
        started.elapsed().as_secs_f64()
    );
    std::process::ExitCode::SUCCESS
}

/// What one client saw.
enum ClientResult {
    /// Both processes gone; latency from the hang-up.
    Gone(Duration),
    /// A job process exited before its client hung up.
    DiedEarly(String),
    /// Still alive `GONE_TIMEOUT` after the hang-up (pidfds kept for cleanup).
    NotGone(String),
    /// Connect, read or pidfd failure.
    Error(String),
}

#[derive(Default)]
struct Shared {
    results: Vec<ClientResult>,
    /// pidfds of job processes that did not exit in time.
    leftovers: Vec<OwnedFd>,
    /// CPU seconds of the client threads.
    client_cpu_s: f64,
}

struct Report {
    variant: Variant,
    requested: usize,
    latencies_ms: Vec<f64>,
    died_early: Vec<String>,
    not_gone: Vec<String>,
    errors: Vec<String>,
    timed_out: bool,
    log_cancelled: usize,
    log_seen_watch: usize,
    log_seen_scan: usize,
    log_ended_sigkill: usize,
    log_ended_cancelled: usize,
    log_problems: Vec<String>,
    /// jobd's own `seen_after_ms` of each `job cancelled` line, sorted.
    log_seen_after_ms: Vec<f64>,
    leftovers_killed: usize,
    jobd_exit: String,
    wall_s: f64,
    /// CPU seconds (user + system) of this bench, of its client threads,
    /// and of jobd's reaped tree.
    bench_cpu_s: f64,
    client_cpu_s: f64,
    jobd_cpu_s: f64,
}

impl Report {
    fn pct(&self, p: f64) -> Option<f64> {
        percentile(&self.latencies_ms, p)
    }

    fn verdict(&self) -> &'static str {
        match self.pct(0.99) {
            Some(p99) if p99 <= self.variant.target_ms() && self.latencies_ms.len() >= 2 => "PASS",
            _ => "MISS",
        }
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "bench": "cancel_latency",
            "variant": self.variant.name,
            "detector": self.variant.detector,
            "worker_watch": self.variant.worker_watch,
            "close": if self.variant.reset { "rst" } else { "fin" },
            "check_interval_ms": CHECK_INTERVAL.as_millis() as u64,
            "requested": self.requested,
            "n": self.latencies_ms.len(),
            "p50_ms": self.pct(0.50),
            "p90_ms": self.pct(0.90),
            "p99_ms": self.pct(0.99),
            "max_ms": self.pct(1.0),
            "cancelled_in_log": self.log_cancelled,
            "seen_by_worker_watch": self.log_seen_watch,
            "seen_by_scan": self.log_seen_scan,
            "log_seen_after_p50_ms": percentile(&self.log_seen_after_ms, 0.50),
            "log_seen_after_p99_ms": percentile(&self.log_seen_after_ms, 0.99),
            "ended_cancelled": self.log_ended_cancelled,
            "ended_by_sigkill": self.log_ended_sigkill,
            "died_early": self.died_early.len(),
            "not_gone": self.not_gone.len(),
            "errors": self.errors.len(),
            "leftovers_killed": self.leftovers_killed,
            "timed_out": self.timed_out,
            "jobd_exit": self.jobd_exit,
            "target_p99_ms": self.variant.target_ms(),
            "result": self.verdict(),
            "wall_s": (self.wall_s * 100.0).round() / 100.0,
            "bench_cpu_s": (self.bench_cpu_s * 100.0).round() / 100.0,
            "client_threads_cpu_s": (self.client_cpu_s * 100.0).round() / 100.0,
            "jobd_cpu_s": (self.jobd_cpu_s * 100.0).round() / 100.0,
        })
    }
}

fn run_variant(v: &Variant, handler: &Path, n: usize, conc: usize, deadline: Duration) -> Report {
    let t_start = Instant::now();
    let hard_deadline = t_start + deadline;
    let marker = new_marker(v.name);
    let mut report = Report {
        variant: *v,
        requested: n,
        latencies_ms: Vec::new(),
        died_early: Vec::new(),
        not_gone: Vec::new(),
        errors: Vec::new(),
        timed_out: false,
        log_cancelled: 0,
        log_seen_watch: 0,
        log_seen_scan: 0,
        log_ended_sigkill: 0,
        log_ended_cancelled: 0,
        log_problems: Vec::new(),
        log_seen_after_ms: Vec::new(),
        leftovers_killed: 0,
        jobd_exit: String::new(),
        wall_s: 0.0,
        bench_cpu_s: -rusage_cpu_s(UsageWho::RUSAGE_SELF),
        client_cpu_s: 0.0,
        jobd_cpu_s: -rusage_cpu_s(UsageWho::RUSAGE_CHILDREN),
    };
    eprintln!("--- variant {} ---", v.name);
    let args = jobd_args(v, handler, conc);
    let mut server = match start_server(&args, &marker) {
        Ok(s) => s,
        Err(StartError { msg, log }) => {
            for l in &log {
                eprintln!("    jobd: {l}");
            }
            report.errors.push(format!("binary: {msg}"));
            return finish(report, t_start);
        }
    };
    let addr = server.addr;
    let shared = Arc::new(Mutex::new(Shared::default()));
    {
        let tickets = Arc::new(AtomicUsize::new(0));
        let mut clients = Vec::with_capacity(conc);
        for i in 0..conc {
            let tickets = Arc::clone(&tickets);
            let shared = Arc::clone(&shared);
            let reset = v.reset;
            clients.push(thread::spawn(move || {
                client_loop(i, addr, reset, n, &tickets, hard_deadline, &shared)
            }));
        }
        for c in clients {
            let _ = c.join();
        }
        report.timed_out = tickets.load(Ordering::Relaxed) < n;
    }

    // Stop jobd: SIGTERM to the child we started (not yet reaped, so its pid
    // is still ours), then wait; SIGKILL if it does not exit.
    report.jobd_exit = stop_child(&mut server.child, Signal::TERM, STOP_TIMEOUT);

    // Anything still alive among the job processes we know of.
    let mut shared = std::mem::take(&mut *shared.lock().unwrap());
    report.client_cpu_s = shared.client_cpu_s;
    for fd in shared.leftovers.drain(..) {
        if !pidfd_exited(&fd) {
            let _ = pidfd_signal(&fd, Signal::KILL);
            report.leftovers_killed += 1;
        }
    }
    // And any process carrying this run's marker (jobd's descendants).
    for pid in kill_marked(&marker) {
        eprintln!("    left over after jobd stopped: pid {pid}; killed");
        report.leftovers_killed += 1;
    }

    // The pipe closes once every holder of jobd's stderr is gone.
    if server.eof.recv_timeout(Duration::from_secs(5)).is_ok() {
        let _ = server.reader.join();
    } else {
        report
            .errors
            .push("jobd's stderr still open 5 s after it exited".into());
    }

    for r in shared.results {
        match r {
            ClientResult::Gone(d) => report.latencies_ms.push(d.as_secs_f64() * 1e3),
            ClientResult::DiedEarly(s) => report.died_early.push(s),
            ClientResult::NotGone(s) => report.not_gone.push(s),
            ClientResult::Error(s) => report.errors.push(s),
        }
    }
    report.latencies_ms.sort_by(f64::total_cmp);

    for line in server.lines.lock().unwrap().iter() {
        if line.contains("disconnect detection on") {
            let want_d = format!("detector=\"{}\"", v.detector);
            let want_w = format!("worker_watch={}", v.worker_watch);
            if !line.contains(&want_d) || !line.contains(&want_w) {
                report
                    .errors
                    .push(format!("jobd runs another configuration: {line}"));
            }
        }
        if line.contains("job cancelled") {
            report.log_cancelled += 1;
            if let Some(ms) = field(line, "seen_after_ms=").and_then(|x| x.parse().ok()) {
                report.log_seen_after_ms.push(ms);
            }
            if line.contains("seen_by=\"worker-watch\"") {
                report.log_seen_watch += 1;
            } else if line.contains("seen_by=\"scan\"") {
                report.log_seen_scan += 1;
            }
        }
        if line.contains("job ended") && line.contains("outcome=cancelled") {
            report.log_ended_cancelled += 1;
            if line.contains("signal SIGKILL") {
                report.log_ended_sigkill += 1;
            }
        }
        if line.contains(" WARN ") || line.contains(" ERROR ") {
            report.log_problems.push(line.clone());
        }
    }
    report.log_seen_after_ms.sort_by(f64::total_cmp);
    if let Some(dir) = std::env::var_os("CANCEL_LOG_DIR") {
        let path = Path::new(&dir).join(format!("{}.log", v.name.replace('/', "_")));
        let mut text = server.lines.lock().unwrap().join("\n");
        text.push('\n');
        if let Err(e) = std::fs::write(&path, text) {
            eprintln!("    could not write {}: {e}", path.display());
        }
    }
    finish(report, t_start)
}

/// The value of `name` (which includes the `=`) in a text log line.
fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let rest = &line[line.find(name)? + name.len()..];
    Some(rest.split_whitespace().next()?.trim_matches('"'))
}

fn finish(mut report: Report, t_start: Instant) -> Report {
    report.wall_s = t_start.elapsed().as_secs_f64();
    report.bench_cpu_s += rusage_cpu_s(UsageWho::RUSAGE_SELF);
    report.jobd_cpu_s += rusage_cpu_s(UsageWho::RUSAGE_CHILDREN);
    eprintln!(
        "    {} samples in {:.1} s (CPU: bench {:.2} s of which clients {:.2} s, jobd tree {:.2} s); jobd: {}",
        report.latencies_ms.len(),
        report.wall_s,
        report.bench_cpu_s,
        report.client_cpu_s,
        report.jobd_cpu_s,
        report.jobd_exit
    );
    report
}

/// The `jobd` binary, started by this bench; its stderr is read here.
struct Server {
    child: Child,
    addr: SocketAddr,
    lines: Arc<Mutex<Vec<String>>>,
    eof: mpsc::Receiver<()>,
    reader: thread::JoinHandle<()>,
}

struct StartError {
    msg: String,
    log: Vec<String>,
}

fn jobd_args(v: &Variant, handler: &Path, conc: usize) -> Vec<OsString> {
    let mut a: Vec<OsString> = [
        "--listen",
        "127.0.0.1:0",
        "--prefork",
        &conc.to_string(),
        "--detector",
        v.detector,
        "--worker-watch",
        if v.worker_watch { "on" } else { "off" },
        "--check-interval",
        "100ms",
        "--grace",
        "2s",
        "--script",
    ]
    .iter()
    .map(OsString::from)
    .collect();
    a.push(handler.as_os_str().to_owned());
    a
}

fn start_server(args: &[OsString], marker: &str) -> Result<Server, StartError> {
    let mut child = marked_command(jobd_bin(), args, marker)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| StartError {
            msg: format!("spawn: {e}"),
            log: Vec::new(),
        })?;
    // stderr: keep every line; the first "listening on" gives the port.
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let (port_tx, port_rx) = mpsc::channel::<SocketAddr>();
    let (eof_tx, eof_rx) = mpsc::channel::<()>();
    let stderr = child.stderr.take().expect("piped stderr");
    let reader = {
        let lines = Arc::clone(&lines);
        thread::spawn(move || {
            let mut port_tx = Some(port_tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(tx) = &port_tx
                    && let Some(addr) = parse_listening(&line)
                {
                    let _ = tx.send(addr);
                    port_tx = None;
                }
                lines.lock().unwrap().push(line);
            }
            let _ = eof_tx.send(());
        })
    };
    match port_rx.recv_timeout(STARTUP_TIMEOUT) {
        Ok(addr) => Ok(Server {
            child,
            addr,
            lines,
            eof: eof_rx,
            reader,
        }),
        Err(_) => {
            let exit = stop_child(&mut child, Signal::TERM, STOP_TIMEOUT);
            let _ = eof_rx.recv_timeout(Duration::from_secs(2));
            let log = lines.lock().unwrap().clone();
            Err(StartError {
                msg: format!("no `listening on` line; jobd {exit}"),
                log,
            })
        }
    }
}

/// A small xorshift generator: enough for random delays.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn client_loop(
    idx: usize,
    addr: SocketAddr,
    reset: bool,
    n: usize,
    tickets: &AtomicUsize,
    deadline: Instant,
    shared: &Mutex<Shared>,
) {
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        ^ ((idx as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut rng = Rng::new(seed);
    // A bounded loop: at most n tickets in all, and never past the deadline.
    for _ in 0..n {
        if Instant::now() >= deadline || tickets.fetch_add(1, Ordering::Relaxed) >= n {
            break;
        }
        let delay = Duration::from_millis(rng.below(MAX_DELAY_MS + 1));
        let (res, leftover) = one_job(addr, reset, delay, deadline);
        let mut s = shared.lock().unwrap();
        s.results.push(res);
        s.leftovers.extend(leftover);
    }
    shared.lock().unwrap().client_cpu_s += thread_cpu_s();
}

/// One client: returns its result and the pidfds of processes that outlived
/// the wait.
fn one_job(
    addr: SocketAddr,
    reset: bool,
    delay: Duration,
    deadline: Instant,
) -> (ClientResult, Vec<OwnedFd>) {
    let err = |what: &str, e: &dyn std::fmt::Display| {
        (ClientResult::Error(format!("{what}: {e}")), Vec::new())
    };
    let stream = match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
        Ok(s) => s,
        Err(e) => return err("connect", &e),
    };
    if reset && let Err(e) = reset_on_close(&stream) {
        return err("SO_LINGER", &e);
    }
    // Wait for the pid line no longer than the deadline (plus a little, as
    // a job may wait for a free worker).
    let read_limit = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_secs(1))
        .min(Duration::from_secs(30));
    if let Err(e) = stream.set_read_timeout(Some(read_limit)) {
        return err("set_read_timeout", &e);
    }
    let (handler, sleeper) = match read_pid_pair(&stream) {
        Ok(p) => p,
        Err(e) => return (ClientResult::Error(e), Vec::new()),
    };
    let mut fds = Vec::with_capacity(2);
    for pid in [handler, sleeper] {
        match pidfd_open(pid) {
            Ok(fd) => fds.push(fd),
            Err(e) => {
                // The job cannot have ended on its own: it was killed before
                // its client hung up.
                return (
                    ClientResult::DiedEarly(format!(
                        "pid {pid} (job {handler}/{sleeper}) gone before the hang-up: {e}"
                    )),
                    fds,
                );
            }
        }
    }
    // Stay connected for `delay`, watching that the job stays alive.
    let close_at = Instant::now() + delay;
    loop {
        let now = Instant::now();
        if now >= close_at {
            break;
        }
        let all: Vec<&OwnedFd> = fds.iter().collect();
        let exited = poll_exited(&all, close_at - now);
        if exited.iter().any(|&x| x) {
            let rest = fds
                .into_iter()
                .zip(&exited)
                .filter(|(_, e)| !**e)
                .map(|(f, _)| f)
                .collect();
            return (
                ClientResult::DiedEarly(format!(
                    "job {handler}/{sleeper}: exited {:?} before the hang-up",
                    exited
                )),
                rest,
            );
        }
    }
    let t0 = Instant::now();
    drop(stream); // close(): FIN, or RST with SO_LINGER 0
    let until = t0 + GONE_TIMEOUT;
    let mut gone = [false; 2];
    loop {
        let now = Instant::now();
        if now >= until {
            let rest = fds
                .into_iter()
                .zip(gone)
                .filter(|(_, g)| !*g)
                .map(|(f, _)| f)
                .collect();
            return (
                ClientResult::NotGone(format!(
                    "job {handler}/{sleeper}: alive {} s after the hang-up (gone: {gone:?})",
                    GONE_TIMEOUT.as_secs()
                )),
                rest,
            );
        }
        // Poll only the processes still alive: an exited one stays readable.
        let idx: Vec<usize> = (0..fds.len()).filter(|&i| !gone[i]).collect();
        let live: Vec<&OwnedFd> = idx.iter().map(|&i| &fds[i]).collect();
        let exited = poll_exited(&live, until - now);
        for (&i, e) in idx.iter().zip(exited) {
            gone[i] |= e;
        }
        if gone.iter().all(|&g| g) {
            return (ClientResult::Gone(t0.elapsed()), Vec::new());
        }
    }
}

fn print_problems(r: &Report) {
    let show = |what: &str, v: &[String]| {
        if !v.is_empty() {
            println!("  {}: {what}: {} (first 5 below)", r.variant.name, v.len());
            for s in v.iter().take(5) {
                println!("    {s}");
            }
        }
    };
    show("job died before its client hung up", &r.died_early);
    show("job not gone after the hang-up", &r.not_gone);
    show("client errors", &r.errors);
    show("jobd WARN/ERROR log lines", &r.log_problems);
}

fn fmt_ms(x: Option<f64>) -> String {
    x.map(|v| format!("{v:.1}")).unwrap_or_else(|| "-".into())
}

fn print_table(reports: &[Report]) {
    println!();
    println!(
        "{:<24} {:>5} {:>8} {:>8} {:>8} {:>8} {:>9} {:>11} {:>8} {:>5} {:>8}  result",
        "variant",
        "n",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms",
        "log canc",
        "watch/scan",
        "SIGKILL",
        "bad",
        "target"
    );
    for r in reports {
        println!(
            "{:<24} {:>5} {:>8} {:>8} {:>8} {:>8} {:>9} {:>11} {:>8} {:>5} {:>8}  {}{}",
            r.variant.name,
            r.latencies_ms.len(),
            fmt_ms(r.pct(0.50)),
            fmt_ms(r.pct(0.90)),
            fmt_ms(r.pct(0.99)),
            fmt_ms(r.pct(1.0)),
            r.log_cancelled,
            format!("{}/{}", r.log_seen_watch, r.log_seen_scan),
            r.log_ended_sigkill,
            r.died_early.len() + r.not_gone.len() + r.errors.len(),
            format!("≤{:.0}", r.variant.target_ms()),
            r.verdict(),
            if r.timed_out { " (deadline hit)" } else { "" },
        );
    }
    println!(
        "columns: log canc = `job cancelled` lines in jobd's log; watch/scan = their seen_by; \
         SIGKILL = cancelled jobs that ended by SIGKILL (after --kill-grace); \
         bad = died early + not gone + client errors"
    );
}
