//! Bad input: each gets a clear message naming the input and what is wrong,
//! exit status 2 (usage or configuration) or 1 (a port in use), no panic,
//! and nothing left running (every process of a run carries the run's
//! `JOBD_TEST_TAG`, as under `util::run_jobd`, and none may remain once
//! jobd has exited).
//!
//! One table, [`every_bad_input_is_refused`]: flags, values outside their
//! documented ranges, addresses, paths, permissions and the environment
//! (the user jobd runs as, its rlimits). Cases that need a user other than
//! root run as `nobody` when the tests run as root.

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::util::{self, Jobd, script, tempdir};

/// The uid and gid of `nobody`, for cases that must not run as root.
const NOBODY: u32 = 65534;

/// One bad input and what jobd must answer.
struct Case {
    args: Vec<String>,
    /// The exit status.
    code: i32,
    /// What stderr must contain: the input named, and what is wrong.
    needles: Vec<String>,
    /// Run as a user that is not root (`nobody` when the tests are root).
    non_root: bool,
    /// Shell commands run before jobd is executed (`ulimit -n 64`).
    sh: Option<&'static str>,
}

impl Case {
    fn new(args: &[&str], code: i32, needles: &[&str]) -> Case {
        Case {
            args: args.iter().map(|s| s.to_string()).collect(),
            code,
            needles: needles.iter().map(|s| s.to_string()).collect(),
            non_root: false,
            sh: None,
        }
    }

    fn non_root(mut self) -> Case {
        self.non_root = true;
        self
    }

    fn sh(mut self, sh: &'static str) -> Case {
        self.sh = Some(sh);
        self
    }

    fn describe(&self) -> String {
        format!(
            "{}{}jobd {}",
            self.sh.map(|s| format!("{s}; ")).unwrap_or_default(),
            if self.non_root && is_root() {
                "(as nobody) "
            } else {
                ""
            },
            self.args.join(" ")
        )
    }
}

/// `jobd ARGS --script /bin/cat`: refused with exit status 2, `needles` in
/// stderr. On `--listen 127.0.0.1:0` unless ARGS say otherwise: cases that
/// get as far as binding must not meet each other on the default port.
fn bad(args: &[&str], needles: &[&str]) -> Case {
    let mut a = args.to_vec();
    if !a.contains(&"--listen") {
        a.extend(["--listen", "127.0.0.1:0"]);
    }
    a.extend(["--script", "/bin/cat"]);
    Case::new(&a, 2, needles)
}

/// As [`bad`], for a value outside its documented range: the message names
/// the flag, the value and the range.
fn out_of_range(flag: &str, value: &str, range: &str) -> Case {
    bad(
        &[flag, value],
        &[&format!("{flag} {value}"), "out of range", range],
    )
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Whether `nobody` may execute the binary (not when the build directory
/// is under a home that only root may enter).
fn nobody_can_run_jobd() -> bool {
    Command::new(util::jobd_bin())
        .arg("--version")
        .uid(NOBODY)
        .gid(NOBODY)
        .current_dir("/")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|st| st.success())
}

/// Runs one case: Ok, or what was wrong.
fn run(c: &Case) -> Result<(), String> {
    let tag = util::fresh_tag();
    let mut cmd = match c.sh {
        Some(sh) => {
            let mut cmd = Command::new("/bin/sh");
            cmd.arg("-c")
                .arg(format!("{sh} && exec \"$0\" \"$@\""))
                .arg(util::jobd_bin());
            cmd
        }
        None => Command::new(util::jobd_bin()),
    };
    cmd.args(&c.args)
        .env("JOBD_TEST_TAG", &tag)
        .env_remove("JOBD_LOG")
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if c.non_root && is_root() {
        // std clears the supplementary groups when root sets a uid.
        cmd.uid(NOBODY).gid(NOBODY);
    }
    let what = c.describe();
    let child = cmd.spawn().map_err(|e| format!("{what}: spawn: {e}"))?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(util::DEADLINE) {
        Ok(out) => out.map_err(|e| format!("{what}: wait: {e}"))?,
        Err(_) => {
            util::kill_tagged(&tag);
            let _ = rx.recv_timeout(Duration::from_secs(5));
            return Err(format!(
                "{what}: still running after {:?}: it served instead of refusing (or left a \
                 process holding its stderr)",
                util::DEADLINE
            ));
        }
    };
    let err = String::from_utf8_lossy(&out.stderr);
    if !util::poll_until(Instant::now() + util::DEADLINE, || {
        util::tagged_pids(&tag).is_empty()
    }) {
        let left = util::tagged_pids(&tag);
        util::kill_tagged(&tag);
        return Err(format!(
            "{what}: processes left running: {left:?}\nstderr: {err}"
        ));
    }
    let mut wrong = Vec::new();
    if out.status.code() != Some(c.code) {
        wrong.push(format!("exit status {:?}, not {}", out.status, c.code));
    }
    for n in &c.needles {
        if !err.contains(n.as_str()) {
            wrong.push(format!("{n:?} not in stderr"));
        }
    }
    if err.contains("panicked") {
        wrong.push("it panicked".into());
    }
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(format!("{what}: {}\nstderr: {err}", wrong.join("; ")))
    }
}

/// Runs the cases, eight at a time; returns the failures.
fn run_all(cases: &[Case]) -> Vec<String> {
    let next = AtomicUsize::new(0);
    let failures = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                while let Some(c) = cases.get(next.fetch_add(1, Ordering::Relaxed)) {
                    if let Err(e) = run(c) {
                        failures.lock().unwrap().push(e);
                    }
                }
            });
        }
    });
    failures.into_inner().unwrap()
}

/// Every bad input of the table is refused with its exit status and a
/// message naming it, without a panic, and leaves nothing running.
#[test]
fn every_bad_input_is_refused() {
    let dir = tempdir();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let tmp = dir.path().to_str().unwrap().to_string();
    let plain = path("plain.txt");
    std::fs::write(&plain, "echo hi\n").unwrap();
    let small = script(dir.path(), "x.sh", "echo hi");
    let small = small.to_str().unwrap();
    let big = path("big");
    std::fs::write(&big, vec![b'z'; 8192]).unwrap();
    let link = path("link.log");
    std::os::unix::fs::symlink(path("elsewhere"), &link).unwrap();
    let fifo = path("fifo.log");
    nix::unistd::mkfifo(
        fifo.as_str(),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = busy.local_addr().unwrap().to_string();
    let u64_max = u64::MAX.to_string();

    let mut cases = vec![
        // The handler and the hook.
        Case::new(&[], 2, &["--script"]),
        Case::new(
            &["--script", "/nonexistent/handler"],
            2,
            &["script /nonexistent/handler", "no such file"],
        ),
        Case::new(&["--script", "cat"], 2, &["script cat", "no such file"]),
        Case::new(&["--script", &plain], 2, &[&plain, "not executable"]),
        Case::new(&["--script", &tmp], 2, &[&tmp, "directory"]),
        bad(
            &["--disconnect-hook", "/nonexistent/hook"],
            &["--disconnect-hook /nonexistent/hook", "no such file"],
        ),
        bad(
            &["--disconnect-hook", &plain],
            &["--disconnect-hook", "not executable"],
        ),
        // Flags and values clap refuses.
        bad(&["--bogus"], &["--bogus", "unexpected argument"]),
        Case::new(&["--script"], 2, &["--script", "a value is required"]),
        Case::new(
            &["--script", "/bin/cat", "--listen"],
            2,
            &["--listen", "a value is required"],
        ),
        bad(&["--detector", "magic"], &["--detector", "magic"]),
        bad(&["--containment", "jail"], &["--containment", "jail"]),
        bad(
            &["--worker-watch", "maybe"],
            &["--worker-watch", "maybe", "expected on or off"],
        ),
        bad(&["--on-fin", "later"], &["--on-fin", "later"]),
        bad(&["--on-disconnect", "nope"], &["--on-disconnect", "nope"]),
        bad(&["--log-format", "xml"], &["--log-format", "xml"]),
        bad(&["--daemonize"], &["--daemonize needs --pid-file"]),
        bad(
            &["--prefork", "0", "--containment", "cgroup"],
            &["--containment cgroup", "--prefork 0"],
        ),
        // Counts: clap's ranges, then the configuration's.
        bad(&["--prefork", "four"], &["--prefork", "four"]),
        bad(
            &["--prefork", "10001"],
            &["--prefork", "10001", "0..=10000"],
        ),
        bad(&["--prefork", "-3"], &["--prefork", "-3"]),
        bad(
            &["--max-children", "0"],
            &["--max-children", "0", "1..=10000"],
        ),
        bad(&["--max-children", "10001"], &["--max-children", "10001"]),
        bad(
            &["--prefork", "4", "--max-children", "2"],
            &["--max-children 2", "--prefork"],
        ),
        out_of_range("--max-requests-per-child", "1000000001", "0 to 1000000000"),
        // Issue 11: these wrapped, and workers recycled after 4 jobs.
        bad(
            &[
                "--max-requests-per-child",
                "18446744073709551610",
                "--max-requests-jitter",
                "100",
            ],
            &[
                "--max-requests-per-child 18446744073709551610",
                "out of range",
                "0 to 1000000000",
            ],
        ),
        // Issue 11: every worker panicked on a remainder by zero.
        out_of_range("--max-requests-jitter", &u64_max, "0 to 1000000000"),
        bad(
            &["--max-requests-per-child", "18446744073709551616"],
            &[
                "--max-requests-per-child",
                "18446744073709551616",
                "too large",
            ],
        ),
        bad(
            &["--max-requests-jitter", "-1"],
            &["--max-requests-jitter", "-1"],
        ),
        // Durations: unparseable, then outside their ranges.
        bad(&["--grace", "-1s"], &["--grace", "negative"]),
        bad(&["--grace", "1e9"], &["--grace", "1e9", "unknown unit"]),
        bad(
            &["--grace", "2000000000"],
            &["--grace", "2000000000", "too large"],
        ),
        bad(&["--kill-grace", "soon"], &["--kill-grace", "soon"]),
        // Issue 11: accepted, and the scan burnt a core.
        out_of_range("--check-interval", "1us", "10ms to 1h"),
        out_of_range("--check-interval", "0", "10ms to 1h"),
        out_of_range("--check-interval", "2h", "10ms to 1h"),
        out_of_range("--grace", "25h", "0 to 24h"),
        out_of_range("--kill-grace", "11m", "0 to 10m"),
        out_of_range("--fin-grace", "61s", "0 to 1m"),
        out_of_range("--keepalive", "500ms", "0 (off) or 1s to 32767s"),
        out_of_range("--keepalive", "10h", "0 (off) or 1s to 32767s"),
        out_of_range("--hook-timeout", "0", "10ms to 10m"),
        out_of_range("--hook-timeout", "1h", "10ms to 10m"),
        out_of_range("--idle-timeout", "0", "1s to 24h"),
        out_of_range("--idle-timeout", "25h", "1s to 24h"),
        // (0 is off: a job timeout of 0 cancelled every job.)
        out_of_range("--job-timeout", "1ms", "0 (off) or 100ms to 720h"),
        out_of_range("--job-timeout", "721h", "0 (off) or 100ms to 720h"),
        out_of_range("--reload-check-every", "10ms", "0 (off) or 100ms to 24h"),
        out_of_range("--reload-check-every", "25h", "0 (off) or 100ms to 24h"),
        Case::new(
            &[
                "ctl",
                "stop",
                "--pid-file",
                "/nonexistent/j.pid",
                "--timeout",
                "0",
            ],
            2,
            &["--timeout", "0", "100ms to 48h"],
        ),
        Case::new(
            &["ctl", "frobnicate", "--pid-file", "/nonexistent/j.pid"],
            2,
            &["frobnicate", "possible values"],
        ),
        // --job-limit.
        bad(&["--job-limit", "cpu=0"], &["cpu=0", "greater than zero"]),
        bad(
            &["--job-limit", "cpu=forever"],
            &["cpu=forever", "expected a duration"],
        ),
        bad(
            &["--job-limit", "color=red"],
            &["color=red", "unknown limit"],
        ),
        bad(&["--job-limit", "memory=2G"], &["memory=2G", "cgroup"]),
        bad(
            &["--job-limit", "fsize=1Z"],
            &["fsize=1Z", "expected a size"],
        ),
        bad(
            &["--job-limit", "as=4K"],
            &["--job-limit as=4K", "at least 1M"],
        ),
        bad(
            &["--job-limit", "nofile=2"],
            &["--job-limit nofile=2", "at least 4"],
        ),
        bad(
            &["--job-limit", "nproc=0"],
            &["--job-limit nproc=0", "at least 1"],
        ),
        // Above fs.nr_open, or above the hard limit: setrlimit would fail
        // at every job.
        bad(
            &["--job-limit", "nofile=99999999"],
            &["--job-limit nofile=99999999", "must be at most"],
        ),
        bad(
            &["--job-limit", "nproc=10", "--job-limit", "nproc=20"],
            &["--job-limit nproc=20", "given twice"],
        ),
        // Addresses: unparseable, unreachable, or not ours.
        bad(
            &["--listen", "localhost:http"],
            &["--listen", "localhost:http"],
        ),
        bad(
            &["--listen", "127.0.0.1:99999"],
            &["--listen", "127.0.0.1:99999"],
        ),
        bad(
            &["--listen", "224.0.0.1:7000"],
            &["--listen 224.0.0.1:7000", "multicast"],
        ),
        bad(
            &["--listen", "[ff02::1]:7000"],
            &["--listen [ff02::1]:7000", "multicast"],
        ),
        bad(
            &["--listen", "[::ffff:239.1.2.3]:7000"],
            &["--listen [::ffff:239.1.2.3]:7000", "multicast"],
        ),
        bad(
            &["--listen", "255.255.255.255:7000"],
            &["--listen 255.255.255.255:7000", "broadcast"],
        ),
        bad(
            &["--listen", "[fe80::1]:7000"],
            &["--listen [fe80::1]:7000", "scope"],
        ),
        bad(
            &["--listen", "[fe80::1%2147483647]:7000"],
            &["--listen [fe80::1%2147483647]:7000", "no interface"],
        ),
        // TEST-NET-1 and -2 (RFC 5737) and 2001:db8:: (RFC 3849): no
        // interface has them.
        bad(
            &["--listen", "192.0.2.1:7000"],
            &["failed to listen on 192.0.2.1:7000", "Cannot assign"],
        ),
        bad(
            &["--listen", "198.51.100.7:7000"],
            &["failed to listen on 198.51.100.7:7000"],
        ),
        bad(
            &["--listen", "[2001:db8::1]:7000"],
            &["failed to listen on [2001:db8::1]:7000"],
        ),
        // Another process holds it: a runtime failure, exit 1.
        Case::new(
            &["--listen", &busy, "--script", "/bin/cat"],
            1,
            &[&format!("failed to listen on {busy}"), "in use"],
        ),
        // Files jobd writes.
        bad(
            &["--scoreboard", "/nonexistent-dir/jobd.sb"],
            &["/nonexistent-dir/jobd.sb", "does not exist"],
        ),
        bad(
            &["--scoreboard", "/dev/null"],
            &["scoreboard /dev/null", "not a regular file"],
        ),
        bad(
            &["--scoreboard", "/proc/x"],
            &["scoreboard /proc/x", "failed to create"],
        ),
        bad(&["--scoreboard", &tmp], &[&tmp, "directory"]),
        bad(
            &["--access-log", "/proc/jobd.log"],
            &["--access-log /proc/jobd.log", "failed to open"],
        ),
        bad(
            &["--error-log", "/proc/jobd.log"],
            &["--error-log /proc/jobd.log", "failed to open"],
        ),
        bad(
            &["--pid-file", "/proc/jobd.pid"],
            &["pid file /proc/jobd.pid", "failed to open"],
        ),
        bad(
            &["--pid-file", "/nonexistent-dir/j.pid"],
            &["--pid-file /nonexistent-dir/j.pid", "does not exist"],
        ),
        bad(&["--access-log", &link], &[&link, "symbolic link"]),
        bad(&["--error-log", &fifo], &[&fifo, "FIFO"]),
        // jobd status.
        Case::new(
            &["status", "--scoreboard", "/nonexistent/jobd.sb"],
            2,
            &["/nonexistent/jobd.sb"],
        ),
        Case::new(
            &["status", "--scoreboard", small],
            2,
            &["not a jobd scoreboard"],
        ),
        Case::new(
            &["status", "--scoreboard", &big],
            2,
            &["not a jobd scoreboard"],
        ),
        // The environment: the user, its rights and its rlimits.
        bad(&["--require-root"], &["--require-root", "not as root"]).non_root(),
        bad(&["--user", "nobody"], &["--user needs root"]).non_root(),
        bad(
            &["--access-log", "/etc/jobd-bad-input.log"],
            &["--access-log /etc/jobd-bad-input.log", "Permission denied"],
        )
        .non_root(),
        // A relative path, from a directory jobd cannot write (/).
        bad(
            &["--scoreboard", "jobd.sb"],
            &["scoreboard jobd.sb", "Permission denied"],
        )
        .non_root(),
        bad(
            &["--job-limit", "nofile=100"],
            &["--job-limit nofile=100", "at most 64", "hard limit"],
        )
        .non_root()
        .sh("ulimit -n 64"),
        bad(
            &["--job-limit", "cpu=100s"],
            &["--job-limit cpu=100s", "at most 49s", "hard limit"],
        )
        .non_root()
        .sh("ulimit -t 50"),
    ];
    let unprivileged_from: u32 =
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(1024);
    if unprivileged_from > 80 {
        cases.push(
            bad(
                &["--listen", "127.0.0.1:80"],
                &["failed to listen on 127.0.0.1:80", "Permission denied"],
            )
            .non_root(),
        );
    } else {
        eprintln!("skipped: a privileged port (ip_unprivileged_port_start is {unprivileged_from})");
    }
    if is_root() {
        cases.push(bad(
            &["--user", "no-such-user-xyz"],
            &["--user no-such-user-xyz", "no such user"],
        ));
        // nobody cannot create cgroups under root's.
        cases.push(
            bad(
                &["--containment", "cgroup"],
                &["--containment cgroup", "cannot"],
            )
            .non_root(),
        );
    } else {
        eprintln!(
            "skipped: --user with an unknown name, and --containment cgroup as nobody (need root)"
        );
    }
    if is_root() && !nobody_can_run_jobd() {
        eprintln!(
            "skipped: the cases as nobody (nobody cannot execute {})",
            util::jobd_bin()
        );
        cases.retain(|c| !c.non_root);
    }
    assert!(cases.len() >= 30, "{} cases", cases.len());
    let failures = run_all(&cases);
    assert!(
        failures.is_empty(),
        "{} of {} bad inputs were not refused as they should be:\n\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n\n")
    );
}

/// Issue 11: `--max-requests-per-child` near u64::MAX plus the jitter
/// wrapped, and workers recycled after 4 jobs. Such values are refused
/// now (above); at the top of both ranges the sum cannot wrap, and one
/// worker serves job after job without recycling.
#[test]
fn max_requests_at_the_top_of_their_ranges_do_not_wrap() {
    let mut j = Jobd::with_script(
        "echo $PPID",
        &[
            "--prefork",
            "1",
            "--max-children",
            "1",
            "--max-requests-per-child",
            "1000000000",
            "--max-requests-jitter",
            "1000000000",
        ],
    );
    let workers: Vec<String> = (0..8)
        .map(|_| j.request_all("").trim().to_string())
        .collect();
    assert!(
        workers.iter().all(|w| !w.is_empty() && *w == workers[0]),
        "jobs ran on {workers:?}; log:\n{}",
        j.dump()
    );
    j.wait_log_n(8, &|l| l.contains("job ended"));
    assert_eq!(
        j.count(|l| l.contains("recycled") || l.contains("panicked")),
        0,
        "{}",
        j.dump()
    );
    j.stop_clean();
}
