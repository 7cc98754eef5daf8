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

/// A token must be something to send as one word of one line (a JWT is three base64url
/// parts); the server judges the rest.
pub(super) fn check_token(t: &str) -> Result<(), String> {
    if t.is_empty() {
        Err("must not be empty".into())
    } else if t.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Err("must be one word: no spaces, line ends or control characters (a JWT has none)".into())
    } else {
        Ok(())
    }
}

/// The chat name a token is for (its `sub`, read without verifying: the client has no
/// secret), or why there is none.
fn token_name(token: &str) -> Result<String, String> {
    crate::core::auth::unverified_sub(token).map_err(|e| e.to_string())
}

/// Client flags that contradict each other or would do nothing, and flag values the server
/// would refuse.
fn check_client_flags(flags: &ClientFlags, file: &FileConfig) -> Result<(), ConfigError> {
    check_probe_flags(flags, file)?;
    if let Some(m) = &flags.message {
        check_message(m).map_err(|r| bad("--message", r))?;
    }
    if let Some(t) = &flags.token {
        check_token(t).map_err(|r| bad("--token", r))?;
    }
    let token = flags.token.as_ref().or(file.client.token.as_ref());
    if let (Some(_), Some(Wire::Classic)) = (&flags.token, flags.wire.or(file.server.wire)) {
        let wire_src = origin(
            flags.wire.is_some(),
            "--wire",
            "server.wire",
            "classic",
            file,
        );
        return Err(ConfigError::Usage(format!(
            "--token works only on the line wire, not with {wire_src}"
        )));
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
        // A token names its holder: its sub is the only name the server would take.
        if let Some(t) = token {
            return match token_name(t) {
                Ok(_) => Ok(()),
                Err(why) => Err(ConfigError::Usage(format!(
                    "--chat needs a name: --name NAME, or a --token whose sub is one ({why})"
                ))),
            };
        }
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

/// `--probe` sends no data, chats with nobody and only speaks the line wire, so the flags
/// for those are refused with it; `--timeout` is the probe's and nothing else's.
fn check_probe_flags(flags: &ClientFlags, file: &FileConfig) -> Result<(), ConfigError> {
    if !flags.probe {
        if flags.timeout.is_some() {
            return Err(ConfigError::Usage(
                "--timeout does nothing without --probe (it is the probe's deadline)".into(),
            ));
        }
        return Ok(());
    }
    for (flag, given) in [
        ("--every", flags.every.is_some()),
        ("--message", flags.message.is_some()),
        ("--messages", flags.messages.is_some()),
        ("--chat", flags.chat),
        ("--name", flags.name.is_some()),
        ("--block", flags.block.is_some()),
        ("--reconnect-for", flags.reconnect_for.is_some()),
    ] {
        if given {
            return Err(ConfigError::Usage(format!(
                "{flag} does nothing with --probe: the probe only checks HELLO and one PING \
                 round trip"
            )));
        }
    }
    // The file's server.wire describes the server; the probe needs a line-wire server.
    if flags.wire.or(file.server.wire) == Some(Wire::Classic) {
        let wire_src = origin(
            flags.wire.is_some(),
            "--wire",
            "server.wire",
            "classic",
            file,
        );
        return Err(ConfigError::Usage(format!(
            "--probe works only on the line wire, not with {wire_src}"
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
    /// JWT to authenticate with, for a server run with --auth-secret: sent as `AUTH TOKEN`
    /// first on every connection and reconnection. With --chat and no --name, the chat name
    /// is the token's `sub`. Keep it out of shell history where that matters: client.token in
    /// the configuration file works too [default: client.token from the file, else none]
    #[arg(long, value_name = "TOKEN")]
    pub token: Option<String>,
    /// Health check (for Docker HEALTHCHECK, systemd, scripts): connect, read the server's
    /// HELLO, send one PING and wait for its PONG, all within --timeout; print one line
    /// (`healthy: ADDR answered PING in 0.4 ms (HELLO hb/1, mode=chat)` or `unhealthy: ADDR:
    /// WHY`) and exit 0 (healthy) or 1 (not). Either mode, no JOIN; with --tls/--ca and
    /// --token as for a session. Never prompts. Not with --every, --message, --messages,
    /// --chat, --block or the classic wire
    #[arg(long)]
    pub probe: bool,
    /// With --probe: the whole check's deadline (DUR: 250ms, 2s; a plain number is seconds),
    /// connect, TLS handshake, HELLO and the round trip together [default: 2s]
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub timeout: Option<Duration>,
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
    /// The JWT sent as `AUTH TOKEN` first on every connection, if any.
    pub token: Option<String>,
    /// Where the classic-wire client listens for the heartbeat socket.
    pub listen_host: String,
    /// Port of the classic-wire heartbeat listener.
    pub listen_port: u16,
    /// TLS to the server, if on: `Some(None)` trusts the system's roots, `Some(Some(PEM))`
    /// only the certificates in that file.
    pub tls: Option<Option<PathBuf>>,
    /// `--probe`: a health check with this deadline (`--timeout`) instead of a session.
    pub probe: Option<Duration>,
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
        // The chat client reads stdin for messages, so it never prompts; a health check
        // runs unattended, so it never does either.
        let prompt = !flags.defaults && !flags.chat && !flags.probe;
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
        let token = flags.token.clone().or_else(|| f.token.clone());
        // A flag overrides the file's client.name; both were checked already. Without
        // either, the token's sub (checked to be readable) names the chatter.
        let chat_name = flags
            .chat
            .then(|| {
                flags
                    .name
                    .clone()
                    .or_else(|| f.name.clone())
                    .or_else(|| token.as_deref().and_then(|t| token_name(t).ok()))
            })
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
            token,
            listen_host: f.host.clone().unwrap_or_else(|| defaults::HOST.into()),
            listen_port: f.port.unwrap_or(defaults::CLIENT_PORT),
            tls: (flags.tls || flags.ca.is_some()).then(|| flags.ca.clone()),
            probe: flags
                .probe
                .then(|| flags.timeout.unwrap_or(defaults::PROBE_TIMEOUT)),
        })
    }
}

impl ClientSettings {
    /// What the user should hear before connecting: a chat name other than the token's
    /// `sub` (the server would end the session `auth-failed` at the JOIN).
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let (Some(name), Some(token)) = (&self.chat_name, &self.token) {
            match token_name(token) {
                Ok(sub) if sub != *name => out.push(format!(
                    "warning: the chat name {name:?} is not the token's sub {sub:?}; a server \
                     with --auth-secret will end the session auth-failed at the JOIN"
                )),
                Ok(_) => {}
                Err(why) => out.push(format!(
                    "warning: cannot read the token's sub ({why}); the server will judge it"
                )),
            }
        }
        out
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

    /// A token for `sub` (any secret: the client cannot check it).
    fn token_for(sub: &str) -> String {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &serde_json::json!({"sub": sub, "exp": 1}),
            &jsonwebtoken::EncodingKey::from_secret(b"whatever"),
        )
        .unwrap()
    }

    #[test]
    fn a_token_names_the_chatter_when_no_name_is_given() {
        let ann = token_for("ann");
        let with = |name: Option<&str>, token: &str| ClientFlags {
            token: Some(token.into()),
            ..chat(name)
        };
        let c = client(with(None, &ann), "{}").unwrap();
        assert_eq!(c.chat_name.as_deref(), Some("ann"));
        assert_eq!(c.token.as_deref(), Some(ann.as_str()));
        assert!(c.warnings().is_empty());
        // --name wins, with a warning before connecting.
        let c = client(with(Some("bob"), &ann), "{}").unwrap();
        assert_eq!(c.chat_name.as_deref(), Some("bob"));
        assert_eq!(
            c.warnings(),
            [
                "warning: the chat name \"bob\" is not the token's sub \"ann\"; a server with \
              --auth-secret will end the session auth-failed at the JOIN"
            ]
        );
        // A token whose sub is unreadable or unusable does not name anyone.
        for bad in [token_for("a b"), "not-a-jwt".into()] {
            let e = client(with(None, &bad), "{}").unwrap_err();
            assert!(
                e.starts_with("--chat needs a name: --name NAME, or a --token whose sub is one ("),
                "{e}"
            );
        }
        // From the file.
        let file = format!(r#"{{"client": {{"token": "{ann}"}}}}"#);
        assert_eq!(
            client(chat(None), &file).unwrap().chat_name.as_deref(),
            Some("ann")
        );
        // A token is one word of one line; it is a line-wire thing.
        for (bad, why) in [("", "must not be empty"), ("a b", "must be one word")] {
            let e = client(with(Some("ann"), bad), "{}").unwrap_err();
            assert!(e.starts_with(&format!("--token: {why}")), "{e}");
        }
        assert!(parse(r#"{"client": {"token": "a\nb"}}"#)
            .unwrap_err()
            .to_string()
            .starts_with("configuration.json: client.token: must be one word"));
        assert_eq!(
            client(
                ClientFlags {
                    token: Some(ann.clone()),
                    wire: Some(Wire::Classic),
                    defaults: true,
                    ..Default::default()
                },
                "{}"
            )
            .unwrap_err(),
            "--token works only on the line wire, not with --wire classic"
        );
        // Echo clients send it too.
        let c = client(
            ClientFlags {
                token: Some(ann.clone()),
                defaults: true,
                ..Default::default()
            },
            "{}",
        )
        .unwrap();
        assert_eq!(
            (c.token.as_deref(), c.chat_name),
            (Some(ann.as_str()), None)
        );
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

    #[test]
    fn the_probe_takes_a_timeout_and_refuses_what_it_would_not_do() {
        let probe = |f: fn(&mut ClientFlags)| {
            let mut flags = ClientFlags {
                probe: true,
                ..Default::default()
            };
            f(&mut flags);
            client(flags, "{}")
        };
        let c = probe(|_| {}).unwrap();
        assert_eq!(c.probe, Some(ms(2000)));
        assert_eq!((c.host.as_str(), c.port), ("127.0.0.1", 8000));
        let c = probe(|f| f.timeout = Some(ms(250))).unwrap();
        assert_eq!(c.probe, Some(ms(250)));
        // What a probe may use.
        let c = probe(|f| {
            f.port = Some(9000);
            f.ca = Some("ca.pem".into());
            f.token = Some("t.o.k".into());
            f.wire = Some(Wire::Line);
        })
        .unwrap();
        assert_eq!(
            (c.port, c.tls, c.token.as_deref()),
            (9000, Some(Some("ca.pem".into())), Some("t.o.k"))
        );
        for (flag, set) in [
            (
                "--every",
                (|f| f.every = Some(ms(5))) as fn(&mut ClientFlags),
            ),
            ("--message", |f| f.message = Some("hi".into())),
            ("--messages", |f| f.messages = Some(3)),
            ("--chat", |f| f.chat = true),
            ("--name", |f| f.name = Some("ann".into())),
            ("--block", |f| f.block = Some(Duration::ZERO)),
            ("--reconnect-for", |f| f.reconnect_for = Some(ms(5))),
        ] {
            assert_eq!(
                probe(set).unwrap_err(),
                format!(
                    "{flag} does nothing with --probe: the probe only checks HELLO and one \
                     PING round trip"
                )
            );
        }
        assert_eq!(
            probe(|f| f.wire = Some(Wire::Classic)).unwrap_err(),
            "--probe works only on the line wire, not with --wire classic"
        );
        assert_eq!(
            client(
                ClientFlags {
                    probe: true,
                    ..Default::default()
                },
                r#"{"server": {"wire": "classic"}}"#
            )
            .unwrap_err(),
            "--probe works only on the line wire, not with server.wire \"classic\" in \
             configuration.json"
        );
        // File values for sessions are no error: one file serves every use.
        let c = client(
            ClientFlags {
                probe: true,
                ..Default::default()
            },
            r#"{"client": {"every": 5, "message": "hi", "name": "ann"}}"#,
        )
        .unwrap();
        assert_eq!(c.probe, Some(ms(2000)));
        // --timeout belongs to the probe.
        assert_eq!(
            client(
                ClientFlags {
                    timeout: Some(ms(5)),
                    defaults: true,
                    ..Default::default()
                },
                "{}"
            )
            .unwrap_err(),
            "--timeout does nothing without --probe (it is the probe's deadline)"
        );
        assert_eq!(
            client(
                ClientFlags {
                    defaults: true,
                    ..Default::default()
                },
                "{}"
            )
            .unwrap()
            .probe,
            None
        );
    }

    #[test]
    fn the_probe_never_prompts() {
        let file = parse("{}").unwrap();
        // An interactive prompter with answers that would change every and block.
        let mut p = prompter("5\n5\n", true);
        let flags = ClientFlags {
            probe: true,
            ..Default::default()
        };
        let c = ClientSettings::resolve(&flags, &file, &mut p).unwrap();
        assert_eq!((c.every, c.block), (ms(30_000), Duration::ZERO));
    }
}
