//! Provider configuration: endpoints, client credentials and the quirks of each provider.

use std::time::Duration;

use url::Url;

use super::error::VaultError;
use super::secret::ClientSecret;
use super::store::StoreError;

/// How the client authenticates at the token, revocation and introspection endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// `client_id` and `client_secret` in the form body (`client_secret_post`).
    Post,
    /// HTTP Basic with the URL-encoded id and secret (`client_secret_basic`).
    Basic,
}

/// How scopes are joined in requests and split in token responses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScopeSeparator {
    /// RFC 6749: space separated.
    Space,
    /// Slack and GitHub: comma separated.
    Comma,
}

impl ScopeSeparator {
    /// The separator as a string.
    pub fn as_str(self) -> &'static str {
        match self {
            ScopeSeparator::Space => " ",
            ScopeSeparator::Comma => ",",
        }
    }

    /// Splits a scope string as the provider reports it, dropping empty items.
    pub fn split(self, text: &str) -> Vec<String> {
        let sep = match self {
            ScopeSeparator::Space => ' ',
            ScopeSeparator::Comma => ',',
        };
        let mut out: Vec<String> = Vec::new();
        for item in text.split(sep).map(str::trim).filter(|s| !s.is_empty()) {
            if !out.iter().any(|s| s == item) {
                out.push(item.to_owned());
            }
        }
        out
    }
}

/// Where the provider's stable user id (the upstream subject) comes from.
///
/// Each variant names JSON pointers (RFC 6901); several pointers are joined with `:` (for
/// example Slack `team.id` + `authed_user.id`). String and number values are accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SubjectSource {
    /// Fields of the token response: Salesforce `["/id"]`, Slack `["/team/id", "/authed_user/id"]`.
    TokenResponse {
        /// JSON pointers into the token response.
        pointers: Vec<String>,
    },
    /// Claims of the OIDC `id_token` returned by the token endpoint (read without signature check,
    /// as OIDC Core 3.1.3.7 allows for a token received directly from the token endpoint over TLS):
    /// Google `["/sub"]`, Microsoft `["/tid", "/oid"]`.
    IdToken {
        /// JSON pointers into the id_token claims.
        pointers: Vec<String>,
    },
    /// A `GET` of a user-info URL with the new access token: Atlassian
    /// `https://api.atlassian.com/me` `["/account_id"]`, GitHub `https://api.github.com/user` `["/id"]`.
    UserInfo {
        /// The URL.
        url: Url,
        /// JSON pointers into its JSON response.
        pointers: Vec<String>,
    },
    /// RFC 7662 introspection of the new access token at the configured introspection URL, e.g. `["/sub"]`.
    Introspection {
        /// JSON pointers into the introspection response.
        pointers: Vec<String>,
    },
}

/// The configuration of one connector (an OAuth client registered at one provider).
#[derive(Clone, Debug)]
pub struct ProviderConfig {
    /// The connector name that keys connected accounts (e.g. `salesforce`).
    pub connector: String,
    /// The provider name passed to [`crate::classify::classify`]; defaults to `connector`.
    pub provider: String,
    /// Authorization endpoint.
    pub authorize_url: Url,
    /// Token endpoint.
    pub token_url: Url,
    /// RFC 7009 revocation endpoint, if the provider has one.
    pub revoke_url: Option<Url>,
    /// RFC 7662 introspection endpoint, if the provider has one.
    pub introspection_url: Option<Url>,
    /// OAuth client id.
    pub client_id: String,
    /// OAuth client secret.
    pub client_secret: ClientSecret,
    /// How the client authenticates.
    pub client_auth: ClientAuth,
    /// The registered redirect URI.
    pub redirect_uri: String,
    /// How scopes are joined and split.
    pub scope_separator: ScopeSeparator,
    /// Where the upstream subject comes from.
    pub subject: SubjectSource,
    /// Access-token lifetime when the token response has no `expires_in` and no introspection URL
    /// is configured (Salesforce: the session timeout). `None`: the expiry stays unknown.
    pub default_token_lifetime: Option<Duration>,
    /// Refresh proactively when the token expires within this margin (default 5 minutes).
    pub refresh_margin: Duration,
    /// How long a consent link stays valid (default 10 minutes).
    pub consent_ttl: Duration,
    /// Extra authorization parameters (e.g. Google `access_type=offline`, `prompt=consent`).
    pub extra_authorize_params: Vec<(String, String)>,
    /// The provider's classification quirks as data, consulted before everything else the
    /// classifier knows (see [`crate::classify::rules`]).
    pub classification_rules: Option<crate::classify::RuleSet>,
    /// Scopes the provider needs for the credential's own lifecycle rather than for any step:
    /// refresh (`offline_access`, Salesforce `refresh_token`) or identity (`openid`, Atlassian
    /// `read:me`). Every consent link asks for them, and least-privilege checks must not report
    /// them as unused.
    pub lifecycle_scopes: Vec<String>,
    /// The header that carries a step's idempotency key on every call, or `None` to send
    /// none (providers that ignore it). Default `Idempotency-Key`.
    pub idempotency_header: Option<String>,
}

impl ProviderConfig {
    /// A configuration with the defaults: `client_secret_post`, space-separated scopes, subject
    /// from introspection `sub`, no default lifetime, 5-minute margin, 10-minute consent links.
    pub fn new(
        connector: impl Into<String>,
        authorize_url: &str,
        token_url: &str,
        client_id: impl Into<String>,
        client_secret: ClientSecret,
        redirect_uri: impl Into<String>,
    ) -> Result<Self, VaultError> {
        let connector = connector.into();
        Ok(Self {
            provider: connector.clone(),
            authorize_url: parse_url(&connector, "authorize_url", authorize_url)?,
            token_url: parse_url(&connector, "token_url", token_url)?,
            connector,
            revoke_url: None,
            introspection_url: None,
            client_id: client_id.into(),
            client_secret,
            client_auth: ClientAuth::Post,
            redirect_uri: redirect_uri.into(),
            scope_separator: ScopeSeparator::Space,
            subject: SubjectSource::Introspection {
                pointers: vec!["/sub".into()],
            },
            default_token_lifetime: None,
            refresh_margin: Duration::from_secs(5 * 60),
            consent_ttl: Duration::from_secs(10 * 60),
            extra_authorize_params: Vec::new(),
            classification_rules: None,
            lifecycle_scopes: Vec::new(),
            idempotency_header: Some(DEFAULT_IDEMPOTENCY_HEADER.to_owned()),
        })
    }

    /// Adds scopes every consent link asks for (see [`ProviderConfig::lifecycle_scopes`]).
    pub fn with_lifecycle_scopes<S: AsRef<str>>(
        mut self,
        scopes: impl IntoIterator<Item = S>,
    ) -> Self {
        for s in scopes {
            let s = s.as_ref();
            if !self.lifecycle_scopes.iter().any(|l| l == s) {
                self.lifecycle_scopes.push(s.to_owned());
            }
        }
        self
    }

    /// Sets the idempotency header name; `None` sends no idempotency header.
    pub fn with_idempotency_header(mut self, header: Option<&str>) -> Self {
        self.idempotency_header = header.map(str::to_owned);
        self
    }

    /// Sets the RFC 7009 revocation endpoint.
    pub fn with_revoke_url(mut self, url: &str) -> Result<Self, VaultError> {
        self.revoke_url = Some(parse_url(&self.connector, "revoke_url", url)?);
        Ok(self)
    }

    /// Sets the RFC 7662 introspection endpoint.
    pub fn with_introspection_url(mut self, url: &str) -> Result<Self, VaultError> {
        self.introspection_url = Some(parse_url(&self.connector, "introspection_url", url)?);
        Ok(self)
    }

    /// Sets the subject source.
    pub fn with_subject(mut self, subject: SubjectSource) -> Self {
        self.subject = subject;
        self
    }

    /// Sets the provider name used for failure classification.
    pub fn with_provider(mut self, provider: impl Into<String>) -> Self {
        self.provider = provider.into();
        self
    }

    /// Sets the scope separator.
    pub fn with_scope_separator(mut self, separator: ScopeSeparator) -> Self {
        self.scope_separator = separator;
        self
    }

    /// Sets the client authentication method.
    pub fn with_client_auth(mut self, auth: ClientAuth) -> Self {
        self.client_auth = auth;
        self
    }

    /// Sets the lifetime assumed when the token response has no `expires_in`.
    pub fn with_default_token_lifetime(mut self, lifetime: Duration) -> Self {
        self.default_token_lifetime = Some(lifetime);
        self
    }

    /// Sets the proactive refresh margin.
    pub fn with_refresh_margin(mut self, margin: Duration) -> Self {
        self.refresh_margin = margin;
        self
    }

    /// Sets how long consent links stay valid.
    pub fn with_consent_ttl(mut self, ttl: Duration) -> Self {
        self.consent_ttl = ttl;
        self
    }

    /// Sets the provider's classification rules (validated when the [`crate::classify::RuleSet`]
    /// was built).
    pub fn with_classification_rules(mut self, rules: crate::classify::RuleSet) -> Self {
        self.classification_rules = Some(rules);
        self
    }

    /// Adds an authorization parameter.
    pub fn with_authorize_param(
        mut self,
        name: impl Into<String>,
        value: impl Into<String>,
    ) -> Self {
        self.extra_authorize_params
            .push((name.into(), value.into()));
        self
    }
}

/// The idempotency header [`ProviderConfig::new`] sets.
pub const DEFAULT_IDEMPOTENCY_HEADER: &str = "Idempotency-Key";

fn default_idempotency_header() -> Option<String> {
    Some(DEFAULT_IDEMPOTENCY_HEADER.to_owned())
}

/// The stored form of a [`ProviderConfig`] without its client secret (format version 1).
/// Field names are stable: the `config` column of `vault_providers`.
#[derive(serde::Serialize, serde::Deserialize)]
struct ProviderRecord {
    format: u32,
    connector: String,
    provider: String,
    authorize_url: String,
    token_url: String,
    revoke_url: Option<String>,
    introspection_url: Option<String>,
    client_id: String,
    client_auth: ClientAuth,
    redirect_uri: String,
    scope_separator: ScopeSeparator,
    subject: SubjectRecord,
    default_token_lifetime: Option<Duration>,
    refresh_margin: Duration,
    consent_ttl: Duration,
    extra_authorize_params: Vec<(String, String)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    classification_rules: Option<crate::classify::RuleSet>,
    #[serde(default)]
    lifecycle_scopes: Vec<String>,
    #[serde(default = "default_idempotency_header")]
    idempotency_header: Option<String>,
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(tag = "from", rename_all = "snake_case")]
enum SubjectRecord {
    TokenResponse { pointers: Vec<String> },
    IdToken { pointers: Vec<String> },
    UserInfo { url: String, pointers: Vec<String> },
    Introspection { pointers: Vec<String> },
}

const RECORD_FORMAT: u32 = 1;

impl ProviderConfig {
    /// Every field but the client secret, as the JSON stored in `vault_providers.config`.
    pub(crate) fn to_stored_json(&self) -> Result<String, VaultError> {
        let subject = match &self.subject {
            SubjectSource::TokenResponse { pointers } => SubjectRecord::TokenResponse {
                pointers: pointers.clone(),
            },
            SubjectSource::IdToken { pointers } => SubjectRecord::IdToken {
                pointers: pointers.clone(),
            },
            SubjectSource::UserInfo { url, pointers } => SubjectRecord::UserInfo {
                url: url.to_string(),
                pointers: pointers.clone(),
            },
            SubjectSource::Introspection { pointers } => SubjectRecord::Introspection {
                pointers: pointers.clone(),
            },
        };
        let record = ProviderRecord {
            format: RECORD_FORMAT,
            connector: self.connector.clone(),
            provider: self.provider.clone(),
            authorize_url: self.authorize_url.to_string(),
            token_url: self.token_url.to_string(),
            revoke_url: self.revoke_url.as_ref().map(Url::to_string),
            introspection_url: self.introspection_url.as_ref().map(Url::to_string),
            client_id: self.client_id.clone(),
            client_auth: self.client_auth,
            redirect_uri: self.redirect_uri.clone(),
            scope_separator: self.scope_separator,
            subject,
            default_token_lifetime: self.default_token_lifetime,
            refresh_margin: self.refresh_margin,
            consent_ttl: self.consent_ttl,
            extra_authorize_params: self.extra_authorize_params.clone(),
            classification_rules: self.classification_rules.clone(),
            lifecycle_scopes: self.lifecycle_scopes.clone(),
            idempotency_header: self.idempotency_header.clone(),
        };
        serde_json::to_string(&record).map_err(|e| VaultError::Config {
            connector: self.connector.clone(),
            reason: format!("cannot encode the configuration for storage: {e}"),
        })
    }

    /// Rebuilds a configuration from [`ProviderConfig::to_stored_json`] and its client secret.
    pub(crate) fn from_stored_json(
        connector: &str,
        json: &str,
        client_secret: ClientSecret,
    ) -> Result<Self, StoreError> {
        let corrupt = |reason: String| {
            StoreError::Corrupt(format!(
                "the stored configuration of connector `{connector}`: {reason}"
            ))
        };
        let r: ProviderRecord =
            serde_json::from_str(json).map_err(|e| corrupt(format!("not decodable: {e}")))?;
        if r.format != RECORD_FORMAT {
            return Err(corrupt(format!(
                "format {} is not supported (this build reads format {RECORD_FORMAT})",
                r.format
            )));
        }
        if r.connector != connector {
            return Err(corrupt(format!("it names connector `{}`", r.connector)));
        }
        let url = |field: &str, text: &str| {
            Url::parse(text).map_err(|e| corrupt(format!("`{field}` is not a URL: {e}")))
        };
        let subject = match r.subject {
            SubjectRecord::TokenResponse { pointers } => SubjectSource::TokenResponse { pointers },
            SubjectRecord::IdToken { pointers } => SubjectSource::IdToken { pointers },
            SubjectRecord::UserInfo { url: u, pointers } => SubjectSource::UserInfo {
                url: url("subject.url", &u)?,
                pointers,
            },
            SubjectRecord::Introspection { pointers } => SubjectSource::Introspection { pointers },
        };
        Ok(Self {
            connector: r.connector,
            provider: r.provider,
            authorize_url: url("authorize_url", &r.authorize_url)?,
            token_url: url("token_url", &r.token_url)?,
            revoke_url: r.revoke_url.map(|u| url("revoke_url", &u)).transpose()?,
            introspection_url: r
                .introspection_url
                .map(|u| url("introspection_url", &u))
                .transpose()?,
            client_id: r.client_id,
            client_secret,
            client_auth: r.client_auth,
            redirect_uri: r.redirect_uri,
            scope_separator: r.scope_separator,
            subject,
            default_token_lifetime: r.default_token_lifetime,
            refresh_margin: r.refresh_margin,
            consent_ttl: r.consent_ttl,
            extra_authorize_params: r.extra_authorize_params,
            classification_rules: r.classification_rules,
            lifecycle_scopes: r.lifecycle_scopes,
            idempotency_header: r.idempotency_header,
        })
    }
}

fn parse_url(connector: &str, field: &'static str, text: &str) -> Result<Url, VaultError> {
    Url::parse(text).map_err(|e| VaultError::Config {
        connector: connector.to_owned(),
        reason: format!("`{field}` is not an absolute URL: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_json_round_trips_without_the_secret() {
        let config = ProviderConfig::new(
            "slack",
            "https://slack.test/oauth/v2/authorize",
            "https://slack.test/api/oauth.v2.access",
            "client-1",
            ClientSecret::new("very-secret-value"),
            "https://app.test/cb",
        )
        .unwrap()
        .with_revoke_url("https://slack.test/api/auth.revoke")
        .unwrap()
        .with_subject(SubjectSource::UserInfo {
            url: Url::parse("https://slack.test/api/users.identity").unwrap(),
            pointers: vec!["/team/id".into(), "/user/id".into()],
        })
        .with_scope_separator(ScopeSeparator::Comma)
        .with_client_auth(ClientAuth::Basic)
        .with_default_token_lifetime(Duration::from_millis(7_200_500))
        .with_refresh_margin(Duration::from_secs(30))
        .with_authorize_param("user_scope", "chat:write");
        let json = config.to_stored_json().unwrap();
        assert!(!json.contains("very-secret-value"), "{json}");
        let back =
            ProviderConfig::from_stored_json("slack", &json, ClientSecret::new("s2")).unwrap();
        assert_eq!(back.to_stored_json().unwrap(), json);
        assert_eq!(back.client_secret.expose(), "s2");
        // A row whose JSON names another connector is refused.
        assert!(ProviderConfig::from_stored_json("jira", &json, ClientSecret::new("s")).is_err());
    }

    #[test]
    fn scope_splitting() {
        assert_eq!(
            ScopeSeparator::Comma.split("chat:write, users:read,,chat:write"),
            ["chat:write", "users:read"]
        );
        assert_eq!(
            ScopeSeparator::Space.split(" api  refresh_token "),
            ["api", "refresh_token"]
        );
    }
}
