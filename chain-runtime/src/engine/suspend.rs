//! A run that suspends for re-consent or step-up: the state the driver stores and the
//! audit record of why.

use std::collections::BTreeSet;

use super::EngineError;
use super::driver::{Driver, Failure};
use super::outcome::failure_class;
use crate::audit::{AuditEvent, NewRecord, Outcome};
use crate::classify::FailureClass;
use crate::journal::RunState;
use crate::manifest::ScopeManifest;
use crate::step::StepError;

impl Driver {
    /// The run suspends for re-consent or step-up after `f`: audits why and builds the state.
    pub(super) async fn suspended(&self, f: Failure) -> Result<RunState, EngineError> {
        let StepError::Auth {
            class,
            needed_scopes,
            consent_params,
            ..
        } = &f.error
        else {
            return Err(EngineError::Codec("suspend without an auth failure".into()));
        };
        // What the account held (a revoked grant included) ∪ needed ∪ chain-required: the same
        // set the consent link asks for.
        let mut scopes: BTreeSet<String> = self
            .engine
            .inner
            .credentials
            .held_scopes(&self.run.principal_id, &f.connector)
            .await?;
        scopes.extend(needed_scopes.iter().cloned());
        scopes.extend(ScopeManifest::for_chain(self.meta).scopes(&f.connector));
        let reason = match class {
            FailureClass::GrantRevoked => format!("the `{}` grant was revoked", f.connector),
            FailureClass::InsufficientScope => format!(
                "the `{}` grant lacks scopes{}",
                f.connector,
                if needed_scopes.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", needed_scopes.join(" "))
                }
            ),
            FailureClass::StepUpRequired => {
                format!("`{}` requires a stronger authentication", f.connector)
            }
            other => format!("`{}` refused: {other:?}", f.connector),
        };
        self.engine
            .inner
            .audit
            .append(
                self.account_record(
                    NewRecord::new(
                        self.run.principal_id.clone(),
                        Outcome::Info,
                        AuditEvent::Suspended {
                            reason: reason.clone(),
                            failure_class: Some(failure_class(&f.error)),
                            missing_scopes: needed_scopes.clone(),
                        },
                    )
                    .step(&f.step_id),
                    &f.connector,
                )
                .await,
            )
            .await?;
        Ok(RunState::Suspended {
            step_id: f.step_id,
            node: f.node,
            connector: f.connector,
            reason,
            consent_scopes: scopes.into_iter().collect(),
            consent_params: consent_params.clone(),
        })
    }
}
