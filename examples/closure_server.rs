//! A Rust job server built with the library: each client sends one line and
//! gets it back upper-cased, from a closure run in a preforked worker.
//! A line `sleep N` makes the job sleep N seconds without ever checking
//! `ctx.is_cancelled()`: hang up during it and jobd kills the worker after
//! the kill grace (500 ms here) and forks a new one. A line `panic` makes
//! the job panic: it is logged as failed and the worker serves on.
//!
//! ```sh
//! cargo run --example closure_server -- 127.0.0.1:7001
//! printf 'hello\n' | socat - TCP:127.0.0.1:7001     # or any TCP client
//! ```

use std::io::{BufRead, BufReader, Write};

fn main() {
    tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .init();
    let listen = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:7001".into());
    let server = jobd::Server::builder()
        .listen(listen.parse().expect("an address such as 127.0.0.1:7001"))
        .prefork(2)
        .after_init(|info| eprintln!("closure_server bound {}", info.local_addr))
        .before_shutdown(|| eprintln!("closure_server shutting down"))
        .kill_grace(std::time::Duration::from_millis(500))
        .job_fn(|conn, ctx| {
            let mut line = String::new();
            BufReader::new(&conn).read_line(&mut line)?;
            if line.trim() == "panic" {
                // A panicking job fails; the worker goes on serving.
                panic!("job {} asked to panic", ctx.job_id);
            }
            if let Some(secs) = line.trim().strip_prefix("sleep ") {
                let secs: u64 = secs.parse().unwrap_or(1);
                std::thread::sleep(std::time::Duration::from_secs(secs));
            }
            writeln!(
                &conn,
                "job {} slot {}: {}",
                ctx.job_id,
                ctx.slot,
                line.trim().to_uppercase()
            )
        })
        .build();
    match server.and_then(|s| s.run()) {
        Ok(()) => {}
        Err(e) => {
            eprintln!("closure_server: {e}");
            std::process::exit(e.exit_code());
        }
    }
}
