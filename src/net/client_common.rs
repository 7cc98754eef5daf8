//! What the clients of both wires share: their events, their errors, and connecting. Its own
//! module so the line-wire client (which hands classic sessions to [`crate::net::classic`])
//! and the classic client both import it without importing each other.

use std::fmt;
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// How long to try to connect to each address of the server.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

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

impl crate::net::events::LogLine for ClientEvent {
    fn kind(&self) -> &'static str {
        match self {
            Self::Connected(_) => "connected",
            Self::Sent(_) => "sent",
            Self::Received(_) => "received",
            Self::Garbled(_) => "garbled",
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
    /// The server refused the chat name (`ERR` in answer to `JOIN`); the message says why.
    NameRefused(String),
    /// Setting up the session failed (a thread or a socket clone could not be had).
    Io(io::Error),
    /// `--ca` could not be loaded, or the system has no root certificates (exit 2).
    TlsSetup(crate::net::tls::TlsError),
    /// The TLS handshake with the server failed (a certificate it cannot prove, a server that
    /// does not speak TLS, a deadline).
    Tls {
        /// `host:port`.
        addr: String,
        /// What went wrong, in rustls' words.
        detail: String,
    },
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
            Self::NameRefused(why) => f.write_str(why),
            Self::Io(e) => write!(f, "cannot start the session: {e}"),
            Self::TlsSetup(e) => write!(f, "cannot set up TLS: {e}"),
            Self::Tls { addr, detail } => write!(f, "TLS with {addr} failed: {detail}"),
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
            Self::TlsSetup(e) => Some(e),
            Self::Unsupported(_) | Self::NameRefused(_) | Self::Tls { .. } => None,
        }
    }
}

/// Connects to `host:port`, trying each resolved address.
pub fn connect(host: &str, port: u16) -> Result<TcpStream, ClientError> {
    connect_by(host, port, None)
}

/// [`connect`], giving up at `deadline` (the probe's) instead of after `CONNECT_TIMEOUT` (5 s)
/// per address; past it, the error is [`io::ErrorKind::TimedOut`].
pub fn connect_by(
    host: &str,
    port: u16,
    deadline: Option<Instant>,
) -> Result<TcpStream, ClientError> {
    crate::net::try_each_addr(host, port, |a| {
        let timeout = match deadline {
            None => CONNECT_TIMEOUT,
            Some(d) => d.saturating_duration_since(Instant::now()),
        };
        if timeout.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        TcpStream::connect_timeout(&a, timeout)
    })
    .map_err(|source| ClientError::Connect {
        addr: format!("{host}:{port}"),
        source,
    })
}
