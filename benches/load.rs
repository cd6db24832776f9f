//! End-to-end load: jobs/s and latency of jobd beside tcpserver, socat and
//! a bare in-process server, in one run on one machine.
//!
//! The load generator (this program) runs C client threads; each loops:
//! connect to 127.0.0.1, send one line, read until EOF, check the echo, for
//! a fixed duration (`LOAD_SECS`) and under a hard cap of connections per
//! run. A job counts when its reply is complete before the end of the run;
//! its latency runs from the start of `connect` to EOF.
//!
//! Servers (all on loopback, all started here and stopped by pid):
//! - `jobd/sh`, `jobd/c`: `jobd --prefork 4 --script H` (defaults otherwise:
//!   containment by cgroup when jobd can create cgroups, as root);
//!   with H the shell echo handler (`read -r l; echo "$l"`) or a tiny C echo
//!   program built here with `cc -O2 -static`;
//! - `jobd-subreaper/sh`, `jobd-subreaper/c`: the same with
//!   `--containment subreaper`, compared with `jobd/*` (the cost of cgroups);
//! - `jobd-metrics/sh`, `jobd-metrics/c`: the same as `jobd/*` plus
//!   `--metrics-listen 127.0.0.1:0`, and, while each of their runs lasts, a
//!   scraper thread of this program that GETs `/metrics` as Prometheus does
//!   (its `Accept` header, so OpenMetrics) every `LOAD_SCRAPE_MS` (default
//!   1000, from the start of the run; scrapes do not overlap) and checks
//!   that the answer is a 200 ending in `# EOF`. Compared with `jobd/*` (the
//!   cost of serving metrics): the `ratio` column, and a section of its own
//!   with the ratio of medians, the median of the per-round ratios (each
//!   `jobd-metrics/H` run beside the `jobd/H` run of the same round and
//!   concurrency, run just before it), the CPU per job of both, and the
//!   scrapes (ok / made, latency p50 and max);
//! - `ceiling/sh`, `ceiling/c`: the leanest correct prefork exec server,
//!   `benches/ceiling.c` built here with `cc -O2`: 4 worker processes (as
//!   `--prefork 4`) that only `accept4`, `posix_spawn` H with the connection
//!   on fds 0 and 1 in a new process group, close the connection and
//!   `waitpid` it; no scoreboard, no logs, no watch;
//! - `tcpserver-c4/*`, `tcpserver-c64/*`: `tcpserver -c N -b 1024 -H -R -l 0`
//!   (no DNS or ident lookups: tcpserver's fastest setup) with the same H;
//! - `socat/*`: `socat TCP-LISTEN:port,bind=127.0.0.1,fork,reuseaddr,backlog=1024 EXEC:H`;
//! - `jobd-closure`: an echo closure through `jobd::Server::builder()
//!   .prefork(4).job_fn(..)`, in this program re-executed as the server
//!   (jobd forks, so it must start before any thread exists);
//! - `bare-4threads`: the ceiling of the model: 4 threads of this process
//!   accepting on one listener (backlog 1024) and running the same echo.
//!
//! Runs are interleaved: for each round, for each concurrency, every server
//! in turn; the table gives medians over the rounds and ratios of medians:
//! beside each row's own reference, every handler row's jobs/s over
//! `ceiling/H` and over `tcpserver-c4/H` (so `jobd / ceiling` and
//! `jobd / tcpserver` on the `jobd/*` rows).
//! The generator's own CPU (getrusage of this process, and the client
//! threads alone from schedstat) is printed beside the machine's busy share,
//! to show that the generator is not the bottleneck.
//!
//! Environment: `LOAD_SECS` (seconds per run, default 2.5), `LOAD_RUNS`
//! (rounds, default 5), `LOAD_CONC` (default `1,4,32`), `LOAD_SERVERS`
//! (comma-separated names or prefixes of names, default all: `jobd/`
//! selects `jobd/sh` and `jobd/c` only, `jobd-metrics/` the metrics pair,
//! while `jobd` alone selects every `jobd*` server, closure included),
//! `LOAD_SCRAPE_MS` (period of the `/metrics` scrapes of the
//! `jobd-metrics/*` runs, default 1000), `LOAD_MAX_JOBS` (hard
//! cap of connections per run, default 300000), `LOAD_DEADLINE_S` (no new
//! run starts after this, default 840), `LOAD_LOG_DIR` (keep the servers'
//! logs there instead of a temporary directory), `LOAD_JOBD_ARGS` (extra
//! flags for the `jobd*/*` servers, for experiments; printed when set).
//!
//! Output: progress on stderr; a table, `JSON ` lines (one per run, per
//! server and concurrency, per target) and PASS/MISS lines on stdout. The
//! targets are information, not assertions.

mod common;

use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use nix::sys::resource::UsageWho;
use nix::sys::socket::Backlog;

/// Set when this program is re-executed as the library closure server.
const SERVER_ENV: &str = "JOBD_LOAD_BENCH_SERVER";
/// The request line; the reply must be the same bytes.
const LINE: &[u8] = b"jobd load bench: one line to echo\n";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const IO_TIMEOUT: Duration = Duration::from_secs(10);
const START_TIMEOUT: Duration = Duration::from_secs(15);
const STOP_GRACE: Duration = Duration::from_secs(10);
/// A `/metrics` scrape must be complete within this (Prometheus's default
/// scrape timeout is 10 s; jobd answers in well under 10 ms when healthy).
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);
/// The ceiling server's source (see the module comment).
const CEILING_C: &str = include_str!("ceiling.c");

/// Reads one line (up to 4 KiB) and writes it back: the job of both the
/// closure server and the bare server.
fn echo(mut conn: &TcpStream) -> io::Result<()> {
    let mut buf = [0u8; 4096];
    let mut n = 0;
    while n < buf.len() {
        let r = conn.read(&mut buf[n..])?;
        if r == 0 {
            break;
        }
        n += r;
        if buf[n - 1] == b'\n' {
            break;
        }
    }
    conn.write_all(&buf[..n])
}

/// Server mode: the jobd library with an echo closure.
fn closure_server_main() -> std::process::ExitCode {
    let server = jobd::Server::builder()
        .listen(SocketAddr::from(([127, 0, 0, 1], 0)))
        .prefork(4)
        .grace(Duration::from_secs(5))
        .after_init(|info| eprintln!("listening on {}", info.local_addr))
        .job_fn(|conn, _ctx| echo(&conn))
        .build();
    match server.map(|s| s.run()) {
        Ok(Ok(())) => std::process::ExitCode::SUCCESS,
        Ok(Err(e)) | Err(e) => {
            eprintln!("closure server: {e}");
            std::process::ExitCode::from(1)
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Handler {
    Sh,
    C,
}

impl Handler {
    fn name(self) -> &'static str {
        match self {
            Handler::Sh => "sh",
            Handler::C => "c",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Jobd(Handler),
    /// jobd with `--containment subreaper`: the cost of cgroup containment
    /// is the difference from `jobd/*` (which uses cgroups when it can).
    JobdSubreaper(Handler),
    /// jobd with `--metrics-listen`, scraped during its runs: the cost of
    /// the metrics server is the difference from `jobd/*`.
    JobdMetrics(Handler),
    Tcpserver(u32, Handler),
    /// `benches/ceiling.c`: the leanest prefork exec server, 4 workers.
    Ceiling(Handler),
    Socat(Handler),
    Closure,
    Bare,
}

impl Kind {
    /// The handler of a handler server.
    fn handler(self) -> Option<Handler> {
        match self {
            Kind::Jobd(h)
            | Kind::JobdSubreaper(h)
            | Kind::JobdMetrics(h)
            | Kind::Tcpserver(_, h)
            | Kind::Ceiling(h)
            | Kind::Socat(h) => Some(h),
            Kind::Closure | Kind::Bare => None,
        }
    }

    fn name(self) -> String {
        match self {
            Kind::Jobd(h) => format!("jobd/{}", h.name()),
            Kind::JobdSubreaper(h) => format!("jobd-subreaper/{}", h.name()),
            Kind::JobdMetrics(h) => format!("jobd-metrics/{}", h.name()),
            Kind::Tcpserver(c, h) => format!("tcpserver-c{c}/{}", h.name()),
            Kind::Ceiling(h) => format!("ceiling/{}", h.name()),
            Kind::Socat(h) => format!("socat/{}", h.name()),
            Kind::Closure => "jobd-closure".into(),
            Kind::Bare => "bare-4threads".into(),
        }
    }
}

const ALL: &[Kind] = &[
    Kind::Jobd(Handler::Sh),
    Kind::JobdMetrics(Handler::Sh),
    Kind::JobdSubreaper(Handler::Sh),
    Kind::Ceiling(Handler::Sh),
    Kind::Tcpserver(4, Handler::Sh),
    Kind::Tcpserver(64, Handler::Sh),
    Kind::Socat(Handler::Sh),
    Kind::Jobd(Handler::C),
    Kind::JobdMetrics(Handler::C),
    Kind::JobdSubreaper(Handler::C),
    Kind::Ceiling(Handler::C),
    Kind::Tcpserver(4, Handler::C),
    Kind::Tcpserver(64, Handler::C),
    Kind::Socat(Handler::C),
    Kind::Closure,
    Kind::Bare,
];

/// The in-process bare server: 4 threads blocked in accept on one listener.
struct Bare {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Bare {
    fn start(threads: usize) -> io::Result<Bare> {
        let backlog = Backlog::new(1024).unwrap_or(Backlog::MAXCONN);
        let l = Arc::new(loopback_listener(backlog, true)?);
        let addr = l.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..threads)
            .map(|_| {
                let l = Arc::clone(&l);
                let stop = Arc::clone(&stop);
                thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        if let Ok((c, _)) = l.accept() {
                            let _ = c.set_read_timeout(Some(IO_TIMEOUT));
                            let _ = echo(&c);
                        }
                    }
                })
            })
            .collect();
        Ok(Bare {
            addr,
            stop,
            threads,
        })
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake each thread blocked in accept with one connection.
        for _ in 0..self.threads.len() {
            let _ = TcpStream::connect_timeout(&self.addr, CONNECT_TIMEOUT);
        }
        for t in self.threads {
            let _ = t.join();
        }
    }
}

enum Running {
    Proc(Spawned),
    Bare(Bare),
}

struct Live {
    kind: Kind,
    addr: SocketAddr,
    /// The `--metrics-listen` address, scraped during each run.
    metrics: Option<SocketAddr>,
    run: Running,
}

impl Live {
    fn probe(&self) -> CpuProbe {
        match &self.run {
            Running::Proc(p) => CpuProbe::Tree(p.pid()),
            Running::Bare(_) => CpuProbe::InProcess,
        }
    }
}

/// One measured run.
#[derive(Clone, Default)]
struct Sample {
    jobs: usize,
    late: usize,
    errors: usize,
    first_error: Option<String>,
    jobs_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// getrusage(RUSAGE_SELF) over wall, % of one core.
    self_cpu_pct: f64,
    /// The client threads alone, % of one core.
    client_cpu_pct: f64,
    /// Whole machine busy, % of all cores.
    machine_busy_pct: f64,
    wall_s: f64,
    /// The server's CPU per job (its whole process tree, handlers
    /// included), microseconds.
    server_us_per_job: f64,
    /// The `/metrics` scrapes made during the run (jobd-metrics only).
    scrapes: Option<Scrapes>,
}

/// Where a server's CPU is read.
#[derive(Clone, Copy)]
enum CpuProbe {
    /// A process tree rooted at this pid.
    Tree(i32),
    /// Threads of this process: getrusage minus the client threads.
    InProcess,
}

/// Load of one run; with `scrape`, a scraper thread GETs `/metrics` there
/// every `LOAD_SCRAPE_MS` while the run lasts.
fn load_run(
    addr: SocketAddr,
    probe: CpuProbe,
    scrape: Option<SocketAddr>,
    conc: usize,
    dur: Duration,
    cap: usize,
) -> Sample {
    let tickets = Arc::new(AtomicUsize::new(0));
    let srv0 = match probe {
        CpuProbe::Tree(pid) => tree_cpu_s(pid),
        CpuProbe::InProcess => None,
    };
    let cpu0 = rusage_cpu_s(UsageWho::RUSAGE_SELF);
    let m0 = machine_jiffies();
    let t0 = Instant::now();
    let deadline = t0 + dur;
    let handles: Vec<_> = (0..conc)
        .map(|_| {
            let tickets = Arc::clone(&tickets);
            thread::spawn(move || client(addr, deadline, cap, &tickets))
        })
        .collect();
    let scraper = scrape.map(|m| {
        let stop = Arc::new(AtomicBool::new(false));
        spawn_scraper(m, t0, scrape_period(), deadline, SCRAPE_TIMEOUT, stop)
    });
    let mut lat: Vec<u32> = Vec::new();
    let mut s = Sample::default();
    let mut client_cpu = 0.0;
    for h in handles {
        let Ok(r) = h.join() else {
            s.errors += 1;
            continue;
        };
        lat.extend(r.lat_us);
        s.late += r.late;
        s.errors += r.errors;
        if s.first_error.is_none() {
            s.first_error = r.first_error;
        }
        client_cpu += r.cpu_s;
    }
    // The scraper makes no new scrape after the deadline; one under way
    // ends within SCRAPE_TIMEOUT (and counts in the server's CPU).
    s.scrapes = scraper.map(|h| {
        h.join().unwrap_or_else(|_| Scrapes {
            failed: 1,
            first_error: Some("scraper thread panicked".into()),
            ..Scrapes::default()
        })
    });
    let wall = t0.elapsed().as_secs_f64();
    let m1 = machine_jiffies();
    let cpu = rusage_cpu_s(UsageWho::RUSAGE_SELF) - cpu0;
    lat.sort_unstable();
    s.jobs = lat.len();
    s.jobs_per_s = lat.len() as f64 / dur.as_secs_f64();
    s.p50_ms = percentile(&lat, 0.50).map_or(f64::NAN, |u| u as f64 / 1e3);
    s.p99_ms = percentile(&lat, 0.99).map_or(f64::NAN, |u| u as f64 / 1e3);
    s.self_cpu_pct = cpu / wall * 100.0;
    s.client_cpu_pct = client_cpu / wall * 100.0;
    let dt = (m1.1.saturating_sub(m0.1)).max(1) as f64;
    s.machine_busy_pct = m1.0.saturating_sub(m0.0) as f64 / dt * 100.0;
    s.wall_s = wall;
    let server_cpu = match probe {
        CpuProbe::Tree(pid) => tree_cpu_s(pid).zip(srv0).map(|(a, b)| a - b),
        CpuProbe::InProcess => Some(cpu - client_cpu),
    };
    s.server_us_per_job = match server_cpu {
        Some(c) if s.jobs + s.late > 0 => c / (s.jobs + s.late) as f64 * 1e6,
        _ => f64::NAN,
    };
    s
}

struct ClientOut {
    lat_us: Vec<u32>,
    late: usize,
    errors: usize,
    first_error: Option<String>,
    cpu_s: f64,
}

fn client(addr: SocketAddr, deadline: Instant, cap: usize, tickets: &AtomicUsize) -> ClientOut {
    let cpu0 = thread_cpu_s();
    let mut out = ClientOut {
        lat_us: Vec::with_capacity(4096),
        late: 0,
        errors: 0,
        first_error: None,
        cpu_s: 0.0,
    };
    // Bounded: at most `cap` connections over all threads, none started
    // after the deadline, each bounded by its timeouts.
    for _ in 0..cap {
        if Instant::now() >= deadline || tickets.fetch_add(1, Ordering::Relaxed) >= cap {
            break;
        }
        let t = Instant::now();
        match one_job(addr) {
            Ok(()) => {
                if Instant::now() <= deadline {
                    out.lat_us
                        .push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
                } else {
                    out.late += 1;
                }
            }
            Err(e) => {
                out.errors += 1;
                if out.first_error.is_none() {
                    out.first_error = Some(e.to_string());
                }
                // Do not spin on a refusing server.
                thread::sleep(Duration::from_millis(1));
            }
        }
    }
    out.cpu_s = thread_cpu_s() - cpu0;
    out
}

fn one_job(addr: SocketAddr) -> io::Result<()> {
    let mut s = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    s.write_all(LINE)?;
    let mut buf = [0u8; 256];
    let mut n = 0;
    loop {
        if n == buf.len() {
            return Err(io::Error::other("reply too long"));
        }
        match s.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(r) => n += r,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    if &buf[..n] != LINE {
        return Err(io::Error::other(format!(
            "bad reply {:?}",
            String::from_utf8_lossy(&buf[..n])
        )));
    }
    Ok(())
}

fn start(kind: Kind, handlers: &Handlers, anchors: &Anchors, dir: &Path) -> Result<Live, String> {
    let h = |h: Handler| -> Result<&PathBuf, String> {
        match h {
            Handler::Sh => Ok(&handlers.sh),
            Handler::C => handlers
                .c
                .as_ref()
                .ok_or_else(|| "no C handler".to_string()),
        }
    };
    let name = kind.name();
    let mut metrics = None;
    let spawned = match kind {
        Kind::Jobd(hd) | Kind::JobdSubreaper(hd) | Kind::JobdMetrics(hd) => {
            let mut args: Vec<OsString> = vec![
                "--listen".into(),
                "127.0.0.1:0".into(),
                "--prefork".into(),
                "4".into(),
            ];
            if matches!(kind, Kind::JobdSubreaper(_)) {
                args.push("--containment".into());
                args.push("subreaper".into());
            }
            if matches!(kind, Kind::JobdMetrics(_)) {
                args.push("--metrics-listen".into());
                args.push("127.0.0.1:0".into());
            }
            args.extend(extra_jobd_args());
            args.push("--script".into());
            args.push(h(hd)?.into());
            let sp = spawn_jobd(&name, &args, dir, START_TIMEOUT)?;
            if matches!(kind, Kind::JobdMetrics(_)) {
                match sp
                    .metrics_addr(START_TIMEOUT)
                    .and_then(|m| scrape_metrics(m, SCRAPE_TIMEOUT).map(|_| m))
                {
                    Ok(m) => metrics = Some(m),
                    Err(e) => {
                        let how = sp.stop(STOP_GRACE);
                        return Err(format!("{e} (stopped: {how})"));
                    }
                }
            }
            sp
        }
        Kind::Closure => {
            let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
            spawn_jobd_like(
                &name,
                &exe,
                &[],
                &[(SERVER_ENV, "closure")],
                dir,
                START_TIMEOUT,
            )?
        }
        Kind::Ceiling(hd) => {
            let bin = handlers
                .ceiling
                .as_ref()
                .map_err(|e| format!("no ceiling server: {e}"))?;
            let args: Vec<OsString> = vec!["4".into(), h(hd)?.into()];
            spawn_jobd_like(&name, bin, &args, &[], dir, START_TIMEOUT)?
        }
        Kind::Tcpserver(c, hd) => {
            let bin = anchors
                .tcpserver
                .as_ref()
                .ok_or("tcpserver is missing (package ucspi-tcp)")?;
            let args: Vec<String> = vec![
                "-c".into(),
                c.to_string(),
                "-b".into(),
                "1024".into(),
                "-H".into(),
                "-R".into(),
                "-l".into(),
                "0".into(),
                "127.0.0.1".into(),
                "{port}".into(),
                h(hd)?.to_string_lossy().into_owned(),
            ];
            spawn_on_free_port(&name, bin, &args, dir, START_TIMEOUT)?
        }
        Kind::Socat(hd) => {
            let bin = anchors
                .socat
                .as_ref()
                .ok_or("socat is missing (package socat)")?;
            let args: Vec<String> = vec![
                "TCP-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr,backlog=1024".into(),
                format!("EXEC:{}", h(hd)?.display()),
            ];
            spawn_on_free_port(&name, bin, &args, dir, START_TIMEOUT)?
        }
        Kind::Bare => {
            let b = Bare::start(4).map_err(|e| format!("bare server: {e}"))?;
            return Ok(Live {
                kind,
                addr: b.addr,
                metrics: None,
                run: Running::Bare(b),
            });
        }
    };
    Ok(Live {
        kind,
        addr: spawned.addr,
        metrics,
        run: Running::Proc(spawned),
    })
}

/// `LOAD_SCRAPE_MS`: the period of the `/metrics` scrapes.
fn scrape_period() -> Duration {
    Duration::from_millis(env_usize("LOAD_SCRAPE_MS", 1000).clamp(10, 600_000) as u64)
}

/// `LOAD_JOBD_ARGS`: extra jobd flags, split on whitespace (for
/// experiments, e.g. `--check-interval 1h`); empty by default.
fn extra_jobd_args() -> Vec<OsString> {
    std::env::var("LOAD_JOBD_ARGS")
        .unwrap_or_default()
        .split_whitespace()
        .map(OsString::from)
        .collect()
}

struct Handlers {
    sh: PathBuf,
    c: Option<PathBuf>,
    /// The ceiling server's binary, or why there is none.
    ceiling: Result<PathBuf, String>,
}

/// Builds `benches/ceiling.c` with `cc -O2` in `dir`.
fn build_ceiling(dir: &Path) -> Result<PathBuf, String> {
    let src = dir.join("ceiling.c");
    std::fs::write(&src, CEILING_C).map_err(|e| format!("write ceiling.c: {e}"))?;
    let out = dir.join("ceiling");
    let cc = which("cc").or_else(|| which("gcc")).ok_or("no cc or gcc")?;
    let r = std::process::Command::new(&cc)
        .arg("-O2")
        .arg("-Wall")
        .arg("-o")
        .arg(&out)
        .arg(&src)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("run {}: {e}", cc.display()))?;
    if r.status.success() {
        Ok(out)
    } else {
        Err(format!(
            "cc failed ({}): {}",
            r.status,
            last_lines(&String::from_utf8_lossy(&r.stderr), 3)
        ))
    }
}

fn env_list(name: &str, default: &str) -> Vec<String> {
    std::env::var(name)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

fn main() -> std::process::ExitCode {
    if std::env::var_os(SERVER_ENV).is_some() {
        return closure_server_main();
    }
    let t_all = Instant::now();
    let dur = env_secs("LOAD_SECS", 2.5);
    let runs = env_usize("LOAD_RUNS", 5).max(1);
    let cap = env_usize("LOAD_MAX_JOBS", 300_000).max(1);
    let deadline = t_all + env_secs("LOAD_DEADLINE_S", 840.0);
    let concs: Vec<usize> = env_list("LOAD_CONC", "1,4,32")
        .iter()
        .map(|s| {
            s.parse::<usize>()
                .unwrap_or_else(|_| panic!("LOAD_CONC: bad number {s:?}"))
                .clamp(1, 512)
        })
        .collect();
    let only = env_list("LOAD_SERVERS", "");
    let kinds: Vec<Kind> = ALL
        .iter()
        .copied()
        .filter(|k| only.is_empty() || only.iter().any(|o| k.name().starts_with(o.as_str())))
        .collect();
    if let Err(e) = raise_nofile(4096) {
        eprintln!("note: {e}");
    }

    let tmp = tempfile::tempdir().expect("temp dir");
    let dir: PathBuf = match std::env::var_os("LOAD_LOG_DIR") {
        Some(d) => {
            let d = PathBuf::from(d);
            std::fs::create_dir_all(&d).expect("LOAD_LOG_DIR");
            d
        }
        None => tmp.path().to_path_buf(),
    };
    let anchors = ensure_anchors();
    let sh = write_script(tmp.path(), "echo.sh", SH_ECHO).expect("write echo.sh");
    let (c, c_link) = match build_c_echo(tmp.path()) {
        Ok((p, how)) => (Some(p), how.to_string()),
        Err(e) => (None, format!("unavailable: {e}")),
    };
    let ceiling = build_ceiling(tmp.path());
    let handlers = Handlers { sh, c, ceiling };

    println!("load: {}", machine_line());
    println!(
        "load: {runs} rounds x {:.1} s per run, concurrency {concs:?}, cap {cap} connections per run",
        dur.as_secs_f64()
    );
    println!("load: C echo handler: {c_link}");
    println!(
        "load: ceiling server: {}",
        match &handlers.ceiling {
            Ok(_) => "benches/ceiling.c, cc -O2, 4 workers".to_string(),
            Err(e) => format!("MISSING: ceiling rows skipped ({e})"),
        }
    );
    if kinds.iter().any(|k| matches!(k, Kind::JobdMetrics(_))) {
        println!(
            "load: jobd-metrics/*: --metrics-listen 127.0.0.1:0, GET /metrics every {} ms during each run (LOAD_SCRAPE_MS)",
            scrape_period().as_millis()
        );
    }
    if !extra_jobd_args().is_empty() {
        println!(
            "load: LOAD_JOBD_ARGS: jobd*/* run with extra flags {:?}",
            extra_jobd_args()
        );
    }
    for n in &anchors.notes {
        println!("load: anchors: {n}");
    }
    println!(
        "load: tcpserver: {}",
        anchors
            .tcpserver
            .as_ref()
            .map_or("MISSING: tcpserver rows skipped".into(), |p| p
                .display()
                .to_string())
    );
    println!(
        "load: socat: {}",
        anchors
            .socat
            .as_ref()
            .map_or("MISSING: socat rows skipped".into(), |p| p
                .display()
                .to_string())
    );

    // Start every server once; they stay up (idle) while others are loaded.
    let mut live: Vec<Live> = Vec::new();
    for &k in &kinds {
        match start(k, &handlers, &anchors, &dir) {
            Ok(l) => {
                match l.metrics {
                    Some(m) => eprintln!("started {} on {} (metrics on {m})", k.name(), l.addr),
                    None => eprintln!("started {} on {}", k.name(), l.addr),
                }
                live.push(l);
            }
            Err(e) => println!("load: SKIPPED {}: {e}", k.name()),
        }
    }

    // Warm-up, not recorded: page cache, jobd's pools, the C library.
    for l in &live {
        let s = load_run(
            l.addr,
            l.probe(),
            l.metrics,
            4,
            Duration::from_millis(300),
            cap,
        );
        if s.errors > 0 || s.jobs == 0 {
            println!(
                "load: warm-up of {}: {} jobs, {} errors ({})",
                l.kind.name(),
                s.jobs,
                s.errors,
                s.first_error.unwrap_or_default()
            );
        }
        if let Some(sc) = s.scrapes.as_ref().filter(|sc| sc.failed > 0) {
            println!(
                "load: warm-up of {}: {} of {} scrapes failed ({})",
                l.kind.name(),
                sc.failed,
                sc.total(),
                sc.first_error.as_deref().unwrap_or("")
            );
        }
    }

    // samples[server][conc] = one Sample per round.
    let mut samples: Vec<Vec<Vec<Sample>>> = vec![vec![Vec::new(); concs.len()]; live.len()];
    let mut cut_short = false;
    'rounds: for round in 0..runs {
        for (ci, &conc) in concs.iter().enumerate() {
            for (si, l) in live.iter().enumerate() {
                if Instant::now() >= deadline {
                    cut_short = true;
                    break 'rounds;
                }
                let s = load_run(l.addr, l.probe(), l.metrics, conc, dur, cap);
                let scraped = s.scrapes.as_ref().map_or(String::new(), |sc| {
                    format!(
                        " scrapes {}/{} ok p50 {:.2} ms max {:.2} ms",
                        sc.ok_ms.len(),
                        sc.total(),
                        sc.p50_ms(),
                        sc.max_ms()
                    )
                });
                eprintln!(
                    "round {} c={conc:<3} {:<18} {:>8.0} jobs/s p50 {:>7.2} ms p99 {:>7.2} ms err {} bench cpu {:.0}% machine {:.0}% server {:.0} us/job{scraped}",
                    round + 1,
                    l.kind.name(),
                    s.jobs_per_s,
                    s.p50_ms,
                    s.p99_ms,
                    s.errors,
                    s.self_cpu_pct,
                    s.machine_busy_pct,
                    s.server_us_per_job
                );
                if let Some(e) = s.scrapes.as_ref().and_then(|sc| sc.first_error.as_ref()) {
                    eprintln!("    {}: scrape failed: {e}", l.kind.name());
                }
                println!(
                    "JSON {}",
                    serde_json::json!({
                        "bench": "load", "kind": "run", "server": l.kind.name(),
                        "conc": conc, "round": round + 1,
                        "secs": dur.as_secs_f64(), "jobs": s.jobs, "late": s.late,
                        "errors": s.errors, "first_error": s.first_error,
                        "jobs_per_s": round2(s.jobs_per_s), "p50_ms": round3(s.p50_ms),
                        "p99_ms": round3(s.p99_ms),
                        "bench_cpu_pct_of_core": round2(s.self_cpu_pct),
                        "client_threads_cpu_pct_of_core": round2(s.client_cpu_pct),
                        "machine_busy_pct": round2(s.machine_busy_pct),
                        "server_cpu_us_per_job": round2(s.server_us_per_job),
                        "scrapes": s.scrapes.as_ref().map(scrapes_json),
                    })
                );
                samples[si][ci].push(s);
            }
        }
    }

    // Stop everything by pid, then sweep for left-overs.
    let ran: Vec<Kind> = live.iter().map(|l| l.kind).collect();
    for l in live.drain(..).rev() {
        match l.run {
            Running::Proc(p) => {
                let name = p.name.clone();
                let how = p.stop(STOP_GRACE);
                eprintln!("stopped {name}: {how}");
                if how.contains("left-over") || how.contains("SIGKILL") {
                    println!("load: {name}: {how}");
                }
            }
            Running::Bare(b) => b.stop(),
        }
    }

    let summary = summarize(&samples, &ran, &concs);
    print_table(&summary, &concs);
    let metrics_rows = metrics_cost(&samples, &ran, &concs);
    print_metrics_cost(&metrics_rows);
    print_targets(&summary, &concs);
    print_metrics_targets(&metrics_rows);
    if cut_short {
        println!("load: LOAD_DEADLINE_S reached: fewer rounds than asked for some servers (see n)");
    }
    println!(
        "load: total wall time {:.1} s",
        t_all.elapsed().as_secs_f64()
    );
    std::process::ExitCode::SUCCESS
}

fn round3(x: f64) -> serde_json::Value {
    if x.is_finite() {
        serde_json::json!((x * 1000.0).round() / 1000.0)
    } else {
        serde_json::Value::Null
    }
}

/// Medians over the rounds of one server at one concurrency.
#[derive(Clone)]
struct Summary {
    kind: Kind,
    conc: usize,
    n: usize,
    jobs_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: usize,
    bench_cpu_pct: f64,
    client_cpu_pct: f64,
    machine_pct: f64,
    server_us_per_job: f64,
    per_run_jobs_per_s: Vec<f64>,
}

fn summarize(samples: &[Vec<Vec<Sample>>], kinds: &[Kind], concs: &[usize]) -> Vec<Summary> {
    let mut out = Vec::new();
    for (si, per_conc) in samples.iter().enumerate() {
        for (ci, v) in per_conc.iter().enumerate() {
            if v.is_empty() {
                continue;
            }
            let m = |f: fn(&Sample) -> f64| median(&v.iter().map(f).collect::<Vec<_>>());
            out.push(Summary {
                kind: kinds[si],
                conc: concs[ci],
                n: v.len(),
                jobs_per_s: m(|s| s.jobs_per_s).unwrap_or(f64::NAN),
                p50_ms: m(|s| s.p50_ms).unwrap_or(f64::NAN),
                p99_ms: m(|s| s.p99_ms).unwrap_or(f64::NAN),
                errors: v.iter().map(|s| s.errors).sum(),
                bench_cpu_pct: m(|s| s.self_cpu_pct).unwrap_or(f64::NAN),
                client_cpu_pct: m(|s| s.client_cpu_pct).unwrap_or(f64::NAN),
                machine_pct: m(|s| s.machine_busy_pct).unwrap_or(f64::NAN),
                server_us_per_job: m(|s| s.server_us_per_job).unwrap_or(f64::NAN),
                per_run_jobs_per_s: v.iter().map(|s| s.jobs_per_s).collect(),
            });
        }
    }
    out
}

fn find(sum: &[Summary], kind: Kind, conc: usize) -> Option<&Summary> {
    sum.iter().find(|s| s.kind == kind && s.conc == conc)
}

/// The reference of a row: tcpserver -c 4 with the same handler for the
/// handler servers, the bare server for the closure.
fn reference(kind: Kind) -> Option<Kind> {
    match kind {
        Kind::Jobd(h) | Kind::Socat(h) | Kind::Ceiling(h) => Some(Kind::Tcpserver(4, h)),
        // Against jobd with cgroups: the ratio is cgroup containment's cost.
        Kind::JobdSubreaper(h) => Some(Kind::Jobd(h)),
        // Against jobd without metrics: the ratio is the metrics server's
        // cost (scraped during the run).
        Kind::JobdMetrics(h) => Some(Kind::Jobd(h)),
        Kind::Tcpserver(c, h) if c != 4 => Some(Kind::Tcpserver(4, h)),
        Kind::Closure => Some(Kind::Bare),
        _ => None,
    }
}

/// jobs/s of `s` over jobs/s of `other` at the same concurrency, if both
/// ran (and `s` is not `other`).
fn ratio_to(sum: &[Summary], s: &Summary, other: Option<Kind>) -> Option<f64> {
    let o = other.filter(|&k| k != s.kind)?;
    find(sum, o, s.conc).map(|r| s.jobs_per_s / r.jobs_per_s)
}

fn fmt_ratio(r: Option<f64>) -> String {
    r.map_or("-".into(), |r| format!("{r:.2}x"))
}

fn print_table(sum: &[Summary], concs: &[usize]) {
    println!();
    println!(
        "{:>4}  {:<18} {:>3} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:<16} {:>5} {:>6} {:>6} {:>6} {:>9}",
        "conc",
        "server",
        "n",
        "jobs/s",
        "/ceiling",
        "/tcpsrv",
        "ratio",
        "p99 rat",
        "p50 ms",
        "p99 ms",
        "vs",
        "err",
        "bench%",
        "clnt%",
        "mach%",
        "srv us/job"
    );
    for &c in concs {
        for s in sum.iter().filter(|s| s.conc == c) {
            let r = reference(s.kind).and_then(|k| find(sum, k, c));
            let to_ceiling = ratio_to(sum, s, s.kind.handler().map(Kind::Ceiling));
            let to_tcpserver = ratio_to(sum, s, s.kind.handler().map(|h| Kind::Tcpserver(4, h)));
            let (ratio, p99r, vs) = match r {
                Some(r) => (
                    format!("{:.2}x", s.jobs_per_s / r.jobs_per_s),
                    format!("{:.2}x", s.p99_ms / r.p99_ms),
                    r.kind.name(),
                ),
                None => ("-".into(), "-".into(), "-".into()),
            };
            println!(
                "{:>4}  {:<18} {:>3} {:>9.0} {:>8} {:>8} {:>8} {:>8} {:>8.2} {:>8.2} {:<16} {:>5} {:>6.0} {:>6.0} {:>6.0} {:>9.0}",
                c,
                s.kind.name(),
                s.n,
                s.jobs_per_s,
                fmt_ratio(to_ceiling),
                fmt_ratio(to_tcpserver),
                ratio,
                p99r,
                s.p50_ms,
                s.p99_ms,
                vs,
                s.errors,
                s.bench_cpu_pct,
                s.client_cpu_pct,
                s.machine_pct,
                s.server_us_per_job
            );
            println!(
                "JSON {}",
                serde_json::json!({
                    "bench": "load", "kind": "summary", "server": s.kind.name(), "conc": c,
                    "runs": s.n, "jobs_per_s_median": round2(s.jobs_per_s),
                    "jobs_per_s_runs": s.per_run_jobs_per_s.iter().map(|x| round2(*x)).collect::<Vec<_>>(),
                    "p50_ms_median": round3(s.p50_ms), "p99_ms_median": round3(s.p99_ms),
                    "errors": s.errors,
                    "reference": r.map(|r| r.kind.name()),
                    "jobs_per_s_ratio": r.map(|r| round3(s.jobs_per_s / r.jobs_per_s)),
                    "p99_ratio": r.map(|r| round3(s.p99_ms / r.p99_ms)),
                    "jobs_per_s_over_ceiling": to_ceiling.map(round3),
                    "jobs_per_s_over_tcpserver_c4": to_tcpserver.map(round3),
                    "bench_cpu_pct_of_core": round2(s.bench_cpu_pct),
                    "client_threads_cpu_pct_of_core": round2(s.client_cpu_pct),
                    "machine_busy_pct": round2(s.machine_pct),
                    "server_cpu_us_per_job": round2(s.server_us_per_job),
                })
            );
        }
        println!();
    }
    println!(
        "columns: medians over rounds; /ceiling, /tcpsrv = jobs/s over ceiling/H's and \
         tcpserver-c4/H's (same handler H; on a jobd/H row: jobd / ceiling, jobd / tcpserver); \
         ratio = jobs/s over `vs` (same handler, same round set); \
         p99 rat = p99 over vs's p99 (< 1 is better); bench% = this program's CPU \
         (getrusage, % of one core; for bare-4threads it includes the in-process server); \
         clnt% = the client threads alone; mach% = whole machine busy (% of all cores); \
         srv us/job = CPU of the server's process tree per job, handler included \
         (/proc/PID/stat utime+stime+cutime+cstime, 10 ms ticks)"
    );
}

fn print_targets(sum: &[Summary], concs: &[usize]) {
    println!();
    let line = |name: String, ok: Option<bool>, detail: String| {
        let verdict = match ok {
            Some(true) => "PASS",
            Some(false) => "MISS",
            None => "n/a ",
        };
        println!("{verdict}  {name}: {detail}");
        println!(
            "JSON {}",
            serde_json::json!({"bench": "load", "kind": "target", "target": name,
                "result": verdict.trim(), "detail": detail})
        );
    };
    for h in [Handler::Sh, Handler::C] {
        for &c in concs.iter().filter(|&&c| c == 4 || c == 32) {
            let name = format!(
                "jobd/{} >= 1.1x tcpserver-c4/{} jobs/s with p99 no worse, conc {c}",
                h.name(),
                h.name()
            );
            match (
                find(sum, Kind::Jobd(h), c),
                find(sum, Kind::Tcpserver(4, h), c),
            ) {
                (Some(a), Some(b)) => {
                    let r = a.jobs_per_s / b.jobs_per_s;
                    let ok = r >= 1.1 && a.p99_ms <= b.p99_ms;
                    line(
                        name,
                        Some(ok),
                        format!(
                            "{r:.2}x ({:.0} vs {:.0} jobs/s), p99 {:.2} vs {:.2} ms",
                            a.jobs_per_s, b.jobs_per_s, a.p99_ms, b.p99_ms
                        ),
                    );
                }
                _ => line(name, None, "not measured".into()),
            }
        }
    }
    for h in [Handler::Sh, Handler::C] {
        for &c in concs {
            let name = format!(
                "jobd/{} >= 2x socat/{} jobs/s, conc {c}",
                h.name(),
                h.name()
            );
            match (find(sum, Kind::Jobd(h), c), find(sum, Kind::Socat(h), c)) {
                (Some(a), Some(b)) => {
                    let r = a.jobs_per_s / b.jobs_per_s;
                    line(
                        name,
                        Some(r >= 2.0),
                        format!(
                            "{r:.2}x ({:.0} vs {:.0} jobs/s)",
                            a.jobs_per_s, b.jobs_per_s
                        ),
                    );
                }
                _ => line(name, None, "not measured".into()),
            }
        }
    }
    for &c in concs {
        let name = format!("jobd-closure >= 0.8x bare-4threads jobs/s, conc {c}");
        match (find(sum, Kind::Closure, c), find(sum, Kind::Bare, c)) {
            (Some(a), Some(b)) => {
                let r = a.jobs_per_s / b.jobs_per_s;
                line(
                    name,
                    Some(r >= 0.8),
                    format!(
                        "{r:.2}x ({:.0} vs {:.0} jobs/s), p99 {:.2} vs {:.2} ms",
                        a.jobs_per_s, b.jobs_per_s, a.p99_ms, b.p99_ms
                    ),
                );
            }
            _ => line(name, None, "not measured".into()),
        }
    }
}

fn scrapes_json(sc: &Scrapes) -> serde_json::Value {
    serde_json::json!({
        "made": sc.total(), "ok": sc.ok_ms.len(), "failed": sc.failed,
        "first_error": sc.first_error,
        "p50_ms": round3(sc.p50_ms()), "max_ms": round3(sc.max_ms()),
    })
}

/// `jobd-metrics/H` beside `jobd/H` at one concurrency.
struct MetricsCost {
    handler: Handler,
    conc: usize,
    /// Rounds in which both ran.
    pairs: usize,
    jobd: f64,
    metrics: f64,
    /// Median of the per-round ratios jobd-metrics / jobd.
    paired_ratio: f64,
    jobd_us_per_job: f64,
    metrics_us_per_job: f64,
    /// All scrapes of the jobd-metrics runs at this concurrency.
    scrapes: Scrapes,
}

impl MetricsCost {
    fn ratio(&self) -> f64 {
        self.metrics / self.jobd
    }
}

/// The rows of the metrics-cost section: for each handler and
/// concurrency where both `jobd/H` and `jobd-metrics/H` ran.
fn metrics_cost(samples: &[Vec<Vec<Sample>>], kinds: &[Kind], concs: &[usize]) -> Vec<MetricsCost> {
    let mut out = Vec::new();
    let at = |k: Kind| kinds.iter().position(|&x| x == k);
    for h in [Handler::Sh, Handler::C] {
        let (Some(a), Some(b)) = (at(Kind::Jobd(h)), at(Kind::JobdMetrics(h))) else {
            continue;
        };
        for (ci, &conc) in concs.iter().enumerate() {
            let (ja, jm) = (&samples[a][ci], &samples[b][ci]);
            let pairs = ja.len().min(jm.len());
            if pairs == 0 {
                continue;
            }
            let m = |v: &[Sample], f: fn(&Sample) -> f64| {
                median(&v.iter().map(f).collect::<Vec<_>>()).unwrap_or(f64::NAN)
            };
            let per_round: Vec<f64> = ja
                .iter()
                .zip(jm)
                .map(|(x, y)| y.jobs_per_s / x.jobs_per_s)
                .collect();
            let mut scrapes = Scrapes::default();
            for s in jm {
                if let Some(sc) = &s.scrapes {
                    scrapes.merge(sc);
                }
            }
            out.push(MetricsCost {
                handler: h,
                conc,
                pairs,
                jobd: m(ja, |s| s.jobs_per_s),
                metrics: m(jm, |s| s.jobs_per_s),
                paired_ratio: median(&per_round).unwrap_or(f64::NAN),
                jobd_us_per_job: m(ja, |s| s.server_us_per_job),
                metrics_us_per_job: m(jm, |s| s.server_us_per_job),
                scrapes,
            });
        }
    }
    out
}

fn print_metrics_cost(rows: &[MetricsCost]) {
    if rows.is_empty() {
        return;
    }
    println!();
    println!(
        "metrics cost: jobd-metrics/H (--metrics-listen, GET /metrics every {} ms) vs jobd/H, same rounds",
        scrape_period().as_millis()
    );
    println!(
        "{:>4}  {:<8} {:>3} {:>9} {:>9} {:>7} {:>7} {:>8} {:>8} {:>9} {:>8} {:>8}",
        "conc",
        "handler",
        "n",
        "jobd",
        "jobd-met",
        "vs jobd",
        "paired",
        "us/job",
        "met us/j",
        "scrapes",
        "scr p50",
        "scr max"
    );
    for r in rows {
        println!(
            "{:>4}  {:<8} {:>3} {:>9.0} {:>9.0} {:>6.3}x {:>6.3}x {:>8.0} {:>8.0} {:>9} {:>8.2} {:>8.2}",
            r.conc,
            r.handler.name(),
            r.pairs,
            r.jobd,
            r.metrics,
            r.ratio(),
            r.paired_ratio,
            r.jobd_us_per_job,
            r.metrics_us_per_job,
            format!("{}/{}", r.scrapes.ok_ms.len(), r.scrapes.total()),
            r.scrapes.p50_ms(),
            r.scrapes.max_ms()
        );
        if let Some(e) = &r.scrapes.first_error {
            println!(
                "      {} scrape(s) of jobd-metrics/{} failed; first: {e}",
                r.scrapes.failed,
                r.handler.name()
            );
        }
        println!(
            "JSON {}",
            serde_json::json!({
                "bench": "load", "kind": "metrics_cost", "handler": r.handler.name(),
                "conc": r.conc, "rounds": r.pairs,
                "jobd_jobs_per_s_median": round2(r.jobd),
                "jobd_metrics_jobs_per_s_median": round2(r.metrics),
                "ratio_of_medians": round3(r.ratio()),
                "paired_ratio_median": round3(r.paired_ratio),
                "jobd_server_cpu_us_per_job": round2(r.jobd_us_per_job),
                "jobd_metrics_server_cpu_us_per_job": round2(r.metrics_us_per_job),
                "scrapes": scrapes_json(&r.scrapes),
            })
        );
    }
    println!(
        "columns: jobd, jobd-met = median jobs/s; vs jobd = ratio of those medians; paired = median \
         over rounds of jobd-metrics / jobd in the same round (run one after the other); \
         us/job, met us/j = server CPU per job (process tree, handler included) of jobd and \
         jobd-metrics; scrapes = ok / made over all jobd-metrics runs (200 ending in `# EOF`); \
         scr p50, scr max = latency of the successful scrapes, ms (connect to EOF)"
    );
}

fn print_metrics_targets(rows: &[MetricsCost]) {
    for r in rows {
        let name = format!(
            "jobd-metrics/{} >= 0.95x jobd/{} jobs/s (paired), every scrape ok, conc {}",
            r.handler.name(),
            r.handler.name(),
            r.conc
        );
        let ok = r.paired_ratio >= 0.95 && r.scrapes.failed == 0 && r.scrapes.total() > 0;
        let verdict = if ok { "PASS" } else { "MISS" };
        let detail = format!(
            "paired {:.3}x, medians {:.0} vs {:.0} jobs/s, scrapes {}/{} ok",
            r.paired_ratio,
            r.metrics,
            r.jobd,
            r.scrapes.ok_ms.len(),
            r.scrapes.total()
        );
        println!("{verdict}  {name}: {detail}");
        println!(
            "JSON {}",
            serde_json::json!({"bench": "load", "kind": "target", "target": name,
                "result": verdict, "detail": detail})
        );
    }
}
