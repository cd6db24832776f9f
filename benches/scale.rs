//! Scale: jobd with 100, 1,000 and 5,000 long jobs at once: the
//! supervisor's CPU and memory, the workers' proportional memory, hang-up
//! latency under churn, the cost of a scan and of a tick, start-up and stop.
//!
//! For each N of `SCALE_N` and each configuration (detector × worker
//! watch: `sock-diag/watch-on`, `sock-diag/watch-off`, `procfs/watch-on`,
//! `procfs/watch-off`; all four up to N = 1,000, the two sock_diag ones
//! above, where one run takes minutes) the bench starts one
//!
//! ```text
//! jobd --listen 127.0.0.1:0 --prefork N --max-children N --detector D
//!      --worker-watch on|off --check-interval 100ms --fin-grace 0 --grace 0
//!      --scoreboard PATH --script H
//! ```
//!
//! (containment at its default, `auto`: a cgroup per slot as root), where H
//! is a sh handler that starts `sleep 600 &` (a child, not an exec: each job
//! is a tree of two processes), writes `$$ $!` (its own pid and the
//! sleep's) to the connection and `wait`s. `--fin-grace 0` because the
//! client has acknowledged that line: with the default 250 ms a FIN would
//! give the handler its grace before the cancel, and the churn below would
//! measure the grace. `--grace 0`: SIGTERM cancels every job at once. Then,
//! in order:
//!
//! 1. **start-up**: the time from spawning jobd to N workers idle (the
//!    scoreboard's `totals.idle`, read every 20 ms with
//!    `jobd::status::read`, the reading `jobd status --json` prints), with
//!    the supervisor's VmRSS (every read) and the PSS of the supervisor and
//!    its workers (every second, or less often when reading it takes more
//!    than a tenth of the time) sampled on the way, peaks reported; then N
//!    clients connect (200 at a time) and read their job's line: the time to
//!    N jobs running. jobd exiting, a fork failure it logs (and 2 s without
//!    progress), 5 s without progress, or a deadline (60 s + 20 ms per job)
//!    ends the wait: the run is reported as not fitting, with what ran out
//!    (jobd's first WARN/ERROR line, the bench's first error), and the bench
//!    tries a smaller N (what did start, minus 10 %, in hundreds; up to
//!    three times) for that N's rows.
//! 2. **idle window** (`SCALE_WATCH_SECS`, default 5) with the N jobs
//!    running and their clients idle: the supervisor's CPU as % of one core
//!    (exact runtime from `/proc/<pid>/schedstat`; utime + stime from
//!    `/proc/<pid>/stat` beside it), its wakes (voluntary context switches
//!    from `/proc/<pid>/status`), and the scoreboard's `scans` and `scan_us`
//!    totals: mean scan = Δscan_us / Δscans (wall time: it includes waiting
//!    for a CPU); tick proxy = supervisor CPU / wakes (and per 100 ms check
//!    interval). Around the window, the CPU by class: supervisor, workers,
//!    handlers, this bench, and the rest of the machine (other programs:
//!    the machine is shared).
//! 3. **memory**: VmRSS, VmHWM and PSS (`/proc/<pid>/smaps_rollup`) of the
//!    supervisor; PSS of 20 workers spread over the pool (median; target
//!    ≤ 150 KiB) and their descriptor counts; PSS of every worker and of
//!    every handler process (sh and sleep), summed and divided by N.
//! 4. **scan from the bench**: `SockDiag::dump` and `ProcNet::dump` of the
//!    listener's port with `JOB_SOCKET_STATES`, as the supervisor scans
//!    (`SCALE_SCANS`, default 50, sock_diag dumps; half as many procfs),
//!    beside the number of TCP sockets in the network namespace (every
//!    dump walks them all, other programs' TIME_WAIT sockets included).
//! 5. **churn** (`SCALE_CHURN_SECS`, default 5): every second 10 % (or
//!    `SCALE_CHURN_SHARE`, a fraction) of the
//!    jobs hang up, one at a time, evenly spread over the second: a random
//!    running job's client closes its socket (`close()`: a FIN) and a new
//!    client connects at once in its place (a non-blocking connect: it
//!    waits in the listen queue for a worker to come free, and the loop
//!    does not wait for it) and joins the running jobs once it has read its
//!    job's line. Before the close the bench opens pidfds on the job's sh
//!    and sleep (checking their start times against those read when the
//!    job started: no recycled pid); latency = from the `close()` to both
//!    gone, p50 / p99 / max; one still there 10 s after its hang-up counts
//!    as not gone. One thread polls every pidfd and every new client. The
//!    supervisor's CPU and the machine's busy share over the churn, and the
//!    CPU by class over the churn and its drain, are reported. Targets:
//!    p99 ≤ 25 ms with the worker watch, ≤ check interval (100 ms) + 25 ms
//!    without.
//! 6. **stop**: SIGTERM (through a pidfd on our unreaped child) with N
//!    jobs running and `--grace 0`: the time to jobd's exit, waited for up
//!    to `SCALE_STOP_SECS` (default 45; past it the row says how many
//!    workers were left, and jobd gets SIGINT, then SIGKILL after 5 s);
//!    then any process still carrying this run's marker is counted and
//!    killed, and a cgroup tree jobd left is removed once empty.
//!
//! Targets (information, printed as PASS/MISS, never assertions):
//! supervisor ≤ 2 % of a core and VmRSS ≤ 10 MiB for N ≤ 1,000, ≤ 5 % and
//! ≤ 30 MiB above (up to 5,000); worker PSS ≤ 150 KiB at every N; churn p99
//! as above.
//!
//! Resources: the bench raises its soft RLIMIT_NOFILE (jobd inherits it) up
//! to the hard limit and prints what N needs: 3N processes (N workers, N sh,
//! N sleep) against `kernel.pid_max`, `kernel.threads-max` and
//! RLIMIT_NPROC; N client sockets here and N worker pidfds in the
//! supervisor against RLIMIT_NOFILE.
//!
//! Environment: `SCALE_N` (comma-separated, default `100,1000,5000`),
//! `SCALE_CONFIGS` (configurations for N ≤ 1,000, comma-separated names or
//! `all`; default all four), `SCALE_CONFIGS_BIG` (for N > 1,000; default
//! `sock-diag/watch-on,sock-diag/watch-off`), `SCALE_WATCH_SECS` (default
//! 5), `SCALE_CHURN_SECS` (default 5), `SCALE_SCANS` (default 50),
//! `SCALE_STOP_SECS` (default 45), `SCALE_LOG_DIR` (keep jobd's logs
//! there). A run time estimate is printed first.
//!
//! Output: progress on stderr; on stdout two markdown tables (the
//! measurements; CPU by class), PASS/MISS lines and one `JSON ` line per
//! run.
//!
//! Cleanup: jobd is stopped by pid (SIGTERM; SIGINT and then SIGKILL if it
//! does not exit, also from a drop guard if the bench panics), waited for,
//! and every process carrying this run's marker is swept. No pkill.

// The `json!` of a report has more keys than the default limit expands.
#![recursion_limit = "256"]

mod common;

use std::ffi::OsString;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use jobd::detect::procfs::ProcNet;
use jobd::detect::sockdiag::SockDiag;
use jobd::detect::{JOB_SOCKET_STATES, SockEntry, SocketSource};
use nix::sys::resource::{Resource, getrlimit};
use rustix::event::{PollFd, PollFlags, Timespec, poll};
use rustix::process::Signal;

/// The job: a tree of two processes (sh and its `sleep` child), silent
/// after its one line.
const HANDLER: &str = "#!/bin/sh\nsleep 600 &\necho \"$$ $!\"\nwait\n";
const CHECK_INTERVAL_MS: f64 = 100.0;
/// Above this N the configurations are `SCALE_CONFIGS_BIG`'s.
const BIG_N: usize = 1000;
const WATCH_TARGET_MS: f64 = 25.0;
const WORKER_PSS_TARGET_KIB: f64 = 150.0;
/// Workers whose PSS is read one by one (median).
const PSS_SAMPLE: usize = 20;
/// Share of the jobs that hang up each second of the churn.
/// The share of the jobs that hang up (and are replaced) each second:
/// `SCALE_CHURN_SHARE` (default 0.10).
fn churn_share() -> f64 {
    std::env::var("SCALE_CHURN_SHARE")
        .ok()
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|v| *v > 0.0 && *v <= 1.0)
        .unwrap_or(0.10)
}
/// Longest wait for a job to go after its hang-up.
const GONE_TIMEOUT: Duration = Duration::from_secs(10);
/// Clients connected before their lines are read (start-up).
const CONNECT_BATCH: usize = 200;
/// No progress this long while growing or connecting: give up.
const STALL: Duration = Duration::from_secs(5);
/// After SIGINT (the SIGTERM was not enough), the wait before SIGKILL.
const KILL_AFTER: Duration = Duration::from_secs(5);
/// New clients of the churn still without a job this long after its end
/// are counted (`unreplaced`) and dropped.
const REPLACE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Copy)]
struct Setup {
    name: &'static str,
    detector: &'static str,
    watch: bool,
}

const SETUPS: &[Setup] = &[
    Setup {
        name: "sock-diag/watch-on",
        detector: "sock-diag",
        watch: true,
    },
    Setup {
        name: "sock-diag/watch-off",
        detector: "sock-diag",
        watch: false,
    },
    Setup {
        name: "procfs/watch-on",
        detector: "procfs",
        watch: true,
    },
    Setup {
        name: "procfs/watch-off",
        detector: "procfs",
        watch: false,
    },
];

impl Setup {
    fn churn_target_ms(&self) -> f64 {
        if self.watch {
            WATCH_TARGET_MS
        } else {
            CHECK_INTERVAL_MS + WATCH_TARGET_MS
        }
    }
}

/// What the bench was asked for.
struct Plan {
    watch: Duration,
    churn: Duration,
    scans: usize,
    stop: Duration,
    handler: PathBuf,
    dir: PathBuf,
    log_dir: Option<PathBuf>,
}

/// A running job: its client and its two processes (with their start
/// times, in clock ticks since boot, to recognise them later).
struct Job {
    stream: TcpStream,
    sh: (i32, u64),
    sleep: (i32, u64),
}

struct Window {
    secs: f64,
    cpu_pct: f64,
    cpu_pct_stat: f64,
    wakes: u64,
    involuntary: u64,
    scans: u64,
    scan_us: u64,
    /// Busy share of the whole machine (every CPU) over the window.
    machine_busy_pct: f64,
    /// CPU by class around the window (see [`CpuSplit::pct_to`]).
    split: [f64; 6],
}

impl Window {
    fn scan_mean_us(&self) -> Option<f64> {
        (self.scans > 0).then(|| self.scan_us as f64 / self.scans as f64)
    }
    fn cpu_us(&self) -> f64 {
        self.cpu_pct / 100.0 * self.secs * 1e6
    }
    fn us_per_wake(&self) -> Option<f64> {
        (self.wakes > 0).then(|| self.cpu_us() / self.wakes as f64)
    }
    fn us_per_check(&self) -> f64 {
        self.cpu_us() / (self.secs * 1e3 / CHECK_INTERVAL_MS)
    }
}

#[derive(Default)]
struct Mem {
    sup_rss: u64,
    sup_hwm: u64,
    sup_pss: u64,
    workers: usize,
    worker_pss_median: f64,
    worker_pss_range: (u64, u64),
    worker_rss_median: f64,
    /// Open descriptors of the sampled workers: fewest, most.
    worker_fds: (usize, usize),
    sup_fds: usize,
    workers_pss_sum: u64,
    handlers: usize,
    handlers_pss_sum: u64,
    read_ms: f64,
}

#[derive(Default)]
struct Churn {
    secs: f64,
    closes: usize,
    latencies_ms: Vec<f64>,
    died_early: usize,
    not_gone: usize,
    replaced: usize,
    errors: Vec<String>,
    sup_cpu_pct: f64,
    sup_wakes: u64,
    /// Busy share of the whole machine (every CPU) over the churn.
    machine_busy_pct: f64,
    /// New clients without a job `REPLACE_TIMEOUT` after the churn.
    unreplaced: usize,
    /// CPU by class over the churn and its drain (see
    /// [`CpuSplit::pct_to`]).
    split: [f64; 6],
    jobs_after: usize,
    /// `job cancelled` lines of jobd's log, by who saw the hang-up.
    seen_watch: usize,
    seen_scan: usize,
}

impl Churn {
    fn pct(&self, p: f64) -> Option<f64> {
        percentile(&self.latencies_ms, p)
    }
}

struct ScanRow {
    backend: &'static str,
    iters: usize,
    entries: usize,
    median_us: f64,
    p99_us: f64,
}

struct Report {
    n: usize,
    /// The N this row stands for, when it ran smaller because N did not
    /// fit.
    asked: usize,
    setup: Setup,
    workers_idle: usize,
    jobs_running: usize,
    listen_s: f64,
    startup_s: Option<f64>,
    jobs_up_s: Option<f64>,
    grow_peak_rss: u64,
    grow_peak_tree_pss: u64,
    window: Option<Window>,
    mem: Option<Mem>,
    scans: Vec<ScanRow>,
    /// TCP sockets in the network namespace (every dump walks them all),
    /// and those in TIME_WAIT, when the bench timed its scans.
    ns_sockets: (usize, usize),
    churn: Option<Churn>,
    stop_s: Option<f64>,
    /// How long the stop was waited for, and the workers still there when
    /// jobd had not exited by then.
    stop_timeout_s: f64,
    stop_workers_left: Option<usize>,
    stop: String,
    left_after_exit: usize,
    swept: usize,
    containment: String,
    cgroup_left: Option<String>,
    log_problems: Vec<String>,
    errors: Vec<String>,
    ran_out: Option<String>,
    wall_s: f64,
}

impl Report {
    /// Whether the stop began while jobd still had hang-ups of the churn
    /// to work off (jobs not gone, new clients without a job).
    fn stop_after_backlog(&self) -> bool {
        self.churn
            .as_ref()
            .is_some_and(|c| c.not_gone > 0 || c.unreplaced > 0)
    }

    fn fits(&self) -> bool {
        self.ran_out.is_none() && self.workers_idle >= self.n && self.jobs_running >= self.n
    }
}

fn main() {
    let ns: Vec<usize> = std::env::var("SCALE_N")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| "100,1000,5000".into())
        .split(',')
        .map(|s| {
            s.trim()
                .parse::<usize>()
                .unwrap_or_else(|_| panic!("SCALE_N: {s:?} is not a number"))
                .clamp(1, 10_000)
        })
        .collect();
    let setups = setups_of("SCALE_CONFIGS", "all");
    let setups_big = setups_of(
        "SCALE_CONFIGS_BIG",
        "sock-diag/watch-on,sock-diag/watch-off",
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let plan = Plan {
        watch: env_secs("SCALE_WATCH_SECS", 5.0),
        churn: env_secs("SCALE_CHURN_SECS", 5.0),
        scans: env_usize("SCALE_SCANS", 50).max(4),
        stop: env_secs("SCALE_STOP_SECS", 45.0),
        handler: write_script(dir.path(), "long-job.sh", HANDLER).expect("handler"),
        dir: dir.path().to_path_buf(),
        log_dir: std::env::var_os("SCALE_LOG_DIR")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from),
    };
    let t_all = Instant::now();
    let max_n = ns.iter().copied().max().unwrap_or(1);
    println!("scale: {}", machine_line());
    let names = |v: &[Setup]| v.iter().map(|c| c.name).collect::<Vec<_>>().join(", ");
    println!(
        "scale: N = {ns:?}; configurations {} (N > {BIG_N}: {}); idle window {:.1} s, churn {:.1} s \
         ({:.0} % of the jobs hang up per second, FIN), check interval {CHECK_INTERVAL_MS} ms",
        names(&setups),
        names(&setups_big),
        plan.watch.as_secs_f64(),
        plan.churn.as_secs_f64(),
        churn_share() * 100.0
    );
    // Client sockets, pidfds in flight and slack; the supervisor's pidfds
    // (one per worker) count against the same limit, in jobd.
    let nofile = match raise_nofile(max_n as u64 + max_n as u64 / 2 + 512) {
        Ok(n) => n,
        Err(e) => {
            println!("scale: {e}");
            getrlimit(Resource::RLIMIT_NOFILE).map_or(0, |l| l.0)
        }
    };
    for &n in &ns {
        println!("scale: {}", preflight(n, nofile));
    }
    println!(
        "scale: estimated run time {:.0} s (a guess from earlier runs here: per run 4 s + the two \
         windows + start-up and stop, which grow faster than N)",
        estimate(&ns, setups.len(), setups_big.len(), &plan)
    );

    let mut reports: Vec<Report> = Vec::new();
    for &asked in &ns {
        let mut n = asked;
        for s in if asked > BIG_N { &setups_big } else { &setups } {
            let mut r = run(n, asked, *s, &plan);
            print_problems(&r);
            // Did not fit: the largest N that does, from what started.
            let mut tries = 0;
            while !r.fits() && tries < 3 && n > 100 {
                let got = if r.workers_idle < n {
                    r.workers_idle
                } else {
                    r.jobs_running.min(n - 1)
                };
                let smaller = ((got * 9 / 10) / 100 * 100).max(100).min(n - 100);
                println!(
                    "scale: N={n} ({}) did not fit: {}; trying N={smaller}",
                    s.name,
                    r.ran_out.as_deref().unwrap_or("not every job started")
                );
                reports.push(r);
                n = smaller;
                tries += 1;
                r = run(n, asked, *s, &plan);
                print_problems(&r);
            }
            reports.push(r);
        }
    }
    print_table(&reports);
    print_verdicts(&reports);
    for r in &reports {
        println!("JSON {}", json(r));
    }
    println!(
        "scale: total wall time {:.1} s",
        t_all.elapsed().as_secs_f64()
    );
}

/// The configurations named in `var` (comma-separated, or `all`).
fn setups_of(var: &str, default: &str) -> Vec<Setup> {
    let v = std::env::var(var)
        .ok()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| default.into());
    if v.trim() == "all" {
        return SETUPS.to_vec();
    }
    v.split(',')
        .map(|x| {
            let x = x.trim();
            *SETUPS.iter().find(|c| c.name == x).unwrap_or_else(|| {
                let names: Vec<&str> = SETUPS.iter().map(|c| c.name).collect();
                panic!("{var}: no configuration {x:?} (known: {names:?})")
            })
        })
        .collect()
}

/// A rough run time, printed up front.
fn estimate(ns: &[usize], setups: usize, setups_big: usize, plan: &Plan) -> f64 {
    let fixed = 4.0 + plan.watch.as_secs_f64() + plan.churn.as_secs_f64();
    let stop_cap = plan.stop.as_secs_f64() + KILL_AFTER.as_secs_f64();
    ns.iter()
        .map(|&n| {
            let runs = if n > BIG_N { setups_big } else { setups } as f64;
            // Fitted to runs on this 2-CPU machine: start-up (workers, then
            // jobs) grows faster than N, the stop as N squared (capped by
            // the wait), memory readings and scans with N, the churn's
            // drain with the load.
            let k = n as f64 / 1000.0;
            let start = 2.9 * k + 1.2 * k * k;
            let stop = (2.0 * k * k).min(stop_cap);
            let drain = (0.5 * k * k).min(12.0);
            runs * (fixed + start + 0.8 * k + stop + drain)
        })
        .sum()
}

fn read_num(path: &str) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// What N needs (processes, descriptors) against this machine's limits.
fn preflight(n: usize, nofile: u64) -> String {
    let procs_now = std::fs::read_dir("/proc").map_or(0, |d| {
        d.flatten()
            .filter(|e| {
                e.file_name()
                    .to_str()
                    .is_some_and(|s| s.parse::<u32>().is_ok())
            })
            .count()
    });
    let pid_max = read_num("/proc/sys/kernel/pid_max").unwrap_or(0);
    let threads_max = read_num("/proc/sys/kernel/threads-max").unwrap_or(0);
    let nproc = getrlimit(Resource::RLIMIT_NPROC).map_or(0, |l| l.0);
    let need_procs = 3 * n as u64 + 1;
    let need_fds = n as u64 + 64;
    let mut short = Vec::new();
    if procs_now as u64 + need_procs > pid_max {
        short.push(format!("pid_max {pid_max}"));
    }
    if procs_now as u64 + need_procs > threads_max {
        short.push(format!("threads-max {threads_max}"));
    }
    if need_procs > nproc {
        short.push(format!("RLIMIT_NPROC {nproc} (not enforced for root)"));
    }
    if need_fds > nofile {
        short.push(format!("RLIMIT_NOFILE {nofile}"));
    }
    format!(
        "N={n}: needs {need_procs} processes ({procs_now} exist; pid_max {pid_max}, \
         threads-max {threads_max}, RLIMIT_NPROC {nproc}) and about {need_fds} descriptors \
         in the bench and in the supervisor (RLIMIT_NOFILE soft {nofile}): {}",
        if short.is_empty() {
            "fits".to_string()
        } else {
            format!("short of {}", short.join(", "))
        }
    )
}

fn jobd_args(n: usize, s: &Setup, handler: &Path, scoreboard: &Path) -> Vec<OsString> {
    let n = n.to_string();
    let mut a: Vec<OsString> = [
        "--listen",
        "127.0.0.1:0",
        "--prefork",
        &n,
        "--max-children",
        &n,
        "--detector",
        s.detector,
        "--worker-watch",
        if s.watch { "on" } else { "off" },
        "--check-interval",
        "100ms",
        "--fin-grace",
        "0",
        "--grace",
        "0",
    ]
    .iter()
    .map(OsString::from)
    .collect();
    a.push("--scoreboard".into());
    a.push(scoreboard.into());
    a.push("--script".into());
    a.push(handler.into());
    a
}

/// Stops jobd (SIGINT, then SIGKILL) and sweeps its marker if the bench
/// leaves a run early or panics.
struct Guard(Option<Spawned>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(s) = self.0.take() {
            eprintln!("    cleanup: jobd {}", s.stop_with(Signal::INT, KILL_AFTER));
        }
    }
}

fn run(n: usize, asked: usize, setup: Setup, plan: &Plan) -> Report {
    let t_run = Instant::now();
    let mut r = Report {
        n,
        asked,
        setup,
        workers_idle: 0,
        jobs_running: 0,
        listen_s: 0.0,
        startup_s: None,
        jobs_up_s: None,
        grow_peak_rss: 0,
        grow_peak_tree_pss: 0,
        window: None,
        mem: None,
        scans: Vec::new(),
        ns_sockets: (0, 0),
        churn: None,
        stop_s: None,
        stop_timeout_s: plan.stop.as_secs_f64(),
        stop_workers_left: None,
        stop: String::new(),
        left_after_exit: 0,
        swept: 0,
        containment: String::new(),
        cgroup_left: None,
        log_problems: Vec::new(),
        errors: Vec::new(),
        ran_out: None,
        wall_s: 0.0,
    };
    eprintln!("--- N={n} {} ---", setup.name);
    let tag = format!("{n}-{}", setup.name.replace('/', "_"));
    let sb_path = plan.dir.join(format!("scoreboard-{tag}"));
    let args = jobd_args(n, &setup, &plan.handler, &sb_path);
    let t_spawn = Instant::now();
    let server = match spawn_jobd(
        &format!("jobd-{tag}"),
        &args,
        &plan.dir,
        Duration::from_secs(30),
    ) {
        Ok(s) => s,
        Err(e) => {
            r.ran_out = Some(format!("jobd did not start: {e}"));
            r.errors.push(e);
            r.wall_s = t_run.elapsed().as_secs_f64();
            return r;
        }
    };
    r.listen_s = t_spawn.elapsed().as_secs_f64();
    let sup = server.pid();
    let addr = server.addr;
    let log = server.log.clone();
    let marker = server.marker.clone();
    // Our unreaped child: the pid is its own until we wait for it.
    let sup_fd = pidfd_open(sup).ok();
    let mut guard = Guard(Some(server));
    let deadline = t_spawn + Duration::from_secs(60) + Duration::from_millis(20 * n as u64);

    let mut jobs: Vec<Job> = Vec::new();
    'measure: {
        // 1. Start-up: N workers idle.
        grow(&mut r, sup, &sb_path, &log, t_spawn, deadline, &mut guard);
        if r.workers_idle < n {
            break 'measure;
        }
        eprintln!(
            "    {} workers idle {:.2} s after the spawn (listening after {:.2} s)",
            r.workers_idle,
            r.startup_s.unwrap_or(f64::NAN),
            r.listen_s
        );
        let t_jobs = Instant::now();
        jobs = open_jobs(addr, n, deadline, &mut r.errors);
        r.jobs_running = jobs.len();
        if jobs.len() < n {
            r.ran_out = Some(ran_out_text(&log, &r.errors, "not every job started"));
            break 'measure;
        }
        r.jobs_up_s = Some(t_jobs.elapsed().as_secs_f64());
        eprintln!(
            "    {} jobs running after {:.2} s",
            jobs.len(),
            r.jobs_up_s.unwrap_or(f64::NAN)
        );
        // Every slot busy: the supervisor sees the N jobs.
        let until = Instant::now() + Duration::from_secs(10);
        let busy = loop {
            let b = jobd::status::read(&sb_path).map_or(0, |s| s.totals.busy);
            if b >= n || Instant::now() >= until {
                break b;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        if busy < n {
            r.errors
                .push(format!("only {busy} of {n} slots busy in the scoreboard"));
        }

        // 2. The idle window.
        match cpu_window(sup, &sb_path, plan.watch) {
            Some(w) => {
                eprintln!(
                    "    idle window: supervisor {:.2} % of a core, {} wakes, {} scans (mean {:.0} µs)",
                    w.cpu_pct,
                    w.wakes,
                    w.scans,
                    w.scan_mean_us().unwrap_or(f64::NAN)
                );
                r.window = Some(w);
            }
            None => {
                r.errors
                    .push("supervisor vanished during the window".into());
                break 'measure;
            }
        }
        // 3. Memory.
        let m = sample_mem(sup);
        eprintln!(
            "    memory: supervisor VmRSS {} KiB, PSS {} KiB; worker PSS median {:.0} KiB; read in {:.0} ms",
            m.sup_rss, m.sup_pss, m.worker_pss_median, m.read_ms
        );
        r.mem = Some(m);
        // 4. The scan, timed here.
        r.ns_sockets = namespace_sockets();
        r.scans = bench_scans(addr, plan.scans, &mut r.errors);
        // 5. Churn.
        let c = churn(&mut jobs, addr, n, sup, plan.churn, &log);
        eprintln!(
            "    churn: {} hang-ups, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; supervisor {:.2} % of a core",
            c.latencies_ms.len(),
            c.pct(0.5).unwrap_or(f64::NAN),
            c.pct(0.99).unwrap_or(f64::NAN),
            c.pct(1.0).unwrap_or(f64::NAN),
            c.sup_cpu_pct
        );
        r.churn = Some(c);
    }
    // Log problems up to the stop (the stop itself logs a warning with
    // --grace 0).
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    r.log_problems = problem_lines(&text);
    if let Some(l) = text.lines().find(|l| l.contains("job containment:")) {
        r.containment = field(l, "containment=").unwrap_or("").to_string();
    }
    let cgroup = text
        .lines()
        .find(|l| l.contains("job containment:"))
        .and_then(|l| field(l, "cgroup="))
        .map(PathBuf::from);

    // 6. Stop: SIGTERM, --grace 0, N jobs running.
    if let Some(mut server) = guard.0.take() {
        let t = Instant::now();
        let exited = match &sup_fd {
            Some(fd) if pidfd_signal(fd, Signal::TERM).is_ok() => {
                let until = t + plan.stop;
                loop {
                    if poll_exited(&[fd], until.saturating_duration_since(Instant::now()))[0] {
                        break true;
                    }
                    if Instant::now() >= until {
                        break false;
                    }
                }
            }
            _ => false,
        };
        if exited {
            r.stop_s = Some(t.elapsed().as_secs_f64());
        } else {
            r.stop_workers_left = Some(children_of(sup).len());
        }
        // Reaps it (SIGINT, then SIGKILL, if it did not exit).
        r.stop = stop_child(&mut server.child, Signal::INT, KILL_AFTER);
        r.left_after_exit = marked_pids(&marker).len();
        r.swept = kill_marked(&marker).len();
        drop(jobs);
        // jobd removes its cgroup tree as it exits; one left behind (a
        // SIGKILLed jobd) is removed once the processes killed above are
        // gone (rmdir refuses a populated cgroup).
        // Workers of a SIGKILLed jobd take a while to go (each cancels its
        // job first), and a cgroup may refuse rmdir for a moment after its
        // last process exited: retried until a deadline.
        if let Some(base) = cgroup.filter(|b| b.exists()) {
            let until = Instant::now() + Duration::from_secs(30);
            let how = loop {
                let how = if cgroup_empty(&base) {
                    match remove_cgroup_tree(&base) {
                        Ok(()) => "left behind; removed".to_string(),
                        Err(left) => format!("left behind; could not remove {}", left.len()),
                    }
                } else {
                    "left behind; still populated".into()
                };
                if !base.exists() || Instant::now() >= until {
                    break how;
                }
                std::thread::sleep(Duration::from_millis(100));
            };
            r.cgroup_left = Some(format!("{}: {how}", base.display()));
        }
        eprintln!(
            "    stop: {} in {:.2} s; {} marked processes left at exit, {} swept",
            r.stop,
            r.stop_s.unwrap_or(f64::NAN),
            r.left_after_exit,
            r.swept
        );
    }
    if let Some(d) = &plan.log_dir {
        let _ = std::fs::create_dir_all(d);
        let _ = std::fs::copy(&log, d.join(format!("{tag}.log")));
    }
    r.wall_s = t_run.elapsed().as_secs_f64();
    r
}

/// Waits for N idle workers, sampling memory; sets `startup_s`, the peaks
/// and, when it gives up, `ran_out`.
fn grow(
    r: &mut Report,
    sup: i32,
    sb_path: &Path,
    log: &Path,
    t_spawn: Instant,
    deadline: Instant,
    guard: &mut Guard,
) {
    let n = r.n;
    let mut next_pss = Instant::now();
    let mut next_log = Instant::now() + Duration::from_millis(500);
    let mut fork_failed = false;
    let mut last = (0, Instant::now());
    loop {
        let idle = jobd::status::read(sb_path).map_or(0, |s| s.totals.idle);
        let now = Instant::now();
        r.grow_peak_rss = r.grow_peak_rss.max(status_kib(sup, "VmRSS").unwrap_or(0));
        if idle > last.0 {
            last = (idle, now);
        }
        r.workers_idle = idle;
        if idle >= n {
            r.startup_s = Some(t_spawn.elapsed().as_secs_f64());
            r.grow_peak_tree_pss = r.grow_peak_tree_pss.max(tree_pss(sup));
            return;
        }
        if now >= next_pss {
            // Reading every worker's smaps_rollup costs the bench (and the
            // two CPUs jobd grows on): at most a tenth of its time.
            r.grow_peak_tree_pss = r.grow_peak_tree_pss.max(tree_pss(sup));
            next_pss = Instant::now() + Duration::from_secs(1).max(now.elapsed() * 10);
        }
        if now >= next_log {
            next_log = now + Duration::from_millis(500);
            let text = std::fs::read_to_string(log).unwrap_or_default();
            fork_failed |= text.contains("forking a worker failing");
        }
        let exited = guard
            .0
            .as_mut()
            .is_none_or(|s| matches!(s.child.try_wait(), Ok(Some(_))));
        // Fork failures logged: jobd backs off and retries; give up once
        // they stop it for 2 s.
        let still = now.duration_since(last.1);
        let stalled = still >= STALL || (fork_failed && still >= Duration::from_secs(2));
        if exited || now >= deadline || stalled {
            let why = if exited {
                "jobd exited"
            } else if fork_failed {
                "jobd failed to fork workers"
            } else if stalled {
                "no new idle worker for 5 s"
            } else {
                "deadline"
            };
            let msg = format!(
                "{why}: {idle} of {n} workers idle after {:.1} s",
                t_spawn.elapsed().as_secs_f64()
            );
            r.ran_out = Some(ran_out_text(log, std::slice::from_ref(&msg), why));
            r.errors.push(msg);
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What ran out: jobd's WARN/ERROR lines and the bench's errors, in short.
fn ran_out_text(log: &Path, errors: &[String], what: &str) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let problems = problem_lines(&text);
    let mut parts = vec![what.to_string()];
    if let Some(p) = problems.first() {
        parts.push(format!(
            "jobd: {} ({} WARN/ERROR lines)",
            p.split_once("jobd::").map_or(p.as_str(), |x| x.1),
            problems.len()
        ));
    }
    if let Some(e) = errors.first() {
        parts.push(format!("bench: {e} ({} errors)", errors.len()));
    }
    parts.join("; ")
}

fn problem_lines(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .map(str::to_string)
        .collect()
}

/// The value of `name` (which includes the `=`) in a text log line.
fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let rest = &line[line.find(name)? + name.len()..];
    Some(rest.split_whitespace().next()?.trim_matches('"'))
}

/// Field 22 of `/proc/<pid>/stat`: the start time, in clock ticks since
/// boot.
fn start_time(pid: i32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// A job's first line, `$$ $!`, and the start times of the two processes.
fn read_job(stream: TcpStream) -> Result<Job, String> {
    let (sh, sleep) = read_pid_pair(&stream)?;
    let st = |p: i32| start_time(p).ok_or_else(|| format!("pid {p} gone right after its line"));
    Ok(Job {
        sh: (sh, st(sh)?),
        sleep: (sleep, st(sleep)?),
        stream,
    })
}

/// Connects `n` clients, `CONNECT_BATCH` at a time, and reads each one's
/// job line.
fn open_jobs(addr: SocketAddr, n: usize, deadline: Instant, errors: &mut Vec<String>) -> Vec<Job> {
    let mut jobs = Vec::with_capacity(n);
    while jobs.len() < n {
        let batch = CONNECT_BATCH.min(n - jobs.len());
        let mut conns = Vec::with_capacity(batch);
        for _ in 0..batch {
            if Instant::now() >= deadline {
                errors.push(format!("deadline: {} jobs running", jobs.len()));
                return jobs;
            }
            match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
                Ok(s) => conns.push(s),
                Err(e) => {
                    errors.push(format!("connect (with {} jobs running): {e}", jobs.len()));
                    return jobs;
                }
            }
        }
        let got = jobs.len();
        for s in conns {
            let left = deadline.saturating_duration_since(Instant::now());
            let _ = s.set_read_timeout(Some(left.clamp(Duration::from_millis(100), STALL)));
            match read_job(s) {
                Ok(j) => jobs.push(j),
                Err(e) => errors.push(format!("job {}: {e}", jobs.len())),
            }
        }
        if jobs.len() < got + batch {
            // A job did not start: the rest would not either.
            return jobs;
        }
    }
    jobs
}

/// Supervisor CPU, wakes and scans over `secs`.
fn cpu_window(sup: i32, sb_path: &Path, secs: Duration) -> Option<Window> {
    let totals = || jobd::status::read(sb_path).ok().map(|s| s.totals);
    let switches = |f: &str| status_kib(sup, f);
    let split0 = CpuSplit::read(sup);
    let t0s = totals()?;
    let t0 = Instant::now();
    let m0 = machine_jiffies();
    let (k0, n0) = (proc_cpu_ticks(sup)?, proc_runtime_ns(sup)?);
    let (v0, i0) = (
        switches("voluntary_ctxt_switches")?,
        switches("nonvoluntary_ctxt_switches")?,
    );
    std::thread::sleep(secs);
    let (k1, n1) = (proc_cpu_ticks(sup)?, proc_runtime_ns(sup)?);
    let (v1, i1) = (
        switches("voluntary_ctxt_switches")?,
        switches("nonvoluntary_ctxt_switches")?,
    );
    let wall = t0.elapsed().as_secs_f64();
    let machine_busy_pct = busy_pct(m0, machine_jiffies());
    let t1s = totals()?;
    let split = split0.pct_to(&CpuSplit::read(sup));
    Some(Window {
        split,
        secs: wall,
        cpu_pct: n1.saturating_sub(n0) as f64 / 1e9 / wall * 100.0,
        cpu_pct_stat: k1.saturating_sub(k0) as f64 / clk_tck() / wall * 100.0,
        wakes: v1.saturating_sub(v0),
        involuntary: i1.saturating_sub(i0),
        scans: t1s.scans.saturating_sub(t0s.scans),
        scan_us: t1s.scan_us.saturating_sub(t0s.scan_us),
        machine_busy_pct,
    })
}

/// utime + stime, and cutime + cstime (reaped children), of a process in
/// clock ticks: fields 14 to 17 of `/proc/<pid>/stat`.
fn ticks_own_and_reaped(pid: i32) -> Option<(u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(4)
        .map(|x| x.parse::<i64>().map_or(0, |v| v.max(0) as u64))
        .collect();
    (f.len() == 4).then(|| (f[0] + f[1], f[2] + f[3]))
}

/// CPU seconds so far by class: the supervisor, the workers themselves,
/// the handlers (sh and sleep: live ones, and those the workers reaped,
/// in their cutime), this bench, and the whole machine (busy jiffies).
/// A live process's own time is its schedstat runtime (nanoseconds: each
/// of these processes has one thread; the clock ticks of `stat` round a
/// light process's few milliseconds down to nothing).
#[derive(Clone, Copy, Default)]
struct CpuSplit {
    at: Option<Instant>,
    sup: f64,
    workers: f64,
    handlers: f64,
    bench: f64,
    machine: f64,
}

impl CpuSplit {
    fn read(sup: i32) -> CpuSplit {
        let hz = clk_tck();
        let own = |p: i32| proc_runtime_ns(p).unwrap_or(0) as f64 / 1e9;
        let reaped = |p: i32| ticks_own_and_reaped(p).map_or(0.0, |t| t.1 as f64 / hz);
        let (mut workers, mut handlers) = (0.0, 0.0);
        for w in children_of(sup) {
            workers += own(w);
            handlers += reaped(w);
            for sh in children_of(w) {
                handlers += own(sh) + reaped(sh);
                handlers += children_of(sh).into_iter().map(own).sum::<f64>();
            }
        }
        CpuSplit {
            at: Some(Instant::now()),
            sup: own(sup),
            workers,
            handlers,
            bench: rusage_cpu_s(nix::sys::resource::UsageWho::RUSAGE_SELF),
            machine: machine_jiffies().0 as f64 / hz,
        }
    }

    /// From `self` to `later`, as % of one core over the wall time between
    /// the readings: (supervisor, workers, handlers, bench, the rest of
    /// the machine, wall seconds).
    fn pct_to(&self, later: &CpuSplit) -> [f64; 6] {
        let wall = match (self.at, later.at) {
            (Some(a), Some(b)) => b.duration_since(a).as_secs_f64().max(1e-3),
            _ => return [f64::NAN; 6],
        };
        let d = |a: f64, b: f64| (b - a).max(0.0) / wall * 100.0;
        let sup = d(self.sup, later.sup);
        let workers = d(self.workers, later.workers);
        let handlers = d(self.handlers, later.handlers);
        let bench = d(self.bench, later.bench);
        let rest = (d(self.machine, later.machine) - sup - workers - handlers - bench).max(0.0);
        [sup, workers, handlers, bench, rest, wall]
    }
}

fn split_json(p: &[f64; 6]) -> serde_json::Value {
    serde_json::json!({
        "supervisor_pct": p[0], "workers_pct": p[1], "handlers_pct": p[2],
        "bench_pct": p[3], "rest_of_machine_pct": p[4], "wall_s": p[5],
    })
}

/// `Pss:` of `/proc/<pid>/smaps_rollup`, KiB.
fn pss_kib(pid: i32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    s.lines()
        .find(|l| l.starts_with("Pss:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// PSS of the supervisor and its workers (not the handlers), KiB.
fn tree_pss(sup: i32) -> u64 {
    pss_kib(sup).unwrap_or(0)
        + children_of(sup)
            .into_iter()
            .filter_map(pss_kib)
            .sum::<u64>()
}

fn sample_mem(sup: i32) -> Mem {
    let t = Instant::now();
    let workers = children_of(sup);
    let mut m = Mem {
        sup_rss: status_kib(sup, "VmRSS").unwrap_or(0),
        sup_hwm: status_kib(sup, "VmHWM").unwrap_or(0),
        sup_pss: pss_kib(sup).unwrap_or(0),
        sup_fds: fd_count(sup),
        workers: workers.len(),
        ..Mem::default()
    };
    let step = (workers.len() / PSS_SAMPLE).max(1);
    let sample: Vec<i32> = workers
        .iter()
        .step_by(step)
        .take(PSS_SAMPLE)
        .copied()
        .collect();
    let pss: Vec<u64> = sample.iter().filter_map(|&w| pss_kib(w)).collect();
    let rss: Vec<f64> = sample
        .iter()
        .filter_map(|&w| status_kib(w, "VmRSS"))
        .map(|x| x as f64)
        .collect();
    let fds: Vec<usize> = sample.iter().map(|&w| fd_count(w)).collect();
    m.worker_pss_median = median(&pss.iter().map(|&x| x as f64).collect::<Vec<_>>()).unwrap_or(0.0);
    m.worker_pss_range = (
        pss.iter().copied().min().unwrap_or(0),
        pss.iter().copied().max().unwrap_or(0),
    );
    m.worker_rss_median = median(&rss).unwrap_or(0.0);
    m.worker_fds = (
        fds.iter().copied().min().unwrap_or(0),
        fds.iter().copied().max().unwrap_or(0),
    );
    for &w in &workers {
        m.workers_pss_sum += pss_kib(w).unwrap_or(0);
        for sh in children_of(w) {
            m.handlers += 1;
            m.handlers_pss_sum += pss_kib(sh).unwrap_or(0);
            for c in children_of(sh) {
                m.handlers += 1;
                m.handlers_pss_sum += pss_kib(c).unwrap_or(0);
            }
        }
    }
    m.read_ms = t.elapsed().as_secs_f64() * 1e3;
    m
}

/// `iters` dumps of `src` as the supervisor scans (the listener's port,
/// the job states), timed here.
fn time_dumps(src: &mut dyn SocketSource, port: u16, iters: usize) -> Result<ScanRow, String> {
    let backend = src.name();
    let mut out: Vec<SockEntry> = Vec::with_capacity(8192);
    let t = time_scans(iters, &mut out, dump_of(src, port, JOB_SOCKET_STATES))
        .map_err(|e| format!("{backend} scan: {e}"))?;
    Ok(ScanRow {
        backend,
        iters,
        entries: t.entries.1,
        median_us: t.median().as_secs_f64() * 1e6,
        p99_us: t.p99().as_secs_f64() * 1e6,
    })
}

/// Scans of the listener's port as the supervisor does them, timed here.
fn bench_scans(addr: SocketAddr, iters: usize, errors: &mut Vec<String>) -> Vec<ScanRow> {
    let port = addr.port();
    let mut results = Vec::new();
    match SockDiag::open() {
        Ok(mut sd) => {
            sd.only_family(addr.is_ipv6());
            results.push(time_dumps(&mut sd, port, iters));
        }
        Err(e) => errors.push(format!("sock_diag open: {e}")),
    }
    let mut pn = ProcNet::for_family(addr.is_ipv6());
    results.push(time_dumps(&mut pn, port, (iters / 2).max(4)));
    let mut rows = Vec::new();
    for r in results {
        match r {
            Ok(row) => rows.push(row),
            Err(e) => errors.push(e),
        }
    }
    rows
}

/// A small xorshift generator: enough to pick jobs.
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        Rng(seed | 1)
    }
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n.max(1) as u64) as usize
    }
}

/// A hang-up being watched: pidfds on the sh and the sleep.
struct Gone {
    t0: Instant,
    fds: Vec<OwnedFd>,
    gone: Vec<bool>,
}

/// A connection to `addr`, started without waiting for it (non-blocking
/// `connect`); it becomes readable once the job has written its line, or
/// on an error.
fn connect_nonblocking(addr: SocketAddr) -> std::io::Result<TcpStream> {
    use rustix::net::{AddressFamily, SocketFlags, SocketType};
    let family = if addr.is_ipv6() {
        AddressFamily::INET6
    } else {
        AddressFamily::INET
    };
    let fd = rustix::net::socket_with(
        family,
        SocketType::STREAM,
        SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
        None,
    )?;
    match rustix::net::connect(&fd, &addr) {
        Ok(()) | Err(rustix::io::Errno::INPROGRESS) => Ok(TcpStream::from(fd)),
        Err(e) => Err(e.into()),
    }
}

/// Busy share of the machine between two `machine_jiffies` readings, %.
fn busy_pct(a: (u64, u64), b: (u64, u64)) -> f64 {
    let total = b.1.saturating_sub(a.1);
    if total == 0 {
        return f64::NAN;
    }
    b.0.saturating_sub(a.0) as f64 / total as f64 * 100.0
}

/// pidfds on a job's two processes, if they are still the ones that
/// started (same start time once pinned by the pidfd).
fn pin_job(j: &Job) -> Result<Vec<OwnedFd>, String> {
    let mut fds = Vec::with_capacity(2);
    for (pid, st) in [j.sh, j.sleep] {
        let fd = pidfd_open(pid).map_err(|e| format!("pid {pid}: {e}"))?;
        if start_time(pid) != Some(st) || pidfd_exited(&fd) {
            return Err(format!("pid {pid} exited before its hang-up"));
        }
        fds.push(fd);
    }
    Ok(fds)
}

/// The churn (see the module comment); `jobs` is refilled as the new
/// clients' jobs start.
fn churn(
    jobs: &mut Vec<Job>,
    addr: SocketAddr,
    n: usize,
    sup: i32,
    secs: Duration,
    log: &Path,
) -> Churn {
    let mut c = Churn::default();
    let mut rng = Rng::new();
    let per_s = ((n as f64 * churn_share()).ceil() as usize).max(1);
    let gap = Duration::from_secs_f64(1.0 / per_s as f64);
    let cancelled_before =
        std::fs::read_to_string(log).map_or(0, |t| t.matches("job cancelled").count());
    let split0 = CpuSplit::read(sup);
    let (k0, v0) = (
        proc_runtime_ns(sup).unwrap_or(0),
        status_kib(sup, "voluntary_ctxt_switches").unwrap_or(0),
    );
    let start = Instant::now();
    let end = start + secs;
    // Hang-ups are watched for GONE_TIMEOUT each; new clients still without
    // a job this long after the churn are counted and dropped.
    let hard_end = end + GONE_TIMEOUT + Duration::from_secs(2);
    let replace_end = end + REPLACE_TIMEOUT;
    let m0 = machine_jiffies();
    let mut next_close = start;
    let mut cpu_taken = false;
    let mut watching: Vec<Gone> = Vec::new();
    let mut pending: Vec<(TcpStream, Instant)> = Vec::new();
    loop {
        let now = Instant::now();
        while now < end && next_close <= now {
            next_close += gap;
            if jobs.is_empty() {
                c.errors.push("no running job to hang up".into());
                continue;
            }
            let job = jobs.swap_remove(rng.below(jobs.len()));
            c.closes += 1;
            match pin_job(&job) {
                Ok(fds) => {
                    let t0 = Instant::now();
                    drop(job.stream); // close(): a FIN
                    let gone = vec![false; fds.len()];
                    watching.push(Gone { t0, fds, gone });
                }
                Err(e) => {
                    c.died_early += 1;
                    if c.died_early <= 3 {
                        c.errors.push(e);
                    }
                }
            }
            // Not waiting for the connection: a full listen queue must not
            // stall the hang-ups and their watch.
            match connect_nonblocking(addr) {
                Ok(s) => pending.push((s, Instant::now())),
                Err(e) => c.errors.push(format!("replacement connect: {e}")),
            }
        }
        if now >= end && !cpu_taken {
            cpu_taken = true;
            c.secs = now.duration_since(start).as_secs_f64();
            c.sup_cpu_pct =
                proc_runtime_ns(sup).unwrap_or(0).saturating_sub(k0) as f64 / 1e9 / c.secs * 100.0;
            c.sup_wakes = status_kib(sup, "voluntary_ctxt_switches")
                .unwrap_or(0)
                .saturating_sub(v0);
            c.machine_busy_pct = busy_pct(m0, machine_jiffies());
        }
        if now >= end && watching.is_empty() && pending.is_empty() {
            break;
        }
        if now >= hard_end {
            c.not_gone += watching.len();
            c.unreplaced += pending.len();
            break;
        }
        // One poll over every live pidfd and every new client.
        let mut wait_until = (now + Duration::from_millis(50)).min(hard_end);
        if now < end {
            wait_until = wait_until.min(next_close);
        }
        let (gone_ready, conn_ready) = {
            let mut pfds: Vec<PollFd> = Vec::new();
            for g in &watching {
                for (fd, _) in g.fds.iter().zip(&g.gone).filter(|(_, d)| !**d) {
                    pfds.push(PollFd::new(fd, PollFlags::IN));
                }
            }
            let split = pfds.len();
            for (s, _) in &pending {
                pfds.push(PollFd::new(s, PollFlags::IN | PollFlags::RDHUP));
            }
            let ts =
                Timespec::try_from(wait_until.saturating_duration_since(now)).unwrap_or_default();
            let _ = poll(&mut pfds, Some(&ts));
            let ready: Vec<bool> = pfds.iter().map(|p| !p.revents().is_empty()).collect();
            (ready[..split].to_vec(), ready[split..].to_vec())
        };
        let t = Instant::now();
        let mut k = 0;
        watching.retain_mut(|g| {
            for d in g.gone.iter_mut().filter(|d| !**d) {
                *d = gone_ready[k];
                k += 1;
            }
            if g.gone.iter().all(|&d| d) {
                c.latencies_ms
                    .push(t.duration_since(g.t0).as_secs_f64() * 1e3);
                return false;
            }
            if t.duration_since(g.t0) >= GONE_TIMEOUT {
                c.not_gone += 1;
                return false; // its pidfds close; the final sweep kills it
            }
            true
        });
        let mut waiting = Vec::with_capacity(pending.len());
        for ((s, at), ready) in pending.drain(..).zip(conn_ready) {
            if ready {
                let job = s
                    .set_nonblocking(false)
                    .and_then(|()| s.set_read_timeout(Some(Duration::from_secs(1))))
                    .map_err(|e| e.to_string())
                    .and_then(|()| read_job(s));
                match job {
                    Ok(j) => {
                        jobs.push(j);
                        c.replaced += 1;
                    }
                    Err(e) => c.errors.push(format!("replacement job: {e}")),
                }
            } else if t >= replace_end {
                c.unreplaced += 1;
            } else {
                waiting.push((s, at));
            }
        }
        pending = waiting;
    }
    // Read after the loop: walking every process takes a while, and no
    // hang-up in flight may wait for it.
    c.split = split0.pct_to(&CpuSplit::read(sup));
    c.latencies_ms.sort_by(f64::total_cmp);
    c.jobs_after = jobs.len();
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let cancelled: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("job cancelled"))
        .skip(cancelled_before)
        .collect();
    c.seen_watch = cancelled
        .iter()
        .filter(|l| l.contains("seen_by=\"worker-watch\""))
        .count();
    c.seen_scan = cancelled
        .iter()
        .filter(|l| l.contains("seen_by=\"scan\""))
        .count();
    c
}

/// Whether a cgroup holds no process (or is gone).
fn cgroup_empty(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("cgroup.events"))
        .map_or(true, |t| t.lines().any(|l| l == "populated 0"))
}

fn print_problems(r: &Report) {
    let name = format!("N={} {}", r.n, r.setup.name);
    for e in r.errors.iter().take(5) {
        println!("scale: {name}: problem: {e}");
    }
    if let Some(c) = &r.churn {
        for e in c.errors.iter().take(5) {
            println!("scale: {name}: churn problem: {e}");
        }
    }
    if !r.log_problems.is_empty() {
        println!(
            "scale: {name}: {} WARN/ERROR lines in jobd's log before the stop (first 3 below)",
            r.log_problems.len()
        );
        for l in r.log_problems.iter().take(3) {
            println!("    {l}");
        }
    }
    if let Some(c) = &r.cgroup_left {
        println!("scale: {name}: cgroup tree {c}");
    }
}

fn opt(x: Option<f64>, prec: usize) -> String {
    x.filter(|v| v.is_finite())
        .map_or_else(|| "-".into(), |v| format!("{v:.prec$}"))
}

fn print_table(reports: &[Report]) {
    println!();
    println!(
        "| N | config | sup CPU % (stat) | sup RSS MiB (HWM) | worker PSS KiB | PSS/job KiB jobd + handlers | churn p50/p99/max ms | churn CPU % sup / machine | scan µs jobd (sd/procfs here) [ns TCP/TW] | tick µs/wake (/100 ms) | start s (workers + jobs) | stop s |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in reports {
        let n = if r.n == r.asked {
            r.n.to_string()
        } else {
            format!("{} (for {})", r.n, r.asked)
        };
        let w = r.window.as_ref();
        let m = r.mem.as_ref();
        let c = r.churn.as_ref();
        let scan_here = |b: &str| r.scans.iter().find(|s| s.backend == b).map(|s| s.median_us);
        let per_job = m.map(|m| {
            let n = r.n.max(1) as f64;
            format!(
                "{:.0} + {:.0}",
                (m.sup_pss + m.workers_pss_sum) as f64 / n,
                m.handlers_pss_sum as f64 / n
            )
        });
        let scans = format!(
            "{} ({}/{}) [{}/{}]",
            opt(w.and_then(Window::scan_mean_us), 0),
            opt(scan_here("sock-diag"), 0),
            opt(scan_here("procfs"), 0),
            r.ns_sockets.0,
            r.ns_sockets.1
        );
        let start = format!("{} + {}", opt(r.startup_s, 2), opt(r.jobs_up_s, 2));
        println!(
            "| {n} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.setup.name,
            w.map_or("-".into(), |w| format!(
                "{:.2} ({:.1})",
                w.cpu_pct, w.cpu_pct_stat
            )),
            m.map_or("-".into(), |m| format!(
                "{:.1} ({:.1})",
                m.sup_rss as f64 / 1024.0,
                m.sup_hwm as f64 / 1024.0
            )),
            m.map_or("-".into(), |m| format!(
                "{:.0} ({}–{})",
                m.worker_pss_median, m.worker_pss_range.0, m.worker_pss_range.1
            )),
            per_job.unwrap_or_else(|| "-".into()),
            c.map_or("-".into(), |c| format!(
                "{}/{}/{}{}",
                opt(c.pct(0.5), 1),
                opt(c.pct(0.99), 1),
                opt(c.pct(1.0), 1),
                if c.not_gone > 0 {
                    format!(" ({} of {} not gone in 10 s)", c.not_gone, c.closes)
                } else {
                    String::new()
                }
            )),
            c.map_or("-".into(), |c| format!(
                "{:.1} / {:.0}",
                c.sup_cpu_pct, c.machine_busy_pct
            )),
            scans,
            w.map_or("-".into(), |w| format!(
                "{} ({:.0})",
                opt(w.us_per_wake(), 1),
                w.us_per_check()
            )),
            start,
            match r.stop_s {
                Some(s) => format!("{s:.2}"),
                None if r.stop.is_empty() => "-".into(),
                None => format!(
                    ">{:.0} ({} workers left)",
                    r.stop_timeout_s,
                    r.stop_workers_left.unwrap_or(0)
                ),
            } + if r.stop_after_backlog() { " ¹" } else { "" },
        );
    }
    println!();
    println!(
        "| N | config | idle window CPU %: sup / workers / handlers / bench / rest | churn + drain CPU %: sup / workers / handlers / bench / rest |"
    );
    println!("|---|---|---|---|");
    let split = |p: &[f64; 6]| {
        format!(
            "{:.1} / {:.1} / {:.1} / {:.1} / {:.1} ({:.1} s)",
            p[0], p[1], p[2], p[3], p[4], p[5]
        )
    };
    for r in reports {
        println!(
            "| {} | {} | {} | {} |",
            r.n,
            r.setup.name,
            r.window.as_ref().map_or("-".into(), |w| split(&w.split)),
            r.churn.as_ref().map_or("-".into(), |c| split(&c.split)),
        );
    }
    println!();
    println!(
        "columns: sup CPU = the supervisor's CPU over the idle window, % of one core \
         (schedstat; `stat` from utime + stime ticks); RSS = its VmRSS (VmHWM, the peak) after \
         the window; worker PSS = median of {PSS_SAMPLE} workers (min–max); PSS/job = (supervisor \
         + every worker) / N, and every handler process (sh + sleep) / N; churn = close() to \
         sh and sleep gone, FIN, {:.0} % of the jobs per second; scan = Δscan_us / Δscans from \
         the scoreboard over the window (worker watch on: the backstop scan, every 10th check), \
         and the median dump timed from the bench, with the TCP sockets of the network \
         namespace (all / TIME_WAIT: other programs' too) that every dump walks; tick = supervisor CPU / voluntary context \
         switches (and per 100 ms check interval); start = spawn to N workers idle, then N \
         clients to N jobs running; stop = SIGTERM (--grace 0) to exit with N jobs \
         (¹: jobd still had hang-ups of the churn to work off when it got the SIGTERM); \
         CPU by class = % of one core from utime + stime (and the workers' cutime + cstime \
         for the handlers they reaped), `rest` = the machine's other busy time (other \
         programs, kernel threads, interrupts)",
        churn_share() * 100.0
    );
}

fn verdict(ok: bool) -> &'static str {
    if ok { "PASS" } else { "MISS" }
}

fn cpu_target(n: usize) -> f64 {
    if n <= 1000 { 2.0 } else { 5.0 }
}

fn rss_target_mib(n: usize) -> f64 {
    if n <= 1000 { 10.0 } else { 30.0 }
}

fn print_verdicts(reports: &[Report]) {
    println!();
    for r in reports {
        let name = format!("N={} {}", r.n, r.setup.name);
        if !r.fits() {
            println!(
                "MISS  {name}: did not fit: {}",
                r.ran_out.as_deref().unwrap_or("not every job started")
            );
            continue;
        }
        if let Some(w) = &r.window {
            let t = cpu_target(r.n);
            println!(
                "{}  {name}: supervisor CPU <= {t}% of a core: {:.2}%",
                verdict(w.cpu_pct <= t),
                w.cpu_pct
            );
        }
        if let Some(m) = &r.mem {
            let t = rss_target_mib(r.n);
            let rss = m.sup_rss as f64 / 1024.0;
            println!(
                "{}  {name}: supervisor RSS <= {t} MiB: {rss:.1} MiB",
                verdict(m.sup_rss > 0 && rss <= t)
            );
            println!(
                "{}  {name}: worker PSS <= {WORKER_PSS_TARGET_KIB} KiB: median {:.0} KiB",
                verdict(m.worker_pss_median > 0.0 && m.worker_pss_median <= WORKER_PSS_TARGET_KIB),
                m.worker_pss_median
            );
        }
        if let Some(c) = &r.churn {
            let t = r.setup.churn_target_ms();
            let p99 = c.pct(0.99);
            let clean = c.not_gone == 0 && c.died_early == 0 && c.latencies_ms.len() >= 2;
            println!(
                "{}  {name}: churn p99 <= {t:.0} ms: {} ms ({} hang-ups{})",
                verdict(clean && p99.is_some_and(|p| p <= t)),
                opt(p99, 1),
                c.latencies_ms.len(),
                if clean {
                    String::new()
                } else {
                    format!(", {} not gone, {} died early", c.not_gone, c.died_early)
                }
            );
        }
    }
}

fn json(r: &Report) -> serde_json::Value {
    let w = r.window.as_ref();
    let m = r.mem.as_ref();
    let c = r.churn.as_ref();
    serde_json::json!({
        "bench": "scale",
        "n": r.n,
        "n_asked": r.asked,
        "config": r.setup.name,
        "detector": r.setup.detector,
        "worker_watch": r.setup.watch,
        "containment": r.containment,
        "fits": r.fits(),
        "ran_out": r.ran_out,
        "workers_idle": r.workers_idle,
        "jobs_running": r.jobs_running,
        "check_interval_ms": CHECK_INTERVAL_MS,
        "listen_s": r.listen_s,
        "startup_s": r.startup_s,
        "jobs_up_s": r.jobs_up_s,
        "grow_peak_supervisor_vmrss_kib": r.grow_peak_rss,
        "grow_peak_tree_pss_kib": r.grow_peak_tree_pss,
        "window_s": w.map(|w| w.secs),
        "supervisor_cpu_pct": w.map(|w| w.cpu_pct),
        "supervisor_cpu_pct_stat_ticks": w.map(|w| w.cpu_pct_stat),
        "supervisor_wakes": w.map(|w| w.wakes),
        "window_machine_busy_pct": w.map(|w| w.machine_busy_pct),
        "window_cpu_split": w.map(|w| split_json(&w.split)),
        "supervisor_involuntary_switches": w.map(|w| w.involuntary),
        "supervisor_us_per_wake": w.and_then(Window::us_per_wake),
        "supervisor_us_per_check_interval": w.map(Window::us_per_check),
        "scans": w.map(|w| w.scans),
        "scan_us": w.map(|w| w.scan_us),
        "scan_mean_us": w.and_then(Window::scan_mean_us),
        "supervisor_vmrss_kib": m.map(|m| m.sup_rss),
        "supervisor_vmhwm_kib": m.map(|m| m.sup_hwm),
        "supervisor_pss_kib": m.map(|m| m.sup_pss),
        "supervisor_fds": m.map(|m| m.sup_fds),
        "workers": m.map(|m| m.workers),
        "worker_pss_median_kib": m.map(|m| m.worker_pss_median),
        "worker_pss_min_kib": m.map(|m| m.worker_pss_range.0),
        "worker_pss_max_kib": m.map(|m| m.worker_pss_range.1),
        "worker_vmrss_median_kib": m.map(|m| m.worker_rss_median),
        "worker_fds_min": m.map(|m| m.worker_fds.0),
        "worker_fds_max": m.map(|m| m.worker_fds.1),
        "workers_pss_sum_kib": m.map(|m| m.workers_pss_sum),
        "jobd_pss_per_job_kib": m.map(|m| (m.sup_pss + m.workers_pss_sum) as f64 / r.n.max(1) as f64),
        "handler_processes": m.map(|m| m.handlers),
        "handlers_pss_sum_kib": m.map(|m| m.handlers_pss_sum),
        "handlers_pss_per_job_kib": m.map(|m| m.handlers_pss_sum as f64 / r.n.max(1) as f64),
        "memory_read_ms": m.map(|m| m.read_ms),
        "bench_scans": r.scans.iter().map(|s| serde_json::json!({
            "backend": s.backend, "iters": s.iters, "entries": s.entries,
            "median_us": s.median_us, "p99_us": s.p99_us})).collect::<Vec<_>>(),
        "namespace_tcp_sockets": r.ns_sockets.0,
        "namespace_time_wait": r.ns_sockets.1,
        "churn_s": c.map(|c| c.secs),
        "churn_closes": c.map(|c| c.closes),
        "churn_n": c.map(|c| c.latencies_ms.len()),
        "churn_p50_ms": c.and_then(|c| c.pct(0.5)),
        "churn_p99_ms": c.and_then(|c| c.pct(0.99)),
        "churn_max_ms": c.and_then(|c| c.pct(1.0)),
        "churn_target_p99_ms": r.setup.churn_target_ms(),
        "churn_died_early": c.map(|c| c.died_early),
        "churn_not_gone": c.map(|c| c.not_gone),
        "churn_replaced": c.map(|c| c.replaced),
        "churn_jobs_after": c.map(|c| c.jobs_after),
        "churn_errors": c.map(|c| c.errors.len()),
        "churn_supervisor_cpu_pct": c.map(|c| c.sup_cpu_pct),
        "churn_supervisor_wakes": c.map(|c| c.sup_wakes),
        "churn_machine_busy_pct": c.map(|c| c.machine_busy_pct),
        "churn_cpu_split": c.map(|c| split_json(&c.split)),
        "churn_unreplaced": c.map(|c| c.unreplaced),
        "churn_seen_by_worker_watch": c.map(|c| c.seen_watch),
        "churn_seen_by_scan": c.map(|c| c.seen_scan),
        "stop_s": r.stop_s,
        "stop_timeout_s": r.stop_timeout_s,
        "stop_after_churn_backlog": r.stop_after_backlog(),
        "stop_workers_left_at_timeout": r.stop_workers_left,
        "stop": r.stop,
        "left_after_exit": r.left_after_exit,
        "swept": r.swept,
        "cgroup_left": r.cgroup_left,
        "log_problems": r.log_problems.len(),
        "errors": r.errors,
        "wall_s": r.wall_s,
        "targets": {
            "supervisor_cpu_pct": cpu_target(r.n),
            "supervisor_vmrss_mib": rss_target_mib(r.n),
            "worker_pss_kib": WORKER_PSS_TARGET_KIB,
        },
    })
}
