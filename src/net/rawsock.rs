//! A TCP echo server and client made only of raw socket syscalls through `rustix`
//! (socket, setsockopt, bind, listen, accept, recv, send, shutdown, poll); no `std::net`
//! socket type is used here. The address types are the plain values rustix re-exports.
//!
//! Nothing blocks forever: the accept loop polls with a short tick so it sees the stop flag,
//! and every connected socket has SO_RCVTIMEO / SO_SNDTIMEO set.

use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::fd::{AsFd, OwnedFd};
use rustix::io::Errno;
use rustix::net::{
    self, sockopt, AddressFamily, Ipv4Addr, RecvFlags, SendFlags, Shutdown, SocketAddrV4,
    SocketFlags, SocketType,
};
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// How long the accept loop waits before looking at the stop flag again.
const ACCEPT_TICK: Duration = Duration::from_millis(50);
/// A connection silent for this long is closed, so a vanished peer cannot pin a thread.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
const LISTEN_BACKLOG: i32 = 128;
const CHUNK: usize = 64 * 1024;

/// Counters of an [`EchoServer`] since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EchoCounts {
    /// Connections accepted.
    pub connections: u64,
    /// Bytes echoed back (counted after each successful send).
    pub bytes: u64,
}

#[derive(Default)]
struct Counters {
    connections: AtomicU64,
    bytes: AtomicU64,
}

/// A running echo server: one accept thread plus one thread per connection.
/// Dropping it stops accepting; open connections finish on their own (EOF or idle timeout).
pub struct EchoServer {
    addr: SocketAddrV4,
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
    accept_thread: Option<JoinHandle<()>>,
}

impl EchoServer {
    /// Binds `host:port` (port 0 picks a free one) with SO_REUSEADDR, listens, and starts
    /// the accept thread. Connections idle for [`DEFAULT_IDLE_TIMEOUT`] are closed.
    pub fn start(host: Ipv4Addr, port: u16) -> io::Result<EchoServer> {
        EchoServer::start_with(host, port, DEFAULT_IDLE_TIMEOUT)
    }

    /// Like [`EchoServer::start`] with a chosen per-connection idle timeout.
    pub fn start_with(host: Ipv4Addr, port: u16, idle_timeout: Duration) -> io::Result<EchoServer> {
        let listener = new_socket()?;
        // Lets a restarted server rebind at once while old connections sit in TIME_WAIT.
        sockopt::set_socket_reuseaddr(&listener, true)?;
        net::bind(&listener, &SocketAddrV4::new(host, port))?;
        net::listen(&listener, LISTEN_BACKLOG)?;
        let addr = SocketAddrV4::try_from(net::getsockname(&listener)?)
            .map_err(|_| io::Error::other("bound address is not IPv4"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(Counters::default());
        let accept_thread = {
            let stop = Arc::clone(&stop);
            let counters = Arc::clone(&counters);
            thread::Builder::new()
                .name(format!("echo-accept-{}", addr.port()))
                .spawn(move || accept_loop(listener, &stop, &counters, idle_timeout))?
        };
        Ok(EchoServer {
            addr,
            stop,
            counters,
            accept_thread: Some(accept_thread),
        })
    }

    /// The address actually bound (the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddrV4 {
        self.addr
    }

    /// The port actually bound.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Counters so far.
    pub fn counts(&self) -> EchoCounts {
        EchoCounts {
            connections: self.counters.connections.load(Ordering::SeqCst),
            bytes: self.counters.bytes.load(Ordering::SeqCst),
        }
    }

    /// Stops accepting and waits (at most about one poll tick) for the accept thread.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(handle) = self.accept_thread.take() {
            let _ = handle.join();
        }
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn new_socket() -> io::Result<OwnedFd> {
    Ok(net::socket_with(
        AddressFamily::INET,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )?)
}

fn accept_loop(listener: OwnedFd, stop: &AtomicBool, counters: &Arc<Counters>, idle: Duration) {
    let tick = Timespec::try_from(ACCEPT_TICK).unwrap_or(Timespec {
        tv_sec: 0,
        tv_nsec: 50_000_000,
    });
    while !stop.load(Ordering::SeqCst) {
        let mut fds = [PollFd::new(&listener, PollFlags::IN)];
        match poll(&mut fds, Some(&tick)) {
            Ok(0) | Err(Errno::INTR) => continue,
            Ok(_) => {}
            Err(e) => {
                eprintln!("echo: poll failed, server stops: {}", io::Error::from(e));
                return;
            }
        }
        match net::accept_with(&listener, SocketFlags::CLOEXEC) {
            Ok(conn) => {
                counters.connections.fetch_add(1, Ordering::SeqCst);
                let counters = Arc::clone(counters);
                let spawned = thread::Builder::new()
                    .name("echo-conn".into())
                    .spawn(move || serve_connection(conn, &counters, idle));
                if let Err(e) = spawned {
                    eprintln!("echo: cannot spawn connection thread: {e}");
                }
            }
            // The peer gave up between poll and accept: nothing to do.
            Err(Errno::CONNABORTED | Errno::INTR | Errno::AGAIN) => {}
            Err(e) => {
                eprintln!("echo: accept failed: {}", io::Error::from(e));
                // Out of descriptors and the like: back off one tick instead of spinning.
                thread::sleep(ACCEPT_TICK);
            }
        }
    }
}

/// Echoes until EOF, error or idle timeout, then closes. Counting happens before the
/// close, so a client that has read to EOF sees the counters already updated.
fn serve_connection(conn: OwnedFd, counters: &Counters, idle: Duration) {
    if let Err(e) = set_timeouts(&conn, idle) {
        eprintln!("echo: setsockopt failed: {e}");
        return;
    }
    let mut buf = vec![0u8; CHUNK];
    loop {
        match net::recv(&conn, &mut buf[..], RecvFlags::empty()) {
            Ok((0, _)) => break,
            Ok((n, _)) => {
                if send_all(&conn, &buf[..n]).is_err() {
                    break;
                }
                counters.bytes.fetch_add(n as u64, Ordering::SeqCst);
            }
            Err(Errno::INTR) => continue,
            // Reset, idle timeout or any other failure: this connection is done.
            Err(_) => break,
        }
    }
    let _ = net::shutdown(&conn, Shutdown::Both);
}

fn set_timeouts(fd: impl AsFd, timeout: Duration) -> io::Result<()> {
    sockopt::set_socket_timeout(&fd, sockopt::Timeout::Recv, Some(timeout))?;
    sockopt::set_socket_timeout(&fd, sockopt::Timeout::Send, Some(timeout))?;
    Ok(())
}

/// Sends all of `data`. MSG_NOSIGNAL turns a vanished peer into EPIPE instead of SIGPIPE.
fn send_all(fd: impl AsFd, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        match net::send(&fd, data, SendFlags::NOSIGNAL) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Connects to `addr`, sends `data`, half-closes, reads everything back until the server
/// closes, and closes. Each connect, send and recv is bounded by `timeout`.
///
/// Sending and receiving run on two threads so a payload larger than the socket buffers
/// cannot deadlock with the server blocked on echoing to a client that is not reading.
pub fn echo_roundtrip(addr: SocketAddrV4, data: &[u8], timeout: Duration) -> io::Result<Vec<u8>> {
    let sock = new_socket()?;
    set_timeouts(&sock, timeout)?;
    loop {
        match net::connect(&sock, &addr) {
            Ok(()) => break,
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    let received = thread::scope(|scope| {
        let writer = scope.spawn(|| -> io::Result<()> {
            send_all(&sock, data)?;
            net::shutdown(&sock, Shutdown::Write)?;
            Ok(())
        });
        let read = read_to_eof(&sock, data.len());
        let wrote = writer
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("sender thread panicked")));
        wrote.and(read)
    })?;
    if received.len() != data.len() {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("sent {} bytes, got {} back", data.len(), received.len()),
        ));
    }
    Ok(received)
}

fn read_to_eof(fd: impl AsFd, expected: usize) -> io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(expected);
    let mut buf = vec![0u8; CHUNK];
    loop {
        match net::recv(&fd, &mut buf[..], RecvFlags::empty()) {
            Ok((0, _)) => return Ok(out),
            Ok((n, _)) => out.extend_from_slice(&buf[..n]),
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// Connects to `addr` and returns the raw socket, with `timeout` on every send and recv.
/// Tests use it to play misbehaving clients.
pub fn connect(addr: SocketAddrV4, timeout: Duration) -> io::Result<OwnedFd> {
    let sock = new_socket()?;
    set_timeouts(&sock, timeout)?;
    net::connect(&sock, &addr)?;
    Ok(sock)
}

/// Sends all of `data` on a connected socket (see [`connect`]).
pub fn write_all(fd: impl AsFd, data: &[u8]) -> io::Result<()> {
    send_all(fd, data)
}

/// Receives exactly `len` bytes from a connected socket (see [`connect`]).
pub fn read_exact(fd: impl AsFd, len: usize) -> io::Result<Vec<u8>> {
    let mut out = vec![0u8; len];
    let mut filled = 0;
    while filled < len {
        match net::recv(&fd, &mut out[filled..], RecvFlags::empty()) {
            Ok((0, _)) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok((n, _)) => filled += n,
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(5);

    #[test]
    fn echoes_and_counts() {
        let server = EchoServer::start(Ipv4Addr::LOCALHOST, 0).unwrap();
        assert_ne!(server.port(), 0);
        let back = echo_roundtrip(server.local_addr(), b"hello world", T).unwrap();
        assert_eq!(back, b"hello world");
        assert_eq!(
            server.counts(),
            EchoCounts {
                connections: 1,
                bytes: 11
            }
        );
        server.stop();
    }

    #[test]
    fn empty_payload_round_trips() {
        let server = EchoServer::start(Ipv4Addr::LOCALHOST, 0).unwrap();
        assert_eq!(echo_roundtrip(server.local_addr(), b"", T).unwrap(), b"");
    }

    #[test]
    fn port_in_use_fails_and_reuseaddr_allows_restart() {
        let server = EchoServer::start(Ipv4Addr::LOCALHOST, 0).unwrap();
        let port = server.port();
        let err = EchoServer::start(Ipv4Addr::LOCALHOST, port)
            .err()
            .expect("second bind fails");
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        echo_roundtrip(server.local_addr(), b"x", T).unwrap();
        server.stop();
        // The finished connection leaves TIME_WAIT state behind; SO_REUSEADDR ignores it.
        let again = EchoServer::start(Ipv4Addr::LOCALHOST, port).unwrap();
        assert_eq!(echo_roundtrip(again.local_addr(), b"y", T).unwrap(), b"y");
    }

    #[test]
    fn stopped_server_refuses() {
        let server = EchoServer::start(Ipv4Addr::LOCALHOST, 0).unwrap();
        let addr = server.local_addr();
        server.stop();
        assert!(echo_roundtrip(addr, b"z", T).is_err());
    }
}
