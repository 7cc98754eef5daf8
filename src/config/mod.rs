//! Settings: `configuration.json`, flags and prompts, validated into typed settings.
//!
//! Precedence is flags > configuration.json > prompts > defaults. The file is walked by hand
//! rather than through `#[derive(Deserialize)]` so every error names the exact key
//! (`server.port`), ports may be strings (the manual's layout) or numbers, and durations may be
//! numbers of seconds or strings with a unit.
//!
//! By concern: [`duration`] (how durations are written), [`file`](mod@file) (configuration.json),
//! [`prompt`] (questions on stdin), [`server`] and [`client`] (each program's flags, merged
//! with the file and the prompts into checked settings). Everything is re-exported here, so
//! `crate::config::X` is the path to use.

use std::fmt;
use std::path::PathBuf;

pub mod client;
pub mod duration;
pub mod file;
pub mod prompt;
pub mod server;

pub use client::{check_name, ClientFlags, ClientSettings};
// Declared in core (the protocol uses them); re-exported so `crate::config::Mode` keeps working.
pub use crate::core::mode::{Engine, Mode, Wire};
pub use duration::{fmt_duration, parse_duration, parse_duration_allow_zero};
pub use file::{FileClient, FileConfig};
pub use prompt::Prompter;
pub use server::{
    parse_count, parse_positive, LogFormat, MetricsAddr, ServerFlags, ServerOptions,
    ServerSettings, TlsFiles,
};

/// Default `configuration.json` looked up in the working directory.
pub const DEFAULT_CONFIG: &str = "configuration.json";

/// Something wrong with the settings; binaries exit 2 on it.
#[derive(Debug)]
pub enum ConfigError {
    /// The config file could not be read.
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The config file is not valid JSON.
    Json {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// Everything wrong in the config file's keys and values, all at once (so one run shows
    /// every typo, not just the first).
    File {
        /// The file.
        path: PathBuf,
        /// One entry per bad key, in key order (serde_json's map sorts keys); never empty.
        problems: Vec<FileProblem>,
    },
    /// A flag (or a derived setting) with a value that is wrong, out of range, or does nothing
    /// with the other flags.
    BadValue {
        /// Where the value came from: `--port`, `--every`, `heartbeat settings`.
        key: String,
        /// What is wrong and what is expected.
        reason: String,
    },
    /// Flags that contradict each other, or a flag that would do nothing with the others.
    Usage(String),
    /// An answer to a prompt was invalid and stdin is not a terminal to ask again.
    BadAnswer {
        /// The setting asked for.
        setting: &'static str,
        /// What was typed.
        answer: String,
        /// Why it was refused.
        reason: String,
    },
    /// Reading a prompt's answer failed.
    Prompt(std::io::Error),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Read { path, source } => {
                write!(f, "cannot read config {}: {source}", path.display())
            }
            Self::Json { path, message } => {
                write!(f, "config {} is not valid JSON: {message}", path.display())
            }
            Self::File { path, problems } => {
                // One line per problem: the binaries prefix each line with their name.
                for (i, p) in problems.iter().enumerate() {
                    if i > 0 {
                        writeln!(f)?;
                    }
                    write!(f, "{}: {}: {}", path.display(), p.key, p.reason)?;
                }
                Ok(())
            }
            Self::BadValue { key, reason } => write!(f, "{key}: {reason}"),
            Self::Usage(what) => f.write_str(what),
            Self::BadAnswer {
                setting,
                answer,
                reason,
            } => {
                write!(f, "invalid answer {answer:?} for {setting}: {reason}")
            }
            Self::Prompt(e) => write!(f, "cannot read the answer to a prompt: {e}"),
        }
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Read { source, .. } | Self::Prompt(source) => Some(source),
            _ => None,
        }
    }
}

/// One bad key in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileProblem {
    /// Dotted path of the key as written, e.g. `server.count` or `servr`.
    pub key: String,
    /// What is wrong and what is expected.
    pub reason: String,
}

fn bad(key: &str, reason: String) -> ConfigError {
    ConfigError::BadValue {
        key: key.to_owned(),
        reason,
    }
}

/// Defaults from the contract.
pub mod defaults {
    use std::time::Duration;
    /// `--interval`
    pub const INTERVAL: Duration = Duration::from_secs(10);
    /// `--count`
    pub const COUNT: u32 = 3;
    /// `--idle`
    pub const IDLE: Duration = Duration::from_secs(30);
    /// `--max-line`
    pub const MAX_LINE: usize = 65536;
    /// `--queue`
    pub const QUEUE: usize = 1 << 20;
    /// `--stall`: how long a recipient may hold its senders back (or accept nothing) before
    /// it is ended as a slow consumer.
    pub const STALL: Duration = Duration::from_millis(500);
    /// `--history`: chat messages kept for `HISTORY` and resume.
    pub const HISTORY: usize = crate::core::hub::DEFAULT_HISTORY;
    /// `--history-bytes`
    pub const HISTORY_BYTES: usize = crate::core::hub::DEFAULT_HISTORY_BYTES;
    /// `--node-timeout`: a silent server's members leave the other servers' rooms after this.
    pub const NODE_TIMEOUT: Duration = Duration::from_secs(3);
    /// Time a new connection has to finish its TLS handshake and its AUTH.
    pub const HANDSHAKE: Duration = Duration::from_secs(10);
    /// `--max-conns`. The server lowers it further to what `vm.max_map_count` allows (two
    /// threads per connection at four memory maps each: about 8,000 on stock limits).
    pub const MAX_CONNS: usize = 16384;
    /// `--every`
    pub const EVERY: Duration = Duration::from_secs(30);
    /// `--block`
    pub const BLOCK: Duration = Duration::ZERO;
    /// `--reconnect-for` (chat client)
    pub const RECONNECT_FOR: Duration = Duration::from_secs(60);
    /// `--message`
    pub const MESSAGE: &str = "Hello, there";
    /// `hb-client --probe --timeout`: the whole health check's deadline.
    pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
    /// Host when neither flag nor file sets one.
    pub const HOST: &str = "127.0.0.1";
    /// Server port when neither flag nor file sets one.
    pub const SERVER_PORT: u16 = 8000;
    /// Classic-wire client heartbeat port when neither flag nor file sets one.
    pub const CLIENT_PORT: u16 = 8001;
}

/// Where a setting came from, the way a user wrote it: `--wire classic` or
/// `server.wire "classic" in configuration.json`.
fn origin(flag_given: bool, flag: &str, key: &str, value: &str, file: &FileConfig) -> String {
    if flag_given {
        format!("{flag} {value}")
    } else {
        format!("{key} {value:?} in {}", file.path.display())
    }
}

/// Helpers the modules' unit tests share.
#[cfg(test)]
mod test_support {
    use std::path::Path;
    use std::time::Duration;

    use super::{ConfigError, FileConfig, Prompter};

    pub(super) fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    pub(super) fn parse(text: &str) -> Result<FileConfig, ConfigError> {
        FileConfig::parse(text, Path::new("configuration.json"))
    }

    pub(super) fn prompter(input: &str, interactive: bool) -> Prompter<&[u8], Vec<u8>> {
        Prompter::new(input.as_bytes(), Vec::new(), interactive)
    }
}
