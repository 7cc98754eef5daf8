//! The line wire (CONTRACT section 2): framing and the messages of both directions.
//!
//! [`LineDecoder`] turns a byte stream into lines without ever holding more than `max_line`
//! bytes of an unfinished line; [`ClientMsg`] and [`ServerMsg`] parse and encode one line each.
//! Nothing here touches a socket.

use std::fmt;
use std::time::Duration;

use crate::core::mode::Mode;

/// Why a connection is being ended (`END REASON`, `LEFT NAME REASON`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EndReason {
    /// The peer did not answer `count` heartbeats.
    HeartbeatTimeout,
    /// The client asked to leave with `QUIT`.
    Quit,
    /// The server is shutting down (SIGINT/SIGTERM).
    ServerShutdown,
    /// The server is at `--max-conns` or out of threads or file descriptors.
    ServerFull,
    /// The client sent a line longer than `--max-line`.
    LineTooLong,
    /// The client's outbound queue filled up: it stopped reading.
    SlowConsumer,
    /// Only in `LEFT`: the client closed or reset the connection itself.
    Closed,
    /// Only in `END`: another connection resumed this one's name with its token
    /// (`JOIN NAME SINCE POS TOKEN`); the room sees no `LEFT` for it.
    Replaced,
    /// Only in `LEFT` (cluster, CONTRACT section 8): the member's server stopped refreshing
    /// its liveness key in Redis for `--node-timeout` (killed, or cut off), and another
    /// server announces its members gone.
    NodeLost,
    /// Only in `END` (cluster; proposed in docs/CLUSTER.md, not in the contract yet): while
    /// this server was cut off from Redis its member took a name that a member on another
    /// server holds in Redis; the claim in Redis wins, so this connection is ended.
    NameTaken,
    /// Only in `END` (CONTRACT section 9): the client kept sending over its `--rate` limit.
    Flood,
    /// Only in `END` (CONTRACT section 9): with `--auth-secret`, the client did not
    /// authenticate first (or in time), its token was refused or ran out, or it tried to
    /// `JOIN` under another name than its token's `sub`.
    AuthFailed,
}

impl EndReason {
    /// Every reason, in contract order.
    pub const ALL: [EndReason; 12] = [
        Self::HeartbeatTimeout,
        Self::Quit,
        Self::ServerShutdown,
        Self::ServerFull,
        Self::LineTooLong,
        Self::SlowConsumer,
        Self::Closed,
        Self::Replaced,
        Self::NodeLost,
        Self::NameTaken,
        Self::Flood,
        Self::AuthFailed,
    ];

    /// The word on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HeartbeatTimeout => "heartbeat-timeout",
            Self::Quit => "quit",
            Self::ServerShutdown => "server-shutdown",
            Self::ServerFull => "server-full",
            Self::LineTooLong => "line-too-long",
            Self::SlowConsumer => "slow-consumer",
            Self::Closed => "closed",
            Self::Replaced => "replaced",
            Self::NodeLost => "node-lost",
            Self::NameTaken => "name-taken",
            Self::Flood => "flood",
            Self::AuthFailed => "auth-failed",
        }
    }

    /// Parses the word on the wire.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl fmt::Display for EndReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `ERR CODE`: what was wrong with a line. The connection stays open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrCode {
    /// The verb is not one of the contract's (verbs are upper case).
    UnknownVerb,
    /// The line is not valid UTF-8.
    BadUtf8,
    /// The verb needs an argument and has none.
    MissingArgument,
    /// Chat: the name is already in use.
    NameTaken,
    /// Chat: `MSG` before `JOIN`.
    NotJoined,
    /// Chat: a second `JOIN` on a connection that already joined.
    AlreadyJoined,
    /// An argument is there but malformed or out of range (`HISTORY N`, the position or
    /// token of `JOIN NAME SINCE POS TOKEN`).
    BadArgument,
    /// Over the client's `--rate` limit: the line was dropped (CONTRACT section 9).
    RateLimited,
}

impl ErrCode {
    /// The word on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UnknownVerb => "unknown-verb",
            Self::BadUtf8 => "bad-utf8",
            Self::MissingArgument => "missing-argument",
            Self::NameTaken => "name-taken",
            Self::NotJoined => "not-joined",
            Self::AlreadyJoined => "already-joined",
            Self::BadArgument => "bad-argument",
            Self::RateLimited => "rate-limited",
        }
    }

    /// Parses the word on the wire.
    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::UnknownVerb,
            Self::BadUtf8,
            Self::MissingArgument,
            Self::NameTaken,
            Self::NotJoined,
            Self::AlreadyJoined,
            Self::BadArgument,
            Self::RateLimited,
        ]
        .into_iter()
        .find(|c| c.as_str() == s)
    }
}

impl fmt::Display for ErrCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A line that could not be parsed: the reply is `ERR code detail`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadLine {
    /// What kind of problem.
    pub code: ErrCode,
    /// Human-readable detail (never contains a newline).
    pub detail: String,
}

impl fmt::Display for BadLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code, self.detail)
    }
}

impl std::error::Error for BadLine {}

/// Longest epoch, in characters.
pub const MAX_EPOCH: usize = 16;

/// Length of a resume token, in characters.
pub const TOKEN_LEN: usize = 16;

/// Most messages one `HISTORY N` may ask for.
pub const MAX_HISTORY_REQUEST: u32 = 10_000;

/// True for a non-empty string of `[0-9a-z]` only.
fn is_base36(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
}

/// A decimal number of digits only (no sign, no spaces), as `u64`.
fn parse_u64(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// The epoch of the room's stream: 1 to [`MAX_EPOCH`] characters `[0-9a-z]`, chosen by the
/// engine at server start. A new epoch means the stream before it is lost (the server
/// restarted), so offsets of another epoch mean nothing any more.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Epoch(String);

impl Epoch {
    /// `s` as an epoch, if it is 1 to [`MAX_EPOCH`] characters `[0-9a-z]`.
    pub fn new(s: &str) -> Option<Self> {
        (s.len() <= MAX_EPOCH && is_base36(s)).then(|| Self(s.to_owned()))
    }

    /// The epoch as written on the wire.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for Epoch {
    /// `0`: the epoch of a hub nobody gave one (tests, and engines that do not resume).
    fn default() -> Self {
        Self("0".to_owned())
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A position in the room's stream, `EPOCH:OFFSET`: the offset of a room message (1 for the
/// first one of the epoch), or of the newest one when a reply names where the stream stands
/// (0 while there is none).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Pos {
    /// The stream's epoch.
    pub epoch: Epoch,
    /// The message's number in that epoch.
    pub offset: u64,
}

impl Pos {
    /// Parses `EPOCH:OFFSET` (the offset in decimal digits only).
    pub fn parse(s: &str) -> Option<Self> {
        let (epoch, offset) = s.split_once(':')?;
        Some(Self {
            epoch: Epoch::new(epoch)?,
            offset: parse_u64(offset)?,
        })
    }
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.epoch, self.offset)
    }
}

/// A resume token: [`TOKEN_LEN`] characters `[0-9a-z]`, given to a member in `WELCOME`. A
/// new connection that presents it may take the member's name over at once.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ResumeToken(String);

impl ResumeToken {
    /// `s` as a token, if it is exactly [`TOKEN_LEN`] characters `[0-9a-z]`.
    pub fn new(s: &str) -> Option<Self> {
        (s.len() == TOKEN_LEN && is_base36(s)).then(|| Self(s.to_owned()))
    }

    /// The token as written on the wire.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ResumeToken {
    // A token is a credential: keep it out of debug output (and so out of logs and panics).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ResumeToken(..)")
    }
}

impl fmt::Display for ResumeToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a resume cannot be filled (`GAP REASON EPOCH:LAST`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GapReason {
    /// The position names another epoch: the server restarted and the stream was lost.
    EpochChanged,
    /// Messages after the position are no longer kept (or the position is in the future).
    TooOld,
}

impl GapReason {
    /// The word on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EpochChanged => "epoch-changed",
            Self::TooOld => "too-old",
        }
    }

    /// Parses the word on the wire.
    pub fn parse(s: &str) -> Option<Self> {
        [Self::EpochChanged, Self::TooOld]
            .into_iter()
            .find(|r| r.as_str() == s)
    }
}

impl fmt::Display for GapReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A line from a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientMsg {
    /// `JOIN NAME`
    Join(String),
    /// `MSG TEXT`
    Msg(String),
    /// `PING TOKEN`: the client checks the server.
    Ping(String),
    /// `PONG TOKEN`: answer to a server heartbeat.
    Pong(String),
    /// `QUIT [REASON]`
    Quit(Option<String>),
    /// `WHO`: asks for the member list (answered `MEMBERS ...` in chat mode).
    Who,
    /// `JOIN NAME SINCE POS [TOKEN]` (chat): join, or resume, with positions on. `since` is
    /// `None` for `-` (nothing seen yet); `token` takes over a name still held.
    JoinSince {
        /// The name to take.
        name: String,
        /// The last position the client saw (`None`: `-`).
        since: Option<Pos>,
        /// The name's resume token, from an earlier `WELCOME`.
        token: Option<ResumeToken>,
    },
    /// `HISTORY N` (chat): the newest N kept room messages, N in 1..=[`MAX_HISTORY_REQUEST`].
    History(u32),
    /// `AUTH TOKEN` (CONTRACT section 9): the client's JWT, first thing on a server with
    /// `--auth-secret`. The token is a credential: never log the line.
    Auth(String),
}

/// Splits `VERB SP REST`; a line without a space is all verb.
fn split_verb(line: &str) -> (&str, Option<&str>) {
    match line.split_once(' ') {
        Some((verb, rest)) => (verb, Some(rest)),
        None => (line, None),
    }
}

/// Makes `bytes` safe to quote in an `ERR` detail or a log line: one line, bounded length.
pub fn printable(bytes: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(max)]);
    let mut s: String = text
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if bytes.len() > max {
        s.push_str("...");
    }
    s
}

impl ClientMsg {
    /// Parses one line (without its `\n`; a trailing `\r` is already dropped by the decoder).
    pub fn parse(line: &[u8]) -> Result<Self, BadLine> {
        let line = std::str::from_utf8(line).map_err(|e| BadLine {
            code: ErrCode::BadUtf8,
            detail: format!("invalid UTF-8 at byte {}", e.valid_up_to()),
        })?;
        let (verb, rest) = split_verb(line);
        let need = |rest: Option<&str>| match rest {
            Some(r) if !r.is_empty() => Ok(r.to_owned()),
            _ => Err(BadLine {
                code: ErrCode::MissingArgument,
                detail: format!("{verb} needs an argument"),
            }),
        };
        Ok(match verb {
            "JOIN" => {
                let rest = need(rest)?;
                match rest.split_once(' ') {
                    // Only a second word SINCE makes the new form, so every line a legacy
                    // client sends parses (and is refused) exactly as before.
                    Some((name, tail)) if tail.split(' ').next() == Some("SINCE") => {
                        Self::parse_join_since(name, tail)?
                    }
                    _ => Self::Join(rest),
                }
            }
            "HISTORY" => {
                let n = need(rest)?;
                match parse_u64(&n) {
                    Some(k @ 1..) if k <= u64::from(MAX_HISTORY_REQUEST) => Self::History(k as u32),
                    _ => {
                        return Err(BadLine {
                            code: ErrCode::BadArgument,
                            detail: format!(
                                "HISTORY needs a count from 1 to {MAX_HISTORY_REQUEST}, not '{}'",
                                printable(n.as_bytes(), 32)
                            ),
                        })
                    }
                }
            }
            "MSG" => Self::Msg(need(rest)?),
            "AUTH" => Self::Auth(need(rest)?),
            "PING" => Self::Ping(need(rest)?),
            "PONG" => Self::Pong(need(rest)?),
            "QUIT" => Self::Quit(rest.filter(|r| !r.is_empty()).map(str::to_owned)),
            // Extra words after WHO are ignored, like QUIT's reason.
            "WHO" => Self::Who,
            _ => {
                return Err(BadLine {
                    code: ErrCode::UnknownVerb,
                    detail: format!(
                        "'{}' (expected JOIN, MSG, PING, PONG, QUIT or WHO)",
                        printable(verb.as_bytes(), 32)
                    ),
                })
            }
        })
    }

    /// `NAME SINCE POS [TOKEN]` after `JOIN `: `tail` starts with `SINCE`.
    fn parse_join_since(name: &str, tail: &str) -> Result<Self, BadLine> {
        let bad = |code, what: &str| BadLine {
            code,
            detail: format!("JOIN NAME SINCE POS [TOKEN]: {what}"),
        };
        if name.is_empty() {
            return Err(bad(ErrCode::MissingArgument, "the name is empty"));
        }
        let mut words = tail.split(' ').skip(1);
        let since = match words.next() {
            None | Some("") => {
                return Err(bad(
                    ErrCode::MissingArgument,
                    "POS is EPOCH:OFFSET or - (nothing seen yet)",
                ))
            }
            Some("-") => None,
            Some(p) => Some(Pos::parse(p).ok_or_else(|| {
                bad(
                    ErrCode::BadArgument,
                    &format!(
                        "'{}' is not EPOCH:OFFSET (EPOCH 1 to {MAX_EPOCH} of [0-9a-z], OFFSET a number) or -",
                        printable(p.as_bytes(), 40)
                    ),
                )
            })?),
        };
        let token = match words.next() {
            None => None,
            Some(t) => Some(ResumeToken::new(t).ok_or_else(|| {
                bad(
                    ErrCode::BadArgument,
                    &format!("TOKEN is {TOKEN_LEN} of [0-9a-z], from WELCOME"),
                )
            })?),
        };
        if words.next().is_some() {
            return Err(bad(ErrCode::BadArgument, "nothing may follow TOKEN"));
        }
        Ok(Self::JoinSince {
            name: name.to_owned(),
            since,
            token,
        })
    }

    /// The line on the wire, `\n` included.
    pub fn encode(&self) -> String {
        match self {
            Self::Join(n) => format!("JOIN {n}\n"),
            Self::JoinSince { name, since, token } => {
                let since = since.as_ref().map_or("-".to_owned(), Pos::to_string);
                match token {
                    Some(t) => format!("JOIN {name} SINCE {since} {t}\n"),
                    None => format!("JOIN {name} SINCE {since}\n"),
                }
            }
            Self::History(n) => format!("HISTORY {n}\n"),
            Self::Msg(t) => format!("MSG {t}\n"),
            Self::Auth(t) => format!("AUTH {t}\n"),
            Self::Ping(t) => format!("PING {t}\n"),
            Self::Pong(t) => format!("PONG {t}\n"),
            Self::Quit(Some(r)) => format!("QUIT {r}\n"),
            Self::Quit(None) => "QUIT\n".to_owned(),
            Self::Who => "WHO\n".to_owned(),
        }
    }
}

/// A line from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerMsg {
    /// `HELLO hb/1 idle=MS interval=MS count=N mode=echo|chat`: the first line on every
    /// connection.
    Hello {
        /// Silence before a heartbeat round starts.
        idle: Duration,
        /// Time between heartbeats.
        interval: Duration,
        /// Unanswered heartbeats before the server closes.
        count: u32,
        /// What the server does with `MSG` (`None`: the server did not say).
        mode: Option<Mode>,
    },
    /// `ECHO TEXT`
    Echo(String),
    /// `MSG FROM TEXT` (chat)
    Msg {
        /// Sender's name.
        from: String,
        /// The text.
        text: String,
    },
    /// `JOINED NAME` (chat)
    Joined(String),
    /// `MEMBERS NAME ...` (chat): who is in the room, in name order; the answer to `WHO`.
    Members(Vec<String>),
    /// `LEFT NAME REASON` (chat)
    Left {
        /// Who left.
        name: String,
        /// Why.
        reason: EndReason,
    },
    /// `PING TOKEN`: a heartbeat.
    Ping(String),
    /// `PONG TOKEN`: answer to the client's `PING`.
    Pong(String),
    /// `ERR CODE DETAIL`
    Err(BadLine),
    /// `END REASON`: the server closes after this line.
    End(EndReason),
    /// `PUB EPOCH:OFFSET FROM TEXT` (chat): a room message with its position, to members
    /// that joined with `SINCE` (instead of `MSG`), and in replays.
    Pub {
        /// The message's position in the room's stream.
        pos: Pos,
        /// Sender's name.
        from: String,
        /// The text.
        text: String,
    },
    /// `WELCOME NAME EPOCH:LAST TOKEN` (chat): the answer to `JOIN NAME SINCE ...`, before
    /// any replay or live line.
    Welcome {
        /// The name taken.
        name: String,
        /// Where the stream stands: the newest room message (offset 0 if none).
        last: Pos,
        /// The name's resume token.
        token: ResumeToken,
    },
    /// `SYNCED EPOCH:LAST N` (chat): a replay is complete; `count` lines were replayed.
    Synced {
        /// Where the stream stood when the replay was made.
        last: Pos,
        /// How many `PUB` lines the replay had.
        count: u64,
    },
    /// `GAP REASON EPOCH:LAST` (chat): the messages after the position asked for cannot be
    /// replayed; live lines follow.
    Gap {
        /// Why.
        reason: GapReason,
        /// Where the stream stands.
        last: Pos,
    },
}

/// A server line the client could not understand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadServerLine(pub String);

impl fmt::Display for BadServerLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unexpected line from server: {}", self.0)
    }
}

impl std::error::Error for BadServerLine {}

impl ServerMsg {
    /// The line on the wire, `\n` included.
    pub fn encode(&self) -> String {
        match self {
            Self::Hello {
                idle,
                interval,
                count,
                mode,
            } => {
                let mode = match mode {
                    Some(Mode::Echo) => " mode=echo",
                    Some(Mode::Chat) => " mode=chat",
                    None => "",
                };
                format!(
                    "HELLO hb/1 idle={} interval={} count={count}{mode}\n",
                    idle.as_millis(),
                    interval.as_millis()
                )
            }
            Self::Echo(t) => format!("ECHO {t}\n"),
            Self::Msg { from, text } => format!("MSG {from} {text}\n"),
            Self::Joined(n) => format!("JOINED {n}\n"),
            Self::Members(names) if names.is_empty() => "MEMBERS\n".to_owned(),
            Self::Members(names) => format!("MEMBERS {}\n", names.join(" ")),
            Self::Left { name, reason } => format!("LEFT {name} {reason}\n"),
            Self::Ping(t) => format!("PING {t}\n"),
            Self::Pong(t) => format!("PONG {t}\n"),
            Self::Err(b) => format!("ERR {} {}\n", b.code, b.detail),
            Self::End(r) => format!("END {r}\n"),
            Self::Pub { pos, from, text } => format!("PUB {pos} {from} {text}\n"),
            Self::Welcome { name, last, token } => format!("WELCOME {name} {last} {token}\n"),
            Self::Synced { last, count } => format!("SYNCED {last} {count}\n"),
            Self::Gap { reason, last } => format!("GAP {reason} {last}\n"),
        }
    }

    /// Parses one line from the server (without its `\n`).
    pub fn parse(line: &[u8]) -> Result<Self, BadServerLine> {
        let bad = || BadServerLine(printable(line, 200));
        let line = std::str::from_utf8(line).map_err(|_| bad())?;
        let (verb, rest) = split_verb(line);
        let rest_s = rest.unwrap_or("");
        Ok(match verb {
            "HELLO" => {
                let mut idle = None;
                let mut interval = None;
                let mut count = None;
                let mut mode = None;
                let mut words = rest_s.split(' ');
                if words.next() != Some("hb/1") {
                    return Err(bad());
                }
                for w in words {
                    match w.split_once('=') {
                        Some(("idle", v)) => idle = v.parse().ok().map(Duration::from_millis),
                        Some(("interval", v)) => {
                            interval = v.parse().ok().map(Duration::from_millis)
                        }
                        Some(("count", v)) => count = v.parse().ok(),
                        // An unknown mode is a later version's: treat it as unsaid.
                        Some(("mode", v)) => mode = Mode::parse(v).ok(),
                        // Unknown settings are for later versions: ignore them.
                        _ => {}
                    }
                }
                match (idle, interval, count) {
                    (Some(idle), Some(interval), Some(count)) => Self::Hello {
                        idle,
                        interval,
                        count,
                        mode,
                    },
                    _ => return Err(bad()),
                }
            }
            "ECHO" => Self::Echo(rest_s.to_owned()),
            "MSG" => {
                let (from, text) = rest_s.split_once(' ').ok_or_else(bad)?;
                Self::Msg {
                    from: from.to_owned(),
                    text: text.to_owned(),
                }
            }
            "JOINED" => Self::Joined(rest.ok_or_else(bad)?.to_owned()),
            "MEMBERS" => Self::Members(
                rest_s
                    .split(' ')
                    .filter(|n| !n.is_empty())
                    .map(str::to_owned)
                    .collect(),
            ),
            "LEFT" => {
                let (name, reason) = rest_s.split_once(' ').ok_or_else(bad)?;
                Self::Left {
                    name: name.to_owned(),
                    reason: EndReason::parse(reason).ok_or_else(bad)?,
                }
            }
            "PING" => Self::Ping(rest.ok_or_else(bad)?.to_owned()),
            "PONG" => Self::Pong(rest.ok_or_else(bad)?.to_owned()),
            "ERR" => {
                let (code, detail) = rest_s.split_once(' ').unwrap_or((rest_s, ""));
                Self::Err(BadLine {
                    code: ErrCode::parse(code).ok_or_else(bad)?,
                    detail: detail.to_owned(),
                })
            }
            "END" => Self::End(EndReason::parse(rest_s).ok_or_else(bad)?),
            "PUB" => {
                let (pos, msg) = rest_s.split_once(' ').ok_or_else(bad)?;
                let (from, text) = msg.split_once(' ').ok_or_else(bad)?;
                Self::Pub {
                    pos: Pos::parse(pos).ok_or_else(bad)?,
                    from: from.to_owned(),
                    text: text.to_owned(),
                }
            }
            "WELCOME" => match rest_s.split(' ').collect::<Vec<_>>()[..] {
                [name, last, token] if !name.is_empty() => Self::Welcome {
                    name: name.to_owned(),
                    last: Pos::parse(last).ok_or_else(bad)?,
                    token: ResumeToken::new(token).ok_or_else(bad)?,
                },
                _ => return Err(bad()),
            },
            "SYNCED" => {
                let (last, count) = rest_s.split_once(' ').ok_or_else(bad)?;
                Self::Synced {
                    last: Pos::parse(last).ok_or_else(bad)?,
                    count: parse_u64(count).ok_or_else(bad)?,
                }
            }
            "GAP" => {
                let (reason, last) = rest_s.split_once(' ').ok_or_else(bad)?;
                Self::Gap {
                    reason: GapReason::parse(reason).ok_or_else(bad)?,
                    last: Pos::parse(last).ok_or_else(bad)?,
                }
            }
            _ => return Err(bad()),
        })
    }
}

/// A line longer than the decoder's limit arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineTooLong {
    /// The limit in bytes.
    pub max: usize,
}

impl fmt::Display for LineTooLong {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line longer than {} bytes", self.max)
    }
}

impl std::error::Error for LineTooLong {}

/// Capacity a decoder may keep between reads without giving it back.
const MIN_CAPACITY: usize = 8 * 1024;

/// Splits a byte stream into `\n`-terminated lines of at most `max_line` bytes (not counting
/// the `\n`; a `\r` before it is dropped). Feed bytes as they arrive, then take lines out.
#[derive(Debug, Clone)]
pub struct LineDecoder {
    buf: Vec<u8>,
    /// Bytes of `buf` already scanned for `\n`, so a slow trickle is not rescanned.
    scanned: usize,
    /// Start of the first line not yet returned.
    start: usize,
    max_line: usize,
}

impl LineDecoder {
    /// A decoder that refuses lines longer than `max_line` bytes.
    pub fn new(max_line: usize) -> Self {
        Self {
            buf: Vec::new(),
            scanned: 0,
            start: 0,
            max_line,
        }
    }

    /// Appends received bytes.
    ///
    /// Lines already returned are dropped first, so the buffer holds only the unfinished line
    /// (at most `max_line + 1` bytes) plus `bytes`; memory a burst needed is given back. The
    /// buffer's size therefore stays about `max_line` plus the caller's read size, whatever the
    /// write pattern of the peer.
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.start > 0 {
            // Moves at most one unfinished line (<= max_line + 1 bytes) to the front.
            self.buf.drain(..self.start);
            self.scanned -= self.start;
            self.start = 0;
        }
        let need = self.buf.len() + bytes.len();
        let keep = need.max(MIN_CAPACITY);
        if self.buf.capacity() > keep.saturating_mul(2) {
            self.buf.shrink_to(keep);
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes of memory the decoder holds now (its buffer's capacity, not just the bytes in it).
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// The next complete line, `Ok(None)` if none is complete yet, or an error once the
    /// unfinished line exceeds the limit (the stream cannot be resynchronised after that).
    pub fn next_line(&mut self) -> Result<Option<&[u8]>, LineTooLong> {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.scanned = 0;
            self.start = 0;
        }
        let from = self.scanned.max(self.start);
        match memchr::memchr(b'\n', &self.buf[from..]) {
            Some(i) => {
                let end = from + i;
                let begin = self.start;
                self.start = end + 1;
                self.scanned = self.start;
                let mut line = &self.buf[begin..end];
                if let Some(stripped) = line.strip_suffix(b"\r") {
                    line = stripped;
                }
                if line.len() > self.max_line {
                    return Err(LineTooLong { max: self.max_line });
                }
                Ok(Some(line))
            }
            None => {
                self.scanned = self.buf.len();
                // A trailing `\r` may still be dropped, so allow one byte of slack for it.
                if self.buf.len() - self.start > self.max_line.saturating_add(1) {
                    return Err(LineTooLong { max: self.max_line });
                }
                Ok(None)
            }
        }
    }

    /// Bytes of an unfinished line held back (useful to report a truncated last line).
    pub fn pending(&self) -> usize {
        self.buf.len() - self.start
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(dec: &mut LineDecoder) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(l) = dec.next_line().unwrap() {
            out.push(String::from_utf8(l.to_vec()).unwrap());
        }
        out
    }

    #[test]
    fn decoder_splits_joins_and_strips_cr() {
        let mut d = LineDecoder::new(100);
        d.feed(b"MSG a\r\nMS");
        assert_eq!(lines(&mut d), vec!["MSG a"]);
        d.feed(b"G b\n\nQUIT\n");
        assert_eq!(lines(&mut d), vec!["MSG b", "", "QUIT"]);
        assert_eq!(d.pending(), 0);
    }

    #[test]
    fn decoder_byte_by_byte() {
        let mut d = LineDecoder::new(10);
        let mut got = Vec::new();
        for &b in b"PING 1\nPONG 22\n" {
            d.feed(&[b]);
            got.extend(lines(&mut d));
        }
        assert_eq!(got, vec!["PING 1", "PONG 22"]);
    }

    #[test]
    fn decoder_limit_is_exact() {
        let mut d = LineDecoder::new(5);
        d.feed(b"12345\n12345\r\n");
        assert_eq!(lines(&mut d), vec!["12345", "12345"]);
        d.feed(b"123456\n");
        assert_eq!(d.next_line(), Err(LineTooLong { max: 5 }));
        // Without a newline the error comes as soon as the limit is passed, holding no more.
        let mut d = LineDecoder::new(5);
        d.feed(b"123456");
        assert_eq!(
            d.next_line(),
            Ok(None),
            "a trailing \\r could still shorten it"
        );
        d.feed(b"7");
        assert_eq!(d.next_line(), Err(LineTooLong { max: 5 }));
    }

    #[test]
    fn decoder_does_not_grow_under_a_steady_stream() {
        let mut d = LineDecoder::new(64);
        for i in 0..10_000 {
            d.feed(format!("MSG {i}\nMSG").as_bytes());
            let _ = lines(&mut d);
            d.feed(b" x\n");
            assert_eq!(lines(&mut d), vec!["MSG x"]);
        }
        assert!(d.buf.capacity() < 1024, "capacity {}", d.buf.capacity());
    }

    /// Hostile-input regression: lines well under the limit, written so that reads end
    /// mid-line, used to grow the buffer without bound (4 clients, 394 MiB in 4 s).
    #[test]
    fn decoder_memory_stays_near_max_line_whatever_the_write_pattern() {
        let max_line = 8192;
        let read = 4096;
        let line = {
            let mut l = vec![b'x'; 4000];
            l.push(b'\n');
            l
        };
        let stream: Vec<u8> = line.iter().copied().cycle().take(4 << 20).collect();
        for chunk in [read, 1000, 4097, 777] {
            let mut d = LineDecoder::new(max_line);
            let mut peak = 0;
            let mut got = 0;
            for piece in stream.chunks(chunk) {
                d.feed(piece);
                while let Some(l) = d.next_line().unwrap() {
                    assert_eq!(l.len(), 4000);
                    got += 1;
                }
                peak = peak.max(d.capacity());
            }
            assert_eq!(got, (4 << 20) / 4001, "chunk {chunk}");
            assert!(
                peak <= 2 * (max_line + 2 + chunk).max(MIN_CAPACITY),
                "chunk {chunk}: peak capacity {peak}"
            );
        }
    }

    /// A burst of big reads must not leave an idle connection holding the peak.
    #[test]
    fn decoder_gives_memory_back_after_a_burst() {
        let mut d = LineDecoder::new(65536);
        let burst: Vec<u8> = b"MSG 0123456789\n".repeat(20_000);
        d.feed(&burst);
        while d.next_line().unwrap().is_some() {}
        assert!(d.capacity() >= burst.len());
        d.feed(b"MSG x");
        assert!(
            d.capacity() <= 2 * MIN_CAPACITY,
            "capacity {}",
            d.capacity()
        );
        d.feed(b"\n");
        assert_eq!(d.next_line().unwrap(), Some(&b"MSG x"[..]));
    }

    #[test]
    fn who_members_already_joined_and_hello_mode() {
        assert_eq!(ClientMsg::parse(b"WHO"), Ok(ClientMsg::Who));
        assert_eq!(ClientMsg::Who.encode(), "WHO\n");
        assert_eq!(
            ServerMsg::parse(b"MEMBERS ann bob"),
            Ok(ServerMsg::Members(vec!["ann".into(), "bob".into()]))
        );
        assert_eq!(ServerMsg::parse(b"MEMBERS"), Ok(ServerMsg::Members(vec![])));
        assert_eq!(ServerMsg::Members(vec![]).encode(), "MEMBERS\n");
        assert_eq!(
            ServerMsg::parse(b"ERR already-joined already joined as ann"),
            Ok(ServerMsg::Err(BadLine {
                code: ErrCode::AlreadyJoined,
                detail: "already joined as ann".into()
            }))
        );
        let ms = Duration::from_millis;
        for (line, mode) in [
            (
                &b"HELLO hb/1 idle=1 interval=2 count=3 mode=chat"[..],
                Some(Mode::Chat),
            ),
            (
                b"HELLO hb/1 idle=1 interval=2 count=3 mode=echo",
                Some(Mode::Echo),
            ),
            (b"HELLO hb/1 idle=1 interval=2 count=3", None),
            (b"HELLO hb/1 idle=1 interval=2 count=3 mode=future", None),
        ] {
            assert_eq!(
                ServerMsg::parse(line),
                Ok(ServerMsg::Hello {
                    idle: ms(1),
                    interval: ms(2),
                    count: 3,
                    mode
                })
            );
        }
    }

    #[test]
    fn client_lines_parse() {
        assert_eq!(
            ClientMsg::parse(b"MSG hello world"),
            Ok(ClientMsg::Msg("hello world".into()))
        );
        assert_eq!(
            ClientMsg::parse(b"JOIN bob"),
            Ok(ClientMsg::Join("bob".into()))
        );
        assert_eq!(ClientMsg::parse(b"PONG 3"), Ok(ClientMsg::Pong("3".into())));
        assert_eq!(ClientMsg::parse(b"PING x"), Ok(ClientMsg::Ping("x".into())));
        assert_eq!(ClientMsg::parse(b"QUIT"), Ok(ClientMsg::Quit(None)));
        assert_eq!(
            ClientMsg::parse(b"QUIT bye now"),
            Ok(ClientMsg::Quit(Some("bye now".into())))
        );
        assert_eq!(
            ClientMsg::parse(b"AUTH eyJ.x.y"),
            Ok(ClientMsg::Auth("eyJ.x.y".into()))
        );
        for bad in [
            &b"MSG"[..],
            b"MSG ",
            b"JOIN",
            b"PING",
            b"PONG ",
            b"AUTH",
            b"AUTH ",
        ] {
            assert_eq!(
                ClientMsg::parse(bad).unwrap_err().code,
                ErrCode::MissingArgument,
                "{bad:?}"
            );
        }
        for bad in [&b"msg hi"[..], b"HELLO", b"", b" MSG x", b"\x00\x01"] {
            assert_eq!(
                ClientMsg::parse(bad).unwrap_err().code,
                ErrCode::UnknownVerb,
                "{bad:?}"
            );
        }
        let e = ClientMsg::parse(b"MSG \xff\xfe").unwrap_err();
        assert_eq!(e.code, ErrCode::BadUtf8);
        assert_eq!(e.detail, "invalid UTF-8 at byte 4");
        for m in [
            ClientMsg::Msg("a b".into()),
            ClientMsg::Quit(None),
            ClientMsg::Pong("9".into()),
            ClientMsg::Auth("a.b.c".into()),
        ] {
            let wire = m.encode();
            assert_eq!(
                ClientMsg::parse(wire.trim_end_matches('\n').as_bytes()),
                Ok(m)
            );
        }
    }

    #[test]
    fn server_lines_round_trip() {
        let ms = Duration::from_millis;
        let all = vec![
            ServerMsg::Hello {
                idle: ms(2000),
                interval: ms(500),
                count: 3,
                mode: Some(Mode::Chat),
            },
            ServerMsg::Members(vec!["ann".into(), "bob".into()]),
            ServerMsg::Echo("hi there".into()),
            ServerMsg::Echo(String::new()),
            ServerMsg::Msg {
                from: "bob".into(),
                text: "hi all".into(),
            },
            ServerMsg::Joined("ann".into()),
            ServerMsg::Left {
                name: "ann".into(),
                reason: EndReason::Closed,
            },
            ServerMsg::Ping("1".into()),
            ServerMsg::Pong("x".into()),
            ServerMsg::Err(BadLine {
                code: ErrCode::UnknownVerb,
                detail: "'FOO'".into(),
            }),
            ServerMsg::End(EndReason::HeartbeatTimeout),
        ];
        for m in all {
            let wire = m.encode();
            assert!(wire.ends_with('\n') && wire.matches('\n').count() == 1);
            assert_eq!(
                ServerMsg::parse(wire.trim_end_matches('\n').as_bytes()),
                Ok(m)
            );
        }
        assert_eq!(
            ServerMsg::Hello {
                idle: ms(2000),
                interval: ms(500),
                count: 3,
                mode: Some(Mode::Echo),
            }
            .encode(),
            "HELLO hb/1 idle=2000 interval=500 count=3 mode=echo\n"
        );
        assert!(ServerMsg::parse(b"END nope").is_err());
        assert!(ServerMsg::parse(b"HELLO hb/2 idle=1").is_err());
        for r in EndReason::ALL {
            assert_eq!(EndReason::parse(r.as_str()), Some(r));
        }
    }

    /// `EndReason::ALL` cannot silently miss a variant. The match below has no `_` arm, so a
    /// new variant does not compile until it is given its place in ALL here; `at::<K>()` does
    /// not compile while ALL has no index K (the next free number is the natural choice), and
    /// the loop checks that every place given here is where ALL holds that variant.
    #[test]
    fn end_reason_all_lists_every_variant_in_order() {
        fn at<const K: usize>() -> usize {
            const {
                assert!(
                    K < EndReason::ALL.len(),
                    "add the new variant to EndReason::ALL"
                )
            };
            K
        }
        fn place(r: EndReason) -> usize {
            match r {
                EndReason::HeartbeatTimeout => at::<0>(),
                EndReason::Quit => at::<1>(),
                EndReason::ServerShutdown => at::<2>(),
                EndReason::ServerFull => at::<3>(),
                EndReason::LineTooLong => at::<4>(),
                EndReason::SlowConsumer => at::<5>(),
                EndReason::Closed => at::<6>(),
                EndReason::Replaced => at::<7>(),
                EndReason::NodeLost => at::<8>(),
                EndReason::NameTaken => at::<9>(),
                EndReason::Flood => at::<10>(),
                EndReason::AuthFailed => at::<11>(),
            }
        }
        for (i, r) in EndReason::ALL.into_iter().enumerate() {
            assert_eq!(place(r), i, "{r:?} is at {i} in EndReason::ALL");
        }
        let words: std::collections::HashSet<_> =
            EndReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(words.len(), EndReason::ALL.len(), "one word per reason");
    }

    fn pos(e: &str, o: u64) -> Pos {
        Pos {
            epoch: Epoch::new(e).unwrap(),
            offset: o,
        }
    }

    fn tok() -> ResumeToken {
        ResumeToken::new("0123456789abcdef").unwrap()
    }

    #[test]
    fn positions_tokens_and_epochs() {
        assert_eq!(Pos::parse("k3x:42"), Some(pos("k3x", 42)));
        assert_eq!(Pos::parse("0:0"), Some(pos("0", 0)));
        let max = format!("{}:{}", "z".repeat(16), u64::MAX);
        assert_eq!(Pos::parse(&max).unwrap().to_string(), max);
        for bad in [
            "",
            ":",
            "0:",
            ":1",
            "0:-1",
            "0:+1",
            "0: 1",
            "0:1 ",
            "A:1",
            "a-b:1",
            "a:b:1",
            "é:1",
            "0:1x",
            "0:18446744073709551616",
            "0:0x10",
            "-",
        ] {
            assert_eq!(Pos::parse(bad), None, "{bad:?}");
        }
        assert_eq!(
            Pos::parse(&format!("{}:1", "a".repeat(17))),
            None,
            "epoch too long"
        );
        assert_eq!(Epoch::default().as_str(), "0");
        assert!(Epoch::new("").is_none() && Epoch::new("\u{0663}").is_none());
        assert!(ResumeToken::new("0123456789abcde").is_none(), "15 chars");
        assert!(ResumeToken::new("0123456789abcdef0").is_none(), "17 chars");
        assert!(ResumeToken::new("0123456789ABCDEF").is_none(), "upper case");
        assert_eq!(
            format!("{:?}", tok()),
            "ResumeToken(..)",
            "kept out of logs"
        );
        for r in [GapReason::EpochChanged, GapReason::TooOld] {
            assert_eq!(GapReason::parse(r.as_str()), Some(r));
        }
    }

    #[test]
    fn join_since_and_history_parse_and_round_trip() {
        let all = [
            ClientMsg::JoinSince {
                name: "ann".into(),
                since: None,
                token: None,
            },
            ClientMsg::JoinSince {
                name: "ann".into(),
                since: Some(pos("k3", 17)),
                token: None,
            },
            ClientMsg::JoinSince {
                name: "ann".into(),
                since: Some(pos("k3", 0)),
                token: Some(tok()),
            },
            ClientMsg::History(1),
            ClientMsg::History(10_000),
        ];
        for m in all {
            let wire = m.encode();
            assert_eq!(
                ClientMsg::parse(wire.trim_end_matches('\n').as_bytes()),
                Ok(m),
                "{wire}"
            );
        }
        assert_eq!(
            ClientMsg::parse(b"JOIN bob SINCE - 0123456789abcdef"),
            Ok(ClientMsg::JoinSince {
                name: "bob".into(),
                since: None,
                token: Some(tok())
            })
        );
        // Legacy lines parse as they always did (a second word other than SINCE is part of
        // the name, which the room refuses).
        assert_eq!(
            ClientMsg::parse(b"JOIN a b"),
            Ok(ClientMsg::Join("a b".into()))
        );
        assert_eq!(
            ClientMsg::parse(b"JOIN a since -"),
            Ok(ClientMsg::Join("a since -".into()))
        );
    }

    #[test]
    fn hostile_join_since_and_history_lines_are_refused() {
        for (line, code) in [
            (&b"JOIN ann SINCE"[..], ErrCode::MissingArgument),
            (b"JOIN ann SINCE ", ErrCode::MissingArgument),
            (b"JOIN  SINCE -", ErrCode::MissingArgument),
            (b"JOIN ann SINCE 0", ErrCode::BadArgument),
            (b"JOIN ann SINCE 0:", ErrCode::BadArgument),
            (b"JOIN ann SINCE :5", ErrCode::BadArgument),
            (b"JOIN ann SINCE 0:-5", ErrCode::BadArgument),
            (
                b"JOIN ann SINCE 0:99999999999999999999",
                ErrCode::BadArgument,
            ),
            (b"JOIN ann SINCE ABC:1", ErrCode::BadArgument),
            (b"JOIN ann SINCE aaaaaaaaaaaaaaaaa:1", ErrCode::BadArgument),
            (
                "JOIN ann SINCE \u{e9}t\u{e9}:1".as_bytes(),
                ErrCode::BadArgument,
            ),
            (b"JOIN ann SINCE \x7f:1", ErrCode::BadArgument),
            (b"JOIN ann SINCE 0:1 short", ErrCode::BadArgument),
            (
                b"JOIN ann SINCE 0:1 0123456789abcdef0",
                ErrCode::BadArgument,
            ),
            (b"JOIN ann SINCE 0:1 0123456789ABCDEF", ErrCode::BadArgument),
            (
                b"JOIN ann SINCE 0:1 0123456789abcdef extra",
                ErrCode::BadArgument,
            ),
            (b"JOIN ann SINCE 0:1 ", ErrCode::BadArgument),
            (b"JOIN ann SINCE  0:1", ErrCode::MissingArgument),
            (b"HISTORY", ErrCode::MissingArgument),
            (b"HISTORY ", ErrCode::MissingArgument),
            (b"HISTORY 0", ErrCode::BadArgument),
            (b"HISTORY 10001", ErrCode::BadArgument),
            (b"HISTORY 18446744073709551616", ErrCode::BadArgument),
            (
                b"HISTORY 99999999999999999999999999999",
                ErrCode::BadArgument,
            ),
            (b"HISTORY -1", ErrCode::BadArgument),
            (b"HISTORY +5", ErrCode::BadArgument),
            (b"HISTORY 5 6", ErrCode::BadArgument),
            (b"HISTORY five", ErrCode::BadArgument),
        ] {
            let e = ClientMsg::parse(line).unwrap_err();
            assert_eq!(e.code, code, "{:?}", String::from_utf8_lossy(line));
            assert!(!e.detail.contains('\n'));
        }
        let long = format!("JOIN ann SINCE {}:1", "x".repeat(100_000));
        let e = ClientMsg::parse(long.as_bytes()).unwrap_err();
        assert!(e.detail.len() < 200, "the detail quotes a bounded part");
    }

    #[test]
    fn new_server_lines_round_trip_and_hostile_ones_are_refused() {
        let all = [
            ServerMsg::Pub {
                pos: pos("k3", 7),
                from: "bob".into(),
                text: "hi  all ".into(),
            },
            ServerMsg::Pub {
                pos: pos("0", 1),
                from: "bob".into(),
                text: String::new(),
            },
            ServerMsg::Welcome {
                name: "ann".into(),
                last: pos("k3", 0),
                token: tok(),
            },
            ServerMsg::Synced {
                last: pos("k3", 12),
                count: 5,
            },
            ServerMsg::Gap {
                reason: GapReason::TooOld,
                last: pos("k3", 12),
            },
            ServerMsg::Gap {
                reason: GapReason::EpochChanged,
                last: pos("z", 0),
            },
            ServerMsg::End(EndReason::Replaced),
        ];
        for m in all {
            let wire = m.encode();
            assert!(wire.ends_with('\n') && wire.matches('\n').count() == 1);
            assert_eq!(
                ServerMsg::parse(wire.trim_end_matches('\n').as_bytes()),
                Ok(m)
            );
        }
        assert_eq!(
            ServerMsg::parse(b"PUB k3:7 bob hi"),
            Ok(ServerMsg::Pub {
                pos: pos("k3", 7),
                from: "bob".into(),
                text: "hi".into()
            })
        );
        for bad in [
            &b"PUB"[..],
            b"PUB k3:7",
            b"PUB k3:7 bob",
            b"PUB K3:7 bob hi",
            b"PUB k3 bob hi",
            b"WELCOME ann k3:0",
            b"WELCOME ann k3:0 short",
            b"WELCOME  k3:0 0123456789abcdef",
            b"WELCOME ann k3:0 0123456789abcdef x",
            b"SYNCED k3:1",
            b"SYNCED k3:1 -1",
            b"SYNCED k3:1 1 2",
            b"GAP too-old",
            b"GAP lost k3:1",
            b"GAP too-old k3",
            b"END nope",
        ] {
            assert!(ServerMsg::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn printable_is_one_bounded_line() {
        assert_eq!(printable(b"a\nb\x00", 10), "a?b?");
        assert_eq!(printable(b"abcdef", 3), "abc...");
    }
}
