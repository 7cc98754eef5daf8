//! `hb-client`: settings, signals, run, exit status.

use std::fmt;

use crate::app::cli::{load_file, stdin_prompter, ClientArgs};
use crate::config::{fmt_duration, ClientSettings, ConfigError};
use crate::core::client::Outcome;
use crate::core::probe::Verdict;
use crate::net::chat_client;
use crate::net::client::{self, ClientError};
use crate::net::events::{flush_stdout, EventLog};
use std::time::Duration;

/// Why `hb-client` could not run a session.
#[derive(Debug)]
pub enum RunError {
    /// Bad flags, configuration or prompt answers (exit 2).
    Config(ConfigError),
    /// Connecting failed (exit 1).
    Client(ClientError),
    /// The signal handler could not be installed (exit 1).
    Signal(ctrlc::Error),
}

impl RunError {
    /// The documented exit status.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Config(_)
            | Self::Client(
                ClientError::Unsupported(_)
                | ClientError::NameRefused(_)
                | ClientError::TlsSetup(_),
            ) => 2,
            Self::Client(_) | Self::Signal(_) => 1,
        }
    }
}

impl fmt::Display for RunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Config(e) => e.fmt(f),
            Self::Client(e) => e.fmt(f),
            Self::Signal(e) => write!(f, "cannot install the Ctrl-C handler: {e}"),
        }
    }
}

impl std::error::Error for RunError {}

/// One line for stderr explaining how the session ended.
pub fn describe(outcome: Outcome) -> String {
    outcome.to_string()
}

/// Resolves the settings (prompting if needed), connects, and runs until the session ends.
/// With `--probe`, see [`probe`] instead.
pub fn run(args: &ClientArgs) -> Result<Outcome, RunError> {
    let flags = &args.flags;
    let file = load_file(flags.config.as_deref()).map_err(RunError::Config)?;
    let mut prompter = stdin_prompter();
    let settings =
        ClientSettings::resolve(flags, &file, &mut prompter).map_err(RunError::Config)?;
    if settings.probe.is_some() {
        return Err(RunError::Config(ConfigError::Usage(
            "internal: a --probe command line reached the session runner (see client::probe)"
                .into(),
        )));
    }
    for w in settings.warnings() {
        let _ = prompter.say(&format!("hb-client: {w}"));
    }
    if settings.chat_name.is_none() {
        let _ = prompter.say(&format!(
            "sending {:?} every {}, answering heartbeats after {}",
            settings.message,
            fmt_duration(settings.every),
            fmt_duration(settings.block)
        ));
    }
    drop(prompter);
    let (tx, stop) = crossbeam_channel::bounded::<()>(1);
    ctrlc::set_handler(move || {
        let _ = tx.try_send(());
    })
    .map_err(RunError::Signal)?;
    let outcome = match &settings.chat_name {
        Some(name) => chat_client::run_stdio(&settings, name, &stop),
        None => client::run(&settings, &EventLog::stdout(), &stop),
    };
    flush_stdout(Duration::from_millis(200));
    outcome.map_err(RunError::Client)
}

/// `hb-client --probe`: resolves the settings (never prompting), runs the health check and
/// returns its verdict, the one line to print (exit 0 healthy, 1 not). Bad flags or
/// configuration, and a `--ca` that cannot be loaded, are errors (exit 2).
pub fn probe(args: &ClientArgs) -> Result<Verdict, RunError> {
    let flags = &args.flags;
    let file = load_file(flags.config.as_deref()).map_err(RunError::Config)?;
    let settings =
        ClientSettings::resolve(flags, &file, &mut stdin_prompter()).map_err(RunError::Config)?;
    let Some(timeout) = settings.probe else {
        return Err(RunError::Config(ConfigError::Usage(
            "not a probe: add --probe".into(),
        )));
    };
    crate::net::probe::run(&settings, timeout).map_err(RunError::Client)
}
