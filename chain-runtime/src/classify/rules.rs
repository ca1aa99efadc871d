//! User-defined classification rules: a provider's quirks as data, without forking the
//! classifier.
//!
//! A [`RuleSet`] says where a provider's error bodies keep their error code and their needed
//! scopes (JSON pointers, RFC 6901), which codes mean which [`FailureClass`] (separately for API
//! calls and the token endpoint), and which headers carry the rate-limit reset (epoch seconds,
//! or delta seconds below 10^9). Attach it to the connector's provider configuration; it runs
//! before everything else the classifier knows (see [`crate::classify`] for the order).
//!
//! Loaded from code ([`RuleSet::new`] with a [`RuleSpec`]), or from JSON or TOML text or files
//! ([`RuleSet::from_json`], [`RuleSet::from_toml`], [`RuleSet::from_file`]):
//!
//! ```toml
//! code_pointers = ["/fault/kind", "/errors/0/code"]
//! scope_pointers = ["/fault/needs"]
//! scope_mode = "any_of"
//! reset_headers = ["X-Acme-Reset"]
//!
//! [codes]
//! ACME_NEEDS_SCOPE = "insufficient_scope"
//! ACME_SLOW_DOWN = "rate_limited"
//! ACME_TOKEN_GONE = "grant_revoked"
//!
//! [token_codes]
//! dead_grant = "grant_revoked"
//! ```
//!
//! Every rule set is validated when it is built: a rule set that exists is well-formed.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

use serde_json::Value;

use super::{
    Classification, FailureClass, RequestKind, Response, ScopeMode, StepUp, heuristics,
    sanitized_code,
};

/// Most pointers or headers of each kind in a rule set.
pub const MAX_POINTERS: usize = 8;
/// Most codes in each code table of a rule set.
pub const MAX_CODES: usize = 256;
/// Longest JSON pointer accepted.
const MAX_POINTER_LEN: usize = 256;

/// The plain description of a rule set, as written in code or read from a file; turn it into a
/// [`RuleSet`] with [`RuleSet::new`].
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuleSpec {
    /// JSON pointers to the error code, tried in order (a string or an integer).
    pub code_pointers: Vec<String>,
    /// JSON pointers to the needed scopes (a string of space/comma-separated scopes, or a list).
    pub scope_pointers: Vec<String>,
    /// How to read the needed scopes.
    pub scope_mode: ScopeMode,
    /// Code → class for API calls.
    pub codes: BTreeMap<String, FailureClass>,
    /// Code → class at the token endpoint.
    pub token_codes: BTreeMap<String, FailureClass>,
    /// Headers carrying the rate-limit reset, tried in order.
    pub reset_headers: Vec<String>,
}

/// A validated rule set for one provider. See the [module documentation](self).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "RuleSpec", into = "RuleSpec")]
pub struct RuleSet {
    spec: RuleSpec,
}

/// Why a rule set was refused.
#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    /// A JSON pointer is not one.
    #[error("rule set: `{pointer}` is not a JSON pointer: {reason}")]
    Pointer {
        /// The pointer as given.
        pointer: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A code cannot be one (it would never survive [`sanitized_code`], or is empty).
    #[error(
        "rule set: `{code}` in `{table}` is not shaped like an error code (letters, digits and `_ . : -`, at most 128 bytes)"
    )]
    Code {
        /// The table (`codes` or `token_codes`).
        table: &'static str,
        /// The code as given.
        code: String,
    },
    /// A class that a code cannot have there.
    #[error("rule set: `{code}` in `{table}` cannot mean {class:?}: {reason}")]
    Class {
        /// The table (`codes` or `token_codes`).
        table: &'static str,
        /// The code.
        code: String,
        /// The refused class.
        class: FailureClass,
        /// Why.
        reason: &'static str,
    },
    /// A header name is not one.
    #[error("rule set: `{0}` in `reset_headers` is not a valid header name")]
    Header(String),
    /// Too many entries.
    #[error("rule set: `{what}` has {count} entries, at most {max} are allowed")]
    TooMany {
        /// The field.
        what: &'static str,
        /// How many were given.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// Nothing to do.
    #[error("rule set: it declares no codes, scope pointers or reset headers")]
    Empty,
    /// The text does not parse.
    #[error("rule set: the {format} does not parse: {message}")]
    Parse {
        /// `JSON` or `TOML`.
        format: &'static str,
        /// The parser's message.
        message: String,
    },
    /// The file cannot be read, or its extension is neither `.json` nor `.toml`.
    #[error("rule set: cannot read `{path}`: {reason}")]
    File {
        /// The path.
        path: String,
        /// Why.
        reason: String,
    },
}

fn check_pointers(what: &'static str, pointers: &[String]) -> Result<(), RuleError> {
    if pointers.len() > MAX_POINTERS {
        return Err(RuleError::TooMany {
            what,
            count: pointers.len(),
            max: MAX_POINTERS,
        });
    }
    for p in pointers {
        let reason = if p.is_empty() {
            Some("the empty pointer names the whole body")
        } else if !p.starts_with('/') {
            Some("it must start with `/`")
        } else if p.len() > MAX_POINTER_LEN {
            Some("it is longer than 256 bytes")
        } else if p.split('~').skip(1).any(|s| !s.starts_with(['0', '1'])) {
            Some("`~` must be followed by `0` or `1`")
        } else {
            None
        };
        if let Some(reason) = reason {
            return Err(RuleError::Pointer {
                pointer: p.clone(),
                reason,
            });
        }
    }
    Ok(())
}

fn check_codes(
    table: &'static str,
    codes: &BTreeMap<String, FailureClass>,
    kind: RequestKind,
) -> Result<(), RuleError> {
    if codes.len() > MAX_CODES {
        return Err(RuleError::TooMany {
            what: table,
            count: codes.len(),
            max: MAX_CODES,
        });
    }
    for (code, class) in codes {
        if sanitized_code(code) != Some(code.as_str()) {
            return Err(RuleError::Code {
                table,
                code: code.clone(),
            });
        }
        let refused = match (class, kind) {
            (FailureClass::Ok, _) => Some("a rule classifies failures, not successes"),
            (FailureClass::AccessTokenExpired, RequestKind::TokenRefresh) => {
                Some("a refresh cannot be fixed by another refresh")
            }
            _ => None,
        };
        if let Some(reason) = refused {
            return Err(RuleError::Class {
                table,
                code: code.clone(),
                class: *class,
                reason,
            });
        }
    }
    Ok(())
}

impl TryFrom<RuleSpec> for RuleSet {
    type Error = RuleError;

    fn try_from(spec: RuleSpec) -> Result<Self, RuleError> {
        Self::new(spec)
    }
}

impl From<RuleSet> for RuleSpec {
    fn from(rules: RuleSet) -> Self {
        rules.spec
    }
}

impl RuleSet {
    /// Validates `spec`: pointers are RFC 6901 pointers (not the whole body), codes are shaped
    /// like codes, no code means `ok` (or `access_token_expired` at the token endpoint), header
    /// names are valid, at most [`MAX_POINTERS`] pointers/headers and [`MAX_CODES`] codes each,
    /// and something is declared.
    pub fn new(spec: RuleSpec) -> Result<Self, RuleError> {
        check_pointers("code_pointers", &spec.code_pointers)?;
        check_pointers("scope_pointers", &spec.scope_pointers)?;
        check_codes("codes", &spec.codes, RequestKind::Api)?;
        check_codes("token_codes", &spec.token_codes, RequestKind::TokenRefresh)?;
        if spec.reset_headers.len() > MAX_POINTERS {
            return Err(RuleError::TooMany {
                what: "reset_headers",
                count: spec.reset_headers.len(),
                max: MAX_POINTERS,
            });
        }
        if let Some(bad) = spec
            .reset_headers
            .iter()
            .find(|h| http::HeaderName::from_bytes(h.as_bytes()).is_err())
        {
            return Err(RuleError::Header(bad.clone()));
        }
        if spec.codes.is_empty()
            && spec.token_codes.is_empty()
            && spec.scope_pointers.is_empty()
            && spec.reset_headers.is_empty()
        {
            return Err(RuleError::Empty);
        }
        Ok(Self { spec })
    }

    /// A rule set from JSON text (the fields of [`RuleSpec`]).
    pub fn from_json(text: &str) -> Result<Self, RuleError> {
        let spec: RuleSpec = serde_json::from_str(text).map_err(|e| RuleError::Parse {
            format: "JSON",
            message: e.to_string(),
        })?;
        Self::new(spec)
    }

    /// A rule set from TOML text (the fields of [`RuleSpec`]).
    pub fn from_toml(text: &str) -> Result<Self, RuleError> {
        let spec: RuleSpec = toml::from_str(text).map_err(|e| RuleError::Parse {
            format: "TOML",
            message: e.message().to_owned(),
        })?;
        Self::new(spec)
    }

    /// A rule set from a `.json` or `.toml` file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, RuleError> {
        let path = path.as_ref();
        let file_error = |reason: String| RuleError::File {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| file_error(e.to_string()))?;
        match path.extension().and_then(|e| e.to_str()) {
            Some("json") => Self::from_json(&text),
            Some("toml") => Self::from_toml(&text),
            _ => Err(file_error(
                "the extension is neither .json nor .toml".into(),
            )),
        }
    }

    /// The description this rule set was built from.
    pub fn spec(&self) -> &RuleSpec {
        &self.spec
    }

    /// What a token-endpoint error `code` means under these rules, if they say.
    pub fn token_class(&self, code: &str) -> Option<FailureClass> {
        lookup(&self.spec.token_codes, code)
    }

    /// The error code at the first code pointer that holds one.
    fn code<'v>(&self, body: &'v Value) -> Option<std::borrow::Cow<'v, str>> {
        self.spec
            .code_pointers
            .iter()
            .find_map(|p| match body.pointer(p)? {
                Value::String(s) => Some(std::borrow::Cow::Borrowed(s.as_str())),
                Value::Number(n) => Some(std::borrow::Cow::Owned(n.to_string())),
                _ => None,
            })
    }

    /// The needed scopes at the first scope pointer that names any.
    pub(super) fn scopes(&self, r: &Response<'_>) -> Vec<String> {
        let Some(body) = r.json() else {
            return Vec::new();
        };
        for p in &self.spec.scope_pointers {
            let scopes = match body.pointer(p) {
                Some(Value::String(s)) => super::split_scopes([s.as_str()]),
                Some(Value::Array(a)) => {
                    super::split_scopes(a.iter().take(super::MAX_SCOPES).filter_map(Value::as_str))
                }
                _ => Vec::new(),
            };
            if !scopes.is_empty() {
                return scopes;
            }
        }
        Vec::new()
    }

    /// The scope mode the rules declare.
    pub(super) fn scope_mode(&self) -> ScopeMode {
        self.spec.scope_mode
    }

    /// The reset the rules' headers carry.
    pub(super) fn reset(&self, r: &Response<'_>) -> (Option<Duration>, Option<SystemTime>) {
        let names: Vec<&str> = self.spec.reset_headers.iter().map(String::as_str).collect();
        heuristics::reset_from(r, &names)
    }

    /// The rules' verdict on a failed response, if a code they know is in it.
    pub(super) fn classify(&self, r: &Response<'_>) -> Option<Classification> {
        let code = self.code(r.json()?)?;
        let table = match r.kind {
            RequestKind::Api => &self.spec.codes,
            RequestKind::TokenRefresh => &self.spec.token_codes,
        };
        let class = lookup(table, &code)?;
        let mut c = Classification::new(class).code(&code);
        if class == FailureClass::InsufficientScope {
            let scopes = self.scopes(r);
            c = c.scopes(scopes.iter().map(String::as_str), self.spec.scope_mode);
        }
        if class == FailureClass::StepUpRequired {
            c.step_up = Some(StepUp::default());
        }
        if matches!(class, FailureClass::RateLimited | FailureClass::ServerError) {
            (c.retry_after, c.retry_at) = self.reset(r);
        }
        Some(c)
    }
}

/// An exact match, else one ignoring ASCII case.
fn lookup(table: &BTreeMap<String, FailureClass>, code: &str) -> Option<FailureClass> {
    table.get(code).copied().or_else(|| {
        table
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(code))
            .map(|(_, c)| *c)
    })
}
