//! Whether a stored JSON text already is the canonical form (see [`super::canonical_json`]) of
//! what it parses to, so that it can be hashed as it is: the readers of canonical values and
//! strings that [`super::typed_text`] builds on.

use super::chain_hash::first_escaped;

/// Deepest nesting [`is_canonical`] follows (serde_json refuses deeper than 128).
const MAX_DEPTH: usize = 64;

/// Whether `text` parses as JSON whose canonical form is `text` itself, so that hashing `text`
/// hashes what `canonical_json(&serde_json::from_str(text)?)` would.
///
/// Conservative: `false` does not mean "not canonical" but "not sure" (keys with escapes or
/// non-ASCII characters, numbers with a fraction, an exponent or more than 18 digits, `-0`,
/// nesting deeper than 64); callers then take the slow road through `serde_json::Value`.
#[cfg(test)]
pub(crate) fn is_canonical(text: &str) -> bool {
    let mut pos = 0;
    value(text.as_bytes(), &mut pos, 0) && pos == text.len()
}

/// Reads one canonical value at `pos` (see [`is_canonical`]), nested at most `64 - depth` deep.
pub(super) fn value(b: &[u8], pos: &mut usize, depth: usize) -> bool {
    match b.get(*pos) {
        Some(b'{') => {
            if depth >= MAX_DEPTH {
                return false;
            }
            *pos += 1;
            if b.get(*pos) == Some(&b'}') {
                *pos += 1;
                return true;
            }
            let mut prev: Option<&[u8]> = None;
            loop {
                let start = *pos + 1;
                if !string(b, pos, true) {
                    return false;
                }
                let key = &b[start..*pos - 1];
                if prev.is_some_and(|p| key <= p) {
                    return false;
                }
                prev = Some(key);
                if b.get(*pos) != Some(&b':') {
                    return false;
                }
                *pos += 1;
                if !value(b, pos, depth + 1) {
                    return false;
                }
                match b.get(*pos) {
                    Some(b',') => *pos += 1,
                    Some(b'}') => {
                        *pos += 1;
                        return true;
                    }
                    _ => return false,
                }
            }
        }
        Some(b'[') => {
            if depth >= MAX_DEPTH {
                return false;
            }
            *pos += 1;
            if b.get(*pos) == Some(&b']') {
                *pos += 1;
                return true;
            }
            loop {
                if !value(b, pos, depth + 1) {
                    return false;
                }
                match b.get(*pos) {
                    Some(b',') => *pos += 1,
                    Some(b']') => {
                        *pos += 1;
                        return true;
                    }
                    _ => return false,
                }
            }
        }
        Some(b'"') => string(b, pos, false),
        Some(b't') => literal(b, pos, b"true"),
        Some(b'f') => literal(b, pos, b"false"),
        Some(b'n') => literal(b, pos, b"null"),
        Some(b'-' | b'0'..=b'9') => number(b, pos),
        _ => false,
    }
}

fn literal(b: &[u8], pos: &mut usize, word: &[u8]) -> bool {
    if b[*pos..].starts_with(word) {
        *pos += word.len();
        true
    } else {
        false
    }
}

/// An integer as the canonical form writes it (no `-0`, at most 18 digits: it fits `i64`).
fn number(b: &[u8], pos: &mut usize) -> bool {
    let negative = b[*pos] == b'-';
    if negative {
        *pos += 1;
    }
    let start = *pos;
    while b.get(*pos).is_some_and(u8::is_ascii_digit) {
        *pos += 1;
    }
    let digits = &b[start..*pos];
    let well_formed = match digits {
        [] => false,
        [b'0'] => !negative,
        [b'0', ..] => false,
        _ => digits.len() <= 18,
    };
    well_formed && !matches!(b.get(*pos), Some(b'.' | b'e' | b'E'))
}

/// Reads a string at `pos` escaped exactly as the canonical form escapes it; keys (`key`) must moreover be
/// plain ASCII without escapes, so that their byte order is their canonical order.
pub(super) fn string(b: &[u8], pos: &mut usize, key: bool) -> bool {
    if b.get(*pos) != Some(&b'"') {
        return false;
    }
    *pos += 1;
    loop {
        if !key {
            // Straight to the closing quote, an escape or a control.
            match first_escaped(&b[*pos..]) {
                Some(i) => *pos += i,
                None => return false,
            }
        }
        match b.get(*pos) {
            None => return false,
            Some(b'"') => {
                *pos += 1;
                return true;
            }
            Some(b'\\') if !key => {
                match b.get(*pos + 1) {
                    Some(b'"' | b'\\' | b'b' | b't' | b'n' | b'f' | b'r') => *pos += 2,
                    Some(b'u') => {
                        // Only the controls without a short escape, as `\u00xx`, lowercase.
                        let Some(&[b'0', b'0', hi, lo]) = b.get(*pos + 2..*pos + 6) else {
                            return false;
                        };
                        let code = match (hi, lo) {
                            (b'0', b'0'..=b'9') => lo - b'0',
                            (b'0', b'a'..=b'f') => lo - b'a' + 10,
                            (b'1', b'0'..=b'9') => 16 + lo - b'0',
                            (b'1', b'a'..=b'f') => 16 + lo - b'a' + 10,
                            _ => return false,
                        };
                        if matches!(code, 0x08 | 0x09 | 0x0a | 0x0c | 0x0d) {
                            return false;
                        }
                        *pos += 6;
                    }
                    _ => return false,
                }
            }
            Some(&c) if c < 0x20 || c == b'\\' || (key && c >= 0x80) => return false,
            Some(_) => *pos += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::canonical_json;
    use serde_json::Value;

    #[test]
    fn is_canonical_accepts_only_texts_that_are_their_own_canonical_form() {
        for text in [
            "[]",
            "{}",
            r#"{"a":1,"b":[-2,0,"x\u001f\"\\\n"],"c":{"d":null,"e":true}}"#,
            r#""é\u0000""#,
            "123456789012345678",
        ] {
            assert!(is_canonical(text), "{text}");
            let value: Value = serde_json::from_str(text).unwrap();
            assert_eq!(canonical_json(&value), text);
        }
        for text in [
            "",
            " []",
            "[] ",
            "[1,]",
            r#"{"b":1,"a":2}"#,
            r#"{"a":1,"a":2}"#,
            r#"{"a" :1}"#,
            r#""\u0008""#,
            r#""\u001F""#,
            r#""\/""#,
            r#""\u00e9""#,
            "-0",
            "01",
            "1.0",
            "1e3",
            "1234567890123456789",
            "tru",
            "[\"a\u{1}\"]",
            r#"{"\u0061":1}"#,
            r#"{"é":1}"#,
            "[1",
        ] {
            assert!(!is_canonical(text), "{text}");
        }
        let deep = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        assert!(!is_canonical(&deep));
    }
}
