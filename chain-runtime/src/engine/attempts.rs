//! One audit record per HTTP attempt of a step or compensator: the connector client tells the
//! engine of each attempt (status, class, wait before the retry), and the engine appends an
//! [`AuditEvent::HttpAttempt`] naming the run, the step, the principal and the account in use.
//!
//! A successful attempt's record is held for the run's next commit (the step's result, in the
//! same transaction, before its outcome record) instead of a commit of its own: one database
//! write per step instead of two on the happy path. Any other attempt (a refusal, a retry, no
//! answer) is committed at once with the records held before it, as before. A held record is
//! as durable as a committed deferred one once the step's result commits; a process that dies
//! between the response and that commit (microseconds, unless the step body goes on calling)
//! loses it, as it loses an attempt it was still waiting on.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::Engine;
use super::driver::commit;
use crate::audit::{AuditEvent, NewRecord, Outcome};
use crate::classify::FailureClass;
use crate::future::BoxFuture;
use crate::journal::{RunRecord, Unit};
use crate::token::{AttemptObserver, HttpAttempt};

/// Audits the HTTP attempts of one step (or compensator) execution.
pub(crate) struct AttemptAudit {
    engine: Engine,
    run: Arc<RunRecord>,
    step_id: String,
    step: &'static str,
    connector: &'static str,
}

impl std::fmt::Debug for AttemptAudit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttemptAudit")
            .field("run_id", &self.run.run_id)
            .field("step_id", &self.step_id)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// The observer that audits each HTTP attempt of `step` (journal id `step_id`) of `run`
    /// on `connector`.
    pub(crate) fn attempt_audit(
        &self,
        run: &RunRecord,
        step_id: &str,
        step: &'static str,
        connector: &'static str,
    ) -> Arc<dyn AttemptObserver> {
        self.shared_attempt_audit(Arc::new(run.clone()), step_id, step, connector)
    }

    /// [`Engine::attempt_audit`] for a run record already shared (no copy of it).
    pub(crate) fn shared_attempt_audit(
        &self,
        run: Arc<RunRecord>,
        step_id: &str,
        step: &'static str,
        connector: &'static str,
    ) -> Arc<dyn AttemptObserver> {
        Arc::new(AttemptAudit {
            engine: self.clone(),
            run,
            step_id: step_id.to_owned(),
            step,
            connector,
        })
    }
}

/// Records of successful HTTP attempts waiting for their run's next commit, by run id.
#[derive(Default)]
pub(crate) struct HeldAttempts {
    held: Mutex<HashMap<String, Vec<NewRecord>>>,
}

impl HeldAttempts {
    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<NewRecord>>> {
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn hold(&self, run_id: &str, record: NewRecord) {
        self.held()
            .entry(run_id.to_owned())
            .or_default()
            .push(record);
    }

    /// The records held for `run_id`, in attempt order; none are held after this.
    pub(crate) fn take(&self, run_id: &str) -> Vec<NewRecord> {
        self.held().remove(run_id).unwrap_or_default()
    }
}

/// Commits the attempt records held for `run_id` on their own (deferred). A failure is logged.
pub(crate) async fn flush_attempts(engine: &Engine, run_id: &str) {
    let held = engine.inner.attempts.take(run_id);
    if held.is_empty() {
        return;
    }
    let unit = Unit {
        writes: Vec::new(),
        audit: held,
        durability: crate::journal::Durability::Deferred,
    };
    if let Err(e) = commit(engine, None, unit).await {
        tracing::error!(run_id, error = %e, "could not audit HTTP attempts");
    }
}

/// A class as the audit trail spells it (snake_case).
fn class_name(class: FailureClass) -> String {
    serde_json::to_value(class)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("{class:?}"))
}

impl AttemptObserver for AttemptAudit {
    fn attempt(&self, attempt: HttpAttempt) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let ok = attempt.class == FailureClass::Ok;
            let record = NewRecord::new(
                self.run.principal_id.clone(),
                if ok {
                    Outcome::Succeeded
                } else {
                    Outcome::Failed
                },
                AuditEvent::HttpAttempt {
                    step: self.step.to_owned(),
                    http_attempt: attempt.number,
                    method: attempt.method,
                    status: attempt.status,
                    failure_class: (!ok).then(|| class_name(attempt.class)),
                    wait_ms: attempt
                        .wait
                        .map(|w| u64::try_from(w.as_millis()).unwrap_or(u64::MAX)),
                },
            )
            .step(&self.step_id);
            let record = self
                .engine
                .with_account(record, &self.run, self.connector)
                .await;
            // Deferred either way: on disk with the step's result or the next intent; a crash
            // before that reads as a crash during the call, which the journal already handles.
            self.engine.inner.attempts.hold(&self.run.run_id, record);
            if !ok {
                flush_attempts(&self.engine, &self.run.run_id).await;
            }
        })
    }
}
