//! Everything that owns a socket, a thread or the clock.

pub mod chat_client;
pub mod classic;
pub mod client;
pub mod conn;
pub mod events;
pub mod loadgen;
pub mod rawsock;
pub mod server;
