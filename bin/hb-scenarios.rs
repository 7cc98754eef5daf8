//! `hb-scenarios`: see `hb-scenarios --help`.
use std::process::ExitCode;

use clap::Parser;
use tcp_heartbeat::app::{cli, scenarios};

fn main() -> ExitCode {
    let args = scenarios::ScenarioArgs::parse();
    match scenarios::run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e @ scenarios::ScenarioError::Unsupported(_)) => cli::fail("hb-scenarios", e, 2),
        Err(e) => cli::fail("hb-scenarios", e, 1),
    }
}
