//! Which of hb-server's engines a run measures (CONTRACT section 6): `--engine threads` (the
//! manual's model, the default) and `--engine events`. Support is detected from the binary's
//! `--help`, so hb-bench works against a server built before the flag existed: the events
//! rows are then SKIPPED with that reason, like a missing peer. Pure parts are unit-tested.

use std::path::Path;
use std::process::{Command, Stdio};

/// One of hb-server's engines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Engine {
    /// A data-exchange thread and a companion heartbeat thread per client.
    Threads,
    /// A few threads, non-blocking sockets, one timer structure.
    Events,
}

impl Engine {
    /// Both, in the order the report shows them.
    pub const ALL: [Engine; 2] = [Engine::Threads, Engine::Events];

    /// The value of `--engine`.
    pub fn flag(self) -> &'static str {
        match self {
            Self::Threads => "threads",
            Self::Events => "events",
        }
    }

    /// How a row names the server running this engine.
    pub fn label(self) -> &'static str {
        match self {
            Self::Threads => "hb-server (threads)",
            Self::Events => "hb-server (events)",
        }
    }
}

/// What the hb-server binary under test supports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineSupport {
    /// `--engine` appears in its `--help`.
    pub flag: bool,
    /// The plan leaves the event engine out of this measurement, and why (`--smoke` runs it
    /// in one measurement only, to stay a few seconds).
    pub left_out: Option<String>,
}

/// Whether a `--help` text documents the `--engine` flag (`hb-server --help | grep -- --engine`).
pub fn help_has_engine(help: &str) -> bool {
    help.lines().any(|l| {
        l.split(|c: char| c.is_whitespace() || c == ',' || c == '=' || c == '[')
            .any(|w| w == "--engine")
    })
}

impl EngineSupport {
    /// Asks the binary's `--help` (a binary that cannot say counts as not supporting it).
    pub fn probe(server: &Path) -> Self {
        let flag = Command::new(server)
            .arg("--help")
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .is_ok_and(|o| help_has_engine(&String::from_utf8_lossy(&o.stdout)));
        Self {
            flag,
            left_out: None,
        }
    }

    /// The same binary, with the event engine left out of one measurement for `why`.
    pub fn leaving_out_events(&self, why: impl Into<String>) -> Self {
        Self {
            flag: self.flag,
            left_out: Some(why.into()),
        }
    }

    /// Why `engine` cannot be measured with this binary; None when it can.
    pub fn skip_reason(&self, engine: Engine) -> Option<String> {
        match (engine, self.flag) {
            (Engine::Threads, _) => None,
            (Engine::Events, true) => self.left_out.clone(),
            (Engine::Events, false) => Some(
                "this hb-server has no `--engine` flag (its `--help` does not mention it: the \
                 event engine is not in this build)"
                    .into(),
            ),
        }
    }

    /// The engines that can be measured, in report order.
    pub fn available(&self) -> Vec<Engine> {
        Engine::ALL
            .into_iter()
            .filter(|&e| self.skip_reason(e).is_none())
            .collect()
    }

    /// The flags that select `engine`: `--engine NAME` when the binary has the flag, nothing
    /// otherwise (its only engine is the thread engine, the default).
    pub fn args(&self, engine: Engine) -> Vec<&'static str> {
        if self.flag {
            vec!["--engine", engine.flag()]
        } else {
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flag_is_found_in_clap_help_only_as_a_flag() {
        let with = "Options:\n      --engine <ENGINE>  Which engine serves [default: threads]\n";
        assert!(help_has_engine(with));
        assert!(help_has_engine("  --engine=threads|events\n"));
        assert!(!help_has_engine(
            "Options:\n      --stall <DUR>  ...\n      --engines-dir x\n"
        ));
        assert!(!help_has_engine("the event engine is not here\n"));
    }

    #[test]
    fn events_are_skipped_without_the_flag() {
        let old = EngineSupport {
            flag: false,
            left_out: None,
        };
        assert_eq!(old.available(), vec![Engine::Threads]);
        assert!(old
            .skip_reason(Engine::Events)
            .unwrap()
            .contains("--engine"));
        assert!(old.args(Engine::Threads).is_empty());
        let new = EngineSupport {
            flag: true,
            left_out: None,
        };
        assert_eq!(new.available(), Engine::ALL.to_vec());
        let smoke = new.leaving_out_events("smoke");
        assert_eq!(smoke.available(), vec![Engine::Threads]);
        assert_eq!(smoke.skip_reason(Engine::Events).as_deref(), Some("smoke"));
        assert_eq!(smoke.args(Engine::Threads), vec!["--engine", "threads"]);
        assert_eq!(new.args(Engine::Events), vec!["--engine", "events"]);
        assert_eq!(new.args(Engine::Threads), vec!["--engine", "threads"]);
    }
}
