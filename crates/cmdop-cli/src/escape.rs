//! The ssh-style escape sequences of an interactive session (`~.` detaches, `~?` lists them), recognised in
//! the keystroke stream without any IO so they can be tested byte by byte.
//!
//! As in ssh, the escape character counts only at the start of a line (after Enter, or as the very first
//! keystroke); anywhere else it is an ordinary key, and typing it twice sends it once.

/// What the keystrokes amount to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    /// Send these bytes to the remote terminal.
    Send(Vec<u8>),
    /// Detach, leaving the session running.
    Detach,
    /// Show the list of escapes.
    Help,
}

/// The escape character, parsed from `--escape-char`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EscapeChar {
    /// Escapes are off: every byte is sent.
    None,
    /// This byte starts an escape.
    Byte(u8),
}

impl std::str::FromStr for EscapeChar {
    type Err = String;

    /// `~`, any single ASCII character, `^X` for a control character, or `none`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || {
            format!(
                "invalid escape character {text:?}: give one ASCII character (e.g. '~'), a control character as ^X (e.g. ^]), or 'none'"
            )
        };
        match text.as_bytes() {
            b"none" => Ok(Self::None),
            [byte] if byte.is_ascii() && !byte.is_ascii_control() => Ok(Self::Byte(*byte)),
            [b'^', letter] => match letter.to_ascii_uppercase() {
                upper @ b'@'..=b'_' => Ok(Self::Byte(upper - b'@')),
                _ => Err(bad()),
            },
            _ => Err(bad()),
        }
    }
}

impl EscapeChar {
    /// How the character is shown in help: `~` or `^]`.
    pub(crate) fn display(self) -> String {
        match self {
            Self::None => "none".to_owned(),
            Self::Byte(byte) if byte.is_ascii_control() => format!("^{}", char::from(byte + b'@')),
            Self::Byte(byte) => char::from(byte).to_string(),
        }
    }
}

/// Scans keystrokes for escapes.
#[derive(Debug)]
pub(crate) struct EscapeScanner {
    escape: EscapeChar,
    at_line_start: bool,
    pending: bool,
}

impl EscapeScanner {
    /// A scanner at the start of a line, as a new session is.
    pub(crate) fn new(escape: EscapeChar) -> Self {
        Self {
            escape,
            at_line_start: true,
            pending: false,
        }
    }

    /// Splits `input` into bytes to send and escape actions, in order.
    pub(crate) fn feed(&mut self, input: &[u8]) -> Vec<Action> {
        let EscapeChar::Byte(escape) = self.escape else {
            return vec![Action::Send(input.to_vec())];
        };
        let mut actions = Vec::new();
        let mut send = Vec::with_capacity(input.len());
        for &byte in input {
            if self.pending {
                self.pending = false;
                match byte {
                    b'.' => {
                        flush(&mut send, &mut actions);
                        actions.push(Action::Detach);
                        continue;
                    }
                    b'?' => {
                        flush(&mut send, &mut actions);
                        actions.push(Action::Help);
                        // ssh leaves the cursor at a line start after the help text.
                        self.at_line_start = true;
                        continue;
                    }
                    b if b == escape => send.push(escape),
                    other => {
                        send.push(escape);
                        send.push(other);
                    }
                }
                self.at_line_start = is_newline(byte);
                continue;
            }
            if self.at_line_start && byte == escape {
                self.pending = true;
                continue;
            }
            send.push(byte);
            self.at_line_start = is_newline(byte);
        }
        flush(&mut send, &mut actions);
        actions
    }
}

fn is_newline(byte: u8) -> bool {
    matches!(byte, b'\r' | b'\n')
}

fn flush(send: &mut Vec<u8>, actions: &mut Vec<Action>) {
    if !send.is_empty() {
        actions.push(Action::Send(std::mem::take(send)));
    }
}

/// The help `~?` prints, with `\r\n` line ends because the terminal is raw.
pub(crate) fn help_text(escape: EscapeChar) -> String {
    let e = escape.display();
    format!(
        "\r\nSupported escape sequences (at the start of a line):\r\n {e}.   - detach (the session keeps running; reattach with --session)\r\n {e}?   - this message\r\n {e}{e}   - send the escape character by typing it twice\r\n"
    )
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn tilde() -> EscapeScanner {
        EscapeScanner::new(EscapeChar::Byte(b'~'))
    }

    fn send(bytes: &[u8]) -> Action {
        Action::Send(bytes.to_vec())
    }

    #[test]
    fn detach_at_the_start_of_a_line() {
        assert_eq!(tilde().feed(b"~."), vec![Action::Detach]);
        assert_eq!(tilde().feed(b"ls\r~."), vec![send(b"ls\r"), Action::Detach]);
        // Split across reads, as a person types it.
        let mut scanner = tilde();
        assert_eq!(scanner.feed(b"echo\r"), vec![send(b"echo\r")]);
        assert_eq!(scanner.feed(b"~"), vec![]);
        assert_eq!(scanner.feed(b"."), vec![Action::Detach]);
    }

    #[test]
    fn a_tilde_inside_a_line_is_a_key() {
        assert_eq!(tilde().feed(b"cd ~.\r"), vec![send(b"cd ~.\r")]);
        assert_eq!(tilde().feed(b"a~?"), vec![send(b"a~?")]);
    }

    #[test]
    fn doubled_and_unknown_escapes() {
        assert_eq!(tilde().feed(b"~~"), vec![send(b"~")]);
        assert_eq!(tilde().feed(b"~x"), vec![send(b"~x")]);
        assert_eq!(tilde().feed(b"~?"), vec![Action::Help]);
        // After help the next ~ still starts an escape.
        assert_eq!(tilde().feed(b"~?~."), vec![Action::Help, Action::Detach]);
        // ~~ puts a literal ~ in the line, so a following ~ is an ordinary key.
        assert_eq!(tilde().feed(b"~~~."), vec![send(b"~~.")]);
    }

    #[test]
    fn ctrl_c_and_ctrl_d_are_plain_bytes() {
        assert_eq!(tilde().feed(b"\x03\x04\x1a"), vec![send(b"\x03\x04\x1a")]);
    }

    #[test]
    fn none_disables_and_control_characters_work() {
        assert_eq!(
            EscapeScanner::new(EscapeChar::None).feed(b"~."),
            vec![send(b"~.")]
        );
        let ctrl_bracket: EscapeChar = "^]".parse().unwrap();
        assert_eq!(ctrl_bracket, EscapeChar::Byte(0x1d));
        assert_eq!(ctrl_bracket.display(), "^]");
        assert_eq!(
            EscapeScanner::new(ctrl_bracket).feed(b"\x1d."),
            vec![Action::Detach]
        );
        assert_eq!("none".parse::<EscapeChar>().unwrap(), EscapeChar::None);
        assert_eq!("%".parse::<EscapeChar>().unwrap(), EscapeChar::Byte(b'%'));
        assert_eq!("^".parse::<EscapeChar>().unwrap(), EscapeChar::Byte(b'^'));
        for bad in ["", "ab", "é", "^1", "^é", "\x07"] {
            assert!(bad.parse::<EscapeChar>().is_err(), "{bad:?}");
        }
    }

    proptest! {
        /// Without escape characters in the input, every byte is sent unchanged, in order.
        #[test]
        fn plain_input_passes_through(input in prop::collection::vec(any::<u8>().prop_filter("no ~", |b| *b != b'~'), 0..100)) {
            let actions = tilde().feed(&input);
            let sent: Vec<u8> = actions.into_iter().flat_map(|a| match a {
                Action::Send(bytes) => bytes,
                other => panic!("unexpected {other:?}"),
            }).collect();
            prop_assert_eq!(sent, input);
        }
    }
}
