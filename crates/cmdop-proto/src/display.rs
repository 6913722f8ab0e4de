//! Text from the other side, made safe to show: every string a relay or an agent sends (hostnames, display
//! names, OS and version strings, error messages, session names) passes through [`escape`] before a terminal
//! or a log line sees it, and what a peer chose that the relay stores (its audit log) passes through
//! [`for_terminal`], so a hostile peer cannot move the cursor, erase a warning, retitle the window or reorder
//! text on screen.
//!
//! What is escaped ([`needs_escape`]): C0 controls (including newline, carriage return, tab and escape), DEL,
//! C1 controls (U+0080..U+009F), Unicode bidirectional controls and marks (U+061C, U+200E, U+200F,
//! U+202A..U+202E, U+2066..U+2069), zero-width characters, the word joiner and invisible operators
//! (U+200B..U+200D, U+2060..U+2064), the BOM (U+FEFF), the soft hyphen (U+00AD), line and paragraph separators
//! (U+2028, U+2029), and for [`escape`] the backslash itself, so its output is unambiguous: `\\` is a
//! backslash, `\n`, `\r`, `\t` and `\e` are what they say, and anything else is `\x{..}` with its code
//! point in hex. Everything else, including non-ASCII letters, passes unchanged.

use std::borrow::Cow;
use std::fmt::Write as _;

/// `text` with every control and bidirectional-formatting character escaped (see the module docs). Borrows
/// when there is nothing to escape, which is the common case.
pub fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c == '\\' {
            out.push_str("\\\\");
        } else {
            push_shown(&mut out, c);
        }
    }
    Cow::Owned(out)
}

/// Appends `c` as [`escape`] shows it, except a backslash, which stays as it is ([`escape`] doubles it first).
fn push_shown(out: &mut String, c: char) {
    match c {
        '\\' => out.push('\\'),
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        '\u{1b}' => out.push_str("\\e"),
        c if needs_escape(c) => {
            // Writing to a String cannot fail.
            let _ = write!(out, "\\x{{{:x}}}", u32::from(c));
        }
        c => out.push(c),
    }
}

/// How much of one peer-supplied value the relay keeps in an audit entry's detail.
pub const AUDIT_FIELD_CHARS: usize = 120;

/// Text a peer chose, made safe to store and to show (the relay's audit log and `cmdop-relay audit`): written
/// as [`escape`] writes it, except that a backslash stays as it is, then cut to at most `max_chars`
/// characters of output, ending in `…` when cut.
///
/// What comes out is plain printable text: a terminal shows it as it is, without moving the cursor, changing
/// the title, clearing the screen or reordering the line. Escapes are never cut in half. The function is
/// idempotent (the backslash is left alone), so text escaped where it was received can safely pass through
/// it again where it is stored or shown; a peer that types a literal `\e` only shows those characters.
pub fn for_terminal(text: &str, max_chars: usize) -> String {
    if max_chars == 0 {
        return String::new();
    }
    let mut out = String::with_capacity(text.len().min(max_chars.saturating_mul(4)));
    let mut used = 0usize;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        let start = out.len();
        push_shown(&mut out, c);
        let piece = out[start..].chars().count();
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

/// [`escape`], owned: for fields that keep the text.
pub fn escaped(text: &str) -> String {
    escape(text).into_owned()
}

/// Whether `c` is shown escaped.
pub fn needs_escape(c: char) -> bool {
    c == '\\'
        || c.is_control()
        || matches!(
            c,
            // Bidirectional embeddings, overrides, isolates and marks ("Trojan Source").
            '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
            // Zero-width characters, word joiner, invisible operators, BOM, soft hyphen: they hide text.
            | '\u{200b}'..='\u{200d}' | '\u{2060}'..='\u{2064}' | '\u{feff}' | '\u{00ad}'
            // Line and paragraph separators break a line just like a newline.
            | '\u{2028}' | '\u{2029}'
        )
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn plain_text_is_borrowed_unchanged() {
        for text in ["web-1", "Büro (2. Stock)", "", "x86_64", "日本"] {
            assert!(matches!(escape(text), Cow::Borrowed(t) if t == text));
        }
    }

    #[test]
    fn controls_and_bidi_are_escaped_unambiguously() {
        assert_eq!(escape("a\u{1b}]0;pwned\u{7}b"), "a\\e]0;pwned\\x{7}b");
        assert_eq!(escape("line\nnext\r\tx"), "line\\nnext\\r\\tx");
        assert_eq!(escape("\u{9b}2J"), "\\x{9b}2J");
        assert_eq!(escape("abc\u{202e}fed"), "abc\\x{202e}fed");
        assert_eq!(escape("\u{7f}"), "\\x{7f}");
        assert_eq!(escape("a\\nb"), "a\\\\nb");
        assert_eq!(escape("\u{2028}"), "\\x{2028}");
    }

    #[test]
    fn peer_text_for_the_audit_log_is_escaped_idempotent_and_bounded() {
        assert_eq!(
            for_terminal("cmdop 0.1.0 (linux)", 80),
            "cmdop 0.1.0 (linux)"
        );
        assert_eq!(for_terminal("Zürich – 東京", 80), "Zürich – 東京");
        let hostile = "a\u{1b}]0;owned\u{7}b\r\nc\u{202e}d\u{9b}e\u{0}\u{200b}\\";
        let shown = for_terminal(hostile, 200);
        assert_eq!(
            shown,
            "a\\e]0;owned\\x{7}b\\r\\nc\\x{202e}d\\x{9b}e\\x{0}\\x{200b}\\"
        );
        assert!(shown.chars().all(|c| c == '\\' || !needs_escape(c)));
        // Idempotent: escaping where received and again where shown changes nothing.
        assert_eq!(for_terminal(&shown, 200), shown);
        let long = for_terminal(&"\u{1b}z".repeat(50), 40);
        assert_eq!(for_terminal(&long, 40), long);
    }

    #[test]
    fn long_peer_text_is_cut_within_the_budget_and_says_so() {
        let long = "x".repeat(70_000);
        let shown = for_terminal(&long, 120);
        assert!(shown.chars().count() <= 120, "{}", shown.chars().count());
        assert!(shown.ends_with('…'));
        // Escapes are never cut in half.
        let escapes = "\u{9b}".repeat(100);
        let shown = for_terminal(&escapes, 30);
        assert!(shown.chars().count() <= 30);
        assert!(shown.trim_end_matches('…').ends_with('}'), "{shown}");
        // Exactly at the budget: nothing is cut.
        assert_eq!(for_terminal(&"y".repeat(12), 12), "y".repeat(12));
        assert_eq!(for_terminal("abc", 0), "");
    }

    proptest! {
        #[test]
        fn escaped_text_never_holds_a_control_or_bidi_character(text in "\\PC*|[\\x00-\\x{ff}\\x{2000}-\\x{206f}]{0,64}") {
            let out = escape(&text);
            prop_assert!(!out.chars().any(|c| needs_escape(c) && c != '\\'));
            // Escaping is injective: unescaped backslashes never appear alone.
            if !text.chars().any(needs_escape) {
                prop_assert_eq!(out.as_ref(), text.as_str());
            }
        }
    }
}
