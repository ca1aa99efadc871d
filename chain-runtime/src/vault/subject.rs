//! The upstream subject: where the provider's stable user id comes from.

use super::oauth::{self, TokenSet};
use super::provider::{ProviderConfig, SubjectSource};
use super::{TokenKind, Vault, VaultError};

impl Vault {
    pub(super) async fn resolve_subject(
        &self,
        provider: &ProviderConfig,
        tokens: &TokenSet,
    ) -> Result<String, VaultError> {
        let unavailable = |reason: String| VaultError::SubjectUnavailable {
            connector: provider.connector.clone(),
            reason,
        };
        match &provider.subject {
            SubjectSource::TokenResponse { pointers } => {
                oauth::subject_from(&tokens.body, pointers).map_err(unavailable)
            }
            SubjectSource::IdToken { pointers } => {
                let jwt = tokens
                    .body
                    .0
                    .get("id_token")
                    .and_then(|v| v.as_str())
                    .ok_or_else(|| {
                        unavailable(
                            "the token response has no id_token (request the openid scope)".into(),
                        )
                    })?;
                let claims = oauth::jwt_claims(jwt)
                    .ok_or_else(|| unavailable("the id_token is not a JWT".into()))?;
                oauth::subject_from(&claims, pointers).map_err(unavailable)
            }
            SubjectSource::UserInfo { url, pointers } => {
                let json = oauth::user_info(
                    &self.inner.http,
                    provider,
                    url,
                    &tokens.access_token,
                    self.inner.timeout,
                )
                .await?;
                oauth::subject_from(&json, pointers).map_err(unavailable)
            }
            SubjectSource::Introspection { pointers } => {
                let (info, raw) = oauth::introspect(
                    &self.inner.http,
                    provider,
                    tokens.access_token.expose(),
                    TokenKind::Access,
                    self.inner.timeout,
                )
                .await?;
                if !info.active {
                    return Err(unavailable(
                        "introspection says the new access token is not active".into(),
                    ));
                }
                oauth::subject_from(&raw, pointers).map_err(unavailable)
            }
        }
    }

    /// The subject, when the token response itself carries it (checked after every refresh).
    pub(super) fn subject_in_response(
        provider: &ProviderConfig,
        tokens: &TokenSet,
    ) -> Option<String> {
        match &provider.subject {
            SubjectSource::TokenResponse { pointers } => {
                oauth::subject_from(&tokens.body, pointers).ok()
            }
            SubjectSource::IdToken { pointers } => {
                let jwt = tokens.body.0.get("id_token")?.as_str()?;
                oauth::subject_from(&oauth::jwt_claims(jwt)?, pointers).ok()
            }
            _ => None,
        }
    }
}
