//! A client's rate limit (`--rate N --burst M`, CONTRACT section 9), sans-IO: a token bucket
//! refilled from `now`, and the rule that turns a flood into `END flood`.
//!
//! ## The rule
//! * Every line a client sends takes a token (heartbeat answers excepted: a `PONG` is never
//!   dropped, or a flooding client would also lose its liveness). The bucket holds `burst`
//!   tokens and refills at `rate` per second, so a client may send `burst` lines at once and
//!   `rate` a second on average. A line without a token is dropped and answered
//!   `ERR rate-limited`.
//! * A client that goes on sending over its limit is flooding: once it has been over its
//!   limit (its bucket never refilled to full) for [`FLOOD_AFTER`] *and* has had at least
//!   `rate` lines dropped meanwhile (so it sent about twice what it may), it is ended `END
//!   flood`. At 100 times its limit that is one second; a client slightly over its limit gets
//!   `ERR rate-limited` lines and time to slow down. A bucket that refilled to full ends the
//!   episode: the client had kept to its limit for `burst / rate` seconds.

use std::time::{Duration, Instant};

/// How long a client must stay over its limit before it can be ended as a flood.
pub const FLOOD_AFTER: Duration = Duration::from_secs(1);

/// `--rate` (lines per second, at least 1) and `--burst` (lines at once, at least 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Lines per second on average.
    pub per_sec: u32,
    /// Lines at once.
    pub burst: u32,
}

/// What to do with one line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Verdict {
    /// Within the limit: handle it.
    Pass,
    /// Over the limit: drop it and answer `ERR rate-limited`; `first` for the first drop of
    /// an episode (the one worth a log line).
    Drop {
        /// First drop since the client was last within its limit.
        first: bool,
    },
    /// Flooding: end the client `END flood`.
    Flood,
}

/// One client's bucket. See the module docs.
#[derive(Debug, Clone)]
pub struct Bucket {
    limit: RateLimit,
    tokens: f64,
    last: Instant,
    /// Since when the client has been over its limit, and how many lines were dropped since.
    episode: Option<(Instant, u64)>,
}

impl Bucket {
    /// A full bucket at `now`.
    pub fn new(limit: RateLimit, now: Instant) -> Self {
        Self {
            limit,
            tokens: f64::from(limit.burst.max(1)),
            last: now,
            episode: None,
        }
    }

    /// A line arrived at `now`.
    pub fn check(&mut self, now: Instant) -> Verdict {
        let burst = f64::from(self.limit.burst.max(1));
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + dt * f64::from(self.limit.per_sec.max(1))).min(burst);
        if self.tokens >= burst {
            // Within its limit long enough to refill: whatever came before is forgiven.
            self.episode = None;
        }
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Verdict::Pass;
        }
        match &mut self.episode {
            None => {
                self.episode = Some((now, 1));
                Verdict::Drop { first: true }
            }
            Some((since, dropped)) => {
                *dropped += 1;
                let long = now.saturating_duration_since(*since) >= FLOOD_AFTER;
                if long && *dropped >= u64::from(self.limit.per_sec.max(1)) {
                    Verdict::Flood
                } else {
                    Verdict::Drop { first: false }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn limit(per_sec: u32, burst: u32) -> RateLimit {
        RateLimit { per_sec, burst }
    }

    #[test]
    fn a_burst_passes_then_lines_pass_at_the_rate() {
        let t = Instant::now();
        let mut b = Bucket::new(limit(10, 3), t);
        for _ in 0..3 {
            assert_eq!(b.check(t), Verdict::Pass);
        }
        assert_eq!(b.check(t), Verdict::Drop { first: true });
        assert_eq!(b.check(t), Verdict::Drop { first: false });
        // 100 ms later one token is back.
        assert_eq!(b.check(t + ms(100)), Verdict::Pass);
        assert_eq!(b.check(t + ms(100)), Verdict::Drop { first: false });
        // Quiet long enough to refill: a new episode.
        assert_eq!(b.check(t + ms(500)), Verdict::Pass);
        assert_eq!(b.check(t + ms(500)), Verdict::Pass);
        assert_eq!(b.check(t + ms(500)), Verdict::Pass);
        assert_eq!(b.check(t + ms(500)), Verdict::Drop { first: true });
    }

    #[test]
    fn a_flood_at_100_times_the_limit_ends_after_a_second() {
        let t = Instant::now();
        let mut b = Bucket::new(limit(10, 10), t);
        // 1,000 lines a second: one every millisecond.
        let mut ended = None;
        for i in 0..3000u64 {
            if b.check(t + ms(i)) == Verdict::Flood {
                ended = Some(i);
                break;
            }
        }
        let at = ended.expect("ended");
        assert!((1000..=1012).contains(&at), "ended at {at} ms");
    }

    #[test]
    fn slightly_over_the_limit_is_dropped_not_ended_at_once() {
        let t = Instant::now();
        let mut b = Bucket::new(limit(10, 10), t);
        // 12 lines a second: about 2 a second dropped, so 10 dropped take ~5 s.
        let mut verdicts = Vec::new();
        for i in 0..120u64 {
            verdicts.push((i * 1000 / 12, b.check(t + ms(i * 1000 / 12))));
        }
        let first_flood = verdicts.iter().find(|(_, v)| *v == Verdict::Flood);
        assert!(
            first_flood.is_none_or(|(at, _)| *at > 3000),
            "{first_flood:?}"
        );
        assert!(verdicts
            .iter()
            .any(|(_, v)| matches!(v, Verdict::Drop { .. })));
    }

    #[test]
    fn keeping_to_the_limit_never_drops() {
        let t = Instant::now();
        let mut b = Bucket::new(limit(5, 1), t);
        for i in 0..50u64 {
            assert_eq!(b.check(t + ms(i * 200)), Verdict::Pass, "line {i}");
        }
    }
}
