//! The core pool through the real binary: handler I/O and environment,
//! concurrency, relaunch of a killed worker, signals, reload, status.

use std::io::{Read, Write};
use std::time::Duration;

use crate::util::{self, Jobd, alive, field, read_pid, script, tempdir, wait_gone, wait_until};

/// A handler that answers one line with the line and its environment.
const ENV_ECHO: &str = r#"IFS= read -r line
echo "got=$line proto=$PROTO lip=$TCPLOCALIP lport=$TCPLOCALPORT rip=$TCPREMOTEIP rport=$TCPREMOTEPORT job=$JOBD_JOB_ID slot=$JOBD_SLOT""#;

#[test]
fn echo_and_tcpserver_environment_ipv4() {
    let mut j = Jobd::with_script(ENV_ECHO, &["--prefork", "2"]);
    let (mut s, line) = j.request_line("hello world\n");
    let me = s.local_addr().unwrap();
    // Read to the end: the job is over when jobd closes the connection (a
    // client that hangs up earlier would have its job cancelled).
    let mut rest = String::new();
    s.read_to_string(&mut rest).unwrap();
    assert!(line.starts_with("got=hello world "), "{line}");
    assert_eq!(field(&line, "proto"), "TCP");
    assert_eq!(field(&line, "lip"), "127.0.0.1");
    assert_eq!(field(&line, "lport"), j.addr.port().to_string());
    assert_eq!(field(&line, "rip"), "127.0.0.1");
    assert_eq!(field(&line, "rport"), me.port().to_string());
    assert!(field(&line, "job").parse::<u64>().unwrap() >= 1);
    assert!(field(&line, "slot").parse::<u32>().unwrap() < 2);
    drop(s);
    // Start and end are logged with their fields.
    let end = j.wait_log(|l| l.contains("job ended"));
    for f in [
        "slot=",
        "pid=",
        "job=",
        "peer=127.0.0.1:",
        "duration_ms=",
        "status=\"exit 0\"",
        "outcome=done",
    ] {
        assert!(end.contains(f), "{f} missing in {end}");
    }
    assert!(
        j.logs()
            .iter()
            .any(|l| l.contains("job started") && l.contains("peer=127.0.0.1:"))
    );
    j.stop_clean();
}

#[test]
fn echo_over_ipv6() {
    let mut j = Jobd::with_script(ENV_ECHO, &["--listen", "[::1]:0", "--prefork", "1"]);
    assert!(j.addr.is_ipv6());
    let (_s, line) = j.request_line("six\n");
    assert_eq!(field(&line, "proto"), "TCP6");
    assert_eq!(field(&line, "lip"), "::1");
    assert_eq!(field(&line, "rip"), "::1");
    j.stop_clean();
}

#[test]
fn handler_arguments_after_double_dash() {
    let mut j = Jobd::with_script(
        r#"echo "args=$1,$2""#,
        &["--prefork", "1", "--", "a b", "-c"],
    );
    let (_s, line) = j.request_line("");
    assert_eq!(line.trim(), "args=a b,-c");
    j.stop_clean();
}

#[test]
fn n_clients_are_served_by_n_workers_at_once() {
    // Each job says "ready" and then waits for the client: all four can only
    // be ready together if four workers run them at the same time.
    let (mut j, sb) = Jobd::with_script_sb(
        "echo ready\nIFS= read -r x\necho \"bye $x\"",
        &["--prefork", "4", "--max-children", "4"],
    );
    let mut conns = vec![];
    for _ in 0..4 {
        let (s, line) = j.request_line("");
        assert_eq!(line.trim(), "ready");
        conns.push(s);
    }
    let st = Jobd::status_json(&sb);
    assert_eq!(st["totals"]["busy"], 4, "{st}");
    let slots: Vec<u64> = st["slots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["slot"].as_u64().unwrap())
        .collect();
    assert_eq!(slots.len(), 4);
    let pids: std::collections::HashSet<i64> = st["slots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["pid"].as_i64().unwrap())
        .collect();
    assert_eq!(pids.len(), 4, "four distinct workers");
    for s in st["slots"].as_array().unwrap() {
        assert_eq!(s["state"], "busy");
        assert!(s["job_id"].as_u64().is_some());
        assert!(s["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
    }
    for (i, s) in conns.iter_mut().enumerate() {
        writeln!(s, "{i}").unwrap();
        let mut rest = String::new();
        s.read_to_string(&mut rest).unwrap();
        assert_eq!(rest.trim(), format!("bye {i}"));
    }
    drop(conns);
    j.wait_log_n(4, &|l| {
        l.contains("job ended") && l.contains("outcome=done")
    });
    let st = Jobd::status_json(&sb);
    assert_eq!(st["totals"]["jobs_served"], 4);
    j.stop_clean();
}

#[test]
fn killed_worker_is_replaced_in_its_slot() {
    let (mut j, sb) = Jobd::with_script_sb("echo hi", &["--prefork", "2"]);
    let pid_of = |slot: u64| -> Option<i64> {
        let st = Jobd::status_json(&sb);
        st["slots"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["slot"] == slot && s["state"] == "idle")
            .map(|s| s["pid"].as_i64().unwrap())
    };
    let mut old = None;
    wait_until("slot 1 idle", || {
        old = pid_of(1);
        old.is_some()
    });
    let old = old.unwrap();
    util::send(old as i32, "KILL");
    let mut new = None;
    wait_until("slot 1 refilled", || {
        new = pid_of(1).filter(|p| *p != old);
        new.is_some()
    });
    assert!(alive(new.unwrap() as i32));
    j.wait_log(|l| l.contains("worker died") && l.contains("slot=1"));
    // The new worker serves.
    for _ in 0..3 {
        let (_s, line) = j.request_line("");
        assert_eq!(line.trim(), "hi");
    }
    j.stop_clean();
}

#[test]
fn sigterm_waits_for_the_running_job() {
    let mut j = Jobd::with_script(
        "echo started\nIFS= read -r x\necho \"finished $x\"",
        &["--prefork", "2"],
    );
    let (mut s, line) = j.request_line("");
    assert_eq!(line.trim(), "started");
    j.signal("TERM");
    j.wait_log(|l| l.contains("SIGTERM: stopping"));
    // New clients are no longer served while the job runs.
    assert!(
        j.child.try_wait().unwrap().is_none(),
        "jobd exited before its job ended"
    );
    writeln!(s, "ok").unwrap();
    let mut rest = String::new();
    s.read_to_string(&mut rest).unwrap();
    assert_eq!(rest.trim(), "finished ok");
    let st = j.wait_exit();
    assert!(st.success(), "{st:?}");
    assert!(
        j.logs()
            .iter()
            .any(|l| l.contains("job ended") && l.contains("outcome=done"))
    );
    wait_gone(&j.tag);
}

#[test]
fn sigterm_kills_jobs_after_the_grace_period() {
    let mut j = Jobd::with_script(
        "echo started\nexec sleep 300",
        &["--prefork", "1", "--grace", "300ms"],
    );
    let (_s, line) = j.request_line("");
    assert_eq!(line.trim(), "started");
    j.signal("TERM");
    let st = j.wait_exit();
    assert!(st.success(), "{st:?}");
    assert!(
        j.logs().iter().any(|l| l.contains("job ended")
            && l.contains("outcome=cancelled")
            && l.contains("reason=shutdown")),
        "{}",
        j.dump()
    );
    wait_gone(&j.tag);
}

#[test]
fn sigint_kills_the_job_and_its_children() {
    let dir = tempdir();
    let pids = dir.path().join("pids");
    let h = script(
        dir.path(),
        "h.sh",
        &format!(
            "sleep 300 &\necho $! > {0}/child\necho $$ > {0}/handler\necho started\nwait",
            pids.display()
        ),
    );
    std::fs::create_dir(&pids).unwrap();
    let mut j = Jobd::start_in(dir, &["--prefork", "2", "--script", h.to_str().unwrap()]);
    let (_s, line) = j.request_line("");
    assert_eq!(line.trim(), "started");
    let handler = read_pid(&pids.join("handler"));
    let child = read_pid(&pids.join("child"));
    assert!(alive(handler) && alive(child));
    j.signal("INT");
    let st = j.wait_exit();
    assert!(st.success(), "{st:?}");
    wait_until("handler and its child gone", || {
        !alive(handler) && !alive(child)
    });
    wait_gone(&j.tag);
}

#[test]
fn sighup_replaces_workers_and_running_job_completes() {
    let (mut j, sb) = Jobd::with_script_sb(
        "echo started\nIFS= read -r x\necho \"finished $x\"",
        &["--prefork", "2"],
    );
    let (mut s, line) = j.request_line("");
    assert_eq!(line.trim(), "started");
    let before = Jobd::status_json(&sb);
    j.signal("HUP");
    j.wait_log(|l| l.contains("SIGHUP: reloading"));
    // The idle worker is replaced by a generation-2 worker at once; the busy
    // one keeps running its job.
    wait_until("an idle generation-2 worker", || {
        let st = Jobd::status_json(&sb);
        st["generation"] == 2
            && st["slots"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s["generation"] == 2 && s["state"] == "idle")
    });
    let st = Jobd::status_json(&sb);
    assert!(
        st["slots"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["generation"] == 1 && s["state"] == "busy"),
        "{st}"
    );
    // Never two generations of idle workers.
    assert!(
        !st["slots"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["generation"] == 1 && s["state"] == "idle"),
        "{st}"
    );
    writeln!(s, "ok").unwrap();
    let mut rest = String::new();
    s.read_to_string(&mut rest).unwrap();
    assert_eq!(rest.trim(), "finished ok");
    wait_until("all workers of generation 2", || {
        let st = Jobd::status_json(&sb);
        let slots = st["slots"].as_array().unwrap().clone();
        slots.len() == 2 && slots.iter().all(|s| s["generation"] == 2)
    });
    let after = Jobd::status_json(&sb);
    let old: Vec<_> = before["slots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["pid"].clone())
        .collect();
    assert!(
        after["slots"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| !old.contains(&s["pid"]))
    );
    j.stop_clean();
}

#[test]
fn prefork_zero_serves_one_at_a_time_in_one_process() {
    let (mut j, _sb) =
        Jobd::with_script_sb("echo \"slot=$JOBD_SLOT ppid=$PPID\"", &["--prefork", "0"]);
    for _ in 0..3 {
        let (_s, line) = j.request_line("");
        assert_eq!(field(&line, "slot"), "0");
        // The handler's parent is jobd itself: no worker process.
        assert_eq!(field(&line, "ppid"), j.pid().to_string());
    }
    j.stop_clean();
}

#[test]
fn handler_that_cannot_run_at_job_time_is_a_failed_job() {
    let dir = tempdir();
    let h = script(dir.path(), "h.sh", "echo fine");
    let hp = h.to_str().unwrap().to_string();
    let mut j = Jobd::start_in(dir, &["--prefork", "1", "--script", &hp]);
    std::fs::remove_file(&h).unwrap();
    let mut s = j.connect();
    let mut got = String::new();
    s.read_to_string(&mut got).unwrap();
    assert_eq!(got, "", "connection closed without output");
    j.wait_log(|l| l.contains("failed to start handler") && l.contains(&hp));
    j.wait_log(|l| l.contains("job ended") && l.contains("outcome=failed"));
    // The worker goes on serving once the handler is back.
    script(
        std::path::Path::new(&hp).parent().unwrap(),
        "h.sh",
        "echo fine",
    );
    let (_s, line) = j.request_line("");
    assert_eq!(line.trim(), "fine");
    assert_eq!(j.count(|l| l.contains("worker died")), 0);
    j.stop_clean();
}

#[test]
fn json_log_format() {
    let mut j = Jobd::with_script("echo hi", &["--prefork", "1", "--log-format", "json"]);
    assert_eq!(j.request_all("").trim(), "hi");
    let end = j.wait_log(|l| l.contains("job ended"));
    let v: serde_json::Value = serde_json::from_str(&end).unwrap();
    assert_eq!(v["outcome"], "done");
    assert!(v["job"].as_u64().is_some());
    assert!(v["duration_ms"].as_u64().is_some());
    j.stop_clean();
    let _ = Duration::ZERO;
}

/// Regression guard: a job lost with its worker had no access-log line and
/// no reason; it now ends `outcome=failed reason=worker-died` in both logs.
/// The access log's machine fields carry the exit code and the signal.
#[test]
fn a_job_lost_with_its_worker_is_logged_and_in_the_access_log() {
    let dir = tempdir();
    let access = dir.path().join("access.log");
    let h = script(
        dir.path(),
        "h.sh",
        "read -r l\n[ \"$l\" = quit ] && exit 3\necho \"$PPID $JOBD_JOB_ID\"\nexec sleep 300",
    );
    let mut j = Jobd::start_in(
        dir,
        &[
            "--prefork",
            "1",
            "--access-log",
            access.to_str().unwrap(),
            "--script",
            h.to_str().unwrap(),
        ],
    );
    assert_eq!(j.request_all("quit\n"), "");
    let failed = util::wait_file_line(&access, |l| l.contains("outcome=failed"));
    assert!(failed.contains("exit_code=3 signal=-"), "{failed}");
    assert!(failed.contains("reason=-"), "{failed}");
    let (_s, line) = j.request_line("go\n");
    let v: Vec<&str> = line.split_whitespace().collect();
    let (worker, job): (i32, u64) = (v[0].parse().unwrap(), v[1].parse().unwrap());
    // The handler runs before its worker logs the start: wait for it.
    j.wait_log(|l| l.contains("job started") && l.contains(&format!("job={job} ")));
    util::send(worker, "KILL");
    let end = j.wait_log(|l| l.contains("job ended") && l.contains(&format!("job={job} ")));
    assert!(
        end.contains("outcome=failed") && end.contains("reason=worker-died"),
        "{end}"
    );
    let rec = util::wait_file_line(&access, |l| l.contains(&format!(" job={job} ")));
    assert!(rec.contains("outcome=failed reason=worker-died"), "{rec}");
    assert!(rec.contains("exit_code=- signal=-"), "{rec}");
    j.stop_clean();
}
