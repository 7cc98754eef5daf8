//! `hb-client --probe`: moves the bytes of the health check that [`crate::core::probe`]
//! decides. It connects (plain or TLS, through the session client's `Link`) within the
//! probe's deadline, feeds what the server sends to the [`Probe`], writes what it asks for,
//! and returns its [`Verdict`].

use std::time::{Duration, Instant};

use crossbeam_channel::select;

use crate::config::ClientSettings;
use crate::core::client::CloseKind;
use crate::core::probe::{ConnectFailure, Probe, ProbeAction, ProbeConfig, Verdict};
use crate::net::client::{tls_config, Link, Received, ServerReader, MAX_SERVER_LINE};
use crate::net::client_common::ClientError;

/// Runs one probe against the server `settings` name, within `timeout` from now.
///
/// Only a `--ca` that cannot be loaded (or a system without root certificates) is an
/// error (exit 2: the check itself is misconfigured); everything the server does or fails to
/// do is in the verdict.
pub fn run(settings: &ClientSettings, timeout: Duration) -> Result<Verdict, ClientError> {
    let started = Instant::now();
    let tls = tls_config(settings)?;
    let mut probe = Probe::new(
        ProbeConfig {
            addr: format!("{}:{}", settings.host, settings.port),
            timeout,
            token: settings.token.clone(),
            ping: ping_token(),
        },
        started,
    );
    let deadline = probe.deadline();
    let mut tls_started = false;
    let opened = Link::open_by(settings, tls.as_ref(), Some(deadline), || {
        tls_started = true;
    });
    if tls_started {
        probe.tls_started();
    }
    let (link, mut reader) = match opened {
        Ok(open) => open,
        Err(e) => return Ok(probe.connect_failed(Instant::now(), failure(e))),
    };
    probe.connected(Instant::now());
    let verdict = exchange(&link, &mut reader, &mut probe);
    link.shutdown();
    drop(reader);
    Ok(verdict)
}

/// `probe-` and 32 random bits: another client's `PONG` cannot be taken for ours.
fn ping_token() -> String {
    format!("probe-{:08x}", crate::net::os_random() as u32)
}

/// What the connect or the TLS handshake said, for the probe to judge.
fn failure(e: ClientError) -> ConnectFailure {
    match e {
        ClientError::Connect { source, .. } => match source.kind() {
            std::io::ErrorKind::ConnectionRefused => ConnectFailure::Refused,
            std::io::ErrorKind::TimedOut => ConnectFailure::TimedOut,
            _ => ConnectFailure::Io(os_words(&source)),
        },
        ClientError::Tls { detail, .. } => ConnectFailure::Tls(detail),
        other => ConnectFailure::Io(other.to_string()),
    }
}

/// An OS error as the verdict line says it: `no route to host`, without `(os error 113)`.
fn os_words(e: &std::io::Error) -> String {
    let text = e.to_string();
    let text = match text.find(" (os error ") {
        Some(i) => &text[..i],
        None => &text,
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(c) => c.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// The exchange on an open connection, until the probe gives its verdict.
fn exchange(link: &Link, reader: &mut ServerReader, probe: &mut Probe) -> Verdict {
    let ready = reader.ready();
    loop {
        // Everything already received first: the deadline is judged on what was read.
        feed(reader, probe);
        reader.rearm();
        while let Some(action) = probe.poll(Instant::now()) {
            match action {
                ProbeAction::Send(msg) => {
                    if !link.write_all(msg.encode().as_bytes()) {
                        // The server is gone; what it sent first may still explain why.
                        feed(reader, probe);
                        probe.handle_closed(CloseKind::Reset);
                    }
                }
                ProbeAction::Finish(verdict) => return verdict,
            }
        }
        let wake = probe.poll_timeout().unwrap_or_else(Instant::now);
        let timeout = wake.saturating_duration_since(Instant::now());
        select! {
            recv(ready) -> _ => {}
            default(timeout) => {}
        }
    }
}

/// Hands everything the socket holds now to the probe.
fn feed(reader: &mut ServerReader, probe: &mut Probe) {
    for got in reader.drain() {
        match got {
            Received::Bytes(bytes, _) => probe.handle_bytes(&bytes),
            Received::Line(line, at) => probe.handle_line(at, &line),
            Received::TooLong => probe.handle_too_long(MAX_SERVER_LINE),
            Received::Closed(kind) => probe.handle_closed(kind),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_errors_read_as_the_verdict_line_says_them() {
        let e = std::io::Error::from_raw_os_error(113);
        assert_eq!(os_words(&e), "no route to host");
        let e = std::io::Error::other("Host resolved to no address");
        assert_eq!(os_words(&e), "host resolved to no address");
    }

    #[test]
    fn ping_tokens_differ() {
        let (a, b) = (ping_token(), ping_token());
        assert!(a.starts_with("probe-") && a.len() == 14, "{a}");
        assert_ne!(a, b);
    }
}
