//! `--metrics ADDR` (CONTRACT section 10): the server's counters in the Prometheus text
//! format at `http://ADDR/metrics`.
//!
//! ## What feeds them
//! Observation, not decisions: nothing here changes what a connection does. [`EventLog::emit`]
//! hands every [`Event`] to [`Metrics::observe`] before the log thread sees it (connected,
//! closed, END sent and why, PING sent, a round answered and its round trip, refused, slow
//! consumer, broker up or down), which updates atomics on the emitting thread: no allocation
//! and no lock per event (each labelled series is created once, at start, and kept as a
//! handle; the histograms are arrays of atomics). Two things have no event:
//! - messages and bytes relayed: [`crate::net::relay`] counts them per batch in its
//!   [`Stage`](crate::net::relay::Stage) and adds them here once per batch;
//! - `hb_queue_bytes`, the bytes queued for all clients: read at scrape time by walking the
//!   connections' sessions ([`watch_queues`]), one short lock per session per scrape. A
//!   running sum would cost an atomic update on every line queued and every write, for a
//!   number read every 15 seconds.
//!
//! ## The HTTP side
//! Hand-written on purpose: with these limits it is a couple of hundred lines, where a general
//! HTTP crate would bring a far larger surface (keep-alive, pipelining, chunked bodies,
//! header parsing) to a port whose whole job is one fixed answer. One thread,
//! `hb-metrics`, serves one connection at a time:
//! - a connection has [`REQUEST_DEADLINE`] (2 s) from accept to close, reading included, so a
//!   stalled scraper holds the thread at most that long; the next one waits in the backlog;
//! - the request head may be at most [`MAX_HEAD`] (8 KiB), else `431` and close;
//! - only `GET /metrics` (a query string is ignored) is answered `200`; other paths `404`,
//!   other methods `405`, anything unparsable `400`; one request per connection
//!   (`Connection: close`);
//! - nothing from the request is reflected into the response: every answer but the metrics
//!   is a fixed text.
//!
//! It waits on its sockets and a [`Bell`] together, so it stops at once when the server shuts
//! down, a connection in progress included (inside the one-second rule).
//!
//! ## The text format
//! prometheus-client encodes its registry in the OpenMetrics text format; [`Metrics::render`]
//! turns that into the Prometheus text format 0.0.4 (`Content-Type: text/plain;
//! version=0.0.4`) that every scraper and `promtool check metrics` read: the two differ only
//! in the counter family's name on its `# HELP`/`# TYPE` lines (`_total` in 0.0.4) and in
//! `# EOF`.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::config::MetricsAddr;
use crate::core::classic::ClassicEnd;
use crate::core::cluster::ClusterEvent;
use crate::core::wire::EndReason;
use crate::net::events::{Event, EventLog, RefusalCause};
use crate::net::relay::Member;
use crate::net::wait::{wait, wait_one, Bell, PollFlags};

/// Longest a metrics connection lives, from accept to close.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(2);
/// Largest request head (request line and headers) read; larger gets `431`.
pub const MAX_HEAD: usize = 8 * 1024;
/// Longest wait for a socket to take the answer before looking at the stop flag again
/// (writes almost never wait: an answer is a few KiB).
const SLICE: Duration = Duration::from_millis(50);
/// Longest wait for a scraper; a safety net only, the stop bell ends it.
const IDLE_WAIT: Duration = Duration::from_secs(60);
/// After answering: how long input is still read and discarded before closing, so unread
/// request bytes do not turn the close into a reset that destroys the answer (as the
/// server's own END linger).
const LINGER: Duration = Duration::from_millis(250);

/// Why a connection was refused, as a label (`hb_refused_total{reason}`), in
/// [`RefusalCause::ALL`]'s order.
pub const REFUSALS: [&str; 6] = [
    RefusalCause::ALL[0].as_str(),
    RefusalCause::ALL[1].as_str(),
    RefusalCause::ALL[2].as_str(),
    RefusalCause::ALL[3].as_str(),
    RefusalCause::ALL[4].as_str(),
    RefusalCause::ALL[5].as_str(),
];

/// Upper bounds of `hb_heartbeat_rtt_seconds`: loopback (well under a millisecond) to a slow
/// link; a round trip is at most one `--interval` (10 s by default).
const RTT_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Upper bounds of `hb_ghost_lateness_seconds`: a timer's wake-up (tens of microseconds)
/// to an overloaded machine (seconds).
const LATENESS_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Reads a number at scrape time.
type Probe = Box<dyn Fn() -> u64 + Send + Sync>;

/// Every metric of one server; see the module docs.
pub struct Metrics {
    registry: Registry,
    connections: Gauge,
    accepted: Counter,
    /// One per [`REFUSALS`] class, in that order.
    refused: [Counter; REFUSALS.len()],
    /// One per reason, in [`EndReason::ALL`]'s order.
    ends: [Counter; EndReason::ALL.len()],
    heartbeats: Counter,
    rtt: Histogram,
    lateness: Histogram,
    relay_messages: Counter,
    relay_bytes: Counter,
    slow_consumers: Counter,
    /// With a broker only.
    broker_up: Option<Gauge>,
    /// Set by the engine once its connections exist ([`watch_queues`]).
    queue_probe: Arc<OnceLock<Probe>>,
    /// Where they are served (set when bound).
    addr: OnceLock<SocketAddr>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics")
            .field("addr", &self.addr.get())
            .finish_non_exhaustive()
    }
}

type ReasonLabel = [(&'static str, &'static str); 1];

impl Metrics {
    /// The metrics of a server; `broker`: it has a broker link (`hb_broker_up`).
    pub fn new(broker: bool) -> Self {
        let mut registry = Registry::default();
        let connections = Gauge::default();
        registry.register(
            "hb_connections",
            "Connections open now (accepted, not closed yet)",
            connections.clone(),
        );
        let accepted = Counter::default();
        registry.register("hb_accepted", "Connections accepted", accepted.clone());
        let refused_family = Family::<ReasonLabel, Counter>::default();
        let refused = REFUSALS.map(|r| refused_family.get_or_create(&[("reason", r)]).clone());
        registry.register(
            "hb_refused",
            "Connections refused when accepted (END server-full on the line wire), by cause",
            refused_family,
        );
        let ends_family = Family::<ReasonLabel, Counter>::default();
        let ends =
            EndReason::ALL.map(|r| ends_family.get_or_create(&[("reason", r.as_str())]).clone());
        registry.register(
            "hb_ends",
            "Connections ended, by the END reason sent (or attempted); closed: the client \
             closed it, or it failed, without an END",
            ends_family,
        );
        let heartbeats = Counter::default();
        registry.register(
            "hb_heartbeats_sent",
            "Heartbeats (PING) sent",
            heartbeats.clone(),
        );
        let rtt = Histogram::new(RTT_BUCKETS);
        registry.register(
            "hb_heartbeat_rtt_seconds",
            "Answered heartbeat rounds: time from the last PING sent to the client's answer",
            rtt.clone(),
        );
        let lateness = Histogram::new(LATENESS_BUCKETS);
        registry.register(
            "hb_ghost_lateness_seconds",
            "Clients ended heartbeat-timeout: how long after the deadline (idle + count x \
             interval of silence) the server declared them dead",
            lateness.clone(),
        );
        let relay_messages = Counter::default();
        registry.register(
            "hb_relay_messages",
            "Chat messages relayed to at least one other member",
            relay_messages.clone(),
        );
        let relay_bytes = Counter::default();
        registry.register(
            "hb_relay_bytes",
            "Bytes of chat messages queued to their recipients (counted once per recipient)",
            relay_bytes.clone(),
        );
        let slow_consumers = Counter::default();
        registry.register(
            "hb_slow_consumers",
            "Clients ended as slow consumers (held their senders back, or accepted nothing, \
             for --stall)",
            slow_consumers.clone(),
        );
        let queue_probe: Arc<OnceLock<Probe>> = Arc::default();
        let probe = queue_probe.clone();
        registry.register(
            "hb_queue_bytes",
            "Bytes queued for all clients now, not yet taken by their sockets",
            Sampled::gauge(move || probe.get().map_or(0, |read| read())),
        );
        registry.register(
            "hb_log_lines_dropped",
            "Log lines dropped because stdout did not keep up",
            Sampled::counter(crate::net::events::log_lines_dropped),
        );
        let broker_up = broker.then(|| {
            let g = Gauge::default();
            registry.register(
                "hb_broker_up",
                "1 while the link to the broker (--broker) is up, 0 while it is down",
                g.clone(),
            );
            g
        });
        Self {
            registry,
            connections,
            accepted,
            refused,
            ends,
            heartbeats,
            rtt,
            lateness,
            relay_messages,
            relay_bytes,
            slow_consumers,
            broker_up,
            queue_probe,
            addr: OnceLock::new(),
        }
    }

    /// Counts one event (called by [`EventLog::emit`] for every event, before it is logged).
    pub fn observe(&self, ev: &Event) {
        match ev {
            Event::Connected { .. } => {
                self.accepted.inc();
                self.connections.inc();
            }
            Event::Closed { .. } => {
                self.connections.dec();
            }
            Event::Refused { cause, .. } => {
                self.refused[refusal_class(*cause)].inc();
            }
            Event::EndSent { reason, late, .. } => {
                self.end(*reason);
                if let Some(late) = late {
                    self.lateness.observe(*late);
                }
            }
            // Each is logged only for a connection still open, so it is its one end: the
            // line wire then closes without an END (nothing more is logged about the end).
            Event::ClosedByClient { .. } | Event::WriteFailed { .. } | Event::Insecure { .. } => {
                self.end(EndReason::Closed);
            }
            // The classic wire's END. A failed write was counted `closed` with its
            // WriteFailed above; the others are the line wire's reasons of the same name.
            Event::EndConnectionSent { why, .. } => match why {
                ClassicEnd::HeartbeatTimeout => self.end(EndReason::HeartbeatTimeout),
                ClassicEnd::ServerShutdown => self.end(EndReason::ServerShutdown),
                ClassicEnd::HeartbeatLost | ClassicEnd::DataWriteFailed => {}
                ClassicEnd::ClientClosed => self.end(EndReason::Closed),
            },
            Event::PingSent { .. } => {
                self.heartbeats.inc();
            }
            Event::Answered { rtt, .. } => self.rtt.observe(*rtt),
            Event::SlowConsumer { .. } => {
                self.slow_consumers.inc();
            }
            Event::Cluster(ClusterEvent::LinkUp) => self.set_broker_up(true),
            Event::Cluster(ClusterEvent::LinkDown) | Event::BrokerDown { .. } => {
                self.set_broker_up(false);
            }
            _ => {}
        }
    }

    fn end(&self, reason: EndReason) {
        if let Some(i) = EndReason::ALL.iter().position(|r| *r == reason) {
            self.ends[i].inc();
        }
    }

    fn set_broker_up(&self, up: bool) {
        if let Some(g) = &self.broker_up {
            g.set(i64::from(up));
        }
    }

    /// Chat messages relayed and the bytes queued for their recipients (once per batch).
    pub fn relayed(&self, messages: u64, bytes: u64) {
        if messages > 0 {
            self.relay_messages.inc_by(messages);
        }
        if bytes > 0 {
            self.relay_bytes.inc_by(bytes);
        }
    }

    /// Where the metrics are served, once bound.
    pub fn addr(&self) -> Option<SocketAddr> {
        self.addr.get().copied()
    }

    /// Everything, in the Prometheus text format 0.0.4.
    pub fn render(&self) -> String {
        let mut open_metrics = String::with_capacity(8 * 1024);
        // Writing into a String cannot fail.
        let _ =
            prometheus_client::encoding::text::encode_registry(&mut open_metrics, &self.registry);
        prometheus_text(&open_metrics)
    }
}

/// The index of `cause`'s series in [`REFUSALS`].
fn refusal_class(cause: RefusalCause) -> usize {
    RefusalCause::ALL
        .iter()
        .position(|c| *c == cause)
        .unwrap_or(RefusalCause::ALL.len() - 1)
}

/// OpenMetrics text as prometheus-client writes it, as Prometheus text 0.0.4: a counter
/// family is named with its `_total` on its `# HELP` and `# TYPE` lines, and `# EOF` and
/// `# UNIT` lines go (0.0.4 has none; a reader would take them for comments anyway).
fn prometheus_text(open_metrics: &str) -> String {
    let counters: Vec<&str> = open_metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(open_metrics.len() + 64 * counters.len());
    for line in open_metrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let counter_meta = ["# HELP ", "# TYPE "].into_iter().find_map(|tag| {
            let (name, rest) = line.strip_prefix(tag)?.split_once(' ')?;
            counters.contains(&name).then_some((tag, name, rest))
        });
        match counter_meta {
            Some((tag, name, rest)) => {
                out.push_str(tag);
                out.push_str(name);
                out.push_str("_total ");
                out.push_str(rest);
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// A histogram of durations made of atomics (prometheus-client's own takes a lock per
/// observation). The count is the sum of the buckets, so a scrape always shows them
/// consistent; the sum (kept in nanoseconds, exact) may be one observation ahead.
#[derive(Debug, Clone)]
struct Histogram(Arc<HistogramInner>);

#[derive(Debug)]
struct HistogramInner {
    bounds: &'static [f64],
    /// One per bound, then `+Inf`; not cumulative.
    buckets: Box<[AtomicU64]>,
    sum_nanos: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self(Arc::new(HistogramInner {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_nanos: AtomicU64::new(0),
        }))
    }

    fn observe(&self, d: Duration) {
        let h = &*self.0;
        let secs = d.as_secs_f64();
        let i = h
            .bounds
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(h.bounds.len());
        h.buckets[i].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        h.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }
}

impl EncodeMetric for Histogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), fmt::Error> {
        let h = &*self.0;
        // prometheus-client's encoder takes plain counts and writes them cumulative; its
        // `f64::MAX` bound is `+Inf`.
        let buckets: Vec<(f64, u64)> = h
            .bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::MAX))
            .zip(h.buckets.iter().map(|b| b.load(Ordering::Relaxed)))
            .collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = h.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// A counter or gauge read when scraped.
struct Sampled {
    kind: MetricType,
    read: Probe,
}

impl Sampled {
    fn gauge(read: impl Fn() -> u64 + Send + Sync + 'static) -> Self {
        Self {
            kind: MetricType::Gauge,
            read: Box::new(read),
        }
    }

    fn counter(read: impl Fn() -> u64 + Send + Sync + 'static) -> Self {
        Self {
            kind: MetricType::Counter,
            read: Box::new(read),
        }
    }
}

impl fmt::Debug for Sampled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sampled")
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl EncodeMetric for Sampled {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), fmt::Error> {
        let v = (self.read)();
        match self.kind {
            MetricType::Counter => encoder.encode_counter::<NoLabelSet, u64, u64>(&v, None),
            _ => encoder.encode_gauge(&v),
        }
    }

    fn metric_type(&self) -> MetricType {
        self.kind
    }
}

/// Makes `hb_queue_bytes` read the queues of the connections in `registry(shared)` when
/// scraped. `shared` is held weakly: the metrics never keep a stopped server alive.
pub fn watch_queues<S, C>(
    log: &EventLog,
    shared: &Arc<S>,
    registry: fn(&S) -> &crate::net::registry::Registry<C>,
) where
    S: Send + Sync + 'static,
    C: Member + 'static,
{
    let Some(m) = log.metrics() else {
        return;
    };
    let weak = Arc::downgrade(shared);
    let _ = m.queue_probe.set(Box::new(move || {
        let Some(sh) = weak.upgrade() else {
            return 0;
        };
        // A snapshot of the connections first: no session is locked under the registry's
        // lock.
        let conns = registry(&sh).all();
        conns.iter().map(|c| c.session().queued() as u64).sum()
    }));
}

/// Logs `metrics on http://ADDR/metrics` when the log has bound metrics (the engines call it
/// right after their `listening on` line, which stays the first).
pub fn announce(log: &EventLog) {
    if let Some(addr) = log.metrics().and_then(|m| m.addr()) {
        log.emit(Event::MetricsListening { addr });
    }
}

/// The bound metrics port, ready to [`Exporter::start`].
#[derive(Debug)]
pub struct Exporter {
    listener: TcpListener,
    metrics: Arc<Metrics>,
    stop: Arc<Stop>,
}

/// The running metrics thread.
#[derive(Debug)]
pub struct Running {
    stop: Arc<Stop>,
    thread: JoinHandle<()>,
}

/// Stops the metrics thread: a flag, and a bell that wakes it wherever it waits.
#[derive(Debug)]
pub struct Stop {
    flag: AtomicBool,
    bell: Bell,
}

impl Stop {
    /// Stops the thread (it is gone at once; see [`Running::stop`] to wait for it).
    pub fn stop(&self) {
        self.flag.store(true, Ordering::Release);
        // Never cleared: every later wait of the thread returns at once.
        self.bell.ring();
    }

    fn stopped(&self) -> bool {
        self.flag.load(Ordering::Acquire)
    }
}

impl Exporter {
    /// Binds `addr` (the first of its addresses that works) for `metrics`.
    pub fn bind(addr: &MetricsAddr, metrics: Arc<Metrics>) -> io::Result<Self> {
        let listener = crate::net::try_each_addr(&addr.host, addr.port, TcpListener::bind)?;
        listener.set_nonblocking(true)?;
        let _ = metrics.addr.set(listener.local_addr()?);
        let stop = Arc::new(Stop {
            flag: AtomicBool::new(false),
            bell: Bell::new()?,
        });
        Ok(Self {
            listener,
            metrics,
            stop,
        })
    }

    /// The address bound (the real port when asked for port 0).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.metrics.addr()
    }

    /// What stops the thread (at shutdown), a connection in progress included.
    pub fn stopper(&self) -> Arc<Stop> {
        self.stop.clone()
    }

    /// Starts the `hb-metrics` thread.
    pub fn start(self) -> io::Result<Running> {
        let stop = self.stop.clone();
        let thread = thread::Builder::new()
            .name("hb-metrics".into())
            .stack_size(256 * 1024)
            .spawn(move || serve(&self.listener, &self.metrics, &self.stop))?;
        Ok(Running { stop, thread })
    }
}

impl Running {
    /// Stops the thread and waits for it (a moment: it waits on the stop bell everywhere).
    pub fn stop(self) {
        self.stop.stop();
        let _ = self.thread.join();
    }
}

fn serve(listener: &TcpListener, metrics: &Metrics, stop: &Stop) {
    while !stop.stopped() {
        if wait(
            &[listener.as_fd(), stop.bell.as_fd()],
            PollFlags::IN,
            IDLE_WAIT,
        )
        .is_err()
        {
            thread::sleep(SLICE);
            continue;
        }
        match listener.accept() {
            Ok((stream, _)) => handle(stream, metrics, stop),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            // Out of descriptors, or the like: the scraper retries; do not spin.
            Err(_) => thread::sleep(SLICE),
        }
    }
}

/// How reading a request head ended.
#[derive(Debug, PartialEq, Eq)]
enum Head {
    /// Complete: this many bytes.
    Complete(usize),
    /// [`MAX_HEAD`] bytes and no end in sight.
    TooLarge,
    /// The client closed, failed, or took too long: close without a word.
    Gone,
}

/// Serves one connection, within [`REQUEST_DEADLINE`] from now (and stops early when the
/// server stops).
fn handle(stream: TcpStream, metrics: &Metrics, stop: &Stop) {
    let deadline = Instant::now() + REQUEST_DEADLINE;
    if stream.set_nonblocking(true).is_err() {
        return;
    }
    let mut buf = vec![0u8; MAX_HEAD];
    let head = read_head(&stream, &mut buf, deadline, stop);
    let answer = match head {
        Head::Complete(n) => route(&buf[..n]),
        Head::TooLarge => Answer::TooLarge,
        Head::Gone => return,
    };
    let bytes = answer.response(metrics);
    if write_all_by(&stream, &bytes, deadline, stop) {
        let _ = stream.shutdown(Shutdown::Write);
        discard_input(
            &stream,
            &mut buf,
            deadline.min(Instant::now() + LINGER),
            stop,
        );
    }
}

/// Reads until the blank line that ends the head, [`MAX_HEAD`] bytes, or `deadline`.
fn read_head(stream: &TcpStream, buf: &mut [u8], deadline: Instant, stop: &Stop) -> Head {
    let mut len = 0;
    loop {
        if len == buf.len() {
            return Head::TooLarge;
        }
        if !readable_by(stream, deadline, stop) {
            return Head::Gone;
        }
        match (&*stream).read(&mut buf[len..]) {
            Ok(0) => return Head::Gone,
            Ok(n) => {
                // The end may straddle two reads: look from a little before the new bytes.
                let from = len.saturating_sub(3);
                len += n;
                if let Some(end) = head_end(&buf[from..len]) {
                    return Head::Complete(from + end);
                }
            }
            Err(e) if crate::net::is_retryable_io(&e) => {}
            Err(_) => return Head::Gone,
        }
    }
}

/// Where the head in `bytes` ends (after its blank line: CRLF CRLF, or LF LF from a lax
/// client).
fn head_end(bytes: &[u8]) -> Option<usize> {
    let crlf = memchr::memmem::find(bytes, b"\r\n\r\n").map(|i| i + 4);
    let lf = memchr::memmem::find(bytes, b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Waits until `stream` has input (or hung up); false when `deadline` passed or the server
/// stops first.
fn readable_by(stream: &TcpStream, deadline: Instant, stop: &Stop) -> bool {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stop.stopped() {
            return false;
        }
        match wait(&[stream.as_fd(), stop.bell.as_fd()], PollFlags::IN, left) {
            Ok(r) if r.is_ready(0) => return !stop.stopped(),
            Ok(_) => {}
            Err(_) => return false,
        }
    }
}

/// Writes all of `bytes` by `deadline`; false if it could not.
fn write_all_by(stream: &TcpStream, mut bytes: &[u8], deadline: Instant, stop: &Stop) -> bool {
    while !bytes.is_empty() {
        match (&*stream).write(bytes) {
            Ok(0) => return false,
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                // The bell is always writable, so this wait watches the socket alone, in
                // slices, looking at the flag between them.
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() || stop.stopped() {
                    return false;
                }
                if wait_one(stream, PollFlags::OUT, left.min(SLICE)).is_err() {
                    return false;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    true
}

/// Reads and drops input until the client closes or `until`.
fn discard_input(stream: &TcpStream, buf: &mut [u8], until: Instant, stop: &Stop) {
    while readable_by(stream, until, stop) {
        match (&*stream).read(buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if crate::net::is_retryable_io(&e) => {}
            Err(_) => return,
        }
    }
}

/// What a request gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// `200`: the metrics.
    Metrics,
    /// `400`: not an HTTP/1 request line.
    BadRequest,
    /// `404`: another path.
    NotFound,
    /// `405`: another method.
    MethodNotAllowed,
    /// `431`: a head over [`MAX_HEAD`].
    TooLarge,
}

/// What the request head `head` (request line first) asks for.
fn route(head: &[u8]) -> Answer {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Answer::BadRequest;
    };
    if method.is_empty() || !version.starts_with(b"HTTP/1.") {
        return Answer::BadRequest;
    }
    let path = target.split(|&b| b == b'?').next().unwrap_or_default();
    if path != b"/metrics" {
        Answer::NotFound
    } else if method != b"GET" {
        Answer::MethodNotAllowed
    } else {
        Answer::Metrics
    }
}

impl Answer {
    /// The whole response: status line, headers, body. Fixed texts only, bar the metrics.
    fn response(self, metrics: &Metrics) -> Vec<u8> {
        const PLAIN: &str = "text/plain; charset=utf-8";
        let (status, extra, content_type, body) = match self {
            Self::Metrics => (
                "200 OK",
                "",
                "text/plain; version=0.0.4; charset=utf-8",
                metrics.render(),
            ),
            Self::BadRequest => ("400 Bad Request", "", PLAIN, "bad request\n".into()),
            Self::NotFound => (
                "404 Not Found",
                "",
                PLAIN,
                "not found: only /metrics is served here\n".into(),
            ),
            Self::MethodNotAllowed => (
                "405 Method Not Allowed",
                "Allow: GET\r\n",
                PLAIN,
                "method not allowed: only GET\n".into(),
            ),
            Self::TooLarge => (
                "431 Request Header Fields Too Large",
                "",
                PLAIN,
                format!("request head over {} bytes\n", MAX_HEAD),
            ),
        };
        let mut out = format!(
            "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
             {extra}Connection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        out.extend_from_slice(body.as_bytes());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn peer() -> SocketAddr {
        "127.0.0.1:5000".parse().unwrap()
    }

    /// The value of the series `series` (name and labels, exactly as rendered).
    fn value(text: &str, series: &str) -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
            .parse()
            .unwrap()
    }

    #[test]
    fn events_move_the_counters() {
        let m = Metrics::new(false);
        let (id, peer) = (1, peer());
        m.observe(&Event::Connected { id, peer });
        m.observe(&Event::Connected { id: 2, peer });
        m.observe(&Event::PingSent {
            id,
            peer,
            k: 1,
            n: 2,
        });
        m.observe(&Event::PingSent {
            id,
            peer,
            k: 2,
            n: 2,
        });
        m.observe(&Event::Answered {
            id,
            peer,
            after: 1,
            rtt: Duration::from_micros(700),
        });
        m.observe(&Event::EndSent {
            id,
            peer,
            reason: EndReason::HeartbeatTimeout,
            delivered: true,
            late: Some(Duration::from_millis(3)),
        });
        m.observe(&Event::ClosedByClient {
            id: 2,
            peer,
            error: None,
        });
        m.observe(&Event::Closed { id, peer });
        m.observe(&Event::Refused {
            peer: Some(peer),
            reason: EndReason::ServerFull,
            detail: "max-conns-per-ip 2 reached for 127.0.0.1".into(),
            cause: RefusalCause::MaxConnsPerIp,
        });
        m.relayed(3, 42);
        let t = m.render();
        assert_eq!(value(&t, "hb_connections"), 1.0);
        assert_eq!(value(&t, "hb_accepted_total"), 2.0);
        assert_eq!(value(&t, "hb_heartbeats_sent_total"), 2.0);
        assert_eq!(value(&t, "hb_heartbeat_rtt_seconds_count"), 1.0);
        assert_eq!(value(&t, "hb_heartbeat_rtt_seconds_sum"), 0.0007);
        assert_eq!(
            value(&t, "hb_heartbeat_rtt_seconds_bucket{le=\"0.0005\"}"),
            0.0
        );
        assert_eq!(
            value(&t, "hb_heartbeat_rtt_seconds_bucket{le=\"0.001\"}"),
            1.0
        );
        assert_eq!(
            value(&t, "hb_heartbeat_rtt_seconds_bucket{le=\"+Inf\"}"),
            1.0
        );
        assert_eq!(value(&t, "hb_ghost_lateness_seconds_count"), 1.0);
        assert_eq!(
            value(&t, "hb_ghost_lateness_seconds_bucket{le=\"0.0025\"}"),
            0.0
        );
        assert_eq!(
            value(&t, "hb_ghost_lateness_seconds_bucket{le=\"0.005\"}"),
            1.0
        );
        assert_eq!(
            value(&t, "hb_ends_total{reason=\"heartbeat-timeout\"}"),
            1.0
        );
        assert_eq!(value(&t, "hb_ends_total{reason=\"closed\"}"), 1.0);
        assert_eq!(value(&t, "hb_ends_total{reason=\"quit\"}"), 0.0);
        assert_eq!(
            value(&t, "hb_refused_total{reason=\"max-conns-per-ip\"}"),
            1.0
        );
        assert_eq!(value(&t, "hb_refused_total{reason=\"max-conns\"}"), 0.0);
        assert_eq!(value(&t, "hb_relay_messages_total"), 3.0);
        assert_eq!(value(&t, "hb_relay_bytes_total"), 42.0);
        assert_eq!(value(&t, "hb_queue_bytes"), 0.0, "no engine watched yet");
        assert!(
            !t.contains("hb_broker_up"),
            "no broker, no link state:\n{t}"
        );
    }

    #[test]
    fn every_end_reason_and_refusal_class_is_a_series_from_the_start() {
        let t = Metrics::new(true).render();
        for r in EndReason::ALL {
            assert_eq!(value(&t, &format!("hb_ends_total{{reason=\"{r}\"}}")), 0.0);
        }
        for r in REFUSALS {
            assert_eq!(
                value(&t, &format!("hb_refused_total{{reason=\"{r}\"}}")),
                0.0
            );
        }
        assert_eq!(value(&t, "hb_broker_up"), 0.0);
    }

    #[test]
    fn the_text_is_prometheus_0_0_4_counters_named_with_total() {
        let t = Metrics::new(false).render();
        assert!(t.contains("# HELP hb_ends_total Connections ended"), "{t}");
        assert!(t.contains("# TYPE hb_ends_total counter\n"), "{t}");
        assert!(t.contains("# TYPE hb_connections gauge\n"), "{t}");
        assert!(
            t.contains("# TYPE hb_heartbeat_rtt_seconds histogram\n"),
            "{t}"
        );
        assert!(
            t.contains("# TYPE hb_log_lines_dropped_total counter\n"),
            "{t}"
        );
        assert!(!t.contains("# EOF") && !t.contains("# UNIT"), "{t}");
        // Every sample belongs to the family its TYPE line names.
        let mut family = "";
        for line in t.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                family = rest.split(' ').next().unwrap();
            } else if !line.starts_with('#') {
                assert!(line.starts_with(family), "{line} after TYPE {family}");
            }
        }
    }

    #[test]
    fn refusals_are_classed_by_their_cause() {
        for (cause, class) in [
            (RefusalCause::MaxConns, "max-conns"),
            (RefusalCause::MaxConnsPerIp, "max-conns-per-ip"),
            (RefusalCause::OutOfThreads, "out-of-threads"),
            (RefusalCause::OutOfFds, "out-of-fds"),
            (RefusalCause::Tls, "tls"),
            (RefusalCause::Other, "other"),
        ] {
            assert_eq!(REFUSALS[refusal_class(cause)], class, "{cause:?}");
        }
    }

    #[test]
    fn only_get_metrics_is_served() {
        let r = |head: &str| route(head.as_bytes());
        assert_eq!(
            r("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Answer::Metrics
        );
        assert_eq!(r("GET /metrics?name[]=x HTTP/1.0\r\n\r\n"), Answer::Metrics);
        assert_eq!(r("GET /metrics HTTP/1.1\n\n"), Answer::Metrics);
        assert_eq!(
            r("POST /metrics HTTP/1.1\r\n\r\n"),
            Answer::MethodNotAllowed
        );
        assert_eq!(
            r("HEAD /metrics HTTP/1.1\r\n\r\n"),
            Answer::MethodNotAllowed
        );
        assert_eq!(r("get /metrics HTTP/1.1\r\n\r\n"), Answer::MethodNotAllowed);
        assert_eq!(r("GET /other HTTP/1.1\r\n\r\n"), Answer::NotFound);
        assert_eq!(r("GET /metrics/ HTTP/1.1\r\n\r\n"), Answer::NotFound);
        assert_eq!(r("GET http://x/metrics HTTP/1.1\r\n\r\n"), Answer::NotFound);
        assert_eq!(r("GET /metrics\r\n\r\n"), Answer::BadRequest);
        assert_eq!(r("GET  /metrics HTTP/1.1\r\n\r\n"), Answer::BadRequest);
        assert_eq!(r("GET /metrics HTTP/2\r\n\r\n"), Answer::BadRequest);
        assert_eq!(r("\r\n\r\n"), Answer::BadRequest);
    }

    #[test]
    fn answers_reflect_nothing_of_the_request() {
        let m = Metrics::new(false);
        for answer in [
            Answer::BadRequest,
            Answer::NotFound,
            Answer::MethodNotAllowed,
            Answer::TooLarge,
        ] {
            let text = String::from_utf8(answer.response(&m)).unwrap();
            let (head, body) = text.split_once("\r\n\r\n").unwrap();
            assert!(head.contains("\r\nConnection: close"), "{head}");
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(len, body.len());
        }
        let ok = String::from_utf8(Answer::Metrics.response(&m)).unwrap();
        assert!(ok.starts_with(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
        ));
    }

    #[test]
    fn the_head_ends_at_its_blank_line() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\nrest"), Some(18));
        assert_eq!(head_end(b"GET / HTTP/1.1\n\n"), Some(16));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: x\r\n"), None);
    }

    #[test]
    fn histogram_buckets_sum_and_count() {
        let h = Histogram::new(&[0.001, 0.01]);
        for us in [500, 1000, 1001, 20_000] {
            h.observe(Duration::from_micros(us));
        }
        let mut reg = Registry::default();
        reg.register("h_seconds", "A test", h);
        let mut text = String::new();
        prometheus_client::encoding::text::encode_registry(&mut text, &reg).unwrap();
        assert!(text.contains("h_seconds_count 4\n"), "{text}");
        assert!(
            text.contains("h_seconds_bucket{le=\"0.001\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("h_seconds_bucket{le=\"0.01\"} 3\n"), "{text}");
        assert!(text.contains("h_seconds_bucket{le=\"+Inf\"} 4\n"), "{text}");
        assert!(text.contains("h_seconds_sum 0.022501\n"), "{text}");
    }
}
