//! Driving a run from its stored record: the chain's erased entry point
//! ([`ChainMeta::run`]) runs the body on a [`Driver`] that journals every step.

use std::sync::Arc;

use super::driver::Driver;
use super::{Engine, EngineError};
use crate::chain::ChainMeta;
use crate::store::{Lease, RunRecord, RunState};

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
    let result = drive_leased(engine, meta, run, &lease, retry).await;
    if result.is_err() {
        // `finish` releases the lease on every path it reaches; this covers the rest.
        let _ = store.release_run(&lease).await;
    }
    result
}

async fn drive_leased(
    engine: Engine,
    meta: &'static ChainMeta,
    run: RunRecord,
    lease: &Lease,
    retry: Option<String>,
) -> Result<RunState, EngineError> {
    let journal = engine.inner.store.journal(&run.run_id).await?;
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
    driver.finish(body.await).await
}
