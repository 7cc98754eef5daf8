//! `hb-client` over the line wire: the calling thread reads (without blocking), writes and
//! drives the pure [`Client`] core; a small thread only wakes it when the socket is readable.
//!
//! Reading on the session's own thread is what lets it read everything already received
//! before it judges the server silent: a client stopped with SIGSTOP and resumed long after
//! its deadline first reads the `END` waiting in the socket, then decides.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver, Sender};

use crate::config::{ClientSettings, Mode};
use crate::core::client::{Client, ClientAction, ClientConfig, CloseKind, Outcome};
use crate::core::display::safe_bytes;
use crate::core::wire::{ClientMsg, LineDecoder, ServerMsg};
use crate::net::events::EventLog;
use crate::net::tls::ClientTlsConfig;
// Shared with the classic client; re-exported so `crate::net::client::ClientError` keeps working.
pub use crate::net::client_common::{connect, ClientError, ClientEvent};

/// A write that makes no progress for this long means the server is not reading.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// After QUIT, how long to wait for `END quit` before leaving anyway.
pub(crate) const QUIT_WAIT: Duration = Duration::from_secs(1);
/// Longest line accepted from the server.
pub(crate) const MAX_SERVER_LINE: usize = 1 << 20;

/// Bytes read per `recv`, and reads per [`ServerReader::drain`] (a server that floods must
/// not keep the session from its own deadlines; the rest is read on the next turn).
const READ_SIZE: usize = 4096;
const READS_PER_DRAIN: usize = 64;

/// What a non-blocking read of the server's socket found, in arrival order.
#[derive(Debug)]
pub(crate) enum Received {
    /// Raw bytes, before they are split into lines (the first ones tell the protocol).
    Bytes(Vec<u8>, Instant),
    /// A complete line (without its `\n`).
    Line(Vec<u8>, Instant),
    /// The server sent a line longer than [`MAX_SERVER_LINE`].
    TooLong,
    /// The server closed or reset the connection.
    Closed(CloseKind),
}

/// How long the TLS handshake with the server may take.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The TLS side of a client connection, shared by the session's writes and its
/// [`ServerReader`] (both on the session's thread; the lock is never contended).
type ClientTls = Arc<Mutex<rustls::ClientConnection>>;

fn lock(tls: &ClientTls) -> std::sync::MutexGuard<'_, rustls::ClientConnection> {
    tls.lock().unwrap_or_else(|p| p.into_inner())
}

/// Loads what `--tls` / `--ca` ask for, once per run (reconnections reuse it).
pub(crate) fn tls_config(
    settings: &ClientSettings,
) -> Result<Option<ClientTlsConfig>, ClientError> {
    settings
        .tls
        .as_ref()
        .map(|ca| ClientTlsConfig::load(ca.as_deref()))
        .transpose()
        .map_err(ClientError::TlsSetup)
}

/// The connection to the server: plain TCP, or TLS over it.
pub(crate) struct Link {
    stream: TcpStream,
    tls: Option<ClientTls>,
}

impl Link {
    /// Connects to the server (and runs the TLS handshake when `tls` is given) and starts
    /// the socket's reader.
    pub(crate) fn open(
        settings: &ClientSettings,
        tls: Option<&ClientTlsConfig>,
    ) -> Result<(Self, ServerReader), ClientError> {
        Self::open_by(settings, tls, None, || {})
    }

    /// [`Link::open`] with every step bounded by `deadline` (the probe's: the connect and
    /// the TLS handshake share it) instead of their own timeouts; `tls_starts` is called
    /// once the TCP connection is up, before a TLS handshake.
    pub(crate) fn open_by(
        settings: &ClientSettings,
        tls: Option<&ClientTlsConfig>,
        deadline: Option<Instant>,
        tls_starts: impl FnOnce(),
    ) -> Result<(Self, ServerReader), ClientError> {
        let stream =
            crate::net::client_common::connect_by(&settings.host, settings.port, deadline)?;
        let _ = stream.set_nodelay(true);
        let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
        let tls = match tls {
            None => None,
            Some(cfg) => {
                tls_starts();
                let timeout = deadline.map_or(TLS_HANDSHAKE_TIMEOUT, |d| {
                    d.saturating_duration_since(Instant::now())
                });
                let conn = cfg
                    .connect(&settings.host, &stream, timeout)
                    .map_err(|detail| ClientError::Tls {
                        addr: format!("{}:{}", settings.host, settings.port),
                        detail,
                    })?;
                Some(Arc::new(Mutex::new(conn)))
            }
        };
        let reader =
            ServerReader::start(&stream, tls.clone()).map_err(|source| ClientError::Connect {
                addr: format!("{}:{}", settings.host, settings.port),
                source,
            })?;
        Ok((Self { stream, tls }, reader))
    }

    /// The plain socket (for its addresses).
    pub(crate) fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// Writes all of `bytes` (blocking, within the socket's write timeout); false when the
    /// server is gone.
    pub(crate) fn write_all(&self, bytes: &[u8]) -> bool {
        match &self.tls {
            None => (&self.stream).write_all(bytes).is_ok(),
            Some(tls) => {
                let mut tls = lock(tls);
                if tls.writer().write_all(bytes).is_err() {
                    return false;
                }
                let mut s = &self.stream;
                while tls.wants_write() {
                    if tls.write_tls(&mut s).is_err() {
                        return false;
                    }
                }
                true
            }
        }
    }

    /// Closes the connection (with TLS, `close_notify` first: the end was meant).
    pub(crate) fn shutdown(&self) {
        if let Some(tls) = &self.tls {
            let mut tls = lock(tls);
            tls.send_close_notify();
            let mut s = &self.stream;
            let _ = tls.write_tls(&mut s);
        }
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

/// Reads the server's socket on the session's thread without blocking; a helper thread
/// waits for readability and rings [`ServerReader::ready`] (one ring per [`ServerReader::rearm`],
/// so it never spins while the session is busy).
pub(crate) struct ServerReader {
    stream: TcpStream,
    /// With TLS, what is read is decrypted here first.
    tls: Option<ClientTls>,
    decoder: LineDecoder,
    closed: bool,
    ready: Option<Receiver<()>>,
    ack: Option<Sender<()>>,
    waker: Option<JoinHandle<()>>,
}

impl ServerReader {
    /// Starts the waker thread on a clone of `stream`. The session must shut the socket
    /// down before dropping the reader (that ends the waker's `poll`).
    pub(crate) fn start(stream: &TcpStream, tls: Option<ClientTls>) -> io::Result<Self> {
        let (ready_tx, ready) = crossbeam_channel::bounded(1);
        let (ack, ack_rx) = crossbeam_channel::bounded(1);
        let watched = stream.try_clone()?;
        let waker = std::thread::Builder::new()
            .name("client-waker".into())
            .spawn(move || wake_when_readable(&watched, &ready_tx, &ack_rx))?;
        Ok(Self {
            stream: stream.try_clone()?,
            tls,
            decoder: LineDecoder::new(MAX_SERVER_LINE),
            closed: false,
            ready: Some(ready),
            ack: Some(ack),
            waker: Some(waker),
        })
    }

    /// Rings when the socket may have something to read.
    pub(crate) fn ready(&self) -> Receiver<()> {
        self.ready.clone().unwrap_or_else(crossbeam_channel::never)
    }

    /// Lets the waker watch the socket again (after a ring was handled).
    pub(crate) fn rearm(&self) {
        if let Some(ack) = &self.ack {
            let _ = ack.try_send(());
        }
    }

    /// Everything the socket holds right now (bounded per call), in order; ends with
    /// [`Received::Closed`] once the server is gone.
    pub(crate) fn drain(&mut self) -> Vec<Received> {
        use rustix::net::{recv, RecvFlags};
        let mut got = Vec::new();
        let mut buf = [0u8; READ_SIZE];
        let mut reads = 0;
        // Plaintext TLS already holds (the handshake's last read may have brought the
        // first lines) comes first.
        if let Some(tls) = self.tls.clone() {
            let mut plain = Vec::new();
            let _ = decrypt(&mut lock(&tls), &[], &mut plain);
            if !plain.is_empty() && self.take(plain, &mut got) {
                return got;
            }
        }
        while !self.closed && reads < READS_PER_DRAIN {
            let n = match recv(&self.stream, &mut buf[..], RecvFlags::DONTWAIT) {
                Ok((0, _)) => {
                    self.closed = true;
                    got.push(Received::Closed(CloseKind::Closed));
                    break;
                }
                Ok((n, _)) => n,
                Err(rustix::io::Errno::INTR) => continue,
                Err(rustix::io::Errno::AGAIN) => break,
                Err(_) => {
                    self.closed = true;
                    got.push(Received::Closed(CloseKind::Reset));
                    break;
                }
            };
            reads += 1;
            let plain = match self.tls.clone() {
                None => buf[..n].to_vec(),
                Some(tls) => {
                    let mut plain = Vec::new();
                    match decrypt(&mut lock(&tls), &buf[..n], &mut plain) {
                        Ok(false) => {}
                        Ok(true) => {
                            // close_notify: the server ended the stream on purpose.
                            if self.take(plain, &mut got) {
                                return got;
                            }
                            self.closed = true;
                            got.push(Received::Closed(CloseKind::Closed));
                            break;
                        }
                        Err(_) => {
                            self.closed = true;
                            got.push(Received::Closed(CloseKind::Reset));
                            break;
                        }
                    }
                    plain
                }
            };
            if !plain.is_empty() && self.take(plain, &mut got) {
                return got;
            }
        }
        got
    }

    /// Splits `plain` into lines onto `got`; true when the connection is over (a line too
    /// long).
    fn take(&mut self, plain: Vec<u8>, got: &mut Vec<Received>) -> bool {
        let at = Instant::now();
        self.decoder.feed(&plain);
        got.push(Received::Bytes(plain, at));
        loop {
            match self.decoder.next_line() {
                Ok(Some(line)) => got.push(Received::Line(line.to_vec(), at)),
                Ok(None) => return false,
                Err(_) => {
                    self.closed = true;
                    got.push(Received::TooLong);
                    return true;
                }
            }
        }
    }
}

/// Feeds `raw` to the client's TLS and appends the plaintext to `plain`; true once the
/// server sent `close_notify`.
fn decrypt(
    tls: &mut rustls::ClientConnection,
    raw: &[u8],
    plain: &mut Vec<u8>,
) -> Result<bool, rustls::Error> {
    let mut rest = raw;
    loop {
        if !rest.is_empty() {
            // read_tls from a slice only fails when rustls' buffer is full, and processing
            // below empties it.
            let _ = tls.read_tls(&mut rest);
        }
        let state = tls.process_new_packets()?;
        let mut chunk = [0u8; 4096];
        loop {
            match tls.reader().read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => plain.extend_from_slice(&chunk[..n]),
                Err(_) => break,
            }
        }
        if rest.is_empty() {
            return Ok(state.peer_has_closed());
        }
    }
}

impl Drop for ServerReader {
    fn drop(&mut self) {
        // Dropping both channel ends ends the waker wherever it waits (the socket is shut
        // down by now, which ends its poll).
        self.ack = None;
        self.ready = None;
        if let Some(w) = self.waker.take() {
            let _ = w.join();
        }
    }
}

fn wake_when_readable(stream: &TcpStream, ready: &Sender<()>, ack: &Receiver<()>) {
    use rustix::event::{poll, PollFd, PollFlags};
    loop {
        let mut fds = [PollFd::new(stream, PollFlags::IN)];
        match poll(&mut fds, None) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(_) => return,
        }
        if ready.send(()).is_err() || ack.recv().is_err() {
            return;
        }
    }
}

/// Hands everything already received to `client` (and the log); the outcome if it ended the
/// session.
fn feed(
    client: &mut Client,
    reader: &mut ServerReader,
    log: &EventLog<ClientEvent>,
) -> Option<Outcome> {
    for got in reader.drain() {
        match got {
            Received::Bytes(bytes, at) => {
                if let Some(o) = client.handle_bytes(at, &bytes) {
                    return Some(o);
                }
            }
            Received::Line(bytes, at) => match ServerMsg::parse(&bytes) {
                Ok(msg) => {
                    log.emit(ClientEvent::Received(safe_bytes(&bytes)));
                    if let Some(o) = client.handle_msg(at, &msg) {
                        return Some(o);
                    }
                }
                Err(_) => log.emit(ClientEvent::Garbled(safe_bytes(
                    &bytes[..bytes.len().min(200)],
                ))),
            },
            Received::TooLong => {
                log.emit(ClientEvent::Garbled(format!(
                    "a line longer than {MAX_SERVER_LINE} bytes"
                )));
                return Some(client.handle_closed(CloseKind::Reset));
            }
            Received::Closed(kind) => return Some(client.handle_closed(kind)),
        }
    }
    None
}

/// Runs one session in manual mode until it ends; `stop` firing means the user asked to leave.
pub fn run(
    settings: &ClientSettings,
    log: &EventLog<ClientEvent>,
    stop: &Receiver<()>,
) -> Result<Outcome, ClientError> {
    if settings.wire == crate::config::Wire::Classic {
        return crate::net::classic::run_client(settings, log, stop);
    }
    let tls = tls_config(settings)?;
    let (link, mut reader) = Link::open(settings, tls.as_ref())?;
    if let Ok(peer) = link.stream().peer_addr() {
        log.emit(ClientEvent::Connected(peer));
    }
    let cfg = ClientConfig {
        every: Some(settings.every),
        block: settings.block,
        message: settings.message.clone(),
        messages: settings.messages,
        mode: Some(Mode::Echo),
        token: settings.token.clone(),
    };
    let outcome = session(
        &link,
        Client::new(cfg, Instant::now()),
        &mut reader,
        stop,
        log,
    );
    link.shutdown();
    drop(reader);
    Ok(outcome)
}

fn session(
    link: &Link,
    mut client: Client,
    reader: &mut ServerReader,
    stop: &Receiver<()>,
    log: &EventLog<ClientEvent>,
) -> Outcome {
    let mut quit_by: Option<Instant> = None;
    // Once the user asked to leave, stop listening for it (a dropped sender would otherwise
    // make `select!` return at once, forever).
    let mut stop = stop.clone();
    let ready = reader.ready();
    let send = |msg: &ClientMsg| -> bool {
        let line = msg.encode();
        let ok = link.write_all(line.as_bytes());
        if ok {
            // The token is a credential: the log shows that it went, not what it is.
            let shown = match msg {
                ClientMsg::Auth(_) => "AUTH (token)".to_owned(),
                _ => crate::core::display::safe(line.trim_end()),
            };
            log.emit(ClientEvent::Sent(shown));
        }
        ok
    };
    loop {
        // Everything already received comes first: silence is judged only on an empty socket.
        // The clock is read before the socket is drained, so whatever arrived up to `now` has
        // been seen when the core judges `now` (a client stopped between the two, e.g. by
        // SIGSTOP, would otherwise wake up past its deadline and call a server silent whose
        // END has been waiting in the socket).
        let now = Instant::now();
        if let Some(o) = feed(&mut client, reader, log) {
            return o;
        }
        reader.rearm();
        while let Some(action) = client.poll(now) {
            match action {
                ClientAction::Send(msg) => {
                    if matches!(msg, ClientMsg::Quit(_)) {
                        quit_by = Some(now + QUIT_WAIT);
                    }
                    if !send(&msg) {
                        // The server is gone; an END it sent first still explains why.
                        return feed(&mut client, reader, log)
                            .unwrap_or_else(|| client.handle_closed(CloseKind::Reset));
                    }
                }
                ClientAction::Finish(outcome) => return outcome,
            }
        }
        let deadline = [client.poll_timeout(), quit_by].into_iter().flatten().min();
        let timeout = deadline.map_or(Duration::from_secs(3600), |d| {
            d.saturating_duration_since(Instant::now())
        });
        select! {
            recv(ready) -> _ => {}
            recv(stop) -> _ => {
                stop = crossbeam_channel::never();
                if quit_by.is_none() {
                    let quit = client.handle_quit();
                    quit_by = Some(Instant::now() + QUIT_WAIT);
                    if !send(&quit) {
                        return Outcome::UserEnded;
                    }
                }
            }
            default(timeout) => {
                if quit_by.is_some_and(|q| Instant::now() >= q) {
                    return Outcome::UserEnded;
                }
            }
        }
    }
}
