//! tcp-heartbeat: placeholder crate docs (rewritten below once the server lands).
#![forbid(unsafe_code)]

pub mod app;
pub mod config;
pub mod core;
pub mod net;
