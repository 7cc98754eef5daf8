//! The server's connections, for both wires: who still holds threads and descriptors, so
//! `--max-conns` counts them and shutdown can end them all and wait for them to go.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Connections of type `C` by number. A connection is inserted when admitted and removed
/// when the last of its threads exits ([`Registry::remove`]).
#[derive(Debug)]
pub struct Registry<C> {
    conns: Mutex<HashMap<u64, Arc<C>>>,
    /// Signalled whenever a connection is removed, so shutdown waits without polling.
    freed: Condvar,
    next_id: AtomicU64,
}

impl<C> Default for Registry<C> {
    fn default() -> Self {
        Self {
            conns: Mutex::new(HashMap::new()),
            freed: Condvar::new(),
            next_id: AtomicU64::new(1),
        }
    }
}

impl<C> Registry<C> {
    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Arc<C>>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A connection number never used before in this registry (from 1).
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Registers connection `id`.
    pub fn insert(&self, id: u64, conn: Arc<C>) {
        self.lock().insert(id, conn);
    }

    /// Forgets connection `id` and wakes [`Registry::wait_empty`].
    pub fn remove(&self, id: u64) {
        self.lock().remove(&id);
        self.freed.notify_all();
    }

    /// Connections registered now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when none is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every connection registered now.
    pub fn all(&self) -> Vec<Arc<C>> {
        self.lock().values().cloned().collect()
    }

    /// Waits at most `grace` for every connection to be removed; returns those still there.
    pub fn wait_empty(&self, grace: Duration) -> Vec<Arc<C>> {
        let deadline = Instant::now() + grace;
        let mut guard = self.lock();
        while !guard.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            guard = self
                .freed
                .wait_timeout(guard, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        guard.values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shutdown_waits_for_removal_and_reports_who_is_left() {
        let r: Arc<Registry<&str>> = Arc::default();
        let (a, b) = (r.next_id(), r.next_id());
        assert_eq!((a, b), (1, 2));
        r.insert(a, Arc::new("a"));
        r.insert(b, Arc::new("b"));
        let r2 = r.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            r2.remove(1);
        });
        let left = r.wait_empty(Duration::from_millis(300));
        t.join().unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(*left[0], "b");
        r.remove(2);
        assert!(r.wait_empty(Duration::from_secs(5)).is_empty());
    }
}
