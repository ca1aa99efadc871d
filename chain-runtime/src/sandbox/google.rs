//! Google: the OAuth 2.0 web-server flow (`/o/oauth2/v2/auth`, `/token`, `/revoke`), OIDC
//! `id_token` and `/v1/userinfo`, and the events of Google Calendar v3.
//!
//! A refresh token is issued only when the authorize request carried `access_type=offline`
//! (and, for a user who already granted this client, `prompt=consent`);
//! refreshes never rotate it, and a dead one is 400 `invalid_grant` "Token has been expired or
//! revoked.". `include_granted_scopes=true` makes a new grant carry the scopes granted before.
//! API errors use the `google.rpc.Status` envelope with `ErrorInfo` reasons
//! (`ACCESS_TOKEN_EXPIRED`, `ACCESS_TOKEN_SCOPE_INSUFFICIENT`) and a `WWW-Authenticate`
//! challenge. Calendar ignores `Idempotency-Key`; an event inserted again with the same
//! client-chosen `id` is a 409.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use super::api::ApiRequest;
use super::client::{ClientConfig, Rotation, random_digits, random_string, sandbox_jwt};
use super::endpoints::{authorize_endpoint, params, token_endpoint};
use super::oauth::{Issued, TokenError};
use super::state::{Shared, epoch_secs};
use super::wire::{ApiFailure, ApiReply, OpResult, ProviderImpl, TokenCtx};
use super::{Emulator, EmulatorConfig, Urls};

/// Marker type of the Google emulator (see [`Google`](super::Google)).
#[derive(Clone, Copy, Debug)]
pub struct GoogleApi;

/// One calendar event.
struct Event {
    summary: String,
    status: String,
}

/// Events by (calendar id, event id).
#[derive(Default)]
pub struct GoogleData {
    events: BTreeMap<(String, String), Event>,
}

type Sh = Arc<Shared<GoogleApi>>;

/// The scope Calendar event writes need (`…/auth/calendar` covers it too).
pub const CALENDAR_EVENTS: &str = "https://www.googleapis.com/auth/calendar.events";
/// The full Calendar scope.
pub const CALENDAR: &str = "https://www.googleapis.com/auth/calendar";
const REALM: &str = "Bearer realm=\"https://accounts.google.com/\"";

fn rpc_error(
    status: StatusCode,
    message: &str,
    rpc_status: &str,
    reason: Option<&str>,
) -> ApiReply {
    let details: Vec<Value> = reason
        .map(|r| {
            json!({ "@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": r,
                    "domain": "googleapis.com", "metadata": { "service": "calendar-json.googleapis.com" } })
        })
        .into_iter()
        .collect();
    ApiReply::json(
        status,
        json!({ "error": { "code": status.as_u16(), "message": message, "status": rpc_status, "details": details } }),
    )
    .err(reason.unwrap_or(rpc_status))
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> ApiReply {
    ApiReply::json(
        status,
        json!({ "error": error, "error_description": description }),
    )
    .err(error)
}

const UNAUTHENTICATED: &str = "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project.";

impl ProviderImpl for GoogleApi {
    const NAME: &'static str = "Google";
    type Data = GoogleData;
    const REFRESH_SCOPES: &'static [&'static str] = &[];
    const OFFLINE_PARAM: Option<(&'static str, &'static str)> = Some(("access_type", "offline"));
    const RECONSENT_PARAM: Option<(&'static str, &'static str)> = Some(("prompt", "consent"));
    const HONORS_IDEMPOTENCY_KEY: bool = false;

    fn default_config() -> EmulatorConfig {
        EmulatorConfig {
            client: ClientConfig::new(
                "sandbox-client.apps.googleusercontent.com",
                "sandbox-secret",
            ),
            access_token_lifetime: Duration::from_secs(3599),
            rotation: Rotation::Never,
            refresh_tokens: true,
        }
    }

    fn new_tenant() -> String {
        "sandbox-project".to_owned()
    }

    fn token_prefixes(_tenant: &str) -> (String, String) {
        ("ya29.a0".to_owned(), "1//0g".to_owned())
    }

    fn new_subject(_base_url: &str, _tenant: &str, _n: usize) -> String {
        random_digits(21)
    }

    fn urls(base: &str, _tenant: &str) -> Urls {
        Urls {
            base: base.to_owned(),
            authorize: format!("{base}/o/oauth2/v2/auth"),
            token: format!("{base}/token"),
            revoke: format!("{base}/revoke"),
            introspect: None,
            userinfo: Some(format!("{base}/v1/userinfo")),
            api_base: format!("{base}/calendar/v3"),
        }
    }

    fn router(shared: Arc<Shared<Self>>) -> Router {
        Router::new()
            .route("/o/oauth2/v2/auth", get(authorize_endpoint::<Self>))
            .route("/token", post(token_endpoint::<Self>))
            .route("/revoke", post(revoke))
            .route("/v1/userinfo", get(userinfo))
            .route("/calendar/v3/calendars/{cal}/events", post(insert_event))
            .route(
                "/calendar/v3/calendars/{cal}/events/{id}",
                get(get_event).delete(delete_event),
            )
            .with_state(shared)
    }

    fn has_scope(granted: &[String], needed: &str) -> bool {
        granted
            .iter()
            .any(|g| g == needed || (g == CALENDAR && needed == CALENDAR_EVENTS))
    }

    fn api_failure(failure: ApiFailure<'_>, _now: SystemTime) -> ApiReply {
        match failure {
            ApiFailure::NotAuthed => rpc_error(
                StatusCode::UNAUTHORIZED,
                "Request is missing required authentication credential.",
                "UNAUTHENTICATED",
                Some("CREDENTIALS_MISSING"),
            )
            .header("www-authenticate", REALM),
            ApiFailure::Expired => rpc_error(
                StatusCode::UNAUTHORIZED,
                UNAUTHENTICATED,
                "UNAUTHENTICATED",
                Some("ACCESS_TOKEN_EXPIRED"),
            )
            .header(
                "www-authenticate",
                format!("{REALM}, error=\"invalid_token\""),
            ),
            ApiFailure::InvalidToken | ApiFailure::Revoked => rpc_error(
                StatusCode::UNAUTHORIZED,
                UNAUTHENTICATED,
                "UNAUTHENTICATED",
                None,
            )
            .header(
                "www-authenticate",
                format!("{REALM}, error=\"invalid_token\""),
            ),
            ApiFailure::MissingScope { needed, .. } => {
                // `scope=` lists alternatives, any one of which would do.
                let acceptable = if needed == CALENDAR_EVENTS {
                    format!("{CALENDAR} {CALENDAR_EVENTS}")
                } else {
                    needed.to_owned()
                };
                rpc_error(
                    StatusCode::FORBIDDEN,
                    "Request had insufficient authentication scopes.",
                    "PERMISSION_DENIED",
                    Some("ACCESS_TOKEN_SCOPE_INSUFFICIENT"),
                )
                .header(
                    "www-authenticate",
                    format!("{REALM}, error=\"insufficient_scope\", scope=\"{acceptable}\""),
                )
            }
            ApiFailure::RateLimited(_) => rpc_error(
                StatusCode::TOO_MANY_REQUESTS,
                "Quota exceeded for quota metric 'Queries' and limit 'Queries per minute per user'.",
                "RESOURCE_EXHAUSTED",
                Some("RATE_LIMIT_EXCEEDED"),
            ),
            ApiFailure::ServerError => rpc_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "The service is currently unavailable.",
                "UNAVAILABLE",
                None,
            ),
        }
    }

    fn token_failure(error: &TokenError) -> ApiReply {
        match error {
            TokenError::InvalidClientId => oauth_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "The OAuth client was not found.",
            ),
            TokenError::BadClientSecret => {
                oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", "Unauthorized")
            }
            TokenError::DeadRefresh => oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_grant",
                "Token has been expired or revoked.",
            ),
            TokenError::InvalidCode | TokenError::RedirectMismatch | TokenError::PkceMismatch => {
                oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", "Bad Request")
            }
            TokenError::UnsupportedGrantType => oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "Invalid grant_type",
            ),
            TokenError::InvalidRequest(what) => {
                oauth_error(StatusCode::BAD_REQUEST, "invalid_request", what)
            }
        }
    }

    fn token_server_error() -> ApiReply {
        oauth_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            "The service is currently unavailable.",
        )
    }

    fn token_success(issued: &Issued, ctx: &TokenCtx<'_>) -> ApiReply {
        let mut body = json!({
            "access_token": issued.access_token,
            "expires_in": issued.expires_in.as_secs(),
            "scope": issued.scopes.join(" "),
            "token_type": "Bearer",
        });
        let Some(obj) = body.as_object_mut() else {
            return ApiReply::json(StatusCode::OK, body);
        };
        if let Some(rt) = &issued.refresh_token {
            obj.insert("refresh_token".into(), json!(rt));
        }
        if issued.scopes.iter().any(|s| s == "openid") {
            let iat = epoch_secs(ctx.issued_at);
            let claims = json!({
                "iss": "https://accounts.google.com", "azp": ctx.client_id, "aud": ctx.client_id,
                "sub": issued.subject, "iat": iat, "exp": iat + 3600,
                "at_hash": random_string(16),
            });
            obj.insert("id_token".into(), json!(sandbox_jwt(&claims)));
        }
        ApiReply::json(StatusCode::OK, body)
    }
}

/// `POST /revoke?token=…` (or form): revoking either token of a grant revokes the grant.
/// 200 `{}`, or 400 `invalid_token` for a token Google does not know.
async fn revoke(State(shared): State<Sh>, headers: HeaderMap, uri: Uri, body: Bytes) -> Response {
    let mut p = params(&headers, &body);
    if let Some(q) = uri.query() {
        p.extend(url::form_urlencoded::parse(q.as_bytes()).into_owned());
    }
    let known = p
        .get("token")
        .is_some_and(|t| shared.lock().oauth.revoke_token(t, true));
    if known {
        ApiReply::json(StatusCode::OK, json!({})).into_response()
    } else {
        oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_token",
            "Token expired or revoked",
        )
        .into_response()
    }
}

/// OIDC userinfo: `sub` and the login as `email`.
async fn userinfo(api: ApiRequest<GoogleApi>) -> Response {
    api.run(false, None, |_, ctx| {
        OpResult::reply(ApiReply::json(
            StatusCode::OK,
            json!({ "sub": ctx.subject, "email": ctx.login, "email_verified": true }),
        ))
    })
    .await
}

fn event_json(cal: &str, id: &str, event: &Event, login: &str) -> Value {
    json!({
        "kind": "calendar#event", "id": id, "status": event.status, "summary": event.summary,
        "htmlLink": format!("https://calendar.google.com/calendar/event?eid={id}"),
        "organizer": { "email": login, "self": true }, "calendarId": cal,
    })
}

fn gone() -> ApiReply {
    ApiReply::json(
        StatusCode::GONE,
        json!({ "error": { "code": 410, "message": "Resource has been deleted",
                           "errors": [{ "domain": "global", "reason": "deleted", "message": "Resource has been deleted" }] } }),
    )
    .err("deleted")
}

fn not_found() -> ApiReply {
    ApiReply::json(
        StatusCode::NOT_FOUND,
        json!({ "error": { "code": 404, "message": "Not Found",
                           "errors": [{ "domain": "global", "reason": "notFound", "message": "Not Found" }] } }),
    )
    .err("notFound")
}

/// `POST …/events`: a client-chosen `id` (base32hex, 5–1024 chars) makes the insert
/// idempotent: a second insert with it is 409 `duplicate`.
async fn insert_event(
    api: ApiRequest<GoogleApi>,
    Path(cal): Path<String>,
    body: Bytes,
) -> Response {
    let p = params(api.headers(), &body);
    api.run(true, Some(CALENDAR_EVENTS), |data, ctx| {
        let id = p
            .get("id")
            .cloned()
            .unwrap_or_else(|| random_string(16).to_ascii_lowercase().replace(['-', '_'], "v"));
        if data.events.contains_key(&(cal.clone(), id.clone())) {
            return OpResult::reply(
                ApiReply::json(
                    StatusCode::CONFLICT,
                    json!({ "error": { "code": 409, "message": "The requested identifier already exists.",
                                       "errors": [{ "domain": "global", "reason": "duplicate", "message": "The requested identifier already exists." }] } }),
                )
                .err("duplicate"),
            );
        }
        let event = Event {
            summary: p.get("summary").cloned().unwrap_or_default(),
            status: "confirmed".into(),
        };
        let reply = ApiReply::json(StatusCode::OK, event_json(&cal, &id, &event, ctx.login));
        data.events.insert((cal.clone(), id.clone()), event);
        OpResult::committed(reply, format!("{cal}/{id}"))
    })
    .await
}

async fn get_event(
    api: ApiRequest<GoogleApi>,
    Path((cal, id)): Path<(String, String)>,
) -> Response {
    api.run(false, Some(CALENDAR_EVENTS), |data, ctx| {
        OpResult::reply(match data.events.get(&(cal.clone(), id.clone())) {
            Some(e) => ApiReply::json(StatusCode::OK, event_json(&cal, &id, e, ctx.login)),
            None => not_found(),
        })
    })
    .await
}

/// `DELETE …/events/{id}`: 204; the event stays as `cancelled`, and deleting it again is 410.
async fn delete_event(
    api: ApiRequest<GoogleApi>,
    Path((cal, id)): Path<(String, String)>,
) -> Response {
    api.run(true, Some(CALENDAR_EVENTS), |data, _| {
        match data.events.get_mut(&(cal.clone(), id.clone())) {
            Some(e) if e.status == "cancelled" => OpResult::reply(gone()),
            Some(e) => {
                e.status = "cancelled".into();
                OpResult::committed(
                    ApiReply::empty(StatusCode::NO_CONTENT),
                    format!("{cal}/{id}"),
                )
            }
            None => OpResult::reply(not_found()),
        }
    })
    .await
}

impl Emulator<GoogleApi> {
    /// The summary and status (`confirmed`, `cancelled`) of an event.
    pub fn event(&self, calendar: &str, id: &str) -> Option<(String, String)> {
        self.shared
            .lock()
            .data
            .events
            .get(&(calendar.to_owned(), id.to_owned()))
            .map(|e| (e.summary.clone(), e.status.clone()))
    }

    /// Number of confirmed (not cancelled) events.
    pub fn live_events(&self) -> usize {
        let st = self.shared.lock();
        st.data
            .events
            .values()
            .filter(|e| e.status == "confirmed")
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calendar_covers_calendar_events() {
        assert!(GoogleApi::has_scope(&[CALENDAR.into()], CALENDAR_EVENTS));
        assert!(!GoogleApi::has_scope(&["openid".into()], CALENDAR_EVENTS));
    }
}
