//! Microsoft identity platform (Entra ID v2 endpoints under `/{tenant}/oauth2/v2.0/`) and a
//! slice of Microsoft Graph v1.0 (`/me`, `/me/sendMail`, `/me/revokeSignInSessions`).
//!
//! A refresh token is issued only for the `offline_access` scope; every refresh returns a new
//! one and the used one stays valid (no revocation on rotation). The `id_token` carries `tid`
//! and `oid` when `openid` was granted. Token errors carry the numeric `error_codes`
//! (`AADSTS50173` for a revoked grant, `7000215` for a bad secret, …). Graph errors are
//! `{"error":{"code","message","innerError"}}`; an expired token is 401 "Lifetime validation
//! failed"; a revoked grant is a continuous-access-evaluation claims challenge
//! (`WWW-Authenticate: Bearer … error="insufficient_claims", claims="…"`). Graph ignores
//! `Idempotency-Key`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Extension, Router};
use base64::Engine as _;
use serde_json::{Value, json};

use super::api::{ApiCall, ApiRequest, run_api};
use super::client::{ClientConfig, Rotation, random_string, random_uuid, sandbox_jwt};
use super::endpoints::{authorize_endpoint, token_endpoint};
use super::oauth::{Issued, TokenError};
use super::server::ConnKill;
use super::state::{Shared, epoch_secs};
use super::wire::{ApiFailure, ApiReply, OpResult, ProviderImpl, TokenCtx};
use super::{Emulator, EmulatorConfig, Urls};

/// Marker type of the Microsoft emulator (see [`Microsoft`](super::Microsoft)).
#[derive(Clone, Copy, Debug)]
pub struct MicrosoftApi;

/// One sent message.
struct Mail {
    subject: String,
    to: Vec<String>,
}

/// Sent mail by message id.
#[derive(Default)]
pub struct MicrosoftData {
    sent: BTreeMap<String, Mail>,
}

type Sh = Arc<Shared<MicrosoftApi>>;

/// The delegated permission `sendMail` needs.
pub const MAIL_SEND: &str = "Mail.Send";
/// Graph's application id, the `client_id` of its challenges.
const GRAPH_APP: &str = "00000003-0000-0000-c000-000000000000";

fn graph_error(status: StatusCode, code: &str, message: &str, now: SystemTime) -> ApiReply {
    ApiReply::json(
        status,
        json!({ "error": { "code": code, "message": message, "innerError": {
            "date": epoch_secs(now).to_string(), "request-id": random_uuid(), "client-request-id": random_uuid(),
        } } }),
    )
    .err(code)
}

fn challenge(base: &str, extra: &str) -> String {
    format!(
        "Bearer realm=\"\", authorization_uri=\"{base}/common/oauth2/authorize\", client_id=\"{GRAPH_APP}\"{extra}"
    )
}

fn aadsts(status: StatusCode, error: &str, code: u64, text: &str) -> ApiReply {
    let trace = random_uuid();
    let correlation = random_uuid();
    ApiReply::json(
        status,
        json!({
            "error": error,
            "error_description": format!("AADSTS{code}: {text} Trace ID: {trace} Correlation ID: {correlation}"),
            "error_codes": [code], "timestamp": "2026-01-01 00:00:00Z",
            "trace_id": trace, "correlation_id": correlation,
            "error_uri": format!("https://login.microsoftonline.com/error?code={code}"),
        }),
    )
    .err(error)
}

impl ProviderImpl for MicrosoftApi {
    const NAME: &'static str = "Microsoft";
    type Data = MicrosoftData;
    const REFRESH_SCOPES: &'static [&'static str] = &["offline_access"];
    const HONORS_IDEMPOTENCY_KEY: bool = false;

    fn default_config() -> EmulatorConfig {
        EmulatorConfig {
            client: ClientConfig::new(random_uuid(), "sandbox-secret"),
            access_token_lifetime: Duration::from_secs(3599),
            // A new refresh token every time; the used one stays valid (90-day inactivity).
            rotation: Rotation::WithLeeway(Duration::from_secs(90 * 24 * 3600)),
            refresh_tokens: true,
        }
    }

    fn new_tenant() -> String {
        random_uuid()
    }

    fn token_prefixes(_tenant: &str) -> (String, String) {
        (
            "eyJ0eXAiOiJKV1QiLCJub25jZSI6.".to_owned(),
            "0.AXEA".to_owned(),
        )
    }

    /// `{tid}:{oid}`, as the vault joins the `id_token` claims `/tid` and `/oid`.
    fn new_subject(_base_url: &str, tenant: &str, _n: usize) -> String {
        format!("{tenant}:{}", random_uuid())
    }

    fn urls(base: &str, tenant: &str) -> Urls {
        Urls {
            base: base.to_owned(),
            authorize: format!("{base}/{tenant}/oauth2/v2.0/authorize"),
            token: format!("{base}/{tenant}/oauth2/v2.0/token"),
            revoke: format!("{base}/v1.0/me/revokeSignInSessions"),
            introspect: None,
            userinfo: Some(format!("{base}/v1.0/me")),
            api_base: format!("{base}/v1.0"),
        }
    }

    fn router(shared: Arc<Shared<Self>>) -> Router {
        Router::new()
            .route(
                "/{tenant}/oauth2/v2.0/authorize",
                get(authorize_endpoint::<Self>),
            )
            .route("/{tenant}/oauth2/v2.0/token", post(token_endpoint::<Self>))
            .route("/v1.0/me", get(me))
            .route("/v1.0/me/sendMail", post(send_mail))
            .route("/v1.0/me/revokeSignInSessions", post(revoke_sessions))
            .with_state(shared)
    }

    fn has_scope(granted: &[String], needed: &str) -> bool {
        // Graph scopes may be requested as `Mail.Send` or `https://graph.microsoft.com/Mail.Send`.
        granted.iter().any(|g| {
            g.rsplit('/')
                .next()
                .is_some_and(|short| short.eq_ignore_ascii_case(needed))
        })
    }

    fn api_failure(failure: ApiFailure<'_>, now: SystemTime) -> ApiReply {
        // The challenges name the login host; the emulator has none of its own to name here.
        let login = "https://login.microsoftonline.com";
        match failure {
            ApiFailure::NotAuthed => graph_error(
                StatusCode::UNAUTHORIZED,
                "InvalidAuthenticationToken",
                "Access token is empty.",
                now,
            )
            .header("www-authenticate", challenge(login, "")),
            ApiFailure::InvalidToken => graph_error(
                StatusCode::UNAUTHORIZED,
                "InvalidAuthenticationToken",
                "IDX14100: JWT is not well formed, there are no dots (.).",
                now,
            )
            .header("www-authenticate", challenge(login, "")),
            ApiFailure::Expired => graph_error(
                StatusCode::UNAUTHORIZED,
                "InvalidAuthenticationToken",
                "Lifetime validation failed, the token is expired.",
                now,
            )
            .header("www-authenticate", challenge(login, "")),
            ApiFailure::Revoked => {
                let claims = base64::engine::general_purpose::STANDARD.encode(
                    json!({ "access_token": { "nbf": { "essential": true, "value": epoch_secs(now).to_string() } } })
                        .to_string(),
                );
                graph_error(
                    StatusCode::UNAUTHORIZED,
                    "InvalidAuthenticationToken",
                    "Continuous access evaluation resulted in challenge with result: InteractionRequired and code: TokenIssuedBeforeRevocationTimestamp",
                    now,
                )
                .header(
                    "www-authenticate",
                    challenge(login, &format!(", error=\"insufficient_claims\", claims=\"{claims}\"")),
                )
            }
            ApiFailure::MissingScope { .. } => graph_error(
                StatusCode::FORBIDDEN,
                "ErrorAccessDenied",
                "Access is denied. Check credentials and try again.",
                now,
            ),
            ApiFailure::RateLimited(after) => graph_error(
                StatusCode::TOO_MANY_REQUESTS,
                "TooManyRequests",
                "Too many requests.",
                now,
            )
            .header("retry-after", after.as_secs().max(1).to_string()),
            ApiFailure::ServerError => graph_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "serviceNotAvailable",
                "Service Unavailable",
                now,
            ),
        }
    }

    fn decorate(reply: &mut ApiReply, api_calls: u64, _scopes: Option<&[String]>) {
        reply.add_header(
            "request-id",
            format!("00000000-0000-0000-0000-{api_calls:012}"),
        );
    }

    fn token_failure(error: &TokenError) -> ApiReply {
        let bad = StatusCode::BAD_REQUEST;
        match error {
            TokenError::InvalidClientId => aadsts(
                bad,
                "unauthorized_client",
                700_016,
                "Application with the given identifier was not found in the directory.",
            ),
            TokenError::BadClientSecret => aadsts(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                7_000_215,
                "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID.",
            ),
            TokenError::DeadRefresh => aadsts(
                bad,
                "invalid_grant",
                50_173,
                "The provided grant has expired due to it being revoked, a fresh auth token is needed.",
            ),
            TokenError::InvalidCode => aadsts(
                bad,
                "invalid_grant",
                54_005,
                "OAuth2 Authorization code was already redeemed or is invalid.",
            ),
            TokenError::PkceMismatch => aadsts(
                bad,
                "invalid_grant",
                501_481,
                "The Code_Verifier does not match the code_challenge supplied in the authorization request.",
            ),
            TokenError::RedirectMismatch => aadsts(
                bad,
                "invalid_grant",
                70_000,
                "The request was denied because one or more grants are invalid: redirect_uri mismatch.",
            ),
            TokenError::UnsupportedGrantType => aadsts(
                bad,
                "unsupported_grant_type",
                70_003,
                "The app requested an unsupported grant type.",
            ),
            TokenError::InvalidRequest(what) => aadsts(bad, "invalid_request", 900_144, what),
        }
    }

    fn token_server_error() -> ApiReply {
        aadsts(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            90_006,
            "The server is temporarily too busy to handle the request.",
        )
    }

    fn token_success(issued: &Issued, ctx: &TokenCtx<'_>) -> ApiReply {
        let lifetime = issued.expires_in.as_secs();
        let mut body = json!({
            "token_type": "Bearer", "scope": issued.scopes.join(" "),
            "expires_in": lifetime, "ext_expires_in": lifetime,
            "access_token": issued.access_token,
        });
        let Some(obj) = body.as_object_mut() else {
            return ApiReply::json(StatusCode::OK, body);
        };
        if let Some(rt) = &issued.refresh_token {
            obj.insert("refresh_token".into(), json!(rt));
        }
        if issued.scopes.iter().any(|s| s == "openid") {
            let (tid, oid) = issued
                .subject
                .split_once(':')
                .unwrap_or((ctx.tenant, issued.subject.as_str()));
            let iat = epoch_secs(ctx.issued_at);
            let claims = json!({
                "aud": ctx.client_id, "iss": format!("https://login.microsoftonline.com/{tid}/v2.0"),
                "iat": iat, "nbf": iat, "exp": iat + 3600, "tid": tid, "oid": oid,
                // Entra's `sub` is pairwise per application: not the stable subject.
                "sub": random_string(24), "ver": "2.0",
            });
            obj.insert("id_token".into(), json!(sandbox_jwt(&claims)));
        }
        ApiReply::json(StatusCode::OK, body)
    }
}

async fn me(api: ApiRequest<MicrosoftApi>) -> Response {
    api.run(false, None, |_, ctx| {
        let oid = ctx.subject.split_once(':').map_or(ctx.subject, |(_, o)| o);
        OpResult::reply(ApiReply::json(
            StatusCode::OK,
            json!({ "id": oid, "userPrincipalName": ctx.login, "mail": ctx.login, "displayName": ctx.login }),
        ))
    })
    .await
}

/// `POST /me/sendMail` `{"message":{"subject", "toRecipients":[{"emailAddress":{"address"}}]}}`:
/// 202 without a body. A sent message cannot be unsent.
async fn send_mail(api: ApiRequest<MicrosoftApi>, body: Bytes) -> Response {
    let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    api.run(true, Some(MAIL_SEND), move |data, _| {
        let message = &json["message"];
        let to: Vec<String> = message["toRecipients"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|r| r["emailAddress"]["address"].as_str())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        if to.is_empty() {
            return OpResult::reply(graph_error(
                StatusCode::BAD_REQUEST,
                "ErrorInvalidRecipients",
                "At least one recipient is not valid.",
                SystemTime::now(),
            ));
        }
        let id = format!("AAMkAG{}", random_string(18));
        let subject = message["subject"].as_str().unwrap_or_default().to_owned();
        data.sent.insert(id.clone(), Mail { subject, to });
        OpResult::committed(ApiReply::empty(StatusCode::ACCEPTED), id)
    })
    .await
}

/// `POST /me/revokeSignInSessions`: every refresh token (grant) of the user dies.
async fn revoke_sessions(
    State(shared): State<Sh>,
    Extension(kill): Extension<ConnKill>,
    headers: HeaderMap,
) -> Response {
    let call = ApiCall::new(
        Method::POST,
        "/v1.0/me/revokeSignInSessions".into(),
        &headers,
        false,
        None,
    );
    let subject = {
        let st = shared.lock();
        st.oauth.subject_of_access(call.token.as_deref())
    };
    let response = run_api(&shared, &kill, call, |_, _| {
        OpResult::reply(ApiReply::json(StatusCode::OK, json!({ "value": true })))
    })
    .await;
    if response.status() == StatusCode::OK
        && let Some(subject) = subject
    {
        shared.lock().oauth.revoke_subject(&subject);
    }
    response
}

impl Emulator<MicrosoftApi> {
    /// The subject and recipients of every sent message, by message id.
    pub fn sent_mail(&self) -> Vec<(String, String, Vec<String>)> {
        self.shared
            .lock()
            .data
            .sent
            .iter()
            .map(|(id, m)| (id.clone(), m.subject.clone(), m.to.clone()))
            .collect()
    }
}
