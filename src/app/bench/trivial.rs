//! The yardstick of the echo measurement: a trivial blocking echo server, one `std::net`
//! thread per connection, running inside hb-bench on threads of its own. It greets like
//! hb-server (`HELLO`, so the load generator admits the connection) and answers `MSG x`
//! with `ECHO x`: the least work a line-echo server can do, with no heartbeat, queue or log.
//!
//! ```text
//!   accept thread ── accept() ── spawns ──> one thread per connection:
//!                                            BufReader::read_until('\n') → write_all(reply)
//! ```

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};

/// Longest line a connection may send; a longer one ends the connection (bounded memory).
const MAX_LINE: usize = 64 * 1024;
/// Connections served at once; more are closed at once (bounded threads).
const MAX_CONNS: usize = 1024;

/// The reply to one line (without its `\n`): `MSG x` → `ECHO x\n`, anything else echoed.
pub fn reply(line: &[u8]) -> Vec<u8> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut out = Vec::with_capacity(line.len() + 2);
    match line.strip_prefix(b"MSG ") {
        Some(text) => {
            out.extend_from_slice(b"ECHO ");
            out.extend_from_slice(text);
        }
        None => out.extend_from_slice(line),
    }
    out.push(b'\n');
    out
}

/// A running trivial echo server on 127.0.0.1; stopped when dropped.
pub struct TrivialEcho {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

fn serve(stream: TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut w = stream.try_clone()?;
    w.write_all(b"HELLO trivial-echo\n")?;
    let mut r = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = Read::take(&mut r, MAX_LINE as u64).read_until(b'\n', &mut line)?;
        if n == 0 || line.last() != Some(&b'\n') {
            return Ok(()); // closed, or a line too long
        }
        line.pop();
        w.write_all(&reply(&line))?;
    }
}

impl TrivialEcho {
    /// Listens on a free loopback port and serves on threads of its own.
    pub fn start() -> io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let accept = thread::Builder::new()
            .name("trivial-echo".into())
            .spawn(move || {
                let live = Arc::new(std::sync::atomic::AtomicUsize::new(0));
                for s in listener.incoming() {
                    if stop2.load(Ordering::Relaxed) {
                        break;
                    }
                    let Ok(s) = s else { continue };
                    if live.load(Ordering::Relaxed) >= MAX_CONNS {
                        continue; // dropped: closed at once
                    }
                    live.fetch_add(1, Ordering::Relaxed);
                    let live = live.clone();
                    // A connection thread that cannot be created just closes its socket.
                    let _ = thread::Builder::new()
                        .name("trivial-echo-conn".into())
                        .spawn(move || {
                            let _ = serve(s);
                            live.fetch_sub(1, Ordering::Relaxed);
                        });
                }
            })?;
        Ok(Self {
            addr,
            stop,
            accept: Some(accept),
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for TrivialEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the blocking accept so it sees the flag. Connection threads end when their
        // clients close (hb-bench closes them all before dropping this).
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::time::Duration;

    #[test]
    fn replies_echo_msg_lines() {
        assert_eq!(reply(b"MSG ping"), b"ECHO ping\n");
        assert_eq!(reply(b"MSG ping\r"), b"ECHO ping\n");
        assert_eq!(reply(b"hello"), b"hello\n");
    }

    #[test]
    fn serves_a_connection_and_stops() {
        let srv = TrivialEcho::start().unwrap();
        let mut c = TcpStream::connect(srv.addr()).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.write_all(b"MSG a\nMSG b\n").unwrap();
        let want = b"HELLO trivial-echo\nECHO a\nECHO b\n";
        let mut got = vec![0u8; want.len()];
        c.read_exact(&mut got).unwrap();
        assert_eq!(got, want);
        drop(c);
        drop(srv);
    }
}
