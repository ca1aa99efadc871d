//! Token resolution and single-flight, rotation-safe refresh.
//!
//! The order of a refresh is what keeps a rotated refresh token: token request, identity check
//! (local, no network), write of the new tokens (kept in memory if the write fails, see
//! `pending`), and only then any further network call (introspection for the expiry). A process
//! killed at any point leaves either the old refresh token (the provider never answered) or the
//! new one stored.
//!
//! Single flight: one refresh per account at a time, in this process (a lock per account) and
//! across processes sharing the store (its [`refresh_lock`](super::AccountStore::refresh_lock),
//! taken next, after which the account is read again); whoever waited for it uses its result and
//! never refreshes again, and proactive refreshes of one account are at most one per
//! [`VaultOptions::min_refresh_interval`](super::VaultOptions), so a clock that disagrees with
//! the provider's cannot cause a refresh storm.

use std::sync::Arc;

use secrecy::zeroize::Zeroizing;

use crate::classify::FailureClass;

use super::accounts::token_aad;
use super::oauth::{self, TokenOutcome};
use super::pending::Persisted;
use super::provider::ProviderConfig;
use super::secret::{AccessToken, RefreshToken};
use super::store::{AccountStatus, StoredAccount};
use super::{Vault, VaultError};

impl Vault {
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

    /// Whether this vault refreshed the account less than the minimum interval ago (vault clock).
    fn refreshed_recently(&self, account_id: &str) -> bool {
        let interval = self.inner.min_refresh_interval.as_secs() as i64;
        let last = self
            .inner
            .last_refresh
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(account_id)
            .copied();
        last.is_some_and(|at| self.now() - at < interval)
    }

    fn note_refresh(&self, account_id: &str) {
        let now = self.now();
        self.inner
            .last_refresh
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(account_id.to_owned(), now);
    }

    /// An access token for (principal, connector), refreshed first if it expires within the
    /// margin (or if `force_at_version` is the current token version). Single-flight per account.
    pub(crate) async fn fresh_token(
        &self,
        principal_id: &str,
        connector: &str,
        force_at_version: Option<i64>,
    ) -> Result<(AccessToken, StoredAccount), VaultError> {
        self.fresh_token_from(principal_id, connector, force_at_version, None)
            .await
    }

    /// [`Vault::fresh_token`] starting from `read`, the account as just read from the store
    /// (see `prefetch`), instead of reading it again; a refresh reads it again all the same.
    pub(crate) async fn fresh_token_from(
        &self,
        principal_id: &str,
        connector: &str,
        force_at_version: Option<i64>,
        read: Option<StoredAccount>,
    ) -> Result<(AccessToken, StoredAccount), VaultError> {
        let provider = self.provider(connector)?;
        let account = match read {
            Some(account) => {
                self.check_status(&account)?;
                account
            }
            None => self.load_active(principal_id, connector).await?,
        };
        if !self.needs_refresh(&account, &provider, force_at_version) {
            return Ok((self.open_access(&account)?, account));
        }
        let seen_version = account.rt_version;
        let lock = self.account_lock(&account.account_id);
        let _guard = lock.lock().await;
        // Then across processes: whoever held it before us has written its tokens.
        let _shared = self
            .inner
            .store
            .refresh_lock(principal_id, connector)
            .await?;
        let account = self.load_active(principal_id, connector).await?;
        // Whoever held the lock before us wrote new tokens: use them, never refresh them again
        // (their expiry may look past on a clock that leads the provider's).
        if account.rt_version != seen_version && force_at_version != Some(account.rt_version) {
            return Ok((self.open_access(&account)?, account));
        }
        if !self.needs_refresh(&account, &provider, force_at_version) {
            return Ok((self.open_access(&account)?, account));
        }
        if force_at_version.is_none() && self.refreshed_recently(&account.account_id) {
            tracing::warn!(
                principal_id,
                connector,
                account_id = %account.account_id,
                "vault token looks expired right after a refresh (clock skew?); not refreshing \
                 again within the minimum refresh interval"
            );
            return Ok((self.open_access(&account)?, account));
        }
        let result = self.refresh_locked(&provider, account.clone()).await;
        if result.is_ok() {
            self.note_refresh(&account.account_id);
        }
        let (outcome, audited) = match &result {
            Ok((_, refreshed)) => (crate::audit::Outcome::Succeeded, refreshed),
            Err(_) => (crate::audit::Outcome::Failed, &account),
        };
        let (http_status, error_code) = match &result {
            Ok(_) => (None, None),
            Err(e) => refresh_failure_detail(e),
        };
        self.audit_account_event(
            audited,
            outcome,
            crate::audit::AuditEvent::TokenRefresh {
                failure_class: result.as_ref().err().map(refresh_failure_class),
                expires_at_unix_ms: result
                    .as_ref()
                    .ok()
                    .and_then(|(_, a)| a.expires_at.map(|s| s * 1000)),
                http_status,
                error_code,
            },
        )
        .await;
        result
    }

    /// The refresh request, retried within the retry policy's bounds while the failure is
    /// transient (server errors, rate limits, a connection that failed before any answer).
    async fn refresh_request(
        &self,
        provider: &ProviderConfig,
        refresh_token: &RefreshToken,
    ) -> Result<TokenOutcome, VaultError> {
        let policy = self.inner.retry_policy;
        let mut attempt: u32 = 0;
        loop {
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
            let transient = matches!(
                &outcome,
                Ok(TokenOutcome::Rejected {
                    class: FailureClass::ServerError | FailureClass::RateLimited,
                    ..
                }) | Err(VaultError::Transport {
                    timed_out: false,
                    ..
                })
            );
            if !transient || attempt >= policy.max_server_retries {
                return outcome;
            }
            let wait = policy
                .base_backoff
                .saturating_mul(1u32 << attempt.min(16))
                .min(policy.max_backoff);
            tracing::warn!(
                connector = %provider.connector,
                attempt = attempt + 1,
                wait_ms = wait.as_millis() as u64,
                "vault refresh failed transiently; retrying"
            );
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
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
        let outcome = self.refresh_request(provider, &refresh_token).await;
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
                    status,
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

        let received_at = self.now();
        let rotated = tokens.refresh_token.is_some();
        let mut updated = account.clone();
        updated.access_token = self.inner.cipher.seal(
            &token_aad(account_id, principal_id, connector, "access_token"),
            tokens.access_token.expose().as_bytes(),
        );
        if let Some(rt) = &tokens.refresh_token {
            updated.refresh_token = Some(self.inner.cipher.seal(
                &token_aad(account_id, principal_id, connector, "refresh_token"),
                rt.expose().as_bytes(),
            ));
        }
        if let Some(scope) = &tokens.scope {
            updated.granted_scopes = provider.scope_separator.split(scope);
        }
        updated.expires_at = Self::expiry_at_receipt(provider, &tokens, received_at);
        updated.rt_version = account.rt_version + 1;
        updated.updated_at = received_at;
        // Persist before any further network call: a rotated refresh token exists nowhere else.
        let retained = match self.persist(updated.clone(), account.rt_version).await {
            Persisted::Written => false,
            Persisted::Retained => true,
            Persisted::Superseded => {
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
        };
        if Self::expiry_needs_introspection(provider, &tokens)
            && let Some(exp) = self
                .introspected_expiry(provider, &tokens.access_token, received_at)
                .await
        {
            let mut with_expiry = updated.clone();
            with_expiry.expires_at = Some(exp);
            let kept = if retained {
                self.update_pending(&with_expiry)
            } else {
                // Same token version: only the expiry changes.
                matches!(
                    self.persist(with_expiry.clone(), updated.rt_version).await,
                    Persisted::Written | Persisted::Retained
                )
            };
            if kept {
                updated = with_expiry;
            }
        }
        tracing::info!(
            principal_id,
            connector,
            account_id,
            version = updated.rt_version,
            rotated,
            expires_at = updated.expires_at,
            retained,
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

/// The token endpoint's HTTP status and sanitized error code of a failed refresh, for the audit
/// trail.
fn refresh_failure_detail(error: &VaultError) -> (Option<u16>, Option<String>) {
    match error {
        VaultError::TokenEndpoint {
            status, error_code, ..
        }
        | VaultError::GrantRevoked {
            status, error_code, ..
        } => (Some(*status), error_code.clone()),
        VaultError::InvalidClient { error_code, .. } => (None, error_code.clone()),
        _ => (None, None),
    }
}
