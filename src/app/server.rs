//! `hb-server`: settings, signals, run.

use std::fmt;

use crate::app::cli::{load_file, stdin_prompter, ServerArgs};
use crate::config::{fmt_duration, ConfigError, ServerSettings};
use crate::net::events::{flush_stdout, EventLog};
use crate::net::server::{Server, ServerError};
use std::time::Duration;

/// Why `hb-server` stopped with an error.
#[derive(Debug)]
pub enum RunError {
    /// Bad flags, configuration or prompt answers (exit 2).
    Config(ConfigError),
    /// The server could not start: exit 1 when listening failed (e.g. the port is in use),
    /// 2 when the settings ask for something it does not do.
    Server(ServerError),
    /// The accept thread could not be started (exit 1).
    Thread(std::io::Error),
    /// The signal handler could not be installed (exit 1).
    Signal(ctrlc::Error),
}

impl RunError {
    /// The documented exit status.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Config(_)
            | Self::Server(ServerError::Unsupported(_))
            | Self::Server(ServerError::Tls(_))
            | Self::Server(ServerError::Broker(crate::net::broker::BrokerError::BadUrl(_))) => 2,
            Self::Server(_) | Self::Thread(_) | Self::Signal(_) => 1,
        }
    }
}

impl fmt::Display for RunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Config(e) => e.fmt(f),
            Self::Server(e) => e.fmt(f),
            Self::Thread(e) => write!(f, "cannot start the accept thread: {e}"),
            Self::Signal(e) => write!(f, "cannot install the Ctrl-C handler: {e}"),
        }
    }
}

impl std::error::Error for RunError {}

/// Resolves the settings (prompting if needed), listens, and serves until SIGINT/SIGTERM.
pub fn run(args: &ServerArgs) -> Result<(), RunError> {
    let flags = &args.flags;
    let file = load_file(flags.config.as_deref()).map_err(RunError::Config)?;
    let mut prompter = stdin_prompter();
    let settings =
        ServerSettings::resolve(flags, &file, &mut prompter).map_err(RunError::Config)?;
    let hb = settings.heartbeat;
    if let Some(asked) = settings.idle_raised_from {
        let _ = prompter.say(&format!(
            "idle {} is shorter than interval x count; using {}",
            fmt_duration(asked),
            fmt_duration(hb.idle())
        ));
    }
    let _ = prompter.say(&format!(
        "heartbeat: interval {}, count {}, idle {}",
        fmt_duration(hb.interval()),
        hb.count(),
        fmt_duration(hb.idle())
    ));
    if let (Some(auth), Some(path)) = (&settings.auth, &settings.auth_secret) {
        if auth.is_weak() {
            let _ = prompter.say(&format!(
                "warning: the secret in {} is {} bytes; HS256 wants at least {} (256 bits): a \
                 shorter one can be guessed offline from any token",
                path.display(),
                auth.secret_len(),
                crate::core::auth::MIN_SECRET_BYTES
            ));
        }
        let _ = prompter.say(&format!(
            "authentication: AUTH with a JWT (HS256, the secret in {}) within {}",
            path.display(),
            fmt_duration(settings.handshake)
        ));
    }
    drop(prompter);
    raise_fd_limit();
    let server = Server::bind(settings, EventLog::stdout()).map_err(RunError::Server)?;
    let handle = server.handle();
    let (tx, rx) = crossbeam_channel::bounded::<()>(1);
    ctrlc::set_handler(move || {
        let _ = tx.try_send(());
    })
    .map_err(RunError::Signal)?;
    let accept = std::thread::Builder::new()
        .name("hb-accept".into())
        .spawn(move || server.run())
        .map_err(RunError::Thread)?;
    let _ = rx.recv();
    handle.shutdown();
    // The accept thread sees the stop flag after the self-connect; a failure there is moot now.
    let _ = accept.join();
    flush_stdout(Duration::from_millis(200));
    Ok(())
}

/// Raises the soft limit on open files to the hard limit, as servers that hold many clients
/// do (each client is a descriptor; the soft limit is often 1024 while the hard one is far
/// higher). Failing to raise it is not an error: the server then refuses newcomers with
/// `END server-full` when descriptors run out.
fn raise_fd_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut lim = getrlimit(Resource::Nofile);
    if lim.current < lim.maximum {
        lim.current = lim.maximum;
        let _ = setrlimit(Resource::Nofile, lim);
    }
}
