//! The daemon lifecycle through the real binary: `--daemonize` with a pid
//! file and logs, the pid file's lock (a second jobd refused, a stale file
//! taken over, removal on a clean stop), log reopening on SIGUSR1,
//! `--user`, and the bad combinations of these flags.

use std::os::unix::fs::PermissionsExt;

use crate::util::{
    self, Daemon, Jobd, alive, field, run_jobd, run_tagged, script, tempdir, wait_file_line,
    wait_until,
};

#[test]
fn daemonize_with_pid_file_and_logs() {
    let dir = tempdir();
    script(dir.path(), "h.sh", "echo hi\necho handler-stderr >&2");
    // Relative paths everywhere: the daemon runs in / and must still find
    // its script, scoreboard, pid file and logs.
    let d = Daemon::start(
        dir,
        &["--prefork", "2", "--scoreboard", "sb", "--script", "h.sh"],
    );
    assert!(alive(d.pid));
    assert_eq!(
        std::fs::read_link(format!("/proc/{}/cwd", d.pid)).unwrap(),
        std::path::Path::new("/")
    );
    assert_eq!(
        std::fs::read_link(format!("/proc/{}/fd/0", d.pid)).unwrap(),
        std::path::Path::new("/dev/null")
    );
    // Not a session leader (double fork), in a session of its own.
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", d.pid)).unwrap();
    let f: Vec<&str> = stat
        .rsplit_once(") ")
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let sid: i32 = f[3].parse().unwrap();
    assert_ne!(sid, d.pid, "the daemon must not be a session leader");
    assert_ne!(sid, nix::unistd::getsid(None).unwrap().as_raw());
    assert!(d.error_log_text().contains("listening on 127.0.0.1:"));
    assert_eq!(d.request_all("").trim(), "hi");
    let line = wait_file_line(&d.access_log(), |l| l.contains(" job="));
    assert!(field(&line, "time").ends_with('Z'), "{line}");
    assert_eq!(
        field(&line, "time").len(),
        "2026-01-01T00:00:00.000Z".len(),
        "{line}"
    );
    assert!(field(&line, "job").parse::<u64>().unwrap() >= 1);
    assert!(field(&line, "slot").parse::<u32>().unwrap() < 2);
    assert!(field(&line, "pid").parse::<i32>().unwrap() > 0);
    assert!(field(&line, "peer").starts_with("127.0.0.1:"), "{line}");
    field(&line, "duration_ms").parse::<u64>().unwrap();
    assert_eq!(field(&line, "outcome"), "done");
    assert_eq!(field(&line, "status"), "exit 0");
    // The handler's stderr goes to the error log too.
    wait_file_line(&d.error_log(), |l| l == "handler-stderr");
    // The scoreboard names the daemon, not the foreground process.
    let st = Jobd::status_json(&d.path("sb"));
    assert_eq!(st["supervisor_pid"], d.pid);
    d.stop();
    assert!(!d.pid_file().exists(), "pid file removed on a clean stop");
    assert_eq!(
        std::fs::read_to_string(d.access_log())
            .unwrap()
            .lines()
            .count(),
        1
    );
}

#[test]
fn daemonize_json_logs() {
    let dir = tempdir();
    script(dir.path(), "h.sh", "echo hi");
    let d = Daemon::start(
        dir,
        &["--prefork", "1", "--log-format", "json", "--script", "h.sh"],
    );
    let listening = wait_file_line(&d.error_log(), |l| l.contains("listening on"));
    let v: serde_json::Value = serde_json::from_str(&listening).unwrap();
    assert_eq!(v["pid"], d.pid);
    assert_eq!(d.request_all("").trim(), "hi");
    let line = wait_file_line(&d.access_log(), |l| !l.is_empty());
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert!(v["time"].as_str().unwrap().ends_with('Z'), "{line}");
    assert!(v["job"].as_u64().unwrap() >= 1);
    assert_eq!(v["slot"], 0);
    assert!(v["pid"].as_u64().unwrap() > 0);
    assert!(v["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(v["duration_ms"].as_u64().is_some());
    assert_eq!(v["outcome"], "done");
    assert_eq!(v["status"], "exit 0");
    d.stop();
}

#[test]
fn second_instance_with_the_same_pid_file_is_refused() {
    let dir = tempdir();
    let h = script(dir.path(), "h.sh", "echo hi");
    let d = Daemon::start(dir, &["--prefork", "1", "--script", "h.sh"]);
    let pid_file = d.pid_file();
    let needle = format!("already running (pid {})", d.pid);
    // In the foreground: refused before binding.
    let (st, _, err) = run_jobd(&[
        "--listen",
        "127.0.0.1:0",
        "--pid-file",
        pid_file.to_str().unwrap(),
        "--script",
        h.to_str().unwrap(),
    ]);
    assert_eq!(st.code(), Some(1), "{err}");
    assert!(err.contains(&needle), "{err}");
    // As a daemon: refused by the foreground process, nothing detached.
    let args = Daemon::args(&["--script", "h.sh"]);
    let tag = util::fresh_tag();
    let (st, _, err) = run_tagged(d.dir.path(), &tag, &args);
    assert_eq!(st.code(), Some(1), "{err}");
    assert!(err.contains(&needle), "{err}");
    util::wait_gone(&tag);
    // The running daemon and its pid file are untouched.
    assert!(alive(d.pid));
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap().trim(),
        d.pid.to_string()
    );
    assert_eq!(d.request_all("").trim(), "hi");
    d.stop();
}

#[test]
fn stale_pid_file_is_taken_over_with_a_warning() {
    let dir = tempdir();
    script(dir.path(), "h.sh", "echo hi");
    // A pid that is dead: a child of ours, reaped.
    let mut c = std::process::Command::new("true").spawn().unwrap();
    let dead = c.id() as i32;
    c.wait().unwrap();
    std::fs::write(dir.path().join("jobd.pid"), format!("{dead}\n")).unwrap();
    let args = Daemon::args(&["--prefork", "1", "--script", "h.sh"]);
    let tag = util::fresh_tag();
    let (st, _, err) = run_tagged(dir.path(), &tag, &args);
    let pid_file = dir.path().join("jobd.pid");
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap_or_default()
        .trim()
        .parse()
        .unwrap_or(0);
    let mut d = Daemon {
        dir,
        tag,
        pid,
        addr: "0.0.0.0:0".parse().unwrap(),
        args,
    };
    assert!(st.success(), "{err}");
    assert!(
        err.contains("stale") && err.contains(&format!("old_pid={dead}")),
        "{err}"
    );
    assert_ne!(pid, dead);
    d.refresh();
    assert!(alive(d.pid));
    assert_eq!(d.request_all("").trim(), "hi");
    d.stop();
}

#[test]
fn sigusr1_reopens_the_logs() {
    let dir = tempdir();
    script(dir.path(), "h.sh", "echo hi");
    let d = Daemon::start(dir, &["--prefork", "1", "--script", "h.sh"]);
    assert_eq!(d.request_all("").trim(), "hi");
    wait_file_line(&d.access_log(), |l| l.contains("outcome=done"));
    // logrotate: move the files away, then SIGUSR1.
    std::fs::rename(d.error_log(), d.path("error.log.1")).unwrap();
    std::fs::rename(d.access_log(), d.path("access.log.1")).unwrap();
    util::send(d.pid, "USR1");
    // The supervisor writes to the new error log at once.
    wait_file_line(&d.error_log(), |l| l.contains("logs reopened"));
    // The workers reopen too (the supervisor passes SIGUSR1 on): once no
    // process of the daemon has a rotated file open, the next job's access
    // line and its worker's log lines go to the new files.
    wait_until("every process of the daemon to reopen its logs", || {
        util::tagged_pids(&d.tag).iter().all(|p| {
            std::fs::read_dir(format!("/proc/{p}/fd"))
                .map(|rd| {
                    rd.flatten().all(|e| {
                        std::fs::read_link(e.path())
                            .map(|t| !t.to_string_lossy().ends_with(".log.1"))
                            .unwrap_or(true)
                    })
                })
                .unwrap_or(true)
        })
    });
    assert_eq!(d.request_all("").trim(), "hi");
    let line = wait_file_line(&d.access_log(), |l| l.contains("outcome=done"));
    assert!(line.contains(" job="), "{line}");
    wait_file_line(&d.error_log(), |l| l.contains("job ended"));
    let old = std::fs::read_to_string(d.path("access.log.1")).unwrap();
    assert_eq!(old.lines().count(), 1, "{old}");
    d.stop();
}

/// `--user nobody`: handlers run as nobody (no supplementary groups, HOME,
/// USER and LOGNAME of nobody), while jobd itself stays root. A hostile
/// handler can reach nothing of jobd: it cannot signal its worker or the
/// supervisor, read their descriptors in /proc, or take the listening
/// socket with pidfd_getfd. Cancellation still works.
#[test]
fn user_nobody_runs_handlers_as_nobody_who_cannot_reach_jobd() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!(
            "skipped: --user needs root, and this test runs as uid {}",
            nix::unistd::geteuid()
        );
        return;
    }
    let Ok(Some(nobody)) = nix::unistd::User::from_name("nobody") else {
        eprintln!("skipped: this system has no user nobody");
        return;
    };
    let dir = tempdir();
    // The handler must be reachable by nobody.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let py = std::path::Path::new("/usr/bin/python3").exists();
    script(
        dir.path(),
        "h.sh",
        concat!(
            "IFS= read -r x\n",
            "if [ \"$x\" = slow ]; then echo started; exec sleep 300; fi\n",
            "echo \"uid=$(id -u) gid=$(id -g) groups=$(id -G) home=$HOME user=$USER logname=$LOGNAME\"\n",
            "sup=$(awk '{print $4}' /proc/$PPID/stat)\n",
            "kill -0 $PPID 2>/dev/null && echo \"signal-worker=yes\" || echo \"signal-worker=no\"\n",
            "kill -0 $sup 2>/dev/null && echo \"signal-supervisor=yes\" || echo \"signal-supervisor=no\"\n",
            "ls /proc/$PPID/fd >/dev/null 2>&1 && echo \"worker-fds=yes\" || echo \"worker-fds=no\"\n",
            "if [ -x /usr/bin/python3 ]; then\n",
            "  /usr/bin/python3 -c 'import os,sys,ctypes\nlibc=ctypes.CDLL(None)\nok=False\ntry:\n  fd=os.pidfd_open(int(sys.argv[1]))\n  ok=any(libc.syscall(438,fd,n,0)>=0 for n in range(64))\nexcept OSError: pass\nprint(\"getfd=yes\" if ok else \"getfd=no\")' $PPID\n",
            "fi\n",
        ),
    );
    let h = dir.path().join("h.sh");
    let sb = dir.path().join("sb");
    let mut j = Jobd::start_in(
        dir,
        &[
            "--user",
            "nobody",
            "--prefork",
            "1",
            "--scoreboard",
            sb.to_str().unwrap(),
            "--script",
            h.to_str().unwrap(),
        ],
    );
    let out = j.request_all("who\n");
    let uid = nobody.uid.as_raw();
    let gid = nobody.gid.as_raw();
    let mut lines = out.lines();
    assert_eq!(
        lines.next().unwrap(),
        format!(
            "uid={uid} gid={gid} groups={gid} home={} user=nobody logname=nobody",
            nobody.dir.display()
        )
    );
    assert_eq!(lines.next(), Some("signal-worker=no"), "{out}");
    assert_eq!(lines.next(), Some("signal-supervisor=no"), "{out}");
    assert_eq!(lines.next(), Some("worker-fds=no"), "{out}");
    if py {
        assert_eq!(lines.next(), Some("getfd=no"), "{out}");
    }
    // jobd itself keeps root.
    let status = std::fs::read_to_string(format!("/proc/{}/status", j.pid())).unwrap();
    let uids = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(uids.split_whitespace().skip(1).all(|u| u == "0"), "{uids}");
    // Disconnect detection still works.
    let (s, line) = j.request_line("slow\n");
    assert_eq!(line.trim(), "started");
    drop(s);
    j.wait_log(|l| l.contains("job cancelled"));
    j.stop_clean();
}

#[test]
fn bad_combinations_exit_2_with_a_clear_message() {
    let expect = |args: &[&str], needles: &[&str]| {
        let (st, out, err) = run_jobd(args);
        assert_eq!(st.code(), Some(2), "jobd {args:?}: {st:?}\n{out}\n{err}");
        for n in needles {
            assert!(err.contains(n), "jobd {args:?}: {n:?} not in {err}");
        }
        assert!(!err.contains("panicked"), "{err}");
    };
    let dir = tempdir();
    let p = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    let (pid, el, al) = (p("j.pid"), p("e.log"), p("a.log"));
    let base = ["--script", "/bin/cat", "--listen", "127.0.0.1:0"];
    let with = |extra: &[&str]| -> Vec<String> {
        base.iter().chain(extra).map(|s| s.to_string()).collect()
    };
    let run = |extra: &[&str], needles: &[&str]| {
        let v = with(extra);
        let refs: Vec<&str> = v.iter().map(String::as_str).collect();
        expect(&refs, needles);
    };
    run(
        &["--daemonize", "--error-log", &el, "--access-log", &al],
        &["--daemonize", "--pid-file"],
    );
    run(
        &["--daemonize", "--pid-file", &pid, "--access-log", &al],
        &["--daemonize", "--error-log"],
    );
    run(
        &["--daemonize", "--pid-file", &pid, "--error-log", &el],
        &["--daemonize", "--access-log"],
    );
    run(
        &["--prefork", "4", "--max-children", "2"],
        &["--max-children", "2", "--prefork"],
    );
    run(&["--grace", "-1s"], &["--grace", "negative"]);
    run(&["--kill-grace", "-5"], &["--kill-grace"]);
    run(
        &["--pid-file", "/nonexistent-dir/j.pid"],
        &["--pid-file", "/nonexistent-dir"],
    );
    run(
        &["--error-log", "/nonexistent-dir/e.log"],
        &["--error-log", "/nonexistent-dir"],
    );
    assert!(!std::path::Path::new(&pid).exists());
}

#[test]
fn pid_file_that_is_a_symlink_is_refused() {
    let dir = tempdir();
    let target = dir.path().join("elsewhere");
    std::fs::write(&target, "").unwrap();
    let link = dir.path().join("j.pid");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let (st, _, err) = run_jobd(&[
        "--listen",
        "127.0.0.1:0",
        "--pid-file",
        link.to_str().unwrap(),
        "--script",
        "/bin/cat",
    ]);
    // A path jobd refuses is a configuration error.
    assert_eq!(st.code(), Some(2), "{err}");
    assert!(
        err.contains("symbolic link") && err.contains(link.to_str().unwrap()),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "");
}

#[test]
fn daemon_whose_port_is_taken_fails_in_the_foreground() {
    // Bind fails before the detach: exit 1 with the message on the
    // terminal, no pid file left, nothing left running.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().to_string();
    let dir = tempdir();
    script(dir.path(), "h.sh", "echo hi");
    let tag = util::fresh_tag();
    let mut args = Daemon::args(&["--script", "h.sh"]);
    let i = args.iter().position(|a| a == "127.0.0.1:0").unwrap();
    args[i] = port.clone();
    let (st, _, err) = run_tagged(dir.path(), &tag, &args);
    assert_eq!(st.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("failed to listen on {port}")),
        "{err}"
    );
    assert!(!dir.path().join("jobd.pid").exists());
    util::wait_gone(&tag);
}
