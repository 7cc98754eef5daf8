//! The heartbeat timing state machine, one per connection.
//!
//! Every byte received proves the peer alive. After `idle` with nothing received a *round*
//! starts: `PING 1` at `t + idle`, `PING 2` one `interval` later, and so on. Anything received
//! ends the round. When `count` heartbeats in a row went unanswered for one `interval` each,
//! the peer is declared dead: a peer silent from `t` gets `PING 1` at `t + idle` and is dead at
//! `t + idle + count * interval`.
//!
//! The machine never reads the clock: callers pass `now` to [`Heartbeat::handle_rx`] and
//! [`Heartbeat::poll`], and sleep until [`Heartbeat::poll_timeout`]. Deadlines that would
//! overflow [`Instant`] (absurdly large settings) become "never" instead of panicking.

use std::fmt;
use std::time::{Duration, Instant};

/// Why a [`HeartbeatConfig`] was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeartbeatConfigError {
    /// `interval` was zero: heartbeats would be sent in a tight loop.
    ZeroInterval,
    /// `count` was zero: a round could never be answered.
    ZeroCount,
    /// `idle` was zero: every connection would start a round at once.
    ZeroIdle,
}

impl fmt::Display for HeartbeatConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::ZeroInterval => "interval must be greater than zero",
            Self::ZeroCount => "count must be at least 1",
            Self::ZeroIdle => "idle must be greater than zero",
        })
    }
}

impl std::error::Error for HeartbeatConfigError {}

/// Validated heartbeat settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeartbeatConfig {
    idle: Duration,
    interval: Duration,
    count: u32,
}

impl HeartbeatConfig {
    /// Validates the settings. Like the manual, an `idle` shorter than `interval * count` is
    /// raised to `interval * count`; [`HeartbeatConfig::raised_idle_from`] tells callers whether
    /// that happened so they can say so.
    pub fn new(
        idle: Duration,
        interval: Duration,
        count: u32,
    ) -> Result<Self, HeartbeatConfigError> {
        if interval.is_zero() {
            return Err(HeartbeatConfigError::ZeroInterval);
        }
        if count == 0 {
            return Err(HeartbeatConfigError::ZeroCount);
        }
        if idle.is_zero() {
            return Err(HeartbeatConfigError::ZeroIdle);
        }
        let round = saturating_mul(interval, count);
        Ok(Self {
            idle: idle.max(round),
            interval,
            count,
        })
    }

    /// The `idle` originally asked for, when [`HeartbeatConfig::new`] had to raise it.
    pub fn raised_idle_from(requested_idle: Duration, cfg: &Self) -> Option<Duration> {
        (requested_idle < cfg.idle).then_some(requested_idle)
    }

    /// Silence before a round starts.
    pub fn idle(&self) -> Duration {
        self.idle
    }

    /// Time between heartbeats within a round.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Unanswered heartbeats before the peer is declared dead.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// `interval * count`: how long a round lasts when nothing answers.
    pub fn round_length(&self) -> Duration {
        saturating_mul(self.interval, self.count)
    }

    /// `idle + interval * count`: the longest silence a live peer can show before it is dead.
    pub fn give_up_after(&self) -> Duration {
        self.idle.saturating_add(self.round_length())
    }
}

fn saturating_mul(d: Duration, n: u32) -> Duration {
    d.checked_mul(n).unwrap_or(Duration::MAX)
}

/// What the owner of a connection must do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Action {
    /// Send heartbeat number `k` (1-based) of the current round.
    SendPing(u32),
    /// `count` heartbeats went unanswered: end the connection (`END heartbeat-timeout`).
    Dead,
}

/// Where a connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Traffic seen within `idle`; no heartbeat is outstanding.
    Quiet,
    /// A round is running and `sent` heartbeats are unanswered.
    Round {
        /// Heartbeats sent so far in this round.
        sent: u32,
    },
    /// The peer was declared dead; the machine is inert from now on.
    Dead,
}

impl Phase {
    /// True while a heartbeat round is running.
    pub fn is_round(&self) -> bool {
        matches!(self, Self::Round { .. })
    }

    /// True once the peer has been declared dead.
    pub fn is_dead(&self) -> bool {
        matches!(self, Self::Dead)
    }
}

/// A round that ended because the peer sent something.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answered {
    /// How many heartbeats had been sent in the round.
    pub after_pings: u32,
    /// Time from the last heartbeat sent to the traffic that answered it.
    pub rtt: Duration,
}

/// The heartbeat state of one connection. See the module docs for the timing rule.
#[derive(Debug, Clone)]
pub struct Heartbeat {
    cfg: HeartbeatConfig,
    last_rx: Instant,
    phase: Phase,
    /// When `poll` next has something to do; `None` means never (overflow) or dead.
    next: Option<Instant>,
    last_ping: Option<Instant>,
}

impl Heartbeat {
    /// A new connection at `now`; connecting counts as traffic.
    pub fn new(cfg: HeartbeatConfig, now: Instant) -> Self {
        Self {
            cfg,
            last_rx: now,
            phase: Phase::Quiet,
            next: now.checked_add(cfg.idle),
            last_ping: None,
        }
    }

    /// The settings this machine runs with.
    pub fn config(&self) -> &HeartbeatConfig {
        &self.cfg
    }

    /// Where the connection stands.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// When the peer was last heard from.
    pub fn last_rx(&self) -> Instant {
        self.last_rx
    }

    /// Bytes arrived at `now`. Ends a running round and reports it. Times earlier than the
    /// last receipt are ignored, so callers may report receipts a little out of order.
    pub fn handle_rx(&mut self, now: Instant) -> Option<Answered> {
        if self.phase.is_dead() || now < self.last_rx {
            return None;
        }
        self.last_rx = now;
        self.next = now.checked_add(self.cfg.idle);
        let answered = match self.phase {
            Phase::Round { sent } => Some(Answered {
                after_pings: sent,
                rtt: self
                    .last_ping
                    .map_or(Duration::ZERO, |p| now.saturating_duration_since(p)),
            }),
            _ => None,
        };
        self.phase = Phase::Quiet;
        answered
    }

    /// The next instant at which [`Heartbeat::poll`] will have something to do, if any.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next
    }

    /// True when the link has been silent for `idle` at `now` and no round runs yet: the
    /// moment the manual's "start heartbeat" switch is turned on.
    #[must_use]
    pub fn is_idle_expired(&self, now: Instant) -> bool {
        self.phase == Phase::Quiet && self.next.is_some_and(|at| now >= at)
    }

    /// Advances to `now` and returns what is due, at most one action per call: call again
    /// until it returns `None`.
    #[must_use]
    pub fn poll(&mut self, now: Instant) -> Option<Action> {
        let due = self.next.filter(|&at| now >= at)?;
        match self.phase {
            Phase::Dead => None,
            Phase::Round { sent } if sent >= self.cfg.count => {
                self.phase = Phase::Dead;
                self.next = None;
                Some(Action::Dead)
            }
            Phase::Quiet | Phase::Round { .. } => {
                let sent = match self.phase {
                    Phase::Round { sent } => sent + 1,
                    _ => 1,
                };
                self.phase = Phase::Round { sent };
                self.last_ping = Some(now);
                // Schedule from the planned instant so a slightly late wake-up does not drift
                // the deadlines; if we are a whole interval late (process stopped, machine
                // overloaded), give the peer a full interval from now rather than firing the
                // rest of the round at once.
                let planned = due.checked_add(self.cfg.interval);
                self.next = match planned {
                    Some(at) if at > now => Some(at),
                    _ => now.checked_add(self.cfg.interval),
                };
                Some(Action::SendPing(sent))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn cfg(idle_ms: u64, interval_ms: u64, count: u32) -> HeartbeatConfig {
        HeartbeatConfig::new(ms(idle_ms), ms(interval_ms), count).unwrap()
    }

    /// Steps simulated time from deadline to deadline until `end`, recording (ms, action).
    fn run_silent(hb: &mut Heartbeat, t0: Instant, end: Instant) -> Vec<(u128, Action)> {
        let mut out = Vec::new();
        while let Some(at) = hb.poll_timeout() {
            if at > end {
                break;
            }
            while let Some(a) = hb.poll(at) {
                out.push(((at - t0).as_millis(), a));
            }
        }
        out
    }

    #[test]
    fn steady_traffic_never_starts_a_round() {
        let t0 = Instant::now();
        let mut hb = Heartbeat::new(cfg(3000, 500, 3), t0);
        for k in 1..=100u64 {
            let now = t0 + ms(k * 2999);
            assert_eq!(hb.poll(now - MS), None);
            assert_eq!(hb.handle_rx(now), None);
        }
        assert_eq!(hb.phase(), Phase::Quiet);
    }

    #[test]
    fn silent_peer_gets_count_pings_then_dies_on_schedule() {
        let t0 = Instant::now();
        let mut hb = Heartbeat::new(cfg(2000, 500, 3), t0);
        assert!(!hb.is_idle_expired(t0 + ms(1999)));
        assert!(hb.is_idle_expired(t0 + ms(2000)));
        let got = run_silent(&mut hb, t0, t0 + ms(10_000));
        assert_eq!(
            got,
            vec![
                (2000, Action::SendPing(1)),
                (2500, Action::SendPing(2)),
                (3000, Action::SendPing(3)),
                (3500, Action::Dead)
            ]
        );
        assert!(hb.phase().is_dead());
        assert_eq!(hb.poll_timeout(), None);
        assert_eq!(
            hb.handle_rx(t0 + ms(4000)),
            None,
            "a dead connection stays dead"
        );
    }

    #[test]
    fn nothing_is_due_before_the_deadline() {
        let t0 = Instant::now();
        let mut hb = Heartbeat::new(cfg(1000, 100, 2), t0);
        assert_eq!(hb.poll(t0 + ms(999)), None);
        assert_eq!(hb.poll(t0 + ms(1000)), Some(Action::SendPing(1)));
        assert_eq!(hb.poll(t0 + ms(1099)), None);
    }

    #[test]
    fn round_answered_after_ping_k_returns_to_quiet() {
        for k in 1..=3u32 {
            let t0 = Instant::now();
            let mut hb = Heartbeat::new(cfg(2000, 500, 3), t0);
            let mut last_ping = t0;
            for i in 1..=k {
                last_ping = hb.poll_timeout().unwrap();
                assert_eq!(hb.poll(last_ping), Some(Action::SendPing(i)));
            }
            let answer = last_ping + ms(7);
            assert_eq!(
                hb.handle_rx(answer),
                Some(Answered {
                    after_pings: k,
                    rtt: ms(7)
                })
            );
            assert_eq!(hb.phase(), Phase::Quiet);
            // The next round is a full idle after the answer.
            assert_eq!(hb.poll_timeout(), Some(answer + ms(2000)));
            assert_eq!(hb.poll(answer + ms(1999)), None);
            assert_eq!(hb.poll(answer + ms(2000)), Some(Action::SendPing(1)));
        }
    }

    #[test]
    fn traffic_late_in_a_round_saves_the_connection() {
        let t0 = Instant::now();
        let mut hb = Heartbeat::new(cfg(2000, 500, 3), t0);
        let _ = run_silent(&mut hb, t0, t0 + ms(3000)); // PING 1..3 sent
        assert_eq!(hb.phase(), Phase::Round { sent: 3 });
        // One millisecond before the death deadline.
        let late = t0 + ms(3499);
        assert_eq!(hb.handle_rx(late).map(|a| a.after_pings), Some(3));
        assert_eq!(hb.poll(t0 + ms(3500)), None);
        assert_eq!(hb.phase(), Phase::Quiet);
    }

    #[test]
    fn idle_is_raised_to_the_round_length() {
        let c = HeartbeatConfig::new(ms(100), ms(500), 3).unwrap();
        assert_eq!(c.idle(), ms(1500));
        assert_eq!(
            HeartbeatConfig::raised_idle_from(ms(100), &c),
            Some(ms(100))
        );
        let c = HeartbeatConfig::new(ms(2000), ms(500), 3).unwrap();
        assert_eq!(HeartbeatConfig::raised_idle_from(ms(2000), &c), None);
        assert_eq!(c.give_up_after(), ms(3500));
    }

    #[test]
    fn zero_settings_are_rejected() {
        assert_eq!(
            HeartbeatConfig::new(MS, Duration::ZERO, 3),
            Err(HeartbeatConfigError::ZeroInterval)
        );
        assert_eq!(
            HeartbeatConfig::new(MS, MS, 0),
            Err(HeartbeatConfigError::ZeroCount)
        );
        assert_eq!(
            HeartbeatConfig::new(Duration::ZERO, MS, 1),
            Err(HeartbeatConfigError::ZeroIdle)
        );
    }

    #[test]
    fn count_one_dies_one_interval_after_the_only_ping() {
        let t0 = Instant::now();
        let mut hb = Heartbeat::new(cfg(300, 100, 1), t0);
        let got = run_silent(&mut hb, t0, t0 + ms(5000));
        assert_eq!(got, vec![(300, Action::SendPing(1)), (400, Action::Dead)]);
    }

    #[test]
    fn very_large_values_do_not_overflow() {
        let t0 = Instant::now();
        let huge = Duration::from_secs(u64::MAX / 4);
        let c = HeartbeatConfig::new(huge, huge, u32::MAX).unwrap();
        assert_eq!(c.round_length(), Duration::MAX);
        assert_eq!(c.give_up_after(), Duration::MAX);
        let mut hb = Heartbeat::new(c, t0);
        assert_eq!(
            hb.poll_timeout(),
            None,
            "unrepresentable deadline means never"
        );
        assert_eq!(hb.poll(t0 + Duration::from_secs(1 << 40)), None);
        assert_eq!(hb.handle_rx(t0 + MS), None);
        // interval * count overflows Duration: idle saturates, the deadline is never.
        let c = HeartbeatConfig::new(MS, Duration::from_secs(1 << 33), u32::MAX).unwrap();
        let hb = Heartbeat::new(c, t0);
        assert_eq!(hb.poll_timeout(), None);
        assert!(!hb.is_idle_expired(t0 + MS));
        // Large but representable: a year of idle still schedules exactly.
        let year = Duration::from_secs(365 * 24 * 3600);
        let c = HeartbeatConfig::new(year, year, 1000).unwrap();
        let mut hb = Heartbeat::new(c, t0);
        assert_eq!(hb.poll_timeout(), Some(t0 + year * 1000));
        assert_eq!(hb.poll(t0 + year * 1000), Some(Action::SendPing(1)));
        assert_eq!(hb.poll_timeout(), Some(t0 + year * 1001));
    }

    #[test]
    fn a_late_poll_keeps_the_schedule_or_grants_a_full_interval() {
        let t0 = Instant::now();
        let mut hb = Heartbeat::new(cfg(1000, 100, 3), t0);
        // 30 ms late: the next ping stays on the planned grid.
        assert_eq!(hb.poll(t0 + ms(1030)), Some(Action::SendPing(1)));
        assert_eq!(hb.poll_timeout(), Some(t0 + ms(1100)));
        // 500 ms late (stopped process): one ping now, the next a full interval later.
        assert_eq!(hb.poll(t0 + ms(1600)), Some(Action::SendPing(2)));
        assert_eq!(hb.poll(t0 + ms(1600)), None);
        assert_eq!(hb.poll_timeout(), Some(t0 + ms(1700)));
    }

    #[test]
    fn out_of_order_receipts_are_ignored() {
        let t0 = Instant::now();
        let mut hb = Heartbeat::new(cfg(1000, 100, 3), t0);
        let _ = hb.handle_rx(t0 + ms(500));
        let _ = hb.handle_rx(t0 + ms(400));
        assert_eq!(hb.last_rx(), t0 + ms(500));
        assert_eq!(hb.poll_timeout(), Some(t0 + ms(1500)));
    }
}
