//! Hostile clients of the metrics port: what do they cost jobd's jobs, its
//! supervisor, a well-behaved scraper and its signal handling?
//!
//! `--metrics-listen` runs its HTTP server inside the supervisor's own poll
//! loop (at most 16 connections, a request within 2 s and 8 KiB), so a
//! client of the metrics port that misbehaves is a client of the loop that
//! also reaps workers and acts on signals. One jobd serves every phase:
//! `jobd --prefork 4 --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0
//! --scoreboard FILE --script H`, H the shell echo handler (`read -r l;
//! echo "$l"`). The phases, in this order, each measured over a window of
//! `METRICS_SECS` (default 3) seconds, each hostile one right after a
//! baseline window of its own (`baseline1` before `idle-once`, ...; the
//! ratio to the baseline is to that one: the machine's load of the moment):
//!
//! - **`baseline`**: nothing hostile;
//! - **`idle-once`**: `METRICS_IDLE` (default 1000) connections to the
//!   metrics port are opened before the window (one after the other; the
//!   metrics listener's backlog is 64, so a burst takes seconds of SYN
//!   retransmits) and send nothing; none is opened again (jobd keeps 16 at
//!   a time, closes the others at once, and answers the 16 with a 408 after
//!   2 s);
//! - **`idle-held`**: the same, but a connection that jobd closes is opened
//!   again (at most 1000 re-opens per second, at most
//!   `METRICS_IDLE_REOPENS`, default 20000, per phase): 1000 idle clients
//!   held for the whole window, as a slowloris attacker does
//!   (`METRICS_IDLE=16 METRICS_PHASES=idle-held` shows that 16 are enough);
//! - **`big-lines`**: 2 threads, each in a loop of connections that write
//!   1 MiB of `A` without a newline (at most `METRICS_BIG_MAX`, default
//!   2000, connections in all), reading whatever comes back;
//! - **`garbage`**: 2 threads in a tight loop of connections that each send
//!   one bad request (unknown or lower-case methods, HTTP/0.9 and HTTP/2
//!   prefaces, binary junk, a path that is not served; every one ends in
//!   CRLF CRLF) and read the answer (at most `METRICS_GARBAGE_MAX`, default
//!   100000, connections in all).
//!
//! Hostile clients start before the window (the idle ones are all open
//! before it starts) and stop after it; then the bench waits until a scrape
//! succeeds again and the minimum of workers is back to 4 before the next
//! phase.
//!
//! Measured in each window:
//! - jobs/s of `METRICS_CLIENTS` (default 3; fewer than the 4 workers, so
//!   that the pool seldom grows by itself) client threads in a loop:
//!   connect, send one line, read to EOF, check the echo; and its ratio to
//!   the baseline's;
//! - the supervisor's CPU (utime + stime of its pid from `/proc/PID/stat`,
//!   10 ms ticks), % of one core; beside it the hostile threads' own CPU
//!   (schedstat) and the machine's busy share, since on a small machine the
//!   hostile clients take CPU from the jobs whatever jobd does;
//! - a well-behaved scraper: `GET /metrics` as Prometheus sends it every
//!   100 ms (each bounded by 2 s), ok when a 200 ends in `# EOF`: ok / made,
//!   latency p50 and max of the successful ones, the first failure;
//! - signals: at 0.25 s into the window SIGTTIN (through a pidfd), then the
//!   time until the scoreboard (`jobd::status::read`, independent of the
//!   metrics port) shows the minimum raised to 5 and at least 5 live
//!   workers (more may live: the pool also grows by itself while every
//!   worker is busy; read every 1 ms), and until `/status.json` shows it
//!   too (tried every 10 ms, each bounded by 500 ms); then SIGTTOU and the
//!   time until the minimum is back to 4 (each wait bounded by
//!   `METRICS_SIGNAL_S`, default 2);
//! - what the hostile clients saw, per connection: EOF without an answer,
//!   a reset, a status (400 / 404 / 405 / 408 / 431 / other), no answer
//!   within the client's own limit (5 s), still open at the end (held by
//!   us), or a failed connect; and (big-lines) how many bytes the socket
//!   took before jobd closed it.
//!
//! Before the phases two probes of the HTTP server, printed as information:
//! a `GET /metrics` followed by a half-close (`shutdown(SHUT_WR)`, as
//! `nc -N` or an HTTP/1.0 client does), and a request with bare LF line
//! ends. Before and after the phases, the supervisor's CPU over 1 s with
//! nothing going on (a loop left spinning would show there).
//!
//! `METRICS_PHASES` (comma-separated phase names) picks the hostile phases
//! (each still with its baseline; `baseline` alone runs one baseline);
//! `METRICS_LOG_DIR` keeps jobd's log there. jobd is stopped by pid at the
//! end (SIGINT, SIGKILL after 10 s), then whatever carries the run's marker
//! is killed.
//!
//! Output: progress on stderr; tables, `JSON ` lines (one per phase) and
//! PASS/MISS lines on stdout. The targets are information, not assertions.

mod common;

use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use common::*;
use rustix::event::{PollFd, PollFlags, Timespec, poll};
use rustix::process::Signal;

/// The request line of the echo clients; the reply must be the same bytes.
const LINE: &[u8] = b"jobd metrics_cost bench: one line to echo\n";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const IO_TIMEOUT: Duration = Duration::from_secs(10);
const START_TIMEOUT: Duration = Duration::from_secs(15);
const STOP_GRACE: Duration = Duration::from_secs(10);
/// The well-behaved scraper's period and per-scrape limit.
const SCRAPE_EVERY: Duration = Duration::from_millis(100);
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);
/// A hostile connection that gets no answer within this counts as
/// `timeout` (jobd's own limit is 2 s).
const HOSTILE_LIMIT: Duration = Duration::from_secs(5);
/// The size of a big request line, and of each write.
const BIG: usize = 1 << 20;
const CHUNK: usize = 64 << 10;
/// The workers jobd starts with (`--prefork`).
const PREFORK: u32 = 4;

/// The bad requests of the garbage phase (each ends in CRLF CRLF, so jobd
/// can answer it at once).
const GARBAGE: &[&[u8]] = &[
    b"BREW /metrics HTTP/1.1\r\n\r\n",
    b"DELETE /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
    b"get /metrics HTTP/1.1\r\n\r\n",
    b"GET /metrics\r\n\r\n",
    b"GET /metrics HTTP/1.1 extra\r\n\r\n",
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03 not tls\r\n\r\n",
    b"\x00\xff\xfe garbage \x7f\x80\r\n\r\n",
    b"GET /../../etc/passwd HTTP/1.1\r\n\r\n",
    b"POST /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
];

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    Baseline,
    IdleOnce,
    IdleHeld,
    BigLines,
    Garbage,
}

impl Phase {
    const ALL: [Phase; 5] = [
        Phase::Baseline,
        Phase::IdleOnce,
        Phase::IdleHeld,
        Phase::BigLines,
        Phase::Garbage,
    ];

    fn name(self) -> &'static str {
        match self {
            Phase::Baseline => "baseline",
            Phase::IdleOnce => "idle-once",
            Phase::IdleHeld => "idle-held",
            Phase::BigLines => "big-lines",
            Phase::Garbage => "garbage",
        }
    }
}

struct Cfg {
    secs: Duration,
    clients: usize,
    idle: usize,
    idle_reopens: usize,
    big_max: usize,
    garbage_max: usize,
    signal_limit: Duration,
}

/// What a hostile client saw on one connection.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Seen {
    Eof,
    Reset,
    S200,
    S400,
    S404,
    S405,
    S408,
    S431,
    SOther,
    Timeout,
    OpenAtEnd,
    ConnectFailed,
}

const SEEN: [Seen; 12] = [
    Seen::Eof,
    Seen::Reset,
    Seen::S200,
    Seen::S400,
    Seen::S404,
    Seen::S405,
    Seen::S408,
    Seen::S431,
    Seen::SOther,
    Seen::Timeout,
    Seen::OpenAtEnd,
    Seen::ConnectFailed,
];

impl Seen {
    fn name(self) -> &'static str {
        match self {
            Seen::Eof => "eof",
            Seen::Reset => "reset",
            Seen::S200 => "200",
            Seen::S400 => "400",
            Seen::S404 => "404",
            Seen::S405 => "405",
            Seen::S408 => "408",
            Seen::S431 => "431",
            Seen::SOther => "other",
            Seen::Timeout => "timeout",
            Seen::OpenAtEnd => "open@end",
            Seen::ConnectFailed => "conn-fail",
        }
    }

    /// From the bytes read before EOF or an error (`reset`: the read ended
    /// with a reset).
    fn of(bytes: &[u8], reset: bool) -> Seen {
        if bytes.starts_with(b"HTTP/1.") {
            let code = std::str::from_utf8(&bytes[..bytes.len().min(16)])
                .ok()
                .and_then(|h| h.split_whitespace().nth(1)?.parse::<u16>().ok());
            return match code {
                Some(200) => Seen::S200,
                Some(400) => Seen::S400,
                Some(404) => Seen::S404,
                Some(405) => Seen::S405,
                Some(408) => Seen::S408,
                Some(431) => Seen::S431,
                _ => Seen::SOther,
            };
        }
        match (bytes.is_empty(), reset) {
            (true, true) => Seen::Reset,
            (true, false) => Seen::Eof,
            (false, _) => Seen::SOther,
        }
    }
}

/// What the hostile clients of one phase did and saw.
#[derive(Clone, Default)]
struct Hostile {
    /// Connections made (connected).
    opened: usize,
    seen: [usize; SEEN.len()],
    /// The hostile threads' CPU, seconds.
    cpu_s: f64,
    /// Big lines: bytes jobd's socket took, summed, and connections that
    /// took the whole 1 MiB.
    bytes_sent: u64,
    full_mib: usize,
    /// Idle: the time to open the first `n` connections, and the slowest
    /// connect among them, ms.
    open_ms: f64,
    slowest_connect_ms: f64,
}

impl Hostile {
    fn count(&mut self, s: Seen) {
        self.seen[SEEN.iter().position(|&x| x == s).unwrap_or(0)] += 1;
    }

    fn get(&self, s: Seen) -> usize {
        self.seen[SEEN.iter().position(|&x| x == s).unwrap_or(0)]
    }

    fn merge(&mut self, o: &Hostile) {
        self.opened += o.opened;
        for (a, b) in self.seen.iter_mut().zip(o.seen) {
            *a += b;
        }
        self.cpu_s += o.cpu_s;
        self.bytes_sent += o.bytes_sent;
        self.full_mib += o.full_mib;
        self.open_ms = self.open_ms.max(o.open_ms);
        self.slowest_connect_ms = self.slowest_connect_ms.max(o.slowest_connect_ms);
    }
}

/// The signal check of one window.
#[derive(Clone, Default)]
struct Signals {
    /// SIGTTIN to the minimum at 5 and 5 workers in the scoreboard, ms.
    ttin_ms: Option<f64>,
    /// SIGTTIN to `/status.json` showing it, ms.
    ttin_http_ms: Option<f64>,
    /// SIGTTOU to the minimum back at 4 in the scoreboard, ms.
    ttou_ms: Option<f64>,
    /// Live workers just before SIGTTIN, and when it was seen acted on.
    workers_before: Option<usize>,
    workers_after: Option<usize>,
    /// `/status.json` requests tried, and failed.
    http_tries: usize,
    http_failed: usize,
    error: Option<String>,
}

/// One phase's measurements.
#[derive(Clone)]
struct Outcome {
    phase: Phase,
    /// `baselineN` (before the N-th hostile phase) or the phase's name.
    label: String,
    /// jobs/s of the baseline window just before (hostile phases).
    base_jobs_per_s: Option<f64>,
    jobs: usize,
    errors: usize,
    first_error: Option<String>,
    jobs_per_s: f64,
    p99_ms: f64,
    sup_cpu_pct: f64,
    /// The same from schedstat (exact, ns), % of one core.
    sup_sched_pct: f64,
    machine_pct: f64,
    hostile: Hostile,
    scrapes: Scrapes,
    signals: Signals,
    /// Time to the first good scrape after the hostile clients stopped.
    recovered_ms: Option<f64>,
    wall_s: f64,
    alive: bool,
}

fn main() -> std::process::ExitCode {
    let t_all = Instant::now();
    let cfg = Cfg {
        secs: env_secs("METRICS_SECS", 3.0),
        clients: env_usize("METRICS_CLIENTS", 3).clamp(1, 64),
        idle: env_usize("METRICS_IDLE", 1000).clamp(1, 15000),
        idle_reopens: env_usize("METRICS_IDLE_REOPENS", 20000),
        big_max: env_usize("METRICS_BIG_MAX", 2000).max(1),
        garbage_max: env_usize("METRICS_GARBAGE_MAX", 100_000).max(1),
        signal_limit: env_secs("METRICS_SIGNAL_S", 2.0),
    };
    let picked: Vec<String> = std::env::var("METRICS_PHASES")
        .unwrap_or_default()
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    for p in &picked {
        if !Phase::ALL.iter().any(|ph| ph.name() == p) {
            eprintln!("METRICS_PHASES: unknown phase {p:?}");
            return std::process::ExitCode::from(2);
        }
    }
    // Each hostile phase right after a baseline window of its own: on a
    // noisy machine the ratio is to the load of the moment.
    let mut phases: Vec<Phase> = Vec::new();
    for p in Phase::ALL.iter().copied().filter(|&p| p != Phase::Baseline) {
        if picked.is_empty() || picked.iter().any(|n| n == p.name()) {
            phases.extend([Phase::Baseline, p]);
        }
    }
    if phases.is_empty() {
        phases.push(Phase::Baseline);
    }
    let need = cfg.idle as u64 + 1024;
    let nofile = match raise_nofile(need) {
        Ok(n) => format!("{n}"),
        Err(e) => {
            println!("metrics_cost: {e}: the idle phases may fail to connect");
            "too low".into()
        }
    };

    let tmp = tempfile::tempdir().expect("temp dir");
    let dir: PathBuf = match std::env::var_os("METRICS_LOG_DIR") {
        Some(d) => {
            let d = PathBuf::from(d);
            std::fs::create_dir_all(&d).expect("METRICS_LOG_DIR");
            d
        }
        None => tmp.path().to_path_buf(),
    };
    let sh = write_script(tmp.path(), "echo.sh", SH_ECHO).expect("write echo.sh");
    let scoreboard = tmp.path().join("scoreboard");

    println!("metrics_cost: {}", machine_line());
    println!(
        "metrics_cost: jobd --prefork {PREFORK} --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 --scoreboard FILE --script echo.sh"
    );
    println!(
        "metrics_cost: window {:.1} s per phase, {} echo clients, scrape every {} ms, {} idle connections (re-opens at most {}), big lines at most {} x 1 MiB, garbage at most {}; RLIMIT_NOFILE {nofile}",
        cfg.secs.as_secs_f64(),
        cfg.clients,
        SCRAPE_EVERY.as_millis(),
        cfg.idle,
        cfg.idle_reopens,
        cfg.big_max,
        cfg.garbage_max
    );

    let args: Vec<OsString> = vec![
        "--prefork".into(),
        PREFORK.to_string().into(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--metrics-listen".into(),
        "127.0.0.1:0".into(),
        "--scoreboard".into(),
        scoreboard.clone().into(),
        "--script".into(),
        sh.into(),
    ];
    let srv = match spawn_jobd("jobd-metrics", &args, &dir, START_TIMEOUT) {
        Ok(s) => s,
        Err(e) => {
            println!("metrics_cost: cannot start jobd: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    let pid = srv.pid();
    let maddr = match srv.metrics_addr(START_TIMEOUT) {
        Ok(a) => a,
        Err(e) => {
            println!("metrics_cost: {e}");
            println!(
                "metrics_cost: jobd: {}",
                srv.stop_with(Signal::INT, STOP_GRACE)
            );
            return std::process::ExitCode::from(1);
        }
    };
    eprintln!("jobd pid {pid} on {}, metrics on {maddr}", srv.addr);
    let pidfd = match pidfd_open(pid) {
        Ok(fd) => fd,
        Err(e) => {
            println!("metrics_cost: pidfd_open({pid}): {e}");
            println!(
                "metrics_cost: jobd: {}",
                srv.stop_with(Signal::INT, STOP_GRACE)
            );
            return std::process::ExitCode::from(1);
        }
    };

    if let Err(e) = wait_workers(&scoreboard, PREFORK, Duration::from_secs(10)) {
        println!("metrics_cost: {e}");
    }
    // Warm-up, not recorded.
    let w = echo_load(
        srv.addr,
        cfg.clients,
        Instant::now() + Duration::from_millis(500),
    );
    if w.errors > 0 {
        println!(
            "metrics_cost: warm-up: {} errors ({})",
            w.errors,
            w.first_error.unwrap_or_default()
        );
    }
    for (what, r) in probes(maddr) {
        println!("metrics_cost: probe: {what}: {r}");
    }
    let quiet_before = quiet_cpu_pct(pid);

    let mut outcomes: Vec<Outcome> = Vec::new();
    let mut nbase = 0;
    for &ph in &phases {
        if pidfd_exited(&pidfd) {
            println!(
                "metrics_cost: jobd has exited; {} and later phases skipped",
                ph.name()
            );
            break;
        }
        eprintln!("--- {} ---", ph.name());
        let mut o = run_phase(ph, &cfg, srv.addr, maddr, pid, &pidfd, &scoreboard);
        if ph == Phase::Baseline {
            nbase += 1;
            o.label = format!("baseline{nbase}");
        } else {
            o.base_jobs_per_s = outcomes
                .last()
                .filter(|b| b.phase == Phase::Baseline)
                .map(|b| b.jobs_per_s);
        }
        eprintln!(
            "{:<10} {:>7.0} jobs/s err {} sup cpu {:.1}% scrapes {}/{} p50 {:.2} max {:.2} ms ttin {} ms (http {}) ttou {} ms hostile opened {}",
            o.label,
            o.jobs_per_s,
            o.errors,
            o.sup_cpu_pct,
            o.scrapes.ok_ms.len(),
            o.scrapes.total(),
            o.scrapes.p50_ms(),
            o.scrapes.max_ms(),
            opt(o.signals.ttin_ms, 1),
            opt(o.signals.ttin_http_ms, 1),
            opt(o.signals.ttou_ms, 1),
            o.hostile.opened
        );
        let alive = o.alive;
        outcomes.push(o);
        if !alive {
            println!("metrics_cost: jobd died during {}", ph.name());
            break;
        }
    }
    let quiet_after = quiet_cpu_pct(pid);
    let alive_at_end = !pidfd_exited(&pidfd);
    let last_log = last_lines(&srv.log_text(), 3);
    let marker = srv.marker.clone();
    let how = srv.stop_with(Signal::INT, STOP_GRACE);
    eprintln!("stopped jobd: {how}");

    report(&outcomes, &cfg);
    println!();
    println!(
        "metrics_cost: supervisor CPU with nothing going on, 1 s: before the phases {}%, after {}%",
        opt(quiet_before, 1),
        opt(quiet_after, 1)
    );
    println!(
        "JSON {}",
        serde_json::json!({"bench": "metrics_cost", "kind": "quiet",
            "sup_cpu_pct_before": quiet_before.map(round2),
            "sup_cpu_pct_after": quiet_after.map(round2)})
    );
    println!(
        "metrics_cost: jobd {} at the end; stopped by pid (SIGINT): {how}",
        if alive_at_end { "alive" } else { "NOT alive" }
    );
    if !alive_at_end {
        println!("metrics_cost: jobd's last log lines: {last_log}");
    }
    let left = marked_pids(&marker);
    println!(
        "metrics_cost: processes of this run left after the stop: {}",
        if left.is_empty() {
            "none".to_string()
        } else {
            format!("{left:?}")
        }
    );
    println!(
        "metrics_cost: total wall time {:.1} s",
        t_all.elapsed().as_secs_f64()
    );
    std::process::ExitCode::SUCCESS
}

fn opt(v: Option<f64>, prec: usize) -> String {
    v.filter(|x| x.is_finite())
        .map_or("-".into(), |x| format!("{x:.prec$}"))
}

/// The supervisor's CPU over 1 s of nothing, % of one core.
fn quiet_cpu_pct(pid: i32) -> Option<f64> {
    let a = proc_runtime_ns(pid)?;
    let t = Instant::now();
    thread::sleep(Duration::from_secs(1));
    let b = proc_runtime_ns(pid)?;
    Some(b.saturating_sub(a) as f64 / 1e9 / t.elapsed().as_secs_f64() * 100.0)
}

/// Waits until the scoreboard shows a minimum of `n` workers and at least
/// `n` live (more may live: the pool grows while every worker is busy, and
/// the extra ones retire after `--idle-timeout`).
fn wait_workers(scoreboard: &Path, n: u32, limit: Duration) -> Result<(), String> {
    let until = Instant::now() + limit;
    let mut last = String::from("no scoreboard");
    while Instant::now() < until {
        match jobd::status::read(scoreboard) {
            Ok(st) if st.totals.min_workers == n && st.totals.workers >= n as usize => {
                return Ok(());
            }
            Ok(st) => {
                last = format!(
                    "min {} workers {}",
                    st.totals.min_workers, st.totals.workers
                )
            }
            Err(e) => last = e.to_string(),
        }
        thread::sleep(Duration::from_millis(10));
    }
    Err(format!("workers not at {n} within {limit:?} ({last})"))
}

/// The two probes of the HTTP server: (what, result).
fn probes(maddr: SocketAddr) -> Vec<(&'static str, String)> {
    let raw = |req: &[u8], half_close: bool| -> String {
        let t0 = Instant::now();
        let mut s = match TcpStream::connect_timeout(&maddr, CONNECT_TIMEOUT) {
            Ok(s) => s,
            Err(e) => return format!("connect: {e}"),
        };
        let _ = s.set_read_timeout(Some(HOSTILE_LIMIT));
        if let Err(e) = s.write_all(req) {
            return format!("send: {e}");
        }
        if half_close {
            let _ = s.shutdown(Shutdown::Write);
        }
        let mut buf = Vec::new();
        let mut chunk = [0u8; 16384];
        let err = loop {
            match s.read(&mut chunk) {
                Ok(0) => break None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Some(e),
            }
        };
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        let first = buf.split(|&b| b == b'\r').next().unwrap_or(&[]);
        match (buf.is_empty(), err) {
            (true, None) => format!("closed without an answer (EOF) after {ms:.1} ms"),
            (true, Some(e)) => format!("no answer: {e} after {ms:.1} ms"),
            (false, _) => format!(
                "{:?} ({} bytes) after {ms:.1} ms",
                String::from_utf8_lossy(first),
                buf.len()
            ),
        }
    };
    vec![
        (
            "GET /metrics HTTP/1.0 then shutdown(SHUT_WR) (expected: 200)",
            raw(b"GET /metrics HTTP/1.0\r\n\r\n", true),
        ),
        (
            "GET /metrics HTTP/1.1 with bare LF line ends (expected: 200 or 400 at once)",
            raw(b"GET /metrics HTTP/1.1\nHost: x\n\n", false),
        ),
    ]
}

/// Runs one phase: hostile clients (if any) up, the window, hostile
/// clients down, recovery.
fn run_phase(
    ph: Phase,
    cfg: &Cfg,
    addr: SocketAddr,
    maddr: SocketAddr,
    pid: i32,
    pidfd: &std::os::fd::OwnedFd,
    scoreboard: &Path,
) -> Outcome {
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = mpsc::channel::<()>();
    let hostile: Vec<JoinHandle<Hostile>> = match ph {
        Phase::Baseline => {
            let _ = ready_tx.send(());
            Vec::new()
        }
        Phase::IdleOnce | Phase::IdleHeld => {
            let (stop, n) = (Arc::clone(&stop), cfg.idle);
            let reopens = if ph == Phase::IdleHeld {
                cfg.idle_reopens
            } else {
                0
            };
            vec![thread::spawn(move || {
                idle_hostile(maddr, n, reopens, &stop, &ready_tx)
            })]
        }
        Phase::BigLines | Phase::Garbage => {
            let tickets = Arc::new(AtomicUsize::new(0));
            let max = if ph == Phase::BigLines {
                cfg.big_max
            } else {
                cfg.garbage_max
            };
            let hs = (0..2)
                .map(|_| {
                    let (stop, tickets) = (Arc::clone(&stop), Arc::clone(&tickets));
                    thread::spawn(move || {
                        if ph == Phase::BigLines {
                            big_hostile(maddr, max, &tickets, &stop)
                        } else {
                            garbage_hostile(maddr, max, &tickets, &stop)
                        }
                    })
                })
                .collect();
            // Let them get going.
            thread::sleep(Duration::from_millis(200));
            let _ = ready_tx.send(());
            hs
        }
    };
    if ready_rx.recv_timeout(Duration::from_secs(20)).is_err() {
        eprintln!(
            "{}: hostile clients not ready within 20 s; measuring anyway",
            ph.name()
        );
    }

    let ticks0 = proc_cpu_ticks(pid);
    let sched0 = proc_runtime_ns(pid);
    let m0 = machine_jiffies();
    let t0 = Instant::now();
    let end = t0 + cfg.secs;
    let scraper = spawn_scraper(
        maddr,
        t0,
        SCRAPE_EVERY,
        end,
        SCRAPE_TIMEOUT,
        Arc::new(AtomicBool::new(false)),
    );
    let signals = {
        let pidfd = pidfd.try_clone();
        let sb = scoreboard.to_path_buf();
        let limit = cfg.signal_limit;
        thread::spawn(move || match pidfd {
            Ok(fd) => signal_check(&fd, &sb, maddr, t0 + Duration::from_millis(250), limit),
            Err(e) => Signals {
                error: Some(format!("pidfd dup: {e}")),
                ..Signals::default()
            },
        })
    };
    let load = echo_load(addr, cfg.clients, end);
    let wall = t0.elapsed().as_secs_f64();
    let ticks1 = proc_cpu_ticks(pid);
    let sched1 = proc_runtime_ns(pid);
    let m1 = machine_jiffies();
    let scrapes = scraper.join().unwrap_or_default();
    let signals = signals.join().unwrap_or_else(|_| Signals {
        error: Some("signal thread panicked".into()),
        ..Signals::default()
    });

    stop.store(true, Ordering::Relaxed);
    let t_stop = Instant::now();
    let mut h = Hostile::default();
    for t in hostile {
        if let Ok(x) = t.join() {
            h.merge(&x);
        }
    }
    // Recovery: a good scrape, and the pool back at its minimum.
    let mut recovered_ms = None;
    while t_stop.elapsed() < Duration::from_secs(10) && !pidfd_exited(pidfd) {
        if scrape_metrics(maddr, SCRAPE_TIMEOUT).is_ok() {
            recovered_ms = Some(t_stop.elapsed().as_secs_f64() * 1e3);
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
    if let Err(e) = wait_workers(scoreboard, PREFORK, Duration::from_secs(5)) {
        eprintln!("{}: after the phase: {e}", ph.name());
    }
    let dt = (m1.1.saturating_sub(m0.1)).max(1) as f64;
    Outcome {
        phase: ph,
        label: ph.name().to_string(),
        base_jobs_per_s: None,
        jobs: load.jobs,
        errors: load.errors,
        first_error: load.first_error,
        jobs_per_s: load.jobs as f64 / cfg.secs.as_secs_f64(),
        p99_ms: load.p99_ms,
        sup_cpu_pct: ticks1.zip(ticks0).map_or(f64::NAN, |(b, a)| {
            b.saturating_sub(a) as f64 / clk_tck() / wall * 100.0
        }),
        sup_sched_pct: sched1.zip(sched0).map_or(f64::NAN, |(b, a)| {
            b.saturating_sub(a) as f64 / 1e9 / wall * 100.0
        }),
        machine_pct: m1.0.saturating_sub(m0.0) as f64 / dt * 100.0,
        hostile: h,
        scrapes,
        signals,
        recovered_ms,
        wall_s: wall,
        alive: !pidfd_exited(pidfd),
    }
}

/// SIGTTIN at `at`, then the minimum at 5 and 5 workers in the scoreboard
/// and in `/status.json`; then SIGTTOU and the minimum back at 4. Each
/// wait bounded by `limit`.
fn signal_check(
    pidfd: &std::os::fd::OwnedFd,
    scoreboard: &Path,
    maddr: SocketAddr,
    at: Instant,
    limit: Duration,
) -> Signals {
    let mut s = Signals::default();
    if let Some(d) = at.checked_duration_since(Instant::now()) {
        thread::sleep(d);
    }
    let raised = |min: u32, workers: usize| min == PREFORK + 1 && workers > PREFORK as usize;
    s.workers_before = jobd::status::read(scoreboard)
        .ok()
        .map(|st| st.totals.workers);
    let t = Instant::now();
    if let Err(e) = pidfd_signal(pidfd, Signal::TTIN) {
        s.error = Some(format!("SIGTTIN: {e}"));
        return s;
    }
    // The scoreboard every 1 ms here; /status.json every 10 ms in a
    // thread of its own (a request may take up to 500 ms).
    let (ttin_http, tries, failed) = thread::scope(|sc| {
        let web = sc.spawn(|| {
            let (mut tries, mut failed) = (0, 0);
            while t.elapsed() < limit {
                tries += 1;
                match status_json_workers(maddr) {
                    Ok((min, w)) if raised(min, w) => {
                        return (Some(t.elapsed().as_secs_f64() * 1e3), tries, failed);
                    }
                    Ok(_) => {}
                    Err(_) => failed += 1,
                }
                thread::sleep(Duration::from_millis(10));
            }
            (None, tries, failed)
        });
        while t.elapsed() < limit {
            if let Ok(st) = jobd::status::read(scoreboard)
                && raised(st.totals.min_workers, st.totals.workers)
            {
                s.ttin_ms = Some(t.elapsed().as_secs_f64() * 1e3);
                s.workers_after = Some(st.totals.workers);
                break;
            }
            thread::sleep(Duration::from_millis(1));
        }
        web.join().unwrap_or((None, 0, 0))
    });
    s.ttin_http_ms = ttin_http;
    s.http_tries = tries;
    s.http_failed = failed;
    if s.ttin_ms.is_none() {
        s.error = Some(format!("SIGTTIN not acted on within {limit:?}"));
    }
    let t = Instant::now();
    if let Err(e) = pidfd_signal(pidfd, Signal::TTOU) {
        s.error = Some(format!("SIGTTOU: {e}"));
        return s;
    }
    while t.elapsed() < limit {
        if let Ok(st) = jobd::status::read(scoreboard)
            && st.totals.min_workers == PREFORK
        {
            s.ttou_ms = Some(t.elapsed().as_secs_f64() * 1e3);
            break;
        }
        thread::sleep(Duration::from_millis(1));
    }
    if s.ttou_ms.is_none() && s.error.is_none() {
        s.error = Some(format!("SIGTTOU not acted on within {limit:?}"));
    }
    s
}

/// `totals.min_workers` and `totals.workers` from `/status.json`.
fn status_json_workers(maddr: SocketAddr) -> Result<(u32, usize), String> {
    let r = http_get(
        maddr,
        "/status.json",
        None,
        Duration::from_millis(500),
        4 << 20,
    )?;
    if r.status != 200 {
        return Err(format!("status {}", r.status));
    }
    let v: serde_json::Value = serde_json::from_slice(&r.body).map_err(|e| e.to_string())?;
    let t = &v["totals"];
    match (t["min_workers"].as_u64(), t["workers"].as_u64()) {
        (Some(m), Some(w)) => Ok((m as u32, w as usize)),
        _ => Err("no totals in /status.json".into()),
    }
}

struct Load {
    jobs: usize,
    errors: usize,
    first_error: Option<String>,
    p99_ms: f64,
}

/// `n` echo client threads until `end`: jobs complete before `end`.
fn echo_load(addr: SocketAddr, n: usize, end: Instant) -> Load {
    let hs: Vec<_> = (0..n)
        .map(|_| {
            thread::spawn(move || {
                let mut lat = Vec::new();
                let (mut errors, mut first) = (0, None);
                while Instant::now() < end {
                    let t = Instant::now();
                    match echo_once(addr) {
                        Ok(()) if Instant::now() <= end => {
                            lat.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
                        }
                        Ok(()) => {}
                        Err(e) => {
                            errors += 1;
                            first.get_or_insert_with(|| e.to_string());
                            thread::sleep(Duration::from_millis(1));
                        }
                    }
                }
                (lat, errors, first)
            })
        })
        .collect();
    let mut out = Load {
        jobs: 0,
        errors: 0,
        first_error: None,
        p99_ms: f64::NAN,
    };
    let mut lat = Vec::new();
    for h in hs {
        match h.join() {
            Ok((l, e, f)) => {
                lat.extend(l);
                out.errors += e;
                if out.first_error.is_none() {
                    out.first_error = f;
                }
            }
            Err(_) => out.errors += 1,
        }
    }
    lat.sort_unstable();
    out.jobs = lat.len();
    out.p99_ms = percentile(&lat, 0.99).map_or(f64::NAN, |u| u as f64 / 1e3);
    out
}

fn echo_once(addr: SocketAddr) -> io::Result<()> {
    let mut s = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    s.write_all(LINE)?;
    let mut buf = Vec::with_capacity(64);
    let mut chunk = [0u8; 256];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        if buf.len() > 4096 {
            return Err(io::Error::other("reply too long"));
        }
    }
    if buf != LINE {
        return Err(io::Error::other(format!(
            "bad reply {:?}",
            String::from_utf8_lossy(&buf)
        )));
    }
    Ok(())
}

fn poll_ms(fds: &mut [PollFd<'_>], ms: u64) -> usize {
    let ts = Timespec::try_from(Duration::from_millis(ms)).unwrap_or_default();
    poll(fds, Some(&ts)).unwrap_or(0)
}

/// Reads what a non-blocking socket has: `None` while nothing came (would
/// block), else what the connection ended with.
fn read_end(s: &mut TcpStream) -> Option<Seen> {
    let mut buf = [0u8; 512];
    match s.read(&mut buf) {
        Ok(0) => Some(Seen::Eof),
        Ok(n) => Some(Seen::of(&buf[..n], false)),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
        Err(e) if e.kind() == io::ErrorKind::Interrupted => None,
        // ECONNRESET (or another error on a connection that is gone).
        Err(_) => Some(Seen::Reset),
    }
}

/// `n` connections that send nothing; with `reopens` > 0 one that jobd
/// closes is opened again (at most 100 per 100 ms, at most `reopens` in
/// all). Says `ready` once the first `n` are open.
fn idle_hostile(
    maddr: SocketAddr,
    n: usize,
    reopens: usize,
    stop: &AtomicBool,
    ready: &mpsc::Sender<()>,
) -> Hostile {
    let cpu0 = thread_cpu_s();
    let mut h = Hostile::default();
    let connect = |h: &mut Hostile| -> Option<(TcpStream, Instant)> {
        let t = Instant::now();
        let r = TcpStream::connect_timeout(&maddr, CONNECT_TIMEOUT);
        h.slowest_connect_ms = h.slowest_connect_ms.max(t.elapsed().as_secs_f64() * 1e3);
        match r {
            Ok(s) if s.set_nonblocking(true).is_ok() => {
                h.opened += 1;
                Some((s, Instant::now()))
            }
            _ => {
                h.count(Seen::ConnectFailed);
                None
            }
        }
    };
    let mut conns: Vec<(TcpStream, Instant)> = Vec::with_capacity(n);
    let t_open = Instant::now();
    let open_until = t_open + Duration::from_secs(15);
    while conns.len() < n && Instant::now() < open_until && !stop.load(Ordering::Relaxed) {
        if let Some(c) = connect(&mut h) {
            conns.push(c);
        } else if h.get(Seen::ConnectFailed) > n {
            break;
        }
    }
    h.open_ms = t_open.elapsed().as_secs_f64() * 1e3;
    let _ = ready.send(());
    let mut reopened = 0;
    let mut slice = Instant::now();
    let mut in_slice = 0;
    while !stop.load(Ordering::Relaxed) {
        let mut fds: Vec<PollFd<'_>> = conns
            .iter()
            .map(|(s, _)| PollFd::new(s, PollFlags::IN))
            .collect();
        let hits = poll_ms(&mut fds, 20);
        let ready_ix: Vec<usize> = fds
            .iter()
            .enumerate()
            .filter(|(_, f)| !f.revents().is_empty())
            .map(|(i, _)| i)
            .collect();
        drop(fds);
        if hits > 0 {
            // From the end, so that swap_remove keeps the indexes valid.
            for &i in ready_ix.iter().rev() {
                if let Some(seen) = read_end(&mut conns[i].0) {
                    h.count(seen);
                    conns.swap_remove(i);
                }
            }
        }
        // A connection held past the client's limit without an answer.
        let now = Instant::now();
        let before = conns.len();
        conns.retain(|(_, t)| now.duration_since(*t) < HOSTILE_LIMIT);
        for _ in conns.len()..before {
            h.count(Seen::Timeout);
        }
        if now.duration_since(slice) >= Duration::from_millis(100) {
            slice = now;
            in_slice = 0;
        }
        // Back up to `n` open, within the budgets.
        while conns.len() < n
            && reopened < reopens
            && in_slice < 100
            && !stop.load(Ordering::Relaxed)
        {
            reopened += 1;
            in_slice += 1;
            if let Some(c) = connect(&mut h) {
                conns.push(c);
            }
        }
    }
    for _ in &conns {
        h.count(Seen::OpenAtEnd);
    }
    drop(conns);
    h.cpu_s = thread_cpu_s() - cpu0;
    h
}

/// Connections that each write 1 MiB of `A` without a newline and read
/// what comes back, until `stop` or `max` connections over all threads.
fn big_hostile(maddr: SocketAddr, max: usize, tickets: &AtomicUsize, stop: &AtomicBool) -> Hostile {
    let cpu0 = thread_cpu_s();
    let mut h = Hostile::default();
    let chunk = vec![b'A'; CHUNK];
    while !stop.load(Ordering::Relaxed) && tickets.fetch_add(1, Ordering::Relaxed) < max {
        let mut s = match TcpStream::connect_timeout(&maddr, CONNECT_TIMEOUT) {
            Ok(s) if s.set_nonblocking(true).is_ok() => s,
            _ => {
                h.count(Seen::ConnectFailed);
                thread::sleep(Duration::from_millis(1));
                continue;
            }
        };
        h.opened += 1;
        let until = Instant::now() + HOSTILE_LIMIT;
        let mut sent = 0usize;
        let mut write_failed = false;
        let seen = loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break Seen::Timeout;
            }
            let want_out = sent < BIG && !write_failed;
            let flags = if want_out {
                PollFlags::IN | PollFlags::OUT
            } else {
                PollFlags::IN
            };
            let mut fds = [PollFd::new(&s, flags)];
            poll_ms(&mut fds, left.as_millis().clamp(1, 100) as u64);
            let rev = fds[0].revents();
            if rev.intersects(PollFlags::IN | PollFlags::HUP | PollFlags::ERR) {
                match read_end(&mut s) {
                    Some(seen) => break seen,
                    None if rev.intersects(PollFlags::HUP | PollFlags::ERR) => break Seen::Reset,
                    None => {}
                }
            }
            if want_out && rev.contains(PollFlags::OUT) {
                let n = (BIG - sent).min(CHUNK);
                match s.write(&chunk[..n]) {
                    Ok(k) => sent += k,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    // A reset (or EPIPE): the answer may still be readable.
                    Err(_) => write_failed = true,
                }
            }
            if write_failed && !rev.intersects(PollFlags::IN) {
                break read_end(&mut s).unwrap_or(Seen::Reset);
            }
        };
        h.count(seen);
        h.bytes_sent += sent as u64;
        if sent == BIG {
            h.full_mib += 1;
        }
    }
    h.cpu_s = thread_cpu_s() - cpu0;
    h
}

/// Connections that each send one bad request and read the answer to EOF,
/// until `stop` or `max` connections over all threads.
fn garbage_hostile(
    maddr: SocketAddr,
    max: usize,
    tickets: &AtomicUsize,
    stop: &AtomicBool,
) -> Hostile {
    let cpu0 = thread_cpu_s();
    let mut h = Hostile::default();
    let mut i = 0usize;
    while !stop.load(Ordering::Relaxed) && tickets.fetch_add(1, Ordering::Relaxed) < max {
        let req = GARBAGE[i % GARBAGE.len()];
        i += 1;
        let mut s = match TcpStream::connect_timeout(&maddr, CONNECT_TIMEOUT) {
            Ok(s) => s,
            Err(_) => {
                h.count(Seen::ConnectFailed);
                thread::sleep(Duration::from_millis(1));
                continue;
            }
        };
        h.opened += 1;
        let _ = s.set_read_timeout(Some(HOSTILE_LIMIT));
        let _ = s.set_write_timeout(Some(HOSTILE_LIMIT));
        if s.write_all(req).is_err() {
            // Closed before it took the request: what is there to read?
            let _ = s.set_nonblocking(true);
            h.count(read_end(&mut s).unwrap_or(Seen::Reset));
            continue;
        }
        let mut buf = Vec::with_capacity(256);
        let mut chunk = [0u8; 512];
        let seen = loop {
            match s.read(&mut chunk) {
                Ok(0) => break Seen::of(&buf, false),
                Ok(n) => {
                    if buf.len() < 64 {
                        buf.extend_from_slice(&chunk[..n]);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    break Seen::Timeout;
                }
                Err(_) => break Seen::of(&buf, true),
            }
        };
        h.count(seen);
    }
    h.cpu_s = thread_cpu_s() - cpu0;
    h
}

fn report(outcomes: &[Outcome], cfg: &Cfg) {
    println!();
    println!(
        "{:<10} {:>7} {:>6} {:>4} {:>7} {:>6} {:>6} {:>7} {:>8} {:>8} {:>7} {:>8} {:>7} {:>8}",
        "phase",
        "jobs/s",
        "/base",
        "err",
        "sup%",
        "host%",
        "mach%",
        "scrapes",
        "scr p50",
        "scr max",
        "TTIN",
        "TTIN web",
        "TTOU",
        "recover"
    );
    for o in outcomes {
        let ratio = o.base_jobs_per_s.map(|b| o.jobs_per_s / b);
        println!(
            "{:<10} {:>7.0} {:>6} {:>4} {:>7.1} {:>6.0} {:>6.0} {:>7} {:>8} {:>8} {:>7} {:>8} {:>7} {:>8}",
            o.label,
            o.jobs_per_s,
            ratio.map_or("-".into(), |r| format!("{r:.2}x")),
            o.errors,
            o.sup_cpu_pct,
            o.hostile.cpu_s / o.wall_s.max(1e-9) * 100.0,
            o.machine_pct,
            format!("{}/{}", o.scrapes.ok_ms.len(), o.scrapes.total()),
            opt(Some(o.scrapes.p50_ms()), 2),
            opt(Some(o.scrapes.max_ms()), 2),
            opt(o.signals.ttin_ms, 1),
            opt(o.signals.ttin_http_ms, 1),
            opt(o.signals.ttou_ms, 1),
            opt(o.recovered_ms, 0)
        );
    }
    println!(
        "columns: baselineN = a window without hostile clients, just before the next phase; jobs/s \
         of {} echo clients over the {:.1} s window, /base = over the baseline's just before; \
         err = failed echo jobs; sup% = jobd's supervisor CPU (/proc/PID/stat utime+stime, 10 ms ticks), \
         % of one core; host% = the hostile client threads' own CPU, % of one core; mach% = the whole \
         machine busy, % of all cores; scrapes = GET /metrics every {} ms, ok (200 ending in `# EOF`) / made; \
         scr p50, scr max = latency of the ok ones, ms; TTIN = SIGTTIN to 5 workers and a minimum of 5 in \
         the scoreboard, ms; TTIN web = the same seen in /status.json (tried every 10 ms), ms; TTOU = \
         SIGTTOU to the minimum back at 4, ms ('-' = not within {:.1} s); recover = from the hostile \
         clients' stop to the next good scrape, ms",
        cfg.clients,
        cfg.secs.as_secs_f64(),
        SCRAPE_EVERY.as_millis(),
        cfg.signal_limit.as_secs_f64()
    );

    println!();
    print!("{:<10} {:>7}", "hostile", "opened");
    for s in SEEN {
        print!(" {:>9}", s.name());
    }
    println!(" {:>10} {:>9} {:>9}", "KiB taken", "open ms", "max conn");
    for o in outcomes.iter().filter(|o| o.phase != Phase::Baseline) {
        print!("{:<10} {:>7}", o.phase.name(), o.hostile.opened);
        for s in SEEN {
            print!(" {:>9}", o.hostile.get(s));
        }
        let kib = if o.phase == Phase::BigLines && o.hostile.opened > 0 {
            format!(
                "{:.0}/conn",
                o.hostile.bytes_sent as f64 / 1024.0 / o.hostile.opened as f64
            )
        } else {
            "-".into()
        };
        let idle = matches!(o.phase, Phase::IdleOnce | Phase::IdleHeld);
        let (open, slowest) = if idle {
            (
                format!("{:.0}", o.hostile.open_ms),
                format!("{:.0}", o.hostile.slowest_connect_ms),
            )
        } else {
            ("-".into(), "-".into())
        };
        println!(" {kib:>10} {open:>9} {slowest:>9}");
    }
    println!(
        "columns: per hostile connection, what the client saw: eof = closed without an answer (jobd \
         closes a connection beyond its 16 at once); reset = a reset (closed with our bytes unread); \
         200..431 = that status; other = another answer; timeout = no answer within {} s; open@end = \
         still open (held by us) when the phase ended; conn-fail = connect failed; KiB taken = big \
         lines: bytes the socket took before it was closed, per connection (mostly the kernel's socket \
         buffers: jobd reads about 8 KiB); open ms = idle: time to open the first connections (the \
         metrics listener's backlog is 64: a burst beyond it waits for SYN retransmits), max conn = \
         the slowest connect, ms",
        HOSTILE_LIMIT.as_secs()
    );

    println!();
    for o in outcomes {
        let tag = o.label.as_str();
        if let Some(e) = &o.first_error {
            println!("metrics_cost: {tag}: {} echo errors, first: {e}", o.errors);
        }
        if let Some(e) = &o.scrapes.first_error {
            println!(
                "metrics_cost: {tag}: {} of {} scrapes failed, first: {e}",
                o.scrapes.failed,
                o.scrapes.total()
            );
        }
        if let Some(e) = &o.signals.error {
            println!("metrics_cost: {tag}: signals: {e}");
        }
        if o.signals.http_failed > 0 {
            println!(
                "metrics_cost: {tag}: /status.json during the SIGTTIN wait: {} of {} requests failed",
                o.signals.http_failed, o.signals.http_tries
            );
        }
        if o.hostile.full_mib > 0 {
            println!(
                "metrics_cost: {tag}: {} connections wrote the whole 1 MiB before jobd closed them",
                o.hostile.full_mib
            );
        }
        if !o.alive {
            println!("metrics_cost: {tag}: jobd DIED");
        }
        let seen: serde_json::Map<String, serde_json::Value> = SEEN
            .iter()
            .map(|&s| (s.name().to_string(), serde_json::json!(o.hostile.get(s))))
            .collect();
        println!(
            "JSON {}",
            serde_json::json!({
                "bench": "metrics_cost", "kind": "phase", "phase": o.phase.name(), "label": tag,
                "secs": round2(o.wall_s), "clients": cfg.clients,
                "jobs": o.jobs, "errors": o.errors, "first_error": o.first_error,
                "jobs_per_s": round2(o.jobs_per_s),
                "baseline_jobs_per_s": o.base_jobs_per_s.map(round2),
                "ratio_to_baseline": o.base_jobs_per_s.map(|b| round2(o.jobs_per_s / b)),
                "p99_ms": round2(o.p99_ms),
                "sup_cpu_pct_of_core": round2(o.sup_cpu_pct),
                "sup_cpu_pct_of_core_schedstat": round2(o.sup_sched_pct),
                "hostile_cpu_pct_of_core": round2(o.hostile.cpu_s / o.wall_s.max(1e-9) * 100.0),
                "machine_busy_pct": round2(o.machine_pct),
                "scrapes": {"made": o.scrapes.total(), "ok": o.scrapes.ok_ms.len(),
                    "failed": o.scrapes.failed, "first_error": o.scrapes.first_error,
                    "p50_ms": round2(o.scrapes.p50_ms()), "max_ms": round2(o.scrapes.max_ms())},
                "signals": {"ttin_ms": o.signals.ttin_ms.map(round2),
                    "workers_before": o.signals.workers_before,
                    "workers_when_seen": o.signals.workers_after,
                    "ttin_status_json_ms": o.signals.ttin_http_ms.map(round2),
                    "ttou_ms": o.signals.ttou_ms.map(round2),
                    "status_json_tries": o.signals.http_tries,
                    "status_json_failed": o.signals.http_failed,
                    "error": o.signals.error},
                "hostile": {"opened": o.hostile.opened, "seen": seen,
                    "open_ms": round2(o.hostile.open_ms),
                    "slowest_connect_ms": round2(o.hostile.slowest_connect_ms),
                    "bytes_sent": o.hostile.bytes_sent, "full_mib": o.hostile.full_mib},
                "recovered_ms": o.recovered_ms.map(round2),
                "alive": o.alive,
            })
        );
    }

    println!();
    let line = |name: String, ok: bool, detail: String| {
        let verdict = if ok { "PASS" } else { "MISS" };
        println!("{verdict}  {name}: {detail}");
        println!(
            "JSON {}",
            serde_json::json!({"bench": "metrics_cost", "kind": "target", "target": name,
                "result": verdict, "detail": detail})
        );
    };
    for o in outcomes {
        let tag = o.label.as_str();
        if let Some(b) = o.base_jobs_per_s {
            let r = o.jobs_per_s / b;
            line(
                format!("{tag}: jobs/s >= 0.8x baseline"),
                r >= 0.8,
                format!(
                    "{r:.2}x ({:.0} vs {b:.0} jobs/s; hostile clients' own CPU {:.0}% of a core)",
                    o.jobs_per_s,
                    o.hostile.cpu_s / o.wall_s.max(1e-9) * 100.0
                ),
            );
        }
        line(
            format!("{tag}: every scrape ok"),
            o.scrapes.failed == 0 && o.scrapes.total() > 0,
            format!(
                "{}/{} ok, p50 {} ms, max {} ms",
                o.scrapes.ok_ms.len(),
                o.scrapes.total(),
                opt(Some(o.scrapes.p50_ms()), 2),
                opt(Some(o.scrapes.max_ms()), 2)
            ),
        );
        let sig_ok = o.signals.ttin_ms.is_some_and(|t| t <= 1000.0)
            && o.signals.ttou_ms.is_some_and(|t| t <= 1000.0);
        line(
            format!("{tag}: SIGTTIN and SIGTTOU acted on within 1 s"),
            sig_ok,
            format!(
                "TTIN {} ms (in /status.json {} ms; workers {} before, {} then), TTOU {} ms",
                opt(o.signals.ttin_ms, 1),
                opt(o.signals.ttin_http_ms, 1),
                o.signals
                    .workers_before
                    .map_or("?".into(), |w| w.to_string()),
                o.signals
                    .workers_after
                    .map_or("?".into(), |w| w.to_string()),
                opt(o.signals.ttou_ms, 1)
            ),
        );
        line(
            format!("{tag}: supervisor CPU <= 25% of a core"),
            o.sup_cpu_pct <= 25.0,
            format!("{:.1}%", o.sup_cpu_pct),
        );
    }
}
