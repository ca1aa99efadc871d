//! GitHub: the OAuth web flow (`/login/oauth/authorize`, `/login/oauth/access_token`), the
//! grant revocation of the REST API (`DELETE /applications/{client_id}/grant`), `GET /user`
//! and the issues of a repository.
//!
//! Two token lifecycles: by default a GitHub App's expiring user-to-server tokens (8 h access
//! token, 6-month refresh token; a refresh returns a new pair and kills the old refresh token
//! *and* the old access token at once); with [`Github::oauth_app_config`] a classic OAuth app's
//! tokens, which never expire and come without a refresh token. Token-endpoint errors are
//! HTTP 200 `{"error":…}`; a missing OAuth scope is a 404 whose only hint is the
//! `X-Accepted-OAuth-Scopes` vs `X-OAuth-Scopes` headers; rate limits are 403 with
//! `x-ratelimit-remaining: 0`. GitHub ignores `Idempotency-Key`. The token endpoint always
//! answers JSON, as GitHub does for `Accept: application/json` (which the vault sends); its
//! form-encoded default is not emulated.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use serde_json::{Value, json};

use super::api::ApiRequest;
use super::client::{ClientConfig, Rotation, random_digits};
use super::endpoints::{authorize_endpoint, check_client_of, params, token_endpoint};
use super::oauth::{AccessCheck, Issued, TokenError};
use super::state::{Shared, epoch_secs};
use super::wire::{ApiFailure, ApiReply, OpResult, ProviderImpl, TokenCtx};
use super::{Emulator, EmulatorConfig, Urls};

/// Marker type of the GitHub emulator (see [`Github`](super::Github)).
#[derive(Clone, Copy, Debug)]
pub struct GithubApi;

/// One issue of a repository.
struct Issue {
    title: String,
    state: String,
}

/// Issues by (`owner/repo`, number), and the last number per repository.
#[derive(Default)]
pub struct GithubData {
    issues: BTreeMap<(String, u64), Issue>,
    numbers: BTreeMap<String, u64>,
}

type Sh = Arc<Shared<GithubApi>>;

/// The OAuth scope the issue routes accept.
pub const REPO: &str = "repo";

const DOCS: &str = "https://docs.github.com/rest";

fn message(status: StatusCode, text: &str, code: &str) -> ApiReply {
    ApiReply::json(
        status,
        json!({ "message": text, "documentation_url": DOCS, "status": status.as_u16().to_string() }),
    )
    .err(code)
}

fn token_error(error: &str, description: &str) -> ApiReply {
    // GitHub answers token-endpoint errors with HTTP 200.
    ApiReply::json(
        StatusCode::OK,
        json!({ "error": error, "error_description": description,
                "error_uri": "https://docs.github.com/apps/managing-oauth-apps/troubleshooting-oauth-app-access-token-request-errors" }),
    )
    .err(error)
}

impl Emulator<GithubApi> {
    /// A classic OAuth app: access tokens that never expire, no refresh token.
    pub fn oauth_app_config() -> EmulatorConfig {
        GithubApi::default_config()
            .with_access_token_lifetime(Duration::from_secs(10 * 365 * 24 * 3600))
            .with_refresh_tokens(false)
            .with_rotation(Rotation::Never)
    }

    /// The title and state (`open`, `closed`) of an issue.
    pub fn issue(&self, repo: &str, number: u64) -> Option<(String, String)> {
        self.shared
            .lock()
            .data
            .issues
            .get(&(repo.to_owned(), number))
            .map(|i| (i.title.clone(), i.state.clone()))
    }

    /// Number of open issues in all repositories.
    pub fn open_issues(&self) -> usize {
        let st = self.shared.lock();
        st.data
            .issues
            .values()
            .filter(|i| i.state == "open")
            .count()
    }
}

impl ProviderImpl for GithubApi {
    const NAME: &'static str = "GitHub";
    type Data = GithubData;
    const REFRESH_SCOPES: &'static [&'static str] = &[];
    const HONORS_IDEMPOTENCY_KEY: bool = false;

    fn default_config() -> EmulatorConfig {
        EmulatorConfig {
            client: ClientConfig::new("sandbox-client", "sandbox-secret"),
            access_token_lifetime: Duration::from_secs(28_800),
            rotation: Rotation::ImmediateWithAccess,
            refresh_tokens: true,
        }
    }

    fn new_tenant() -> String {
        "sandbox-app".to_owned()
    }

    fn token_prefixes(_tenant: &str) -> (String, String) {
        ("ghu_".to_owned(), "ghr_".to_owned())
    }

    fn new_subject(_base_url: &str, _tenant: &str, _n: usize) -> String {
        random_digits(8)
    }

    fn urls(base: &str, _tenant: &str) -> Urls {
        Urls {
            base: base.to_owned(),
            authorize: format!("{base}/login/oauth/authorize"),
            token: format!("{base}/login/oauth/access_token"),
            revoke: format!("{base}/applications/{{client_id}}/grant"),
            introspect: None,
            userinfo: Some(format!("{base}/user")),
            api_base: base.to_owned(),
        }
    }

    fn router(shared: Arc<Shared<Self>>) -> Router {
        Router::new()
            .route("/login/oauth/authorize", get(authorize_endpoint::<Self>))
            .route("/login/oauth/access_token", post(token_endpoint::<Self>))
            .route("/applications/{client_id}/grant", delete(revoke_grant))
            .route("/user", get(user))
            .route("/repos/{owner}/{repo}/issues", post(create_issue))
            .route(
                "/repos/{owner}/{repo}/issues/{number}",
                get(get_issue).patch(update_issue),
            )
            .with_state(shared)
    }

    fn has_scope(granted: &[String], needed: &str) -> bool {
        granted.iter().any(|g| {
            g == needed
                || (g == "repo" && (needed == "public_repo" || needed.starts_with("repo:")))
                || (g == "user" && matches!(needed, "read:user" | "user:email" | "user:follow"))
        })
    }

    fn api_failure(failure: ApiFailure<'_>, now: SystemTime) -> ApiReply {
        match failure {
            ApiFailure::NotAuthed => message(
                StatusCode::UNAUTHORIZED,
                "Requires authentication",
                "requires_authentication",
            ),
            ApiFailure::InvalidToken | ApiFailure::Expired | ApiFailure::Revoked => message(
                StatusCode::UNAUTHORIZED,
                "Bad credentials",
                "bad_credentials",
            ),
            // Private resources are hidden: the scope failure is a 404 with the scope headers.
            ApiFailure::MissingScope { needed, .. } => {
                message(StatusCode::NOT_FOUND, "Not Found", "not_found")
                    .header("x-accepted-oauth-scopes", needed)
            }
            ApiFailure::RateLimited(after) => message(
                StatusCode::FORBIDDEN,
                "API rate limit exceeded for user ID 1. If you reach out to GitHub Support for help, please include the request ID.",
                "rate_limited",
            )
            .header("x-ratelimit-limit", "5000")
            .header("x-ratelimit-remaining", "0")
            .header("x-ratelimit-used", "5000")
            .header("x-ratelimit-resource", "core")
            .header(
                "x-ratelimit-reset",
                epoch_secs(now + after.max(Duration::from_secs(1))).to_string(),
            ),
            ApiFailure::ServerError => message(
                StatusCode::SERVICE_UNAVAILABLE,
                "Service Unavailable",
                "service_unavailable",
            ),
        }
    }

    fn decorate(reply: &mut ApiReply, api_calls: u64, scopes: Option<&[String]>) {
        if reply.status != StatusCode::FORBIDDEN || reply.error.as_deref() != Some("rate_limited") {
            reply.add_header("x-ratelimit-limit", "5000");
            reply.add_header(
                "x-ratelimit-remaining",
                5000u64.saturating_sub(api_calls).to_string(),
            );
        }
        if let Some(scopes) = scopes {
            reply.add_header("x-oauth-scopes", scopes.join(", "));
        }
        reply.add_header("x-github-request-id", format!("SANDBOX:{api_calls:08X}"));
    }

    fn token_failure(error: &TokenError) -> ApiReply {
        match error {
            TokenError::InvalidClientId | TokenError::BadClientSecret => token_error(
                "incorrect_client_credentials",
                "The client_id and/or client_secret passed are incorrect.",
            ),
            TokenError::InvalidCode | TokenError::PkceMismatch => token_error(
                "bad_verification_code",
                "The code passed is incorrect or expired.",
            ),
            TokenError::RedirectMismatch => token_error(
                "redirect_uri_mismatch",
                "The redirect_uri MUST match the registered callback URL for this application.",
            ),
            TokenError::DeadRefresh => token_error(
                "bad_refresh_token",
                "The refresh token passed is incorrect or expired.",
            ),
            TokenError::UnsupportedGrantType => {
                token_error("unsupported_grant_type", "The grant type is not supported.")
            }
            TokenError::InvalidRequest(what) => token_error("invalid_request", what),
        }
    }

    fn token_server_error() -> ApiReply {
        message(
            StatusCode::SERVICE_UNAVAILABLE,
            "Service Unavailable",
            "service_unavailable",
        )
    }

    fn token_success(issued: &Issued, _ctx: &TokenCtx<'_>) -> ApiReply {
        let scope = issued.scopes.join(",");
        let body = match &issued.refresh_token {
            // A GitHub App user-to-server token pair.
            Some(rt) => json!({
                "access_token": issued.access_token, "expires_in": issued.expires_in.as_secs(),
                "refresh_token": rt, "refresh_token_expires_in": 15_811_200,
                "scope": scope, "token_type": "bearer",
            }),
            // A classic OAuth-app token: no expiry, no refresh token.
            None => {
                json!({ "access_token": issued.access_token, "scope": scope, "token_type": "bearer" })
            }
        };
        ApiReply::json(StatusCode::OK, body)
    }
}

/// `DELETE /applications/{client_id}/grant` with HTTP Basic client credentials and
/// `{"access_token": …}`: the whole grant dies. 204, or 422/404 for an unknown token.
async fn revoke_grant(
    State(shared): State<Sh>,
    Path(client_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let p = params(&headers, &body);
    let own = shared.lock().oauth.client.client_id == client_id;
    if !own || check_client_of(&shared, &headers, &p).is_err() {
        return message(StatusCode::NOT_FOUND, "Not Found", "not_found").into_response();
    }
    let known = p.get("access_token").is_some_and(|t| {
        let mut st = shared.lock();
        let now = st.now();
        // Only a live token names a grant; a revoked or expired one is a 422.
        matches!(
            st.oauth.check_access(Some(t), now),
            AccessCheck::Valid { .. }
        ) && st.oauth.revoke_token(t, true)
    });
    if known {
        StatusCode::NO_CONTENT.into_response()
    } else {
        message(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Validation Failed",
            "validation_failed",
        )
        .into_response()
    }
}

/// `GET /user`: the numeric `id` is the stable subject (logins can be renamed).
async fn user(api: ApiRequest<GithubApi>) -> Response {
    api.run(false, None, |_, ctx| {
        let id: u64 = ctx.subject.parse().unwrap_or_default();
        OpResult::reply(ApiReply::json(
            StatusCode::OK,
            json!({ "login": ctx.login, "id": id, "type": "User", "site_admin": false }),
        ))
    })
    .await
}

fn issue_json(base: &str, repo: &str, number: u64, issue: &Issue) -> Value {
    json!({
        "id": 1_000_000 + number, "number": number, "title": issue.title, "state": issue.state,
        "url": format!("{base}/repos/{repo}/issues/{number}"),
        "html_url": format!("{base}/{repo}/issues/{number}"),
    })
}

async fn create_issue(
    api: ApiRequest<GithubApi>,
    Path((owner, repo)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let p = params(api.headers(), &body);
    api.run(true, Some(REPO), |data, ctx| {
        let title = p.get("title").cloned().unwrap_or_default();
        if title.is_empty() {
            return OpResult::reply(message(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Validation Failed",
                "missing_title",
            ));
        }
        let full = format!("{owner}/{repo}");
        let number = data.numbers.entry(full.clone()).or_default();
        *number += 1;
        let number = *number;
        let issue = Issue {
            title,
            state: "open".into(),
        };
        let reply = ApiReply::json(
            StatusCode::CREATED,
            issue_json(ctx.base_url, &full, number, &issue),
        );
        data.issues.insert((full.clone(), number), issue);
        OpResult::committed(reply, format!("{full}#{number}"))
    })
    .await
}

fn not_found() -> ApiReply {
    message(StatusCode::NOT_FOUND, "Not Found", "not_found")
}

async fn get_issue(
    api: ApiRequest<GithubApi>,
    Path((owner, repo, number)): Path<(String, String, u64)>,
) -> Response {
    api.run(false, Some(REPO), |data, ctx| {
        let full = format!("{owner}/{repo}");
        OpResult::reply(match data.issues.get(&(full.clone(), number)) {
            Some(issue) => ApiReply::json(
                StatusCode::OK,
                issue_json(ctx.base_url, &full, number, issue),
            ),
            None => not_found(),
        })
    })
    .await
}

/// `PATCH …/issues/{n}` with `title` and/or `state` (`open`, `closed`); GitHub has no
/// issue deletion in its REST API, so closing is how a created issue is undone.
async fn update_issue(
    api: ApiRequest<GithubApi>,
    Path((owner, repo, number)): Path<(String, String, u64)>,
    body: Bytes,
) -> Response {
    let p = params(api.headers(), &body);
    api.run(true, Some(REPO), |data, ctx| {
        let full = format!("{owner}/{repo}");
        let Some(issue) = data.issues.get_mut(&(full.clone(), number)) else {
            return OpResult::reply(not_found());
        };
        if let Some(state) = p.get("state") {
            if !matches!(state.as_str(), "open" | "closed") {
                return OpResult::reply(message(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "Validation Failed",
                    "invalid_state",
                ));
            }
            issue.state = state.clone();
        }
        if let Some(title) = p.get("title") {
            issue.title = title.clone();
        }
        let reply = ApiReply::json(
            StatusCode::OK,
            issue_json(ctx.base_url, &full, number, issue),
        );
        OpResult::committed(reply, format!("{full}#{number}"))
    })
    .await
}
