//! A daemon built with the library: detaches, writes and locks a pid file,
//! logs to files (SIGUSR1 reopens them for logrotate), grows its pool under
//! load, recycles workers, times jobs out, and reloads when a marker file
//! changes (an `auto_reload_handler`). Control it with `jobd ctl`.
//!
//! ```sh
//! cargo run --example daemon -- /tmp/jobd-demo        # returns once the daemon is up
//! cat /tmp/jobd-demo/error.log                        # "listening on 127.0.0.1:PORT"
//! touch /tmp/jobd-demo/reload                         # workers are replaced once idle
//! jobd ctl status --pid-file /tmp/jobd-demo/jobd.pid
//! jobd ctl stop --pid-file /tmp/jobd-demo/jobd.pid
//! ```

use std::cell::Cell;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

fn main() {
    let dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "/tmp/jobd-demo".into()),
    );
    let listen = std::env::args()
        .nth(2)
        .unwrap_or_else(|| "127.0.0.1:0".into());
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("daemon: cannot create {}: {e}", dir.display());
        std::process::exit(2);
    }
    // The subscriber writes to stderr, which the daemon points at its
    // error log.
    tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .init();
    let marker = dir.join("reload");
    let seen: Cell<Option<SystemTime>> =
        Cell::new(std::fs::metadata(&marker).and_then(|m| m.modified()).ok());
    let server = jobd::Server::builder()
        .listen(listen.parse().expect("an address such as 127.0.0.1:7004"))
        .prefork(2)
        .max_children(16)
        .idle_timeout(Duration::from_secs(10))
        .max_requests_per_child(1000, 100)
        .job_timeout(Duration::from_secs(300))
        .daemonize(true)
        .pid_file(dir.join("jobd.pid"))
        .error_log(dir.join("error.log"))
        .access_log(dir.join("access.log"))
        .scoreboard(dir.join("jobd.sb"))
        .reload_check_every(Duration::from_secs(1))
        .auto_reload_handler(move || {
            let now = std::fs::metadata(&marker).and_then(|m| m.modified()).ok();
            now != seen.replace(now)
        })
        .on_worker_exit(|w| {
            if !w.planned {
                eprintln!(
                    "daemon: worker {} in slot {} died ({})",
                    w.pid, w.slot, w.status
                );
            }
        })
        .job_fn(|conn, ctx| {
            let mut line = String::new();
            BufReader::new(&conn).read_line(&mut line)?;
            writeln!(
                &conn,
                "job {} on slot {}: {}",
                ctx.job_id,
                ctx.slot,
                line.trim()
            )
        })
        .build();
    if let Err(e) = server.and_then(|s| s.run()) {
        eprintln!("daemon: {e}");
        std::process::exit(e.exit_code());
    }
}
