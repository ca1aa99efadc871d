//! Recorded provider responses with their expected classification, as data: a fixture file is
//! JSON, and [`check_file`] / [`assert_file`] run one through the classifier.
//!
//! ```json
//! {
//!   "provider": "acme",
//!   "rules": { "code_pointers": ["/fault/kind"], "codes": { "ACME_SCOPE": "insufficient_scope" } },
//!   "cases": [
//!     {
//!       "name": "scope error named by a code",
//!       "kind": "api",
//!       "status": 403,
//!       "headers": [["content-type", "application/json"]],
//!       "body": { "error": "insufficient_scope", "required_scopes": ["read", "write"] },
//!       "expect": { "class": "insufficient_scope", "scopes": ["read", "write"], "code": "insufficient_scope" }
//!     }
//!   ]
//! }
//! ```
//!
//! * `provider` (file) names the provider for every case; a case may override it.
//! * `rules` (optional) is a [`RuleSet`] in its JSON form, applied to every case.
//! * `kind` is `api` (default) or `token_refresh`; `headers` a list of name/value pairs.
//! * `body`: a JSON string is sent as that text (use it for HTML, form bodies or broken JSON);
//!   any other JSON value is sent serialized. Absent means an empty body.
//! * `expect`: `class` is required; `scopes` (in order), `scope_mode`, `code` (`null` for none),
//!   `retry_after_secs`, `retry_at_epoch` and `scope_suspected` are checked when present.

use std::path::Path;
use std::time::{Duration, SystemTime};

use serde_json::Value;

use super::{Classification, FailureClass, RequestKind, RuleSet, ScopeMode, classify_with};

/// One fixture file.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FixtureFile {
    /// The provider name for every case.
    pub provider: String,
    /// Rules applied to every case.
    #[serde(default)]
    pub rules: Option<RuleSet>,
    /// The recorded responses.
    pub cases: Vec<Fixture>,
}

/// One recorded response and its expected classification.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fixture {
    /// A unique name, shown when the case fails.
    pub name: String,
    /// Overrides the file's provider.
    #[serde(default)]
    pub provider: Option<String>,
    /// The kind of request.
    #[serde(default)]
    pub kind: RequestKind,
    /// The HTTP status (0 for no response).
    pub status: u16,
    /// The response headers, in order.
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    /// The body: a string is raw text, anything else JSON.
    #[serde(default)]
    pub body: Option<Value>,
    /// What the classifier must answer.
    pub expect: Expectation,
}

/// The expected classification; absent fields are not checked.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expectation {
    /// The class.
    pub class: FailureClass,
    /// The needed scopes, in order.
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
    /// How to read them.
    #[serde(default)]
    pub scope_mode: Option<ScopeMode>,
    /// The error code (`null`: none).
    #[serde(default, deserialize_with = "present")]
    pub code: Option<Option<String>>,
    /// The `Retry-After` delay.
    #[serde(default)]
    pub retry_after_secs: Option<u64>,
    /// The retry instant, in epoch seconds.
    #[serde(default)]
    pub retry_at_epoch: Option<u64>,
    /// Whether a forbidden may hide a missing scope.
    #[serde(default)]
    pub scope_suspected: Option<bool>,
}

/// Distinguishes `"code": null` (expect none) from an absent `code` (not checked).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    <Option<String> as serde::Deserialize>::deserialize(d).map(Some)
}

/// Why a fixture file could not be run.
#[derive(Debug, thiserror::Error)]
pub enum FixtureError {
    /// The file cannot be read.
    #[error("cannot read fixture file `{path}`: {reason}")]
    Read {
        /// The path.
        path: String,
        /// Why.
        reason: String,
    },
    /// The file is not a fixture file.
    #[error("`{path}` is not a fixture file: {reason}")]
    Format {
        /// The path (or `<text>`).
        path: String,
        /// The parser's message.
        reason: String,
    },
    /// A case has an invalid header or a duplicate name.
    #[error("fixture `{case}`: {reason}")]
    Case {
        /// The case name.
        case: String,
        /// Why.
        reason: String,
    },
}

impl Fixture {
    fn headers(&self) -> Result<http::HeaderMap, FixtureError> {
        let mut map = http::HeaderMap::new();
        for (name, value) in &self.headers {
            let bad = |what: &str| FixtureError::Case {
                case: self.name.clone(),
                reason: format!("invalid header {what} `{name}`"),
            };
            let name_ = http::HeaderName::from_bytes(name.as_bytes()).map_err(|_| bad("name"))?;
            let value = http::HeaderValue::from_str(value).map_err(|_| bad("value for"))?;
            map.append(name_, value);
        }
        Ok(map)
    }

    fn body(&self) -> Vec<u8> {
        match &self.body {
            None => Vec::new(),
            Some(Value::String(text)) => text.as_bytes().to_vec(),
            Some(v) => v.to_string().into_bytes(),
        }
    }

    /// The mismatches between what the classifier says and what the case expects.
    fn mismatches(&self, c: &Classification) -> Vec<String> {
        let e = &self.expect;
        let mut out = Vec::new();
        let mut check = |what: &str, ok: bool, expected: String| {
            if !ok {
                out.push(format!(
                    "{}: {what} expected {expected}, got {c:?}",
                    self.name
                ));
            }
        };
        check("class", c.class == e.class, format!("{:?}", e.class));
        if let Some(scopes) = &e.scopes {
            check("scopes", &c.needed_scopes == scopes, format!("{scopes:?}"));
        }
        if let Some(mode) = e.scope_mode {
            check("scope_mode", c.scope_mode == mode, format!("{mode:?}"));
        }
        if let Some(code) = &e.code {
            check("code", &c.error_code == code, format!("{code:?}"));
        }
        if let Some(secs) = e.retry_after_secs {
            let want = Some(Duration::from_secs(secs));
            check("retry_after", c.retry_after == want, format!("{secs}s"));
        }
        if let Some(epoch) = e.retry_at_epoch {
            let want = SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(epoch));
            check("retry_at", c.retry_at == want, format!("epoch {epoch}"));
        }
        if let Some(s) = e.scope_suspected {
            check("scope_suspected", c.scope_suspected == s, format!("{s}"));
        }
        out
    }
}

/// Runs fixture-file text through the classifier; returns how many cases ran and every
/// mismatch (empty when all pass).
pub fn check_text(text: &str) -> Result<(usize, Vec<String>), FixtureError> {
    let file: FixtureFile = serde_json::from_str(text).map_err(|e| FixtureError::Format {
        path: "<text>".into(),
        reason: e.to_string(),
    })?;
    let mut names = std::collections::HashSet::new();
    let mut mismatches = Vec::new();
    for case in &file.cases {
        if !names.insert(case.name.as_str()) {
            return Err(FixtureError::Case {
                case: case.name.clone(),
                reason: "duplicate name".into(),
            });
        }
        let provider = case.provider.as_deref().unwrap_or(&file.provider);
        let c = classify_with(
            provider,
            file.rules.as_ref(),
            case.kind,
            case.status,
            &case.headers()?,
            &case.body(),
        );
        mismatches.extend(case.mismatches(&c));
    }
    Ok((file.cases.len(), mismatches))
}

/// Runs a fixture file through the classifier (see [`check_text`]).
pub fn check_file(path: impl AsRef<Path>) -> Result<(usize, Vec<String>), FixtureError> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|e| FixtureError::Read {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    check_text(&text).map_err(|e| match e {
        FixtureError::Format { reason, .. } => FixtureError::Format {
            path: path.display().to_string(),
            reason,
        },
        other => other,
    })
}

/// A test helper: runs a fixture file and panics listing every mismatch. Returns the number of
/// cases run.
///
/// ```no_run
/// chain_runtime::classify::fixtures::assert_file("tests/fixtures/classify/acme.json");
/// ```
#[allow(clippy::panic)]
pub fn assert_file(path: impl AsRef<Path>) -> usize {
    let path = path.as_ref();
    match check_file(path) {
        Ok((count, mismatches)) if mismatches.is_empty() => count,
        Ok((count, mismatches)) => panic!(
            "{} of {count} fixtures in {} failed:\n{}",
            mismatches.len(),
            path.display(),
            mismatches.join("\n")
        ),
        Err(e) => panic!("{e}"),
    }
}
