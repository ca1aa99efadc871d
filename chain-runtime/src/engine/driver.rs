//! The engine's [`RunDriver`]: performs what the [`ReplayCursor`] decides for each journaled
//! call (replay, execute, halt), journals each execution with its audit records as one unit of
//! work, and decides the run's end.

use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::Value;

pub(crate) use super::outcome::{
    alert, audit_failure, commit, commit_creating, conclude, create_run, first_unit_lease,
};
use super::outcome::{is_invalid_client, suspends};
use super::pending::{Held, Sent};
use super::replay::{self, Call, Decision, HaltCause, Next, ReplayCursor};
use super::{Engine, EngineError, compensate, idempotency_key};
use crate::audit::{AuditEvent, Effect as AuditEffect, NewRecord, Outcome};
use crate::chain::{AuthFailurePolicy, ChainError, ChainMeta, HandoffRequest, RunDriver};
use crate::future::BoxFuture;
use crate::journal::{EntryKind, JournalEntry, Lease, RunRecord, RunState};
use crate::step::{ErasedStepCall, RecordRef, StepEnv, StepError, StepMeta};

/// Why the run cannot go on by itself.
struct Halt {
    reason: String,
    step_id: Option<String>,
    records: Vec<RecordRef>,
}

/// The last step failure, to decide between suspend and compensate.
pub(super) struct Failure {
    pub(super) step_id: String,
    pub(super) node: u32,
    pub(super) connector: String,
    pub(super) error: StepError,
}

/// What the driver tracks while the body runs.
pub(super) struct State {
    pub(super) replay: ReplayCursor,
    pub(super) node: u32,
    halt: Option<Halt>,
    failure: Option<Failure>,
    /// A step call waits for a person's approval: the run stops there.
    pub(super) awaiting: Option<crate::approval::PendingApproval>,
    /// Deferred units queued and not answered yet, in order (see `pending`).
    pub(super) sent: Vec<Sent>,
    /// Deferred units not queued yet, merged into one (see `pending`).
    pub(super) held: Option<Held>,
}

impl State {
    /// Whether the run is halted for an operator.
    pub(super) fn is_halted(&self) -> bool {
        self.halt.is_some()
    }
}

pub(crate) struct Driver {
    pub(super) engine: Engine,
    pub(super) meta: &'static ChainMeta,
    pub(super) run: Arc<RunRecord>,
    pub(super) lease: Lease,
    state: Mutex<State>,
    /// The journal queues units in call order and carries the audit records: deferred units
    /// are not waited for (see `pending`).
    pub(super) pipelined: bool,
}

fn runtime(e: impl std::fmt::Display) -> StepError {
    StepError::Runtime(e.to_string())
}

impl Driver {
    /// A driver of `run` under `lease`. `created_with`: the run is not stored yet; it is
    /// created with its first unit, which starts with this `run_started` record (see
    /// [`first_unit_lease`]).
    pub(crate) fn new(
        engine: Engine,
        meta: &'static ChainMeta,
        run: RunRecord,
        lease: Lease,
        journal: Vec<JournalEntry>,
        retry: Option<String>,
        created_with: Option<NewRecord>,
    ) -> Self {
        let store = &engine.inner.store;
        let pipelined = store.ordered_commits()
            && store.database().is_some()
            && store.database() == engine.inner.audit.database();
        let held = created_with.map(Held::creation);
        Self {
            engine,
            meta,
            state: Mutex::new(State {
                replay: ReplayCursor::new(journal, retry),
                node: run.node,
                halt: None,
                failure: None,
                awaiting: None,
                sent: Vec::new(),
                held,
            }),
            run: Arc::new(run),
            lease,
            pipelined,
        }
    }

    pub(super) fn state(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Asks the cursor about the next call named `id_prefix`.
    fn next(&self, id_prefix: String, call: Call) -> Next {
        self.state().replay.next(&id_prefix, call)
    }

    /// Stops the run for an operator; returns the error the body sees.
    pub(super) fn halt(
        &self,
        reason: String,
        step_id: Option<String>,
        records: Vec<RecordRef>,
    ) -> StepError {
        let mut s = self.state();
        s.replay.halt();
        if s.halt.is_none() {
            s.halt = Some(Halt {
                reason: reason.clone(),
                step_id,
                records,
            });
        }
        StepError::Runtime(reason)
    }

    /// Carries out a halt the cursor decided; `connector` names a step's provider.
    pub(super) fn halted(&self, next: &Next, cause: HaltCause, connector: &str) -> StepError {
        let (seq, step_id) = (next.seq, next.step_id.clone());
        match cause {
            HaltCause::AlreadyHalted => {
                let reason = self
                    .state()
                    .halt
                    .as_ref()
                    .map_or_else(|| "a step waits for approval".to_owned(), |h| h.reason.clone());
                StepError::Runtime(format!("the run is halted: {reason}"))
            }
            HaltCause::Diverged { journaled } => self.halt(
                format!(
                    "the chain body diverged from its journal at position {seq}: the journal has `{journaled}` there, but the body now calls `{step_id}`; \
                     something the body depends on was not journaled with `ctx.record` (or the code changed); nothing was re-executed"
                ),
                Some(journaled),
                Vec::new(),
            ),
            HaltCause::UnknownOutcome => {
                let key = idempotency_key(&self.run.run_id, &step_id);
                self.halt(
                    format!(
                        "unknown outcome of write step `{step_id}`: its intent is journaled but no result (the process stopped during the call, or the provider did not answer); \
                         the step is not marked `idempotent` (its provider deduplicating by Idempotency-Key) and no `reconcile` hook settled it, so it is not redone blindly. Check `{connector}` for a write with idempotency key {key}, then settle the run"
                    ),
                    Some(step_id),
                    Vec::new(),
                )
            }
        }
    }

    pub(super) fn store_failed(&self, what: &str, e: impl std::fmt::Display) -> StepError {
        self.halt(
            format!("the run journal failed while {what}: {e}"),
            None,
            Vec::new(),
        )
    }

    /// `record` with the run, connector, and the connected account in use right now (account,
    /// upstream subject, grant and scopes at call time).
    pub(super) async fn account_record(&self, record: NewRecord, connector: &str) -> NewRecord {
        self.engine.with_account(record, &self.run, connector).await
    }

    async fn run_step(
        &self,
        site: u32,
        meta: &'static StepMeta,
        call: ErasedStepCall,
    ) -> Result<Value, StepError> {
        use crate::journal::Durability::{Deferred, Sync};

        let node = crate::graph::FAIL + 1 + site;
        let next = self.next(
            format!("{}/{}", self.meta.name, meta.name),
            Call::Step {
                write: meta.effect.is_write(),
                reconcile: meta.reconcile.is_some(),
                idempotent: meta.idempotent,
            },
        );
        let (attempt, mode) = match next.decision.clone() {
            Decision::Replay(Ok(output)) => {
                self.state().node = node;
                return Ok(output);
            }
            Decision::Replay(Err(error)) => {
                self.note_failure(&next.step_id, node, meta.connector, &error);
                return Err(error);
            }
            Decision::Halt(cause) => return Err(self.halted(&next, cause, meta.connector)),
            Decision::Execute { attempt, mode } => (attempt, mode),
        };
        let step_id = next.step_id.clone();
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
        // The intent and its attempt record: one transaction, on disk before the call of a
        // write. A read's intent is deferred (and not waited for, see `pending`): the call
        // changes nothing, so losing the intent to a power failure loses nothing but the
        // attempt's count; whatever the run does with the answer outside the run goes through
        // a later synchronous intent, whose fsync covers it.
        let intent = replay::entry(&next, EntryKind::Step, meta.name.to_owned(), attempt, None);
        let durability = if meta.effect.is_write() {
            Sync
        } else {
            Deferred
        };
        let queued = self.queue(
            intent.clone(),
            node,
            vec![attempt_record],
            durability,
            "journaling an intent",
        );
        // Asked for once the intent is queued: the vault reads the account for the first
        // request behind the intent (right after it, on this thread, when the database's
        // writer was idle and the intent committed at once; else in the writer's queue).
        let access = self
            .engine
            .inner
            .credentials
            .connector_access(&self.run.principal_id, meta.connector);
        self.journaled(queued).await?;
        self.state().node = node;

        let mut env = StepEnv::new(
            self.run.run_id.clone(),
            step_id.clone(),
            key.clone(),
            meta.connector,
            self.run.principal.clone(),
        );
        if meta.effect.is_write() && !meta.idempotent {
            env = env.without_resend();
        }
        if let Some(access) = access {
            let audit = self.engine.shared_attempt_audit(
                Arc::clone(&self.run),
                &step_id,
                meta.name,
                meta.connector,
            );
            env = env.with_access(access.observed(audit));
        }
        // Nothing of the run waits in memory while its step calls out.
        self.flush_held();
        let touched = env.touched_handle();
        let result = call(env, mode).await;
        if matches!(result, Err(StepError::OutcomeUnknown { .. })) {
            // The write got no answer and may have been committed: the intent stays without a
            // result, as after a crash during the call, and the run is blocked for an
            // operator with the idempotency key to look for; never resent blindly.
            return Err(self.halted(&next, HaltCause::UnknownOutcome, meta.connector));
        }
        let touched = touched.records();
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
        outcome_record.records = touched.clone();
        // The result and its outcome record: one transaction. Deferred durability: safe from
        // a process crash at once, on disk with the next synchronous commit (the next intent
        // or the run's end); lost only to a power failure, which then reads as a crash during
        // the call (intent without result).
        let done = JournalEntry {
            result: Some(replay::entry_result(&result, touched)),
            ..intent
        };
        self.journal(
            done,
            node,
            vec![outcome_record],
            Deferred,
            "journaling a result",
        )
        .await?;
        if let Err(error) = &result {
            self.note_failure(&step_id, node, meta.connector, error);
        }
        result
    }

    pub(super) fn note_failure(
        &self,
        step_id: &str,
        node: u32,
        connector: &str,
        error: &StepError,
    ) {
        self.state().failure = Some(Failure {
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
        let next = self.next(format!("{}/record:{label}", self.meta.name), Call::Record);
        let attempt = match next.decision.clone() {
            Decision::Replay(result) => return result,
            Decision::Halt(cause) => return Err(self.halted(&next, cause, "")),
            Decision::Execute { attempt, .. } => attempt,
        };
        self.flush_held();
        let result = produce.await;
        let entry = replay::entry(
            &next,
            EntryKind::Record,
            label.to_owned(),
            attempt,
            Some(replay::entry_result(&result, Vec::new())),
        );
        let node = self.state().node;
        // Deferred: whatever depends on the value outside the run goes through a later
        // synchronous intent.
        self.journal(
            entry,
            node,
            Vec::new(),
            crate::journal::Durability::Deferred,
            "journaling a recorded value",
        )
        .await?;
        result
    }

    async fn run_handoff(&self, request: HandoffRequest) -> Result<Value, StepError> {
        use crate::journal::Durability::{Deferred, Sync};

        let next = self.next(
            format!("{}/handoff:{}", self.meta.name, request.chain.name),
            Call::Handoff,
        );
        let attempt = match next.decision.clone() {
            Decision::Replay(result) => return result,
            Decision::Halt(cause) => return Err(self.halted(&next, cause, "")),
            Decision::Execute { attempt, .. } => attempt,
        };
        let step_id = next.step_id.clone();
        // The child run id is derived from the step id: continuing finds the same child.
        let child_run_id = format!(
            "{}.{}",
            self.run.run_id,
            &idempotency_key(&self.run.run_id, &step_id)[..12]
        );
        let node = self.state().node;
        let intent = replay::entry(
            &next,
            EntryKind::Handoff,
            request.chain.path(),
            attempt,
            None,
        );
        let handoff = NewRecord::new(
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
        .step(&step_id);
        self.journal(
            intent.clone(),
            node,
            vec![handoff],
            Sync,
            "journaling a handoff",
        )
        .await?;
        self.flush_held();
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
            result: Some(replay::entry_result(&result, Vec::new())),
            ..intent
        };
        self.journal(
            done,
            node,
            Vec::new(),
            Deferred,
            "journaling a handoff result",
        )
        .await?;
        result
    }

    /// Decides the run's end after the body returned, and stores it.
    pub(crate) async fn finish(
        &self,
        body: Result<Value, ChainError>,
    ) -> Result<RunState, EngineError> {
        // The units held for the run ride with its end when it completes (see `pending`).
        let held = self.held_for_the_end(body.is_ok()).await;
        let (halt, failure, awaiting) = {
            let mut s = self.state();
            (s.halt.take(), s.failure.take(), s.awaiting.take())
        };
        let state = if let Some(halt) = halt {
            self.engine
                .alert(alert(
                    &self.run,
                    halt.step_id,
                    halt.records,
                    format!("run `{}` is blocked: {}", self.run.run_id, halt.reason),
                ))
                .await;
            RunState::Blocked {
                reason: halt.reason,
            }
        } else if let Some(request) = awaiting {
            RunState::AwaitingApproval(Box::new(request))
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
        super::outcome::conclude_with(&self.engine, &self.run, &self.lease, state, held).await
    }

    /// An invalid client is never the user's to fix (no consent request): the operator is
    /// alerted, whatever the chain's policy, and the run then compensates.
    async fn alert_invalid_client(&self, f: &Failure) {
        self.engine
            .alert(alert(
                &self.run,
                Some(f.step_id.clone()),
                Vec::new(),
                format!(
                    "`{}` rejected this application's OAuth client credentials (invalid client) at step `{}`: fix the client id and secret registered for the `{}` connector; a new user consent cannot fix this",
                    f.connector, f.step_id, f.connector
                ),
            ))
            .await;
    }
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

    fn approval<'a>(
        &'a self,
        site: u32,
        meta: &'static StepMeta,
        arguments: Vec<Value>,
    ) -> BoxFuture<'a, Result<(), StepError>> {
        Box::pin(self.run_approval(site, meta, arguments))
    }

    fn handoff<'a>(&'a self, request: HandoffRequest) -> BoxFuture<'a, Result<Value, StepError>> {
        Box::pin(self.run_handoff(request))
    }
}
