use std::time::Duration;

/// A duration that is not a whole number of seconds or a `90d`-style value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected seconds or a number with a unit (ms, s, m, h, d), e.g. 30s or 90d")]
pub struct DurationError;

/// The longest duration accepted anywhere: 100 years. Bigger values are typos,
/// and refusing them keeps every later addition to a timestamp from overflowing.
const MAX_SECONDS: u64 = 100 * 365 * 24 * 3600;

/// Parses `3600`, `3600s`, `15m`, `12h`, `90d` or `250ms` into a [`Duration`].
///
/// Negative, fractional, empty and absurdly large values are refused.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    if number.is_empty() || number.len() > 12 {
        return Err(DurationError);
    }
    let number: u64 = number.parse().map_err(|_| DurationError)?;
    let unit_millis = match unit {
        "ms" => 1,
        "" | "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(DurationError),
    };
    number
        .checked_mul(unit_millis)
        .filter(|&millis| millis <= MAX_SECONDS * 1000)
        .map(Duration::from_millis)
        .ok_or(DurationError)
}

/// Formats a duration the way [`parse_duration`] reads it, in the largest
/// whole unit (`90d`, `15m`, `7s`).
pub fn format_duration(duration: Duration) -> String {
    let seconds = duration.as_secs();
    for (unit, size) in [("d", 86_400), ("h", 3600), ("m", 60)] {
        if seconds >= size && seconds.is_multiple_of(size) {
            return format!("{}{unit}", seconds / size);
        }
    }
    if seconds == 0 && duration.subsec_millis() > 0 {
        return format!("{}ms", duration.subsec_millis());
    }
    format!("{seconds}s")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_plain_seconds_and_units() {
        assert_eq!(parse_duration("3600"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("45s"), Ok(Duration::from_secs(45)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("12h"), Ok(Duration::from_secs(43_200)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(format_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(parse_duration(" 90d "), Ok(Duration::from_secs(7_776_000)));
    }

    #[test]
    fn durations_refuse_what_is_not_a_plain_positive_amount() {
        for bad in [
            "",
            "d",
            "-5",
            "1.5h",
            "10w",
            "5 d",
            "99999999999999999999",
            "36501d",
        ] {
            assert_eq!(parse_duration(bad), Err(DurationError), "{bad:?}");
        }
    }

    #[test]
    fn durations_print_in_their_largest_whole_unit() {
        for text in ["90d", "12h", "15m", "7s", "0s"] {
            let parsed = parse_duration(text).unwrap_or_default();
            assert_eq!(format_duration(parsed), text);
        }
    }
}
