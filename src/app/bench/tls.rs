//! Measurement 9, TLS: what it costs (issue 15). Each engine, plain against TLS, with the same
//! harness both ways so the ratio is fair: every client is a `Box<dyn Duplex>`, a bare
//! `TcpStream` or a `rustls::StreamOwned` over one, and nothing else differs.
//!
//! ```text
//!   memory and handshakes: N clients, 4 at a time, each connected, handshaken (TLS) and
//!     greeted (HELLO read), then held; server RSS and CPU read before and after
//!   relay: hb-server --mode chat, 10 receiver threads (blocking reads, MSG lines counted)
//!     ◀── 1 sender thread (blocking writes of `MSG <100 bytes>` batches, as fast as the
//!         server takes them); deliveries and server CPU read at the window's two ends
//! ```
//! The server's certificate is the test CA's (tests/fixtures/tls), compiled into hb-bench
//! and written to the scratch directory, so the binary needs no source tree at run time.
//! No target is set for TLS: the section says what it costs, and judges nothing.

use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::engines::Engine;
use super::measure::{skipped_engine_row, Ctx};
use super::peers::Peer;
use super::plot;
use super::procinfo;
use super::tally::PAYLOAD;
use super::verdict::{self, Spread};
use super::{BenchError, Outcome, Progress};
use crate::net::tls::ClientTlsConfig;

/// The test server certificate (localhost, 127.0.0.1, ::1; ECDSA P-256, signed by the test
/// CA), embedded so hb-bench runs anywhere: never a certificate to deploy.
const SERVER_PEM: &str = include_str!("../../../tests/fixtures/tls/server.pem");
/// Its private key.
const SERVER_KEY: &str = include_str!("../../../tests/fixtures/tls/server.key");
/// The test CA the bench's clients trust.
const CA_PEM: &str = include_str!("../../../tests/fixtures/tls/ca.pem");

/// Clients the memory run connects at once (each on a thread of its own).
const CLIENTS_AT_ONCE: usize = 4;
/// Receivers of the relay run (1 sender → this many).
const RECEIVERS: usize = 10;
/// Longest a connect, a handshake or a greeting may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long every receiver may take to hear the sender before the run fails.
const SETUP_WAIT: Duration = Duration::from_secs(5);
/// After every receiver has heard the sender, the relay runs this long before the window:
/// the window sees the steady state, not the queues filling.
const SETTLE: Duration = Duration::from_millis(100);
/// The sender's socket timeouts: how late it may notice the end of the run (a blocking
/// write to a server that holds the sender back would otherwise never return).
const SENDER_TIMEOUT: Duration = Duration::from_millis(20);
/// Messages per sender batch (about 53 KiB of `MSG` lines).
const BATCH: usize = 512;
/// Bytes per receiver `read()`.
const READ_BUF: usize = 64 * 1024;

/// Plain TCP or TLS on the same server binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wire {
    /// No `--tls-cert`: the line wire in the clear.
    Plain,
    /// `--tls-cert` / `--tls-key`: every connection starts with a handshake.
    Tls,
}

impl Wire {
    const ALL: [Wire; 2] = [Wire::Plain, Wire::Tls];

    /// As the report names it.
    fn label(self) -> &'static str {
        match self {
            Self::Plain => "plain",
            Self::Tls => "TLS",
        }
    }

    /// As the printed numbers name it.
    fn key(self) -> &'static str {
        match self {
            Self::Plain => "plain",
            Self::Tls => "tls",
        }
    }
}

/// The certificate files written to the scratch directory.
struct Fixtures {
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
}

impl Fixtures {
    /// Writes the embedded PEMs under `scratch` and checks the clients can load the CA.
    fn write(scratch: &Path) -> Result<Self, BenchError> {
        let dir = scratch.join("tls");
        std::fs::create_dir_all(&dir)
            .map_err(BenchError::io(format!("creating {}", dir.display())))?;
        let put = |name: &str, text: &str| -> Result<PathBuf, BenchError> {
            let p = dir.join(name);
            std::fs::write(&p, text).map_err(BenchError::io(format!("writing {}", p.display())))?;
            Ok(p)
        };
        let cert = put("server.pem", SERVER_PEM)?;
        let key = put("server.key", SERVER_KEY)?;
        let ca = put("ca.pem", CA_PEM)?;
        let fx = Self { cert, key, ca };
        fx.client(Wire::Tls)?;
        Ok(fx)
    }

    /// hb-server's flags for `wire`, after `extra`.
    fn server_args<'a>(&'a self, wire: Wire, extra: &[&'a str]) -> Vec<&'a str> {
        let mut args = extra.to_vec();
        if wire == Wire::Tls {
            // The scratch directory is absolute (under the temp dir), and so are these.
            args.extend([
                "--tls-cert",
                self.cert.to_str().unwrap_or_default(),
                "--tls-key",
                self.key.to_str().unwrap_or_default(),
            ]);
        }
        args
    }

    /// A new client's TLS settings for `wire` (None: plain). Loaded afresh for every
    /// connection: each has its own empty session cache, so every handshake is a full one,
    /// as N different clients' first connections are (one shared configuration would
    /// resume all but the first with the server's session tickets).
    fn client(&self, wire: Wire) -> Result<Option<ClientTlsConfig>, BenchError> {
        if wire == Wire::Plain {
            return Ok(None);
        }
        ClientTlsConfig::load(Some(&self.ca))
            .map(Some)
            .map_err(|e| BenchError::Measurement(format!("loading the test CA: {e}")))
    }
}

/// A client connection the harness reads and writes without knowing whether it is TLS.
trait Duplex: Read + Write + Send {}
impl<T: Read + Write + Send> Duplex for T {}

/// A TLS client's handshake outcome, for the report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Negotiated {
    version: String,
    suite: String,
    /// Full, or resumed (hb-bench means every handshake to be full).
    full: bool,
}

/// A socket that counts the bytes read from it (what came over the wire, records and all,
/// for TLS), the same way for both wires.
struct Counted {
    sock: TcpStream,
    read: Arc<AtomicU64>,
}

impl Read for Counted {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.sock.read(buf)?;
        self.read.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

impl Write for Counted {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.sock.write(buf)
    }
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.sock.write_vectored(bufs)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.sock.flush()
    }
}

/// One client connection of the harness.
struct Client {
    /// What the harness reads and writes: the socket, or TLS over it.
    io: Box<dyn Duplex>,
    /// A second handle on the socket, to set timeouts or shut it down from another thread.
    sock: TcpStream,
    /// Bytes read from the socket so far.
    wire_in: Arc<AtomicU64>,
    /// What the TLS handshake agreed on (None: plain).
    negotiated: Option<Negotiated>,
}

/// Connects to `addr` (and runs the handshake when `tls` is given).
fn open(addr: SocketAddr, tls: Option<ClientTlsConfig>) -> Result<Client, BenchError> {
    let s =
        TcpStream::connect_timeout(&addr, STEP_TIMEOUT).map_err(BenchError::io("connecting"))?;
    // Lines must leave at once in both modes: Nagle would hold the plain side's small
    // writes differently from rustls' record writes.
    let _ = s.set_nodelay(true);
    s.set_read_timeout(Some(STEP_TIMEOUT))
        .map_err(BenchError::io("setting a read timeout"))?;
    let handle = s.try_clone().map_err(BenchError::io("cloning a socket"))?;
    let wire_in = Arc::new(AtomicU64::new(0));
    let negotiated = match &tls {
        None => None,
        Some(cfg) => Some(
            cfg.connect("127.0.0.1", &s, STEP_TIMEOUT)
                .map_err(|e| BenchError::Measurement(format!("TLS handshake: {e}")))?,
        ),
    };
    let counted = Counted {
        sock: s,
        read: wire_in.clone(),
    };
    Ok(match negotiated {
        None => Client {
            io: Box::new(counted),
            sock: handle,
            wire_in,
            negotiated: None,
        },
        Some(conn) => {
            let agreed = Negotiated {
                version: conn
                    .protocol_version()
                    .map_or_else(|| "?".into(), |v| format!("{v:?}")),
                suite: conn
                    .negotiated_cipher_suite()
                    .map_or_else(|| "?".into(), |s| format!("{:?}", s.suite())),
                full: conn.handshake_kind() != Some(rustls::HandshakeKind::Resumed),
            };
            Client {
                io: Box::new(rustls::StreamOwned::new(conn, counted)),
                sock: handle,
                wire_in,
                negotiated: Some(agreed),
            }
        }
    })
}

/// Reads the server's greeting (`HELLO ...`, its first line) from a new connection.
fn read_hello(c: &mut dyn Duplex) -> Result<(), BenchError> {
    let mut got = Vec::with_capacity(128);
    let mut buf = [0u8; 512];
    while !got.contains(&b'\n') {
        let n = c
            .read(&mut buf)
            .map_err(BenchError::io("waiting for HELLO"))?;
        if n == 0 {
            return Err(BenchError::Measurement(
                "the server closed a new connection before HELLO".into(),
            ));
        }
        got.extend_from_slice(&buf[..n]);
    }
    if got.starts_with(b"HELLO ") {
        Ok(())
    } else {
        Err(BenchError::Measurement(format!(
            "expected HELLO, got {:?}",
            String::from_utf8_lossy(&got[..got.len().min(80)])
        )))
    }
}

/// The server's CPU time at one moment: the scheduler's per-thread account in nanoseconds
/// where the kernel keeps one (a few hundred handshakes are milliseconds, below the 10 ms
/// clock ticks of /proc/PID/stat), and the ticks as a fallback.
#[derive(Debug, Clone, Copy)]
struct CpuReading {
    ns: Option<u64>,
    ticks: u64,
}

impl CpuReading {
    fn take(srv: &mut Peer, during: &str) -> Result<Self, BenchError> {
        srv.check_alive(during)?;
        let ticks = procinfo::sample(srv.pid())
            .ok_or_else(|| {
                BenchError::Measurement(format!("cannot read /proc of hb-server during {during}"))
            })?
            .cpu_ticks;
        Ok(Self {
            ns: procinfo::cpu_ns(srv.pid()),
            ticks,
        })
    }

    /// Seconds of CPU from `self` to `later`. The nanosecond account sums the threads alive
    /// at each reading; every thread that did the work (the thread engine's two per held
    /// connection, the event engine's few) lives through both.
    fn secs_to(&self, later: &Self) -> f64 {
        match (self.ns, later.ns) {
            (Some(a), Some(b)) => b.saturating_sub(a) as f64 / 1e9,
            _ => later.ticks.saturating_sub(self.ticks) as f64 / procinfo::TICKS_PER_SEC as f64,
        }
    }
}

/// The server's RSS and threads now (an error when it died or /proc cannot say).
fn sample(srv: &mut Peer, during: &str) -> Result<procinfo::Sample, BenchError> {
    srv.check_alive(during)?;
    procinfo::sample(srv.pid()).ok_or_else(|| {
        BenchError::Measurement(format!("cannot read /proc of hb-server during {during}"))
    })
}

fn rss_kib(srv: &mut Peer, during: &str) -> Result<u64, BenchError> {
    sample(srv, during).map(|s| s.rss_kib)
}

fn threads(srv: &mut Peer, during: &str) -> Result<u64, BenchError> {
    sample(srv, during).map(|s| s.threads)
}

/// What one of the memory run's client threads opened: its connections, and how many of
/// their handshakes were resumptions.
type Opened = (Vec<Box<dyn Duplex>>, usize);

/// One memory-and-handshake run.
#[derive(Debug, Clone)]
struct MemRun {
    conns: usize,
    rss0_kib: u64,
    rss1_kib: u64,
    cpu_s: f64,
    /// What the first TLS handshake agreed on (None: plain).
    negotiated: Option<Negotiated>,
    /// TLS handshakes that were resumptions, not full ones (0 expected).
    resumed: usize,
    /// The server's command line.
    command: String,
}

impl MemRun {
    /// (RSS after − RSS before) / connections.
    fn kib_per_conn(&self) -> f64 {
        (self.rss1_kib as f64 - self.rss0_kib as f64) / self.conns.max(1) as f64
    }

    /// Server CPU µs per connection set up (accept, handshake when TLS, HELLO).
    fn us_per_conn(&self) -> f64 {
        self.cpu_s * 1e6 / self.conns.max(1) as f64
    }
}

/// `n` clients, [`CLIENTS_AT_ONCE`] at a time, each connected, handshaken and greeted, then
/// held; the server's RSS and CPU before the first and after the last.
fn memory_run(
    ctx: &Ctx,
    engine: Engine,
    wire: Wire,
    fx: &Fixtures,
    n: usize,
) -> Result<MemRun, BenchError> {
    let mut srv = ctx.hb(engine, &fx.server_args(wire, &[]))?;
    let threads0 = threads(&mut srv, "the TLS memory run")?;
    // One connection first, then closed: what the first one sets up once (rustls' and
    // ring's lazily built state, the engine's first buffers) is not counted per connection.
    let mut warm = open(srv.addr, fx.client(wire)?)?;
    read_hello(warm.io.as_mut())?;
    let negotiated = warm.negotiated.take();
    drop(warm);
    // Until the server is done with it: its threads gone (the thread engine's two) and its
    // RSS still between two readings 10 ms apart, at most 200 ms (a fixed 200 ms before).
    let until = Instant::now() + Duration::from_millis(200);
    let mut last = rss_kib(&mut srv, "the TLS memory run")?;
    while Instant::now() < until {
        thread::sleep(Duration::from_millis(10));
        let rss = rss_kib(&mut srv, "the TLS memory run")?;
        if rss == last && threads(&mut srv, "the TLS memory run")? <= threads0 {
            break;
        }
        last = rss;
    }
    // The clients' settings are loaded before the clock starts (they are hb-bench's work,
    // though the server's CPU is what is read).
    let mut configs = (0..n)
        .map(|_| fx.client(wire))
        .collect::<Result<Vec<_>, _>>()?;
    let rss0 = rss_kib(&mut srv, "the TLS memory run")?;
    let cpu0 = CpuReading::take(&mut srv, "the TLS memory run")?;
    let bar = Progress::new(format!("{} {} connect {n}", engine.flag(), wire.label()), n);
    // A few clients at a time, each on its own thread, one connection after another: the
    // handshakes overlap (serially, each waited for the other side's half: 0.7 s for 1,000
    // TLS clients of the thread engine), the server's work per connection is the same.
    let addr = srv.addr;
    let done = AtomicUsize::new(0);
    let mut chunks: Vec<Vec<Option<ClientTlsConfig>>> =
        (0..CLIENTS_AT_ONCE).map(|_| Vec::new()).collect();
    for (i, cfg) in configs.drain(..).enumerate() {
        chunks[i % CLIENTS_AT_ONCE].push(cfg);
    }
    let opened: Vec<Result<Opened, BenchError>> = thread::scope(|sc| {
        let workers: Vec<_> = chunks
            .into_iter()
            .map(|chunk| {
                let done = &done;
                sc.spawn(move || {
                    let mut held = Vec::with_capacity(chunk.len());
                    let mut resumed = 0;
                    for cfg in chunk {
                        let mut c = open(addr, cfg)?;
                        read_hello(c.io.as_mut())?;
                        resumed += usize::from(c.negotiated.as_ref().is_some_and(|a| !a.full));
                        held.push(c.io);
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok((held, resumed))
                })
            })
            .collect();
        while workers.iter().any(|w| !w.is_finished()) {
            bar.set(done.load(Ordering::Relaxed));
            thread::sleep(Duration::from_millis(20));
        }
        workers
            .into_iter()
            .map(|w| {
                w.join().unwrap_or_else(|_| {
                    Err(BenchError::Measurement(
                        "a TLS client thread panicked".into(),
                    ))
                })
            })
            .collect()
    });
    let mut held = Vec::with_capacity(n);
    let mut resumed = 0;
    for r in opened {
        let (h, k) = r?;
        held.extend(h);
        resumed += k;
    }
    let cpu1 = CpuReading::take(&mut srv, "the TLS memory run")?;
    let rss1 = rss_kib(&mut srv, "the TLS memory run")?;
    bar.finish("");
    drop(held);
    Ok(MemRun {
        conns: n,
        rss0_kib: rss0,
        rss1_kib: rss1,
        cpu_s: cpu0.secs_to(&cpu1),
        negotiated,
        resumed,
        command: srv.command.clone(),
    })
}

/// Counts the complete lines that start with `MSG ` in a byte stream cut anywhere, and
/// notices an `END ` line. Only a line's first four bytes are kept: a receiver counts
/// millions of lines a second and copies none of them. Pure, so it is unit-tested.
#[derive(Debug, Default)]
pub struct LineCounter {
    head: [u8; 4],
    len: usize,
}

impl LineCounter {
    /// Feeds bytes as read; returns the `MSG` lines completed and whether an `END` line was.
    pub fn feed(&mut self, bytes: &[u8]) -> (u64, bool) {
        let (mut msgs, mut end) = (0, false);
        let mut start = 0;
        for nl in memchr::memchr_iter(b'\n', bytes) {
            self.take(&bytes[start..nl]);
            if self.starts(b"MSG ") {
                msgs += 1;
            } else if self.starts(b"END ") {
                end = true;
            }
            self.len = 0;
            start = nl + 1;
        }
        self.take(&bytes[start..]);
        (msgs, end)
    }

    fn take(&mut self, part: &[u8]) {
        let k = (self.head.len() - self.len).min(part.len());
        self.head[self.len..self.len + k].copy_from_slice(&part[..k]);
        self.len += k;
    }

    fn starts(&self, prefix: &[u8; 4]) -> bool {
        self.len == prefix.len() && &self.head == prefix
    }
}

/// One receiver: reads until the server or hb-bench closes it, adding the `MSG` lines it
/// completes to `count` after every read (so the window's two readings see them). True
/// when the server ended it (`END`, or a close before hb-bench's) rather than hb-bench.
fn receive(mut c: Box<dyn Duplex>, count: &AtomicU64, stop: &AtomicBool) -> bool {
    let mut buf = vec![0u8; READ_BUF];
    let mut lines = LineCounter::default();
    loop {
        match c.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let (msgs, end) = lines.feed(&buf[..n]);
                count.fetch_add(msgs, Ordering::Relaxed);
                if end {
                    return true;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    !stop.load(Ordering::Acquire)
}

/// One `MSG <100 bytes>\n` line.
fn frame() -> Vec<u8> {
    let mut f = b"MSG ".to_vec();
    f.resize(4 + PAYLOAD, b'x');
    f.push(b'\n');
    f
}

/// The sender: writes batches of identical `MSG` lines as fast as the server takes them
/// until `stop` (the receivers count what arrives). A batch is whole lines, and the offset
/// wraps within it, so the stream stays line-aligned. Returns why it stopped early, if it
/// did.
fn send(mut c: Box<dyn Duplex>, stop: &AtomicBool) -> Option<String> {
    let batch = frame().repeat(BATCH);
    let mut off = 0;
    while !stop.load(Ordering::Relaxed) {
        match c.write(&batch[off..]) {
            Ok(0) => return Some("the socket took no bytes".into()),
            Ok(n) => {
                off = (off + n) % batch.len();
            }
            // The send timeout: look at the clock, then try again.
            Err(e) if crate::net::is_retryable_io(&e) => {}
            Err(e) => return Some(e.to_string()),
        }
    }
    None
}

/// One relay run.
#[derive(Debug, Clone, Copy)]
struct RelayRun {
    /// `MSG` lines the receivers got in the window, summed.
    deliveries: u64,
    /// Bytes the receivers read from their sockets in the window, summed (TLS: records).
    wire_bytes: u64,
    /// The window's length.
    secs: f64,
    /// Server CPU seconds in the window.
    cpu_s: f64,
    /// Receivers the server ended (they should be none).
    ended: usize,
}

impl RelayRun {
    fn per_s(&self) -> f64 {
        self.deliveries as f64 / self.secs
    }

    /// Bytes on the wire per delivery (NaN with none).
    fn wire_per_delivery(&self) -> f64 {
        if self.deliveries == 0 {
            f64::NAN
        } else {
            self.wire_bytes as f64 / self.deliveries as f64
        }
    }

    /// Server CPU seconds per million deliveries (NaN with none).
    fn cpu_per_m(&self) -> f64 {
        if self.deliveries == 0 {
            f64::NAN
        } else {
            self.cpu_s / (self.deliveries as f64 / 1e6)
        }
    }
}

/// 1 sender → [`RECEIVERS`] receivers on a fresh `hb-server --mode chat`, for `window`.
fn relay_run(
    ctx: &Ctx,
    engine: Engine,
    wire: Wire,
    fx: &Fixtures,
    window: Duration,
) -> Result<(RelayRun, String), BenchError> {
    let mut srv = ctx.hb(
        engine,
        &fx.server_args(wire, &["--mode", "chat", "--max-conns", "1000"]),
    )?;
    let stop = Arc::new(AtomicBool::new(false));
    let mut handles: Vec<TcpStream> = Vec::new();
    let mut counts: Vec<Arc<AtomicU64>> = Vec::new();
    let mut readers: Vec<JoinHandle<bool>> = Vec::new();
    // Threads and sockets are released whatever happens below: hb-bench shuts the sockets,
    // which ends every blocking read and write.
    let mut wire_in: Vec<Arc<AtomicU64>> = Vec::new();
    // Threads and sockets are released whatever happens below: hb-bench shuts the sockets,
    // which ends every blocking read and write.
    let result = (|| -> Result<RelayRun, BenchError> {
        for i in 0..RECEIVERS {
            let mut c = open(srv.addr, fx.client(wire)?)?;
            read_hello(c.io.as_mut())?;
            c.io.write_all(format!("JOIN r{i}\n").as_bytes())
                .and_then(|()| c.io.flush())
                .map_err(BenchError::io("joining"))?;
            c.sock
                .set_read_timeout(None)
                .map_err(BenchError::io("clearing a read timeout"))?;
            let count = Arc::new(AtomicU64::new(0));
            let (count2, stop2) = (count.clone(), stop.clone());
            let io = c.io;
            readers.push(thread::spawn(move || receive(io, &count2, &stop2)));
            handles.push(c.sock);
            counts.push(count);
            wire_in.push(c.wire_in);
        }
        let mut s = open(srv.addr, fx.client(wire)?)?;
        read_hello(s.io.as_mut())?;
        s.io.write_all(b"JOIN sender\n")
            .and_then(|()| s.io.flush())
            .map_err(BenchError::io("joining"))?;
        // Short timeouts both ways: the sender checks the clock between writes, and rustls
        // never parks it in a read (what the server sends it is a few lines at most).
        s.sock
            .set_write_timeout(Some(SENDER_TIMEOUT))
            .and_then(|()| s.sock.set_read_timeout(Some(SENDER_TIMEOUT)))
            .map_err(BenchError::io("setting the sender's timeouts"))?;
        handles.push(s.sock);
        let sender = {
            let (stop, io) = (stop.clone(), s.io);
            thread::spawn(move || send(io, &stop))
        };
        let total = |counts: &[Arc<AtomicU64>]| -> Vec<u64> {
            counts.iter().map(|c| c.load(Ordering::Relaxed)).collect()
        };
        let until = Instant::now() + SETUP_WAIT;
        while total(&counts).contains(&0) {
            if Instant::now() > until || sender.is_finished() {
                let heard = total(&counts).iter().filter(|&&c| c > 0).count();
                return Err(BenchError::Measurement(format!(
                    "{} {}: only {heard} of {RECEIVERS} receivers heard the sender",
                    engine.label(),
                    wire.label()
                )));
            }
            thread::sleep(Duration::from_millis(10));
        }
        thread::sleep(SETTLE);
        let (c0, b0) = (total(&counts), total(&wire_in));
        let cpu0 = CpuReading::take(&mut srv, "the TLS relay")?;
        let t0 = Instant::now();
        thread::sleep(window);
        let (c1, b1) = (total(&counts), total(&wire_in));
        let t1 = Instant::now();
        let cpu1 = CpuReading::take(&mut srv, "the TLS relay")?;
        stop.store(true, Ordering::Release);
        for h in &handles {
            let _ = h.shutdown(std::net::Shutdown::Both);
        }
        if let Ok(Some(why)) = sender.join() {
            eprintln!("hb-bench: the TLS relay's sender stopped early: {why}");
        }
        Ok(RelayRun {
            deliveries: c1.iter().sum::<u64>() - c0.iter().sum::<u64>(),
            wire_bytes: b1.iter().sum::<u64>() - b0.iter().sum::<u64>(),
            secs: (t1 - t0).as_secs_f64(),
            cpu_s: cpu0.secs_to(&cpu1),
            ended: 0,
        })
    })();
    stop.store(true, Ordering::Release);
    for h in &handles {
        let _ = h.shutdown(std::net::Shutdown::Both);
    }
    let ended = readers
        .into_iter()
        .map(|r| r.join().unwrap_or(true))
        .filter(|&e| e)
        .count();
    srv.check_alive("the TLS relay")?;
    result.map(|r| (RelayRun { ended, ..r }, srv.command.clone()))
}

/// Everything one engine and wire produced over the repeats.
#[derive(Default)]
struct Runs {
    mem: Vec<MemRun>,
    relay: Vec<RelayRun>,
}

impl Runs {
    fn mem_col(&self, f: impl Fn(&MemRun) -> f64) -> Vec<f64> {
        self.mem.iter().map(f).collect()
    }

    fn relay_col(&self, f: impl Fn(&RelayRun) -> f64) -> Vec<f64> {
        self.relay.iter().map(f).collect()
    }
}

/// Per-repeat `tls / plain` of one figure (runs of one repeat are seconds apart).
fn ratios(plain: &[f64], tls: &[f64]) -> Vec<f64> {
    plain
        .iter()
        .zip(tls)
        .map(|(p, t)| if *p == 0.0 { f64::NAN } else { t / p })
        .collect()
}

/// Per-repeat `tls − plain`.
fn diffs(plain: &[f64], tls: &[f64]) -> Vec<f64> {
    plain.iter().zip(tls).map(|(p, t)| t - p).collect()
}

fn med(v: &[f64]) -> f64 {
    Spread::of(v).map_or(f64::NAN, |s| s.median)
}

/// Measurement 9, TLS: what it costs. Both engines, plain against TLS: memory per idle
/// connection, server CPU per handshake, relay throughput and server CPU per delivery.
pub fn tls_cost(ctx: &Ctx) -> Result<Outcome, BenchError> {
    let p = ctx.plan;
    let title = "9. TLS: what it costs";
    eprintln!("== {title}");
    let fx = Fixtures::write(ctx.scratch)?;
    let engines = ctx.engines.available();
    let mut runs: Vec<((Engine, Wire), Runs)> = Vec::new();
    let mut negotiated: Option<Negotiated> = None;
    // The TLS servers' command lines (memory run, relay run) per engine, for the report.
    let mut commands: Vec<(Engine, String, String)> = Vec::new();
    let short = |cmd: &str| {
        cmd.replace(&fx.cert.display().to_string(), "server.pem")
            .replace(&fx.key.display().to_string(), "server.key")
    };
    for rep in 0..p.repeats {
        for &engine in &engines {
            for wire in Wire::ALL {
                eprintln!(
                    "-- repeat {}/{}: {} {}",
                    rep + 1,
                    p.repeats,
                    engine.label(),
                    wire.label()
                );
                let began = Instant::now();
                let m = memory_run(ctx, engine, wire, &fx, p.tls_conns)?;
                let mem_s = began.elapsed().as_secs_f64();
                let (r, relay_cmd) = relay_run(ctx, engine, wire, &fx, p.tls_window)?;
                eprintln!(
                    "   {:.2} KiB per connection, {:.0} µs server CPU per connection ({} \
                     resumed) [{mem_s:.1} s]; {:.0} deliveries/s, {:.3} server CPU s per \
                     million, {} receivers ended [{:.1} s]",
                    m.kib_per_conn(),
                    m.us_per_conn(),
                    m.resumed,
                    r.per_s(),
                    r.cpu_per_m(),
                    r.ended,
                    began.elapsed().as_secs_f64() - mem_s
                );
                if negotiated.is_none() {
                    negotiated.clone_from(&m.negotiated);
                }
                if wire == Wire::Tls && !commands.iter().any(|(e, _, _)| *e == engine) {
                    commands.push((engine, short(&m.command), short(&relay_cmd)));
                }
                let slot = match runs.iter_mut().position(|(k, _)| *k == (engine, wire)) {
                    Some(i) => &mut runs[i].1,
                    None => {
                        runs.push(((engine, wire), Runs::default()));
                        &mut runs.last_mut().expect("just pushed").1
                    }
                };
                slot.mem.push(m);
                slot.relay.push(r);
            }
        }
    }
    let get = |engine: Engine, wire: Wire| -> Option<&Runs> {
        runs.iter()
            .find(|(k, _)| *k == (engine, wire))
            .map(|(_, r)| r)
    };

    let n = p.tls_conns;
    let window = p.tls_window.as_secs_f64();
    let tls_mem = runs
        .iter()
        .filter(|((_, w), _)| *w == Wire::Tls)
        .flat_map(|(_, r)| &r.mem);
    let (tls_handshakes, resumed) = tls_mem.fold((0, 0), |(h, r), m| (h + m.conns, r + m.resumed));
    let mut body = format!(
        "For the record (issue 15 sets no target for TLS): what serving TLS costs hb-server, \
         each engine plain against TLS, with one harness for both (every client is the same \
         code over a bare socket or over `rustls::StreamOwned`). The server's certificate is \
         the test CA's ECDSA P-256 one (tests/fixtures/tls, compiled into hb-bench); rustls \
         with the ring provider on both sides; negotiated: {}; full handshakes: {} of {} \
         (every client loads its own configuration, with an empty session cache, as \
         different clients' first connections do; none should resume). {} repeat(s), fresh \
         servers for every run; cells are median (min..max).\n\n\
         - **Memory and handshakes**: {n} clients, {CLIENTS_AT_ONCE} at a time (one after \
           another on each of {CLIENTS_AT_ONCE} threads), each connected, \
           handshaken (TLS: a full handshake, no resumption) and greeted (its `HELLO` read), \
           then held idle; the server's VmRSS and CPU are read before the first (after one \
           warm-up connection, closed, so what the first connection sets up once is not \
           counted) and after the last `HELLO`. KiB per connection = RSS delta / {n}; CPU \
           per connection = the server's CPU time over the {n} set-ups / {n} (per-thread \
           scheduler time from /proc/PID/task/*/schedstat): accept and `HELLO` for plain, \
           plus the handshake for TLS.\n\
         - **Relay**: `--mode chat`, one sender and {RECEIVERS} receivers, each a blocking \
           thread in hb-bench; the sender writes `MSG <{PAYLOAD} bytes>` lines as fast as \
           the server takes them, the receivers count `MSG` lines; after every receiver has \
           heard the sender and {} ms more, a window of {window} s: deliveries/s = lines the \
           {RECEIVERS} receivers got in it, summed; bytes read per delivery = what the \
           receivers read from their sockets in it / deliveries (the line `MSG sender \
           <{PAYLOAD} bytes>` is {} bytes; TLS adds its records' header, type and tag); \
           server CPU per million deliveries = its CPU time in the window / deliveries. **hb-bench's own receivers decrypt too, on \
           the same {} cores** (and rustls' client reads records 4 KiB at a time, where the \
           plain receiver reads 64 KiB): the throughput ratio is an end-to-end cost, an \
           upper bound on the server's share; the server's own cost is its CPU per \
           delivery.\n\n",
        negotiated.as_ref().map_or_else(
            || "(no TLS run)".into(),
            |n| format!("{}, {}", n.version, n.suite)
        ),
        tls_handshakes - resumed,
        tls_handshakes,
        p.repeats,
        SETTLE.as_millis(),
        frame().len() + "sender ".len(),
        ctx.machine.cores,
    );
    for (engine, mem_cmd, relay_cmd) in &commands {
        let _ = writeln!(
            body,
            "- {} with TLS: `{mem_cmd}` (memory and handshakes), `{relay_cmd}` (relay); \
             plain: the same without `--tls-cert` and `--tls-key`",
            engine.label()
        );
    }
    body.push_str(
        "\n| engine | wire | KiB per idle connection | server CPU µs per connection set-up | deliveries/s (1 → 10) | bytes read per delivery | server CPU s per million deliveries | receivers ended |\n\
         |---|---|---:|---:|---:|---:|---:|---:|\n",
    );
    for engine in Engine::ALL {
        if !engines.contains(&engine) {
            skipped_engine_row(&mut body, ctx, engine, 6);
            continue;
        }
        for wire in Wire::ALL {
            let Some(r) = get(engine, wire) else { continue };
            let _ = writeln!(
                body,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                engine.label(),
                wire.label(),
                verdict::cell(&r.mem_col(MemRun::kib_per_conn), 2),
                verdict::cell(&r.mem_col(MemRun::us_per_conn), 0),
                verdict::cell(&r.relay_col(RelayRun::per_s), 0),
                verdict::cell(&r.relay_col(RelayRun::wire_per_delivery), 2),
                verdict::cell(&r.relay_col(RelayRun::cpu_per_m), 3),
                verdict::cell(&r.relay_col(|x| x.ended as f64), 0),
            );
        }
    }
    body.push_str("\n**What it costs** (no target is set; per-repeat TLS ÷ plain, medians):\n\n");
    let mut numbers = Vec::new();
    let mut bars = Vec::new();
    for engine in Engine::ALL {
        let (Some(pl), Some(tl)) = (get(engine, Wire::Plain), get(engine, Wire::Tls)) else {
            let _ = writeln!(
                body,
                "- {}: SKIPPED ({})",
                engine.label(),
                ctx.engines
                    .skip_reason(engine)
                    .unwrap_or_else(|| "no run".into())
            );
            continue;
        };
        let kib = (
            pl.mem_col(MemRun::kib_per_conn),
            tl.mem_col(MemRun::kib_per_conn),
        );
        let us = (
            pl.mem_col(MemRun::us_per_conn),
            tl.mem_col(MemRun::us_per_conn),
        );
        let rate = (pl.relay_col(RelayRun::per_s), tl.relay_col(RelayRun::per_s));
        let cpu = (
            pl.relay_col(RelayRun::cpu_per_m),
            tl.relay_col(RelayRun::cpu_per_m),
        );
        let bytes = (
            pl.relay_col(RelayRun::wire_per_delivery),
            tl.relay_col(RelayRun::wire_per_delivery),
        );
        let extra_kib = diffs(&kib.0, &kib.1);
        let hs_us = diffs(&us.0, &us.1);
        let rate_r = ratios(&rate.0, &rate.1);
        let cpu_r = ratios(&cpu.0, &cpu.1);
        let kib_r = ratios(&kib.0, &kib.1);
        let us_r = ratios(&us.0, &us.1);
        // Medians in the sentence (the table has the ranges); the derived figures keep
        // their per-repeat range, which the table does not show.
        let m = |v: &[f64], d: usize| format!("{:.*}", d, med(v));
        let _ = writeln!(
            body,
            "- {}: **memory** {} KiB more per idle connection ({} against {} KiB); \
             **handshake** about {} µs of server CPU ({} µs per TLS connection set up against \
             {} µs plain); **relay** {}× the plain deliveries/s end to end ({} against {} \
             per second), the server spending {}× the CPU per delivery ({} against {} s per \
             million deliveries); the receivers read {} bytes per delivery against {} plain.",
            engine.label(),
            verdict::cell(&extra_kib, 2),
            m(&kib.1, 2),
            m(&kib.0, 2),
            verdict::cell(&hs_us, 0),
            m(&us.1, 0),
            m(&us.0, 0),
            verdict::cell(&rate_r, 2),
            m(&rate.1, 0),
            m(&rate.0, 0),
            verdict::cell(&cpu_r, 2),
            m(&cpu.1, 3),
            m(&cpu.0, 3),
            m(&bytes.1, 2),
            m(&bytes.0, 2),
        );
        let (tag, short) = match engine {
            Engine::Threads => ("", "threads"),
            Engine::Events => ("ev_", "events"),
        };
        for (wire, k, u, r, c) in [
            (Wire::Plain, &kib.0, &us.0, &rate.0, &cpu.0),
            (Wire::Tls, &kib.1, &us.1, &rate.1, &cpu.1),
        ] {
            let w = wire.key();
            numbers.push((format!("{tag}{w}_kib_per_conn"), med(k)));
            numbers.push((format!("{tag}{w}_cpu_us_per_conn"), med(u)));
            numbers.push((format!("{tag}{w}_deliveries_per_s"), med(r)));
            numbers.push((format!("{tag}{w}_cpu_s_per_m_deliveries"), med(c)));
        }
        numbers.push((format!("{tag}tls_extra_kib_per_conn"), med(&extra_kib)));
        numbers.push((format!("{tag}tls_handshake_cpu_us"), med(&hs_us)));
        numbers.push((format!("{tag}tls_vs_plain_deliveries"), med(&rate_r)));
        numbers.push((format!("{tag}tls_vs_plain_cpu_per_delivery"), med(&cpu_r)));
        bars.push((format!("{short} KiB/conn"), med(&kib_r)));
        bars.push((format!("{short} CPU/connect"), med(&us_r)));
        bars.push((format!("{short} deliveries/s"), med(&rate_r)));
        bars.push((format!("{short} CPU/delivery"), med(&cpu_r)));
    }
    let _ = writeln!(
        body,
        "\nWhy, and what it means for a deployment: bench/ANALYSIS.md, \"TLS: what it costs \
         (issue 15)\".\n\n![TLS ÷ plain]({}/tls.svg)",
        ctx.report.svg_link
    );
    plot::bars(
        &ctx.report.svg_dir.join("tls.svg"),
        "TLS ÷ plain, per engine (median of repeats; 1 = no cost)",
        "TLS ÷ plain (×)",
        &bars,
    )?;
    ctx.report.section(title, &body)?;
    Ok(Outcome {
        title: title.into(),
        numbers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msg_lines_are_counted_wherever_the_reads_cut_them() {
        let stream = b"HELLO hb/1 x\nJOINED r1\nMSG sender aaa\nMSG sender bbb\nMS\nMSG x\n";
        let mut whole = LineCounter::default();
        assert_eq!(whole.feed(stream), (3, false));
        // Every cut, and byte by byte: the same count.
        for cut in 0..stream.len() {
            let mut c = LineCounter::default();
            let (a, _) = c.feed(&stream[..cut]);
            let (b, _) = c.feed(&stream[cut..]);
            assert_eq!(a + b, 3, "cut at {cut}");
        }
        let mut c = LineCounter::default();
        let n: u64 = stream.iter().map(|b| c.feed(&[*b]).0).sum();
        assert_eq!(n, 3);
    }

    #[test]
    fn an_end_line_is_noticed_and_a_line_not_yet_ended_is_not_counted() {
        let mut c = LineCounter::default();
        assert_eq!(c.feed(b"MSG a\nEND slow-consumer\n"), (1, true));
        assert_eq!(c.feed(b"MSG partial"), (0, false));
        assert_eq!(c.feed(b" rest\n"), (1, false));
        assert_eq!(c.feed(b"MSGX\nMSG\n\n"), (0, false));
    }

    #[test]
    fn a_batch_is_whole_lines_of_the_payload_size() {
        let f = frame();
        assert_eq!(f.len(), 4 + PAYLOAD + 1);
        assert!(f.starts_with(b"MSG ") && f.ends_with(b"\n"));
        assert_eq!(f.iter().filter(|&&b| b == b'\n').count(), 1);
    }

    #[test]
    fn the_embedded_certificates_are_pem() {
        assert!(SERVER_PEM.contains("BEGIN CERTIFICATE"));
        assert!(CA_PEM.contains("BEGIN CERTIFICATE"));
        assert!(SERVER_KEY.contains("PRIVATE KEY"));
    }

    #[test]
    fn ratios_and_differences_are_per_repeat() {
        assert_eq!(ratios(&[2.0, 4.0], &[1.0, 1.0]), vec![0.5, 0.25]);
        assert!(ratios(&[0.0], &[1.0])[0].is_nan());
        assert_eq!(diffs(&[2.0, 4.0], &[3.0, 3.0]), vec![1.0, -1.0]);
    }
}
