//! A disconnect callback that tells a half-close from a hang-up the way an
//! application can: it keeps jobs whose client only sent a FIN (clients
//! that `shutdown(SHUT_WR)` after their request on purpose) and cancels on a
//! reset. The job is the handler program given on the command line.
//!
//! ```sh
//! cargo run --example keep_half_closed -- 127.0.0.1:7003 ./examples/slow-job.sh
//! ```

use jobd::{DisconnectEvent, DisconnectReason, Verdict};

fn main() {
    tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .init();
    let mut args = std::env::args().skip(1);
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:7003".into());
    let handler = args.next().unwrap_or_else(|| "examples/slow-job.sh".into());
    let server = jobd::Server::builder()
        .listen(listen.parse().expect("an address such as 127.0.0.1:7003"))
        .prefork(2)
        .handler(handler, vec![])
        .on_client_disconnect(|ev: &DisconnectEvent| match ev.reason {
            DisconnectReason::ClientClosed => {
                eprintln!("callback: job {} keeps running after a FIN", ev.job_id);
                Verdict::Keep
            }
            // A reset, or a client that stopped acknowledging: gone for good.
            _ => Verdict::Cancel,
        })
        .build();
    if let Err(e) = server.and_then(|s| s.run()) {
        eprintln!("keep_half_closed: {e}");
        std::process::exit(e.exit_code());
    }
}
