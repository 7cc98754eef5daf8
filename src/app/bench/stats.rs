//! Percentiles and small summaries: pure, unit-tested.

use std::time::Duration;

/// p50 / p99 / max of a sample, plus its size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// Number of values.
    pub n: usize,
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest value.
    pub max: f64,
    /// Smallest value.
    pub min: f64,
}

/// The `p`-th percentile (0..=100) of sorted values, nearest-rank; None when empty.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    // Nearest rank: the smallest value with at least p% of the sample at or below it.
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Sorts `values` and summarises them; None when empty.
pub fn summarize(values: &mut [f64]) -> Option<Summary> {
    values.sort_by(|a, b| a.total_cmp(b));
    Some(Summary {
        n: values.len(),
        p50: percentile(values, 50.0)?,
        p99: percentile(values, 99.0)?,
        max: *values.last()?,
        min: *values.first()?,
    })
}

/// Microseconds in a duration, as a float.
pub fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// (value, fraction of the sample at or below it) points of a sorted sample, at most
/// `points` of them: the empirical CDF for a plot.
pub fn cdf(sorted: &[f64], points: usize) -> Vec<(f64, f64)> {
    if sorted.is_empty() || points == 0 {
        return Vec::new();
    }
    let step = (sorted.len() / points).max(1);
    let mut out: Vec<(f64, f64)> = (0..sorted.len())
        .step_by(step)
        .map(|i| (sorted[i], (i + 1) as f64 / sorted.len() as f64))
        .collect();
    out.push((sorted[sorted.len() - 1], 1.0));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&v, 100.0), Some(100.0));
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn summary_sorts_first() {
        let mut v = vec![5.0, 1.0, 3.0, 2.0, 4.0];
        let s = summarize(&mut v).unwrap();
        assert_eq!((s.n, s.p50, s.p99, s.max, s.min), (5, 3.0, 5.0, 5.0, 1.0));
        assert!(summarize(&mut []).is_none());
    }

    #[test]
    fn cdf_ends_at_one() {
        let v: Vec<f64> = (0..1000).map(f64::from).collect();
        let c = cdf(&v, 10);
        assert_eq!(c.last(), Some(&(999.0, 1.0)));
        assert!(c.len() <= 12);
        assert!(c.windows(2).all(|w| w[0].1 <= w[1].1));
    }
}
