//! The port a step's connector client reaches the run principal's credential through.
//!
//! The connector client ([`crate::connector::StepHttp`]) describes each request and hands it to
//! a [`TokenSource`], which injects the credential and sends it; the client never sees a token.
//! The vault implements the port; the engine hands a step one [`ConnectorAccess`] per
//! execution.

use std::fmt;
use std::sync::Arc;

use crate::classify::RuleSet;
use crate::future::BoxFuture;
use crate::policy::RetryPolicy;

/// Sends requests with one principal's credential on one connector.
pub trait TokenSource: Send + Sync + fmt::Debug {
    /// The connector whose account is used.
    fn connector(&self) -> &str;

    /// The provider name responses are classified under (see [`crate::classify::classify`]).
    fn provider(&self) -> &str;

    /// The connector's own classification rules, applied before the provider's table.
    fn classification_rules(&self) -> Option<&RuleSet> {
        None
    }

    /// The header the step's idempotency key travels in; `None`: not sent.
    fn idempotency_header(&self) -> Option<&str> {
        Some("Idempotency-Key")
    }

    /// Sends `request` with the credential injected (refreshed first when it is about to
    /// expire). The response is returned whatever its status.
    fn send<'a>(
        &'a self,
        request: &'a TokenRequest,
    ) -> BoxFuture<'a, Result<reqwest::Response, TokenError>>;

    /// The provider rejected the last request's token as expired: refresh it once (skipped
    /// when someone else refreshed since).
    fn refresh_after_expiry(&self) -> BoxFuture<'_, Result<(), TokenError>>;

    /// The provider refused the credential for good: mark the account for re-authorization.
    fn require_reauthorization(&self) -> BoxFuture<'_, Result<(), TokenError>>;

    /// Waits `wait` before a retry (the vault's clock decides how; tests can skip the wait).
    fn sleep(&self, wait: std::time::Duration) -> BoxFuture<'static, ()> {
        Box::pin(tokio::time::sleep(wait))
    }
}

/// A request as the connector client describes it, before a credential is injected.
#[derive(Clone, Debug)]
pub struct TokenRequest {
    /// The HTTP method.
    pub method: reqwest::Method,
    /// The URL.
    pub url: String,
    /// Query parameters added to the URL's own.
    pub query: Vec<(String, String)>,
    /// Extra headers (an `Authorization` header here is replaced).
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: RequestBody,
}

/// The body of a [`TokenRequest`].
#[derive(Clone, Debug)]
pub enum RequestBody {
    /// No body.
    None,
    /// A JSON body.
    Json(serde_json::Value),
    /// A form body.
    Form(Vec<(String, String)>),
}

/// Why a [`TokenSource`] could not send or refresh. Messages never contain a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// The account is gone or must be re-authorized (revoked, not connected, waiting for
    /// re-consent): a new consent can fix it.
    #[error("{0}")]
    Revoked(String),
    /// The provider rejected the application's client credentials: an operator must fix them.
    #[error("{0}")]
    InvalidClient(String),
    /// The request got no response (connection failure or timeout).
    #[error("{0}")]
    Transport(String),
    /// Anything else (storage, configuration).
    #[error("{0}")]
    Other(String),
}

/// What a step execution calls its connector with: the token source and the retry policy.
#[derive(Clone, Debug)]
pub struct ConnectorAccess {
    /// Sends the step's requests with the principal's credential.
    pub source: Arc<dyn TokenSource>,
    /// How failed calls are retried.
    pub policy: RetryPolicy,
}
