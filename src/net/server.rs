//! `hb-server`: the accept loop and the two threads of every connection.
//!
//! ```text
//!                accept loop (Server::run)
//!                       │ registers a Conn, spawns two threads, or END server-full
//!         ┌─────────────┴──────────────┐
//!  data-exchange thread          companion heartbeat thread
//!  (reads, never writes)         (the only writer of the socket)
//!   read with a deadline          drains the bounded outbound queue
//!   → Heartbeat::handle_rx        sleeps until a queued line, the bell,
//!   → switch off, parse, reply      or the core's next deadline
//!   deadline passed in silence:   switch on: poll the core → PING k / END
//!     switch on, ring the bell    END written: FIN, drain input ≤ END_LINGER,
//!                                   then shutdown(Both), exit (error: at once)
//! ```
//! The last of the two threads to exit removes the connection from the registry, so the
//! registry size is the number of connections still holding threads and descriptors.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::Select;

use crate::config::{Mode, ServerSettings, Wire};
use crate::core::heartbeat::{Action, Heartbeat};
use crate::core::room::{Delivery, Room};
use crate::core::wire::{BadLine, ClientMsg, EndReason, ErrCode, LineDecoder, ServerMsg};
use crate::net::conn::{linger, CompanionRx, Conn, Lingerer, Out, END_LINGER};
use crate::net::events::{Event, EventLog};

/// Listen backlog: large enough for a connect burst of a thousand clients.
pub const BACKLOG: i32 = 1024;
/// Stack of each connection thread; they hold a 4 KiB buffer and shallow call chains.
const THREAD_STACK: usize = 128 * 1024;
/// Longest a read waits when the heartbeat has no deadline (absurdly large settings).
const MAX_READ_WAIT: Duration = Duration::from_secs(60);
/// How long the final `END` line may take to write before the socket is closed anyway.
const END_WRITE_TIMEOUT: Duration = Duration::from_millis(200);
/// Most bytes the companion gathers from its queue into one write.
const WRITE_BATCH: usize = 64 * 1024;
/// How long shutdown waits for companions to deliver `END server-shutdown`.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(500);

/// Why the server could not start or keep running.
#[derive(Debug)]
pub enum ServerError {
    /// The listening socket could not be created, bound or put to listen.
    Bind {
        /// `host:port` as asked for.
        addr: String,
        /// The OS error.
        source: io::Error,
    },
    /// The settings ask for something this build does not do yet.
    Unsupported(String),
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Bind { addr, source } => write!(f, "cannot listen on {addr}: {source}"),
            Self::Unsupported(what) => f.write_str(what),
        }
    }
}

impl std::error::Error for ServerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Bind { source, .. } => Some(source),
            Self::Unsupported(_) => None,
        }
    }
}

struct Shared {
    settings: ServerSettings,
    log: EventLog,
    conns: Mutex<HashMap<u64, Arc<Conn>>>,
    /// Signalled whenever a connection is freed, so shutdown can wait without polling.
    freed: Condvar,
    next_id: AtomicU64,
    stopping: AtomicBool,
    /// Classic-wire connections (empty on the line wire).
    classic: Arc<crate::net::classic::Registry>,
    /// The chat room, in chat mode.
    chat: Option<Mutex<Chat>>,
    /// Lingers refused connections off the accept thread (`None`: its thread could not start,
    /// refused sockets then close at once).
    lingerer: Option<Lingerer>,
}

/// The chat room and the outbound queues of its members. One lock guards both, so every
/// member sees room events (JOINED, MSG, LEFT) in the same order, and each sender's
/// messages in the order sent. Nothing done under the lock blocks: a delivery is a
/// `try_send` on a bounded queue.
#[derive(Default)]
struct Chat {
    room: Room,
    members: HashMap<u64, Arc<Conn>>,
}

impl Chat {
    /// Queues `first` for its recipients. A member whose queue overflows is evicted as a slow
    /// consumer, and its `LEFT` is delivered in turn (which may evict more).
    fn deliver(&mut self, first: Delivery, log: &EventLog) {
        let mut work = VecDeque::from([first]);
        while let Some(d) = work.pop_front() {
            let line: Arc<str> = d.msg.encode().into();
            let mut evicted = Vec::new();
            for id in d.to {
                if let Some(member) = self.members.get(&id) {
                    if member.send(Out::Line(line.clone())).is_err() {
                        evicted.push(id);
                    }
                }
            }
            for id in evicted {
                if let Some(left) = self.leave(id, EndReason::SlowConsumer, log) {
                    work.push_back(left);
                }
            }
        }
    }

    /// Removes `id` from the room; the `LEFT` to deliver if it had joined.
    fn leave(&mut self, id: u64, reason: EndReason, log: &EventLog) -> Option<Delivery> {
        let member = self.members.remove(&id);
        let left = self.room.handle_leave(id, reason)?;
        if let (Some(m), ServerMsg::Left { name, .. }) = (member, &left.msg) {
            log.emit(Event::Left {
                id,
                peer: m.peer,
                name: name.clone(),
                reason,
            });
        }
        Some(left)
    }
}

impl Shared {
    fn chat(&self) -> Option<MutexGuard<'_, Chat>> {
        self.chat
            .as_ref()
            .map(|c| c.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// A connection is ending for `reason`: announce it to the room if it had joined.
    fn leave(&self, conn: &Conn, reason: EndReason) {
        if let Some(mut chat) = self.chat() {
            if let Some(left) = chat.leave(conn.id, reason, &self.log) {
                chat.deliver(left, &self.log);
            }
        }
    }

    fn conns(&self) -> MutexGuard<'_, HashMap<u64, Arc<Conn>>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Called by each of a connection's threads as it exits.
    fn release(&self, conn: &Conn) {
        if conn.release() {
            // The registry's reference goes now; the descriptor closes (and `closed` is
            // logged) when the two threads drop theirs a moment later.
            self.conns().remove(&conn.id);
            self.freed.notify_all();
        }
    }
}

/// A bound server, ready to [`Server::run`].
pub struct Server {
    listener: TcpListener,
    addr: SocketAddr,
    shared: Arc<Shared>,
    /// `(asked, allowed, vm.max_map_count)` when `--max-conns` had to be lowered.
    lowered: Option<(usize, usize, usize)>,
}

/// Memory maps one connection costs: two threads, each with its stack and guard page plus
/// the runtime's signal stack and its guard page (measured: 8.0 per connection).
const MAPS_PER_CONN: usize = 8;
/// Maps left for everything else (large allocations, allocator arenas, the runtime).
const MAPS_RESERVE: usize = 1024;

/// How many connections the kernel's memory-map limit leaves room for, and that limit.
///
/// Past `vm.max_map_count` a new thread cannot map its signal stack and the Rust runtime
/// aborts the whole process, so the server must stop admitting before that, not after.
fn map_capacity() -> Option<(usize, usize)> {
    let max: usize = std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let used = std::fs::read_to_string("/proc/self/maps")
        .ok()?
        .lines()
        .count();
    Some((max.saturating_sub(used + MAPS_RESERVE) / MAPS_PER_CONN, max))
}

/// Controls a running server from another thread (Ctrl-C handler, tests, scenarios).
#[derive(Clone)]
pub struct ServerHandle {
    shared: Arc<Shared>,
    addr: SocketAddr,
}

/// Creates a listening TCP socket with [`BACKLOG`] (std's `TcpListener::bind` uses 128).
fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    use rustix::net::{AddressFamily, SocketFlags, SocketType};
    let family = if addr.is_ipv4() {
        AddressFamily::INET
    } else {
        AddressFamily::INET6
    };
    let fd = rustix::net::socket_with(family, SocketType::STREAM, SocketFlags::CLOEXEC, None)?;
    rustix::net::sockopt::set_socket_reuseaddr(&fd, true)?;
    rustix::net::bind(&fd, &addr)?;
    rustix::net::listen(&fd, BACKLOG)?;
    Ok(TcpListener::from(fd))
}

impl Server {
    /// Binds the listening socket; with port 0 the OS picks a free port ([`Server::local_addr`]).
    pub fn bind(settings: ServerSettings, log: EventLog) -> Result<Self, ServerError> {
        if settings.wire == Wire::Classic && settings.mode == Mode::Chat {
            return Err(ServerError::Unsupported(
                "--mode chat works only on the line wire, not with --wire classic".into(),
            ));
        }
        let want = format!("{}:{}", settings.host, settings.port);
        let bind_err = |source| ServerError::Bind {
            addr: want.clone(),
            source,
        };
        let listener =
            crate::net::try_each_addr(&settings.host, settings.port, listen).map_err(bind_err)?;
        let addr = listener.local_addr().map_err(bind_err)?;
        let chat = (settings.mode == Mode::Chat).then(|| Mutex::new(Chat::default()));
        let mut settings = settings;
        let lowered = match map_capacity() {
            Some((allowed, max_maps)) if allowed < settings.max_conns => {
                let asked = settings.max_conns;
                settings.max_conns = allowed.max(1);
                Some((asked, settings.max_conns, max_maps))
            }
            _ => None,
        };
        let shared = Arc::new(Shared {
            settings,
            log,
            conns: Mutex::new(HashMap::new()),
            freed: Condvar::new(),
            next_id: AtomicU64::new(1),
            stopping: AtomicBool::new(false),
            classic: Arc::default(),
            chat,
            lingerer: Lingerer::start().ok(),
        });
        Ok(Self {
            listener,
            addr,
            shared,
            lowered,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections served at once: `--max-conns`, or less if memory maps run out first.
    pub fn max_conns(&self) -> usize {
        self.shared.settings.max_conns
    }

    /// A handle to stop the server from another thread.
    pub fn handle(&self) -> ServerHandle {
        ServerHandle {
            shared: self.shared.clone(),
            addr: self.addr,
        }
    }

    /// Accepts connections until [`ServerHandle::shutdown`]. Never panics on resource
    /// exhaustion: newcomers that cannot be served get `END server-full`.
    pub fn run(self) -> Result<(), ServerError> {
        self.shared.log.emit(Event::Listening {
            addr: self.addr,
            mode: self.shared.settings.mode,
            wire: self.shared.settings.wire,
        });
        if let Some((asked, allowed, max_map_count)) = self.lowered {
            self.shared.log.emit(Event::CapacityLowered {
                asked,
                allowed,
                max_map_count,
            });
        }
        // A spare descriptor, given up when accept fails for lack of descriptors so the
        // newcomer can still be told why it is refused (instead of spinning on EMFILE).
        let mut reserve = File::open("/dev/null").ok();
        // Accept only once poll() reports a pending connection: Linux allocates the new
        // descriptor before it waits in accept(), so a blocking accept() issued while out of
        // descriptors fails at once, and one issued with the reserve's slot would hold that
        // slot until the next newcomer, who would then be refused needlessly.
        if let Err(source) = self.listener.set_nonblocking(true) {
            return Err(ServerError::Bind {
                addr: self.addr.to_string(),
                source,
            });
        }
        loop {
            if let Err(e) = wait_readable(&self.listener, MAX_READ_WAIT) {
                if e.kind() != io::ErrorKind::Interrupted {
                    thread::sleep(Duration::from_millis(10));
                }
            }
            if self.shared.stopping.load(Ordering::Acquire) {
                break;
            }
            match self.listener.accept() {
                Ok((stream, peer)) => match stream.set_nonblocking(false) {
                    Ok(()) => self.admit(stream, peer),
                    Err(e) => refuse(
                        &self.shared,
                        stream,
                        Some(peer),
                        format!("socket setup failed: {e}"),
                    ),
                },
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if is_fd_exhaustion(&e) => {
                    drop(reserve.take());
                    if let Ok((stream, peer)) = self.listener.accept() {
                        // No linger here: the descriptor is needed back at once, and a
                        // lingering one would refuse the next newcomer for lack of it.
                        write_refusal(&stream);
                        drop(stream);
                        self.shared.log.emit(Event::Refused {
                            peer: Some(peer),
                            reason: EndReason::ServerFull,
                            detail: format!("no file descriptor left: {e}"),
                        });
                    }
                    reserve = File::open("/dev/null").ok();
                    if reserve.is_none() {
                        // Still exhausted: wait for a connection to close rather than spin.
                        thread::sleep(Duration::from_millis(10));
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                    ) => {}
                Err(e) => {
                    self.shared.log.emit(Event::Refused {
                        peer: None,
                        reason: EndReason::ServerFull,
                        detail: format!("accept failed: {e}"),
                    });
                    thread::sleep(Duration::from_millis(10));
                }
            }
        }
        Ok(())
    }

    fn admit(&self, stream: TcpStream, peer: SocketAddr) {
        let sh = &self.shared;
        if sh.settings.wire == Wire::Classic {
            crate::net::classic::admit(
                &sh.classic,
                &sh.settings,
                &sh.log,
                sh.lingerer.as_ref(),
                stream,
                peer,
            );
            return;
        }
        let max = sh.settings.max_conns;
        if sh.conns().len() >= max {
            refuse(sh, stream, Some(peer), format!("max-conns {max} reached"));
            return;
        }
        let _ = stream.set_nodelay(true);
        let id = sh.next_id.fetch_add(1, Ordering::Relaxed);
        let cfg = sh.settings.heartbeat;
        let (conn, rx) = Conn::new(
            id,
            peer,
            stream,
            Heartbeat::new(cfg, Instant::now()),
            sh.settings.queue,
            sh.log.clone(),
        );
        let conn = Arc::new(conn);
        let hello = ServerMsg::Hello {
            idle: cfg.idle(),
            interval: cfg.interval(),
            count: cfg.count(),
            mode: Some(sh.settings.mode),
        };
        let _ = conn.send(Out::Line(hello.encode().into()));
        sh.conns().insert(id, conn.clone());
        sh.log.emit(Event::Connected { id, peer });

        let (sh2, c2) = (sh.clone(), conn.clone());
        let companion = thread::Builder::new()
            .name(format!("hb-write-{id}"))
            .stack_size(THREAD_STACK)
            .spawn(move || companion(&sh2, &c2, rx));
        if let Err(e) = companion {
            // No writer exists, so this thread may write the refusal itself. The connection
            // owns the socket, so it closes without a linger (threads are short right now).
            sh.conns().remove(&id);
            write_refusal(conn.stream());
            sh.log.emit(Event::Refused {
                peer: Some(peer),
                reason: EndReason::ServerFull,
                detail: format!("cannot start a thread: {e}"),
            });
            return;
        }
        let (sh2, c2) = (sh.clone(), conn.clone());
        let reader = thread::Builder::new()
            .name(format!("hb-read-{id}"))
            .stack_size(THREAD_STACK)
            .spawn(move || reader(&sh2, &c2));
        if let Err(e) = reader {
            sh.log.emit(Event::Refused {
                peer: Some(peer),
                reason: EndReason::ServerFull,
                detail: format!("cannot start a thread: {e}"),
            });
            conn.end_now(EndReason::ServerFull);
            sh.release(&conn);
        }
    }
}

fn is_fd_exhaustion(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(code) if code == rustix::io::Errno::MFILE.raw_os_error()
        || code == rustix::io::Errno::NFILE.raw_os_error()
        || code == rustix::io::Errno::NOBUFS.raw_os_error()
        || code == rustix::io::Errno::NOMEM.raw_os_error())
}

/// Tells a newcomer `END server-full` and closes it after a linger on the lingering thread,
/// so input it already sent does not turn the close into a reset that destroys the END.
/// Never blocks the accept loop.
fn refuse(sh: &Shared, stream: TcpStream, peer: Option<SocketAddr>, detail: String) {
    write_refusal(&stream);
    if let Some(l) = &sh.lingerer {
        l.close(stream);
    }
    sh.log.emit(Event::Refused {
        peer,
        reason: EndReason::ServerFull,
        detail,
    });
}

/// Writes `END server-full` without blocking (a fresh socket's buffer always has room).
fn write_refusal(stream: &TcpStream) {
    let _ = stream.set_nonblocking(true);
    let _ = (&*stream).write_all(ServerMsg::End(EndReason::ServerFull).encode().as_bytes());
    let _ = stream.shutdown(std::net::Shutdown::Write);
}

impl ServerHandle {
    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections currently holding threads.
    pub fn connections(&self) -> usize {
        self.shared.conns().len() + self.shared.classic.len()
    }

    /// Stops accepting, sends `END server-shutdown` to every client and waits (at most about
    /// half a second) for them to be closed. Calling it again does nothing.
    pub fn shutdown(&self) {
        let sh = &self.shared;
        if sh.stopping.swap(true, Ordering::AcqRel) {
            return;
        }
        // Unblock accept() with a connection of our own; it sees `stopping` and returns.
        let wake = match self.addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => {
                SocketAddr::new(Ipv4Addr::LOCALHOST.into(), self.addr.port())
            }
            IpAddr::V6(ip) if ip.is_unspecified() => {
                SocketAddr::new(Ipv6Addr::LOCALHOST.into(), self.addr.port())
            }
            _ => self.addr,
        };
        let _ = TcpStream::connect_timeout(&wake, Duration::from_millis(100));
        if sh.settings.wire == Wire::Classic {
            sh.classic.shutdown(&sh.log, SHUTDOWN_GRACE);
            return;
        }
        let conns: Vec<Arc<Conn>> = sh.conns().values().cloned().collect();
        // Chat members hear who is leaving before they are told to go themselves.
        if let Some(mut chat) = sh.chat() {
            for id in chat.room.members() {
                if let Some(left) = chat.leave(id, EndReason::ServerShutdown, &sh.log) {
                    chat.deliver(left, &sh.log);
                }
            }
        }
        sh.log.emit(Event::ShuttingDown {
            clients: conns.len(),
        });
        for c in &conns {
            c.end_now(EndReason::ServerShutdown);
        }
        let deadline = Instant::now() + SHUTDOWN_GRACE;
        let mut guard = sh.conns();
        while !guard.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            guard = sh
                .freed
                .wait_timeout(guard, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        // Whoever is still there is stuck writing to a client that does not read.
        for c in guard.values() {
            c.shutdown();
        }
    }
}

/// The data-exchange thread: reads, feeds the heartbeat core, answers lines through the queue.
fn reader(sh: &Shared, conn: &Arc<Conn>) {
    let mut decoder = LineDecoder::new(sh.settings.max_line);
    let mut buf = vec![0u8; 4096];
    // poll() says when to read; this only bounds a read that poll() woke spuriously.
    let _ = conn.stream().set_read_timeout(Some(Duration::from_secs(1)));
    let closed = loop {
        let now = Instant::now();
        let wait = conn
            .heartbeat()
            .poll_timeout()
            .map_or(MAX_READ_WAIT, |at| at.saturating_duration_since(now))
            .clamp(Duration::from_millis(1), MAX_READ_WAIT);
        // poll(2) sleeps on a high-resolution timer; SO_RCVTIMEO would wake up to a few
        // jiffies late and start every heartbeat round that much behind schedule.
        match wait_readable(conn.stream(), wait) {
            Ok(true) => {}
            Ok(false) => {
                let hb = conn.heartbeat();
                if hb.is_idle_expired(Instant::now()) && !conn.heartbeat_on() {
                    let idle = hb.config().idle();
                    drop(hb);
                    sh.log.emit(Event::RoundStarted {
                        id: conn.id,
                        peer: conn.peer,
                        idle,
                    });
                    conn.set_heartbeat(true);
                }
                continue;
            }
            Err(e) => break Some(Some(e.to_string())),
        }
        match conn.stream().read(&mut buf) {
            Ok(0) => break Some(None),
            // Once the connection is ending, input is only drained (see `linger`), never
            // answered or relayed.
            Ok(_) if conn.is_ending() => break None,
            Ok(n) => {
                let answered = conn.heartbeat().handle_rx(Instant::now());
                conn.set_heartbeat(false);
                if let Some(a) = answered {
                    sh.log.emit(Event::Answered {
                        id: conn.id,
                        peer: conn.peer,
                        after: a.after_pings,
                        rtt: a.rtt,
                    });
                }
                decoder.feed(&buf[..n]);
                if !handle_lines(sh, conn, &mut decoder) {
                    break None;
                }
            }
            Err(e) if crate::net::is_retryable_read(&e) => {}
            Err(e) => break Some(Some(e.to_string())),
        }
        if conn.is_ending() {
            break None;
        }
    };
    // A close we caused ourselves (END sent, socket shut down) is not the client's doing.
    if let Some(error) = closed {
        if !conn.is_ending() {
            sh.log.emit(Event::ClosedByClient {
                id: conn.id,
                peer: conn.peer,
                error,
            });
            conn.end_now(EndReason::Closed);
        }
    }
    sh.release(conn);
}

/// Waits until `stream` has bytes (or EOF/error) to read; false when `wait` passed first.
fn wait_readable(fd: impl std::os::fd::AsFd, wait: Duration) -> io::Result<bool> {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    let timeout = Timespec {
        tv_sec: wait.as_secs() as _,
        tv_nsec: wait.subsec_nanos() as _,
    };
    let mut fds = [PollFd::new(&fd, PollFlags::IN)];
    match poll(&mut fds, Some(&timeout)) {
        Ok(n) => Ok(n > 0),
        Err(rustix::io::Errno::INTR) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Handles every complete line; false when the connection must stop reading.
fn handle_lines(sh: &Shared, conn: &Arc<Conn>, decoder: &mut LineDecoder) -> bool {
    loop {
        let line = match decoder.next_line() {
            Ok(Some(line)) => line,
            Ok(None) => return true,
            Err(_) => {
                conn.end_after_queue(EndReason::LineTooLong);
                return false;
            }
        };
        if line.is_empty() {
            // A bare newline is a keep-alive (someone pressing Enter in nc): nothing to answer.
            continue;
        }
        let parsed = ClientMsg::parse(line).and_then(|msg| match sh.chat() {
            Some(mut chat) => chat_line(sh, &mut chat, conn, msg),
            None => echo_line(msg),
        });
        let reply = match parsed {
            Ok(Reply::Line(msg)) => Some(msg),
            Ok(Reply::Nothing) => None,
            Ok(Reply::Quit) => {
                conn.end_after_queue(EndReason::Quit);
                return false;
            }
            Err(bad) => {
                sh.log.emit(Event::BadLine {
                    id: conn.id,
                    peer: conn.peer,
                    detail: bad.to_string(),
                });
                Some(ServerMsg::Err(bad))
            }
        };
        if let Some(reply) = reply {
            if conn.send(Out::Line(reply.encode().into())).is_err() {
                return false;
            }
        }
    }
}

/// What a line asks the connection to do.
enum Reply {
    /// Queue this line for the sender.
    Line(ServerMsg),
    /// Nothing more to do.
    Nothing,
    /// `QUIT`: end the connection after what is queued.
    Quit,
}

fn echo_line(msg: ClientMsg) -> Result<Reply, BadLine> {
    Ok(match msg {
        ClientMsg::Msg(text) => Reply::Line(ServerMsg::Echo(text)),
        ClientMsg::Ping(token) => Reply::Line(ServerMsg::Pong(token)),
        ClientMsg::Pong(_) | ClientMsg::Join(_) => Reply::Nothing,
        ClientMsg::Quit(_) => Reply::Quit,
        ClientMsg::Who => {
            return Err(BadLine {
                code: ErrCode::UnknownVerb,
                detail: "WHO works only on a chat server (this one is --mode echo)".into(),
            })
        }
    })
}

fn chat_line(
    sh: &Shared,
    chat: &mut Chat,
    conn: &Arc<Conn>,
    msg: ClientMsg,
) -> Result<Reply, BadLine> {
    match msg {
        ClientMsg::Join(name) => {
            let joined = chat.room.handle_join(conn.id, &name)?;
            chat.members.insert(conn.id, conn.clone());
            sh.log.emit(Event::Joined {
                id: conn.id,
                peer: conn.peer,
                name,
            });
            chat.deliver(joined, &sh.log);
            Ok(Reply::Nothing)
        }
        ClientMsg::Msg(text) => {
            let relay = chat.room.handle_msg(conn.id, &text)?;
            chat.deliver(relay, &sh.log);
            Ok(Reply::Nothing)
        }
        ClientMsg::Who => Ok(Reply::Line(ServerMsg::Members(chat.room.names()))),
        other => echo_line(other),
    }
}

/// The companion heartbeat thread: the only writer of the socket.
fn companion(sh: &Shared, conn: &Arc<Conn>, rx: CompanionRx) {
    let hb_cfg = sh.settings.heartbeat;
    // A write that makes no progress for this long means the client stopped reading.
    let stall = hb_cfg
        .interval()
        .clamp(Duration::from_millis(100), Duration::from_secs(2));
    let _ = conn.stream().set_write_timeout(Some(stall));
    let write = |bytes: &[u8]| -> bool {
        match conn.stream().write_all(bytes) {
            Ok(()) => true,
            Err(e) => {
                if !conn.is_ending() {
                    sh.log.emit(Event::WriteFailed {
                        id: conn.id,
                        peer: conn.peer,
                        error: e.to_string(),
                    });
                }
                // A write that made no progress for `stall` means the client takes no data
                // (it stopped reading, or its path is gone): the slow-consumer rule. It did
                // not close anything itself, so `closed` would be a lie to the room.
                let stalled = matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                );
                conn.end_now(if stalled {
                    EndReason::SlowConsumer
                } else {
                    EndReason::Closed
                });
                false
            }
        }
    };
    let mut batch = Vec::new();
    let end = 'run: loop {
        if let Some(reason) = conn.urgent_end() {
            break reason;
        }
        if conn.heartbeat_on() {
            let action = conn.heartbeat().poll(Instant::now());
            match action {
                Some(Action::SendPing(k)) => {
                    if write(ServerMsg::Ping(k.to_string()).encode().as_bytes()) {
                        sh.log.emit(Event::PingSent {
                            id: conn.id,
                            peer: conn.peer,
                            k,
                            n: hb_cfg.count(),
                        });
                    }
                    continue;
                }
                Some(Action::Dead) => {
                    conn.end_now(EndReason::HeartbeatTimeout);
                    continue;
                }
                None => {}
            }
        }
        let deadline = if conn.heartbeat_on() {
            conn.heartbeat().poll_timeout()
        } else {
            None
        };
        let mut sel = Select::new();
        let out_i = sel.recv(&rx.out);
        sel.recv(&rx.bell);
        let op = match deadline {
            Some(at) => match sel.select_deadline(at) {
                Ok(op) => op,
                Err(_) => continue,
            },
            None => sel.select(),
        };
        if op.index() == out_i {
            let Ok(item) = op.recv(&rx.out) else {
                break EndReason::Closed;
            };
            conn.dequeued(&item);
            let first = match item {
                Out::Line(line) => line,
                Out::End(reason) => break reason,
            };
            // Whatever else is already queued goes out in the same write: under load one
            // syscall (and one wake-up of the client) carries many lines.
            batch.clear();
            batch.extend_from_slice(first.as_bytes());
            let mut then_end = None;
            while batch.len() < WRITE_BATCH {
                let Ok(item) = rx.out.try_recv() else { break };
                conn.dequeued(&item);
                match item {
                    Out::Line(line) => batch.extend_from_slice(line.as_bytes()),
                    Out::End(reason) => {
                        then_end = Some(reason);
                        break;
                    }
                }
            }
            if !write(&batch) {
                // A write fails when someone ended the connection (an eviction shuts the
                // socket down) or the client is gone: keep the first reason.
                break 'run conn.urgent_end().unwrap_or(EndReason::Closed);
            }
            if batch.capacity() > 4 * WRITE_BATCH / 16 {
                // Give back a burst's buffer: idle connections should stay small.
                batch = Vec::new();
            }
            if let Some(reason) = then_end {
                break reason;
            }
        } else {
            let _ = op.recv(&rx.bell);
        }
    };
    sh.leave(conn, end);
    if end == EndReason::ServerShutdown {
        // Deliver what was already queued (messages, the LEFTs of the shutdown) first; the
        // shutdown's grace period bounds how long this may take.
        let _ = conn.stream().set_write_timeout(Some(END_WRITE_TIMEOUT));
        while let Ok(item) = rx.out.try_recv() {
            conn.dequeued(&item);
            if let Out::Line(line) = item {
                if conn.stream().write_all(line.as_bytes()).is_err() {
                    break;
                }
            }
        }
    }
    if end != EndReason::Closed {
        let _ = conn.stream().set_write_timeout(Some(END_WRITE_TIMEOUT));
        let delivered = conn
            .stream()
            .write_all(ServerMsg::End(end).encode().as_bytes())
            .is_ok();
        sh.log.emit(Event::EndSent {
            id: conn.id,
            peer: conn.peer,
            reason: end,
            delivered,
        });
        if delivered {
            // FIN after the END, then discard input for a bounded while, so the close does
            // not reset the connection and destroy the END (see END_LINGER).
            linger(conn.stream(), Instant::now() + END_LINGER);
        }
    }
    conn.shutdown();
    sh.release(conn);
}
