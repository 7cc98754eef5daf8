//! `--metrics ADDR` (issue 16, CONTRACT section 10) over real sockets, on both engines (and
//! the classic wire): the numbers move as the server works (a heartbeat round, a ghost, a
//! slow consumer, connects and closes, relayed messages, queued bytes, the broker link), and
//! stop with it; the HTTP side refuses
//! everything but `GET /metrics` and cannot be held by a stalled client, a bad address is a
//! usage error, and `promtool` accepts both the scrape and deploy/prometheus-alerts.yml.
//!
//! Numbers the server updates just after a client can see the effect (a PING is logged, and
//! counted, right after it is written) are awaited with [`wait_value`] and then asserted
//! exactly.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Instant;

use crate::support::*;

/// The server's metrics port, from its `metrics on http://127.0.0.1:PORT/metrics` line.
fn metrics_port(srv: &mut Server) -> u16 {
    let (_, line) = srv.log().wait_for("metrics on http://", PROMPT);
    let url = line.split("metrics on ").nth(1).unwrap();
    let port = url
        .strip_prefix("http://127.0.0.1:")
        .and_then(|rest| rest.strip_suffix("/metrics"))
        .unwrap_or_else(|| panic!("not a metrics URL: {line}"));
    let port: u16 = port.parse().unwrap();
    assert_ne!(port, 0, "the log names the real port: {line}");
    port
}

/// `hb-server --metrics 127.0.0.1:0 ARGS...` and its metrics port.
fn start(engine: Engine, args: &[&str]) -> (Server, u16) {
    let mut all = vec!["--metrics", "127.0.0.1:0"];
    all.extend_from_slice(args);
    let mut srv = Server::start(engine, &all);
    let port = metrics_port(&mut srv);
    (srv, port)
}

/// One HTTP exchange as the server ends it.
#[derive(Debug)]
struct Http {
    /// `HTTP/1.1 200 OK`
    status: String,
    /// Header lines.
    headers: Vec<String>,
    body: String,
}

impl Http {
    fn code(&self) -> u16 {
        self.status.split(' ').nth(1).unwrap().parse().unwrap()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find_map(|h| {
            let (n, v) = h.split_once(": ")?;
            n.eq_ignore_ascii_case(name).then_some(v)
        })
    }
}

/// Sends `request` and reads until the server closes (which it must, within [`PROMPT`]).
fn http(port: u16, request: &[u8]) -> Http {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the metrics port");
    s.set_read_timeout(Some(PROMPT)).unwrap();
    s.write_all(request).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .expect("the server answers and closes");
    parse_http(&raw)
}

fn parse_http(raw: &[u8]) -> Http {
    let text = String::from_utf8(raw.to_vec()).expect("UTF-8");
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no head in {text:?}"));
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().to_owned();
    let headers = lines.map(str::to_owned).collect();
    Http {
        status,
        headers,
        body: body.to_owned(),
    }
}

/// A scrape's text.
struct Scrape(String);

impl Scrape {
    /// The value of `series` (name and labels exactly as written), panicking when absent.
    fn value(&self, series: &str) -> f64 {
        self.find(series)
            .unwrap_or_else(|| panic!("no {series} in the scrape:\n{}", self.0))
    }

    fn find(&self, series: &str) -> Option<f64> {
        self.0
            .lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .map(|v| v.parse().unwrap())
    }

    /// The sum of every series of the family `name` (`name{...} v` lines).
    fn sum(&self, name: &str) -> f64 {
        self.0
            .lines()
            .filter_map(|l| l.strip_prefix(name)?.strip_prefix('{'))
            .map(|rest| rest.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum()
    }
}

/// `GET /metrics`, checked to be a 200 in the Prometheus text format.
fn scrape(port: u16) -> Scrape {
    let r = http(
        port,
        b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: hb-test\r\n\r\n",
    );
    assert_eq!(r.status, "HTTP/1.1 200 OK", "{r:?}");
    assert_eq!(
        r.header("Content-Type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    assert_eq!(r.header("Connection"), Some("close"));
    assert_eq!(
        r.header("Content-Length")
            .map(|l| l.parse::<usize>().unwrap()),
        Some(r.body.len())
    );
    Scrape(r.body)
}

/// Scrapes until `series` reads `want` (within [`PROMPT`]); panics with the last scrape.
fn wait_value(port: u16, series: &str, want: f64) -> Scrape {
    wait_until(port, series, |v| v == want, &format!("== {want}"))
}

/// Scrapes until `series` satisfies `ok` (within [`PROMPT`]).
fn wait_until(port: u16, series: &str, ok: impl Fn(f64) -> bool, what: &str) -> Scrape {
    let deadline = Instant::now() + PROMPT;
    loop {
        let s = scrape(port);
        if ok(s.value(series)) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "{series} never became {what} within {PROMPT:?}; last scrape:\n{}",
            s.0
        );
        thread::sleep(ms(20));
    }
}

const HB_ARGS: [&str; 6] = ["--idle", "0.5", "--interval", "0.25", "--count", "2"];
const HELLO: &str = "HELLO hb/1 idle=500 interval=250 count=2 mode=echo";

engine_tests!(a_heartbeat_round_and_a_ghost_move_the_heartbeat_metrics);
/// One client answers its first PING and quits; a silent one is ended `heartbeat-timeout`
/// after two: the counters follow each step, and the connections gauge follows them in and
/// out.
fn a_heartbeat_round_and_a_ghost_move_the_heartbeat_metrics(engine: Engine) {
    let _w = Watchdog::new("metrics-heartbeat", ms(30_000));
    let (srv, port) = start(engine, &HB_ARGS);
    let s = scrape(port);
    for series in [
        "hb_connections",
        "hb_accepted_total",
        "hb_heartbeats_sent_total",
        "hb_heartbeat_rtt_seconds_count",
        "hb_ghost_lateness_seconds_count",
        "hb_queue_bytes",
    ] {
        assert_eq!(s.value(series), 0.0, "{series} at start");
    }
    assert_eq!(s.sum("hb_ends_total"), 0.0);

    // An answering client: PING 1, then PONG 1 ends the round.
    let mut a = Peer::connect(srv.port);
    a.expect(HELLO, PROMPT);
    // Counted when accepted, before HELLO is written.
    let s = scrape(port);
    assert_eq!(s.value("hb_connections"), 1.0);
    assert_eq!(s.value("hb_accepted_total"), 1.0);
    a.expect("PING 1", PROMPT);
    wait_value(port, "hb_heartbeats_sent_total", 1.0);
    a.send(b"PONG 1\n");
    let s = wait_value(port, "hb_heartbeat_rtt_seconds_count", 1.0);
    let rtt = s.value("hb_heartbeat_rtt_seconds_sum");
    assert!(
        rtt > 0.0 && rtt < 0.25,
        "a round trip on loopback is under the interval: {rtt}"
    );
    assert_eq!(s.value("hb_heartbeat_rtt_seconds_bucket{le=\"+Inf\"}"), 1.0);
    assert_eq!(s.value("hb_heartbeat_rtt_seconds_bucket{le=\"10.0\"}"), 1.0);
    a.send(b"QUIT\n");
    a.expect("END quit", PROMPT);
    a.expect_closed(PROMPT);
    let s = wait_value(port, "hb_connections", 0.0);
    assert_eq!(s.value("hb_ends_total{reason=\"quit\"}"), 1.0);

    // A ghost: silent through PING 1 and PING 2, then ended.
    let mut b = Peer::connect(srv.port);
    b.expect(HELLO, PROMPT);
    b.expect("PING 1", PROMPT);
    b.expect("PING 2", PROMPT);
    b.expect("END heartbeat-timeout", PROMPT);
    b.expect_closed(PROMPT);
    let s = wait_value(port, "hb_ghost_lateness_seconds_count", 1.0);
    assert_eq!(s.value("hb_ends_total{reason=\"heartbeat-timeout\"}"), 1.0);
    assert_eq!(s.value("hb_heartbeats_sent_total"), 3.0, "1 to a, 2 to b");
    assert_eq!(
        s.value("hb_heartbeat_rtt_seconds_count"),
        1.0,
        "the ghost answered nothing"
    );
    let late = s.value("hb_ghost_lateness_seconds_sum");
    // Decided when the server's timer fired: well under one interval even on a loaded
    // two-core machine running a debug build.
    assert!((0.0..0.25).contains(&late), "lateness {late}");
    eprintln!(
        "ghost declared dead {:.3} ms after its deadline",
        late * 1e3
    );
    let s = wait_value(port, "hb_connections", 0.0);
    assert_eq!(s.value("hb_accepted_total"), 2.0);
    assert_eq!(s.sum("hb_ends_total"), 2.0, "one end per connection");
    assert_eq!(s.sum("hb_refused_total"), 0.0);
    assert_eq!(s.value("hb_slow_consumers_total"), 0.0);
}

engine_tests!(a_slow_consumer_eviction_moves_the_flow_metrics);
/// Chat: three messages relayed to one reader are counted exactly (messages and bytes); a
/// member that never reads fills its queue (seen in `hb_queue_bytes`) and is ended
/// `slow-consumer` after `--stall`, which both counters show.
fn a_slow_consumer_eviction_moves_the_flow_metrics(engine: Engine) {
    let _x = exclusive();
    let _w = Watchdog::new("metrics-slow-consumer", ms(60_000));
    let (srv, port) = start(
        engine,
        &["--mode", "chat", "--queue", "65536", "--stall", "2s"],
    );
    let mut snd = join(srv.port, "snd");
    let mut rdr = join(srv.port, "rdr");
    snd.expect("JOINED rdr", PROMPT);
    snd.send(b"MSG hello\nMSG hello\nMSG hello\n");
    for _ in 0..3 {
        rdr.expect("MSG snd hello", PROMPT);
    }
    let s = wait_value(port, "hb_relay_messages_total", 3.0);
    assert_eq!(
        s.value("hb_relay_bytes_total"),
        (3 * "MSG snd hello\n".len()) as f64
    );
    assert_eq!(s.value("hb_connections"), 2.0);
    rdr.send(b"QUIT\n");
    rdr.expect("END quit", PROMPT);
    snd.expect("LEFT rdr quit", PROMPT);

    let stuck = join_stuck(srv.port, "stuck");
    snd.expect("JOINED stuck", PROMPT);
    // 20 MB from snd: the stuck member holds it back once its 64 KiB queue is full.
    let stop = Arc::new(AtomicBool::new(false));
    let flood = {
        let mut w = snd.stream.try_clone().unwrap();
        let stop = stop.clone();
        thread::spawn(move || {
            let line = format!("MSG {}\n", "x".repeat(995));
            let batch = line.repeat(128);
            for _ in 0..20_000 / 128 {
                if stop.load(Ordering::Relaxed) || w.write_all(batch.as_bytes()).is_err() {
                    return;
                }
            }
        })
    };
    // Held: its queue is near its budget (the socket took only its tiny buffer's worth).
    let s = wait_until(
        port,
        "hb_queue_bytes",
        |v| v >= 32_768.0,
        ">= 32 KiB (the stuck member's queue filling)",
    );
    assert!(
        s.value("hb_queue_bytes") <= 2.0 * 65_536.0,
        "bounded by --queue"
    );
    assert_eq!(
        s.value("hb_slow_consumers_total"),
        0.0,
        "not before --stall"
    );
    // Ended after --stall.
    wait_value(port, "hb_slow_consumers_total", 1.0);
    // Its END is counted when it is sent or given up on (its socket takes nothing), a moment
    // later.
    let s = wait_value(port, "hb_ends_total{reason=\"slow-consumer\"}", 1.0);
    assert!(
        s.value("hb_relay_bytes_total") >= (3 * 14 + 32_768) as f64,
        "the bytes queued for the stuck member count as relayed:\n{}",
        s.0
    );
    flood.join().unwrap();
    stop.store(true, Ordering::Relaxed);
    // The flood went on to an empty room; nothing stays queued once it is over.
    wait_value(port, "hb_queue_bytes", 0.0);
    // snd only, once the stuck member is closed: at once if its END was given up, or after
    // the linger if the kernel still took the END when the grace was up.
    let s = wait_value(port, "hb_connections", 1.0);
    assert_eq!(s.value("hb_slow_consumers_total"), 1.0);
    assert_eq!(s.value("hb_ends_total{reason=\"slow-consumer\"}"), 1.0);
    drop(stuck);
}

engine_tests!(the_http_side_serves_get_metrics_only_and_cannot_be_held);
/// POST is 405, another path 404 (without echoing it), a 20 KiB head 431 and closed, half a
/// request line is closed after the 2 s deadline, and a scrape behind it is served then.
fn the_http_side_serves_get_metrics_only_and_cannot_be_held(engine: Engine) {
    let _w = Watchdog::new("metrics-http", ms(30_000));
    let (_srv, port) = start(engine, &[]);
    let r = http(port, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(r.code(), 405, "{r:?}");
    assert_eq!(r.header("Allow"), Some("GET"));
    assert_eq!(r.header("Connection"), Some("close"));
    let r = http(port, b"GET /other<script> HTTP/1.1\r\n\r\n");
    assert_eq!(r.code(), 404, "{r:?}");
    assert!(
        !r.body.contains("other") && !r.body.contains("script"),
        "{r:?}"
    );
    let r = http(port, b"GET /metrics\r\n\r\n");
    assert_eq!(r.code(), 400, "{r:?}");

    // A 20 KiB header: refused at 8 KiB, and closed (read_to_end returns).
    let big = format!(
        "GET /metrics HTTP/1.1\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20 * 1024)
    );
    let r = http(port, big.as_bytes());
    assert_eq!(r.code(), 431, "{r:?}");

    // Half a request line, then nothing: closed at the 2 s deadline...
    let mut stalled = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stalled.set_read_timeout(Some(ms(10_000))).unwrap();
    stalled.write_all(b"GET /met").unwrap();
    let t0 = Instant::now();
    // ...while a scrape queued behind it waits its turn, and is served.
    let behind = thread::spawn(move || {
        let s = scrape(port);
        (Instant::now(), s.value("hb_connections"))
    });
    let mut rest = Vec::new();
    let n = stalled.read_to_end(&mut rest).expect("closed, not reset");
    let closed = t0.elapsed();
    assert_eq!(n, 0, "closed without a word: {rest:?}");
    assert!(
        closed >= ms(1_800) && closed <= ms(3_000),
        "a stalled request is closed after about 2 s, not {closed:?}"
    );
    let (served_at, conns) = behind.join().unwrap();
    assert_eq!(conns, 0.0);
    assert!(
        served_at.duration_since(t0) <= ms(3_500),
        "the scrape behind the stalled one waited {:?}",
        served_at.duration_since(t0)
    );
    // And the port still serves.
    assert_eq!(scrape(port).value("hb_connections"), 0.0);
}

/// The classic wire (thread engine only) feeds the same counters: a client that never
/// answers its heartbeat socket is counted in, pinged three times and ended
/// `heartbeat-timeout`.
#[test]
fn the_classic_wire_counts_its_connections_heartbeats_and_ends() {
    let _w = Watchdog::new("metrics-classic", ms(30_000));
    // The client's heartbeat socket listener, where the server connects back.
    let hb = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    hb.set_nonblocking(true).unwrap();
    let dir = temp_dir();
    let client_port = hb.local_addr().unwrap().port();
    std::fs::write(
        dir.join("configuration.json"),
        format!(r#"{{"client": {{"port": "{client_port}"}}}}"#),
    )
    .unwrap();
    let args = [
        "--defaults",
        "--port",
        "0",
        "--wire",
        "classic",
        "--idle",
        "400ms",
        "--interval",
        "100ms",
        "--count",
        "3",
        "--metrics",
        "127.0.0.1:0",
    ];
    let mut srv = Server::start_raw(&args, &dir, None).keep_dir(dir);
    let port = metrics_port(&mut srv);
    let _data = TcpStream::connect(("127.0.0.1", srv.port)).unwrap();
    let deadline = Instant::now() + PROMPT;
    let _hb_sock = loop {
        match hb.accept() {
            Ok((s, _)) => break s,
            Err(_) if Instant::now() < deadline => thread::sleep(ms(5)),
            Err(e) => panic!("the server never connected back: {e}"),
        }
    };
    let s = scrape(port);
    assert_eq!(s.value("hb_connections"), 1.0);
    assert_eq!(s.value("hb_accepted_total"), 1.0);
    let s = wait_value(port, "hb_ends_total{reason=\"heartbeat-timeout\"}", 1.0);
    assert_eq!(s.value("hb_heartbeats_sent_total"), 3.0);
    assert_eq!(s.sum("hb_ends_total"), 1.0);
    wait_value(port, "hb_connections", 0.0);
}

#[test]
fn a_bad_metrics_address_is_a_usage_error_and_a_busy_port_fails_the_start() {
    let _w = Watchdog::new("metrics-bad-address", ms(30_000));
    for addr in [
        "nonsense",
        "127.0.0.1",
        "127.0.0.1:99999",
        ":9464",
        "::1:9464",
        "",
    ] {
        let mut p = Proc::spawn_in_temp("hb-server", &["--defaults", "--metrics", addr], None);
        assert_eq!(p.wait(PROMPT).code(), Some(2), "--metrics {addr:?}");
        assert!(
            p.stderr.text().contains("--metrics"),
            "{addr:?}: {}",
            p.stderr.text()
        );
    }
    // The same check for the configuration file's key.
    let dir = temp_dir();
    std::fs::write(
        dir.join("configuration.json"),
        r#"{"server": {"metrics": "localhost"}}"#,
    )
    .unwrap();
    let mut p = Proc::spawn("hb-server", &["--defaults", "--port", "0"], &dir, None);
    assert_eq!(p.wait(PROMPT).code(), Some(2));
    assert!(
        p.stderr.text().contains("server.metrics"),
        "{}",
        p.stderr.text()
    );
    // A well-formed address that cannot be bound stops the start like a busy --port: exit 1.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let mut p = Proc::spawn_in_temp(
        "hb-server",
        &["--defaults", "--port", "0", "--metrics", &addr],
        None,
    );
    assert_eq!(p.wait(PROMPT).code(), Some(1));
    assert!(
        p.stderr
            .text()
            .contains(&format!("cannot serve metrics on {addr}")),
        "{}",
        p.stderr.text()
    );
}

engine_tests!(metrics_stop_with_the_server_within_a_second);
fn metrics_stop_with_the_server_within_a_second(engine: Engine) {
    let _w = Watchdog::new("metrics-shutdown", ms(30_000));
    let (mut srv, port) = start(engine, &[]);
    let _client = Peer::connect(srv.port);
    // A scraper stalled mid-request does not hold the shutdown up either.
    let mut stalled = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stalled.write_all(b"GET /metrics HTTP/1.1\r\n").unwrap();
    thread::sleep(ms(100));
    let t0 = Instant::now();
    srv.proc.signal("TERM");
    let status = srv.proc.wait(ms(3_000));
    let took = t0.elapsed();
    assert!(status.success(), "{status:?}");
    assert!(took < ms(1_000), "exited {took:?} after SIGTERM");
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the metrics port is closed"
    );
}

/// Runs `promtool ARGS` with `stdin`; `None` when promtool is not installed.
fn promtool(args: &[&str], stdin: &str) -> Option<std::process::Output> {
    let mut child = match Command::new("promtool")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => panic!("promtool: {e}"),
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    Some(child.wait_with_output().unwrap())
}

engine_tests!(promtool_accepts_the_scrape_and_the_alert_rules);
/// `promtool check metrics` on a scrape of a chat server that has seen some traffic, and
/// `promtool check rules` on deploy/prometheus-alerts.yml. Skipped (a failure under CI) when
/// promtool (Debian package `prometheus`) is missing.
fn promtool_accepts_the_scrape_and_the_alert_rules(engine: Engine) {
    let _w = Watchdog::new("metrics-promtool", ms(30_000));
    let (srv, port) = start(engine, &["--mode", "chat"]);
    let mut ann = join(srv.port, "ann");
    let mut bob = join(srv.port, "bob");
    ann.send(b"MSG hi\n");
    bob.expect("MSG ann hi", PROMPT);
    let s = wait_value(port, "hb_relay_messages_total", 1.0);
    let Some(out) = promtool(&["check", "metrics"], &s.0) else {
        skip(
            "metrics::promtool_accepts_the_scrape_and_the_alert_rules",
            "promtool is not installed (apt-get install prometheus)",
        );
        return;
    };
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics: {said}\nscrape:\n{}",
        s.0
    );
    let rules = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/prometheus-alerts.yml");
    let out = promtool(&["check", "rules", rules], "").unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.contains("SUCCESS: 3 rules found"),
        "promtool check rules: {said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

engine_tests!(with_a_broker_the_link_state_is_a_gauge);
/// `hb_broker_up` follows the Redis link down and up again; a message relayed through the
/// broker counts like one relayed locally.
fn with_a_broker_the_link_state_is_a_gauge(engine: Engine) {
    let _w = Watchdog::new("metrics-broker", ms(60_000));
    let Some(mut redis) = Redis::start("metrics::with_a_broker_the_link_state_is_a_gauge") else {
        return;
    };
    let url = redis.url();
    let (mut srv, port) = start(engine, &["--mode", "chat", "--broker", &url]);
    srv.log().wait_for("broker connected", PROMPT);
    wait_value(port, "hb_broker_up", 1.0);
    let mut ann = join(srv.port, "ann");
    let mut bob = join(srv.port, "bob");
    ann.send(b"MSG through redis\n");
    loop {
        let (_, l) = bob.line(PROMPT);
        if l == "MSG ann through redis" {
            break;
        }
    }
    let s = wait_value(port, "hb_relay_messages_total", 1.0);
    assert_eq!(
        s.value("hb_relay_bytes_total"),
        "MSG ann through redis\n".len() as f64
    );
    redis.kill();
    srv.log().wait_for("broker unreachable", PROMPT);
    wait_value(port, "hb_broker_up", 0.0);
    redis.restart().unwrap();
    wait_until(port, "hb_broker_up", |v| v == 1.0, "1 again (reconnected)");
}
