//! Chat mode: relay, names, every LEFT reason, slow consumers, and the interactive client.

use std::time::{Duration, Instant};

use crate::support::*;

fn chat_server(engine: Engine, extra: &[&str]) -> Server {
    let mut args = vec!["--mode", "chat"];
    args.extend_from_slice(extra);
    Server::start(engine, &args)
}

engine_tests!(three_clients_relay_to_each_other_without_self_echo);
fn three_clients_relay_to_each_other_without_self_echo(engine: Engine) {
    let _w = Watchdog::new("chat-relay", ms(15_000));
    let srv = chat_server(engine, &[]);
    let mut ann = join(srv.port, "ann");
    let mut bob = join(srv.port, "bob");
    ann.expect("JOINED bob", PROMPT);
    let mut cy = join(srv.port, "cy");
    ann.expect("JOINED cy", PROMPT);
    bob.expect("JOINED cy", PROMPT);
    ann.send(b"MSG hi all\n");
    bob.expect("MSG ann hi all", PROMPT);
    cy.expect("MSG ann hi all", PROMPT);
    bob.send(b"MSG hi ann\n");
    ann.expect("MSG bob hi ann", PROMPT);
    cy.expect("MSG bob hi ann", PROMPT);
    cy.send(b"MSG bye\nQUIT\n");
    ann.expect("MSG cy bye", PROMPT);
    ann.expect("LEFT cy quit", PROMPT);
    bob.expect("MSG cy bye", PROMPT);
    bob.expect("LEFT cy quit", PROMPT);
    cy.expect("END quit", PROMPT);
    cy.expect_closed(PROMPT);
    // Nobody heard its own words: the next thing each one gets is an answer to its PING.
    for p in [&mut ann, &mut bob] {
        p.send(b"PING sync\n");
        p.expect("PONG sync", PROMPT);
    }
}

engine_tests!(names_must_be_unique_and_valid_and_msg_needs_join);
fn names_must_be_unique_and_valid_and_msg_needs_join(engine: Engine) {
    let _w = Watchdog::new("chat-names", ms(10_000));
    let srv = chat_server(engine, &[]);
    let _ann = join(srv.port, "ann");
    let mut p = Peer::connect(srv.port);
    p.line(PROMPT);
    p.send(b"WHO\n");
    p.expect("MEMBERS ann", PROMPT);
    p.send(b"MSG too early\n");
    p.expect("ERR not-joined JOIN NAME first", PROMPT);
    p.send(b"JOIN ann\n");
    p.expect("ERR name-taken ann is taken", PROMPT);
    p.send(b"JOIN\n");
    let (_, l) = p.line(PROMPT);
    assert!(l.starts_with("ERR missing-argument"), "{l}");
    p.send(b"JOIN two words\n");
    let (_, l) = p.line(PROMPT);
    assert!(l.starts_with("ERR missing-argument"), "{l}");
    p.send(format!("JOIN {}\n", "x".repeat(33)).as_bytes());
    let (_, l) = p.line(PROMPT);
    assert!(l.starts_with("ERR missing-argument"), "{l}");
    p.send(format!("JOIN {}\n", "x".repeat(32)).as_bytes());
    p.send(b"JOIN again\n");
    let (_, l) = p.line(PROMPT);
    assert!(
        l.starts_with("ERR already-joined already joined as "),
        "{l}"
    );
    p.send(b"WHO\n");
    p.expect(&format!("MEMBERS ann {}", "x".repeat(32)), PROMPT);
}

/// Reads `n` relay lines at `p`, checking per-sender order; returns the largest gap
/// between two consecutive lines.
fn receive_in_order(p: &mut Peer, n: usize, senders: &[&str]) -> Duration {
    let mut next = vec![0usize; senders.len()];
    let mut last = Instant::now();
    let mut max_gap = Duration::ZERO;
    let mut got = 0;
    while got < n {
        let (_, line) = p.line(PROMPT);
        let now = Instant::now();
        if got > 0 {
            max_gap = max_gap.max(now - last);
        }
        last = now;
        if !line.starts_with("MSG ") {
            continue;
        }
        let mut words = line.splitn(4, ' ');
        let (_, from, seq) = (words.next(), words.next().unwrap(), words.next().unwrap());
        let i = senders
            .iter()
            .position(|s| *s == from)
            .unwrap_or_else(|| panic!("unexpected {line}"));
        assert_eq!(
            seq.parse::<usize>().unwrap(),
            next[i],
            "out of order from {from}"
        );
        next[i] += 1;
        got += 1;
    }
    max_gap
}

engine_tests!(ten_thousand_messages_per_sender_arrive_in_order_with_nothing_lost);
fn ten_thousand_messages_per_sender_arrive_in_order_with_nothing_lost(engine: Engine) {
    let _x = exclusive();
    let _w = Watchdog::new("chat-order", ms(60_000));
    let srv = chat_server(engine, &[]);
    let mut a = join(srv.port, "a");
    let mut b = join(srv.port, "b");
    let mut c = join(srv.port, "c");
    a.expect("JOINED b", PROMPT);
    a.expect("JOINED c", PROMPT);
    b.expect("JOINED c", PROMPT);
    const N: usize = 10_000;
    let batch = |who: &str| -> Vec<u8> {
        (0..N)
            .flat_map(|i| format!("MSG {i} from {who}\n").into_bytes())
            .collect()
    };
    let (ba, bb) = (batch("a"), batch("b"));
    let mut wa = a.stream.try_clone().unwrap();
    let mut wb = b.stream.try_clone().unwrap();
    let ta = std::thread::spawn(move || std::io::Write::write_all(&mut wa, &ba).unwrap());
    let tb = std::thread::spawn(move || std::io::Write::write_all(&mut wb, &bb).unwrap());
    // c hears both senders; a and b hear each other.
    receive_in_order(&mut c, 2 * N, &["a", "b"]);
    receive_in_order(&mut a, N, &["b"]);
    receive_in_order(&mut b, N, &["a"]);
    ta.join().unwrap();
    tb.join().unwrap();
}

engine_tests!(every_left_reason_is_announced_for_real);
fn every_left_reason_is_announced_for_real(engine: Engine) {
    let _x = exclusive();
    let _w = Watchdog::new("chat-left", ms(20_000));
    let mut srv = chat_server(
        engine,
        &[
            "--idle",
            "300ms",
            "--interval",
            "100ms",
            "--count",
            "2",
            "--max-line",
            "2048",
        ],
    );
    let port = srv.port;
    // The watcher answers heartbeats so it stays in the room the whole time.
    let mut watcher = join(port, "watcher");
    let expect_left = |watcher: &mut Peer, want: &str| loop {
        let (_, l) = watcher.line(PROMPT);
        if let Some(n) = l.strip_prefix("PING ") {
            watcher.send(format!("PONG {n}\n").as_bytes());
            continue;
        }
        if l.starts_with("JOINED ") {
            continue;
        }
        assert_eq!(l, want);
        break;
    };
    let mut q = join(port, "quitter");
    q.send(b"QUIT\n");
    expect_left(&mut watcher, "LEFT quitter quit");
    drop(join(port, "closer"));
    expect_left(&mut watcher, "LEFT closer closed");
    let ghost = join(port, "ghost"); // never answers its heartbeats
    expect_left(&mut watcher, "LEFT ghost heartbeat-timeout");
    drop(ghost);
    let mut long = join(port, "long");
    long.send(format!("MSG {}\n", "z".repeat(3000)).as_bytes());
    long.expect("END line-too-long", PROMPT);
    expect_left(&mut watcher, "LEFT long line-too-long");
    // A member that never reads, flooded by a talker, is evicted as a slow consumer.
    let stuck = join_stuck(port, "stuck");
    let mut talker = join(port, "talker");
    watcher.expect("JOINED stuck", PROMPT);
    watcher.expect("JOINED talker", PROMPT);
    // The talker speaks in windows the watcher keeps up with, until "stuck" is evicted.
    let body = "w".repeat(1000);
    let window: String = (0..20).map(|_| format!("MSG {body}\n")).collect();
    let mut evicted = false;
    for _ in 0..2000 {
        talker.send(window.as_bytes());
        let mut got = 0;
        while got < 20 {
            let (_, l) = watcher.line(PROMPT);
            if let Some(n) = l.strip_prefix("PING ") {
                watcher.send(format!("PONG {n}\n").as_bytes());
            } else if l.starts_with("LEFT ") {
                assert_eq!(l, "LEFT stuck slow-consumer");
                evicted = true;
            } else {
                got += 1;
            }
        }
        if evicted {
            break;
        }
    }
    assert!(evicted, "stuck was never evicted");
    srv.log()
        .wait_for("stuck left the room (slow-consumer)", PROMPT);
    drop(talker);
    drop(stuck);
    // Server shutdown: the room closes without LEFT lines (they would cost members² lines
    // just when the server must be quick); every member reads END server-shutdown itself.
    let mut last = join(port, "zed");
    srv.proc.signal("INT");
    for member in [&mut last, &mut watcher] {
        let seen: Vec<String> = std::iter::from_fn(|| {
            let (_, l) = member.line(PROMPT);
            (l != "END server-shutdown").then_some(l)
        })
        .collect();
        assert!(
            !seen.iter().any(|l| l.ends_with(" server-shutdown")),
            "no LEFT at shutdown: {seen:?}"
        );
    }
    assert_eq!(srv.proc.wait(PROMPT).code(), Some(0));
}

engine_tests!(a_reader_that_stalls_is_evicted_while_others_exchange_10k_without_loss_or_pause);
fn a_reader_that_stalls_is_evicted_while_others_exchange_10k_without_loss_or_pause(engine: Engine) {
    let _x = exclusive();
    let _w = Watchdog::new("chat-slow", ms(60_000));
    // Flow control holds a and b back while "stuck" lags, for at most one --stall.
    const STALL: u64 = 100;
    let mut srv = chat_server(
        engine,
        &["--queue", "65536", "--stall", &format!("{STALL}ms")],
    );
    let stuck = join_stuck(srv.port, "stuck");
    let mut a = join(srv.port, "a");
    let mut b = join(srv.port, "b");
    a.expect("JOINED b", PROMPT);
    let mut a_out = a.stream.try_clone().unwrap();
    let mut b_out = b.stream.try_clone().unwrap();
    // a and b talk in both directions, 10,000 messages of 2 KB in all, in windows small enough
    // for their own 64 KiB queues, while "stuck" never reads a byte.
    let body = "p".repeat(2000);
    let mut max_gap = Duration::ZERO;
    let mut left_seen = 0;
    for w in 0..500usize {
        let mut chunk_a = String::new();
        let mut chunk_b = String::new();
        for i in 0..10 {
            chunk_a.push_str(&format!("MSG {} {body}\n", w * 10 + i));
            chunk_b.push_str(&format!("MSG {} {body}\n", w * 10 + i));
        }
        std::io::Write::write_all(&mut a_out, chunk_a.as_bytes()).unwrap();
        std::io::Write::write_all(&mut b_out, chunk_b.as_bytes()).unwrap();
        for (p, from) in [(&mut b, "a"), (&mut a, "b")] {
            let mut got = 0;
            let mut last = Instant::now();
            while got < 10 {
                let (_, l) = p.line(PROMPT);
                max_gap = max_gap.max(last.elapsed());
                last = Instant::now();
                if l.starts_with("LEFT ") {
                    assert_eq!(l, "LEFT stuck slow-consumer");
                    left_seen += 1;
                    continue;
                }
                let want = format!("MSG {from} {} ", w * 10 + got);
                assert!(
                    l.starts_with(&want),
                    "expected {want:?}..., got {:?}",
                    &l[..l.len().min(40)]
                );
                got += 1;
            }
        }
    }
    assert_eq!(left_seen, 2, "both a and b hear that stuck was evicted");
    srv.log()
        .wait_for("stuck left the room (slow-consumer)", PROMPT);
    // One --stall pause, plus scheduling slack on a loaded 2-core machine.
    assert!(max_gap < ms(STALL + 300), "longest pause {max_gap:?}");
    drop(stuck);
}

engine_tests!(a_killed_chat_client_is_announced_as_left_closed);
fn a_killed_chat_client_is_announced_as_left_closed(engine: Engine) {
    let _w = Watchdog::new("chat-kill", ms(15_000));
    let srv = chat_server(engine, &[]);
    let mut watcher = join(srv.port, "watcher");
    let port = srv.port.to_string();
    let mut victim = Proc::spawn_in_temp(
        "hb-client",
        &["--chat", "--name", "victim", "--port", &port],
        Some(""),
    );
    watcher.expect("JOINED victim", PROMPT);
    victim.signal("KILL");
    victim.wait(PROMPT);
    watcher.expect("LEFT victim closed", PROMPT);
}

engine_tests!(interactive_clients_chat_through_pipes);
fn interactive_clients_chat_through_pipes(engine: Engine) {
    let _w = Watchdog::new("chat-pipes", ms(15_000));
    let mut srv = chat_server(
        engine,
        &["--idle", "300ms", "--interval", "100ms", "--count", "3"],
    );
    let port = srv.port.to_string();
    let dir = temp_dir();
    let mut ann = Proc::spawn(
        "hb-client",
        &["--chat", "--name", "ann", "--port", &port],
        &dir,
        Some(""),
    );
    srv.log().wait_for("joined as ann", PROMPT);
    let mut bob = Proc::spawn(
        "hb-client",
        &["--chat", "--name", "bob", "--port", &port],
        &dir,
        Some(""),
    );
    ann.stdout.wait_for("* bob joined", PROMPT);
    let say = |p: &mut Proc, line: &str| {
        let w = p.stdin.as_mut().unwrap();
        std::io::Write::write_all(w, format!("{line}\n").as_bytes()).unwrap();
        std::io::Write::flush(w).unwrap();
    };
    say(&mut ann, "hello bob");
    bob.stdout.wait_for("ann: hello bob", PROMPT);
    say(&mut bob, "hi ann");
    ann.stdout.wait_for("bob: hi ann", PROMPT);
    // Both stay through several heartbeat rounds, answering by themselves: after 300 ms of
    // silence the server pings each, and each answers the first PING of every round.
    const ROUNDS: usize = 3;
    let who = |srv: &mut Server, name: &str| {
        let (_, l) = srv.log().wait_for(&format!(" joined as {name}"), PROMPT);
        // "TIMESTAMP #ID ADDR joined as NAME": the connection is "#ID ADDR".
        let conn = l.split(" joined as ").next().unwrap();
        conn[conn.find('#').unwrap()..].to_owned()
    };
    let (ann_conn, bob_conn) = (who(&mut srv, "ann"), who(&mut srv, "bob"));
    let answered = |srv: &Server, conn: &str| {
        srv.proc
            .stdout
            .seen
            .iter()
            .filter(|(_, l)| l.contains(&format!("{conn} answered after heartbeat ")))
            .count()
    };
    let deadline = Instant::now() + ms(300 * (ROUNDS as u64 + 1) + 2_000);
    while answered(&srv, &ann_conn) < ROUNDS || answered(&srv, &bob_conn) < ROUNDS {
        assert!(
            Instant::now() < deadline,
            "fewer than {ROUNDS} answered rounds each:\n{}",
            srv.log().text()
        );
        srv.log().settle(ms(20));
    }
    for conn in [&ann_conn, &bob_conn] {
        let log = srv.log().text();
        let rounds = log
            .lines()
            .filter(|l| l.contains(&format!("{conn} no data for 300ms, heartbeat round starts")))
            .count();
        assert!(rounds >= ROUNDS, "{conn}: {rounds} rounds started:\n{log}");
        // Answered at once: never a second PING in a round, never an END.
        assert!(
            log.lines()
                .filter(|l| l.contains(&format!(" {conn} ")))
                .all(|l| !l.contains("heartbeat 2/") && !l.contains(" END ")),
            "{conn}:\n{log}"
        );
    }
    say(&mut bob, "still here");
    ann.stdout.wait_for("bob: still here", PROMPT);
    say(&mut bob, "/quit");
    assert_eq!(bob.wait(PROMPT).code(), Some(0), "{}", bob.stderr.text());
    ann.stdout.wait_for("* bob left (quit)", PROMPT);
    // End of input leaves cleanly too.
    ann.close_stdin();
    assert_eq!(ann.wait(PROMPT).code(), Some(0), "{}", ann.stderr.text());
    assert_eq!(
        ann.stdout.count("ann:"),
        0,
        "no self-echo:\n{}",
        ann.stdout.text()
    );
    assert_eq!(bob.stdout.count("left (heartbeat-timeout)"), 0);
    // A taken name is a usage error.
    let mut cy = Proc::spawn(
        "hb-client",
        &["--chat", "--name", "cy", "--port", &port],
        &dir,
        Some(""),
    );
    srv.log().wait_for("joined as cy", PROMPT);
    let mut cy2 = Proc::spawn(
        "hb-client",
        &["--chat", "--name", "cy", "--port", &port],
        &dir,
        None,
    );
    assert_eq!(cy2.wait(PROMPT).code(), Some(2));
    assert!(
        cy2.stderr.text().contains("name 'cy' is taken"),
        "{}",
        cy2.stderr.text()
    );
    cy.signal("INT");
    assert_eq!(cy.wait(PROMPT).code(), Some(0));
    // The server ending the session is exit 3, with the reason (a shutdown here: it needs no
    // client flag, unlike a blocked heartbeat answer).
    let mut dee = Proc::spawn(
        "hb-client",
        &["--chat", "--name", "dee", "--port", &port],
        &dir,
        Some(""),
    );
    srv.log().wait_for("joined as dee", PROMPT);
    srv.proc.signal("TERM");
    assert_eq!(dee.wait(PROMPT).code(), Some(3), "{}", dee.stderr.text());
    assert!(
        dee.stderr.text().contains("server-shutdown"),
        "{}",
        dee.stderr.text()
    );
}

fn count_dir(path: String) -> usize {
    std::fs::read_dir(path).map(|d| d.count()).unwrap_or(0)
}

engine_tests!(dirty_disconnects_mid_write_are_announced_and_leak_nothing);
fn dirty_disconnects_mid_write_are_announced_and_leak_nothing(engine: Engine) {
    let _w = Watchdog::new("chat-dirty", ms(20_000));
    let mut srv = chat_server(engine, &[]);
    let pid = srv.proc.pid();
    let mut watcher = join(srv.port, "watcher");
    let mut talker = join(srv.port, "talker");
    watcher.expect("JOINED talker", PROMPT);
    let (threads0, fds0) = (
        count_dir(format!("/proc/{pid}/task")),
        count_dir(format!("/proc/{pid}/fd")),
    );
    // Twenty members that reset their connection (SO_LINGER 0) while the talker floods the
    // room, so many of the server's writes to them fail half-way.
    let victims: Vec<_> = (0..20).map(|i| join(srv.port, &format!("v{i}"))).collect();
    for i in 0..20 {
        watcher.expect(&format!("JOINED v{i}"), PROMPT);
    }
    let body = "f".repeat(500);
    for v in victims {
        talker.send(format!("MSG {body}\nMSG {body}\nMSG {body}\n").as_bytes());
        let fd = rustix::fd::AsFd::as_fd(&v.stream)
            .try_clone_to_owned()
            .unwrap();
        rustix::net::sockopt::set_socket_linger(&fd, Some(Duration::ZERO)).unwrap();
        drop(fd);
        drop(v);
    }
    let mut left = 0;
    while left < 20 {
        let (_, l) = watcher.line(PROMPT);
        if l.starts_with("LEFT ") {
            assert!(l.starts_with("LEFT v") && l.ends_with(" closed"), "{l}");
            left += 1;
        }
    }
    // Every thread and descriptor of the victims is gone within a second.
    let deadline = Instant::now() + ms(1000);
    loop {
        let (t, f) = (
            count_dir(format!("/proc/{pid}/task")),
            count_dir(format!("/proc/{pid}/fd")),
        );
        if t == threads0 && f == fds0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "threads {t} (was {threads0}), fds {f} (was {fds0})"
        );
        std::thread::sleep(ms(10));
    }
    talker.send(b"MSG still alive\n");
    while watcher.line(PROMPT).1 != "MSG talker still alive" {}
    srv.proc.stderr.settle(ms(50));
    assert_eq!(
        srv.proc.stderr.count("panicked"),
        0,
        "{}",
        srv.proc.stderr.text()
    );
}

/// Joins `name` with positions on (`JOIN NAME SINCE POS [TOKEN]`); returns the peer, the
/// epoch and the token of its `WELCOME` (the lines up to `SYNCED`/`GAP` are left unread).
fn join_since(port: u16, name: &str, since: &str, token: Option<&str>) -> (Peer, String, String) {
    let mut p = Peer::connect(port);
    let (_, hello) = p.line(PROMPT);
    assert!(hello.ends_with(" mode=chat"), "{hello}");
    let tok = token.map(|t| format!(" {t}")).unwrap_or_default();
    p.send(format!("JOIN {name} SINCE {since}{tok}\n").as_bytes());
    let (_, w) = p.line(PROMPT);
    let f: Vec<&str> = w.split(' ').collect();
    assert!(f.len() == 4 && f[0] == "WELCOME" && f[1] == name, "{w}");
    let epoch = f[2].split(':').next().unwrap().to_owned();
    (p, epoch, f[3].to_owned())
}

engine_tests!(a_member_who_reconnects_gets_what_it_missed_once_in_order);
fn a_member_who_reconnects_gets_what_it_missed_once_in_order(engine: Engine) {
    let _w = Watchdog::new("chat-resume", ms(15_000));
    let srv = chat_server(engine, &[]);
    let (mut ann, epoch, _) = join_since(srv.port, "ann", "-", None);
    ann.expect(&format!("SYNCED {epoch}:0 0"), PROMPT);
    let mut bob = join(srv.port, "bob");
    ann.expect("JOINED bob", PROMPT);
    for i in 1..=5 {
        bob.send(format!("MSG m{i}\n").as_bytes());
        ann.expect(&format!("PUB {epoch}:{i} bob m{i}"), PROMPT);
    }
    // Ann's connection goes; five more are said while she is away.
    drop(ann);
    bob.expect("LEFT ann closed", PROMPT);
    for i in 6..=10 {
        bob.send(format!("MSG m{i}\n").as_bytes());
    }
    bob.send(b"PING sent\n");
    bob.expect("PONG sent", PROMPT);
    // Back from position 5: exactly 6..10, then the marker, then live lines.
    let (mut ann, e2, _) = join_since(srv.port, "ann", &format!("{epoch}:5"), None);
    assert_eq!(e2, epoch);
    for i in 6..=10 {
        ann.expect(&format!("PUB {epoch}:{i} bob m{i}"), PROMPT);
    }
    ann.expect(&format!("SYNCED {epoch}:10 5"), PROMPT);
    bob.expect("JOINED ann", PROMPT);
    bob.send(b"MSG live\n");
    ann.expect(&format!("PUB {epoch}:11 bob live"), PROMPT);
    // A legacy member never sees a position.
    let mut cy = join(srv.port, "cy");
    bob.send(b"MSG plain\n");
    cy.expect("MSG bob plain", PROMPT);
    // A position from another run (epoch) cannot be filled, and says so.
    let (mut dan, _, _) = join_since(srv.port, "dan", "zzzz:3", None);
    dan.expect(&format!("GAP epoch-changed {epoch}:12"), PROMPT);
    // HISTORY works before joining, oldest first.
    let mut eve = Peer::connect(srv.port);
    eve.line(PROMPT);
    eve.send(b"HISTORY 2\n");
    eve.expect(&format!("PUB {epoch}:11 bob live"), PROMPT);
    eve.expect(&format!("PUB {epoch}:12 bob plain"), PROMPT);
    eve.expect(&format!("SYNCED {epoch}:12 2"), PROMPT);
}

engine_tests!(a_resume_token_takes_a_ghost_s_name_over_without_a_word_to_the_room);
fn a_resume_token_takes_a_ghost_s_name_over_without_a_word_to_the_room(engine: Engine) {
    let _w = Watchdog::new("chat-takeover", ms(15_000));
    let srv = chat_server(engine, &[]);
    let (mut old, epoch, token) = join_since(srv.port, "ann", "-", None);
    old.expect(&format!("SYNCED {epoch}:0 0"), PROMPT);
    let mut bob = join(srv.port, "bob");
    bob.send(b"MSG while-away\n");
    bob.send(b"PING sent\n");
    bob.expect("PONG sent", PROMPT);
    // The old connection is still open (a ghost the heartbeat has not reaped yet): a wrong
    // token is refused, the right one takes the name at once.
    let mut thief = Peer::connect(srv.port);
    thief.line(PROMPT);
    thief.send(format!("JOIN ann SINCE {epoch}:0 0000000000000000\n").as_bytes());
    let (_, l) = thief.line(PROMPT);
    assert!(l.starts_with("ERR name-taken"), "{l}");
    let (mut new, _, t2) = join_since(srv.port, "ann", &format!("{epoch}:0"), Some(&token));
    assert_eq!(t2, token, "the name keeps its token");
    new.expect(&format!("PUB {epoch}:1 bob while-away"), PROMPT);
    new.expect(&format!("SYNCED {epoch}:1 1"), PROMPT);
    old.expect("JOINED bob", PROMPT);
    old.expect(&format!("PUB {epoch}:1 bob while-away"), PROMPT);
    old.expect("END replaced", PROMPT);
    old.expect_closed(PROMPT);
    // The room heard nothing: bob's next line is the answer to his own PING.
    bob.send(b"PING quiet\n");
    bob.expect("PONG quiet", PROMPT);
    bob.send(b"WHO\n");
    bob.expect("MEMBERS ann bob", PROMPT);
    bob.send(b"MSG welcome back\n");
    new.expect(&format!("PUB {epoch}:2 bob welcome back"), PROMPT);
}
