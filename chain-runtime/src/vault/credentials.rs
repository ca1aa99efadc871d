//! The vault as the engine's source of credentials: grants for preflight, subjects for the
//! identity checks, accounts for the audit trail, and the step HTTP client.

use crate::connector::StepHttp;
use crate::engine::{AccountSummary, Credentials, CredentialsError};
use crate::exec::BoxFuture;
use crate::preflight::Grants;

use super::{AccountStatus, Vault, VaultError};

fn lookup_failed(e: VaultError) -> CredentialsError {
    CredentialsError(e.to_string())
}

impl Vault {
    /// The active account of `principal_id` on `connector`, or `None` when there is none
    /// (not connected, revoked, or waiting for re-consent).
    async fn active_account(
        &self,
        principal_id: &str,
        connector: &str,
    ) -> Result<Option<super::AccountInfo>, CredentialsError> {
        match self.account(principal_id, connector).await {
            Ok(account) if account.status == AccountStatus::Active => Ok(Some(account)),
            Ok(_) | Err(VaultError::NotConnected { .. }) => Ok(None),
            Err(e) => Err(lookup_failed(e)),
        }
    }
}

impl Credentials for Vault {
    fn grants<'a>(
        &'a self,
        principal_id: &'a str,
    ) -> BoxFuture<'a, Result<Grants, CredentialsError>> {
        Box::pin(async move {
            let mut grants = Grants::new();
            for connector in self.connectors() {
                if let Some(account) = self.active_account(principal_id, &connector).await? {
                    grants.insert(&connector, account.granted_scopes);
                }
            }
            Ok(grants)
        })
    }

    fn upstream_subject<'a>(
        &'a self,
        principal_id: &'a str,
        connector: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, CredentialsError>> {
        Box::pin(async move {
            Ok(self
                .active_account(principal_id, connector)
                .await?
                .map(|a| a.upstream_subject))
        })
    }

    fn account<'a>(
        &'a self,
        principal_id: &'a str,
        connector: &'a str,
    ) -> BoxFuture<'a, Result<Option<AccountSummary>, CredentialsError>> {
        Box::pin(async move {
            Ok(self
                .active_account(principal_id, connector)
                .await?
                .map(|a| AccountSummary {
                    account_id: a.account_id,
                    upstream_subject: a.upstream_subject,
                    grant_id: a.grant_id,
                    scopes: a.granted_scopes,
                }))
        })
    }

    fn step_http(
        &self,
        principal_id: &str,
        connector: &str,
        idempotency_key: &str,
    ) -> Option<StepHttp> {
        Some(StepHttp::new(
            self,
            principal_id,
            connector,
            idempotency_key,
            self.retry_policy(),
        ))
    }
}
