//! `hb-client`: see `hb-client --help`.
use std::process::ExitCode;

use clap::Parser;
use tcp_heartbeat::app::{cli, client};

fn main() -> ExitCode {
    let args = cli::ClientArgs::parse();
    match client::run(&args) {
        Ok(outcome) => {
            eprintln!("hb-client: {}", client::describe(outcome));
            ExitCode::from(outcome.exit_code())
        }
        Err(e) => cli::fail("hb-client", &e, e.exit_code()),
    }
}
