//! The library through its examples: a closure job server, a disconnect
//! callback that cancels (and the closure that notices), and one that keeps.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use crate::util::{self, DEADLINE, alive, script, tempdir, wait_until};

fn example(name: &str) -> PathBuf {
    // target/<profile>/jobd -> target/<profile>/examples/<name>
    let bin = PathBuf::from(util::jobd_bin());
    let p = bin.parent().unwrap().join("examples").join(name);
    assert!(p.exists(), "example {name} not built at {}", p.display());
    p
}

struct Example {
    child: std::process::Child,
    addr: std::net::SocketAddr,
    log: Arc<(Mutex<Vec<String>>, Condvar)>,
}

impl Example {
    fn start(name: &str, args: &[&str]) -> Example {
        let mut child = Command::new(example(name))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new((Mutex::new(Vec::<String>::new()), Condvar::new()));
        let l2 = log.clone();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                l2.0.lock().unwrap().push(line);
                l2.1.notify_all();
            }
        });
        let mut e = Example {
            child,
            addr: "0.0.0.0:0".parse().unwrap(),
            log,
        };
        let line = e.wait(|l| l.contains("listening on "));
        let a = line
            .split("listening on ")
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap();
        e.addr = a.parse().unwrap();
        e
    }

    fn wait(&self, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + DEADLINE;
        let (m, cv) = &*self.log;
        let mut g = m.lock().unwrap();
        loop {
            if let Some(l) = g.iter().find(|l| pred(l)) {
                return l.clone();
            }
            let now = Instant::now();
            assert!(now < deadline, "timed out; log:\n{}", g.join("\n"));
            g = cv.wait_timeout(g, deadline - now).unwrap().0;
        }
    }

    fn stop(mut self) {
        util::send(self.child.id() as i32, "TERM");
        let mut status = None;
        let stopped = util::poll_until(Instant::now() + DEADLINE, || {
            status = self.child.try_wait().unwrap();
            status.is_some()
        });
        assert!(stopped, "example did not stop");
        assert!(status.unwrap().success(), "{status:?}");
    }
}

impl Drop for Example {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn closure_server_answers_and_hooks_run() {
    let e = Example::start("closure_server", &["127.0.0.1:0"]);
    e.wait(|l| l.contains("closure_server bound 127.0.0.1:"));
    let mut s = std::net::TcpStream::connect(e.addr).unwrap();
    s.write_all(b"shout\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.trim().ends_with(": SHOUT"), "{out}");
    assert!(out.starts_with("job "), "{out}");
    e.wait(|l| l.contains("job ended") && l.contains("outcome=done"));
    let log = e.log.clone();
    e.stop();
    assert!(
        log.0
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("closure_server shutting down"))
    );
}

/// A closure that never checks `is_cancelled()` is killed with its worker
/// after the kill grace; the slot gets a new worker that serves.
#[test]
fn stubborn_closure_job_is_killed_with_its_worker() {
    let e = Example::start("closure_server", &["127.0.0.1:0"]);
    let mut s = std::net::TcpStream::connect(e.addr).unwrap();
    s.write_all(b"sleep 30\n").unwrap();
    e.wait(|l| l.contains("job started"));
    drop(s);
    e.wait(|l| l.contains("job cancelled") && l.contains("reason=client-closed"));
    e.wait(|l| l.contains("closure job ignored its cancellation; killing its worker"));
    e.wait(|l| l.contains("job ended") && l.contains("outcome=cancelled"));
    // Still serving.
    let mut s = std::net::TcpStream::connect(e.addr).unwrap();
    s.write_all(b"again\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.trim().ends_with(": AGAIN"), "{out}");
    e.stop();
}

/// A panicking closure job is a failed job; its worker serves on.
#[test]
fn panicking_closure_job_fails_and_the_worker_serves_on() {
    let e = Example::start("closure_server", &["127.0.0.1:0"]);
    let mut s = std::net::TcpStream::connect(e.addr).unwrap();
    s.write_all(b"panic\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert_eq!(out, "");
    e.wait(|l| l.contains("job ended") && l.contains("outcome=failed") && l.contains("panicked"));
    for _ in 0..3 {
        let mut s = std::net::TcpStream::connect(e.addr).unwrap();
        s.write_all(b"fine\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        assert!(out.trim().ends_with(": FINE"), "{out}");
    }
    assert!(
        !e.log
            .0
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("worker died"))
    );
    e.stop();
}

#[test]
fn callback_cancels_a_closure_job() {
    let e = Example::start("cancel_on_disconnect", &["127.0.0.1:0"]);
    let mut s = std::net::TcpStream::connect(e.addr).unwrap();
    s.write_all(b"300\n").unwrap();
    let mut line = String::new();
    BufReader::new(s.try_clone().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("step 1/300"), "{line}");
    drop(s);
    e.wait(|l| l.starts_with("callback: client 127.0.0.1:") && l.contains("cancelling"));
    // Closing with unread progress lines pending makes the kernel send a
    // reset rather than a FIN: either counts.
    e.wait(|l| l.contains("job cancelled") && l.contains("reason=client-"));
    e.wait(|l| l.contains("stops at step") && l.contains("cancelled"));
    e.wait(|l| l.contains("job ended") && l.contains("outcome=cancelled"));
    e.stop();
}

#[test]
fn callback_keeps_a_half_closed_job_and_cancels_a_reset_one() {
    let dir = tempdir();
    let pids = dir.path().join("pid");
    let h = script(
        dir.path(),
        "h.sh",
        &format!(
            "echo $$ >> {}\nIFS= read -r x\nsleep 1\necho \"answer $x\"",
            pids.display()
        ),
    );
    let e = Example::start("keep_half_closed", &["127.0.0.1:0", h.to_str().unwrap()]);
    // Half-close: the callback keeps it, the client reads its answer.
    let mut s = std::net::TcpStream::connect(e.addr).unwrap();
    s.write_all(b"a\n").unwrap();
    e.wait(|l| l.contains("job started"));
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert_eq!(out.trim(), "answer a");
    e.wait(|l| l.contains("keeps running after a FIN"));
    // Reset: cancelled.
    let s = std::net::TcpStream::connect(e.addr).unwrap();
    (&s).write_all(b"b\n").unwrap();
    wait_until("second handler", || {
        std::fs::read_to_string(&pids)
            .unwrap_or_default()
            .lines()
            .count()
            == 2
    });
    let pid: i32 = std::fs::read_to_string(&pids)
        .unwrap()
        .lines()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    util::reset(s);
    e.wait(|l| l.contains("job cancelled") && l.contains("reason=client-reset"));
    wait_until("reset job gone", || !alive(pid));
    e.stop();
}

/// The daemon example: detaches, logs to files, reloads when its
/// `auto_reload_handler` says so, reports worker deaths through
/// `on_worker_exit`, and stops through `jobd ctl`.
#[test]
fn daemon_example_with_auto_reload_and_worker_exit_hook() {
    let dir = tempdir();
    let d = dir.path();
    let st = Command::new(example("daemon"))
        .arg(d)
        .arg("127.0.0.1:0")
        .status()
        .unwrap();
    assert!(st.success(), "{st:?}");
    let log = d.join("error.log");
    let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap_or_default();
    wait_until("listening line", || read(&log).contains("listening on "));
    let text = read(&log);
    let addr: std::net::SocketAddr = text
        .split("listening on ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(b"hello\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.contains(": hello"), "{out}");
    wait_until("an access log line", || {
        read(&d.join("access.log")).contains("outcome=done")
    });
    // The auto_reload_handler watches a marker file.
    std::fs::write(d.join("reload"), "now").unwrap();
    wait_until("auto-reload", || {
        read(&log).contains("auto-reload: reloading")
    });
    // A worker killed from outside is reported by on_worker_exit.
    let sb = d.join("jobd.sb");
    let mut victim = 0;
    // An idle worker of the new generation: an old one may be retiring
    // (its death would be planned, and not reported).
    wait_until("a live idle worker", || {
        let st = util::Jobd::status_json(&sb);
        let generation = st["generation"].clone();
        victim = st["slots"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["state"] == "idle" && s["generation"] == generation)
            .and_then(|s| s["pid"].as_i64())
            .unwrap_or(0);
        victim > 0
    });
    util::send(victim as i32, "KILL");
    wait_until("on_worker_exit report", || {
        read(&log).contains(&format!("daemon: worker {victim} in slot"))
    });
    let pid_file = d.join("jobd.pid");
    let st = Command::new(util::jobd_bin())
        .args(["ctl", "stop", "--pid-file"])
        .arg(&pid_file)
        .status()
        .unwrap();
    assert!(st.success());
    wait_until("pid file removed", || !pid_file.exists());
}

/// An embedding program's own children are never killed: the `embedded`
/// example's helper (a `sleep` in a process group of its own, started
/// before the pool) lives through jobs that end, a job whose worker is
/// SIGKILLed (its handler and a `setsid` escapee are killed), and the
/// program's stop; under subreaper and, as root with cgroup v2, cgroup
/// containment.
#[test]
fn an_embedding_programs_own_children_are_never_killed() {
    let mut modes = vec!["subreaper"];
    if crate::containment::cgroup_root().is_some() {
        modes.push("cgroup");
    }
    for mode in modes {
        let dir = tempdir();
        let h = script(
            dir.path(),
            "h.sh",
            "setsid sleep 300 &\necho \"$$ $!\"\nIFS= read -r what\n[ \"$what\" = end ] && echo bye\n",
        );
        let e = Example::start("embedded", &["127.0.0.1:0", h.to_str().unwrap(), mode]);
        let line = e.wait(|l| l.contains("embedded helper pid "));
        let helper: i32 = line.rsplit(' ').next().unwrap().trim().parse().unwrap();
        assert!(alive(helper));
        let pids = |s: &std::net::TcpStream| -> (i32, i32) {
            let mut line = String::new();
            BufReader::new(s).read_line(&mut line).unwrap();
            let mut it = line.split_whitespace().map(|w| w.parse::<i32>().unwrap());
            (it.next().unwrap(), it.next().unwrap())
        };
        // A job that ends by itself: its escapee goes, the helper stays.
        let mut s = std::net::TcpStream::connect(e.addr).unwrap();
        let (handler, escapee) = pids(&s);
        s.write_all(b"end\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        assert_eq!(out.trim(), "bye", "{mode}");
        wait_until("the first job's processes are gone", || {
            !alive(handler) && !alive(escapee)
        });
        // A job whose worker is SIGKILLed.
        let s = std::net::TcpStream::connect(e.addr).unwrap();
        let (handler, escapee) = pids(&s);
        let worker = util::parent_of(handler);
        util::send(worker, "KILL");
        wait_until("the dead worker's job is gone", || {
            !alive(handler) && !alive(escapee)
        });
        // The slot is refilled and serves.
        let mut s2 = std::net::TcpStream::connect(e.addr).unwrap();
        let _ = pids(&s2);
        s2.write_all(b"end\n").unwrap();
        let mut out = String::new();
        s2.read_to_string(&mut out).unwrap();
        assert_eq!(out.trim(), "bye", "{mode}");
        drop(s);
        assert!(alive(helper), "{mode}: the program's own helper was killed");
        e.stop();
        assert!(alive(helper), "{mode}: the helper was killed at stop");
        let cmd = std::fs::read(format!("/proc/{helper}/cmdline")).unwrap();
        assert!(cmd.starts_with(b"sleep\0"), "{cmd:?}");
        util::send(helper, "KILL");
    }
}
