//! The client's side of the line wire as a pure state machine.
//!
//! It decides when to send the next data message, when to answer a heartbeat (after the
//! configured `block` delay), and when the server has been silent too long to be alive: a live
//! server heartbeats a silent client after `idle`, so silence beyond `idle + count * interval`
//! (the server's own give-up time, learnt from `HELLO`) means it is gone.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use crate::core::display::{safe, safe_bytes};
use crate::core::mode::Mode;
use crate::core::wire::{ClientMsg, EndReason, ErrCode, GapReason, Pos, ResumeToken, ServerMsg};

/// A line-wire server sends `HELLO` as soon as it accepts. Without it after this long the
/// client sends [`PROBE_TOKEN`] in a `PING`: a line server answers `PONG` (after its `HELLO`),
/// a classic-wire server (which waits for the client to talk first) echoes it as
/// `Echoing...`, which tells the two apart within a round trip.
pub const HELLO_PROBE_AFTER: Duration = Duration::from_secs(1);
/// How long to wait for the server's `HELLO` before calling it gone.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Token of the `PING` sent when `HELLO` is late.
pub const PROBE_TOKEN: &str = "hello?";

/// Client behaviour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// Time between data messages; `None` sends none (the chat client sends what the user
    /// types instead).
    pub every: Option<Duration>,
    /// Delay before answering a heartbeat.
    pub block: Duration,
    /// The data message.
    pub message: String,
    /// Leave (QUIT) after this many data messages.
    pub messages: Option<u64>,
    /// The server mode this client is for; a `HELLO` naming another mode ends the session
    /// with [`Outcome::Mismatch`]. `None` accepts any.
    pub mode: Option<Mode>,
    /// `--token`: sent as `AUTH TOKEN` before anything else on the connection.
    pub token: Option<String>,
}

/// How the server's side of the connection went away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseKind {
    /// An orderly close (EOF).
    Closed,
    /// A reset (or another socket error).
    Reset,
}

/// Up to 16 bytes a peer sent first, kept to quote it when it speaks another protocol.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    bytes: [u8; 16],
    len: u8,
}

impl Sample {
    /// The first bytes of `b` (at most 16).
    pub fn new(b: &[u8]) -> Self {
        let mut bytes = [0; 16];
        let len = b.len().min(16);
        bytes[..len].copy_from_slice(&b[..len]);
        Self {
            bytes,
            len: len as u8,
        }
    }

    /// The kept bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl fmt::Debug for Sample {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", safe_bytes(self.as_bytes()))
    }
}

/// The client and the server do not fit together (exit 2): the user picked the wrong flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mismatch {
    /// `HELLO` named another mode than the client is for.
    ServerMode(Mode),
    /// A line client got bytes that are not the line wire (a classic server says
    /// `Echoing...`).
    NotLineWire(Sample),
    /// A classic client got the line wire's `HELLO`.
    LineWireServer,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ServerMode(Mode::Chat) => {
                f.write_str("the server is in chat mode: use hb-client --chat --name NAME")
            }
            Self::ServerMode(Mode::Echo) => f.write_str("the server is in echo mode: drop --chat"),
            Self::NotLineWire(sample) => {
                let mut shown = safe_bytes(sample.as_bytes());
                if sample
                    .as_bytes()
                    .starts_with(crate::core::classic::ECHO_PREFIX)
                {
                    shown = "Echoing...".into();
                }
                write!(
                    f,
                    "this server does not speak the line wire (it sent '{shown}'); \
                     is it --wire classic? use hb-client --wire classic"
                )
            }
            Self::LineWireServer => {
                f.write_str("this server speaks the line wire (it sent HELLO); drop --wire classic")
            }
        }
    }
}

/// How a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The user or the script ended it (exit 0).
    UserEnded,
    /// The server sent `END reason` (exit 3).
    ServerEnded(EndReason),
    /// The server sent nothing for this long, though a live one would have (exit 4).
    ServerLost(Duration),
    /// The server closed or reset the connection without `END` (exit 4).
    ServerClosed(CloseKind),
    /// The chat client lost its connection and could not resume within `--reconnect-for`
    /// (this long) (exit 4, like the loss itself).
    Unreachable(Duration),
    /// Client and server do not fit together (exit 2).
    Mismatch(Mismatch),
}

impl Outcome {
    /// The contract's exit status for this outcome.
    pub fn exit_code(self) -> u8 {
        match self {
            Self::UserEnded => 0,
            Self::ServerEnded(_) => 3,
            Self::ServerLost(_) | Self::ServerClosed(_) | Self::Unreachable(_) => 4,
            Self::Mismatch(_) => 2,
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UserEnded => f.write_str("session ended"),
            Self::ServerEnded(EndReason::AuthFailed) => f.write_str(
                "the server ended the session: auth-failed (it refused the token: another \
                 secret, expired or not yet valid, or not for this --name; the server's log \
                 says which)",
            ),
            Self::ServerEnded(reason) => write!(f, "the server ended the session: {reason}"),
            Self::ServerLost(silence) => write!(
                f,
                "the server stopped answering (silent for {})",
                crate::config::fmt_duration(*silence)
            ),
            Self::ServerClosed(CloseKind::Closed) => {
                f.write_str("the server closed the connection (without END)")
            }
            Self::ServerClosed(CloseKind::Reset) => {
                f.write_str("the server reset the connection (without END)")
            }
            Self::Unreachable(tried) => write!(
                f,
                "the connection was lost and the server could not be reached again within {}",
                crate::config::fmt_duration(*tried)
            ),
            Self::Mismatch(m) => m.fmt(f),
        }
    }
}

/// True when the chat client should reconnect (and resume) after a session ended with
/// `outcome`: the connection was *lost* rather than *ended on purpose*.
///
/// * A loss: EOF or reset without `END`, the server's silence, `END heartbeat-timeout` (the
///   server took our silence for death: the path between us failed, not the client), and
///   `END slow-consumer` (we fell behind, e.g. a suspended terminal; the resume recovers
///   what was dropped).
/// * On purpose, never retried: the user's own end, `END quit`, `END server-shutdown` (the
///   operator stopped the server), `END replaced` (another connection resumed our name with
///   our token: reconnecting would take it back and the two would fight), the refusals
///   `END server-full` and `END line-too-long`, `END flood` and `END auth-failed`, and a
///   client/server mismatch. A refused
///   name (`ERR` on joining) never reaches here: it ends the client at once (exit 2).
pub fn should_reconnect(outcome: Outcome) -> bool {
    match outcome {
        Outcome::ServerLost(_) | Outcome::ServerClosed(_) => true,
        Outcome::ServerEnded(reason) => match reason {
            // `node-lost` is a LEFT reason; should a server ever end with it, the client's
            // server vanished, so reconnecting (to another node) is right.
            EndReason::HeartbeatTimeout
            | EndReason::SlowConsumer
            | EndReason::Closed
            | EndReason::NodeLost => true,
            EndReason::Quit
            | EndReason::ServerShutdown
            | EndReason::ServerFull
            | EndReason::LineTooLong
            | EndReason::Replaced
            // Another member holds the name cluster-wide: rejoining would be refused.
            | EndReason::NameTaken
            // Over --rate: the user's script sends too fast; coming back would flood again.
            | EndReason::Flood
            // The token was refused (or ran out): the same token would be refused again.
            | EndReason::AuthFailed => false,
        },
        Outcome::UserEnded | Outcome::Unreachable(_) | Outcome::Mismatch(_) => false,
    }
}

/// First ceiling of the reconnect delay.
pub const BACKOFF_BASE: Duration = Duration::from_millis(100);
/// Largest reconnect delay.
pub const BACKOFF_CAP: Duration = Duration::from_secs(5);

/// Exponential backoff with full jitter: the n-th delay (from 0) is drawn uniformly from
/// `[0, min(cap, base * 2^n)]`. Full jitter spreads the clients of a restarted server over
/// the whole window instead of letting them reconnect in lock-step waves.
///
/// Sans-IO: the caller supplies the random draws (any `u64`, uniformly distributed), so
/// tests choose them and the driver takes them from wherever it likes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    /// Delays starting at `base` (ceiling of the first), doubling up to `cap`.
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap,
            attempt: 0,
        }
    }

    /// The ceiling of the next delay: `min(cap, base * 2^attempt)`.
    pub fn ceiling(&self) -> Duration {
        // 2^31 * base overflows long before the cap matters; saturate instead.
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.base
            .checked_mul(factor)
            .unwrap_or(Duration::MAX)
            .min(self.cap)
    }

    /// The next delay, with `random` (uniform over `u64`) picking where in
    /// `[0, ceiling]` it falls.
    pub fn next_delay(&mut self, random: u64) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        // (random + 1) / 2^64 of the ceiling, in nanoseconds (u128: no overflow, no float):
        // 0 for the smallest draw, the ceiling itself for the largest.
        let nanos = (ceiling.as_nanos() * (u128::from(random) + 1)) >> 64;
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// Starts over from `base` (after a success).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// When a lost chat client tries again, and when it gives up: [`Backoff`] between attempts,
/// all of them within `budget` (`--reconnect-for`) of the loss. The last attempt is moved
/// forward to the end of the budget rather than dropped, so the budget is used in full.
#[derive(Debug, Clone)]
pub struct Reconnect {
    backoff: Backoff,
    lost_at: Instant,
    give_up_at: Instant,
    attempts: u32,
}

impl Reconnect {
    /// The connection was found lost at `lost_at`; retry for `budget`.
    pub fn new(lost_at: Instant, budget: Duration) -> Self {
        Self {
            backoff: Backoff::new(BACKOFF_BASE, BACKOFF_CAP),
            lost_at,
            give_up_at: lost_at.checked_add(budget).unwrap_or(lost_at),
            attempts: 0,
        }
    }

    /// When the connection was found lost.
    pub fn lost_at(&self) -> Instant {
        self.lost_at
    }

    /// Attempts planned so far.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// At `now` (right after the loss, or after a failed attempt): when to try next, or
    /// `None` when the budget is spent (give up: exit 4).
    pub fn next_attempt(&mut self, now: Instant, random: u64) -> Option<Instant> {
        if now >= self.give_up_at {
            return None;
        }
        self.attempts += 1;
        let delay = self.backoff.next_delay(random);
        Some(
            now.checked_add(delay)
                .unwrap_or(self.give_up_at)
                .min(self.give_up_at),
        )
    }
}

/// The seed-driven random source the chat driver feeds [`Reconnect`] with: xorshift64*,
/// enough to spread retries, not for secrets. The seed comes from the driver (which may
/// read the clock or the OS); tests pass a fixed one.
#[derive(Debug, Clone)]
pub struct Jitter(u64);

impl Jitter {
    /// A source seeded with `seed` (0 is replaced: xorshift would stay at 0).
    pub fn new(seed: u64) -> Self {
        Self(if seed == 0 {
            0x9e37_79b9_7f4a_7c15
        } else {
            seed
        })
    }

    /// The next draw, uniform over `u64`.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// What the first bytes from a server say about its protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sniff {
    /// Too few bytes to tell.
    NeedMore,
    /// The line wire: `HELLO hb/1 ...`, or `END ...` from a server refusing at once.
    LineWire,
    /// Something else.
    Foreign,
}

/// Classifies the first bytes a server sent (the line wire always starts with `HELLO hb/1 `,
/// or `END ` when a full server refuses the connection).
pub fn sniff(first: &[u8]) -> Sniff {
    const STARTS: [&[u8]; 2] = [b"HELLO hb/1 ", b"END "];
    if STARTS.iter().any(|s| first.starts_with(s)) {
        return Sniff::LineWire;
    }
    if STARTS.iter().any(|s| s.starts_with(first)) {
        return Sniff::NeedMore;
    }
    Sniff::Foreign
}

/// The client state machine.
///
/// The driver feeds everything already received ([`Client::handle_bytes`], then each line to
/// [`Client::handle_msg`], or [`Client::handle_closed`]) before it calls [`Client::poll`], so
/// silence is judged only when nothing is pending: a client that was stopped (SIGSTOP) reads
/// the `END` waiting for it instead of calling the server silent.
#[derive(Debug, Clone)]
pub struct Client {
    cfg: ClientConfig,
    /// Longest tolerated server silence; `HELLO_TIMEOUT` until `HELLO` arrives.
    patience: Duration,
    greeted: bool,
    /// The first bytes, until [`sniff`] can tell the protocol; `None` once it did.
    first: Option<Vec<u8>>,
    probe_at: Option<Instant>,
    last_rx: Instant,
    next_send: Option<Instant>,
    sent: u64,
    pongs: VecDeque<(Instant, String)>,
    quitting: bool,
    finished: Option<Outcome>,
    /// `AUTH` still to send (the first action of a connection, before even `HELLO`).
    auth: Option<String>,
}

impl Client {
    /// A client that connected at `now` and waits for `HELLO`; with a token, its first
    /// action is `AUTH TOKEN`.
    pub fn new(cfg: ClientConfig, now: Instant) -> Self {
        Self {
            auth: cfg.token.clone(),
            cfg,
            patience: HELLO_TIMEOUT,
            greeted: false,
            first: Some(Vec::new()),
            probe_at: now.checked_add(HELLO_PROBE_AFTER),
            last_rx: now,
            next_send: None,
            sent: 0,
            pongs: VecDeque::new(),
            quitting: false,
            finished: None,
        }
    }

    /// Data messages sent so far.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// True once the session is over.
    pub fn is_finished(&self) -> bool {
        self.finished.is_some()
    }

    /// Raw bytes arrived at `now` (call before handing their lines to
    /// [`Client::handle_msg`]): the first ones decide whether the server speaks the line wire.
    pub fn handle_bytes(&mut self, now: Instant, bytes: &[u8]) -> Option<Outcome> {
        if self.finished.is_some() {
            return self.finished;
        }
        self.last_rx = self.last_rx.max(now);
        let first = self.first.as_mut()?;
        first.extend_from_slice(&bytes[..bytes.len().min(16)]);
        match sniff(first) {
            Sniff::NeedMore => {}
            Sniff::LineWire => self.first = None,
            Sniff::Foreign => {
                self.finished = Some(Outcome::Mismatch(Mismatch::NotLineWire(Sample::new(first))));
            }
        }
        self.finished
    }

    /// A line from the server arrived at `now`. Returns the outcome when it ends the session.
    pub fn handle_msg(&mut self, now: Instant, msg: &ServerMsg) -> Option<Outcome> {
        if self.finished.is_some() {
            return self.finished;
        }
        self.last_rx = self.last_rx.max(now);
        match msg {
            ServerMsg::Hello {
                idle,
                interval,
                count,
                mode,
            } if !self.greeted => {
                self.greeted = true;
                self.probe_at = None;
                if let (Some(want), Some(got)) = (self.cfg.mode, *mode) {
                    if want != got {
                        self.finished = Some(Outcome::Mismatch(Mismatch::ServerMode(got)));
                        return self.finished;
                    }
                }
                self.patience =
                    idle.saturating_add(interval.checked_mul(*count).unwrap_or(Duration::MAX));
                self.next_send = self.cfg.every.map(|_| now);
            }
            ServerMsg::Ping(token) => {
                let due = now.checked_add(self.cfg.block).unwrap_or(now);
                self.pongs.push_back((due, token.clone()));
            }
            ServerMsg::End(reason) => {
                let outcome = if self.quitting && *reason == EndReason::Quit {
                    Outcome::UserEnded
                } else {
                    Outcome::ServerEnded(*reason)
                };
                self.finished = Some(outcome);
            }
            _ => {}
        }
        self.finished
    }

    /// The server closed (`kind`) the connection after everything it sent was handled: ends
    /// with the `END` already received if any, else as the user's end when quitting, else as
    /// [`Outcome::ServerClosed`].
    pub fn handle_closed(&mut self, kind: CloseKind) -> Outcome {
        *self.finished.get_or_insert(if self.quitting {
            Outcome::UserEnded
        } else {
            Outcome::ServerClosed(kind)
        })
    }

    /// The user asked to leave: the line to send (the session ends on `END quit` or EOF).
    pub fn handle_quit(&mut self) -> ClientMsg {
        self.quitting = true;
        self.next_send = None;
        ClientMsg::Quit(None)
    }

    /// When [`Client::poll`] next has something to do.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.finished.is_some() {
            return None;
        }
        let lost = self.last_rx.checked_add(self.patience);
        if self.auth.is_some() {
            return Some(self.last_rx);
        }
        [
            self.next_send,
            self.pongs.front().map(|p| p.0),
            self.probe_at,
            lost,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// What is due at `now`, one action per call; call again until `None`. Feed everything
    /// already received first: silence is judged on what was handled.
    #[must_use]
    pub fn poll(&mut self, now: Instant) -> Option<ClientAction> {
        if self.finished.is_some() {
            return None;
        }
        if let Some(token) = self.auth.take() {
            // First on the wire: a server with --auth-secret ends anything else first.
            return Some(ClientAction::Send(ClientMsg::Auth(token)));
        }
        let silent = now.saturating_duration_since(self.last_rx);
        if silent >= self.patience {
            self.finished = Some(Outcome::ServerLost(silent));
            return self.finished.map(ClientAction::Finish);
        }
        if self.probe_at.is_some_and(|at| at <= now) {
            self.probe_at = None;
            return Some(ClientAction::Send(ClientMsg::Ping(PROBE_TOKEN.into())));
        }
        if self.pongs.front().is_some_and(|p| p.0 <= now) {
            let (_, token) = self.pongs.pop_front()?;
            return Some(ClientAction::Send(ClientMsg::Pong(token)));
        }
        if self.next_send.is_some_and(|at| at <= now) {
            if self.cfg.messages.is_some_and(|n| self.sent >= n) {
                return Some(ClientAction::Send(self.handle_quit()));
            }
            self.sent += 1;
            let planned = self.next_send.unwrap_or(now);
            self.next_send = self
                .cfg
                .every
                .and_then(|every| planned.checked_add(every))
                .map(|at| at.max(now));
            return Some(ClientAction::Send(ClientMsg::Msg(self.cfg.message.clone())));
        }
        None
    }
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum ClientAction {
    /// Write this line.
    Send(ClientMsg),
    /// Stop: the session is over.
    Finish(Outcome),
}

/// The chat client's view: joining, resuming, the user's commands, and how room lines are
/// shown.
///
/// Joining sends `JOIN NAME SINCE POS [TOKEN]` then `WHO`; the first reply decides: `ERR`
/// (the name is taken or invalid) refuses, `MEMBERS` (the answer to `WHO`, sent only after
/// the `JOIN` was handled, so after `WELCOME` and the replay) confirms. Lines to show come
/// back without a timestamp: the driver, which owns the clock, prefixes them (see [`clock`]).
/// Everything that came from the network is shown through [`safe`].
///
/// ## Positions and resume
/// The first join names no position (`SINCE -`): what was said before it is not ours, so
/// the `WELCOME`'s position becomes the last one seen. Every `PUB` moves it on. After a
/// loss ([`Chat::connection_lost`]) the next [`Chat::join`] names it with the `WELCOME`'s
/// token, so the server replays exactly what came after it (or says `GAP`), and the
/// replay's end (`SYNCED` or `GAP`) becomes one notice line.
///
/// Each room message is shown at most once: a `PUB` at or before the last position seen
/// (same epoch) is dropped, so a replay overlapping what arrived before the loss shows
/// nothing twice. The member's own messages are never shown (the user saw them as typed,
/// as in a plain chat session) though a replay carries them, since the server never sends
/// a sender its own line live; they still move the position on and are not counted as
/// recovered.
#[derive(Debug, Clone)]
pub struct Chat {
    name: String,
    /// `--token`: `AUTH TOKEN` goes first on every connection.
    token_auth: Option<String>,
    joined: bool,
    /// The last room position received (`None` until the first `WELCOME`).
    last: Option<Pos>,
    /// The latest `WELCOME`'s token.
    token: Option<ResumeToken>,
    /// A resume under way.
    resume: Option<Resume>,
}

/// A resume under way: from the loss until the replay's end.
#[derive(Debug, Clone)]
struct Resume {
    /// When the loss was found.
    lost_at: Instant,
    /// Others' messages replayed so far (over every attempt of this resume).
    recovered: u64,
}

/// What the chat driver does with one event.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum ChatStep {
    /// Nothing to show or send.
    Nothing,
    /// Show this line.
    Show(String),
    /// Send this line to the server.
    Send(ClientMsg),
    /// The user asked to leave.
    Quit,
    /// The server refused the name: end at once (exit 2) with this message.
    Refused(String),
    /// The server refused the name while this client was resuming: it is still held, by
    /// the client's own old connection (not found gone yet) or, with several servers, on
    /// the server that held it. Show this, drop the connection and reconnect as after a loss
    /// (within `--reconnect-for`): the old holder is ended by its heartbeat, or its server
    /// is declared lost, and the name is free again.
    Retry(String),
}

/// The help text, one line.
pub const CHAT_HELP: &str =
    "* commands: /who lists the members, /help shows this, /quit leaves; //text sends a line starting with /";

impl Chat {
    /// A chat client that will join as `name`.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            token_auth: None,
            joined: false,
            last: None,
            token: None,
            resume: None,
        }
    }

    /// A chat client that authenticates with `token` (a JWT for `--auth-secret` servers) on
    /// every connection before it joins.
    pub fn with_auth(mut self, token: Option<String>) -> Self {
        self.token_auth = token;
        self
    }

    /// The lines to send on connecting: `AUTH` (with a token), the join (naming the last
    /// position seen and the resume token, when resuming) and `WHO`.
    pub fn join(&self) -> Vec<ClientMsg> {
        let mut lines = Vec::with_capacity(3);
        if let Some(t) = &self.token_auth {
            lines.push(ClientMsg::Auth(t.clone()));
        }
        lines.push(ClientMsg::JoinSince {
            name: self.name.clone(),
            since: self.last.clone(),
            token: self.token.clone(),
        });
        lines.push(ClientMsg::Who);
        lines
    }

    /// True once the server confirmed the name; the driver reads the user's lines only then,
    /// so nothing is sent under a refused name (nor into a lost connection).
    pub fn is_joined(&self) -> bool {
        self.joined
    }

    /// The last room position received.
    pub fn last_pos(&self) -> Option<&Pos> {
        self.last.as_ref()
    }

    /// The connection was found lost at `at`: the next [`Chat::join`] resumes. A loss during
    /// a resume keeps the first loss's time (the notice tells the whole outage).
    pub fn connection_lost(&mut self, at: Instant) {
        self.joined = false;
        self.resume.get_or_insert(Resume {
            lost_at: at,
            recovered: 0,
        });
    }

    /// True from [`Chat::connection_lost`] until the replay's end was received.
    pub fn is_resuming(&self) -> bool {
        self.resume.is_some()
    }

    /// A line from the server, received at `now`.
    pub fn handle_server(&mut self, now: Instant, msg: &ServerMsg) -> ChatStep {
        if !self.joined {
            match msg {
                ServerMsg::Err(bad) if bad.code == ErrCode::NameTaken && self.resume.is_some() => {
                    return ChatStep::Retry(format!(
                        "-- name '{}' is still held (the old connection is not gone yet); retrying",
                        safe(&self.name)
                    ));
                }
                ServerMsg::Err(bad) if bad.code == ErrCode::NameTaken => {
                    return ChatStep::Refused(format!(
                        "name '{}' is taken on this server; pick another --name",
                        safe(&self.name)
                    ));
                }
                ServerMsg::Err(bad) => {
                    return ChatStep::Refused(format!(
                        "the server refused to join as '{}': {} {}",
                        safe(&self.name),
                        bad.code,
                        safe(&bad.detail)
                    ));
                }
                ServerMsg::Members(_) => self.joined = true,
                _ => {}
            }
        }
        match msg {
            ServerMsg::Welcome { last, token, .. } => {
                self.token = Some(token.clone());
                // A first join: the stream so far was said before we came.
                self.last.get_or_insert_with(|| last.clone());
                return ChatStep::Nothing;
            }
            ServerMsg::Pub { pos, from, .. } => {
                let seen = self
                    .last
                    .as_ref()
                    .is_some_and(|l| l.epoch == pos.epoch && pos.offset <= l.offset);
                if seen {
                    return ChatStep::Nothing;
                }
                self.last = Some(pos.clone());
                if *from == self.name {
                    return ChatStep::Nothing;
                }
                if let Some(r) = &mut self.resume {
                    r.recovered += 1;
                }
            }
            ServerMsg::Synced { .. } => {
                return match self.resume.take() {
                    Some(r) => ChatStep::Show(format!(
                        "-- reconnected after {}; recovered {} message{}",
                        secs(now.saturating_duration_since(r.lost_at)),
                        r.recovered,
                        if r.recovered == 1 { "" } else { "s" }
                    )),
                    None => ChatStep::Nothing,
                };
            }
            ServerMsg::Gap { reason, last } => {
                let Some(r) = self.resume.take() else {
                    return ChatStep::Show(self.render(msg).unwrap_or_default());
                };
                let missed = match (reason, &self.last) {
                    (GapReason::TooOld, Some(l))
                        if l.epoch == last.epoch && last.offset > l.offset =>
                    {
                        let n = last.offset - l.offset;
                        format!("{n} message{}", if n == 1 { "" } else { "s" })
                    }
                    _ => "messages".to_owned(),
                };
                let why = match reason {
                    GapReason::TooOld => "too-old",
                    GapReason::EpochChanged => "epoch-changed: the server restarted",
                };
                // Nothing is replayed after a GAP: live lines follow from the stream's end.
                self.last = Some(last.clone());
                return ChatStep::Show(format!(
                    "-- reconnected after {}; {missed} could not be recovered ({why})",
                    secs(now.saturating_duration_since(r.lost_at)),
                ));
            }
            _ => {}
        }
        match self.render(msg) {
            Some(line) => ChatStep::Show(line),
            None => ChatStep::Nothing,
        }
    }

    /// How a line from the server is shown, if at all.
    pub fn render(&self, msg: &ServerMsg) -> Option<String> {
        Some(match msg {
            ServerMsg::Msg { from, text } | ServerMsg::Pub { from, text, .. } => {
                format!("{}: {}", safe(from), safe(text))
            }
            ServerMsg::Gap { reason, .. } => {
                format!("* some messages could not be recovered ({reason})")
            }
            ServerMsg::Joined(name) => format!("* {} joined", safe(name)),
            ServerMsg::Members(names) => {
                let names: Vec<String> = names
                    .iter()
                    .map(|n| {
                        if *n == self.name {
                            format!("{} (you)", safe(n))
                        } else {
                            safe(n)
                        }
                    })
                    .collect();
                format!("* in the room: {}", names.join(", "))
            }
            ServerMsg::Left { name, reason } => format!("* {} left ({reason})", safe(name)),
            ServerMsg::Err(bad) => format!("! {} {}", bad.code, safe(&bad.detail)),
            ServerMsg::Echo(text) => format!("(echo) {}", safe(text)),
            ServerMsg::Hello { .. }
            | ServerMsg::Ping(_)
            | ServerMsg::Pong(_)
            | ServerMsg::End(_)
            | ServerMsg::Welcome { .. }
            | ServerMsg::Synced { .. } => return None,
        })
    }

    /// A line the user typed.
    pub fn handle_user(&mut self, line: &str) -> ChatStep {
        let line = line.trim_end_matches(['\r', '\n']);
        match line.trim() {
            "" => ChatStep::Nothing,
            "/quit" => ChatStep::Quit,
            "/who" => ChatStep::Send(ClientMsg::Who),
            "/help" => ChatStep::Show(CHAT_HELP.into()),
            cmd if cmd.starts_with('/') && !cmd.starts_with("//") => ChatStep::Show(format!(
                "* unknown command {}; /help lists the commands",
                safe(cmd.split(' ').next().unwrap_or(cmd))
            )),
            // "//text" sends "/text", for messages that start with a slash.
            _ => ChatStep::Send(ClientMsg::Msg(
                line.strip_prefix('/')
                    .filter(|l| l.starts_with('/'))
                    .unwrap_or(line)
                    .to_owned(),
            )),
        }
    }
}

/// `3.2 s`: a duration for the user, to a tenth of a second.
fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

/// `HH:MM:SS ` for a wall-clock time given as seconds since the Unix epoch plus the local
/// offset from UTC in seconds (the driver reads both; this stays clock-free).
pub fn clock(unix_secs: i64, utc_offset_secs: i32) -> String {
    let t = (unix_secs + i64::from(utc_offset_secs)).rem_euclid(86_400);
    format!("{:02}:{:02}:{:02} ", t / 3600, t / 60 % 60, t % 60)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::wire::BadLine;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn cfg(every: u64, block: u64, messages: Option<u64>) -> ClientConfig {
        ClientConfig {
            every: Some(ms(every)),
            block: ms(block),
            message: "Hello, there".into(),
            messages,
            mode: None,
            token: None,
        }
    }

    fn hello() -> ServerMsg {
        ServerMsg::Hello {
            idle: ms(3000),
            interval: ms(500),
            count: 3,
            mode: None,
        }
    }

    /// Steps to each deadline until `end`, returning (ms since t0, action).
    fn drain(c: &mut Client, t0: Instant, end: Instant) -> Vec<(u128, ClientAction)> {
        let mut out = Vec::new();
        while let Some(at) = c.poll_timeout() {
            if at > end {
                break;
            }
            while let Some(a) = c.poll(at) {
                out.push(((at - t0).as_millis(), a));
            }
        }
        out
    }

    #[test]
    fn sends_at_once_then_every_interval() {
        let t0 = Instant::now();
        let mut c = Client::new(cfg(500, 0, None), t0);
        assert_eq!(c.handle_msg(t0, &hello()), None);
        let got = drain(&mut c, t0, t0 + ms(1000));
        let sends: Vec<u128> = got.iter().map(|g| g.0).collect();
        assert_eq!(sends, vec![0, 500, 1000]);
        assert!(got
            .iter()
            .all(|g| g.1 == ClientAction::Send(ClientMsg::Msg("Hello, there".into()))));
    }

    #[test]
    fn without_every_nothing_is_sent_but_heartbeats_are_answered() {
        let t0 = Instant::now();
        let mut c = Client::new(
            ClientConfig {
                every: None,
                ..cfg(1, 0, None)
            },
            t0,
        );
        let _ = c.handle_msg(t0, &hello());
        assert_eq!(c.poll(t0 + ms(1000)), None);
        let _ = c.handle_msg(t0 + ms(3000), &ServerMsg::Ping("1".into()));
        assert_eq!(
            c.poll(t0 + ms(3000)),
            Some(ClientAction::Send(ClientMsg::Pong("1".into())))
        );
        assert_eq!(c.sent(), 0);
    }

    #[test]
    fn heartbeats_are_answered_after_block() {
        let t0 = Instant::now();
        let mut c = Client::new(cfg(60_000, 250, None), t0);
        let _ = c.handle_msg(t0, &hello());
        let _ = c.poll(t0); // first message
        let _ = c.handle_msg(t0 + ms(3000), &ServerMsg::Ping("1".into()));
        let _ = c.handle_msg(t0 + ms(3500), &ServerMsg::Ping("2".into()));
        let got = drain(&mut c, t0, t0 + ms(4000));
        assert_eq!(
            got,
            vec![
                (3250, ClientAction::Send(ClientMsg::Pong("1".into()))),
                (3750, ClientAction::Send(ClientMsg::Pong("2".into())))
            ]
        );
    }

    #[test]
    fn end_from_server_finishes_with_its_reason() {
        let t0 = Instant::now();
        let mut c = Client::new(cfg(500, 0, None), t0);
        let _ = c.handle_msg(t0, &hello());
        let end = ServerMsg::End(EndReason::HeartbeatTimeout);
        assert_eq!(
            c.handle_msg(t0 + ms(10), &end),
            Some(Outcome::ServerEnded(EndReason::HeartbeatTimeout))
        );
        assert_eq!(c.poll(t0 + ms(10_000)), None);
        assert_eq!(Outcome::ServerEnded(EndReason::Quit).exit_code(), 3);
    }

    #[test]
    fn a_silent_server_is_lost_after_its_own_give_up_time() {
        let t0 = Instant::now();
        let mut c = Client::new(cfg(60_000, 0, None), t0);
        let _ = c.handle_msg(t0, &hello());
        let _ = c.poll(t0);
        // idle 3000 + 3 x 500 = 4500 ms of silence.
        assert_eq!(c.poll_timeout(), Some(t0 + ms(4500)));
        assert_eq!(c.poll(t0 + ms(4499)), None);
        assert_eq!(
            c.poll(t0 + ms(4500)),
            Some(ClientAction::Finish(Outcome::ServerLost(ms(4500))))
        );
        assert_eq!(Outcome::ServerLost(ms(1)).exit_code(), 4);
    }

    #[test]
    fn no_hello_probes_then_is_lost_after_the_hello_timeout() {
        let t0 = Instant::now();
        let mut c = Client::new(cfg(500, 0, None), t0);
        assert_eq!(c.poll_timeout(), Some(t0 + HELLO_PROBE_AFTER));
        assert_eq!(c.poll(t0 + HELLO_PROBE_AFTER - ms(1)), None);
        assert_eq!(
            c.poll(t0 + HELLO_PROBE_AFTER),
            Some(ClientAction::Send(ClientMsg::Ping(PROBE_TOKEN.into())))
        );
        assert_eq!(c.poll_timeout(), Some(t0 + HELLO_TIMEOUT));
        assert_eq!(
            c.poll(t0 + HELLO_TIMEOUT),
            Some(ClientAction::Finish(Outcome::ServerLost(HELLO_TIMEOUT)))
        );
    }

    #[test]
    fn a_hello_in_time_sends_no_probe() {
        let t0 = Instant::now();
        let mut c = Client::new(cfg(60_000, 0, None), t0);
        assert_eq!(c.handle_bytes(t0 + ms(5), b"HELLO hb/1 idle=3000 "), None);
        let _ = c.handle_msg(t0 + ms(5), &hello());
        let got = drain(&mut c, t0, t0 + ms(2000));
        assert_eq!(
            got,
            vec![(5, ClientAction::Send(ClientMsg::Msg("Hello, there".into())))]
        );
    }

    #[test]
    fn message_limit_quits_and_end_quit_is_a_user_end() {
        let t0 = Instant::now();
        let mut c = Client::new(cfg(100, 0, Some(2)), t0);
        let _ = c.handle_msg(t0, &hello());
        let got = drain(&mut c, t0, t0 + ms(1000));
        assert_eq!(got.len(), 3, "{got:?}");
        assert_eq!(got[2], (200, ClientAction::Send(ClientMsg::Quit(None))));
        assert_eq!(
            c.handle_msg(t0 + ms(201), &ServerMsg::End(EndReason::Quit)),
            Some(Outcome::UserEnded)
        );
        assert_eq!(Outcome::UserEnded.exit_code(), 0);
    }

    #[test]
    fn eof_without_end_is_a_close_unless_quitting() {
        let t0 = Instant::now();
        let mut c = Client::new(cfg(100, 0, None), t0);
        let _ = c.handle_msg(t0, &hello());
        assert_eq!(
            c.handle_closed(CloseKind::Closed),
            Outcome::ServerClosed(CloseKind::Closed)
        );
        assert_eq!(Outcome::ServerClosed(CloseKind::Reset).exit_code(), 4);
        let mut c = Client::new(cfg(100, 0, None), t0);
        let _ = c.handle_quit();
        assert_eq!(c.handle_closed(CloseKind::Reset), Outcome::UserEnded);
    }

    /// The SIGSTOP case: the client wakes long after its deadline with PINGs, `END` and EOF
    /// waiting. Fed before `poll`, they give the server's reason, not "silent".
    #[test]
    fn what_was_received_is_handled_before_silence_is_judged() {
        let t0 = Instant::now();
        let mut c = Client::new(cfg(60_000, 0, None), t0);
        let _ = c.handle_msg(t0, &hello());
        let _ = c.poll(t0);
        let woke = t0 + ms(60_000);
        for m in [
            ServerMsg::Ping("1".into()),
            ServerMsg::Ping("2".into()),
            ServerMsg::End(EndReason::HeartbeatTimeout),
        ] {
            let _ = c.handle_msg(woke, &m);
        }
        let ended = Outcome::ServerEnded(EndReason::HeartbeatTimeout);
        assert_eq!(c.handle_closed(CloseKind::Reset), ended);
        assert_eq!(c.poll(woke), None);
        assert_eq!(ended.exit_code(), 3);
        assert_eq!(
            ended.to_string(),
            "the server ended the session: heartbeat-timeout"
        );
    }

    #[test]
    fn close_reset_and_silence_are_told_apart() {
        assert_eq!(
            Outcome::ServerClosed(CloseKind::Closed).to_string(),
            "the server closed the connection (without END)"
        );
        assert_eq!(
            Outcome::ServerClosed(CloseKind::Reset).to_string(),
            "the server reset the connection (without END)"
        );
        assert_eq!(
            Outcome::ServerLost(ms(4500)).to_string(),
            "the server stopped answering (silent for 4.5s)"
        );
    }

    #[test]
    fn a_hello_for_another_mode_is_a_mismatch() {
        let t0 = Instant::now();
        let hello = |mode| ServerMsg::Hello {
            idle: ms(3000),
            interval: ms(500),
            count: 3,
            mode,
        };
        let mut line = Client::new(
            ClientConfig {
                mode: Some(Mode::Echo),
                ..cfg(100, 0, None)
            },
            t0,
        );
        let chat = Outcome::Mismatch(Mismatch::ServerMode(Mode::Chat));
        assert_eq!(line.handle_msg(t0, &hello(Some(Mode::Chat))), Some(chat));
        assert_eq!(line.poll(t0), None, "nothing is sent after a mismatch");
        assert_eq!(chat.exit_code(), 2);
        assert_eq!(
            chat.to_string(),
            "the server is in chat mode: use hb-client --chat --name NAME"
        );
        let mut chatter = Client::new(
            ClientConfig {
                mode: Some(Mode::Chat),
                every: None,
                ..cfg(100, 0, None)
            },
            t0,
        );
        assert_eq!(
            chatter
                .handle_msg(t0, &hello(Some(Mode::Echo)))
                .map(|o| o.to_string()),
            Some("the server is in echo mode: drop --chat".into())
        );
        // A server that does not say its mode (an older one) is taken at its word.
        let mut old = Client::new(
            ClientConfig {
                mode: Some(Mode::Chat),
                ..cfg(100, 0, None)
            },
            t0,
        );
        assert_eq!(old.handle_msg(t0, &hello(None)), None);
    }

    #[test]
    fn first_bytes_tell_the_wire() {
        assert_eq!(sniff(b""), Sniff::NeedMore);
        assert_eq!(sniff(b"HEL"), Sniff::NeedMore);
        assert_eq!(sniff(b"HELLO hb/1 idle=1"), Sniff::LineWire);
        assert_eq!(sniff(b"END server-full\n"), Sniff::LineWire);
        assert_eq!(sniff(b"Echoing...PING"), Sniff::Foreign);
        assert_eq!(sniff(b"HELLO hb/2 "), Sniff::Foreign);
        assert_eq!(sniff(b"HTTP/1.1 400"), Sniff::Foreign);
    }

    #[test]
    fn a_classic_server_is_recognised_by_its_echo() {
        let t0 = Instant::now();
        let mut c = Client::new(cfg(100, 0, None), t0);
        assert_eq!(c.handle_bytes(t0, b"HELL"), None, "could still be HELLO");
        let mut c = Client::new(cfg(100, 0, None), t0);
        let got = c.handle_bytes(t0, b"Echoing...PING hello?\n");
        let Some(o @ Outcome::Mismatch(Mismatch::NotLineWire(_))) = got else {
            panic!("{got:?}")
        };
        assert_eq!(
            o.to_string(),
            "this server does not speak the line wire (it sent 'Echoing...'); \
             is it --wire classic? use hb-client --wire classic"
        );
        assert_eq!(o.exit_code(), 2);
        let mut c = Client::new(cfg(100, 0, None), t0);
        let got = c.handle_bytes(t0, b"\x1b[2Jhi");
        assert_eq!(
            got.map(|o| o.to_string()),
            Some(
                "this server does not speak the line wire (it sent '\\e[2Jhi'); \
                 is it --wire classic? use hb-client --wire classic"
                    .into()
            )
        );
        assert_eq!(
            Outcome::Mismatch(Mismatch::LineWireServer).to_string(),
            "this server speaks the line wire (it sent HELLO); drop --wire classic"
        );
    }

    #[test]
    fn joining_sends_join_then_who_and_members_confirms() {
        let mut chat = Chat::new("ann");
        assert_eq!(
            chat.join(),
            [
                ClientMsg::JoinSince {
                    name: "ann".into(),
                    since: None,
                    token: None
                },
                ClientMsg::Who
            ]
        );
        assert!(!chat.is_joined());
        assert_eq!(
            chat.handle_server(
                Instant::now(),
                &ServerMsg::Members(vec!["ann".into(), "bob".into()])
            ),
            ChatStep::Show("* in the room: ann (you), bob".into())
        );
        assert!(chat.is_joined());
    }

    #[test]
    fn a_taken_name_is_refused_with_a_clear_message() {
        let mut chat = Chat::new("ann");
        let taken = ServerMsg::Err(BadLine {
            code: ErrCode::NameTaken,
            detail: "ann is in use".into(),
        });
        assert_eq!(
            chat.handle_server(Instant::now(), &taken),
            ChatStep::Refused("name 'ann' is taken on this server; pick another --name".into())
        );
        let mut chat = Chat::new("a\x1bb");
        let other = ServerMsg::Err(BadLine {
            code: ErrCode::MissingArgument,
            detail: "bad\rname".into(),
        });
        assert_eq!(
            chat.handle_server(Instant::now(), &other),
            ChatStep::Refused(
                "the server refused to join as 'a\\eb': missing-argument bad\\rname".into()
            )
        );
        // Once joined, an ERR is shown, not a refusal.
        let mut chat = Chat::new("ann");
        let _ = chat.handle_server(Instant::now(), &ServerMsg::Members(vec!["ann".into()]));
        assert_eq!(
            chat.handle_server(Instant::now(), &taken),
            ChatStep::Show("! name-taken ann is in use".into())
        );
    }

    #[test]
    fn a_taken_name_while_resuming_is_retried_not_fatal() {
        let mut chat = Chat::new("ann");
        let t = Instant::now();
        let _ = chat.handle_server(t, &ServerMsg::Members(vec!["ann".into()]));
        chat.connection_lost(t);
        let taken = ServerMsg::Err(BadLine {
            code: ErrCode::NameTaken,
            detail: "ann is taken".into(),
        });
        assert_eq!(
            chat.handle_server(t, &taken),
            ChatStep::Retry(
                "-- name 'ann' is still held (the old connection is not gone yet); retrying".into()
            )
        );
    }

    #[test]
    fn user_lines_become_commands() {
        let mut c = Chat::new("ann");
        let say = |t: &str| ChatStep::Send(ClientMsg::Msg(t.into()));
        assert_eq!(c.handle_user("hello there"), say("hello there"));
        assert_eq!(c.handle_user("/quit"), ChatStep::Quit);
        assert_eq!(c.handle_user("  /quit \r"), ChatStep::Quit);
        assert_eq!(c.handle_user(""), ChatStep::Nothing);
        assert_eq!(c.handle_user("   "), ChatStep::Nothing);
        assert_eq!(c.handle_user("/who"), ChatStep::Send(ClientMsg::Who));
        assert_eq!(c.handle_user("/help"), ChatStep::Show(CHAT_HELP.into()));
        for cmd in ["/who", "/help", "/quit", "//text"] {
            assert!(CHAT_HELP.contains(cmd), "{cmd}");
        }
        assert_eq!(
            c.handle_user("/nick bob"),
            ChatStep::Show("* unknown command /nick; /help lists the commands".into())
        );
        assert_eq!(c.handle_user("//etc/hosts"), say("/etc/hosts"));
    }

    #[test]
    fn room_lines_are_rendered_safely() {
        let c = Chat::new("ann");
        let r = |m: ServerMsg| c.render(&m);
        assert_eq!(
            r(ServerMsg::Msg {
                from: "bob".into(),
                text: "hi\r\x1b[2K\x1b[1Aann: bye\u{202e}".into()
            }),
            Some("bob: hi\\r\\e[2K\\e[1Aann: bye\\u{202e}".into())
        );
        assert_eq!(
            r(ServerMsg::Joined("b\x1bob".into())),
            Some("* b\\eob joined".into())
        );
        assert_eq!(
            r(ServerMsg::Left {
                name: "bob".into(),
                reason: EndReason::HeartbeatTimeout
            }),
            Some("* bob left (heartbeat-timeout)".into())
        );
        assert_eq!(
            r(ServerMsg::Err(BadLine {
                code: ErrCode::NotJoined,
                detail: "JOIN\x07 NAME first".into()
            })),
            Some("! not-joined JOIN\\x07 NAME first".into())
        );
        assert_eq!(
            r(ServerMsg::Echo("\x1b]0;x".into())),
            Some("(echo) \\e]0;x".into())
        );
        assert_eq!(r(ServerMsg::Ping("1".into())), None);
    }

    #[test]
    fn clock_shows_local_hours_minutes_seconds() {
        // 2026-11-21T22:00:46Z
        let t = 1_795_298_446;
        assert_eq!(clock(t, 0), "22:00:46 ");
        assert_eq!(clock(t, 3600), "23:00:46 ");
        assert_eq!(clock(t, 2 * 3600), "00:00:46 ");
        assert_eq!(clock(t, -5 * 3600 - 1800), "16:30:46 ");
    }

    fn pos(epoch: &str, offset: u64) -> Pos {
        Pos {
            epoch: crate::core::wire::Epoch::new(epoch).unwrap(),
            offset,
        }
    }

    fn token() -> ResumeToken {
        ResumeToken::new("0123456789abcdef").unwrap()
    }

    fn publ(epoch: &str, offset: u64, from: &str, text: &str) -> ServerMsg {
        ServerMsg::Pub {
            pos: pos(epoch, offset),
            from: from.into(),
            text: text.into(),
        }
    }

    #[test]
    fn backoff_doubles_its_ceiling_up_to_the_cap_and_stays_within_it() {
        let mut b = Backoff::new(BACKOFF_BASE, BACKOFF_CAP);
        let ceilings: Vec<u64> = (0..10)
            .map(|_| {
                let c = b.ceiling().as_millis() as u64;
                // The largest draw lands on the ceiling (to the nanosecond), the smallest on 0.
                let d = b.clone().next_delay(u64::MAX);
                assert!(d <= b.ceiling() && b.ceiling() - d < Duration::from_nanos(2));
                assert_eq!(b.clone().next_delay(0), Duration::ZERO);
                let _ = b.next_delay(1 << 63);
                c
            })
            .collect();
        assert_eq!(
            ceilings,
            [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000, 5000]
        );
        // Half the range for a draw of half of u64.
        let mut b = Backoff::new(BACKOFF_BASE, BACKOFF_CAP);
        assert_eq!(b.next_delay(1 << 63), ms(50));
        // Thousands of attempts neither overflow nor pass the cap.
        for _ in 0..10_000 {
            assert!(b.next_delay(u64::MAX) <= BACKOFF_CAP);
        }
        b.reset();
        assert_eq!(b.ceiling(), BACKOFF_BASE);
    }

    #[test]
    fn jittered_delays_are_spread_over_the_whole_window() {
        let mut j = Jitter::new(42);
        let mut b = Backoff::new(BACKOFF_BASE, BACKOFF_CAP);
        for _ in 0..6 {
            b.next_delay(0);
        }
        // At the cap: 1,000 draws fall in [0, 5 s] and fill each of its ten slices.
        let mut slices = [0u32; 10];
        for _ in 0..1000 {
            let d = b.next_delay(j.next_u64());
            assert!(d <= BACKOFF_CAP);
            slices[(d.as_millis() as usize / 500).min(9)] += 1;
        }
        assert!(
            slices.iter().all(|&n| (50..=150).contains(&n)),
            "{slices:?}"
        );
        // Seeded: the same seed gives the same draws; seed 0 does not get stuck at 0.
        assert_eq!(Jitter::new(7).next_u64(), Jitter::new(7).next_u64());
        assert_ne!(Jitter::new(0).next_u64(), 0);
    }

    #[test]
    fn reconnect_attempts_stay_within_the_budget_then_give_up() {
        let t0 = Instant::now();
        let mut r = Reconnect::new(t0, ms(1000));
        let mut now = t0;
        let mut plan = Vec::new();
        while let Some(at) = r.next_attempt(now, u64::MAX) {
            assert!(at >= now && at <= t0 + ms(1000));
            plan.push((at - t0).as_millis());
            now = at; // the attempt failed at once
        }
        // Ceilings 100, 200, 400, then 800 cut to the budget's end; then no more.
        assert_eq!(plan, [100, 300, 700, 1000]);
        assert_eq!(r.attempts(), 4);
        assert_eq!(r.lost_at(), t0);
        // A zero budget never tries.
        assert_eq!(Reconnect::new(t0, Duration::ZERO).next_attempt(t0, 0), None);
    }

    #[test]
    fn a_token_goes_first_on_every_connection_before_hello_and_join() {
        let t0 = Instant::now();
        let mut c = Client::new(
            ClientConfig {
                token: Some("h.p.s".into()),
                ..cfg(100, 0, None)
            },
            t0,
        );
        assert_eq!(c.poll_timeout(), Some(t0), "due at once");
        assert_eq!(
            c.poll(t0),
            Some(ClientAction::Send(ClientMsg::Auth("h.p.s".into())))
        );
        assert_eq!(c.poll(t0), None, "once per connection");
        let _ = c.handle_msg(t0, &hello());
        assert_eq!(
            c.poll(t0),
            Some(ClientAction::Send(ClientMsg::Msg("Hello, there".into())))
        );
        // The chat client: AUTH, then the join, on every (re)connection.
        let mut chat = Chat::new("ann").with_auth(Some("h.p.s".into()));
        for _ in 0..2 {
            let lines = chat.join();
            assert_eq!(lines[0], ClientMsg::Auth("h.p.s".into()));
            assert!(matches!(lines[1], ClientMsg::JoinSince { .. }));
            assert_eq!(lines[2], ClientMsg::Who);
            chat.connection_lost(t0);
        }
        assert_eq!(Chat::new("ann").join().len(), 2, "no token, no AUTH");
        let refused = Outcome::ServerEnded(EndReason::AuthFailed);
        assert_eq!(refused.exit_code(), 3);
        assert!(refused
            .to_string()
            .starts_with("the server ended the session: auth-failed (it refused the token"));
    }

    #[test]
    fn losses_reconnect_and_deliberate_ends_do_not() {
        for o in [
            Outcome::ServerLost(ms(500)),
            Outcome::ServerClosed(CloseKind::Closed),
            Outcome::ServerClosed(CloseKind::Reset),
            Outcome::ServerEnded(EndReason::HeartbeatTimeout),
            Outcome::ServerEnded(EndReason::SlowConsumer),
        ] {
            assert!(should_reconnect(o), "{o:?}");
        }
        for o in [
            Outcome::UserEnded,
            Outcome::ServerEnded(EndReason::Quit),
            Outcome::ServerEnded(EndReason::ServerShutdown),
            Outcome::ServerEnded(EndReason::Replaced),
            Outcome::ServerEnded(EndReason::ServerFull),
            Outcome::ServerEnded(EndReason::LineTooLong),
            Outcome::ServerEnded(EndReason::Flood),
            Outcome::ServerEnded(EndReason::AuthFailed),
            Outcome::Mismatch(Mismatch::ServerMode(Mode::Echo)),
            Outcome::Unreachable(ms(60_000)),
        ] {
            assert!(!should_reconnect(o), "{o:?}");
        }
        let gave_up = Outcome::Unreachable(ms(60_000));
        assert_eq!(gave_up.exit_code(), 4);
        assert_eq!(
            gave_up.to_string(),
            "the connection was lost and the server could not be reached again within 60s"
        );
    }

    #[test]
    fn a_resume_names_the_last_position_and_token_and_shows_each_message_once() {
        let t0 = Instant::now();
        let mut c = Chat::new("ann");
        let welcome = |last| ServerMsg::Welcome {
            name: "ann".into(),
            last,
            token: token(),
        };
        // First join: what was said before is not replayed; WELCOME's position is ours.
        assert_eq!(
            c.handle_server(t0, &welcome(pos("e1", 5))),
            ChatStep::Nothing
        );
        let synced0 = ServerMsg::Synced {
            last: pos("e1", 5),
            count: 0,
        };
        assert_eq!(c.handle_server(t0, &synced0), ChatStep::Nothing);
        let _ = c.handle_server(t0, &ServerMsg::Members(vec!["ann".into()]));
        assert!(c.is_joined());
        let show = |t: &str| ChatStep::Show(format!("bob: {t}"));
        assert_eq!(
            c.handle_server(t0, &publ("e1", 6, "bob", "six")),
            show("six")
        );
        assert_eq!(
            c.handle_server(t0, &publ("e1", 7, "bob", "seven")),
            show("seven")
        );
        c.connection_lost(t0 + ms(100));
        c.connection_lost(t0 + ms(900)); // a failed attempt keeps the first loss time
        assert!(!c.is_joined() && c.is_resuming());
        assert_eq!(
            c.join()[0],
            ClientMsg::JoinSince {
                name: "ann".into(),
                since: Some(pos("e1", 7)),
                token: Some(token()),
            }
        );
        assert_eq!(
            c.join()[0].encode(),
            "JOIN ann SINCE e1:7 0123456789abcdef\n"
        );
        // The replay overlaps what was seen (7), carries ann's own line (8), then news.
        let t1 = t0 + ms(3300);
        assert_eq!(
            c.handle_server(t1, &welcome(pos("e1", 10))),
            ChatStep::Nothing
        );
        let steps: Vec<ChatStep> = [
            publ("e1", 6, "bob", "six"),
            publ("e1", 7, "bob", "seven"),
            publ("e1", 8, "ann", "mine"),
            publ("e1", 9, "bob", "nine"),
            publ("e1", 10, "cy", "ten"),
            publ("e1", 9, "bob", "nine"),
        ]
        .iter()
        .map(|m| c.handle_server(t1, m))
        .collect();
        assert_eq!(
            steps,
            [
                ChatStep::Nothing,
                ChatStep::Nothing,
                ChatStep::Nothing,
                show("nine"),
                ChatStep::Show("cy: ten".into()),
                ChatStep::Nothing,
            ]
        );
        assert_eq!(c.last_pos(), Some(&pos("e1", 10)));
        let synced = ServerMsg::Synced {
            last: pos("e1", 10),
            count: 5,
        };
        assert_eq!(
            c.handle_server(t1, &synced),
            ChatStep::Show("-- reconnected after 3.2 s; recovered 2 messages".into())
        );
        assert!(!c.is_resuming());
        let _ = c.handle_server(t1, &ServerMsg::Members(vec!["ann".into()]));
        assert!(c.is_joined());
        // A later SYNCED (an answer to HISTORY) is no notice.
        assert_eq!(c.handle_server(t1, &synced), ChatStep::Nothing);
        assert_eq!(
            c.handle_server(t1, &publ("e1", 11, "cy", "live")),
            ChatStep::Show("cy: live".into())
        );
    }

    #[test]
    fn a_gap_is_one_notice_and_live_lines_go_on_from_the_streams_end() {
        let t0 = Instant::now();
        let mut c = Chat::new("ann");
        let _ = c.handle_server(
            t0,
            &ServerMsg::Welcome {
                name: "ann".into(),
                last: pos("e1", 0),
                token: token(),
            },
        );
        let _ = c.handle_server(t0, &publ("e1", 1, "bob", "one"));
        c.connection_lost(t0);
        let gap = ServerMsg::Gap {
            reason: GapReason::TooOld,
            last: pos("e1", 1500),
        };
        assert_eq!(
            c.handle_server(t0 + ms(2000), &gap),
            ChatStep::Show(
                "-- reconnected after 2.0 s; 1499 messages could not be recovered (too-old)".into()
            )
        );
        assert_eq!(c.last_pos(), Some(&pos("e1", 1500)));
        assert_eq!(
            c.handle_server(t0, &publ("e1", 1501, "bob", "new")),
            ChatStep::Show("bob: new".into())
        );
        c.connection_lost(t0);
        let restarted = ServerMsg::Gap {
            reason: GapReason::EpochChanged,
            last: pos("e2", 3),
        };
        assert_eq!(
            c.handle_server(t0 + ms(60), &restarted),
            ChatStep::Show(
                "-- reconnected after 0.1 s; messages could not be recovered \
                 (epoch-changed: the server restarted)"
                    .into()
            )
        );
        assert_eq!(
            c.handle_server(t0, &publ("e2", 4, "bob", "after")),
            ChatStep::Show("bob: after".into())
        );
        // A GAP outside a resume is shown as before.
        assert_eq!(
            c.handle_server(t0, &gap),
            ChatStep::Show("* some messages could not be recovered (too-old)".into())
        );
    }
}
