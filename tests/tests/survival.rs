//! What jobd survives (issue 11): faults of its logs, its files, its
//! numbers and its descriptors, each tried on the real binary.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use crate::util::{self, DEADLINE};

/// A jobd started with stdio of the test's choosing; killed with every
/// process it started on `Drop`.
struct Bare {
    child: Child,
    tag: String,
}

impl Bare {
    fn spawn(dir: &Path, args: &[&str], stderr: Stdio) -> Bare {
        let tag = util::fresh_tag();
        let child = Command::new(util::jobd_bin())
            .args(args)
            .env("JOBD_TEST_TAG", &tag)
            .env_remove("JOBD_LOG")
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        Bare { child, tag }
    }

    /// SIGTERM, and the exit status within the deadline.
    fn stop(&mut self) -> std::process::ExitStatus {
        util::send(self.child.id() as i32, "TERM");
        let mut st = None;
        assert!(
            util::poll_until(Instant::now() + DEADLINE, || {
                st = self.child.try_wait().unwrap();
                st.is_some()
            }),
            "jobd did not stop"
        );
        util::wait_gone(&self.tag);
        st.unwrap()
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Bare {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        util::kill_tagged(&self.tag);
    }
}

/// One request to the echo handler, answered in full.
fn echo(addr: SocketAddr, word: &str) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.write_all(format!("{word}\n").as_bytes()).unwrap();
    let mut out = String::new();
    BufReader::new(&s).read_line(&mut out).unwrap();
    assert_eq!(out.trim(), word);
}

fn echo_handler(dir: &Path) -> PathBuf {
    util::script(dir, "echo.sh", "IFS= read -r l\necho \"$l\"")
}

/// Defect 1: `jobd … 2>&1 | head -1` used to die (exit 101, a panic in
/// the log writer) before its first job. With the reader of its stderr
/// gone, jobd serves on and stops cleanly.
#[test]
fn a_closed_stderr_pipe_does_not_stop_jobd() {
    let dir = util::tempdir();
    let h = echo_handler(dir.path());
    let mut j = Bare::spawn(
        dir.path(),
        &[
            "--listen",
            "127.0.0.1:0",
            "--prefork",
            "2",
            "--script",
            h.to_str().unwrap(),
        ],
        Stdio::piped(),
    );
    let mut err = BufReader::new(j.child.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    let addr = util::listen_addr(&line);
    drop(err);
    for i in 0..10 {
        echo(addr, &format!("after-close-{i}"));
    }
    assert!(j.alive());
    assert!(j.stop().success());
}

/// Defect 1, the disk: `--error-log` on a file system that is full (a
/// 256 KiB tmpfs the test mounts, filled up). Jobs go on; once space is
/// back, the next line says how many log lines were lost.
#[test]
fn a_full_disk_under_the_error_log_does_not_stop_jobd() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    let dir = util::tempdir();
    let h = echo_handler(dir.path());
    let mnt = dir.path().join("small");
    std::fs::create_dir(&mnt).unwrap();
    let _m = Tmpfs::mount(&mnt, "256k");
    let log = mnt.join("error.log");
    let mut j = Bare::spawn(
        dir.path(),
        &[
            "--listen",
            "127.0.0.1:0",
            "--prefork",
            "2",
            "--error-log",
            log.to_str().unwrap(),
            "--script",
            h.to_str().unwrap(),
        ],
        Stdio::null(),
    );
    let addr = util::listen_addr(&util::wait_file_line(&log, |l| l.contains("listening on")));
    // Fill the file system to its last byte.
    let filler = mnt.join("filler");
    {
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 4096];
        while f.write_all(&block).is_ok() {}
        while f.write_all(&[0]).is_ok() {}
    }
    for i in 0..30 {
        echo(addr, &format!("full-{i}"));
    }
    assert!(j.alive(), "jobd died with its error log on a full disk");
    std::fs::remove_file(&filler).unwrap();
    echo(addr, "space-again");
    let note = util::wait_file_line(&log, |l| l.contains("log line(s) of pid"));
    assert!(note.contains("No space left on device"), "{note}");
    assert!(j.stop().success());
}

/// A tmpfs mounted for one test, unmounted on `Drop`.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        nix::mount::mount(
            Some("tmpfs"),
            at,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some(format!("size={size},mode=0755").as_str()),
        )
        .unwrap_or_else(|e| panic!("mount tmpfs on {}: {e}", at.display()));
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Defect 2: a log or scoreboard path that is a planted symlink, a FIFO,
/// a device, a hard link or another user's file is refused at start (exit
/// 2, naming the path and why) and the file it points to is untouched;
/// a FIFO no longer hangs the start.
#[test]
fn planted_log_and_scoreboard_paths_are_refused() {
    let dir = util::tempdir();
    let h = echo_handler(dir.path());
    let victim = dir.path().join("victim");
    std::fs::write(&victim, "precious\n").unwrap();
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    let fifo = dir.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let hard = dir.path().join("hard");
    std::fs::hard_link(&victim, &hard).unwrap();
    let mut cases: Vec<(&Path, &str)> = vec![
        (&link, "symbolic link"),
        (&fifo, "a FIFO"),
        (&hard, "hard links"),
        (Path::new("/dev/null"), "not a regular file"),
    ];
    let theirs = dir.path().join("theirs");
    if nix::unistd::geteuid().is_root() {
        std::fs::write(&theirs, "").unwrap();
        nix::unistd::chown(&theirs, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
        cases.push((&theirs, "owned by uid 65534"));
    }
    for flag in ["--error-log", "--access-log", "--scoreboard"] {
        for (path, why) in &cases {
            let started = Instant::now();
            let (st, _, err) = util::run_jobd(&[
                "--listen",
                "127.0.0.1:0",
                flag,
                path.to_str().unwrap(),
                "--script",
                h.to_str().unwrap(),
            ]);
            assert_eq!(st.code(), Some(2), "{flag} {}: {err}", path.display());
            assert!(
                err.contains(path.to_str().unwrap()) && err.contains(why),
                "{flag} {}: want {why:?} in: {err}",
                path.display()
            );
            assert!(
                started.elapsed() < DEADLINE,
                "{flag} {} hung",
                path.display()
            );
        }
    }
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
}

/// Files jobd creates get documented modes: logs and scoreboard 0640.
#[test]
fn created_files_have_their_documented_modes() {
    use std::os::unix::fs::PermissionsExt;
    let dir = util::tempdir();
    let h = echo_handler(dir.path());
    let (err, acc, sb) = (
        dir.path().join("e.log"),
        dir.path().join("a.log"),
        dir.path().join("sb"),
    );
    let mut j = Bare::spawn(
        dir.path(),
        &[
            "--listen",
            "127.0.0.1:0",
            "--error-log",
            err.to_str().unwrap(),
            "--access-log",
            acc.to_str().unwrap(),
            "--scoreboard",
            sb.to_str().unwrap(),
            "--script",
            h.to_str().unwrap(),
        ],
        Stdio::null(),
    );
    util::wait_file_line(&err, |l| l.contains("listening on"));
    for p in [&err, &acc, &sb] {
        let mode = std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640, "{}", p.display());
    }
    assert!(j.stop().success());
}

/// Defect 4: a second jobd given the scoreboard of a running one refuses
/// (exit 1, naming the holder's pid); the first serves on.
#[test]
fn a_second_jobd_on_a_live_scoreboard_is_refused() {
    let dir = util::tempdir();
    let h = echo_handler(dir.path());
    let sb = dir.path().join("sb");
    let args = [
        "--listen",
        "127.0.0.1:0",
        "--scoreboard",
        sb.to_str().unwrap(),
        "--script",
        h.to_str().unwrap(),
    ];
    let mut j = Bare::spawn(dir.path(), &args, Stdio::piped());
    let mut err = BufReader::new(j.child.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    let addr = util::listen_addr(&line);
    let (st, _, msg) = util::run_jobd(&args);
    assert_eq!(st.code(), Some(1), "{msg}");
    assert!(
        msg.contains("in use by another jobd") && msg.contains(&format!("pid {}", j.child.id())),
        "{msg}"
    );
    echo(addr, "still-mine");
    assert!(j.stop().success());
    // Once it stopped, the scoreboard is free again.
    let mut again = Bare::spawn(dir.path(), &args, Stdio::piped());
    let mut err = BufReader::new(again.child.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    assert!(line.contains("listening on"), "{line}");
    assert!(again.stop().success());
}

/// Defect 4, the file shrinking: truncating the live scoreboard (to zero,
/// then to half) used to kill the supervisor with SIGBUS. jobd restores
/// its length, says so, serves on, and `jobd status` reads it again.
#[test]
fn truncating_the_live_scoreboard_does_not_kill_jobd() {
    let dir = util::tempdir();
    let h = echo_handler(dir.path());
    let sb = dir.path().join("sb");
    let mut j = Bare::spawn(
        dir.path(),
        &[
            "--listen",
            "127.0.0.1:0",
            "--prefork",
            "2",
            "--scoreboard",
            sb.to_str().unwrap(),
            "--script",
            h.to_str().unwrap(),
        ],
        Stdio::piped(),
    );
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let l2 = log.clone();
    let err = j.child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(err).lines().map_while(Result::ok) {
            l2.lock().unwrap().push(l);
        }
    });
    util::wait_until("the listening line", || {
        log.lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("listening on"))
    });
    let addr = util::listen_addr(
        log.lock()
            .unwrap()
            .iter()
            .find(|l| l.contains("listening on"))
            .unwrap(),
    );
    let full = std::fs::metadata(&sb).unwrap().len();
    for len in [0, full / 2] {
        std::fs::OpenOptions::new()
            .write(true)
            .open(&sb)
            .unwrap()
            .set_len(len)
            .unwrap();
        for i in 0..5 {
            echo(addr, &format!("after-truncate-{len}-{i}"));
        }
        util::wait_until("the length restored", || {
            std::fs::metadata(&sb).unwrap().len() == full
        });
        assert!(j.alive(), "jobd died after the scoreboard shrank to {len}");
    }
    util::wait_until("the truncation logged", || {
        log.lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("scoreboard file was truncated"))
    });
    util::wait_until("a readable status again", || {
        let out = Command::new(util::jobd_bin())
            .args(["status", "--json", "--scoreboard", sb.to_str().unwrap()])
            .output()
            .unwrap();
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("\"running\":true")
    });
    assert!(j.stop().success());
    assert!(
        !log.lock().unwrap().iter().any(|l| l.contains("panicked")),
        "{:?}",
        log.lock().unwrap()
    );
}

/// Defect 10, inheritance: a descriptor jobd inherited without
/// close-on-exec (fd 3..9 from its parent) and a signal its parent left
/// ignored (SIGQUIT, as `nohup` and some service managers leave SIGHUP or
/// SIGQUIT) do not reach handlers: they see fds 0, 1, 2 only and SIGQUIT
/// at its default.
#[test]
fn handlers_get_only_fds_0_1_2_and_default_signals() {
    use std::os::unix::process::CommandExt;
    let dir = util::tempdir();
    let h = util::script(
        dir.path(),
        "h.sh",
        concat!(
            "IFS= read -r _\n",
            "fds=''; for n in 3 4 5 6 7 8 9; do [ -e /proc/self/fd/$n ] && fds=\"$fds $n\"; done\n",
            "echo \"fds=[$fds] $(grep SigIgn /proc/self/status)\"",
        ),
    );
    let leak = std::fs::File::open("/dev/null").unwrap();
    let tag = util::fresh_tag();
    let mut cmd = Command::new(util::jobd_bin());
    cmd.args([
        "--listen",
        "127.0.0.1:0",
        "--prefork",
        "1",
        "--script",
        h.to_str().unwrap(),
    ])
    .env("JOBD_TEST_TAG", &tag)
    .env_remove("JOBD_LOG")
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    let raw = std::os::fd::AsRawFd::as_raw_fd(&leak);
    // SAFETY: between fork and exec only async-signal-safe calls: dup2
    // onto fd 5 (without close-on-exec) and signal(SIGQUIT, SIG_IGN).
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(raw, 5) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::signal(libc::SIGQUIT, libc::SIG_IGN);
            Ok(())
        });
    }
    let child = cmd.spawn().unwrap();
    let mut j = Bare { child, tag };
    let mut err = BufReader::new(j.child.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    let addr = util::listen_addr(&line);
    // jobd itself had them: the test set them up right.
    let st = std::fs::read_to_string(format!("/proc/{}/status", j.child.id())).unwrap();
    let ign = st.lines().find(|l| l.starts_with("SigIgn:")).unwrap();
    let mask = u64::from_str_radix(ign.split_whitespace().nth(1).unwrap(), 16).unwrap();
    assert_ne!(
        mask & (1 << (libc::SIGQUIT - 1)),
        0,
        "jobd should have SIGQUIT ignored: {ign}"
    );
    assert!(std::path::Path::new(&format!("/proc/{}/fd/5", j.child.id())).exists());
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.write_all(b"go\n").unwrap();
    let mut out = String::new();
    BufReader::new(&s).read_line(&mut out).unwrap();
    assert!(out.starts_with("fds=[]"), "{out}");
    let mask = u64::from_str_radix(out.trim().rsplit(['\t', ' ']).next().unwrap(), 16).unwrap();
    assert_eq!(
        mask & (1 << (libc::SIGQUIT - 1)),
        0,
        "SIGQUIT still ignored: {out}"
    );
    drop(err);
    assert!(j.stop().success());
}

/// Defect 8: a worker out of descriptors (EMFILE on accept) logged 10
/// lines a second. Now: one line when the episode starts, a back-off
/// (the failures are counted in `status`), one line with the count when
/// it ends, and the waiting client is served then.
#[test]
fn emfile_in_a_worker_is_one_line_per_episode_and_recovers() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: prlimit on another process needs root here");
        return;
    }
    let dir = util::tempdir();
    let h = echo_handler(dir.path());
    let sb = dir.path().join("sb");
    let mut j = util::Jobd::start_in(
        dir,
        &[
            "--prefork",
            "1",
            "--max-children",
            "1",
            "--scoreboard",
            sb.to_str().unwrap(),
            "--script",
            h.to_str().unwrap(),
        ],
    );
    let mut worker = 0;
    util::wait_until("an idle worker", || {
        let st = util::Jobd::status_json(&sb);
        worker = st["slots"][0]["pid"].as_i64().unwrap_or(0) as i32;
        st["slots"][0]["state"] == "idle" && worker > 0
    });
    // No descriptor number is left below the limit.
    let old = util::set_nofile(worker, util::lowest_free_fd(worker));
    let mut s = TcpStream::connect(j.addr).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.write_all(b"patience\n").unwrap();
    util::wait_until("five failed accepts", || {
        util::Jobd::status_json(&sb)["totals"]["accept_failures"]
            .as_u64()
            .unwrap()
            >= 5
    });
    util::set_nofile(worker, old);
    let mut out = String::new();
    BufReader::new(&s).read_line(&mut out).unwrap();
    assert_eq!(out.trim(), "patience");
    let end = j.wait_log(|l| l.contains("accept works again"));
    let failures: u64 = util::field(&end, "failures").parse().unwrap();
    assert!(failures >= 5, "{end}");
    assert_eq!(j.count(|l| l.contains("accept failing")), 1, "{}", j.dump());
    j.stop_clean();
}

/// Defect 7: with the supervisor at its descriptor limit, a hang-up was
/// neither acted on nor logged. Now the failure is logged once, counted
/// (`detect_failures`), no verdict is given while jobd cannot tell, and
/// the job is cancelled as soon as descriptors are free again.
#[test]
fn a_hangup_under_supervisor_fd_exhaustion_is_logged_counted_and_retried() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: prlimit on another process needs root here");
        return;
    }
    let dir = util::tempdir();
    let h = util::script(dir.path(), "slow.sh", "echo started\nexec sleep 300");
    let sb = dir.path().join("sb");
    let mut j = util::Jobd::start_in(
        dir,
        &[
            "--prefork",
            "1",
            "--max-children",
            "1",
            "--worker-watch",
            "off",
            "--detector",
            "procfs",
            "--scoreboard",
            sb.to_str().unwrap(),
            "--script",
            h.to_str().unwrap(),
        ],
    );
    let (s, line) = j.request_line("");
    assert_eq!(line.trim(), "started");
    let sup = j.pid();
    let old = util::set_nofile(sup, util::lowest_free_fd(sup));
    drop(s);
    util::wait_until("a counted detection failure", || {
        // Read by this process: the supervisor cannot open anything now.
        util::Jobd::status_json(&sb)["totals"]["detect_failures"]
            .as_u64()
            .unwrap()
            >= 1
    });
    j.wait_log(|l| l.contains("failing; further failures are counted"));
    assert_eq!(j.count(|l| l.contains("job cancelled")), 0, "{}", j.dump());
    util::set_nofile(sup, old);
    j.wait_log(|l| l.contains("job cancelled") && l.contains("reason=client-closed"));
    j.wait_log(|l| l.contains("works again"));
    j.stop_clean();
}

/// Defect 9: a cancel of a job whose worker is stopped (SIGSTOP) waited
/// until the worker resumed. Now the supervisor kills the stopped worker
/// (its own child) once the kill grace is over, and the job goes with it;
/// the job is recorded as cancelled, and the slot serves again.
#[test]
fn a_stopped_workers_job_is_still_cancelled_within_the_kill_grace() {
    let dir = util::tempdir();
    let h = util::script(dir.path(), "slow.sh", "echo \"started $$\"\nexec sleep 300");
    let mut j = util::Jobd::start_in(
        dir,
        &[
            "--prefork",
            "1",
            "--kill-grace",
            "300ms",
            "--script",
            h.to_str().unwrap(),
        ],
    );
    let (s, line) = j.request_line("");
    let handler: i32 = line
        .trim()
        .strip_prefix("started ")
        .unwrap()
        .parse()
        .unwrap();
    let worker = util::parent_of(handler);
    util::send(worker, "STOP");
    let hung_up = Instant::now();
    drop(s);
    util::wait_until("the stopped worker's job gone", || !util::alive(handler));
    let took = hung_up.elapsed();
    assert!(!util::alive(worker), "the stopped worker was killed");
    j.wait_log(|l| {
        l.contains("did not carry out the cancel within the kill grace")
            && l.contains("stopped=true")
    });
    let end = j.wait_log(|l| l.contains("job ended") && l.contains("job=1 "));
    assert!(end.contains("outcome=cancelled"), "{end}");
    eprintln!(
        "stopped worker's job gone {} ms after the hang-up",
        took.as_millis()
    );
    // The slot has a new worker that serves.
    let (s2, line) = j.request_line("");
    assert!(line.starts_with("started "), "{line}");
    drop(s2);
    j.wait_log(|l| l.contains("job ended") && l.contains("job=2 "));
    assert_eq!(j.count(|l| l.contains("dying quickly")), 0, "{}", j.dump());
    j.stop_clean();
}

/// Defect 9, the handler side: a handler that stopped itself (SIGSTOP)
/// waited out the whole kill grace, since SIGTERM alone does not wake it.
/// jobd sends SIGCONT with the SIGTERM: it goes at once.
#[test]
fn a_stopped_handler_is_cancelled_without_waiting_out_the_kill_grace() {
    let dir = util::tempdir();
    let h = util::script(
        dir.path(),
        "stop.sh",
        "echo \"started $$\"\nkill -STOP $$\necho resumed",
    );
    let mut j = util::Jobd::start_in(
        dir,
        &[
            "--prefork",
            "1",
            "--kill-grace",
            "30s",
            "--script",
            h.to_str().unwrap(),
        ],
    );
    let (s, line) = j.request_line("");
    let handler: i32 = line
        .trim()
        .strip_prefix("started ")
        .unwrap()
        .parse()
        .unwrap();
    util::wait_until("the handler stopped", || {
        std::fs::read_to_string(format!("/proc/{handler}/stat"))
            .is_ok_and(|st| st.rsplit(") ").next().is_some_and(|r| r.starts_with('T')))
    });
    drop(s);
    let end = j.wait_log(|l| l.contains("job ended") && l.contains("job=1 "));
    assert!(end.contains("outcome=cancelled"), "{end}");
    let ms: u64 = util::field(&end, "duration_ms").parse().unwrap();
    assert!(
        ms < 10_000,
        "the stopped handler waited out the kill grace: {end}"
    );
    j.stop_clean();
}

/// A TCP connection to `to` from the local address `from` (loopback
/// 127.0.0.0/8 lets a test be several clients).
fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, SockaddrIn, bind, connect, socket};
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    let local: std::net::SocketAddrV4 = format!("{from}:0").parse().unwrap();
    bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrIn::from(local),
    )
    .unwrap();
    let SocketAddr::V4(to) = to else {
        panic!("IPv4 only")
    };
    connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn::from(to)).unwrap();
    let s = TcpStream::from(fd);
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s
}

/// Defect 11: one client could take every worker. With
/// `--max-per-source 2`, a third connection from the same address is
/// closed at once with no job (one log line, counted in `status`), while
/// another address is served; once a job of the first ends, it is
/// admitted again.
#[test]
fn max_per_source_keeps_one_client_from_taking_every_worker() {
    let dir = util::tempdir();
    let sb = dir.path().join("sb");
    let h = util::script(
        dir.path(),
        "h.sh",
        "echo \"started $TCPREMOTEIP\"\nIFS= read -r _",
    );
    let mut j = util::Jobd::start_in(
        dir,
        &[
            "--prefork",
            "4",
            "--max-per-source",
            "2",
            "--scoreboard",
            sb.to_str().unwrap(),
            "--script",
            h.to_str().unwrap(),
        ],
    );
    let line = |s: &TcpStream| {
        let mut l = String::new();
        BufReader::new(s).read_line(&mut l).unwrap();
        l
    };
    let a1 = connect_from("127.0.0.1", j.addr);
    assert_eq!(line(&a1).trim(), "started 127.0.0.1");
    let a2 = connect_from("127.0.0.1", j.addr);
    assert_eq!(line(&a2).trim(), "started 127.0.0.1");
    for _ in 0..3 {
        let over = connect_from("127.0.0.1", j.addr);
        assert_eq!(
            line(&over),
            "",
            "a connection over the limit is closed with no job"
        );
    }
    let b = connect_from("127.0.0.2", j.addr);
    assert_eq!(line(&b).trim(), "started 127.0.0.2");
    let t = &util::Jobd::status_json(&sb)["totals"];
    assert_eq!(t["per_source_refused"], 3, "{t}");
    assert_eq!(t["busy"], 3, "{t}");
    assert_eq!(
        j.count(|l| l.contains("--max-per-source: 127.0.0.1 already runs 2 jobs")),
        1,
        "{}",
        j.dump()
    );
    let over = j.wait_log(|l| l.contains("the episode is over"));
    assert_eq!(util::field(&over, "refused"), "3", "{over}");
    // One of the first two ends: the address may run another.
    (&a1).write_all(b"bye\n").unwrap();
    drop(a1);
    j.wait_log(|l| l.contains("job ended") && l.contains("peer=127.0.0.1:"));
    let a3 = connect_from("127.0.0.1", j.addr);
    assert_eq!(line(&a3).trim(), "started 127.0.0.1");
    // (The log line may come after the handler's answer: wait for it.)
    j.wait_log_n(4, &|l| l.contains("job started"));
    assert_eq!(j.count(|l| l.contains("job started")), 4, "{}", j.dump());
    drop((a2, a3, b));
    j.stop_clean();
}

/// Defect 10, the environment: `--clear-env` starts handlers from
/// nothing but PATH, the tcpserver and JOBD_* variables, `--pass-env` and
/// `--env` (which cannot override the per-job variables); without it, the
/// handler gets jobd's environment plus `--env`.
#[test]
fn clear_env_pass_env_and_env_choose_the_handlers_environment() {
    let dir = util::tempdir();
    let h = util::script(dir.path(), "env.sh", "IFS= read -r _\nenv | sort");
    let run = |extra: &[&str]| -> String {
        let tag = util::fresh_tag();
        let mut args = vec!["--listen", "127.0.0.1:0", "--prefork", "1"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--script", h.to_str().unwrap()]);
        let mut child = Command::new(util::jobd_bin())
            .args(&args)
            .env("JOBD_TEST_TAG", &tag)
            .env("SECRET_TOKEN", "hunter2")
            .env("KEEP_ME", "kept")
            .env_remove("JOBD_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut err = BufReader::new(child.stderr.take().unwrap());
        let mut first = String::new();
        err.read_line(&mut first).unwrap();
        let mut bare = Bare { child, tag };
        let mut s = TcpStream::connect(util::listen_addr(&first)).unwrap();
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        s.write_all(b"go\n").unwrap();
        let mut out = String::new();
        std::io::Read::read_to_string(&mut s, &mut out).unwrap();
        drop(err);
        assert!(bare.stop().success());
        out
    };
    let clean = run(&[
        "--clear-env",
        "--pass-env",
        "KEEP_ME",
        "--env",
        "GREETING=hello world",
        "--env",
        "TCPREMOTEIP=forged",
    ]);
    let keys: Vec<&str> = clean
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, _)| k)
        .collect();
    for want in [
        "PATH",
        "KEEP_ME",
        "GREETING",
        "TCPREMOTEIP",
        "TCPREMOTEPORT",
        "PROTO",
        "JOBD_JOB_ID",
        "JOBD_SLOT",
    ] {
        assert!(keys.contains(&want), "{want} missing in:\n{clean}");
    }
    assert!(!clean.contains("SECRET_TOKEN"), "{clean}");
    assert!(!clean.contains("JOBD_TEST_TAG"), "{clean}");
    assert!(clean.contains("GREETING=hello world\n"), "{clean}");
    assert!(
        clean.contains("TCPREMOTEIP=127.0.0.1\n"),
        "--env overrode a per-job variable:\n{clean}"
    );
    let full = run(&["--env", "GREETING=hi"]);
    assert!(
        full.contains("SECRET_TOKEN=hunter2\n") && full.contains("GREETING=hi\n"),
        "{full}"
    );
    let (st, _, err) = util::run_jobd(&["--pass-env", "KEEP_ME", "--script", h.to_str().unwrap()]);
    assert_eq!(st.code(), Some(2), "{err}");
    assert!(
        err.contains("--pass-env") && err.contains("--clear-env"),
        "{err}"
    );
}

/// A full disk under the access log: every job still runs and is
/// answered; the failure is one warning per episode (it was one per job),
/// and one line with the count once lines fit again.
#[test]
fn a_full_disk_under_the_access_log_is_one_line_per_episode() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    let dir = util::tempdir();
    let h = echo_handler(dir.path());
    let mnt = dir.path().join("small");
    std::fs::create_dir(&mnt).unwrap();
    let _m = Tmpfs::mount(&mnt, "64k");
    let access = mnt.join("access.log");
    let mut j = util::Jobd::start_in(
        dir,
        &[
            "--prefork",
            "1",
            "--max-children",
            "1",
            "--access-log",
            access.to_str().unwrap(),
            "--script",
            h.to_str().unwrap(),
        ],
    );
    let filler = mnt.join("filler");
    {
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 4096];
        while f.write_all(&block).is_ok() {}
        while f.write_all(&[0]).is_ok() {}
    }
    for i in 0..40 {
        echo(j.addr, &format!("full-{i}"));
    }
    j.wait_log_n(40, &|l| l.contains("job ended"));
    let failing = j.count(|l| l.contains("writing the access log failing"));
    assert_eq!(
        failing,
        1,
        "one line per episode, not per job:\n{}",
        j.dump()
    );
    std::fs::remove_file(&filler).unwrap();
    for i in 0..4 {
        echo(j.addr, &format!("space-{i}"));
    }
    j.wait_log(|l| l.contains("writing the access log works again"));
    j.stop_clean();
}
