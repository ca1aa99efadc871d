//! Who calls over streamable HTTP: the MCP endpoint is an OAuth 2.1 resource server. A bearer
//! access token is checked by a [`TokenVerifier`] the application supplies
//! ([`JwksJwtVerifier`] for JWTs signed with the authorization server's published keys,
//! [`SharedKeyJwtVerifier`] for HS256 JWTs signed with a static key, [`IntrospectionVerifier`]
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
use serde_json::{Value, json};

use crate::future::BoxFuture;

mod introspection;
mod jwks;
mod jwt;

pub use introspection::IntrospectionVerifier;
/// The signature algorithms of JWTs (`jsonwebtoken`'s), for [`JwksJwtVerifier::algorithms`].
pub use jsonwebtoken::Algorithm as JwsAlgorithm;
pub use jwks::JwksJwtVerifier;
pub use jwt::SharedKeyJwtVerifier;

/// The clock skew tolerated on `exp` and `nbf` by default, in seconds.
pub const DEFAULT_LEEWAY_SECS: u64 = 30;

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

impl<T: TokenVerifier + ?Sized> TokenVerifier for Arc<T> {
    fn verify<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Identity, TokenRejection>> {
        (**self).verify(token)
    }
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

/// Which claims must be present (a self-contained JWT must carry them; an introspection
/// answer is authoritative with `active` and may leave them out).
#[derive(Clone, Copy)]
enum Presence {
    Required,
    IfPresent,
}

/// What verified claims must say: the checks every verifier applies.
#[derive(Clone, Debug)]
struct ClaimRules {
    /// `iss` must be this, when set.
    issuer: Option<String>,
    /// `aud` must name this (the MCP endpoint's URL).
    audience: String,
    /// Scopes the token must carry (403 without them).
    required_scopes: Vec<String>,
    /// Tolerated clock skew on `exp` and `nbf`, in seconds.
    leeway: i64,
}

impl ClaimRules {
    fn new(audience: String) -> Self {
        Self {
            issuer: None,
            audience,
            required_scopes: Vec::new(),
            leeway: DEFAULT_LEEWAY_SECS as i64,
        }
    }
}

/// The checks every verifier applies to verified claims: expiry, not-before (both with the
/// rules' leeway), issuer, audience, subject, required scopes.
fn identity_from_claims(
    claims: &Value,
    rules: &ClaimRules,
    presence: Presence,
) -> Result<Identity, TokenRejection> {
    let now = now_secs();
    let (audience, required_scopes) = (rules.audience.as_str(), &rules.required_scopes);
    match (claims.get("exp").and_then(Value::as_i64), presence) {
        (Some(exp), _) if exp.saturating_add(rules.leeway) <= now => {
            return Err(TokenRejection::Invalid("the token expired".into()));
        }
        (None, Presence::Required) => return Err(TokenRejection::Invalid("no expiry".into())),
        _ => {}
    }
    if claims
        .get("nbf")
        .and_then(Value::as_i64)
        .is_some_and(|nbf| nbf > now.saturating_add(rules.leeway))
    {
        return Err(TokenRejection::Invalid("the token is not valid yet".into()));
    }
    if let Some(issuer) = &rules.issuer
        && claims.get("iss").and_then(Value::as_str) != Some(issuer.as_str())
    {
        return Err(TokenRejection::Invalid("wrong issuer".into()));
    }
    let audience_ok = match presence {
        Presence::Required => audience_matches(claims, audience),
        Presence::IfPresent => claims.get("aud").is_none() || audience_matches(claims, audience),
    };
    if !audience_ok {
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

#[cfg(test)]
mod tests {
    use super::*;

    const AUD: &str = "https://mcp.example/mcp";

    #[test]
    fn metadata_url_follows_rfc_9728_path_suffixing() {
        let rs = ResourceServer::new(SharedKeyJwtVerifier::new(b"k".repeat(32), AUD), AUD, vec![]);
        assert_eq!(
            rs.metadata_url(),
            "https://mcp.example/.well-known/oauth-protected-resource/mcp"
        );
        assert_eq!(rs.metadata()["resource"], AUD);
    }
}
