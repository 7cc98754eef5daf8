//! The timestamped event log of a server (CONTRACT section 1) and its structured twin.
//!
//! Every event is printed as one line on stdout with a UTC wall-clock timestamp, and can also
//! be sent, stamped with an [`Instant`], to a channel: `hb-scenarios` judges the manual's cases
//! from that channel instead of scraping text.

use std::fmt;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::Sender;
use serde_json::Value;

use crate::config::{fmt_duration, Mode, Wire};
use crate::core::classic::ClassicEnd;
use crate::core::wire::EndReason;
use crate::net::metrics::Metrics;

/// Something that happened on the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The server is accepting connections.
    Listening {
        /// The address bound (the real port when asked for port 0).
        addr: SocketAddr,
        /// What the server does with lines.
        mode: Mode,
        /// Which bytes go over the socket.
        wire: Wire,
    },
    /// `--metrics`: the Prometheus endpoint is served.
    MetricsListening {
        /// The address bound (the real port when asked for port 0).
        addr: SocketAddr,
    },
    /// A client connected.
    Connected {
        /// Connection number.
        id: u64,
        /// The client's address.
        peer: SocketAddr,
    },
    /// Nothing was received for `idle`: the heartbeat round starts.
    RoundStarted {
        /// Connection number.
        id: u64,
        /// The client's address.
        peer: SocketAddr,
        /// The silence that started it.
        idle: Duration,
    },
    /// Heartbeat `k` of `n` was written.
    PingSent {
        /// Connection number.
        id: u64,
        /// The client's address.
        peer: SocketAddr,
        /// 1-based number within the round.
        k: u32,
        /// Heartbeats allowed per round.
        n: u32,
    },
    /// The client sent something during a round.
    Answered {
        /// Connection number.
        id: u64,
        /// The client's address.
        peer: SocketAddr,
        /// Heartbeats sent in the round.
        after: u32,
        /// Time since the last heartbeat.
        rtt: Duration,
    },
    /// `END reason` was sent (or attempted) and the connection is closing.
    EndSent {
        /// Connection number.
        id: u64,
        /// The client's address.
        peer: SocketAddr,
        /// Why.
        reason: EndReason,
        /// False when the line could not be written (the client stopped reading).
        delivered: bool,
        /// For `heartbeat-timeout`: how long after the heartbeat's deadline the core declared
        /// the client dead (the server's own lateness; `hb_ghost_lateness_seconds`).
        late: Option<Duration>,
    },
    /// The client closed or reset the connection.
    ClosedByClient {
        /// Connection number.
        id: u64,
        /// The client's address.
        peer: SocketAddr,
        /// The OS error for a reset, `None` for an orderly close.
        error: Option<String>,
    },
    /// Writing to the client failed or timed out; it was dropped without an `END`.
    WriteFailed {
        /// Connection number.
        id: u64,
        /// The client's address.
        peer: SocketAddr,
        /// The OS error.
        error: String,
    },
    /// Both threads of a connection are gone and its resources are freed.
    Closed {
        /// Connection number.
        id: u64,
        /// The client's address.
        peer: SocketAddr,
    },
    /// A newcomer was turned away.
    Refused {
        /// The newcomer's address, when it is known.
        peer: Option<SocketAddr>,
        /// What was sent (`server-full`).
        reason: EndReason,
        /// Why: limit reached, no thread, no file descriptor.
        detail: String,
        /// What ran out, for `hb_refused_total{reason}`.
        cause: RefusalCause,
    },
    /// A line from a client was refused with `ERR`.
    BadLine {
        /// Connection number.
        id: u64,
        /// The client's address.
        peer: SocketAddr,
        /// The `ERR` sent.
        detail: String,
    },
    /// Chat: a client joined the room.
    Joined {
        /// Connection number.
        id: u64,
        /// The client's address.
        peer: SocketAddr,
        /// Its name.
        name: String,
    },
    /// Chat: a member left the room (announced to the others as `LEFT`).
    Left {
        /// Connection number.
        id: u64,
        /// The client's address.
        peer: SocketAddr,
        /// Its name.
        name: String,
        /// Why.
        reason: EndReason,
    },
    /// `--max-conns` is more than the kernel's memory-map limit allows; it was lowered.
    CapacityLowered {
        /// `--max-conns` as asked.
        asked: usize,
        /// What the server will serve.
        allowed: usize,
        /// `vm.max_map_count`.
        max_map_count: usize,
    },
    /// Flow control gave up on a client: it is being ended `slow-consumer`.
    SlowConsumer {
        /// Connection number.
        id: u64,
        /// Client address.
        peer: SocketAddr,
        /// Why, as the core decided it.
        why: crate::core::session::SlowConsumer,
    },
    /// A connection could not be secured (TLS error, or no handshake in time): closed
    /// without a word.
    Insecure {
        /// Connection number.
        id: u64,
        /// Client address.
        peer: SocketAddr,
        /// What went wrong.
        detail: String,
    },
    /// A client's token was accepted (`--auth-secret`).
    Authenticated {
        /// Connection number.
        id: u64,
        /// Client address.
        peer: SocketAddr,
        /// The token's `sub`: the only name the client may join under.
        name: String,
        /// A later `AUTH` on the same connection (the expiry moved on).
        renewed: bool,
    },
    /// A client is ended `auth-failed`: why (never the token).
    AuthFailed {
        /// Connection number.
        id: u64,
        /// Client address.
        peer: SocketAddr,
        /// Why, as the core decided it.
        reason: String,
    },
    /// SIGHUP: the configuration file was read again and applied to new connections.
    Reloaded {
        /// What changed (`interval 10s -> 5s`), empty when nothing did.
        changed: Vec<String>,
        /// What changed in the file but needs a restart (`mode echo -> chat`).
        restart_needed: Vec<String>,
    },
    /// SIGHUP: the configuration could not be used; the old settings stay.
    ReloadFailed {
        /// Why.
        error: String,
    },
    /// SIGUSR1: what the server is doing, on one line.
    Status {
        /// Connections open.
        connections: usize,
        /// The settings in effect, summarised.
        summary: String,
        /// Since the server started listening.
        up: Duration,
    },
    /// The server is shutting down.
    ShuttingDown {
        /// Connections told `END server-shutdown`.
        clients: usize,
    },
    /// Classic wire: the heartbeat socket is connected back to the client.
    ConnectedBack {
        /// Connection number.
        id: u64,
        /// The client's address (data socket).
        peer: SocketAddr,
        /// Where the heartbeat socket goes: the client's IP at `client.port`.
        to: SocketAddr,
        /// Attempts it took (1 when the client was already listening).
        attempts: u32,
    },
    /// Classic wire: the connect-back never succeeded (every attempt failed, or the connection
    /// ended while still trying); without a heartbeat socket a silent client is closed after
    /// idle + count * interval.
    ConnectBackFailed {
        /// Connection number.
        id: u64,
        /// The client's address (data socket).
        peer: SocketAddr,
        /// Where the heartbeat socket should have gone.
        to: SocketAddr,
        /// Attempts made.
        attempts: u32,
        /// The last OS error.
        error: String,
    },
    /// Classic wire: heartbeat `k` of `n` was due but there is no heartbeat socket.
    HeartbeatNotSent {
        /// Connection number.
        id: u64,
        /// The client's address.
        peer: SocketAddr,
        /// 1-based number within the round.
        k: u32,
        /// Heartbeats allowed per round.
        n: u32,
    },
    /// Classic wire: `End Connection` was sent (or attempted) on both sockets, which close.
    EndConnectionSent {
        /// Connection number.
        id: u64,
        /// The client's address.
        peer: SocketAddr,
        /// Why.
        why: ClassicEnd,
    },
    /// The broker link (`--broker`) went down: the room serves its local members alone.
    BrokerDown {
        /// What failed.
        error: String,
    },
    /// Something the cluster reports (docs/CLUSTER.md).
    Cluster(crate::core::cluster::ClusterEvent),
    /// A payload on the broker's bus that is not a message of ours (refused as a whole).
    BrokerBadMessage {
        /// Why it was refused.
        why: String,
    },
}

/// The log line of a cluster event.
fn fmt_cluster(f: &mut fmt::Formatter<'_>, ev: &crate::core::cluster::ClusterEvent) -> fmt::Result {
    use crate::core::cluster::ClusterEvent as C;
    match ev {
        C::LinkUp => write!(f, "broker connected"),
        C::LinkDown => write!(f, "broker link down"),
        C::NodeLost { node } => write!(f, "node {node} lost: its members leave (node-lost)"),
        C::EpochChanged { epoch } => write!(
            f,
            "room stream has a new epoch {epoch} (the broker lost it): older positions hear GAP epoch-changed"
        ),
        C::MessagesLost { from, to } => write!(
            f,
            "room messages {from}..={to} lost (trimmed from the stream before this node read them)"
        ),
        C::SenderGap {
            node,
            missing,
            stream,
        } => write!(
            f,
            "node {node} skipped {missing} {}",
            if *stream {
                "room messages (dropped on its side)"
            } else {
                "presence lines (rosters asked for again)"
            }
        ),
        C::PendingDropped { count } => write!(
            f,
            "{count} local messages did not reach the other nodes (the oldest, dropped while the broker was unreachable)"
        ),
        C::Evicted => write!(f, "the other nodes declared this node lost: reconnecting under a new id"),
        C::Renewed { old, new } => write!(f, "node id {old} renewed as {new}"),
        C::NameLost { name, .. } => write!(
            f,
            "name {name} was claimed on another node during the outage: its local holder leaves (name-taken)"
        ),
        // The room's own lines (a replaced member is logged by the hub, as `Left`).
        C::Deliver { .. }
        | C::Joined { .. }
        | C::Left { .. }
        | C::JoinAnswer { .. }
        | C::Replaced { .. } => Ok(()),
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BrokerDown { error } => write!(
                f,
                "broker unreachable: {error}; serving local members only, reconnecting"
            ),
            Self::Cluster(ev) => fmt_cluster(f, ev),
            Self::BrokerBadMessage { why } => write!(f, "broker: bad bus message refused: {why}"),
            // `ADDR:PORT` stays last on the line: scripts take the port from the line's end.
            Self::Listening { addr, mode, wire } => {
                let mode = match mode {
                    Mode::Echo => "echo",
                    Mode::Chat => "chat",
                };
                let wire = match wire {
                    Wire::Line => "line",
                    Wire::Classic => "classic",
                };
                write!(f, "mode {mode}, wire {wire}, listening on {addr}")
            }
            Self::MetricsListening { addr } => write!(f, "metrics on http://{addr}/metrics"),
            Self::Connected { id, peer } => write!(f, "#{id} {peer} connected"),
            Self::RoundStarted { id, peer, idle } => {
                write!(f, "#{id} {peer} no data for {}, heartbeat round starts", fmt_duration(*idle))
            }
            Self::PingSent { id, peer, k, n } => write!(f, "#{id} {peer} heartbeat {k}/{n} sent"),
            Self::Answered { id, peer, after, rtt } => write!(
                f,
                "#{id} {peer} answered after heartbeat {after} (round trip {}ms), connection is alive",
                TenthsMs(*rtt)
            ),
            Self::EndSent {
                id,
                peer,
                reason,
                delivered: true,
                ..
            } => write!(f, "#{id} {peer} END {reason} sent, closing"),
            Self::EndSent {
                id,
                peer,
                reason,
                delivered: false,
                ..
            } => write!(f, "#{id} {peer} END {reason} could not be delivered, closing"),
            Self::ClosedByClient { id, peer, error: None } => write!(f, "#{id} {peer} closed by client"),
            Self::ClosedByClient { id, peer, error: Some(e) } => write!(f, "#{id} {peer} closed by client ({e})"),
            Self::WriteFailed { id, peer, error } => write!(f, "#{id} {peer} write failed ({error}), dropping"),
            Self::Closed { id, peer } => write!(f, "#{id} {peer} closed"),
            Self::Refused { peer: Some(p), reason, detail, .. } => write!(f, "refused {p}: END {reason} ({detail})"),
            Self::Refused { peer: None, reason, detail, .. } => write!(f, "refused a connection: END {reason} ({detail})"),
            Self::BadLine { id, peer, detail } => write!(f, "#{id} {peer} bad line: ERR {detail}"),
            Self::Joined { id, peer, name } => write!(f, "#{id} {peer} joined as {name}"),
            Self::Left {
                id,
                peer,
                name,
                reason,
            } => write!(f, "#{id} {peer} {name} left the room ({reason})"),
            Self::CapacityLowered {
                asked,
                allowed,
                max_map_count,
            } => write!(
                f,
                "serving at most {allowed} clients, not {asked}: vm.max_map_count {max_map_count} \
                 leaves room for that many (8 memory maps each); raise it to serve more"
            ),
            Self::SlowConsumer { id, peer, why: crate::core::session::SlowConsumer::Lagged(d) } => write!(
                f,
                "#{id} {peer} slow consumer: held its senders back for {} ms without catching up",
                d.as_millis()
            ),
            Self::SlowConsumer { id, peer, why: crate::core::session::SlowConsumer::Blocked(d) } => write!(
                f,
                "#{id} {peer} slow consumer: its socket accepted nothing for {} ms",
                d.as_millis()
            ),
            Self::Insecure { id, peer, detail } => write!(f, "#{id} {peer} closed, not secured: {detail}"),
            Self::Authenticated { id, peer, name, renewed: false } => write!(f, "#{id} {peer} authenticated as {name}"),
            Self::Authenticated { id, peer, name, renewed: true } => {
                write!(f, "#{id} {peer} authenticated again as {name} (token renewed)")
            }
            Self::AuthFailed { id, peer, reason } => write!(f, "#{id} {peer} authentication failed: {reason}"),
            Self::Reloaded { changed, restart_needed } => {
                if changed.is_empty() {
                    write!(f, "configuration reloaded: nothing to change")?;
                } else {
                    write!(f, "configuration reloaded, for new connections: {}", changed.join(", "))?;
                }
                if !restart_needed.is_empty() {
                    write!(f, "; needs a restart, not applied: {}", restart_needed.join(", "))?;
                }
                Ok(())
            }
            Self::ReloadFailed { error } => write!(f, "configuration reload failed, the old settings stay: {error}"),
            Self::Status { connections, summary, up } => write!(
                f,
                "status: {connections} connection(s), up {}; {summary}",
                fmt_duration(Duration::from_secs(up.as_secs()))
            ),
            Self::ShuttingDown { clients } => write!(f, "shutting down: END server-shutdown to {clients} client(s)"),
            Self::ConnectedBack { id, peer, to, attempts } => write!(f, "#{id} {peer} heartbeat socket connected to {to} (attempt {attempts})"),
            Self::ConnectBackFailed { id, peer, to, attempts, error } => write!(
                f,
                "#{id} {peer} cannot connect the heartbeat socket to {to} after {attempts} attempt(s) ({error}); without it a silent client is closed after idle + count x interval"
            ),
            Self::HeartbeatNotSent { id, peer, k, n } => write!(f, "#{id} {peer} heartbeat {k}/{n} due, no heartbeat socket"),
            Self::EndConnectionSent { id, peer, why } => write!(f, "#{id} {peer} End Connection sent ({why}), closing"),
        }
    }
}

/// An event with the instant it happened.
#[derive(Debug, Clone)]
pub struct Stamped<E = Event> {
    /// When.
    pub at: Instant,
    /// What.
    pub event: E,
}

/// Why a newcomer was refused, as a class (the `reason` label of `hb_refused_total`); the
/// event's `detail` says it in words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalCause {
    /// `--max-conns` (or the memory-map allowance it was lowered to).
    MaxConns,
    /// `--max-conns-per-ip`.
    MaxConnsPerIp,
    /// No thread could be started for it.
    OutOfThreads,
    /// No file descriptor left to accept it.
    OutOfFds,
    /// Its TLS state could not be created.
    Tls,
    /// Anything else (an accept error, a wake-up descriptor that could not be made).
    Other,
}

impl RefusalCause {
    /// Every cause, in label order.
    pub const ALL: [RefusalCause; 6] = [
        Self::MaxConns,
        Self::MaxConnsPerIp,
        Self::OutOfThreads,
        Self::OutOfFds,
        Self::Tls,
        Self::Other,
    ];

    /// Its label: `max-conns`, `max-conns-per-ip`, `out-of-threads`, `out-of-fds`, `tls`,
    /// `other`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::MaxConns => "max-conns",
            Self::MaxConnsPerIp => "max-conns-per-ip",
            Self::OutOfThreads => "out-of-threads",
            Self::OutOfFds => "out-of-fds",
            Self::Tls => "tls",
            Self::Other => "other",
        }
    }
}

/// What the stdout log needs of an event besides its text (`--log-format json`, `--quiet`).
pub trait LogLine: fmt::Display + Send + 'static {
    /// What happened, as a short kebab-case name (`event` in a JSON line).
    fn kind(&self) -> &'static str;
    /// The event's facts for a JSON line, besides `ts`, `event` and `msg`: `conn` where a
    /// connection is concerned, then what else is worth a field.
    fn fields(&self, _out: &mut Fields) {}
    /// Kept by `--quiet`: refusals, errors and shutdown (and the start-up line).
    fn essential(&self) -> bool {
        true
    }
}

/// An event's fields for a JSON line, in the order they are written.
pub type Fields = Vec<(&'static str, Value)>;

fn put(out: &mut Fields, key: &'static str, v: impl Into<Value>) {
    out.push((key, v.into()));
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

impl LogLine for Event {
    fn kind(&self) -> &'static str {
        match self {
            Self::Listening { .. } => "listening",
            Self::MetricsListening { .. } => "metrics-listening",
            Self::Connected { .. } => "connected",
            Self::RoundStarted { .. } => "round-started",
            Self::PingSent { .. } => "ping-sent",
            Self::Answered { .. } => "answered",
            Self::EndSent { .. } => "end-sent",
            Self::ClosedByClient { .. } => "closed-by-client",
            Self::WriteFailed { .. } => "write-failed",
            Self::Closed { .. } => "closed",
            Self::Refused { .. } => "refused",
            Self::BadLine { .. } => "bad-line",
            Self::Joined { .. } => "joined",
            Self::Left { .. } => "left",
            Self::CapacityLowered { .. } => "capacity-lowered",
            Self::SlowConsumer { .. } => "slow-consumer",
            Self::Insecure { .. } => "insecure",
            Self::Authenticated { .. } => "authenticated",
            Self::AuthFailed { .. } => "auth-failed",
            Self::Reloaded { .. } => "reloaded",
            Self::ReloadFailed { .. } => "reload-failed",
            Self::Status { .. } => "status",
            Self::ShuttingDown { .. } => "shutting-down",
            Self::ConnectedBack { .. } => "connected-back",
            Self::ConnectBackFailed { .. } => "connect-back-failed",
            Self::HeartbeatNotSent { .. } => "heartbeat-not-sent",
            Self::EndConnectionSent { .. } => "end-connection-sent",
            Self::BrokerDown { .. } => "broker-down",
            Self::Cluster(_) => "cluster",
            Self::BrokerBadMessage { .. } => "broker-bad-message",
        }
    }

    fn fields(&self, out: &mut Fields) {
        let conn = |out: &mut Fields, id: &u64, peer: &SocketAddr| {
            put(out, "conn", *id);
            put(out, "peer", peer.to_string());
        };
        match self {
            Self::Listening { addr, mode, wire } => {
                put(out, "addr", addr.to_string());
                put(out, "mode", mode.as_str());
                put(out, "wire", wire.as_str());
            }
            Self::Connected { id, peer } | Self::Closed { id, peer } => conn(out, id, peer),
            Self::RoundStarted { id, peer, idle } => {
                conn(out, id, peer);
                put(out, "idle_ms", ms(*idle));
            }
            Self::PingSent { id, peer, k, n } | Self::HeartbeatNotSent { id, peer, k, n } => {
                conn(out, id, peer);
                put(out, "k", *k);
                put(out, "n", *n);
            }
            Self::Answered {
                id,
                peer,
                after,
                rtt,
            } => {
                conn(out, id, peer);
                put(out, "after_pings", *after);
                put(out, "rtt_ms", ms(*rtt));
            }
            Self::MetricsListening { addr } => put(out, "addr", addr.to_string()),
            Self::EndSent {
                id,
                peer,
                reason,
                delivered,
                late,
            } => {
                conn(out, id, peer);
                put(out, "reason", reason.as_str());
                put(out, "delivered", *delivered);
                if let Some(late) = late {
                    put(out, "late_ms", ms(*late));
                }
            }
            Self::ClosedByClient { id, peer, error } => {
                conn(out, id, peer);
                if let Some(e) = error {
                    put(out, "error", e.as_str());
                }
            }
            Self::WriteFailed { id, peer, error } => {
                conn(out, id, peer);
                put(out, "error", error.as_str());
            }
            Self::Refused {
                peer,
                reason,
                detail,
                cause,
            } => {
                if let Some(p) = peer {
                    put(out, "peer", p.to_string());
                }
                put(out, "reason", reason.as_str());
                put(out, "cause", cause.as_str());
                put(out, "detail", detail.as_str());
            }
            Self::BadLine { id, peer, detail } | Self::Insecure { id, peer, detail } => {
                conn(out, id, peer);
                put(out, "detail", detail.as_str());
            }
            Self::Joined { id, peer, name } => {
                conn(out, id, peer);
                put(out, "name", name.as_str());
            }
            Self::Left {
                id,
                peer,
                name,
                reason,
            } => {
                conn(out, id, peer);
                put(out, "name", name.as_str());
                put(out, "reason", reason.as_str());
            }
            Self::CapacityLowered {
                asked,
                allowed,
                max_map_count,
            } => {
                put(out, "asked", *asked);
                put(out, "allowed", *allowed);
                put(out, "max_map_count", *max_map_count);
            }
            Self::SlowConsumer { id, peer, why } => {
                conn(out, id, peer);
                let (how, d) = match why {
                    crate::core::session::SlowConsumer::Lagged(d) => ("lagged", d),
                    crate::core::session::SlowConsumer::Blocked(d) => ("blocked", d),
                };
                put(out, "why", how);
                put(out, "for_ms", ms(*d));
            }
            Self::Authenticated {
                id,
                peer,
                name,
                renewed,
            } => {
                conn(out, id, peer);
                put(out, "name", name.as_str());
                put(out, "renewed", *renewed);
            }
            Self::AuthFailed { id, peer, reason } => {
                conn(out, id, peer);
                put(out, "reason", "auth-failed");
                put(out, "detail", reason.as_str());
            }
            Self::Reloaded {
                changed,
                restart_needed,
            } => {
                put(out, "changed", changed.clone());
                put(out, "restart_needed", restart_needed.clone());
            }
            Self::ReloadFailed { error } => put(out, "error", error.as_str()),
            Self::Status {
                connections,
                summary,
                up,
            } => {
                put(out, "connections", *connections);
                put(out, "settings", summary.as_str());
                put(out, "up_s", up.as_secs());
            }
            Self::ShuttingDown { clients } => put(out, "clients", *clients),
            Self::ConnectedBack {
                id,
                peer,
                to,
                attempts,
            } => {
                conn(out, id, peer);
                put(out, "to", to.to_string());
                put(out, "attempts", *attempts);
            }
            Self::ConnectBackFailed {
                id,
                peer,
                to,
                attempts,
                error,
            } => {
                conn(out, id, peer);
                put(out, "to", to.to_string());
                put(out, "attempts", *attempts);
                put(out, "error", error.as_str());
            }
            Self::EndConnectionSent { id, peer, .. } => conn(out, id, peer),
            Self::BrokerDown { error } => put(out, "error", error.as_str()),
            Self::BrokerBadMessage { why } => put(out, "detail", why.as_str()),
            Self::Cluster(_) => {}
        }
    }

    fn essential(&self) -> bool {
        matches!(
            self,
            Self::Listening { .. }
                | Self::MetricsListening { .. }
                | Self::Refused { .. }
                | Self::WriteFailed { .. }
                | Self::CapacityLowered { .. }
                | Self::Insecure { .. }
                | Self::AuthFailed { .. }
                | Self::ShuttingDown { .. }
                | Self::Reloaded { .. }
                | Self::ReloadFailed { .. }
                | Self::Status { .. }
                | Self::ConnectBackFailed { .. }
                | Self::BrokerDown { .. }
                | Self::BrokerBadMessage { .. }
        )
    }
}

/// How the stdout log is written: `--log-format` and `--quiet` (process-wide, set once at
/// start-up before anything is logged).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LogStyle {
    /// One JSON object per line instead of text.
    pub json: bool,
    /// Only what [`LogLine::essential`] keeps.
    pub quiet: bool,
}

static STYLE: std::sync::OnceLock<LogStyle> = std::sync::OnceLock::new();

/// Sets the stdout log's style; only the first call counts (call it before logging).
pub fn set_log_style(style: LogStyle) {
    let _ = STYLE.set(style);
}

fn log_style() -> LogStyle {
    STYLE.get().copied().unwrap_or_default()
}

/// One log line as JSON: `ts`, `event`, the event's fields, and `msg` (the text line).
pub fn json_line(at: SystemTime, event: &dyn LogLine) -> String {
    // Written field by field (not through a map, which would sort the keys): `ts` and
    // `event` first, as a reader scans them, and `msg` last.
    let mut fields = vec![
        ("ts", Value::from(utc_timestamp(at))),
        ("event", Value::from(event.kind())),
    ];
    event.fields(&mut fields);
    fields.push(("msg", Value::from(event.to_string())));
    let mut line = String::from("{");
    for (i, (key, value)) in fields.iter().enumerate() {
        if i > 0 {
            line.push(',');
        }
        line.push_str(&Value::from(*key).to_string());
        line.push(':');
        line.push_str(&value.to_string());
    }
    line.push('}');
    line
}

/// Where events go: stdout lines or a channel. Servers log [`Event`]s, clients
/// [`crate::net::client::ClientEvent`]s.
#[derive(Debug, Clone)]
pub struct EventLog<E = Event> {
    stdout: bool,
    tx: Option<Sender<Stamped<E>>>,
    /// `--metrics`: counts every event before it is logged.
    metrics: Option<Arc<Metrics>>,
}

impl<E> Default for EventLog<E> {
    fn default() -> Self {
        Self {
            stdout: false,
            tx: None,
            metrics: None,
        }
    }
}

/// An event [`Metrics`] may count: a server's [`Event`]s are counted, a client's events are
/// not (a client has no metrics).
pub trait Counted {
    /// Updates `metrics` for this event. Runs on the emitting thread, so it only touches
    /// atomics: no allocation, no lock.
    fn count(&self, _metrics: &Metrics) {}
}

impl Counted for Event {
    fn count(&self, metrics: &Metrics) {
        metrics.observe(self);
    }
}

impl Counted for crate::net::client::ClientEvent {}

impl<E> EventLog<E> {
    /// The same log, with every event counted in `metrics` first.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The metrics events are counted in (`--metrics`), if any.
    pub fn metrics(&self) -> Option<&Arc<Metrics>> {
        self.metrics.as_ref()
    }
}

impl<E: LogLine + Counted> EventLog<E> {
    /// Prints every event on stdout.
    pub fn stdout() -> Self {
        Self {
            stdout: true,
            tx: None,
            metrics: None,
        }
    }

    /// Sends every event to `tx` and prints nothing.
    pub fn channel(tx: Sender<Stamped<E>>) -> Self {
        Self {
            stdout: false,
            tx: Some(tx),
            metrics: None,
        }
    }

    /// Records one event. Never blocks on stdout: see [`flush_stdout`].
    pub fn emit(&self, event: E)
    where
        E: Send + Counted + 'static,
    {
        if let Some(m) = &self.metrics {
            event.count(m);
        }
        if let Some(tx) = &self.tx {
            let _ = tx.send(Stamped {
                at: Instant::now(),
                event,
            });
        } else if self.stdout {
            if log_style().quiet && !event.essential() {
                return;
            }
            // Formatted by the log thread: a connection pays for one allocation, not for
            // the timestamp and the line (during a burst of ENDs that was ~8 % of a worker).
            stdout_writer().line(ToStdout::Event(SystemTime::now(), Box::new(event)));
        }
    }
}

/// How long the log thread rests after emptying its queue (see `StdoutWriter::start`).
const LOG_BATCH_PAUSE: std::time::Duration = std::time::Duration::from_millis(5);

/// Lines waiting for stdout before new ones are dropped (and counted).
const STDOUT_BACKLOG: usize = 16_384;

enum ToStdout {
    /// An event to print as `TIMESTAMP EVENT` (or a JSON object).
    Event(SystemTime, Box<dyn LogLine>),
    Flush(Sender<()>),
}

/// The log's own note: lines it could not write.
struct Dropped(u64);

impl fmt::Display for Dropped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} log line(s) dropped: stdout was not keeping up",
            self.0
        )
    }
}

impl LogLine for Dropped {
    fn kind(&self) -> &'static str {
        "log-dropped"
    }
    fn fields(&self, out: &mut Fields) {
        put(out, "dropped", self.0);
    }
}

/// One thread owns stdout, so a reader of the log that stalls (a paused pager, a full pipe)
/// delays only the log, never a connection thread. Lines beyond [`STDOUT_BACKLOG`] are
/// dropped and their number reported once stdout drains.
struct StdoutWriter {
    tx: Sender<ToStdout>,
    dropped: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Every line dropped since the start (`dropped` is reset as each loss is reported).
    dropped_total: std::sync::atomic::AtomicU64,
}

impl StdoutWriter {
    fn start() -> Self {
        let (tx, rx) = crossbeam_channel::bounded::<ToStdout>(STDOUT_BACKLOG);
        let dropped = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let lost = dropped.clone();
        let json = log_style().json;
        let spawned = std::thread::Builder::new()
            .name("hb-log".into())
            .spawn(move || {
                // Lines that arrive together leave in one write; the buffer is flushed as soon
                // as nothing more is waiting, so a quiet log is never held back.
                let mut out = std::io::BufWriter::with_capacity(64 * 1024, std::io::stdout());
                let mut stamps = Stamps::default();
                for msg in rx.iter() {
                    match msg {
                        // A closed stdout must not take the program down: errors are ignored.
                        ToStdout::Event(at, event) => {
                            let _ = if json {
                                writeln!(out, "{}", json_line(at, &*event))
                            } else {
                                stamps
                                    .write(&mut out, at)
                                    .and_then(|()| writeln!(out, " {event}"))
                            };
                        }
                        ToStdout::Flush(done) => {
                            let _ = out.flush();
                            let _ = done.send(());
                        }
                    }
                    if rx.is_empty() {
                        let _ = out.flush();
                        // Rest a moment before waiting again: while this thread is not
                        // parked on the channel, a logging thread's send wakes nobody, so a
                        // busy server pays one wake-up per batch of lines instead of one per
                        // line. A line waits at most this long.
                        std::thread::sleep(LOG_BATCH_PAUSE);
                    }
                    let n = lost.swap(0, std::sync::atomic::Ordering::Relaxed);
                    if n > 0 {
                        let note = Dropped(n);
                        let now = SystemTime::now();
                        let _ = if json {
                            writeln!(out, "{}", json_line(now, &note))
                        } else {
                            writeln!(out, "{} {note}", utc_timestamp(now))
                        };
                    }
                }
            });
        if spawned.is_err() {
            // Without a log thread lines are counted as dropped; serving goes on.
            dropped.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        Self {
            tx,
            dropped,
            dropped_total: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn line(&self, line: ToStdout) {
        if self.tx.try_send(line).is_err() {
            self.dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.dropped_total
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

static WRITER: std::sync::OnceLock<StdoutWriter> = std::sync::OnceLock::new();

fn stdout_writer() -> &'static StdoutWriter {
    WRITER.get_or_init(StdoutWriter::start)
}

/// Log lines dropped so far because stdout did not keep up (`hb_log_lines_dropped_total`);
/// 0 before anything was logged to stdout (asking does not start the log thread).
pub fn log_lines_dropped() -> u64 {
    WRITER.get().map_or(0, |w| {
        w.dropped_total.load(std::sync::atomic::Ordering::Relaxed)
    })
}

/// Waits (at most `within`) until every line logged so far has been written to stdout; call
/// before exiting so the last lines (`shutting down`, the final `END`s) are not lost.
pub fn flush_stdout(within: std::time::Duration) {
    let (done, wait) = crossbeam_channel::bounded(1);
    if stdout_writer()
        .tx
        .send_timeout(ToStdout::Flush(done), within)
        .is_ok()
    {
        let _ = wait.recv_timeout(within);
    }
}

/// `2026-11-21T22:10:46.123Z` for a wall-clock time (UTC, millisecond precision).
pub fn utc_timestamp(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// A duration as milliseconds with one decimal (`2.1`), rounded half up, in integers: the
/// float formatting of `{:.1}` cost a heartbeat's log line more than the rest of it.
struct TenthsMs(Duration);

impl fmt::Display for TenthsMs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tenths = (self.0.as_micros() + 50) / 100;
        write!(f, "{}.{}", tenths / 10, tenths % 10)
    }
}

/// Writes [`utc_timestamp`]s without allocating, formatting the date and time of day once
/// per second: at thousands of lines a second (three per heartbeat round) the log thread
/// spent more on its timestamps than on the lines.
struct Stamps {
    /// The second `prefix` holds (`u64::MAX`: none yet).
    secs: u64,
    /// `YYYY-MM-DDTHH:MM:SS` of that second.
    prefix: String,
}

impl Default for Stamps {
    fn default() -> Self {
        Self {
            secs: u64::MAX,
            prefix: String::new(),
        }
    }
}

impl Stamps {
    fn write(&mut self, out: &mut impl Write, t: SystemTime) -> std::io::Result<()> {
        let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
        if d.as_secs() != self.secs {
            self.secs = d.as_secs();
            let mut full = utc_timestamp(t);
            full.truncate(full.len() - ".000Z".len());
            self.prefix = full;
        }
        let ms = d.subsec_millis();
        let digit = |n: u32| b'0' + (n % 10) as u8;
        out.write_all(self.prefix.as_bytes())?;
        out.write_all(&[b'.', digit(ms / 100), digit(ms / 10), digit(ms), b'Z'])
    }
}

/// Days since 1970-01-01 to (year, month, day), after Howard Hinnant's public-domain algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_show_tenths_of_a_millisecond() {
        let ms = |us| TenthsMs(Duration::from_micros(us)).to_string();
        assert_eq!(ms(0), "0.0");
        assert_eq!(ms(2_049), "2.0");
        assert_eq!(ms(2_050), "2.1");
        assert_eq!(ms(100_160), "100.2");
        assert_eq!(ms(12_345_678), "12345.7");
    }

    #[test]
    fn cached_stamps_match_the_formatted_ones() {
        let mut stamps = Stamps::default();
        let base = UNIX_EPOCH + Duration::from_millis(1_795_298_445_990);
        for step_ms in [0, 5, 9, 10, 11, 999, 1_000, 86_400_000, 86_400_007] {
            let t = base + Duration::from_millis(step_ms);
            let mut out = Vec::new();
            stamps.write(&mut out, t).unwrap();
            assert_eq!(String::from_utf8(out).unwrap(), utc_timestamp(t));
        }
    }

    #[test]
    fn timestamps_are_utc_iso8601() {
        assert_eq!(utc_timestamp(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_795_298_446_123);
        assert_eq!(utc_timestamp(t), "2026-11-21T22:00:46.123Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(utc_timestamp(leap), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn the_listening_line_names_mode_and_wire_and_ends_with_the_address() {
        let addr: SocketAddr = "127.0.0.1:9000".parse().unwrap();
        let line = |mode, wire| Event::Listening { addr, mode, wire }.to_string();
        assert_eq!(
            line(Mode::Chat, Wire::Line),
            "mode chat, wire line, listening on 127.0.0.1:9000"
        );
        assert_eq!(
            line(Mode::Echo, Wire::Classic),
            "mode echo, wire classic, listening on 127.0.0.1:9000"
        );
    }
}
