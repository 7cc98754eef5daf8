//! `hb-bench --quick --smoke`: every measurement runs in a tiny version against the real
//! hb-server and reports numbers; the report goes to a temp file, never into the tree.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{exclusive, temp_dir, Watchdog};

#[test]
fn smoke_run_reports_numbers_for_every_measurement() {
    let _x = exclusive();
    let _w = Watchdog::new("bench-smoke", Duration::from_secs(120));
    let dir = temp_dir();
    let out = dir.join("BENCHMARKS.md");
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_hb-bench"))
        .args(["--quick", "--smoke", "--out"])
        .arg(&out)
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("hb-bench starts");
    // Bounded wait: poll for exit, kill the run if it overstays.
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > Duration::from_secs(100) {
            let _ = child.kill();
            panic!("hb-bench --quick --smoke still running after 100 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        status.success(),
        "hb-bench failed ({status}):\n{stdout}\n{stderr}"
    );
    for n in 1..=5 {
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
    ] {
        assert!(report.contains(title), "report lacks {title}:\n{report}");
    }
    for svg in ["connections", "heartbeat", "detection", "echo", "relay"] {
        let p = dir.join("bench").join(format!("{svg}.svg"));
        assert!(p.is_file(), "{} missing", p.display());
    }
    let _ = std::fs::remove_dir_all(&dir);
}
