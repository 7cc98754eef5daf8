//! How hb-client ends, with real processes: the cause it names and its exit status when the
//! server is killed, when the client itself was stopped past its deadline, and when client
//! and server do not fit together (mode or wire).

use std::time::{Duration, Instant};

use crate::support::*;

fn client(port: u16, extra: &[&str]) -> Proc {
    let port = port.to_string();
    let mut args = vec!["--defaults", "--port", &port];
    args.extend_from_slice(extra);
    Proc::spawn_in_temp("hb-client", &args, Some(""))
}

const LINE: &[&str] = &["--every", "60s", "--block", "0"];
/// `--reconnect-for 0`: these tests are about how a session ends, so the chat client must
/// not reconnect (it would resume; see `chat_client_gives_up_after_reconnect_for`).
const CHAT: &[&str] = &["--chat", "--name", "ann", "--reconnect-for", "0"];

/// SIGKILL leaves no time for END: the kernel closes the socket, and the client says so at
/// once instead of waiting out the heartbeat window and calling the server silent.
fn killed_server_is_a_closed_connection(engine: Engine, mode: &str, flags: &[&str]) {
    // A silence window of 5 s + 3 x 1 s: a client judging silence would take 8 s.
    let mut srv = Server::start(
        engine,
        &[
            "--mode",
            mode,
            "--idle",
            "5",
            "--interval",
            "1",
            "--count",
            "3",
        ],
    );
    let mut c = client(srv.port, flags);
    srv.log().wait_for("connected", PROMPT);
    if mode == "chat" {
        c.stdout.wait_for("* in the room: ann (you)", PROMPT);
    } else {
        c.stdout.wait_for("<- ECHO Hello, there", PROMPT);
    }
    let killed = Instant::now();
    srv.proc.signal("KILL");
    let st = c.wait(PROMPT);
    let took = killed.elapsed();
    let err = c.stderr.text();
    assert_eq!(st.code(), Some(4), "{err}");
    assert!(
        err.contains("the server closed the connection (without END)")
            || err.contains("the server reset the connection (without END)"),
        "{err}"
    );
    assert!(!err.contains("stopped answering"), "{err}");
    assert!(took < ms(1000), "noticed after {took:?}");
}

engine_tests!(line_client_says_a_killed_server_closed_the_connection);
fn line_client_says_a_killed_server_closed_the_connection(engine: Engine) {
    let _w = Watchdog::new("client-exit-kill-line", ms(15_000));
    killed_server_is_a_closed_connection(engine, "echo", LINE);
}

engine_tests!(chat_client_says_a_killed_server_closed_the_connection);
fn chat_client_says_a_killed_server_closed_the_connection(engine: Engine) {
    let _w = Watchdog::new("client-exit-kill-chat", ms(15_000));
    killed_server_is_a_closed_connection(engine, "chat", CHAT);
}

/// The client is stopped (SIGSTOP) until the server gave up on it and sent `END
/// heartbeat-timeout`, and resumed well past its own silence deadline: it must read that END
/// and exit 3 with its reason, not call the server silent. Which of its threads runs first
/// after SIGCONT is up to the scheduler (the old client lost that race about one time in
/// six), so four clients take the chance at once.
fn stopped_client_reads_the_end_waiting_for_it(engine: Engine, mode: &str, flags: &[&str]) {
    // The server ends a silent client after 300 ms + 2 x 100 ms.
    let mut srv = Server::start(
        engine,
        &[
            "--mode",
            mode,
            "--idle",
            "300ms",
            "--interval",
            "100ms",
            "--count",
            "2",
        ],
    );
    let names = ["ann", "bob", "cy", "dee"];
    let mut clients: Vec<Proc> = names
        .iter()
        .map(|name| {
            let mut f = flags.to_vec();
            if mode == "chat" {
                f = vec!["--chat", "--name", name, "--reconnect-for", "0"];
            }
            client(srv.port, &f)
        })
        .collect();
    for (c, name) in clients.iter_mut().zip(names) {
        if mode == "chat" {
            c.stdout.wait_for(&format!("{name} (you)"), PROMPT);
        } else {
            c.stdout.wait_for("<- ECHO Hello, there", PROMPT);
        }
        c.signal("STOP");
    }
    // Every client's END was sent (`wait_for` would find the first one again and again).
    let deadline = Instant::now() + PROMPT;
    while srv.log().count("END heartbeat-timeout sent") < names.len() {
        assert!(Instant::now() < deadline, "{}", srv.log().text());
        srv.log().settle(ms(20));
    }
    // Past the clients' own deadline (the same 500 ms from their last line) by a margin.
    std::thread::sleep(ms(500));
    for c in &clients {
        c.signal("CONT");
    }
    for c in &mut clients {
        let st = c.wait(PROMPT);
        let err = c.stderr.text();
        assert_eq!(
            st.code(),
            Some(3),
            "{st:?}\nstderr:\n{err}\nstdout:\n{}\nserver:\n{}",
            c.stdout.text(),
            srv.proc.stdout.text()
        );
        assert!(
            err.contains("the server ended the session: heartbeat-timeout"),
            "{err}"
        );
        assert!(!err.contains("silent"), "{err}");
    }
}

engine_tests!(stopped_line_client_reports_the_end_it_missed);
fn stopped_line_client_reports_the_end_it_missed(engine: Engine) {
    let _w = Watchdog::new("client-exit-stop-line", ms(15_000));
    stopped_client_reads_the_end_waiting_for_it(engine, "echo", LINE);
}

engine_tests!(stopped_chat_client_reports_the_end_it_missed);
fn stopped_chat_client_reports_the_end_it_missed(engine: Engine) {
    let _w = Watchdog::new("client-exit-stop-chat", ms(15_000));
    stopped_client_reads_the_end_waiting_for_it(engine, "chat", CHAT);
}

/// Runs `c` to its end and checks it explained a mismatch: exit 2, `want` on stderr, quickly.
fn assert_mismatch(mut c: Proc, want: &str, within: Duration) {
    let started = Instant::now();
    let st = c.wait(PROMPT);
    let took = started.elapsed();
    let err = c.stderr.text();
    assert_eq!(st.code(), Some(2), "{err}");
    assert!(err.contains(want), "want {want:?} in:\n{err}");
    assert!(took < within, "took {took:?}");
}

engine_tests!(line_client_on_a_chat_server_says_use_chat);
fn line_client_on_a_chat_server_says_use_chat(engine: Engine) {
    let _w = Watchdog::new("client-exit-mode-chat", ms(15_000));
    let srv = Server::start(engine, &["--mode", "chat"]);
    let c = client(srv.port, LINE);
    assert_mismatch(
        c,
        "hb-client: the server is in chat mode: use hb-client --chat --name NAME",
        ms(2000),
    );
}

engine_tests!(chat_client_on_an_echo_server_says_drop_chat);
fn chat_client_on_an_echo_server_says_drop_chat(engine: Engine) {
    let _w = Watchdog::new("client-exit-mode-echo", ms(15_000));
    let srv = Server::start(engine, &["--mode", "echo"]);
    let c = client(srv.port, CHAT);
    assert_mismatch(
        c,
        "hb-client: the server is in echo mode: drop --chat",
        ms(2000),
    );
}

#[test]
fn line_client_on_a_classic_server_says_use_wire_classic() {
    let _w = Watchdog::new("client-exit-wire-classic", ms(15_000));
    let srv = Server::start(Engine::Threads, &["--wire", "classic"]);
    let c = client(srv.port, LINE);
    // The classic server waits for the client to talk; the client probes after 1 s without
    // HELLO and the server's `Echoing...` gives it away.
    assert_mismatch(
        c,
        "hb-client: this server does not speak the line wire (it sent 'Echoing...'); \
         is it --wire classic? use hb-client --wire classic",
        ms(3000),
    );
}

engine_tests!(classic_client_on_a_line_server_says_drop_wire_classic);
fn classic_client_on_a_line_server_says_drop_wire_classic(engine: Engine) {
    let _w = Watchdog::new("client-exit-wire-line", ms(15_000));
    let srv = Server::start(engine, &[]);
    let dir = temp_dir();
    let cfg = dir.join("configuration.json");
    std::fs::write(
        &cfg,
        format!(
            r#"{{"server": {{"host": "127.0.0.1", "port": "{}"}},
                "client": {{"host": "127.0.0.1", "port": "0"}}}}"#,
            srv.port
        ),
    )
    .unwrap();
    let cfg = cfg.to_string_lossy().into_owned();
    let c = Proc::spawn(
        "hb-client",
        &["--defaults", "--wire", "classic", "--config", &cfg],
        &dir,
        None,
    );
    assert_mismatch(
        c,
        "hb-client: this server speaks the line wire (it sent HELLO); drop --wire classic",
        ms(2000),
    );
    let _ = std::fs::remove_dir_all(&dir);
}
