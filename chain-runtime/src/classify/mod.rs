//! Failure classification of provider API and token-endpoint responses.
//!
//! [`classify`] maps the raw `(status, headers, body)` of one HTTP exchange with a provider to exactly
//! one [`FailureClass`], plus what the response says about the fix: the scopes it needs, how long to
//! wait, or what step-up authentication it asks for. [`classify_with`] also takes the provider's
//! user-defined [`RuleSet`]. The order of decision:
//!
//! 1. No response (status 0..=99), an informational status or a 5xx → [`FailureClass::ServerError`]
//!    (Microsoft's throttling 503 → rate limited); a 2xx → [`FailureClass::Ok`]. Slack (every
//!    response) and the GitHub token endpoint report errors inside HTTP 200 bodies; those are
//!    looked at before the status.
//! 2. The user's [`rules`]: a code their pointers find in their tables decides.
//! 3. 429 or a provider rate-limit marker (`Retry-After` on a 4xx, `x-ratelimit-remaining: 0` on a
//!    403/429, `REQUEST_LIMIT_EXCEEDED`, Google `usageLimits`, …) → [`FailureClass::RateLimited`].
//!    This runs *before* the 403 branch because GitHub, Salesforce and legacy Google rate-limit with 403.
//! 4. Token endpoint: RFC 6749 §5.2 `error` codes (plus the provider's own codes, Microsoft's
//!    numeric `error_codes`), from the one table [`token_error_class`]. Only `invalid_grant` or a
//!    provider's documented equivalent is revocation; no well-formed code, or an unknown one, is
//!    transient.
//! 5. API: a `WWW-Authenticate: Bearer error=…` challenge (RFC 6750, RFC 9470, Entra claims
//!    challenges), then the built-in provider's body table, then the generic body heuristics
//!    (scope-error codes and fields, `expected any of: …`; see `heuristics.rs`), then the status:
//!    401 → expired, 408/425 → transient, other 4xx → forbidden.
//!
//! Waits: the rules' reset headers, `Retry-After` (delta-seconds or any HTTP-date form), the
//! provider's reset header (GitHub, Atlassian), then `X-Rate-Limit-Reset` / `X-RateLimit-Reset` /
//! `RateLimit-Reset` (epoch seconds, or delta seconds below 10^9). Error codes are kept only in
//! the shape [`sanitized_code`] accepts: provider text never travels further.
//!
//! Recorded responses with their expected class can be kept as data and checked with
//! [`fixtures`].
//!
//! `classify` is pure: no clock, no I/O, no global state. It never panics, whatever the body (empty,
//! not JSON, truncated, the wrong JSON shape, not UTF-8, megabytes long): bodies are parsed as JSON
//! only up to [`JSON_PARSE_LIMIT`] bytes and searched for text markers only in their first
//! [`TEXT_SCAN_LIMIT`] bytes. What the runtime *does* with a classification is decided by
//! [`crate::policy`].

mod atlassian;
mod codes;
pub mod fixtures;
mod github;
mod google;
mod heuristics;
mod microsoft;
pub mod rules;
mod salesforce;
mod slack;
mod standards;
pub mod www_authenticate;

pub use codes::{sanitized_code, token_error_class};
pub use rules::{RuleError, RuleSet, RuleSpec};

use std::borrow::Cow;
use std::cell::OnceCell;
use std::time::{Duration, SystemTime};

use serde_json::Value;

/// Bodies longer than this are never parsed as JSON (only searched for text markers).
pub const JSON_PARSE_LIMIT: usize = 1024 * 1024;
/// Text markers are searched for in at most this many leading bytes of a body.
pub const TEXT_SCAN_LIMIT: usize = 64 * 1024;
/// Longest `error_code` kept in a [`Classification`] (longer codes are dropped).
const MAX_CODE_LEN: usize = 128;
/// Most scopes kept in [`Classification::needed_scopes`].
const MAX_SCOPES: usize = 64;
/// Longest single scope kept (longer ones are dropped as garbage).
const MAX_SCOPE_LEN: usize = 256;
/// Longest step-up value (`acr_values`, `claims`) kept.
const MAX_STEP_UP_LEN: usize = 8 * 1024;

/// Which kind of request produced the response being classified.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum RequestKind {
    #[default]
    /// A call to the provider's API with an access token.
    Api,
    /// A `grant_type=refresh_token` call to the provider's token endpoint.
    TokenRefresh,
}

/// The one failure class a response falls into.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureClass {
    /// The call succeeded.
    Ok,
    /// The access token expired: refresh once, retry once.
    AccessTokenExpired,
    /// The grant is revoked or the refresh token rejected: never retry.
    GrantRevoked,
    /// The token lacks a scope the call needs: never retry, ask for consent.
    InsufficientScope,
    /// The user may not touch this record: a domain error, no consent loop.
    ///
    /// Also used for every other client error the credentials cannot fix (400, 404, 409, 422, an
    /// unexpected redirect, …).
    Forbidden,
    /// Too many requests: back off.
    RateLimited,
    /// The client credentials are wrong: an operator must act.
    InvalidClient,
    /// The provider failed: bounded retries with the same idempotency key.
    ServerError,
    /// A stronger authentication is required (RFC 9470, Entra MFA / Conditional Access, Entra
    /// claims challenges): never retry, run a new interactive authorization.
    StepUpRequired,
}

/// How to read [`Classification::needed_scopes`].
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum ScopeMode {
    /// Every listed scope is needed (RFC 6750 `scope=`, Slack `needed`, Salesforce `api`).
    #[default]
    AllOf,
    /// The listed scopes are alternatives and any one of them suffices (Google's `scope=`,
    /// GitHub's `X-Accepted-OAuth-Scopes`). Request one (usually the first, or the narrowest).
    AnyOf,
    /// GitHub App permissions, not OAuth scopes: each entry is one alternative *set* of
    /// `permission=level` pairs joined by `,` (from `X-Accepted-GitHub-Permissions`). The app's
    /// configured permissions must change (and the org owner approve); user re-consent alone does
    /// not help.
    GitHubAppPermissions,
}

/// What a step-up challenge asks for (RFC 9470 `acr_values`/`max_age`, Entra `claims`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StepUp {
    /// Space-separated authentication context class references to request (`acr_values`).
    pub acr_values: Option<String>,
    /// Maximum authentication age the resource accepts (`max_age`, in seconds on the wire).
    pub max_age: Option<Duration>,
    /// Entra claims challenge (`claims`, base64 JSON in `WWW-Authenticate`, or JSON in a token
    /// error body): pass it as the `claims` parameter of the new authorization request.
    pub claims: Option<String>,
}

/// The verdict on one response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Classification {
    /// The failure class.
    pub class: FailureClass,
    /// Scopes the response names as needed (empty when it names none). Never contains empty
    /// strings or whitespace; read it according to [`Classification::scope_mode`].
    pub needed_scopes: Vec<String>,
    /// How long the provider asked us to wait (`Retry-After` delta-seconds), for
    /// [`FailureClass::RateLimited`] and [`FailureClass::ServerError`] only.
    pub retry_after: Option<Duration>,
    /// The instant the provider said we may retry (`Retry-After` HTTP-date, GitHub
    /// `x-ratelimit-reset`, Atlassian `X-RateLimit-Reset`). Turning it into a wait needs the current
    /// time, which [`crate::policy`] takes from its caller.
    pub retry_at: Option<SystemTime>,
    /// How to read [`Classification::needed_scopes`].
    pub scope_mode: ScopeMode,
    /// For [`FailureClass::StepUpRequired`]: what the new authorization must ask for.
    pub step_up: Option<StepUp>,
    /// A [`FailureClass::Forbidden`] that the provider does not tell apart from a missing scope
    /// (Microsoft Graph `Authorization_RequestDenied`/`ErrorAccessDenied`, Atlassian 404). If the
    /// grant lacks a scope the step requires, treat it as insufficient scope.
    pub scope_suspected: bool,
    /// The provider's error code, for diagnostics and the journal (OAuth `error`, Slack `error`,
    /// Salesforce `errorCode`, Graph `error.code`, `AADSTS<n>`, Google reason). Never a secret.
    pub error_code: Option<String>,
}

impl Classification {
    /// A classification of `class` with nothing else known.
    pub fn new(class: FailureClass) -> Self {
        Self {
            class,
            needed_scopes: Vec::new(),
            retry_after: None,
            retry_at: None,
            scope_mode: ScopeMode::AllOf,
            step_up: None,
            scope_suspected: false,
            error_code: None,
        }
    }

    /// Sets the diagnostic error code if it passes [`sanitized_code`]; anything else a provider
    /// put in its code field (free text, an echoed token) is dropped.
    pub(crate) fn code(mut self, code: &str) -> Self {
        if let Some(clean) = sanitized_code(code) {
            self.error_code = Some(clean.to_owned());
        }
        self
    }

    /// Sets the diagnostic error code if there is one.
    pub(crate) fn code_opt(self, code: Option<&str>) -> Self {
        match code {
            Some(code) => self.code(code),
            None => self,
        }
    }

    /// Sets the needed scopes from raw, separator-delimited text.
    pub(crate) fn scopes<'s>(
        mut self,
        raw: impl IntoIterator<Item = &'s str>,
        mode: ScopeMode,
    ) -> Self {
        self.needed_scopes = split_scopes(raw);
        self.scope_mode = mode;
        self
    }
}

/// Splits scope lists on commas and whitespace, drops empties, control characters, over-long
/// entries and duplicates, and keeps at most [`MAX_SCOPES`].
pub(crate) fn split_scopes<'s>(raw: impl IntoIterator<Item = &'s str>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for chunk in raw {
        for s in chunk.split(|c: char| c == ',' || c.is_whitespace() || c.is_control()) {
            push_scope(&mut out, s);
        }
    }
    out
}

/// Adds one already-split scope if it is well-formed and new.
pub(crate) fn push_scope(out: &mut Vec<String>, s: &str) {
    if out.len() >= MAX_SCOPES
        || s.is_empty()
        || s.len() > MAX_SCOPE_LEN
        || s.chars().any(|c| c.is_whitespace() || c.is_control())
        || out.iter().any(|o| o == s)
    {
        return;
    }
    out.push(s.to_owned());
}

/// Cuts a step-up value to a bounded length; `None` when it ends up empty.
pub(crate) fn bounded(value: &str) -> Option<String> {
    let v: String = value.chars().take(MAX_STEP_UP_LEN).collect();
    let v = v.trim();
    (!v.is_empty()).then(|| v.to_owned())
}

/// The providers with their own table in `docs/providers.md`; everything else is
/// [`Provider::Standard`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Provider {
    /// Salesforce.
    Salesforce,
    /// Atlassian (Jira / Confluence Cloud); also reached as `jira`.
    Atlassian,
    /// Slack Web API.
    Slack,
    /// GitHub (OAuth apps and GitHub Apps).
    GitHub,
    /// Google APIs.
    Google,
    /// Microsoft Graph / Entra ID.
    Microsoft,
    /// Any other provider: RFC 6749 / RFC 6750 / RFC 9470 only.
    Standard,
}

impl Provider {
    /// Recognises a provider name (case-insensitive, surrounding whitespace ignored; `jira` is an
    /// alias of `atlassian`). Unknown names are [`Provider::Standard`].
    pub fn from_name(name: &str) -> Self {
        let name = name.trim();
        let is = |n: &str| name.eq_ignore_ascii_case(n);
        if is("salesforce") {
            Self::Salesforce
        } else if is("atlassian") || is("jira") {
            Self::Atlassian
        } else if is("slack") {
            Self::Slack
        } else if is("github") {
            Self::GitHub
        } else if is("google") {
            Self::Google
        } else if is("microsoft") {
            Self::Microsoft
        } else {
            Self::Standard
        }
    }

    /// Whether the provider reports a missing scope as a 401 that looks like an expired token
    /// (Salesforce, Atlassian): the loop guard then reads a second expiry as insufficient scope.
    pub fn reports_missing_scope_as_401(self) -> bool {
        matches!(self, Self::Salesforce | Self::Atlassian)
    }
}

/// One response, with lazily computed views of its body.
pub(crate) struct Response<'a> {
    pub provider: Provider,
    pub kind: RequestKind,
    pub status: u16,
    pub headers: &'a http::HeaderMap,
    pub body: &'a [u8],
    json: OnceCell<Option<Value>>,
    text: OnceCell<String>,
    text_lower: OnceCell<String>,
}

impl<'a> Response<'a> {
    fn new(
        provider: Provider,
        kind: RequestKind,
        status: u16,
        headers: &'a http::HeaderMap,
        body: &'a [u8],
    ) -> Self {
        Self {
            provider,
            kind,
            status,
            headers,
            body,
            json: OnceCell::new(),
            text: OnceCell::new(),
            text_lower: OnceCell::new(),
        }
    }

    /// The body as JSON, if it is at most [`JSON_PARSE_LIMIT`] bytes and parses.
    pub fn json(&self) -> Option<&Value> {
        self.json
            .get_or_init(|| {
                if self.body.len() > JSON_PARSE_LIMIT {
                    return None;
                }
                let trimmed = self.body.trim_ascii_start();
                if !matches!(trimmed.first(), Some(b'{' | b'[')) {
                    return None;
                }
                serde_json::from_slice(self.body).ok()
            })
            .as_ref()
    }

    /// A string field of a top-level JSON object.
    pub fn json_str(&self, key: &str) -> Option<&str> {
        self.json()?.as_object()?.get(key)?.as_str()
    }

    /// The first [`TEXT_SCAN_LIMIT`] bytes of the body, lossily decoded.
    pub fn text(&self) -> &str {
        self.text.get_or_init(|| {
            let end = self.body.len().min(TEXT_SCAN_LIMIT);
            String::from_utf8_lossy(&self.body[..end]).into_owned()
        })
    }

    /// Whether the scanned body prefix contains `needle` (case-sensitive).
    pub fn text_contains(&self, needle: &str) -> bool {
        self.text().contains(needle)
    }

    /// Whether the scanned body prefix contains `needle`, ignoring ASCII case (`needle` must be
    /// lowercase).
    pub fn text_contains_ci(&self, needle: &str) -> bool {
        self.text_lower
            .get_or_init(|| self.text().to_ascii_lowercase())
            .contains(needle)
    }

    /// Every value of header `name`, lossily decoded.
    pub fn header_values(&self, name: &str) -> impl Iterator<Item = Cow<'a, str>> + 'a {
        self.headers
            .get_all(name)
            .into_iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()))
    }

    /// The first value of header `name`, lossily decoded and trimmed.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).trim().to_owned())
    }

    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// Whether the status is 4xx.
    pub fn is_client_error(&self) -> bool {
        (400..500).contains(&self.status)
    }
}

/// Classifies one response of `provider` to a request of `kind`.
///
/// `provider` is matched case-insensitively against `salesforce`, `atlassian` (alias `jira`),
/// `slack`, `github`, `google` and `microsoft`; any other name takes the standards path. `status` 0
/// (or anything below 100) means no HTTP response arrived (a transport error) and classifies as
/// [`FailureClass::ServerError`].
///
/// Guarantees, for every input: no panic; a 2xx is [`FailureClass::Ok`] except for Slack's
/// `"ok":false` bodies and GitHub token-endpoint error bodies; a token refresh never classifies as
/// [`FailureClass::AccessTokenExpired`] (a refresh cannot be fixed by another refresh); waits are
/// only reported for [`FailureClass::RateLimited`] and [`FailureClass::ServerError`]; a 429 is
/// always [`FailureClass::RateLimited`]; no response, a 1xx or a 5xx is always
/// [`FailureClass::ServerError`] or [`FailureClass::RateLimited`]; `step_up` is set exactly for
/// [`FailureClass::StepUpRequired`]; `needed_scopes` holds no empty, whitespace-containing or
/// duplicate entries.
pub fn classify(
    provider: &str,
    kind: RequestKind,
    status: u16,
    headers: &http::HeaderMap,
    body: &[u8],
) -> Classification {
    classify_with(provider, None, kind, status, headers, body)
}

/// [`classify`] with a provider's user-defined [`RuleSet`], which is consulted before anything
/// else: a code its pointers find in its tables decides the class; its scope pointers and reset
/// headers fill in what the verdict leaves open. The guarantees of [`classify`] hold whatever
/// the rules say (a 2xx stays [`FailureClass::Ok`], a 5xx a server error, and so on).
pub fn classify_with(
    provider: &str,
    rules: Option<&RuleSet>,
    kind: RequestKind,
    status: u16,
    headers: &http::HeaderMap,
    body: &[u8],
) -> Classification {
    let r = Response::new(Provider::from_name(provider), kind, status, headers, body);
    let mut c = classify_response(&r, rules);
    if kind == RequestKind::TokenRefresh && c.class == FailureClass::AccessTokenExpired {
        c.class = FailureClass::GrantRevoked;
    }
    match c.class {
        FailureClass::RateLimited | FailureClass::ServerError => {
            let hints = [
                &|r: &Response<'_>| rules.map(|rules| rules.reset(r)).unwrap_or_default(),
                &standards::retry_after as &dyn Fn(&Response<'_>) -> _,
                &|r: &Response<'_>| match r.provider {
                    Provider::GitHub => (None, github::reset_at(r)),
                    Provider::Atlassian => (None, atlassian::reset_at(r)),
                    _ => (None, None),
                },
                &heuristics::reset,
            ];
            for hint in hints {
                if c.retry_after.is_some() || c.retry_at.is_some() {
                    break;
                }
                (c.retry_after, c.retry_at) = hint(&r);
            }
        }
        _ => {
            c.retry_after = None;
            c.retry_at = None;
        }
    }
    if c.class == FailureClass::InsufficientScope
        && c.needed_scopes.is_empty()
        && let Some(rules) = rules
    {
        let scopes = rules.scopes(&r);
        c = c.scopes(scopes.iter().map(String::as_str), rules.scope_mode());
    }
    if c.class == FailureClass::StepUpRequired {
        c.step_up.get_or_insert_with(StepUp::default);
    } else {
        c.step_up = None;
    }
    c
}

fn classify_response(r: &Response<'_>, rules: Option<&RuleSet>) -> Classification {
    // Providers that report errors inside 2xx bodies.
    let envelope = match (r.provider, r.kind) {
        (Provider::Slack, _) => slack::envelope(r),
        (Provider::GitHub, RequestKind::TokenRefresh) => github::token_envelope(r),
        _ => None,
    };
    if let Some(c) = envelope {
        return c;
    }

    match r.status {
        200..=299 | 304 => return Classification::new(FailureClass::Ok),
        0..=199 => {
            let code = if r.status < 100 {
                "no_response"
            } else {
                "informational_status"
            };
            return Classification::new(FailureClass::ServerError).code(code);
        }
        500..=999 => {
            if r.provider == Provider::Microsoft && microsoft::rate_limited(r) {
                return microsoft::rate_limit_classification(r);
            }
            return Classification::new(FailureClass::ServerError);
        }
        _ => {}
    }

    // User-defined rules: the provider's quirks, first.
    if let Some(c) = rules.and_then(|rules| rules.classify(r)) {
        return c;
    }

    if let Some(c) = rate_limited(r) {
        return c;
    }

    if (300..400).contains(&r.status) {
        return Classification::new(FailureClass::Forbidden).code("unexpected_redirect");
    }

    match r.kind {
        RequestKind::TokenRefresh => token_error(r),
        RequestKind::Api => api_error(r),
    }
}

/// Step 2: rate-limit detection, before any 401/403 reading.
fn rate_limited(r: &Response<'_>) -> Option<Classification> {
    let provider_says = match r.provider {
        Provider::Salesforce => salesforce::rate_limited(r),
        Provider::GitHub => github::rate_limited(r),
        Provider::Google => google::rate_limited(r),
        Provider::Microsoft => microsoft::rate_limited(r),
        Provider::Atlassian | Provider::Slack | Provider::Standard => false,
    };
    if provider_says || standards::rate_limited(r) {
        let c = Classification::new(FailureClass::RateLimited);
        return Some(match r.provider {
            Provider::Microsoft => microsoft::rate_limit_classification(r),
            Provider::Google => c.code_opt(google::reason(r).as_deref()),
            Provider::Salesforce => c.code_opt(salesforce::error_code(r).as_deref()),
            _ => c.code_opt(standards::oauth_error(r).as_deref()),
        });
    }
    None
}

/// Step 3: token-endpoint errors.
fn token_error(r: &Response<'_>) -> Classification {
    let provider = match r.provider {
        Provider::Salesforce => salesforce::token(r),
        Provider::Atlassian => atlassian::token(r),
        Provider::GitHub => github::token(r),
        Provider::Microsoft => microsoft::token(r),
        Provider::Slack | Provider::Google | Provider::Standard => None,
    };
    provider.unwrap_or_else(|| standards::token(r))
}

/// Steps 3–5 for API calls: bearer challenge, provider body, fallback.
fn api_error(r: &Response<'_>) -> Classification {
    // The built-in tables read their bodies after the challenge: where these providers send one
    // (Entra CAE claims challenges, Google's scope list) it is the more precise signal.
    if let Some(mut c) = standards::bearer_challenge(r) {
        if r.provider == Provider::Google && c.class == FailureClass::InsufficientScope {
            c.scope_mode = ScopeMode::AnyOf;
            if c.error_code.is_none() {
                c = c.code_opt(google::reason(r).as_deref());
            }
        }
        return c;
    }
    let provider = match r.provider {
        Provider::Salesforce => salesforce::api(r),
        Provider::Atlassian => atlassian::api(r),
        Provider::GitHub => github::api(r),
        Provider::Google => google::api(r),
        Provider::Microsoft => microsoft::api(r),
        Provider::Slack | Provider::Standard => None,
    };
    provider
        .or_else(|| heuristics::scope_error(r))
        .unwrap_or_else(|| standards::api_fallback(r))
}
