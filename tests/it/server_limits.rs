//! Server behaviour at the edges: signals, connection limits, bad and oversized lines.

use std::time::Instant;

use crate::support::*;

const HELLO: &str = "HELLO hb/1 idle=30000 interval=10000 count=3 mode=echo";

engine_tests!(quit_after_msg_gets_echo_then_end_quit);
fn quit_after_msg_gets_echo_then_end_quit(engine: Engine) {
    let _w = Watchdog::new("quit", ms(10_000));
    let srv = Server::start(engine, &[]);
    let mut peer = Peer::connect(srv.port);
    peer.send(b"MSG hi\nQUIT\n");
    peer.expect(HELLO, PROMPT);
    peer.expect("ECHO hi", PROMPT);
    peer.expect("END quit", PROMPT);
    peer.expect_closed(PROMPT);
}

engine_tests!(bad_lines_get_err_and_the_connection_stays);
fn bad_lines_get_err_and_the_connection_stays(engine: Engine) {
    let _w = Watchdog::new("bad-lines", ms(10_000));
    let srv = Server::start(engine, &[]);
    let mut peer = Peer::connect(srv.port);
    peer.expect(HELLO, PROMPT);
    peer.send(
        b"msg lower\nMSG\nBOGUS x\nMSG \xff\xfe\n\x00\x01\x02\n\nPING tok\nMSG still here\r\n",
    );
    let (_, l) = peer.line(PROMPT);
    assert!(l.starts_with("ERR unknown-verb "), "{l}");
    let (_, l) = peer.line(PROMPT);
    assert!(l.starts_with("ERR missing-argument "), "{l}");
    let (_, l) = peer.line(PROMPT);
    assert!(l.starts_with("ERR unknown-verb 'BOGUS'"), "{l}");
    let (_, l) = peer.line(PROMPT);
    assert!(l.starts_with("ERR bad-utf8 "), "{l}");
    let (_, l) = peer.line(PROMPT);
    assert!(l.starts_with("ERR unknown-verb "), "{l}");
    // The empty line is a keep-alive and gets no answer.
    peer.expect("PONG tok", PROMPT);
    peer.expect("ECHO still here", PROMPT);
}

engine_tests!(oversized_line_is_ended_with_line_too_long);
fn oversized_line_is_ended_with_line_too_long(engine: Engine) {
    let _w = Watchdog::new("line-too-long", ms(10_000));
    let srv = Server::start(engine, &["--max-line", "16"]);
    let mut peer = Peer::connect(srv.port);
    peer.expect(HELLO, PROMPT);
    peer.send(b"MSG 123456789012\n"); // exactly 16 bytes
    peer.expect("ECHO 123456789012", PROMPT);
    peer.send(b"MSG 1234567890123\n"); // 17 bytes
    peer.expect("END line-too-long", PROMPT);
    peer.expect_closed(PROMPT);
    // Without a newline the server stops at the limit instead of buffering forever.
    let mut peer = Peer::connect(srv.port);
    peer.expect(HELLO, PROMPT);
    peer.send(&[b'x'; 64]);
    peer.expect("END line-too-long", PROMPT);
    peer.expect_closed(PROMPT);
}

engine_tests!(sigint_and_sigterm_end_every_client_and_exit_0_within_a_second);
fn sigint_and_sigterm_end_every_client_and_exit_0_within_a_second(engine: Engine) {
    for sig in ["INT", "TERM"] {
        let _w = Watchdog::new("signals", ms(10_000));
        let mut srv = Server::start(engine, &[]);
        let mut peers: Vec<Peer> = (0..3).map(|_| Peer::connect(srv.port)).collect();
        for p in &mut peers {
            p.expect(HELLO, PROMPT);
        }
        let t = Instant::now();
        srv.proc.signal(sig);
        for p in &mut peers {
            p.expect("END server-shutdown", PROMPT);
            p.expect_closed(PROMPT);
        }
        let st = srv.proc.wait(PROMPT);
        assert!(
            t.elapsed() < ms(1000),
            "SIG{sig}: exit took {:?}",
            t.elapsed()
        );
        assert_eq!(st.code(), Some(0), "SIG{sig}");
        assert!(srv
            .proc
            .stdout
            .text()
            .contains("END server-shutdown to 3 client(s)"));
    }
}

engine_tests!(shutdown_is_prompt_even_with_a_client_that_does_not_read);
fn shutdown_is_prompt_even_with_a_client_that_does_not_read(engine: Engine) {
    // Floods megabytes through loopback (and times the shutdown): run alone.
    let _x = exclusive();
    let _w = Watchdog::new("shutdown-stuck", ms(10_000));
    let mut srv = Server::start(engine, &["--queue", "100000000"]);
    let mut stuck = Peer::connect(srv.port);
    stuck.expect(HELLO, PROMPT);
    // Fill the server's socket buffer towards this client: it never reads again.
    let big = format!("MSG {}\n", "x".repeat(60_000));
    let mut raw = stuck.stream.try_clone().unwrap();
    let filler = std::thread::spawn(move || {
        use std::io::Write;
        for _ in 0..200 {
            if raw.write_all(big.as_bytes()).is_err() {
                break;
            }
        }
    });
    std::thread::sleep(ms(300));
    let t = Instant::now();
    srv.proc.signal("INT");
    assert_eq!(srv.proc.wait(PROMPT).code(), Some(0));
    assert!(t.elapsed() < ms(1000), "exit took {:?}", t.elapsed());
    drop(stuck);
    let _ = filler.join();
}

engine_tests!(max_conns_refuses_newcomers_and_keeps_serving_the_others);
fn max_conns_refuses_newcomers_and_keeps_serving_the_others(engine: Engine) {
    let _w = Watchdog::new("max-conns", ms(10_000));
    let mut srv = Server::start(engine, &["--max-conns", "2"]);
    let mut a = Peer::connect(srv.port);
    let mut b = Peer::connect(srv.port);
    a.expect(HELLO, PROMPT);
    b.expect(HELLO, PROMPT);
    for _ in 0..3 {
        let mut c = Peer::connect(srv.port);
        c.expect("END server-full", PROMPT);
        c.expect_closed(PROMPT);
    }
    srv.log().wait_for("max-conns 2 reached", PROMPT);
    a.send(b"MSG a\n");
    a.expect("ECHO a", PROMPT);
    b.send(b"MSG b\n");
    b.expect("ECHO b", PROMPT);
    // A slot frees up once a client leaves.
    a.send(b"QUIT\n");
    a.expect("END quit", PROMPT);
    a.expect_closed(PROMPT);
    srv.log().wait_for("#1 127.0.0.1", PROMPT);
    srv.log().wait_for(" closed", PROMPT);
    let mut d = Peer::connect(srv.port);
    d.expect(HELLO, PROMPT);
}

engine_tests!(a_third_connection_from_one_address_is_refused_until_one_closes);
/// `--max-conns-per-ip 2`: the third connection from 127.0.0.1 gets exactly `END
/// server-full` and the end of the stream, the log says why, and once one of the two has
/// closed a newcomer is served again.
fn a_third_connection_from_one_address_is_refused_until_one_closes(engine: Engine) {
    let _w = Watchdog::new("max-conns-per-ip", ms(30_000));
    let mut srv = Server::start(engine, &["--max-conns-per-ip", "2"]);
    let mut first = Peer::connect(srv.port);
    first.expect(HELLO, PROMPT);
    let mut second = Peer::connect(srv.port);
    second.expect(HELLO, PROMPT);
    for _ in 0..3 {
        let t0 = Instant::now();
        let mut third = std::net::TcpStream::connect(("127.0.0.1", srv.port)).unwrap();
        let (got, took) = read_to_end(&mut third, t0);
        assert_eq!(got, "END server-full\n");
        assert!(took < ms(500), "refused after {took:?}");
    }
    srv.log().wait_for(
        "END server-full (max-conns-per-ip 2 reached for 127.0.0.1)",
        PROMPT,
    );
    // The second leaves; once the server freed it, a newcomer is served.
    let gone = second.stream.local_addr().unwrap();
    second.send(b"QUIT\n");
    second.expect("END quit", PROMPT);
    drop(second);
    let closed = format!("{gone} closed");
    let deadline = Instant::now() + PROMPT;
    while !srv.log().seen.iter().any(|(_, l)| l.ends_with(&closed)) {
        assert!(Instant::now() < deadline, "{}", srv.log().text());
        srv.log().settle(ms(20));
    }
    let mut again = Peer::connect(srv.port);
    again.expect(HELLO, PROMPT);
    again.send(b"MSG back\n");
    again.expect("ECHO back", PROMPT);
    first.send(b"MSG still\n");
    first.expect("ECHO still", PROMPT);
}

/// Reads until the server closes: everything it sent, and when the end came (since `t0`).
fn read_to_end(s: &mut std::net::TcpStream, t0: Instant) -> (String, std::time::Duration) {
    use std::io::Read;
    s.set_read_timeout(Some(PROMPT)).unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got)
        .unwrap_or_else(|e| panic!("reading: {e} after {:?}", String::from_utf8_lossy(&got)));
    (String::from_utf8_lossy(&got).into_owned(), t0.elapsed())
}

engine_tests!(slow_consumer_is_ended_and_others_keep_going);
fn slow_consumer_is_ended_and_others_keep_going(engine: Engine) {
    // Floods megabytes through loopback (and times the shutdown): run alone.
    let _x = exclusive();
    let _w = Watchdog::new("slow-consumer", ms(15_000));
    let mut srv = Server::start(engine, &["--queue", "65536"]);
    // Sends and sends but never reads its echoes.
    let slow = connect_small_rcvbuf(srv.port);
    let mut raw = slow.try_clone().unwrap();
    let line = format!("MSG {}\n", "y".repeat(8000));
    let flood = std::thread::spawn(move || {
        use std::io::Write;
        // Far more echo traffic than the kernel buffers plus the 64 KiB queue can hold.
        for _ in 0..2000 {
            if raw.write_all(line.as_bytes()).is_err() {
                break;
            }
        }
    });
    srv.log().wait_for("#1 ", PROMPT);
    let (_, l) = srv.log().wait_for("END slow-consumer", ms(10_000));
    assert!(l.contains("#1 "), "{l}");
    let mut other = Peer::connect(srv.port);
    other.expect(HELLO, PROMPT);
    other.send(b"MSG fine\n");
    other.expect("ECHO fine", PROMPT);
    drop(slow);
    let _ = flood.join();
}

engine_tests!(port_in_use_is_a_clear_error_with_exit_1);
fn port_in_use_is_a_clear_error_with_exit_1(engine: Engine) {
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port().to_string();
    let mut p = Proc::spawn_in_temp(
        "hb-server",
        &engine.with(&["--defaults", "--port", &port]),
        None,
    );
    assert_eq!(p.wait(PROMPT).code(), Some(1));
    let err = p.stderr.text();
    assert!(
        err.contains("cannot listen on 127.0.0.1:") && err.contains("in use"),
        "{err}"
    );
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

engine_tests!(a_thousand_idle_clients_cost_no_cpu_between_deadlines);
fn a_thousand_idle_clients_cost_no_cpu_between_deadlines(engine: Engine) {
    let _x = exclusive();
    use std::io::Read;
    let _w = Watchdog::new("1000-idle", ms(30_000));
    let srv = Server::start(engine, &[]);
    // The listen backlog is 1024 (std's TcpListener would give 128): `ss` shows it as Send-Q.
    let ss = std::process::Command::new("ss")
        .args(["-ltnH", &format!("sport = :{}", srv.port)])
        .output()
        .unwrap();
    let ss = String::from_utf8_lossy(&ss.stdout);
    assert_eq!(ss.split_whitespace().nth(2), Some("1024"), "{ss}");
    // Connect in bursts of 100, each confirmed by its HELLO before the next.
    let mut socks: Vec<std::net::TcpStream> = Vec::new();
    for _ in 0..10 {
        let burst: Vec<std::net::TcpStream> = (0..100)
            .map(|_| std::net::TcpStream::connect(("127.0.0.1", srv.port)).unwrap())
            .collect();
        for mut s in burst {
            s.set_read_timeout(Some(PROMPT)).unwrap();
            let mut buf = [0u8; 64];
            let n = s.read(&mut buf).unwrap();
            assert!(
                buf[..n].starts_with(b"HELLO hb/1"),
                "{:?}",
                String::from_utf8_lossy(&buf[..n])
            );
            socks.push(s);
        }
    }
    let pid = srv.proc.pid();
    let before = cpu_ticks(pid);
    std::thread::sleep(ms(1000));
    let used = cpu_ticks(pid) - before;
    // 2,000 threads that polled even every 10 ms would burn far more than this in a second.
    assert!(
        used <= 3,
        "idle server used {used} ticks of CPU in one second"
    );
    let threads = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .count();
    match engine {
        Engine::Threads => assert!(
            threads >= 2000,
            "expected two threads per client, found {threads}"
        ),
        // CONTRACT section 6: a few threads in all; a client costs no thread.
        Engine::Events => assert!(
            threads < 100,
            "expected a few threads for 1,000 clients, found {threads}"
        ),
    }
}

engine_tests!(out_of_file_descriptors_refuses_with_server_full_and_keeps_serving);
fn out_of_file_descriptors_refuses_with_server_full_and_keeps_serving(engine: Engine) {
    let _w = Watchdog::new("emfile", ms(20_000));
    let mut srv = Server::start_limited(engine, "-n 32");
    let (port, proc) = (srv.port, &mut srv.proc);
    let mut served = Vec::new();
    let mut refused = 0;
    for _ in 0..60 {
        let mut p = Peer::connect(port);
        let (_, first) = p.line(PROMPT);
        if first == "END server-full" {
            p.expect_closed(PROMPT);
            refused += 1;
        } else {
            assert!(first.starts_with("HELLO"), "{first}");
            served.push(p);
        }
    }
    assert!(
        refused > 0 && served.len() > 10,
        "served {}, refused {refused}",
        served.len()
    );
    proc.stdout.wait_for("no file descriptor left", PROMPT);
    for p in served.iter_mut().take(5) {
        p.send(b"MSG still\n");
        p.expect("ECHO still", PROMPT);
    }
    // Descriptors come back when clients leave, and newcomers are served again.
    // "closed" is logged once a connection's descriptor is really closed.
    let closed = |l: &Lines| {
        l.seen
            .iter()
            .filter(|(_, l)| l.ends_with(" closed"))
            .count()
    };
    let closed_before = closed(&proc.stdout);
    served.truncate(served.len() - 5);
    let deadline = std::time::Instant::now() + PROMPT;
    while closed(&proc.stdout) < closed_before + 5 {
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            proc.stdout.text()
        );
        proc.stdout.settle(ms(20));
    }
    let mut again = Peer::connect(port);
    let (_, first) = again.line(PROMPT);
    assert!(
        first.starts_with("HELLO"),
        "{first}\n{}",
        proc.stdout.text()
    );
    assert!(proc.child.try_wait().unwrap().is_none(), "server died");
}

#[test]
fn out_of_threads_refuses_with_server_full_and_keeps_serving() {
    let _w = Watchdog::new("no-threads", ms(30_000));
    // As an unprivileged user with at most 150 threads (RLIMIT_NPROC, which root ignores),
    // thread creation fails after a few dozen clients while memory stays plentiful: every
    // later spawn must turn into a refusal, not an abort.
    let tools = ["setpriv", "prlimit"].iter().all(|t| {
        std::process::Command::new(t)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    let root = std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
    });
    if !tools || !root {
        skip(
            "out_of_threads_refuses_with_server_full_and_keeps_serving",
            &format!("needs root, setpriv and prlimit (root: {root}, tools: {tools})"),
        );
        return;
    }
    let mut srv = Server::start_wrapped(&[
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "prlimit",
        "--nproc=150:150",
    ]);
    let mut first = Peer::connect(srv.port);
    first.expect(HELLO, PROMPT);
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..3000 {
        let mut p = Peer::connect(srv.port);
        let (_, l) = p.line(PROMPT);
        if l == "END server-full" {
            refused += 1;
            if refused == 20 {
                break;
            }
        } else {
            held.push(p);
        }
    }
    assert_eq!(
        refused,
        20,
        "never ran out of threads with {} clients",
        held.len()
    );
    srv.log().wait_for("cannot start a thread", PROMPT);
    first.send(b"MSG still here\n");
    first.expect("ECHO still here", PROMPT);
    assert!(srv.proc.child.try_wait().unwrap().is_none(), "server died");
}

#[test]
fn max_conns_beyond_the_memory_map_limit_is_lowered_and_said() {
    let _w = Watchdog::new("map-cap", ms(10_000));
    let max_maps: usize = std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // Eight maps per client: asking for as many clients as there are maps is always too many.
    let asked = max_maps.to_string();
    let mut srv = Server::start(Engine::Threads, &["--max-conns", &asked]);
    let (_, line) = srv.log().wait_for("serving at most", PROMPT);
    let allowed: usize = line
        .split("serving at most ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        allowed < max_maps / 8 && allowed > max_maps / 8 - 500,
        "{line}"
    );
    assert!(line.contains(&format!("not {asked}")), "{line}");
}
