//! The server's choices that the protocol itself depends on: what a server does with `MSG`
//! lines ([`Mode`]), which bytes go over the socket ([`Wire`]) and which engine serves them
//! ([`Engine`]).
//!
//! They live in `core` because the protocol machines and the line wire (`HELLO ... mode=chat`)
//! use them; they derive [`clap::ValueEnum`] so the flags parse straight into them, and each
//! variant's doc comment is its `--help` text (one enum, no twin in the CLI to keep in step).

use clap::ValueEnum;

/// What a server does with each client's lines (`--mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum Mode {
    /// Reply `ECHO TEXT` to every `MSG TEXT`, as the manual's server does
    #[default]
    Echo,
    /// A chat room: relay every `MSG TEXT` to all other joined clients (line wire only)
    Chat,
}

impl Mode {
    /// Parses `echo` or `chat` (configuration.json, `HELLO`), with the error the file reports.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "echo" => Ok(Self::Echo),
            "chat" => Ok(Self::Chat),
            _ => Err(format!("'{s}' is not a mode (echo or chat)")),
        }
    }

    /// The word for it on the wire, in flags and in the log: `echo` or `chat`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Echo => "echo",
            Self::Chat => "chat",
        }
    }
}

/// Which bytes go over the socket (`--wire`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum Wire {
    /// Text lines (`MSG`, `PING`, `END` ...) on one TCP connection per client
    #[default]
    Line,
    /// Byte-compatible with the manual's original Python programs: unframed bytes, and a
    /// second connection per client (from the server to client.port) for heartbeats
    Classic,
}

impl Wire {
    /// Parses `line` or `classic` (configuration.json), with the error the file reports.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "line" => Ok(Self::Line),
            "classic" => Ok(Self::Classic),
            _ => Err(format!("'{s}' is not a wire (line or classic)")),
        }
    }

    /// The word for it in flags and in the log: `line` or `classic`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Line => "line",
            Self::Classic => "classic",
        }
    }
}

/// How a server runs its connections (CONTRACT section 6, `--engine`): both engines drive the
/// same protocol machines; only the threads, sockets and timers around them differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum Engine {
    /// The manual's model: per client a data-exchange thread and a companion heartbeat thread
    #[default]
    Threads,
    /// A few threads with non-blocking sockets and one timer structure for all deadlines (line
    /// wire only)
    Events,
}

impl Engine {
    /// Parses `threads` or `events` (configuration.json), with the error the file reports.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "threads" => Ok(Self::Threads),
            "events" => Ok(Self::Events),
            _ => Err(format!("'{s}' is not an engine (threads or events)")),
        }
    }

    /// The word for it in flags and in the log: `threads` or `events`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Threads => "threads",
            Self::Events => "events",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The words clap accepts are the words the file and the log use.
    #[test]
    fn flag_words_match_parse_and_as_str() {
        for m in Mode::value_variants() {
            let word = m.to_possible_value().unwrap().get_name().to_owned();
            assert_eq!(word, m.as_str());
            assert_eq!(Mode::parse(&word), Ok(*m));
        }
        for w in Wire::value_variants() {
            let word = w.to_possible_value().unwrap().get_name().to_owned();
            assert_eq!(word, w.as_str());
            assert_eq!(Wire::parse(&word), Ok(*w));
        }
        let engines: Vec<_> = Engine::value_variants()
            .iter()
            .map(|e| e.to_possible_value().unwrap().get_name().to_owned())
            .collect();
        assert_eq!(engines, ["threads", "events"]);
        for e in Engine::value_variants() {
            let word = e.to_possible_value().unwrap().get_name().to_owned();
            assert_eq!(word, e.as_str());
            assert_eq!(Engine::parse(&word), Ok(*e));
        }
        assert!(
            Mode::parse("relay").is_err()
                && Wire::parse("udp").is_err()
                && Engine::parse("async").is_err()
        );
    }
}
