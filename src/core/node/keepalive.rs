//! The keep-alive table: which clients were seen when, and which are past their timeout.

use super::error::NodeError;
use std::collections::BTreeMap;

/// Settings and last sighting of one registered client.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    timeout_ms: u64,
    ping_interval_ms: u64,
    last_seen_ms: u64,
}

/// One row of [`KeepAliveTable::status`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientStatus {
    /// The client's id.
    pub client_id: String,
    /// Milliseconds since the client was last seen.
    pub last_seen_ms_ago: u64,
    /// True when the client is past its timeout but no check has removed it yet.
    pub expired: bool,
}

/// Result of [`KeepAliveTable::check`]: both lists sorted by client id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckOutcome {
    /// Clients past their timeout; they are no longer in the table.
    pub expired: Vec<String>,
    /// Clients still within their timeout.
    pub active: Vec<String>,
}

/// Clients keyed (and therefore sorted) by id, on a clock that never runs backwards.
///
/// Every method takes `clock_ms`, the node's own clock; the table's `now` is the larger
/// of that and the largest `current_time_ms` a check has supplied.
#[derive(Clone, Debug, Default)]
pub struct KeepAliveTable {
    clients: BTreeMap<String, Entry>,
    max_supplied_ms: u64,
}

impl KeepAliveTable {
    /// An empty table.
    pub fn new() -> KeepAliveTable {
        KeepAliveTable::default()
    }

    /// The table's notion of now for a node clock reading.
    pub fn now(&self, clock_ms: u64) -> u64 {
        clock_ms.max(self.max_supplied_ms)
    }

    /// Registers `client_id` (or updates its settings) with last_seen = now.
    pub fn register(
        &mut self,
        client_id: &str,
        timeout_ms: u64,
        ping_interval_ms: u64,
        clock_ms: u64,
    ) {
        let now = self.now(clock_ms);
        self.clients.insert(
            client_id.to_owned(),
            Entry {
                timeout_ms,
                ping_interval_ms,
                last_seen_ms: now,
            },
        );
    }

    /// Marks `client_id` as seen now, which also revives a client that is past its
    /// timeout but was not yet removed by a check.
    pub fn heartbeat(&mut self, client_id: &str, clock_ms: u64) -> Result<(), NodeError> {
        let now = self.now(clock_ms);
        let entry = self
            .clients
            .get_mut(client_id)
            .ok_or_else(|| NodeError::UnknownClient {
                client_id: client_id.to_owned(),
            })?;
        entry.last_seen_ms = now;
        Ok(())
    }

    /// Moves now forward to `current_time_ms` (if given and later), then removes and lists
    /// every client strictly past its timeout.
    pub fn check(&mut self, current_time_ms: Option<u64>, clock_ms: u64) -> CheckOutcome {
        if let Some(t) = current_time_ms {
            self.max_supplied_ms = self.max_supplied_ms.max(t);
        }
        let now = self.now(clock_ms);
        let mut outcome = CheckOutcome::default();
        self.clients.retain(|id, entry| {
            let keep = !is_expired(entry, now);
            if keep {
                outcome.active.push(id.clone());
            } else {
                outcome.expired.push(id.clone());
            }
            keep
        });
        outcome
    }

    /// Every client in the table, sorted by id.
    pub fn status(&self, clock_ms: u64) -> Vec<ClientStatus> {
        let now = self.now(clock_ms);
        self.clients
            .iter()
            .map(|(id, entry)| ClientStatus {
                client_id: id.clone(),
                last_seen_ms_ago: now.saturating_sub(entry.last_seen_ms),
                expired: is_expired(entry, now),
            })
            .collect()
    }

    /// The ping interval a client registered with, if it is in the table.
    pub fn ping_interval_ms(&self, client_id: &str) -> Option<u64> {
        self.clients.get(client_id).map(|e| e.ping_interval_ms)
    }

    /// Number of clients in the table.
    pub fn len(&self) -> usize {
        self.clients.len()
    }

    /// True when no client is registered.
    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }
}

/// Strict: a client exactly `timeout_ms` old is still active (CONTRACT 5).
fn is_expired(entry: &Entry, now: u64) -> bool {
    now.saturating_sub(entry.last_seen_ms) > entry.timeout_ms
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_example_expires_silent_client_and_keeps_fresh_one() {
        let mut t = KeepAliveTable::new();
        t.register("c1", 30_000, 10_000, 0);
        // c2 registers 40 s in by the node clock; the check then supplies 45 s.
        t.register("c2", 30_000, 10_000, 40_000);
        let out = t.check(Some(45_000), 40_000);
        assert_eq!(out.expired, vec!["c1".to_owned()]);
        assert_eq!(out.active, vec!["c2".to_owned()]);
        assert_eq!(
            t.status(40_000),
            vec![ClientStatus {
                client_id: "c2".into(),
                last_seen_ms_ago: 5_000,
                expired: false
            }]
        );
    }

    #[test]
    fn expiry_is_strict() {
        let mut t = KeepAliveTable::new();
        t.register("a", 100, 10, 0);
        assert!(t.check(Some(100), 0).expired.is_empty());
        assert_eq!(t.check(Some(101), 0).expired, vec!["a".to_owned()]);
        assert!(t.is_empty());
    }

    #[test]
    fn time_never_runs_backwards() {
        let mut t = KeepAliveTable::new();
        t.check(Some(5_000), 0);
        t.register("a", 1_000, 10, 0);
        // An older current_time_ms and an earlier clock do not move now back.
        t.check(Some(10), 3);
        assert_eq!(t.status(4)[0].last_seen_ms_ago, 0);
        // The node clock moves now forward once it passes the supplied time.
        assert_eq!(t.status(5_700)[0].last_seen_ms_ago, 700);
    }

    #[test]
    fn heartbeat_revives_expired_but_unremoved_client() {
        let mut t = KeepAliveTable::new();
        t.register("a", 100, 10, 0);
        assert!(t.status(500)[0].expired);
        t.heartbeat("a", 500).unwrap();
        let s = &t.status(500)[0];
        assert!(!s.expired);
        assert_eq!(s.last_seen_ms_ago, 0);
        assert!(t.check(None, 550).expired.is_empty());
    }

    #[test]
    fn reregister_updates_settings_and_last_seen() {
        let mut t = KeepAliveTable::new();
        t.register("a", 100, 10, 0);
        t.register("a", 1_000, 20, 500);
        assert_eq!(t.ping_interval_ms("a"), Some(20));
        assert_eq!(t.len(), 1);
        assert!(t.check(None, 1_400).expired.is_empty());
    }

    #[test]
    fn unknown_client_heartbeat_fails() {
        let mut t = KeepAliveTable::new();
        assert_eq!(
            t.heartbeat("ghost", 0),
            Err(NodeError::UnknownClient {
                client_id: "ghost".into()
            })
        );
    }

    #[test]
    fn lists_are_sorted_by_client_id() {
        let mut t = KeepAliveTable::new();
        for id in ["c3", "c1", "c2"] {
            t.register(id, 10, 1, 0);
        }
        t.register("a9", 1_000_000, 1, 0);
        let out = t.check(Some(50), 0);
        assert_eq!(out.expired, vec!["c1", "c2", "c3"]);
        assert_eq!(out.active, vec!["a9"]);
    }
}
