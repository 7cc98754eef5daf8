//! Integration tests: real processes on 127.0.0.1:0 with a watchdog.

mod manual_cases;
mod node;
mod server_limits;
mod prompts_config;
mod support;
