//! `hb-scenarios`: the manual's four test cases, end to end over real sockets on loopback.
//!
//! Each case starts its own server (port 0) and client in this process, collects both sides'
//! events with their instants, and judges them against the manual's expectation with the
//! timings scaled by `--speed`. The four cases run at the same time, each on its own server.

use std::fmt;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use clap::Parser;
use crossbeam_channel::Receiver;

use crate::config::{fmt_duration, ClientSettings, Engine, Mode, ServerSettings, Wire};
use crate::core::classic::{echo_reply, ClassicEnd};
use crate::core::client::Outcome;
use crate::core::heartbeat::HeartbeatConfig;
use crate::core::wire::{ClientMsg, EndReason};
use crate::net::client::{self, ClientEvent};
use crate::net::events::{Event, EventLog, Stamped};
use crate::net::server::{Server, ServerHandle};

/// Reproduces the manual's four heartbeat test cases and prints a verdict table.
///
/// The manual's settings (server: interval 5 s, count 3, idle 30 s; client: every 5 s or
/// 50 s, block 0 s or 180 s) are divided by --speed. At --speed 1 the run takes about a
/// minute; --speed 10 takes about six seconds.
///
/// Exit status: 0 when every case passes, 1 when one fails, 2 on bad flags.
#[derive(Debug, Parser)]
#[command(name = "hb-scenarios", version)]
pub struct ScenarioArgs {
    /// Divide every manual timing by this factor (e.g. 10 turns 30 s of idle into 3 s)
    #[arg(long, default_value_t = 1.0, value_parser = speed)]
    pub speed: f64,
    /// Run only this case (1 normal exchange, 2 slow client that answers, 3 slow client that
    /// does not answer, 4 client closes)
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=4))]
    pub case: Option<u8>,
    /// Wire to run the cases over
    #[arg(long, value_enum, default_value = "line")]
    pub wire: Wire,
    /// Engine of the servers the cases run against (events: line wire only)
    #[arg(long, value_enum, default_value = "threads")]
    pub engine: Engine,
    /// How late an observed heartbeat or END may be and still pass [default: 50ms, at most
    /// half an interval]. Raise it on a heavily loaded machine.
    #[arg(long, value_name = "DUR", value_parser = crate::config::parse_duration)]
    pub tolerance: Option<Duration>,
    /// Print only the settings and the verdict table, not each step as it happens
    #[arg(long)]
    pub quiet: bool,
}

fn speed(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v <= 1000.0 => Ok(v),
        _ => Err(format!(
            "'{s}' is not a speed factor between 0 and 1000 (e.g. 10)"
        )),
    }
}

/// Why the scenarios could not run at all.
#[derive(Debug)]
pub enum ScenarioError {
    /// The requested wire or engine is not available, or flags conflict (exit 2).
    Unsupported(String),
    /// A server or client could not be started.
    Setup(String),
}

impl fmt::Display for ScenarioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unsupported(s) | Self::Setup(s) => f.write_str(s),
        }
    }
}

impl std::error::Error for ScenarioError {}

/// The manual's timings, scaled.
#[derive(Debug, Clone, Copy)]
pub struct Timings {
    /// Server heartbeat settings.
    pub hb: HeartbeatConfig,
    /// Client data interval in cases 1 and 4.
    pub every_fast: Duration,
    /// Client data interval in cases 2 and 3.
    pub every_slow: Duration,
    /// Client heartbeat block in case 3.
    pub block_long: Duration,
    /// Allowed lateness of an observed event.
    pub slack: Duration,
    /// When set, each case prints its steps as they happen, timed from this instant (a case
    /// at the manual's speed runs for most of a minute and should not be silent).
    pub progress: Option<Instant>,
}

impl Timings {
    /// The manual's settings divided by `speed`.
    pub fn scaled(speed: f64) -> Self {
        let s = |secs: f64| Duration::from_secs_f64(secs / speed);
        let hb = HeartbeatConfig::new(s(30.0), s(5.0), 3).expect("manual settings are valid");
        // Scheduling jitter on a loaded machine is a few milliseconds; allow ten times that,
        // but at most half an interval, so a heartbeat sent on the wrong beat still fails.
        let slack = Duration::from_millis(50)
            .min(s(2.5))
            .max(Duration::from_millis(5));
        Self {
            hb,
            every_fast: s(5.0),
            every_slow: s(50.0),
            block_long: s(180.0),
            slack,
            progress: None,
        }
    }
}

/// One row of the verdict table.
#[derive(Debug, Clone)]
pub struct Verdict {
    /// Case number, 1 to 4.
    pub case: u8,
    /// The manual's description.
    pub description: &'static str,
    /// The manual's expectation.
    pub expectation: &'static str,
    /// What happened, with timings.
    pub observed: String,
    /// Whether it met the expectation.
    pub pass: bool,
}

/// Description and expectation of each case, in the words of the line wire.
const CASES: [(&str, &str); 4] = [
    (
        "Normal data exchange at the configured rate",
        "no heartbeat (no PING)",
    ),
    (
        "Slow client that answers the heartbeat",
        "PING 1 after idle, answered with PONG, connection kept",
    ),
    (
        "Slow client that does not answer",
        "PING 1..3 one interval apart, then END heartbeat-timeout, connection closed",
    ),
    (
        "Client closes the connection",
        "closed at once, no heartbeat round, no END",
    ),
];

/// The same over the classic wire, whose only words are `heartbeat` and `End Connection`.
const CASES_CLASSIC: [(&str, &str); 4] = [
    (
        "Normal data exchange at the configured rate",
        "no heartbeat sent on the heartbeat socket",
    ),
    (
        "Slow client that answers the heartbeat",
        "heartbeat after idle, any reply ends the round, connection kept",
    ),
    (
        "Slow client that does not answer",
        "3 heartbeats one interval apart, then End Connection on both sockets, closed",
    ),
    (
        "Client closes the connection",
        "both sockets closed at once, no heartbeat, no End Connection",
    ),
];

/// What tells the two wires apart in the verdicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Flavor(Wire);

/// How the classic client labels its heartbeat-socket traffic in its events.
const HB_TAG: &str = "[heartbeat] ";

impl Flavor {
    fn is_data_sent(self, e: &ClientEvent) -> bool {
        match (self.0, e) {
            (Wire::Line, ClientEvent::Sent(l)) => l.starts_with("MSG "),
            (Wire::Classic, ClientEvent::Sent(l)) => !l.starts_with(HB_TAG),
            _ => false,
        }
    }

    fn is_echo(self, e: &ClientEvent) -> bool {
        match (self.0, e) {
            (Wire::Line, ClientEvent::Received(l)) => l.starts_with("ECHO "),
            (Wire::Classic, ClientEvent::Received(l)) => l.starts_with("Echoing..."),
            _ => false,
        }
    }

    fn is_heartbeat_answer(self, e: &ClientEvent) -> bool {
        match (self.0, e) {
            (Wire::Line, ClientEvent::Sent(l)) => l.starts_with("PONG"),
            (Wire::Classic, ClientEvent::Sent(l)) => l.starts_with(HB_TAG),
            _ => false,
        }
    }

    fn is_timeout_end(self, e: &Event) -> bool {
        match (self.0, e) {
            (Wire::Line, Event::EndSent { reason, .. }) => *reason == EndReason::HeartbeatTimeout,
            (Wire::Classic, Event::EndConnectionSent { why, .. }) => {
                *why == ClassicEnd::HeartbeatTimeout
            }
            _ => false,
        }
    }

    fn is_any_end(self, e: &Event) -> bool {
        matches!(e, Event::EndSent { .. } | Event::EndConnectionSent { .. })
    }
}

struct Harness {
    handle: ServerHandle,
    addr: SocketAddr,
    events: Receiver<Stamped>,
    accept: thread::JoinHandle<()>,
    wire: Wire,
    /// Classic wire: the client's heartbeat listener, bound before the server starts so the
    /// server can be told its port (`client.port`).
    listener: Mutex<Option<TcpListener>>,
    case: u8,
    progress: Option<Instant>,
}

impl Harness {
    fn start(t: Timings, wire: Wire, engine: Engine, case: u8) -> Result<Self, ScenarioError> {
        let hb = t.hb;
        let setup = |e: std::io::Error| ScenarioError::Setup(format!("heartbeat listener: {e}"));
        let listener = match wire {
            Wire::Classic => Some(TcpListener::bind("127.0.0.1:0").map_err(setup)?),
            Wire::Line => None,
        };
        let classic_client_port = match &listener {
            Some(l) => l.local_addr().map_err(setup)?.port(),
            None => crate::config::defaults::CLIENT_PORT,
        };
        let settings = ServerSettings {
            host: "127.0.0.1".into(),
            port: 0,
            heartbeat: hb,
            idle_raised_from: None,
            mode: Mode::Echo,
            wire,
            engine,
            workers: None,
            max_conns: 16,
            max_line: crate::config::defaults::MAX_LINE,
            queue: crate::config::defaults::QUEUE,
            stall: crate::config::defaults::STALL,
            history: crate::config::defaults::HISTORY,
            history_bytes: crate::config::defaults::HISTORY_BYTES,
            broker: crate::config::server::Broker::Memory,
            node_timeout: crate::config::defaults::NODE_TIMEOUT,
            rate: None,
            tls: None,
            handshake: crate::config::defaults::HANDSHAKE,
            auth: None,
            auth_secret: None,
            max_conns_per_ip: None,
            metrics: None,
            classic_client_port,
        };
        let (tx, events) = crossbeam_channel::unbounded();
        let tx = match t.progress {
            Some(since) => {
                let (description, _) = match wire {
                    Wire::Line => CASES,
                    Wire::Classic => CASES_CLASSIC,
                }[usize::from(case - 1)];
                println!("{:>8.3}s case {case}: {description}", 0.0);
                progress_relay(format!("case {case} server"), since, tx, server_step)
            }
            None => tx,
        };
        let server = Server::bind(settings, EventLog::channel(tx))
            .map_err(|e| ScenarioError::Setup(e.to_string()))?;
        let (handle, addr) = (server.handle(), server.local_addr());
        let accept = thread::spawn(move || {
            let _ = server.run();
        });
        Ok(Self {
            handle,
            addr,
            events,
            accept,
            wire,
            listener: Mutex::new(listener),
            case,
            progress: t.progress,
        })
    }

    fn flavor(&self) -> Flavor {
        Flavor(self.wire)
    }

    fn take_listener(&self) -> Option<TcpListener> {
        self.listener
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    fn client_settings(&self, every: Duration, block: Duration) -> ClientSettings {
        ClientSettings {
            host: "127.0.0.1".into(),
            port: self.addr.port(),
            every,
            block,
            message: crate::config::defaults::MESSAGE.into(),
            wire: self.wire,
            chat_name: None,
            messages: None,
            reconnect_for: Duration::ZERO,
            token: None,
            listen_host: "127.0.0.1".into(),
            listen_port: 0,
            tls: None,
            probe: None,
        }
    }

    fn stop(self) -> Vec<Stamped> {
        self.handle.shutdown();
        let _ = self.accept.join();
        // `Closed` is logged when a connection's last thread lets go of its descriptor, a
        // moment after shutdown returns: wait for every connection's, within a bound.
        let mut seen: Vec<Stamped> = self.events.try_iter().collect();
        let open = |seen: &[Stamped]| {
            let connected = seen
                .iter()
                .filter(|e| matches!(e.event, Event::Connected { .. }));
            let closed = seen
                .iter()
                .filter(|e| matches!(e.event, Event::Closed { .. }));
            connected.count() > closed.count()
        };
        let deadline = Instant::now() + Duration::from_secs(1);
        while open(&seen) {
            match self.events.recv_deadline(deadline) {
                Ok(e) => seen.push(e),
                Err(_) => break,
            }
        }
        seen
    }
}

/// Runs the hb-client session in a thread; `stop_after` ends it like Ctrl-C would.
fn run_client(
    h: &Harness,
    settings: ClientSettings,
    stop_after: Option<Duration>,
) -> (Result<Outcome, String>, Vec<Stamped<ClientEvent>>) {
    let (tx, rx) = crossbeam_channel::unbounded();
    let tx = match h.progress {
        Some(since) => progress_relay(format!("case {} client", h.case), since, tx, |_| true),
        None => tx,
    };
    let (stop_tx, stop_rx) = crossbeam_channel::bounded(1);
    let listener = h.take_listener();
    let session = thread::spawn(move || {
        let log = EventLog::channel(tx);
        match listener {
            Some(l) => crate::net::classic::run_client_with_listener(&settings, l, &log, &stop_rx),
            None => client::run(&settings, &log, &stop_rx),
        }
        .map_err(|e| e.to_string())
    });
    if let Some(after) = stop_after {
        thread::sleep(after);
        let _ = stop_tx.send(());
    }
    let outcome = session
        .join()
        .unwrap_or_else(|_| Err("client thread panicked".into()));
    (outcome, rx.try_iter().collect())
}

fn secs(d: Duration) -> String {
    format!("{:.3}s", d.as_secs_f64())
}

fn last_sent_before(fl: Flavor, client: &[Stamped<ClientEvent>], at: Instant) -> Option<Instant> {
    client
        .iter()
        .rev()
        .find(|e| (fl.is_data_sent(&e.event) || fl.is_heartbeat_answer(&e.event)) && e.at <= at)
        .map(|e| e.at)
}

fn case1(t: Timings, wire: Wire, engine: Engine) -> Result<Verdict, ScenarioError> {
    const CASE: u8 = 1;
    let h = Harness::start(t, wire, engine, CASE)?;
    let fl = h.flavor();
    let run_for = t.hb.give_up_after() + t.every_fast * 2;
    let (outcome, cev) = run_client(
        &h,
        h.client_settings(t.every_fast, Duration::ZERO),
        Some(run_for),
    );
    let sev = h.stop();
    let sent = cev.iter().filter(|e| fl.is_data_sent(&e.event)).count();
    let echoed = cev.iter().filter(|e| fl.is_echo(&e.event)).count();
    let rounds = sev
        .iter()
        .filter(|e| matches!(e.event, Event::RoundStarted { .. } | Event::PingSent { .. }))
        .count();
    let expected_msgs = (run_for.as_secs_f64() / t.every_fast.as_secs_f64()) as usize;
    // The classic wire has no QUIT handshake: the client leaves at once, so the echo of a
    // message sent at the very moment it is stopped may never be read.
    let unechoed_ok = usize::from(wire == Wire::Classic);
    let pass = rounds == 0
        && echoed <= sent
        && echoed + unechoed_ok >= sent
        && sent + 1 >= expected_msgs
        && outcome == Ok(Outcome::UserEnded);
    let observed = format!(
        "{sent} messages in {}, {echoed} echoed, {rounds} heartbeats; client {}",
        secs(run_for),
        outcome_text(&outcome, wire)
    );
    Ok(verdict(1, wire, observed, pass))
}

fn case2(t: Timings, wire: Wire, engine: Engine) -> Result<Verdict, ScenarioError> {
    const CASE: u8 = 2;
    let h = Harness::start(t, wire, engine, CASE)?;
    let fl = h.flavor();
    let run_for = t.hb.idle() + t.hb.round_length() + t.slack * 4;
    let (outcome, cev) = run_client(
        &h,
        h.client_settings(t.every_slow, Duration::ZERO),
        Some(run_for),
    );
    let sev = h.stop();
    let mut notes = Vec::new();
    let mut pass = outcome == Ok(Outcome::UserEnded);
    let start = sev
        .iter()
        .find(|e| matches!(e.event, Event::RoundStarted { .. }));
    let answered = sev.iter().find_map(|e| match e.event {
        Event::Answered { after, rtt, .. } => Some((after, rtt)),
        _ => None,
    });
    let timeouts = sev.iter().filter(|e| fl.is_timeout_end(&e.event)).count();
    match start {
        Some(s) => {
            let quiet =
                last_sent_before(fl, &cev, s.at).map(|at| s.at.saturating_duration_since(at));
            let on_time =
                quiet.is_some_and(|q| q + t.slack / 5 >= t.hb.idle() && q <= t.hb.idle() + t.slack);
            pass &= on_time;
            notes.push(format!(
                "round after {} quiet",
                quiet.map_or("?".into(), secs)
            ));
        }
        None => {
            pass = false;
            notes.push("no round".into());
        }
    }
    match answered {
        Some((after, rtt)) => {
            pass &= after == 1;
            notes.push(format!(
                "{} {after} answered in {:.1}ms",
                match wire {
                    Wire::Line => "PING",
                    Wire::Classic => "heartbeat",
                },
                rtt.as_secs_f64() * 1000.0
            ));
        }
        None => {
            pass = false;
            notes.push("never answered".into());
        }
    }
    pass &= timeouts == 0;
    notes.push(if timeouts == 0 {
        "connection kept".into()
    } else {
        "closed by heartbeat".into()
    });
    notes.push(format!("client {}", outcome_text(&outcome, wire)));
    Ok(verdict(2, wire, notes.join(", "), pass))
}

fn case3(t: Timings, wire: Wire, engine: Engine) -> Result<Verdict, ScenarioError> {
    const CASE: u8 = 3;
    let h = Harness::start(t, wire, engine, CASE)?;
    let fl = h.flavor();
    let (outcome, cev) = run_client(&h, h.client_settings(t.every_slow, t.block_long), None);
    let sev = h.stop();
    let first_data = cev.iter().find(|e| fl.is_data_sent(&e.event)).map(|e| e.at);
    let at = |pred: &dyn Fn(&Event) -> bool| sev.iter().find(|e| pred(&e.event)).map(|e| e.at);
    let mut pass = outcome == Ok(Outcome::ServerEnded(EndReason::HeartbeatTimeout));
    let mut marks = Vec::new();
    let Some(t0) = first_data else {
        return Ok(verdict(
            3,
            wire,
            format!(
                "client sent nothing; client {}",
                outcome_text(&outcome, wire)
            ),
            false,
        ));
    };
    let hb = t.hb;
    let mut check = |label: String, got: Option<Instant>, want: Duration| {
        let off = got.map(|g| g.saturating_duration_since(t0));
        let ok = off.is_some_and(|o| o + t.slack / 5 >= want && o <= want + t.slack);
        pass &= ok;
        marks.push(format!("{label} {}", off.map_or("missing".into(), secs)));
    };
    for k in 1..=hb.count() {
        let want = hb.idle() + hb.interval() * (k - 1);
        check(
            match wire {
                Wire::Line => format!("PING {k}"),
                Wire::Classic => format!("heartbeat {k}"),
            },
            at(&|e| matches!(e, Event::PingSent { k: kk, .. } if *kk == k)),
            want,
        );
    }
    let end = at(&|e| fl.is_timeout_end(e));
    let end_label = match wire {
        Wire::Line => "END",
        Wire::Classic => "End Connection",
    };
    check(end_label.into(), end, hb.give_up_after());
    let closed = at(&|e| matches!(e, Event::Closed { .. }));
    pass &= closed.is_some();
    let pongs = cev
        .iter()
        .filter(|e| fl.is_heartbeat_answer(&e.event))
        .count();
    pass &= pongs == 0;
    let observed = format!(
        "{} (expected {} + k x {}, {end_label} at {}); {}; client {}",
        marks.join(", "),
        secs(hb.idle()),
        secs(hb.interval()),
        secs(hb.give_up_after()),
        if closed.is_some() {
            "closed"
        } else {
            "NOT closed"
        },
        outcome_text(&outcome, wire)
    );
    Ok(verdict(3, wire, observed, pass))
}

fn case4(t: Timings, wire: Wire, engine: Engine) -> Result<Verdict, ScenarioError> {
    const CASE: u8 = 4;
    let h = Harness::start(t, wire, engine, CASE)?;
    let fl = h.flavor();
    // Like the manual's client.py being stopped: a few messages, then the socket just closes.
    let setup = |e: std::io::Error| ScenarioError::Setup(format!("case 4 client: {e}"));
    if wire == Wire::Classic {
        return case4_classic(t, h);
    }
    let mut sock = TcpStream::connect(h.addr).map_err(setup)?;
    sock.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(setup)?;
    let mut echoes = 0;
    let mut buf = [0u8; 1024];
    let mut received = Vec::new();
    for i in 0..4 {
        if i > 0 {
            thread::sleep(t.every_fast);
        }
        let line = ClientMsg::Msg(crate::config::defaults::MESSAGE.into()).encode();
        sock.write_all(line.as_bytes()).map_err(setup)?;
        // HELLO plus one ECHO per message so far.
        let want = i + 2;
        while received.iter().filter(|&&b| b == b'\n').count() < want {
            let n = sock.read(&mut buf).map_err(setup)?;
            if n == 0 {
                break;
            }
            received.extend_from_slice(&buf[..n]);
        }
        echoes = String::from_utf8_lossy(&received).matches("ECHO ").count();
    }
    let closed_at = Instant::now();
    drop(sock);
    // Wait (bounded) for the server to notice, then stop it.
    let mut sev = events_until_closed(&h.events, closed_at + Duration::from_secs(2));
    sev.extend(h.stop());
    case4_verdict(t, fl, echoes, closed_at, sev)
}

/// Case 4 over the classic wire with a raw client: a heartbeat listener the server connects
/// back to, `Hello, there` four times on the data socket, then both sockets just close.
fn case4_classic(t: Timings, h: Harness) -> Result<Verdict, ScenarioError> {
    let setup = |e: std::io::Error| ScenarioError::Setup(format!("case 4 client: {e}"));
    let listener = h
        .take_listener()
        .ok_or_else(|| ScenarioError::Setup("case 4: no heartbeat listener".into()))?;
    let mut sock = TcpStream::connect(h.addr).map_err(setup)?;
    sock.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(setup)?;
    // The server connects back at once; accept it (bounded) so the session is complete.
    listener.set_nonblocking(true).map_err(setup)?;
    let accept_by = Instant::now() + Duration::from_secs(2);
    let hb_sock = loop {
        match listener.accept() {
            Ok((s, _)) => break Some(s),
            Err(_) if Instant::now() < accept_by => thread::sleep(Duration::from_millis(2)),
            Err(_) => break None,
        }
    };
    let message = crate::config::defaults::MESSAGE.as_bytes();
    let want = echo_reply(message);
    let mut echoes = 0;
    let mut buf = [0u8; 1024];
    for i in 0..4 {
        if i > 0 {
            thread::sleep(t.every_fast);
        }
        sock.write_all(message).map_err(setup)?;
        let mut got = Vec::new();
        while got.len() < want.len() {
            let n = sock.read(&mut buf).map_err(setup)?;
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        if got == want {
            echoes += 1;
        }
    }
    let closed_at = Instant::now();
    drop(sock);
    drop(hb_sock);
    let mut sev = events_until_closed(&h.events, closed_at + Duration::from_secs(2));
    let fl = h.flavor();
    sev.extend(h.stop());
    case4_verdict(t, fl, echoes, closed_at, sev)
}

fn case4_verdict(
    t: Timings,
    fl: Flavor,
    echoes: usize,
    closed_at: Instant,
    sev: Vec<Stamped>,
) -> Result<Verdict, ScenarioError> {
    let noticed = sev
        .iter()
        .find(|e| matches!(e.event, Event::ClosedByClient { .. }))
        .map(|e| e.at);
    let rounds = sev
        .iter()
        .filter(|e| matches!(e.event, Event::RoundStarted { .. } | Event::PingSent { .. }))
        .count();
    let ends = sev.iter().filter(|e| fl.is_any_end(&e.event)).count();
    let delay = noticed.map(|n| n.saturating_duration_since(closed_at));
    let pass = echoes == 4 && rounds == 0 && ends == 0 && delay.is_some_and(|d| d <= t.slack);
    let end_word = match fl.0 {
        Wire::Line => "END",
        Wire::Classic => "End Connection",
    };
    let observed = format!(
        "{echoes} echoes, client closed; server noticed {} later, {rounds} heartbeats, {ends} {end_word}",
        delay.map_or("never".into(), |d| format!(
            "{:.1}ms",
            d.as_secs_f64() * 1000.0
        ))
    );
    Ok(verdict(4, fl.0, observed, pass))
}

/// The server's events up to its first `Closed` (or `limit`).
fn events_until_closed(events: &Receiver<Stamped>, limit: Instant) -> Vec<Stamped> {
    let mut seen = Vec::new();
    while let Ok(e) = events.recv_deadline(limit) {
        let done = matches!(e.event, Event::Closed { .. });
        seen.push(e);
        if done {
            break;
        }
    }
    seen
}

fn outcome_text(o: &Result<Outcome, String>, wire: Wire) -> String {
    match o {
        Ok(Outcome::UserEnded) => "left normally".into(),
        Ok(Outcome::ServerEnded(_)) if wire == Wire::Classic => "got End Connection".into(),
        Ok(Outcome::ServerEnded(r)) => format!("got END {r}"),
        Ok(Outcome::ServerLost(d)) => format!("lost the server after {}", secs(*d)),
        Ok(other) => other.to_string(),
        Err(e) => format!("failed: {e}"),
    }
}

fn verdict(case: u8, wire: Wire, observed: String, pass: bool) -> Verdict {
    let (description, expectation) = match wire {
        Wire::Line => CASES,
        Wire::Classic => CASES_CLASSIC,
    }[usize::from(case - 1)];
    Verdict {
        case,
        description,
        expectation,
        observed,
        pass,
    }
}

/// One manual case over one wire, against one engine.
type CaseFn = fn(Timings, Wire, Engine) -> Result<Verdict, ScenarioError>;

/// Runs the selected cases concurrently over `wire` against servers running `engine`, and
/// returns their verdicts in case order.
pub fn run_cases(
    timings: Timings,
    only: Option<u8>,
    wire: Wire,
    engine: Engine,
) -> Result<Vec<Verdict>, ScenarioError> {
    let cases: [CaseFn; 4] = [case1, case2, case3, case4];
    thread::scope(|s| {
        let running: Vec<_> = (1..=4u8)
            .filter(|n| only.is_none_or(|o| o == *n))
            .map(|n| s.spawn(move || cases[usize::from(n - 1)](timings, wire, engine)))
            .collect();
        running
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(ScenarioError::Setup("a case panicked".into())))
            })
            .collect()
    })
}

/// Width the verdict table keeps to.
const TABLE_WIDTH: usize = 100;

/// Formats the verdict table: per case a header line (number, description, verdict) and the
/// expectation and observation wrapped to `TABLE_WIDTH` columns under it.
pub fn table(verdicts: &[Verdict]) -> String {
    const INDENT: &str = "        ";
    let mut out = String::new();
    for v in verdicts {
        let result = if v.pass { "PASS" } else { "FAIL" };
        let head = format!("case {}  {}", v.case, v.description);
        let pad = TABLE_WIDTH.saturating_sub(head.len() + result.len()).max(2);
        out.push_str(&format!("{head}{}{result}\n", " ".repeat(pad)));
        for (label, text) in [
            ("expected", v.expectation),
            ("observed", v.observed.as_str()),
        ] {
            let first = format!("{INDENT}{label}: ");
            let rest = " ".repeat(first.len());
            for (i, line) in wrap(text, TABLE_WIDTH - first.len()).iter().enumerate() {
                out.push_str(if i == 0 { &first } else { &rest });
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

/// Splits `text` at spaces into lines of at most `width` characters (a longer word stands
/// alone on its line).
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = vec![String::new()];
    for word in text.split(' ').filter(|w| !w.is_empty()) {
        let line = lines.last_mut().expect("never empty");
        if !line.is_empty() && line.len() + 1 + word.len() > width {
            lines.push(word.to_owned());
        } else {
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(word);
        }
    }
    lines
}

/// Relays a case's events to `tx`, printing each one that `show` accepts as it happens,
/// timed from `since` and tagged `case N server` or `case N client`, so a long case shows
/// its steps.
fn progress_relay<E: fmt::Display + Send + 'static>(
    tag: String,
    since: Instant,
    tx: crossbeam_channel::Sender<Stamped<E>>,
    show: fn(&E) -> bool,
) -> crossbeam_channel::Sender<Stamped<E>> {
    let (relay_tx, relay_rx) = crossbeam_channel::unbounded::<Stamped<E>>();
    thread::spawn(move || {
        // Ends when the log's owner drops it, i.e. when the case is over.
        for e in relay_rx {
            if show(&e.event) {
                let at = e.at.saturating_duration_since(since).as_secs_f64();
                println!("{at:>8.3}s {tag}: {}", e.event);
            }
            if tx.send(e).is_err() {
                break;
            }
        }
    });
    relay_tx
}

/// Server events worth a progress line: not the harness's own start and stop.
fn server_step(e: &Event) -> bool {
    !matches!(e, Event::Listening { .. } | Event::ShuttingDown { .. })
}

/// Runs the scenarios as the binary does; `Ok(true)` when all passed.
pub fn run(args: &ScenarioArgs) -> Result<bool, ScenarioError> {
    let (wire, engine) = (args.wire, args.engine);
    // Checked before anything runs, in hb-server's words (CONTRACT section 6).
    if wire == Wire::Classic && engine == Engine::Events {
        return Err(ScenarioError::Unsupported(
            "--engine events works only on the line wire, not with --wire classic".into(),
        ));
    }
    let mut t = Timings::scaled(args.speed);
    if let Some(tol) = args.tolerance {
        // Past half an interval a heartbeat on the wrong beat would pass: refuse that.
        if tol > t.hb.interval() / 2 {
            return Err(ScenarioError::Unsupported(format!(
                "--tolerance {} is more than half an interval ({}) at this speed",
                fmt_duration(tol),
                fmt_duration(t.hb.interval() / 2)
            )));
        }
        t.slack = tol;
    }
    println!(
        "{}{}manual settings / {}: server interval {}, count {}, idle {}; client every {} or {}, block 0 or {}",
        match wire {
            Wire::Line => "",
            Wire::Classic => "classic wire, ",
        },
        match engine {
            Engine::Threads => "",
            Engine::Events => "event engine, ",
        },
        args.speed,
        fmt_duration(t.hb.interval()),
        t.hb.count(),
        fmt_duration(t.hb.idle()),
        fmt_duration(t.every_fast),
        fmt_duration(t.every_slow),
        fmt_duration(t.block_long),
    );
    if !args.quiet {
        t.progress = Some(Instant::now());
    }
    let verdicts = run_cases(t, args.case, wire, engine)?;
    print!("{}", table(&verdicts));
    let passed = verdicts.iter().filter(|v| v.pass).count();
    println!("{passed} passed, {} failed", verdicts.len() - passed);
    Ok(passed == verdicts.len())
}
