//! Text from the session log, recordings and the state (logins, commands, paths, emails,
//! server messages…) is chosen by the users sshgw audits. Printed raw, it could move the
//! operator's cursor, rewrite or hide rows, set the clipboard (OSC 52) or reorder what is
//! displayed (bidi overrides). Every human-readable output goes through [`escape`]; `--json`
//! output stays exact (JSON escapes control characters itself).
//!
//! Escaped: `\` itself (`\\`, so an escape cannot be faked), C0 controls (`\e` for ESC,
//! `\n`, `\r`, `\t`, else `\x07`), DEL (`\x7f`), C1 controls, and invisible or
//! direction-changing format characters (`\u{202e}`): bidi embeddings, overrides, isolates
//! and marks, zero-width characters, line and paragraph separators, the soft hyphen, the
//! byte order mark, interlinear annotation marks and Unicode tag characters.

use std::{borrow::Cow, fmt::Write};

/// Whether `c` changes the display instead of showing a glyph.
fn needs_escape(c: char) -> bool {
    matches!(
        c,
        '\\' | '\0'..='\x1f'
            | '\x7f'..='\u{9f}'
            | '\u{ad}'
            | '\u{61c}'
            | '\u{180e}'
            | '\u{200b}'..='\u{200f}'
            | '\u{2028}'..='\u{202e}'
            | '\u{2060}'..='\u{206f}'
            | '\u{feff}'
            | '\u{fff9}'..='\u{fffb}'
            | '\u{e0000}'..='\u{e007f}'
    )
}

/// `text` with every character that could act on a terminal written as a visible escape.
pub fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\x1b' => out.push_str("\\e"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c < ' ' || c == '\x7f' => {
                let _ = write!(out, "\\x{:02x}", u32::from(c));
            }
            c if needs_escape(c) => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// [`escape`] of an optional value, `-` when there is none.
pub fn or_dash(value: Option<&str>) -> Cow<'_, str> {
    value.map_or(Cow::Borrowed("-"), escape)
}

/// A report sshgw assembled line by line: each line escaped, the line breaks kept.
pub fn escape_lines(text: &str) -> String {
    text.split('\n').map(escape).collect::<Vec<_>>().join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_untouched() {
        for text in ["jdoe@example.com", "ls -la /tmp", "Ünïcödé 文件 ✓", ""] {
            assert!(matches!(escape(text), Cow::Borrowed(t) if t == text));
        }
    }

    #[test]
    fn controls_and_bidi_are_visible() {
        assert_eq!(escape("true\r\x1b[2K0  exec"), "true\\r\\e[2K0  exec");
        assert_eq!(escape("a\nb\tc\x07d\x7fe\0"), "a\\nb\\tc\\x07d\\x7fe\\x00");
        assert_eq!(escape("x\u{9b}31m"), "x\\u{9b}31m");
        assert_eq!(escape("abc\u{202e}txt.exe"), "abc\\u{202e}txt.exe");
        assert_eq!(
            escape("\u{2066}a\u{2069}\u{200f}"),
            "\\u{2066}a\\u{2069}\\u{200f}"
        );
        assert_eq!(escape("a\u{e0041}"), "a\\u{e0041}");
        assert_eq!(escape("C:\\x1b"), "C:\\\\x1b");
        assert_eq!(or_dash(None), "-");
        assert_eq!(escape_lines("a\x1b\nb\r\n"), "a\\e\nb\\r\n");
        for c in (0u32..0x11_0000).filter_map(char::from_u32) {
            let out = escape(&c.to_string()).into_owned();
            assert!(
                !out.chars().any(|o| o.is_control() || o == '\u{202e}'),
                "{c:?} -> {out:?}"
            );
        }
    }
}
