//! Everything that owns a socket, a thread or the clock.

pub mod rawsock;
