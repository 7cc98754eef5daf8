//! `hb-client`'s settings: flags, the file's `client` object and prompts, resolved into
//! [`ClientSettings`].

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::Duration;

use super::prompt::setting;
use super::{
    bad, defaults, origin, parse_duration, parse_duration_allow_zero, ConfigError, FileConfig,
    Prompter, Wire,
};

/// A data message must be something to send, on one line.
pub(super) fn check_message(m: &str) -> Result<(), String> {
    if m.is_empty() {
        Err("must not be empty (there would be nothing to send)".into())
    } else if m.contains(['\n', '\r']) {
        Err("must be a single line".into())
    } else {
        Ok(())
    }
}

/// A chat name the room would take; checked here so a bad one is a usage error, not a
/// refusal from the server after connecting.
pub fn check_name(name: &str) -> Result<(), String> {
    crate::core::room::validate_name(name).map_err(|e| {
        let why = e
            .detail
            .split_once(": ")
            .map_or(e.detail.as_str(), |(_, w)| w);
        format!("{name:?} is not a usable chat name ({why})")
    })
}

/// Client flags that contradict each other or would do nothing, and flag values the server
/// would refuse.
fn check_client_flags(flags: &ClientFlags, file: &FileConfig) -> Result<(), ConfigError> {
    if let Some(m) = &flags.message {
        check_message(m).map_err(|r| bad("--message", r))?;
    }
    if let Some(n) = &flags.name {
        check_name(n).map_err(|r| bad("--name", r))?;
    }
    if (flags.tls || flags.ca.is_some()) && flags.wire.or(file.server.wire) == Some(Wire::Classic) {
        let flag = if flags.tls { "--tls" } else { "--ca" };
        return Err(ConfigError::Usage(format!(
            "{flag} works only on the line wire (the manual's programs speak plain TCP)"
        )));
    }
    if !flags.chat {
        if flags.name.is_some() {
            return Err(ConfigError::Usage(
                "--name does nothing without --chat (it is the chat name)".into(),
            ));
        }
        if flags.reconnect_for.is_some() {
            return Err(ConfigError::Usage(
                "--reconnect-for does nothing without --chat (only the chat client resumes)".into(),
            ));
        }
        return Ok(());
    }
    for (flag, given) in [
        ("--every", flags.every.is_some()),
        ("--message", flags.message.is_some()),
        ("--messages", flags.messages.is_some()),
    ] {
        if given {
            return Err(ConfigError::Usage(format!(
                "{flag} does nothing with --chat: the chat client sends the lines you type"
            )));
        }
    }
    // The file's server.wire describes the server; chat needs a line-wire server.
    if flags.wire.or(file.server.wire) == Some(Wire::Classic) {
        let wire_src = origin(
            flags.wire.is_some(),
            "--wire",
            "server.wire",
            "classic",
            file,
        );
        return Err(ConfigError::Usage(format!(
            "--chat works only on the line wire, not with {wire_src}"
        )));
    }
    if flags.name.is_none() && file.client.name.is_none() {
        let from = if file.path.as_os_str().is_empty() {
            String::new()
        } else {
            format!(" (or client.name in {})", file.path.display())
        };
        return Err(ConfigError::Usage(format!(
            "--chat needs a name: --name NAME{from}"
        )));
    }
    Ok(())
}

/// `hb-client`'s command line; `None` means "not given". Each field's doc comment is its
/// `--help` text.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ClientFlags {
    /// Configuration file [default: configuration.json if present]
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Server host name or address [default: server.host from the file, else 127.0.0.1]
    #[arg(long, value_name = "H")]
    pub host: Option<String>,
    /// Server TCP port [default: server.port from the file, else 8000]
    #[arg(long, value_name = "P")]
    pub port: Option<u16>,
    /// Time between data messages to the server (DUR); longer than the server's idle makes
    /// its heartbeat kick in. Not with --chat [default: 30s]
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub every: Option<Duration>,
    /// Delay before answering a heartbeat (DUR); for testing only. Also applies with --chat
    /// [default: 0s]
    #[arg(long, value_name = "DUR", value_parser = parse_duration_allow_zero)]
    pub block: Option<Duration>,
    /// The data message: one line, not empty. Not with --chat [default: "Hello, there"]
    #[arg(long, value_name = "TEXT")]
    pub message: Option<String>,
    /// Bytes on the socket; must match the server's --wire [default: server.wire from the
    /// file, else line]
    #[arg(long, value_enum)]
    pub wire: Option<Wire>,
    /// Interactive chat (line wire, server in --mode chat): stdin lines are sent, peers'
    /// messages are printed, /quit leaves. Needs a name: --name or client.name
    #[arg(long)]
    pub chat: bool,
    /// Chat name: 1 to 32 characters, no spaces or control characters. Only with --chat
    /// [default: client.name from the file]
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Send this many messages (a number), then leave with QUIT (exit 0). Not with --chat
    #[arg(long, value_name = "N")]
    pub messages: Option<u64>,
    /// With --chat: after a lost connection (reset, closed, server silent, END
    /// heartbeat-timeout or slow-consumer) reconnect and resume for up to this long (DUR:
    /// 250ms, 5s, 2m; a plain number is seconds), retrying after 0-100 ms, then up to twice
    /// as long each time (at most 5 s); then exit 4. 0 never reconnects [default: 60s]
    #[arg(long, value_name = "DUR", value_parser = parse_duration_allow_zero)]
    pub reconnect_for: Option<Duration>,
    /// Speak TLS to the server (its --tls-cert); the server's certificate must be valid
    /// for --host and signed by a trusted root (the system's, or --ca). Line wire only
    #[arg(long)]
    pub tls: bool,
    /// Trust only the certificates in this PEM file (a private CA, or the server's own
    /// self-signed certificate) instead of the system's roots; implies --tls
    #[arg(long, value_name = "PEM")]
    pub ca: Option<PathBuf>,
    /// Never prompt: use defaults for whatever flags and the file leave unset
    #[arg(long)]
    pub defaults: bool,
}

/// Validated client settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientSettings {
    /// The server's host.
    pub host: String,
    /// The server's port.
    pub port: u16,
    /// Time between data messages.
    pub every: Duration,
    /// Delay before answering a heartbeat (testing only).
    pub block: Duration,
    /// The data message.
    pub message: String,
    /// Line or classic.
    pub wire: Wire,
    /// Interactive chat with this name.
    pub chat_name: Option<String>,
    /// Leave after this many data messages.
    pub messages: Option<u64>,
    /// Chat: how long to keep reconnecting after a lost connection (zero: never).
    pub reconnect_for: Duration,
    /// Where the classic-wire client listens for the heartbeat socket.
    pub listen_host: String,
    /// Port of the classic-wire heartbeat listener.
    pub listen_port: u16,
    /// TLS to the server, if on: `Some(None)` trusts the system's roots, `Some(Some(PEM))`
    /// only the certificates in that file.
    pub tls: Option<Option<PathBuf>>,
}

impl ClientSettings {
    /// Merges flags, the file and (for what neither sets, unless `--defaults`) prompts.
    pub fn resolve<R: BufRead, W: Write>(
        flags: &ClientFlags,
        file: &FileConfig,
        prompter: &mut Prompter<R, W>,
    ) -> Result<Self, ConfigError> {
        let f = &file.client;
        // Before any prompt: nobody should answer questions for a command line that fails.
        check_client_flags(flags, file)?;
        if flags.messages == Some(0) {
            return Err(bad("--messages", "must be greater than zero".into()));
        }
        // The chat client reads stdin for messages, so it never prompts.
        let prompt = !flags.defaults && !flags.chat;
        let mut ask = prompt.then_some(prompter);
        let every = setting(
            flags.every.or(f.every),
            &mut ask,
            "every",
            "Time between messages to the server (every)",
            defaults::EVERY,
            parse_duration,
        )?;
        let block = setting(
            flags.block.or(f.block),
            &mut ask,
            "block",
            "Delay before answering a heartbeat (block; for testing only)",
            defaults::BLOCK,
            parse_duration_allow_zero,
        )?;
        let message = flags
            .message
            .clone()
            .or_else(|| f.message.clone())
            .unwrap_or_else(|| defaults::MESSAGE.into());
        // A flag overrides the file's client.name; both were checked already.
        let chat_name = flags
            .chat
            .then(|| flags.name.clone().or_else(|| f.name.clone()))
            .flatten();
        Ok(Self {
            host: flags
                .host
                .clone()
                .or_else(|| file.server.host.clone())
                .unwrap_or_else(|| defaults::HOST.into()),
            port: flags
                .port
                .or(file.server.port)
                .unwrap_or(defaults::SERVER_PORT),
            every,
            block,
            message,
            // The file's server.wire describes the server this client talks to.
            wire: flags.wire.or(file.server.wire).unwrap_or_default(),
            chat_name,
            messages: flags.messages,
            reconnect_for: flags.reconnect_for.unwrap_or(defaults::RECONNECT_FOR),
            listen_host: f.host.clone().unwrap_or_else(|| defaults::HOST.into()),
            listen_port: f.port.unwrap_or(defaults::CLIENT_PORT),
            tls: (flags.tls || flags.ca.is_some()).then(|| flags.ca.clone()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_support::*;

    #[test]
    fn client_settings_resolve() {
        let file = parse(
            r#"{"server": {"host": "127.0.0.1", "port": "8000"}, "client": {"port": "8001"}}"#,
        )
        .unwrap();
        let mut p = prompter("5\n\n", false);
        let c = ClientSettings::resolve(&ClientFlags::default(), &file, &mut p).unwrap();
        assert_eq!(
            (c.port, c.listen_port, c.every, c.block),
            (8000, 8001, ms(5000), Duration::ZERO)
        );
        let flags = ClientFlags {
            message: Some("a\nb".into()),
            defaults: true,
            ..Default::default()
        };
        assert!(ClientSettings::resolve(&flags, &file, &mut prompter("", false)).is_err());
    }

    fn client(flags: ClientFlags, file: &str) -> Result<ClientSettings, String> {
        let file = parse(file).map_err(|e| e.to_string())?;
        ClientSettings::resolve(&flags, &file, &mut prompter("", false)).map_err(|e| e.to_string())
    }

    fn chat(name: Option<&str>) -> ClientFlags {
        ClientFlags {
            chat: true,
            name: name.map(Into::into),
            ..Default::default()
        }
    }

    #[test]
    fn the_chat_name_comes_from_the_flag_else_the_file() {
        let file = r#"{"client": {"name": "ann"}}"#;
        assert_eq!(
            client(chat(None), file).unwrap().chat_name.as_deref(),
            Some("ann")
        );
        assert_eq!(
            client(chat(Some("bob")), file)
                .unwrap()
                .chat_name
                .as_deref(),
            Some("bob")
        );
        assert_eq!(
            client(chat(Some("bob")), "{}")
                .unwrap()
                .chat_name
                .as_deref(),
            Some("bob")
        );
        assert_eq!(
            client(chat(None), "{}").unwrap_err(),
            "--chat needs a name: --name NAME (or client.name in configuration.json)"
        );
        // A name in the file is not an error when not chatting: the file serves both uses.
        let c = client(
            ClientFlags {
                defaults: true,
                ..Default::default()
            },
            file,
        )
        .unwrap();
        assert_eq!(c.chat_name, None);
    }

    #[test]
    fn a_name_the_room_would_refuse_is_a_flag_error() {
        for (name, why) in [
            ("", "it is empty"),
            ("  ", "no spaces or control characters"),
            ("a b", "no spaces or control characters"),
            ("a\u{1b}[2J", "no spaces or control characters"),
            (&"x".repeat(33), "at most 32 characters"),
        ] {
            assert_eq!(
                client(chat(Some(name)), "{}").unwrap_err(),
                format!("--name: {name:?} is not a usable chat name ({why})")
            );
        }
        assert!(client(chat(Some(&"x".repeat(32))), "{}").is_ok());
    }

    #[test]
    fn client_flags_that_would_do_nothing_are_usage_errors() {
        let plain = |f: fn(&mut ClientFlags)| {
            let mut flags = ClientFlags {
                defaults: true,
                ..Default::default()
            };
            f(&mut flags);
            client(flags, "{}")
        };
        assert_eq!(
            plain(|f| f.name = Some("ann".into())).unwrap_err(),
            "--name does nothing without --chat (it is the chat name)"
        );
        assert_eq!(
            plain(|f| f.message = Some(String::new())).unwrap_err(),
            "--message: must not be empty (there would be nothing to send)"
        );
        let chatting = |f: fn(&mut ClientFlags)| {
            let mut flags = chat(Some("ann"));
            f(&mut flags);
            client(flags, "{}")
        };
        for (flag, set) in [
            (
                "--every",
                (|f| f.every = Some(ms(5))) as fn(&mut ClientFlags),
            ),
            ("--message", |f| f.message = Some("hi".into())),
            ("--messages", |f| f.messages = Some(3)),
        ] {
            assert_eq!(
                chatting(set).unwrap_err(),
                format!(
                    "{flag} does nothing with --chat: the chat client sends the lines you type"
                )
            );
        }
        assert_eq!(
            plain(|f| f.reconnect_for = Some(ms(5))).unwrap_err(),
            "--reconnect-for does nothing without --chat (only the chat client resumes)"
        );
        assert_eq!(
            chatting(|f| f.reconnect_for = Some(Duration::ZERO))
                .unwrap()
                .reconnect_for,
            Duration::ZERO
        );
        assert_eq!(chatting(|_| {}).unwrap().reconnect_for, ms(60_000));
        // --block delays the chat client's PONG too, so it does something there.
        assert_eq!(chatting(|f| f.block = Some(ms(5))).unwrap().block, ms(5));
        assert_eq!(
            chatting(|f| f.wire = Some(Wire::Classic)).unwrap_err(),
            "--chat works only on the line wire, not with --wire classic"
        );
        assert_eq!(
            client(chat(Some("ann")), r#"{"server": {"wire": "classic"}}"#).unwrap_err(),
            "--chat works only on the line wire, not with server.wire \"classic\" in \
             configuration.json"
        );
        // File values that do not apply to chat are fine.
        let c = client(
            chat(Some("ann")),
            r#"{"client": {"every": 5, "message": "hi"}}"#,
        )
        .unwrap();
        assert_eq!(c.chat_name.as_deref(), Some("ann"));
    }
}
