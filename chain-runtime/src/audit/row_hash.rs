//! A stored `audit_records` row as its columns ([`Cell`]s), and its canonical form written
//! straight from them: the fast road of verification, without a `serde_json::Value` per row.
//!
//! The fast road only ever says "this row is a good record" for a row the record-object road
//! ([`super::verify::ChainVerifier::push`] over [`cells_to_value`]) accepts too, with the same
//! hash; whenever it is not sure (an edited column, an unexpected type, a JSON column that is
//! not stored in canonical form, as written by older versions) the caller takes the
//! record-object road, which also says what is wrong.

use serde_json::Value;

use super::canonical_text::is_canonical;
use super::chain_hash::write_string;
use super::record::{AuditEvent, FORMAT_VERSION, RecordRef};
use super::rows::{COLUMNS, JSON_COLUMNS, RefKey, text_value};

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
/// The columns that hold optional text.
const OPTIONAL_TEXT: [usize; 6] = [3, 4, 6, 7, 8, 9];

/// The hashed members in canonical (sorted) order, with their column index: every column but
/// `hash`.
const CANONICAL_ORDER: [(&str, usize); COLUMNS.len() - 1] = [
    ("account_id", 7),
    ("connector", 6),
    ("event", EVENT),
    ("format", FORMAT),
    ("grant_id", 9),
    ("outcome", OUTCOME),
    ("prev_hash", PREV_HASH),
    ("principal", PRINCIPAL),
    ("records", RECORDS),
    ("run_id", 3),
    ("scopes", SCOPES),
    ("seq", SEQ),
    ("step_id", 4),
    ("time_unix_ms", TIME),
    ("upstream_subject", 8),
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

/// Writes the canonical form of the row's record (all members but `hash`) into `out`, from the
/// columns as stored; `false` when a column needs the record-object road.
pub(crate) fn write_row(cells: &Cells<'_>, out: &mut String) -> bool {
    out.clear();
    out.push('{');
    for (i, (key, column)) in CANONICAL_ORDER.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('"');
        out.push_str(key);
        out.push_str("\":");
        match cells[*column] {
            Cell::Null => out.push_str("null"),
            Cell::Int(v) => out.push_str(itoa(v, &mut [0; 20])),
            Cell::Text(bytes) => {
                let Ok(text) = std::str::from_utf8(bytes) else {
                    return false;
                };
                if JSON_COLUMNS.contains(key) {
                    if !is_canonical(text) {
                        return false;
                    }
                    out.push_str(text);
                } else {
                    write_string(text, out);
                }
            }
            Cell::Real(_) | Cell::Blob(_) => return false,
        }
    }
    out.push('}');
    true
}

/// `v` in decimal, written into `buf`.
fn itoa(v: i64, buf: &mut [u8; 20]) -> &str {
    let mut n = v.unsigned_abs();
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    if v < 0 {
        at -= 1;
        buf[at] = b'-';
    }
    std::str::from_utf8(&buf[at..]).unwrap_or("0")
}

fn text<'a>(cell: Cell<'a>) -> Option<&'a str> {
    match cell {
        Cell::Text(bytes) => std::str::from_utf8(bytes).ok(),
        _ => None,
    }
}

/// When the row's columns read as an [`super::AuditRecord`] of this crate's format, its
/// touched records as sorted index keys; `None` when not (or not sure).
pub(crate) fn well_typed(cells: &Cells<'_>) -> Option<Vec<RefKey>> {
    if !matches!(cells[FORMAT], Cell::Int(f) if f == i64::from(FORMAT_VERSION))
        || !matches!(cells[TIME], Cell::Int(_))
        || !OPTIONAL_TEXT
            .iter()
            .all(|&i| matches!(cells[i], Cell::Null | Cell::Text(_)))
        || !matches!(
            text(cells[OUTCOME])?,
            "attempted" | "succeeded" | "failed" | "info"
        )
    {
        return None;
    }
    text(cells[PRINCIPAL])?;
    serde_json::from_str::<Vec<String>>(text(cells[SCOPES])?).ok()?;
    serde_json::from_str::<AuditEvent>(text(cells[EVENT])?).ok()?;
    let records: Vec<RecordRef> = serde_json::from_str(text(cells[RECORDS])?).ok()?;
    let mut refs: Vec<RefKey> = records
        .into_iter()
        .map(|r| (r.connector, r.kind, r.id))
        .collect();
    refs.sort();
    Some(refs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_order_is_every_column_but_hash_sorted() {
        let mut names: Vec<&str> = COLUMNS.iter().copied().filter(|c| *c != "hash").collect();
        names.sort_unstable();
        let order: Vec<&str> = CANONICAL_ORDER.iter().map(|(k, _)| *k).collect();
        assert_eq!(order, names);
        for (key, column) in CANONICAL_ORDER {
            assert_eq!(COLUMNS[column], key);
        }
        assert_eq!(
            (COLUMNS[SEQ], COLUMNS[PREV_HASH], COLUMNS[HASH]),
            ("seq", "prev_hash", "hash")
        );
        for i in OPTIONAL_TEXT {
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
    fn itoa_writes_decimal() {
        for v in [0, 7, -7, 1234567890123, i64::MIN, i64::MAX] {
            assert_eq!(itoa(v, &mut [0; 20]), v.to_string());
        }
    }
}
