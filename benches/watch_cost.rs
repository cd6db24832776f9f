//! The cost of watching: jobd's supervisor with 1,000 long jobs running.
//!
//! For each detector (`auto`, i.e. sock_diag, then `--detector procfs`) the
//! bench starts `jobd --prefork 1000 --max-children 1000` on a free loopback
//! port with a handler that prints a line and then `exec sleep 600`, opens
//! 1,000 clients that read that line and then stay idle, and measures:
//!
//! - the supervisor's CPU over `WATCH_SECS` (default 10) at the default
//!   check interval (100 ms), from `/proc/<pid>/stat` utime + stime (and the
//!   exact runtime from `/proc/<pid>/schedstat`); target ≤ 2 % of a core;
//!   also over `WATCH_IDLE_SECS` (default 3) with the 1,000 workers idle,
//!   before the clients connect;
//! - the time of one scan as the supervisor does it, timed from this
//!   process with the same backends and filter (`SockDiag::dump` and
//!   `ProcNet::dump` on the listener's port with `JOB_SOCKET_STATES`):
//!   median and p99 of `WATCH_SCANS` (default 200) dumps; target ≤ 1 ms with
//!   sock_diag;
//! - the supervisor's and one worker's (and one handler's) VmRSS and
//!   RssAnon from `/proc/<pid>/status`; target supervisor ≤ 10 MiB.
//!
//! `WATCH_JOBS` changes the number of jobs (default 1000). Cleanup: SIGINT
//! to jobd (kills every job and exits), wait, SIGKILL if needed, then a
//! sweep of every process carrying this run's marker.

mod common;

use std::ffi::OsString;

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use jobd::detect::procfs::ProcNet;
use jobd::detect::sockdiag::SockDiag;
use jobd::detect::{JOB_SOCKET_STATES, SockEntry, SocketSource};
use rustix::process::Signal;

const HANDLER: &str = "#!/bin/sh\necho \"$$ started\"\nexec sleep 600\n";
const CHECK_INTERVAL_MS: f64 = 100.0;
const CPU_TARGET_PCT: f64 = 2.0;
const SCAN_TARGET_MS: f64 = 1.0;
const RSS_TARGET_KIB: u64 = 10 * 1024;
const SETUP_TIMEOUT: Duration = Duration::from_secs(120);

struct Report {
    detector: &'static str,
    jobs_wanted: usize,
    jobs_running: usize,
    workers: usize,
    setup_s: f64,
    idle_cpu_pct: Option<f64>,
    cpu_pct_stat: f64,
    cpu_pct_exact: f64,
    cpu_per_tick_ms: f64,
    window_s: f64,
    scans: Vec<ScanRow>,
    sup_rss: (u64, u64),
    worker_rss: (u64, u64),
    handler_rss: (u64, u64),
    stop: String,
    errors: Vec<String>,
    /// TCP sockets in the network namespace at scan time: all, TIME_WAIT.
    ns_sockets: (usize, usize),
}

struct ScanRow {
    backend: &'static str,
    iters: usize,
    entries: usize,
    median_ms: f64,
    p99_ms: f64,
}

fn main() {
    let jobs = env_usize("WATCH_JOBS", 1000).clamp(1, 5000);
    let secs = env_secs("WATCH_SECS", 10.0);
    let idle_secs = env_secs("WATCH_IDLE_SECS", 3.0);
    let scans = env_usize("WATCH_SCANS", 200).max(10);
    let t_all = Instant::now();
    // Clients, jobd's pidfds and sockets: all well under 4 x jobs.
    match raise_nofile(4 * jobs as u64 + 256) {
        Ok(n) => eprintln!("RLIMIT_NOFILE soft limit {n}"),
        Err(e) => println!("watch_cost: {e}"),
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let handler = write_script(dir.path(), "long-job.sh", HANDLER).expect("handler");
    println!("watch_cost: {}", machine_line());
    println!(
        "watch_cost: {jobs} long jobs, check interval {CHECK_INTERVAL_MS} ms (default), window {:.0} s",
        secs.as_secs_f64()
    );
    let mut reports = Vec::new();
    for detector in ["sock-diag", "procfs"] {
        reports.push(run(
            detector,
            jobs,
            secs,
            idle_secs,
            scans,
            &handler,
            dir.path(),
        ));
    }
    print_report(&reports);
    println!(
        "watch_cost: total wall time {:.1} s",
        t_all.elapsed().as_secs_f64()
    );
}

fn run(
    detector: &'static str,
    jobs: usize,
    secs: Duration,
    idle_secs: Duration,
    scans: usize,
    handler: &Path,
    dir: &Path,
) -> Report {
    let mut r = Report {
        detector,
        jobs_wanted: jobs,
        jobs_running: 0,
        workers: 0,
        setup_s: 0.0,
        idle_cpu_pct: None,
        cpu_pct_stat: f64::NAN,
        cpu_pct_exact: f64::NAN,
        cpu_per_tick_ms: f64::NAN,
        window_s: 0.0,
        scans: Vec::new(),
        sup_rss: (0, 0),
        worker_rss: (0, 0),
        handler_rss: (0, 0),
        stop: String::new(),
        errors: Vec::new(),
        ns_sockets: (0, 0),
    };
    eprintln!("--- detector {detector} ---");
    let t_setup = Instant::now();
    let mut args: Vec<OsString> = [
        "--listen",
        "127.0.0.1:0",
        "--prefork",
        &jobs.to_string(),
        "--max-children",
        &jobs.to_string(),
    ]
    .iter()
    .map(OsString::from)
    .collect();
    if detector == "procfs" {
        args.push("--detector".into());
        args.push("procfs".into());
    }
    args.push("--script".into());
    args.push(handler.into());
    let server = match spawn_jobd(
        &format!("jobd-{detector}"),
        &args,
        dir,
        Duration::from_secs(30),
    ) {
        Ok(s) => s,
        Err(e) => {
            r.errors.push(e);
            return r;
        }
    };
    let sup = server.pid();
    let addr = server.addr;
    let until = Instant::now() + SETUP_TIMEOUT;
    // All workers forked.
    while children_of(sup).len() < jobs && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50));
    }
    r.workers = children_of(sup).len();
    eprintln!(
        "    {} workers after {:.1} s",
        r.workers,
        t_setup.elapsed().as_secs_f64()
    );
    // Idle: workers forked, no job. Let the start-up settle first.
    std::thread::sleep(Duration::from_millis(500));
    r.idle_cpu_pct = cpu_window(sup, idle_secs).map(|(_, exact, _)| exact);

    let clients = open_clients(addr, jobs, until, &mut r.errors);
    r.jobs_running = clients.len();
    r.setup_s = t_setup.elapsed().as_secs_f64();
    eprintln!(
        "    {} jobs running after {:.1} s",
        r.jobs_running, r.setup_s
    );
    std::thread::sleep(Duration::from_secs(1));

    match cpu_window(sup, secs) {
        Some((stat, exact, wall)) => {
            r.cpu_pct_stat = stat;
            r.cpu_pct_exact = exact;
            r.window_s = wall;
            let ticks = wall * 1e3 / CHECK_INTERVAL_MS;
            r.cpu_per_tick_ms = exact / 100.0 * wall * 1e3 / ticks;
        }
        None => r
            .errors
            .push("supervisor vanished during the window".into()),
    }

    r.sup_rss = rss(sup);
    let workers = children_of(sup);
    if let Some(&w) = workers.first() {
        r.worker_rss = rss(w);
        if let Some(&h) = children_of(w).first() {
            r.handler_rss = rss(h);
        }
    }

    // The scan, as the supervisor does it, timed here.
    let port = addr.port();
    r.ns_sockets = namespace_sockets();
    match SockDiag::open() {
        Ok(mut sd) => {
            // As the supervisor does: only the listener's address family.
            sd.only_family(addr.is_ipv6());
            match time_job_scans(&mut sd, port, scans) {
                Ok(row) => r.scans.push(row),
                Err(e) => r.errors.push(format!("sock_diag: {e}")),
            }
        }
        Err(e) => r.errors.push(format!("sock_diag open: {e}")),
    }
    let mut pn = ProcNet::for_family(addr.is_ipv6());
    match time_job_scans(&mut pn, port, (scans / 4).max(10)) {
        Ok(row) => r.scans.push(row),
        Err(e) => r.errors.push(format!("procfs: {e}")),
    }

    // jobd must still hold every job: the watch cancelled none.
    let cancelled = server.log_text().matches("job cancelled").count();
    if cancelled > 0 {
        r.errors.push(format!(
            "{cancelled} jobs cancelled while clients were idle"
        ));
    }
    // SIGINT kills every job at once; then the clients go.
    r.stop = server.stop_with(Signal::INT, Duration::from_secs(30));
    drop(clients);
    eprintln!("    jobd: {}", r.stop);
    r
}

/// Supervisor CPU over `secs`: (% of a core from /proc/pid/stat ticks,
/// % from schedstat runtime, wall seconds).
fn cpu_window(pid: i32, secs: Duration) -> Option<(f64, f64, f64)> {
    let t0 = Instant::now();
    let k0 = proc_cpu_ticks(pid)?;
    let n0 = proc_runtime_ns(pid)?;
    std::thread::sleep(secs);
    let k1 = proc_cpu_ticks(pid)?;
    let n1 = proc_runtime_ns(pid)?;
    let wall = t0.elapsed().as_secs_f64();
    let stat = (k1 - k0) as f64 / clk_tck() / wall * 100.0;
    let exact = (n1 - n0) as f64 / 1e9 / wall * 100.0;
    Some((stat, exact, wall))
}

fn rss(pid: i32) -> (u64, u64) {
    (
        status_kib(pid, "VmRSS").unwrap_or(0),
        status_kib(pid, "RssAnon").unwrap_or(0),
    )
}

/// Connects `n` clients and reads each one's first line (its job is then
/// running); the clients then stay idle.
fn open_clients(
    addr: SocketAddr,
    n: usize,
    until: Instant,
    errors: &mut Vec<String>,
) -> Vec<TcpStream> {
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        if Instant::now() >= until {
            errors.push(format!("setup deadline: {} clients connected", conns.len()));
            break;
        }
        match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
            Ok(s) => conns.push(s),
            Err(e) => {
                errors.push(format!("connect {}: {e}", conns.len()));
                break;
            }
        }
    }
    let mut ok = Vec::with_capacity(conns.len());
    for s in conns {
        let left = until.saturating_duration_since(Instant::now());
        let _ = s.set_read_timeout(Some(left.max(Duration::from_millis(100))));
        match read_line(&s) {
            Ok(l) if l.ends_with("started") => ok.push(s),
            Ok(l) => errors.push(format!("unexpected line {l:?}")),
            Err(e) => errors.push(format!("reading the job's line: {e}")),
        }
    }
    ok
}

/// `iters` scans as the supervisor runs them (the listener's port, the job
/// states).
fn time_job_scans(src: &mut dyn SocketSource, port: u16, iters: usize) -> Result<ScanRow, String> {
    let backend = src.name();
    let mut out: Vec<SockEntry> = Vec::with_capacity(4096);
    let t = time_scans(iters, &mut out, dump_of(src, port, JOB_SOCKET_STATES))?;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    Ok(ScanRow {
        backend,
        iters,
        entries: t.entries.1,
        median_ms: ms(t.median()),
        p99_ms: ms(t.p99()),
    })
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn verdict(ok: bool) -> &'static str {
    if ok { "PASS" } else { "MISS" }
}

fn print_report(reports: &[Report]) {
    println!();
    println!(
        "{:<10} {:>6} {:>7} {:>10} {:>10} {:>10} {:>9} {:>12} {:>12} {:>12}",
        "detector",
        "jobs",
        "workers",
        "idle cpu%",
        "sup cpu%",
        "(stat) %",
        "ms/tick",
        "sup RSS MiB",
        "worker MiB",
        "handler MiB"
    );
    for r in reports {
        println!(
            "{:<10} {:>6} {:>7} {:>10.2} {:>10.2} {:>10.2} {:>9.3} {:>12} {:>12} {:>12}",
            r.detector,
            r.jobs_running,
            r.workers,
            r.idle_cpu_pct.unwrap_or(f64::NAN),
            r.cpu_pct_exact,
            r.cpu_pct_stat,
            r.cpu_per_tick_ms,
            format!("{:.1} ({:.1})", mib(r.sup_rss.0), mib(r.sup_rss.1)),
            format!("{:.1} ({:.1})", mib(r.worker_rss.0), mib(r.worker_rss.1)),
            format!("{:.1} ({:.1})", mib(r.handler_rss.0), mib(r.handler_rss.1)),
        );
    }
    println!(
        "columns: cpu% = % of one core over the window (schedstat, exact; `(stat)` from \
         /proc/pid/stat ticks); idle = 1,000 workers, no job; ms/tick = supervisor CPU per \
         100 ms check; RSS = VmRSS (RssAnon)"
    );
    println!();
    println!(
        "{:<10} {:<10} {:>6} {:>8} {:>10} {:>10} {:>16}",
        "jobd", "scan", "iters", "entries", "median ms", "p99 ms", "ns sockets (TW)"
    );
    for r in reports {
        for s in &r.scans {
            println!(
                "{:<10} {:<10} {:>6} {:>8} {:>10.3} {:>10.3} {:>16}",
                r.detector,
                s.backend,
                s.iters,
                s.entries,
                s.median_ms,
                s.p99_ms,
                format!("{} ({})", r.ns_sockets.0, r.ns_sockets.1)
            );
        }
    }
    println!();
    for r in reports {
        for e in &r.errors {
            println!("watch_cost: {}: problem: {e}", r.detector);
        }
        let full = r.jobs_running == r.jobs_wanted;
        let note = if full {
            String::new()
        } else {
            format!(" (only {} of {} jobs)", r.jobs_running, r.jobs_wanted)
        };
        println!(
            "{}  supervisor CPU <= {CPU_TARGET_PCT}% of a core, detector {}: {:.2}%{note}",
            verdict(full && r.cpu_pct_exact <= CPU_TARGET_PCT),
            r.detector,
            r.cpu_pct_exact
        );
        println!(
            "{}  supervisor RSS <= 10 MiB, detector {}: {:.1} MiB",
            verdict(r.sup_rss.0 > 0 && r.sup_rss.0 <= RSS_TARGET_KIB),
            r.detector,
            mib(r.sup_rss.0)
        );
        if r.detector == "sock-diag"
            && let Some(s) = r.scans.iter().find(|s| s.backend == "sock-diag")
        {
            println!(
                "{}  per-tick scan <= {SCAN_TARGET_MS} ms with sock_diag ({} sockets): median {:.3} ms, p99 {:.3} ms",
                verdict(s.median_ms <= SCAN_TARGET_MS),
                s.entries,
                s.median_ms,
                s.p99_ms
            );
        }
        println!(
            "JSON {}",
            serde_json::json!({
                "bench": "watch_cost", "detector": r.detector,
                "jobs": r.jobs_running, "workers": r.workers,
                "check_interval_ms": CHECK_INTERVAL_MS,
                "setup_s": (r.setup_s * 10.0).round() / 10.0,
                "window_s": (r.window_s * 100.0).round() / 100.0,
                "idle_supervisor_cpu_pct": r.idle_cpu_pct,
                "supervisor_cpu_pct": r.cpu_pct_exact,
                "supervisor_cpu_pct_stat_ticks": r.cpu_pct_stat,
                "supervisor_cpu_ms_per_tick": r.cpu_per_tick_ms,
                "supervisor_vmrss_kib": r.sup_rss.0, "supervisor_rssanon_kib": r.sup_rss.1,
                "worker_vmrss_kib": r.worker_rss.0, "worker_rssanon_kib": r.worker_rss.1,
                "handler_vmrss_kib": r.handler_rss.0, "handler_rssanon_kib": r.handler_rss.1,
                "scans": r.scans.iter().map(|s| serde_json::json!({
                    "backend": s.backend, "iters": s.iters, "entries": s.entries,
                    "median_ms": s.median_ms, "p99_ms": s.p99_ms})).collect::<Vec<_>>(),
                "namespace_tcp_sockets": r.ns_sockets.0,
                "namespace_time_wait": r.ns_sockets.1,
                "stop": r.stop, "errors": r.errors,
            })
        );
    }
}
