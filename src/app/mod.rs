//! Wiring per program: what each binary runs.

pub mod node;
