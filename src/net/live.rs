//! What new connections are served with, swapped whole by a reload (SIGHUP, CONTRACT section
//! 10): both engines read their settings, TLS certificate and per-address limit from here at
//! each `admit`, so a reload applies to connections accepted afterwards and never to the ones
//! already running (their sessions were configured when they came).

use std::sync::{Arc, Mutex, RwLock};

use crate::config::server::Reload;
use crate::config::ServerSettings;
use crate::core::admission::PerIp;
use crate::net::server::{server_tls, ServerError};
use crate::net::tls::ServerTlsConfig;

/// The live settings of a server.
pub struct Live {
    settings: RwLock<Arc<ServerSettings>>,
    tls: RwLock<Option<ServerTlsConfig>>,
    /// Connections per client address (`--max-conns-per-ip`).
    pub per_ip: Mutex<PerIp>,
    /// Most connections this process can serve whatever `--max-conns` says (the thread
    /// engine's memory-map allowance), if lower.
    cap: Option<usize>,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live").finish_non_exhaustive()
    }
}

fn read<T: Clone>(lock: &RwLock<T>) -> T {
    lock.read().unwrap_or_else(|p| p.into_inner()).clone()
}

impl Live {
    /// The settings a server was bound with (`max_conns` already within `cap`), and its
    /// loaded TLS configuration.
    pub fn new(settings: ServerSettings, tls: Option<ServerTlsConfig>, cap: Option<usize>) -> Self {
        let per_ip = Mutex::new(PerIp::new(settings.max_conns_per_ip));
        Self {
            settings: RwLock::new(Arc::new(settings)),
            tls: RwLock::new(tls),
            per_ip,
            cap,
        }
    }

    /// The settings in effect now.
    pub fn settings(&self) -> Arc<ServerSettings> {
        read(&self.settings)
    }

    /// The TLS configuration new connections get, if the server speaks TLS.
    pub fn tls(&self) -> Option<ServerTlsConfig> {
        read(&self.tls)
    }

    /// The TLS side of a new connection, when the server speaks TLS.
    pub fn accept_tls(&self) -> Result<Option<crate::net::tls::ServerTls>, rustls::Error> {
        self.tls().as_ref().map(ServerTlsConfig::accept).transpose()
    }

    /// The per-address counter (locked briefly by `admit` and `release`).
    pub fn per_ip(&self) -> std::sync::MutexGuard<'_, PerIp> {
        self.per_ip.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies freshly resolved settings (the configuration file re-read): what may change
    /// while serving does, for connections accepted from now on; the certificate files are
    /// read again (a renewed certificate is picked up). Nothing changes when the new
    /// certificate cannot be loaded: the error says why.
    pub fn reload(&self, new: &ServerSettings) -> Result<Reload, ServerError> {
        let current = self.settings();
        let mut r = current.reload(new);
        if let Some(cap) = self.cap.filter(|&cap| cap < r.settings.max_conns) {
            // Asked for more than the memory maps allow (see the thread engine's start-up
            // line): as many as they do.
            r.settings.max_conns = cap;
            r.changed.retain(|c| !c.starts_with("max-conns "));
            if current.max_conns != cap {
                r.changed.push(format!(
                    "max-conns {} -> {cap} (asked {}; vm.max_map_count allows {cap})",
                    current.max_conns, new.max_conns
                ));
            }
        }
        let tls = server_tls(&r.settings)?;
        if tls.is_some() {
            r.changed.push("TLS certificate and key read again".into());
        }
        self.per_ip().set_max(r.settings.max_conns_per_ip);
        *self.tls.write().unwrap_or_else(|p| p.into_inner()) = tls;
        *self.settings.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(r.settings.clone());
        Ok(r)
    }
}
