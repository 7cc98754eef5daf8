//! hb-node: a Maelstrom node (keep-alive table, raw-syscall TCP echo, async RPC).
//!
//! Reads one JSON message per line on stdin until EOF and writes replies on stdout.
//! Exit codes: 0 input ended, 2 bad usage, 1 any other failure (one line on stderr).

use clap::Parser;
use std::io::{self, BufReader};
use std::process::ExitCode;
use std::time::Duration;
use tcp_heartbeat::app::node::{run, NodeConfig};
use tcp_heartbeat::config::parse_duration;

/// A Maelstrom node: keep-alive table, TCP echo over raw syscalls, async RPC.
#[derive(Parser, Debug)]
#[command(name = "hb-node", version)]
struct Cli {
    /// How long an RPC waits for its reply (5, 0.25, 250ms, 2m; plain number = seconds).
    #[arg(long, value_name = "DUR", default_value = "10", value_parser = parse_duration)]
    rpc_timeout: Duration,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if e.use_stderr() => {
            let first = e.to_string();
            let first = first.lines().next().unwrap_or("bad usage");
            eprintln!("hb-node: {first}");
            return ExitCode::from(2);
        }
        Err(e) => {
            // --help and --version: clap prints them and exits 0.
            e.exit();
        }
    };
    let config = NodeConfig {
        rpc_timeout: cli.rpc_timeout,
    };
    let stdout = io::stdout().lock();
    match run(BufReader::new(io::stdin()), stdout, io::stderr(), &config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hb-node: {e}");
            ExitCode::from(1)
        }
    }
}
