//! Units of work and the end of a run: how the driver and the compensation commit journal
//! writes with their audit records, build alerts, and store a run's end state.

use super::{Engine, EngineError};
use crate::audit::{AuditEvent, NewRecord, Outcome};
use crate::classify::FailureClass;
use crate::journal::{Alert, Committed, JournalWrite, Lease, RunRecord, RunState, Unit};
use crate::step::{RecordRef, StepError};

/// Commits `unit` as one unit of work. When the journal and the audit trail share a database,
/// its journal writes and audit records commit in one transaction; otherwise (an in-memory
/// journal, or an audit store elsewhere) the journal writes commit first and the records are
/// appended to the audit store after them. Under a lease, the HTTP attempt records held for
/// the run (see `attempts`) go first in the unit; when the unit is not stored they are
/// committed on their own.
pub(crate) async fn commit(
    engine: &Engine,
    lease: Option<&Lease>,
    unit: Unit,
) -> Result<Committed, EngineError> {
    commit_as(engine, lease, unit, Release::Keep)
        .await
        .map(|(committed, _)| committed)
}

/// Whether a commit under a lease also gives the lease back (a run's end).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Release {
    /// The run goes on: keep the lease.
    Keep,
    /// The unit stores the run's end: release the lease with it, in the same transaction
    /// when the journal carries the audit records.
    WithUnit,
}

/// [`commit`], releasing `lease` with the unit when `release` says so. Every path takes the
/// HTTP attempt records held for the run. Returns the outcome and whether the lease was
/// released (only with an applied unit; else the caller releases it).
pub(crate) async fn commit_as(
    engine: &Engine,
    lease: Option<&Lease>,
    mut unit: Unit,
    release: Release,
) -> Result<(Committed, bool), EngineError> {
    let Some(lease) = lease else {
        return commit_unit(engine, None, unit, release).await;
    };
    let held = engine.inner.attempts.take(&lease.run_id);
    if held.is_empty() {
        return commit_unit(engine, Some(lease), unit, release).await;
    }
    let own = std::mem::take(&mut unit.audit);
    unit.audit = held.clone();
    unit.audit.extend(own);
    let committed = commit_unit(engine, Some(lease), unit, release).await;
    if !matches!(&committed, Ok((c, _)) if c.applied) {
        let alone = Unit {
            writes: Vec::new(),
            audit: held,
            durability: crate::journal::Durability::Deferred,
        };
        if let Err(e) = commit_unit(engine, None, alone, Release::Keep).await {
            tracing::error!(run_id = %lease.run_id, error = %e, "could not audit HTTP attempts");
        }
    }
    committed
}

async fn commit_unit(
    engine: &Engine,
    lease: Option<&Lease>,
    mut unit: Unit,
    release: Release,
) -> Result<(Committed, bool), EngineError> {
    let journal = &engine.inner.store;
    if in_one_transaction(engine, &unit) {
        return Ok(match (lease, release) {
            (Some(lease), Release::WithUnit) => {
                let committed = journal.commit_and_release(lease, unit).await?;
                let released = committed.applied;
                (committed, released)
            }
            _ => (journal.commit(lease, unit).await?, false),
        });
    }
    let records = std::mem::take(&mut unit.audit);
    let mut committed = journal.commit(lease, unit).await?;
    if committed.applied {
        for record in records {
            committed
                .audit
                .push(engine.inner.audit.append(record).await?);
        }
    }
    Ok((committed, false))
}

/// Whether the journal commits `unit` whole: it has no audit records, or the journal and the
/// audit trail share a database.
fn in_one_transaction(engine: &Engine, unit: &Unit) -> bool {
    unit.audit.is_empty() || journal_holds_audit(engine)
}

/// Whether the journal and the audit trail are in the same database (so one transaction can
/// hold a journal write and its audit records).
fn journal_holds_audit(engine: &Engine) -> bool {
    let journal = &engine.inner.store;
    journal.database().is_some() && journal.database() == engine.inner.audit.database()
}

/// Inserts a new `run`, claims it and commits its `run_started` record (deferred: the first
/// intent's fsync covers them); one transaction when the journal and the audit trail share a
/// database. Nothing stays claimed when it fails.
pub(crate) async fn create_run(
    engine: &Engine,
    run: RunRecord,
    started: NewRecord,
) -> Result<Lease, EngineError> {
    let store = &engine.inner.store;
    let unit = Unit::of(Vec::new()).audit(started).deferred();
    if in_one_transaction(engine, &unit) {
        let (lease, _) = store
            .create_run_audited(run, &engine.inner.owner, unit.audit)
            .await?;
        return Ok(lease);
    }
    let lease = store.create_run(run, &engine.inner.owner).await?;
    if let Err(e) = commit(engine, Some(&lease), unit).await {
        let _ = store.release_run(&lease).await;
        return Err(e);
    }
    Ok(lease)
}

/// The lease of a new run that is created with its first unit, in the same transaction
/// ([`commit_creating`]), instead of on its own: where the journal can
/// ([`RunJournal::new_run_lease`](crate::journal::RunJournal::new_run_lease)), queues units in
/// order and carries the audit records. `None`: [`create_run`] first.
pub(crate) fn first_unit_lease(engine: &Engine, run_id: &str) -> Option<Lease> {
    let store = &engine.inner.store;
    if !(store.ordered_commits() && journal_holds_audit(engine)) {
        return None;
    }
    store.new_run_lease(run_id, &engine.inner.owner)
}

/// Creates `run` under `lease` (from [`first_unit_lease`]) and commits `unit`, the run's first
/// (its `run_started` record first), in one transaction. No HTTP attempt record can be held
/// for a run before its first unit: every call comes after one.
pub(crate) async fn commit_creating(
    engine: &Engine,
    run: RunRecord,
    lease: &Lease,
    unit: Unit,
) -> Result<Committed, EngineError> {
    Ok(engine.inner.store.commit_creating(run, lease, unit).await?)
}

/// The one way to build an operator alert about `run`.
pub(crate) fn alert(
    run: &RunRecord,
    step_id: Option<String>,
    records: Vec<RecordRef>,
    message: String,
) -> Alert {
    Alert {
        run_id: run.run_id.clone(),
        chain: run.chain.clone(),
        principal: run.principal_id.clone(),
        step_id,
        records,
        message,
        time_unix_ms: crate::audit::now_unix_ms(),
    }
}

pub(crate) fn failure_class(error: &StepError) -> String {
    match error {
        StepError::Auth { class, .. } => serde_json::to_value(class)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_else(|| format!("{class:?}")),
        StepError::Forbidden { .. } => "forbidden".to_owned(),
        StepError::Unavailable { .. } => "unavailable".to_owned(),
        StepError::OutcomeUnknown { .. } => "outcome_unknown".to_owned(),
        StepError::Domain(_) => "domain".to_owned(),
        StepError::Runtime(_) => "runtime".to_owned(),
    }
}

pub(crate) fn audit_failure(error: &StepError) -> (Option<String>, Option<String>) {
    (Some(failure_class(error)), Some(error.to_string()))
}

/// The provider rejected the runtime's own OAuth client: only an operator can fix it.
pub(crate) fn is_invalid_client(error: &StepError) -> bool {
    matches!(
        error,
        StepError::Auth {
            class: FailureClass::InvalidClient,
            ..
        }
    )
}

/// Auth failures the suspend policy waits out.
pub(crate) fn suspends(error: &StepError) -> bool {
    matches!(
        error,
        StepError::Auth {
            class: FailureClass::GrantRevoked
                | FailureClass::InsufficientScope
                | FailureClass::StepUpRequired,
            ..
        }
    )
}

/// Stores the run's new state with its audit record and gives the lease back.
pub(crate) async fn conclude(
    engine: &Engine,
    run: &RunRecord,
    lease: &Lease,
    state: RunState,
) -> Result<RunState, EngineError> {
    conclude_with(engine, run, lease, state, None).await
}

/// [`conclude`], with `before` (units the driver held, see `pending`) first in the same unit.
pub(crate) async fn conclude_with(
    engine: &Engine,
    run: &RunRecord,
    lease: &Lease,
    state: RunState,
    before: Option<Unit>,
) -> Result<RunState, EngineError> {
    let mut unit = Unit::of([JournalWrite::State {
        expected: None,
        state: state.clone(),
    }]);
    if let Some(before) = before {
        unit.writes.splice(0..0, before.writes);
        unit.audit = before.audit;
    }
    if !matches!(
        state,
        RunState::Suspended { .. } | RunState::AwaitingApproval(_)
    ) {
        let outcome = match state {
            RunState::Completed { .. } | RunState::Compensated => Outcome::Succeeded,
            _ => Outcome::Failed,
        };
        unit = unit.audit(
            NewRecord::new(
                run.principal_id.clone(),
                outcome,
                AuditEvent::RunFinished {
                    state: state.kind().to_owned(),
                },
            )
            .run(&run.run_id),
        );
    }
    // The end state, its audit record (after the run's held HTTP attempt records) and the
    // lease's release: one transaction when the journal carries the audit records.
    let store = &engine.inner.store;
    let stored = commit_as(engine, Some(lease), unit, Release::WithUnit).await;
    if !matches!(&stored, Ok((_, true))) {
        let _ = store.release_run(lease).await;
    }
    stored?;
    Ok(state)
}
