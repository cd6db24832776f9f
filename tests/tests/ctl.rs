//! `jobd ctl` against a daemonized jobd: every verb, and the pid files it
//! must not trust (missing, stale, naming a process that is not a jobd).

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};

use crate::util::{
    self, Daemon, Jobd, alive, read_pid, run_tagged, script, tempdir, wait_file_line, wait_gone,
    wait_until,
};

#[test]
fn status_stop_waits_then_status_3() {
    let dir = tempdir();
    script(
        dir.path(),
        "h.sh",
        "echo started\nIFS= read -r x\necho \"finished $x\"",
    );
    let d = Daemon::start(dir, &["--prefork", "1", "--script", "h.sh"]);
    let (st, out, err) = d.ctl("status", &[]);
    assert_eq!(st.code(), Some(0), "{out}{err}");
    assert_eq!(out.trim(), format!("jobd is running (pid {})", d.pid));
    // A job runs: stop must wait for it (SIGTERM lets it finish).
    let mut s = d.connect();
    let mut line = String::new();
    BufReader::new(s.try_clone().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "started");
    let mut stop = Command::new(util::jobd_bin())
        .args(["ctl", "stop", "--pid-file", "jobd.pid", "--timeout", "20s"])
        .env("JOBD_TEST_TAG", &d.tag)
        .current_dir(d.dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_file_line(&d.error_log(), |l| l.contains("SIGTERM: stopping"));
    assert!(
        stop.try_wait().unwrap().is_none(),
        "ctl stop returned while the job still ran"
    );
    writeln!(s, "ok").unwrap();
    let mut rest = String::new();
    s.read_to_string(&mut rest).unwrap();
    assert_eq!(rest.trim(), "finished ok");
    let out = stop.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Stop returned only once the pid was gone.
    assert!(!alive(d.pid));
    assert!(String::from_utf8_lossy(&out.stdout).contains("stopped"));
    let (st, out, _) = d.ctl("status", &[]);
    assert_eq!(st.code(), Some(3));
    assert!(out.starts_with("jobd is not running (no pid file"), "{out}");
    wait_gone(&d.tag);
}

#[test]
fn stop_times_out_with_exit_1() {
    let dir = tempdir();
    script(dir.path(), "h.sh", "echo started\nexec sleep 300");
    let d = Daemon::start(dir, &["--prefork", "1", "--script", "h.sh"]);
    let (_s, line) = {
        let mut s = d.connect();
        let mut line = String::new();
        BufReader::new(s.try_clone().unwrap())
            .read_line(&mut line)
            .unwrap();
        s.flush().unwrap();
        (s, line)
    };
    assert_eq!(line.trim(), "started");
    let (st, _, err) = d.ctl("stop", &["--timeout", "200ms"]);
    assert_eq!(st.code(), Some(1), "{err}");
    assert!(
        err.contains("still running") && err.contains("force-stop"),
        "{err}"
    );
    assert!(alive(d.pid));
    let (st, _, err) = d.ctl("force-stop", &[]);
    assert_eq!(st.code(), Some(0), "{err}");
    wait_gone(&d.tag);
}

#[test]
fn reload_changes_the_generation() {
    let dir = tempdir();
    script(dir.path(), "h.sh", "echo hi");
    let d = Daemon::start(
        dir,
        &["--prefork", "2", "--scoreboard", "sb", "--script", "h.sh"],
    );
    let sb = d.path("sb");
    assert_eq!(Jobd::status_json(&sb)["generation"], 1);
    let (st, out, err) = d.ctl("reload", &[]);
    assert_eq!(st.code(), Some(0), "{out}{err}");
    assert!(out.contains(&format!("pid {}", d.pid)), "{out}");
    wait_until("generation 2", || Jobd::status_json(&sb)["generation"] == 2);
    assert_eq!(d.request_all("").trim(), "hi");
    d.stop();
}

#[test]
fn restart_gives_a_new_pid_that_serves() {
    let dir = tempdir();
    script(dir.path(), "h.sh", "echo \"hi from $PPID\"");
    let mut d = Daemon::start(dir, &["--prefork", "1", "--script", "h.sh"]);
    let old = d.pid;
    // The arguments come from /proc/<pid>/cmdline; relative paths resolve
    // from ctl's current directory (the same temp dir here).
    let (st, out, err) = d.ctl("restart", &[]);
    assert_eq!(st.code(), Some(0), "{out}{err}");
    assert!(!alive(old));
    d.refresh();
    assert_ne!(d.pid, old);
    assert!(alive(d.pid));
    assert!(d.request_all("").starts_with("hi from "));
    // With explicit arguments after --: they replace the running ones.
    let mut args = Daemon::args(&["--prefork", "2", "--scoreboard", "sb", "--script", "h.sh"]);
    let mut ctl_args = vec!["--".to_string()];
    ctl_args.append(&mut args);
    let refs: Vec<&str> = ctl_args.iter().map(String::as_str).collect();
    let before = d.pid;
    let (st, out, err) = d.ctl("restart", &refs);
    assert_eq!(st.code(), Some(0), "{out}{err}");
    d.refresh();
    assert_ne!(d.pid, before);
    wait_until("two workers", || {
        Jobd::status_json(&d.path("sb"))["totals"]["workers"] == 2
    });
    d.stop();
}

#[test]
fn restart_refuses_arguments_without_daemonize_before_stopping() {
    let dir = tempdir();
    script(dir.path(), "h.sh", "echo hi");
    let d = Daemon::start(dir, &["--prefork", "1", "--script", "h.sh"]);
    let (st, _, err) = d.ctl("restart", &["--", "--script", "h.sh"]);
    assert_eq!(st.code(), Some(2), "{err}");
    assert!(err.contains("--daemonize"), "{err}");
    assert!(alive(d.pid), "nothing was stopped");
    d.stop();
}

#[test]
fn force_stop_kills_the_whole_tree() {
    let dir = tempdir();
    let pids = dir.path().join("pids");
    std::fs::create_dir(&pids).unwrap();
    script(
        dir.path(),
        "h.sh",
        &format!(
            "sleep 300 &\necho $! > {0}/child.$JOBD_SLOT\nsetsid sleep 300 &\necho $! > {0}/session.$JOBD_SLOT\necho $$ > {0}/handler.$JOBD_SLOT\necho started\nwait",
            pids.display()
        ),
    );
    let d = Daemon::start(
        dir,
        &["--prefork", "2", "--scoreboard", "sb", "--script", "h.sh"],
    );
    let mut conns = vec![];
    for _ in 0..2 {
        let mut s = d.connect();
        let mut line = String::new();
        BufReader::new(s.try_clone().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "started");
        s.flush().unwrap();
        conns.push(s);
    }
    let mut job_pids = vec![];
    for slot in 0..2 {
        for kind in ["child", "session", "handler"] {
            job_pids.push(read_pid(&pids.join(format!("{kind}.{slot}"))));
        }
    }
    let workers: Vec<i32> = Jobd::status_json(&d.path("sb"))["slots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["pid"].as_i64().unwrap() as i32)
        .collect();
    assert_eq!(workers.len(), 2);
    assert!(job_pids.iter().chain(&workers).all(|p| alive(*p)));
    let (st, out, err) = d.ctl("force-stop", &[]);
    assert_eq!(st.code(), Some(0), "{out}{err}");
    // force-stop returns once every process is gone.
    for p in job_pids.iter().chain(&workers).chain([&d.pid]) {
        assert!(!alive(*p), "pid {p} survived force-stop");
    }
    wait_gone(&d.tag);
    let (st, out, _) = d.ctl("status", &[]);
    assert_eq!(st.code(), Some(3));
    assert!(out.contains("stale pid file"), "{out}");
}

/// Runs `jobd ctl VERB --pid-file PATH` in `dir`.
fn ctl_at(dir: &std::path::Path, verb: &str, pid_file: &str) -> (Option<i32>, String) {
    let tag = util::fresh_tag();
    let (st, out, err) = run_tagged(dir, &tag, &["ctl", verb, "--pid-file", pid_file]);
    wait_gone(&tag);
    (st.code(), format!("{out}{err}"))
}

#[test]
fn missing_pid_file() {
    let dir = tempdir();
    for (verb, code) in [
        ("status", 3),
        ("stop", 0),
        ("reload", 7),
        ("force-stop", 0),
        ("restart", 7),
    ] {
        let (c, msg) = ctl_at(dir.path(), verb, "nope.pid");
        assert_eq!(c, Some(code), "{verb}: {msg}");
        assert!(msg.contains("no pid file nope.pid"), "{verb}: {msg}");
    }
}

#[test]
fn stale_pid_file() {
    let dir = tempdir();
    let mut c = Command::new("true").spawn().unwrap();
    let dead = c.id();
    c.wait().unwrap();
    std::fs::write(dir.path().join("j.pid"), format!("{dead}\n")).unwrap();
    for (verb, code) in [("status", 3), ("stop", 0), ("reload", 7), ("force-stop", 0)] {
        let (c, msg) = ctl_at(dir.path(), verb, "j.pid");
        assert_eq!(c, Some(code), "{verb}: {msg}");
        assert!(
            msg.contains(&format!("stale pid file j.pid: pid {dead} is dead")),
            "{verb}: {msg}"
        );
    }
    // Unlocked, naming a live process (ours): stale too, and not signalled.
    std::fs::write(
        dir.path().join("j.pid"),
        format!("{}\n", std::process::id()),
    )
    .unwrap();
    let (c, msg) = ctl_at(dir.path(), "stop", "j.pid");
    assert_eq!(c, Some(0), "{msg}");
    assert!(msg.contains("no process holds its lock"), "{msg}");
    // Garbage.
    std::fs::write(dir.path().join("j.pid"), "not a pid\n").unwrap();
    let (c, msg) = ctl_at(dir.path(), "status", "j.pid");
    assert_eq!(c, Some(4), "{msg}");
    assert!(msg.contains("does not hold a pid"), "{msg}");
}

#[test]
fn locked_pid_file_naming_another_program_is_not_signalled() {
    let dir = tempdir();
    let tag = util::fresh_tag();
    let mut sleeper = Command::new("sleep")
        .arg("300")
        .env("JOBD_TEST_TAG", &tag)
        .spawn()
        .unwrap();
    let pid = sleeper.id();
    let path = dir.path().join("j.pid");
    std::fs::write(&path, format!("{pid}\n")).unwrap();
    // Locked by this test process, as a jobd would lock it.
    let lock = nix::fcntl::Flock::lock(
        std::fs::File::open(&path).unwrap(),
        nix::fcntl::FlockArg::LockExclusiveNonblock,
    )
    .unwrap();
    for (verb, code) in [
        ("status", 4),
        ("stop", 1),
        ("reload", 1),
        ("force-stop", 1),
        ("restart", 1),
    ] {
        let (c, msg) = ctl_at(dir.path(), verb, "j.pid");
        assert_eq!(c, Some(code), "{verb}: {msg}");
        assert!(
            msg.contains(&format!("pid {pid}, which is not a jobd")),
            "{verb}: {msg}"
        );
        assert!(
            sleeper.try_wait().unwrap().is_none(),
            "{verb} signalled sleep"
        );
    }
    drop(lock);
    sleeper.kill().unwrap();
    sleeper.wait().unwrap();
    wait_gone(&tag);
}
