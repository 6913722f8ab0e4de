//! Text from the other side, made safe to show: every string a relay or an agent sends (hostnames, display
//! names, OS and version strings, error messages, session names) passes through [`escape`] before a terminal
//! or a log line sees it, so a hostile peer cannot move the cursor, erase a warning, retitle the window or
//! reorder text on screen.
//!
//! What is escaped: C0 controls (including newline, carriage return, tab and escape), DEL, C1 controls
//! (U+0080..U+009F), Unicode bidirectional controls (U+061C, U+200E, U+200F, U+202A..U+202E, U+2066..U+2069),
//! line and paragraph separators (U+2028, U+2029), and the backslash itself, so the escaped text is
//! unambiguous: `\\` is a backslash, `\n`, `\r`, `\t` and `\e` are what they say, and anything else is
//! `\x{..}` with its code point in hex. Everything else, including non-ASCII letters, passes unchanged.

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
        match c {
            '\\' => out.push_str("\\\\"),
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
    Cow::Owned(out)
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
            '\u{061c}'
                | '\u{200e}'
                | '\u{200f}'
                | '\u{202a}'..='\u{202e}'
                | '\u{2028}'
                | '\u{2029}'
                | '\u{2066}'..='\u{2069}'
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
