//! `configuration.json`: walked key by key so every problem names its key, all at once.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Map, Value};

use super::client::{check_message, check_name, check_token};
use super::{
    parse_duration, parse_duration_allow_zero, ConfigError, Engine, FileProblem, Mode,
    ServerOptions, Wire, DEFAULT_CONFIG,
};

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
    /// `client.token`
    pub token: Option<String>,
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
const CLIENT_KEYS: &[&str] = &["host", "port", "every", "block", "message", "name", "token"];

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
    pub(super) fn problem(&self, key: &str, reason: String) -> ConfigError {
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

fn whole_usize(v: &Value) -> Result<usize, String> {
    let n = whole(v).ok_or_else(|| format!("expected a whole number, got {v}"))?;
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

/// A file path, as a non-empty string.
fn path_value(v: &Value) -> Result<PathBuf, String> {
    let s = string(v)?;
    if s.is_empty() {
        return Err("expected a file path, got an empty string".into());
    }
    Ok(PathBuf::from(s))
}

fn message_value(v: &Value) -> Result<String, String> {
    let m = string(v)?;
    check_message(&m)?;
    Ok(m)
}

fn token_value(v: &Value) -> Result<String, String> {
    let t = string(v)?;
    check_token(&t)?;
    Ok(t)
}

fn name_value(v: &Value) -> Result<String, String> {
    let n = string(v)?;
    check_name(&n)?;
    Ok(n)
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
            "engine" => s.engine = p.take(key, string(v).and_then(|e| Engine::parse(&e))),
            "workers" => {
                s.workers = p.take(
                    key,
                    positive_usize(v).and_then(super::server::check_workers),
                )
            }
            "max_conns" => s.max_conns = p.take(key, positive_usize(v)),
            "max_line" => s.max_line = p.take(key, positive_usize(v)),
            "queue" => s.queue = p.take(key, positive_usize(v)),
            "stall" => s.stall = p.take(key, duration(v, false)),
            "history" => s.history = p.take(key, whole_usize(v)),
            "history_bytes" => s.history_bytes = p.take(key, positive_usize(v)),
            "broker" => {
                s.broker = p.take(key, string(v).and_then(|b| super::server::parse_broker(&b)))
            }
            "node_timeout" => s.node_timeout = p.take(key, duration(v, false)),
            "rate" => s.rate = p.take(key, count_value(v)),
            "burst" => s.burst = p.take(key, count_value(v)),
            "tls_cert" => s.tls_cert = p.take(key, string(v).map(PathBuf::from)),
            "tls_key" => s.tls_key = p.take(key, string(v).map(PathBuf::from)),
            "handshake_timeout" => s.handshake_timeout = p.take(key, duration(v, false)),
            "auth_secret" => s.auth_secret = p.take(key, path_value(v)),
            "max_conns_per_ip" => s.max_conns_per_ip = p.take(key, positive_usize(v)),
            "metrics" => {
                s.metrics = p.take(
                    key,
                    string(v).and_then(|a| super::server::parse_metrics_addr(&a)),
                )
            }
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
            "token" => c.token = p.take(key, token_value(v)),
            _ => p.add(key, unknown(CLIENT_KEYS)),
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_support::*;
    use crate::config::ConfigError;

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
             idle, mode, wire, engine, workers, max_conns, max_line, queue, stall, history, history_bytes, broker, node_timeout, rate, burst, \
             tls_cert, tls_key, handshake_timeout, auth_secret, max_conns_per_ip, metrics)"
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
            (r#"{"server": {"engine": "async"}}"#, "server.engine:"),
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
        assert_eq!(keys.len(), 25, "{keys:?}");
        for key in keys {
            let e = parse(&format!(r#"{{"server": {{"{key}": [1]}}}}"#)).unwrap_err();
            let m = e.to_string();
            assert!(
                m.starts_with(&format!("configuration.json: server.{key}: expected")),
                "{m}"
            );
        }
    }
}
