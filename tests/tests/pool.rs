//! Pool management through the real binary: growth to max children under
//! load and shrinking back, the cap, recycling, job timeouts, SIGTTIN /
//! SIGTTOU, reload on file change, and the status totals.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;

use crate::util::{self, Jobd, script, tempdir, wait_until};

fn live_workers(st: &serde_json::Value) -> usize {
    st["slots"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["state"] != "exiting")
        .count()
}

/// Starts `n` clients whose jobs wait until the client writes a line.
fn hold_clients(j: &Jobd, n: usize) -> Vec<TcpStream> {
    let addr = j.addr;
    std::thread::scope(|sc| {
        let hs: Vec<_> = (0..n)
            .map(|_| {
                sc.spawn(move || {
                    let s = TcpStream::connect(addr).unwrap();
                    s.set_read_timeout(Some(util::DEADLINE)).unwrap();
                    let mut line = String::new();
                    BufReader::new(s.try_clone().unwrap())
                        .read_line(&mut line)
                        .unwrap();
                    assert_eq!(line.trim(), "started");
                    s
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn release(conns: Vec<TcpStream>) {
    for mut s in conns {
        writeln!(s, "go").unwrap();
        let mut rest = String::new();
        s.read_to_string(&mut rest).unwrap();
        assert_eq!(rest.trim(), "done go");
    }
}

const HOLD: &str = "echo started\nIFS= read -r x\necho \"done $x\"";

#[test]
fn grows_under_load_to_max_children_and_shrinks_back_after_idle() {
    let (mut j, sb) = Jobd::with_script_sb(
        HOLD,
        &[
            "--prefork",
            "2",
            "--max-children",
            "40",
            "--idle-timeout",
            "1s",
        ],
    );
    // 32 slow clients: every one gets a worker of its own.
    let conns = hold_clients(&j, 32);
    let st = Jobd::status_json(&sb);
    assert!(st["totals"]["busy"].as_u64().unwrap() >= 32, "{st}");
    assert!(live_workers(&st) <= 40, "{st}");
    // More clients than the cap: the pool stops at 40 and says so once.
    let extra = hold_clients(&j, 8);
    let more: Vec<TcpStream> = (0..4).map(|_| j.connect()).collect();
    j.wait_log(|l| l.contains("max children reached"));
    let st = Jobd::status_json(&sb);
    assert_eq!(live_workers(&st), 40, "{st}");
    assert_eq!(st["totals"]["max_children_reached"], 1, "{st}");
    wait_until("4 clients in the listen queue", || {
        Jobd::status_json(&sb)["totals"]["listen_queue"] == 4
    });
    assert_eq!(j.count(|l| l.contains("max children reached")), 1);
    drop(more);
    release(conns);
    release(extra);
    // Idle workers are retired one per tick back down to --prefork.
    wait_until("the pool back at 2 workers", || {
        let st = Jobd::status_json(&sb);
        live_workers(&st) == 2 && st["totals"]["workers"] == 2
    });
    j.stop_clean();
}

#[test]
fn worker_is_recycled_after_max_requests() {
    let (mut j, _sb) = Jobd::with_script_sb(
        "echo \"$PPID\"",
        &[
            "--prefork",
            "1",
            "--max-children",
            "1",
            "--max-requests-per-child",
            "3",
        ],
    );
    let pids: Vec<String> = (0..7)
        .map(|_| j.request_all("").trim().to_string())
        .collect();
    // Three jobs per worker, then a new worker in the same slot.
    assert_eq!(pids[0], pids[1]);
    assert_eq!(pids[1], pids[2]);
    assert_ne!(pids[2], pids[3]);
    assert_eq!(pids[3], pids[5]);
    assert_ne!(pids[5], pids[6]);
    j.wait_log_n(7, &|l| l.contains("job ended"));
    j.wait_log_n(2, &|l| l.contains("worker recycled"));
    assert_eq!(j.count(|l| l.contains("worker recycled")), 2);
    assert_eq!(
        j.count(|l| l.contains("job ended") && l.contains("outcome=done")),
        7
    );
    assert_eq!(j.count(|l| l.contains("worker died")), 0, "{}", j.dump());
    j.stop_clean();
}

#[test]
fn job_timeout_cancels_the_job() {
    let (mut j, sb) = Jobd::with_script_sb(
        "echo started\nsleep 300 &\nwait",
        &["--prefork", "1", "--job-timeout", "300ms"],
    );
    let (mut s, line) = j.request_line("");
    assert_eq!(line.trim(), "started");
    let mut rest = String::new();
    s.read_to_string(&mut rest).unwrap();
    let c = j.wait_log(|l| l.contains("job cancelled") && l.contains("reason=timeout"));
    assert!(c.contains("ran_ms="), "{c}");
    j.wait_log(|l| {
        l.contains("job ended") && l.contains("outcome=timeout") && l.contains("reason=timeout")
    });
    wait_until("timeouts counted", || {
        Jobd::status_json(&sb)["totals"]["timeouts"] == 1
    });
    j.stop_clean();
}

#[test]
fn sigttin_and_sigttou_add_and_remove_a_worker() {
    let (mut j, sb) = Jobd::with_script_sb("echo hi", &["--prefork", "2"]);
    let count = || live_workers(&Jobd::status_json(&sb));
    wait_until("2 workers", || count() == 2);
    j.signal("TTIN");
    wait_until("3 workers", || count() == 3);
    j.signal("TTIN");
    wait_until("4 workers", || {
        count() == 4 && Jobd::status_json(&sb)["totals"]["min_workers"] == 4
    });
    j.signal("TTOU");
    wait_until("3 workers", || {
        let st = Jobd::status_json(&sb);
        st["totals"]["workers"] == 3 && st["totals"]["min_workers"] == 3
    });
    assert_eq!(j.request_all("").trim(), "hi");
    j.stop_clean();
}

#[test]
fn reload_on_handler_change_keeps_the_running_job() {
    let dir = tempdir();
    let sb = dir.path().join("sb");
    let h = script(
        dir.path(),
        "h.sh",
        "echo \"v1 started\"\nIFS= read -r x\necho \"v1 done $x\"",
    );
    let mut j = Jobd::start_in(
        dir,
        &[
            "--prefork",
            "2",
            "--reload-check-every",
            "100ms",
            "--scoreboard",
            sb.to_str().unwrap(),
            "--script",
            h.to_str().unwrap(),
        ],
    );
    let (mut s, line) = j.request_line("");
    assert_eq!(line.trim(), "v1 started");
    // Replace the handler (a new inode, as an editor or a deploy does).
    let tmp = h.with_extension("new");
    std::fs::write(&tmp, "#!/bin/sh\necho \"v2 says hi\"\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&tmp, &h).unwrap();
    j.wait_log(|l| l.contains("auto-reload: reloading"));
    wait_until("generation 2", || Jobd::status_json(&sb)["generation"] == 2);
    // New clients get the new handler while the old job still runs.
    assert_eq!(j.request_all("").trim(), "v2 says hi");
    writeln!(s, "x").unwrap();
    let mut rest = String::new();
    s.read_to_string(&mut rest).unwrap();
    assert_eq!(rest.trim(), "v1 done x");
    // Never two generations idle at once; eventually all of generation 2.
    wait_until("all workers of generation 2", || {
        let st = Jobd::status_json(&sb);
        st["slots"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["generation"] == 2)
    });
    j.stop_clean();
}

#[test]
fn status_shows_totals_and_listen_queue() {
    let (mut j, sb) = Jobd::with_script_sb(HOLD, &["--prefork", "1", "--max-children", "1"]);
    let held = hold_clients(&j, 1);
    let waiting: Vec<TcpStream> = (0..3).map(|_| j.connect()).collect();
    wait_until("3 in the listen queue", || {
        Jobd::status_json(&sb)["totals"]["listen_queue"] == 3
    });
    let out = std::process::Command::new(util::jobd_bin())
        .args(["status", "--scoreboard"])
        .arg(&sb)
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("listen queue 3"), "{text}");
    assert!(text.contains("max children reached"), "{text}");
    drop(waiting);
    release(held);
    j.stop_clean();
}
