//! One room across several hb-server processes through a real `redis-server`
//! (`--broker redis://…`, CONTRACT section 8, docs/CLUSTER.md), on both engines: messages and
//! names across nodes, a node killed with members, Redis killed and restarted mid-run,
//! resume on another node, a clean shutdown. Skipped when `redis-server` is missing (a
//! failure under CI).

use std::time::Duration;

use crate::support::{
    engine_tests, free_port, ms, Engine, Peer, Proc, Redis, Server, Watchdog, PROMPT,
};

const HELLO_CHAT: &str = "HELLO hb/1 idle=30000 interval=10000 count=3 mode=chat";

/// A chat node on `redis` with `--node-timeout 1s`.
fn node(engine: Engine, redis: &Redis) -> Server {
    let url = redis.url();
    let mut srv = Server::start(
        engine,
        &["--mode", "chat", "--broker", &url, "--node-timeout", "1s"],
    );
    srv.log().wait_for("broker connected", PROMPT);
    srv
}

/// A member of `srv` joined as `name` (plain `JOIN`).
fn member(srv: &Server, name: &str) -> Peer {
    let mut p = Peer::connect(srv.port);
    p.expect(HELLO_CHAT, PROMPT);
    p.send(format!("JOIN {name}\n").as_bytes());
    p
}

/// [`member`], once the join took effect (its claim answered): `WHO` lists it.
fn joined(srv: &Server, name: &str) -> Peer {
    let mut p = member(srv, name);
    p.send(b"WHO\n");
    loop {
        let (_, l) = p.line(PROMPT);
        if l.starts_with("MEMBERS ") {
            assert!(l.split(' ').any(|n| n == name), "{l}");
            return p;
        }
    }
}

/// Reads lines until one equals `want`, returning those before it (skipping presence lines
/// that may interleave).
fn until(p: &mut Peer, want: &str, within: Duration) -> Vec<String> {
    let deadline = std::time::Instant::now() + within;
    let mut before = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let (_, line) = p.line(left.max(ms(1)));
        if line == want {
            return before;
        }
        before.push(line);
    }
}

engine_tests!(messages_names_and_who_cross_nodes_once_in_order);
fn messages_names_and_who_cross_nodes_once_in_order(engine: Engine) {
    let _w = Watchdog::new("cluster-messages", ms(60_000));
    let Some(redis) = Redis::start("cluster::messages_names_and_who_cross_nodes_once_in_order")
    else {
        return;
    };
    let a = node(engine, &redis);
    let b = node(engine, &redis);
    let mut ann = joined(&a, "ann");
    let mut bob = member(&b, "bob");
    until(&mut ann, "JOINED bob", PROMPT);
    // A name held on the other node is refused there.
    let mut imp = Peer::connect(b.port);
    imp.expect(HELLO_CHAT, PROMPT);
    imp.send(b"JOIN ann\n");
    imp.expect("ERR name-taken ann is taken", PROMPT);
    imp.send(b"WHO\n");
    imp.expect("MEMBERS ann bob", PROMPT);
    // 200 messages from each side, interleaved: each side gets the other's, once, in order,
    // and never its own.
    for k in 0..200 {
        ann.send(format!("MSG a{k}\n").as_bytes());
        bob.send(format!("MSG b{k}\n").as_bytes());
    }
    for k in 0..200 {
        ann.expect(&format!("MSG bob b{k}"), PROMPT);
        bob.expect(&format!("MSG ann a{k}"), PROMPT);
    }
    ann.send(b"WHO\n");
    ann.expect("MEMBERS ann bob", PROMPT);
    bob.expect_silence(ms(200));
    // A node started after all that knows the room's past: HISTORY there gives the newest
    // messages at the room's positions.
    let c = node(engine, &redis);
    let mut dee = joined(&c, "dee");
    bob.expect("JOINED dee", PROMPT);
    let deadline = std::time::Instant::now() + PROMPT;
    let h = loop {
        dee.send(b"HISTORY 2\n");
        let mut h = Vec::new();
        loop {
            let (_, l) = dee.line(PROMPT);
            let end = l.starts_with("SYNCED ");
            h.push(l);
            if end {
                break;
            }
        }
        if h.len() == 3 || std::time::Instant::now() > deadline {
            break h;
        }
        std::thread::sleep(ms(20));
    };
    assert_eq!(h.len(), 3, "{h:?}");
    let epoch = h[2]
        .split(' ')
        .nth(1)
        .unwrap()
        .split(':')
        .next()
        .unwrap()
        .to_owned();
    assert_eq!(h[2], format!("SYNCED {epoch}:400 2"));
    assert!(h[0].starts_with(&format!("PUB {epoch}:399 ")), "{h:?}");
    assert!(h[1].starts_with(&format!("PUB {epoch}:400 ")), "{h:?}");
    // A leave is heard on the other node, and the name is free there afterwards.
    drop(ann);
    bob.expect("LEFT ann closed", PROMPT);
    imp.send(b"JOIN ann\n");
    bob.expect("JOINED ann", PROMPT);
}

engine_tests!(a_killed_node_s_members_leave_the_others_within_node_timeout);
fn a_killed_node_s_members_leave_the_others_within_node_timeout(engine: Engine) {
    let _w = Watchdog::new("cluster-node-lost", ms(60_000));
    let Some(redis) =
        Redis::start("cluster::a_killed_node_s_members_leave_the_others_within_node_timeout")
    else {
        return;
    };
    let mut a = node(engine, &redis);
    let b = node(engine, &redis);
    let mut bob = joined(&b, "bob");
    let _ann = member(&a, "ann");
    until(&mut bob, "JOINED ann", PROMPT);
    a.proc.signal("KILL");
    let t = std::time::Instant::now();
    bob.expect("LEFT ann node-lost", ms(5_000));
    // --node-timeout 1s after its last refresh (every third of it), plus a poll period.
    assert!(t.elapsed() < ms(1_800), "node-lost after {:?}", t.elapsed());
    let _ = a.proc.wait(PROMPT);
    // Its name is free again, and a restarted node is a new node.
    let c = node(engine, &redis);
    let _ann2 = member(&c, "ann");
    bob.expect("JOINED ann", PROMPT);
}

engine_tests!(redis_killed_and_restarted_mid_conversation);
fn redis_killed_and_restarted_mid_conversation(engine: Engine) {
    let _w = Watchdog::new("cluster-redis-restart", ms(60_000));
    let Some(mut redis) = Redis::start("cluster::redis_killed_and_restarted_mid_conversation")
    else {
        return;
    };
    let mut a = node(engine, &redis);
    let mut b = node(engine, &redis);
    let mut ann = joined(&a, "ann");
    let mut bob = joined(&b, "bob");
    let mut cy = member(&b, "cy");
    until(&mut ann, "JOINED cy", PROMPT);
    until(&mut bob, "JOINED cy", PROMPT);
    redis.kill();
    b.log().wait_for("broker unreachable", PROMPT);
    // Local service goes on: bob and cy, on the same node, still talk.
    bob.send(b"MSG while down\n");
    cy.expect("MSG bob while down", PROMPT);
    redis.restart().expect("redis-server again");
    b.log().wait_for("broker connected", ms(10_000));
    a.log().wait_for("broker connected", ms(10_000));
    // Across nodes again.
    let deadline = std::time::Instant::now() + ms(10_000);
    loop {
        ann.send(b"MSG ping\n");
        match bob.next(ms(300)) {
            crate::support::Next::Line(_, l) if l == "MSG ann ping" => break,
            _ => assert!(
                std::time::Instant::now() < deadline,
                "messages never crossed again"
            ),
        }
    }
    // The outage was logged once, not per message.
    let text = b.log().text();
    assert_eq!(text.matches("broker unreachable").count(), 1, "{text}");
}

engine_tests!(a_member_resumes_on_another_node);
fn a_member_resumes_on_another_node(engine: Engine) {
    let _w = Watchdog::new("cluster-resume", ms(60_000));
    let Some(redis) = Redis::start("cluster::a_member_resumes_on_another_node") else {
        return;
    };
    let a = node(engine, &redis);
    let b = node(engine, &redis);
    let mut ann = Peer::connect(a.port);
    ann.expect(HELLO_CHAT, PROMPT);
    ann.send(b"JOIN ann SINCE -\n");
    let (_, welcome) = ann.line(PROMPT);
    let pos = welcome.split(' ').nth(2).unwrap().to_owned();
    let mut bob = joined(&b, "bob");
    bob.send(b"MSG one\n");
    let one = loop {
        let (_, l) = ann.line(PROMPT);
        if l.starts_with("PUB ") {
            break l;
        }
    };
    assert!(one.ends_with(" bob one"), "{one}");
    let seen = one.split(' ').nth(1).unwrap().to_owned();
    drop(ann);
    bob.expect("LEFT ann closed", PROMPT);
    bob.send(b"MSG two\n");
    bob.send(b"MSG three\n");
    // Back on the other node, from the last position seen: exactly what was missed.
    let mut ann = Peer::connect(b.port);
    ann.expect(HELLO_CHAT, PROMPT);
    ann.send(format!("JOIN ann SINCE {seen}\n").as_bytes());
    let (_, w) = ann.line(PROMPT);
    assert!(w.starts_with("WELCOME ann "), "{w}");
    // The replay, then SYNCED, then live lines: "three" may still be on its way through
    // Redis when ann joins, and then comes live after SYNCED; either way once, in order.
    let mut pubs = Vec::new();
    let mut synced = 0;
    while pubs.len() < 2 {
        let (_, l) = ann.line(PROMPT);
        if l.starts_with("SYNCED ") {
            synced += 1;
        } else {
            assert!(l.starts_with("PUB "), "{l}");
            pubs.push(l.split(' ').skip(2).collect::<Vec<_>>().join(" "));
        }
    }
    assert_eq!(pubs, ["bob two", "bob three"]);
    if synced == 0 {
        let (_, l) = ann.line(PROMPT);
        assert!(l.starts_with("SYNCED "), "{l}");
    }
    ann.expect_silence(ms(200));
    assert_ne!(pos, "", "the first WELCOME carried a position");
}

engine_tests!(a_node_shutting_down_says_goodbye_for_its_members);
fn a_node_shutting_down_says_goodbye_for_its_members(engine: Engine) {
    let _w = Watchdog::new("cluster-shutdown", ms(60_000));
    let Some(redis) = Redis::start("cluster::a_node_shutting_down_says_goodbye_for_its_members")
    else {
        return;
    };
    let mut a = node(engine, &redis);
    let b = node(engine, &redis);
    let mut ann = joined(&a, "ann");
    let mut bob = member(&b, "bob");
    until(&mut ann, "JOINED bob", PROMPT);
    bob.send(b"WHO\n");
    bob.expect("MEMBERS ann bob", PROMPT);
    let t = std::time::Instant::now();
    a.proc.signal("TERM");
    until(&mut ann, "END server-shutdown", PROMPT);
    // At once, not after --node-timeout.
    bob.expect("LEFT ann server-shutdown", ms(800));
    assert_eq!(a.proc.wait(PROMPT).code(), Some(0));
    // The one-second shutdown rule holds with the broker's goodbyes.
    assert!(t.elapsed() < ms(1_000), "shutdown took {:?}", t.elapsed());
}

engine_tests!(redis_down_at_start_serves_locally_then_joins_the_room);
fn redis_down_at_start_serves_locally_then_joins_the_room(engine: Engine) {
    let _w = Watchdog::new("cluster-redis-late", ms(60_000));
    let Some(mut redis) =
        Redis::start("cluster::redis_down_at_start_serves_locally_then_joins_the_room")
    else {
        return;
    };
    let a = node(engine, &redis);
    redis.kill();
    let url = redis.url();
    // Starts and serves although Redis is away, and says so once.
    let mut b = Server::start(
        engine,
        &["--mode", "chat", "--broker", &url, "--node-timeout", "1s"],
    );
    b.log().wait_for("broker unreachable", PROMPT);
    let mut bob = joined(&b, "bob");
    let mut cy = joined(&b, "cy");
    until(&mut bob, "JOINED cy", PROMPT);
    cy.send(b"MSG local\n");
    bob.expect("MSG cy local", PROMPT);
    // Redis appears: both nodes join it, and the room spans them.
    redis.restart().expect("redis-server again");
    b.log().wait_for("broker connected", ms(10_000));
    let mut ann = joined(&a, "ann");
    cy.send(b"WHO\n");
    let deadline = std::time::Instant::now() + ms(10_000);
    loop {
        let (_, l) = cy.line(PROMPT);
        if l == "MEMBERS ann bob cy" {
            break;
        }
        if l.starts_with("MEMBERS ") {
            assert!(std::time::Instant::now() < deadline, "{l}");
            std::thread::sleep(ms(50));
            cy.send(b"WHO\n");
        }
    }
    ann.send(b"MSG hello\n");
    until(&mut bob, "MSG ann hello", PROMPT);
    let text = b.log().text();
    assert_eq!(text.matches("broker unreachable").count(), 1, "{text}");
}

engine_tests!(a_chat_client_fails_over_to_another_node_behind_a_balancer);
/// The failover story end to end: `hb-client --chat` reaches node A through a balancer; A is
/// killed and the balancer sends new connections to B. The client reconnects and resumes on B
/// with its token, taking its name over from the dead node at once, with what it missed,
/// once; and it is still in the room after A is reaped.
fn a_chat_client_fails_over_to_another_node_behind_a_balancer(engine: Engine) {
    let _w = Watchdog::new("cluster-failover", ms(60_000));
    let Some(redis) =
        Redis::start("cluster::a_chat_client_fails_over_to_another_node_behind_a_balancer")
    else {
        return;
    };
    let a = node(engine, &redis);
    let b = node(engine, &redis);
    let lb = crate::support::Proxy::start(a.port);
    let mut bob = joined(&b, "bob");
    let port = lb.port.to_string();
    let mut ann = crate::support::Proc::spawn_in_temp(
        "hb-client",
        &[
            "--defaults",
            "--chat",
            "--name",
            "ann",
            "--port",
            &port,
            "--reconnect-for",
            "20s",
        ],
        Some(""),
    );
    ann.stdout.wait_for("* in the room:", PROMPT);
    bob.expect("JOINED ann", PROMPT);
    bob.send(b"MSG one\n");
    ann.stdout.wait_for("bob: one", PROMPT);
    a.proc.signal("KILL");
    bob.send(b"MSG two\n");
    // "two" goes through Redis while the balancer still points at the dead node, so the
    // client surely missed it; then new connections go to B.
    std::thread::sleep(ms(200));
    lb.retarget(b.port);
    // The client comes back on B with its token and takes its name over from the dead
    // node (silently, if A is not declared lost yet: `--node-timeout 1s` and the client's
    // backoff race), with what it missed.
    let (_, notice) = ann.stdout.wait_for("-- reconnected after", ms(10_000));
    assert!(notice.contains("recovered 1 message"), "{notice}");
    let text = ann.stdout.text();
    assert_eq!(text.matches("bob: two").count(), 1, "{text}");
    assert_eq!(text.matches("bob: one").count(), 1, "{text}");
    bob.send(b"MSG three\n");
    ann.stdout.wait_for("bob: three", PROMPT);
    // Past the node timeout and A's reaping, ann is still in the room, on B.
    std::thread::sleep(ms(1_500));
    {
        use std::io::Write;
        let stdin = ann.stdin.as_mut().expect("hb-client's stdin");
        stdin.write_all(b"four\n").unwrap();
        stdin.flush().unwrap();
    }
    let got = until(&mut bob, "MSG ann four", ms(5_000));
    assert!(!got.iter().any(|l| l == "LEFT ann replaced"), "{got:?}");
}

engine_tests!(a_password_and_tls_guard_the_broker_link_and_no_message_shows_the_password);
/// `rediss://:PASSWORD@…` to a Redis with `--requirepass` and a TLS port: two nodes trusting
/// its CA (SSL_CERT_FILE) form one room. A wrong password, or a certificate the node cannot
/// trust, leaves a node serving its members alone and saying why; a bad URL is exit 2. No
/// line or message ever shows the password.
fn a_password_and_tls_guard_the_broker_link_and_no_message_shows_the_password(engine: Engine) {
    const PASSWORD: &str = "s3cret-Pw";
    let _w = Watchdog::new("cluster-auth-tls", ms(60_000));
    let fixture = |name: &str| {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/tls")
            .join(name)
            .display()
            .to_string()
    };
    let (cert, key, ca) = (
        fixture("server.pem"),
        fixture("server.key"),
        fixture("ca.pem"),
    );
    let tls_port = free_port().to_string();
    let Some(redis) = Redis::start_with(
        "cluster::a_password_and_tls_guard_the_broker_link_and_no_message_shows_the_password",
        Some(PASSWORD),
        &[
            "--tls-port",
            &tls_port,
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
            "--tls-ca-cert-file",
            &ca,
            "--tls-auth-clients",
            "no",
        ],
    ) else {
        return;
    };
    let tls_url = format!("rediss://:{PASSWORD}@127.0.0.1:{tls_port}");
    let chat = |url: &str, env: &[(&str, &str)]| {
        Server::start_env(engine, env, &["--mode", "chat", "--broker", url])
    };
    let trust = [("SSL_CERT_FILE", ca.as_str())];
    let mut a = chat(&tls_url, &trust);
    let mut b = chat(&tls_url, &trust);
    a.log().wait_for("broker connected", PROMPT);
    b.log().wait_for("broker connected", PROMPT);
    let mut ann = joined(&a, "ann");
    let mut bob = member(&b, "bob");
    until(&mut ann, "JOINED bob", PROMPT);
    ann.send(b"MSG over TLS\n");
    until(&mut bob, "MSG ann over TLS", PROMPT);

    let wrong = format!("redis://:wrong-{PASSWORD}@127.0.0.1:{}", redis.port);
    let mut c = chat(&wrong, &[]);
    let (_, line) = c.log().wait_for("broker unreachable", PROMPT);
    assert!(line.contains("authentication failed"), "{line}");
    // Trusting another CA than the one that signed Redis's certificate.
    let other = fixture("other-ca.pem");
    let mut d = chat(&tls_url, &[("SSL_CERT_FILE", other.as_str())]);
    let (_, line) = d.log().wait_for("broker unreachable", PROMPT);
    assert!(line.contains("certificate"), "{line}");

    let mut bad = Proc::spawn_in_temp(
        "hb-server",
        &[
            "--defaults",
            "--mode",
            "chat",
            "--broker",
            &format!("{tls_url}/#insecure"),
        ],
        None,
    );
    assert_eq!(bad.wait(PROMPT).code(), Some(2));
    bad.stderr.drain(ms(100));
    let err = bad.stderr.text();
    assert!(err.contains("rediss://:***@127.0.0.1"), "{err}");

    let mut texts = vec![err];
    for srv in [&mut a, &mut b, &mut c, &mut d] {
        srv.proc.signal("TERM");
        assert!(srv.proc.wait(PROMPT).success());
        srv.log().drain(ms(100));
        texts.push(srv.log().text());
        srv.proc.stderr.drain(ms(100));
        texts.push(srv.proc.stderr.text());
    }
    for t in texts {
        assert!(!t.contains(PASSWORD), "the password shows:\n{t}");
    }
}

engine_tests!(a_takeover_on_the_same_node_keeps_the_name_in_the_cluster);
/// `JOIN NAME SINCE POS TOKEN` on the node that holds NAME: the new connection takes it over
/// (the old one gets `END replaced`), silently for the whole room: the other node hears no
/// `LEFT`, the name stays claimed (nobody elsewhere can take it), and the new connection's
/// messages reach the other node.
fn a_takeover_on_the_same_node_keeps_the_name_in_the_cluster(engine: Engine) {
    let _w = Watchdog::new("cluster-takeover-local", ms(60_000));
    let Some(redis) =
        Redis::start("cluster::a_takeover_on_the_same_node_keeps_the_name_in_the_cluster")
    else {
        return;
    };
    let a = node(engine, &redis);
    let b = node(engine, &redis);
    let mut old = Peer::connect(a.port);
    old.expect(HELLO_CHAT, PROMPT);
    old.send(b"JOIN ann SINCE -\n");
    let (_, welcome) = old.line(PROMPT);
    let token = welcome.split(' ').nth(3).unwrap().to_owned();
    let mut bob = joined(&b, "bob");
    until(&mut old, "JOINED bob", PROMPT);
    let mut new = Peer::connect(a.port);
    new.expect(HELLO_CHAT, PROMPT);
    new.send(format!("JOIN ann SINCE - {token}\n").as_bytes());
    let (_, w) = new.line(PROMPT);
    assert!(w.starts_with("WELCOME ann ") && w.ends_with(&token), "{w}");
    old.expect("END replaced", PROMPT);
    new.send(b"MSG still here\n");
    let got = until(&mut bob, "MSG ann still here", PROMPT);
    assert!(got.iter().all(|l| !l.starts_with("LEFT ann")), "{got:?}");
    bob.expect_silence(ms(300));
    // The name is still ann's in the cluster: the other node refuses it.
    let mut imp = Peer::connect(b.port);
    imp.expect(HELLO_CHAT, PROMPT);
    imp.send(b"JOIN ann\n");
    imp.expect("ERR name-taken ann is taken", PROMPT);
}

engine_tests!(a_takeover_with_the_token_on_another_node_is_silent_and_ends_the_old_connection);
/// A member whose connection to node A vanished (a ghost A has not reaped yet) resumes on
/// node B with its token: B welcomes it with the same token and what it missed, A ends the
/// old connection `END replaced`, nobody hears `LEFT` or `JOINED`, the name stays taken, and
/// the member's new messages reach the room.
fn a_takeover_with_the_token_on_another_node_is_silent_and_ends_the_old_connection(engine: Engine) {
    let _w = Watchdog::new("cluster-takeover-remote", ms(60_000));
    let Some(redis) = Redis::start(
        "cluster::a_takeover_with_the_token_on_another_node_is_silent_and_ends_the_old_connection",
    ) else {
        return;
    };
    let a = node(engine, &redis);
    let b = node(engine, &redis);
    let mut old = Peer::connect(a.port);
    old.expect(HELLO_CHAT, PROMPT);
    old.send(b"JOIN ann SINCE -\nWHO\n");
    let (_, welcome) = old.line(PROMPT);
    let token = welcome.split(' ').nth(3).unwrap().to_owned();
    until(&mut old, "MEMBERS ann", PROMPT);
    let mut bob = joined(&a, "bob");
    let mut cy = joined(&b, "cy");
    until(&mut old, "JOINED cy", PROMPT);
    bob.send(b"MSG while ann was away\n");
    let seen = loop {
        let (_, l) = old.line(PROMPT);
        if l.starts_with("PUB ") {
            break l.split(' ').nth(1).unwrap().to_owned();
        }
    };
    bob.send(b"MSG missed\n");
    until(&mut cy, "MSG bob missed", PROMPT);

    let mut new = Peer::connect(b.port);
    new.expect(HELLO_CHAT, PROMPT);
    new.send(format!("JOIN ann SINCE {seen} {token}\n").as_bytes());
    let (_, w) = new.line(PROMPT);
    assert!(
        w.starts_with("WELCOME ann ") && w.ends_with(&format!(" {token}")),
        "{w}"
    );
    let (_, missed) = new.line(PROMPT);
    assert!(missed.ends_with(" bob missed"), "{missed}");
    until(&mut old, "END replaced", PROMPT);
    new.send(b"MSG back\nWHO\n");
    until(&mut new, "MEMBERS ann bob cy", PROMPT);
    for p in [&mut bob, &mut cy] {
        let got = until(p, "MSG ann back", PROMPT);
        assert!(
            got.iter().all(|l| !l.contains(" ann")),
            "no LEFT or JOINED for ann: {got:?}"
        );
        p.send(b"WHO\n");
        until(p, "MEMBERS ann bob cy", PROMPT);
        p.expect_silence(ms(200));
    }
    // The name is B's now: A refuses it, and the same token takes it over again (back on A).
    let mut imp = Peer::connect(a.port);
    imp.expect(HELLO_CHAT, PROMPT);
    imp.send(b"JOIN ann\n");
    imp.expect("ERR name-taken ann is taken", PROMPT);
    let mut again = Peer::connect(a.port);
    again.expect(HELLO_CHAT, PROMPT);
    again.send(format!("JOIN ann SINCE - {token}\n").as_bytes());
    let (_, w) = again.line(PROMPT);
    assert!(w.ends_with(&format!(" {token}")), "{w}");
    until(&mut new, "END replaced", PROMPT);
    // A wrong token is refused as before.
    let mut wrong = Peer::connect(b.port);
    wrong.expect(HELLO_CHAT, PROMPT);
    wrong.send(b"JOIN ann SINCE - 0123456789abcdef\n");
    wrong.expect("ERR name-taken ann is taken", PROMPT);
}
