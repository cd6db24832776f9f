//! The anchors' version of the cancellation test: how long does each server
//! let an abandoned job run?
//!
//! The job is a 30 s handler: it starts `sleep 30 &` as a child, prints its
//! own pid and the child's, and `wait`s. For jobd (default flags), tcpserver
//! (`-c 4 -b 1024 -H -R -l 0`) and socat (`TCP-LISTEN:..,fork,reuseaddr
//! EXEC:..`), run side by side (the three at once, to save time), a client
//! connects, reads the pid line, opens pidfds on both processes, hangs up
//! (close: FIN) 0.5 s after connecting, and watches the pidfds: the result is
//! how long the handler and its child kept running after the hang-up, capped
//! at 35 s (`ANCHOR_CAP_S`).
//!
//! Cleanup: each server is stopped by the pid of the child this bench
//! started; job processes still alive are killed through the pidfds the
//! client opened, and any process that still carries the server's marker in
//! its environment is killed after a pidfd pins it.

mod common;

use std::ffi::OsString;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::OwnedFd;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use rustix::process::Signal;

const HANDLER: &str = "#!/bin/sh\nsleep 30 &\necho \"$$ $!\"\nwait\n";
const HANG_UP_AFTER: Duration = Duration::from_millis(500);
const JOB_SECS: f64 = 30.0;

/// What the client saw for one server.
struct Outcome {
    server: String,
    /// Seconds from the hang-up to the exit of the handler / its child;
    /// None: still running at the cap.
    handler_s: Option<f64>,
    child_s: Option<f64>,
    error: Option<String>,
    killed_after: usize,
    stop: String,
    log_note: Option<String>,
}

fn main() {
    let cap = env_secs("ANCHOR_CAP_S", 35.0);
    let t_all = Instant::now();
    let dir = tempfile::tempdir().expect("temp dir");
    let handler = write_script(dir.path(), "job30.sh", HANDLER).expect("handler");
    let anchors = ensure_anchors();
    println!("anchor_cancel: {}", machine_line());
    println!(
        "anchor_cancel: a {JOB_SECS:.0} s job (handler + `sleep 30 &` child); the client hangs up {} ms after connecting; cap {:.0} s",
        HANG_UP_AFTER.as_millis(),
        cap.as_secs_f64()
    );
    for n in &anchors.notes {
        println!("anchor_cancel: anchors: {n}");
    }

    let h = handler.to_string_lossy().into_owned();
    let mut servers: Vec<Spawned> = Vec::new();
    let jobd_args: Vec<OsString> = vec![
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--script".into(),
        handler.clone().into(),
    ];
    match spawn_jobd("jobd", &jobd_args, dir.path(), Duration::from_secs(15)) {
        Ok(s) => servers.push(s),
        Err(e) => println!("anchor_cancel: SKIPPED jobd: {e}"),
    }
    match &anchors.tcpserver {
        Some(bin) => {
            let args: Vec<String> = [
                "-c",
                "4",
                "-b",
                "1024",
                "-H",
                "-R",
                "-l",
                "0",
                "127.0.0.1",
                "{port}",
                &h,
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            match spawn_on_free_port("tcpserver", bin, &args, dir.path(), Duration::from_secs(15)) {
                Ok(s) => servers.push(s),
                Err(e) => println!("anchor_cancel: SKIPPED tcpserver: {e}"),
            }
        }
        None => println!("anchor_cancel: MISSING tcpserver (package ucspi-tcp): skipped"),
    }
    match &anchors.socat {
        Some(bin) => {
            let args = vec![
                "TCP-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr,backlog=1024".to_string(),
                format!("EXEC:{h}"),
            ];
            match spawn_on_free_port("socat", bin, &args, dir.path(), Duration::from_secs(15)) {
                Ok(s) => servers.push(s),
                Err(e) => println!("anchor_cancel: SKIPPED socat: {e}"),
            }
        }
        None => println!("anchor_cancel: MISSING socat (package socat): skipped"),
    }

    // The three clients at once.
    let handles: Vec<_> = servers
        .iter()
        .map(|s| {
            let addr = s.addr;
            let name = s.name.clone();
            thread::spawn(move || client(&name, addr, cap))
        })
        .collect();
    let mut results = Vec::new();
    for (h, server) in handles.into_iter().zip(servers) {
        let (mut o, leftovers) = match h.join() {
            Ok(x) => x,
            Err(_) => (
                Outcome {
                    server: server.name.clone(),
                    handler_s: None,
                    child_s: None,
                    error: Some("client thread panicked".into()),
                    killed_after: 0,
                    stop: String::new(),
                    log_note: None,
                },
                Vec::new(),
            ),
        };
        // Job processes still alive (beyond the cap): kill them by pidfd.
        for fd in &leftovers {
            if !pidfd_exited(fd) && pidfd_signal(fd, Signal::KILL).is_ok() {
                o.killed_after += 1;
            }
        }
        let log = server.log_text();
        o.log_note = log
            .lines()
            .find(|l| l.contains("job cancelled"))
            .map(|l| l.trim().to_string());
        o.stop = server.stop(Duration::from_secs(10));
        results.push(o);
    }
    print_table(&results, cap);
    println!(
        "anchor_cancel: total wall time {:.1} s",
        t_all.elapsed().as_secs_f64()
    );
}

fn fmt_s(x: Option<f64>, cap: Duration) -> String {
    match x {
        Some(s) if s < 1.0 => format!("{:.1} ms", s * 1e3),
        Some(s) => format!("{s:.2} s"),
        None => format!("> {:.0} s (still running)", cap.as_secs_f64()),
    }
}

fn print_table(results: &[Outcome], cap: Duration) {
    println!();
    println!(
        "{:<10} {:>28} {:>28}  abandoned job",
        "server", "handler ran on after hang-up", "its child ran on"
    );
    for o in results {
        if let Some(e) = &o.error {
            println!("{:<10} error: {e}", o.server);
            continue;
        }
        let ended = |x: Option<f64>| match x {
            Some(w) if w < 0.1 => "killed at once".to_string(),
            Some(w) if w >= JOB_SECS - 1.0 => "ran to the end".to_string(),
            Some(w) => format!("killed after {w:.1} s"),
            None => "still running at the cap".to_string(),
        };
        let (a, b) = (ended(o.handler_s), ended(o.child_s));
        let verdict = if a == "killed at once" && b == a {
            "cancelled: handler and child killed at once".to_string()
        } else if a == b {
            format!("not cancelled: handler and child {a}")
        } else {
            format!("handler {a}, its child {b}")
        };
        println!(
            "{:<10} {:>28} {:>28}  {verdict}",
            o.server,
            fmt_s(o.handler_s, cap),
            fmt_s(o.child_s, cap)
        );
    }
    println!();
    for o in results {
        if let Some(l) = &o.log_note {
            println!("{}: log: {l}", o.server);
        }
        let extra = if o.killed_after > 0 {
            format!(
                "; {} job process(es) killed by the bench after the cap",
                o.killed_after
            )
        } else {
            String::new()
        };
        println!("{}: stopped: {}{extra}", o.server, o.stop);
        println!(
            "JSON {}",
            serde_json::json!({
                "bench": "anchor_cancel", "server": o.server,
                "hang_up_after_ms": HANG_UP_AFTER.as_millis() as u64,
                "job_s": JOB_SECS, "cap_s": cap.as_secs_f64(),
                "handler_ran_on_s": o.handler_s, "child_ran_on_s": o.child_s,
                "error": o.error, "killed_by_bench_after_cap": o.killed_after,
            })
        );
    }
}

/// Connect, read the pids, hang up 0.5 s after connecting, watch the pids.
/// Returns the outcome and the pidfds of processes still alive.
fn client(name: &str, addr: SocketAddr, cap: Duration) -> (Outcome, Vec<OwnedFd>) {
    let mut o = Outcome {
        server: name.to_string(),
        handler_s: None,
        child_s: None,
        error: None,
        killed_after: 0,
        stop: String::new(),
        log_note: None,
    };
    let fail = |mut o: Outcome, e: String| {
        o.error = Some(e);
        (o, Vec::new())
    };
    let t_conn = Instant::now();
    let s = match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
        Ok(s) => s,
        Err(e) => return fail(o, format!("connect: {e}")),
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let (hp, cp) = match read_pid_pair(&s) {
        Ok(p) => p,
        Err(e) => return fail(o, e),
    };
    let fds: Vec<OwnedFd> = match (pidfd_open(hp), pidfd_open(cp)) {
        (Ok(a), Ok(b)) => vec![a, b],
        (a, b) => {
            return fail(
                o,
                format!(
                    "pidfd_open: handler {:?}, child {:?}",
                    a.err().map(|e| e.to_string()),
                    b.err().map(|e| e.to_string())
                ),
            );
        }
    };
    thread::sleep(HANG_UP_AFTER.saturating_sub(t_conn.elapsed()));
    let t0 = Instant::now();
    drop(s); // FIN
    let until = t0 + cap;
    let mut gone: [Option<f64>; 2] = [None, None];
    while Instant::now() < until && gone.iter().any(|g| g.is_none()) {
        let idx: Vec<usize> = (0..2).filter(|&i| gone[i].is_none()).collect();
        let live: Vec<&OwnedFd> = idx.iter().map(|&i| &fds[i]).collect();
        let exited = poll_exited(&live, until.saturating_duration_since(Instant::now()));
        let now = t0.elapsed().as_secs_f64();
        for (&i, e) in idx.iter().zip(exited) {
            if e {
                gone[i] = Some(now);
            }
        }
    }
    o.handler_s = gone[0];
    o.child_s = gone[1];
    let leftovers = fds
        .into_iter()
        .zip(gone)
        .filter(|(_, g)| g.is_none())
        .map(|(f, _)| f)
        .collect();
    (o, leftovers)
}
