//! Driving a run from its stored record: the chain's erased entry point
//! ([`ChainMeta::run`]) runs the body on a [`Driver`] that journals every step.

use std::sync::Arc;

use super::driver::Driver;
use super::{Engine, EngineError};
use crate::chain::ChainMeta;
use crate::journal::{JournalError, Lease, RunJournal, RunRecord, RunState};

/// Drives `run` of `meta` under `lease` until it completes, suspends, is compensated, blocks
/// or fails (`retry`: the step a resume retries). The lease is released on every path.
pub(super) async fn drive(
    engine: Engine,
    meta: &'static ChainMeta,
    run: RunRecord,
    lease: Lease,
    retry: Option<String>,
) -> Result<RunState, EngineError> {
    let store = Arc::clone(&engine.inner.store);
    let mut abandoned = ReleaseIfAbandoned {
        store: Arc::clone(&store),
        lease: Some(lease.clone()),
    };
    let result = drive_leased(engine, meta, run, &lease, retry).await;
    abandoned.lease = None;
    if result.is_err() {
        // `finish` releases the lease on every path it reaches; this covers the rest.
        let _ = store.release_run(&lease).await;
    }
    result
}

/// Releases the lease when the future driving the run is dropped before it finishes (its task
/// was aborted or its caller gave up): nobody drives the run any more, so another driver may
/// claim it at once instead of after the lease expires. A process that dies releases nothing;
/// its lease expires, or its holder lock tells the next claimer it is gone.
struct ReleaseIfAbandoned {
    store: Arc<dyn RunJournal>,
    lease: Option<Lease>,
}

impl Drop for ReleaseIfAbandoned {
    fn drop(&mut self) {
        let Some(lease) = self.lease.take() else {
            return;
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let store = Arc::clone(&self.store);
            runtime.spawn(async move {
                let _ = store.release_run(&lease).await;
            });
        }
    }
}

async fn drive_leased(
    engine: Engine,
    meta: &'static ChainMeta,
    run: RunRecord,
    lease: &Lease,
    retry: Option<String>,
) -> Result<RunState, EngineError> {
    let store = Arc::clone(&engine.inner.store);
    let journal = store.journal(&run.run_id).await?;
    let run_id = run.run_id.clone();
    let (principal, input) = (run.principal.clone(), run.input.clone());
    let driver = Arc::new(Driver::new(
        engine,
        meta,
        run,
        lease.clone(),
        journal,
        retry,
    ));
    let body = (meta.run)(driver.clone(), &principal, &input)
        .map_err(|e| EngineError::Codec(format!("run `{run_id}`: {e}")))?;
    let body = body.await;
    if body.is_err() && lease_lost(store.as_ref(), lease).await {
        // The body failed because another driver took the run over (a write was fenced):
        // this driver must not decide the run's end, alert or write anything more for it.
        return Err(JournalError::LeaseLost(run_id).into());
    }
    driver.finish(body).await
}

/// Whether `lease` is known to be superseded (a journal that cannot tell says no).
async fn lease_lost(store: &dyn RunJournal, lease: &Lease) -> bool {
    matches!(
        store
            .renew_leases(std::slice::from_ref(lease))
            .await
            .as_deref(),
        Ok([false])
    )
}
