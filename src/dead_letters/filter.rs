//! Which dead letters an operator means: by reason, HTTP status, message type, age, and a text
//! search in properties, headers and body. Every criterion given must hold. Pure: the caller
//! passes the time.

use std::time::Duration;

use super::letter::Letter;

/// The longest text a filter field may hold.
pub(crate) const MAX_FIELD: usize = 200;

/// A filter; the default matches every dead letter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// [`Letter::reason`], compared without ASCII case.
    pub reason: Option<String>,
    /// [`Letter::status`].
    pub status: Option<StatusFilter>,
    /// [`Letter::kind`]: the whole type, or the last segment of a PHP class name
    /// (`SendEmail` for `App\Message\SendEmail`).
    pub kind: Option<String>,
    /// Dead-lettered at least this long ago ([`Letter::dead_at`]); a letter without a time does
    /// not match.
    pub older_than: Option<Duration>,
    /// Text found, without ASCII case, in a property, a header (name or value) or the body.
    pub grep: Option<String>,
}

/// `--status`: one HTTP status (`404`; `0` for none recorded) or a class (`4xx`, `5xx`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusFilter {
    /// Exactly this status.
    Exact(u16),
    /// Any status from `100 × n` to `100 × n + 99`.
    Class(u16),
}

/// A filter field that does not parse; the message names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {why}")]
pub struct FilterError {
    /// `reason`, `status`, `type`, `older_than` or `grep`.
    pub field: &'static str,
    /// What is wrong.
    pub why: String,
}

fn error(field: &'static str, why: impl Into<String>) -> FilterError {
    FilterError {
        field,
        why: why.into(),
    }
}

/// The filter's fields as text (the CLI's options, the admin API's query).
#[derive(Debug, Clone, Copy, Default)]
pub struct FilterText<'a> {
    /// `--reason`.
    pub reason: Option<&'a str>,
    /// `--status`.
    pub status: Option<&'a str>,
    /// `--type`.
    pub kind: Option<&'a str>,
    /// `--older-than`.
    pub older_than: Option<&'a str>,
    /// `--grep`.
    pub grep: Option<&'a str>,
}

impl Filter {
    /// Parses the fields; an empty one is absent.
    ///
    /// # Errors
    /// A [`FilterError`] naming the first field that does not parse or is too long.
    pub(crate) fn parse(text: FilterText<'_>) -> Result<Self, FilterError> {
        let given = |field: &'static str, v: Option<&str>| -> Result<Option<String>, FilterError> {
            match v.map(str::trim) {
                None | Some("") => Ok(None),
                Some(v) if v.len() > MAX_FIELD => {
                    Err(error(field, format!("longer than {MAX_FIELD} bytes")))
                }
                Some(v) if v.chars().any(char::is_control) => {
                    Err(error(field, "holds a control character"))
                }
                Some(v) => Ok(Some(v.to_owned())),
            }
        };
        let status = given("status", text.status)?
            .map(|s| StatusFilter::parse(&s))
            .transpose()?;
        let older_than = given("older_than", text.older_than)?
            .map(|d| {
                humantime::parse_duration(&d)
                    .map_err(|e| error("older_than", format!("`{d}` is not a duration: {e}")))
            })
            .transpose()?;
        // The search keeps its spaces: only an all-blank one is absent.
        let grep = match text.grep {
            Some(g) if g.trim().is_empty() => None,
            other => given("grep", other.map(|g| g.trim_matches(['\r', '\n'])))?,
        };
        Ok(Self {
            reason: given("reason", text.reason)?,
            status,
            kind: given("type", text.kind)?,
            older_than,
            grep,
        })
    }

    /// True when no criterion is set (every dead letter matches).
    #[cfg(test)]
    #[must_use]
    pub(crate) fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Whether `letter` meets every criterion, `now` being Unix seconds.
    #[must_use]
    pub(crate) fn matches(&self, letter: &Letter<'_>, now: u64) -> bool {
        if let Some(reason) = &self.reason
            && !letter
                .reason()
                .is_some_and(|r| r.eq_ignore_ascii_case(reason))
        {
            return false;
        }
        if let Some(status) = self.status
            && !letter.status().is_some_and(|s| status.matches(s))
        {
            return false;
        }
        if let Some(kind) = &self.kind
            && !letter.kind().is_some_and(|k| kind_matches(&k, kind))
        {
            return false;
        }
        if let Some(age) = self.older_than
            && letter
                .dead_at()
                .is_none_or(|t| now.saturating_sub(t) < age.as_secs())
        {
            return false;
        }
        if let Some(text) = &self.grep
            && !found(letter, text)
        {
            return false;
        }
        true
    }
}

impl StatusFilter {
    /// `404`, `0`, `4xx`.
    ///
    /// # Errors
    /// Anything else.
    pub(crate) fn parse(text: &str) -> Result<Self, FilterError> {
        let lower = text.to_ascii_lowercase();
        if let Some(class) = lower.strip_suffix("xx")
            && let Ok(n @ 1..=5) = class.parse::<u16>()
        {
            return Ok(Self::Class(n));
        }
        match lower.parse::<u16>() {
            Ok(n) if n == 0 || (100..=599).contains(&n) => Ok(Self::Exact(n)),
            _ => Err(error(
                "status",
                format!("`{text}` is not an HTTP status (100-599, 0 for none) or a class (4xx)"),
            )),
        }
    }

    fn matches(self, status: i64) -> bool {
        match self {
            Self::Exact(n) => status == i64::from(n),
            Self::Class(n) => status / 100 == i64::from(n) && status > 0,
        }
    }
}

impl std::fmt::Display for StatusFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Exact(n) => write!(f, "{n}"),
            Self::Class(n) => write!(f, "{n}xx"),
        }
    }
}

/// `App\Message\SendEmail` is matched by itself and by `SendEmail`.
fn kind_matches(kind: &str, wanted: &str) -> bool {
    kind == wanted
        || kind
            .strip_suffix(wanted)
            .is_some_and(|head| head.ends_with('\\') || head.ends_with('.'))
}

/// `text` (without ASCII case) in a property, a header's name or value, or the body.
fn found(letter: &Letter<'_>, text: &str) -> bool {
    let needle = text.as_bytes().to_ascii_lowercase();
    letter
        .properties()
        .iter()
        .any(|(_, v)| contains(v.as_bytes(), &needle))
        || letter
            .header_texts()
            .iter()
            .any(|(k, v)| contains(k.as_bytes(), &needle) || contains(v.as_bytes(), &needle))
        || contains(letter.body(), &needle)
}

/// Whether `hay` holds `needle` (already lowercase), ASCII letters compared without case.
#[must_use]
pub(crate) fn contains(hay: &[u8], needle: &[u8]) -> bool {
    if needle.is_empty() {
        return true;
    }
    if needle.len() > hay.len() {
        return false;
    }
    let first = needle[0];
    hay.windows(needle.len()).any(|w| {
        w[0].to_ascii_lowercase() == first
            && w.iter()
                .zip(needle)
                .all(|(a, b)| a.to_ascii_lowercase() == *b)
    })
}
