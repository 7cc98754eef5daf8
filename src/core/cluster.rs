//! One server's side of the cluster protocol (CONTRACT section 8, docs/CLUSTER.md), sans-IO.
//!
//! A [`ClusterNode`] decides what this node says to the bus (Redis, through a link thread or
//! task the engine owns) and what the bus means for the local room. It performs no I/O and
//! reads no clock: the engine feeds it local room events ([`ClusterNode::request_join`],
//! [`ClusterNode::handle_local_msg`], [`ClusterNode::handle_local_leave`]), what the link
//! saw ([`ClusterNode::handle_bus`], [`ClusterNode::handle_node_seen`],
//! [`ClusterNode::handle_claim`], [`ClusterNode::handle_reap`], link up and down) and the
//! instant, and takes out commands for the link ([`ClusterNode::poll_command`]), events
//! for the hub and the log ([`ClusterNode::poll_event`]) and its next deadline
//! ([`ClusterNode::poll_timeout`]).
//!
//! ## The decisions encoded here
//! * **One order for the room.** While the link is up a local member's message is not
//!   delivered locally at once: it is published (the link runs one Lua script that gives it
//!   the next offset of the room's stream, appends it and publishes it), and every node,
//!   this one included, delivers it when it comes back from the bus. Messages are delivered
//!   strictly in offset order; an offset already delivered is a duplicate (dropped, counted);
//!   an offset past the next one means the subscription lost some: later ones wait in a
//!   bounded buffer while the link reads the missing range from the stream
//!   ([`BusCommand::ReadStream`]).
//! * **Per-sender sequence numbers.** Every published message carries this node's id and a
//!   sequence number, one series for stream messages and one for presence. The append script
//!   refuses a seq it has seen (a retried publish is stored once); receivers drop old seqs
//!   (replays); a jump in a node's stream seqs means that node dropped messages itself
//!   (outage queue full): logged ([`ClusterEvent::SenderGap`]) and the room goes on; a jump in
//!   presence seqs means lost presence lines: logged, and every node is asked for its roster
//!   again ([`Body::Hello`]), so presence repairs itself.
//! * **Link down: local service.** Local messages are delivered locally at once
//!   ([`Route::Local`]) and wait in a queue of at most `max_pending` messages to be published
//!   when the link is back; past the bound the *oldest* waiting message is dropped (the
//!   conversation's newest part reaches the other nodes), counted, and reported once when the
//!   link is back ([`ClusterEvent::PendingDropped`]). Presence is not queued: the re-sync
//!   after the outage (claims, then a roster) replaces it. Liveness checks of other nodes
//!   stop (their silence is our link's fault) and restart with a fresh `node_timeout`.
//! * **Node death.** A node not seen for `node_timeout` is lost. Every node that notices asks
//!   for the reaper lock of that node; the one that wins announces each member
//!   `LEFT NAME node-lost` on the bus ([`Body::Lost`]) and frees the names; every node turns
//!   each announcement into one [`ClusterEvent::Left`] (a name already gone is skipped, so it
//!   is once per node however many announce). A lost node id is never accepted again; a
//!   restarted server has a new id, and so has a node whose own key may have expired while
//!   it was cut off (it takes the engine's fresh id at link up and re-announces its members).
//! * **Names.** A join is a claim in Redis ([`BusCommand::ClaimName`]) while the link is up,
//!   and a provisional local claim while it is down. After an outage every local name is
//!   claimed again; a name held in Redis by a member of another node stays theirs, and the
//!   local member is ended `END name-taken` ([`ClusterEvent::NameLost`]).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::core::room::{validate_name, MemberId};
use crate::core::wire::{EndReason, Epoch, Pos};

/// Longest node id, in characters.
pub const MAX_NODE_ID: usize = 16;

/// Longest encoded bus message, in bytes: a hostile or corrupt payload is refused before it
/// is parsed. A message carries at most one line of `--max-line` (64 KiB by default) or a
/// roster of names; 1 MiB leaves room for both.
pub const MAX_BUS_MSG: usize = 1 << 20;

/// Most names in one roster message.
pub const MAX_ROSTER: usize = 100_000;

/// A lost node with no member left to announce is forgotten this many `node_timeout`s
/// after its last reap.
pub const FORGET_LOST_AFTER: u32 = 20;

/// Version of the bus message format (`"v"` in each message).
pub const BUS_VERSION: u32 = 1;

/// A server's id in the cluster: 1 to [`MAX_NODE_ID`] characters `[0-9a-z]`, drawn at random
/// by the engine at every start (so a restarted server is a new node).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(String);

impl NodeId {
    /// `s` as a node id, if it is 1 to [`MAX_NODE_ID`] characters `[0-9a-z]`.
    pub fn new(s: &str) -> Option<Self> {
        let ok = !s.is_empty()
            && s.len() <= MAX_NODE_ID
            && s.bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase());
        ok.then(|| Self(s.to_owned()))
    }

    /// The id as written in keys and messages.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The epoch of this node's own stream while it is cut off from Redis (positions given
    /// to local messages during an outage; the ids share the epochs' alphabet and length).
    pub fn local_epoch(&self) -> Epoch {
        Epoch::new(&self.0).unwrap_or_default()
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a bus message says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// A room message from a member of the sending node (stream series: has an offset once
    /// it went through the append script).
    Msg {
        /// The member's name.
        name: String,
        /// The text (one line).
        text: String,
    },
    /// A member of the sending node joined.
    Join {
        /// Its name.
        name: String,
    },
    /// A member of the sending node left.
    Leave {
        /// Its name.
        name: String,
        /// Why (the `LEFT` reason the room hears).
        reason: EndReason,
    },
    /// The sender won the reaper lock of node `of`: member `name` of that node is gone
    /// (`LEFT NAME node-lost`).
    Lost {
        /// The lost node.
        of: NodeId,
        /// One of its members.
        name: String,
    },
    /// Every member of the sending node (answer to [`Body::Hello`], and after a re-sync).
    Roster {
        /// The names.
        names: Vec<String>,
    },
    /// The sender (re)joined the bus: every node answers with its [`Body::Roster`].
    Hello,
    /// A member of the sending node took `name` over with its resume token, from whichever
    /// node held it: that node ends its connection `END replaced`, every node now counts the
    /// name as the sender's, and no room hears `LEFT` or `JOINED` (a quick reconnect is not
    /// a change of membership).
    TakeOver {
        /// The name.
        name: String,
    },
}

impl Body {
    /// True for the stream series (room messages); the rest is presence.
    pub fn is_stream(&self) -> bool {
        matches!(self, Self::Msg { .. })
    }
}

/// One message on the bus: who sent it, its place in the sender's series, its offset in
/// the room's stream (room messages that went through the append script), and what it says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusMsg {
    /// The sending node.
    pub node: NodeId,
    /// Its number in the sender's series (stream or presence, see [`Body::is_stream`]),
    /// from 1.
    pub seq: u64,
    /// Its offset in the room's stream (room messages only, set by the append script).
    pub offset: Option<u64>,
    /// What it says.
    pub body: Body,
}

/// A bus payload that cannot be used: refused as a whole (the receiver counts it and goes
/// on; Redis is trusted, but a bug or another program on the channel must not crash a node).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadBusMsg(pub String);

impl fmt::Display for BadBusMsg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bad bus message: {}", self.0)
    }
}

impl std::error::Error for BadBusMsg {}

/// The JSON shape of a bus message: flat, so the Lua append script can set `off` with one
/// string operation and `redis-cli` shows something readable.
#[derive(Serialize, Deserialize)]
struct WireMsg {
    v: u32,
    node: String,
    seq: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    off: Option<u64>,
    kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    of: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    names: Option<Vec<String>>,
}

impl BusMsg {
    /// The payload published on the bus (one JSON object, no newline).
    pub fn encode(&self) -> String {
        let mut w = WireMsg {
            v: BUS_VERSION,
            node: self.node.0.clone(),
            seq: self.seq,
            off: self.offset,
            kind: String::new(),
            name: None,
            text: None,
            reason: None,
            of: None,
            names: None,
        };
        let kind = match &self.body {
            Body::Msg { name, text } => {
                w.name = Some(name.clone());
                w.text = Some(text.clone());
                "msg"
            }
            Body::Join { name } => {
                w.name = Some(name.clone());
                "join"
            }
            Body::Leave { name, reason } => {
                w.name = Some(name.clone());
                w.reason = Some(reason.as_str().to_owned());
                "leave"
            }
            Body::Lost { of, name } => {
                w.of = Some(of.0.clone());
                w.name = Some(name.clone());
                "lost"
            }
            Body::Roster { names } => {
                w.names = Some(names.clone());
                "roster"
            }
            Body::Hello => "hello",
            Body::TakeOver { name } => {
                w.name = Some(name.clone());
                "takeover"
            }
        };
        w.kind = kind.to_owned();
        // Serializing a struct of strings and numbers cannot fail.
        serde_json::to_string(&w).unwrap_or_default()
    }

    /// Parses and checks a payload: size, version, ids, names (as `JOIN` checks them), texts
    /// that would break the line wire, and the fields each kind needs.
    pub fn decode(payload: &[u8]) -> Result<Self, BadBusMsg> {
        let bad = |why: &str| BadBusMsg(why.to_owned());
        if payload.len() > MAX_BUS_MSG {
            return Err(bad("too long"));
        }
        let w: WireMsg =
            serde_json::from_slice(payload).map_err(|e| BadBusMsg(format!("not JSON: {e}")))?;
        if w.v != BUS_VERSION {
            return Err(BadBusMsg(format!(
                "version {} (expected {BUS_VERSION})",
                w.v
            )));
        }
        let node = NodeId::new(&w.node).ok_or_else(|| bad("bad node id"))?;
        if w.seq == 0 {
            return Err(bad("seq starts at 1"));
        }
        let name = |n: Option<String>| -> Result<String, BadBusMsg> {
            let n = n.ok_or_else(|| bad("missing name"))?;
            validate_name(&n).map_err(|e| BadBusMsg(e.detail))?;
            Ok(n)
        };
        let body = match w.kind.as_str() {
            "msg" => {
                let text = w.text.ok_or_else(|| bad("missing text"))?;
                // The text becomes `MSG NAME TEXT\n` on every node: no line breaks, and
                // not empty (a `MSG` needs one).
                if text.is_empty() || text.contains(['\n', '\r']) {
                    return Err(bad("text must be one non-empty line"));
                }
                Body::Msg {
                    name: name(w.name)?,
                    text,
                }
            }
            "join" => Body::Join {
                name: name(w.name)?,
            },
            "leave" => Body::Leave {
                name: name(w.name)?,
                reason: w
                    .reason
                    .as_deref()
                    .and_then(EndReason::parse)
                    .ok_or_else(|| bad("bad reason"))?,
            },
            "lost" => Body::Lost {
                of: w
                    .of
                    .as_deref()
                    .and_then(NodeId::new)
                    .ok_or_else(|| bad("bad lost node id"))?,
                name: name(w.name)?,
            },
            "roster" => {
                let names = w.names.ok_or_else(|| bad("missing names"))?;
                if names.len() > MAX_ROSTER {
                    return Err(bad("roster too long"));
                }
                for n in &names {
                    validate_name(n).map_err(|e| BadBusMsg(e.detail))?;
                }
                Body::Roster { names }
            }
            "hello" => Body::Hello,
            "takeover" => Body::TakeOver {
                name: name(w.name)?,
            },
            other => {
                return Err(BadBusMsg(format!(
                    "unknown kind '{}'",
                    crate::core::wire::printable(other.as_bytes(), 16)
                )))
            }
        };
        if w.off.is_some() && !body.is_stream() {
            return Err(bad("only room messages have an offset"));
        }
        if w.off == Some(0) {
            return Err(bad("offsets start at 1"));
        }
        Ok(Self {
            node,
            seq: w.seq,
            offset: w.off,
            body,
        })
    }
}

/// What the node is configured with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterConfig {
    /// A node not seen for this long is lost (`--node-timeout`, default 3 s); also the TTL
    /// of this node's liveness key, its name claims and a reaper lock.
    pub node_timeout: Duration,
    /// Local messages waiting for the link while it is down (then the oldest are dropped).
    pub max_pending: usize,
    /// Local messages published and not yet back from the bus; beyond it the sender waits
    /// ([`Route::Wait`]): the flow control from this node into Redis.
    pub max_in_flight: usize,
    /// Room messages buffered behind a hole in the offsets while the link fills it.
    pub max_reorder: usize,
    /// Room messages read from the stream at the first link up, recorded in the room's
    /// mirror but not delivered (the room's past, for `HISTORY` and resumes on a node that
    /// started after they were sent); the engine passes `--history`. At most half of
    /// `max_reorder`.
    pub backfill: usize,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            node_timeout: Duration::from_secs(3),
            max_pending: 1000,
            max_in_flight: 256,
            max_reorder: 10_000,
            backfill: 0,
        }
    }
}

impl ClusterConfig {
    /// How often the node refreshes its key and claims and polls the others' liveness: a
    /// third of the timeout, so two refreshes in a row may be late before the key expires.
    pub fn refresh_every(&self) -> Duration {
        self.node_timeout / 3
    }
}

/// Why a name is claimed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimPurpose {
    /// A local `JOIN`: the answer decides the join.
    Join,
    /// Re-claiming a local member's name after an outage.
    Resync,
    /// A local `JOIN NAME SINCE POS TOKEN` for a name another node's member holds: won if
    /// the claim in Redis carries that token (or the name is free).
    TakeOver,
}

/// Something for the link to do, as plain data (the Redis commands are in docs/CLUSTER.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusCommand {
    /// Sets this node's liveness key and heartbeat entry, TTL `ttl` (at link up and then
    /// every [`ClusterConfig::refresh_every`]).
    RefreshNode {
        /// This node.
        node: NodeId,
        /// The key's TTL (`node_timeout`).
        ttl: Duration,
    },
    /// Reads the other nodes' heartbeats; each one seen comes back as
    /// [`ClusterNode::handle_node_seen`].
    PollNodes,
    /// Publishes a message: a room message through the append script (offset, stream,
    /// publish, refusing a seq already stored), presence with a plain `PUBLISH`.
    Publish(BusMsg),
    /// Reads the stream's room messages with offsets `after + 1 ..= upto` and hands each to
    /// [`ClusterNode::handle_bus`]; entries trimmed away are reported with
    /// [`ClusterNode::handle_stream_trimmed`].
    ReadStream {
        /// The last offset delivered.
        after: u64,
        /// The last offset wanted.
        upto: u64,
    },
    /// Claims `name` for member `conn` of `node` (`SET .. NX PX`, or already this node's);
    /// answered with [`ClusterNode::handle_claim`].
    ClaimName {
        /// The name.
        name: String,
        /// The member's connection.
        conn: MemberId,
        /// This node.
        node: NodeId,
        /// The claim's TTL.
        ttl: Duration,
        /// The member's resume token, kept in the claim (so a takeover on another node can
        /// be checked against it); with [`ClaimPurpose::TakeOver`], the token presented.
        token: Option<String>,
        /// Why.
        purpose: ClaimPurpose,
    },
    /// Extends the TTL of every claim of this node (one pipeline).
    RefreshNames {
        /// This node.
        node: NodeId,
        /// Its members' names.
        names: Vec<String>,
        /// The claims' TTL.
        ttl: Duration,
    },
    /// Deletes the claim of `name` if `owner` still holds it (compare-and-delete script).
    ReleaseName {
        /// The name.
        name: String,
        /// The node whose claim it must be.
        owner: NodeId,
    },
    /// Asks for the reaper lock of a lost node (`SET .. NX PX node_timeout`); answered with
    /// [`ClusterNode::handle_reap`].
    TryReap {
        /// The lost node.
        node: NodeId,
        /// The lock's TTL.
        ttl: Duration,
    },
}

/// What to do with a local member's message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Published; deliver it when it comes back ([`ClusterEvent::Deliver`]), not now.
    Bus,
    /// The link is down: deliver it locally now (it is also queued for the bus).
    Local,
    /// Too many messages in flight: hold the sender and offer it again after the next
    /// delivery (as for a held `MSG`).
    Wait,
    /// The connection is not a member of this node.
    NotMember,
}

/// What a local `JOIN` must wait for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinRoute {
    /// A claim was sent: wait for [`ClusterEvent::JoinAnswer`].
    Claiming,
    /// The link is down and no known member holds the name: joined (provisionally).
    Joined,
    /// A known member (local or on another node) holds it: `ERR name-taken`.
    Taken,
}

/// Something for the hub or the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterEvent {
    /// A room message: record it at `offset` in the room's mirror of the stream (if any),
    /// and deliver it to the local members when `deliver` (false for this node's own message
    /// that was delivered locally during an outage).
    Deliver {
        /// The sending node.
        node: NodeId,
        /// The member's name.
        name: String,
        /// The text.
        text: String,
        /// Its stream offset (`None`: delivered locally during an outage).
        offset: Option<u64>,
        /// Deliver to the local members (besides recording).
        deliver: bool,
    },
    /// A member of another node joined: `JOINED NAME` to the local members.
    Joined {
        /// Its name.
        name: String,
    },
    /// A member of another node left: `LEFT NAME REASON` to the local members.
    Left {
        /// Its name.
        name: String,
        /// Why.
        reason: EndReason,
    },
    /// The answer to a local join that needed a claim: on `ok` the member is in (the node
    /// already announced it), else `ERR name-taken`.
    JoinAnswer {
        /// The joining connection.
        conn: MemberId,
        /// The name.
        name: String,
        /// Whether the claim was won.
        ok: bool,
        /// Won by a takeover of another node's member: the name changes node, silently
        /// (no `JOINED`; the member keeps its token).
        replaced: bool,
    },
    /// A member of another node took the name of local member `conn` over with its token:
    /// end `conn` with `END replaced`, and let it go without `LEFT` (the member is still in
    /// the room, on the other node).
    Replaced {
        /// The local member.
        conn: MemberId,
        /// Its name.
        name: String,
    },
    /// After an outage, a local member's name turned out to be held in Redis by a member of
    /// another node: end `conn` with `END name-taken` (the local room hears
    /// `LEFT NAME name-taken`; the other nodes never knew it).
    NameLost {
        /// The local member.
        conn: MemberId,
        /// Its name.
        name: String,
    },
    /// Log: node `node` is lost (not seen for `node_timeout`).
    NodeLost {
        /// The node.
        node: NodeId,
    },
    /// Log: the link went down (once per outage).
    LinkDown,
    /// Log: the link is back (once per outage).
    LinkUp,
    /// The room's stream has a new epoch (Redis lost it): resumes from before get `GAP
    /// epoch-changed`.
    EpochChanged {
        /// The new epoch.
        epoch: Epoch,
    },
    /// Log: room messages at these offsets can be had from nowhere (trimmed from the stream
    /// before this node read them); the room goes on.
    MessagesLost {
        /// First missing offset.
        from: u64,
        /// Last missing offset.
        to: u64,
    },
    /// Log: node `node` skipped `missing` numbers of a series (it dropped messages itself,
    /// or presence lines were lost: then every roster is asked for again).
    SenderGap {
        /// The sender.
        node: NodeId,
        /// How many numbers were skipped.
        missing: u64,
        /// True for the stream series.
        stream: bool,
    },
    /// Log, once per outage: local messages dropped from the outage queue (the oldest).
    PendingDropped {
        /// How many.
        count: u64,
    },
    /// Another node announced this one lost while its link was up (its refreshes were late):
    /// the engine should report the link down and up again, so the node takes a fresh id.
    Evicted,
    /// This node took a new id (its old key may have expired while it was cut off, so the
    /// others may have announced its members lost).
    Renewed {
        /// The old id.
        old: NodeId,
        /// The new id.
        new: NodeId,
    },
}

/// Counters for the metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClusterStats {
    /// Bus messages dropped as duplicates or replays (offset or seq already seen).
    pub duplicates: u64,
    /// Bus messages dropped because their node was declared lost.
    pub from_lost_nodes: u64,
    /// Local messages dropped from the outage queue, in all.
    pub pending_dropped: u64,
    /// Room messages skipped because nobody could fill their hole.
    pub messages_lost: u64,
}

/// Another node as this one sees it.
#[derive(Debug, Default)]
struct Peer {
    last_seen: Option<Instant>,
    /// Last presence seq seen (0: none yet).
    presence_seq: u64,
    names: BTreeSet<String>,
}

/// A node declared lost whose members may not all be announced yet.
#[derive(Debug)]
struct Lost {
    names: BTreeSet<String>,
    /// When to ask for its reaper lock again if names are left (the winner may have died).
    retry_at: Instant,
}

/// A local message not yet stored in the stream.
#[derive(Debug, Clone)]
struct Outgoing {
    msg: BusMsg,
    /// Delivered locally already (during an outage): its echo is recorded, not delivered.
    delivered: bool,
}

/// This node's side of the cluster protocol. See the module docs.
#[derive(Debug)]
pub struct ClusterNode {
    id: NodeId,
    cfg: ClusterConfig,
    up: bool,
    /// When the link went down (it is down while `!up`).
    down_since: Option<Instant>,
    /// When this node's key was last refreshed through an up link (`None`: never).
    last_refresh: Option<Instant>,
    next_refresh: Option<Instant>,
    stream_seq: u64,
    presence_seq: u64,
    /// Ids this node had before a renewal: its messages still waiting under them are
    /// published under them (the append script knows their seqs), so their echoes are ours.
    past_ids: Vec<NodeId>,
    /// The roster goes out once every re-claim after a link up is answered.
    roster_due: bool,
    /// The others announced this node lost: take the fresh id at the next link up.
    renew_due: bool,
    /// Last stream seq seen from each sender (its room messages are delivered by offset
    /// whatever its liveness: the stream is the room's order).
    stream_seqs: HashMap<NodeId, u64>,
    /// The cluster stream's epoch (`None` until the first link up).
    epoch: Option<Epoch>,
    /// The next offset to deliver (`None` until the first link up).
    next_offset: Option<u64>,
    /// Room messages behind a hole, by offset.
    reorder: BTreeMap<u64, BusMsg>,
    /// The hole being filled from the stream: offsets up to this one were asked for.
    filling_upto: u64,
    /// Offsets up to this one are the room's past read at the first link up: recorded, not
    /// delivered (see [`ClusterConfig::backfill`]).
    quiet_upto: u64,
    /// Published and not yet back, oldest first.
    in_flight: VecDeque<Outgoing>,
    /// Waiting for the link, oldest first.
    pending: VecDeque<Outgoing>,
    dropped_this_outage: u64,
    /// Local members: name by connection and connection by name.
    members: HashMap<MemberId, String>,
    by_name: BTreeMap<String, MemberId>,
    /// Local joins waiting for their claim.
    joining: HashMap<MemberId, String>,
    /// Of those, the takeovers of another node's name (their token is in `tokens`).
    taking_over: HashSet<MemberId>,
    /// Local members' resume tokens (kept in their claims, re-claimed with them).
    tokens: HashMap<MemberId, String>,
    /// Local names re-claimed after an outage and not answered yet.
    resyncing: HashSet<MemberId>,
    /// Connections whose name a newer local connection took over while their re-claim was
    /// in flight: the answer names the old connection, and counts for the new one.
    moved: HashMap<MemberId, MemberId>,
    peers: HashMap<NodeId, Peer>,
    lost: HashMap<NodeId, Lost>,
    commands: VecDeque<BusCommand>,
    events: VecDeque<ClusterEvent>,
    stats: ClusterStats,
}

impl ClusterNode {
    /// A node `id` with its link down (the engine connects and reports
    /// [`ClusterNode::handle_link_up`]).
    pub fn new(id: NodeId, cfg: ClusterConfig, now: Instant) -> Self {
        Self {
            id,
            cfg,
            up: false,
            down_since: Some(now),
            last_refresh: None,
            next_refresh: None,
            stream_seq: 0,
            presence_seq: 0,
            past_ids: Vec::new(),
            roster_due: false,
            renew_due: false,
            stream_seqs: HashMap::new(),
            epoch: None,
            next_offset: None,
            reorder: BTreeMap::new(),
            filling_upto: 0,
            quiet_upto: 0,
            in_flight: VecDeque::new(),
            pending: VecDeque::new(),
            dropped_this_outage: 0,
            members: HashMap::new(),
            by_name: BTreeMap::new(),
            joining: HashMap::new(),
            taking_over: HashSet::new(),
            tokens: HashMap::new(),
            resyncing: HashSet::new(),
            moved: HashMap::new(),
            peers: HashMap::new(),
            lost: HashMap::new(),
            commands: VecDeque::new(),
            events: VecDeque::new(),
            stats: ClusterStats::default(),
        }
    }

    /// This node's id (it changes at most at a link up, see [`ClusterEvent::Renewed`]).
    pub fn id(&self) -> &NodeId {
        &self.id
    }

    /// True when `node` is this node under its current id or one it had before (its own
    /// messages come back from the bus under either).
    pub fn is_own(&self, node: &NodeId) -> bool {
        *node == self.id || self.past_ids.contains(node)
    }

    /// True while the link is up.
    pub fn is_up(&self) -> bool {
        self.up
    }

    /// The counters.
    pub fn stats(&self) -> ClusterStats {
        self.stats
    }

    /// Where the cluster stream stands as far as this node delivered it (`None` before the
    /// first link up).
    pub fn stream_pos(&self) -> Option<Pos> {
        Some(Pos {
            epoch: self.epoch.clone()?,
            offset: self.next_offset?.saturating_sub(1),
        })
    }

    /// Every member of the room this node knows of (local and on live nodes), in name order:
    /// the `WHO` answer.
    pub fn names(&self) -> Vec<String> {
        let mut all: BTreeSet<&String> = self.by_name.keys().collect();
        for p in self.peers.values() {
            all.extend(p.names.iter());
        }
        all.into_iter().cloned().collect()
    }

    /// True when a member known to this node (local, or on a node not declared lost) holds
    /// `name`.
    fn is_known(&self, name: &str) -> bool {
        self.by_name.contains_key(name) || self.peers.values().any(|p| p.names.contains(name))
    }

    // ---- local room events ----

    /// Local connection `conn` asks to join as `name` (already validated by the room).
    pub fn request_join(&mut self, now: Instant, conn: MemberId, name: &str) -> JoinRoute {
        self.request_join_since(now, conn, name, None, None)
    }

    /// [`ClusterNode::request_join`] for `JOIN NAME SINCE POS [TOKEN]`: `fresh` is the
    /// token the member gets if it joins (kept in its claim); `presented`, the token it
    /// sent. A name another node's member holds is then claimed as a takeover, won if that
    /// member's claim carries the same token.
    pub fn request_join_since(
        &mut self,
        _now: Instant,
        conn: MemberId,
        name: &str,
        presented: Option<&str>,
        fresh: Option<&str>,
    ) -> JoinRoute {
        if self.joining.values().any(|n| n == name) || self.by_name.contains_key(name) {
            return JoinRoute::Taken;
        }
        let remote = self.peers.values().any(|p| p.names.contains(name));
        let (purpose, token) = match (remote, presented) {
            (false, _) => (ClaimPurpose::Join, fresh),
            // A takeover is decided by Redis: not while the link is down.
            (true, Some(t)) if self.up => (ClaimPurpose::TakeOver, Some(t)),
            (true, _) => return JoinRoute::Taken,
        };
        let token = token.map(str::to_owned);
        if let Some(t) = &token {
            self.tokens.insert(conn, t.clone());
        }
        if !self.up {
            // Provisional: claimed again when the link is back (module docs, Names).
            self.add_member(conn, name);
            return JoinRoute::Joined;
        }
        self.joining.insert(conn, name.to_owned());
        if purpose == ClaimPurpose::TakeOver {
            self.taking_over.insert(conn);
        }
        self.commands.push_back(BusCommand::ClaimName {
            name: name.to_owned(),
            conn,
            node: self.id.clone(),
            ttl: self.cfg.node_timeout,
            token,
            purpose,
        });
        JoinRoute::Claiming
    }

    fn add_member(&mut self, conn: MemberId, name: &str) {
        self.add_member_as(
            conn,
            Body::Join {
                name: name.to_owned(),
            },
        );
    }

    /// A local member in, announced (while up) with `body`: its [`Body::Join`] or
    /// [`Body::TakeOver`], which names it.
    fn add_member_as(&mut self, conn: MemberId, body: Body) {
        let (Body::Join { name } | Body::TakeOver { name }) = &body else {
            unreachable!("a member is announced by Join or TakeOver");
        };
        self.members.insert(conn, name.clone());
        self.by_name.insert(name.clone(), conn);
        if self.up {
            self.publish_presence(body);
        }
    }

    /// Local member `conn` sends `text`.
    pub fn handle_local_msg(&mut self, _now: Instant, conn: MemberId, text: &str) -> Route {
        let Some(name) = self.members.get(&conn).cloned() else {
            return Route::NotMember;
        };
        if self.up && self.in_flight.len() >= self.cfg.max_in_flight {
            return Route::Wait;
        }
        self.stream_seq += 1;
        let msg = BusMsg {
            node: self.id.clone(),
            seq: self.stream_seq,
            offset: None,
            body: Body::Msg {
                name,
                text: text.to_owned(),
            },
        };
        if self.up {
            self.commands.push_back(BusCommand::Publish(msg.clone()));
            self.in_flight.push_back(Outgoing {
                msg,
                delivered: false,
            });
            Route::Bus
        } else {
            self.queue_pending(Outgoing {
                msg,
                delivered: true,
            });
            Route::Local
        }
    }

    /// Queues a message for the link's return, dropping the oldest past the bound.
    fn queue_pending(&mut self, out: Outgoing) {
        if self.cfg.max_pending == 0 {
            self.dropped_this_outage += 1;
            self.stats.pending_dropped += 1;
            return;
        }
        while self.pending.len() >= self.cfg.max_pending {
            self.pending.pop_front();
            self.dropped_this_outage += 1;
            self.stats.pending_dropped += 1;
        }
        self.pending.push_back(out);
    }

    /// Local connection `new` took the name of local member `old` over (a resume with its
    /// token on this node): the name stays this node's, claimed and announced as it was, so
    /// the other nodes hear nothing; `old`'s leave that follows is not the name's.
    pub fn handle_local_takeover(&mut self, _now: Instant, old: MemberId, new: MemberId) {
        let Some(name) = self.members.remove(&old) else {
            return;
        };
        self.by_name.insert(name.clone(), new);
        self.members.insert(new, name);
        if let Some(t) = self.tokens.remove(&old) {
            self.tokens.insert(new, t);
        }
        if self.resyncing.remove(&old) {
            self.resyncing.insert(new);
            self.moved.insert(old, new);
        }
    }

    /// Local member `conn` left for `reason` (the hub told the local room already).
    pub fn handle_local_leave(&mut self, _now: Instant, conn: MemberId, reason: EndReason) {
        self.tokens.remove(&conn);
        self.taking_over.remove(&conn);
        if let Some(name) = self.joining.remove(&conn) {
            // Its claim may still be won: give it back.
            if self.up {
                self.commands.push_back(BusCommand::ReleaseName {
                    name,
                    owner: self.id.clone(),
                });
            }
            return;
        }
        let Some(name) = self.members.remove(&conn) else {
            return;
        };
        self.by_name.remove(&name);
        self.resyncing.remove(&conn);
        if self.up {
            // The name is released before the others hear the leave (the link runs commands
            // in order), so whoever reacts to `LEFT` by taking the name finds it free.
            self.commands.push_back(BusCommand::ReleaseName {
                name: name.clone(),
                owner: self.id.clone(),
            });
            self.publish_presence(Body::Leave { name, reason });
        }
        // While down: nothing to do now; the re-sync's roster tells the others, and the
        // claim in Redis expires unrefreshed.
        self.maybe_finish_resync();
    }

    fn publish_presence(&mut self, body: Body) {
        self.presence_seq += 1;
        self.commands.push_back(BusCommand::Publish(BusMsg {
            node: self.id.clone(),
            seq: self.presence_seq,
            offset: None,
            body,
        }));
    }

    // ---- what the link reports ----

    /// The link answered a claim of `name` for `conn`: `won` unless another node's member
    /// holds it.
    pub fn handle_claim(&mut self, _now: Instant, conn: MemberId, name: &str, won: bool) {
        let conn = self.moved.remove(&conn).unwrap_or(conn);
        if self.joining.get(&conn).is_some_and(|n| n == name) {
            self.joining.remove(&conn);
            let takeover = self.taking_over.remove(&conn);
            let mut replaced = false;
            if won {
                // A takeover moves the name to this node: off the roster that held it, and
                // the others hear the takeover instead of a join (unless its holder left
                // meanwhile: then it is an ordinary join).
                if takeover {
                    for p in self.peers.values_mut() {
                        replaced |= p.names.remove(name);
                    }
                }
                let name = name.to_owned();
                self.add_member_as(
                    conn,
                    if replaced {
                        Body::TakeOver { name }
                    } else {
                        Body::Join { name }
                    },
                );
            } else {
                self.tokens.remove(&conn);
            }
            self.events.push_back(ClusterEvent::JoinAnswer {
                conn,
                name: name.to_owned(),
                ok: won,
                replaced,
            });
            return;
        }
        if self.resyncing.remove(&conn) {
            if !won && self.members.get(&conn).is_some_and(|n| n == name) {
                // The claim in Redis is older than ours (made while we were cut off): it wins.
                self.tokens.remove(&conn);
                self.members.remove(&conn);
                self.by_name.remove(name);
                self.events.push_back(ClusterEvent::NameLost {
                    conn,
                    name: name.to_owned(),
                });
            }
            self.maybe_finish_resync();
        }
    }

    /// Every re-claim answered: tell the others who is here, and ask for their rosters.
    fn maybe_finish_resync(&mut self) {
        if !self.up || !self.resyncing.is_empty() || !self.roster_due {
            return;
        }
        self.roster_due = false;
        let names = self.by_name.keys().cloned().collect();
        self.publish_presence(Body::Roster { names });
        self.publish_presence(Body::Hello);
    }

    /// The link is up again (or for the first time). `stream` is where the room's stream
    /// stands in Redis (its epoch, created with `SET NX` if missing, and its last offset);
    /// `fresh_id` is a new random id the node takes if its key may have expired meanwhile.
    pub fn handle_link_up(&mut self, now: Instant, stream: Pos, fresh_id: NodeId) {
        if self.up {
            return;
        }
        self.up = true;
        self.down_since = None;
        self.events.push_back(ClusterEvent::LinkUp);
        if self.dropped_this_outage > 0 {
            self.events.push_back(ClusterEvent::PendingDropped {
                count: self.dropped_this_outage,
            });
            self.dropped_this_outage = 0;
        }
        // Our key lives `node_timeout` from its last refresh: past that the others may have
        // announced our members lost, and a lost id is never accepted again.
        let expired = self.renew_due
            || self
                .last_refresh
                .is_some_and(|t| now >= t + self.cfg.node_timeout);
        self.renew_due = false;
        if expired && fresh_id != self.id {
            let old = std::mem::replace(&mut self.id, fresh_id);
            self.stream_seq = 0;
            self.presence_seq = 0;
            // Waiting messages keep their old id and seq: one of them may have reached
            // Redis just before the cut, and the append script refuses it again only under
            // the same id and seq. Room messages are delivered whatever their sender's
            // liveness, so the old id does no harm there.
            if self.past_ids.len() >= 8 {
                self.past_ids.remove(0);
            }
            self.past_ids.push(old.clone());
            self.events.push_back(ClusterEvent::Renewed {
                old,
                new: self.id.clone(),
            });
        }
        self.commands.push_back(BusCommand::RefreshNode {
            node: self.id.clone(),
            ttl: self.cfg.node_timeout,
        });
        self.last_refresh = Some(now);
        self.next_refresh = Some(now + self.cfg.refresh_every());
        self.commands.push_back(BusCommand::PollNodes);
        // The stream: same epoch → read what was missed; another epoch → start over there.
        match (&self.epoch, self.next_offset) {
            (Some(e), Some(next)) if *e == stream.epoch => {
                if stream.offset >= next {
                    self.filling_upto = stream.offset;
                    self.commands.push_back(BusCommand::ReadStream {
                        after: next - 1,
                        upto: stream.offset,
                    });
                }
            }
            (old, _) => {
                let had_one = old.is_some();
                self.reorder.clear();
                self.filling_upto = 0;
                self.epoch = Some(stream.epoch.clone());
                if had_one {
                    self.quiet_upto = 0;
                    // A new stream (Redis lost the old one): what other nodes stored in it
                    // before this link came up is room history this node has not delivered
                    // (their outage queues, say). Read it from the start.
                    self.events.push_back(ClusterEvent::EpochChanged {
                        epoch: stream.epoch.clone(),
                    });
                    self.next_offset = Some(1);
                    if stream.offset >= 1 {
                        self.filling_upto = stream.offset;
                        self.commands.push_back(BusCommand::ReadStream {
                            after: 0,
                            upto: stream.offset,
                        });
                    }
                } else {
                    // First contact: the room's past is history (HISTORY, resumes), not news.
                    // The newest `backfill` messages are read to fill the mirror, quietly.
                    let back =
                        (self.cfg.backfill.min(self.cfg.max_reorder / 2) as u64).min(stream.offset);
                    self.next_offset = Some(stream.offset + 1 - back);
                    self.quiet_upto = stream.offset;
                    if back > 0 {
                        self.filling_upto = stream.offset;
                        self.commands.push_back(BusCommand::ReadStream {
                            after: stream.offset - back,
                            upto: stream.offset,
                        });
                    }
                }
            }
        }
        // What waited for the link goes out in order (a seq already stored is refused by
        // the append script, so a publish that did reach Redis before the cut is not doubled).
        for out in std::mem::take(&mut self.pending) {
            self.commands
                .push_back(BusCommand::Publish(out.msg.clone()));
            self.in_flight.push_back(out);
        }
        // The others' silence while we were away was our link's fault: fresh timeouts.
        for p in self.peers.values_mut() {
            p.last_seen = Some(now);
        }
        for l in self.lost.values_mut() {
            l.retry_at = now + self.cfg.node_timeout;
        }
        // Re-sync presence: claim every local name again, then a roster.
        self.roster_due = true;
        let mut claims: Vec<(MemberId, String)> =
            self.members.iter().map(|(&c, n)| (c, n.clone())).collect();
        claims.sort();
        for (conn, name) in claims {
            self.resyncing.insert(conn);
            self.commands.push_back(BusCommand::ClaimName {
                name,
                conn,
                node: self.id.clone(),
                ttl: self.cfg.node_timeout,
                token: self.tokens.get(&conn).cloned(),
                purpose: ClaimPurpose::Resync,
            });
        }
        self.maybe_finish_resync();
    }

    /// The link is down (a command failed, the connection dropped, or Redis is unreachable
    /// at start). Commands not yet taken are dropped (the re-sync replaces them); messages
    /// in flight are delivered locally now and wait to be published again.
    pub fn handle_link_down(&mut self, now: Instant) {
        if !self.up {
            return;
        }
        self.up = false;
        self.down_since = Some(now);
        self.next_refresh = None;
        self.events.push_back(ClusterEvent::LinkDown);
        self.commands.clear();
        self.resyncing.clear();
        self.moved.clear();
        self.reorder.clear();
        self.filling_upto = 0;
        // In flight: they may or may not have reached Redis. Delivered locally now (the
        // senders must not wait for an outage), and re-published later under the same seq.
        let mut back: VecDeque<Outgoing> = std::mem::take(&mut self.in_flight);
        for out in &mut back {
            if !out.delivered {
                if let Body::Msg { name, text } = &out.msg.body {
                    self.events.push_back(ClusterEvent::Deliver {
                        node: self.id.clone(),
                        name: name.clone(),
                        text: text.clone(),
                        offset: None,
                        deliver: true,
                    });
                }
                out.delivered = true;
            }
        }
        for out in back {
            self.queue_pending(out);
        }
        // Joins waiting for a claim: joined provisionally, like any join while down.
        // A takeover in flight is refused: only Redis could decide it.
        let mut joining: Vec<(MemberId, String)> = self.joining.drain().collect();
        joining.sort();
        for (conn, name) in joining {
            let takeover = self.taking_over.remove(&conn);
            let ok = !takeover && !self.is_known(&name);
            if ok {
                self.add_member(conn, &name);
            } else {
                self.tokens.remove(&conn);
            }
            self.events.push_back(ClusterEvent::JoinAnswer {
                conn,
                name,
                ok,
                replaced: false,
            });
        }
    }

    /// Node `node` was alive at `at`: the link's poll found its heartbeat `age` old by
    /// Redis's clock and reports `at = now - age` (so no two machines' clocks are compared,
    /// and the death deadline counts from the node's last refresh, not from the poll).
    /// A sighting older than one already known changes nothing.
    pub fn handle_node_seen(&mut self, at: Instant, node: &NodeId) {
        if *node == self.id || self.past_ids.contains(node) || self.lost.contains_key(node) {
            return;
        }
        let seen = &mut self.peers.entry(node.clone()).or_default().last_seen;
        if seen.is_none_or(|t| t < at) {
            *seen = Some(at);
        }
    }

    /// A message arrived from the bus (live from the subscription, or read from the stream).
    ///
    /// Room messages are delivered in offset order whoever sent them (the stream is the
    /// room's order, and a message stored in it is part of the room). Presence from a lost
    /// node is dropped: a lost id never comes back, so its members stay announced gone.
    /// Only presence counts as a sign of life: a room message may be an old one read from
    /// the stream.
    pub fn handle_bus(&mut self, now: Instant, msg: BusMsg) {
        if msg.body.is_stream() {
            return self.handle_stream_msg(msg);
        }
        if msg.node == self.id || self.past_ids.contains(&msg.node) {
            return;
        }
        if self.lost.contains_key(&msg.node) {
            self.stats.from_lost_nodes += 1;
            return;
        }
        self.handle_node_seen(now, &msg.node);
        self.handle_presence(now, msg);
    }

    fn handle_stream_msg(&mut self, msg: BusMsg) {
        let Some(offset) = msg.offset else {
            // Room messages reach the bus only through the append script.
            self.stats.duplicates += 1;
            return;
        };
        let Some(next) = self.next_offset else {
            // Before the first link up nothing is known of the stream: start here.
            self.next_offset = Some(offset);
            return self.handle_stream_msg(msg);
        };
        if offset < next || self.reorder.contains_key(&offset) {
            self.stats.duplicates += 1;
            return;
        }
        if offset > next {
            // A hole: the subscription lost messages (a reconnect, a full output buffer).
            // Later ones wait while the link reads the hole from the stream.
            self.reorder.insert(offset, msg);
            if self.reorder.len() > self.cfg.max_reorder {
                // Nobody filled it in time: skip it, so the room goes on.
                let first = self.reorder.keys().next().copied().unwrap_or(offset);
                self.skip_to(first);
                self.drain_reorder();
                return;
            }
            let asked = self.filling_upto.max(next - 1);
            if self.up && offset - 1 > asked {
                self.commands.push_back(BusCommand::ReadStream {
                    after: asked,
                    upto: offset - 1,
                });
                self.filling_upto = offset - 1;
            }
            return;
        }
        self.deliver_stream(msg);
        self.drain_reorder();
    }

    /// Gives up on offsets before `to`: logged and counted.
    fn skip_to(&mut self, to: u64) {
        let Some(next) = self.next_offset else {
            return;
        };
        if to > next {
            self.events.push_back(ClusterEvent::MessagesLost {
                from: next,
                to: to - 1,
            });
            self.stats.messages_lost += to - next;
            self.next_offset = Some(to);
        }
    }

    fn drain_reorder(&mut self) {
        while let Some(next) = self.next_offset {
            let Some(msg) = self.reorder.remove(&next) else {
                break;
            };
            self.deliver_stream(msg);
        }
    }

    /// Delivers the room message at the next offset (the caller checked the offset).
    fn deliver_stream(&mut self, msg: BusMsg) {
        self.next_offset = self.next_offset.map(|n| n + 1);
        let news = msg.offset.is_some_and(|o| o > self.quiet_upto);
        let Body::Msg { name, text } = msg.body else {
            return;
        };
        if msg.node == self.id || self.past_ids.contains(&msg.node) {
            // Our own message is back: it leaves the window, and was delivered locally
            // already if it went out during an outage.
            let at = self
                .in_flight
                .iter()
                .position(|o| o.msg.seq == msg.seq && o.msg.node == msg.node);
            let delivered = at
                .and_then(|i| self.in_flight.remove(i))
                .is_some_and(|o| o.delivered);
            self.events.push_back(ClusterEvent::Deliver {
                node: msg.node,
                name,
                text,
                offset: msg.offset,
                deliver: !delivered && news,
            });
            return;
        }
        let last = self.stream_seqs.entry(msg.node.clone()).or_default();
        if msg.seq <= *last {
            // A replay under a new offset (the script makes this impossible; cheap to check).
            self.stats.duplicates += 1;
            return;
        }
        let missing = if *last == 0 { 0 } else { msg.seq - *last - 1 };
        *last = msg.seq;
        if missing > 0 {
            self.events.push_back(ClusterEvent::SenderGap {
                node: msg.node.clone(),
                missing,
                stream: true,
            });
        }
        self.events.push_back(ClusterEvent::Deliver {
            node: msg.node,
            name,
            text,
            offset: msg.offset,
            deliver: news,
        });
    }

    /// The link could not read offsets before `first` from the stream (trimmed): skip them.
    pub fn handle_stream_trimmed(&mut self, _now: Instant, first: u64) {
        self.skip_to(first);
        self.drain_reorder();
    }

    fn handle_presence(&mut self, now: Instant, msg: BusMsg) {
        let _ = now;
        let peer = self.peers.entry(msg.node.clone()).or_default();
        if msg.seq <= peer.presence_seq {
            self.stats.duplicates += 1;
            return;
        }
        let missing = if peer.presence_seq == 0 {
            0
        } else {
            msg.seq - peer.presence_seq - 1
        };
        peer.presence_seq = msg.seq;
        match msg.body {
            Body::Join { name } => {
                if peer.names.insert(name.clone()) {
                    self.events.push_back(ClusterEvent::Joined { name });
                }
            }
            Body::Leave { name, reason } => {
                if peer.names.remove(&name) {
                    self.events.push_back(ClusterEvent::Left { name, reason });
                }
            }
            Body::Roster { names } => {
                let new: BTreeSet<String> = names.into_iter().collect();
                let old = std::mem::replace(&mut peer.names, new.clone());
                // Who left or joined while we were not listening; the reason of a departure
                // we did not hear is unknown: `closed`.
                for name in old.difference(&new) {
                    self.events.push_back(ClusterEvent::Left {
                        name: name.clone(),
                        reason: EndReason::Closed,
                    });
                }
                for name in new.difference(&old) {
                    self.events
                        .push_back(ClusterEvent::Joined { name: name.clone() });
                }
            }
            Body::Hello => {
                let names = self.by_name.keys().cloned().collect();
                if self.up {
                    self.publish_presence(Body::Roster { names });
                }
            }
            Body::Lost { of, name } => self.announce_lost(now, &of, &name),
            Body::TakeOver { name } => self.apply_takeover(&msg.node, name),
            Body::Msg { .. } => {}
        }
        if missing > 0 {
            self.events.push_back(ClusterEvent::SenderGap {
                node: msg.node,
                missing,
                stream: false,
            });
            if self.up {
                self.publish_presence(Body::Hello);
            }
        }
    }

    /// Node `by` took `name` over: it is `by`'s now, wherever it was; a local holder is
    /// ended `END replaced` (no `LEFT`: the member goes on elsewhere), and only a room that
    /// did not know the name hears `JOINED`.
    fn apply_takeover(&mut self, by: &NodeId, name: String) {
        let mut known = false;
        if let Some(conn) = self.by_name.remove(&name) {
            known = true;
            self.members.remove(&conn);
            self.tokens.remove(&conn);
            self.resyncing.remove(&conn);
            // Its claim is the taker's now: no release, no Leave.
            self.events.push_back(ClusterEvent::Replaced {
                conn,
                name: name.clone(),
            });
            self.maybe_finish_resync();
        }
        for (id, p) in self.peers.iter_mut() {
            if id != by {
                known |= p.names.remove(&name);
            }
        }
        let taker = self.peers.entry(by.clone()).or_default();
        known |= taker.names.contains(&name);
        taker.names.insert(name.clone());
        if !known {
            self.events.push_back(ClusterEvent::Joined { name });
        }
    }

    /// Member `name` of lost node `of` is gone: one `Left` here, if not announced already.
    fn announce_lost(&mut self, now: Instant, of: &NodeId, name: &str) {
        if *of == self.id {
            // We were declared lost while alive (our refreshes were late): our id is dead.
            // The engine bounces the link; the link up takes a fresh id and re-announces.
            if !self.renew_due {
                self.renew_due = true;
                self.events.push_back(ClusterEvent::Evicted);
            }
            return;
        }
        if let Some(peer) = self.peers.remove(of) {
            self.lost.insert(
                of.clone(),
                Lost {
                    names: peer.names,
                    retry_at: now + self.cfg.node_timeout,
                },
            );
            self.events
                .push_back(ClusterEvent::NodeLost { node: of.clone() });
        }
        if let Some(l) = self.lost.get_mut(of) {
            if l.names.remove(name) {
                self.events.push_back(ClusterEvent::Left {
                    name: name.to_owned(),
                    reason: EndReason::NodeLost,
                });
            }
        }
    }

    /// The link's answer to [`BusCommand::TryReap`]: `won` the lock of lost node `node`, or
    /// another node holds it (it announces; this node waits for its [`Body::Lost`] lines).
    pub fn handle_reap(&mut self, now: Instant, node: &NodeId, won: bool) {
        let Some(l) = self.lost.get_mut(node) else {
            return;
        };
        l.retry_at = now + self.cfg.node_timeout;
        if !won || !self.up {
            return;
        }
        let names: Vec<String> = std::mem::take(&mut l.names).into_iter().collect();
        for name in names {
            // Released first, as for a leave: `LEFT` means the name is free.
            self.commands.push_back(BusCommand::ReleaseName {
                name: name.clone(),
                owner: node.clone(),
            });
            self.publish_presence(Body::Lost {
                of: node.clone(),
                name: name.clone(),
            });
            self.events.push_back(ClusterEvent::Left {
                name,
                reason: EndReason::NodeLost,
            });
        }
    }

    // ---- time ----

    /// The next instant [`ClusterNode::handle_timeout`] has something to do (`None` while
    /// the link is down: reconnecting is the link's business).
    pub fn poll_timeout(&self) -> Option<Instant> {
        if !self.up {
            return None;
        }
        let deaths = self
            .peers
            .values()
            .filter_map(|p| p.last_seen.map(|t| t + self.cfg.node_timeout));
        let retries = self
            .lost
            .values()
            .filter(|l| !l.names.is_empty())
            .map(|l| l.retry_at);
        self.next_refresh
            .into_iter()
            .chain(deaths)
            .chain(retries)
            .min()
    }

    /// Does what is due at `now`: refreshes this node's key and claims, polls the others,
    /// declares silent nodes lost and asks for their reaper locks.
    pub fn handle_timeout(&mut self, now: Instant) {
        if !self.up {
            return;
        }
        if self.next_refresh.is_some_and(|t| now >= t) {
            self.commands.push_back(BusCommand::RefreshNode {
                node: self.id.clone(),
                ttl: self.cfg.node_timeout,
            });
            if !self.by_name.is_empty() {
                self.commands.push_back(BusCommand::RefreshNames {
                    node: self.id.clone(),
                    names: self.by_name.keys().cloned().collect(),
                    ttl: self.cfg.node_timeout,
                });
            }
            self.commands.push_back(BusCommand::PollNodes);
            self.last_refresh = Some(now);
            self.next_refresh = Some(now + self.cfg.refresh_every());
        }
        let timeout = self.cfg.node_timeout;
        let mut dead: Vec<NodeId> = self
            .peers
            .iter()
            .filter(|(_, p)| p.last_seen.is_some_and(|t| now >= t + timeout))
            .map(|(id, _)| id.clone())
            .collect();
        dead.sort();
        for id in dead {
            let Some(peer) = self.peers.remove(&id) else {
                continue;
            };
            self.events
                .push_back(ClusterEvent::NodeLost { node: id.clone() });
            self.commands.push_back(BusCommand::TryReap {
                node: id.clone(),
                ttl: timeout,
            });
            self.lost.insert(
                id,
                Lost {
                    names: peer.names,
                    retry_at: now + timeout,
                },
            );
        }
        let mut retry: Vec<NodeId> = self
            .lost
            .iter()
            .filter(|(_, l)| !l.names.is_empty() && now >= l.retry_at)
            .map(|(id, _)| id.clone())
            .collect();
        retry.sort();
        for id in retry {
            if let Some(l) = self.lost.get_mut(&id) {
                l.retry_at = now + timeout;
            }
            self.commands.push_back(BusCommand::TryReap {
                node: id,
                ttl: timeout,
            });
        }
        // A lost node whose members are all announced is remembered for a while, so its
        // late presence is refused; long after its key expired (it takes a fresh id when it
        // comes back) it is forgotten, so restarts over months do not pile up here.
        let forget = timeout.saturating_mul(FORGET_LOST_AFTER);
        let stream_seqs = &mut self.stream_seqs;
        self.lost.retain(|id, l| {
            let keep = !l.names.is_empty() || now < l.retry_at + forget;
            if !keep {
                stream_seqs.remove(id);
            }
            keep
        });
    }

    // ---- outputs ----

    /// The next command for the link.
    pub fn poll_command(&mut self) -> Option<BusCommand> {
        self.commands.pop_front()
    }

    /// The next event for the hub or the log.
    pub fn poll_event(&mut self) -> Option<ClusterEvent> {
        self.events.pop_front()
    }

    /// Local messages waiting for the link (tests and metrics).
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn id(s: &str) -> NodeId {
        NodeId::new(s).unwrap()
    }

    fn pos(epoch: &str, offset: u64) -> Pos {
        Pos {
            epoch: Epoch::new(epoch).unwrap(),
            offset,
        }
    }

    fn msg(node: &str, seq: u64, offset: u64, text: &str) -> BusMsg {
        BusMsg {
            node: id(node),
            seq,
            offset: Some(offset),
            body: Body::Msg {
                name: format!("m{node}"),
                text: text.to_owned(),
            },
        }
    }

    fn presence(node: &str, seq: u64, body: Body) -> BusMsg {
        BusMsg {
            node: id(node),
            seq,
            offset: None,
            body,
        }
    }

    fn join(name: &str) -> Body {
        Body::Join {
            name: name.to_owned(),
        }
    }

    /// A node "a" with simulated time, its link up on epoch `e` at offset 0.
    struct Sim {
        t: Instant,
        n: ClusterNode,
    }

    impl Sim {
        fn new(cfg: ClusterConfig) -> Self {
            let t = Instant::now();
            let mut n = ClusterNode::new(id("a"), cfg, t);
            n.handle_link_up(t, pos("e", 0), id("a2"));
            let mut sim = Self { t, n };
            sim.commands();
            sim.events();
            sim
        }

        fn at(&mut self, d: Duration) {
            self.t += d;
            self.n.handle_timeout(self.t);
        }

        fn commands(&mut self) -> Vec<BusCommand> {
            std::iter::from_fn(|| self.n.poll_command()).collect()
        }

        fn events(&mut self) -> Vec<ClusterEvent> {
            std::iter::from_fn(|| self.n.poll_event()).collect()
        }

        fn bus(&mut self, m: BusMsg) {
            self.n.handle_bus(self.t, m);
        }

        /// Texts of the `Deliver` events (with whether they go to local members).
        fn delivered(&mut self) -> Vec<(String, bool)> {
            self.events()
                .into_iter()
                .filter_map(|e| match e {
                    ClusterEvent::Deliver { text, deliver, .. } => Some((text, deliver)),
                    _ => None,
                })
                .collect()
        }

        /// `name` joins locally as `conn` and wins its claim.
        fn local_member(&mut self, conn: MemberId, name: &str) {
            assert_eq!(self.n.request_join(self.t, conn, name), JoinRoute::Claiming);
            self.n.handle_claim(self.t, conn, name, true);
            self.commands();
            self.events();
        }
    }

    fn texts(v: &[&str]) -> Vec<(String, bool)> {
        v.iter().map(|t| ((*t).to_owned(), true)).collect()
    }

    #[test]
    fn messages_of_two_nodes_arrive_once_each_in_order_despite_duplicates_replays_and_holes() {
        let mut s = Sim::new(ClusterConfig::default());
        s.bus(msg("b", 1, 1, "b1"));
        s.bus(msg("c", 1, 2, "c1"));
        s.bus(msg("b", 1, 1, "b1")); // duplicate delivery of offset 1
        s.bus(msg("b", 2, 3, "b2"));
        // A hole: offset 4 was lost on the subscription; 5 waits while the link reads 4.
        s.bus(msg("c", 3, 5, "c3"));
        assert_eq!(s.delivered(), texts(&["b1", "c1", "b2"]));
        assert_eq!(
            s.commands(),
            vec![BusCommand::ReadStream { after: 3, upto: 4 }]
        );
        s.bus(msg("c", 3, 5, "c3")); // the buffered one again
        s.bus(msg("c", 2, 4, "c2")); // the fill
        assert_eq!(s.delivered(), texts(&["c2", "c3"]));
        // A replay of an old message under a fresh offset: its seq gives it away.
        s.bus(msg("b", 2, 6, "b2"));
        s.bus(msg("b", 3, 7, "b3"));
        assert_eq!(s.delivered(), texts(&["b3"]));
        assert_eq!(s.n.stats().duplicates, 3);
        assert_eq!(s.n.stream_pos(), Some(pos("e", 7)));
        assert!(s.commands().is_empty(), "no second read for a filled hole");
    }

    #[test]
    fn a_jump_in_a_senders_seqs_is_logged_and_the_room_goes_on() {
        let mut s = Sim::new(ClusterConfig::default());
        s.bus(msg("b", 1, 1, "b1"));
        s.bus(msg("b", 5, 2, "b5"));
        let ev = s.events();
        assert!(ev.contains(&ClusterEvent::SenderGap {
            node: id("b"),
            missing: 3,
            stream: true
        }));
        assert_eq!(
            ev.iter()
                .filter(|e| matches!(e, ClusterEvent::Deliver { .. }))
                .count(),
            2
        );
    }

    #[test]
    fn a_hole_the_stream_cannot_fill_is_skipped_and_logged() {
        let mut s = Sim::new(ClusterConfig::default());
        s.bus(msg("b", 1, 1, "b1"));
        s.bus(msg("b", 9, 9, "b9"));
        s.events();
        assert_eq!(
            s.commands(),
            vec![BusCommand::ReadStream { after: 1, upto: 8 }]
        );
        s.bus(msg("b", 3, 3, "b3"));
        assert!(s.delivered().is_empty(), "2 is still missing");
        s.n.handle_stream_trimmed(s.t, 3);
        let ev = s.events();
        assert_eq!(ev[0], ClusterEvent::MessagesLost { from: 2, to: 2 });
        assert_eq!(s.n.stats().messages_lost, 1);
        assert_eq!(s.n.stream_pos(), Some(pos("e", 3)), "9 waits for 4..=8");
    }

    #[test]
    fn a_full_reorder_buffer_gives_up_on_the_hole() {
        let mut s = Sim::new(ClusterConfig {
            max_reorder: 2,
            ..ClusterConfig::default()
        });
        s.bus(msg("b", 1, 1, "b1"));
        for (seq, off) in [(3, 3), (4, 4), (5, 5)] {
            s.bus(msg("b", seq, off, &format!("b{seq}")));
        }
        assert_eq!(s.delivered(), texts(&["b1", "b3", "b4", "b5"]));
        assert_eq!(s.n.stats().messages_lost, 1);
    }

    #[test]
    fn own_messages_go_through_the_bus_within_a_window() {
        let mut s = Sim::new(ClusterConfig {
            max_in_flight: 2,
            ..ClusterConfig::default()
        });
        s.local_member(1, "ann");
        assert_eq!(s.n.handle_local_msg(s.t, 9, "x"), Route::NotMember);
        assert_eq!(s.n.handle_local_msg(s.t, 1, "one"), Route::Bus);
        assert_eq!(s.n.handle_local_msg(s.t, 1, "two"), Route::Bus);
        assert_eq!(s.n.handle_local_msg(s.t, 1, "three"), Route::Wait);
        let published: Vec<u64> = s
            .commands()
            .into_iter()
            .map(|c| match c {
                BusCommand::Publish(m) => m.seq,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(published, vec![1, 2]);
        assert!(s.delivered().is_empty(), "not before they come back");
        s.bus(msg("a", 1, 1, "one"));
        assert_eq!(s.delivered(), texts(&["one"]));
        assert_eq!(s.n.handle_local_msg(s.t, 1, "three"), Route::Bus);
    }

    #[test]
    fn a_silent_node_is_lost_after_node_timeout_not_before_and_its_members_once() {
        let mut s = Sim::new(ClusterConfig::default());
        let t0 = s.t;
        s.n.handle_node_seen(t0, &id("b"));
        s.n.handle_node_seen(t0, &id("c"));
        s.bus(presence("b", 1, join("bob")));
        s.bus(presence("b", 2, join("bea")));
        s.bus(presence("c", 1, join("cy")));
        assert_eq!(s.n.names(), vec!["bea", "bob", "cy"]);
        s.events();
        // An older sighting does not move b's deadline back.
        s.n.handle_node_seen(t0 - ms(500), &id("b"));
        // c keeps beating, b is silent from t0.
        for _ in 0..5 {
            s.at(ms(599));
            s.n.handle_node_seen(s.t, &id("c"));
        }
        assert_eq!(s.t, t0 + ms(2995));
        assert!(s.events().is_empty(), "not before node_timeout");
        assert_eq!(s.n.poll_timeout(), Some(t0 + ms(3000)));
        s.at(ms(5));
        assert_eq!(s.events(), vec![ClusterEvent::NodeLost { node: id("b") }]);
        let reap = BusCommand::TryReap {
            node: id("b"),
            ttl: ms(3000),
        };
        assert!(s.commands().contains(&reap));
        // Another node won the lock and announces; a second announcement changes nothing.
        s.n.handle_reap(s.t, &id("b"), false);
        let lost = |name: &str| Body::Lost {
            of: id("b"),
            name: name.to_owned(),
        };
        s.bus(presence("c", 2, lost("bob")));
        s.bus(presence("c", 3, lost("bea")));
        s.bus(presence("c", 4, lost("bob")));
        let left = |name: &str| ClusterEvent::Left {
            name: name.to_owned(),
            reason: EndReason::NodeLost,
        };
        assert_eq!(s.events(), vec![left("bob"), left("bea")]);
        assert_eq!(s.n.names(), vec!["cy"]);
        // All announced: no retry of the lock.
        s.at(ms(3000));
        assert!(!s.commands().contains(&reap));
    }

    #[test]
    fn the_reaper_announces_and_frees_the_names_and_retries_if_the_winner_died() {
        let mut s = Sim::new(ClusterConfig::default());
        s.n.handle_node_seen(s.t, &id("b"));
        s.bus(presence("b", 1, join("bob")));
        s.bus(presence("b", 2, join("bea")));
        s.events();
        s.at(ms(3000));
        s.events();
        s.commands();
        // Lost the lock, and the winner never announced: ask again a timeout later.
        s.n.handle_reap(s.t, &id("b"), false);
        s.at(ms(2999));
        assert!(!s
            .commands()
            .iter()
            .any(|c| matches!(c, BusCommand::TryReap { .. })));
        s.at(ms(1));
        assert!(s
            .commands()
            .iter()
            .any(|c| matches!(c, BusCommand::TryReap { .. })));
        s.n.handle_reap(s.t, &id("b"), true);
        let cmds = s.commands();
        let published: Vec<&Body> = cmds
            .iter()
            .filter_map(|c| match c {
                BusCommand::Publish(m) => Some(&m.body),
                _ => None,
            })
            .collect();
        assert_eq!(published.len(), 2);
        assert!(cmds.contains(&BusCommand::ReleaseName {
            name: "bob".into(),
            owner: id("b")
        }));
        assert_eq!(
            s.events(),
            vec![
                ClusterEvent::Left {
                    name: "bea".into(),
                    reason: EndReason::NodeLost
                },
                ClusterEvent::Left {
                    name: "bob".into(),
                    reason: EndReason::NodeLost
                }
            ]
        );
        s.n.handle_reap(s.t, &id("b"), true);
        assert!(s.events().is_empty(), "nothing left to announce");
    }

    #[test]
    fn a_lost_id_stays_lost_and_a_restarted_node_is_a_new_node() {
        let mut s = Sim::new(ClusterConfig::default());
        s.n.handle_node_seen(s.t, &id("b"));
        s.bus(presence("b", 1, join("bob")));
        s.at(ms(3000));
        s.n.handle_reap(s.t, &id("b"), true);
        s.events();
        // A late line from the lost id: no ghost comes back.
        s.bus(presence("b", 2, join("bob")));
        s.n.handle_node_seen(s.t, &id("b"));
        assert!(s.events().is_empty());
        assert_eq!(s.n.stats().from_lost_nodes, 1);
        assert!(s.n.names().is_empty());
        // The restarted server has a new id: its members are new members.
        s.n.handle_node_seen(s.t, &id("b2"));
        s.bus(presence("b2", 1, join("bob")));
        assert_eq!(
            s.events(),
            vec![ClusterEvent::Joined { name: "bob".into() }]
        );
        // Room messages a lost node stored in the stream are still the room's.
        s.bus(msg("b", 7, 1, "last words"));
        assert_eq!(s.delivered(), texts(&["last words"]));
        // Long after (its key expired; back, it would take a fresh id) it is forgotten, so
        // restarts over months do not pile up.
        assert!(s.n.lost.contains_key(&id("b")));
        s.at(ms(3000) * (FORGET_LOST_AFTER + 2));
        assert!(!s.n.lost.contains_key(&id("b")));
        assert!(!s.n.stream_seqs.contains_key(&id("b")));
    }

    #[test]
    fn link_down_delivers_locally_queues_up_to_the_bound_and_drops_the_oldest() {
        let mut s = Sim::new(ClusterConfig {
            max_pending: 3,
            ..ClusterConfig::default()
        });
        s.local_member(1, "ann");
        assert_eq!(s.n.handle_local_msg(s.t, 1, "m1"), Route::Bus);
        s.commands();
        s.n.handle_link_down(s.t);
        // The one in flight is delivered locally at once and waits to be published again.
        assert_eq!(
            s.events(),
            vec![
                ClusterEvent::LinkDown,
                ClusterEvent::Deliver {
                    node: id("a"),
                    name: "ann".into(),
                    text: "m1".into(),
                    offset: None,
                    deliver: true
                }
            ]
        );
        for i in 2..=5 {
            assert_eq!(s.n.handle_local_msg(s.t, 1, &format!("m{i}")), Route::Local);
        }
        assert!(s.commands().is_empty(), "nothing for a link that is down");
        assert_eq!(s.n.poll_timeout(), None);
        assert_eq!(s.n.pending_len(), 3);
        assert_eq!(s.n.stats().pending_dropped, 2);
        s.at(ms(1000));
        s.n.handle_link_up(s.t, pos("e", 0), id("a2"));
        let ev = s.events();
        assert_eq!(
            ev,
            vec![
                ClusterEvent::LinkUp,
                ClusterEvent::PendingDropped { count: 2 }
            ],
            "the drop is reported once"
        );
        let seqs: Vec<(u64, String)> = s
            .commands()
            .into_iter()
            .filter_map(|c| match c {
                BusCommand::Publish(BusMsg {
                    seq,
                    body: Body::Msg { text, .. },
                    ..
                }) => Some((seq, text)),
                _ => None,
            })
            .collect();
        assert_eq!(
            seqs,
            vec![(3, "m3".into()), (4, "m4".into()), (5, "m5".into())],
            "the newest survive, in order, under their seqs"
        );
        // Back from the bus: recorded at their offsets, not delivered a second time.
        for (i, seq) in (3..=5).enumerate() {
            s.bus(msg("a", seq, i as u64 + 1, &format!("m{seq}")));
        }
        assert_eq!(
            s.delivered(),
            vec![
                ("m3".into(), false),
                ("m4".into(), false),
                ("m5".into(), false)
            ]
        );
    }

    #[test]
    fn link_up_resyncs_presence_and_the_claim_in_redis_wins() {
        let mut s = Sim::new(ClusterConfig::default());
        s.local_member(1, "ann");
        s.n.handle_link_down(s.t);
        assert_eq!(s.n.request_join(s.t, 2, "bob"), JoinRoute::Joined);
        assert_eq!(s.n.request_join(s.t, 3, "bob"), JoinRoute::Taken);
        s.events();
        s.at(ms(500));
        s.n.handle_link_up(s.t, pos("e", 0), id("a2"));
        s.events();
        let cmds = s.commands();
        let claims: Vec<(MemberId, &str)> = cmds
            .iter()
            .filter_map(|c| match c {
                BusCommand::ClaimName {
                    conn,
                    name,
                    purpose: ClaimPurpose::Resync,
                    ..
                } => Some((*conn, name.as_str())),
                _ => None,
            })
            .collect();
        assert_eq!(claims, vec![(1, "ann"), (2, "bob")]);
        assert!(cmds.contains(&BusCommand::RefreshNode {
            node: id("a"),
            ttl: ms(3000)
        }));
        assert!(cmds.contains(&BusCommand::PollNodes));
        s.n.handle_claim(s.t, 1, "ann", true);
        assert!(s.commands().is_empty(), "the roster waits for every answer");
        s.n.handle_claim(s.t, 2, "bob", false);
        assert_eq!(
            s.events(),
            vec![ClusterEvent::NameLost {
                conn: 2,
                name: "bob".into()
            }]
        );
        let bodies = published(s.commands());
        assert_eq!(
            bodies,
            vec![
                Body::Roster {
                    names: vec!["ann".into()]
                },
                Body::Hello
            ]
        );
    }

    #[test]
    fn a_local_takeover_keeps_the_name_claimed_and_silent_even_mid_resync() {
        let mut s = Sim::new(ClusterConfig::default());
        s.local_member(1, "ann");
        // Connection 2 resumes as ann with her token (the hub checked it): nothing for the
        // bus, and the old connection's leave that follows is not the name's.
        s.n.handle_local_takeover(s.t, 1, 2);
        s.n.handle_local_leave(s.t, 1, EndReason::Replaced);
        assert!(s.commands().is_empty(), "no release, no Leave presence");
        assert!(s.events().is_empty());
        assert_eq!(s.n.request_join(s.t, 3, "ann"), JoinRoute::Taken);
        assert_eq!(s.n.handle_local_msg(s.t, 2, "hi"), Route::Bus);
        // A takeover while ann's re-claim is in flight: the answer (for connection 2) counts
        // for connection 3, and a lost claim ends the connection that holds the name now.
        s.n.handle_link_down(s.t);
        s.at(ms(500));
        s.n.handle_link_up(s.t, pos("e", 0), id("a2"));
        s.commands();
        s.events();
        s.n.handle_local_takeover(s.t, 2, 3);
        s.n.handle_claim(s.t, 2, "ann", false);
        assert_eq!(
            s.events(),
            vec![ClusterEvent::NameLost {
                conn: 3,
                name: "ann".into()
            }]
        );
        let bodies = published(s.commands());
        assert_eq!(bodies, vec![Body::Roster { names: vec![] }, Body::Hello]);
    }

    #[test]
    fn joins_need_a_claim_while_up_and_are_provisional_while_down() {
        let mut s = Sim::new(ClusterConfig::default());
        assert_eq!(s.n.request_join(s.t, 1, "ann"), JoinRoute::Claiming);
        assert_eq!(s.n.request_join(s.t, 2, "ann"), JoinRoute::Taken);
        assert!(matches!(
            s.commands()[..],
            [BusCommand::ClaimName {
                purpose: ClaimPurpose::Join,
                conn: 1,
                ..
            }]
        ));
        s.n.handle_claim(s.t, 1, "ann", false);
        assert_eq!(
            s.events(),
            vec![ClusterEvent::JoinAnswer {
                conn: 1,
                name: "ann".into(),
                ok: false,
                replaced: false
            }]
        );
        assert!(s.n.names().is_empty());
        // A claim in flight when the link drops is answered locally.
        assert_eq!(s.n.request_join(s.t, 3, "cy"), JoinRoute::Claiming);
        s.n.handle_link_down(s.t);
        assert!(s.events().contains(&ClusterEvent::JoinAnswer {
            conn: 3,
            name: "cy".into(),
            ok: true,
            replaced: false
        }));
        assert_eq!(s.n.names(), vec!["cy"]);
    }

    /// The bodies this node publishes, in order.
    fn published(cmds: Vec<BusCommand>) -> Vec<Body> {
        cmds.into_iter()
            .filter_map(|c| match c {
                BusCommand::Publish(m) => Some(m.body),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_token_takes_another_node_s_name_over_through_redis_and_silently() {
        let mut s = Sim::new(ClusterConfig::default());
        s.bus(presence("b", 1, join("ann")));
        s.events();
        // Without a token, or while the link is down, the name is simply taken.
        assert_eq!(
            s.n.request_join_since(s.t, 1, "ann", None, Some("fresh1")),
            JoinRoute::Taken
        );
        // With one: a takeover claim carrying it (Redis compares it with ann's claim).
        assert_eq!(
            s.n.request_join_since(s.t, 2, "ann", Some("tok"), Some("fresh2")),
            JoinRoute::Claiming
        );
        assert_eq!(
            s.commands(),
            [BusCommand::ClaimName {
                name: "ann".into(),
                conn: 2,
                node: id("a"),
                ttl: ms(3000),
                token: Some("tok".into()),
                purpose: ClaimPurpose::TakeOver,
            }]
        );
        s.n.handle_claim(s.t, 2, "ann", true);
        assert_eq!(
            s.events(),
            [ClusterEvent::JoinAnswer {
                conn: 2,
                name: "ann".into(),
                ok: true,
                replaced: true
            }]
        );
        assert_eq!(
            published(s.commands()),
            [Body::TakeOver { name: "ann".into() }]
        );
        assert_eq!(s.n.names(), ["ann"], "one ann, ours now");
        // Re-claimed after an outage with the token, so it can move on again.
        s.n.handle_link_down(s.t);
        s.at(ms(500));
        s.n.handle_link_up(s.t, pos("e", 0), id("a"));
        let tokens: Vec<Option<String>> = s
            .commands()
            .into_iter()
            .filter_map(|c| match c {
                BusCommand::ClaimName { token, .. } => Some(token),
                _ => None,
            })
            .collect();
        assert_eq!(tokens, [Some("tok".to_owned())]);
        s.n.handle_claim(s.t, 2, "ann", true);
        s.events();
        s.commands();
        // A wrong token loses in Redis: refused, nothing published.
        s.bus(presence("c", 1, join("cy")));
        s.events();
        assert_eq!(
            s.n.request_join_since(s.t, 3, "cy", Some("nope"), Some("fresh3")),
            JoinRoute::Claiming
        );
        s.commands();
        s.n.handle_claim(s.t, 3, "cy", false);
        assert!(matches!(
            s.events()[..],
            [ClusterEvent::JoinAnswer {
                ok: false,
                replaced: false,
                ..
            }]
        ));
        assert!(published(s.commands()).is_empty());
        // In flight when the link drops: refused (only Redis can decide a takeover).
        assert_eq!(
            s.n.request_join_since(s.t, 4, "cy", Some("tok-c"), Some("fresh4")),
            JoinRoute::Claiming
        );
        s.n.handle_link_down(s.t);
        assert!(s.events().contains(&ClusterEvent::JoinAnswer {
            conn: 4,
            name: "cy".into(),
            ok: false,
            replaced: false
        }));
        assert_eq!(s.n.names(), ["ann", "cy"]);
    }

    #[test]
    fn a_takeover_elsewhere_ends_the_local_holder_and_moves_the_name_without_a_word() {
        let mut s = Sim::new(ClusterConfig::default());
        s.local_member(1, "ann");
        s.bus(presence("b", 1, join("bob")));
        s.bus(presence("c", 1, join("cy")));
        s.events();
        // Node b took ann over from us: our connection ends `END replaced`, no Leave, no
        // release (the claim is b's now), and nobody hears LEFT or JOINED.
        s.bus(presence("b", 2, Body::TakeOver { name: "ann".into() }));
        assert_eq!(
            s.events(),
            [ClusterEvent::Replaced {
                conn: 1,
                name: "ann".into()
            }]
        );
        s.n.handle_local_leave(s.t, 1, EndReason::Replaced);
        assert!(s.commands().is_empty());
        assert_eq!(s.n.names(), ["ann", "bob", "cy"]);
        assert_eq!(s.n.request_join(s.t, 2, "ann"), JoinRoute::Taken, "b's now");
        // A member of c takes ann over from b: silent here too.
        s.bus(presence("c", 2, Body::TakeOver { name: "ann".into() }));
        assert!(s.events().is_empty());
        // b leaves: only its own members go (ann is c's now).
        s.bus(presence(
            "b",
            3,
            Body::Leave {
                name: "ann".into(),
                reason: EndReason::Quit,
            },
        ));
        assert!(s.events().is_empty(), "b no longer has ann");
        assert_eq!(s.n.names(), ["ann", "bob", "cy"]);
        // A takeover of a name this node never heard of (its join was missed): JOINED.
        s.bus(presence("c", 3, Body::TakeOver { name: "dee".into() }));
        assert_eq!(s.events(), [ClusterEvent::Joined { name: "dee".into() }]);
    }

    #[test]
    fn remote_presence_joins_leaves_rosters_and_hello() {
        let mut s = Sim::new(ClusterConfig::default());
        s.local_member(1, "ann");
        s.bus(presence("b", 1, join("bob")));
        s.bus(presence("b", 1, join("bob")));
        s.bus(presence(
            "b",
            2,
            Body::Leave {
                name: "bob".into(),
                reason: EndReason::Quit,
            },
        ));
        s.bus(presence("b", 3, join("bea")));
        // A roster after a gap: 4 and 5 were lost; bea left unheard, bo joined unheard.
        s.bus(presence(
            "b",
            6,
            Body::Roster {
                names: vec!["bo".into()],
            },
        ));
        assert_eq!(
            s.events(),
            vec![
                ClusterEvent::Joined { name: "bob".into() },
                ClusterEvent::Left {
                    name: "bob".into(),
                    reason: EndReason::Quit
                },
                ClusterEvent::Joined { name: "bea".into() },
                ClusterEvent::Left {
                    name: "bea".into(),
                    reason: EndReason::Closed
                },
                ClusterEvent::Joined { name: "bo".into() },
                ClusterEvent::SenderGap {
                    node: id("b"),
                    missing: 2,
                    stream: false
                },
            ]
        );
        assert_eq!(s.n.stats().duplicates, 1);
        // The gap asks every node for its roster.
        assert!(s.commands().iter().any(|c| matches!(
            c,
            BusCommand::Publish(BusMsg {
                body: Body::Hello,
                ..
            })
        )));
        s.bus(presence("c", 1, Body::Hello));
        assert!(s.commands().iter().any(|c| matches!(
            c,
            BusCommand::Publish(BusMsg { body: Body::Roster { names }, .. }) if names == &["ann"]
        )));
        assert_eq!(s.n.names(), vec!["ann", "bo"]);
    }

    #[test]
    fn refreshes_come_every_third_of_the_timeout_and_stop_while_down() {
        let mut s = Sim::new(ClusterConfig::default());
        s.local_member(1, "ann");
        assert_eq!(s.n.poll_timeout(), Some(s.t + ms(1000)));
        s.at(ms(999));
        assert!(s.commands().is_empty());
        s.at(ms(1));
        assert_eq!(
            s.commands(),
            vec![
                BusCommand::RefreshNode {
                    node: id("a"),
                    ttl: ms(3000)
                },
                BusCommand::RefreshNames {
                    node: id("a"),
                    names: vec!["ann".into()],
                    ttl: ms(3000)
                },
                BusCommand::PollNodes
            ]
        );
        s.n.handle_link_down(s.t);
        s.at(ms(5000));
        assert!(s.commands().is_empty());
    }

    #[test]
    fn no_node_is_declared_lost_for_an_outage_of_our_own_link() {
        let mut s = Sim::new(ClusterConfig::default());
        s.n.handle_node_seen(s.t, &id("b"));
        s.bus(presence("b", 1, join("bob")));
        s.events();
        s.n.handle_link_down(s.t);
        s.at(ms(2000));
        s.n.handle_link_up(s.t, pos("e", 0), id("a2"));
        s.at(ms(2999));
        assert!(!s
            .events()
            .iter()
            .any(|e| matches!(e, ClusterEvent::NodeLost { .. })));
        s.at(ms(1));
        assert!(s
            .events()
            .contains(&ClusterEvent::NodeLost { node: id("b") }));
    }

    #[test]
    fn a_node_cut_off_past_its_key_ttl_takes_a_new_id_and_its_old_messages_stay_its_own() {
        let mut s = Sim::new(ClusterConfig::default());
        s.local_member(1, "ann");
        s.n.handle_link_down(s.t);
        assert_eq!(s.n.handle_local_msg(s.t, 1, "during"), Route::Local);
        s.events();
        s.at(ms(3000));
        s.n.handle_link_up(s.t, pos("e", 0), id("a2"));
        assert!(s.events().contains(&ClusterEvent::Renewed {
            old: id("a"),
            new: id("a2")
        }));
        assert_eq!(s.n.id(), &id("a2"));
        let cmds = s.commands();
        assert!(cmds.contains(&BusCommand::RefreshNode {
            node: id("a2"),
            ttl: ms(3000)
        }));
        assert!(cmds.iter().any(|c| matches!(
            c,
            BusCommand::Publish(BusMsg { node, seq: 1, body: Body::Msg { .. }, .. }) if node == &id("a")
        )), "a waiting message keeps its id and seq (the append script dedups on them)");
        s.bus(msg("a", 1, 1, "during"));
        assert_eq!(s.delivered(), vec![("during".into(), false)]);
        // Presence goes out under the new id.
        s.n.handle_claim(s.t, 1, "ann", true);
        assert!(s.commands().iter().all(|c| match c {
            BusCommand::Publish(m) => m.node == id("a2"),
            _ => true,
        }));
    }

    #[test]
    fn a_node_announced_lost_while_up_renews_at_the_next_link_up() {
        let mut s = Sim::new(ClusterConfig::default());
        let lost_a = Body::Lost {
            of: id("a"),
            name: "ann".into(),
        };
        s.bus(presence("c", 1, lost_a.clone()));
        s.bus(presence("c", 2, lost_a));
        assert_eq!(s.events(), vec![ClusterEvent::Evicted], "once");
        s.n.handle_link_down(s.t);
        s.n.handle_link_up(s.t, pos("e", 0), id("a3"));
        assert!(s.events().contains(&ClusterEvent::Renewed {
            old: id("a"),
            new: id("a3")
        }));
    }

    #[test]
    fn the_first_contact_reads_the_room_s_past_quietly() {
        let t = Instant::now();
        let cfg = ClusterConfig {
            backfill: 3,
            ..ClusterConfig::default()
        };
        let mut n = ClusterNode::new(id("a"), cfg, t);
        n.handle_link_up(t, pos("e", 5), id("a2"));
        let cmds: Vec<BusCommand> = std::iter::from_fn(|| n.poll_command()).collect();
        assert!(
            cmds.contains(&BusCommand::ReadStream { after: 2, upto: 5 }),
            "{cmds:?}"
        );
        assert_eq!(n.stream_pos(), Some(pos("e", 2)));
        // A live one first (it waits for the hole), then the past.
        n.handle_bus(t, msg("b", 9, 6, "live"));
        for (seq, off) in [(6, 3), (7, 4), (8, 5)] {
            n.handle_bus(t, msg("b", seq, off, &format!("old{off}")));
        }
        let got: Vec<(u64, bool)> = std::iter::from_fn(|| n.poll_event())
            .filter_map(|e| match e {
                ClusterEvent::Deliver {
                    offset, deliver, ..
                } => Some((offset.unwrap(), deliver)),
                _ => None,
            })
            .collect();
        assert_eq!(got, vec![(3, false), (4, false), (5, false), (6, true)]);
    }

    #[test]
    fn a_new_epoch_starts_the_stream_over() {
        let mut s = Sim::new(ClusterConfig::default());
        s.bus(msg("b", 1, 1, "b1"));
        s.n.handle_link_down(s.t);
        s.n.handle_link_up(s.t, pos("f", 0), id("a2"));
        assert!(s.events().contains(&ClusterEvent::EpochChanged {
            epoch: Epoch::new("f").unwrap()
        }));
        s.bus(msg("b", 2, 1, "b2"));
        assert_eq!(s.delivered(), texts(&["b2"]));
        // Same epoch, further on: what was missed is read from the stream.
        s.n.handle_link_down(s.t);
        s.n.handle_link_up(s.t, pos("f", 4), id("a2"));
        assert!(s
            .commands()
            .contains(&BusCommand::ReadStream { after: 1, upto: 4 }));
        // A new epoch that others already wrote to (their outage queues): read from its
        // start, so nothing stored before this link came up is skipped.
        s.n.handle_link_down(s.t);
        let _ = s.commands();
        s.n.handle_link_up(s.t, pos("g", 3), id("a2"));
        assert!(s
            .commands()
            .contains(&BusCommand::ReadStream { after: 0, upto: 3 }));
        s.bus(msg("c", 1, 1, "c1"));
        s.bus(msg("c", 2, 2, "c2"));
        s.bus(msg("c", 3, 3, "c3"));
        let d = s.delivered();
        assert!(d.ends_with(&texts(&["c1", "c2", "c3"])), "{d:?}");
    }

    #[test]
    fn bus_messages_round_trip() {
        let all = [
            msg("b", 1, 7, "hello there, ünïcode"),
            BusMsg {
                offset: None,
                ..msg("b", 2, 1, "not stored yet")
            },
            presence("b", 3, join("ann")),
            presence(
                "b",
                4,
                Body::Leave {
                    name: "ann".into(),
                    reason: EndReason::HeartbeatTimeout,
                },
            ),
            presence(
                "b",
                5,
                Body::Lost {
                    of: id("c"),
                    name: "cy".into(),
                },
            ),
            presence(
                "b",
                6,
                Body::Roster {
                    names: vec!["ann".into(), "bob".into()],
                },
            ),
            presence("b", 7, Body::Roster { names: vec![] }),
            presence("b", 8, Body::Hello),
            presence("b", 9, Body::TakeOver { name: "ann".into() }),
        ];
        for m in all {
            let wire = m.encode();
            assert!(!wire.contains('\n'));
            assert_eq!(BusMsg::decode(wire.as_bytes()), Ok(m), "{wire}");
        }
        assert_eq!(
            msg("b", 1, 7, "hi").encode(),
            r#"{"v":1,"node":"b","seq":1,"off":7,"kind":"msg","name":"mb","text":"hi"}"#
        );
    }

    #[test]
    fn hostile_bus_payloads_are_refused_not_fatal() {
        let long = format!(
            r#"{{"v":1,"node":"b","seq":1,"kind":"msg","name":"a","text":"{}"}}"#,
            "x".repeat(MAX_BUS_MSG)
        );
        let bad: &[&[u8]] = &[
            b"",
            b"not json",
            b"\xff\xfe",
            b"[]",
            b"{}",
            br#"{"v":2,"node":"b","seq":1,"kind":"hello"}"#,
            br#"{"v":1,"node":"B","seq":1,"kind":"hello"}"#,
            br#"{"v":1,"node":"","seq":1,"kind":"hello"}"#,
            br#"{"v":1,"node":"b234567890abcdefg","seq":1,"kind":"hello"}"#,
            br#"{"v":1,"node":"b","seq":0,"kind":"hello"}"#,
            br#"{"v":1,"node":"b","seq":-1,"kind":"hello"}"#,
            br#"{"v":1,"node":"b","seq":1,"kind":"nope"}"#,
            br#"{"v":1,"node":"b","seq":1,"kind":"msg","name":"a"}"#,
            br#"{"v":1,"node":"b","seq":1,"kind":"msg","name":"a","text":""}"#,
            br#"{"v":1,"node":"b","seq":1,"kind":"msg","name":"a","text":"x\nEND quit"}"#,
            br#"{"v":1,"node":"b","seq":1,"kind":"msg","name":"a","text":"x\r"}"#,
            br#"{"v":1,"node":"b","seq":1,"kind":"msg","name":"a b","text":"x"}"#,
            br#"{"v":1,"node":"b","seq":1,"off":0,"kind":"msg","name":"a","text":"x"}"#,
            br#"{"v":1,"node":"b","seq":1,"off":3,"kind":"join","name":"a"}"#,
            br#"{"v":1,"node":"b","seq":1,"kind":"join"}"#,
            br#"{"v":1,"node":"b","seq":1,"kind":"leave","name":"a","reason":"bored"}"#,
            br#"{"v":1,"node":"b","seq":1,"kind":"lost","name":"a","of":"X"}"#,
            br#"{"v":1,"node":"b","seq":1,"kind":"roster","names":["ok","not ok"]}"#,
            br#"{"v":1,"node":"b","seq":1,"kind":"roster"}"#,
            br#"{"v":1,"node":"b","seq":1,"kind":"hello","name":7}"#,
            br#"{"v":1,"node":"b","seq":1,"kind":"takeover"}"#,
            br#"{"v":1,"node":"b","seq":1,"kind":"takeover","name":"a\u001b[2J"}"#,
            long.as_bytes(),
        ];
        for p in bad {
            assert!(
                BusMsg::decode(p).is_err(),
                "{}",
                String::from_utf8_lossy(&p[..p.len().min(120)])
            );
        }
        // Unknown extra fields are tolerated (a newer node may add some).
        assert!(BusMsg::decode(br#"{"v":1,"node":"b","seq":1,"kind":"hello","x":1}"#).is_ok());
        // Arbitrary bytes never panic.
        let alphabet = b"{}[]\":,01abv node seq kind msg\\";
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for len in 0..2000usize {
            let p: Vec<u8> = (0..len % 97)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    alphabet[(x % alphabet.len() as u64) as usize]
                })
                .collect();
            let _ = BusMsg::decode(&p);
        }
    }

    #[test]
    fn node_ids_are_short_base36() {
        assert!(NodeId::new("k3v0x8h2a9").is_some());
        assert!(NodeId::new("").is_none());
        assert!(NodeId::new("a-b").is_none());
        assert!(NodeId::new(&"a".repeat(17)).is_none());
        assert_eq!(id("q9").local_epoch().as_str(), "q9");
    }
}
