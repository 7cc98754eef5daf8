//! One client connection on the server: the state its two threads share.
//!
//! The data-exchange thread (reader) and the companion heartbeat thread (the only writer) share
//! exactly this: the heartbeat core behind a mutex, the manual's "start heartbeat" switch, the
//! bounded outbound queue, and the first reason anyone gave for ending the connection.
//!
//! Also how a connection closes after its last line: [`linger`] (FIN, then discard input for
//! at most [`END_LINGER`]) on the connection's own thread, and [`Lingerer`], one shared thread
//! for refused newcomers, so closing with unread input never resets a client before it reads
//! its `END`.

use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::core::heartbeat::Heartbeat;
use crate::core::wire::EndReason;
use crate::net::events::{Event, EventLog};

/// What the companion thread writes, in order.
#[derive(Debug, Clone)]
pub enum Out {
    /// A complete line, `\n` included. Shared so a broadcast copies nothing.
    Line(Arc<str>),
    /// `END reason`, after everything queued before it (QUIT, line-too-long).
    End(EndReason),
}

/// Memory a queued line costs besides its bytes (channel slot, reference count). Counting
/// it keeps a flood of tiny lines inside the same `--queue` budget as a few big ones.
const LINE_OVERHEAD: usize = 32;

impl Out {
    /// What the item counts against the queue budget. `End` is free: it is queued at most
    /// once, outside the budget, so it can always be delivered after what precedes it.
    fn cost(&self) -> usize {
        match self {
            Out::Line(l) => l.len() + LINE_OVERHEAD,
            Out::End(_) => 0,
        }
    }
}

/// The outbound queue is full: the client is not reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueFull;

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
    hb: Mutex<Heartbeat>,
    start_hb: AtomicBool,
    out: Sender<Out>,
    queued: AtomicUsize,
    queue_limit: usize,
    bell: Sender<()>,
    /// 0 while open, else `1 + index` of the urgent [`EndReason`] in [`EndReason::ALL`].
    urgent_end: AtomicU8,
    /// Set once anyone decided to end the connection, urgently or after the queue.
    ending: AtomicBool,
    /// Threads still running for this connection; the last one out frees it.
    alive: AtomicU8,
}

/// The receiving ends the companion thread drains.
#[derive(Debug)]
pub struct CompanionRx {
    /// Queued lines.
    pub out: Receiver<Out>,
    /// Rung when the switch flips or an urgent end is set.
    pub bell: Receiver<()>,
}

impl Conn {
    /// A connection whose outbound queue holds at most `queue_limit` bytes; `log` receives
    /// [`Event::Closed`] once the descriptor is really closed.
    pub fn new(
        id: u64,
        peer: SocketAddr,
        stream: TcpStream,
        hb: Heartbeat,
        queue_limit: usize,
        log: EventLog,
    ) -> (Self, CompanionRx) {
        // The queue is bounded in bytes by `send`'s admission check, not in slots: a bounded
        // channel allocates all its slots up front, which for a 1 MiB budget of short lines
        // came to megabytes per idle connection. This one grows and shrinks with its content.
        let (out, out_rx) = crossbeam_channel::unbounded();
        let (bell, bell_rx) = crossbeam_channel::bounded(1);
        let conn = Self {
            id,
            peer,
            stream: Some(stream),
            log,
            hb: Mutex::new(hb),
            start_hb: AtomicBool::new(false),
            out,
            queued: AtomicUsize::new(0),
            queue_limit,
            bell,
            urgent_end: AtomicU8::new(0),
            ending: AtomicBool::new(false),
            alive: AtomicU8::new(2),
        };
        (
            conn,
            CompanionRx {
                out: out_rx,
                bell: bell_rx,
            },
        )
    }

    /// The socket (both threads hold a clone; only the companion writes).
    pub fn stream(&self) -> &TcpStream {
        self.stream
            .as_ref()
            .expect("the stream lives as long as the connection")
    }

    /// The heartbeat core. Held only for a few instructions at a time.
    pub fn heartbeat(&self) -> MutexGuard<'_, Heartbeat> {
        // A panic while holding the lock cannot leave the core half-updated in a way that
        // matters more than losing the connection, so a poisoned lock is simply taken over.
        self.hb.lock().unwrap_or_else(|p| p.into_inner())
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

    /// Wakes the companion thread.
    pub fn ring(&self) {
        let _ = self.bell.try_send(());
    }

    /// Queues a line for the client. A full queue ends the connection as a slow consumer
    /// at once: its socket is shut down, so a companion blocked writing to it is freed too
    /// (its kernel buffer is full as well, so an `END` could not get through anyway).
    pub fn send(&self, item: Out) -> Result<(), QueueFull> {
        let cost = item.cost();
        if self.queued.fetch_add(cost, Ordering::AcqRel) + cost > self.queue_limit {
            self.queued.fetch_sub(cost, Ordering::AcqRel);
            self.evict();
            return Err(QueueFull);
        }
        // A send fails only when the companion is gone: the connection is closing anyway.
        let _ = self.out.send(item);
        Ok(())
    }

    fn evict(&self) {
        self.end_now(EndReason::SlowConsumer);
        self.shutdown();
    }

    /// The companion wrote (or dropped) an item of this many bytes.
    pub fn dequeued(&self, item: &Out) {
        self.queued.fetch_sub(item.cost(), Ordering::AcqRel);
    }

    /// Ends the connection after what is already queued (QUIT, line-too-long). Falls back to
    /// an urgent end if the queue is full.
    pub fn end_after_queue(&self, reason: EndReason) {
        self.ending.store(true, Ordering::Release);
        if self.out.send(Out::End(reason)).is_err() {
            self.end_now(reason);
        }
    }

    /// Ends the connection as soon as the companion wakes, skipping anything queued
    /// (heartbeat-timeout, slow-consumer, server-shutdown). The first reason given wins.
    pub fn end_now(&self, reason: EndReason) {
        self.ending.store(true, Ordering::Release);
        let code = EndReason::ALL
            .iter()
            .position(|&r| r == reason)
            .map_or(0, |i| i as u8 + 1);
        if self
            .urgent_end
            .compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.ring();
        }
    }

    /// The urgent end reason, if one was set.
    pub fn urgent_end(&self) -> Option<EndReason> {
        match self.urgent_end.load(Ordering::Acquire) {
            0 => None,
            n => EndReason::ALL.get(usize::from(n) - 1).copied(),
        }
    }

    /// True once anyone decided to end the connection.
    pub fn is_ending(&self) -> bool {
        self.ending.load(Ordering::Acquire)
    }

    /// One of the connection's threads is done; true for the last one, which frees it.
    pub fn release(&self) -> bool {
        self.alive.fetch_sub(1, Ordering::AcqRel) == 1
    }

    /// Shuts the socket down both ways: wakes a reader blocked in `read` and fails any write.
    pub fn shutdown(&self) {
        let _ = self.stream().shutdown(Shutdown::Both);
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
                wait_readable([stream], left);
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

/// Waits at most `wait` for any of `socks` to become readable (or hang up).
fn wait_readable<'a>(socks: impl IntoIterator<Item = &'a TcpStream>, wait: Duration) {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    let timeout = Timespec {
        tv_sec: wait.as_secs() as _,
        tv_nsec: wait.subsec_nanos() as _,
    };
    let mut fds: Vec<PollFd<'_>> = socks
        .into_iter()
        .map(|s| PollFd::new(s, PollFlags::IN))
        .collect();
    let _ = poll(&mut fds, Some(&timeout));
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
        let wait = next
            .saturating_duration_since(Instant::now())
            .min(LINGER_TICK);
        wait_readable(held.iter().map(|(s, _)| s), wait);
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
