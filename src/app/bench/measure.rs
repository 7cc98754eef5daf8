//! The five measurements. Each starts its own peer processes, drives them with one
//! [`LoadGen`], prints and reports its numbers, draws its SVG, and stops everything it
//! started before returning (peers are killed on drop, even on an early error).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use super::engines::{Engine, EngineSupport};
use super::peers::{on_path, resp_command, Peer};
use super::plot::{self, Panel};
use super::procinfo::{self, Machine, Sample};
use super::stats::{self, Summary};
use super::trivial::TrivialEcho;
use super::verdict::{self, judge, judge_ceiling, Ceiling, Goal, SeqTracker, Spread};
use super::{BenchError, Outcome, Plan, Progress, Report};
use crate::net::loadgen::{Dialect, LoadGen, State};

/// What every measurement needs.
pub struct Ctx<'a> {
    /// Sizes and windows.
    pub plan: &'a Plan,
    /// The hb-server binary.
    pub server: &'a Path,
    /// Scratch directory (the servers' working directory).
    pub scratch: &'a Path,
    /// Where sections and SVGs go.
    pub report: &'a Report,
    /// This machine.
    pub machine: &'a Machine,
    /// The engines the hb-server binary has.
    pub engines: &'a EngineSupport,
}

impl Ctx<'_> {
    /// Starts hb-server with `engine` (`--engine NAME` when the binary has the flag) and
    /// `extra` flags.
    pub fn hb(&self, engine: Engine, extra: &[&str]) -> Result<Peer, BenchError> {
        self.hb_limited(engine, extra, None)
    }

    /// [`Ctx::hb`] with RLIMIT_NOFILE lowered to `nofile` (None: inherited).
    pub fn hb_limited(
        &self,
        engine: Engine,
        extra: &[&str],
        nofile: Option<u64>,
    ) -> Result<Peer, BenchError> {
        let mut args = self.engines.args(engine);
        args.extend_from_slice(extra);
        Peer::hb_server_limited(self.server, &args, self.scratch, nofile)
    }
}

/// Longest any connect phase may take.
const CONNECT_DEADLINE: Duration = Duration::from_secs(90);
/// Unresolved connects at once: below the server's listen backlog (1024).
const INFLIGHT: usize = 512;

fn lg_new() -> Result<LoadGen, BenchError> {
    LoadGen::new().map_err(BenchError::io("creating the load generator"))
}

fn sample(peer: &mut Peer, during: &str) -> Result<Sample, BenchError> {
    peer.check_alive(during)?;
    procinfo::sample(peer.pid()).ok_or_else(|| {
        BenchError::Measurement(format!(
            "cannot read /proc of {} during {during}",
            peer.name
        ))
    })
}

/// The server's baseline (no client yet): read once its RSS and thread count hold still
/// between two readings 10 ms apart, at most [`BASELINE_WAIT`] after it said it listens
/// (a fixed 200 ms sleep before; a server settles in one or two readings).
fn settled_sample(peer: &mut Peer, during: &str) -> Result<Sample, BenchError> {
    let until = Instant::now() + BASELINE_WAIT;
    let mut last = sample(peer, during)?;
    loop {
        std::thread::sleep(Duration::from_millis(10));
        let now = sample(peer, during)?;
        if (now.rss_kib, now.threads) == (last.rss_kib, last.threads) || Instant::now() >= until {
            return Ok(now);
        }
        last = now;
    }
}

/// Longest [`settled_sample`] waits for a server to settle.
const BASELINE_WAIT: Duration = Duration::from_millis(200);

fn io_err(context: &str) -> impl FnOnce(std::io::Error) -> BenchError + '_ {
    move |source| BenchError::Io {
        context: context.to_owned(),
        source,
    }
}

/// Opens `n` more connections with a progress bar.
fn connect(
    lg: &mut LoadGen,
    addr: SocketAddr,
    n: usize,
    hello: bool,
    label: &str,
) -> Result<(Vec<usize>, crate::net::loadgen::ConnectReport), BenchError> {
    let bar = Progress::new(label, n);
    let r = lg
        .connect_many(
            addr,
            n,
            // Third-party peers listen with small backlogs (ncat: 10); overflowing one costs
            // a one-second SYN retry per connection, so they get few connects at a time.
            if hello { INFLIGHT } else { 8 },
            hello,
            Instant::now() + CONNECT_DEADLINE,
            |d| bar.set(d),
        )
        .map_err(io_err("connecting"))?;
    bar.finish(&format!(
        "admitted {}, refused {}, failed {}",
        r.1.admitted, r.1.refused_full, r.1.failed
    ));
    Ok(r)
}

/// Opens `n` connections to a peer that greets a new client once it has accepted it (`ncat
/// --chat` announces it), a few at a time: the next few start when the last ones were
/// greeted. A connection counts as admitted when its greeting arrives. With only the TCP
/// handshake to go by, connects outran ncat's accept loop and overflowed its listen backlog
/// of 10, and each overflow cost a one-second SYN retry (1 → 100 took 7 to 8 s).
fn connect_greeted_peer(
    lg: &mut LoadGen,
    addr: SocketAddr,
    n: usize,
    label: &str,
) -> Result<(Vec<usize>, crate::net::loadgen::ConnectReport), BenchError> {
    const AT_ONCE: usize = 8;
    let bar = Progress::new(label, n);
    let deadline = Instant::now() + CONNECT_DEADLINE;
    let mut ids = Vec::with_capacity(n);
    let mut report = crate::net::loadgen::ConnectReport::default();
    while ids.len() < n {
        let k = AT_ONCE.min(n - ids.len());
        let (batch, _) = lg
            .connect_many(addr, k, k, false, deadline, |_| {})
            .map_err(io_err("connecting"))?;
        while Instant::now() < deadline
            && batch
                .iter()
                .any(|&id| lg.conn(id).rx_bytes == 0 && lg.conn(id).state != State::Closed)
        {
            lg.poll(Duration::from_millis(5))
                .map_err(io_err("polling"))?;
        }
        report.admitted += batch.iter().filter(|&&id| lg.conn(id).rx_bytes > 0).count();
        ids.extend(batch);
        bar.set(ids.len());
        if Instant::now() >= deadline {
            break;
        }
    }
    // Not greeted: refused at the TCP level, closed, or still waiting at the deadline.
    report.failed = n - report.admitted;
    bar.finish(&format!(
        "admitted {}, refused {}, failed {}",
        report.admitted, report.refused_full, report.failed
    ));
    Ok((ids, report))
}

/// Runs the loop for `d` with a progress bar (seconds).
fn idle(lg: &mut LoadGen, d: Duration, label: &str) -> Result<(), BenchError> {
    let secs = d.as_secs().max(1) as usize;
    let bar = Progress::new(label, secs);
    let end = Instant::now() + d;
    let step = d / secs as u32;
    for i in 0..secs {
        let left = end.saturating_duration_since(Instant::now());
        lg.idle_for(step.min(left)).map_err(io_err("polling"))?;
        bar.set(i + 1);
    }
    bar.finish("");
    Ok(())
}

fn held(lg: &LoadGen) -> usize {
    lg.conns()
        .iter()
        .filter(|c| c.state == State::Open && c.hello_at.is_some() && c.end.is_none())
        .count()
}

fn refused(lg: &LoadGen) -> usize {
    lg.conns()
        .iter()
        .filter(|c| matches!(&c.end, Some((r, _)) if r == "server-full"))
        .count()
}

/// Server threads the machine can spare: pid_max minus every task now running, minus a
/// margin, so the capacity run never starves other programs of process ids.
fn spare_threads(machine: &Machine) -> usize {
    let running = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| {
            l.split_whitespace()
                .nth(3)
                .and_then(|f| f.split_once('/'))
                .and_then(|(_, t)| t.parse::<u64>().ok())
        })
        .unwrap_or(0);
    machine.pid_max.saturating_sub(running + 4000) as usize
}

/// One row of measurement 1.
#[derive(Debug, Clone)]
struct HoldRow {
    tried: usize,
    held: usize,
    refused: usize,
    rss_kib: u64,
    per_conn_kib: f64,
    threads: u64,
    maps: u64,
    cpu_pct: f64,
    pongs: u64,
    wall_s: f64,
}

fn hold_row(
    lg: &mut LoadGen,
    srv: &mut Peer,
    base: &Sample,
    tried: usize,
    window: Duration,
    label: &str,
) -> Result<HoldRow, BenchError> {
    let s0 = sample(srv, label)?;
    let p0 = lg.total_pongs();
    let t0 = Instant::now();
    idle(lg, window, label)?;
    let wall = t0.elapsed();
    let s1 = sample(srv, label)?;
    let h = held(lg);
    Ok(HoldRow {
        tried,
        held: h,
        refused: refused(lg),
        rss_kib: s1.rss_kib,
        per_conn_kib: s1.rss_kib.saturating_sub(base.rss_kib) as f64 / h.max(1) as f64,
        threads: s1.threads,
        maps: s1.maps,
        cpu_pct: procinfo::cpu_fraction(&s0, &s1, wall) * 100.0,
        pongs: lg.total_pongs() - p0,
        wall_s: wall.as_secs_f64(),
    })
}

/// The table of measurement 1: one row per step, each cell median (min..max) over the
/// repeats that reached that step.
fn hold_table(steps: &[Vec<HoldRow>]) -> String {
    let mut t = String::from(
        "| tried | held | refused (END server-full) | RSS MiB | RSS/conn KiB | threads | maps | CPU % of one core | heartbeats answered |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for rs in steps.iter().filter(|rs| !rs.is_empty()) {
        let col = |f: fn(&HoldRow) -> f64, d: usize| -> String {
            verdict::cell(&rs.iter().map(f).collect::<Vec<_>>(), d)
        };
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            col(|r| r.tried as f64, 0),
            col(|r| r.held as f64, 0),
            col(|r| r.refused as f64, 0),
            col(|r| r.rss_kib as f64 / 1024.0, 1),
            col(|r| r.per_conn_kib, 1),
            col(|r| r.threads as f64, 0),
            col(|r| r.maps as f64, 0),
            col(|r| r.cpu_pct, 2),
            col(|r| r.pongs as f64, 0),
        );
    }
    t
}

/// `steps[i]` = row i of every repeat that has one.
fn by_step(runs: &[Vec<HoldRow>]) -> Vec<Vec<HoldRow>> {
    let n = runs.iter().map(Vec::len).max().unwrap_or(0);
    (0..n)
        .map(|i| runs.iter().filter_map(|r| r.get(i)).cloned().collect())
        .collect()
}

fn refusal_kinds(srv: &Peer) -> String {
    let log = srv.log();
    if log.refused.is_empty() {
        return "none".into();
    }
    log.refused
        .iter()
        .map(|(k, n)| format!("{n} × `{k}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether the server still answers a connection it holds: a `PING` from the client side
/// must come back as `PONG` (the connection's reader and writer are both alive).
fn still_serving(lg: &mut LoadGen, tag: &str) -> Result<bool, BenchError> {
    let Some(id) = lg
        .conns()
        .iter()
        .position(|c| c.state == State::Open && c.hello_at.is_some() && c.end.is_none())
    else {
        return Ok(false);
    };
    let token = format!("bench-{tag}");
    lg.send(id, format!("PING {token}\n").as_bytes());
    let want = format!("PONG {token}");
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        for inc in lg
            .poll(Duration::from_millis(10))
            .map_err(io_err("polling"))?
        {
            if inc.id == id && inc.line == want.as_bytes() {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// One repeat on stock limits: the steps, and the CPU window at the last one.
struct StockRun {
    rows: Vec<HoldRow>,
    refusals: String,
    cmd: String,
}

fn stock_run(ctx: &Ctx, engine: Engine, stock: &[String]) -> Result<StockRun, BenchError> {
    let p = ctx.plan;
    let args: Vec<&str> = stock.iter().map(String::as_str).collect();
    let mut srv = ctx.hb(engine, &args)?;
    let base = settled_sample(&mut srv, "baseline")?;
    let mut lg = lg_new()?;
    let mut rows = Vec::new();
    let mut tried = 0;
    let beat = secs_arg(p.hold_interval);
    // The event engine's stock run is for its memory per client, judged at the last step:
    // it holds only that one (the curve is the thread engine's story; time is short).
    let steps: &[usize] = match engine {
        Engine::Threads => &p.steps,
        Engine::Events => &p.steps[p.steps.len().saturating_sub(1)..],
    };
    for (i, &step) in steps.iter().enumerate() {
        let add = step.saturating_sub(tried);
        let began = Instant::now();
        connect(&mut lg, srv.addr, add, true, &format!("connect {step}"))?;
        tried = step;
        // The event engine's stock run is for memory (its heartbeat CPU is section 2's):
        // it does not wait for the round.
        if engine == Engine::Threads && i + 1 == steps.len() && p.hold < beat * 3 {
            // The CPU target is judged at the last step. A short window would see no
            // heartbeat at all (the first comes one idle period after a connection's last
            // byte): start it when the round of the connections just opened begins.
            let wait = (began + beat).saturating_duration_since(Instant::now());
            idle(&mut lg, wait, "wait for heartbeats")?;
        }
        rows.push(hold_row(
            &mut lg,
            &mut srv,
            &base,
            tried,
            p.hold,
            &format!("hold {step}"),
        )?);
    }
    srv.check_alive("the stock run")?;
    let refusals = refusal_kinds(&srv);
    let cmd = srv.command.clone();
    // The server first: its thousands of connections then close in the kernel, not one by
    // one through its threads as hb-bench closes them.
    srv.stop();
    lg.close_all();
    Ok(StockRun {
        rows,
        refusals,
        cmd,
    })
}

/// One repeat past the limit: `--max-conns` raised, connections pushed to `cap`.
struct RaisedRun {
    rows: Vec<HoldRow>,
    refusals: String,
    cmd: String,
    ceiling: Ceiling,
    /// The tried count it aborted on, and its last words.
    aborted: Option<(usize, String)>,
}

fn raised_run(
    ctx: &Ctx,
    engine: Engine,
    raised: &[String],
    targets: &[usize],
    nofile: Option<u64>,
) -> Result<RaisedRun, BenchError> {
    let p = ctx.plan;
    let args: Vec<&str> = raised.iter().map(String::as_str).collect();
    let mut srv = ctx.hb_limited(engine, &args, nofile)?;
    let base = settled_sample(&mut srv, "baseline")?;
    let mut lg = lg_new()?;
    let mut rows = Vec::new();
    let mut aborted = None;
    let window = (p.hold / 3).max(Duration::from_millis(300));
    for &target in targets {
        let add = target.saturating_sub(lg.conns().len());
        connect(&mut lg, srv.addr, add, true, &format!("connect {target}"))?;
        match hold_row(
            &mut lg,
            &mut srv,
            &base,
            target,
            window,
            &format!("hold {target}"),
        ) {
            Ok(row) => rows.push(row),
            // The server dying at capacity is a finding, not a reason to lose the numbers.
            Err(BenchError::Measurement(why)) if srv.exited().is_some() => {
                eprintln!("hb-bench: {why}");
                let log = srv.log();
                // The panic message and the runtime's last word say why.
                let words: Vec<String> = log
                    .stderr
                    .iter()
                    .filter(|l| {
                        l.contains("panicked") || l.contains("failed") || l.contains("fatal")
                    })
                    .take(3)
                    .cloned()
                    .collect();
                aborted = Some((target, words.join(" / ")));
                break;
            }
            Err(e) => return Err(e),
        }
    }
    let refused_n = refused(&lg);
    // "Kept serving": alive, and a connection it held still answers after the refusals.
    let kept_serving = aborted.is_none() && still_serving(&mut lg, "ceiling")?;
    let died = aborted.is_some() || srv.exited().is_some();
    let refusals = refusal_kinds(&srv);
    let cmd = srv.command.clone();
    srv.stop();
    lg.close_all();
    Ok(RaisedRun {
        rows,
        refusals,
        cmd,
        ceiling: Ceiling {
            refusals: refused_n,
            kept_serving,
            died,
        },
        aborted,
    })
}

/// Measurement 1, connections held: RSS per connection, threads, CPU in an idle window on
/// stock limits; then `--max-conns` raised and pushed past the ceiling, where the server
/// must refuse with a reason and keep serving.
pub fn connections(ctx: &Ctx) -> Result<Outcome, BenchError> {
    let p = ctx.plan;
    let title = "1. Connections held";
    eprintln!("== {title}");
    let mut stock: Vec<String> = vec![
        "--interval".into(),
        p.hold_interval.into(),
        "--count".into(),
        "1".into(),
        "--idle".into(),
        p.hold_interval.into(),
    ];
    let base_flags = stock.clone();
    if let Some(m) = p.stock_max_conns {
        stock.extend(["--max-conns".into(), m.to_string()]);
    }
    // Raised limits: as many as this machine can spare process ids for. Computed once, so
    // every repeat tries the same counts.
    let spare = spare_threads(ctx.machine) / 2;
    let fd_room = (ctx.machine.nofile as usize).saturating_sub(200);
    let cap = p.capacity_try.min(spare).min(fd_room);
    let max_conns = cap.saturating_sub(cap / 20).max(1);
    let raised: Vec<String> = base_flags
        .iter()
        .cloned()
        .chain(["--max-conns".into(), max_conns.to_string()])
        .collect();
    // Halfway between the stock step and the cap (a capacity curve), then the cap.
    let mut targets = Vec::new();
    if p.raised_midpoint {
        targets.push((p.steps.last().copied().unwrap_or(0).min(cap) + cap) / 2);
    }
    targets.push(cap);
    targets.dedup();

    let mut stock_runs = Vec::new();
    let mut raised_runs = Vec::new();
    // The event engine: the same stock steps (RSS per idle client), then a server whose
    // RLIMIT_NOFILE is lowered to `ev_nofile` (hb-bench holds one descriptor per client
    // too and has the same limit, so it cannot outnumber a server at the machine's limit)
    // and whose --max-conns is far above it: the descriptors run out first, and it must
    // hold clients up to the limit and refuse the rest with `END server-full`.
    let ev_stock_flags = base_flags.clone();
    let ev_nofile = p
        .events_nofile
        .min(ctx.machine.nofile.saturating_sub(2000).max(64));
    let ev_try = (ev_nofile + ev_nofile / 10) as usize;
    let ev_limited_flags: Vec<String> = base_flags
        .iter()
        .cloned()
        .chain(["--max-conns".into(), (ev_nofile * 2).to_string()])
        .collect();
    let mut ev_stock = Vec::new();
    let mut ev_limited = Vec::new();
    for rep in 0..p.repeats {
        eprintln!("-- repeat {}/{}: stock limits", rep + 1, p.repeats);
        stock_runs.push(stock_run(ctx, Engine::Threads, &stock)?);
        eprintln!("-- repeat {}/{}: raised --max-conns", rep + 1, p.repeats);
        raised_runs.push(raised_run(ctx, Engine::Threads, &raised, &targets, None)?);
        if ctx.engines.skip_reason(Engine::Events).is_none() {
            eprintln!("-- repeat {}/{}: events, stock limits", rep + 1, p.repeats);
            ev_stock.push(stock_run(ctx, Engine::Events, &ev_stock_flags)?);
            eprintln!(
                "-- repeat {}/{}: events, RLIMIT_NOFILE {ev_nofile}",
                rep + 1,
                p.repeats
            );
            ev_limited.push(raised_run(
                ctx,
                Engine::Events,
                &ev_limited_flags,
                &[ev_try],
                Some(ev_nofile),
            )?);
        }
    }
    let stock_steps = by_step(
        &stock_runs
            .iter()
            .map(|r| r.rows.clone())
            .collect::<Vec<_>>(),
    );
    let raised_steps = by_step(
        &raised_runs
            .iter()
            .map(|r| r.rows.clone())
            .collect::<Vec<_>>(),
    );
    let ceilings: Vec<Ceiling> = raised_runs.iter().map(|r| r.ceiling).collect();
    let min = verdict::MIN_REPEATS;

    // Per-repeat figures, judged on their median.
    let last_stock: Vec<&HoldRow> = stock_runs.iter().filter_map(|r| r.rows.last()).collect();
    let stock_held: Vec<f64> = last_stock.iter().map(|r| r.held as f64).collect();
    let per_conn: Vec<f64> = last_stock.iter().map(|r| r.per_conn_kib).collect();
    let raised_held: Vec<f64> = raised_runs
        .iter()
        .map(|r| r.rows.iter().map(|x| x.held).max().unwrap_or(0) as f64)
        .collect();
    let maps_per_conn: Vec<f64> = raised_runs
        .iter()
        .filter_map(|r| r.rows.last())
        .chain(last_stock.iter().copied())
        .map(|r| r.maps as f64 / r.held.max(1) as f64)
        .collect();
    let maps_med = Spread::of(&maps_per_conn).map_or(f64::NAN, |s| s.median);
    // Steady state at the stock interval I (hb-server's default, 10 s): each connection
    // costs one heartbeat per I. The window's CPU per heartbeat (idle cost included, so an
    // overestimate) times held / I. A plan whose heartbeats come faster (quick: every second,
    // so that a short run sees a round) is scaled to the stock interval the same way.
    let stock_s = crate::config::defaults::INTERVAL.as_secs_f64();
    let beat_s = secs_arg(p.hold_interval).as_secs_f64();
    let at8k: Vec<&HoldRow> = last_stock
        .iter()
        .copied()
        .filter(|r| r.held >= 7900)
        .collect();
    let cpu8k: Vec<f64> = at8k.iter().map(|r| r.cpu_pct).collect();
    let beats8k: Vec<f64> = at8k.iter().map(|r| r.pongs as f64).collect();
    let steady8k: Vec<f64> = at8k
        .iter()
        .map(|r| {
            if r.pongs == 0 {
                f64::NAN
            } else {
                r.cpu_pct / 100.0 * r.wall_s / r.pongs as f64 * r.held as f64 / stock_s * 100.0
            }
        })
        .collect();
    let aborted = raised_runs.iter().find_map(|r| r.aborted.clone());

    let svg = ctx.report.svg_dir.join("connections.svg");
    let pts = |steps: &[Vec<HoldRow>], f: fn(&HoldRow) -> f64| -> Vec<(f64, f64)> {
        steps
            .iter()
            .filter_map(|rs| {
                let x = Spread::of(&rs.iter().map(|r| r.held as f64).collect::<Vec<_>>())?;
                let y = Spread::of(&rs.iter().map(f).collect::<Vec<_>>())?;
                Some((x.median, y.median))
            })
            .collect()
    };
    plot::panels(
        &svg,
        &[
            Panel {
                title: "server RSS vs connections (median of repeats)".into(),
                x_label: "connections held".into(),
                y_label: "RSS MiB".into(),
                series: vec![
                    (
                        "stock".into(),
                        pts(&stock_steps, |r| r.rss_kib as f64 / 1024.0),
                    ),
                    (
                        "raised --max-conns".into(),
                        pts(&raised_steps, |r| r.rss_kib as f64 / 1024.0),
                    ),
                ],
            },
            Panel {
                title: "server CPU in the idle window".into(),
                x_label: "connections held".into(),
                y_label: "% of one core".into(),
                series: vec![
                    ("stock".into(), pts(&stock_steps, |r| r.cpu_pct)),
                    (
                        "raised --max-conns".into(),
                        pts(&raised_steps, |r| r.cpu_pct),
                    ),
                ],
            },
        ],
    )?;

    let joined = |v: Vec<String>| {
        let mut v = v;
        v.dedup();
        v.join("; ")
    };
    let stock_cmd = stock_runs.first().map_or(String::new(), |r| r.cmd.clone());
    let raised_cmd = raised_runs.first().map_or(String::new(), |r| r.cmd.clone());
    let stock_refusals = joined(stock_runs.iter().map(|r| r.refusals.clone()).collect());
    let raised_refusals = joined(
        raised_runs
            .iter()
            .enumerate()
            .map(|(i, r)| format!("repeat {}: {}", i + 1, r.refusals))
            .collect(),
    );
    let served: Vec<&str> = ceilings
        .iter()
        .map(|c| if c.kept_serving { "yes" } else { "**no**" })
        .collect();
    let mut body = String::new();
    let _ = writeln!(
        body,
        "Each connection answers heartbeats (one thread in hb-bench drives all of them). \
         Per step: more connections, then an idle window of {:.1} s in which the server's \
         CPU is measured (at the last stock step the window starts when the heartbeat round \
         of the connections just opened begins); RSS per connection is (RSS − RSS with no \
         client) / held. {} repeat(s), each with fresh servers; cells are median \
         (min..max).\n\n\
         **Stock limits** (`{stock_cmd}`):\n\n{}\nRefusals: {stock_refusals}.\n\n\
         **Raised `--max-conns`, pushed past the ceiling** (`{raised_cmd}`; attempts capped \
         at {cap} so the server's 2 threads per connection leave process ids for the rest of \
         the machine, and by `ulimit -n`; windows of {:.1} s):\n\n{}\nRefusals: \
         {raised_refusals}. A held connection still answered `PING` after the refusals, per \
         repeat: {}.\n{}",
        p.hold.as_secs_f64(),
        p.repeats,
        hold_table(&stock_steps),
        (p.hold / 3).max(Duration::from_millis(300)).as_secs_f64(),
        hold_table(&raised_steps),
        served.join(", "),
        match &aborted {
            Some((tried, why)) => format!(
                "\n**The server aborted (SIGABRT)** on the way to {tried} connections. Its \
                 stderr: `{}`. It had first refused newcomers with `END server-full` when \
                 thread creation failed, but a thread that does get created still needs two \
                 more maps for std's signal stack and its guard page; when vm.max_map_count \
                 is used up that setup fails inside the new thread, before any code of the \
                 server runs, and the runtime aborts the process.\n",
                why.replace('`', "'")
            ),
            None => String::new(),
        }
    );
    let _ = writeln!(
        body,
        "Targets:\n\n\
         - ≥ 8,000 concurrent monitored connections on stock limits (judged on the stock \
           run's last row only): held {} — {}. With `--max-conns` raised and the OS limits \
           stock: {} (not judged).\n\
         - ≤ 32 KiB RSS per connection (stock run, last row): {} KiB — {}.\n\
         - ≤ 1% of one core at 8k idle connections, interval {} s (stock run, last row): {}.\n\
         - Memory maps: {maps_med:.2} per connection (2 threads; each has its stack and \
           guard page, plus the signal stack Rust's std maps for stack-overflow reports and \
           its guard page) against vm.max_map_count {}: at most ~{:.0} connections \
           before thread creation fails; kernel.pid_max {} caps it near {} (2 threads each); \
           `ulimit -n` {} caps it near {}. Raising `sysctl vm.max_map_count` (and \
           `kernel.pid_max`, `ulimit -n`) moves the ceiling.\n\
         - At the ceiling, refusals with a reason (`END server-full`) and no abort, the server \
           still serving: refused {} per repeat — {}.\n\n\
         ![connections]({}/connections.svg)\n",
        verdict::cell(&stock_held, 0),
        judge(&stock_held, Goal::AtLeast(8000.0), min),
        verdict::cell(&raised_held, 0),
        verdict::cell(&per_conn, 1),
        judge(&per_conn, Goal::AtMost(32.0), min),
        stock_s,
        if cpu8k.is_empty() {
            "n/a: 8k connections were never held on stock limits — not judged".into()
        } else if steady8k.iter().all(|v| v.is_nan()) {
            format!(
                "{}% over the window, but no heartbeat fell in it — **not shown**",
                verdict::cell(&cpu8k, 2)
            )
        } else {
            format!(
                "{}% over the window, which saw {} heartbeats{}; per heartbeat that is a steady \
                 state of {}% of one core at one heartbeat per connection per {stock_s} s \
                 (count 1: one heartbeat per connection per interval; the default count 3 has \
                 idle 30 s and a third of the heartbeats) — {}",
                verdict::cell(&cpu8k, 2),
                verdict::cell(&beats8k, 0),
                if beat_s == stock_s {
                    String::new()
                } else {
                    format!(
                        " (this run's interval is {beat_s} s, so that a short window sees a \
                         round; the CPU per heartbeat is scaled to the stock {stock_s} s)"
                    )
                },
                verdict::cell(&steady8k, 2),
                judge(&steady8k, Goal::AtMost(1.0), min)
            )
        },
        ctx.machine.max_map_count,
        ctx.machine.max_map_count as f64 / maps_med.max(1.0),
        ctx.machine.pid_max,
        ctx.machine.pid_max / 2,
        ctx.machine.nofile,
        ctx.machine.nofile.saturating_sub(10),
        verdict::cell(
            &ceilings
                .iter()
                .map(|c| c.refusals as f64)
                .collect::<Vec<_>>(),
            0
        ),
        judge_ceiling(&ceilings, min),
        ctx.report.svg_link,
    );
    let mut numbers_ev: Vec<(String, f64)> = Vec::new();
    body.push_str(&events_connections(
        ctx,
        &ev_stock,
        &ev_limited,
        ev_nofile,
        ev_try,
    ));
    ctx.report.section(title, &body)?;
    let med = |v: &[f64]| Spread::of(v).map_or(f64::NAN, |s| s.median);
    // Only when the event engine ran (an empty set would give a NaN median).
    if let Some(last) = ev_stock
        .iter()
        .map(|r| r.rows.last())
        .collect::<Option<Vec<_>>>()
        .filter(|l| !l.is_empty())
    {
        numbers_ev.push((
            "ev_rss_per_conn_kib".into(),
            med(&last.iter().map(|r| r.per_conn_kib).collect::<Vec<_>>()),
        ));
    }
    if !ev_limited.is_empty() {
        numbers_ev.push((
            "ev_nofile_held".into(),
            med(&ev_limited
                .iter()
                .map(|r| r.rows.iter().map(|x| x.held).max().unwrap_or(0) as f64)
                .collect::<Vec<_>>()),
        ));
    }
    let max_held = stock_held
        .iter()
        .chain(&raised_held)
        .copied()
        .fold(0.0, f64::max);
    let mut numbers = vec![
        ("max_held".into(), max_held),
        ("rss_per_conn_kib".into(), med(&per_conn)),
    ];
    if !last_stock.is_empty() {
        numbers.push(("stock_held".into(), med(&stock_held)));
        numbers.push((
            "stock_cpu_pct".into(),
            med(&last_stock.iter().map(|r| r.cpu_pct).collect::<Vec<_>>()),
        ));
        numbers.push((
            "stock_threads".into(),
            med(&last_stock
                .iter()
                .map(|r| r.threads as f64)
                .collect::<Vec<_>>()),
        ));
    }
    numbers.push((
        "ceiling_refused".into(),
        med(&ceilings
            .iter()
            .map(|c| c.refusals as f64)
            .collect::<Vec<_>>()),
    ));
    if max_held == 0.0 {
        numbers.clear();
    }
    numbers.extend(numbers_ev);
    Ok(Outcome {
        title: title.into(),
        numbers,
    })
}

/// RSS per idle client the event engine may cost (issue 12).
const EVENTS_KIB_PER_CLIENT: f64 = 8.0;
/// Descriptors a server may keep for itself (listener, stdio, epoll, timers, log) and still
/// count as holding clients "up to RLIMIT_NOFILE".
const OWN_FDS: u64 = 64;

/// Section 1's part for the event engine: stock steps, the run at a lowered RLIMIT_NOFILE,
/// and the targets.
fn events_connections(
    ctx: &Ctx,
    stock: &[StockRun],
    limited: &[RaisedRun],
    nofile: u64,
    tried: usize,
) -> String {
    let min = verdict::MIN_REPEATS;
    let mut body = format!("\n### {}\n\n", Engine::Events.label());
    if let Some(why) = ctx.engines.skip_reason(Engine::Events) {
        let _ = writeln!(
            body,
            "**SKIPPED**: {why}. Targets (≤ {EVENTS_KIB_PER_CLIENT} KiB RSS per idle client; \
             holds clients up to RLIMIT_NOFILE on stock sysctls and refuses beyond it with \
             `END server-full`) — not judged."
        );
        return body;
    }
    let rows = by_step(&stock.iter().map(|r| r.rows.clone()).collect::<Vec<_>>());
    let lim_rows = by_step(&limited.iter().map(|r| r.rows.clone()).collect::<Vec<_>>());
    let per_conn: Vec<f64> = stock
        .iter()
        .filter_map(|r| r.rows.last())
        .map(|r| r.per_conn_kib)
        .collect();
    let held: Vec<f64> = limited
        .iter()
        .map(|r| r.rows.iter().map(|x| x.held).max().unwrap_or(0) as f64)
        .collect();
    let ceilings: Vec<Ceiling> = limited.iter().map(|r| r.ceiling).collect();
    let reasons = {
        let mut v: Vec<String> = limited
            .iter()
            .enumerate()
            .map(|(i, r)| format!("repeat {}: {}", i + 1, r.refusals))
            .collect();
        v.dedup();
        v.join("; ")
    };
    let aborted: Vec<String> = limited
        .iter()
        .filter_map(|r| r.aborted.as_ref())
        .map(|(t, why)| format!("on the way to {t}: `{}`", why.replace('`', "'")))
        .collect();
    let _ = writeln!(
        body,
        "**Stock limits** (`{}`):\n\n{}\n\
         **RLIMIT_NOFILE lowered to {nofile}, `--max-conns` above it** (`{}`; {tried} \
         clients tried; no sysctl changed):\n\n{}\nRefusals: {reasons}. A held connection \
         still answered `PING` after the refusals, per repeat: {}.{}\n\n\
         Targets ({}):\n\n\
         - ≤ {EVENTS_KIB_PER_CLIENT} KiB RSS per idle client (stock run, last row): {} KiB — {}\n\
         - holds clients up to RLIMIT_NOFILE ({nofile}, less {OWN_FDS} for its own \
           descriptors): held {} — {}\n\
         - refuses beyond it with `END server-full` and keeps serving: refused {} per repeat \
           — {}\n",
        stock.first().map_or("", |r| r.cmd.as_str()),
        hold_table(&rows),
        limited.first().map_or("", |r| r.cmd.as_str()),
        hold_table(&lim_rows),
        ceilings
            .iter()
            .map(|c| if c.kept_serving { "yes" } else { "**no**" })
            .collect::<Vec<_>>()
            .join(", "),
        if aborted.is_empty() {
            String::new()
        } else {
            format!(" **The server died** {}.", aborted.join("; "))
        },
        Engine::Events.label(),
        verdict::cell(&per_conn, 2),
        judge(&per_conn, Goal::AtMost(EVENTS_KIB_PER_CLIENT), min),
        verdict::cell(&held, 0),
        judge(
            &held,
            Goal::AtLeast(nofile.saturating_sub(OWN_FDS) as f64),
            min
        ),
        verdict::cell(
            &ceilings
                .iter()
                .map(|c| c.refusals as f64)
                .collect::<Vec<_>>(),
            0
        ),
        judge_ceiling(&ceilings, min),
    );
    body
}

/// Who serves the idle clients of measurement 2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Idler {
    /// hb-server with an engine: interval = idle, count 1.
    Hb(Engine),
    /// nats-server with `ping_interval` = the same interval.
    Nats,
}

impl Idler {
    const ALL: [Idler; 3] = [
        Idler::Hb(Engine::Threads),
        Idler::Hb(Engine::Events),
        Idler::Nats,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::Hb(e) => e.label(),
            Self::Nats => "nats-server",
        }
    }

    fn short(self) -> &'static str {
        match self {
            Self::Hb(Engine::Threads) => "hb",
            Self::Hb(Engine::Events) => "hb-ev",
            Self::Nats => "nats",
        }
    }
}

/// One run of measurement 2.
#[derive(Debug, Clone, Copy)]
struct HbRow {
    /// Connections admitted.
    admitted: usize,
    /// Heartbeats the clients received in the window.
    beats: u64,
    /// Heartbeats per second.
    per_s: f64,
    /// Server CPU, % of one core, over the window.
    cpu_pct: f64,
    /// Server CPU µs per heartbeat (NaN: no heartbeat in the window).
    us_per_beat: f64,
    /// Server threads at the end of the window.
    threads: u64,
}

/// Server CPU microseconds per heartbeat: CPU seconds over the window / heartbeats in it.
pub(super) fn us_per_beat(cpu_secs: f64, beats: u64) -> f64 {
    if beats == 0 {
        f64::NAN
    } else {
        cpu_secs * 1e6 / beats as f64
    }
}

fn heartbeat_run(ctx: &Ctx, who: Idler, n: usize) -> Result<(String, HbRow), BenchError> {
    let p = ctx.plan;
    let interval = secs_arg(p.hb_interval);
    let max = (n + 100).to_string();
    let mut srv = match who {
        Idler::Hb(engine) => ctx.hb(
            engine,
            &[
                "--interval",
                p.hb_interval,
                "--count",
                "1",
                "--idle",
                p.hb_interval,
                "--max-conns",
                &max,
            ],
        )?,
        Idler::Nats => {
            let bin = on_path("nats-server").ok_or_else(|| {
                BenchError::Measurement("nats-server is no longer on PATH".into())
            })?;
            Peer::nats(&bin, ctx.scratch, p.hb_interval)?
        }
    };
    let mut lg = lg_new()?;
    if who == Idler::Nats {
        lg.set_dialect(Dialect::Nats);
    }
    let began = Instant::now();
    let (_, rep) = connect(&mut lg, srv.addr, n, true, &format!("connect {n}"))?;
    // Steady state: every connection's first heartbeat is one interval after it connected;
    // from then on, a window of one interval sees one heartbeat per connection whatever the
    // phases (longer windows see proportionally more).
    let settle = (began + interval + interval / 4).saturating_duration_since(Instant::now());
    idle(
        &mut lg,
        settle.max(interval / 4),
        "wait for the heartbeat rounds",
    )?;
    let s0 = sample(&mut srv, "heartbeat window")?;
    let ns0 = procinfo::cpu_ns(srv.pid());
    let b0 = lg.total_pings();
    let t0 = Instant::now();
    idle(
        &mut lg,
        p.hb_window,
        &format!("{} heartbeats at {n}", who.name()),
    )?;
    let wall = t0.elapsed();
    let ns1 = procinfo::cpu_ns(srv.pid());
    let s1 = sample(&mut srv, "heartbeat window")?;
    let beats = lg.total_pings() - b0;
    // The scheduler's nanoseconds when it keeps them: a window costs an idle server only a
    // few clock ticks, and /proc/PID/stat's 10 ms ticks would make that ±10%.
    let cpu = match (ns0, ns1) {
        (Some(a), Some(b)) => b.saturating_sub(a) as f64 / 1e9,
        _ => procinfo::cpu_secs(&s0, &s1),
    };
    srv.stop();
    lg.close_all();
    Ok((
        srv.command.clone(),
        HbRow {
            admitted: rep.admitted,
            beats,
            per_s: beats as f64 / wall.as_secs_f64(),
            cpu_pct: cpu * 100.0 / wall.as_secs_f64(),
            us_per_beat: us_per_beat(cpu, beats),
            threads: s1.threads,
        },
    ))
}

/// Why a server of measurement 2 is not in the run; None when it can be started.
fn idler_missing(who: Idler, ctx: &Ctx) -> Option<String> {
    match who {
        Idler::Hb(engine) => ctx.engines.skip_reason(engine),
        Idler::Nats => on_path("nats-server")
            .is_none()
            .then(|| "`nats-server` not on PATH (`apt-get install nats-server`)".into()),
    }
}

/// Measurement 2, idle heartbeats: server CPU per heartbeat at many idle connections that
/// answer every heartbeat, both engines against nats-server (its PING/PONG) in one run.
pub fn heartbeat_overhead(ctx: &Ctx) -> Result<Outcome, BenchError> {
    let p = ctx.plan;
    let title = "2. Heartbeat overhead (idle clients, against nats-server)";
    eprintln!("== {title}");
    // (server, connections) -> one row per repeat.
    let mut rows: HashMap<(Idler, usize), Vec<HbRow>> = HashMap::new();
    let mut skipped: HashMap<Idler, String> = HashMap::new();
    let mut commands: HashMap<Idler, String> = HashMap::new();
    for rep in 0..p.repeats {
        eprintln!("-- repeat {}/{}", rep + 1, p.repeats);
        for who in Idler::ALL {
            if skipped.contains_key(&who) {
                continue;
            }
            if let Some(why) = idler_missing(who, ctx) {
                eprintln!("hb-bench: {}: SKIPPED: {why}", who.name());
                skipped.insert(who, why);
                continue;
            }
            for &n in &p.hb_conns {
                let (cmd, row) = match heartbeat_run(ctx, who, n) {
                    Ok(r) => r,
                    Err(e) if who == Idler::Nats => {
                        let why = format!("could not be measured: {e}");
                        eprintln!("hb-bench: nats-server: SKIPPED: {why}");
                        skipped.insert(who, why);
                        break;
                    }
                    Err(e) => return Err(e),
                };
                eprintln!(
                    "   {} at {n}: {} heartbeats, {:.2}% CPU, {:.1} µs per heartbeat, {} threads",
                    who.name(),
                    row.beats,
                    row.cpu_pct,
                    row.us_per_beat,
                    row.threads
                );
                commands.entry(who).or_insert(cmd);
                rows.entry((who, n)).or_default().push(row);
            }
        }
    }
    let mut body = format!(
        "Idle clients that answer every heartbeat at once: hb-server with idle = interval = \
         {0} s and count 1 (a `PING k` per connection per interval, answered `PONG k`), and \
         nats-server with `ping_interval: \"{0}s\"` (its clients send `CONNECT` after the \
         server's `INFO`, then answer each `PING` with `PONG`; `ping_max` is its default). \
         hb-bench waits until every connection's heartbeats have begun, then measures a \
         {1:.1} s window: CPU is the time the scheduler accounts to the server's threads over \
         the window (/proc/PID/task/*/schedstat, in nanoseconds: the 10 ms clock ticks of \
         /proc/PID/stat would round a window's few ticks by ±10%), divided by the heartbeats the clients received in it (so the window's idle cost is \
         included: an upper bound of the cost per heartbeat round). {2} repeat(s), each \
         with fresh servers; cells are median (min..max).\n\n",
        p.hb_interval,
        p.hb_window.as_secs_f64(),
        p.repeats
    );
    for who in Idler::ALL {
        match (commands.get(&who), skipped.get(&who)) {
            (Some(cmd), Some(why)) => {
                let _ = writeln!(body, "- {}: `{cmd}` (then SKIPPED: {why})", who.name());
            }
            (Some(cmd), None) => {
                let _ = writeln!(body, "- {}: `{cmd}`", who.name());
            }
            (None, Some(why)) => {
                let _ = writeln!(body, "- {}: **SKIPPED**: {why}", who.name());
            }
            (None, None) => {}
        }
    }
    body.push_str(
        "\n| server | connections | threads | heartbeats in the window | heartbeats/s | server CPU % of one core | CPU µs per heartbeat |\n\
         |---|---:|---:|---:|---:|---:|---:|\n",
    );
    for who in Idler::ALL {
        for &n in &p.hb_conns {
            let Some(rs) = rows.get(&(who, n)) else {
                let why = skipped.get(&who).map_or("no run", String::as_str);
                let _ = writeln!(
                    body,
                    "| {} | {n} | **SKIPPED**: {why} | - | - | - | - |",
                    who.name()
                );
                continue;
            };
            let col = |f: fn(&HbRow) -> f64| -> Vec<f64> { rs.iter().map(f).collect() };
            let admitted = col(|r| r.admitted as f64);
            let _ = writeln!(
                body,
                "| {} | {} | {} | {} | {} | {} | {} |",
                who.name(),
                if admitted.iter().all(|&a| a == n as f64) {
                    n.to_string()
                } else {
                    format!("{} admitted of {n}", verdict::cell(&admitted, 0))
                },
                verdict::cell(&col(|r| r.threads as f64), 0),
                verdict::cell(&col(|r| r.beats as f64), 0),
                verdict::cell(&col(|r| r.per_s), 0),
                verdict::cell(&col(|r| r.cpu_pct), 2),
                verdict::cell(&col(|r| r.us_per_beat), 1)
            );
        }
    }
    let min = verdict::MIN_REPEATS;
    let Some(&n) = p.hb_conns.last() else {
        return Err(BenchError::Usage("the plan has no heartbeat step".into()));
    };
    let us = |who: Idler| -> Option<Vec<f64>> {
        rows.get(&(who, n))
            .map(|rs| rs.iter().map(|r| r.us_per_beat).collect())
    };
    let _ = writeln!(
        body,
        "\nCPU per heartbeat round at {n} connections, against nats-server's CPU per ping \
         (per-repeat ratios, runs of one repeat seconds apart):\n"
    );
    for engine in Engine::ALL {
        let who = Idler::Hb(engine);
        let target = engine == Engine::Events;
        let goal = if target {
            " (target ≤ 0.5×"
        } else {
            " (for the record"
        };
        let line = match (us(who), us(Idler::Nats)) {
            (Some(a), Some(b)) => {
                let r: Vec<f64> = a.iter().zip(&b).map(|(a, b)| a / b).collect();
                format!(
                    "{} µs / {} µs = {}×{goal}{})",
                    verdict::cell(&a, 1),
                    verdict::cell(&b, 1),
                    verdict::cell(&r, 2),
                    if target {
                        format!(" — {}", judge(&r, Goal::AtMost(0.5), min))
                    } else {
                        String::new()
                    }
                )
            }
            (a, _) => {
                let why = skipped
                    .get(&who)
                    .or_else(|| skipped.get(&Idler::Nats))
                    .map_or("no run", String::as_str);
                format!(
                    "{}SKIPPED ({why}){goal}{})",
                    a.map_or(String::new(), |a| format!(
                        "{} µs; ratio ",
                        verdict::cell(&a, 1)
                    )),
                    if target { " — not judged" } else { "" }
                )
            }
        };
        let _ = writeln!(body, "- {}: {line}", engine.label());
    }
    let beat_s = secs_arg(p.hb_interval).as_secs_f64();
    if let Some(a) = us(Idler::Hb(Engine::Threads)) {
        let m = Spread::of(&a).map_or(f64::NAN, |s| s.median);
        let _ = writeln!(
            body,
            "\nAt {n} connections with one heartbeat per connection per {beat_s} s that is \
             about {:.2}% of one core for the thread engine (median µs per heartbeat × {n} / \
             {beat_s} s); with the default count 3 (idle 30 s) a third of the heartbeats.",
            m * n as f64 / beat_s / 1e4,
        );
    }
    let _ = writeln!(
        body,
        "\n![heartbeat overhead]({}/heartbeat.svg)",
        ctx.report.svg_link
    );
    let mut bars = Vec::new();
    for who in Idler::ALL {
        for &k in &p.hb_conns {
            if let Some(s) = rows
                .get(&(who, k))
                .and_then(|rs| Spread::of(&rs.iter().map(|r| r.us_per_beat).collect::<Vec<_>>()))
            {
                bars.push((format!("{} {k}", who.short()), s.median));
            }
        }
    }
    plot::bars(
        &ctx.report.svg_dir.join("heartbeat.svg"),
        "server CPU per heartbeat round (median of repeats)",
        "µs per heartbeat",
        &bars,
    )?;
    ctx.report.section(title, &body)?;
    let mut numbers = Vec::new();
    for who in Idler::ALL {
        if let Some(s) = us(who).and_then(|v| Spread::of(&v)) {
            numbers.push((format!("{}_cpu_us_per_heartbeat", who.short()), s.median));
        }
    }
    if let (Some(a), Some(b)) = (us(Idler::Hb(Engine::Threads)), us(Idler::Nats)) {
        let r: Vec<f64> = a.iter().zip(&b).map(|(a, b)| a / b).collect();
        if let Some(s) = Spread::of(&r) {
            numbers.push(("hb_vs_nats".into(), s.median));
        }
    }
    Ok(Outcome {
        title: title.into(),
        numbers,
    })
}

fn secs_arg(s: &str) -> Duration {
    Duration::from_secs_f64(s.parse().unwrap_or(1.0))
}

/// One repeat of measurement 3.
struct DetectionRun {
    admitted: usize,
    timeouts: usize,
    missing: usize,
    /// Sorted close time minus deadline, ms, of every ghost closed.
    late_ms: Vec<f64>,
    summary: Option<Summary>,
}

fn detection_run(
    ctx: &Ctx,
    engine: Engine,
    interval: Duration,
    idle: Duration,
) -> Result<DetectionRun, BenchError> {
    let p = ctx.plan;
    let idle_arg = format!("{}", idle.as_secs_f64());
    let count = p.ghost_count.to_string();
    let max = (p.ghosts + 100).to_string();
    let mut srv = ctx.hb(
        engine,
        &[
            "--interval",
            p.ghost_interval,
            "--count",
            &count,
            "--idle",
            &idle_arg,
            "--max-conns",
            &max,
        ],
    )?;
    let mut lg = lg_new()?;
    let (ids, rep) = connect(&mut lg, srv.addr, p.ghosts, true, "connect ghosts")?;
    let budget = idle + interval * p.ghost_count;
    // Every ghost sends one line (its last sign of life) and then never answers again.
    let mut expected = HashMap::new();
    for &id in &ids {
        if lg.conn(id).hello_at.is_none() {
            continue;
        }
        lg.set_answering(id, false);
        lg.set_park_on_end(id, true);
        lg.send(id, b"MSG last words\n");
        expected.insert(id, Instant::now() + budget);
    }
    let deadline = Instant::now() + budget + Duration::from_secs(5);
    let bar = Progress::new("ghosts closed", expected.len());
    loop {
        lg.poll(Duration::from_millis(5))
            .map_err(io_err("polling"))?;
        let done = expected
            .keys()
            .filter(|&&id| lg.conn(id).end.is_some() || lg.conn(id).state == State::Closed)
            .count();
        bar.set(done);
        if done == expected.len() || Instant::now() > deadline {
            break;
        }
    }
    bar.finish("");
    srv.check_alive("detection")?;
    let mut late_ms = Vec::new();
    let mut timeouts = 0;
    for (&id, &exp) in &expected {
        let c = lg.conn(id);
        let at = c.end.as_ref().map(|e| e.1).or(c.closed_at);
        if matches!(&c.end, Some((r, _)) if r == "heartbeat-timeout") {
            timeouts += 1;
        }
        if let Some(at) = at {
            let ms = if at >= exp {
                (at - exp).as_secs_f64() * 1e3
            } else {
                -(exp - at).as_secs_f64() * 1e3
            };
            late_ms.push(ms);
        }
    }
    drop(srv);
    lg.close_all();
    let summary = stats::summarize(&mut late_ms);
    Ok(DetectionRun {
        admitted: rep.admitted,
        timeouts,
        missing: expected.len() - late_ms.len(),
        late_ms,
        summary,
    })
}

/// Writes the report row of an engine that did not run (`| LABEL | **SKIPPED**: why | - |
/// ...` with `dashes` empty cells after it) and returns why it did not.
pub fn skipped_engine_row(body: &mut String, ctx: &Ctx, engine: Engine, dashes: usize) -> String {
    let why = ctx
        .engines
        .skip_reason(engine)
        .unwrap_or_else(|| "no run".into());
    let _ = writeln!(
        body,
        "| {} | **SKIPPED**: {why} |{}",
        engine.label(),
        " - |".repeat(dashes)
    );
    why
}

/// Ghost-detection targets (p99, max ms after the deadline) of an engine: issue 10's for
/// the thread engine, issue 12's for the event engine.
fn detection_goals(engine: Engine) -> (f64, f64) {
    match engine {
        Engine::Threads => (50.0, 100.0),
        Engine::Events => (10.0, 20.0),
    }
}

/// 3. Ghost detection latency: close time minus the expected deadline, both engines.
pub fn detection(ctx: &Ctx) -> Result<Outcome, BenchError> {
    let p = ctx.plan;
    let title = "3. Ghost detection latency";
    eprintln!("== {title}");
    let interval = secs_arg(p.ghost_interval);
    let idle = interval * p.ghost_count;
    let budget = idle + interval * p.ghost_count;
    let engines = ctx.engines.available();
    let mut runs: HashMap<Engine, Vec<DetectionRun>> = HashMap::new();
    for rep in 0..p.repeats {
        for &engine in &engines {
            eprintln!("-- repeat {}/{}: {}", rep + 1, p.repeats, engine.label());
            let r = detection_run(ctx, engine, interval, idle)?;
            runs.entry(engine).or_default().push(r);
        }
    }
    let svg = ctx.report.svg_dir.join("detection.svg");
    plot::panels(
        &svg,
        &[Panel {
            title: format!("{} ghosts: close time − deadline", p.ghosts),
            x_label: "ms after the deadline".into(),
            y_label: "fraction closed".into(),
            series: engines
                .iter()
                .flat_map(|e| {
                    runs.get(e)
                        .into_iter()
                        .flatten()
                        .enumerate()
                        .map(move |(i, r)| {
                            (
                                format!("{} repeat {}", e.flag(), i + 1),
                                stats::cdf(&r.late_ms, 200),
                            )
                        })
                })
                .collect(),
        }],
    )?;
    let mut body = format!(
        "{} ghost clients each send one line at t and then stop answering (they keep \
         reading until their `END`; then, like real ghosts, they never close: hb-bench stops \
         reading them and closes them after the measurement, so their closes do not compete \
         with the server for the cores); they connect together, so their deadlines fall \
         within the connect phase of each other. Server: interval {} s, count {}, idle {} s, \
         so the deadline is t + idle + count × interval = t + {:.2} s. Latency is when \
         hb-bench read `END heartbeat-timeout` minus that deadline (it includes the one-way \
         delivery of the last line and of the END, and hb-bench's own scheduling on the same \
         cores). {} repeat(s) per engine, each with a fresh server; cells are median \
         (min..max) over the repeats of each repeat's figure, and a target is judged on \
         those per-repeat figures.\n\n\
         | engine | admitted | ghosts closed | END heartbeat-timeout | never closed | min ms | p50 ms | p99 ms | max ms |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        p.ghosts,
        p.ghost_interval,
        p.ghost_count,
        idle.as_secs_f64(),
        budget.as_secs_f64(),
        p.repeats
    );
    let col = |rs: &[DetectionRun], f: fn(&Summary) -> f64| -> Vec<f64> {
        rs.iter()
            .map(|r| r.summary.as_ref().map_or(f64::NAN, f))
            .collect()
    };
    let mut targets = String::from("\nTargets:\n\n");
    let mut numbers = Vec::new();
    for engine in Engine::ALL {
        let (p99_goal, max_goal) = detection_goals(engine);
        let Some(rs) = runs.get(&engine) else {
            skipped_engine_row(&mut body, ctx, engine, 7);
            let _ = writeln!(
                targets,
                "- {}: SKIPPED (p99 ≤ {p99_goal} ms, max ≤ {max_goal} ms — not judged)",
                engine.label()
            );
            continue;
        };
        let f = |g: fn(&DetectionRun) -> f64| -> Vec<f64> { rs.iter().map(g).collect() };
        let (p99, max) = (col(rs, |s| s.p99), col(rs, |s| s.max));
        let closed = f(|r| r.late_ms.len() as f64);
        let missing = f(|r| r.missing as f64);
        let _ = writeln!(
            body,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            engine.label(),
            verdict::cell(&f(|r| r.admitted as f64), 0),
            verdict::cell(&closed, 0),
            verdict::cell(&f(|r| r.timeouts as f64), 0),
            verdict::cell(&missing, 0),
            verdict::cell(&col(rs, |s| s.min), 1),
            verdict::cell(&col(rs, |s| s.p50), 1),
            verdict::cell(&p99, 1),
            verdict::cell(&max, 1),
        );
        let _ = writeln!(
            targets,
            "- {}: all closed: {} never closed — {}; p99 ≤ {p99_goal} ms after the deadline — \
             {}; max ≤ {max_goal} ms — {}",
            engine.label(),
            verdict::cell(&missing, 0),
            judge(&missing, Goal::AtMost(0.0), verdict::MIN_REPEATS),
            judge(&p99, Goal::AtMost(p99_goal), verdict::MIN_REPEATS),
            judge(&max, Goal::AtMost(max_goal), verdict::MIN_REPEATS),
        );
        if rs.iter().any(|r| r.summary.is_some()) {
            let med = |v: &[f64]| Spread::of(v).map_or(f64::NAN, |s| s.median);
            let tag = match engine {
                Engine::Threads => "",
                Engine::Events => "ev_",
            };
            numbers.push((format!("{tag}closed"), med(&closed)));
            numbers.push((format!("{tag}p50_ms"), med(&col(rs, |s| s.p50))));
            numbers.push((format!("{tag}p99_ms"), med(&p99)));
            numbers.push((format!("{tag}max_ms"), med(&max)));
        }
    }
    body.push_str(&targets);
    let _ = writeln!(
        body,
        "\n![detection]({}/detection.svg)",
        ctx.report.svg_link
    );
    ctx.report.section(title, &body)?;
    Ok(Outcome {
        title: title.into(),
        numbers,
    })
}

/// One row of one repeat of measurement 4: clients, round-trip summary, round trips per
/// second, the sorted round trips (µs).
type EchoRow = (usize, Summary, f64, Vec<f64>);

/// Who answers the echo measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Echoer {
    /// hb-server (echo mode) with an engine.
    Hb(Engine),
    /// The trivial blocking echo server inside hb-bench ([`TrivialEcho`]).
    Trivial,
}

impl Echoer {
    const ALL: [Echoer; 3] = [
        Echoer::Hb(Engine::Threads),
        Echoer::Hb(Engine::Events),
        Echoer::Trivial,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::Hb(e) => e.label(),
            Self::Trivial => "trivial blocking echo (in hb-bench)",
        }
    }

    fn short(self) -> &'static str {
        match self {
            Self::Hb(Engine::Threads) => "hb",
            Self::Hb(Engine::Events) => "hb-ev",
            Self::Trivial => "trivial",
        }
    }
}

/// One repeat of measurement 4 against `who`: its command, and a row per client count.
fn echo_run(ctx: &Ctx, who: Echoer) -> Result<(String, Vec<EchoRow>), BenchError> {
    let p = ctx.plan;
    // hb-bench on one CPU, the server on the others (super::apart): every round trip then
    // crosses cores, as from another machine. Sharing them, a round trip was now and then a
    // same-core wake-up (4 µs against 64 µs on this VM), and which server got the lucky
    // placement decided the ratio.
    let apart = super::apart::Apart::plan();
    let start = || -> Result<_, BenchError> {
        Ok(match who {
            Echoer::Hb(engine) => (Some(ctx.hb(engine, &[])?), None),
            Echoer::Trivial => (
                None,
                Some(TrivialEcho::start().map_err(io_err("starting the trivial echo server"))?),
            ),
        })
    };
    let (started, _placed) = super::apart::start_maybe(apart.as_ref(), start);
    let (mut srv, trivial) = started?;
    let (addr, cmd) = match (&srv, &trivial) {
        (Some(s), _) => (s.addr, s.command.clone()),
        (None, Some(t)) => (
            t.addr(),
            "std::net, a blocking thread per connection, MSG x → ECHO x (inside hb-bench)".into(),
        ),
        (None, None) => unreachable!("one of the two was started"),
    };
    let mut rows = Vec::new();
    for &c in &p.echo_clients {
        let mut lg = lg_new()?;
        let (ids, _) = connect(
            &mut lg,
            addr,
            c,
            true,
            &format!("{} connect {c}", who.short()),
        )?;
        let mut sent: HashMap<usize, Instant> = HashMap::new();
        for &id in &ids {
            // Stamped before the write: on loopback the reply can be back in the socket
            // before write() returns, and a stamp taken after it hides that part of the trip.
            sent.insert(id, Instant::now());
            lg.send(id, b"MSG ping\n");
        }
        let warm = Instant::now() + echo_warm_up(p.echo_window);
        let end = warm + p.echo_window;
        let mut rtts = Vec::new();
        let bar = Progress::new(format!("echo x{c}"), p.echo_window.as_millis() as usize);
        let mut last = Instant::now();
        while Instant::now() < end {
            for inc in lg
                .poll(Duration::from_millis(2))
                .map_err(io_err("polling"))?
            {
                if !inc.line.starts_with(b"ECHO ") {
                    continue;
                }
                if let Some(t) = sent.get(&inc.id) {
                    if inc.at >= warm {
                        rtts.push(stats::us(inc.at - *t));
                    }
                }
                sent.insert(inc.id, Instant::now());
                lg.send(inc.id, b"MSG ping\n");
            }
            if last.elapsed() > Duration::from_millis(100) {
                bar.set(
                    p.echo_window
                        .saturating_sub(end - Instant::now())
                        .as_millis() as usize,
                );
                last = Instant::now();
            }
        }
        bar.finish("");
        let rate = rtts.len() as f64 / p.echo_window.as_secs_f64();
        if let Some(s) = stats::summarize(&mut rtts) {
            rows.push((c, s, rate, rtts));
        }
        lg.close_all();
        if let Some(srv) = &mut srv {
            srv.check_alive("echo")?;
        }
    }
    Ok((cmd, rows))
}

/// The round trips of the first moments of each client count that are not counted: 100 ms,
/// or a third of a shorter window (quick's 0.15 s window: 50 ms, still a thousand round
/// trips and more).
fn echo_warm_up(window: Duration) -> Duration {
    Duration::from_millis(100).min(window / 3)
}

/// The echo target of the event engine: p50 with one client within this factor of the
/// trivial server's, measured in the same run (issue 12).
const ECHO_VS_TRIVIAL: f64 = 1.2;

/// Measurement 4, echo round trip with 1, 10, 100 concurrent clients: both engines and a
/// trivial blocking echo server, in the same run.
pub fn echo(ctx: &Ctx) -> Result<Outcome, BenchError> {
    let p = ctx.plan;
    let title = "4. Echo round trip";
    eprintln!("== {title}");
    let mut cmds: HashMap<Echoer, String> = HashMap::new();
    let mut runs: HashMap<Echoer, Vec<Vec<EchoRow>>> = HashMap::new();
    let who_all: Vec<Echoer> = Echoer::ALL
        .into_iter()
        .filter(|w| match w {
            Echoer::Hb(e) => ctx.engines.skip_reason(*e).is_none(),
            Echoer::Trivial => true,
        })
        .collect();
    for rep in 0..p.repeats {
        for &who in &who_all {
            eprintln!("-- {} repeat {}/{}", who.name(), rep + 1, p.repeats);
            let (c, rows) = echo_run(ctx, who)?;
            cmds.insert(who, c);
            runs.entry(who).or_default().push(rows);
        }
    }
    let mut body = format!(
        "Closed loop: each client sends `MSG ping`, waits for `ECHO ping`, sends the next. \
         {} s per client count after {} ms of warm-up; {}. The yardstick is a trivial blocking echo server written for \
         this (not hb-echo, which echoes raw bytes with no `HELLO` and so would need another \
         client): a `std::net` thread per connection inside hb-bench that greets with \
         `HELLO` and answers each `MSG x` with `ECHO x` at once, with no heartbeat, queue \
         or log. {} repeat(s), each with fresh servers; cells are median (min..max) over \
         the repeats of each repeat's figure.\n\n",
        p.echo_window.as_secs_f64(),
        echo_warm_up(p.echo_window).as_millis(),
        match super::apart::Apart::plan() {
            Some(a) => format!(
                "hb-bench runs on CPU {} and each server (the yardstick's threads too) on CPU \
                 {}, so every round trip crosses cores, as from another machine (on shared \
                 cores a round trip was now and then a same-core wake-up, 4 µs against 64, \
                 and that luck decided the ratio)",
                a.bench_cpu, a.server_cpus
            ),
            None => "hb-bench and the server share the machine's one CPU".into(),
        },
        p.repeats
    );
    for who in Echoer::ALL {
        match (cmds.get(&who), who) {
            (Some(cmd), _) => {
                let _ = writeln!(body, "- {}: `{cmd}`", who.name());
            }
            (None, Echoer::Hb(e)) => {
                let _ = writeln!(
                    body,
                    "- {}: **SKIPPED**: {}",
                    who.name(),
                    ctx.engines
                        .skip_reason(e)
                        .unwrap_or_else(|| "no run".into())
                );
            }
            (None, Echoer::Trivial) => {}
        }
    }
    body.push_str(
        "\n| server | clients | round trips | p50 µs | p99 µs | max µs | messages/s |\n\
         |---|---:|---:|---:|---:|---:|---:|\n",
    );
    let mut cdfs = Vec::new();
    let mut numbers = Vec::new();
    let mut one: HashMap<Echoer, Vec<f64>> = HashMap::new();
    for who in Echoer::ALL {
        let Some(who_runs) = runs.get(&who) else {
            if let Echoer::Hb(e) = who {
                let _ = writeln!(
                    body,
                    "| {} | - | **SKIPPED**: {} | - | - | - | - |",
                    who.name(),
                    ctx.engines
                        .skip_reason(e)
                        .unwrap_or_else(|| "no run".into())
                );
            }
            continue;
        };
        for &c in &p.echo_clients {
            let rs: Vec<&EchoRow> = who_runs.iter().flatten().filter(|r| r.0 == c).collect();
            if rs.is_empty() {
                continue;
            }
            let col = |f: fn(&EchoRow) -> f64| -> Vec<f64> { rs.iter().map(|r| f(r)).collect() };
            let p50 = col(|r| r.1.p50);
            let _ = writeln!(
                body,
                "| {} | {c} | {} | {} | {} | {} | {} |",
                who.name(),
                verdict::cell(&col(|r| r.1.n as f64), 0),
                verdict::cell(&p50, 0),
                verdict::cell(&col(|r| r.1.p99), 0),
                verdict::cell(&col(|r| r.1.max), 0),
                verdict::cell(&col(|r| r.2), 0),
            );
            // The CDF of the median repeat (by p50) stands for the client count.
            let mut by_p50 = rs.clone();
            by_p50.sort_by(|a, b| a.1.p50.total_cmp(&b.1.p50));
            let mid = by_p50[by_p50.len() / 2];
            cdfs.push((format!("{} {c}", who.short()), stats::cdf(&mid.3, 200)));
            let med = |v: &[f64]| Spread::of(v).map_or(f64::NAN, |s| s.median);
            let pre = match who {
                Echoer::Hb(Engine::Threads) => "",
                Echoer::Hb(Engine::Events) => "ev_",
                Echoer::Trivial => "trivial_",
            };
            numbers.push((format!("{pre}c{c}_p50_us"), med(&p50)));
            if who != Echoer::Trivial {
                numbers.push((format!("{pre}c{c}_p99_us"), med(&col(|r| r.1.p99))));
                numbers.push((format!("{pre}c{c}_msgs_per_s"), med(&col(|r| r.2))));
            }
            if c == 1 {
                one.insert(who, p50);
            }
        }
    }
    let min = verdict::MIN_REPEATS;
    let threads_one = one
        .get(&Echoer::Hb(Engine::Threads))
        .cloned()
        .unwrap_or_default();
    let _ = writeln!(
        body,
        "\nTargets:\n\n- {}: p50 ≤ 100 µs with one client — {} µs ({}).",
        Engine::Threads.label(),
        verdict::cell(&threads_one, 0),
        judge(&threads_one, Goal::AtMost(100.0), min),
    );
    let trivial = one.get(&Echoer::Trivial);
    for engine in Engine::ALL {
        let who = Echoer::Hb(engine);
        let target = engine == Engine::Events;
        let goal = if target {
            format!("target ≤ {ECHO_VS_TRIVIAL}×")
        } else {
            "for the record".into()
        };
        let line = match (one.get(&who), trivial) {
            (Some(a), Some(t)) => {
                let r: Vec<f64> = a.iter().zip(t).map(|(a, t)| a / t.max(1e-9)).collect();
                numbers.push((format!("{}_vs_trivial_p50", who.short()), {
                    Spread::of(&r).map_or(f64::NAN, |s| s.median)
                }));
                format!(
                    "{} µs / {} µs = {}× ({goal}{})",
                    verdict::cell(a, 0),
                    verdict::cell(t, 0),
                    verdict::cell(&r, 2),
                    if target {
                        format!(" — {}", judge(&r, Goal::AtMost(ECHO_VS_TRIVIAL), min))
                    } else {
                        String::new()
                    }
                )
            }
            _ => format!(
                "SKIPPED ({}) ({goal}{})",
                ctx.engines
                    .skip_reason(engine)
                    .unwrap_or_else(|| "no run".into()),
                if target { " — not judged" } else { "" }
            ),
        };
        let _ = writeln!(
            body,
            "- {}: p50 with one client / the trivial server's: {line}",
            engine.label()
        );
    }
    let _ = writeln!(body, "\n![echo]({}/echo.svg)", ctx.report.svg_link);
    plot::panels(
        &ctx.report.svg_dir.join("echo.svg"),
        &[Panel {
            title: "echo round trip CDF (median repeat)".into(),
            x_label: "µs".into(),
            y_label: "fraction".into(),
            series: cdfs,
        }],
    )?;
    ctx.report.section(title, &body)?;
    Ok(Outcome {
        title: title.into(),
        numbers,
    })
}

/// The relay peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Kind {
    /// hb-server --mode chat, with one of its engines.
    Hb(Engine),
    /// ncat --chat.
    Ncat,
    /// redis-server pub/sub.
    Redis,
}

/// Every relay peer, in report order.
pub(super) const KINDS: [Kind; 4] = [
    Kind::Hb(Engine::Threads),
    Kind::Hb(Engine::Events),
    Kind::Ncat,
    Kind::Redis,
];

impl Kind {
    /// The name in the report.
    pub(super) fn name(self) -> &'static str {
        match self {
            Self::Hb(Engine::Threads) => "hb-server --mode chat (threads)",
            Self::Hb(Engine::Events) => "hb-server --mode chat (events)",
            Self::Ncat => "ncat --chat",
            Self::Redis => "redis PUBLISH/SUBSCRIBE",
        }
    }

    /// A short name for SVG bars and the numbers printed.
    pub(super) fn short(self) -> &'static str {
        match self {
            Self::Hb(Engine::Threads) => "hb",
            Self::Hb(Engine::Events) => "hb-ev",
            Self::Ncat => "ncat",
            Self::Redis => "redis",
        }
    }

    /// hb-server, whatever the engine.
    pub(super) fn is_hb(self) -> bool {
        matches!(self, Self::Hb(_))
    }
}

/// Finds `T<seq>:<nanos>#` in a line, whatever the peer wrapped around it.
pub fn parse_mark(line: &[u8]) -> Option<(u64, u64)> {
    /// The decimal number at the start of `b` and its length (None: no digit, or too big).
    fn number(b: &[u8]) -> Option<(u64, usize)> {
        let mut n = 0u64;
        let mut len = 0;
        for &c in b {
            if !c.is_ascii_digit() {
                break;
            }
            n = n.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
            len += 1;
        }
        (len > 0).then_some((n, len))
    }
    let mut i = 0;
    // By hand rather than through str::parse: the open-loop receivers parse every message.
    while let Some(off) = memchr::memchr(b'T', &line[i..]) {
        let start = i + off + 1;
        let rest = &line[start..];
        if let Some((seq, d1)) = number(rest) {
            if rest.get(d1) == Some(&b':') {
                let rest2 = &rest[d1 + 1..];
                if let Some((ns, d2)) = number(rest2) {
                    if rest2.get(d2) == Some(&b'#') {
                        return Some((seq, ns));
                    }
                }
            }
        }
        i = start;
    }
    None
}

/// The payload of message `seq` sent `ns` after the run's epoch, padded to 64 bytes.
pub fn mark(seq: u64, ns: u64) -> String {
    format!("{:.<64}", format!("T{seq}:{ns}#"))
}

fn frame(kind: Kind, payload: &str) -> Vec<u8> {
    match kind {
        Kind::Hb(_) => format!("MSG {payload}\n").into_bytes(),
        Kind::Ncat => format!("{payload}\n").into_bytes(),
        Kind::Redis => resp_command(&[b"PUBLISH", b"bench", payload.as_bytes()]),
    }
}

/// The result of one relay run.
struct RelayRun {
    /// Messages per second the least-served receiver got (distinct sequence numbers).
    msgs_per_s: f64,
    lat: Option<Summary>,
    stuck_fate: Option<String>,
    /// Messages sent.
    sent: u64,
    /// Sequence numbers missing below each receiver's highest, summed over receivers.
    gaps: u64,
    /// Messages that never reached a receiver (after a bounded drain), summed over receivers.
    lost: u64,
    /// Messages a receiver got twice, summed.
    duplicates: u64,
    /// Fixed-rate runs: messages the schedule called for that hb-bench could not even hand
    /// to the server (its socket stopped taking them); 0 otherwise.
    unsent: u64,
}

/// Messages in flight (sent, not yet at every receiver) at most.
const WINDOW: u64 = 64;
/// After a relay window, how long messages still in flight may take to arrive before the
/// ones missing are counted as lost.
const DRAIN: Duration = Duration::from_secs(1);

/// Starts a relay peer afresh (hb-server with `hb_extra` flags); None when not installed.
pub(super) fn start_peer(
    kind: Kind,
    ctx: &Ctx,
    hb_extra: &[&str],
) -> Result<Option<Peer>, BenchError> {
    Ok(Some(match kind {
        Kind::Hb(engine) => {
            let mut args = vec!["--mode", "chat", "--max-conns", "1000"];
            args.extend_from_slice(hb_extra);
            ctx.hb(engine, &args)?
        }
        Kind::Ncat => match on_path("ncat") {
            Some(b) => Peer::ncat(&b)?,
            None => return Ok(None),
        },
        Kind::Redis => match on_path("redis-server") {
            Some(b) => Peer::redis(&b)?,
            None => return Ok(None),
        },
    }))
}

/// Messages due by `elapsed` into a fixed-rate run at `rate` per second (message k is due
/// at k / rate).
pub(super) fn due_by(elapsed: Duration, rate: f64) -> u64 {
    (elapsed.as_secs_f64() * rate).floor().max(0.0) as u64
}

/// The fixed-rate sender's bound on bytes it has not handed to the kernel yet: a server that
/// stops reading cannot make hb-bench buffer without limit (the messages not sent are then
/// counted as lost against the schedule, see `relay_run`).
const FIXED_UNSENT_MAX: usize = 4 << 20;

/// One relay run: windowed (`rate` None) or at a fixed `rate` of messages per second.
fn relay_run(
    kind: Kind,
    peer: &mut Peer,
    receivers: usize,
    stuck: bool,
    window: Duration,
    rate: Option<f64>,
) -> Result<RelayRun, BenchError> {
    let mut lg = lg_new()?;
    let label = format!("{} receivers", kind.name());
    let (rx_ids, rep) = if kind == Kind::Ncat {
        connect_greeted_peer(&mut lg, peer.addr, receivers, &label)?
    } else {
        connect(&mut lg, peer.addr, receivers, kind.is_hb(), &label)?
    };
    if rep.admitted < receivers {
        return Err(BenchError::Measurement(format!(
            "{}: only {} of {receivers} receivers connected",
            kind.name(),
            rep.admitted
        )));
    }
    let stuck_id = if stuck {
        // A tiny receive buffer makes the stuck reader's backlog reach the peer sooner.
        let id = lg
            .connect(peer.addr, None, Some(4096))
            .map_err(io_err("connecting the stuck reader"))?;
        Some(id)
    } else {
        None
    };
    let sender = lg
        .connect(peer.addr, None, None)
        .map_err(io_err("connecting the sender"))?;
    let setup_deadline = Instant::now() + Duration::from_secs(5);
    while [Some(sender), stuck_id]
        .iter()
        .flatten()
        .any(|&id| lg.conn(id).state == State::Connecting)
    {
        lg.poll(Duration::from_millis(5))
            .map_err(io_err("polling"))?;
        if Instant::now() > setup_deadline {
            return Err(BenchError::Measurement(format!(
                "{}: connect timed out",
                kind.name()
            )));
        }
    }
    for (i, &id) in rx_ids.iter().chain(stuck_id.iter()).enumerate() {
        match kind {
            Kind::Hb(_) => lg.send(id, format!("JOIN r{i}\n").as_bytes()),
            Kind::Redis => lg.send(id, &resp_command(&[b"SUBSCRIBE", b"bench"])),
            Kind::Ncat => {}
        }
    }
    if kind.is_hb() {
        lg.send(sender, b"JOIN sender\n");
    }
    if let Some(id) = stuck_id {
        lg.set_reading(id, false);
    }
    let index: HashMap<usize, usize> = rx_ids.iter().enumerate().map(|(k, &id)| (id, k)).collect();
    let epoch = Instant::now();
    let ns = |t: Instant| (t - epoch).as_nanos() as u64;
    // Probe until every receiver hears the sender (joins and subscriptions are in place).
    let mut ready = vec![false; receivers];
    let mut next_probe = Instant::now();
    while ready.iter().any(|r| !r) {
        if Instant::now() > setup_deadline {
            return Err(BenchError::Measurement(format!(
                "{}: only {} of {receivers} receivers heard the sender",
                kind.name(),
                ready.iter().filter(|r| **r).count()
            )));
        }
        if Instant::now() >= next_probe {
            lg.send(sender, &frame(kind, &mark(0, 0)));
            next_probe = Instant::now() + Duration::from_millis(50);
        }
        for inc in lg
            .poll(Duration::from_millis(5))
            .map_err(io_err("polling"))?
        {
            if let (Some(&k), Some((0, _))) = (index.get(&inc.id), parse_mark(&inc.line)) {
                ready[k] = true;
            }
        }
    }
    // Probes still on their way are seq 0, which the trackers ignore: no need to wait them
    // out.
    let mut got = vec![SeqTracker::default(); receivers];
    let mut lat = Vec::new();
    let mut seq = 0u64;
    let start = Instant::now();
    let end = start + window;
    let stuck_at = Instant::now();
    let mut take = |lg: &mut LoadGen, got: &mut [SeqTracker], wait: Duration| {
        for inc in lg.poll(wait).map_err(io_err("polling"))? {
            let Some(&k) = index.get(&inc.id) else {
                continue;
            };
            if let Some((s, t)) = parse_mark(&inc.line) {
                if got[k].record(s) {
                    lat.push((ns(inc.at).saturating_sub(t)) as f64 / 1e3);
                }
            }
        }
        Ok::<_, BenchError>(())
    };
    let mut last_due = 0u64;
    while Instant::now() < end {
        match rate {
            // Flow control only: the slowest receiver's highest sequence number bounds what
            // is in flight. What counts is what each receiver actually got (below).
            None => {
                let min = got.iter().map(SeqTracker::highest).min().unwrap_or(0);
                while seq - min < WINDOW && lg.unsent(sender) < 64 * 1024 {
                    seq += 1;
                    lg.send(sender, &frame(kind, &mark(seq, ns(Instant::now()))));
                }
            }
            // A fixed schedule whatever the receivers do: message k is due at k / rate. A
            // server that falls behind shows it in the latency (stamped when due, not when
            // the socket took it) and in what is lost.
            Some(r) => {
                let due = due_by(start.elapsed(), r);
                last_due = due;
                while seq < due && lg.unsent(sender) < FIXED_UNSENT_MAX {
                    seq += 1;
                    let at = start + Duration::from_secs_f64(seq as f64 / r);
                    lg.send(sender, &frame(kind, &mark(seq, ns(at))));
                }
            }
        }
        if lg.conn(sender).state == State::Closed {
            break;
        }
        take(&mut lg, &mut got, Duration::from_millis(1))?;
    }
    let elapsed = start.elapsed();
    // Against what was due when the sender last looked, not at `elapsed` (a few messages
    // fall due between that look and the end of the loop and were never meant to go).
    let unsent = last_due.saturating_sub(seq);
    // Throughput: messages the least-served receiver actually got within the window.
    let delivered = got.iter().map(SeqTracker::received).min().unwrap_or(0);
    // Whether the peer hung up on the stuck reader while it was not reading.
    let stuck_hup = stuck_id.map(|id| lg.conn(id).hup_at.map(|t| (t - stuck_at).as_secs_f64()));
    // The stuck reader resumes first: a peer that blocks on it (rather than dropping it)
    // holds the others' last messages back, and that is a stall, not a loss.
    if let Some(id) = stuck_id {
        lg.set_reading(id, true);
    }
    // Then let what is in flight arrive (bounded), so a message still on its way at the end
    // of the window is not called lost.
    let drain_until = Instant::now() + DRAIN;
    while got.iter().any(|g| g.received() < seq) && Instant::now() < drain_until {
        take(&mut lg, &mut got, Duration::from_millis(5))?;
    }
    let gaps: u64 = got.iter().map(SeqTracker::gaps).sum();
    let lost: u64 = got.iter().map(|g| g.lost(seq)).sum();
    let duplicates: u64 = got.iter().map(SeqTracker::duplicates).sum();
    let stuck_fate = stuck_id.zip(stuck_hup).map(|(id, hup)| {
        // Let the resumed stuck reader read what reached it: until its END or its close, at
        // most 300 ms (a peer that keeps it connected sends neither).
        let until = Instant::now() + Duration::from_millis(300);
        while Instant::now() < until
            && lg.conn(id).end.is_none()
            && lg.conn(id).state != State::Closed
        {
            let _ = lg.poll(Duration::from_millis(5));
        }
        let c = lg.conn(id);
        let end = c.end.as_ref().map(|e| e.0.clone());
        let still = c.state != State::Closed;
        let mut fate = match (hup, end) {
            (Some(s), Some(r)) => {
                format!("ended it with `END {r}` and closed it {s:.2} s after it stopped reading")
            }
            (Some(s), None) => format!("closed it {s:.2} s after it stopped reading"),
            (None, Some(r)) => format!("sent it `END {r}`"),
            (None, None) if still => "kept it connected until the end of the window".into(),
            (None, None) => "closed it".into(),
        };
        let _ = write!(
            fate,
            "; {:.1} MB reached it by the time it resumed reading",
            c.rx_bytes as f64 / 1e6
        );
        fate
    });
    let stuck_fate = stuck_fate.map(|f| {
        let n = peer.log().slow_consumers;
        if n > 0 {
            format!("{f} (server log: {n} × END slow-consumer)")
        } else {
            f
        }
    });
    peer.check_alive("relay")?;
    lg.close_all();
    Ok(RelayRun {
        msgs_per_s: delivered as f64 / elapsed.as_secs_f64(),
        lat: stats::summarize(&mut lat),
        stuck_fate,
        sent: seq,
        gaps,
        lost,
        duplicates,
        unsent,
    })
}

/// Why a third-party peer is not in the run: None when it can be started.
pub(super) fn peer_missing(kind: Kind, ctx: &Ctx) -> Option<String> {
    let (bin, pkg) = match kind {
        Kind::Hb(engine) => return ctx.engines.skip_reason(engine),
        Kind::Ncat => ("ncat", "ncat"),
        Kind::Redis => ("redis-server", "redis-server"),
    };
    on_path(bin)
        .is_none()
        .then(|| format!("`{bin}` not on PATH (`apt-get install {pkg}`)"))
}

/// How a relay run drives the sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum RelayMode {
    /// At most [`WINDOW`] messages in flight.
    Windowed,
    /// Windowed, with one more receiver that never reads.
    Stuck,
    /// The plan's fixed rate, whatever the receivers do.
    Fixed,
    /// The fixed rate with hb-bench and the server on different cores ([`super::apart`]).
    FixedApart,
}

/// Results of section 5: (peer, receivers, mode) -> one per repeat.
type RelayRuns = HashMap<(Kind, usize, RelayMode), Vec<RelayRun>>;

/// Per-repeat ratios of `a` to `b` (messages/s), repeats paired in order.
fn relay_ratios(
    results: &RelayRuns,
    a: (Kind, usize, RelayMode),
    b: (Kind, usize, RelayMode),
) -> Option<Vec<f64>> {
    let (x, y) = (results.get(&a)?, results.get(&b)?);
    Some(
        x.iter()
            .zip(y)
            .map(|(x, y)| x.msgs_per_s / y.msgs_per_s.max(1e-9))
            .collect(),
    )
}

/// The peers run at the fixed rate: both engines and Redis (the target compares with
/// Redis; ncat --chat blocks everyone on its slowest reader and is left out to save time).
const FIXED_KINDS: [Kind; 3] = [
    Kind::Hb(Engine::Threads),
    Kind::Hb(Engine::Events),
    Kind::Redis,
];

/// Runs section 5 leaves out: the fixed rate for peers other than [`FIXED_KINDS`], and the
/// closed-loop stuck reader for the event engine (a figure for the record only, as for the
/// thread engine; its stuck-reader targets are judged open loop, in section 6).
fn skip_relay_run(kind: Kind, mode: RelayMode) -> bool {
    match mode {
        RelayMode::Fixed => !FIXED_KINDS.contains(&kind),
        // The judged run: the event engine against Redis (the thread engine's figures on
        // shared cores are for the record).
        RelayMode::FixedApart => !matches!(kind, Kind::Hb(Engine::Events) | Kind::Redis),
        RelayMode::Stuck => kind == Kind::Hb(Engine::Events),
        RelayMode::Windowed => false,
    }
}

/// Measurement 5, relay in a closed loop (windowed: at most [`WINDOW`] messages in flight,
/// for latency) and at a fixed rate, 1 sender to N receivers, both engines against ncat
/// --chat and Redis pub/sub. The open-loop runs (as fast as the server accepts) are
/// measurement 6, in `openloop`.
pub fn relay(ctx: &Ctx) -> Result<Outcome, BenchError> {
    let p = ctx.plan;
    let title = "5. Relay throughput, closed loop (windowed: latency) and fixed rate";
    eprintln!("== {title}");
    let mut body = format!(
        "Closed loop: one sender, N receivers, at most {WINDOW} messages in flight (sent but \
         not yet at the slowest receiver), so this measures delivery latency under a bounded \
         load; the sender waits for the slowest receiver, which hides what a publisher that \
         does not wait does to the readers (section 6 measures that). {} s per run ({} s with a \
         stuck reader: one more receiver that never reads, with a 4 KiB receive buffer); \
         64-byte payloads carrying \
         a sequence number and the send time, so delivery latency is measured at each \
         receiver. Each receiver's sequence numbers are checked: messages/s counts the \
         distinct messages the least-served receiver actually got in the window; gaps are \
         sequence numbers missing below a receiver's highest, lost are messages that never \
         reached a receiver, counted after the stuck reader (if any) resumed reading and up to \
         {:.1} s of drain (both summed over receivers and repeats). \
         **Fixed rate**: the sender sends message k at k / {} s for {:.1} s to {} receivers \
         whatever they do, stamped with its due time (so a server that falls behind shows \
         it as latency); *not sent* counts messages the schedule called for that the \
         server's socket would not take (more than {} MiB waiting in hb-bench). hb-bench \
         reads every receiver on one thread, line by line, and a Redis message is 7 RESP \
         lines against hb-server's 1: a Redis row that falls behind the rate may show that \
         reader's limit as much as Redis's (compare Redis's windowed 1 → 100 rate). \
         The fixed rate runs twice: on cores shared with hb-bench ({:.1} s, every peer), and \
         *own cores* (the event engine and Redis, both placed alike): \
         hb-bench on the first CPU and the server started on the others, \
         as a client on another machine would be; on a small machine a server's second busy \
         thread otherwise takes hb-bench's core for a scheduler slice at a time, and the \
         p99 records hb-bench's wait (a single-threaded peer never causes it). The target \
         is judged on the own-cores run (on a one-CPU machine, on the shared one). \
         Each run starts its peer afresh on loopback; {} repeat(s){}, cells are median \
         (min..max). Peers are installed with `apt-get install ncat redis-server`.\n\n",
        p.relay_window.as_secs_f64(),
        p.relay_stuck_window.as_secs_f64(),
        DRAIN.as_secs_f64(),
        fmt_rate(p.fixed_rate),
        p.fixed_window.as_secs_f64(),
        p.fixed_receivers,
        FIXED_UNSENT_MAX >> 20,
        p.fixed_shared_window.as_secs_f64(),
        p.repeats,
        if p.stuck_once {
            " (the stuck-reader runs, figures for the record, in the first repeat only)"
        } else {
            ""
        }
    );
    let mut table = String::from(
        "| peer | receivers | run | messages/s | p50 µs | p99 µs | gaps | lost | what the peer did with the stuck reader |\n\
         |---|---:|---|---:|---:|---:|---:|---:|---|\n",
    );
    let stuck_n = p.relay_receivers[0];
    let mut runs: Vec<(usize, RelayMode)> = p
        .relay_receivers
        .iter()
        .map(|&n| (n, RelayMode::Windowed))
        .collect();
    runs.push((stuck_n, RelayMode::Stuck));
    runs.push((p.fixed_receivers, RelayMode::Fixed));
    let apart = super::apart::Apart::plan();
    if apart.is_some() {
        runs.push((p.fixed_receivers, RelayMode::FixedApart));
    }
    let mut results: RelayRuns = HashMap::new();
    let mut skipped: HashMap<Kind, String> = HashMap::new();
    let mut commands: HashMap<Kind, String> = HashMap::new();
    for rep in 0..p.repeats {
        for kind in KINDS {
            if skipped.contains_key(&kind) {
                continue;
            }
            if let Some(why) = peer_missing(kind, ctx) {
                eprintln!("hb-bench: {}: SKIPPED: {why}", kind.name());
                skipped.insert(kind, why);
                continue;
            }
            for &(n, mode) in &runs {
                if skip_relay_run(kind, mode) || mode == RelayMode::Stuck && p.stuck_once && rep > 0
                {
                    continue;
                }
                // The apart run's peer starts on the server CPUs and hb-bench keeps to its
                // own until `_placed` is dropped with the run.
                let placement = apart.as_ref().filter(|_| mode == RelayMode::FixedApart);
                let (started, _placed) =
                    super::apart::start_maybe(placement, || start_peer(kind, ctx, &[]));
                let mut peer = match started {
                    Ok(Some(peer)) => peer,
                    Ok(None) => {
                        skipped.insert(kind, "not installed".into());
                        break;
                    }
                    // A third-party peer that will not start is a skipped row, not a failed
                    // measurement: our server's numbers still stand.
                    Err(e) if !kind.is_hb() => {
                        let why = format!("could not be started: {e}");
                        eprintln!("hb-bench: {}: SKIPPED: {why}", kind.name());
                        skipped.insert(kind, why);
                        break;
                    }
                    Err(e) => return Err(e),
                };
                commands.entry(kind).or_insert_with(|| peer.command.clone());
                let (window, rate) = match mode {
                    RelayMode::Windowed => (p.relay_window, None),
                    RelayMode::Stuck => (p.relay_stuck_window, None),
                    RelayMode::Fixed => (p.fixed_shared_window, Some(p.fixed_rate)),
                    RelayMode::FixedApart => (p.fixed_window, Some(p.fixed_rate)),
                };
                eprintln!(
                    "-- {} 1→{n}{} (repeat {}/{})",
                    kind.name(),
                    match mode {
                        RelayMode::Windowed => String::new(),
                        RelayMode::Stuck => " + stuck reader".into(),
                        RelayMode::Fixed => format!(" at {} msg/s", fmt_rate(p.fixed_rate)),
                        RelayMode::FixedApart => format!(
                            " at {} msg/s, hb-bench and the server on different cores",
                            fmt_rate(p.fixed_rate)
                        ),
                    },
                    rep + 1,
                    p.repeats
                );
                let r = relay_run(kind, &mut peer, n, mode == RelayMode::Stuck, window, rate)?;
                drop(peer);
                results.entry((kind, n, mode)).or_default().push(r);
            }
        }
    }
    for kind in KINDS {
        match (commands.get(&kind), skipped.get(&kind)) {
            (Some(cmd), Some(why)) => {
                let _ = writeln!(body, "- {}: `{cmd}` (then SKIPPED: {why})", kind.name());
            }
            (Some(cmd), None) => {
                let _ = writeln!(body, "- {}: `{cmd}`", kind.name());
            }
            (None, Some(why)) => {
                let _ = writeln!(body, "- {}: **SKIPPED**: {why}", kind.name());
            }
            (None, None) => {}
        }
        for &(n, mode) in &runs {
            if skip_relay_run(kind, mode) {
                continue;
            }
            let mode_cell = match mode {
                RelayMode::Windowed => "windowed".to_string(),
                RelayMode::Stuck => "windowed + stuck reader (+1)".into(),
                RelayMode::Fixed => format!("fixed {} msg/s", fmt_rate(p.fixed_rate)),
                RelayMode::FixedApart => {
                    format!("fixed {} msg/s, own cores", fmt_rate(p.fixed_rate))
                }
            };
            let Some(rs) = results.get(&(kind, n, mode)) else {
                let why = skipped.get(&kind).map_or("no run", String::as_str);
                let _ = writeln!(
                    table,
                    "| {} | {n} | {mode_cell} | **SKIPPED**: {why} | - | - | - | - | |",
                    kind.name()
                );
                continue;
            };
            let col = |f: &dyn Fn(&RelayRun) -> f64| -> Vec<f64> { rs.iter().map(f).collect() };
            let gaps: u64 = rs.iter().map(|r| r.gaps).sum();
            let lost: u64 = rs.iter().map(|r| r.lost).sum();
            let dups: u64 = rs.iter().map(|r| r.duplicates).sum();
            let unsent: u64 = rs.iter().map(|r| r.unsent).sum();
            let sent: u64 = rs.iter().map(|r| r.sent).sum::<u64>() * n as u64;
            let fates: Vec<String> = rs
                .iter()
                .enumerate()
                .filter_map(|(i, r)| {
                    let f = r.stuck_fate.as_deref()?;
                    Some(if rs.len() > 1 {
                        format!("repeat {}: {f}", i + 1)
                    } else {
                        f.to_owned()
                    })
                })
                .collect();
            let _ = writeln!(
                table,
                "| {} | {n} | {mode_cell} | {} | {} | {} | {gaps} | {}{}{} | {} |",
                kind.name(),
                verdict::cell(&col(&|r| r.msgs_per_s), 0),
                verdict::cell(&col(&|r| r.lat.map_or(f64::NAN, |s| s.p50)), 0),
                verdict::cell(&col(&|r| r.lat.map_or(f64::NAN, |s| s.p99)), 0),
                if lost == 0 {
                    "0".to_string()
                } else {
                    format!("{lost} ({:.3}%)", lost as f64 * 100.0 / sent.max(1) as f64)
                },
                if dups > 0 {
                    format!("; {dups} duplicated")
                } else {
                    String::new()
                },
                if unsent > 0 {
                    format!("; {unsent} not sent")
                } else {
                    String::new()
                },
                fates.join("<br>")
            );
        }
    }
    body.push('\n');
    body.push_str(&table);
    // Ratios per repeat (runs of the same repeat were seconds apart), judged on the median.
    let min = verdict::MIN_REPEATS;
    let mut targets =
        String::from("\nRatios (median (min..max) of the per-repeat ratios) and targets:\n\n");
    let mut numbers = Vec::new();
    for engine in Engine::ALL {
        let hb = Kind::Hb(engine);
        if let Some(why) = skipped.get(&hb) {
            let _ = writeln!(targets, "- {}: SKIPPED ({why})", hb.name());
            continue;
        }
        for &n in &p.relay_receivers {
            for (other, goal) in [(Kind::Ncat, 1.0), (Kind::Redis, 0.5)] {
                let judged = n == stuck_n && engine == Engine::Threads;
                let Some(r) = relay_ratios(
                    &results,
                    (hb, n, RelayMode::Windowed),
                    (other, n, RelayMode::Windowed),
                ) else {
                    if let Some(why) = skipped.get(&other) {
                        let _ = writeln!(
                            targets,
                            "- 1→{n}: {} / {}: SKIPPED ({why}){}",
                            engine.label(),
                            other.name(),
                            if judged {
                                format!(" (target ≥ {goal}× — not judged)")
                            } else {
                                String::new()
                            }
                        );
                    }
                    continue;
                };
                if judged {
                    numbers.push((
                        format!("ratio_vs_{}", other.short()),
                        Spread::of(&r).map_or(f64::NAN, |s| s.median),
                    ));
                }
                let _ = writeln!(
                    targets,
                    "- 1→{n}: {} / {} = {}×{}",
                    engine.label(),
                    other.name(),
                    verdict::cell(&r, 2),
                    if judged {
                        format!(
                            " (target ≥ {goal}× — {})",
                            judge(&r, Goal::AtLeast(goal), min)
                        )
                    } else {
                        // The event engine's relay targets are judged open loop (section 6)
                        // and at the fixed rate (below).
                        String::new()
                    }
                );
            }
        }
    }
    for kind in KINDS {
        if let Some(r) = relay_ratios(
            &results,
            (kind, stuck_n, RelayMode::Stuck),
            (kind, stuck_n, RelayMode::Windowed),
        ) {
            let pct: Vec<f64> = r.iter().map(|x| x * 100.0).collect();
            let _ = writeln!(
                targets,
                "- {} with one stuck reader: {}% of its 1→{stuck_n} throughput to the others{}",
                kind.name(),
                verdict::cell(&pct, 0),
                if kind.is_hb() {
                    // Since flow control (CONTRACT section 2), a stuck reader holds the
                    // senders for one --stall (500 ms) before it is ended: in a window of a
                    // second or two that pause dominates. The ≥ 90 % target is judged over
                    // 5 s in section 6; here the figure is for the record.
                    format!(
                        " (not judged here: a stuck reader costs one `--stall` pause, which a \
                         short closed-loop window cannot absorb; the ≥ 90 % target is {} over \
                         5 s in section 6)",
                        if p.stuck_once {
                            "measured (and, in the full plan, judged)"
                        } else {
                            "judged"
                        }
                    )
                } else {
                    String::new()
                }
            );
        }
    }
    // The fixed rate: every message delivered, p99 no worse than Redis's (event engine),
    // judged where hb-bench has a core of its own (when the machine has two), the shared-core
    // run reported beside it.
    let judged_mode = if apart.is_some() {
        RelayMode::FixedApart
    } else {
        RelayMode::Fixed
    };
    let p99 = |rs: &[RelayRun]| -> Vec<f64> {
        rs.iter()
            .map(|r| r.lat.map_or(f64::NAN, |s| s.p99))
            .collect()
    };
    for mode in [RelayMode::Fixed, RelayMode::FixedApart] {
        let fixed = |k: Kind| results.get(&(k, p.fixed_receivers, mode));
        let redis_p99 = fixed(Kind::Redis).map(|rs| p99(rs));
        let placement = match (mode, &apart) {
            (RelayMode::FixedApart, Some(a)) => format!(
                " (hb-bench on CPU {}, the server on CPU {})",
                a.bench_cpu, a.server_cpus
            ),
            _ => " (cores shared with hb-bench)".to_string(),
        };
        for engine in Engine::ALL {
            let hb = Kind::Hb(engine);
            let Some(rs) = fixed(hb) else {
                continue;
            };
            let missing: Vec<f64> = rs.iter().map(|r| (r.lost + r.unsent) as f64).collect();
            let ratio = redis_p99.as_ref().map(|red| {
                p99(rs)
                    .iter()
                    .zip(red)
                    .map(|(a, b)| a / b.max(1e-9))
                    .collect::<Vec<f64>>()
            });
            let is_target = engine == Engine::Events && mode == judged_mode;
            let _ = writeln!(
                targets,
                "- {} at {} msg/s to {} receivers{placement}: messages lost or not sent {}{}; \
                 p99 {} µs, / Redis's p99 = {}{}",
                engine.label(),
                fmt_rate(p.fixed_rate),
                p.fixed_receivers,
                verdict::cell(&missing, 0),
                if is_target {
                    format!(" (target 0 — {})", judge(&missing, Goal::AtMost(0.0), min))
                } else {
                    String::new()
                },
                verdict::cell(&p99(rs), 0),
                ratio
                    .as_ref()
                    .map_or("- (Redis not run)".into(), |r| format!(
                        "{}×",
                        verdict::cell(r, 2)
                    )),
                match (&ratio, is_target) {
                    (Some(r), true) =>
                        format!(" (target ≤ 1.0× — {})", judge(r, Goal::AtMost(1.0), min)),
                    (None, true) => " (target ≤ 1.0× — not judged)".into(),
                    _ if engine == Engine::Events => " (for the record)".into(),
                    _ => String::new(),
                }
            );
            let tag = if mode == RelayMode::FixedApart {
                "_apart"
            } else {
                ""
            };
            numbers.push((
                format!("{}_fixed{tag}_p99_us", hb.short()),
                Spread::of(&p99(rs)).map_or(f64::NAN, |s| s.median),
            ));
            numbers.push((
                format!("{}_fixed{tag}_missing", hb.short()),
                missing.iter().sum(),
            ));
        }
    }
    if let Some(why) = skipped.get(&Kind::Hb(Engine::Events)) {
        let _ = writeln!(
            targets,
            "- {} at {} msg/s to {} receivers: SKIPPED ({why}) (targets: every message \
             delivered, p99 ≤ Redis's — not judged)",
            Engine::Events.label(),
            fmt_rate(p.fixed_rate),
            p.fixed_receivers
        );
    }
    body.push_str(&targets);
    let _ = writeln!(body, "\n![relay]({}/relay.svg)", ctx.report.svg_link);
    let mut bars = Vec::new();
    for kind in KINDS {
        for &(n, mode) in &runs {
            if let Some(s) = results
                .get(&(kind, n, mode))
                .and_then(|rs| Spread::of(&rs.iter().map(|r| r.msgs_per_s).collect::<Vec<_>>()))
            {
                let tag = match mode {
                    RelayMode::Windowed => "",
                    RelayMode::Stuck => "+stuck",
                    RelayMode::Fixed => "@fixed",
                    RelayMode::FixedApart => "@fixed-apart",
                };
                bars.push((format!("{} 1→{n}{tag}", kind.short()), s.median));
            }
        }
    }
    plot::bars(
        &ctx.report.svg_dir.join("relay.svg"),
        "relay: messages/s to the least-served receiver (median of repeats)",
        "messages/s",
        &bars,
    )?;
    ctx.report.section(title, &body)?;
    let median = |key: (Kind, usize, RelayMode), f: fn(&RelayRun) -> f64| {
        results
            .get(&key)
            .and_then(|rs| Spread::of(&rs.iter().map(f).collect::<Vec<_>>()))
            .map(|s| s.median)
    };
    for engine in Engine::ALL {
        let hb = Kind::Hb(engine);
        let key = (hb, stuck_n, RelayMode::Windowed);
        let s = hb.short();
        if let Some(v) = median(key, |r| r.msgs_per_s) {
            numbers.push((format!("{s}_1to{stuck_n}_msgs_per_s"), v));
        }
        if let Some(v) = median(key, |r| r.lat.map_or(f64::NAN, |s| s.p99)) {
            numbers.push((format!("{s}_1to{stuck_n}_p99_us"), v));
        }
        if let Some(v) = median((hb, stuck_n, RelayMode::Stuck), |r| r.msgs_per_s) {
            numbers.push((format!("{s}_stuck_msgs_per_s"), v));
        }
        if let Some(rs) = results.get(&key) {
            numbers.push((format!("{s}_lost"), rs.iter().map(|r| r.lost as f64).sum()));
        }
    }
    if let Some(v) = median((Kind::Redis, p.fixed_receivers, RelayMode::Fixed), |r| {
        r.lat.map_or(f64::NAN, |s| s.p99)
    }) {
        numbers.push(("redis_fixed_p99_us".into(), v));
    }
    Ok(Outcome {
        title: title.into(),
        numbers,
    })
}

/// `10000` → `10,000` (rates in prose).
pub(super) fn fmt_rate(r: f64) -> String {
    let n = r.round() as u64;
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_survive_every_framing() {
        let m = mark(42, 123456);
        assert_eq!(m.len(), 64);
        assert_eq!(parse_mark(m.as_bytes()), Some((42, 123456)));
        assert_eq!(
            parse_mark(format!("MSG sender {m}").as_bytes()),
            Some((42, 123456))
        );
        assert_eq!(
            parse_mark(format!("<user3> {m}").as_bytes()),
            Some((42, 123456))
        );
        assert_eq!(parse_mark(b"$52"), None);
        assert_eq!(parse_mark(b"JOINED Tom"), None);
        assert_eq!(parse_mark(b"T1:2 T3:4#"), Some((3, 4)));
        let f = frame(Kind::Redis, &m);
        assert!(f.starts_with(b"*3\r\n$7\r\nPUBLISH\r\n"));
    }

    #[test]
    fn cpu_per_heartbeat_needs_a_heartbeat() {
        assert_eq!(us_per_beat(0.08, 8000), 10.0);
        assert!(us_per_beat(0.5, 0).is_nan());
    }

    #[test]
    fn the_fixed_schedule_is_rate_times_elapsed() {
        assert_eq!(due_by(Duration::ZERO, 10_000.0), 0);
        assert_eq!(due_by(Duration::from_micros(99), 10_000.0), 0);
        assert_eq!(due_by(Duration::from_micros(100), 10_000.0), 1);
        assert_eq!(due_by(Duration::from_millis(1500), 10_000.0), 15_000);
        assert_eq!(fmt_rate(10_000.0), "10,000");
        assert_eq!(fmt_rate(999.0), "999");
        assert_eq!(fmt_rate(1_234_567.0), "1,234,567");
    }
}
