//! Salesforce: `/services/oauth2/*`, the identity URL and `sobjects/Opportunity`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use super::api::ApiRequest;
use super::client::{ClientConfig, Rotation, random_upper};
use super::endpoints::{authorize_endpoint, check_client_of, no_store, params, token_endpoint};
use super::oauth::{Issued, TokenError};
use super::state::{Shared, epoch_millis, epoch_secs};
use super::wire::{ApiFailure, ApiReply, OpResult, ProviderImpl, TokenCtx};
use super::{Emulator, EmulatorConfig, Urls};

/// Marker type of the Salesforce emulator (see [`Salesforce`](super::Salesforce)).
#[derive(Clone, Copy, Debug)]
pub struct SalesforceApi;

/// Opportunity records by id.
#[derive(Default)]
pub struct SalesforceData {
    opportunities: BTreeMap<String, Map<String, Value>>,
    created: u64,
}

type Sh = Arc<Shared<SalesforceApi>>;

const API_VERSION: &str = "v60.0";

fn sf_error(status: StatusCode, code: &str, message: &str) -> ApiReply {
    ApiReply::json(status, json!([{ "message": message, "errorCode": code }])).err(code)
}

fn oauth_error(error: &str, description: &str) -> ApiReply {
    ApiReply::json(
        StatusCode::BAD_REQUEST,
        json!({ "error": error, "error_description": description }),
    )
    .err(error)
}

/// HMAC-SHA256 (RFC 2104), for the token response's `signature`.
fn hmac_sha256(key: &[u8], msg: &[u8]) -> Vec<u8> {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    inner.update(msg);
    let inner = inner.finalize();
    let mut outer = Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner);
    outer.finalize().to_vec()
}

impl ProviderImpl for SalesforceApi {
    const NAME: &'static str = "Salesforce";
    type Data = SalesforceData;
    const REFRESH_SCOPES: &'static [&'static str] = &["refresh_token", "offline_access"];

    fn default_config() -> EmulatorConfig {
        EmulatorConfig {
            client: ClientConfig::new("sandbox-client", "sandbox-secret"),
            access_token_lifetime: Duration::from_secs(2 * 3600),
            rotation: Rotation::Never,
            refresh_tokens: true,
        }
    }

    fn new_tenant() -> String {
        format!("00D{}", random_upper(15))
    }

    fn token_prefixes(tenant: &str) -> (String, String) {
        (format!("{tenant}!"), "5Aep861".to_owned())
    }

    fn new_subject(base_url: &str, tenant: &str, n: usize) -> String {
        format!("{base_url}/id/{tenant}/005{n:0>12}AAA")
    }

    fn urls(base: &str, _tenant: &str) -> Urls {
        Urls {
            base: base.to_owned(),
            authorize: format!("{base}/services/oauth2/authorize"),
            token: format!("{base}/services/oauth2/token"),
            revoke: format!("{base}/services/oauth2/revoke"),
            introspect: Some(format!("{base}/services/oauth2/introspect")),
            userinfo: None,
            api_base: format!("{base}/services/data/{API_VERSION}"),
        }
    }

    fn has_scope(granted: &[String], needed: &str) -> bool {
        granted.iter().any(|g| g == needed || g == "full")
    }

    fn router(shared: Arc<Shared<Self>>) -> Router {
        Router::new()
            .route(
                "/services/oauth2/authorize",
                get(authorize_endpoint::<Self>),
            )
            .route("/services/oauth2/token", post(token_endpoint::<Self>))
            .route("/services/oauth2/revoke", post(revoke))
            .route("/services/oauth2/introspect", post(introspect))
            .route("/id/{org}/{user}", get(identity))
            .route(
                "/services/data/{version}/sobjects/Opportunity",
                post(create_opportunity),
            )
            .route(
                "/services/data/{version}/sobjects/Opportunity/{id}",
                get(get_opportunity).patch(update_opportunity),
            )
            .with_state(shared)
    }

    fn api_failure(failure: ApiFailure<'_>, _now: SystemTime) -> ApiReply {
        match failure {
            ApiFailure::NotAuthed
            | ApiFailure::InvalidToken
            | ApiFailure::Expired
            | ApiFailure::Revoked => sf_error(
                StatusCode::UNAUTHORIZED,
                "INVALID_SESSION_ID",
                "Session expired or invalid",
            ),
            ApiFailure::MissingScope { .. } => sf_error(
                StatusCode::UNAUTHORIZED,
                "INVALID_SESSION_ID",
                "This session is not valid for use with the REST API",
            ),
            // Salesforce's daily limit is a rolling window: no Retry-After.
            ApiFailure::RateLimited(_) => sf_error(
                StatusCode::FORBIDDEN,
                "REQUEST_LIMIT_EXCEEDED",
                "TotalRequests Limit exceeded.",
            ),
            ApiFailure::ServerError => sf_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "SERVER_UNAVAILABLE",
                "Server is temporarily unavailable. Please try again later.",
            ),
        }
    }

    fn decorate(reply: &mut ApiReply, api_calls: u64, _scopes: Option<&[String]>) {
        reply.add_header("sforce-limit-info", format!("api-usage={api_calls}/15000"));
    }

    fn token_failure(error: &TokenError) -> ApiReply {
        match error {
            TokenError::InvalidClientId => {
                oauth_error("invalid_client_id", "client identifier invalid")
            }
            TokenError::BadClientSecret => {
                oauth_error("invalid_client", "invalid client credentials")
            }
            TokenError::InvalidCode => oauth_error("invalid_grant", "expired authorization code"),
            TokenError::PkceMismatch => oauth_error("invalid_grant", "invalid code verifier"),
            TokenError::RedirectMismatch => oauth_error(
                "redirect_uri_mismatch",
                "redirect_uri must match configuration",
            ),
            TokenError::DeadRefresh => oauth_error("invalid_grant", "expired access/refresh token"),
            TokenError::UnsupportedGrantType => {
                oauth_error("unsupported_grant_type", "grant type not supported")
            }
            TokenError::InvalidRequest(what) => oauth_error("invalid_request", what),
        }
    }

    fn token_server_error() -> ApiReply {
        ApiReply::json(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({ "error": "unknown_error", "error_description": "retry your request" }),
        )
        .err("unknown_error")
    }

    fn token_success(issued: &Issued, ctx: &TokenCtx<'_>) -> ApiReply {
        let issued_at = epoch_millis(ctx.issued_at).to_string();
        let signature = base64::engine::general_purpose::STANDARD.encode(hmac_sha256(
            ctx.client_secret.as_bytes(),
            format!("{}{}", issued.subject, issued_at).as_bytes(),
        ));
        let mut body = json!({
            "access_token": issued.access_token,
            "signature": signature,
            "scope": issued.scopes.join(" "),
            "instance_url": ctx.base_url,
            "id": issued.subject,
            "token_type": "Bearer",
            "issued_at": issued_at,
        });
        if let (Some(rt), Some(obj)) = (&issued.refresh_token, body.as_object_mut()) {
            obj.insert("refresh_token".into(), json!(rt));
        }
        ApiReply::json(StatusCode::OK, body)
    }
}

/// RFC 7009: 200 for known and unknown tokens alike.
async fn revoke(State(shared): State<Sh>, headers: HeaderMap, body: Bytes) -> Response {
    let p = params(&headers, &body);
    if let Some(token) = p.get("token") {
        shared.lock().oauth.revoke_token(token, false);
    }
    StatusCode::OK.into_response()
}

/// RFC 7662, with client authentication.
async fn introspect(State(shared): State<Sh>, headers: HeaderMap, body: Bytes) -> Response {
    let p = params(&headers, &body);
    if let Err(e) = check_client_of(&shared, &headers, &p) {
        return no_store(SalesforceApi::token_failure(&e));
    }
    let st = shared.lock();
    let (now, wall) = (st.now(), st.wall_now());
    let info = p.get("token").and_then(|t| st.oauth.introspect(t, now));
    let client_id = st.oauth.client.client_id.clone();
    drop(st);
    let body = match info {
        None => json!({ "active": false }),
        Some(i) => {
            let iat = epoch_secs(wall).saturating_sub(i.age.as_secs());
            let mut body = json!({
                "active": true,
                "scope": i.scopes.join(" "),
                "client_id": client_id,
                "username": i.login,
                "sub": i.subject,
                "token_type": if i.is_refresh { "refresh_token" } else { "access_token" },
                "iat": iat,
                "nbf": iat,
            });
            if let (Some(left), Some(obj)) = (i.expires_in, body.as_object_mut()) {
                obj.insert("exp".into(), json!(epoch_secs(wall) + left.as_secs()));
            }
            body
        }
    };
    no_store(ApiReply::json(StatusCode::OK, body))
}

async fn identity(
    api: ApiRequest<SalesforceApi>,
    Path((org, user)): Path<(String, String)>,
) -> Response {
    api.run(false, None, |_, ctx| {
        if ctx.subject != format!("{}/id/{org}/{user}", ctx.base_url) {
            return OpResult::reply(sf_error(
                StatusCode::FORBIDDEN,
                "INSUFFICIENT_ACCESS",
                "Bad_Id",
            ));
        }
        OpResult::reply(ApiReply::json(
            StatusCode::OK,
            json!({
                "id": ctx.subject, "user_id": user, "organization_id": org,
                "username": ctx.login, "active": true,
                "urls": { "rest": format!("{}/services/data/v{{version}}/", ctx.base_url) },
            }),
        ))
    })
    .await
}

fn record_json(version: &str, id: &str, fields: &Map<String, Value>) -> Value {
    let mut obj = Map::new();
    obj.insert(
        "attributes".into(),
        json!({ "type": "Opportunity", "url": format!("/services/data/{version}/sobjects/Opportunity/{id}") }),
    );
    obj.insert("Id".into(), json!(id));
    obj.extend(fields.clone());
    Value::Object(obj)
}

fn not_found() -> ApiReply {
    sf_error(
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
        "The requested resource does not exist",
    )
}

fn parse_fields(body: &[u8]) -> Result<Map<String, Value>, ApiReply> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(sf_error(
            StatusCode::BAD_REQUEST,
            "JSON_PARSER_ERROR",
            "The request body must be a JSON object of field values.",
        )),
    }
}

async fn get_opportunity(
    api: ApiRequest<SalesforceApi>,
    Path((version, id)): Path<(String, String)>,
) -> Response {
    api.run(false, Some("api"), |data, _| {
        match data.opportunities.get(&id) {
            Some(fields) => OpResult::reply(ApiReply::json(
                StatusCode::OK,
                record_json(&version, &id, fields),
            )),
            None => OpResult::reply(not_found()),
        }
    })
    .await
}

async fn update_opportunity(
    api: ApiRequest<SalesforceApi>,
    Path((_version, id)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    api.run(true, Some("api"), |data, _| {
        let fields = match parse_fields(&body) {
            Ok(f) => f,
            Err(reply) => return OpResult::reply(reply),
        };
        match data.opportunities.get_mut(&id) {
            Some(record) => {
                record.extend(fields);
                OpResult::committed(ApiReply::empty(StatusCode::NO_CONTENT), id.clone())
            }
            None => OpResult::reply(not_found()),
        }
    })
    .await
}

async fn create_opportunity(api: ApiRequest<SalesforceApi>, body: Bytes) -> Response {
    api.run(true, Some("api"), |data, _| {
        let fields = match parse_fields(&body) {
            Ok(f) => f,
            Err(reply) => return OpResult::reply(reply),
        };
        data.created += 1;
        let id = format!("006{:0>12}NEW", data.created);
        data.opportunities.insert(id.clone(), fields);
        OpResult::committed(
            ApiReply::json(
                StatusCode::CREATED,
                json!({ "id": id, "success": true, "errors": [] }),
            ),
            id,
        )
    })
    .await
}

impl Emulator<SalesforceApi> {
    /// Creates or replaces an Opportunity record (`fields` must be a JSON object, e.g.
    /// `{"StageName": "Prospecting", "Name": "Acme"}`; anything else stores no fields).
    pub fn seed_opportunity(&self, id: &str, fields: Value) {
        let fields = match fields {
            Value::Object(map) => map,
            _ => Map::new(),
        };
        self.shared
            .lock()
            .data
            .opportunities
            .insert(id.to_owned(), fields);
    }

    /// The current fields of an Opportunity (without `attributes`/`Id`).
    pub fn opportunity(&self, id: &str) -> Option<Value> {
        self.shared
            .lock()
            .data
            .opportunities
            .get(id)
            .map(|m| Value::Object(m.clone()))
    }
}
