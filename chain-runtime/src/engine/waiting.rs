//! Resuming the runs that wait on one account, after its consent completed.

use super::{Engine, EngineError};
use crate::journal::RunState;

impl Engine {
    /// Resumes, one after the other, every run of `principal_id` suspended on `connector`
    /// (the runs waiting for that account's consent), oldest first. Returns each run id with
    /// the state the run reached or why it did not resume (still missing a consent, another
    /// upstream identity, driven by someone else right now, …). Listing the runs is the only
    /// failure of the call itself.
    pub async fn resume_waiting(
        &self,
        principal_id: &str,
        connector: &str,
    ) -> Result<Vec<(String, Result<RunState, EngineError>)>, EngineError> {
        let mut out = Vec::new();
        for run in self.list_runs().await? {
            let waits =
                matches!(&run.state, RunState::Suspended { connector: c, .. } if c == connector);
            if run.principal_id != principal_id || !waits {
                continue;
            }
            let result = self.resume(&run.run_id).await.map(|report| report.state);
            out.push((run.run_id, result));
        }
        Ok(out)
    }
}
