//! Whether a stored JSON column (`scopes`, `records`, `event`) is the canonical form (see
//! [`super::canonical_json`]) of a value of its record type, checked on the text itself in one
//! pass, without parsing it into values.
//!
//! Conservative like [`super::canonical_text`]: `true` means the text is canonical *and*
//! deserializes as the column's type (`Vec<String>`, `Vec<RecordRef>`, [`AuditEvent`]); `false`
//! means "not sure" (an unknown event type or member, a missing optional member, a string with
//! escapes where a name is compared, a number out of range, …) and the caller takes the road
//! through `serde_json`, which decides and says what is wrong.
//!
//! [`AuditEvent`]: super::AuditEvent

use super::canonical_text::{string, value};

/// What an event member holds, as its Rust type.
#[derive(Clone, Copy, Debug)]
enum Ty {
    /// `String`.
    Str,
    /// `bool`.
    Bool,
    /// `u16`.
    U16,
    /// `u32`.
    U32,
    /// `u64`.
    U64,
    /// `i64`.
    I64,
    /// `Vec<String>`.
    Strs,
    /// `Effect`.
    Effect,
    /// `AlertSeverity`.
    Severity,
    /// `PreflightSummary`.
    Preflight,
    /// `Option<String>`.
    OptStr,
    /// `Option<u16>`.
    OptU16,
    /// `Option<u64>`.
    OptU64,
    /// `Option<i64>`.
    OptI64,
}

/// One member of an event variant: its name, type and whether it may be absent (only the
/// members serialized with `skip_serializing_if`).
#[derive(Clone, Copy, Debug)]
struct Field {
    /// The member's name (the tests check `key` and `after_type` against it).
    #[cfg_attr(not(test), allow(dead_code))]
    name: &'static str,
    /// `"name":`, as the text spells the key.
    key: &'static [u8],
    /// Whether the name sorts after `type` (so the member follows the `type` tag).
    after_type: bool,
    ty: Ty,
    may_be_absent: bool,
}

impl Field {
    const fn new(name: &'static str, key: &'static str, ty: Ty, may_be_absent: bool) -> Self {
        Self {
            name,
            key: key.as_bytes(),
            after_type: sorts_after(name.as_bytes(), b"type"),
            ty,
            may_be_absent,
        }
    }
}

/// Whether `a` sorts after `b` (byte order, as `str`'s `>`), at compile time.
const fn sorts_after(a: &[u8], b: &[u8]) -> bool {
    let mut i = 0;
    while i < a.len() && i < b.len() {
        if a[i] != b[i] {
            return a[i] > b[i];
        }
        i += 1;
    }
    a.len() > b.len()
}

/// A member that is always present.
macro_rules! f {
    ($name:literal, $ty:expr) => {
        Field::new($name, concat!("\"", $name, "\":"), $ty, false)
    };
}

/// A member that may be absent.
macro_rules! absent_ok {
    ($name:literal, $ty:expr) => {
        Field::new($name, concat!("\"", $name, "\":"), $ty, true)
    };
}

use Ty::*;

/// Every event variant by its `type` tag, with its members (but `type`) in canonical order.
/// A variant missing here is only slower to verify (the `serde_json` road).
const EVENTS: &[(&str, &[Field])] = &[
    (
        "run_started",
        &[
            f!("chain", Str),
            f!("chain_version", Str),
            f!("preflight", Preflight),
        ],
    ),
    (
        "preflight_refused",
        &[
            f!("chain", Str),
            f!("connected", Bool),
            f!("missing_scopes", Strs),
        ],
    ),
    (
        "step_attempt",
        &[
            f!("attempt", U32),
            f!("effect", Effect),
            f!("idempotency_key", OptStr),
            f!("step", Str),
        ],
    ),
    (
        "http_attempt",
        &[
            f!("failure_class", OptStr),
            f!("http_attempt", U32),
            f!("method", Str),
            f!("status", U16),
            f!("step", Str),
            f!("wait_ms", OptU64),
        ],
    ),
    (
        "step_outcome",
        &[
            f!("attempt", U32),
            f!("detail", OptStr),
            f!("effect", Effect),
            f!("failure_class", OptStr),
            f!("step", Str),
        ],
    ),
    (
        "compensation_attempt",
        &[
            f!("attempt", U32),
            f!("compensates_step_id", Str),
            f!("compensator", Str),
        ],
    ),
    (
        "compensation_outcome",
        &[
            f!("attempt", U32),
            f!("compensates_step_id", Str),
            f!("compensator", Str),
            f!("detail", OptStr),
            f!("failure_class", OptStr),
        ],
    ),
    (
        "suspended",
        &[
            f!("failure_class", OptStr),
            f!("missing_scopes", Strs),
            f!("reason", Str),
        ],
    ),
    ("resumed", &[f!("reason", Str)]),
    (
        "handoff",
        &[
            f!("child_chain", Str),
            f!("child_principal", Str),
            f!("child_run_id", Str),
            f!("reason", Str),
        ],
    ),
    (
        "consent_completed",
        &[f!("reconsent", Bool), f!("requested_scopes", Strs)],
    ),
    (
        "token_refresh",
        &[
            absent_ok!("error_code", OptStr),
            f!("expires_at_unix_ms", OptI64),
            f!("failure_class", OptStr),
            absent_ok!("http_status", OptU16),
        ],
    ),
    (
        "consent_failed",
        &[f!("error_code", OptStr), f!("reason", Str)],
    ),
    ("account_removed", &[f!("reason", Str)]),
    (
        "operator_alert",
        &[f!("message", Str), f!("severity", Severity)],
    ),
    (
        "approval_requested",
        &[
            f!("approval_id", Str),
            f!("arguments_digest", Str),
            f!("expires_at_unix_ms", I64),
            f!("reason", Str),
            f!("step", Str),
        ],
    ),
    (
        "approval_decided",
        &[
            f!("approval_id", Str),
            f!("decided_by", Str),
            f!("decision", Str),
            f!("step", Str),
        ],
    ),
    ("run_finished", &[f!("state", Str)]),
];

/// Whether `b` is the canonical form of an [`super::AuditEvent`].
///
/// The variant is guessed from the last `"type":"…"` in the text; then one pass reads the
/// members that variant has, `type` among them, in canonical order, each key spelled exactly
/// and each value canonical and of its member's type. A wrong guess only fails that pass.
pub(crate) fn event(b: &[u8]) -> bool {
    let Some(at) = type_tag_at(b) else {
        return false;
    };
    let rest = &b[at + TYPE_KEY.len()..];
    let Some(tag_len) = rest.iter().position(|&c| c == b'"') else {
        return false;
    };
    let tag = &rest[..tag_len];
    let Some((_, fields)) = EVENTS.iter().find(|(name, _)| name.as_bytes() == tag) else {
        return false;
    };
    // The members in canonical order: `type` goes before the first member named after it.
    let type_at = fields
        .iter()
        .position(|f| f.after_type)
        .unwrap_or(fields.len());
    let (before, after) = fields.split_at(type_at);
    if b.first() != Some(&b'{') {
        return false;
    }
    let mut pos = 1;
    let mut first = true;
    for field in before {
        if !member(b, &mut pos, &mut first, field) {
            return false;
        }
    }
    // `"type":"<tag>"`, the tag read above.
    if !(key(b, &mut pos, &mut first, br#""type":"#)
        && expect(b, &mut pos, b"\"")
        && expect(b, &mut pos, tag)
        && expect(b, &mut pos, b"\""))
    {
        return false;
    }
    for field in after {
        if !member(b, &mut pos, &mut first, field) {
            return false;
        }
    }
    pos + 1 == b.len() && b[pos] == b'}'
}

/// `"type":"`, the key of an event's tag and the quote that opens it.
const TYPE_KEY: &[u8] = br#""type":""#;

/// Where the last [`TYPE_KEY`] in `b` starts. Most events end with their tag (no member sorts
/// after `type`): when `b` ends with `"}` and the quote before that closes [`TYPE_KEY`], that
/// is the last one, found without a search from the end (any later one would need a quote
/// where that key has a letter).
fn type_tag_at(b: &[u8]) -> Option<usize> {
    if let Some(body) = b.strip_suffix(br#""}"#)
        && let Some(quote) = body.iter().rposition(|&c| c == b'"')
        && let Some(at) = quote.checked_sub(TYPE_KEY.len() - 1)
        && b[at..=quote] == *TYPE_KEY
    {
        return Some(at);
    }
    b.windows(TYPE_KEY.len()).rposition(|w| w == TYPE_KEY)
}

/// Reads the member `field` at `pos` (a separator unless `first`, its key, a canonical value
/// of its type); when it is not there, `true` without reading if it may be absent.
fn member(b: &[u8], pos: &mut usize, first: &mut bool, field: &Field) -> bool {
    let start = (*pos, *first);
    if !key(b, pos, first, field.key) {
        (*pos, *first) = start;
        return field.may_be_absent;
    }
    // The commonest types read straight as what they must be; the others as a canonical value,
    // then checked for their type.
    match field.ty {
        Str => string(b, pos, false),
        OptStr => expect(b, pos, b"null") || string(b, pos, false),
        Effect => expect(b, pos, br#""read""#) || expect(b, pos, br#""write""#),
        ty => {
            let begin = *pos;
            value(b, pos, 1) && holds(ty, &b[begin..*pos])
        }
    }
}

/// Reads `,` and `key` (`"name":`; without the comma when `first`, which it clears) at `pos`.
fn key(b: &[u8], pos: &mut usize, first: &mut bool, key: &[u8]) -> bool {
    if !*first && !expect(b, pos, b",") {
        return false;
    }
    *first = false;
    expect(b, pos, key)
}

/// Whether the canonical value `v` (checked canonical already) is of type `ty`.
fn holds(ty: Ty, v: &[u8]) -> bool {
    match ty {
        Str => v.first() == Some(&b'"'),
        Bool => v == b"true" || v == b"false",
        U16 => unsigned(v).is_some_and(|n| n <= u64::from(u16::MAX)),
        U32 => unsigned(v).is_some_and(|n| n <= u64::from(u32::MAX)),
        U64 => unsigned(v).is_some(),
        // A canonical number is an integer of at most 18 digits.
        I64 => v.first().is_some_and(|&c| c == b'-' || c.is_ascii_digit()),
        Strs => whole(v, strings),
        Effect => v == br#""read""# || v == br#""write""#,
        Severity => v == br#""warning""# || v == br#""critical""#,
        Preflight => whole(v, preflight),
        OptStr => v == b"null" || holds(Str, v),
        OptU16 => v == b"null" || holds(U16, v),
        OptU64 => v == b"null" || holds(U64, v),
        OptI64 => v == b"null" || holds(I64, v),
    }
}

/// A canonical non-negative integer's value.
fn unsigned(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 {
        return None;
    }
    v.iter().try_fold(0u64, |n, &c| {
        c.is_ascii_digit().then(|| n * 10 + u64::from(c - b'0'))
    })
}

/// Whether `check` reads all of `v`.
fn whole(v: &[u8], check: fn(&[u8], &mut usize) -> bool) -> bool {
    let mut pos = 0;
    check(v, &mut pos) && pos == v.len()
}

/// Reads `lit` at `pos`.
#[inline]
fn expect(b: &[u8], pos: &mut usize, lit: &[u8]) -> bool {
    match b.get(*pos..).and_then(|rest| rest.get(..lit.len())) {
        Some(here) if same_bytes(here, lit) => {
            *pos += lit.len();
            true
        }
        _ => false,
    }
}

/// `a == b` for slices of the same length, without a call for the short ones (keys and
/// literals): their first and last bytes compared as overlapping words.
#[inline]
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    fn ends<const N: usize>(s: &[u8]) -> ([u8; N], [u8; N]) {
        match (s.first_chunk::<N>(), s.last_chunk::<N>()) {
            (Some(first), Some(last)) => (*first, *last),
            _ => ([0; N], [0; N]),
        }
    }
    match a.len() {
        _ if a.len() != b.len() => false,
        0 => true,
        1..=3 => {
            a[0] == b[0] && a[a.len() / 2] == b[b.len() / 2] && a[a.len() - 1] == b[b.len() - 1]
        }
        4..=7 => ends::<4>(a) == ends::<4>(b),
        8..=16 => ends::<8>(a) == ends::<8>(b),
        _ => a == b,
    }
}

/// Reads `[item,item,…]`.
fn list(b: &[u8], pos: &mut usize, item: impl Fn(&[u8], &mut usize) -> bool) -> bool {
    if !expect(b, pos, b"[") {
        return false;
    }
    if expect(b, pos, b"]") {
        return true;
    }
    loop {
        if !item(b, pos) {
            return false;
        }
        if expect(b, pos, b"]") {
            return true;
        }
        if !expect(b, pos, b",") {
            return false;
        }
    }
}

/// Reads a canonical array of strings (`Vec<String>`).
fn strings(b: &[u8], pos: &mut usize) -> bool {
    list(b, pos, |b, pos| string(b, pos, false))
}

/// Reads `true` or `false`.
fn boolean(b: &[u8], pos: &mut usize) -> bool {
    expect(b, pos, b"true") || expect(b, pos, b"false")
}

/// Reads a `PreflightSummary`.
fn preflight(b: &[u8], pos: &mut usize) -> bool {
    expect(b, pos, br#"{"missing":"#)
        && list(b, pos, connector_scopes)
        && expect(b, pos, br#","passed":"#)
        && boolean(b, pos)
        && expect(b, pos, br#","unused":"#)
        && list(b, pos, connector_scopes)
        && expect(b, pos, b"}")
}

/// Reads a `ConnectorScopes`.
fn connector_scopes(b: &[u8], pos: &mut usize) -> bool {
    expect(b, pos, br#"{"connector":"#)
        && string(b, pos, false)
        && expect(b, pos, br#","scopes":"#)
        && strings(b, pos)
        && expect(b, pos, b"}")
}

/// Whether `b` is the canonical form of a `Vec<String>` (the `scopes` column).
pub(crate) fn scopes(b: &[u8]) -> bool {
    whole(b, strings)
}

/// The byte ranges in the `records` column of one touched record's `connector`, `kind` and
/// `id` (string contents, without quotes).
pub(crate) type RefRanges = [(usize, usize); 3];

/// Whether `b` is the canonical form of a `Vec<RecordRef>` (the `records` column); fills
/// `refs` with each record's string ranges.
pub(crate) fn records(b: &[u8], refs: &mut Vec<RefRanges>) -> bool {
    refs.clear();
    let mut pos = 0;
    let field = |b: &[u8], pos: &mut usize, lit: &[u8]| -> Option<(usize, usize)> {
        if !expect(b, pos, lit) {
            return None;
        }
        let start = *pos + 1;
        string(b, pos, false).then(|| (start, *pos - 1))
    };
    let mut one = |b: &[u8], pos: &mut usize| -> bool {
        let Some(connector) = field(b, pos, br#"{"connector":"#) else {
            return false;
        };
        let Some(id) = field(b, pos, br#","id":"#) else {
            return false;
        };
        let Some(kind) = field(b, pos, br#","kind":"#) else {
            return false;
        };
        refs.push([connector, kind, id]);
        expect(b, pos, b"}")
    };
    if !expect(b, &mut pos, b"[") {
        return false;
    }
    if expect(b, &mut pos, b"]") {
        return pos == b.len();
    }
    loop {
        if !one(b, &mut pos) {
            return false;
        }
        if expect(b, &mut pos, b"]") {
            return pos == b.len();
        }
        if !expect(b, &mut pos, b",") {
            return false;
        }
    }
}

#[cfg(test)]
mod tests;
