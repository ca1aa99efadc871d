//! Generic body heuristics for providers without a table of their own (the standards path),
//! run after the provider's quirks and any `WWW-Authenticate` challenge and before the status
//! code decides. They are conservative: a body is a scope error only when
//!
//! * a code field (`error`, `code`, `error_code`, `errorCode`, `type`, `reason`, `status`, at the
//!   top level, inside an `error` object, or in the elements of an `errors`/`details` array)
//!   holds a recognised scope-error code (`insufficient_scope`, `missing_scope`,
//!   `MISSING_SCOPES`, `ACCESS_TOKEN_SCOPE_INSUFFICIENT`, … compared without case and
//!   punctuation), or
//! * a message field (`message`, `error_description`, `detail`, …, or the text of a non-JSON
//!   body) says so in one of a few fixed phrases (`missing scope`, `insufficient scope`,
//!   `does not have the required scope`, …), or has the form `… scope… expected any of: a, b`.
//!
//! A body that merely mentions a scope is not a scope error. The needed scopes come from the
//! usual fields (`required_scope(s)`, `needed`, `missing_scopes`, `scope(s)`; a string, a list,
//! or lists nested in an `errors` array) or from the `expected any of:` list (then any one of
//! them suffices).
//!
//! Every look is bounded: a fixed set of keys two levels deep, at most [`MAX_ELEMENTS`] array
//! elements, messages cut at [`MAX_MESSAGE`] bytes, and the JSON parse and text scan limits of
//! the module. The work is linear in the body.

use std::time::{Duration, SystemTime};

use serde_json::{Map, Value};

use super::{Classification, FailureClass, Response, ScopeMode, push_scope, split_scopes};

/// Array elements looked at in an `errors`/`details` array (and in a top-level array).
const MAX_ELEMENTS: usize = 16;
/// Longest message searched for a phrase.
const MAX_MESSAGE: usize = 4 * 1024;
/// Deepest list nesting read for scopes.
const MAX_SCOPE_DEPTH: usize = 3;
/// An epoch-second reset header at or above this value is an instant; below, a delay.
const EPOCH_THRESHOLD: u64 = 1_000_000_000;
/// Reset values above this are garbage and ignored (year 5138).
const MAX_RESET: u64 = 100_000_000_000;

const CODE_KEYS: &[&str] = &[
    "error",
    "code",
    "error_code",
    "errorCode",
    "type",
    "reason",
    "status",
];
const MESSAGE_KEYS: &[&str] = &[
    "message",
    "error_description",
    "errorMessage",
    "error_message",
    "detail",
    "description",
    "title",
];
const SCOPE_KEYS: &[&str] = &[
    "required_scope",
    "required_scopes",
    "requiredScope",
    "requiredScopes",
    "needed_scopes",
    "needed",
    "missing_scopes",
    "missingScopes",
    "missing_scope",
    "scopes_required",
    "scope",
    "scopes",
];
/// Scope-error codes, lowercased with everything but letters dropped.
const SCOPE_CODES: &[&str] = &[
    "insufficientscope",
    "insufficientscopes",
    "missingscope",
    "missingscopes",
    "scopemissing",
    "scopesmissing",
    "missingrequiredscope",
    "missingrequiredscopes",
    "accesstokenscopeinsufficient",
    "scopeinsufficient",
    "insufficientoauthscope",
    "insufficientoauthscopes",
];
/// Message phrases that mean a missing scope (lowercase).
const SCOPE_PHRASES: &[&str] = &[
    "missing scope",
    "missing required scope",
    "missing the required scope",
    "insufficient scope",
    "insufficient_scope",
    "missing_scope",
    "scope is missing",
    "scopes are missing",
    "does not have the required scope",
    "lacks the required scope",
    "not granted the required scope",
    "requires the following scope",
];
/// The list form: `expected any of: a, b` (lowercase marker).
const ANY_OF: &str = "any of:";

/// The objects a body's error information lives in: the top level (or the elements of a
/// top-level array), an `error` object, and the elements of `errors`/`details` arrays.
fn error_objects(v: &Value) -> Vec<&Map<String, Value>> {
    let mut out: Vec<&Map<String, Value>> = Vec::new();
    let tops: Vec<&Map<String, Value>> = match v {
        Value::Object(o) => vec![o],
        Value::Array(a) => a
            .iter()
            .take(MAX_ELEMENTS)
            .filter_map(Value::as_object)
            .collect(),
        _ => Vec::new(),
    };
    fn arrays<'v>(o: &'v Map<String, Value>, out: &mut Vec<&'v Map<String, Value>>) {
        for key in ["errors", "details"] {
            if let Some(Value::Array(a)) = o.get(key) {
                out.extend(a.iter().take(MAX_ELEMENTS).filter_map(Value::as_object));
            }
        }
    }
    for top in tops {
        out.push(top);
        arrays(top, &mut out);
        if let Some(inner) = top.get("error").and_then(Value::as_object) {
            out.push(inner);
            arrays(inner, &mut out);
        }
    }
    out
}

fn normalized(code: &str) -> String {
    code.chars()
        .filter(char::is_ascii_alphabetic)
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// The first recognised scope-error code in a code field.
fn scope_code<'v>(objects: &[&'v Map<String, Value>]) -> Option<&'v str> {
    objects.iter().find_map(|o| {
        CODE_KEYS.iter().find_map(|k| {
            let code = o.get(*k)?.as_str()?;
            (code.len() <= 64 && SCOPE_CODES.contains(&normalized(code).as_str())).then_some(code)
        })
    })
}

/// The message fields, lowercased and cut.
fn messages(objects: &[&Map<String, Value>]) -> Vec<String> {
    objects
        .iter()
        .flat_map(|o| MESSAGE_KEYS.iter().filter_map(|k| o.get(*k)?.as_str()))
        .map(|m| m[..m.floor_char_boundary(MAX_MESSAGE)].to_ascii_lowercase())
        .collect()
}

/// The scopes after `any of:` in a message that speaks of scopes just before it.
fn any_of_scopes(message: &str) -> Option<Vec<String>> {
    let at = message.find(ANY_OF)?;
    let before = &message[message.floor_char_boundary(at.saturating_sub(80))..at];
    if !before.contains("scope") {
        return None;
    }
    let list = message[at + ANY_OF.len()..]
        .lines()
        .next()
        .unwrap_or_default();
    let mut out = Vec::new();
    for word in list.split(|c: char| c == ',' || c.is_whitespace()) {
        let word = word.trim_matches(|c: char| "[]()\"'`.;".contains(c));
        if !matches!(word, "" | "or" | "and") {
            push_scope(&mut out, word);
        }
    }
    (!out.is_empty()).then_some(out)
}

/// Scopes from the usual fields: strings (space/comma separated) or lists, nested lists too.
fn field_scopes(objects: &[&Map<String, Value>]) -> Vec<String> {
    fn collect(v: &Value, depth: usize, out: &mut Vec<String>) {
        match v {
            Value::String(s) => {
                for scope in split_scopes([s.as_str()]) {
                    push_scope(out, &scope);
                }
            }
            Value::Array(a) if depth < MAX_SCOPE_DEPTH => {
                for item in a.iter().take(super::MAX_SCOPES) {
                    collect(item, depth + 1, out);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    for o in objects {
        for key in SCOPE_KEYS {
            if let Some(v) = o.get(*key) {
                collect(v, 0, &mut out);
            }
        }
        if !out.is_empty() {
            break;
        }
    }
    out
}

/// A 4xx whose body says a scope is missing: [`FailureClass::InsufficientScope`] with the
/// scopes the body names (a 401 included: the token is valid, it just lacks the scope).
pub(super) fn scope_error(r: &Response<'_>) -> Option<Classification> {
    if !r.is_client_error() || r.status == 429 {
        return None;
    }
    let objects = r.json().map(error_objects).unwrap_or_default();
    let mut texts = messages(&objects);
    if r.json().is_none() {
        texts.push(r.text()[..r.text().floor_char_boundary(MAX_MESSAGE)].to_ascii_lowercase());
    }
    let code = scope_code(&objects);
    let any_of = texts.iter().find_map(|m| any_of_scopes(m));
    let phrase = texts
        .iter()
        .any(|m| SCOPE_PHRASES.iter().any(|p| m.contains(p)));
    if code.is_none() && any_of.is_none() && !phrase {
        return None;
    }
    let c = Classification::new(FailureClass::InsufficientScope)
        .code(code.unwrap_or("insufficient_scope"));
    let fields = field_scopes(&objects);
    Some(match (fields.is_empty(), any_of) {
        (false, _) => c.scopes(fields.iter().map(String::as_str), ScopeMode::AllOf),
        (true, Some(alternatives)) => {
            c.scopes(alternatives.iter().map(String::as_str), ScopeMode::AnyOf)
        }
        (true, None) => c,
    })
}

/// An epoch-seconds (or, below 2001, delta-seconds) reset from one of `names`: the instant to
/// retry at, or the delay. Garbage and absurd values are ignored.
pub(super) fn reset_from(
    r: &Response<'_>,
    names: &[&str],
) -> (Option<Duration>, Option<SystemTime>) {
    for name in names {
        let Some(v) = r.header(name) else { continue };
        let Ok(secs) = v.parse::<u64>() else { continue };
        if secs > MAX_RESET {
            continue;
        }
        if secs >= EPOCH_THRESHOLD {
            return (
                None,
                SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(secs)),
            );
        }
        return (Some(Duration::from_secs(secs)), None);
    }
    (None, None)
}

/// The usual reset headers: `X-Rate-Limit-Reset`, `X-RateLimit-Reset`, `RateLimit-Reset`.
pub(super) fn reset(r: &Response<'_>) -> (Option<Duration>, Option<SystemTime>) {
    reset_from(
        r,
        &["x-rate-limit-reset", "x-ratelimit-reset", "ratelimit-reset"],
    )
}
