//! Chaos on the real binary: workers SIGKILLed at random under load (the
//! clients must never notice more than a closed connection, and no job
//! may be recorded as cancelled for a client that stayed), and the
//! supervisor itself SIGKILLed (everything it started goes with it, and
//! a new jobd takes over its pid file, scoreboard, port and cgroup tree).

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::util::{self, DEADLINE, Jobd, poll_until, script, tempdir, wait_until};

// ---- The process table ----

/// `(state, ppid, starttime in clock ticks)` of `pid`, from
/// `/proc/<pid>/stat`.
fn stat(pid: i32) -> Option<(char, i32, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name in parentheses: state ppid pgrp ... and the
    // start time is field 22 of the whole line (20 after the state).
    let rest = text.rsplit_once(") ")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let state = f.first()?.chars().next()?;
    let ppid = f.get(1)?.parse().ok()?;
    let start = f.get(19)?.parse().ok()?;
    Some((state, ppid, start))
}

fn comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

fn cmdline(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .replace('\0', " ")
        .trim()
        .to_string()
}

/// Every child of `pid`, zombies included (`/proc/<pid>/task/*/children`).
fn children_of(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in rd.flatten() {
        let text = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
        out.extend(
            text.split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok()),
        );
    }
    out
}

/// The live workers of the supervisor `sup`: its children that are jobd
/// processes (a handler adopted after its worker died is a child too, but
/// runs the script, not jobd), with their age in seconds.
fn workers_of(sup: i32) -> Vec<(i32, f64)> {
    let now = uptime_ticks();
    children_of(sup)
        .into_iter()
        .filter_map(|p| {
            let (state, ppid, start) = stat(p)?;
            (state != 'Z' && ppid == sup && comm(p) == "jobd")
                .then(|| (p, now.saturating_sub(start) as f64 / clk_tck()))
        })
        .collect()
}

fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64
}

/// The time since boot in clock ticks (the unit of a start time).
fn uptime_ticks() -> u64 {
    let up: f64 = std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    (up * clk_tck()) as u64
}

/// SIGKILLs `pid` only if it is still a live child of `sup` once pinned
/// with a pidfd (so that a recycled pid is never hit). Returns whether
/// the signal was sent.
fn kill_worker(sup: i32, pid: i32) -> bool {
    // SAFETY: pidfd_open takes a pid and flags, and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return false;
    }
    let fd = fd as i32;
    let ours =
        stat(pid).is_some_and(|(st, ppid, _)| st != 'Z' && ppid == sup) && comm(pid) == "jobd";
    let sent = ours && {
        // SAFETY: fd is the pidfd opened above; a null siginfo is allowed.
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                fd,
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            ) == 0
        }
    };
    // SAFETY: fd is ours and closed once.
    unsafe { libc::close(fd) };
    sent
}

/// What each tagged process is, for a failure message.
fn describe(pids: &[i32]) -> Vec<String> {
    pids.iter()
        .map(|&p| {
            let (st, ppid, _) = stat(p).unwrap_or(('?', 0, 0));
            format!(
                "pid {p} ppid {ppid} state {st} comm {} cmd [{}]",
                comm(p),
                cmdline(p)
            )
        })
        .collect()
}

/// A small PRNG (xorshift64*), seeded per run and printed, so that a run
/// can be repeated with `JOBD_CHAOS_SEED`.
struct Rng(u64);

impl Rng {
    fn new() -> (Rng, u64) {
        let seed = std::env::var("JOBD_CHAOS_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
                    ^ u64::from(std::process::id()) << 32
            })
            | 1;
        (Rng(seed), seed)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

// ---- Test 1: workers killed at random under load ----

const WORKERS: usize = 16;
const CLIENTS: usize = 32;
const KILLS: usize = 200;
/// A worker killed younger than this counts as a crash loop for jobd
/// (`pool::QUICK_DEATH`, 1 s, measured from the supervisor's fork; this
/// leaves a margin for the start time's granularity and a slow fork).
const OLD_ENOUGH_S: f64 = 1.25;
/// One kill in this many picks the youngest worker, whatever its age: a
/// quick death, which makes jobd hold its respawns for a while (50 ms,
/// doubling while they keep coming).
const YOUNG_EVERY: u64 = 8;

/// The handler: the job id first, then a pause of 0 to 90 ms (from the
/// job id: dash has no $RANDOM), then the line read back and a trailer.
const ANSWER: &str = "echo \"job $JOBD_JOB_ID\"\n\
IFS= read -r l\n\
sleep 0.0$((JOBD_JOB_ID % 10))\n\
printf '%s\\nEND\\n' \"$l\"";

/// What one request came to.
#[derive(Debug)]
enum Got {
    /// `job N`, the line, `END`, then the end of the stream.
    Answer(u64),
    /// A prefix of an answer (maybe empty), then a close or a reset. The
    /// job id when its line was complete.
    Closed(Option<u64>),
    /// No end within the read deadline: a hang.
    Hang(String),
    /// Bytes that are no prefix of the answer.
    Garbled(String),
}

/// Reads `data` as (a prefix of) the answer to `word`.
fn judge(data: &str, word: &str, complete: bool) -> Got {
    let (first, rest) = match data.split_once('\n') {
        Some((f, r)) => (f, Some(r)),
        None => (data, None),
    };
    let id = first
        .strip_prefix("job ")
        .and_then(|n| n.parse::<u64>().ok());
    let Some(rest) = rest else {
        // No full first line: it must be a prefix of `job N`.
        let ok = "job ".starts_with(first)
            || first
                .strip_prefix("job ")
                .is_some_and(|n| n.chars().all(|c| c.is_ascii_digit()));
        return if ok {
            Got::Closed(None)
        } else {
            Got::Garbled(data.into())
        };
    };
    let Some(id) = id else {
        return Got::Garbled(data.into());
    };
    let tail = format!("{word}\nEND\n");
    if rest == tail && complete {
        Got::Answer(id)
    } else if tail.starts_with(rest) {
        Got::Closed(Some(id))
    } else {
        Got::Garbled(data.into())
    }
}

/// One request: sends `word`, reads until jobd closes the connection.
fn one_request(addr: SocketAddr, word: &str) -> Got {
    let mut s = match TcpStream::connect_timeout(&addr, DEADLINE) {
        Ok(s) => s,
        Err(e) => return Got::Hang(format!("connect: {e}")),
    };
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    // A failed write (the job was already gone and reset us) is a close;
    // what was sent back before is still read.
    let _ = s.write_all(format!("{word}\n").as_bytes());
    let mut buf = Vec::new();
    let mut chunk = [0u8; 512];
    let started = Instant::now();
    loop {
        match s.read(&mut chunk) {
            Ok(0) => return judge(&String::from_utf8_lossy(&buf), word, true),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Got::Hang(format!(
                    "no end after {:?}, got {:?}",
                    started.elapsed(),
                    String::from_utf8_lossy(&buf)
                ));
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            // A reset: whatever came before it is judged as a prefix.
            Err(_) => {
                return match judge(&String::from_utf8_lossy(&buf), word, false) {
                    Got::Answer(id) => Got::Closed(Some(id)),
                    other => other,
                };
            }
        }
    }
}

/// The fields of interest of an access-log line: (job, outcome, reason).
fn access_fields(line: &str) -> (u64, String, String) {
    (
        util::field(line, "job").parse().unwrap(),
        util::field(line, "outcome"),
        util::field(line, "reason"),
    )
}

/// Sets its flag when dropped.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Whether a record (outcome, reason) is one this test allows: `failed
/// reason=worker-died` (lost with its worker), or `done` unless the client
/// got only part of the answer.
fn expected(outcome: &str, reason: &str, partial: bool) -> bool {
    (outcome == "failed" && reason == "worker-died")
        || (!partial && outcome == "done" && reason == "-")
}

/// 32 clients against 16 workers (so that clients also wait in the
/// listen queue) while 200 workers are SIGKILLed at random: mostly workers
/// old enough not to count as a crash loop, one in eight the youngest
/// (a quick death: respawns are held back). Every client gets its whole
/// answer or a closed connection, never a hang; no job is recorded
/// cancelled (no client went away); no job has two records, and every
/// job that started, or whose handler's output reached its client, has
/// one: `done` or, lost with its worker, `failed reason=worker-died`
/// (only the latter for a partial answer); the supervisor lives, every
/// slot is refilled, it keeps no zombie and no job process; it serves on
/// and stops cleanly.
///
/// Known to fail (2026-12-01) on that "has one record": a worker killed
/// between spawning its handler and publishing the job in its slot
/// leaves a job that ran and answered (in part or in full) with no
/// record at all; under this load that happens some 5 to 15 times per
/// 200 kills.
#[test]
fn chaos_worker_kills_never_hurt_a_connected_client() {
    let t0 = Instant::now();
    let dir = tempdir();
    let access = dir.path().join("access.log");
    let sb = dir.path().join("sb");
    let h = script(dir.path(), "chaos.sh", ANSWER);
    let n = WORKERS.to_string();
    let mut j = Jobd::start_in(
        dir,
        &[
            "--prefork",
            &n,
            "--max-children",
            &n,
            "--scoreboard",
            sb.to_str().unwrap(),
            "--access-log",
            access.to_str().unwrap(),
            "--script",
            h.to_str().unwrap(),
        ],
    );
    let sup = j.pid();
    let addr = j.addr;
    wait_until("all workers up", || workers_of(sup).len() == WORKERS);
    let (mut rng, seed) = Rng::new();

    let stop = Arc::new(AtomicBool::new(false));
    // The clients stop with the killer, also when it fails.
    let _stop_clients = StopOnDrop(stop.clone());
    // Hard bounds: the killer gives up after this, the clients too.
    let kill_deadline = Instant::now() + Duration::from_secs(40);
    let client_deadline = kill_deadline + Duration::from_secs(5);
    const MAX_ROUNDS: usize = 3000;

    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut got = Vec::new();
                for r in 0..MAX_ROUNDS {
                    if stop.load(Ordering::Relaxed) || Instant::now() >= client_deadline {
                        break;
                    }
                    let word = format!("w{c}-{r}");
                    got.push(one_request(addr, &word));
                }
                got
            })
        })
        .collect();

    // The killer, in this thread.
    let (mut kills, mut young_kills, mut old_kills) = (0usize, 0usize, 0usize);
    while kills < KILLS && Instant::now() < kill_deadline {
        let young = rng.next().is_multiple_of(YOUNG_EVERY);
        let mut pick = None;
        // Wait (bounded) for a worker to pick.
        poll_until(kill_deadline, || {
            let ws = workers_of(sup);
            pick = if young {
                ws.iter()
                    .min_by(|a, b| a.1.total_cmp(&b.1))
                    .map(|&(p, _)| p)
            } else {
                let old: Vec<i32> = ws
                    .iter()
                    .filter(|w| w.1 >= OLD_ENOUGH_S)
                    .map(|w| w.0)
                    .collect();
                (!old.is_empty()).then(|| old[rng.below(old.len())])
            };
            pick.is_some()
        });
        let Some(p) = pick else { break };
        if kill_worker(sup, p) {
            kills += 1;
            if young {
                young_kills += 1;
            } else {
                old_kills += 1;
            }
        }
        assert!(
            j.child.try_wait().unwrap().is_none(),
            "the supervisor died after {kills} kills; log:\n{}",
            j.dump()
        );
        // Pacing, not synchronisation: at most one kill per 40 ms.
        std::thread::sleep(Duration::from_millis(40));
    }
    let kill_time = t0.elapsed();
    stop.store(true, Ordering::Relaxed);
    let results: Vec<Vec<Got>> = clients.into_iter().map(|h| h.join().unwrap()).collect();
    let client_time = t0.elapsed();

    // The supervisor lives, and every slot gets a live worker back.
    assert!(
        j.child.try_wait().unwrap().is_none(),
        "the supervisor died; log:\n{}",
        j.dump()
    );
    let mut st = serde_json::Value::Null;
    let refilled = poll_until(Instant::now() + DEADLINE, || {
        st = Jobd::status_json(&sb);
        let ws: HashSet<i32> = workers_of(sup).into_iter().map(|w| w.0).collect();
        let slots: HashSet<i32> = st["slots"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["state"] == "idle")
            .map(|s| s["pid"].as_i64().unwrap() as i32)
            .collect();
        st["totals"]["workers"] == WORKERS && slots.len() == WORKERS && slots == ws
    });
    assert!(
        refilled,
        "the slots were not all refilled: {st}\nworkers: {:?}",
        workers_of(sup)
    );
    // No zombie and no job process left under the supervisor: its only
    // children are its workers, and the only tagged processes are it and
    // them (no handler, no `sleep`, outlives its job).
    let mut extra = Vec::new();
    let settled = poll_until(Instant::now() + DEADLINE, || {
        let ws: HashSet<i32> = workers_of(sup).into_iter().map(|w| w.0).collect();
        extra = children_of(sup)
            .into_iter()
            .filter(|p| !ws.contains(p))
            .chain(
                util::tagged_pids(&j.tag)
                    .into_iter()
                    .filter(|p| *p != sup && !ws.contains(p)),
            )
            .collect();
        extra.is_empty()
    });
    assert!(
        settled,
        "left under the supervisor after the run: {:?}",
        describe(&extra)
    );
    // It still serves, at once.
    for i in 0..WORKERS {
        let word = format!("after-{i}");
        match one_request(addr, &word) {
            Got::Answer(_) => {}
            other => panic!("request {word} after the chaos: {other:?}"),
        }
    }
    let spawned = Jobd::status_json(&sb)["totals"]["workers_spawned"].clone();
    j.stop_clean();
    let total_time = t0.elapsed();

    // The clients' side.
    let mut answered: Vec<u64> = Vec::new();
    let (mut closed_empty, mut closed_partial) = (0usize, 0usize);
    let mut closed_jobs: Vec<u64> = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    for g in results.iter().flatten() {
        match g {
            Got::Answer(id) => answered.push(*id),
            Got::Closed(None) => closed_empty += 1,
            Got::Closed(Some(id)) => {
                closed_partial += 1;
                closed_jobs.push(*id);
            }
            Got::Hang(why) => failures.push(format!("hang: {why}")),
            Got::Garbled(d) => failures.push(format!("garbled: {d:?}")),
        }
    }
    let rounds: usize = results.iter().map(Vec::len).sum();

    // jobd's side: one record per job.
    let text = std::fs::read_to_string(&access).unwrap();
    let mut records: HashMap<u64, (String, String)> = HashMap::new();
    let mut dup = Vec::new();
    for line in text.lines() {
        let (job, outcome, reason) = access_fields(line);
        if records.insert(job, (outcome, reason)).is_some() {
            dup.push(line.to_string());
        }
    }
    let started: HashSet<u64> = j
        .logs()
        .iter()
        .filter(|l| l.contains("job started"))
        .map(|l| util::field(l, "job").parse().unwrap())
        .collect();
    let unrecorded: Vec<u64> = started
        .iter()
        .filter(|id| !records.contains_key(id))
        .copied()
        .collect();
    let cancelled: Vec<String> = text
        .lines()
        .filter(|l| l.contains("outcome=cancelled"))
        .map(str::to_string)
        .collect();
    let count = |o: &str, r: &str| {
        records
            .values()
            .filter(|(oo, rr)| oo == o && rr == r)
            .count()
    };
    let (done, died) = (count("done", "-"), count("failed", "worker-died"));
    let other: Vec<_> = records
        .iter()
        .filter(|(_, (o, r))| !expected(o, r, false))
        .collect();
    let answered_set: HashSet<u64> = answered.iter().copied().collect();
    let answered_died = answered
        .iter()
        .filter(|id| records.get(id).is_some_and(|(o, _)| o == "failed"))
        .count();
    // Every job whose handler spoke to its client has one record: `done`
    // for a whole answer (or `failed reason=worker-died`, lost with its
    // worker after answering), `failed reason=worker-died` for a partial
    // one.
    let ok = |id: &u64, partial: bool| {
        records
            .get(id)
            .is_some_and(|(o, r)| expected(o, r, partial))
    };
    let unrecorded_answers: Vec<u64> = answered
        .iter()
        .filter(|id| !records.contains_key(id))
        .copied()
        .collect();
    let unrecorded_partials: Vec<u64> = closed_jobs
        .iter()
        .filter(|id| !records.contains_key(id))
        .copied()
        .collect();
    let misrecorded: Vec<_> = answered
        .iter()
        .filter(|id| records.contains_key(id) && !ok(id, false))
        .chain(
            closed_jobs
                .iter()
                .filter(|id| records.contains_key(id) && !ok(id, true)),
        )
        .map(|id| (id, &records[id]))
        .collect();
    // Job ids never recorded at all (with or without a client that saw
    // the handler).
    let max_id = records.keys().copied().max().unwrap_or(0);
    let gaps = (1..=max_id).filter(|id| !records.contains_key(id)).count();
    let answered_died_lines: Vec<&str> = text
        .lines()
        .filter(|l| {
            let (id, o, _) = access_fields(l);
            o == "failed" && answered_set.contains(&id)
        })
        .take(3)
        .collect();
    let backoffs = j.count(|l| l.contains("workers are dying quickly"));
    let died_logged = j.count(|l| l.contains("worker died; replacing it"));
    eprintln!(
        "chaos: seed {seed}; {WORKERS} workers, {CLIENTS} clients; kills {kills} \
         ({old_kills} old, {young_kills} young) in {kill_time:.1?}"
    );
    eprintln!(
        "chaos: respawn back-offs {backoffs}; worker deaths logged {died_logged}; \
         workers spawned {spawned}"
    );
    eprintln!(
        "chaos: rounds {rounds}; answers {}; closes {} ({closed_empty} before the job line, \
         {closed_partial} mid-answer); hangs or garbled answers {}",
        answered.len(),
        closed_empty + closed_partial,
        failures.len(),
    );
    eprintln!(
        "chaos: records {} (done {done}, failed worker-died {died}, other {}); answered but \
         recorded worker-died {answered_died}; cancellations {}; duplicate records {}",
        records.len(),
        other.len(),
        cancelled.len(),
        dup.len(),
    );
    eprintln!(
        "chaos: started but unrecorded {}; job ids never recorded {gaps} (of them, whole \
         answers {}, partial answers {}); misrecorded {}; leaks 0 (checked)",
        unrecorded.len(),
        unrecorded_answers.len(),
        unrecorded_partials.len(),
        misrecorded.len(),
    );
    eprintln!("chaos: clients done at {client_time:.1?}, total {total_time:.1?}");
    for l in &answered_died_lines {
        eprintln!("chaos: answered, recorded lost: {l}");
    }
    assert_eq!(kills, KILLS, "the killer ran out of time");
    assert!(
        failures.is_empty(),
        "{} bad requests: {:?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    assert!(
        cancelled.is_empty(),
        "jobs recorded cancelled: {cancelled:?}"
    );
    assert!(dup.is_empty(), "jobs recorded twice: {dup:?}");
    assert!(
        unrecorded.is_empty(),
        "jobs started but never recorded: {unrecorded:?}"
    );
    assert!(other.is_empty(), "unexpected records: {other:?}");
    assert!(
        misrecorded.is_empty(),
        "jobs recorded wrongly: {misrecorded:?}"
    );
    // A worker that dies after spawning its handler and before publishing
    // the job in its slot (or after clearing the slot and before writing
    // the record) leaves a job that ran, and spoke to its client, with no
    // record at all: no `job started`, no `job ended`, no access-log line.
    assert!(
        unrecorded_answers.is_empty() && unrecorded_partials.is_empty(),
        "jobs whose client got their handler's output but that jobd never recorded \
         (whole answers {unrecorded_answers:?}, partial answers {unrecorded_partials:?})"
    );
    assert!(!answered.is_empty());
    assert!(died <= kills, "{died} jobs lost with {kills} workers");
}

// ---- Test 2: the supervisor SIGKILLed ----

use crate::containment::cgroup_root;

/// Removes a cgroup tree the test made jobd leave, if the test fails
/// before the next jobd removes it: kills what is in it, deepest first.
struct RemoveTree(PathBuf);

impl Drop for RemoveTree {
    fn drop(&mut self) {
        fn rm(d: &Path) {
            if let Ok(rd) = std::fs::read_dir(d) {
                for e in rd.flatten() {
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        rm(&e.path());
                    }
                }
            }
            let _ = std::fs::write(d.join("cgroup.kill"), "1");
            let _ = poll_until(Instant::now() + DEADLINE, || {
                std::fs::read_to_string(d.join("cgroup.events"))
                    .map_or(true, |t| t.contains("populated 0"))
            });
            let _ = std::fs::remove_dir(d);
        }
        if self.0.exists() {
            rm(&self.0);
        }
    }
}

/// `--pid-file`, `--scoreboard`, four jobs each running a `sleep 300`:
/// SIGKILL the supervisor. Within 2 s every worker and every job process
/// is gone (the workers die with it: parent-death signal, and kill their
/// jobs), the clients see their connections closed; a new jobd with the
/// same pid file, scoreboard and port starts at once (stale pid file
/// taken over), serves, removed the dead jobd's cgroup tree before it
/// said which containment is in force, and stops cleanly.
#[test]
fn supervisor_sigkill_takes_every_worker_and_job_and_allows_a_restart() {
    let dir = tempdir();
    let pid_file = dir.path().join("jobd.pid");
    let sb = dir.path().join("sb");
    let access = dir.path().join("access.log");
    let h = script(
        dir.path(),
        "long.sh",
        "echo \"started $JOBD_JOB_ID $$\"\nsleep 300\necho never",
    );
    let mut j = Jobd::start_in(
        dir,
        &[
            "--prefork",
            "4",
            "--max-children",
            "4",
            "--pid-file",
            pid_file.to_str().unwrap(),
            "--scoreboard",
            sb.to_str().unwrap(),
            "--access-log",
            access.to_str().unwrap(),
            "--script",
            h.to_str().unwrap(),
        ],
    );
    let sup = j.pid();
    let port = j.addr.port();
    // The containment line comes once the tree is made (after `listening`).
    let containment1 = j.wait_log(|l| l.contains("job containment"));
    let cgroup_tree = containment1
        .contains("a cgroup per slot")
        .then(cgroup_root)
        .flatten()
        .map(|root| root.join(format!("jobd-{sup}")));
    let _guard = cgroup_tree.clone().map(RemoveTree);
    // Four clients, four jobs running.
    let mut conns: Vec<(TcpStream, u64, i32)> = (0..4)
        .map(|_| {
            let s = j.connect();
            let mut line = String::new();
            BufReader::new(s.try_clone().unwrap())
                .read_line(&mut line)
                .unwrap();
            let v: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(v.first(), Some(&"started"), "{line:?}");
            (s, v[1].parse().unwrap(), v[2].parse().unwrap())
        })
        .collect();
    for (_, job, _) in &conns {
        j.wait_log(|l| l.contains("job started") && l.contains(&format!("job={job} ")));
    }
    wait_until("four sleeps running", || {
        conns.iter().all(|(_, _, handler)| {
            children_of(*handler)
                .iter()
                .any(|&c| comm(c) == "sleep" && util::alive(c))
        })
    });
    let before = util::tagged_pids(&j.tag);
    let workers = workers_of(sup).len();
    assert_eq!(workers, 4);
    if let Some(t) = &cgroup_tree {
        assert!(t.is_dir(), "{} missing", t.display());
    }

    let killed_at = Instant::now();
    util::send(sup, "KILL");
    let _ = j.wait_exit();
    let gone = poll_until(killed_at + Duration::from_secs(2), || {
        util::tagged_pids(&j.tag).is_empty()
    });
    let left = util::tagged_pids(&j.tag);
    assert!(
        gone,
        "2 s after the supervisor's SIGKILL, {} of {} processes live on: {:?}\nlog:\n{}",
        left.len(),
        before.len(),
        describe(&left),
        j.dump()
    );
    let gone_after = killed_at.elapsed();
    // The clients see their connections end.
    for (s, job, _) in &mut conns {
        let mut rest = Vec::new();
        let hung = s.read_to_end(&mut rest).is_err_and(|e| {
            matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            )
        });
        assert!(
            !hung,
            "job {job}: the connection stayed open after jobd died"
        );
        assert!(rest.is_empty(), "job {job} wrote {rest:?}");
    }
    // The workers recorded their jobs' ends (each kills its job when it
    // gets its parent-death signal).
    let records = std::fs::read_to_string(&access).unwrap_or_default();
    let recorded: Vec<String> = records.lines().map(str::to_string).collect();
    let mut ids: Vec<u64> = recorded.iter().map(|l| access_fields(l).0).collect();
    ids.sort_unstable();
    let mut jobs: Vec<u64> = conns.iter().map(|c| c.1).collect();
    jobs.sort_unstable();
    assert_eq!(ids, jobs, "one record per killed job: {recorded:?}");
    // The killed jobd left its tree (unless a jobd of another test, started
    // meanwhile in the same cgroup, already removed it as stale).
    let left_tree = cgroup_tree.as_ref().is_some_and(|t| t.is_dir());

    // A new jobd: same pid file, scoreboard and port, at once; the old
    // connections are still open on the clients' side.
    let dir2 = tempdir();
    let h2 = script(dir2.path(), "again.sh", "IFS= read -r l\necho \"again $l\"");
    let listen = format!("127.0.0.1:{port}");
    let t2 = Instant::now();
    let mut k = Jobd::start_in(
        dir2,
        &[
            "--listen",
            &listen,
            "--prefork",
            "2",
            "--pid-file",
            pid_file.to_str().unwrap(),
            "--scoreboard",
            sb.to_str().unwrap(),
            "--script",
            h2.to_str().unwrap(),
        ],
    );
    let up_after = t2.elapsed();
    assert_eq!(k.addr.port(), port);
    k.wait_log(|l| l.contains("pid file is stale") && l.contains(&format!("old_pid={sup}")));
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap().trim(),
        k.pid().to_string()
    );
    // The containment line comes after the stale trees are removed.
    let containment = k.wait_log(|l| l.contains("job containment"));
    if let Some(t) = &cgroup_tree {
        assert!(!t.exists(), "{} is still there: {containment}", t.display());
    }
    let mut s = k.connect();
    s.write_all(b"hello\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert_eq!(out, "again hello\n");
    let served_after = t2.elapsed();
    // The job is counted once its worker has recorded it, which comes
    // after the connection is closed (the client's EOF).
    util::wait_until("the new jobd's job counted", || {
        Jobd::status_json(&sb)["totals"]["jobs_served"] == 1
    });
    let st = Jobd::status_json(&sb);
    assert_eq!(st["supervisor_pid"], k.pid(), "{st}");
    assert_eq!(st["totals"]["jobs_served"], 1, "{st}");
    drop(conns);
    k.stop_clean();
    util::wait_gone(&j.tag);
    eprintln!(
        "supervisor kill: {} processes ({workers} workers, 4 jobs) gone {gone_after:.1?} after the \
         SIGKILL; cgroup tree {}; records of the killed jobs: {recorded:?}; restart on port {port} \
         listening after {up_after:.1?}, served after {served_after:.1?}",
        before.len(),
        match &cgroup_tree {
            Some(t) if left_tree => format!("{} left, removed by the next jobd", t.display()),
            Some(t) => format!("{} removed before the restart by another jobd", t.display()),
            None => format!("not used ({})", containment1.trim()),
        },
    );
}
