//! `rate_limit` and `rate_burst` of a subject: the types and their parser (the bucket that
//! applies them is `crate::rate`).

use std::fmt;
use std::time::Duration;

/// A rate: `count` messages per `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Messages per period (at least 1).
    pub count: u32,
    /// The period: one second, minute or hour.
    pub per: Duration,
}

impl Rate {
    /// Parses `"<count>/<s|m|h>"` (also `sec`, `second`, `min`, `minute`, `hour`).
    ///
    /// # Errors
    /// A message saying what is expected (without repeating the value).
    pub fn parse(text: &str) -> Result<Self, String> {
        const EXPECTED: &str = "expected `<count>/s`, `<count>/m` or `<count>/h`, e.g. \"50/s\"";
        let (count, unit) = text.trim().split_once('/').ok_or(EXPECTED)?;
        let count: u32 = count.trim().parse().map_err(|_| EXPECTED)?;
        if count == 0 {
            return Err("the count must be at least 1".to_owned());
        }
        let per = match unit.trim() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            _ => return Err(EXPECTED.to_owned()),
        };
        Ok(Self { count, per })
    }

    /// Messages per second.
    #[must_use]
    pub(crate) fn per_second(&self) -> f64 {
        f64::from(self.count) / self.per.as_secs_f64()
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.per.as_secs() {
            1 => "s",
            60 => "m",
            _ => "h",
        };
        write!(f, "{}/{unit}", self.count)
    }
}

/// A subject's limit: its rate, and how many messages may go at once after a quiet spell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// The sustained rate.
    pub rate: Rate,
    /// The bucket's size (at least 1).
    pub burst: u32,
}

/// Deserializes an optional [`Rate`] from its text.
pub(super) fn opt_rate<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Rate>, D::Error> {
    let text = <String as serde::Deserialize>::deserialize(d)?;
    Rate::parse(&text)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_and_print() {
        for (text, count, secs, shown) in [
            ("50/s", 50, 1, "50/s"),
            (" 300 / m ", 300, 60, "300/m"),
            ("3600/hour", 3600, 3600, "3600/h"),
            ("1/sec", 1, 1, "1/s"),
        ] {
            let rate = Rate::parse(text).unwrap();
            assert_eq!(
                (rate.count, rate.per),
                (count, Duration::from_secs(secs)),
                "{text}"
            );
            assert_eq!(rate.to_string(), shown);
        }
        for bad in ["", "50", "0/s", "-1/s", "50/d", "x/s", "50/s/s"] {
            assert!(Rate::parse(bad).is_err(), "{bad}");
        }
        assert!(!Rate::parse("secret/s").unwrap_err().contains("secret"));
    }
}
