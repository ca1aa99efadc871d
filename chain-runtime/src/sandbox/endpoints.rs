//! The OAuth endpoints every emulator shares (authorize, token) and the request-parsing
//! helpers of the provider handlers (bearer token, form or JSON parameters, client
//! credentials).

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, LOCATION};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::Value;

use super::faults::FaultKind;
use super::ledger::TokenRequestRecord;
use super::oauth::{AuthorizeOutcome, TokenError};
use super::server::ConnKill;
use super::state::{Shared, StateInner};
use super::wire::{ApiReply, ProviderImpl, TokenCtx};

/// Reads the bearer token (`Bearer x`, or Salesforce's `OAuth x`).
pub fn bearer(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    (scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("oauth"))
        .then(|| token.trim().to_owned())
        .filter(|t| !t.is_empty())
}

/// Parses a JSON object or a form body into string parameters.
pub fn params(headers: &HeaderMap, body: &[u8]) -> HashMap<String, String> {
    let is_json = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("json"));
    if is_json {
        match serde_json::from_slice::<serde_json::Map<String, Value>>(body) {
            Ok(map) => map
                .into_iter()
                .map(|(k, v)| {
                    let s = match v {
                        Value::String(s) => s,
                        other => other.to_string(),
                    };
                    (k, s)
                })
                .collect(),
            Err(_) => HashMap::new(),
        }
    } else {
        url::form_urlencoded::parse(body).into_owned().collect()
    }
}

/// Client credentials from HTTP Basic or from the parameters.
fn client_credentials(
    headers: &HeaderMap,
    p: &HashMap<String, String>,
) -> (Option<String>, Option<String>) {
    let basic = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| {
            base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .ok()
        })
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.split_once(':').map(|(i, s)| (i.to_owned(), s.to_owned())));
    match basic {
        Some((id, secret)) => (Some(id), Some(secret)),
        None => (p.get("client_id").cloned(), p.get("client_secret").cloned()),
    }
}

/// Checks the client of a request to a side endpoint (revoke, introspect).
pub fn check_client_of<P: ProviderImpl>(
    shared: &Shared<P>,
    headers: &HeaderMap,
    p: &HashMap<String, String>,
) -> Result<(), TokenError> {
    let (id, secret) = client_credentials(headers, p);
    shared
        .lock()
        .oauth
        .check_client(id.as_deref(), secret.as_deref())
}

/// GET authorize: 302 to the redirect URI (code or error), or 400.
pub async fn authorize_endpoint<P: ProviderImpl>(
    State(shared): State<Arc<Shared<P>>>,
    Query(p): Query<HashMap<String, String>>,
) -> Response {
    let outcome = {
        let mut st = shared.lock();
        let now = st.now();
        st.oauth.authorize(&p, now)
    };
    match outcome {
        AuthorizeOutcome::Redirect(url) => match HeaderValue::from_str(&url) {
            Ok(v) => (StatusCode::FOUND, [(LOCATION, v)]).into_response(),
            Err(_) => (
                StatusCode::BAD_REQUEST,
                "redirect URL is not valid header text",
            )
                .into_response(),
        },
        AuthorizeOutcome::BadRequest(msg) => (StatusCode::BAD_REQUEST, msg).into_response(),
    }
}

/// POST token: faults, client authentication, code exchange or refresh.
pub async fn token_endpoint<P: ProviderImpl>(
    State(shared): State<Arc<Shared<P>>>,
    axum::Extension(kill): axum::Extension<ConnKill>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let p = params(&headers, &body);
    let grant_type = match p.get("grant_type") {
        Some(g) => g.clone(),
        // Slack's oauth.v2.access treats a bare `code` as a code exchange.
        None if p.contains_key("code") => "authorization_code".to_owned(),
        None => String::new(),
    };
    let is_refresh = grant_type == "refresh_token";
    let plan = shared.lock().token_faults.take(is_refresh);
    let record = |st: &mut StateInner<P::Data>, rec: TokenRequestRecord| st.ledger.tokens.push(rec);
    let mut fault = None;
    if let Some(d) = plan.hang {
        tokio::time::sleep(d).await;
        fault = Some(FaultKind::TokenHang);
    }
    if plan.timeout {
        {
            let mut st = shared.lock();
            let seq = st.ledger.seq();
            record(
                &mut st,
                token_record(
                    seq,
                    &grant_type,
                    None,
                    None,
                    None,
                    Some(FaultKind::TokenTimeout),
                ),
            );
        }
        return std::future::pending::<Response>().await;
    }
    if plan.fail {
        let reply = P::token_server_error();
        let mut st = shared.lock();
        let seq = st.ledger.seq();
        let status = reply.status.as_u16();
        record(
            &mut st,
            token_record(
                seq,
                &grant_type,
                Some(status),
                None,
                Some("server_error".into()),
                Some(FaultKind::ServerError),
            ),
        );
        return no_store(reply);
    }
    let (id, secret) = client_credentials(&headers, &p);
    let (reply, issued) = {
        let mut st = shared.lock();
        // Leak tests need the cleartext verifier and whatever client secret was presented.
        for value in [p.get("code_verifier"), secret.as_ref()]
            .into_iter()
            .flatten()
        {
            st.oauth.note_secret(value);
        }
        let now = st.now();
        let result = st
            .oauth
            .check_client(id.as_deref(), secret.as_deref())
            .and_then(|()| match grant_type.as_str() {
                "authorization_code" => st.oauth.exchange_code(&p, now),
                "refresh_token" => st.oauth.refresh(&p, now),
                _ => Err(TokenError::UnsupportedGrantType),
            });
        let seq = st.ledger.seq();
        match result {
            Ok(issued) => {
                let client_id = st.oauth.client.client_id.clone();
                let ctx = TokenCtx {
                    client_id: &client_id,
                    base_url: &shared.base_url,
                    tenant: &shared.tenant,
                    client_secret: secret.as_deref().unwrap_or_default(),
                    issued_at: st.wall_now(),
                };
                let reply = P::token_success(&issued, &ctx);
                let lost = plan.lose_response;
                let status = (!lost).then_some(reply.status.as_u16());
                let fault = if lost {
                    Some(FaultKind::ResponseLost)
                } else {
                    fault
                };
                let mut rec = token_record(
                    seq,
                    &grant_type,
                    status,
                    Some(issued.subject.clone()),
                    None,
                    fault,
                );
                rec.issued = true;
                record(&mut st, rec);
                (reply, true)
            }
            Err(e) => {
                let reply = P::token_failure(&e);
                let rec = token_record(
                    seq,
                    &grant_type,
                    Some(reply.status.as_u16()),
                    None,
                    reply.error.clone(),
                    fault,
                );
                record(&mut st, rec);
                (reply, false)
            }
        }
    };
    if issued && plan.lose_response {
        return kill.reset().await;
    }
    no_store(reply)
}

fn token_record(
    seq: u64,
    grant_type: &str,
    status: Option<u16>,
    subject: Option<String>,
    error: Option<String>,
    fault: Option<FaultKind>,
) -> TokenRequestRecord {
    TokenRequestRecord {
        seq,
        grant_type: grant_type.to_owned(),
        status,
        issued: false,
        subject,
        error,
        fault,
    }
}

/// Token responses are never cacheable (RFC 6749 §5.1).
pub fn no_store(reply: ApiReply) -> Response {
    let mut resp = reply.into_response();
    resp.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}
