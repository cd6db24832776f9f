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
        &["--listen", "127.0.0.1:0", "--prefork", "2", "--script", h.to_str().unwrap()],
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
