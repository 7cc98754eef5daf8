//! `hb-server`: settings, signals, run.

use std::fmt;

use crate::app::cli::{load_file, stdin_prompter, ServerArgs};
use crate::config::{
    fmt_duration, ConfigError, Engine, ServerFlags, ServerOptions, ServerSettings,
};
use crate::net::events::{flush_stdout, Event, EventLog};
use crate::net::server::{Server, ServerError, ServerHandle};
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
    /// The signal handlers could not be installed (exit 1).
    Signal(std::io::Error),
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
            Self::Signal(e) => write!(f, "cannot install the signal handlers: {e}"),
        }
    }
}

impl std::error::Error for RunError {}

/// Resolves the settings (prompting if needed), listens, and serves until SIGINT/SIGTERM.
pub fn run(args: &ServerArgs) -> Result<(), RunError> {
    let flags = &args.flags;
    crate::net::events::set_log_style(crate::net::events::LogStyle {
        json: flags.log_format == Some(crate::config::LogFormat::Json),
        quiet: flags.quiet,
    });
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
    // A reload (SIGHUP) re-reads the file with the flags over it; what was prompted for at
    // start-up (nothing in a flag or the file) keeps the answer given, below the file.
    let o = flags.options.or(&file.server);
    let prompted = ServerOptions {
        interval: o.interval.is_none().then(|| settings.heartbeat.interval()),
        count: o.count.is_none().then(|| settings.heartbeat.count()),
        idle: o.idle.is_none().then(|| {
            settings
                .idle_raised_from
                .unwrap_or(settings.heartbeat.idle())
        }),
        ..ServerOptions::default()
    };
    raise_fd_limit();
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP, SIGUSR1])
        .map_err(RunError::Signal)?;
    let log = EventLog::stdout();
    let server = Server::bind(settings, log.clone()).map_err(RunError::Server)?;
    let handle = server.handle();
    // If serving stops by itself (an error), the wait for signals stops too.
    let waiting = signals.handle();
    let accept = std::thread::Builder::new()
        .name("hb-accept".into())
        .spawn(move || {
            let served = server.run();
            waiting.close();
            served
        })
        .map_err(RunError::Thread)?;
    let started = std::time::Instant::now();
    let mut asked_to_stop = false;
    for signal in signals.forever() {
        match signal {
            SIGHUP => reload(flags, &prompted, &handle, &log),
            SIGUSR1 => log.emit(Event::Status {
                connections: handle.connections(),
                summary: summary(&handle.settings()),
                up: started.elapsed(),
            }),
            _ => {
                asked_to_stop = true;
                break;
            }
        }
    }
    handle.shutdown();
    // After a stop signal a failure of the accept thread is moot; without one, it is why the
    // server stopped.
    let served = accept.join();
    flush_stdout(Duration::from_millis(200));
    match served {
        Ok(Err(e)) if !asked_to_stop => Err(RunError::Server(e)),
        _ => Ok(()),
    }
}

/// SIGHUP: the configuration file read again, the flags still over it, never prompting;
/// applied to connections accepted from now on. A file that does not load keeps the old
/// settings, and the log says why either way.
fn reload(flags: &ServerFlags, prompted: &ServerOptions, handle: &ServerHandle, log: &EventLog) {
    let resolved = load_file(flags.config.as_deref()).and_then(|mut file| {
        file.server = file.server.or(prompted);
        let quiet = ServerFlags {
            defaults: true,
            ..flags.clone()
        };
        let mut silent = crate::config::Prompter::new(std::io::empty(), std::io::sink(), false);
        ServerSettings::resolve(&quiet, &file, &mut silent)
    });
    let event = match resolved
        .map_err(|e| e.to_string())
        .and_then(|new| handle.reload(&new).map_err(|e| e.to_string()))
    {
        Ok(r) => Event::Reloaded {
            changed: r.changed,
            restart_needed: r.restart_needed,
        },
        Err(error) => Event::ReloadFailed {
            error: error.replace('\n', "; "),
        },
    };
    log.emit(event);
}

/// The settings in effect, on one line (the SIGUSR1 status).
fn summary(s: &ServerSettings) -> String {
    let hb = s.heartbeat;
    let mut parts = vec![
        format!("mode {}, wire {}", s.mode.as_str(), s.wire.as_str()),
        match s.engine {
            Engine::Threads => "engine threads".to_string(),
            Engine::Events => format!("engine events ({} workers)", s.event_workers()),
        },
        format!(
            "heartbeat interval {}, count {}, idle {}",
            fmt_duration(hb.interval()),
            hb.count(),
            fmt_duration(hb.idle())
        ),
        format!("max-conns {}", s.max_conns),
    ];
    if let Some(n) = s.max_conns_per_ip {
        parts.push(format!("max-conns-per-ip {n}"));
    }
    if let Some(r) = s.rate {
        parts.push(format!("rate {}/s burst {}", r.per_sec, r.burst));
    }
    parts.push(format!(
        "tls {}, auth {}",
        if s.tls.is_some() { "on" } else { "off" },
        if s.auth.is_some() { "on" } else { "off" }
    ));
    parts.join(", ")
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
