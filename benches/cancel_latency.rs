//! Hang-up → job-gone latency of the real `jobd` binary, and the FIN grace
//! seen from real clients.
//!
//! For each variant the bench starts `jobd --prefork C` on a free loopback
//! port (default flags otherwise: `--fin-grace` stays at its 250 ms, and
//! `--containment` at `auto`, a cgroup per slot when jobd can create cgroups,
//! unless the variant names `cgroup` or `subreaper`) with a handler script
//! for the variant's kind of job, and C client threads that
//! each loop: connect, learn the job's pids, open pidfds on them, hang up
//! (`close()`: a FIN, or a reset through SO_LINGER 0), and poll the pidfds
//! until the processes have exited. A finished client is replaced at once,
//! so about C jobs run all the time. Four kinds of job:
//!
//! - **silent** (the six `detector/watch/close` variants: detector ×
//!   worker watch, plus resets with the scan alone, all with the default
//!   containment; and `cgroup/silent` and `subreaper/silent`: sock-diag,
//!   worker watch, FIN, with `--containment cgroup` or `subreaper`, side by
//!   side): the handler starts
//!   `sleep 300 &`, writes `$$ $!` (its own pid and the sleep's) into the
//!   file `$TCPREMOTEPORT` of a directory the bench creates (its first
//!   argument), sends *nothing* on the connection and `wait`s: a tree of two
//!   processes in a silent phase, which a FIN cancels at once (no FIN
//!   grace). The client waits for the file named after its own local port
//!   (blocked on an inotify watch of the pid directory and on its socket,
//!   so a connection jobd closes is seen at once; bounded by the deadline;
//!   no polling loop that would load the CPUs), removes it, waits a random
//!   0–50 ms and hangs up. Latency: from the `close()` to the exit of the
//!   last of the two processes.
//! - **escaping** (`cgroup/escape` and `subreaper/escape`: sock-diag,
//!   worker watch, FIN, under each containment): as silent, but the handler
//!   daemonizes its child out of its process group and session (`setsid
//!   sleep 300 &`; `$!` is the sleep itself, since `setsid` calls setsid(2)
//!   and execs directly when it is not a group leader, and a background job
//!   of a non-interactive sh is not). The client does as for silent jobs.
//!   Latency: from the `close()` to both processes gone: the whole tree,
//!   which only the containment (the slot's cgroup, or the worker as
//!   subreaper) can still find.
//! - **`answered-close`** (sock-diag, worker watch, FIN): the handler sends a
//!   delimited answer, its pid on a line and then `END`, and spends 50 ms
//!   (`sleep 0.05`) before it exits 0, as a handler that cleans up after its
//!   answer; the client reads up to `END` and closes at once. The job must
//!   end `outcome=done` (the FIN grace), never `cancelled`: the bench counts
//!   the `job ended ... outcome=` lines of jobd's log. Latency: from the
//!   `close()` to the handler's exit (about the 50 ms it still had to go).
//! - **`streaming`** (sock-diag, worker watch, FIN): the handler starts
//!   `sleep 300 &`, sends `$$ $!` as its first line and then a line every
//!   100 ms forever; the client reads the pid line and a random 1–3 more
//!   lines and closes. It had acknowledged all it was sent, so the FIN gets
//!   the grace, and the handler's next line meets the client's reset, which
//!   cancels the job. Latency: from the `close()` to both processes gone.
//!
//! A job process that dies *before* its client hung up is counted as
//! `died_early` (a wrong kill, or for `answered-close` a client too slow to
//! close within the handler's 50 ms), and one still alive 10 s after the
//! hang-up as `not_gone`.
//!
//! Environment: `CANCEL_N` (jobs per variant, default 200),
//! `CANCEL_CONCURRENCY` (default 32), `CANCEL_DEADLINE_S` (hard deadline per
//! variant, default 60), `CANCEL_VARIANTS` (comma-separated variant names to
//! run, default all: `sock-diag/watch-on/fin`, `sock-diag/watch-off/fin`,
//! `procfs/watch-on/fin`, `procfs/watch-off/fin`, `sock-diag/watch-off/rst`,
//! `procfs/watch-off/rst`, `cgroup/silent`, `subreaper/silent`,
//! `cgroup/escape`, `subreaper/escape`, `answered-close`, `streaming`),
//! `CANCEL_LOG_DIR` (write each variant's jobd log there).
//!
//! Output: a table, one `JSON ` line per variant, and PASS/MISS against the
//! targets: p99 ≤ 25 ms with the worker watch and ≤ check interval + 25 ms
//! by the periodic scan alone (silent and escaping jobs); 0 cancelled
//! (`answered-close`); p99 ≤ FIN grace + 25 ms (`streaming`). The targets
//! are information, not assertions.
//!
//! Cleanup: jobd is stopped with SIGTERM (by the PID of the child this bench
//! started) and waited for; job processes still alive are killed through the
//! pidfds the clients opened, and any process that carries this run's marker
//! in its environment (inherited from jobd) is killed after a pidfd is opened
//! on it and the marker checked again: an escaped `setsid` child, in a
//! session of its own, still carries it. A cgroup tree jobd logged and left
//! behind is reported (`cgroup_left`) and its empty directories removed.

// The `json!` of a report has more keys than the default limit expands.
#![recursion_limit = "256"]

mod common;

use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{
    env_usize, jobd_bin, kill_marked, marked_command, new_marker, parse_listening, percentile,
    pidfd_exited, pidfd_open, pidfd_signal, poll_exited, read_line, read_pid_pair,
    remove_cgroup_tree, reset_on_close, rusage_cpu_s, stop_child, thread_cpu_s, write_script,
};
use nix::sys::resource::UsageWho;
use rustix::event::{PollFd, PollFlags, Timespec, poll};
use rustix::process::Signal;

const CHECK_INTERVAL: Duration = Duration::from_millis(100);
const WATCH_TARGET_MS: f64 = 25.0;
/// jobd's default `--fin-grace` (not passed: the bench runs the default).
const FIN_GRACE_MS: f64 = 250.0;
/// Longest wait for the job to go after a hang-up.
const GONE_TIMEOUT: Duration = Duration::from_secs(10);
/// Silent jobs: random delay between the pid file and the hang-up, 0 to
/// this.
const MAX_DELAY_MS: u64 = 50;
/// Silent jobs: how often the client looks for its pid file.
/// Streaming jobs: the client reads 1 to this many lines after the pids.
const MAX_STREAM_LINES: u64 = 3;
/// `answered-close`: the most lines read looking for `END`.
const MAX_ANSWER_LINES: usize = 8;
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// A silent job: its pids go into a file (`$1/$TCPREMOTEPORT`), nothing on
/// the connection. `echo` writes the line in one `write`; the client takes
/// the file only once it ends with a newline.
const SILENT_HANDLER: &str =
    "#!/bin/sh\nsleep 300 &\necho \"$$ $!\" > \"$1/$TCPREMOTEPORT\"\nwait\n";
/// As [`SILENT_HANDLER`], but the child leaves the handler's process group
/// and session (`setsid` execs `sleep` in the same process: `$!` is the
/// sleep's pid).
const ESCAPING_HANDLER: &str =
    "#!/bin/sh\nsetsid sleep 300 &\necho \"$$ $!\" > \"$1/$TCPREMOTEPORT\"\nwait\n";
/// A delimited answer (its pid, then `END`), then 50 ms of cleanup.
const ANSWERED_HANDLER: &str = "#!/bin/sh\necho \"$$\"\necho END\nsleep 0.05\nexit 0\n";
/// The pids as the first line, then a line every 100 ms forever.
const STREAMING_HANDLER: &str =
    "#!/bin/sh\nsleep 300 &\necho \"$$ $!\"\nwhile :; do\n  sleep 0.1\n  echo tick\ndone\n";

/// What the job does and how its client behaves.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Sends nothing; the client waits 0–50 ms and hangs up.
    Silent,
    /// As `Silent`, with the child in a session of its own (`setsid`).
    Escaping,
    /// Answers up to `END` and cleans up for 50 ms; the client closes after
    /// `END`.
    AnsweredClose,
    /// A line every 100 ms; the client reads 1–3 lines and closes.
    Streaming,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Silent => "silent",
            Kind::Escaping => "escaping",
            Kind::AnsweredClose => "answered-close",
            Kind::Streaming => "streaming",
        }
    }

    fn handler_text(self) -> &'static str {
        match self {
            Kind::Silent => SILENT_HANDLER,
            Kind::Escaping => ESCAPING_HANDLER,
            Kind::AnsweredClose => ANSWERED_HANDLER,
            Kind::Streaming => STREAMING_HANDLER,
        }
    }
}

#[derive(Clone, Copy)]
struct Variant {
    name: &'static str,
    detector: &'static str,
    worker_watch: bool,
    reset: bool,
    kind: Kind,
    /// `--containment`: `auto` (not passed: jobd's default), `cgroup` or
    /// `subreaper`.
    containment: &'static str,
}

const VARIANTS: &[Variant] = &[
    Variant {
        name: "sock-diag/watch-on/fin",
        detector: "sock-diag",
        worker_watch: true,
        reset: false,
        kind: Kind::Silent,
        containment: "auto",
    },
    Variant {
        name: "sock-diag/watch-off/fin",
        detector: "sock-diag",
        worker_watch: false,
        reset: false,
        kind: Kind::Silent,
        containment: "auto",
    },
    Variant {
        name: "procfs/watch-on/fin",
        detector: "procfs",
        worker_watch: true,
        reset: false,
        kind: Kind::Silent,
        containment: "auto",
    },
    Variant {
        name: "procfs/watch-off/fin",
        detector: "procfs",
        worker_watch: false,
        reset: false,
        kind: Kind::Silent,
        containment: "auto",
    },
    Variant {
        name: "sock-diag/watch-off/rst",
        detector: "sock-diag",
        worker_watch: false,
        reset: true,
        kind: Kind::Silent,
        containment: "auto",
    },
    Variant {
        name: "procfs/watch-off/rst",
        detector: "procfs",
        worker_watch: false,
        reset: true,
        kind: Kind::Silent,
        containment: "auto",
    },
    Variant {
        name: "cgroup/silent",
        detector: "sock-diag",
        worker_watch: true,
        reset: false,
        kind: Kind::Silent,
        containment: "cgroup",
    },
    Variant {
        name: "subreaper/silent",
        detector: "sock-diag",
        worker_watch: true,
        reset: false,
        kind: Kind::Silent,
        containment: "subreaper",
    },
    Variant {
        name: "cgroup/escape",
        detector: "sock-diag",
        worker_watch: true,
        reset: false,
        kind: Kind::Escaping,
        containment: "cgroup",
    },
    Variant {
        name: "subreaper/escape",
        detector: "sock-diag",
        worker_watch: true,
        reset: false,
        kind: Kind::Escaping,
        containment: "subreaper",
    },
    Variant {
        name: "answered-close",
        detector: "sock-diag",
        worker_watch: true,
        reset: false,
        kind: Kind::AnsweredClose,
        containment: "auto",
    },
    Variant {
        name: "streaming",
        detector: "sock-diag",
        worker_watch: true,
        reset: false,
        kind: Kind::Streaming,
        containment: "auto",
    },
];

impl Variant {
    /// The p99 latency target; none for `answered-close`, whose target is
    /// no cancellation at all.
    fn target_ms(&self) -> Option<f64> {
        match self.kind {
            Kind::AnsweredClose => None,
            Kind::Streaming => Some(FIN_GRACE_MS + WATCH_TARGET_MS),
            Kind::Silent | Kind::Escaping if self.worker_watch => Some(WATCH_TARGET_MS),
            Kind::Silent | Kind::Escaping => {
                Some(CHECK_INTERVAL.as_secs_f64() * 1e3 + WATCH_TARGET_MS)
            }
        }
    }

    fn target_text(&self) -> String {
        match self.target_ms() {
            Some(t) => format!("≤{t:.0}"),
            None => "0 canc".into(),
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
    if let Some(o) = &only {
        for x in o
            .iter()
            .filter(|x| !VARIANTS.iter().any(|v| v.name == x.as_str()))
        {
            let names: Vec<&str> = VARIANTS.iter().map(|v| v.name).collect();
            println!(
                "cancel_latency: CANCEL_VARIANTS: no variant {x:?} (known: {})",
                names.join(", ")
            );
        }
    }
    let dir = tempfile::tempdir().expect("temp dir");

    let started = Instant::now();
    println!(
        "cancel_latency: {n} jobs per variant, {conc} concurrent jobs, \
         check interval {} ms, default --fin-grace ({FIN_GRACE_MS} ms), deadline {} s per variant",
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
        let r = run_variant(v, dir.path(), n, conc, deadline);
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
    /// `job ended` lines with `outcome=done`, and with any other outcome
    /// than done or cancelled.
    log_ended_done: usize,
    log_ended_other: usize,
    /// `job cancelled` lines with `bytes_sent=0` (a silent job's).
    log_cancelled_unsent: usize,
    /// `reason=` of the `job ended` lines, counted (`-`: none).
    log_end_reasons: std::collections::BTreeMap<String, usize>,
    /// Pid files nobody took (silent and escaping jobs).
    pid_files_left: usize,
    /// The containment jobd logged it uses (`cgroup`, `subreaper`; empty
    /// if no such line).
    containment_used: String,
    /// jobd's cgroup tree as it logged it, and whether it was still there
    /// after jobd stopped and the leftovers were killed.
    cgroup_base: Option<PathBuf>,
    cgroup_left: bool,
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
        let enough = self.latencies_ms.len() >= 2;
        let pass = match self.variant.target_ms() {
            Some(t) => enough && self.pct(0.99).is_some_and(|p99| p99 <= t),
            // Every job done by its own exit, none cancelled.
            None => {
                enough
                    && self.log_cancelled == 0
                    && self.log_ended_cancelled == 0
                    && self.log_ended_other == 0
                    && self.log_ended_done >= self.latencies_ms.len()
            }
        };
        if pass { "PASS" } else { "MISS" }
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "bench": "cancel_latency",
            "variant": self.variant.name,
            "detector": self.variant.detector,
            "worker_watch": self.variant.worker_watch,
            "job": self.variant.kind.name(),
            "close": if self.variant.reset { "rst" } else { "fin" },
            "fin_grace_ms": FIN_GRACE_MS,
            "check_interval_ms": CHECK_INTERVAL.as_millis() as u64,
            "containment": self.variant.containment,
            "containment_used": self.containment_used,
            "cgroup_left": self.cgroup_left,
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
            "cancelled_with_bytes_sent_0": self.log_cancelled_unsent,
            "ended_done": self.log_ended_done,
            "ended_cancelled": self.log_ended_cancelled,
            "ended_other": self.log_ended_other,
            "end_reasons": self.log_end_reasons,
            "pid_files_left": self.pid_files_left,
            "ended_by_sigkill": self.log_ended_sigkill,
            "died_early": self.died_early.len(),
            "not_gone": self.not_gone.len(),
            "errors": self.errors.len(),
            "leftovers_killed": self.leftovers_killed,
            "timed_out": self.timed_out,
            "jobd_exit": self.jobd_exit,
            "target_p99_ms": self.variant.target_ms(),
            "target_cancelled": (self.variant.kind == Kind::AnsweredClose).then_some(0),
            "result": self.verdict(),
            "wall_s": (self.wall_s * 100.0).round() / 100.0,
            "bench_cpu_s": (self.bench_cpu_s * 100.0).round() / 100.0,
            "client_threads_cpu_s": (self.client_cpu_s * 100.0).round() / 100.0,
            "jobd_cpu_s": (self.jobd_cpu_s * 100.0).round() / 100.0,
        })
    }
}

fn run_variant(v: &Variant, dir: &Path, n: usize, conc: usize, deadline: Duration) -> Report {
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
        log_ended_done: 0,
        log_ended_other: 0,
        log_cancelled_unsent: 0,
        log_end_reasons: Default::default(),
        pid_files_left: 0,
        containment_used: String::new(),
        cgroup_base: None,
        cgroup_left: false,
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
    // This variant's handler and the directory of its pid files (one per
    // variant: nothing left by another run can be mistaken for a job's).
    let tag = v.name.replace('/', "_");
    let pid_dir = dir.join(format!("pids-{tag}"));
    let handler = match std::fs::create_dir(&pid_dir)
        .and_then(|()| write_script(dir, &format!("handler-{tag}.sh"), v.kind.handler_text()))
    {
        Ok(h) => h,
        Err(e) => {
            report.errors.push(format!("handler or pid directory: {e}"));
            return finish(report, t_start);
        }
    };
    let args = jobd_args(v, &handler, &pid_dir, conc);
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
        let plan = Arc::new(ClientPlan {
            addr,
            variant: *v,
            pid_dir: pid_dir.clone(),
            n,
            deadline: hard_deadline,
        });
        let mut clients = Vec::with_capacity(conc);
        for i in 0..conc {
            let tickets = Arc::clone(&tickets);
            let shared = Arc::clone(&shared);
            let plan = Arc::clone(&plan);
            clients.push(thread::spawn(move || {
                client_loop(i, &plan, &tickets, &shared)
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
    // Every job is over: a pid file left is one no client took.
    report.pid_files_left = std::fs::read_dir(&pid_dir).map_or(0, |d| d.count());

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
        if line.contains("job containment:") {
            let used = field(line, "containment=").unwrap_or("").to_string();
            if v.containment != "auto" && used != v.containment {
                report
                    .errors
                    .push(format!("jobd runs another containment: {line}"));
            }
            report.cgroup_base = field(line, "cgroup=").map(PathBuf::from);
            report.containment_used = used;
        }
        if line.contains("job cancelled") {
            report.log_cancelled += 1;
            if field(line, "bytes_sent=") == Some("0") {
                report.log_cancelled_unsent += 1;
            }
            if let Some(ms) = field(line, "seen_after_ms=").and_then(|x| x.parse().ok()) {
                report.log_seen_after_ms.push(ms);
            }
            if line.contains("seen_by=\"worker-watch\"") {
                report.log_seen_watch += 1;
            } else if line.contains("seen_by=\"scan\"") {
                report.log_seen_scan += 1;
            }
        }
        if line.contains("job ended") {
            let reason = field(line, "reason=").unwrap_or("-").to_string();
            *report.log_end_reasons.entry(reason).or_default() += 1;
            match field(line, "outcome=") {
                Some("done") => report.log_ended_done += 1,
                Some("cancelled") => {
                    report.log_ended_cancelled += 1;
                    if line.contains("signal SIGKILL") {
                        report.log_ended_sigkill += 1;
                    }
                }
                _ => report.log_ended_other += 1,
            }
        }
        if line.contains(" WARN ") || line.contains(" ERROR ") {
            report.log_problems.push(line.clone());
        }
    }
    report.log_seen_after_ms.sort_by(f64::total_cmp);
    // (Required only where the variant asks for one: `auto` variants also
    // run against builds older than `--containment`.)
    if v.containment != "auto" && report.containment_used.is_empty() {
        report
            .errors
            .push("no `job containment:` line in jobd's log".into());
    }
    // jobd removes its cgroup tree as it stops; one left behind is
    // reported, and its directories removed where empty (rmdir refuses a
    // cgroup that still holds processes).
    if let Some(base) = &report.cgroup_base
        && base.exists()
    {
        report.cgroup_left = true;
        report.errors.push(format!(
            "cgroup tree {} still there after jobd stopped; {}",
            base.display(),
            match remove_cgroup_tree(base) {
                Ok(()) => "removed".to_string(),
                Err(left) => format!("could not remove {}", left.join(", ")),
            }
        ));
    }
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

/// jobd's default flags but for the listener, the pool, the detector and
/// the worker watch (and the check interval and stop grace, spelled out),
/// and `--containment` unless the variant's is `auto` (the default, not
/// passed); the handler's one argument is the pid-file directory.
fn jobd_args(v: &Variant, handler: &Path, pid_dir: &Path, conc: usize) -> Vec<OsString> {
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
    ]
    .iter()
    .map(OsString::from)
    .collect();
    if v.containment != "auto" {
        a.push("--containment".into());
        a.push(v.containment.into());
    }
    a.push("--script".into());
    a.push(handler.as_os_str().to_owned());
    a.push("--".into());
    a.push(pid_dir.as_os_str().to_owned());
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

/// What every client of a variant does.
struct ClientPlan {
    addr: SocketAddr,
    variant: Variant,
    /// Where silent jobs write their pid files.
    pid_dir: PathBuf,
    /// Jobs in all (tickets).
    n: usize,
    deadline: Instant,
}

fn client_loop(idx: usize, plan: &ClientPlan, tickets: &AtomicUsize, shared: &Mutex<Shared>) {
    let (n, deadline) = (plan.n, plan.deadline);
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
        let (res, leftover) = one_job(plan, &mut rng);
        let mut s = shared.lock().unwrap();
        s.results.push(res);
        s.leftovers.extend(leftover);
    }
    shared.lock().unwrap().client_cpu_s += thread_cpu_s();
}

/// One client: returns its result and the pidfds of processes that outlived
/// the wait (or of a job it gave up on).
fn one_job(plan: &ClientPlan, rng: &mut Rng) -> (ClientResult, Vec<OwnedFd>) {
    let (v, deadline) = (plan.variant, plan.deadline);
    let err = |what: &str, e: &dyn std::fmt::Display| {
        (ClientResult::Error(format!("{what}: {e}")), Vec::new())
    };
    let stream = match TcpStream::connect_timeout(&plan.addr, Duration::from_secs(5)) {
        Ok(s) => s,
        Err(e) => return err("connect", &e),
    };
    if v.reset
        && let Err(e) = reset_on_close(&stream)
    {
        return err("SO_LINGER", &e);
    }
    // Wait for the pids no longer than the deadline (plus a little, as a
    // job may wait for a free worker).
    let read_limit = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_secs(1))
        .min(Duration::from_secs(30));
    if let Err(e) = stream.set_read_timeout(Some(read_limit)) {
        return err("set_read_timeout", &e);
    }

    // The job's pids: from its pid file, its answer, or its first line.
    let pids: Vec<i32> = match v.kind {
        Kind::Silent | Kind::Escaping => {
            let port = match stream.local_addr() {
                Ok(a) => a.port(),
                Err(e) => return err("local_addr", &e),
            };
            let file = plan.pid_dir.join(port.to_string());
            match wait_pid_file(&file, &stream, read_limit) {
                Ok((h, s)) => vec![h, s],
                Err(e) => return (ClientResult::Error(e), Vec::new()),
            }
        }
        Kind::AnsweredClose => match read_line(&stream) {
            Ok(l) => match l.trim().parse() {
                Ok(p) => vec![p],
                Err(_) => return err("answer line", &format!("{l:?}")),
            },
            Err(e) => return err("reading the answer line", &e),
        },
        Kind::Streaming => match read_pid_pair(&stream) {
            Ok((h, s)) => vec![h, s],
            Err(e) => return (ClientResult::Error(e), Vec::new()),
        },
    };
    let job = format!(
        "job {}",
        pids.iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join("/")
    );
    let mut fds = Vec::with_capacity(pids.len());
    for &pid in &pids {
        match pidfd_open(pid) {
            Ok(fd) => fds.push(fd),
            Err(e) => {
                // The job cannot have ended on its own: it was killed before
                // its client hung up.
                return (
                    ClientResult::DiedEarly(format!(
                        "pid {pid} ({job}) gone before the hang-up: {e}"
                    )),
                    fds,
                );
            }
        }
    }

    // Up to the hang-up.
    let before = match v.kind {
        Kind::Silent | Kind::Escaping => {
            // Stay connected for a random 0–50 ms, watching that the job
            // stays alive.
            let close_at = Instant::now() + Duration::from_millis(rng.below(MAX_DELAY_MS + 1));
            loop {
                let now = Instant::now();
                if now >= close_at {
                    break Ok(());
                }
                let all: Vec<&OwnedFd> = fds.iter().collect();
                if poll_exited(&all, close_at - now).iter().any(|&x| x) {
                    break Ok(());
                }
            }
        }
        Kind::AnsweredClose => read_until_end(&stream),
        Kind::Streaming => {
            let lines = 1 + rng.below(MAX_STREAM_LINES);
            (0..lines).try_for_each(|i| {
                read_line(&stream)
                    .map(drop)
                    .map_err(|e| format!("reading line {} of {lines}: {e}", i + 1))
            })
        }
    };
    // After a failed read, a moment for a job that jobd killed (it shuts
    // the connection down first, then signals) to be seen dying.
    let settle = if before.is_err() {
        Duration::from_secs(1)
    } else {
        Duration::ZERO
    };
    let all: Vec<&OwnedFd> = fds.iter().collect();
    let exited = poll_exited(&all, settle);
    if exited.iter().any(|&x| x) {
        let rest = fds
            .into_iter()
            .zip(&exited)
            .filter(|(_, e)| !**e)
            .map(|(f, _)| f)
            .collect();
        let why = before.err().map(|e| format!(" ({e})")).unwrap_or_default();
        return (
            ClientResult::DiedEarly(format!("{job}: exited {exited:?} before the hang-up{why}")),
            rest,
        );
    }
    if let Err(e) = before {
        // The stream closes as we return, which cancels the job; its pidfds
        // go to the cleanup in case it does not go.
        return (ClientResult::Error(format!("{job}: {e}")), fds);
    }

    let t0 = Instant::now();
    drop(stream); // close(): FIN, or RST with SO_LINGER 0
    let until = t0 + GONE_TIMEOUT;
    let mut gone = vec![false; fds.len()];
    loop {
        let now = Instant::now();
        if now >= until {
            let rest = fds
                .into_iter()
                .zip(&gone)
                .filter(|(_, g)| !**g)
                .map(|(f, _)| f)
                .collect();
            return (
                ClientResult::NotGone(format!(
                    "{job}: alive {} s after the hang-up (gone: {gone:?})",
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

/// A silent job's pids: waits (at most `limit`) for its pid file, a line
/// `$$ $!`, then removes it. The wait blocks on an inotify watch of the
/// pid directory (no polling loop: 32 waiting clients must not load the
/// two CPUs the measurement runs on) and on the connection: a silent job
/// sends nothing, so a readable socket means jobd closed the connection
/// (or the job sent something) and the wait ends there.
fn wait_pid_file(file: &Path, stream: &TcpStream, limit: Duration) -> Result<(i32, i32), String> {
    use rustix::fs::inotify;
    let until = Instant::now() + limit;
    let dir = file.parent().unwrap_or(Path::new("."));
    let ino = inotify::init(inotify::CreateFlags::CLOEXEC | inotify::CreateFlags::NONBLOCK)
        .map_err(|e| format!("inotify_init: {e}"))?;
    inotify::add_watch(
        &ino,
        dir,
        inotify::WatchFlags::CLOSE_WRITE | inotify::WatchFlags::MOVED_TO,
    )
    .map_err(|e| format!("inotify_add_watch {}: {e}", dir.display()))?;
    let mut buf = [0u8; 4096];
    loop {
        // Looked at after the watch is in place: a file written before it
        // is seen here, one written after wakes the poll.
        if let Ok(text) = std::fs::read_to_string(file)
            && text.ends_with('\n')
        {
            let _ = std::fs::remove_file(file);
            let pids: Vec<i32> = text
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect();
            return match pids[..] {
                [h, s] => Ok((h, s)),
                _ => Err(format!("pid file {}: {text:?}", file.display())),
            };
        }
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("no pid file {} within {limit:?}", file.display()));
        }
        let tick = Timespec::try_from(left).unwrap_or_default();
        let mut pfd = [
            PollFd::new(&ino, PollFlags::IN),
            PollFd::new(stream, PollFlags::IN | PollFlags::RDHUP),
        ];
        if poll(&mut pfd, Some(&tick)).is_ok() && !pfd[1].revents().is_empty() {
            return Err(format!(
                "connection readable (closed by jobd?) before the pid file {} (revents {:?})",
                file.display(),
                pfd[1].revents()
            ));
        }
        // Drain the events; which file they name does not matter.
        while rustix::io::read(&ino, &mut buf).is_ok_and(|n| n > 0) {}
    }
}

/// Reads the answer's lines up to `END`.
fn read_until_end(stream: &TcpStream) -> Result<(), String> {
    for _ in 0..MAX_ANSWER_LINES {
        match read_line(stream) {
            Ok(l) if l.trim() == "END" => return Ok(()),
            Ok(_) => {}
            Err(e) => return Err(format!("reading the answer up to END: {e}")),
        }
    }
    Err(format!("no END within {MAX_ANSWER_LINES} lines"))
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
    if r.pid_files_left > 0 {
        println!(
            "  {}: pid files no client took: {}",
            r.variant.name, r.pid_files_left
        );
    }
}

fn fmt_ms(x: Option<f64>) -> String {
    x.map(|v| format!("{v:.1}")).unwrap_or_else(|| "-".into())
}

fn print_table(reports: &[Report]) {
    println!();
    println!(
        "{:<24} {:>9} {:>5} {:>8} {:>8} {:>8} {:>8} {:>9} {:>11} {:>8} {:>9} {:>14} {:>8}  result",
        "variant",
        "contain",
        "n",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms",
        "log canc",
        "watch/scan",
        "SIGKILL",
        "done/canc",
        "early/gone/err",
        "target"
    );
    for r in reports {
        println!(
            "{:<24} {:>9} {:>5} {:>8} {:>8} {:>8} {:>8} {:>9} {:>11} {:>8} {:>9} {:>14} {:>8}  {}{}",
            r.variant.name,
            if r.containment_used.is_empty() {
                "-"
            } else {
                &r.containment_used
            },
            r.latencies_ms.len(),
            fmt_ms(r.pct(0.50)),
            fmt_ms(r.pct(0.90)),
            fmt_ms(r.pct(0.99)),
            fmt_ms(r.pct(1.0)),
            r.log_cancelled,
            format!("{}/{}", r.log_seen_watch, r.log_seen_scan),
            r.log_ended_sigkill,
            format!("{}/{}", r.log_ended_done, r.log_ended_cancelled),
            format!(
                "{}/{}/{}",
                r.died_early.len(),
                r.not_gone.len(),
                r.errors.len()
            ),
            r.variant.target_text(),
            r.verdict(),
            if r.timed_out { " (deadline hit)" } else { "" },
        );
    }
    println!(
        "columns: contain = the containment jobd logged (`auto` variants: what it chose); \
         latency from the client's close() to the job gone (answered-close: to the \
         handler's exit; escaping: to the handler and its setsid child gone); log canc = `job cancelled` lines in jobd's log; watch/scan = their \
         seen_by; SIGKILL = cancelled jobs that ended by SIGKILL (after --kill-grace); \
         done/canc = `job ended` lines with outcome=done / outcome=cancelled; \
         early/gone/err = jobs died before the hang-up / not gone 10 s after it / client \
         errors (and bench errors, such as a cgroup tree left behind)"
    );
}
