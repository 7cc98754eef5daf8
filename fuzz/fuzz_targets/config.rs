//! configuration.json: FileConfig::parse on arbitrary text never panics, and every error
//! that is about a value names where it is (an unknown key is named as written, even `""`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tcp_heartbeat::config::{ConfigError, FileConfig};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match FileConfig::parse(text, std::path::Path::new("fuzz.json")) {
        Ok(_) => {}
        Err(ConfigError::File { problems, .. }) => {
            assert!(!problems.is_empty());
            assert!(problems.iter().all(|p| !p.reason.is_empty()));
        }
        Err(e) => {
            assert!(!e.to_string().is_empty());
        }
    }
});
