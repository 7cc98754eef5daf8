//! Authentication (`--auth-secret`, CONTRACT section 9), with real processes on both
//! engines: the exact bytes a refused client gets, when it gets them, what the log says
//! (never the token), and `hb-client --token` end to end.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use serde_json::json;

use crate::support::*;

const SECRET: &str = "an HS256 secret of 32 bytes, ok!";
const HELLO_CHAT: &str = "HELLO hb/1 idle=30000 interval=10000 count=3 mode=chat\n";
const HELLO_ECHO: &str = "HELLO hb/1 idle=30000 interval=10000 count=3 mode=echo\n";

/// Seconds since the epoch now.
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn sign(claims: serde_json::Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// A token for `sub` that is good for an hour.
fn good(sub: &str) -> String {
    sign(json!({"sub": sub, "exp": unix_now() + 3600}), SECRET)
}

/// A server with `--auth-secret secret` and `args`, in a directory of its own that holds the
/// secret file (written with a trailing newline, as `echo` does) and goes with the server.
fn server(engine: Engine, args: &[&str]) -> Server {
    let dir = temp_dir();
    std::fs::write(dir.join("secret"), format!("{SECRET}\n")).unwrap();
    let mut all = engine.with(&["--defaults", "--port", "0", "--auth-secret", "secret"]);
    all.extend_from_slice(args);
    Server::start_raw(&all, &dir, None).keep_dir(dir)
}

/// Connects, writes `bytes` at once (without reading first, as a script would), then reads
/// to the end: everything the server sent, and when the end came (since connecting).
fn send_then_read(port: u16, bytes: &[u8]) -> (String, Duration) {
    let t0 = Instant::now();
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(bytes).unwrap();
    read_to_end(&mut s, t0)
}

fn read_to_end(s: &mut TcpStream, t0: Instant) -> (String, Duration) {
    s.set_read_timeout(Some(PROMPT)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => panic!("reading: {e} after {:?}", String::from_utf8_lossy(&got)),
        }
    }
    (String::from_utf8_lossy(&got).into_owned(), t0.elapsed())
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}

engine_tests!(a_good_token_joins_and_every_refusal_is_auth_failed_right_after_hello);
/// A good token lets its holder join as its `sub`, silently; `alg: none`, another secret, a
/// future `nbf`, an expired token, a JOIN under another name and a line before `AUTH` each
/// get exactly `HELLO` then `END auth-failed` and the end of the stream, and the log names
/// why without the token.
fn a_good_token_joins_and_every_refusal_is_auth_failed_right_after_hello(engine: Engine) {
    let _w = Watchdog::new("auth-refusals", ms(30_000));
    let mut srv = server(engine, &["--mode", "chat"]);
    // The holder of a good token: no reply to AUTH, then the room as usual.
    let mut ann = Peer::connect(srv.port);
    ann.expect(HELLO_CHAT.trim_end(), PROMPT);
    let ann_token = good("ann");
    ann.send(format!("AUTH {ann_token}\nJOIN ann\nPING in\n").as_bytes());
    ann.expect("PONG in", PROMPT);
    srv.log().wait_for("authenticated as ann", PROMPT);

    let now = unix_now();
    let claims = json!({"sub": "bob", "exp": now + 3600});
    let none = format!(
        "{}.{}.",
        b64(r#"{"alg":"none","typ":"JWT"}"#),
        b64(&claims.to_string())
    );
    let bob = good("bob");
    let signed = |c| sign(c, SECRET);
    // (case, token, what the client sends at once, why the log gives)
    let cases = [
        (
            "alg none",
            none.clone(),
            format!("AUTH {none}\nJOIN bob\n"),
            "algorithm none refused",
        ),
        (
            "another secret",
            sign(claims.clone(), "not the server's secret, 32 bytes"),
            String::new(),
            "bad signature",
        ),
        (
            "future nbf",
            signed(json!({"sub": "bob", "exp": now + 3600, "nbf": now + 600})),
            String::new(),
            "token not valid yet",
        ),
        (
            "expired",
            signed(json!({"sub": "bob", "exp": now - 60})),
            String::new(),
            "token expired",
        ),
        (
            "name mismatch",
            bob.clone(),
            format!("AUTH {bob}\nJOIN mallory\nMSG hi\n"),
            "JOIN as 'mallory', but the token is for 'bob'",
        ),
        (
            "MSG first",
            bob.clone(),
            format!("MSG hi\nAUTH {bob}\nJOIN bob\n"),
            "expected AUTH first, got MSG",
        ),
    ];
    for (case, token, lines, why) in cases {
        let lines = if lines.is_empty() {
            format!("AUTH {token}\nJOIN bob\nMSG hi\n")
        } else {
            lines
        };
        let (got, took) = send_then_read(srv.port, lines.as_bytes());
        assert_eq!(got, format!("{HELLO_CHAT}END auth-failed\n"), "{case}");
        assert!(took < ms(1000), "{case}: ended after {took:?}");
        let (_, line) = srv.log().wait_for(why, PROMPT);
        assert!(line.contains("authentication failed: "), "{case}: {line}");
        // The signature is the secret-bearing part; the log has none of the token.
        let sig = token.rsplit('.').next().unwrap();
        let log = srv.log().text();
        assert!(!log.contains(&token), "{case}: the log holds the token");
        assert!(sig.is_empty() || !log.contains(sig), "{case}");
    }
    srv.log().wait_for("END auth-failed sent", PROMPT);
    // The member never heard any of them, and is still served.
    ann.send(b"PING still\n");
    ann.expect("PONG still", PROMPT);
    assert_eq!(srv.log().count("joined as"), 1, "{}", srv.log().text());
}

engine_tests!(no_auth_in_the_handshake_and_a_token_running_out_are_ended_on_time);
/// With `--handshake-timeout 500ms` a client that sends nothing is ended `auth-failed` at
/// 500 ms; a token whose `exp` plus the 30 s leeway falls a second or two later ends its
/// session then, while a client that renewed its token stays.
fn no_auth_in_the_handshake_and_a_token_running_out_are_ended_on_time(engine: Engine) {
    let _w = Watchdog::new("auth-deadlines", ms(30_000));
    let mut srv = server(engine, &["--handshake-timeout", "500ms"]);
    let t0 = Instant::now();
    let mut silent = TcpStream::connect(("127.0.0.1", srv.port)).unwrap();
    let (got, took) = read_to_end(&mut silent, t0);
    assert_eq!(got, format!("{HELLO_ECHO}END auth-failed\n"));
    assert_near("END for a silent client", took, ms(500), ms(250));
    srv.log()
        .wait_for("authentication failed: no AUTH within 500ms", PROMPT);

    // Runs out at a whole second 1 to 2 s from now (the wall clock judges tokens).
    let until = unix_now() + 2;
    let short = sign(json!({"sub": "ann", "exp": until - 30}), SECRET);
    let mut expiring = Peer::connect(srv.port);
    let mut renewed = Peer::connect(srv.port);
    for p in [&mut expiring, &mut renewed] {
        p.expect(HELLO_ECHO.trim_end(), PROMPT);
        p.send(format!("AUTH {short}\nMSG hi\n").as_bytes());
        p.expect("ECHO hi", PROMPT);
    }
    renewed.send(format!("AUTH {}\n", good("ann")).as_bytes());
    srv.log()
        .wait_for("authenticated again as ann (token renewed)", PROMPT);
    let at = match expiring.next(ms(4000)) {
        Next::Line(_, l) if l == "END auth-failed" => SystemTime::now(),
        other => panic!("no END auth-failed: {other:?}"),
    };
    // When the wall clock passed exp + leeway (the two clocks are read a moment apart at
    // accept, hence the few milliseconds early allowed).
    let ran_out = UNIX_EPOCH + Duration::from_secs(until);
    assert!(
        at + ms(5) >= ran_out && at <= ran_out + ms(300),
        "ended at {at:?}, the token ran out at {ran_out:?}"
    );
    assert_eq!(expiring.next(PROMPT), Next::Closed);
    srv.log()
        .wait_for("authentication failed: token expired", PROMPT);
    renewed.send(b"MSG still\n");
    renewed.expect("ECHO still", PROMPT);
}

engine_tests!(hb_client_token_works_and_a_refused_one_exits_3_without_reconnecting);
/// `hb-client --token`: the echo client authenticates and is echoed (its own log shows that
/// a token went, not the token); the chat client without `--name` chats as the token's
/// `sub`; a token the server refuses makes either exit 3 at once, naming auth-failed, and
/// the chat client does not reconnect.
fn hb_client_token_works_and_a_refused_one_exits_3_without_reconnecting(engine: Engine) {
    let _w = Watchdog::new("auth-hb-client", ms(30_000));
    let echo = server(engine, &[]);
    let port = echo.port.to_string();
    let token = good("ann");
    let args = |token: &str| -> Vec<String> {
        [
            "--defaults",
            "--port",
            &port,
            "--every",
            "0.1",
            "--messages",
            "2",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain(["--token".to_owned(), token.to_owned()])
        .collect()
    };
    let run = |args: Vec<String>, stdin: Option<&str>| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut c = Proc::spawn_in_temp("hb-client", &args, stdin);
        let t0 = Instant::now();
        let st = c.wait(PROMPT);
        (st.code(), t0.elapsed(), c)
    };
    let (code, _, c) = run(args(&token), Some(""));
    let out = c.stdout.text();
    assert_eq!(code, Some(0), "{out}{}", c.stderr.text());
    assert!(out.contains("-> AUTH (token)\n"), "{out}");
    assert_eq!(out.matches("<- ECHO Hello, there").count(), 2, "{out}");
    assert!(!out.contains(&token), "the client's log holds the token");
    let bad = sign(
        json!({"sub": "ann", "exp": unix_now() + 3600}),
        "wrong secret, 32 bytes long.....",
    );
    let (code, took, c) = run(args(&bad), Some(""));
    let err = c.stderr.text();
    assert_eq!(code, Some(3), "{err}");
    assert!(
        err.contains("the server ended the session: auth-failed"),
        "{err}"
    );
    assert!(took < ms(2000), "exit after {took:?}");

    let chat = server(engine, &["--mode", "chat"]);
    let port = chat.port.to_string();
    let mut bob = Peer::connect(chat.port);
    bob.expect(HELLO_CHAT.trim_end(), PROMPT);
    bob.send(format!("AUTH {}\nJOIN bob\nPING in\n", good("bob")).as_bytes());
    bob.expect("PONG in", PROMPT);
    let chat_args = |token: &str| -> Vec<String> {
        ["--port", &port, "--chat", "--token", token]
            .iter()
            .map(|s| s.to_string())
            .collect()
    };
    let mut ann = Proc::spawn_in_temp(
        "hb-client",
        &chat_args(&token)
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        Some("hello from ann\n"),
    );
    bob.expect("JOINED ann", PROMPT);
    bob.expect("MSG ann hello from ann", PROMPT);
    ann.close_stdin();
    assert_eq!(ann.wait(PROMPT).code(), Some(0), "{}", ann.stderr.text());
    let (code, took, c) = run(chat_args(&bad), Some("never sent\n"));
    let err = c.stderr.text();
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("auth-failed"), "{err}");
    assert!(!err.contains("reconnecting"), "{err}");
    assert!(took < ms(2000), "exit after {took:?}");
    bob.send(b"PING end\n");
    bob.expect("LEFT ann quit", PROMPT);
    bob.expect("PONG end", PROMPT);
}

/// The secret file is read at startup: an empty one is exit 2 naming it, and a short one is
/// served with a warning (HS256 wants 32 bytes or more).
#[test]
fn secret_file_problems_are_exit_2_and_a_short_secret_is_warned_about() {
    let _w = Watchdog::new("auth-secret-file", ms(15_000));
    let dir = temp_dir();
    std::fs::write(dir.join("empty"), "\r\n").unwrap();
    let mut p = Proc::spawn(
        "hb-server",
        &["--defaults", "--auth-secret", "empty"],
        &dir,
        None,
    );
    assert_eq!(p.wait(PROMPT).code(), Some(2));
    assert_eq!(
        p.stderr.text(),
        "hb-server: --auth-secret: the secret file empty is empty (the secret is empty once its \
         line end is stripped)\n"
    );
    std::fs::write(dir.join("short"), "s3cret\n").unwrap();
    let mut srv = Server::start_raw(
        &["--defaults", "--port", "0", "--auth-secret", "short"],
        &dir,
        None,
    );
    srv.proc.stderr.wait_for(
        "warning: the secret in short is 6 bytes; HS256 wants at least 32 (256 bits)",
        PROMPT,
    );
    // It still works: a token signed with those 6 bytes (not the newline) gets in.
    let token = sign(json!({"sub": "ann", "exp": unix_now() + 60}), "s3cret");
    let mut p = Peer::connect(srv.port);
    p.expect(HELLO_ECHO.trim_end(), PROMPT);
    p.send(format!("AUTH {token}\nMSG hi\n").as_bytes());
    p.expect("ECHO hi", PROMPT);
}
