//! Everything that owns a socket, a thread or the clock.

pub mod broker;
pub mod chat_client;
pub mod classic;
pub mod client;
pub mod client_common;
pub mod cluster_driver;
pub mod conn;
pub mod events;
pub mod evloop;
pub mod live;
pub mod loadgen;
pub mod metrics;
pub mod probe;
pub mod rawsock;
pub mod registry;
pub mod relay;
pub mod server;
pub mod tls;
pub mod wait;

/// Resolves `host:port` and returns the first address `f` succeeds with, or the last error
/// (a host name may resolve to several addresses, say IPv6 and IPv4, and only one may work).
pub fn try_each_addr<T>(
    host: &str,
    port: u16,
    mut f: impl FnMut(std::net::SocketAddr) -> std::io::Result<T>,
) -> std::io::Result<T> {
    use std::net::ToSocketAddrs;
    let mut last = std::io::Error::new(
        std::io::ErrorKind::AddrNotAvailable,
        "host resolved to no address",
    );
    for a in (host, port).to_socket_addrs()? {
        match f(a) {
            Ok(v) => return Ok(v),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// True for a read or write that merely timed out, would block or was interrupted: try
/// again, the peer is fine.
pub fn is_retryable_io(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{Interrupted, TimedOut, WouldBlock};
    matches!(e.kind(), WouldBlock | TimedOut | Interrupted)
}

/// 64 bits that differ between processes and calls, from the OS's randomness: std's hasher
/// keys are drawn from it (getrandom) once per thread, and every `RandomState` after that
/// differs; hashing the time and the pid with one adds the rest. For a chat room's epoch and
/// resume-token seed and the client's retry jitter: an output (the epoch is public) reveals
/// nothing of the keys, so it says nothing of the others.
pub(crate) fn os_random() -> u64 {
    use std::hash::BuildHasher;
    let at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    std::collections::hash_map::RandomState::new().hash_one((at, std::process::id()))
}
