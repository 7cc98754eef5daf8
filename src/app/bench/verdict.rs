//! Verdicts from repeated measurements: pure, unit-tested.
//!
//! A target is judged on the MEDIAN of the repeats, and only when the repeats agree: when the
//! best repeat meets the target and the worst does not, the honest answer is
//! `inconclusive`, whatever side the median fell on. Fewer repeats than
//! [`MIN_REPEATS`] (a `--smoke` run) are reported but not judged.

use std::fmt;

use super::fmt_num;

/// Repeats a verdict needs.
pub const MIN_REPEATS: usize = 3;

/// Median and range of one number over the repeats.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    /// Repeats that produced the number (NaN values are left out).
    pub n: usize,
    /// Median (the mean of the middle two for an even count).
    pub median: f64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
}

impl Spread {
    /// The spread of `values`, ignoring NaN (a repeat that produced no number); None when
    /// nothing is left.
    pub fn of(values: &[f64]) -> Option<Self> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(|a, b| a.total_cmp(b));
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Self {
            n,
            median,
            min: v[0],
            max: v[n - 1],
        })
    }

    /// `median (min..max)` with `decimals` decimals, or just the value for one repeat.
    pub fn cell(&self, decimals: usize) -> String {
        if self.n == 1 || self.min == self.max {
            format!("{:.*}", decimals, self.median)
        } else {
            format!(
                "{:.*} ({:.*}..{:.*})",
                decimals, self.median, decimals, self.min, decimals, self.max
            )
        }
    }
}

/// [`Spread::cell`] of `values`, or `-` when none is a number.
pub fn cell(values: &[f64], decimals: usize) -> String {
    Spread::of(values).map_or_else(|| "-".into(), |s| s.cell(decimals))
}

/// Which side of a threshold meets a target.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Goal {
    /// Met when the value is at most this.
    AtMost(f64),
    /// Met when the value is at least this.
    AtLeast(f64),
}

impl Goal {
    /// Whether `v` meets the goal.
    pub fn met_by(self, v: f64) -> bool {
        match self {
            Self::AtMost(t) => v <= t,
            Self::AtLeast(t) => v >= t,
        }
    }
}

/// The verdict on one target.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Every repeat (hence the median) meets the target.
    Met,
    /// No repeat meets the target.
    NotMet,
    /// The repeats disagree, or the measurement did not exercise what the target is about.
    Inconclusive(String),
    /// Too few repeats to judge (a smoke run), or no numbers at all.
    NotJudged(String),
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Met => f.write_str("**met**"),
            Self::NotMet => f.write_str("**not met**"),
            Self::Inconclusive(why) => write!(f, "**inconclusive** ({why})"),
            Self::NotJudged(why) => write!(f, "not judged ({why})"),
        }
    }
}

fn too_few(n: usize) -> Verdict {
    Verdict::NotJudged(format!(
        "{n} repeat{}; a verdict needs at least {MIN_REPEATS}",
        if n == 1 { "" } else { "s" }
    ))
}

/// Judges `values` (one per repeat; NaN = the repeat produced no number) against `goal`:
/// met when every repeat meets it, not met when none does, inconclusive when they straddle
/// it (the median alone would hide that), not judged with fewer than `min_repeats` numbers.
pub fn judge(values: &[f64], goal: Goal, min_repeats: usize) -> Verdict {
    let Some(s) = Spread::of(values) else {
        return Verdict::NotJudged("no numbers".into());
    };
    if s.n < min_repeats {
        return too_few(s.n);
    }
    match (goal.met_by(s.min), goal.met_by(s.max)) {
        (true, true) => Verdict::Met,
        (false, false) => Verdict::NotMet,
        _ => Verdict::Inconclusive(format!(
            "the repeats straddle the target: {}..{}, median {}",
            fmt_num(s.min),
            fmt_num(s.max),
            fmt_num(s.median)
        )),
    }
}

/// What one repeat saw when it pushed a server past its connection limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Ceiling {
    /// Connections the server refused with a reason (`END server-full`).
    pub refusals: usize,
    /// After the refusals the server still answered a connection it held.
    pub kept_serving: bool,
    /// The server aborted or died during the run.
    pub died: bool,
}

/// "At the ceiling: refusals, no abort". A server that died in any repeat fails it; a repeat
/// in which nothing was refused never tested the rule, so it cannot count as met.
pub fn judge_ceiling(runs: &[Ceiling], min_repeats: usize) -> Verdict {
    if runs.iter().any(|r| r.died) {
        return Verdict::NotMet;
    }
    if runs.iter().any(|r| r.refusals > 0 && !r.kept_serving) {
        return Verdict::NotMet;
    }
    let idle = runs.iter().filter(|r| r.refusals == 0).count();
    if runs.is_empty() || idle == runs.len() {
        return Verdict::Inconclusive(
            "not exercised: the server never refused a connection".into(),
        );
    }
    if runs.len() < min_repeats {
        return too_few(runs.len());
    }
    if idle > 0 {
        return Verdict::Inconclusive(format!(
            "not exercised in {idle} of {} repeats: no connection was refused",
            runs.len()
        ));
    }
    Verdict::Met
}

/// Highest sequence number a [`SeqTracker`] records: its bitset then takes at most 32 MiB.
/// A larger number is counted as [`SeqTracker::out_of_range`], never stored (a peer that
/// garbles a digit must not make the load generator allocate gigabytes).
pub const MAX_SEQ: u64 = 1 << 28;

/// Per-receiver accounting of sequence numbers 1, 2, 3, ...: what arrived, what is missing
/// below the highest seen, what came twice, what came out of order. One bit per number, so an
/// open-loop run of millions of messages costs a few hundred KiB per receiver.
#[derive(Debug, Clone, Default)]
pub struct SeqTracker {
    seen: Vec<u64>,
    received: u64,
    duplicates: u64,
    reordered: u64,
    out_of_range: u64,
    highest: u64,
}

impl SeqTracker {
    /// Records `seq` (0 is a probe and ignored); true when it is new.
    pub fn record(&mut self, seq: u64) -> bool {
        if seq == 0 {
            return false;
        }
        if seq > MAX_SEQ {
            self.out_of_range += 1;
            return false;
        }
        let (word, bit) = ((seq / 64) as usize, 1u64 << (seq % 64));
        if self.seen.len() <= word {
            // Grow geometrically: a run records millions of numbers in order.
            let want = (word + 1).max(self.seen.len() * 2);
            self.seen.resize(want, 0);
        }
        if self.seen[word] & bit != 0 {
            self.duplicates += 1;
            return false;
        }
        self.seen[word] |= bit;
        self.received += 1;
        if seq < self.highest {
            // A relay over one TCP connection per receiver delivers in order: a number
            // below the highest one seen came late (it counted as a gap until now).
            self.reordered += 1;
        }
        self.highest = self.highest.max(seq);
        true
    }

    /// Numbers that arrived after a higher one (late, not lost).
    pub fn reordered(&self) -> u64 {
        self.reordered
    }

    /// Numbers above [`MAX_SEQ`], not recorded.
    pub fn out_of_range(&self) -> u64 {
        self.out_of_range
    }

    /// Distinct sequence numbers received.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Highest sequence number received.
    pub fn highest(&self) -> u64 {
        self.highest
    }

    /// Sequence numbers below the highest received that never arrived.
    pub fn gaps(&self) -> u64 {
        self.highest - self.received
    }

    /// Messages that arrived more than once.
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    /// Of `sent` messages (1..=sent), how many never arrived.
    pub fn lost(&self, sent: u64) -> u64 {
        sent.saturating_sub(self.received)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_takes_the_median_and_range() {
        let s = Spread::of(&[5.0, 1.0, 3.0]).unwrap();
        assert_eq!((s.n, s.median, s.min, s.max), (3, 3.0, 1.0, 5.0));
        let s = Spread::of(&[4.0, 1.0, 3.0, 2.0]).unwrap();
        assert_eq!(s.median, 2.5);
        let s = Spread::of(&[f64::NAN, 7.0, 9.0, 8.0]).unwrap();
        assert_eq!((s.n, s.median), (3, 8.0));
        assert!(Spread::of(&[f64::NAN]).is_none());
        assert_eq!(
            Spread::of(&[188.4, 109.0, 150.2]).unwrap().cell(0),
            "150 (109..188)"
        );
        assert_eq!(Spread::of(&[26.1]).unwrap().cell(1), "26.1");
        assert_eq!(cell(&[], 1), "-");
    }

    #[test]
    fn the_verdict_needs_every_repeat_on_one_side() {
        let at_most = Goal::AtMost(100.0);
        assert_eq!(judge(&[90.0, 95.0, 99.0], at_most, 3), Verdict::Met);
        assert_eq!(judge(&[101.0, 188.0, 150.0], at_most, 3), Verdict::NotMet);
        // Median 95 meets it, but one repeat did not: straddling is inconclusive.
        let v = judge(&[90.0, 95.0, 140.0], at_most, 3);
        assert_eq!(
            v,
            Verdict::Inconclusive("the repeats straddle the target: 90..140, median 95".into())
        );
        assert!(v.to_string().starts_with("**inconclusive** ("));
        // And the other way round: the median alone would say not met.
        assert!(matches!(
            judge(&[1.2, 0.5, 0.8], Goal::AtLeast(1.0), 3),
            Verdict::Inconclusive(_)
        ));
        // The boundary value itself meets the goal.
        assert_eq!(judge(&[100.0, 100.0, 100.0], at_most, 3), Verdict::Met);
    }

    #[test]
    fn too_few_repeats_are_not_judged() {
        let v = judge(&[50.0], Goal::AtMost(100.0), 3);
        assert_eq!(
            v.to_string(),
            "not judged (1 repeat; a verdict needs at least 3)"
        );
        // A repeat that produced no number does not count towards the three.
        assert!(matches!(
            judge(&[50.0, f64::NAN, 60.0], Goal::AtMost(100.0), 3),
            Verdict::NotJudged(_)
        ));
        assert_eq!(
            judge(&[], Goal::AtMost(1.0), 3),
            Verdict::NotJudged("no numbers".into())
        );
    }

    #[test]
    fn no_abort_needs_refusals() {
        let ok = Ceiling {
            refusals: 3109,
            kept_serving: true,
            died: false,
        };
        let idle = Ceiling {
            refusals: 0,
            kept_serving: true,
            died: false,
        };
        assert_eq!(judge_ceiling(&[ok; 3], 3), Verdict::Met);
        // Never pushed past the limit: nothing was tested, so not "met".
        assert_eq!(
            judge_ceiling(&[idle; 3], 3),
            Verdict::Inconclusive("not exercised: the server never refused a connection".into())
        );
        assert!(matches!(
            judge_ceiling(&[ok, idle, ok], 3),
            Verdict::Inconclusive(ref s) if s.contains("1 of 3")
        ));
        // An abort in any repeat fails the rule, refusals or not.
        let died = Ceiling { died: true, ..ok };
        assert_eq!(judge_ceiling(&[ok, died, ok], 3), Verdict::NotMet);
        // Refusing and then no longer answering the connections it kept is not "serving".
        let deaf = Ceiling {
            kept_serving: false,
            ..ok
        };
        assert_eq!(judge_ceiling(&[ok, ok, deaf], 3), Verdict::NotMet);
        assert!(matches!(judge_ceiling(&[ok], 3), Verdict::NotJudged(_)));
    }

    #[test]
    fn sequence_numbers_are_counted_not_maxed() {
        let mut t = SeqTracker::default();
        for s in [0, 1, 2, 4, 5, 5, 9] {
            t.record(s);
        }
        // The old count (highest seen) would claim 9 messages.
        assert_eq!(t.highest(), 9);
        assert_eq!(t.received(), 5);
        assert_eq!(t.gaps(), 4); // 3, 6, 7, 8
        assert_eq!(t.duplicates(), 1);
        assert_eq!(t.lost(10), 5);
        assert_eq!(t.reordered(), 0);
        // 3 arrives late: no longer a gap, counted as reordered, not as a duplicate.
        assert!(t.record(3));
        assert_eq!((t.gaps(), t.reordered(), t.duplicates()), (3, 1, 1));
        // Numbers cross word boundaries of the bitset.
        for s in 60..=200 {
            t.record(s);
        }
        assert_eq!(t.highest(), 200);
        assert!(!t.record(128));
        // Past the bound: counted, never stored.
        assert!(!t.record(MAX_SEQ + 1));
        assert_eq!((t.out_of_range(), t.highest()), (1, 200));
    }
}
