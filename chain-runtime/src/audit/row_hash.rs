//! A stored `audit_records` row as its columns ([`Cell`]s), and its canonical form written
//! straight from them: the fast road of verification, without a `serde_json::Value` per row.
//!
//! The fast road only ever says "this row is a good record" for a row the record-object road
//! ([`super::verify::ChainVerifier::push`] over [`cells_to_value`]) accepts too, with the same
//! hash; whenever it is not sure (an edited column, an unexpected type, a JSON column that is
//! not stored in canonical form, as written by older versions) the caller takes the
//! record-object road, which also says what is wrong.

use serde_json::Value;

#[cfg(doc)]
use super::chain_hash::write_string;
use super::chain_hash::{escapes_in, first_escaped, last_word};
use super::record::FORMAT_VERSION;
use super::rows::{COLUMNS, text_value};
use super::typed_text::{self, RefRanges};

/// One column of a stored row, as the database returned it.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Cell<'a> {
    /// SQL `NULL`.
    Null,
    /// An integer.
    Int(i64),
    /// A floating-point number (only an edited SQLite row has one).
    Real(f64),
    /// Text, as bytes (SQLite does not promise UTF-8).
    Text(&'a [u8]),
    /// A blob (only an edited SQLite row has one).
    Blob(&'a [u8]),
}

/// A row's cells in [`COLUMNS`] order.
pub(crate) type Cells<'a> = [Cell<'a>; COLUMNS.len()];

const SEQ: usize = 0;
const FORMAT: usize = 1;
const TIME: usize = 2;
const PRINCIPAL: usize = 5;
const SCOPES: usize = 10;
const RECORDS: usize = 11;
const OUTCOME: usize = 12;
const EVENT: usize = 13;
const PREV_HASH: usize = 14;
const HASH: usize = 15;

/// What a hashed column must hold for the fast road.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// An integer.
    Int,
    /// [`FORMAT_VERSION`].
    Format,
    /// Text.
    Text,
    /// Text or `NULL`.
    OptText,
    /// An [`super::Outcome`]'s name.
    Outcome,
    /// The canonical JSON of the scopes.
    Scopes,
    /// The canonical JSON of the touched records.
    Records,
    /// The canonical JSON of the event.
    Event,
}

/// Declares [`CANONICAL_ORDER`] and [`write_members`] from one list, so that the writer is
/// unrolled member by member (each prefix a constant, each column's kind known) and cannot
/// drift from the table the tests check.
macro_rules! canonical_order {
    ($(($prefix:literal, $column:expr, $kind:expr)),* $(,)?) => {
        /// The hashed members in canonical (sorted) order: the text before the value
        /// (separator and key), the column, what it must hold. Every column but `hash`.
        #[cfg_attr(not(test), allow(dead_code))]
        const CANONICAL_ORDER: [(&str, usize, Kind); COLUMNS.len() - 1] =
            [$(($prefix, $column, $kind)),*];

        /// Writes every member of [`CANONICAL_ORDER`] (see [`write_row`]).
        fn write_members(
            cells: &Cells<'_>,
            out: &mut Vec<u8>,
            refs: &mut Vec<RefRanges>,
        ) -> bool {
            $(
                out.extend_from_slice($prefix.as_bytes());
                if !write_member(cells[$column], $kind, out, refs) {
                    return false;
                }
            )*
            true
        }
    };
}

canonical_order![
    ("{\"account_id\":", 7, Kind::OptText),
    (",\"connector\":", 6, Kind::OptText),
    (",\"event\":", EVENT, Kind::Event),
    (",\"format\":", FORMAT, Kind::Format),
    (",\"grant_id\":", 9, Kind::OptText),
    (",\"outcome\":", OUTCOME, Kind::Outcome),
    (",\"prev_hash\":", PREV_HASH, Kind::Text),
    (",\"principal\":", PRINCIPAL, Kind::Text),
    (",\"records\":", RECORDS, Kind::Records),
    (",\"run_id\":", 3, Kind::OptText),
    (",\"scopes\":", SCOPES, Kind::Scopes),
    (",\"seq\":", SEQ, Kind::Int),
    (",\"step_id\":", 4, Kind::OptText),
    (",\"time_unix_ms\":", TIME, Kind::Int),
    (",\"upstream_subject\":", 8, Kind::OptText),
];

/// The record object of a row, faithful to what is stored (an edited column shows as edited):
/// JSON columns parsed when they parse, text as strings, a blob as `x'…'` hex text.
pub(crate) fn cells_to_value(cells: &Cells<'_>) -> Value {
    let mut map = serde_json::Map::new();
    for (cell, name) in cells.iter().zip(COLUMNS) {
        let value = match *cell {
            Cell::Null => Value::Null,
            Cell::Int(i) => Value::from(i),
            Cell::Real(f) => serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number),
            Cell::Text(bytes) => text_value(String::from_utf8_lossy(bytes).into_owned(), name),
            Cell::Blob(bytes) => {
                let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
                Value::String(format!("x'{hex}'"))
            }
        };
        map.insert(name.to_owned(), value);
    }
    Value::Object(map)
}

/// The row's `seq`, `prev_hash` and `hash` when they have the types a record's have.
pub(crate) fn chain_fields<'a>(cells: &Cells<'a>) -> Option<(u64, &'a [u8], &'a [u8])> {
    match (cells[SEQ], cells[PREV_HASH], cells[HASH]) {
        (Cell::Int(seq), Cell::Text(prev), Cell::Text(hash)) => {
            Some((u64::try_from(seq).ok()?, prev, hash))
        }
        _ => None,
    }
}

/// The stored `records` column (when it is text).
pub(crate) fn records_text<'a>(cells: &Cells<'a>) -> &'a [u8] {
    match cells[RECORDS] {
        Cell::Text(bytes) => bytes,
        _ => &[],
    }
}

/// Writes the canonical form of the row's record (all members but `hash`) into `out`, from the
/// columns as stored, when every column certainly holds what a record of this format holds
/// (so that the record-object road would read the row as that record, with that canonical
/// form); fills `refs` with the touched records' ranges in [`records_text`]. `false` when not
/// sure: the caller takes the record-object road.
pub(crate) fn write_row(cells: &Cells<'_>, out: &mut Vec<u8>, refs: &mut Vec<RefRanges>) -> bool {
    out.clear();
    if !write_members(cells, out, refs) {
        return false;
    }
    out.push(b'}');
    // The row's text is what the record-object road reads only if it is UTF-8 (that road
    // reads invalid bytes as U+FFFD). Every column's bytes sit between ASCII bytes here, so the
    // whole is UTF-8 exactly when each column is: one check for the row (all ASCII, the usual
    // case, is the quicker test).
    is_ascii(out) || std::str::from_utf8(out).is_ok()
}

/// Whether every byte of `b` is ASCII: all bytes or'ed together eight at a time, without a
/// branch per byte or per word (rows are nearly always ASCII).
fn is_ascii(b: &[u8]) -> bool {
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    let (words, tail) = b.as_chunks::<8>();
    let words = words.iter().fold(0, |acc, w| acc | u64::from_ne_bytes(*w));
    let tail = tail.iter().fold(0, |acc, &c| acc | c);
    words & HIGH == 0 && tail.is_ascii()
}

/// Writes one member's value (see [`write_row`]); `false` when not sure.
#[inline(always)]
fn write_member(cell: Cell<'_>, kind: Kind, out: &mut Vec<u8>, refs: &mut Vec<RefRanges>) -> bool {
    match (cell, kind) {
        (Cell::Null, Kind::OptText) => {
            out.extend_from_slice(b"null");
            true
        }
        (Cell::Int(v), Kind::Int) => {
            write_int(v, out);
            true
        }
        (Cell::Int(v), Kind::Format) if v == i64::from(FORMAT_VERSION) => {
            write_int(v, out);
            true
        }
        (Cell::Text(bytes), Kind::Text | Kind::OptText) => {
            write_text(bytes, out);
            true
        }
        (Cell::Text(bytes), Kind::Outcome) => match bytes {
            b"attempted" | b"succeeded" | b"failed" | b"info" => {
                out.push(b'"');
                out.extend_from_slice(bytes);
                out.push(b'"');
                true
            }
            _ => false,
        },
        (Cell::Text(bytes), Kind::Scopes | Kind::Records | Kind::Event) => {
            let typed = match kind {
                Kind::Scopes => typed_text::scopes(bytes),
                Kind::Records => typed_text::records(bytes, refs),
                _ => typed_text::event(bytes),
            };
            out.extend_from_slice(bytes);
            typed
        }
        _ => false,
    }
}

/// Appends `s` as a canonical JSON string, as [`write_string_bytes`] does: between quotes as
/// it is when no byte of it is escaped (nearly always), else escaped.
#[inline(always)]
fn write_text(s: &[u8], out: &mut Vec<u8>) {
    if has_escaped(s) {
        write_string_bytes(s, out);
    } else {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s);
        out.push(b'"');
    }
}

/// Whether a byte of `s` is one a canonical JSON string escapes (a control, `"` or `\\`):
/// [`first_escaped`]`(s).is_some()`, with the same test of a word ([`escapes_in`]), but every
/// word tested and the results or'ed, without a branch per word.
#[inline(always)]
fn has_escaped(s: &[u8]) -> bool {
    let (words, _) = s.as_chunks::<8>();
    let found = words
        .iter()
        .fold(0, |acc, w| acc | escapes_in(u64::from_ne_bytes(*w)));
    found | escapes_in(last_word(s)) != 0
}

/// Appends `s` as a canonical JSON string (see [`write_string`]), byte for byte: bytes that
/// are not UTF-8 are copied as they are (the caller checks).
fn write_string_bytes(s: &[u8], out: &mut Vec<u8>) {
    out.reserve(s.len() + 2);
    out.push(b'"');
    let mut rest = s;
    while let Some(i) = first_escaped(rest) {
        out.extend_from_slice(&rest[..i]);
        match rest[i] {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            0x08 => out.extend_from_slice(b"\\b"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            0x0c => out.extend_from_slice(b"\\f"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 0xf)]);
            }
        }
        rest = &rest[i + 1..];
    }
    out.extend_from_slice(rest);
    out.push(b'"');
}

/// `bytes` in lowercase hexadecimal (as [`blake3::Hash::to_hex`] writes a hash).
pub(crate) fn hex(bytes: &[u8; 32]) -> [u8; 64] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0; 64];
    for (pair, &b) in out.as_chunks_mut::<2>().0.iter_mut().zip(bytes) {
        *pair = [DIGITS[usize::from(b >> 4)], DIGITS[usize::from(b & 0xf)]];
    }
    out
}

/// `v` in decimal, written into `buf`.
pub(crate) fn itoa(v: i64, buf: &mut [u8; 20]) -> &str {
    let at = digits(v, buf);
    std::str::from_utf8(&buf[at..]).unwrap_or("0")
}

/// Appends `v` in decimal.
#[inline]
fn write_int(v: i64, out: &mut Vec<u8>) {
    let mut buf = [0; 20];
    let at = digits(v, &mut buf);
    out.extend_from_slice(&buf[at..]);
}

/// Writes `v` in decimal at the end of `buf`, two digits at a time; returns where it starts.
fn digits(v: i64, buf: &mut [u8; 20]) -> usize {
    const PAIRS: &[u8; 200] = b"\
        0001020304050607080910111213141516171819\
        2021222324252627282930313233343536373839\
        4041424344454647484950515253545556575859\
        6061626364656667686970717273747576777879\
        8081828384858687888990919293949596979899";
    let pair = |n: u64| {
        let i = (n as usize) * 2;
        [PAIRS[i], PAIRS[i + 1]]
    };
    let mut n = v.unsigned_abs();
    let mut at = buf.len();
    while n >= 100 {
        at -= 2;
        buf[at..at + 2].copy_from_slice(&pair(n % 100));
        n /= 100;
    }
    if n >= 10 {
        at -= 2;
        buf[at..at + 2].copy_from_slice(&pair(n));
    } else {
        at -= 1;
        buf[at] = b'0' + n as u8;
    }
    if v < 0 {
        at -= 1;
        buf[at] = b'-';
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_order_is_every_column_but_hash_sorted() {
        let mut names: Vec<&str> = COLUMNS.iter().copied().filter(|c| *c != "hash").collect();
        names.sort_unstable();
        for (i, (prefix, column, _)) in CANONICAL_ORDER.into_iter().enumerate() {
            let separator = if i == 0 { "{" } else { "," };
            assert_eq!(prefix, format!("{separator}\"{}\":", names[i]));
            assert_eq!(COLUMNS[column], names[i]);
        }
        let json: Vec<&str> = CANONICAL_ORDER
            .iter()
            .filter(|(_, _, kind)| matches!(kind, Kind::Scopes | Kind::Records | Kind::Event))
            .map(|(_, column, _)| COLUMNS[*column])
            .collect();
        assert_eq!(json.len(), crate::audit::rows::JSON_COLUMNS.len());
        assert!(
            json.iter()
                .all(|c| crate::audit::rows::JSON_COLUMNS.contains(c))
        );
        assert_eq!(
            (COLUMNS[SEQ], COLUMNS[PREV_HASH], COLUMNS[HASH]),
            ("seq", "prev_hash", "hash")
        );
        for i in CANONICAL_ORDER
            .iter()
            .filter(|(_, _, kind)| *kind == Kind::OptText)
            .map(|(_, column, _)| *column)
        {
            assert!(
                [
                    "run_id",
                    "step_id",
                    "connector",
                    "account_id",
                    "upstream_subject",
                    "grant_id"
                ]
                .contains(&COLUMNS[i])
            );
        }
    }

    #[test]
    fn byte_strings_are_escaped_as_strings_are() {
        for s in [
            "",
            "plain",
            "q\"b\\c\u{8}\t\n\u{c}\r\u{0}\u{1f}\u{7f}",
            "é\u{2028}😀",
        ] {
            let mut text = String::new();
            crate::audit::chain_hash::write_string(s, &mut text);
            let mut bytes = Vec::new();
            write_string_bytes(s.as_bytes(), &mut bytes);
            assert_eq!(bytes, text.as_bytes());
        }
    }

    /// Every byte value at every place of strings of 0 to 25 bytes, over several
    /// backgrounds: `has_escaped` says what `first_escaped` finds, and `write_text` writes what
    /// `write_string_bytes` writes.
    #[test]
    fn has_escaped_sees_every_escaped_byte_wherever_it_is() {
        for background in [b'a', 0x20, b'#', b']', 0x80, 0xa0, 0xdc, 0xff] {
            for len in 0..26 {
                let plain = vec![background; len];
                assert!(!has_escaped(&plain));
                for at in 0..len {
                    for b in 0..=255u8 {
                        let mut s = plain.clone();
                        s[at] = b;
                        assert_eq!(has_escaped(&s), first_escaped(&s).is_some(), "{s:?}");
                        let (mut fast, mut slow) = (b"x".to_vec(), b"x".to_vec());
                        write_text(&s, &mut fast);
                        write_string_bytes(&s, &mut slow);
                        assert_eq!(fast, slow, "{s:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn hex_is_blake3s_hex() {
        for input in [&b""[..], b"a", b"record"] {
            let hash = blake3::hash(input);
            assert_eq!(&hex(hash.as_bytes())[..], hash.to_hex().as_bytes());
        }
    }

    #[test]
    fn itoa_writes_decimal() {
        let mut values = vec![0, 7, -7, 1234567890123, i64::MIN, i64::MAX, i64::MIN + 1];
        for p in 0..19 {
            let t = 10i64.pow(p);
            values.extend([t - 1, t, t + 1, -t + 1, -t, -t - 1]);
        }
        values.extend((0..1000).map(|i| i * 7919 - 3000));
        for v in values {
            assert_eq!(itoa(v, &mut [0; 20]), v.to_string());
            let mut out = b"x".to_vec();
            write_int(v, &mut out);
            assert_eq!(out, format!("x{v}").into_bytes());
        }
    }

    #[test]
    fn is_ascii_looks_at_every_byte() {
        for len in 0..40 {
            let plain = vec![b'a'; len];
            assert!(is_ascii(&plain));
            for at in 0..len {
                for b in [0x80, 0xc3, 0xff, 0x7f, 0] {
                    let mut s = plain.clone();
                    s[at] = b;
                    assert_eq!(is_ascii(&s), s.is_ascii(), "{s:?}");
                }
            }
        }
    }
}
