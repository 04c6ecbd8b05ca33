//! Config errors that never quote a value.
//!
//! Config errors reach journald (`ExecStartPre=… check-config`, a rejected SIGHUP reload) and
//! terminals, and the lines they are about hold the AMQP password, signing secrets and the admin
//! token. The TOML parser's own `Display` prints the offending source line, and serde's messages
//! quote the value (`invalid type: string "…"`), so neither is shown as is: an error names the
//! key (a dotted path), the line and the column, and a message scrubbed of values.

/// Values shipped in `config/amqp-agent.example.toml` (baked into the container image) and in
/// the demo configs (`config/demo.toml`, `deploy/`): public, so a deployment still using one
/// has not set its own secret. The demos pass generated secrets in the environment.
pub(super) const PLACEHOLDER_SECRETS: [&str; 7] = [
    "change-me-to-a-long-random-secret",
    "a-long-random-admin-token",
    "demo-signing-secret-change-me",
    "demo-admin-token-change-me",
    "compose-demo-signing-secret-change-me",
    "compose-demo-admin-token-change-me",
    "compose-cluster-signing-secret-change-me",
];

/// Shortest signing secret accepted, in bytes.
pub(super) const MIN_SECRET_BYTES: usize = 16;

/// Why a signing secret is refused, if it is.
pub(super) fn secret_problem(secret: &str) -> Option<String> {
    if PLACEHOLDER_SECRETS.contains(&secret) {
        return Some(
            "is a placeholder or public demo value; set a long random secret of your own"
                .to_owned(),
        );
    }
    (secret.len() < MIN_SECRET_BYTES)
        .then(|| format!("must be at least {MIN_SECRET_BYTES} bytes long"))
}

/// What a TOML or serde error says, without quoting the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseProblem {
    /// Dotted key at fault (`fpm.signing_secrets`), or the table for a syntax error on a line
    /// without a recognisable key.
    pub key: Option<String>,
    /// 1-based line and column (in characters) where the parser stopped.
    pub position: Option<(usize, usize)>,
    /// The parser's message with any quoted value removed.
    pub message: String,
}

impl std::fmt::Display for ParseProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some((line, column)) = self.position {
            write!(f, "line {line}, column {column}, ")?;
        }
        if let Some(key) = &self.key {
            write!(f, "key `{key}`: ")?;
        }
        f.write_str(&self.message)
    }
}

/// Turns a TOML error into key, position and a scrubbed message.
pub(super) fn parse_problem(text: &str, mut error: toml::de::Error) -> ParseProblem {
    let span = error.span();
    let message = scrub(error.message().lines().next().unwrap_or_default());
    // Without its input the error renders as "message\nin `a.b`": the key path it tracked while
    // deserializing, and no source line.
    error.set_input(None);
    let tracked = error
        .to_string()
        .lines()
        .find_map(|l| l.strip_prefix("in `")?.strip_suffix('`').map(str::to_owned));
    let position = span.map(|s| position(text, s.start));
    let key = tracked.or_else(|| position.and_then(|(line, _)| key_at_line(text, line)));
    ParseProblem {
        key,
        position,
        message,
    }
}

/// 1-based line and column of a byte offset.
fn position(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = before.matches('\n').count() + 1;
    (line, before[line_start..].chars().count() + 1)
}

/// The dotted key a syntax error on 1-based `line` belongs to, found by scanning the file:
/// the `[table]` in effect plus the `key =` of that line (or of the multi-line array the line
/// continues). Only bare-key characters are ever returned, never text of a value.
fn key_at_line(text: &str, line: usize) -> Option<String> {
    let mut table: Option<String> = None;
    let mut open_key: Option<String> = None;
    let mut depth = 0i32;
    for (number, raw) in text.lines().enumerate().map(|(i, l)| (i + 1, l)) {
        let trimmed = raw.trim_start();
        let continued = depth > 0;
        if !continued && trimmed.starts_with('[') {
            let name = trimmed.trim_start_matches('[');
            let name = name.split(']').next().unwrap_or_default();
            table = bare_key(name);
            open_key = None;
            if number == line {
                return table;
            }
            continue;
        }
        let line_key = if continued {
            None
        } else {
            trimmed.split_once('=').and_then(|(k, _)| bare_key(k))
        };
        if number == line {
            let key = if continued { open_key } else { line_key };
            return match (table, key) {
                (Some(t), Some(k)) => Some(format!("{t}.{k}")),
                (t, k) => k.or(t),
            };
        }
        if let Some(k) = line_key {
            open_key = Some(k);
            depth = 0;
        }
        depth += bracket_balance(raw);
    }
    None
}

/// A key made only of bare-key characters and dots (spaces around dots allowed), or `None`.
fn bare_key(text: &str) -> Option<String> {
    let parts: Vec<&str> = text.split('.').map(str::trim).collect();
    let ok = parts.iter().all(|p| {
        !p.is_empty()
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    });
    ok.then(|| parts.join("."))
}

/// `[` minus `]` on a line, outside strings and comments.
fn bracket_balance(line: &str) -> i32 {
    let mut balance = 0;
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for c in line.chars() {
        match quote {
            Some(q) => {
                if escaped {
                    escaped = false;
                } else if c == '\\' && q == '"' {
                    escaped = true;
                } else if c == q {
                    quote = None;
                }
            }
            None => match c {
                '"' | '\'' => quote = Some(c),
                '#' => break,
                '[' => balance += 1,
                ']' => balance -= 1,
                _ => {}
            },
        }
    }
    balance
}

/// Removes the value serde quotes in its messages: `invalid type: string "s3cret", expected
/// u16` becomes `invalid type: string, expected u16`; `unknown variant `x`` loses the `x`.
/// Key names (`unknown field `tokn``) stay: they are what the reader has to fix.
fn scrub(message: &str) -> String {
    for prefix in ["invalid type: ", "invalid value: "] {
        if let Some(rest) = message.strip_prefix(prefix) {
            let (unexpected, expected) = rest.rsplit_once(", expected ").unwrap_or((rest, ""));
            let kind = unexpected
                .split(['`', '"', '\''])
                .next()
                .unwrap_or_default()
                .trim();
            let kind = if kind.is_empty() { "a value" } else { kind };
            return if expected.is_empty() {
                format!("{prefix}{kind}")
            } else {
                format!("{prefix}{kind}, expected {expected}")
            };
        }
    }
    if let Some(rest) = message.strip_prefix("unknown variant ") {
        let expected = rest.split_once(", ").map_or("", |(_, e)| e);
        return format!("unknown variant, {expected}")
            .trim_end_matches(", ")
            .to_owned();
    }
    message.to_owned()
}

/// Why an AMQP URI does not parse, without quoting it: the parser's message up to its first
/// colon (`Invalid URL: 'amqp:user:pass@host'` quotes the whole input).
pub(super) fn uri_problem(uri: &str) -> Option<String> {
    if uri.lines().count() > 1 {
        return Some("spans more than one line".to_owned());
    }
    let error = uri.parse::<lapin::uri::AMQPUri>().err()?;
    let reason = error.split(':').next().unwrap_or_default().trim();
    let reason = if reason.is_empty() || uri.contains(reason) {
        "unparseable"
    } else {
        reason
    };
    Some(format!(
        "not an AMQP URI ({reason}); expected amqp://user:password@host:port/vhost (or amqps://)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(text: &str) -> ParseProblem {
        let error = toml::from_str::<super::super::Config>(text).unwrap_err();
        parse_problem(text, error)
    }

    #[test]
    fn a_syntax_error_names_table_key_and_position_but_not_the_line() {
        let text = "[amqp]\nurl = \"x\"\n[admin]\ntoken = \"s3cret-token-abcdef\" oops\n";
        let p = problem(text);
        assert_eq!(p.key.as_deref(), Some("admin.token"), "{p}");
        assert_eq!(p.position.map(|(l, _)| l), Some(4), "{p}");
        assert!(!p.to_string().contains("s3cret"), "{p}");
    }

    #[test]
    fn a_syntax_error_inside_a_multi_line_array_names_the_array() {
        let text = "[fpm]\nsigning_secrets = [\n  \"first-s3cret-0123456789\",\n  \"second-s3cret\" \"x\"\n]\n";
        let p = problem(text);
        assert_eq!(p.key.as_deref(), Some("fpm.signing_secrets"), "{p}");
        assert!(!p.to_string().contains("s3cret"), "{p}");
    }

    #[test]
    fn a_wrong_type_names_the_key_without_the_value() {
        let text = "[amqp]\nurl = \"amqp://h\"\n[fpm]\naddress = \"h:1\"\nscript_filename = \"/i\"\n\
                    [subjects.event]\nqueue = \"q\"\n[admin]\ntoken = 987654321987\n";
        let p = problem(text);
        assert_eq!(p.key.as_deref(), Some("admin.token"), "{p}");
        assert_eq!(p.position, Some((9, 9)), "{p}");
        assert_eq!(p.message, "invalid type: integer, expected a string");
        assert!(!p.to_string().contains("987654321987"), "{p}");
    }

    #[test]
    fn serde_values_are_scrubbed() {
        assert_eq!(
            scrub("invalid type: string \"pa, expected ss\", expected u16"),
            "invalid type: string, expected u16"
        );
        assert_eq!(
            scrub("invalid value: integer `-1`, expected u16"),
            "invalid value: integer, expected u16"
        );
        assert_eq!(
            scrub("unknown variant `s3cret`, expected `text` or `json`"),
            "unknown variant, expected `text` or `json`"
        );
        assert_eq!(
            scrub("unknown field `tokn`, expected `listen` or `token`"),
            "unknown field `tokn`, expected `listen` or `token`"
        );
    }

    #[test]
    fn keys_are_only_ever_bare_key_characters() {
        assert_eq!(bare_key(" fpm . address "), Some("fpm.address".to_owned()));
        assert_eq!(bare_key("\"s3cret\""), None);
        assert_eq!(bare_key("token \"s3cret\""), None);
        let text = "[admin]\n\"s3cret\" oops\n";
        assert_eq!(key_at_line(text, 2).as_deref(), Some("admin"));
    }

    #[test]
    fn uri_problems_do_not_quote_the_uri() {
        for uri in [
            "amqp:guest:s3cret@host",
            "http://guest:s3cret@host",
            "amqp://guest:s3cret@host:notaport/%2f",
            "s3cret",
            "amqp://guest:s3cret@host/%2f\nsecond-line",
        ] {
            let p = uri_problem(uri).unwrap_or_else(|| panic!("accepted {uri}"));
            assert!(!p.contains("s3cret"), "{p}");
        }
        assert_eq!(uri_problem("amqp://guest:s3cret@host:5672/%2f"), None);
    }

    #[test]
    fn placeholder_and_short_secrets_are_refused() {
        for placeholder in PLACEHOLDER_SECRETS {
            assert!(secret_problem(placeholder).unwrap().contains("placeholder"));
        }
        assert!(secret_problem("short").unwrap().contains("16 bytes"));
        assert_eq!(secret_problem("a-real-long-random-secret-0123"), None);
    }
}
