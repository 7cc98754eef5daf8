//! `hb-server`: see `hb-server --help`.
use std::process::ExitCode;

use clap::Parser;
use tcp_heartbeat::app::{cli, server};

fn main() -> ExitCode {
    let args = cli::ServerArgs::parse();
    match server::run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => cli::fail("hb-server", &e, e.exit_code()),
    }
}
