//! What both engines share around the core's chat hub: the room and its connections under
//! one lock, a write-back cache that makes relaying to many members cheap, and the mapping of
//! the core's events to log lines. Plumbing only: every decision is the hub's or a session's.

use std::net::SocketAddr;
use std::sync::{Arc, MutexGuard};
use std::time::Instant;

use crate::core::hub::{Fanout, Hub, HubConfig, HubEvent, Mailboxes};
use crate::core::outq::SharedBytes;
use crate::core::room::{IdMap, MemberId};
use crate::core::session::{Input, RoomOutcome, Session, SessionEvent};
use crate::core::wire::{EndReason, Epoch};
use crate::net::events::{Event, EventLog};

/// A connection as the relay sees it, whatever the engine.
pub trait Member {
    /// The client's address (for log lines).
    fn peer(&self) -> SocketAddr;
    /// Its protocol state, locked (briefly; never across I/O that can block).
    fn session(&self) -> MutexGuard<'_, Session>;
    /// Wakes whoever writes its socket: something was queued, or a deadline changed.
    fn wake(&self);
}

/// The chat room and every chat connection. One lock guards both, so every member sees
/// room events (JOINED, MSG, LEFT) in the same order, and each sender's messages in the
/// order sent. Nothing done under the lock blocks: a delivery appends to a session's queue.
pub struct Chat<C> {
    /// The room's decisions.
    pub hub: Hub,
    /// Every chat connection by number (members and not yet joined).
    pub conns: IdMap<Arc<C>>,
    /// With a cluster: wakes its driver after a room operation (commands for the broker).
    pub cluster_bell: Option<crate::net::cluster_driver::Bell>,
}

impl<C> Default for Chat<C> {
    fn default() -> Self {
        Self {
            hub: Hub::default(),
            conns: IdMap::default(),
            cluster_bell: None,
        }
    }
}

impl<C> Chat<C> {
    /// The room of a server starting now: history as `--history`/`--history-bytes` say, a
    /// new epoch (the previous run's stream is gone, so resumes against it must hear
    /// `GAP epoch-changed`) and a secret seed for resume tokens, both drawn from the OS.
    pub fn starting(history: usize, history_bytes: usize) -> Self {
        let epoch = Epoch::new(&base36(crate::net::os_random(), 8)).unwrap_or_default();
        let token_seed =
            (u128::from(crate::net::os_random()) << 64) | u128::from(crate::net::os_random());
        Self {
            hub: Hub::with_config(HubConfig {
                history,
                history_bytes,
                epoch,
                token_seed,
            }),
            conns: IdMap::default(),
            cluster_bell: None,
        }
    }
}

/// The last `digits` base-36 digits of `v`, most significant first.
fn base36(mut v: u64, digits: usize) -> String {
    let mut out = vec![b'0'; digits];
    for d in out.iter_mut().rev() {
        *d = char::from_digit((v % 36) as u32, 36).map_or(b'0', |c| c as u8);
        v /= 36;
    }
    String::from_utf8(out).unwrap_or_default()
}

/// The hub's view of the members' queues, as a write-back cache over their sessions.
///
/// Relaying one message to 100 members would otherwise lock 100 sessions twice per message
/// and copy the line 100 times. Instead the recipients' free budgets are read once per batch
/// of lines (one lock each) into a [`Stage`], room messages are appended once to a shared
/// batch, and [`Members::flush`] hands every recipient a reference to it (one more lock, one
/// wake-up, no copy: [`SharedBytes`]). The budgets only grow meanwhile (writers only drain),
/// so answering from the snapshot is never too generous. The hub still makes every decision;
/// this only makes asking and delivering cheap.
pub struct Members<'a, C> {
    conns: &'a IdMap<Arc<C>>,
    stage: &'a mut Stage,
}

/// A batch of room lines under construction, kept by the caller from batch to batch so its
/// memory is reused.
#[derive(Debug, Default)]
pub struct Stage {
    /// The recipients' budgets at the snapshot, for the groups of `version`.
    snap: IdMap<Snap>,
    version: Option<u64>,
    /// One per group of the [`Fanout`] (the members that get `MSG`, those that get `PUB`).
    groups: Vec<Group>,
    /// The instant of the batch's lines.
    now: Option<Instant>,
    /// Room messages staged, and bytes handed to recipients, since [`report`] last took
    /// them (`hb_relay_messages_total`, `hb_relay_bytes_total`).
    relayed: (u64, u64),
}

/// The members of one group and the lines built for them.
#[derive(Debug, Default)]
struct Group {
    /// The members, in delivery order.
    ids: Vec<MemberId>,
    /// The least free budget among them at the snapshot (0 when one is not open).
    min_room: usize,
    /// Room lines, each built once for every member of the group.
    batch: Vec<u8>,
    /// Where each line of `batch` ends, and the one member it is not for (its sender).
    lines: Vec<(usize, MemberId)>,
}

#[derive(Debug, Clone, Copy)]
struct Snap {
    /// Free budget at the snapshot.
    room: usize,
    /// Open at the snapshot.
    open: bool,
    /// Bytes of its group's batch not for this member (its own lines).
    own: usize,
    /// Its group.
    group: usize,
}

/// Batch bytes after which a batch is flushed anyway (bounds memory and delay).
const STAGE_LIMIT: usize = 256 * 1024;

impl<'a, C: Member> Members<'a, C> {
    /// A view of `conns` staging into `stage` (keep it across batches to reuse its memory).
    pub fn new(conns: &'a IdMap<Arc<C>>, stage: &'a mut Stage) -> Self {
        Self { conns, stage }
    }

    /// Reads the budgets of every recipient of `f` (one lock each).
    fn snapshot(&mut self, f: Fanout<'_>) {
        let st = &mut *self.stage;
        st.snap.clear();
        st.groups.resize_with(f.groups.len(), Group::default);
        for (g, (ids, _)) in f.groups.iter().enumerate() {
            let group = &mut st.groups[g];
            group.ids.clear();
            group.ids.extend_from_slice(ids);
            group.min_room = usize::MAX;
            for &id in ids.iter() {
                let (room, open) = match self.conns.get(&id) {
                    Some(conn) => {
                        let s = conn.session();
                        (s.config().queue.saturating_sub(s.queued()), s.is_open())
                    }
                    None => (0, false),
                };
                group.min_room = group.min_room.min(if open { room } else { 0 });
                st.snap.insert(
                    id,
                    Snap {
                        room,
                        open,
                        own: 0,
                        group: g,
                    },
                );
            }
        }
        st.version = Some(f.version);
    }

    /// Hands every recipient its lines of the batch (shared, not copied) and wakes its
    /// writer. The snapshot is dropped: other senders may fill the queues before the next
    /// batch.
    pub fn flush(&mut self, now: Instant) {
        let st = &mut *self.stage;
        st.version = None;
        let now = st.now.take().unwrap_or(now);
        for group in &mut st.groups {
            if group.batch.is_empty() {
                continue;
            }
            let total = group.batch.len();
            let mut batch =
                std::mem::replace(&mut group.batch, Vec::with_capacity(total.min(STAGE_LIMIT)));
            // A queue holding a slice keeps the whole buffer alive: at most as much slack as
            // bytes, so what a slow reader pins stays near what its budget counts. (The next
            // batch is sized like this one and a batch never grows past STAGE_LIMIT, so in a
            // steady stream this never copies.)
            if batch.capacity() > 2 * total {
                batch.shrink_to_fit();
            }
            let shared = SharedBytes::new(batch);
            for &id in &group.ids {
                let Some(snap) = st.snap.get(&id) else {
                    continue;
                };
                let Some(conn) = self.conns.get(&id).filter(|_| snap.open) else {
                    continue;
                };
                let mut s = conn.session();
                if snap.own == 0 {
                    s.push_shared(now, shared.clone());
                } else {
                    // Everything but its own lines, in runs. A member that wrote most of the
                    // batch gets copies of the rest instead of slices: small slices would pin
                    // the whole buffer (a chatty member that reads slowly could hold many times
                    // its --queue in memory); so a shared buffer is always at least half used.
                    let copy = snap.own * 2 > total;
                    let queue_run = |s: &mut Session, r: std::ops::Range<usize>| {
                        if copy {
                            s.push(now, &shared.as_slice()[r]);
                        } else {
                            s.push_shared(now, shared.slice(r));
                        }
                    };
                    let mut run = 0;
                    let mut line_start = 0;
                    for &(end, except) in &group.lines {
                        if except == id {
                            if line_start > run {
                                queue_run(&mut s, run..line_start);
                            }
                            run = end;
                        }
                        line_start = end;
                    }
                    if total > run {
                        queue_run(&mut s, run..total);
                    }
                }
                drop(s);
                conn.wake();
                st.relayed.1 += (total - snap.own) as u64;
            }
            group.lines.clear();
        }
    }

    /// The exact check for one member against the snapshot.
    fn fits(&self, id: MemberId, len: usize) -> bool {
        self.stage.snap.get(&id).is_some_and(|s| {
            let total = self.stage.groups[s.group].batch.len();
            s.open && s.room + s.own >= total + len
        })
    }

    /// The instant of the batch (for a flush the hub did not ask for).
    fn now(&self) -> Instant {
        self.stage.now.unwrap_or_else(Instant::now)
    }

    /// Makes the snapshot match `f`'s groups (flushing what was staged for older ones).
    fn track(&mut self, f: Fanout<'_>) {
        if self.stage.version != Some(f.version) {
            let now = self.now();
            self.flush(now);
            self.snapshot(f);
        }
    }
}

impl<C: Member> Mailboxes for Members<'_, C> {
    fn has_room(&mut self, id: MemberId, len: usize) -> bool {
        // One member at a time (JOINED, LEFT, the hub's slow path): the batch goes first.
        let now = self.now();
        self.flush(now);
        self.conns
            .get(&id)
            .is_some_and(|c| c.session().has_room(len))
    }
    fn mark_lagging(&mut self, id: MemberId, now: Instant) {
        if let Some(c) = self.conns.get(&id) {
            c.session().mark_lagging(now);
            // Its writer must learn the new deadline (lagging for `--stall` ends it).
            c.wake();
        }
    }
    fn push(&mut self, id: MemberId, now: Instant, line: &[u8]) {
        // Keeps the order: what the batch holds was said first.
        self.flush(now);
        if let Some(c) = self.conns.get(&id) {
            c.session().push(now, line);
            c.wake();
        }
    }
    fn is_open(&mut self, id: MemberId) -> bool {
        self.conns.get(&id).is_some_and(|c| c.session().is_open())
    }
    fn end(&mut self, id: MemberId, now: Instant, reason: EndReason) {
        // What was staged for it goes first (and is then dropped by the urgent end).
        self.flush(now);
        if let Some(c) = self.conns.get(&id) {
            c.session().end(now, reason, true);
            // Its engine must notice the end (write END, then leave the room).
            c.wake();
        }
    }
    fn all_have_room(&mut self, f: Fanout<'_>, except: MemberId) -> bool {
        self.track(f);
        // Usually answered from each group's least budget alone; exactly, member by
        // member, when that is too tight.
        f.groups.iter().enumerate().all(|(g, (ids, line))| {
            let group = &self.stage.groups[g];
            group.min_room >= group.batch.len() + line.len()
                || ids
                    .iter()
                    .all(|&id| id == except || self.fits(id, line.len()))
        })
    }
    fn broadcast(&mut self, f: Fanout<'_>, except: MemberId, now: Instant) {
        self.track(f);
        let over = f.groups.iter().enumerate().any(|(g, (ids, line))| {
            let batch = &self.stage.groups[g].batch;
            !ids.is_empty() && !batch.is_empty() && batch.len() + line.len() > STAGE_LIMIT
        });
        if over {
            // The batch goes before it would outgrow its buffer (see `flush`); the line was
            // admitted against this snapshot and still fits the new one's budgets.
            self.flush(now);
            self.snapshot(f);
        }
        let st = &mut *self.stage;
        st.now.get_or_insert(now);
        if f.groups
            .iter()
            .any(|(ids, _)| ids.iter().any(|&id| id != except))
        {
            st.relayed.0 += 1;
        }
        for (g, (ids, line)) in f.groups.iter().enumerate() {
            if ids.is_empty() {
                continue;
            }
            let group = &mut st.groups[g];
            group.batch.extend_from_slice(line);
            group.lines.push((group.batch.len(), except));
        }
        if let Some(s) = st.snap.get_mut(&except) {
            s.own += f.groups[s.group].1.len();
        }
    }
}

impl<C: Member> Chat<C> {
    /// Logs what the hub reported.
    pub fn log_events(&mut self, log: &EventLog) {
        while let Some(ev) = self.hub.poll_event() {
            let peer_of = |id| self.conns.get(&id).map(|c| c.peer());
            match ev {
                HubEvent::Joined { id, name } => {
                    if let Some(peer) = peer_of(id) {
                        log.emit(Event::Joined { id, peer, name });
                    }
                }
                HubEvent::Left { id, name, reason } => {
                    if let Some(peer) = peer_of(id) {
                        log.emit(Event::Left {
                            id,
                            peer,
                            name,
                            reason,
                        });
                    }
                }
                // The link's own `broker unreachable: WHY` line says it, with the reason.
                HubEvent::Cluster(crate::core::cluster::ClusterEvent::LinkDown) => {}
                HubEvent::Cluster(ev) => log.emit(Event::Cluster(ev)),
            }
        }
    }
}

/// Logs what a session reported.
pub fn log_session(log: &EventLog, id: u64, peer: SocketAddr, s: &mut Session) {
    while let Some(ev) = s.poll_event() {
        match ev {
            SessionEvent::PingSent { k, n } => log.emit(Event::PingSent { id, peer, k, n }),
            SessionEvent::Answered(a) => log.emit(Event::Answered {
                id,
                peer,
                after: a.after_pings,
                rtt: a.rtt,
            }),
            SessionEvent::BadLine(detail) => log.emit(Event::BadLine { id, peer, detail }),
            SessionEvent::SlowConsumer(why) => log.emit(Event::SlowConsumer { id, peer, why }),
            SessionEvent::Insecure(detail) => log.emit(Event::Insecure { id, peer, detail }),
            SessionEvent::Authenticated { name, renewed } => log.emit(Event::Authenticated {
                id,
                peer,
                name,
                renewed,
            }),
            SessionEvent::AuthFailed(reason) => log.emit(Event::AuthFailed { id, peer, reason }),
            // Logged when the END is written (or cannot be).
            SessionEvent::Ending(_) => {}
        }
    }
}

/// Where a connection's input side stands after [`pump`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pumped {
    /// Every complete line is handled: read more.
    NeedBytes,
    /// Its own queue is over half full: read nothing until it drains.
    OwnHeld,
    /// A lagging recipient holds its line: wait (the room lock released) until the room
    /// changes, then pump again (the same line is offered first).
    RoomHeld,
    /// The session is ending: read nothing more.
    Stop,
}

/// Adds what `stage` relayed since the last call to the metrics (`--metrics`), once per
/// batch rather than per line or per recipient.
pub fn report(log: &EventLog, stage: &mut Stage) {
    let (messages, bytes) = std::mem::take(&mut stage.relayed);
    if let Some(m) = log.metrics() {
        m.relayed(messages, bytes);
    }
}

/// Handles the complete lines a session holds: echo-mode lines inside the session, chat lines
/// through the hub (`chat`, locked by the caller, who keeps it locked while it prepares to
/// wait after [`Pumped::RoomHeld`], so a laggard's catch-up cannot be missed). `stage` is
/// the caller's reusable [`Stage`]. One clock reading serves the whole batch of
/// lines a read brought: the flow-control clocks tolerate microseconds, and a relay at a
/// million lines per second should not read the clock a million times.
pub fn pump<C: Member>(
    log: &EventLog,
    chat: Option<&mut Chat<C>>,
    id: u64,
    conn: &C,
    stage: &mut Stage,
) -> Pumped {
    let pumped = pump_lines(log, chat, id, conn, stage);
    report(log, stage);
    pumped
}

fn pump_lines<C: Member>(
    log: &EventLog,
    mut chat: Option<&mut Chat<C>>,
    id: u64,
    conn: &C,
    stage: &mut Stage,
) -> Pumped {
    let now = Instant::now();
    let mut outcome = None;
    loop {
        let mut s = conn.session();
        if let Some(o) = outcome.take() {
            s.handle_room(now, o);
        }
        let input = s.poll_input(now);
        log_session(log, id, conn.peer(), &mut s);
        drop(s);
        let (op, c) = match (input, chat.as_deref_mut()) {
            (Input::Room(op), Some(c)) => (op, c),
            (other, c) => {
                if let Some(c) = c {
                    Members::new(&c.conns, stage).flush(now);
                }
                conn.wake();
                return match other {
                    Input::Held => Pumped::OwnHeld,
                    Input::Stop => Pumped::Stop,
                    // An echo session never asks for the room.
                    Input::NeedBytes | Input::Room(_) => Pumped::NeedBytes,
                };
            }
        };
        let mut mb = Members::new(&c.conns, stage);
        let o = c.hub.handle_op(now, id, op, &mut mb);
        if let Some(bell) = &c.cluster_bell {
            bell.ring();
        }
        let held = matches!(o, RoomOutcome::Held(_));
        if !matches!(o, RoomOutcome::Done) {
            // The laggards must have what was staged for them before anyone waits; and a
            // reply to the sender must not overtake what the room said before it.
            mb.flush(now);
        }
        c.log_events(log);
        if held {
            conn.session().handle_room(now, o);
            conn.wake();
            return Pumped::RoomHeld;
        }
        outcome = Some(o);
    }
}

impl<C: Member> Chat<C> {
    /// Connection `id` is ending for `reason`: its `LEFT` to the room (if it had joined). The
    /// caller then wakes the senders held back for it.
    pub fn leave(&mut self, log: &EventLog, id: u64, reason: EndReason) {
        let now = Instant::now();
        let mut stage = Stage::default();
        let mut mb = Members::new(&self.conns, &mut stage);
        self.hub.handle_leave(now, id, reason, &mut mb);
        mb.flush(now);
        if let Some(bell) = &self.cluster_bell {
            bell.ring();
        }
        self.log_events(log);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Mode;
    use crate::core::heartbeat::HeartbeatConfig;
    use crate::core::session::{RoomOp, SessionConfig};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    use std::time::Duration;

    struct TestConn {
        session: Mutex<Session>,
        wakes: AtomicUsize,
    }

    impl Member for TestConn {
        fn peer(&self) -> SocketAddr {
            "127.0.0.1:1".parse().unwrap()
        }
        fn session(&self) -> MutexGuard<'_, Session> {
            self.session.lock().unwrap()
        }
        fn wake(&self) {
            self.wakes.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A chat of `names` (ids 1..), every HELLO and JOINED already read.
    fn chat(names: &[&str], queue: usize, t: Instant) -> Chat<TestConn> {
        let mut c = Chat::<TestConn>::default();
        let cfg = SessionConfig {
            mode: Mode::Chat,
            heartbeat: HeartbeatConfig::new(Duration::from_secs(30), Duration::from_secs(10), 3)
                .unwrap(),
            max_line: 1024,
            queue,
            stall: Duration::from_millis(500),
            rate: None,
            tls: false,
            auth: None,
            handshake: Duration::from_secs(10),
        };
        for (i, _) in names.iter().enumerate() {
            let conn = TestConn {
                session: Mutex::new(Session::new(cfg.clone(), t, Duration::ZERO)),
                wakes: AtomicUsize::new(0),
            };
            c.conns.insert(i as u64 + 1, Arc::new(conn));
        }
        let mut stage = Stage::default();
        for (i, name) in names.iter().enumerate() {
            let mut mb = Members::new(&c.conns, &mut stage);
            let o = c
                .hub
                .handle_op(t, i as u64 + 1, RoomOp::Join(name.to_string()), &mut mb);
            assert_eq!(o, RoomOutcome::Done);
            mb.flush(t);
        }
        for id in 1..=names.len() as u64 {
            let _ = written(&c, id);
        }
        c
    }

    /// Everything queued for `id`, as the socket would take it.
    fn written(c: &Chat<TestConn>, id: u64) -> String {
        c.conns[&id].session().drain_written(Instant::now())
    }

    #[test]
    fn a_shared_batch_reaches_everyone_but_each_line_s_sender_in_order() {
        let t = Instant::now();
        let mut c = chat(&["ann", "bob", "cat"], 1 << 20, t);
        let mut stage = Stage::default();
        let mut mb = Members::new(&c.conns, &mut stage);
        for (from, text) in [(1, "a1"), (1, "a2"), (2, "b1"), (1, "a3")] {
            let o = c.hub.handle_op(t, from, RoomOp::Msg(text.into()), &mut mb);
            assert_eq!(o, RoomOutcome::Done);
        }
        // Nothing reaches a queue before the flush...
        assert_eq!(written(&c, 3), "");
        mb.flush(t);
        // ...then one shared batch, cut around each member's own lines.
        assert_eq!(written(&c, 1), "MSG bob b1\n");
        assert_eq!(written(&c, 2), "MSG ann a1\nMSG ann a2\nMSG ann a3\n");
        assert_eq!(
            written(&c, 3),
            "MSG ann a1\nMSG ann a2\nMSG bob b1\nMSG ann a3\n"
        );
    }

    #[test]
    fn the_stage_counts_messages_once_and_bytes_per_recipient() {
        let t = Instant::now();
        let mut c = chat(&["ann", "bob", "cat"], 1 << 20, t);
        let mut stage = Stage::default();
        let mut mb = Members::new(&c.conns, &mut stage);
        for (from, text) in [(1, "a1"), (1, "a2"), (2, "b1")] {
            let o = c.hub.handle_op(t, from, RoomOp::Msg(text.into()), &mut mb);
            assert_eq!(o, RoomOutcome::Done);
        }
        // A control line is no message.
        mb.push(2, t, b"LEFT dan quit\n");
        mb.flush(t);
        // "MSG ann a1\n" and the others are 11 bytes, each for two recipients.
        assert_eq!(stage.relayed, (3, 3 * 2 * 11));
        // Taken by the report (here without metrics: only reset).
        report(&EventLog::default(), &mut stage);
        assert_eq!(stage.relayed, (0, 0));
        // Alone in the room: nothing is relayed.
        let mut c = chat(&["ann"], 1 << 20, t);
        let mut mb = Members::new(&c.conns, &mut stage);
        let o = c.hub.handle_op(t, 1, RoomOp::Msg("x".into()), &mut mb);
        assert_eq!(o, RoomOutcome::Done);
        mb.flush(t);
        assert_eq!(stage.relayed, (0, 0));
    }

    #[test]
    fn a_control_line_keeps_its_place_after_the_batch() {
        let t = Instant::now();
        let mut c = chat(&["ann", "bob"], 1 << 20, t);
        let mut stage = Stage::default();
        let mut mb = Members::new(&c.conns, &mut stage);
        let _ = c.hub.handle_op(t, 1, RoomOp::Msg("before".into()), &mut mb);
        // A single push (JOINED, LEFT) flushes the batch first.
        mb.push(2, t, b"LEFT cat quit\n");
        let _ = c.hub.handle_op(t, 1, RoomOp::Msg("after".into()), &mut mb);
        mb.flush(t);
        assert_eq!(
            written(&c, 2),
            "MSG ann before\nLEFT cat quit\nMSG ann after\n"
        );
    }

    #[test]
    fn the_budget_counts_the_batch_and_holds_the_sender_exactly_at_the_limit() {
        let t = Instant::now();
        // "MSG ann xxxxxx\n" is 15 bytes: a 45-byte queue takes three, not four.
        let mut c = chat(&["ann", "bob"], 45, t);
        let mut stage = Stage::default();
        let mut mb = Members::new(&c.conns, &mut stage);
        for _ in 0..3 {
            let o = c.hub.handle_op(t, 1, RoomOp::Msg("xxxxxx".into()), &mut mb);
            assert_eq!(o, RoomOutcome::Done);
        }
        let o = c.hub.handle_op(t, 1, RoomOp::Msg("xxxxxx".into()), &mut mb);
        assert_eq!(o, RoomOutcome::Held(RoomOp::Msg("xxxxxx".into())));
        mb.flush(t);
        assert_eq!(c.conns[&2].session().lagging_since(), Some(t));
        assert_eq!(written(&c, 2), "MSG ann xxxxxx\n".repeat(3));
        // Drained: the held line now goes.
        let mut mb = Members::new(&c.conns, &mut stage);
        let o = c.hub.handle_op(t, 1, RoomOp::Msg("xxxxxx".into()), &mut mb);
        assert_eq!(o, RoomOutcome::Done);
        mb.flush(t);
        assert_eq!(written(&c, 2), "MSG ann xxxxxx\n");
    }

    #[test]
    fn positioned_and_legacy_members_get_their_own_form_of_each_line() {
        let t = Instant::now();
        let mut c = chat(&["ann", "cat"], 1 << 20, t);
        let bob = Arc::new(TestConn {
            session: Mutex::new(Session::new(
                c.conns[&1].session().config().clone(),
                t,
                Duration::ZERO,
            )),
            wakes: AtomicUsize::new(0),
        });
        c.conns.insert(9, bob);
        let mut stage = Stage::default();
        let mut mb = Members::new(&c.conns, &mut stage);
        let join = RoomOp::JoinSince {
            name: "bob".into(),
            since: None,
            token: None,
        };
        assert_eq!(c.hub.handle_op(t, 9, join, &mut mb), RoomOutcome::Done);
        for text in ["one", "two"] {
            let o = c.hub.handle_op(t, 1, RoomOp::Msg(text.into()), &mut mb);
            assert_eq!(o, RoomOutcome::Done);
        }
        let o = c.hub.handle_op(t, 9, RoomOp::Msg("three".into()), &mut mb);
        assert_eq!(o, RoomOutcome::Done);
        mb.flush(t);
        let bob_saw = written(&c, 9);
        let lines: Vec<&str> = bob_saw.lines().collect();
        assert!(lines[0].starts_with("HELLO "), "{bob_saw}");
        assert!(lines[1].starts_with("WELCOME bob 0:0 "), "{bob_saw}");
        assert_eq!(
            &lines[2..],
            ["SYNCED 0:0 0", "PUB 0:1 ann one", "PUB 0:2 ann two"]
        );
        assert_eq!(written(&c, 1), "JOINED bob\nMSG bob three\n");
        assert_eq!(
            written(&c, 2),
            "JOINED bob\nMSG ann one\nMSG ann two\nMSG bob three\n"
        );
    }
}
