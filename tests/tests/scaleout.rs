//! Scale-out and deployment (issue 12) without a balancer: PROXY protocol
//! headers written by the test, draining on SIGTERM, `--reuse-port`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Instant;

use crate::util::{self, DEADLINE, Jobd};

/// A PROXY v2 header for a TCP connection from `client` to `dest`.
fn v2(client: SocketAddr, dest: SocketAddr) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.push(0x21); // v2, PROXY
    match (client, dest) {
        (SocketAddr::V4(c), SocketAddr::V4(d)) => {
            h.push(0x11);
            h.extend_from_slice(&12u16.to_be_bytes());
            h.extend_from_slice(&c.ip().octets());
            h.extend_from_slice(&d.ip().octets());
            h.extend_from_slice(&c.port().to_be_bytes());
            h.extend_from_slice(&d.port().to_be_bytes());
        }
        (SocketAddr::V6(c), SocketAddr::V6(d)) => {
            h.push(0x21);
            h.extend_from_slice(&36u16.to_be_bytes());
            h.extend_from_slice(&c.ip().octets());
            h.extend_from_slice(&d.ip().octets());
            h.extend_from_slice(&c.port().to_be_bytes());
            h.extend_from_slice(&d.port().to_be_bytes());
        }
        _ => panic!("one family"),
    }
    h
}

/// The v2 LOCAL header HAProxy's health checks send.
fn v2_local() -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x20, 0x00, 0, 0]);
    h
}

/// One line, read a byte at a time: nothing after it is taken from the
/// socket (a BufReader per call would swallow the next line).
fn line(mut s: &TcpStream) -> String {
    let mut l = Vec::new();
    let mut b = [0u8; 1];
    while s.read(&mut b).unwrap() == 1 {
        l.push(b[0]);
        if b[0] == b'\n' {
            break;
        }
    }
    String::from_utf8_lossy(&l).into_owned()
}

fn start(mode: &str, dir: tempfile::TempDir, access: &std::path::Path) -> Jobd {
    let h = util::script(
        dir.path(),
        "h.sh",
        "echo \"$TCPREMOTEIP $TCPREMOTEPORT ${TCPPROXYIP:-none} $$\"\nIFS= read -r l\necho \"got $l\"\nIFS= read -r l\n[ \"$l\" = done ] || exec sleep 300",
    );
    Jobd::start_in(
        dir,
        &[
            "--prefork",
            "2",
            "--proxy-protocol",
            mode,
            "--access-log",
            access.to_str().unwrap(),
            "--script",
            h.to_str().unwrap(),
        ],
    )
}

/// PROXY v2 and v1: the handler, the job lines, the cancellation line and
/// the access log carry the real client; the balancer is `proxy_peer` and
/// TCPPROXYIP; the bytes after the header reach the handler untouched.
#[test]
fn a_proxy_header_names_the_real_client_everywhere() {
    for mode in ["v2", "v1", "any"] {
        let dir = util::tempdir();
        let access = dir.path().join("access.log");
        let mut j = start(mode, dir, &access);
        let client: SocketAddr = "203.0.113.7:4242".parse().unwrap();
        let mut s = TcpStream::connect(j.addr).unwrap();
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        let header = if mode == "v1" {
            format!(
                "PROXY TCP4 203.0.113.7 {} 4242 {}\r\n",
                j.addr.ip(),
                j.addr.port()
            )
            .into_bytes()
        } else {
            v2(client, j.addr)
        };
        // The header and the first line in one segment: nothing of the
        // line may be eaten with the header.
        let mut first = header.clone();
        first.extend_from_slice(b"hello\n");
        s.write_all(&first).unwrap();
        let hello = line(&s);
        let mut f = hello.split_whitespace();
        assert_eq!(f.next(), Some("203.0.113.7"), "{mode}: {hello}");
        assert_eq!(f.next(), Some("4242"), "{mode}: {hello}");
        assert_eq!(f.next(), Some("127.0.0.1"), "{mode}: TCPPROXYIP: {hello}");
        let handler: i32 = f.next().unwrap().parse().unwrap();
        assert_eq!(line(&s).trim(), "got hello", "{mode}");
        let started = j.wait_log(|l| l.contains("job started"));
        assert!(
            started.contains("peer=203.0.113.7:4242") && started.contains("proxy_peer=127.0.0.1:"),
            "{started}"
        );
        // The client goes: the cancellation names it.
        drop(s);
        let cancel = j.wait_log(|l| l.contains("job cancelled"));
        assert!(cancel.contains("peer=203.0.113.7:4242"), "{cancel}");
        util::wait_until("the handler gone", || !util::alive(handler));
        let rec = util::wait_file_line(&access, |l| l.contains("outcome=cancelled"));
        assert_eq!(util::field(&rec, "peer"), "203.0.113.7:4242", "{rec}");
        assert!(
            util::field(&rec, "proxy_peer").starts_with("127.0.0.1:"),
            "{rec}"
        );
        j.stop_clean();
    }
}

/// HAProxy's health checks (a v2 LOCAL header, then a close), a
/// connection closed before or right after its header, start no job and
/// no cancellation; a missing or malformed header closes the connection
/// with one warning naming the peer.
#[test]
fn health_checks_and_bad_headers_start_no_job() {
    let dir = util::tempdir();
    let access = dir.path().join("access.log");
    let mut j = start("v2", dir, &access);
    for _ in 0..20 {
        let mut s = TcpStream::connect(j.addr).unwrap();
        s.write_all(&v2_local()).unwrap();
        drop(s);
    }
    for _ in 0..5 {
        drop(TcpStream::connect(j.addr).unwrap()); // closed before its header
    }
    let mut s = TcpStream::connect(j.addr).unwrap();
    s.write_all(&v2("198.51.100.1:1000".parse().unwrap(), j.addr))
        .unwrap();
    drop(s); // right after its header
    let mut bad = TcpStream::connect(j.addr).unwrap();
    bad.set_read_timeout(Some(DEADLINE)).unwrap();
    let local = bad.local_addr().unwrap();
    bad.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut out = Vec::new();
    let _ = bad.read_to_end(&mut out);
    assert!(out.is_empty(), "no job answered a bad header");
    let warn = j.wait_log(|l| l.contains("no valid PROXY header"));
    assert!(warn.contains(&format!("peer={local}")), "{warn}");
    // A real job afterwards is the first and only one.
    let mut s = TcpStream::connect(j.addr).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut first = v2("203.0.113.8:5000".parse().unwrap(), j.addr);
    first.extend_from_slice(b"x\n");
    s.write_all(&first).unwrap();
    assert!(line(&s).starts_with("203.0.113.8 5000"));
    (&s).write_all(b"done\n").unwrap();
    assert_eq!(line(&s).trim(), "got x");
    drop(s);
    j.wait_log(|l| l.contains("job ended"));
    let started = j.count(|l| l.contains("job started"));
    assert!(started <= 2, "{}", j.dump());
    assert_eq!(
        j.count(|l| l.contains("job cancelled") && !l.contains("203.0.113.8")),
        0,
        "{}",
        j.dump()
    );
    assert_eq!(
        j.count(|l| l.contains("no valid PROXY header")),
        1,
        "{}",
        j.dump()
    );
    j.stop_clean();
}

/// A header that never completes is given up after `--proxy-timeout`
/// (one warning), and the worker serves the next client.
#[test]
fn a_slow_proxy_header_times_out() {
    let dir = util::tempdir();
    let h = util::script(dir.path(), "h.sh", "echo \"$TCPREMOTEIP\"");
    let mut j = Jobd::start_in(
        dir,
        &[
            "--prefork",
            "1",
            "--max-children",
            "1",
            "--proxy-protocol",
            "any",
            "--proxy-timeout",
            "300ms",
            "--script",
            h.to_str().unwrap(),
        ],
    );
    let mut slow = TcpStream::connect(j.addr).unwrap();
    slow.write_all(b"PROXY TCP4 1.2").unwrap();
    let t = Instant::now();
    j.wait_log(|l| l.contains("sent no complete PROXY header within"));
    assert!(t.elapsed() < DEADLINE);
    let mut s = TcpStream::connect(j.addr).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.write_all(
        format!(
            "PROXY TCP4 192.0.2.9 {} 9 {}\r\n",
            j.addr.ip(),
            j.addr.port()
        )
        .as_bytes(),
    )
    .unwrap();
    assert_eq!(line(&s).trim(), "192.0.2.9");
    drop(slow);
    j.stop_clean();
}

/// Draining: on SIGTERM jobd refuses new connections at once, while a
/// running job finishes (and is still watched).
#[test]
fn sigterm_refuses_new_connections_at_once_and_lets_running_jobs_finish() {
    let dir = util::tempdir();
    let h = util::script(
        dir.path(),
        "h.sh",
        "echo started\nIFS= read -r l\necho \"done $l\"",
    );
    let mut j = Jobd::start_in(dir, &["--prefork", "2", "--script", h.to_str().unwrap()]);
    let (mut s, l) = j.request_line("");
    assert_eq!(l.trim(), "started");
    j.signal("TERM");
    j.wait_log(|l| l.contains("SIGTERM: stopping"));
    util::wait_until("new connections refused", || {
        TcpStream::connect(j.addr).is_err()
    });
    s.write_all(b"late\n").unwrap();
    assert_eq!(line(&s).trim(), "done late");
    drop(s);
    assert!(j.wait_exit().success());
}

/// `--reuse-port`: two jobds serve one port; both get clients.
#[test]
fn reuse_port_lets_two_jobds_share_a_port() {
    let dir = util::tempdir();
    let h = util::script(dir.path(), "h.sh", "echo \"$PPID\"");
    let a = Jobd::start_in(
        dir,
        &[
            "--prefork",
            "1",
            "--reuse-port",
            "--script",
            h.to_str().unwrap(),
        ],
    );
    let port = a.addr.port().to_string();
    let dir2 = util::tempdir();
    let h2 = util::script(dir2.path(), "h.sh", "echo \"$PPID\"");
    let listen = format!("127.0.0.1:{port}");
    let b = Jobd::start_in(
        dir2,
        &[
            "--listen",
            &listen,
            "--prefork",
            "1",
            "--reuse-port",
            "--script",
            h2.to_str().unwrap(),
        ],
    );
    assert_eq!(a.addr, b.addr);
    let mut seen = std::collections::HashSet::new();
    for _ in 0..200 {
        let mut out = String::new();
        let mut s = TcpStream::connect(a.addr).unwrap();
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        s.read_to_string(&mut out).unwrap();
        seen.insert(out.trim().to_string());
        if seen.len() >= 2 {
            break;
        }
    }
    assert!(seen.len() >= 2, "one jobd got every client: {seen:?}");
    drop((a, b));
}

/// systemd socket activation, through `systemd-socket-activate` (which
/// binds, sets LISTEN_PID and LISTEN_FDS, and execs jobd): jobd serves on
/// the passed socket; an explicit `--listen` naming another address is
/// refused (exit 2); handlers do not see the LISTEN_* variables.
#[test]
fn socket_activation_serves_on_the_passed_socket() {
    let Some(activate) = [
        "/usr/bin/systemd-socket-activate",
        "/bin/systemd-socket-activate",
    ]
    .into_iter()
    .find(|p| std::path::Path::new(p).exists()) else {
        panic!("systemd-socket-activate is missing: install the systemd package (.ci/run does)");
    };
    let dir = util::tempdir();
    let h = util::script(
        dir.path(),
        "h.sh",
        "echo \"listen_fds=${LISTEN_FDS:-unset} notify=${NOTIFY_SOCKET:-unset}\"",
    );
    // A free port (bound and released: the activator binds it again).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let tag = util::fresh_tag();
    let mut child = std::process::Command::new(activate)
        .args([
            "-l",
            &addr.to_string(),
            util::jobd_bin(),
            "--prefork",
            "1",
            "--script",
            h.to_str().unwrap(),
        ])
        .env("JOBD_TEST_TAG", &tag)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let err = child.stderr.take().unwrap();
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let l2 = lines.clone();
    std::thread::spawn(move || {
        for l in BufReader::new(err).lines().map_while(Result::ok) {
            l2.lock().unwrap().push(l);
        }
    });
    let has = |needle: &str| lines.lock().unwrap().iter().any(|l| l.contains(needle));
    // The activator starts jobd on the first connection, which jobd then
    // takes from the passed socket's queue.
    let mut s = None;
    util::wait_until("the activator listening", || {
        s = TcpStream::connect(addr).ok();
        s.is_some()
    });
    let mut s = s.unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    util::wait_until("jobd serving on the passed socket", || {
        has("serving on the socket passed by the service manager")
    });
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert_eq!(
        out.trim(),
        "listen_fds=unset notify=unset",
        "{:?}",
        lines.lock().unwrap()
    );
    util::send(child.id() as i32, "TERM");
    let st = child.wait().unwrap();
    assert!(st.success(), "{st:?}: {:?}", lines.lock().unwrap());
    util::wait_gone(&tag);
    // An explicit --listen elsewhere is a configuration error (the
    // activator execs jobd on the first connection).
    let port2 = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr2: SocketAddr = format!("127.0.0.1:{port2}").parse().unwrap();
    let mut child = std::process::Command::new(activate)
        .args([
            "-l",
            &addr2.to_string(),
            util::jobd_bin(),
            "--listen",
            "127.0.0.1:1",
            "--script",
            h.to_str().unwrap(),
        ])
        .env("JOBD_TEST_TAG", &tag)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut c = None;
    util::wait_until("the second activator listening", || {
        c = TcpStream::connect(addr2).ok();
        c.is_some()
    });
    let mut st = None;
    let exited = util::poll_until(Instant::now() + DEADLINE, || {
        st = child.try_wait().unwrap();
        st.is_some()
    });
    if !exited {
        let _ = child.kill();
        let _ = child.wait();
        panic!("jobd with a mismatched --listen did not exit");
    }
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(st.unwrap().code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("does not match the socket passed"),
        "{stderr}"
    );
    drop(c);
}

/// sd_notify: with NOTIFY_SOCKET (a datagram socket the test creates) and
/// WATCHDOG_USEC, jobd sends READY=1, a STATUS= line, WATCHDOG=1 pings,
/// RELOADING=1 on SIGHUP and STOPPING=1 on SIGTERM.
#[test]
fn sd_notify_tells_ready_status_watchdog_reloading_and_stopping() {
    use std::os::unix::net::UnixDatagram;
    let dir = util::tempdir();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(DEADLINE)).unwrap();
    let h = util::script(dir.path(), "h.sh", "echo hi");
    let tag = util::fresh_tag();
    let mut child = std::process::Command::new(util::jobd_bin())
        .args([
            "--listen",
            "127.0.0.1:0",
            "--prefork",
            "1",
            "--script",
            h.to_str().unwrap(),
        ])
        .env("JOBD_TEST_TAG", &tag)
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "200000")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut got: Vec<String> = Vec::new();
    let recv_until = |what: &str, got: &mut Vec<String>| {
        let deadline = Instant::now() + DEADLINE;
        while !got.iter().any(|m| m.contains(what)) {
            assert!(Instant::now() < deadline, "no {what} in {got:?}");
            let mut buf = [0u8; 4096];
            let n = sock
                .recv(&mut buf)
                .unwrap_or_else(|e| panic!("waiting for {what}: {e}; got {got:?}"));
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    };
    recv_until("READY=1", &mut got);
    recv_until("STATUS=", &mut got);
    let status = got.iter().find(|m| m.contains("STATUS=")).unwrap().clone();
    assert!(
        status.contains("workers") && status.contains("jobs served"),
        "{status}"
    );
    // Pings every 100 ms: several within a second.
    let before = got.iter().filter(|m| m.contains("WATCHDOG=1")).count();
    for _ in 0..3 {
        let mut buf = [0u8; 4096];
        let n = sock.recv(&mut buf).unwrap();
        got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert!(
        got.iter().filter(|m| m.contains("WATCHDOG=1")).count() > before,
        "{got:?}"
    );
    util::send(child.id() as i32, "HUP");
    recv_until("RELOADING=1", &mut got);
    util::send(child.id() as i32, "TERM");
    recv_until("STOPPING=1", &mut got);
    assert!(child.wait().unwrap().success());
    util::wait_gone(&tag);
}

/// `jobd ctl upgrade` under a running load of short jobs plus two long
/// ones: no connection fails or is refused; the pid file names the new
/// supervisor, which serves every new client; the old one's long jobs
/// finish, one by itself and one cancelled (by the old generation) when
/// its client leaves; the old supervisor then exits.
#[test]
fn ctl_upgrade_hands_over_without_refusing_a_connection() {
    let dir = util::tempdir();
    let pid_file = dir.path().join("jobd.pid");
    let sb = dir.path().join("sb");
    let h = util::script(
        dir.path(),
        "h.sh",
        concat!(
            "sup=$(awk '{print $4}' /proc/$PPID/stat)\n",
            "IFS= read -r what\n",
            "if [ \"$what\" = long ]; then echo \"long $sup\"; IFS= read -r _; echo \"finished $sup\"; exit 0; fi\n",
            "if [ \"$what\" = hold ]; then echo \"hold $sup\"; exec sleep 300; fi\n",
            "echo \"short $sup\"",
        ),
    );
    let mut j = Jobd::start_in(
        dir,
        &[
            "--prefork",
            "4",
            "--pid-file",
            pid_file.to_str().unwrap(),
            "--scoreboard",
            sb.to_str().unwrap(),
            "--script",
            h.to_str().unwrap(),
        ],
    );
    let old = j.pid();
    let addr = j.addr;
    let long = |what: &str| {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        s.write_all(format!("{what}\n").as_bytes()).unwrap();
        let l = line(&s);
        assert_eq!(l.trim(), format!("{what} {old}"));
        s
    };
    let (a, b) = (long("long"), long("hold"));
    // The load: short jobs, back to back, until told to stop.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let load = std::thread::spawn(move || {
        let (mut ok, mut failed, mut by) = (0u32, Vec::new(), std::collections::BTreeMap::new());
        let until = Instant::now() + DEADLINE;
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < until {
            let r = TcpStream::connect(addr).and_then(|mut s| {
                s.set_read_timeout(Some(DEADLINE))?;
                s.write_all(b"short\n")?;
                let mut out = String::new();
                s.read_to_string(&mut out)?;
                Ok(out)
            });
            match r {
                Ok(out) if out.starts_with("short ") => {
                    ok += 1;
                    *by.entry(out.trim().to_string()).or_insert(0u32) += 1;
                }
                other => failed.push(format!("{other:?}")),
            }
        }
        (ok, failed, by)
    });
    let out = std::process::Command::new(util::jobd_bin())
        .args([
            "ctl",
            "upgrade",
            "--pid-file",
            pid_file.to_str().unwrap(),
            "--timeout",
            "15s",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        j.dump()
    );
    let new = util::read_pid(&pid_file);
    assert_ne!(new, old);
    // New clients reach the new supervisor's workers.
    util::wait_until("a short job on the new generation", || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        s.write_all(b"short\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out.trim() == format!("short {new}")
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed, by) = load.join().unwrap();
    eprintln!(
        "upgrade under load: {ok} short jobs answered ({by:?}), {} failed",
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "failed or refused during the upgrade: {failed:?}"
    );
    // The old generation's long jobs: one finishes, one is abandoned.
    (&a).write_all(b"go\n").unwrap();
    assert_eq!(line(&a).trim(), format!("finished {old}"));
    drop(b);
    j.wait_log(|l| l.contains("job cancelled") && l.contains("reason=client-closed"));
    drop(a);
    // (Not wait_exit: the new jobd shares the old one's stderr pipe, so
    // the log reader sees no EOF until it stops too.)
    let mut st = None;
    util::wait_until("the old supervisor exits once drained", || {
        st = j.child.try_wait().unwrap();
        st.is_some()
    });
    assert!(st.unwrap().success(), "{st:?}");
    assert!(util::alive(new));
    let st = Jobd::status_json(&sb);
    assert_eq!(st["supervisor_pid"], new, "{st}");
    util::send(new, "TERM");
    util::wait_until("the new jobd stopped", || !util::alive(new));
}
