//! The event engine (`--engine events`, CONTRACT section 6): the same line wire, rules, log
//! lines and exit codes as the thread engine, served by a tokio runtime of `--workers` threads
//! (one per core by default), with non-blocking sockets and tokio's timer wheel for every
//! deadline.
//!
//! ```text
//!   tokio runtime (--workers threads, one per core by default, "hb-ev")
//!     accept task: accept → END server-full when out of room (or at
//!                  --max-conns-per-ip, core::admission), else spawn:
//!     one task per connection (the only reader and writer of its socket):
//!       loop: Session::handle_timeout (heartbeat, lag, write stall, auth)
//!             write what the session holds (vectored, until the socket is full)
//!             Session::poll_close → linger after END, or close
//!             ended → Hub::handle_leave
//!             wait for: readable (unless held) | writable (when full) | woken
//!                       (something queued for it) | the session's next deadline |
//!                       the room changed (when a laggard held its line)
//!             bytes → Session::handle_rx → poll_input → Hub::handle_op
//! ```
//! A connection costs a task, a socket registration and its [`Session`]: no thread, no stack.
//! Every protocol decision is made by the core machines ([`Session`], the hub); this module
//! only moves bytes, reads the clock and waits.

use std::cell::RefCell;
use std::fs::File;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::io::Interest;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::futures::Notified;
use tokio::sync::Notify;

use crate::config::ServerSettings;
use crate::core::outq::MAX_SLICES;
use crate::core::session::{Close, Session, END_GRACE};
use crate::core::wire::EndReason;
use crate::net::conn::{Lingerer, END_LINGER};
use crate::net::events::{Event, EventLog, RefusalCause};
use crate::net::live::Live;
use crate::net::registry::Registry;
use crate::net::relay::{self, log_session, Chat, Member, Pumped, Stage};
use crate::net::server::{
    is_fd_exhaustion, listen, new_session, refuse_with, report_write, send_now, server_tls,
    tune_accepted, write_refusal, ServerError, Wrote, HOLD_SLICE, SHUTDOWN_GRACE,
};
use crate::net::tls::ServerTls;

/// Most bytes one wake-up reads from one client before its lines are handled.
const READ_CHUNK: usize = 256 * 1024;
/// Reads (of up to [`READ_CHUNK`]) a connection's task makes in a row before it yields its
/// worker: a client flooding at full speed must not delay everyone else's replies (tokio's
/// own budget would let it run for 128 reads, 8 MB).
const READS_PER_TURN: u32 = 4;

thread_local! {
    /// One read buffer per worker thread: an idle connection owns none.
    static READ_BUF: RefCell<Vec<u8>> = RefCell::new(vec![0; READ_CHUNK]);
    /// One buffer of decrypted input per worker thread (TLS only).
    static PLAIN_BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// One client connection of the event engine.
#[derive(Debug)]
pub struct EConn {
    id: u64,
    peer: SocketAddr,
    session: Mutex<Session>,
    /// Wakes the connection's task: something was queued, it was ended, a deadline moved.
    wake: Notify,
    /// The shutdown grace is over: close without waiting for the END to get through.
    close_now: AtomicBool,
}

impl Member for EConn {
    fn peer(&self) -> SocketAddr {
        self.peer
    }
    fn session(&self) -> MutexGuard<'_, Session> {
        self.session.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn wake(&self) {
        self.wake.notify_one();
    }
}

struct Shared {
    /// The settings, TLS certificate and per-address limit new connections get (a reload
    /// swaps them).
    live: Live,
    log: EventLog,
    conns: Registry<EConn>,
    chat: Option<Mutex<Chat<EConn>>>,
    /// Notified (under the chat lock) when a lagging member caught up or left.
    room_changed: Notify,
    stopping: AtomicBool,
    /// Wakes the accept task at shutdown.
    stop: Notify,
    lingerer: Option<Lingerer>,
    /// With `--broker redis://…`: the cluster driver (prepared at bind, running from `run`).
    cluster: Mutex<Option<crate::net::cluster_driver::ClusterState>>,
}

impl crate::net::cluster_driver::ChatHost for Shared {
    type Conn = EConn;
    fn chat(&self) -> Option<MutexGuard<'_, Chat<EConn>>> {
        Shared::chat(self)
    }
    fn caught_up(&self) {
        Shared::caught_up(self);
    }
    fn log(&self) -> &EventLog {
        &self.log
    }
}

impl Shared {
    fn chat(&self) -> Option<MutexGuard<'_, Chat<EConn>>> {
        self.chat
            .as_ref()
            .map(|c| c.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// A connection is ending: its LEFT to the room, and held senders retry.
    fn leave(&self, conn: &EConn, reason: EndReason) {
        if let Some(mut chat) = self.chat() {
            chat.leave(&self.log, conn.id, reason);
            self.room_changed.notify_waiters();
        }
    }

    /// A lagging member caught up: held senders retry (notified under the chat lock, so a
    /// sender about to wait cannot miss it).
    fn caught_up(&self) {
        if let Some(_chat) = self.chat() {
            self.room_changed.notify_waiters();
        }
    }
}

/// A bound event-engine server, ready to [`EventServer::run`].
pub struct EventServer {
    rt: tokio::runtime::Runtime,
    listener: std::net::TcpListener,
    addr: SocketAddr,
    shared: Arc<Shared>,
}

/// Controls a running event-engine server from another thread.
#[derive(Clone)]
pub struct EventHandle {
    shared: Arc<Shared>,
    addr: SocketAddr,
}

impl EventServer {
    /// Binds the listening socket and builds the runtime.
    pub fn bind(settings: ServerSettings, log: EventLog) -> Result<Self, ServerError> {
        let want = format!("{}:{}", settings.host, settings.port);
        let bind_err = |source| ServerError::Bind {
            addr: want.clone(),
            source,
        };
        let listener =
            crate::net::try_each_addr(&settings.host, settings.port, listen).map_err(bind_err)?;
        listener.set_nonblocking(true).map_err(bind_err)?;
        let addr = listener.local_addr().map_err(bind_err)?;
        let workers = settings.event_workers();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .thread_name("hb-ev")
            .thread_stack_size(256 * 1024)
            .enable_io()
            .enable_time()
            .build()
            .map_err(bind_err)?;
        let tls = server_tls(&settings)?;
        let (chat, cluster) = crate::net::cluster_driver::chat_for(&settings)?;
        let shared = Arc::new(Shared {
            live: Live::new(settings, tls, None),
            log,
            conns: Registry::default(),
            chat,
            room_changed: Notify::new(),
            stopping: AtomicBool::new(false),
            stop: Notify::new(),
            lingerer: Lingerer::start().ok(),
            cluster: Mutex::new(
                cluster.map(|p| crate::net::cluster_driver::ClusterState::Prepared(Box::new(p))),
            ),
        });
        crate::net::metrics::watch_queues(&shared.log, &shared, |sh| &sh.conns);
        Ok(Self {
            rt,
            listener,
            addr,
            shared,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections served at once (`--max-conns`; descriptors are the other limit, and a
    /// newcomer past them gets `END server-full` too).
    pub fn max_conns(&self) -> usize {
        self.shared.live.settings().max_conns
    }

    /// A handle to stop the server from another thread.
    pub fn handle(&self) -> EventHandle {
        EventHandle {
            shared: self.shared.clone(),
            addr: self.addr,
        }
    }

    /// Serves until [`EventHandle::shutdown`], then waits for the connections to close.
    pub fn run(self) -> Result<(), ServerError> {
        let Self {
            rt,
            listener,
            addr,
            shared,
        } = self;
        crate::net::cluster_driver::start(&shared.cluster, &shared)?;
        shared.log.emit(Event::Listening {
            addr,
            mode: shared.live.settings().mode,
            wire: shared.live.settings().wire,
        });
        crate::net::metrics::announce(&shared.log);
        let sh = shared.clone();
        let served = rt.block_on(async move {
            let listener = TcpListener::from_std(listener)?;
            accept_loop(&sh, &listener).await;
            // Connections finish their END and linger on the runtime; shutdown bounds it.
            let deadline = Instant::now() + SHUTDOWN_GRACE + END_LINGER + HOLD_SLICE;
            while !sh.conns.is_empty() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Ok::<(), io::Error>(())
        });
        rt.shutdown_timeout(Duration::from_millis(100));
        served.map_err(|source| ServerError::Bind {
            addr: addr.to_string(),
            source,
        })
    }
}

impl EventHandle {
    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// What new connections are served with.
    pub(crate) fn live(&self) -> &Live {
        &self.shared.live
    }

    /// Connections currently open.
    pub fn connections(&self) -> usize {
        self.shared.conns.len()
    }

    /// Stops accepting, ends every client `END server-shutdown` and waits (about half a
    /// second at most) for them to close; then closes whoever is left.
    pub fn shutdown(&self) {
        let sh = &self.shared;
        if sh.stopping.swap(true, Ordering::AcqRel) {
            return;
        }
        sh.stop.notify_one();
        let conns = sh.conns.all();
        if let Some(mut chat) = sh.chat() {
            // The room closes without LEFT lines (see core::hub).
            chat.hub.handle_shutdown(Instant::now());
            sh.room_changed.notify_waiters();
        }
        // The other nodes hear this one's members leave; then the link closes.
        crate::net::cluster_driver::begin_stop(&sh.cluster);
        sh.log.emit(Event::ShuttingDown {
            clients: conns.len(),
        });
        let now = Instant::now();
        for c in &conns {
            c.session().end(now, EndReason::ServerShutdown, true);
            c.wake();
        }
        for c in sh.conns.wait_empty(SHUTDOWN_GRACE) {
            c.close_now.store(true, Ordering::Release);
            c.wake();
        }
        crate::net::cluster_driver::stop(&sh.cluster);
    }
}

async fn accept_loop(sh: &Arc<Shared>, listener: &TcpListener) {
    // A spare descriptor, given up when accept fails for lack of descriptors so the
    // newcomer can still be told why it is refused (instead of spinning on EMFILE).
    let mut reserve = File::open("/dev/null").ok();
    loop {
        if sh.stopping.load(Ordering::Acquire) {
            return;
        }
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = sh.stop.notified() => return,
        };
        match accepted {
            Ok((stream, peer)) => admit(sh, stream, peer),
            Err(e) if is_fd_exhaustion(&e) => {
                drop(reserve.take());
                if let Ok(Ok((stream, peer))) =
                    tokio::time::timeout(Duration::from_millis(1), listener.accept()).await
                {
                    if let Ok(std) = stream.into_std() {
                        write_refusal(&std);
                    }
                    sh.log.emit(Event::Refused {
                        peer: Some(peer),
                        reason: EndReason::ServerFull,
                        detail: format!("no file descriptor left: {e}"),
                        cause: RefusalCause::OutOfFds,
                    });
                }
                reserve = File::open("/dev/null").ok();
                if reserve.is_none() {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                ) => {}
            Err(e) => {
                sh.log.emit(Event::Refused {
                    peer: None,
                    reason: EndReason::ServerFull,
                    detail: format!("accept failed: {e}"),
                    cause: RefusalCause::Other,
                });
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

fn admit(sh: &Arc<Shared>, stream: TcpStream, peer: SocketAddr) {
    let settings = sh.live.settings();
    let max = settings.max_conns;
    let refusal = if sh.conns.len() >= max {
        Some((RefusalCause::MaxConns, format!("max-conns {max} reached")))
    } else {
        sh.live
            .per_ip()
            .try_admit(peer.ip())
            .err()
            .map(|r| (RefusalCause::MaxConnsPerIp, r.to_string()))
    };
    let refuse = |stream: TcpStream, cause, detail| match stream.into_std() {
        Ok(std) => refuse_with(
            &sh.log,
            sh.lingerer.as_ref(),
            std,
            Some(peer),
            cause,
            detail,
        ),
        // Not a socket tokio can hand back: it closes when dropped; the log still says why.
        Err(_) => sh.log.emit(Event::Refused {
            peer: Some(peer),
            reason: EndReason::ServerFull,
            detail,
            cause,
        }),
    };
    if let Some((cause, detail)) = refusal {
        refuse(stream, cause, detail);
        return;
    }
    let tls = match sh.live.accept_tls() {
        Ok(tls) => tls,
        Err(e) => {
            sh.live.per_ip().release(peer.ip());
            refuse(stream, RefusalCause::Tls, format!("cannot start TLS: {e}"));
            return;
        }
    };
    tune_accepted(&stream);
    let id = sh.conns.next_id();
    let conn = Arc::new(EConn {
        id,
        peer,
        session: Mutex::new(new_session(&settings, Instant::now())),
        wake: Notify::new(),
        close_now: AtomicBool::new(false),
    });
    sh.conns.insert(id, conn.clone());
    if let Some(mut chat) = sh.chat() {
        chat.conns.insert(id, conn.clone());
    }
    sh.log.emit(Event::Connected { id, peer });
    tokio::spawn(serve(sh.clone(), conn, stream, tls));
}

/// What the connection's input side waits for.
enum Held<'a> {
    /// Nothing: read when readable.
    No,
    /// Its own queue is over half full: read nothing until it drains.
    Own,
    /// A laggard holds its line: retry when the room changes.
    Room(Pin<Box<Notified<'a>>>),
    /// The session is ending: read nothing more.
    Stop,
}

/// One connection's task: the only reader and writer of its socket.
async fn serve(sh: Arc<Shared>, conn: Arc<EConn>, stream: TcpStream, mut tls: Option<ServerTls>) {
    let mut left_room = false;
    let mut blocked = false;
    let mut held = Held::No;
    // Lines are handled only when bytes came in or a hold ended, not on every wake-up.
    let mut fresh = false;
    let mut reads = 0u32;
    let mut stage = Stage::default();
    // One timer for the session's deadlines. It moves whenever a deadline comes *earlier*,
    // but *later* only once between firings: the heartbeat deadline moves later with every
    // line received, and re-arming per line (a wheel removal and insertion under the
    // driver's lock) would cost a busy sender more than one early wake-up per idle period.
    // The one later move is what an idle client's PONG needs: without it every heartbeat
    // round woke the task twice, once for the timeout the PONG had already moved.
    let timer = tokio::time::sleep_until(tokio::time::Instant::now());
    tokio::pin!(timer);
    let mut armed: Option<Instant> = None;
    let mut moved_later = false;
    // When the current hold's safety net fires (see HOLD_SLICE).
    let mut hold_deadline: Option<tokio::time::Instant> = None;
    // One wake-up registration kept across turns (re-made only after it fired), and the
    // socket's own reader and writer waker slots below: a fresh `notified()` or `ready()`
    // per turn would lock a waiter list to enter it and again to leave it, twice per
    // heartbeat round.
    let woken = conn.wake.notified();
    tokio::pin!(woken);
    let close = loop {
        let now = Instant::now();
        let (caught_up, close, ending, deadline) = {
            // One lock for the turn, across the write too: the write goes straight from the
            // session's queue, and `handle_written(n)` must consume the very bytes the
            // socket took. Unlocked, the hub (on the other worker) could end the session
            // urgently in between, dropping the queue the write was copied from.
            let mut s = conn.session();
            if s.is_idle_expired(now) {
                sh.log.emit(Event::RoundStarted {
                    id: conn.id,
                    peer: conn.peer,
                    idle: s.idle(),
                });
            }
            let mut caught_up = false;
            // Only over TLS, and only for a session's last bytes (its END_GRACE is short):
            // TLS holds up to 64 KiB above the socket that a plain connection would have
            // left to the kernel. Elsewhere the stall rule waits for the socket as it always
            // did: a client that does not read (a stuck member, a pulled cable) still sees
            // the kernel take a few more bytes now and then, which a probe would take for
            // reading (seen: an eviction put off for seconds, a ghost closed 250 ms later).
            if blocked
                && tls.is_some()
                && !s.is_open()
                && s.flow_timeout().is_some_and(|at| at <= now)
            {
                caught_up |= probe_write(&stream, tls.as_mut(), &mut s, now);
            }
            s.handle_timeout(now);
            if let (Some(t), false) = (&mut tls, blocked) {
                // TLS's own bytes first (handshake messages, an alert, records a full
                // socket left behind).
                blocked = tls_flush_now(t, &stream, &mut s, now);
            }
            // Over TLS the session's bytes are offered even while TLS's own records wait for
            // the socket: with the cached readiness clear the attempt is a WouldBlock (or, if
            // the socket has room again, a real send), and either way the session learns
            // whether its client reads. Skipping it, the session never started its
            // write-stall clock: an END queued behind TLS's records then waited for good (no
            // stall deadline, and no heartbeat once ending). The thread engine's companion
            // tries every turn too.
            let mut full = blocked && tls.is_none();
            while !full && s.poll_close().is_none() {
                let mut iov = [IoSlice::new(&[]); MAX_SLICES];
                let n = s.peek_transmit(&mut iov);
                if n == 0 {
                    break;
                }
                let last = s.is_final_flush();
                let written = stream.try_io(Interest::WRITABLE, || match &mut tls {
                    Some(t) => t.send(&stream, &iov[..n]),
                    None => send_now(&stream, &iov[..n], last),
                });
                // Records that left count before a WouldBlock restarts the stall clock.
                if tls.as_mut().is_some_and(|t| t.take_progress()) {
                    s.handle_transport_progress(now);
                }
                match report_write(&sh.log, conn.id, conn.peer, &mut s, now, written) {
                    Wrote::Took { caught_up: c } => caught_up |= c,
                    Wrote::Blocked => {
                        blocked = true;
                        full = true;
                    }
                    Wrote::Failed => {}
                }
            }
            if let (Some(t), false) = (&mut tls, blocked) {
                // rustls may have taken the last plaintext into its buffer while the socket
                // took only part of the records: those records are the client's too, and
                // nothing else would wake this task for them (the queue is empty). Seen as
                // a reader stalled for good after the sender's last line.
                blocked = tls_flush_now(t, &stream, &mut s, now);
            }
            let close = if conn.close_now.load(Ordering::Acquire) {
                Some(Close::Now(
                    s.end_reason().unwrap_or(EndReason::ServerShutdown),
                ))
            } else {
                s.poll_close()
            };
            let ending = s.end_reason();
            let deadline = s.poll_timeout();
            if matches!(held, Held::Own) && s.queued() <= s.config().queue / 2 {
                held = Held::No;
                fresh = true;
            }
            log_session(&sh.log, conn.id, conn.peer, &mut s);
            (caught_up, close, ending, deadline)
        };
        if caught_up {
            sh.caught_up();
            if matches!(held, Held::Own) {
                held = Held::No;
                fresh = true;
            }
        }
        if let (Some(reason), false) = (ending, left_room) {
            left_room = true;
            held = Held::Stop;
            sh.leave(&conn, reason);
        }
        if let Some(close) = close {
            break close;
        }
        if fresh && matches!(held, Held::No) {
            fresh = false;
            held = pump(&sh, &conn, &mut stage);
            if !matches!(held, Held::No) {
                continue;
            }
        }
        let want_read = matches!(held, Held::No);
        let want_write = blocked;
        if let Some(at) = deadline {
            let rearm = match armed {
                None => true,
                Some(a) if at < a => true,
                Some(a) if at > a && !moved_later => {
                    moved_later = true;
                    true
                }
                Some(_) => false,
            };
            if rearm {
                timer.as_mut().reset(at.into());
                armed = Some(at);
            }
        }
        let room_held = matches!(held, Held::Room(_));
        let any_held = matches!(held, Held::Room(_) | Held::Own);
        // The safety net's deadline is fixed when the hold starts: a sleep made afresh each
        // turn would never fire for a held task woken more often than every slice.
        let hold_until = if any_held {
            *hold_deadline.get_or_insert_with(|| tokio::time::Instant::now() + HOLD_SLICE)
        } else {
            hold_deadline = None;
            tokio::time::Instant::now()
        };
        let room_wait = match &mut held {
            Held::Room(n) => Some(n),
            _ => None,
        };
        let mut release = false;
        // Biased: no random number per turn. Every branch only says why the loop turns
        // again (its top writes, times out and closes whatever the reason), so the order
        // starves nothing: a flooding reader still yields every READS_PER_TURN reads.
        tokio::select! {
            biased;
            ready = std::future::poll_fn(|cx| stream.poll_write_ready(cx)), if want_write => {
                match ready {
                    Ok(()) => blocked = false,
                    Err(_) => conn.session().handle_write_error(Instant::now()),
                }
            }
            ready = std::future::poll_fn(|cx| stream.poll_read_ready(cx)), if want_read => {
                match ready {
                    // Readable, or the peer closed (read_some sees the 0).
                    Ok(()) => {
                        read_some(&sh, &conn, &stream, tls.as_mut());
                        fresh = true;
                        reads += 1;
                    }
                    Err(_) => conn.session().handle_write_error(Instant::now()),
                }
            }
            () = &mut woken => woken.set(conn.wake.notified()),
            _ = &mut timer, if armed.is_some() => {
                armed = None;
                moved_later = false;
            }
            _ = async { room_wait.expect("checked").await }, if room_held => release = true,
            // A held line is offered again at least every slice (a safety net).
            _ = tokio::time::sleep_until(hold_until), if any_held => release = true,
        }
        if reads >= READS_PER_TURN {
            reads = 0;
            tokio::task::yield_now().await;
        }
        if release {
            hold_deadline = None;
            held = Held::No;
            fresh = true;
            // Bytes waiting in the socket while the input side was held prove the client
            // alive, though not read yet (see Session::handle_input_waiting).
            let waiting = crate::net::wait::wait_one(
                &stream,
                crate::net::wait::PollFlags::IN,
                Duration::ZERO,
            );
            if matches!(waiting, Ok(true)) {
                conn.session().handle_input_waiting(Instant::now());
            }
        }
    };
    // On a plain socket the kernel delivers what it took after the close; TLS's buffer
    // must be emptied here first (the END, the lines before it, close_notify), for as long
    // as the client keeps reading them (each END_GRACE of silence ends it).
    let mut delivered = true;
    if let Some(t) = &mut tls {
        if matches!(close, Close::AfterEnd(_)) {
            t.close_notify();
        }
        delivered = tls_flush_within(t, &stream, END_GRACE, &conn.close_now).await;
    }
    let late = conn.session().dead_late();
    match close {
        Close::AfterEnd(reason) => {
            sh.log.emit(Event::EndSent {
                id: conn.id,
                peer: conn.peer,
                reason,
                delivered,
                late,
            });
            linger(&stream, Instant::now() + END_LINGER).await;
        }
        Close::Now(EndReason::Closed) => {}
        Close::Now(reason) => sh.log.emit(Event::EndSent {
            id: conn.id,
            peer: conn.peer,
            reason,
            delivered: false,
            late,
        }),
    }
    drop(stream);
    // The address's slot is free with the socket, before the log says so.
    sh.live.per_ip().release(conn.peer.ip());
    sh.log.emit(Event::Closed {
        id: conn.id,
        peer: conn.peer,
    });
    if let Some(mut chat) = sh.chat() {
        chat.conns.remove(&conn.id);
    }
    sh.conns.remove(conn.id);
}

/// Sends the encrypted bytes TLS holds that the socket takes now; true when some are left
/// (the socket is full, and its cached readiness is cleared, so waiting for it works).
fn tls_flush_now(tls: &mut ServerTls, stream: &TcpStream, s: &mut Session, now: Instant) -> bool {
    if !tls.wants_write() {
        return false;
    }
    let flushed = stream.try_io(Interest::WRITABLE, || match tls.flush(stream) {
        Ok(true) => Ok(()),
        Ok(false) => Err(io::ErrorKind::WouldBlock.into()),
        Err(e) => Err(e),
    });
    if tls.take_progress() {
        s.handle_transport_progress(now);
    }
    match flushed {
        Ok(()) => false,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => true,
        Err(_) => {
            s.handle_write_error(now);
            false
        }
    }
}

/// One real write attempt when an ending TLS session's write-stall deadline is due while the
/// socket is waited for (blocked): the kernel reports a TCP socket writable only once a good part of its
/// buffer is free, and a client reading slowly through a small window frees less than that
/// in a stall's time while still taking bytes. Bypasses `try_io`, which would not even try
/// with the cached readiness clear. Whatever the socket takes (the session's bytes, or TLS
/// records) restarts the stall clock; nothing taken leaves the deadline to end the client.
/// True when this ended a lag.
fn probe_write(
    stream: &TcpStream,
    tls: Option<&mut ServerTls>,
    s: &mut Session,
    now: Instant,
) -> bool {
    let mut iov = [IoSlice::new(&[]); MAX_SLICES];
    let n = s.peek_transmit(&mut iov);
    let last = s.is_final_flush();
    let sent = match tls {
        Some(t) => {
            let sent = if n > 0 {
                t.send(stream, &iov[..n])
            } else {
                t.flush_counting(stream).map(|_| 0)
            };
            if t.take_progress() {
                s.handle_transport_progress(now);
            }
            sent
        }
        None if n > 0 => send_now(stream, &iov[..n], last),
        None => Ok(0),
    };
    match sent {
        Ok(k) if k > 0 => {
            let caught_up = s.handle_written(now, k);
            if s.queued() > 0 {
                // Still more than the socket takes: the clock runs again from now.
                s.handle_write_blocked(now);
            }
            caught_up
        }
        Err(e) if e.kind() != io::ErrorKind::WouldBlock => {
            s.handle_write_error(now);
            false
        }
        _ => {
            if s.queued() > 0 {
                s.handle_write_blocked(now);
            }
            false
        }
    }
}

/// Sends what TLS holds, waiting for the socket as needed, as
/// [`crate::net::tls::flush_within`] does (no progress for `grace`, or its cap, ends it); a
/// shutdown's `close_now` ends it at once. True when everything left.
async fn tls_flush_within(
    tls: &mut ServerTls,
    stream: &TcpStream,
    grace: Duration,
    close_now: &AtomicBool,
) -> bool {
    use crate::net::tls::{CloseFlush, CLOSE_FLUSH_POLL};
    let mut close = CloseFlush::new(Instant::now(), grace);
    loop {
        // Tried directly, not through `try_io`, which would not even try while the cached
        // readiness is clear: see CLOSE_FLUSH_POLL.
        let flushed = tls.flush_counting(stream);
        if let Some(done) = close.attempt(Instant::now(), flushed) {
            return done;
        }
        if close_now.load(Ordering::Acquire) {
            return false;
        }
        // The socket is full: clear the cached readiness, so `writable()` waits for room.
        let _ = stream.try_io(Interest::WRITABLE, || {
            Err::<(), io::Error>(io::ErrorKind::WouldBlock.into())
        });
        let until = close.deadline().min(Instant::now() + CLOSE_FLUSH_POLL);
        let _ = tokio::time::timeout_at(until.into(), stream.writable()).await;
    }
}

/// Reads what the socket holds (at most [`READ_CHUNK`]) into the session, decrypting it
/// first on a TLS connection.
fn read_some(sh: &Shared, conn: &EConn, stream: &TcpStream, tls: Option<&mut ServerTls>) {
    READ_BUF.with(|buf| {
        let mut buf = buf.borrow_mut();
        // A read that leaves part of the buffer empty drained the socket: clear the cached
        // readiness (WouldBlock out of `try_io`) so the next turn waits for the next edge
        // instead of paying a read that can only say EAGAIN, as tokio's own `poll_read`
        // does. A pending FIN stays visible: tokio never clears the read-closed state.
        let len = buf.len();
        let mut partial = 0;
        let read = stream.try_io(Interest::READABLE, || {
            let n = rustix::io::read(stream, &mut buf[..])?;
            if n > 0 && n < len {
                partial = n;
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(n)
        });
        let read = if partial > 0 { Ok(partial) } else { read };
        let closed = match read {
            Ok(0) => Some(None),
            Ok(n) => match tls {
                None => {
                    let mut s = conn.session();
                    s.handle_rx(Instant::now(), &buf[..n]);
                    log_session(&sh.log, conn.id, conn.peer, &mut s);
                    None
                }
                Some(tls) => PLAIN_BUF.with(|plain| {
                    let mut plain = plain.borrow_mut();
                    plain.clear();
                    let got = tls.handle_raw(&buf[..n], &mut plain);
                    let now = Instant::now();
                    let mut s = conn.session();
                    let eof = match got {
                        Err(e) => {
                            s.handle_insecure(now, format!("TLS failed: {e}"));
                            false
                        }
                        Ok(got) => {
                            s.handle_rx(now, &plain);
                            if !tls.is_handshaking() {
                                s.handle_secured(now);
                            }
                            got.closed
                        }
                    };
                    log_session(&sh.log, conn.id, conn.peer, &mut s);
                    // The decrypted burst's memory goes back (a trickle needs little).
                    if plain.capacity() > READ_CHUNK {
                        *plain = Vec::new();
                    }
                    eof.then_some(None)
                }),
            },
            Err(e) if crate::net::is_retryable_io(&e) => None,
            Err(e) => Some(Some(e.to_string())),
        };
        if let Some(error) = closed {
            let mut s = conn.session();
            // A close we caused ourselves (END sent) is not the client's doing.
            if s.is_open() {
                s.handle_closed(Instant::now());
                drop(s);
                sh.log.emit(Event::ClosedByClient {
                    id: conn.id,
                    peer: conn.peer,
                    error,
                });
            }
        }
    });
}

/// Handles the complete lines the session holds (see [`relay::pump`]); returns what the
/// input side must wait for.
fn pump<'a>(sh: &'a Shared, conn: &EConn, stage: &mut Stage) -> Held<'a> {
    let mut chat = sh.chat();
    match relay::pump(&sh.log, chat.as_deref_mut(), conn.id, conn, stage) {
        Pumped::NeedBytes => Held::No,
        Pumped::OwnHeld => Held::Own,
        Pumped::Stop => Held::Stop,
        Pumped::RoomHeld => {
            // Registered before the room unlocks: a laggard's catch-up cannot be missed.
            let mut notified = Box::pin(sh.room_changed.notified());
            notified.as_mut().enable();
            drop(chat);
            Held::Room(notified)
        }
    }
}

/// After `END`: FIN, then discard input until the client closes or `deadline` (see
/// [`END_LINGER`]), so closing does not reset the connection before the client reads END.
async fn linger(stream: &TcpStream, deadline: Instant) {
    let _ = rustix::net::shutdown(stream, rustix::net::Shutdown::Write);
    let mut buf = [0u8; 4096];
    loop {
        tokio::select! {
            r = stream.readable() => {
                if r.is_err() {
                    return;
                }
                // A few reads per turn, then yield: a client flooding its discarded input
                // must not hold a worker for the whole linger.
                for _ in 0..16 {
                    match stream.try_read(&mut buf) {
                        Ok(0) => return,
                        Ok(_) => {
                            if Instant::now() >= deadline {
                                return;
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(_) => return,
                    }
                }
                tokio::task::yield_now().await;
            }
            _ = tokio::time::sleep_until(deadline.into()) => return,
        }
    }
}
