//! Text a peer chose (a client's software string, a hostname it asked for, a machine name it typed), made
//! safe to store and to show on a terminal: bounded in length, with every character that could steer a
//! terminal or reorder what a reader sees written out as an escape.
//!
//! One function, [`for_terminal`], for every place that puts peer-chosen text in front of a person: the
//! relay's audit log and `cmdop-relay audit`, and anything else that prints what the other side sent.

use std::fmt::Write as _;

/// How much of one peer-supplied value the relay keeps in an audit entry's detail.
pub const AUDIT_FIELD_CHARS: usize = 120;

/// `text` with every control character (C0, DEL, C1), every Unicode format character that changes how text
/// reads (bidirectional overrides and isolates, zero-width characters, the BOM) and every lone line or
/// paragraph separator written as `\u{XXXX}`, then cut to at most `max_chars` characters of output, ending in
/// `…` when cut.
///
/// What comes out is plain printable text: a terminal shows it as it is, without moving the cursor, changing
/// the title, clearing the screen or reordering the line. Escapes are never cut in half. The function is
/// idempotent (a backslash is left as it is), so text escaped where it was received can safely pass through
/// it again where it is stored or shown; a peer that types a literal `\u{001b}` only shows those characters.
pub fn for_terminal(text: &str, max_chars: usize) -> String {
    if max_chars == 0 {
        return String::new();
    }
    let mut out = String::with_capacity(text.len().min(max_chars.saturating_mul(4)));
    let mut used = 0usize;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        let start = out.len();
        let piece = if needs_escape(c) {
            let _ = write!(out, "\\u{{{:04x}}}", u32::from(c));
            // An escape is ASCII: its length in bytes is its length in characters.
            out.len() - start
        } else {
            out.push(c);
            1
        };
        // Unless this is the last piece, keep one character of room for the ellipsis.
        let limit = if chars.peek().is_none() {
            max_chars
        } else {
            max_chars - 1
        };
        if used + piece > limit {
            out.truncate(start);
            out.push('…');
            return out;
        }
        used += piece;
    }
    out
}

fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            // Bidirectional embeddings, overrides and isolates ("Trojan Source").
            '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
            // Zero-width and directional marks, word joiner, invisible operators, BOM.
            | '\u{200b}'..='\u{200f}' | '\u{2060}'..='\u{2064}' | '\u{feff}'
            // Line and paragraph separators break a log line just like a newline.
            | '\u{2028}' | '\u{2029}'
            // Soft hyphen and the Arabic letter mark hide or reorder text too.
            | '\u{00ad}' | '\u{061c}'
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printable_text_passes_unchanged() {
        assert_eq!(
            for_terminal("cmdop 0.1.0 (linux)", 80),
            "cmdop 0.1.0 (linux)"
        );
        assert_eq!(for_terminal("Zürich – 東京", 80), "Zürich – 東京");
    }

    #[test]
    fn terminal_controls_and_reordering_characters_are_written_out() {
        let hostile = "a\u{1b}]0;owned\u{7}b\r\nc\u{202e}d\u{9b}e\u{0}\\";
        let shown = for_terminal(hostile, 200);
        assert_eq!(
            shown,
            "a\\u{001b}]0;owned\\u{0007}b\\u{000d}\\u{000a}c\\u{202e}d\\u{009b}e\\u{0000}\\"
        );
        assert!(shown.chars().all(|c| !needs_escape(c)));
        // Idempotent: escaping where received and again where shown changes nothing.
        assert_eq!(for_terminal(&shown, 200), shown);
        let long = for_terminal(&"\u{1b}z".repeat(50), 40);
        assert_eq!(for_terminal(&long, 40), long);
    }

    #[test]
    fn long_text_is_cut_within_the_budget_and_says_so() {
        let long = "x".repeat(70_000);
        let shown = for_terminal(&long, 120);
        assert!(shown.chars().count() <= 120, "{}", shown.chars().count());
        assert!(shown.ends_with('…'));
        // Escapes are never cut in half.
        let escapes = "\u{1b}".repeat(100);
        let shown = for_terminal(&escapes, 30);
        assert!(shown.chars().count() <= 30);
        assert!(shown.trim_end_matches('…').ends_with('}'), "{shown}");
        // Exactly at the budget: nothing is cut.
        assert_eq!(for_terminal(&"y".repeat(12), 12), "y".repeat(12));
    }
}
