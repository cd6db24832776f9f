//! Disconnect detection through the real binary and real clients: FIN,
//! reset, half-close, IPv6, each detector, with and without the worker
//! watch, hooks, and no false cancellation under churn.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use crate::util::{self, Jobd, alive, reset, script, tempdir, wait_gone, wait_until};

/// A job tree of two: the handler and its child. First line: both pids.
const TREE: &str = "sleep 300 &\necho \"$$ $! $JOBD_JOB_ID\"\nwait";

fn start_tree(j: &Jobd) -> (TcpStream, i32, i32, u64) {
    let (s, line) = j.request_line("");
    let v: Vec<&str> = line.split_whitespace().collect();
    (
        s,
        v[0].parse().unwrap(),
        v[1].parse().unwrap(),
        v[2].parse().unwrap(),
    )
}

/// Waits until both processes are gone; returns how long it took.
fn gone_within(handler: i32, child: i32) -> Duration {
    let t = Instant::now();
    wait_until("job tree gone", || !alive(handler) && !alive(child));
    t.elapsed()
}

fn hangup_case(extra: &[&str], listen: &str, rst: bool) {
    let dir = tempdir();
    let h = script(dir.path(), "h.sh", TREE);
    let mut args = vec![
        "--listen",
        listen,
        "--prefork",
        "2",
        "--script",
        h.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let mut j = Jobd::start_in(dir, &args);
    let (s, handler, child, job) = start_tree(&j);
    let other = start_tree(&j);
    if rst {
        reset(s)
    } else {
        drop(s)
    }
    let took = gone_within(handler, child);
    // "Within a fraction of a second": generous bound for a loaded CI box;
    // the latency itself is measured by benches/cancel_latency.rs.
    assert!(
        took < Duration::from_secs(2),
        "job tree took {took:?} to go"
    );
    let reason = if rst {
        "reason=client-reset"
    } else {
        "reason=client-closed"
    };
    let line = j.wait_log(|l| l.contains("job cancelled") && l.contains(&format!("job={job} ")));
    for f in [
        reason,
        "slot=",
        "pid=",
        "peer=",
        "ran_ms=",
        "seen_after_ms=",
    ] {
        assert!(line.contains(f), "{f} missing in {line}");
    }
    j.wait_log(|l| {
        l.contains("job ended")
            && l.contains(&format!("job={job} "))
            && l.contains("outcome=cancelled")
    });
    // Exactly one cancellation line, and only the job-end line besides
    // carries the job id with outcome=cancelled.
    assert_eq!(j.count(|l| l.contains("job cancelled")), 1, "{}", j.dump());
    // The other job is untouched.
    assert!(alive(other.1) && alive(other.2), "another job was hit");
    // The slot serves the next client.
    let next = start_tree(&j);
    assert!(alive(next.1));
    drop(other.0);
    drop(next.0);
    j.wait_log_n(3, &|l| l.contains("job cancelled"));
    j.stop_clean();
}

#[test]
fn fin_cancels_by_default_sock_diag_with_watch() {
    hangup_case(&["--detector", "sock-diag"], "127.0.0.1:0", false);
}

#[test]
fn rst_cancels_sock_diag_with_watch() {
    hangup_case(&["--detector", "sock-diag"], "127.0.0.1:0", true);
}

#[test]
fn fin_cancels_procfs_with_watch() {
    hangup_case(&["--detector", "procfs"], "127.0.0.1:0", false);
}

#[test]
fn rst_cancels_procfs_with_watch() {
    hangup_case(&["--detector", "procfs"], "127.0.0.1:0", true);
}

#[test]
fn fin_cancels_by_periodic_scan_alone_sock_diag() {
    hangup_case(
        &["--detector", "sock-diag", "--worker-watch", "off"],
        "127.0.0.1:0",
        false,
    );
}

#[test]
fn rst_cancels_by_periodic_scan_alone_sock_diag() {
    hangup_case(
        &["--detector", "sock-diag", "--worker-watch", "off"],
        "127.0.0.1:0",
        true,
    );
}

#[test]
fn fin_cancels_by_periodic_scan_alone_procfs() {
    hangup_case(
        &["--detector", "procfs", "--worker-watch", "off"],
        "127.0.0.1:0",
        false,
    );
}

#[test]
fn rst_cancels_by_periodic_scan_alone_procfs() {
    hangup_case(
        &["--detector", "procfs", "--worker-watch", "off"],
        "127.0.0.1:0",
        true,
    );
}

#[test]
fn ipv6_fin_and_rst_cancel() {
    hangup_case(
        &["--detector", "sock-diag", "--worker-watch", "off"],
        "[::1]:0",
        false,
    );
    hangup_case(
        &["--detector", "procfs", "--worker-watch", "off"],
        "[::1]:0",
        true,
    );
    hangup_case(&[], "[::1]:0", false);
}

/// The periodic scan alone sees the hang-up within its interval: the log
/// says it was seen by the scan.
#[test]
fn scan_alone_reports_seen_by_scan() {
    let mut j = Jobd::with_script(TREE, &["--prefork", "1", "--worker-watch", "off"]);
    let (s, handler, child, _) = start_tree(&j);
    drop(s);
    gone_within(handler, child);
    let line = j.wait_log(|l| l.contains("job cancelled"));
    assert!(
        line.contains("seen_by=\"scan\"") || line.contains("seen_by=scan"),
        "{line}"
    );
    j.stop_clean();
}

const HALF: &str = "IFS= read -r x\nsleep 1\necho \"answer $x\"";

#[test]
fn half_close_with_on_fin_keep_gets_its_answer() {
    let dir = tempdir();
    let h = script(dir.path(), "h.sh", HALF);
    let mut j = Jobd::start_in(
        dir,
        &[
            "--prefork",
            "1",
            "--on-fin",
            "keep",
            "--script",
            h.to_str().unwrap(),
        ],
    );
    let mut s = j.connect();
    s.write_all(b"q\n").unwrap();
    j.wait_log(|l| l.contains("job started"));
    s.shutdown(Shutdown::Write).unwrap();
    let mut got = String::new();
    s.read_to_string(&mut got).unwrap();
    assert_eq!(got.trim(), "answer q");
    j.wait_log(|l| l.contains("job ended") && l.contains("outcome=done"));
    assert_eq!(j.count(|l| l.contains("job cancelled")), 0, "{}", j.dump());
    // A reset still cancels under --on-fin keep.
    let h2 = script(j.dir.path(), "h.sh", TREE);
    let _ = h2;
    j.stop_clean();
}

#[test]
fn reset_cancels_even_with_on_fin_keep() {
    let mut j = Jobd::with_script(TREE, &["--prefork", "1", "--on-fin", "keep"]);
    let (s, handler, child, _) = start_tree(&j);
    reset(s);
    gone_within(handler, child);
    j.wait_log(|l| l.contains("job cancelled") && l.contains("reason=client-reset"));
    j.stop_clean();
}

#[test]
fn half_close_with_default_policy_is_cancelled() {
    let mut j = Jobd::with_script(HALF, &["--prefork", "1"]);
    let mut s = j.connect();
    s.write_all(b"q\n").unwrap();
    j.wait_log(|l| l.contains("job started"));
    s.shutdown(Shutdown::Write).unwrap();
    let mut got = String::new();
    let _ = s.read_to_string(&mut got);
    assert_eq!(got, "", "a cancelled job sends no answer");
    j.wait_log(|l| l.contains("job cancelled") && l.contains("reason=client-closed"));
    j.stop_clean();
}

#[test]
fn on_disconnect_log_keeps_the_job() {
    let mut j = Jobd::with_script(TREE, &["--prefork", "1", "--on-disconnect", "log"]);
    let (s, handler, child, job) = start_tree(&j);
    drop(s);
    j.wait_log(|l| {
        l.contains("client disconnected; job kept") && l.contains(&format!("job={job} "))
    });
    assert!(alive(handler) && alive(child));
    assert_eq!(j.count(|l| l.contains("job cancelled")), 0);
    j.signal("INT");
    assert!(j.wait_exit().success());
    wait_gone(&j.tag);
}

#[test]
fn disconnect_hook_program_decides() {
    let dir = tempdir();
    let events = dir.path().join("events");
    // Keeps jobs whose id is even (exit 3), cancels the others (exit 0).
    let hook = script(
        dir.path(),
        "hook.sh",
        &format!(
            "read -r ev\necho \"$ev\" >> {}\nid=$(echo \"$ev\" | sed 's/.*\"job_id\":\\([0-9]*\\).*/\\1/')\n[ $((id % 2)) -eq 0 ] && exit 3\nexit 0",
            events.display()
        ),
    );
    let h = script(dir.path(), "h.sh", TREE);
    let mut j = Jobd::start_in(
        dir,
        &[
            "--prefork",
            "2",
            "--disconnect-hook",
            hook.to_str().unwrap(),
            "--script",
            h.to_str().unwrap(),
        ],
    );
    let a = start_tree(&j);
    let b = start_tree(&j);
    let (keep, cancel) = if a.3.is_multiple_of(2) {
        (a, b)
    } else {
        (b, a)
    };
    drop(keep.0);
    drop(cancel.0);
    gone_within(cancel.1, cancel.2);
    j.wait_log(|l| l.contains("job kept") && l.contains(&format!("job={} ", keep.3)));
    assert!(alive(keep.1) && alive(keep.2));
    let text = std::fs::read_to_string(&events).unwrap();
    let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    for k in [
        "slot",
        "pid",
        "job_id",
        "proto",
        "local_host",
        "local_port",
        "foreign_host",
        "foreign_port",
        "reason",
        "job_start_unix_ms",
        "detected_unix_ms",
    ] {
        assert!(first.get(k).is_some(), "{k} missing in {first}");
    }
    assert_eq!(first["proto"], "TCP");
    assert_eq!(first["reason"], "client-closed");
    j.signal("INT");
    assert!(j.wait_exit().success());
    wait_gone(&j.tag);
}

#[test]
fn client_gone_before_job_start_gets_no_job() {
    let mut j = Jobd::with_script(
        "echo started\nIFS= read -r x\necho \"bye $x\"",
        &["--prefork", "1"],
    );
    // Occupy the only worker, so the next client waits in the backlog.
    let (mut busy, line) = j.request_line("");
    assert_eq!(line.trim(), "started");
    let waiting = j.connect();
    reset(waiting);
    writeln!(busy, "x").unwrap();
    let mut rest = String::new();
    busy.read_to_string(&mut rest).unwrap();
    j.wait_log(|l| l.contains("client gone before job start"));
    assert_eq!(j.count(|l| l.contains("job started")), 1, "{}", j.dump());
    j.stop_clean();
}

/// Churn: 200 jobs of random length, about half the clients dropping at a
/// random moment. Every dropped job is cancelled, every kept job completes,
/// and no kept job ever appears in a cancellation line.
#[test]
fn no_false_cancellation_under_churn() {
    // First line: the job id; then work for the asked number of ms.
    let mut j = Jobd::with_script(
        "echo \"$JOBD_JOB_ID\"\nIFS= read -r ms\nsleep \"$ms\"\necho done",
        &["--prefork", "8"],
    );
    let addr = j.addr;
    let mut seed: u64 = 0x9e3779b97f4a7c15 ^ std::process::id() as u64;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let plans: Vec<(bool, u64, u64)> = (0..200)
        .map(|_| (rnd() % 2 == 0, 50 + rnd() % 250, rnd() % 40))
        .collect();
    let results = std::sync::Mutex::new(Vec::new());
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|sc| {
        for _ in 0..8 {
            sc.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(&(drop_it, ms, drop_after)) = plans.get(i) else {
                        break;
                    };
                    let mut s = TcpStream::connect(addr).unwrap();
                    s.set_read_timeout(Some(util::DEADLINE)).unwrap();
                    let mut r = BufReader::new(s.try_clone().unwrap());
                    let mut id = String::new();
                    r.read_line(&mut id).unwrap();
                    let id: u64 = id.trim().parse().unwrap();
                    // Jobs that get dropped are long enough to still run.
                    let secs = if drop_it { 30.0 } else { ms as f64 / 1000.0 };
                    writeln!(s, "{secs:.3}").unwrap();
                    if drop_it {
                        std::thread::sleep(Duration::from_millis(drop_after));
                        if i.is_multiple_of(4) {
                            reset(s)
                        } else {
                            drop(s)
                        }
                        results.lock().unwrap().push((id, true, String::new()));
                    } else {
                        let mut rest = String::new();
                        r.read_to_string(&mut rest).unwrap();
                        results.lock().unwrap().push((id, false, rest));
                    }
                }
            });
        }
    });
    let results = results.into_inner().unwrap();
    assert_eq!(results.len(), 200);
    let dropped: Vec<u64> = results.iter().filter(|r| r.1).map(|r| r.0).collect();
    for (id, dropped_it, rest) in &results {
        if !dropped_it {
            assert_eq!(rest.trim(), "done", "kept job {id} did not complete");
        }
    }
    j.wait_log_n(dropped.len(), &|l| l.contains("job cancelled"));
    let logs = j.logs();
    let cancelled: std::collections::HashSet<u64> = logs
        .iter()
        .filter(|l| l.contains("job cancelled"))
        .map(|l| {
            l.split("job=")
                .nth(1)
                .unwrap()
                .split_whitespace()
                .next()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    for (id, dropped_it, _) in &results {
        assert_eq!(
            cancelled.contains(id),
            *dropped_it,
            "job {id}: dropped={dropped_it}; log:\n{}",
            logs.join("\n")
        );
    }
    assert_eq!(cancelled.len(), dropped.len());
    j.stop_clean();
}

/// The supervisor never waits for a hook program: while one hangs (until
/// `--hook-timeout` kills it and the policy applies), other disconnects
/// are judged.
#[test]
fn slow_hook_program_blocks_nothing_and_times_out() {
    let dir = tempdir();
    // Odd job ids: hang; even: cancel at once.
    let hook = script(
        dir.path(),
        "hook.sh",
        "read -r ev\nid=$(echo \"$ev\" | sed 's/.*\"job_id\":\\([0-9]*\\).*/\\1/')\n[ $((id % 2)) -eq 1 ] && exec sleep 30\nexit 0",
    );
    let h = script(dir.path(), "h.sh", TREE);
    let mut j = Jobd::start_in(
        dir,
        &[
            "--prefork",
            "2",
            "--disconnect-hook",
            hook.to_str().unwrap(),
            "--hook-timeout",
            "1s",
            "--script",
            h.to_str().unwrap(),
        ],
    );
    let a = start_tree(&j);
    let b = start_tree(&j);
    let (slow, fast) = if a.3 % 2 == 1 { (a, b) } else { (b, a) };
    drop(slow.0);
    j.wait_log(|l| l.contains("job started") && l.contains(&format!("job={} ", slow.3)));
    drop(fast.0);
    // The fast verdict lands while the slow hook still hangs.
    gone_within(fast.1, fast.2);
    let fast_line =
        j.wait_log(|l| l.contains("job cancelled") && l.contains(&format!("job={} ", fast.3)));
    assert!(
        fast_line.contains("verdict_by=\"hook-program\"")
            || fast_line.contains("verdict_by=hook-program"),
        "{fast_line}"
    );
    assert!(
        alive(slow.1),
        "the slow job was judged before its hook answered"
    );
    // Then the slow hook is killed at its timeout and the policy cancels.
    j.wait_log(|l| l.contains("disconnect hook gave no answer in time"));
    gone_within(slow.1, slow.2);
    let slow_line =
        j.wait_log(|l| l.contains("job cancelled") && l.contains(&format!("job={} ", slow.3)));
    assert!(slow_line.contains("policy"), "{slow_line}");
    j.stop_clean();
}

/// The server side of a job's connection: the `tr:tm->when` field of its
/// line in /proc/net/tcp (timer kind 2 is the keepalive timer).
fn server_timer(port: u16, client_port: u16) -> Option<(u32, u64)> {
    let text = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let hex = |p: u16| format!(":{p:04X}");
    text.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() < 6 || !f[1].ends_with(&hex(port)) || !f[2].ends_with(&hex(client_port)) {
            return None;
        }
        let (kind, when) = f[5].split_once(':')?;
        Some((
            u32::from_str_radix(kind, 16).ok()?,
            u64::from_str_radix(when, 16).ok()?,
        ))
    })
}

/// Accepted sockets carry TCP keepalive (set once on the listener and
/// inherited), so a peer that vanishes without a packet is found too;
/// `--keepalive 0` turns it off.
#[test]
fn accepted_sockets_have_keepalive() {
    for (arg, want) in [("7s", true), ("0", false)] {
        let dir = tempdir();
        let h = script(dir.path(), "h.sh", TREE);
        let mut j = Jobd::start_in(
            dir,
            &[
                "--prefork",
                "1",
                "--keepalive",
                arg,
                "--script",
                h.to_str().unwrap(),
            ],
        );
        let (s, ..) = start_tree(&j);
        let me = s.local_addr().unwrap().port();
        let (kind, when) =
            server_timer(j.addr.port(), me).expect("the job's socket in /proc/net/tcp");
        if want {
            assert_eq!(kind, 2, "keepalive timer expected with --keepalive {arg}");
            // Jiffies to the first probe: at most the idle time (7 s).
            assert!(when <= 7 * 1000, "timer {when}");
        } else {
            assert_eq!(kind, 0, "no timer expected with --keepalive 0");
        }
        drop(s);
        j.stop_clean();
    }
}

/// A dual-stack listener (`[::]`): an IPv4 client is an IPv4-mapped IPv6
/// socket, found in the IPv6 tables by both detectors.
#[test]
fn dual_stack_listener_cancels_an_ipv4_client() {
    for detector in ["sock-diag", "procfs"] {
        let dir = tempdir();
        let h = script(dir.path(), "h.sh", TREE);
        let mut j = Jobd::start_in(
            dir,
            &[
                "--listen",
                "[::]:0",
                "--prefork",
                "1",
                "--worker-watch",
                "off",
                "--detector",
                detector,
                "--script",
                h.to_str().unwrap(),
            ],
        );
        let port = j.addr.port();
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(util::DEADLINE)).unwrap();
        let mut line = String::new();
        BufReader::new(s.try_clone().unwrap())
            .read_line(&mut line)
            .unwrap();
        let v: Vec<i32> = line
            .split_whitespace()
            .take(2)
            .map(|x| x.parse().unwrap())
            .collect();
        drop(s);
        gone_within(v[0], v[1]);
        let c = j.wait_log(|l| l.contains("job cancelled"));
        assert!(
            c.contains("seen_by=\"scan\"") || c.contains("seen_by=scan"),
            "{c}"
        );
        j.stop_clean();
    }
}

/// `--prefork 0`: the single process watches its own client and cancels.
#[test]
fn prefork_zero_cancels_on_hangup() {
    let mut j = Jobd::with_script(TREE, &["--prefork", "0"]);
    let (s, handler, child, job) = start_tree(&j);
    drop(s);
    gone_within(handler, child);
    j.wait_log(|l| {
        l.contains("job cancelled")
            && l.contains(&format!("job={job} "))
            && l.contains("reason=client-closed")
    });
    j.wait_log(|l| l.contains("job ended") && l.contains("outcome=cancelled"));
    // And serves the next client.
    let next = start_tree(&j);
    assert!(alive(next.1));
    drop(next.0);
    j.stop_clean();
}

/// Regression guard: `--prefork 0` accepted `--job-timeout` and ignored it
/// (a 300 s job ran on); the one process now runs the pool's watch.
#[test]
fn prefork_zero_applies_the_job_timeout() {
    let mut j = Jobd::with_script(TREE, &["--prefork", "0", "--job-timeout", "1s"]);
    let (_s, handler, child, job) = start_tree(&j);
    gone_within(handler, child);
    j.wait_log(|l| {
        l.contains("job cancelled")
            && l.contains(&format!("job={job} "))
            && l.contains("reason=timeout")
    });
    j.wait_log(|l| {
        l.contains("job ended")
            && l.contains(&format!("job={job} "))
            && l.contains("outcome=timeout")
    });
    j.stop_clean();
}

/// Regression guard: `--prefork 0` skipped `--disconnect-hook`; its verdict
/// (exit 3: keep) now applies there too.
#[test]
fn prefork_zero_asks_the_disconnect_hook() {
    let dir = tempdir();
    let hook = script(dir.path(), "hook.sh", "cat > /dev/null\nexit 3");
    let h = script(
        dir.path(),
        "h.sh",
        "echo \"$$ $JOBD_JOB_ID\"\nsleep 8\necho done",
    );
    let mut j = Jobd::start_in(
        dir,
        &[
            "--prefork",
            "0",
            "--disconnect-hook",
            hook.to_str().unwrap(),
            "--script",
            h.to_str().unwrap(),
        ],
    );
    let (s, line) = j.request_line("");
    let v: Vec<&str> = line.split_whitespace().collect();
    let (handler, job): (i32, u64) = (v[0].parse().unwrap(), v[1].parse().unwrap());
    drop(s);
    let kept = j.wait_log(|l| l.contains("job kept") && l.contains(&format!("job={job} ")));
    assert!(
        kept.contains("verdict_by=\"hook-program\"") || kept.contains("verdict_by=hook-program"),
        "{kept}"
    );
    assert!(alive(handler), "a kept job runs on");
    let end = j.wait_log(|l| l.contains("job ended") && l.contains(&format!("job={job} ")));
    assert!(end.contains("outcome=done"), "{end}");
    assert_eq!(j.count(|l| l.contains("job cancelled")), 0);
    j.stop_clean();
}

/// `--prefork 0` with `--on-disconnect log`: the disconnect is logged, the
/// job is kept (the policy applies in this mode too).
#[test]
fn prefork_zero_follows_on_disconnect_log() {
    let mut j = Jobd::with_script(
        "echo \"$$ $JOBD_JOB_ID\"\nsleep 3",
        &["--prefork", "0", "--on-disconnect", "log"],
    );
    let (s, line) = j.request_line("");
    let v: Vec<&str> = line.split_whitespace().collect();
    let (handler, job): (i32, u64) = (v[0].parse().unwrap(), v[1].parse().unwrap());
    reset(s);
    let kept = j.wait_log(|l| l.contains("job kept") && l.contains(&format!("job={job} ")));
    assert!(kept.contains("reason=client-reset"), "{kept}");
    assert!(alive(handler));
    j.wait_log(|l| l.contains("job ended") && l.contains("outcome=done"));
    j.stop_clean();
}

/// Regression guard: `--prefork 0` ignored `--grace`: a SIGTERM waited for
/// the running job however long it took.
#[test]
fn prefork_zero_sigterm_keeps_the_grace_period() {
    let mut j = Jobd::with_script(TREE, &["--prefork", "0", "--grace", "1s"]);
    let (_s, handler, child, job) = start_tree(&j);
    j.signal("TERM");
    j.wait_log(|l| l.contains("grace period over"));
    gone_within(handler, child);
    let end = j.wait_log(|l| l.contains("job ended") && l.contains(&format!("job={job} ")));
    assert!(
        end.contains("outcome=cancelled") && end.contains("reason=shutdown"),
        "{end}"
    );
    let st = j.wait_exit();
    assert!(st.success(), "{st:?}");
    wait_gone(&j.tag);
}
