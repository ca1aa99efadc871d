//! The provider-neutral wire vocabulary of the emulators: the [`ProviderImpl`] trait each
//! provider implements, and the replies, failures and operation results the pipelines pass
//! around.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::oauth::{Issued, TokenError};
use super::state::Shared;

/// A provider's wire shapes and API routes. Implemented by the three marker types.
pub trait ProviderImpl: Send + Sync + Sized + 'static {
    /// Human name for errors.
    const NAME: &'static str;
    /// Provider records (opportunities, issues, messages).
    type Data: Default + Send + 'static;
    /// Scopes of which one must be granted for a refresh token (empty: always one).
    const REFRESH_SCOPES: &'static [&'static str];
    /// The authorize parameter without which no refresh token is issued (Google
    /// `access_type=offline`).
    const OFFLINE_PARAM: Option<(&'static str, &'static str)> = None;
    /// Whether the API replays a write sent again with the same `Idempotency-Key` header
    /// (GitHub, Google and Microsoft Graph ignore the header).
    const HONORS_IDEMPOTENCY_KEY: bool = true;
    /// Default emulator configuration.
    fn default_config() -> super::EmulatorConfig;
    /// A new tenant id (org id, cloud id, team id).
    fn new_tenant() -> String;
    /// Token prefixes `(access, refresh)` for this tenant.
    fn token_prefixes(tenant: &str) -> (String, String);
    /// The upstream subject of the `n`-th sandbox user.
    fn new_subject(base_url: &str, tenant: &str, n: usize) -> String;
    /// The URLs a client needs.
    fn urls(base_url: &str, tenant: &str) -> super::Urls;
    /// The API and OAuth routes (the token, authorize and revoke handlers come from here too).
    fn router(shared: Arc<Shared<Self>>) -> Router;
    /// Whether granted scopes satisfy a needed one.
    fn has_scope(granted: &[String], needed: &str) -> bool {
        granted.iter().any(|g| g == needed)
    }
    /// The shape of an API failure.
    fn api_failure(failure: ApiFailure<'_>, now: SystemTime) -> ApiReply;
    /// Headers the provider puts on every API response.
    fn decorate(_reply: &mut ApiReply, _api_calls: u64, _scopes: Option<&[String]>) {}
    /// The shape of a token-endpoint failure.
    fn token_failure(error: &TokenError) -> ApiReply;
    /// A 5xx from the token endpoint.
    fn token_server_error() -> ApiReply;
    /// The shape of a successful token response.
    fn token_success(issued: &Issued, ctx: &TokenCtx<'_>) -> ApiReply;
}

/// Context for shaping a token response.
pub struct TokenCtx<'a> {
    pub client_id: &'a str,
    pub base_url: &'a str,
    pub tenant: &'a str,
    pub client_secret: &'a str,
    pub issued_at: SystemTime,
}

/// A provider-neutral API failure.
pub enum ApiFailure<'a> {
    NotAuthed,
    InvalidToken,
    Expired,
    Revoked,
    MissingScope {
        needed: &'a str,
        provided: &'a [String],
    },
    RateLimited(Duration),
    ServerError,
}

/// A response that can be stored (idempotency replay) and decorated.
#[derive(Clone, Debug)]
pub struct ApiReply {
    pub status: StatusCode,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Option<Value>,
    /// The provider's error code, for the ledger.
    pub error: Option<String>,
}

impl ApiReply {
    pub fn json(status: StatusCode, body: Value) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Some(body),
            error: None,
        }
    }

    pub fn empty(status: StatusCode) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: None,
            error: None,
        }
    }

    /// Marks the reply as a failure with this provider error code.
    pub fn err(mut self, code: &str) -> Self {
        self.error = Some(code.to_owned());
        self
    }

    /// Adds a header (values that are not valid header text are skipped).
    pub fn header(mut self, name: &'static str, value: impl AsRef<str>) -> Self {
        self.add_header(name, value);
        self
    }

    /// Adds a header in place (`name` must be lower-case).
    pub fn add_header(&mut self, name: &'static str, value: impl AsRef<str>) {
        if let Ok(v) = HeaderValue::from_str(value.as_ref()) {
            self.headers.push((HeaderName::from_static(name), v));
        }
    }
}

impl IntoResponse for ApiReply {
    fn into_response(self) -> Response {
        let mut resp = match self.body {
            Some(body) => (self.status, axum::Json(body)).into_response(),
            None => self.status.into_response(),
        };
        for (name, value) in self.headers {
            resp.headers_mut().append(name, value);
        }
        resp
    }
}

/// The outcome of a provider API operation.
pub struct OpResult {
    pub reply: ApiReply,
    /// The record created, changed or deleted.
    pub record_id: Option<String>,
    /// Whether something was changed (and must be recorded as a write).
    pub committed: bool,
}

impl OpResult {
    /// A read or a failed write: nothing changed.
    pub fn reply(reply: ApiReply) -> Self {
        Self {
            reply,
            record_id: None,
            committed: false,
        }
    }

    /// A committed write of `record_id`.
    pub fn committed(reply: ApiReply, record_id: impl Into<String>) -> Self {
        Self {
            reply,
            record_id: Some(record_id.into()),
            committed: true,
        }
    }
}

/// Who is calling, once the token checked out.
pub struct ApiCtx<'a> {
    pub subject: &'a str,
    pub base_url: &'a str,
    pub tenant: &'a str,
    pub scopes: &'a [String],
    pub login: &'a str,
}
