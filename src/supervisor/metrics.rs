//! `--metrics-listen ADDR`: a small HTTP/1.1 server run inside the
//! supervisor's own loop (no thread, no blocking call): its listener and
//! connections are non-blocking descriptors in the supervisor's poll set.
//!
//! - `GET /metrics`: OpenMetrics text (`application/openmetrics-text`), or
//!   the Prometheus text format when the request's `Accept` does not name
//!   OpenMetrics;
//! - `GET /status`: an HTML page that refreshes itself (no JavaScript);
//! - `GET /status.json`: what `jobd status --json` prints.
//!
//! Other paths get 404, other methods 405, a request that is not HTTP 400.
//! At most [`MAX_CONNS`] connections at once: when a new one comes and all
//! are taken, the oldest that has sent nothing (else the oldest that has
//! not sent a whole request) is closed for it (idle connections cannot
//! lock a scraper out); a request must
//! arrive within [`READ_DEADLINE`] and fit in [`MAX_REQUEST`] bytes (its
//! head ends with an empty line, CRLF or bare LF); each connection gets
//! one answer and is closed. Out of descriptors, the listener is left
//! alone for [`ACCEPT_PAUSE`] (logged once per episode), not polled hot.
//! An answer larger than the socket takes at once (the status of a big
//! pool) is written as the client reads it, when the socket is writable
//! again, within [`WRITE_DEADLINE`].
//! No authentication: bind it to loopback or a private network.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

use nix::poll::PollFlags;

use super::slowlog::SlowLog;
use crate::control::status::Status;

/// Connections served at once.
pub(super) const MAX_CONNS: usize = 16;
/// Time for a client to send its request.
pub(super) const READ_DEADLINE: Duration = Duration::from_secs(2);
/// The longest request head read.
pub(super) const MAX_REQUEST: usize = 8192;
/// Time for a client to read its answer.
pub(super) const WRITE_DEADLINE: Duration = Duration::from_secs(10);
/// How long the listener rests after `accept` failed for want of
/// descriptors or memory.
pub(super) const ACCEPT_PAUSE: Duration = Duration::from_millis(250);

struct Conn {
    stream: TcpStream,
    /// The request as read so far.
    buf: Vec<u8>,
    /// The answer, once made, and how much of it is written.
    out: Option<(Vec<u8>, usize)>,
    deadline: Instant,
    /// When it was accepted (the oldest idle one makes way).
    since: Instant,
}

impl Conn {
    /// Sets the answer and writes what the socket takes now.
    fn answer(&mut self, msg: Vec<u8>) -> bool {
        self.out = Some((msg, 0));
        self.deadline = Instant::now() + WRITE_DEADLINE;
        self.flush()
    }

    /// Writes more of the answer; true while some is left to write.
    fn flush(&mut self) -> bool {
        let Some((msg, done)) = &mut self.out else {
            return false;
        };
        while *done < msg.len() {
            match self.stream.write(&msg[*done..]) {
                Ok(0) => return false,
                Ok(n) => *done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    return Instant::now() < self.deadline;
                }
                Err(_) => return false,
            }
        }
        false
    }
}

/// The server's listener and its open connections.
pub(super) struct Metrics {
    listener: TcpListener,
    conns: Vec<Conn>,
    /// `accept` failing for want of descriptors: the listener rests
    /// until then.
    paused_until: Option<Instant>,
    accept_fault: crate::episode::Episode,
}

/// What a request asks for.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Route {
    Metrics { openmetrics: bool },
    Status,
    StatusJson,
    NotFound,
    NotAllowed,
    Bad,
}

/// Where the request head ends (before its empty line, CRLF or bare LF),
/// if it is complete. Pure.
pub(super) fn head_end(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n");
    let lf = buf.windows(2).position(|w| w == b"\n\n");
    [crlf, lf].into_iter().flatten().min()
}

/// Reads the route from a complete request head. Pure.
pub(super) fn route(head: &str) -> Route {
    let mut lines = head.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let first = lines.next().unwrap_or("");
    let mut parts = first.split(' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Route::Bad;
    };
    if parts.next().is_some() || !version.starts_with("HTTP/1.") || !target.starts_with('/') {
        return Route::Bad;
    }
    if method != "GET" && method != "HEAD" {
        return Route::NotAllowed;
    }
    let path = target.split('?').next().unwrap_or(target);
    match path {
        "/metrics" => {
            let accept = lines
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("accept"))
                .map(|(_, v)| v.to_ascii_lowercase())
                .unwrap_or_default();
            Route::Metrics {
                openmetrics: accept.contains("application/openmetrics-text") || accept.is_empty(),
            }
        }
        "/status" => Route::Status,
        "/status.json" => Route::StatusJson,
        _ => Route::NotFound,
    }
}

impl Metrics {
    pub(super) fn new(listener: TcpListener) -> Metrics {
        Metrics {
            listener,
            conns: Vec::new(),
            paused_until: None,
            accept_fault: crate::episode::Episode::new("accept on --metrics-listen"),
        }
    }

    /// The descriptors to poll and what for: the listener, then each
    /// connection (readable while its request comes, writable while its
    /// answer goes).
    pub(super) fn fds(&self) -> Vec<(BorrowedFd<'_>, PollFlags)> {
        let listening = if self.paused_until.is_some() {
            PollFlags::empty()
        } else {
            PollFlags::POLLIN
        };
        std::iter::once((self.listener.as_fd(), listening))
            .chain(self.conns.iter().map(|c| {
                let what = if c.out.is_some() {
                    PollFlags::POLLOUT
                } else {
                    PollFlags::POLLIN
                };
                (c.stream.as_fd(), what)
            }))
            .collect()
    }

    /// The earliest deadline: a connection's, or the end of the
    /// listener's rest.
    pub(super) fn next_due(&self) -> Option<Instant> {
        self.conns
            .iter()
            .map(|c| c.deadline)
            .chain(self.paused_until)
            .min()
    }

    /// Accepts what waits, reads what arrived, answers complete requests
    /// (`status` makes the snapshot when one is needed), closes late ones.
    pub(super) fn serve(&mut self, status: &dyn Fn() -> Status, slow: &SlowLog) {
        if self.paused_until.is_some_and(|t| Instant::now() >= t) {
            self.paused_until = None;
        }
        while self.paused_until.is_none() {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    self.accept_fault.ok(None);
                    if stream.set_nonblocking(true).is_err() {
                        continue; // dropped: closed at once
                    }
                    // What it sent already (a scraper sends its request
                    // with the connect): it then never makes way below.
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 2048];
                    match (&stream).read(&mut chunk) {
                        Ok(0) => continue, // closed without a word
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        Err(_) => {} // WouldBlock: nothing yet
                    }
                    if self.conns.len() >= MAX_CONNS {
                        // The oldest that has sent nothing makes way, else
                        // the oldest still sending its request; when every
                        // one is being answered, the new one is closed.
                        let oldest = self
                            .conns
                            .iter()
                            .enumerate()
                            .filter(|(_, c)| c.out.is_none())
                            .min_by_key(|(_, c)| (!c.buf.is_empty(), c.since))
                            .map(|(i, _)| i);
                        match oldest {
                            Some(i) => drop(self.conns.swap_remove(i)),
                            None => continue,
                        }
                    }
                    let now = Instant::now();
                    self.conns.push(Conn {
                        stream,
                        buf,
                        out: None,
                        deadline: now + READ_DEADLINE,
                        since: now,
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    // EMFILE, ENFILE, ENOBUFS, ENOMEM (or a connection
                    // aborted): the connection waits in the queue; rest
                    // rather than poll a listener that stays readable.
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                    ) {
                        self.accept_fault.failed(None, &e);
                        self.paused_until = Some(Instant::now() + ACCEPT_PAUSE);
                    }
                    break;
                }
            }
        }
        let now = Instant::now();
        self.conns.retain_mut(|c| {
            if c.out.is_some() {
                return c.flush();
            }
            let mut chunk = [0u8; 2048];
            let mut eof = false;
            loop {
                match c.stream.read(&mut chunk) {
                    Ok(0) => {
                        // A client that half-closed after its request
                        // (`nc -N`) is still answered.
                        eof = true;
                        break;
                    }
                    Ok(n) => {
                        c.buf.extend_from_slice(&chunk[..n]);
                        if c.buf.len() > MAX_REQUEST {
                            return c.answer(respond(
                                431,
                                "text/plain",
                                b"request too large\n",
                                false,
                            ));
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => return false,
                }
            }
            let Some(end) = head_end(&c.buf) else {
                if eof {
                    return false;
                }
                if now >= c.deadline {
                    return c.answer(respond(408, "text/plain", b"request timeout\n", false));
                }
                return true;
            };
            let head = String::from_utf8_lossy(&c.buf[..end]).into_owned();
            let head_only = head.starts_with("HEAD ");
            let msg = match route(&head) {
                Route::Metrics { openmetrics: true } => respond(
                    200,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    crate::control::openmetrics::encode(&status()).as_bytes(),
                    head_only,
                ),
                Route::Metrics { openmetrics: false } => respond(
                    200,
                    "text/plain; version=0.0.4; charset=utf-8",
                    prometheus_text(&crate::control::openmetrics::encode(&status())).as_bytes(),
                    head_only,
                ),
                Route::StatusJson => {
                    let body = serde_json::to_string(&status()).unwrap_or_default() + "\n";
                    respond(200, "application/json", body.as_bytes(), head_only)
                }
                Route::Status => respond(
                    200,
                    "text/html; charset=utf-8",
                    html(&status(), slow).as_bytes(),
                    head_only,
                ),
                Route::NotFound => respond(404, "text/plain", b"not found\n", head_only),
                Route::NotAllowed => respond(405, "text/plain", b"only GET and HEAD\n", false),
                Route::Bad => respond(400, "text/plain", b"bad request\n", false),
            };
            c.answer(msg)
        });
    }
}

/// The Prometheus text format from OpenMetrics: no `# EOF`, and the info
/// metric as a gauge named `..._info` (the older format has no info type).
fn prometheus_text(om: &str) -> String {
    let mut out = String::with_capacity(om.len());
    for line in om.lines() {
        if line == "# EOF" {
            continue;
        }
        if let Some(name) = line
            .strip_prefix("# TYPE ")
            .and_then(|r| r.strip_suffix(" info"))
        {
            out.push_str(&format!("# TYPE {name}_info gauge\n"));
            continue;
        }
        if line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            if om.contains(&format!("# TYPE {name} info")) {
                out.push_str(&format!("# HELP {name}_info {help}\n"));
                continue;
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The status page: totals, slots, the last cancellations and slow-job
/// reports, refreshing itself every 2 s.
fn html(st: &Status, slow: &SlowLog) -> String {
    let t = &st.totals;
    let mut h = String::from(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"2\">\
         <title>jobd status</title><style>body{font-family:sans-serif}table{border-collapse:collapse}\
         td,th{border:1px solid #999;padding:2px 8px;text-align:right}</style></head><body>\n",
    );
    h.push_str(&format!(
        "<h1>jobd {} (pid {}) on {}</h1>\n<p>generation {}, containment {}</p>\n",
        if st.running { "running" } else { "not running" },
        st.supervisor_pid,
        escape(st.listen.as_deref().unwrap_or("?")),
        st.generation,
        st.containment
    ));
    h.push_str(&format!(
        "<p>workers {} (min {}, max {}): idle {}, busy {}, starting {}; max children reached {}</p>\n",
        t.workers, t.min_workers, t.max_children, t.idle, t.busy, t.starting, t.max_children_reached
    ));
    h.push_str(&format!(
        "<p>jobs ended {}, failed {}; cancelled: client closed {}, reset {}, unresponsive {}, timeout {}, shutdown {}; gone before start {}</p>\n",
        t.jobs_served,
        t.jobs_failed,
        t.cancelled_client_closed,
        t.cancelled_client_reset,
        t.cancelled_client_unresponsive,
        t.timeouts,
        t.cancelled_shutdown,
        t.gone_before_start
    ));
    h.push_str("<table><tr><th>slot</th><th>pid</th><th>state</th><th>gen</th><th>job</th><th>client</th><th>age</th><th>CPU</th><th>served</th></tr>\n");
    for s in &st.slots {
        let dash = || "-".to_string();
        h.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
            s.slot,
            s.pid,
            s.state.as_str(),
            s.generation,
            s.job_id.map_or_else(dash, |j| j.to_string()),
            escape(s.peer.as_deref().unwrap_or("-")),
            s.job_age_ms.map_or_else(dash, |ms| format!("{:.1}s", ms as f64 / 1000.0)),
            s.job_cpu_ms.map_or_else(dash, |ms| format!("{:.2}s", ms as f64 / 1000.0)),
            s.jobs_served
        ));
    }
    h.push_str("</table>\n<h2>Last cancellations</h2>\n<table><tr><th>job</th><th>client</th><th>reason</th><th>seen by</th><th>hang-up to detection</th><th>hang-up to gone</th><th>ago</th></tr>\n");
    let now = crate::scoreboard::now_unix_ms();
    let ms = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |ms| format!("{ms:.1} ms"));
    for c in &st.recent_cancellations {
        h.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.1}s</td></tr>\n",
            c.job_id,
            escape(c.peer.as_deref().unwrap_or("-")),
            c.reason,
            c.seen_by,
            ms(c.seen_after_ms),
            ms(c.gone_ms),
            now.saturating_sub(c.at_unix_ms) as f64 / 1000.0
        ));
    }
    h.push_str("</table>\n<h2>Slow jobs (--slow-job-log)</h2>\n<table><tr><th>job</th><th>slot</th><th>client</th><th>age when reported</th><th>ago</th><th>processes (pid state CPU command)</th></tr>\n");
    for r in slow.recent() {
        let tree: Vec<String> = r
            .tree
            .iter()
            .map(|p| {
                escape(&format!(
                    "{} {} {:.2}s {}",
                    p.pid,
                    p.state,
                    p.cpu_ms as f64 / 1000.0,
                    p.cmd
                ))
            })
            .collect();
        h.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{:.1}s</td><td>{:.1}s</td><td style=\"text-align:left\">{}</td></tr>\n",
            r.job_id,
            r.slot,
            escape(&r.peer.map(|p| p.to_string()).unwrap_or_else(|| "-".into())),
            r.age.as_secs_f64(),
            now.saturating_sub(r.at_unix_ms) as f64 / 1000.0,
            tree.join("<br>")
        ));
    }
    h.push_str("</table>\n</body></html>\n");
    h
}

/// One whole answer: status line, headers and (unless for HEAD) body.
fn respond(code: u16, ctype: &str, body: &[u8], head_only: bool) -> Vec<u8> {
    let reason = match code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        _ => "Error",
    };
    let mut msg = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\nCache-Control: no-store\r\n{}\r\n",
        body.len(),
        if code == 405 { "Allow: GET, HEAD\r\n" } else { "" }
    )
    .into_bytes();
    if !head_only {
        msg.extend_from_slice(body);
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(
            route("GET /metrics HTTP/1.1\r\nAccept: application/openmetrics-text; version=1.0.0"),
            Route::Metrics { openmetrics: true }
        );
        assert_eq!(
            route("GET /metrics HTTP/1.1\r\nAccept: text/plain"),
            Route::Metrics { openmetrics: false }
        );
        assert_eq!(route("GET /status?x=1 HTTP/1.0"), Route::Status);
        assert_eq!(route("GET /status.json HTTP/1.1"), Route::StatusJson);
        assert_eq!(route("GET /nope HTTP/1.1"), Route::NotFound);
        assert_eq!(route("POST /metrics HTTP/1.1"), Route::NotAllowed);
        assert_eq!(route("hello"), Route::Bad);
        assert_eq!(route("GET metrics HTTP/1.1"), Route::Bad);
        assert_eq!(
            route("GET /metrics HTTP/1.1\nAccept: text/plain"),
            Route::Metrics { openmetrics: false }
        );
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nrest"), Some(23));
        assert_eq!(head_end(b"GET / HTTP/1.1\nHost: x\n\n"), Some(22));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: x\r\n"), None);
    }

    #[test]
    fn prometheus_text_has_no_eof_and_no_info_type() {
        let om = "# HELP jobd_build jobd's version.\n# TYPE jobd_build info\njobd_build_info{version=\"1\"} 1\n# TYPE jobd_up gauge\njobd_up 1\n# EOF\n";
        let p = prometheus_text(om);
        assert!(!p.contains("# EOF") && !p.contains(" info\n"), "{p}");
        assert!(p.contains("# TYPE jobd_build_info gauge"), "{p}");
        assert!(p.contains("# HELP jobd_build_info jobd's version."), "{p}");
    }
}
