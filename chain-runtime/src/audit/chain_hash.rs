//! The canonical form of a record and its BLAKE3 hash.

use serde_json::Value;

/// The `prev_hash` of the first record: 64 zeros.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The canonical form of a JSON value, as a string.
///
/// Canonical form (RFC 8785 JSON Canonicalization Scheme for the values records contain):
/// - the record as a JSON object with the `hash` member removed (every other member, including
///   `prev_hash` and members an editor may have added, is kept);
/// - no insignificant whitespace;
/// - object members sorted by key, comparing keys as UTF-16 code units (all keys written by
///   this crate are ASCII, so this is plain byte order);
/// - strings as JSON strings: `"` and `\` escaped, `\b \t \n \f \r` for those controls, other
///   characters below U+0020 as `\u00xx` (lowercase hex), everything else as raw UTF-8;
/// - numbers: records only contain integers, written in decimal without exponent or sign `+`;
/// - `null`, `true`, `false` as such; arrays in order.
///
/// `hash = lowercase_hex(BLAKE3(canonical_form))`, 64 characters. The first record's
/// `prev_hash` is [`GENESIS_HASH`] (64 zeros).
///
/// Each line of a JSON Lines export is the canonical form of the full record (with `hash`), so
/// with `jq -cS 'del(.hash)'` and `b3sum` a line can be checked without this crate.
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| key_order(a.0, b.0));
            out.push('{');
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(key, out);
                out.push(':');
                write_canonical(item, out);
            }
            out.push('}');
        }
    }
}

/// Keys compared as UTF-16 code units. Byte order is the same as long as the first
/// difference is between two ASCII characters (the common prefix has the same code units);
/// otherwise the code units decide.
pub(crate) fn key_order(a: &str, b: &str) -> std::cmp::Ordering {
    let first_difference = a.bytes().zip(b.bytes()).position(|(x, y)| x != y);
    match first_difference {
        Some(i) if a.as_bytes()[i].is_ascii() && b.as_bytes()[i].is_ascii() => a.cmp(b),
        // One is a prefix of the other: the shorter comes first either way.
        None => a.len().cmp(&b.len()),
        Some(_) => a.encode_utf16().cmp(b.encode_utf16()),
    }
}

/// The bytes a canonical JSON string escapes: controls, `"` and `\`.
pub(crate) const ESCAPED: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = true;
        b += 1;
    }
    table[b'"' as usize] = true;
    table[b'\\' as usize] = true;
    table
};

/// The index of the first byte of `s` that a canonical JSON string escapes ([`ESCAPED`]), if
/// any. Eight bytes at a time: a word is looked into only when it holds such a byte.
#[inline]
pub(crate) fn first_escaped(s: &[u8]) -> Option<usize> {
    let found_from = |start: usize| {
        s[start..]
            .iter()
            .position(|&b| ESCAPED[usize::from(b)])
            .map(|i| start + i)
    };
    let (words, _) = s.as_chunks::<8>();
    for (i, word) in words.iter().enumerate() {
        if escapes_in(u64::from_ne_bytes(*word)) != 0 {
            return found_from(i * 8);
        }
    }
    if escapes_in(last_word(s)) != 0 {
        found_from(words.len() * 8)
    } else {
        None
    }
}

/// Not zero exactly when the word `w` holds a byte a canonical JSON string escapes: a control
/// (a byte below 0x20), `"` or `\\`. A byte below 0x20, or zero once xor'ed with `"` or `\\`,
/// borrows into its top bit. One test for the three (their top bits are those of `w`, as `"`
/// and `\\` are ASCII), exact for the word as a whole: a borrow only ever comes from a byte
/// that holds one of them.
#[inline(always)]
pub(super) fn escapes_in(w: u64) -> u64 {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    let below = w.wrapping_sub(ONES * 0x20);
    let quote = (w ^ (ONES * u64::from(b'"'))).wrapping_sub(ONES);
    let backslash = (w ^ (ONES * u64::from(b'\\'))).wrapping_sub(ONES);
    (below | quote | backslash) & !w & HIGH
}

/// The bytes after the last whole word of `s` as one word, to test with [`escapes_in`]
/// instead of one by one (without a loop whose end depends on the length): the last eight
/// bytes (those before the tail are in whole words); in a shorter string, its first and last
/// four bytes, or its first, middle and last byte padded with spaces (never escaped).
#[inline(always)]
pub(super) fn last_word(s: &[u8]) -> u64 {
    if let Some(last) = s.last_chunk::<8>() {
        u64::from_ne_bytes(*last)
    } else if let (Some(first), Some(last)) = (s.first_chunk::<4>(), s.last_chunk::<4>()) {
        u64::from(u32::from_ne_bytes(*first)) | u64::from(u32::from_ne_bytes(*last)) << 32
    } else {
        match s {
            [] => 0x2020_2020_2020_2020,
            [a, ..] => u64::from_ne_bytes([
                *a,
                s[s.len() / 2],
                s[s.len() - 1],
                b' ',
                b' ',
                b' ',
                b' ',
                b' ',
            ]),
        }
    }
}

/// Appends `s` as a canonical JSON string.
pub(crate) fn write_string(s: &str, out: &mut String) {
    out.push('"');
    let mut rest = s;
    // Copy runs of characters that need no escape in one go.
    while let Some(i) = first_escaped(rest.as_bytes()) {
        out.push_str(&rest[..i]);
        let b = rest.as_bytes()[i];
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            0x08 => out.push_str("\\b"),
            b'\t' => out.push_str("\\t"),
            b'\n' => out.push_str("\\n"),
            0x0c => out.push_str("\\f"),
            b'\r' => out.push_str("\\r"),
            _ => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.push_str("\\u00");
                out.push(char::from(HEX[usize::from(b >> 4)]));
                out.push(char::from(HEX[usize::from(b & 0xf)]));
            }
        }
        rest = &rest[i + 1..];
    }
    out.push_str(rest);
    out.push('"');
}

/// The hash of a record given as a JSON object: BLAKE3 over the canonical form of the object
/// without its `hash` member, as lowercase hex.
pub fn record_hash(record: &Value) -> String {
    let mut canonical = String::with_capacity(512);
    match record {
        // The object without its `hash` member, written without copying the object.
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> =
                map.iter().filter(|(k, _)| k.as_str() != "hash").collect();
            entries.sort_by(|a, b| key_order(a.0, b.0));
            canonical.push('{');
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    canonical.push(',');
                }
                write_string(key, &mut canonical);
                canonical.push(':');
                write_canonical(item, &mut canonical);
            }
            canonical.push('}');
        }
        other => write_canonical(other, &mut canonical),
    }
    blake3::hash(canonical.as_bytes()).to_hex().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_form_sorts_keys_and_escapes_like_jcs() {
        let v =
            json!({"b": [1, "x\n\u{1}é\"\\"], "a": null, "C": true, "aa": {"z": -3, "y": false}});
        assert_eq!(
            canonical_json(&v),
            r#"{"C":true,"a":null,"aa":{"y":false,"z":-3},"b":[1,"x\n\u0001é\"\\"]}"#
        );
    }

    #[test]
    fn key_order_is_utf16_order() {
        let keys = [
            "",
            "a",
            "ab",
            "b",
            "B",
            "a\u{7f}",
            "é",
            "aé",
            "a\u{ffff}",
            "a\u{10000}",
            "\u{e000}",
            "\u{10ffff}",
            "\u{ff61}x",
            "\u{1f600}",
            "a\"",
            "a\\",
        ];
        for a in keys {
            for b in keys {
                let utf16 = a.encode_utf16().cmp(b.encode_utf16());
                assert_eq!(key_order(a, b), utf16, "{a:?} {b:?}");
            }
        }
        for b in 0..=255u8 {
            let escaped = b < 0x20 || b == b'"' || b == b'\\';
            assert_eq!(ESCAPED[usize::from(b)], escaped, "{b}");
        }
    }

    #[test]
    fn first_escaped_finds_the_first_byte_to_escape_wherever_it_is() {
        let naive = |s: &[u8]| s.iter().position(|&b| ESCAPED[usize::from(b)]);
        // Every byte value at every place of strings of 0 to 25 bytes, over backgrounds of
        // plain ASCII, of bytes just above the escaped ones, and of non-ASCII bytes.
        for background in [b'a', 0x20, b'#', b']', 0x80, 0xa0, 0xdc, 0xff] {
            for len in 0..26 {
                let plain = vec![background; len];
                assert_eq!(first_escaped(&plain), None);
                for at in 0..len {
                    for b in 0..=255u8 {
                        let mut s = plain.clone();
                        s[at] = b;
                        assert_eq!(first_escaped(&s), naive(&s), "{s:?}");
                        // A second escaped byte later does not hide the first.
                        if at + 3 < len {
                            s[at + 3] = b'"';
                            assert_eq!(first_escaped(&s), naive(&s), "{s:?}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn hash_ignores_only_the_hash_member() {
        let a = json!({"seq": 1, "prev_hash": GENESIS_HASH, "hash": "whatever"});
        let b = json!({"seq": 1, "prev_hash": GENESIS_HASH, "hash": "different"});
        let c = json!({"seq": 2, "prev_hash": GENESIS_HASH, "hash": "whatever"});
        assert_eq!(record_hash(&a), record_hash(&b));
        assert_ne!(record_hash(&a), record_hash(&c));
        assert_eq!(record_hash(&a).len(), 64);
        let expected =
            blake3::hash(format!(r#"{{"prev_hash":"{GENESIS_HASH}","seq":1}}"#).as_bytes());
        assert_eq!(record_hash(&a), expected.to_hex().to_string());
    }
}
