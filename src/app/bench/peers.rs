//! The processes under test: the real `hb-server`, `ncat --chat` and `redis-server`, each
//! started as a child on loopback and killed (SIGKILL) when dropped.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use super::BenchError;

/// How long a child may take to start listening.
const START_WAIT: Duration = Duration::from_secs(10);

/// What the server's event log said, as counted by the thread draining its stdout.
#[derive(Debug, Default, Clone)]
pub struct LogCounts {
    /// Lines read.
    pub lines: u64,
    /// `refused ...` lines, by their detail with digits blanked (at most 16 kinds).
    pub refused: BTreeMap<String, u64>,
    /// `END heartbeat-timeout sent` lines.
    pub hb_timeouts: u64,
    /// `END slow-consumer` lines (sent or not delivered).
    pub slow_consumers: u64,
    /// The first [`MAX_SLOW_LINES`] of those lines, with when hb-bench read them (the server's
    /// stdout is line-buffered and drained at once, so that is within a scheduling delay of
    /// when it was written).
    pub slow_consumer_lines: Vec<(String, Instant)>,
    /// hb-server's `slow consumer: held its senders back for MS ms ...` lines (the core's
    /// own account of how long a laggard held the room), when read.
    pub held_back_lines: Vec<(String, Instant)>,
    /// The last lines, for error messages.
    pub tail: Vec<String>,
    /// The last lines of stderr.
    pub stderr: Vec<String>,
}

/// Slow-consumer lines kept with their arrival time (the open-loop runs look for one
/// connection's among a few dozen).
pub const MAX_SLOW_LINES: usize = 1024;

/// The detail of a `refused ... (DETAIL)` line with numbers blanked, so kinds can be counted.
pub fn refusal_kind(line: &str) -> Option<String> {
    let start = line.find("END server-full (")? + "END server-full (".len();
    let detail = line[start..].strip_suffix(')').unwrap_or(&line[start..]);
    let mut kind = String::with_capacity(detail.len());
    for c in detail.chars() {
        if !c.is_ascii_digit() {
            kind.push(c);
        } else if !kind.ends_with('#') {
            kind.push('#');
        }
    }
    Some(kind)
}

/// The shell script that lowers RLIMIT_NOFILE to `$1` and becomes the program after it.
const LIMITED_EXEC: &str = "ulimit -n \"$1\" || exit 125; shift; exec \"$@\"";

/// A child process under test, killed on drop.
pub struct Peer {
    /// Short name for messages (`hb-server`, `ncat`, `redis-server`).
    pub name: &'static str,
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    log: Arc<Mutex<LogCounts>>,
    /// The command line, for the report.
    pub command: String,
}

/// Finds `name` next to this executable (where cargo puts all the binaries of the package).
pub fn sibling_binary(name: &str) -> Result<PathBuf, BenchError> {
    let exe = std::env::current_exe().map_err(|e| BenchError::Spawn {
        what: name.into(),
        source: e,
    })?;
    let path = exe.with_file_name(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(BenchError::Usage(format!(
            "{} not found next to {} (build it with `cargo build --release --bins`)",
            path.display(),
            exe.display()
        )))
    }
}

/// Whether this hb-server accepts `--stall` (the flag is newer than some builds).
pub fn hb_accepts_stall(bin: &Path) -> bool {
    Command::new(bin)
        .arg("--help")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("--stall"))
}

/// Finds `name` on PATH.
pub fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(name))
            .find(|f| f.is_file())
    })
}

/// A loopback port that was free a moment ago (for peers that cannot listen on port 0 and
/// report it).
fn free_port() -> Result<u16, BenchError> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| BenchError::Io {
        context: "finding a free port".into(),
        source: e,
    })?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| BenchError::Io {
            context: "finding a free port".into(),
            source: e,
        })
}

fn describe(bin: &Path, args: &[String]) -> String {
    let name = bin.file_name().map_or_else(
        || bin.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    std::iter::once(name)
        .chain(args.iter().map(|a| {
            if a.is_empty() {
                "''".to_owned()
            } else {
                a.clone()
            }
        }))
        .collect::<Vec<_>>()
        .join(" ")
}

impl Peer {
    /// Starts `hb-server` on 127.0.0.1, port 0, with `--defaults` and `extra` flags, in a
    /// scratch directory (so no stray configuration.json is read); waits for `listening on`.
    /// With `nofile`, its RLIMIT_NOFILE (soft and hard) is lowered to that first (a shell's
    /// `ulimit -n`, then `exec`: the same process id, and no unsafe `pre_exec`).
    pub fn hb_server_limited(
        bin: &Path,
        extra: &[&str],
        scratch: &Path,
        nofile: Option<u64>,
    ) -> Result<Self, BenchError> {
        let mut args: Vec<String> = ["--defaults", "--host", "127.0.0.1", "--port", "0"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut command = describe(bin, &args);
        let mut cmd = match nofile {
            None => {
                let mut c = Command::new(bin);
                c.args(&args);
                c
            }
            Some(n) => {
                command = format!("ulimit -n {n}; {command}");
                let mut c = Command::new("/bin/sh");
                c.args(["-c", LIMITED_EXEC, "sh", &n.to_string()])
                    .arg(bin)
                    .args(&args);
                c
            }
        };
        let mut child = cmd
            .current_dir(scratch)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| BenchError::Spawn {
                what: command.clone(),
                source: e,
            })?;
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(LogCounts::default()));
        let log3 = log.clone();
        // stderr carries settings and, if it comes to that, the reason for an abort.
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let mut l = log3.lock().unwrap_or_else(|p| p.into_inner());
                if l.stderr.len() >= 10 {
                    l.stderr.remove(0);
                }
                l.stderr.push(line);
            }
        });
        let (tx, rx) = crossbeam_channel::bounded::<SocketAddr>(1);
        let log2 = log.clone();
        // Drains stdout for the child's whole life: an undrained pipe would block the
        // server's event log and with it every connection thread.
        thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut line = String::new();
            loop {
                line.clear();
                match r.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                if let Some(i) = line.find("listening on ") {
                    if let Ok(a) = line[i + 13..].trim().parse() {
                        let _ = tx.try_send(a);
                    }
                }
                let mut l = log2.lock().unwrap_or_else(|p| p.into_inner());
                l.lines += 1;
                if line.contains("refused") {
                    if let Some(kind) = refusal_kind(line.trim_end()) {
                        if l.refused.len() < 16 || l.refused.contains_key(&kind) {
                            *l.refused.entry(kind).or_default() += 1;
                        }
                    }
                } else if line.contains("END heartbeat-timeout") {
                    l.hb_timeouts += 1;
                } else if line.contains(" slow consumer: ") {
                    if l.held_back_lines.len() < MAX_SLOW_LINES {
                        l.held_back_lines
                            .push((line.trim_end().to_owned(), Instant::now()));
                    }
                } else if line.contains("END slow-consumer") {
                    l.slow_consumers += 1;
                    if l.slow_consumer_lines.len() < MAX_SLOW_LINES {
                        l.slow_consumer_lines
                            .push((line.trim_end().to_owned(), Instant::now()));
                    }
                }
                if l.tail.len() >= 20 {
                    l.tail.remove(0);
                }
                l.tail.push(line.trim_end().to_owned());
            }
        });
        match rx.recv_timeout(START_WAIT) {
            Ok(addr) => Ok(Self {
                name: "hb-server",
                child,
                addr,
                log,
                command,
            }),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                let tail = log.lock().map(|l| l.tail.join("\n")).unwrap_or_default();
                Err(BenchError::Measurement(format!(
                    "{command} did not report `listening on` within {START_WAIT:?}: {tail}"
                )))
            }
        }
    }

    /// Starts a third-party peer listening on a free loopback port; waits until it accepts.
    fn external(
        name: &'static str,
        bin: &Path,
        args: Vec<String>,
        port: u16,
        greets: bool,
    ) -> Result<Self, BenchError> {
        let command = describe(bin, &args);
        let mut child = Command::new(bin)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| BenchError::Spawn {
                what: command.clone(),
                source: e,
            })?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let deadline = Instant::now() + START_WAIT;
        loop {
            if let Ok(mut probe) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
                if greets {
                    // ncat quits altogether ("getpeername ... failed") when a client leaves
                    // before it was accepted: wait for the greeting before hanging up.
                    let _ = probe.set_read_timeout(Some(Duration::from_secs(2)));
                    let _ = probe.read(&mut [0u8; 256]);
                }
                break;
            }
            if Instant::now() > deadline || matches!(child.try_wait(), Ok(Some(_))) {
                let _ = child.kill();
                let _ = child.wait();
                return Err(BenchError::Measurement(format!(
                    "{command} did not accept connections within {START_WAIT:?}"
                )));
            }
            thread::sleep(Duration::from_millis(5));
        }
        Ok(Self {
            name,
            child,
            addr,
            log: Arc::default(),
            command,
        })
    }

    /// Starts `ncat --chat` on loopback.
    pub fn ncat(bin: &Path) -> Result<Self, BenchError> {
        let port = free_port()?;
        // ncat allows 100 connections by default (fewer than the 1 → 100 relay needs).
        let args = ["--chat", "--max-conns", "1000", "-l", "127.0.0.1"]
            .iter()
            .map(|s| s.to_string())
            .chain([port.to_string()])
            .collect();
        Self::external("ncat", bin, args, port, true)
    }

    /// Starts `redis-server` on loopback with persistence off.
    pub fn redis(bin: &Path) -> Result<Self, BenchError> {
        let port = free_port()?;
        let args = [
            "--port".to_string(),
            port.to_string(),
            "--bind".into(),
            "127.0.0.1".into(),
            "--save".into(),
            String::new(),
            "--appendonly".into(),
            "no".into(),
            "--daemonize".into(),
            "no".into(),
        ]
        .into();
        Self::external("redis-server", bin, args, port, false)
    }

    /// Starts `nats-server` on loopback with `ping_interval` (the NATS term for its
    /// heartbeat) from a configuration file written to `scratch`.
    pub fn nats(bin: &Path, scratch: &Path, ping_interval: &str) -> Result<Self, BenchError> {
        let port = free_port()?;
        let conf = scratch.join(format!("nats-{port}.conf"));
        std::fs::write(&conf, nats_config(port, ping_interval)).map_err(|e| BenchError::Io {
            context: format!("writing {}", conf.display()),
            source: e,
        })?;
        let args = vec!["-c".to_string(), conf.display().to_string()];
        let mut peer = Self::external("nats-server", bin, args, port, true)?;
        peer.command = format!(
            "nats-server -c nats.conf (ping_interval: \"{}s\", port {port})",
            ping_interval
        );
        Ok(peer)
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the event log said so far.
    pub fn log(&self) -> LogCounts {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// `Some(status)` when the child has exited (or died).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// An error if the child is no longer running (it aborted or crashed).
    pub fn check_alive(&mut self, during: &str) -> Result<(), BenchError> {
        match self.exited() {
            None => Ok(()),
            Some(status) => {
                // The stderr thread may still be reading the last words.
                thread::sleep(Duration::from_millis(100));
                let log = self.log();
                Err(BenchError::Measurement(format!(
                    "{} exited during {during}: {status}; stderr: {}; last log lines:\n{}",
                    self.name,
                    log.stderr.join(" | "),
                    log.tail[log.tail.len().saturating_sub(4)..].join("\n")
                )))
            }
        }
    }

    /// Kills the child (SIGKILL) and reaps it. No measurement looks at how a peer shuts
    /// down, so it is not asked to: a graceful stop (SIGTERM: `END server-shutdown` to every
    /// client, threads joined) took 0.7 s for a thread-engine server whose 8,000 clients had
    /// just closed, and hb-bench's closing them first another second; killed first, the
    /// server's sockets close in the kernel and the whole teardown takes 0.4 s.
    pub fn stop(&mut self) {
        if self.exited().is_some() {
            return;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// nats-server's configuration: loopback, `port`, a server PING every `ping_interval`
/// seconds (`ping_max` stays at its default, 2).
pub fn nats_config(port: u16, ping_interval: &str) -> String {
    format!("host: 127.0.0.1\nport: {port}\nping_interval: \"{ping_interval}s\"\n")
}

/// One Redis command in RESP: an array of bulk strings.
pub fn resp_command(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", parts.len()).into_bytes();
    for p in parts {
        out.extend_from_slice(format!("${}\r\n", p.len()).as_bytes());
        out.extend_from_slice(p);
        out.extend_from_slice(b"\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resp_encoding() {
        assert_eq!(
            resp_command(&[b"PUBLISH", b"bench", b"hi"]),
            b"*3\r\n$7\r\nPUBLISH\r\n$5\r\nbench\r\n$2\r\nhi\r\n"
        );
        assert_eq!(resp_command(&[b""]), b"*1\r\n$0\r\n\r\n");
    }

    #[test]
    fn refusal_kinds_blank_numbers() {
        let l = "2026-01-01T00:00:00Z refused 127.0.0.1:40000: END server-full (max-conns 6000 reached)";
        assert_eq!(refusal_kind(l).unwrap(), "max-conns # reached");
        let l = "t refused 127.0.0.1:1: END server-full (cannot start a thread: Resource temporarily unavailable (os error 11))";
        assert_eq!(
            refusal_kind(l).unwrap(),
            "cannot start a thread: Resource temporarily unavailable (os error #)"
        );
        assert_eq!(refusal_kind("t #1 connected"), None);
    }

    #[test]
    fn the_limit_applies_to_the_program_itself() {
        let out = Command::new("/bin/sh")
            .args(["-c", LIMITED_EXEC, "sh", "77", "/bin/sh", "-c", "ulimit -n"])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "77");
    }

    #[test]
    fn nats_pings_at_the_interval_asked() {
        assert_eq!(
            nats_config(4222, "10"),
            "host: 127.0.0.1\nport: 4222\nping_interval: \"10s\"\n"
        );
    }

    #[test]
    fn command_lines_quote_empty_arguments() {
        let d = describe(
            Path::new("/usr/bin/redis-server"),
            &["--save".into(), String::new()],
        );
        assert_eq!(d, "redis-server --save ''");
    }
}
