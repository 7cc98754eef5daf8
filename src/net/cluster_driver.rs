//! The engines' side of one room across several servers (`--broker redis://…`,
//! docs/CLUSTER.md): one thread between the hub's [`ClusterNode`] and the Redis
//! [`Link`]. Plumbing only: every decision is the node's or the hub's.
//!
//! ```text
//!  engine threads / tasks ── pump / leave ──► Hub (ClusterNode inside) ◄── driver thread
//!        (ring the bell after a room op)           │ poll_command          │ LinkReport
//!                                                  ▼                       │
//!                                       Link (hb-broker thread) ── Redis ──┘
//! ```
//!
//! The driver wakes on its bell (rung by the link when it has reports, and by the engines
//! after a room operation that may have queued commands) or at the node's next deadline. Each
//! turn, under the chat lock: the link's reports go into the node (`handle_*`), timers run,
//! the hub applies what the node decided to the local members (deliveries go through the same
//! budgets and batches as local messages), the node's commands go to the link. Then the
//! senders held for the room are woken. The driver never blocks on Redis: the link's queues
//! are bounded and written with `try_send`; commands the link cannot take yet wait here, in
//! order, for the next turn.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender};

use crate::config::server::Broker;
use crate::config::{Mode, ServerSettings};
use crate::core::cluster::{BusCommand, ClusterConfig, ClusterNode, NodeId};
use crate::net::broker::{BrokerError, Link, LinkFull, LinkReport};
use crate::net::events::{Event, EventLog};
use crate::net::relay::{Chat, Member, Members, Stage};

/// How soon a delivery that waits for a local member's room is offered again.
const RETRY: Duration = Duration::from_millis(5);

/// Commands waiting for the link beyond which the driver gives up on it: it drops them and
/// bounces the link, whose `Down` makes the node queue its room messages (bounded) and whose
/// `Up` re-syncs everything the dropped commands would have said. Far above what a healthy
/// link ever holds (the node's in-flight window is 256 messages).
const BACKLOG_LIMIT: usize = 16_384;

/// Longest the driver sleeps with nothing to do (a safety net for a lost wake-up).
const IDLE_TURN: Duration = Duration::from_millis(500);

/// The room key prefix in Redis (one hash slot: docs/CLUSTER.md, Redis data model).
pub const ROOM_KEYS: &str = "hb:{hb:room}";

/// What the driver needs of an engine.
pub trait ChatHost: Send + Sync + 'static {
    /// The engine's connection type.
    type Conn: Member + Send + Sync + 'static;
    /// The room, locked.
    fn chat(&self) -> Option<MutexGuard<'_, Chat<Self::Conn>>>;
    /// Wakes the senders held back for the room (they offer their line again).
    fn caught_up(&self);
    /// The event log.
    fn log(&self) -> &EventLog;
}

/// The bell that wakes the driver: rung by the link (reports) and by the engines (a room
/// operation that may have queued commands). One pending ring is enough.
#[derive(Debug, Clone)]
pub struct Bell(Sender<()>);

impl Bell {
    /// Wakes the driver (never blocks).
    pub fn ring(&self) {
        let _ = self.0.try_send(());
    }
}

/// A room that is one node of a cluster, before its driver runs: the node to put in the
/// hub, the bell for the chat and the link.
pub struct Prepared {
    /// The node, for `Hub::with_cluster` (taken out by [`chat_for`]).
    pub node: Option<ClusterNode>,
    /// For `Chat::cluster_bell`.
    pub bell: Bell,
    rx: Receiver<()>,
    link: Link,
}

/// Starts the link to `url` (it connects in the background: Redis may be down) and makes
/// the node. `history` bounds the Redis stream like the local history.
pub fn prepare(url: &str, node_timeout: Duration, history: usize) -> Result<Prepared, BrokerError> {
    let (tx, rx) = bounded(1);
    let bell = Bell(tx);
    let ring = bell.clone();
    let link = Link::start(
        url,
        ROOM_KEYS,
        node_timeout,
        history,
        Arc::new(move || ring.ring()),
    )?;
    let id = NodeId::new(&random_id()).unwrap_or_else(|| unreachable!("16 base-36 digits"));
    let node = ClusterNode::new(
        id,
        ClusterConfig {
            node_timeout,
            backfill: history,
            ..ClusterConfig::default()
        },
        Instant::now(),
    );
    Ok(Prepared {
        node: Some(node),
        bell,
        rx,
        link,
    })
}

/// What [`chat_for`] gives an engine: its room (chat mode only) and, with a broker, the
/// driver to start.
pub type ChatParts<C> = (Option<Mutex<Chat<C>>>, Option<Prepared>);

/// The chat room of a server starting with `settings` (none unless `--mode chat`): with a
/// Redis broker, one node of a cluster, whose driver [`start`] runs once the engine shares
/// its state.
pub fn chat_for<C>(
    settings: &ServerSettings,
) -> Result<ChatParts<C>, crate::net::server::ServerError> {
    if settings.mode != Mode::Chat {
        return Ok((None, None));
    }
    let mut chat = Chat::starting(settings.history, settings.history_bytes);
    let Broker::Redis(url) = &settings.broker else {
        return Ok((Some(Mutex::new(chat)), None));
    };
    let mut prepared = prepare(url, settings.node_timeout, settings.history)
        .map_err(crate::net::server::ServerError::Broker)?;
    if let Some(node) = prepared.node.take() {
        chat.hub = std::mem::take(&mut chat.hub).with_cluster(node);
    }
    chat.cluster_bell = Some(prepared.bell.clone());
    Ok((Some(Mutex::new(chat)), Some(prepared)))
}

/// An engine's cluster driver: prepared at bind, running from `run` until shutdown.
pub enum ClusterState {
    /// Not running yet.
    Prepared(Box<Prepared>),
    /// Running.
    Running(Driver),
}

/// Starts the prepared driver in `slot` for `host` (nothing without a broker).
pub fn start<H: ChatHost>(
    slot: &Mutex<Option<ClusterState>>,
    host: &Arc<H>,
) -> Result<(), crate::net::server::ServerError> {
    let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(ClusterState::Prepared(p)) = slot.take() {
        let d = Driver::start(host.clone(), *p)
            .map_err(|e| crate::net::server::ServerError::Broker(BrokerError::Spawn(e)))?;
        *slot = Some(ClusterState::Running(d));
    }
    Ok(())
}

/// Asks the driver in `slot`, if any, to say the room's goodbyes and stop; [`stop`] waits.
pub fn begin_stop(slot: &Mutex<Option<ClusterState>>) {
    if let Some(ClusterState::Running(d)) = &*slot.lock().unwrap_or_else(|p| p.into_inner()) {
        d.begin_shutdown();
    }
}

/// Stops the driver in `slot`, if any, and waits for it (bounded: see [`Driver::shutdown`]).
pub fn stop(slot: &Mutex<Option<ClusterState>>) {
    let state = slot.lock().unwrap_or_else(|p| p.into_inner()).take();
    match state {
        Some(ClusterState::Running(d)) => d.shutdown(),
        Some(ClusterState::Prepared(p)) => p.link.shutdown(),
        None => {}
    }
}

/// A node id: 16 random base-36 digits (a restarted server is a new node).
fn random_id() -> String {
    let mut out = String::new();
    while out.len() < 16 {
        let mut v = crate::net::os_random();
        for _ in 0..12.min(16 - out.len()) {
            out.push(char::from_digit((v % 36) as u32, 36).unwrap_or('0'));
            v /= 36;
        }
    }
    out
}

/// The running driver; [`Driver::shutdown`] stops it.
pub struct Driver {
    stop: Arc<AtomicBool>,
    bell: Bell,
    thread: Option<JoinHandle<()>>,
}

impl Driver {
    /// Runs the driver of `host`'s room (whose hub holds the prepared node) on its own
    /// thread.
    pub fn start<H: ChatHost>(host: Arc<H>, prepared: Prepared) -> std::io::Result<Driver> {
        let stop = Arc::new(AtomicBool::new(false));
        let bell = prepared.bell.clone();
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("hb-cluster".into())
            .stack_size(256 * 1024)
            .spawn(move || run(&*host, prepared.link, &prepared.rx, &stop2))?;
        Ok(Driver {
            stop,
            bell,
            thread: Some(thread),
        })
    }

    /// Asks the driver to stop after one last turn (the room's goodbyes go to the link,
    /// then the link closes), without waiting: the engine tells its clients meanwhile.
    pub fn begin_shutdown(&self) {
        self.stop.store(true, Ordering::Release);
        self.bell.ring();
    }

    /// Stops the driver ([`Driver::begin_shutdown`]) and waits for it; bounded (about 300 ms
    /// at worst after the request).
    pub fn shutdown(mut self) {
        self.begin_shutdown();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run<H: ChatHost>(host: &H, link: Link, bell: &Receiver<()>, stop: &AtomicBool) {
    let mut stage = Stage::default();
    let mut backlog: VecDeque<BusCommand> = VecDeque::new();
    let mut retry: Option<Instant> = None;
    let mut next: Option<Instant> = None;
    loop {
        let idle = Instant::now() + IDLE_TURN;
        let wake_at = [next, retry].into_iter().flatten().fold(idle, Instant::min);
        let _ = bell.recv_deadline(wake_at);
        let stopping = stop.load(Ordering::Acquire);
        let now = Instant::now();
        let Some(mut guard) = host.chat() else {
            return link.shutdown();
        };
        let chat = &mut *guard;
        while let Some(report) = link.try_recv() {
            apply(host.log(), chat, now, report);
        }
        chat.hub.handle_timeout(now);
        let done = {
            let mut mb = Members::new(&chat.conns, &mut stage);
            let done = chat.hub.handle_cluster(now, &mut mb);
            mb.flush(now);
            done
        };
        crate::net::relay::report(host.log(), &mut stage);
        retry = (!done).then_some(now + RETRY);
        chat.log_events(host.log());
        if chat.hub.take_evicted() {
            link.bounce();
        }
        while let Some(cmd) = chat.hub.poll_command() {
            backlog.push_back(cmd);
        }
        if backlog.len() > BACKLOG_LIMIT {
            // Bounded here too: a link this far behind is as good as down.
            backlog.clear();
            link.bounce();
        }
        next = chat.hub.poll_timeout();
        drop(guard);
        // In order; what the link cannot take yet waits for the next turn (its queue is
        // bounded: a Redis that is slow holds this node's senders through the node's
        // in-flight window, never memory here beyond the node's own bounds).
        while let Some(cmd) = backlog.pop_front() {
            if let Err(LinkFull(cmd)) = link.send(cmd) {
                backlog.push_front(cmd);
                retry = Some(now + RETRY);
                break;
            }
        }
        host.caught_up();
        if stopping {
            // The goodbyes (`handle_shutdown` queued a leave per member) get a moment to
            // reach Redis; the other nodes would otherwise wait `--node-timeout`.
            let until = Instant::now() + Duration::from_millis(100);
            while !backlog.is_empty() && Instant::now() < until {
                if let Some(cmd) = backlog.pop_front() {
                    if let Err(LinkFull(cmd)) = link.send(cmd) {
                        backlog.push_front(cmd);
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(50));
            return link.shutdown();
        }
    }
}

/// Feeds one link report into the hub's node.
fn apply<C: Member>(log: &EventLog, chat: &mut Chat<C>, now: Instant, report: LinkReport) {
    let Some(c) = chat.hub.cluster_mut() else {
        return;
    };
    match report {
        LinkReport::Up { stream, fresh_id } => c.handle_link_up(now, stream, fresh_id),
        LinkReport::Down { error } => {
            log.emit(Event::BrokerDown { error });
            c.handle_link_down(now);
        }
        LinkReport::Bus(msg) => c.handle_bus(now, msg),
        LinkReport::Trimmed { first } => c.handle_stream_trimmed(now, first),
        LinkReport::NodeSeen { age, node } => {
            c.handle_node_seen(now.checked_sub(age).unwrap_or(now), &node)
        }
        LinkReport::Claim { conn, name, won } => c.handle_claim(now, conn, &name, won),
        LinkReport::Reap { node, won } => c.handle_reap(now, &node, won),
        LinkReport::BadMessage(why) => log.emit(Event::BrokerBadMessage { why }),
    }
}
