//! The classic wire (CONTRACT section 3) as pure logic: its bytes, the connect-back retry
//! schedule, why a classic connection ends, and the classic client as a sans-IO machine.
//!
//! The classic wire is what the manual's original Python 2 programs speak: two TCP connections
//! per client and no framing at all.
//!
//! ```text
//!  client                                   server
//!  listen client.host:client.port
//!  connect data socket  ───────────────────▶ accept
//!                       ◀─────────────────── connect back to (client IP, client.port)
//!  "Hello, there"       ───── data ────────▶ one read (≤ 1024 bytes)
//!                       ◀──── data ───────── "Echoing..." + exactly those bytes
//!                       ◀──── heartbeat ──── "heartbeat"           (after idle silence)
//!  after block:         ───── heartbeat ───▶ "Echoing..." + what was read
//!                       ◀──── both ───────── "End Connection"      (count unanswered)
//! ```
//! Because nothing is framed, a read returns whatever the kernel has: two messages may arrive
//! in one read and one message may be split over two. The server echoes each read as it comes,
//! exactly like the original, and the client looks for `End Connection` across read
//! boundaries ([`Marker`]).

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use crate::core::client::Outcome;
use crate::core::heartbeat::Action;
use crate::core::wire::EndReason;

/// Prefix of every reply: the server's echo and the client's heartbeat answer.
pub const ECHO_PREFIX: &[u8] = b"Echoing...";
/// What the server sends on the heartbeat socket in a round.
pub const HEARTBEAT: &[u8] = b"heartbeat";
/// What the server sends on both sockets before closing them.
pub const END_CONNECTION: &[u8] = b"End Connection";
/// The original reads at most this many bytes at a time, and echoes each read.
pub const READ_SIZE: usize = 1024;

/// `Echoing...` followed by exactly the bytes of one read.
pub fn echo_reply(read: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(ECHO_PREFIX.len() + read.len());
    out.extend_from_slice(ECHO_PREFIX);
    out.extend_from_slice(read);
    out
}

/// Finds a byte pattern in an unframed stream, even when reads split it.
#[derive(Debug, Clone)]
pub struct Marker {
    pattern: &'static [u8],
    /// The last `pattern.len()` bytes seen, so a match may straddle two reads.
    tail: Vec<u8>,
    seen: bool,
}

impl Marker {
    /// A marker looking for `pattern` (must not be empty).
    pub fn new(pattern: &'static [u8]) -> Self {
        assert!(!pattern.is_empty(), "an empty marker matches everything");
        Self {
            pattern,
            tail: Vec::with_capacity(pattern.len() * 2),
            seen: false,
        }
    }

    /// Feeds the next read; true once the pattern has appeared anywhere in the stream.
    pub fn feed(&mut self, bytes: &[u8]) -> bool {
        let keep = self.pattern.len();
        // Search the old tail joined with the start of the new bytes, then the new bytes.
        let head = &bytes[..bytes.len().min(keep)];
        self.tail.extend_from_slice(head);
        if contains(&self.tail, self.pattern) || contains(bytes, self.pattern) {
            self.seen = true;
        }
        if bytes.len() >= keep {
            self.tail.clear();
            self.tail.extend_from_slice(&bytes[bytes.len() - keep..]);
        } else {
            let drop = self.tail.len().saturating_sub(keep);
            self.tail.drain(..drop);
        }
        self.seen
    }

    /// True once the pattern has appeared.
    pub fn seen(&self) -> bool {
        self.seen
    }

    /// True when the stream so far ends with the pattern.
    pub fn ends_with_pattern(&self) -> bool {
        self.tail.ends_with(self.pattern)
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// When the server tries to connect the heartbeat socket back to the client.
///
/// The original tries once, right after accepting, and a client whose listener is not up yet
/// never gets heartbeats. Ours tries at once and then every `step` until `limit` has passed
/// since the first attempt: the defaults (every 50 ms for 2 s, 41 attempts) cover a client
/// that is still starting without holding a dead address for long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectBackSchedule {
    /// Time between attempts.
    pub step: Duration,
    /// No attempt starts later than this after the first.
    pub limit: Duration,
}

impl Default for ConnectBackSchedule {
    fn default() -> Self {
        Self {
            step: Duration::from_millis(50),
            limit: Duration::from_secs(2),
        }
    }
}

impl ConnectBackSchedule {
    /// Offset from the first attempt of attempt `n` (0-based), or `None` when there is none.
    pub fn attempt_at(&self, n: u32) -> Option<Duration> {
        let at = self.step.checked_mul(n)?;
        (at <= self.limit).then_some(at)
    }

    /// How many attempts the schedule allows.
    pub fn attempts(&self) -> u32 {
        if self.step.is_zero() {
            return 1;
        }
        let n = self.limit.as_nanos() / self.step.as_nanos();
        u32::try_from(n).unwrap_or(u32::MAX - 1) + 1
    }

    /// How long one attempt may take before the next is due (at least 10 ms).
    pub fn attempt_timeout(&self) -> Duration {
        self.step.max(Duration::from_millis(10))
    }
}

/// Why a classic connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClassicEnd {
    /// `count` heartbeats went unanswered (or, without a heartbeat socket, the client was
    /// silent for idle + count * interval).
    HeartbeatTimeout,
    /// A heartbeat could not be sent: the heartbeat socket failed or the client closed it.
    HeartbeatLost,
    /// The server is shutting down.
    ServerShutdown,
    /// Writing an echo on the data socket failed or stalled.
    DataWriteFailed,
    /// The client closed (or reset) its data socket.
    ClientClosed,
}

impl ClassicEnd {
    /// True when the server says `End Connection` before closing (everything but a close the
    /// client did itself, where there is nobody left to tell).
    pub fn sends_end_connection(self) -> bool {
        self != Self::ClientClosed
    }

    /// The word in log lines, shared with the line wire's END reasons where they mean the same.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HeartbeatTimeout => "heartbeat-timeout",
            Self::HeartbeatLost => "heartbeat-socket-failed",
            Self::ServerShutdown => "server-shutdown",
            Self::DataWriteFailed => "data-write-failed",
            Self::ClientClosed => "closed",
        }
    }

    /// Compact code for an atomic (0 is reserved for "still open").
    pub fn code(self) -> u8 {
        match self {
            Self::HeartbeatTimeout => 1,
            Self::HeartbeatLost => 2,
            Self::ServerShutdown => 3,
            Self::DataWriteFailed => 4,
            Self::ClientClosed => 5,
        }
    }

    /// Inverse of [`ClassicEnd::code`].
    pub fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            1 => Self::HeartbeatTimeout,
            2 => Self::HeartbeatLost,
            3 => Self::ServerShutdown,
            4 => Self::DataWriteFailed,
            5 => Self::ClientClosed,
            _ => return None,
        })
    }
}

/// The two sockets of a classic connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClassicSocket {
    /// The client's connection to the server: messages and their echoes.
    Data,
    /// The server's connection back to the client: heartbeats and their replies.
    Heartbeat,
}

impl ClassicEnd {
    /// True when `End Connection` is written on `socket` before it is closed: whenever the
    /// server says it at all ([`ClassicEnd::sends_end_connection`]), except on the socket
    /// whose failure ended the connection (a write there would only stall or fail again).
    pub fn end_connection_on(self, socket: ClassicSocket) -> bool {
        let failed = match socket {
            ClassicSocket::Data => Self::DataWriteFailed,
            ClassicSocket::Heartbeat => Self::HeartbeatLost,
        };
        self.sends_end_connection() && self != failed
    }
}

/// The state of the heartbeat socket, as the server's companion thread sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeartbeatSocket {
    /// Not connected back (yet, or ever): the heartbeat core keeps its schedule anyway.
    Absent,
    /// Connected, and the client has not closed its end.
    Open,
    /// The client closed (or reset) its end: nothing can be sent or answered there.
    Closed,
}

/// What the server does with one action of the heartbeat core on the classic wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum HeartbeatStep {
    /// Write [`HEARTBEAT`] on the heartbeat socket (heartbeat `k` of the round); a failed
    /// write ends the connection with [`ClassicEnd::HeartbeatLost`].
    Send(u32),
    /// Heartbeat `k` is due but there is no socket to send it on: log it and go on, so a
    /// silent client is still closed on time.
    NotSent(u32),
    /// End the connection for this reason.
    End(ClassicEnd),
}

impl HeartbeatStep {
    /// The decision for `action` with the heartbeat socket in state `socket`.
    pub fn decide(action: Action, socket: HeartbeatSocket) -> Self {
        match (action, socket) {
            (Action::Dead, _) => Self::End(ClassicEnd::HeartbeatTimeout),
            (Action::SendPing(k), HeartbeatSocket::Absent) => Self::NotSent(k),
            // A client that closed its heartbeat socket cannot answer: a dead peer now, not
            // count intervals later.
            (Action::SendPing(_), HeartbeatSocket::Closed) => Self::End(ClassicEnd::HeartbeatLost),
            (Action::SendPing(k), HeartbeatSocket::Open) => Self::Send(k),
        }
    }

    /// True when `action` starts a heartbeat round (its first heartbeat is due), which the
    /// server logs whatever it then does: send it, note it cannot, or end the connection.
    pub fn starts_round(action: Action) -> bool {
        action == Action::SendPing(1)
    }
}

/// The connect-back's attempts on a [`ConnectBackSchedule`]: when the next one is due and how
/// many were made. The thread that makes them owns the socket and the address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectBackAttempts {
    sched: ConnectBackSchedule,
    start: Instant,
    made: u32,
}

impl ConnectBackAttempts {
    /// The first attempt is due at `now`.
    pub fn new(sched: ConnectBackSchedule, now: Instant) -> Self {
        Self {
            sched,
            start: now,
            made: 0,
        }
    }

    /// When the next attempt is due; `None` once the schedule is used up (then give up).
    pub fn next_at(&self) -> Option<Instant> {
        self.sched
            .attempt_at(self.made)
            .and_then(|d| self.start.checked_add(d))
    }

    /// Records that an attempt starts; returns how many have been made, this one included.
    pub fn start_attempt(&mut self) -> u32 {
        self.made += 1;
        self.made
    }

    /// Attempts made so far.
    pub fn made(&self) -> u32 {
        self.made
    }

    /// How long one attempt may take.
    pub fn attempt_timeout(&self) -> Duration {
        self.sched.attempt_timeout()
    }
}

impl fmt::Display for ClassicEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How long the classic client waits for any reply on the data socket to a message it sent
/// before it calls the server gone. The original server echoes at once, so this only fires
/// when the server (or the path to it) vanished without closing.
pub const ECHO_PATIENCE: Duration = Duration::from_secs(10);

/// Classic client behaviour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassicClientConfig {
    /// Time between data messages.
    pub every: Duration,
    /// Delay before answering a heartbeat.
    pub block: Duration,
    /// The data message, sent as raw bytes.
    pub message: Vec<u8>,
    /// Leave after this many messages have been sent and echoed.
    pub messages: Option<u64>,
    /// Longest wait for an echo; see [`ECHO_PATIENCE`].
    pub patience: Duration,
}

/// What the classic client's driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum ClassicClientAction {
    /// Write these bytes on the data socket.
    SendData(Vec<u8>),
    /// Write these bytes on the heartbeat socket.
    SendHeartbeatReply(Vec<u8>),
    /// The session is over.
    Finish(Outcome),
}

/// The classic client as a state machine: when to send data, when to answer a heartbeat,
/// and how the session ended. `End Connection` maps to
/// [`Outcome::ServerEnded`]`(`[`EndReason::HeartbeatTimeout`]`)`, the only reason the original
/// server ever sends it.
#[derive(Debug, Clone)]
pub struct ClassicClient {
    cfg: ClassicClientConfig,
    next_send: Option<Instant>,
    sent: u64,
    /// The oldest data message not yet followed by any reply.
    awaiting_since: Option<Instant>,
    last_rx: Instant,
    replies: VecDeque<(Instant, Vec<u8>)>,
    hb_end: Marker,
    data_end: Marker,
    finished: Option<Outcome>,
}

impl ClassicClient {
    /// A client whose data socket connected at `now`; the first message goes out at once.
    pub fn new(cfg: ClassicClientConfig, now: Instant) -> Self {
        Self {
            cfg,
            next_send: Some(now),
            sent: 0,
            awaiting_since: None,
            last_rx: now,
            replies: VecDeque::new(),
            hb_end: Marker::new(END_CONNECTION),
            data_end: Marker::new(END_CONNECTION),
            finished: None,
        }
    }

    /// Data messages sent so far.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    fn finish(&mut self, o: Outcome) -> Option<Outcome> {
        Some(*self.finished.get_or_insert(o))
    }

    /// Bytes arrived on the data socket at `now` (echoes, possibly `End Connection`).
    pub fn handle_data(&mut self, now: Instant, bytes: &[u8]) -> Option<Outcome> {
        if self.finished.is_some() {
            return self.finished;
        }
        self.last_rx = self.last_rx.max(now);
        self.awaiting_since = None;
        // On the data socket `End Connection` only counts as the last bytes before the close
        // (see `handle_data_eof`): an echoed message may contain those words.
        self.data_end.feed(bytes);
        None
    }

    /// The data socket closed at `now`.
    pub fn handle_data_eof(&mut self, now: Instant) -> Outcome {
        let o = if self.data_end.ends_with_pattern() || self.hb_end.seen() {
            Outcome::ServerEnded(EndReason::HeartbeatTimeout)
        } else {
            Outcome::ServerLost(now.saturating_duration_since(self.last_rx))
        };
        self.finish(o).unwrap_or(o)
    }

    /// Bytes arrived on the heartbeat socket at `now`: `End Connection` ends the session,
    /// anything else is answered with `Echoing...` + the bytes after `block`.
    pub fn handle_heartbeat(&mut self, now: Instant, bytes: &[u8]) -> Option<Outcome> {
        if self.finished.is_some() {
            return self.finished;
        }
        self.last_rx = self.last_rx.max(now);
        if self.hb_end.feed(bytes) {
            return self.finish(Outcome::ServerEnded(EndReason::HeartbeatTimeout));
        }
        let due = now.checked_add(self.cfg.block).unwrap_or(now);
        self.replies.push_back((due, echo_reply(bytes)));
        None
    }

    /// When [`ClassicClient::poll`] next has something to do.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.finished.is_some() {
            return None;
        }
        let lost = self
            .awaiting_since
            .and_then(|t| t.checked_add(self.cfg.patience));
        [self.next_send, self.replies.front().map(|r| r.0), lost]
            .into_iter()
            .flatten()
            .min()
    }

    /// What is due at `now`, one action per call; call again until `None`.
    #[must_use]
    pub fn poll(&mut self, now: Instant) -> Option<ClassicClientAction> {
        if self.finished.is_some() {
            return None;
        }
        if let Some(since) = self.awaiting_since {
            let waited = now.saturating_duration_since(since);
            if waited >= self.cfg.patience {
                let silent = now.saturating_duration_since(self.last_rx);
                return self
                    .finish(Outcome::ServerLost(silent))
                    .map(ClassicClientAction::Finish);
            }
        }
        if self.replies.front().is_some_and(|r| r.0 <= now) {
            let (_, bytes) = self.replies.pop_front()?;
            return Some(ClassicClientAction::SendHeartbeatReply(bytes));
        }
        if self.cfg.messages.is_some_and(|n| self.sent >= n) {
            if self.awaiting_since.is_none() {
                return self
                    .finish(Outcome::UserEnded)
                    .map(ClassicClientAction::Finish);
            }
            return None;
        }
        if self.next_send.is_some_and(|at| at <= now) {
            self.sent += 1;
            self.awaiting_since.get_or_insert(now);
            let planned = self.next_send.unwrap_or(now);
            // Keep the grid (no drift), but never fire a backlog of messages at once.
            self.next_send = planned.checked_add(self.cfg.every).map(|at| at.max(now));
            return Some(ClassicClientAction::SendData(self.cfg.message.clone()));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn cfg(every: u64, block: u64) -> ClassicClientConfig {
        ClassicClientConfig {
            every: ms(every),
            block: ms(block),
            message: b"Hello, there".to_vec(),
            messages: None,
            patience: ms(1000),
        }
    }

    #[test]
    fn end_connection_goes_on_every_socket_but_the_one_that_failed() {
        use ClassicSocket::{Data, Heartbeat};
        for why in [ClassicEnd::HeartbeatTimeout, ClassicEnd::ServerShutdown] {
            assert!(why.end_connection_on(Data) && why.end_connection_on(Heartbeat));
        }
        let lost = ClassicEnd::HeartbeatLost;
        assert!(lost.end_connection_on(Data) && !lost.end_connection_on(Heartbeat));
        let stalled = ClassicEnd::DataWriteFailed;
        assert!(!stalled.end_connection_on(Data) && stalled.end_connection_on(Heartbeat));
        let closed = ClassicEnd::ClientClosed;
        assert!(!closed.end_connection_on(Data) && !closed.end_connection_on(Heartbeat));
    }

    #[test]
    fn heartbeat_steps() {
        use HeartbeatSocket::{Absent, Closed, Open};
        assert_eq!(
            HeartbeatStep::decide(Action::SendPing(1), Open),
            HeartbeatStep::Send(1)
        );
        assert_eq!(
            HeartbeatStep::decide(Action::SendPing(2), Absent),
            HeartbeatStep::NotSent(2)
        );
        assert_eq!(
            HeartbeatStep::decide(Action::SendPing(1), Closed),
            HeartbeatStep::End(ClassicEnd::HeartbeatLost)
        );
        for socket in [Absent, Open, Closed] {
            assert_eq!(
                HeartbeatStep::decide(Action::Dead, socket),
                HeartbeatStep::End(ClassicEnd::HeartbeatTimeout)
            );
        }
        assert!(HeartbeatStep::starts_round(Action::SendPing(1)));
        assert!(!HeartbeatStep::starts_round(Action::SendPing(2)));
        assert!(!HeartbeatStep::starts_round(Action::Dead));
    }

    #[test]
    fn connect_back_attempts_follow_the_schedule_then_stop() {
        let t0 = Instant::now();
        let sched = ConnectBackSchedule {
            step: ms(50),
            limit: ms(120),
        };
        let mut a = ConnectBackAttempts::new(sched, t0);
        let mut due = Vec::new();
        while let Some(at) = a.next_at() {
            due.push(at - t0);
            a.start_attempt();
        }
        assert_eq!(due, [ms(0), ms(50), ms(100)]);
        assert_eq!(a.made(), sched.attempts());
        assert_eq!(a.attempt_timeout(), ms(50));
    }

    #[test]
    fn echo_is_prefix_plus_exact_bytes() {
        assert_eq!(echo_reply(b"Hello, there"), b"Echoing...Hello, there");
        assert_eq!(echo_reply(b""), b"Echoing...");
        assert_eq!(echo_reply(&[0xff, 0]), b"Echoing...\xff\0");
    }

    #[test]
    fn marker_finds_the_pattern_across_any_split() {
        let stream = b"Echoing...Hello, thereEnd Connection";
        for cut1 in 0..stream.len() {
            for cut2 in cut1..stream.len() {
                let mut m = Marker::new(END_CONNECTION);
                let hit = m.feed(&stream[..cut1]) | m.feed(&stream[cut1..cut2]);
                let hit = hit | m.feed(&stream[cut2..]);
                assert!(hit && m.seen() && m.ends_with_pattern(), "{cut1} {cut2}");
            }
        }
        let mut m = Marker::new(END_CONNECTION);
        for b in b"heartbeatheartbeatEnd Connectio" {
            assert!(!m.feed(&[*b]));
        }
        assert!(!m.ends_with_pattern());
        assert!(m.feed(b"n"));
        let mut m = Marker::new(END_CONNECTION);
        m.feed(b"Echoing...End Connection, said the user");
        assert!(m.seen() && !m.ends_with_pattern());
    }

    #[test]
    fn connect_back_schedule_is_every_50ms_for_2s() {
        let s = ConnectBackSchedule::default();
        assert_eq!(s.attempt_at(0), Some(Duration::ZERO));
        assert_eq!(s.attempt_at(1), Some(ms(50)));
        assert_eq!(s.attempt_at(40), Some(ms(2000)));
        assert_eq!(s.attempt_at(41), None);
        assert_eq!(s.attempts(), 41);
        assert_eq!(s.attempt_timeout(), ms(50));
        let once = ConnectBackSchedule {
            step: ms(0),
            limit: ms(0),
        };
        assert_eq!(once.attempts(), 1);
        assert_eq!(once.attempt_at(0), Some(Duration::ZERO));
    }

    #[test]
    fn end_codes_round_trip() {
        for e in [
            ClassicEnd::HeartbeatTimeout,
            ClassicEnd::HeartbeatLost,
            ClassicEnd::ServerShutdown,
            ClassicEnd::DataWriteFailed,
            ClassicEnd::ClientClosed,
        ] {
            assert_eq!(ClassicEnd::from_code(e.code()), Some(e));
            assert_eq!(e.sends_end_connection(), e != ClassicEnd::ClientClosed);
        }
        assert_eq!(ClassicEnd::from_code(0), None);
    }

    #[test]
    fn client_sends_at_once_then_every_interval() {
        let t0 = Instant::now();
        let mut c = ClassicClient::new(cfg(100, 0), t0);
        assert_eq!(
            c.poll(t0),
            Some(ClassicClientAction::SendData(b"Hello, there".to_vec()))
        );
        assert_eq!(c.poll(t0), None);
        assert_eq!(c.poll_timeout(), Some(t0 + ms(100)));
        assert_eq!(c.handle_data(t0 + ms(1), b"Echoing...Hello, there"), None);
        assert!(matches!(
            c.poll(t0 + ms(100)),
            Some(ClassicClientAction::SendData(_))
        ));
        assert_eq!(c.sent(), 2);
    }

    #[test]
    fn heartbeat_is_answered_after_block_with_what_was_read() {
        let t0 = Instant::now();
        let mut c = ClassicClient::new(cfg(10_000, 300), t0);
        let _ = c.poll(t0);
        let _ = c.handle_data(t0, b"Echoing...Hello, there");
        assert_eq!(c.handle_heartbeat(t0 + ms(50), b"heartbeat"), None);
        assert_eq!(c.poll_timeout(), Some(t0 + ms(350)));
        assert_eq!(c.poll(t0 + ms(349)), None);
        assert_eq!(
            c.poll(t0 + ms(350)),
            Some(ClassicClientAction::SendHeartbeatReply(
                b"Echoing...heartbeat".to_vec()
            ))
        );
    }

    #[test]
    fn end_connection_on_the_heartbeat_socket_ends_at_once_even_while_blocked() {
        let t0 = Instant::now();
        let mut c = ClassicClient::new(cfg(10_000, 5_000), t0);
        let _ = c.poll(t0);
        let _ = c.handle_heartbeat(t0 + ms(10), b"heartbeat");
        assert_eq!(c.handle_heartbeat(t0 + ms(20), b"heartbeatEnd Con"), None);
        let ended = Some(Outcome::ServerEnded(EndReason::HeartbeatTimeout));
        assert_eq!(c.handle_heartbeat(t0 + ms(21), b"nection"), ended);
        assert_eq!(c.poll(t0 + ms(10_000)), None, "no late reply after the end");
        assert_eq!(c.poll_timeout(), None);
    }

    #[test]
    fn data_eof_after_end_connection_is_server_ended_else_lost() {
        let t0 = Instant::now();
        let mut c = ClassicClient::new(cfg(100, 0), t0);
        let _ = c.handle_data(t0, b"Echoing...Hello, thereEnd Connection");
        assert_eq!(
            c.handle_data_eof(t0 + ms(1)),
            Outcome::ServerEnded(EndReason::HeartbeatTimeout)
        );
        let mut c = ClassicClient::new(cfg(100, 0), t0);
        let _ = c.handle_data(t0, b"Echoing...End Connection is my message");
        assert_eq!(c.handle_data_eof(t0 + ms(40)), Outcome::ServerLost(ms(40)));
    }

    #[test]
    fn unanswered_data_for_patience_means_the_server_is_gone() {
        let t0 = Instant::now();
        let mut c = ClassicClient::new(cfg(300, 0), t0);
        let _ = c.poll(t0);
        let _ = c.poll(t0 + ms(300));
        let _ = c.poll(t0 + ms(600));
        assert_eq!(c.poll_timeout(), Some(t0 + ms(900)));
        let _ = c.poll(t0 + ms(900));
        assert_eq!(
            c.poll(t0 + ms(1000)),
            Some(ClassicClientAction::Finish(Outcome::ServerLost(ms(1000))))
        );
    }

    #[test]
    fn messages_limit_leaves_once_the_last_echo_arrived() {
        let t0 = Instant::now();
        let mut c = ClassicClient::new(
            ClassicClientConfig {
                messages: Some(2),
                ..cfg(100, 0)
            },
            t0,
        );
        let _ = c.poll(t0);
        let _ = c.handle_data(t0, b"Echoing...Hello, there");
        assert!(matches!(
            c.poll(t0 + ms(100)),
            Some(ClassicClientAction::SendData(_))
        ));
        assert_eq!(c.poll(t0 + ms(150)), None, "waits for the echo");
        let _ = c.handle_data(t0 + ms(160), b"Echoing...Hello, there");
        assert_eq!(
            c.poll(t0 + ms(160)),
            Some(ClassicClientAction::Finish(Outcome::UserEnded))
        );
    }
}
