//! Provider configuration: endpoints, client credentials and the quirks of each provider.

use std::time::Duration;

use url::Url;

use super::error::VaultError;
use super::secret::ClientSecret;

/// How the client authenticates at the token, revocation and introspection endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// `client_id` and `client_secret` in the form body (`client_secret_post`).
    Post,
    /// HTTP Basic with the URL-encoded id and secret (`client_secret_basic`).
    Basic,
}

/// How scopes are joined in requests and split in token responses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
        })
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
