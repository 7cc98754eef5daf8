//! Prompts answered through piped stdin, and configuration.json variants.

use crate::support::*;

fn hello_of(srv: &Server) -> String {
    let mut peer = Peer::connect(srv.port);
    peer.line(PROMPT).1
}

engine_tests!(prompts_enter_keeps_every_default);
fn prompts_enter_keeps_every_default(engine: Engine) {
    let _w = Watchdog::new("prompts-defaults", ms(10_000));
    let srv = Server::start_raw(&engine.with(&["--port", "0"]), &temp_dir(), Some("\n\n\n"));
    assert_eq!(
        hello_of(&srv),
        "HELLO hb/1 idle=30000 interval=10000 count=3 mode=echo"
    );
}

engine_tests!(prompts_end_of_input_keeps_the_defaults);
fn prompts_end_of_input_keeps_the_defaults(engine: Engine) {
    let _w = Watchdog::new("prompts-eof", ms(10_000));
    // stdin is /dev/null: the first prompt reads end of input.
    let srv = Server::start_raw(&engine.with(&["--port", "0"]), &temp_dir(), None);
    assert_eq!(
        hello_of(&srv),
        "HELLO hb/1 idle=30000 interval=10000 count=3 mode=echo"
    );
}

engine_tests!(prompts_custom_values_and_idle_raised);
fn prompts_custom_values_and_idle_raised(engine: Engine) {
    let _w = Watchdog::new("prompts-custom", ms(10_000));
    let mut srv = Server::start_raw(
        &engine.with(&["--port", "0"]),
        &temp_dir(),
        Some("0.5\n4\n1\n"),
    );
    assert_eq!(
        hello_of(&srv),
        "HELLO hb/1 idle=2000 interval=500 count=4 mode=echo"
    );
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

engine_tests!(flags_skip_the_prompts_they_answer);
fn flags_skip_the_prompts_they_answer(engine: Engine) {
    let _w = Watchdog::new("prompts-partial", ms(10_000));
    // interval and count by flag, idle answered by the prompt.
    let srv = Server::start_raw(
        &engine.with(&["--port", "0", "--interval", "1", "--count", "2"]),
        &temp_dir(),
        Some("5\n"),
    );
    assert_eq!(
        hello_of(&srv),
        "HELLO hb/1 idle=5000 interval=1000 count=2 mode=echo"
    );
    assert_eq!(srv.proc.stderr.count("Time between heartbeats"), 0);
}

engine_tests!(client_prompts_through_stdin);
fn client_prompts_through_stdin(engine: Engine) {
    let _w = Watchdog::new("client-prompts", ms(10_000));
    let srv = Server::start(engine, &[]);
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

fn write_config(text: &str) -> TempDir {
    let dir = temp_dir();
    std::fs::write(dir.join("configuration.json"), text).unwrap();
    dir
}

engine_tests!(configuration_json_in_the_working_directory_with_string_or_number_ports);
fn configuration_json_in_the_working_directory_with_string_or_number_ports(engine: Engine) {
    let _w = Watchdog::new("config-ports", ms(10_000));
    for text in [
        r#"{"server": {"host": "127.0.0.1", "port": "0"}, "client": {"host": "127.0.0.1", "port": "8001"}}"#,
        r#"{"server": {"host": "127.0.0.1", "port": 0, "interval": 0.5, "count": 2, "idle": "3s"}}"#,
    ] {
        let dir = write_config(text);
        let srv = Server::start_raw(&engine.with(&["--defaults"]), &dir, None);
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

engine_tests!(config_settings_skip_prompts_and_flags_override_the_file);
fn config_settings_skip_prompts_and_flags_override_the_file(engine: Engine) {
    let _w = Watchdog::new("config-override", ms(10_000));
    // The engine comes from the file too (`server.engine`), under both engines.
    let dir = write_config(&format!(
        r#"{{"server": {{"port": "1", "interval": 1, "count": 2, "idle": 4, "engine": "{}"}}}}"#,
        match engine {
            Engine::Threads => "threads",
            Engine::Events => "events",
        }
    ));
    // --port beats the file's port 1; no prompt is needed since the file sets all three.
    let srv = Server::start_raw(&["--port", "0", "--count", "5"], &dir, Some("garbage\n"));
    assert_eq!(
        hello_of(&srv),
        "HELLO hb/1 idle=5000 interval=1000 count=5 mode=echo"
    );
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
            "hb-server: configuration.json: server.intreval: unknown key (known: host, port,",
        ),
        (
            r#"{"server": {"port": true}}"#,
            "hb-server: configuration.json: server.port: expected a port",
        ),
        (
            r#"{"client": {"every": "soon"}}"#,
            "hb-server: configuration.json: client.every:",
        ),
        (
            r#"{"server": {"count": true}}"#,
            "hb-server: configuration.json: server.count: expected a whole number above zero, got true",
        ),
        (
            r#"{"server": {"engine": "events", "wire": "classic"}}"#,
            "hb-server: configuration.json: server.engine: events works only on the line wire, \
             and server.wire is classic",
        ),
        (
            r#"{"server": {"engine": "tokio"}}"#,
            "hb-server: configuration.json: server.engine: 'tokio' is not an engine (threads or \
             events)",
        ),
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

/// The short and the long help show every default with its unit, and the exit codes.
#[test]
fn help_shows_defaults_with_units_and_exit_codes() {
    let help = |bin: &str, flag: &str| {
        let mut p = Proc::spawn(bin, &[flag], &temp_dir(), None);
        assert_eq!(p.wait(PROMPT).code(), Some(0));
        p.stdout.text()
    };
    for flag in ["-h", "--help"] {
        let server = help("hb-server", flag);
        for want in [
            "[default: 10s]",
            "[default: 30s]",
            "[default: 3]",
            "[default: echo]",
            "[default: line]",
            "[default: threads]",
            "[default: 8000]",
            "[default: 65536]",
            "Exit status: 0 after Ctrl-C or SIGTERM",
            "2 bad flags or configuration",
            "1 anything else (such as a port already in use)",
        ] {
            assert!(
                server.contains(want),
                "hb-server {flag} lacks {want}:\n{server}"
            );
        }
        let client = help("hb-client", flag);
        for want in [
            "[default: 30s]",
            "[default: 0s]",
            "[default: \"Hello, there\"]",
            "Exit status: 0 you ended the session",
            "3 the server ended it",
            "4 the server stopped answering",
        ] {
            assert!(
                client.contains(want),
                "hb-client {flag} lacks {want}:\n{client}"
            );
        }
    }
    // The long help says what each mode, wire and engine is.
    let server = help("hb-server", "--help");
    for want in [
        "echo: Reply `ECHO TEXT`",
        "chat: A chat room",
        "classic: Byte-compatible",
        "threads: The manual's model",
        "A few threads with non-blocking sockets",
    ] {
        assert!(server.contains(want), "--help lacks {want}:\n{server}");
    }
}

/// Flags that contradict each other, would do nothing, or carry a value the server would
/// refuse: exit 2 before any prompt or connection, with one line naming the flag.
#[test]
fn usage_conflicts_and_flags_that_do_nothing_are_exit_2_naming_the_flag() {
    let long = "x".repeat(33);
    let cases: &[(&str, &[&str], &str)] = &[
        (
            "hb-server",
            &["--wire", "classic", "--mode", "chat"],
            "hb-server: --mode chat works only on the line wire, not with --wire classic",
        ),
        (
            "hb-server",
            &["--wire", "classic", "--engine", "events"],
            "hb-server: --engine events works only on the line wire, not with --wire classic",
        ),
        (
            "hb-server",
            &["--wire", "classic", "--max-line", "100"],
            "hb-server: --max-line does nothing with --wire classic",
        ),
        (
            "hb-server",
            &["--wire", "classic", "--queue", "100"],
            "hb-server: --queue does nothing with --wire classic",
        ),
        (
            "hb-server",
            &["--burst", "5"],
            "hb-server: --burst does nothing without --rate",
        ),
        (
            "hb-server",
            &["--wire", "classic", "--rate", "5"],
            "hb-server: --rate does nothing with --wire classic",
        ),
        (
            "hb-server",
            &["--wire", "classic", "--auth-secret", "secret"],
            "hb-server: --auth-secret works only on the line wire, not with --wire classic",
        ),
        (
            "hb-server",
            &["--wire", "classic", "--max-conns-per-ip", "2"],
            "hb-server: --max-conns-per-ip works only on the line wire, not with --wire classic",
        ),
        (
            "hb-server",
            &["--handshake-timeout", "2s"],
            "hb-server: --handshake-timeout does nothing without --tls-cert or --auth-secret",
        ),
        (
            "hb-server",
            &["--auth-secret", "/nonexistent/hb-secret"],
            "hb-server: --auth-secret: cannot read the secret file /nonexistent/hb-secret: ",
        ),
        (
            "hb-server",
            &["--broker", "redis://127.0.0.1:1"],
            "hb-server: --broker does nothing without --mode chat",
        ),
        (
            "hb-server",
            &["--mode", "chat", "--node-timeout", "2s"],
            "hb-server: --node-timeout does nothing without --broker redis://",
        ),
        (
            "hb-client",
            &["--name", "ann"],
            "hb-client: --name does nothing without --chat",
        ),
        (
            "hb-client",
            &["--chat", "--name", "ann", "--every", "5"],
            "hb-client: --every does nothing with --chat",
        ),
        (
            "hb-client",
            &["--chat", "--name", "ann", "--message", "hi"],
            "hb-client: --message does nothing with --chat",
        ),
        (
            "hb-client",
            &["--chat", "--name", "ann", "--messages", "3"],
            "hb-client: --messages does nothing with --chat",
        ),
        (
            "hb-client",
            &["--message", ""],
            "hb-client: --message: must not be empty",
        ),
        (
            "hb-client",
            &["--chat", "--name", ""],
            "hb-client: --name: \"\" is not a usable chat name (it is empty)",
        ),
        (
            "hb-client",
            &["--chat", "--name", "  "],
            "hb-client: --name: \"  \" is not a usable chat name (no spaces or control",
        ),
        (
            "hb-client",
            &["--chat", "--name", "a b"],
            "hb-client: --name: \"a b\" is not a usable chat name (no spaces or control",
        ),
        (
            "hb-client",
            &["--chat", "--name", &long],
            "is not a usable chat name (at most 32 characters)",
        ),
        (
            "hb-client",
            &["--chat"],
            "hb-client: --chat needs a name: --name NAME",
        ),
        (
            "hb-client",
            &["--chat", "--name", "ann", "--wire", "classic"],
            "hb-client: --chat works only on the line wire, not with --wire classic",
        ),
        (
            "hb-client",
            &["--token", "a b"],
            "hb-client: --token: must be one word",
        ),
        (
            "hb-client",
            &["--token", "a.b.c", "--wire", "classic"],
            "hb-client: --token works only on the line wire, not with --wire classic",
        ),
        (
            "hb-client",
            &["--chat", "--token", "a.b.c"],
            "hb-client: --chat needs a name: --name NAME, or a --token whose sub is one",
        ),
    ];
    for (bin, args, want) in cases {
        let mut all = vec!["--defaults"];
        all.extend_from_slice(args);
        let mut p = Proc::spawn(bin, &all, &temp_dir(), Some(""));
        assert_eq!(p.wait(PROMPT).code(), Some(2), "{bin} {args:?}");
        let err = p.stderr.text();
        assert!(
            err.contains(want) && err.lines().count() == 1,
            "{bin} {args:?}: {err}"
        );
        assert_eq!(p.stdout.text(), "", "{bin} {args:?}: nothing started");
    }
    // A broker that is not one: clap's value error (exit 2), naming the forms that work.
    let args = ["--defaults", "--mode", "chat", "--broker", "nats://x"];
    let mut p = Proc::spawn("hb-server", &args, &temp_dir(), Some(""));
    assert_eq!(p.wait(PROMPT).code(), Some(2));
    let err = p.stderr.text();
    assert!(
        err.contains(
            "'nats://x' is not a broker: use memory, redis://[[USER]:PASSWORD@]HOST:PORT[/DB], \
             rediss://... (TLS) or redis+unix:///PATH[?pass=PASSWORD]"
        ),
        "{err}"
    );
}

/// The other binaries: usage errors are exit 2 there too.
#[test]
fn usage_errors_are_exit_2_in_every_binary() {
    let _w = Watchdog::new("usage-exit-2", ms(20_000));
    let cases: &[(&str, &[&str], &str)] = &[
        (
            env!("CARGO_BIN_EXE_hb-bench"),
            &["--quick", "--smoke"],
            "'--quick' cannot be used with '--smoke'",
        ),
        (
            env!("CARGO_BIN_EXE_hb-scenarios"),
            &["--case", "9"],
            "--case",
        ),
        (
            env!("CARGO_BIN_EXE_hb-scenarios"),
            &["--tolerance", "10s"],
            "--tolerance 10s is more than half",
        ),
        (
            env!("CARGO_BIN_EXE_hb-node"),
            &["--rpc-timeout", "0"],
            "--rpc-timeout",
        ),
        (env!("CARGO_BIN_EXE_hb-echo"), &[], "--port"),
        (env!("CARGO_BIN_EXE_hb-server"), &["--bogus"], "--bogus"),
        (env!("CARGO_BIN_EXE_hb-client"), &["--bogus"], "--bogus"),
    ];
    let dir = temp_dir();
    for (bin, args, want) in cases {
        let out = std::process::Command::new(bin)
            .args(*args)
            .current_dir(&*dir)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bin} {args:?}: {err}");
        assert!(err.contains(want), "{bin} {args:?}: {err}");
    }
}

engine_tests!(chat_name_from_configuration_json_and_the_flag_overrides_it);
/// `client.name` in the file names the chat client; a flag overrides it; the file's values
/// that chat does not use (every, message) are no error.
fn chat_name_from_configuration_json_and_the_flag_overrides_it(engine: Engine) {
    let _w = Watchdog::new("config-chat-name", ms(20_000));
    let srv = Server::start(engine, &["--mode", "chat"]);
    let port = srv.port.to_string();
    let mut watcher = Peer::connect(srv.port);
    watcher.line(PROMPT);
    watcher.send(b"JOIN watcher\nPING joined\n");
    watcher.expect("PONG joined", PROMPT);
    let dir = write_config(r#"{"client": {"name": "ann", "every": 5, "message": "hi"}}"#);
    let mut ann = Proc::spawn(
        "hb-client",
        &["--chat", "--port", &port],
        &dir,
        Some("hello\n"),
    );
    watcher.expect("JOINED ann", PROMPT);
    watcher.expect("MSG ann hello", PROMPT);
    ann.close_stdin();
    assert_eq!(ann.wait(PROMPT).code(), Some(0), "{}", ann.stderr.text());
    let mut bob = Proc::spawn(
        "hb-client",
        &["--chat", "--name", "bob", "--port", &port],
        &dir,
        Some("hi\n"),
    );
    watcher.expect("LEFT ann quit", PROMPT);
    watcher.expect("JOINED bob", PROMPT);
    watcher.expect("MSG bob hi", PROMPT);
    bob.close_stdin();
    assert_eq!(bob.wait(PROMPT).code(), Some(0), "{}", bob.stderr.text());
}

#[test]
fn a_bad_name_in_the_config_is_a_config_error_naming_file_and_key() {
    let dir = write_config(r#"{"client": {"name": "a b"}}"#);
    let mut p = Proc::spawn("hb-client", &["--chat"], &dir, Some(""));
    assert_eq!(p.wait(PROMPT).code(), Some(2));
    assert_eq!(
        p.stderr.text().trim_end(),
        "hb-client: configuration.json: client.name: \"a b\" is not a usable chat name \
         (no spaces or control characters)"
    );
}

#[test]
fn several_config_errors_are_reported_together() {
    let dir = write_config(
        r#"{"server": {"count": true, "port": "x", "idle": "30s", "intreval": 5},
            "client": {"every": "soon"}}"#,
    );
    let mut p = Proc::spawn("hb-server", &["--defaults"], &dir, None);
    assert_eq!(p.wait(PROMPT).code(), Some(2));
    let err = p.stderr.text();
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 4, "{err}");
    for (line, key) in lines.iter().zip([
        "client.every: ",
        "server.count: expected a whole number above zero, got true",
        "server.intreval: unknown key",
        "server.port: expected a port",
    ]) {
        assert!(
            line.starts_with(&format!("hb-server: configuration.json: {key}")),
            "{err}"
        );
    }
}

engine_tests!(numbers_given_as_strings_in_the_config_are_accepted);
fn numbers_given_as_strings_in_the_config_are_accepted(engine: Engine) {
    let _w = Watchdog::new("config-strings", ms(10_000));
    let dir = write_config(
        r#"{"server": {"port": "0", "count": "2", "interval": "0.5", "idle": "3s", "max_line": "100"}}"#,
    );
    let srv = Server::start_raw(&engine.with(&["--defaults"]), &dir, None);
    assert_eq!(
        hello_of(&srv),
        "HELLO hb/1 idle=3000 interval=500 count=2 mode=echo"
    );
}

/// `--stall DUR` (flow control's bound): zero is refused by flag and in the file, naming the
/// key; `--help` shows its unit and default.
#[test]
fn stall_is_validated_and_documented() {
    let mut p = Proc::spawn(
        "hb-server",
        &["--defaults", "--stall", "0"],
        &temp_dir(),
        None,
    );
    assert_eq!(p.wait(PROMPT).code(), Some(2));
    assert!(p.stderr.text().contains("--stall"), "{}", p.stderr.text());
    let dir = write_config(r#"{"server": {"stall": "0ms"}}"#);
    let mut p = Proc::spawn("hb-server", &["--defaults"], &dir, None);
    assert_eq!(p.wait(PROMPT).code(), Some(2));
    assert!(
        p.stderr
            .text()
            .starts_with("hb-server: configuration.json: server.stall: "),
        "{}",
        p.stderr.text()
    );
    let mut p = Proc::spawn("hb-server", &["--help"], &temp_dir(), None);
    assert_eq!(p.wait(PROMPT).code(), Some(0));
    let help = p.stdout.text();
    assert!(help.contains("--stall <DUR>"), "{help}");
    assert!(help.contains("[default: 500ms]"), "{help}");
}
