//! Message-derived text made safe for log lines and terminals.
//!
//! Invariant: every string that comes from a message (ids, trace context, routing keys, header
//! values, PHP's output) goes through [`printable`] before it reaches a log field or the CLI's
//! output, so a publisher can neither forge a log line (CR, LF) nor drive the operator's terminal
//! (ESC and the other C0/C1 controls, DEL, bidi overrides), and a 128 KiB header cannot flood a
//! log line.

use std::fmt;

/// Longest text shown, in characters, unless a site asks for another cap.
pub(crate) const MAX_CHARS: usize = 256;

/// Display adapter: control characters escaped, at most `max` characters, then `…(N bytes)`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Printable<'a> {
    text: &'a str,
    max: usize,
}

/// `text`, escaped and capped at [`MAX_CHARS`] when displayed; does not allocate.
#[must_use]
pub(crate) fn printable(text: &str) -> Printable<'_> {
    Printable {
        text,
        max: MAX_CHARS,
    }
}

impl<'a> Printable<'a> {
    /// The same text capped at `max` characters instead.
    #[must_use]
    pub(crate) fn capped(self, max: usize) -> Printable<'a> {
        Printable { max, ..self }
    }
}

impl fmt::Display for Printable<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut chars = self.text.char_indices();
        let mut clean_from = 0;
        for (shown, (at, c)) in chars.by_ref().enumerate() {
            if shown == self.max {
                f.write_str(&self.text[clean_from..at])?;
                return write!(f, "…({} bytes)", self.text.len());
            }
            if let Some(escape) = escape(c) {
                f.write_str(&self.text[clean_from..at])?;
                escape.fmt(f)?;
                clean_from = at + c.len_utf8();
            }
        }
        f.write_str(&self.text[clean_from..])
    }
}

/// How `c` is shown, when it cannot be shown as itself.
fn escape(c: char) -> Option<Escaped> {
    match c {
        '\n' => Some(Escaped::Named('n')),
        '\r' => Some(Escaped::Named('r')),
        '\t' => Some(Escaped::Named('t')),
        // C0, DEL and C1 (`char::is_control` is exactly Unicode's Cc category).
        c if c.is_control() => Some(Escaped::Code(c)),
        // Line/paragraph separators and the bidi controls that reorder what a terminal shows.
        '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' => {
            Some(Escaped::Code(c))
        }
        _ => None,
    }
}

enum Escaped {
    Named(char),
    Code(char),
}

impl fmt::Display for Escaped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Named(c) => write!(f, "\\{c}"),
            Self::Code(c) if u32::from(*c) <= 0xff => write!(f, "\\x{:02x}", u32::from(*c)),
            Self::Code(c) => write!(f, "\\u{{{:x}}}", u32::from(*c)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_unchanged() {
        assert_eq!(
            printable("order-42 ünïcödé ✓").to_string(),
            "order-42 ünïcödé ✓"
        );
        assert_eq!(printable("").to_string(), "");
    }

    #[test]
    fn line_breaks_and_escape_sequences_are_escaped() {
        let forged = "id\n2026-01-01T00:00:00Z  INFO forged\r\x1b[2J\x1b]0;title\x07";
        assert_eq!(
            printable(forged).to_string(),
            "id\\n2026-01-01T00:00:00Z  INFO forged\\r\\x1b[2J\\x1b]0;title\\x07"
        );
    }

    #[test]
    fn every_c0_c1_and_del_is_escaped() {
        for code in (0u32..0x20).chain(0x7f..=0x9f) {
            let c = char::from_u32(code).unwrap();
            let shown = printable(&format!("a{c}b")).to_string();
            assert!(
                !shown.chars().any(char::is_control),
                "U+{code:04X} shown raw"
            );
            assert!(shown.starts_with("a\\") && shown.ends_with('b'), "{shown}");
        }
        assert_eq!(printable("\u{85}\u{7f}").to_string(), "\\x85\\x7f");
        assert_eq!(printable("x\u{202e}y").to_string(), "x\\u{202e}y");
    }

    #[test]
    fn long_text_is_capped_with_its_size() {
        let long = "é".repeat(300);
        let shown = printable(&long).to_string();
        assert_eq!(shown, format!("{}…(600 bytes)", "é".repeat(256)));
        assert_eq!(printable(&"a".repeat(256)).to_string(), "a".repeat(256));
        assert_eq!(printable("abcdef").capped(3).to_string(), "abc…(6 bytes)");
        // The cap counts characters shown, not the width of their escapes.
        assert_eq!(
            printable("\n\n\n\n").capped(2).to_string(),
            "\\n\\n…(4 bytes)"
        );
    }
}
