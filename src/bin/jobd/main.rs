//! The `jobd` command: parses arguments, installs the tracing subscriber,
//! runs the server or a subcommand, and maps errors to exit codes
//! (0 clean stop, 1 runtime failure, 2 usage or configuration error).

use std::process::ExitCode;

mod cli;

use clap::Parser;
use cli::{Cli, Command};
use jobd::LogFormat;

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("JOBD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Never panics on a failed write (a full disk, a closed pipe): the
        // line is dropped and counted, and the next one says so.
        .log_internal_errors(false)
        .with_writer(|| jobd::LossyStderr);
    match format {
        LogFormat::Text => builder.with_ansi(false).init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
    }
}

fn main() -> ExitCode {
    // Descriptors inherited from our parent (an fd 3 left open by a shell
    // or a service manager) are not passed on to handlers.
    jobd::cloexec_inherited();
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Status(args)) => match jobd::status::read(&args.scoreboard) {
            Ok(st) => {
                let format = if args.json {
                    cli::StatusFormat::Json
                } else {
                    args.format
                };
                let text = match format {
                    cli::StatusFormat::Json => format!(
                        "{}\n",
                        serde_json::to_string(&st).expect("status serializes")
                    ),
                    cli::StatusFormat::Openmetrics => jobd::control::openmetrics::encode(&st),
                    cli::StatusFormat::Table => st.render(),
                };
                // A closed stdout (`jobd status | head -1`) is no error.
                match std::io::Write::write_all(&mut std::io::stdout(), text.as_bytes()) {
                    Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                        eprintln!("jobd status: writing stdout: {e}");
                        ExitCode::from(1)
                    }
                    _ => ExitCode::SUCCESS,
                }
            }
            Err(e) => {
                eprintln!("jobd status: {:#}", anyhow::Error::new(e));
                ExitCode::from(2)
            }
        },
        Some(Command::Top(args)) => {
            ExitCode::from(jobd::control::top::run(&args.scoreboard, args.count) as u8)
        }
        Some(Command::Ctl(args)) => {
            ExitCode::from(jobd::control::ctl::run(&args.request(), &cli::check_start_args) as u8)
        }
        None => {
            let cfg = match cli.run.to_config() {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("jobd: {e}");
                    return ExitCode::from(2);
                }
            };
            init_tracing(cli.run.log_format.into());
            let server = match jobd::Server::builder().config(cfg).build() {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("jobd: {:#}", anyhow::Error::new(e));
                    return ExitCode::from(2);
                }
            };
            match server.run() {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    let code = e.exit_code();
                    tracing::error!("{:#}", anyhow::Error::new(e));
                    ExitCode::from(code as u8)
                }
            }
        }
    }
}
