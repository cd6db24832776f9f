//! End to end behind a real load balancer (the PROXY protocol issue): an
//! HAProxy (`mode tcp`, `balance leastconn`, `send-proxy-v2`, health
//! checks every 200 ms) in front of two jobd "hosts", each a network
//! namespace of its own, and clients in the test's namespace, each from
//! an address of its own.
//!
//! Topology (10.A.B.0/24 picked per run, free in the test's namespace):
//!
//! ```text
//! test ns: clients 10.A.B.10..  ── veth ── lb ns: HAProxy 10.A.B.2:8000
//!                                          │ 10.A.B.65 ── veth ── b1 ns: jobd 10.A.B.66:7000
//!                                          │ 10.A.B.129 ─ veth ── b2 ns: jobd 10.A.B.130:7000
//! ```
//!
//! The backends are reached only from the balancer's namespace (veth
//! pairs between it and each host): nothing is routed or bridged in the
//! test's namespace, so no sysctl or firewall of the machine is touched.
//! When network namespaces cannot be made (no permission), the test says
//! so loudly and runs the same scenario on loopback addresses (backends
//! 127.0.0.2 and 127.0.0.3, HAProxy 127.0.0.4); `JOBD_E2E_LOOPBACK=1`
//! forces that. Without HAProxy it fails: `.ci/run` installs it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::util::{self, DEADLINE};

/// Clients of each phase.
const SPREAD_CLIENTS: usize = 20;
const ABORTS: usize = 4;
const LONG_JOBS: usize = 2;
const DRAIN_CLIENTS: usize = 10;
const ALL_JOBS: usize = SPREAD_CLIENTS + ABORTS + LONG_JOBS + DRAIN_CLIENTS;
/// The upgrade's clients: its two long jobs, and the load of short jobs
/// (all from one address).
const UPGRADE_LONGS: usize = 2;
const CLIENT_ADDRS: usize = ALL_JOBS + UPGRADE_LONGS + 1;
/// Bounds of the load of short jobs during the upgrade.
const LOAD_MAX_JOBS: usize = 5000;

/// Lines of the long job's answer, after its `started` line.
const LONG_LINES: usize = 5000;

/// The handler: its first line says what to do; every answer ends with
/// what it was told about its client and balancer, and which host it ran
/// on (`E2E_HOST`, set with `--env`).
const HANDLER: &str = r#"
IFS=' ' read -r cmd arg || exit 1
me="$TCPREMOTEIP $TCPREMOTEPORT $TCPPROXYIP $TCPPROXYPORT $E2E_HOST"
case "$cmd" in
hello)
  echo "hello $arg $me" ;;
short)
  # Which supervisor ran it: the one of our worker ($PPID).
  read -r _ _ _ sup _ < /proc/$PPID/stat
  echo "short $arg $sup $E2E_HOST" ;;
hold)
  # Silent until cancelled: the handler and a child, pids to a file.
  sleep 600 &
  echo "$$ $! $me" > "@DIR@/hold-$arg.tmp" && mv "@DIR@/hold-$arg.tmp" "@DIR@/hold-$arg"
  wait ;;
long)
  # Runs until the test writes to its FIFO, then answers at length.
  echo "started $arg $me"
  read -r go < "@DIR@/go-$arg"
  seq 1 @LINES@
  echo "finished $arg $me" ;;
*)
  echo "unknown $cmd"; exit 1 ;;
esac
"#;

// ---- processes ----

/// A process's stderr as read so far, and whether it ended (every
/// process holding the pipe closed it: after an upgrade, the new jobd
/// holds the old one's).
#[derive(Default)]
struct LogBuf {
    lines: Vec<(Instant, String)>,
    eof: bool,
}

type Log = Arc<(Mutex<LogBuf>, Condvar)>;

/// A process of the test (jobd or HAProxy, maybe through `ip netns
/// exec`, which execs it: the child's pid is its pid), with its stderr
/// collected. On `Drop` it is stopped and every process carrying its tag
/// is killed, by PID.
struct Proc {
    name: String,
    child: Child,
    tag: String,
    log: Log,
    exited: Option<ExitStatus>,
    /// The signal that stops it on `Drop` before SIGKILL.
    stop_signal: &'static str,
}

impl Proc {
    fn spawn(
        name: &str,
        ns: Option<&str>,
        program: &str,
        args: &[String],
        env: &[(&str, &str)],
        stop_signal: &'static str,
    ) -> Proc {
        let tag = util::fresh_tag();
        let mut cmd = match ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, program]);
                c
            }
            None => Command::new(program),
        };
        cmd.args(args)
            .env("JOBD_TEST_TAG", &tag)
            .env_remove("JOBD_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({program}): {e}"));
        let log: Log = Arc::new((Mutex::new(LogBuf::default()), Condvar::new()));
        let stderr = child.stderr.take().unwrap();
        let l2 = log.clone();
        std::thread::spawn(move || {
            let (m, cv) = &*l2;
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                m.lock().unwrap().lines.push((Instant::now(), line));
                cv.notify_all();
            }
            m.lock().unwrap().eof = true;
            cv.notify_all();
        });
        Proc {
            name: name.to_string(),
            child,
            tag,
            log,
            exited: None,
            stop_signal,
        }
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn lines(&self) -> Vec<String> {
        let g = self.log.0.lock().unwrap();
        g.lines.iter().map(|(_, l)| l.clone()).collect()
    }

    fn timed_lines(&self, pred: impl Fn(&str) -> bool) -> Vec<(Instant, String)> {
        let g = self.log.0.lock().unwrap();
        g.lines.iter().filter(|(_, l)| pred(l)).cloned().collect()
    }

    fn count(&self, pred: impl Fn(&str) -> bool) -> usize {
        self.lines().iter().filter(|l| pred(l)).count()
    }

    fn running(&mut self) -> bool {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().unwrap();
        }
        self.exited.is_none()
    }

    /// Waits until `n` lines match `pred` (or its log ends, or the
    /// deadline passes: a panic with the log). The end of the log, not the
    /// exit of the process, is what says no more line will come: a line
    /// read after the exit was seen is still found, and the old jobd of an
    /// upgrade has exited while the new one still writes to the same pipe.
    fn wait_lines(&mut self, n: usize, pred: impl Fn(&str) -> bool) -> Vec<String> {
        let deadline = Instant::now() + DEADLINE;
        let why = loop {
            let (m, cv) = &*self.log;
            let g = m.lock().unwrap();
            let found: Vec<String> = g
                .lines
                .iter()
                .filter(|(_, l)| pred(l))
                .map(|(_, l)| l.clone())
                .collect();
            if found.len() >= n {
                return found;
            }
            if g.eof {
                break "its log ended";
            }
            let now = Instant::now();
            if now >= deadline {
                break "timed out";
            }
            // Woken by each new line and by the end of the log.
            let _ = cv.wait_timeout(g, deadline - now).unwrap();
        };
        self.running();
        panic!(
            "{}: {why} waiting for {n} matching log lines (exit status {:?}); log:\n{}",
            self.name,
            self.exited,
            self.lines().join("\n")
        );
    }

    /// Waits until every process holding its stderr closed it: its log is
    /// complete.
    fn wait_log_end(&self) {
        let (m, cv) = &*self.log;
        let g = m.lock().unwrap();
        let (g, t) = cv.wait_timeout_while(g, DEADLINE, |g| !g.eof).unwrap();
        assert!(
            !t.timed_out(),
            "{}: its log did not end (a process still holds its stderr)",
            self.name
        );
        drop(g);
    }

    fn wait_line(&mut self, pred: impl Fn(&str) -> bool) -> String {
        self.wait_lines(1, pred).pop().unwrap()
    }

    fn wait_exit(&mut self) -> ExitStatus {
        let ok = util::poll_until(Instant::now() + DEADLINE, || !self.running());
        assert!(
            ok,
            "{} did not exit; log:\n{}",
            self.name,
            self.lines().join("\n")
        );
        self.exited.unwrap()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.running() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.pid()),
                format!("SIG{}", self.stop_signal)
                    .parse::<nix::sys::signal::Signal>()
                    .unwrap(),
            );
            util::poll_until(Instant::now() + Duration::from_secs(5), || !self.running());
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        util::kill_tagged(&self.tag);
    }
}

// ---- the network ----

/// Runs `ip ARGS`; Err(stderr) on failure.
fn ip(args: &[&str]) -> Result<String, String> {
    ip_with_stdin(args, None)
}

fn ip_with_stdin(args: &[&str], stdin: Option<&str>) -> Result<String, String> {
    let mut c = Command::new("ip")
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("ip {args:?}: {e}"))?;
    if let Some(text) = stdin {
        c.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    }
    let out = c.wait_with_output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The namespaces and the one test-side link the test made; removed on
/// `Drop` (after the processes in them: see [`World`]).
struct Netns {
    namespaces: Vec<String>,
    links: Vec<String>,
}

impl Netns {
    fn remove(&mut self) {
        for l in self.links.drain(..) {
            // Gone already when its peer's namespace went.
            let _ = ip(&["link", "del", &l]);
        }
        for n in self.namespaces.drain(..) {
            if let Err(e) = ip(&["netns", "del", &n]) {
                eprintln!("haproxy e2e: failed to remove network namespace {n}: {e}");
            }
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.remove();
    }
}

/// Where everything lives.
struct Topology {
    /// `None`: the loopback fallback.
    net: Option<Netns>,
    lb_ns: Option<String>,
    backend_ns: [Option<String>; 2],
    /// HAProxy's frontend (port 0 in the fallback until picked).
    front: SocketAddr,
    /// HAProxy's source address toward each backend.
    lb_inner: [Ipv4Addr; 2],
    /// The backends' listening addresses (port 0: read from their log).
    backend: [SocketAddr; 2],
    /// One source address per client.
    clients: Vec<Ipv4Addr>,
}

static RUNS: AtomicU64 = AtomicU64::new(0);

/// Whether the IPv4 prefix `a/len` overlaps `b/blen`.
fn overlaps(a: Ipv4Addr, len: u32, b: Ipv4Addr, blen: u32) -> bool {
    let l = len.min(blen);
    let mask = if l == 0 { 0 } else { u32::MAX << (32 - l) };
    (u32::from(a) & mask) == (u32::from(b) & mask)
}

/// A 10.A.B.0/24 no route of the test's namespace touches (other runs of
/// this test included: theirs are in the table while they run).
fn free_subnet() -> Result<Ipv4Addr, String> {
    let routes = ip(&["-4", "-o", "route", "show", "table", "all"])?;
    let taken: Vec<(Ipv4Addr, u32)> = routes
        .lines()
        .filter_map(|l| {
            let mut t = l.split_whitespace();
            let mut first = t.next()?;
            if [
                "local",
                "broadcast",
                "unicast",
                "multicast",
                "anycast",
                "blackhole",
                "unreachable",
                "prohibit",
                "throw",
                "nat",
            ]
            .contains(&first)
            {
                first = t.next()?;
            }
            if first == "default" {
                return None;
            }
            let (a, len) = first.split_once('/').unwrap_or((first, "32"));
            Some((a.parse().ok()?, len.parse().ok()?))
        })
        .collect();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    let mut seed = (u64::from(std::process::id()) << 20) ^ nanos;
    for _ in 0..200 {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let a = 16 + ((seed >> 33) % 224) as u8;
        let b = ((seed >> 45) % 256) as u8;
        let net = Ipv4Addr::new(10, a, b, 0);
        if !taken.iter().any(|&(t, l)| overlaps(net, 24, t, l)) {
            return Ok(net);
        }
    }
    Err("no free 10.x.y.0/24 found".into())
}

/// Removes namespaces of earlier runs of this test whose process is gone
/// (a run that was SIGKILLed could not clean up).
fn sweep_dead_runs() {
    let Ok(list) = ip(&["netns", "list"]) else {
        return;
    };
    for l in list.lines() {
        let name = l.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix("jobd-e2e-") else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!("haproxy e2e: removing {name}, left by a dead run (pid {pid})");
            let _ = ip(&["netns", "del", name]);
        }
    }
}

/// Builds the three hosts; Err (with what failed) when this machine does
/// not let the test make network namespaces.
fn namespaces() -> Result<Topology, String> {
    let run = RUNS.fetch_add(1, Ordering::Relaxed);
    let tag = format!("{}-{run}", std::process::id());
    let short = format!("{:05x}{run:x}", std::process::id() & 0xfffff);
    let mut net = Netns {
        namespaces: vec![],
        links: vec![],
    };
    let ns = |role: &str| format!("jobd-e2e-{tag}-{role}");
    for role in ["lb", "b1", "b2"] {
        ip(&["netns", "add", &ns(role)])?;
        net.namespaces.push(ns(role));
    }
    let base = free_subnet()?;
    let o = base.octets();
    let at = |last: u8| Ipv4Addr::new(o[0], o[1], o[2], last);
    let root_if = format!("je{short}r");
    // The test's side: its address and one per client.
    ip(&[
        "link",
        "add",
        &root_if,
        "type",
        "veth",
        "peer",
        "name",
        "lb0",
        "netns",
        &ns("lb"),
    ])?;
    net.links.push(root_if.clone());
    let clients: Vec<Ipv4Addr> = (0..CLIENT_ADDRS as u8).map(|i| at(10 + i)).collect();
    let mut batch = format!("addr add {}/26 dev {root_if}\n", at(1));
    for c in &clients {
        batch += &format!("addr add {c}/32 dev {root_if}\n");
    }
    batch += &format!("link set {root_if} up\n");
    ip_with_stdin(&["-batch", "-"], Some(&batch))?;
    // The balancer: toward the test, and one link to each host.
    let lb = ns("lb");
    let mut lb_batch = format!(
        "addr add {}/26 dev lb0\nlink set lb0 up\nlink set lo up\n",
        at(2)
    );
    // b1 on 10.A.B.64/26, b2 on 10.A.B.128/26: the balancer .65 / .129,
    // the host .66 / .130.
    let lb_inner = [at(65), at(129)];
    let backend = [
        SocketAddr::from((at(66), 7000)),
        SocketAddr::from((at(130), 7000)),
    ];
    for (i, host) in ["b1", "b2"].into_iter().enumerate() {
        ip(&[
            "link",
            "add",
            &format!("to{host}"),
            "netns",
            &lb,
            "type",
            "veth",
            "peer",
            "name",
            "up0",
            "netns",
            &ns(host),
        ])?;
        lb_batch += &format!(
            "addr add {}/26 dev to{host}\nlink set to{host} up\n",
            lb_inner[i]
        );
        ip_with_stdin(
            &["-n", &ns(host), "-batch", "-"],
            Some(&format!(
                "addr add {}/26 dev up0\nlink set up0 up\nlink set lo up\n",
                backend[i].ip()
            )),
        )?;
    }
    ip_with_stdin(&["-n", &lb, "-batch", "-"], Some(&lb_batch))?;
    Ok(Topology {
        lb_ns: Some(lb),
        backend_ns: [Some(ns("b1")), Some(ns("b2"))],
        net: Some(net),
        front: SocketAddr::from((at(2), 8000)),
        lb_inner,
        backend,
        clients,
    })
}

fn loopback() -> Topology {
    let lb = Ipv4Addr::new(127, 0, 0, 4);
    Topology {
        net: None,
        lb_ns: None,
        backend_ns: [None, None],
        front: SocketAddr::from((lb, 0)),
        lb_inner: [lb, lb],
        backend: [
            SocketAddr::from(([127, 0, 0, 2], 0)),
            SocketAddr::from(([127, 0, 0, 3], 0)),
        ],
        clients: (0..CLIENT_ADDRS as u8)
            .map(|i| Ipv4Addr::new(127, 0, 1, 10 + i))
            .collect(),
    }
}

// ---- clients ----

/// A client connection from `src` (port picked by the kernel) to `dst`.
fn connect_from(src: Ipv4Addr, dst: SocketAddr) -> TcpStream {
    try_connect_from(src, dst).unwrap_or_else(|e| panic!("{e}"))
}

/// [`connect_from`], its failure an error (with what failed).
fn try_connect_from(src: Ipv4Addr, dst: SocketAddr) -> Result<TcpStream, String> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, SockaddrIn, bind, connect, socket};
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| format!("socket: {e}"))?;
    bind(fd.as_raw_fd(), &SockaddrIn::from(SocketAddrV4::new(src, 0)))
        .map_err(|e| format!("bind {src}: {e}"))?;
    let SocketAddr::V4(d) = dst else {
        unreachable!()
    };
    connect(fd.as_raw_fd(), &SockaddrIn::from(d))
        .map_err(|e| format!("connect {src} -> {dst}: {e}"))?;
    let s = TcpStream::from(fd);
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    Ok(s)
}

/// A long job's client: its stream, a reader of it, what its handler saw,
/// its address.
type Long = (TcpStream, BufReader<TcpStream>, Seen, SocketAddr);

/// What a handler said about itself: the words after `<verb> <arg>`.
#[derive(Debug, Clone)]
struct Seen {
    remote: SocketAddr,
    proxy_ip: Ipv4Addr,
    host: usize,
}

fn parse_seen(words: &[&str], line: &str) -> Seen {
    assert_eq!(words.len(), 5, "unexpected answer {line:?}");
    Seen {
        remote: format!("{}:{}", words[0], words[1])
            .parse()
            .unwrap_or_else(|_| panic!("bad address in {line:?}")),
        proxy_ip: words[2]
            .parse()
            .unwrap_or_else(|_| panic!("bad TCPPROXYIP in {line:?}")),
        host: match words[4] {
            "b1" => 0,
            "b2" => 1,
            h => panic!("unknown host {h:?} in {line:?}"),
        },
    }
}

/// One `hello` job: (the client's own address, what its handler saw).
fn hello(src: Ipv4Addr, front: SocketAddr, i: usize) -> (SocketAddr, Seen) {
    let mut s = connect_from(src, front);
    let me = s.local_addr().unwrap();
    s.write_all(format!("hello {i}\n").as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out)
        .unwrap_or_else(|e| panic!("client {me} (hello {i}): {e}"));
    let line = out.trim();
    let w: Vec<&str> = line.split(' ').collect();
    assert!(
        w.len() == 7 && w[0] == "hello" && w[1] == i.to_string(),
        "client {me} got {out:?}"
    );
    (me, parse_seen(&w[2..], line))
}

/// Runs `n` hello clients at once, from `srcs`.
fn hellos(srcs: &[Ipv4Addr], front: SocketAddr, first: usize) -> Vec<(SocketAddr, Seen)> {
    std::thread::scope(|s| {
        let hs: Vec<_> = srcs
            .iter()
            .enumerate()
            .map(|(i, &src)| s.spawn(move || hello(src, front, first + i)))
            .collect();
        hs.into_iter()
            .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    })
}

/// Starts long job `arg` from `src`: its client's stream, a reader of it,
/// what its handler saw, and the client's address.
fn start_long(d: &Path, arg: &str, src: Ipv4Addr, front: SocketAddr) -> Long {
    nix::unistd::mkfifo(
        &d.join(format!("go-{arg}")),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    let mut s = connect_from(src, front);
    let me = s.local_addr().unwrap();
    s.write_all(format!("long {arg}\n").as_bytes()).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut first = String::new();
    r.read_line(&mut first).unwrap();
    let words: Vec<&str> = first.split_whitespace().collect();
    assert!(
        words.len() == 7 && words[0] == "started" && words[1] == arg,
        "long job {arg}: {first:?}"
    );
    let seen = parse_seen(&words[2..], &first);
    assert_eq!(seen.remote, me, "long job {arg}: {first:?}");
    (s, r, seen, me)
}

/// Lets long job `arg` go on (through its FIFO) and reads the rest of its
/// answer: all of it, in order.
fn finish_long(d: &Path, arg: &str, r: &mut BufReader<TcpStream>, me: SocketAddr) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(d.join(format!("go-{arg}")))
        .unwrap()
        .write_all(b"go\n")
        .unwrap();
    let mut rest = String::new();
    r.read_to_string(&mut rest)
        .unwrap_or_else(|e| panic!("long job {arg} ({me}): {e}"));
    let lines: Vec<&str> = rest.lines().collect();
    assert_eq!(
        lines.len(),
        LONG_LINES + 1,
        "long job {arg} ({me}): a short answer"
    );
    assert!(
        lines[..LONG_LINES]
            .iter()
            .enumerate()
            .all(|(i, l)| *l == (i + 1).to_string()),
        "long job {arg}: a garbled answer"
    );
    assert!(
        lines[LONG_LINES].starts_with(&format!("finished {arg} {} {} ", me.ip(), me.port())),
        "long job {arg}: {:?}",
        lines[LONG_LINES]
    );
}

/// The pids of hold job `arg` (its handler and the handler's child), and
/// what it saw, from the file it writes.
fn hold_pids(d: &Path, arg: &str) -> (i32, i32, Seen) {
    let file = d.join(format!("hold-{arg}"));
    let mut text = String::new();
    util::wait_until(&format!("the pids of hold job {arg}"), || {
        text = std::fs::read_to_string(&file).unwrap_or_default();
        !text.is_empty()
    });
    let words: Vec<&str> = text.split_whitespace().collect();
    assert_eq!(words.len(), 7, "{text:?}");
    (
        words[0].parse().unwrap(),
        words[1].parse().unwrap(),
        parse_seen(&words[2..], &text),
    )
}

/// One job of the upgrade's load: when its client connected and got its
/// whole answer, and the supervisor that ran it (or what failed).
struct Short {
    start: Instant,
    end: Instant,
    sup: Result<i32, String>,
}

/// One `short` job from `src`, expected on `host`: the pid of the
/// supervisor that ran it.
fn short(src: Ipv4Addr, front: SocketAddr, i: usize, host: &str) -> Result<i32, String> {
    let mut s = try_connect_from(src, front)?;
    let me = s.local_addr().map_err(|e| e.to_string())?;
    s.write_all(format!("short {i}\n").as_bytes())
        .map_err(|e| format!("{me}: write: {e}"))?;
    let mut out = String::new();
    s.read_to_string(&mut out)
        .map_err(|e| format!("{me}: read: {e} (after {out:?})"))?;
    let w: Vec<&str> = out.split_whitespace().collect();
    match w[..] {
        ["short", n, sup, h] if n == i.to_string() && h == host => {
            sup.parse().map_err(|_| format!("{me}: {out:?}"))
        }
        _ => Err(format!("{me}: answer {out:?}")),
    }
}

/// A load of short jobs, back to back, from one client address: until
/// stopped, [`LOAD_MAX_JOBS`] jobs, or [`DEADLINE`]. Stopped on `Drop`.
struct Load {
    stop: Arc<AtomicBool>,
    done: Arc<Mutex<Vec<Short>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(src: Ipv4Addr, front: SocketAddr, host: &'static str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(Mutex::new(Vec::new()));
        let (stop2, done2) = (stop.clone(), done.clone());
        let thread = std::thread::spawn(move || {
            let until = Instant::now() + DEADLINE;
            for i in 0..LOAD_MAX_JOBS {
                if stop2.load(Ordering::Relaxed) || Instant::now() >= until {
                    break;
                }
                let start = Instant::now();
                let sup = short(src, front, i, host);
                let end = Instant::now();
                done2.lock().unwrap().push(Short { start, end, sup });
            }
        });
        Load {
            stop,
            done,
            thread: Some(thread),
        }
    }

    /// How many jobs ended (answered or failed) that `pred` accepts.
    fn count(&self, pred: impl Fn(&Short) -> bool) -> usize {
        self.done.lock().unwrap().iter().filter(|s| pred(s)).count()
    }

    fn finish(mut self) -> Vec<Short> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        std::mem::take(&mut *self.done.lock().unwrap())
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The parent of process `pid`.
fn ppid(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(") ")
        .next()?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The supervisor of job handler `pid`: its worker's parent.
fn supervisor_of(pid: i32) -> Option<i32> {
    ppid(ppid(pid)?)
}

// ---- HAProxy ----

fn haproxy_config(t: &Topology, backend: [SocketAddr; 2], sock: &Path) -> String {
    format!(
        "global
    stats socket {sock} mode 600 level admin
    log stderr format raw local0 info

defaults
    mode tcp
    log global
    option tcplog
    option abortonclose
    option redispatch
    retries 3
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    timeout check 1s

frontend fe
    bind {front}
    default_backend jobd

backend jobd
    balance leastconn
    server b1 {b1} send-proxy-v2 check inter 200ms source {s1}
    server b2 {b2} send-proxy-v2 check inter 200ms source {s2}
",
        sock = sock.display(),
        front = t.front,
        b1 = backend[0],
        b2 = backend[1],
        s1 = t.lb_inner[0],
        s2 = t.lb_inner[1],
    )
}

/// `show stat` on HAProxy's stats socket: one map per row.
fn show_stat(sock: &Path) -> Vec<std::collections::HashMap<String, String>> {
    let Ok(mut s) = std::os::unix::net::UnixStream::connect(sock) else {
        return vec![];
    };
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    if s.write_all(b"show stat\n").is_err() {
        return vec![];
    }
    let mut out = String::new();
    if s.read_to_string(&mut out).is_err() {
        return vec![];
    }
    let mut lines = out.lines();
    let Some(head) = lines.next().and_then(|h| h.strip_prefix("# ")) else {
        return vec![];
    };
    let keys: Vec<&str> = head.split(',').collect();
    lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            keys.iter()
                .zip(l.split(','))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        })
        .collect()
}

/// A field of server `name` in backend `jobd` (empty if unknown).
fn server_field(sock: &Path, name: &str, key: &str) -> String {
    show_stat(sock)
        .into_iter()
        .find(|r| r.get("pxname").is_some_and(|p| p == "jobd") && r["svname"] == name)
        .and_then(|r| r.get(key).cloned())
        .unwrap_or_default()
}

// ---- the scenario ----

/// Everything the test started; dropped in field order: HAProxy, the
/// backends, then the namespaces they ran in.
struct World {
    haproxy: Option<Proc>,
    backends: Vec<Proc>,
    topo: Topology,
    stats: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for World {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let mut all: Vec<&Proc> = self.backends.iter().collect();
            all.extend(self.haproxy.iter());
            for p in all {
                let lines = p.lines();
                let from = lines.len().saturating_sub(150);
                eprintln!(
                    "---- {} (last {} lines) ----\n{}",
                    p.name,
                    lines.len() - from,
                    lines[from..].join("\n")
                );
            }
            for r in show_stat(&self.stats) {
                eprintln!(
                    "haproxy: {} {} status={:?} check={:?}",
                    r.get("pxname").cloned().unwrap_or_default(),
                    r.get("svname").cloned().unwrap_or_default(),
                    r.get("status").cloned().unwrap_or_default(),
                    r.get("check_status").cloned().unwrap_or_default()
                );
            }
        }
        self.haproxy.take();
        self.backends.clear();
        if let Some(n) = &mut self.topo.net {
            n.remove();
        }
    }
}

fn haproxy_installed() -> bool {
    Command::new("haproxy")
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether the process `pid` has a listening TCP socket on `addr` (read
/// from its own network namespace's table).
fn listening(pid: i32, addr: SocketAddr) -> bool {
    let SocketAddr::V4(a) = addr else {
        return false;
    };
    let want = format!(
        "{:08X}:{:04X}",
        u32::from_ne_bytes(a.ip().octets()),
        a.port()
    );
    std::fs::read_to_string(format!("/proc/{pid}/net/tcp"))
        .unwrap_or_default()
        .lines()
        .skip(1)
        .any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[1] == want && f[3] == "0A"
        })
}

fn is_job_started(l: &str) -> bool {
    l.contains("job started")
}

fn is_cancel(l: &str) -> bool {
    l.contains("job cancelled")
}

fn is_health_check(l: &str) -> bool {
    l.contains("PROXY LOCAL header")
}

/// HAProxy's balancing, cancelling and draining of two jobd hosts, end to
/// end: (1) jobs spread over both hosts, each handler seeing its client's
/// own address and port; (2) health checks start no job and cancel
/// nothing; (3) a client that aborts (FIN, RST) has its job tree killed
/// within a second, its address in the cancel line; (4) SIGTERM to one
/// host drains it: its running job finishes, HAProxy marks it down, and
/// every new client is served by the other; (5) `jobd ctl upgrade` of the
/// other, under a load of short jobs with two long ones running: no
/// connection fails or is refused, the new generation serves, and the old
/// one finishes its long job, cancels the abandoned one, and exits.
#[test]
fn haproxy_spreads_cancels_and_drains_jobs_over_two_jobd_hosts() {
    assert!(
        haproxy_installed(),
        "\n\n*** haproxy is not installed: this end-to-end test needs it. \
         Install it (`apt-get install -y haproxy iproute2`; .ci/run does). ***\n"
    );
    let begin = Instant::now();
    let forced = std::env::var_os("JOBD_E2E_LOOPBACK").is_some_and(|v| v == "1");
    let topo = if forced {
        eprintln!(
            "\n*** haproxy e2e: JOBD_E2E_LOOPBACK=1: running on loopback addresses, \
             without network namespaces ***\n"
        );
        loopback()
    } else {
        sweep_dead_runs();
        match namespaces() {
            Ok(t) => t,
            Err(e) => {
                eprintln!(
                    "\n***************************************************************\n\
                     *** haproxy e2e: CANNOT CREATE NETWORK NAMESPACES: {e}\n\
                     *** falling back to loopback: backends 127.0.0.2 and 127.0.0.3,\n\
                     *** HAProxy 127.0.0.4 (same scenario, one network stack)\n\
                     ***************************************************************\n"
                );
                loopback()
            }
        }
    };
    let netns = topo.net.is_some();
    eprintln!(
        "haproxy e2e: {} mode; balancer {}, backends {} and {}",
        if netns {
            "network-namespace"
        } else {
            "loopback"
        },
        topo.front.ip(),
        topo.backend[0],
        topo.backend[1]
    );
    let dir = util::tempdir();
    let d = dir.path().to_path_buf();
    let h = util::script(
        &d,
        "h.sh",
        &HANDLER
            .replace("@DIR@", d.to_str().unwrap())
            .replace("@LINES@", &LONG_LINES.to_string()),
    );
    let mut w = World {
        haproxy: None,
        backends: vec![],
        stats: d.join("haproxy.sock"),
        topo,
        _dir: dir,
    };

    // The two jobd hosts.
    let mut backend = w.topo.backend;
    for (i, host) in ["b1", "b2"].into_iter().enumerate() {
        let args: Vec<String> = [
            "--proxy-protocol",
            "v2",
            "--listen",
            &w.topo.backend[i].to_string(),
            "--prefork",
            "4",
            "--grace",
            "60s",
            "--script",
            h.to_str().unwrap(),
            "--access-log",
            d.join(format!("{host}-access.log")).to_str().unwrap(),
            "--env",
            &format!("E2E_HOST={host}"),
            // (`jobd ctl upgrade` finds the supervisor by it.)
            "--pid-file",
            d.join(format!("{host}.pid")).to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut p = Proc::spawn(
            host,
            w.topo.backend_ns[i].as_deref(),
            util::jobd_bin(),
            &args,
            // Health checks are logged at debug, by the worker.
            &[("JOBD_LOG", "info,jobd::worker=debug")],
            "INT",
        );
        backend[i] = util::listen_addr(&p.wait_line(|l| l.contains("listening on ")));
        w.backends.push(p);
    }
    let access = |i: usize| d.join(format!("b{}-access.log", i + 1));

    // The balancer (in the fallback, on a port found free just before).
    for attempt in 0.. {
        if !netns {
            let l = std::net::TcpListener::bind((w.topo.front.ip(), 0)).unwrap();
            w.topo.front = l.local_addr().unwrap();
        }
        let cfg = d.join("haproxy.cfg");
        std::fs::write(&cfg, haproxy_config(&w.topo, backend, &w.stats)).unwrap();
        let mut p = Proc::spawn(
            "haproxy",
            w.topo.lb_ns.as_deref(),
            "haproxy",
            &["-db".into(), "-f".into(), cfg.to_str().unwrap().into()],
            &[],
            "TERM",
        );
        // Up once both servers passed a health check.
        let up = util::poll_until(Instant::now() + DEADLINE, || {
            !p.running()
                || (server_field(&w.stats, "b1", "check_status") == "L4OK"
                    && server_field(&w.stats, "b2", "check_status") == "L4OK")
        });
        if p.running() && up {
            w.haproxy = Some(p);
            break;
        }
        let log = p.lines().join("\n");
        drop(p);
        assert!(
            !netns && attempt < 3,
            "haproxy did not come up (its log:)\n{log}"
        );
    }
    let front = w.topo.front;
    let mut clients = w.topo.clients.clone().into_iter();
    let mut take = |n: usize| -> Vec<Ipv4Addr> { clients.by_ref().take(n).collect() };

    // (1) 20 clients at once, spread over both hosts; each handler saw its
    // own client.
    let srcs = take(SPREAD_CLIENTS);
    let answers = hellos(&srcs, front, 0);
    let mut per_host = [0usize; 2];
    for (i, (me, seen)) in answers.iter().enumerate() {
        assert_eq!(me.ip(), std::net::IpAddr::V4(srcs[i]), "client {i}");
        assert_eq!(
            seen.remote, *me,
            "client {i}: the handler saw {} as its client, not {me}",
            seen.remote
        );
        assert_eq!(seen.proxy_ip, w.topo.lb_inner[seen.host], "client {me}");
        per_host[seen.host] += 1;
    }
    for (i, &n) in per_host.iter().enumerate() {
        let lines = util::wait_file_lines(&access(i), n);
        assert_eq!(lines.len(), n, "access log of b{}", i + 1);
        for l in &lines {
            let peer: SocketAddr = util::field(l, "peer").parse().unwrap();
            assert!(
                answers.iter().any(|(me, s)| *me == peer && s.host == i),
                "b{} logged a job for {peer}, not one of its clients: {l}",
                i + 1
            );
            let proxy: SocketAddr = util::field(l, "proxy_peer").parse().unwrap();
            assert_eq!(proxy.ip(), std::net::IpAddr::V4(w.topo.lb_inner[i]), "{l}");
        }
    }
    assert!(
        per_host[0] > 0 && per_host[1] > 0,
        "leastconn sent every job to one host: {per_host:?}"
    );
    eprintln!(
        "haproxy e2e: {SPREAD_CLIENTS} concurrent clients: b1 ran {}, b2 ran {} jobs",
        per_host[0], per_host[1]
    );

    // (2) At least 2 s of health checks, seen by both hosts: no job, no
    // cancel, nothing logged above debug.
    for b in &mut w.backends {
        let mut last = None;
        let ok = util::poll_until(Instant::now() + DEADLINE, || {
            let hc = b.timed_lines(is_health_check);
            last = Some(hc.len());
            hc.len() >= 10 && hc[hc.len() - 1].0.duration_since(hc[0].0) >= Duration::from_secs(2)
        });
        assert!(
            ok,
            "{}: {last:?} health checks seen, not 2 s of them; log:\n{}",
            b.name,
            b.lines().join("\n")
        );
    }
    let checks: Vec<usize> = w
        .backends
        .iter()
        .map(|b| b.count(is_health_check))
        .collect();
    let started: usize = w.backends.iter().map(|b| b.count(is_job_started)).sum();
    assert_eq!(
        started, SPREAD_CLIENTS,
        "health checks started jobs (checks seen: {checks:?})"
    );
    for b in &w.backends {
        assert_eq!(b.count(is_cancel), 0, "{}: a cancel line", b.name);
        for l in b.lines() {
            if !l.contains(" DEBUG ") {
                for lb in w.topo.lb_inner {
                    assert!(
                        !l.contains(&format!(" peer={lb}:")),
                        "{}: a health check logged above debug: {l}",
                        b.name
                    );
                }
                assert!(
                    !l.contains(" WARN ") && !l.contains(" ERROR "),
                    "{}: {l}",
                    b.name
                );
            }
        }
    }
    eprintln!(
        "haproxy e2e: health checks so far: b1 {}, b2 {} (over >= 2 s), jobs started: {started}",
        checks[0], checks[1]
    );

    // (3) Clients that abort mid-job: FIN, then RST, twice. HAProxy closes
    // its backend connection; the job's tree is gone within 1 s.
    let mut latencies = vec![];
    for (k, src) in take(ABORTS).into_iter().enumerate() {
        let rst = k % 2 == 1;
        let mut s = connect_from(src, front);
        let me = s.local_addr().unwrap();
        s.write_all(format!("hold {k}\n").as_bytes()).unwrap();
        let (handler, child, seen) = hold_pids(&d, &k.to_string());
        assert_eq!(seen.remote, me, "hold job {k}: {seen:?}");
        assert!(
            util::alive(handler) && util::alive(child),
            "hold job {k}: {handler} {child}"
        );
        let t0 = Instant::now();
        if rst {
            util::reset(s);
        } else {
            drop(s);
        }
        let deadline = t0 + DEADLINE;
        while (util::alive(handler) || util::alive(child)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        let gone = t0.elapsed();
        assert!(
            !util::alive(handler) && !util::alive(child),
            "the tree of hold job {k} ({handler}, {child}) outlived its client"
        );
        let host = seen.host;
        let line =
            w.backends[host].wait_line(|l| is_cancel(l) && l.contains(&format!(" peer={me} ")));
        assert!(
            gone < Duration::from_secs(1),
            "the tree of hold job {k} went {gone:?} after its client closed: {line}"
        );
        eprintln!(
            "haproxy e2e: client {me} {} -> b{} job tree gone in {:.1} ms (reason={})",
            if rst {
                "reset (SO_LINGER 0)"
            } else {
                "closed (FIN)"
            },
            host + 1,
            gone.as_secs_f64() * 1000.0,
            util::field(&line, "reason")
        );
        latencies.push(gone);
    }

    // HAProxy closed every session it had with the hosts (so that the
    // next placements depend on the long jobs only).
    util::wait_until("HAProxy to have no session with the hosts", || {
        ["b1", "b2"]
            .iter()
            .all(|s| server_field(&w.stats, s, "scur") == "0")
    });

    // (4) Draining: one long job on each host (leastconn puts the second
    // where the first is not).
    let mut longs = vec![];
    for (k, src) in take(LONG_JOBS).into_iter().enumerate() {
        longs.push(Some(start_long(&d, &k.to_string(), src, front)));
    }
    let host_of = |l: &Option<Long>| l.as_ref().unwrap().2.host;
    assert_ne!(
        host_of(&longs[0]),
        host_of(&longs[1]),
        "leastconn put both long jobs on one host"
    );
    let drained = 0; // b1
    let on_b1 = longs.iter().position(|l| host_of(l) == drained).unwrap();
    let long_me = longs[on_b1].as_ref().unwrap().3;
    let long_line = w.backends[drained]
        .wait_line(|l| is_job_started(l) && l.contains(&format!(" peer={long_me} ")));
    let long_pid: i32 = util::field(&long_line, "handler_pid").parse().unwrap();
    let b1_started = w.backends[drained].count(is_job_started);
    let b1_pid = w.backends[drained].pid();
    let stats = w.stats.clone();
    let counter = |name: &str| -> u64 { server_field(&stats, "b1", name).parse().unwrap_or(0) };
    let (retries_before, redispatches_before) = (counter("wretr"), counter("wredis"));
    let t_term = Instant::now();
    util::send(b1_pid, "TERM");
    w.backends[drained].wait_line(|l| l.contains("SIGTERM: stopping"));
    util::wait_until("b1 to close its listener", || {
        !listening(b1_pid, backend[drained])
    });
    let closed_after = t_term.elapsed();
    // Ten new clients at once: those HAProxy still sends to b1 are refused
    // there and retried; every one is answered, by b2.
    let srcs = take(DRAIN_CLIENTS);
    let answers = hellos(&srcs, front, 100);
    let served_after = t_term.elapsed();
    for (me, seen) in &answers {
        assert_eq!(seen.remote, *me);
        assert_eq!(
            seen.host, 1,
            "a new client {me} was served by the draining b1"
        );
    }
    util::wait_until("HAProxy to mark b1 down", || {
        server_field(&stats, "b1", "status").starts_with("DOWN")
    });
    let down_after = t_term.elapsed();
    assert_eq!(
        w.backends[drained].count(is_job_started),
        b1_started,
        "the draining b1 started a job"
    );
    assert!(
        w.backends[drained].running() && util::alive(long_pid),
        "b1 or its running job did not wait for the job's end"
    );
    let b2_down = server_field(&stats, "b2", "status");
    assert_eq!(b2_down, "UP", "b2 is {b2_down:?}");
    let retries = counter("wretr").saturating_sub(retries_before);
    let redispatches = counter("wredis").saturating_sub(redispatches_before);
    // The running jobs finish: their clients get the whole answer.
    for k in [on_b1, 1 - on_b1] {
        let (s, mut r, seen, me) = longs[k].take().unwrap();
        finish_long(&d, &k.to_string(), &mut r, me);
        drop(s);
        let end = w.backends[seen.host]
            .wait_line(|l| l.contains("job ended") && l.contains(&format!(" peer={me} ")));
        assert_eq!(util::field(&end, "outcome"), "done", "{end}");
        if seen.host == drained {
            let st = w.backends[drained].wait_exit();
            assert!(st.success(), "the drained b1 exited with {st:?}");
        }
    }
    let drain_total = t_term.elapsed();
    eprintln!(
        "haproxy e2e: drain of b1: listener closed {:.0} ms after SIGTERM, {DRAIN_CLIENTS} new \
         clients all served by b2 by {:.0} ms (HAProxy retried {retries} and redispatched \
         {redispatches} connections refused by b1), b1 marked DOWN at {:.0} ms, its running job finished \
         in full and b1 exited 0 at {:.0} ms",
        closed_after.as_secs_f64() * 1000.0,
        served_after.as_secs_f64() * 1000.0,
        down_after.as_secs_f64() * 1000.0,
        drain_total.as_secs_f64() * 1000.0,
    );

    // (5) `jobd ctl upgrade` of b2 (the host left) under a load of short
    // jobs, with two long jobs running on it: no connection fails or is
    // refused (not even one that HAProxy retried: its counters for b2 do
    // not move), the new generation serves, the old one's long job
    // finishes in full and its abandoned one is cancelled by it, then it
    // exits.
    let up = 1;
    let pid_file = d.join("b2.pid");
    let old = w.backends[up].pid();
    assert_eq!(util::read_pid(&pid_file), old, "b2's pid file");
    let srcs = take(UPGRADE_LONGS + 1);
    let (fin, mut fin_r, seen, fin_me) = start_long(&d, "u", srcs[0], front);
    assert_eq!(seen.host, up, "the upgrade's long job went to b1");
    let line =
        w.backends[up].wait_line(|l| is_job_started(l) && l.contains(&format!(" peer={fin_me} ")));
    let fin_pid: i32 = util::field(&line, "handler_pid").parse().unwrap();
    let mut abandon = connect_from(srcs[1], front);
    let ab_me = abandon.local_addr().unwrap();
    abandon.write_all(b"hold u\n").unwrap();
    let (ab_handler, ab_child, seen) = hold_pids(&d, "u");
    assert_eq!((seen.remote, seen.host), (ab_me, up), "{seen:?}");
    for p in [fin_pid, ab_handler] {
        assert_eq!(
            supervisor_of(p),
            Some(old),
            "the long job of handler {p} is not run by b2's supervisor"
        );
    }
    let hap_counters = ["wretr", "wredis", "econ", "eresp", "chkfail", "chkdown"];
    let b2_counters = || -> Vec<u64> {
        let rows = show_stat(&stats);
        let row = rows
            .iter()
            .find(|r| r.get("pxname").is_some_and(|p| p == "jobd") && r["svname"] == "b2")
            .expect("b2 in HAProxy's stats");
        hap_counters
            .iter()
            .map(|c| row.get(*c).and_then(|v| v.parse().ok()).unwrap_or(0))
            .collect()
    };
    let counters_before = b2_counters();
    let load = Load::start(srcs[2], front, "b2");
    util::wait_until("the load to run", || load.count(|_| true) >= 20);
    // The upgrade, and when the pid file names the new supervisor.
    let args = [
        "ctl",
        "upgrade",
        "--pid-file",
        pid_file.to_str().unwrap(),
        "--timeout",
        "15s",
    ];
    let mut cmd = match &w.topo.backend_ns[up] {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, util::jobd_bin()]);
            c
        }
        None => Command::new(util::jobd_bin()),
    };
    let t_ctl = Instant::now();
    let mut ctl = cmd
        .args(args)
        .env_remove("JOBD_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("jobd ctl upgrade");
    let (mut new_at, mut ctl_at) = (None, None);
    let deadline = t_ctl + DEADLINE;
    while (new_at.is_none() || ctl_at.is_none()) && Instant::now() < deadline {
        if new_at.is_none() {
            let pid: i32 = std::fs::read_to_string(&pid_file)
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0);
            if pid > 0 && pid != old {
                new_at = Some((pid, t_ctl.elapsed()));
            }
        }
        if ctl_at.is_none() && ctl.try_wait().unwrap().is_some() {
            ctl_at = Some(t_ctl.elapsed());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    if ctl_at.is_none() {
        let _ = ctl.kill();
    }
    let out = ctl.wait_with_output().unwrap();
    let ctl_out = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        ctl_at.is_some() && out.status.success(),
        "jobd ctl upgrade: {:?} after {:?}: {ctl_out}",
        out.status,
        t_ctl.elapsed()
    );
    let (new, new_after) = new_at.expect("no new pid in b2's pid file");
    let ctl_after = ctl_at.unwrap();
    assert_eq!(util::read_pid(&pid_file), new);
    assert!(
        util::alive(new) && ctl_out.contains(&format!("pid {new} serves")),
        "{ctl_out}"
    );
    let is_handed = |l: &str| l.contains("upgrade: the new jobd serves");
    w.backends[up].wait_line(is_handed);
    let handed_at = w.backends[up].timed_lines(is_handed)[0].0;
    let t_ctl_done = t_ctl + ctl_after;
    // The load goes on a while, served by the new generation.
    util::wait_until("the new generation to serve the load", || {
        t_ctl_done.elapsed() >= Duration::from_millis(750) && load.count(|s| s.sup == Ok(new)) >= 50
    });
    let shorts = load.finish();
    let failed: Vec<&String> = shorts.iter().filter_map(|s| s.sup.as_ref().err()).collect();
    assert!(
        failed.is_empty(),
        "{} of {} short jobs failed or were refused around the upgrade, e.g. {:?}",
        failed.len(),
        shorts.len(),
        &failed[..failed.len().min(10)]
    );
    let by = |pid: i32| shorts.iter().filter(|s| s.sup == Ok(pid)).count();
    let (by_old, by_new) = (by(old), by(new));
    assert_eq!(
        by_old + by_new,
        shorts.len(),
        "short jobs run by neither supervisor"
    );
    assert!(by_old > 0 && by_new > 0, "old {by_old}, new {by_new}");
    let t_new = t_ctl + new_after;
    let during = shorts
        .iter()
        .filter(|s| s.end >= t_ctl && s.start <= t_new)
        .count();
    let old_during = shorts
        .iter()
        .filter(|s| s.end >= t_ctl && s.sup == Ok(old))
        .count();
    // Once the old one said it stops accepting, new clients go to the new.
    let late_old: Vec<Duration> = shorts
        .iter()
        .filter(|s| s.sup == Ok(old) && s.start > handed_at)
        .map(|s| s.start - handed_at)
        .collect();
    assert!(
        late_old.iter().all(|d| *d < Duration::from_millis(250)),
        "the old supervisor ran jobs whose clients came {late_old:?} after it stopped accepting"
    );
    let counters_after = b2_counters();
    let moved: Vec<String> = hap_counters
        .iter()
        .zip(counters_before.iter().zip(&counters_after))
        .filter(|(_, (a, b))| a != b)
        .map(|(c, (a, b))| format!("{c} {a} -> {b}"))
        .collect();
    assert!(
        moved.is_empty(),
        "HAProxy saw b2 fail during the upgrade: {moved:?}"
    );
    let b2_status = server_field(&stats, "b2", "status");
    assert_eq!(b2_status, "UP", "b2 after the upgrade");
    // The old generation's long jobs: one finishes in full, ...
    assert!(
        w.backends[up].running() && util::alive(fin_pid) && util::alive(ab_handler),
        "the old b2 supervisor or its long jobs did not wait"
    );
    finish_long(&d, "u", &mut fin_r, fin_me);
    drop((fin, fin_r));
    let end = w.backends[up]
        .wait_line(|l| l.contains("job ended") && l.contains(&format!(" peer={fin_me} ")));
    assert_eq!(util::field(&end, "outcome"), "done", "{end}");
    // ... the other's client goes: the old generation cancels it, its
    // tree goes, and the old supervisor exits.
    assert!(
        w.backends[up].running(),
        "the old b2 supervisor exited with a job running"
    );
    let t_ab = Instant::now();
    drop(abandon);
    let gone = util::poll_until(t_ab + DEADLINE, || {
        !util::alive(ab_handler) && !util::alive(ab_child)
    });
    assert!(
        gone,
        "the abandoned job's tree ({ab_handler}, {ab_child}) outlived its client"
    );
    let ab_gone = t_ab.elapsed();
    let cancel =
        w.backends[up].wait_line(|l| is_cancel(l) && l.contains(&format!(" peer={ab_me} ")));
    let st = w.backends[up].wait_exit();
    assert!(st.success(), "the old b2 supervisor exited with {st:?}");
    let old_exit = t_ab.elapsed();
    assert!(util::alive(new), "the new b2 supervisor is gone");
    assert_eq!(util::read_pid(&pid_file), new);
    eprintln!(
        "haproxy e2e: ctl upgrade of b2 under load: pid file named the new supervisor {new} \
         {:.0} ms after ctl started (ctl exited 0 at {:.0} ms, old {old} stopped accepting at \
         {:.0} ms); {} short jobs through HAProxy ({during} during the upgrade, {old_during} \
         answered by the old generation after ctl started; old {by_old}, new {by_new}), \
         failures=0, HAProxy retries/errors on b2: 0; long job finished in full, the abandoned \
         one cancelled by the old generation (reason={}), its tree gone in {:.1} ms, old \
         supervisor exited 0 {:.0} ms after its client left",
        new_after.as_secs_f64() * 1000.0,
        ctl_after.as_secs_f64() * 1000.0,
        (handed_at - t_ctl).as_secs_f64() * 1000.0,
        shorts.len(),
        util::field(&cancel, "reason"),
        ab_gone.as_secs_f64() * 1000.0,
        old_exit.as_secs_f64() * 1000.0,
    );

    // Over the whole run: one job per client, four cancels, every job in
    // an access log.
    let b2 = w.backends.pop().unwrap();
    let b1 = w.backends.pop().unwrap();
    // The new b2 supervisor is no child of ours: stopped by its pid. (It
    // carries b2's tag: the cleanup on a failure finds it.)
    assert!(
        util::tagged_pids(&b2.tag).contains(&new),
        "the new b2 supervisor {new} lost b2's tag"
    );
    util::send(new, "TERM");
    util::wait_until("the new b2 supervisor to stop", || !util::alive(new));
    b2.wait_log_end();
    assert_eq!(
        b2.count(|l| l.contains("jobd stopped")),
        2,
        "b2's two generations did not both stop"
    );
    let all_jobs = ALL_JOBS + UPGRADE_LONGS + shorts.len();
    let started: Vec<usize> = [&b1, &b2].iter().map(|b| b.count(is_job_started)).collect();
    let cancels: Vec<usize> = [&b1, &b2].iter().map(|b| b.count(is_cancel)).collect();
    let checks: Vec<usize> = [&b1, &b2]
        .iter()
        .map(|b| b.count(is_health_check))
        .collect();
    let logged: Vec<usize> = (0..2)
        .map(|i| {
            std::fs::read_to_string(access(i))
                .unwrap_or_default()
                .lines()
                .count()
        })
        .collect();
    assert_eq!(
        started[0] + started[1],
        all_jobs,
        "jobs started: {started:?}"
    );
    assert_eq!(logged[0] + logged[1], all_jobs, "access lines: {logged:?}");
    assert_eq!(
        cancels[0] + cancels[1],
        ABORTS + 1,
        "cancel lines: {cancels:?}"
    );
    // No warning or error on either host, the upgrade's handover included
    // (its pid file takeover is logged at info).
    for b in [&b1, &b2] {
        for l in b.lines() {
            assert!(
                !l.contains(" WARN ") && !l.contains(" ERROR "),
                "{}: {l}",
                b.name
            );
        }
    }
    let tags = [b1.tag.clone(), b2.tag.clone()];
    drop((b1, b2));
    let hap = w.haproxy.take().unwrap();
    let hap_tag = hap.tag.clone();
    drop(hap);
    for t in tags.iter().chain([&hap_tag]) {
        util::wait_gone(t);
    }
    let names = w
        .topo
        .net
        .as_ref()
        .map(|n| n.namespaces.clone())
        .unwrap_or_default();
    drop(w);
    if netns {
        let list = ip(&["netns", "list"]).unwrap_or_default();
        for n in &names {
            assert!(
                !list.lines().any(|l| l.split_whitespace().next() == Some(n)),
                "namespace {n} left behind"
            );
        }
    }
    let mean = latencies.iter().sum::<Duration>().as_secs_f64() * 1000.0 / latencies.len() as f64;
    let max = latencies.iter().max().unwrap().as_secs_f64() * 1000.0;
    eprintln!(
        "haproxy e2e: jobs per backend: b1 {}, b2 {} (of {all_jobs}); cancels b1 {}, b2 {}; \
         health checks seen b1 {}, b2 {}; cancel latency through HAProxy mean {mean:.1} ms, \
         max {max:.1} ms; whole test {:.1} s",
        started[0],
        started[1],
        cancels[0],
        cancels[1],
        checks[0],
        checks[1],
        begin.elapsed().as_secs_f64()
    );
}
