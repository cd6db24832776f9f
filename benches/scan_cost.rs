//! Scan cost of the disconnect-detection backends at N established loopback
//! connections to one listener (ten of them in CLOSE_WAIT).
//!
//! Owns only measurement: it opens the connections, times one scan of each
//! kind a fixed number of times per size, and prints a table and one JSON
//! line. The client ends live in a child process (this same program,
//! re-executed with `SCAN_COST_CLIENT` set), so that each process holds N
//! descriptors and N = 10,000 fits under a 20,000 RLIMIT_NOFILE hard limit.
//!
//! Sizes: `SCAN_SIZES=100,1000,10000` (the default). A size that runs out of
//! descriptors or ephemeral ports is reported and skipped. Connections are
//! torn down with resets (SO_LINGER 0), so no TIME_WAIT socket is left to
//! weigh on the next size.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use common::{
    ScanTimes, dump_of, loopback_listener, namespace_sockets, raise_nofile, reset_on_close,
    socket_cookie, tcp4_socket, time_scans,
};
use jobd::detect::procfs::ProcNet;
use jobd::detect::sockdiag::SockDiag;
use jobd::detect::{JOB_SOCKET_STATES, SockEntry, SocketSource, state_mask, tcp_state};
use nix::errno::Errno;
use nix::sys::socket::sockopt::IpBindAddressNoPort;
use nix::sys::socket::{Backlog, SockaddrStorage, bind, connect, setsockopt};
use rustix::event::{PollFd, PollFlags, Timespec, poll};

const CLIENT_ENV: &str = "SCAN_COST_CLIENT";
const DEFAULT_SIZES: &[usize] = &[100, 1000, 10_000];
const CLOSE_WAIT_COUNT: usize = 10;
const LOOKUPS: usize = 32;
/// Client connections per loopback source address (127.0.0.2, .3, ...).
const PER_SOURCE_IP: usize = 5000;
/// Descriptors each process needs beyond its N sockets.
const FD_SLACK: u64 = 64;
const SETUP_DEADLINE: Duration = Duration::from_secs(60);

fn main() {
    if let Ok(spec) = std::env::var(CLIENT_ENV) {
        client_main(&spec);
        return;
    }
    let sizes = match std::env::var("SCAN_SIZES") {
        Ok(s) => s
            .split(',')
            .map(|x| {
                x.trim()
                    .parse::<usize>()
                    .expect("SCAN_SIZES: comma-separated integers")
            })
            .collect(),
        Err(_) => DEFAULT_SIZES.to_vec(),
    };
    let started = Instant::now();
    let mut results = Vec::new();
    let mut skipped = Vec::new();
    for &n in &sizes {
        match run_size(n) {
            Ok(mut r) => results.append(&mut r),
            Err(reason) => {
                println!("N={n}: skipped: {reason}");
                skipped.push(serde_json::json!({ "n": n, "reason": reason }));
            }
        }
    }
    print_table(&results);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let json = serde_json::json!({
        "bench": "scan_cost",
        "kernel": kernel.trim(),
        "unit": "ms",
        "close_wait": CLOSE_WAIT_COUNT,
        "results": results.iter().map(Row::json).collect::<Vec<_>>(),
        "skipped": skipped,
        "total_s": started.elapsed().as_secs_f64(),
    });
    println!("{json}");
}

/// One measured scan at one size.
struct Row {
    n: usize,
    scan: &'static str,
    /// Entries returned, fewest and most over the timed iterations (procfs
    /// is no consistent snapshot: it may repeat or miss a line under churn).
    entries: (usize, usize),
    iters: usize,
    median: Duration,
    p99: Duration,
}

impl Row {
    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "n": self.n,
            "scan": self.scan,
            "entries_min": self.entries.0,
            "entries_max": self.entries.1,
            "iters": self.iters,
            "median_ms": ms(self.median),
            "p99_ms": ms(self.p99),
        })
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

fn print_table(rows: &[Row]) {
    println!();
    println!(
        "{:>6}  {:<34} {:>8} {:>6} {:>11} {:>11}",
        "N", "scan", "entries", "iters", "median ms", "p99 ms"
    );
    for r in rows {
        let entries = if r.entries.0 == r.entries.1 {
            r.entries.0.to_string()
        } else {
            format!("{}..{}", r.entries.0, r.entries.1)
        };
        println!(
            "{:>6}  {:<34} {:>8} {:>6} {:>11.3} {:>11.3}",
            r.n,
            r.scan,
            entries,
            r.iters,
            ms(r.median),
            ms(r.p99)
        );
    }
    println!();
}

fn run_size(n: usize) -> Result<Vec<Row>, String> {
    if n < LOOKUPS + CLOSE_WAIT_COUNT {
        return Err(format!("N must be at least {}", LOOKUPS + CLOSE_WAIT_COUNT));
    }
    raise_nofile(n as u64 + FD_SLACK)?;
    let listener = bench_listener().map_err(|e| format!("listener: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let setup = Instant::now();
    let mut clients = Clients::spawn(addr, n)?;
    let servers = match accept_all(&listener, n, &mut clients) {
        Ok(s) => s,
        Err(e) => {
            clients.stop(false);
            return Err(e);
        }
    };
    let result = measure(n, addr.port(), &servers, &mut clients, setup);
    // Resets, not FINs: neither side is left in TIME_WAIT.
    for s in &servers {
        let _ = reset_on_close(s);
    }
    drop(servers);
    clients.stop(result.is_ok());
    result
}

fn measure(
    n: usize,
    port: u16,
    servers: &[TcpStream],
    clients: &mut Clients,
    setup: Instant,
) -> Result<Vec<Row>, String> {
    clients.command(&format!("close {CLOSE_WAIT_COUNT}"), "closed")?;
    let mut sd = SockDiag::open().map_err(|e| format!("{e}"))?;
    // As jobd scans: only the listener's address family (IPv4 here).
    sd.only_family(false);
    let close_wait = state_mask(&[tcp_state::CLOSE_WAIT]);
    let mut out: Vec<SockEntry> = Vec::with_capacity(n + 16);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        out.clear();
        sd.dump(port, close_wait, &mut out)
            .map_err(|e| e.to_string())?;
        if out.len() == CLOSE_WAIT_COUNT {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("only {} sockets reached CLOSE_WAIT", out.len()));
        }
        std::thread::yield_now();
    }
    println!(
        "N={n}: {n} connections ready in {:.2} s ({} TCP sockets in the namespace)",
        setup.elapsed().as_secs_f64(),
        namespace_sockets().0
    );

    // The first servers belong to the clients that closed; look up others.
    let targets: Vec<(u64, SocketAddr, SocketAddr)> = servers[CLOSE_WAIT_COUNT..]
        .iter()
        .take(LOOKUPS)
        .map(|s| {
            let cookie = socket_cookie(s).expect("SO_COOKIE");
            (cookie, s.local_addr().unwrap(), s.peer_addr().unwrap())
        })
        .collect();

    let iters = if n <= 1000 { 200 } else { 50 };
    let mut pn = ProcNet::for_family(false);
    let row = |scan: &'static str, t: ScanTimes| Row {
        n,
        scan,
        entries: t.entries,
        iters,
        median: t.median(),
        p99: t.p99(),
    };
    let job_states = time_scans(iters, &mut out, dump_of(&mut sd, port, JOB_SOCKET_STATES))?;
    let only_close_wait = time_scans(iters, &mut out, dump_of(&mut sd, port, close_wait))?;
    let lookups = time_scans(iters, &mut out, |o| {
        for &(cookie, local, remote) in &targets {
            let e = sd
                .lookup(cookie, local, remote)
                .map_err(|e| e.to_string())?;
            o.extend(e);
        }
        Ok(())
    })?;
    let procfs = time_scans(iters, &mut out, dump_of(&mut pn, port, JOB_SOCKET_STATES))?;
    Ok(vec![
        row("sock_diag sport+job states", job_states),
        row("sock_diag sport+CLOSE_WAIT", only_close_wait),
        row("sock_diag lookup x32 (cookie)", lookups),
        row("procfs tcp (one family), job states", procfs),
    ])
}

fn bench_listener() -> nix::Result<TcpListener> {
    let l = loopback_listener(Backlog::MAXALLOWABLE, false)?;
    l.set_nonblocking(true).map_err(|_| Errno::EINVAL)?;
    Ok(l)
}

/// Accepts `n` connections while the child makes them.
fn accept_all(l: &TcpListener, n: usize, clients: &mut Clients) -> Result<Vec<TcpStream>, String> {
    let mut servers = Vec::with_capacity(n);
    let deadline = Instant::now() + SETUP_DEADLINE;
    while servers.len() < n {
        match l.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).map_err(|e| e.to_string())?;
                servers.push(s);
                continue;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.raw_os_error() == Some(libc::EMFILE) => {
                return Err(format!(
                    "out of file descriptors after {} accepts",
                    servers.len()
                ));
            }
            Err(e) => return Err(format!("accept: {e}")),
        }
        if let Some(line) = clients.try_line() {
            return Err(format!("client: {line}"));
        }
        if Instant::now() > deadline {
            return Err(format!(
                "only {} of {n} connections within {SETUP_DEADLINE:?}",
                servers.len()
            ));
        }
        let mut fds = [PollFd::from_borrowed_fd(l.as_fd(), PollFlags::IN)];
        let wait = Timespec::try_from(Duration::from_millis(50)).expect("50 ms");
        poll(&mut fds, Some(&wait)).map_err(|e| format!("poll: {e}"))?;
    }
    clients.expect_line("ready", SETUP_DEADLINE)?;
    Ok(servers)
}

/// The child process holding the client ends.
struct Clients {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
}

impl Clients {
    fn spawn(server: SocketAddr, n: usize) -> Result<Self, String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut child = Command::new(exe)
            .env(CLIENT_ENV, format!("{server} {n}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("spawn client process: {e}"))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Self {
            stdin: child.stdin.take(),
            child,
            lines,
        })
    }

    fn try_line(&self) -> Option<String> {
        self.lines.try_recv().ok()
    }

    fn expect_line(&self, want: &str, timeout: Duration) -> Result<(), String> {
        match self.lines.recv_timeout(timeout) {
            Ok(line) if line == want => Ok(()),
            Ok(line) => Err(format!("client: {line}")),
            Err(RecvTimeoutError::Timeout) => Err(format!("client did not say {want:?}")),
            Err(RecvTimeoutError::Disconnected) => Err("client process exited".into()),
        }
    }

    fn command(&mut self, cmd: &str, reply: &str) -> Result<(), String> {
        let stdin = self.stdin.as_mut().ok_or("client stdin closed")?;
        writeln!(stdin, "{cmd}").map_err(|e| format!("to client: {e}"))?;
        self.expect_line(reply, Duration::from_secs(10))
    }

    /// Ends the child: on success by closing its stdin (it then exits), on
    /// a failed setup by killing it (it may be blocked in a connect).
    fn stop(mut self, ok: bool) {
        drop(self.stdin.take());
        if !ok {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// Child mode: open `n` connections to `server`, say "ready", then obey
/// "close K" (close the first K normally) until stdin ends.
fn client_main(spec: &str) {
    let (server, n) = spec.split_once(' ').expect("SCAN_COST_CLIENT: addr n");
    let server: SocketAddr = server.parse().expect("server address");
    let n: usize = n.parse().expect("connection count");
    let stdout = std::io::stdout();
    let say = |line: &str| {
        let mut o = stdout.lock();
        let _ = writeln!(o, "{line}");
        let _ = o.flush();
    };
    if let Err(e) = raise_nofile(n as u64 + FD_SLACK) {
        say(&format!("error: {e}"));
        return;
    }
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        match client_connect(server, i) {
            Ok(s) => conns.push(s),
            Err(e) => {
                let why = match e {
                    Errno::EMFILE | Errno::ENFILE => "out of file descriptors",
                    Errno::EADDRNOTAVAIL | Errno::EADDRINUSE => "out of ephemeral ports",
                    _ => "connect failed",
                };
                say(&format!("error: {why} at connection {i} ({e})"));
                return;
            }
        }
    }
    say("ready");
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        if let Some(k) = line.strip_prefix("close ") {
            let k: usize = k.parse().unwrap_or(0);
            conns.drain(..k.min(conns.len()));
            say("closed");
        }
    }
}

/// One client socket from 127.0.0.(2 + i / PER_SOURCE_IP), its port chosen
/// at connect time (IP_BIND_ADDRESS_NO_PORT) so 4-tuples, not ports, must
/// be unique.
fn client_connect(server: SocketAddr, i: usize) -> nix::Result<TcpStream> {
    let fd = tcp4_socket()?;
    setsockopt(&fd, IpBindAddressNoPort, &true)?;
    let host = u8::try_from(2 + i / PER_SOURCE_IP).map_err(|_| Errno::EADDRNOTAVAIL)?;
    let src = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, host)), 0);
    bind(fd.as_raw_fd(), &SockaddrStorage::from(src))?;
    connect(fd.as_raw_fd(), &SockaddrStorage::from(server))?;
    Ok(TcpStream::from(fd))
}
