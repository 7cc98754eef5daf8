//! The hb-node driver: reads Maelstrom lines, feeds the pure [`Node`] with the clock,
//! writes every message as one Python-`json.dumps`-style line, and owns the real
//! raw-syscall echo server behind [`EchoBackend`].

use crate::core::node::{EchoBackend, EchoStats, Message, Node, Output};
use crate::net::rawsock::{echo_roundtrip, EchoServer};
use crossbeam_channel::RecvTimeoutError;
use rustix::net::{Ipv4Addr, SocketAddrV4};
use std::fmt;
use std::io::{self, BufRead, Write};
use std::thread;
use std::time::{Duration, Instant};

/// Bound on each connect, send and recv of a `tcp_echo_send` round trip, so the node is
/// never stalled longer than this by its own echo server.
pub const ECHO_IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Settings of one hb-node run.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// How long an RPC waits for its reply before its callback fails (`--rpc-timeout`).
    pub rpc_timeout: Duration,
}

impl Default for NodeConfig {
    fn default() -> NodeConfig {
        NodeConfig {
            rpc_timeout: Duration::from_secs(10),
        }
    }
}

/// Why [`run`] stopped before stdin ended.
#[derive(Debug)]
pub enum NodeAppError {
    /// Reading stdin failed.
    Input(io::Error),
    /// Writing stdout failed (e.g. the reader went away).
    Output(io::Error),
}

impl fmt::Display for NodeAppError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NodeAppError::Input(e) => write!(f, "reading stdin: {e}"),
            NodeAppError::Output(e) => write!(f, "writing stdout: {e}"),
        }
    }
}

impl std::error::Error for NodeAppError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            NodeAppError::Input(e) | NodeAppError::Output(e) => Some(e),
        }
    }
}

/// The real echo backend: an [`EchoServer`] on 127.0.0.1 and raw-syscall round trips.
#[derive(Default)]
pub struct RawEcho {
    server: Option<EchoServer>,
}

impl EchoBackend for RawEcho {
    fn start(&mut self, port: u16) -> Result<u16, String> {
        let server = EchoServer::start(Ipv4Addr::LOCALHOST, port).map_err(|e| e.to_string())?;
        let bound = server.port();
        self.server = Some(server);
        Ok(bound)
    }

    fn roundtrip(&mut self, port: u16, data: &[u8]) -> Result<Vec<u8>, String> {
        echo_roundtrip(
            SocketAddrV4::new(Ipv4Addr::LOCALHOST, port),
            data,
            ECHO_IO_TIMEOUT,
        )
        .map_err(|e| e.to_string())
    }

    fn stats(&self) -> EchoStats {
        self.server
            .as_ref()
            .map(|s| {
                let c = s.counts();
                EchoStats {
                    total_connections: c.connections,
                    total_bytes: c.bytes,
                }
            })
            .unwrap_or_default()
    }
}

/// Runs a node until `input` ends: each line is one message, replies go to `output`,
/// notes to `log`. RPCs still pending at end of input are dropped.
///
/// Input is read on its own thread so RPC deadlines fire while stdin is quiet.
pub fn run<R, W, L>(
    input: R,
    mut output: W,
    mut log: L,
    config: &NodeConfig,
) -> Result<(), NodeAppError>
where
    R: BufRead + Send + 'static,
    W: Write,
    L: Write,
{
    let rpc_timeout_ms = u64::try_from(config.rpc_timeout.as_millis()).unwrap_or(u64::MAX);
    let mut node = Node::new(RawEcho::default(), rpc_timeout_ms);
    let lines = spawn_line_reader(input);
    let start = Instant::now();
    let clock = || u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
    loop {
        let next = match node.poll_timeout() {
            None => match lines.recv() {
                Ok(next) => next,
                Err(_) => break,
            },
            Some(deadline) => {
                let now = clock();
                if deadline <= now {
                    emit(node.handle_timeout(now), &mut output, &mut log)?;
                    continue;
                }
                match lines.recv_timeout(Duration::from_millis(deadline - now)) {
                    Ok(next) => next,
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            }
        };
        let line = next.map_err(NodeAppError::Input)?;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match Message::from_line(&line) {
            Ok(msg) => emit(node.handle(msg, clock()), &mut output, &mut log)?,
            Err(e) => {
                let shown = String::from_utf8_lossy(&line);
                let _ = writeln!(log, "hb-node: skipping line ({e}): {}", shown.trim_end());
            }
        }
    }
    if node.pending_rpcs() > 0 {
        let _ = writeln!(
            log,
            "hb-node: input ended with {} RPCs unanswered; dropping them",
            node.pending_rpcs()
        );
    }
    Ok(())
}

fn spawn_line_reader<R: BufRead + Send + 'static>(
    mut input: R,
) -> crossbeam_channel::Receiver<io::Result<Vec<u8>>> {
    let (tx, rx) = crossbeam_channel::unbounded();
    // Detached: at end of input it returns by itself; on an early exit it dies with the process.
    let _ = thread::Builder::new()
        .name("stdin-lines".into())
        .spawn(move || loop {
            let mut line = Vec::new();
            match input.read_until(b'\n', &mut line) {
                Ok(0) => return,
                Ok(_) => {
                    if tx.send(Ok(line)).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            }
        });
    rx
}

fn emit<W: Write, L: Write>(
    outputs: Vec<Output>,
    output: &mut W,
    log: &mut L,
) -> Result<(), NodeAppError> {
    if outputs.is_empty() {
        return Ok(());
    }
    for out in outputs {
        match out {
            Output::Send(msg) => {
                writeln!(output, "{}", msg.to_line()).map_err(NodeAppError::Output)?;
            }
            Output::Note(note) => {
                let _ = writeln!(log, "hb-node: {note}");
            }
        }
    }
    output.flush().map_err(NodeAppError::Output)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn run_lines(input: &str, config: &NodeConfig) -> (String, String) {
        let mut out = Vec::new();
        let mut log = Vec::new();
        run(
            Cursor::new(input.as_bytes().to_vec()),
            &mut out,
            &mut log,
            config,
        )
        .unwrap();
        (
            String::from_utf8(out).unwrap(),
            String::from_utf8(log).unwrap(),
        )
    }

    const INIT: &str = r#"{"src":"c0","dest":"n1","body":{"type":"init","msg_id":1,"node_id":"n1","node_ids":["n1"]}}"#;

    #[test]
    fn replies_in_python_format_and_notes_bad_lines_on_log() {
        let input = format!(
            "{INIT}\nnot json\n\n{{\"src\":\"c1\",\"dest\":\"n1\"}}\n{}\n",
            r#"{"src":"c1","dest":"n1","body":{"type":"echo","msg_id":2,"echo":"é"}}"#
        );
        let (out, log) = run_lines(&input, &NodeConfig::default());
        assert_eq!(
            out,
            concat!(
                r#"{"src": "n1", "dest": "c0", "body": {"type": "init_ok", "in_reply_to": 1, "msg_id": 0}}"#,
                "\n",
                r#"{"src": "n1", "dest": "c1", "body": {"type": "echo_ok", "echo": "\u00e9", "in_reply_to": 2, "msg_id": 1}}"#,
                "\n"
            )
        );
        assert_eq!(log.lines().count(), 2, "{log}");
        assert!(log.contains("not JSON"), "{log}");
        assert!(log.contains("body"), "{log}");
    }

    #[test]
    fn last_line_without_newline_is_handled() {
        let (out, _) = run_lines(INIT, &NodeConfig::default());
        assert!(out.contains("init_ok"));
    }

    #[test]
    fn pending_rpcs_are_dropped_at_end_of_input() {
        let input = format!(
            "{INIT}\n{}\n",
            r#"{"src":"c1","dest":"n1","body":{"type":"batch_echo","msg_id":2,"values":["x"]}}"#
        );
        let (out, log) = run_lines(&input, &NodeConfig::default());
        assert_eq!(out.lines().count(), 2);
        assert!(log.contains("1 RPCs unanswered"), "{log}");
    }

    /// Input that stays open until the test drops the sender, so a deadline can fire first.
    struct ChannelInput {
        rx: crossbeam_channel::Receiver<Vec<u8>>,
        buf: Vec<u8>,
    }

    impl io::Read for ChannelInput {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            if self.buf.is_empty() {
                match self.rx.recv() {
                    Ok(chunk) => self.buf = chunk,
                    Err(_) => return Ok(0),
                }
            }
            let n = out.len().min(self.buf.len());
            out[..n].copy_from_slice(&self.buf[..n]);
            self.buf.drain(..n);
            Ok(n)
        }
    }

    /// Shared writer so the test can watch output while `run` is still going.
    #[derive(Clone, Default)]
    struct SharedOut(
        std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
        Option<crossbeam_channel::Sender<()>>,
    );

    impl Write for SharedOut {
        fn write(&mut self, data: &[u8]) -> io::Result<usize> {
            self.0
                .lock()
                .map_err(|_| io::Error::other("poisoned"))?
                .extend_from_slice(data);
            Ok(data.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            if let Some(tx) = &self.1 {
                let _ = tx.send(());
            }
            Ok(())
        }
    }

    #[test]
    fn rpc_timeout_fires_while_input_is_quiet() {
        let (tx, rx) = crossbeam_channel::unbounded();
        let (flushed_tx, flushed) = crossbeam_channel::unbounded();
        let out = SharedOut(Default::default(), Some(flushed_tx));
        let seen = out.0.clone();
        let input = io::BufReader::new(ChannelInput {
            rx,
            buf: Vec::new(),
        });
        let config = NodeConfig {
            rpc_timeout: Duration::from_millis(50),
        };
        let runner = thread::spawn(move || run(input, out, io::sink(), &config));
        tx.send(format!("{INIT}\n").into_bytes()).unwrap();
        tx.send(
            br#"{"src":"c1","dest":"n1","body":{"type":"batch_echo","msg_id":2,"values":["x"]}}
"#
            .to_vec(),
        )
        .unwrap();
        // Three flushes: init_ok, the echo RPC, then the timeout error, all before EOF.
        for _ in 0..3 {
            flushed
                .recv_timeout(Duration::from_secs(5))
                .expect("output within 5 s");
        }
        drop(tx);
        runner.join().unwrap().unwrap();
        let text = String::from_utf8(seen.lock().unwrap().clone()).unwrap();
        let last = text.lines().last().unwrap();
        assert_eq!(
            last,
            r#"{"src": "n1", "dest": "c1", "body": {"type": "error", "in_reply_to": 2, "code": 0, "text": "no reply to msg_id 1 within 50 ms", "msg_id": 2}}"#
        );
    }
}
