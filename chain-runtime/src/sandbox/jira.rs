//! Jira Cloud behind Atlassian OAuth 2.0 (3LO): `auth.atlassian.com` endpoints, `/me`,
//! accessible resources and `/rest/api/3/issue`, both at the root and under
//! `/ex/jira/{cloudId}` as on `api.atlassian.com`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use super::api::ApiRequest;
use super::client::{ClientConfig, Rotation, random_uuid};
use super::endpoints::{authorize_endpoint, params, token_endpoint};
use super::oauth::{Issued, TokenError};
use super::state::{Shared, epoch_secs};
use super::wire::{ApiCtx, ApiFailure, ApiReply, OpResult, ProviderImpl, TokenCtx};
use super::{Emulator, EmulatorConfig, Urls};

/// Marker type of the Jira emulator (see [`Jira`](super::Jira)).
#[derive(Clone, Copy, Debug)]
pub struct JiraApi;

struct Issue {
    id: String,
    key: String,
    fields: Value,
}

/// Issues by key (deleted issues are removed).
#[derive(Default)]
pub struct JiraData {
    issues: BTreeMap<String, Issue>,
    created: u64,
}

type Sh = Arc<Shared<JiraApi>>;

/// Scope needed to read issues.
pub const READ: &str = "read:jira-work";
/// Scope needed to create and delete issues.
pub const WRITE: &str = "write:jira-work";

fn gateway(message: &str) -> ApiReply {
    ApiReply::json(
        StatusCode::UNAUTHORIZED,
        json!({ "code": 401, "message": message }),
    )
    .err(message)
}

fn auth0(status: StatusCode, error: &str, description: &str) -> ApiReply {
    ApiReply::json(
        status,
        json!({ "error": error, "error_description": description }),
    )
    .err(error)
}

fn issue_missing() -> ApiReply {
    ApiReply::json(
        StatusCode::NOT_FOUND,
        json!({ "errorMessages": ["Issue does not exist or you do not have permission to see it."], "errors": {} }),
    )
    .err("issue_not_found")
}

/// `yyyy-MM-ddTHH:mmZ` (the `X-RateLimit-Reset` format).
fn iso_minute(t: SystemTime) -> String {
    let secs = epoch_secs(t);
    let days = i64::try_from(secs / 86_400).unwrap_or_default();
    let (hh, mm) = ((secs % 86_400) / 3600, (secs % 3600) / 60);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}Z")
}

impl ProviderImpl for JiraApi {
    const NAME: &'static str = "Jira";
    type Data = JiraData;
    const REFRESH_SCOPES: &'static [&'static str] = &["offline_access"];

    fn default_config() -> EmulatorConfig {
        EmulatorConfig {
            client: ClientConfig::new("sandbox-client", "sandbox-secret"),
            access_token_lifetime: Duration::from_secs(3600),
            rotation: Rotation::WithLeeway(Duration::from_secs(600)),
            refresh_tokens: true,
        }
    }

    fn new_tenant() -> String {
        random_uuid()
    }

    fn token_prefixes(_tenant: &str) -> (String, String) {
        (
            "eyJraWQiOiJzYW5kYm94In0.".to_owned(),
            "eyJraWQiOiJydCJ9.".to_owned(),
        )
    }

    fn new_subject(_base_url: &str, _tenant: &str, _n: usize) -> String {
        format!("712020:{}", random_uuid())
    }

    fn urls(base: &str, tenant: &str) -> Urls {
        Urls {
            base: base.to_owned(),
            authorize: format!("{base}/authorize"),
            token: format!("{base}/oauth/token"),
            revoke: format!("{base}/oauth/revoke"),
            introspect: None,
            userinfo: Some(format!("{base}/me")),
            api_base: format!("{base}/ex/jira/{tenant}"),
        }
    }

    fn router(shared: Arc<Shared<Self>>) -> Router {
        Router::new()
            .route("/authorize", get(authorize_endpoint::<Self>))
            .route("/oauth/token", post(token_endpoint::<Self>))
            .route("/oauth/revoke", post(revoke))
            .route("/me", get(me))
            .route(
                "/oauth/token/accessible-resources",
                get(accessible_resources),
            )
            .route("/rest/api/3/issue", post(create_issue))
            .route(
                "/rest/api/3/issue/{key}",
                get(get_issue).delete(delete_issue),
            )
            .route("/ex/jira/{cloud}/rest/api/3/issue", post(create_issue))
            .route(
                "/ex/jira/{cloud}/rest/api/3/issue/{key}",
                get(get_issue).delete(delete_issue),
            )
            .with_state(shared)
    }

    fn api_failure(failure: ApiFailure<'_>, now: SystemTime) -> ApiReply {
        match failure {
            ApiFailure::NotAuthed
            | ApiFailure::InvalidToken
            | ApiFailure::Expired
            | ApiFailure::Revoked => gateway("Unauthorized"),
            ApiFailure::MissingScope { .. } => gateway("Unauthorized; scope does not match"),
            ApiFailure::RateLimited(after) => ApiReply::empty(StatusCode::TOO_MANY_REQUESTS)
                .err("rate_limited")
                .header("retry-after", after.as_secs().max(1).to_string())
                .header("x-ratelimit-limit", "100")
                .header("x-ratelimit-remaining", "0")
                .header("x-ratelimit-reset", iso_minute(now + after))
                .header("ratelimit-reason", "jira-burst-based"),
            ApiFailure::ServerError => ApiReply::json(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({ "errorMessages": ["Service Unavailable"], "errors": {} }),
            )
            .err("service_unavailable"),
        }
    }

    fn token_failure(error: &TokenError) -> ApiReply {
        match error {
            TokenError::InvalidClientId | TokenError::BadClientSecret => {
                auth0(StatusCode::UNAUTHORIZED, "access_denied", "Unauthorized")
            }
            TokenError::DeadRefresh => auth0(
                StatusCode::FORBIDDEN,
                "invalid_grant",
                "Unknown or invalid refresh token.",
            ),
            TokenError::InvalidCode => auth0(
                StatusCode::FORBIDDEN,
                "invalid_grant",
                "Invalid authorization code",
            ),
            TokenError::PkceMismatch => auth0(
                StatusCode::FORBIDDEN,
                "invalid_grant",
                "Failed to verify code verifier",
            ),
            TokenError::RedirectMismatch => auth0(
                StatusCode::FORBIDDEN,
                "invalid_grant",
                "The redirect_uri does not match the one of the authorization request.",
            ),
            TokenError::UnsupportedGrantType => auth0(
                StatusCode::FORBIDDEN,
                "unsupported_grant_type",
                "Unsupported grant type",
            ),
            TokenError::InvalidRequest(what) => {
                auth0(StatusCode::BAD_REQUEST, "invalid_request", what)
            }
        }
    }

    fn token_server_error() -> ApiReply {
        auth0(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "Service temporarily unavailable",
        )
    }

    fn token_success(issued: &Issued, _ctx: &TokenCtx<'_>) -> ApiReply {
        let mut body = json!({
            "access_token": issued.access_token,
            "expires_in": issued.expires_in.as_secs(),
            "token_type": "Bearer",
            "scope": issued.scopes.join(" "),
        });
        if let (Some(rt), Some(obj)) = (&issued.refresh_token, body.as_object_mut()) {
            obj.insert("refresh_token".into(), json!(rt));
        }
        ApiReply::json(StatusCode::OK, body)
    }
}

async fn revoke(State(shared): State<Sh>, headers: HeaderMap, body: Bytes) -> Response {
    let p = params(&headers, &body);
    if let Some(token) = p.get("token") {
        shared.lock().oauth.revoke_token(token, false);
    }
    StatusCode::OK.into_response()
}

async fn me(api: ApiRequest<JiraApi>) -> Response {
    api.run(false, Some("read:me"), |_, ctx| {
        OpResult::reply(ApiReply::json(
            StatusCode::OK,
            json!({
                "account_id": ctx.subject, "account_type": "atlassian", "account_status": "active",
                "email": ctx.login, "name": ctx.login, "nickname": ctx.login,
            }),
        ))
    })
    .await
}

async fn accessible_resources(api: ApiRequest<JiraApi>) -> Response {
    api.run(false, None, |_, ctx| {
        OpResult::reply(ApiReply::json(
            StatusCode::OK,
            json!([{ "id": ctx.tenant, "url": ctx.base_url, "name": "sandbox", "scopes": ctx.scopes, "avatarUrl": "" }]),
        ))
    })
    .await
}

fn self_url(ctx: &ApiCtx<'_>, id: &str) -> String {
    format!(
        "{}/ex/jira/{}/rest/api/3/issue/{id}",
        ctx.base_url, ctx.tenant
    )
}

/// Looks an issue up by key or numeric id.
fn find<'a>(data: &'a JiraData, key: &str) -> Option<&'a Issue> {
    data.issues
        .get(key)
        .or_else(|| data.issues.values().find(|i| i.id == key))
}

/// Path parameters of the create route: `{cloud}` is present under `/ex/jira/{cloud}/...`
/// and absent at the root path.
#[derive(Deserialize)]
struct CloudPath {
    cloud: Option<String>,
}

/// Path parameters of the issue routes, with the optional `{cloud}` as in [`CloudPath`].
#[derive(Deserialize)]
struct IssuePath {
    cloud: Option<String>,
    key: String,
}

fn wrong_cloud(shared: &Sh, cloud: Option<&str>) -> Option<Response> {
    cloud.filter(|c| *c != shared.tenant).map(|_| {
        ApiReply::json(
            StatusCode::NOT_FOUND,
            json!({ "code": 404, "message": "Cloud id not found" }),
        )
        .into_response()
    })
}

async fn create_issue(
    api: ApiRequest<JiraApi>,
    Path(CloudPath { cloud }): Path<CloudPath>,
    body: Bytes,
) -> Response {
    if let Some(resp) = wrong_cloud(api.shared(), cloud.as_deref()) {
        return resp;
    }
    api.run(true, Some(WRITE), |data, ctx| {
        let fields = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v.get("fields").cloned())
            .unwrap_or(Value::Null);
        let project = fields
            .pointer("/project/key")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let summary = fields
            .get("summary")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let mut errors = serde_json::Map::new();
        if project.is_empty() {
            errors.insert("project".into(), json!("Specify a valid project ID or key"));
        }
        if summary.is_empty() {
            errors.insert(
                "summary".into(),
                json!("You must specify a summary of the issue."),
            );
        }
        if !errors.is_empty() {
            return OpResult::reply(
                ApiReply::json(
                    StatusCode::BAD_REQUEST,
                    json!({ "errorMessages": [], "errors": errors }),
                )
                .err("invalid_issue"),
            );
        }
        data.created += 1;
        let id = (10_000 + data.created).to_string();
        let key = format!("{project}-{}", data.created);
        let reply = ApiReply::json(
            StatusCode::CREATED,
            json!({ "id": id, "key": key, "self": self_url(ctx, &id) }),
        );
        data.issues.insert(
            key.clone(),
            Issue {
                id,
                key: key.clone(),
                fields,
            },
        );
        OpResult::committed(reply, key)
    })
    .await
}

async fn get_issue(
    api: ApiRequest<JiraApi>,
    Path(IssuePath { cloud, key }): Path<IssuePath>,
) -> Response {
    if let Some(resp) = wrong_cloud(api.shared(), cloud.as_deref()) {
        return resp;
    }
    api.run(false, Some(READ), |data, ctx| match find(data, &key) {
        Some(issue) => OpResult::reply(ApiReply::json(
            StatusCode::OK,
            json!({ "id": issue.id, "key": issue.key, "self": self_url(ctx, &issue.id), "fields": issue.fields }),
        )),
        None => OpResult::reply(issue_missing()),
    })
    .await
}

async fn delete_issue(
    api: ApiRequest<JiraApi>,
    Path(IssuePath { cloud, key }): Path<IssuePath>,
) -> Response {
    if let Some(resp) = wrong_cloud(api.shared(), cloud.as_deref()) {
        return resp;
    }
    api.run(true, Some(WRITE), |data, _| {
        match find(data, &key).map(|i| i.key.clone()) {
            Some(k) => {
                data.issues.remove(&k);
                OpResult::committed(ApiReply::empty(StatusCode::NO_CONTENT), k)
            }
            None => OpResult::reply(issue_missing()),
        }
    })
    .await
}

impl Emulator<JiraApi> {
    /// The fields of a live issue, by key (`None` once deleted).
    pub fn issue(&self, key: &str) -> Option<Value> {
        self.shared
            .lock()
            .data
            .issues
            .get(key)
            .map(|i| i.fields.clone())
    }

    /// Keys of the live issues.
    pub fn issue_keys(&self) -> Vec<String> {
        self.shared.lock().data.issues.keys().cloned().collect()
    }
}
