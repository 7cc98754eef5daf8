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
//! [`Session`]: crate::core::session::Session

use std::collections::VecDeque;
use std::time::Instant;

use crate::core::room::{MemberId, Recipients, Room};
use crate::core::session::{RoomOp, RoomOutcome, Session};
use crate::core::wire::{EndReason, ServerMsg};

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
    /// True when every member of `to` but `except` is open and has room for `len` more
    /// bytes (one question for the whole room, so a mailbox can answer it from a summary).
    fn all_have_room(&mut self, to: Recipients<'_>, except: MemberId, len: usize) -> bool {
        to.ids
            .iter()
            .all(|&id| id == except || self.has_room(id, len))
    }
    /// Queues `line` for every member of `to` but `except` (after
    /// [`Mailboxes::all_have_room`] said yes): a mailbox may keep the line once for all.
    fn broadcast(&mut self, to: Recipients<'_>, except: MemberId, now: Instant, line: &[u8]) {
        for &id in to.ids {
            if id != except {
                self.push(id, now, line);
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
}

/// Something the engine should log.
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
}

/// The chat room. See the module docs for the policy.
#[derive(Debug, Default)]
pub struct Hub {
    room: Room,
    closed: bool,
    events: VecDeque<HubEvent>,
    /// The line being delivered (reused, so relaying allocates nothing per message).
    line: Vec<u8>,
}

impl Hub {
    /// An empty, open room.
    pub fn new() -> Self {
        Self::default()
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
            RoomOp::Join(name) => match self.room.handle_join(from, &name) {
                Err(bad) => RoomOutcome::Refused(bad),
                Ok(joined) => {
                    let line = joined.msg.encode();
                    for &to in &joined.to {
                        push_control(mb, to, now, line.as_bytes());
                    }
                    self.events.push_back(HubEvent::Joined { id: from, name });
                    RoomOutcome::Done
                }
            },
            RoomOp::Who => RoomOutcome::Reply(ServerMsg::Members(self.room.names())),
            RoomOp::Msg(text) => {
                let Some(name) = self.room.name_of(from) else {
                    return match self.room.handle_msg(from, &text) {
                        Err(bad) => RoomOutcome::Refused(bad),
                        Ok(_) => RoomOutcome::Done,
                    };
                };
                // `MSG NAME TEXT\n`: checked before it is built, so a held text goes back
                // to the sender untouched.
                let len = "MSG ".len() + name.len() + 1 + text.len() + 1;
                let to = self.room.recipients();
                if !mb.all_have_room(to, from, len) {
                    for &id in to.ids {
                        if id != from && !mb.has_room(id, len) {
                            mb.mark_lagging(id, now);
                        }
                    }
                    return RoomOutcome::Held(RoomOp::Msg(text));
                }
                // Built once in a reused buffer: no allocation per message.
                self.line.clear();
                for part in [b"MSG ", name.as_bytes(), b" ", text.as_bytes(), b"\n"] {
                    self.line.extend_from_slice(part);
                }
                debug_assert_eq!(self.line.len(), len);
                mb.broadcast(to, from, now, &self.line);
                RoomOutcome::Done
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
        let Some(left) = self.room.handle_leave(id, reason) else {
            return;
        };
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
    pub fn handle_shutdown(&mut self) -> usize {
        self.closed = true;
        let n = self.room.len();
        self.room.clear();
        n
    }

    /// The next thing to log.
    pub fn poll_event(&mut self) -> Option<HubEvent> {
        self.events.pop_front()
    }
}

/// Queues a room change even over the budget (it is small and happens once per member),
/// marking a recipient pushed over the budget as lagging.
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
            let t = Instant::now();
            let mut sim = Self {
                t,
                hub: Hub::new(),
                s: HashMap::new(),
                got: HashMap::new(),
                wire: HashMap::new(),
                partial: HashMap::new(),
            };
            for (i, name) in names.iter().enumerate() {
                let id = i as MemberId + 1;
                sim.s.insert(id, Session::new(cfg(), t));
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
        assert_eq!(sim.hub.handle_shutdown(), 3);
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

    #[test]
    fn nothing_is_handled_after_the_end_state_began() {
        let mut sim = Sim::new(&["ann"]);
        sim.s.insert(9, Session::new(cfg(), sim.t));
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
}
