//! HTML character-reference unescaping with the rules of Python's `html.unescape`, which the Wan pipeline
//! applies (twice) to every prompt before tokenizing it. Matching Python exactly matters because the
//! cleaned text decides the token ids, and the token ids decide the video.
//!
//! The named references are the HTML5 table (`html5_entities.tsv`, generated from Python's
//! `html.entities.html5`: one `name<TAB>code points in hex` per line; names with and without the
//! trailing `;` are separate entries, as in the standard).

use std::collections::HashMap;
use std::sync::OnceLock;

/// The longest run of name characters a named reference may have (Python's `{1,32}`).
const MAX_NAME_CHARS: usize = 32;

fn entities() -> &'static HashMap<&'static str, String> {
    static TABLE: OnceLock<HashMap<&'static str, String>> = OnceLock::new();
    TABLE.get_or_init(|| {
        include_str!("html5_entities.tsv")
            .lines()
            .filter_map(|line| {
                let (name, points) = line.split_once('\t')?;
                let value: Option<String> =
                    points.split(' ').map(|hex| u32::from_str_radix(hex, 16).ok().and_then(char::from_u32)).collect();
                Some((name, value?))
            })
            .collect()
    })
}

/// Replaces every character reference in `text` the way Python's `html.unescape` does: numeric
/// references (decimal or hex, `;` optional) with the HTML5 fix-ups for invalid code points, and named
/// references with the longest-prefix rule for legacy names written without `;`.
pub fn unescape(text: &str) -> String {
    if !text.contains('&') {
        return text.to_string();
    }
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == '&' {
            if let Some((replacement, end)) = reference_at(&chars, i + 1) {
                out.push_str(&replacement);
                i = end;
                continue;
            }
        }
        out.push(chars[i]);
        i += 1;
    }
    out
}

/// Tries to read a reference whose body starts at `start` (just after the `&`); returns the text that
/// replaces `&body` and the index just past the body.
fn reference_at(chars: &[char], start: usize) -> Option<(String, usize)> {
    let at = |i: usize| chars.get(i).copied();
    if at(start) == Some('#') {
        let (radix, digits_start) = match at(start + 1) {
            Some('x' | 'X') => (16, start + 2),
            _ => (10, start + 1),
        };
        let mut end = digits_start;
        while at(end).is_some_and(|c| c.is_ascii_digit() || (radix == 16 && c.is_ascii_hexdigit())) {
            end += 1;
        }
        if end == digits_start {
            // `&#` not followed by digits is not a reference (the name form may not start with `#`).
            return None;
        }
        let digits: String = chars[digits_start..end].iter().collect();
        if at(end) == Some(';') {
            end += 1;
        }
        return Some((numeric_reference(&digits, radix), end));
    }
    let mut end = start;
    while end - start < MAX_NAME_CHARS && at(end).is_some_and(is_name_char) {
        end += 1;
    }
    if end == start {
        return None;
    }
    if at(end) == Some(';') {
        end += 1;
    }
    let body: String = chars[start..end].iter().collect();
    Some((named_reference(&body), end))
}

/// Python's name class `[^\t\n\f <&#;]`.
fn is_name_char(c: char) -> bool {
    !matches!(c, '\t' | '\n' | '\x0c' | ' ' | '<' | '&' | '#' | ';')
}

fn named_reference(body: &str) -> String {
    let table = entities();
    if let Some(value) = table.get(body) {
        return value.clone();
    }
    // The longest proper prefix (of at least two characters) that is a known name wins; the rest of the
    // body is kept as text. This is how `&ampx` becomes `&x`.
    let bounds: Vec<usize> = body.char_indices().map(|(i, _)| i).collect();
    for &cut in bounds.iter().skip(2).rev() {
        if let Some(value) = table.get(&body[..cut]) {
            return format!("{value}{}", &body[cut..]);
        }
    }
    format!("&{body}")
}

fn numeric_reference(digits: &str, radix: u32) -> String {
    // Anything past U+10FFFF is handled alike, so saturating keeps huge digit strings harmless.
    let num = digits
        .chars()
        .try_fold(0u32, |acc, c| Some(acc.saturating_mul(radix).saturating_add(c.to_digit(radix)?)))
        .unwrap_or(u32::MAX);
    if let Some(c) = windows_1252_fixup(num) {
        return c.to_string();
    }
    if (0xD800..=0xDFFF).contains(&num) || num > 0x10FFFF {
        return '\u{FFFD}'.to_string();
    }
    if is_invalid_code_point(num) {
        return String::new();
    }
    char::from_u32(num).map(String::from).unwrap_or_default()
}

/// HTML5's replacements for references to NUL, CR and the C1 range (read as Windows-1252).
fn windows_1252_fixup(num: u32) -> Option<char> {
    const C1: [u32; 32] = [
        0x20AC, 0x81, 0x201A, 0x0192, 0x201E, 0x2026, 0x2020, 0x2021, 0x02C6, 0x2030, 0x0160, 0x2039, 0x0152, 0x8D,
        0x017D, 0x8F, 0x90, 0x2018, 0x2019, 0x201C, 0x201D, 0x2022, 0x2013, 0x2014, 0x02DC, 0x2122, 0x0161, 0x203A,
        0x0153, 0x9D, 0x017E, 0x0178,
    ];
    match num {
        0x00 => Some('\u{FFFD}'),
        0x0D => Some('\r'),
        0x80..=0x9F => char::from_u32(C1[(num - 0x80) as usize]),
        _ => None,
    }
}

/// Code points whose references HTML5 drops: most C0/C1 controls and the non-characters.
fn is_invalid_code_point(num: u32) -> bool {
    matches!(num, 0x01..=0x08 | 0x0B | 0x0E..=0x1F | 0x7F..=0x9F | 0xFDD0..=0xFDEF) || (num & 0xFFFE) == 0xFFFE
}

#[cfg(test)]
mod tests {
    use super::unescape;

    #[test]
    fn named_and_numeric_references() {
        assert_eq!(unescape("a &amp; b &lt;c&gt; &quot;d&quot;"), "a & b <c> \"d\"");
        assert_eq!(unescape("&#62;&#x3e;&#X3E;&#62"), ">>>>");
        assert_eq!(unescape("&hellip;&nbsp;&NotEqualTilde;"), "\u{2026}\u{a0}\u{2242}\u{338}");
    }

    #[test]
    fn legacy_prefixes_and_non_references() {
        assert_eq!(unescape("&ampx &copy2 &notit;"), "&x \u{a9}2 \u{ac}it;");
        assert_eq!(unescape("& &# &#x &nosuch; &;"), "& &# &#x &nosuch; &;");
        assert_eq!(unescape("AT&T"), "AT&T");
    }

    #[test]
    fn invalid_code_points_follow_html5() {
        assert_eq!(unescape("&#0;&#13;&#128;&#x81;"), "\u{FFFD}\r\u{20AC}\u{81}");
        assert_eq!(unescape("&#xD800;&#99999999999999;"), "\u{FFFD}\u{FFFD}");
        assert_eq!(unescape("a&#1;b&#xFFFF;c&#x10FFFE;d"), "abcd");
    }

    #[test]
    fn twice_is_what_the_pipeline_does() {
        assert_eq!(unescape(&unescape("&amp;amp;lt;")), "&lt;");
    }
}
