//! Disconnecting (RFC 7009 revocation) and introspecting (RFC 7662) a connected account.

use secrecy::zeroize::Zeroizing;

use super::accounts::token_aad;
use super::oauth;
use super::store::AccountStatus;
use super::types::AccountInfo;
use super::{Introspection, TokenKind, Vault, VaultError};

impl Vault {
    /// Disconnects: revokes the grant at the provider (RFC 7009, the refresh token if there is
    /// one) and marks the account revoked, erasing its tokens. If revocation fails the account is
    /// left unchanged and the error says so (retry the disconnect).
    pub async fn disconnect(
        &self,
        principal_id: &str,
        connector: &str,
    ) -> Result<AccountInfo, VaultError> {
        let provider = self.provider(connector)?;
        let account = self.load_account(principal_id, connector).await?;
        let lock = self.account_lock(&account.account_id);
        let _guard = lock.lock().await;
        let account = self.load_account(principal_id, connector).await?;
        if account.status == AccountStatus::Revoked {
            return Ok(AccountInfo::from(&account));
        }
        match &provider.revoke_url {
            Some(url) => {
                let (token, kind) = match &account.refresh_token {
                    Some(sealed) => (
                        Zeroizing::new(self.open_refresh(&account, sealed)?.expose().to_owned()),
                        TokenKind::Refresh,
                    ),
                    None => (
                        Zeroizing::new(self.open_access(&account)?.expose().to_owned()),
                        TokenKind::Access,
                    ),
                };
                if let Err(e) = oauth::revoke(
                    &self.inner.http,
                    &provider,
                    url,
                    &token,
                    kind,
                    self.inner.timeout,
                )
                .await
                {
                    tracing::warn!(principal_id, connector, account_id = %account.account_id, error = %e, "vault revocation failed");
                    return Err(e);
                }
            }
            None => tracing::warn!(
                principal_id,
                connector,
                account_id = %account.account_id,
                "no revocation endpoint configured; the grant is only forgotten locally"
            ),
        }
        let mut updated = account.clone();
        updated.status = AccountStatus::Revoked;
        updated.access_token = self.inner.cipher.seal(
            &token_aad(&account.account_id, principal_id, connector, "access_token"),
            b"",
        );
        updated.refresh_token = None;
        updated.expires_at = None;
        updated.rt_version = account.rt_version + 1;
        updated.updated_at = self.now();
        let replaced = self
            .inner
            .store
            .replace_account(updated.clone(), account.rt_version)
            .await?;
        self.forget(principal_id, connector);
        if !replaced {
            return Err(VaultError::Conflict {
                principal_id: principal_id.to_owned(),
                connector: connector.to_owned(),
            });
        }
        tracing::info!(principal_id, connector, account_id = %account.account_id, "vault account disconnected and revoked");
        Ok(AccountInfo::from(&updated))
    }

    /// Introspects (RFC 7662) the stored access or refresh token; no refresh is attempted.
    pub async fn introspect(
        &self,
        principal_id: &str,
        connector: &str,
        kind: TokenKind,
    ) -> Result<Introspection, VaultError> {
        let provider = self.provider(connector)?;
        let account = self.load_account(principal_id, connector).await?;
        if account.status == AccountStatus::Revoked {
            return Err(VaultError::Revoked {
                principal_id: principal_id.to_owned(),
                connector: connector.to_owned(),
            });
        }
        let token = match kind {
            TokenKind::Access => Zeroizing::new(self.open_access(&account)?.expose().to_owned()),
            TokenKind::Refresh => match &account.refresh_token {
                Some(sealed) => {
                    Zeroizing::new(self.open_refresh(&account, sealed)?.expose().to_owned())
                }
                None => {
                    return Ok(Introspection {
                        active: false,
                        expires_at: None,
                        issued_at: None,
                        scopes: vec![],
                        subject: None,
                        client_id: None,
                    });
                }
            },
        };
        let (info, _) = oauth::introspect(
            &self.inner.http,
            &provider,
            &token,
            kind,
            self.inner.timeout,
        )
        .await?;
        Ok(info)
    }

    /// Forgets the account of `principal_id` on `connector`: revokes its grant at the provider
    /// first when it still holds tokens (as [`Vault::disconnect`]; a failed revocation leaves
    /// the account as it was), then deletes it, audited as `account_removed` (`forgotten`).
    /// Afterwards the principal can consent as any upstream user, as for a first connection.
    pub async fn forget_account(
        &self,
        principal_id: &str,
        connector: &str,
    ) -> Result<AccountInfo, VaultError> {
        self.disconnect(principal_id, connector).await?;
        let account = self.load_account(principal_id, connector).await?;
        let lock = self.account_lock(&account.account_id);
        let _guard = lock.lock().await;
        let account = self.load_account(principal_id, connector).await?;
        let deleted = self
            .inner
            .store
            .delete_account(principal_id, connector, account.rt_version)
            .await?;
        self.forget(principal_id, connector);
        if !deleted {
            return Err(VaultError::Conflict {
                principal_id: principal_id.to_owned(),
                connector: connector.to_owned(),
            });
        }
        self.inner
            .last_refresh
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&account.account_id);
        tracing::info!(principal_id, connector, account_id = %account.account_id, "vault account forgotten");
        self.audit_account_event(
            &account,
            crate::audit::Outcome::Succeeded,
            crate::audit::AuditEvent::AccountRemoved {
                reason: "forgotten".into(),
            },
        )
        .await;
        Ok(AccountInfo::from(&account))
    }
}
