//! Values with units in the file: durations (`"30s"`) and sizes (`"512MiB"`).

use std::time::Duration;

use serde::{Deserialize, Deserializer};

pub(super) fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    // The value is not quoted: a misplaced secret must not reach a log.
    humantime::parse_duration(&text).map_err(|_| not_a_duration())
}

/// A size: a number of bytes, or a string with a unit (`B`, `KB`, `MB`, `GB`, `KiB`, `MiB`,
/// `GiB`).
pub(super) fn size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Bytes(u64),
        Text(String),
    }
    let text = match Size::deserialize(d)? {
        Size::Bytes(n) => return Ok(n),
        Size::Text(text) => text,
    };
    let digits = text
        .trim()
        .trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = text.trim()[digits.len()..].to_ascii_lowercase();
    let scale: u64 = match unit.as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        _ => 0,
    };
    digits
        .trim()
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .filter(|_| scale > 0)
        .ok_or_else(|| {
            serde::de::Error::custom(
                "not a size; write bytes, or e.g. \"512MiB\", \"2GiB\" (the value is not repeated here)",
            )
        })
}

fn not_a_duration<E: serde::de::Error>() -> E {
    E::custom(
        "not a duration; write e.g. \"500ms\", \"30s\", \"2m\" (the value is not repeated here)",
    )
}

pub(super) fn opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

pub(super) fn durations<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
    let texts = Vec::<String>::deserialize(d)?;
    texts
        .iter()
        .map(|text| humantime::parse_duration(text).map_err(|_| not_a_duration()))
        .collect()
}
