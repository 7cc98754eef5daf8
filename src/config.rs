//! Settings: `configuration.json`, flags and prompts, validated into typed settings.
//!
//! Precedence is flags > configuration.json > prompts > defaults. The file is walked by hand
//! rather than through `#[derive(Deserialize)]` so every error names the exact key
//! (`server.port`), ports may be strings (the manual's layout) or numbers, and durations may be
//! numbers of seconds or strings with a unit.

use std::fmt;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Map, Value};

use crate::core::heartbeat::{HeartbeatConfig, HeartbeatConfigError};
// Declared in core (the protocol uses them); re-exported so `crate::config::Mode` keeps working.
pub use crate::core::mode::{Mode, Wire};

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

/// Parses a duration as the contract writes it: `5`, `0.25` (seconds) or `250ms`, `5s`, `2m`.
/// Zero and negative values are rejected; see [`parse_duration_allow_zero`].
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = parse_duration_allow_zero(s)?;
    if d.is_zero() {
        return Err(format!("'{s}' must be greater than zero"));
    }
    Ok(d)
}

/// Like [`parse_duration`] but accepts zero (for settings such as `--block`).
pub fn parse_duration_allow_zero(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let (num, scale) = if let Some(n) = t.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60.0)
    } else {
        (t, 1.0)
    };
    let bad = || format!("'{s}' is not a duration (examples: 5, 0.25, 250ms, 2m)");
    let num = num.trim();
    if num.is_empty()
        || !num
            .chars()
            .all(|c| c.is_ascii_digit() || c == '.' || c == '-' || c == '+')
    {
        return Err(bad());
    }
    let v: f64 = num.parse().map_err(|_| bad())?;
    if v < 0.0 {
        return Err(format!("'{s}' is negative"));
    }
    Duration::try_from_secs_f64(v * scale).map_err(|_| format!("'{s}' is too large"))
}

/// Formats a duration the way the parser reads it back: `5s`, `250ms`, `2.5s`.
pub fn fmt_duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else if d < Duration::from_secs(1) && d.subsec_nanos() % 1_000_000 == 0 {
        format!("{}ms", d.as_millis())
    } else {
        let s = format!("{:.6}", d.as_secs_f64());
        format!("{}s", s.trim_end_matches('0').trim_end_matches('.'))
    }
}

/// Every server setting, declared once: the flags of `hb-server` (clap fills it from the
/// command line; each field's doc comment is its `--help` text) and the `server` object of
/// configuration.json (the file's key is the field's name, `server.max_conns` for
/// `--max-conns`). `None` where that source does not say; [`ServerOptions::or`] merges the two
/// and [`ServerSettings::resolve`] turns the result into checked settings.
#[derive(Debug, Clone, Default, PartialEq, clap::Args)]
pub struct ServerOptions {
    /// Address or host name to listen on [default: 127.0.0.1]
    #[arg(long, value_name = "H")]
    pub host: Option<String>,
    /// TCP port to listen on; 0 picks any free port (the log shows which) [default: 8000]
    #[arg(long, value_name = "P")]
    pub port: Option<u16>,
    /// Time between heartbeats within a round, i.e. how long each heartbeat waits for an
    /// answer (DUR) [default: 10s]
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub interval: Option<Duration>,
    /// Unanswered heartbeats in a row before the connection is closed (a number)
    /// [default: 3]
    #[arg(long, value_name = "N", value_parser = parse_count)]
    pub count: Option<u32>,
    /// Silence from a client before its heartbeat round starts (DUR); raised to
    /// INTERVAL x COUNT when smaller, as in the manual [default: 30s]
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
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
    #[arg(long, value_name = "N", value_parser = parse_positive)]
    pub max_conns: Option<usize>,
    /// Longest line accepted, in bytes; longer gets `END line-too-long`. Line wire only
    /// [default: 65536]
    #[arg(long, value_name = "BYTES", value_parser = parse_positive)]
    pub max_line: Option<usize>,
    /// Bytes queued for one client before it is ended as a slow consumer. Line wire only
    /// [default: 1048576]
    #[arg(long, value_name = "BYTES", value_parser = parse_positive)]
    pub queue: Option<usize>,
    /// How long one client that cannot catch up may hold the senders back, or its socket
    /// accept nothing, before it is ended as a slow consumer (DUR). Line wire only
    /// [default: 500ms]
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub stall: Option<Duration>,
}

impl ServerOptions {
    /// Each setting from `self`, else from `fallback` (flags over the file).
    pub fn or(&self, fallback: &ServerOptions) -> ServerOptions {
        ServerOptions {
            host: self.host.clone().or_else(|| fallback.host.clone()),
            port: self.port.or(fallback.port),
            interval: self.interval.or(fallback.interval),
            count: self.count.or(fallback.count),
            idle: self.idle.or(fallback.idle),
            mode: self.mode.or(fallback.mode),
            wire: self.wire.or(fallback.wire),
            max_conns: self.max_conns.or(fallback.max_conns),
            max_line: self.max_line.or(fallback.max_line),
            queue: self.queue.or(fallback.queue),
            stall: self.stall.or(fallback.stall),
        }
    }
}

/// `client.*` from configuration.json.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FileClient {
    /// `client.host`: where the client listens for the classic heartbeat socket.
    pub host: Option<String>,
    /// `client.port`
    pub port: Option<u16>,
    /// `client.every`
    pub every: Option<Duration>,
    /// `client.block`
    pub block: Option<Duration>,
    /// `client.message`
    pub message: Option<String>,
    /// `client.name`
    pub name: Option<String>,
}

/// A parsed configuration.json.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FileConfig {
    /// The file it came from (empty when there was none), for messages about its values.
    pub path: PathBuf,
    /// The `server` object.
    pub server: ServerOptions,
    /// The `client` object.
    pub client: FileClient,
}

/// The keys `server` may hold: the fields of [`ServerOptions`], in their order (clap names
/// each argument after its field), so a new setting is a known key without a second list.
fn server_keys() -> Vec<String> {
    use clap::Args;
    ServerOptions::augment_args(clap::Command::new("server"))
        .get_arguments()
        .map(|a| a.get_id().to_string())
        .collect()
}

/// The keys `client` may hold.
const CLIENT_KEYS: &[&str] = &["host", "port", "every", "block", "message", "name"];

impl FileConfig {
    /// Loads `path` if given (it must exist), else `configuration.json` if it exists, else
    /// an empty configuration.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let (path, must_exist) = match path {
            Some(p) => (p.to_path_buf(), true),
            None => (PathBuf::from(DEFAULT_CONFIG), false),
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => Self::parse(&text, &path),
            Err(e) if !must_exist && e.kind() == std::io::ErrorKind::NotFound => {
                Ok(Self::default())
            }
            Err(source) => Err(ConfigError::Read { path, source }),
        }
    }

    /// Parses the text of a configuration file (`path` is kept for messages). Every bad key
    /// is reported in one [`ConfigError::File`], not just the first.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let value: Value = serde_json::from_str(text).map_err(|e| ConfigError::Json {
            path: path.into(),
            message: e.to_string(),
        })?;
        let mut cfg = Self {
            path: path.into(),
            ..Self::default()
        };
        let mut problems = Problems::default();
        match value.as_object() {
            None => problems.add(
                "(top level)",
                format!("expected an object, got {}", kind(&value)),
            ),
            Some(top) => {
                for (key, v) in top {
                    match (key.as_str(), v.as_object()) {
                        ("server", Some(obj)) => cfg.server = parse_server(obj, &mut problems),
                        ("client", Some(obj)) => cfg.client = parse_client(obj, &mut problems),
                        ("server" | "client", None) => {
                            problems.add(key, format!("expected an object, got {}", kind(v)))
                        }
                        (other, _) => problems.add(other, unknown(&["server", "client"])),
                    }
                }
            }
        }
        if problems.0.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigError::File {
                path: path.into(),
                problems: problems.0,
            })
        }
    }

    /// An error about keys of this file that are fine one by one but not together.
    fn problem(&self, key: &str, reason: String) -> ConfigError {
        ConfigError::File {
            path: self.path.clone(),
            problems: vec![FileProblem {
                key: key.to_owned(),
                reason,
            }],
        }
    }
}

/// The problems found so far while walking a file.
#[derive(Default)]
struct Problems(Vec<FileProblem>);

impl Problems {
    fn add(&mut self, key: &str, reason: String) {
        self.0.push(FileProblem {
            key: key.to_owned(),
            reason,
        });
    }

    /// The value, or `None` with the reason noted against `key`.
    fn take<T>(&mut self, key: &str, r: Result<T, String>) -> Option<T> {
        r.map_err(|reason| self.add(key, reason)).ok()
    }
}

fn unknown<S: AsRef<str>>(known: &[S]) -> String {
    let known: Vec<&str> = known.iter().map(AsRef::as_ref).collect();
    format!("unknown key (known: {})", known.join(", "))
}

fn bad(key: &str, reason: String) -> ConfigError {
    ConfigError::BadValue {
        key: key.to_owned(),
        reason,
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn string(v: &Value) -> Result<String, String> {
    v.as_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("expected a string, got {}", kind(v)))
}

/// A whole number written as a JSON number or a string (`3` or `"3"`), as ports may be.
fn whole(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse::<u64>().ok(),
        _ => None,
    }
}

fn port(v: &Value) -> Result<u16, String> {
    whole(v)
        .and_then(|n| u16::try_from(n).ok())
        .ok_or_else(|| format!("expected a port 0-65535 as a number or a string, got {v}"))
}

fn positive(v: &Value) -> Result<u64, String> {
    whole(v)
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("expected a whole number above zero, got {v}"))
}

fn positive_usize(v: &Value) -> Result<usize, String> {
    let n = positive(v)?;
    usize::try_from(n).map_err(|_| format!("{n} is too large"))
}

fn count_value(v: &Value) -> Result<u32, String> {
    let n = positive(v)?;
    u32::try_from(n).map_err(|_| format!("{n} is too large"))
}

fn duration(v: &Value, allow_zero: bool) -> Result<Duration, String> {
    let parse = if allow_zero {
        parse_duration_allow_zero
    } else {
        parse_duration
    };
    match v {
        Value::Number(n) => parse(&n.to_string()),
        Value::String(s) => parse(s),
        _ => Err(format!(
            "expected seconds as a number or a string such as \"250ms\", got {}",
            kind(v)
        )),
    }
}

fn message_value(v: &Value) -> Result<String, String> {
    let m = string(v)?;
    check_message(&m)?;
    Ok(m)
}

fn name_value(v: &Value) -> Result<String, String> {
    let n = string(v)?;
    check_name(&n)?;
    Ok(n)
}

/// A data message must be something to send, on one line.
fn check_message(m: &str) -> Result<(), String> {
    if m.is_empty() {
        Err("must not be empty (there would be nothing to send)".into())
    } else if m.contains(['\n', '\r']) {
        Err("must be a single line".into())
    } else {
        Ok(())
    }
}

/// A chat name the room would take; checked here so a bad one is a usage error, not a
/// refusal from the server after connecting.
pub fn check_name(name: &str) -> Result<(), String> {
    crate::core::room::validate_name(name).map_err(|e| {
        let why = e
            .detail
            .split_once(": ")
            .map_or(e.detail.as_str(), |(_, w)| w);
        format!("{name:?} is not a usable chat name ({why})")
    })
}

fn parse_server(obj: &Map<String, Value>, problems: &mut Problems) -> ServerOptions {
    let mut s = ServerOptions::default();
    for (k, v) in obj {
        let key = format!("server.{k}");
        let p = &mut *problems;
        let key = key.as_str();
        match k.as_str() {
            "host" => s.host = p.take(key, string(v)),
            "port" => s.port = p.take(key, port(v)),
            "interval" => s.interval = p.take(key, duration(v, false)),
            "idle" => s.idle = p.take(key, duration(v, false)),
            "count" => s.count = p.take(key, count_value(v)),
            "mode" => s.mode = p.take(key, string(v).and_then(|m| Mode::parse(&m))),
            "wire" => s.wire = p.take(key, string(v).and_then(|w| Wire::parse(&w))),
            "max_conns" => s.max_conns = p.take(key, positive_usize(v)),
            "max_line" => s.max_line = p.take(key, positive_usize(v)),
            "queue" => s.queue = p.take(key, positive_usize(v)),
            "stall" => s.stall = p.take(key, duration(v, false)),
            _ => p.add(key, unknown(&server_keys())),
        }
    }
    s
}

fn parse_client(obj: &Map<String, Value>, problems: &mut Problems) -> FileClient {
    let mut c = FileClient::default();
    for (k, v) in obj {
        let key = format!("client.{k}");
        let p = &mut *problems;
        let key = key.as_str();
        match k.as_str() {
            "host" => c.host = p.take(key, string(v)),
            "port" => c.port = p.take(key, port(v)),
            "every" => c.every = p.take(key, duration(v, false)),
            "block" => c.block = p.take(key, duration(v, true)),
            "message" => c.message = p.take(key, message_value(v)),
            "name" => c.name = p.take(key, name_value(v)),
            _ => p.add(key, unknown(CLIENT_KEYS)),
        }
    }
    c
}

/// Asks for settings on a line-oriented input, as the manual's programs do.
///
/// Enter or end of input keeps the default. An invalid answer is explained and asked again
/// when the input is a terminal; otherwise it is an error, so a script never loops forever.
pub struct Prompter<R, W> {
    input: R,
    out: W,
    interactive: bool,
    eof: bool,
}

impl<R: BufRead, W: Write> Prompter<R, W> {
    /// A prompter reading answers from `input` and writing questions to `out`.
    pub fn new(input: R, out: W, interactive: bool) -> Self {
        Self {
            input,
            out,
            interactive,
            eof: false,
        }
    }

    /// Asks `question`, showing `default` (already formatted), and parses the answer.
    pub fn ask<T>(
        &mut self,
        setting: &'static str,
        question: &str,
        default: T,
        shown_default: &str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        loop {
            if self.eof {
                return Ok(default);
            }
            write!(self.out, "{question} [default {shown_default}]: ")
                .map_err(ConfigError::Prompt)?;
            self.out.flush().map_err(ConfigError::Prompt)?;
            let mut line = String::new();
            if self
                .input
                .read_line(&mut line)
                .map_err(ConfigError::Prompt)?
                == 0
            {
                self.eof = true;
                writeln!(self.out).map_err(ConfigError::Prompt)?;
                return Ok(default);
            }
            let answer = line.trim();
            if answer.is_empty() {
                return Ok(default);
            }
            match parse(answer) {
                Ok(v) => return Ok(v),
                Err(reason) if self.interactive => {
                    writeln!(
                        self.out,
                        "  {reason}; try again, or press Enter for the default"
                    )
                    .map_err(ConfigError::Prompt)?;
                }
                Err(reason) => {
                    return Err(ConfigError::BadAnswer {
                        setting,
                        answer: answer.to_owned(),
                        reason,
                    })
                }
            }
        }
    }

    /// Writes an informational line (a confirmation, a warning) next to the prompts.
    pub fn say(&mut self, line: &str) -> Result<(), ConfigError> {
        writeln!(self.out, "{line}").map_err(ConfigError::Prompt)
    }
}

/// Parses a whole number above zero (for `count` prompts and flags).
pub fn parse_count(s: &str) -> Result<u32, String> {
    match s.trim().parse::<u32>() {
        Ok(0) => Err("must be at least 1".to_owned()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("'{s}' is not a whole number above zero")),
    }
}

/// Parses a whole number above zero (for byte and connection limits).
pub fn parse_positive(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be greater than zero".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("'{s}' is not a whole number")),
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
    /// `--max-conns`. The server lowers it further to what `vm.max_map_count` allows (two
    /// threads per connection at four memory maps each: about 8,000 on stock limits).
    pub const MAX_CONNS: usize = 16384;
    /// `--every`
    pub const EVERY: Duration = Duration::from_secs(30);
    /// `--block`
    pub const BLOCK: Duration = Duration::ZERO;
    /// `--message`
    pub const MESSAGE: &str = "Hello, there";
    /// Host when neither flag nor file sets one.
    pub const HOST: &str = "127.0.0.1";
    /// Server port when neither flag nor file sets one.
    pub const SERVER_PORT: u16 = 8000;
    /// Classic-wire client heartbeat port when neither flag nor file sets one.
    pub const CLIENT_PORT: u16 = 8001;
}

/// `hb-server`'s command line: the settings, plus the two flags that are not settings.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServerFlags {
    /// Configuration file (manual layout: server.host / server.port, optionally
    /// server.interval, count, idle, mode, wire, max_conns, max_line, queue, stall; with --wire
    /// classic, client.port is where the server connects back for heartbeats) [default:
    /// configuration.json if present]
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Every other flag; `None` means "not given".
    #[command(flatten)]
    pub options: ServerOptions,
    /// Never prompt: use defaults for whatever flags and the file leave unset
    #[arg(long)]
    pub defaults: bool,
}

/// Validated server settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerSettings {
    /// Address to listen on.
    pub host: String,
    /// Port to listen on (0: any free port).
    pub port: u16,
    /// Heartbeat timing (idle already raised to interval * count if needed).
    pub heartbeat: HeartbeatConfig,
    /// The idle asked for, when it had to be raised.
    pub idle_raised_from: Option<Duration>,
    /// Echo or chat.
    pub mode: Mode,
    /// Line or classic.
    pub wire: Wire,
    /// Connections served at once; more are refused with `END server-full`.
    pub max_conns: usize,
    /// Longest accepted line in bytes.
    pub max_line: usize,
    /// Bytes queued for one client before it is a slow consumer.
    pub queue: usize,
    /// How long a recipient that cannot catch up may hold its senders back, or its socket
    /// accept nothing, before it is ended with `END slow-consumer` (never zero).
    pub stall: Duration,
    /// Classic wire: the port the server connects back to for the heartbeat socket
    /// (`client.port` of configuration.json, as in the manual; default 8001).
    pub classic_client_port: u16,
}

fn heartbeat_error(e: HeartbeatConfigError) -> ConfigError {
    bad("heartbeat settings", e.to_string())
}

impl ServerSettings {
    /// Merges flags, the file and (for what neither sets, unless `--defaults`) prompts.
    pub fn resolve<R: BufRead, W: Write>(
        flags: &ServerFlags,
        file: &FileConfig,
        prompter: &mut Prompter<R, W>,
    ) -> Result<Self, ConfigError> {
        let o = flags.options.or(&file.server);
        // Before any prompt: nobody should answer questions for a command line that fails.
        check_server_flags(flags, file)?;
        let mut ask = (!flags.defaults).then_some(prompter);
        let interval = setting(
            o.interval,
            &mut ask,
            "interval",
            "Time between heartbeats (interval)",
            defaults::INTERVAL,
            parse_duration,
        )?;
        let count = setting(
            o.count,
            &mut ask,
            "count",
            "Unanswered heartbeats before closing (count)",
            defaults::COUNT,
            parse_count,
        )?;
        let idle = setting(
            o.idle,
            &mut ask,
            "idle",
            "Silence before the heartbeat round starts (idle; at least interval x count)",
            defaults::IDLE,
            parse_duration,
        )?;
        let heartbeat = HeartbeatConfig::new(idle, interval, count).map_err(heartbeat_error)?;
        let max_line = o.max_line.unwrap_or(defaults::MAX_LINE);
        let queue = o.queue.unwrap_or(defaults::QUEUE);
        let max_conns = o.max_conns.unwrap_or(defaults::MAX_CONNS);
        for (key, v) in [
            ("--max-line", max_line),
            ("--queue", queue),
            ("--max-conns", max_conns),
        ] {
            if v == 0 {
                return Err(bad(key, "must be greater than zero".into()));
            }
        }
        Ok(Self {
            host: o.host.unwrap_or_else(|| defaults::HOST.into()),
            port: o.port.unwrap_or(defaults::SERVER_PORT),
            idle_raised_from: HeartbeatConfig::raised_idle_from(idle, &heartbeat),
            heartbeat,
            mode: o.mode.unwrap_or_default(),
            wire: o.wire.unwrap_or_default(),
            max_conns,
            max_line,
            queue,
            stall: o.stall.unwrap_or(defaults::STALL),
            classic_client_port: file.client.port.unwrap_or(defaults::CLIENT_PORT),
        })
    }
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

/// Server flags that contradict each other or the file, or would do nothing. Values in the
/// file alone that do not apply are fine (one file serves several uses); flags are not.
fn check_server_flags(flags: &ServerFlags, file: &FileConfig) -> Result<(), ConfigError> {
    let f = &flags.options;
    let wire = f.wire.or(file.server.wire).unwrap_or_default();
    let mode = f.mode.or(file.server.mode).unwrap_or_default();
    if wire != Wire::Classic {
        return Ok(());
    }
    let wire_src = origin(f.wire.is_some(), "--wire", "server.wire", "classic", file);
    if mode == Mode::Chat {
        if f.mode.is_none() && f.wire.is_none() {
            return Err(file.problem(
                "server.mode",
                "chat works only on the line wire, and server.wire is classic".into(),
            ));
        }
        let mode_src = origin(f.mode.is_some(), "--mode", "server.mode", "chat", file);
        return Err(ConfigError::Usage(format!(
            "{mode_src} works only on the line wire, not with {wire_src}"
        )));
    }
    for (flag, given) in [
        ("--max-line", f.max_line.is_some()),
        ("--queue", f.queue.is_some()),
        ("--stall", f.stall.is_some()),
    ] {
        if given {
            return Err(ConfigError::Usage(format!(
                "{flag} does nothing with {wire_src}: that wire has no lines and no outbound queue"
            )));
        }
    }
    Ok(())
}

/// Client flags that contradict each other or would do nothing, and flag values the server
/// would refuse.
fn check_client_flags(flags: &ClientFlags, file: &FileConfig) -> Result<(), ConfigError> {
    if let Some(m) = &flags.message {
        check_message(m).map_err(|r| bad("--message", r))?;
    }
    if let Some(n) = &flags.name {
        check_name(n).map_err(|r| bad("--name", r))?;
    }
    if !flags.chat {
        if flags.name.is_some() {
            return Err(ConfigError::Usage(
                "--name does nothing without --chat (it is the chat name)".into(),
            ));
        }
        return Ok(());
    }
    for (flag, given) in [
        ("--every", flags.every.is_some()),
        ("--message", flags.message.is_some()),
        ("--messages", flags.messages.is_some()),
    ] {
        if given {
            return Err(ConfigError::Usage(format!(
                "{flag} does nothing with --chat: the chat client sends the lines you type"
            )));
        }
    }
    // The file's server.wire describes the server; chat needs a line-wire server.
    if flags.wire.or(file.server.wire) == Some(Wire::Classic) {
        let wire_src = origin(
            flags.wire.is_some(),
            "--wire",
            "server.wire",
            "classic",
            file,
        );
        return Err(ConfigError::Usage(format!(
            "--chat works only on the line wire, not with {wire_src}"
        )));
    }
    if flags.name.is_none() && file.client.name.is_none() {
        let from = if file.path.as_os_str().is_empty() {
            String::new()
        } else {
            format!(" (or client.name in {})", file.path.display())
        };
        return Err(ConfigError::Usage(format!(
            "--chat needs a name: --name NAME{from}"
        )));
    }
    Ok(())
}

/// A setting's value: given, else asked for (when a prompter is at hand), else the default.
fn setting<T: ShowDefault, R: BufRead, W: Write>(
    given: Option<T>,
    prompter: &mut Option<&mut Prompter<R, W>>,
    name: &'static str,
    question: &str,
    default: T,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<T, ConfigError> {
    match (given, prompter) {
        (Some(v), _) => Ok(v),
        (None, Some(p)) => {
            let shown = default.show();
            p.ask(name, question, default, &shown, parse)
        }
        (None, None) => Ok(default),
    }
}

/// How a default is shown in a prompt: the way a user would type it.
trait ShowDefault {
    fn show(&self) -> String;
}

impl ShowDefault for Duration {
    fn show(&self) -> String {
        fmt_duration(*self)
    }
}

impl ShowDefault for u32 {
    fn show(&self) -> String {
        self.to_string()
    }
}

/// `hb-client`'s command line; `None` means "not given". Each field's doc comment is its
/// `--help` text.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ClientFlags {
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
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub every: Option<Duration>,
    /// Delay before answering a heartbeat (DUR); for testing only. Also applies with --chat
    /// [default: 0s]
    #[arg(long, value_name = "DUR", value_parser = parse_duration_allow_zero)]
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

/// Validated client settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientSettings {
    /// The server's host.
    pub host: String,
    /// The server's port.
    pub port: u16,
    /// Time between data messages.
    pub every: Duration,
    /// Delay before answering a heartbeat (testing only).
    pub block: Duration,
    /// The data message.
    pub message: String,
    /// Line or classic.
    pub wire: Wire,
    /// Interactive chat with this name.
    pub chat_name: Option<String>,
    /// Leave after this many data messages.
    pub messages: Option<u64>,
    /// Where the classic-wire client listens for the heartbeat socket.
    pub listen_host: String,
    /// Port of the classic-wire heartbeat listener.
    pub listen_port: u16,
}

impl ClientSettings {
    /// Merges flags, the file and (for what neither sets, unless `--defaults`) prompts.
    pub fn resolve<R: BufRead, W: Write>(
        flags: &ClientFlags,
        file: &FileConfig,
        prompter: &mut Prompter<R, W>,
    ) -> Result<Self, ConfigError> {
        let f = &file.client;
        // Before any prompt: nobody should answer questions for a command line that fails.
        check_client_flags(flags, file)?;
        if flags.messages == Some(0) {
            return Err(bad("--messages", "must be greater than zero".into()));
        }
        // The chat client reads stdin for messages, so it never prompts.
        let prompt = !flags.defaults && !flags.chat;
        let mut ask = prompt.then_some(prompter);
        let every = setting(
            flags.every.or(f.every),
            &mut ask,
            "every",
            "Time between messages to the server (every)",
            defaults::EVERY,
            parse_duration,
        )?;
        let block = setting(
            flags.block.or(f.block),
            &mut ask,
            "block",
            "Delay before answering a heartbeat (block; for testing only)",
            defaults::BLOCK,
            parse_duration_allow_zero,
        )?;
        let message = flags
            .message
            .clone()
            .or_else(|| f.message.clone())
            .unwrap_or_else(|| defaults::MESSAGE.into());
        // A flag overrides the file's client.name; both were checked already.
        let chat_name = flags
            .chat
            .then(|| flags.name.clone().or_else(|| f.name.clone()))
            .flatten();
        Ok(Self {
            host: flags
                .host
                .clone()
                .or_else(|| file.server.host.clone())
                .unwrap_or_else(|| defaults::HOST.into()),
            port: flags
                .port
                .or(file.server.port)
                .unwrap_or(defaults::SERVER_PORT),
            every,
            block,
            message,
            // The file's server.wire describes the server this client talks to.
            wire: flags.wire.or(file.server.wire).unwrap_or_default(),
            chat_name,
            messages: flags.messages,
            listen_host: f.host.clone().unwrap_or_else(|| defaults::HOST.into()),
            listen_port: f.port.unwrap_or(defaults::CLIENT_PORT),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn durations_parse_as_the_contract_says() {
        assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("0.25"), Ok(ms(250)));
        assert_eq!(parse_duration("250ms"), Ok(ms(250)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration(" 1.5 "), Ok(ms(1500)));
        for bad in ["0", "0ms", "-1", "abc", "", "ms", "1h", "1e3", "nan", "inf"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_duration_allow_zero("0"), Ok(Duration::ZERO));
        assert!(parse_duration("99999999999999999999999").is_err());
    }

    #[test]
    fn durations_format_round_trip() {
        for d in [
            ms(250),
            ms(5000),
            ms(2500),
            ms(1),
            Duration::from_micros(1500),
            Duration::ZERO,
        ] {
            assert_eq!(
                parse_duration_allow_zero(&fmt_duration(d)),
                Ok(d),
                "{}",
                fmt_duration(d)
            );
        }
        assert_eq!(fmt_duration(ms(250)), "250ms");
        assert_eq!(fmt_duration(ms(30_000)), "30s");
        assert_eq!(fmt_duration(ms(2500)), "2.5s");
    }

    fn parse(text: &str) -> Result<FileConfig, ConfigError> {
        FileConfig::parse(text, Path::new("configuration.json"))
    }

    #[test]
    fn the_manuals_layout_loads_with_ports_as_strings_or_numbers() {
        let c = parse(r#"{"server": {"host": "127.0.0.1", "port": "8000"}, "client": {"host": "127.0.0.1", "port": "8001"}}"#)
            .unwrap();
        assert_eq!(c.server.port, Some(8000));
        assert_eq!(c.client.port, Some(8001));
        let c = parse(r#"{"server": {"port": 9000}, "client": {"port": 0}}"#).unwrap();
        assert_eq!(c.server.port, Some(9000));
        assert_eq!(c.client.port, Some(0));
    }

    #[test]
    fn file_heartbeat_settings_and_types() {
        let c = parse(
            r#"{"server": {"interval": 0.5, "idle": "2s", "count": 4, "mode": "chat", "max_line": 100},
                "client": {"every": "250ms", "block": 0, "message": "hi", "name": "ann"}}"#,
        )
        .unwrap();
        assert_eq!(c.server.interval, Some(ms(500)));
        assert_eq!(c.server.idle, Some(ms(2000)));
        assert_eq!(c.server.count, Some(4));
        assert_eq!(c.server.mode, Some(Mode::Chat));
        assert_eq!(c.client.every, Some(ms(250)));
        assert_eq!(c.client.block, Some(Duration::ZERO));
    }

    #[test]
    fn errors_name_the_file_and_the_key() {
        let msg = |t: &str| parse(t).unwrap_err().to_string();
        assert_eq!(
            msg(r#"{"server": {"prot": 1}}"#),
            "configuration.json: server.prot: unknown key (known: host, port, interval, count, \
             idle, mode, wire, max_conns, max_line, queue, stall)"
        );
        assert_eq!(
            msg(r#"{"servr": {}}"#),
            "configuration.json: servr: unknown key (known: server, client)"
        );
        assert_eq!(
            msg(r#"{"server": {"count": true}}"#),
            "configuration.json: server.count: expected a whole number above zero, got true"
        );
        for (text, start) in [
            (
                r#"{"server": {"port": "80x"}}"#,
                "server.port: expected a port",
            ),
            (r#"{"server": {"port": 70000}}"#, "server.port:"),
            (r#"{"server": {"count": 0}}"#, "server.count:"),
            (r#"{"server": {"count": "0"}}"#, "server.count:"),
            (r#"{"server": {"count": 1.5}}"#, "server.count:"),
            (r#"{"server": {"count": 5000000000}}"#, "server.count:"),
            (r#"{"server": {"interval": "0"}}"#, "server.interval:"),
            (r#"{"server": {"mode": "relay"}}"#, "server.mode:"),
            (r#"{"client": {"every": true}}"#, "client.every:"),
            (
                r#"{"client": {"message": ""}}"#,
                "client.message: must not be empty",
            ),
            (
                r#"{"client": {"name": ""}}"#,
                "client.name: \"\" is not a usable chat name",
            ),
            (
                r#"{"client": {"name": "a b"}}"#,
                "client.name: \"a b\" is not a usable",
            ),
            (r#"{"client": []}"#, "client: expected an object"),
            ("[]", "(top level): expected an object"),
        ] {
            let m = msg(text);
            assert!(
                m.starts_with(&format!("configuration.json: {start}")),
                "{text}: {m}"
            );
            assert_eq!(m.lines().count(), 1, "{m}");
        }
        assert!(msg(r#"{"server": "#).contains("not valid JSON"));
    }

    #[test]
    fn every_bad_key_is_reported_at_once_in_key_order() {
        let e = parse(
            r#"{"server": {"count": true, "port": "0", "intreval": 5, "idle": "soon"},
                "client": {"name": "has space", "every": 1}, "extra": 1}"#,
        )
        .unwrap_err();
        let ConfigError::File { path, problems } = &e else {
            panic!("{e:?}")
        };
        assert_eq!(path, Path::new("configuration.json"));
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "client.name",
                "extra",
                "server.count",
                "server.idle",
                "server.intreval"
            ]
        );
        let text = e.to_string();
        assert_eq!(text.lines().count(), 5, "{text}");
        assert!(text.lines().all(|l| l.starts_with("configuration.json: ")));
    }

    #[test]
    fn numbers_may_be_strings_like_ports() {
        let c = parse(
            r#"{"server": {"count": "3", "interval": "5", "idle": "30s", "max_conns": " 10 ",
                "max_line": "100", "queue": "4096"}, "client": {"every": "2", "block": "0"}}"#,
        )
        .unwrap();
        assert_eq!(c.server.count, Some(3));
        assert_eq!(c.server.interval, Some(ms(5000)));
        assert_eq!(c.server.idle, Some(ms(30_000)));
        assert_eq!(
            (c.server.max_conns, c.server.max_line, c.server.queue),
            (Some(10), Some(100), Some(4096))
        );
        assert_eq!(c.client.every, Some(ms(2000)));
        assert_eq!(c.client.block, Some(Duration::ZERO));
    }

    /// The known keys come from [`ServerOptions`]' fields; each must also be read from the
    /// file (a field without its arm in `parse_server` would be refused as unknown, while
    /// the message lists it as known).
    #[test]
    fn every_server_setting_is_a_file_key() {
        let keys = server_keys();
        assert_eq!(keys.len(), 11, "{keys:?}");
        for key in keys {
            let e = parse(&format!(r#"{{"server": {{"{key}": [1]}}}}"#)).unwrap_err();
            let m = e.to_string();
            assert!(
                m.starts_with(&format!("configuration.json: server.{key}: expected")),
                "{m}"
            );
        }
    }

    #[test]
    fn stall_is_a_duration_like_the_others_never_zero_never_prompted() {
        for (text, want) in [
            (r#"{"server": {"stall": 0.25}}"#, ms(250)),
            (r#"{"server": {"stall": "250ms"}}"#, ms(250)),
            (r#"{"server": {"stall": "2"}}"#, ms(2000)),
        ] {
            assert_eq!(parse(text).unwrap().server.stall, Some(want), "{text}");
        }
        for text in [
            r#"{"server": {"stall": 0}}"#,
            r#"{"server": {"stall": "0ms"}}"#,
            r#"{"server": {"stall": true}}"#,
        ] {
            let m = parse(text).unwrap_err().to_string();
            assert!(m.starts_with("configuration.json: server.stall: "), "{m}");
        }
        // Not set anywhere: the default, and no question about it (EOF would keep it anyway,
        // so count the questions asked).
        let mut p = prompter("\n\n\n", false);
        let s = ServerSettings::resolve(&ServerFlags::default(), &FileConfig::default(), &mut p)
            .unwrap();
        assert_eq!(s.stall, defaults::STALL);
        assert_eq!(s.stall, ms(500));
        assert!(!String::from_utf8(p.out).unwrap().contains("stall"));
        // The flag beats the file.
        assert_eq!(
            server(
                ServerOptions {
                    stall: Some(ms(50)),
                    ..Default::default()
                },
                r#"{"server": {"stall": 3}}"#
            )
            .unwrap()
            .stall,
            ms(50)
        );
        assert_eq!(
            server(ServerOptions::default(), r#"{"server": {"stall": 3}}"#)
                .unwrap()
                .stall,
            ms(3000)
        );
    }

    fn prompter(input: &str, interactive: bool) -> Prompter<&[u8], Vec<u8>> {
        Prompter::new(input.as_bytes(), Vec::new(), interactive)
    }

    #[test]
    fn prompts_enter_keeps_defaults_and_answers_apply() {
        let flags = ServerFlags::default();
        let mut p = prompter("\n\n\n", false);
        let s = ServerSettings::resolve(&flags, &FileConfig::default(), &mut p).unwrap();
        assert_eq!(
            s.heartbeat,
            HeartbeatConfig::new(defaults::IDLE, defaults::INTERVAL, defaults::COUNT).unwrap()
        );
        let mut p = prompter("0.5\n4\n1\n", false);
        let s = ServerSettings::resolve(&flags, &FileConfig::default(), &mut p).unwrap();
        assert_eq!(s.heartbeat.interval(), ms(500));
        assert_eq!(s.heartbeat.count(), 4);
        assert_eq!(
            s.heartbeat.idle(),
            ms(2000),
            "idle raised to interval x count"
        );
        assert_eq!(s.idle_raised_from, Some(ms(1000)));
        let asked = String::from_utf8(p.out).unwrap();
        assert_eq!(asked.matches("[default").count(), 3);
    }

    #[test]
    fn prompts_eof_keeps_defaults_and_bad_answers_fail_or_retry() {
        let flags = ServerFlags::default();
        let mut p = prompter("", false);
        let s = ServerSettings::resolve(&flags, &FileConfig::default(), &mut p).unwrap();
        assert_eq!(s.heartbeat.count(), defaults::COUNT);
        let mut p = prompter("soon\n", false);
        let e = ServerSettings::resolve(&flags, &FileConfig::default(), &mut p).unwrap_err();
        assert!(
            matches!(
                e,
                ConfigError::BadAnswer {
                    setting: "interval",
                    ..
                }
            ),
            "{e}"
        );
        let mut p = prompter("soon\n2\n", true);
        let s = ServerSettings::resolve(&flags, &FileConfig::default(), &mut p).unwrap();
        assert_eq!(s.heartbeat.interval(), ms(2000));
        assert!(String::from_utf8(p.out).unwrap().contains("try again"));
    }

    #[test]
    fn flags_beat_the_file_and_skip_prompts() {
        let file = parse(r#"{"server": {"port": "8000", "interval": 5, "count": 2, "idle": 30}}"#)
            .unwrap();
        let flags = ServerFlags {
            options: ServerOptions {
                port: Some(0),
                interval: Some(ms(100)),
                ..Default::default()
            },
            ..Default::default()
        };
        let mut p = prompter("garbage\n", false);
        let s = ServerSettings::resolve(&flags, &file, &mut p).unwrap();
        assert_eq!(
            (s.port, s.heartbeat.interval(), s.heartbeat.count()),
            (0, ms(100), 2)
        );
        assert!(p.out.is_empty(), "nothing asked when everything is set");
        let flags = ServerFlags {
            defaults: true,
            ..Default::default()
        };
        let mut p = prompter("garbage\n", false);
        let s = ServerSettings::resolve(&flags, &FileConfig::default(), &mut p).unwrap();
        assert_eq!((s.host.as_str(), s.port), ("127.0.0.1", 8000));
        assert!(p.out.is_empty());
    }

    #[test]
    fn client_settings_resolve() {
        let file = parse(
            r#"{"server": {"host": "127.0.0.1", "port": "8000"}, "client": {"port": "8001"}}"#,
        )
        .unwrap();
        let mut p = prompter("5\n\n", false);
        let c = ClientSettings::resolve(&ClientFlags::default(), &file, &mut p).unwrap();
        assert_eq!(
            (c.port, c.listen_port, c.every, c.block),
            (8000, 8001, ms(5000), Duration::ZERO)
        );
        let flags = ClientFlags {
            message: Some("a\nb".into()),
            defaults: true,
            ..Default::default()
        };
        assert!(ClientSettings::resolve(&flags, &file, &mut prompter("", false)).is_err());
    }

    fn client(flags: ClientFlags, file: &str) -> Result<ClientSettings, String> {
        let file = parse(file).map_err(|e| e.to_string())?;
        ClientSettings::resolve(&flags, &file, &mut prompter("", false)).map_err(|e| e.to_string())
    }

    fn chat(name: Option<&str>) -> ClientFlags {
        ClientFlags {
            chat: true,
            name: name.map(Into::into),
            ..Default::default()
        }
    }

    #[test]
    fn the_chat_name_comes_from_the_flag_else_the_file() {
        let file = r#"{"client": {"name": "ann"}}"#;
        assert_eq!(
            client(chat(None), file).unwrap().chat_name.as_deref(),
            Some("ann")
        );
        assert_eq!(
            client(chat(Some("bob")), file)
                .unwrap()
                .chat_name
                .as_deref(),
            Some("bob")
        );
        assert_eq!(
            client(chat(Some("bob")), "{}")
                .unwrap()
                .chat_name
                .as_deref(),
            Some("bob")
        );
        assert_eq!(
            client(chat(None), "{}").unwrap_err(),
            "--chat needs a name: --name NAME (or client.name in configuration.json)"
        );
        // A name in the file is not an error when not chatting: the file serves both uses.
        let c = client(
            ClientFlags {
                defaults: true,
                ..Default::default()
            },
            file,
        )
        .unwrap();
        assert_eq!(c.chat_name, None);
    }

    #[test]
    fn a_name_the_room_would_refuse_is_a_flag_error() {
        for (name, why) in [
            ("", "it is empty"),
            ("  ", "no spaces or control characters"),
            ("a b", "no spaces or control characters"),
            ("a\u{1b}[2J", "no spaces or control characters"),
            (&"x".repeat(33), "at most 32 characters"),
        ] {
            assert_eq!(
                client(chat(Some(name)), "{}").unwrap_err(),
                format!("--name: {name:?} is not a usable chat name ({why})")
            );
        }
        assert!(client(chat(Some(&"x".repeat(32))), "{}").is_ok());
    }

    #[test]
    fn client_flags_that_would_do_nothing_are_usage_errors() {
        let plain = |f: fn(&mut ClientFlags)| {
            let mut flags = ClientFlags {
                defaults: true,
                ..Default::default()
            };
            f(&mut flags);
            client(flags, "{}")
        };
        assert_eq!(
            plain(|f| f.name = Some("ann".into())).unwrap_err(),
            "--name does nothing without --chat (it is the chat name)"
        );
        assert_eq!(
            plain(|f| f.message = Some(String::new())).unwrap_err(),
            "--message: must not be empty (there would be nothing to send)"
        );
        let chatting = |f: fn(&mut ClientFlags)| {
            let mut flags = chat(Some("ann"));
            f(&mut flags);
            client(flags, "{}")
        };
        for (flag, set) in [
            (
                "--every",
                (|f| f.every = Some(ms(5))) as fn(&mut ClientFlags),
            ),
            ("--message", |f| f.message = Some("hi".into())),
            ("--messages", |f| f.messages = Some(3)),
        ] {
            assert_eq!(
                chatting(set).unwrap_err(),
                format!(
                    "{flag} does nothing with --chat: the chat client sends the lines you type"
                )
            );
        }
        // --block delays the chat client's PONG too, so it does something there.
        assert_eq!(chatting(|f| f.block = Some(ms(5))).unwrap().block, ms(5));
        assert_eq!(
            chatting(|f| f.wire = Some(Wire::Classic)).unwrap_err(),
            "--chat works only on the line wire, not with --wire classic"
        );
        assert_eq!(
            client(chat(Some("ann")), r#"{"server": {"wire": "classic"}}"#).unwrap_err(),
            "--chat works only on the line wire, not with server.wire \"classic\" in \
             configuration.json"
        );
        // File values that do not apply to chat are fine.
        let c = client(
            chat(Some("ann")),
            r#"{"client": {"every": 5, "message": "hi"}}"#,
        )
        .unwrap();
        assert_eq!(c.chat_name.as_deref(), Some("ann"));
    }

    fn server(options: ServerOptions, file: &str) -> Result<ServerSettings, String> {
        let file = parse(file).map_err(|e| e.to_string())?;
        let flags = ServerFlags {
            defaults: true,
            options,
            ..Default::default()
        };
        ServerSettings::resolve(&flags, &file, &mut prompter("", false)).map_err(|e| e.to_string())
    }

    #[test]
    fn server_flags_that_conflict_or_do_nothing_are_usage_errors() {
        let classic = ServerOptions {
            wire: Some(Wire::Classic),
            ..Default::default()
        };
        assert_eq!(
            server(
                ServerOptions {
                    mode: Some(Mode::Chat),
                    ..classic.clone()
                },
                "{}"
            )
            .unwrap_err(),
            "--mode chat works only on the line wire, not with --wire classic"
        );
        assert_eq!(
            server(classic.clone(), r#"{"server": {"mode": "chat"}}"#).unwrap_err(),
            "server.mode \"chat\" in configuration.json works only on the line wire, not with \
             --wire classic"
        );
        assert_eq!(
            server(
                ServerOptions::default(),
                r#"{"server": {"mode": "chat", "wire": "classic"}}"#
            )
            .unwrap_err(),
            "configuration.json: server.mode: chat works only on the line wire, and server.wire \
             is classic"
        );
        assert_eq!(
            server(
                ServerOptions {
                    max_line: Some(100),
                    ..classic.clone()
                },
                "{}"
            )
            .unwrap_err(),
            "--max-line does nothing with --wire classic: that wire has no lines and no \
             outbound queue"
        );
        assert_eq!(
            server(
                ServerOptions {
                    queue: Some(100),
                    ..Default::default()
                },
                r#"{"server": {"wire": "classic"}}"#
            )
            .unwrap_err(),
            "--queue does nothing with server.wire \"classic\" in configuration.json: that wire \
             has no lines and no outbound queue"
        );
        assert_eq!(
            server(
                ServerOptions {
                    stall: Some(Duration::from_secs(1)),
                    ..classic.clone()
                },
                "{}"
            )
            .unwrap_err(),
            "--stall does nothing with --wire classic: that wire has no lines and no outbound \
             queue"
        );
        // The same values in the file alone are fine: it may serve a line server too.
        assert!(server(
            ServerOptions::default(),
            r#"{"server": {"wire": "classic", "max_line": 100, "queue": 100}}"#
        )
        .is_ok());
        assert!(server(
            ServerOptions {
                mode: Some(Mode::Echo),
                ..classic
            },
            "{}"
        )
        .is_ok());
    }
}
