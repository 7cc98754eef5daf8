//! Measurement 8, the cluster through Redis (issue 14): what the broker costs. Each engine,
//! three setups, fresh processes every repeat:
//!
//! ```text
//!   (a) publisher ─► hb-server (memory broker) ─► 10 receivers
//!   (b) publisher ─► hb-server ─► Redis (append script: XADD + PUBLISH) ─► same hb-server ─► 10 receivers
//!   (c) publisher ─► node A ─► Redis ─┬─► node A ─► 5 receivers
//!                                     └─► node B ─► 5 receivers
//! ```
//! On the same servers, first a fixed rate (latency stamped in the message, loss, duplicates
//! and order checked per sender sequence number), then an open loop (deliveries/s as in
//! measurement 6). Redis's CPU is read from /proc around both, so the report can say how
//! many messages one Redis core carries. Numbers are for the record: the issue sets no target.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use super::engines::Engine;
use super::measure::{due_by, mark, parse_mark, skipped_engine_row, Ctx, Kind};
use super::openloop::{
    connect_greeted, drain_replies, open_frame, publish_counting, Receivers, Rx, DRAIN_IDLE,
    SETUP_WAIT,
};
use super::peers::{on_path, Peer};
use super::plot;
use super::procinfo;
use super::stats::{self, Summary};
use super::tally::{self, OpenStats, ReceiverOutcome};
use super::verdict::{self, SeqTracker, Spread};
use super::{BenchError, Outcome};
use crate::net::loadgen::{LoadGen, State};

/// Receivers in every run (split evenly between the nodes in setup (c)).
const RECEIVERS: usize = 10;
/// After the fixed-rate window, how long messages in flight may take before the missing ones
/// count as lost (twice measurement 5's second: there is one more hop).
const FIXED_DRAIN: Duration = Duration::from_secs(2);
/// How long a node may take to log `broker connected` after it listens.
const LINK_WAIT: Duration = Duration::from_secs(10);
/// The fixed-rate sender's bound on bytes not yet handed to the kernel (as measurement 5's):
/// a node that stops reading cannot make hb-bench buffer without limit.
const FIXED_UNSENT_MAX: usize = 4 << 20;

fn failed(what: impl Into<String>) -> BenchError {
    BenchError::Measurement(what.into())
}

/// The three setups compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Setup {
    /// One node, `--broker memory` (the default): the baseline.
    Memory,
    /// One node on a Redis broker: the round trip through Redis alone.
    OneNode,
    /// Two nodes on the same Redis: the publisher on A, receivers on A and B.
    TwoNodes,
}

impl Setup {
    const ALL: [Setup; 3] = [Setup::Memory, Setup::OneNode, Setup::TwoNodes];

    fn label(self) -> &'static str {
        match self {
            Self::Memory => "(a) one node, memory broker",
            Self::OneNode => "(b) one node, Redis broker",
            Self::TwoNodes => "(c) two nodes, one Redis",
        }
    }

    fn letter(self) -> &'static str {
        match self {
            Self::Memory => "a",
            Self::OneNode => "b",
            Self::TwoNodes => "c",
        }
    }

    fn nodes(self) -> usize {
        match self {
            Self::TwoNodes => 2,
            _ => 1,
        }
    }

    fn redis(self) -> bool {
        self != Self::Memory
    }
}

/// Receivers per node: `n` split as evenly as possible, the first nodes taking the rest
/// (node A is the publisher's).
pub fn split(n: usize, nodes: usize) -> Vec<usize> {
    let nodes = nodes.max(1);
    (0..nodes)
        .map(|i| n / nodes + usize::from(i < n % nodes))
        .collect()
}

/// CPU milliseconds per 1,000 messages; NaN without messages or without a reading.
pub fn ms_per_1000(cpu_ns: Option<u64>, messages: u64) -> f64 {
    match cpu_ns {
        Some(ns) if messages > 0 => ns as f64 / 1e6 / (messages as f64 / 1000.0),
        _ => f64::NAN,
    }
}

/// The processes of one setup, stopped on drop: the nodes first (fields drop in order), so
/// none of them logs a lost broker on the way out.
struct Servers {
    nodes: Vec<Peer>,
    redis: Option<Peer>,
}

impl Servers {
    fn start(
        ctx: &Ctx,
        engine: Engine,
        setup: Setup,
        redis_bin: Option<&Path>,
    ) -> Result<Self, BenchError> {
        let redis = match (setup.redis(), redis_bin) {
            (false, _) => None,
            (true, Some(bin)) => Some(Peer::redis(bin)?),
            (true, None) => return Err(failed("setup needs redis-server, which is missing")),
        };
        let url = redis.as_ref().map(|r| format!("redis://{}", r.addr));
        let mut args = vec!["--mode", "chat", "--max-conns", "1000"];
        if let Some(u) = &url {
            args.extend(["--broker", u.as_str()]);
        }
        let mut nodes = Vec::with_capacity(setup.nodes());
        for _ in 0..setup.nodes() {
            let mut node = ctx.hb(engine, &args)?;
            if url.is_some() {
                wait_linked(&mut node)?;
            }
            nodes.push(node);
        }
        Ok(Self { nodes, redis })
    }

    /// CPU nanoseconds of redis-server so far (None: no Redis in this setup).
    fn redis_cpu_ns(&self) -> Option<u64> {
        self.redis.as_ref().and_then(|r| procinfo::cpu_ns(r.pid()))
    }

    fn check_alive(&mut self, during: &str) -> Result<(), BenchError> {
        for n in &mut self.nodes {
            n.check_alive(during)?;
        }
        if let Some(r) = &mut self.redis {
            r.check_alive(during)?;
        }
        Ok(())
    }
}

/// Waits for the node's `broker connected` (its link to Redis is up and subscribed), so no
/// message of the run is routed locally as during an outage.
fn wait_linked(node: &mut Peer) -> Result<(), BenchError> {
    let deadline = Instant::now() + LINK_WAIT;
    loop {
        let log = node.log();
        // Checked right after start: the 20-line tail still holds the first lines.
        if log
            .tail
            .iter()
            .chain(&log.stderr)
            .any(|l| l.contains("broker connected"))
        {
            return Ok(());
        }
        node.check_alive("waiting for `broker connected`")?;
        if Instant::now() > deadline {
            return Err(failed(format!(
                "{}: no `broker connected` within {LINK_WAIT:?}; last lines: {}",
                node.command,
                log.tail.join(" | ")
            )));
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// One fixed-rate run.
struct FixedRun {
    /// Delivery latency in µs over every receiver's every message.
    lat: Option<Summary>,
    sent: u64,
    /// Messages the schedule called for that the node's socket did not take.
    unsent: u64,
    lost: u64,
    duplicates: u64,
    reordered: u64,
    redis_ms_per_1000: f64,
}

fn fixed_run(srv: &mut Servers, rate: f64, window: Duration) -> Result<FixedRun, BenchError> {
    let mut lg = LoadGen::new().map_err(BenchError::io("creating the load generator"))?;
    let setup_deadline = Instant::now() + SETUP_WAIT;
    let mut rx_ids = Vec::with_capacity(RECEIVERS);
    for (node, k) in srv.nodes.iter().zip(split(RECEIVERS, srv.nodes.len())) {
        let (ids, rep) = lg
            .connect_many(node.addr, k, 16, true, setup_deadline, |_| {})
            .map_err(BenchError::io("connecting the receivers"))?;
        if rep.admitted < k {
            return Err(failed(format!(
                "only {} of {k} receivers connected to {}",
                rep.admitted, node.addr
            )));
        }
        rx_ids.extend(ids);
    }
    let sender = lg
        .connect(srv.nodes[0].addr, None, None)
        .map_err(BenchError::io("connecting the sender"))?;
    while lg.conn(sender).state == State::Connecting {
        lg.poll(Duration::from_millis(5))
            .map_err(BenchError::io("polling"))?;
        if Instant::now() > setup_deadline {
            return Err(failed("the sender's connect timed out"));
        }
    }
    for (i, &id) in rx_ids.iter().enumerate() {
        lg.send(id, format!("JOIN f{i}\n").as_bytes());
    }
    lg.send(sender, b"JOIN fpub\n");
    let index: HashMap<usize, usize> = rx_ids.iter().enumerate().map(|(k, &id)| (id, k)).collect();
    let frame = |seq: u64, ns: u64| format!("MSG {}\n", mark(seq, ns)).into_bytes();
    // Probe until every receiver hears the sender: joins taken (claimed in Redis) and node
    // B subscribed.
    let mut ready = vec![false; rx_ids.len()];
    let mut next_probe = Instant::now();
    while ready.iter().any(|r| !r) {
        if Instant::now() > setup_deadline {
            return Err(failed(format!(
                "only {} of {} receivers heard the sender",
                ready.iter().filter(|r| **r).count(),
                ready.len()
            )));
        }
        if Instant::now() >= next_probe {
            lg.send(sender, &frame(0, 0));
            next_probe = Instant::now() + Duration::from_millis(50);
        }
        for inc in lg
            .poll(Duration::from_millis(5))
            .map_err(BenchError::io("polling"))?
        {
            if let (Some(&k), Some((0, _))) = (index.get(&inc.id), parse_mark(&inc.line)) {
                ready[k] = true;
            }
        }
    }
    // Stray probes still on their way are seq 0, which the trackers ignore.
    let epoch = Instant::now();
    let ns = |t: Instant| t.saturating_duration_since(epoch).as_nanos() as u64;
    let mut got = vec![SeqTracker::default(); rx_ids.len()];
    let mut lat = Vec::new();
    let mut take = |lg: &mut LoadGen, got: &mut [SeqTracker], wait: Duration| {
        for inc in lg.poll(wait).map_err(BenchError::io("polling"))? {
            let Some(&k) = index.get(&inc.id) else {
                continue;
            };
            if let Some((s, t)) = parse_mark(&inc.line) {
                if got[k].record(s) {
                    lat.push(ns(inc.at).saturating_sub(t) as f64 / 1e3);
                }
            }
        }
        Ok::<_, BenchError>(())
    };
    let cpu0 = srv.redis_cpu_ns();
    let start = Instant::now();
    let end = start + window;
    let (mut seq, mut last_due) = (0u64, 0u64);
    while Instant::now() < end {
        // Message k is due at k / rate whatever the receivers do, and stamped with that
        // time: a node that falls behind shows it in the latency.
        let due = due_by(start.elapsed(), rate);
        last_due = due;
        while seq < due && lg.unsent(sender) < FIXED_UNSENT_MAX {
            seq += 1;
            let at = start + Duration::from_secs_f64(seq as f64 / rate);
            lg.send(sender, &frame(seq, ns(at)));
        }
        if lg.conn(sender).state == State::Closed {
            break;
        }
        take(&mut lg, &mut got, Duration::from_millis(1))?;
    }
    let unsent = last_due.saturating_sub(seq);
    let drain_until = Instant::now() + FIXED_DRAIN;
    while got.iter().any(|g| g.received() < seq) && Instant::now() < drain_until {
        take(&mut lg, &mut got, Duration::from_millis(5))?;
    }
    let cpu1 = srv.redis_cpu_ns();
    srv.check_alive("the fixed-rate run")?;
    lg.close_all();
    Ok(FixedRun {
        lat: stats::summarize(&mut lat),
        sent: seq,
        unsent,
        lost: got.iter().map(|g| g.lost(seq)).sum(),
        duplicates: got.iter().map(SeqTracker::duplicates).sum(),
        reordered: got.iter().map(SeqTracker::reordered).sum(),
        redis_ms_per_1000: ms_per_1000(cpu1.zip(cpu0).map(|(b, a)| b.saturating_sub(a)), seq),
    })
}

/// One open-loop run.
struct OpenRun {
    stats: OpenStats,
    /// Messages node A's socket accepted per second.
    publisher_rate: f64,
    publisher_error: Option<String>,
    redis_ms_per_1000: f64,
    /// Redis's CPU over the window and drain, in cores.
    redis_cores: f64,
}

fn open_run(
    srv: &mut Servers,
    engine: Engine,
    window: Duration,
    drain: Duration,
) -> Result<OpenRun, BenchError> {
    let kind = Kind::Hb(engine);
    let mut rxs = Receivers::new()?;
    let mut i = 0;
    for (node, k) in srv.nodes.iter().zip(split(RECEIVERS, srv.nodes.len())) {
        for _ in 0..k {
            let (s, first) = connect_greeted(node.addr, None, format!("JOIN o{i}\n").as_bytes())?;
            rxs.add(s, &first, true)?;
            i += 1;
        }
    }
    let publisher = connect_greeted(srv.nodes[0].addr, None, b"JOIN opub\n")?.0;
    publisher
        .set_read_timeout(None)
        .map_err(BenchError::io("setting a timeout"))?;
    let stop = Arc::new(AtomicBool::new(false));
    let replies = {
        let s = publisher
            .try_clone()
            .map_err(BenchError::io("cloning the publisher"))?;
        let stop = stop.clone();
        thread::spawn(move || drain_replies(s, stop))
    };
    let setup_end = Instant::now() + SETUP_WAIT;
    let mut probe = Vec::new();
    open_frame(kind, 0, &mut probe);
    let mut next_probe = Instant::now();
    while rxs.rxs.iter().any(|r| r.tally.probes() == 0) {
        if Instant::now() > setup_end {
            stop.store(true, Ordering::Relaxed);
            return Err(failed(format!(
                "open loop: only {} of {RECEIVERS} receivers heard the publisher",
                rxs.rxs.iter().filter(|r| r.tally.probes() > 0).count()
            )));
        }
        if Instant::now() >= next_probe {
            std::io::Write::write_all(&mut &publisher, &probe)
                .map_err(BenchError::io("probing"))?;
            next_probe = Instant::now() + Duration::from_millis(50);
        }
        rxs.pump(Duration::from_millis(5), false)?;
    }
    // Stray probes (seq 0) are counted apart by the tallies: no wait for them.
    let cpu0 = srv.redis_cpu_ns();
    let t0 = Instant::now();
    let (published, t1) = publish_counting(&mut rxs, &publisher, kind, t0, window)?;
    let sent = published.sent;
    // What is still in Redis or the nodes' queues arrives late, not lost (as measurement 6).
    let drain_end = Instant::now() + drain;
    let mut last_progress = (Instant::now(), 0u64);
    while Instant::now() < drain_end
        && last_progress.0.elapsed() < DRAIN_IDLE
        && rxs
            .rxs
            .iter()
            .any(|r| !r.ended() && r.tally.received() < sent)
    {
        rxs.pump(Duration::from_millis(5), false)?;
        let got: u64 = rxs.rxs.iter().map(|r| r.bytes).sum();
        if got != last_progress.1 {
            last_progress = (Instant::now(), got);
        }
    }
    let cpu1 = srv.redis_cpu_ns();
    let busy = t0.elapsed();
    stop.store(true, Ordering::Relaxed);
    let _ = publisher.shutdown(std::net::Shutdown::Both);
    let _ = replies.join();
    srv.check_alive("the open-loop run")?;
    let secs = (t1 - t0).as_secs_f64();
    let outcomes: Vec<ReceiverOutcome> = rxs.rxs.iter().map(Rx::outcome).collect();
    let cpu = cpu1.zip(cpu0).map(|(b, a)| b.saturating_sub(a));
    // Messages that went through Redis by the end of the drain: the most any receiver got
    // (a node may still hold many of those its socket accepted, not yet sent to Redis).
    let through = outcomes.iter().map(|o| o.received).max().unwrap_or(0);
    Ok(OpenRun {
        stats: tally::summarize(&outcomes, sent, Duration::from_secs_f64(secs)),
        publisher_rate: sent as f64 / secs.max(1e-9),
        publisher_error: published.error,
        redis_ms_per_1000: ms_per_1000(cpu, through),
        redis_cores: cpu.map_or(f64::NAN, |ns| {
            ns as f64 / 1e9 / busy.as_secs_f64().max(1e-9)
        }),
    })
}

/// Both phases of one setup in one repeat.
struct SetupRun {
    fixed: FixedRun,
    open: OpenRun,
}

/// The runs of one (engine, setup), one per repeat.
type Runs = HashMap<(Engine, Setup), Vec<SetupRun>>;

fn col(runs: &[SetupRun], f: impl Fn(&SetupRun) -> f64) -> Vec<f64> {
    runs.iter().map(f).collect()
}

/// Per-repeat ratios of `f` of `setup` to `f` of (a), repeats paired in order.
fn vs_a(runs: &Runs, engine: Engine, setup: Setup, f: impl Fn(&SetupRun) -> f64) -> Vec<f64> {
    match (
        runs.get(&(engine, setup)),
        runs.get(&(engine, Setup::Memory)),
    ) {
        (Some(x), Some(a)) => x.iter().zip(a).map(|(x, a)| f(x) / f(a)).collect(),
        _ => Vec::new(),
    }
}

fn median(v: &[f64]) -> f64 {
    Spread::of(v).map_or(f64::NAN, |s| s.median)
}

fn p99(r: &SetupRun) -> f64 {
    r.fixed.lat.map_or(f64::NAN, |l| l.p99)
}

fn p50(r: &SetupRun) -> f64 {
    r.fixed.lat.map_or(f64::NAN, |l| l.p50)
}

fn deliveries(r: &SetupRun) -> f64 {
    r.open.stats.deliveries_per_s
}

/// Measurement 8, the cluster through Redis: see the module docs.
pub fn through_redis(ctx: &Ctx) -> Result<Outcome, BenchError> {
    let p = ctx.plan;
    let title = "8. The cluster through Redis";
    eprintln!("== {title}");
    let redis_bin = on_path("redis-server");
    let redis_missing = redis_bin
        .is_none()
        .then(|| "`redis-server` not on PATH (`apt-get install redis-server`)".to_owned());
    if let Some(why) = &redis_missing {
        eprintln!("hb-bench: measurement 8, setups (b) and (c): SKIPPED: {why}");
    }
    let setups: Vec<Setup> = Setup::ALL
        .into_iter()
        .filter(|s| !s.redis() || redis_bin.is_some())
        .collect();
    let engines = ctx.engines.available();
    // A node that accepts faster than Redis takes messages drains for long: at most twice
    // the window (and the plan's open-loop drain), so --quick stays within its budget.
    let open_drain = p.open_drain.min(p.cluster_open_window * 2);
    let mut runs = Runs::new();
    for rep in 0..p.repeats {
        for &engine in &engines {
            for &setup in &setups {
                eprintln!(
                    "-- repeat {}/{}: {}, {}",
                    rep + 1,
                    p.repeats,
                    engine.label(),
                    setup.label()
                );
                let mut srv = Servers::start(ctx, engine, setup, redis_bin.as_deref())?;
                let fixed = fixed_run(&mut srv, p.cluster_rate, p.cluster_fixed_window)?;
                let open = open_run(&mut srv, engine, p.cluster_open_window, open_drain)?;
                drop(srv);
                runs.entry((engine, setup))
                    .or_default()
                    .push(SetupRun { fixed, open });
            }
        }
    }

    let secs = |d: Duration| d.as_secs_f64();
    let mut body = format!(
        "For the record (issue 14 sets no target): what the Redis broker costs. Every repeat \
         starts, for each engine and setup, a fresh `redis-server` (persistence off; setups \
         (b) and (c)) and fresh `hb-server --mode chat --max-conns 1000` processes, in (b) \
         and (c) with `--broker redis://127.0.0.1:PORT` (`--node-timeout` at its default, 3 \
         s); hb-bench waits for each node's `broker connected` and for every receiver to hear \
         a probe before any clock starts. {} repeat(s); cells are median (min..max) over the \
         repeats; *vs (a)* is the ratio to (a) of the same engine and repeat.\n\n\
         - **(a) one node, memory broker**: today's room in one process, the baseline.\n\
         - **(b) one node, Redis broker**: every room message goes to Redis (a Lua script \
         appends it to the room's stream and PUBLISHes it) and is delivered when it comes \
         back, to the sender's node too: this row is the cost of that round trip alone.\n\
         - **(c) two nodes, one Redis**: the publisher on node A, {} receivers on A and {} \
         on B; Redis fans each message out once per node (2 subscribers), each node to its \
         own members.\n\n\
         1 publisher and {RECEIVERS} receivers (plain `JOIN`s) in every run. hb-bench, Redis \
         and the nodes share the machine's cores, so open-loop figures in (b) and (c) are \
         partly bounded by that contention.\n\n\
         **Fixed rate.** The publisher sends numbered messages at {} msg/s for {} s, each \
         stamped with the time it was due (not when the socket took it: a node that falls \
         behind shows it in the latency). Latency = when a receiver read the message − that \
         time, over every receiver's every message. After the window, up to {} s for what is \
         in flight; then *lost* (messages sent that a receiver never got), *duplicates* and \
         *out of order* (a number after a higher one: per-sender sequence numbers, one \
         sender), summed over receivers, must all be 0 (otherwise the measurement fails). \
         *Redis CPU* = the CPU time of redis-server's threads (/proc/PID/task/*/schedstat, \
         nanoseconds) from the start of the window to the end of the drain, per 1,000 \
         messages published; it includes Redis's idle work and the nodes' liveness and name \
         refreshes (a few commands a second), so it is an upper bound on the cost per \
         message.\n\n\
         | engine | setup | messages sent | p50 µs | p99 µs | p99 vs (a) | lost | duplicates | out of order | Redis CPU ms per 1,000 msgs |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        p.repeats,
        split(RECEIVERS, 2)[0],
        split(RECEIVERS, 2)[1],
        p.cluster_rate,
        secs(p.cluster_fixed_window),
        secs(FIXED_DRAIN),
    );
    let mut failures = Vec::new();
    let skipped_setup = |body: &mut String, engine: Engine, setup: Setup, dashes: usize| {
        let why = redis_missing.as_deref().unwrap_or("no run");
        let _ = writeln!(
            body,
            "| {} | {} | **SKIPPED**: {why} |{}",
            engine.label(),
            setup.label(),
            " - |".repeat(dashes)
        );
    };
    for engine in Engine::ALL {
        if !engines.contains(&engine) {
            skipped_engine_row(&mut body, ctx, engine, 8);
            continue;
        }
        for setup in Setup::ALL {
            let Some(rs) = runs.get(&(engine, setup)) else {
                skipped_setup(&mut body, engine, setup, 7);
                continue;
            };
            let sum = |f: &dyn Fn(&FixedRun) -> u64| rs.iter().map(|r| f(&r.fixed)).sum::<u64>();
            let (lost, dups, reord) = (
                sum(&|f| f.lost),
                sum(&|f| f.duplicates),
                sum(&|f| f.reordered),
            );
            if lost + dups + reord > 0 {
                failures.push(format!(
                    "{}, {}: at the fixed rate {lost} lost, {dups} duplicated, {reord} out of \
                     order (over the repeats)",
                    engine.label(),
                    setup.label()
                ));
            }
            let unsent = sum(&|f| f.unsent);
            let _ = writeln!(
                body,
                "| {} | {} | {}{} | {} | {} | {} | {} | {} | {} | {} |",
                engine.label(),
                setup.label(),
                verdict::cell(&col(rs, |r| r.fixed.sent as f64), 0),
                if unsent > 0 {
                    format!(" ({unsent} due but not taken by the socket)")
                } else {
                    String::new()
                },
                verdict::cell(&col(rs, p50), 0),
                verdict::cell(&col(rs, p99), 0),
                if setup == Setup::Memory {
                    "1".to_owned()
                } else {
                    verdict::cell(&vs_a(&runs, engine, setup, p99), 2)
                },
                verdict::cell(&col(rs, |r| r.fixed.lost as f64), 0),
                verdict::cell(&col(rs, |r| r.fixed.duplicates as f64), 0),
                verdict::cell(&col(rs, |r| r.fixed.reordered as f64), 0),
                if setup.redis() {
                    verdict::cell(&col(rs, |r| r.fixed.redis_ms_per_1000), 1)
                } else {
                    "-".to_owned()
                },
            );
        }
    }

    let _ = write!(
        body,
        "\n**Open loop.** Then, on the same servers, {RECEIVERS} new receivers (same split) \
         and a new publisher on node A that writes 100-byte messages as fast as A accepts \
         them for {} s (as measurement 6), then up to {} s of drain. *deliveries/s* = \
         distinct messages the {RECEIVERS} receivers got while the publisher ran, summed; \
         *publisher msgs/s* = what A's socket accepted per second; *lost* and *late* as in \
         measurement 6 (late: not there yet when the drain ended, all above the receiver's \
         highest, so still queued). *Redis CPU* per 1,000 messages that came back through \
         Redis by the end of the drain (the most any receiver got: a node may still hold \
         messages its socket accepted), and in cores (CPU seconds / wall seconds, window and \
         drain).\n\n\
         | engine | setup | publisher msgs/s | deliveries/s | deliveries/s vs (a) | lost | late | duplicates + out of order | Redis CPU ms per 1,000 msgs | Redis CPU (cores) |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        secs(p.cluster_open_window),
        secs(open_drain),
    );
    let mut publisher_errors = Vec::new();
    for engine in Engine::ALL {
        if !engines.contains(&engine) {
            skipped_engine_row(&mut body, ctx, engine, 8);
            continue;
        }
        for setup in Setup::ALL {
            let Some(rs) = runs.get(&(engine, setup)) else {
                skipped_setup(&mut body, engine, setup, 7);
                continue;
            };
            let bad: u64 = rs.iter().map(bad_open).sum();
            if bad > 0 {
                failures.push(format!(
                    "{}, {}: open loop, {bad} duplicated or out of order",
                    engine.label(),
                    setup.label()
                ));
            }
            publisher_errors.extend(rs.iter().filter_map(|r| {
                r.open
                    .publisher_error
                    .as_ref()
                    .map(|e| format!("{}, {}: {e}", engine.label(), setup.label()))
            }));
            let _ = writeln!(
                body,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                engine.label(),
                setup.label(),
                verdict::cell(&col(rs, |r| r.open.publisher_rate), 0),
                verdict::cell(&col(rs, deliveries), 0),
                if setup == Setup::Memory {
                    "1".to_owned()
                } else {
                    verdict::cell(&vs_a(&runs, engine, setup, deliveries), 2)
                },
                verdict::cell(&col(rs, |r| r.open.stats.lost as f64), 0),
                verdict::cell(&col(rs, |r| r.open.stats.late as f64), 0),
                verdict::cell(&col(rs, |r| bad_open(r) as f64), 0),
                if setup.redis() {
                    verdict::cell(&col(rs, |r| r.open.redis_ms_per_1000), 1)
                } else {
                    "-".to_owned()
                },
                if setup.redis() {
                    verdict::cell(&col(rs, |r| r.open.redis_cores), 2)
                } else {
                    "-".to_owned()
                },
            );
        }
    }
    if !publisher_errors.is_empty() {
        let _ = writeln!(
            body,
            "\nThe publisher stopped early in: {}.",
            publisher_errors.join("; ")
        );
    }

    let _ = writeln!(body, "\nTargets: none set by the issue (for the record).\n");
    let mut numbers = Vec::new();
    let mut lat_bars = Vec::new();
    let mut rate_bars = Vec::new();
    for &engine in &engines {
        let tag = match engine {
            Engine::Threads => "",
            Engine::Events => "ev_",
        };
        let mut reading = Vec::new();
        for setup in Setup::ALL {
            let Some(rs) = runs.get(&(engine, setup)) else {
                continue;
            };
            let l = setup.letter();
            numbers.push((format!("{tag}{l}_p99_us"), median(&col(rs, p99))));
            numbers.push((
                format!("{tag}{l}_deliveries_per_s"),
                median(&col(rs, deliveries)),
            ));
            if setup.redis() {
                let cpu = median(&col(rs, |r| r.fixed.redis_ms_per_1000));
                numbers.push((format!("{tag}{l}_redis_ms_per_1000"), cpu));
                reading.push(format!(
                    "{} delivers {:.2}× (a)'s messages/s open loop, and its p99 at {} msg/s \
                     is {:.2}× (a)'s ({:.0} against {:.0} µs); Redis spent {:.1} ms of CPU \
                     per 1,000 messages at the fixed rate",
                    setup.label(),
                    median(&vs_a(&runs, engine, setup, deliveries)),
                    p.cluster_rate,
                    median(&vs_a(&runs, engine, setup, p99)),
                    median(&col(rs, p99)),
                    runs.get(&(engine, Setup::Memory))
                        .map_or(f64::NAN, |a| median(&col(a, p99))),
                    cpu,
                ));
            }
            let short = format!("{} {l}", engine.flag());
            lat_bars.push((short.clone(), median(&col(rs, p99))));
            rate_bars.push((short, median(&col(rs, deliveries))));
        }
        if !reading.is_empty() {
            let _ = writeln!(
                body,
                "**Reading, {}** (medians): {}.\n",
                engine.label(),
                reading.join("; ")
            );
        }
    }
    if redis_missing.is_none() {
        let _ = writeln!(
            body,
            "What this says for capacity (how far one Redis carries, and when to shard) is \
             worked out in bench/ANALYSIS.md, \"The cluster through Redis (issue 14)\".\n"
        );
    }
    let _ = writeln!(
        body,
        "![p99 latency at {} msg/s]({}/cluster-latency.svg)\n![open-loop deliveries/s]({}/cluster-throughput.svg)",
        p.cluster_rate, ctx.report.svg_link, ctx.report.svg_link
    );
    plot::bars(
        &ctx.report.svg_dir.join("cluster-latency.svg"),
        &format!(
            "p99 delivery latency at {} msg/s, 10 receivers (median of repeats)",
            p.cluster_rate
        ),
        "µs",
        &lat_bars,
    )?;
    plot::bars(
        &ctx.report.svg_dir.join("cluster-throughput.svg"),
        "open-loop deliveries/s, 1 publisher → 10 receivers (median of repeats)",
        "messages/s",
        &rate_bars,
    )?;
    ctx.report.section(title, &body)?;
    if !failures.is_empty() {
        return Err(failed(format!(
            "{title}: delivery check failed: {}",
            failures.join("; ")
        )));
    }
    Ok(Outcome {
        title: title.into(),
        numbers,
    })
}

/// Duplicates and out-of-order messages of an open-loop run.
fn bad_open(r: &SetupRun) -> u64 {
    r.open.stats.duplicates + r.open.stats.reordered
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receivers_split_evenly_node_a_first() {
        assert_eq!(split(10, 1), vec![10]);
        assert_eq!(split(10, 2), vec![5, 5]);
        assert_eq!(split(11, 2), vec![6, 5]);
        assert_eq!(split(10, 3), vec![4, 3, 3]);
        assert_eq!(split(3, 0), vec![3]);
    }

    #[test]
    fn cpu_per_1000_messages() {
        // 25 ms of CPU for 2,000 messages: 12.5 ms per 1,000.
        assert_eq!(ms_per_1000(Some(25_000_000), 2000), 12.5);
        assert!(ms_per_1000(None, 2000).is_nan());
        assert!(ms_per_1000(Some(1), 0).is_nan());
    }
}
