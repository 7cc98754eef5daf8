//! The chat room's hub as a sans-IO machine: members, names, deliveries and flow control.
//!
//! The hub decides who gets which line and whether a sender must wait. It reaches the
//! members' outbound queues only through [`Mailboxes`], which each engine implements over
//! its own storage of [`Session`]s (a map of locked sessions for the thread engine, a slab
//! for an event loop), so the policy below exists once.
//!
//! ## Policy
//! * A room message (`MSG`) is delivered to every other member at once or to none: when one
//!   recipient's queue lacks room, that recipient is marked lagging and the operation comes
//!   back [`RoomOutcome::Held`]: the engine stops reading the sender until a lagging member
//!   catches up (drains to half its budget) or is ended `slow-consumer` (lagging for
//!   `--stall`), then offers it again. Every member therefore sees every message, in one
//!   order for the whole room, and a reader that keeps reading is never dropped; a stuck
//!   reader costs the others at most one `--stall` pause.
//! * Room changes (`JOINED`, `LEFT`) are small and happen once per member, so they are
//!   never held: they are queued even over the budget, and a recipient pushed over it is
//!   marked lagging like any other.
//! * At server shutdown the room closes without `LEFT` lines: every member is about to read
//!   `END server-shutdown` itself, and announcing each departure to everyone would cost
//!   members² lines exactly when the server must be quick.
//!
//! ## History, positions and resume (CONTRACT section 7)
//! * Every delivered room message takes the next position `EPOCH:OFFSET` of the room's
//!   stream and is kept in a [`History`] bounded in count and bytes (`--history`). Recording
//!   happens only once the message was delivered, so a held message takes its position when
//!   it finally goes out, after everything delivered before it.
//! * A member that joined with `JOIN NAME SINCE POS` is *positioned*: it gets room messages
//!   as `PUB EPOCH:OFFSET NAME TEXT` instead of `MSG NAME TEXT`. Everyone else sees exactly
//!   the lines of a server without history.
//! * The join answers `WELCOME`, then the replay (`PUB` lines after `POS`, then `SYNCED`) or
//!   `GAP`, all in the one [`Hub::handle_op`] call that makes it a member: nothing can be
//!   delivered between the replay and the first live line, so there is no duplicate, hole
//!   or reordering at the seam. Replay lines are queued even over the budget, like `JOINED`
//!   (history is bounded in bytes); a joiner pushed over it is lagging, so senders wait
//!   while it reads its replay.
//! * A resume token (in `WELCOME`) lets a new connection take a held name over at once
//!   (a vanished member's connection may not be reaped yet): the old connection is ended
//!   `replaced` and the room sees neither `LEFT` nor `JOINED`, since a quick reconnect is
//!   not a change of membership. The token stays the name's until the name leaves the room.
//!
//! [`Session`]: crate::core::session::Session

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Instant;

use crate::core::cluster::{BusCommand, ClusterEvent, ClusterNode, JoinRoute, Route};
use crate::core::history::{History, Kept};
use crate::core::room::{IdHasher, MemberId, Room};
use crate::core::session::{RoomOp, RoomOutcome, Session};
use crate::core::token;
use crate::core::wire::{
    BadLine, EndReason, Epoch, ErrCode, GapReason, Pos, ResumeToken, ServerMsg,
};

/// Access to the members' outbound queues (each member's [`Session`]).
pub trait Mailboxes {
    /// True when `id` is open and its queue has room for `len` more bytes.
    fn has_room(&mut self, id: MemberId, len: usize) -> bool;
    /// `id` lacked room for a line at `now` (starts its flow-control clock).
    fn mark_lagging(&mut self, id: MemberId, now: Instant);
    /// Queues `line` for `id` (dropped if `id` is gone or ending).
    fn push(&mut self, id: MemberId, now: Instant, line: &[u8]);
    /// True while `id`'s session is open (not ending).
    fn is_open(&mut self, id: MemberId) -> bool;
    /// Ends `id`'s session at `now` for `reason` (urgently: its queue is dropped, `END` goes
    /// next) and makes its engine notice. The hub calls it for a connection whose name was
    /// taken over (`replaced`); it is no member any more, so its leave sends no `LEFT`.
    fn end(&mut self, id: MemberId, now: Instant, reason: EndReason);
    /// True when every recipient of `f` but `except` is open and has room for its group's
    /// line (one question for the whole room, so a mailbox can answer it from a summary).
    /// A summary may be stale and say false when all have room by now: the hub then asks
    /// [`Mailboxes::has_room`] member by member, and delivers when none lacks room.
    fn all_have_room(&mut self, f: Fanout<'_>, except: MemberId) -> bool {
        f.groups.iter().all(|(ids, line)| {
            ids.iter()
                .all(|&id| id == except || self.has_room(id, line.len()))
        })
    }
    /// Queues each group's line for its members but `except` (after
    /// [`Mailboxes::all_have_room`] said yes): a mailbox may keep each line once for all.
    fn broadcast(&mut self, f: Fanout<'_>, except: MemberId, now: Instant) {
        for (ids, line) in f.groups {
            for &id in ids {
                if id != except {
                    self.push(id, now, line);
                }
            }
        }
    }
}

impl Mailboxes for std::collections::HashMap<MemberId, Session> {
    fn has_room(&mut self, id: MemberId, len: usize) -> bool {
        self.get(&id).is_some_and(|s| s.has_room(len))
    }
    fn mark_lagging(&mut self, id: MemberId, now: Instant) {
        if let Some(s) = self.get_mut(&id) {
            s.mark_lagging(now);
        }
    }
    fn push(&mut self, id: MemberId, now: Instant, line: &[u8]) {
        if let Some(s) = self.get_mut(&id) {
            s.push(now, line);
        }
    }
    fn is_open(&mut self, id: MemberId) -> bool {
        self.get(&id).is_some_and(Session::is_open)
    }
    fn end(&mut self, id: MemberId, now: Instant, reason: EndReason) {
        if let Some(s) = self.get_mut(&id) {
            s.end(now, reason, true);
        }
    }
}

/// What the hub is configured with: the room's history and stream (issue 13).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubConfig {
    /// Room messages kept for replay (`--history`; 0: none, so no resume can be filled).
    pub history: usize,
    /// Bytes of names and texts kept at most (oldest dropped first; a single message larger
    /// than this is not kept, and the older ones go with it: see [`History`]).
    pub history_bytes: usize,
    /// This run's epoch; the engine picks a new one at every start (the stream is lost).
    pub epoch: Epoch,
    /// Secret seed of the resume tokens (the engine draws it at start; see [`token`]).
    pub token_seed: u128,
}

/// [`HubConfig::history`] by default.
pub const DEFAULT_HISTORY: usize = 1000;

/// [`HubConfig::history_bytes`] by default: 1 MiB.
pub const DEFAULT_HISTORY_BYTES: usize = 1 << 20;

impl Default for HubConfig {
    /// History on at the defaults, epoch `0`, token seed 0 (predictable tokens: engines
    /// that take resumes from the network pass a random seed).
    fn default() -> Self {
        Self {
            history: DEFAULT_HISTORY,
            history_bytes: DEFAULT_HISTORY_BYTES,
            epoch: Epoch::default(),
            token_seed: 0,
        }
    }
}

/// A set of connection numbers hashed like [`IdHasher`] maps.
type IdSet = HashSet<MemberId, std::hash::BuildHasherDefault<IdHasher>>;

/// Something the engine should log. A takeover (resume with a token) is logged as
/// `Left { reason: Replaced }` for the old connection and `Joined` for the new one; the room
/// itself hears nothing of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HubEvent {
    /// `id` joined as `name`.
    Joined {
        /// The member's connection.
        id: MemberId,
        /// Its name.
        name: String,
    },
    /// `id` (known as `name`) left for `reason`.
    Left {
        /// The member's connection.
        id: MemberId,
        /// Its name.
        name: String,
        /// Why.
        reason: EndReason,
    },
    /// Something the cluster reports for the log (link down and up, a node lost, messages
    /// lost, ...); the room's own consequences were handled already.
    Cluster(ClusterEvent),
}

/// The chat room. See the module docs for the policy.
#[derive(Debug)]
pub struct Hub {
    room: Room,
    closed: bool,
    events: VecDeque<HubEvent>,
    /// The room's recipients in their two groups and the lines being delivered.
    fan: Fan,
    /// The room's stream: offsets and the kept messages.
    history: History,
    epoch: Epoch,
    token_seed: u128,
    /// Tokens handed out so far (the next token's number).
    tokens_issued: u64,
    /// The resume token of each name held by a positioned join.
    tokens: HashMap<String, ResumeToken>,
    /// Members that joined with `SINCE` (they get `PUB` instead of `MSG`).
    positioned: IdSet,
    /// Changes whenever `positioned` does.
    positioned_version: u64,
    /// The room's and `positioned`'s versions `fan`'s groups were made from.
    groups_key: Option<(u64, u64)>,
    /// One room across several servers (`--broker`): see [`Hub::with_cluster`].
    cluster: Option<ClusterNode>,
    /// Local joins waiting for their name claim: `None` while pending, then whether it won.
    claims: HashMap<MemberId, Option<bool>>,
    /// Joins whose claim took the name over from another node's member: they join
    /// silently, with the token they presented.
    replacing: IdSet,
    /// The token each pending cluster join of `JOIN NAME SINCE` gets if it joins, drawn
    /// before its claim (the claim keeps it, for a takeover elsewhere to check).
    reserved: HashMap<MemberId, ResumeToken>,
    /// A cluster event not applied yet because a local member lacked room for it.
    held_event: Option<ClusterEvent>,
    /// The newest offset given under the node's own epoch during outages, so a later outage
    /// goes on from there and no position is ever given twice.
    local_last: u64,
    /// The other nodes declared this one lost while its link was up: the engine should
    /// reconnect the link (see [`Hub::take_evicted`]).
    evicted: bool,
}

/// A room line to fan out: each group of recipients with the bytes it gets (`MSG` for
/// legacy members, `PUB` for positioned ones; a group may be empty).
#[derive(Debug, Clone, Copy)]
pub struct Fanout<'a> {
    /// Changes whenever a group's members do, so a mailbox may keep facts about them (each
    /// member's free budget) from one line to the next.
    pub version: u64,
    /// The groups: their members, in name order, and their line.
    pub groups: [(&'a [MemberId], &'a [u8]); 2],
}

/// The room's recipients split into the group that gets `MSG` (legacy members) and the one
/// that gets `PUB` (positioned members), in name order, and the lines being delivered, in
/// buffers reused from one message to the next (relaying allocates nothing per message).
#[derive(Debug, Default)]
struct Fan {
    line: Vec<u8>,
    pub_line: Vec<u8>,
    legacy_ids: Vec<MemberId>,
    pub_ids: Vec<MemberId>,
    /// Changes whenever a group does (see [`Fanout::version`]).
    version: u64,
}

impl Fan {
    /// Offers a room message from `name` at position `pos` to every member but `except`:
    /// `MSG NAME TEXT` and `PUB EPOCH:OFFSET NAME TEXT` are built once each, then queued
    /// for everyone (true) or, when someone lacks room, for nobody, and those lacking room
    /// are marked lagging (false).
    fn offer(
        &mut self,
        pos: (&Epoch, u64),
        name: &str,
        text: &str,
        except: MemberId,
        now: Instant,
        mb: &mut impl Mailboxes,
    ) -> bool {
        self.line.clear();
        for part in [b"MSG ", name.as_bytes(), b" ", text.as_bytes(), b"\n"] {
            self.line.extend_from_slice(part);
        }
        self.pub_line.clear();
        if !self.pub_ids.is_empty() {
            put_pub(&mut self.pub_line, pos.0, pos.1, name, text);
        }
        let f = Fanout {
            version: self.version,
            groups: [
                (&self.legacy_ids, &self.line),
                (&self.pub_ids, &self.pub_line),
            ],
        };
        if !mb.all_have_room(f, except) {
            let mut lagging = false;
            for (ids, line) in f.groups {
                for &id in ids {
                    if id != except && !mb.has_room(id, line.len()) {
                        mb.mark_lagging(id, now);
                        lagging = true;
                    }
                }
            }
            if lagging {
                return false;
            }
            // The summary was stale: every recipient has room now (their writers drained
            // since it was taken). Holding the sender with nobody lagging would leave no one
            // to wake it; the engines' safety net would, a whole hold slice later.
        }
        mb.broadcast(f, except, now);
        true
    }
}

impl Default for Hub {
    fn default() -> Self {
        Self::with_config(HubConfig::default())
    }
}

impl Hub {
    /// An empty, open room with the default [`HubConfig`].
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty, open room configured with `cfg`.
    pub fn with_config(cfg: HubConfig) -> Self {
        Self {
            room: Room::new(),
            closed: false,
            events: VecDeque::new(),
            fan: Fan::default(),
            history: History::new(cfg.history, cfg.history_bytes),
            epoch: cfg.epoch,
            token_seed: cfg.token_seed,
            tokens_issued: 0,
            tokens: HashMap::new(),
            positioned: IdSet::default(),
            positioned_version: 0,
            groups_key: None,
            cluster: None,
            claims: HashMap::new(),
            replacing: IdSet::default(),
            reserved: HashMap::new(),
            held_event: None,
            local_last: 0,
            evicted: false,
        }
    }

    /// This room as one node of a room spread over several servers (docs/CLUSTER.md).
    ///
    /// While `node`'s link is up, a local member's `MSG` is handed to the node (published;
    /// delivered here too when it comes back from the bus, in the room's one order), a `JOIN`
    /// waits for the name's claim, `WHO` lists every node's members, and the history is a
    /// mirror of the cluster stream (positions are the stream's). While it is down, the room
    /// serves its local members alone, with positions under the node's own epoch.
    pub fn with_cluster(mut self, node: ClusterNode) -> Self {
        self.epoch = node.id().local_epoch();
        self.history.restart(0);
        self.cluster = Some(node);
        self
    }

    /// The cluster node, if this room is one ([`Hub::with_cluster`]): the engine feeds it
    /// what the link reports.
    pub fn cluster_mut(&mut self) -> Option<&mut ClusterNode> {
        self.cluster.as_mut()
    }

    /// The next command for the link.
    #[must_use]
    pub fn poll_command(&mut self) -> Option<BusCommand> {
        self.cluster.as_mut()?.poll_command()
    }

    /// When [`Hub::handle_timeout`] has something to do.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.cluster.as_ref()?.poll_timeout()
    }

    /// Time passed: the cluster's refreshes, polls and liveness checks.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(c) = self.cluster.as_mut() {
            c.handle_timeout(now);
        }
    }

    /// Applies what the cluster decided (deliveries, remote joins and leaves, answers to
    /// claims) to the local room, in order. Returns false when a delivery waits for a local
    /// member's room (it is marked lagging, as for a local `MSG`): call again once woken.
    pub fn handle_cluster(&mut self, now: Instant, mb: &mut impl Mailboxes) -> bool {
        loop {
            let ev = match self.held_event.take() {
                Some(ev) => ev,
                None => match self.cluster.as_mut().and_then(ClusterNode::poll_event) {
                    Some(ev) => ev,
                    None => return true,
                },
            };
            if self.closed {
                continue;
            }
            if let Some(ev) = self.apply_cluster(now, ev, mb) {
                self.held_event = Some(ev);
                return false;
            }
        }
    }

    /// Applies one cluster event; gives it back when it must wait for room.
    fn apply_cluster(
        &mut self,
        now: Instant,
        ev: ClusterEvent,
        mb: &mut impl Mailboxes,
    ) -> Option<ClusterEvent> {
        match ev {
            ClusterEvent::Deliver {
                node,
                name,
                text,
                offset,
                deliver,
            } => {
                let own = self.cluster.as_ref().is_some_and(|c| c.is_own(&node));
                if !deliver {
                    self.record_cluster(offset, &name, &text);
                    return None;
                }
                // The sender does not get its own line back, as on one node.
                let except = if own { self.room.id_of(&name) } else { None };
                let except = except.unwrap_or(MemberId::MAX);
                self.refresh_groups();
                let pos = match offset {
                    Some(o) if self.is_cluster_epoch() => o,
                    _ => self.history.next_offset(),
                };
                if !self
                    .fan
                    .offer((&self.epoch, pos), &name, &text, except, now, mb)
                {
                    return Some(ClusterEvent::Deliver {
                        node,
                        name,
                        text,
                        offset,
                        deliver,
                    });
                }
                self.record_cluster(offset, &name, &text);
            }
            ClusterEvent::Joined { name } => {
                let line = ServerMsg::Joined(name).encode();
                for &to in self.room.members() {
                    push_control(mb, to, now, line.as_bytes());
                }
            }
            ClusterEvent::Left { name, reason } => {
                let line = ServerMsg::Left { name, reason }.encode();
                for &to in self.room.members() {
                    push_control(mb, to, now, line.as_bytes());
                }
            }
            ClusterEvent::JoinAnswer {
                conn, ok, replaced, ..
            } => {
                if let Some(answer) = self.claims.get_mut(&conn) {
                    *answer = Some(ok);
                    if ok && replaced {
                        self.replacing.insert(conn);
                    }
                }
            }
            ClusterEvent::Replaced { conn, name } => {
                // The member goes on on another node: its connection here ends, and the
                // room hears nothing (the other nodes' rooms neither).
                mb.end(conn, now, EndReason::Replaced);
                if self.room.handle_leave(conn, EndReason::Replaced).is_some() {
                    self.tokens.remove(&name);
                    self.positioned_version += self.positioned.remove(&conn) as u64;
                    self.events.push_back(HubEvent::Left {
                        id: conn,
                        name,
                        reason: EndReason::Replaced,
                    });
                }
            }
            ClusterEvent::NameLost { conn, name } => {
                // The claim in Redis is older than this member's (made while we were cut
                // off): the member goes, and only this node's room ever knew it.
                mb.end(conn, now, EndReason::NameTaken);
                self.handle_leave(now, conn, EndReason::NameTaken, mb);
                self.events
                    .push_back(HubEvent::Cluster(ClusterEvent::NameLost { conn, name }));
            }
            other => {
                self.evicted |= matches!(other, ClusterEvent::Evicted);
                if matches!(
                    other,
                    ClusterEvent::LinkUp
                        | ClusterEvent::LinkDown
                        | ClusterEvent::EpochChanged { .. }
                ) {
                    self.sync_epoch();
                }
                self.events.push_back(HubEvent::Cluster(other));
            }
        }
        None
    }

    /// True once after the other nodes declared this one lost while its link was up: the
    /// engine reconnects the link (down, then up), so the node takes a fresh id.
    pub fn take_evicted(&mut self) -> bool {
        std::mem::take(&mut self.evicted)
    }

    /// True while the history mirrors the cluster stream (the link is up).
    fn is_cluster_epoch(&self) -> bool {
        self.cluster.as_ref().is_some_and(ClusterNode::is_up)
    }

    /// Records a delivered cluster message: at its stream offset while mirroring the stream,
    /// else (delivered locally during an outage) at the next local position.
    fn record_cluster(&mut self, offset: Option<u64>, name: &str, text: &str) {
        match offset {
            Some(o) if self.is_cluster_epoch() => self.history.record_at(o, name, text),
            Some(_) => {}
            None => {
                self.history.record(name, text);
            }
        }
    }

    /// Follows the cluster: the stream's epoch and offsets while the link is up, the node's
    /// own epoch (going on from its last outage) while it is down. Switching forgets the
    /// kept messages: a resume across the switch hears `GAP epoch-changed`.
    fn sync_epoch(&mut self) {
        let Some(c) = &self.cluster else {
            return;
        };
        let (epoch, last) = match c.stream_pos().filter(|_| c.is_up()) {
            Some(p) => (p.epoch, p.offset),
            None => (c.id().local_epoch(), self.local_last),
        };
        if epoch == self.epoch {
            return;
        }
        if !self.is_cluster_epoch() || self.epoch == c.id().local_epoch() {
            self.local_last = self.local_last.max(self.history.last());
        }
        self.epoch = epoch;
        self.history.restart(last);
    }

    /// A local join in a cluster: `None` to go on with the join here (the name is ours, or
    /// the link is down and nobody known holds it), else what to answer now.
    fn cluster_join(
        &mut self,
        now: Instant,
        from: MemberId,
        name: &str,
        op: &RoomOp,
    ) -> Option<RoomOutcome> {
        self.cluster.as_ref()?;
        match self.claims.get(&from) {
            Some(None) => return Some(RoomOutcome::Held(op.clone())),
            Some(Some(true)) => {
                self.claims.remove(&from);
                return None;
            }
            Some(Some(false)) => {
                self.claims.remove(&from);
                self.reserved.remove(&from);
                return Some(RoomOutcome::Refused(name_taken(name)));
            }
            None => {}
        }
        // The same refusals as on one node first (bad name, already joined, taken here).
        if let Err(bad) = self.room.check_join(from, name) {
            return Some(RoomOutcome::Refused(bad));
        }
        let route = match op {
            RoomOp::JoinSince { token, .. } => {
                let fresh = self.next_token();
                let presented = token.as_ref().map(|t| t.as_str().to_owned());
                let route = self.cluster.as_mut()?.request_join_since(
                    now,
                    from,
                    name,
                    presented.as_deref(),
                    Some(fresh.as_str()),
                );
                self.reserved.insert(from, fresh);
                route
            }
            _ => self.cluster.as_mut()?.request_join(now, from, name),
        };
        match route {
            JoinRoute::Joined => None,
            JoinRoute::Taken => {
                self.reserved.remove(&from);
                Some(RoomOutcome::Refused(name_taken(name)))
            }
            JoinRoute::Claiming => {
                self.claims.insert(from, None);
                Some(RoomOutcome::Held(op.clone()))
            }
        }
    }

    /// A fresh resume token (the next of this node's series).
    fn next_token(&mut self) -> ResumeToken {
        self.tokens_issued += 1;
        token::derive(self.token_seed, self.tokens_issued - 1)
    }

    /// The room's stream and its kept messages.
    pub fn history(&self) -> &History {
        &self.history
    }

    /// Where the room's stream stands: the newest message's position (offset 0 if none).
    pub fn last_pos(&self) -> Pos {
        Pos {
            epoch: self.epoch.clone(),
            offset: self.history.last(),
        }
    }

    /// Members in the room.
    pub fn len(&self) -> usize {
        self.room.len()
    }

    /// True when nobody has joined.
    pub fn is_empty(&self) -> bool {
        self.room.is_empty()
    }

    /// Members' names in name order.
    pub fn names(&self) -> Vec<String> {
        self.room.names()
    }

    /// True when `id` is a member.
    pub fn is_member(&self, id: MemberId) -> bool {
        self.room.name_of(id).is_some()
    }

    /// Handles a chat line of member `from` at `now`; see [`RoomOutcome`].
    pub fn handle_op(
        &mut self,
        now: Instant,
        from: MemberId,
        op: RoomOp,
        mb: &mut impl Mailboxes,
    ) -> RoomOutcome {
        if self.closed {
            return RoomOutcome::Done;
        }
        match op {
            // Nothing is handled for a connection whose end state began: above all, it must
            // not take a name after its LEFT (that name would stay taken for good).
            RoomOp::Join(_) if !mb.is_open(from) => RoomOutcome::Done,
            RoomOp::Join(name) => {
                if let Some(o) = self.cluster_join(now, from, &name, &RoomOp::Join(name.clone())) {
                    return o;
                }
                self.join_here(now, from, name, mb)
            }
            RoomOp::Who => RoomOutcome::Reply(ServerMsg::Members(match &self.cluster {
                Some(c) => c.names(),
                None => self.room.names(),
            })),
            RoomOp::JoinSince { name, since, token } => {
                self.handle_join_since(now, from, name, since, token, mb)
            }
            RoomOp::History(n) => self.handle_history(now, from, n, mb),
            RoomOp::Msg(text) => {
                // One node: no lookup here (the relay's hot path pays nothing for clusters).
                if let Some(c) = self.cluster.as_mut() {
                    if self.room.name_of(from).is_some() {
                        match c.handle_local_msg(now, from, &text) {
                            // Delivered here too when it comes back from the bus.
                            Route::Bus => return RoomOutcome::Done,
                            Route::Wait => return RoomOutcome::Held(RoomOp::Msg(text)),
                            Route::Local | Route::NotMember => {}
                        }
                    }
                }
                self.deliver_here(now, from, text, mb)
            }
        }
    }

    /// A plain `JOIN` taking effect in this room.
    fn join_here(
        &mut self,
        now: Instant,
        from: MemberId,
        name: String,
        mb: &mut impl Mailboxes,
    ) -> RoomOutcome {
        match self.room.handle_join(from, &name) {
            Err(bad) => RoomOutcome::Refused(bad),
            Ok(joined) => {
                let line = joined.msg.encode();
                for &to in &joined.to {
                    push_control(mb, to, now, line.as_bytes());
                }
                self.events.push_back(HubEvent::Joined { id: from, name });
                RoomOutcome::Done
            }
        }
    }

    /// A room message from `from` delivered by this room itself (one node, or a cluster
    /// node whose link is down).
    fn deliver_here(
        &mut self,
        now: Instant,
        from: MemberId,
        text: String,
        mb: &mut impl Mailboxes,
    ) -> RoomOutcome {
        self.refresh_groups();
        let Some(name) = self.room.name_of(from) else {
            return match self.room.handle_msg(from, &text) {
                Err(bad) => RoomOutcome::Refused(bad),
                Ok(_) => RoomOutcome::Done,
            };
        };
        // Only offered: a held text goes back to the sender untouched.
        let pos = (&self.epoch, self.history.next_offset());
        if !self.fan.offer(pos, name, &text, from, now, mb) {
            return RoomOutcome::Held(RoomOp::Msg(text));
        }
        // Delivered: only now does it take its position in the stream.
        self.history.record(name, &text);
        RoomOutcome::Done
    }

    /// Splits the members into the legacy and the positioned group of a [`Fanout`] when
    /// either changed since the last message.
    fn refresh_groups(&mut self) {
        let key = (self.room.version(), self.positioned_version);
        if self.groups_key == Some(key) {
            return;
        }
        self.groups_key = Some(key);
        let fan = &mut self.fan;
        fan.version += 1;
        fan.legacy_ids.clear();
        fan.pub_ids.clear();
        for &id in self.room.members() {
            if self.positioned.contains(&id) {
                fan.pub_ids.push(id);
            } else {
                fan.legacy_ids.push(id);
            }
        }
    }

    /// Member `id` is gone for `reason`: the others hear `LEFT NAME REASON` (not after the
    /// room closed). Does nothing for a connection that never joined.
    pub fn handle_leave(
        &mut self,
        now: Instant,
        id: MemberId,
        reason: EndReason,
        mb: &mut impl Mailboxes,
    ) {
        self.positioned_version += self.positioned.remove(&id) as u64;
        self.claims.remove(&id);
        self.replacing.remove(&id);
        self.reserved.remove(&id);
        if let Some(c) = self.cluster.as_mut() {
            c.handle_local_leave(now, id, reason);
        }
        let Some(left) = self.room.handle_leave(id, reason) else {
            return;
        };
        if let ServerMsg::Left { name, .. } = &left.msg {
            self.tokens.remove(name);
        }
        let line = left.msg.encode();
        for &to in &left.to {
            push_control(mb, to, now, line.as_bytes());
        }
        if let ServerMsg::Left { name, .. } = left.msg {
            self.events.push_back(HubEvent::Left { id, name, reason });
        }
    }

    /// The server shuts down: the room closes at once, without `LEFT` lines (each member
    /// reads `END server-shutdown` instead). Returns how many members it had.
    pub fn handle_shutdown(&mut self, now: Instant) -> usize {
        self.closed = true;
        let n = self.room.len();
        // The other nodes hear each member leave (`LEFT NAME server-shutdown`) now, rather
        // than `node-lost` after the node timeout.
        if let Some(c) = self.cluster.as_mut() {
            for &id in self.room.members() {
                c.handle_local_leave(now, id, EndReason::ServerShutdown);
            }
        }
        self.room.clear();
        self.positioned.clear();
        self.positioned_version += 1;
        self.tokens.clear();
        n
    }

    /// `JOIN NAME SINCE POS [TOKEN]` from `from`: a takeover if `token` is the token of the
    /// member holding `name`, else a join like `JOIN NAME` (`JOINED` to the others, the same
    /// refusals); then `WELCOME` and the replay from `since`.
    fn handle_join_since(
        &mut self,
        now: Instant,
        from: MemberId,
        name: String,
        since: Option<Pos>,
        token: Option<ResumeToken>,
        mb: &mut impl Mailboxes,
    ) -> RoomOutcome {
        // As for JOIN: nothing for a connection whose end state began.
        if !mb.is_open(from) {
            return RoomOutcome::Done;
        }
        let holder = self.room.id_of(&name);
        let local_takeover = match (holder, &token) {
            (Some(old), Some(t)) => old != from && self.tokens.get(&name) == Some(t),
            _ => false,
        };
        // In a cluster a join needs the name's claim; a takeover on this node keeps the
        // claim it has (the name stays this node's).
        if !local_takeover {
            let op = RoomOp::JoinSince {
                name: name.clone(),
                since: since.clone(),
                token: token.clone(),
            };
            if let Some(o) = self.cluster_join(now, from, &name, &op) {
                return o;
            }
        }
        let takeover = match (holder, &token) {
            (Some(old), Some(t)) => {
                old != from
                    && self.room.name_of(from).is_none()
                    && self.tokens.get(&name) == Some(t)
            }
            _ => false,
        };
        let remote_takeover = self.replacing.remove(&from);
        let token = if let (true, Some(old)) = (takeover, holder) {
            self.room.take_over(old, from);
            if let Some(c) = self.cluster.as_mut() {
                c.handle_local_takeover(now, old, from);
            }
            self.positioned.remove(&old);
            self.positioned_version += 1;
            mb.end(old, now, EndReason::Replaced);
            self.events.push_back(HubEvent::Left {
                id: old,
                name: name.clone(),
                reason: EndReason::Replaced,
            });
            self.events.push_back(HubEvent::Joined {
                id: from,
                name: name.clone(),
            });
            // The name keeps its token, so the client can resume again with it.
            token.unwrap_or_else(|| unreachable!("a takeover has a token"))
        } else if let (true, Some(t)) = (remote_takeover, token.clone()) {
            // Taken over from another node's member (its claim carried this token): the
            // room knew the name already, so it hears nothing; the old connection there
            // ends `END replaced`.
            self.reserved.remove(&from);
            if let Err(bad) = self.room.handle_join(from, &name) {
                return RoomOutcome::Refused(bad);
            }
            self.events.push_back(HubEvent::Joined {
                id: from,
                name: name.clone(),
            });
            self.tokens.insert(name.clone(), t.clone());
            t
        } else {
            // Already joined, a taken name (whatever the token) or a bad one: refused as
            // for JOIN. A free name is a plain join with a fresh token.
            match self.room.handle_join(from, &name) {
                Err(bad) => return RoomOutcome::Refused(bad),
                Ok(joined) => {
                    let line = joined.msg.encode();
                    for &to in &joined.to {
                        push_control(mb, to, now, line.as_bytes());
                    }
                    self.events.push_back(HubEvent::Joined {
                        id: from,
                        name: name.clone(),
                    });
                }
            }
            // In a cluster the token was drawn before the claim, which keeps it.
            let t = match self.reserved.remove(&from) {
                Some(t) => t,
                None => self.next_token(),
            };
            self.tokens.insert(name.clone(), t.clone());
            t
        };
        self.positioned.insert(from);
        self.positioned_version += 1;
        let last = self.last_pos();
        let welcome = ServerMsg::Welcome {
            name,
            last: last.clone(),
            token,
        };
        push_control(mb, from, now, welcome.encode().as_bytes());
        let gap = match since {
            None => None,
            Some(p) if p.epoch != self.epoch => Some(GapReason::EpochChanged),
            Some(p) => match self.history.after(p.offset) {
                Err(_) => Some(GapReason::TooOld),
                Ok(kept) => {
                    replay(&mut self.fan.line, &self.epoch, kept, last, mb, from, now);
                    return RoomOutcome::Done;
                }
            },
        };
        let end = match gap {
            Some(reason) => ServerMsg::Gap { reason, last },
            None => ServerMsg::Synced { last, count: 0 },
        };
        push_control(mb, from, now, end.encode().as_bytes());
        RoomOutcome::Done
    }

    /// `HISTORY N` from `from` (a member or not): the newest `n` kept messages as `PUB`
    /// lines, then `SYNCED`.
    fn handle_history(
        &mut self,
        now: Instant,
        from: MemberId,
        n: u32,
        mb: &mut impl Mailboxes,
    ) -> RoomOutcome {
        if !mb.is_open(from) {
            return RoomOutcome::Done;
        }
        let last = self.last_pos();
        let kept = self.history.newest(n as usize);
        replay(&mut self.fan.line, &self.epoch, kept, last, mb, from, now);
        RoomOutcome::Done
    }

    /// The next thing to log.
    pub fn poll_event(&mut self) -> Option<HubEvent> {
        self.events.pop_front()
    }
}

/// Writes `PUB EPOCH:OFFSET FROM TEXT\n` into `buf` (cleared first; no allocation once it
/// has grown), exactly as [`ServerMsg::Pub`] encodes it.
fn put_pub(buf: &mut Vec<u8>, epoch: &Epoch, offset: u64, from: &str, text: &str) {
    use std::io::Write;
    buf.clear();
    let _ = writeln!(buf, "PUB {epoch}:{offset} {from} {text}");
}

/// Queues `kept` for `to` as `PUB` lines (built in `buf`), then `SYNCED LAST COUNT`: a
/// resume's replay or a `HISTORY` answer, queued even over the budget like a room change
/// (history is bounded in bytes).
fn replay<'a>(
    buf: &mut Vec<u8>,
    epoch: &Epoch,
    kept: impl Iterator<Item = Kept<'a>>,
    last: Pos,
    mb: &mut impl Mailboxes,
    to: MemberId,
    now: Instant,
) {
    let mut count = 0;
    for k in kept {
        put_pub(buf, epoch, k.offset, k.from, k.text);
        push_control(mb, to, now, buf);
        count += 1;
    }
    let synced = ServerMsg::Synced { last, count };
    push_control(mb, to, now, synced.encode().as_bytes());
}

/// Queues a room change even over the budget (it is small and happens once per member),
/// marking a recipient pushed over the budget as lagging.
/// The refusal of a name another node's member holds (or won the claim for).
fn name_taken(name: &str) -> BadLine {
    BadLine {
        code: ErrCode::NameTaken,
        detail: format!("{name} is taken"),
    }
}

fn push_control(mb: &mut impl Mailboxes, to: MemberId, now: Instant, line: &[u8]) {
    if !mb.has_room(to, line.len()) {
        mb.mark_lagging(to, now);
    }
    mb.push(to, now, line);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Mode;
    use crate::core::heartbeat::HeartbeatConfig;
    use crate::core::session::{Close, Input, SessionConfig};
    use std::collections::HashMap;
    use std::time::Duration;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn cfg() -> SessionConfig {
        SessionConfig {
            mode: Mode::Chat,
            heartbeat: HeartbeatConfig::new(Duration::from_secs(30), Duration::from_secs(10), 3)
                .unwrap(),
            max_line: 1024,
            queue: 4096,
            stall: ms(500),
            rate: None,
            tls: false,
            auth: None,
            handshake: Duration::from_secs(10),
        }
    }

    /// A room of sessions driven like an engine would, with simulated time.
    struct Sim {
        t: Instant,
        hub: Hub,
        s: HashMap<MemberId, Session>,
        /// Lines each member's client has read, HELLO excluded.
        got: HashMap<MemberId, Vec<String>>,
        /// Bytes taken for writing and not yet read by the client (the socket).
        wire: HashMap<MemberId, Vec<u8>>,
        /// Bytes of an unfinished line the client has read.
        partial: HashMap<MemberId, Vec<u8>>,
    }

    impl Sim {
        fn new(names: &[&str]) -> Self {
            Self::with(HubConfig::default(), names)
        }

        /// A room with `hub` settings and `names` joined (plain `JOIN`) as members 1, 2, ...
        fn with(hub: HubConfig, names: &[&str]) -> Self {
            let t = Instant::now();
            let mut sim = Self {
                t,
                hub: Hub::with_config(hub),
                s: HashMap::new(),
                got: HashMap::new(),
                wire: HashMap::new(),
                partial: HashMap::new(),
            };
            for (i, name) in names.iter().enumerate() {
                let id = i as MemberId + 1;
                sim.s.insert(id, Session::new(cfg(), t, Duration::ZERO));
                sim.read(id, usize::MAX);
                sim.got.get_mut(&id).unwrap().clear();
                let _ = sim.rx(id, &format!("JOIN {name}\n"));
            }
            for id in 1..=names.len() as MemberId {
                sim.read(id, usize::MAX);
                sim.got.get_mut(&id).unwrap().clear();
            }
            sim
        }

        /// Bytes from `id`'s client; handles input until it needs more bytes or is held.
        /// Returns the last input state.
        fn rx(&mut self, id: MemberId, bytes: &str) -> Input {
            self.s
                .get_mut(&id)
                .unwrap()
                .handle_rx(self.t, bytes.as_bytes());
            self.pump(id)
        }

        fn pump(&mut self, id: MemberId) -> Input {
            loop {
                let input = self.s.get_mut(&id).unwrap().poll_input(self.t);
                match input {
                    Input::Room(op) => {
                        let out = self.hub.handle_op(self.t, id, op, &mut self.s);
                        let held = matches!(out, RoomOutcome::Held(_));
                        self.s.get_mut(&id).unwrap().handle_room(self.t, out);
                        if held {
                            return Input::Held;
                        }
                    }
                    other => return other,
                }
            }
        }

        /// `id`'s client reads up to `max` bytes; true when a lag ended.
        fn read(&mut self, id: MemberId, max: usize) -> bool {
            let s = self.s.get_mut(&id).unwrap();
            let wire = self.wire.entry(id).or_default();
            let partial = self.partial.entry(id).or_default();
            let got = self.got.entry(id).or_default();
            let mut caught_up = false;
            let mut left = max;
            while left > 0 {
                if wire.is_empty() && s.poll_transmit(wire) == 0 {
                    break;
                }
                let k = left.min(wire.len());
                partial.extend(wire.drain(..k));
                left -= k;
                caught_up |= s.handle_written(self.t, k);
                while let Some(i) = partial.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = partial.drain(..=i).collect();
                    got.push(String::from_utf8(line).unwrap().trim_end().to_owned());
                }
            }
            caught_up
        }

        /// A new connection `id`, its HELLO read, not joined.
        fn connect(&mut self, id: MemberId) {
            self.s
                .insert(id, Session::new(cfg(), self.t, Duration::ZERO));
            self.read(id, usize::MAX);
            self.got.get_mut(&id).unwrap().clear();
        }

        /// Everything `id`'s client reads now (all it has been sent), taken out of `got`.
        fn take(&mut self, id: MemberId) -> Vec<String> {
            self.read(id, usize::MAX);
            std::mem::take(self.got.get_mut(&id).unwrap())
        }

        /// `id` sends `MSG text`; it must go out at once.
        fn say(&mut self, id: MemberId, text: &str) {
            assert_eq!(self.rx(id, &format!("MSG {text}\n")), Input::NeedBytes);
        }

        /// `id`'s client closed its connection; the engine makes it leave the room.
        fn cut(&mut self, id: MemberId) {
            self.s.get_mut(&id).unwrap().handle_closed(self.t);
            self.hub
                .handle_leave(self.t, id, EndReason::Closed, &mut self.s);
        }

        /// Time passes: every session's timers run; ended members leave the room.
        fn advance(&mut self, d: Duration) {
            self.t += d;
            let ids: Vec<MemberId> = self.s.keys().copied().collect();
            for id in ids {
                let s = self.s.get_mut(&id).unwrap();
                let was_open = s.is_open();
                s.handle_flow_timeout(self.t);
                if was_open {
                    if let Some(reason) = s.end_reason() {
                        self.hub.handle_leave(self.t, id, reason, &mut self.s);
                    }
                }
            }
        }
    }

    #[test]
    fn a_fast_sender_is_held_while_a_reader_that_keeps_up_catches_up() {
        let mut sim = Sim::new(&["ann", "bob"]);
        let mut sent = 0;
        // ann sends 2,000 messages as fast as the hub takes them; bob reads 1 KiB per ms.
        while sent < 2000 {
            match sim.rx(1, &format!("MSG {sent:05} {}\n", "x".repeat(80))) {
                Input::NeedBytes => sent += 1,
                Input::Held => {
                    sim.t += ms(1);
                    sim.read(2, 1024);
                    // Held: offer it again (the engine does this when woken).
                    while sim.pump(1) == Input::Held {
                        sim.t += ms(1);
                        sim.read(2, 1024);
                        sim.advance(Duration::ZERO);
                    }
                    sent += 1;
                }
                other => panic!("{other:?}"),
            }
        }
        sim.read(2, usize::MAX);
        assert!(sim.s[&2].is_open(), "bob keeps up and is never ended");
        let got = &sim.got[&2];
        assert_eq!(got.len(), 2000, "nothing lost");
        for (i, l) in got.iter().enumerate() {
            assert!(l.starts_with(&format!("MSG ann {i:05} ")), "in order: {l}");
        }
        assert!(sim.s[&2].queued() <= 4096, "bounded");
    }

    #[test]
    fn a_stuck_reader_is_ended_after_stall_and_the_others_go_on() {
        let mut sim = Sim::new(&["ann", "bob", "cy"]);
        let start = sim.t;
        let mut sent = 0;
        let mut held_at = None;
        while sent < 500 {
            let line = format!("MSG {sent:04} {}\n", "y".repeat(60));
            let mut input = sim.rx(1, &line);
            while input == Input::Held {
                held_at.get_or_insert(sim.t);
                sim.advance(ms(10));
                sim.read(2, usize::MAX); // bob reads everything; cy (3) never reads
                input = sim.pump(1);
            }
            sim.read(2, usize::MAX);
            sent += 1;
        }
        let held_at = held_at.expect("the stuck reader held ann back");
        assert_eq!(sim.s[&3].end_reason(), Some(EndReason::SlowConsumer));
        let ended_after = sim.t - held_at;
        assert!(ended_after < ms(600), "{ended_after:?}");
        assert!(sim.t - start < ms(700));
        let bob = &sim.got[&2];
        assert_eq!(bob.iter().filter(|l| l.starts_with("MSG ann")).count(), 500);
        assert!(bob.contains(&"LEFT cy slow-consumer".to_owned()), "{bob:?}");
        assert!(
            !sim.hub.names().contains(&"cy".to_owned()),
            "the name is free"
        );
        let mut buf = Vec::new();
        let _ = sim.s.get_mut(&3).unwrap().poll_transmit(&mut buf);
        assert_eq!(buf, b"END slow-consumer\n", "END goes first once cy reads");
    }

    #[test]
    fn a_slow_reader_that_cannot_catch_up_is_ended() {
        let mut sim = Sim::new(&["ann", "bob"]);
        let mut input = Input::NeedBytes;
        let mut n = 0;
        while sim.s[&2].is_open() {
            if input != Input::Held {
                input = sim.rx(1, &format!("MSG {n} {}\n", "z".repeat(80)));
                n += 1;
                continue;
            }
            // bob reads 10 bytes every 10 ms: far slower than ann sends.
            sim.advance(ms(10));
            sim.read(2, 10);
            input = sim.pump(1);
            assert!(sim.t < Instant::now() + ms(5000), "never ended");
        }
        assert_eq!(sim.s[&2].end_reason(), Some(EndReason::SlowConsumer));
        assert_eq!(sim.pump(1), Input::NeedBytes, "ann goes on");
    }

    #[test]
    fn shutdown_closes_the_room_without_left_lines() {
        let mut sim = Sim::new(&["ann", "bob", "cy"]);
        assert_eq!(sim.hub.handle_shutdown(Instant::now()), 3);
        for id in 1..=3 {
            sim.s
                .get_mut(&id)
                .unwrap()
                .end(sim.t, EndReason::ServerShutdown, true);
            sim.hub
                .handle_leave(sim.t, id, EndReason::ServerShutdown, &mut sim.s);
        }
        for id in 1..=3 {
            sim.read(id, usize::MAX);
            assert_eq!(sim.got[&id], vec!["END server-shutdown".to_owned()]);
            assert_eq!(
                sim.s[&id].poll_close(),
                Some(Close::AfterEnd(EndReason::ServerShutdown))
            );
        }
    }

    /// Mailboxes whose room-wide summary is always stale: "someone lacks room".
    struct Stale<'a>(&'a mut HashMap<MemberId, Session>);

    impl Mailboxes for Stale<'_> {
        fn has_room(&mut self, id: MemberId, len: usize) -> bool {
            self.0.has_room(id, len)
        }
        fn mark_lagging(&mut self, id: MemberId, now: Instant) {
            self.0.mark_lagging(id, now);
        }
        fn push(&mut self, id: MemberId, now: Instant, line: &[u8]) {
            self.0.push(id, now, line);
        }
        fn is_open(&mut self, id: MemberId) -> bool {
            self.0.is_open(id)
        }
        fn end(&mut self, id: MemberId, now: Instant, reason: EndReason) {
            self.0.end(id, now, reason);
        }
        fn all_have_room(&mut self, _: Fanout<'_>, _: MemberId) -> bool {
            false
        }
    }

    #[test]
    fn a_stale_summary_with_room_for_everyone_delivers_instead_of_holding() {
        // The relay's summary is taken per batch; a recipient's writer may drain its queue
        // meanwhile. Holding the sender then would leave nobody lagging to wake it.
        let mut sim = Sim::new(&["ann", "bob"]);
        let out = sim
            .hub
            .handle_op(sim.t, 1, RoomOp::Msg("hi".into()), &mut Stale(&mut sim.s));
        assert_eq!(out, RoomOutcome::Done);
        assert_eq!(sim.take(2), vec!["MSG ann hi".to_owned()]);
        assert_eq!(sim.s[&2].lagging_since(), None);
        assert_eq!(sim.hub.history.last(), 1, "it took its position");
        // A recipient that really lacks room still holds the sender, and is lagging.
        let full = "x".repeat(cfg().queue);
        sim.s.get_mut(&2).unwrap().push(sim.t, full.as_bytes());
        let out = sim.hub.handle_op(
            sim.t,
            1,
            RoomOp::Msg("again".into()),
            &mut Stale(&mut sim.s),
        );
        assert!(matches!(out, RoomOutcome::Held(_)));
        assert_eq!(sim.s[&2].lagging_since(), Some(sim.t));
    }

    #[test]
    fn nothing_is_handled_after_the_end_state_began() {
        let mut sim = Sim::new(&["ann"]);
        sim.s.insert(9, Session::new(cfg(), sim.t, Duration::ZERO));
        sim.s
            .get_mut(&9)
            .unwrap()
            .end(sim.t, EndReason::SlowConsumer, true);
        let out = sim
            .hub
            .handle_op(sim.t, 9, RoomOp::Join("ghost".into()), &mut sim.s);
        assert_eq!(out, RoomOutcome::Done);
        assert_eq!(sim.hub.names(), vec!["ann".to_owned()], "no JOINED ghost");
        sim.read(1, usize::MAX);
        assert!(sim.got[&1].is_empty());
    }

    #[test]
    fn joins_leaves_and_who() {
        let mut sim = Sim::new(&["ann", "bob"]);
        sim.read(1, usize::MAX);
        assert_eq!(sim.rx(2, "WHO\nJOIN x\nJOIN ann\n"), Input::NeedBytes);
        sim.read(2, usize::MAX);
        assert_eq!(sim.got[&2][0], "MEMBERS ann bob");
        assert!(sim.got[&2][1].starts_with("ERR already-joined"));
        assert!(sim.got[&2][2].starts_with("ERR already-joined"));
        sim.s.get_mut(&2).unwrap().handle_closed(sim.t);
        sim.hub
            .handle_leave(sim.t, 2, EndReason::Closed, &mut sim.s);
        sim.read(1, usize::MAX);
        assert_eq!(sim.got[&1], vec!["LEFT bob closed".to_owned()]);
        let evs: Vec<_> = std::iter::from_fn(|| sim.hub.poll_event()).collect();
        assert!(evs.contains(&HubEvent::Left {
            id: 2,
            name: "bob".into(),
            reason: EndReason::Closed
        }));
    }

    fn hub_cfg(history: usize, epoch: &str) -> HubConfig {
        HubConfig {
            history,
            history_bytes: 1 << 20,
            epoch: Epoch::new(epoch).unwrap(),
            token_seed: 0x5eed,
        }
    }

    fn strs(lines: &[&str]) -> Vec<String> {
        lines.iter().map(|l| (*l).to_owned()).collect()
    }

    /// The token in a `WELCOME` line.
    fn token_of(line: &str) -> String {
        match ServerMsg::parse(line.as_bytes()) {
            Ok(ServerMsg::Welcome { token, .. }) => token.as_str().to_owned(),
            other => panic!("not a WELCOME: {line} ({other:?})"),
        }
    }

    #[test]
    fn resume_from_the_middle_from_the_end_and_from_nothing() {
        // ann (1) sends, cy (2) is a legacy member.
        let mut sim = Sim::with(hub_cfg(1000, "e1"), &["ann", "cy"]);
        sim.connect(3);
        assert_eq!(sim.rx(3, "JOIN bob SINCE -\n"), Input::NeedBytes);
        let got = sim.take(3);
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(got[0].starts_with("WELCOME bob e1:0 "), "{got:?}");
        assert_eq!(got[1], "SYNCED e1:0 0");
        assert_eq!(sim.take(1), strs(&["JOINED bob"]));
        assert_eq!(sim.take(2), strs(&["JOINED bob"]));
        for i in 1..=10 {
            sim.say(1, &format!("m{i}"));
        }
        let pubs: Vec<String> = (1..=10).map(|i| format!("PUB e1:{i} ann m{i}")).collect();
        assert_eq!(sim.take(3), pubs);
        let msgs: Vec<String> = (1..=10).map(|i| format!("MSG ann m{i}")).collect();
        assert_eq!(
            sim.take(2),
            msgs,
            "the legacy member sees MSG for the same messages"
        );
        // bob's connection dies and is reaped (the room hears LEFT): the name is free, so
        // the resume is a plain join that replays what bob missed after offset 5.
        sim.cut(3);
        assert_eq!(sim.take(1), strs(&["LEFT bob closed"]));
        sim.connect(4);
        let _ = sim.rx(4, "JOIN bob SINCE e1:5\n");
        let got = sim.take(4);
        assert!(got[0].starts_with("WELCOME bob e1:10 "), "{got:?}");
        assert_eq!(got[1..6], pubs[5..10]);
        assert_eq!(got[6..], strs(&["SYNCED e1:10 5"]));
        assert_eq!(sim.take(2), strs(&["LEFT bob closed", "JOINED bob"]));
        // At the end: nothing to replay.
        sim.connect(5);
        let _ = sim.rx(5, "JOIN dan SINCE e1:10\n");
        let got = sim.take(5);
        assert!(got[0].starts_with("WELCOME dan e1:10 "));
        assert_eq!(got[1..], strs(&["SYNCED e1:10 0"]));
        // From offset 0 of this epoch: everything.
        sim.connect(6);
        let _ = sim.rx(6, "JOIN eve SINCE e1:0\n");
        let got = sim.take(6);
        assert_eq!(got[1..11], pubs[..]);
        assert_eq!(got[11], "SYNCED e1:10 10");
        // Live lines follow at once, PUB to every positioned member, MSG to the legacy one.
        sim.say(1, "m11");
        for id in [4, 5, 6] {
            assert_eq!(sim.take(id).last().unwrap(), "PUB e1:11 ann m11");
        }
        let cy = sim.take(2);
        assert_eq!(cy[cy.len() - 1], "MSG ann m11");
    }

    #[test]
    fn a_resume_too_old_or_from_another_epoch_gets_a_gap_then_live_lines() {
        let mut sim = Sim::with(hub_cfg(3, "e2"), &["ann"]);
        for i in 1..=10 {
            sim.say(1, &format!("m{i}"));
        }
        let join = |sim: &mut Sim, id, since: &str| {
            sim.connect(id);
            let _ = sim.rx(id, &format!("JOIN u{id} SINCE {since}\n"));
            let mut got = sim.take(id);
            assert!(
                got[0].starts_with(&format!("WELCOME u{id} e2:10 ")),
                "{got:?}"
            );
            got.remove(0);
            got
        };
        assert_eq!(join(&mut sim, 2, "e2:5"), strs(&["GAP too-old e2:10"]));
        assert_eq!(
            join(&mut sim, 3, "e2:7"),
            strs(&[
                "PUB e2:8 ann m8",
                "PUB e2:9 ann m9",
                "PUB e2:10 ann m10",
                "SYNCED e2:10 3"
            ]),
            "the oldest kept is offset + 1: no gap"
        );
        assert_eq!(
            join(&mut sim, 4, "e2:11"),
            strs(&["GAP too-old e2:10"]),
            "a position beyond the stream"
        );
        assert_eq!(
            join(&mut sim, 5, "e1:3"),
            strs(&["GAP epoch-changed e2:10"]),
            "the server restarted since"
        );
        assert_eq!(
            join(&mut sim, 6, "e1:10"),
            strs(&["GAP epoch-changed e2:10"]),
            "the same offset in another epoch is another message"
        );
        sim.say(1, "m11");
        for id in 2..=6 {
            let got = sim.take(id);
            assert_eq!(got.last().unwrap(), "PUB e2:11 ann m11", "member {id}");
            assert!(got[..got.len() - 1]
                .iter()
                .all(|l| l.starts_with("JOINED ")));
        }
    }

    #[test]
    fn history_off_resumes_nothing_but_positions_go_on() {
        let mut sim = Sim::with(hub_cfg(0, "e3"), &["ann"]);
        for i in 1..=4 {
            sim.say(1, &format!("m{i}"));
        }
        sim.connect(2);
        let _ = sim.rx(2, "HISTORY 5\n");
        assert_eq!(sim.take(2), strs(&["SYNCED e3:4 0"]));
        let _ = sim.rx(2, "JOIN bob SINCE e3:3\n");
        assert_eq!(sim.take(2)[1..], strs(&["GAP too-old e3:4"]));
        sim.connect(3);
        let _ = sim.rx(3, "JOIN cy SINCE e3:4\n");
        assert_eq!(
            sim.take(3)[1..],
            strs(&["SYNCED e3:4 0"]),
            "nothing was missed"
        );
        sim.say(1, "m5");
        assert_eq!(sim.take(2), strs(&["JOINED cy", "PUB e3:5 ann m5"]));
        assert_eq!(sim.hub.history().heap_bytes(), 0);
    }

    #[test]
    fn the_byte_bound_limits_what_history_and_resume_can_give() {
        let mut cfg = hub_cfg(1000, "e4");
        // "ann 0123456789" is 14 bytes: 30 bytes keep two.
        cfg.history_bytes = 30;
        let mut sim = Sim::with(cfg, &["ann"]);
        for _ in 0..5 {
            sim.say(1, "0123456789");
        }
        assert_eq!(
            (sim.hub.history().len(), sim.hub.history().bytes()),
            (2, 28)
        );
        sim.connect(2);
        let _ = sim.rx(2, "HISTORY 10\n");
        assert_eq!(
            sim.take(2),
            strs(&[
                "PUB e4:4 ann 0123456789",
                "PUB e4:5 ann 0123456789",
                "SYNCED e4:5 2"
            ])
        );
        let _ = sim.rx(2, "JOIN bob SINCE e4:2\n");
        assert_eq!(sim.take(2)[1..], strs(&["GAP too-old e4:5"]));
        // A message over the bound is not kept, and takes the older ones with it.
        sim.say(1, &"x".repeat(40));
        sim.connect(3);
        let _ = sim.rx(3, "JOIN cy SINCE e4:5\n");
        assert_eq!(sim.take(3)[1..], strs(&["GAP too-old e4:6"]));
        assert!(sim.hub.history().is_empty());
    }

    #[test]
    fn history_before_join_then_a_plain_join() {
        let mut sim = Sim::with(hub_cfg(1000, "e5"), &["ann", "cy"]);
        sim.connect(3);
        let _ = sim.rx(3, "HISTORY 3\n");
        assert_eq!(sim.take(3), strs(&["SYNCED e5:0 0"]), "nothing said yet");
        for i in 1..=5 {
            sim.say(1, &format!("m{i}"));
        }
        let _ = sim.rx(3, "HISTORY 2\nHISTORY 0\nHISTORY 10000\nMSG hi\n");
        let got = sim.take(3);
        assert_eq!(
            got[..3],
            strs(&["PUB e5:4 ann m4", "PUB e5:5 ann m5", "SYNCED e5:5 2"])
        );
        assert!(got[3].starts_with("ERR bad-argument "), "{got:?}");
        assert_eq!(got[4], "PUB e5:1 ann m1");
        assert_eq!(got[9], "SYNCED e5:5 5");
        assert!(got[10].starts_with("ERR not-joined "));
        assert_eq!(sim.rx(3, "JOIN dan\n"), Input::NeedBytes);
        sim.say(1, "m6");
        assert_eq!(
            sim.take(3),
            strs(&["MSG ann m6"]),
            "a plain JOIN: legacy lines"
        );
        assert_eq!(sim.hub.names(), strs(&["ann", "cy", "dan"]));
    }

    #[test]
    fn legacy_members_see_only_todays_lines_beside_positioned_ones() {
        let mut sim = Sim::with(hub_cfg(1000, "e6"), &["ann", "cy"]);
        sim.connect(3);
        let _ = sim.rx(3, "JOIN bob SINCE -\n");
        let _ = sim.take(3);
        sim.say(1, "hello there");
        sim.say(3, "hi ann");
        let _ = sim.rx(2, "WHO\n");
        sim.cut(3);
        assert_eq!(
            sim.take(2),
            strs(&[
                "JOINED bob",
                "MSG ann hello there",
                "MSG bob hi ann",
                "MEMBERS ann bob cy",
                "LEFT bob closed"
            ])
        );
        assert_eq!(
            sim.take(1),
            strs(&["JOINED bob", "MSG bob hi ann", "LEFT bob closed"])
        );
        assert_eq!(sim.hub.history().last(), 2, "both messages have positions");
    }

    #[test]
    fn a_takeover_with_the_token_is_silent_and_ends_the_old_connection_replaced() {
        let mut sim = Sim::with(hub_cfg(1000, "e7"), &["ann", "cy"]);
        sim.connect(3);
        let _ = sim.rx(3, "JOIN bob SINCE -\n");
        let token = token_of(&sim.take(3)[0]);
        let _ = (sim.take(1), sim.take(2));
        sim.say(1, "one");
        assert_eq!(sim.take(3), strs(&["PUB e7:1 ann one"]));
        // bob's network vanished: connection 3 is a ghost nobody has reaped yet.
        sim.say(1, "two");
        sim.connect(4);
        let _ = sim.rx(4, &format!("JOIN bob SINCE e7:1 {token}\n"));
        assert_eq!(
            sim.take(4),
            vec![
                format!("WELCOME bob e7:2 {token}"),
                "PUB e7:2 ann two".to_owned(),
                "SYNCED e7:2 1".to_owned()
            ],
            "the same token, so bob can resume again"
        );
        assert_eq!(sim.s[&3].end_reason(), Some(EndReason::Replaced));
        assert_eq!(
            sim.take(3),
            strs(&["END replaced"]),
            "queued lines dropped, END next"
        );
        // The ghost's engine notices its end and makes it leave: no LEFT, it is no member.
        sim.hub
            .handle_leave(sim.t, 3, EndReason::Replaced, &mut sim.s);
        assert_eq!(
            sim.take(2),
            strs(&["MSG ann one", "MSG ann two"]),
            "no LEFT/JOINED"
        );
        assert_eq!(sim.take(1), Vec::<String>::new());
        assert_eq!(sim.hub.names(), strs(&["ann", "bob", "cy"]));
        assert!(sim.hub.is_member(4) && !sim.hub.is_member(3));
        let evs: Vec<_> = std::iter::from_fn(|| sim.hub.poll_event()).collect();
        assert!(evs.contains(&HubEvent::Left {
            id: 3,
            name: "bob".into(),
            reason: EndReason::Replaced
        }));
        assert!(evs.contains(&HubEvent::Joined {
            id: 4,
            name: "bob".into()
        }));
        sim.say(1, "three");
        assert_eq!(sim.take(4), strs(&["PUB e7:3 ann three"]));
        sim.say(4, "back");
        assert_eq!(sim.take(2), strs(&["MSG ann three", "MSG bob back"]));
        // Again, from a third connection with the same token.
        sim.connect(5);
        let _ = sim.rx(5, &format!("JOIN bob SINCE e7:4 {token}\n"));
        assert_eq!(sim.take(5)[1..], strs(&["SYNCED e7:4 0"]));
        assert_eq!(sim.s[&4].end_reason(), Some(EndReason::Replaced));
        assert_eq!(sim.take(2), Vec::<String>::new());
    }

    #[test]
    fn a_ghost_already_ending_is_taken_over_without_left() {
        let mut sim = Sim::with(hub_cfg(1000, "e8"), &["ann"]);
        sim.connect(2);
        let _ = sim.rx(2, "JOIN bob SINCE -\n");
        let token = token_of(&sim.take(2)[0]);
        let _ = sim.take(1);
        // The heartbeat ended it; the engine has not made it leave yet.
        sim.s
            .get_mut(&2)
            .unwrap()
            .end(sim.t, EndReason::HeartbeatTimeout, true);
        sim.connect(3);
        let _ = sim.rx(3, &format!("JOIN bob SINCE e8:0 {token}\n"));
        assert_eq!(sim.take(3)[1..], strs(&["SYNCED e8:0 0"]));
        sim.hub
            .handle_leave(sim.t, 2, EndReason::HeartbeatTimeout, &mut sim.s);
        assert_eq!(sim.take(1), Vec::<String>::new());
        assert_eq!(sim.s[&2].end_reason(), Some(EndReason::HeartbeatTimeout));
        assert_eq!(sim.hub.names(), strs(&["ann", "bob"]));
    }

    #[test]
    fn a_wrong_token_or_a_legacy_name_is_name_taken_and_a_free_name_is_a_plain_join() {
        let mut sim = Sim::with(hub_cfg(1000, "e9"), &["ann", "cy"]);
        sim.connect(3);
        let _ = sim.rx(3, "JOIN bob SINCE -\n");
        let token = token_of(&sim.take(3)[0]);
        let _ = (sim.take(1), sim.take(2));
        sim.connect(4);
        let wrong = "zzzzzzzzzzzzzzzz";
        assert_ne!(token, wrong);
        let _ = sim.rx(4, &format!("JOIN bob SINCE - {wrong}\nJOIN bob SINCE -\n"));
        let got = sim.take(4);
        assert_eq!(got.len(), 2);
        assert!(
            got.iter().all(|l| l.starts_with("ERR name-taken ")),
            "{got:?}"
        );
        // cy joined without SINCE: it has no token, so no token takes it over.
        let _ = sim.rx(4, &format!("JOIN cy SINCE - {token}\n"));
        assert!(sim.take(4)[0].starts_with("ERR name-taken "));
        // A member cannot take another name over, even with its token.
        let _ = sim.rx(1, &format!("JOIN bob SINCE - {token}\n"));
        assert!(sim.take(1)[0].starts_with("ERR already-joined "));
        assert!(sim.s[&3].is_open() && sim.s[&2].is_open());
        assert_eq!(sim.take(2), Vec::<String>::new());
        // Once bob left, the name is free: a token for it is a plain join with a new token.
        sim.cut(3);
        let _ = sim.rx(4, &format!("JOIN bob SINCE - {token}\n"));
        let got = sim.take(4);
        assert_ne!(token_of(&got[0]), token);
        assert_eq!(sim.take(2), strs(&["LEFT bob closed", "JOINED bob"]));
        // The old token no longer takes the name over.
        sim.connect(5);
        let _ = sim.rx(5, &format!("JOIN bob SINCE - {token}\n"));
        assert!(sim.take(5)[0].starts_with("ERR name-taken "));
    }

    /// What a positioned client does with the lines it reads: every `PUB` must be the next
    /// offset (no duplicate, no hole, no reordering), across connections.
    #[derive(Default)]
    struct Tracker {
        last: u64,
        token: Option<String>,
        replayed: u64,
    }

    impl Tracker {
        fn see(&mut self, lines: Vec<String>) {
            for l in lines {
                match ServerMsg::parse(l.as_bytes()).unwrap() {
                    ServerMsg::Pub { pos, .. } => {
                        assert_eq!(pos.offset, self.last + 1, "{l}");
                        self.last = pos.offset;
                    }
                    ServerMsg::Welcome { token, .. } => {
                        self.token = Some(token.as_str().to_owned())
                    }
                    ServerMsg::Synced { count, .. } => self.replayed += count,
                    ServerMsg::Gap { .. } => panic!("{l}"),
                    _ => {}
                }
            }
        }
    }

    #[test]
    fn resumes_while_messages_keep_arriving_have_no_seam() {
        let mut sim = Sim::with(hub_cfg(1000, "s1"), &["ann", "cy"]);
        let mut bob = 10;
        sim.connect(bob);
        let _ = sim.rx(bob, "JOIN bob SINCE -\n");
        let mut tr = Tracker::default();
        tr.see(sim.take(bob));
        let mut away = false;
        for i in 1..=600u64 {
            sim.say(if i % 3 == 0 { 2 } else { 1 }, &format!("n{i}"));
            let _ = (sim.take(1), sim.take(2));
            if away {
                if i % 50 == 25 {
                    // Reconnect after the old connection was reaped: a plain join + replay.
                    bob += 1;
                    sim.connect(bob);
                    let _ = sim.rx(bob, &format!("JOIN bob SINCE s1:{}\n", tr.last));
                    away = false;
                }
                continue;
            }
            // bob reads a varying part of what he was sent (a partial line stays partial).
            sim.read(bob, ((i * 37) % 60) as usize);
            let lines = std::mem::take(sim.got.get_mut(&bob).unwrap());
            tr.see(lines);
            match i % 50 {
                // Cut: what was written but not read is lost with the connection.
                20 => {
                    sim.cut(bob);
                    away = true;
                }
                // The network vanished: a new connection takes over the ghost at once,
                // between two of ann's messages.
                40 => {
                    let old = bob;
                    bob += 1;
                    sim.connect(bob);
                    let token = tr.token.clone().unwrap();
                    let _ = sim.rx(bob, &format!("JOIN bob SINCE s1:{} {token}\n", tr.last));
                    assert_eq!(sim.s[&old].end_reason(), Some(EndReason::Replaced));
                    sim.hub
                        .handle_leave(sim.t, old, EndReason::Replaced, &mut sim.s);
                }
                _ => {}
            }
        }
        let lines = sim.take(bob);
        tr.see(lines);
        assert_eq!(tr.last, 600, "every message once, in order");
        assert!(tr.replayed > 0, "some were replayed");
        let evs: Vec<_> = std::iter::from_fn(|| sim.hub.poll_event()).collect();
        let left = |r| {
            evs.iter()
                .filter(|e| matches!(e, HubEvent::Left { reason, .. } if *reason == r))
                .count()
        };
        assert_eq!(
            (left(EndReason::Closed), left(EndReason::Replaced)),
            (12, 12)
        );
    }

    #[test]
    fn a_resume_while_a_message_is_held_gets_it_once_after_the_replay() {
        // zed (3) reads nothing, so ann's messages are held once its queue is full.
        let mut sim = Sim::with(hub_cfg(1000, "h1"), &["ann", "cy", "zed"]);
        sim.connect(4);
        let _ = sim.rx(4, "JOIN bob SINCE -\n");
        let mut tr = Tracker::default();
        tr.see(sim.take(4));
        let _ = sim.take(2);
        let mut n = 0;
        let held = loop {
            n += 1;
            let input = sim.rx(1, &format!("MSG {n:03} {}\n", "x".repeat(100)));
            tr.see(sim.take(4));
            let _ = sim.take(2);
            if input == Input::Held {
                break n;
            }
        };
        assert_eq!(tr.last, held - 1, "the held message has no position yet");
        // bob reconnects (reaped and rejoined) while ann's message waits for zed.
        sim.cut(4);
        sim.connect(5);
        let _ = sim.rx(5, &format!("JOIN bob SINCE h1:{}\n", tr.last));
        tr.see(sim.take(5));
        // Another member's message cannot overtake the held one (it is held as well)...
        assert_eq!(sim.rx(2, "MSG from cy\n"), Input::Held);
        // ...zed catches up, and both go out in order, once each.
        sim.read(3, usize::MAX);
        assert_eq!(sim.pump(1), Input::NeedBytes);
        assert_eq!(sim.pump(2), Input::NeedBytes);
        let got = sim.take(5);
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(
            got[0].starts_with(&format!("PUB h1:{held} ann {held:03} ")),
            "{got:?}"
        );
        assert_eq!(got[1], format!("PUB h1:{} cy from cy", held + 1));
        tr.see(got);
        assert_eq!(tr.last, held + 1);
    }

    // ---- cluster mode (docs/CLUSTER.md): two nodes over a fake broker ----

    use crate::core::cluster::{Body, ClaimPurpose, ClusterConfig, NodeId};

    /// What Redis does for the cluster, in memory: offsets, claims, fan-out.
    struct FakeBroker {
        epoch: Epoch,
        off: u64,
        /// Each claimed name's node.
        names: HashMap<String, String>,
        /// The resume token kept in a name's claim.
        tokens: HashMap<String, String>,
        up: bool,
    }

    impl FakeBroker {
        fn new() -> Self {
            Self {
                epoch: Epoch::new("redis1").unwrap(),
                off: 0,
                names: HashMap::new(),
                tokens: HashMap::new(),
                up: true,
            }
        }

        /// Runs every command of every node and feeds the answers back, then lets each
        /// hub apply the results and offers held lines again, until nothing moves.
        fn exchange(&mut self, nodes: &mut [&mut Sim]) {
            for _ in 0..50 {
                let mut moved = false;
                for i in 0..nodes.len() {
                    while let Some(cmd) = nodes[i].hub.poll_command() {
                        moved = true;
                        if !self.up {
                            continue;
                        }
                        let t = nodes[i].t;
                        match cmd {
                            BusCommand::Publish(mut msg) => {
                                if msg.body.is_stream() {
                                    self.off += 1;
                                    msg.offset = Some(self.off);
                                }
                                for n in nodes.iter_mut() {
                                    n.hub.cluster_mut().unwrap().handle_bus(t, msg.clone());
                                }
                            }
                            BusCommand::ClaimName {
                                name,
                                conn,
                                node,
                                token,
                                purpose,
                                ..
                            } => {
                                // As the claim script: free, this node's, or taken over
                                // with the token its claim keeps.
                                let node = node.to_string();
                                let won = match self.names.get(&name) {
                                    None => true,
                                    Some(holder) => {
                                        *holder == node
                                            || (purpose == ClaimPurpose::TakeOver
                                                && token.is_some()
                                                && self.tokens.get(&name) == token.as_ref())
                                    }
                                };
                                if won {
                                    self.names.insert(name.clone(), node);
                                    match token {
                                        Some(t) => self.tokens.insert(name.clone(), t),
                                        None => self.tokens.remove(&name),
                                    };
                                }
                                nodes[i]
                                    .hub
                                    .cluster_mut()
                                    .unwrap()
                                    .handle_claim(t, conn, &name, won);
                            }
                            BusCommand::ReleaseName { name, owner }
                                if self.names.get(&name) == Some(&owner.to_string()) =>
                            {
                                self.names.remove(&name);
                                self.tokens.remove(&name);
                            }
                            _ => {}
                        }
                    }
                }
                for n in nodes.iter_mut() {
                    let t = n.t;
                    moved |= !n.hub.handle_cluster(t, &mut n.s);
                    let ids: Vec<MemberId> = n.s.keys().copied().collect();
                    for id in ids {
                        let _ = n.pump(id);
                    }
                }
                if !moved {
                    return;
                }
            }
            panic!("the fake broker never settled");
        }

        fn link_up(&self, n: &mut Sim, fresh: &str) {
            let pos = Pos {
                epoch: self.epoch.clone(),
                offset: self.off,
            };
            let t = n.t;
            n.hub
                .cluster_mut()
                .unwrap()
                .handle_link_up(t, pos, NodeId::new(fresh).unwrap());
        }
    }

    /// A cluster node `id` with its link up, and connections 1..=`conns` (not joined).
    fn node(broker: &mut FakeBroker, id: &str, conns: u64) -> Sim {
        let mut sim = Sim::new(&[]);
        let hub = std::mem::take(&mut sim.hub);
        let c = ClusterNode::new(NodeId::new(id).unwrap(), ClusterConfig::default(), sim.t);
        sim.hub = hub.with_cluster(c);
        broker.link_up(&mut sim, &format!("{id}x"));
        for conn in 1..=conns {
            sim.connect(conn);
        }
        sim
    }

    #[test]
    fn a_token_takes_a_name_over_from_another_node_and_nobody_hears_of_it() {
        let mut bus = FakeBroker::new();
        let mut a = node(&mut bus, "nodea", 2);
        let mut b = node(&mut bus, "nodeb", 3);
        assert_eq!(a.rx(1, "JOIN ann SINCE -\n"), Input::Held);
        bus.exchange(&mut [&mut a, &mut b]);
        let token = token_of(&a.take(1)[0]);
        assert_eq!(a.rx(2, "JOIN cy\n"), Input::Held);
        assert_eq!(b.rx(1, "JOIN bob\n"), Input::Held);
        bus.exchange(&mut [&mut a, &mut b]);
        b.say(1, "one");
        bus.exchange(&mut [&mut a, &mut b]);
        let _ = (a.take(1), a.take(2), b.take(1));
        // ann's connection to A vanished (a ghost A has not reaped); she comes back on B.
        assert_eq!(
            b.rx(2, "JOIN ann SINCE redis1:0 0123456789abcdef\n"),
            Input::Held
        );
        bus.exchange(&mut [&mut a, &mut b]);
        assert_eq!(b.take(2), ["ERR name-taken ann is taken"], "a wrong token");
        assert_eq!(
            b.rx(3, &format!("JOIN ann SINCE redis1:0 {token}\n")),
            Input::Held
        );
        bus.exchange(&mut [&mut a, &mut b]);
        assert_eq!(
            b.take(3),
            [
                format!("WELCOME ann redis1:1 {token}"),
                "PUB redis1:1 bob one".to_owned(),
                "SYNCED redis1:1 1".to_owned()
            ]
        );
        assert_eq!(a.s[&1].end_reason(), Some(EndReason::Replaced));
        assert_eq!(a.take(1), ["END replaced"]);
        // The ghost's engine makes it leave: nothing for anyone, the claim stays B's.
        a.hub.handle_leave(a.t, 1, EndReason::Replaced, &mut a.s);
        bus.exchange(&mut [&mut a, &mut b]);
        assert!(a.take(2).is_empty() && b.take(1).is_empty());
        assert_eq!(bus.names["ann"], "nodeb");
        // She talks from B; A's room hears her, and WHO lists her once everywhere.
        b.say(3, "back");
        bus.exchange(&mut [&mut a, &mut b]);
        assert_eq!(a.take(2), ["MSG ann back"]);
        assert_eq!(b.take(1), ["MSG ann back"]);
        let _ = a.rx(2, "WHO\n");
        assert_eq!(a.take(2), ["MEMBERS ann bob cy"]);
        // A plain JOIN of her name on A is refused, and her token brings her back to A.
        a.connect(3);
        assert_eq!(a.rx(3, "JOIN ann\n"), Input::NeedBytes);
        assert_eq!(a.take(3), ["ERR name-taken ann is taken"]);
        assert_eq!(
            a.rx(3, &format!("JOIN ann SINCE redis1:2 {token}\n")),
            Input::Held
        );
        bus.exchange(&mut [&mut a, &mut b]);
        assert_eq!(token_of(&a.take(3)[0]), token);
        assert_eq!(b.take(3), ["END replaced"]);
        assert!(a.take(2).is_empty() && b.take(1).is_empty());
    }

    #[test]
    fn two_nodes_make_one_room_with_one_order_and_unique_names() {
        let mut bus = FakeBroker::new();
        let mut a = node(&mut bus, "nodea", 2);
        let mut b = node(&mut bus, "nodeb", 2);
        // Joins wait for their claim in the broker.
        assert_eq!(a.rx(1, "JOIN ann\n"), Input::Held);
        bus.exchange(&mut [&mut a, &mut b]);
        assert_eq!(b.rx(1, "JOIN bob\n"), Input::Held);
        bus.exchange(&mut [&mut a, &mut b]);
        assert_eq!(a.take(1), vec!["JOINED bob"]);
        assert_eq!(b.take(1), Vec::<String>::new());
        // A name held on the other node is refused: at once when its presence is known...
        assert_eq!(b.rx(2, "JOIN ann\n"), Input::NeedBytes);
        assert_eq!(b.take(2), vec!["ERR name-taken ann is taken"]);
        // ... and by the broker's claim when it is not (a claim made behind B's back).
        bus.names.insert("dee".into(), "nodec".into());
        assert_eq!(b.rx(2, "JOIN dee\n"), Input::Held);
        bus.exchange(&mut [&mut a, &mut b]);
        assert_eq!(b.take(2), vec!["ERR name-taken dee is taken"]);
        // WHO lists both nodes' members.
        let _ = a.rx(1, "WHO\n");
        assert_eq!(a.take(1), vec!["MEMBERS ann bob"]);
        // Messages from both sides interleave in one order, none echoed to its sender, and
        // positioned joiners see the stream's offsets.
        assert_eq!(a.rx(2, "JOIN cy SINCE -\n"), Input::Held);
        bus.exchange(&mut [&mut a, &mut b]);
        let welcome = a.take(2);
        assert_eq!(
            welcome[0].split(' ').take(2).collect::<Vec<_>>(),
            ["WELCOME", "cy"]
        );
        assert!(welcome[0].contains(" redis1:0 "), "{welcome:?}");
        assert_eq!(a.take(1), vec!["JOINED cy"]);
        assert_eq!(b.take(1), vec!["JOINED cy"]);
        for k in 0..5 {
            a.say(1, &format!("a{k}"));
            b.say(1, &format!("b{k}"));
        }
        bus.exchange(&mut [&mut a, &mut b]);
        let from_a: Vec<String> = (0..5).map(|k| format!("MSG ann a{k}")).collect();
        let from_b: Vec<String> = (0..5).map(|k| format!("MSG bob b{k}")).collect();
        let got_b = b.take(1);
        assert_eq!(
            got_b
                .iter()
                .filter(|l| l.starts_with("MSG ann"))
                .cloned()
                .collect::<Vec<_>>(),
            from_a
        );
        assert!(!got_b.iter().any(|l| l.starts_with("MSG bob")));
        let got_a = a.take(1);
        assert_eq!(got_a, from_b.clone());
        let got_cy = a.take(2);
        assert_eq!(got_cy.len(), 10);
        for (i, line) in got_cy.iter().enumerate() {
            assert!(
                line.starts_with(&format!("PUB redis1:{} ", i + 1)),
                "{got_cy:?}"
            );
        }
        // The mirror answers HISTORY with the stream's positions.
        let _ = b.rx(2, "HISTORY 2\n");
        let h = b.take(2);
        assert_eq!(h.len(), 3, "{h:?}");
        assert!(h[0].starts_with("PUB redis1:9 "), "{h:?}");
        assert_eq!(h[2], "SYNCED redis1:10 2");
        // Leaving is heard on the other node.
        a.cut(1);
        bus.exchange(&mut [&mut a, &mut b]);
        assert_eq!(b.take(1), vec!["LEFT ann closed"]);
        let _ = b.rx(1, "WHO\n");
        assert_eq!(b.take(1), vec!["MEMBERS bob cy"]);
    }

    #[test]
    fn a_node_whose_link_is_down_serves_its_members_under_its_own_epoch() {
        let mut bus = FakeBroker::new();
        let mut a = node(&mut bus, "nodea", 2);
        let _ = a.rx(1, "JOIN ann\n");
        bus.exchange(&mut [&mut a]);
        let _ = a.rx(2, "JOIN bo SINCE -\n");
        bus.exchange(&mut [&mut a]);
        let _ = a.take(1);
        let _ = a.take(2);
        let t = a.t;
        a.hub.cluster_mut().unwrap().handle_link_down(t);
        bus.up = false;
        bus.exchange(&mut [&mut a]);
        a.say(1, "alone");
        assert_eq!(a.take(2), vec!["PUB nodea:1 ann alone"]);
        // Back: the node's message reaches the stream; nobody gets it twice.
        bus.up = true;
        bus.link_up(&mut a, "nodeaa");
        bus.exchange(&mut [&mut a]);
        assert_eq!(bus.off, 1);
        assert_eq!(a.take(2), Vec::<String>::new());
        let _ = a.take(1);
        a.say(1, "again");
        bus.exchange(&mut [&mut a]);
        assert_eq!(a.take(2), vec!["PUB redis1:2 ann again"]);
        let _ = Body::Hello;
    }
}
