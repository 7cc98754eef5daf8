//! The Redis link (`net::broker::Link`) with a real `redis-server`: two in-process
//! `ClusterNode`s, each with its own link to the same Redis, driven by the loop an engine
//! would run (reports into `handle_*`, commands out with `send`, timeouts at
//! `poll_timeout`). Skipped when `redis-server` is not installed (a failure under CI).

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use tcp_heartbeat::core::cluster::{
    BusMsg, ClusterConfig, ClusterEvent, ClusterNode, JoinRoute, NodeId, Route,
};
use tcp_heartbeat::core::room::MemberId;
use tcp_heartbeat::core::wire::EndReason;
use tcp_heartbeat::net::broker::{Link, LinkReport};

use crate::support::{self, Redis, Watchdog};

/// The tests' node timeout (CLUSTER.md's N), short so a node death is seen quickly.
const NODE_TIMEOUT: Duration = Duration::from_millis(600);

/// One node as an engine would run it, minus the hub: what it delivered and reported.
struct Node {
    n: ClusterNode,
    link: Option<Link>,
    /// (sending node, name, text, offset, deliver).
    delivered: Vec<(NodeId, String, String, Option<u64>, bool)>,
    events: Vec<ClusterEvent>,
    downs: usize,
    ups: usize,
    bad: Vec<String>,
}

impl Node {
    fn start(redis: &Redis, room: &str, id: &str) -> Self {
        let cfg = ClusterConfig {
            node_timeout: NODE_TIMEOUT,
            ..ClusterConfig::default()
        };
        let wake: Arc<dyn Fn() + Send + Sync> = Arc::new(|| {});
        let link = Link::start(&redis.url(), room, NODE_TIMEOUT, 1000, wake).expect("link");
        Self {
            n: ClusterNode::new(NodeId::new(id).unwrap(), cfg, Instant::now()),
            link: Some(link),
            delivered: Vec::new(),
            events: Vec::new(),
            downs: 0,
            ups: 0,
            bad: Vec::new(),
        }
    }

    /// One turn of the engine's loop.
    fn pump(&mut self) {
        let Some(link) = &self.link else { return };
        let now = Instant::now();
        while let Some(r) = link.try_recv() {
            match r {
                LinkReport::Up { stream, fresh_id } => {
                    self.ups += 1;
                    self.n.handle_link_up(now, stream, fresh_id);
                }
                LinkReport::Down { .. } => {
                    self.downs += 1;
                    self.n.handle_link_down(now);
                }
                LinkReport::Bus(m) => self.n.handle_bus(now, m),
                LinkReport::Trimmed { first } => self.n.handle_stream_trimmed(now, first),
                LinkReport::NodeSeen { age, node } => {
                    if let Some(at) = now.checked_sub(age) {
                        self.n.handle_node_seen(at, &node);
                    }
                }
                LinkReport::Claim { conn, name, won } => self.n.handle_claim(now, conn, &name, won),
                LinkReport::Reap { node, won } => self.n.handle_reap(now, &node, won),
                LinkReport::BadMessage(m) => self.bad.push(m),
            }
        }
        if self.n.poll_timeout().is_some_and(|t| now >= t) {
            self.n.handle_timeout(now);
        }
        while let Some(c) = self.n.poll_command() {
            link.send(c)
                .expect("the command queue never fills in these tests");
        }
        while let Some(e) = self.n.poll_event() {
            if let ClusterEvent::Deliver {
                node,
                name,
                text,
                offset,
                deliver,
            } = &e
            {
                self.delivered
                    .push((node.clone(), name.clone(), text.clone(), *offset, *deliver));
            }
            self.events.push(e);
        }
    }

    fn has(&self, e: &ClusterEvent) -> bool {
        self.events.contains(e)
    }

    /// Joins `name` as `conn` through a claim, pumping only this node.
    fn join(&mut self, conn: MemberId, name: &str) {
        assert_eq!(
            self.n.request_join(Instant::now(), conn, name),
            JoinRoute::Claiming
        );
        let answer = ClusterEvent::JoinAnswer {
            conn,
            name: name.into(),
            ok: true,
            replaced: false,
        };
        until(&mut [self], "join answered", |n| n[0].has(&answer));
    }
}

/// Pumps every node until `done` holds, or fails after [`support::PROMPT`].
fn until(nodes: &mut [&mut Node], what: &str, mut done: impl FnMut(&[&mut Node]) -> bool) {
    let deadline = Instant::now() + support::PROMPT;
    loop {
        for n in nodes.iter_mut() {
            n.pump();
        }
        if done(nodes) {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        thread::sleep(Duration::from_millis(1));
    }
}

/// Pumps every node for `d`.
fn pump_for(nodes: &mut [&mut Node], d: Duration) {
    let end = Instant::now() + d;
    while Instant::now() < end {
        for n in nodes.iter_mut() {
            n.pump();
        }
        thread::sleep(Duration::from_millis(1));
    }
}

fn both_up(a: &mut Node, b: &mut Node) {
    until(&mut [a, b], "both links up", |n| {
        n.iter().all(|n| n.n.is_up())
    });
}

#[test]
fn messages_from_both_nodes_are_delivered_once_in_one_order() {
    let _w = Watchdog::new("cluster_link order", Duration::from_secs(60));
    let Some(redis) = Redis::start("cluster_link::messages_from_both_nodes") else {
        return;
    };
    let room = "hb:{t-order}";
    let mut a = Node::start(&redis, room, "a1");
    let mut b = Node::start(&redis, room, "b1");
    both_up(&mut a, &mut b);
    a.join(1, "ann");
    b.join(1, "bob");
    for i in 0..200 {
        let now = Instant::now();
        assert_eq!(a.n.handle_local_msg(now, 1, &format!("a{i}")), Route::Bus);
        assert_eq!(b.n.handle_local_msg(now, 1, &format!("b{i}")), Route::Bus);
        if i % 10 == 0 {
            a.pump();
            b.pump();
        }
    }
    until(&mut [&mut a, &mut b], "400 deliveries on each node", |n| {
        n.iter().all(|n| n.delivered.len() >= 400)
    });
    pump_for(&mut [&mut a, &mut b], Duration::from_millis(100));
    for n in [&a, &b] {
        assert_eq!(n.delivered.len(), 400, "exactly once");
        let offsets: Vec<u64> = n
            .delivered
            .iter()
            .map(|d| d.3.expect("an offset"))
            .collect();
        let first = offsets[0];
        assert_eq!(
            offsets,
            (first..first + 400).collect::<Vec<_>>(),
            "consecutive offsets"
        );
        assert!(n.delivered.iter().all(|d| d.4), "every message delivered");
        for (who, name) in [("a", "ann"), ("b", "bob")] {
            let texts: Vec<&str> = n
                .delivered
                .iter()
                .filter(|d| d.1 == name)
                .map(|d| d.2.as_str())
                .collect();
            let want: Vec<String> = (0..200).map(|i| format!("{who}{i}")).collect();
            assert_eq!(texts, want, "{name}'s messages in order, once");
        }
        assert!(n.bad.is_empty(), "{:?}", n.bad);
        assert_eq!((n.ups, n.downs), (1, 0));
    }
    assert_eq!(a.delivered, b.delivered, "one order on both nodes");
    // The stream holds them under the same offsets.
    let mut con = redis.con();
    let len: u64 = redis::cmd("XLEN")
        .arg(format!("{room}:stream"))
        .query(&mut con)
        .unwrap();
    assert_eq!(len, 400);
}

#[test]
fn a_name_claimed_on_one_node_is_refused_on_the_other() {
    let _w = Watchdog::new("cluster_link names", Duration::from_secs(30));
    let Some(redis) = Redis::start("cluster_link::a_name_claimed") else {
        return;
    };
    let room = "hb:{t-names}";
    let mut a = Node::start(&redis, room, "a1");
    let mut b = Node::start(&redis, room, "b1");
    both_up(&mut a, &mut b);
    a.join(7, "cy");
    // B has not heard A's join yet (it was not pumped): only Redis can refuse it.
    assert_eq!(
        b.n.request_join(Instant::now(), 3, "cy"),
        JoinRoute::Claiming
    );
    let refused = ClusterEvent::JoinAnswer {
        conn: 3,
        name: "cy".into(),
        ok: false,
        replaced: false,
    };
    until(&mut [&mut b], "B's claim answered", |n| n[0].has(&refused));
    let mut con = redis.con();
    let holder: Option<String> = redis::cmd("GET")
        .arg(format!("{room}:name:cy"))
        .query(&mut con)
        .unwrap();
    // NODE CONN TOKEN ("-": joined without SINCE, so no resume token).
    assert_eq!(holder.as_deref(), Some("a1 7 -"));
    // A leave releases it, and then B can have it.
    a.n.handle_local_leave(Instant::now(), 7, EndReason::Quit);
    until(&mut [&mut a, &mut b], "B hears A's leave", |n| {
        n[1].has(&ClusterEvent::Left {
            name: "cy".into(),
            reason: EndReason::Quit,
        })
    });
    let gone: Option<String> = redis::cmd("GET")
        .arg(format!("{room}:name:cy"))
        .query(&mut con)
        .unwrap();
    assert_eq!(gone, None, "released");
    b.join(4, "cy");
    // A bounce (what the engine does on `Evicted`) is one Down and one Up.
    b.link.as_ref().expect("link").bounce();
    until(&mut [&mut a, &mut b], "B bounced", |n| {
        n[1].ups == 2 && n[1].n.is_up()
    });
    assert_eq!((b.downs, a.downs), (1, 0));
}

#[test]
fn a_node_whose_link_stops_is_announced_lost_within_the_timeout() {
    let _x = support::exclusive();
    let _w = Watchdog::new("cluster_link node lost", Duration::from_secs(30));
    let Some(redis) = Redis::start("cluster_link::a_node_whose_link_stops") else {
        return;
    };
    let room = "hb:{t-lost}";
    let mut a = Node::start(&redis, room, "a1");
    let mut b = Node::start(&redis, room, "b1");
    both_up(&mut a, &mut b);
    a.join(1, "ann");
    b.join(1, "bob");
    until(&mut [&mut a, &mut b], "rosters exchanged", |n| {
        n.iter().all(|n| n.n.names() == ["ann", "bob"])
    });
    // A few refresh periods, so B has seen A's heartbeat through its poll.
    pump_for(&mut [&mut a, &mut b], NODE_TIMEOUT / 2);
    let stopped = Instant::now();
    a.link.take().expect("link").shutdown();
    assert!(
        stopped.elapsed() < Duration::from_millis(300),
        "prompt shutdown"
    );
    let lost = ClusterEvent::Left {
        name: "ann".into(),
        reason: EndReason::NodeLost,
    };
    until(&mut [&mut b], "ann announced node-lost", |n| {
        n[0].has(&lost)
    });
    let took = stopped.elapsed();
    assert!(
        took <= NODE_TIMEOUT + Duration::from_secs(1),
        "announced after {took:?}"
    );
    assert_eq!(b.events.iter().filter(|e| **e == lost).count(), 1, "once");
    assert!(b.has(&ClusterEvent::NodeLost {
        node: NodeId::new("a1").unwrap()
    }));
    // The reaper took A's heartbeat out of the set and freed its name.
    pump_for(&mut [&mut b], Duration::from_millis(50));
    let mut con = redis.con();
    let score: Option<f64> = redis::cmd("ZSCORE")
        .arg(format!("{room}:nodes"))
        .arg("a1")
        .query(&mut con)
        .unwrap();
    assert_eq!(score, None);
    assert_eq!(b.n.names(), vec!["bob"]);
    assert_eq!(b.downs, 0);
}

#[test]
fn a_redis_outage_keeps_local_service_and_publishes_what_waited() {
    let _w = Watchdog::new("cluster_link outage", Duration::from_secs(60));
    let Some(mut redis) = Redis::start("cluster_link::a_redis_outage") else {
        return;
    };
    let room = "hb:{t-outage}";
    let mut a = Node::start(&redis, room, "a1");
    let mut b = Node::start(&redis, room, "b1");
    both_up(&mut a, &mut b);
    a.join(1, "ann");
    b.join(1, "bob");
    redis.kill();
    until(&mut [&mut a, &mut b], "both links down", |n| {
        n.iter().all(|n| !n.n.is_up())
    });
    // Local service goes on: the engine delivers a `Route::Local` message itself, at once.
    let now = Instant::now();
    assert_eq!(b.n.handle_local_msg(now, 1, "during"), Route::Local);
    // Several failed reconnects later: still one Down.
    pump_for(&mut [&mut a, &mut b], Duration::from_millis(700));
    assert_eq!((a.downs, b.downs), (1, 1), "Down once per outage");
    redis.restart().expect("redis-server again");
    until(&mut [&mut a, &mut b], "both links up again", |n| {
        n.iter().all(|n| n.n.is_up())
    });
    assert_eq!((a.ups, b.ups), (2, 2));
    // Redis came back empty: a new epoch, and the waiting message is stored in it.
    let mut con = redis.con();
    let deadline = Instant::now() + support::PROMPT;
    let stored = loop {
        pump_for(&mut [&mut a, &mut b], Duration::from_millis(10));
        let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
            .arg(format!("{room}:stream"))
            .arg("-")
            .arg("+")
            .query(&mut con)
            .unwrap();
        let texts: Vec<BusMsg> = entries
            .iter()
            .filter_map(|(_, f)| f.iter().find(|(k, _)| k == "m"))
            .filter_map(|(_, m)| BusMsg::decode(m.as_bytes()).ok())
            .collect();
        if !texts.is_empty() || Instant::now() > deadline {
            break texts;
        }
    };
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(stored[0].node.as_str(), "b1");
    assert_eq!(stored[0].offset, Some(1));
    // Its echo is recorded on B, not delivered a second time.
    until(&mut [&mut a, &mut b], "B records its echo", |n| {
        n[1].delivered
            .iter()
            .any(|d| d.2 == "during" && d.3 == Some(1))
    });
    let echo = b.delivered.iter().find(|d| d.3 == Some(1)).unwrap();
    assert!(!echo.4, "not delivered again");
    assert!(b
        .events
        .iter()
        .any(|e| matches!(e, ClusterEvent::EpochChanged { .. })));
    // And the room goes on across nodes in the new epoch.
    assert_eq!(a.n.handle_local_msg(Instant::now(), 1, "after"), Route::Bus);
    until(&mut [&mut a, &mut b], "B gets A's message", |n| {
        n[1].delivered.iter().any(|d| d.2 == "after" && d.4)
    });
    assert_eq!((a.downs, b.downs), (1, 1));
}

#[test]
fn a_node_back_on_the_same_epoch_reads_what_it_missed_from_the_stream() {
    let _w = Watchdog::new("cluster_link catch-up", Duration::from_secs(30));
    let Some(redis) = Redis::start("cluster_link::a_node_back_on_the_same_epoch") else {
        return;
    };
    let room = "hb:{t-catchup}";
    let mut a = Node::start(&redis, room, "a1");
    let mut b = Node::start(&redis, room, "b1");
    both_up(&mut a, &mut b);
    a.join(1, "ann");
    // B's link goes away (as if its connections dropped) while A talks.
    b.link.take().expect("link").shutdown();
    b.n.handle_link_down(Instant::now());
    for i in 0..5 {
        assert_eq!(
            a.n.handle_local_msg(Instant::now(), 1, &format!("m{i}")),
            Route::Bus
        );
    }
    until(&mut [&mut a], "A's messages back", |n| {
        n[0].delivered.len() == 5
    });
    b.link = Some(Link::start(&redis.url(), room, NODE_TIMEOUT, 1000, Arc::new(|| {})).unwrap());
    until(
        &mut [&mut a, &mut b],
        "B reads the 5 from the stream",
        |n| n[1].delivered.len() == 5,
    );
    let texts: Vec<(&str, Option<u64>)> = b.delivered.iter().map(|d| (d.2.as_str(), d.3)).collect();
    assert_eq!(
        texts,
        vec![
            ("m0", Some(1)),
            ("m1", Some(2)),
            ("m2", Some(3)),
            ("m3", Some(4)),
            ("m4", Some(5))
        ]
    );
    // Same again, but the stream lost them meanwhile: the hole is skipped and logged.
    b.link.take().expect("link").shutdown();
    b.n.handle_link_down(Instant::now());
    for i in 5..8 {
        assert_eq!(
            a.n.handle_local_msg(Instant::now(), 1, &format!("m{i}")),
            Route::Bus
        );
    }
    until(&mut [&mut a], "A's messages back", |n| {
        n[0].delivered.len() == 8
    });
    let mut con = redis.con();
    let _: u64 = redis::cmd("DEL")
        .arg(format!("{room}:stream"))
        .query(&mut con)
        .unwrap();
    b.link = Some(Link::start(&redis.url(), room, NODE_TIMEOUT, 1000, Arc::new(|| {})).unwrap());
    let lost = ClusterEvent::MessagesLost { from: 6, to: 8 };
    until(&mut [&mut a, &mut b], "B skips the trimmed hole", |n| {
        n[1].has(&lost)
    });
    assert_eq!(a.n.handle_local_msg(Instant::now(), 1, "m8"), Route::Bus);
    until(&mut [&mut a, &mut b], "B gets the next one", |n| {
        n[1].delivered
            .last()
            .is_some_and(|d| d.2 == "m8" && d.3 == Some(9))
    });
}
