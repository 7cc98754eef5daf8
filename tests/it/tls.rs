//! TLS on the line wire (CONTRACT section 9), on both engines: the protocol over TLS is the
//! protocol (bytes and timings), a client that is not speaking TLS is closed without harm to
//! anyone else, a handshake has a deadline, and hb-client refuses certificates it cannot
//! trust. Certificates: tests/fixtures/tls (see make.sh there).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use crate::support::*;

/// How long a line may take to arrive.
const PROMPT: Duration = Duration::from_secs(5);

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tls")
        .join(name)
}

fn fixture_str(name: &str) -> String {
    fixture(name).display().to_string()
}

/// `hb-server` serving TLS with `cert` (a fixture name: server, expired, wronghost).
fn tls_server(engine: Engine, cert: &str, args: &[&str]) -> Server {
    let (c, k) = (
        fixture_str(&format!("{cert}.pem")),
        fixture_str(&format!("{cert}.key")),
    );
    let mut all = vec!["--tls-cert", c.as_str(), "--tls-key", k.as_str()];
    all.extend_from_slice(args);
    Server::start(engine, &all)
}

engine_tests!(echo_heartbeat_and_shutdown_are_the_same_over_tls);
/// Over TLS: HELLO first, ECHO for MSG, PING 1 at idle, END heartbeat-timeout at idle +
/// count x interval (the heartbeat rule unchanged), and END server-shutdown at SIGTERM.
fn echo_heartbeat_and_shutdown_are_the_same_over_tls(engine: Engine) {
    let _w = Watchdog::new("tls-echo", ms(30_000));
    let args = ["--idle", "1", "--interval", "0.5", "--count", "2"];
    let mut srv = tls_server(engine, "server", &args);
    let ca = fixture("ca.pem");
    let mut a = Peer::connect_tls(srv.port, &ca);
    a.expect(
        "HELLO hb/1 idle=1000 interval=500 count=2 mode=echo",
        PROMPT,
    );
    a.send(b"MSG over tls\n");
    let sent = a.t0.elapsed();
    a.expect("ECHO over tls", PROMPT);
    // Silent from `sent`: PING 1 at +1 s, PING 2 at +1.5 s, END at +2 s.
    let p1 = a.expect("PING 1", PROMPT);
    assert_near("PING 1", p1 - sent, ms(1_000), ms(250));
    let p2 = a.expect("PING 2", PROMPT);
    assert_near("PING 2", p2 - sent, ms(1_500), ms(250));
    let end = a.expect("END heartbeat-timeout", PROMPT);
    assert_near("END", end - sent, ms(2_000), ms(250));
    a.expect_closed(PROMPT);

    // An answered heartbeat ends the round; shutdown reaches a TLS client within a second.
    let mut b = Peer::connect_tls(srv.port, &ca);
    b.expect(
        "HELLO hb/1 idle=1000 interval=500 count=2 mode=echo",
        PROMPT,
    );
    b.expect("PING 1", PROMPT);
    b.send(b"PONG 1\n");
    srv.log().wait_for("answered", PROMPT);
    let t = Instant::now();
    srv.proc.signal("TERM");
    b.expect("END server-shutdown", ms(1_000));
    b.expect_closed(ms(1_000));
    assert!(srv.proc.wait(ms(2_000)).success());
    assert!(t.elapsed() < ms(1_000), "shutdown took {:?}", t.elapsed());
}

engine_tests!(shutdown_takes_under_a_second_with_tls_clients_that_do_not_read);
/// SIGTERM with TLS clients whose sockets are full (they asked for echoes and stopped
/// reading): their END cannot get through, and the server still exits 0 within a second.
fn shutdown_takes_under_a_second_with_tls_clients_that_do_not_read(engine: Engine) {
    let _w = Watchdog::new("tls-shutdown-stuck", ms(30_000));
    let mut srv = tls_server(engine, "server", &[]);
    let cfg = tcp_heartbeat::net::tls::ClientTlsConfig::load(Some(&fixture("ca.pem"))).unwrap();
    let mut stuck = Vec::new();
    for _ in 0..8 {
        let sock = connect_small_rcvbuf(srv.port);
        let tls = cfg.connect("127.0.0.1", &sock, PROMPT).unwrap();
        let mut s = rustls::StreamOwned::new(tls, sock);
        // 256 KiB of echo requests, never read back.
        let line = format!("MSG {}\n", "y".repeat(1000));
        for _ in 0..256 {
            s.write_all(line.as_bytes()).unwrap();
        }
        s.flush().unwrap();
        stuck.push(s);
    }
    let mut good = Peer::connect_tls(srv.port, &fixture("ca.pem"));
    good.expect(
        "HELLO hb/1 idle=30000 interval=10000 count=3 mode=echo",
        PROMPT,
    );
    thread::sleep(ms(300));
    let t = Instant::now();
    srv.proc.signal("TERM");
    good.expect("END server-shutdown", ms(1_000));
    assert!(srv.proc.wait(ms(2_000)).success());
    assert!(t.elapsed() < ms(1_000), "shutdown took {:?}", t.elapsed());
    drop(stuck);
}

engine_tests!(plaintext_and_garbage_on_a_tls_port_are_closed_without_harm);
/// A plaintext client and one sending garbage are closed at once with a TLS alert (and a
/// log line saying why), while a TLS client keeps its round trip.
fn plaintext_and_garbage_on_a_tls_port_are_closed_without_harm(engine: Engine) {
    let _w = Watchdog::new("tls-plaintext", ms(30_000));
    let mut srv = tls_server(engine, "server", &[]);
    let mut good = Peer::connect_tls(srv.port, &fixture("ca.pem"));
    good.expect(
        "HELLO hb/1 idle=30000 interval=10000 count=3 mode=echo",
        PROMPT,
    );
    for (what, bytes) in [
        ("plaintext", b"MSG hello\n".to_vec()),
        (
            "garbage",
            (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect(),
        ),
    ] {
        let mut raw = TcpStream::connect(("127.0.0.1", srv.port)).unwrap();
        raw.set_read_timeout(Some(PROMPT)).unwrap();
        let t = Instant::now();
        let _ = raw.write_all(&bytes);
        let mut got = Vec::new();
        let _ = raw.read_to_end(&mut got);
        assert!(
            t.elapsed() < ms(2_000),
            "{what}: closed after {:?}",
            t.elapsed()
        );
        // A TLS alert record (content type 21), and nothing readable as a line.
        assert_eq!(got.first(), Some(&0x15), "{what}: got {got:02x?}");
        assert!(!got.contains(&b'\n'), "{what}: got {got:02x?}");
        let t = Instant::now();
        good.send(format!("MSG after {what}\n").as_bytes());
        good.expect(&format!("ECHO after {what}"), PROMPT);
        assert!(t.elapsed() < ms(250), "round trip {:?}", t.elapsed());
    }
    srv.log().wait_for("not secured: TLS failed", PROMPT);
    srv.log().settle(ms(300));
    assert_eq!(srv.log().count("not secured"), 2, "{}", srv.log().text());
}

engine_tests!(a_stalled_handshake_is_closed_at_its_deadline);
/// Slowloris: a client that connects and says nothing, and one that sends half a
/// ClientHello, are closed at `--handshake-timeout` (1 s here); a TLS client connecting
/// meanwhile is served at once.
fn a_stalled_handshake_is_closed_at_its_deadline(engine: Engine) {
    let _w = Watchdog::new("tls-slowloris", ms(30_000));
    let mut srv = tls_server(engine, "server", &["--handshake-timeout", "1"]);
    // A TLS record header announcing a 512-byte handshake message (a ClientHello), then
    // only the first bytes of its body.
    let mut hello = vec![
        0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
    ];
    hello.extend_from_slice(&[0x42; 20]);
    let mut stalled = Vec::new();
    for partial in [None, Some(hello)] {
        let s = TcpStream::connect(("127.0.0.1", srv.port)).unwrap();
        if let Some(bytes) = &partial {
            (&s).write_all(bytes).unwrap();
        }
        s.set_read_timeout(Some(PROMPT)).unwrap();
        stalled.push((Instant::now(), s));
    }
    let mut good = Peer::connect_tls(srv.port, &fixture("ca.pem"));
    good.expect(
        "HELLO hb/1 idle=30000 interval=10000 count=3 mode=echo",
        ms(500),
    );
    for (i, (t, mut s)) in stalled.into_iter().enumerate() {
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        let after = t.elapsed();
        assert_near(
            &format!("stalled client {i} closed"),
            after,
            ms(1_000),
            ms(400),
        );
        assert!(!got.contains(&b'\n'), "client {i} got {got:02x?}");
    }
    srv.log().wait_for("no TLS handshake within 1s", PROMPT);
    good.send(b"MSG still here\n");
    good.expect("ECHO still here", PROMPT);
}

engine_tests!(a_quiet_client_is_not_taken_for_a_stalled_handshake);
/// The handshake deadline is about the handshake: a client that completed it and then says
/// nothing for longer than `--handshake-timeout` is served as ever.
fn a_quiet_client_is_not_taken_for_a_stalled_handshake(engine: Engine) {
    let _w = Watchdog::new("tls-quiet", ms(30_000));
    let mut srv = tls_server(engine, "server", &["--handshake-timeout", "0.5"]);
    let port = srv.port.to_string();
    let ca = fixture_str("ca.pem");
    // hb-client's first line goes out 1.2 s after the handshake.
    let mut c = Proc::spawn_in_temp(
        "hb-client",
        &[
            "--defaults",
            "--port",
            &port,
            "--ca",
            &ca,
            "--every",
            "1.2",
            "--messages",
            "1",
        ],
        None,
    );
    let status = c.wait(PROMPT);
    c.stdout.drain(ms(200));
    assert!(status.success(), "{status:?}\n{}", c.stdout.text());
    assert!(
        c.stdout.text().contains("<- ECHO Hello, there"),
        "{}",
        c.stdout.text()
    );
    assert_eq!(srv.log().count("not secured"), 0, "{}", srv.log().text());
}

engine_tests!(flow_control_and_slow_consumers_apply_to_the_encrypted_stream);
/// Chat over TLS: messages relay between TLS members; a member that stops reading is ended
/// slow-consumer within about --stall of the queue filling, and the others go on.
fn flow_control_and_slow_consumers_apply_to_the_encrypted_stream(engine: Engine) {
    let _w = Watchdog::new("tls-flow", ms(60_000));
    let args = ["--mode", "chat", "--queue", "65536", "--stall", "300ms"];
    let mut srv = tls_server(engine, "server", &args);
    let ca = fixture("ca.pem");
    let hello = "HELLO hb/1 idle=30000 interval=10000 count=3 mode=chat";
    // Each join confirmed (WHO lists the name) before the next member connects: a TLS peer's
    // writes go through its own thread, so two peers' JOINs could otherwise cross.
    let port = srv.port;
    let member = |name: &str| {
        let mut p = Peer::connect_tls(port, &ca);
        p.expect(hello, PROMPT);
        p.send(format!("JOIN {name}\nWHO\n").as_bytes());
        loop {
            let (_, l) = p.line(PROMPT);
            if l.starts_with("MEMBERS ") {
                assert!(l.split(' ').any(|n| n == name), "{l}");
                return p;
            }
        }
    };
    let mut alice = member("alice");
    let mut bob = member("bob");
    alice.expect("JOINED bob", PROMPT);
    // A member whose TLS connection is never read again (tiny receive buffer).
    let stuck = connect_small_rcvbuf(srv.port);
    let tls = tcp_heartbeat::net::tls::ClientTlsConfig::load(Some(&ca))
        .unwrap()
        .connect("127.0.0.1", &stuck, PROMPT)
        .unwrap();
    let mut stuck_tls = rustls::StreamOwned::new(tls, stuck);
    stuck_tls.write_all(b"JOIN stuck\n").unwrap();
    stuck_tls.flush().unwrap();
    alice.expect("JOINED stuck", PROMPT);
    bob.expect("JOINED stuck", PROMPT);
    // 4 MB from alice; bob reads all of it; stuck reads nothing.
    let text = "x".repeat(1000);
    let reader = thread::spawn(move || {
        let mut n = 0;
        while n < 4000 {
            let (_, l) = bob.line(PROMPT);
            if l.starts_with("MSG alice ") {
                n += 1;
            }
        }
        bob
    });
    for _ in 0..4000 {
        alice.send(format!("MSG {text}\n").as_bytes());
    }
    let mut bob = reader.join().unwrap();
    srv.log().wait_for("slow consumer", PROMPT);
    alice.expect("LEFT stuck slow-consumer", PROMPT);
    alice.send(b"MSG done\n");
    bob.expect("MSG alice done", PROMPT);
}

engine_tests!(a_slow_reader_gets_the_last_records_after_the_sender_stops);
/// A TLS member that reads slowly gets every line, including the last ones: records TLS
/// encrypted but a full socket did not take are sent once the reader makes room, with
/// nothing else happening on the server. (The event engine once left them in TLS's buffer
/// until the next message or heartbeat, seconds later.)
fn a_slow_reader_gets_the_last_records_after_the_sender_stops(engine: Engine) {
    use std::io::BufRead;
    let _w = Watchdog::new("tls-last-records", ms(60_000));
    let args = ["--mode", "chat", "--stall", "30s"];
    let mut srv = tls_server(engine, "server", &args);
    let ca = fixture("ca.pem");
    let mut alice = Peer::connect_tls(srv.port, &ca);
    alice.expect(
        "HELLO hb/1 idle=30000 interval=10000 count=3 mode=chat",
        PROMPT,
    );
    // alice's JOIN confirmed (WHO lists her) before bob joins, so she sees him join.
    alice.send(b"JOIN alice\nWHO\n");
    while !alice.line(PROMPT).1.starts_with("MEMBERS ") {}
    let slow = connect_small_rcvbuf(srv.port);
    slow.set_read_timeout(Some(PROMPT)).unwrap();
    let tls = tcp_heartbeat::net::tls::ClientTlsConfig::load(Some(&ca))
        .unwrap()
        .connect("127.0.0.1", &slow, PROMPT)
        .unwrap();
    let mut bob = rustls::StreamOwned::new(tls, slow);
    bob.write_all(b"JOIN bob\n").unwrap();
    bob.flush().unwrap();
    alice.expect("JOINED bob", PROMPT);
    let lines = 3000;
    let text = "y".repeat(100);
    for i in 0..lines {
        alice.send(format!("MSG {i:04} {text}\n").as_bytes());
    }
    // Let the server's side of bob's socket fill up, then read it in small steps.
    thread::sleep(ms(300));
    let mut r = std::io::BufReader::with_capacity(1024, bob);
    let (mut got, mut line) = (0, String::new());
    while got < lines {
        line.clear();
        match r.read_line(&mut line) {
            Ok(0) => panic!("closed after {got} of {lines} lines"),
            Ok(_) => {}
            Err(e) => panic!(
                "{e} after {got} of {lines} lines; log:\n{}",
                srv.log().text()
            ),
        }
        if let Some(rest) = line.strip_prefix("MSG alice ") {
            assert!(
                rest.starts_with(&format!("{got:04} ")),
                "{line:?} as line {got}"
            );
            got += 1;
            if got % 50 == 0 {
                thread::sleep(Duration::from_micros(500));
            }
        }
    }
}

/// A client socket with a 4 KiB receive buffer, speaking TLS to the fixture server or not:
/// the same tests, plain and encrypted.
enum Slow {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Slow {
    fn connect(port: u16, tls: bool) -> Self {
        let s = connect_small_rcvbuf(port);
        s.set_read_timeout(Some(PROMPT)).unwrap();
        if !tls {
            return Self::Plain(s);
        }
        let c = tcp_heartbeat::net::tls::ClientTlsConfig::load(Some(&fixture("ca.pem")))
            .unwrap()
            .connect("127.0.0.1", &s, PROMPT)
            .unwrap();
        Self::Tls(Box::new(rustls::StreamOwned::new(c, s)))
    }
}

impl Read for Slow {
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Self::Plain(s) => s.read(b),
            Self::Tls(s) => s.read(b),
        }
    }
}

impl Write for Slow {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        match self {
            Self::Plain(s) => s.write(b),
            Self::Tls(s) => s.write(b),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Self::Plain(s) => s.flush(),
            Self::Tls(s) => s.flush(),
        }
    }
}

/// `hb-server ARGS`, with the fixture certificate when `tls`.
fn server_maybe_tls(engine: Engine, tls: bool, args: &[&str]) -> Server {
    if tls {
        tls_server(engine, "server", args)
    } else {
        Server::start(engine, args)
    }
}

/// `n` numbered `MSG` lines of about 110 bytes, then `tail`.
fn burst(n: usize, tail: &str) -> String {
    let text = "q".repeat(100);
    let mut all: String = (0..n).map(|i| format!("MSG {i:04} {text}\n")).collect();
    all.push_str(tail);
    all
}

engine_tests!(a_client_that_stops_reading_mid_burst_is_still_ended_and_closed);
/// A client that sends a burst and never reads again, its socket full and (over TLS) the
/// encryption layer holding the rest of its replies, is still ended (the heartbeat's END,
/// or slow-consumer) and closed within seconds, plain or TLS. (The event engine over TLS once
/// kept it open for good: the session never learned that its client had stopped reading.)
fn a_client_that_stops_reading_mid_burst_is_still_ended_and_closed(engine: Engine) {
    let _w = Watchdog::new("tls-frozen-reader", ms(60_000));
    for tls in [false, true] {
        let args = ["--idle", "1", "--interval", "0.5", "--count", "2"];
        let mut srv = server_maybe_tls(engine, tls, &args);
        let mut c = Slow::connect(srv.port, tls);
        // About 55 KB of ECHO lines: more than the full socket takes, less than it plus
        // TLS's 64 KiB buffer.
        c.write_all(burst(500, "").as_bytes()).unwrap();
        c.flush().unwrap();
        let t = Instant::now();
        let closed = srv.log().find(" closed", ms(10_000));
        assert!(
            closed.is_some(),
            "tls {tls}: still open {:?} later; log:\n{}",
            t.elapsed(),
            srv.log().text()
        );
        drop(c);
    }
}

engine_tests!(a_slow_reader_gets_every_reply_and_its_end_after_quit);
/// A client that sends a burst and `QUIT`, then reads at about 100 KB/s, gets every `ECHO` and
/// its `END quit`, plain or TLS: the last records TLS holds at the close leave for as long as
/// the client keeps reading them. (Both engines once gave them 200 ms in all over TLS.)
fn a_slow_reader_gets_every_reply_and_its_end_after_quit(engine: Engine) {
    use std::io::BufRead;
    let _w = Watchdog::new("tls-quit-slow-reader", ms(60_000));
    for tls in [false, true] {
        let mut srv = server_maybe_tls(engine, tls, &["--stall", "30s"]);
        let mut c = Slow::connect(srv.port, tls);
        let lines = 1000;
        c.write_all(burst(lines, "QUIT\n").as_bytes()).unwrap();
        c.flush().unwrap();
        let mut r = std::io::BufReader::with_capacity(1024, c);
        let (mut got, mut line) = (0, String::new());
        loop {
            line.clear();
            let n = r.read_line(&mut line).unwrap_or(0);
            if n == 0 {
                srv.log().settle(ms(300));
            }
            assert!(
                n > 0,
                "tls {tls}: closed after {got} of {lines} ECHOs, no END; log:\n{}",
                srv.log().text()
            );
            if line.starts_with("ECHO ") {
                got += 1;
                if got % 10 == 0 {
                    thread::sleep(ms(10));
                }
            } else if line.starts_with("END ") {
                assert_eq!(line.trim_end(), "END quit");
                break;
            }
        }
        assert_eq!(got, lines, "tls {tls}");
        srv.log().wait_for("END quit sent, closing", PROMPT);
    }
}

/// hb-client --tls refuses a server whose certificate it cannot trust, and says why (exit 1);
/// with the right CA it gets through.
#[test]
fn hb_client_refuses_certificates_it_cannot_trust() {
    let _w = Watchdog::new("tls-client-certs", ms(60_000));
    let ca = fixture_str("ca.pem");
    let other = fixture_str("other-ca.pem");
    for (cert, trust, want) in [
        ("expired", &ca, "has expired"),
        ("wronghost", &ca, "not valid for this host name"),
        ("server", &other, "unknown issuer: pass --ca"),
        ("server", &ca, ""),
    ] {
        let srv = tls_server(Engine::Threads, cert, &[]);
        let port = srv.port.to_string();
        let mut c = Proc::spawn_in_temp(
            "hb-client",
            &[
                "--defaults",
                "--port",
                &port,
                "--tls",
                "--ca",
                trust,
                "--every",
                "0.1",
                "--messages",
                "1",
            ],
            None,
        );
        let status = c.wait(PROMPT);
        c.stderr.drain(ms(200));
        let err = c.stderr.text().to_lowercase();
        if want.is_empty() {
            assert!(status.success(), "{cert}: {status:?} {err}");
            continue;
        }
        assert_eq!(status.code(), Some(1), "{cert} with {trust}: {err}");
        assert!(
            err.contains("tls with 127.0.0.1") && err.contains(want),
            "{cert} with {trust}: want {want:?} in {err}"
        );
    }
    // A plain server: the client says TLS failed, not something obscure.
    let srv = Server::start(Engine::Threads, &[]);
    let port = srv.port.to_string();
    let mut c = Proc::spawn_in_temp(
        "hb-client",
        &[
            "--defaults",
            "--port",
            &port,
            "--ca",
            &ca,
            "--messages",
            "1",
        ],
        None,
    );
    assert_eq!(c.wait(PROMPT).code(), Some(1));
    c.stderr.drain(ms(200));
    assert!(
        c.stderr.text().contains("TLS with 127.0.0.1"),
        "{}",
        c.stderr.text()
    );
}

/// Settings that cannot work are refused before listening (exit 2), naming the problem.
#[test]
fn bad_tls_settings_are_usage_errors() {
    let _w = Watchdog::new("tls-settings", ms(30_000));
    let (cert, key) = (fixture_str("server.pem"), fixture_str("server.key"));
    let other_key = fixture_str("expired.key");
    let missing = fixture_str("missing.pem");
    for (args, want) in [
        (
            vec!["--tls-cert", cert.as_str()],
            "--tls-cert needs --tls-key",
        ),
        (
            vec!["--tls-key", key.as_str()],
            "--tls-key needs --tls-cert",
        ),
        (
            vec!["--tls-cert", missing.as_str(), "--tls-key", key.as_str()],
            "missing.pem",
        ),
        (
            vec!["--tls-cert", key.as_str(), "--tls-key", key.as_str()],
            "no CERTIFICATE",
        ),
        (
            vec!["--tls-cert", cert.as_str(), "--tls-key", other_key.as_str()],
            "refused",
        ),
        (
            vec![
                "--tls-cert",
                cert.as_str(),
                "--tls-key",
                key.as_str(),
                "--wire",
                "classic",
            ],
            "only on the line wire",
        ),
    ] {
        let mut all = vec!["--defaults", "--port", "0"];
        all.extend_from_slice(&args);
        let mut p = Proc::spawn_in_temp("hb-server", &all, None);
        let status = p.wait(PROMPT);
        p.stderr.drain(ms(200));
        assert_eq!(status.code(), Some(2), "{args:?}: {}", p.stderr.text());
        assert!(
            p.stderr.text().contains(want),
            "{args:?}: want {want:?} in {}",
            p.stderr.text()
        );
    }
}
