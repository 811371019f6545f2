//! Names that come from packages (tar entry names, OVF hrefs): how they
//! are printed, and when one may become a file name.
//!
//! A package chooses its names, so a name may hold a newline that splits
//! a log or summary line in two, a right-to-left override that makes
//! `exe.raw` print as `war.exe`, or spaces that hide at either end. Text
//! output shows such characters escaped; `--dir` refuses to build a file
//! name from them.

use std::borrow::Cow;
use std::fmt::Write;

/// Characters that reorder text when displayed: the bidirectional marks,
/// embeddings, overrides and isolates.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Characters that must not reach a terminal or a file name unescaped:
/// control characters (C0, DEL, C1), bidirectional controls, and the
/// Unicode line and paragraph separators.
pub fn is_unsafe(c: char) -> bool {
    c.is_control() || is_bidi_control(c) || matches!(c, '\u{2028}' | '\u{2029}')
}

/// `name` with every unsafe character written as `\n`, `\t`, `\r` or
/// `\u{XXXX}`; borrowed when there is nothing to escape.
pub fn printable(name: &str) -> Cow<'_, str> {
    if !name.chars().any(is_unsafe) {
        return Cow::Borrowed(name);
    }
    let mut out = String::with_capacity(name.len() + 8);
    for c in name.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if is_unsafe(c) => {
                let _ = write!(out, "\\u{{{:04X}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Why an href cannot name a file under `--dir`.
pub fn unfit_for_file_name(href: &str) -> Option<&'static str> {
    if href.chars().any(|c| c.is_control()) {
        Some("it holds a control character")
    } else if href.chars().any(is_unsafe) {
        Some("it holds a bidirectional-text control or a line separator")
    } else if href.trim() != href {
        Some("it begins or ends with whitespace")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_are_borrowed() {
        assert!(matches!(printable("disk1.vmdk"), Cow::Borrowed(_)));
        assert_eq!(printable("ünïcödé disk.vmdk"), "ünïcödé disk.vmdk");
    }

    #[test]
    fn controls_and_bidi_are_escaped() {
        assert_eq!(printable("disk1\n.raw"), "disk1\\n.raw");
        assert_eq!(printable("a\u{1b}[31mb"), "a\\u{001B}[31mb");
        assert_eq!(printable("x\u{202E}war.exe"), "x\\u{202E}war.exe");
        assert_eq!(printable("a\u{85}b\u{2028}"), "a\\u{0085}b\\u{2028}");
    }

    #[test]
    fn file_name_rules() {
        assert_eq!(unfit_for_file_name("disk1.vmdk"), None);
        assert_eq!(unfit_for_file_name("my disk.vmdk"), None);
        assert!(unfit_for_file_name("disk1\n.vmdk").is_some());
        assert!(unfit_for_file_name("\u{202E}kdmv.exe").is_some());
        assert!(unfit_for_file_name(" disk.vmdk").is_some());
        assert!(unfit_for_file_name("disk.vmdk\t").is_some());
        assert!(unfit_for_file_name("disk.vmdk\u{3000}").is_some());
    }
}
