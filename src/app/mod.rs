//! Wiring per program: what each binary runs.

pub mod bench;
pub mod cli;
pub mod client;
pub mod node;
pub mod scenarios;
pub mod server;
