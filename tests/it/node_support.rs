//! Process harness for the hb-node / hb-echo tests: every wait is bounded by a watchdog,
//! and a dropped harness kills its child so a failing test never leaves one behind.

use crossbeam_channel::{Receiver, RecvTimeoutError};
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Longest any single wait may take before the test fails.
pub const WATCHDOG: Duration = Duration::from_secs(10);

/// Path of the hb-node binary cargo built for this test run.
pub const HB_NODE: &str = env!("CARGO_BIN_EXE_hb-node");
/// Path of the hb-echo binary cargo built for this test run.
pub const HB_ECHO: &str = env!("CARGO_BIN_EXE_hb-echo");

/// A child process with line-wise access to its stdout and a captured stderr.
pub struct Proc {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    stderr: Arc<Mutex<String>>,
    stderr_done: Receiver<()>,
}

impl Proc {
    /// Spawns `exe args...` with all three streams piped.
    pub fn spawn(exe: &str, args: &[&str]) -> Proc {
        let mut child = Command::new(exe)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {exe}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = crossbeam_channel::unbounded();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err_pipe = child.stderr.take().expect("piped stderr");
        let sink = Arc::clone(&stderr);
        // Dropped when the reader ends, which tells wait_exit that stderr is complete.
        let (done_tx, stderr_done) = crossbeam_channel::bounded::<()>(0);
        thread::spawn(move || {
            let _done = done_tx;
            let mut buf = [0u8; 4096];
            while let Ok(n) = err_pipe.read(&mut buf) {
                if n == 0 {
                    return;
                }
                if let Ok(mut s) = sink.lock() {
                    s.push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            }
        });
        Proc {
            stdin: child.stdin.take(),
            child,
            lines,
            stderr,
            stderr_done,
        }
    }

    /// Writes one line (a newline is added) to the child's stdin.
    pub fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|()| stdin.flush())
            .expect("write to child stdin");
    }

    /// Closes the child's stdin (EOF).
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// The next stdout line; `None` at EOF. Panics if nothing comes within the watchdog.
    pub fn next_line(&self) -> Option<String> {
        match self.lines.recv_timeout(WATCHDOG) {
            Ok(line) => Some(line),
            Err(RecvTimeoutError::Disconnected) => None,
            Err(RecvTimeoutError::Timeout) => panic!(
                "no stdout line within {WATCHDOG:?}; stderr so far:\n{}",
                self.stderr()
            ),
        }
    }

    /// The next stdout line, which must exist.
    pub fn line(&self) -> String {
        self.next_line().expect("stdout ended early")
    }

    /// The next stdout line parsed as JSON.
    pub fn json(&self) -> Value {
        let line = self.line();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("stdout not JSON ({e}): {line}"))
    }

    /// Everything the child wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// The child's process id.
    pub fn child(&self) -> &Child {
        &self.child
    }

    /// Waits for the child to exit (and its stderr to be fully captured); kills it and
    /// panics after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                let _ = self.stderr_done.recv_timeout(WATCHDOG);
                return status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                panic!(
                    "child did not exit within {timeout:?}; stderr:\n{}",
                    self.stderr()
                );
            }
            thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stdin = None;
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// Builds a Maelstrom line `{"src", "dest", "body"}` with compact JSON.
pub fn msg(src: &str, dest: &str, body: Value) -> String {
    serde_json::json!({"src": src, "dest": dest, "body": body}).to_string()
}

/// A started hb-node, already initialized as `n1`.
pub fn node(args: &[&str]) -> Proc {
    let mut p = Proc::spawn(HB_NODE, args);
    p.send(&msg(
        "c0",
        "n1",
        serde_json::json!({"type": "init", "msg_id": 1, "node_id": "n1", "node_ids": ["n1"]}),
    ));
    let ok = p.json();
    assert_eq!(ok["body"]["type"], "init_ok", "{ok}");
    p
}

/// Plays the Maelstrom network for node `n1`: every stdout message addressed to `n1` goes
/// back to its stdin; messages for anyone else are returned once `want` of them arrived.
/// `on_routed(count, proc)` runs after each routed message so tests can interleave input.
pub fn route(p: &mut Proc, want: usize, mut on_routed: impl FnMut(usize, &mut Proc)) -> Vec<Value> {
    let mut others = Vec::new();
    let mut routed = 0;
    while others.len() < want {
        let line = p.line();
        let value: Value = serde_json::from_str(&line).expect("stdout JSON");
        if value["dest"] == "n1" {
            p.send(&line);
            routed += 1;
            on_routed(routed, p);
        } else {
            others.push(value);
        }
    }
    others
}

/// The `listening on ADDR:PORT` port hb-echo printed.
pub fn listening_port(p: &Proc) -> u16 {
    let line = p.line();
    let addr = line
        .split("listening on ")
        .nth(1)
        .unwrap_or_else(|| panic!("unexpected first line: {line}"));
    addr.rsplit(':')
        .next()
        .and_then(|port| port.trim().parse().ok())
        .unwrap_or_else(|| panic!("no port in: {line}"))
}
