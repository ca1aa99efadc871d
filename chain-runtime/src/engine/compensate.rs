//! Compensation: undo the completed writes of a run in reverse order, under its principal.
//!
//! Each compensation is journaled (intent, then result) in `journal_compensations`, so a crash
//! during compensation resumes it on [`Engine::recover`]: finished compensations are skipped,
//! the others run (again) with the same idempotency key (`{step id}/undo`). Compensators must
//! therefore be idempotent (deleting an already deleted record is a success). A compensator
//! failure does not stop the others; the run ends Blocked with an operator alert. A completed
//! irreversible write, or a write whose outcome is unknown, is left in place and also blocks
//! the run with an alert naming the step and the records it touched.

use std::collections::HashMap;

use super::driver::{alert, audit_failure, commit, conclude};
use super::{Engine, EngineError, idempotency_key, union_records};
use crate::audit::{AuditEvent, NewRecord, Outcome};
use crate::chain::ChainMeta;
use crate::journal::{
    CompensationEntry, EntryKind, EntryResult, JournalWrite, Lease, RunRecord, RunState, Unit,
};
use crate::step::{Effect, RecordRef, StepEnv, StepError};

/// Recovery of a run that crashed while compensating: compensates and stores the end state.
pub(crate) async fn finish_compensation(
    engine: &Engine,
    meta: &'static ChainMeta,
    run: &RunRecord,
    lease: Lease,
) -> Result<RunState, EngineError> {
    let state = compensate(
        engine,
        meta,
        run,
        &lease,
        "recovered while compensating".to_owned(),
    )
    .await;
    match state {
        Ok(state) => conclude(engine, run, &lease, state).await,
        Err(e) => {
            let _ = engine.inner.store.release_run(&lease).await;
            Err(e)
        }
    }
}

/// Runs the compensators of every completed write, newest first; returns the end state
/// (Compensated, Failed when nothing had been written, or Blocked). Does not store it.
pub(crate) async fn compensate(
    engine: &Engine,
    meta: &'static ChainMeta,
    run: &RunRecord,
    lease: &Lease,
    cause: String,
) -> Result<RunState, EngineError> {
    let store = &engine.inner.store;
    store.set_state(lease, None, RunState::Compensating).await?;
    let journal = store.journal(&run.run_id).await?;
    let done: HashMap<String, CompensationEntry> = store
        .compensations(&run.run_id)
        .await?
        .into_iter()
        .map(|c| (c.step_id.clone(), c))
        .collect();
    let steps: HashMap<&str, _> = meta.steps.iter().map(|s| (s.name, *s)).collect();

    let mut wrote = false;
    let mut problems: Vec<String> = Vec::new();
    let mut alerts: Vec<(String, Vec<RecordRef>, String)> = Vec::new();
    for entry in journal.iter().rev().filter(|e| e.kind == EntryKind::Step) {
        // A classified failure wrote nothing (also true of entries that name no step of the
        // chain, such as a rejected model tool call).
        if matches!(entry.result, Some(EntryResult::Err { .. })) {
            continue;
        }
        let Some(step) = steps.get(entry.name.as_str()) else {
            problems.push(format!(
                "step `{}` is no longer part of the chain",
                entry.name
            ));
            continue;
        };
        let (output, touched) = match &entry.result {
            Some(EntryResult::Ok { output, touched }) => (output, touched),
            // A classified failure wrote nothing.
            Some(EntryResult::Err { .. }) => continue,
            None if step.effect.is_write() => {
                wrote = true;
                let msg = format!(
                    "write step `{}` has an unknown outcome (intent without result); check `{}` with idempotency key {}",
                    entry.step_id,
                    step.connector,
                    idempotency_key(&run.run_id, &entry.step_id)
                );
                alerts.push((entry.step_id.clone(), Vec::new(), msg.clone()));
                problems.push(msg);
                continue;
            }
            None => continue,
        };
        match step.effect {
            Effect::Read => {}
            Effect::Irreversible { reason } => {
                wrote = true;
                let names: Vec<String> = touched
                    .iter()
                    .map(|r| format!("{} {} {}", r.connector, r.kind, r.id))
                    .collect();
                let msg = format!(
                    "irreversible write `{}` ({reason}) is left in place after the run failed ({cause}); records: {}",
                    entry.step_id,
                    if names.is_empty() {
                        "none declared".to_owned()
                    } else {
                        names.join(", ")
                    }
                );
                alerts.push((entry.step_id.clone(), touched.clone(), msg.clone()));
                problems.push(msg);
            }
            Effect::Compensated { compensator } => {
                wrote = true;
                let previous = done.get(&entry.step_id);
                if matches!(
                    previous,
                    Some(CompensationEntry {
                        result: Some(None),
                        ..
                    })
                ) {
                    continue;
                }
                let attempt = previous.map_or(1, |p| p.attempt + 1);
                let intent = CompensationEntry {
                    step_id: entry.step_id.clone(),
                    compensator: compensator.name.to_owned(),
                    attempt,
                    result: None,
                };
                let attempt_record = NewRecord::new(
                    run.principal_id.clone(),
                    Outcome::Attempted,
                    AuditEvent::CompensationAttempt {
                        compensator: compensator.name.to_owned(),
                        compensates_step_id: entry.step_id.clone(),
                        attempt,
                    },
                )
                .step(&entry.step_id);
                let subject_record = engine
                    .with_account(attempt_record, run, compensator.connector)
                    .await;
                // The intent and its attempt record: one transaction, before the call.
                let unit = Unit::of([JournalWrite::Compensation(intent.clone())])
                    .audit(subject_record.clone());
                commit(engine, Some(lease), unit).await?;

                let undo_id = format!("{}/undo", entry.step_id);
                let undo_key = idempotency_key(&run.run_id, &undo_id);
                let mut env = StepEnv::new(
                    run.run_id.clone(),
                    undo_id.clone(),
                    undo_key.clone(),
                    compensator.connector,
                    run.principal.clone(),
                );
                // The same principal's account on the compensator's connector; no other.
                if let Some(access) = engine
                    .inner
                    .credentials
                    .connector_access(&run.principal_id, compensator.connector)
                {
                    let audit = engine.attempt_audit(
                        run,
                        &undo_id,
                        compensator.name,
                        compensator.connector,
                    );
                    env = env.with_access(access.observed(audit));
                }
                let declared = env.touched_handle();
                let result = match step.compensate {
                    Some(undo) => undo(env, output.clone()).await,
                    None => Err(StepError::Runtime(format!(
                        "step `{}` names compensator `{}` but carries no compensate function",
                        step.name, compensator.name
                    ))),
                };
                let (outcome, failure_class, detail) = match &result {
                    Ok(()) => (Outcome::Succeeded, None, None),
                    Err(e) => {
                        let (c, d) = audit_failure(e);
                        (Outcome::Failed, c, d)
                    }
                };
                let mut outcome_record = subject_record;
                outcome_record.time_unix_ms = crate::audit::now_unix_ms();
                outcome_record.outcome = outcome;
                outcome_record.event = AuditEvent::CompensationOutcome {
                    compensator: compensator.name.to_owned(),
                    compensates_step_id: entry.step_id.clone(),
                    attempt,
                    failure_class,
                    detail,
                };
                outcome_record.records = declared.records();
                // The result and its outcome record: one transaction (deferred durability, as
                // a step's result; see the driver).
                let done = CompensationEntry {
                    result: Some(result.clone().err()),
                    ..intent
                };
                let unit = Unit::of([JournalWrite::Compensation(done)])
                    .audit(outcome_record)
                    .deferred();
                commit(engine, Some(lease), unit).await?;
                if let Err(e) = result {
                    let msg = format!(
                        "compensator `{}` of `{}` failed (idempotency key {undo_key}): {e}",
                        compensator.name, entry.step_id
                    );
                    alerts.push((entry.step_id.clone(), touched.clone(), msg.clone()));
                    problems.push(msg);
                }
            }
        }
    }

    if problems.is_empty() {
        return Ok(if wrote {
            RunState::Compensated
        } else {
            RunState::Failed { error: cause }
        });
    }
    for (step_id, records, message) in &alerts {
        engine
            .alert(alert(
                run,
                Some(step_id.clone()),
                records.clone(),
                message.clone(),
            ))
            .await;
    }
    if alerts.is_empty() {
        engine
            .alert(alert(
                run,
                None,
                union_records(Vec::new()),
                problems.join("; "),
            ))
            .await;
    }
    Ok(RunState::Blocked {
        reason: format!("after `{cause}`: {}", problems.join("; ")),
    })
}
