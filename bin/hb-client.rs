//! `hb-client`: see `hb-client --help`.
use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use tcp_heartbeat::app::{cli, client};

fn main() -> ExitCode {
    let args = cli::ClientArgs::parse();
    if args.flags.probe {
        // One line on stdout, healthy or not; the exit status says which.
        return match client::probe(&args) {
            Ok(verdict) => {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{verdict}");
                let _ = out.flush();
                ExitCode::from(verdict.exit_code())
            }
            Err(e) => cli::fail("hb-client", &e, e.exit_code()),
        };
    }
    match client::run(&args) {
        Ok(outcome) => {
            eprintln!("hb-client: {}", client::describe(outcome));
            ExitCode::from(outcome.exit_code())
        }
        Err(e) => cli::fail("hb-client", &e, e.exit_code()),
    }
}
