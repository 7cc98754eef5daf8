//! hb-echo: a TCP echo server made of raw syscalls, one thread per connection.
//!
//! Prints `listening on ADDR:PORT` once bound (the real port when `--port 0`) and runs
//! until Ctrl-C or SIGTERM. Exit codes: 0 stopped cleanly, 2 bad usage, 1 any other
//! failure (one line on stderr).

use clap::Parser;
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::process::ExitCode;
use tcp_heartbeat::net::rawsock::EchoServer;

/// A TCP echo server built from raw syscalls.
#[derive(Parser, Debug)]
#[command(name = "hb-echo", version)]
struct Cli {
    /// TCP port to listen on (required); 0 picks a free port and prints it.
    #[arg(long, value_name = "PORT")]
    port: u16,
    /// Host name or IPv4 address to bind (the raw-syscall server speaks IPv4 only).
    #[arg(long, value_name = "HOST", default_value = "127.0.0.1")]
    host: String,
}

/// The first IPv4 address `host` names (a literal address or a name to resolve).
fn resolve_v4(host: &str) -> Result<Ipv4Addr, String> {
    use std::net::{SocketAddr, ToSocketAddrs};
    if let Ok(ip) = host.parse::<Ipv4Addr>() {
        return Ok(ip);
    }
    let addrs = (host, 0)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve --host {host}: {e}"))?;
    addrs
        .filter_map(|a| match a {
            SocketAddr::V4(v4) => Some(*v4.ip()),
            SocketAddr::V6(_) => None,
        })
        .next()
        .ok_or_else(|| format!("--host {host} has no IPv4 address (hb-echo serves IPv4 only)"))
}

fn serve(cli: &Cli) -> Result<(), String> {
    let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(1);
    ctrlc::set_handler(move || {
        let _ = stop_tx.try_send(());
    })
    .map_err(|e| format!("cannot install signal handler: {e}"))?;
    let ip = resolve_v4(&cli.host)?;
    let server = EchoServer::start(ip, cli.port)
        .map_err(|e| format!("cannot listen on {}:{}: {e}", cli.host, cli.port))?;
    let mut out = io::stdout().lock();
    writeln!(out, "listening on {}", server.local_addr())
        .and_then(|()| out.flush())
        .map_err(|e| format!("writing stdout: {e}"))?;
    drop(out);
    // Blocks until a signal; the handler is the only sender, and it lives forever.
    let _ = stop_rx.recv();
    let counts = server.counts();
    server.stop();
    eprintln!(
        "hb-echo: stopped after {} connections, {} bytes echoed",
        counts.connections, counts.bytes
    );
    Ok(())
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if e.use_stderr() => {
            // clap's whole message: its first line alone does not name a missing argument.
            eprint!("hb-echo: {e}");
            return ExitCode::from(2);
        }
        Err(e) => e.exit(),
    };
    match serve(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hb-echo: {e}");
            ExitCode::from(1)
        }
    }
}
