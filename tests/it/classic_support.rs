//! Stand-ins for the manual's original Python 2 `server.py` and `client.py`, written in Rust
//! from the protocol as issue 5 describes it (not from their source), so the classic wire can
//! be tested in both directions without Python 2. They behave like the originals, flaws
//! included: one connect-back attempt, one blocking reply per read after `block`, two writers
//! on the server's data socket. Every blocking call here has a deadline or a stop flag.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

pub const HELLO: &[u8] = b"Hello, there";
pub const ECHO: &[u8] = b"Echoing...";
pub const HEARTBEAT: &[u8] = b"heartbeat";
pub const END: &[u8] = b"End Connection";

/// Something a stand-in saw or did, in order, with when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// Bytes read from the data socket.
    Data(Vec<u8>),
    /// Bytes written on the data socket.
    DataSent(Vec<u8>),
    /// The data socket was closed by the other side.
    DataClosed,
    /// The heartbeat socket is connected (client: accepted; server: connected back).
    HbConnected,
    /// The server stand-in's single connect-back attempt failed.
    HbConnectFailed,
    /// Bytes read from the heartbeat socket.
    Hb(Vec<u8>),
    /// Bytes written on the heartbeat socket.
    HbSent(Vec<u8>),
    /// The heartbeat socket was closed by the other side.
    HbClosed,
}

/// The log both stand-ins keep, shared with their threads.
#[derive(Clone)]
pub struct Journal {
    tx: Sender<(Instant, Seen)>,
}

/// The reading side of a [`Journal`].
pub struct Record {
    rx: Receiver<(Instant, Seen)>,
    pub seen: Vec<(Instant, Seen)>,
}

fn journal() -> (Journal, Record) {
    let (tx, rx) = crossbeam_channel::unbounded();
    (
        Journal { tx },
        Record {
            rx,
            seen: Vec::new(),
        },
    )
}

impl Journal {
    fn note(&self, s: Seen) {
        let _ = self.tx.send((Instant::now(), s));
    }
}

impl Record {
    /// Waits (bounded) for the first entry matching `pred`; panics with everything seen.
    pub fn wait(&mut self, what: &str, within: Duration, pred: impl Fn(&Seen) -> bool) -> Instant {
        if let Some((at, _)) = self.seen.iter().find(|(_, s)| pred(s)) {
            return *at;
        }
        let deadline = Instant::now() + within;
        loop {
            match self.rx.recv_deadline(deadline) {
                Ok(item) => {
                    let hit = pred(&item.1);
                    self.seen.push(item.clone());
                    if hit {
                        return item.0;
                    }
                }
                Err(_) => panic!("{what}: not seen within {within:?}; saw {:?}", self.show()),
            }
        }
    }

    /// Collects whatever arrives within `d`.
    pub fn settle(&mut self, d: Duration) {
        let deadline = Instant::now() + d;
        while let Ok(item) = self.rx.recv_deadline(deadline) {
            self.seen.push(item);
        }
    }

    /// All bytes read from the data socket so far, concatenated.
    pub fn data_bytes(&self) -> Vec<u8> {
        self.concat(|s| match s {
            Seen::Data(b) => Some(b),
            _ => None,
        })
    }

    /// When each whole `msg` was complete in the data stream, in order: the classic wire is
    /// unframed, so one read may hold several messages (all get that read's instant) or part
    /// of one (it counts when its last byte arrives).
    pub fn message_arrivals(&self, msg: &[u8]) -> Vec<Instant> {
        let mut total = 0;
        let mut arrivals = Vec::new();
        for (at, s) in &self.seen {
            if let Seen::Data(b) = s {
                total += b.len();
                while (arrivals.len() + 1) * msg.len() <= total {
                    arrivals.push(*at);
                }
            }
        }
        arrivals
    }

    /// Waits (bounded) until `n` whole `msg`s have arrived on the data socket.
    pub fn wait_messages(&mut self, msg: &[u8], n: usize, within: Duration) -> Vec<Instant> {
        let deadline = Instant::now() + within;
        while self.message_arrivals(msg).len() < n {
            match self.rx.recv_deadline(deadline) {
                Ok(item) => self.seen.push(item),
                Err(_) => panic!(
                    "{n} messages not seen within {within:?}; saw {:?}",
                    self.show()
                ),
            }
        }
        self.message_arrivals(msg)
    }

    /// All bytes read from the heartbeat socket so far, concatenated.
    pub fn hb_bytes(&self) -> Vec<u8> {
        self.concat(|s| match s {
            Seen::Hb(b) => Some(b),
            _ => None,
        })
    }

    fn concat(&self, f: impl Fn(&Seen) -> Option<&Vec<u8>>) -> Vec<u8> {
        self.seen
            .iter()
            .filter_map(|(_, s)| f(s))
            .flatten()
            .copied()
            .collect()
    }

    pub fn count(&self, pred: impl Fn(&Seen) -> bool) -> usize {
        self.seen.iter().filter(|(_, s)| pred(s)).count()
    }

    /// Entries as text, for failure messages.
    pub fn show(&self) -> Vec<String> {
        self.seen
            .iter()
            .map(|(_, s)| match s {
                Seen::Data(b) => format!("data <- {}", String::from_utf8_lossy(b)),
                Seen::DataSent(b) => format!("data -> {}", String::from_utf8_lossy(b)),
                Seen::Hb(b) => format!("hb <- {}", String::from_utf8_lossy(b)),
                Seen::HbSent(b) => format!("hb -> {}", String::from_utf8_lossy(b)),
                other => format!("{other:?}"),
            })
            .collect()
    }
}

/// Sleeps `d` unless `stop` is set first (checked every 5 ms).
fn nap(d: Duration, stop: &AtomicBool) -> bool {
    let end = Instant::now() + d;
    while Instant::now() < end {
        if stop.load(Ordering::Acquire) {
            return false;
        }
        thread::sleep((end - Instant::now()).min(Duration::from_millis(5)));
    }
    !stop.load(Ordering::Acquire)
}

/// Reads a socket into the journal until EOF, error or `stop`.
fn pump(mut s: TcpStream, j: Journal, stop: Arc<AtomicBool>, data: bool) {
    let _ = s.set_read_timeout(Some(Duration::from_millis(20)));
    let mut buf = [0u8; 1024];
    while !stop.load(Ordering::Acquire) {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => j.note(if data {
                Seen::Data(buf[..n].to_vec())
            } else {
                Seen::Hb(buf[..n].to_vec())
            }),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
    if !stop.load(Ordering::Acquire) {
        j.note(if data {
            Seen::DataClosed
        } else {
            Seen::HbClosed
        });
    }
}

/// The original client's heartbeat listener, bound first so its port can be handed to the
/// server before the client connects (the original binds it before connecting, too).
pub struct OrigClientListener {
    listener: TcpListener,
    pub port: u16,
}

impl OrigClientListener {
    pub fn bind() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        Self { listener, port }
    }

    /// Connects the data socket to `server_port`: sends `Hello, there` every `every` (the
    /// first at once), prints what comes back, answers each heartbeat read with
    /// `Echoing...` + that read after `block`, and stops on `End Connection`.
    pub fn connect(self, server_port: u16, every: Duration, block: Duration) -> OrigClient {
        let (j, record) = journal();
        let stop = Arc::new(AtomicBool::new(false));
        let data = TcpStream::connect(("127.0.0.1", server_port)).unwrap();
        let t0 = Instant::now();
        // Data reader.
        {
            let (s, j, stop) = (data.try_clone().unwrap(), j.clone(), stop.clone());
            thread::spawn(move || pump(s, j, stop, true));
        }
        // Data sender: the original's main loop.
        {
            let (mut s, j, stop) = (data.try_clone().unwrap(), j.clone(), stop.clone());
            thread::spawn(move || loop {
                if s.write_all(HELLO).is_err() {
                    return;
                }
                j.note(Seen::DataSent(HELLO.to_vec()));
                if !nap(every, &stop) {
                    return;
                }
            });
        }
        // Heartbeat thread: accept once, then read, block, echo; `End Connection` ends all.
        let hb_slot: Arc<Mutex<Option<TcpStream>>> = Arc::default();
        {
            let (j, stop, listener) = (j.clone(), stop.clone(), self.listener);
            let (data, slot) = (data.try_clone().unwrap(), hb_slot.clone());
            thread::spawn(move || {
                listener.set_nonblocking(true).unwrap();
                let deadline = Instant::now() + Duration::from_secs(5);
                let mut hb = loop {
                    match listener.accept() {
                        Ok((s, _)) => break s,
                        Err(_) if Instant::now() < deadline && !stop.load(Ordering::Acquire) => {
                            thread::sleep(Duration::from_millis(2))
                        }
                        Err(_) => return,
                    }
                };
                hb.set_nonblocking(false).unwrap();
                *slot.lock().unwrap() = hb.try_clone().ok();
                j.note(Seen::HbConnected);
                let _ = hb.set_read_timeout(Some(Duration::from_millis(20)));
                let mut buf = [0u8; 1024];
                while !stop.load(Ordering::Acquire) {
                    let n = match hb.read(&mut buf) {
                        Ok(0) => {
                            j.note(Seen::HbClosed);
                            return;
                        }
                        Ok(n) => n,
                        Err(e)
                            if matches!(
                                e.kind(),
                                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                            ) =>
                        {
                            continue
                        }
                        Err(_) => return,
                    };
                    let got = buf[..n].to_vec();
                    j.note(Seen::Hb(got.clone()));
                    if got.windows(END.len()).any(|w| w == END) {
                        let _ = data.shutdown(Shutdown::Both);
                        let _ = hb.shutdown(Shutdown::Both);
                        return;
                    }
                    if !nap(block, &stop) {
                        return;
                    }
                    let mut reply = ECHO.to_vec();
                    reply.extend_from_slice(&got);
                    if hb.write_all(&reply).is_err() {
                        return;
                    }
                    j.note(Seen::HbSent(reply));
                }
            });
        }
        OrigClient {
            data,
            hb: hb_slot,
            stop,
            record,
            t0,
        }
    }
}

/// A running stand-in of the original client.
pub struct OrigClient {
    data: TcpStream,
    hb: Arc<Mutex<Option<TcpStream>>>,
    stop: Arc<AtomicBool>,
    pub record: Record,
    /// When the data socket connected.
    pub t0: Instant,
}

impl OrigClient {
    /// Stops and closes both sockets, like Ctrl-C on the original.
    pub fn close(&self) {
        self.stop.store(true, Ordering::Release);
        let _ = self.data.shutdown(Shutdown::Both);
        if let Some(h) = self.hb.lock().unwrap().as_ref() {
            let _ = h.shutdown(Shutdown::Both);
        }
    }

    /// Closes only the heartbeat socket (a client whose heartbeat side died).
    pub fn close_heartbeat(&self) {
        if let Some(h) = self.hb.lock().unwrap().as_ref() {
            let _ = h.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for OrigClient {
    fn drop(&mut self) {
        self.close();
    }
}

/// A running stand-in of the original server: serves one client at a time is enough here.
pub struct OrigServer {
    pub port: u16,
    stop: Arc<AtomicBool>,
    pub record: Record,
    socks: Arc<Mutex<Vec<TcpStream>>>,
}

impl OrigServer {
    /// Listens on 127.0.0.1:0; for each client: echoes every read on the data socket,
    /// connects back once to (client IP, `client_port`), and after `idle` without data runs
    /// a round: `heartbeat`, wait `interval` for any reply, up to `count` times, then
    /// `End Connection` on both sockets and close.
    pub fn start(client_port: u16, idle: Duration, interval: Duration, count: u32) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let (j, record) = journal();
        let stop = Arc::new(AtomicBool::new(false));
        let socks: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        {
            let (stop, socks) = (stop.clone(), socks.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::Acquire) {
                    match listener.accept() {
                        Ok((s, peer)) => {
                            s.set_nonblocking(false).unwrap();
                            serve_one(
                                s,
                                peer,
                                client_port,
                                idle,
                                interval,
                                count,
                                &j,
                                &stop,
                                &socks,
                            );
                        }
                        Err(_) => thread::sleep(Duration::from_millis(2)),
                    }
                }
            });
        }
        Self {
            port,
            stop,
            record,
            socks,
        }
    }

    /// Vanishes: closes every socket without a word.
    pub fn vanish(&self) {
        self.stop.store(true, Ordering::Release);
        for s in self.socks.lock().unwrap().iter() {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for OrigServer {
    fn drop(&mut self) {
        self.vanish();
    }
}

#[allow(clippy::too_many_arguments)]
fn serve_one(
    data: TcpStream,
    peer: SocketAddr,
    client_port: u16,
    idle: Duration,
    interval: Duration,
    count: u32,
    j: &Journal,
    stop: &Arc<AtomicBool>,
    socks: &Arc<Mutex<Vec<TcpStream>>>,
) {
    socks.lock().unwrap().push(data.try_clone().unwrap());
    let last_rx = Arc::new(Mutex::new(Instant::now()));
    let closed = Arc::new(AtomicBool::new(false));
    // Data-exchange thread: echo each read.
    {
        let (mut s, j, stop) = (data.try_clone().unwrap(), j.clone(), stop.clone());
        let (last_rx, closed) = (last_rx.clone(), closed.clone());
        thread::spawn(move || {
            let _ = s.set_read_timeout(Some(Duration::from_millis(20)));
            let mut buf = [0u8; 1024];
            while !stop.load(Ordering::Acquire) && !closed.load(Ordering::Acquire) {
                match s.read(&mut buf) {
                    Ok(0) => {
                        j.note(Seen::DataClosed);
                        closed.store(true, Ordering::Release);
                        return;
                    }
                    Ok(n) => {
                        *last_rx.lock().unwrap() = Instant::now();
                        j.note(Seen::Data(buf[..n].to_vec()));
                        let mut reply = ECHO.to_vec();
                        reply.extend_from_slice(&buf[..n]);
                        if s.write_all(&reply).is_ok() {
                            j.note(Seen::DataSent(reply));
                        }
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    Err(_) => return,
                }
            }
        });
    }
    // Heartbeat thread: one connect-back attempt, then rounds after idle silence.
    let to = SocketAddr::new(peer.ip(), client_port);
    let Ok(mut hb) = TcpStream::connect_timeout(&to, Duration::from_millis(500)) else {
        j.note(Seen::HbConnectFailed);
        return;
    };
    socks.lock().unwrap().push(hb.try_clone().unwrap());
    j.note(Seen::HbConnected);
    let (j, stop) = (j.clone(), stop.clone());
    thread::spawn(move || {
        let mut data = data;
        let mut buf = [0u8; 1024];
        loop {
            if stop.load(Ordering::Acquire) || closed.load(Ordering::Acquire) {
                let _ = hb.shutdown(Shutdown::Both);
                return;
            }
            if last_rx.lock().unwrap().elapsed() < idle {
                thread::sleep(Duration::from_millis(2));
                continue;
            }
            let mut answered = false;
            for _ in 0..count {
                if hb.write_all(HEARTBEAT).is_err() {
                    return;
                }
                j.note(Seen::HbSent(HEARTBEAT.to_vec()));
                let _ = hb.set_read_timeout(Some(interval));
                if let Ok(n) = hb.read(&mut buf) {
                    if n > 0 {
                        j.note(Seen::Hb(buf[..n].to_vec()));
                        *last_rx.lock().unwrap() = Instant::now();
                        answered = true;
                        break;
                    }
                }
            }
            if !answered {
                let _ = hb.write_all(END);
                j.note(Seen::HbSent(END.to_vec()));
                let _ = data.write_all(END);
                j.note(Seen::DataSent(END.to_vec()));
                let _ = hb.shutdown(Shutdown::Both);
                let _ = data.shutdown(Shutdown::Both);
                return;
            }
        }
    });
}
