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

/// What a step execution calls its connector with: the token source, the retry policy and
/// who hears of each HTTP attempt.
#[derive(Clone, Debug)]
pub struct ConnectorAccess {
    /// Sends the step's requests with the principal's credential.
    pub source: Arc<dyn TokenSource>,
    /// How failed calls are retried.
    pub policy: RetryPolicy,
    /// Told of every HTTP attempt, retries included (the engine audits each one); `None`:
    /// nobody is.
    pub observer: Option<Arc<dyn AttemptObserver>>,
}

impl ConnectorAccess {
    /// This access with `observer` told of every HTTP attempt.
    pub fn observed(mut self, observer: Arc<dyn AttemptObserver>) -> Self {
        self.observer = Some(observer);
        self
    }
}

/// One HTTP attempt of a step's request, as the connector client classified it. Never a
/// header, a body, a query string or a token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpAttempt {
    /// The attempt's number within its request, from 1 (retries count up).
    pub number: u32,
    /// The HTTP method.
    pub method: String,
    /// The response status; 0 when no response arrived (connection failure, timeout).
    pub status: u16,
    /// How the response was classified.
    pub class: crate::classify::FailureClass,
    /// How long the client waits before the next attempt, when it retries after a wait.
    pub wait: Option<std::time::Duration>,
}

/// Hears of every HTTP attempt of a step's connector client (see [`ConnectorAccess::observer`]).
pub trait AttemptObserver: Send + Sync + fmt::Debug {
    /// `attempt` was made and classified; the client goes on when the future resolves.
    fn attempt(&self, attempt: HttpAttempt) -> BoxFuture<'_, ()>;
}
