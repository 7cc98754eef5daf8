//! hb-node and hb-echo, end to end: real processes, real sockets on 127.0.0.1 port 0,
//! every wait bounded (node_support's per-wait limit and a whole-test [`Watchdog`]).

#[path = "node_support.rs"]
mod support;

use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::Path;
use std::thread;
use support::{listening_port, msg, node, route, Proc, HB_ECHO, HB_NODE, WATCHDOG};
use tcp_heartbeat::net::rawsock::EchoServer;

// The run-alone gate (tests/it/support.rs): tests that move megabytes or many values through
// loopback hold the machine alone so timing tests never share a core with them; the others
// hold it shared, like every watched test.
use crate::support::{exclusive, ms, Watchdog};

fn req(p: &mut Proc, body: Value) -> Value {
    p.send(&msg("c1", "n1", body));
    p.json()
}

fn assert_error(reply: &Value, code: u64, in_reply_to: u64) {
    let body = &reply["body"];
    assert_eq!(body["type"], "error", "{reply}");
    assert_eq!(body["code"], code, "{reply}");
    assert_eq!(body["in_reply_to"], in_reply_to, "{reply}");
    assert!(
        body["text"].as_str().is_some_and(|t| !t.is_empty()),
        "{reply}"
    );
}

#[test]
fn own_case_files_match_byte_for_byte() {
    let _w = Watchdog::new("own_case_files_match_byte_for_byte", ms(30_000));
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/node-cases");
    let mut inputs: Vec<_> = std::fs::read_dir(&dir)
        .expect("tests/node-cases")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(".in.jsonl"))
        .collect();
    inputs.sort();
    assert!(inputs.len() >= 9, "case files missing: {inputs:?}");
    let mut failures = Vec::new();
    for input in &inputs {
        let name = input
            .to_string_lossy()
            .trim_end_matches(".in.jsonl")
            .to_owned();
        let want = std::fs::read_to_string(format!("{name}.out.jsonl")).expect("out file");
        let mut p = Proc::spawn(HB_NODE, &[]);
        for line in std::fs::read_to_string(input).expect("in file").lines() {
            p.send(line);
        }
        p.close_stdin();
        let mut got = String::new();
        while let Some(line) = p.next_line() {
            got.push_str(&line);
            got.push('\n');
        }
        let status = p.wait_exit(WATCHDOG);
        if got != want || !status.success() {
            failures.push(format!("{name} ({status}):\nwant\n{want}got\n{got}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn batch_echo_completes_through_loopback_for_1_3_and_1000_values() {
    let _x = exclusive();
    let _w = Watchdog::new(
        "batch_echo_completes_through_loopback_for_1_3_and_1000_values",
        ms(60_000),
    );
    let mut p = node(&[]);
    for (batch_id, n) in (10u64..).zip([1usize, 3, 1000]) {
        let values: Vec<Value> = (0..n).map(|i| json!(format!("v{n}-{i}"))).collect();
        p.send(&msg(
            "c1",
            "n1",
            json!({"type": "batch_echo", "msg_id": batch_id, "values": values}),
        ));
        // Queued behind the batch's RPCs, before any of their replies: served while it waits.
        p.send(&msg(
            "c2",
            "n1",
            json!({"type": "echo", "msg_id": 1, "echo": "meanwhile"}),
        ));
        let replies = route(&mut p, 3, |routed, p| {
            if routed == 1 {
                p.send(&msg(
                    "c3",
                    "n1",
                    json!({"type": "ka_register", "msg_id": 2, "client_id": "k",
                           "timeout_ms": 1000, "ping_interval_ms": 100}),
                ));
            }
        });
        let find = |t: &str| {
            replies
                .iter()
                .position(|r| r["body"]["type"] == t)
                .unwrap_or_else(|| panic!("no {t} in {replies:?}"))
        };
        let batch = &replies[find("batch_echo_ok")];
        assert_eq!(batch["dest"], "c1");
        assert_eq!(batch["body"]["in_reply_to"], batch_id);
        assert_eq!(batch["body"]["results"], Value::Array(values));
        assert_eq!(replies[find("echo_ok")]["body"]["echo"], "meanwhile");
        assert!(
            find("echo_ok") < find("batch_echo_ok"),
            "echo waited for the batch"
        );
        if n > 1 {
            assert!(find("ka_register_ok") < find("batch_echo_ok"));
        }
    }
    p.close_stdin();
    assert!(p.wait_exit(WATCHDOG).success());
}

#[test]
fn two_batches_interleave_and_each_gets_its_own_results() {
    let _w = Watchdog::new(
        "two_batches_interleave_and_each_gets_its_own_results",
        ms(30_000),
    );
    let mut p = node(&[]);
    p.send(&msg(
        "c1",
        "n1",
        json!({"type": "batch_echo", "msg_id": 5, "values": [1, 2, 3]}),
    ));
    p.send(&msg(
        "c2",
        "n1",
        json!({"type": "batch_echo", "msg_id": 6, "values": ["x", "y"]}),
    ));
    let replies = route(&mut p, 2, |_, _| {});
    for r in &replies {
        match r["dest"].as_str() {
            Some("c1") => assert_eq!(r["body"]["results"], json!([1, 2, 3])),
            Some("c2") => assert_eq!(r["body"]["results"], json!(["x", "y"])),
            other => panic!("unexpected dest {other:?}: {r}"),
        }
    }
}

#[test]
fn every_error_code_end_to_end() {
    let _w = Watchdog::new("every_error_code_end_to_end", ms(30_000));
    // 11: a request before init, answered from the addressee.
    let mut p = Proc::spawn(HB_NODE, &[]);
    p.send(&msg("c1", "n5", json!({"type": "ka_status", "msg_id": 1})));
    let early = p.json();
    assert_error(&early, 11, 1);
    assert_eq!(early["src"], "n5");
    drop(p);

    let mut p = node(&[]);
    assert_error(&req(&mut p, json!({"type": "nope", "msg_id": 2})), 10, 2);
    assert_error(
        &req(
            &mut p,
            json!({"type": "ka_register", "msg_id": 3, "client_id": "a"}),
        ),
        12,
        3,
    );
    assert_error(
        &req(
            &mut p,
            json!({"type": "ka_heartbeat", "msg_id": 4, "client_id": "ghost"}),
        ),
        20,
        4,
    );
    assert_error(
        &req(
            &mut p,
            json!({"type": "tcp_echo_send", "msg_id": 5, "data": "x"}),
        ),
        22,
        5,
    );
    // 11 with the OS error: the port is held by another server.
    let holder = EchoServer::start(std::net::Ipv4Addr::LOCALHOST, 0).expect("holder");
    let busy = req(
        &mut p,
        json!({"type": "tcp_echo_start", "msg_id": 6, "port": holder.port()}),
    );
    assert_error(&busy, 11, 6);
    assert!(
        busy["body"]["text"]
            .as_str()
            .unwrap_or("")
            .contains("in use"),
        "{busy}"
    );
    // An error reply to a batch RPC reaches the batch's requester with its code and text.
    p.send(&msg(
        "c1",
        "n1",
        json!({"type": "batch_echo", "msg_id": 7, "values": ["a"]}),
    ));
    let rpc = p.json();
    assert_eq!(rpc["body"]["type"], "echo");
    p.send(&msg(
        "n1",
        "n1",
        json!({"type": "error", "in_reply_to": rpc["body"]["msg_id"], "code": 13, "text": "boom"}),
    ));
    let failed = p.json();
    assert_error(&failed, 13, 7);
    assert_eq!(failed["body"]["text"], "boom");
    p.close_stdin();
    assert!(p.wait_exit(WATCHDOG).success());
}

#[test]
fn unanswered_batch_fails_with_error_0_after_rpc_timeout() {
    let _w = Watchdog::new(
        "unanswered_batch_fails_with_error_0_after_rpc_timeout",
        ms(30_000),
    );
    let mut p = node(&["--rpc-timeout", "150ms"]);
    p.send(&msg(
        "c1",
        "n1",
        json!({"type": "batch_echo", "msg_id": 2, "values": ["x", "y"]}),
    ));
    assert_eq!(p.json()["body"]["type"], "echo");
    assert_eq!(p.json()["body"]["type"], "echo");
    // Stdin stays open and silent: only the node's own deadline can produce this.
    let timeout = p.json();
    assert_error(&timeout, 0, 2);
    assert_eq!(timeout["dest"], "c1");
    // The node keeps serving afterwards.
    let echo = req(&mut p, json!({"type": "echo", "msg_id": 3, "echo": 1}));
    assert_eq!(echo["body"]["type"], "echo_ok");
}

#[test]
fn tcp_echo_through_the_node_uses_a_real_server() {
    let _x = exclusive();
    let _w = Watchdog::new("tcp_echo_through_the_node_uses_a_real_server", ms(60_000));
    let mut p = node(&[]);
    let started = req(
        &mut p,
        json!({"type": "tcp_echo_start", "msg_id": 2, "port": 0}),
    );
    assert_eq!(started["body"]["status"], "listening");
    let port = started["body"]["port"].as_u64().expect("port") as u16;
    assert_ne!(port, 0);
    let again = req(
        &mut p,
        json!({"type": "tcp_echo_start", "msg_id": 3, "port": 1}),
    );
    // Another port while one listens is refused (error 22), naming both ports; the same
    // port (or 0) answers with the running server's port.
    assert_error(&again, 22, 3);
    assert_eq!(
        again["body"]["text"],
        format!("echo server already listening on port {port}; cannot also listen on 1")
    );
    let same = req(
        &mut p,
        json!({"type": "tcp_echo_start", "msg_id": 30, "port": port}),
    );
    assert_eq!(same["body"]["status"], "listening", "{same}");
    assert_eq!(same["body"]["port"], port, "{same}");

    let sent = req(
        &mut p,
        json!({"type": "tcp_echo_send", "msg_id": 4, "data": "hello wörld"}),
    );
    assert_eq!(sent["body"]["echoed"], "hello wörld");
    assert_eq!(sent["body"]["bytes"], 12);

    // An outside client reaches the same server.
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(WATCHDOG)).unwrap();
    s.write_all(b"abc").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut back = Vec::new();
    s.read_to_end(&mut back).unwrap();
    assert_eq!(back, b"abc");

    let stats = req(&mut p, json!({"type": "tcp_echo_stats", "msg_id": 5}));
    assert_eq!(stats["body"]["total_connections"], 2, "{stats}");
    assert_eq!(stats["body"]["total_bytes"], 15, "{stats}");

    let big = "x".repeat(300_000);
    let sent = req(
        &mut p,
        json!({"type": "tcp_echo_send", "msg_id": 6, "data": big}),
    );
    assert_eq!(sent["body"]["bytes"], 300_000);
    p.close_stdin();
    assert!(p.wait_exit(WATCHDOG).success());
}

#[test]
fn node_bad_usage_exits_2_with_one_line() {
    let _w = Watchdog::new("node_bad_usage_exits_2_with_one_line", ms(30_000));
    let mut p = Proc::spawn(HB_NODE, &["--rpc-timeout", "soon"]);
    let status = p.wait_exit(WATCHDOG);
    assert_eq!(status.code(), Some(2));
    assert!(p.next_line().is_none(), "nothing on stdout");
    let err = p.stderr();
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
}

fn echo_server() -> (Proc, u16) {
    let p = Proc::spawn(HB_ECHO, &["--port", "0"]);
    let port = listening_port(&p);
    assert_ne!(port, 0);
    (p, port)
}

fn roundtrip(port: u16, payload: &[u8]) -> Vec<u8> {
    let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream.set_read_timeout(Some(WATCHDOG)).unwrap();
    stream.set_write_timeout(Some(WATCHDOG)).unwrap();
    let mut writer = stream.try_clone().unwrap();
    // Write and read at once: a payload larger than the socket buffers would otherwise
    // deadlock with the server blocked on echoing to us.
    thread::scope(|s| {
        s.spawn(move || {
            writer.write_all(payload).unwrap();
            writer.shutdown(Shutdown::Write).unwrap();
        });
        let mut back = Vec::with_capacity(payload.len());
        (&stream).read_to_end(&mut back).unwrap();
        back
    })
}

#[test]
fn hb_echo_serves_concurrent_clients() {
    let _x = exclusive();
    let _w = Watchdog::new("hb_echo_serves_concurrent_clients", ms(60_000));
    let (_p, port) = echo_server();
    let handles: Vec<_> = (0..16)
        .map(|i| {
            thread::spawn(move || {
                let payload = format!("client {i} ").repeat(500 + i * 37).into_bytes();
                assert_eq!(roundtrip(port, &payload), payload);
            })
        })
        .collect();
    for h in handles {
        h.join().expect("client thread");
    }
}

#[test]
fn hb_echo_echoes_a_1_mb_payload() {
    let _x = exclusive();
    let _w = Watchdog::new("hb_echo_echoes_a_1_mb_payload", ms(60_000));
    let (_p, port) = echo_server();
    let payload: Vec<u8> = (0..1_048_576u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(roundtrip(port, &payload), payload);
}

#[test]
fn hb_echo_survives_a_client_vanishing_mid_stream() {
    let _x = exclusive();
    let _w = Watchdog::new("hb_echo_survives_a_client_vanishing_mid_stream", ms(60_000));
    let (_p, port) = echo_server();
    for _ in 0..3 {
        let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.set_write_timeout(Some(WATCHDOG)).unwrap();
        s.write_all(&vec![7u8; 200_000]).unwrap_or(());
        // Closing with unread echo data pending sends a reset to the server mid-echo.
        drop(s);
    }
    assert_eq!(roundtrip(port, b"still here"), b"still here");
}

#[test]
fn hb_echo_stops_cleanly_on_sigterm() {
    let _w = Watchdog::new("hb_echo_stops_cleanly_on_sigterm", ms(30_000));
    let (mut p, port) = echo_server();
    assert_eq!(roundtrip(port, b"ping"), b"ping");
    let pid = rustix::process::Pid::from_child(p.child());
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("kill");
    let status = p.wait_exit(WATCHDOG);
    assert_eq!(status.code(), Some(0), "stderr: {}", p.stderr());
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
}

#[test]
fn hb_echo_usage_and_port_in_use_exit_codes() {
    let _w = Watchdog::new("hb_echo_usage_and_port_in_use_exit_codes", ms(30_000));
    let mut usage = Proc::spawn(HB_ECHO, &[]);
    assert_eq!(usage.wait_exit(WATCHDOG).code(), Some(2));
    // The message names the missing argument (clap's first line alone did not).
    assert!(
        usage.stderr().contains("--port <PORT>"),
        "{}",
        usage.stderr()
    );

    let by_name = Proc::spawn(HB_ECHO, &["--port", "0", "--host", "localhost"]);
    let named_port = listening_port(&by_name);
    assert_eq!(roundtrip(named_port, b"named"), b"named");
    drop(by_name);

    let (_p, port) = echo_server();
    let port = port.to_string();
    let mut busy = Proc::spawn(HB_ECHO, &["--port", &port]);
    assert_eq!(busy.wait_exit(WATCHDOG).code(), Some(1));
    assert!(busy.stderr().contains("in use"), "{}", busy.stderr());
}
