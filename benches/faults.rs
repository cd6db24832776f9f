//! Faults (issue 11): jobd out of descriptors in its workers and in its
//! supervisor, and with its stderr a closed pipe. For each, does it keep
//! serving, log once per episode, recover, and what CPU does it spend while
//! the fault lasts?
//!
//! Each fault starts its own `jobd --listen 127.0.0.1:0 --prefork 2
//! --max-children 2 --scoreboard FILE --script HANDLER` (the handler a
//! shell script in a temp dir), its stderr a pipe that a thread of this
//! bench reads line by line (the port comes from the `listening on
//! IP:PORT` line), and waits until `jobd status --json --scoreboard FILE`
//! (the `jobd` of this build, target/release) shows both workers idle:
//!
//! - **`worker-emfile`**: the soft RLIMIT_NOFILE of both workers is
//!   lowered to their lowest free descriptor number (`prlimit`; the hard
//!   limit is kept, raising it needs CAP_SYS_RESOURCE), so their next
//!   `accept` fails with EMFILE. One client connects, sends a line and
//!   waits. The episode lasts `FAULTS_EPISODE_SECS` (default 3); then the
//!   limits are restored, and the recovery time is from the restore to the
//!   client's answer.
//! - **`supervisor-emfile`**: with `--worker-watch off`, so that only the
//!   supervisor's scan can see a client leave: a client starts a long job
//!   (the handler prints `started`, then `exec sleep 300`) and reads its
//!   line; the supervisor's soft limit is lowered the same way, and the
//!   client closes. Half-way through the episode a second client must
//!   still get its job (`started`) from the other worker, and closes too.
//!   After the episode the limit is restored; the recovery time is from the
//!   restore to the first client's `job cancelled` line (the one naming
//!   its port; this includes `--fin-grace`, 250 ms, since the client had
//!   acknowledged the job's line).
//! - **`stderr-closed`**: the bench closes the read end of jobd's stderr
//!   right after the `listening on` line, then makes `FAULTS_REQUESTS`
//!   (default 200) echo requests one after the other. The episode is the
//!   time they take; recovered means every answer came and jobd is still
//!   alive. For comparison the same requests go first to a jobd whose
//!   stderr is read.
//!
//! Before each emfile episode the same state is measured for as long
//! without the fault (the `base` CPU).
//!
//! Measured per fault: the CPU of jobd's processes (utime + stime from
//! `/proc/PID/stat`, clock ticks, for the supervisor and its workers,
//! sampled every 100 ms so that a worker that dies still counts up to its
//! last sample; a worker forked during the episode counts from 0) per
//! second of episode; jobd's log lines written during the episode, per
//! second, how many of them name the fault (`Too many open files`), and
//! whether any message (the line without its timestamp) repeats ("logs
//! once per episode": named at least once, nothing repeated); whether and how fast it recovers; then whether jobd is still
//! alive, still answers a fresh echo request, and how many workers it had
//! to fork again (`workers_spawned` from status).
//!
//! `FAULTS_JOBD_BEFORE=PATH` runs the same faults, in the same run, on
//! another jobd binary (a build of an older commit), shown next to this
//! build's rows. Such a build may die or spin: every wait has a deadline
//! (`FAULTS_RECOVERY_SECS`, default 10, for the recovery) and a dead jobd
//! is recorded as `died`. `FAULTS_ONLY=worker-emfile,...` picks faults.
//!
//! Needs root (prlimit on another process; jobd's cgroups). Cleanup: the
//! lowered limits are restored before anything else, then SIGINT to jobd
//! (kills every job and exits), SIGKILL after 5 s, a sweep of every process
//! carrying the run's marker, and any cgroup directory of that jobd left
//! behind (a jobd killed by SIGKILL cannot remove it) is emptied with
//! `cgroup.kill` and removed.
//!
//! Output: progress on stderr; tables, `JSON ` lines (one per fault and
//! build) and PASS/MISS lines (information only) on stdout.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::*;
use rustix::process::Signal;

const ECHO: &str = SH_ECHO;
const LONG: &str = "#!/bin/sh\necho started\nexec sleep 300\n";
/// Lines of jobd's log kept (with their text) per server; beyond that only
/// counted.
const KEEP_LINES: usize = 20_000;
const SAMPLE_EVERY: Duration = Duration::from_millis(100);
const START_TIMEOUT: Duration = Duration::from_secs(15);
const IDLE_TIMEOUT: Duration = Duration::from_secs(15);
const IO_TIMEOUT: Duration = Duration::from_secs(2);
const STOP_GRACE: Duration = Duration::from_secs(5);
const FAULTS: [&str; 3] = ["worker-emfile", "supervisor-emfile", "stderr-closed"];

/// A jobd binary under test.
struct Build {
    label: &'static str,
    bin: PathBuf,
}

/// What one fault did to one build.
#[derive(Default)]
struct Outcome {
    fault: &'static str,
    build: &'static str,
    /// Set when the run could not be carried out as planned.
    errors: Vec<String>,
    /// The supervisor exited (by itself) at some point of the run.
    died: Option<String>,
    episode_s: f64,
    /// CPU ms over the episode: supervisor, workers (every pid seen).
    cpu_sup_ms: f64,
    cpu_workers_ms: f64,
    /// Worker pids seen during the episode.
    worker_pids: usize,
    /// Log lines written during the episode (None: not readable, stderr
    /// closed).
    log_lines: Option<u64>,
    /// Lines of the episode that name the fault (`Too many open files`).
    fault_lines: Option<usize>,
    /// The message written most often during the episode, and how often.
    most_repeated: Option<(String, usize)>,
    /// Some distinct messages of the episode, in order.
    samples: Vec<String>,
    /// Log lines after the restore, up to the end of the run.
    after_lines: Vec<String>,
    /// Recovered, and how long after the restore (ms); None: not measured.
    recovered: Option<bool>,
    recovery_ms: Option<f64>,
    /// The fault showed nothing: the answer came, or the job was
    /// cancelled, during the episode.
    did_not_bite: bool,
    alive_after: bool,
    serves_after: bool,
    workers_respawned: Option<i64>,
    /// stderr-closed: answered of asked, and jobs/s.
    answered: Option<(usize, usize)>,
    jobs_per_s: Option<f64>,
    /// CPU ms/s of the same state without the fault (just before it; for
    /// stderr-closed, the same requests to a jobd whose stderr is read),
    /// and jobs/s then.
    base_cpu_ms_per_s: Option<f64>,
    base_jobs_per_s: Option<f64>,
    /// supervisor-emfile: a new client got its job during the episode.
    served_during: Option<bool>,
    /// Status counters at the end: accept_failures, detect_failures.
    accept_failures: Option<u64>,
    detect_failures: Option<u64>,
    stop: String,
}

impl Outcome {
    fn cpu_ms_per_s(&self) -> Option<f64> {
        (self.episode_s > 0.0).then(|| (self.cpu_sup_ms + self.cpu_workers_ms) / self.episode_s)
    }

    fn lines_per_s(&self) -> Option<f64> {
        let n = self.log_lines?;
        (self.episode_s > 0.0).then(|| n as f64 / self.episode_s)
    }

    /// Whether the fault was logged, and no message repeated during the
    /// episode (None: not known).
    fn logs_once(&self) -> Option<bool> {
        let n = self.log_lines?;
        if n as usize > KEEP_LINES {
            return Some(false);
        }
        Some(self.fault_lines? >= 1 && self.most_repeated.as_ref().is_none_or(|m| m.1 <= 1))
    }

    fn keeps_serving(&self) -> bool {
        self.died.is_none()
            && self.alive_after
            && self.serves_after
            && self.served_during != Some(false)
            && self.answered.is_none_or(|(a, n)| a == n)
    }
}

fn main() {
    let episode = env_secs("FAULTS_EPISODE_SECS", 3.0);
    let requests = env_usize("FAULTS_REQUESTS", 200).clamp(1, 100_000);
    let recovery = env_secs("FAULTS_RECOVERY_SECS", 10.0);
    let only: Vec<String> = std::env::var("FAULTS_ONLY")
        .unwrap_or_default()
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    for o in &only {
        if !FAULTS.contains(&o.as_str()) {
            panic!("FAULTS_ONLY: unknown fault {o:?} (known: {FAULTS:?})");
        }
    }
    let t_all = Instant::now();
    println!("faults: {}", machine_line());
    if !nix::unistd::geteuid().is_root() {
        println!("faults: not root: prlimit on jobd's processes will fail; rows will say so");
    }
    let mut builds = vec![Build {
        label: "after",
        bin: jobd_bin().to_path_buf(),
    }];
    match std::env::var_os("FAULTS_JOBD_BEFORE") {
        Some(p) if !p.is_empty() => {
            let bin = PathBuf::from(p);
            if bin.is_file() {
                builds.push(Build {
                    label: "before",
                    bin,
                });
            } else {
                println!(
                    "faults: FAULTS_JOBD_BEFORE={}: no such file; running this build only",
                    bin.display()
                );
            }
        }
        _ => println!("faults: FAULTS_JOBD_BEFORE not set: this build only"),
    }
    for b in &builds {
        println!("faults: build {:<6} {}", b.label, b.bin.display());
    }
    println!(
        "faults: --prefork 2 --max-children 2, episode {:.1} s, {requests} requests for stderr-closed, recovery deadline {:.0} s",
        episode.as_secs_f64(),
        recovery.as_secs_f64()
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let echo = write_script(dir.path(), "echo.sh", ECHO).expect("echo handler");
    let long = write_script(dir.path(), "long.sh", LONG).expect("long handler");
    let mut outcomes = Vec::new();
    for fault in FAULTS {
        if !only.is_empty() && !only.iter().any(|o| o == fault) {
            continue;
        }
        for b in &builds {
            eprintln!("--- {fault}, {} ---", b.label);
            let mut o = Outcome {
                fault,
                build: b.label,
                ..Outcome::default()
            };
            let t = Instant::now();
            match fault {
                "worker-emfile" => worker_emfile(b, &echo, dir.path(), episode, recovery, &mut o),
                "supervisor-emfile" => {
                    supervisor_emfile(b, &long, dir.path(), episode, recovery, &mut o)
                }
                _ => stderr_closed(b, &echo, dir.path(), requests, &mut o),
            }
            eprintln!(
                "    {:.1} s; jobd: {}{}",
                t.elapsed().as_secs_f64(),
                o.stop,
                if o.errors.is_empty() {
                    String::new()
                } else {
                    format!("; problems: {}", o.errors.join("; "))
                }
            );
            outcomes.push(o);
        }
    }
    report(&outcomes);
    let left = leftover_cgroups();
    if left.is_empty() {
        println!("faults: no jobd cgroup directory left under /sys/fs/cgroup/unified");
    } else {
        println!("faults: jobd cgroup directories present at the end (not all ours?): {left:?}");
    }
    println!(
        "faults: total wall time {:.1} s",
        t_all.elapsed().as_secs_f64()
    );
}

// ---------------------------------------------------------------- faults

fn worker_emfile(
    b: &Build,
    handler: &Path,
    dir: &Path,
    episode: Duration,
    recovery: Duration,
    o: &mut Outcome,
) {
    let mut srv = match Server::start(b, "worker-emfile", handler, &[], false, dir) {
        Ok(s) => s,
        Err(e) => {
            o.errors.push(e);
            o.died = Some("did not start".into());
            return;
        }
    };
    let workers = match srv.idle_workers() {
        Ok(w) => w,
        Err(e) => {
            o.errors.push(e);
            finish(srv, o);
            return;
        }
    };
    // The same state without the fault: two idle workers.
    o.base_cpu_ms_per_s = Some(cpu_ms_per_s(&mut srv, episode));
    let mut lowered = Vec::new();
    for &w in &workers {
        match lower_nofile(w) {
            Ok(l) => lowered.push(l),
            Err(e) => o.errors.push(e),
        }
    }
    if lowered.len() == workers.len() {
        let mut cpu = CpuTracker::start(srv.pid());
        let seq0 = srv.log_total();
        let t0 = Instant::now();
        let wait = episode + recovery + Duration::from_secs(1);
        let client = echo_client(srv.addr, "fault-1", wait);
        sample_for(&mut cpu, &mut srv, episode);
        let seq1 = srv.log_total();
        o.episode_s = t0.elapsed().as_secs_f64();
        (o.cpu_sup_ms, o.cpu_workers_ms, o.worker_pids) = cpu.totals();
        o.did_not_bite = client.is_finished();
        restore_all(&lowered, o);
        let t_restore = Instant::now();
        let until = t_restore + recovery;
        while !client.is_finished() && Instant::now() < until && !srv.exited() {
            std::thread::sleep(Duration::from_millis(2));
        }
        if client.is_finished() {
            match client.join() {
                Ok((Ok(l), at)) if l == "fault-1" => {
                    o.recovered = Some(true);
                    o.recovery_ms =
                        Some(at.saturating_duration_since(t_restore).as_secs_f64() * 1e3);
                }
                Ok((Ok(l), _)) => {
                    o.recovered = Some(false);
                    o.errors.push(format!("waiting client: answer {l:?}"));
                }
                Ok((Err(e), _)) => {
                    o.recovered = Some(false);
                    o.errors.push(format!("waiting client: {e}"));
                }
                Err(_) => o.recovered = Some(false),
            }
        } else {
            // Its read timeout ends it by itself; it is left to do so.
            o.recovered = Some(false);
        }
        episode_log(&srv, seq0, seq1, o);
    } else {
        restore_all(&lowered, o);
    }
    finish(srv, o);
}

fn supervisor_emfile(
    b: &Build,
    long: &Path,
    dir: &Path,
    episode: Duration,
    recovery: Duration,
    o: &mut Outcome,
) {
    let extra = ["--worker-watch", "off"];
    let mut srv = match Server::start(b, "supervisor-emfile", long, &extra, false, dir) {
        Ok(s) => s,
        Err(e) => {
            o.errors.push(e);
            o.died = Some("did not start".into());
            return;
        }
    };
    if let Err(e) = srv.idle_workers() {
        o.errors.push(e);
        finish(srv, o);
        return;
    }
    let client = match TcpStream::connect_timeout(&srv.addr, IO_TIMEOUT) {
        Ok(c) => c,
        Err(e) => {
            o.errors.push(format!("connect: {e}"));
            finish(srv, o);
            return;
        }
    };
    let _ = client.set_read_timeout(Some(Duration::from_secs(5)));
    match read_line(&client) {
        Ok(l) if l == "started" => {}
        other => {
            o.errors.push(format!("long job's first line: {other:?}"));
            drop(client);
            finish(srv, o);
            return;
        }
    }
    let port = client.local_addr().map_or(0, |a| a.port());
    // The same state without the fault: the job running, unwatched.
    o.base_cpu_ms_per_s = Some(cpu_ms_per_s(&mut srv, episode));
    let lowered = match lower_nofile(srv.pid()) {
        Ok(l) => l,
        Err(e) => {
            o.errors.push(e);
            drop(client);
            finish(srv, o);
            return;
        }
    };
    let mut cpu = CpuTracker::start(srv.pid());
    let seq0 = srv.log_total();
    let t0 = Instant::now();
    drop(client);
    sample_for(&mut cpu, &mut srv, episode / 2);
    // A new client meanwhile: the other worker still serves it (its job
    // is cancelled when it closes, once the supervisor can see that).
    o.served_during = Some(started_once(srv.addr));
    sample_for(&mut cpu, &mut srv, episode.saturating_sub(t0.elapsed()));
    let seq1 = srv.log_total();
    o.episode_s = t0.elapsed().as_secs_f64();
    (o.cpu_sup_ms, o.cpu_workers_ms, o.worker_pids) = cpu.totals();
    o.did_not_bite = srv.cancelled_at(port).is_some();
    restore_all(&[lowered], o);
    let t_restore = Instant::now();
    let until = t_restore + recovery;
    let mut at = None;
    while Instant::now() < until && !srv.exited() {
        if let Some(t) = srv.cancelled_at(port) {
            at = Some(t);
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let at = at.or_else(|| srv.cancelled_at(port));
    o.recovered = Some(at.is_some());
    if let Some(t) = at {
        // Negative when it was cancelled during the episode.
        o.recovery_ms = Some(if t >= t_restore {
            t.duration_since(t_restore).as_secs_f64() * 1e3
        } else {
            -(t_restore.duration_since(t).as_secs_f64() * 1e3)
        });
    }
    episode_log(&srv, seq0, seq1, o);
    finish(srv, o);
}

fn stderr_closed(b: &Build, handler: &Path, dir: &Path, requests: usize, o: &mut Outcome) {
    // The same requests with jobd's stderr open and read, for comparison.
    match Server::start(b, "stderr-open", handler, &[], false, dir) {
        Ok(mut base) => {
            if let Err(e) = base.idle_workers() {
                o.errors.push(format!("baseline (stderr open): {e}"));
            } else {
                let mut cpu = CpuTracker::start(base.pid());
                let r = run_requests(&base, requests, &mut cpu);
                let (sup, workers, _) = cpu.totals();
                o.base_cpu_ms_per_s = Some((sup + workers) / r.elapsed_s.max(1e-9));
                o.base_jobs_per_s = Some(r.ok as f64 / r.elapsed_s.max(1e-9));
                if r.ok != requests {
                    o.errors.push(format!(
                        "baseline (stderr open): {}/{requests} answered{}",
                        r.ok,
                        r.first_error
                            .map_or(String::new(), |e| format!(", first failure: {e}"))
                    ));
                }
            }
            let how = base.stop();
            eprintln!("    baseline with stderr open: jobd {how}");
        }
        Err(e) => o.errors.push(format!("baseline (stderr open): {e}")),
    }
    let mut srv = match Server::start(b, "stderr-closed", handler, &[], true, dir) {
        Ok(s) => s,
        Err(e) => {
            o.errors.push(e);
            o.died = Some("did not start".into());
            return;
        }
    };
    // The reader closes the pipe after the listening line.
    let until = Instant::now() + Duration::from_secs(2);
    while !srv.log().eof && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(5));
    }
    if !srv.log().eof {
        o.errors.push("stderr pipe not closed within 2 s".into());
    }
    if let Err(e) = srv.idle_workers() {
        o.errors.push(e);
        finish(srv, o);
        return;
    }
    let mut cpu = CpuTracker::start(srv.pid());
    let r = run_requests(&srv, requests, &mut cpu);
    o.episode_s = r.elapsed_s;
    (o.cpu_sup_ms, o.cpu_workers_ms, o.worker_pids) = cpu.totals();
    o.answered = Some((r.ok, requests));
    o.jobs_per_s = Some(r.ok as f64 / o.episode_s.max(1e-9));
    o.recovered = Some(r.ok == requests && !srv.exited());
    o.errors.extend(r.deadline);
    if let Some(e) = r.first_error {
        o.errors.push(format!("first failed request: {e}"));
    }
    finish(srv, o);
}

struct Requests {
    ok: usize,
    elapsed_s: f64,
    first_error: Option<String>,
    deadline: Option<String>,
}

/// `n` echo requests one after the other (within 60 s), sampling CPU.
fn run_requests(srv: &Server, n: usize, cpu: &mut CpuTracker) -> Requests {
    let t0 = Instant::now();
    let until = t0 + Duration::from_secs(60);
    let mut r = Requests {
        ok: 0,
        elapsed_s: 0.0,
        first_error: None,
        deadline: None,
    };
    let mut last_sample = Instant::now();
    for i in 0..n {
        if Instant::now() >= until {
            r.deadline = Some(format!("60 s deadline after {i} requests"));
            break;
        }
        let want = format!("req-{i}");
        match echo_once(srv.addr, &want) {
            Ok(l) if l == want => r.ok += 1,
            Ok(l) => {
                r.first_error
                    .get_or_insert(format!("request {i}: answer {l:?}"));
            }
            Err(e) => {
                r.first_error.get_or_insert(format!("request {i}: {e}"));
            }
        }
        if last_sample.elapsed() >= SAMPLE_EVERY {
            cpu.sample();
            last_sample = Instant::now();
        }
    }
    cpu.sample();
    r.elapsed_s = t0.elapsed().as_secs_f64();
    r
}

/// The episode's log lines: count, repeats, samples; and the lines after
/// it.
fn episode_log(srv: &Server, seq0: u64, seq1: u64, o: &mut Outcome) {
    let log = srv.log();
    o.log_lines = Some(seq1.saturating_sub(seq0));
    let mut counts: HashMap<String, usize> = HashMap::new();
    let mut order = Vec::new();
    let mut fault_lines = 0;
    for (seq, _, line) in &log.kept {
        if *seq < seq0 || *seq >= seq1 {
            continue;
        }
        if line.contains("Too many open files") {
            fault_lines += 1;
        }
        let key = message(line);
        let n = counts.entry(key.clone()).or_insert(0);
        if *n == 0 {
            order.push(key);
        }
        *n += 1;
    }
    o.most_repeated = counts
        .iter()
        .max_by_key(|(k, n)| (**n, std::cmp::Reverse((*k).clone())))
        .map(|(k, n)| (k.clone(), *n));
    o.fault_lines = Some(fault_lines);
    o.samples = order.into_iter().take(4).collect();
    o.after_lines = log
        .kept
        .iter()
        .filter(|(seq, _, _)| *seq >= seq1)
        .take(4)
        .map(|(_, _, l)| message(l))
        .collect();
}

/// After a fault: is jobd alive, does it answer, how many workers did it
/// fork again; then stop it and clean up.
fn finish(mut srv: Server, o: &mut Outcome) {
    if let Some(st) = srv.exit_status() {
        o.died.get_or_insert(format!("exited ({st})"));
    }
    o.alive_after = !srv.exited();
    if !o.alive_after && o.recovered.is_none() {
        o.recovered = Some(false);
    }
    if o.alive_after {
        o.serves_after = if o.fault == "supervisor-emfile" {
            // The long handler answers `started`, not an echo (the job is
            // cancelled when this client closes).
            started_once(srv.addr)
        } else {
            echo_once(srv.addr, "after").is_ok_and(|l| l == "after")
        };
        if let Some(v) = srv.status() {
            let t = &v["totals"];
            o.workers_respawned = t["workers_spawned"].as_i64().map(|n| n - 2);
            o.accept_failures = t["accept_failures"].as_u64();
            o.detect_failures = t["detect_failures"].as_u64();
        }
    }
    o.stop = srv.stop();
}

// ---------------------------------------------------------------- server

/// jobd's log as the reader thread saw it.
#[derive(Default)]
struct LogState {
    /// Lines read so far.
    total: u64,
    /// The first KEEP_LINES lines: (number, when read, text).
    kept: Vec<(u64, Instant, String)>,
    /// Each `job cancelled` line, and when it was read.
    cancelled: Vec<(Instant, String)>,
    listen: Option<SocketAddr>,
    /// The reader has stopped (EOF, an error, or it closed the pipe).
    eof: bool,
}

struct Server {
    child: Child,
    marker: String,
    addr: SocketAddr,
    scoreboard: PathBuf,
    log: Arc<Mutex<LogState>>,
    reader: Option<JoinHandle<()>>,
    status_bin: PathBuf,
}

impl Server {
    /// Starts jobd with its stderr on a pipe read by a thread (which closes
    /// it after the `listening on` line if `close_stderr`), and waits for
    /// that line.
    fn start(
        b: &Build,
        fault: &str,
        handler: &Path,
        extra: &[&str],
        close_stderr: bool,
        dir: &Path,
    ) -> Result<Server, String> {
        let scoreboard = dir.join(format!("{fault}-{}.sb", b.label));
        let _ = std::fs::remove_file(&scoreboard);
        let mut args: Vec<OsString> = [
            "--listen",
            "127.0.0.1:0",
            "--prefork",
            "2",
            "--max-children",
            "2",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        args.push("--scoreboard".into());
        args.push(scoreboard.clone().into());
        args.extend(extra.iter().map(OsString::from));
        args.push("--script".into());
        args.push(handler.into());
        let marker = new_marker(&format!("{fault}-{}", b.label));
        let mut c = marked_command(&b.bin, &args, &marker);
        c.stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = c
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", b.bin.display()))?;
        let log = Arc::new(Mutex::new(LogState::default()));
        let stderr = child.stderr.take().expect("piped stderr");
        let reader = Some(spawn_reader(stderr, close_stderr, Arc::clone(&log)));
        let until = Instant::now() + START_TIMEOUT;
        let addr = loop {
            if let Some(a) = lock(&log).listen {
                break Some(a);
            }
            if matches!(child.try_wait(), Ok(Some(_))) || Instant::now() >= until {
                break None;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let srv = Server {
            child,
            marker,
            addr: addr.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0))),
            scoreboard,
            log,
            reader,
            status_bin: jobd_bin().to_path_buf(),
        };
        if addr.is_none() {
            let tail: Vec<String> = srv
                .log()
                .kept
                .iter()
                .rev()
                .take(3)
                .map(|l| l.2.clone())
                .collect();
            let how = srv.stop();
            return Err(format!("no `listening on` line ({how}); log: {tail:?}"));
        }
        Ok(srv)
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn log(&self) -> MutexGuard<'_, LogState> {
        lock(&self.log)
    }

    fn log_total(&self) -> u64 {
        self.log().total
    }

    /// When the `job cancelled` line of the client from local port `port`
    /// was read.
    fn cancelled_at(&self, port: u16) -> Option<Instant> {
        let needle = format!("peer=127.0.0.1:{port} ");
        self.log()
            .cancelled
            .iter()
            .find(|(_, l)| format!("{l} ").contains(&needle))
            .map(|(t, _)| *t)
    }

    fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    fn exited(&mut self) -> bool {
        self.exit_status().is_some()
    }

    /// `jobd status --json`, bounded to 5 s.
    fn status(&self) -> Option<serde_json::Value> {
        let mut c = Command::new(&self.status_bin);
        c.args(["status", "--json", "--scoreboard"])
            .arg(&self.scoreboard)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = c.spawn().ok()?;
        let until = Instant::now() + Duration::from_secs(5);
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < until => std::thread::sleep(Duration::from_millis(5)),
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return None;
                }
            }
        }
        let mut out = String::new();
        std::io::Read::read_to_string(child.stdout.as_mut()?, &mut out).ok()?;
        serde_json::from_str(&out).ok()
    }

    /// Waits until status shows both workers idle; returns their pids.
    fn idle_workers(&mut self) -> Result<Vec<i32>, String> {
        let until = Instant::now() + IDLE_TIMEOUT;
        let mut last = String::from("no status");
        while Instant::now() < until {
            if self.exited() {
                return Err("jobd exited before its workers were idle".into());
            }
            if let Some(v) = self.status() {
                let pids: Vec<i32> = v["slots"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter(|s| s["state"] == "idle")
                            .filter_map(|s| s["pid"].as_i64())
                            .map(|p| p as i32)
                            .collect()
                    })
                    .unwrap_or_default();
                let sup = v["supervisor_pid"].as_i64();
                if pids.len() == 2 && sup == Some(i64::from(self.pid())) {
                    return Ok(pids);
                }
                last = format!("{} idle workers, supervisor {sup:?}", pids.len());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!("workers not idle within {IDLE_TIMEOUT:?} ({last})"))
    }

    /// SIGINT, SIGKILL after STOP_GRACE, the marker sweep, left-over
    /// cgroups, the reader thread.
    fn stop(mut self) -> String {
        let mut how = stop_child(&mut self.child, Signal::INT, STOP_GRACE);
        let left = kill_marked(&self.marker);
        if !left.is_empty() {
            how.push_str(&format!(
                "; killed {} left-over process(es) {left:?}",
                left.len()
            ));
        }
        let removed = remove_cgroups(self.pid(), &self.log());
        if !removed.is_empty() {
            how.push_str(&format!("; removed its cgroup(s) {removed:?}"));
        }
        if let Some(r) = self.reader.take() {
            let until = Instant::now() + Duration::from_secs(3);
            while !r.is_finished() && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(5));
            }
            if r.is_finished() {
                let _ = r.join();
            } else {
                how.push_str("; its stderr still open after 3 s (reader left)");
            }
        }
        how
    }
}

fn lock(m: &Mutex<LogState>) -> MutexGuard<'_, LogState> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Reads jobd's stderr line by line until EOF (or, with `close_after_listen`,
/// until the `listening on` line: then the read end is closed).
fn spawn_reader(
    stderr: ChildStderr,
    close_after_listen: bool,
    log: Arc<Mutex<LogState>>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut r = BufReader::with_capacity(1 << 16, stderr);
        let mut buf = Vec::with_capacity(512);
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let now = Instant::now();
            let text = String::from_utf8_lossy(&buf[..buf.len().min(600)])
                .trim_end()
                .to_string();
            let mut s = lock(&log);
            let seq = s.total;
            s.total += 1;
            if text.contains("job cancelled") {
                s.cancelled.push((now, text.clone()));
            }
            if s.listen.is_none() {
                s.listen = parse_listening(&text);
            }
            let listening = s.listen.is_some();
            if s.kept.len() < KEEP_LINES {
                s.kept.push((seq, now, text));
            }
            drop(s);
            if close_after_listen && listening {
                break;
            }
        }
        drop(r);
        lock(&log).eof = true;
    })
}

/// A log line without its timestamp (the first word, in the text format).
fn message(line: &str) -> String {
    let t = line.trim_start();
    match t.split_once(char::is_whitespace) {
        Some((first, rest))
            if first.starts_with(|c: char| c.is_ascii_digit()) && first.contains('T') =>
        {
            rest.trim_start().to_string()
        }
        _ => t.to_string(),
    }
}

// ---------------------------------------------------------------- limits

/// A lowered soft RLIMIT_NOFILE, to restore.
struct Lowered {
    pid: i32,
    /// Pins the process: the limit is restored only if it still runs.
    pidfd: OwnedFd,
    old: libc::rlimit,
    to: u64,
}

fn get_nofile(pid: i32) -> Result<libc::rlimit, String> {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit with no new value, reading into a valid rlimit.
    let r = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, std::ptr::null(), &mut old) };
    if r != 0 {
        return Err(format!(
            "prlimit {pid} (read): {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(old)
}

fn set_nofile(pid: i32, lim: libc::rlimit) -> Result<(), String> {
    // SAFETY: prlimit with a valid rlimit and no old-value pointer.
    let r = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, &lim, std::ptr::null_mut()) };
    if r != 0 {
        return Err(format!(
            "prlimit {pid} (set {}): {}",
            lim.rlim_cur,
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// The lowest descriptor number `pid` has free.
fn lowest_free_fd(pid: i32) -> Result<u64, String> {
    let nums: HashSet<u64> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map_err(|e| format!("/proc/{pid}/fd: {e}"))?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    (0..=nums.len() as u64)
        .find(|n| !nums.contains(n))
        .ok_or_else(|| format!("no free descriptor in /proc/{pid}/fd"))
}

/// Lowers the soft RLIMIT_NOFILE of `pid` to its lowest free descriptor
/// number (its next open fails with EMFILE); the hard limit stays.
fn lower_nofile(pid: i32) -> Result<Lowered, String> {
    let pidfd = pidfd_open(pid).map_err(|e| format!("pidfd_open {pid}: {e}"))?;
    let old = get_nofile(pid)?;
    let to = lowest_free_fd(pid)?;
    set_nofile(
        pid,
        libc::rlimit {
            rlim_cur: to,
            rlim_max: old.rlim_max,
        },
    )?;
    eprintln!(
        "    pid {pid}: soft RLIMIT_NOFILE {} -> {to} (hard {})",
        old.rlim_cur, old.rlim_max
    );
    Ok(Lowered {
        pid,
        pidfd,
        old,
        to,
    })
}

fn restore_all(lowered: &[Lowered], o: &mut Outcome) {
    for l in lowered {
        if pidfd_exited(&l.pidfd) {
            o.errors.push(format!(
                "pid {} exited during the episode (limit {})",
                l.pid, l.to
            ));
            continue;
        }
        if let Err(e) = set_nofile(l.pid, l.old) {
            o.errors.push(format!("restore: {e}"));
        }
    }
}

// ---------------------------------------------------------------- CPU

/// utime + stime of the supervisor and of each of its children seen.
struct CpuTracker {
    sup: i32,
    base: BTreeMap<i32, u64>,
    last: BTreeMap<i32, u64>,
}

impl CpuTracker {
    fn start(sup: i32) -> CpuTracker {
        let mut c = CpuTracker {
            sup,
            base: BTreeMap::new(),
            last: BTreeMap::new(),
        };
        for p in std::iter::once(sup).chain(children_of(sup)) {
            if let Some(t) = proc_cpu_ticks(p) {
                c.base.insert(p, t);
                c.last.insert(p, t);
            }
        }
        c
    }

    fn sample(&mut self) {
        for p in std::iter::once(self.sup).chain(children_of(self.sup)) {
            if let Some(t) = proc_cpu_ticks(p) {
                // Forked during the episode: all its CPU is in it.
                self.base.entry(p).or_insert(0);
                self.last.insert(p, t);
            }
        }
    }

    /// (supervisor ms, workers ms, worker pids seen).
    fn totals(&self) -> (f64, f64, usize) {
        let ms = |p: &i32| {
            let d = self.last[p].saturating_sub(self.base[p]);
            d as f64 * 1e3 / clk_tck()
        };
        let sup = self
            .last
            .get_key_value(&self.sup)
            .map_or(0.0, |(p, _)| ms(p));
        let workers: f64 = self.last.keys().filter(|p| **p != self.sup).map(ms).sum();
        (sup, workers, self.last.len().saturating_sub(1))
    }
}

/// CPU ms per second of jobd's processes over `d`, as it is.
fn cpu_ms_per_s(srv: &mut Server, d: Duration) -> f64 {
    let mut cpu = CpuTracker::start(srv.pid());
    let t0 = Instant::now();
    sample_for(&mut cpu, srv, d);
    let (sup, workers, _) = cpu.totals();
    (sup + workers) / t0.elapsed().as_secs_f64().max(1e-9)
}

/// Samples CPU every 100 ms for `d` (or until jobd exits).
fn sample_for(cpu: &mut CpuTracker, srv: &mut Server, d: Duration) {
    let until = Instant::now() + d;
    loop {
        cpu.sample();
        let now = Instant::now();
        if now >= until || srv.exited() {
            break;
        }
        std::thread::sleep(SAMPLE_EVERY.min(until - now));
    }
    cpu.sample();
}

// ---------------------------------------------------------------- clients

/// One echo request: connect, a line, its answer (each step within 2 s).
fn echo_once(addr: SocketAddr, line: &str) -> Result<String, String> {
    let mut s =
        TcpStream::connect_timeout(&addr, IO_TIMEOUT).map_err(|e| format!("connect: {e}"))?;
    let _ = s.set_read_timeout(Some(IO_TIMEOUT));
    let _ = s.set_write_timeout(Some(IO_TIMEOUT));
    s.write_all(format!("{line}\n").as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    read_line(&s).map_err(|e| format!("read: {e}"))
}

/// A request to the long handler: connect, read its `started` line, close.
fn started_once(addr: SocketAddr) -> bool {
    let Ok(s) = TcpStream::connect_timeout(&addr, IO_TIMEOUT) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(IO_TIMEOUT));
    read_line(&s).is_ok_and(|l| l == "started")
}

/// A client in a thread: connects, sends `line`, waits up to `wait` for
/// the answer; gives the answer and when it came.
fn echo_client(
    addr: SocketAddr,
    line: &str,
    wait: Duration,
) -> JoinHandle<(Result<String, String>, Instant)> {
    let line = line.to_string();
    std::thread::spawn(move || {
        let r = (|| {
            let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
                .map_err(|e| format!("connect: {e}"))?;
            let _ = s.set_write_timeout(Some(IO_TIMEOUT));
            s.write_all(format!("{line}\n").as_bytes())
                .map_err(|e| format!("write: {e}"))?;
            let _ = s.set_read_timeout(Some(wait));
            read_line(&s).map_err(|e| format!("read: {e}"))
        })();
        (r, Instant::now())
    })
}

// ---------------------------------------------------------------- cgroups

/// Removes what is left of jobd `pid`'s cgroup tree (after a SIGKILL):
/// kills what is in it (cgroup.kill), then removes the directories,
/// deepest first. Returns the directories removed.
fn remove_cgroups(pid: i32, log: &LogState) -> Vec<PathBuf> {
    let mut roots: Vec<PathBuf> = log
        .kept
        .iter()
        .filter_map(|l| {
            let i = l.2.find("cgroup=")?;
            let p = l.2[i + "cgroup=".len()..].split_whitespace().next()?;
            Some(PathBuf::from(p.trim_matches('"')))
        })
        .filter(|p| p.ends_with(format!("jobd-{pid}")))
        .collect();
    for base in ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"] {
        roots.push(Path::new(base).join(format!("jobd-{pid}")));
    }
    roots.sort();
    roots.dedup();
    let mut removed = Vec::new();
    for root in roots {
        if !root.is_dir() {
            continue;
        }
        let _ = std::fs::write(root.join("cgroup.kill"), "1");
        let mut dirs = vec![root.clone()];
        let mut i = 0;
        // Bounded: jobd makes the root and one directory per slot.
        while i < dirs.len() && dirs.len() < 10_000 {
            if let Ok(rd) = std::fs::read_dir(&dirs[i]) {
                for e in rd.flatten() {
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        dirs.push(e.path());
                    }
                }
            }
            i += 1;
        }
        let until = Instant::now() + Duration::from_secs(2);
        while Instant::now() < until
            && dirs.iter().any(|d| {
                std::fs::read_to_string(d.join("cgroup.procs")).is_ok_and(|s| !s.trim().is_empty())
            })
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        for d in dirs.iter().rev() {
            if std::fs::remove_dir(d).is_ok() {
                removed.push(d.clone());
            }
        }
    }
    removed
}

/// `jobd*` entries under /sys/fs/cgroup/unified.
fn leftover_cgroups() -> Vec<String> {
    std::fs::read_dir("/sys/fs/cgroup/unified")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str().map(String::from))
                .filter(|n| n.contains("jobd"))
                .collect()
        })
        .unwrap_or_default()
}

// ---------------------------------------------------------------- report

fn opt(v: Option<f64>, prec: usize) -> String {
    v.map_or("n/a".into(), |x| format!("{x:.prec$}"))
}

fn recovered_cell(o: &Outcome) -> String {
    if let Some(d) = &o.died
        && !o.alive_after
    {
        return format!("died ({d})");
    }
    match (o.recovered, o.recovery_ms, o.answered) {
        (Some(true), Some(ms), _) => format!("yes {ms:.0} ms"),
        (Some(true), None, Some((a, n))) => format!("yes ({a}/{n})"),
        (Some(true), None, None) => "yes".into(),
        (Some(false), _, Some((a, n))) => format!("no ({a}/{n})"),
        (Some(false), _, None) => "no".into(),
        (None, _, _) => "n/a".into(),
    }
}

fn verdict(ok: Option<bool>) -> &'static str {
    match ok {
        Some(true) => "PASS",
        Some(false) => "MISS",
        None => "n/a ",
    }
}

fn report(outcomes: &[Outcome]) {
    println!();
    println!(
        "{:<18} {:<7} {:>9} {:>9} {:>9} {:>8} {:>10} {:>10} {:>8} {:>11} {:<16} {:>6} {:>6} {:>8}",
        "fault",
        "build",
        "episode s",
        "cpu ms/s",
        "base ms/s",
        "sup ms",
        "workers ms",
        "log lines",
        "lines/s",
        "fault lines",
        "recovered",
        "alive",
        "serves",
        "respawns"
    );
    for o in outcomes {
        println!(
            "{:<18} {:<7} {:>9.2} {:>9} {:>9} {:>8.0} {:>10} {:>10} {:>8} {:>11} {:<16} {:>6} {:>6} {:>8}",
            o.fault,
            o.build,
            o.episode_s,
            opt(o.cpu_ms_per_s(), 1),
            opt(o.base_cpu_ms_per_s, 1),
            o.cpu_sup_ms,
            format!("{:.0} ({})", o.cpu_workers_ms, o.worker_pids),
            o.log_lines.map_or("n/a".into(), |n| n.to_string()),
            opt(o.lines_per_s(), 1),
            o.fault_lines.map_or("n/a".into(), |n| n.to_string()),
            recovered_cell(o),
            if o.alive_after { "yes" } else { "no" },
            if o.serves_after { "yes" } else { "no" },
            o.workers_respawned.map_or("n/a".into(), |n| n.to_string()),
        );
    }
    println!(
        "columns: cpu ms/s = utime+stime of the supervisor and its workers (clock ticks of {:.0} Hz) \
         per second of episode; base = the same without the fault (the state just before it; \
         stderr-closed: the same requests with stderr read); workers ms (worker pids seen); log lines = jobd's stderr lines \
         during the episode (n/a: stderr closed); fault lines = those of them naming EMFILE \
         (`Too many open files`); recovered = after the limit is restored, the \
         waiting client's answer (worker-emfile) or the `job cancelled` line (supervisor-emfile), \
         or every request answered (stderr-closed); alive / serves = jobd running and answering \
         a fresh request at the end; respawns = workers_spawned - 2",
        clk_tck()
    );
    // Side by side.
    let builds: Vec<&str> = {
        let mut v: Vec<&str> = outcomes.iter().map(|o| o.build).collect();
        v.dedup();
        let mut seen = Vec::new();
        for b in v {
            if !seen.contains(&b) {
                seen.push(b);
            }
        }
        seen
    };
    if builds.len() > 1 {
        println!();
        println!(
            "{:<18} {:>22} {:>24} {:>34}",
            "fault",
            format!("cpu ms/s {}", builds.join(" / ")),
            format!("lines/s {}", builds.join(" / ")),
            format!("recovered {}", builds.join(" / "))
        );
        let mut faults: Vec<&str> = outcomes.iter().map(|o| o.fault).collect();
        faults.dedup();
        for f in faults {
            let row: Vec<&Outcome> = builds
                .iter()
                .filter_map(|b| outcomes.iter().find(|o| o.fault == f && o.build == *b))
                .collect();
            let join = |g: &dyn Fn(&Outcome) -> String| {
                row.iter().map(|o| g(o)).collect::<Vec<_>>().join(" / ")
            };
            println!(
                "{:<18} {:>22} {:>24} {:>34}",
                f,
                join(&|o| opt(o.cpu_ms_per_s(), 1)),
                join(&|o| opt(o.lines_per_s(), 1)),
                join(&recovered_cell)
            );
        }
    }
    println!();
    for o in outcomes {
        let tag = format!("{} [{}]", o.fault, o.build);
        if o.answered.is_some() || o.base_jobs_per_s.is_some() {
            let answered = o.answered.map_or("requests not run".into(), |(a, n)| {
                format!("{a}/{n} answered, {} jobs/s", opt(o.jobs_per_s, 0))
            });
            println!(
                "faults: {tag}: {answered} (with stderr open and read: {} jobs/s)",
                opt(o.base_jobs_per_s, 0)
            );
        }
        if let Some(d) = o.served_during {
            println!(
                "faults: {tag}: a new client during the episode got its job: {}",
                if d { "yes" } else { "no" }
            );
        }
        if o.did_not_bite {
            println!(
                "faults: {tag}: the fault did not bite (answer or cancel came during the episode)"
            );
        }
        if let Some((m, n)) = &o.most_repeated
            && *n > 1
        {
            println!(
                "faults: {tag}: most repeated message ({n}x): {}",
                cut(m, 200)
            );
        }
        for s in &o.samples {
            println!("faults: {tag}: episode: {}", cut(s, 200));
        }
        for s in &o.after_lines {
            println!("faults: {tag}: after restore: {}", cut(s, 200));
        }
        if o.accept_failures.is_some() || o.detect_failures.is_some() {
            println!(
                "faults: {tag}: status counters accept_failures={} detect_failures={}",
                o.accept_failures.map_or("n/a".into(), |n| n.to_string()),
                o.detect_failures.map_or("n/a".into(), |n| n.to_string())
            );
        }
        for e in &o.errors {
            println!("faults: {tag}: problem: {e}");
        }
        println!("faults: {tag}: jobd: {}", o.stop);
    }
    println!();
    for o in outcomes {
        let tag = format!("{} [{}]", o.fault, o.build);
        println!(
            "{}  {tag}: keeps serving (alive, answers{})",
            verdict(Some(o.keeps_serving())),
            if o.answered.is_some() {
                ", every request answered"
            } else if o.served_during.is_some() {
                ", during the episode too"
            } else {
                ""
            }
        );
        println!(
            "{}  {tag}: logs once per episode (the fault named, no message repeated): {} lines in {:.1} s, {} naming EMFILE",
            verdict(o.logs_once()),
            o.log_lines.map_or("n/a".into(), |n| n.to_string()),
            o.episode_s,
            o.fault_lines.map_or("n/a".into(), |n| n.to_string())
        );
        println!(
            "{}  {tag}: recovers within the deadline: {}",
            verdict(o.recovered.map(|r| r && !o.did_not_bite)),
            recovered_cell(o)
        );
        println!(
            "JSON {}",
            serde_json::json!({
                "bench": "faults", "fault": o.fault, "build": o.build,
                "episode_s": (o.episode_s * 1000.0).round() / 1000.0,
                "cpu_ms_per_s": o.cpu_ms_per_s(),
                "cpu_supervisor_ms": o.cpu_sup_ms, "cpu_workers_ms": o.cpu_workers_ms,
                "worker_pids_seen": o.worker_pids,
                "log_lines": o.log_lines, "log_lines_per_s": o.lines_per_s(),
                "fault_lines": o.fault_lines,
                "most_repeated": o.most_repeated.as_ref().map(|m| serde_json::json!({
                    "message": m.0, "count": m.1})),
                "recovered": o.recovered, "recovery_ms": o.recovery_ms,
                "did_not_bite": o.did_not_bite,
                "died": o.died, "alive_after": o.alive_after, "serves_after": o.serves_after,
                "workers_respawned": o.workers_respawned,
                "answered": o.answered.map(|a| a.0), "requests": o.answered.map(|a| a.1),
                "jobs_per_s": o.jobs_per_s,
                "base_cpu_ms_per_s": o.base_cpu_ms_per_s, "base_jobs_per_s": o.base_jobs_per_s,
                "served_during": o.served_during,
                "accept_failures": o.accept_failures, "detect_failures": o.detect_failures,
                "keeps_serving": o.keeps_serving(), "logs_once": o.logs_once(),
                "stop": o.stop, "errors": o.errors,
            })
        );
    }
}

fn cut(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}...", s.chars().take(n).collect::<String>())
    }
}
