//! Prompts answered through piped stdin, and configuration.json variants.

use crate::support::*;

fn hello_of(srv: &Server) -> String {
    let mut peer = Peer::connect(srv.port);
    peer.line(PROMPT).1
}

#[test]
fn prompts_enter_keeps_every_default() {
    let _w = Watchdog::new("prompts-defaults", ms(10_000));
    let srv = Server::start_raw(&["--port", "0"], &temp_dir(), Some("\n\n\n"));
    assert_eq!(
        hello_of(&srv),
        "HELLO hb/1 idle=30000 interval=10000 count=3 mode=echo"
    );
}

#[test]
fn prompts_end_of_input_keeps_the_defaults() {
    let _w = Watchdog::new("prompts-eof", ms(10_000));
    // stdin is /dev/null: the first prompt reads end of input.
    let srv = Server::start_raw(&["--port", "0"], &temp_dir(), None);
    assert_eq!(
        hello_of(&srv),
        "HELLO hb/1 idle=30000 interval=10000 count=3 mode=echo"
    );
}

#[test]
fn prompts_custom_values_and_idle_raised() {
    let _w = Watchdog::new("prompts-custom", ms(10_000));
    let mut srv = Server::start_raw(&["--port", "0"], &temp_dir(), Some("0.5\n4\n1\n"));
    assert_eq!(hello_of(&srv), "HELLO hb/1 idle=2000 interval=500 count=4 mode=echo");
    let err = &mut srv.proc.stderr;
    err.wait_for("Time between heartbeats", PROMPT);
    err.wait_for("idle 1s is shorter than interval x count; using 2s", PROMPT);
}

#[test]
fn prompts_invalid_answer_is_a_startup_error_when_not_a_terminal() {
    let mut p = Proc::spawn("hb-server", &["--port", "0"], &temp_dir(), Some("soon\n"));
    assert_eq!(p.wait(PROMPT).code(), Some(2));
    let err = p.stderr.text();
    assert!(
        err.contains("invalid answer \"soon\" for interval"),
        "{err}"
    );
}

#[test]
fn flags_skip_the_prompts_they_answer() {
    let _w = Watchdog::new("prompts-partial", ms(10_000));
    // interval and count by flag, idle answered by the prompt.
    let srv = Server::start_raw(
        &["--port", "0", "--interval", "1", "--count", "2"],
        &temp_dir(),
        Some("5\n"),
    );
    assert_eq!(hello_of(&srv), "HELLO hb/1 idle=5000 interval=1000 count=2 mode=echo");
    assert_eq!(srv.proc.stderr.count("Time between heartbeats"), 0);
}

#[test]
fn client_prompts_through_stdin() {
    let _w = Watchdog::new("client-prompts", ms(10_000));
    let srv = Server::start(&[]);
    let port = srv.port.to_string();
    let mut c = Proc::spawn(
        "hb-client",
        &["--port", &port, "--messages", "3"],
        &temp_dir(),
        Some("0.05\n\n"),
    );
    assert_eq!(c.wait(PROMPT).code(), Some(0), "{}", c.stderr.text());
    assert_eq!(c.stdout.count("<- ECHO Hello, there"), 3);
    assert!(
        c.stderr
            .text()
            .contains("every 50ms, answering heartbeats after 0s"),
        "{}",
        c.stderr.text()
    );
    let mut c = Proc::spawn(
        "hb-client",
        &["--port", &port],
        &temp_dir(),
        Some("often\n"),
    );
    assert_eq!(c.wait(PROMPT).code(), Some(2));
    assert!(c.stderr.text().contains("for every"), "{}", c.stderr.text());
}

fn write_config(text: &str) -> std::path::PathBuf {
    let dir = temp_dir();
    std::fs::write(dir.join("configuration.json"), text).unwrap();
    dir
}

#[test]
fn configuration_json_in_the_working_directory_with_string_or_number_ports() {
    let _w = Watchdog::new("config-ports", ms(10_000));
    for text in [
        r#"{"server": {"host": "127.0.0.1", "port": "0"}, "client": {"host": "127.0.0.1", "port": "8001"}}"#,
        r#"{"server": {"host": "127.0.0.1", "port": 0, "interval": 0.5, "count": 2, "idle": "3s"}}"#,
    ] {
        let dir = write_config(text);
        let srv = Server::start_raw(&["--defaults"], &dir, None);
        let hello = hello_of(&srv);
        assert!(hello.starts_with("HELLO hb/1 "), "{hello}");
        if text.contains("interval") {
            assert_eq!(hello, "HELLO hb/1 idle=3000 interval=500 count=2 mode=echo");
        }
        // The client reads server.host/server.port from the same file.
        let mut c = Proc::spawn(
            "hb-client",
            &[
                "--defaults",
                "--port",
                &srv.port.to_string(),
                "--every",
                "10ms",
                "--messages",
                "1",
            ],
            &dir,
            None,
        );
        assert_eq!(c.wait(PROMPT).code(), Some(0), "{}", c.stderr.text());
    }
}

#[test]
fn config_settings_skip_prompts_and_flags_override_the_file() {
    let _w = Watchdog::new("config-override", ms(10_000));
    let dir = write_config(r#"{"server": {"port": "1", "interval": 1, "count": 2, "idle": 4}}"#);
    // --port beats the file's port 1; no prompt is needed since the file sets all three.
    let srv = Server::start_raw(&["--port", "0", "--count", "5"], &dir, Some("garbage\n"));
    assert_eq!(hello_of(&srv), "HELLO hb/1 idle=5000 interval=1000 count=5 mode=echo");
}

#[test]
fn missing_config_file_is_exit_2() {
    let mut p = Proc::spawn(
        "hb-server",
        &["--defaults", "--config", "nope.json"],
        &temp_dir(),
        None,
    );
    assert_eq!(p.wait(PROMPT).code(), Some(2));
    assert!(
        p.stderr.text().contains("cannot read config nope.json"),
        "{}",
        p.stderr.text()
    );
    let mut p = Proc::spawn(
        "hb-client",
        &["--defaults", "--config", "nope.json"],
        &temp_dir(),
        None,
    );
    assert_eq!(p.wait(PROMPT).code(), Some(2));
}

#[test]
fn unknown_key_and_wrong_type_are_named() {
    for (text, needle) in [
        (
            r#"{"server": {"port": "0", "intreval": 5}}"#,
            "unknown key `server.intreval`",
        ),
        (
            r#"{"server": {"port": true}}"#,
            "server.port: expected a port",
        ),
        (r#"{"client": {"every": "soon"}}"#, "client.every:"),
        (r#"{"server": {"port": "0"}"#, "not valid JSON"),
    ] {
        let dir = write_config(text);
        let mut p = Proc::spawn("hb-server", &["--defaults"], &dir, None);
        assert_eq!(p.wait(PROMPT).code(), Some(2), "{text}");
        let err = p.stderr.text();
        assert!(
            err.contains(needle) && err.lines().count() == 1,
            "{text}: {err}"
        );
    }
}

#[test]
fn bad_flags_are_exit_2_and_help_explains_the_settings() {
    for args in [
        &["--interval", "0"][..],
        &["--interval", "soon"],
        &["--count", "0"],
        &["--port", "70000"],
    ] {
        let mut p = Proc::spawn("hb-server", args, &temp_dir(), None);
        assert_eq!(p.wait(PROMPT).code(), Some(2), "{args:?}");
    }
    let mut p = Proc::spawn("hb-server", &["--help"], &temp_dir(), None);
    assert_eq!(p.wait(PROMPT).code(), Some(0));
    let help = p.stdout.text();
    for word in [
        "--interval",
        "--count",
        "--idle",
        "heartbeat round",
        "configuration.json",
        "Exit status",
    ] {
        assert!(help.contains(word), "help lacks {word}:\n{help}");
    }
    let mut p = Proc::spawn("hb-client", &["--help"], &temp_dir(), None);
    assert_eq!(p.wait(PROMPT).code(), Some(0));
    let help = p.stdout.text();
    for word in ["--every", "--block", "testing only", "Exit status"] {
        assert!(help.contains(word), "help lacks {word}:\n{help}");
    }
}
