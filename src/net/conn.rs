//! One line-wire client connection on the server: what its two threads share.
//!
//! The data-exchange thread (reader) and the companion heartbeat thread (the only writer)
//! share exactly this: the connection's [`Session`] (all protocol state and decisions) behind
//! a mutex, the manual's "start heartbeat" switch, and a bell that wakes the companion.
//!
//! Also how a connection closes after its last line: [`linger`] (FIN, then discard input for
//! at most [`END_LINGER`]) on the connection's own thread, and [`Lingerer`], one shared thread
//! for refused newcomers, so closing with unread input never resets a client before it reads
//! its `END`.

use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::core::session::Session;
use crate::net::events::{Event, EventLog};
use crate::net::tls::ServerTls;
use crate::net::wait::{wait, PollFlags};

/// Shared state of one connection.
#[derive(Debug)]
pub struct Conn {
    /// Connection number, unique per server run.
    pub id: u64,
    /// The client's address.
    pub peer: SocketAddr,
    /// Always `Some` until drop, which closes it before reporting the connection closed.
    stream: Option<TcpStream>,
    log: EventLog,
    session: Mutex<Session>,
    /// The TLS layer (`--tls-cert`): the reader decrypts through it, the companion encrypts.
    /// Locked after the session, never the other way round.
    tls: Option<Mutex<ServerTls>>,
    /// Signalled (under the session lock) when the session's own queue drained enough for a
    /// reader held by it to go on, or the session ended.
    drained: Condvar,
    start_hb: AtomicBool,
    bell: Sender<()>,
    /// Threads still running for this connection; the last one out frees it.
    alive: AtomicU8,
}

impl Conn {
    /// A connection driven by `session`; `log` receives [`Event::Closed`] once the
    /// descriptor is really closed. The receiver is the companion's bell.
    pub fn new(
        id: u64,
        peer: SocketAddr,
        stream: TcpStream,
        session: Session,
        tls: Option<ServerTls>,
        log: EventLog,
    ) -> (Self, Receiver<()>) {
        let (bell, bell_rx) = crossbeam_channel::bounded(1);
        let conn = Self {
            id,
            peer,
            stream: Some(stream),
            log,
            session: Mutex::new(session),
            tls: tls.map(Mutex::new),
            drained: Condvar::new(),
            start_hb: AtomicBool::new(false),
            bell,
            alive: AtomicU8::new(2),
        };
        (conn, bell_rx)
    }

    /// The socket (both threads use it; only the companion writes).
    pub fn stream(&self) -> &TcpStream {
        self.stream
            .as_ref()
            .expect("the stream lives as long as the connection")
    }

    /// The protocol state. Held only for a few instructions at a time, never across I/O.
    pub fn session(&self) -> MutexGuard<'_, Session> {
        // A panic while holding the lock cannot leave the machine half-updated in a way that
        // matters more than losing the connection, so a poisoned lock is simply taken over.
        self.session.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The TLS layer, if the connection has one.
    pub fn tls(&self) -> Option<MutexGuard<'_, ServerTls>> {
        self.tls
            .as_ref()
            .map(|t| t.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Sends what the socket takes now of `iov` (through TLS if on), never blocking; see
    /// `send_now` in the server module. Companion only.
    pub fn send(&self, iov: &[std::io::IoSlice<'_>], last: bool) -> std::io::Result<usize> {
        match self.tls() {
            Some(mut tls) => tls.send(self.stream(), iov),
            None => crate::net::server::send_now(self.stream(), iov, last),
        }
    }

    /// Waits (releasing the session) until [`Conn::notify_drained`] or `wait` passed.
    pub fn wait_drained<'a>(
        &self,
        guard: MutexGuard<'a, Session>,
        wait: Duration,
    ) -> MutexGuard<'a, Session> {
        self.drained
            .wait_timeout(guard, wait)
            .unwrap_or_else(|p| p.into_inner())
            .0
    }

    /// Wakes a reader held by its own full queue. Call with the session locked.
    pub fn notify_drained(&self) {
        self.drained.notify_all();
    }

    /// The manual's "Starthb" switch: on while a heartbeat round should run.
    pub fn heartbeat_on(&self) -> bool {
        self.start_hb.load(Ordering::Acquire)
    }

    /// Turns the switch on or off; turning it on wakes the companion.
    pub fn set_heartbeat(&self, on: bool) {
        if self.start_hb.swap(on, Ordering::AcqRel) != on && on {
            self.ring();
        }
    }

    /// Wakes the companion thread (something was queued, or the session ended).
    pub fn ring(&self) {
        let _ = self.bell.try_send(());
    }

    /// One of the connection's threads is done; true for the last one, which frees it.
    pub fn release(&self) -> bool {
        self.alive.fetch_sub(1, Ordering::AcqRel) == 1
    }

    /// Shuts the socket down both ways: wakes a reader blocked in poll/read, fails any write.
    pub fn shutdown(&self) {
        let _ = self.stream().shutdown(Shutdown::Both);
    }
}

impl crate::net::relay::Member for Conn {
    fn peer(&self) -> SocketAddr {
        self.peer
    }
    fn session(&self) -> MutexGuard<'_, Session> {
        Conn::session(self)
    }
    fn wake(&self) {
        self.ring();
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        // Close first, so whoever sees "closed" in the log can rely on the descriptor being
        // free (tests count descriptors; operators watch for leaks).
        drop(self.stream.take());
        self.log.emit(Event::Closed {
            id: self.id,
            peer: self.peer,
        });
    }
}

/// How long a connection the server is closing keeps reading (and discarding) input after
/// its last line (`END ...`, or the classic `End Connection`).
///
/// Closing a socket while unread input is pending, or while the peer is still sending, makes
/// the kernel answer with a reset instead of a plain FIN, and a client busy writing (nc, a
/// script piping a file) then fails its write and never reads the `END` already waiting for
/// it. So the server shuts its write side (FIN after END), discards input until the client
/// closes too or this much time passed, and only then closes. Long enough for a client on a
/// loaded machine to read END and close; short enough to stay well inside the one-second
/// shutdown rule (END write timeout 200 ms + this < the 500 ms shutdown grace). A peer that
/// keeps sending does not extend it: the deadline is fixed when the linger starts.
pub const END_LINGER: Duration = Duration::from_millis(250);

/// How the linger after a connection's last line ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lingered {
    /// The client closed its side (or the socket was shut down locally): nothing is pending.
    Eof,
    /// The deadline passed first; whatever the client sends after this may draw a reset.
    Deadline,
    /// The socket failed (the client reset it): nothing left to protect.
    Error,
}

/// Sends FIN after what was written, then reads and discards input until EOF, an error or
/// `deadline`, whichever comes first. Never blocks past `deadline`.
pub fn linger(stream: &TcpStream, deadline: Instant) -> Lingered {
    let _ = stream.shutdown(Shutdown::Write);
    let mut buf = [0u8; 4096];
    loop {
        match drain_now(stream, &mut buf, deadline) {
            Some(done) => return done,
            None => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Lingered::Deadline;
                }
                let _ = wait(&[stream], PollFlags::IN, left);
            }
        }
    }
}

/// Reads and discards what is readable right now; `None` when nothing more is, before
/// `deadline`. Checks the deadline on every read, so a peer that floods cannot hold it here.
fn drain_now(stream: &TcpStream, buf: &mut [u8], deadline: Instant) -> Option<Lingered> {
    use rustix::io::Errno;
    use rustix::net::{recv, RecvFlags};
    loop {
        if Instant::now() >= deadline {
            return Some(Lingered::Deadline);
        }
        match recv(stream, &mut *buf, RecvFlags::DONTWAIT) {
            Ok((0, _)) => return Some(Lingered::Eof),
            Ok(_) => {}
            Err(Errno::INTR) => {}
            Err(Errno::AGAIN) => return None,
            Err(_) => return Some(Lingered::Error),
        }
    }
}

/// Most refused connections lingering at once; past it a refused socket closes at once.
/// Each one holds a descriptor (no thread), so a connect flood costs at most this many.
pub const MAX_REFUSED_LINGERS: usize = 64;
/// How often the lingering thread looks for new sockets while others linger.
const LINGER_TICK: Duration = Duration::from_millis(20);

/// Lingers refused connections ([`END_LINGER`]) on one thread, so the accept loop never
/// waits for a refused client and a flood of them never piles up threads.
#[derive(Debug)]
pub struct Lingerer {
    tx: Sender<(TcpStream, Instant)>,
    active: Arc<AtomicUsize>,
}

impl Lingerer {
    /// Starts the lingering thread; it exits once the `Lingerer` is dropped and nothing lingers.
    pub fn start() -> std::io::Result<Self> {
        let (tx, rx) = crossbeam_channel::unbounded::<(TcpStream, Instant)>();
        let active = Arc::new(AtomicUsize::new(0));
        let count = active.clone();
        std::thread::Builder::new()
            .name("hb-linger".into())
            .stack_size(64 * 1024)
            .spawn(move || run_lingerer(&rx, &count))?;
        Ok(Self { tx, active })
    }

    /// Closes `stream` after a bounded linger (its `END` must already be written): at once
    /// when [`MAX_REFUSED_LINGERS`] are already lingering. Never blocks.
    pub fn close(&self, stream: TcpStream) {
        let _ = stream.shutdown(Shutdown::Write);
        if self.active.fetch_add(1, Ordering::AcqRel) >= MAX_REFUSED_LINGERS {
            self.active.fetch_sub(1, Ordering::AcqRel);
            return;
        }
        let _ = stream.set_nonblocking(true);
        if self.tx.send((stream, Instant::now() + END_LINGER)).is_err() {
            self.active.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Connections lingering right now.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }
}

fn run_lingerer(rx: &Receiver<(TcpStream, Instant)>, active: &AtomicUsize) {
    let mut held: Vec<(TcpStream, Instant)> = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if held.is_empty() {
            match rx.recv() {
                Ok(item) => held.push(item),
                Err(_) => return,
            }
        }
        held.extend(rx.try_iter());
        let before = held.len();
        held.retain(|(s, deadline)| drain_now(s, &mut buf, *deadline).is_none());
        active.fetch_sub(before - held.len(), Ordering::AcqRel);
        let Some(next) = held.iter().map(|(_, d)| *d).min() else {
            continue;
        };
        let pause = next
            .saturating_duration_since(Instant::now())
            .min(LINGER_TICK);
        let socks: Vec<&TcpStream> = held.iter().map(|(s, _)| s).collect();
        let _ = wait(&socks, PollFlags::IN, pause);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        (l.accept().unwrap().0, c)
    }

    #[test]
    fn linger_sends_fin_and_ends_at_the_peers_close() {
        let (server, mut client) = pair();
        (&server).write_all(b"END quit\n").unwrap();
        client.write_all(b"still sending").unwrap();
        let t = Instant::now();
        let closer = std::thread::spawn(move || {
            let mut got = Vec::new();
            client.read_to_end(&mut got).unwrap();
            got
        });
        assert_eq!(linger(&server, t + Duration::from_secs(5)), Lingered::Eof);
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
        assert_eq!(closer.join().unwrap(), b"END quit\n");
    }

    #[test]
    fn a_peer_that_keeps_sending_does_not_extend_the_linger() {
        let (server, mut client) = pair();
        let flood = std::thread::spawn(move || {
            let chunk = [b'z'; 16 * 1024];
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(3) && client.write_all(&chunk).is_ok() {}
        });
        let t = Instant::now();
        assert_eq!(linger(&server, t + END_LINGER), Lingered::Deadline);
        let took = t.elapsed();
        assert!(
            took >= END_LINGER && took < END_LINGER + Duration::from_millis(200),
            "{took:?}"
        );
        drop(server);
        flood.join().unwrap();
    }
}
