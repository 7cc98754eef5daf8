//! `hb-server`'s settings: one options struct for flags and file, resolved into
//! [`ServerSettings`].

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::prompt::setting;
use super::{
    bad, defaults, fmt_duration, origin, parse_duration, ConfigError, Engine, FileConfig, Mode,
    Prompter, Wire,
};
use crate::core::auth::AuthConfig;
use crate::core::heartbeat::{HeartbeatConfig, HeartbeatConfigError};

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
    /// How connections are served; both engines speak the same protocol, with the same rules
    /// and log lines [default: threads]
    #[arg(long, value_enum)]
    pub engine: Option<Engine>,
    /// With --engine events: the threads that serve every connection (a number, at most
    /// 1024). One is enough for a few thousand mostly idle clients; each extra core takes
    /// a share of busy ones [default: one per core]
    #[arg(long, value_name = "N", value_parser = parse_workers)]
    pub workers: Option<usize>,
    /// Clients served at once (a number); newcomers beyond it are refused (`END
    /// server-full` on the line wire). Lowered (and logged) to what vm.max_map_count
    /// allows, about 8,000 on stock limits [default: 16384]
    #[arg(long, value_name = "N", value_parser = parse_positive)]
    pub max_conns: Option<usize>,
    /// Longest line accepted, in bytes; longer gets `END line-too-long`. Line wire only
    /// [default: 65536]
    #[arg(long, value_name = "BYTES", value_parser = parse_positive)]
    pub max_line: Option<usize>,
    /// Outbound queue of one client, in bytes (besides the kernel's socket buffer). When a
    /// line for it does not fit, its senders are held back until it drains to half. Line
    /// wire only [default: 1048576]
    #[arg(long, value_name = "BYTES", value_parser = parse_positive)]
    pub queue: Option<usize>,
    /// How long one client that cannot catch up may hold the senders back, or its socket
    /// accept nothing, before it is ended as a slow consumer (DUR). Line wire only
    /// [default: 500ms]
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub stall: Option<Duration>,
    /// Room messages the server keeps for `HISTORY N` and for members who reconnect and
    /// resume (a number; 0 turns history and resume off). Chat mode only [default: 1000]
    #[arg(long, value_name = "N", value_parser = parse_whole)]
    pub history: Option<usize>,
    /// Most bytes of names and texts the history keeps; the oldest messages go first, and a
    /// single message larger than this is not kept. Chat mode only [default: 1048576]
    #[arg(long, value_name = "BYTES", value_parser = parse_positive)]
    pub history_bytes: Option<usize>,
    /// Where the room lives: `memory` (this process alone) or a Redis server shared by
    /// several hb-servers that then form one room: `redis://HOST:PORT[/DB]`,
    /// `rediss://HOST:PORT[/DB]` (TLS; the system's CAs, or the PEM file in SSL_CERT_FILE)
    /// or `redis+unix:///PATH`. A password goes in as `redis://[USER]:PASSWORD@HOST:PORT`
    /// (better in configuration.json than on a command line others can list); logs show it
    /// as `***`. Chat mode only [default: memory]
    #[arg(long, value_name = "URL", value_parser = parse_broker)]
    pub broker: Option<Broker>,
    /// With a Redis broker: a server not heard from this long is declared dead and its
    /// members leave the room (`LEFT NAME node-lost`) on the others (DUR) [default: 3s]
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub node_timeout: Option<Duration>,
    /// Lines per second one client may send, on average (a number); a line over the limit
    /// is dropped and answered `ERR rate-limited`, and a client that keeps sending over it
    /// for a second (about twice the limit) is ended `END flood`. Heartbeat answers are
    /// never limited. Line wire only [default: no limit]
    #[arg(long, value_name = "N", value_parser = parse_count)]
    pub rate: Option<u32>,
    /// Lines one client may send at once under --rate (a number) [default: the --rate]
    #[arg(long, value_name = "M", value_parser = parse_count)]
    pub burst: Option<u32>,
    /// Serve TLS: the server's certificate chain (PEM file, leaf first; its names are what
    /// clients check). Needs --tls-key. Line wire only [default: no TLS]
    #[arg(long, value_name = "PEM")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM file: PKCS#8, PKCS#1 or SEC1); keep it readable
    /// by the server's user only
    #[arg(long, value_name = "PEM")]
    pub tls_key: Option<PathBuf>,
    /// Time a new connection has to finish its TLS handshake (and, with --auth-secret, to
    /// send AUTH) before it is closed (DUR) [default: 10s]
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub handshake_timeout: Option<Duration>,
    /// Require authentication: every client must send `AUTH TOKEN` first, TOKEN a JWT signed
    /// HS256 with this file's bytes (one trailing newline stripped; at least 32 bytes
    /// advised) with `exp` and `sub` (the only name it may JOIN); otherwise `END
    /// auth-failed`. Line wire only [default: no authentication]
    #[arg(long, value_name = "FILE")]
    pub auth_secret: Option<PathBuf>,
    /// Clients served at once from one IP address (a number); newcomers beyond it are
    /// refused `END server-full`, so one address cannot take every --max-conns slot. Line
    /// wire only [default: no limit]
    #[arg(long, value_name = "N", value_parser = parse_positive)]
    pub max_conns_per_ip: Option<usize>,
    /// Serve Prometheus metrics at http://ADDR/metrics, ADDR as HOST:PORT (port 0 picks any
    /// free port; the log shows which). Nothing else is served there [default: off]
    #[arg(long, value_name = "ADDR", value_parser = parse_metrics_addr)]
    pub metrics: Option<MetricsAddr>,
}

/// Where `--metrics` serves: a host (name or address) and a port (0: any free port).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsAddr {
    /// Host name or IP address, without brackets.
    pub host: String,
    /// Port (0: any free port).
    pub port: u16,
}

impl std::fmt::Display for MetricsAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Parses `--metrics`: `HOST:PORT`, an IPv6 address in brackets (`[::1]:9464`). Whether the
/// host resolves and the port is free is found out when the server binds.
pub fn parse_metrics_addr(s: &str) -> Result<MetricsAddr, String> {
    let bad = || {
        format!(
            "'{s}' is not HOST:PORT (such as 127.0.0.1:9464 or [::1]:9464; port 0: any free port)"
        )
    };
    let (host, port) = s.trim().rsplit_once(':').ok_or_else(bad)?;
    let (host, bracketed) = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(h) => (h, true),
        None => (host, false),
    };
    // An IPv6 address without brackets cannot be told from its port.
    if host.is_empty()
        || host.contains(|c: char| c.is_whitespace() || matches!(c, '[' | ']' | '/'))
        || (host.contains(':') && !bracketed)
    {
        return Err(bad());
    }
    let port = port.parse::<u16>().map_err(|_| bad())?;
    Ok(MetricsAddr {
        host: host.to_owned(),
        port,
    })
}

/// The server's TLS certificate chain and private key (PEM files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// `--tls-cert`
    pub cert: PathBuf,
    /// `--tls-key`
    pub key: PathBuf,
}

/// Where the chat room lives (`--broker`).
#[derive(Clone, Default, PartialEq, Eq)]
pub enum Broker {
    /// In this process only.
    #[default]
    Memory,
    /// In the Redis server at this URL, shared with other hb-servers. The URL may hold a
    /// password: it is shown only through [`redact_url`] (this type's `Display` and `Debug`).
    Redis(String),
}

impl std::fmt::Display for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Memory => f.write_str("memory"),
            Self::Redis(url) => f.write_str(&redact_url(url)),
        }
    }
}

/// Redacted like `Display`: settings end up in panics and test failures too.
impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Memory => f.write_str("Memory"),
            Self::Redis(_) => write!(f, "Redis({self})"),
        }
    }
}

/// `url` with its password replaced by `***`, for every message and log line that shows a
/// broker URL: the password of `redis://USER:PASSWORD@HOST` and the `pass=` or `password=`
/// parameter of `redis+unix:///PATH?pass=PASSWORD`. A user name is kept (it is not secret,
/// and it says which account failed).
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let split = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(split);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:***@{host}"),
            None => authority.to_owned(),
        },
        None => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let params: Vec<String> = query
                .split('&')
                .map(|kv| match kv.split_once('=') {
                    Some((k, _)) if k == "pass" || k == "password" => format!("{k}=***"),
                    _ => kv.to_owned(),
                })
                .collect();
            format!("{path}?{}", params.join("&"))
        }
        None => tail.to_owned(),
    };
    format!("{scheme}://{authority}{tail}")
}

/// What `--broker` accepts, for its error messages.
const BROKER_FORMS: &str = "memory, redis://[[USER]:PASSWORD@]HOST:PORT[/DB], rediss://... \
                            (TLS) or redis+unix:///PATH[?pass=PASSWORD]";

/// Parses `--broker`: `memory`, `redis://...`, `rediss://...` or `redis+unix://...` (the link
/// checks the rest of the URL when it starts).
pub fn parse_broker(s: &str) -> Result<Broker, String> {
    let s = s.trim();
    if s == "memory" {
        Ok(Broker::Memory)
    } else if ["redis://", "rediss://", "redis+unix://"]
        .iter()
        .any(|p| s.starts_with(p) && s.len() > p.len())
    {
        Ok(Broker::Redis(s.to_owned()))
    } else {
        Err(format!(
            "'{}' is not a broker: use {BROKER_FORMS}",
            redact_url(s)
        ))
    }
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
            engine: self.engine.or(fallback.engine),
            workers: self.workers.or(fallback.workers),
            max_conns: self.max_conns.or(fallback.max_conns),
            max_line: self.max_line.or(fallback.max_line),
            queue: self.queue.or(fallback.queue),
            stall: self.stall.or(fallback.stall),
            history: self.history.or(fallback.history),
            history_bytes: self.history_bytes.or(fallback.history_bytes),
            broker: self.broker.clone().or_else(|| fallback.broker.clone()),
            node_timeout: self.node_timeout.or(fallback.node_timeout),
            rate: self.rate.or(fallback.rate),
            burst: self.burst.or(fallback.burst),
            tls_cert: self.tls_cert.clone().or_else(|| fallback.tls_cert.clone()),
            tls_key: self.tls_key.clone().or_else(|| fallback.tls_key.clone()),
            handshake_timeout: self.handshake_timeout.or(fallback.handshake_timeout),
            auth_secret: self
                .auth_secret
                .clone()
                .or_else(|| fallback.auth_secret.clone()),
            max_conns_per_ip: self.max_conns_per_ip.or(fallback.max_conns_per_ip),
            metrics: self.metrics.clone().or_else(|| fallback.metrics.clone()),
        }
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

/// Parses a whole number, zero included (for `--history`).
pub fn parse_whole(s: &str) -> Result<usize, String> {
    s.parse::<usize>()
        .map_err(|_| format!("'{s}' is not a whole number"))
}

/// Parses a whole number above zero (for byte and connection limits).
pub fn parse_positive(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be greater than zero".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("'{s}' is not a whole number")),
    }
}

/// Parses `--workers` (and `server.workers`): 1 to [`MAX_WORKERS`].
pub fn parse_workers(s: &str) -> Result<usize, String> {
    check_workers(parse_positive(s)?)
}

/// Refuses a worker count above [`MAX_WORKERS`].
pub fn check_workers(n: usize) -> Result<usize, String> {
    if n > MAX_WORKERS {
        return Err(format!("{n} is more than {MAX_WORKERS} threads"));
    }
    Ok(n)
}

/// `hb-server`'s command line: the settings, plus the two flags that are not settings.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServerFlags {
    /// Configuration file (manual layout: server.host / server.port, optionally
    /// server.interval, count, idle, mode, wire, engine, workers, max_conns, max_line, queue, stall,
    /// history, history_bytes, broker, node_timeout, rate, burst, tls_cert, tls_key,
    /// handshake_timeout, auth_secret, max_conns_per_ip, metrics; with --wire
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
    /// How the event log on stdout is written: `text` (one timestamped line per event) or
    /// `json` (one object per line: ts, event, conn where one applies, msg, and the event's
    /// facts) [default: text]
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Log only refusals, errors and shutdown (and the `listening on` line)
    #[arg(long)]
    pub quiet: bool,
}

/// How the event log is written (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// `2026-11-21T22:10:46.123Z #1 127.0.0.1:5000 connected`
    #[default]
    Text,
    /// `{"ts":"2026-11-21T22:10:46.123Z","event":"connected","conn":1,...}`
    Json,
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
    /// Threads or events (events: line wire only).
    pub engine: Engine,
    /// The event engine's worker threads (`--workers`; `None`: one per core).
    pub workers: Option<usize>,
    /// Connections served at once; more are refused with `END server-full`.
    pub max_conns: usize,
    /// Longest accepted line in bytes.
    pub max_line: usize,
    /// Outbound queue of one client in bytes; a line that does not fit holds its sender back.
    pub queue: usize,
    /// How long a recipient that cannot catch up may hold its senders back, or its socket
    /// accept nothing, before it is ended with `END slow-consumer` (never zero).
    pub stall: Duration,
    /// Chat room messages kept for `HISTORY` and resume (0: off).
    pub history: usize,
    /// Bytes of names and texts the history keeps at most.
    pub history_bytes: usize,
    /// Where the chat room lives.
    pub broker: Broker,
    /// With a Redis broker: how long a silent server lives on in the others' rooms.
    pub node_timeout: Duration,
    /// Each client's rate limit (`--rate`, `--burst`), if any.
    pub rate: Option<crate::core::rate::RateLimit>,
    /// TLS certificate and key files (`--tls-cert`, `--tls-key`), loaded when the server
    /// binds; `None`: plain TCP.
    pub tls: Option<TlsFiles>,
    /// Time a new connection has to finish its handshake (TLS, and AUTH when required).
    pub handshake: Duration,
    /// The key clients' tokens are verified with (`--auth-secret`, read at startup), if
    /// authentication is required.
    pub auth: Option<Arc<AuthConfig>>,
    /// The file the key came from (for messages).
    pub auth_secret: Option<PathBuf>,
    /// Connections served at once from one IP address (`None`: no limit).
    pub max_conns_per_ip: Option<usize>,
    /// Where Prometheus metrics are served (`--metrics`; `None`: nowhere).
    pub metrics: Option<MetricsAddr>,
    /// Classic wire: the port the server connects back to for the heartbeat socket
    /// (`client.port` of configuration.json, as in the manual; default 8001).
    pub classic_client_port: u16,
}

/// Reads the `--auth-secret` file into a key: unreadable or empty is a startup error naming
/// the file (exit 2). A short secret is accepted (the caller warns about it).
pub fn load_secret(path: &std::path::Path) -> Result<AuthConfig, ConfigError> {
    let bytes = std::fs::read(path).map_err(|e| {
        bad(
            "--auth-secret",
            format!("cannot read the secret file {}: {e}", path.display()),
        )
    })?;
    AuthConfig::from_file_bytes(&bytes).map_err(|e| {
        bad(
            "--auth-secret",
            format!(
                "the secret file {} is empty ({e} once its line end is stripped)",
                path.display()
            ),
        )
    })
}

/// What a reload (SIGHUP) makes of freshly resolved settings: the settings to serve new
/// connections with, and what changed, in words for the log.
#[derive(Debug, Clone, PartialEq)]
pub struct Reload {
    /// The running settings with every reloadable change applied.
    pub settings: ServerSettings,
    /// Applied changes, e.g. `interval 10s -> 5s`.
    pub changed: Vec<String>,
    /// Changes that need a restart and were not applied, e.g. `mode echo -> chat`.
    pub restart_needed: Vec<String>,
}

fn opt_text<T>(v: &Option<T>, f: impl Fn(&T) -> String) -> String {
    v.as_ref().map_or_else(|| "off".to_string(), f)
}

/// Most worker threads `--workers` accepts: a typo's 100000 is refused before the runtime
/// tries to start that many threads.
pub const MAX_WORKERS: usize = 1024;

impl ServerSettings {
    /// The event engine's worker threads: `--workers`, else one per core this process may
    /// run on (its CPU affinity and cgroup quota, as `available_parallelism` reads them).
    pub fn event_workers(&self) -> usize {
        self.workers.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .min(MAX_WORKERS)
        })
    }

    /// Applies `new` (the file re-read, flags still over it) to these running settings. What
    /// concerns each new connection changes (heartbeat timing, limits, rate, handshake, the
    /// auth secret, the TLS certificate files); what the listening socket, the room or the
    /// engine were built with (host, port, mode, wire, engine, history, broker) needs a
    /// restart and is only reported.
    pub fn reload(&self, new: &ServerSettings) -> Reload {
        let mut settings = self.clone();
        let mut changed = Vec::new();
        let mut restart_needed = Vec::new();
        let hb = |h: &HeartbeatConfig| {
            format!(
                "interval {}, count {}, idle {}",
                fmt_duration(h.interval()),
                h.count(),
                fmt_duration(h.idle())
            )
        };
        if self.heartbeat != new.heartbeat {
            changed.push(format!(
                "heartbeat {} -> {}",
                hb(&self.heartbeat),
                hb(&new.heartbeat)
            ));
            settings.heartbeat = new.heartbeat;
            settings.idle_raised_from = new.idle_raised_from;
        }
        let mut num = |name: &str, old: usize, new: usize, slot: &mut usize| {
            if old != new {
                changed.push(format!("{name} {old} -> {new}"));
                *slot = new;
            }
        };
        num(
            "max-conns",
            self.max_conns,
            new.max_conns,
            &mut settings.max_conns,
        );
        num(
            "max-line",
            self.max_line,
            new.max_line,
            &mut settings.max_line,
        );
        num("queue", self.queue, new.queue, &mut settings.queue);
        let mut dur = |name: &str, old: Duration, new: Duration, slot: &mut Duration| {
            if old != new {
                changed.push(format!(
                    "{name} {} -> {}",
                    fmt_duration(old),
                    fmt_duration(new)
                ));
                *slot = new;
            }
        };
        dur("stall", self.stall, new.stall, &mut settings.stall);
        dur(
            "handshake-timeout",
            self.handshake,
            new.handshake,
            &mut settings.handshake,
        );
        if self.rate != new.rate {
            let text =
                |r: &crate::core::rate::RateLimit| format!("{}/s (burst {})", r.per_sec, r.burst);
            changed.push(format!(
                "rate {} -> {}",
                opt_text(&self.rate, text),
                opt_text(&new.rate, text)
            ));
            settings.rate = new.rate;
        }
        if self.max_conns_per_ip != new.max_conns_per_ip {
            changed.push(format!(
                "max-conns-per-ip {} -> {}",
                opt_text(&self.max_conns_per_ip, usize::to_string),
                opt_text(&new.max_conns_per_ip, usize::to_string)
            ));
            settings.max_conns_per_ip = new.max_conns_per_ip;
        }
        match (&self.auth, &new.auth) {
            (None, None) => {}
            (Some(_), None) => restart_needed.push("auth-secret on -> off".into()),
            (None, Some(_)) => restart_needed.push("auth-secret off -> on".into()),
            (Some(a), Some(b)) => {
                if a != b || self.auth_secret != new.auth_secret {
                    changed.push("auth secret (new tokens are checked with it)".into());
                    settings.auth = new.auth.clone();
                    settings.auth_secret = new.auth_secret.clone();
                }
            }
        }
        match (&self.tls, &new.tls) {
            (Some(_), Some(b)) => settings.tls = Some(b.clone()),
            (None, None) => {}
            _ => restart_needed.push(format!(
                "tls {} -> {}",
                if self.tls.is_some() { "on" } else { "off" },
                if new.tls.is_some() { "on" } else { "off" }
            )),
        }
        let mut fixed = |name: &str, old: String, new: String| {
            if old != new {
                restart_needed.push(format!("{name} {old} -> {new}"));
            }
        };
        fixed("host", self.host.clone(), new.host.clone());
        fixed("port", self.port.to_string(), new.port.to_string());
        fixed("mode", self.mode.as_str().into(), new.mode.as_str().into());
        fixed("wire", self.wire.as_str().into(), new.wire.as_str().into());
        fixed(
            "engine",
            format!("{:?}", self.engine).to_lowercase(),
            format!("{:?}", new.engine).to_lowercase(),
        );
        fixed(
            "workers",
            self.event_workers().to_string(),
            new.event_workers().to_string(),
        );
        fixed("history", self.history.to_string(), new.history.to_string());
        fixed(
            "history-bytes",
            self.history_bytes.to_string(),
            new.history_bytes.to_string(),
        );
        // Shown redacted, compared whole: a new password alone is a change too.
        let (old_broker, mut new_broker) = (self.broker.to_string(), new.broker.to_string());
        if self.broker != new.broker && old_broker == new_broker {
            new_broker.push_str(" (new password)");
        }
        fixed("broker", old_broker, new_broker);
        let metrics = |m: &Option<MetricsAddr>| {
            m.as_ref()
                .map_or_else(|| "off".to_string(), |m| format!("{}:{}", m.host, m.port))
        };
        fixed("metrics", metrics(&self.metrics), metrics(&new.metrics));
        fixed(
            "node-timeout",
            fmt_duration(self.node_timeout),
            fmt_duration(new.node_timeout),
        );
        Reload {
            settings,
            changed,
            restart_needed,
        }
    }
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
        let auth = match &o.auth_secret {
            Some(path) => Some(load_secret(path)?),
            None => None,
        };
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
            engine: o.engine.unwrap_or_default(),
            workers: o.workers,
            max_conns,
            max_line,
            queue,
            stall: o.stall.unwrap_or(defaults::STALL),
            history: o.history.unwrap_or(defaults::HISTORY),
            history_bytes: o.history_bytes.unwrap_or(defaults::HISTORY_BYTES),
            broker: o.broker.unwrap_or_default(),
            node_timeout: o.node_timeout.unwrap_or(defaults::NODE_TIMEOUT),
            rate: o.rate.map(|per_sec| crate::core::rate::RateLimit {
                per_sec,
                burst: o.burst.unwrap_or(per_sec),
            }),
            tls: match (o.tls_cert, o.tls_key) {
                (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
                _ => None,
            },
            handshake: o.handshake_timeout.unwrap_or(defaults::HANDSHAKE),
            auth: auth.map(Arc::new),
            auth_secret: o.auth_secret,
            max_conns_per_ip: o.max_conns_per_ip,
            metrics: o.metrics,
            classic_client_port: file.client.port.unwrap_or(defaults::CLIENT_PORT),
        })
    }
}

/// Server flags that contradict each other or the file, or would do nothing. Values in the
/// file alone that do not apply are fine (one file serves several uses); flags are not.
fn check_server_flags(flags: &ServerFlags, file: &FileConfig) -> Result<(), ConfigError> {
    let f = &flags.options;
    let wire = f.wire.or(file.server.wire).unwrap_or_default();
    let mode = f.mode.or(file.server.mode).unwrap_or_default();
    let engine = f.engine.or(file.server.engine).unwrap_or_default();
    if mode != Mode::Chat {
        for (flag, given) in [
            ("--history", f.history.is_some()),
            ("--history-bytes", f.history_bytes.is_some()),
        ] {
            if given {
                return Err(ConfigError::Usage(format!(
                    "{flag} does nothing without --mode chat: only a chat room has a history"
                )));
            }
        }
        if f.broker.is_some() {
            return Err(ConfigError::Usage(
                "--broker does nothing without --mode chat: only a chat room is shared".into(),
            ));
        }
    }
    if f.workers.is_some() && engine != Engine::Events {
        return Err(ConfigError::Usage(
            "--workers does nothing without --engine events: the thread engine runs two \
             threads per client"
                .into(),
        ));
    }
    if f.burst.is_some() && f.rate.or(file.server.rate).is_none() {
        return Err(ConfigError::Usage(
            "--burst does nothing without --rate: there is no limit to burst over".into(),
        ));
    }
    let cert = f.tls_cert.is_some() || file.server.tls_cert.is_some();
    let key = f.tls_key.is_some() || file.server.tls_key.is_some();
    if cert != key {
        let (given, missing) = if cert {
            ("--tls-cert", "--tls-key")
        } else {
            ("--tls-key", "--tls-cert")
        };
        return Err(ConfigError::Usage(format!(
            "{given} needs {missing}: TLS takes a certificate and its private key"
        )));
    }
    if f.handshake_timeout.is_some()
        && !cert
        && f.auth_secret.is_none()
        && file.server.auth_secret.is_none()
    {
        return Err(ConfigError::Usage(
            "--handshake-timeout does nothing without --tls-cert or --auth-secret: there is no \
             handshake to time"
                .into(),
        ));
    }
    let broker = f.broker.clone().or_else(|| file.server.broker.clone());
    if f.node_timeout.is_some() && !matches!(broker, Some(Broker::Redis(_))) {
        return Err(ConfigError::Usage(
            "--node-timeout does nothing without --broker redis://...: one server has no other nodes"
                .into(),
        ));
    }
    if let Some(t) = f.node_timeout.or(file.server.node_timeout) {
        if t < Duration::from_millis(300) {
            return Err(bad(
                "--node-timeout",
                "must be at least 300ms (the node refreshes its key every third of it)".into(),
            ));
        }
    }
    if wire != Wire::Classic {
        return Ok(());
    }
    let wire_src = origin(f.wire.is_some(), "--wire", "server.wire", "classic", file);
    if f.tls_cert.is_some() {
        return Err(ConfigError::Usage(format!(
            "--tls-cert works only on the line wire, not with {wire_src} (the manual's \
             programs speak plain TCP)"
        )));
    }
    // The classic wire has no verbs to authenticate with, and refuses without a line to say
    // why. A secret or a per-address limit in the file is refused too, not ignored as other
    // line-wire values there are: an operator who asked for protection must not run
    // without it.
    for (key, flag, given, in_file) in [
        (
            "auth_secret",
            "--auth-secret",
            f.auth_secret.is_some(),
            file.server.auth_secret.is_some(),
        ),
        (
            "max_conns_per_ip",
            "--max-conns-per-ip",
            f.max_conns_per_ip.is_some(),
            file.server.max_conns_per_ip.is_some(),
        ),
    ] {
        if given {
            return Err(ConfigError::Usage(format!(
                "{flag} works only on the line wire, not with {wire_src}"
            )));
        }
        if in_file && f.wire.is_some() {
            return Err(ConfigError::Usage(format!(
                "server.{key} in {} works only on the line wire, not with {wire_src}",
                file.path.display()
            )));
        }
        if in_file {
            return Err(file.problem(
                &format!("server.{key}"),
                "works only on the line wire, and server.wire is classic".into(),
            ));
        }
    }
    // Chat and the event engine exist only on the line wire: same rule, same words.
    for (key, flag, value, given, conflicts) in [
        (
            "mode",
            "--mode",
            "chat",
            f.mode.is_some(),
            mode == Mode::Chat,
        ),
        (
            "engine",
            "--engine",
            "events",
            f.engine.is_some(),
            engine == Engine::Events,
        ),
    ] {
        if !conflicts {
            continue;
        }
        if !given && f.wire.is_none() {
            return Err(file.problem(
                &format!("server.{key}"),
                format!("{value} works only on the line wire, and server.wire is classic"),
            ));
        }
        let src = origin(given, flag, &format!("server.{key}"), value, file);
        return Err(ConfigError::Usage(format!(
            "{src} works only on the line wire, not with {wire_src}"
        )));
    }
    for (flag, given) in [
        ("--max-line", f.max_line.is_some()),
        ("--queue", f.queue.is_some()),
        ("--stall", f.stall.is_some()),
        ("--rate", f.rate.is_some()),
        ("--burst", f.burst.is_some()),
    ] {
        if given {
            return Err(ConfigError::Usage(format!(
                "{flag} does nothing with {wire_src}: that wire has no lines and no outbound queue"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_support::*;

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
    fn broker_urls_never_show_their_password() {
        for (url, shown) in [
            ("redis://127.0.0.1:6379/2", "redis://127.0.0.1:6379/2"),
            ("redis://:pw@h:1", "redis://:***@h:1"),
            ("redis://app:p@ss:w@h:1/0", "redis://app:***@h:1/0"),
            ("rediss://app:pw@h:1#x", "rediss://app:***@h:1#x"),
            ("redis://app@h:1", "redis://app@h:1"),
            (
                "redis+unix:///run/r.sock?db=1&pass=pw&user=u",
                "redis+unix:///run/r.sock?db=1&pass=***&user=u",
            ),
            ("not a url", "not a url"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
        let b = parse_broker("rediss://:pw@h:1").unwrap();
        assert_eq!(b, Broker::Redis("rediss://:pw@h:1".into()));
        assert_eq!(
            (b.to_string(), format!("{b:?}")),
            (
                "rediss://:***@h:1".into(),
                "Redis(rediss://:***@h:1)".into()
            )
        );
        let e = parse_broker("nats://:pw@h").unwrap_err();
        assert!(e.starts_with("'nats://:***@h' is not a broker"), "{e}");
        // A reload that changes the broker names both URLs, redacted.
        let chat = |url: &str| {
            server(
                ServerOptions {
                    mode: Some(Mode::Chat),
                    broker: Some(parse_broker(url).unwrap()),
                    ..Default::default()
                },
                "{}",
            )
            .unwrap()
        };
        let r = chat("redis://:old@h:1").reload(&chat("redis://:new@h:2"));
        assert_eq!(
            r.restart_needed,
            ["broker redis://:***@h:1 -> redis://:***@h:2"]
        );
        let r = chat("redis://:old@h:1").reload(&chat("redis://:new@h:1"));
        assert_eq!(
            r.restart_needed,
            ["broker redis://:***@h:1 -> redis://:***@h:1 (new password)"]
        );
    }

    #[test]
    fn workers_from_flag_or_file_default_to_one_per_core_and_need_the_event_engine() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let events = ServerOptions {
            engine: Some(Engine::Events),
            ..Default::default()
        };
        let s = server(events.clone(), "{}").unwrap();
        assert_eq!((s.workers, s.event_workers()), (None, cores));
        let file = r#"{"server": {"workers": 3}}"#;
        assert_eq!(server(events.clone(), file).unwrap().event_workers(), 3);
        // The flag beats the file.
        let one = ServerOptions {
            workers: Some(1),
            ..events.clone()
        };
        assert_eq!(server(one, file).unwrap().event_workers(), 1);
        // A file that serves both engines may say it; a flag with the thread engine is a
        // mistake, refused rather than ignored.
        assert_eq!(
            server(ServerOptions::default(), file).unwrap().engine,
            Engine::Threads
        );
        assert_eq!(
            server(
                ServerOptions {
                    workers: Some(2),
                    ..Default::default()
                },
                "{}"
            )
            .unwrap_err(),
            "--workers does nothing without --engine events: the thread engine runs two \
             threads per client"
        );
        assert_eq!(parse_workers("1024"), Ok(1024));
        assert_eq!(
            parse_workers("1025").unwrap_err(),
            "1025 is more than 1024 threads"
        );
        assert_eq!(parse_workers("0").unwrap_err(), "must be greater than zero");
        assert_eq!(
            server(events.clone(), r#"{"server": {"workers": 100000}}"#).unwrap_err(),
            "configuration.json: server.workers: 100000 is more than 1024 threads"
        );
        // A reload reports a new count as needing a restart.
        let (a, b) = (
            server(events.clone(), "{}").unwrap(),
            server(events, r#"{"server": {"workers": 7}}"#).unwrap(),
        );
        let r = a.reload(&b);
        assert!(
            r.restart_needed
                .iter()
                .any(|c| c == &format!("workers {cores} -> 7")),
            "{r:?}"
        );
    }

    #[test]
    fn engine_from_flag_or_file_defaults_to_threads_and_events_needs_the_line_wire() {
        assert_eq!(
            server(ServerOptions::default(), "{}").unwrap().engine,
            Engine::Threads
        );
        assert_eq!(
            server(
                ServerOptions::default(),
                r#"{"server": {"engine": "events"}}"#
            )
            .unwrap()
            .engine,
            Engine::Events
        );
        let events = ServerOptions {
            engine: Some(Engine::Events),
            ..Default::default()
        };
        // The flag beats the file.
        assert_eq!(
            server(events.clone(), r#"{"server": {"engine": "threads"}}"#)
                .unwrap()
                .engine,
            Engine::Events
        );
        assert_eq!(
            server(
                ServerOptions {
                    engine: Some(Engine::Threads),
                    ..Default::default()
                },
                r#"{"server": {"engine": "events"}}"#
            )
            .unwrap()
            .engine,
            Engine::Threads
        );
        let m = server(
            ServerOptions::default(),
            r#"{"server": {"engine": "tokio"}}"#,
        )
        .unwrap_err();
        assert_eq!(
            m,
            "configuration.json: server.engine: 'tokio' is not an engine (threads or events)"
        );
        // The event engine serves the line wire only, however the two were chosen.
        assert_eq!(
            server(
                ServerOptions {
                    wire: Some(Wire::Classic),
                    ..events.clone()
                },
                "{}"
            )
            .unwrap_err(),
            "--engine events works only on the line wire, not with --wire classic"
        );
        assert_eq!(
            server(events.clone(), r#"{"server": {"wire": "classic"}}"#).unwrap_err(),
            "--engine events works only on the line wire, not with server.wire \"classic\" in \
             configuration.json"
        );
        assert_eq!(
            server(
                ServerOptions {
                    wire: Some(Wire::Classic),
                    ..Default::default()
                },
                r#"{"server": {"engine": "events"}}"#
            )
            .unwrap_err(),
            "server.engine \"events\" in configuration.json works only on the line wire, not \
             with --wire classic"
        );
        assert_eq!(
            server(
                ServerOptions::default(),
                r#"{"server": {"engine": "events", "wire": "classic"}}"#
            )
            .unwrap_err(),
            "configuration.json: server.engine: events works only on the line wire, and \
             server.wire is classic"
        );
        // Usage errors: exit 2, like the other classic-wire conflicts.
        let flags = ServerFlags {
            defaults: true,
            options: ServerOptions {
                wire: Some(Wire::Classic),
                ..events
            },
            ..Default::default()
        };
        let e = ServerSettings::resolve(&flags, &FileConfig::default(), &mut prompter("", false))
            .unwrap_err();
        assert!(matches!(e, ConfigError::Usage(_)), "{e:?}");
        // The thread engine takes either wire.
        assert_eq!(
            server(
                ServerOptions {
                    wire: Some(Wire::Classic),
                    engine: Some(Engine::Threads),
                    ..Default::default()
                },
                "{}"
            )
            .unwrap()
            .engine,
            Engine::Threads
        );
    }

    #[test]
    fn auth_secret_is_read_at_startup_and_its_problems_name_the_file() {
        let dir = std::env::temp_dir().join(format!("hb-secret-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good");
        std::fs::write(&good, "0123456789abcdef0123456789abcdef\n").unwrap();
        let empty = dir.join("empty");
        std::fs::write(&empty, "\n").unwrap();
        let missing = dir.join("missing");
        let opts = |p: &std::path::Path| ServerOptions {
            auth_secret: Some(p.to_path_buf()),
            ..Default::default()
        };
        let s = server(opts(&good), "{}").unwrap();
        let auth = s.auth.expect("auth on");
        assert_eq!(auth.secret_len(), 32, "the newline is not part of the key");
        assert_eq!(s.handshake, ms(10_000));
        let e = server(opts(&missing), "{}").unwrap_err();
        assert!(
            e.starts_with(&format!(
                "--auth-secret: cannot read the secret file {}: ",
                missing.display()
            )),
            "{e}"
        );
        assert_eq!(
            server(opts(&empty), "{}").unwrap_err(),
            format!(
                "--auth-secret: the secret file {} is empty (the secret is empty once its line \
                 end is stripped)",
                empty.display()
            )
        );
        // From the file, with the handshake time.
        let text = format!(
            r#"{{"server": {{"auth_secret": "{}", "handshake_timeout": "2s"}}}}"#,
            good.display()
        );
        let s = server(ServerOptions::default(), &text).unwrap();
        assert!(s.auth.is_some());
        assert_eq!(s.handshake, ms(2000));
        assert_eq!(s.auth_secret.as_deref(), Some(good.as_path()));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn auth_is_line_wire_only_and_a_handshake_time_needs_a_handshake() {
        let classic = ServerOptions {
            wire: Some(Wire::Classic),
            ..Default::default()
        };
        assert_eq!(
            server(
                ServerOptions {
                    auth_secret: Some("/nonexistent".into()),
                    ..classic.clone()
                },
                "{}"
            )
            .unwrap_err(),
            "--auth-secret works only on the line wire, not with --wire classic"
        );
        // In the file alone too: protection asked for must not be ignored.
        assert_eq!(
            server(
                ServerOptions::default(),
                r#"{"server": {"wire": "classic", "auth_secret": "/s"}}"#
            )
            .unwrap_err(),
            "configuration.json: server.auth_secret: works only on the line wire, and \
             server.wire is classic"
        );
        let e = ServerSettings::resolve(
            &ServerFlags {
                defaults: true,
                options: ServerOptions {
                    auth_secret: Some("/s".into()),
                    ..classic
                },
                ..Default::default()
            },
            &FileConfig::default(),
            &mut prompter("", false),
        )
        .unwrap_err();
        assert!(matches!(e, ConfigError::Usage(_)), "exit 2: {e:?}");
        assert_eq!(
            server(
                ServerOptions {
                    handshake_timeout: Some(ms(500)),
                    ..Default::default()
                },
                "{}"
            )
            .unwrap_err(),
            "--handshake-timeout does nothing without --tls-cert or --auth-secret: there is no \
             handshake to time"
        );
    }

    #[test]
    fn max_conns_per_ip_is_line_wire_only_from_flag_or_file() {
        let classic = ServerOptions {
            wire: Some(Wire::Classic),
            ..Default::default()
        };
        assert_eq!(
            server(
                ServerOptions {
                    max_conns_per_ip: Some(2),
                    ..Default::default()
                },
                r#"{"server": {"wire": "classic"}}"#
            )
            .unwrap_err(),
            "--max-conns-per-ip works only on the line wire, not with server.wire \"classic\" \
             in configuration.json"
        );
        // In the file alone too: protection asked for must not be ignored.
        assert_eq!(
            server(
                ServerOptions::default(),
                r#"{"server": {"wire": "classic", "max_conns_per_ip": 3}}"#
            )
            .unwrap_err(),
            "configuration.json: server.max_conns_per_ip: works only on the line wire, and \
             server.wire is classic"
        );
        assert_eq!(
            server(classic, r#"{"server": {"max_conns_per_ip": 3}}"#).unwrap_err(),
            "server.max_conns_per_ip in configuration.json works only on the line wire, not \
             with --wire classic"
        );
        assert_eq!(
            server(
                ServerOptions {
                    max_conns_per_ip: Some(2),
                    ..Default::default()
                },
                r#"{"server": {"max_conns_per_ip": 5}}"#
            )
            .unwrap()
            .max_conns_per_ip,
            Some(2)
        );
        assert_eq!(
            server(ServerOptions::default(), "{}")
                .unwrap()
                .max_conns_per_ip,
            None
        );
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
