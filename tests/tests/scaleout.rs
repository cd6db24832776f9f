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

/// The address of `--metrics-listen`, from the `metrics on IP:PORT` line.
fn metrics_addr(j: &Jobd) -> SocketAddr {
    let line = j.wait_log(|l| l.contains("metrics on "));
    line.split("metrics on ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// One HTTP request to `addr`; the whole answer.
fn http(addr: SocketAddr, request: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// `--metrics-listen` (issue 13, the server): /metrics in OpenMetrics
/// (parsed by the Python prometheus_client) and Prometheus text,
/// /status.json, /status as HTML; 404, 405, 400; a client that sends
/// nothing does not stall jobd, which serves jobs and other scrapes
/// meanwhile.
#[test]
fn metrics_listen_serves_metrics_and_status_without_stalling_jobd() {
    let dir = util::tempdir();
    let h = util::script(dir.path(), "h.sh", "echo hi");
    let mut j = Jobd::start_in(
        dir,
        &[
            "--prefork",
            "2",
            "--metrics-listen",
            "127.0.0.1:0",
            "--script",
            h.to_str().unwrap(),
        ],
    );
    let maddr = metrics_addr(&j);
    // A stalled client, holding a connection open with nothing sent.
    let stalled = TcpStream::connect(maddr).unwrap();
    let mut out = String::new();
    TcpStream::connect(j.addr)
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert_eq!(out.trim(), "hi");
    j.wait_log(|l| l.contains("job ended"));
    let om = http(
        maddr,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: application/openmetrics-text; version=1.0.0\r\n\r\n",
    );
    assert!(om.starts_with("HTTP/1.1 200 OK\r\n"), "{om}");
    assert!(
        om.contains("Content-Type: application/openmetrics-text; version=1.0.0"),
        "{om}"
    );
    let body = om.split("\r\n\r\n").nth(1).unwrap();
    assert!(body.ends_with("# EOF\n"), "{body}");
    let mut parse = std::process::Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(concat!(
            "import sys\n",
            "from prometheus_client.openmetrics.parser import text_string_to_metric_families as p\n",
            "print(sum(len(f.samples) for f in p(sys.stdin.read())))\n",
        ))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    parse
        .stdin
        .as_mut()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let parsed = parse.wait_with_output().unwrap();
    assert!(
        parsed.status.success(),
        "the OpenMetrics parser refused:\n{body}"
    );
    assert!(body.contains("jobd_jobs_ended_total 1"), "{body}");
    assert!(
        body.contains("jobd_workers_by_generation{generation=\"1\"} 2"),
        "{body}"
    );
    assert!(
        body.contains("jobd_scans_total ") && body.contains("jobd_scan_seconds_total "),
        "{body}"
    );
    let started: i64 = body
        .lines()
        .find_map(|l| l.strip_prefix("jobd_start_time_seconds "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no start time in {body}"));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!((now - 600..=now).contains(&started), "{started} vs {now}");
    let peak: i64 = body
        .lines()
        .find_map(|l| l.strip_prefix("jobd_job_peak_memory_max_bytes "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no peak memory in {body}"));
    assert!(peak > 0, "{body}");
    let prom = http(maddr, "GET /metrics HTTP/1.0\r\nAccept: text/plain\r\n\r\n");
    assert!(
        prom.contains("Content-Type: text/plain; version=0.0.4"),
        "{prom}"
    );
    assert!(!prom.contains("# EOF"), "{prom}");
    let json = http(maddr, "GET /status.json HTTP/1.1\r\n\r\n");
    let v: serde_json::Value =
        serde_json::from_str(json.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(v["totals"]["jobs_served"], 1, "{v}");
    let page = http(maddr, "GET /status HTTP/1.1\r\n\r\n");
    assert!(
        page.contains("text/html")
            && page.contains("<meta http-equiv=\"refresh\"")
            && page.contains("<table>"),
        "{page}"
    );
    assert!(http(maddr, "GET /nope HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
    assert!(http(maddr, "POST /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405"));
    assert!(http(maddr, "hello\r\n\r\n").starts_with("HTTP/1.1 400"));
    // The stalled one is answered 408 after its deadline, and closed.
    let mut stalled = stalled;
    stalled.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut late = String::new();
    stalled.read_to_string(&mut late).unwrap();
    assert!(late.starts_with("HTTP/1.1 408"), "{late}");
    j.stop_clean();
}

/// `--slow-job-log` (issue 13): a job past the limit is reported once,
/// with its client, age and process tree (the handler and its child with
/// their command lines), in the log and on `/status`; a short job is not.
#[test]
fn a_slow_job_is_reported_once_with_its_process_tree() {
    let dir = util::tempdir();
    let h = util::script(
        dir.path(),
        "h.sh",
        "IFS= read -r what\n[ \"$what\" = quick ] && { echo quick; exit 0; }\nsleep 30 &\necho \"slow $!\"\nwait",
    );
    let mut j = Jobd::start_in(
        dir,
        &[
            "--prefork",
            "2",
            "--slow-job-log",
            "300ms",
            "--metrics-listen",
            "127.0.0.1:0",
            "--script",
            h.to_str().unwrap(),
        ],
    );
    let mut q = TcpStream::connect(j.addr).unwrap();
    q.write_all(b"quick\n").unwrap();
    let mut out = String::new();
    q.read_to_string(&mut out).unwrap();
    assert_eq!(out.trim(), "quick");
    let (s, l) = j.request_line("slow\n");
    let child: i32 = l.trim().strip_prefix("slow ").unwrap().parse().unwrap();
    let report = j.wait_log(|l| l.contains("slow job: running longer than --slow-job-log"));
    assert!(
        report.contains("job=2 ") && report.contains("peer=127.0.0.1:"),
        "{report}"
    );
    assert!(report.contains("processes=2"), "{report}");
    assert!(
        report.contains(&format!("pid={child} ")) && report.contains("sleep 30"),
        "{report}"
    );
    let age: u64 = util::field(&report, "age_ms").parse().unwrap();
    assert!(age >= 300, "{report}");
    let page = http(metrics_addr(&j), "GET /status HTTP/1.1\r\n\r\n");
    let section = page
        .split("Slow jobs")
        .nth(1)
        .unwrap_or_else(|| panic!("no slow jobs on {page}"));
    let row = section
        .split("<tr>")
        .find(|r| r.starts_with("<td>2</td>"))
        .unwrap_or_else(|| panic!("job 2 not on {section}"));
    assert!(
        row.contains("127.0.0.1:")
            && row.contains(&format!("{child} S"))
            && row.contains("sleep 30"),
        "{row}"
    );
    assert!(!section.contains("quick"), "{section}");
    drop(s);
    j.wait_log(|l| l.contains("job ended") && l.contains("job=2 "));
    assert_eq!(j.count(|l| l.contains("slow job:")), 1, "{}", j.dump());
    j.stop_clean();
}

/// An answer larger than the socket takes at once (the status of 300
/// slots, to a client with a 4 KiB receive buffer) is sent whole, as the
/// client reads it; jobd serves jobs meanwhile.
#[test]
fn a_big_pools_status_is_sent_whole_to_a_slow_reader() {
    let dir = util::tempdir();
    let h = util::script(dir.path(), "h.sh", "echo hi");
    let mut j = Jobd::start_in(
        dir,
        &[
            "--prefork",
            "300",
            "--metrics-listen",
            "127.0.0.1:0",
            "--script",
            h.to_str().unwrap(),
        ],
    );
    let maddr = metrics_addr(&j);
    util::wait_until("300 workers idle", || {
        let json = http(maddr, "GET /status.json HTTP/1.1\r\n\r\n");
        json.split("\r\n\r\n")
            .nth(1)
            .and_then(|b| serde_json::from_str::<serde_json::Value>(b).ok())
            .is_some_and(|v| v["totals"]["idle"] == 300)
    });
    use nix::sys::socket::{self as sk, AddressFamily, SockFlag, SockType, SockaddrIn, sockopt};
    let fd = sk::socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::empty(),
        None,
    )
    .unwrap();
    sk::setsockopt(&fd, sockopt::RcvBuf, &4096).unwrap();
    let std::net::SocketAddr::V4(v4) = maddr else {
        panic!("{maddr}")
    };
    sk::connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn::from(v4)).unwrap();
    let mut s = TcpStream::from(fd);
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.write_all(b"GET /status.json HTTP/1.1\r\n\r\n").unwrap();
    // Read slowly at first: the answer waits in jobd, which goes on.
    let mut first = [0u8; 1024];
    s.read_exact(&mut first).unwrap();
    let mut out = String::new();
    TcpStream::connect(j.addr)
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert_eq!(out.trim(), "hi");
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    let whole = [&first[..], &rest[..]].concat();
    let text = String::from_utf8(whole).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(len > 32 * 1024, "{len}");
    assert_eq!(body.len(), len);
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(v["slots"].as_array().unwrap().len(), 300);
    j.stop_clean();
}

/// `/status` and `/status.json` list the last cancellations with their
/// client, reason and latencies (issue 13).
#[test]
fn the_status_page_lists_the_last_cancellations() {
    let dir = util::tempdir();
    let h = util::script(dir.path(), "h.sh", "echo started\nexec sleep 30");
    let mut j = Jobd::start_in(
        dir,
        &[
            "--prefork",
            "1",
            "--metrics-listen",
            "127.0.0.1:0",
            "--script",
            h.to_str().unwrap(),
        ],
    );
    let maddr = metrics_addr(&j);
    let (s, l) = j.request_line("");
    assert_eq!(l.trim(), "started");
    let client = s.local_addr().unwrap();
    drop(s);
    j.wait_log(|l| l.contains("job ended") && l.contains("outcome=cancelled"));
    let json = http(maddr, "GET /status.json HTTP/1.1\r\n\r\n");
    let v: serde_json::Value =
        serde_json::from_str(json.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    let c = &v["recent_cancellations"][0];
    assert_eq!(c["reason"], "client-closed", "{v}");
    assert_eq!(c["peer"], client.to_string(), "{v}");
    assert_eq!(c["seen_by"], "worker-watch", "{v}");
    assert!(
        c["gone_ms"].as_f64().unwrap() >= c["seen_after_ms"].as_f64().unwrap(),
        "{v}"
    );
    let page = http(maddr, "GET /status HTTP/1.1\r\n\r\n");
    assert!(
        page.contains("Last cancellations")
            && page.contains(&client.to_string())
            && page.contains("client-closed"),
        "{page}"
    );
    j.stop_clean();
}

/// `jobd top` (issue 13): plain snapshots when stdout is not a terminal
/// (`--count 2`: two, a second apart), with the running job's age bar and
/// the last cancellations; in a terminal (a pty from `script`), `q` quits.
#[test]
fn jobd_top_shows_ages_and_cancellations_and_q_quits() {
    let dir = util::tempdir();
    let sb = dir.path().join("sb");
    let h = util::script(dir.path(), "h.sh", "echo started\nexec sleep 30");
    let mut j = Jobd::start_in(
        dir,
        &[
            "--prefork",
            "2",
            "--scoreboard",
            sb.to_str().unwrap(),
            "--script",
            h.to_str().unwrap(),
        ],
    );
    let (gone, _) = j.request_line("");
    drop(gone);
    j.wait_log(|l| l.contains("job ended") && l.contains("outcome=cancelled"));
    let (held, _) = j.request_line("");
    let out = std::process::Command::new(util::jobd_bin())
        .args(["top", "--scoreboard", sb.to_str().unwrap(), "--count", "2"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.matches("jobd running (pid").count(), 2, "{text}");
    assert!(text.contains("job ages") && text.contains("#"), "{text}");
    assert!(
        text.contains("last cancellations") && text.contains("client-closed"),
        "{text}"
    );
    if std::path::Path::new("/usr/bin/script").exists() {
        let t = Instant::now();
        let cmd = format!("{} top --scoreboard {}", util::jobd_bin(), sb.display());
        let mut child = std::process::Command::new("/usr/bin/script")
            .args(["-qfec", &cmd, "/dev/null"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Wait for the first screen, then type q.
        let mut stdout = child.stdout.take().unwrap();
        let mut first = [0u8; 256];
        let n = stdout.read(&mut first).unwrap();
        assert!(
            String::from_utf8_lossy(&first[..n]).contains("jobd"),
            "{:?}",
            &first[..n]
        );
        child.stdin.as_mut().unwrap().write_all(b"q").unwrap();
        let mut st = None;
        let quit = util::poll_until(Instant::now() + DEADLINE, || {
            st = child.try_wait().unwrap();
            st.is_some()
        });
        if !quit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("jobd top did not quit on q");
        }
        assert!(st.unwrap().success(), "{st:?}");
        assert!(t.elapsed() < DEADLINE);
    }
    drop(held);
    j.stop_clean();
}
