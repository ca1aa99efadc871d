//! Ready-made [`ProviderConfig`]s for the providers the failure classifier knows, and a
//! generic OpenID Connect preset built from a discovery document.
//!
//! Each preset sets everything but the client credentials: the endpoints, how scopes are
//! joined, the authorize parameters that make the provider issue a refresh token, where the
//! upstream subject (the stable user id checked on every re-consent) comes from, the scopes
//! the token lifecycle needs on top of the steps' scopes ([`ProviderConfig::lifecycle_scopes`]),
//! whether an idempotency header is worth sending, and the classifier name
//! ([`ProviderConfig::provider`]) that selects the provider's failure table in
//! [`crate::classify`].
//!
//! | Preset | Classifier name | Subject | Lifecycle scopes | Needs |
//! |---|---|---|---|---|
//! | [`salesforce`] | `salesforce` | token response `id` URL | `refresh_token` | login host |
//! | [`atlassian`] | `atlassian` | `GET /me` `account_id` | `offline_access`, `read:me` | – |
//! | [`slack`] | `slack` | token response `team.id:authed_user.id` | – | – |
//! | [`github`] | `github` | `GET /user` numeric `id` | – | – |
//! | [`google`] | `google` | `id_token` `sub` | `openid` | – |
//! | [`microsoft`] | `microsoft` | `id_token` `tid:oid` | `openid`, `offline_access` | tenant |
//! | [`oidc`] | `standard` | `id_token` `sub` | `openid` (+ `offline_access` if offered) | discovery document |
//!
//! A preset's fields stay public and its builders stay available: change what your
//! registration differs in (`.with_refresh_margin(…)`, `.with_authorize_param(…)`).
//! [`at_origin`] points every endpoint of a preset at another origin (the sandbox emulators,
//! a recording proxy).
//!
//! ```
//! use chain_runtime::vault::presets::{self, OAuthClient};
//!
//! let client = OAuthClient::new("my-client-id", "my-client-secret", "https://app.example/oauth/callback");
//! let google = presets::google("calendar", &client).unwrap();
//! assert_eq!(google.provider, "google");
//! assert!(google.lifecycle_scopes.contains(&"openid".to_owned()));
//! let graph = presets::microsoft("graph", &client, "contoso.onmicrosoft.com").unwrap();
//! assert_eq!(graph.provider, "microsoft"); // a connector named `graph`, classified as Microsoft
//! ```

use std::time::Duration;

use url::Url;

use super::error::VaultError;
use super::provider::{ClientAuth, ProviderConfig, ScopeSeparator, SubjectSource};
use super::secret::ClientSecret;
use crate::classify::Provider;

/// The client registration a preset needs: id, secret and the redirect URI registered with
/// the provider.
#[derive(Clone, Debug)]
pub struct OAuthClient {
    /// The OAuth `client_id`.
    pub client_id: String,
    /// The OAuth `client_secret` (never printed).
    pub client_secret: ClientSecret,
    /// The redirect URI registered at the provider.
    pub redirect_uri: String,
}

impl OAuthClient {
    /// A client registration.
    pub fn new(
        client_id: impl Into<String>,
        client_secret: impl Into<String>,
        redirect_uri: impl Into<String>,
    ) -> Self {
        Self {
            client_id: client_id.into(),
            client_secret: ClientSecret::new(client_secret.into()),
            redirect_uri: redirect_uri.into(),
        }
    }
}

/// The classifier name of providers without a table of their own: RFC 6749 / 6750 / 9470 only.
pub const STANDARD: &str = "standard";

/// The classifier names [`crate::classify`] has a provider table for (plus the alias `jira`).
pub const CLASSIFIER_NAMES: [&str; 7] = [
    "salesforce",
    "atlassian",
    "jira",
    "slack",
    "github",
    "google",
    "microsoft",
];

/// Salesforce production login host.
pub const SALESFORCE_LOGIN: &str = "https://login.salesforce.com";
/// Salesforce sandbox-org login host.
pub const SALESFORCE_TEST_LOGIN: &str = "https://test.salesforce.com";

fn base(
    connector: &str,
    client: &OAuthClient,
    authorize: &str,
    token: &str,
) -> Result<ProviderConfig, VaultError> {
    ProviderConfig::new(
        connector,
        authorize,
        token,
        client.client_id.clone(),
        client.client_secret.clone(),
        client.redirect_uri.clone(),
    )
}

fn url(connector: &str, text: &str) -> Result<Url, VaultError> {
    Url::parse(text).map_err(|e| VaultError::Config {
        connector: connector.to_owned(),
        reason: format!("`{text}` is not an absolute URL: {e}"),
    })
}

fn pointers(list: &[&str]) -> Vec<String> {
    list.iter().map(|p| (*p).to_owned()).collect()
}

/// Salesforce (connected app, web-server flow).
///
/// - `login_host`: [`SALESFORCE_LOGIN`], [`SALESFORCE_TEST_LOGIN`] or your My Domain URL;
///   endpoints under `/services/oauth2/` (authorize, token, revoke, introspect).
/// - Subject: the token response's `id` URL (`…/id/{orgId}/{userId}`: org and user).
/// - Expiry: Salesforce sends no `expires_in`; the vault asks RFC 7662 introspection for
///   `exp`, and falls back to the default 2-hour session timeout.
/// - Lifecycle scope `refresh_token`: without it there is no refresh token.
/// - Classifier `salesforce`: 401 `INVALID_SESSION_ID` arrays, 403 `REQUEST_LIMIT_EXCEEDED`.
pub fn salesforce(
    connector: &str,
    client: &OAuthClient,
    login_host: &str,
) -> Result<ProviderConfig, VaultError> {
    let host = login_host.trim_end_matches('/');
    base(
        connector,
        client,
        &format!("{host}/services/oauth2/authorize"),
        &format!("{host}/services/oauth2/token"),
    )?
    .with_revoke_url(&format!("{host}/services/oauth2/revoke"))?
    .with_introspection_url(&format!("{host}/services/oauth2/introspect"))
    .map(|c| {
        c.with_provider("salesforce")
            .with_subject(SubjectSource::TokenResponse {
                pointers: pointers(&["/id"]),
            })
            .with_default_token_lifetime(Duration::from_secs(2 * 3600))
            .with_lifecycle_scopes(["refresh_token"])
    })
}

/// Atlassian Cloud (Jira, Confluence) OAuth 2.0 3LO.
///
/// - Endpoints `https://auth.atlassian.com/authorize` and `/oauth/token`, with
///   `audience=api.atlassian.com` and `prompt=consent` on the authorize request.
/// - Subject: `account_id` from `GET https://api.atlassian.com/me` (needs `read:me`).
/// - Lifecycle scopes `offline_access` (refresh tokens; they rotate, with a 10-minute leeway
///   for the used one) and `read:me`.
/// - Classifier `atlassian`: 401 "scope does not match", `invalid_grant` as 403.
pub fn atlassian(connector: &str, client: &OAuthClient) -> Result<ProviderConfig, VaultError> {
    Ok(base(
        connector,
        client,
        "https://auth.atlassian.com/authorize",
        "https://auth.atlassian.com/oauth/token",
    )?
    .with_provider("atlassian")
    .with_subject(SubjectSource::UserInfo {
        url: url(connector, "https://api.atlassian.com/me")?,
        pointers: pointers(&["/account_id"]),
    })
    .with_authorize_param("audience", "api.atlassian.com")
    .with_authorize_param("prompt", "consent")
    .with_lifecycle_scopes(["offline_access", "read:me"]))
}

/// Slack (OAuth v2, with token rotation enabled on the app).
///
/// - Endpoints `https://slack.com/oauth/v2/authorize`, `https://slack.com/api/oauth.v2.access`,
///   revocation `https://slack.com/api/auth.revoke`.
/// - Scopes are joined with commas.
/// - Subject: `team.id:authed_user.id` from the token response.
/// - Classifier `slack`: every error is HTTP 200 `{"ok":false,"error":…}`.
pub fn slack(connector: &str, client: &OAuthClient) -> Result<ProviderConfig, VaultError> {
    Ok(base(
        connector,
        client,
        "https://slack.com/oauth/v2/authorize",
        "https://slack.com/api/oauth.v2.access",
    )?
    .with_revoke_url("https://slack.com/api/auth.revoke")?
    .with_provider("slack")
    .with_scope_separator(ScopeSeparator::Comma)
    .with_subject(SubjectSource::TokenResponse {
        pointers: pointers(&["/team/id", "/authed_user/id"]),
    }))
}

/// GitHub (an OAuth app, or a GitHub App's user-to-server tokens).
///
/// - Endpoints `https://github.com/login/oauth/authorize` and `/login/oauth/access_token`
///   (the vault sends `Accept: application/json`, so errors come back as JSON, with HTTP 200).
/// - Scopes are joined with commas, as GitHub reports them (`repo,user`).
/// - Subject: the numeric `id` of `GET https://api.github.com/user` (logins can be renamed).
/// - No revocation URL: GitHub has no RFC 7009 endpoint (its `DELETE
///   /applications/{client_id}/grant` is a REST call with Basic auth), so a disconnect forgets
///   the tokens without telling GitHub.
/// - OAuth-app tokens never expire and come without a refresh token; GitHub App user tokens
///   last 8 hours and every refresh kills the used refresh token *and* the old access token.
///   Both work unchanged with this preset.
/// - No idempotency header: the REST API ignores it.
/// - Classifier `github`: 200 token errors, scope failures as 404 with `X-Accepted-OAuth-Scopes`,
///   rate limits as 403.
pub fn github(connector: &str, client: &OAuthClient) -> Result<ProviderConfig, VaultError> {
    Ok(base(
        connector,
        client,
        "https://github.com/login/oauth/authorize",
        "https://github.com/login/oauth/access_token",
    )?
    .with_provider("github")
    .with_scope_separator(ScopeSeparator::Comma)
    .with_subject(SubjectSource::UserInfo {
        url: url(connector, "https://api.github.com/user")?,
        pointers: pointers(&["/id"]),
    })
    .with_idempotency_header(None))
}

/// Google APIs (OAuth 2.0 for web-server applications, OpenID Connect).
///
/// - Endpoints `https://accounts.google.com/o/oauth2/v2/auth`,
///   `https://oauth2.googleapis.com/token`, revocation `https://oauth2.googleapis.com/revoke`.
/// - `access_type=offline`: without it Google issues no refresh token. `prompt=consent`:
///   without it a second consent returns no new refresh token. `include_granted_scopes=true`:
///   a re-consent for one more scope keeps the scopes granted before.
/// - Subject: `sub` of the `id_token`; lifecycle scope `openid` makes Google return one.
/// - Refresh tokens do not rotate; a dead one is 400 `invalid_grant`.
/// - No idempotency header: Google APIs ignore it (Calendar makes inserts idempotent with a
///   client-chosen event `id`).
/// - Classifier `google`: `ErrorInfo` reasons, `WWW-Authenticate` scope challenges listing
///   alternatives, legacy 403 rate limits.
pub fn google(connector: &str, client: &OAuthClient) -> Result<ProviderConfig, VaultError> {
    Ok(base(
        connector,
        client,
        "https://accounts.google.com/o/oauth2/v2/auth",
        "https://oauth2.googleapis.com/token",
    )?
    .with_revoke_url("https://oauth2.googleapis.com/revoke")?
    .with_provider("google")
    .with_subject(SubjectSource::IdToken {
        pointers: pointers(&["/sub"]),
    })
    .with_authorize_param("access_type", "offline")
    .with_authorize_param("prompt", "consent")
    .with_authorize_param("include_granted_scopes", "true")
    .with_lifecycle_scopes(["openid"])
    .with_idempotency_header(None))
}

/// Microsoft identity platform v2 and Microsoft Graph.
///
/// - `tenant`: a tenant id or domain, or `common` / `organizations` / `consumers`; endpoints
///   `https://login.microsoftonline.com/{tenant}/oauth2/v2.0/authorize` and `/token`.
/// - Subject: `tid:oid` of the `id_token` (the Entra `sub` is pairwise per application and
///   not stable across applications); lifecycle scopes `openid` (the id_token) and
///   `offline_access` (without it there is no refresh token).
/// - Every refresh returns a new refresh token; the used one stays valid.
/// - No revocation URL: Entra has no RFC 7009 endpoint for delegated tokens.
/// - No idempotency header: Graph ignores it.
/// - Classifier `microsoft`: numeric `AADSTS` `error_codes`, claims challenges
///   (`insufficient_claims`), `InvalidAuthenticationToken` messages.
pub fn microsoft(
    connector: &str,
    client: &OAuthClient,
    tenant: &str,
) -> Result<ProviderConfig, VaultError> {
    let tenant = tenant.trim_matches('/');
    if tenant.is_empty() || tenant.contains('/') {
        return Err(VaultError::Config {
            connector: connector.to_owned(),
            reason: format!("`{tenant}` is not a Microsoft tenant (id, domain or `common`)"),
        });
    }
    let login = format!("https://login.microsoftonline.com/{tenant}/oauth2/v2.0");
    Ok(base(
        connector,
        client,
        &format!("{login}/authorize"),
        &format!("{login}/token"),
    )?
    .with_provider("microsoft")
    .with_subject(SubjectSource::IdToken {
        pointers: pointers(&["/tid", "/oid"]),
    })
    .with_lifecycle_scopes(["openid", "offline_access"])
    .with_idempotency_header(None))
}

/// Any OpenID Connect provider, from its discovery document
/// (`{issuer}/.well-known/openid-configuration`, already fetched and parsed; see
/// [`oidc_discover`]).
///
/// Takes `authorization_endpoint` and `token_endpoint` (required), `revocation_endpoint`,
/// `introspection_endpoint`; authenticates with HTTP Basic when the document lists only
/// `client_secret_basic`; subject `sub` of the `id_token`; lifecycle scopes `openid`, plus
/// `offline_access` when `scopes_supported` lists it. Classifier [`STANDARD`].
pub fn oidc(
    connector: &str,
    client: &OAuthClient,
    discovery: &serde_json::Value,
) -> Result<ProviderConfig, VaultError> {
    let field = |name: &str| discovery.get(name).and_then(|v| v.as_str());
    let required = |name: &str| {
        field(name).ok_or_else(|| VaultError::Config {
            connector: connector.to_owned(),
            reason: format!("the discovery document has no `{name}`"),
        })
    };
    let mut config = base(
        connector,
        client,
        required("authorization_endpoint")?,
        required("token_endpoint")?,
    )?
    .with_provider(STANDARD)
    .with_subject(SubjectSource::IdToken {
        pointers: pointers(&["/sub"]),
    })
    .with_lifecycle_scopes(["openid"]);
    if let Some(revoke) = field("revocation_endpoint") {
        config = config.with_revoke_url(revoke)?;
    }
    if let Some(introspect) = field("introspection_endpoint") {
        config = config.with_introspection_url(introspect)?;
    }
    let listed = |name: &str, value: &str| {
        discovery
            .get(name)
            .and_then(|v| v.as_array())
            .is_some_and(|a| a.iter().any(|v| v.as_str() == Some(value)))
    };
    if listed("scopes_supported", "offline_access") {
        config = config.with_lifecycle_scopes(["offline_access"]);
    }
    if listed(
        "token_endpoint_auth_methods_supported",
        "client_secret_basic",
    ) && !listed(
        "token_endpoint_auth_methods_supported",
        "client_secret_post",
    ) {
        config = config.with_client_auth(ClientAuth::Basic);
    }
    Ok(config)
}

/// Fetches `{issuer}/.well-known/openid-configuration` and builds the [`oidc`] preset. The
/// document's `issuer` must equal `issuer` (OIDC Discovery §4.3).
pub async fn oidc_discover(
    connector: &str,
    client: &OAuthClient,
    issuer: &str,
    timeout: Duration,
) -> Result<ProviderConfig, VaultError> {
    let issuer = issuer.trim_end_matches('/');
    let failed = |reason: String| VaultError::Config {
        connector: connector.to_owned(),
        reason,
    };
    let address = format!("{issuer}/.well-known/openid-configuration");
    let response = reqwest::Client::new()
        .get(&address)
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| failed(format!("could not fetch {address}: {e}")))?;
    if !response.status().is_success() {
        return Err(failed(format!(
            "{address} answered HTTP {}",
            response.status().as_u16()
        )));
    }
    let document: serde_json::Value = response
        .json()
        .await
        .map_err(|e| failed(format!("{address} is not JSON: {e}")))?;
    let stated = document.get("issuer").and_then(|v| v.as_str());
    if stated.map(|s| s.trim_end_matches('/')) != Some(issuer) {
        return Err(failed(format!(
            "the discovery document names issuer {stated:?}, not `{issuer}`"
        )));
    }
    oidc(connector, client, &document)
}

/// Points every endpoint of `config` (authorize, token, revoke, introspection, user info) at
/// `origin` (`scheme://host:port`), keeping the paths: for the sandbox emulators, which serve
/// each provider's paths on one local port, or a recording proxy. The redirect URI is kept.
pub fn at_origin(mut config: ProviderConfig, origin: &str) -> Result<ProviderConfig, VaultError> {
    let origin = url(&config.connector, origin)?;
    let move_to = |u: &mut Url| {
        let mut moved = origin.clone();
        moved.set_path(u.path());
        moved.set_query(u.query());
        *u = moved;
    };
    move_to(&mut config.authorize_url);
    move_to(&mut config.token_url);
    if let Some(u) = config.revoke_url.as_mut() {
        move_to(u);
    }
    if let Some(u) = config.introspection_url.as_mut() {
        move_to(u);
    }
    if let SubjectSource::UserInfo { url: u, .. } = &mut config.subject {
        move_to(u);
    }
    Ok(config)
}

/// Whether `name` selects a provider table of the classifier or is [`STANDARD`].
pub fn is_known_classifier_name(name: &str) -> bool {
    let name = name.trim();
    Provider::from_name(name) != Provider::Standard || name.eq_ignore_ascii_case(STANDARD)
}

/// Logs a warning when `config.provider` is neither a classifier name nor [`STANDARD`]: its
/// responses get the generic classification, which misreads provider quirks (a connector
/// named `graph` without `.with_provider("microsoft")` loses the `AADSTS` codes). Returns the
/// warning.
pub fn warn_if_unclassified(config: &ProviderConfig) -> Option<String> {
    if is_known_classifier_name(&config.provider) {
        return None;
    }
    let warning = format!(
        "connector `{}` is classified as `{}`, which is no classifier name ({}, or `{STANDARD}`): its failures get the standard classification only; use a preset or `.with_provider(…)`",
        config.connector,
        config.provider,
        CLASSIFIER_NAMES.join(", ")
    );
    tracing::warn!(connector = %config.connector, provider = %config.provider, "{warning}");
    Some(warning)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> OAuthClient {
        OAuthClient::new("id", "s3cret", "https://app.test/cb")
    }

    #[test]
    fn presets_name_known_classifiers() {
        let c = client();
        for config in [
            salesforce("a", &c, SALESFORCE_LOGIN).unwrap(),
            atlassian("b", &c).unwrap(),
            slack("c", &c).unwrap(),
            github("d", &c).unwrap(),
            google("e", &c).unwrap(),
            microsoft("f", &c, "common").unwrap(),
        ] {
            assert!(
                warn_if_unclassified(&config).is_none(),
                "{}",
                config.provider
            );
        }
        let custom = ProviderConfig::new(
            "graph",
            "https://x.test/a",
            "https://x.test/t",
            "id",
            ClientSecret::new("s"),
            "https://app.test/cb",
        )
        .unwrap();
        let warning = warn_if_unclassified(&custom).unwrap();
        assert!(warning.contains("`graph`") && !warning.contains("s3cret"));
        assert!(microsoft("f", &c, "").is_err());
        assert!(microsoft("f", &c, "a/b").is_err());
    }

    #[test]
    fn oidc_reads_the_discovery_document() {
        let doc = serde_json::json!({
            "issuer": "https://id.test", "authorization_endpoint": "https://id.test/auth",
            "token_endpoint": "https://id.test/token", "revocation_endpoint": "https://id.test/revoke",
            "scopes_supported": ["openid", "offline_access"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic"],
        });
        let config = oidc("idp", &client(), &doc).unwrap();
        assert_eq!(config.token_url.as_str(), "https://id.test/token");
        assert_eq!(config.lifecycle_scopes, ["openid", "offline_access"]);
        assert_eq!(config.client_auth, ClientAuth::Basic);
        assert!(config.introspection_url.is_none());
        let missing = serde_json::json!({ "issuer": "https://id.test" });
        assert!(oidc("idp", &client(), &missing).is_err());
    }

    #[test]
    fn at_origin_moves_every_endpoint() {
        let config = at_origin(github("gh", &client()).unwrap(), "http://127.0.0.1:9").unwrap();
        assert_eq!(
            config.token_url.as_str(),
            "http://127.0.0.1:9/login/oauth/access_token"
        );
        let SubjectSource::UserInfo { url, .. } = &config.subject else {
            panic!("GitHub reads the subject from /user");
        };
        assert_eq!(url.as_str(), "http://127.0.0.1:9/user");
        assert_eq!(config.redirect_uri, "https://app.test/cb");
    }
}
