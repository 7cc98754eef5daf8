//! hb-node and hb-echo tests (placeholder)
