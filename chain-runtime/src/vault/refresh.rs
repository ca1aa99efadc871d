//! Token resolution and single-flight, rotation-safe refresh.

use std::sync::Arc;

use secrecy::zeroize::Zeroizing;

use crate::classify::FailureClass;

use super::accounts::token_aad;
use super::oauth::{self, TokenOutcome, TokenSet};
use super::provider::ProviderConfig;
use super::secret::AccessToken;
use super::store::{AccountStatus, StoredAccount};
use super::{TokenKind, Vault, VaultError};

impl Vault {
    pub(super) async fn compute_expiry(
        &self,
        provider: &ProviderConfig,
        tokens: &TokenSet,
    ) -> Option<i64> {
        let now = self.now();
        if let Some(expires_in) = tokens.expires_in {
            return Some(now + expires_in);
        }
        if provider.introspection_url.is_some() {
            match oauth::introspect(
                &self.inner.http,
                provider,
                tokens.access_token.expose(),
                TokenKind::Access,
                self.inner.timeout,
            )
            .await
            {
                Ok((info, _)) if info.active && info.expires_at.is_some() => {
                    return info.expires_at;
                }
                Ok(_) => {
                    tracing::warn!(connector = %provider.connector, "introspection gave no expiry; using the default lifetime")
                }
                Err(e) => {
                    tracing::warn!(connector = %provider.connector, error = %e, "introspection for expiry failed; using the default lifetime")
                }
            }
        }
        let lifetime = provider.default_token_lifetime?.as_secs() as i64;
        // Salesforce: `issued_at` in milliseconds; trust it only when it is close to now.
        let base = tokens
            .issued_at_ms
            .map(|ms| ms / 1000)
            .filter(|issued| (issued - now).abs() < 24 * 3600)
            .unwrap_or(now);
        Some(base + lifetime)
    }

    pub(super) fn needs_refresh(
        &self,
        account: &StoredAccount,
        provider: &ProviderConfig,
        force_at_version: Option<i64>,
    ) -> bool {
        if force_at_version == Some(account.rt_version) {
            return true;
        }
        match account.expires_at {
            Some(expires_at) => expires_at - provider.refresh_margin.as_secs() as i64 <= self.now(),
            None => false,
        }
    }

    pub(super) fn account_lock(&self, account_id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.inner.locks.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(locks.entry(account_id.to_owned()).or_default())
    }

    /// An access token for (principal, connector), refreshed first if it expires within the
    /// margin (or if `force_at_version` is the current token version). Single-flight per account.
    pub(crate) async fn fresh_token(
        &self,
        principal_id: &str,
        connector: &str,
        force_at_version: Option<i64>,
    ) -> Result<(AccessToken, StoredAccount), VaultError> {
        let provider = self.provider(connector)?;
        let account = self.load_active(principal_id, connector).await?;
        if !self.needs_refresh(&account, &provider, force_at_version) {
            return Ok((self.open_access(&account)?, account));
        }
        let lock = self.account_lock(&account.account_id);
        let _guard = lock.lock().await;
        // Double-checked: whoever held the lock before us may have refreshed already.
        let account = self.load_active(principal_id, connector).await?;
        if !self.needs_refresh(&account, &provider, force_at_version) {
            return Ok((self.open_access(&account)?, account));
        }
        let result = self.refresh_locked(&provider, account.clone()).await;
        let (outcome, failure_class, expires_at_unix_ms) = match &result {
            Ok((_, refreshed)) => (
                crate::audit::Outcome::Succeeded,
                None,
                refreshed.expires_at.map(|s| s * 1000),
            ),
            Err(e) => (
                crate::audit::Outcome::Failed,
                Some(refresh_failure_class(e)),
                None,
            ),
        };
        let audited = match &result {
            Ok((_, refreshed)) => refreshed,
            Err(_) => &account,
        };
        self.audit_account_event(
            audited,
            outcome,
            crate::audit::AuditEvent::TokenRefresh {
                failure_class,
                expires_at_unix_ms,
            },
        )
        .await;
        result
    }

    pub(super) async fn refresh_locked(
        &self,
        provider: &ProviderConfig,
        account: StoredAccount,
    ) -> Result<(AccessToken, StoredAccount), VaultError> {
        let (principal_id, connector, account_id) = (
            account.principal_id.as_str(),
            account.connector.as_str(),
            account.account_id.as_str(),
        );
        let Some(sealed_rt) = &account.refresh_token else {
            tracing::warn!(
                principal_id,
                connector,
                account_id,
                "vault token expired and no refresh token is stored"
            );
            self.mark_needs_reauthorization(&account).await?;
            return Err(VaultError::NeedsReauthorization {
                principal_id: principal_id.to_owned(),
                connector: connector.to_owned(),
                scopes: account.granted_scopes.clone(),
            });
        };
        let refresh_token = self.open_refresh(&account, sealed_rt)?;
        tracing::debug!(
            principal_id,
            connector,
            account_id,
            version = account.rt_version,
            "vault refreshing access token"
        );
        let form = vec![
            ("grant_type", Zeroizing::new("refresh_token".to_owned())),
            (
                "refresh_token",
                Zeroizing::new(refresh_token.expose().to_owned()),
            ),
        ];
        let outcome = oauth::token_request(
            &self.inner.http,
            provider,
            "refresh",
            form,
            self.inner.timeout,
        )
        .await;
        let tokens = match outcome {
            Ok(TokenOutcome::Tokens(tokens)) => tokens,
            Ok(TokenOutcome::Rejected {
                status,
                class: FailureClass::GrantRevoked,
                error_code,
            }) => {
                // A lost race (another process rotated first) is not a revocation.
                if let Some(current) = self
                    .inner
                    .store
                    .get_account(principal_id, connector)
                    .await?
                    && current.rt_version > account.rt_version
                    && current.status == AccountStatus::Active
                {
                    tracing::info!(
                        principal_id,
                        connector,
                        account_id,
                        status,
                        "vault refresh lost a race with a newer refresh token; using the stored one"
                    );
                    return Ok((self.open_access(&current)?, current));
                }
                self.mark_needs_reauthorization(&account).await?;
                tracing::warn!(
                    principal_id,
                    connector,
                    account_id,
                    status,
                    error_code,
                    "vault refresh rejected: account needs re-authorization"
                );
                return Err(VaultError::GrantRevoked {
                    principal_id: principal_id.to_owned(),
                    connector: connector.to_owned(),
                    error_code,
                });
            }
            Ok(TokenOutcome::Rejected {
                status,
                class: FailureClass::InvalidClient,
                error_code,
            }) => {
                tracing::error!(
                    principal_id,
                    connector,
                    account_id,
                    status,
                    error_code,
                    "vault refresh: invalid client"
                );
                return Err(VaultError::InvalidClient {
                    connector: connector.to_owned(),
                    operation: "refresh",
                    error_code,
                });
            }
            Ok(TokenOutcome::Rejected {
                status,
                class,
                error_code,
            }) => {
                tracing::warn!(
                    principal_id,
                    connector,
                    account_id,
                    status,
                    ?class,
                    error_code,
                    "vault refresh failed; grant kept"
                );
                return Err(VaultError::TokenEndpoint {
                    connector: connector.to_owned(),
                    operation: "refresh",
                    status,
                    class,
                    error_code,
                });
            }
            Err(e) => {
                tracing::warn!(principal_id, connector, account_id, error = %e, "vault refresh failed; grant kept");
                return Err(e);
            }
        };

        if let Some(subject) = Self::subject_in_response(provider, &tokens)
            && subject != account.upstream_subject
        {
            tracing::warn!(
                principal_id,
                connector,
                account_id,
                "vault refresh returned another upstream subject"
            );
            self.mark_needs_reauthorization(&account).await?;
            return Err(VaultError::IdentityDrift {
                principal_id: principal_id.to_owned(),
                connector: connector.to_owned(),
                stored_subject: account.upstream_subject.clone(),
                new_subject: subject,
            });
        }

        let expires_at = self.compute_expiry(provider, &tokens).await;
        let rotated = tokens.refresh_token.is_some();
        let mut updated = account.clone();
        updated.access_token = self.inner.cipher.seal(
            &token_aad(account_id, principal_id, connector, "access_token"),
            tokens.access_token.expose().as_bytes(),
        );
        if let Some(rt) = &tokens.refresh_token {
            // Persisted before the new access token is handed out (below).
            updated.refresh_token = Some(self.inner.cipher.seal(
                &token_aad(account_id, principal_id, connector, "refresh_token"),
                rt.expose().as_bytes(),
            ));
        }
        if let Some(scope) = &tokens.scope {
            updated.granted_scopes = provider.scope_separator.split(scope);
        }
        updated.expires_at = expires_at;
        updated.rt_version = account.rt_version + 1;
        updated.updated_at = self.now();
        if !self
            .inner
            .store
            .replace_account(updated.clone(), account.rt_version)
            .await?
        {
            // Another process wrote first (possible only without a shared lock): use its tokens.
            tracing::warn!(
                principal_id,
                connector,
                account_id,
                "vault refresh result superseded by a concurrent write"
            );
            let current = self.load_active(principal_id, connector).await?;
            return Ok((self.open_access(&current)?, current));
        }
        tracing::info!(
            principal_id,
            connector,
            account_id,
            version = updated.rt_version,
            rotated,
            expires_at,
            "vault access token refreshed"
        );
        Ok((tokens.access_token, updated))
    }
}

/// The audit trail's name for why a refresh failed (snake_case, as `classify` names classes).
fn refresh_failure_class(error: &VaultError) -> String {
    let class = match error {
        VaultError::GrantRevoked { .. } | VaultError::NeedsReauthorization { .. } => {
            FailureClass::GrantRevoked
        }
        VaultError::InvalidClient { .. } => FailureClass::InvalidClient,
        VaultError::TokenEndpoint { class, .. } => *class,
        VaultError::Transport { .. } => FailureClass::ServerError,
        VaultError::IdentityDrift { .. } => return "identity_drift".to_owned(),
        _ => return "error".to_owned(),
    };
    serde_json::to_value(class)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("{class:?}"))
}
