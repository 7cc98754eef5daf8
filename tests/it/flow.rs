//! Flow control (issue 11, CONTRACT section 2) over real sockets: a reader that keeps reading is
//! never ended however fast the others send; a recipient that cannot catch up within `--stall`
//! of holding the senders back is ended `END slow-consumer` and the others go on; shutdown of a
//! big room is one second, not quadratic.
//!
//! Every test runs once per engine (`engine_tests!`: `flow::NAME::threads`, `flow::NAME::events`).
//! Every test floods loopback or holds a thousand sockets, so each one takes the machine alone
//! (`exclusive()`).
//!
//! Bounds are the contract's rules plus a stated margin for a shared two-core machine running a
//! debug build; the exact pause lengths are measured by hb-bench, not asserted here.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::support::*;

/// The `--stall` the tests give the server, and the one flag pair that sets it: the tests that
/// need it (stuck reader, slow reader, echo flooder) use [`STALL_ARGS`] and nothing else, so a
/// different value changes in one place.
const STALL: Duration = Duration::from_millis(300);
const STALL_ARGS: [&str; 2] = ["--stall", "300ms"];

/// What a bound on "ended within one stall" allows on top of [`STALL`]: the END's own trip
/// through the server's threads and loopback, a debug build, two cores shared with the test's
/// own flooder and readers. Generous on purpose: hb-bench measures the real pause.
const MARGIN: Duration = Duration::from_secs(1);

/// Relayed floods are `MSG snd SEQ PAD`: the sender's name in the tests.
const SENDER: &str = "snd";

/// A numbered flood from [`SENDER`]: `n` messages of exactly `len` bytes each as sent,
/// `MSG ` + ten digits + ` ` + padding + `\n`.
#[derive(Clone, Copy, Debug)]
struct Numbered {
    n: usize,
    len: usize,
}

impl Numbered {
    /// Message `i` as the sender writes it.
    fn line(self, i: usize, out: &mut Vec<u8>) {
        let start = out.len();
        write!(out, "MSG {i:010} ").unwrap();
        out.resize(start + self.len - 1, b'x');
        out.push(b'\n');
    }

    /// All of it, in bytes.
    fn bytes(self) -> u64 {
        (self.n * self.len) as u64
    }

    /// Starts writing it into `stream` as fast as the socket accepts it.
    fn flood(self, stream: TcpStream) -> Flood {
        Flood::start(stream, self.n, move |i, out| self.line(i, out))
    }
}

/// The server's log so far, after collecting what it printed in the last 100 ms.
fn log_text(srv: &mut Server) -> String {
    srv.log().settle(ms(100));
    srv.log().text()
}

fn chat_server(engine: Engine, extra: &[&str]) -> Server {
    let mut args = vec!["--mode", "chat"];
    args.extend_from_slice(extra);
    Server::start(engine, &args)
}

// ---------------------------------------------------------------------------------------------
// Helpers: a flooder thread, a counting reader thread, raw chat members.
// ---------------------------------------------------------------------------------------------

/// A thread writing `lines` lines (made by `line(i, buf)`) into a socket as fast as the socket
/// accepts them, in ~128 KiB writes, recording when a write last made progress.
struct Flood {
    t0: Instant,
    /// The same socket, to unblock the writer when the test gives up on it.
    stream: TcpStream,
    /// Nanoseconds after `t0` of the last write that accepted bytes.
    progress: Arc<AtomicU64>,
    handle: JoinHandle<FloodReport>,
}

/// What a [`Flood`] achieved.
#[derive(Debug)]
struct FloodReport {
    /// Bytes the socket accepted, and how many were meant to go.
    written: u64,
    total: u64,
    /// When the last byte went, if all did.
    done_at: Option<Instant>,
    /// The write error that stopped it, if one did.
    error: Option<String>,
}

impl Flood {
    fn start(
        mut stream: TcpStream,
        lines: usize,
        line: impl Fn(usize, &mut Vec<u8>) + Send + 'static,
    ) -> Self {
        let t0 = Instant::now();
        let progress = Arc::new(AtomicU64::new(0));
        let seen = progress.clone();
        let handle_stream = stream.try_clone().unwrap();
        let handle = thread::spawn(move || {
            let mut report = FloodReport {
                written: 0,
                total: 0,
                done_at: None,
                error: None,
            };
            let mut batch = Vec::with_capacity(160 * 1024);
            let mut i = 0;
            while i < lines {
                batch.clear();
                while i < lines && batch.len() < 128 * 1024 {
                    line(i, &mut batch);
                    i += 1;
                }
                report.total += batch.len() as u64;
                // write() rather than write_all(): every partial write is progress to record.
                let mut off = 0;
                while off < batch.len() {
                    match stream.write(&batch[off..]) {
                        Ok(0) => {
                            report.error = Some("write returned 0".into());
                            return report;
                        }
                        Ok(n) => {
                            off += n;
                            report.written += n as u64;
                            seen.store(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            report.error = Some(e.to_string());
                            return report;
                        }
                    }
                }
            }
            report.done_at = Some(Instant::now());
            report
        });
        Self {
            t0,
            stream: handle_stream,
            progress,
            handle,
        }
    }

    /// When the socket last accepted bytes.
    fn last_progress(&self) -> Instant {
        self.t0 + Duration::from_nanos(self.progress.load(Ordering::Relaxed))
    }

    /// Waits up to `within` for the flood to end by itself; after that shuts the socket down
    /// (the report then shows the error that caused), so a server that holds the sender back
    /// forever fails the test instead of hanging it.
    fn finish(self, within: Duration) -> FloodReport {
        let deadline = Instant::now() + within;
        while !self.handle.is_finished() && Instant::now() < deadline {
            thread::sleep(ms(5));
        }
        if !self.handle.is_finished() {
            let _ = self.stream.shutdown(std::net::Shutdown::Both);
        }
        self.handle.join().expect("flooder panicked")
    }
}

/// A chat member on a raw socket, joined (its `PONG joined` read) or about to be.
struct Member {
    name: String,
    stream: TcpStream,
    /// Bytes read past the `PONG joined` line (the start of what follows it).
    rest: Vec<u8>,
}

impl Member {
    /// Connects and sends `JOIN name` and `PING joined` without waiting: connect many, then
    /// [`Member::confirm`] each.
    fn start(port: u16, name: &str) -> Self {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream
            .write_all(format!("JOIN {name}\nPING joined\n").as_bytes())
            .unwrap();
        Self {
            name: name.to_owned(),
            stream,
            rest: Vec::new(),
        }
    }

    /// Reads HELLO up to the `PONG joined` that confirms the JOIN.
    fn confirm(&mut self) {
        self.stream.set_read_timeout(Some(PROMPT)).unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        let end = loop {
            if let Some(at) = find(&seen, b"PONG joined\n") {
                break at + b"PONG joined\n".len();
            }
            match self.stream.read(&mut buf) {
                Ok(0) => panic!(
                    "{} closed while joining: {:?}",
                    self.name,
                    String::from_utf8_lossy(&seen)
                ),
                Ok(n) => seen.extend_from_slice(&buf[..n]),
                Err(e) => panic!(
                    "{} while joining: {e}; read {:?}",
                    self.name,
                    String::from_utf8_lossy(&seen)
                ),
            }
        };
        assert!(
            seen.starts_with(b"HELLO hb/1 ") && find(&seen, b" mode=chat\n").is_some(),
            "{}: {:?}",
            self.name,
            String::from_utf8_lossy(&seen)
        );
        self.rest = seen.split_off(end);
    }

    fn join(port: u16, name: &str) -> Self {
        let mut m = Self::start(port, name);
        m.confirm();
        m
    }

    /// Its address as the server logs it.
    fn addr(&self) -> SocketAddr {
        self.stream.local_addr().unwrap()
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// What a [`Tally`] is to wait for.
struct Want {
    /// The numbered flood, every message in order, each exactly once.
    msgs: Numbered,
    /// A line that must also have come (e.g. `LEFT stuck slow-consumer`), if any.
    line: Option<&'static str>,
    /// Give up then (the report says how far it got).
    deadline: Instant,
}

/// A line other than the flood's messages.
#[derive(Debug)]
struct Other {
    at: Instant,
    line: String,
    /// Flood messages received before it, and when the last of them came.
    msgs_before: usize,
    last_msg_at: Option<Instant>,
}

/// What a reader saw.
struct TallyReport {
    name: String,
    msgs: usize,
    /// The first message that was not the next one expected (lost, repeated, reordered, or
    /// mangled); counting stops there.
    wrong: Option<String>,
    others: Vec<Other>,
    /// EOF or a read error before the reader had what it wanted: when, and which.
    closed: Option<(Instant, String)>,
    first_msg: Option<Instant>,
    last_msg: Option<Instant>,
    /// The longest time between two reads that returned data while messages were still due
    /// (from the first message to the last), and when that gap ended.
    max_gap: Duration,
    max_gap_end: Option<Instant>,
    /// The socket, still open: a reader that is done must not leave the room (the others would
    /// see `LEFT NAME closed`) before the test is over.
    _stream: TcpStream,
}

impl std::fmt::Debug for TallyReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let others: Vec<&str> = self.others.iter().map(|o| o.line.as_str()).collect();
        write!(
            f,
            "{}: {} messages, wrong {:?}, closed {:?}, max gap {:?}, other lines {:?}",
            self.name,
            self.msgs,
            self.wrong,
            self.closed.as_ref().map(|c| &c.1),
            self.max_gap,
            others
        )
    }
}

/// A thread reading one member's socket as fast as it can, checking the numbered flood
/// arrives complete and in order and timing the gaps between reads.
struct Tally(JoinHandle<TallyReport>);

impl Tally {
    fn start(member: Member, want: Want) -> Self {
        Self(thread::spawn(move || tally(member, want)))
    }

    fn join(self) -> TallyReport {
        self.0.join().expect("reader panicked")
    }
}

fn tally(member: Member, want: Want) -> TallyReport {
    let Member {
        name,
        mut stream,
        rest,
    } = member;
    // Short read timeouts only to notice the deadline.
    stream.set_read_timeout(Some(ms(100))).unwrap();
    let prefix = format!("MSG {SENDER} ");
    let mut r = TallyReport {
        name,
        msgs: 0,
        wrong: None,
        others: Vec::new(),
        closed: None,
        first_msg: None,
        last_msg: None,
        max_gap: Duration::ZERO,
        max_gap_end: None,
        _stream: stream.try_clone().unwrap(),
    };
    let done = |r: &TallyReport| {
        r.msgs == want.msgs.n
            && want
                .line
                .is_none_or(|l| r.others.iter().any(|o| o.line == l))
    };
    let mut carry = rest;
    let mut buf = vec![0u8; 256 * 1024];
    let mut last_read: Option<Instant> = None;
    let mut fresh = carry.len();
    let mut expected = Vec::new();
    loop {
        // Parse every complete line held (the first round: what came with the JOIN).
        let now = Instant::now();
        if fresh > 0 {
            if r.msgs > 0 && r.msgs < want.msgs.n {
                if let Some(prev) = last_read {
                    let gap = now - prev;
                    if gap > r.max_gap {
                        r.max_gap = gap;
                        r.max_gap_end = Some(now);
                    }
                }
            }
            last_read = Some(now);
            let mut start = 0;
            while let Some(nl) = carry[start..].iter().position(|&b| b == b'\n') {
                let line = &carry[start..start + nl];
                start += nl + 1;
                if let Some(body) = line.strip_prefix(prefix.as_bytes()) {
                    expected.clear();
                    want.msgs.line(r.msgs, &mut expected);
                    // The relay of `MSG TEXT` is `MSG snd TEXT`: compare TEXT byte for byte.
                    if r.msgs >= want.msgs.n || body != &expected[4..want.msgs.len - 1] {
                        r.wrong = Some(format!(
                            "after {} messages got {:?}",
                            r.msgs,
                            String::from_utf8_lossy(&line[..line.len().min(40)])
                        ));
                        return r;
                    }
                    r.msgs += 1;
                    r.first_msg.get_or_insert(now);
                    r.last_msg = Some(now);
                } else {
                    r.others.push(Other {
                        at: now,
                        line: String::from_utf8_lossy(line).into_owned(),
                        msgs_before: r.msgs,
                        last_msg_at: r.last_msg,
                    });
                }
            }
            carry.drain(..start);
        }
        if done(&r) || Instant::now() > want.deadline {
            return r;
        }
        fresh = 0;
        match stream.read(&mut buf) {
            Ok(0) => {
                r.closed = Some((Instant::now(), "EOF".into()));
                return r;
            }
            Ok(n) => {
                carry.extend_from_slice(&buf[..n]);
                fresh = n;
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) => {}
            Err(e) => {
                r.closed = Some((Instant::now(), e.to_string()));
                return r;
            }
        }
    }
}

/// Answers a `PING` on `p` and waits for its `PONG`, skipping room lines; panics if an `END`
/// or a close comes instead (the member was ended).
fn still_served(p: &mut Peer, what: &str) {
    p.send(b"PING still\n");
    let deadline = Instant::now() + PROMPT;
    loop {
        match p.next(deadline.saturating_duration_since(Instant::now())) {
            Next::Line(_, l) if l == "PONG still" => return,
            Next::Line(_, l) if l.starts_with("END ") => panic!("{what} was ended: {l}"),
            Next::Line(..) => {}
            other => panic!("{what}: no PONG ({other:?})"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 1. A fast sender and readers that keep up: nobody is ended, nothing is lost.
// ---------------------------------------------------------------------------------------------

/// One member floods `msgs` as fast as its socket accepts them while `readers` members read as
/// fast as they can: every reader gets all of them, in order, once, and nobody is ended.
///
/// With `--queue 65536`: the rule holds for any queue size, and a small queue makes today's
/// fault show within the test's second on a debug build (with the default 1 MiB, the debug
/// thread engine happens to keep up with 50,000 messages; the release build measured in the
/// issue does not).
fn readers_that_keep_up_are_never_ended(engine: Engine, readers: usize, msgs: Numbered) {
    let mut srv = chat_server(engine, &["--queue", "65536"]);
    let members: Vec<Member> = (0..readers)
        .map(|i| Member::join(srv.port, &format!("r{i}")))
        .collect();
    let mut snd = join(srv.port, SENDER);
    let deadline = Instant::now() + ms(20_000);
    let tallies: Vec<Tally> = members
        .into_iter()
        .map(|m| {
            Tally::start(
                m,
                Want {
                    msgs,
                    line: None,
                    deadline,
                },
            )
        })
        .collect();
    let t0 = Instant::now();
    let flood = msgs.flood(snd.stream.try_clone().unwrap());
    let reports: Vec<TallyReport> = tallies.into_iter().map(Tally::join).collect();
    let elapsed = t0.elapsed();
    let fr = flood.finish(PROMPT);
    let n = msgs.n;
    for r in &reports {
        assert!(
            r.wrong.is_none() && r.closed.is_none() && r.msgs == n,
            "a reader that keeps up lost messages or was ended: {r:?}\nserver log:\n{}",
            log_text(&mut srv)
        );
        assert!(
            r.others.iter().all(|o| o.line.starts_with("JOINED ")),
            "{r:?}"
        );
    }
    assert!(fr.error.is_none() && fr.written == msgs.bytes(), "{fr:?}");
    still_served(&mut snd, "the sender");
    srv.log().settle(ms(100));
    assert_eq!(
        srv.log().count("slow-consumer"),
        0,
        "{}",
        log_text(&mut srv)
    );
    eprintln!(
        "{readers} reader(s) x {n} messages in {elapsed:?} ({:.0} deliveries/s); longest gap {:?}",
        (readers * n) as f64 / elapsed.as_secs_f64(),
        reports.iter().map(|r| r.max_gap).max().unwrap()
    );
}

engine_tests!(a_fast_sender_never_ends_a_reader_that_keeps_up);
fn a_fast_sender_never_ends_a_reader_that_keeps_up(engine: Engine) {
    let _x = exclusive();
    let _w = Watchdog::new("flow-1-reader", ms(30_000));
    readers_that_keep_up_are_never_ended(
        engine,
        1,
        Numbered {
            n: 50_000,
            len: 100,
        },
    );
}

engine_tests!(a_fast_sender_never_ends_ten_readers_that_keep_up);
fn a_fast_sender_never_ends_ten_readers_that_keep_up(engine: Engine) {
    let _x = exclusive();
    let _w = Watchdog::new("flow-10-readers", ms(30_000));
    readers_that_keep_up_are_never_ended(
        engine,
        10,
        Numbered {
            n: 20_000,
            len: 100,
        },
    );
}

// ---------------------------------------------------------------------------------------------
// 2. One stuck reader among ten healthy ones costs them one stall, no message.
// ---------------------------------------------------------------------------------------------

/// Ten healthy readers and one member that never reads; one member floods 10 MB. The kernel
/// takes up to ~4 MB for the stuck one on loopback (the server's send buffer autotunes to
/// `tcp_wmem`'s maximum; measured 2.8 MB queued), so 10 MB in 1,000-byte messages make sure it
/// holds the sender back mid-flood, and the readers must get the rest after it is gone.
/// `--queue 65536` as in the keep-up tests: any queue size must do.
fn a_stuck_reader_costs_the_others_one_stall(engine: Engine) {
    let msgs = Numbered {
        n: 10_000,
        len: 1000,
    };
    let n = msgs.n;
    let mut srv = chat_server(engine, &["--queue", "65536", STALL_ARGS[0], STALL_ARGS[1]]);
    let members: Vec<Member> = (0..10)
        .map(|i| Member::join(srv.port, &format!("r{i}")))
        .collect();
    let stuck = join_stuck(srv.port, "stuck");
    let mut snd = join(srv.port, SENDER);
    let deadline = Instant::now() + ms(20_000);
    let tallies: Vec<Tally> = members
        .into_iter()
        .map(|m| {
            Tally::start(
                m,
                Want {
                    msgs,
                    line: Some("LEFT stuck slow-consumer"),
                    deadline,
                },
            )
        })
        .collect();
    let flood = msgs.flood(snd.stream.try_clone().unwrap());
    let reports: Vec<TallyReport> = tallies.into_iter().map(Tally::join).collect();
    let fr = flood.finish(PROMPT);
    let log = log_text(&mut srv);
    for r in &reports {
        assert!(
            r.wrong.is_none() && r.closed.is_none() && r.msgs == n,
            "a healthy reader lost messages or was ended: {r:?}\nserver log:\n{log}"
        );
        let lefts: Vec<&Other> = r
            .others
            .iter()
            .filter(|o| !o.line.starts_with("JOINED "))
            .collect();
        assert!(
            lefts.len() == 1 && lefts[0].line == "LEFT stuck slow-consumer",
            "{r:?}\nserver log:\n{log}"
        );
        // The healthy reader keeps up, so the last message before the LEFT is when the stuck
        // one started holding the sender back (or later); the LEFT must follow within a stall.
        let left = lefts[0];
        assert!(
            left.msgs_before < n,
            "{}: the stuck member was ended only after the whole flood; it never held the \
             sender back: {r:?}",
            r.name
        );
        let held = left.last_msg_at.unwrap_or(left.at);
        assert!(
            left.at - held <= STALL + MARGIN,
            "{}: LEFT came {:?} after the last message before it (after {} messages); \
             allowed {STALL:?} + {MARGIN:?}",
            r.name,
            left.at - held,
            left.msgs_before
        );
        assert!(
            r.max_gap < STALL + MARGIN,
            "{}: a pause of {:?} (allowed {STALL:?} + {MARGIN:?})",
            r.name,
            r.max_gap
        );
    }
    assert!(fr.error.is_none() && fr.written == msgs.bytes(), "{fr:?}");
    let addr = stuck.addr();
    srv.log()
        .wait_for(&format!("{addr} END slow-consumer"), PROMPT);
    srv.log().wait_for(
        &format!("{addr} stuck left the room (slow-consumer)"),
        PROMPT,
    );
    still_served(&mut snd, "the sender");
    let log = log_text(&mut srv);
    assert!(
        log.lines()
            .filter(|l| l.contains("slow-consumer"))
            .all(|l| l.contains(&addr.to_string())),
        "only the stuck member is a slow consumer:\n{log}"
    );
    eprintln!(
        "stuck among 10: longest gap {:?}, LEFT after {:?} messages",
        reports.iter().map(|r| r.max_gap).max().unwrap(),
        reports
            .iter()
            .map(|r| r
                .others
                .iter()
                .find(|o| o.line.starts_with("LEFT"))
                .unwrap()
                .msgs_before)
            .collect::<Vec<_>>()
    );
    drop(stuck);
}

engine_tests!(a_stuck_reader_among_ten_is_ended_within_a_stall_and_the_others_get_everything);
/// Needs `--stall`.
fn a_stuck_reader_among_ten_is_ended_within_a_stall_and_the_others_get_everything(engine: Engine) {
    let _x = exclusive();
    let _w = Watchdog::new("flow-stuck", ms(30_000));
    a_stuck_reader_costs_the_others_one_stall(engine);
}

// ---------------------------------------------------------------------------------------------
// 3. A slow reader that still reads is ended, and reads its END.
// ---------------------------------------------------------------------------------------------

/// How a slow reader's connection ended.
#[derive(Debug)]
struct SlowReport {
    /// The last few complete lines, newest last.
    last_lines: Vec<String>,
    /// `EOF`, a read error, or `deadline`.
    ended_by: String,
}

/// A member reading 1 KiB every 100 ms while another floods 10 MB (more than the kernel buffers
/// toward it, ~4 MB on loopback, plus its 64 KiB queue): it cannot catch up, so it is ended; it
/// is still reading, so it must read `END slow-consumer` before EOF.
fn a_slow_reader_reads_its_end(engine: Engine) {
    let msgs = Numbered {
        n: 10_000,
        len: 1000,
    };
    let mut srv = chat_server(engine, &["--queue", "65536", STALL_ARGS[0], STALL_ARGS[1]]);
    let slow = Member::join(srv.port, "slow");
    let addr = slow.addr();
    let mut snd = join(srv.port, SENDER);
    // Reads 1 KiB every 100 ms until told the server ended it; then at full speed, to reach
    // the END behind what the kernel already holds.
    let hurry = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let hurried = hurry.clone();
    let slow_stream = slow.stream.try_clone().unwrap();
    let reader = thread::spawn(move || {
        let Member {
            mut stream, rest, ..
        } = slow;
        stream.set_read_timeout(Some(ms(100))).unwrap();
        let deadline = Instant::now() + ms(20_000);
        let mut carry = rest;
        let mut last_lines: Vec<String> = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        let ended_by = loop {
            if Instant::now() > deadline {
                break "deadline".to_string();
            }
            let fast = hurried.load(Ordering::Relaxed);
            let want = if fast { buf.len() } else { 1024 };
            let got = match stream.read(&mut buf[..want]) {
                Ok(0) => break "EOF".to_string(),
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    0
                }
                Err(e) => break e.to_string(),
            };
            carry.extend_from_slice(&buf[..got]);
            let mut start = 0;
            while let Some(nl) = carry[start..].iter().position(|&b| b == b'\n') {
                if last_lines.len() == 5 {
                    last_lines.remove(0);
                }
                let line = &carry[start..start + nl];
                last_lines.push(String::from_utf8_lossy(&line[..line.len().min(60)]).into());
                start += nl + 1;
            }
            carry.drain(..start);
            if !fast {
                thread::sleep(ms(100));
            }
        };
        SlowReport {
            last_lines,
            ended_by,
        }
    });
    let flood = msgs.flood(snd.stream.try_clone().unwrap());
    let found = srv.log().find(
        &format!("{addr} slow left the room (slow-consumer)"),
        ms(10_000),
    );
    hurry.store(true, Ordering::Relaxed);
    if found.is_none() {
        // Not ended: stop reading so the report comes now.
        let _ = slow_stream.shutdown(std::net::Shutdown::Both);
    }
    let report = reader.join().unwrap();
    let fr = flood.finish(PROMPT);
    assert!(
        found.is_some(),
        "the slow reader was never ended; it saw {report:?}\nserver log:\n{}",
        log_text(&mut srv)
    );
    assert!(
        report.ended_by == "EOF"
            && report.last_lines.last().map(String::as_str) == Some("END slow-consumer"),
        "a reading client must read END slow-consumer, then EOF: {report:?}\nserver log:\n{}",
        log_text(&mut srv)
    );
    srv.log()
        .wait_for(&format!("{addr} END slow-consumer"), PROMPT);
    assert!(fr.error.is_none(), "the sender: {fr:?}");
    still_served(&mut snd, "the sender");
}

engine_tests!(a_slow_reader_that_still_reads_is_ended_and_reads_end_slow_consumer_before_eof);
/// Needs `--stall`.
fn a_slow_reader_that_still_reads_is_ended_and_reads_end_slow_consumer_before_eof(engine: Engine) {
    let _x = exclusive();
    let _w = Watchdog::new("flow-slow", ms(30_000));
    a_slow_reader_reads_its_end(engine);
}

// ---------------------------------------------------------------------------------------------
// 4. SIGTERM ends a room of 1,000 within a second.
// ---------------------------------------------------------------------------------------------

fn a_big_room_shuts_down_within_a_second(engine: Engine) {
    const MEMBERS: usize = 1000;
    // The members' sockets here, plus the server's (it inherits the limit).
    ensure_fd_limit(3 * MEMBERS as u64);
    let mut srv = chat_server(engine, &[]);
    let joining_since = Instant::now();
    let mut members: Vec<Member> = Vec::with_capacity(MEMBERS);
    // In bursts of 100, each member confirmed before the next burst.
    for burst in 0..MEMBERS / 100 {
        let mut joining: Vec<Member> = (0..100)
            .map(|i| Member::start(srv.port, &format!("m{}", burst * 100 + i)))
            .collect();
        for m in &mut joining {
            m.confirm();
        }
        members.append(&mut joining);
    }
    let t = Instant::now();
    srv.proc.signal("TERM");
    let exit_deadline = t + ms(20_000);
    let status = loop {
        if let Some(st) = srv.proc.child.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < exit_deadline, "no exit 20 s after SIGTERM");
        thread::sleep(ms(2));
    };
    let took = t.elapsed();
    assert_eq!(status.code(), Some(0));
    // Every member's connection is closed; every 20th reads everything: END server-shutdown
    // is the last line.
    let mut unclean = Vec::new();
    for (i, m) in members.iter_mut().enumerate() {
        m.stream.set_read_timeout(Some(PROMPT)).unwrap();
        let mut all = std::mem::take(&mut m.rest);
        let mut buf = [0u8; 16 * 1024];
        let end = loop {
            match m.stream.read(&mut buf) {
                Ok(0) => break "EOF".to_string(),
                Ok(n) if i % 20 == 0 => all.extend_from_slice(&buf[..n]),
                Ok(_) => {}
                Err(e) => break e.to_string(),
            }
        };
        if end != "EOF" {
            unclean.push(format!("{}: {end}", m.name));
        }
        if i % 20 == 0 {
            let text = String::from_utf8_lossy(&all);
            assert_eq!(
                text.lines().last(),
                Some("END server-shutdown"),
                "{} did not end with END server-shutdown; its last bytes: {:?}",
                m.name,
                &text[text.len().saturating_sub(200)..]
            );
        }
    }
    assert!(unclean.is_empty(), "not closed cleanly: {unclean:?}");
    // The bound: the contract's one second, plus 100 ms for fork/exec of kill(1) (inside the
    // measurement) and the 2 ms polling of the exit. Checked last, so a failure here means
    // everything else was right.
    assert!(
        took <= ms(1100),
        "exit took {took:?} after SIGTERM with {MEMBERS} members (contract: one second)"
    );
    eprintln!(
        "{MEMBERS} members joined in {joined:?}; exit {took:?} after SIGTERM",
        joined = t - joining_since
    );
}

engine_tests!(sigterm_ends_a_room_of_1000_members_and_exits_within_a_second);
fn sigterm_ends_a_room_of_1000_members_and_exits_within_a_second(engine: Engine) {
    let _x = exclusive();
    let _w = Watchdog::new("flow-shutdown-1000", ms(60_000));
    a_big_room_shuts_down_within_a_second(engine);
}

// ---------------------------------------------------------------------------------------------
// 5. Echo mode: a client that never reads its echoes is ended after one stall; another keeps
//    its round trip.
// ---------------------------------------------------------------------------------------------

fn an_echo_flooder_is_ended_within_a_stall(engine: Engine) {
    let mut srv = Server::start(engine, &["--mode", "echo", STALL_ARGS[0], STALL_ARGS[1]]);
    let mut other = Peer::connect(srv.port);
    let (_, hello) = other.line(PROMPT);
    assert!(hello.ends_with(" mode=echo"), "{hello}");
    // 20 MB of `MSG x`, never reading an echo (a tiny receive buffer: the kernel cannot hold
    // megabytes of echoes for it either).
    let flooder = connect_small_rcvbuf(srv.port);
    let addr = flooder.local_addr().unwrap();
    const LINES: usize = 20_000_000 / 6;
    let flood = Flood::start(flooder.try_clone().unwrap(), LINES, |_, out| {
        out.extend_from_slice(b"MSG x\n")
    });
    // Meanwhile the other client's PINGs are answered promptly: within one stall, the most the
    // contract lets one client cost another (in echo mode they share nothing but the machine).
    let needle = format!("{addr} END slow-consumer");
    let deadline = Instant::now() + ms(10_000);
    let mut k = 0;
    let mut worst = Duration::ZERO;
    let ended = loop {
        k += 1;
        let sent = Instant::now();
        other.send(format!("PING {k}\n").as_bytes());
        other.expect(&format!("PONG {k}"), PROMPT);
        let rtt = sent.elapsed();
        worst = worst.max(rtt);
        assert!(
            rtt < STALL,
            "PING {k} answered after {rtt:?} during the flood"
        );
        if let Some(hit) = srv.log().find(&needle, ms(20)) {
            break Some(hit);
        }
        if Instant::now() > deadline {
            break None;
        }
    };
    let stopped = flood.last_progress();
    let Some((ended_at, _)) = ended else {
        panic!(
            "the flooder was not ended within 10 s: {:?}\nserver log:\n{}",
            flood.finish(Duration::ZERO),
            log_text(&mut srv)
        );
    };
    // "Stopped accepting": the flooder's last write that made progress. A server that keeps
    // reading ends it while it is still writing (then the difference is zero).
    let after = ended_at.saturating_duration_since(stopped);
    assert!(
        after <= STALL + MARGIN,
        "END slow-consumer {after:?} after the flooder's socket stopped accepting \
         (allowed {STALL:?} + {MARGIN:?})"
    );
    // A few more round trips after the END.
    for j in 0..5 {
        other.send(format!("PING after{j}\n").as_bytes());
        other.expect(&format!("PONG after{j}"), PROMPT);
    }
    let fr = flood.finish(PROMPT);
    drop(flooder);
    eprintln!(
        "echo flooder: ended {after:?} after its last accepted write, {} MB accepted; \
         {k} PINGs, worst round trip {worst:?}",
        fr.written / 1_000_000
    );
}

engine_tests!(
    an_echo_client_that_never_reads_is_ended_within_a_stall_while_another_keeps_its_round_trip
);
/// Needs `--stall`.
fn an_echo_client_that_never_reads_is_ended_within_a_stall_while_another_keeps_its_round_trip(
    engine: Engine,
) {
    let _x = exclusive();
    let _w = Watchdog::new("flow-echo", ms(30_000));
    an_echo_flooder_is_ended_within_a_stall(engine);
}
