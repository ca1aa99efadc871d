//! Driving a run from its stored record: the chain's erased entry point
//! ([`ChainMeta::run`]) runs the body on a [`Driver`] that journals every step.

use std::sync::Arc;

use super::attempts::flush_attempts;
use super::driver::Driver;
use super::pending::FlushWhenPending;
use super::{Engine, EngineError};
use crate::audit::NewRecord;
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
    drive_from(engine, meta, run, lease, retry, Start::Stored).await
}

/// [`drive`] for a run this engine just created, or creates with its first unit when
/// `created_with` (the run's `run_started` record) is given: its journal is empty, nothing to
/// read.
pub(super) async fn drive_new(
    engine: Engine,
    meta: &'static ChainMeta,
    run: RunRecord,
    lease: Lease,
    created_with: Option<NewRecord>,
) -> Result<RunState, EngineError> {
    drive_from(
        engine,
        meta,
        run,
        lease,
        None,
        Start::New(created_with.map(Box::new)),
    )
    .await
}

/// Where a driven run's journal comes from.
enum Start {
    /// Read from the store.
    Stored,
    /// A new run: empty. With the run's `run_started` record when the run is created with its
    /// first unit (see [`Driver::new`]).
    New(Option<Box<NewRecord>>),
}

/// [`drive`], with the run's journal when the caller knows it (else it is read).
async fn drive_from(
    engine: Engine,
    meta: &'static ChainMeta,
    run: RunRecord,
    lease: Lease,
    retry: Option<String>,
    start: Start,
) -> Result<RunState, EngineError> {
    let store = Arc::clone(&engine.inner.store);
    let mut abandoned = ReleaseIfAbandoned {
        engine: engine.clone(),
        lease: Some(lease.clone()),
    };
    let result = drive_leased(engine.clone(), meta, run, &lease, retry, start).await;
    abandoned.lease = None;
    // Attempt records no commit of the run took (the lease was lost): stored on their own.
    flush_attempts(&engine, &lease.run_id).await;
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
    engine: Engine,
    lease: Option<Lease>,
}

impl Drop for ReleaseIfAbandoned {
    fn drop(&mut self) {
        let Some(lease) = self.lease.take() else {
            return;
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let engine = self.engine.clone();
            runtime.spawn(async move {
                flush_attempts(&engine, &lease.run_id).await;
                let _ = engine.inner.store.release_run(&lease).await;
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
    start: Start,
) -> Result<RunState, EngineError> {
    let store = Arc::clone(&engine.inner.store);
    let (journal, created_with) = match start {
        Start::New(created_with) => (Vec::new(), created_with.map(|b| *b)),
        Start::Stored => (store.journal(&run.run_id).await?, None),
    };
    let run_id = run.run_id.clone();
    let (principal, input) = (run.principal.clone(), run.input.clone());
    let driver = Arc::new(Driver::new(
        engine,
        meta,
        run,
        lease.clone(),
        journal,
        retry,
        created_with,
    ));
    let body = (meta.run)(driver.clone(), &principal, &input)
        .map_err(|e| EngineError::Codec(format!("run `{run_id}`: {e}")))?;
    let body = FlushWhenPending {
        body,
        driver: &driver,
    }
    .await;
    // A run whose body returned before its first unit is created now, before anything reads it.
    driver.flush_creation();
    // The answers of the units the run did not wait for (a failure halts the run).
    let settled = driver.settle().await;
    if (body.is_err() || settled.is_err()) && lease_lost(store.as_ref(), lease).await {
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
