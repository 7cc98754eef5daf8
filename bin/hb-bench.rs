//! `hb-bench`: see `hb-bench --help`.
use std::process::ExitCode;

use clap::Parser;
use tcp_heartbeat::app::{bench, cli};

fn main() -> ExitCode {
    let args = bench::BenchArgs::parse();
    match bench::run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => cli::fail("hb-bench", &e, e.exit_code()),
    }
}
