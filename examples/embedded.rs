//! A program that embeds jobd beside processes of its own: before the pool
//! starts it runs a helper (`sleep 1000`, in a process group of its own, as
//! a program's own daemons often are), then serves a handler script with
//! preforked workers. jobd kills what its jobs leave behind, even when a
//! worker dies, and never touches the program's own helper.
//!
//! ```sh
//! cargo run --example embedded -- 127.0.0.1:7002 examples/handler.sh subreaper
//! ```
//! The third argument is the containment: `auto` (default), `cgroup` or
//! `subreaper`.

use std::os::unix::process::CommandExt;

fn main() {
    tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .init();
    let mut args = std::env::args().skip(1);
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:7002".into());
    let handler = args.next().unwrap_or_else(|| "examples/handler.sh".into());
    let containment = match args.next().as_deref() {
        Some("cgroup") => jobd::config::Containment::Cgroup,
        Some("subreaper") => jobd::config::Containment::Subreaper,
        _ => jobd::config::Containment::Auto,
    };
    // Not waited for here: once the pool runs, its supervisor (this
    // process) reaps every child that exits, this one included.
    #[allow(clippy::zombie_processes)]
    let helper = std::process::Command::new("sleep")
        .arg("1000")
        .process_group(0)
        .spawn()
        .expect("sleep");
    eprintln!("embedded helper pid {}", helper.id());
    let server = jobd::Server::builder()
        .listen(listen.parse().expect("an address such as 127.0.0.1:7002"))
        .prefork(2)
        .containment(containment)
        .handler(handler, Vec::new())
        .build()
        .expect("a valid configuration");
    if let Err(e) = server.run() {
        eprintln!("embedded: {e}");
        std::process::exit(1);
    }
}
