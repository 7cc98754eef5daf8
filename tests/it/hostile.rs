//! Hostile and careless clients: END must survive a client that is still sending, and no
//! write pattern may make the server hold more memory than its limits say.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use crate::support::*;

const HELLO: &str = "HELLO hb/1 idle=30000 interval=10000 count=3 mode=echo\n";

/// What a client that writes everything first and reads only afterwards (like `nc` fed from
/// a pipe) experienced.
#[derive(Debug)]
struct Naive {
    /// The first write that failed (a reset from the server makes it EPIPE or ECONNRESET).
    write_error: Option<ErrorKind>,
    /// Everything read, in order.
    read: String,
    /// `None` for a clean EOF, else the error that ended reading (a reset).
    read_error: Option<ErrorKind>,
}

/// Writes `chunks`, sleeping `gap` before each one after the first, then reads to the end.
/// The gaps let the server act on the first chunk while the client is still sending, the way
/// a client piping a file is.
fn write_then_read(stream: &mut TcpStream, chunks: &[&[u8]], gap: Duration) -> Naive {
    let mut write_error = None;
    for (i, c) in chunks.iter().enumerate() {
        if i > 0 {
            thread::sleep(gap);
        }
        if let Err(e) = stream.write_all(c) {
            write_error = Some(e.kind());
            break;
        }
    }
    let (read, read_error) = read_to_end(stream);
    Naive {
        write_error,
        read,
        read_error,
    }
}

/// Reads until EOF or an error (bounded by [`PROMPT`] per read).
fn read_to_end(stream: &mut TcpStream) -> (String, Option<ErrorKind>) {
    stream.set_read_timeout(Some(PROMPT)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let error = loop {
        match stream.read(&mut buf) {
            Ok(0) => break None,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => break Some(e.kind()),
        }
    };
    (String::from_utf8_lossy(&got).into_owned(), error)
}

/// Reads exactly the bytes of `want` (line by line as they come), failing on a mismatch.
fn expect_bytes(stream: &mut TcpStream, want: &str) {
    stream.set_read_timeout(Some(PROMPT)).unwrap();
    let mut got = vec![0u8; want.len()];
    stream
        .read_exact(&mut got)
        .unwrap_or_else(|e| panic!("reading {want:?}: {e}"));
    assert_eq!(String::from_utf8_lossy(&got), want);
}

/// `n` connections that each read their `HELLO`.
fn greeted(port: u16, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|_| {
            let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            expect_bytes(&mut s, HELLO);
            s
        })
        .collect()
}

engine_tests!(line_too_long_end_survives_a_client_still_sending);
/// The client sent its over-long line and is still sending when END comes: every one of ten
/// gets exactly `END line-too-long` and then a clean EOF, and its writes are not reset.
/// (Before the linger the server closed with input pending: the kernel answered with a reset,
/// the client's next write failed, and a client like nc quit without showing the END.)
fn line_too_long_end_survives_a_client_still_sending(engine: Engine) {
    let _w = Watchdog::new("hostile-line-too-long", ms(30_000));
    let srv = Server::start(engine, &[]);
    let mut long = vec![b'x'; 70_000];
    long.push(b'\n');
    let more = vec![b'y'; 4096];
    for round in 1..=10 {
        let mut s = TcpStream::connect(("127.0.0.1", srv.port)).unwrap();
        let got = write_then_read(&mut s, &[&long, &more, &more], ms(40));
        assert_eq!(got.write_error, None, "round {round}: {got:?}");
        assert_eq!(
            got.read,
            format!("{HELLO}END line-too-long\n"),
            "round {round}"
        );
        assert_eq!(
            got.read_error, None,
            "round {round}: expected EOF, not a reset"
        );
    }
}

engine_tests!(server_full_end_survives_a_client_still_sending);
/// A refused client that had already sent data gets `END server-full` and a clean EOF.
fn server_full_end_survives_a_client_still_sending(engine: Engine) {
    let _w = Watchdog::new("hostile-server-full", ms(30_000));
    let mut srv = Server::start(engine, &["--max-conns", "1"]);
    let mut holder = Peer::connect(srv.port);
    holder.expect(HELLO.trim_end(), PROMPT);
    let msg = b"MSG hello\n".repeat(400);
    for round in 1..=10 {
        let mut s = TcpStream::connect(("127.0.0.1", srv.port)).unwrap();
        let got = write_then_read(&mut s, &[&msg, &msg, &msg], ms(40));
        assert_eq!(got.write_error, None, "round {round}: {got:?}");
        assert_eq!(got.read, "END server-full\n", "round {round}");
        assert_eq!(
            got.read_error, None,
            "round {round}: expected EOF, not a reset"
        );
    }
    srv.log().wait_for("max-conns 1 reached", PROMPT);
    // The start-up line names mode and wire, with the address last.
    let (_, start) = srv.log().wait_for("listening on", PROMPT);
    assert!(
        start.ends_with(&format!(
            " mode echo, wire line, listening on 127.0.0.1:{}",
            srv.port
        )),
        "{start}"
    );
    // The refusals did not disturb the client being served.
    holder.send(b"MSG still\n");
    holder.expect("ECHO still", PROMPT);
}

engine_tests!(heartbeat_timeout_end_then_input_is_drained_not_reset);
/// A late answer crossing `END heartbeat-timeout` (input arriving after END) is drained, not
/// answered with a reset: the client's writes succeed and it then reads a clean EOF.
fn heartbeat_timeout_end_then_input_is_drained_not_reset(engine: Engine) {
    let _w = Watchdog::new("hostile-heartbeat-timeout", ms(20_000));
    let srv = Server::start(
        engine,
        &["--idle", "200ms", "--interval", "100ms", "--count", "2"],
    );
    for round in 1..=3 {
        let mut s = TcpStream::connect(("127.0.0.1", srv.port)).unwrap();
        expect_bytes(
            &mut s,
            "HELLO hb/1 idle=200 interval=100 count=2 mode=echo\nPING 1\nPING 2\n\
             END heartbeat-timeout\n",
        );
        let late = b"PONG 2\n".repeat(500);
        let got = write_then_read(&mut s, &[&late, &late, &late], ms(40));
        assert_eq!(got.write_error, None, "round {round}: {got:?}");
        assert_eq!(got.read, "", "round {round}");
        assert_eq!(
            got.read_error, None,
            "round {round}: expected EOF, not a reset"
        );
    }
}

engine_tests!(a_client_that_keeps_sending_after_end_does_not_hold_the_server);
/// The linger is bounded: a client that never stops sending after END is closed anyway, and
/// the server still exits within a second of SIGTERM while such clients linger.
fn a_client_that_keeps_sending_after_end_does_not_hold_the_server(engine: Engine) {
    let _w = Watchdog::new("hostile-endless-sender", ms(20_000));
    let mut srv = Server::start(engine, &[]);
    let mut s = TcpStream::connect(("127.0.0.1", srv.port)).unwrap();
    let mut w = s.try_clone().unwrap();
    let flood = thread::spawn(move || {
        let mut line = vec![b'x'; 70_000];
        line.push(b'\n');
        let _ = w.write_all(&line);
        let chunk = vec![b'z'; 16 * 1024];
        let t = Instant::now();
        // Keeps sending until the server gives up on it (or far past any linger).
        while t.elapsed() < ms(5_000) {
            if w.write_all(&chunk).is_err() {
                return Some(t.elapsed());
            }
        }
        None
    });
    let t0 = Instant::now();
    let (read, _) = read_to_end(&mut s);
    assert_eq!(read, format!("{HELLO}END line-too-long\n"));
    let stopped = flood.join().unwrap();
    assert!(
        stopped.is_some(),
        "the server kept draining an endless sender for 5 s"
    );
    srv.log().wait_for(" closed", PROMPT);
    assert!(
        t0.elapsed() < ms(2_000),
        "closing an endless sender took {:?}",
        t0.elapsed()
    );
    drop(s);
    // SIGTERM while fresh endless senders linger: exit 0 within a second.
    let mut senders = Vec::new();
    for _ in 0..4 {
        let mut c = TcpStream::connect(("127.0.0.1", srv.port)).unwrap();
        let mut w = c.try_clone().unwrap();
        expect_bytes(&mut c, HELLO);
        senders.push((
            c,
            thread::spawn(move || {
                let chunk = vec![b'm'; 16 * 1024];
                let t = Instant::now();
                while t.elapsed() < ms(5_000) && w.write_all(&chunk).is_ok() {}
            }),
        ));
    }
    srv.log().settle(ms(100));
    let t = Instant::now();
    srv.proc.signal("TERM");
    let st = srv.proc.wait(ms(3_000));
    assert!(st.success(), "{st:?}");
    assert!(t.elapsed() < ms(1_000), "exit took {:?}", t.elapsed());
    for (c, h) in senders {
        drop(c);
        let _ = h.join();
    }
}

/// VmRSS of `pid` in KiB.
fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

engine_tests!(lines_split_across_reads_do_not_grow_memory);
/// Four clients stream 4 KiB lines in writes that end mid-line for two seconds: the server's
/// memory stays about flat. (The old decoder compacted only when a read ended on a newline
/// and went from 3 to 394 MiB in four seconds under this load.)
fn lines_split_across_reads_do_not_grow_memory(engine: Engine) {
    let _x = exclusive();
    let _w = Watchdog::new("hostile-rss-stream", ms(30_000));
    let srv = Server::start(engine, &["--max-line", "8192"]);
    let pid = srv.proc.pid();
    // PONG lines get no reply, so only the input side is measured and nobody is a slow reader.
    let line = format!("PONG {}\n", "p".repeat(4090));
    assert_eq!(line.len(), 4096);
    let stream: Vec<u8> = line.repeat(64).into_bytes();
    let clients = greeted(srv.port, 4);
    let before = rss_kib(pid);
    let handles: Vec<_> = clients
        .into_iter()
        .map(|mut s| {
            let stream = stream.clone();
            thread::spawn(move || {
                let t = Instant::now();
                let mut sent = 0usize;
                let mut at = 0usize;
                while t.elapsed() < ms(2_000) {
                    // 6000-byte writes: almost every read ends in the middle of a line.
                    let end = (at + 6000).min(stream.len());
                    s.write_all(&stream[at..end]).expect("server keeps reading");
                    sent += end - at;
                    at = if end == stream.len() { 0 } else { end };
                }
                (s, sent)
            })
        })
        .collect();
    let mut total = 0;
    let mut keep = Vec::new();
    for h in handles {
        let (s, sent) = h.join().unwrap();
        total += sent;
        keep.push(s);
    }
    let after = rss_kib(pid);
    eprintln!("measured: VmRSS {before} -> {after} KiB");
    assert!(
        total > 8 << 20,
        "too little traffic to judge: {total} bytes"
    );
    let growth = after.saturating_sub(before);
    assert!(
        growth < 48 * 1024,
        "RSS grew {growth} KiB ({before} -> {after} KiB) after {total} bytes of split lines"
    );
}

engine_tests!(idle_connections_after_a_burst_stay_small);
/// Sixteen clients send a burst of 1 KiB lines in 256 KiB writes and then go idle: the idle
/// connections hold about nothing (measured +0.3 MiB; the old decoder kept each burst's peak
/// buffer, +25 MiB here and 82 MiB in the run).
fn idle_connections_after_a_burst_stay_small(engine: Engine) {
    let _x = exclusive();
    let _w = Watchdog::new("hostile-rss-burst", ms(30_000));
    let srv = Server::start(engine, &["--max-line", "8192"]);
    let pid = srv.proc.pid();
    let line = format!("PONG {}\n", "q".repeat(1000));
    let write = line.repeat(256 * 1024 / line.len()).into_bytes();
    let clients = greeted(srv.port, 16);
    let before = rss_kib(pid);
    let handles: Vec<_> = clients
        .into_iter()
        .map(|mut s| {
            let write = write.clone();
            thread::spawn(move || {
                for _ in 0..12 {
                    s.write_all(&write).expect("server keeps reading");
                }
                // A PING answered proves the server has read the whole burst.
                s.write_all(b"PING done\n").unwrap();
                expect_bytes(&mut s, "PONG done\n");
                s
            })
        })
        .collect();
    let keep: Vec<TcpStream> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let after = rss_kib(pid);
    eprintln!("measured: VmRSS {before} -> {after} KiB");
    let growth = after.saturating_sub(before);
    assert!(
        growth < 8 * 1024,
        "RSS grew {growth} KiB ({before} -> {after} KiB) for {} idle connections",
        keep.len()
    );
}

engine_tests!(a_flood_is_limited_then_ended_while_a_polite_client_keeps_its_round_trip);
/// `--rate 20 --burst 5`: a burst over it gets `ERR rate-limited` for the excess; a client
/// sending at 100x the limit is ended `END flood` about a second later; a client within its
/// limit meanwhile gets every answer promptly.
fn a_flood_is_limited_then_ended_while_a_polite_client_keeps_its_round_trip(engine: Engine) {
    let _w = Watchdog::new("hostile-flood", ms(30_000));
    let mut srv = Server::start(engine, &["--rate", "20", "--burst", "5"]);
    let mut polite = Peer::connect(srv.port);
    polite.expect(HELLO.trim_end(), PROMPT);
    let mut flood = Peer::connect(srv.port);
    flood.expect(HELLO.trim_end(), PROMPT);
    flood.send(&b"MSG x\n".repeat(8));
    for _ in 0..5 {
        flood.expect("ECHO x", PROMPT);
    }
    for _ in 0..3 {
        flood.expect(
            "ERR rate-limited over 20 lines a second (burst 5): line dropped",
            PROMPT,
        );
    }
    // 2,000 lines a second (100x) from another thread, while the polite client sends 10 a
    // second and times each answer.
    let mut w = flood.stream.try_clone().unwrap();
    let started = Instant::now();
    let flooder = thread::spawn(move || {
        while started.elapsed() < ms(3_000) {
            if w.write_all(&b"MSG x\n".repeat(20)).is_err() {
                return;
            }
            thread::sleep(ms(10));
        }
    });
    let mut worst = Duration::ZERO;
    for k in 0..15 {
        let t = Instant::now();
        polite.send(format!("MSG p{k}\n").as_bytes());
        polite.expect(&format!("ECHO p{k}"), PROMPT);
        worst = worst.max(t.elapsed());
        thread::sleep(ms(100));
    }
    let ended_at = loop {
        match flood.next(PROMPT) {
            Next::Line(at, l) if l == "END flood" => break at,
            Next::Line(..) => {}
            other => panic!("no END flood: {other:?}"),
        }
    };
    let _ = flooder.join();
    // The flood began about 0.1 s after connecting; END about a second after its first drop.
    assert!(ended_at < ms(2_500), "END flood at {ended_at:?}");
    assert!(worst < ms(250), "the polite client waited {worst:?}");
    srv.log().wait_for("rate-limited", PROMPT);
}
