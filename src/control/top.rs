//! `jobd top --scoreboard PATH`: a live view of a running jobd, redrawn in
//! place every second: the totals, each slot with a bar of its job's age
//! against the longest, and the recent cancellations. `q` quits. When
//! stdout is not a terminal it prints plain snapshots instead, one a
//! second (`--count N` to stop after N).

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use super::status::{self, Status};

const BAR: usize = 30;

/// The screen for one snapshot (no escape codes). Pure.
pub fn frame(st: &Status) -> String {
    let mut out = st.render();
    let longest = st
        .slots
        .iter()
        .filter_map(|s| s.job_age_ms)
        .max()
        .unwrap_or(0);
    if longest > 0 {
        out.push_str("\njob ages\n");
        for s in st.slots.iter().filter(|s| s.job_age_ms.is_some()) {
            let age = s.job_age_ms.unwrap_or(0);
            let n = ((age as u128 * BAR as u128) / longest as u128) as usize;
            out.push_str(&format!(
                "{:>5} {:<width$} {:.1}s {}\n",
                s.slot,
                "#".repeat(n.max(1)),
                age as f64 / 1000.0,
                s.peer.as_deref().unwrap_or("-"),
                width = BAR
            ));
        }
    }
    if !st.recent_cancellations.is_empty() {
        out.push_str("\nlast cancellations\n");
        for c in &st.recent_cancellations {
            let ms = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |ms| format!("{ms:.1}ms"));
            out.push_str(&format!(
                "  job {} {} {} seen by {} detected {} gone {}\n",
                c.job_id,
                c.peer.as_deref().unwrap_or("-"),
                c.reason,
                c.seen_by,
                ms(c.seen_after_ms),
                ms(c.gone_ms)
            ));
        }
    }
    out
}

/// Runs the view; returns the exit code (2 when the scoreboard cannot be
/// read at the start).
pub fn run(path: &Path, count: Option<u64>) -> i32 {
    if let Err(e) = status::read(path) {
        eprintln!("jobd top: {e}");
        return 2;
    }
    let tty = nix::unistd::isatty(std::io::stdout()).unwrap_or(false)
        && nix::unistd::isatty(std::io::stdin()).unwrap_or(false);
    let saved = if tty { raw_stdin() } else { None };
    let mut shown = 0u64;
    let code = loop {
        let text = match status::read(path) {
            Ok(st) => frame(&st),
            Err(e) => format!("jobd top: {e}\n"),
        };
        let mut out = std::io::stdout().lock();
        let r = if tty {
            // Home, each line over the last screen's (cleared to its end),
            // then the rest of the screen cleared: no flicker.
            write!(out, "\x1b[H{}\x1b[J", text.replace('\n', "\x1b[K\r\n"))
        } else {
            writeln!(out, "{text}")
        };
        if r.and_then(|_| out.flush()).is_err() {
            break 0; // stdout closed
        }
        shown += 1;
        if count.is_some_and(|c| shown >= c) {
            break 0;
        }
        if wait_for_q(tty, Duration::from_secs(1)) {
            break 0;
        }
    };
    if let Some(t) = saved {
        let _ =
            nix::sys::termios::tcsetattr(std::io::stdin(), nix::sys::termios::SetArg::TCSANOW, &t);
    }
    code
}

/// Non-canonical, no-echo stdin (for `q`); returns what to restore.
fn raw_stdin() -> Option<nix::sys::termios::Termios> {
    use nix::sys::termios::{LocalFlags, SetArg, tcgetattr, tcsetattr};
    let saved = tcgetattr(std::io::stdin()).ok()?;
    let mut t = saved.clone();
    t.local_flags.remove(LocalFlags::ICANON | LocalFlags::ECHO);
    tcsetattr(std::io::stdin(), SetArg::TCSANOW, &t).ok()?;
    Some(saved)
}

/// Waits `d`; true when `q` was typed (terminal mode only).
fn wait_for_q(tty: bool, d: Duration) -> bool {
    if !tty {
        std::thread::sleep(d); // the refresh period, not a synchronisation
        return false;
    }
    let stdin = std::io::stdin();
    let mut fds = [nix::poll::PollFd::new(
        std::os::fd::AsFd::as_fd(&stdin),
        nix::poll::PollFlags::POLLIN,
    )];
    let ms = nix::poll::PollTimeout::try_from(d).unwrap_or(nix::poll::PollTimeout::MAX);
    if matches!(nix::poll::poll(&mut fds, ms), Ok(n) if n > 0) {
        let mut b = [0u8; 16];
        if let Ok(n) = nix::unistd::read(std::io::stdin(), &mut b) {
            return n == 0 || b[..n].contains(&b'q');
        }
    }
    false
}
