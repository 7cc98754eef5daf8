//! The load generator: ONE thread driving thousands of non-blocking client sockets.
//!
//! `hb-bench` measures a thread-per-connection server on the same machine, so the load must
//! not spend the server's budget of threads and memory maps: every client connection here is
//! a non-blocking socket in one epoll set, driven by whoever calls [`LoadGen::poll`].
//!
//! ```text
//!   connect_many ── non-blocking connect(), at most `inflight` pending at once
//!        │          (source address spread over 127.0.0.0/8 past SPREAD_ABOVE sockets)
//!   poll ────────── epoll_wait → read → split lines
//!        │            HELLO          → the connection is admitted
//!        │            PING k         → PONG k (unless the connection plays a ghost)
//!        │            END reason     → remembered with its instant
//!        │            anything else  → returned to the caller as an [`Incoming`] line
//!        └───────── EOF / error      → closed, instant remembered
//! ```
//! Protocol-agnostic on purpose: the relay measurement speaks the line wire, `ncat --chat`
//! and Redis RESP through the same loop; only heartbeat lines are handled here. With
//! [`Dialect::Nats`] the heartbeat lines are NATS's instead (`INFO {..}` admits the
//! connection and is answered with `CONNECT`; `PING` is answered with `PONG`), so the same
//! loop can hold idle clients of nats-server for the idle-heartbeat comparison.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use rustix::event::epoll::{self, EventData, EventFlags};
use rustix::event::Timespec;
use rustix::net::{AddressFamily, SocketFlags, SocketType};

/// Past this many sockets, each new one binds a source address of its own in 127.0.0.0/8,
/// so the ephemeral port range (about 28k ports per source address) never runs short.
pub const SPREAD_ABOVE: usize = 16_000;
/// Longest unfinished line kept per connection; a peer sending more is cut off.
const MAX_PENDING: usize = 1 << 20;
/// Events taken per `epoll_wait`.
const EVENTS: usize = 1024;

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// `connect()` is in progress.
    Connecting,
    /// Connected (the TCP handshake finished).
    Open,
    /// Closed by the peer, by an error, or by [`LoadGen::close`].
    Closed,
}

/// One client connection and what happened to it.
#[derive(Debug)]
pub struct Conn {
    stream: Option<TcpStream>,
    /// Where the connection is in its life.
    pub state: State,
    /// Answer `PING k` with `PONG k` (false: a ghost that reads but never answers).
    pub answer_pings: bool,
    /// Read from the socket (false: a stuck reader; bytes pile up in the kernel).
    pub reading: bool,
    interest: EventFlags,
    rx: Vec<u8>,
    tx: Vec<u8>,
    /// When `HELLO` arrived (the server admitted the connection).
    pub hello_at: Option<Instant>,
    /// The `END` reason received, and when.
    pub end: Option<(String, Instant)>,
    /// When the connection was seen closed.
    pub closed_at: Option<Instant>,
    /// The OS error that closed it, if any.
    pub error: Option<String>,
    /// Heartbeats (`PING`) received.
    pub pings: u64,
    /// Heartbeats answered with `PONG`.
    pub pongs: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// When the peer was first seen hanging up (even while not reading).
    pub hup_at: Option<Instant>,
    /// Still in the epoll set (a hung-up stuck reader is taken out so it cannot spin).
    registered: bool,
    /// After `END`, stop reading and leave the epoll set, but keep the socket open until
    /// [`LoadGen::close_all`] (see [`LoadGen::set_park_on_end`]).
    park_on_end: bool,
}

/// A line the load generator does not handle itself, for the caller.
#[derive(Debug)]
pub struct Incoming {
    /// The connection it came on.
    pub id: usize,
    /// When it was read.
    pub at: Instant,
    /// The line without `\n` (and without a trailing `\r`).
    pub line: Vec<u8>,
}

/// How a [`LoadGen::connect_many`] went.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnectReport {
    /// Connections admitted (`HELLO` received, or TCP open when no HELLO is expected).
    pub admitted: usize,
    /// Connections refused with `END server-full`.
    pub refused_full: usize,
    /// Connections that failed otherwise (connect error, closed without a word, deadline).
    pub failed: usize,
}

/// The heartbeat protocol the load generator answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Dialect {
    /// hb's line wire: `HELLO ..`, `PING k` → `PONG k`, `END reason`.
    #[default]
    Line,
    /// NATS: `INFO {..}` → [`NATS_CONNECT`] (admitted), `PING` → `PONG`, `-ERR '..'` ends.
    Nats,
}

/// What a NATS client sends after the server's `INFO`: no `+OK` per operation (verbose
/// off), so an idle client receives nothing but the server's `PING`s.
pub const NATS_CONNECT: &[u8] = b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\n";

/// The single-threaded load generator. See the module docs.
pub struct LoadGen {
    dialect: Dialect,
    epoll: OwnedFd,
    conns: Vec<Conn>,
    scratch: Vec<u8>,
    events: Vec<epoll::Event>,
}

fn ts(d: Duration) -> Timespec {
    Timespec {
        tv_sec: d.as_secs() as _,
        tv_nsec: d.subsec_nanos() as _,
    }
}

/// The source address of the `i`-th socket: the default one (None) up to [`SPREAD_ABOVE`],
/// then 127.0.0.2 ..= 127.0.0.251 in turn.
pub fn source_for(i: usize) -> Option<Ipv4Addr> {
    (i >= SPREAD_ABOVE).then(|| Ipv4Addr::new(127, 0, 0, 2 + (i % 250) as u8))
}

/// Splits complete lines off the front of `buf` (dropping `\r\n`/`\n`), leaving the rest.
pub fn take_lines(buf: &mut Vec<u8>) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut start = 0;
    while let Some(i) = buf[start..].iter().position(|&b| b == b'\n') {
        let mut line = &buf[start..start + i];
        if let Some(s) = line.strip_suffix(b"\r") {
            line = s;
        }
        out.push(line.to_vec());
        start += i + 1;
    }
    buf.drain(..start);
    out
}

impl LoadGen {
    /// A load generator with no connections.
    pub fn new() -> io::Result<Self> {
        Ok(Self {
            dialect: Dialect::Line,
            epoll: epoll::create(epoll::CreateFlags::CLOEXEC)?,
            conns: Vec::new(),
            scratch: vec![0; 64 * 1024],
            events: Vec::with_capacity(EVENTS),
        })
    }

    /// Speaks `dialect` on every connection from now on.
    pub fn set_dialect(&mut self, dialect: Dialect) {
        self.dialect = dialect;
    }

    /// Every connection ever started, by id.
    pub fn conns(&self) -> &[Conn] {
        &self.conns
    }

    /// One connection.
    pub fn conn(&self, id: usize) -> &Conn {
        &self.conns[id]
    }

    /// Connections currently open.
    pub fn open(&self) -> usize {
        self.conns.iter().filter(|c| c.state == State::Open).count()
    }

    /// Starts a non-blocking connect to `addr` (IPv4 loopback only); returns the id.
    /// `rcvbuf` shrinks the receive buffer first (a stuck reader fills up sooner).
    pub fn connect(
        &mut self,
        addr: SocketAddr,
        source: Option<Ipv4Addr>,
        rcvbuf: Option<usize>,
    ) -> io::Result<usize> {
        if !addr.ip().is_loopback() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the load generator only talks to loopback addresses",
            ));
        }
        let fd = rustix::net::socket_with(
            AddressFamily::INET,
            SocketType::STREAM,
            SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
            None,
        )?;
        if let Some(n) = rcvbuf {
            rustix::net::sockopt::set_socket_recv_buffer_size(&fd, n)?;
        }
        if let Some(ip) = source {
            rustix::net::bind(&fd, &SocketAddrV4::new(ip, 0))?;
        }
        match rustix::net::connect(&fd, &addr) {
            Ok(()) | Err(rustix::io::Errno::INPROGRESS) => {}
            Err(e) => return Err(e.into()),
        }
        let _ = rustix::net::sockopt::set_tcp_nodelay(&fd, true);
        let id = self.conns.len();
        let interest = EventFlags::IN | EventFlags::OUT | EventFlags::RDHUP;
        epoll::add(&self.epoll, &fd, EventData::new_u64(id as u64), interest)?;
        self.conns.push(Conn {
            stream: Some(TcpStream::from(fd)),
            state: State::Connecting,
            answer_pings: true,
            reading: true,
            interest,
            rx: Vec::new(),
            tx: Vec::new(),
            hello_at: None,
            end: None,
            closed_at: None,
            error: None,
            pings: 0,
            pongs: 0,
            rx_bytes: 0,
            hup_at: None,
            registered: true,
            park_on_end: false,
        });
        Ok(id)
    }

    /// Opens `n` connections to `addr`, at most `inflight` unresolved at once, until all are
    /// resolved or `deadline` passes. With `expect_hello`, a connection counts as admitted
    /// when `HELLO` arrives (refused when `END server-full` does); otherwise when TCP opens.
    /// `tick` is called now and then with the number resolved so far (a progress bar).
    pub fn connect_many(
        &mut self,
        addr: SocketAddr,
        n: usize,
        inflight: usize,
        expect_hello: bool,
        deadline: Instant,
        mut tick: impl FnMut(usize),
    ) -> io::Result<(Vec<usize>, ConnectReport)> {
        let first = self.conns.len();
        let mut ids = Vec::with_capacity(n);
        let mut report = ConnectReport::default();
        let mut resolved = vec![false; n];
        let mut pending = 0usize;
        let mut next_check = 0usize;
        let mut last_tick = Instant::now();
        loop {
            while ids.len() < n && pending < inflight {
                let i = first + ids.len();
                match self.connect(addr, source_for(i), None) {
                    Ok(id) => {
                        ids.push(id);
                        pending += 1;
                    }
                    Err(e) => {
                        // Out of descriptors or ports on our side: stop starting more.
                        if ids.is_empty() {
                            return Err(e);
                        }
                        report.failed += n - ids.len();
                        resolved.truncate(ids.len());
                        return self.finish_connect(ids, report, resolved, expect_hello, deadline);
                    }
                }
            }
            self.poll(Duration::from_millis(5))?;
            // Resolve in order from where we left off; order does not matter for counting.
            for (k, &id) in ids.iter().enumerate().skip(next_check.min(ids.len())) {
                if resolved[k] {
                    continue;
                }
                if let Some(outcome) = self.outcome(id, expect_hello) {
                    resolved[k] = true;
                    pending -= 1;
                    match outcome {
                        Outcome::Admitted => report.admitted += 1,
                        Outcome::Refused => report.refused_full += 1,
                        Outcome::Failed => report.failed += 1,
                    }
                }
            }
            while next_check < ids.len() && resolved[next_check] {
                next_check += 1;
            }
            if last_tick.elapsed() > Duration::from_millis(100) {
                tick(report.admitted + report.refused_full + report.failed);
                last_tick = Instant::now();
            }
            if ids.len() == n && pending == 0 {
                break;
            }
            if Instant::now() >= deadline {
                report.failed += pending + (n - ids.len());
                break;
            }
        }
        tick(n);
        Ok((ids, report))
    }

    fn finish_connect(
        &mut self,
        ids: Vec<usize>,
        mut report: ConnectReport,
        mut resolved: Vec<bool>,
        expect_hello: bool,
        deadline: Instant,
    ) -> io::Result<(Vec<usize>, ConnectReport)> {
        while resolved.iter().any(|r| !r) && Instant::now() < deadline {
            self.poll(Duration::from_millis(5))?;
            for (k, &id) in ids.iter().enumerate() {
                if resolved[k] {
                    continue;
                }
                if let Some(o) = self.outcome(id, expect_hello) {
                    resolved[k] = true;
                    match o {
                        Outcome::Admitted => report.admitted += 1,
                        Outcome::Refused => report.refused_full += 1,
                        Outcome::Failed => report.failed += 1,
                    }
                }
            }
        }
        report.failed += resolved.iter().filter(|r| !**r).count();
        Ok((ids, report))
    }

    fn outcome(&self, id: usize, expect_hello: bool) -> Option<Outcome> {
        let c = &self.conns[id];
        if let Some((reason, _)) = &c.end {
            if reason == "server-full" {
                return Some(Outcome::Refused);
            }
        }
        if expect_hello && c.hello_at.is_some() || !expect_hello && c.state == State::Open {
            return Some(Outcome::Admitted);
        }
        (c.state == State::Closed).then_some(Outcome::Failed)
    }

    /// Queues `bytes` for connection `id` and writes what the socket takes now.
    pub fn send(&mut self, id: usize, bytes: &[u8]) {
        let c = &mut self.conns[id];
        if c.state == State::Closed {
            return;
        }
        c.tx.extend_from_slice(bytes);
        if c.state == State::Open {
            self.flush(id);
        }
    }

    /// Bytes queued for `id` that the socket has not taken yet.
    pub fn unsent(&self, id: usize) -> usize {
        self.conns[id].tx.len()
    }

    /// Makes `id` a ghost (false) or a live client (true).
    pub fn set_answering(&mut self, id: usize, on: bool) {
        self.conns[id].answer_pings = on;
    }

    /// After its `END`, `id` stops reading and leaves the epoll set but stays open until
    /// [`LoadGen::close_all`], like a real ghost that never closes. The ghost measurement
    /// uses it so that reading the `FIN` and closing 1,000 sockets (a loopback transmit
    /// each) do not compete for the cores with the server it is timing.
    pub fn set_park_on_end(&mut self, id: usize, on: bool) {
        self.conns[id].park_on_end = on;
    }

    /// Stops (false) or resumes (true) reading `id`.
    pub fn set_reading(&mut self, id: usize, on: bool) {
        self.conns[id].reading = on;
        self.update_interest(id);
    }

    /// Closes `id` now.
    pub fn close(&mut self, id: usize) {
        self.mark_closed(id, None);
    }

    /// Closes every connection.
    pub fn close_all(&mut self) {
        for id in 0..self.conns.len() {
            self.mark_closed(id, None);
        }
    }

    fn mark_closed(&mut self, id: usize, error: Option<String>) {
        let c = &mut self.conns[id];
        if c.state == State::Closed {
            return;
        }
        c.state = State::Closed;
        c.closed_at = Some(Instant::now());
        c.error = error;
        // Closing the only descriptor of the socket takes it out of the epoll set: no
        // `epoll_ctl` (a system call per closed connection, during a burst of ENDs it would
        // compete for the cores with the server being measured).
        c.stream = None;
        c.registered = false;
        c.tx = Vec::new();
        c.rx = Vec::new();
    }

    fn update_interest(&mut self, id: usize) {
        let c = &mut self.conns[id];
        let Some(s) = &c.stream else { return };
        if !c.registered {
            if !c.reading {
                return;
            }
            c.registered = true;
            c.interest = EventFlags::empty();
            let _ = epoll::add(&self.epoll, s, EventData::new_u64(id as u64), c.interest);
        }
        let mut want = EventFlags::empty();
        if c.reading {
            want |= EventFlags::IN | EventFlags::RDHUP;
        } else if c.hup_at.is_none() {
            want |= EventFlags::RDHUP;
        }
        if c.state == State::Connecting || !c.tx.is_empty() {
            want |= EventFlags::OUT;
        }
        if want != c.interest {
            c.interest = want;
            let _ = epoll::modify(&self.epoll, s, EventData::new_u64(id as u64), want);
        }
    }

    fn flush(&mut self, id: usize) {
        let c = &mut self.conns[id];
        let Some(s) = &c.stream else { return };
        let mut written = 0;
        let mut err = None;
        while written < c.tx.len() {
            match (&*s).write(&c.tx[written..]) {
                Ok(0) => break,
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    err = Some(e.to_string());
                    break;
                }
            }
        }
        c.tx.drain(..written);
        if let Some(e) = err {
            self.mark_closed(id, Some(e));
        } else {
            self.update_interest(id);
        }
    }

    /// Waits at most `timeout` for socket events, handles heartbeats, and returns the other
    /// lines that arrived.
    pub fn poll(&mut self, timeout: Duration) -> io::Result<Vec<Incoming>> {
        let mut out = Vec::new();
        self.events.clear();
        match epoll::wait(
            &self.epoll,
            rustix::buffer::spare_capacity(&mut self.events),
            Some(&ts(timeout)),
        ) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => return Ok(out),
            Err(e) => return Err(e.into()),
        }
        let ready: Vec<(usize, EventFlags)> = self
            .events
            .iter()
            .map(|e| (e.data.u64() as usize, e.flags))
            .collect();
        for (id, flags) in ready {
            self.handle(id, flags, &mut out);
        }
        Ok(out)
    }

    fn handle(&mut self, id: usize, flags: EventFlags, out: &mut Vec<Incoming>) {
        let hup = EventFlags::RDHUP | EventFlags::HUP | EventFlags::ERR;
        if flags.intersects(hup) && self.conns[id].hup_at.is_none() {
            self.conns[id].hup_at = Some(Instant::now());
        }
        if !self.conns[id].reading && flags.intersects(EventFlags::HUP | EventFlags::ERR) {
            // HUP and ERR are reported whatever the interest: take a stuck reader out of
            // the set until it reads again, or every wait would return at once.
            let c = &mut self.conns[id];
            if let (Some(s), true) = (&c.stream, c.registered) {
                let _ = epoll::delete(&self.epoll, s);
                c.registered = false;
            }
            return;
        }
        if self.conns[id].state == State::Connecting {
            let Some(s) = &self.conns[id].stream else {
                return;
            };
            match s.take_error() {
                Ok(None) if flags.contains(EventFlags::OUT) => {
                    self.conns[id].state = State::Open;
                }
                Ok(None) => {}
                Ok(Some(e)) | Err(e) => {
                    self.mark_closed(id, Some(e.to_string()));
                    return;
                }
            }
        }
        if flags.contains(EventFlags::OUT) && self.conns[id].state == State::Open {
            self.flush(id);
        }
        if self.conns[id].reading
            && flags.intersects(EventFlags::IN | EventFlags::RDHUP | EventFlags::ERR)
        {
            self.read(id, out);
        }
    }

    fn read(&mut self, id: usize, out: &mut Vec<Incoming>) {
        // A bounded number of reads per event keeps one busy socket from starving the rest.
        for _ in 0..16 {
            let c = &mut self.conns[id];
            let Some(s) = &c.stream else { return };
            match (&*s).read(&mut self.scratch) {
                Ok(0) => {
                    self.lines(id, out);
                    self.mark_closed(id, None);
                    return;
                }
                Ok(n) => {
                    c.rx_bytes += n as u64;
                    c.rx.extend_from_slice(&self.scratch[..n]);
                    self.lines(id, out);
                    if !self.conns[id].reading {
                        return;
                    }
                    if self.conns[id].rx.len() > MAX_PENDING {
                        self.mark_closed(id, Some("line too long".into()));
                        return;
                    }
                    if n < self.scratch.len() {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.mark_closed(id, Some(e.to_string()));
                    return;
                }
            }
        }
    }

    fn lines(&mut self, id: usize, out: &mut Vec<Incoming>) {
        let now = Instant::now();
        let lines = take_lines(&mut self.conns[id].rx);
        if self.dialect == Dialect::Nats {
            for line in lines {
                self.nats_line(id, line, now, out);
            }
            return;
        }
        for line in lines {
            let c = &mut self.conns[id];
            if line.starts_with(b"HELLO ") {
                c.hello_at.get_or_insert(now);
            } else if let Some(token) = line.strip_prefix(b"PING ") {
                c.pings += 1;
                if c.answer_pings {
                    c.pongs += 1;
                    let mut pong = b"PONG ".to_vec();
                    pong.extend_from_slice(token);
                    pong.push(b'\n');
                    self.send(id, &pong);
                }
            } else if let Some(reason) = line.strip_prefix(b"END ") {
                c.end
                    .get_or_insert((String::from_utf8_lossy(reason).into_owned(), now));
                if c.park_on_end {
                    c.reading = false;
                    if let (Some(s), true) = (&c.stream, c.registered) {
                        let _ = epoll::delete(&self.epoll, s);
                        c.registered = false;
                    }
                }
            } else {
                out.push(Incoming { id, at: now, line });
            }
        }
    }

    fn nats_line(&mut self, id: usize, line: Vec<u8>, now: Instant, out: &mut Vec<Incoming>) {
        let c = &mut self.conns[id];
        if line.starts_with(b"INFO ") {
            let first = c.hello_at.is_none();
            c.hello_at.get_or_insert(now);
            if first {
                self.send(id, NATS_CONNECT);
            }
        } else if line == b"PING" {
            c.pings += 1;
            if c.answer_pings {
                c.pongs += 1;
                self.send(id, b"PONG\r\n");
            }
        } else if let Some(reason) = line.strip_prefix(b"-ERR ") {
            c.end
                .get_or_insert((String::from_utf8_lossy(reason).into_owned(), now));
        } else {
            out.push(Incoming { id, at: now, line });
        }
    }

    /// Runs the loop (answering heartbeats) for `d`, dropping other lines.
    pub fn idle_for(&mut self, d: Duration) -> io::Result<()> {
        let end = Instant::now() + d;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(());
            }
            self.poll(left.min(Duration::from_millis(50)))?;
        }
    }

    /// Total heartbeats received over all connections.
    pub fn total_pings(&self) -> u64 {
        self.conns.iter().map(|c| c.pings).sum()
    }

    /// Total heartbeats answered over all connections.
    pub fn total_pongs(&self) -> u64 {
        self.conns.iter().map(|c| c.pongs).sum()
    }
}

enum Outcome {
    Admitted,
    Refused,
    Failed,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn lines_are_split_and_the_rest_kept() {
        let mut b = b"PING 1\r\nECHO a\npart".to_vec();
        assert_eq!(
            take_lines(&mut b),
            vec![b"PING 1".to_vec(), b"ECHO a".to_vec()]
        );
        assert_eq!(b, b"part");
    }

    #[test]
    fn sources_spread_only_past_the_threshold() {
        assert_eq!(source_for(0), None);
        assert_eq!(source_for(SPREAD_ABOVE - 1), None);
        let a = source_for(SPREAD_ABOVE).unwrap();
        assert!(a.is_loopback() && a != Ipv4Addr::LOCALHOST);
    }

    #[test]
    fn answers_pings_and_hands_back_other_lines() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let mut lg = LoadGen::new().unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let (ids, rep) = lg
            .connect_many(addr, 2, 8, false, deadline, |_| {})
            .unwrap();
        assert_eq!(rep.admitted, 2);
        let (mut s, _) = l.accept().unwrap();
        let (mut ghost, _) = l.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        // Accept order matches connect order on loopback in practice; find which is which.
        lg.set_answering(ids[1], false);
        s.write_all(b"HELLO hb/1 idle=1 interval=1 count=1\nPING 7\nECHO x\n")
            .unwrap();
        ghost.write_all(b"PING 8\nEND heartbeat-timeout\n").unwrap();
        drop(ghost);
        let mut got = Vec::new();
        while Instant::now() < deadline && (got.is_empty() || lg.open() == 2) {
            got.extend(lg.poll(Duration::from_millis(20)).unwrap());
        }
        let mut buf = [0u8; 7];
        s.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"PONG 7\n");
        assert_eq!(got[0].line, b"ECHO x");
        assert!(lg.conn(ids[0]).hello_at.is_some());
        let g = lg.conn(ids[1]);
        assert_eq!((g.pings, g.pongs), (1, 0));
        assert_eq!(g.end.as_ref().unwrap().0, "heartbeat-timeout");
        assert_eq!(g.state, State::Closed);
    }

    #[test]
    fn speaks_nats_when_asked() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut lg = LoadGen::new().unwrap();
        lg.set_dialect(Dialect::Nats);
        let deadline = Instant::now() + Duration::from_secs(5);
        let (ids, _) = lg
            .connect_many(l.local_addr().unwrap(), 1, 8, false, deadline, |_| {})
            .unwrap();
        let (mut s, _) = l.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"INFO {\"server_id\":\"x\"}\r\nPING\r\nMSG a 1 0\r\n")
            .unwrap();
        let want = [NATS_CONNECT, b"PONG\r\n"].concat();
        let mut buf = vec![0u8; want.len()];
        let mut got = Vec::new();
        while Instant::now() < deadline && got.is_empty() {
            got.extend(lg.poll(Duration::from_millis(20)).unwrap());
        }
        s.read_exact(&mut buf).unwrap();
        assert_eq!(buf, want);
        assert_eq!(got[0].line, b"MSG a 1 0");
        let c = lg.conn(ids[0]);
        assert!(c.hello_at.is_some());
        assert_eq!((c.pings, c.pongs, lg.total_pings()), (1, 1, 1));
    }
}
