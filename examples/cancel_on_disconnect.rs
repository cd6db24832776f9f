//! A Rust job server whose jobs are long computations, with a disconnect
//! callback that logs the event and cancels the job.
//!
//! Each client sends a number of steps; the job works 100 ms per step and
//! reports progress. When the client hangs up, `on_client_disconnect` logs
//! the event and returns `Verdict::Cancel`; the closure sees
//! `ctx.is_cancelled()` and stops (a closure that never checks is killed
//! with its worker after the kill grace).
//!
//! ```sh
//! cargo run --example cancel_on_disconnect -- 127.0.0.1:7002
//! ```

use std::io::{BufRead, BufReader, Write};
use std::time::Duration;

use jobd::{DisconnectEvent, Verdict};

fn main() {
    tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .init();
    let listen = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:7002".into());
    let server = jobd::Server::builder()
        .listen(listen.parse().expect("an address such as 127.0.0.1:7002"))
        .prefork(2)
        .on_client_disconnect(|ev: &DisconnectEvent| {
            eprintln!(
                "callback: client {}:{} of job {} went away ({}); cancelling",
                ev.foreign_host,
                ev.foreign_port,
                ev.job_id,
                ev.reason.as_str()
            );
            Verdict::Cancel
        })
        .job_fn(|conn, ctx| {
            let mut line = String::new();
            BufReader::new(&conn).read_line(&mut line)?;
            let steps: u32 = line.trim().parse().unwrap_or(50);
            for i in 1..=steps {
                if ctx.is_cancelled() {
                    eprintln!("job {} stops at step {i}: cancelled", ctx.job_id);
                    return Ok(());
                }
                std::thread::sleep(Duration::from_millis(100));
                // Writing to a hung-up client may fail: that is no reason to
                // stop computing before the supervisor says so.
                let _ = writeln!(&conn, "step {i}/{steps}");
            }
            writeln!(&conn, "done")
        })
        .build();
    if let Err(e) = server.and_then(|s| s.run()) {
        eprintln!("cancel_on_disconnect: {e}");
        std::process::exit(e.exit_code());
    }
}
