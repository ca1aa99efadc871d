//! The durable execution engine: runs a `#[chain]` as a persisted state machine.
//!
//! # What a run is
//! [`Engine::start`] runs preflight through the [`AccountDirectory`] port (not ready: nothing is
//! written, the consents to ask for are returned), records the run (chain path and version,
//! principal, input, the upstream subject of each connector's account) and drives the body.
//! Every step call is journaled: an intent before the side effect, then the result (output
//! JSON and the records it touched) or the failure. Step ids are `{chain}/{step}#{n}` (the
//! n-th call of that step in the run, from 1); the idempotency key is a BLAKE3 hash of
//! (run id, step id), the same on every retry and resume. [`ChainCtx::record`] values and
//! handoffs are journaled the same way.
//!
//! # Replay
//! The body runs through the chain's erased entry point ([`ChainMeta::run`]), so any chain in
//! the binary's [registry](crate::registry) can be resumed or recovered by the path stored in
//! its run record. A resumed or recovered run drives the body again from the start: each journaled result is
//! returned without running the step; a journal entry naming another step at that position is
//! a divergence (the run is Blocked, never silently re-executed); an intent without a result
//! is an unknown outcome: a read runs again; a write runs its `reconcile` hook first, is resent
//! with the same idempotency key when the step is `idempotent`, and otherwise blocks the run for
//! an operator. Steps inside one chain body must be awaited one at a time (no
//! `join!` of two steps): positions in the journal are the order of calls.
//!
//! # Failures
//! Grant revoked, insufficient scope and step-up required suspend the run under the
//! `suspend` policy; everything else (and those, under `compensate`) runs the compensators of
//! completed writes in reverse order (see [`compensate`](self)), each journaled. A compensator
//! failure or a completed irreversible write leaves the run Blocked with an operator alert:
//! a stored alert row, an audit record and the [`Notifier`].
//!
//! [`ChainCtx::record`]: crate::ChainCtx::record

mod approval;
mod attempts;
mod compensate;
mod driver;
mod error;
mod gate;
mod ids;
mod notify;
mod outcome;
mod pending;
mod prepare;
mod replay;
mod report;
mod runner;
mod suspend;
mod version;
mod waiting;
mod worker;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, RwLock};

use serde::Serialize;
use serde_json::Value;

pub use approval::ApprovalError;
pub use error::EngineError;
pub use ids::idempotency_key;
pub use notify::{Notifier, NotifyError, TracingNotifier, WebhookNotifier};
pub use report::RunReport;
pub use version::chain_version;
pub use worker::{EventHook, WorkerEvent, WorkerOptions, WorkerReport};

pub use crate::accounts::{AccountDirectory, AccountLookupError, AccountSummary};

use crate::audit::AuditStore;
use crate::audit::{AlertSeverity, AuditEvent, NewRecord, Outcome};
use crate::chain::{ChainMeta, HandoffRequest};
use crate::context::Chain;
use crate::journal::{Alert, JournalError, Lease, RunJournal, RunRecord, RunState};
use crate::manifest::ScopeManifest;
use crate::preflight::preflight_manifest;
use crate::principal::Principal as _;
use crate::step::RecordRef;
use error::describe_consents;
use ids::new_id;
use report::{erased_report, typed_report};
use version::check_version;

pub(crate) struct EngineInner {
    pub(crate) store: Arc<dyn RunJournal>,
    pub(crate) audit: Arc<dyn AuditStore>,
    pub(crate) credentials: Arc<dyn AccountDirectory>,
    pub(crate) notifier: Arc<dyn Notifier>,
    chains: RwLock<HashMap<String, &'static ChainMeta>>,
    pub(crate) owner: String,
    pub(crate) approvals: RwLock<crate::approval::ApprovalPolicy>,
    /// HTTP attempt records waiting for their run's next commit.
    pub(crate) attempts: attempts::HeldAttempts,
}

/// The durable execution engine. Cheap to clone (an `Arc` inside); many runs at once.
#[derive(Clone)]
pub struct Engine {
    pub(crate) inner: Arc<EngineInner>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("owner", &self.inner.owner)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// `record` with the run, the connector, and the connected account in use right now
    /// (account, upstream subject, grant and scopes at call time); the subject recorded at the
    /// run's start when the credentials know no account.
    pub(crate) async fn with_account(
        &self,
        record: NewRecord,
        run: &RunRecord,
        connector: &str,
    ) -> NewRecord {
        let mut record = record.run(&run.run_id).connector(connector);
        record.upstream_subject = run.subjects.get(connector).cloned().flatten();
        if let Ok(Some(account)) = self
            .inner
            .credentials
            .account(&run.principal_id, connector)
            .await
        {
            record = record
                .account(
                    connector,
                    account.account_id,
                    account.upstream_subject,
                    account.grant_id,
                )
                .scopes(account.scopes);
        }
        record
    }

    /// An engine on `store` and `audit`, asking `credentials` for grants and subjects, with
    /// the [`TracingNotifier`] for operator alerts (alert rows are always stored).
    pub fn new(
        store: Arc<dyn RunJournal>,
        audit: Arc<dyn AuditStore>,
        credentials: Arc<dyn AccountDirectory>,
    ) -> Self {
        Self::with_notifier(store, audit, credentials, Arc::new(TracingNotifier))
    }

    /// Like [`Engine::new`] with another notifier (for example a [`WebhookNotifier`]).
    pub fn with_notifier(
        store: Arc<dyn RunJournal>,
        audit: Arc<dyn AuditStore>,
        credentials: Arc<dyn AccountDirectory>,
        notifier: Arc<dyn Notifier>,
    ) -> Self {
        Self {
            inner: Arc::new(EngineInner {
                store,
                audit,
                credentials,
                notifier,
                chains: RwLock::default(),
                owner: new_id("engine-"),
                approvals: RwLock::default(),
                attempts: attempts::HeldAttempts::default(),
            }),
        }
    }

    /// Registers chain `C` with this engine. Every `#[chain]` linked into the binary is found
    /// through the [registry](crate::registry) anyway; registering matters only for a chain
    /// the registry cannot see. Idempotent.
    pub fn register<C: Chain>(&self) {
        self.register_meta(&C::META);
    }

    fn register_meta(&self, meta: &'static ChainMeta) {
        // Every start registers its chain: the common case, a chain already known, takes
        // neither the write lock nor a copy of the path.
        let path = &prepare::facts_of(meta).path;
        let known = self
            .inner
            .chains
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains_key(path);
        if !known {
            self.inner
                .chains
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .entry(path.clone())
                .or_insert(meta);
        }
    }

    /// The chain at `path`: registered with this engine, or in the binary's registry.
    fn chain(&self, path: &str) -> Result<&'static ChainMeta, EngineError> {
        let registered = self
            .inner
            .chains
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(path)
            .copied();
        registered
            .or_else(|| {
                crate::registry::chains()
                    .into_iter()
                    .find(|c| c.path() == path)
            })
            .ok_or_else(|| EngineError::NotRegistered {
                chain: path.to_owned(),
            })
    }

    /// The run store.
    pub fn store(&self) -> &Arc<dyn RunJournal> {
        &self.inner.store
    }

    /// Starts a run of `C` for `principal` and drives it until it completes, suspends, is
    /// compensated, blocks or fails. `input` is the chain's parameters as written in its
    /// signature: the value itself for a chain with one parameter, else their tuple (see
    /// [`IntoInput`](crate::IntoInput)). Preflight runs first: when consents are missing
    /// nothing but the refusal's audit records is written and
    /// [`EngineError::PreflightNotReady`] lists them.
    pub async fn start<C: Chain>(
        &self,
        principal: C::Principal,
        input: impl crate::IntoInput<C::Input>,
    ) -> Result<RunReport<C::Output>, EngineError> {
        let input: C::Input = input.into_input();
        let meta: &'static ChainMeta = &C::META;
        self.register_meta(meta);
        let principal_json = encode(&principal, "principal")?;
        let input_json = encode(&input, "input")?;
        let run_id = new_id("run_");
        let state = self
            .launch(
                meta,
                run_id.clone(),
                principal_json,
                principal.identifier(),
                input_json,
                None,
            )
            .await?;
        typed_report::<C>(run_id, state)
    }

    /// Preflight, record and drive a new run (or continue an existing child run).
    async fn launch(
        &self,
        meta: &'static ChainMeta,
        run_id: String,
        principal: Value,
        principal_id: String,
        input: Value,
        parent_run_id: Option<String>,
    ) -> Result<RunState, EngineError> {
        let (run, started) = self
            .prepare_run(meta, run_id, principal, principal_id, input, parent_run_id)
            .await?;
        // Where the journal can, the run is created with its first unit (one transaction).
        if let Some(lease) = driver::first_unit_lease(self, &run.run_id) {
            return runner::drive_new(self.clone(), meta, run, lease, Some(started)).await;
        }
        let lease = driver::create_run(self, run.clone(), started).await?;
        runner::drive_new(self.clone(), meta, run, lease, None).await
    }

    /// A run's stored record (state, node, principal, …).
    pub async fn run_status(&self, run_id: &str) -> Result<RunRecord, EngineError> {
        self.inner
            .store
            .get_run(run_id)
            .await?
            .ok_or_else(|| EngineError::NotFound {
                run_id: run_id.to_owned(),
            })
    }

    /// Every run in the store, oldest first.
    pub async fn list_runs(&self) -> Result<Vec<RunRecord>, EngineError> {
        Ok(self.inner.store.list_runs().await?)
    }

    /// Stored operator alerts of one run (or all).
    pub async fn alerts(&self, run_id: Option<&str>) -> Result<Vec<Alert>, EngineError> {
        Ok(self.inner.store.alerts(run_id).await?)
    }

    /// Resumes a suspended run after re-consent: re-runs preflight, verifies each
    /// connector's upstream subject is the one recorded at start, checks the chain version,
    /// then drives the body again (journaled steps are replayed, the failed step runs again).
    /// Any refusal changes nothing; a concurrent resume of the same run gets
    /// [`EngineError::Busy`] or [`EngineError::NotSuspended`].
    pub async fn resume(&self, run_id: &str) -> Result<RunReport<Value>, EngineError> {
        let lease = match self.inner.store.claim_run(run_id, &self.inner.owner).await {
            Ok(lease) => lease,
            Err(JournalError::Claimed { owner, .. }) => {
                return Err(EngineError::Busy {
                    run_id: run_id.to_owned(),
                    owner,
                });
            }
            Err(e) => return Err(e.into()),
        };
        let result = self.resume_claimed(run_id, &lease).await;
        match result {
            Ok((meta, run, retry)) => {
                let state = runner::drive(self.clone(), meta, run, lease, Some(retry)).await?;
                Ok(erased_report(run_id.to_owned(), state))
            }
            Err(e) => {
                let _ = self.inner.store.release_run(&lease).await;
                Err(e)
            }
        }
    }

    /// The checks of [`Engine::resume`] under a claimed lease; returns the run, now Running.
    async fn resume_claimed(
        &self,
        run_id: &str,
        lease: &Lease,
    ) -> Result<(&'static ChainMeta, RunRecord, String), EngineError> {
        let mut run = self.run_status(run_id).await?;
        let RunState::Suspended { step_id, .. } = &run.state else {
            return Err(EngineError::NotSuspended {
                run_id: run_id.to_owned(),
                state: run.state.kind().to_owned(),
            });
        };
        let suspended_step = step_id.clone();
        let meta = self.chain(&run.chain)?;
        check_version(&run, meta)?;
        let manifest = ScopeManifest::for_chain(meta);
        let grants = self.inner.credentials.grants(&run.principal_id).await?;
        let pf = preflight_manifest(&manifest, &run.principal_id, &grants);
        self.preflight_gate(&run.chain, &run.principal_id, Some(run_id), &pf)
            .await?;
        for (connector, recorded) in &run.subjects {
            let Some(recorded) = recorded else { continue };
            let current = self
                .inner
                .credentials
                .upstream_subject(&run.principal_id, connector)
                .await?;
            if let Some(current) = current
                && &current != recorded
            {
                return Err(EngineError::SubjectChanged {
                    run_id: run_id.to_owned(),
                    connector: connector.clone(),
                    recorded: recorded.clone(),
                    current,
                });
            }
        }
        if !self
            .inner
            .store
            .set_state(lease, Some("suspended"), RunState::Running)
            .await?
        {
            let now = self.run_status(run_id).await?;
            return Err(EngineError::NotSuspended {
                run_id: run_id.to_owned(),
                state: now.state.kind().to_owned(),
            });
        }
        self.inner
            .audit
            .append(
                NewRecord::new(
                    run.principal_id.clone(),
                    Outcome::Info,
                    AuditEvent::Resumed {
                        reason: format!("resume after re-consent, at `{suspended_step}`"),
                    },
                )
                .run(run_id),
            )
            .await?;
        run.state = RunState::Running;
        Ok((meta, run, suspended_step))
    }

    /// Continues every run left Running or Compensating by a previous process (a crash),
    /// for registered chains, concurrently. Runs this engine is driving right now are skipped
    /// (their leases are held). Returns each run's id with its outcome, sorted by run id.
    pub async fn recover(
        &self,
    ) -> Result<Vec<(String, Result<RunState, EngineError>)>, EngineError> {
        let mut tasks = tokio::task::JoinSet::new();
        for run in self.inner.store.list_runs().await? {
            if run.state.is_terminal() {
                continue;
            }
            let Ok(meta) = self.chain(&run.chain) else {
                continue;
            };
            let lease = match self
                .inner
                .store
                .claim_run(&run.run_id, &self.inner.owner)
                .await
            {
                Ok(lease) => lease,
                Err(JournalError::Claimed { .. }) => continue,
                Err(e) => return Err(e.into()),
            };
            let engine = self.clone();
            tasks.spawn(async move {
                let run_id = run.run_id.clone();
                (run_id, engine.recover_one(meta, run, lease).await)
            });
        }
        let mut out = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok(result) => out.push(result),
                Err(e) => return Err(EngineError::Task(e.to_string())),
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    async fn recover_one(
        &self,
        meta: &'static ChainMeta,
        run: RunRecord,
        lease: Lease,
    ) -> Result<RunState, EngineError> {
        if let Err(e) = check_version(&run, meta) {
            let _ = self.inner.store.release_run(&lease).await;
            return Err(e);
        }
        let resumed = self
            .inner
            .audit
            .append(
                NewRecord::new(
                    run.principal_id.clone(),
                    Outcome::Info,
                    AuditEvent::Resumed {
                        reason: "process restart".to_owned(),
                    },
                )
                .run(&run.run_id),
            )
            .await;
        if let Err(e) = resumed {
            let _ = self.inner.store.release_run(&lease).await;
            return Err(e.into());
        }
        if run.state == RunState::Compensating {
            return compensate::finish_compensation(self, meta, &run, lease).await;
        }
        let retry = match self.refused_step(&run.run_id, meta, true).await {
            Ok(retry) => retry,
            Err(e) => {
                let _ = self.inner.store.release_run(&lease).await;
                return Err(e);
            }
        };
        runner::drive(self.clone(), meta, run, lease, retry).await
    }

    /// A child run for a handoff: continues it if it exists, else starts it.
    pub(crate) async fn run_child(
        &self,
        request: &HandoffRequest,
        child_run_id: String,
        parent_run_id: &str,
    ) -> Result<RunState, EngineError> {
        let meta = request.chain;
        self.register_meta(meta);
        match self.inner.store.get_run(&child_run_id).await? {
            Some(run) if run.state == RunState::Running => {
                let lease = self
                    .inner
                    .store
                    .claim_run(&child_run_id, &self.inner.owner)
                    .await?;
                runner::drive(self.clone(), meta, run, lease, None).await
            }
            Some(run) => Ok(run.state),
            None => {
                self.launch(
                    meta,
                    child_run_id,
                    request.principal.clone(),
                    request.principal_id.clone(),
                    request.input.clone(),
                    Some(parent_run_id.to_owned()),
                )
                .await
            }
        }
    }

    /// Stores an operator alert, audits it and hands it to the notifier. Never fails: a
    /// failure to store or notify is logged at ERROR.
    pub(crate) async fn alert(&self, alert: Alert) {
        let mut record = NewRecord::new(
            alert.principal.clone(),
            Outcome::Info,
            AuditEvent::OperatorAlert {
                severity: AlertSeverity::Critical,
                message: alert.message.clone(),
            },
        )
        .run(&alert.run_id);
        if let Some(step) = &alert.step_id {
            record = record.step(step);
        }
        record.records = alert.records.clone();
        // The alert row and its audit record: one transaction.
        let unit = crate::journal::Unit::of([crate::journal::JournalWrite::Alert(alert.clone())])
            .audit(record);
        if let Err(e) = driver::commit(self, None, unit).await {
            tracing::error!(run_id = %alert.run_id, error = %e, "could not store and audit an operator alert");
        }
        if let Err(e) = self.inner.notifier.notify(&alert).await {
            tracing::error!(run_id = %alert.run_id, error = %e, "could not deliver an operator alert");
        }
    }
}

fn encode<T: Serialize>(value: &T, what: &str) -> Result<Value, EngineError> {
    serde_json::to_value(value)
        .map_err(|e| EngineError::Codec(format!("the run's {what} does not encode as JSON: {e}")))
}

/// The records a set of touched lists names, without repeats.
pub(crate) fn union_records(lists: impl IntoIterator<Item = Vec<RecordRef>>) -> Vec<RecordRef> {
    let set: BTreeSet<RecordRef> = lists.into_iter().flatten().collect();
    set.into_iter().collect()
}
