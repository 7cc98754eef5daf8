//! Measurement 7, history and resume (issue 13): what a member's resume costs, and what the
//! room's history costs in memory. Both engines, a fresh `hb-server --mode chat` for every run.
//!
//! ```text
//!   ann: JOIN ann SINCE -  ── WELCOME e:L TOKEN, SYNCED e:L 0 ──  closes
//!   bob: JOIN bob ── sees LEFT ann closed ── MSG 1..N ── HISTORY 1 → PUB e:L+N ... (all taken)
//!   ann: JOIN ann SINCE e:L TOKEN ──[timed]── WELCOME, PUB e:L+1 .. e:L+N, SYNCED e:L+N N
//! ```
//! The replay is checked message by message ([`ReplayCheck`]: each numbered message once, in
//! order, at consecutive offsets); a replay that fails the check fails the measurement. The
//! memory runs read the server's VmRSS before and after a sender fills the history. Numbers are
//! reported for the record: the issue sets no target for them.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use super::engines::Engine;
use super::measure::{parse_mark, skipped_engine_row, Ctx};
use super::peers::Peer;
use super::plot;
use super::procinfo;
use super::tally::{payload, PAYLOAD};
use super::verdict::{self, SeqTracker, Spread};
use super::{BenchError, Outcome};
use crate::core::wire::{Epoch, Pos, ServerMsg};

/// Longest any one step (a connect, a reply, the whole replay) may take before the run fails.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// The sender's name in every run (its length counts in the theoretical history size).
const SENDER: &str = "bob";
/// The resuming member's name.
const MEMBER: &str = "ann";
/// Bytes of the history's own slot per kept message (where its line ends in the log: see
/// `core::history`), on top of the line's bytes.
const SLOT_BYTES: u64 = 8;
/// The history settings of the run that keeps every message of the memory runs: 4 MiB holds
/// 10,000 lines of ~104 bytes with room to spare, so the count is the bound that applies.
const BIG_HISTORY_BYTES: &str = "4194304";

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> BenchError {
    let context = context.into();
    move |source| BenchError::Io { context, source }
}

fn failed(what: impl Into<String>) -> BenchError {
    BenchError::Measurement(what.into())
}

/// Checks one replay line by line: message k of `want` must be the sender's numbered message
/// k (its text carries `T<k>:0#`, see [`payload`]), at offset `since + k` of `epoch`, each
/// exactly once and in order, and the replay must end `SYNCED epoch:since+want want`. Lines
/// that are no room messages (`JOINED`, `LEFT`, heartbeats) may come in between and are
/// ignored; anything else is a problem. Pure, so it is unit-tested.
#[derive(Debug)]
pub struct ReplayCheck {
    epoch: Epoch,
    since: u64,
    want: u64,
    sender: String,
    seqs: SeqTracker,
    pubs: u64,
    next_offset: u64,
    offset_breaks: u64,
    foreign: u64,
    welcome: bool,
    synced: Option<Pos>,
    synced_count: u64,
    unexpected: Vec<String>,
}

impl ReplayCheck {
    /// A check of a replay that should hold `sender`'s messages 1..=`want`, after offset
    /// `since` of `epoch`.
    pub fn new(epoch: Epoch, since: u64, want: u64, sender: &str) -> Self {
        Self {
            epoch,
            since,
            want,
            sender: sender.to_owned(),
            seqs: SeqTracker::default(),
            pubs: 0,
            next_offset: since + 1,
            offset_breaks: 0,
            foreign: 0,
            welcome: false,
            synced: None,
            synced_count: 0,
            unexpected: Vec::new(),
        }
    }

    /// Feeds one line from the server (without its `\n`).
    pub fn line(&mut self, line: &[u8]) {
        if self.synced.is_some() {
            // Live lines after the replay are not part of it.
            return;
        }
        match ServerMsg::parse(line) {
            Ok(ServerMsg::Welcome { .. }) if !self.welcome && self.pubs == 0 => {
                self.welcome = true;
            }
            Ok(ServerMsg::Pub { pos, from, text }) => {
                self.pubs += 1;
                if pos.epoch != self.epoch || pos.offset != self.next_offset {
                    self.offset_breaks += 1;
                }
                self.next_offset = pos.offset + 1;
                match parse_mark(text.as_bytes()) {
                    Some((seq, _)) if from == self.sender && seq >= 1 && seq <= self.want => {
                        self.seqs.record(seq);
                    }
                    _ => self.foreign += 1,
                }
            }
            Ok(ServerMsg::Synced { last, count }) => {
                self.synced = Some(last);
                self.synced_count = count;
            }
            Ok(ServerMsg::Joined(_) | ServerMsg::Left { .. } | ServerMsg::Ping(_)) => {}
            _ => {
                if self.unexpected.len() < 3 {
                    self.unexpected
                        .push(String::from_utf8_lossy(&line[..line.len().min(80)]).into());
                }
            }
        }
    }

    /// Ok when the replay was exactly right; otherwise every way it was not, in one line.
    pub fn verdict(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        if !self.welcome {
            problems.push("no WELCOME before the replay".to_owned());
        }
        let missing = self.want.saturating_sub(self.seqs.received());
        if missing > 0 {
            problems.push(format!("{missing} of {} missing", self.want));
        }
        if self.seqs.duplicates() > 0 {
            problems.push(format!("{} duplicated", self.seqs.duplicates()));
        }
        if self.seqs.reordered() > 0 {
            problems.push(format!("{} out of order", self.seqs.reordered()));
        }
        if self.offset_breaks > 0 {
            problems.push(format!(
                "{} PUB lines not at the next offset of epoch {}",
                self.offset_breaks, self.epoch
            ));
        }
        if self.foreign > 0 {
            problems.push(format!(
                "{} PUB lines not from {}'s numbered messages",
                self.foreign, self.sender
            ));
        }
        let end = Pos {
            epoch: self.epoch.clone(),
            offset: self.since + self.want,
        };
        match &self.synced {
            None => problems.push("no SYNCED".to_owned()),
            Some(last) if *last != end || self.synced_count != self.want => problems.push(format!(
                "SYNCED {last} {} where SYNCED {end} {} was due",
                self.synced_count, self.want
            )),
            Some(_) => {}
        }
        if !self.unexpected.is_empty() {
            problems.push(format!("unexpected lines: {}", self.unexpected.join(" | ")));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }
}

/// The bytes a history of `n` messages of `from` with [`PAYLOAD`]-byte texts holds in theory:
/// the lines the ring counts (name, a separator, text) plus one slot per message.
pub fn theoretical_bytes(n: u64, from: &str) -> u64 {
    n * (from.len() as u64 + 1 + PAYLOAD as u64 + SLOT_BYTES)
}

/// One blocking chat connection, read line by line.
struct Client {
    r: BufReader<TcpStream>,
    line: Vec<u8>,
    who: &'static str,
}

impl Client {
    /// Connects and reads `HELLO`.
    fn connect(addr: SocketAddr, who: &'static str) -> Result<Self, BenchError> {
        let s = TcpStream::connect_timeout(&addr, STEP_TIMEOUT)
            .map_err(io_err(format!("{who}: connecting")))?;
        s.set_read_timeout(Some(STEP_TIMEOUT))
            .map_err(io_err("setting a read timeout"))?;
        // The timed JOIN line must leave at once, not wait for an ACK (Nagle).
        s.set_nodelay(true).map_err(io_err("setting TCP_NODELAY"))?;
        // 256 KiB: the replay of 1,000 lines (~130 KB) is read in a few system calls.
        let mut c = Self {
            r: BufReader::with_capacity(256 * 1024, s),
            line: Vec::with_capacity(256),
            who,
        };
        match c.next()? {
            ServerMsg::Hello { .. } => Ok(c),
            other => Err(failed(format!(
                "{who}: expected HELLO, got {}",
                other.encode().trim_end()
            ))),
        }
    }

    fn send(&mut self, bytes: &[u8]) -> Result<(), BenchError> {
        // `&TcpStream` writes while the reader keeps its buffer.
        let mut s: &TcpStream = self.r.get_ref();
        s.write_all(bytes)
            .map_err(io_err(format!("{}: sending", self.who)))
    }

    /// Reads one raw line (without `\n`) into `self.line`.
    fn read_raw(&mut self) -> Result<(), BenchError> {
        self.line.clear();
        let n = self
            .r
            .read_until(b'\n', &mut self.line)
            .map_err(io_err(format!("{}: reading", self.who)))?;
        if n == 0 {
            return Err(failed(format!(
                "{}: the server closed the connection",
                self.who
            )));
        }
        if self.line.last() == Some(&b'\n') {
            self.line.pop();
        }
        Ok(())
    }

    /// The next line, parsed; a server heartbeat is answered on the way (the runs are far
    /// shorter than the default idle time, but a slow machine must not turn into a timeout).
    fn next(&mut self) -> Result<ServerMsg, BenchError> {
        loop {
            self.read_raw()?;
            let msg =
                ServerMsg::parse(&self.line).map_err(|e| failed(format!("{}: {e}", self.who)))?;
            if let ServerMsg::Ping(t) = &msg {
                let pong = format!("PONG {t}\n");
                self.send(pong.as_bytes())?;
                continue;
            }
            return Ok(msg);
        }
    }

    /// Reads until `want` says a line is the one waited for; other lines are skipped.
    fn until<T>(
        &mut self,
        what: &str,
        mut want: impl FnMut(ServerMsg) -> Option<T>,
    ) -> Result<T, BenchError> {
        loop {
            let msg = self
                .next()
                .map_err(|e| failed(format!("waiting for {what}: {e}")))?;
            if let ServerMsg::End(r) = &msg {
                return Err(failed(format!(
                    "{}: END {r} while waiting for {what}",
                    self.who
                )));
            }
            if let Some(t) = want(msg) {
                return Ok(t);
            }
        }
    }

    /// Sends `n` numbered messages 1..=n of [`PAYLOAD`] bytes in one write, then `HISTORY 1`,
    /// and waits for its `SYNCED`: the room's stream then ends at the last of them, so the
    /// server has taken them all (a `PONG` could only say the session read them; the history
    /// answer comes from the hub itself, after it stored them). Returns the stream's end.
    fn fill(&mut self, n: u64) -> Result<Pos, BenchError> {
        let mut out = Vec::with_capacity(n as usize * (PAYLOAD + 5) + 16);
        for seq in 1..=n {
            out.extend_from_slice(b"MSG ");
            payload(seq, &mut out);
            out.push(b'\n');
        }
        out.extend_from_slice(b"HISTORY 1\n");
        self.send(&out)?;
        self.until("SYNCED after HISTORY 1", |m| match m {
            ServerMsg::Synced { last, .. } => Some(last),
            _ => None,
        })
    }
}

/// Joins `name` the legacy way (no positions) and makes sure the room has it: `WHO` is
/// answered by the hub, after the `JOIN` before it (a `PONG` comes from the session).
fn join_plain(addr: SocketAddr, name: &'static str) -> Result<Client, BenchError> {
    let mut c = Client::connect(addr, name)?;
    c.send(format!("JOIN {name}\nWHO\n").as_bytes())?;
    let members = c.until("MEMBERS", |m| match m {
        ServerMsg::Members(names) => Some(names),
        _ => None,
    })?;
    if !members.iter().any(|n| n == name) {
        return Err(failed(format!(
            "{name}: JOIN {name} was not taken (MEMBERS {})",
            members.join(" ")
        )));
    }
    Ok(c)
}

/// One resume run: the replay's time and its check.
struct ResumeRun {
    /// From writing `JOIN ann SINCE ...` to reading `SYNCED`.
    ms: f64,
    /// The check's verdict.
    check: Result<(), String>,
}

fn resume_run(ctx: &Ctx, engine: Engine, n: u64) -> Result<ResumeRun, BenchError> {
    let mut srv = ctx.hb(engine, &["--mode", "chat"])?;
    let addr = srv.addr;
    let mut ann = Client::connect(addr, MEMBER)?;
    ann.send(format!("JOIN {MEMBER} SINCE -\n").as_bytes())?;
    let (last, token) = ann.until("WELCOME", |m| match m {
        ServerMsg::Welcome { last, token, .. } => Some((last, token)),
        _ => None,
    })?;
    let seen = ann.until("SYNCED after WELCOME", |m| match m {
        ServerMsg::Synced { last, .. } => Some(last),
        _ => None,
    })?;
    if seen != last {
        return Err(failed(format!("ann: WELCOME said {last}, SYNCED {seen}")));
    }
    let mut bob = join_plain(addr, SENDER)?;
    // ann vanishes; bob sends only once the room knows she is gone, so every message is
    // one she missed (none reaches her live).
    drop(ann);
    bob.until("LEFT ann closed", |m| {
        matches!(&m, ServerMsg::Left { name, reason } if name == MEMBER && reason.to_string() == "closed")
            .then_some(())
    })?;
    let end = bob.fill(n)?;
    if end.epoch != seen.epoch || end.offset != seen.offset + n {
        return Err(failed(format!(
            "bob sent {n} messages after {seen}, but the stream ends at {end}"
        )));
    }
    let mut ann = Client::connect(addr, MEMBER)?;
    let join = format!("JOIN {MEMBER} SINCE {seen} {token}\n");
    let mut check = ReplayCheck::new(seen.epoch.clone(), seen.offset, n, SENDER);
    // Lines are only collected while the clock runs and checked after it stops, so the
    // check's parsing is not part of the time measured.
    let mut raw: Vec<u8> = Vec::with_capacity(n as usize * (PAYLOAD + 32) + 1024);
    let t0 = Instant::now();
    ann.send(join.as_bytes())?;
    let closed = loop {
        let start = raw.len();
        let got = ann
            .r
            .read_until(b'\n', &mut raw)
            .map_err(io_err("ann: reading the replay"))?;
        if got == 0 {
            break true;
        }
        let line = &raw[start..];
        if line.starts_with(b"SYNCED ") || line.starts_with(b"GAP ") || line.starts_with(b"END ") {
            break false;
        }
    };
    let ms = t0.elapsed().as_secs_f64() * 1e3;
    for line in raw.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        check.line(line);
    }
    if closed {
        // A GAP or an END is already among the check's unexpected lines; a bare close is not.
        check
            .unexpected
            .push("the server closed the connection before SYNCED".into());
    }
    srv.check_alive("the resume run")?;
    drop(ann);
    drop(bob);
    drop(srv);
    let check = check.verdict();
    Ok(ResumeRun {
        // A replay that failed the check replayed something else: its time is no replay time.
        ms: if check.is_ok() { ms } else { f64::NAN },
        check,
    })
}

/// The history settings of the memory runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HistoryConf {
    /// `--history 0`: no history, so the RSS delta is the rest of the server (the sender's
    /// buffers, allocator growth) and is the baseline for the other two.
    Off,
    /// The defaults (1,000 messages, 1 MiB).
    Default,
    /// `--history N --history-bytes 4194304`: every message of the run is kept.
    All,
}

impl HistoryConf {
    const ALL: [HistoryConf; 3] = [HistoryConf::Off, HistoryConf::Default, HistoryConf::All];

    fn args(self, n: &str) -> Vec<&str> {
        match self {
            Self::Off => vec!["--history", "0"],
            Self::Default => vec![],
            Self::All => vec!["--history", n, "--history-bytes", BIG_HISTORY_BYTES],
        }
    }

    fn label(self, n: u64) -> String {
        match self {
            Self::Off => "`--history 0` (baseline)".into(),
            Self::Default => "defaults (`--history 1000`, 1 MiB)".into(),
            Self::All => format!("`--history {n} --history-bytes {BIG_HISTORY_BYTES}`"),
        }
    }
}

/// One memory run.
#[derive(Debug, Clone, Copy)]
struct MemRun {
    rss0_kib: u64,
    rss1_kib: u64,
    kept: u64,
}

impl MemRun {
    fn delta_kib(&self) -> f64 {
        self.rss1_kib as f64 - self.rss0_kib as f64
    }

    /// KiB per 1,000 kept messages (NaN with none kept).
    fn per_1000(&self) -> f64 {
        if self.kept == 0 {
            f64::NAN
        } else {
            self.delta_kib() / (self.kept as f64 / 1000.0)
        }
    }
}

fn rss(srv: &mut Peer, during: &str) -> Result<u64, BenchError> {
    srv.check_alive(during)?;
    procinfo::sample(srv.pid())
        .map(|s| s.rss_kib)
        .ok_or_else(|| failed(format!("cannot read /proc of hb-server during {during}")))
}

fn memory_run(ctx: &Ctx, engine: Engine, conf: HistoryConf, n: u64) -> Result<MemRun, BenchError> {
    let n_arg = n.to_string();
    let mut args = vec!["--mode", "chat"];
    args.extend(conf.args(&n_arg));
    let mut srv = ctx.hb(engine, &args)?;
    let mut bob = join_plain(srv.addr, SENDER)?;
    // "0 messages": the server with its one member joined and a round trip done.
    let rss0 = rss(&mut srv, "the memory run")?;
    let end = bob.fill(n)?;
    if end.offset != n {
        return Err(failed(format!(
            "bob sent {n} messages, but the stream ends at {end}"
        )));
    }
    let rss1 = rss(&mut srv, "the memory run")?;
    // How many the history kept, asked after the RSS was read (the answer's own output
    // buffers would count otherwise).
    bob.send(format!("HISTORY {}\n", crate::core::wire::MAX_HISTORY_REQUEST).as_bytes())?;
    let kept = bob.until("SYNCED after HISTORY", |m| match m {
        ServerMsg::Synced { count, .. } => Some(count),
        _ => None,
    })?;
    drop(bob);
    drop(srv);
    Ok(MemRun {
        rss0_kib: rss0,
        rss1_kib: rss1,
        kept,
    })
}

/// Everything one engine produced over the repeats.
#[derive(Default)]
struct EngineRuns {
    resume: Vec<ResumeRun>,
    memory: Vec<(HistoryConf, MemRun)>,
}

impl EngineRuns {
    fn mem(&self, conf: HistoryConf, f: impl Fn(&MemRun) -> f64) -> Vec<f64> {
        self.memory
            .iter()
            .filter(|(c, _)| *c == conf)
            .map(|(_, r)| f(r))
            .collect()
    }

    /// KiB per 1,000 kept messages once the same repeat's `--history 0` delta is taken off:
    /// closer to the history's own cost, but the difference of two noisy readings.
    fn net_per_1000(&self, conf: HistoryConf) -> Vec<f64> {
        let base = self.mem(HistoryConf::Off, MemRun::delta_kib);
        self.mem(conf, |m| m.kept as f64)
            .iter()
            .zip(self.mem(conf, MemRun::delta_kib))
            .zip(base)
            .map(|((&kept, d), b)| net_per_1000(d, b, kept))
            .collect()
    }
}

/// `(delta − baseline) / (kept / 1,000)` KiB; NaN with nothing kept.
pub fn net_per_1000(delta_kib: f64, baseline_kib: f64, kept: f64) -> f64 {
    if kept <= 0.0 {
        f64::NAN
    } else {
        (delta_kib - baseline_kib) / (kept / 1000.0)
    }
}

/// 7. History and resume: replay time of the missed messages, history memory; both engines.
pub fn history_resume(ctx: &Ctx) -> Result<Outcome, BenchError> {
    let p = ctx.plan;
    let title = "7. History and resume";
    eprintln!("== {title}");
    let (missed, fill) = (p.resume_missed, p.history_fill);
    let engines = ctx.engines.available();
    let mut runs: Vec<(Engine, EngineRuns)> = engines
        .iter()
        .map(|&e| (e, EngineRuns::default()))
        .collect();
    for rep in 0..p.repeats {
        for (engine, r) in &mut runs {
            eprintln!("-- repeat {}/{}: {}", rep + 1, p.repeats, engine.label());
            let run = resume_run(ctx, *engine, missed)?;
            if let Err(why) = &run.check {
                eprintln!("hb-bench: {}: replay check FAILED: {why}", engine.label());
            }
            r.resume.push(run);
            for conf in HistoryConf::ALL {
                r.memory.push((conf, memory_run(ctx, *engine, conf, fill)?));
            }
        }
    }

    let theory = theoretical_bytes(1000, SENDER) as f64 / 1024.0;
    let mut body = format!(
        "For the record (issue 13 sets no target). Every run starts a fresh `hb-server --mode \
         chat` (otherwise at its defaults); {} repeat(s) per engine; cells are median \
         (min..max) over the repeats.\n\n\
         **Resume cost.** `{MEMBER}` joins with `JOIN {MEMBER} SINCE -` (keeping the epoch and \
         token of `WELCOME`) and closes her connection; once `{SENDER}` (a plain `JOIN`) has \
         read `LEFT {MEMBER} closed`, he sends {missed} numbered messages of {PAYLOAD} bytes, \
         then `HISTORY 1`, whose answer ends at the last of them (so the server has stored \
         all). `{MEMBER}` reconnects, and the time runs from writing `JOIN {MEMBER} SINCE \
         EPOCH:OFFSET TOKEN` (the position she last saw) to reading `SYNCED ... {missed}`; it \
         includes the server's `WELCOME` and hb-bench's reads on the same cores. The replay \
         is then checked: each of the {missed} messages exactly once, in order, at \
         consecutive offsets, and `SYNCED` with the right position and count (a failed \
         check fails the measurement).\n\n\
         | engine | missed messages | replay ms | replayed messages/s | replay check |\n\
         |---|---:|---:|---:|---|\n",
        p.repeats
    );
    let mut failures = Vec::new();
    let mut numbers = Vec::new();
    let mut bars = Vec::new();
    for engine in Engine::ALL {
        let Some((_, r)) = runs.iter().find(|(e, _)| *e == engine) else {
            skipped_engine_row(&mut body, ctx, engine, 3);
            continue;
        };
        let ms: Vec<f64> = r.resume.iter().map(|x| x.ms).collect();
        let rate: Vec<f64> = ms.iter().map(|m| missed as f64 / (m / 1e3)).collect();
        let bad: Vec<&String> = r
            .resume
            .iter()
            .filter_map(|x| x.check.as_ref().err())
            .collect();
        let check = if bad.is_empty() {
            format!("passed in {} of {}", r.resume.len(), r.resume.len())
        } else {
            failures.push(format!("{}: {}", engine.label(), bad[0]));
            format!(
                "**FAILED** in {} of {}: {}",
                bad.len(),
                r.resume.len(),
                bad[0]
            )
        };
        let _ = writeln!(
            body,
            "| {} | {missed} | {} | {} | {check} |",
            engine.label(),
            verdict::cell(&ms, 2),
            verdict::cell(&rate, 0),
        );
        let tag = match engine {
            Engine::Threads => "",
            Engine::Events => "ev_",
        };
        let med = |v: &[f64]| Spread::of(v).map_or(f64::NAN, |s| s.median);
        numbers.push((format!("{tag}resume_ms"), med(&ms)));
        numbers.push((format!("{tag}replay_msgs_per_s"), med(&rate)));
        numbers.push((
            format!("{tag}history_kib_per_1000"),
            med(&r.mem(HistoryConf::All, MemRun::per_1000)),
        ));
        numbers.push((
            format!("{tag}history_net_kib_per_1000"),
            med(&r.net_per_1000(HistoryConf::All)),
        ));
        bars.push((format!("{} resume ms", engine.flag()), med(&ms)));
    }

    let _ = write!(
        body,
        "\n**History memory.** The server's VmRSS (from /proc) with `{SENDER}` joined and no \
         message yet, and again after he sent {fill} messages of {PAYLOAD} bytes (each \
         confirmed stored, as above), under three history settings; *kept* is what `HISTORY` \
         then returned. KiB per 1,000 messages = RSS delta / (kept / 1,000). It is an **upper \
         bound**: the delta also holds allocator slack and whatever else grew while {fill} \
         lines went through the server (read buffers, the decoder); the `--history 0` row \
         shows that part alone, and *net* takes it off per repeat (a difference of two noisy \
         readings: with only 1,000 kept, the history's ~125 KiB is within the noise of the \
         rest and *net* can even come out negative). In theory a kept message costs its name, a separator and its \
         text plus a {SLOT_BYTES}-byte slot: ({} + 1 + {PAYLOAD} + {SLOT_BYTES}) B × 1,000 = \
         {theory:.1} KiB per 1,000 messages.\n\n\
         | engine | history | kept | RSS before KiB | RSS after KiB | delta KiB | KiB per 1,000 kept (upper bound) | net KiB per 1,000 kept | theory KiB per 1,000 |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|\n",
        SENDER.len()
    );
    for engine in Engine::ALL {
        let Some((_, r)) = runs.iter().find(|(e, _)| *e == engine) else {
            skipped_engine_row(&mut body, ctx, engine, 7);
            continue;
        };
        for conf in HistoryConf::ALL {
            let kept = r.mem(conf, |m| m.kept as f64);
            let _ = writeln!(
                body,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                engine.label(),
                conf.label(fill),
                verdict::cell(&kept, 0),
                verdict::cell(&r.mem(conf, |m| m.rss0_kib as f64), 0),
                verdict::cell(&r.mem(conf, |m| m.rss1_kib as f64), 0),
                verdict::cell(&r.mem(conf, MemRun::delta_kib), 0),
                verdict::cell(&r.mem(conf, MemRun::per_1000), 1),
                verdict::cell(&r.net_per_1000(conf), 1),
                if conf == HistoryConf::Off {
                    "-".to_owned()
                } else {
                    format!("{theory:.1}")
                },
            );
        }
    }
    let _ = writeln!(
        body,
        "\n![history and resume]({}/resume.svg)",
        ctx.report.svg_link
    );
    plot::bars(
        &ctx.report.svg_dir.join("resume.svg"),
        &format!("time to replay {missed} missed messages (median of repeats)"),
        "ms",
        &bars,
    )?;
    ctx.report.section(title, &body)?;
    if !failures.is_empty() {
        return Err(failed(format!(
            "{title}: the replay check failed: {}",
            failures.join("; ")
        )));
    }
    Ok(Outcome {
        title: title.into(),
        numbers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pub_line(offset: u64, from: &str, seq: u64) -> Vec<u8> {
        let mut l = format!("PUB e1:{offset} {from} ").into_bytes();
        payload(seq, &mut l);
        l
    }

    /// A replay of `seqs` (seq k at offset since + position) after `since` = 5, then SYNCED.
    fn replay(seqs: &[u64], synced: &str) -> ReplayCheck {
        let mut c = ReplayCheck::new(Epoch::new("e1").unwrap(), 5, 3, "bob");
        c.line(b"WELCOME ann e1:8 0123456789abcdef");
        for (i, &s) in seqs.iter().enumerate() {
            c.line(&pub_line(6 + i as u64, "bob", s));
        }
        c.line(synced.as_bytes());
        c
    }

    #[test]
    fn an_exact_replay_passes() {
        let c = replay(&[1, 2, 3], "SYNCED e1:8 3");
        assert_eq!(c.verdict(), Ok(()));
    }

    #[test]
    fn missing_duplicate_and_reordered_messages_fail() {
        let e = replay(&[1, 3], "SYNCED e1:8 3").verdict().unwrap_err();
        assert!(e.contains("1 of 3 missing"), "{e}");
        let e = replay(&[1, 2, 2, 3], "SYNCED e1:8 3")
            .verdict()
            .unwrap_err();
        assert!(e.contains("1 duplicated"), "{e}");
        let e = replay(&[1, 3, 2], "SYNCED e1:8 3").verdict().unwrap_err();
        assert!(
            e.contains("1 out of order") && !e.contains("missing"),
            "{e}"
        );
    }

    #[test]
    fn offsets_the_end_line_and_strangers_are_checked_too() {
        // Right messages at the wrong offsets (a hole in the stream).
        let mut c = ReplayCheck::new(Epoch::new("e1").unwrap(), 5, 2, "bob");
        c.line(b"WELCOME ann e1:8 0123456789abcdef");
        c.line(&pub_line(6, "bob", 1));
        c.line(&pub_line(8, "bob", 2));
        c.line(b"SYNCED e1:8 2");
        let e = c.verdict().unwrap_err();
        assert!(e.contains("1 PUB lines not at the next offset"), "{e}");
        assert!(
            e.contains("SYNCED e1:8 2 where SYNCED e1:7 2 was due"),
            "{e}"
        );
        // Another epoch, another sender, a GAP instead of the replay.
        let mut c = ReplayCheck::new(Epoch::new("e1").unwrap(), 0, 1, "bob");
        c.line(b"WELCOME ann e1:1 0123456789abcdef");
        c.line(&pub_line(1, "cy", 1));
        c.line(b"GAP too-old e1:1");
        let e = c.verdict().unwrap_err();
        assert!(e.contains("not from bob's numbered messages"), "{e}");
        assert!(e.contains("no SYNCED") && e.contains("GAP too-old"), "{e}");
        // No WELCOME at all.
        let mut c = ReplayCheck::new(Epoch::new("e1").unwrap(), 0, 0, "bob");
        c.line(b"SYNCED e1:0 0");
        assert_eq!(c.verdict().unwrap_err(), "no WELCOME before the replay");
    }

    #[test]
    fn room_news_in_between_is_ignored_and_live_lines_after_synced_too() {
        let mut c = ReplayCheck::new(Epoch::new("e1").unwrap(), 0, 1, "bob");
        c.line(b"WELCOME ann e1:1 0123456789abcdef");
        c.line(b"JOINED cy");
        c.line(&pub_line(1, "bob", 1));
        c.line(b"PING 1");
        c.line(b"SYNCED e1:1 1");
        c.line(&pub_line(2, "bob", 1));
        assert_eq!(c.verdict(), Ok(()));
    }

    #[test]
    fn net_memory_takes_the_baseline_off() {
        assert_eq!(net_per_1000(1684.0, 632.0, 10_000.0), 105.2);
        assert!(net_per_1000(632.0, 632.0, 0.0).is_nan());
    }

    #[test]
    fn theory_counts_lines_and_slots() {
        // 3 + 1 + 100 + 8 bytes a message.
        assert_eq!(theoretical_bytes(1000, "bob"), 112_000);
        assert_eq!(theoretical_bytes(0, "bob"), 0);
    }
}
