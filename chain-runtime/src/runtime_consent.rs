//! The consent loop of a [`Runtime`] as library calls: a suspended run's link
//! ([`Runtime::consent_link_for`]), completing the consent from the provider's redirect, and
//! resuming every run that waited on the account.

use crate::engine::EngineError;
use crate::journal::RunState;
use crate::runtime::{Runtime, RuntimeError};
use crate::vault::AccountInfo;

/// What a completed consent did: the account it connected and each run it resumed.
#[derive(Debug)]
#[non_exhaustive]
pub struct ConsentResumed {
    /// The account the consent connected (or renewed).
    pub account: AccountInfo,
    /// Each run that waited on the account, with the state it reached or why it did not
    /// resume.
    pub runs: Vec<(String, Result<RunState, EngineError>)>,
}

impl Runtime {
    /// Resumes every run of `principal_id` suspended on `connector`, oldest first: see
    /// [`Engine::resume_waiting`](crate::engine::Engine::resume_waiting).
    pub async fn resume_waiting(
        &self,
        principal_id: &str,
        connector: &str,
    ) -> Result<Vec<(String, Result<RunState, EngineError>)>, RuntimeError> {
        Ok(self.engine.resume_waiting(principal_id, connector).await?)
    }

    /// Completes the consent the provider redirected `principal_id` back from (`redirect`:
    /// the whole URL, with `state` and `code`, or the provider's `error`; see
    /// [`Vault::complete_consent_from_redirect`](crate::vault::Vault::complete_consent_from_redirect)),
    /// then resumes every run that waited on the account.
    pub async fn complete_consent_and_resume(
        &self,
        principal_id: &str,
        redirect: &str,
    ) -> Result<ConsentResumed, RuntimeError> {
        let account = self
            .vault()?
            .complete_consent_from_redirect(principal_id, redirect)
            .await?;
        let runs = self
            .resume_waiting(&account.principal_id, &account.connector)
            .await?;
        Ok(ConsentResumed { account, runs })
    }
}
