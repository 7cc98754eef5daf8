//! The classic wire's client.
//!
//! The heartbeat listener is bound before the data socket connects. One thread reads the data
//! socket, one accepts and reads the heartbeat socket; the calling thread is the only writer of
//! both and drives the pure [`ClassicClient`].

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver, Sender};

use super::WRITE_STALL;
use crate::config::ClientSettings;
use crate::core::classic::{
    ClassicClient, ClassicClientAction, ClassicClientConfig, ECHO_PATIENCE, READ_SIZE,
};
use crate::core::client::{sniff, Mismatch, Outcome, Sniff};
use crate::core::display::safe_bytes;
use crate::net::client_common::{connect, ClientError, ClientEvent};
use crate::net::events::EventLog;

/// How often the client's accept thread checks whether the session is over.
const ACCEPT_TICK: Duration = Duration::from_millis(50);
/// How long the client's threads may take to notice their sockets were shut down.
const JOIN_WAIT: Duration = Duration::from_secs(1);

/// Bytes for a log line: text as is, control characters escaped.
fn show(bytes: &[u8]) -> String {
    let mut out = String::new();
    for c in String::from_utf8_lossy(bytes).chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Binds the classic client's heartbeat listener on `host:port` (port 0: any free port).
pub fn listen_for_heartbeat(host: &str, port: u16) -> Result<TcpListener, ClientError> {
    crate::net::try_each_addr(host, port, TcpListener::bind).map_err(|source| ClientError::Listen {
        addr: format!("{host}:{port}"),
        source,
    })
}

/// What the client's reader threads report.
enum Incoming {
    Data(Vec<u8>, Instant),
    DataClosed(Instant),
    HbConnected(TcpStream, SocketAddr),
    Hb(Vec<u8>, Instant),
    HbClosed,
}

fn read_data(mut s: TcpStream, tx: Sender<Incoming>) {
    let mut buf = [0u8; READ_SIZE];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => {
                let _ = tx.send(Incoming::DataClosed(Instant::now()));
                return;
            }
            Ok(n) => {
                if tx
                    .send(Incoming::Data(buf[..n].to_vec(), Instant::now()))
                    .is_err()
                {
                    return;
                }
            }
        }
    }
}

fn accept_and_read_heartbeat(listener: TcpListener, done: &AtomicBool, tx: Sender<Incoming>) {
    let mut sock = loop {
        if done.load(Ordering::Acquire) {
            return;
        }
        if !matches!(
            crate::net::wait::wait_one(&listener, crate::net::wait::PollFlags::IN, ACCEPT_TICK),
            Ok(true)
        ) {
            continue;
        }
        match listener.accept() {
            Ok((s, from)) => break (s, from),
            Err(_) => thread::sleep(Duration::from_millis(10)),
        }
    };
    // One heartbeat socket per session, like the original: stop listening once it is here.
    drop(listener);
    let _ = sock.0.set_nonblocking(false);
    let Ok(writer) = sock.0.try_clone() else {
        return;
    };
    if tx.send(Incoming::HbConnected(writer, sock.1)).is_err() {
        return;
    }
    // The session may end before the socket is handed over (and so shut down): wake up every
    // tick to notice.
    let _ = sock.0.set_read_timeout(Some(ACCEPT_TICK));
    let mut buf = [0u8; READ_SIZE];
    while !done.load(Ordering::Acquire) {
        match sock.0.read(&mut buf) {
            Ok(n) if n > 0 => {
                if tx
                    .send(Incoming::Hb(buf[..n].to_vec(), Instant::now()))
                    .is_err()
                {
                    return;
                }
            }
            Err(e) if crate::net::is_retryable_io(&e) => {}
            Ok(_) | Err(_) => {
                let _ = tx.send(Incoming::HbClosed);
                return;
            }
        }
    }
}

/// Runs one classic-wire client session: listens on `client.host:client.port` for the
/// server's heartbeat socket, then connects the data socket. `stop` firing ends it (exit 0).
pub fn run_client(
    settings: &ClientSettings,
    log: &EventLog<ClientEvent>,
    stop: &Receiver<()>,
) -> Result<Outcome, ClientError> {
    let listener = listen_for_heartbeat(&settings.listen_host, settings.listen_port)?;
    run_client_with_listener(settings, listener, log, stop)
}

/// Like [`run_client`] with a heartbeat listener bound by the caller (so the caller knows its
/// port before the server needs it).
pub fn run_client_with_listener(
    settings: &ClientSettings,
    listener: TcpListener,
    log: &EventLog<ClientEvent>,
    stop: &Receiver<()>,
) -> Result<Outcome, ClientError> {
    let listen_err = |source| ClientError::Listen {
        addr: format!("{}:{}", settings.listen_host, settings.listen_port),
        source,
    };
    listener.set_nonblocking(true).map_err(listen_err)?;
    let data = connect(&settings.host, settings.port)?;
    let _ = data.set_nodelay(true);
    let _ = data.set_write_timeout(Some(WRITE_STALL));
    if let Ok(p) = data.peer_addr() {
        log.emit(ClientEvent::Connected(p));
    }
    let connect_err = |source| ClientError::Connect {
        addr: format!("{}:{}", settings.host, settings.port),
        source,
    };
    let (tx, rx) = crossbeam_channel::bounded(1024);
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let (s, tx) = (data.try_clone().map_err(connect_err)?, tx.clone());
        thread::spawn(move || read_data(s, tx))
    };
    let hb_reader = {
        let done = done.clone();
        thread::spawn(move || accept_and_read_heartbeat(listener, &done, tx))
    };
    let cfg = ClassicClientConfig {
        every: settings.every,
        block: settings.block,
        message: settings.message.clone().into_bytes(),
        messages: settings.messages,
        patience: ECHO_PATIENCE,
    };
    let mut hb_sock = None;
    let outcome = client_session(
        &data,
        &mut hb_sock,
        ClassicClient::new(cfg, Instant::now()),
        &rx,
        stop,
        log,
    );
    done.store(true, Ordering::Release);
    let _ = data.shutdown(Shutdown::Both);
    // The heartbeat socket may still be in the channel, not yet handed over: take it too.
    for inc in rx.try_iter() {
        if let Incoming::HbConnected(s, _) = inc {
            hb_sock = Some(s);
        }
    }
    if let Some(s) = &hb_sock {
        let _ = s.shutdown(Shutdown::Both);
    }
    drop(rx);
    // Both threads end once their sockets are shut down (or within one accept tick).
    let deadline = Instant::now() + JOIN_WAIT;
    for t in [reader, hb_reader] {
        while !t.is_finished() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(2));
        }
        if t.is_finished() {
            let _ = t.join();
        }
    }
    Ok(outcome)
}

fn client_session(
    data: &TcpStream,
    hb_sock: &mut Option<TcpStream>,
    mut client: ClassicClient,
    rx: &Receiver<Incoming>,
    stop: &Receiver<()>,
    log: &EventLog<ClientEvent>,
) -> Outcome {
    // A dropped sender must not end the session: stop listening to it instead.
    let mut stop = stop.clone();
    // The first data bytes, until they show whether the server speaks the classic wire.
    let mut first = Some(Vec::new());
    loop {
        let now = Instant::now();
        while let Some(action) = client.poll(now) {
            match action {
                ClassicClientAction::SendData(bytes) => {
                    if (&*data).write_all(&bytes).is_err() {
                        // The server is gone; an `End Connection` it sent first still says why.
                        while let Ok(inc) = rx.recv_timeout(Duration::from_millis(50)) {
                            if let Some(o) = handle(&mut client, hb_sock, &mut first, inc, log) {
                                return o;
                            }
                        }
                        return client.handle_data_eof(Instant::now());
                    }
                    log.emit(ClientEvent::Sent(show(&bytes)));
                }
                ClassicClientAction::SendHeartbeatReply(bytes) => {
                    // A failed reply is the server's loss to notice; the data socket tells us.
                    if let Some(s) = hb_sock.as_ref() {
                        if (&*s).write_all(&bytes).is_ok() {
                            log.emit(ClientEvent::Sent(format!("[heartbeat] {}", show(&bytes))));
                        }
                    }
                }
                ClassicClientAction::Finish(o) => return o,
            }
        }
        let timeout = client
            .poll_timeout()
            .map_or(Duration::from_secs(3600), |d| {
                d.saturating_duration_since(Instant::now())
            });
        select! {
            recv(rx) -> inc => {
                let Ok(inc) = inc else { return client.handle_data_eof(Instant::now()) };
                if let Some(o) = handle(&mut client, hb_sock, &mut first, inc, log) {
                    return o;
                }
            }
            recv(stop) -> msg => {
                if msg.is_ok() {
                    return Outcome::UserEnded;
                }
                stop = crossbeam_channel::never();
            }
            default(timeout) => {}
        }
    }
}

/// A line-wire server greets with `HELLO hb/1 ` (or refuses with `END `), where a classic
/// one sends nothing before `Echoing...`: the first data bytes tell them apart.
fn sniff_line_wire(first: &mut Option<Vec<u8>>, bytes: &[u8]) -> Option<Outcome> {
    let seen = first.as_mut()?;
    seen.extend_from_slice(&bytes[..bytes.len().min(16)]);
    match sniff(seen) {
        Sniff::NeedMore => None,
        Sniff::Foreign => {
            *first = None;
            None
        }
        Sniff::LineWire => Some(Outcome::Mismatch(Mismatch::LineWireServer)),
    }
}

fn handle(
    client: &mut ClassicClient,
    hb_sock: &mut Option<TcpStream>,
    first: &mut Option<Vec<u8>>,
    inc: Incoming,
    log: &EventLog<ClientEvent>,
) -> Option<Outcome> {
    match inc {
        Incoming::Data(bytes, at) => {
            log.emit(ClientEvent::Received(safe_bytes(&bytes)));
            if let Some(mismatch) = sniff_line_wire(first, &bytes) {
                return Some(mismatch);
            }
            client.handle_data(at, &bytes)
        }
        Incoming::DataClosed(at) => Some(client.handle_data_eof(at)),
        Incoming::HbConnected(s, from) => {
            let _ = s.set_nodelay(true);
            let _ = s.set_write_timeout(Some(WRITE_STALL));
            log.emit(ClientEvent::Received(format!(
                "[heartbeat] socket connected from {from}"
            )));
            *hb_sock = Some(s);
            None
        }
        Incoming::Hb(bytes, at) => {
            log.emit(ClientEvent::Received(format!(
                "[heartbeat] {}",
                safe_bytes(&bytes)
            )));
            client.handle_heartbeat(at, &bytes)
        }
        // The data socket decides how the session ends.
        Incoming::HbClosed => None,
    }
}
