//! Durations as the contract writes them on the command line, in the file and in prompts.

use std::time::Duration;

/// Parses a duration as the contract writes it: `5`, `0.25` (seconds) or `250ms`, `5s`, `2m`.
/// Zero and negative values are rejected; see [`parse_duration_allow_zero`].
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = parse_duration_allow_zero(s)?;
    if d.is_zero() {
        return Err(format!("'{s}' must be greater than zero"));
    }
    Ok(d)
}

/// Like [`parse_duration`] but accepts zero (for settings such as `--block`).
pub fn parse_duration_allow_zero(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let (num, scale) = if let Some(n) = t.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60.0)
    } else {
        (t, 1.0)
    };
    let bad = || format!("'{s}' is not a duration (examples: 5, 0.25, 250ms, 2m)");
    let num = num.trim();
    if num.is_empty()
        || !num
            .chars()
            .all(|c| c.is_ascii_digit() || c == '.' || c == '-' || c == '+')
    {
        return Err(bad());
    }
    let v: f64 = num.parse().map_err(|_| bad())?;
    if v < 0.0 {
        return Err(format!("'{s}' is negative"));
    }
    Duration::try_from_secs_f64(v * scale).map_err(|_| format!("'{s}' is too large"))
}

/// Formats a duration the way the parser reads it back: `5s`, `250ms`, `2.5s`.
pub fn fmt_duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else if d < Duration::from_secs(1) && d.subsec_nanos() % 1_000_000 == 0 {
        format!("{}ms", d.as_millis())
    } else {
        let s = format!("{:.6}", d.as_secs_f64());
        format!("{}s", s.trim_end_matches('0').trim_end_matches('.'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_support::ms;

    #[test]
    fn durations_parse_as_the_contract_says() {
        assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("0.25"), Ok(ms(250)));
        assert_eq!(parse_duration("250ms"), Ok(ms(250)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration(" 1.5 "), Ok(ms(1500)));
        for bad in ["0", "0ms", "-1", "abc", "", "ms", "1h", "1e3", "nan", "inf"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_duration_allow_zero("0"), Ok(Duration::ZERO));
        assert!(parse_duration("99999999999999999999999").is_err());
    }

    #[test]
    fn durations_format_round_trip() {
        for d in [
            ms(250),
            ms(5000),
            ms(2500),
            ms(1),
            Duration::from_micros(1500),
            Duration::ZERO,
        ] {
            assert_eq!(
                parse_duration_allow_zero(&fmt_duration(d)),
                Ok(d),
                "{}",
                fmt_duration(d)
            );
        }
        assert_eq!(fmt_duration(ms(250)), "250ms");
        assert_eq!(fmt_duration(ms(30_000)), "30s");
        assert_eq!(fmt_duration(ms(2500)), "2.5s");
    }
}
