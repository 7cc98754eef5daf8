//! Pure logic: no sockets, no threads, no clock. Everything here takes `now` as an argument.

pub mod admission;
pub mod auth;
pub mod classic;
pub mod client;
pub mod cluster;
pub mod display;
pub mod heartbeat;
pub mod history;
pub mod hub;
pub mod mode;
pub mod node;
pub mod outq;
pub mod probe;
pub mod rate;
pub mod room;
pub mod session;
pub mod token;
pub mod wire;
