//! `hb-client --probe` (CONTRACT section 10), with real processes: one line on stdout and
//! exit 0 against a live server (both engines, both modes, TLS, a token), exit 1 with the
//! reason against a stopped (SIGSTOP), an absent, a full, a classic-wire and an untrusted
//! server, each within its deadline; flags that do not apply are exit 2.

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use crate::support::*;

/// The probe's default deadline.
const TIMEOUT: Duration = Duration::from_secs(2);

/// What one probe run gave: its exit status, its stdout and stderr lines, and how long it
/// ran (from spawning it to its exit).
struct Ran {
    status: ExitStatus,
    stdout: Vec<String>,
    stderr: String,
    took: Duration,
}

impl Ran {
    /// The one line on stdout (asserting there is exactly one).
    fn line(&self) -> &str {
        assert_eq!(
            self.stdout.len(),
            1,
            "want one line; stdout: {:?}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        &self.stdout[0]
    }
}

/// Runs `hb-client --probe ARGS...` (without --defaults: a probe never prompts, and stdin
/// is left open, so a prompt would show on stderr or hang) to its end.
fn probe(args: &[&str]) -> Ran {
    let mut all = vec!["--probe"];
    all.extend_from_slice(args);
    let started = Instant::now();
    let mut p = Proc::spawn_in_temp("hb-client", &all, Some(""));
    let status = p.wait(TIMEOUT + PROMPT);
    let took = started.elapsed();
    Ran {
        status,
        stdout: p.stdout.seen.iter().map(|(_, l)| l.clone()).collect(),
        stderr: p.stderr.text(),
        took,
    }
}

/// Checks a healthy line: `healthy: ADDR answered PING in X ms (HELLO hb/1, mode=MODE)`.
fn assert_healthy(ran: &Ran, port: u16, mode: &str) {
    assert_eq!(
        ran.status.code(),
        Some(0),
        "{:?}\n{}",
        ran.stdout,
        ran.stderr
    );
    let line = ran.line();
    let rest = line
        .strip_prefix(&format!("healthy: 127.0.0.1:{port} answered PING in "))
        .unwrap_or_else(|| panic!("{line}"));
    let (rtt, tail) = rest.split_once(" ms ").unwrap_or_else(|| panic!("{line}"));
    let rtt: f64 = rtt.parse().unwrap_or_else(|_| panic!("{line}"));
    assert!((0.0..1000.0).contains(&rtt), "{line}");
    assert_eq!(tail, format!("(HELLO hb/1, mode={mode})"), "{line}");
    assert_eq!(ran.stderr, "", "a probe says nothing on stderr");
    assert!(ran.took < ms(1_000), "took {:?}", ran.took);
}

/// Checks an unhealthy line: exit 1 and exactly `unhealthy: 127.0.0.1:PORT: WHY`.
fn assert_unhealthy(ran: &Ran, port: u16, why: &str) {
    assert_eq!(
        ran.status.code(),
        Some(1),
        "{:?}\n{}",
        ran.stdout,
        ran.stderr
    );
    assert_eq!(ran.line(), format!("unhealthy: 127.0.0.1:{port}: {why}"));
    assert_eq!(ran.stderr, "", "a probe says nothing on stderr");
}

engine_tests!(a_live_server_is_healthy_in_both_modes);
/// Echo and chat (no JOIN needed); the server sees a clean goodbye (QUIT, `END quit`), not a
/// reset or a silent client.
fn a_live_server_is_healthy_in_both_modes(engine: Engine) {
    let _w = Watchdog::new("probe-live", ms(30_000));
    for mode in ["echo", "chat"] {
        let mut srv = Server::start(engine, &["--mode", mode]);
        let port = srv.port.to_string();
        let ran = probe(&["--port", &port]);
        assert_healthy(&ran, srv.port, mode);
        srv.log().wait_for("END quit sent", PROMPT);
        srv.log().wait_for(" closed", PROMPT);
        assert_eq!(srv.log().count("connected"), 1, "{}", srv.log().text());
        assert_eq!(srv.log().count("bad line"), 0, "{}", srv.log().text());
    }
}

/// Sends SIGCONT to a stopped process when dropped, so a failing assertion does not leave
/// it stopped.
struct Resume<'a>(&'a Proc);

impl Drop for Resume<'_> {
    fn drop(&mut self) {
        // Not `Proc::signal`, which asserts: a second panic while unwinding would abort.
        let _ = std::process::Command::new("kill")
            .args(["-CONT", &self.0.pid().to_string()])
            .status();
    }
}

engine_tests!(a_stopped_server_is_no_hello_at_the_deadline);
/// SIGSTOP: the kernel still completes the TCP handshake (the listen backlog), but no HELLO
/// ever comes. The probe says so at its deadline: the default 2 s, then a shorter --timeout.
fn a_stopped_server_is_no_hello_at_the_deadline(engine: Engine) {
    // Alone on the machine: the bound on the exit (deadline + 0.5 s) includes starting the
    // probe's process.
    let _x = exclusive();
    let _w = Watchdog::new("probe-stopped", ms(30_000));
    let mut srv = Server::start(engine, &[]);
    let port = srv.port.to_string();
    srv.proc.signal("STOP");
    let resume = Resume(&srv.proc);
    for (args, timeout, said) in [
        (vec!["--port", &port], TIMEOUT, "2s"),
        (
            vec!["--port", &port, "--timeout", "700ms"],
            ms(700),
            "700ms",
        ),
    ] {
        let ran = probe(&args);
        assert_unhealthy(&ran, srv.port, &format!("no HELLO within {said}"));
        assert!(
            ran.took >= timeout && ran.took < timeout + ms(500),
            "took {:?} for a deadline of {timeout:?}",
            ran.took
        );
    }
    drop(resume);
    // Resumed, it serves again (and the probes' connections were no harm).
    let ran = probe(&["--port", &port]);
    assert_healthy(&ran, srv.port, "echo");
    srv.log().wait_for("END quit sent", PROMPT);
}

#[test]
fn an_absent_server_is_connection_refused_at_once() {
    let _w = Watchdog::new("probe-absent", ms(15_000));
    // A port nobody listens on: bound, noted and closed again.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let ran = probe(&["--port", &port.to_string()]);
    assert_unhealthy(&ran, port, "connection refused");
    assert!(ran.took < ms(500), "took {:?}", ran.took);
}

fn fixture(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tls")
        .join(name)
        .display()
        .to_string()
}

engine_tests!(a_tls_server_is_healthy_with_its_ca_and_not_without);
/// `--ca` with the server's CA: healthy over TLS. Another CA: the TLS failure, exit 1. A
/// plaintext probe on the TLS port: not HELLO.
fn a_tls_server_is_healthy_with_its_ca_and_not_without(engine: Engine) {
    let _w = Watchdog::new("probe-tls", ms(30_000));
    let (cert, key) = (fixture("server.pem"), fixture("server.key"));
    let srv = Server::start(
        engine,
        &["--mode", "chat", "--tls-cert", &cert, "--tls-key", &key],
    );
    let port = srv.port.to_string();
    let ran = probe(&["--port", &port, "--ca", &fixture("ca.pem")]);
    assert_healthy(&ran, srv.port, "chat");

    let ran = probe(&["--port", &port, "--ca", &fixture("other-ca.pem")]);
    assert_eq!(ran.status.code(), Some(1), "{}", ran.stderr);
    let line = ran.line();
    assert!(
        line.starts_with(&format!("unhealthy: 127.0.0.1:{port}: TLS failed: ")),
        "{line}"
    );
    assert!(line.contains("unknown issuer"), "{line}");
    assert!(ran.took < ms(1_000), "took {:?}", ran.took);

    // A probe without TLS gets a TLS alert where HELLO should be.
    let ran = probe(&["--port", &port]);
    assert_eq!(ran.status.code(), Some(1), "{}", ran.stderr);
    assert!(
        ran.line()
            .starts_with(&format!("unhealthy: 127.0.0.1:{port}: sent '")),
        "{}",
        ran.line()
    );
    assert!(
        ran.line()
            .ends_with("', not HELLO (a TLS port? add --tls or --ca)"),
        "{}",
        ran.line()
    );
}

engine_tests!(a_full_server_is_its_end);
/// At `--max-conns`, the newcomer gets `END server-full` alone: that is the verdict.
fn a_full_server_is_its_end(engine: Engine) {
    let _w = Watchdog::new("probe-full", ms(15_000));
    let srv = Server::start(engine, &["--max-conns", "1"]);
    let mut first = Peer::connect(srv.port);
    first.line(PROMPT);
    let ran = probe(&["--port", &srv.port.to_string()]);
    assert_unhealthy(&ran, srv.port, "END server-full");
    assert!(ran.took < ms(1_000), "took {:?}", ran.took);
}

engine_tests!(a_server_with_auth_wants_the_token);
/// With --auth-secret the probe needs --token (AUTH goes first); without it the server ends
/// it `auth-failed`, and so does a token signed with another secret.
fn a_server_with_auth_wants_the_token(engine: Engine) {
    let _w = Watchdog::new("probe-auth", ms(30_000));
    let secret = "an HS256 secret of 32 bytes, ok!";
    let dir = temp_dir();
    std::fs::write(dir.join("secret"), secret).unwrap();
    let args = engine.with(&[
        "--defaults",
        "--port",
        "0",
        "--mode",
        "chat",
        "--auth-secret",
        "secret",
    ]);
    let srv = Server::start_raw(&args, &dir, None).keep_dir(dir);
    let port = srv.port.to_string();
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let token = |key: &str| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &serde_json::json!({"sub": "healthcheck", "exp": exp}),
            &jsonwebtoken::EncodingKey::from_secret(key.as_bytes()),
        )
        .unwrap()
    };
    let ran = probe(&["--port", &port, "--token", &token(secret)]);
    assert_healthy(&ran, srv.port, "chat");
    let ran = probe(&["--port", &port]);
    assert_unhealthy(&ran, srv.port, "END auth-failed");
    let ran = probe(&[
        "--port",
        &port,
        "--token",
        &token("another secret of 32 bytes, ok!!"),
    ]);
    assert_unhealthy(&ran, srv.port, "END auth-failed");
}

#[test]
fn a_classic_server_gives_itself_away() {
    let _w = Watchdog::new("probe-classic", ms(15_000));
    let srv = Server::start(Engine::Threads, &["--wire", "classic"]);
    let ran = probe(&["--port", &srv.port.to_string()]);
    // It speaks only when spoken to: the early PING after 1 s draws its `Echoing...`.
    assert_unhealthy(
        &ran,
        srv.port,
        "sent 'Echoing...', not HELLO (classic wire?)",
    );
    assert!(
        ran.took >= ms(1_000) && ran.took < TIMEOUT,
        "took {:?}",
        ran.took
    );
}

/// Flags that do not apply with --probe, and --timeout without it: exit 2 before connecting,
/// one line naming the flag.
#[test]
fn flags_that_do_not_apply_are_usage_errors() {
    let _w = Watchdog::new("probe-usage", ms(30_000));
    let does_nothing = |flag: &str| {
        format!(
            "hb-client: {flag} does nothing with --probe: the probe only checks HELLO and one \
             PING round trip"
        )
    };
    for (args, want) in [
        (&["--probe", "--every", "5"][..], does_nothing("--every")),
        (&["--probe", "--message", "hi"], does_nothing("--message")),
        (&["--probe", "--messages", "3"], does_nothing("--messages")),
        (&["--probe", "--chat"], does_nothing("--chat")),
        (
            &["--probe", "--chat", "--name", "ann"],
            does_nothing("--chat"),
        ),
        (&["--probe", "--block", "0"], does_nothing("--block")),
        (
            &["--probe", "--wire", "classic"],
            "hb-client: --probe works only on the line wire, not with --wire classic".into(),
        ),
        (
            &["--timeout", "2s"],
            "hb-client: --timeout does nothing without --probe (it is the probe's deadline)".into(),
        ),
        (
            &["--probe", "--timeout", "0"],
            "error: invalid value '0' for '--timeout <DUR>': '0' must be greater than zero".into(),
        ),
    ] {
        // Port 1: nothing listens there, so a probe that ran anyway would say so on stdout.
        let mut all = vec!["--port", "1"];
        all.extend_from_slice(args);
        let mut p = Proc::spawn_in_temp("hb-client", &all, Some(""));
        let st = p.wait(PROMPT);
        let err = p.stderr.text();
        assert_eq!(st.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.starts_with(&want),
            "{args:?}: want {want:?}, got:\n{err}"
        );
        assert_eq!(p.stdout.text(), "", "{args:?}");
    }
}

#[test]
fn help_explains_the_probe() {
    for flag in ["-h", "--help"] {
        let mut p = Proc::spawn_in_temp("hb-client", &[flag], None);
        assert_eq!(p.wait(PROMPT).code(), Some(0));
        let help = p.stdout.text();
        for want in [
            "--probe",
            "--timeout <DUR>",
            "[default: 2s]",
            "With --probe: 0 healthy, 1 not healthy",
        ] {
            assert!(help.contains(want), "{flag} lacks {want}:\n{help}");
        }
    }
}
