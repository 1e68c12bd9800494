//! Text that leaves the agent: error chains flattened to one line, values quoted into
//! errors, and the bounds on both (CONTRACT.md v1.1 "Hostile input on the bus").
//!
//! Whatever a spec carries can end up in a `LastError`, a reply or a log line. These are the
//! only functions that turn errors and foreign values into such text, so the bounds hold
//! everywhere: a quoted value is at most [`QUOTE_BYTES`] bytes before escaping, a
//! `LastError` at most [`LAST_ERROR_BYTES`].

use std::fmt::{self, Write as _};

/// How much of a foreign value an error quotes.
pub const QUOTE_BYTES: usize = 64;
/// The longest `LastError` (and `ApplyReply.Error`) the agent sends.
pub const LAST_ERROR_BYTES: usize = 1024;
/// What marks a cut.
const CUT: &str = "...";

/// An error and its causes on one line (`add address ...: File exists (os error 17)`), as a
/// `Display` value, so a log field formats it without an intermediate `String`.
#[derive(Clone, Copy)]
pub struct ErrorLine<'a>(pub &'a (dyn std::error::Error + 'a));

impl fmt::Debug for ErrorLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for ErrorLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut last = self.0.to_string();
        f.write_str(&last)?;
        let mut cause = self.0.source();
        while let Some(e) = cause {
            let text = e.to_string();
            // Some errors repeat their source in their own message; say it once.
            if !last.ends_with(&text) {
                f.write_str(": ")?;
                f.write_str(&text)?;
            }
            last = text;
            cause = e.source();
        }
        Ok(())
    }
}

/// [`ErrorLine`] as a `String`, for statuses and replies (bound it with [`last_error`]).
pub fn error_line(err: &dyn std::error::Error) -> String {
    ErrorLine(err).to_string()
}

/// A foreign value as an error quotes it: its first [`QUOTE_BYTES`] bytes (cut on a character
/// boundary, `...` marking the cut), then control characters escaped (`\n`, `\u{1b}`), in
/// double quotes. The result is at most a few hundred bytes whatever the input.
pub fn quote(value: &str) -> String {
    let (head, cut) = cut_at(value, QUOTE_BYTES);
    let mut out = String::with_capacity(head.len() + 8);
    out.push('"');
    for c in head.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "{}", c.escape_default());
            }
            c => out.push(c),
        }
    }
    if cut {
        out.push_str(CUT);
    }
    out.push('"');
    out
}

/// Another library's message (serde's `unknown field `...``, `invalid type: string "..."`)
/// with every value it quotes between backticks or double quotes bounded as [`quote`] bounds
/// one: the first [`QUOTE_BYTES`] bytes, `...` marking the cut. Control characters are escaped
/// everywhere, so the message stays one line.
pub fn bound_quoted(message: &str) -> String {
    let mut out = String::with_capacity(message.len().min(4 * LAST_ERROR_BYTES));
    // The open delimiter, the bytes of the value kept so far, and whether it was cut.
    let mut open: Option<(char, usize, bool)> = None;
    let mut chars = message.chars();
    while let Some(c) = chars.next() {
        match &mut open {
            None => {
                if c == '`' || c == '"' {
                    open = Some((c, 0, false));
                }
                push_escaped(&mut out, c);
            }
            Some((delim, _, cut)) if c == *delim => {
                if *cut {
                    out.push_str(CUT);
                }
                out.push(c);
                open = None;
            }
            Some((delim, kept, cut)) => {
                // A backslash escape inside a Rust-style "..." quote belongs to the value.
                let escaped = (*delim == '"' && c == '\\').then(|| chars.next()).flatten();
                let len = c.len_utf8() + escaped.map_or(0, char::len_utf8);
                if *kept + len > QUOTE_BYTES {
                    *cut = true;
                    continue;
                }
                *kept += len;
                push_escaped(&mut out, c);
                if let Some(e) = escaped {
                    push_escaped(&mut out, e);
                }
            }
        }
    }
    if let Some((_, _, true)) = open {
        out.push_str(CUT);
    }
    out
}

fn push_escaped(out: &mut String, c: char) {
    if c.is_control() {
        let _ = write!(out, "{}", c.escape_default());
    } else {
        out.push(c);
    }
}

/// `text` bounded for a `LastError` or a reply's `Error`: at most [`LAST_ERROR_BYTES`] bytes,
/// `...` marking a cut, control characters (which a quoted value has already escaped) replaced
/// by spaces so one error stays one line.
pub fn last_error(text: &str) -> String {
    let (head, cut) = cut_at(
        text,
        LAST_ERROR_BYTES
            - if text.len() > LAST_ERROR_BYTES {
                CUT.len()
            } else {
                0
            },
    );
    let mut out: String = head
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if cut {
        out.push_str(CUT);
    }
    out
}

/// Seconds since the epoch as an RFC 3339 UTC time (`2025-11-22T03:20:00Z`), for errors that
/// name a time from a spec (`NotAfterUnix`). Years past 9999 are written as the number.
pub fn rfc3339(unix: u64) -> String {
    const YEAR_10000: u64 = 253_402_300_800;
    if unix >= YEAR_10000 {
        return format!("unix time {unix}");
    }
    let (days, secs) = (unix / 86_400, unix % 86_400);
    // Howard Hinnant's civil_from_days, for days since 1970-01-01.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary, and
/// whether anything was cut.
fn cut_at(s: &str, max: usize) -> (&str, bool) {
    if s.len() <= max {
        return (s, false);
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    (&s[..end], true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct E(&'static str, Option<Box<E>>);
    impl fmt::Display for E {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
    }
    impl std::error::Error for E {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|e| e as _)
        }
    }

    #[test]
    fn error_chains_are_one_line_without_repeats() {
        let e = E("add address", Some(Box::new(E("File exists", None))));
        assert_eq!(error_line(&e), "add address: File exists");
        let repeats = E("open: denied", Some(Box::new(E("denied", None))));
        assert_eq!(error_line(&repeats), "open: denied");
    }

    #[test]
    fn quotes_are_cut_and_escaped() {
        assert_eq!(quote("eth0"), "\"eth0\"");
        assert_eq!(quote("a\nb\u{1b}"), "\"a\\nb\\u{1b}\"");
        let long = "x".repeat(1 << 20);
        let q = quote(&long);
        assert_eq!(q, format!("\"{}...\"", "x".repeat(QUOTE_BYTES)));
        // A multi-byte character straddling the bound is dropped whole.
        let s = format!("{}é", "x".repeat(QUOTE_BYTES - 1));
        assert_eq!(quote(&s), format!("\"{}...\"", "x".repeat(QUOTE_BYTES - 1)));
        // The worst case (every byte a control character) stays small.
        assert!(quote(&"\u{1}".repeat(10_000)).len() < 8 * QUOTE_BYTES);
    }

    #[test]
    fn values_quoted_by_other_libraries_are_bounded() {
        assert_eq!(
            bound_quoted("unknown field `Source`, expected one of `PodId`"),
            "unknown field `Source`, expected one of `PodId`"
        );
        let long = format!(
            "unknown field `{}`, expected `Sources`",
            "x".repeat(1 << 20)
        );
        assert_eq!(
            bound_quoted(&long),
            format!(
                "unknown field `{}...`, expected `Sources`",
                "x".repeat(QUOTE_BYTES)
            )
        );
        let ctl = format!(
            "invalid type: string \"{}\", expected u64",
            "\u{1}".repeat(5000)
        );
        let bounded = bound_quoted(&ctl);
        assert!(bounded.len() < 8 * QUOTE_BYTES, "{}", bounded.len());
        assert!(!bounded.contains(char::is_control));
        assert!(bounded.ends_with("...\", expected u64"), "{bounded}");
        // Escaped quotes inside a value do not end it.
        assert_eq!(bound_quoted(r#"string "a\"b""#), r#"string "a\"b""#);
        // An unclosed quote is still cut.
        assert_eq!(
            bound_quoted(&format!("`{}", "y".repeat(100))),
            format!("`{}...", "y".repeat(QUOTE_BYTES))
        );
    }

    #[test]
    fn unix_times_read_as_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_763_779_200), "2025-11-22T02:40:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(253_402_300_799), "9999-12-31T23:59:59Z");
        assert_eq!(rfc3339(u64::MAX), format!("unix time {}", u64::MAX));
    }

    #[test]
    fn last_errors_are_bounded_single_lines() {
        assert_eq!(last_error("short"), "short");
        assert_eq!(last_error("a\nb"), "a b");
        let long = "é".repeat(LAST_ERROR_BYTES);
        let bounded = last_error(&long);
        assert!(bounded.len() <= LAST_ERROR_BYTES, "{}", bounded.len());
        assert!(bounded.ends_with("..."));
        let exact = "y".repeat(LAST_ERROR_BYTES);
        assert_eq!(last_error(&exact), exact);
    }
}
