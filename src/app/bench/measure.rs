//! The five measurements. Each starts its own peer processes, drives them with one
//! [`LoadGen`], prints and reports its numbers, draws its SVG, and stops everything it
//! started before returning (peers are killed on drop, even on an early error).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use super::peers::{on_path, resp_command, Peer};
use super::plot::{self, Panel};
use super::procinfo::{self, Machine, Sample};
use super::stats::{self, Summary};
use super::{BenchError, Outcome, Plan, Progress, Report};
use crate::net::loadgen::{LoadGen, State};

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

fn yes(ok: bool) -> &'static str {
    if ok {
        "**met**"
    } else {
        "**not met**"
    }
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

fn hold_table(rows: &[HoldRow]) -> String {
    let mut t = String::from(
        "| tried | held | refused (END server-full) | RSS MiB | RSS/conn KiB | threads | maps | CPU % of one core | heartbeats answered |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        let _ = writeln!(
            t,
            "| {} | {} | {} | {:.1} | {:.1} | {} | {} | {:.2} | {} |",
            r.tried,
            r.held,
            r.refused,
            r.rss_kib as f64 / 1024.0,
            r.per_conn_kib,
            r.threads,
            r.maps,
            r.cpu_pct,
            r.pongs
        );
    }
    t
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

/// Measurement 1, connections held: RSS per connection, threads, CPU in an idle window,
/// refusal at capacity; then the same with `--max-conns` raised.
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
    if let Some(m) = p.stock_max_conns {
        stock.extend(["--max-conns".into(), m.to_string()]);
    }
    let args: Vec<&str> = stock.iter().map(String::as_str).collect();
    let mut srv = Peer::hb_server(ctx.server, &args, ctx.scratch)?;
    std::thread::sleep(Duration::from_millis(200));
    let base = sample(&mut srv, "baseline")?;
    let mut lg = lg_new()?;
    let mut rows = Vec::new();
    let mut tried = 0;
    for &step in &p.steps {
        let add = step.saturating_sub(tried);
        connect(&mut lg, srv.addr, add, true, &format!("connect {step}"))?;
        tried = step;
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
    let stock_refusals = refusal_kinds(&srv);
    let stock_cmd = srv.command.clone();
    lg.close_all();
    drop(lg);
    drop(srv);

    // Raised limits: as many as this machine can spare process ids for, in five chunks.
    let spare = spare_threads(ctx.machine) / 2;
    let fd_room = (ctx.machine.nofile as usize).saturating_sub(200);
    let cap = p.capacity_try.min(spare).min(fd_room);
    let max_conns = cap.saturating_sub(cap / 20).max(1);
    let raised: Vec<String> = stock
        .iter()
        .take(6)
        .cloned()
        .chain(["--max-conns".into(), max_conns.to_string()])
        .collect();
    let args: Vec<&str> = raised.iter().map(String::as_str).collect();
    let mut srv = Peer::hb_server(ctx.server, &args, ctx.scratch)?;
    std::thread::sleep(Duration::from_millis(200));
    let base2 = sample(&mut srv, "baseline")?;
    let mut lg = lg_new()?;
    let mut rows2 = Vec::new();
    // First the 8k step with the full window (the CPU target is about 8k idle connections),
    // then halfway to the cap and the cap itself with short windows.
    let first = p.raised_first.min(cap.saturating_sub(1)).max(1);
    let mut targets = vec![first, (first + cap) / 2, cap];
    targets.dedup();
    let mut aborted = None;
    for (i, &target) in targets.iter().enumerate() {
        let window = if i == 0 {
            p.hold
        } else {
            (p.hold / 3).max(Duration::from_millis(300))
        };
        let add = target - tried_total(&lg);
        let began = Instant::now();
        connect(&mut lg, srv.addr, add, true, &format!("connect {target}"))?;
        let beat = secs_arg(p.hold_interval);
        if i == 0 && p.hold < beat * 3 {
            // A short window would see no heartbeat at all (the first comes one idle period
            // after a connection's last byte): start it when the first round begins, so it
            // sees one heartbeat for (nearly) every connection.
            let wait = (began + beat).saturating_duration_since(Instant::now());
            idle(&mut lg, wait, "wait for heartbeats")?;
        }
        match hold_row(
            &mut lg,
            &mut srv,
            &base2,
            target,
            window,
            &format!("hold {target}"),
        ) {
            Ok(row) => rows2.push(row),
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
    let alive = srv.exited().is_none();
    let raised_refusals = refusal_kinds(&srv);
    let raised_cmd = srv.command.clone();
    lg.close_all();
    drop(lg);
    drop(srv);

    let all: Vec<&HoldRow> = rows.iter().chain(rows2.iter()).collect();
    let max_held = all.iter().map(|r| r.held).max().unwrap_or(0);
    let at8k = rows2
        .iter()
        .chain(rows.iter())
        .filter(|r| r.held >= 7900)
        .map(|r| r.per_conn_kib)
        .fold(f64::NAN, f64::min);
    let last_stock = rows.last();
    let maps_per_conn = rows2
        .last()
        .map(|r| r.maps as f64 / r.held.max(1) as f64)
        .unwrap_or(f64::NAN);
    let per_conn = rows2
        .last()
        .or(last_stock)
        .map_or(f64::NAN, |r| r.per_conn_kib);
    let row8k = rows2.iter().chain(rows.iter()).find(|r| r.held >= 7900);
    let cpu8k = row8k.map_or(f64::NAN, |r| r.cpu_pct);
    let beats8k = row8k.map_or(0, |r| r.pongs);
    // Steady state at interval I: each connection costs one heartbeat per I. The window's
    // CPU per heartbeat (idle cost included, so an overestimate) times 8k / I.
    let beat_s = secs_arg(p.hold_interval).as_secs_f64();
    let steady8k = row8k
        .filter(|r| r.pongs > 0)
        .map(|r| r.cpu_pct / 100.0 * r.wall_s / r.pongs as f64 * r.held as f64 / beat_s * 100.0);

    let svg = ctx.report.svg_dir.join("connections.svg");
    let pts = |rows: &[HoldRow], f: fn(&HoldRow) -> f64| -> Vec<(f64, f64)> {
        rows.iter().map(|r| (r.held as f64, f(r))).collect()
    };
    plot::panels(
        &svg,
        &[
            Panel {
                title: "server RSS vs connections".into(),
                x_label: "connections held".into(),
                y_label: "RSS MiB".into(),
                series: vec![
                    ("stock".into(), pts(&rows, |r| r.rss_kib as f64 / 1024.0)),
                    (
                        "raised --max-conns".into(),
                        pts(&rows2, |r| r.rss_kib as f64 / 1024.0),
                    ),
                ],
            },
            Panel {
                title: "server CPU in the idle window".into(),
                x_label: "connections held".into(),
                y_label: "% of one core".into(),
                series: vec![
                    ("stock".into(), pts(&rows, |r| r.cpu_pct)),
                    ("raised --max-conns".into(), pts(&rows2, |r| r.cpu_pct)),
                ],
            },
        ],
    )?;

    let mut body = String::new();
    let _ = writeln!(
        body,
        "Each connection answers heartbeats (one thread in hb-bench drives all of them). \
         Per step: more connections, then an idle window of {:.1} s in which the server's \
         CPU is measured; RSS per connection is (RSS − RSS with no client) / held.\n\n\
         **Stock limits** (`{stock_cmd}`):\n\n{}\nRefusals: {stock_refusals}.\n\n\
         **Raised `--max-conns`** (`{raised_cmd}`; attempts capped at {cap} so the server's \
         2 threads per connection leave process ids for the rest of the machine, and by \
         `ulimit -n`):\n\n{}\nRefusals: {raised_refusals}. Server still running after the \
         refusals: {}.\n{}",
        p.hold.as_secs_f64(),
        hold_table(&rows),
        hold_table(&rows2),
        if alive { "yes" } else { "**no**" },
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
         - ≥ 8,000 concurrent monitored connections on stock limits: held {} with the stock \
           server, {max_held} with `--max-conns` raised and the OS limits stock — {}.\n\
         - ≤ 32 KiB RSS per connection: {per_conn:.1} KiB at the largest step ({}).\n\
         - ≤ 1% of one core at 8k idle connections, interval {} s: {} ({}).\n\
         - Memory maps: {maps_per_conn:.2} per connection (2 threads; each has its stack and \
           guard page, plus the signal stack Rust's std maps for stack-overflow reports and \
           its guard page) against vm.max_map_count {}: at most ~{:.0} connections \
           before thread creation fails; kernel.pid_max {} caps it near {} (2 threads each); \
           `ulimit -n` {} caps it near {}. Raising `sysctl vm.max_map_count` (and \
           `kernel.pid_max`, `ulimit -n`) moves the ceiling. At the ceiling: {}.\n\n\
         ![connections]({}/connections.svg)\n",
        last_stock.map_or(0, |r| r.held),
        yes(max_held >= 8000),
        yes(per_conn <= 32.0),
        p.hold_interval,
        if cpu8k.is_finite() {
            format!(
                "{cpu8k:.2}% over the window, which saw {beats8k} heartbeats; per heartbeat \
                 that is a steady state of {} of one core (count 1: one heartbeat per \
                 connection per interval; the default count 3 has idle 30 s and a third of \
                 the heartbeats)",
                steady8k.map_or("n/a".into(), |v| format!("{v:.2}%"))
            )
        } else {
            "n/a: 8k connections were never held at once".into()
        },
        if beats8k == 0 {
            "**not shown**: no heartbeat fell in the window"
        } else {
            yes(steady8k.unwrap_or(cpu8k) <= 1.0)
        },
        ctx.machine.max_map_count,
        ctx.machine.max_map_count as f64 / maps_per_conn.max(1.0),
        ctx.machine.pid_max,
        ctx.machine.pid_max / 2,
        ctx.machine.nofile,
        ctx.machine.nofile.saturating_sub(10),
        if aborted.is_some() {
            "**the server aborted** (see above) — the never-abort rule is **not met**"
        } else if alive {
            "refusals with `END server-full`, no abort (**met**)"
        } else {
            "**the server died**"
        },
        ctx.report.svg_link,
    );
    ctx.report.section(title, &body)?;
    let mut numbers = vec![
        ("max_held".into(), max_held as f64),
        ("rss_per_conn_kib".into(), per_conn),
    ];
    if let Some(r) = last_stock {
        numbers.push(("stock_held".into(), r.held as f64));
        numbers.push(("stock_refused".into(), r.refused as f64));
        numbers.push(("stock_cpu_pct".into(), r.cpu_pct));
        numbers.push(("stock_threads".into(), r.threads as f64));
    }
    if at8k.is_finite() {
        numbers.push(("rss_per_conn_kib_8k".into(), at8k));
    }
    if max_held == 0 {
        numbers.clear();
    }
    Ok(Outcome {
        title: title.into(),
        numbers,
    })
}

fn tried_total(lg: &LoadGen) -> usize {
    lg.conns().len()
}

/// 2. CPU microseconds per heartbeat round trip at many connections and a short interval.
pub fn heartbeat_overhead(ctx: &Ctx) -> Result<Outcome, BenchError> {
    let p = ctx.plan;
    let title = "2. Heartbeat overhead";
    eprintln!("== {title}");
    let interval: f64 = p.hb_interval.parse().unwrap_or(1.0);
    let mut rows = Vec::new();
    let mut cmd = String::new();
    for &n in &p.hb_conns {
        let max = (n + 100).to_string();
        let mut srv = Peer::hb_server(
            ctx.server,
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
            ctx.scratch,
        )?;
        cmd = srv.command.clone();
        let mut lg = lg_new()?;
        let (_, rep) = connect(&mut lg, srv.addr, n, true, &format!("connect {n}"))?;
        // Let every connection's first round start before measuring.
        lg.idle_for(Duration::from_secs_f64(interval * 1.5))
            .map_err(io_err("polling"))?;
        let s0 = sample(&mut srv, "heartbeat window")?;
        let p0 = lg.total_pongs();
        let t0 = Instant::now();
        idle(&mut lg, p.hb_window, &format!("heartbeats at {n}"))?;
        let wall = t0.elapsed();
        let s1 = sample(&mut srv, "heartbeat window")?;
        let pongs = lg.total_pongs() - p0;
        let cpu = procinfo::cpu_secs(&s0, &s1);
        rows.push((
            rep.admitted,
            pongs as f64 / wall.as_secs_f64(),
            cpu * 100.0 / wall.as_secs_f64(),
            if pongs > 0 {
                cpu * 1e6 / pongs as f64
            } else {
                f64::NAN
            },
        ));
        lg.close_all();
    }
    let mut body = format!(
        "Every connection answers each `PING` at once, so with idle = interval = {} s and \
         count 1 each one costs a heartbeat round trip per interval (PING written, PONG read, \
         two event-log lines). CPU is the server's utime+stime over a {:.1} s window divided \
         by the heartbeats answered in it. Command: `{cmd}`.\n\n\
         | connections | heartbeats/s | server CPU % of one core | CPU µs per heartbeat |\n\
         |---:|---:|---:|---:|\n",
        p.hb_interval,
        p.hb_window.as_secs_f64()
    );
    for r in &rows {
        let _ = writeln!(body, "| {} | {:.0} | {:.2} | {:.1} |", r.0, r.1, r.2, r.3);
    }
    let us = rows.last().map_or(f64::NAN, |r| r.3);
    let _ = writeln!(
        body,
        "\nAt 8,000 connections with interval 10 s and count 1 (one heartbeat per connection \
         per 10 s) this costs about {:.2}% of one core for the heartbeats themselves; with the \
         default count 3 (idle 30 s) a third of that.\n\n![heartbeat overhead]({}/heartbeat.svg)\n",
        800.0 * us / 1e4,
        ctx.report.svg_link
    );
    plot::bars(
        &ctx.report.svg_dir.join("heartbeat.svg"),
        "server CPU per heartbeat round trip",
        "µs per heartbeat",
        &rows
            .iter()
            .map(|r| (format!("{} conns", r.0), r.3))
            .collect::<Vec<_>>(),
    )?;
    ctx.report.section(title, &body)?;
    let numbers = if us.is_finite() {
        vec![
            ("cpu_us_per_heartbeat".into(), us),
            ("heartbeats_per_s".into(), rows.last().map_or(0.0, |r| r.1)),
        ]
    } else {
        Vec::new()
    };
    Ok(Outcome {
        title: title.into(),
        numbers,
    })
}

fn secs_arg(s: &str) -> Duration {
    Duration::from_secs_f64(s.parse().unwrap_or(1.0))
}

/// 3. Ghost detection latency: close time minus the expected deadline.
pub fn detection(ctx: &Ctx) -> Result<Outcome, BenchError> {
    let p = ctx.plan;
    let title = "3. Ghost detection latency";
    eprintln!("== {title}");
    let interval = secs_arg(p.ghost_interval);
    let idle = interval * p.ghost_count;
    let idle_arg = format!("{}", idle.as_secs_f64());
    let count = p.ghost_count.to_string();
    let max = (p.ghosts + 100).to_string();
    let mut srv = Peer::hb_server(
        ctx.server,
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
        ctx.scratch,
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
    let missing = expected.len() - late_ms.len();
    lg.close_all();
    drop(srv);
    let s = stats::summarize(&mut late_ms);
    let svg = ctx.report.svg_dir.join("detection.svg");
    plot::panels(
        &svg,
        &[Panel {
            title: format!("{} ghosts: close time − deadline", expected.len()),
            x_label: "ms after the deadline".into(),
            y_label: "fraction closed".into(),
            series: vec![("hb-server".into(), stats::cdf(&late_ms, 200))],
        }],
    )?;
    let mut body = format!(
        "{} ghost clients (admitted {} of {}) each send one line at t and then stop \
         answering (they keep reading, so the `END` is seen). Server: interval {} s, count {}, \
         idle {} s, so the deadline is t + idle + count × interval = t + {:.2} s. Latency is \
         when hb-bench read `END heartbeat-timeout` minus that deadline (it includes the \
         one-way delivery of the last line and of the END, and hb-bench's own scheduling on \
         the same cores).\n\n",
        expected.len(),
        rep.admitted,
        p.ghosts,
        p.ghost_interval,
        p.ghost_count,
        idle.as_secs_f64(),
        budget.as_secs_f64()
    );
    match s {
        Some(s) => {
            let _ = writeln!(
                body,
                "| ghosts closed | END heartbeat-timeout | never closed | min ms | p50 ms | p99 ms | max ms |\n\
                 |---:|---:|---:|---:|---:|---:|---:|\n\
                 | {} | {timeouts} | {missing} | {:.1} | {:.1} | {:.1} | {:.1} |\n\n\
                 Targets: p99 ≤ 50 ms after the deadline — {}; max ≤ 100 ms — {}.\n\n\
                 ![detection]({}/detection.svg)\n",
                s.n,
                s.min,
                s.p50,
                s.p99,
                s.max,
                yes(s.p99 <= 50.0),
                yes(s.max <= 100.0),
                ctx.report.svg_link
            );
        }
        None => body.push_str("No ghost was closed: **no numbers**.\n"),
    }
    ctx.report.section(title, &body)?;
    Ok(Outcome {
        title: title.into(),
        numbers: s.map_or_else(Vec::new, |s| {
            vec![
                ("closed".into(), s.n as f64),
                ("p50_ms".into(), s.p50),
                ("p99_ms".into(), s.p99),
                ("max_ms".into(), s.max),
            ]
        }),
    })
}

/// 4. Echo round trip with 1, 10, 100 concurrent clients.
pub fn echo(ctx: &Ctx) -> Result<Outcome, BenchError> {
    let p = ctx.plan;
    let title = "4. Echo round trip";
    eprintln!("== {title}");
    let mut srv = Peer::hb_server(ctx.server, &[], ctx.scratch)?;
    let cmd = srv.command.clone();
    let mut rows: Vec<(usize, Summary, f64)> = Vec::new();
    let mut cdfs = Vec::new();
    for &c in &p.echo_clients {
        let mut lg = lg_new()?;
        let (ids, _) = connect(&mut lg, srv.addr, c, true, &format!("connect {c}"))?;
        let mut sent: HashMap<usize, Instant> = HashMap::new();
        for &id in &ids {
            lg.send(id, b"MSG ping\n");
            sent.insert(id, Instant::now());
        }
        let warm = Instant::now() + Duration::from_millis(100);
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
                lg.send(inc.id, b"MSG ping\n");
                sent.insert(inc.id, Instant::now());
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
            cdfs.push((format!("{c} client(s)"), stats::cdf(&rtts, 200)));
            rows.push((c, s, rate));
        }
        lg.close_all();
        srv.check_alive("echo")?;
    }
    drop(srv);
    let mut body = format!(
        "Closed loop: each client sends `MSG ping`, waits for `ECHO ping`, sends the next. \
         {:.1} s per client count after 100 ms of warm-up; hb-bench and the server share \
         the machine's cores. Command: `{cmd}`.\n\n\
         | clients | round trips | p50 µs | p99 µs | max µs | messages/s |\n|---:|---:|---:|---:|---:|---:|\n",
        p.echo_window.as_secs_f64()
    );
    for (c, s, rate) in &rows {
        let _ = writeln!(
            body,
            "| {c} | {} | {:.0} | {:.0} | {:.0} | {rate:.0} |",
            s.n, s.p50, s.p99, s.max
        );
    }
    let one = rows.iter().find(|r| r.0 == 1).map(|r| r.1.p50);
    let _ = writeln!(
        body,
        "\nTarget: p50 ≤ 100 µs with one client — {} ({}).\n\n![echo]({}/echo.svg)\n",
        one.map_or("n/a".into(), |v| format!("{v:.0} µs")),
        yes(one.is_some_and(|v| v <= 100.0)),
        ctx.report.svg_link
    );
    plot::panels(
        &ctx.report.svg_dir.join("echo.svg"),
        &[Panel {
            title: "echo round trip CDF".into(),
            x_label: "µs".into(),
            y_label: "fraction".into(),
            series: cdfs,
        }],
    )?;
    ctx.report.section(title, &body)?;
    let mut numbers = Vec::new();
    for (c, s, rate) in &rows {
        numbers.push((format!("c{c}_p50_us"), s.p50));
        numbers.push((format!("c{c}_p99_us"), s.p99));
        numbers.push((format!("c{c}_msgs_per_s"), *rate));
    }
    Ok(Outcome {
        title: title.into(),
        numbers,
    })
}

/// The relay peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Hb,
    Ncat,
    Redis,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Self::Hb => "hb-server --mode chat",
            Self::Ncat => "ncat --chat",
            Self::Redis => "redis PUBLISH/SUBSCRIBE",
        }
    }
}

/// Finds `T<seq>:<nanos>#` in a line, whatever the peer wrapped around it.
pub fn parse_mark(line: &[u8]) -> Option<(u64, u64)> {
    let mut i = 0;
    while let Some(off) = line[i..].iter().position(|&b| b == b'T') {
        let start = i + off + 1;
        let rest = &line[start..];
        let d1 = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        if d1 > 0 && rest.get(d1) == Some(&b':') {
            let rest2 = &rest[d1 + 1..];
            let d2 = rest2.iter().take_while(|b| b.is_ascii_digit()).count();
            if d2 > 0 && rest2.get(d2) == Some(&b'#') {
                let seq = std::str::from_utf8(&rest[..d1]).ok()?.parse().ok()?;
                let ns = std::str::from_utf8(&rest2[..d2]).ok()?.parse().ok()?;
                return Some((seq, ns));
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
        Kind::Hb => format!("MSG {payload}\n").into_bytes(),
        Kind::Ncat => format!("{payload}\n").into_bytes(),
        Kind::Redis => resp_command(&[b"PUBLISH", b"bench", payload.as_bytes()]),
    }
}

/// The result of one relay run.
struct RelayRun {
    msgs_per_s: f64,
    lat: Option<Summary>,
    stuck_fate: Option<String>,
}

/// Messages in flight (sent, not yet at every receiver) at most.
const WINDOW: u64 = 64;

fn start_peer(kind: Kind, ctx: &Ctx) -> Result<Option<Peer>, BenchError> {
    Ok(Some(match kind {
        Kind::Hb => Peer::hb_server(
            ctx.server,
            &["--mode", "chat", "--max-conns", "1000"],
            ctx.scratch,
        )?,
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

fn relay_run(
    kind: Kind,
    peer: &mut Peer,
    receivers: usize,
    stuck: bool,
    window: Duration,
) -> Result<RelayRun, BenchError> {
    let mut lg = lg_new()?;
    let hello = kind == Kind::Hb;
    let (rx_ids, rep) = connect(
        &mut lg,
        peer.addr,
        receivers,
        hello,
        &format!("{} receivers", kind.name()),
    )?;
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
            Kind::Hb => lg.send(id, format!("JOIN r{i}\n").as_bytes()),
            Kind::Redis => lg.send(id, &resp_command(&[b"SUBSCRIBE", b"bench"])),
            Kind::Ncat => {}
        }
    }
    if kind == Kind::Hb {
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
    // Drain stray probes for a moment so they do not count.
    lg.idle_for(Duration::from_millis(100))
        .map_err(io_err("polling"))?;
    let mut got = vec![0u64; receivers];
    let mut lat = Vec::new();
    let mut seq = 0u64;
    let start = Instant::now();
    let end = start + window;
    let stuck_at = Instant::now();
    while Instant::now() < end {
        let min = got.iter().copied().min().unwrap_or(0);
        while seq - min < WINDOW && lg.unsent(sender) < 64 * 1024 {
            seq += 1;
            lg.send(sender, &frame(kind, &mark(seq, ns(Instant::now()))));
        }
        if lg.conn(sender).state == State::Closed {
            break;
        }
        for inc in lg
            .poll(Duration::from_millis(1))
            .map_err(io_err("polling"))?
        {
            let Some(&k) = index.get(&inc.id) else {
                continue;
            };
            if let Some((s, t)) = parse_mark(&inc.line) {
                if s > got[k] {
                    got[k] = s;
                    lat.push((ns(inc.at).saturating_sub(t)) as f64 / 1e3);
                }
            }
        }
    }
    let delivered = got.iter().copied().min().unwrap_or(0);
    let elapsed = start.elapsed();
    let stuck_fate = stuck_id.map(|id| {
        let c = lg.conn(id);
        let hup = c.hup_at.map(|t| (t - stuck_at).as_secs_f64());
        lg.set_reading(id, true);
        let _ = lg.idle_for(Duration::from_millis(300));
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
    })
}

/// 5. Relay throughput, 1 sender to N receivers, against ncat --chat and Redis pub/sub.
pub fn relay(ctx: &Ctx) -> Result<Outcome, BenchError> {
    let p = ctx.plan;
    let title = "5. Relay throughput";
    eprintln!("== {title}");
    let mut body = format!(
        "One sender, N receivers, at most {WINDOW} messages in flight (sent but not yet at \
         every receiver); {:.1} s per run (twice that with a stuck reader: one more receiver \
         that never reads, with a 4 KiB receive buffer); 64-byte payloads carrying a sequence number and \
         the send time, so delivery latency is measured at each receiver. messages/s counts \
         messages delivered to *every* receiver. Each run starts its peer afresh on \
         loopback. Peers are installed with `apt-get install ncat redis-server`.\n\n",
        p.relay_window.as_secs_f64()
    );
    let mut table = String::from(
        "| peer | receivers | stuck reader | messages/s | p50 µs | p99 µs | what the peer did with the stuck reader |\n\
         |---|---:|---|---:|---:|---:|---|\n",
    );
    let mut results: HashMap<(Kind, usize, bool), f64> = HashMap::new();
    let mut bars = Vec::new();
    let mut p99s = HashMap::new();
    let stuck_n = p.relay_receivers[0];
    for kind in [Kind::Hb, Kind::Ncat, Kind::Redis] {
        let mut runs: Vec<(usize, bool)> = p.relay_receivers.iter().map(|&n| (n, false)).collect();
        runs.push((stuck_n, true));
        for (n, stuck) in runs {
            let Some(mut peer) = start_peer(kind, ctx)? else {
                let line = format!(
                    "{}: not installed; skipped (`apt-get install {}`)",
                    kind.name(),
                    if kind == Kind::Ncat {
                        "ncat"
                    } else {
                        "redis-server"
                    }
                );
                eprintln!("hb-bench: {line}");
                let _ = writeln!(body, "- {line}");
                break;
            };
            if n == p.relay_receivers[0] && !stuck {
                let _ = writeln!(body, "- {}: `{}`", kind.name(), peer.command);
            }
            // The stuck reader's backlog takes a while to reach a peer's limit: give it
            // twice the window so what the peer does about it can be seen.
            let window = if stuck {
                p.relay_window * 2
            } else {
                p.relay_window
            };
            let r = relay_run(kind, &mut peer, n, stuck, window)?;
            drop(peer);
            let _ = writeln!(
                table,
                "| {} | {n} | {} | {:.0} | {} | {} | {} |",
                kind.name(),
                if stuck { "yes (+1)" } else { "no" },
                r.msgs_per_s,
                r.lat.map_or("-".into(), |s| format!("{:.0}", s.p50)),
                r.lat.map_or("-".into(), |s| format!("{:.0}", s.p99)),
                r.stuck_fate.as_deref().unwrap_or("")
            );
            results.insert((kind, n, stuck), r.msgs_per_s);
            if let Some(s) = r.lat {
                p99s.insert((kind, n, stuck), s.p99);
            }
            bars.push((
                format!(
                    "{} 1→{n}{}",
                    match kind {
                        Kind::Hb => "hb",
                        Kind::Ncat => "ncat",
                        Kind::Redis => "redis",
                    },
                    if stuck { "+stuck" } else { "" }
                ),
                r.msgs_per_s,
            ));
        }
    }
    body.push('\n');
    body.push_str(&table);
    let ratio = |a: (Kind, usize, bool), b: (Kind, usize, bool)| -> Option<f64> {
        Some(results.get(&a)? / results.get(&b)?.max(1e-9))
    };
    let hb10 = (Kind::Hb, stuck_n, false);
    let mut targets = String::from("\nRatios and targets:\n\n");
    for &n in &p.relay_receivers {
        for (other, goal) in [(Kind::Ncat, 1.0), (Kind::Redis, 0.5)] {
            if let Some(r) = ratio((Kind::Hb, n, false), (other, n, false)) {
                let _ = writeln!(
                    targets,
                    "- 1→{n}: hb-server / {} = {r:.2}×{}",
                    other.name(),
                    if n == stuck_n {
                        format!(" (target ≥ {goal}× — {})", yes(r >= goal))
                    } else {
                        String::new()
                    }
                );
            }
        }
    }
    for kind in [Kind::Hb, Kind::Ncat, Kind::Redis] {
        if let Some(r) = ratio((kind, stuck_n, true), (kind, stuck_n, false)) {
            let _ = writeln!(
                targets,
                "- {} with one stuck reader: {:.0}% of its 1→{stuck_n} throughput to the others{}",
                kind.name(),
                r * 100.0,
                if kind == Kind::Hb {
                    format!(" (target ≥ 90% — {})", yes(r >= 0.9))
                } else {
                    String::new()
                }
            );
        }
    }
    body.push_str(&targets);
    let _ = writeln!(body, "\n![relay]({}/relay.svg)", ctx.report.svg_link);
    plot::bars(
        &ctx.report.svg_dir.join("relay.svg"),
        "relay: messages/s delivered to every receiver",
        "messages/s",
        &bars,
    )?;
    ctx.report.section(title, &body)?;
    let mut numbers = Vec::new();
    if let Some(v) = results.get(&hb10) {
        numbers.push((format!("hb_1to{stuck_n}_msgs_per_s"), *v));
    }
    if let Some(v) = p99s.get(&hb10) {
        numbers.push((format!("hb_1to{stuck_n}_p99_us"), *v));
    }
    if let Some(v) = results.get(&(Kind::Hb, stuck_n, true)) {
        numbers.push(("hb_stuck_msgs_per_s".into(), *v));
    }
    for other in [Kind::Ncat, Kind::Redis] {
        if let Some(r) = ratio(hb10, (other, stuck_n, false)) {
            numbers.push((
                format!(
                    "ratio_vs_{}",
                    if other == Kind::Ncat { "ncat" } else { "redis" }
                ),
                r,
            ));
        }
    }
    Ok(Outcome {
        title: title.into(),
        numbers,
    })
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
}
