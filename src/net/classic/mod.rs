//! The classic wire (CONTRACT section 3) on real sockets: [`server`] runs the server's two
//! threads per client, [`client`] the classic `hb-client`. The bytes and every protocol rule
//! are in [`crate::core::classic`]; these modules only move bytes between sockets and it.
//!
//! Neither module imports the line-wire client: what both clients share (their events, errors
//! and `connect`) is in [`crate::net::client_common`], so there is no import cycle.

use std::time::Duration;

pub mod client;
pub mod server;

pub use client::{listen_for_heartbeat, run_client, run_client_with_listener};
pub use server::{admit, shutdown, ClassicConn, Registry};

/// A write that makes no progress for this long means the peer stopped reading.
const WRITE_STALL: Duration = Duration::from_secs(2);
