//! `hb-client --chat` as a user sees it, with real processes: the member list on joining,
//! timestamps, `/who`, `/help`, unknown commands, a taken name, and hostile text shown inert.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};

use crate::support::*;

fn chat_client(port: u16, name: &str) -> Proc {
    let port = port.to_string();
    Proc::spawn_in_temp(
        "hb-client",
        &["--defaults", "--chat", "--name", name, "--port", &port],
        Some(""),
    )
}

fn type_line(p: &mut Proc, line: &str) {
    let w = p.stdin.as_mut().expect("stdin");
    w.write_all(format!("{line}\n").as_bytes()).unwrap();
    w.flush().unwrap();
}

/// Joins `name` on a raw connection and waits until the server confirmed it.
fn raw_member(port: u16, name: &str) -> Peer {
    let mut p = Peer::connect(port);
    let (_, hello) = p.line(PROMPT);
    assert!(hello.ends_with(" mode=chat"), "{hello}");
    p.send(format!("JOIN {name}\nPING joined\n").as_bytes());
    p.expect("PONG joined", PROMPT);
    p
}

/// Every line the chat client printed starts with a `HH:MM:SS ` local timestamp.
fn assert_timestamped(out: &str) {
    for line in out.lines() {
        let b = line.as_bytes();
        let ok = b.len() > 9
            && [0, 1, 3, 4, 6, 7].iter().all(|&i| b[i].is_ascii_digit())
            && b[2] == b':'
            && b[5] == b':'
            && b[8] == b' ';
        assert!(ok, "line without a timestamp: {line:?}\nin:\n{out}");
    }
}

engine_tests!(joining_shows_the_members_and_commands_work);
fn joining_shows_the_members_and_commands_work(engine: Engine) {
    let _w = Watchdog::new("chat-client-commands", ms(15_000));
    let srv = Server::start(engine, &["--mode", "chat"]);
    let mut bob = raw_member(srv.port, "bob");
    let mut ann = chat_client(srv.port, "ann");
    let (_, joined) = ann.stdout.wait_for("* in the room:", PROMPT);
    assert_eq!(&joined[9..], "* in the room: ann (you), bob");
    bob.expect("JOINED ann", PROMPT);
    type_line(&mut ann, "/help");
    let (_, help) = ann.stdout.wait_for("* commands:", PROMPT);
    for cmd in ["/who", "/help", "/quit", "//text"] {
        assert!(help.contains(cmd), "{help}");
    }
    type_line(&mut ann, "/nick zed");
    let (_, hint) = ann.stdout.wait_for("unknown command", PROMPT);
    assert_eq!(
        &hint[9..],
        "* unknown command /nick; /help lists the commands"
    );
    let _cy = raw_member(srv.port, "cy");
    ann.stdout.wait_for("* cy joined", PROMPT);
    type_line(&mut ann, "/who");
    let (_, who) = ann
        .stdout
        .wait_for("* in the room: ann (you), bob, cy", PROMPT);
    assert_eq!(&who[9..], "* in the room: ann (you), bob, cy");
    type_line(&mut ann, "//slash first");
    // None of the commands went to the room as text: bob sees only these lines.
    bob.expect("JOINED cy", PROMPT);
    bob.expect("MSG ann /slash first", PROMPT);
    type_line(&mut ann, "/quit");
    assert_eq!(ann.wait(PROMPT).code(), Some(0), "{}", ann.stderr.text());
    bob.expect("LEFT ann quit", PROMPT);
    assert_timestamped(&ann.stdout.text());
}

/// A fake chat server refuses the name: the client prints why, exits 2, and sends nothing
/// after `JOIN` and `WHO` though the user had typed a line.
#[test]
fn a_taken_name_ends_the_client_with_nothing_sent_after() {
    let _w = Watchdog::new("chat-client-taken", ms(15_000));
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let fake = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(PROMPT)).unwrap();
        s.write_all(b"HELLO hb/1 idle=30000 interval=10000 count=3 mode=chat\n")
            .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 256];
        while !got.ends_with(b"WHO\n") {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
        s.write_all(b"ERR name-taken ann is in use\n").unwrap();
        // Everything else until the client closes.
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        String::from_utf8_lossy(&got).into_owned()
    });
    let mut ann = Proc::spawn_in_temp(
        "hb-client",
        &[
            "--defaults",
            "--chat",
            "--name",
            "ann",
            "--port",
            &port.to_string(),
        ],
        Some("typed before the answer\n"),
    );
    let st = ann.wait(PROMPT);
    assert_eq!(st.code(), Some(2), "{}", ann.stderr.text());
    assert_eq!(
        ann.stderr.text(),
        "hb-client: name 'ann' is taken on this server; pick another --name\n"
    );
    assert_eq!(fake.join().unwrap(), "JOIN ann SINCE -\nWHO\n");
}

engine_tests!(terminal_escapes_in_chat_text_are_shown_inert);
/// The attack: a member's text that returns to column 0, erases the line and moves
/// up to fake a line from someone else. The chat client prints it inert.
fn terminal_escapes_in_chat_text_are_shown_inert(engine: Engine) {
    let _w = Watchdog::new("chat-client-escapes", ms(15_000));
    let srv = Server::start(engine, &["--mode", "chat"]);
    let mut ann = chat_client(srv.port, "ann");
    ann.stdout.wait_for("* in the room: ann (you)", PROMPT);
    let mut evil = raw_member(srv.port, "evil");
    ann.stdout.wait_for("* evil joined", PROMPT);
    evil.send(b"MSG hi\r\x1b[2K\x1b[1Aann: bye\x1b]0;pwned\x07\xe2\x80\xae!\n");
    let (_, shown) = ann.stdout.wait_for("evil: hi", PROMPT);
    assert_eq!(
        &shown[9..],
        "evil: hi\\r\\e[2K\\e[1Aann: bye\\e]0;pwned\\x07\\u{202e}!"
    );
    ann.close_stdin();
    assert_eq!(ann.wait(PROMPT).code(), Some(0), "{}", ann.stderr.text());
    let out = ann.stdout.text();
    assert!(!out.contains('\x1b'), "ESC printed:\n{out:?}");
    assert!(!out.contains('\r'), "CR printed:\n{out:?}");
    assert!(!out.contains('\u{202e}'), "bidi override printed:\n{out:?}");
    drop(evil);
}

engine_tests!(terminal_escapes_in_echoed_text_are_shown_inert);
/// The line client's own output (ECHO lines) is made safe the same way.
fn terminal_escapes_in_echoed_text_are_shown_inert(engine: Engine) {
    let _w = Watchdog::new("line-client-escapes", ms(15_000));
    let srv = Server::start(engine, &[]);
    let port = srv.port.to_string();
    let mut c = Proc::spawn_in_temp(
        "hb-client",
        &[
            "--defaults",
            "--port",
            &port,
            "--every",
            "60s",
            "--message",
            "x\x1b[2Jy\u{202e}z",
        ],
        None,
    );
    let (_, echo) = c.stdout.wait_for("<- ECHO", PROMPT);
    assert!(echo.ends_with("<- ECHO x\\e[2Jy\\u{202e}z"), "{echo:?}");
    c.signal("INT");
    assert_eq!(c.wait(PROMPT).code(), Some(0));
    let out = c.stdout.text();
    let received: Vec<&str> = out.lines().filter(|l| l.contains(" <- ")).collect();
    assert!(
        received
            .iter()
            .all(|l| !l.contains('\x1b') && !l.contains('\u{202e}')),
        "{received:?}"
    );
}

/// The room's lines `NAME: TEXT` a chat client printed (timestamps cut off), in order.
fn said_by(out: &str, name: &str) -> Vec<String> {
    let prefix = format!("{name}: ");
    out.lines()
        .filter_map(|l| l.get(9..)?.strip_prefix(&prefix).map(str::to_owned))
        .collect()
}

engine_tests!(a_stopped_chat_client_resumes_and_shows_what_it_missed_once);
/// The client is stopped (SIGSTOP) until the server ended it (`END heartbeat-timeout`) and
/// two messages went by; after SIGCONT it reads that END, reconnects by itself, and shows the
/// two once, in order, with one notice line, then live lines again. Loopback only: the
/// network-namespace test below cuts a real link.
fn a_stopped_chat_client_resumes_and_shows_what_it_missed_once(engine: Engine) {
    let _w = Watchdog::new("chat-client-resume-stopped", ms(20_000));
    let srv = Server::start(
        engine,
        &[
            "--mode",
            "chat",
            "--idle",
            "300ms",
            "--interval",
            "100ms",
            "--count",
            "2",
        ],
    );
    let mut ann = chat_client(srv.port, "ann");
    ann.stdout.wait_for("* in the room: ann (you)", PROMPT);
    let mut bob = chat_client(srv.port, "bob");
    ann.stdout.wait_for("* bob joined", PROMPT);
    type_line(&mut bob, "before");
    ann.stdout.wait_for("bob: before", PROMPT);
    // ann's own line goes into the room's history too; the replay must not show it.
    type_line(&mut ann, "mine");
    bob.stdout.wait_for("ann: mine", PROMPT);
    ann.signal("STOP");
    bob.stdout
        .wait_for("* ann left (heartbeat-timeout)", PROMPT);
    type_line(&mut bob, "while away 1");
    type_line(&mut bob, "while away 2");
    // The server handles bob's lines in order: once it answered his WHO, both went out.
    type_line(&mut bob, "/who");
    bob.stdout.wait_for("* in the room: bob (you)", PROMPT);
    ann.signal("CONT");
    let (_, notice) = ann.stdout.wait_for("-- reconnected", PROMPT);
    assert!(
        notice.ends_with("; recovered 2 messages"),
        "{notice}\n{}",
        ann.stdout.text()
    );
    ann.stdout.wait_for("* in the room: ann (you), bob", PROMPT);
    type_line(&mut bob, "live");
    ann.stdout.wait_for("bob: live", PROMPT);
    let out = ann.stdout.text();
    assert_eq!(
        said_by(&out, "bob"),
        ["before", "while away 1", "while away 2", "live"],
        "{out}"
    );
    assert_eq!(said_by(&out, "ann"), Vec::<String>::new(), "{out}");
    assert_eq!(ann.stdout.count("-- reconnected"), 1, "{out}");
    // The loss itself is reported on stderr, with the reason.
    ann.stderr.wait_for(
        "hb-client: the server ended the session: heartbeat-timeout; reconnecting (for up to 60s)",
        PROMPT,
    );
    // What ann typed after the resume still reaches the room.
    type_line(&mut ann, "back");
    bob.stdout.wait_for("ann: back", PROMPT);
    ann.close_stdin();
    assert_eq!(ann.wait(PROMPT).code(), Some(0), "{}", ann.stderr.text());
    assert_timestamped(&out);
}

engine_tests!(a_chat_client_gives_up_after_reconnect_for_and_exits_4);
/// A killed server never comes back: the client retries for `--reconnect-for` (1 s), then
/// exits 4 saying so. A server shutting down is never retried (exit 3 at once).
fn a_chat_client_gives_up_after_reconnect_for_and_exits_4(engine: Engine) {
    let _w = Watchdog::new("chat-client-give-up", ms(20_000));
    let srv = Server::start(engine, &["--mode", "chat"]);
    let port = srv.port.to_string();
    let mut ann = Proc::spawn_in_temp(
        "hb-client",
        &[
            "--defaults",
            "--chat",
            "--name",
            "ann",
            "--port",
            &port,
            "--reconnect-for",
            "1s",
        ],
        Some(""),
    );
    ann.stdout.wait_for("* in the room: ann (you)", PROMPT);
    let killed = Instant::now();
    srv.proc.signal("KILL");
    let st = ann.wait(PROMPT);
    let took = killed.elapsed();
    let err = ann.stderr.text();
    assert_eq!(st.code(), Some(4), "{err}");
    assert!(err.contains("reconnecting (for up to 1s)"), "{err}");
    assert!(
        err.contains(
            "hb-client: the connection was lost and the server could not be reached again \
             within 1s"
        ),
        "{err}"
    );
    assert!(
        took >= ms(1000) && took < ms(2500),
        "gave up after {took:?}"
    );
    let srv = Server::start(engine, &["--mode", "chat"]);
    let mut bob = chat_client(srv.port, "bob");
    bob.stdout.wait_for("* in the room: bob (you)", PROMPT);
    srv.proc.signal("TERM");
    assert_eq!(bob.wait(PROMPT).code(), Some(3), "{}", bob.stderr.text());
    assert!(!bob.stderr.text().contains("reconnecting"));
}

engine_tests!(a_receiver_cut_off_by_the_network_gets_all_2000_messages_once);
/// Issue 13's test: the receiver (`hb-client --chat`) lives in a network namespace; while a
/// sender on the host sends 2,000 numbered messages at a steady pace, the receiver's link
/// goes down long enough for the server's heartbeat to end it (0.3 s + 2 x 0.1 s), then
/// comes back. The receiver must print all 2,000 exactly once, in order, and one reconnect
/// notice. Without network namespaces the test is skipped (a failure under CI).
fn a_receiver_cut_off_by_the_network_gets_all_2000_messages_once(engine: Engine) {
    const N: usize = 2000;
    // 500 messages a second, so messages keep arriving across the outage and the resume's
    // seam; the server keeps all 2,000 (`--history`), so however slow the reconnect, nothing
    // is too old and every message must come through.
    const PACE: Duration = Duration::from_millis(2);
    let _x = exclusive();
    let _w = Watchdog::new("chat-client-netns-resume", ms(60_000));
    let Some(ns) = Netns::create("a_receiver_cut_off_by_the_network_gets_all_2000_messages_once")
    else {
        return;
    };
    let host = ns.host_ip.to_string();
    let mut srv = Server::start(
        engine,
        &[
            "--mode",
            "chat",
            "--host",
            &host,
            "--idle",
            "0.3",
            "--interval",
            "0.1",
            "--count",
            "2",
            "--history",
            "10000",
        ],
    );
    let port = srv.port.to_string();
    let mut rx = ns.spawn(
        "hb-client",
        &[
            "--defaults",
            "--chat",
            "--name",
            "rx",
            "--host",
            &host,
            "--port",
            &port,
        ],
        Some(""),
    );
    rx.stdout.wait_for("* in the room: rx (you)", PROMPT);
    // The sender: a raw connection on the host side that never falls silent for long.
    let addr = std::net::SocketAddr::new(ns.host_ip.into(), srv.port);
    let mut tx = Peer::from_stream(std::net::TcpStream::connect(addr).unwrap());
    tx.line(PROMPT);
    tx.send(b"JOIN tx\nPING joined\n");
    tx.expect("PONG joined", PROMPT);
    rx.stdout.wait_for("* tx joined", PROMPT);
    let sender = std::thread::spawn(move || {
        let start = Instant::now();
        for i in 1..=N {
            tx.send(format!("MSG {i}\n").as_bytes());
            let due = start + PACE * i as u32;
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
        }
        tx
    });
    rx.stdout.wait_for("tx: 300", PROMPT);
    ns.cut();
    let cut = Instant::now();
    // The server gives up on the receiver 0.5 s after its last byte (a PONG, which may be
    // from before the cut); the client gives up on the server 0.5 s after the last line it
    // read. The link stays down past both: at least 1 s, and 200 ms past the server's END.
    srv.log().wait_for("END heartbeat-timeout", PROMPT);
    std::thread::sleep(ms(1000).saturating_sub(cut.elapsed()).max(ms(200)));
    ns.restore();
    let down = cut.elapsed();
    let (_, notice) = rx.stdout.wait_for("-- reconnected", ms(10_000));
    let mut tx = sender.join().unwrap();
    rx.stdout.wait_for(&format!("tx: {N}"), ms(10_000));
    rx.stdout.settle(ms(200));
    let out = rx.stdout.text();
    let got = said_by(&out, "tx");
    let want: Vec<String> = (1..=N).map(|i| i.to_string()).collect();
    if got != want {
        let first_bad = got.iter().zip(&want).position(|(g, w)| g != w);
        panic!(
            "{} lines from tx, first difference at index {first_bad:?}; notice: {notice}\n\
             stderr:\n{}",
            got.len(),
            rx.stderr.text()
        );
    }
    assert_eq!(rx.stdout.count("-- reconnected"), 1, "{out}");
    let recovered: u64 = notice
        .rsplit_once("recovered ")
        .and_then(|(_, n)| n.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("{notice}"));
    assert!(recovered > 0, "{notice}");
    eprintln!("measured: link down {down:?}; {notice}");
    tx.send(b"QUIT\n");
    rx.close_stdin();
    assert_eq!(rx.wait(PROMPT).code(), Some(0), "{}", rx.stderr.text());
}
