//! Binding a completed consent to an account: the identity rules and the write.
//!
//! Policy, in order:
//! - An account of the same principal with another upstream user is *identity drift*: refused,
//!   audited, the new grant revoked, the stored account untouched, unless that account was
//!   disconnected ([`Vault::disconnect`]) or forgotten ([`Vault::forget_account`]); a
//!   disconnected account is then replaced (new account id, audited as `account_removed`
//!   `replaced`).
//! - An upstream user already connected (not disconnected) to *another* principal on the same
//!   connector is refused ([`SharedSubjectPolicy::Refuse`], the default) or accepted with an
//!   operator alert ([`SharedSubjectPolicy::Flag`]).

use super::accounts::token_aad;
use super::oauth::TokenSet;
use super::options::SharedSubjectPolicy;
use super::provider::ProviderConfig;
use super::store::{AccountStatus, StoredAccount, StoredConsent};
use super::types::AccountInfo;
use super::{Vault, VaultError};

pub(super) fn random_id(prefix: &str) -> String {
    let mut buf = [0u8; 12];
    rand::fill(&mut buf);
    let hex: String = buf.iter().map(|b| format!("{b:02x}")).collect();
    format!("{prefix}_{hex}")
}

impl Vault {
    /// Records the account of a completed code exchange (see the module docs for the rules).
    pub(super) async fn bind_account(
        &self,
        provider: &ProviderConfig,
        pending: &StoredConsent,
        subject: String,
        tokens: TokenSet,
    ) -> Result<AccountInfo, VaultError> {
        let (principal_id, connector) = (pending.principal_id.as_str(), pending.connector.as_str());
        let granted = match &tokens.scope {
            Some(s) => provider.scope_separator.split(s),
            None => pending.scopes.clone(),
        };
        let expires_at = self.compute_expiry(provider, &tokens).await;
        let existing = self
            .inner
            .store
            .get_account(principal_id, connector)
            .await?;
        let replaces = match &existing {
            Some(e) if e.upstream_subject != subject && e.status == AccountStatus::Revoked => true,
            Some(e) if e.upstream_subject != subject => {
                tracing::warn!(
                    principal_id,
                    connector,
                    account_id = %e.account_id,
                    stored_subject = %e.upstream_subject,
                    new_subject = %subject,
                    "vault re-consent refused: identity drift"
                );
                self.revoke_quietly(provider, &tokens).await;
                self.audit_account_event(
                    e,
                    crate::audit::Outcome::Failed,
                    crate::audit::AuditEvent::ConsentFailed {
                        reason: "identity_drift".into(),
                        error_code: None,
                    },
                )
                .await;
                return Err(VaultError::IdentityDrift {
                    principal_id: principal_id.to_owned(),
                    connector: connector.to_owned(),
                    stored_subject: e.upstream_subject.clone(),
                    new_subject: subject,
                });
            }
            _ => false,
        };
        self.check_shared_subject(provider, principal_id, &subject, &tokens)
            .await?;

        let now = self.now();
        let account_id = match &existing {
            Some(e) if !replaces => e.account_id.clone(),
            _ => random_id("acct"),
        };
        let version = existing.as_ref().map(|a| a.rt_version + 1).unwrap_or(1);
        let account = StoredAccount {
            access_token: self.inner.cipher.seal(
                &token_aad(&account_id, principal_id, connector, "access_token"),
                tokens.access_token.expose().as_bytes(),
            ),
            refresh_token: tokens.refresh_token.as_ref().map(|rt| {
                self.inner.cipher.seal(
                    &token_aad(&account_id, principal_id, connector, "refresh_token"),
                    rt.expose().as_bytes(),
                )
            }),
            account_id,
            principal_id: principal_id.to_owned(),
            connector: connector.to_owned(),
            upstream_subject: subject,
            granted_scopes: granted,
            expires_at,
            grant_id: random_id("grant"),
            consented_at: now,
            status: AccountStatus::Active,
            rt_version: version,
            updated_at: now,
        };
        let written = match &existing {
            Some(e) => {
                self.inner
                    .store
                    .replace_account(account.clone(), e.rt_version)
                    .await?
            }
            None => self.inner.store.insert_account(account.clone()).await?,
        };
        self.forget(principal_id, connector);
        if !written {
            return Err(VaultError::Conflict {
                principal_id: principal_id.to_owned(),
                connector: connector.to_owned(),
            });
        }
        if let (true, Some(old)) = (replaces, &existing) {
            tracing::info!(
                principal_id,
                connector,
                old_account_id = %old.account_id,
                new_account_id = %account.account_id,
                "vault replaced a disconnected account with another upstream user"
            );
            self.audit_account_event(
                old,
                crate::audit::Outcome::Succeeded,
                crate::audit::AuditEvent::AccountRemoved {
                    reason: "replaced".into(),
                },
            )
            .await;
        }
        let reconsent = existing.is_some() && !replaces;
        tracing::info!(
            principal_id,
            connector,
            account_id = %account.account_id,
            upstream_subject = %account.upstream_subject,
            granted_scopes = %account.granted_scopes.join(" "),
            requested_scopes = %pending.scopes.join(" "),
            reconsent,
            "vault consent completed"
        );
        self.audit_account_event(
            &account,
            crate::audit::Outcome::Succeeded,
            crate::audit::AuditEvent::ConsentCompleted {
                requested_scopes: pending.scopes.clone(),
                reconsent,
            },
        )
        .await;
        Ok(AccountInfo::from(&account))
    }

    /// Applies the [`SharedSubjectPolicy`] when `subject` is connected to another principal.
    async fn check_shared_subject(
        &self,
        provider: &ProviderConfig,
        principal_id: &str,
        subject: &str,
        tokens: &TokenSet,
    ) -> Result<(), VaultError> {
        let connector = provider.connector.as_str();
        let others: Vec<StoredAccount> = self
            .inner
            .store
            .accounts_with_subject(connector, subject)
            .await?
            .into_iter()
            .filter(|a| a.principal_id != principal_id && a.status != AccountStatus::Revoked)
            .collect();
        if others.is_empty() {
            return Ok(());
        }
        match self.inner.shared_subject {
            SharedSubjectPolicy::Refuse => {
                tracing::warn!(
                    principal_id,
                    connector,
                    "vault consent refused: the upstream user is connected to another principal"
                );
                self.revoke_quietly(provider, tokens).await;
                self.audit_consent_failure(
                    principal_id,
                    Some(connector),
                    "subject_bound_to_another_principal",
                    None,
                )
                .await;
                Err(VaultError::SubjectAlreadyBound {
                    principal_id: principal_id.to_owned(),
                    connector: connector.to_owned(),
                })
            }
            SharedSubjectPolicy::Flag => {
                tracing::warn!(
                    principal_id,
                    connector,
                    "vault consent accepted although the upstream user is connected to another principal"
                );
                self.audit_connector_event(
                    principal_id,
                    Some(connector),
                    crate::audit::Outcome::Info,
                    crate::audit::AuditEvent::OperatorAlert {
                        severity: crate::audit::AlertSeverity::Warning,
                        message: format!(
                            "principal `{principal_id}` connected a `{connector}` upstream user that is \
                             already connected to {} other principal(s)",
                            others.len()
                        ),
                    },
                )
                .await;
                Ok(())
            }
        }
    }
}
