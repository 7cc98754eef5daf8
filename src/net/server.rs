//! `hb-server`: the accept loop and the two threads of every connection (the thread engine).
//!
//! ```text
//!                accept loop (Server::run)
//!                       │ registers a Conn (its core::session::Session), spawns two threads,
//!                       │ or END server-full (--max-conns, --max-conns-per-ip, no thread)
//!         ┌─────────────┴──────────────┐
//!  data-exchange thread          companion heartbeat thread
//!  (reads, never writes)         (the only writer of the socket)
//!   poll until bytes or the       switch on: Session::handle_heartbeat → PING k / END
//!     session's idle deadline     Session::handle_flow_timeout (lag, write stall)
//!                                 Session::handle_auth_timeout (no AUTH, token expiry)
//!   bytes → Session::handle_rx    Session::poll_transmit → non-blocking send;
//!     → switch off                  blocked: poll(POLLOUT) in short slices
//!   Session::poll_input           Session::handle_written → caught up: wake held readers
//!     chat line → Hub::handle_op  session ended: Hub::handle_leave (LEFT to the room)
//!     held: wait (room or own     Session::poll_close: END written → FIN, linger
//!       queue), then offer again    ≤ END_LINGER, close; nothing deliverable → close
//!   silence → switch on + bell
//! ```
//! Every protocol decision (what a line means, who gets what, when a sender waits, when a
//! client is ended and why) is made by the core machines [`Session`] and [`Hub`](crate::core::hub::Hub); this module
//! only moves bytes, reads the clock, sleeps and wakes. The last of a connection's two
//! threads to exit removes it from the registry, so the registry size is the number of
//! connections still holding threads and descriptors.
//!
//! Locks: the chat room (hub and its members) before any session, never the other way round;
//! no lock is held across a system call that can block.

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::Receiver;

use crate::config::{Engine, Mode, ServerSettings, Wire};
use crate::core::outq::MAX_SLICES;
use crate::core::session::{Close, Session, SessionConfig, END_GRACE};
use crate::core::wire::{EndReason, ServerMsg};
use crate::net::cluster_driver::ClusterState;
use crate::net::conn::{linger, Conn, Lingerer, END_LINGER};
use crate::net::events::{Event, EventLog, RefusalCause};
use crate::net::live::Live;
use crate::net::metrics::{Exporter, Metrics};
use crate::net::registry::Registry;
use crate::net::relay::{self, log_session, Chat, Pumped};
use crate::net::tls::ServerTlsConfig;
use crate::net::wait::{wait_one, PollFlags};

/// Listen backlog: large enough for a connect burst of a thousand clients.
pub const BACKLOG: i32 = 1024;
/// Stack of each connection thread; they hold a 4 KiB buffer and shallow call chains.
const THREAD_STACK: usize = 128 * 1024;
/// Longest a read waits when the heartbeat has no deadline (absurdly large settings).
const MAX_READ_WAIT: Duration = Duration::from_secs(60);
/// Longest a held reader, or a companion blocked on a full socket, sleeps before looking
/// again (a safety net: they are woken when the reason they wait for goes away).
pub(crate) const HOLD_SLICE: Duration = Duration::from_millis(20);
/// Bytes one read takes from a client's socket: a small buffer for a client that sends a
/// line now and then, grown (doubling) while reads fill it, up to [`READ_BUF_MAX`], so a
/// fast sender's lines are handled (and relayed, and its recipients woken) in large batches.
const READ_BUF: usize = 4 * 1024;
/// See [`READ_BUF`].
const READ_BUF_MAX: usize = 128 * 1024;
/// How long shutdown waits for companions to deliver `END server-shutdown`.
pub(crate) const SHUTDOWN_GRACE: Duration = Duration::from_millis(500);

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
    /// The broker link could not be started (a bad `--broker` URL: exit 2; no thread: 1).
    Broker(crate::net::broker::BrokerError),
    /// The TLS certificate or key could not be loaded (exit 2).
    Tls(crate::net::tls::TlsError),
    /// `--metrics`: its address could not be resolved or bound, or its thread not started.
    Metrics {
        /// `host:port` as asked for.
        addr: String,
        /// The OS error.
        source: io::Error,
    },
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Bind { addr, source } => write!(f, "cannot listen on {addr}: {source}"),
            Self::Unsupported(what) => f.write_str(what),
            Self::Broker(e) => e.fmt(f),
            Self::Tls(e) => write!(f, "cannot serve TLS: {e}"),
            Self::Metrics { addr, source } => write!(f, "cannot serve metrics on {addr}: {source}"),
        }
    }
}

impl std::error::Error for ServerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Bind { source, .. } => Some(source),
            Self::Unsupported(_) => None,
            Self::Broker(e) => Some(e),
            Self::Tls(e) => Some(e),
            Self::Metrics { source, .. } => Some(source),
        }
    }
}

/// A bound server of either engine, ready to [`Server::run`].
pub struct Server {
    engine: Engines,
    /// `--metrics`: its port, bound; served from `run`.
    metrics: Option<Exporter>,
}

enum Engines {
    Threads(ThreadServer),
    Events(crate::net::evloop::EventServer),
}

/// Controls a running server from another thread (Ctrl-C handler, tests, scenarios).
#[derive(Clone)]
pub struct ServerHandle {
    engine: Handles,
    /// Stops the metrics thread (`--metrics`).
    metrics_stop: Option<Arc<crate::net::metrics::Stop>>,
}

#[derive(Clone)]
enum Handles {
    Threads(ThreadHandle),
    Events(crate::net::evloop::EventHandle),
}

impl Server {
    /// Binds the listening socket of the engine `settings.engine` names; with port 0 the OS
    /// picks a free port ([`Server::local_addr`]).
    pub fn bind(settings: ServerSettings, log: EventLog) -> Result<Self, ServerError> {
        if settings.engine == Engine::Events && settings.wire == Wire::Classic {
            return Err(ServerError::Unsupported(
                "--engine events serves the line wire only, not --wire classic".into(),
            ));
        }
        // The metrics port first: the engines keep the log, which counts into them.
        let (log, metrics) = match &settings.metrics {
            None => (log, None),
            Some(addr) => {
                let broker = matches!(settings.broker, crate::config::server::Broker::Redis(_));
                let metrics = Arc::new(Metrics::new(broker));
                let exporter = Exporter::bind(addr, metrics.clone()).map_err(|source| {
                    ServerError::Metrics {
                        addr: addr.to_string(),
                        source,
                    }
                })?;
                (log.with_metrics(metrics), Some(exporter))
            }
        };
        let engine = if settings.engine == Engine::Events {
            Engines::Events(crate::net::evloop::EventServer::bind(settings, log)?)
        } else {
            Engines::Threads(ThreadServer::bind(settings, log)?)
        };
        Ok(Self { engine, metrics })
    }

    /// Where `--metrics` are served (the real port when asked for port 0), if anywhere.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(Exporter::local_addr)
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        match &self.engine {
            Engines::Threads(s) => s.local_addr(),
            Engines::Events(s) => s.local_addr(),
        }
    }

    /// Connections served at once: `--max-conns`, or less if the engine's limits (memory
    /// maps, descriptors) run out first.
    pub fn max_conns(&self) -> usize {
        match &self.engine {
            Engines::Threads(s) => s.max_conns(),
            Engines::Events(s) => s.max_conns(),
        }
    }

    /// A handle to stop the server from another thread.
    pub fn handle(&self) -> ServerHandle {
        ServerHandle {
            engine: match &self.engine {
                Engines::Threads(s) => Handles::Threads(s.handle()),
                Engines::Events(s) => Handles::Events(s.handle()),
            },
            metrics_stop: self.metrics.as_ref().map(Exporter::stopper),
        }
    }

    /// Serves until [`ServerHandle::shutdown`]. Never panics on resource exhaustion:
    /// newcomers that cannot be served get `END server-full`.
    pub fn run(self) -> Result<(), ServerError> {
        let metrics = match self.metrics {
            None => None,
            Some(exporter) => {
                let addr = exporter.local_addr();
                Some(exporter.start().map_err(|source| ServerError::Metrics {
                    addr: addr.map_or_else(String::new, |a| a.to_string()),
                    source,
                })?)
            }
        };
        let served = match self.engine {
            Engines::Threads(s) => s.run(),
            Engines::Events(s) => s.run(),
        };
        if let Some(m) = metrics {
            m.stop();
        }
        served
    }
}

impl ServerHandle {
    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        match &self.engine {
            Handles::Threads(h) => h.local_addr(),
            Handles::Events(h) => h.local_addr(),
        }
    }

    /// Connections currently open.
    pub fn connections(&self) -> usize {
        match &self.engine {
            Handles::Threads(h) => h.connections(),
            Handles::Events(h) => h.connections(),
        }
    }

    /// Stops accepting, sends `END server-shutdown` to every client and waits (at most about
    /// half a second) for them to be closed. Calling it again does nothing.
    pub fn shutdown(&self) {
        // The metrics port closes first: a scrape now would only race the shutdown.
        if let Some(stop) = &self.metrics_stop {
            stop.stop();
        }
        match &self.engine {
            Handles::Threads(h) => h.shutdown(),
            Handles::Events(h) => h.shutdown(),
        }
    }

    /// Serves connections accepted from now on with `new` (SIGHUP: the configuration file
    /// re-read), as far as it can change while serving; see [`ServerSettings::reload`].
    pub fn reload(
        &self,
        new: &ServerSettings,
    ) -> Result<crate::config::server::Reload, ServerError> {
        match &self.engine {
            Handles::Threads(h) => h.shared.live.reload(new),
            Handles::Events(h) => h.live().reload(new),
        }
    }

    /// The settings in effect.
    pub fn settings(&self) -> Arc<ServerSettings> {
        match &self.engine {
            Handles::Threads(h) => h.shared.live.settings(),
            Handles::Events(h) => h.live().settings(),
        }
    }
}

struct Shared {
    /// The settings, TLS certificate and per-address limit new connections get (a reload
    /// swaps them).
    live: Live,
    log: EventLog,
    /// Line-wire connections.
    conns: Registry<Conn>,
    stopping: AtomicBool,
    /// Classic-wire connections (empty on the line wire).
    classic: Arc<crate::net::classic::Registry>,
    /// The chat room, in chat mode.
    chat: Option<Mutex<Chat<Conn>>>,
    /// With `--broker redis://…`: the cluster driver (prepared at bind, running from `run`).
    cluster: Mutex<Option<ClusterState>>,
    /// Signalled under the chat lock when a lagging member caught up or left: senders held
    /// back for it offer their line again.
    room_changed: Condvar,
    /// Lingers refused connections off the accept thread (`None`: its thread could not start,
    /// refused sockets then close at once).
    lingerer: Option<Lingerer>,
}

impl Shared {
    fn chat(&self) -> Option<MutexGuard<'_, Chat<Conn>>> {
        self.chat
            .as_ref()
            .map(|c| c.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// A connection is ending for `reason`: announce it to the room if it had joined, and
    /// wake the senders that were held back for it.
    fn leave(&self, conn: &Conn, reason: EndReason) {
        if let Some(mut chat) = self.chat() {
            chat.leave(&self.log, conn.id, reason);
            self.room_changed.notify_all();
        }
    }

    /// A lagging member caught up: wake the senders held back for it.
    fn caught_up(&self) {
        if let Some(_chat) = self.chat() {
            // Notified under the lock, so a sender that was just held and is about to wait
            // cannot miss it.
            self.room_changed.notify_all();
        }
    }

    /// Called by each of a connection's threads as it exits.
    fn release(&self, conn: &Conn) {
        if conn.release() {
            self.live.per_ip().release(conn.peer.ip());
            // The registry's reference goes now; the descriptor closes (and `closed` is
            // logged) when the two threads drop theirs a moment later.
            if let Some(mut chat) = self.chat() {
                chat.conns.remove(&conn.id);
            }
            self.conns.remove(conn.id);
        }
    }
}

/// A bound thread-engine server.
struct ThreadServer {
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

/// Controls a running thread-engine server from another thread.
#[derive(Clone)]
struct ThreadHandle {
    shared: Arc<Shared>,
    addr: SocketAddr,
}

/// Creates a listening TCP socket with [`BACKLOG`] (std's `TcpListener::bind` uses 128).
pub(crate) fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
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

impl crate::net::cluster_driver::ChatHost for Shared {
    type Conn = Conn;
    fn chat(&self) -> Option<MutexGuard<'_, Chat<Conn>>> {
        Shared::chat(self)
    }
    fn caught_up(&self) {
        Shared::caught_up(self);
    }
    fn log(&self) -> &EventLog {
        &self.log
    }
}

impl ThreadServer {
    /// Binds the listening socket; with port 0 the OS picks a free port.
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
        let tls = server_tls(&settings)?;
        let (chat, cluster) = crate::net::cluster_driver::chat_for(&settings)?;
        let mut settings = settings;
        let capacity = map_capacity();
        let lowered = match capacity {
            Some((allowed, max_maps)) if allowed < settings.max_conns => {
                let asked = settings.max_conns;
                settings.max_conns = allowed.max(1);
                Some((asked, settings.max_conns, max_maps))
            }
            _ => None,
        };
        // A reload may raise --max-conns, but never past what the memory maps allow.
        let cap = capacity.map(|(allowed, _)| allowed.max(1));
        let shared = Arc::new(Shared {
            live: Live::new(settings, tls, cap),
            log,
            conns: Registry::default(),
            stopping: AtomicBool::new(false),
            classic: Arc::default(),
            chat,
            room_changed: Condvar::new(),
            lingerer: Lingerer::start().ok(),
            cluster: Mutex::new(cluster.map(|p| ClusterState::Prepared(Box::new(p)))),
        });
        crate::net::metrics::watch_queues(&shared.log, &shared, |sh| &sh.conns);
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
        self.shared.live.settings().max_conns
    }

    /// A handle to stop the server from another thread.
    pub fn handle(&self) -> ThreadHandle {
        ThreadHandle {
            shared: self.shared.clone(),
            addr: self.addr,
        }
    }

    /// Accepts connections until [`ServerHandle::shutdown`]. Never panics on resource
    /// exhaustion: newcomers that cannot be served get `END server-full`.
    pub fn run(self) -> Result<(), ServerError> {
        crate::net::cluster_driver::start(&self.shared.cluster, &self.shared)?;
        self.shared.log.emit(Event::Listening {
            addr: self.addr,
            mode: self.shared.live.settings().mode,
            wire: self.shared.live.settings().wire,
        });
        crate::net::metrics::announce(&self.shared.log);
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
            if let Err(e) = wait_one(&self.listener, PollFlags::IN, MAX_READ_WAIT) {
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
                        RefusalCause::Other,
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
                            cause: RefusalCause::OutOfFds,
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
                        cause: RefusalCause::Other,
                    });
                    thread::sleep(Duration::from_millis(10));
                }
            }
        }
        Ok(())
    }

    fn admit(&self, stream: TcpStream, peer: SocketAddr) {
        let sh = &self.shared;
        let settings = sh.live.settings();
        if settings.wire == Wire::Classic {
            crate::net::classic::admit(
                &sh.classic,
                &settings,
                &sh.log,
                sh.lingerer.as_ref(),
                stream,
                peer,
            );
            return;
        }
        let max = settings.max_conns;
        if sh.conns.len() >= max {
            refuse(
                sh,
                stream,
                Some(peer),
                RefusalCause::MaxConns,
                format!("max-conns {max} reached"),
            );
            return;
        }
        if let Err(refusal) = sh.live.per_ip().try_admit(peer.ip()) {
            refuse(
                sh,
                stream,
                Some(peer),
                RefusalCause::MaxConnsPerIp,
                refusal.to_string(),
            );
            return;
        }
        let tls = match sh.live.accept_tls() {
            Ok(tls) => tls,
            Err(e) => {
                sh.live.per_ip().release(peer.ip());
                refuse(
                    sh,
                    stream,
                    Some(peer),
                    RefusalCause::Tls,
                    format!("cannot start TLS: {e}"),
                );
                return;
            }
        };
        tune_accepted(&stream);
        let id = sh.conns.next_id();
        let session = new_session(&settings, Instant::now());
        let (conn, bell) = Conn::new(id, peer, stream, session, tls, sh.log.clone());
        let conn = Arc::new(conn);
        sh.conns.insert(id, conn.clone());
        if let Some(mut chat) = sh.chat() {
            chat.conns.insert(id, conn.clone());
        }
        sh.log.emit(Event::Connected { id, peer });

        let (sh2, c2) = (sh.clone(), conn.clone());
        let companion = thread::Builder::new()
            .name(format!("hb-write-{id}"))
            .stack_size(THREAD_STACK)
            .spawn(move || companion(&sh2, &c2, &bell));
        if let Err(e) = companion {
            // No writer exists, so this thread may write the refusal itself. The connection
            // owns the socket, so it closes without a linger (threads are short right now).
            if let Some(mut chat) = sh.chat() {
                chat.conns.remove(&id);
            }
            sh.conns.remove(id);
            sh.live.per_ip().release(peer.ip());
            write_refusal(conn.stream());
            sh.log.emit(Event::Refused {
                peer: Some(peer),
                reason: EndReason::ServerFull,
                detail: format!("cannot start a thread: {e}"),
                cause: RefusalCause::OutOfThreads,
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
                cause: RefusalCause::OutOfThreads,
            });
            conn.session()
                .end(Instant::now(), EndReason::ServerFull, true);
            conn.ring();
            sh.release(&conn);
        }
    }
}

pub(crate) fn is_fd_exhaustion(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(code) if code == rustix::io::Errno::MFILE.raw_os_error()
        || code == rustix::io::Errno::NFILE.raw_os_error()
        || code == rustix::io::Errno::NOBUFS.raw_os_error()
        || code == rustix::io::Errno::NOMEM.raw_os_error())
}

/// Tells a newcomer `END server-full` and closes it after a linger on the lingering thread,
/// so input it already sent does not turn the close into a reset that destroys the END.
/// Never blocks the accept loop.
fn refuse(
    sh: &Shared,
    stream: TcpStream,
    peer: Option<SocketAddr>,
    cause: RefusalCause,
    detail: String,
) {
    refuse_with(&sh.log, sh.lingerer.as_ref(), stream, peer, cause, detail);
}

/// [`refuse`] for either engine: `END server-full`, the close after a linger (at once
/// without a lingering thread), and the log line.
pub(crate) fn refuse_with(
    log: &EventLog,
    lingerer: Option<&Lingerer>,
    stream: TcpStream,
    peer: Option<SocketAddr>,
    cause: RefusalCause,
    detail: String,
) {
    write_refusal(&stream);
    if let Some(l) = lingerer {
        l.close(stream);
    }
    log.emit(Event::Refused {
        peer,
        reason: EndReason::ServerFull,
        detail,
        cause,
    });
}

/// Writes `END server-full` without blocking (a fresh socket's buffer always has room).
pub(crate) fn write_refusal(stream: &TcpStream) {
    let _ = stream.set_nonblocking(true);
    let _ = (&*stream).write_all(ServerMsg::End(EndReason::ServerFull).encode().as_bytes());
    let _ = stream.shutdown(std::net::Shutdown::Write);
}

impl ThreadHandle {
    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections currently holding threads.
    pub fn connections(&self) -> usize {
        self.shared.conns.len() + self.shared.classic.len()
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
        if sh.live.settings().wire == Wire::Classic {
            crate::net::classic::shutdown(&sh.classic, &sh.log, SHUTDOWN_GRACE);
            return;
        }
        let conns = sh.conns.all();
        // The room closes first and without LEFT lines: everyone reads END server-shutdown
        // itself, and a LEFT per member to every member would cost members² lines.
        if let Some(mut chat) = sh.chat() {
            chat.hub.handle_shutdown(Instant::now());
            sh.room_changed.notify_all();
        }
        // The other nodes hear this one's members leave (while the clients are told), then
        // the link closes.
        crate::net::cluster_driver::begin_stop(&sh.cluster);
        sh.log.emit(Event::ShuttingDown {
            clients: conns.len(),
        });
        let now = Instant::now();
        for c in &conns {
            let mut s = c.session();
            s.end(now, EndReason::ServerShutdown, true);
            c.notify_drained();
            drop(s);
            c.ring();
        }
        // Whoever is still there after the grace is stuck writing to a client that does not
        // read.
        let stuck = sh.conns.wait_empty(SHUTDOWN_GRACE);
        for c in &stuck {
            c.shutdown();
        }
        crate::net::cluster_driver::stop(&sh.cluster);
    }
}

/// The session settings of every connection (both engines).
pub(crate) fn session_config(settings: &ServerSettings) -> SessionConfig {
    SessionConfig {
        mode: settings.mode,
        heartbeat: settings.heartbeat,
        max_line: settings.max_line,
        queue: settings.queue,
        stall: settings.stall,
        rate: settings.rate,
        tls: settings.tls.is_some(),
        auth: settings.auth.clone(),
        handshake: settings.handshake,
    }
}

/// Loads `--tls-cert` / `--tls-key` (both engines, at bind: a bad file is a startup error).
pub(crate) fn server_tls(
    settings: &ServerSettings,
) -> Result<Option<ServerTlsConfig>, ServerError> {
    settings
        .tls
        .as_ref()
        .map(|f| ServerTlsConfig::load(&f.cert, &f.key))
        .transpose()
        .map_err(ServerError::Tls)
}

/// The session of a connection accepted at `now` (either engine). The wall clock is read
/// here, once per connection: the session judges token expiry from it without a clock.
pub(crate) fn new_session(settings: &ServerSettings, now: Instant) -> Session {
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    Session::new(session_config(settings), now, unix)
}

/// Where the reader stands after handling what it has read.
enum Pump {
    /// Read more.
    NeedBytes,
    /// The session's own queue is over half full: wait for the client to read.
    Held,
    /// The session is ending: stop reading.
    Stop,
}

/// The data-exchange thread: reads, feeds the session, hands chat lines to the hub.
fn reader(sh: &Shared, conn: &Arc<Conn>) {
    let mut buf = vec![0u8; READ_BUF];
    // Decrypted input (TLS only).
    let mut plain = Vec::new();
    // poll() says when to read; this only bounds a read that poll() woke spuriously.
    let _ = conn.stream().set_read_timeout(Some(Duration::from_secs(1)));
    // Lines are handled only when something new came in (or a hold ended): a wake-up at the
    // idle deadline has nothing to handle.
    let mut fresh = true;
    let closed = loop {
        if fresh {
            match pump(sh, conn) {
                Pump::Stop => break None,
                Pump::Held => {
                    let mut s = conn.session();
                    if s.is_open() && s.queued() > s.config().queue / 2 {
                        s = conn.wait_drained(s, HOLD_SLICE);
                    }
                    drop(s);
                    input_waiting(conn);
                    continue;
                }
                Pump::NeedBytes => fresh = false,
            }
        }
        // The reader watches for the silence that starts a round (the manual's switch);
        // once the switch is on, the round's own deadlines are the companion's, and only
        // bytes (which turn the switch off) concern the reader.
        let now = Instant::now();
        let wait = if conn.heartbeat_on() {
            MAX_READ_WAIT
        } else {
            conn.session()
                .heartbeat_timeout()
                .map_or(MAX_READ_WAIT, |at| at.saturating_duration_since(now))
                .clamp(Duration::from_millis(1), MAX_READ_WAIT)
        };
        match wait_one(conn.stream(), PollFlags::IN, wait) {
            Ok(false) => {
                let s = conn.session();
                if s.is_idle_expired(Instant::now()) && !conn.heartbeat_on() {
                    let idle = s.idle();
                    drop(s);
                    sh.log.emit(Event::RoundStarted {
                        id: conn.id,
                        peer: conn.peer,
                        idle,
                    });
                    conn.set_heartbeat(true);
                }
                continue;
            }
            Ok(true) => {}
            Err(e) => break Some(Some(e.to_string())),
        }
        match conn.stream().read(&mut buf) {
            Ok(0) => break Some(None),
            Ok(n) => {
                // The session first, then TLS (the companion's order): a TLS error and the
                // session's end are one step, so the companion never writes in between.
                let mut s = conn.session();
                if s.is_ending() {
                    // Once the connection is ending, input is only drained (see `linger`),
                    // never answered or relayed; nor decrypted: the companion may hold TLS
                    // for its last flush, and this thread must not wait for it with the
                    // session locked.
                    break None;
                }
                let tls = conn.tls().map(|mut tls| {
                    plain.clear();
                    let got = tls.handle_raw(&buf[..n], &mut plain);
                    (got, tls.is_handshaking(), tls.wants_write())
                });
                let now = Instant::now();
                let mut eof = false;
                // Handshake messages or an alert to send: the companion writes them.
                let to_send = matches!(tls, Some((Err(_), _, _)) | Some((_, _, true)));
                match tls {
                    None => s.handle_rx(now, &buf[..n]),
                    Some((Err(e), _, _)) => s.handle_insecure(now, format!("TLS failed: {e}")),
                    Some((Ok(got), handshaking, _)) => {
                        s.handle_rx(now, &plain);
                        if !handshaking {
                            s.handle_secured(now);
                        }
                        eof = got.closed;
                    }
                }
                log_session(&sh.log, conn.id, conn.peer, &mut s);
                drop(s);
                if to_send {
                    conn.ring();
                }
                if eof {
                    break Some(None);
                }
                conn.set_heartbeat(false);
                fresh = true;
                if n == buf.len() && buf.len() < READ_BUF_MAX {
                    buf = vec![0u8; buf.len() * 2];
                } else if n < READ_BUF && buf.len() > READ_BUF {
                    // A trickle again: give the burst's memory back.
                    buf = vec![0u8; READ_BUF];
                    plain = Vec::new();
                }
            }
            Err(e) if crate::net::is_retryable_io(&e) => {}
            Err(e) => break Some(Some(e.to_string())),
        }
    };
    if let Some(error) = closed {
        let mut s = conn.session();
        // A close we caused ourselves (END sent, socket shut down) is not the client's doing.
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
    conn.ring();
    sh.release(conn);
}

/// Handles every complete line the session holds: echo-mode lines inside the session, chat
/// lines through the hub. A line the hub holds back (a recipient is lagging) is offered
/// again each time the room changes, with the reader not reading meanwhile: that is the
/// backpressure on a fast sender.
fn pump(sh: &Shared, conn: &Arc<Conn>) -> Pump {
    let mut stage = relay::Stage::default();
    let Some(mut chat) = sh.chat() else {
        return match relay::pump::<Conn>(&sh.log, None, conn.id, conn, &mut stage) {
            Pumped::OwnHeld => Pump::Held,
            Pumped::Stop => Pump::Stop,
            Pumped::NeedBytes | Pumped::RoomHeld => Pump::NeedBytes,
        };
    };
    loop {
        match relay::pump(&sh.log, Some(&mut *chat), conn.id, &**conn, &mut stage) {
            Pumped::NeedBytes => return Pump::NeedBytes,
            Pumped::OwnHeld => return Pump::Held,
            Pumped::Stop => return Pump::Stop,
            Pumped::RoomHeld => {
                input_waiting(conn);
                // Wait (the room unlocked) until a lagging member catches up or leaves; the
                // next pump offers the same line again, or finds the session ended.
                chat = sh
                    .room_changed
                    .wait_timeout(chat, HOLD_SLICE)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
        }
    }
}

/// While the reader is held, bytes the client sent still prove it alive (see
/// [`Session::handle_input_waiting`]).
fn input_waiting(conn: &Conn) {
    if matches!(
        wait_one(conn.stream(), PollFlags::IN, Duration::ZERO),
        Ok(true)
    ) {
        conn.session().handle_input_waiting(Instant::now());
        conn.set_heartbeat(false);
    }
}

/// Most bytes an accepted socket keeps *unsent* in the kernel (`TCP_NOTSENT_LOWAT`); past it
/// the socket reports itself full, and the rest waits in the client's own queue.
///
/// Why: without it the kernel takes up to its whole send buffer (autotuned to 4 MiB) of
/// lines a slow reader's window cannot yet admit. That backlog is invisible to flow control
/// (the queue looks empty, so senders are never held), costs kernel memory per lagging
/// client, and is pushed out later from the *reader's* side: when the reader's window opens,
/// loopback transmits our parked segments in the reader's own system call. Measured with
/// hb-bench, 1 → 100 open loop: deliveries/s 14.8 M → 24-25 M, the client's share of the
/// work going back to the server (bench/ANALYSIS.md, "sixth round"). Bytes in flight
/// (sent, not yet acknowledged) are not limited, so throughput over a long path is not.
/// 32 KiB: each wake-up on a full socket still writes 16 KiB or more.
pub(crate) const SEND_LOWAT: u32 = 32 * 1024;

/// Socket options of every accepted client connection, both engines: no Nagle delay (a line
/// is complete when written; batching is the queue's job) and [`SEND_LOWAT`]. Best effort: a
/// socket that refuses an option still works.
pub(crate) fn tune_accepted(stream: &impl std::os::fd::AsFd) {
    let sock = socket2::SockRef::from(stream);
    let _ = sock.set_tcp_nodelay(true);
    let _ = sock.set_tcp_notsent_lowat(SEND_LOWAT);
}

/// What a write did, once the session knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wrote {
    /// The socket took bytes (or none were asked); `caught_up` when that ended a lag, so
    /// the engine must wake the senders held back for this client.
    Took { caught_up: bool },
    /// The socket is full: wait until it is writable.
    Blocked,
    /// The write failed: the session is over (logged once, while it was open).
    Failed,
}

/// Tells the session what a write did, the same way in both engines.
pub(crate) fn report_write(
    log: &EventLog,
    id: u64,
    peer: std::net::SocketAddr,
    s: &mut Session,
    now: Instant,
    wrote: io::Result<usize>,
) -> Wrote {
    match wrote {
        Ok(n) => Wrote::Took {
            caught_up: s.handle_written(now, n),
        },
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            s.handle_write_blocked(now);
            Wrote::Blocked
        }
        Err(e) => {
            if s.is_open() {
                log.emit(Event::WriteFailed {
                    id,
                    peer,
                    error: e.to_string(),
                });
            }
            s.handle_write_error(now);
            Wrote::Failed
        }
    }
}

/// Sends what the socket takes now of `iov`, without blocking (one vectored send).
/// `last`: these are the connection's last bytes, and its FIN follows at once
/// ([`Session::is_final_flush`]); they are held (`MSG_MORE`) to leave in one segment with it.
pub(crate) fn send_now(
    stream: &impl std::os::fd::AsFd,
    iov: &[io::IoSlice<'_>],
    last: bool,
) -> io::Result<usize> {
    use rustix::net::{sendmsg, SendAncillaryBuffer, SendFlags};
    let mut flags = SendFlags::DONTWAIT | SendFlags::NOSIGNAL;
    if last {
        flags |= SendFlags::MORE;
    }
    loop {
        match sendmsg(stream, iov, &mut SendAncillaryBuffer::default(), flags) {
            Ok(n) => return Ok(n),
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The companion heartbeat thread: the only writer of the socket. It runs the session's
/// timers (heartbeats while the switch is on; flow control always), writes what the session
/// hands out, and closes the connection the way the session says.
fn companion(sh: &Shared, conn: &Arc<Conn>, bell: &Receiver<()>) {
    let mut left_room = false;
    let close = loop {
        let now = Instant::now();
        let mut s = conn.session();
        let hb_on = conn.heartbeat_on();
        if hb_on {
            s.handle_heartbeat(now);
        }
        s.handle_flow_timeout(now);
        s.handle_auth_timeout(now);
        // Written straight from the session's queue with one vectored, non-blocking send
        // under its lock (no copy, and one lock for the write and its accounting).
        let mut wrote = None;
        if s.poll_close().is_none() {
            let mut iov = [io::IoSlice::new(&[]); MAX_SLICES];
            let n = s.peek_transmit(&mut iov);
            if n > 0 {
                wrote = Some(conn.send(&iov[..n], s.is_final_flush()));
            }
        }
        let mut caught_up = false;
        let mut blocked = false;
        if wrote.is_none() {
            // Nothing of the session's, but TLS may have its own to send (handshake
            // messages, an alert, records a full socket left behind).
            if let Some(mut tls) = conn.tls() {
                match tls.flush(conn.stream()) {
                    Ok(true) => {}
                    Ok(false) => blocked = true,
                    Err(e) => wrote = Some(Err(e)),
                }
            }
        }
        let tried = wrote.is_some();
        // TLS records that left count as the client reading, before a WouldBlock restarts
        // the stall clock (TLS's buffer may be too full to take the session's next line).
        if conn.tls().is_some_and(|mut t| t.take_progress()) {
            s.handle_transport_progress(now);
        }
        if let Some(wrote) = wrote {
            match report_write(&sh.log, conn.id, conn.peer, &mut s, now, wrote) {
                Wrote::Took { caught_up: true } => {
                    caught_up = true;
                    conn.notify_drained();
                }
                Wrote::Took { caught_up: false } | Wrote::Failed => {}
                Wrote::Blocked => blocked = true,
            }
        }
        let close = s.poll_close();
        let ending = s.end_reason();
        // The heartbeat's deadlines are the reader's until the switch is on; the others
        // are always the companion's.
        let deadline = earliest(
            earliest(
                if hb_on { s.heartbeat_timeout() } else { None },
                s.flow_timeout(),
            ),
            s.auth_timeout(),
        );
        log_session(&sh.log, conn.id, conn.peer, &mut s);
        if ending.is_some() {
            // A reader held by this session's own queue must see the end.
            conn.notify_drained();
        }
        drop(s);
        if caught_up {
            sh.caught_up();
        }
        if let (Some(reason), false) = (ending, left_room) {
            left_room = true;
            sh.leave(conn, reason);
        }
        if let Some(close) = close {
            break close;
        }
        if blocked {
            // The client is not reading right now: wait until it does, looking at the
            // timers (and an urgent end) at least every slice.
            let slice = deadline.map_or(HOLD_SLICE, |at| {
                at.saturating_duration_since(Instant::now()).min(HOLD_SLICE)
            });
            let _ = wait_one(conn.stream(), PollFlags::OUT, slice);
            continue;
        }
        if tried {
            continue;
        }
        match deadline {
            Some(at) => {
                let _ = bell.recv_deadline(at);
            }
            None => {
                let _ = bell.recv();
            }
        }
    };
    // On a plain socket the kernel delivers what it took after the close; TLS's buffer
    // must be emptied here first (the END, the lines before it, close_notify), for as long
    // as the client keeps reading them (each END_GRACE of silence ends it; a shutdown's
    // socket shutdown too).
    let mut delivered = true;
    if let Some(mut tls) = conn.tls() {
        if matches!(close, Close::AfterEnd(_)) {
            tls.close_notify();
        }
        delivered = crate::net::tls::flush_within(&mut tls, conn.stream(), END_GRACE);
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
            // FIN after the END, then discard input for a bounded while, so the close does
            // not reset the connection and destroy the END (see END_LINGER).
            linger(conn.stream(), Instant::now() + END_LINGER);
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
    conn.shutdown();
    sh.release(conn);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_sockets_get_nodelay_and_the_unsent_bytes_limit() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        tune_accepted(&accepted);
        let sock = socket2::SockRef::from(&accepted);
        assert!(sock.tcp_nodelay().unwrap());
        assert_eq!(sock.tcp_notsent_lowat().unwrap(), SEND_LOWAT);
    }
}
