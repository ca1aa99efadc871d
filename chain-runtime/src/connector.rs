//! The HTTP client a step body uses: the credential of the run's principal is injected by a
//! [`TokenSource`] (the vault), every response is classified, and the failure policy is applied
//! before step code sees anything.
//!
//! ```no_run
//! # use chain_runtime::prelude::*;
//! # #[derive(Clone, Debug, Serialize, Deserialize)] pub struct UserId(String);
//! # impl Principal for UserId { fn identifier(&self) -> String { self.0.clone() } }
//! #[step(connector = "slack", scopes = ["chat:write"], irreversible = "read at once")]
//! async fn announce(ctx: &StepCtx<UserId>, text: String) -> Result<String, StepError> {
//!     let response = ctx
//!         .http()?
//!         .post("https://slack.example/api/chat.postMessage")
//!         .json(&serde_json::json!({ "channel": "C1", "text": text }))
//!         .send()
//!         .await?;
//!     let body: serde_json::Value = response.json()?;
//!     Ok(body["ts"].as_str().unwrap_or_default().to_owned())
//! }
//! ```

use reqwest::Method;
use serde::de::DeserializeOwned;

use crate::classify::{self, FailureClass, RequestKind};
use crate::error::StepError;
use crate::policy::{Action, AttemptState};
use crate::token::{
    ConnectorAccess, HttpAttempt, RequestBody, TokenError, TokenRequest, TokenSource,
};

/// The connector client of one step execution: bound to the run's principal and the step's
/// connector, it sends the step's idempotency key with every request.
#[derive(Clone, Debug)]
pub struct StepHttp {
    access: ConnectorAccess,
    idempotency_key: String,
    /// A request that got no answer is never sent again (a write the provider does not
    /// deduplicate).
    no_resend: bool,
}

impl StepHttp {
    pub(crate) fn new(access: ConnectorAccess, idempotency_key: &str, no_resend: bool) -> Self {
        Self {
            access,
            idempotency_key: idempotency_key.to_owned(),
            no_resend,
        }
    }

    /// Starts a request.
    pub fn request(&self, method: Method, url: impl Into<String>) -> StepRequest<'_> {
        StepRequest {
            http: self,
            method,
            url: url.into(),
            query: Vec::new(),
            headers: Vec::new(),
            body: Body::None,
        }
    }

    /// Starts a GET request.
    pub fn get(&self, url: impl Into<String>) -> StepRequest<'_> {
        self.request(Method::GET, url)
    }

    /// Starts a POST request.
    pub fn post(&self, url: impl Into<String>) -> StepRequest<'_> {
        self.request(Method::POST, url)
    }

    /// Starts a PATCH request.
    pub fn patch(&self, url: impl Into<String>) -> StepRequest<'_> {
        self.request(Method::PATCH, url)
    }

    /// Starts a DELETE request.
    pub fn delete(&self, url: impl Into<String>) -> StepRequest<'_> {
        self.request(Method::DELETE, url)
    }

    fn source(&self) -> &dyn TokenSource {
        self.access.source.as_ref()
    }
}

#[derive(Clone, Debug)]
enum Body {
    None,
    /// The JSON body could not be encoded; `send` reports it instead of sending anything.
    Unencodable(String),
    Json(serde_json::Value),
    Form(Vec<(String, String)>),
}

/// A request of a step, resent as the failure policy says (same idempotency key every time,
/// in the connector's [`idempotency_header`](crate::vault::ProviderConfig::idempotency_header)).
#[derive(Debug)]
pub struct StepRequest<'a> {
    http: &'a StepHttp,
    method: Method,
    url: String,
    query: Vec<(String, String)>,
    headers: Vec<(String, String)>,
    body: Body,
}

/// A successful (classified `Ok`) provider response.
#[derive(Debug, Clone)]
pub struct StepResponse {
    /// The HTTP status.
    pub status: u16,
    /// The response headers.
    pub headers: http::HeaderMap,
    /// The body bytes.
    pub body: Vec<u8>,
}

impl StepResponse {
    /// The body as JSON of type `T`.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, StepError> {
        serde_json::from_slice(&self.body).map_err(|e| {
            StepError::Runtime(format!(
                "provider response is not the expected JSON: {}",
                json_error_position(&e)
            ))
        })
    }
}

impl StepRequest<'_> {
    /// Adds a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Appends query parameters (URL-encoded; added to any query the URL already has).
    pub fn query(mut self, pairs: &[(&str, &str)]) -> Self {
        self.query.extend(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        self
    }

    /// Sets a JSON body.
    pub fn json<T: serde::Serialize + ?Sized>(mut self, body: &T) -> Self {
        self.body = match serde_json::to_value(body) {
            Ok(value) => Body::Json(value),
            Err(e) => Body::Unencodable(json_error_position(&e)),
        };
        self
    }

    /// Sets a form body.
    pub fn form(mut self, fields: &[(&str, &str)]) -> Self {
        self.body = Body::Form(
            fields
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        );
        self
    }

    /// Sends the request under the failure policy: refresh once on expiry, back off on rate
    /// limits, retry server errors with the same idempotency key; everything else becomes a
    /// typed [`StepError`] without a retry.
    pub async fn send(self) -> Result<StepResponse, StepError> {
        let http = self.http;
        let source = http.source();
        let connector = source.connector().to_owned();
        let provider = source.provider().to_owned();
        let mut headers = Vec::new();
        if let Some(name) = source.idempotency_header() {
            headers.push((name.to_owned(), http.idempotency_key.clone()));
        }
        headers.extend(self.headers);
        let request = TokenRequest {
            method: self.method,
            url: self.url,
            query: self.query,
            headers,
            body: match self.body {
                Body::None => RequestBody::None,
                Body::Unencodable(e) => {
                    return Err(StepError::Runtime(format!(
                        "the request body does not encode as JSON: {e}"
                    )));
                }
                Body::Json(v) => RequestBody::Json(v),
                Body::Form(f) => RequestBody::Form(f),
            },
        };
        let mut state = AttemptState::default();
        let mut number = 0u32;
        loop {
            number += 1;
            state.now = Some(std::time::SystemTime::now());
            let (status, headers, body) = match source.send(&request).await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    let headers = response.headers().clone();
                    match response.bytes().await {
                        Ok(bytes) => (status, headers, bytes.to_vec()),
                        Err(_) => (0, http::HeaderMap::new(), Vec::new()),
                    }
                }
                Err(TokenError::Transport(_)) => (0, http::HeaderMap::new(), Vec::new()),
                Err(e) => return Err(token_failure(&connector, e)),
            };
            // No answer: the provider may have committed the write. Resending is safe only
            // when it deduplicates by the idempotency key; otherwise the engine settles it.
            if status == 0 && http.no_resend {
                return Err(StepError::OutcomeUnknown { connector });
            }
            let classification = classify::classify_with(
                &provider,
                source.classification_rules(),
                RequestKind::Api,
                status,
                &headers,
                &body,
            );
            let decision = http
                .access
                .policy
                .decide(&provider, &classification, &state);
            tracing::debug!(connector = %connector, status, class = ?decision.class, action = ?decision.action, "step call classified");
            if let Some(observer) = &http.access.observer {
                let wait = match &decision.action {
                    Action::Backoff { wait } | Action::RetrySameKey { wait } => Some(*wait),
                    _ => None,
                };
                observer
                    .attempt(HttpAttempt {
                        number,
                        method: request.method.to_string(),
                        status,
                        class: decision.class,
                        wait,
                    })
                    .await;
            }
            match decision.action {
                Action::Proceed => {
                    return Ok(StepResponse {
                        status,
                        headers,
                        body,
                    });
                }
                Action::RefreshThenRetry => {
                    source
                        .refresh_after_expiry()
                        .await
                        .map_err(|e| token_failure(&connector, e))?;
                    state.refreshed_after_expiry = true;
                }
                Action::Backoff { wait } => {
                    state.rate_limit_retries += 1;
                    source.sleep(wait).await;
                }
                Action::RetrySameKey { wait } => {
                    state.server_retries += 1;
                    source.sleep(wait).await;
                }
                Action::NeedsConsent { needed_scopes, .. } => {
                    return Err(StepError::Auth {
                        connector,
                        class: FailureClass::InsufficientScope,
                        needed_scopes,
                        consent_params: Vec::new(),
                    });
                }
                Action::NeedsReauthorization { step_up } => {
                    if let Err(e) = source.require_reauthorization().await {
                        tracing::error!(connector = %connector, error = %e, "could not mark the account for re-authorization");
                    }
                    return Err(StepError::Auth {
                        connector,
                        class: decision.class,
                        needed_scopes: Vec::new(),
                        consent_params: step_up.map(step_up_params).unwrap_or_default(),
                    });
                }
                Action::FailDomain => {
                    return Err(StepError::Forbidden {
                        connector,
                        message: refusal_message(status, decision.class, &classification),
                    });
                }
                Action::AlertOperator => {
                    return Err(StepError::Auth {
                        connector,
                        class: FailureClass::InvalidClient,
                        needed_scopes: Vec::new(),
                        consent_params: Vec::new(),
                    });
                }
                Action::GiveUp { retry_after } => {
                    let wait = retry_after
                        .map(|d| format!(", provider asked to wait {}s", d.as_secs()))
                        .unwrap_or_default();
                    return Err(StepError::Unavailable {
                        connector,
                        message: format!(
                            "{:?} after bounded retries (last status {status}{wait})",
                            decision.class
                        ),
                    });
                }
            }
        }
    }
}

/// The authorization-request parameters a step-up demands (RFC 9470, and Entra's claims).
fn step_up_params(step_up: crate::classify::StepUp) -> Vec<(String, String)> {
    let mut params = Vec::new();
    if let Some(acr) = step_up.acr_values {
        params.push(("acr_values".to_owned(), acr));
    }
    if let Some(age) = step_up.max_age {
        params.push(("max_age".to_owned(), age.as_secs().to_string()));
    }
    if let Some(claims) = step_up.claims {
        params.push(("claims".to_owned(), claims));
    }
    params
}

/// A secret-free description of a refused call, for the step error: the status, the class and
/// the provider's error code if it passes [`classify::sanitized_code`]. Nothing else of the body
/// is kept: providers echo tokens, emails and record contents in their error texts, and the step
/// error is stored forever (journal, run state, audit trail).
fn refusal_message(
    status: u16,
    class: FailureClass,
    classification: &classify::Classification,
) -> String {
    let code = classification
        .error_code
        .as_deref()
        .and_then(classify::sanitized_code)
        .map(|code| format!(", code {code}"))
        .unwrap_or_default();
    format!("HTTP {status} ({class:?}{code})")
}

/// A JSON error by category and position only: serde's own message quotes the offending value,
/// which may be a secret a provider echoed.
fn json_error_position(e: &serde_json::Error) -> String {
    let category = match e.classify() {
        serde_json::error::Category::Io => "I/O error",
        serde_json::error::Category::Syntax => "syntax error",
        serde_json::error::Category::Data => "wrong shape or type",
        serde_json::error::Category::Eof => "unexpected end of input",
    };
    if e.line() == 0 {
        category.to_owned()
    } else {
        format!("{category} at line {} column {}", e.line(), e.column())
    }
}

/// A token-source failure seen from a step: revocation and missing accounts are
/// authorization failures the chain policy handles; the rest are runtime errors.
fn token_failure(connector: &str, error: TokenError) -> StepError {
    let class = match &error {
        TokenError::Revoked(_) => Some(FailureClass::GrantRevoked),
        TokenError::InvalidClient(_) => Some(FailureClass::InvalidClient),
        _ => None,
    };
    match class {
        Some(class) => StepError::Auth {
            connector: connector.to_owned(),
            class,
            needed_scopes: Vec::new(),
            consent_params: Vec::new(),
        },
        None => StepError::Runtime(error.to_string()),
    }
}
