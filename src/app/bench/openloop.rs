//! Measurement 6, the relay in an open loop: one publisher writes as fast as the server
//! accepts, receivers read as fast as they can, against hb-server, `ncat --chat` and Redis
//! pub/sub in the same run.
//!
//! ```text
//!   publisher thread ── blocking write() of ~50 KiB batches, numbered 100-byte messages,
//!        │               for the window (SO_SNDTIMEO 20 ms so the clock is checked)
//!   reply thread ────── reads the publisher's socket (Redis replies, LEFT lines) so the
//!        │               server never buffers unread output for it
//!   main thread ─────── epoll over the receivers: read, count (`tally`), longest pause;
//!        │               the stuck reader (if any) is not read, only watched for a hang-up
//!   watcher (Redis) ─── CLIENT LIST every 10 ms: when the stuck reader is gone
//! ```
//! The closed-loop measurement (5) bounds what is in flight and so measures latency; this one
//! is what real publishers do (redis-benchmark and memtier_benchmark push as fast as the
//! server accepts), and shows whether a fast publisher gets healthy readers ended.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use rustix::event::epoll::{self, EventData, EventFlags};
use rustix::event::Timespec;

use super::engines::Engine;
use super::measure::{peer_missing, start_peer, Ctx, Kind, KINDS};
use super::peers::{hb_accepts_stall, resp_command, Peer};
use super::plot;
use super::procinfo;
use super::tally::{self, GapMeter, OpenStats, ReceiverOutcome, Tally};
use super::verdict::{self, judge, Goal, Spread};
use super::{BenchError, Outcome};

/// Messages per publisher write batch (about 50 KiB of chat lines).
const BATCH: usize = 512;
/// The publisher's send timeout: how late it may notice the end of the window.
const SEND_TIMEOUT: Duration = Duration::from_millis(20);
/// How long the publisher may take, after the window, to complete the message it was cut
/// off in (a server blocked on a stuck reader, like ncat, may never take it).
const FINISH_WAIT: Duration = Duration::from_millis(500);
/// Bytes read from a receiver per `read()`.
const READ_BUF: usize = 256 * 1024;
/// Reads per receiver per wake-up, so one busy receiver cannot starve the others.
const READS_PER_EVENT: usize = 4;
/// Receive buffer of the stuck reader: small, so its backlog reaches the server sooner.
const STUCK_RCVBUF: usize = 4096;
/// How long a connection may take to be greeted or subscribed.
pub(super) const SETUP_WAIT: Duration = Duration::from_secs(5);
/// How often the Redis watcher asks `CLIENT LIST`.
const WATCH_EVERY: Duration = Duration::from_millis(10);
/// The drain ends early when no receiver got a byte for this long.
pub(super) const DRAIN_IDLE: Duration = Duration::from_millis(500);
/// hb-server's default `--stall` (CONTRACT section 2), the base of the stuck-reader targets.
const STALL: Duration = Duration::from_millis(500);

fn io_err(context: &'static str) -> impl FnOnce(io::Error) -> BenchError {
    BenchError::io(context)
}

/// Appends message `seq` framed for `kind`: `MSG <payload>\n`, `<payload>\n`, or a RESP
/// `PUBLISH bench <payload>`. Every message of a kind has the same length.
pub fn open_frame(kind: Kind, seq: u64, out: &mut Vec<u8>) {
    match kind {
        Kind::Hb(_) => {
            out.extend_from_slice(b"MSG ");
            tally::payload(seq, out);
            out.push(b'\n');
        }
        Kind::Ncat => {
            tally::payload(seq, out);
            out.push(b'\n');
        }
        Kind::Redis => {
            let head = format!(
                "*3\r\n$7\r\nPUBLISH\r\n$5\r\nbench\r\n${}\r\n",
                tally::PAYLOAD
            );
            out.extend_from_slice(head.as_bytes());
            tally::payload(seq, out);
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// What the receivers send first: a name, a subscription, or nothing (ncat).
fn join(kind: Kind, name: &str) -> Vec<u8> {
    match kind {
        Kind::Hb(_) => format!("JOIN {name}\n").into_bytes(),
        Kind::Redis => resp_command(&[b"SUBSCRIBE", b"bench"]),
        Kind::Ncat => Vec::new(),
    }
}

/// Connects to `addr` with an optional small receive buffer, sends `hello` and waits for the
/// peer's first bytes (HELLO, ncat's greeting, the subscription's confirmation), which are
/// returned for the receiver's tally. Blocking; the caller makes it non-blocking after.
pub(super) fn connect_greeted(
    addr: SocketAddr,
    rcvbuf: Option<usize>,
    hello: &[u8],
) -> Result<(TcpStream, Vec<u8>), BenchError> {
    let fd = rustix::net::socket(
        rustix::net::AddressFamily::INET,
        rustix::net::SocketType::STREAM,
        None,
    )
    .map_err(|e| BenchError::io("creating a socket")(e.into()))?;
    if let Some(n) = rcvbuf {
        rustix::net::sockopt::set_socket_recv_buffer_size(&fd, n)
            .map_err(|e| BenchError::io("setting SO_RCVBUF")(e.into()))?;
    }
    rustix::net::connect(&fd, &addr).map_err(|e| BenchError::io("connecting")(e.into()))?;
    let mut s = TcpStream::from(fd);
    let _ = s.set_nodelay(true);
    if !hello.is_empty() {
        s.write_all(hello).map_err(io_err("sending the join"))?;
    }
    s.set_read_timeout(Some(SETUP_WAIT))
        .map_err(io_err("setting a timeout"))?;
    let mut first = vec![0u8; 4096];
    let n = s
        .read(&mut first)
        .map_err(io_err("waiting for the greeting"))?;
    if n == 0 {
        return Err(BenchError::Measurement(
            "the peer closed a new connection before greeting it".into(),
        ));
    }
    first.truncate(n);
    Ok((s, first))
}

/// One receiver on the main thread's epoll set.
pub(super) struct Rx {
    stream: TcpStream,
    /// What it received.
    pub(super) tally: Tally,
    /// Its longest pause.
    pub(super) gap: GapMeter,
    /// Read (false: the stuck reader, until it resumes after the window).
    reading: bool,
    in_set: bool,
    /// When the peer was seen hanging up (FIN, reset) while it was not reading.
    hup_at: Option<Instant>,
    /// When reading hit EOF or an error, and which.
    closed: Option<(Instant, String)>,
    /// Bytes read.
    pub(super) bytes: u64,
}

impl Rx {
    /// Ended by the server (`END`, EOF or an error).
    pub(super) fn ended(&self) -> bool {
        self.closed.is_some() || self.tally.end().is_some()
    }

    /// What it got, for the verdicts.
    pub(super) fn outcome(&self) -> ReceiverOutcome {
        let s = self.tally.seqs();
        ReceiverOutcome {
            counted: self.tally.counted(),
            received: self.tally.received(),
            highest: s.highest(),
            gaps: s.gaps(),
            reordered: s.reordered(),
            duplicates: s.duplicates(),
            ended: self.ended(),
            max_gap: self.gap.max(),
        }
    }
}

/// The receivers' epoll loop.
pub(super) struct Receivers {
    epoll: OwnedFd,
    /// The receivers, in the order added.
    pub(super) rxs: Vec<Rx>,
    buf: Vec<u8>,
    events: Vec<epoll::Event>,
}

impl Receivers {
    /// An empty set.
    pub(super) fn new() -> Result<Self, BenchError> {
        Ok(Self {
            epoll: epoll::create(epoll::CreateFlags::CLOEXEC)
                .map_err(|e| BenchError::io("creating an epoll set")(e.into()))?,
            rxs: Vec::new(),
            buf: vec![0; READ_BUF],
            events: Vec::with_capacity(256),
        })
    }

    /// Adds a connected receiver; `first` is what it already read.
    pub(super) fn add(
        &mut self,
        stream: TcpStream,
        first: &[u8],
        reading: bool,
    ) -> Result<(), BenchError> {
        stream
            .set_nonblocking(true)
            .map_err(io_err("making a receiver non-blocking"))?;
        let id = self.rxs.len() as u64;
        let flags = if reading {
            EventFlags::IN | EventFlags::RDHUP
        } else {
            EventFlags::RDHUP
        };
        epoll::add(&self.epoll, &stream, EventData::new_u64(id), flags)
            .map_err(|e| BenchError::io("adding a receiver to epoll")(e.into()))?;
        let mut tally = Tally::default();
        tally.feed(first);
        self.rxs.push(Rx {
            stream,
            tally,
            gap: GapMeter::default(),
            reading,
            in_set: true,
            hup_at: None,
            closed: None,
            bytes: first.len() as u64,
        });
        Ok(())
    }

    /// Starts reading a receiver that was stuck.
    fn resume(&mut self, id: usize) {
        let r = &mut self.rxs[id];
        r.reading = true;
        let data = EventData::new_u64(id as u64);
        let flags = EventFlags::IN | EventFlags::RDHUP;
        if r.in_set {
            let _ = epoll::modify(&self.epoll, &r.stream, data, flags);
        } else if r.closed.is_none() {
            r.in_set = epoll::add(&self.epoll, &r.stream, data, flags).is_ok();
        }
    }

    /// Starts or stops counting messages towards the window's rate.
    pub(super) fn set_counting(&mut self, on: bool, now: Instant) {
        for r in &mut self.rxs {
            r.tally.set_counting(on);
            if r.reading && !r.ended() {
                // The window's edges count as reads: a receiver that got nothing from the
                // publisher's start, or nothing before its end, paused for that long.
                r.gap.note(now);
            }
        }
    }

    /// Waits at most `timeout` and reads what is ready.
    pub(super) fn pump(&mut self, timeout: Duration, counting: bool) -> Result<(), BenchError> {
        self.events.clear();
        let ts = Timespec {
            tv_sec: timeout.as_secs() as _,
            tv_nsec: timeout.subsec_nanos() as _,
        };
        match epoll::wait(
            &self.epoll,
            rustix::buffer::spare_capacity(&mut self.events),
            Some(&ts),
        ) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(BenchError::io("waiting on the receivers")(e.into())),
        }
        let ready: Vec<(usize, EventFlags)> = self
            .events
            .iter()
            .map(|e| (e.data.u64() as usize, e.flags))
            .collect();
        for (id, flags) in ready {
            let now = Instant::now();
            let r = &mut self.rxs[id];
            if !r.reading {
                if flags.intersects(EventFlags::RDHUP | EventFlags::HUP | EventFlags::ERR) {
                    r.hup_at.get_or_insert(now);
                }
                // A stuck reader's hang-up is all we wanted; HUP would repeat forever.
                let _ = epoll::delete(&self.epoll, &r.stream);
                r.in_set = false;
                continue;
            }
            for _ in 0..READS_PER_EVENT {
                match (&r.stream).read(&mut self.buf) {
                    Ok(0) => {
                        r.closed = Some((Instant::now(), "EOF".into()));
                        break;
                    }
                    Ok(n) => {
                        if counting {
                            r.gap.note(Instant::now());
                        }
                        r.bytes += n as u64;
                        r.tally.feed(&self.buf[..n]);
                        if n < self.buf.len() {
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        r.closed = Some((Instant::now(), e.to_string()));
                        break;
                    }
                }
            }
            if r.closed.is_some() && r.in_set {
                let _ = epoll::delete(&self.epoll, &r.stream);
                r.in_set = false;
            }
        }
        Ok(())
    }
}

/// What the publisher thread did.
pub(super) struct Published {
    /// Whole messages the socket accepted.
    pub(super) sent: u64,
    /// Why it stopped before the window ended, if it did.
    pub(super) error: Option<String>,
    /// How busy hb-bench's receiving thread was over the window (its CPU time / the
    /// window; None when /proc could not say). Near 1, the receivers, not the server, set
    /// the pace.
    pub(super) rx_busy: Option<f64>,
}

/// CPU time of the calling thread so far, in nanoseconds (the scheduler's account).
fn thread_cpu_ns() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    procinfo::parse_schedstat_ns(&text)
}

/// Writes numbered messages as fast as the socket takes them until `end`, then completes
/// the message cut in half (bounded), so the server never sees half a line.
/// The open-loop window: the receivers count from `t0` while a thread publishes as fast
/// as `publisher` accepts until `t0 + window`; returns what it published and when counting
/// stopped.
pub(super) fn publish_counting(
    rxs: &mut Receivers,
    publisher: &TcpStream,
    kind: Kind,
    t0: Instant,
    window: Duration,
) -> Result<(Published, Instant), BenchError> {
    rxs.set_counting(true, t0);
    let cpu0 = thread_cpu_ns();
    let done = Arc::new(AtomicBool::new(false));
    let pubt = {
        let s = publisher
            .try_clone()
            .map_err(io_err("cloning the publisher"))?;
        let done = done.clone();
        thread::spawn(move || {
            let p = publish(&s, kind, t0 + window);
            done.store(true, Ordering::Release);
            p
        })
    };
    while !done.load(Ordering::Acquire) {
        rxs.pump(Duration::from_millis(5), true)?;
    }
    let t1 = Instant::now();
    let rx_busy = match (cpu0, thread_cpu_ns()) {
        (Some(a), Some(b)) if t1 > t0 => {
            Some(b.saturating_sub(a) as f64 / (t1 - t0).as_nanos() as f64)
        }
        _ => None,
    };
    rxs.set_counting(false, t1);
    let mut published = pubt
        .join()
        .map_err(|_| BenchError::Measurement("the publisher thread panicked".into()))?;
    published.rx_busy = rx_busy;
    Ok((published, t1))
}

pub(super) fn publish(mut s: &TcpStream, kind: Kind, end: Instant) -> Published {
    let mut one = Vec::new();
    open_frame(kind, 1, &mut one);
    let frame_len = one.len() as u64;
    let mut batch = Vec::with_capacity(BATCH * one.len());
    let mut next_seq = 1u64;
    let mut off = 0usize;
    let mut written = 0u64;
    let mut error = None;
    let _ = s.set_write_timeout(Some(SEND_TIMEOUT));
    let mut finishing: Option<Instant> = None;
    loop {
        let now = Instant::now();
        match finishing {
            None if now >= end => {
                if written % frame_len == 0 {
                    break;
                }
                finishing = Some(now + FINISH_WAIT);
            }
            Some(limit) if written % frame_len == 0 || now >= limit => break,
            _ => {}
        }
        if off == batch.len() {
            batch.clear();
            off = 0;
            for _ in 0..BATCH {
                open_frame(kind, next_seq, &mut batch);
                next_seq += 1;
            }
        }
        let upto = if finishing.is_some() {
            // Only the rest of the message in flight.
            off + (frame_len - written % frame_len) as usize
        } else {
            batch.len()
        };
        match s.write(&batch[off..upto]) {
            Ok(0) => {
                error = Some("the socket took no bytes".into());
                break;
            }
            Ok(n) => {
                off += n;
                written += n as u64;
            }
            Err(e) if crate::net::is_retryable_io(&e) => {}
            Err(e) => {
                error = Some(e.to_string());
                break;
            }
        }
    }
    Published {
        sent: written / frame_len,
        error,
        rx_busy: None,
    }
}

/// Reads and discards what the server sends the publisher (Redis `:N` replies, chat
/// `JOINED`/`LEFT`), until EOF or `stop`; returns the lines read and the Redis errors.
pub(super) fn drain_replies(mut s: TcpStream, stop: Arc<AtomicBool>) -> (u64, u64) {
    let _ = s.set_read_timeout(Some(Duration::from_millis(50)));
    let mut buf = vec![0u8; 64 * 1024];
    let (mut lines, mut errors) = (0u64, 0u64);
    let mut at_line_start = true;
    while !stop.load(Ordering::Relaxed) {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                for &b in &buf[..n] {
                    if at_line_start && b == b'-' {
                        errors += 1;
                    }
                    at_line_start = b == b'\n';
                    lines += u64::from(at_line_start);
                }
            }
            Err(e) if crate::net::is_retryable_io(&e) => {}
            Err(_) => break,
        }
    }
    (lines, errors)
}

/// Reads one RESP bulk-string reply (`$len\r\n...\r\n`) from a blocking stream.
fn read_bulk(s: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<()> {
    buf.clear();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
            let head = std::str::from_utf8(&buf[..i]).unwrap_or("");
            let len: usize = head
                .strip_prefix('$')
                .and_then(|l| l.parse().ok())
                .ok_or_else(|| io::Error::other(format!("unexpected reply {head:?}")))?;
            if buf.len() >= i + 2 + len + 2 {
                return Ok(());
            }
        }
        if buf.len() > 1 << 20 {
            return Err(io::Error::other("CLIENT LIST reply too long"));
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Asks Redis `CLIENT LIST` every [`WATCH_EVERY`] until `who` is no longer listed (then
/// returns when that was seen) or `stop` is set.
fn watch_redis(addr: SocketAddr, who: SocketAddr, stop: Arc<AtomicBool>) -> Option<Instant> {
    let mut s = TcpStream::connect(addr).ok()?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let needle = format!("addr={who} ");
    let ask = resp_command(&[b"CLIENT", b"LIST"]);
    let mut buf = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        s.write_all(&ask).ok()?;
        read_bulk(&mut s, &mut buf).ok()?;
        let listed = buf.windows(needle.len()).any(|w| w == needle.as_bytes());
        if !listed {
            return Some(Instant::now());
        }
        thread::sleep(WATCH_EVERY);
    }
    None
}

/// What happened to the stuck reader.
#[derive(Debug, Clone, Default)]
struct StuckFate {
    /// Seconds from the publisher's start until the server dropped it, by the server's own
    /// account: hb-server's log line (read by hb-bench) or Redis' `CLIENT LIST`.
    server_s: Option<f64>,
    /// The same from the timestamp printed in hb-server's log line.
    log_stamp_s: Option<f64>,
    /// Seconds until its socket saw the hang-up (FIN or reset) while it was not reading.
    hup_s: Option<f64>,
    /// The `END` it found when it read at last.
    end: Option<String>,
    /// hb-server: how long it held its senders back before it was ended, by the server's log.
    held_ms: Option<f64>,
    /// Bytes it had received by then.
    bytes: u64,
}

impl StuckFate {
    /// The best evidence of when it was ended, in seconds from the publisher's start.
    fn ended_s(&self) -> Option<f64> {
        self.server_s.or(self.hup_s)
    }
}

/// One open-loop run.
struct OpenRun {
    /// The healthy receivers' row.
    stats: OpenStats,
    /// Messages the publisher's socket accepted.
    sent: u64,
    /// Seconds the publisher ran (the rate's denominator).
    secs: f64,
    /// The stuck reader, when there was one.
    stuck: Option<StuckFate>,
    /// The publisher stopped early.
    publisher_error: Option<String>,
    /// Overlong lines and impossible sequence numbers (a framing bug), summed over receivers.
    overlong: u64,
    /// Receivers that got nothing and were not ended (smoke checks there are none).
    silent: usize,
    /// The server's CPU time (all its threads, user and system) from the window's start to
    /// the drain's end, in nanoseconds per message the healthy receivers got meanwhile: what
    /// a delivery costs the server itself, apart from the clients sharing its cores.
    cpu_ns_per_delivery: Option<f64>,
    /// How busy hb-bench's receiving thread was over the window (see [`Published`]).
    rx_busy: Option<f64>,
}

/// One run: `receivers` healthy readers (+ a stuck one), a publisher for `window`, a drain.
fn open_run(
    kind: Kind,
    peer: &mut Peer,
    receivers: usize,
    stuck: bool,
    window: Duration,
    drain: Duration,
) -> Result<OpenRun, BenchError> {
    let mut rxs = Receivers::new()?;
    for i in 0..receivers {
        let (s, first) = connect_greeted(peer.addr, None, &join(kind, &format!("r{i}")))?;
        rxs.add(s, &first, true)?;
    }
    let stuck_addr = if stuck {
        let (s, first) = connect_greeted(peer.addr, Some(STUCK_RCVBUF), &join(kind, "stuck"))?;
        let local = s
            .local_addr()
            .map_err(io_err("reading the local address"))?;
        rxs.add(s, &first, false)?;
        Some(local)
    } else {
        None
    };
    let stuck_id = stuck.then_some(receivers);
    let publisher = if kind.is_hb() {
        connect_greeted(peer.addr, None, b"JOIN publisher\n")?.0
    } else if kind == Kind::Ncat {
        connect_greeted(peer.addr, None, b"")?.0
    } else {
        TcpStream::connect(peer.addr).map_err(io_err("connecting the publisher"))?
    };
    let _ = publisher.set_nodelay(true);
    publisher
        .set_read_timeout(None)
        .map_err(io_err("setting a timeout"))?;
    let stop = Arc::new(AtomicBool::new(false));
    let replies = {
        let s = publisher
            .try_clone()
            .map_err(io_err("cloning the publisher"))?;
        let stop = stop.clone();
        thread::spawn(move || drain_replies(s, stop))
    };
    // Probe (seq 0) until every healthy receiver hears the publisher.
    let setup_end = Instant::now() + SETUP_WAIT;
    let mut probe = Vec::new();
    open_frame(kind, 0, &mut probe);
    let mut next_probe = Instant::now();
    while rxs.rxs[..receivers].iter().any(|r| r.tally.probes() == 0) {
        if Instant::now() > setup_end {
            stop.store(true, Ordering::Relaxed);
            return Err(BenchError::Measurement(format!(
                "{}: only {} of {receivers} receivers heard the publisher",
                kind.name(),
                rxs.rxs[..receivers]
                    .iter()
                    .filter(|r| r.tally.probes() > 0)
                    .count()
            )));
        }
        if Instant::now() >= next_probe {
            (&publisher).write_all(&probe).map_err(io_err("probing"))?;
            next_probe = Instant::now() + Duration::from_millis(50);
        }
        rxs.pump(Duration::from_millis(5), false)?;
    }
    // The window: the publisher on its thread, the receivers here (probes still on their
    // way are seq 0, which the tallies count apart: no need to wait them out).
    let watcher = match (kind, stuck_addr) {
        (Kind::Redis, Some(who)) => {
            let (addr, stop) = (peer.addr, stop.clone());
            Some(thread::spawn(move || watch_redis(addr, who, stop)))
        }
        _ => None,
    };
    let received = |rxs: &Receivers| -> u64 {
        rxs.rxs[..receivers]
            .iter()
            .map(|r| r.tally.received())
            .sum()
    };
    let got0 = received(&rxs);
    let cpu0 = procinfo::cpu_ns(peer.pid());
    let (t0, wall0) = (Instant::now(), SystemTime::now());
    let (published, t1) = publish_counting(&mut rxs, &publisher, kind, t0, window)?;
    let sent = published.sent;
    // The stuck reader resumes first: a peer that blocks on it (ncat) holds the others'
    // last messages back, and that is a stall, not a loss.
    if let Some(id) = stuck_id {
        rxs.resume(id);
    }
    // Drain until every live receiver has everything, `drain` passes, or nothing at all
    // arrived for DRAIN_IDLE (nothing more is coming).
    let drain_end = Instant::now() + drain;
    let mut last_progress = (Instant::now(), 0u64);
    while Instant::now() < drain_end
        && last_progress.0.elapsed() < DRAIN_IDLE
        && rxs.rxs[..receivers]
            .iter()
            .any(|r| !r.ended() && r.tally.received() < sent)
    {
        rxs.pump(Duration::from_millis(5), false)?;
        let got: u64 = rxs.rxs.iter().map(|r| r.bytes).sum();
        if got != last_progress.1 {
            last_progress = (Instant::now(), got);
        }
    }
    let cpu_ns_per_delivery = match (cpu0, procinfo::cpu_ns(peer.pid())) {
        (Some(a), Some(b)) if received(&rxs) > got0 => {
            Some(b.saturating_sub(a) as f64 / (received(&rxs) - got0) as f64)
        }
        _ => None,
    };
    stop.store(true, Ordering::Relaxed);
    let redis_gone = watcher.and_then(|w| w.join().ok().flatten());
    let _ = publisher.shutdown(std::net::Shutdown::Both);
    let _ = replies.join();
    let secs = (t1 - t0).as_secs_f64();
    let since = |t: Instant| t.saturating_duration_since(t0).as_secs_f64();
    let outcomes: Vec<ReceiverOutcome> = rxs.rxs[..receivers].iter().map(Rx::outcome).collect();
    let stuck = stuck_id.map(|id| {
        // Let the resumed stuck reader read what reached it (its END, if one was sent).
        let until = Instant::now() + Duration::from_millis(300);
        while Instant::now() < until && !rxs.rxs[id].ended() {
            let _ = rxs.pump(Duration::from_millis(10), false);
        }
        let r = &rxs.rxs[id];
        let mut fate = StuckFate {
            hup_s: r.hup_at.map(since),
            end: r.tally.end().map(str::to_owned),
            bytes: r.bytes,
            ..StuckFate::default()
        };
        if let Some(who) = stuck_addr {
            match kind {
                Kind::Hb(_) => {
                    // `#N 127.0.0.1:PORT END slow-consumer ...`: the stuck reader's own line.
                    let needle = format!(" {who} ");
                    if let Some((line, at)) = peer
                        .log()
                        .slow_consumer_lines
                        .into_iter()
                        .find(|(l, _)| l.contains(&needle))
                    {
                        fate.server_s = Some(since(at));
                        fate.held_ms = peer
                            .log()
                            .held_back_lines
                            .into_iter()
                            .find(|(l, _)| l.contains(&needle))
                            .and_then(|(l, _)| held_ms(&l));
                        fate.log_stamp_s = tally::log_time(&line).map(|t| {
                            t.duration_since(wall0)
                                .map_or_else(|e| -e.duration().as_secs_f64(), |d| d.as_secs_f64())
                        });
                    }
                }
                Kind::Redis => fate.server_s = redis_gone.map(since),
                Kind::Ncat => {}
            }
        }
        fate
    });
    peer.check_alive("the open-loop relay")?;
    let healthy = &rxs.rxs[..receivers];
    Ok(OpenRun {
        stats: tally::summarize(&outcomes, sent, Duration::from_secs_f64(secs)),
        sent,
        secs,
        stuck,
        publisher_error: published.error,
        overlong: healthy.iter().map(|r| r.tally.malformed()).sum(),
        silent: healthy
            .iter()
            .filter(|r| r.tally.received() == 0 && !r.ended())
            .count(),
        cpu_ns_per_delivery,
        rx_busy: published.rx_busy,
    })
}

/// The server's ns per delivery over the repeats (`-` when /proc could not say).
fn cpu_cell(rs: &[OpenRun]) -> String {
    let v: Vec<f64> = rs.iter().filter_map(|r| r.cpu_ns_per_delivery).collect();
    if v.len() == rs.len() && !v.is_empty() {
        verdict::cell(&v, 0)
    } else {
        "-".into()
    }
}

/// hb-bench's receiving thread's busy % over the repeats (`-` when /proc could not say).
fn busy_cell(rs: &[OpenRun]) -> String {
    let v: Vec<f64> = rs
        .iter()
        .filter_map(|r| r.rx_busy.map(|b| b * 100.0))
        .collect();
    if v.len() == rs.len() && !v.is_empty() {
        verdict::cell(&v, 0)
    } else {
        "-".into()
    }
}

/// The median busy share of hb-bench's receiving thread in these runs, when known.
fn busy_median(rs: &[OpenRun]) -> Option<f64> {
    let mut v: Vec<f64> = rs.iter().filter_map(|r| r.rx_busy).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(v[v.len() / 2])
}

/// Above this share of the window, hb-bench's receiving thread is what sets the pace.
const RX_BOUND: f64 = 0.9;

/// `... held its senders back for 503 ms ...` → 503.
fn held_ms(line: &str) -> Option<f64> {
    // The socket-stalled form is an upper bound on the hold: the senders were held only
    // once the queue behind that full socket had filled too.
    let rest = line
        .split("held its senders back for ")
        .nth(1)
        .or_else(|| line.split("its socket accepted nothing for ").nth(1))?;
    rest.split(' ').next()?.parse().ok()
}

/// Runs of one peer: by (receivers, stuck), one per repeat.
type Runs = HashMap<(Kind, usize, bool), Vec<OpenRun>>;

fn col(rs: &[OpenRun], f: impl Fn(&OpenRun) -> f64) -> Vec<f64> {
    rs.iter().map(f).collect()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Per-repeat ratios of `a` to `b` (deliveries/s), repeats paired in order.
fn ratios(runs: &Runs, a: (Kind, usize, bool), b: (Kind, usize, bool)) -> Option<Vec<f64>> {
    let (x, y) = (runs.get(&a)?, runs.get(&b)?);
    Some(
        x.iter()
            .zip(y)
            .map(|(x, y)| x.stats.deliveries_per_s / y.stats.deliveries_per_s.max(1e-9))
            .collect(),
    )
}

/// The open-loop deliveries/s target of `engine` against a peer: the thread engine (issue
/// 10) at least half of either; the event engine (issue 12) at least ncat's and 1.5× Redis's.
pub fn ratio_goal(engine: Engine, other: Kind) -> f64 {
    match (engine, other) {
        (Engine::Events, Kind::Redis) => 1.5,
        (Engine::Events, _) => 1.0,
        (Engine::Threads, _) => 0.5,
    }
}

/// Healthy receivers beside the stuck reader.
const STUCK_AMONG: usize = 10;

/// The runs of a plan: (receivers, with a stuck reader).
fn runs_of(p: &super::Plan) -> Vec<(usize, bool)> {
    let mut plan: Vec<(usize, bool)> = p.open_receivers.iter().map(|&n| (n, false)).collect();
    if p.open_stuck_window.is_some() {
        plan.push((STUCK_AMONG, true));
    }
    plan
}

/// Measurement 6, relay open-loop: see the module docs.
pub fn relay_open(ctx: &Ctx) -> Result<Outcome, BenchError> {
    let p = ctx.plan;
    let title = "6. Relay open-loop (as fast as the server accepts)";
    eprintln!("== {title}");
    let stall_flag = hb_accepts_stall(ctx.server);
    let hb_extra: &[&str] = if stall_flag {
        &["--stall", "500ms"]
    } else {
        &[]
    };
    let kinds: &[Kind] = if p.open_peers { &KINDS } else { &KINDS[..2] };
    let plan = runs_of(p);
    let mut runs: Runs = HashMap::new();
    let mut skipped: HashMap<Kind, String> = HashMap::new();
    let mut commands: HashMap<Kind, String> = HashMap::new();
    for rep in 0..p.repeats {
        for &kind in kinds {
            if skipped.contains_key(&kind) {
                continue;
            }
            if let Some(why) = peer_missing(kind, ctx) {
                eprintln!("hb-bench: {}: SKIPPED: {why}", kind.name());
                skipped.insert(kind, why);
                continue;
            }
            for &(n, stuck) in &plan {
                if stuck && p.stuck_once && rep > 0 {
                    continue;
                }
                let mut peer = match start_peer(kind, ctx, hb_extra) {
                    Ok(Some(peer)) => peer,
                    Ok(None) => {
                        skipped.insert(kind, "not installed".into());
                        break;
                    }
                    Err(e) if !kind.is_hb() => {
                        let why = format!("could not be started: {e}");
                        eprintln!("hb-bench: {}: SKIPPED: {why}", kind.name());
                        skipped.insert(kind, why);
                        break;
                    }
                    Err(e) => return Err(e),
                };
                commands.entry(kind).or_insert_with(|| peer.command.clone());
                let window = match (stuck, p.open_stuck_window) {
                    (true, Some(_)) if !kind.is_hb() => p.open_stuck_peer_window,
                    (true, Some(w)) => w,
                    _ => p.open_window,
                };
                eprintln!(
                    "-- open-loop {} 1→{n}{} (repeat {}/{})",
                    kind.name(),
                    if stuck { " + stuck reader" } else { "" },
                    rep + 1,
                    p.repeats
                );
                let r = open_run(kind, &mut peer, n, stuck, window, p.open_drain)?;
                drop(peer);
                eprintln!(
                    "   sent {} ({:.0}/s), deliveries {:.0}/s, min receiver {:.0}/s, ended {}, lost {}, late {}, longest pause {:.0} ms, server {} ns/delivery, receiving thread busy {}{}",
                    r.sent,
                    r.sent as f64 / r.secs,
                    r.stats.deliveries_per_s,
                    r.stats.min_rate,
                    r.stats.ended,
                    r.stats.lost,
                    r.stats.late,
                    ms(r.stats.max_pause),
                    r.cpu_ns_per_delivery
                        .map_or("-".into(), |v| format!("{v:.0}")),
                    r.rx_busy
                        .map_or("-".into(), |v| format!("{:.0}%", v * 100.0)),
                    r.stuck.as_ref().map_or(String::new(), |f| format!(
                        ", stuck reader ended after {}",
                        f.ended_s().map_or("-".into(), |s| format!("{s:.3} s"))
                    ))
                );
                if r.sent == 0 {
                    return Err(BenchError::Measurement(format!(
                        "{} 1→{n}: the publisher sent nothing ({})",
                        kind.name(),
                        r.publisher_error.as_deref().unwrap_or("no error")
                    )));
                }
                if p.name == "smoke" && (r.silent > 0 || r.overlong > 0) {
                    return Err(BenchError::Measurement(format!(
                        "{} 1→{n}: {} receiver(s) got nothing and were not ended, {} malformed \
                         line(s): the open-loop machinery is broken",
                        kind.name(),
                        r.silent,
                        r.overlong
                    )));
                }
                runs.entry((kind, n, stuck)).or_default().push(r);
            }
        }
    }
    let body = report(
        p,
        &runs,
        &skipped,
        &commands,
        kinds,
        stall_flag,
        &ctx.report.svg_link,
    );
    let mut bars = Vec::new();
    for &kind in kinds {
        for &(n, stuck) in &plan {
            if let Some(s) = runs
                .get(&(kind, n, stuck))
                .and_then(|rs| Spread::of(&col(rs, |r| r.stats.deliveries_per_s)))
            {
                let short = kind.short();
                let tag = if stuck { "+stuck" } else { "" };
                bars.push((format!("{short} 1→{n}{tag}"), s.median));
            }
        }
    }
    plot::bars(
        &ctx.report.svg_dir.join("relay-open.svg"),
        "relay open-loop: deliveries/s summed over receivers (median of repeats)",
        "deliveries/s",
        &bars,
    )?;
    ctx.report.section(title, &body)?;
    let mut numbers = Vec::new();
    let median = |key: (Kind, usize, bool), f: fn(&OpenRun) -> f64| {
        runs.get(&key)
            .and_then(|rs| Spread::of(&col(rs, f)))
            .map(|s| s.median)
    };
    for engine in Engine::ALL {
        let hb = Kind::Hb(engine);
        let short = hb.short();
        for &(n, stuck) in &plan {
            let tag = if stuck { "_stuck" } else { "" };
            let key = (hb, n, stuck);
            if let Some(v) = median(key, |r| r.stats.deliveries_per_s) {
                numbers.push((format!("{short}_open_1to{n}{tag}_deliveries_per_s"), v));
            }
            if let Some(v) = median(key, |r| r.stats.ended as f64) {
                numbers.push((format!("{short}_open_1to{n}{tag}_ended"), v));
            }
            if let Some(v) = median(key, |r| r.stats.lost as f64) {
                numbers.push((format!("{short}_open_1to{n}{tag}_lost"), v));
            }
        }
    }
    Ok(Outcome {
        title: title.into(),
        numbers,
    })
}

fn report(
    p: &super::Plan,
    runs: &Runs,
    skipped: &HashMap<Kind, String>,
    commands: &HashMap<Kind, String>,
    kinds: &[Kind],
    stall_flag: bool,
    svg_link: &str,
) -> String {
    let plan = &runs_of(p);
    let min = verdict::MIN_REPEATS;
    let mut body = format!(
        "Open loop: one publisher writes numbered {}-byte messages (`MSG <payload>` after \
         `JOIN` for hb-server, a bare line for ncat --chat, a pipelined RESP `PUBLISH` for \
         Redis) with blocking writes of {BATCH}-message batches, as fast as the server \
         accepts them, for {} s per run ({} with a stuck reader, {} s for the other \
         peers' stuck-reader runs); a second thread reads \
         what the server sends the publisher (Redis replies) so its output never piles up. \
         Receivers (one epoll thread) read as fast as they can. Deliveries/s are the messages \
         received while the publisher ran, summed over receivers; min is the least-served \
         receiver. A receiver is *ended* when it got `END` or EOF/reset before hb-bench \
         closed it. After the publisher stops, receivers drain for up to {} s (less when \
         all have everything or nothing arrives for {} ms); then each receiver's distinct \
         sequence numbers are compared with the messages the publisher's socket accepted: \
         *lost* is what an ended receiver missed plus the numbers missing below a live \
         receiver's highest (*gaps*, included in lost), *late* is what a live receiver had \
         not got yet above its highest (the relay is in order: still queued in the server \
         or in socket buffers, and a slow relay with deep buffers shows it); all summed \
         over receivers. *Longest pause* is the largest gap between two reads of \
         one receiver while the publisher ran (the window's edges count as reads). \
         *Server ns/delivery* is the server's own CPU time (every thread, user and system, \
         from /proc) from the window's start to the drain's end, divided by the messages \
         the receivers got meanwhile: on two cores shared with hb-bench's publisher and \
         receivers, deliveries/s also depend on how much CPU the server leaves the \
         clients, and this column is the server's share alone. *Receiving thread busy* is \
         the CPU time of hb-bench's one receiving thread over the window: near 100% it, not \
         the server, sets the pace (it reads, splits and numbers every line; a longer line or \
         colder socket buffers cost it more), and a ratio of two such rows compares how \
         cheap each server's stream is to receive more than how fast each server relays. The \
         closed-loop rows are section 5. {} repeat(s){}, fresh servers each run; cells are \
         median (min..max).\n\n",
        tally::PAYLOAD,
        p.open_window.as_secs_f64(),
        p.open_stuck_window
            .map_or("none".into(), |w| format!("{} s", w.as_secs_f64())),
        p.open_stuck_peer_window.as_secs_f64(),
        p.open_drain.as_secs_f64(),
        DRAIN_IDLE.as_millis(),
        p.repeats,
        if p.stuck_once {
            " (the stuck-reader runs in the first repeat only, to save time: their targets \
             are reported and not judged; the full plan runs them in every repeat)"
        } else {
            ""
        },
    );
    for &kind in kinds {
        match (commands.get(&kind), skipped.get(&kind)) {
            (Some(cmd), Some(why)) => {
                let _ = writeln!(body, "- {}: `{cmd}` (then SKIPPED: {why})", kind.name());
            }
            (Some(cmd), None) => {
                let _ = writeln!(body, "- {}: `{cmd}`", kind.name());
            }
            (None, Some(why)) => {
                let _ = writeln!(body, "- {}: **SKIPPED**: {why}", kind.name());
            }
            (None, None) => {}
        }
    }
    if !stall_flag {
        body.push_str(
            "- this hb-server has no `--stall` flag (built before flow control): it ran with \
             its own slow-consumer rule; the targets still use the contract's 500 ms\n",
        );
    }
    body.push_str(
        "\n| peer | 1 → R | publisher msgs/s | deliveries/s | min receiver msgs/s | readers ended | lost | gaps | late after drain | longest pause ms | server ns/delivery | receiving thread busy % |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for &kind in kinds {
        for &(n, stuck) in plan.iter().filter(|(_, s)| !s) {
            let Some(rs) = runs.get(&(kind, n, stuck)) else {
                let why = skipped.get(&kind).map_or("no run", String::as_str);
                let _ = writeln!(
                    body,
                    "| {} | {n} | **SKIPPED**: {why} | - | - | - | - | - | - | - | - | - |",
                    kind.name()
                );
                continue;
            };
            let _ = writeln!(
                body,
                "| {} | {n} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                kind.name(),
                verdict::cell(&col(rs, |r| r.sent as f64 / r.secs), 0),
                verdict::cell(&col(rs, |r| r.stats.deliveries_per_s), 0),
                verdict::cell(&col(rs, |r| r.stats.min_rate), 0),
                verdict::cell(&col(rs, |r| r.stats.ended as f64), 0),
                verdict::cell(&col(rs, |r| r.stats.lost as f64), 0),
                verdict::cell(&col(rs, |r| r.stats.gaps as f64), 0),
                verdict::cell(&col(rs, |r| r.stats.late as f64), 0),
                verdict::cell(&col(rs, |r| ms(r.stats.max_pause)), 0),
                cpu_cell(rs),
                busy_cell(rs),
            );
        }
    }
    let errors: Vec<String> = runs
        .iter()
        .flat_map(|((k, n, _), rs)| {
            rs.iter().filter_map(move |r| {
                r.publisher_error
                    .as_ref()
                    .map(|e| format!("{} 1→{n}: {e}", k.name()))
            })
        })
        .collect();
    if !errors.is_empty() {
        let _ = writeln!(
            body,
            "\nThe publisher stopped early (the server closed or reset it): {}",
            errors.join("; ")
        );
    }
    for engine in Engine::ALL {
        let hb = Kind::Hb(engine);
        let _ = writeln!(body, "\nTargets ({}):\n", engine.label());
        if let Some(why) = skipped.get(&hb) {
            let _ = writeln!(
                body,
                "- SKIPPED ({why}): deliveries/s ≥ {}× ncat and ≥ {}× Redis — not judged",
                ratio_goal(engine, Kind::Ncat),
                ratio_goal(engine, Kind::Redis)
            );
            continue;
        }
        for &(n, _) in plan.iter().filter(|(_, s)| !s) {
            let Some(rs) = runs.get(&(hb, n, false)) else {
                continue;
            };
            let ended = col(rs, |r| r.stats.ended as f64);
            let lost = col(rs, |r| r.stats.lost as f64);
            let _ = writeln!(
                body,
                "- 1 → {n}: zero readers ended: {} — {}; zero messages lost: {} — {}",
                verdict::cell(&ended, 0),
                judge(&ended, Goal::AtMost(0.0), min),
                verdict::cell(&lost, 0),
                judge(&lost, Goal::AtMost(0.0), min)
            );
            for other in [Kind::Ncat, Kind::Redis] {
                if !kinds.contains(&other) {
                    continue;
                }
                let goal = ratio_goal(engine, other);
                match ratios(runs, (hb, n, false), (other, n, false)) {
                    Some(r) => {
                        let bound: Vec<String> = [hb, other]
                            .iter()
                            .filter_map(|k| {
                                let b = busy_median(runs.get(&(*k, n, false))?)?;
                                (b >= RX_BOUND)
                                    .then(|| format!("{:.0}% with {}", b * 100.0, k.name()))
                            })
                            .collect();
                        let note = if bound.is_empty() {
                            String::new()
                        } else {
                            format!(
                                "; hb-bench's receiving thread was busy {} (≥ {:.0}%: bound by \
                                 the client; compare the server ns/delivery column)",
                                bound.join(", "),
                                RX_BOUND * 100.0
                            )
                        };
                        let _ = writeln!(
                            body,
                            "- 1 → {n}: deliveries/s {} / {} = {}× (target ≥ {goal}× — {}){note}",
                            engine.label(),
                            other.name(),
                            verdict::cell(&r, 2),
                            judge(&r, Goal::AtLeast(goal), min)
                        );
                    }
                    None => {
                        let why = skipped.get(&other).map_or("no run", String::as_str);
                        let _ = writeln!(
                            body,
                            "- 1 → {n}: {} / {}: SKIPPED ({why}) (target ≥ {goal}× — not judged)",
                            engine.label(),
                            other.name()
                        );
                    }
                }
            }
        }
    }
    if let Some(&(n, _)) = plan.iter().find(|(_, s)| *s) {
        stuck_table(&mut body, runs, kinds, n, min);
    }
    let _ = writeln!(body, "\n![relay open-loop]({svg_link}/relay-open.svg)");
    body
}

fn stuck_table(body: &mut String, runs: &Runs, kinds: &[Kind], n: usize, min: usize) {
    let _ = write!(
        body,
        "\n**Stuck reader among {n}**: the same open-loop publisher, {n} healthy receivers \
         and one more that joins and never reads (a {STUCK_RCVBUF}-byte receive buffer). \
         *Ended after* is from the publisher's start until the server dropped the stuck \
         reader, by the server's own account where it gives one (hb-server: its `END \
         slow-consumer` log line for that connection, as read by hb-bench, and the line's \
         own timestamp in brackets; Redis: when `CLIENT LIST`, asked every \
         {} ms, no longer lists it), else when its socket saw the hang-up; `-` means it was \
         still connected when the window ended (hb-bench waits no longer: a peer that blocks \
         on the slowest reader, as ncat does, would hold everyone forever). *Healthy rate* \
         is the healthy receivers' deliveries/s as a percentage of the same server's 1 → \
         {n} open-loop run in the same repeat.\n\n\
         | peer | ended after s | healthy rate % of 1 → {n} | healthy readers ended | lost | late after drain | longest pause ms | what the stuck reader found |\n\
         |---|---:|---:|---:|---:|---:|---:|---|\n",
        WATCH_EVERY.as_millis()
    );
    let pct = |kind: Kind| {
        ratios(runs, (kind, n, true), (kind, n, false))
            .map(|r| r.iter().map(|x| x * 100.0).collect::<Vec<_>>())
    };
    // Not ended within the window counts as infinitely late for the verdict.
    let ended_after = |rs: &[OpenRun]| {
        col(rs, |r| {
            r.stuck
                .as_ref()
                .and_then(StuckFate::ended_s)
                .unwrap_or(f64::INFINITY)
        })
    };
    for &kind in kinds {
        let Some(rs) = runs.get(&(kind, n, true)) else {
            continue;
        };
        let after = ended_after(rs);
        let after_cell = if after.iter().all(|x| x.is_infinite()) {
            "-".to_string()
        } else {
            let finite: Vec<f64> = after.iter().map(|&x| x.min(1e9)).collect();
            let mut c = verdict::cell(&finite, 3);
            if after.iter().any(|x| x.is_infinite()) {
                c.push_str(" (not ended in some repeats)");
            }
            let stamps = col(rs, |r| {
                r.stuck
                    .as_ref()
                    .and_then(|f| f.log_stamp_s)
                    .unwrap_or(f64::NAN)
            });
            if Spread::of(&stamps).is_some() {
                let _ = write!(c, " [log {}]", verdict::cell(&stamps, 3));
            }
            c
        };
        let fates: Vec<String> = rs
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let f = r.stuck.clone().unwrap_or_default();
                format!(
                    "{}{}, {:.1} MB{}",
                    if rs.len() > 1 {
                        format!("{}: ", i + 1)
                    } else {
                        String::new()
                    },
                    f.end.map_or("no END".into(), |e| format!("`END {e}`")),
                    f.bytes as f64 / 1e6,
                    f.hup_s.map_or(String::new(), |s| {
                        format!(", hang-up seen at {s:.3} s while it was not reading")
                    })
                )
            })
            .collect();
        let _ = writeln!(
            body,
            "| {} | {after_cell} | {} | {} | {} | {} | {} | {} |",
            kind.name(),
            pct(kind).map_or("-".into(), |p| verdict::cell(&p, 0)),
            verdict::cell(&col(rs, |r| r.stats.ended as f64), 0),
            verdict::cell(&col(rs, |r| r.stats.lost as f64), 0),
            verdict::cell(&col(rs, |r| r.stats.late as f64), 0),
            verdict::cell(&col(rs, |r| ms(r.stats.max_pause)), 0),
            fates.join("<br>")
        );
    }
    for engine in Engine::ALL {
        stuck_targets(body, runs, &pct, &ended_after, engine, n, min);
    }
}

/// The stuck-reader targets of one engine (the same for both: flow control is the core's).
fn stuck_targets(
    body: &mut String,
    runs: &Runs,
    pct: &dyn Fn(Kind) -> Option<Vec<f64>>,
    ended_after: &dyn Fn(&[OpenRun]) -> Vec<f64>,
    engine: Engine,
    n: usize,
    min: usize,
) {
    let hb = Kind::Hb(engine);
    let Some(rs) = runs.get(&(hb, n, true)) else {
        return;
    };
    let stall_ms = ms(STALL);
    let after: Vec<f64> = ended_after(rs).iter().map(|s| s * 1e3).collect();
    let pause = col(rs, |r| ms(r.stats.max_pause));
    let held: Vec<f64> = rs
        .iter()
        .map(|r| {
            r.stuck
                .as_ref()
                .and_then(|f| f.held_ms)
                .unwrap_or(f64::INFINITY)
        })
        .collect();
    let _ = writeln!(
        body,
        "\nTargets ({}, `--stall` 500 ms):\n\n\
         - the stuck reader is ended within --stall + 100 ms of holding the senders back (the \
         server's log line `held its senders back for MS ms`, or `its socket accepted nothing for MS \
         ms`, an upper bound on the hold; the time before that is the \
         kernel's and the queue's buffers filling): {} ms — {}\n\
         - (for the record) ended after the publisher's start: {} ms\n\
         - the healthy receivers keep ≥ 90% of their 1 → {n} rate: {}% — {}\n\
         - longest pause of a healthy receiver ≤ --stall + 50 ms: {} ms — {}",
        engine.label(),
        if held.iter().all(|x| x.is_infinite()) {
            "not in the log".to_string()
        } else {
            verdict::cell(&held, 0)
        },
        judge(&held, Goal::AtMost(stall_ms + 100.0), min),
        if after.iter().all(|x| x.is_infinite()) {
            "never (within the window)".to_string()
        } else {
            verdict::cell(&after, 0)
        },
        pct(hb).map_or("-".into(), |p| verdict::cell(&p, 0)),
        pct(hb).map_or(verdict::Verdict::NotJudged("no 1 → 10 run".into()), |p| {
            judge(&p, Goal::AtLeast(90.0), min)
        }),
        verdict::cell(&pause, 0),
        judge(&pause, Goal::AtMost(stall_ms + 50.0), min)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_back_is_read_from_the_log_line() {
        let l = "2026-12-02T01:00:00.000Z #12 127.0.0.1:5 slow consumer: held its senders back \
                 for 503 ms without catching up";
        assert_eq!(held_ms(l), Some(503.0));
        assert_eq!(held_ms("#1 x closed"), None);
        assert_eq!(
            held_ms("#3 y slow consumer: its socket accepted nothing for 501 ms"),
            Some(501.0)
        );
    }

    #[test]
    fn frames_have_one_length_per_kind() {
        for kind in KINDS {
            let (mut a, mut b) = (Vec::new(), Vec::new());
            open_frame(kind, 1, &mut a);
            open_frame(kind, 123_456_789, &mut b);
            assert_eq!(a.len(), b.len(), "{kind:?}");
            assert_eq!(
                super::super::measure::parse_mark(&b),
                Some((123_456_789, 0))
            );
        }
        let mut r = Vec::new();
        open_frame(Kind::Redis, 5, &mut r);
        let mut want = Vec::new();
        tally::payload(5, &mut want);
        assert_eq!(r, resp_command(&[b"PUBLISH", b"bench", &want]));
        let mut h = Vec::new();
        open_frame(Kind::Hb(Engine::Threads), 5, &mut h);
        assert_eq!(h.len(), 4 + tally::PAYLOAD + 1);
    }

    #[test]
    fn the_publisher_counts_whole_messages_only() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut srv, _) = l.accept().unwrap();
        let reader = thread::spawn(move || {
            let mut all = Vec::new();
            srv.read_to_end(&mut all).unwrap();
            all
        });
        let p = publish(
            &c,
            Kind::Hb(Engine::Events),
            Instant::now() + Duration::from_millis(50),
        );
        drop(c);
        let all = reader.join().unwrap();
        assert!(p.error.is_none());
        assert!(p.sent > 0);
        assert_eq!(all.len() as u64, p.sent * (4 + tally::PAYLOAD as u64 + 1));
        let mut t = Tally::default();
        t.feed(&all);
        assert_eq!(t.received(), p.sent);
        assert_eq!(t.seqs().gaps(), 0);
    }

    #[test]
    fn bulk_replies_are_read_whole() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut srv, _) = l.accept().unwrap();
        srv.write_all(b"$11\r\nid=1 addr=").unwrap();
        let t = thread::spawn(move || {
            thread::sleep(Duration::from_millis(20));
            srv.write_all(b"x\r\n\r\n").unwrap();
            srv
        });
        let mut buf = Vec::new();
        read_bulk(&mut c, &mut buf).unwrap();
        assert_eq!(buf, b"$11\r\nid=1 addr=x\r\n\r\n");
        drop(t.join().unwrap());
    }
}
