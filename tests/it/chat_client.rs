//! `hb-client --chat` as a user sees it, with real processes: the member list on joining,
//! timestamps, `/who`, `/help`, unknown commands, a taken name, and hostile text shown inert.

use std::io::{Read, Write};
use std::net::TcpListener;

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
