//! Slack Web API with token rotation: `oauth.v2.access`, `auth.revoke`, `auth.test`,
//! `chat.postMessage`, `chat.delete`. Every error is HTTP 200 `{"ok":false}` except rate
//! limits (429) and injected 5xx.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use super::api::{ApiCall, ApiRequest};
use super::client::{ClientConfig, Rotation, random_upper};
use super::endpoints::{authorize_endpoint, bearer, params, token_endpoint};
use super::oauth::{Issued, TokenError};
use super::state::{Shared, epoch_secs};
use super::wire::{ApiFailure, ApiReply, OpResult, ProviderImpl, TokenCtx};
use super::{Emulator, EmulatorConfig, Urls};

/// Marker type of the Slack emulator (see [`Slack`](super::Slack)).
#[derive(Clone, Copy, Debug)]
pub struct SlackApi;

/// Posted messages by (channel, ts).
#[derive(Default)]
pub struct SlackData {
    messages: BTreeMap<(String, String), String>,
    posted: u64,
}

type Sh = Arc<Shared<SlackApi>>;

/// Scope needed by `chat.postMessage` and `chat.delete`.
pub const CHAT_WRITE: &str = "chat:write";

fn not_ok(error: &str) -> ApiReply {
    ApiReply::json(StatusCode::OK, json!({ "ok": false, "error": error })).err(error)
}

fn split_subject(subject: &str) -> (&str, &str) {
    subject.split_once(':').unwrap_or((subject, ""))
}

impl ProviderImpl for SlackApi {
    const NAME: &'static str = "Slack";
    type Data = SlackData;
    const REFRESH_SCOPES: &'static [&'static str] = &[];

    fn default_config() -> EmulatorConfig {
        EmulatorConfig {
            client: ClientConfig::new("sandbox-client", "sandbox-secret"),
            access_token_lifetime: Duration::from_secs(43_200),
            rotation: Rotation::Immediate,
            refresh_tokens: true,
        }
    }

    fn new_tenant() -> String {
        format!("T{}", random_upper(10))
    }

    fn token_prefixes(tenant: &str) -> (String, String) {
        (format!("xoxe.xoxp-1-{tenant}-"), "xoxe-1-".to_owned())
    }

    fn new_subject(_base_url: &str, tenant: &str, _n: usize) -> String {
        format!("{tenant}:U{}", random_upper(10))
    }

    fn urls(base: &str, _tenant: &str) -> Urls {
        Urls {
            base: base.to_owned(),
            authorize: format!("{base}/oauth/v2/authorize"),
            token: format!("{base}/api/oauth.v2.access"),
            revoke: format!("{base}/api/auth.revoke"),
            introspect: None,
            userinfo: Some(format!("{base}/api/auth.test")),
            api_base: format!("{base}/api"),
        }
    }

    fn router(shared: Arc<Shared<Self>>) -> Router {
        Router::new()
            .route("/oauth/v2/authorize", get(authorize_endpoint::<Self>))
            .route("/api/oauth.v2.access", post(token_endpoint::<Self>))
            .route("/api/auth.revoke", post(revoke))
            .route("/api/auth.test", post(auth_test))
            .route("/api/chat.postMessage", post(post_message))
            .route("/api/chat.delete", post(delete_message))
            .with_state(shared)
    }

    fn api_failure(failure: ApiFailure<'_>, _now: SystemTime) -> ApiReply {
        match failure {
            ApiFailure::NotAuthed => not_ok("not_authed"),
            ApiFailure::InvalidToken => not_ok("invalid_auth"),
            ApiFailure::Expired => not_ok("token_expired"),
            ApiFailure::Revoked => not_ok("token_revoked"),
            ApiFailure::MissingScope { needed, provided } => ApiReply::json(
                StatusCode::OK,
                json!({ "ok": false, "error": "missing_scope", "needed": needed, "provided": provided.join(",") }),
            )
            .err("missing_scope")
            .header("x-accepted-oauth-scopes", needed),
            ApiFailure::RateLimited(after) => {
                ApiReply::json(StatusCode::TOO_MANY_REQUESTS, json!({ "ok": false, "error": "ratelimited" }))
                    .err("ratelimited")
                    .header("retry-after", after.as_secs().max(1).to_string())
            }
            ApiFailure::ServerError => {
                ApiReply::json(StatusCode::INTERNAL_SERVER_ERROR, json!({ "ok": false, "error": "fatal_error" }))
                    .err("fatal_error")
            }
        }
    }

    fn decorate(reply: &mut ApiReply, _api_calls: u64, scopes: Option<&[String]>) {
        if let Some(scopes) = scopes {
            reply.add_header("x-oauth-scopes", scopes.join(","));
        }
    }

    fn token_failure(error: &TokenError) -> ApiReply {
        not_ok(match error {
            TokenError::InvalidClientId => "invalid_client_id",
            TokenError::BadClientSecret => "bad_client_secret",
            // Slack documents no PKCE-specific error; a wrong verifier makes the code invalid.
            TokenError::InvalidCode | TokenError::PkceMismatch => "invalid_code",
            TokenError::RedirectMismatch => "bad_redirect_uri",
            TokenError::DeadRefresh => "invalid_refresh_token",
            TokenError::UnsupportedGrantType => "invalid_grant_type",
            TokenError::InvalidRequest(_) => "invalid_arguments",
        })
    }

    fn token_server_error() -> ApiReply {
        ApiReply::json(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({ "ok": false, "error": "fatal_error" }),
        )
        .err("fatal_error")
    }

    fn token_success(issued: &Issued, _ctx: &TokenCtx<'_>) -> ApiReply {
        let (team, user) = split_subject(&issued.subject);
        let scope = issued.scopes.join(",");
        let expires_in = issued.expires_in.as_secs();
        let mut authed_user = json!({
            "id": user, "scope": scope, "access_token": issued.access_token,
            "token_type": "user", "expires_in": expires_in,
        });
        let mut body = json!({
            "ok": true, "app_id": "A0SANDBOX", "access_token": issued.access_token, "token_type": "user",
            "scope": scope, "expires_in": expires_in, "team": { "id": team, "name": "Sandbox" },
            "enterprise": null, "is_enterprise_install": false,
        });
        if let Some(rt) = &issued.refresh_token {
            for obj in [&mut body, &mut authed_user]
                .into_iter()
                .filter_map(Value::as_object_mut)
            {
                obj.insert("refresh_token".into(), json!(rt));
            }
        }
        if let Some(obj) = body.as_object_mut() {
            obj.insert("authed_user".into(), authed_user);
        }
        ApiReply::json(StatusCode::OK, body)
    }
}

/// `auth.revoke`: kills the whole grant of the token.
async fn revoke(State(shared): State<Sh>, headers: HeaderMap, body: Bytes) -> Response {
    let p = params(&headers, &body);
    let reply = match bearer(&headers).or_else(|| p.get("token").cloned()) {
        None => not_ok("not_authed"),
        Some(token) if shared.lock().oauth.revoke_token(&token, true) => {
            ApiReply::json(StatusCode::OK, json!({ "ok": true, "revoked": true }))
        }
        Some(_) => not_ok("invalid_auth"),
    };
    reply.into_response()
}

/// Slack reads the token from the `Authorization` header or, failing that, the form's `token`.
fn call_of(
    api: &ApiRequest<SlackApi>,
    p: &std::collections::HashMap<String, String>,
    write: bool,
) -> ApiCall {
    let mut call = api.call(write, write.then_some(CHAT_WRITE));
    if call.token.is_none() {
        call.token = p.get("token").cloned();
    }
    call
}

async fn auth_test(api: ApiRequest<SlackApi>, body: Bytes) -> Response {
    let p = params(api.headers(), &body);
    let call = call_of(&api, &p, false);
    api.run_call(call, |_, ctx| {
        let (team, user) = split_subject(ctx.subject);
        OpResult::reply(ApiReply::json(
            StatusCode::OK,
            json!({ "ok": true, "url": format!("{}/", ctx.base_url), "team": "Sandbox", "user": ctx.login,
                    "team_id": team, "user_id": user }),
        ))
    })
    .await
}

async fn post_message(api: ApiRequest<SlackApi>, body: Bytes) -> Response {
    let p = params(api.headers(), &body);
    let call = call_of(&api, &p, true);
    api.run_call(call, |data, ctx| {
        let channel = p.get("channel").cloned().unwrap_or_default();
        let text = p.get("text").cloned().unwrap_or_default();
        if channel.is_empty() {
            return OpResult::reply(not_ok("channel_not_found"));
        }
        if text.is_empty() {
            return OpResult::reply(not_ok("no_text"));
        }
        data.posted += 1;
        let ts = format!("{}.{:06}", epoch_secs(SystemTime::now()), data.posted);
        let (_, user) = split_subject(ctx.subject);
        data.messages
            .insert((channel.clone(), ts.clone()), text.clone());
        let reply = ApiReply::json(
            StatusCode::OK,
            json!({ "ok": true, "channel": channel, "ts": ts,
                    "message": { "type": "message", "user": user, "text": text, "ts": ts } }),
        );
        OpResult::committed(reply, format!("{channel}/{ts}"))
    })
    .await
}

async fn delete_message(api: ApiRequest<SlackApi>, body: Bytes) -> Response {
    let p = params(api.headers(), &body);
    let call = call_of(&api, &p, true);
    api.run_call(call, |data, _| {
        let channel = p.get("channel").cloned().unwrap_or_default();
        let ts = p.get("ts").cloned().unwrap_or_default();
        match data.messages.remove(&(channel.clone(), ts.clone())) {
            Some(_) => OpResult::committed(
                ApiReply::json(
                    StatusCode::OK,
                    json!({ "ok": true, "channel": channel, "ts": ts }),
                ),
                format!("{channel}/{ts}"),
            ),
            None => OpResult::reply(not_ok("message_not_found")),
        }
    })
    .await
}

impl Emulator<SlackApi> {
    /// The text of a live message (`None` if never posted or deleted).
    pub fn message(&self, channel: &str, ts: &str) -> Option<String> {
        self.shared
            .lock()
            .data
            .messages
            .get(&(channel.to_owned(), ts.to_owned()))
            .cloned()
    }

    /// Number of live messages.
    pub fn message_count(&self) -> usize {
        self.shared.lock().data.messages.len()
    }
}
