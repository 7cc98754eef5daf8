//! Operating hb-server (CONTRACT section 10), on both engines: SIGHUP re-reads the
//! configuration for new connections (and a bad file changes nothing), SIGUSR1 prints a
//! status line, `--log-format json` lines parse and carry their fields, `--quiet` keeps only
//! refusals, errors and shutdown.

use std::time::Duration;

use crate::support::*;

const PROMPT: Duration = Duration::from_secs(5);

/// hb-server in a directory holding `configuration.json` = `config`.
fn server_with_file(engine: Engine, config: &str, args: &[&str]) -> Server {
    let dir = temp_dir();
    std::fs::write(dir.path().join("configuration.json"), config).unwrap();
    let mut all = engine.with(&["--defaults", "--port", "0"]);
    all.extend_from_slice(args);
    Server::start_raw(&all, dir.path(), None).keep_dir(dir)
}

fn hello_of(port: u16) -> String {
    let mut p = Peer::connect(port);
    p.line(PROMPT).1
}

engine_tests!(sighup_applies_the_file_to_new_connections_and_a_bad_file_changes_nothing);
fn sighup_applies_the_file_to_new_connections_and_a_bad_file_changes_nothing(engine: Engine) {
    let _w = Watchdog::new("ops-sighup", ms(30_000));
    let mut srv = server_with_file(
        engine,
        r#"{"server": {"interval": 1, "count": 2, "idle": 3}}"#,
        &[],
    );
    let file = srv.dir.join("configuration.json");
    assert_eq!(
        hello_of(srv.port),
        "HELLO hb/1 idle=3000 interval=1000 count=2 mode=echo"
    );
    // A connection from before the reload keeps its settings: PING 1 at its 3 s idle.
    let mut old = Peer::connect(srv.port);
    old.expect(
        "HELLO hb/1 idle=3000 interval=1000 count=2 mode=echo",
        PROMPT,
    );

    std::fs::write(
        &file,
        r#"{"server": {"interval": 0.5, "count": 4, "idle": 2, "mode": "chat"}}"#,
    )
    .unwrap();
    srv.proc.signal("HUP");
    let (_, line) = srv.log().wait_for("configuration reloaded", PROMPT);
    assert!(
        line.contains("interval 1s, count 2, idle 3s -> interval 500ms, count 4, idle 2s"),
        "{line}"
    );
    assert!(
        line.contains("needs a restart, not applied: mode echo -> chat"),
        "{line}"
    );
    assert_eq!(
        hello_of(srv.port),
        "HELLO hb/1 idle=2000 interval=500 count=4 mode=echo"
    );

    // A file that does not load: the log says why, the settings stay.
    std::fs::write(&file, r#"{"server": {"count": "many"}}"#).unwrap();
    srv.proc.signal("HUP");
    let (_, line) = srv.log().wait_for("reload failed", PROMPT);
    assert!(line.contains("server.count"), "{line}");
    assert_eq!(
        hello_of(srv.port),
        "HELLO hb/1 idle=2000 interval=500 count=4 mode=echo"
    );
    let ping = old.expect("PING 1", PROMPT);
    assert_near("the old connection's PING 1", ping, ms(3_000), ms(400));

    // SIGUSR1: one status line with the settings in effect; the server goes on.
    srv.proc.signal("USR1");
    let (_, status) = srv.log().wait_for("status:", PROMPT);
    assert!(
        status.contains("heartbeat interval 500ms, count 4, idle 2s"),
        "{status}"
    );
    srv.proc.signal("TERM");
    assert!(srv.proc.wait(ms(2_000)).success());
}

engine_tests!(json_log_lines_parse_and_carry_their_fields);
fn json_log_lines_parse_and_carry_their_fields(engine: Engine) {
    let _w = Watchdog::new("ops-json", ms(30_000));
    let mut srv = Server::start(
        engine,
        &[
            "--log-format",
            "json",
            "--idle",
            "0.4",
            "--interval",
            "0.2",
            "--count",
            "2",
        ],
    );
    let mut p = Peer::connect(srv.port);
    p.expect("HELLO hb/1 idle=400 interval=200 count=2 mode=echo", PROMPT);
    p.send(b"NOPE\n");
    p.line(PROMPT);
    p.expect("PING 1", PROMPT);
    p.send(b"PONG 1\n");
    p.send(b"QUIT\n");
    p.expect("END quit", PROMPT);
    srv.log().wait_for("\"event\":\"closed\"", PROMPT);
    srv.proc.signal("TERM");
    assert!(srv.proc.wait(ms(2_000)).success());
    srv.log().drain(ms(500));
    let mut kinds = Vec::new();
    let port = srv.port.to_string();
    for (_, line) in &srv.log().seen {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        let ts = v["ts"].as_str().unwrap_or_else(|| panic!("no ts: {line}"));
        assert!(ts.ends_with('Z') && ts.len() == 24, "{line}");
        assert!(v["msg"].is_string(), "{line}");
        let kind = v["event"]
            .as_str()
            .unwrap_or_else(|| panic!("no event: {line}"));
        if [
            "connected",
            "ping-sent",
            "answered",
            "end-sent",
            "closed",
            "bad-line",
        ]
        .contains(&kind)
        {
            assert_eq!(v["conn"], 1, "{line}");
        }
        match kind {
            "listening" => assert!(v["addr"].as_str().unwrap().ends_with(&port)),
            "ping-sent" => assert_eq!((v["k"].as_u64(), v["n"].as_u64()), (Some(1), Some(2))),
            "answered" => assert!(v["rtt_ms"].as_f64().is_some(), "{line}"),
            "end-sent" => assert_eq!(v["reason"], "quit", "{line}"),
            _ => {}
        }
        kinds.push(kind.to_string());
    }
    let want = [
        "listening",
        "connected",
        "bad-line",
        "round-started",
        "ping-sent",
        "answered",
        "end-sent",
        "closed",
        "shutting-down",
    ];
    for k in want {
        assert!(kinds.iter().any(|x| x == k), "no {k} in {kinds:?}");
    }
    // The start-up line still says `listening on ADDR:PORT` (in its msg).
    assert!(srv.log().seen[0].1.contains("listening on 127.0.0.1:"));
}

engine_tests!(quiet_logs_only_refusals_errors_and_shutdown);
fn quiet_logs_only_refusals_errors_and_shutdown(engine: Engine) {
    let _w = Watchdog::new("ops-quiet", ms(30_000));
    let mut srv = Server::start(engine, &["--quiet", "--max-conns", "1"]);
    let mut a = Peer::connect(srv.port);
    a.expect(
        "HELLO hb/1 idle=30000 interval=10000 count=3 mode=echo",
        PROMPT,
    );
    a.send(b"MSG hi\n");
    a.expect("ECHO hi", PROMPT);
    let mut b = Peer::connect(srv.port);
    b.expect("END server-full", PROMPT);
    srv.log().wait_for("refused", PROMPT);
    srv.proc.signal("TERM");
    assert!(srv.proc.wait(ms(2_000)).success());
    srv.log().drain(ms(500));
    let text = srv.log().text();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].contains("listening on 127.0.0.1:"), "{text}");
    assert!(
        lines.iter().all(|l| l.contains("listening on")
            || l.contains("refused")
            || l.contains("shutting down")),
        "{text}"
    );
    assert!(text.contains("shutting down"), "{text}");
}

/// `--workers N`: the event engine serves from exactly N threads (named `hb-ev`), and the
/// SIGUSR1 status says how many; with the thread engine the flag is a usage error (exit 2).
#[test]
fn the_event_engine_runs_the_workers_asked_for_and_says_so() {
    let _w = Watchdog::new("ops-workers", ms(30_000));
    for n in [1, 3] {
        let count = n.to_string();
        let mut srv = Server::start(Engine::Events, &["--workers", count.as_str()]);
        let tasks = std::fs::read_dir(format!("/proc/{}/task", srv.proc.pid())).unwrap();
        let workers = tasks
            .filter_map(|t| std::fs::read_to_string(t.unwrap().path().join("comm")).ok())
            .filter(|comm| comm.trim_end() == "hb-ev")
            .count();
        assert_eq!(workers, n, "--workers {n}");
        srv.proc.signal("USR1");
        let (_, status) = srv.log().wait_for("status:", PROMPT);
        assert!(
            status.contains(&format!("engine events ({n} workers)")),
            "{status}"
        );
        srv.proc.signal("TERM");
        assert!(srv.proc.wait(ms(2_000)).success());
    }
    let mut p = Proc::spawn_in_temp("hb-server", &["--defaults", "--workers", "2"], None);
    assert_eq!(p.wait(PROMPT).code(), Some(2));
    assert!(
        p.stderr
            .text()
            .contains("--workers does nothing without --engine events"),
        "{}",
        p.stderr.text()
    );
}
