//! Cancellation accuracy with clients that behave as real ones do: a
//! client that closes as soon as it has its delimited answer is never
//! cancelled; a silent or streaming job abandoned is; half-close has one
//! documented outcome per policy and order; the cancel ladder; and the
//! access log, the job-end lines and the status totals agree.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::Shutdown;

use crate::util::{self, Jobd, alive, reset, wait_until};

/// Runs `n` clients, `conc` at a time, each reading the answer up to its
/// `END` line and closing at once; returns the job ids the handler printed.
fn answered_clients(j: &Jobd, n: usize, conc: usize) -> Vec<u64> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let ids = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|sc| {
        for _ in 0..conc {
            sc.spawn(|| {
                while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < n {
                    let s = j.connect();
                    let mut r = BufReader::new(s);
                    let mut id = None;
                    loop {
                        let mut line = String::new();
                        assert!(r.read_line(&mut line).unwrap() > 0, "answer cut short");
                        if line.trim() == "END" {
                            break;
                        }
                        id = line.trim().strip_prefix("job ").map(|v| v.parse().unwrap());
                    }
                    ids.lock().unwrap().push(id.expect("a job line"));
                    // Dropping `r` closes the connection: a FIN right after
                    // the answer, while the handler still works.
                }
            });
        }
    });
    ids.into_inner().unwrap()
}

/// Regression guard (issue 9): a client that knows where the answer ends
/// closes at once, while the handler still cleans up; that job is done,
/// not cancelled, 200 times out of 200, for 50 ms and 150 ms of cleanup.
#[test]
fn a_client_that_closes_after_its_answer_never_cancels_the_job() {
    for cleanup in ["0.05", "0.15"] {
        let (mut j, sb) = Jobd::with_script_sb(
            &format!("echo \"job $JOBD_JOB_ID\"\necho END\nsleep {cleanup}\nexit 0"),
            &["--prefork", "8"],
        );
        let ids = answered_clients(&j, 200, 8);
        assert_eq!(ids.len(), 200);
        let ends = j.wait_log_n(200, &|l| l.contains("job ended"));
        let done = ends.iter().filter(|l| l.contains("outcome=done")).count();
        assert_eq!(done, 200, "cleanup {cleanup}: {}", j.dump());
        assert_eq!(j.count(|l| l.contains("job cancelled")), 0, "{}", j.dump());
        assert!(
            ends.iter().any(|l| l.contains("client_closed_after_ms=")),
            "a done job whose client closed first says when"
        );
        let st = Jobd::status_json(&sb);
        assert_eq!(st["totals"]["cancelled_disconnect"], 0);
        j.stop_clean();
    }
}

/// A silent job (nothing sent yet) is cancelled at once on a FIN and on a
/// reset, and the cancel line says the client had received nothing.
#[test]
fn a_silent_job_is_cancelled_on_fin_and_on_reset() {
    let dir = util::tempdir();
    let pids = dir.path().to_path_buf();
    let h = util::script(
        dir.path(),
        "h.sh",
        &format!(
            "echo $$ > {}/$TCPREMOTEPORT.pid\nexec sleep 300",
            pids.display()
        ),
    );
    let mut j = Jobd::start_in(dir, &["--prefork", "2", "--script", h.to_str().unwrap()]);
    for rst in [false, true] {
        let s = j.connect();
        let port = s.local_addr().unwrap().port();
        let file = pids.join(format!("{port}.pid"));
        let mut pid = 0;
        wait_until("the handler's pid file", || {
            pid = std::fs::read_to_string(&file)
                .ok()
                .and_then(|t| t.trim().parse().ok())
                .unwrap_or(0);
            pid > 0
        });
        if rst {
            reset(s)
        } else {
            drop(s)
        }
        wait_until("silent job gone", || !alive(pid));
        let want = if rst {
            "reason=client-reset"
        } else {
            "reason=client-closed"
        };
        let line = j.wait_log(|l| l.contains("job cancelled") && l.contains(want));
        assert!(line.contains("bytes_sent=0"), "{line}");
    }
    j.stop_clean();
}

/// A streaming job (a line every 100 ms) whose client closes mid-stream is
/// cancelled: its next write meets the client's reset, or the FIN grace
/// runs out.
#[test]
fn a_streaming_job_abandoned_mid_stream_is_cancelled() {
    let mut j = Jobd::with_script(
        "echo \"$$\"\nwhile :; do echo tick; sleep 0.1; done",
        &["--prefork", "1"],
    );
    let s = j.connect();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let pid: i32 = line.trim().parse().unwrap();
    for _ in 0..3 {
        line.clear();
        r.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "tick");
    }
    drop(r);
    wait_until("streaming job gone", || !alive(pid));
    let c = j.wait_log(|l| l.contains("job cancelled"));
    assert!(c.contains("reason=client-"), "{c}");
    j.wait_log(|l| l.contains("job ended") && l.contains("outcome=cancelled"));
    assert_eq!(j.count(|l| l.contains("outcome=done")), 0);
    j.stop_clean();
}

const HALF: &str = "IFS= read -r x\necho \"answer $x\"";

/// Half-close before the job starts (the client waits in the backlog while
/// the only worker is busy), for each policy: under `cancel` the client is
/// refused, every time, with a log line naming `--on-fin keep`; under
/// `keep` it gets its answer, every time.
#[test]
fn half_close_before_start_has_one_outcome_per_policy() {
    for keep in [false, true] {
        let body = format!("[ \"$JOBD_JOB_ID\" = 1 ] && exec sleep 300\n{HALF}");
        let args: &[&str] = if keep {
            &["--prefork", "1", "--max-children", "1", "--on-fin", "keep"]
        } else {
            &["--prefork", "1", "--max-children", "1"]
        };
        let mut j = Jobd::with_script(&body, args);
        let blocker = j.connect();
        j.wait_log(|l| l.contains("job started") && l.contains("job=1 "));
        let mut clients = Vec::new();
        for i in 0..20 {
            let mut s = j.connect();
            writeln!(s, "q{i}").unwrap();
            s.shutdown(Shutdown::Write).unwrap();
            clients.push(s);
        }
        util::reset(blocker);
        for (i, mut s) in clients.into_iter().enumerate() {
            let mut got = String::new();
            let _ = s.read_to_string(&mut got);
            if keep {
                assert_eq!(got.trim(), format!("answer q{i}"));
            } else {
                assert_eq!(got, "", "refused, not half-served");
            }
        }
        if keep {
            j.wait_log_n(20, &|l| l.contains("client half-closed; job kept"));
        } else {
            let refused = j.wait_log_n(20, &|l| l.contains("client gone before job start"));
            assert!(
                refused.iter().all(|l| l.contains("--on-fin keep")),
                "{refused:?}"
            );
        }
        j.stop_clean();
    }
}

/// Half-close after the job started, for each policy: under `cancel` the
/// job is cancelled (the client gets nothing), every time; under `keep` it
/// answers, every time.
#[test]
fn half_close_after_start_has_one_outcome_per_policy() {
    for keep in [false, true] {
        let body = format!("sleep 0.3\n{HALF}");
        let args: &[&str] = if keep {
            &["--prefork", "2", "--on-fin", "keep"]
        } else {
            &["--prefork", "2"]
        };
        let mut j = Jobd::with_script(&body, args);
        for i in 0..10 {
            let mut s = j.connect();
            let peer = format!("peer={}", s.local_addr().unwrap());
            j.wait_log(|l| l.contains("job started") && l.contains(&peer));
            writeln!(s, "q{i}").unwrap();
            s.shutdown(Shutdown::Write).unwrap();
            let mut got = String::new();
            let _ = s.read_to_string(&mut got);
            if keep {
                assert_eq!(got.trim(), format!("answer q{i}"));
            } else {
                assert_eq!(got, "");
            }
        }
        let want = if keep {
            "outcome=done"
        } else {
            "outcome=cancelled"
        };
        j.wait_log_n(10, &|l| l.contains("job ended") && l.contains(want));
        j.stop_clean();
    }
}

/// The cancel ladder: a handler that ignores SIGTERM lives for the kill
/// grace and is SIGKILLed; one that writes to its client dies of the
/// connection being shut down first, well before the kill grace.
#[test]
fn the_cancel_ladder_shuts_the_connection_then_kills() {
    let mut j = Jobd::with_script(
        "trap '' TERM\necho \"$$\"\nif [ \"$JOBD_JOB_ID\" = 1 ]; then exec sleep 300; fi\nsleep 0.5\nwhile echo tick; do sleep 0.05; done",
        &["--prefork", "1", "--kill-grace", "3s"],
    );
    // Job 1 ignores SIGTERM and does no I/O: only SIGKILL ends it.
    let (s, line) = j.request_line("");
    let pid: i32 = line.trim().parse().unwrap();
    reset(s);
    wait_until("the stubborn job gone", || !alive(pid));
    let end = j.wait_log(|l| l.contains("job ended") && l.contains("job=1 "));
    assert!(end.contains("status=\"signal SIGKILL\""), "{end}");
    // Job 2 ignores SIGTERM too, but writes: the shutdown ends it (EPIPE).
    let (s, line) = j.request_line("");
    let _pid: i32 = line.trim().parse().unwrap();
    j.wait_log(|l| l.contains("job started") && l.contains("job=2 "));
    drop(s);
    let end = j.wait_log(|l| l.contains("job ended") && l.contains("job=2 "));
    assert!(end.contains("outcome=cancelled"), "{end}");
    assert!(
        !end.contains("SIGKILL"),
        "the shutdown, not SIGKILL, ended it: {end}"
    );
    j.stop_clean();
}

/// For a scripted sequence of jobs (done, failed, FIN, reset, timeout),
/// the access log, the job-end lines and the status totals agree exactly.
#[test]
fn access_log_job_end_lines_and_status_totals_agree() {
    let dir = util::tempdir();
    let access = dir.path().join("access.log");
    let sbp = dir.path().join("sb");
    let h = util::script(
        dir.path(),
        "h.sh",
        "IFS= read -r what\ncase $what in\n done) echo ok ;;\n fail) exit 3 ;;\n *) echo \"$$\"; exec sleep 300 ;;\nesac",
    );
    let mut j = Jobd::start_in(
        dir,
        &[
            "--prefork",
            "2",
            "--job-timeout",
            "2s",
            "--access-log",
            access.to_str().unwrap(),
            "--scoreboard",
            sbp.to_str().unwrap(),
            "--script",
            h.to_str().unwrap(),
        ],
    );
    assert_eq!(j.request_all("done\n").trim(), "ok");
    assert_eq!(j.request_all("fail\n"), "");
    let (s, _) = j.request_line("fin\n");
    drop(s);
    let (s, _) = j.request_line("rst\n");
    reset(s);
    let (_hold, _) = j.request_line("slow\n");
    let ends = j.wait_log_n(5, &|l| l.contains("job ended"));
    let lines = util::wait_file_lines(&access, 5);
    let outcome = |l: &str| (util::field(l, "outcome"), util::field(l, "reason"));
    let mut from_log: Vec<_> = ends.iter().map(|l| outcome(l)).collect();
    let mut from_access: Vec<_> = lines.iter().map(|l| outcome(l)).collect();
    from_log.sort();
    from_access.sort();
    assert_eq!(from_log, from_access);
    let want: Vec<(String, String)> = [
        ("cancelled", "client-closed"),
        ("cancelled", "client-reset"),
        ("done", "-"),
        ("failed", "-"),
        ("timeout", "timeout"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(from_log, want);
    let t = &Jobd::status_json(&sbp)["totals"];
    assert_eq!(t["jobs_served"], 5);
    assert_eq!(t["jobs_failed"], 1);
    assert_eq!(t["cancelled_disconnect"], 2);
    assert_eq!(t["cancelled_client_closed"], 1);
    assert_eq!(t["cancelled_client_reset"], 1);
    assert_eq!(t["timeouts"], 1);
    // The CPU totals are the sum of the jobs' records.
    let cpu = |k: &str| -> u64 {
        lines
            .iter()
            .map(|l| util::field(l, k).parse::<u64>().unwrap())
            .sum()
    };
    assert_eq!(t["cpu_user_ms"], cpu("cpu_user_ms"));
    assert_eq!(t["cpu_sys_ms"], cpu("cpu_sys_ms"));
    // The same sequence in OpenMetrics, read by a real parser (the
    // Python prometheus_client's, installed by .ci/run).
    let om = std::process::Command::new(util::jobd_bin())
        .args([
            "status",
            "--format",
            "openmetrics",
            "--scoreboard",
            sbp.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(om.status.success());
    let parse = std::process::Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(concat!(
            "import sys\n",
            "from prometheus_client.openmetrics.parser import text_string_to_metric_families as p\n",
            "for f in p(sys.stdin.read()):\n",
            "  for s in f.samples:\n",
            "    print(s.name, ','.join(f'{k}={v}' for k, v in sorted(s.labels.items())), s.value)\n",
        ))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("/usr/bin/python3 with python3-prometheus-client (.ci/run installs it)");
    let mut parse = parse;
    std::io::Write::write_all(parse.stdin.as_mut().unwrap(), &om.stdout).unwrap();
    let parsed = parse.wait_with_output().unwrap();
    let samples = String::from_utf8_lossy(&parsed.stdout);
    assert!(
        parsed.status.success(),
        "the OpenMetrics parser refused:\n{}\n{}",
        String::from_utf8_lossy(&parsed.stderr),
        String::from_utf8_lossy(&om.stdout)
    );
    for want in [
        "jobd_jobs_ended_total  5",
        "jobd_jobs_failed_total  1",
        "jobd_jobs_cancelled_total reason=client-closed 1",
        "jobd_jobs_cancelled_total reason=client-reset 1",
        "jobd_jobs_cancelled_total reason=timeout 1",
        "jobd_jobs_cancelled_total reason=shutdown 0",
        "jobd_up  1",
        // One done, one failed, three cancelled (FIN, reset, and the
        // timeout, which ran 2 s: the only one above 1 s).
        "jobd_job_duration_seconds_count outcome=done 1",
        "jobd_job_duration_seconds_count outcome=failed 1",
        "jobd_job_duration_seconds_count outcome=cancelled 3",
        "jobd_job_duration_seconds_bucket le=+Inf,outcome=cancelled 3",
        "jobd_job_duration_seconds_bucket le=1.0,outcome=cancelled 2",
    ] {
        assert!(
            samples.lines().any(|l| l == want),
            "{want:?} not in:\n{samples}"
        );
    }
    // One cancel line per cancelled job, each before its job's end line.
    let logs = j.logs();
    for job in 1..=5u64 {
        let tag = format!("job={job} ");
        let c = logs
            .iter()
            .position(|l| l.contains("job cancelled") && l.contains(&tag));
        let e = logs
            .iter()
            .position(|l| l.contains("job ended") && l.contains(&tag));
        if let Some(c) = c {
            assert!(c < e.unwrap(), "job {job}: cancel line after end line");
        }
    }
    assert_eq!(j.count(|l| l.contains("job cancelled")), 3);
    j.stop_clean();
}

/// `examples/http-1.0.sh` with an HTTP/1.0 client that reads exactly
/// Content-Length bytes and closes (as curl does): 50 of 50 done.
#[test]
fn the_http_example_is_done_for_a_client_that_closes_after_the_body() {
    let h = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/http-1.0.sh");
    let mut j = Jobd::start_in(
        util::tempdir(),
        &["--prefork", "4", "--script", h.to_str().unwrap()],
    );
    for _ in 0..50 {
        let mut s = j.connect();
        s.write_all(b"GET /x HTTP/1.0\r\nHost: t\r\n\r\n").unwrap();
        let mut r = BufReader::new(s);
        let mut len = 0;
        loop {
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            if let Some(v) = line.strip_prefix("Content-Length: ") {
                len = v.trim().parse().unwrap();
            }
            if line == "\r\n" {
                break;
            }
        }
        let mut body = vec![0; len];
        r.read_exact(&mut body).unwrap();
        assert!(
            String::from_utf8(body)
                .unwrap()
                .starts_with("hello from job")
        );
    }
    j.wait_log_n(50, &|l| {
        l.contains("job ended") && l.contains("outcome=done")
    });
    assert_eq!(j.count(|l| l.contains("job cancelled")), 0, "{}", j.dump());
    j.stop_clean();
}
