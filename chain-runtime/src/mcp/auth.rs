//! Who calls over streamable HTTP: the MCP endpoint is an OAuth 2.1 resource server. A bearer
//! access token is checked by a [`TokenVerifier`] the application supplies
//! ([`SharedKeyJwtVerifier`] for HS256 JWTs signed with a static key, [`IntrospectionVerifier`]
//! for RFC 7662 token introspection); the protected resource metadata of RFC 9728 is served at
//! `/.well-known/oauth-protected-resource`, and a missing, bad or expired token is answered 401
//! with a `WWW-Authenticate: Bearer` challenge that points at it (403 `insufficient_scope` when
//! the token lacks a required scope).
//!
//! The verified [`Identity`] travels in the request's extensions to the MCP handler; tool
//! arguments never name the principal.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use hmac::{KeyInit, Mac};
use serde_json::{Value, json};

use crate::exec::BoxFuture;

/// The authenticated caller of an MCP session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The principal identifier (the token's `sub`).
    pub subject: String,
    /// The token's scopes.
    pub scopes: Vec<String>,
}

impl Identity {
    /// An identity with no scopes (for stdio, where it is fixed at start).
    pub fn new(subject: impl Into<String>) -> Self {
        Self {
            subject: subject.into(),
            scopes: Vec::new(),
        }
    }
}

/// Why a bearer token was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenRejection {
    /// Missing, malformed, forged, expired or inactive: 401 `invalid_token`.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// Valid, but without `scope`: 403 `insufficient_scope`.
    #[error("the token lacks scope `{0}`")]
    InsufficientScope(String),
    /// The verifier could not decide (introspection endpoint down): 503.
    #[error("token verification unavailable: {0}")]
    Unavailable(String),
}

/// Checks bearer access tokens presented to the MCP endpoint.
pub trait TokenVerifier: Send + Sync + 'static {
    /// The identity of `token`, or why it is refused.
    fn verify<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Identity, TokenRejection>>;
}

fn now_secs() -> i64 {
    crate::audit::now_unix_ms() / 1000
}

fn scopes_of(claims: &Value) -> Vec<String> {
    match claims.get("scope") {
        Some(Value::String(s)) => s.split_whitespace().map(str::to_owned).collect(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    }
}

fn audience_matches(claims: &Value, audience: &str) -> bool {
    match claims.get("aud") {
        Some(Value::String(a)) => a == audience,
        Some(Value::Array(a)) => a.iter().any(|v| v.as_str() == Some(audience)),
        _ => false,
    }
}

/// The checks every verifier applies to verified claims: expiry, not-before, issuer,
/// audience, subject, required scopes.
fn identity_from_claims(
    claims: &Value,
    issuer: Option<&str>,
    audience: &str,
    required_scopes: &[String],
) -> Result<Identity, TokenRejection> {
    let now = now_secs();
    let exp = claims
        .get("exp")
        .and_then(Value::as_i64)
        .ok_or_else(|| TokenRejection::Invalid("no expiry".into()))?;
    if exp <= now {
        return Err(TokenRejection::Invalid("the token expired".into()));
    }
    if claims
        .get("nbf")
        .and_then(Value::as_i64)
        .is_some_and(|nbf| nbf > now + 60)
    {
        return Err(TokenRejection::Invalid("the token is not valid yet".into()));
    }
    if let Some(issuer) = issuer
        && claims.get("iss").and_then(Value::as_str) != Some(issuer)
    {
        return Err(TokenRejection::Invalid("wrong issuer".into()));
    }
    if !audience_matches(claims, audience) {
        return Err(TokenRejection::Invalid(
            "the token is not for this resource (audience)".into(),
        ));
    }
    let subject = claims
        .get("sub")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| TokenRejection::Invalid("no subject".into()))?
        .to_owned();
    let scopes = scopes_of(claims);
    if let Some(missing) = required_scopes.iter().find(|s| !scopes.contains(s)) {
        return Err(TokenRejection::InsufficientScope(missing.clone()));
    }
    Ok(Identity { subject, scopes })
}

/// Verifies HS256 JWTs signed with a static shared key: signature, `exp`, `nbf`, `iss`,
/// `aud` (must name this resource), `sub` (the principal) and required scopes.
pub struct SharedKeyJwtVerifier {
    key: Vec<u8>,
    issuer: Option<String>,
    audience: String,
    required_scopes: Vec<String>,
}

impl std::fmt::Debug for SharedKeyJwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedKeyJwtVerifier")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

impl SharedKeyJwtVerifier {
    /// Tokens signed with `key` and addressed to `audience` (the MCP endpoint's URL).
    pub fn new(key: impl Into<Vec<u8>>, audience: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            issuer: None,
            audience: audience.into(),
            required_scopes: Vec::new(),
        }
    }

    /// Also require `iss` to be `issuer`.
    pub fn issuer(mut self, issuer: impl Into<String>) -> Self {
        self.issuer = Some(issuer.into());
        self
    }

    /// Also require these scopes (403 `insufficient_scope` without them).
    pub fn require_scopes<I: IntoIterator<Item = S>, S: Into<String>>(mut self, scopes: I) -> Self {
        self.required_scopes = scopes.into_iter().map(Into::into).collect();
        self
    }

    /// Signs `claims` as an HS256 JWT with this verifier's key (for tests and local tools).
    pub fn sign(&self, claims: &Value) -> String {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let head = b64.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let body = b64.encode(claims.to_string().as_bytes());
        let input = format!("{head}.{body}");
        let sig = match HmacSha256::new_from_slice(&self.key) {
            Ok(mut mac) => {
                mac.update(input.as_bytes());
                b64.encode(mac.finalize().into_bytes())
            }
            Err(_) => String::new(),
        };
        format!("{input}.{sig}")
    }

    fn check(&self, token: &str) -> Result<Identity, TokenRejection> {
        let bad = |why: &str| TokenRejection::Invalid(why.to_owned());
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let mut parts = token.split('.');
        let (Some(head), Some(body), Some(sig), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad("not a JWT"));
        };
        let header: Value = b64
            .decode(head)
            .ok()
            .and_then(|h| serde_json::from_slice(&h).ok())
            .ok_or_else(|| bad("unreadable header"))?;
        if header.get("alg").and_then(Value::as_str) != Some("HS256") {
            return Err(bad("unsupported algorithm"));
        }
        let sig = b64.decode(sig).map_err(|_| bad("unreadable signature"))?;
        let mut mac = HmacSha256::new_from_slice(&self.key).map_err(|_| bad("bad key"))?;
        mac.update(head.as_bytes());
        mac.update(b".");
        mac.update(body.as_bytes());
        mac.verify_slice(&sig).map_err(|_| bad("bad signature"))?;
        let claims: Value = b64
            .decode(body)
            .ok()
            .and_then(|c| serde_json::from_slice(&c).ok())
            .ok_or_else(|| bad("unreadable claims"))?;
        identity_from_claims(
            &claims,
            self.issuer.as_deref(),
            &self.audience,
            &self.required_scopes,
        )
    }
}

impl TokenVerifier for SharedKeyJwtVerifier {
    fn verify<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Identity, TokenRejection>> {
        Box::pin(std::future::ready(self.check(token)))
    }
}

/// Verifies opaque tokens with the authorization server's RFC 7662 introspection endpoint
/// (client authentication with HTTP Basic), then applies the same checks as a JWT (`active`,
/// `exp`, `aud`, `sub`, required scopes).
pub struct IntrospectionVerifier {
    http: reqwest::Client,
    endpoint: url::Url,
    client_id: String,
    client_secret: secrecy::SecretString,
    audience: String,
    required_scopes: Vec<String>,
}

impl std::fmt::Debug for IntrospectionVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IntrospectionVerifier")
            .field("endpoint", &self.endpoint.as_str())
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

impl IntrospectionVerifier {
    /// Introspects at `endpoint` as client `client_id`; tokens must be for `audience`.
    pub fn new(
        endpoint: url::Url,
        client_id: impl Into<String>,
        client_secret: secrecy::SecretString,
        audience: impl Into<String>,
    ) -> Self {
        crate::vault::ensure_tls_provider();
        Self {
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(10))
                .build()
                .unwrap_or_default(),
            endpoint,
            client_id: client_id.into(),
            client_secret,
            audience: audience.into(),
            required_scopes: Vec::new(),
        }
    }

    /// Also require these scopes.
    pub fn require_scopes<I: IntoIterator<Item = S>, S: Into<String>>(mut self, scopes: I) -> Self {
        self.required_scopes = scopes.into_iter().map(Into::into).collect();
        self
    }
}

impl TokenVerifier for IntrospectionVerifier {
    fn verify<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Identity, TokenRejection>> {
        use secrecy::ExposeSecret;
        Box::pin(async move {
            let response = self
                .http
                .post(self.endpoint.clone())
                .basic_auth(&self.client_id, Some(self.client_secret.expose_secret()))
                .form(&[("token", token), ("token_type_hint", "access_token")])
                .send()
                .await
                .map_err(|e| {
                    TokenRejection::Unavailable(format!("introspection: {}", e.without_url()))
                })?;
            if !response.status().is_success() {
                return Err(TokenRejection::Unavailable(format!(
                    "introspection answered {}",
                    response.status()
                )));
            }
            let claims: Value = response.json().await.map_err(|_| {
                TokenRejection::Unavailable("introspection answered no JSON".into())
            })?;
            if claims.get("active").and_then(Value::as_bool) != Some(true) {
                return Err(TokenRejection::Invalid("inactive token".into()));
            }
            identity_from_claims(&claims, None, &self.audience, &self.required_scopes)
        })
    }
}

/// The resource-server side of the MCP endpoint: the verifier and what RFC 9728 metadata says.
#[derive(Clone)]
pub struct ResourceServer {
    pub(crate) verifier: Arc<dyn TokenVerifier>,
    /// The MCP endpoint's URL (the token audience, the metadata's `resource`).
    pub(crate) resource: String,
    pub(crate) authorization_servers: Vec<String>,
    pub(crate) scopes: Vec<String>,
}

impl std::fmt::Debug for ResourceServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResourceServer")
            .field("resource", &self.resource)
            .field("authorization_servers", &self.authorization_servers)
            .finish_non_exhaustive()
    }
}

impl ResourceServer {
    /// `resource` is the MCP endpoint's absolute URL; tokens come from `authorization_servers`.
    pub fn new(
        verifier: impl TokenVerifier,
        resource: impl Into<String>,
        authorization_servers: Vec<String>,
    ) -> Self {
        Self {
            verifier: Arc::new(verifier),
            resource: resource.into(),
            authorization_servers,
            scopes: Vec::new(),
        }
    }

    /// The scopes listed as `scopes_supported`.
    pub fn scopes_supported<I: IntoIterator<Item = S>, S: Into<String>>(
        mut self,
        scopes: I,
    ) -> Self {
        self.scopes = scopes.into_iter().map(Into::into).collect();
        self
    }

    /// The URL of the protected resource metadata document.
    pub fn metadata_url(&self) -> String {
        match url::Url::parse(&self.resource) {
            Ok(u) => {
                let origin = u.origin().ascii_serialization();
                let path = u.path().trim_end_matches('/');
                format!("{origin}/.well-known/oauth-protected-resource{path}")
            }
            Err(_) => "/.well-known/oauth-protected-resource".to_owned(),
        }
    }

    /// The RFC 9728 metadata document.
    pub fn metadata(&self) -> Value {
        json!({
            "resource": self.resource,
            "authorization_servers": self.authorization_servers,
            "scopes_supported": self.scopes,
            "bearer_methods_supported": ["header"],
            "resource_name": "chain-runtime MCP server",
        })
    }

    fn challenge(&self, status: StatusCode, error: Option<(&str, &str)>) -> Response {
        let mut value = format!("Bearer resource_metadata=\"{}\"", self.metadata_url());
        if let Some((code, detail)) = error {
            let detail = detail.replace(['"', '\\'], "'");
            value.push_str(&format!(
                ", error=\"{code}\", error_description=\"{detail}\""
            ));
            if code == "insufficient_scope" && !self.scopes.is_empty() {
                value.push_str(&format!(", scope=\"{}\"", self.scopes.join(" ")));
            }
        }
        let mut response = (
            status,
            Json(json!({ "error": error.map(|e| e.0).unwrap_or("unauthorized") })),
        )
            .into_response();
        if let Ok(v) = HeaderValue::from_str(&value) {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, v);
        }
        response
    }
}

/// Serves the RFC 9728 metadata document.
pub(crate) async fn metadata(State(rs): State<ResourceServer>) -> Json<Value> {
    Json(rs.metadata())
}

/// Middleware in front of the MCP endpoint: verifies the bearer token and puts the
/// [`Identity`] into the request's extensions, or answers with the challenge.
pub(crate) async fn require_bearer(
    State(rs): State<ResourceServer>,
    mut request: Request,
    next: Next,
) -> Response {
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| rest.trim().to_owned())
        });
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        return rs.challenge(StatusCode::UNAUTHORIZED, None);
    };
    match rs.verifier.verify(&token).await {
        Ok(identity) => {
            request.extensions_mut().insert(identity);
            next.run(request).await
        }
        Err(TokenRejection::Invalid(why)) => {
            rs.challenge(StatusCode::UNAUTHORIZED, Some(("invalid_token", &why)))
        }
        Err(TokenRejection::InsufficientScope(scope)) => rs.challenge(
            StatusCode::FORBIDDEN,
            Some((
                "insufficient_scope",
                &format!("the token lacks scope `{scope}`"),
            )),
        ),
        Err(e @ TokenRejection::Unavailable(_)) => {
            (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response()
        }
    }
}
