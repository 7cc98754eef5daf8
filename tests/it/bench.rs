//! `hb-bench --smoke`: every measurement runs in a tiny version against the real hb-server
//! and reports numbers; the report goes to a temp dir, never into the tree. The verdict logic
//! itself (median, straddle -> inconclusive, refusals required) is unit-tested in
//! src/app/bench/verdict.rs.

use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::support::{exclusive, temp_dir, Watchdog};

/// Runs hb-bench in `dir` with `args` (and `PATH` replaced when `path` is given), killing it
/// if it overstays `limit`. Returns its status, stdout and stderr.
fn run_bench(
    dir: &Path,
    args: &[&str],
    path: Option<&Path>,
    limit: Duration,
) -> (ExitStatus, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hb-bench"));
    cmd.args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(p) = path {
        cmd.env("PATH", p);
    }
    let started = Instant::now();
    let mut child = cmd.spawn().expect("hb-bench starts");
    // Drain the pipes on threads so a chatty child never blocks on a full pipe.
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut out, &mut s);
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut err, &mut s);
        s
    });
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "hb-bench {args:?} still running after {limit:?}:\n{}",
                err_t.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (status, out_t.join().unwrap(), err_t.join().unwrap())
}

#[test]
fn smoke_run_reports_numbers_for_every_measurement() {
    let _x = exclusive();
    let _w = Watchdog::new("bench-smoke", Duration::from_secs(120));
    let dir = temp_dir();
    let out = dir.path().join("BENCHMARKS.md");
    let (status, stdout, stderr) = run_bench(
        dir.path(),
        &["--smoke", "--out", out.to_str().unwrap()],
        None,
        Duration::from_secs(100),
    );
    assert!(
        status.success(),
        "hb-bench failed ({status}):\n{stdout}\n{stderr}"
    );
    for n in 1..=9 {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(&format!("[{n}] ")))
            .unwrap_or_else(|| panic!("no numbers for measurement {n}:\n{stdout}\n{stderr}"));
        assert!(line.contains('='), "measurement {n} has no numbers: {line}");
    }
    let report = std::fs::read_to_string(&out).expect("report written to --out");
    for title in [
        "## 1. Connections held",
        "## 2. Heartbeat overhead",
        "## 3. Ghost detection latency",
        "## 4. Echo round trip",
        "## 5. Relay throughput",
        "## 6. Relay open-loop",
        "## 7. History and resume",
        "## 8. The cluster through Redis",
        "## 9. TLS: what it costs",
    ] {
        assert!(report.contains(title), "report lacks {title}:\n{report}");
    }
    // The header says how the numbers were taken, and a one-repeat run judges nothing.
    assert!(
        report.contains(
            "- repeats and windows: 1 repeat(s) of every measurement (**verdicts are not judged**"
        ),
        "header lacks repeats:\n{report}"
    );
    assert!(report.contains("- machine: ") && report.contains("- date: "));
    assert!(
        !report.contains("**met**") && !report.contains("**inconclusive**"),
        "a one-repeat run passed judgement:\n{report}"
    );
    assert!(report.contains("not judged (1 repeat; a verdict needs at least 3)"));
    // The smoke plan pushes the servers past --max-conns: the ceiling was exercised.
    assert!(
        report.contains(
            "A held connection still answered `PING` after the refusals, per repeat: yes."
        ),
        "the server did not keep serving after refusing:\n{report}"
    );
    // Relay: sequence numbers checked per receiver; hb-server loses nothing to a reader
    // that keeps reading.
    assert!(report.contains("| messages/s | p50 µs | p99 µs | gaps | lost |"));
    for row in report
        .lines()
        .filter(|l| l.starts_with("| hb-server --mode chat (threads) | 10 |"))
    {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        assert_eq!((cells[7], cells[8]), ("0", "0"), "gaps/lost in {row}");
    }
    // Open loop: a tiny 1 → 1 against hb-server only (machinery, not speed: hb-bench itself
    // fails the smoke run when the publisher sent nothing or a receiver that was not ended
    // got nothing).
    assert!(
        report.contains("| hb-server --mode chat (threads) | 1 | "),
        "no open-loop 1 → 1 row:\n{report}"
    );
    // Issue 12: both engines side by side (the event engine's rows SKIPPED, visibly, by a
    // build without `--engine`), nats-server beside the idle heartbeats, a trivial echo
    // server beside the echo, and a fixed-rate relay.
    // Smoke runs the event engine in measurements 4, 7 and 9 only, when the build has it.
    let events_skipped = report
        .contains("| hb-server (events) | - | **SKIPPED**: this hb-server has no `--engine` flag");
    let events_rows = report.contains("| hb-server (events) | 1 | ");
    assert!(
        events_skipped || events_rows,
        "no event-engine echo row, measured or SKIPPED:\n{report}"
    );
    assert!(
        report.contains("| hb-server (events) | **SKIPPED**: "),
        "no visible SKIPPED event-engine row in the ghost table:\n{report}"
    );
    assert!(
        report.contains("| nats-server | 50 | ") || report.contains("- nats-server: **SKIPPED**"),
        "no nats-server row:\n{report}"
    );
    assert!(report.contains("| trivial blocking echo (in hb-bench) | 1 | "));
    // Issue 13: 1,000 missed messages replayed to a resuming member, checked (hb-bench fails
    // the run otherwise), on both engines when the build has the event engine.
    assert!(
        report.contains("| hb-server (threads) | 1000 | "),
        "no resume row:
{report}"
    );
    assert_eq!(
        report.matches(" | passed in 1 of 1 |").count(),
        if events_skipped { 1 } else { 2 },
        "the replay check did not pass on every engine:
{report}"
    );
    assert!(report.contains("| hb-server --mode chat (threads) | 10 | fixed 2,000 msg/s | "));
    assert!(
        !report.contains("| ncat --chat | 1 | "),
        "smoke runs hb-server only"
    );
    // Issue 14: one node against the same through Redis and two nodes on one Redis; at the
    // fixed rate nothing is lost, duplicated or reordered (hb-bench fails the run otherwise).
    let cluster_rows: Vec<&str> = report
        .lines()
        .filter(|l| l.starts_with("| hb-server (threads) | ("))
        .collect();
    assert!(
        cluster_rows
            .iter()
            .any(|l| l.contains("| (a) one node, memory broker | ")),
        "no cluster baseline row:\n{report}"
    );
    let with_redis = report.contains("| hb-server (threads) | (c) two nodes, one Redis | ");
    let redis_skipped =
        report.contains("| hb-server (threads) | (c) two nodes, one Redis | **SKIPPED**");
    assert!(
        with_redis || redis_skipped,
        "no two-node row, measured or SKIPPED:\n{report}"
    );
    // Issue 15: plain against TLS on the same harness. The TLS figures are there and
    // positive (memory per connection, server CPU per handshake, deliveries/s and the ratio
    // to plain, server CPU per delivery), and every handshake was a full one.
    let tls_line = stdout
        .lines()
        .find(|l| l.starts_with("[9] "))
        .expect("checked above");
    for key in [
        "tls_kib_per_conn",
        "tls_cpu_us_per_conn",
        "tls_deliveries_per_s",
        "tls_cpu_s_per_m_deliveries",
        "tls_vs_plain_deliveries",
        "plain_deliveries_per_s",
    ] {
        let value: f64 = tls_line
            .split(", ")
            .find_map(|kv| kv.rsplit(": ").next()?.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("no {key} in {tls_line}"))
            .parse()
            .unwrap_or_else(|e| panic!("{key} in {tls_line}: {e}"));
        assert!(value > 0.0, "{key}={value} in {tls_line}");
    }
    assert!(
        report.contains("| hb-server (threads) | TLS | "),
        "no TLS row:\n{report}"
    );
    // 50 clients per engine (smoke runs the event engine here too, when the build has it).
    let handshakes = if events_skipped { 50 } else { 100 };
    assert!(
        report.contains(&format!("full handshakes: {handshakes} of {handshakes} ")),
        "resumed handshakes, or an engine missing:\n{report}"
    );
    for svg in [
        "connections",
        "heartbeat",
        "detection",
        "echo",
        "relay",
        "relay-open",
        "resume",
        "cluster-latency",
        "cluster-throughput",
        "tls",
    ] {
        let p = dir.path().join("bench").join(format!("{svg}.svg"));
        assert!(p.is_file(), "{} missing", p.display());
    }
}

#[test]
fn three_repeats_give_a_verdict_from_their_median() {
    let _x = exclusive();
    let _w = Watchdog::new("bench-repeats", Duration::from_secs(90));
    let dir = temp_dir();
    let out = dir.path().join("B.md");
    let (status, stdout, stderr) = run_bench(
        dir.path(),
        &[
            "--smoke",
            "--repeats",
            "3",
            "--only",
            "3",
            "--out",
            out.to_str().unwrap(),
        ],
        None,
        Duration::from_secs(80),
    );
    assert!(status.success(), "{status}:\n{stdout}\n{stderr}");
    assert_eq!(stderr.matches("-- repeat ").count(), 3, "{stderr}");
    let report = std::fs::read_to_string(&out).unwrap();
    assert!(report.contains("- repeats and windows: 3 repeat(s) of every measurement;"));
    // 20 ghosts closed in every repeat: a single value, not a range.
    assert!(
        report.contains("\n| hb-server (threads) | 20 | 20 | 20 | 0 | "),
        "{report}"
    );
    let targets = report
        .lines()
        .find(|l| l.starts_with("- hb-server (threads): all closed: "))
        .unwrap_or_else(|| panic!("no targets line:\n{report}"));
    let judged = ["— **met**", "— **not met**", "— **inconclusive** ("];
    assert_eq!(
        targets.matches("— **").count(),
        3,
        "all three targets judged: {targets}"
    );
    assert!(judged.iter().any(|j| targets.contains(j)), "{targets}");
    assert!(!targets.contains("not judged"), "{targets}");
}

#[test]
fn a_missing_peer_is_a_visible_skipped_row() {
    let _x = exclusive();
    let _w = Watchdog::new("bench-skipped", Duration::from_secs(60));
    let dir = temp_dir();
    let empty = dir.path().join("empty-path");
    std::fs::create_dir_all(&empty).unwrap();
    let out = dir.path().join("B.md");
    // hb-server is found next to hb-bench; ncat and redis-server only on PATH.
    let (status, stdout, stderr) = run_bench(
        dir.path(),
        &["--smoke", "--only", "5", "--out", out.to_str().unwrap()],
        Some(&empty),
        Duration::from_secs(50),
    );
    assert!(status.success(), "{status}:\n{stdout}\n{stderr}");
    assert!(stderr.contains("ncat --chat: SKIPPED: `ncat` not on PATH (`apt-get install ncat`)"));
    let report = std::fs::read_to_string(&out).unwrap();
    for (peer, bin) in [
        ("ncat --chat", "ncat"),
        ("redis PUBLISH/SUBSCRIBE", "redis-server"),
    ] {
        for run in ["windowed", "windowed + stuck reader (+1)"] {
            let row = format!(
                "| {peer} | 10 | {run} | **SKIPPED**: `{bin}` not on PATH (`apt-get install {bin}`) |"
            );
            assert!(report.contains(&row), "no row {row}:\n{report}");
        }
    }
    assert!(report.contains(
        "- 1→10: hb-server (threads) / ncat --chat: SKIPPED (`ncat` not on PATH (`apt-get install ncat`)) (target ≥ 1× — not judged)"
    ), "{report}");
    // Our own server's rows are still measured.
    assert!(report.contains("| hb-server --mode chat (threads) | 10 | windowed | "));
}

#[test]
fn zero_repeats_is_a_usage_error() {
    let dir = temp_dir();
    let (status, _, stderr) = run_bench(
        dir.path(),
        &["--smoke", "--repeats", "0"],
        None,
        Duration::from_secs(20),
    );
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--repeats"), "{stderr}");
}
