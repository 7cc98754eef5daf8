//! The Redis side of the cluster (issue 14, docs/CLUSTER.md): a [`Link`] runs the
//! [`BusCommand`]s a [`crate::core::cluster::ClusterNode`] takes out, and reports what Redis
//! said as [`LinkReport`]s, each of which maps onto one `ClusterNode::handle_*` call.
//!
//! The link decides nothing about the protocol (that is the node's business); it owns the
//! two Redis connections, the Lua scripts and the reconnect loop:
//!
//! * one thread (the *command thread*) owns the command connection: it connects, runs the
//!   commands in the order they were sent, and supervises the session; every call on it has
//!   a read and write timeout of a third of `node_timeout`, so a stuck Redis is noticed
//!   before the node's own key expires;
//! * one thread per session (the *subscriber*) owns the connection `SUBSCRIBE`d to the bus
//!   channel; it reads with a 100 ms timeout so it notices the end of its session.
//!
//! Any error on either connection ends the session: `Down` is reported once per outage, both
//! connections are dropped, and the command thread reconnects after a [`Backoff`] delay
//! (100 ms to 5 s, full jitter). Commands sent while the link is down are dropped: the node
//! drops its own queue at `handle_link_down` and re-syncs at `handle_link_up`.
//!
//! A session comes `Up` only once both connections are open and the subscription is
//! confirmed, and the subscriber forwards nothing before `Up` is in the report channel: so
//! the node hears `Up` (with the stream's last offset) before any bus message, and no
//! message published after that offset is missed.
//!
//! [`Link::bounce`] ends a session on purpose (the engine's answer to
//! `ClusterEvent::Evicted`: the node must come back under a fresh id).
//!
//! Both channels are bounded. When the report channel is full the subscriber stops reading
//! its socket (backpressure into Redis; if Redis drops the subscriber for it, that is a
//! Down/Up and the node reads the hole from the stream), and the command thread waits too.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, select, Receiver, RecvTimeoutError, SendTimeoutError, Sender};
use redis::{Connection, Value};

use crate::core::client::Backoff;
use crate::core::cluster::{BusCommand, BusMsg, ClaimPurpose, NodeId};
use crate::core::room::MemberId;
use crate::core::wire::{Epoch, Pos};

/// Commands waiting for the link, at most.
pub const COMMAND_QUEUE: usize = 4096;

/// Reports waiting for the engine, at most.
pub const REPORT_QUEUE: usize = 16384;

/// Stream entries read by one `XRANGE` call.
pub const XRANGE_PAGE: usize = 1000;

/// Names refreshed by one script call (a node with more members makes several calls).
pub const REFRESH_CHUNK: usize = 1000;

/// Node heartbeats read by one poll (the sorted set only holds live and not yet reaped ids;
/// the bound keeps a polluted set from flooding the node).
pub const MAX_POLLED_NODES: isize = 10_000;

/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// The subscriber's read timeout: how soon it notices the end of its session.
const SUB_POLL: Duration = Duration::from_millis(100);

/// How long a blocked report push waits before it checks for the end of the session again.
const PUSH_POLL: Duration = Duration::from_millis(50);

/// Reconnect delays (CLUSTER.md, Outage and re-sync).
const BACKOFF_BASE: Duration = Duration::from_millis(100);
const BACKOFF_CAP: Duration = Duration::from_secs(5);

/// Most room messages appended in one pipeline (see `Worker::run_batch`).
pub const APPEND_BATCH: usize = 128;

/// How long [`Link::shutdown`] waits for the threads before it leaves them to finish alone.
const SHUTDOWN_WAIT: Duration = Duration::from_millis(150);

/// What the link saw; each maps onto one `ClusterNode::handle_*` call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkReport {
    /// Both connections are open and subscribed; the stream stands at `stream`
    /// (`handle_link_up(now, stream, fresh_id)`).
    Up {
        /// The stream's epoch (created with `SET NX` if missing) and last offset.
        stream: Pos,
        /// A new random id, for the node to take if its key may have expired.
        fresh_id: NodeId,
    },
    /// The link is down (`handle_link_down`), once per outage; `error` says why (for the
    /// engine's log line).
    Down {
        /// What failed.
        error: String,
    },
    /// A bus message, from the subscription or read from the stream (`handle_bus`).
    Bus(BusMsg),
    /// Stream offsets before `first` were trimmed away (`handle_stream_trimmed`).
    Trimmed {
        /// The first offset the stream still has (or one past what was asked for).
        first: u64,
    },
    /// Node `node` refreshed its heartbeat `age` ago by Redis's clock: the engine calls
    /// `handle_node_seen(now - age, node)`.
    NodeSeen {
        /// How long ago.
        age: Duration,
        /// The node.
        node: NodeId,
    },
    /// The answer to a `ClaimName` (`handle_claim`).
    Claim {
        /// The member's connection.
        conn: MemberId,
        /// The name.
        name: String,
        /// Won (or already ours).
        won: bool,
    },
    /// The answer to a `TryReap` (`handle_reap`).
    Reap {
        /// The lost node.
        node: NodeId,
        /// This node holds the reaper lock.
        won: bool,
    },
    /// A bus payload `BusMsg::decode` refused (the engine counts and logs it).
    BadMessage(String),
}

/// Why a link could not be started.
#[derive(Debug)]
pub enum BrokerError {
    /// The broker URL is not `redis://HOST:PORT[/DB]` or `redis+unix:///PATH`.
    BadUrl(String),
    /// The room's key prefix is empty or has a space or a line break in it.
    BadRoom(String),
    /// The OS refused a thread.
    Spawn(std::io::Error),
}

impl std::fmt::Display for BrokerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::BadUrl(why) => write!(f, "bad broker URL: {why}"),
            Self::BadRoom(why) => write!(f, "bad room key prefix: {why}"),
            Self::Spawn(e) => write!(f, "cannot start the broker link thread: {e}"),
        }
    }
}

impl std::error::Error for BrokerError {}

/// The command channel is full (or the link is gone): the command comes back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkFull(pub BusCommand);

impl std::fmt::Display for LinkFull {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "broker link queue full ({COMMAND_QUEUE} commands)")
    }
}

impl std::error::Error for LinkFull {}

/// Checks a broker URL and builds the client for it (no I/O: nothing is connected).
fn parse_url(url: &str) -> Result<redis::Client, BrokerError> {
    // The password never reaches a message (redact_url); nor does a terminal escape.
    let shown =
        || crate::core::wire::printable(crate::config::server::redact_url(url).as_bytes(), 80);
    // The contract's two forms and TLS; the crate would also take `valkey://` and `unix://`
    // forms this build does not promise to serve.
    if !["redis://", "rediss://", "redis+unix://"]
        .iter()
        .any(|p| url.starts_with(p))
    {
        return Err(BrokerError::BadUrl(format!(
            "'{}': expected redis://HOST:PORT[/DB], rediss://HOST:PORT[/DB] or \
             redis+unix:///PATH",
            shown()
        )));
    }
    // `rediss://...#insecure` would turn certificate checks off: a server's private CA is
    // trusted with SSL_CERT_FILE instead.
    if url.starts_with("rediss://") && url.contains('#') {
        return Err(BrokerError::BadUrl(format!(
            "'{}': a rediss:// URL takes no #fragment (certificates are always checked; \
             trust a private CA with SSL_CERT_FILE=PEM)",
            shown()
        )));
    }
    redis::Client::open(url).map_err(|e| BrokerError::BadUrl(format!("'{}': {e}", shown())))
}

/// `n` random characters `[0-9a-z]` (epochs and node ids).
fn random_base36(n: usize) -> String {
    let mut out = String::with_capacity(n);
    while out.len() < n {
        // 36^12 < 2^64: twelve digits per draw are uniform enough for ids.
        let mut v = crate::net::os_random();
        for _ in 0..12.min(n - out.len()) {
            out.push(char::from_digit((v % 36) as u32, 36).unwrap_or('0'));
            v /= 36;
        }
    }
    out
}

/// The room's keys (docs/CLUSTER.md, Redis data model).
#[derive(Debug, Clone)]
struct Keys {
    prefix: String,
    epoch: String,
    off: String,
    stream: String,
    bus: String,
    nodes: String,
}

impl Keys {
    fn new(prefix: &str) -> Self {
        let k = |s: &str| format!("{prefix}:{s}");
        Self {
            prefix: prefix.to_owned(),
            epoch: k("epoch"),
            off: k("off"),
            stream: k("stream"),
            bus: k("bus"),
            nodes: k("nodes"),
        }
    }

    fn of(&self, kind: &str, id: &str) -> String {
        format!("{}:{kind}:{id}", self.prefix)
    }
}

/// The room-message JSON split around its offset: `head` ends with `"off":`, `tail` starts
/// with the `,` after it. The append script learns the offset only inside Redis and writes
/// `head .. OFF .. tail`, which is byte for byte `BusMsg::encode` with that offset (unit
/// tested), so the JSON is built in one place.
fn split_at_offset(msg: &BusMsg) -> Option<(String, String)> {
    let json = BusMsg {
        offset: Some(0),
        ..msg.clone()
    }
    .encode();
    // The fields before `kind` are the version, the node id ([0-9a-z]) and the seq (digits),
    // so the first match is the field itself, never text from the message.
    const MARK: &str = "\"off\":0,\"kind\":";
    let at = json.find(MARK)?;
    let head_end = at + "\"off\":".len();
    Some((json[..head_end].to_owned(), json[head_end + 1..].to_owned()))
}

/// KEYS epoch, off, stream, seq:NODE, bus; ARGV epoch, seq, head, tail, maxlen, seq ttl ms.
/// Returns {1, off} stored, {0} seq already stored, {-1, epoch} the epoch changed.
const APPEND_LUA: &str = r"
local e = redis.call('GET', KEYS[1])
if e ~= ARGV[1] then return {-1, e or ''} end
local last = tonumber(redis.call('GET', KEYS[4]) or '0') or 0
if tonumber(ARGV[2]) <= last then return {0} end
local off = redis.call('INCR', KEYS[2])
local m = ARGV[3] .. string.format('%d', off) .. ARGV[4]
if tonumber(ARGV[5]) > 0 then
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[5], '0-' .. string.format('%d', off), 'm', m)
end
redis.call('SET', KEYS[4], ARGV[2], 'PX', ARGV[6])
redis.call('PUBLISH', KEYS[5], m)
return {1, off}
";

/// The append script for several room messages of one node in one call (the Lua call's
/// own cost, not the commands inside, was most of Redis's CPU per message): KEYS as
/// [`APPEND_LUA`]; ARGV epoch, maxlen, seq ttl ms, then (seq, head, tail) per message in
/// seq order. Each message as [`APPEND_LUA`] would; returns {1, stored} or {-1, epoch}.
const APPEND_MANY_LUA: &str = r"
local e = redis.call('GET', KEYS[1])
if e ~= ARGV[1] then return {-1, e or ''} end
local last = tonumber(redis.call('GET', KEYS[4]) or '0') or 0
local maxlen = tonumber(ARGV[2])
local stored = 0
for i = 4, #ARGV, 3 do
  local seq = tonumber(ARGV[i])
  if seq > last then
    local off = redis.call('INCR', KEYS[2])
    local m = ARGV[i + 1] .. string.format('%d', off) .. ARGV[i + 2]
    if maxlen > 0 then
      redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[2], '0-' .. string.format('%d', off), 'm', m)
    end
    redis.call('PUBLISH', KEYS[5], m)
    last = seq
    stored = stored + 1
  end
end
if stored > 0 then redis.call('SET', KEYS[4], string.format('%d', last), 'PX', ARGV[3]) end
return {1, stored}
";

/// KEYS node:NODE, nodes; ARGV node, ttl ms. The heartbeat is dated by Redis's clock.
const REFRESH_NODE_LUA: &str = r"
redis.call('SET', KEYS[1], '1', 'PX', ARGV[2])
local t = redis.call('TIME')
redis.call('ZADD', KEYS[2], tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000), ARGV[1])
return 1
";

/// KEYS nodes; ARGV max entries. Returns {now ms, {id, score, ...}} by Redis's clock.
const POLL_NODES_LUA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return {now, redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1, 'WITHSCORES')}
";

/// KEYS name:NAME; ARGV "NODE CONN", ttl ms, the member's resume token ("-": none), the
/// token presented for a takeover ("": not one). The claim's value is "NODE CONN TOKEN".
/// 1: won, the name was free or already this node's (it may have moved to another local
/// connection since, as the refresh and release scripts also look at the node alone);
/// 2: taken over, its holder's claim carried the presented token; 0: lost.
const CLAIM_LUA: &str = r"
local v = redis.call('GET', KEYS[1])
local value = ARGV[1] .. ' ' .. ARGV[3]
if not v then
  redis.call('SET', KEYS[1], value, 'PX', ARGV[2])
  return 1
end
local node = string.match(ARGV[1], '^%S+')
if v == node or string.sub(v, 1, #node + 1) == node .. ' ' then
  redis.call('SET', KEYS[1], value, 'PX', ARGV[2])
  return 1
end
if ARGV[4] ~= '' and string.match(v, '^%S+ %S+ (%S+)$') == ARGV[4] then
  redis.call('SET', KEYS[1], value, 'PX', ARGV[2])
  return 2
end
return 0
";

/// KEYS name:NAME...; ARGV "NODE ", ttl ms. Renews the claims this node still holds.
const REFRESH_NAMES_LUA: &str = r"
local n = 0
for i, k in ipairs(KEYS) do
  local v = redis.call('GET', k)
  if v and string.sub(v, 1, #ARGV[1]) == ARGV[1] then
    redis.call('PEXPIRE', k, ARGV[2])
    n = n + 1
  end
end
return n
";

/// KEYS name:NAME; ARGV "OWNER ". Deletes the claim only if that node still holds it.
const RELEASE_LUA: &str = r"
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, #ARGV[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// The scripts, hashed once (EVALSHA, with EVAL when Redis does not know them yet).
struct Scripts {
    append: redis::Script,
    append_many: redis::Script,
    refresh_node: redis::Script,
    poll_nodes: redis::Script,
    claim: redis::Script,
    refresh_names: redis::Script,
    release: redis::Script,
}

impl Scripts {
    fn new() -> Self {
        Self {
            append: redis::Script::new(APPEND_LUA),
            append_many: redis::Script::new(APPEND_MANY_LUA),
            refresh_node: redis::Script::new(REFRESH_NODE_LUA),
            poll_nodes: redis::Script::new(POLL_NODES_LUA),
            claim: redis::Script::new(CLAIM_LUA),
            refresh_names: redis::Script::new(REFRESH_NAMES_LUA),
            release: redis::Script::new(RELEASE_LUA),
        }
    }
}

/// A connection to the bus in another thread: see the module docs.
pub struct Link {
    commands: Sender<BusCommand>,
    /// Asks the command thread to end the session and reconnect.
    bounce: Sender<()>,
    reports: Receiver<LinkReport>,
    /// Dropped to stop the threads (a closed channel wakes every `select!` at once).
    stop: Option<Sender<()>>,
    /// Closed when the command thread has returned.
    done: Receiver<()>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("commands", &self.commands.len())
            .field("reports", &self.reports.len())
            .finish()
    }
}

impl Link {
    /// Parses `url` (`redis://HOST:PORT[/DB]` or `redis+unix:///PATH`), starts the link's
    /// thread and returns at once: Redis may be down, then the first report is `Down` and the
    /// link keeps reconnecting. `room` is the key prefix with its hash tag (`hb:{hb:room}`),
    /// `node_timeout` the node's (command timeouts are a third of it), `history` the stream's
    /// length (`MAXLEN ~`; 0 stores no entries), and `wake` is called after reports are
    /// pushed (the engine then drains [`Link::try_recv`]).
    pub fn start(
        url: &str,
        room: &str,
        node_timeout: Duration,
        history: usize,
        wake: Arc<dyn Fn() + Send + Sync>,
    ) -> Result<Link, BrokerError> {
        let client = parse_url(url)?;
        if room.is_empty() || room.contains([' ', '\n', '\r']) {
            return Err(BrokerError::BadRoom(format!(
                "'{}'",
                crate::core::wire::printable(room.as_bytes(), 80)
            )));
        }
        let (cmd_tx, cmd_rx) = bounded(COMMAND_QUEUE);
        let (rep_tx, rep_rx) = bounded(REPORT_QUEUE);
        let (stop_tx, stop_rx) = bounded::<()>(0);
        let (done_tx, done_rx) = bounded::<()>(0);
        let (bounce_tx, bounce_rx) = bounded::<()>(1);
        let op_timeout = (node_timeout / 3).max(Duration::from_millis(10));
        let worker = Worker {
            client,
            keys: Keys::new(room),
            op_timeout,
            seq_ttl: node_timeout
                .saturating_mul(10)
                .max(Duration::from_millis(1)),
            history,
            commands: cmd_rx,
            bounce: bounce_rx,
            out: Out {
                reports: rep_tx,
                wake,
                stop: stop_rx,
            },
            scripts: Scripts::new(),
            me: None,
        };
        thread::Builder::new()
            .name("hb-broker".into())
            .spawn(move || {
                let _done = done_tx;
                worker.run();
            })
            .map_err(BrokerError::Spawn)?;
        Ok(Link {
            commands: cmd_tx,
            bounce: bounce_tx,
            reports: rep_rx,
            stop: Some(stop_tx),
            done: done_rx,
        })
    }

    /// Queues a command for the link; never blocks (the command comes back when the queue
    /// is full).
    pub fn send(&self, cmd: BusCommand) -> Result<(), LinkFull> {
        self.commands
            .try_send(cmd)
            .map_err(|e| LinkFull(e.into_inner()))
    }

    /// Ends the current session as if it failed: `Down`, then `Up` again after the backoff
    /// delay (with a fresh id). For `ClusterEvent::Evicted` (the others declared this node
    /// lost, so it must come back under a new id) and for a driver whose commands pile up
    /// behind a link that cannot keep up. Never blocks; a bounce already asked for
    /// and not yet done counts for this one.
    pub fn bounce(&self) {
        let _ = self.bounce.try_send(());
    }

    /// The next report, if any; never blocks.
    pub fn try_recv(&self) -> Option<LinkReport> {
        self.reports.try_recv().ok()
    }

    /// Stops the link: returns within about 150 ms whatever Redis does (a thread blocked in
    /// a Redis call finishes alone when its timeout fires, and reports nothing more).
    pub fn shutdown(mut self) {
        self.stop.take();
        let _ = self.done.recv_timeout(SHUTDOWN_WAIT);
    }
}

/// Where reports go, and the signal that ends everything.
#[derive(Clone)]
struct Out {
    reports: Sender<LinkReport>,
    wake: Arc<dyn Fn() + Send + Sync>,
    stop: Receiver<()>,
}

impl Out {
    fn stopped(&self) -> bool {
        matches!(
            self.stop.try_recv(),
            Err(crossbeam_channel::TryRecvError::Disconnected)
        )
    }

    /// Pushes a report, waiting while the channel is full (backpressure) until `ended`
    /// says the session is over or the link stops. False when it was not pushed.
    fn push(&self, mut r: LinkReport, ended: &AtomicBool) -> bool {
        loop {
            if ended.load(Ordering::Acquire) || self.stopped() {
                return false;
            }
            match self.reports.send_timeout(r, PUSH_POLL) {
                Ok(()) => {
                    (self.wake)();
                    return true;
                }
                Err(SendTimeoutError::Timeout(back)) => r = back,
                Err(SendTimeoutError::Disconnected(_)) => return false,
            }
        }
    }
}

/// Why a session ended.
enum End {
    /// The link is shutting down.
    Stop,
    /// Redis failed or answered something unusable: report `Down`.
    Failed(String),
}

impl From<redis::RedisError> for End {
    fn from(e: redis::RedisError) -> Self {
        End::Failed(format!("redis: {e}"))
    }
}

/// One connected session: the subscriber thread's handles.
struct Session {
    con: Connection,
    /// The stream's epoch as of `Up` (the append script checks it).
    epoch: String,
    /// Set to end the subscriber.
    ended: Arc<AtomicBool>,
    /// The subscriber's error, if it failed.
    sub_err: Receiver<String>,
    /// Closed when the subscriber has returned.
    sub_done: Receiver<()>,
}

/// The command thread's state.
struct Worker {
    client: redis::Client,
    keys: Keys,
    op_timeout: Duration,
    seq_ttl: Duration,
    history: usize,
    commands: Receiver<BusCommand>,
    bounce: Receiver<()>,
    out: Out,
    scripts: Scripts,
    /// This node's id as last seen in a command (the reaper lock's value says who holds it).
    me: Option<NodeId>,
}

impl Worker {
    fn run(mut self) {
        let mut backoff = Backoff::new(BACKOFF_BASE, BACKOFF_CAP);
        // Down is reported once per outage: at the first failure after an Up, or at start.
        let mut down_reported = false;
        // Reports outside a session are never cut short by a session's end.
        let never = AtomicBool::new(false);
        loop {
            let end = match self.connect() {
                Ok(mut s) => {
                    down_reported = false;
                    backoff.reset();
                    let end = self.serve(&mut s);
                    self.close(s);
                    end
                }
                Err(end) => end,
            };
            let error = match end {
                End::Stop => return,
                End::Failed(e) => e,
            };
            if !down_reported {
                down_reported = true;
                if !self.out.push(LinkReport::Down { error }, &never) {
                    return;
                }
            }
            let until = Instant::now() + backoff.next_delay(crate::net::os_random());
            if !self.idle_until(until) {
                return;
            }
        }
    }

    /// Waits until `until`, dropping the commands sent meanwhile (the node drops its own
    /// queue at link down and re-syncs at link up). False when the link stops.
    fn idle_until(&self, until: Instant) -> bool {
        loop {
            select! {
                recv(self.out.stop) -> _ => return false,
                recv(self.commands) -> c => if c.is_err() { return false },
                default(until.saturating_duration_since(Instant::now())) => return true,
            }
        }
    }

    /// Opens both connections, subscribes, reads the stream's position and reports `Up`.
    fn connect(&mut self) -> Result<Session, End> {
        let con = self.client.get_connection_with_timeout(CONNECT_TIMEOUT)?;
        con.set_read_timeout(Some(self.op_timeout))?;
        con.set_write_timeout(Some(self.op_timeout))?;
        let sub = self.client.get_connection_with_timeout(CONNECT_TIMEOUT)?;
        sub.set_write_timeout(Some(self.op_timeout))?;
        sub.set_read_timeout(Some(self.op_timeout))?;
        let ended = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = bounded::<Result<(), String>>(1);
        let (go_tx, go_rx) = bounded::<()>(1);
        let (err_tx, err_rx) = bounded::<String>(1);
        let (done_tx, done_rx) = bounded::<()>(0);
        let subscriber = Subscriber {
            bus: self.keys.bus.clone(),
            out: self.out.clone(),
            ended: Arc::clone(&ended),
        };
        thread::Builder::new()
            .name("hb-broker-sub".into())
            .spawn(move || {
                let _done = done_tx;
                subscriber.run(sub, ready_tx, go_rx, err_tx);
            })
            .map_err(|e| End::Failed(format!("cannot start the subscriber: {e}")))?;
        // From here on a failure must end the subscriber too.
        let mut session = Session {
            con,
            epoch: String::new(),
            ended,
            sub_err: err_rx,
            sub_done: done_rx,
        };
        match self.come_up(&mut session, &ready_rx, go_tx) {
            Ok(()) => Ok(session),
            Err(end) => {
                self.close(session);
                Err(end)
            }
        }
    }

    /// The second half of [`Worker::connect`]: waits for the subscription, then reads (or
    /// creates) the epoch and the last offset, reports `Up` and lets the subscriber forward.
    fn come_up(
        &mut self,
        s: &mut Session,
        ready: &Receiver<Result<(), String>>,
        go: Sender<()>,
    ) -> Result<(), End> {
        let wait = self.op_timeout + CONNECT_TIMEOUT;
        select! {
            recv(self.out.stop) -> _ => return Err(End::Stop),
            recv(ready) -> r => match r {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(End::Failed(e)),
                Err(_) => return Err(End::Failed("subscriber ended".into())),
            },
            default(wait) => return Err(End::Failed("subscribe timed out".into())),
        }
        let got: Result<(Option<String>, Option<String>), _> = redis::pipe()
            .cmd("SET")
            .arg(&self.keys.epoch)
            .arg(random_base36(16))
            .arg("NX")
            .ignore()
            .cmd("GET")
            .arg(&self.keys.epoch)
            .cmd("GET")
            .arg(&self.keys.off)
            .query(&mut s.con);
        let (epoch, off) = got?;
        let Some(epoch) = epoch.as_deref().and_then(Epoch::new) else {
            return Err(End::Failed(format!("bad epoch in Redis: {epoch:?}")));
        };
        let offset = match off.as_deref().map(str::parse::<u64>) {
            None => 0,
            Some(Ok(o)) => o,
            Some(Err(_)) => return Err(End::Failed(format!("bad offset in Redis: {off:?}"))),
        };
        let Some(fresh_id) = NodeId::new(&random_base36(16)) else {
            return Err(End::Failed("bad random node id".into()));
        };
        s.epoch = epoch.as_str().to_owned();
        // Commands sent before the engine heard the last Down belong to the old session
        // (the node drops its queue at link down and re-syncs at link up): drop them.
        while self.commands.try_recv().is_ok() {}
        // Outside a session's end: Up must be in the channel before any bus message.
        let up = LinkReport::Up {
            stream: Pos { epoch, offset },
            fresh_id,
        };
        if !self.out.push(up, &AtomicBool::new(false)) {
            return Err(End::Stop);
        }
        let _ = go.send(());
        Ok(())
    }

    /// Runs commands until the session fails or the link stops.
    fn serve(&mut self, s: &mut Session) -> End {
        loop {
            select! {
                recv(self.out.stop) -> _ => return End::Stop,
                recv(self.bounce) -> _ => return End::Failed("reconnecting as asked (evicted, or too far behind)".into()),
                recv(s.sub_err) -> e => {
                    return End::Failed(e.unwrap_or_else(|_| "subscriber ended".into()));
                }
                recv(self.commands) -> c => {
                    let Ok(cmd) = c else { return End::Stop };
                    if let Err(end) = self.run_batch(s, cmd) {
                        return end;
                    }
                }
            }
        }
    }

    /// Ends the session: stops the subscriber and waits until it has returned (it reads
    /// with a short timeout), so nothing of this session is reported after its `Down`.
    fn close(&self, s: Session) {
        s.ended.store(true, Ordering::Release);
        drop(s.con);
        loop {
            match s.sub_done.recv_timeout(PUSH_POLL) {
                Err(RecvTimeoutError::Timeout) if !self.out.stopped() => {}
                _ => return,
            }
        }
    }

    fn push(&self, s: &Session, r: LinkReport) -> Result<(), End> {
        if self.out.push(r, &s.ended) {
            Ok(())
        } else {
            Err(End::Stop)
        }
    }

    /// Runs `first` and the commands queued right behind it: consecutive room messages go
    /// to Redis as one pipeline of append scripts (one round trip for up to
    /// [`APPEND_BATCH`] messages instead of one each, which bounded a node at about one
    /// message per round trip); anything else runs alone, in order.
    fn run_batch(&mut self, s: &mut Session, first: BusCommand) -> Result<(), End> {
        let mut next = Some(first);
        while let Some(cmd) = next.take() {
            let msg = match cmd {
                BusCommand::Publish(msg) if msg.body.is_stream() => msg,
                other => {
                    self.run_command(s, other)?;
                    continue;
                }
            };
            let mut batch = vec![msg];
            while batch.len() < APPEND_BATCH {
                match self.commands.try_recv() {
                    Ok(BusCommand::Publish(m)) if m.body.is_stream() => batch.push(m),
                    Ok(other) => {
                        next = Some(other);
                        break;
                    }
                    Err(_) => break,
                }
            }
            self.append_batch(s, &batch)?;
        }
        Ok(())
    }

    /// [`Worker::append`] for several messages: one script call per run of messages from
    /// one node (always, but for the messages of a node id given up at a renewal), which
    /// stores and publishes them in order.
    fn append_batch(&mut self, s: &mut Session, batch: &[BusMsg]) -> Result<(), End> {
        if let [one] = batch {
            return self.append(s, one);
        }
        for run in batch.chunk_by(|a, b| a.node == b.node) {
            let node = &run[0].node;
            let mut inv = self.scripts.append_many.prepare_invoke();
            inv.key(&self.keys.epoch)
                .key(&self.keys.off)
                .key(&self.keys.stream)
                .key(self.keys.of("seq", node.as_str()))
                .key(&self.keys.bus)
                .arg(&s.epoch)
                .arg(self.history)
                .arg(millis(self.seq_ttl));
            for msg in run {
                let Some((head, tail)) = split_at_offset(msg) else {
                    return self.push(s, LinkReport::BadMessage("unsplittable message".into()));
                };
                inv.arg(msg.seq).arg(head).arg(tail);
            }
            let got: Value = inv.invoke(&mut s.con)?;
            append_answer(got)?;
        }
        Ok(())
    }

    fn run_command(&mut self, s: &mut Session, cmd: BusCommand) -> Result<(), End> {
        match cmd {
            BusCommand::Publish(msg) if msg.body.is_stream() => self.append(s, &msg),
            BusCommand::Publish(msg) => {
                redis::cmd("PUBLISH")
                    .arg(&self.keys.bus)
                    .arg(msg.encode())
                    .exec(&mut s.con)?;
                Ok(())
            }
            BusCommand::RefreshNode { node, ttl } => {
                self.scripts
                    .refresh_node
                    .key(self.keys.of("node", node.as_str()))
                    .key(&self.keys.nodes)
                    .arg(node.as_str())
                    .arg(millis(ttl))
                    .invoke::<()>(&mut s.con)?;
                self.me = Some(node);
                Ok(())
            }
            BusCommand::PollNodes => self.poll_nodes(s),
            BusCommand::ReadStream { after, upto } => self.read_stream(s, after, upto),
            BusCommand::ClaimName {
                name,
                conn,
                node,
                ttl,
                token,
                purpose,
            } => {
                let presented = match (purpose, &token) {
                    (ClaimPurpose::TakeOver, Some(t)) => t.as_str(),
                    _ => "",
                };
                let won: i64 = self
                    .scripts
                    .claim
                    .key(self.keys.of("name", &name))
                    .arg(format!("{node} {conn}"))
                    .arg(millis(ttl))
                    .arg(token.as_deref().unwrap_or("-"))
                    .arg(presented)
                    .invoke(&mut s.con)?;
                self.push(
                    s,
                    LinkReport::Claim {
                        conn,
                        name,
                        won: won != 0,
                    },
                )
            }
            BusCommand::RefreshNames { node, names, ttl } => {
                for chunk in names.chunks(REFRESH_CHUNK) {
                    let mut inv = self.scripts.refresh_names.prepare_invoke();
                    for name in chunk {
                        inv.key(self.keys.of("name", name));
                    }
                    inv.arg(format!("{node} "))
                        .arg(millis(ttl))
                        .invoke::<()>(&mut s.con)?;
                }
                Ok(())
            }
            BusCommand::ReleaseName { name, owner } => {
                self.scripts
                    .release
                    .key(self.keys.of("name", &name))
                    .arg(format!("{owner} "))
                    .invoke::<()>(&mut s.con)?;
                Ok(())
            }
            BusCommand::TryReap { node, ttl } => {
                let me = self.me.as_ref().map_or("?", NodeId::as_str);
                let set: Option<String> = redis::cmd("SET")
                    .arg(self.keys.of("reap", node.as_str()))
                    .arg(me)
                    .arg("NX")
                    .arg("PX")
                    .arg(millis(ttl))
                    .query(&mut s.con)?;
                let won = set.is_some();
                if won {
                    // A lost id is never accepted again, so its heartbeat can go at once.
                    redis::cmd("ZREM")
                        .arg(&self.keys.nodes)
                        .arg(node.as_str())
                        .exec(&mut s.con)?;
                }
                self.push(s, LinkReport::Reap { node, won })
            }
        }
    }

    /// The append script (docs/CLUSTER.md, Fan-out): offset, stream, publish, in one step.
    fn append(&mut self, s: &mut Session, msg: &BusMsg) -> Result<(), End> {
        let Some((head, tail)) = split_at_offset(msg) else {
            // Cannot happen (the encoder writes `off` before `kind`); a unit test checks it.
            return self.push(s, LinkReport::BadMessage("unsplittable message".into()));
        };
        let got: Value = self
            .scripts
            .append
            .key(&self.keys.epoch)
            .key(&self.keys.off)
            .key(&self.keys.stream)
            .key(self.keys.of("seq", msg.node.as_str()))
            .key(&self.keys.bus)
            .arg(&s.epoch)
            .arg(msg.seq)
            .arg(head)
            .arg(tail)
            .arg(self.history)
            .arg(millis(self.seq_ttl))
            .invoke(&mut s.con)?;
        append_answer(got)
    }

    fn poll_nodes(&mut self, s: &mut Session) -> Result<(), End> {
        let (now, entries): (u64, Vec<(String, f64)>) = self
            .scripts
            .poll_nodes
            .key(&self.keys.nodes)
            .arg(MAX_POLLED_NODES)
            .invoke(&mut s.con)?;
        for (id, score) in entries {
            let Some(node) = NodeId::new(&id) else {
                continue;
            };
            let at = if score.is_finite() && score > 0.0 {
                score as u64
            } else {
                0
            };
            let age = Duration::from_millis(now.saturating_sub(at));
            self.push(s, LinkReport::NodeSeen { age, node })?;
        }
        Ok(())
    }

    /// `XRANGE` in pages; offsets missing at the start are reported `Trimmed` first.
    fn read_stream(&mut self, s: &mut Session, after: u64, upto: u64) -> Result<(), End> {
        let mut from = after.saturating_add(1);
        let mut first_page = true;
        while from <= upto {
            let page: Value = redis::cmd("XRANGE")
                .arg(&self.keys.stream)
                .arg(format!("0-{from}"))
                .arg(format!("0-{upto}"))
                .arg("COUNT")
                .arg(XRANGE_PAGE)
                .query(&mut s.con)?;
            let entries = match page {
                Value::Array(e) => e,
                Value::Nil => Vec::new(),
                other => return Err(End::Failed(format!("XRANGE answered {other:?}"))),
            };
            let parsed: Vec<(u64, Option<Vec<u8>>)> =
                entries.iter().filter_map(stream_entry).collect();
            if first_page {
                first_page = false;
                let first = parsed.first().map_or(upto.saturating_add(1), |e| e.0);
                if first > from {
                    self.push(s, LinkReport::Trimmed { first })?;
                }
            }
            let full = entries.len() >= XRANGE_PAGE;
            let mut last = None;
            for (off, m) in parsed {
                last = Some(off);
                let report = match m.as_deref().map(BusMsg::decode) {
                    Some(Ok(msg)) => LinkReport::Bus(msg),
                    Some(Err(e)) => LinkReport::BadMessage(e.0),
                    None => LinkReport::BadMessage(format!("stream entry {off} has no 'm'")),
                };
                self.push(s, report)?;
            }
            match last {
                Some(l) if full => from = l.saturating_add(1),
                _ => break,
            }
        }
        Ok(())
    }
}

/// A duration in whole milliseconds for `PX`, at least 1 (Redis refuses 0).
/// Checks one answer of the append script.
fn append_answer(got: Value) -> Result<(), End> {
    let Value::Array(items) = got else {
        return Err(End::Failed(format!("append script answered {got:?}")));
    };
    match items.first() {
        Some(Value::Int(1 | 0)) => Ok(()),
        Some(Value::Int(-1)) => {
            // Redis lost the stream (restart without persistence, FLUSHALL): come up
            // again, so the node sees the new epoch and publishes again there.
            Err(End::Failed("the stream's epoch changed".into()))
        }
        _ => Err(End::Failed(format!("append script answered {items:?}"))),
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// One `XRANGE` entry: its offset (id `0-OFF`) and field `m`, if present.
fn stream_entry(v: &Value) -> Option<(u64, Option<Vec<u8>>)> {
    let Value::Array(parts) = v else {
        return None;
    };
    let [id, Value::Array(fields)] = parts.as_slice() else {
        return None;
    };
    let id = bulk(id)?;
    let off = std::str::from_utf8(id)
        .ok()?
        .strip_prefix("0-")?
        .parse()
        .ok()?;
    let m = fields
        .chunks(2)
        .find(|kv| kv.first().and_then(bulk) == Some(b"m".as_slice()))
        .and_then(|kv| kv.get(1))
        .and_then(bulk)
        .map(<[u8]>::to_vec);
    Some((off, m))
}

fn bulk(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

/// The subscriber thread of one session.
struct Subscriber {
    bus: String,
    out: Out,
    ended: Arc<AtomicBool>,
}

impl Subscriber {
    fn run(
        self,
        mut con: Connection,
        ready: Sender<Result<(), String>>,
        go: Receiver<()>,
        err: Sender<String>,
    ) {
        let mut ps = con.as_pubsub();
        if let Err(e) = ps.subscribe(&self.bus) {
            let _ = ready.send(Err(format!("redis: SUBSCRIBE: {e}")));
            return;
        }
        if let Err(e) = ps.set_read_timeout(Some(SUB_POLL)) {
            let _ = ready.send(Err(format!("redis: {e}")));
            return;
        }
        let _ = ready.send(Ok(()));
        // Nothing is forwarded before `Up` is in the channel (module docs); what arrives
        // meanwhile waits in the socket.
        loop {
            if self.ended.load(Ordering::Acquire) || self.out.stopped() {
                return;
            }
            match go.recv_timeout(SUB_POLL) {
                Ok(()) => break,
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
        loop {
            if self.ended.load(Ordering::Acquire) || self.out.stopped() {
                return;
            }
            let msg = match ps.get_message() {
                Ok(m) => m,
                Err(e) if e.is_timeout() => continue,
                Err(e) => {
                    let _ = err.try_send(format!("redis subscription: {e}"));
                    return;
                }
            };
            let report = match BusMsg::decode(msg.get_payload_bytes()) {
                Ok(m) => LinkReport::Bus(m),
                Err(e) => LinkReport::BadMessage(e.0),
            };
            if !self.out.push(report, &self.ended) {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::cluster::Body;

    fn id(s: &str) -> NodeId {
        NodeId::new(s).unwrap()
    }

    #[test]
    fn urls_of_the_contract_parse_and_others_are_refused() {
        for ok in [
            "redis://127.0.0.1:6379",
            "redis://localhost:6379/2",
            "redis://[::1]:6380",
            "redis://redis.example",
            "redis+unix:///run/redis.sock",
            "redis://:pw@localhost:6379",
            "redis://app:pw@localhost:6379/1",
            "rediss://localhost:6379",
            "rediss://:pw@redis.example:6380/0",
            "redis+unix:///run/redis.sock?pass=pw",
        ] {
            assert!(parse_url(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "memory",
            "localhost:6379",
            "http://localhost:6379",
            "rediss://localhost:6379/#insecure",
            "unix:///run/redis.sock",
            "redis://localhost:notaport",
            "redis://localhost:6379/notadb",
        ] {
            let e = parse_url(bad).err();
            assert!(
                matches!(e, Some(BrokerError::BadUrl(_))),
                "{bad}: {:?}",
                e.map(|e| e.to_string())
            );
        }
        // The message shows the URL, never its password.
        let e = parse_url("redis://:hunter2@localhost:notaport").unwrap_err();
        let m = e.to_string();
        assert!(
            m.contains("redis://:***@localhost:notaport") && !m.contains("hunter2"),
            "{m}"
        );
    }

    #[test]
    fn start_refuses_bad_urls_and_rooms_without_connecting() {
        let wake: Arc<dyn Fn() + Send + Sync> = Arc::new(|| {});
        let t = Duration::from_secs(3);
        assert!(matches!(
            Link::start("http://x", "hb:{r}", t, 10, wake.clone()),
            Err(BrokerError::BadUrl(_))
        ));
        assert!(matches!(
            Link::start("redis://127.0.0.1:1", "a b", t, 10, wake),
            Err(BrokerError::BadRoom(_))
        ));
    }

    #[test]
    fn the_script_splice_is_the_encoder_with_the_offset() {
        let msgs = [
            ("hi", "ann"),
            (r#""off":0,"kind":"msg" tricky"#, "bob"),
            ("ünïcode \" \\ \t", "cy"),
        ];
        for (seq, (text, name)) in msgs.iter().enumerate() {
            let m = BusMsg {
                node: id("k3v0x8h2a9"),
                seq: seq as u64 + 1,
                offset: None,
                body: Body::Msg {
                    name: (*name).into(),
                    text: (*text).into(),
                },
            };
            let (head, tail) = split_at_offset(&m).unwrap();
            assert!(head.ends_with("\"off\":"), "{head}");
            for off in [1u64, 9, 10, 123_456_789, u64::MAX] {
                let spliced = format!("{head}{off}{tail}");
                let want = BusMsg {
                    offset: Some(off),
                    ..m.clone()
                };
                assert_eq!(spliced, want.encode());
                assert_eq!(BusMsg::decode(spliced.as_bytes()), Ok(want));
            }
        }
        assert_eq!(
            split_at_offset(&BusMsg {
                node: id("b"),
                seq: 1,
                offset: Some(5),
                body: Body::Msg {
                    name: "mb".into(),
                    text: "hi".into()
                }
            }),
            Some((
                r#"{"v":1,"node":"b","seq":1,"off":"#.to_owned(),
                r#","kind":"msg","name":"mb","text":"hi"}"#.to_owned()
            ))
        );
    }

    #[test]
    fn stream_entries_parse_and_junk_is_skipped() {
        let b = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let e = Value::Array(vec![
            b("0-7"),
            Value::Array(vec![b("x"), b("1"), b("m"), b("{}")]),
        ]);
        assert_eq!(stream_entry(&e), Some((7, Some(b"{}".to_vec()))));
        let no_m = Value::Array(vec![b("0-8"), Value::Array(vec![b("x"), b("1")])]);
        assert_eq!(stream_entry(&no_m), Some((8, None)));
        for junk in [
            Value::Nil,
            Value::Array(vec![b("1-7"), Value::Array(vec![])]),
            Value::Array(vec![b("0-x"), Value::Array(vec![])]),
            Value::Array(vec![b("0-7")]),
            Value::Array(vec![Value::Int(7), Value::Array(vec![])]),
        ] {
            assert_eq!(stream_entry(&junk), None, "{junk:?}");
        }
    }

    #[test]
    fn random_ids_are_valid_and_differ() {
        let a = random_base36(16);
        assert_eq!(a.len(), 16);
        assert!(NodeId::new(&a).is_some() && Epoch::new(&a).is_some());
        assert_ne!(a, random_base36(16));
        assert_eq!(millis(Duration::ZERO), 1);
        assert_eq!(millis(Duration::from_millis(600)), 600);
    }

    #[test]
    fn a_link_to_nowhere_reports_down_once_and_shuts_down_promptly() {
        // Port 1 on localhost refuses at once: the first report is Down, and only one.
        let (tx, rx) = bounded::<()>(64);
        let wake: Arc<dyn Fn() + Send + Sync> = Arc::new(move || {
            let _ = tx.try_send(());
        });
        let link = Link::start(
            "redis://127.0.0.1:1",
            "hb:{t}",
            Duration::from_millis(600),
            10,
            wake,
        )
        .unwrap();
        assert!(rx.recv_timeout(Duration::from_secs(5)).is_ok(), "woken");
        assert!(matches!(link.try_recv(), Some(LinkReport::Down { .. })));
        // A few reconnects later: still nothing more to say.
        thread::sleep(Duration::from_millis(400));
        assert_eq!(link.try_recv(), None);
        assert!(link.send(BusCommand::PollNodes).is_ok());
        let t = Instant::now();
        link.shutdown();
        assert!(
            t.elapsed() < Duration::from_millis(400),
            "{:?}",
            t.elapsed()
        );
    }
}
