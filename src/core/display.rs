//! Showing untrusted text on a terminal.
//!
//! Everything a client prints that came from the network (chat text, names, `ERR` details,
//! echoed text, bytes from a peer that speaks another protocol) goes through [`safe`] or
//! [`safe_bytes`], so a peer cannot move the cursor, erase lines, fake lines from others,
//! retitle the window or reorder text with bidi overrides: every control character comes out
//! as visible, inert text.

/// `text` with every control or bidi-override character made visible:
/// ESC as `\e`, CR as `\r`, LF as `\n`, other C0 controls and DEL as `\xNN`, C1 controls and
/// the invisible bidi controls (U+061C, U+200E-200F, U+202A-202E, U+2066-2069) as `\u{..}`.
/// Tab stays (it cannot move the cursor up or erase anything).
pub fn safe(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\t' => out.push('\t'),
            '\x1b' => out.push_str("\\e"),
            '\r' => out.push_str("\\r"),
            '\n' => out.push_str("\\n"),
            '\0'..='\x1f' | '\x7f' => out.push_str(&format!("\\x{:02x}", c as u32)),
            '\u{80}'..='\u{9f}' | '\u{061c}' | '\u{200e}' | '\u{200f}' => {
                out.push_str(&format!("\\u{{{:x}}}", c as u32))
            }
            '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' => {
                out.push_str(&format!("\\u{{{:x}}}", c as u32))
            }
            c => out.push(c),
        }
    }
    out
}

/// Like [`safe`] for bytes that may not be UTF-8: invalid sequences become U+FFFD first.
pub fn safe_bytes(bytes: &[u8]) -> String {
    safe(&String::from_utf8_lossy(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The attack from the issue: return to column 0, erase the line, move up, fake a line.
    const ATTACK: &str = "hi\r\x1b[2K\x1b[1Abob: send me your password\x1b]0;pwned\x07";

    #[test]
    fn the_terminal_attack_comes_out_inert() {
        let shown = safe(ATTACK);
        assert_eq!(
            shown,
            "hi\\r\\e[2K\\e[1Abob: send me your password\\e]0;pwned\\x07"
        );
        assert!(!shown.bytes().any(|b| b < 0x20 || b == 0x7f), "{shown:?}");
    }

    #[test]
    fn every_control_character_is_visible() {
        assert_eq!(safe("a\0b\x08c\x7fd"), "a\\x00b\\x08c\\x7fd");
        assert_eq!(safe("line\nnext"), "line\\nnext");
        assert_eq!(safe("tab\tstays"), "tab\tstays");
        // C1 controls: U+009B is a one-character CSI on some terminals.
        assert_eq!(safe("x\u{9b}2Ky\u{85}"), "x\\u{9b}2Ky\\u{85}");
    }

    #[test]
    fn bidi_overrides_are_visible() {
        assert_eq!(safe("abc\u{202e}fed"), "abc\\u{202e}fed");
        assert_eq!(
            safe("\u{202a}\u{202b}\u{202c}\u{202d}"),
            "\\u{202a}\\u{202b}\\u{202c}\\u{202d}"
        );
        assert_eq!(
            safe("\u{2066}\u{2067}\u{2068}\u{2069}\u{200f}"),
            "\\u{2066}\\u{2067}\\u{2068}\\u{2069}\\u{200f}"
        );
    }

    #[test]
    fn ordinary_text_is_unchanged() {
        for s in [
            "Hello, there",
            "héllo wörld ✓ 日本語",
            "C:\\dir\\file",
            "a  b",
            "",
        ] {
            assert_eq!(safe(s), s);
        }
    }

    #[test]
    fn bytes_that_are_not_utf8_are_replaced_then_made_safe() {
        assert_eq!(safe_bytes(b"ok\xff\x1b"), "ok\u{fffd}\\e");
    }
}
