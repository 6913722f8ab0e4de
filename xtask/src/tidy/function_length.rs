//! The length of every function in a Rust source, found by a small lexer and a brace matcher (no syn: xtask
//! keeps its dependencies few), so that tidy can hold library code to its limit on function length.
//!
//! The lexer blanks out the insides of comments, string and character literals (keeping line breaks), so that
//! a brace or a `fn` inside them is never taken for code. Items under `#[cfg(test)]` are skipped, and the
//! names of out-of-line test modules (`#[cfg(test)] mod tests;`) are reported so that their files can be.

/// What a comment must say, followed by the reason, within the three lines above a `fn` (or anywhere in its
/// doc comment and attributes) for that function to be longer than the limit.
pub(super) const REASON_MARK: &str = "long-function:";

/// One function with a body: where it starts, how long it is, and the reason given for its length, if any.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Function {
    /// `name`, or `Type::name` for a method in an `impl` or a `trait`.
    pub(super) name: String,
    /// 1-based line of the `fn` keyword.
    pub(super) line: usize,
    /// Lines from the `fn` keyword's line to the closing brace's, both included.
    pub(super) lines: usize,
    /// The text after [`REASON_MARK`] in a comment above the function, when there is one and it is not empty.
    pub(super) reason: Option<String>,
}

/// What one file holds: its functions outside test-only items, and its out-of-line test modules.
#[derive(Debug, Default)]
pub(super) struct Scan {
    pub(super) functions: Vec<Function>,
    /// Names of `#[cfg(test)] mod NAME;` declarations: their files are test code too.
    pub(super) test_modules: Vec<String>,
}

/// Finds every function with a body in `source` that is not inside a `#[cfg(test)]` item.
pub(super) fn scan(source: &str) -> Scan {
    let lexed = Lexed::new(source);
    let tokens = tokenize(&lexed.code);
    let matches = match_brackets(&tokens);
    let mut scan = Scan::default();
    let mut skip_until = 0;
    let mut owners: Vec<(String, usize)> = Vec::new();
    for (index, token) in tokens.iter().enumerate() {
        if index < skip_until {
            continue;
        }
        owners.retain(|(_, end)| *end > index);
        if let Some((after, inner)) = cfg_test_attribute(&tokens, &lexed.code, index) {
            if inner {
                // `#![cfg(test)]`: everything after it is test code (it opens its file, or rarely a module,
                // whose end this does not look for).
                break;
            }
            let (end, module) = test_item(&tokens, &lexed.code, &matches, after);
            scan.test_modules.extend(module);
            skip_until = end;
            continue;
        }
        match token.text(&lexed.code) {
            b"impl" if starts_item(&tokens, &lexed.code, index) => {
                if let Some((name, open)) = impl_owner(&tokens, &lexed.code, index) {
                    owners.push((name, matches[open]));
                }
            }
            b"trait" => {
                if let (Some(name), Some(open)) = (
                    tokens.get(index + 1).filter(|t| t.is_word(&lexed.code)),
                    body_start(&tokens, &lexed.code, index + 1),
                ) {
                    owners.push((lossy(name.text(&lexed.code)), matches[open]));
                }
            }
            b"fn" => {
                if let Some(function) = function(&lexed, &tokens, &matches, index, owners.last()) {
                    scan.functions.push(function);
                }
            }
            _ => {}
        }
    }
    scan
}

/// The function whose `fn` keyword is token `index`, if it is one with a body (not a declaration, not a
/// `fn(..)` pointer type, not a macro pattern's `fn $name`).
fn function(
    lexed: &Lexed,
    tokens: &[Token],
    matches: &[usize],
    index: usize,
    owner: Option<&(String, usize)>,
) -> Option<Function> {
    let name = tokens.get(index + 1).filter(|t| t.is_word(&lexed.code))?;
    let open = body_start(tokens, &lexed.code, index + 1)?;
    let close = tokens.get(*matches.get(open)?)?;
    let line = lexed.line_of(tokens[index].start);
    let name = lossy(name.text(&lexed.code));
    Some(Function {
        name: match owner {
            Some((owner, _)) => format!("{owner}::{name}"),
            None => name,
        },
        line: line + 1,
        lines: lexed.line_of(close.start) - line + 1,
        reason: lexed.reason_above(line),
    })
}

/// The index of the `{` that opens the body of the item whose header starts at token `from`: the first `{` outside
/// parentheses and brackets. `None` when a `;` comes first (a declaration without a body).
fn body_start(tokens: &[Token], code: &[u8], from: usize) -> Option<usize> {
    let mut depth = 0usize;
    for (index, token) in tokens.iter().enumerate().skip(from) {
        match token.text(code) {
            b"(" | b"[" => depth += 1,
            b")" | b"]" => depth = depth.saturating_sub(1),
            b"{" if depth == 0 => return Some(index),
            b";" if depth == 0 => return None,
            _ => {}
        }
    }
    None
}

/// Whether token `index` begins an item, judged by the token before it: `impl` in `-> impl Trait` or
/// `x: impl Fn()` is a type, not an implementation block.
fn starts_item(tokens: &[Token], code: &[u8], index: usize) -> bool {
    let Some(previous) = index.checked_sub(1).and_then(|i| tokens.get(i)) else {
        return true;
    };
    matches!(
        previous.text(code),
        b"}" | b";" | b"{" | b"]" | b"unsafe" | b"default"
    )
}

/// The type an `impl` block at token `index` is for (the last name outside generics, after `for` if there is
/// one), and the index of its opening brace.
fn impl_owner(tokens: &[Token], code: &[u8], index: usize) -> Option<(String, usize)> {
    let open = body_start(tokens, code, index + 1)?;
    let mut angle = 0usize;
    let mut name = None;
    for (i, token) in tokens.iter().enumerate().take(open).skip(index + 1) {
        let arrow = i > 0 && tokens[i - 1].text(code) == b"-";
        match token.text(code) {
            b"<" => angle += 1,
            b">" if !arrow => angle = angle.saturating_sub(1),
            b"for" if angle == 0 => name = None,
            b"where" if angle == 0 => break,
            _ if angle == 0 && token.is_word(code) => name = Some(lossy(token.text(code))),
            _ => {}
        }
    }
    Some((name.unwrap_or_else(|| "impl".to_owned()), open))
}

/// If token `index` starts `#[cfg(test)]` or `#[cfg(all(test, …))]`, the index of the token after its `]`, and
/// whether it is an inner attribute (`#![cfg(test)]`).
fn cfg_test_attribute(tokens: &[Token], code: &[u8], index: usize) -> Option<(usize, bool)> {
    let text = |i: usize| tokens.get(i).map(|t| t.text(code));
    if text(index)? != b"#" {
        return None;
    }
    let inner = text(index + 1)? == b"!";
    let open = index + 1 + usize::from(inner);
    if text(open)? != b"[" || text(open + 1)? != b"cfg" {
        return None;
    }
    let arguments = match (text(open + 2)?, text(open + 3)?, text(open + 4)?) {
        (b"(", b"test", b")") => open + 5,
        (b"(", b"all", b"(") if text(open + 5)? == b"test" => open + 3,
        _ => return None,
    };
    // The attribute's closing bracket: the first `]` after its arguments.
    let close = (arguments..tokens.len()).find(|&i| text(i) == Some(b"]"))?;
    Some((close + 1, inner))
}

/// The end (exclusive token index) of the item that starts at token `from` after a `#[cfg(test)]`, and its
/// name if it is an out-of-line module (`mod NAME;`).
fn test_item(
    tokens: &[Token],
    code: &[u8],
    matches: &[usize],
    mut from: usize,
) -> (usize, Option<String>) {
    // Further attributes of the same item.
    while tokens.get(from).is_some_and(|t| t.text(code) == b"#") {
        match tokens.get(from + 1) {
            Some(t) if t.text(code) == b"[" => from = matches[from + 1] + 1,
            _ => break,
        }
    }
    let mut depth = 0usize;
    for (index, token) in tokens.iter().enumerate().skip(from) {
        match token.text(code) {
            b"(" | b"[" => depth += 1,
            b")" | b"]" => depth = depth.saturating_sub(1),
            b"{" if depth == 0 => return (matches[index] + 1, None),
            b";" if depth == 0 => {
                let words: Vec<&[u8]> = tokens[from..index]
                    .iter()
                    .filter(|t| t.is_word(code))
                    .map(|t| t.text(code))
                    .collect();
                let module = match words.as_slice() {
                    [.., b"mod", name] => Some(lossy(name)),
                    _ => None,
                };
                return (index + 1, module);
            }
            _ => {}
        }
    }
    (tokens.len(), None)
}

/// For every `{`, `[` and `(` token, the index of the token that closes it (and the reverse); unmatched
/// ones point at the end.
fn match_brackets(tokens: &[Token]) -> Vec<usize> {
    let mut matches = vec![tokens.len(); tokens.len()];
    let mut open: Vec<usize> = Vec::new();
    for (index, token) in tokens.iter().enumerate() {
        match token.punct {
            Some(b'{' | b'[' | b'(') => open.push(index),
            Some(b'}' | b']' | b')') => {
                if let Some(opener) = open.pop() {
                    matches[opener] = index;
                    matches[index] = opener;
                }
            }
            _ => {}
        }
    }
    matches
}

/// A word (identifier, keyword, number) or a single punctuation byte of the blanked code.
#[derive(Debug, Clone, Copy)]
struct Token {
    start: usize,
    end: usize,
    punct: Option<u8>,
}

impl Token {
    fn text<'a>(&self, code: &'a [u8]) -> &'a [u8] {
        &code[self.start..self.end]
    }

    /// An identifier or keyword (not a number, not punctuation).
    fn is_word(&self, code: &[u8]) -> bool {
        self.punct.is_none() && !code[self.start].is_ascii_digit()
    }
}

fn is_word_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'_' || byte >= 0x80
}

fn tokenize(code: &[u8]) -> Vec<Token> {
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < code.len() {
        let byte = code[i];
        if byte.is_ascii_whitespace() {
            i += 1;
        } else if is_word_byte(byte) {
            let start = i;
            while i < code.len() && is_word_byte(code[i]) {
                i += 1;
            }
            tokens.push(Token {
                start,
                end: i,
                punct: None,
            });
        } else {
            tokens.push(Token {
                start: i,
                end: i + 1,
                punct: Some(byte),
            });
            i += 1;
        }
    }
    tokens
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A source with comments, strings and character literals blanked, and what the comments say, by line.
struct Lexed {
    /// The source's bytes, with every byte inside a comment or literal replaced by a space (line breaks kept).
    code: Vec<u8>,
    /// The text of the comments on each line (0-based), joined.
    comments: Vec<String>,
    /// The byte offset at which each line starts.
    line_starts: Vec<usize>,
}

impl Lexed {
    fn new(source: &str) -> Self {
        let bytes = source.as_bytes();
        let line_starts: Vec<usize> = std::iter::once(0)
            .chain(
                bytes
                    .iter()
                    .enumerate()
                    .filter(|(_, b)| **b == b'\n')
                    .map(|(i, _)| i + 1),
            )
            .collect();
        let mut lexed = Self {
            code: bytes.to_vec(),
            comments: vec![String::new(); line_starts.len()],
            line_starts,
        };
        let mut i = 0;
        while i < bytes.len() {
            i = match literal_or_comment(bytes, i) {
                Some(Span {
                    end,
                    inner,
                    comment,
                }) => {
                    if comment {
                        lexed.record_comment(bytes, i, end);
                    }
                    lexed.blank(inner.0, inner.1);
                    end
                }
                None => i + 1,
            };
        }
        lexed
    }

    fn record_comment(&mut self, bytes: &[u8], start: usize, end: usize) {
        let parts = bytes[start..end].split(|b| *b == b'\n');
        for (line, part) in (self.line_of(start)..).zip(parts) {
            if let Some(text) = self.comments.get_mut(line) {
                text.push_str(&String::from_utf8_lossy(part));
                text.push(' ');
            }
        }
    }

    fn blank(&mut self, start: usize, end: usize) {
        for byte in &mut self.code[start..end] {
            if *byte != b'\n' {
                *byte = b' ';
            }
        }
    }

    /// 0-based line of byte `offset`.
    fn line_of(&self, offset: usize) -> usize {
        self.line_starts.partition_point(|start| *start <= offset) - 1
    }

    /// The code on line `line` (0-based), comments and literals blanked, trimmed.
    fn code_on(&self, line: usize) -> &[u8] {
        let start = self.line_starts[line];
        let end = self
            .line_starts
            .get(line + 1)
            .map_or(self.code.len(), |next| next - 1);
        self.code[start..end].trim_ascii()
    }

    /// The reason given for the length of the function whose `fn` is on line `line` (0-based): in a comment on
    /// one of the three lines above it, or in the comments and attributes directly above it (its doc comment).
    fn reason_above(&self, line: usize) -> Option<String> {
        let mut above: Vec<usize> = (line.saturating_sub(3)..line).collect();
        let mut next = line;
        while let Some(previous) = next.checked_sub(1) {
            let code = self.code_on(previous);
            let comment_only = code.is_empty() && !self.comments[previous].is_empty();
            let attribute = code.starts_with(b"#") || code.ends_with(b"]");
            if !(comment_only || attribute) {
                break;
            }
            above.push(previous);
            next = previous;
        }
        above.iter().find_map(|&l| {
            let comment = &self.comments[l];
            let at = comment.find(REASON_MARK)?;
            let reason = comment[at + REASON_MARK.len()..].trim();
            (!reason.is_empty()).then(|| reason.to_owned())
        })
    }
}

/// A comment or literal found by [`literal_or_comment`].
struct Span {
    /// Byte offset just after it.
    end: usize,
    /// The bytes to blank: its contents, without the delimiters of a literal.
    inner: (usize, usize),
    comment: bool,
}

/// The comment, string or character literal starting at byte `i`, if one does.
fn literal_or_comment(bytes: &[u8], i: usize) -> Option<Span> {
    let at = |k: usize| bytes.get(k).copied();
    match bytes[i] {
        b'/' if at(i + 1) == Some(b'/') => {
            let end = (i..bytes.len())
                .find(|&k| bytes[k] == b'\n')
                .unwrap_or(bytes.len());
            Some(Span {
                end,
                inner: (i, end),
                comment: true,
            })
        }
        b'/' if at(i + 1) == Some(b'*') => {
            let end = block_comment_end(bytes, i);
            Some(Span {
                end,
                inner: (i, end),
                comment: true,
            })
        }
        b'"' => {
            let end = quoted_end(bytes, i + 1, b'"');
            Some(literal(i + 1, end))
        }
        b'\'' => {
            let end = char_literal_end(bytes, i)?;
            Some(literal(i + 1, end))
        }
        // r"…", r#"…"#, br"…", cr#"…"#: raw strings, where a backslash escapes nothing.
        b'r' => {
            // The prefix must start a token: in `bar"` or `xbr"` the `r` ends a name.
            let prefix = if i > 0 && matches!(bytes[i - 1], b'b' | b'c') {
                i - 1
            } else {
                i
            };
            if prefix > 0 && is_word_byte(bytes[prefix - 1]) {
                return None;
            }
            let hashes = bytes[i + 1..].iter().take_while(|b| **b == b'#').count();
            if at(i + 1 + hashes) != Some(b'"') {
                return None;
            }
            let open = i + 2 + hashes;
            let mut closing = vec![b'"'];
            closing.extend(std::iter::repeat_n(b'#', hashes));
            let close = bytes[open..]
                .windows(closing.len())
                .position(|w| w == closing.as_slice())
                .map_or(bytes.len(), |p| open + p);
            Some(Span {
                end: (close + closing.len()).min(bytes.len()),
                inner: (open, close),
                comment: false,
            })
        }
        _ => None,
    }
}

/// A literal whose contents run from `open` to just before its closing delimiter, which ends at `end`.
fn literal(open: usize, end: usize) -> Span {
    Span {
        end,
        inner: (open, end.saturating_sub(1).max(open)),
        comment: false,
    }
}

/// The offset after the `*/` that closes the block comment at `start`; block comments nest.
fn block_comment_end(bytes: &[u8], start: usize) -> usize {
    let mut depth = 0usize;
    let mut k = start;
    while k + 1 < bytes.len() {
        match (bytes[k], bytes[k + 1]) {
            (b'/', b'*') => {
                depth += 1;
                k += 2;
            }
            (b'*', b'/') => {
                depth -= 1;
                k += 2;
                if depth == 0 {
                    return k;
                }
            }
            _ => k += 1,
        }
    }
    bytes.len()
}

/// The offset after the unescaped `quote` that closes a literal whose contents start at `from`.
fn quoted_end(bytes: &[u8], from: usize, quote: u8) -> usize {
    let mut k = from;
    while k < bytes.len() {
        match bytes[k] {
            b'\\' => k += 2,
            byte if byte == quote => return k + 1,
            _ => k += 1,
        }
    }
    bytes.len()
}

/// The offset after the character literal starting at the `'` at `i`; `None` when that quote starts a lifetime
/// or a label (`'a`, `'outer:`) instead.
fn char_literal_end(bytes: &[u8], i: usize) -> Option<usize> {
    let first = *bytes.get(i + 1)?;
    if first == b'\\' {
        return Some(quoted_end(bytes, i + 1, b'\''));
    }
    // One character, of one to four bytes in UTF-8, then the closing quote.
    let width = match first {
        0xf0.. => 4,
        0xe0.. => 3,
        0xc0.. => 2,
        _ => 1,
    };
    (bytes.get(i + 1 + width) == Some(&b'\'')).then_some(i + 2 + width)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A function named `name` with `body` lines between its `fn` line and its closing brace.
    fn function_with(name: &str, body: usize) -> String {
        let mut text = format!("fn {name}() {{\n");
        for i in 0..body {
            text.push_str(&format!("    let x{i} = {i};\n"));
        }
        text.push_str("}\n");
        text
    }

    fn lengths(source: &str) -> Vec<(String, usize, usize)> {
        scan(source)
            .functions
            .into_iter()
            .map(|f| (f.name, f.line, f.lines))
            .collect()
    }

    #[test]
    fn counts_from_the_fn_line_to_the_closing_brace() {
        let source = format!("//! doc\n\n{}", function_with("short", 3));
        assert_eq!(lengths(&source), [("short".to_owned(), 3, 5)]);
        let long = function_with("long", 85);
        assert_eq!(lengths(&long), [("long".to_owned(), 1, 87)]);
        assert_eq!(scan(&long).functions[0].reason, None);
    }

    #[test]
    fn a_reason_in_a_comment_above_or_in_the_doc_comment_is_found() {
        let body = function_with("long", 85);
        let source = format!("// long-function: one match over every message kind\n{body}");
        assert_eq!(
            scan(&source).functions[0].reason.as_deref(),
            Some("one match over every message kind")
        );
        // In a doc comment longer than three lines, with an attribute between it and the fn.
        let source = format!(
            "/// Does it all.\n/// long-function: a state table reads best in one piece\n///\n/// More.\n/// More.\n#[allow(dead_code)]\n{body}"
        );
        assert!(scan(&source).functions[0].reason.is_some());
        // A mark without a reason is no reason; nor is one further up, past code.
        let source = format!("// long-function:\n{body}");
        assert_eq!(scan(&source).functions[0].reason, None);
        let source = format!("// long-function: far away\nconst A: u8 = 1;\n\n\n\n{body}");
        assert_eq!(scan(&source).functions[0].reason, None);
        // Inside a string it is not a comment.
        let source = format!("const A: &str = \"// long-function: no\";\n{body}");
        assert_eq!(scan(&source).functions[0].reason, None);
    }

    #[test]
    fn braces_and_fns_in_strings_chars_and_comments_do_not_count() {
        let source = r####"
fn tricky() {
    let a = "}}} fn fake() { {";
    let b = '}';
    let c = '{';
    let d = b'}';
    let e = '\'';
    let f = "\"}";
    let g = r#"}"# ;
    let h = br##"}"#}"## ;
    // } fn in_a_comment() {
    /* } /* nested } */ still a comment { */
    let i: &'static str = "\\";
    let j = '\\';
    'outer: loop { break 'outer; }
}
fn after() {}
"####;
        assert_eq!(
            lengths(source),
            [("tricky".to_owned(), 2, 15), ("after".to_owned(), 17, 1)]
        );
    }

    #[test]
    fn declarations_pointer_types_and_macro_patterns_are_not_functions() {
        let source = "trait T {\n    fn declared(&self);\n    fn defaulted(&self) -> [u8; 2] { [0; 2] }\n}\n\
                      type F = fn(u8) -> u8;\n\
                      extern \"C\" { fn external(); }\n\
                      macro_rules! m { ($name:ident) => { fn $name() {} } }\n";
        assert_eq!(lengths(source), [("T::defaulted".to_owned(), 3, 1)]);
    }

    #[test]
    fn methods_are_named_after_their_type() {
        let source = "impl<T: Fn() -> u8> Display for Wrapper<T> where T: Copy {\n    fn fmt(&self) {}\n}\n\
                      impl Plain {\n    pub(crate) async fn run(\n        self,\n    ) -> impl Iterator<Item = u8> {\n        todo()\n    }\n}\n\
                      fn free() {}\n";
        assert_eq!(
            lengths(source),
            [
                ("Wrapper::fmt".to_owned(), 2, 1),
                ("Plain::run".to_owned(), 5, 5),
                ("free".to_owned(), 11, 1),
            ]
        );
    }

    #[test]
    fn test_only_items_are_skipped_and_out_of_line_test_modules_named() {
        let long = function_with("in_tests", 90);
        let source = format!(
            "#[cfg(test)]\nmod tests {{\n{long}}}\n\n#[cfg(test)]\n#[path = \"x.rs\"]\nmod more_tests;\n\
             #[cfg(all(test, unix))]\n{long}\n{}",
            function_with("kept", 1)
        );
        let scan = scan(&source);
        assert_eq!(
            scan.functions
                .iter()
                .map(|f| f.name.as_str())
                .collect::<Vec<_>>(),
            ["kept"]
        );
        assert_eq!(scan.test_modules, ["more_tests"]);
        let whole_file = format!("//! Tests.\n#![cfg(test)]\n{long}");
        assert!(super::scan(&whole_file).functions.is_empty());
    }
}
