//! # tcp-heartbeat
//!
//! A thread-per-connection TCP server and client with an application-level heartbeat that
//! finds and purges *ghost* connections (a peer that vanished without closing) in seconds,
//! where TCP keepalive defaults take over two hours. Also: a Maelstrom node (`hb-node`) and a
//! raw-syscall echo server (`hb-echo`).
//!
//! ## Layers
//! ```text
//! bin/          thin mains: flags → one run function → exit code
//! app/          wiring per program (server, client, scenarios, node)
//! net/          everything that owns a socket, a thread or the clock
//! core/         pure logic: heartbeat timing, line wire, client, node; never reads the clock
//! config        configuration.json + flags + prompts → validated settings
//! ```
//! Arrows point down only. `core` is *sans-IO*: its machines take `now: Instant` and events,
//! and return actions and their next deadline (`handle_*` in, `poll_*` out), so every timing
//! rule is unit-tested by stepping simulated time instead of sleeping.
//!
//! ## Threads of one server connection
//! ```text
//!                  accept loop (poll + accept, END server-full when out of room)
//!                         │ spawns
//!         ┌───────────────┴────────────────┐
//!  data-exchange thread              companion heartbeat thread
//!  (reads, never writes)             (the only writer of the socket)
//!    poll(2) until the idle            drains a bounded queue (ECHO, PONG, ERR, END)
//!    deadline or bytes                 sleeps until a queued line, a bell, or the
//!    bytes → Heartbeat::handle_rx        core's next deadline
//!          → switch off, reply         switch on → Heartbeat::poll → PING k / END
//!    silence → "start heartbeat"       END → shutdown(Write), then the linger:
//!              switch on + bell          discard input until the client closes or
//!                                        250 ms (END_LINGER), close, exit
//!                                      write error → shutdown(Both), exit
//! ```
//! The linger exists because closing a socket with unread input makes the kernel send a
//! reset, which can destroy the `END` line before the client reads it.
//! The "start heartbeat" switch (an atomic flag) and the [`core::heartbeat::Heartbeat`]
//! behind a mutex are all the two threads share. A client that stops reading fills only its
//! own queue and is ended as a slow consumer; nobody else waits for it. Every blocking call
//! has a deadline, and Ctrl-C tells every client `END server-shutdown` within a second.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod app;
pub mod config;
pub mod core;
pub mod net;
