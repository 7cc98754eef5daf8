//! # tcp-heartbeat
//!
//! A TCP server (thread-per-connection, or an event loop) and client with an
//! application-level heartbeat that finds and purges *ghost* connections (a peer that vanished
//! without closing) in seconds, where TCP keepalive defaults take over two hours. Also: a Maelstrom node (`hb-node`) and a
//! raw-syscall echo server (`hb-echo`).
//!
//! ## Layers
//! ```text
//! bin/          thin mains: flags → one run function → exit code
//! app/          wiring per program (server, client, scenarios, node)
//! net/          everything that owns a socket, a thread or the clock
//! core/         pure logic: heartbeat timing, line wire, client, probe, node; never reads the clock
//! config        configuration.json + flags + prompts → validated settings
//! ```
//! Arrows point down only. `core` is *sans-IO*: its machines take `now: Instant` and events,
//! and return actions and their next deadline (`handle_*` in, `poll_*` out), so every timing
//! rule is unit-tested by stepping simulated time instead of sleeping.
//!
//! ## The server: one core, plumbing around it
//! Every protocol decision of the line-wire server lives in two sans-IO machines:
//! [`core::session::Session`] (one per connection: line decoding, verb dispatch, the
//! heartbeat, the outbound byte budget, flow control and the end state) and
//! [`core::hub::Hub`] (the chat room: names, who gets what, which sender must wait). The
//! engine in [`net::server`] only moves bytes, reads the clock, sleeps and wakes; grep it for
//! a verb or an end reason and you find only log plumbing.
//! ```text
//!                   core (no socket, no thread, no clock)
//!      ┌──────────────────────────────────────────────────────────────┐
//!      │ Session ×N: handle_rx / poll_input / handle_room             │
//!      │             peek_transmit / handle_written / handle_write_blocked
//!      │             handle_heartbeat / handle_flow_timeout / poll_close
//!      │ Hub ×1:     handle_op (JOIN, MSG, WHO, HISTORY, JOIN … SINCE) │
//!      │             / handle_leave / handle_shutdown, through        │
//!      │             Mailboxes (the sessions); History: the stream    │
//!      └───────────────▲──────────────────────────────▲───────────────┘
//!                      │ lock session (chat: room lock first)
//!  data-exchange thread (reads, never writes)   companion heartbeat thread (the only writer)
//!    poll(2) until bytes or the idle deadline    switch on → handle_heartbeat → PING k / END
//!    bytes → handle_rx → switch off              handle_flow_timeout (lag / write stall)
//!    poll_input → chat line → Hub::handle_op     peek_transmit → sendmsg(MSG_DONTWAIT)
//!      held (a recipient lags, or own queue      blocked → poll(POLLOUT) in 20 ms slices
//!      over half full): stop reading, wait       handle_written → caught up → wake held
//!      until woken, offer the line again         ended → Hub::handle_leave (LEFT)
//!    silence → "start heartbeat" switch on       poll_close: END written → FIN, linger
//!                                                  ≤ 250 ms (END_LINGER), close
//! ```
//! The accept loop (poll + accept, `END server-full` when out of room) spawns the two threads.
//!
//! The event engine ([`net::evloop`], `--engine events`) drives the same core from a tokio
//! runtime of `--workers` threads (one per core by default), one task per connection:
//! ```text
//!   accept task ──spawn──▶ connection task (the only reader and writer of its socket)
//!                            Session::handle_timeout (one tokio timer, moved when earlier)
//!                            peek_transmit → sendmsg of up to 16 slices until it is full
//!                            readable → handle_rx → poll_input → Hub::handle_op
//!                            held → wait for the room (Notify) or its own queue to drain
//!                            poll_close → END written: FIN, linger; ended → Hub::handle_leave
//! ```
//! [`net::relay`] (the room, the write-back `Mailboxes` cache, log mapping) serves both: a
//! room message is built once per batch into a buffer every recipient's queue shares
//! ([`core::outq`]), so relaying to 100 members copies nothing per member.
//!
//! With `--broker redis://…` ([`net::cluster_driver`], docs/CLUSTER.md) several servers form
//! one room. The hub then holds a [`core::cluster::ClusterNode`] (sans-IO like the rest: who
//! publishes what, message order by the Redis stream's offsets, name claims, node liveness,
//! outages), and two threads of plumbing sit beside either engine:
//! ```text
//!  connection threads/tasks ── Hub::handle_op ──▶ Hub + ClusterNode ◀── hb-cluster (driver)
//!    (MSG → published, JOIN → claim; then ring       │ poll_command      ▲ LinkReport →
//!     the driver's bell)                             ▼                   │ handle_* (under
//!                                      hb-broker (net::broker::Link) ────┘ the room lock),
//!                                      2 Redis connections: commands +    then deliveries
//!                                      Lua scripts, SUBSCRIBE              through Mailboxes
//! ```
//! Neither thread decides anything; neither blocks a connection on Redis (bounded queues,
//! `try_send`, timeouts on every Redis call).
//!
//! With `--tls-cert` ([`net::tls`]) each connection gets a rustls `ServerConnection`, itself a
//! sans-IO machine, between its socket and its session; both engines call the same layer:
//! ```text
//!   socket ─raw─▶ ServerTls::handle_raw ─plaintext─▶ Session::handle_rx (+ handle_secured,
//!                  (thread engine: the reader)          handle_insecure on a TLS error)
//!   socket ◀─records─ ServerTls::send / flush ◀─ Session::peek_transmit
//!                  (thread engine: the companion, TLS locked after the session)
//! ```
//! The handshake deadline, like every deadline, is the session's.
//!
//! With `--metrics` ([`net::metrics`]) the event log counts every event in atomics before it
//! is logged (no engine decides or waits anything for it), and one thread, `hb-metrics`,
//! serves the counts as Prometheus text to one scraper at a time.
//! The linger exists because closing a socket with unread input makes the kernel send a
//! reset, which can destroy the `END` line before the client reads it.
//! A client that stops reading holds its senders back for at most `--stall` and is then
//! ended as a slow consumer; a reader that keeps reading is never dropped. Every blocking call
//! has a deadline, and Ctrl-C tells every client `END server-shutdown` within a second.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod app;
pub mod config;
pub mod core;
pub mod net;
