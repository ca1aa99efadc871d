//! The preflight gate in front of a start or a resume: a refusal is audited (one record per
//! refused connector: chain, principal, connector, missing scopes; never a token or a link)
//! and returned as [`EngineError::PreflightNotReady`].

use super::{Engine, EngineError};
use crate::audit::{AuditEvent, NewRecord, Outcome};
use crate::preflight::{ConnectorStatus, Preflight};

impl Engine {
    /// `Ok` when `pf` is ready; otherwise audits the refusal of `chain` for `principal_id`
    /// (`run_id`: the run being resumed) and returns the error listing the consents to ask
    /// for. A failure to audit is logged; the refusal stands.
    pub(super) async fn preflight_gate(
        &self,
        chain: &str,
        principal_id: &str,
        run_id: Option<&str>,
        pf: &Preflight,
    ) -> Result<(), EngineError> {
        if pf.is_ready() {
            return Ok(());
        }
        for (connector, check) in &pf.connectors {
            let (missing, connected) = match &check.status {
                ConnectorStatus::Ready => continue,
                ConnectorStatus::NotConnected { .. } => (&check.required, false),
                ConnectorStatus::MissingScopes { missing, .. } => (missing, true),
            };
            let mut record = NewRecord::new(
                principal_id,
                Outcome::Failed,
                AuditEvent::PreflightRefused {
                    chain: chain.to_owned(),
                    missing_scopes: missing.iter().cloned().collect(),
                    connected,
                },
            )
            .connector(connector);
            if let Some(run_id) = run_id {
                record = record.run(run_id);
            }
            if let Err(e) = self.inner.audit.append(record).await {
                tracing::error!(chain, connector = %connector, error = %e, "could not audit a preflight refusal");
            }
        }
        Err(EngineError::PreflightNotReady {
            chain: chain.to_owned(),
            run_id: run_id.map(str::to_owned),
            consents: pf.consents_needed().into_iter().cloned().collect(),
        })
    }
}
