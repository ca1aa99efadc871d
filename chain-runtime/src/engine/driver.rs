//! The engine's [`RunDriver`]: journal, replay, divergence and unknown-outcome detection.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard};

use serde_json::Value;

use super::{Engine, EngineError, compensate, idempotency_key};
use crate::audit::{AuditEvent, Effect as AuditEffect, NewRecord, Outcome};
use crate::chain::{AuthFailurePolicy, ChainError, ChainMeta, HandoffRequest, RunDriver};
use crate::classify::FailureClass;
use crate::future::BoxFuture;
use crate::manifest::ScopeManifest;
use crate::step::{CallMode, ErasedStepCall, RecordRef, StepEnv, StepError, StepMeta};
use crate::store::{Alert, EntryKind, EntryResult, JournalEntry, Lease, RunRecord, RunState};

/// Why the run cannot go on by itself.
struct Halt {
    reason: String,
    step_id: Option<String>,
    records: Vec<RecordRef>,
}

/// The last step failure, to decide between suspend and compensate.
struct Failure {
    step_id: String,
    node: u32,
    connector: String,
    error: StepError,
}

struct Cursor {
    journal: BTreeMap<u32, JournalEntry>,
    next: u32,
    counts: HashMap<String, u32>,
    node: u32,
    halt: Option<Halt>,
    failure: Option<Failure>,
}

pub(crate) struct Driver {
    engine: Engine,
    meta: &'static ChainMeta,
    run: RunRecord,
    lease: Lease,
    /// On resume: the suspended step, whose journaled failure is retried instead of replayed.
    retry: Option<String>,
    cursor: Mutex<Cursor>,
}

fn runtime(e: impl std::fmt::Display) -> StepError {
    StepError::Runtime(e.to_string())
}

fn failure_class(error: &StepError) -> String {
    match error {
        StepError::Auth { class, .. } => serde_json::to_value(class)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_else(|| format!("{class:?}")),
        StepError::Forbidden { .. } => "forbidden".to_owned(),
        StepError::Unavailable { .. } => "unavailable".to_owned(),
        StepError::Domain(_) => "domain".to_owned(),
        StepError::Runtime(_) => "runtime".to_owned(),
    }
}

pub(crate) fn audit_failure(error: &StepError) -> (Option<String>, Option<String>) {
    (Some(failure_class(error)), Some(error.to_string()))
}

impl Driver {
    pub(crate) fn new(
        engine: Engine,
        meta: &'static ChainMeta,
        run: RunRecord,
        lease: Lease,
        journal: Vec<JournalEntry>,
        retry: Option<String>,
    ) -> Self {
        Self {
            engine,
            meta,
            retry,
            cursor: Mutex::new(Cursor {
                journal: journal.into_iter().map(|e| (e.seq, e)).collect(),
                next: 0,
                counts: HashMap::new(),
                node: run.node,
                halt: None,
                failure: None,
            }),
            run,
            lease,
        }
    }

    fn cursor(&self) -> MutexGuard<'_, Cursor> {
        self.cursor
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes the next journal position for a call named `id_prefix`.
    fn position(
        &self,
        id_prefix: String,
    ) -> Result<(u32, String, Option<JournalEntry>), StepError> {
        let mut c = self.cursor();
        if let Some(h) = &c.halt {
            return Err(StepError::Runtime(format!(
                "the run is halted: {}",
                h.reason
            )));
        }
        let n = c.counts.entry(id_prefix.clone()).or_insert(0);
        *n += 1;
        let step_id = format!("{id_prefix}#{n}");
        let seq = c.next;
        c.next += 1;
        let existing = c.journal.get(&seq).cloned();
        Ok((seq, step_id, existing))
    }

    /// Stops the run for an operator; returns the error the body sees.
    fn halt(&self, reason: String, step_id: Option<String>, records: Vec<RecordRef>) -> StepError {
        let mut c = self.cursor();
        if c.halt.is_none() {
            c.halt = Some(Halt {
                reason: reason.clone(),
                step_id,
                records,
            });
        }
        StepError::Runtime(reason)
    }

    fn diverged(&self, seq: u32, journaled: &str, actual: &str) -> StepError {
        self.halt(
            format!(
                "the chain body diverged from its journal at position {seq}: the journal has `{journaled}` there, but the body now calls `{actual}`; \
                 something the body depends on was not journaled with `ctx.record` (or the code changed); nothing was re-executed"
            ),
            Some(journaled.to_owned()),
            Vec::new(),
        )
    }

    fn store_failed(&self, what: &str, e: impl std::fmt::Display) -> StepError {
        self.halt(
            format!("the run store failed while {what}: {e}"),
            None,
            Vec::new(),
        )
    }

    fn record_entry(&self, entry: JournalEntry) {
        let mut c = self.cursor();
        c.journal.insert(entry.seq, entry);
    }

    /// `record` with the run, connector, and the connected account in use right now (account,
    /// upstream subject, grant and scopes at call time).
    async fn account_record(&self, record: NewRecord, connector: &str) -> NewRecord {
        self.engine.with_account(record, &self.run, connector).await
    }

    async fn run_step(
        &self,
        site: u32,
        meta: &'static StepMeta,
        call: ErasedStepCall,
    ) -> Result<Value, StepError> {
        let node = crate::graph::FAIL + 1 + site;
        let (seq, step_id, existing) =
            self.position(format!("{}/{}", self.meta.name, meta.name))?;
        let mut attempt = 1;
        let mut mode = CallMode::Run;
        if let Some(entry) = existing {
            if entry.step_id != step_id {
                return Err(self.diverged(seq, &entry.step_id, &step_id));
            }
            match entry.result {
                Some(EntryResult::Ok { output, .. }) => {
                    self.cursor().node = node;
                    return Ok(output);
                }
                // The step can read back whether its write happened: ask it first.
                None if meta.effect.is_write() && meta.reconcile.is_some() => {
                    attempt = entry.attempt + 1;
                    mode = CallMode::ReconcileFirst;
                }
                Some(EntryResult::Err { .. }) if self.retry.as_deref() == Some(&step_id) => {
                    attempt = entry.attempt + 1;
                }
                Some(EntryResult::Err { error }) => {
                    self.note_failure(&step_id, node, meta.connector, &error);
                    return Err(error);
                }
                // A provider that deduplicates by idempotency key makes a resend with the same
                // key safe: it returns the original result instead of writing twice.
                None if meta.effect.is_write() && !meta.idempotent => {
                    let key = idempotency_key(&self.run.run_id, &step_id);
                    return Err(self.halt(
                        format!(
                            "unknown outcome of write step `{step_id}`: its intent is journaled but no result (the process stopped during the call); \
                             the step has no `reconcile` hook and is not marked `idempotent` (its provider deduplicating by Idempotency-Key), so it is not redone blindly. Check `{}` for a write with idempotency key {key}, then settle the run",
                            meta.connector
                        ),
                        Some(step_id),
                        Vec::new(),
                    ));
                }
                None => attempt = entry.attempt + 1,
            }
        }
        let key = idempotency_key(&self.run.run_id, &step_id);
        let effect = if meta.effect.is_write() {
            AuditEffect::Write
        } else {
            AuditEffect::Read
        };
        let attempt_record = self
            .account_record(
                NewRecord::new(
                    self.run.principal_id.clone(),
                    Outcome::Attempted,
                    AuditEvent::StepAttempt {
                        step: meta.name.to_owned(),
                        attempt,
                        effect,
                        idempotency_key: Some(key.clone()),
                    },
                )
                .step(&step_id),
                meta.connector,
            )
            .await;
        self.engine
            .inner
            .audit
            .append(attempt_record)
            .await
            .map_err(|e| {
                self.halt(
                    format!("the audit trail failed before `{step_id}`: {e}"),
                    None,
                    Vec::new(),
                )
            })?;
        let intent = JournalEntry {
            seq,
            step_id: step_id.clone(),
            kind: EntryKind::Step,
            name: meta.name.to_owned(),
            attempt,
            result: None,
        };
        self.engine
            .inner
            .store
            .write_entry(&self.lease, intent.clone(), node)
            .await
            .map_err(|e| self.store_failed("journaling an intent", e))?;
        self.cursor().node = node;
        self.record_entry(intent.clone());

        let mut env = StepEnv::new(
            self.run.run_id.clone(),
            step_id.clone(),
            key.clone(),
            meta.connector,
            self.run.principal.clone(),
        );
        if let Some(access) = self
            .engine
            .inner
            .credentials
            .connector_access(&self.run.principal_id, meta.connector)
        {
            env = env.with_access(access);
        }
        let result = call(env.clone(), mode).await;
        let touched = env.touched();
        let journaled = match &result {
            Ok(output) => EntryResult::Ok {
                output: output.clone(),
                touched: touched.clone(),
            },
            Err(error) => EntryResult::Err {
                error: error.clone(),
            },
        };
        let done = JournalEntry {
            result: Some(journaled),
            ..intent
        };
        self.engine
            .inner
            .store
            .write_entry(&self.lease, done.clone(), node)
            .await
            .map_err(|e| self.store_failed("journaling a result", e))?;
        self.record_entry(done);
        let (outcome, failure_class, detail) = match &result {
            Ok(_) => (Outcome::Succeeded, None, None),
            Err(e) => {
                let (c, d) = audit_failure(e);
                (Outcome::Failed, c, d)
            }
        };
        let mut outcome_record = self
            .account_record(
                NewRecord::new(
                    self.run.principal_id.clone(),
                    outcome,
                    AuditEvent::StepOutcome {
                        step: meta.name.to_owned(),
                        attempt,
                        effect,
                        failure_class,
                        detail,
                    },
                )
                .step(&step_id),
                meta.connector,
            )
            .await;
        outcome_record.records = touched;
        if let Err(e) = self.engine.inner.audit.append(outcome_record).await {
            tracing::error!(run_id = %self.run.run_id, step_id = %step_id, error = %e, "could not audit a step outcome");
        }
        if let Err(error) = &result {
            self.note_failure(&step_id, node, meta.connector, error);
        }
        result
    }

    fn note_failure(&self, step_id: &str, node: u32, connector: &str, error: &StepError) {
        self.cursor().failure = Some(Failure {
            step_id: step_id.to_owned(),
            node,
            connector: connector.to_owned(),
            error: error.clone(),
        });
    }

    async fn run_record(
        &self,
        label: &str,
        produce: BoxFuture<'_, Result<Value, StepError>>,
    ) -> Result<Value, StepError> {
        let (seq, step_id, existing) =
            self.position(format!("{}/record:{label}", self.meta.name))?;
        let mut attempt = 1;
        if let Some(entry) = existing {
            if entry.step_id != step_id {
                return Err(self.diverged(seq, &entry.step_id, &step_id));
            }
            match entry.result {
                Some(EntryResult::Ok { output, .. }) => return Ok(output),
                Some(EntryResult::Err { error }) => return Err(error),
                None => attempt = entry.attempt + 1,
            }
        }
        let result = produce.await;
        let entry = JournalEntry {
            seq,
            step_id,
            kind: EntryKind::Record,
            name: label.to_owned(),
            attempt,
            result: Some(match &result {
                Ok(output) => EntryResult::Ok {
                    output: output.clone(),
                    touched: Vec::new(),
                },
                Err(error) => EntryResult::Err {
                    error: error.clone(),
                },
            }),
        };
        let node = self.cursor().node;
        self.engine
            .inner
            .store
            .write_entry(&self.lease, entry.clone(), node)
            .await
            .map_err(|e| self.store_failed("journaling a recorded value", e))?;
        self.record_entry(entry);
        result
    }

    async fn run_handoff(&self, request: HandoffRequest) -> Result<Value, StepError> {
        let (seq, step_id, existing) =
            self.position(format!("{}/handoff:{}", self.meta.name, request.chain.name))?;
        let mut attempt = 1;
        if let Some(entry) = existing {
            if entry.step_id != step_id {
                return Err(self.diverged(seq, &entry.step_id, &step_id));
            }
            match entry.result {
                Some(EntryResult::Ok { output, .. }) => return Ok(output),
                Some(EntryResult::Err { error }) => return Err(error),
                // The child run id is derived from the step id: continuing finds the same child.
                None => attempt = entry.attempt + 1,
            }
        }
        let child_run_id = format!(
            "{}.{}",
            self.run.run_id,
            &idempotency_key(&self.run.run_id, &step_id)[..12]
        );
        let node = self.cursor().node;
        let intent = JournalEntry {
            seq,
            step_id: step_id.clone(),
            kind: EntryKind::Handoff,
            name: request.chain.path(),
            attempt,
            result: None,
        };
        self.engine
            .inner
            .store
            .write_entry(&self.lease, intent.clone(), node)
            .await
            .map_err(|e| self.store_failed("journaling a handoff", e))?;
        self.engine
            .inner
            .audit
            .append(
                NewRecord::new(
                    self.run.principal_id.clone(),
                    Outcome::Info,
                    AuditEvent::Handoff {
                        child_run_id: child_run_id.clone(),
                        child_principal: request.principal_id.clone(),
                        child_chain: request.chain.path(),
                        reason: request.reason.clone(),
                    },
                )
                .run(&self.run.run_id)
                .step(&step_id),
            )
            .await
            .map_err(|e| {
                self.halt(
                    format!("the audit trail failed at a handoff: {e}"),
                    None,
                    Vec::new(),
                )
            })?;
        let result = match self
            .engine
            .run_child(&request, child_run_id.clone(), &self.run.run_id)
            .await
        {
            Ok(RunState::Completed { output }) => Ok(output),
            Ok(state) => Err(StepError::Domain(format!(
                "handoff to `{}`: child run `{child_run_id}` ended {}",
                request.chain.name,
                state.kind()
            ))),
            Err(EngineError::PreflightNotReady { consents, .. }) => {
                Err(StepError::Domain(format!(
                    "handoff to `{}`: principal `{}` must first consent to {}",
                    request.chain.name,
                    request.principal_id,
                    super::describe_consents(&consents)
                )))
            }
            Err(e) => Err(runtime(format!("handoff to `{}`: {e}", request.chain.name))),
        };
        let done = JournalEntry {
            result: Some(match &result {
                Ok(output) => EntryResult::Ok {
                    output: output.clone(),
                    touched: Vec::new(),
                },
                Err(error) => EntryResult::Err {
                    error: error.clone(),
                },
            }),
            ..intent
        };
        self.engine
            .inner
            .store
            .write_entry(&self.lease, done.clone(), node)
            .await
            .map_err(|e| self.store_failed("journaling a handoff result", e))?;
        self.record_entry(done);
        result
    }

    /// Decides the run's end after the body returned, and stores it.
    pub(crate) async fn finish(
        &self,
        body: Result<Value, ChainError>,
    ) -> Result<RunState, EngineError> {
        let (halt, failure) = {
            let mut c = self.cursor();
            (c.halt.take(), c.failure.take())
        };
        let state = if let Some(halt) = halt {
            self.engine
                .alert(Alert {
                    run_id: self.run.run_id.clone(),
                    chain: self.run.chain.clone(),
                    principal: self.run.principal_id.clone(),
                    step_id: halt.step_id,
                    records: halt.records,
                    message: format!("run `{}` is blocked: {}", self.run.run_id, halt.reason),
                    time_unix_ms: crate::audit::now_unix_ms(),
                })
                .await;
            RunState::Blocked {
                reason: halt.reason,
            }
        } else {
            match body {
                Ok(output) => RunState::Completed { output },
                Err(err) => {
                    let propagated =
                        failure.filter(|f| matches!(&err, ChainError::Step(e) if *e == f.error));
                    match propagated {
                        Some(f)
                            if self.meta.on_auth_failure == AuthFailurePolicy::Suspend
                                && suspends(&f.error) =>
                        {
                            self.suspended(f).await?
                        }
                        other => {
                            if let Some(f) = other.filter(|f| is_invalid_client(&f.error)) {
                                self.alert_invalid_client(&f).await;
                            }
                            compensate::compensate(
                                &self.engine,
                                self.meta,
                                &self.run,
                                &self.lease,
                                err.to_string(),
                            )
                            .await?
                        }
                    }
                }
            }
        };
        conclude(&self.engine, &self.run, &self.lease, state).await
    }

    /// An invalid client is never the user's to fix (no consent request): the operator is
    /// alerted, whatever the chain's policy, and the run then compensates.
    async fn alert_invalid_client(&self, f: &Failure) {
        self.engine
            .alert(Alert {
                run_id: self.run.run_id.clone(),
                chain: self.run.chain.clone(),
                principal: self.run.principal_id.clone(),
                step_id: Some(f.step_id.clone()),
                records: Vec::new(),
                message: format!(
                    "`{}` rejected this application's OAuth client credentials (invalid client) at step `{}`: fix the client id and secret registered for the `{}` connector; a new user consent cannot fix this",
                    f.connector, f.step_id, f.connector
                ),
                time_unix_ms: crate::audit::now_unix_ms(),
            })
            .await;
    }

    async fn suspended(&self, f: Failure) -> Result<RunState, EngineError> {
        let StepError::Auth {
            class,
            needed_scopes,
            consent_params,
            ..
        } = &f.error
        else {
            return Err(EngineError::Codec("suspend without an auth failure".into()));
        };
        let grants = self
            .engine
            .inner
            .credentials
            .grants(&self.run.principal_id)
            .await?;
        let mut scopes: BTreeSet<String> = grants.get(&f.connector).cloned().unwrap_or_default();
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

/// The provider rejected the runtime's own OAuth client: only an operator can fix it.
fn is_invalid_client(error: &StepError) -> bool {
    matches!(
        error,
        StepError::Auth {
            class: FailureClass::InvalidClient,
            ..
        }
    )
}

/// Auth failures the suspend policy waits out.
fn suspends(error: &StepError) -> bool {
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

/// Stores the run's new state, audits it and gives the lease back.
pub(crate) async fn conclude(
    engine: &Engine,
    run: &RunRecord,
    lease: &Lease,
    state: RunState,
) -> Result<RunState, EngineError> {
    let stored = engine
        .inner
        .store
        .set_state(lease, None, state.clone())
        .await;
    if stored.is_ok() && !matches!(state, RunState::Suspended { .. }) {
        let outcome = match state {
            RunState::Completed { .. } | RunState::Compensated => Outcome::Succeeded,
            _ => Outcome::Failed,
        };
        if let Err(e) = engine
            .inner
            .audit
            .append(
                NewRecord::new(
                    run.principal_id.clone(),
                    outcome,
                    AuditEvent::RunFinished {
                        state: state.kind().to_owned(),
                    },
                )
                .run(&run.run_id),
            )
            .await
        {
            tracing::error!(run_id = %run.run_id, error = %e, "could not audit the end of a run");
        }
    }
    let _ = engine.inner.store.release_run(lease).await;
    stored?;
    Ok(state)
}

impl RunDriver for Driver {
    fn step<'a>(
        &'a self,
        site: u32,
        meta: &'static StepMeta,
        call: ErasedStepCall,
    ) -> BoxFuture<'a, Result<Value, StepError>> {
        Box::pin(self.run_step(site, meta, call))
    }

    fn record<'a>(
        &'a self,
        label: &'a str,
        produce: BoxFuture<'a, Result<Value, StepError>>,
    ) -> BoxFuture<'a, Result<Value, StepError>> {
        Box::pin(self.run_record(label, produce))
    }

    fn handoff<'a>(&'a self, request: HandoffRequest) -> BoxFuture<'a, Result<Value, StepError>> {
        Box::pin(self.run_handoff(request))
    }
}
