//! The classic wire's server: two threads per client.
//!
//! ```text
//!            accept loop (Server::run, shared with the line wire)
//!                   │ admit: registers a ClassicConn, spawns two threads
//!      ┌────────────┴──────────────────────┐
//!  data-exchange thread               companion heartbeat thread
//!  owns the data socket               owns the heartbeat socket
//!   poll(data, bell)                   connects back to (client IP, client.port),
//!   one read (≤ 1024) → handle_rx        retrying every 50 ms for up to 2 s
//!     → "Echoing..." + those bytes     poll(heartbeat, bell) until the core's deadline
//!   EOF → end(ClientClosed)            drain replies → handle_rx
//!   end set → "End Connection"?        Heartbeat::poll → "heartbeat" / end(HeartbeatTimeout)
//!     close, ring the companion        end set → "End Connection"?, close, ring the reader
//! ```
//! Each socket has exactly one writer: the thread that owns it. The two threads share the
//! [`Heartbeat`] core behind a mutex and the first reason anyone gave for ending
//! ([`ClassicEnd`]); each sleeps in poll(2) on its socket and an eventfd "bell" the other rings,
//! so every wait is bounded by the core's next deadline and either side can end both at once.
//!
//! The protocol's decisions are in [`crate::core::classic`]: what a heartbeat action means with
//! the heartbeat socket absent, open or closed ([`HeartbeatStep`]), on which sockets `End
//! Connection` goes ([`ClassicEnd::end_connection_on`]), when the connect-back is tried and
//! given up ([`ConnectBackAttempts`]), and the echo's bytes. The threads here read, write, wait
//! and log; what is left to them is naming what their own I/O saw (end of file or a read error:
//! the client closed; a failed echo or heartbeat write: `DataWriteFailed`, `HeartbeatLost`).
//!
//! Fixed flaws of the original: a failed connect-back is logged and the client is still closed
//! after idle + count * interval of silence (the core keeps its schedule, there is just no
//! socket to send on); heartbeat replies are read as they arrive and the socket is drained
//! right before every heartbeat, so a late reply proves liveness when it arrived and can never
//! answer a later heartbeat; a failed heartbeat send ends the connection as a dead peer.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use super::WRITE_STALL;
use crate::config::ServerSettings;
use crate::core::classic::{
    echo_reply, ClassicEnd, ClassicSocket, ConnectBackAttempts, ConnectBackSchedule,
    HeartbeatSocket, HeartbeatStep, END_CONNECTION, HEARTBEAT, READ_SIZE,
};
use crate::core::heartbeat::Heartbeat;
use crate::core::wire::EndReason;
use crate::net::conn::{linger, Lingerer, END_LINGER};
use crate::net::events::{Event, EventLog, RefusalCause};
use crate::net::wait::{Bell, PollFlags};

/// Stack of each connection thread: a 1 KiB buffer and shallow calls.
const THREAD_STACK: usize = 128 * 1024;
/// Longest sleep when the heartbeat core has no deadline (absurdly large settings).
const MAX_WAIT: Duration = Duration::from_secs(60);
/// How long the final `End Connection` may take before the socket is closed anyway.
const END_WRITE_TIMEOUT: Duration = Duration::from_millis(200);

/// Waits until `sock` (if any) or `bell` is readable, or `wait` passes. Returns
/// (socket ready, bell rang). A hang-up or error on the socket counts as ready: the next read
/// reports it.
fn wait2(sock: Option<BorrowedFd<'_>>, bell: &Bell, wait: Duration) -> io::Result<(bool, bool)> {
    let mut fds = vec![bell.as_fd()];
    fds.extend(sock);
    let ready = crate::net::wait::wait(&fds, PollFlags::IN, wait)?;
    Ok((ready.is_ready(1), ready.is_ready(0)))
}

/// One classic client on the server: what its two threads share.
pub struct ClassicConn {
    id: u64,
    peer: SocketAddr,
    /// Always `Some` until drop, which closes it before logging `closed`.
    data: Option<TcpStream>,
    hb: Mutex<Heartbeat>,
    /// 0 while open, else [`ClassicEnd::code`] of the first reason given.
    end: AtomicU8,
    data_bell: Bell,
    hb_bell: Bell,
    /// Threads still running; the last one out frees the connection.
    alive: AtomicU8,
    log: EventLog,
}

impl ClassicConn {
    fn data(&self) -> &TcpStream {
        self.data
            .as_ref()
            .expect("the data socket lives as long as the connection")
    }

    fn heartbeat(&self) -> MutexGuard<'_, Heartbeat> {
        // A panic under the lock loses at most this connection's timing; take it over.
        self.hb.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn end(&self) -> Option<ClassicEnd> {
        ClassicEnd::from_code(self.end.load(Ordering::Acquire))
    }

    /// Records why the connection ends and wakes both threads; true for the first reason.
    fn set_end(&self, why: ClassicEnd) -> bool {
        let first = self
            .end
            .compare_exchange(0, why.code(), Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        self.data_bell.ring();
        self.hb_bell.ring();
        first
    }

    /// A heartbeat could not be written: the peer is lost (logged once, by the first reason).
    fn heartbeat_write_failed(&self, e: io::Error) {
        if self.set_end(ClassicEnd::HeartbeatLost) {
            self.log.emit(Event::WriteFailed {
                id: self.id,
                peer: self.peer,
                error: e.to_string(),
            });
        }
    }

    /// Any bytes from the client prove it alive; logs the end of a round.
    fn received(&self, at: Instant) {
        let answered = self.heartbeat().handle_rx(at);
        if let Some(a) = answered {
            self.log.emit(Event::Answered {
                id: self.id,
                peer: self.peer,
                after: a.after_pings,
                rtt: a.rtt,
            });
        }
    }
}

impl Drop for ClassicConn {
    fn drop(&mut self) {
        // Close first, so "closed" in the log means the descriptor is free.
        drop(self.data.take());
        self.log.emit(Event::Closed {
            id: self.id,
            peer: self.peer,
        });
    }
}

/// The classic connections of one server, so shutdown can end them all.
pub type Registry = crate::net::registry::Registry<ClassicConn>;

fn release(reg: &Registry, conn: &ClassicConn) {
    if conn.alive.fetch_sub(1, Ordering::AcqRel) == 1 {
        reg.remove(conn.id);
    }
}

/// Sends `End Connection` on both sockets of every client and waits up to `grace` for
/// them to close; whoever is still stuck then has its data socket shut down.
pub fn shutdown(reg: &Registry, log: &EventLog, grace: Duration) {
    let conns = reg.all();
    log.emit(Event::ShuttingDown {
        clients: conns.len(),
    });
    for c in &conns {
        c.set_end(ClassicEnd::ServerShutdown);
    }
    for c in reg.wait_empty(grace) {
        let _ = c.data().shutdown(Shutdown::Both);
    }
}

/// Serves one accepted classic client: registers it and starts its two threads. Never blocks
/// the accept loop; a client that cannot be served is logged as refused and closed (the
/// classic wire has no words for "server full") through `lingerer`, so the message bytes it
/// already sent do not turn the close into a reset.
pub fn admit(
    reg: &Arc<Registry>,
    settings: &ServerSettings,
    log: &EventLog,
    lingerer: Option<&Lingerer>,
    stream: TcpStream,
    peer: SocketAddr,
) {
    let refuse = |cause: RefusalCause, detail: String| {
        log.emit(Event::Refused {
            peer: Some(peer),
            reason: EndReason::ServerFull,
            detail,
            cause,
        });
    };
    let refuse_now = |stream: TcpStream, cause: RefusalCause, detail: String| {
        if let Some(l) = lingerer {
            l.close(stream);
        }
        refuse(cause, detail);
    };
    if reg.len() >= settings.max_conns {
        refuse_now(
            stream,
            RefusalCause::MaxConns,
            format!("max-conns {} reached", settings.max_conns),
        );
        return;
    }
    let bells = Bell::new().and_then(|a| Ok((a, Bell::new()?)));
    let (data_bell, hb_bell) = match bells {
        Ok(b) => b,
        Err(e) => {
            refuse_now(
                stream,
                RefusalCause::Other,
                format!("cannot create a wake-up descriptor: {e}"),
            );
            return;
        }
    };
    let _ = stream.set_nodelay(true);
    let cfg = settings.heartbeat;
    let id = reg.next_id();
    let conn = Arc::new(ClassicConn {
        id,
        peer,
        data: Some(stream),
        hb: Mutex::new(Heartbeat::new(cfg, Instant::now())),
        end: AtomicU8::new(0),
        data_bell,
        hb_bell,
        alive: AtomicU8::new(2),
        log: log.clone(),
    });
    reg.insert(id, conn.clone());
    log.emit(Event::Connected { id, peer });
    let to = SocketAddr::new(peer.ip(), settings.classic_client_port);
    let (r2, c2) = (reg.clone(), conn.clone());
    let companion = thread::Builder::new()
        .name(format!("hb-classic-hb-{id}"))
        .stack_size(THREAD_STACK)
        .spawn(move || companion(&r2, &c2, to));
    if let Err(e) = companion {
        reg.remove(id);
        refuse(
            RefusalCause::OutOfThreads,
            format!("cannot start a thread: {e}"),
        );
        return;
    }
    let (r2, c2) = (reg.clone(), conn.clone());
    let reader = thread::Builder::new()
        .name(format!("hb-classic-data-{id}"))
        .stack_size(THREAD_STACK)
        .spawn(move || data_exchange(&r2, &c2));
    if let Err(e) = reader {
        refuse(
            RefusalCause::OutOfThreads,
            format!("cannot start a thread: {e}"),
        );
        conn.set_end(ClassicEnd::ServerShutdown);
        let _ = conn.data().shutdown(Shutdown::Both);
        release(reg, &conn);
    }
}

/// The data-exchange thread: the only reader and writer of the data socket.
fn data_exchange(reg: &Registry, conn: &ClassicConn) {
    let stream = conn.data();
    let _ = stream.set_write_timeout(Some(WRITE_STALL));
    // poll() says when to read; this only bounds a read that poll() woke spuriously.
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let mut buf = [0u8; READ_SIZE];
    let closed_by_client = |error: Option<String>| {
        if conn.set_end(ClassicEnd::ClientClosed) {
            conn.log.emit(Event::ClosedByClient {
                id: conn.id,
                peer: conn.peer,
                error,
            });
        }
    };
    while conn.end().is_none() {
        match wait2(Some(stream.as_fd()), &conn.data_bell, MAX_WAIT) {
            Ok((true, _)) => {}
            Ok((false, rang)) => {
                if rang {
                    conn.data_bell.clear();
                }
                continue;
            }
            Err(e) => {
                closed_by_client(Some(e.to_string()));
                break;
            }
        }
        match (&*stream).read(&mut buf) {
            Ok(0) => {
                closed_by_client(None);
                break;
            }
            Ok(n) => {
                conn.received(Instant::now());
                // Exactly the bytes of this one read, like the original: no framing exists.
                if let Err(e) = (&*stream).write_all(&echo_reply(&buf[..n])) {
                    if conn.set_end(ClassicEnd::DataWriteFailed) {
                        conn.log.emit(Event::WriteFailed {
                            id: conn.id,
                            peer: conn.peer,
                            error: e.to_string(),
                        });
                    }
                    break;
                }
            }
            Err(e) if crate::net::is_retryable_io(&e) => {}
            Err(e) => {
                closed_by_client(Some(e.to_string()));
                break;
            }
        }
    }
    let why = conn.end().unwrap_or(ClassicEnd::ClientClosed);
    if why.sends_end_connection() {
        let mut written = false;
        if why.end_connection_on(ClassicSocket::Data) {
            let _ = stream.set_write_timeout(Some(END_WRITE_TIMEOUT));
            written = (&*stream).write_all(END_CONNECTION).is_ok();
        }
        conn.log.emit(Event::EndConnectionSent {
            id: conn.id,
            peer: conn.peer,
            why,
        });
        if written {
            // The client may still be sending its message: drain before closing, or the
            // close resets the connection and can destroy `End Connection` (see END_LINGER).
            linger(stream, Instant::now() + END_LINGER);
        }
    }
    let _ = stream.shutdown(Shutdown::Both);
    conn.hb_bell.ring();
    release(reg, conn);
}

/// The connect-back in progress: attempts on [`ConnectBackSchedule`] (counted by the core's
/// [`ConnectBackAttempts`]), interleaved with the heartbeat core's deadlines so a client is
/// closed on time even if it never listens.
struct ConnectBack {
    to: SocketAddr,
    attempts: ConnectBackAttempts,
    last_error: String,
}

impl ConnectBack {
    fn new(to: SocketAddr, now: Instant) -> Self {
        Self {
            to,
            attempts: ConnectBackAttempts::new(ConnectBackSchedule::default(), now),
            last_error: String::from("no attempt made"),
        }
    }

    /// When the next attempt is due, `None` once the schedule is used up.
    fn next_at(&self) -> Option<Instant> {
        self.attempts.next_at()
    }

    /// Makes one attempt (bounded by the schedule's step).
    fn attempt(&mut self, conn: &ClassicConn) -> Option<TcpStream> {
        let made = self.attempts.start_attempt();
        match TcpStream::connect_timeout(&self.to, self.attempts.attempt_timeout()) {
            Ok(s) => {
                conn.log.emit(Event::ConnectedBack {
                    id: conn.id,
                    peer: conn.peer,
                    to: self.to,
                    attempts: made,
                });
                Some(s)
            }
            Err(e) => {
                self.last_error = e.to_string();
                None
            }
        }
    }

    /// Logs that the heartbeat socket never came (schedule used up, or the connection ended
    /// while still trying).
    fn give_up(self, conn: &ClassicConn) {
        conn.log.emit(Event::ConnectBackFailed {
            id: conn.id,
            peer: conn.peer,
            to: self.to,
            attempts: self.attempts.made(),
            error: self.last_error,
        });
    }
}

/// What a non-blocking read of the heartbeat socket found.
enum Drained {
    Nothing,
    Bytes,
    Closed,
}

/// Reads everything the heartbeat socket holds right now without blocking.
fn drain(sock: &TcpStream, buf: &mut [u8]) -> Drained {
    use rustix::net::{recv, RecvFlags};
    let mut got = Drained::Nothing;
    loop {
        match recv(sock, &mut *buf, RecvFlags::DONTWAIT) {
            Ok((0, _)) => return Drained::Closed,
            Ok(_) => got = Drained::Bytes,
            Err(rustix::io::Errno::INTR) => {}
            Err(rustix::io::Errno::AGAIN) => return got,
            Err(_) => return Drained::Closed,
        }
    }
}

/// The companion heartbeat thread: the only reader and writer of the heartbeat socket.
fn companion(reg: &Registry, conn: &ClassicConn, to: SocketAddr) {
    let (id, peer) = (conn.id, conn.peer);
    let mut back = Some(ConnectBack::new(to, Instant::now()));
    let mut sock: Option<TcpStream> = None;
    // False until connected, and again once the client closed its end: nothing more to read,
    // and a heartbeat due then finds a dead peer.
    let mut readable = false;
    let mut buf = [0u8; READ_SIZE];
    let (idle, count) = {
        let hb = conn.heartbeat();
        (hb.config().idle(), hb.config().count())
    };
    while conn.end().is_none() {
        if let Some(b) = back.as_mut() {
            if b.next_at().is_some_and(|at| at <= Instant::now()) {
                if let Some(s) = b.attempt(conn) {
                    let _ = s.set_nodelay(true);
                    let _ = s.set_write_timeout(Some(WRITE_STALL));
                    sock = Some(s);
                    readable = true;
                    back = None;
                }
            }
            if back.as_ref().is_some_and(|b| b.next_at().is_none()) {
                if let Some(b) = back.take() {
                    b.give_up(conn);
                }
            }
        }
        // Drain before acting: a reply that arrived before a heartbeat is due counts as
        // liveness now, never as the answer to the heartbeat about to be sent.
        if let (Some(s), true) = (&sock, readable) {
            match drain(s, &mut buf) {
                Drained::Nothing => {}
                Drained::Bytes => conn.received(Instant::now()),
                Drained::Closed => readable = false,
            }
        }
        let now = Instant::now();
        let socket = match (&sock, readable) {
            (None, _) => HeartbeatSocket::Absent,
            (Some(_), true) => HeartbeatSocket::Open,
            (Some(_), false) => HeartbeatSocket::Closed,
        };
        loop {
            let Some(action) = conn.heartbeat().poll(now) else {
                break;
            };
            if HeartbeatStep::starts_round(action) {
                conn.log.emit(Event::RoundStarted { id, peer, idle });
            }
            match HeartbeatStep::decide(action, socket) {
                HeartbeatStep::NotSent(k) => conn.log.emit(Event::HeartbeatNotSent {
                    id,
                    peer,
                    k,
                    n: count,
                }),
                HeartbeatStep::End(why) => {
                    conn.set_end(why);
                }
                // `Open`: there is a socket.
                HeartbeatStep::Send(k) => match sock.as_ref().map(|s| (&*s).write_all(HEARTBEAT)) {
                    Some(Ok(())) => conn.log.emit(Event::PingSent {
                        id,
                        peer,
                        k,
                        n: count,
                    }),
                    Some(Err(e)) => conn.heartbeat_write_failed(e),
                    None => {}
                },
            }
            if conn.end().is_some() {
                break;
            }
        }
        if conn.end().is_some() {
            break;
        }
        let next_attempt = back.as_ref().and_then(ConnectBack::next_at);
        let wait = [conn.heartbeat().poll_timeout(), next_attempt]
            .into_iter()
            .flatten()
            .min()
            .map_or(MAX_WAIT, |at| at.saturating_duration_since(Instant::now()))
            .clamp(Duration::from_millis(1), MAX_WAIT);
        let fd = sock.as_ref().filter(|_| readable).map(|s| s.as_fd());
        match wait2(fd, &conn.hb_bell, wait) {
            Ok((_, true)) => conn.hb_bell.clear(),
            Ok(_) => {}
            // poll(2) itself failing is not the client's fault; do not spin on it.
            Err(_) => thread::sleep(Duration::from_millis(10)),
        }
    }
    if let Some(b) = back.take() {
        b.give_up(conn);
    }
    let why = conn.end().unwrap_or(ClassicEnd::ClientClosed);
    if let Some(s) = sock.take() {
        if why.end_connection_on(ClassicSocket::Heartbeat) {
            let _ = s.set_write_timeout(Some(END_WRITE_TIMEOUT));
            if (&s).write_all(END_CONNECTION).is_ok() && readable {
                // A late `Echoing...heartbeat` may be on its way: drain it (bounded), or
                // the close resets the socket and can destroy `End Connection`.
                linger(&s, Instant::now() + END_LINGER);
            }
        }
        let _ = s.shutdown(Shutdown::Both);
    }
    conn.data_bell.ring();
    release(reg, conn);
}
