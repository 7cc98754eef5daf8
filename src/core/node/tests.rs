//! Unit tests of the pure node: simulated clock, fake echo backend, no I/O.

use super::*;

/// Echo backend that echoes in memory; `busy` ports fail like EADDRINUSE.
#[derive(Default)]
struct FakeEcho {
    busy: Vec<u16>,
    stats: EchoStats,
    starts: u32,
}

impl EchoBackend for FakeEcho {
    fn start(&mut self, port: u16) -> Result<u16, String> {
        if self.busy.contains(&port) {
            return Err("Address already in use (os error 98)".into());
        }
        self.starts += 1;
        Ok(if port == 0 { 40_000 } else { port })
    }

    fn roundtrip(&mut self, _port: u16, data: &[u8]) -> Result<Vec<u8>, String> {
        self.stats.total_connections += 1;
        self.stats.total_bytes += data.len() as u64;
        Ok(data.to_vec())
    }

    fn stats(&self) -> EchoStats {
        self.stats
    }
}

const INIT: &str = r#"{"src":"c0","dest":"n1","body":{"type":"init","msg_id":1,"node_id":"n1","node_ids":["n1"]}}"#;

fn msg(line: &str) -> Message {
    Message::from_line(line.as_bytes()).expect("test line parses")
}

fn lines(outputs: &[Output]) -> Vec<String> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Send(m) => Some(m.to_line()),
            Output::Note(_) => None,
        })
        .collect()
}

fn sent(outputs: Vec<Output>) -> Vec<Message> {
    outputs
        .into_iter()
        .filter_map(|o| match o {
            Output::Send(m) => Some(m),
            Output::Note(_) => None,
        })
        .collect()
}

fn node() -> Node<FakeEcho> {
    let mut n = Node::new(FakeEcho::default(), 10_000);
    let out = n.handle(msg(INIT), 0);
    assert_eq!(
        lines(&out),
        [
            r#"{"src": "n1", "dest": "c0", "body": {"type": "init_ok", "in_reply_to": 1, "msg_id": 0}}"#
        ]
    );
    n
}

fn req(n: &mut Node<FakeEcho>, body: &str, now: u64) -> String {
    let line = format!(r#"{{"src":"c1","dest":"n1","body":{body}}}"#);
    let out = lines(&n.handle(msg(&line), now));
    assert_eq!(out.len(), 1, "one reply to {body}: {out:?}");
    out.into_iter().next().unwrap_or_default()
}

fn reply_body(line: &str) -> String {
    let start = line.find("\"body\": ").expect("body") + "\"body\": ".len();
    line[start..line.len() - 1].to_owned()
}

#[test]
fn echo_keeps_request_layout() {
    let mut n = node();
    assert_eq!(
        req(&mut n, r#"{"type":"echo","msg_id":2,"echo":"async"}"#, 1),
        r#"{"src": "n1", "dest": "c1", "body": {"type": "echo_ok", "echo": "async", "in_reply_to": 2, "msg_id": 1}}"#
    );
}

#[test]
fn request_before_init_is_error_11_from_the_addressee() {
    let mut n = Node::new(FakeEcho::default(), 10_000);
    let out = lines(&n.handle(
        msg(r#"{"src":"c1","dest":"n7","body":{"type":"echo","msg_id":5,"echo":1}}"#),
        0,
    ));
    assert_eq!(
        out,
        [
            r#"{"src": "n7", "dest": "c1", "body": {"type": "error", "in_reply_to": 5, "code": 11, "text": "node not initialized: send init first", "msg_id": 0}}"#
        ]
    );
}

#[test]
fn unknown_type_is_error_10_and_without_msg_id_only_a_note() {
    let mut n = node();
    let line = req(&mut n, r#"{"type":"frobnicate","msg_id":9}"#, 0);
    assert!(line.contains(r#""code": 10"#), "{line}");
    let out = n.handle(
        msg(r#"{"src":"c1","dest":"n1","body":{"type":"frobnicate"}}"#),
        0,
    );
    assert!(matches!(out.as_slice(), [Output::Note(_)]), "{out:?}");
}

#[test]
fn keepalive_seed_scenario() {
    let mut n = node();
    let reg = |id: &str, m: u64| {
        format!(
            r#"{{"type":"ka_register","msg_id":{m},"client_id":"{id}","timeout_ms":30000,"ping_interval_ms":10000}}"#
        )
    };
    req(&mut n, &reg("c1", 2), 0);
    req(&mut n, r#"{"type":"ka_status","msg_id":3}"#, 0);
    req(&mut n, &reg("c2", 4), 40_000);
    assert_eq!(
        reply_body(&req(
            &mut n,
            r#"{"type":"ka_check","msg_id":5,"current_time_ms":45000}"#,
            40_000
        )),
        r#"{"type": "ka_check_ok", "in_reply_to": 5, "expired": ["c1"], "active": ["c2"], "msg_id": 4}"#
    );
    assert_eq!(
        reply_body(&req(&mut n, r#"{"type":"ka_status","msg_id":6}"#, 40_001)),
        r#"{"type": "ka_status_ok", "in_reply_to": 6, "connections": [{"client_id": "c2", "last_seen_ms_ago": 5000, "status": "active"}], "msg_id": 5}"#
    );
}

#[test]
fn keepalive_status_shows_expired_until_checked() {
    let mut n = node();
    req(
        &mut n,
        r#"{"type":"ka_register","msg_id":2,"client_id":"a","timeout_ms":100,"ping_interval_ms":10}"#,
        0,
    );
    let status = req(&mut n, r#"{"type":"ka_status","msg_id":3}"#, 150);
    assert!(
        status.contains(r#""last_seen_ms_ago": 150, "status": "expired""#),
        "{status}"
    );
    let hb = req(
        &mut n,
        r#"{"type":"ka_heartbeat","msg_id":4,"client_id":"a"}"#,
        150,
    );
    assert!(hb.contains(r#""last_seen_ms_ago": 0"#), "{hb}");
    let check = req(&mut n, r#"{"type":"ka_check","msg_id":5}"#, 200);
    assert!(
        check.contains(r#""expired": [], "active": ["a"]"#),
        "{check}"
    );
}

#[test]
fn keepalive_errors() {
    let mut n = node();
    let cases = [
        (
            r#"{"type":"ka_heartbeat","msg_id":2,"client_id":"ghost"}"#,
            20,
        ),
        (r#"{"type":"ka_heartbeat","msg_id":2}"#, 12),
        (r#"{"type":"ka_heartbeat","msg_id":2,"client_id":7}"#, 12),
        (
            r#"{"type":"ka_register","msg_id":2,"client_id":"a","timeout_ms":0,"ping_interval_ms":1}"#,
            12,
        ),
        (
            r#"{"type":"ka_register","msg_id":2,"client_id":"a","timeout_ms":5,"ping_interval_ms":-1}"#,
            12,
        ),
        (
            r#"{"type":"ka_register","msg_id":2,"client_id":"a","timeout_ms":5.5,"ping_interval_ms":1}"#,
            12,
        ),
        (
            r#"{"type":"ka_register","msg_id":2,"client_id":"a","timeout_ms":5}"#,
            12,
        ),
        (
            r#"{"type":"ka_check","msg_id":2,"current_time_ms":"soon"}"#,
            12,
        ),
    ];
    for (body, code) in cases {
        let line = req(&mut n, body, 0);
        assert!(
            line.contains(&format!(r#""code": {code}, "#)),
            "{body} -> {line}"
        );
    }
}

#[test]
fn tcp_echo_flow_and_errors() {
    let mut n = node();
    n.echo.busy.push(8081);
    let send = r#"{"type":"tcp_echo_send","msg_id":2,"data":"hi"}"#;
    assert!(req(&mut n, send, 0).contains(r#""code": 22"#));
    assert!(reply_body(&req(&mut n, r#"{"type":"tcp_echo_stats","msg_id":3}"#, 0))
        .starts_with(r#"{"type": "tcp_echo_stats_ok", "in_reply_to": 3, "total_connections": 0, "total_bytes": 0"#));
    let busy = req(
        &mut n,
        r#"{"type":"tcp_echo_start","msg_id":4,"port":8081}"#,
        0,
    );
    assert!(
        busy.contains(
            r#""code": 11, "text": "cannot listen on port 8081: Address already in use (os error 98)""#
        ),
        "{busy}"
    );
    assert!(req(
        &mut n,
        r#"{"type":"tcp_echo_start","msg_id":5,"port":"x"}"#,
        0
    )
    .contains(r#""code": 12"#));
    let started = req(
        &mut n,
        r#"{"type":"tcp_echo_start","msg_id":6,"port":0}"#,
        0,
    );
    assert!(
        started.contains(r#""status": "listening", "port": 40000"#),
        "{started}"
    );
    let again = req(
        &mut n,
        r#"{"type":"tcp_echo_start","msg_id":7,"port":9999}"#,
        0,
    );
    assert!(
        again.contains(
            r#""code": 22, "text": "echo server already listening on port 40000; cannot also listen on 9999""#
        ),
        "{again}"
    );
    for (id, port) in [(10, 0), (11, 40000)] {
        let same = req(
            &mut n,
            &format!(r#"{{"type":"tcp_echo_start","msg_id":{id},"port":{port}}}"#),
            0,
        );
        assert!(
            same.contains(r#""status": "listening", "port": 40000"#),
            "port {port}: {same}"
        );
    }
    assert_eq!(n.echo.starts, 1);
    let echoed = req(
        &mut n,
        r#"{"type":"tcp_echo_send","msg_id":8,"data":"héllo"}"#,
        0,
    );
    assert!(
        echoed.contains(r#""echoed": "h\u00e9llo", "bytes": 6"#),
        "{echoed}"
    );
    let stats = req(&mut n, r#"{"type":"tcp_echo_stats","msg_id":9}"#, 0);
    assert!(
        stats.contains(r#""total_connections": 1, "total_bytes": 6"#),
        "{stats}"
    );
}

/// Delivers every message the node addresses to itself back to it, as Maelstrom would,
/// and returns the messages addressed to anyone else.
fn loopback(n: &mut Node<FakeEcho>, first: Vec<Output>, now: u64) -> Vec<Message> {
    let mut queue: std::collections::VecDeque<Message> = sent(first).into();
    let mut others = Vec::new();
    while let Some(m) = queue.pop_front() {
        if m.dest == "n1" {
            queue.extend(sent(n.handle(m, now)));
        } else {
            others.push(m);
        }
    }
    others
}

#[test]
fn batch_echo_sends_self_rpcs_and_answers_in_order() {
    let mut n = node();
    let out = n.handle(
        msg(r#"{"src":"c1","dest":"n1","body":{"type":"batch_echo","msg_id":2,"values":["a","b",{"k":1}]}}"#),
        0,
    );
    assert_eq!(
        lines(&out)[0],
        r#"{"src": "n1", "dest": "n1", "body": {"type": "echo", "echo": "a", "msg_id": 1}}"#
    );
    assert_eq!(n.pending_rpcs(), 3);
    let others = loopback(&mut n, out, 5);
    assert_eq!(others.len(), 1);
    assert_eq!(
        reply_body(&others[0].to_line()),
        r#"{"type": "batch_echo_ok", "in_reply_to": 2, "results": ["a", "b", {"k": 1}], "msg_id": 7}"#
    );
    assert_eq!(n.pending_rpcs(), 0);
    assert_eq!(n.poll_timeout(), None);
}

#[test]
fn batch_echo_replies_out_of_order_keep_values_order() {
    let mut n = node();
    let out = sent(n.handle(
        msg(r#"{"src":"c1","dest":"n1","body":{"type":"batch_echo","msg_id":2,"values":[1,2,3]}}"#),
        0,
    ));
    let mut answers = Vec::new();
    for m in out.into_iter().rev() {
        answers.extend(sent(n.handle(m, 1)));
    }
    let mut others = Vec::new();
    for m in answers {
        others.extend(sent(n.handle(m, 2)));
    }
    assert_eq!(others.len(), 1);
    assert!(others[0].to_line().contains(r#""results": [1, 2, 3]"#));
}

#[test]
fn empty_batch_answers_at_once() {
    let mut n = node();
    assert_eq!(
        reply_body(&req(
            &mut n,
            r#"{"type":"batch_echo","msg_id":2,"values":[]}"#,
            0
        )),
        r#"{"type": "batch_echo_ok", "in_reply_to": 2, "results": [], "msg_id": 1}"#
    );
    assert!(req(
        &mut n,
        r#"{"type":"batch_echo","msg_id":3,"values":"abc"}"#,
        0
    )
    .contains(r#""code": 12"#));
}

#[test]
fn batch_times_out_with_error_0_and_cancels_its_rpcs() {
    let mut n = node();
    let out = n.handle(
        msg(r#"{"src":"c1","dest":"n1","body":{"type":"batch_echo","msg_id":2,"values":["a","b"]}}"#),
        100,
    );
    assert_eq!(sent(out).len(), 2);
    assert_eq!(n.poll_timeout(), Some(10_100));
    assert!(n.handle_timeout(10_099).is_empty());
    let out = lines(&n.handle_timeout(10_100));
    assert_eq!(
        out,
        [
            r#"{"src": "n1", "dest": "c1", "body": {"type": "error", "in_reply_to": 2, "code": 0, "text": "no reply to msg_id 1 within 10000 ms", "msg_id": 3}}"#
        ]
    );
    assert_eq!(n.pending_rpcs(), 0);
    // A late reply finds no callback: a note, nothing on stdout.
    let late = n.handle(
        msg(r#"{"src":"n1","dest":"n1","body":{"type":"echo_ok","echo":"b","in_reply_to":2,"msg_id":9}}"#),
        10_200,
    );
    assert!(matches!(late.as_slice(), [Output::Note(_)]), "{late:?}");
}

#[test]
fn error_reply_fails_batch_with_its_code_and_text() {
    let mut n = node();
    let _ = n.handle(
        msg(r#"{"src":"c1","dest":"n1","body":{"type":"batch_echo","msg_id":2,"values":["a","b"]}}"#),
        0,
    );
    let out = lines(&n.handle(
        msg(r#"{"src":"n1","dest":"n1","body":{"type":"error","in_reply_to":1,"code":14,"text":"nope"}}"#),
        1,
    ));
    assert_eq!(
        out,
        [
            r#"{"src": "n1", "dest": "c1", "body": {"type": "error", "in_reply_to": 2, "code": 14, "text": "nope", "msg_id": 3}}"#
        ]
    );
    assert_eq!(n.pending_rpcs(), 0);
}

#[test]
fn in_reply_to_zero_is_a_reply_whatever_its_type() {
    let mut n = node();
    let out = n.handle(
        msg(r#"{"src":"c1","dest":"n1","body":{"type":"echo","msg_id":4,"echo":1,"in_reply_to":0}}"#),
        0,
    );
    assert!(matches!(out.as_slice(), [Output::Note(_)]), "{out:?}");
}

#[test]
fn other_requests_are_served_while_a_batch_waits() {
    let mut n = node();
    let rpcs = sent(n.handle(
        msg(r#"{"src":"c1","dest":"n1","body":{"type":"batch_echo","msg_id":2,"values":["x"]}}"#),
        0,
    ));
    let echo = req(&mut n, r#"{"type":"echo","msg_id":3,"echo":"y"}"#, 1);
    assert!(echo.contains(r#""echo": "y""#));
    let others = loopback(&mut n, rpcs.into_iter().map(Output::Send).collect(), 2);
    assert!(others[0].to_line().contains(r#""results": ["x"]"#));
}

#[test]
fn async_rpc_runs_a_custom_callback_once() {
    let mut n = node();
    let id = n.async_rpc(
        "n2",
        vec![("type".into(), Json::str("read"))],
        Box::new(|node: &mut Node<FakeEcho>, result| {
            let body = result.expect("reply");
            let value = body.get("value").cloned().unwrap_or(Json::Null);
            node.keepalive.register(&value.to_python(), 1, 1, 0);
        }),
    );
    assert_eq!(id, 1);
    let reply = format!(
        r#"{{"src":"n2","dest":"n1","body":{{"type":"read_ok","value":7,"in_reply_to":{id}}}}}"#
    );
    let _ = n.handle(msg(&reply), 1);
    assert_eq!(n.keepalive.len(), 1);
    let again = n.handle(msg(&reply), 2);
    assert!(matches!(again.as_slice(), [Output::Note(_)]));
}

#[test]
fn bad_lines_are_rejected_with_reasons() {
    assert!(matches!(
        Message::from_line(b"not json"),
        Err(MessageError::NotJson(_))
    ));
    assert_eq!(Message::from_line(b"[1]"), Err(MessageError::NotAnObject));
    assert_eq!(
        Message::from_line(br#"{"src":"a","dest":"b"}"#),
        Err(MessageError::MissingField("body"))
    );
    // A body without a type is a message; the node answers it with malformed-request.
    let mut n = node();
    for body in [r#"{"msg_id":2}"#, r#"{"msg_id":3,"type":7}"#] {
        let line = format!(r#"{{"src":"c1","dest":"n1","body":{body}}}"#);
        let out = lines(&n.handle(msg(&line), 0));
        assert_eq!(out.len(), 1, "{body}: {out:?}");
        assert!(
            out[0].contains(r#""type": "error""#)
                && out[0].contains(
                    r#""code": 12, "text": "malformed request: body.type must be a string""#
                ),
            "{body}: {}",
            out[0]
        );
    }
    assert!(Message::from_line(b"{\"src\":\"\xff\"}").is_err());
}

#[test]
fn msg_ids_beyond_64_bits_come_back_exactly() {
    let mut n = node();
    for id in ["100000000000000000000000", "-5", "18446744073709551616"] {
        let line = format!(
            r#"{{"src":"c1","dest":"n1","body":{{"type":"echo","echo":1,"msg_id":{id}}}}}"#
        );
        let out = lines(&n.handle(msg(&line), 0));
        assert!(
            out[0].contains(&format!(r#""in_reply_to": {id}, "#)),
            "{id}: {}",
            out[0]
        );
    }
}
