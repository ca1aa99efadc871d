//! When an access token expires, on the application's own clock.
//!
//! The expiry is computed at receipt from the application's clock: `now + expires_in` when the
//! token response has it, else the lifetime introspection reports (`exp - iat`, both on the
//! provider's clock) added to the time of receipt, else the configured default lifetime. An `exp`
//! without `iat` is used as is only when it lies plausibly in the future on this clock; a
//! provider whose clock lags ours would otherwise make every fresh token look expired.

use super::oauth::{self, TokenSet};
use super::provider::ProviderConfig;
use super::secret::AccessToken;
use super::{TokenKind, Vault};

impl Vault {
    /// The expiry known without any network call: `expires_in`, else the default lifetime,
    /// counted from `received_at` (the application's clock when the response arrived).
    pub(super) fn expiry_at_receipt(
        provider: &ProviderConfig,
        tokens: &TokenSet,
        received_at: i64,
    ) -> Option<i64> {
        if let Some(expires_in) = tokens.expires_in {
            return Some(received_at + expires_in);
        }
        provider
            .default_token_lifetime
            .map(|lifetime| received_at + lifetime.as_secs() as i64)
    }

    /// Whether the expiry can only come from introspection (a network call).
    pub(super) fn expiry_needs_introspection(provider: &ProviderConfig, tokens: &TokenSet) -> bool {
        tokens.expires_in.is_none() && provider.introspection_url.is_some()
    }

    /// The expiry of a token received at `received_at`, from RFC 7662 introspection, converted
    /// to the application's clock. `None` when introspection fails or gives nothing usable.
    pub(super) async fn introspected_expiry(
        &self,
        provider: &ProviderConfig,
        access_token: &AccessToken,
        received_at: i64,
    ) -> Option<i64> {
        let connector = provider.connector.as_str();
        let info = match oauth::introspect(
            &self.inner.http,
            provider,
            access_token.expose(),
            TokenKind::Access,
            self.inner.timeout,
        )
        .await
        {
            Ok((info, _)) if info.active => info,
            Ok(_) => {
                tracing::warn!(
                    connector,
                    "introspection says the new access token is not active; expiry unknown"
                );
                return None;
            }
            Err(e) => {
                tracing::warn!(connector, error = %e, "introspection for the expiry failed");
                return None;
            }
        };
        match (info.expires_at, info.issued_at) {
            (Some(exp), Some(iat)) if exp > iat => Some(received_at + (exp - iat)),
            (Some(exp), _) if exp - received_at > provider.refresh_margin.as_secs() as i64 => {
                Some(exp)
            }
            (Some(_), _) => {
                tracing::warn!(
                    connector,
                    "introspection's `exp` is not in the future on this clock (clock skew?) and \
                     there is no `iat` to derive the lifetime from; ignoring it"
                );
                None
            }
            (None, _) => None,
        }
    }

    /// The expiry of a token set received just now, introspecting if that is the only source
    /// (used at consent, before anything is stored).
    pub(super) async fn compute_expiry(
        &self,
        provider: &ProviderConfig,
        tokens: &TokenSet,
    ) -> Option<i64> {
        let received_at = self.now();
        if Self::expiry_needs_introspection(provider, tokens)
            && let Some(exp) = self
                .introspected_expiry(provider, &tokens.access_token, received_at)
                .await
        {
            return Some(exp);
        }
        Self::expiry_at_receipt(provider, tokens, received_at)
    }
}
