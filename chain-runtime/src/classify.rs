//! Failure classification of provider API and token-endpoint responses.
//!
//! Skeleton: the standards path only. The provider tables of
//! `provider-semantics.md` are being filled in on the `classify` branch.

use std::time::Duration;

/// Which kind of request produced the response being classified.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RequestKind {
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
    Forbidden,
    /// Too many requests: back off.
    RateLimited,
    /// The client credentials are wrong: an operator must act.
    InvalidClient,
    /// The provider failed: bounded retries with the same idempotency key.
    ServerError,
    /// A stronger authentication is required (RFC 9470).
    StepUpRequired,
}

/// The verdict on one response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Classification {
    /// The failure class.
    pub class: FailureClass,
    /// Scopes the response names as needed (empty when it names none).
    pub needed_scopes: Vec<String>,
    /// How long the provider asked us to wait.
    pub retry_after: Option<Duration>,
}

/// Classifies one response of `provider` (standards path only in this skeleton).
pub fn classify(
    _provider: &str,
    kind: RequestKind,
    status: u16,
    _headers: &http::HeaderMap,
    body: &[u8],
) -> Classification {
    let class = match (kind, status) {
        (_, 200..=299) => FailureClass::Ok,
        (_, 429) => FailureClass::RateLimited,
        (_, 500..=599) => FailureClass::ServerError,
        (RequestKind::TokenRefresh, _) => {
            let error = serde_json::from_slice::<serde_json::Value>(body)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned));
            match error.as_deref() {
                Some("invalid_client") => FailureClass::InvalidClient,
                _ => FailureClass::GrantRevoked,
            }
        }
        (RequestKind::Api, 401) => FailureClass::AccessTokenExpired,
        (RequestKind::Api, _) => FailureClass::Forbidden,
    };
    Classification {
        class,
        needed_scopes: Vec::new(),
        retry_after: None,
    }
}
