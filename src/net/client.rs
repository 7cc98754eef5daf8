//! `hb-client` over the line wire: one reader thread, and the calling thread as the only
//! writer, driving the pure [`Client`] core.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver, Sender};

use crate::config::ClientSettings;
use crate::core::client::{Client, ClientAction, ClientConfig, Outcome};
use crate::core::wire::{printable, ClientMsg, LineDecoder, ServerMsg};
use crate::net::events::EventLog;

/// How long to try to connect to each address of the server.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A write that makes no progress for this long means the server is not reading.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// After QUIT, how long to wait for `END quit` before leaving anyway.
pub(crate) const QUIT_WAIT: Duration = Duration::from_secs(1);
/// Longest line accepted from the server.
const MAX_SERVER_LINE: usize = 1 << 20;

/// What the client saw and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    /// Connected to the server.
    Connected(SocketAddr),
    /// A line was written (without its `\n`).
    Sent(String),
    /// A line arrived (without its `\n`).
    Received(String),
    /// The server sent something that is not on the line wire.
    Garbled(String),
}

impl fmt::Display for ClientEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Connected(a) => write!(f, "connected to {a}"),
            Self::Sent(l) => write!(f, "-> {l}"),
            Self::Received(l) => write!(f, "<- {l}"),
            Self::Garbled(l) => write!(f, "<- (not understood) {l}"),
        }
    }
}

/// Why the client could not run a session.
#[derive(Debug)]
pub enum ClientError {
    /// No address of the server accepted the connection.
    Connect {
        /// `host:port`.
        addr: String,
        /// The last OS error.
        source: io::Error,
    },
    /// The settings ask for something this build does not do yet.
    Unsupported(String),
    /// The server refused the chat name (`ERR name-taken` or `ERR missing-argument`).
    NameRefused(String),
    /// Setting up the session failed (a thread or a socket clone could not be had).
    Io(io::Error),
    /// Classic wire: the heartbeat listener could not be bound on `client.host:client.port`.
    Listen {
        /// `host:port`.
        addr: String,
        /// The OS error.
        source: io::Error,
    },
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Connect { addr, source } => write!(f, "cannot connect to {addr}: {source}"),
            Self::Unsupported(what) => f.write_str(what),
            Self::NameRefused(why) => write!(f, "the server refused the name: {why}"),
            Self::Io(e) => write!(f, "cannot start the session: {e}"),
            Self::Listen { addr, source } => {
                write!(
                    f,
                    "cannot listen for the heartbeat socket on {addr}: {source}"
                )
            }
        }
    }
}

impl std::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Connect { source, .. } | Self::Listen { source, .. } => Some(source),
            Self::Io(source) => Some(source),
            Self::Unsupported(_) | Self::NameRefused(_) => None,
        }
    }
}

pub(crate) enum Incoming {
    Line(Vec<u8>, Instant),
    Closed(Instant),
}

/// Connects to `host:port`, trying each resolved address.
pub fn connect(host: &str, port: u16) -> Result<TcpStream, ClientError> {
    crate::net::try_each_addr(host, port, |a| {
        TcpStream::connect_timeout(&a, CONNECT_TIMEOUT)
    })
    .map_err(|source| ClientError::Connect {
        addr: format!("{host}:{port}"),
        source,
    })
}

pub(crate) fn read_lines(mut stream: TcpStream, tx: Sender<Incoming>) {
    let mut decoder = LineDecoder::new(MAX_SERVER_LINE);
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => {
                let _ = tx.send(Incoming::Closed(Instant::now()));
                return;
            }
            Ok(n) => {
                let at = Instant::now();
                decoder.feed(&buf[..n]);
                loop {
                    match decoder.next_line() {
                        Ok(Some(line)) => {
                            if tx.send(Incoming::Line(line.to_vec(), at)).is_err() {
                                return;
                            }
                        }
                        Ok(None) => break,
                        Err(_) => {
                            let _ = tx.send(Incoming::Closed(at));
                            return;
                        }
                    }
                }
            }
        }
    }
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
    let stream = connect(&settings.host, settings.port)?;
    let _ = stream.set_nodelay(true);
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    if let Ok(peer) = stream.peer_addr() {
        log.emit(ClientEvent::Connected(peer));
    }
    let (tx, rx) = crossbeam_channel::bounded(1024);
    let reader = stream
        .try_clone()
        .map(|s| std::thread::spawn(move || read_lines(s, tx)));
    let reader = match reader {
        Ok(r) => r,
        Err(source) => {
            return Err(ClientError::Connect {
                addr: format!("{}:{}", settings.host, settings.port),
                source,
            })
        }
    };
    let cfg = ClientConfig {
        every: Some(settings.every),
        block: settings.block,
        message: settings.message.clone(),
        messages: settings.messages,
    };
    let outcome = session(&stream, Client::new(cfg, Instant::now()), &rx, stop, log);
    let _ = stream.shutdown(Shutdown::Both);
    let _ = reader.join();
    Ok(outcome)
}

fn session(
    stream: &TcpStream,
    mut client: Client,
    rx: &Receiver<Incoming>,
    stop: &Receiver<()>,
    log: &EventLog<ClientEvent>,
) -> Outcome {
    let mut quit_by: Option<Instant> = None;
    // Once the user asked to leave, stop listening for it (a dropped sender would otherwise
    // make `select!` return at once, forever).
    let mut stop = stop.clone();
    let send = |msg: &ClientMsg| -> bool {
        let line = msg.encode();
        let ok = (&*stream).write_all(line.as_bytes()).is_ok();
        if ok {
            log.emit(ClientEvent::Sent(line.trim_end().to_owned()));
        }
        ok
    };
    let handle = |client: &mut Client, inc: Incoming| -> Option<Outcome> {
        match inc {
            Incoming::Line(bytes, at) => match ServerMsg::parse(&bytes) {
                Ok(msg) => {
                    log.emit(ClientEvent::Received(printable(&bytes, 4096)));
                    client.handle_msg(at, &msg)
                }
                Err(_) => {
                    log.emit(ClientEvent::Garbled(printable(&bytes, 200)));
                    None
                }
            },
            Incoming::Closed(at) => Some(client.handle_eof(at)),
        }
    };
    loop {
        let now = Instant::now();
        while let Some(action) = client.poll(now) {
            match action {
                ClientAction::Send(msg) => {
                    if matches!(msg, ClientMsg::Quit(_)) {
                        quit_by = Some(now + QUIT_WAIT);
                    }
                    if !send(&msg) {
                        // The server is gone; an END it sent first still explains why.
                        while let Ok(inc) = rx.recv_timeout(Duration::from_millis(50)) {
                            if let Some(o) = handle(&mut client, inc) {
                                return o;
                            }
                        }
                        return client.handle_eof(Instant::now());
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
            recv(rx) -> inc => {
                let Ok(inc) = inc else { return client.handle_eof(Instant::now()) };
                if let Some(o) = handle(&mut client, inc) {
                    return o;
                }
            }
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
