//! `hb-client --probe`, the health check (CONTRACT section 10), as a pure state machine.
//!
//! The probe connects, reads the first line, which must be `HELLO hb/1 ...`, sends `PING
//! probe-XXXX`, waits for the `PONG` with the same token (answering a server heartbeat
//! meanwhile and skipping any other line), sends `QUIT` and reports one [`Verdict`]: healthy
//! with the round trip, or unhealthy with the reason. Everything, from the TCP connect to the
//! `PONG`, has one deadline (`--timeout`, 2 s by default).
//!
//! The driver (`net::probe`) only moves bytes: it tells the probe when the connection is up
//! ([`Probe::connected`]) or why it is not ([`Probe::connect_failed`]), feeds what arrives
//! ([`Probe::handle_bytes`], then each line to [`Probe::handle_line`], or
//! [`Probe::handle_closed`]) and does what [`Probe::poll`] says until it says
//! [`ProbeAction::Finish`]. Time is an argument: the tests below move it freely.
//!
//! A server in either mode answers: a `PING` needs no `JOIN`. A classic-wire server sends
//! nothing first; like the line client, the probe sends an early `PING hello?` when `HELLO` is
//! late (after 1 s, or half the timeout if that is shorter), and the classic server's
//! `Echoing...` gives it away before the deadline.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use crate::core::client::{sniff, CloseKind, Sample, Sniff, HELLO_PROBE_AFTER, PROBE_TOKEN};
use crate::core::display::safe_bytes;
use crate::core::mode::Mode;
use crate::core::wire::{ClientMsg, EndReason, ServerMsg};

/// How much of a line the server should not have sent is quoted in the verdict.
const SHOWN: usize = 60;

/// What the probe checks, and against whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeConfig {
    /// `host:port` as the user gave it: every verdict line names it.
    pub addr: String,
    /// The whole probe's deadline, from its start: connect, TLS, `HELLO`, round trip.
    pub timeout: Duration,
    /// `--token`: sent as `AUTH TOKEN` first, as soon as the connection is up.
    pub token: Option<String>,
    /// The token of the probe's `PING` (`probe-` and something random or the pid), so its
    /// `PONG` cannot be mistaken for another's.
    pub ping: String,
}

/// What the probe was waiting for when it failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// The TCP connection.
    Connect,
    /// The TLS handshake (`--tls`, `--ca`).
    Tls,
    /// The server's first line, `HELLO hb/1 ...`.
    Hello,
    /// The `PONG` answering the probe's `PING`.
    Pong,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Connect => "connection",
            Self::Tls => "TLS handshake",
            Self::Hello => "HELLO",
            Self::Pong => "PONG",
        })
    }
}

/// Why the driver could not get a connection up, in its words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectFailure {
    /// Nobody listens on the port (`ECONNREFUSED`).
    Refused,
    /// The connect did not finish in the time it was given.
    TimedOut,
    /// Another OS error (no route to host, a name that does not resolve, ...).
    Io(String),
    /// The TCP connection was up, the TLS handshake failed (rustls' words, with a hint).
    Tls(String),
}

/// Why a server is unhealthy: the second half of the `unhealthy: ADDR: ...` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Nobody listens on the port.
    Refused,
    /// The connection could not be made for another reason.
    Connect(String),
    /// The TLS handshake failed.
    Tls(String),
    /// The deadline passed while waiting for this stage.
    Timeout {
        /// What did not come.
        waiting_for: Stage,
        /// The probe's timeout.
        after: Duration,
    },
    /// The first bytes or the first line are not `HELLO hb/1 ...`.
    NotHello {
        /// What it sent instead, made safe to print.
        sent: String,
        /// What it looks like, when that is recognisable.
        looks_like: Option<Speaks>,
    },
    /// The first line is a `HELLO` the probe cannot read (another version, missing settings).
    BadHello(String),
    /// The server sent `END REASON` before answering (`server-full`, `auth-failed`, ...).
    Ended(EndReason),
    /// The server closed or reset the connection before answering.
    Closed {
        /// Closed or reset.
        kind: CloseKind,
        /// What the probe was waiting for.
        waiting_for: Stage,
    },
    /// The server sent a line longer than the probe reads.
    LineTooLong(usize),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Refused => f.write_str("connection refused"),
            Self::Connect(why) => f.write_str(why),
            Self::Tls(why) => write!(f, "TLS failed: {why}"),
            Self::Timeout { waiting_for, after } => write!(
                f,
                "no {waiting_for} within {}",
                crate::config::fmt_duration(*after)
            ),
            Self::NotHello { sent, looks_like } => {
                write!(f, "sent '{sent}', not HELLO")?;
                match looks_like {
                    Some(Speaks::Classic) => f.write_str(" (classic wire?)"),
                    Some(Speaks::Tls) => f.write_str(" (a TLS port? add --tls or --ca)"),
                    None => Ok(()),
                }
            }
            Self::BadHello(line) => write!(f, "sent a HELLO this probe cannot read: '{line}'"),
            Self::Ended(reason) => write!(f, "END {reason}"),
            Self::Closed { kind, waiting_for } => {
                let how = match kind {
                    CloseKind::Closed => "closed",
                    CloseKind::Reset => "reset",
                };
                write!(f, "{how} the connection before {waiting_for}")
            }
            Self::LineTooLong(max) => write!(f, "sent a line longer than {max} bytes"),
        }
    }
}

/// What a server that does not send `HELLO` first seems to speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Speaks {
    /// The classic wire: it echoed the early `PING` as `Echoing...`.
    Classic,
    /// TLS: a TLS record (an alert to the plaintext `PING`) came first.
    Tls,
}

/// A healthy server's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Healthy {
    /// From writing the `PING` to reading its `PONG`.
    pub rtt: Duration,
    /// The mode its `HELLO` named (`None`: it did not say).
    pub mode: Option<Mode>,
}

/// The probe's result: the one line it prints, and its exit status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// `host:port` as given.
    pub addr: String,
    /// Healthy, or why not.
    pub result: Result<Healthy, Failure>,
}

impl Verdict {
    /// True when the server answered in time.
    pub fn is_healthy(&self) -> bool {
        self.result.is_ok()
    }

    /// 0 healthy, 1 not (CONTRACT section 10).
    pub fn exit_code(&self) -> u8 {
        if self.is_healthy() {
            0
        } else {
            1
        }
    }
}

impl fmt::Display for Verdict {
    /// `healthy: 127.0.0.1:8000 answered PING in 0.4 ms (HELLO hb/1, mode=chat)` or
    /// `unhealthy: 127.0.0.1:8000: connection refused`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.result {
            Ok(h) => {
                let mode = match h.mode {
                    Some(m) => format!(", mode={}", m.as_str()),
                    None => String::new(),
                };
                // One decimal, two below 0.1 ms (a loopback round trip is often 0.05 ms).
                let ms = h.rtt.as_secs_f64() * 1000.0;
                let digits = if ms < 0.095 { 2 } else { 1 };
                write!(
                    f,
                    "healthy: {} answered PING in {ms:.digits$} ms (HELLO hb/1{mode})",
                    self.addr
                )
            }
            Err(why) => write!(f, "unhealthy: {}: {why}", self.addr),
        }
    }
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum ProbeAction {
    /// Write this line.
    Send(ClientMsg),
    /// Print the verdict and stop.
    Finish(Verdict),
}

/// Where the probe's own `PING` stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ping {
    /// `HELLO` has not come yet.
    NotYet,
    /// To send at the next [`Probe::poll`].
    Due,
    /// Written at this instant.
    Sent(Instant),
}

/// The health check; see the module documentation.
#[derive(Debug, Clone)]
pub struct Probe {
    cfg: ProbeConfig,
    deadline: Instant,
    stage: Stage,
    /// The first bytes, until [`sniff`] can tell the protocol; `None` once it did.
    first: Option<Vec<u8>>,
    /// `AUTH` still to send.
    auth: Option<String>,
    /// When to send `PING hello?` if `HELLO` has not come.
    early_ping_at: Option<Instant>,
    ping: Ping,
    /// Server heartbeats to answer.
    pongs: VecDeque<String>,
    /// The mode `HELLO` named.
    hello_mode: Option<Mode>,
    /// Set once the `PONG` came: the verdict is healthy whatever happens next.
    healthy: Option<Healthy>,
    /// `QUIT` to send (after the `PONG`).
    quit_due: bool,
    finished: Option<Verdict>,
}

impl Probe {
    /// A probe started at `now` (before connecting): its deadline is `now + cfg.timeout`.
    pub fn new(cfg: ProbeConfig, now: Instant) -> Self {
        Self {
            deadline: now.checked_add(cfg.timeout).unwrap_or(now),
            auth: cfg.token.clone(),
            cfg,
            stage: Stage::Connect,
            first: Some(Vec::new()),
            early_ping_at: None,
            ping: Ping::NotYet,
            pongs: VecDeque::new(),
            hello_mode: None,
            healthy: None,
            quit_due: false,
            finished: None,
        }
    }

    /// When the whole probe must be over.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// What the probe waits for now.
    pub fn stage(&self) -> Stage {
        self.stage
    }

    /// The verdict, once there is one.
    pub fn verdict(&self) -> Option<&Verdict> {
        self.finished.as_ref()
    }

    fn finish(&mut self, result: Result<Healthy, Failure>) {
        if self.finished.is_none() {
            self.finished = Some(Verdict {
                addr: self.cfg.addr.clone(),
                result,
            });
        }
    }

    /// The TCP connection is up and the TLS handshake starts (with `--tls`).
    pub fn tls_started(&mut self) {
        if self.stage == Stage::Connect {
            self.stage = Stage::Tls;
        }
    }

    /// The connection (TLS included) is up at `now`: `AUTH` goes first, then the probe
    /// waits for `HELLO`.
    pub fn connected(&mut self, now: Instant) {
        self.stage = Stage::Hello;
        let early = HELLO_PROBE_AFTER.min(self.cfg.timeout / 2);
        self.early_ping_at = now.checked_add(early);
    }

    /// The connection (or its TLS handshake) failed at `now`: the verdict. Past the
    /// deadline, whatever the OS said, it is a timeout.
    pub fn connect_failed(&mut self, now: Instant, why: ConnectFailure) -> Verdict {
        let stage = match why {
            ConnectFailure::Tls(_) => Stage::Tls,
            _ if self.stage == Stage::Tls => Stage::Tls,
            _ => Stage::Connect,
        };
        let timeout = Failure::Timeout {
            waiting_for: stage,
            after: self.cfg.timeout,
        };
        let failure = if now >= self.deadline {
            timeout
        } else {
            match why {
                ConnectFailure::Refused => Failure::Refused,
                ConnectFailure::TimedOut => timeout,
                ConnectFailure::Io(why) => Failure::Connect(why),
                ConnectFailure::Tls(why) => Failure::Tls(why),
            }
        };
        self.finish(Err(failure));
        self.finished.clone().expect("just finished")
    }

    /// Raw bytes arrived (before their lines are handed to [`Probe::handle_line`]): the
    /// first ones must be the line wire.
    pub fn handle_bytes(&mut self, bytes: &[u8]) {
        if self.finished.is_some() {
            return;
        }
        let Some(first) = self.first.as_mut() else {
            return;
        };
        first.extend_from_slice(&bytes[..bytes.len().min(16)]);
        match sniff(first) {
            Sniff::NeedMore => {}
            Sniff::LineWire => self.first = None,
            Sniff::Foreign => {
                let sample = Sample::new(first);
                let bytes = sample.as_bytes();
                let (sent, looks_like) = if bytes.starts_with(crate::core::classic::ECHO_PREFIX) {
                    ("Echoing...".to_owned(), Some(Speaks::Classic))
                } else if matches!(bytes, [0x15 | 0x16, 0x03, ..]) {
                    // A TLS record: content type alert or handshake, version 3.x.
                    (safe_bytes(bytes), Some(Speaks::Tls))
                } else {
                    (safe_bytes(bytes), None)
                };
                self.finish(Err(Failure::NotHello { sent, looks_like }));
            }
        }
    }

    /// A line (without its `\n`) arrived at `now`.
    pub fn handle_line(&mut self, now: Instant, line: &[u8]) {
        if self.finished.is_some() {
            return;
        }
        let msg = ServerMsg::parse(line);
        if self.stage == Stage::Hello {
            match msg {
                Ok(ServerMsg::Hello { mode, .. }) => {
                    self.stage = Stage::Pong;
                    self.early_ping_at = None;
                    self.ping = Ping::Due;
                    self.hello_mode = mode;
                }
                // A full server refuses with END alone, before any HELLO.
                Ok(ServerMsg::End(reason)) => self.finish(Err(Failure::Ended(reason))),
                _ => {
                    let shown = safe_bytes(&line[..line.len().min(SHOWN)]);
                    self.finish(Err(if line.starts_with(b"HELLO ") {
                        Failure::BadHello(shown)
                    } else {
                        Failure::NotHello {
                            sent: shown,
                            looks_like: None,
                        }
                    }));
                }
            }
            return;
        }
        match msg {
            Ok(ServerMsg::Pong(token)) if token == self.cfg.ping && self.healthy.is_none() => {
                if let Ping::Sent(at) = self.ping {
                    self.healthy = Some(Healthy {
                        rtt: now.saturating_duration_since(at),
                        mode: self.hello_mode,
                    });
                    self.quit_due = true;
                }
            }
            Ok(ServerMsg::Ping(token)) => self.pongs.push_back(token),
            Ok(ServerMsg::End(reason)) => match self.healthy {
                // The answer came; whatever ends the connection after it (`END quit` to
                // our QUIT, a shutdown) does not undo it.
                Some(h) => self.finish(Ok(h)),
                None => self.finish(Err(Failure::Ended(reason))),
            },
            // `PONG hello?`, `ERR` (to an AUTH on a server without --auth-secret), anything a
            // later version adds: not the answer, not a failure.
            _ => {}
        }
    }

    /// The server closed (`kind`) the connection after everything it sent was handled.
    pub fn handle_closed(&mut self, kind: CloseKind) {
        match self.healthy {
            Some(h) => self.finish(Ok(h)),
            None => {
                let waiting_for = self.stage;
                self.finish(Err(Failure::Closed { kind, waiting_for }));
            }
        }
    }

    /// The server sent a line longer than `max` bytes.
    pub fn handle_too_long(&mut self, max: usize) {
        match self.healthy {
            Some(h) => self.finish(Ok(h)),
            None => self.finish(Err(Failure::LineTooLong(max))),
        }
    }

    /// When [`Probe::poll`] next has something to do (call it after every input too: what
    /// an input made due is sent at once).
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.finished.is_some() {
            return None;
        }
        Some(
            self.early_ping_at
                .map_or(self.deadline, |e| e.min(self.deadline)),
        )
    }

    /// What is due at `now`, one action per call; call again until `None`. Feed everything
    /// already received first: the deadline is judged on what was handled.
    #[must_use]
    pub fn poll(&mut self, now: Instant) -> Option<ProbeAction> {
        if self.finished.is_none() && now >= self.deadline {
            match self.healthy {
                // Only the goodbye was late.
                Some(h) => self.finish(Ok(h)),
                None => {
                    let waiting_for = self.stage;
                    self.finish(Err(Failure::Timeout {
                        waiting_for,
                        after: self.cfg.timeout,
                    }));
                }
            }
        }
        if let Some(v) = &self.finished {
            return Some(ProbeAction::Finish(v.clone()));
        }
        if matches!(self.stage, Stage::Connect | Stage::Tls) {
            return None;
        }
        if let Some(token) = self.auth.take() {
            // First on the wire: a server with --auth-secret ends anything else first.
            return Some(ProbeAction::Send(ClientMsg::Auth(token)));
        }
        if self.early_ping_at.is_some_and(|at| at <= now) {
            self.early_ping_at = None;
            return Some(ProbeAction::Send(ClientMsg::Ping(PROBE_TOKEN.into())));
        }
        if let Some(token) = self.pongs.pop_front() {
            return Some(ProbeAction::Send(ClientMsg::Pong(token)));
        }
        if self.ping == Ping::Due {
            self.ping = Ping::Sent(now);
            return Some(ProbeAction::Send(ClientMsg::Ping(self.cfg.ping.clone())));
        }
        if self.quit_due {
            self.quit_due = false;
            return Some(ProbeAction::Send(ClientMsg::Quit(None)));
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

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    fn cfg(token: Option<&str>) -> ProbeConfig {
        ProbeConfig {
            addr: "127.0.0.1:8000".into(),
            timeout: ms(2000),
            token: token.map(Into::into),
            ping: "probe-1".into(),
        }
    }

    /// A probe started at `t0` whose connection came up 1 ms later.
    fn connected(cfg: ProbeConfig, t0: Instant) -> Probe {
        let mut p = Probe::new(cfg, t0);
        assert_eq!(p.poll(t0), None, "nothing to send before the connection");
        p.connected(t0 + ms(1));
        p
    }

    /// Feeds one server line (bytes, then the line), as the driver does.
    fn line(p: &mut Probe, at: Instant, text: &str) {
        p.handle_bytes(format!("{text}\n").as_bytes());
        p.handle_line(at, text.as_bytes());
    }

    fn send(msg: ClientMsg) -> Option<ProbeAction> {
        Some(ProbeAction::Send(msg))
    }

    /// Polls at `at` until it says `Finish`, which it returns (panics if it does not).
    fn finish(p: &mut Probe, at: Instant) -> Verdict {
        match p.poll(at) {
            Some(ProbeAction::Finish(v)) => v,
            other => panic!("expected a verdict at {at:?}, got {other:?}"),
        }
    }

    const HELLO_CHAT: &str = "HELLO hb/1 idle=30000 interval=10000 count=3 mode=chat";

    #[test]
    fn hello_ping_pong_quit_is_healthy_with_the_round_trip() {
        let t0 = Instant::now();
        let mut p = connected(cfg(None), t0);
        assert_eq!(p.stage(), Stage::Hello);
        line(&mut p, t0 + ms(2), HELLO_CHAT);
        assert_eq!(p.stage(), Stage::Pong);
        let sent = t0 + ms(3);
        assert_eq!(p.poll(sent), send(ClientMsg::Ping("probe-1".into())));
        assert_eq!(p.poll(sent), None);
        assert_eq!(p.poll_timeout(), Some(t0 + ms(2000)));
        line(&mut p, sent + us(400), "PONG probe-1");
        assert_eq!(p.poll(sent + us(450)), send(ClientMsg::Quit(None)));
        assert_eq!(p.poll(sent + us(450)), None);
        line(&mut p, sent + us(600), "END quit");
        let v = finish(&mut p, sent + us(600));
        assert_eq!(
            v.to_string(),
            "healthy: 127.0.0.1:8000 answered PING in 0.4 ms (HELLO hb/1, mode=chat)"
        );
        assert_eq!(
            v.result,
            Ok(Healthy {
                rtt: us(400),
                mode: Some(Mode::Chat)
            })
        );
        assert_eq!((v.is_healthy(), v.exit_code()), (true, 0));
    }

    #[test]
    fn an_echo_server_and_one_that_names_no_mode_are_healthy_too() {
        for (hello, says) in [
            (
                "HELLO hb/1 idle=30000 interval=10000 count=3 mode=echo",
                "(HELLO hb/1, mode=echo)",
            ),
            (
                "HELLO hb/1 idle=30000 interval=10000 count=3",
                "(HELLO hb/1)",
            ),
        ] {
            let t0 = Instant::now();
            let mut p = connected(cfg(None), t0);
            line(&mut p, t0 + ms(1), hello);
            assert_eq!(p.poll(t0 + ms(1)), send(ClientMsg::Ping("probe-1".into())));
            line(&mut p, t0 + ms(13), "PONG probe-1");
            assert_eq!(p.poll(t0 + ms(13)), send(ClientMsg::Quit(None)));
            // The server closes after END quit; the close alone ends it just as well.
            p.handle_closed(CloseKind::Closed);
            let v = finish(&mut p, t0 + ms(14));
            assert_eq!(
                v.to_string(),
                format!("healthy: 127.0.0.1:8000 answered PING in 12.0 ms {says}")
            );
        }
    }

    #[test]
    fn the_round_trip_is_shown_in_milliseconds() {
        let shown = |rtt: Duration| {
            Verdict {
                addr: "h:1".into(),
                result: Ok(Healthy { rtt, mode: None }),
            }
            .to_string()
        };
        for (rtt, want) in [
            (us(40), "0.04 ms"),
            (us(94), "0.09 ms"),
            (us(100), "0.1 ms"),
            (us(400), "0.4 ms"),
            (us(1_260), "1.3 ms"),
            (ms(1_500), "1500.0 ms"),
        ] {
            assert_eq!(
                shown(rtt),
                format!("healthy: h:1 answered PING in {want} (HELLO hb/1)")
            );
        }
    }

    #[test]
    fn a_token_goes_first_even_before_hello() {
        let t0 = Instant::now();
        let mut p = connected(cfg(Some("jwt")), t0);
        assert_eq!(p.poll(t0 + ms(1)), send(ClientMsg::Auth("jwt".into())));
        assert_eq!(p.poll(t0 + ms(1)), None);
        line(&mut p, t0 + ms(2), HELLO_CHAT);
        // A server without --auth-secret says ERR unknown-verb to it: not a failure.
        line(
            &mut p,
            t0 + ms(2),
            "ERR unknown-verb AUTH: this server does not require authentication",
        );
        assert_eq!(p.poll(t0 + ms(2)), send(ClientMsg::Ping("probe-1".into())));
        line(&mut p, t0 + ms(3), "PONG probe-1");
        assert_eq!(p.poll(t0 + ms(3)), send(ClientMsg::Quit(None)));
        line(&mut p, t0 + ms(3), "END quit");
        assert!(finish(&mut p, t0 + ms(3)).is_healthy());
    }

    #[test]
    fn a_refused_token_is_the_end_it_gets() {
        let t0 = Instant::now();
        let mut p = connected(cfg(Some("jwt")), t0);
        assert_eq!(p.poll(t0 + ms(1)), send(ClientMsg::Auth("jwt".into())));
        line(&mut p, t0 + ms(2), HELLO_CHAT);
        line(&mut p, t0 + ms(2), "END auth-failed");
        let v = finish(&mut p, t0 + ms(2));
        assert_eq!(v.to_string(), "unhealthy: 127.0.0.1:8000: END auth-failed");
        assert_eq!(v.exit_code(), 1);
    }

    #[test]
    fn other_lines_are_skipped_and_a_heartbeat_is_answered() {
        let t0 = Instant::now();
        let mut p = connected(cfg(None), t0);
        line(&mut p, t0 + ms(1), HELLO_CHAT);
        assert_eq!(p.poll(t0 + ms(1)), send(ClientMsg::Ping("probe-1".into())));
        for other in [
            "PONG hello?",
            "PONG probe-2",
            "MSG bob hi",
            "JOINED ann",
            "ERR unknown-verb x",
            "a line from a later version",
        ] {
            line(&mut p, t0 + ms(2), other);
            assert_eq!(p.poll(t0 + ms(2)), None, "{other}");
        }
        line(&mut p, t0 + ms(3), "PING 1");
        assert_eq!(p.poll(t0 + ms(3)), send(ClientMsg::Pong("1".into())));
        assert_eq!(p.poll(t0 + ms(3)), None);
        line(&mut p, t0 + ms(5), "PONG probe-1");
        assert_eq!(p.poll(t0 + ms(5)), send(ClientMsg::Quit(None)));
        line(&mut p, t0 + ms(5), "END quit");
        let v = finish(&mut p, t0 + ms(5));
        assert_eq!(v.result.map(|h| h.rtt), Ok(ms(4)));
    }

    #[test]
    fn no_hello_is_unhealthy_at_the_deadline_after_an_early_ping() {
        let t0 = Instant::now();
        let mut p = connected(cfg(None), t0);
        // A classic server speaks only when spoken to: PING hello? after 1 s without HELLO.
        assert_eq!(p.poll_timeout(), Some(t0 + ms(1001)));
        assert_eq!(p.poll(t0 + ms(1000)), None);
        assert_eq!(
            p.poll(t0 + ms(1001)),
            send(ClientMsg::Ping(PROBE_TOKEN.into()))
        );
        assert_eq!(p.poll_timeout(), Some(t0 + ms(2000)));
        assert_eq!(p.poll(t0 + ms(1999)), None);
        let v = finish(&mut p, t0 + ms(2000));
        assert_eq!(
            v.to_string(),
            "unhealthy: 127.0.0.1:8000: no HELLO within 2s"
        );
        assert_eq!(v.exit_code(), 1);
        assert_eq!(p.poll_timeout(), None);
    }

    #[test]
    fn a_short_timeout_pings_early_at_half_of_it() {
        let t0 = Instant::now();
        let mut p = Probe::new(
            ProbeConfig {
                timeout: ms(500),
                ..cfg(None)
            },
            t0,
        );
        p.connected(t0);
        assert_eq!(p.poll_timeout(), Some(t0 + ms(250)));
        assert_eq!(
            p.poll(t0 + ms(250)),
            send(ClientMsg::Ping(PROBE_TOKEN.into()))
        );
        assert_eq!(
            finish(&mut p, t0 + ms(500)).to_string(),
            "unhealthy: 127.0.0.1:8000: no HELLO within 500ms"
        );
    }

    #[test]
    fn no_pong_is_unhealthy_at_the_deadline() {
        let t0 = Instant::now();
        let mut p = connected(cfg(None), t0);
        line(&mut p, t0 + ms(1), HELLO_CHAT);
        assert_eq!(p.poll(t0 + ms(1)), send(ClientMsg::Ping("probe-1".into())));
        // The early PING is not sent once HELLO came.
        assert_eq!(p.poll_timeout(), Some(t0 + ms(2000)));
        assert_eq!(p.poll(t0 + ms(1500)), None);
        assert_eq!(
            finish(&mut p, t0 + ms(2000)).to_string(),
            "unhealthy: 127.0.0.1:8000: no PONG within 2s"
        );
    }

    #[test]
    fn a_late_goodbye_does_not_undo_the_answer() {
        let t0 = Instant::now();
        let mut p = connected(cfg(None), t0);
        line(&mut p, t0 + ms(1), HELLO_CHAT);
        assert_eq!(p.poll(t0 + ms(1)), send(ClientMsg::Ping("probe-1".into())));
        line(&mut p, t0 + ms(2), "PONG probe-1");
        assert_eq!(p.poll(t0 + ms(2)), send(ClientMsg::Quit(None)));
        assert_eq!(p.poll(t0 + ms(1999)), None);
        let v = finish(&mut p, t0 + ms(2000));
        assert_eq!(v.result.map(|h| h.rtt), Ok(ms(1)));
    }

    #[test]
    fn a_classic_server_gives_itself_away() {
        let t0 = Instant::now();
        let mut p = connected(cfg(None), t0);
        assert_eq!(
            p.poll(t0 + ms(1001)),
            send(ClientMsg::Ping(PROBE_TOKEN.into()))
        );
        // Unframed: no newline, so no line either.
        p.handle_bytes(b"Echoing...PING hello?\n");
        let v = finish(&mut p, t0 + ms(1002));
        assert_eq!(
            v.to_string(),
            "unhealthy: 127.0.0.1:8000: sent 'Echoing...', not HELLO (classic wire?)"
        );
    }

    #[test]
    fn anything_else_first_is_not_hello() {
        let t0 = Instant::now();
        let mut p = connected(cfg(None), t0);
        p.handle_bytes(b"SSH-2.0-OpenSSH_9.2\r\n");
        assert_eq!(
            finish(&mut p, t0 + ms(2)).to_string(),
            "unhealthy: 127.0.0.1:8000: sent 'SSH-2.0-OpenSSH_', not HELLO"
        );
        // A TLS port answers a plaintext PING with an alert.
        let mut p = connected(cfg(None), t0);
        p.handle_bytes(b"\x15\x03\x03\x00\x02\x02\x32");
        assert_eq!(
            finish(&mut p, t0 + ms(2)).to_string(),
            "unhealthy: 127.0.0.1:8000: sent '\\x15\\x03\\x03\\x00\\x02\\x022', not HELLO \
             (a TLS port? add --tls or --ca)"
        );
        // In pieces: sniffing waits for enough bytes.
        let mut p = connected(cfg(None), t0);
        p.handle_bytes(b"HEL");
        assert_eq!(p.poll(t0 + ms(2)), None);
        p.handle_bytes(b"LO hb/1 x\n");
        p.handle_line(t0 + ms(2), b"HELLO hb/1 x");
        assert_eq!(
            finish(&mut p, t0 + ms(2)).to_string(),
            "unhealthy: 127.0.0.1:8000: sent a HELLO this probe cannot read: 'HELLO hb/1 x'"
        );
        // A line-wire line, but not HELLO first.
        let mut p = connected(cfg(None), t0);
        p.handle_line(t0 + ms(2), b"PONG \x1b[2J");
        assert_eq!(
            finish(&mut p, t0 + ms(2)).to_string(),
            "unhealthy: 127.0.0.1:8000: sent 'PONG \\e[2J', not HELLO"
        );
    }

    #[test]
    fn a_full_server_is_its_end() {
        let t0 = Instant::now();
        let mut p = connected(cfg(None), t0);
        line(&mut p, t0 + ms(1), "END server-full");
        assert_eq!(
            finish(&mut p, t0 + ms(1)).to_string(),
            "unhealthy: 127.0.0.1:8000: END server-full"
        );
        // END after HELLO but before the answer (a shutdown) too.
        let mut p = connected(cfg(None), t0);
        line(&mut p, t0 + ms(1), HELLO_CHAT);
        let _ = p.poll(t0 + ms(1));
        line(&mut p, t0 + ms(2), "END server-shutdown");
        assert_eq!(
            finish(&mut p, t0 + ms(2)).to_string(),
            "unhealthy: 127.0.0.1:8000: END server-shutdown"
        );
    }

    #[test]
    fn a_close_before_the_answer_says_what_was_missing() {
        let t0 = Instant::now();
        let mut p = connected(cfg(None), t0);
        p.handle_closed(CloseKind::Closed);
        assert_eq!(
            finish(&mut p, t0 + ms(1)).to_string(),
            "unhealthy: 127.0.0.1:8000: closed the connection before HELLO"
        );
        let mut p = connected(cfg(None), t0);
        line(&mut p, t0 + ms(1), HELLO_CHAT);
        let _ = p.poll(t0 + ms(1));
        p.handle_closed(CloseKind::Reset);
        assert_eq!(
            finish(&mut p, t0 + ms(1)).to_string(),
            "unhealthy: 127.0.0.1:8000: reset the connection before PONG"
        );
        let mut p = connected(cfg(None), t0);
        p.handle_too_long(1 << 20);
        assert_eq!(
            finish(&mut p, t0 + ms(1)).to_string(),
            "unhealthy: 127.0.0.1:8000: sent a line longer than 1048576 bytes"
        );
    }

    #[test]
    fn connect_failures_and_the_deadline() {
        let t0 = Instant::now();
        let verdict = |why: ConnectFailure, at: u64, tls: bool| {
            let mut p = Probe::new(cfg(None), t0);
            if tls {
                p.tls_started();
            }
            let v = p.connect_failed(t0 + ms(at), why);
            assert_eq!(p.verdict(), Some(&v));
            assert_eq!(v.exit_code(), 1);
            v.to_string()
        };
        let at = |s: &str| format!("unhealthy: 127.0.0.1:8000: {s}");
        assert_eq!(
            verdict(ConnectFailure::Refused, 0, false),
            at("connection refused")
        );
        assert_eq!(
            verdict(ConnectFailure::TimedOut, 2000, false),
            at("no connection within 2s")
        );
        assert_eq!(
            verdict(ConnectFailure::Io("no route to host".into()), 5, false),
            at("no route to host")
        );
        // Past the deadline, whatever the OS said, it took too long.
        assert_eq!(
            verdict(ConnectFailure::Io("no route to host".into()), 2000, false),
            at("no connection within 2s")
        );
        assert_eq!(
            verdict(ConnectFailure::Tls("unknown issuer".into()), 5, true),
            at("TLS failed: unknown issuer")
        );
        assert_eq!(
            verdict(
                ConnectFailure::Tls("TLS handshake not finished within 1.9s".into()),
                2000,
                true
            ),
            at("no TLS handshake within 2s")
        );
    }

    #[test]
    fn nothing_is_sent_before_the_connection_and_the_deadline_holds_there_too() {
        let t0 = Instant::now();
        let mut p = Probe::new(cfg(Some("jwt")), t0);
        assert_eq!(p.deadline(), t0 + ms(2000));
        assert_eq!(p.poll(t0 + ms(1500)), None);
        assert_eq!(
            finish(&mut p, t0 + ms(2000)).to_string(),
            "unhealthy: 127.0.0.1:8000: no connection within 2s"
        );
    }
}
