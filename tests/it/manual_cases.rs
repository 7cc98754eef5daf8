//! The manual's four cases against the real hb-server binary, at millisecond settings, asserting
//! the exact bytes a raw peer receives and when; plus the same cases driven by hb-client.

use crate::support::*;

const IDLE: u64 = 600;
const INTERVAL: u64 = 200;
const COUNT: u64 = 3;
/// Allowed lateness: scheduling jitter on a busy 2-core machine is a few ms.
const SLACK: u64 = 80;

fn server(engine: Engine) -> Server {
    Server::start(
        engine,
        &["--idle", "600ms", "--interval", "200ms", "--count", "3"],
    )
}

const HELLO: &str = "HELLO hb/1 idle=600 interval=200 count=3 mode=echo";

engine_tests!(case1_normal_exchange_never_starts_a_round);
fn case1_normal_exchange_never_starts_a_round(engine: Engine) {
    let _x = exclusive();
    let _w = Watchdog::new("case1", ms(20_000));
    let mut srv = server(engine);
    let mut peer = Peer::connect(srv.port);
    peer.expect(HELLO, PROMPT);
    // Data every IDLE/4 for three idle periods: a round would have started twice by now.
    for i in 0..12 {
        peer.send(format!("MSG m{i}\n").as_bytes());
        peer.expect(&format!("ECHO m{i}"), PROMPT);
        std::thread::sleep(ms(IDLE / 4));
    }
    peer.send(b"QUIT\n");
    peer.expect("END quit", PROMPT);
    peer.expect_closed(PROMPT);
    srv.log().wait_for("END quit sent", PROMPT);
    assert_eq!(srv.log().count("heartbeat"), 0, "{}", srv.log().text());
}

engine_tests!(case2_slow_client_that_answers_keeps_the_connection);
fn case2_slow_client_that_answers_keeps_the_connection(engine: Engine) {
    let _x = exclusive();
    let _w = Watchdog::new("case2", ms(20_000));
    let mut srv = server(engine);
    let mut peer = Peer::connect(srv.port);
    peer.expect(HELLO, PROMPT);
    peer.send(b"MSG Hello, there\n");
    peer.expect("ECHO Hello, there", PROMPT);
    let quiet_from = peer.t0.elapsed();
    // Two rounds, each answered after its first heartbeat.
    let mut from = quiet_from;
    for _ in 0..2 {
        let at = peer.expect("PING 1", PROMPT);
        assert_near("PING 1", at, from + ms(IDLE), ms(SLACK));
        peer.send(b"PONG 1\n");
        from = peer.t0.elapsed();
    }
    srv.log().wait_for("answered after heartbeat 1", PROMPT);
    peer.send(b"QUIT\n");
    peer.expect("END quit", PROMPT);
    peer.expect_closed(PROMPT);
    assert_eq!(srv.log().count("heartbeat-timeout"), 0);
}

engine_tests!(case3_silent_client_gets_count_pings_then_end_and_close);
fn case3_silent_client_gets_count_pings_then_end_and_close(engine: Engine) {
    let _x = exclusive();
    let _w = Watchdog::new("case3", ms(20_000));
    let mut srv = server(engine);
    let mut peer = Peer::connect(srv.port);
    peer.expect(HELLO, PROMPT);
    for k in 1..=COUNT {
        let at = peer.expect(&format!("PING {k}"), PROMPT);
        assert_near(
            &format!("PING {k}"),
            at,
            ms(IDLE + (k - 1) * INTERVAL),
            ms(SLACK),
        );
    }
    let at = peer.expect("END heartbeat-timeout", PROMPT);
    assert_near("END", at, ms(IDLE + COUNT * INTERVAL), ms(SLACK));
    let closed = peer.expect_closed(PROMPT);
    assert_near("close", closed, ms(IDLE + COUNT * INTERVAL), ms(SLACK));
    srv.log().wait_for("closed", PROMPT);
    for k in 1..=COUNT {
        srv.log().wait_for(&format!("heartbeat {k}/3 sent"), PROMPT);
    }
    srv.log().wait_for("heartbeat round starts", PROMPT);
}

engine_tests!(case3_traffic_in_the_last_interval_saves_the_connection);
fn case3_traffic_in_the_last_interval_saves_the_connection(engine: Engine) {
    let _x = exclusive();
    let _w = Watchdog::new("case3-late", ms(20_000));
    let srv = server(engine);
    let mut peer = Peer::connect(srv.port);
    peer.expect(HELLO, PROMPT);
    peer.expect("PING 1", PROMPT);
    peer.expect("PING 2", PROMPT);
    peer.expect("PING 3", PROMPT);
    // The next round starts a full idle after the server got the late answer, which is no
    // earlier than the moment it was sent.
    let answered = peer.t0.elapsed();
    peer.send(b"MSG late\n");
    peer.expect("ECHO late", PROMPT);
    let at = peer.expect("PING 1", PROMPT);
    assert_near("next PING 1", at, answered + ms(IDLE), ms(SLACK));
}

engine_tests!(case4_client_close_is_noticed_at_once_without_a_round);
fn case4_client_close_is_noticed_at_once_without_a_round(engine: Engine) {
    let _x = exclusive();
    let _w = Watchdog::new("case4", ms(20_000));
    let mut srv = server(engine);
    let mut peer = Peer::connect(srv.port);
    peer.expect(HELLO, PROMPT);
    for _ in 0..4 {
        peer.send(b"MSG Hello, there\n");
        peer.expect("ECHO Hello, there", PROMPT);
    }
    let closed_at = std::time::Instant::now();
    drop(peer);
    let (at, _) = srv.log().wait_for("closed by client", PROMPT);
    assert!(
        at - closed_at < ms(SLACK),
        "noticed after {:?}",
        at - closed_at
    );
    srv.log().wait_for(" closed", PROMPT);
    srv.log().settle(ms(IDLE + COUNT * INTERVAL));
    assert_eq!(srv.log().count("heartbeat"), 0, "{}", srv.log().text());
    assert_eq!(srv.log().count("END"), 0, "{}", srv.log().text());
}

engine_tests!(half_close_is_treated_as_a_close);
fn half_close_is_treated_as_a_close(engine: Engine) {
    let _w = Watchdog::new("half-close", ms(20_000));
    let mut srv = server(engine);
    let mut peer = Peer::connect(srv.port);
    peer.expect(HELLO, PROMPT);
    peer.send(b"MSG bye\n");
    peer.shutdown_write();
    peer.expect("ECHO bye", PROMPT);
    peer.expect_closed(PROMPT);
    srv.log().wait_for("closed by client", PROMPT);
}

engine_tests!(hb_client_cases_end_to_end);
fn hb_client_cases_end_to_end(engine: Engine) {
    let _x = exclusive();
    let _w = Watchdog::new("hb-client cases", ms(30_000));
    let mut srv = server(engine);
    let port = srv.port.to_string();
    let dir = temp_dir();
    // Case 1: fast data, five messages then QUIT: exit 0, every message echoed, no heartbeat.
    let mut c1 = Proc::spawn(
        "hb-client",
        &[
            "--port",
            &port,
            "--every",
            "50ms",
            "--block",
            "0",
            "--messages",
            "5",
        ],
        &dir,
        None,
    );
    assert_eq!(c1.wait(PROMPT).code(), Some(0), "{}", c1.stderr.text());
    assert_eq!(
        c1.stdout.count("<- ECHO Hello, there"),
        5,
        "{}",
        c1.stdout.text()
    );
    assert_eq!(c1.stdout.count("PING"), 0);
    // Case 2: slow data, heartbeat answered at once; stopped by Ctrl-C: exit 0.
    let mut c2 = Proc::spawn(
        "hb-client",
        &["--port", &port, "--every", "60s", "--block", "0"],
        &dir,
        None,
    );
    c2.stdout.wait_for("-> PONG 1", PROMPT);
    c2.signal("INT");
    assert_eq!(c2.wait(PROMPT).code(), Some(0), "{}", c2.stderr.text());
    c2.stdout.wait_for("<- END quit", PROMPT);
    // Case 3: slow data, heartbeat blocked: the server ends it: exit 3 with the reason.
    let mut c3 = Proc::spawn(
        "hb-client",
        &["--port", &port, "--every", "60s", "--block", "30s"],
        &dir,
        None,
    );
    let st = c3.wait(PROMPT);
    assert_eq!(st.code(), Some(3), "{}", c3.stderr.text());
    assert!(
        c3.stderr.text().contains("heartbeat-timeout"),
        "{}",
        c3.stderr.text()
    );
    assert_eq!(c3.stdout.count("<- PING"), 3, "{}", c3.stdout.text());
    assert_eq!(c3.stdout.count("-> PONG"), 0);
    srv.log().wait_for("END heartbeat-timeout sent", PROMPT);
    // Case 4: the client is killed: closed by client, no round.
    let mut c4 = Proc::spawn(
        "hb-client",
        &["--port", &port, "--every", "50ms", "--block", "0"],
        &dir,
        None,
    );
    c4.stdout.wait_for("<- ECHO", PROMPT);
    let before = srv.log().count("heartbeat round starts");
    c4.signal("KILL");
    c4.wait(PROMPT);
    srv.log().wait_for("#4 ", PROMPT);
    let (_, line) = srv.log().wait_for("closed by client", PROMPT);
    assert!(line.contains("#4 "), "{line}");
    srv.log().settle(ms(IDLE + COUNT * INTERVAL));
    assert_eq!(
        srv.log().count("heartbeat round starts"),
        before,
        "{}",
        srv.log().text()
    );
}

#[test]
fn client_exits_4_when_the_server_goes_silent() {
    // Timing: the client's exit instant is asserted within a tight window.
    let _x = exclusive();
    let _w = Watchdog::new("client-lost", ms(20_000));
    // A fake server that greets and then never says anything again.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let (greeted_tx, greeted) = crossbeam_channel::bounded(1);
    let (done, until_done) = crossbeam_channel::bounded::<()>(1);
    let fake = std::thread::spawn(move || {
        use std::io::Write;
        let (mut s, _) = listener.accept().unwrap();
        s.write_all(b"HELLO hb/1 idle=200 interval=100 count=2\n")
            .unwrap();
        greeted_tx.send(std::time::Instant::now()).unwrap();
        // Silent (but open) until the client gave up, or 3 s at most.
        let _ = until_done.recv_timeout(ms(3000));
        drop(s);
    });
    let mut c = Proc::spawn_in_temp(
        "hb-client",
        &["--port", &port, "--every", "60s", "--block", "0"],
        None,
    );
    let greeted_at = greeted.recv_timeout(PROMPT).expect("the client connected");
    let st = c.wait(PROMPT);
    let exited = std::time::Instant::now();
    assert_eq!(st.code(), Some(4), "{}", c.stderr.text());
    assert!(
        c.stderr.text().contains("stopped answering"),
        "{}",
        c.stderr.text()
    );
    // The client's rule (src/core/client.rs): the server is lost once nothing arrived for
    // idle + count x interval = 200 + 2 x 100 = 400 ms after the last line (the HELLO). The
    // exit is seen here within one 5 ms poll of Proc::wait plus process teardown.
    let want = ms(200 + 2 * 100);
    let took = exited.saturating_duration_since(greeted_at);
    assert!(
        took + ms(5) >= want && took <= want + ms(150),
        "exited {took:?} after the HELLO; expected {want:?} (-5 ms, +150 ms)"
    );
    eprintln!("measured: the client gave up {took:?} after the HELLO");
    let _ = done.send(());
    fake.join().unwrap();
}

#[test]
fn client_exits_4_when_the_server_vanishes_without_end() {
    let _w = Watchdog::new("client-vanish", ms(20_000));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let fake = std::thread::spawn(move || {
        use std::io::Write;
        let (mut s, _) = listener.accept().unwrap();
        s.write_all(b"HELLO hb/1 idle=2000 interval=500 count=2\n")
            .unwrap();
        std::thread::sleep(ms(100));
    });
    let mut c = Proc::spawn_in_temp(
        "hb-client",
        &["--port", &port, "--every", "60s", "--block", "0"],
        None,
    );
    assert_eq!(c.wait(PROMPT).code(), Some(4), "{}", c.stderr.text());
    fake.join().unwrap();
}

#[test]
fn client_connection_refused_exits_1() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port().to_string()
    };
    let mut c = Proc::spawn_in_temp("hb-client", &["--defaults", "--port", &port], None);
    assert_eq!(c.wait(PROMPT).code(), Some(1));
    assert!(
        c.stderr.text().contains("cannot connect"),
        "{}",
        c.stderr.text()
    );
}

engine_tests!(scenarios_binary_passes_all_four_cases_fast);
fn scenarios_binary_passes_all_four_cases_fast(engine: Engine) {
    let _x = exclusive();
    let _w = Watchdog::new("hb-scenarios", ms(30_000));
    // The suite runs many tests at once on two cores, so allow 100 ms of lateness: still
    // well under half of the 500 ms interval at speed 10, so a wrong beat fails.
    let mut p = Proc::spawn_in_temp(
        "hb-scenarios",
        &engine.with(&["--speed", "10", "--tolerance", "100ms"]),
        None,
    );
    let st = p.wait(ms(20_000));
    assert_eq!(
        st.code(),
        Some(0),
        "{}\n{}",
        p.stdout.text(),
        p.stderr.text()
    );
    assert_eq!(p.stdout.count("PASS"), 4, "{}", p.stdout.text());
    assert!(p.stdout.text().contains("4 passed, 0 failed"));
    let mut p = Proc::spawn_in_temp(
        "hb-scenarios",
        &engine.with(&["--speed", "10", "--tolerance", "100ms", "--case", "3"]),
        None,
    );
    assert_eq!(p.wait(ms(20_000)).code(), Some(0), "{}", p.stdout.text());
    assert_eq!(p.stdout.count("PASS"), 1, "{}", p.stdout.text());
}

/// Bad flags are refused before any case runs (the same for either engine).
#[test]
fn scenarios_binary_refuses_bad_flags_with_exit_2() {
    let mut p = Proc::spawn_in_temp(
        "hb-scenarios",
        &["--speed", "10", "--tolerance", "300ms"],
        None,
    );
    assert_eq!(
        p.wait(PROMPT).code(),
        Some(2),
        "tolerance above half an interval is refused"
    );
    let mut p = Proc::spawn_in_temp("hb-scenarios", &["--case", "5"], None);
    assert_eq!(p.wait(PROMPT).code(), Some(2));
    // The classic wire runs on the thread engine only (CONTRACT section 6).
    let mut p = Proc::spawn_in_temp(
        "hb-scenarios",
        &["--wire", "classic", "--engine", "events"],
        None,
    );
    assert_eq!(p.wait(PROMPT).code(), Some(2));
    assert_eq!(
        p.stderr.text(),
        "hb-scenarios: --engine events works only on the line wire, not with --wire classic\n"
    );
    assert_eq!(p.stdout.text(), "", "nothing ran");
}
