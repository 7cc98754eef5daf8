//! Flags shared by the binaries, parsed in one place (clap) and turned into typed settings.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use crate::config::{
    parse_count, parse_duration, parse_duration_allow_zero, ClientFlags, ConfigError, FileConfig,
    Mode, Prompter, ServerFlags, ServerOptions, Wire,
};

fn duration(s: &str) -> Result<Duration, String> {
    parse_duration(s)
}

fn duration0(s: &str) -> Result<Duration, String> {
    parse_duration_allow_zero(s)
}

fn count(s: &str) -> Result<u32, String> {
    parse_count(s)
}

fn positive(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be greater than zero".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("'{s}' is not a whole number")),
    }
}

/// What `hb-server --help` says about exit codes.
const SERVER_EXIT: &str = "Exit status: 0 after Ctrl-C or SIGTERM (clients are told \
`END server-shutdown`), 2 bad flags or configuration (including flags that contradict each \
other or would do nothing), 1 anything else (such as a port already in use).";

/// What `hb-client --help` says about exit codes.
const CLIENT_EXIT: &str = "Exit status: 0 you ended the session (Ctrl-C, end of stdin with \
--chat, --messages reached), 3 the server ended it (END received; the reason is printed), \
4 the server stopped answering or vanished, 2 bad flags or configuration (including flags \
that contradict each other or would do nothing), 1 anything else (such as connection \
refused).";

/// TCP heartbeat server: serves clients and closes the ones that stop answering.
///
/// Every client gets `HELLO hb/1 idle=MS interval=MS count=N mode=M`. When a client has sent
/// nothing for IDLE, the server starts a heartbeat round: `PING 1`, then `PING 2` one INTERVAL
/// later, and so on. Anything the client sends ends the round. After COUNT unanswered
/// heartbeats the server sends `END heartbeat-timeout` and closes the connection, freeing its
/// threads.
///
/// Settings come from flags, then configuration.json, then prompts on stdin (Enter keeps the
/// default; --defaults skips them), then defaults. DUR is a number of seconds (`5`, `0.25`) or
/// has a unit (`250ms`, `5s`, `2m`).
#[derive(Debug, Parser)]
#[command(name = "hb-server", version, after_help = SERVER_EXIT)]
pub struct ServerArgs {
    /// Configuration file (manual layout: server.host / server.port, optionally
    /// server.interval, count, idle, mode, wire, max_conns, max_line, queue, stall; with --wire
    /// classic, client.port is where the server connects back for heartbeats) [default:
    /// configuration.json if present]
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Address or host name to listen on [default: 127.0.0.1]
    #[arg(long, value_name = "H")]
    pub host: Option<String>,
    /// TCP port to listen on; 0 picks any free port (the log shows which) [default: 8000]
    #[arg(long, value_name = "P")]
    pub port: Option<u16>,
    /// Time between heartbeats within a round, i.e. how long each heartbeat waits for an
    /// answer (DUR) [default: 10s]
    #[arg(long, value_name = "DUR", value_parser = duration)]
    pub interval: Option<Duration>,
    /// Unanswered heartbeats in a row before the connection is closed (a number)
    /// [default: 3]
    #[arg(long, value_name = "N", value_parser = count)]
    pub count: Option<u32>,
    /// Silence from a client before its heartbeat round starts (DUR); raised to
    /// INTERVAL x COUNT when smaller, as in the manual [default: 30s]
    #[arg(long, value_name = "DUR", value_parser = duration)]
    pub idle: Option<Duration>,
    /// What to do with `MSG` lines [default: echo]
    #[arg(long, value_enum)]
    pub mode: Option<Mode>,
    /// Bytes on the socket [default: line]
    #[arg(long, value_enum)]
    pub wire: Option<Wire>,
    /// Clients served at once (a number); newcomers beyond it are refused (`END
    /// server-full` on the line wire). Lowered (and logged) to what vm.max_map_count
    /// allows, about 8,000 on stock limits [default: 16384]
    #[arg(long, value_name = "N", value_parser = positive)]
    pub max_conns: Option<usize>,
    /// Longest line accepted, in bytes; longer gets `END line-too-long`. Line wire only
    /// [default: 65536]
    #[arg(long, value_name = "BYTES", value_parser = positive)]
    pub max_line: Option<usize>,
    /// Bytes queued for one client before it is ended as a slow consumer. Line wire only
    /// [default: 1048576]
    #[arg(long, value_name = "BYTES", value_parser = positive)]
    pub queue: Option<usize>,
    /// How long one client that cannot catch up may hold the senders back, or its socket
    /// accept nothing, before it is ended as a slow consumer (DUR). Line wire only
    /// [default: 500ms]
    #[arg(long, value_name = "DUR", value_parser = duration)]
    pub stall: Option<Duration>,
    /// Never prompt: use defaults for whatever flags and the file leave unset
    #[arg(long)]
    pub defaults: bool,
}

impl ServerArgs {
    /// The flags as settings overrides.
    pub fn flags(&self) -> ServerFlags {
        ServerFlags {
            config: self.config.clone(),
            defaults: self.defaults,
            options: ServerOptions {
                host: self.host.clone(),
                port: self.port,
                interval: self.interval,
                count: self.count,
                idle: self.idle,
                mode: self.mode,
                wire: self.wire,
                max_conns: self.max_conns,
                max_line: self.max_line,
                queue: self.queue,
                stall: self.stall,
            },
        }
    }
}

/// TCP heartbeat client: sends a message every EVERY and answers the server's heartbeats.
///
/// It prints every line the server sends. A `PING t` heartbeat is answered with `PONG t`
/// after BLOCK (0 by default; raise it only to test the server's heartbeat, as in the manual's
/// case 3). The client checks the server too: silence longer than the server's
/// idle + count x interval means the server is gone. With --chat it is an interactive chat
/// client instead (the server must run with --mode chat).
///
/// Settings come from flags, then configuration.json (server.host/server.port to connect
/// to; client.every, block, message, name), then prompts on stdin (not with --chat;
/// --defaults skips them), then defaults. DUR is a number of seconds (`5`, `0.25`) or has a
/// unit (`250ms`, `5s`, `2m`).
#[derive(Debug, Parser)]
#[command(name = "hb-client", version, after_help = CLIENT_EXIT)]
pub struct ClientArgs {
    /// Configuration file [default: configuration.json if present]
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Server host name or address [default: server.host from the file, else 127.0.0.1]
    #[arg(long, value_name = "H")]
    pub host: Option<String>,
    /// Server TCP port [default: server.port from the file, else 8000]
    #[arg(long, value_name = "P")]
    pub port: Option<u16>,
    /// Time between data messages to the server (DUR); longer than the server's idle makes
    /// its heartbeat kick in. Not with --chat [default: 30s]
    #[arg(long, value_name = "DUR", value_parser = duration)]
    pub every: Option<Duration>,
    /// Delay before answering a heartbeat (DUR); for testing only. Also applies with --chat
    /// [default: 0s]
    #[arg(long, value_name = "DUR", value_parser = duration0)]
    pub block: Option<Duration>,
    /// The data message: one line, not empty. Not with --chat [default: "Hello, there"]
    #[arg(long, value_name = "TEXT")]
    pub message: Option<String>,
    /// Bytes on the socket; must match the server's --wire [default: server.wire from the
    /// file, else line]
    #[arg(long, value_enum)]
    pub wire: Option<Wire>,
    /// Interactive chat (line wire, server in --mode chat): stdin lines are sent, peers'
    /// messages are printed, /quit leaves. Needs a name: --name or client.name
    #[arg(long)]
    pub chat: bool,
    /// Chat name: 1 to 32 characters, no spaces or control characters. Only with --chat
    /// [default: client.name from the file]
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Send this many messages (a number), then leave with QUIT (exit 0). Not with --chat
    #[arg(long, value_name = "N")]
    pub messages: Option<u64>,
    /// Never prompt: use defaults for whatever flags and the file leave unset
    #[arg(long)]
    pub defaults: bool,
}

impl ClientArgs {
    /// The flags as settings overrides.
    pub fn flags(&self) -> ClientFlags {
        ClientFlags {
            config: self.config.clone(),
            host: self.host.clone(),
            port: self.port,
            every: self.every,
            block: self.block,
            message: self.message.clone(),
            wire: self.wire,
            chat: self.chat,
            name: self.name.clone(),
            messages: self.messages,
            defaults: self.defaults,
        }
    }
}

/// Prompts on stdin/stderr: questions go to stderr so stdout stays a clean event log.
pub fn stdin_prompter() -> Prompter<std::io::StdinLock<'static>, std::io::Stderr> {
    let interactive = std::io::stdin().is_terminal();
    Prompter::new(std::io::stdin().lock(), std::io::stderr(), interactive)
}

/// Loads the configuration file named by `--config`, or the default one.
pub fn load_file(path: Option<&std::path::Path>) -> Result<FileConfig, ConfigError> {
    FileConfig::load(path)
}

/// Prints `prog: message` on stderr and returns `code`: the one way binaries fail. A message
/// of several lines (several problems in the config file) gets the prefix on every line.
pub fn fail(prog: &str, message: impl std::fmt::Display, code: u8) -> ExitCode {
    for line in message.to_string().lines() {
        eprintln!("{prog}: {line}");
    }
    ExitCode::from(code)
}
