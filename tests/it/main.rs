//! Integration tests: real processes on 127.0.0.1:0 with a watchdog.

mod auth;
mod bench;
mod chat;
mod chat_client;
mod classic;
mod client_exit;
mod cluster;
mod cluster_link;
mod deploy;
mod faults;
mod flow;
mod hostile;
mod manual_cases;
mod metrics;
mod node;
mod ops;
mod probe;
mod prompts_config;
mod props;
mod server_limits;
mod support;
mod tls;
