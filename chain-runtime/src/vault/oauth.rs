//! The OAuth 2.0 client behind the vault: token endpoint (code exchange, refresh), RFC 7009
//! revocation, RFC 7662 introspection and user-info calls, with the provider quirks of
//! `docs/providers.md` (errors with HTTP 200, missing `expires_in`, string numbers).
//!
//! Response bodies are never put into errors or logs: they contain tokens.

use std::fmt;
use std::time::Duration;

use secrecy::zeroize::Zeroizing;

use crate::classify::{FailureClass, RequestKind, classify_with};

use super::error::VaultError;
use super::provider::{ClientAuth, ProviderConfig};
use super::secret::{AccessToken, RefreshToken};

/// Token endpoint responses larger than this are refused.
const MAX_BODY: usize = 1024 * 1024;

/// A parsed JSON body that may hold secrets; its `Debug` is redacted.
pub(crate) struct RawJson(pub(crate) serde_json::Value);

impl fmt::Debug for RawJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RawJson(<redacted>)")
    }
}

/// A successful token response.
#[derive(Debug)]
pub(crate) struct TokenSet {
    pub(crate) access_token: AccessToken,
    pub(crate) refresh_token: Option<RefreshToken>,
    pub(crate) expires_in: Option<i64>,
    pub(crate) scope: Option<String>,
    pub(crate) body: RawJson,
}

/// What the token endpoint said.
#[derive(Debug)]
pub(crate) enum TokenOutcome {
    /// New tokens.
    Tokens(TokenSet),
    /// An error response, classified.
    Rejected {
        status: u16,
        class: FailureClass,
        error_code: Option<String>,
    },
}

/// The result of RFC 7662 introspection (no token inside).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Introspection {
    /// Whether the token is active. `false` says nothing about why (expired or revoked).
    pub active: bool,
    /// `exp`, unix seconds, on the provider's clock.
    pub expires_at: Option<i64>,
    /// `iat`, unix seconds, on the provider's clock.
    pub issued_at: Option<i64>,
    /// `scope`, split with the provider's separator.
    pub scopes: Vec<String>,
    /// `sub`.
    pub subject: Option<String>,
    /// `client_id`.
    pub client_id: Option<String>,
}

/// Which stored token an operation concerns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenKind {
    /// The access token.
    Access,
    /// The refresh token.
    Refresh,
}

impl TokenKind {
    pub(crate) fn hint(self) -> &'static str {
        match self {
            TokenKind::Access => "access_token",
            TokenKind::Refresh => "refresh_token",
        }
    }
}

/// Keeps an error code only if it looks like one (so a body can never smuggle a secret into an error).
fn sane_error_code(value: Option<&serde_json::Value>) -> Option<String> {
    Some(sanitize_error_code(value?.as_str()?))
}

/// An OAuth error code as it may be logged and audited: itself when it is shaped like a code
/// ([`crate::classify::sanitized_code`], the one rule for every provider code), else
/// `unrecognized_error_code`.
pub(crate) fn sanitize_error_code(code: &str) -> String {
    crate::classify::sanitized_code(code)
        .unwrap_or("unrecognized_error_code")
        .to_owned()
}

/// The class of a token-endpoint error response. `error_code` is the sanitized `error` field of
/// a JSON body, `None` when the body carries none (an HTML error page, a proxy's 400, an empty
/// body).
///
/// Only a well-formed OAuth error may mean the grant is gone: a body without an `error` code is
/// never [`FailureClass::GrantRevoked`] (nor [`FailureClass::InvalidClient`] unless the status is
/// 401), whatever the status, because a proxy or load balancer can answer a token request with
/// an HTML 400. Such answers are transient: the grant is kept and the refresh retried.
/// The provider's classification rules ([`ProviderConfig::classification_rules`]) apply
/// first, as on every API call.
pub(crate) fn token_error_class(
    provider: &ProviderConfig,
    reply: &HttpReply,
    error_code: Option<&str>,
) -> FailureClass {
    let rules = provider.classification_rules.as_ref();
    let verdict = classify_with(
        &provider.provider,
        rules,
        RequestKind::TokenRefresh,
        reply.status,
        &reply.headers,
        &reply.body,
    )
    .class;
    // A token error inside a success status (Slack and GitHub answer HTTP 200): the code
    // decides, by the provider's rules first, then by the classifier's one token-code table.
    let verdict = match (verdict, error_code) {
        (FailureClass::Ok, Some(code)) => rules
            .and_then(|rules| rules.token_class(code))
            .unwrap_or_else(|| crate::classify::token_error_class(&provider.provider, code)),
        (FailureClass::Ok, None) => FailureClass::ServerError,
        (verdict, _) => verdict,
    };
    if error_code.is_some() {
        return verdict;
    }
    match verdict {
        FailureClass::GrantRevoked => FailureClass::ServerError,
        FailureClass::InvalidClient if reply.status != 401 => FailureClass::ServerError,
        other => other,
    }
}

fn number(value: &serde_json::Value) -> Option<i64> {
    match value {
        serde_json::Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        serde_json::Value::String(s) => s.trim().parse::<i64>().ok(),
        _ => None,
    }
}

pub(crate) struct HttpReply {
    pub(crate) status: u16,
    pub(crate) headers: http::HeaderMap,
    pub(crate) body: Zeroizing<Vec<u8>>,
}

/// Sends a request with the bounded timeout and reads the whole (size-capped) body.
pub(crate) async fn send(
    request: reqwest::RequestBuilder,
    timeout: Duration,
    connector: &str,
    operation: &'static str,
) -> Result<HttpReply, VaultError> {
    let transport = |e: reqwest::Error| VaultError::Transport {
        connector: connector.to_owned(),
        operation,
        timed_out: e.is_timeout(),
    };
    let exchange = async {
        // A pooled connection the peer already closed (after an early error response) fails the
        // request before any response arrives: retry once, on a fresh connection, before it
        // counts as a failure. Timeouts are not retried (the bound is already spent).
        let retry = request.try_clone();
        let response = match request.send().await {
            Ok(response) => response,
            Err(e) if !e.is_timeout() && (e.is_request() || e.is_connect()) => match retry {
                Some(retry) => {
                    tracing::debug!(
                        connector,
                        operation,
                        "vault request failed before a response; retrying once"
                    );
                    retry.send().await.map_err(transport)?
                }
                None => return Err(transport(e)),
            },
            Err(e) => return Err(transport(e)),
        };
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        if response
            .content_length()
            .is_some_and(|n| n > MAX_BODY as u64)
        {
            return Err(VaultError::MalformedResponse {
                connector: connector.to_owned(),
                operation,
                reason: format!("the response body is larger than {MAX_BODY} bytes"),
            });
        }
        let body = Zeroizing::new(response.bytes().await.map_err(transport)?.to_vec());
        if body.len() > MAX_BODY {
            return Err(VaultError::MalformedResponse {
                connector: connector.to_owned(),
                operation,
                reason: format!("the response body is larger than {MAX_BODY} bytes"),
            });
        }
        Ok(HttpReply {
            status,
            headers,
            body,
        })
    };
    // reqwest's per-request timeout covers the body too; this outer bound is belt and braces.
    match tokio::time::timeout(timeout + Duration::from_millis(250), exchange).await {
        Ok(result) => result,
        Err(_) => Err(VaultError::Transport {
            connector: connector.to_owned(),
            operation,
            timed_out: true,
        }),
    }
}

fn with_client_auth(
    request: reqwest::RequestBuilder,
    provider: &ProviderConfig,
    form: &mut Vec<(&'static str, Zeroizing<String>)>,
) -> reqwest::RequestBuilder {
    match provider.client_auth {
        ClientAuth::Post => {
            form.push(("client_id", Zeroizing::new(provider.client_id.clone())));
            form.push((
                "client_secret",
                Zeroizing::new(provider.client_secret.expose().to_owned()),
            ));
            request
        }
        ClientAuth::Basic => {
            let id: String =
                url::form_urlencoded::byte_serialize(provider.client_id.as_bytes()).collect();
            let secret: Zeroizing<String> = Zeroizing::new(
                url::form_urlencoded::byte_serialize(provider.client_secret.expose().as_bytes())
                    .collect(),
            );
            request.basic_auth(id, Some(secret.as_str()))
        }
    }
}

fn form_request(
    http: &reqwest::Client,
    url: &url::Url,
    provider: &ProviderConfig,
    mut form: Vec<(&'static str, Zeroizing<String>)>,
    timeout: Duration,
) -> reqwest::RequestBuilder {
    let request = http
        .post(url.clone())
        .timeout(timeout)
        .header(http::header::ACCEPT, "application/json");
    let request = with_client_auth(request, provider, &mut form);
    let pairs: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
    request.form(&pairs)
}

/// A POST to the token endpoint, parsed into tokens or a classified rejection.
pub(crate) async fn token_request(
    http: &reqwest::Client,
    provider: &ProviderConfig,
    operation: &'static str,
    form: Vec<(&'static str, Zeroizing<String>)>,
    timeout: Duration,
) -> Result<TokenOutcome, VaultError> {
    let request = form_request(http, &provider.token_url, provider, form, timeout);
    let reply = send(request, timeout, &provider.connector, operation).await?;
    parse_token_reply(provider, operation, reply)
}

fn parse_token_reply(
    provider: &ProviderConfig,
    operation: &'static str,
    reply: HttpReply,
) -> Result<TokenOutcome, VaultError> {
    let malformed = |reason: &str| VaultError::MalformedResponse {
        connector: provider.connector.clone(),
        operation,
        reason: reason.to_owned(),
    };
    let json: Option<serde_json::Value> = serde_json::from_slice(&reply.body).ok();
    let success_status = (200..300).contains(&reply.status);
    let is_error_body = json.as_ref().is_some_and(|v| {
        v.get("error").is_some_and(|e| !e.is_null())
            || v.get("ok") == Some(&serde_json::Value::Bool(false))
    });

    if !success_status || is_error_body {
        let error_code = json.as_ref().and_then(|v| sane_error_code(v.get("error")));
        let class = token_error_class(provider, &reply, error_code.as_deref());
        return Ok(TokenOutcome::Rejected {
            status: reply.status,
            class,
            error_code,
        });
    }

    let Some(json) = json else {
        return Err(malformed("the body is not JSON"));
    };
    if !json.is_object() {
        return Err(malformed("the body is not a JSON object"));
    }
    let access_token = match json.get("access_token") {
        Some(serde_json::Value::String(s)) if !s.is_empty() => AccessToken::new(s.clone()),
        Some(_) => return Err(malformed("`access_token` is not a non-empty string")),
        None => return Err(malformed("`access_token` is missing")),
    };
    let refresh_token = match json.get("refresh_token") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) if s.is_empty() => None,
        Some(serde_json::Value::String(s)) => Some(RefreshToken::new(s.clone())),
        Some(_) => return Err(malformed("`refresh_token` is not a string")),
    };
    let expires_in = match json.get("expires_in") {
        None | Some(serde_json::Value::Null) => None,
        Some(v) => match number(v) {
            Some(n) if (0..=10 * 365 * 24 * 3600).contains(&n) => Some(n),
            _ => {
                return Err(malformed(
                    "`expires_in` is not a plausible number of seconds",
                ));
            }
        },
    };
    let scope = match json.get("scope") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(serde_json::Value::Array(items)) => Some(
            items
                .iter()
                .filter_map(|i| i.as_str())
                .collect::<Vec<_>>()
                .join(provider.scope_separator.as_str()),
        ),
        Some(_) => return Err(malformed("`scope` is not a string")),
    };
    Ok(TokenOutcome::Tokens(TokenSet {
        access_token,
        refresh_token,
        expires_in,
        scope,
        body: RawJson(json),
    }))
}

/// RFC 7662 introspection of a token.
pub(crate) async fn introspect(
    http: &reqwest::Client,
    provider: &ProviderConfig,
    token: &str,
    kind: TokenKind,
    timeout: Duration,
) -> Result<(Introspection, RawJson), VaultError> {
    let Some(url) = &provider.introspection_url else {
        return Err(VaultError::Config {
            connector: provider.connector.clone(),
            reason: "no introspection_url is configured".into(),
        });
    };
    let form = vec![
        ("token", Zeroizing::new(token.to_owned())),
        ("token_type_hint", Zeroizing::new(kind.hint().to_owned())),
    ];
    let request = form_request(http, url, provider, form, timeout);
    let reply = send(request, timeout, &provider.connector, "introspection").await?;
    let json: Option<serde_json::Value> = serde_json::from_slice(&reply.body).ok();
    if !(200..300).contains(&reply.status) {
        let error_code = json.as_ref().and_then(|v| sane_error_code(v.get("error")));
        let class = if reply.status == 401 || error_code.as_deref() == Some("invalid_client") {
            FailureClass::InvalidClient
        } else {
            classify_with(
                &provider.provider,
                provider.classification_rules.as_ref(),
                RequestKind::TokenRefresh,
                reply.status,
                &reply.headers,
                &reply.body,
            )
            .class
        };
        if class == FailureClass::InvalidClient {
            return Err(VaultError::InvalidClient {
                connector: provider.connector.clone(),
                operation: "introspection",
                error_code,
            });
        }
        return Err(VaultError::TokenEndpoint {
            connector: provider.connector.clone(),
            operation: "introspection",
            status: reply.status,
            class,
            error_code,
        });
    }
    let Some(json) = json.filter(|j| j.get("active").and_then(|a| a.as_bool()).is_some()) else {
        return Err(VaultError::MalformedResponse {
            connector: provider.connector.clone(),
            operation: "introspection",
            reason: "the body is not JSON with a boolean `active`".into(),
        });
    };
    let info = Introspection {
        active: json
            .get("active")
            .and_then(|a| a.as_bool())
            .unwrap_or(false),
        expires_at: json.get("exp").and_then(number),
        issued_at: json.get("iat").and_then(number),
        scopes: json
            .get("scope")
            .and_then(|s| s.as_str())
            .map(|s| provider.scope_separator.split(s))
            .unwrap_or_default(),
        subject: json.get("sub").and_then(|s| s.as_str()).map(str::to_owned),
        client_id: json
            .get("client_id")
            .and_then(|s| s.as_str())
            .map(str::to_owned),
    };
    Ok((info, RawJson(json)))
}

/// RFC 7009 revocation. 200 means revoked (also for an unknown token).
pub(crate) async fn revoke(
    http: &reqwest::Client,
    provider: &ProviderConfig,
    url: &url::Url,
    token: &str,
    kind: TokenKind,
    timeout: Duration,
) -> Result<(), VaultError> {
    let form = vec![
        ("token", Zeroizing::new(token.to_owned())),
        ("token_type_hint", Zeroizing::new(kind.hint().to_owned())),
    ];
    let request = form_request(http, url, provider, form, timeout);
    let reply = send(request, timeout, &provider.connector, "revocation").await?;
    if (200..300).contains(&reply.status) {
        return Ok(());
    }
    let json: Option<serde_json::Value> = serde_json::from_slice(&reply.body).ok();
    let error_code = json.as_ref().and_then(|v| sane_error_code(v.get("error")));
    if reply.status == 401 || error_code.as_deref() == Some("invalid_client") {
        return Err(VaultError::InvalidClient {
            connector: provider.connector.clone(),
            operation: "revocation",
            error_code,
        });
    }
    Err(VaultError::RevocationFailed {
        connector: provider.connector.clone(),
        status: reply.status,
    })
}

/// A GET of a user-info URL with a bearer token; returns its JSON.
pub(crate) async fn user_info(
    http: &reqwest::Client,
    provider: &ProviderConfig,
    url: &url::Url,
    token: &AccessToken,
    timeout: Duration,
) -> Result<RawJson, VaultError> {
    let request = http
        .get(url.clone())
        .timeout(timeout)
        .header(http::header::ACCEPT, "application/json")
        .bearer_auth(token.expose());
    let reply = send(request, timeout, &provider.connector, "user info").await?;
    let unavailable = |reason: String| VaultError::SubjectUnavailable {
        connector: provider.connector.clone(),
        reason,
    };
    if !(200..300).contains(&reply.status) {
        return Err(unavailable(format!(
            "the user-info URL answered HTTP {}",
            reply.status
        )));
    }
    serde_json::from_slice(&reply.body)
        .map(RawJson)
        .map_err(|_| unavailable("the user-info response is not JSON".into()))
}

/// The claims of a JWT (no signature check; see [`super::provider::SubjectSource::IdToken`]).
pub(crate) fn jwt_claims(jwt: &str) -> Option<RawJson> {
    use base64::Engine as _;
    let payload = jwt.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice(&bytes).ok().map(RawJson)
}

/// Joins the values at `pointers` with `:`; strings and numbers only.
pub(crate) fn subject_from(json: &RawJson, pointers: &[String]) -> Result<String, String> {
    if pointers.is_empty() {
        return Err("no JSON pointer is configured".into());
    }
    let mut parts = Vec::with_capacity(pointers.len());
    for pointer in pointers {
        match json.0.pointer(pointer) {
            Some(serde_json::Value::String(s)) if !s.is_empty() => parts.push(s.clone()),
            Some(serde_json::Value::Number(n)) => parts.push(n.to_string()),
            Some(_) => {
                return Err(format!(
                    "the value at `{pointer}` is not a non-empty string or number"
                ));
            }
            None => return Err(format!("the response has no value at `{pointer}`")),
        }
    }
    Ok(parts.join(":"))
}

#[cfg(test)]
#[path = "oauth_props.rs"]
mod props;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vault::secret::ClientSecret;

    fn provider() -> ProviderConfig {
        ProviderConfig::new(
            "p",
            "https://a.test/auth",
            "https://a.test/token",
            "id",
            ClientSecret::new("s"),
            "https://cb",
        )
        .unwrap()
    }

    fn reply(status: u16, body: &str) -> HttpReply {
        HttpReply {
            status,
            headers: http::HeaderMap::new(),
            body: Zeroizing::new(body.as_bytes().to_vec()),
        }
    }

    #[test]
    fn ok_false_with_200_is_a_rejection() {
        // Slack's envelope: its code table says `invalid_refresh_token` revokes.
        let out = parse_token_reply(
            &provider().with_provider("slack"),
            "refresh",
            reply(200, r#"{"ok":false,"error":"invalid_refresh_token"}"#),
        )
        .unwrap();
        assert!(
            matches!(
                out,
                TokenOutcome::Rejected {
                    class: FailureClass::GrantRevoked,
                    ..
                }
            ),
            "{out:?}"
        );
        // GitHub's: a token error with HTTP 200.
        let out = parse_token_reply(
            &provider().with_provider("github"),
            "refresh",
            reply(200, r#"{"error":"incorrect_client_credentials"}"#),
        )
        .unwrap();
        assert!(
            matches!(
                out,
                TokenOutcome::Rejected {
                    class: FailureClass::InvalidClient,
                    ..
                }
            ),
            "{out:?}"
        );
    }

    #[test]
    fn only_a_well_formed_oauth_error_revokes() {
        let class = |status, body: &str| match parse_token_reply(
            &provider(),
            "refresh",
            reply(status, body),
        )
        .unwrap()
        {
            TokenOutcome::Rejected { class, .. } => class,
            TokenOutcome::Tokens(_) => panic!("not a rejection"),
        };
        assert_eq!(
            class(400, r#"{"error":"invalid_grant"}"#),
            FailureClass::GrantRevoked
        );
        for (status, body) in [
            (400, "<html><body>Bad Request</body></html>"),
            (400, ""),
            (400, r#"{"message":"bad request"}"#),
            (403, "<html>Forbidden</html>"),
        ] {
            assert_eq!(
                class(status, body),
                FailureClass::ServerError,
                "{status} {body}"
            );
        }
        assert_ne!(
            class(401, "<html>Unauthorized</html>"),
            FailureClass::GrantRevoked
        );
        assert_eq!(
            class(401, r#"{"error":"invalid_client"}"#),
            FailureClass::InvalidClient
        );
    }

    #[test]
    fn malformed_bodies_name_no_content() {
        for body in [
            "<html>secret-xyz</html>",
            r#"{"access_token": 5}"#,
            r#"{"token":"secret-xyz"}"#,
            "[]",
        ] {
            let err = parse_token_reply(&provider(), "refresh", reply(200, body)).unwrap_err();
            assert!(matches!(err, VaultError::MalformedResponse { .. }));
            assert!(!err.to_string().contains("secret-xyz"));
        }
        let err = parse_token_reply(
            &provider(),
            "refresh",
            reply(200, r#"{"access_token":"a","expires_in":"soon"}"#),
        )
        .unwrap_err();
        assert!(err.to_string().contains("expires_in"));
    }

    #[test]
    fn string_numbers_and_error_code_sanitizing() {
        let out = parse_token_reply(
            &provider(),
            "refresh",
            reply(
                200,
                r#"{"access_token":"a","expires_in":"3600","issued_at":"1700000000000"}"#,
            ),
        )
        .unwrap();
        let TokenOutcome::Tokens(t) = out else {
            panic!()
        };
        assert_eq!(t.expires_in, Some(3600));
        let code = sane_error_code(Some(&serde_json::json!("leaked token abc def")));
        assert_eq!(code.as_deref(), Some("unrecognized_error_code"));
    }
}
