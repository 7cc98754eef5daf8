//! A pure Maelstrom node: keep-alive table, TCP echo control, echo, and async RPC with
//! `batch_echo` on top.
//!
//! Sans-I/O in the quinn-proto style: [`Node::handle`] and [`Node::handle_timeout`] are the
//! inputs, each returning the [`Output`]s to emit in order; [`Node::poll_timeout`] says when
//! the driver must call `handle_timeout` next. The node never reads a clock (every input
//! carries `now_ms`, milliseconds since the node started), never sleeps and never touches a
//! socket: the TCP echo server sits behind the [`EchoBackend`] trait.

pub mod error;
pub mod json;
pub mod keepalive;

#[cfg(test)]
mod tests;

pub use error::{code, NodeError};
pub use json::Json;
pub use keepalive::{CheckOutcome, ClientStatus, KeepAliveTable};

use std::collections::{BTreeMap, HashMap};
use std::fmt;

/// One Maelstrom message: `{"src", "dest", "body"}` where the body is an object with a
/// string `type`.
#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    /// Sender node or client id.
    pub src: String,
    /// Addressee node or client id.
    pub dest: String,
    /// The body object, keys in order.
    pub body: Json,
}

/// Why an input line is not a usable [`Message`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MessageError {
    /// The line is not valid UTF-8 JSON.
    NotJson(String),
    /// The line is JSON but not an object.
    NotAnObject,
    /// A required field is missing or has the wrong type.
    MissingField(&'static str),
}

impl fmt::Display for MessageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MessageError::NotJson(e) => write!(f, "not JSON: {e}"),
            MessageError::NotAnObject => f.write_str("not a JSON object"),
            MessageError::MissingField(name) => write!(f, "missing or mistyped field {name}"),
        }
    }
}

impl std::error::Error for MessageError {}

impl Message {
    /// Parses one input line (without or with its trailing newline).
    pub fn from_line(line: &[u8]) -> Result<Message, MessageError> {
        let value = Json::parse(line).map_err(|e| MessageError::NotJson(e.to_string()))?;
        let Json::Object(fields) = value else {
            return Err(MessageError::NotAnObject);
        };
        let mut src = None;
        let mut dest = None;
        let mut body = None;
        for (key, value) in fields {
            match (key.as_str(), value) {
                ("src", Json::String(s)) => src = Some(s),
                ("dest", Json::String(s)) => dest = Some(s),
                ("body", b @ Json::Object(_)) => body = Some(b),
                _ => {}
            }
        }
        // A body without a string `type` is still a message: it gets a malformed-request
        // error reply (when it has a msg_id to answer), not silence.
        let body = body.ok_or(MessageError::MissingField("body"))?;
        Ok(Message {
            src: src.ok_or(MessageError::MissingField("src"))?,
            dest: dest.ok_or(MessageError::MissingField("dest"))?,
            body,
        })
    }

    /// The body's `type` ("" if absent or not a string).
    pub fn msg_type(&self) -> &str {
        self.body.get("type").and_then(Json::as_str).unwrap_or("")
    }

    /// The line Python's `json.dumps` would print for this message (no newline).
    pub fn to_line(&self) -> String {
        let mut out = String::from("{\"src\": ");
        Json::str(self.src.as_str()).write_python(&mut out);
        out.push_str(", \"dest\": ");
        Json::str(self.dest.as_str()).write_python(&mut out);
        out.push_str(", \"body\": ");
        self.body.write_python(&mut out);
        out.push('}');
        out
    }
}

/// What the node wants done, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    /// Write this message to stdout.
    Send(Message),
    /// Write this note to stderr (never stdout).
    Note(String),
}

/// Counters of the TCP echo server.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EchoStats {
    /// Connections accepted since the server started.
    pub total_connections: u64,
    /// Bytes echoed back since the server started.
    pub total_bytes: u64,
}

/// The TCP echo server as the node sees it. The real one lives in `net::rawsock`; tests
/// plug in a fake so the node logic stays pure.
pub trait EchoBackend {
    /// Starts the server on 127.0.0.1:`port` (0 = any free port) and returns the bound port,
    /// or the operating system's error text.
    fn start(&mut self, port: u16) -> Result<u16, String>;
    /// Connects to the running server on `port`, sends `data`, reads the echo back and
    /// closes. Must finish within its own bounded timeouts.
    fn roundtrip(&mut self, port: u16, data: &[u8]) -> Result<Vec<u8>, String>;
    /// The running server's counters.
    fn stats(&self) -> EchoStats;
}

/// What an RPC callback receives: the reply body, or why there is none. An `error` reply
/// arrives as [`NodeError::Remote`].
pub type RpcResult = Result<Json, NodeError>;

/// A callback run once with the outcome of an RPC; it may use the node freely, including
/// sending more RPCs.
pub type RpcCallback<E> = Box<dyn FnOnce(&mut Node<E>, RpcResult)>;

struct PendingRpc<E> {
    deadline_ms: u64,
    callback: RpcCallback<E>,
}

/// A `batch_echo` waiting for its echo replies.
struct Batch {
    requester: String,
    in_reply_to: Json,
    results: Vec<Option<Json>>,
    remaining: usize,
    rpc_ids: Vec<u64>,
}

/// A successful answer to a request.
enum Reply {
    /// `type`, `in_reply_to`, these fields, `msg_id`.
    Fields(&'static str, Vec<(&'static str, Json)>),
    /// `echo_ok` keeps the request's layout: `type`, `echo`, `in_reply_to`, `msg_id`.
    Echo(Json),
    /// Answered later (by an RPC callback).
    Deferred,
}

/// The node's whole state. See the module docs for the calling convention.
pub struct Node<E> {
    id: Option<String>,
    node_ids: Vec<String>,
    next_msg_id: u64,
    rpc_timeout_ms: u64,
    clock_ms: u64,
    keepalive: KeepAliveTable,
    echo: E,
    echo_port: Option<u16>,
    pending: BTreeMap<u64, PendingRpc<E>>,
    batches: HashMap<u64, Batch>,
    next_batch_id: u64,
    out: Vec<Output>,
}

impl<E: EchoBackend + 'static> Node<E> {
    /// A fresh, uninitialized node whose RPCs fail after `rpc_timeout_ms` without reply.
    pub fn new(echo: E, rpc_timeout_ms: u64) -> Node<E> {
        Node {
            id: None,
            node_ids: Vec::new(),
            next_msg_id: 0,
            rpc_timeout_ms,
            clock_ms: 0,
            keepalive: KeepAliveTable::new(),
            echo,
            echo_port: None,
            pending: BTreeMap::new(),
            batches: HashMap::new(),
            next_batch_id: 0,
            out: Vec::new(),
        }
    }

    /// The id `init` gave this node, if any.
    pub fn node_id(&self) -> Option<&str> {
        self.id.as_deref()
    }

    /// Every node id `init` listed.
    pub fn node_ids(&self) -> &[String] {
        &self.node_ids
    }

    /// The echo backend, e.g. to stop it or inspect a fake in tests.
    pub fn echo_backend(&self) -> &E {
        &self.echo
    }

    /// RPCs sent and still waiting for a reply or timeout.
    pub fn pending_rpcs(&self) -> usize {
        self.pending.len()
    }

    /// Handles one incoming message at `now_ms` (ms since node start) and returns what to emit.
    pub fn handle(&mut self, msg: Message, now_ms: u64) -> Vec<Output> {
        self.advance(now_ms);
        self.dispatch(msg);
        std::mem::take(&mut self.out)
    }

    /// The earliest RPC deadline, in the same ms as `now_ms`; `None` when nothing waits.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<u64> {
        self.pending.values().map(|p| p.deadline_ms).min()
    }

    /// Fails every RPC whose deadline is at or before `now_ms` with [`NodeError::Timeout`].
    pub fn handle_timeout(&mut self, now_ms: u64) -> Vec<Output> {
        self.advance(now_ms);
        let due: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline_ms <= self.clock_ms)
            .map(|(id, _)| *id)
            .collect();
        for msg_id in due {
            // An earlier callback may already have cancelled this one.
            if let Some(p) = self.pending.remove(&msg_id) {
                let err = NodeError::Timeout {
                    msg_id,
                    after_ms: self.rpc_timeout_ms,
                };
                (p.callback)(self, Err(err));
            }
        }
        std::mem::take(&mut self.out)
    }

    /// Sends `body` (type and fields; `msg_id` is added) to `dest` and registers `callback`
    /// under the fresh msg_id, which is returned. Returns at once; the callback runs from a
    /// later [`Node::handle`] (reply) or [`Node::handle_timeout`] (no reply in time).
    pub fn async_rpc(
        &mut self,
        dest: &str,
        body: Vec<(String, Json)>,
        callback: RpcCallback<E>,
    ) -> u64 {
        let src = self.id.clone().unwrap_or_default();
        let msg_id = self.send(src, dest.to_owned(), body);
        self.pending.insert(
            msg_id,
            PendingRpc {
                deadline_ms: self.clock_ms.saturating_add(self.rpc_timeout_ms),
                callback,
            },
        );
        msg_id
    }

    fn advance(&mut self, now_ms: u64) {
        self.clock_ms = self.clock_ms.max(now_ms);
    }

    fn note(&mut self, text: String) {
        self.out.push(Output::Note(text));
    }

    /// Emits a message with the next msg_id appended last and returns that id.
    fn send(&mut self, src: String, dest: String, mut fields: Vec<(String, Json)>) -> u64 {
        let msg_id = self.next_msg_id;
        self.next_msg_id += 1;
        fields.push(("msg_id".to_owned(), Json::uint(msg_id)));
        self.out.push(Output::Send(Message {
            src,
            dest,
            body: Json::Object(fields),
        }));
        msg_id
    }

    fn send_error(&mut self, src: String, dest: String, in_reply_to: Json, err: &NodeError) {
        let fields = vec![
            ("type".to_owned(), Json::str("error")),
            ("in_reply_to".to_owned(), in_reply_to),
            ("code".to_owned(), Json::uint(err.code())),
            ("text".to_owned(), Json::str(err.to_string())),
        ];
        self.send(src, dest, fields);
    }

    fn dispatch(&mut self, msg: Message) {
        // Whatever else it holds, a body with in_reply_to is a reply (CONTRACT 5).
        if let Some(irt) = msg.body.get("in_reply_to") {
            let irt = irt.clone();
            self.on_reply(&irt, msg);
            return;
        }
        let msg_type = msg.msg_type().to_owned();
        let Some(msg_id) = msg.body.get("msg_id").cloned() else {
            self.note(format!(
                "ignoring {msg_type:?} from {:?}: no msg_id to answer",
                msg.src
            ));
            return;
        };
        let result = if msg.body.get("type").and_then(Json::as_str).is_none() {
            Err(NodeError::malformed("body.type must be a string"))
        } else if msg_type == "init" {
            self.on_init(&msg.body)
        } else if self.id.is_none() {
            Err(NodeError::NotInitialized)
        } else {
            match msg_type.as_str() {
                "echo" => on_echo(&msg.body),
                "ka_register" => self.on_ka_register(&msg.body),
                "ka_heartbeat" => self.on_ka_heartbeat(&msg.body),
                "ka_check" => self.on_ka_check(&msg.body),
                "ka_status" => Ok(self.on_ka_status()),
                "tcp_echo_start" => self.on_tcp_echo_start(&msg.body),
                "tcp_echo_send" => self.on_tcp_echo_send(&msg.body),
                "tcp_echo_stats" => Ok(self.on_tcp_echo_stats()),
                "batch_echo" => self.on_batch_echo(&msg, &msg_id),
                _ => Err(NodeError::NotSupported { msg_type }),
            }
        };
        // Before init the node has no id of its own, so it answers as the addressee.
        let src = self.id.clone().unwrap_or_else(|| msg.dest.clone());
        match result {
            Ok(Reply::Fields(reply_type, fields)) => {
                let mut body = vec![
                    ("type".to_owned(), Json::str(reply_type)),
                    ("in_reply_to".to_owned(), msg_id),
                ];
                body.extend(fields.into_iter().map(|(k, v)| (k.to_owned(), v)));
                self.send(src, msg.src, body);
            }
            Ok(Reply::Echo(value)) => {
                let body = vec![
                    ("type".to_owned(), Json::str("echo_ok")),
                    ("echo".to_owned(), value),
                    ("in_reply_to".to_owned(), msg_id),
                ];
                self.send(src, msg.src, body);
            }
            Ok(Reply::Deferred) => {}
            Err(err) => self.send_error(src, msg.src, msg_id, &err),
        }
    }

    fn on_reply(&mut self, in_reply_to: &Json, msg: Message) {
        let pending = in_reply_to.as_u64().and_then(|id| self.pending.remove(&id));
        let Some(pending) = pending else {
            self.note(format!(
                "ignoring {:?} from {:?}: no callback for in_reply_to {}",
                msg.msg_type(),
                msg.src,
                in_reply_to.to_python()
            ));
            return;
        };
        let result = if msg.msg_type() == "error" {
            Err(NodeError::Remote {
                code: msg
                    .body
                    .get("code")
                    .and_then(Json::as_u64)
                    .unwrap_or(code::CRASH),
                text: msg
                    .body
                    .get("text")
                    .and_then(Json::as_str)
                    .unwrap_or("")
                    .to_owned(),
            })
        } else {
            Ok(msg.body)
        };
        (pending.callback)(self, result);
    }

    fn on_init(&mut self, body: &Json) -> Result<Reply, NodeError> {
        let node_id = required_str(body, "node_id")?;
        let node_ids = match body.get("node_ids") {
            None | Some(Json::Null) => Vec::new(),
            Some(v) => v
                .as_array()
                .and_then(|ids| {
                    ids.iter()
                        .map(|id| id.as_str().map(str::to_owned))
                        .collect::<Option<Vec<_>>>()
                })
                .ok_or_else(|| NodeError::malformed("node_ids must be a list of strings"))?,
        };
        self.id = Some(node_id.to_owned());
        self.node_ids = node_ids;
        Ok(Reply::Fields("init_ok", Vec::new()))
    }

    fn on_ka_register(&mut self, body: &Json) -> Result<Reply, NodeError> {
        let client_id = required_str(body, "client_id")?;
        let timeout_ms = required_positive(body, "timeout_ms")?;
        let ping_interval_ms = required_positive(body, "ping_interval_ms")?;
        self.keepalive
            .register(client_id, timeout_ms, ping_interval_ms, self.clock_ms);
        Ok(Reply::Fields("ka_register_ok", Vec::new()))
    }

    fn on_ka_heartbeat(&mut self, body: &Json) -> Result<Reply, NodeError> {
        let client_id = required_str(body, "client_id")?;
        self.keepalive.heartbeat(client_id, self.clock_ms)?;
        Ok(Reply::Fields(
            "ka_heartbeat_ok",
            vec![("last_seen_ms_ago", Json::uint(0))],
        ))
    }

    fn on_ka_check(&mut self, body: &Json) -> Result<Reply, NodeError> {
        let current = match body.get("current_time_ms") {
            None | Some(Json::Null) => None,
            Some(v) => Some(v.as_u64().ok_or_else(|| {
                NodeError::malformed("current_time_ms must be a non-negative integer")
            })?),
        };
        let outcome = self.keepalive.check(current, self.clock_ms);
        let list = |ids: Vec<String>| Json::Array(ids.into_iter().map(Json::String).collect());
        Ok(Reply::Fields(
            "ka_check_ok",
            vec![
                ("expired", list(outcome.expired)),
                ("active", list(outcome.active)),
            ],
        ))
    }

    fn on_ka_status(&self) -> Reply {
        let connections = self
            .keepalive
            .status(self.clock_ms)
            .into_iter()
            .map(|s| {
                Json::object([
                    ("client_id", Json::String(s.client_id)),
                    ("last_seen_ms_ago", Json::uint(s.last_seen_ms_ago)),
                    (
                        "status",
                        Json::str(if s.expired { "expired" } else { "active" }),
                    ),
                ])
            })
            .collect();
        Reply::Fields(
            "ka_status_ok",
            vec![("connections", Json::Array(connections))],
        )
    }

    fn on_tcp_echo_start(&mut self, body: &Json) -> Result<Reply, NodeError> {
        let port = body
            .get("port")
            .and_then(Json::as_u64)
            .and_then(|p| u16::try_from(p).ok())
            .ok_or_else(|| NodeError::malformed("port must be an integer in 0..=65535"))?;
        let port = match self.echo_port {
            // Asking again for the same port (or any port) finds it running; another port
            // would need a second server, which the node does not run.
            Some(running) if port == 0 || port == running => running,
            Some(running) => {
                return Err(NodeError::EchoAlreadyRunning {
                    running,
                    asked: port,
                })
            }
            None => {
                let bound = self
                    .echo
                    .start(port)
                    .map_err(|os_error| NodeError::EchoStartFailed { port, os_error })?;
                self.echo_port = Some(bound);
                bound
            }
        };
        Ok(Reply::Fields(
            "tcp_echo_start_ok",
            vec![
                ("status", Json::str("listening")),
                ("port", Json::uint(u64::from(port))),
            ],
        ))
    }

    fn on_tcp_echo_send(&mut self, body: &Json) -> Result<Reply, NodeError> {
        let data = required_str(body, "data")?;
        let port = self.echo_port.ok_or(NodeError::EchoNotStarted)?;
        let echoed = self
            .echo
            .roundtrip(port, data.as_bytes())
            .map_err(|os_error| NodeError::EchoIo { os_error })?;
        let bytes = echoed.len() as u64;
        Ok(Reply::Fields(
            "tcp_echo_send_ok",
            vec![
                (
                    "echoed",
                    Json::String(String::from_utf8_lossy(&echoed).into_owned()),
                ),
                ("bytes", Json::uint(bytes)),
            ],
        ))
    }

    fn on_tcp_echo_stats(&self) -> Reply {
        let stats = if self.echo_port.is_some() {
            self.echo.stats()
        } else {
            EchoStats::default()
        };
        Reply::Fields(
            "tcp_echo_stats_ok",
            vec![
                ("total_connections", Json::uint(stats.total_connections)),
                ("total_bytes", Json::uint(stats.total_bytes)),
            ],
        )
    }

    fn on_batch_echo(&mut self, msg: &Message, msg_id: &Json) -> Result<Reply, NodeError> {
        let values = msg
            .body
            .get("values")
            .and_then(Json::as_array)
            .ok_or_else(|| NodeError::malformed("values must be a list"))?
            .to_vec();
        if values.is_empty() {
            return Ok(Reply::Fields(
                "batch_echo_ok",
                vec![("results", Json::Array(Vec::new()))],
            ));
        }
        let batch_id = self.next_batch_id;
        self.next_batch_id += 1;
        self.batches.insert(
            batch_id,
            Batch {
                requester: msg.src.clone(),
                in_reply_to: msg_id.clone(),
                results: vec![None; values.len()],
                remaining: values.len(),
                rpc_ids: Vec::with_capacity(values.len()),
            },
        );
        let me = self.id.clone().unwrap_or_default();
        for (index, value) in values.into_iter().enumerate() {
            let body = vec![
                ("type".to_owned(), Json::str("echo")),
                ("echo".to_owned(), value),
            ];
            let rpc_id = self.async_rpc(
                &me,
                body,
                Box::new(move |node: &mut Node<E>, result| {
                    node.on_batch_item(batch_id, index, result)
                }),
            );
            if let Some(batch) = self.batches.get_mut(&batch_id) {
                batch.rpc_ids.push(rpc_id);
            }
        }
        Ok(Reply::Deferred)
    }

    fn on_batch_item(&mut self, batch_id: u64, index: usize, result: RpcResult) {
        let src = self.id.clone().unwrap_or_default();
        // A batch that already failed has nothing left to answer.
        let Some(batch) = self.batches.get_mut(&batch_id) else {
            return;
        };
        match result {
            Ok(reply) => {
                let slot = &mut batch.results[index];
                if slot.is_none() {
                    batch.remaining -= 1;
                }
                *slot = Some(reply.get("echo").cloned().unwrap_or(Json::Null));
                if batch.remaining == 0 {
                    let Some(batch) = self.batches.remove(&batch_id) else {
                        return;
                    };
                    let results = batch.results.into_iter().flatten().collect();
                    let body = vec![
                        ("type".to_owned(), Json::str("batch_echo_ok")),
                        ("in_reply_to".to_owned(), batch.in_reply_to),
                        ("results".to_owned(), Json::Array(results)),
                    ];
                    self.send(src, batch.requester, body);
                }
            }
            Err(err) => {
                let Some(batch) = self.batches.remove(&batch_id) else {
                    return;
                };
                // The batch has failed as a whole; its other RPCs must not linger.
                for rpc_id in &batch.rpc_ids {
                    self.pending.remove(rpc_id);
                }
                self.send_error(src, batch.requester, batch.in_reply_to, &err);
            }
        }
    }
}

fn on_echo(body: &Json) -> Result<Reply, NodeError> {
    body.get("echo")
        .cloned()
        .map(Reply::Echo)
        .ok_or_else(|| NodeError::malformed("echo is missing"))
}

fn required_str<'a>(body: &'a Json, field: &str) -> Result<&'a str, NodeError> {
    body.get(field)
        .and_then(Json::as_str)
        .ok_or_else(|| NodeError::malformed(format!("{field} must be a string")))
}

fn required_positive(body: &Json, field: &str) -> Result<u64, NodeError> {
    body.get(field)
        .and_then(Json::as_u64)
        .filter(|n| *n > 0)
        .ok_or_else(|| NodeError::malformed(format!("{field} must be a positive integer")))
}
