//! Flags shared by the binaries, parsed in one place (clap) and turned into typed settings.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;

use crate::config::{ClientFlags, ConfigError, FileConfig, Prompter, ServerFlags};

/// What `hb-server --help` says about exit codes.
const SERVER_EXIT: &str = "Exit status: 0 after Ctrl-C or SIGTERM (clients are told \
`END server-shutdown`), 2 bad flags or configuration (including flags that contradict each \
other or would do nothing), 1 anything else (such as a port already in use).";

/// What `hb-client --help` says about exit codes.
const CLIENT_EXIT: &str = "Exit status: 0 you ended the session (Ctrl-C, end of stdin with \
--chat, --messages reached), 3 the server ended it (END received; the reason is printed), \
4 the server stopped answering or vanished, 2 bad flags or configuration (including flags \
that contradict each other or would do nothing), 1 anything else (such as connection \
refused). With --probe: 0 healthy, 1 not healthy (the line on stdout says why), 2 bad flags \
or configuration.";

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
    /// The flags; declared with the settings they fill, in `config`.
    #[command(flatten)]
    pub flags: ServerFlags,
}

/// TCP heartbeat client: sends a message every EVERY and answers the server's heartbeats.
///
/// It prints every line the server sends. A `PING t` heartbeat is answered with `PONG t`
/// after BLOCK (0 by default; raise it only to test the server's heartbeat, as in the manual's
/// case 3). The client checks the server too: silence longer than the server's
/// idle + count x interval means the server is gone. With --chat it is an interactive chat
/// client instead (the server must run with --mode chat). With --probe it is a health check:
/// one HELLO and one PING round trip, one line, exit 0 or 1.
///
/// Settings come from flags, then configuration.json (server.host/server.port to connect
/// to; client.every, block, message, name), then prompts on stdin (not with --chat;
/// --defaults skips them), then defaults. DUR is a number of seconds (`5`, `0.25`) or has a
/// unit (`250ms`, `5s`, `2m`).
#[derive(Debug, Parser)]
#[command(name = "hb-client", version, after_help = CLIENT_EXIT)]
pub struct ClientArgs {
    /// The flags; declared with the settings they fill, in `config`.
    #[command(flatten)]
    pub flags: ClientFlags,
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
