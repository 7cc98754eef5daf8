//! One client connection of the line-wire server, as a sans-IO machine.
//!
//! A [`Session`] owns everything the server decides about one connection: line decoding and
//! verb dispatch, the heartbeat, the outbound queue and its byte budget, flow control, and the
//! end state. It never touches a socket or reads the clock: the engine feeds it received bytes
//! ([`Session::handle_rx`]), the instant, and write results, and takes out bytes to write
//! ([`Session::poll_transmit`]), lines the chat hub must handle ([`Session::poll_input`]),
//! events to log ([`Session::poll_event`]) and its next deadline ([`Session::poll_timeout`]).
//!
//! ## Flow control (CONTRACT section 2)
//! The outbound queue holds at most `queue` bytes, including a line the socket has taken
//! only part of. When a line for this client does not fit, the client is
//! *lagging*: whoever produced the line is held back (the engine stops reading that sender's
//! socket) and the line is retried later, so nothing is dropped and no reader that keeps
//! reading is ever ended. The client stops lagging once its queue has drained to half the
//! budget ([`Session::handle_written`] reports it, so the engine can wake the held senders).
//! A client that lags for `stall`, or whose socket accepts nothing for `stall` (counted from
//! a write the socket refused, so a writer the OS did not schedule is not the client's
//! fault), is ended `END slow-consumer`.
//!
//! ## Authentication (CONTRACT section 9)
//! With an [`AuthConfig`] (`--auth-secret`) the first line other than an empty keep-alive or
//! a `PONG` (the answer to our own `PING` is allowed) must be `AUTH TOKEN`, within
//! `handshake` of the connection's start. Anything else first, no `AUTH` in time, a token
//! [`AuthConfig::verify`] refuses, a later `JOIN` (plain or `SINCE`, echo mode too) under
//! another name than the token's `sub`, or a second `AUTH` for another `sub` ends the
//! session `END auth-failed` at once (an urgent end), with a [`SessionEvent::AuthFailed`]
//! saying why (never the token). Success says nothing on the wire (the contract fixes the
//! bytes) and is logged. The token's `exp` (plus the leeway) is a deadline like the others:
//! the session is ended `auth-failed` then, unless a new `AUTH` for the same `sub` pushed it
//! later. Token times are judged on the wall clock, which the session never reads: the engine
//! reads it once at accept ([`Session::new`]), and the session carries it forward on the
//! monotonic `now`. Without an [`AuthConfig`], `AUTH` is refused `ERR unknown-verb`.
//!
//! ## End state
//! The first reason given wins. Urgent ends (`heartbeat-timeout`, `slow-consumer`,
//! `server-shutdown`, `flood`, `auth-failed`) drop what is queued, except `HELLO` (the first
//! line on every connection, even one ended before the socket took it: a client that sent
//! its first lines without reading still sees it) and the rest of a line the socket has
//! taken part of (a client never sees half a line followed by `END`), and queue `END` next;
//! `quit` and `line-too-long` queue `END` after everything queued before them. Once
//! the end state has begun nothing more is read, dispatched or relayed for this client: only
//! the `END` line still goes out.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::Mode;
use crate::core::auth::AuthConfig;
use crate::core::heartbeat::{Action, Answered, Heartbeat, HeartbeatConfig};
use crate::core::outq::{OutQueue, SharedBytes, MAX_SLICES};
use crate::core::rate::{Bucket, RateLimit, Verdict};
use crate::core::wire::{
    printable, BadLine, ClientMsg, EndReason, ErrCode, LineDecoder, Pos, ResumeToken, ServerMsg,
};

/// Most bytes [`Session::poll_transmit`] copies out at once (one write system call).
pub const TRANSMIT_BATCH: usize = 64 * 1024;

/// Longest the last lines (up to `END`) may wait on a socket that accepts nothing once the
/// session is ending (or `stall`, if shorter). A client that stopped reading, or whose cable
/// was cut, will never take them; one that merely paused gets this long.
pub const END_GRACE: Duration = Duration::from_millis(200);

/// What one session is configured with (the server's settings that concern a connection).
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Echo or chat.
    pub mode: Mode,
    /// The heartbeat timing.
    pub heartbeat: HeartbeatConfig,
    /// Longest accepted line, in bytes (`--max-line`).
    pub max_line: usize,
    /// Outbound queue budget, in bytes (`--queue`).
    pub queue: usize,
    /// How long a client may lag or accept nothing before it is ended (`--stall`).
    pub stall: Duration,
    /// Lines per second the client may send (`--rate`, `--burst`; `None`: no limit).
    pub rate: Option<RateLimit>,
    /// The connection starts with a TLS handshake (`--tls-cert`): until the engine reports it
    /// done ([`Session::handle_secured`]) no heartbeat round starts, and a handshake not done
    /// within `handshake` closes the connection.
    pub tls: bool,
    /// The key tokens are verified with (`--auth-secret`; `None`: no authentication).
    pub auth: Option<Arc<AuthConfig>>,
    /// Time a new connection has to finish its handshake (`--handshake-timeout`): its TLS
    /// handshake, and its `AUTH` when `auth` is set, both counted from the connection's start.
    pub handshake: Duration,
}

/// Where the wall clock stood at a monotonic instant: the engine reads both clocks once, at
/// accept, so the session can tell the wall-clock time of any later `now` without reading a
/// clock (token expiry is wall-clock time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WallAnchor {
    /// The monotonic instant.
    pub mono: Instant,
    /// The wall-clock time then, since the Unix epoch.
    pub unix: Duration,
}

impl WallAnchor {
    /// The wall-clock time at `now` (since the Unix epoch).
    pub fn unix_at(&self, now: Instant) -> Duration {
        self.unix
            .saturating_add(now.saturating_duration_since(self.mono))
    }

    /// The instant the wall clock reads `unix` (the anchor's own instant for a time before
    /// it); `None` beyond what an [`Instant`] can hold.
    pub fn instant_at(&self, unix: Duration) -> Option<Instant> {
        self.mono.checked_add(unix.saturating_sub(self.unix))
    }
}

/// A line the chat hub must handle for this session (chat mode only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoomOp {
    /// `JOIN NAME`
    Join(String),
    /// `MSG TEXT`
    Msg(String),
    /// `WHO`
    Who,
    /// `JOIN NAME SINCE POS [TOKEN]`: join, or take over a name with its token, with
    /// positions on (`PUB` instead of `MSG`), replaying what was missed since `since`.
    JoinSince {
        /// The name.
        name: String,
        /// The last position the client saw (`None`: nothing yet).
        since: Option<Pos>,
        /// The name's resume token, if the client has one.
        token: Option<ResumeToken>,
    },
    /// `HISTORY N`: the newest `N` kept room messages.
    History(u32),
}

/// What the engine must do with the session's input side.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum Input {
    /// Every complete line is handled: read more bytes from the socket.
    NeedBytes,
    /// Hand this to the hub, then report the outcome with [`Session::handle_room`].
    Room(RoomOp),
    /// The client's own queue is over half full: read nothing until it drains
    /// ([`Session::handle_written`] returns true), so replies never pile up unbounded.
    Held,
    /// The end state has begun: read nothing more (the engine only drains input while it
    /// lingers after `END`).
    Stop,
}

/// What the hub made of a [`RoomOp`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoomOutcome {
    /// Done; anything to say was delivered by the hub.
    Done,
    /// A recipient lacks room: keep the operation and offer it again once woken.
    Held(RoomOp),
    /// Answer the sender with this line (`MEMBERS ...`).
    Reply(ServerMsg),
    /// The line was refused: answer `ERR`.
    Refused(BadLine),
}

/// Something the engine should log. Decisions only; I/O facts (a write failed, the client
/// closed) are the engine's to report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEvent {
    /// Heartbeat `k` of `n` was queued.
    PingSent {
        /// 1-based number in the round.
        k: u32,
        /// Heartbeats per round.
        n: u32,
    },
    /// A heartbeat round ended because the client sent something.
    Answered(Answered),
    /// A bad line was answered with `ERR`.
    BadLine(String),
    /// The end state began for this reason.
    Ending(EndReason),
    /// Flow control gave up on the client (it is ending `slow-consumer`).
    SlowConsumer(SlowConsumer),
    /// The connection could not be secured (a TLS error, or no handshake within the
    /// deadline): it is closed without a word, since nothing readable can reach the client.
    Insecure(String),
    /// The client's token was accepted: it may use the name `name`. `renewed` for a later
    /// `AUTH` that pushed the expiry on.
    Authenticated {
        /// The token's `sub`.
        name: String,
        /// Not the first `AUTH` of the connection.
        renewed: bool,
    },
    /// The client is ending `auth-failed`, for this reason (never holds the token).
    AuthFailed(String),
}

/// Why a client was ended `slow-consumer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlowConsumer {
    /// It held its senders back this long without draining to half its queue.
    Lagged(Duration),
    /// Its socket accepted nothing this long while bytes waited.
    Blocked(Duration),
}

/// How the engine must close the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Close {
    /// `END` was written: shut the write side, then linger (discard input for a bounded
    /// while) so the close does not reset the connection before the client reads `END`.
    AfterEnd(EndReason),
    /// Nothing more can or need be written (the client closed, or `END` could not get
    /// through within `stall`): close now.
    Now(EndReason),
}

/// Where a connection stands with authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Auth {
    /// The server requires none.
    Off,
    /// `AUTH` must come first, by `deadline` (`None`: beyond an [`Instant`]'s range).
    Awaiting { deadline: Option<Instant> },
    /// Authenticated as `sub` until `expires` (the token's `exp` plus the leeway).
    As {
        sub: String,
        expires: Option<Instant>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Open,
    /// Ending for `reason`; `urgent` drops the queue first.
    Ending {
        reason: EndReason,
        urgent: bool,
    },
}

/// One client connection's protocol state. See the module docs.
#[derive(Debug)]
pub struct Session {
    cfg: SessionConfig,
    decoder: LineDecoder,
    hb: Heartbeat,
    /// Lines waiting to be written; the socket may have taken part of the first one.
    queue: OutQueue,
    /// The socket has taken part of the first queued line (not up to its `\n`).
    mid_line: bool,
    /// Bytes of `HELLO` the socket has not taken yet (it is never dropped).
    hello_left: usize,
    /// A room operation the hub could not complete yet (flow control).
    pending: Option<RoomOp>,
    /// The client's rate limit, if any (see [`crate::core::rate`]).
    bucket: Option<Bucket>,
    /// Authentication (see the module docs).
    auth: Auth,
    /// The wall clock at the connection's start (token times are wall-clock times).
    wall: WallAnchor,
    /// Since when a line for this client did not fit (the flow-control clock).
    lagging_since: Option<Instant>,
    /// Since when the socket has refused bytes (the write-stall clock); any progress stops it.
    blocked_since: Option<Instant>,
    /// When the end state began.
    ended_at: Option<Instant>,
    end: End,
    /// `END` cannot be delivered (stalled, or the socket failed): close without it.
    give_up: bool,
    /// When the TLS handshake must be done by; `None` once done (or without TLS).
    securing_until: Option<Instant>,
    /// Ended `heartbeat-timeout`: how long after the heartbeat's deadline that was decided.
    dead_late: Option<Duration>,
    events: VecDeque<SessionEvent>,
}

impl Session {
    /// A new connection at `now`, when the wall clock read `unix` (since the Unix epoch; the
    /// engine reads it once, at accept; a session without authentication never looks at it);
    /// its `HELLO` is already queued.
    pub fn new(cfg: SessionConfig, now: Instant, unix: Duration) -> Self {
        let auth = match cfg.auth {
            Some(_) => Auth::Awaiting {
                deadline: now.checked_add(cfg.handshake),
            },
            None => Auth::Off,
        };
        let mut s = Self {
            decoder: LineDecoder::new(cfg.max_line),
            hb: Heartbeat::new(cfg.heartbeat, now),
            queue: OutQueue::default(),
            mid_line: false,
            hello_left: 0,
            pending: None,
            bucket: cfg.rate.map(|r| Bucket::new(r, now)),
            auth,
            wall: WallAnchor { mono: now, unix },
            securing_until: cfg.tls.then(|| now + cfg.handshake),
            cfg,
            lagging_since: None,
            blocked_since: None,
            ended_at: None,
            end: End::Open,
            give_up: false,
            dead_late: None,
            events: VecDeque::new(),
        };
        let hb = s.cfg.heartbeat;
        let hello = ServerMsg::Hello {
            idle: hb.idle(),
            interval: hb.interval(),
            count: hb.count(),
            mode: Some(s.cfg.mode),
        };
        let hello = hello.encode();
        s.hello_left = hello.len();
        s.push(now, hello.as_bytes());
        s
    }

    /// The settings this session runs with.
    pub fn config(&self) -> &SessionConfig {
        &self.cfg
    }

    // ----- input -----

    /// Bytes arrived from the client at `now`. Every byte proves the client alive; the lines
    /// are handled by [`Session::poll_input`]. Bytes after the end state began are ignored.
    pub fn handle_rx(&mut self, now: Instant, bytes: &[u8]) {
        if self.is_ending() {
            return;
        }
        if let Some(a) = self.hb.handle_rx(now) {
            self.events.push_back(SessionEvent::Answered(a));
        }
        self.decoder.feed(bytes);
    }

    /// The engine is not reading (the session is held) but the client's bytes are waiting in
    /// the socket at `now`: they prove it alive just the same, so a sender held back by flow
    /// control is never mistaken for a silent one.
    pub fn handle_input_waiting(&mut self, now: Instant) {
        if self.is_open() {
            if let Some(a) = self.hb.handle_rx(now) {
                self.events.push_back(SessionEvent::Answered(a));
            }
        }
    }

    /// Handles complete lines until one needs the hub, the client's queue is over half full,
    /// or no complete line is left.
    pub fn poll_input(&mut self, now: Instant) -> Input {
        if self.is_ending() {
            return Input::Stop;
        }
        if let Some(op) = self.pending.take() {
            return Input::Room(op);
        }
        loop {
            if self.queued() > self.cfg.queue / 2 {
                // Replies to this client's own lines wait for it to read: the same flow
                // control as a room delivery, with the client itself as the held sender.
                self.mark_lagging(now);
                return Input::Held;
            }
            let line = match self.decoder.next_line() {
                Ok(Some(line)) => line,
                Ok(None) => return Input::NeedBytes,
                Err(_) => {
                    self.end(now, EndReason::LineTooLong, false);
                    return Input::Stop;
                }
            };
            if line.is_empty() {
                // A bare newline is a keep-alive (someone pressing Enter in nc).
                continue;
            }
            let parsed = ClientMsg::parse(line);
            if matches!(self.auth, Auth::Awaiting { .. }) {
                // Before AUTH only a heartbeat answer may come (the answer to our own PING);
                // anything else ends the connection, so nothing else is ever handled, and
                // a client cannot flood before authenticating.
                match parsed {
                    Ok(ClientMsg::Pong(_)) => continue,
                    Ok(ClientMsg::Auth(token)) => {
                        if self.authenticate(now, &token) {
                            continue;
                        }
                        return Input::Stop;
                    }
                    other => {
                        let what = match &other {
                            Ok(msg) => verb_of(msg).to_owned(),
                            Err(bad) => format!("a bad line ({})", bad.code),
                        };
                        self.auth_failed(now, format!("expected AUTH first, got {what}"));
                        return Input::Stop;
                    }
                }
            }
            // Authenticated: a JOIN must be under the token's `sub` (echo mode too, where
            // JOIN is otherwise ignored).
            if let (
                Auth::As { sub, .. },
                Ok(ClientMsg::Join(name) | ClientMsg::JoinSince { name, .. }),
            ) = (&self.auth, &parsed)
            {
                if name != sub {
                    let why = format!(
                        "JOIN as '{}', but the token is for '{sub}'",
                        printable(name.as_bytes(), 40)
                    );
                    self.auth_failed(now, why);
                    return Input::Stop;
                }
            }
            // The rate limit counts every line but a heartbeat answer (core::rate).
            if let (Some(b), false) = (&mut self.bucket, matches!(parsed, Ok(ClientMsg::Pong(_)))) {
                match b.check(now) {
                    Verdict::Pass => {}
                    Verdict::Drop { first } => {
                        let limit = self.cfg.rate.unwrap_or(RateLimit {
                            per_sec: 1,
                            burst: 1,
                        });
                        let bad = BadLine {
                            code: ErrCode::RateLimited,
                            detail: format!(
                                "over {} lines a second (burst {}): line dropped",
                                limit.per_sec, limit.burst
                            ),
                        };
                        // One log line per episode, not one per dropped line of a flood.
                        let reply = if first {
                            self.bad_line(bad)
                        } else {
                            ServerMsg::Err(bad)
                        };
                        self.push(now, reply.encode().as_bytes());
                        continue;
                    }
                    Verdict::Flood => {
                        self.end(now, EndReason::Flood, true);
                        return Input::Stop;
                    }
                }
            }
            let reply = match parsed {
                Err(bad) => Some(self.bad_line(bad)),
                Ok(msg) => match (self.cfg.mode, msg) {
                    (_, ClientMsg::Ping(token)) => Some(ServerMsg::Pong(token)),
                    (_, ClientMsg::Pong(_)) => None,
                    (_, ClientMsg::Auth(token)) => {
                        if self.cfg.auth.is_none() {
                            Some(self.bad_line(BadLine {
                                code: ErrCode::UnknownVerb,
                                detail: "AUTH: this server does not require authentication \
                                         (it runs without --auth-secret)"
                                    .into(),
                            }))
                        } else if self.authenticate(now, &token) {
                            None
                        } else {
                            return Input::Stop;
                        }
                    }
                    (_, ClientMsg::Quit(_)) => {
                        self.end(now, EndReason::Quit, false);
                        return Input::Stop;
                    }
                    (Mode::Echo, ClientMsg::Msg(text)) => {
                        self.push_parts(&[b"ECHO ", text.as_bytes(), b"\n"]);
                        None
                    }
                    // Echo mode has no names; JOIN is accepted and ignored (as ever).
                    (Mode::Echo, ClientMsg::Join(_)) => None,
                    (Mode::Echo, ClientMsg::Who) => Some(self.bad_line(BadLine {
                        code: ErrCode::UnknownVerb,
                        detail: "WHO works only on a chat server (this one is --mode echo)".into(),
                    })),
                    (Mode::Echo, ClientMsg::JoinSince { .. }) => Some(self.bad_line(BadLine {
                        code: ErrCode::UnknownVerb,
                        detail: "JOIN ... SINCE works only on a chat server (this one is --mode echo)"
                            .into(),
                    })),
                    (Mode::Echo, ClientMsg::History(_)) => Some(self.bad_line(BadLine {
                        code: ErrCode::UnknownVerb,
                        detail: "HISTORY works only on a chat server (this one is --mode echo)"
                            .into(),
                    })),
                    (Mode::Chat, ClientMsg::Join(name)) => return Input::Room(RoomOp::Join(name)),
                    (Mode::Chat, ClientMsg::JoinSince { name, since, token }) => {
                        return Input::Room(RoomOp::JoinSince { name, since, token })
                    }
                    (Mode::Chat, ClientMsg::History(n)) => return Input::Room(RoomOp::History(n)),
                    (Mode::Chat, ClientMsg::Msg(text)) => return Input::Room(RoomOp::Msg(text)),
                    (Mode::Chat, ClientMsg::Who) => return Input::Room(RoomOp::Who),
                },
            };
            if let Some(reply) = reply {
                self.push(now, reply.encode().as_bytes());
            }
        }
    }

    /// The hub's answer to the last [`Input::Room`].
    pub fn handle_room(&mut self, now: Instant, outcome: RoomOutcome) {
        match outcome {
            RoomOutcome::Done => {}
            RoomOutcome::Held(op) => self.pending = Some(op),
            RoomOutcome::Reply(msg) => self.push(now, msg.encode().as_bytes()),
            RoomOutcome::Refused(bad) => {
                let line = self.bad_line(bad);
                self.push(now, line.encode().as_bytes());
            }
        }
    }

    /// True while a room operation waits for a recipient to catch up.
    pub fn is_held_by_room(&self) -> bool {
        self.pending.is_some()
    }

    /// `AUTH TOKEN` at `now`: true when the token is accepted (the first one, or a renewal
    /// for the same `sub`); otherwise the session is ending `auth-failed`.
    fn authenticate(&mut self, now: Instant, token: &str) -> bool {
        let Some(cfg) = self.cfg.auth.clone() else {
            return false;
        };
        let unix = self.wall.unix_at(now);
        let claims = match cfg.verify(token, unix.as_secs()) {
            Ok(c) => c,
            Err(e) => {
                self.auth_failed(now, e.to_string());
                return false;
            }
        };
        let renewed = match &self.auth {
            Auth::As { sub, .. } if *sub != claims.sub => {
                let why = format!(
                    "AUTH for '{}' on a connection authenticated as '{sub}'",
                    claims.sub
                );
                self.auth_failed(now, why);
                return false;
            }
            Auth::As { .. } => true,
            Auth::Off | Auth::Awaiting { .. } => false,
        };
        let until = Duration::from_secs(cfg.valid_until(&claims));
        self.auth = Auth::As {
            expires: self.wall.instant_at(until),
            sub: claims.sub.clone(),
        };
        self.events.push_back(SessionEvent::Authenticated {
            name: claims.sub,
            renewed,
        });
        true
    }

    /// Ends the session `auth-failed` at once (nothing queued is for a client that is not
    /// allowed in), logging `why`.
    fn auth_failed(&mut self, now: Instant, why: String) {
        if self.is_open() {
            self.events.push_back(SessionEvent::AuthFailed(why));
            self.end(now, EndReason::AuthFailed, true);
        }
    }

    /// The name the client authenticated as, once it did.
    pub fn authenticated_as(&self) -> Option<&str> {
        match &self.auth {
            Auth::As { sub, .. } => Some(sub),
            Auth::Off | Auth::Awaiting { .. } => None,
        }
    }

    fn bad_line(&mut self, bad: BadLine) -> ServerMsg {
        self.events
            .push_back(SessionEvent::BadLine(bad.to_string()));
        ServerMsg::Err(bad)
    }

    // ----- output -----

    /// Bytes queued (including the unwritten rest of a line the socket took part of).
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// True when a room line of `len` bytes fits the budget now (the hub's admission check).
    pub fn has_room(&self, len: usize) -> bool {
        self.is_open() && self.queued() + len <= self.cfg.queue
    }

    /// The hub could not deliver to this client at `now` for lack of room.
    pub fn mark_lagging(&mut self, now: Instant) {
        self.lagging_since.get_or_insert(now);
    }

    /// Since when this client has been lagging, if it is.
    pub fn lagging_since(&self) -> Option<Instant> {
        self.lagging_since
    }

    /// Queues a whole line (`\n` included) from the room or a reply. Does not check the
    /// budget: callers check [`Session::has_room`] first (the hub) or hold input while the
    /// queue is over half full (replies), so the queue stays within about `queue` bytes plus
    /// one reply. Dropped once the end state began.
    pub fn push(&mut self, _now: Instant, line: &[u8]) {
        if self.is_open() {
            self.queue.push(line);
        }
    }

    /// Queues whole lines shared with other sessions (the chat relay's batch), without a
    /// copy; the same budget rules as [`Session::push`].
    pub fn push_shared(&mut self, _now: Instant, lines: SharedBytes) {
        if self.is_open() {
            self.queue.push_shared(lines);
        }
    }

    /// Queues one line given in parts (no allocation for the whole line).
    fn push_parts(&mut self, parts: &[&[u8]]) {
        if self.is_open() {
            for p in parts {
                self.queue.push(p);
            }
        }
    }

    /// Copies the next bytes to write (at most [`TRANSMIT_BATCH`]) to the end of `buf`,
    /// without consuming them: report what the socket took with [`Session::handle_written`]
    /// (or [`Session::handle_write_blocked`] when it took nothing). Returns the number of
    /// bytes copied; 0 when nothing waits.
    #[must_use]
    pub fn poll_transmit(&mut self, buf: &mut Vec<u8>) -> usize {
        if self.give_up {
            return 0;
        }
        self.queue.copy_to(buf, TRANSMIT_BATCH)
    }

    /// The next bytes to write (at most [`TRANSMIT_BATCH`]), in place, as up to
    /// [`MAX_SLICES`] slices for one vectored write: the same bytes
    /// [`Session::poll_transmit`] would copy, without the copy. Returns how many slices of
    /// `out` it filled (0: nothing to write). Report what the socket took with
    /// [`Session::handle_written`].
    #[must_use]
    pub fn peek_transmit<'a>(&'a self, out: &mut [IoSlice<'a>; MAX_SLICES]) -> usize {
        if self.give_up {
            return 0;
        }
        self.queue.peek(out, TRANSMIT_BATCH)
    }

    /// The socket took the first `n` bytes [`Session::poll_transmit`] copied, at `now`. True
    /// when this ended a lag: the engine must wake senders held back for this client (and
    /// this client's own reading).
    pub fn handle_written(&mut self, now: Instant, n: usize) -> bool {
        let n = n.min(self.queue.len());
        self.hello_left = self.hello_left.saturating_sub(n);
        if n > 0 {
            self.mid_line = self.queue.consume(n) != Some(b'\n');
            self.blocked_since = None;
        }
        if self.lagging_since.is_some() && self.queued() <= self.cfg.queue / 2 {
            self.lagging_since = None;
            return true;
        }
        let _ = now;
        false
    }

    /// The socket took bytes at `now` that were queued below the session (TLS records of
    /// lines it already handed over): the client is reading, so the write-stall clock
    /// starts again, as [`Session::handle_written`] does for the session's own bytes.
    pub fn handle_transport_progress(&mut self, now: Instant) {
        let _ = now;
        self.blocked_since = None;
    }

    /// The socket took nothing at `now` (its buffer is full): starts the write-stall clock.
    pub fn handle_write_blocked(&mut self, now: Instant) {
        self.blocked_since.get_or_insert(now);
    }

    /// The socket failed (the client reset it or is gone): nothing more can be written.
    pub fn handle_write_error(&mut self, now: Instant) {
        self.end(now, EndReason::Closed, true);
        self.give_up = true;
    }

    /// The client closed its side (EOF). It may still read: what is queued is still
    /// delivered (no `END`: it is the one who left), within the write-stall rule.
    pub fn handle_closed(&mut self, now: Instant) {
        self.end(now, EndReason::Closed, false);
    }

    /// The TLS handshake is done (the engine saw it complete) at `now`: the handshake
    /// deadline is off and the heartbeat counts silence from here.
    pub fn handle_secured(&mut self, now: Instant) {
        if self.securing_until.take().is_some() && self.is_open() {
            let _ = self.hb.handle_rx(now);
        }
    }

    /// True until the TLS handshake is done (always false without TLS).
    pub fn is_securing(&self) -> bool {
        self.securing_until.is_some()
    }

    /// The connection cannot be secured (`detail`: a TLS error, or the deadline passed): it
    /// is closed now, without `END` (the client cannot read anything we would say).
    pub fn handle_insecure(&mut self, now: Instant, detail: String) {
        if self.is_open() {
            self.events.push_back(SessionEvent::Insecure(detail));
        }
        self.end(now, EndReason::Closed, true);
        self.give_up = true;
    }

    // ----- time -----

    /// The heartbeat's next deadline (the idle expiry, or the next heartbeat of a round).
    #[must_use]
    pub fn heartbeat_timeout(&self) -> Option<Instant> {
        if self.is_ending() || self.securing_until.is_some() {
            return None;
        }
        self.hb.poll_timeout()
    }

    /// The flow-control deadline: when a lag or a write stall would end the client.
    #[must_use]
    pub fn flow_timeout(&self) -> Option<Instant> {
        let lag = self
            .lagging_since
            .filter(|_| self.is_open())
            .and_then(|t| t.checked_add(self.cfg.stall));
        let stall = self
            .blocked_since
            .filter(|_| self.queued() > 0 && !self.give_up)
            .and_then(|t| self.write_deadline(t));
        let handshake = self.securing_until.filter(|_| self.is_open());
        [lag, stall, handshake].into_iter().flatten().min()
    }

    /// When a socket that has refused bytes since `blocked` makes the session give up: `stall`
    /// while open (then `slow-consumer`), [`END_GRACE`] (at most `stall`) from the later of
    /// `blocked` and the end once ending (then close without the rest).
    fn write_deadline(&self, blocked: Instant) -> Option<Instant> {
        match self.ended_at {
            None => blocked.checked_add(self.cfg.stall),
            Some(ended) => blocked
                .max(ended)
                .checked_add(END_GRACE.min(self.cfg.stall)),
        }
    }

    /// The authentication deadline: the end of the handshake while `AUTH` has not come,
    /// then the token's expiry (plus the leeway).
    #[must_use]
    pub fn auth_timeout(&self) -> Option<Instant> {
        if self.is_ending() {
            return None;
        }
        match &self.auth {
            Auth::Off => None,
            Auth::Awaiting { deadline } => *deadline,
            Auth::As { expires, .. } => *expires,
        }
    }

    /// The next instant [`Session::handle_timeout`] has something to do.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.heartbeat_timeout(),
            self.flow_timeout(),
            self.auth_timeout(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// True when the client has been silent for `idle` and no heartbeat round runs yet: the
    /// moment the manual's "start heartbeat" switch is turned on.
    #[must_use]
    pub fn is_idle_expired(&self, now: Instant) -> bool {
        !self.is_ending() && self.securing_until.is_none() && self.hb.is_idle_expired(now)
    }

    /// For a session ended `heartbeat-timeout`: how long after the heartbeat's deadline it
    /// was declared dead (the `now` it was given, minus the deadline); `None` for any other
    /// end, or while open.
    pub fn dead_late(&self) -> Option<Duration> {
        self.dead_late
    }

    /// The silence that starts a heartbeat round.
    pub fn idle(&self) -> Duration {
        self.cfg.heartbeat.idle()
    }

    /// Runs every timer due at `now`: heartbeats, flow control and authentication.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.handle_heartbeat(now);
        self.handle_flow_timeout(now);
        self.handle_auth_timeout(now);
    }

    /// Runs the authentication timer only (the thread engine's companion calls it beside
    /// [`Session::handle_flow_timeout`]): no `AUTH` within the handshake, or a token that ran
    /// out, ends the client `auth-failed`.
    pub fn handle_auth_timeout(&mut self, now: Instant) {
        if self.auth_timeout().is_none_or(|at| now < at) {
            return;
        }
        let why = match &self.auth {
            Auth::Awaiting { .. } => format!(
                "no AUTH within {}",
                crate::config::fmt_duration(self.cfg.handshake)
            ),
            _ => "token expired".to_owned(),
        };
        self.auth_failed(now, why);
    }

    /// Runs the heartbeat timer only (the thread engine calls it while the manual's switch
    /// is on): queues `PING k`, or ends the client `heartbeat-timeout`.
    pub fn handle_heartbeat(&mut self, now: Instant) {
        while !self.is_ending() && self.securing_until.is_none() {
            let due = self.hb.poll_timeout();
            match self.hb.poll(now) {
                Some(Action::SendPing(k)) => {
                    // A heartbeat is tiny and bounded (one per interval): it bypasses the
                    // budget, so a full queue never hides it.
                    self.push(now, ServerMsg::Ping(k.to_string()).encode().as_bytes());
                    self.events.push_back(SessionEvent::PingSent {
                        k,
                        n: self.cfg.heartbeat.count(),
                    });
                }
                Some(Action::Dead) => {
                    // How late the engine asked: a ghost is declared dead at its deadline
                    // in theory, and this much after it in practice.
                    self.dead_late = due.map(|at| now.saturating_duration_since(at));
                    self.end(now, EndReason::HeartbeatTimeout, true);
                }
                None => break,
            }
        }
    }

    /// Runs the flow-control timers only: a client lagging for `stall`, or whose socket
    /// accepted nothing for `stall` while bytes waited, is ended `slow-consumer`; the last
    /// lines of an ending session that its socket does not take within [`END_GRACE`] are
    /// given up.
    pub fn handle_flow_timeout(&mut self, now: Instant) {
        if let Some(until) = self.securing_until.filter(|_| self.is_open()) {
            if now >= until {
                let waited = crate::config::fmt_duration(self.cfg.handshake);
                self.handle_insecure(now, format!("no TLS handshake within {waited}"));
                return;
            }
        }
        let lag_due = self
            .lagging_since
            .and_then(|t| t.checked_add(self.cfg.stall))
            .is_some_and(|at| now >= at);
        if self.is_open() && lag_due {
            let lagged = self
                .lagging_since
                .map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
            self.events
                .push_back(SessionEvent::SlowConsumer(SlowConsumer::Lagged(lagged)));
            self.end(now, EndReason::SlowConsumer, true);
        }
        let write_due = self
            .blocked_since
            .and_then(|t| self.write_deadline(t))
            .is_some_and(|at| now >= at);
        if self.queued() > 0 && !self.give_up && write_due {
            if self.is_open() {
                let blocked = self
                    .blocked_since
                    .map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
                self.events
                    .push_back(SessionEvent::SlowConsumer(SlowConsumer::Blocked(blocked)));
                self.end(now, EndReason::SlowConsumer, true);
            } else {
                self.give_up = true;
            }
        }
    }

    // ----- end state -----

    /// Ends the session for `reason` (first reason wins). `urgent` drops what is queued and
    /// sends `END` next; otherwise `END` follows the queue. A later urgent end of a session
    /// already ending after its queue keeps the first reason but stops waiting for the queue.
    pub fn end(&mut self, now: Instant, reason: EndReason, urgent: bool) {
        match self.end {
            End::Open => {
                self.end = End::Ending { reason, urgent };
                self.ended_at = Some(now);
                self.pending = None;
                self.lagging_since = None;
                if urgent {
                    self.drop_queue();
                }
                if reason != EndReason::Closed {
                    // Queued now, behind what may still go: nothing can be queued after it.
                    self.queue.push(ServerMsg::End(reason).encode().as_bytes());
                }
                self.events.push_back(SessionEvent::Ending(reason));
            }
            End::Ending {
                reason: first,
                urgent: was_urgent,
            } => {
                if reason == EndReason::Closed {
                    // The client is gone: nothing can be delivered any more.
                    self.give_up = true;
                } else if urgent && !was_urgent {
                    // Stop waiting for the queue, but keep the first reason.
                    self.end = End::Ending {
                        reason: first,
                        urgent: true,
                    };
                    self.drop_queue();
                    let line = ServerMsg::End(first).encode();
                    // The END queued earlier may be what the socket took part of.
                    let rest_of_end =
                        !self.queue.is_empty() && line.as_bytes().ends_with(&self.queue.to_vec());
                    if first != EndReason::Closed && !rest_of_end {
                        self.queue.push(line.as_bytes());
                    }
                }
            }
        }
    }

    /// Drops every queued byte except the unwritten rest of `HELLO` or of a line the socket
    /// took part of.
    fn drop_queue(&mut self) {
        let keep = if self.hello_left > 0 {
            // HELLO was queued first, so what is left of it heads the queue.
            self.hello_left
        } else if self.mid_line {
            self.queue
                .find_newline()
                .map_or(self.queue.len(), |i| i + 1)
        } else {
            0
        };
        self.queue.truncate(keep);
    }

    /// True while nothing ends the session.
    pub fn is_open(&self) -> bool {
        self.end == End::Open
    }

    /// True once the end state has begun.
    pub fn is_ending(&self) -> bool {
        !self.is_open()
    }

    /// True once nothing more can be queued: what the queue holds (ending with `END`) is the
    /// last the connection sends, so an engine may hold it back to leave in one segment with
    /// its FIN (`MSG_MORE`), sparing the client a second wake-up.
    pub fn is_final_flush(&self) -> bool {
        self.is_ending() && !self.give_up
    }

    /// Why the session is ending, once it is.
    pub fn end_reason(&self) -> Option<EndReason> {
        match self.end {
            End::Open => None,
            End::Ending { reason, .. } => Some(reason),
        }
    }

    /// Once the session is over: how to close the socket.
    #[must_use]
    pub fn poll_close(&self) -> Option<Close> {
        let End::Ending { reason, .. } = self.end else {
            return None;
        };
        if self.give_up || (reason == EndReason::Closed && self.queue.is_empty()) {
            return Some(Close::Now(reason));
        }
        self.queue.is_empty().then_some(Close::AfterEnd(reason))
    }

    /// Everything queued, as text, reported written at `now` (as a socket that takes it all
    /// would): the tests' view of what the client reads.
    #[cfg(test)]
    pub(crate) fn drain_written(&mut self, now: Instant) -> String {
        let mut out = Vec::new();
        loop {
            let mut buf = Vec::new();
            let n = self.poll_transmit(&mut buf);
            if n == 0 {
                break;
            }
            let _ = self.handle_written(now, n);
            out.extend(buf);
        }
        String::from_utf8(out).unwrap()
    }

    /// The next thing to log.
    pub fn poll_event(&mut self) -> Option<SessionEvent> {
        self.events.pop_front()
    }
}

/// The verb of a parsed line, for a log line that must not quote the rest (it may hold a
/// credential).
fn verb_of(msg: &ClientMsg) -> &'static str {
    match msg {
        ClientMsg::Join(_) | ClientMsg::JoinSince { .. } => "JOIN",
        ClientMsg::Msg(_) => "MSG",
        ClientMsg::Ping(_) => "PING",
        ClientMsg::Pong(_) => "PONG",
        ClientMsg::Quit(_) => "QUIT",
        ClientMsg::Who => "WHO",
        ClientMsg::History(_) => "HISTORY",
        ClientMsg::Auth(_) => "AUTH",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(mode: Mode) -> SessionConfig {
        SessionConfig {
            mode,
            heartbeat: HeartbeatConfig::new(Duration::from_secs(5), Duration::from_secs(1), 2)
                .unwrap(),
            max_line: 64,
            queue: 1000,
            stall: Duration::from_millis(500),
            rate: None,
            tls: false,
            auth: None,
            handshake: Duration::from_secs(10),
        }
    }

    fn drain(s: &mut Session, now: Instant) -> String {
        s.drain_written(now)
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    // ----- authentication (CONTRACT section 9) -----

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
    /// The wall clock at the connection's start, in the tests below.
    const T0: u64 = 1_800_000_000;

    fn token(claims: serde_json::Value) -> String {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(SECRET),
        )
        .unwrap()
    }

    /// A token for `sub` valid for `secs` from the connection's start.
    fn valid(sub: &str, secs: u64) -> String {
        token(serde_json::json!({"sub": sub, "exp": T0 + secs}))
    }

    /// A session of a server with --auth-secret, started at `t` (wall clock [`T0`]), its
    /// HELLO already read.
    fn authed(mode: Mode, t: Instant) -> Session {
        let mut c = cfg(mode);
        c.max_line = 2048;
        c.auth = Some(Arc::new(AuthConfig::new(SECRET)));
        let mut s = Session::new(c, t, Duration::from_secs(T0));
        let _ = drain(&mut s, t);
        s
    }

    fn events(s: &mut Session) -> Vec<SessionEvent> {
        std::iter::from_fn(|| s.poll_event()).collect()
    }

    /// The reason logged for an auth failure, checked to be free of `secret`.
    fn failure(s: &mut Session, secret: &str) -> String {
        let why = events(s)
            .into_iter()
            .find_map(|e| match e {
                SessionEvent::AuthFailed(why) => Some(why),
                _ => None,
            })
            .expect("an AuthFailed event");
        assert!(
            secret.is_empty() || !why.contains(secret),
            "the log line holds the token: {why}"
        );
        why
    }

    #[test]
    fn a_valid_token_is_silent_and_lets_the_client_join_as_its_sub() {
        let t = Instant::now();
        let mut s = authed(Mode::Chat, t);
        let tok = valid("ann", 3600);
        s.handle_rx(t, format!("AUTH {tok}\nJOIN ann\n").as_bytes());
        assert_eq!(s.poll_input(t), Input::Room(RoomOp::Join("ann".into())));
        assert_eq!(
            drain(&mut s, t),
            "",
            "no reply to AUTH: the contract fixes the bytes"
        );
        assert_eq!(
            events(&mut s),
            [SessionEvent::Authenticated {
                name: "ann".into(),
                renewed: false
            }]
        );
        assert_eq!(s.authenticated_as(), Some("ann"));
        // JOIN ... SINCE under the same name goes to the hub too.
        s.handle_room(t, RoomOutcome::Done);
        s.handle_rx(t, b"JOIN ann SINCE -\n");
        assert!(matches!(
            s.poll_input(t),
            Input::Room(RoomOp::JoinSince { .. })
        ));
    }

    #[test]
    fn a_refused_token_ends_auth_failed_right_after_hello() {
        let b64 = |s: &str| {
            use base64::Engine as _;
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
        };
        let none = format!(
            "{}.{}.",
            b64(r#"{"alg":"none","typ":"JWT"}"#),
            b64(&format!(r#"{{"sub":"ann","exp":{}}}"#, T0 + 3600))
        );
        let forged = jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &serde_json::json!({"sub": "ann", "exp": T0 + 3600}),
            &jsonwebtoken::EncodingKey::from_secret(b"not the server's secret"),
        )
        .unwrap();
        for (tok, why) in [
            (none, "algorithm none refused"),
            (forged, "bad signature"),
            (
                token(serde_json::json!({"sub": "ann", "exp": T0 - 30})),
                "token expired",
            ),
            (
                token(serde_json::json!({"sub": "ann", "exp": T0 + 3600, "nbf": T0 + 60})),
                "token not valid yet",
            ),
            (token(serde_json::json!({"sub": "ann"})), "no exp claim"),
            (token(serde_json::json!({"exp": T0 + 3600})), "no sub claim"),
            ("garbage".to_owned(), "not a valid JWT"),
        ] {
            let t = Instant::now();
            let mut c = cfg(Mode::Chat);
            c.max_line = 2048;
            c.auth = Some(Arc::new(AuthConfig::new(SECRET)));
            let mut s = Session::new(c, t, Duration::from_secs(T0));
            // The client sent before reading: HELLO still goes first.
            s.handle_rx(t, format!("AUTH {tok}\nJOIN ann\n").as_bytes());
            assert_eq!(s.poll_input(t), Input::Stop, "{why}");
            assert_eq!(
                drain(&mut s, t),
                "HELLO hb/1 idle=5000 interval=1000 count=2 mode=chat\nEND auth-failed\n"
            );
            let logged = failure(&mut s, &tok);
            assert!(logged.contains(why), "{logged}");
            assert_eq!(s.poll_close(), Some(Close::AfterEnd(EndReason::AuthFailed)));
        }
    }

    #[test]
    fn the_leeway_is_judged_on_the_wall_clock_carried_from_accept() {
        // exp 29 s before the start: within the 30 s leeway, so accepted...
        let t = Instant::now();
        let mut s = authed(Mode::Echo, t);
        let old = token(serde_json::json!({"sub": "ann", "exp": T0 - 29}));
        s.handle_rx(t, format!("AUTH {old}\n").as_bytes());
        assert_eq!(s.poll_input(t), Input::NeedBytes);
        assert!(s.is_open());
        // ...and runs out one second later.
        assert_eq!(s.auth_timeout(), Some(t + ms(1000)));
        // The same token presented 1 s after the start is refused: the session counts the
        // wall clock on from the engine's reading.
        let mut s = authed(Mode::Echo, t);
        s.handle_rx(t + ms(1000), format!("AUTH {old}\n").as_bytes());
        assert_eq!(s.poll_input(t + ms(1000)), Input::Stop);
        assert!(failure(&mut s, &old).starts_with("token expired"));
        // nbf 30 s ahead: accepted at once (leeway); 31 s ahead: not before 1 s has passed.
        let soon = token(serde_json::json!({"sub": "ann", "exp": T0 + 3600, "nbf": T0 + 31}));
        let mut s = authed(Mode::Echo, t);
        s.handle_rx(t + ms(999), format!("AUTH {soon}\n").as_bytes());
        assert_eq!(s.poll_input(t + ms(999)), Input::Stop);
        let mut s = authed(Mode::Echo, t);
        s.handle_rx(t + ms(1000), format!("AUTH {soon}\n").as_bytes());
        assert_eq!(s.poll_input(t + ms(1000)), Input::NeedBytes);
        assert_eq!(s.authenticated_as(), Some("ann"));
    }

    #[test]
    fn a_join_under_another_name_than_sub_is_auth_failed_in_both_modes() {
        let t = Instant::now();
        for (mode, line) in [
            (Mode::Chat, "JOIN bob"),
            (Mode::Chat, "JOIN bob SINCE -"),
            (Mode::Chat, "JOIN ann x"),
            (Mode::Echo, "JOIN bob"),
        ] {
            let mut s = authed(mode, t);
            s.handle_rx(
                t,
                format!("AUTH {}\nMSG hi\n{line}\n", valid("ann", 60)).as_bytes(),
            );
            let first = s.poll_input(t);
            if mode == Mode::Chat {
                // MSG goes to the hub (which says not-joined); the JOIN comes next.
                assert_eq!(first, Input::Room(RoomOp::Msg("hi".into())));
                s.handle_room(t, RoomOutcome::Done);
                assert_eq!(s.poll_input(t), Input::Stop, "{line}");
            } else {
                assert_eq!(first, Input::Stop, "{line}");
            }
            let out = drain(&mut s, t);
            assert!(out.ends_with("END auth-failed\n"), "{line}: {out}");
            let why = failure(&mut s, "");
            assert!(why.contains("but the token is for 'ann'"), "{why}");
        }
    }

    #[test]
    fn anything_but_auth_first_is_auth_failed_but_keep_alives_and_pongs_are_fine() {
        let t = Instant::now();
        for (first, said) in [
            ("MSG hi", "got MSG"),
            ("JOIN ann", "got JOIN"),
            ("PING 1", "got PING"),
            ("QUIT", "got QUIT"),
            ("auth x.y.z", "got a bad line (unknown-verb)"),
            ("AUTH", "got a bad line (missing-argument)"),
            (
                "eyJhbGciOiJIUzI1NiJ9.e30.c2lnbmF0dXJl",
                "got a bad line (unknown-verb)",
            ),
        ] {
            let mut s = authed(Mode::Chat, t);
            s.handle_rx(
                t,
                format!("\n\nPONG 1\n{first}\nAUTH {}\n", valid("ann", 60)).as_bytes(),
            );
            assert_eq!(s.poll_input(t), Input::Stop, "{first}");
            assert_eq!(drain(&mut s, t), "END auth-failed\n");
            let why = failure(&mut s, "eyJhbGciOiJIUzI1NiJ9");
            assert_eq!(why, format!("expected AUTH first, {said}"));
        }
    }

    #[test]
    fn no_auth_within_the_handshake_is_auth_failed_and_heartbeats_still_run() {
        let t = Instant::now();
        let mut s = authed(Mode::Echo, t);
        assert_eq!(s.poll_timeout(), Some(t + ms(5000)), "idle comes first");
        assert_eq!(s.auth_timeout(), Some(t + ms(10_000)));
        // The heartbeat runs meanwhile, and its answer is allowed before AUTH.
        s.handle_timeout(t + ms(5000));
        assert_eq!(drain(&mut s, t + ms(5000)), "PING 1\n");
        s.handle_rx(t + ms(5001), b"PONG 1\n");
        assert_eq!(s.poll_input(t + ms(5001)), Input::NeedBytes);
        assert_eq!(s.poll_timeout(), Some(t + ms(10_000)));
        s.handle_timeout(t + ms(9_999));
        assert!(s.is_open());
        s.handle_timeout(t + ms(10_000));
        assert_eq!(drain(&mut s, t + ms(10_000)), "END auth-failed\n");
        assert_eq!(failure(&mut s, ""), "no AUTH within 10s");
        assert_eq!(s.auth_timeout(), None);
    }

    #[test]
    fn a_token_that_runs_out_mid_session_ends_it_unless_renewed() {
        let t = Instant::now();
        let mut s = authed(Mode::Chat, t);
        s.handle_rx(t, format!("AUTH {}\n", valid("ann", 60)).as_bytes());
        assert_eq!(s.poll_input(t), Input::NeedBytes);
        // exp + leeway: 90 s after the start.
        assert_eq!(s.auth_timeout(), Some(t + ms(90_000)));
        let _ = events(&mut s);
        // Renewed 50 s in with a token for the same sub: the deadline moves on, silently.
        let later = valid("ann", 3600);
        s.handle_rx(t + ms(50_000), format!("AUTH {later}\n").as_bytes());
        assert_eq!(s.poll_input(t + ms(50_000)), Input::NeedBytes);
        assert_eq!(drain(&mut s, t + ms(50_000)), "");
        assert_eq!(
            events(&mut s),
            [SessionEvent::Authenticated {
                name: "ann".into(),
                renewed: true
            }]
        );
        assert_eq!(s.auth_timeout(), Some(t + ms(3_630_000)));
        s.handle_timeout(t + ms(90_000));
        assert!(s.is_open());
        // Not renewed again: the END comes at exp + leeway, dropping what is queued.
        s.push(t, b"MSG bob queued\n");
        s.handle_timeout(t + ms(3_629_999));
        assert!(s.is_open());
        s.handle_timeout(t + ms(3_630_000));
        assert_eq!(drain(&mut s, t + ms(3_630_000)), "END auth-failed\n");
        assert_eq!(failure(&mut s, ""), "token expired");
    }

    #[test]
    fn a_second_auth_for_another_sub_or_a_bad_one_is_auth_failed() {
        let t = Instant::now();
        let mut s = authed(Mode::Chat, t);
        let bob = valid("bob", 60);
        s.handle_rx(
            t,
            format!("AUTH {}\nAUTH {bob}\n", valid("ann", 60)).as_bytes(),
        );
        assert_eq!(s.poll_input(t), Input::Stop);
        assert_eq!(drain(&mut s, t), "END auth-failed\n");
        assert_eq!(
            failure(&mut s, &bob),
            "AUTH for 'bob' on a connection authenticated as 'ann'"
        );
        let mut s = authed(Mode::Chat, t);
        s.handle_rx(
            t,
            format!("AUTH {}\nAUTH x.y.z\n", valid("ann", 60)).as_bytes(),
        );
        assert_eq!(s.poll_input(t), Input::Stop);
        assert!(failure(&mut s, "x.y.z").starts_with("not a valid JWT"));
    }

    #[test]
    fn auth_without_auth_secret_is_an_unknown_verb() {
        let t = Instant::now();
        let mut s = Session::new(cfg(Mode::Echo), t, Duration::ZERO);
        let _ = drain(&mut s, t);
        assert_eq!(s.auth_timeout(), None);
        s.handle_rx(t, b"AUTH a.b.c\nMSG hi\n");
        assert_eq!(s.poll_input(t), Input::NeedBytes);
        assert_eq!(
            drain(&mut s, t),
            "ERR unknown-verb AUTH: this server does not require authentication (it runs \
             without --auth-secret)\nECHO hi\n"
        );
    }

    #[test]
    fn lines_over_the_rate_are_dropped_with_err_and_a_flood_is_ended() {
        let t = Instant::now();
        let mut c = cfg(Mode::Echo);
        c.rate = Some(RateLimit {
            per_sec: 2,
            burst: 2,
        });
        let mut s = Session::new(c, t, Duration::ZERO);
        let _ = drain(&mut s, t);
        // Two at once pass, the third is dropped; a heartbeat answer is never limited.
        s.handle_rx(t, b"MSG a\nMSG b\nMSG c\nPONG 1\n");
        assert_eq!(s.poll_input(t), Input::NeedBytes);
        assert_eq!(
            drain(&mut s, t),
            "ECHO a\nECHO b\nERR rate-limited over 2 lines a second (burst 2): line dropped\n"
        );
        // One log line for the episode, not one per dropped line.
        s.handle_rx(t, b"MSG d\nMSG e\n");
        assert_eq!(s.poll_input(t), Input::NeedBytes);
        let _ = drain(&mut s, t);
        let logged = std::iter::from_fn(|| s.poll_event())
            .filter(|e| matches!(e, SessionEvent::BadLine(_)))
            .count();
        assert_eq!(logged, 1);
        // Sending 100 lines a second from then on: ended `flood` a second after the first
        // drop.
        let mut ended = None;
        for i in 1..=150u64 {
            let now = t + ms(10 * i);
            s.handle_rx(now, b"MSG f\n");
            let input = s.poll_input(now);
            let out = drain(&mut s, now);
            if input == Input::Stop {
                assert!(out.ends_with("END flood\n"), "{out}");
                ended = Some(10 * i);
                break;
            }
        }
        // (At 1,000 ms a token has just refilled, so the line after it is the one.)
        assert!(matches!(ended, Some(1000..=1010)), "{ended:?}");
    }

    #[test]
    fn hello_then_echo_and_pong() {
        let t = Instant::now();
        let mut s = Session::new(cfg(Mode::Echo), t, Duration::ZERO);
        assert_eq!(
            drain(&mut s, t),
            "HELLO hb/1 idle=5000 interval=1000 count=2 mode=echo\n"
        );
        s.handle_rx(t, b"MSG hi\r\nPING 7\nPONG 1\n\nNOPE\n");
        assert_eq!(s.poll_input(t), Input::NeedBytes);
        assert_eq!(
            drain(&mut s, t),
            "ECHO hi\nPONG 7\nERR unknown-verb 'NOPE' (expected JOIN, MSG, PING, PONG, QUIT or WHO)\n"
        );
        assert!(matches!(s.poll_event(), Some(SessionEvent::BadLine(_))));
    }

    #[test]
    fn quit_ends_after_the_queue_and_nothing_after_it_is_handled() {
        let t = Instant::now();
        let mut s = Session::new(cfg(Mode::Echo), t, Duration::ZERO);
        s.handle_rx(t, b"MSG a\nQUIT\nMSG b\n");
        assert_eq!(s.poll_input(t), Input::Stop);
        assert_eq!(s.poll_input(t), Input::Stop, "nothing after the end state");
        let out = drain(&mut s, t);
        assert!(out.ends_with("ECHO a\nEND quit\n"), "{out}");
        assert_eq!(s.poll_close(), Some(Close::AfterEnd(EndReason::Quit)));
    }

    #[test]
    fn urgent_end_drops_the_queue_but_finishes_a_line_begun() {
        let t = Instant::now();
        let mut s = Session::new(cfg(Mode::Echo), t, Duration::ZERO);
        let _ = drain(&mut s, t);
        s.handle_rx(t, b"MSG one\nMSG two\n");
        assert_eq!(s.poll_input(t), Input::NeedBytes);
        let mut buf = Vec::new();
        assert_eq!(s.poll_transmit(&mut buf), "ECHO one\nECHO two\n".len());
        // The socket takes "ECH" only.
        let _ = s.handle_written(t, 3);
        s.end(t, EndReason::ServerShutdown, true);
        s.end(t, EndReason::HeartbeatTimeout, true);
        assert_eq!(
            drain(&mut s, t),
            "O one\nEND server-shutdown\n",
            "the line begun is finished, the rest dropped; first reason wins"
        );
        assert_eq!(
            s.poll_close(),
            Some(Close::AfterEnd(EndReason::ServerShutdown))
        );
        assert_eq!(
            s.poll_event(),
            Some(SessionEvent::Ending(EndReason::ServerShutdown))
        );
    }

    #[test]
    fn an_urgent_end_never_drops_hello() {
        let t = Instant::now();
        let hello = "HELLO hb/1 idle=5000 interval=1000 count=2 mode=echo\n";
        // Ended before the socket took a byte (a client that wrote before reading, served
        // by a reader faster than its writer): HELLO, then END.
        let mut s = Session::new(cfg(Mode::Echo), t, Duration::ZERO);
        s.handle_rx(t, b"MSG a\n");
        assert_eq!(s.poll_input(t), Input::NeedBytes);
        s.end(t, EndReason::ServerShutdown, true);
        assert_eq!(drain(&mut s, t), format!("{hello}END server-shutdown\n"));
        // Part of HELLO taken: its rest, then END.
        let mut s = Session::new(cfg(Mode::Echo), t, Duration::ZERO);
        let mut buf = Vec::new();
        let _ = s.poll_transmit(&mut buf);
        let _ = s.handle_written(t, 10);
        s.push(t, b"PING 1\n");
        s.end(t, EndReason::HeartbeatTimeout, true);
        assert_eq!(
            drain(&mut s, t),
            format!("{}END heartbeat-timeout\n", &hello[10..])
        );
    }

    #[test]
    fn an_urgent_end_after_a_quit_keeps_quit_and_sends_one_end() {
        let t = Instant::now();
        let mut s = Session::new(cfg(Mode::Echo), t, Duration::ZERO);
        let _ = drain(&mut s, t);
        s.handle_rx(t, b"MSG a\nQUIT\n");
        assert_eq!(s.poll_input(t), Input::Stop);
        let mut buf = Vec::new();
        let n = s.poll_transmit(&mut buf);
        // Everything but the last two bytes of "END quit\n" was taken.
        let _ = s.handle_written(t, n - 2);
        s.end(t, EndReason::ServerShutdown, true);
        assert_eq!(drain(&mut s, t), "t\n");
        assert_eq!(s.poll_close(), Some(Close::AfterEnd(EndReason::Quit)));
    }

    #[test]
    fn heartbeat_pings_then_ends_with_simulated_time() {
        let t = Instant::now();
        let mut s = Session::new(cfg(Mode::Echo), t, Duration::ZERO);
        let _ = drain(&mut s, t);
        assert_eq!(s.poll_timeout(), Some(t + ms(5000)));
        assert!(!s.is_idle_expired(t + ms(4999)));
        assert!(s.is_idle_expired(t + ms(5000)));
        s.handle_timeout(t + ms(5000));
        assert_eq!(drain(&mut s, t + ms(5000)), "PING 1\n");
        s.handle_timeout(t + ms(6000));
        assert_eq!(drain(&mut s, t + ms(6000)), "PING 2\n");
        s.handle_timeout(t + ms(7000));
        assert_eq!(drain(&mut s, t + ms(7000)), "END heartbeat-timeout\n");
        assert_eq!(
            s.poll_close(),
            Some(Close::AfterEnd(EndReason::HeartbeatTimeout))
        );
    }

    #[test]
    fn a_ghost_s_end_says_how_late_after_its_deadline_it_was_decided() {
        let t = Instant::now();
        let mut s = Session::new(cfg(Mode::Echo), t, Duration::ZERO);
        let _ = drain(&mut s, t);
        s.handle_timeout(t + ms(5000));
        s.handle_timeout(t + ms(6000));
        assert_eq!(drain(&mut s, t + ms(6000)), "PING 1\nPING 2\n");
        assert_eq!(s.dead_late(), None, "not dead yet");
        // The deadline is t + 7 s; the engine got round to it 37 ms later.
        s.handle_timeout(t + ms(7037));
        assert_eq!(drain(&mut s, t + ms(7037)), "END heartbeat-timeout\n");
        assert_eq!(s.dead_late(), Some(ms(37)));
        // Any other end carries none.
        let mut q = Session::new(cfg(Mode::Echo), t, Duration::ZERO);
        q.end(t, EndReason::Quit, false);
        assert_eq!(q.dead_late(), None);
        let mut r = Session::new(cfg(Mode::Echo), t, Duration::ZERO);
        r.end(t, EndReason::ServerShutdown, true);
        r.handle_timeout(t + ms(60_000));
        assert_eq!(r.dead_late(), None, "the first reason wins");
    }

    #[test]
    fn an_answer_ends_the_round() {
        let t = Instant::now();
        let mut s = Session::new(cfg(Mode::Echo), t, Duration::ZERO);
        let _ = drain(&mut s, t);
        s.handle_timeout(t + ms(5000));
        assert_eq!(drain(&mut s, t + ms(5000)), "PING 1\n");
        s.handle_rx(t + ms(5010), b"PONG 1\n");
        assert_eq!(s.poll_input(t + ms(5010)), Input::NeedBytes);
        let evs: Vec<_> = std::iter::from_fn(|| s.poll_event()).collect();
        assert!(evs.contains(&SessionEvent::Answered(Answered {
            after_pings: 1,
            rtt: ms(10)
        })));
        assert_eq!(s.heartbeat_timeout(), Some(t + ms(10_010)));
    }

    #[test]
    fn a_client_that_reads_nothing_holds_its_own_input_then_is_ended() {
        let t = Instant::now();
        let mut s = Session::new(cfg(Mode::Echo), t, Duration::ZERO);
        // 600 bytes of echoes: more than half the 1000-byte budget.
        let line = format!("MSG {}\n", "x".repeat(50));
        s.handle_rx(t, line.repeat(20).as_bytes());
        assert_eq!(s.poll_input(t), Input::Held);
        assert!(s.queued() <= 1000 / 2 + 64, "bounded: {}", s.queued());
        assert_eq!(s.lagging_since(), Some(t));
        // The socket takes nothing: at `stall` the client is ended, END goes next (after
        // HELLO, which is never dropped).
        s.handle_timeout(t + ms(499));
        assert!(s.is_open());
        s.handle_timeout(t + ms(500));
        assert_eq!(s.end_reason(), Some(EndReason::SlowConsumer));
        assert_eq!(
            drain(&mut s, t + ms(501)),
            "HELLO hb/1 idle=5000 interval=1000 count=2 mode=echo\nEND slow-consumer\n"
        );
    }

    #[test]
    fn a_client_that_reads_is_never_ended() {
        let t = Instant::now();
        let mut s = Session::new(cfg(Mode::Echo), t, Duration::ZERO);
        let line = format!("MSG {}\n", "x".repeat(50));
        let mut now = t;
        let mut echoed = 0;
        for _ in 0..10_000 {
            s.handle_rx(now, line.as_bytes());
            loop {
                match s.poll_input(now) {
                    Input::NeedBytes => break,
                    Input::Held => {
                        // The client reads everything 1 ms later.
                        now += ms(1);
                        s.handle_timeout(now);
                        echoed += drain(&mut s, now).matches("ECHO").count();
                    }
                    other => panic!("{other:?}"),
                }
            }
        }
        echoed += drain(&mut s, now).matches("ECHO").count();
        assert!(s.is_open());
        assert_eq!(echoed, 10_000);
    }

    #[test]
    fn input_waiting_while_held_counts_as_traffic() {
        let t = Instant::now();
        let mut s = Session::new(cfg(Mode::Echo), t, Duration::ZERO);
        s.handle_input_waiting(t + ms(4000));
        assert_eq!(s.heartbeat_timeout(), Some(t + ms(9000)));
    }

    #[test]
    fn line_too_long_ends_after_the_queue() {
        let t = Instant::now();
        let mut s = Session::new(cfg(Mode::Echo), t, Duration::ZERO);
        s.handle_rx(t, b"MSG ok\n");
        s.handle_rx(t, &[b'y'; 100]);
        assert_eq!(s.poll_input(t), Input::Stop);
        assert!(drain(&mut s, t).ends_with("ECHO ok\nEND line-too-long\n"));
    }

    #[test]
    fn chat_lines_go_to_the_hub_and_a_held_one_comes_back() {
        let t = Instant::now();
        let mut s = Session::new(cfg(Mode::Chat), t, Duration::ZERO);
        s.handle_rx(t, b"JOIN ann\nMSG hi\nWHO\n");
        assert_eq!(s.poll_input(t), Input::Room(RoomOp::Join("ann".into())));
        s.handle_room(t, RoomOutcome::Done);
        let Input::Room(op) = s.poll_input(t) else {
            panic!()
        };
        s.handle_room(t, RoomOutcome::Held(op));
        assert!(s.is_held_by_room());
        assert_eq!(s.poll_input(t), Input::Room(RoomOp::Msg("hi".into())));
        s.handle_room(t, RoomOutcome::Done);
        assert_eq!(s.poll_input(t), Input::Room(RoomOp::Who));
        s.handle_room(
            t,
            RoomOutcome::Reply(ServerMsg::Members(vec!["ann".into()])),
        );
        assert_eq!(s.poll_input(t), Input::NeedBytes);
        assert!(drain(&mut s, t).ends_with("MEMBERS ann\n"));
        // A held operation is dropped when the session ends: nothing after the end state.
        s.handle_rx(t, b"MSG again\n");
        let Input::Room(op) = s.poll_input(t) else {
            panic!()
        };
        s.handle_room(t, RoomOutcome::Held(op));
        s.end(t, EndReason::HeartbeatTimeout, true);
        assert_eq!(s.poll_input(t), Input::Stop);
    }

    #[test]
    fn history_and_join_since_go_to_the_hub_in_chat_and_are_unknown_in_echo() {
        let t = Instant::now();
        let mut s = Session::new(cfg(Mode::Chat), t, Duration::ZERO);
        s.handle_rx(t, b"HISTORY 5\nJOIN ann SINCE -\n");
        assert_eq!(s.poll_input(t), Input::Room(RoomOp::History(5)));
        s.handle_room(t, RoomOutcome::Done);
        assert_eq!(
            s.poll_input(t),
            Input::Room(RoomOp::JoinSince {
                name: "ann".into(),
                since: None,
                token: None
            })
        );
        let mut s = Session::new(cfg(Mode::Echo), t, Duration::ZERO);
        let _ = drain(&mut s, t);
        s.handle_rx(t, b"HISTORY 5\nJOIN ann SINCE -\nJOIN ann\n");
        assert_eq!(s.poll_input(t), Input::NeedBytes);
        let out = drain(&mut s, t);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2, "plain JOIN is still ignored: {out}");
        assert!(
            lines.iter().all(|l| l.starts_with("ERR unknown-verb ")),
            "{out}"
        );
    }

    #[test]
    fn a_closed_client_gets_what_was_queued_but_no_end_line() {
        let t = Instant::now();
        let mut s = Session::new(cfg(Mode::Echo), t, Duration::ZERO);
        s.handle_rx(t, b"MSG bye\n");
        assert_eq!(s.poll_input(t), Input::NeedBytes);
        s.handle_closed(t);
        assert_eq!(s.poll_close(), None, "the echo is still to go");
        assert!(drain(&mut s, t).ends_with("ECHO bye\n"));
        let mut buf = Vec::new();
        assert_eq!(s.poll_transmit(&mut buf), 0);
        assert_eq!(s.poll_close(), Some(Close::Now(EndReason::Closed)));
    }

    #[test]
    fn an_end_that_cannot_be_written_is_given_up_after_stall() {
        let t = Instant::now();
        let mut s = Session::new(cfg(Mode::Echo), t, Duration::ZERO);
        let _ = drain(&mut s, t);
        s.end(t, EndReason::ServerShutdown, true);
        let mut buf = Vec::new();
        assert!(s.poll_transmit(&mut buf) > 0);
        assert_eq!(
            s.flow_timeout(),
            None,
            "no clock before the socket refuses bytes"
        );
        // The socket accepts nothing.
        s.handle_write_blocked(t);
        assert_eq!(s.flow_timeout(), Some(t + END_GRACE));
        s.handle_timeout(t + END_GRACE);
        assert_eq!(s.poll_close(), Some(Close::Now(EndReason::ServerShutdown)));
    }

    #[test]
    fn records_leaving_below_the_session_keep_its_end_alive() {
        // TLS holds the lines the session handed over; the client reads them slowly, so
        // the session's own bytes (its END) wait, but the socket keeps taking records.
        let t = Instant::now();
        let mut s = Session::new(cfg(Mode::Echo), t, Duration::ZERO);
        let _ = drain(&mut s, t);
        s.end(t, EndReason::Quit, false);
        s.handle_write_blocked(t);
        assert_eq!(s.flow_timeout(), Some(t + END_GRACE));
        s.handle_transport_progress(t + ms(150));
        s.handle_write_blocked(t + ms(150));
        assert_eq!(s.flow_timeout(), Some(t + ms(150) + END_GRACE));
        s.handle_timeout(t + END_GRACE);
        assert_eq!(s.poll_close(), None, "still moving: not given up");
        // Then nothing moves for the grace: given up.
        s.handle_timeout(t + ms(150) + END_GRACE);
        assert_eq!(s.poll_close(), Some(Close::Now(EndReason::Quit)));
    }

    #[test]
    fn a_lagging_client_ended_while_its_socket_is_full_gets_a_stall_for_its_end() {
        let t = Instant::now();
        let mut s = Session::new(cfg(Mode::Echo), t, Duration::ZERO);
        s.handle_write_blocked(t);
        s.mark_lagging(t + ms(100));
        s.handle_timeout(t + ms(600));
        assert_eq!(s.end_reason(), Some(EndReason::SlowConsumer));
        assert_eq!(s.poll_close(), None, "END is still to go");
        assert_eq!(s.flow_timeout(), Some(t + ms(600) + END_GRACE));
        s.handle_timeout(t + ms(600) + END_GRACE);
        assert_eq!(s.poll_close(), Some(Close::Now(EndReason::SlowConsumer)));
    }

    #[test]
    fn a_writer_not_scheduled_is_not_the_clients_fault() {
        let t = Instant::now();
        let mut s = Session::new(cfg(Mode::Echo), t, Duration::ZERO);
        // HELLO waits 10 s because the engine never tried to write: nobody is ended.
        s.handle_timeout(t + ms(4_000));
        assert!(s.is_open());
        assert_eq!(s.flow_timeout(), None);
    }

    #[test]
    fn peek_shows_what_poll_would_copy() {
        let t = Instant::now();
        let mut c = cfg(Mode::Chat);
        c.queue = 1 << 20;
        let mut s = Session::new(c, t, Duration::ZERO);
        for _ in 0..2000 {
            s.push(t, b"MSG a 0123456789012345678901234567890123456789\n");
        }
        let _ = s.handle_written(t, 1000);
        let shared = SharedBytes::new(b"MSG b shared\nMSG c shared\n".to_vec());
        s.push_shared(t, shared.slice(0..13));
        s.push(t, b"PING 1\n");
        s.push_shared(t, shared);
        let mut iov = [IoSlice::new(&[]); MAX_SLICES];
        let n = s.peek_transmit(&mut iov);
        let peeked: Vec<u8> = iov[..n].iter().flat_map(|s| s.iter().copied()).collect();
        let mut copied = Vec::new();
        let _ = s.poll_transmit(&mut copied);
        assert_eq!(peeked, copied);
        assert_eq!(copied.len(), TRANSMIT_BATCH);
    }

    #[test]
    fn transmit_is_bounded_and_consumes_only_what_was_written() {
        let t = Instant::now();
        let mut c = cfg(Mode::Chat);
        c.queue = 1 << 20;
        let mut s = Session::new(c, t, Duration::ZERO);
        let _ = drain(&mut s, t);
        let line = format!("MSG a {}\n", "z".repeat(999));
        for _ in 0..100 {
            s.push(t, line.as_bytes());
        }
        let mut buf = Vec::new();
        assert_eq!(s.poll_transmit(&mut buf), TRANSMIT_BATCH);
        let _ = s.handle_written(t, 10);
        assert_eq!(s.queued(), 100 * line.len() - 10);
        buf.clear();
        let _ = s.poll_transmit(&mut buf);
        assert_eq!(&buf[..5], &line.as_bytes()[10..15]);
    }

    #[test]
    fn a_tls_handshake_not_done_by_its_deadline_closes_without_a_word() {
        let t = Instant::now();
        let mut c = cfg(Mode::Echo);
        c.tls = true;
        c.handshake = ms(1_000);
        let mut s = Session::new(c, t, Duration::ZERO);
        assert!(s.is_securing());
        // No heartbeat round while securing (a PING could not be read anyway), even past idle;
        // the one deadline is the handshake's.
        assert_eq!(s.poll_timeout(), Some(t + ms(1_000)));
        s.handle_rx(t + ms(900), b"");
        assert!(!s.is_idle_expired(t + ms(6_000)));
        s.handle_timeout(t + ms(999));
        assert!(s.is_open());
        s.handle_timeout(t + ms(1_000));
        assert_eq!(s.poll_close(), Some(Close::Now(EndReason::Closed)));
        let events: Vec<_> = std::iter::from_fn(|| s.poll_event()).collect();
        assert!(
            events.contains(&SessionEvent::Insecure("no TLS handshake within 1s".into())),
            "{events:?}"
        );
    }

    #[test]
    fn a_secured_session_runs_the_heartbeat_from_the_handshake_on() {
        let t = Instant::now();
        let mut c = cfg(Mode::Echo);
        c.tls = true;
        c.handshake = ms(1_000);
        let mut s = Session::new(c, t, Duration::ZERO);
        s.handle_secured(t + ms(300));
        assert!(!s.is_securing());
        // idle (5 s) counts from the handshake; the handshake deadline is gone.
        assert_eq!(s.poll_timeout(), Some(t + ms(5_300)));
        s.handle_timeout(t + ms(5_300));
        assert!(drain(&mut s, t + ms(5_300)).ends_with("PING 1\n"));
        // A TLS error later still closes at once, without END.
        s.handle_insecure(t + ms(5_400), "TLS failed: bad record".into());
        assert_eq!(s.poll_close(), Some(Close::Now(EndReason::Closed)));
        assert_eq!(drain(&mut s, t + ms(5_400)), "");
    }
}
