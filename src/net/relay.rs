//! What both engines share around the core's chat hub: the room and its connections under
//! one lock, a write-back cache that makes relaying to many members cheap, and the mapping of
//! the core's events to log lines. Plumbing only: every decision is the hub's or a session's.

use std::net::SocketAddr;
use std::sync::{Arc, MutexGuard};
use std::time::Instant;

use crate::core::hub::{Hub, HubEvent, Mailboxes};
use crate::core::room::{IdMap, MemberId};
use crate::core::session::{Input, RoomOutcome, Session, SessionEvent};
use crate::core::wire::EndReason;
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
}

impl<C> Default for Chat<C> {
    fn default() -> Self {
        Self {
            hub: Hub::default(),
            conns: IdMap::default(),
        }
    }
}

/// The hub's view of the members' queues, as a write-back cache over their sessions.
///
/// Relaying one message to 100 members would otherwise lock 100 sessions twice per message.
/// Instead each member's session is locked once per batch of lines to read its free budget,
/// lines are staged here, and [`Members::flush`] hands each member its staged bytes with one
/// more lock and wakes its companion once. The budget only grows meanwhile (companions only
/// drain), so answering [`Mailboxes::has_room`] from the snapshot is never too generous. The
/// hub still makes every decision; this only makes asking cheap.
pub struct Members<'a, C> {
    conns: &'a IdMap<Arc<C>>,
    staged: &'a mut IdMap<Staged>,
}

/// What a batch has queued for one member so far.
#[derive(Debug, Default)]
pub struct Staged {
    /// Budget left: the session's free bytes when first asked, less what is staged.
    room: usize,
    /// The session was open when first asked.
    open: bool,
    bytes: Vec<u8>,
}

/// Staged bytes per member after which a batch is flushed anyway (bounds memory and delay).
const STAGE_LIMIT: usize = 64 * 1024;

impl<'a, C: Member> Members<'a, C> {
    /// A view of `conns` staging into `staged` (keep it across batches to reuse its memory).
    pub fn new(conns: &'a IdMap<Arc<C>>, staged: &'a mut IdMap<Staged>) -> Self {
        Self { conns, staged }
    }

    fn stage(&mut self, id: MemberId) -> Option<&mut Staged> {
        let conn = self.conns.get(&id)?;
        Some(self.staged.entry(id).or_insert_with(|| {
            let s = conn.session();
            Staged {
                room: s.config().queue.saturating_sub(s.queued()),
                open: s.is_open(),
                bytes: Vec::new(),
            }
        }))
    }

    /// Hands every member its staged bytes and wakes its writer.
    pub fn flush(&mut self, now: Instant) {
        for (id, st) in self.staged.drain() {
            if st.bytes.is_empty() {
                continue;
            }
            if let Some(c) = self.conns.get(&id) {
                c.session().push(now, &st.bytes);
                c.wake();
            }
        }
    }
}

impl<C: Member> Mailboxes for Members<'_, C> {
    fn has_room(&mut self, id: MemberId, len: usize) -> bool {
        self.stage(id).is_some_and(|st| st.open && len <= st.room)
    }
    fn mark_lagging(&mut self, id: MemberId, now: Instant) {
        if let Some(c) = self.conns.get(&id) {
            c.session().mark_lagging(now);
            // Its writer must learn the new deadline (lagging for `--stall` ends it).
            c.wake();
        }
    }
    fn push(&mut self, id: MemberId, now: Instant, line: &[u8]) {
        let full = match self.stage(id) {
            Some(st) if st.open => {
                st.bytes.extend_from_slice(line);
                st.room = st.room.saturating_sub(line.len());
                st.bytes.len() >= STAGE_LIMIT
            }
            _ => false,
        };
        if full {
            self.flush(now);
        }
    }
    fn is_open(&mut self, id: MemberId) -> bool {
        self.stage(id).is_some_and(|st| st.open)
    }
    fn end(&mut self, id: MemberId, now: Instant, reason: EndReason) {
        if let Some(c) = self.conns.get(&id) {
            c.session().end(now, reason, true);
            // Its engine must notice the end (write END, then leave the room).
            c.wake();
        }
        if let Some(st) = self.staged.get_mut(&id) {
            // Nothing more is staged for it (a push to an ending session is dropped anyway).
            st.open = false;
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

/// Handles the complete lines a session holds: echo-mode lines inside the session, chat lines
/// through the hub (`chat`, locked by the caller, who keeps it locked while it prepares to
/// wait after [`Pumped::RoomHeld`], so a laggard's catch-up cannot be missed). `staged` is
/// the caller's reusable stage for [`Members`]. One clock reading serves the whole batch of
/// lines a read brought: the flow-control clocks tolerate microseconds, and a relay at a
/// million lines per second should not read the clock a million times.
pub fn pump<C: Member>(
    log: &EventLog,
    mut chat: Option<&mut Chat<C>>,
    id: u64,
    conn: &C,
    staged: &mut IdMap<Staged>,
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
                    Members::new(&c.conns, staged).flush(now);
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
        let mut mb = Members::new(&c.conns, staged);
        let o = c.hub.handle_op(now, id, op, &mut mb);
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
        let mut staged = IdMap::default();
        let mut mb = Members::new(&self.conns, &mut staged);
        self.hub.handle_leave(now, id, reason, &mut mb);
        mb.flush(now);
        self.log_events(log);
    }
}
