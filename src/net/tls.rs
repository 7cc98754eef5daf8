//! TLS on the line wire (CONTRACT section 9), with rustls used as the sans-IO machine it is.
//!
//! rustls' `ServerConnection` / `ClientConnection` never touch a socket: bytes go in with
//! `read_tls`, records come out with `write_tls`. So TLS here is a layer *between* an engine's
//! socket and its [`Session`](crate::core::session::Session), not a stream type: both engines
//! keep their own I/O (the thread engine's reader and companion threads, the event engine's
//! readiness loop) and call the same few functions of [`ServerTls`]:
//!
//! ```text
//!   socket ──raw──▶ ServerTls::handle_raw ──plaintext──▶ Session::handle_rx
//!   socket ◀─records── ServerTls::send / flush ◀─plaintext── Session::peek_transmit
//! ```
//!
//! Bounded: rustls holds at most [`TLS_BUFFER`] bytes of outgoing plaintext and records per
//! connection (rustls' `set_buffer_limit`); beyond it [`ServerTls::send`]
//! takes nothing and says `WouldBlock`, exactly like a full socket, so the session's flow
//! control (lag, write stall, `slow-consumer`) applies to the encrypted stream unchanged.
//! Decrypted input is handed out as it is read, never accumulated.
//!
//! The handshake deadline is the session's (`--handshake-timeout`): an engine reports
//! [`ServerTls::is_handshaking`] turning false to the session, which closes a connection
//! that did not get there in time.

use std::fmt;
use std::io::{self, IoSlice, Read, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// Most bytes of outgoing plaintext plus encrypted records rustls holds for one connection
/// (rustls' own default): the encrypted side's share of the bounded-queue rule.
pub const TLS_BUFFER: usize = 64 * 1024;

/// Why TLS settings could not be loaded.
#[derive(Debug)]
pub enum TlsError {
    /// A PEM file could not be read or parsed.
    Pem {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// The files were read but rustls refused them (e.g. the key does not match the
    /// certificate).
    Rejected {
        /// What rustls said.
        detail: String,
    },
    /// No trusted root certificate could be loaded (client side, without `--ca`).
    NoRoots(String),
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Pem { path, detail } => write!(f, "{}: {detail}", path.display()),
            Self::Rejected { detail } => write!(f, "TLS certificate and key refused: {detail}"),
            Self::NoRoots(detail) => write!(
                f,
                "no trusted root certificates found on this system ({detail}); pass --ca PEM"
            ),
        }
    }
}

impl std::error::Error for TlsError {}

/// The crypto provider of every TLS connection: ring (shared with the JWT verification), not
/// aws-lc-rs, which needs cmake and a much longer C build.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn pem_error(path: &Path, e: impl fmt::Display) -> TlsError {
    TlsError::Pem {
        path: path.to_path_buf(),
        detail: e.to_string(),
    }
}

/// Every certificate in a PEM file (at least one).
fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, e))?;
    if certs.is_empty() {
        return Err(pem_error(path, "no CERTIFICATE block in this file"));
    }
    Ok(certs)
}

/// The server side's settings, loaded once at startup from `--tls-cert` and `--tls-key`.
#[derive(Clone)]
pub struct ServerTlsConfig(Arc<rustls::ServerConfig>);

impl fmt::Debug for ServerTlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ServerTlsConfig")
    }
}

impl ServerTlsConfig {
    /// Loads a certificate chain (PEM, leaf first) and its private key (PEM: PKCS#8, PKCS#1
    /// or SEC1), checking that they belong together.
    pub fn load(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let certs = load_certs(cert)?;
        let key = PrivateKeyDer::from_pem_file(key).map_err(|e| pem_error(key, e))?;
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Rejected {
                detail: e.to_string(),
            })?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| TlsError::Rejected {
                detail: e.to_string(),
            })?;
        Ok(Self(Arc::new(config)))
    }

    /// The TLS side of a new connection.
    pub fn accept(&self) -> Result<ServerTls, rustls::Error> {
        let mut conn = rustls::ServerConnection::new(self.0.clone())?;
        conn.set_buffer_limit(Some(TLS_BUFFER));
        Ok(ServerTls {
            inner: Box::new(Inner {
                conn,
                progressed: false,
            }),
        })
    }
}

/// What [`ServerTls::handle_raw`] found besides plaintext.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[must_use]
pub struct RawOutcome {
    /// The client sent `close_notify`: it will send nothing more (as an EOF).
    pub closed: bool,
}

/// The TLS side of one server connection. Owned with the session's other state; the one
/// writer of the socket calls [`ServerTls::send`] and [`ServerTls::flush`].
pub struct ServerTls {
    /// Boxed: rustls' state is over a kilobyte, and a plain connection's task (or `Conn`)
    /// holds an `Option<ServerTls>`, which must cost it a pointer, not that.
    inner: Box<Inner>,
}

struct Inner {
    conn: rustls::ServerConnection,
    /// The socket took encrypted bytes since [`ServerTls::take_progress`] last looked.
    progressed: bool,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("handshaking", &self.inner.conn.is_handshaking())
            .finish()
    }
}

impl ServerTls {
    /// Decrypts `raw` (bytes just read from the socket), appending the plaintext to `plain`.
    /// An error means the client is not speaking TLS (or broke it): the connection must be
    /// closed, after one [`ServerTls::flush`] to send the alert rustls queued for it.
    pub fn handle_raw(&mut self, raw: &[u8], plain: &mut Vec<u8>) -> Result<RawOutcome, String> {
        let mut rest = raw;
        let mut out = RawOutcome::default();
        loop {
            // Records are processed as soon as they are read, so rustls' own input buffer
            // never fills up: read_tls takes what it can, the loop offers it the rest.
            if !rest.is_empty() {
                self.inner
                    .conn
                    .read_tls(&mut rest)
                    .map_err(|e| e.to_string())?;
            }
            let state = self
                .inner
                .conn
                .process_new_packets()
                .map_err(|e| e.to_string())?;
            let mut want = state.plaintext_bytes_to_read();
            while want > 0 {
                let at = plain.len();
                plain.resize(at + want, 0);
                match self.inner.conn.reader().read(&mut plain[at..]) {
                    Ok(n) => {
                        plain.truncate(at + n);
                        if n == 0 {
                            break;
                        }
                        want -= n.min(want);
                    }
                    Err(_) => {
                        plain.truncate(at);
                        break;
                    }
                }
            }
            if state.peer_has_closed() {
                out.closed = true;
            }
            if rest.is_empty() {
                return Ok(out);
            }
        }
    }

    /// True until the handshake is complete.
    pub fn is_handshaking(&self) -> bool {
        self.inner.conn.is_handshaking()
    }

    /// True while encrypted bytes (handshake messages, records, an alert) wait for the socket.
    pub fn wants_write(&self) -> bool {
        self.inner.conn.wants_write()
    }

    /// Encrypts what rustls' buffer takes of `iov` and sends what the socket takes now
    /// (never blocking). The count is of plaintext bytes taken: the session treats them as
    /// written. Nothing taken while bytes wait for a full socket is `WouldBlock`, like a
    /// full socket's.
    pub fn send(&mut self, sock: &impl AsFd, iov: &[IoSlice<'_>]) -> io::Result<usize> {
        self.flush(sock)?;
        let offered: usize = iov.iter().map(|s| s.len()).sum();
        let taken = self.inner.conn.writer().write_vectored(iov)?;
        self.flush(sock)?;
        if taken == 0 && offered > 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(taken)
    }

    /// Sends what the socket takes of the encrypted bytes waiting; true when none is left.
    pub fn flush(&mut self, sock: &impl AsFd) -> io::Result<bool> {
        self.flush_counting(sock).map(|(done, _)| done)
    }

    /// [`ServerTls::flush`], also saying how many bytes the socket took (progress).
    pub fn flush_counting(&mut self, sock: &impl AsFd) -> io::Result<(bool, usize)> {
        let mut w = SockWriter(sock);
        let mut sent = 0;
        let done = loop {
            if !self.inner.conn.wants_write() {
                break true;
            }
            match self.inner.conn.write_tls(&mut w) {
                Ok(0) => break false,
                Ok(n) => sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break false,
                Err(e) => return Err(e),
            }
        };
        self.inner.progressed |= sent > 0;
        Ok((done, sent))
    }

    /// True when the socket took encrypted bytes since the last call: the client is reading,
    /// even while TLS's buffer is too full to take more of the session's lines (see
    /// `Session::handle_transport_progress`).
    pub fn take_progress(&mut self) -> bool {
        std::mem::take(&mut self.inner.progressed)
    }

    /// Queues `close_notify` (then [`ServerTls::flush`]): the client learns the end of the
    /// stream was meant, not a truncation.
    pub fn close_notify(&mut self) {
        self.inner.conn.send_close_notify();
    }
}

/// A socket as `io::Write` for rustls, without blocking and without SIGPIPE.
struct SockWriter<'a, S: AsFd>(&'a S);

impl<S: AsFd> Write for SockWriter<'_, S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[IoSlice::new(buf)])
    }
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        crate::net::server::send_now(self.0, bufs, false)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Longest a connection's last TLS records (at most rustls' 64 KiB buffer: its `END`, the
/// lines before it, `close_notify`) may take to leave while the client keeps reading them:
/// a slow reader still gets them, a trickle cannot hold the connection for minutes.
pub const CLOSE_FLUSH_CAP: Duration = Duration::from_secs(10);

/// How often the close path tries the socket even without a writable event: the kernel
/// reports a TCP socket writable only once a third or so of its buffer is free, and a client
/// reading slowly through a small window frees less than that in [`END_GRACE`]'s 200 ms
/// while still taking bytes (seen as a slow reader's last 64 KiB dropped).
///
/// [`END_GRACE`]: crate::core::session::END_GRACE
pub const CLOSE_FLUSH_POLL: Duration = Duration::from_millis(20);

/// What the close path waits for the socket: the next deadline for the last records to
/// move (`grace` without progress, at most [`CLOSE_FLUSH_CAP`] in all); see [`flush_within`].
#[derive(Debug, Clone, Copy)]
pub struct CloseFlush {
    grace: Duration,
    cap: Instant,
    stalled_at: Instant,
}

impl CloseFlush {
    /// Starting now: give up after `grace` without progress.
    pub fn new(now: Instant, grace: Duration) -> Self {
        Self {
            grace,
            cap: now + CLOSE_FLUSH_CAP,
            stalled_at: now + grace,
        }
    }

    /// One flush attempt at `now`: `Some(true)` all sent, `Some(false)` give up (an error,
    /// no progress for the grace, or the cap), `None` wait for the socket until
    /// [`CloseFlush::deadline`].
    pub fn attempt(&mut self, now: Instant, flushed: io::Result<(bool, usize)>) -> Option<bool> {
        match flushed {
            Ok((true, _)) => Some(true),
            Err(_) => Some(false),
            Ok((false, sent)) => {
                if sent > 0 {
                    self.stalled_at = now + self.grace;
                }
                (now >= self.deadline()).then_some(false)
            }
        }
    }

    /// When to give up if the socket takes nothing more.
    pub fn deadline(&self) -> Instant {
        self.stalled_at.min(self.cap)
    }
}

/// Sends everything rustls holds, waiting for the socket as needed: the last bytes of a
/// connection (its `END`, then `close_notify`) before the engine lingers. Gives up after
/// `grace` in which the socket took nothing (as the session gives up an `END` its client does
/// not read), or after [`CLOSE_FLUSH_CAP`]. True when everything left.
pub fn flush_within(tls: &mut ServerTls, sock: &impl AsFd, grace: Duration) -> bool {
    let mut close = CloseFlush::new(Instant::now(), grace);
    loop {
        let flushed = tls.flush_counting(sock);
        if let Some(done) = close.attempt(Instant::now(), flushed) {
            return done;
        }
        let left = close.deadline().saturating_duration_since(Instant::now());
        let _ = crate::net::wait::wait_one(
            sock,
            crate::net::wait::PollFlags::OUT,
            left.min(CLOSE_FLUSH_POLL),
        );
    }
}

// ----- client side -----

/// The client side's settings: whom to trust (`--ca PEM`, else the system's roots).
#[derive(Clone)]
pub struct ClientTlsConfig(Arc<rustls::ClientConfig>);

impl fmt::Debug for ClientTlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientTlsConfig")
    }
}

impl ClientTlsConfig {
    /// Trusts the certificates in `ca` (PEM), or the system's roots when `None`.
    pub fn load(ca: Option<&Path>) -> Result<Self, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        match ca {
            Some(path) => {
                for cert in load_certs(path)? {
                    roots.add(cert).map_err(|e| pem_error(path, e))?;
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                let (added, _ignored) = roots.add_parsable_certificates(found.certs);
                if added == 0 {
                    let why = found
                        .errors
                        .first()
                        .map_or_else(|| "none in the usual places".to_string(), |e| e.to_string());
                    return Err(TlsError::NoRoots(why));
                }
            }
        }
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Rejected {
                detail: e.to_string(),
            })?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Self(Arc::new(config)))
    }

    /// Runs the handshake with `host` (a DNS name or an IP address, which the server's
    /// certificate must name) over `stream` within `timeout`.
    pub fn connect(
        &self,
        host: &str,
        stream: &std::net::TcpStream,
        timeout: Duration,
    ) -> Result<rustls::ClientConnection, String> {
        let name = ServerName::try_from(host.to_string())
            .map_err(|_| format!("{host:?} is not a host name or IP address TLS can check"))?;
        let mut conn =
            rustls::ClientConnection::new(self.0.clone(), name).map_err(|e| e.to_string())?;
        let until = Instant::now() + timeout;
        let old_r = stream.read_timeout().ok().flatten();
        let old_w = stream.write_timeout().ok().flatten();
        let result = (|| {
            while conn.is_handshaking() {
                let left = until.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(format!(
                        "TLS handshake not finished within {}",
                        crate::config::fmt_duration(timeout)
                    ));
                }
                let _ = stream.set_read_timeout(Some(left));
                let _ = stream.set_write_timeout(Some(left));
                let mut s = stream;
                match conn.complete_io(&mut s) {
                    Ok((0, 0)) if conn.is_handshaking() => {
                        return Err("the server closed the connection during the TLS handshake \
                                    (is it a TLS port?)"
                            .into())
                    }
                    Ok(_) => {}
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                        ) => {}
                    Err(e) => return Err(describe_client_error(&e)),
                }
            }
            // Our own Finished must be on the wire now (rustls' complete_io writes it before
            // returning; made sure here, since a client with nothing to say for a while
            // would otherwise miss the server's handshake deadline).
            let mut s = stream;
            while conn.wants_write() {
                conn.write_tls(&mut s)
                    .map_err(|e| describe_client_error(&e))?;
            }
            Ok(())
        })();
        let _ = stream.set_read_timeout(old_r);
        let _ = stream.set_write_timeout(old_w);
        result.map(|()| conn)
    }
}

/// A handshake failure as a user reads it, with what to do about it where there is
/// something to do.
fn describe_client_error(e: &io::Error) -> String {
    use rustls::CertificateError as C;
    let text = e.to_string();
    let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) else {
        return text;
    };
    let hint = match tls {
        rustls::Error::InvalidCertificate(c) => match c {
            C::UnknownIssuer => "the server's certificate is signed by an unknown issuer: \
                                 pass --ca PEM with the CA (or the server's own certificate) \
                                 to trust it"
                .to_string(),
            C::Expired | C::ExpiredContext { .. } => {
                format!("the server's certificate has expired: renew it on the server ({text})")
            }
            C::NotValidForName | C::NotValidForNameContext { .. } => format!(
                "the server's certificate is not valid for this host name: connect with a \
                 name it lists ({text})"
            ),
            _ => text.clone(),
        },
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
            format!("{text} (the server does not speak TLS on this port?)")
        }
        _ => text.clone(),
    };
    hint
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_close_flush_gives_up_after_a_grace_without_progress_or_at_its_cap() {
        let ms = Duration::from_millis;
        let t = Instant::now();
        let mut c = CloseFlush::new(t, ms(200));
        assert_eq!(c.attempt(t, Ok((false, 0))), None);
        assert_eq!(c.deadline(), t + ms(200));
        // Bytes moved at 150 ms: another 200 ms from there.
        assert_eq!(c.attempt(t + ms(150), Ok((false, 100))), None);
        assert_eq!(c.attempt(t + ms(300), Ok((false, 0))), None);
        assert_eq!(c.attempt(t + ms(350), Ok((false, 0))), Some(false));
        // All sent, or a broken socket, decide at once.
        assert_eq!(c.attempt(t, Ok((true, 0))), Some(true));
        let broken = Err(io::Error::from(io::ErrorKind::BrokenPipe));
        assert_eq!(CloseFlush::new(t, ms(200)).attempt(t, broken), Some(false));
        // A trickle that never stops still ends at the cap.
        let mut c = CloseFlush::new(t, ms(200));
        let mut at = t;
        let end = loop {
            at += ms(100);
            if let Some(done) = c.attempt(at, Ok((false, 1))) {
                break (done, at);
            }
        };
        assert_eq!(end, (false, t + CLOSE_FLUSH_CAP));
    }

    #[test]
    fn a_connection_without_tls_pays_a_pointer_for_it() {
        assert_eq!(
            std::mem::size_of::<Option<ServerTls>>(),
            std::mem::size_of::<usize>()
        );
    }
}
