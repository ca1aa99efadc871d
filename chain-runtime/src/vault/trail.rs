//! The vault's records in the audit trail: consents and refreshes, never a token.

use std::sync::Arc;

use super::Vault;
use super::store::StoredAccount;

impl Vault {
    /// Records every completed consent and every token refresh (success or failure; never a
    /// token) in `audit`, beside the engine's records of the runs that use the accounts.
    pub fn attach_audit(&self, audit: Arc<dyn crate::audit::AuditStore>) {
        *self.inner.audit.write().unwrap_or_else(|e| e.into_inner()) = Some(audit);
    }

    /// Appends `event` about `account` to the attached audit trail, if any. A failing audit
    /// store is logged, not propagated: the credential operation already happened.
    pub(super) async fn audit_account_event(
        &self,
        account: &StoredAccount,
        outcome: crate::audit::Outcome,
        event: crate::audit::AuditEvent,
    ) {
        let audit = self
            .inner
            .audit
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let Some(audit) = audit else { return };
        let record = crate::audit::NewRecord::new(account.principal_id.clone(), outcome, event)
            .account(
                account.connector.clone(),
                account.account_id.clone(),
                account.upstream_subject.clone(),
                account.grant_id.clone(),
            )
            .scopes(account.granted_scopes.clone());
        if let Err(e) = audit.append(record).await {
            tracing::error!(connector = %account.connector, error = %e, "could not audit a vault event");
        }
    }

    /// Appends `event` about a consent or account action that has no stored account to name
    /// (yet): only the principal and the connector. Never the state, the code or a token.
    pub(super) async fn audit_connector_event(
        &self,
        principal_id: &str,
        connector: Option<&str>,
        outcome: crate::audit::Outcome,
        event: crate::audit::AuditEvent,
    ) {
        let audit = self
            .inner
            .audit
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let Some(audit) = audit else { return };
        let mut record = crate::audit::NewRecord::new(principal_id.to_owned(), outcome, event);
        if let Some(connector) = connector {
            record = record.connector(connector.to_owned());
        }
        if let Err(e) = audit.append(record).await {
            tracing::error!(connector, error = %e, "could not audit a vault event");
        }
    }

    /// Records a consent that did not complete.
    pub(super) async fn audit_consent_failure(
        &self,
        principal_id: &str,
        connector: Option<&str>,
        reason: &str,
        error_code: Option<String>,
    ) {
        self.audit_connector_event(
            principal_id,
            connector,
            crate::audit::Outcome::Failed,
            crate::audit::AuditEvent::ConsentFailed {
                reason: reason.to_owned(),
                error_code,
            },
        )
        .await;
    }
}
