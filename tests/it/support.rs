//! Test support: spawn the binaries on port 0, talk the line wire with timestamps, and never
//! hang: every wait has a deadline, every child is killed on drop, and a watchdog aborts the
//! whole test binary if a test runs far past its budget.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};

/// Default wait for something that should happen promptly.
pub const PROMPT: Duration = Duration::from_secs(5);

/// Latency-sensitive and CPU-heavy tests run alone; the others share the machine. Every test
/// with a [`Watchdog`] holds the gate for reading; [`exclusive`] holds it for writing. On two
/// cores one test's floods or busy loops would otherwise show up as another's lateness.
static GATE: std::sync::RwLock<()> = std::sync::RwLock::new(());

thread_local! {
    /// Set while this test thread holds the gate for writing (its watchdog must not read it).
    static EXCLUSIVE_HERE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Holds the machine for one test; take it before the test's [`Watchdog`].
pub struct Exclusive(#[allow(dead_code)] std::sync::RwLockWriteGuard<'static, ()>);

impl Drop for Exclusive {
    fn drop(&mut self) {
        EXCLUSIVE_HERE.with(|e| e.set(false));
    }
}

/// Runs the calling test with no other watched test at the same time.
pub fn exclusive() -> Exclusive {
    let guard = GATE.write().unwrap_or_else(|p| p.into_inner());
    EXCLUSIVE_HERE.with(|e| e.set(true));
    Exclusive(guard)
}

/// Aborts the test process if the guard lives longer than `limit` (a hung test fails fast).
/// It also holds the gate for reading, taken before the clock starts, so time spent waiting
/// for an exclusive test to finish does not count against the limit.
pub struct Watchdog(
    crossbeam_channel::Sender<()>,
    #[allow(dead_code)] Option<std::sync::RwLockReadGuard<'static, ()>>,
);

impl Watchdog {
    pub fn new(name: &'static str, limit: Duration) -> Self {
        let shared = if EXCLUSIVE_HERE.with(|e| e.get()) {
            None
        } else {
            Some(GATE.read().unwrap_or_else(|p| p.into_inner()))
        };
        let (tx, rx) = crossbeam_channel::bounded::<()>(0);
        thread::spawn(move || {
            if let Err(RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
                eprintln!("watchdog: test {name} still running after {limit:?}; aborting");
                std::process::exit(101);
            }
        });
        Self(tx, shared)
    }
}

/// The server engine a test runs against (CONTRACT section 6). Tests of the line wire are
/// written once, as `fn name(engine: Engine)`, and [`engine_tests!`] runs each once per engine;
/// the server helpers ([`Server::start`], [`Server::start_limited`]) take the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// `hb-server`'s default: a data-exchange thread and a companion thread per client.
    Threads,
    /// `--engine events`: a few threads, non-blocking sockets, one timer structure.
    Events,
}

impl Engine {
    /// The command-line arguments that select it, for `hb-server` and `hb-scenarios`. None for
    /// the default engine, so the thread engine's tests run exactly the command lines they
    /// always ran.
    pub fn args(self) -> &'static [&'static str] {
        match self {
            Self::Threads => &[],
            Self::Events => &["--engine", "events"],
        }
    }

    /// `args` followed by [`Engine::args`].
    pub fn with<'a>(self, args: &[&'a str]) -> Vec<&'a str> {
        let mut all = args.to_vec();
        all.extend_from_slice(self.args());
        all
    }
}

/// Runs each named test once per engine. Each name is a function `fn NAME(engine: Engine)` in
/// the calling module (an ordinary function, so rustfmt and the compiler see its body as
/// usual); the macro adds a module of the same name (modules and functions live in different
/// namespaces) holding the two `#[test]`s, so the tests are `MODULE::NAME::threads` and
/// `MODULE::NAME::events`:
///
/// ```ignore
/// engine_tests!(relay);
/// fn relay(engine: Engine) {
///     let srv = Server::start(engine, &["--mode", "chat"]);
///     ...
/// }
/// ```
///
/// One engine's suite: `cargo test --test it ::events` (or `-- --skip ::events` for everything
/// else). A function taking an engine that no `engine_tests!` names is never called, so the
/// compiler's dead-code warning (an error under `clippy -D warnings`) catches a forgotten one.
macro_rules! engine_tests {
    ($($name:ident),+ $(,)?) => {$(
        mod $name {
            #[test]
            fn threads() {
                super::$name($crate::support::Engine::Threads)
            }
            #[test]
            fn events() {
                super::$name($crate::support::Engine::Events)
            }
        }
    )+};
}
pub(crate) use engine_tests;

pub fn bin(name: &str) -> PathBuf {
    match name {
        "hb-server" => PathBuf::from(env!("CARGO_BIN_EXE_hb-server")),
        "hb-client" => PathBuf::from(env!("CARGO_BIN_EXE_hb-client")),
        "hb-scenarios" => PathBuf::from(env!("CARGO_BIN_EXE_hb-scenarios")),
        other => panic!("unknown binary {other}"),
    }
}

/// A fresh empty directory under the system's temp dir, removed with everything in it when the
/// guard drops (panics included), so a test run leaves nothing behind in /tmp. It derefs to
/// [`Path`]; keep it alive as long as a process uses it as its working directory (bind it to a
/// variable, or hand it to [`Server::keep_dir`] / [`Proc::keep_dir`]).
pub fn temp_dir() -> TempDir {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "hb-it-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    TempDir(dir)
}

/// A temporary directory, removed on drop; see [`temp_dir`].
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// The directory's path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl std::ops::Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for TempDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// True when the suite runs under CI: `CI` is set to anything but ``, `false` or `0`
/// (`.ci/run` exports `CI=true`; so do the common CI services).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !matches!(v.trim(), "" | "false" | "0"))
}

/// A test that cannot run on this machine (missing rights or tools) calls this and returns.
///
/// Under CI ([`in_ci`]) a skip is a failure: it panics, because a check that did not run must
/// not show green there. Elsewhere it writes `SKIPPED TEST: WHY` straight to the process's
/// stderr: libtest's capture only catches the `print!`/`eprint!` macros, so this line shows in
/// plain `cargo test` output next to the test's `ok`, instead of being swallowed.
pub fn skip(test: &str, why: &str) {
    if in_ci() {
        panic!("{test} cannot run here: {why} (CI requires it; see docs/TESTING.md)");
    }
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "SKIPPED {test}: {why}");
    let _ = err.flush();
}

/// Lines of a child's stream, collected by a thread, with the instant each arrived.
pub struct Lines {
    rx: Receiver<(Instant, String)>,
    pub seen: Vec<(Instant, String)>,
}

impl Lines {
    pub fn spawn_from(r: impl Read + Send + 'static) -> Self {
        Self::spawn(r)
    }

    fn spawn(r: impl Read + Send + 'static) -> Self {
        let (tx, rx) = crossbeam_channel::unbounded();
        thread::spawn(move || {
            for line in BufReader::new(r).lines() {
                let Ok(line) = line else { break };
                if tx.send((Instant::now(), line)).is_err() {
                    break;
                }
            }
        });
        Self {
            rx,
            seen: Vec::new(),
        }
    }

    /// Waits for a line containing `needle`; panics with everything seen on timeout.
    pub fn wait_for(&mut self, needle: &str, within: Duration) -> (Instant, String) {
        self.find(needle, within).unwrap_or_else(|| {
            panic!(
                "no line containing {needle:?} within {within:?}; saw:\n{}",
                self.text()
            )
        })
    }

    /// The first line containing `needle`, waiting up to `within` for it; `None` when it did
    /// not come in time or the stream closed without it.
    pub fn find(&mut self, needle: &str, within: Duration) -> Option<(Instant, String)> {
        if let Some(hit) = self.seen.iter().find(|(_, l)| l.contains(needle)) {
            return Some(hit.clone());
        }
        let deadline = Instant::now() + within;
        while let Ok(item) = self.rx.recv_deadline(deadline) {
            self.seen.push(item.clone());
            if item.1.contains(needle) {
                return Some(item);
            }
        }
        None
    }

    /// Collects whatever arrives within `d`.
    pub fn settle(&mut self, d: Duration) {
        let deadline = Instant::now() + d;
        while let Ok(item) = self.rx.recv_deadline(deadline) {
            self.seen.push(item);
        }
    }

    /// Collects lines until the stream closes (or `within` passes).
    pub fn drain(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        while let Ok(item) = self.rx.recv_deadline(deadline) {
            self.seen.push(item);
        }
    }

    pub fn text(&self) -> String {
        self.seen.iter().map(|(_, l)| format!("{l}\n")).collect()
    }

    pub fn count(&self, needle: &str) -> usize {
        self.seen.iter().filter(|(_, l)| l.contains(needle)).count()
    }
}

/// A child process killed on drop.
pub struct Proc {
    pub child: Child,
    pub stdout: Lines,
    pub stderr: Lines,
    pub stdin: Option<ChildStdin>,
    /// The working directory, when the process owns it (removed after the process is gone).
    dir: Option<TempDir>,
}

impl Proc {
    pub fn spawn(name: &str, args: &[&str], dir: &Path, stdin: Option<&str>) -> Self {
        Self::spawn_env(name, args, &[], dir, stdin)
    }

    /// [`Proc::spawn`] with `env` added to the environment.
    pub fn spawn_env(
        name: &str,
        args: &[&str],
        env: &[(&str, &str)],
        dir: &Path,
        stdin: Option<&str>,
    ) -> Self {
        let mut cmd = Command::new(bin(name));
        cmd.args(args).envs(env.iter().copied());
        Self::from_command(cmd, dir, stdin)
    }

    /// [`Proc::spawn`] in a fresh [`temp_dir`] that lives as long as the process.
    pub fn spawn_in_temp(name: &str, args: &[&str], stdin: Option<&str>) -> Self {
        let dir = temp_dir();
        Self::spawn(name, args, &dir, stdin).keep_dir(dir)
    }

    /// Runs `script` with `sh -c` (for `ulimit` and the like before an `exec`).
    pub fn spawn_sh(script: &str, dir: &Path) -> Self {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", script]);
        Self::from_command(cmd, dir, None)
    }

    fn from_command(mut cmd: Command, dir: &Path, stdin: Option<&str>) -> Self {
        cmd.current_dir(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        let mut input = child.stdin.take();
        if let (Some(text), Some(w)) = (stdin, input.as_mut()) {
            w.write_all(text.as_bytes()).unwrap();
        }
        let stdout = Lines::spawn(child.stdout.take().unwrap());
        let stderr = Lines::spawn(child.stderr.take().unwrap());
        Self {
            child,
            stdout,
            stderr,
            stdin: input,
            dir: None,
        }
    }

    /// Keeps `dir` (usually the process's working directory) until this process is dropped.
    pub fn keep_dir(mut self, dir: TempDir) -> Self {
        self.dir = Some(dir);
        self
    }

    /// Closes the child's stdin (end of input).
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(ok.success(), "kill -{sig} failed");
    }

    /// Waits for the exit status, panicking after `within`.
    pub fn wait(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                self.stdout.drain(Duration::from_millis(200));
                self.stderr.drain(Duration::from_millis(200));
                return st;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "process did not exit within {within:?}\nstdout:\n{}\nstderr:\n{}",
                    self.stdout.text(),
                    self.stderr.text()
                );
            }
            thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Only now, with the process gone, may its directory go.
        self.dir = None;
    }
}

/// A running hb-server and its port.
pub struct Server {
    pub proc: Proc,
    pub port: u16,
    pub dir: PathBuf,
}

impl Server {
    /// `hb-server --defaults --port 0 [--engine events] ARGS...` in an empty directory.
    pub fn start(engine: Engine, args: &[&str]) -> Self {
        Self::start_env(engine, &[], args)
    }

    /// [`Server::start`] with `env` added to the server's environment.
    pub fn start_env(engine: Engine, env: &[(&str, &str)], args: &[&str]) -> Self {
        let mut all = engine.with(&["--defaults", "--port", "0"]);
        all.extend_from_slice(args);
        let dir = temp_dir();
        let proc = Proc::spawn_env("hb-server", &all, env, &dir, None);
        Self::started(proc, &dir).keep_dir(dir)
    }

    /// Starts hb-server with exactly `args`, waiting for `listening on`.
    pub fn start_raw(args: &[&str], dir: &Path, stdin: Option<&str>) -> Self {
        Self::started(Proc::spawn("hb-server", args, dir, stdin), dir)
    }

    /// `hb-server --defaults --port 0 [--engine events]` under the resource limit
    /// `ulimit_args` (e.g. `-n 32`).
    pub fn start_limited(engine: Engine, ulimit_args: &str) -> Self {
        let dir = temp_dir();
        let script = format!(
            "ulimit {ulimit_args} && exec {} --defaults --port 0 {}",
            bin("hb-server").display(),
            engine.args().join(" ")
        );
        Self::started(Proc::spawn_sh(&script, &dir), &dir).keep_dir(dir)
    }

    /// `hb-server --defaults --port 0` (the thread engine) run through `wrapper` (e.g.
    /// `setpriv ... prlimit ...`).
    pub fn start_wrapped(wrapper: &[&str]) -> Self {
        let dir = temp_dir();
        let server = bin("hb-server");
        let mut cmd = Command::new(wrapper[0]);
        cmd.args(&wrapper[1..])
            .arg(&server)
            .args(["--defaults", "--port", "0"]);
        Self::started(Proc::from_command(cmd, &dir, None), &dir).keep_dir(dir)
    }

    /// Keeps `dir` (the server's working directory) until the server is dropped.
    pub fn keep_dir(mut self, dir: TempDir) -> Self {
        self.proc.dir = Some(dir);
        self
    }

    fn started(mut proc: Proc, dir: &Path) -> Self {
        let Some((_, line)) = proc.stdout.find("listening on", PROMPT) else {
            // Usually a usage error (exit 2): say so, with the server's own words.
            let status = proc.child.try_wait().ok().flatten();
            proc.stderr.drain(ms(200));
            panic!(
                "hb-server never said `listening on` (exit status {status:?})\nstdout:\n{}\nstderr:\n{}",
                proc.stdout.text(),
                proc.stderr.text()
            );
        };
        // `... listening on ADDR:PORT` ends a text line; in a JSON line (`--log-format
        // json`) the port is followed by the closing quote.
        let after = line.rsplit(':').next().unwrap().trim();
        let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
        let port = digits.parse().unwrap();
        Self {
            proc,
            port,
            dir: dir.to_path_buf(),
        }
    }

    pub fn log(&mut self) -> &mut Lines {
        &mut self.proc.stdout
    }
}

/// A raw line-wire peer with timestamps relative to its connection.
pub struct Peer {
    pub stream: TcpStream,
    pub t0: Instant,
    rx: Receiver<Option<(Instant, String)>>,
    /// TLS peers: what to send goes to the thread that owns the TLS connection.
    out: Option<crossbeam_channel::Sender<Vec<u8>>>,
    /// The last lines received (for failure messages), newest last.
    pub received: std::collections::VecDeque<(Duration, String)>,
}

impl Peer {
    pub fn connect(port: u16) -> Self {
        Self::from_stream(TcpStream::connect(("127.0.0.1", port)).expect("connect"))
    }

    /// Wraps an already connected socket.
    pub fn from_stream(stream: TcpStream) -> Self {
        let t0 = Instant::now();
        let reader = stream.try_clone().unwrap();
        let (tx, rx) = crossbeam_channel::unbounded();
        thread::spawn(move || {
            let mut r = BufReader::new(reader);
            loop {
                let mut line = Vec::new();
                match r.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => {
                        let _ = tx.send(None);
                        return;
                    }
                    Ok(_) => {
                        let text = String::from_utf8_lossy(&line)
                            .trim_end_matches('\n')
                            .to_string();
                        if tx.send(Some((Instant::now(), text))).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Self {
            stream,
            t0,
            rx,
            out: None,
            received: Default::default(),
        }
    }

    /// A peer speaking TLS to a `--tls-cert` server, trusting the certificates in `ca` (the
    /// same lines and timestamps as a plain peer; `t0` is the TCP connect, before the
    /// handshake). One thread owns the TLS connection: it writes what [`Peer::send`] hands
    /// it and reads lines in between.
    pub fn connect_tls(port: u16, ca: &Path) -> Self {
        let t0 = Instant::now();
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let tls = tcp_heartbeat::net::tls::ClientTlsConfig::load(Some(ca))
            .expect("load the CA")
            .connect("127.0.0.1", &stream, Duration::from_secs(5))
            .expect("TLS handshake");
        let sock = stream.try_clone().unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(5)))
            .unwrap();
        let (tx, rx) = crossbeam_channel::unbounded();
        let (out, out_rx) = crossbeam_channel::unbounded::<Vec<u8>>();
        thread::spawn(move || {
            let mut s = rustls::StreamOwned::new(tls, sock);
            let mut partial = Vec::new();
            let mut buf = [0u8; 16 * 1024];
            loop {
                loop {
                    match out_rx.try_recv() {
                        Ok(bytes) => {
                            if s.write_all(&bytes).and_then(|()| s.flush()).is_err() {
                                let _ = tx.send(None);
                                return;
                            }
                        }
                        Err(crossbeam_channel::TryRecvError::Empty) => break,
                        Err(crossbeam_channel::TryRecvError::Disconnected) => return,
                    }
                }
                match s.read(&mut buf) {
                    Ok(0) => {
                        let _ = tx.send(None);
                        return;
                    }
                    Ok(n) => {
                        partial.extend_from_slice(&buf[..n]);
                        while let Some(i) = partial.iter().position(|&b| b == b'\n') {
                            let line: Vec<u8> = partial.drain(..=i).collect();
                            let text = String::from_utf8_lossy(&line[..i]).to_string();
                            if tx.send(Some((Instant::now(), text))).is_err() {
                                return;
                            }
                        }
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    Err(_) => {
                        let _ = tx.send(None);
                        return;
                    }
                }
            }
        });
        Self {
            stream,
            t0,
            rx,
            out: Some(out),
            received: Default::default(),
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        match &self.out {
            Some(out) => out.send(bytes.to_vec()).expect("send (TLS)"),
            None => self.stream.write_all(bytes).expect("send"),
        }
    }

    /// The next line and when it arrived (since connect); panics on timeout or close.
    pub fn line(&mut self, within: Duration) -> (Duration, String) {
        match self.rx.recv_timeout(within) {
            Ok(Some((at, l))) => {
                let item = (at - self.t0, l);
                if self.received.len() == 20 {
                    self.received.pop_front();
                }
                let short: String = item.1.chars().take(60).collect();
                self.received.push_back((item.0, short));
                item
            }
            Ok(None) => panic!(
                "connection closed; last lines received: {:?}",
                self.received
            ),
            Err(_) => panic!(
                "no line within {within:?}; last lines received: {:?}",
                self.received
            ),
        }
    }

    /// The next line and when it arrived (since connect), or why there is none; never panics.
    pub fn next(&mut self, within: Duration) -> Next {
        match self.rx.recv_timeout(within) {
            Ok(Some((at, l))) => Next::Line(at - self.t0, l),
            Ok(None) => Next::Closed,
            Err(_) => Next::Timeout,
        }
    }

    /// Asserts the next line is exactly `want`, returning its arrival time.
    pub fn expect(&mut self, want: &str, within: Duration) -> Duration {
        let (at, got) = self.line(within);
        assert_eq!(
            got, want,
            "at {at:?}; last lines received: {:?}",
            self.received
        );
        at
    }

    /// Asserts the server closes the connection (with nothing more) within `within`.
    pub fn expect_closed(&mut self, within: Duration) -> Duration {
        match self.rx.recv_timeout(within) {
            Ok(None) => self.t0.elapsed(),
            Ok(Some((_, l))) => panic!(
                "expected close, got line {l:?}; before: {:?}",
                self.received
            ),
            Err(_) => panic!("connection still open after {within:?}"),
        }
    }

    /// Asserts nothing arrives for `d`.
    pub fn expect_silence(&mut self, d: Duration) {
        match self.rx.recv_timeout(d) {
            Err(_) => {}
            Ok(x) => panic!("expected silence for {d:?}, got {x:?}"),
        }
    }

    pub fn shutdown_write(&self) {
        let _ = self.stream.shutdown(Shutdown::Write);
    }
}

/// What [`Peer::next`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// A line and when it arrived (since connect).
    Line(Duration, String),
    /// The connection closed (EOF or an error).
    Closed,
    /// Nothing within the wait.
    Timeout,
}

impl Drop for Peer {
    /// The reader thread holds a clone of the socket, so dropping alone would not close it.
    fn drop(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

/// A connection with a tiny receive buffer, so a peer that never reads cannot have the kernel
/// absorb megabytes on its behalf (loopback autotuning allows tens of MB).
/// A port nothing listens on right now (bound to 0, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

pub fn connect_small_rcvbuf(port: u16) -> TcpStream {
    use rustix::net::{sockopt, AddressFamily, SocketType};
    let fd = rustix::net::socket(AddressFamily::INET, SocketType::STREAM, None).unwrap();
    sockopt::set_socket_recv_buffer_size(&fd, 4096).unwrap();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    rustix::net::connect(&fd, &addr).unwrap();
    TcpStream::from(fd)
}

/// Asserts `got` is within [`want` - 5 ms, `want` + `slack`].
pub fn assert_near(what: &str, got: Duration, want: Duration, slack: Duration) {
    let early = Duration::from_millis(5);
    assert!(
        got + early >= want && got <= want + slack,
        "{what}: at {got:?}, expected {want:?} (+{slack:?})"
    );
}

pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Connects to a chat server, joins as `name` and waits until the server confirmed it (the
/// PONG after JOIN).
pub fn join(port: u16, name: &str) -> Peer {
    let mut p = Peer::connect(port);
    let (_, hello) = p.line(PROMPT);
    assert!(
        hello.starts_with("HELLO hb/1 ") && hello.ends_with(" mode=chat"),
        "{hello}"
    );
    p.send(format!("JOIN {name}\nPING joined\n").as_bytes());
    p.expect("PONG joined", PROMPT);
    p
}

/// A chat member that never reads: a tiny receive buffer (so the kernel cannot absorb
/// megabytes on its behalf) and a thread that keeps sending empty lines so heartbeats never
/// end it.
pub struct Stuck {
    stream: TcpStream,
    stop: crossbeam_channel::Sender<()>,
}

impl Stuck {
    /// Its address as the server logs it (`127.0.0.1:PORT`).
    pub fn addr(&self) -> std::net::SocketAddr {
        self.stream.local_addr().unwrap()
    }
}

impl Drop for Stuck {
    fn drop(&mut self) {
        let _ = self.stop.send(());
    }
}

/// Joins the chat room as `name`, reads up to the confirmation and never reads again.
pub fn join_stuck(port: u16, name: &str) -> Stuck {
    let mut stream = connect_small_rcvbuf(port);
    stream.set_read_timeout(Some(PROMPT)).unwrap();
    stream
        .write_all(format!("JOIN {name}\nPING joined\n").as_bytes())
        .unwrap();
    // Read only up to the confirmation; after that, never again.
    let mut seen = Vec::new();
    let mut byte = [0u8; 1];
    while !String::from_utf8_lossy(&seen).contains("PONG joined\n") {
        assert_eq!(stream.read(&mut byte).unwrap(), 1, "closed while joining");
        seen.push(byte[0]);
    }
    let mut w = stream.try_clone().unwrap();
    let (stop, stopped) = crossbeam_channel::bounded::<()>(1);
    thread::spawn(move || {
        while stopped.recv_timeout(ms(50)).is_err() {
            if w.write_all(b"\n").is_err() {
                break;
            }
        }
    });
    Stuck { stream, stop }
}

/// Raises this process's soft limit on open descriptors to at least `n` (children inherit it),
/// panicking with the reason when the hard limit does not allow it.
pub fn ensure_fd_limit(n: u64) {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut lim = getrlimit(Resource::Nofile);
    if lim.current.is_some_and(|c| c >= n) || lim.current.is_none() {
        return;
    }
    assert!(
        lim.maximum.is_none_or(|m| m >= n),
        "needs {n} open descriptors, but the hard limit is {:?} (raise `ulimit -Hn`)",
        lim.maximum
    );
    lim.current = Some(n);
    setrlimit(Resource::Nofile, lim).unwrap_or_else(|e| panic!("setrlimit NOFILE {n}: {e}"));
}

// ---------------------------------------------------------------------------------------------
// Network namespaces

/// Runs `ip ARGS...`; its stderr on failure.
pub fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A network namespace with a veth pair to the test's own namespace; removed on drop.
///
/// A "cable pull" ([`Netns::cut`]) is real: the namespace's end of the link goes down, so
/// packets both ways are dropped silently (no FIN, no RST, no ICMP). Addresses are link pairs
/// in the benchmarking range 198.18.0.0/15; a test that cannot make a namespace calls
/// [`skip`] (a failure under CI, a visible `SKIPPED` line elsewhere).
pub struct Netns {
    /// The namespace's name (`ip netns exec NAME ...`).
    pub name: String,
    host_if: String,
    ns_if: String,
    /// The test's (host) end of the link: servers listen here.
    pub host_ip: Ipv4Addr,
    /// The namespace's end of the link.
    pub ns_ip: Ipv4Addr,
}

impl Netns {
    /// Makes the namespace, or skips the test ([`skip`]: a failure under CI) and returns `None`.
    pub fn create(test: &str) -> Option<Self> {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        // Interface names are at most 15 bytes.
        let tag = format!("{}x{n}", pid % 1_000_000);
        // A /30 of 198.18.0.0/15 chosen from pid and counter, so parallel runs do not clash.
        let block = (pid.wrapping_mul(97).wrapping_add(n) % 32_768) * 4;
        let base = u32::from(Ipv4Addr::new(198, 18, 0, 0)) + block;
        let ns = Self {
            name: format!("hbf-{tag}"),
            host_if: format!("hbh{tag}"),
            ns_if: format!("hbn{tag}"),
            host_ip: Ipv4Addr::from(base + 1),
            ns_ip: Ipv4Addr::from(base + 2),
        };
        match ns.setup() {
            Ok(()) => Some(ns),
            Err(e) => {
                skip(test, &format!("needs root and network namespaces ({e})"));
                None
            }
        }
    }

    fn setup(&self) -> Result<(), String> {
        let host_cidr = format!("{}/30", self.host_ip);
        let ns_cidr = format!("{}/30", self.ns_ip);
        ip(&["netns", "add", &self.name])?;
        ip(&[
            "link",
            "add",
            &self.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &self.ns_if,
        ])?;
        ip(&["link", "set", &self.ns_if, "netns", &self.name])?;
        ip(&["addr", "add", &host_cidr, "dev", &self.host_if])?;
        ip(&["link", "set", &self.host_if, "up"])?;
        ip(&[
            "-n",
            &self.name,
            "addr",
            "add",
            &ns_cidr,
            "dev",
            &self.ns_if,
        ])?;
        ip(&["-n", &self.name, "link", "set", &self.ns_if, "up"])?;
        ip(&["-n", &self.name, "link", "set", "lo", "up"])?;
        Ok(())
    }

    /// Connects to `addr` from inside the namespace (the socket stays in it).
    pub fn connect(&self, addr: SocketAddr) -> TcpStream {
        let path = format!("/var/run/netns/{}", self.name);
        thread::spawn(move || {
            let f = std::fs::File::open(&path).expect("open netns");
            rustix::thread::move_into_link_name_space(
                std::os::fd::AsFd::as_fd(&f),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )
            .expect("setns");
            let deadline = Instant::now() + PROMPT;
            // The link may take a moment to carry traffic after it comes up.
            loop {
                match TcpStream::connect_timeout(&addr, ms(500)) {
                    Ok(s) => return s,
                    Err(e) if Instant::now() < deadline => {
                        eprintln!("connect from netns: {e}; retrying");
                        thread::sleep(ms(20));
                    }
                    Err(e) => panic!("connect from netns to {addr}: {e}"),
                }
            }
        })
        .join()
        .expect("connect thread")
    }

    /// Pulls the cable: the namespace's end goes down, so packets both ways are dropped
    /// silently (no FIN, no RST, no ICMP).
    pub fn cut(&self) {
        ip(&["-n", &self.name, "link", "set", &self.ns_if, "down"]).expect("cut the link");
    }

    /// Plugs the cable back in: the link comes up and the kernel restores its address's
    /// route (connections that were not ended meanwhile carry on).
    pub fn restore(&self) {
        ip(&["-n", &self.name, "link", "set", &self.ns_if, "up"]).expect("restore the link");
    }

    /// Runs one of the project's binaries inside the namespace (`ip netns exec`, which
    /// execs it: the child is the binary itself), in a fresh [`temp_dir`].
    pub fn spawn(&self, name: &str, args: &[&str], stdin: Option<&str>) -> Proc {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name])
            .arg(bin(name))
            .args(args);
        let dir = temp_dir();
        Proc::from_command(cmd, &dir, stdin).keep_dir(dir)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting one end of a veth pair deletes both; the namespace goes with its last user.
        let _ = ip(&["link", "del", &self.host_if]);
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// A `redis-server` of our own on a free port, in a temp dir, killed on drop (the cluster
/// tests' broker).
pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    dir: TempDir,
    /// `--requirepass`, if any (the test's own connections use it).
    password: Option<String>,
    /// More `redis-server` arguments (TLS ports and files).
    extra: Vec<String>,
}

impl Redis {
    /// Starts one, or skips the test (`None`; a failure under CI) when `redis-server` is
    /// not installed.
    pub fn start(test: &str) -> Option<Self> {
        Self::start_with(test, None, &[])
    }

    /// [`Redis::start`] with `--requirepass PASSWORD` and `extra` arguments.
    pub fn start_with(test: &str, password: Option<&str>, extra: &[&str]) -> Option<Self> {
        let mut r = Self {
            child: None,
            port: free_port(),
            dir: temp_dir(),
            password: password.map(str::to_owned),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        match r.restart() {
            Ok(()) => Some(r),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                skip(
                    test,
                    "redis-server is not installed (apt-get install redis-server)",
                );
                None
            }
            Err(e) => panic!("redis-server: {e}"),
        }
    }

    /// Starts the server (again, on the same port, empty: nothing is saved) and waits until
    /// it answers PING.
    pub fn restart(&mut self) -> std::io::Result<()> {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(self.password.iter().flat_map(|p| ["--requirepass", p]))
            .args(&self.extra)
            .arg("--dir")
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        self.child = Some(child);
        let deadline = Instant::now() + PROMPT;
        loop {
            let pong: Option<String> = self
                .client()
                .get_connection_with_timeout(Duration::from_millis(200))
                .and_then(|mut c| redis::cmd("PING").query(&mut c))
                .ok();
            if pong.as_deref() == Some("PONG") {
                return Ok(());
            }
            assert!(
                Instant::now() < deadline,
                "redis-server never answered PING"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: the links see their connections drop.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `redis://127.0.0.1:PORT` (`redis://:PASSWORD@127.0.0.1:PORT` with a password)
    pub fn url(&self) -> String {
        match &self.password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{}", self.port),
            None => format!("redis://127.0.0.1:{}", self.port),
        }
    }

    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).expect("url")
    }

    /// A connection for the test's own checks.
    pub fn con(&self) -> redis::Connection {
        let c = self
            .client()
            .get_connection_with_timeout(Duration::from_secs(1))
            .expect("connect to redis");
        c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        c
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A TCP forwarder standing in for a load balancer: every connection to [`Proxy::port`] is
/// relayed to the target port of the moment ([`Proxy::retarget`]); when either side closes,
/// the other is shut down too.
pub struct Proxy {
    pub port: u16,
    target: std::sync::Arc<std::sync::atomic::AtomicU16>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Proxy {
    pub fn start(target: u16) -> Self {
        use std::sync::atomic::{AtomicBool, AtomicU16};
        use std::sync::Arc;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let target = Arc::new(AtomicU16::new(target));
        let stop = Arc::new(AtomicBool::new(false));
        let (t, s) = (target.clone(), stop.clone());
        thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let Ok((client, _)) = listener.accept() else {
                    thread::sleep(Duration::from_millis(5));
                    continue;
                };
                let _ = client.set_nonblocking(false);
                let Ok(server) = TcpStream::connect(("127.0.0.1", t.load(Ordering::Relaxed)))
                else {
                    continue;
                };
                for (mut from, to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    thread::spawn(move || {
                        let mut to_w = to.try_clone().unwrap();
                        let _ = std::io::copy(&mut from, &mut to_w);
                        let _ = to.shutdown(Shutdown::Both);
                        let _ = from.shutdown(Shutdown::Both);
                    });
                }
            }
        });
        Self { port, target, stop }
    }

    /// Where new connections go from now on.
    pub fn retarget(&self, port: u16) {
        self.target.store(port, Ordering::Relaxed);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
