//! Runs submitted for workers, and the worker loop that drives them.
//!
//! [`Engine::submit`] runs preflight and stores a new run **runnable**: nobody holds it, and
//! any worker process on the same journal may claim it; [`Engine::resume_later`] does the same
//! for a suspended run after re-consent. [`Engine::work`] is the worker: it
//! claims runnable runs (new ones, and runs whose previous driver died or stalled past its
//! lease) up to a concurrency limit, drives each on its own task, renews their leases, and
//! stops claiming when its shutdown future resolves (the runs it drives are finished first).
//!
//! # Leases and fencing
//! Each claim carries a fencing token ([`Lease`]). The worker renews its leases every
//! [`WorkerOptions::renew_every`]; a renewal that reports a lease no longer current (another
//! worker claimed the run after this one stalled past the lease's TTL) stops that run's task at
//! once, and the journal refuses any write the task might still attempt
//! ([`JournalError::LeaseLost`](crate::journal::JournalError::LeaseLost)); the run is then
//! reported [`WorkerEvent::Lost`], never retried by this worker.
//!
//! # Recovery
//! A run whose previous lease was never released ([`Claim::recovered`]) may have stopped
//! anywhere: it gets a `resumed` audit record and is driven from its journal like any recovery
//! ([`Engine::recover`]): journaled results replay; a step with an intent and no result runs
//! its `reconcile` hook, is resent with its idempotency key when `idempotent`, and otherwise
//! blocks the run for an operator. Never a blind redo.
//!
//! # Resumed runs
//! A run handed back by [`Engine::resume_later`] is running, and its journal's last step ended
//! in the authorization failure it suspended at. Whoever claims it, fresh or as a recovery
//! (the worker that first took it died before retrying; then the refusal must be the
//! journal's last entry), retries that step instead of replaying the failure: the hand-back
//! survives any worker.
//!
//! # Wake-ups
//! An idle worker waits on the journal's [`Wakeups`](crate::journal::Wakeups) (signalled when
//! a run is submitted or a lease released), and polls at least every
//! [`WorkerOptions::poll_every`] for what a signal cannot tell it (another process's submit
//! on SQLite, a lease that expired).

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Instant;

use super::{Engine, EngineError, compensate, encode, ids::new_id, outcome, runner, version};
use crate::audit::{AuditEvent, NewRecord, Outcome};
use crate::chain::{AuthFailurePolicy, ChainMeta};
use crate::context::Chain;
use crate::journal::{Claim, Drivable, EntryKind, EntryResult, JournalError, Lease, RunState};
use crate::principal::Principal as _;

/// A callback told about each [`WorkerEvent`].
pub type EventHook = Arc<dyn Fn(&WorkerEvent) + Send + Sync>;

/// How a worker runs; see [`Engine::work`].
#[derive(Clone)]
pub struct WorkerOptions {
    /// How many runs it drives at once (at least 1; 16 by default). The journal commits the
    /// writes of all runs waiting at the moment together, so more runs in flight mean larger,
    /// cheaper batches (see the README's *Scaling out*).
    pub concurrency: usize,
    /// The longest an idle worker waits before looking for runnable runs again.
    pub poll_every: Duration,
    /// How often it renews the leases of the runs it drives. Keep it well under the journal's
    /// lease TTL (a third or less).
    pub renew_every: Duration,
    /// Told about every claim and every end of a run (for logs, metrics and tests).
    pub on_event: Option<EventHook>,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        Self {
            concurrency: 16,
            poll_every: Duration::from_secs(1),
            renew_every: Duration::from_secs(5),
            on_event: None,
        }
    }
}

impl std::fmt::Debug for WorkerOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerOptions")
            .field("concurrency", &self.concurrency)
            .field("poll_every", &self.poll_every)
            .field("renew_every", &self.renew_every)
            .field("on_event", &self.on_event.is_some())
            .finish()
    }
}

/// What a worker did with one run.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum WorkerEvent {
    /// It claimed the run.
    Claimed {
        /// The run.
        run_id: String,
        /// The fencing token of its lease.
        token: u64,
        /// Whether the previous driver left without releasing it (see [`Claim::recovered`]).
        recovered: bool,
    },
    /// It stopped driving the run: the run reached `state` (`completed`, `suspended`, …).
    Finished {
        /// The run.
        run_id: String,
        /// The state's kind.
        state: String,
    },
    /// Another worker owns the run now (this worker's lease was superseded); it stopped
    /// driving it and will not write for it again.
    Lost {
        /// The run.
        run_id: String,
    },
    /// Driving the run failed (the journal, the audit trail, the chain's version, …); the
    /// lease was released, the run stays as stored.
    Failed {
        /// The run.
        run_id: String,
        /// Why.
        error: String,
    },
}

/// What a worker did, when [`Engine::work`] returns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkerReport {
    /// Runs claimed.
    pub claimed: usize,
    /// Runs driven to a state the engine does not leave by itself.
    pub finished: usize,
    /// Runs whose lease another worker took over.
    pub lost: usize,
    /// Runs whose driving failed.
    pub failed: usize,
}

/// A driven run's id and how its driving ended.
type Driven = (String, Result<RunState, EngineError>);

/// The runs a worker is driving.
struct Active {
    tasks: JoinSet<Driven>,
    leases: HashMap<String, (Lease, AbortHandle)>,
    by_task: HashMap<tokio::task::Id, String>,
}

impl Engine {
    /// Runs preflight for a new run of `C` and stores it runnable, for a worker
    /// ([`Engine::work`], in this or any process on the same journal) to claim and drive;
    /// returns its run id. Nothing is driven here. When consents are missing nothing is
    /// written and [`EngineError::PreflightNotReady`] lists them. The input is given as to
    /// [`Engine::start`]: the tuple of the chain's parameters, or the bare value for one.
    pub async fn submit<C: Chain>(
        &self,
        principal: C::Principal,
        input: impl crate::IntoInput<C::Input>,
    ) -> Result<String, EngineError> {
        let input: C::Input = input.into_input();
        let meta: &'static ChainMeta = &C::META;
        self.register_meta(meta);
        let principal_json = encode(&principal, "principal")?;
        let input_json = encode(&input, "input")?;
        self.submit_erased(meta, principal_json, principal.identifier(), input_json)
            .await
    }

    async fn submit_erased(
        &self,
        meta: &'static ChainMeta,
        principal: Value,
        principal_id: String,
        input: Value,
    ) -> Result<String, EngineError> {
        let run_id = new_id("run_");
        let (run, started) = self
            .prepare_run(meta, run_id.clone(), principal, principal_id, input, None)
            .await?;
        let journal = &self.inner.store;
        let shared =
            journal.database().is_some() && journal.database() == self.inner.audit.database();
        if shared {
            journal.submit_run(run, vec![started]).await?;
        } else {
            journal.submit_run(run, Vec::new()).await?;
            self.inner.audit.append(started).await?;
        }
        Ok(run_id)
    }

    /// Resumes a suspended run after re-consent **for the workers**: the checks of
    /// [`Engine::resume`] (preflight, the same upstream subjects, the chain version) run here
    /// and the run is set running, then its lease is released, which wakes the workers; one of
    /// them claims it and retries the step it was suspended at (journaled steps replay). The
    /// hand-back is durable: the run's journal says which step to retry, so if the worker that
    /// claimed it dies before the retry, the worker that recovers the run retries it too (see
    /// the module docs). Any refusal changes nothing, like [`Engine::resume`].
    pub async fn resume_later(&self, run_id: &str) -> Result<(), EngineError> {
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
        let resumed = self.resume_claimed(run_id, &lease).await;
        let released = self.inner.store.release_run(&lease).await;
        resumed?;
        Ok(released?)
    }

    /// The chain builds this engine can drive: every chain registered with it or linked into
    /// the binary's registry, at this build's version.
    pub fn drivable(&self) -> Vec<Drivable> {
        let registered: Vec<&'static ChainMeta> = self
            .inner
            .chains
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .copied()
            .collect();
        let all: BTreeSet<(String, String)> = registered
            .into_iter()
            .chain(crate::registry::chains())
            .map(|meta| (meta.path(), version::chain_version(meta).0))
            .collect();
        all.into_iter()
            .map(|(chain, version)| Drivable { chain, version })
            .collect()
    }

    /// The worker loop: claims runnable runs up to `options.concurrency`, drives each on its
    /// own task, renews their leases, and waits for wake-ups when there is nothing to claim.
    /// When `shutdown` resolves it claims nothing more, finishes the runs it drives, and
    /// returns what it did. Errors of the journal while claiming or renewing are logged and
    /// retried after a poll interval; they do not end the loop.
    pub async fn work(
        &self,
        options: WorkerOptions,
        shutdown: impl Future<Output = ()> + Send,
    ) -> WorkerReport {
        let drivable = self.drivable();
        let store = Arc::clone(&self.inner.store);
        let mut wake = store.wakeups().map(|w| w.subscribe());
        let concurrency = options.concurrency.max(1);
        let mut active = Active {
            tasks: JoinSet::new(),
            leases: HashMap::new(),
            by_task: HashMap::new(),
        };
        let mut report = WorkerReport::default();
        let mut renew_at = Instant::now() + options.renew_every;
        let mut stopping = false;
        tokio::pin!(shutdown);
        loop {
            let mut claim_failed = false;
            while !stopping && active.leases.len() < concurrency {
                let free = concurrency - active.leases.len();
                match store
                    .claim_runnable(&self.inner.owner, &drivable, free)
                    .await
                {
                    Ok(claims) => {
                        let full = claims.len() == free;
                        for claim in claims {
                            report.claimed += 1;
                            self.spawn_claim(&mut active, claim, &options);
                        }
                        if !full {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "worker: could not claim runnable runs");
                        claim_failed = true;
                        break;
                    }
                }
            }
            if stopping && active.leases.is_empty() {
                break;
            }
            let idle = !stopping && active.leases.len() < concurrency;
            let poll = options.poll_every;
            tokio::select! {
                () = &mut shutdown, if !stopping => stopping = true,
                Some(joined) = active.tasks.join_next_with_id(), if !active.tasks.is_empty() => {
                    self.joined(&mut active, joined, &mut report, &options);
                }
                () = async {
                    match (&mut wake, claim_failed) {
                        (Some(wake), false) => {
                            wake.wait(poll).await;
                        }
                        _ => tokio::time::sleep(poll).await,
                    }
                }, if idle => {}
                () = tokio::time::sleep_until(renew_at) => {
                    self.renew(&mut active, &mut report, &options).await;
                    renew_at = Instant::now() + options.renew_every;
                }
            }
        }
        report
    }

    fn spawn_claim(&self, active: &mut Active, claim: Claim, options: &WorkerOptions) {
        emit(
            options,
            WorkerEvent::Claimed {
                run_id: claim.run.run_id.clone(),
                token: claim.lease.token,
                recovered: claim.recovered,
            },
        );
        let run_id = claim.run.run_id.clone();
        let lease = claim.lease.clone();
        let engine = self.clone();
        let handle = active.tasks.spawn(async move {
            let run_id = claim.run.run_id.clone();
            (run_id, engine.drive_claim(claim).await)
        });
        active.by_task.insert(handle.id(), run_id.clone());
        active.leases.insert(run_id, (lease, handle));
    }

    /// Drives one claimed run: a recovery when the previous lease was not released.
    async fn drive_claim(&self, claim: Claim) -> Result<RunState, EngineError> {
        let Claim {
            run,
            lease,
            recovered,
        } = claim;
        let meta = match self.chain(&run.chain) {
            Ok(meta) => meta,
            Err(e) => {
                let _ = self.inner.store.release_run(&lease).await;
                return Err(e);
            }
        };
        if recovered {
            if let Err(e) = version::check_version(&run, meta) {
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
                            reason: format!(
                                "taken over by worker `{}`: the previous driver's lease was not released (it died or stalled)",
                                self.inner.owner
                            ),
                        },
                    )
                    .run(&run.run_id),
                )
                .await;
            if let Err(e) = resumed {
                let _ = self.inner.store.release_run(&lease).await;
                return Err(e.into());
            }
        }
        if run.state == RunState::Compensating {
            return compensate::finish_compensation(self, meta, &run, lease).await;
        }
        let retry = match self.refused_step(&run.run_id, meta, recovered).await {
            Ok(retry) => retry,
            Err(e) => {
                let _ = self.inner.store.release_run(&lease).await;
                return Err(e);
            }
        };
        runner::drive(self.clone(), meta, run, lease, retry).await
    }

    /// The step a running run must retry instead of replaying its journaled failure: the
    /// journal's last step ended in an authorization failure that suspends the run (a revoked
    /// grant, missing scopes, a step-up), and the chain suspends on those. That is the journal
    /// of a run [`Engine::resume_later`] handed back after re-consent (the run suspended at
    /// that step, then was set running again), whoever claims it: the worker it woke up, or,
    /// as a recovery (`recovered`; also [`Engine::recover`]), any worker after that one died
    /// or stalled before the retry was journaled. The journal alone makes the hand-back
    /// durable; nothing else has to survive the worker.
    ///
    /// The same journal is left by a driver that died between storing such a failure and the
    /// suspended state; retrying is safe there too: the provider refused the call (nothing was
    /// written, so this is no blind redo), and a refusal that persists suspends the run again,
    /// as replaying it would have. So that a body which caught the refusal and went on is
    /// never sent down another path than its journal's, a recovery retries only when the
    /// refusal is the journal's very last entry.
    pub(super) async fn refused_step(
        &self,
        run_id: &str,
        meta: &ChainMeta,
        recovered: bool,
    ) -> Result<Option<String>, EngineError> {
        if meta.on_auth_failure != AuthFailurePolicy::Suspend {
            return Ok(None);
        }
        let journal = self.inner.store.journal(run_id).await?;
        let last = journal.iter().max_by_key(|e| e.seq);
        let last_step = journal
            .iter()
            .filter(|e| e.kind == EntryKind::Step)
            .max_by_key(|e| e.seq);
        if recovered && last_step != last {
            return Ok(None);
        }
        Ok(
            match last_step.and_then(|e| e.result.as_ref().map(|r| (e, r))) {
                Some((entry, EntryResult::Err { error })) if outcome::suspends(error) => {
                    Some(entry.step_id.clone())
                }
                _ => None,
            },
        )
    }

    fn joined(
        &self,
        active: &mut Active,
        joined: Result<(tokio::task::Id, Driven), tokio::task::JoinError>,
        report: &mut WorkerReport,
        options: &WorkerOptions,
    ) {
        let (run_id, result) = match joined {
            Ok((id, (run_id, result))) => {
                active.by_task.remove(&id);
                (run_id, result)
            }
            Err(e) => {
                let Some(run_id) = active.by_task.remove(&e.id()) else {
                    return;
                };
                if e.is_cancelled() {
                    // Aborted after its lease was lost: already reported.
                    return;
                }
                let error = format!("the task driving the run failed: {e}");
                (run_id, Err(EngineError::Task(error)))
            }
        };
        if active.leases.remove(&run_id).is_none() {
            return;
        }
        match result {
            Ok(state) => {
                report.finished += 1;
                emit(
                    options,
                    WorkerEvent::Finished {
                        run_id,
                        state: state.kind().to_owned(),
                    },
                );
            }
            Err(EngineError::Store(JournalError::LeaseLost(_))) => {
                report.lost += 1;
                emit(options, WorkerEvent::Lost { run_id });
            }
            Err(error) => {
                let error = error.to_string();
                tracing::warn!(run_id = %run_id, error = %error, "worker: driving a run failed");
                report.failed += 1;
                emit(options, WorkerEvent::Failed { run_id, error });
            }
        }
    }

    /// Renews the leases of every run being driven; stops the runs whose lease is lost.
    async fn renew(&self, active: &mut Active, report: &mut WorkerReport, options: &WorkerOptions) {
        if active.leases.is_empty() {
            return;
        }
        let leases: Vec<Lease> = active.leases.values().map(|(l, _)| l.clone()).collect();
        match self.inner.store.renew_leases(&leases).await {
            Ok(current) => {
                for (lease, current) in leases.iter().zip(current) {
                    if current {
                        continue;
                    }
                    if let Some((_, handle)) = active.leases.remove(&lease.run_id) {
                        handle.abort();
                        report.lost += 1;
                        emit(
                            options,
                            WorkerEvent::Lost {
                                run_id: lease.run_id.clone(),
                            },
                        );
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "worker: could not renew run leases"),
        }
    }
}

fn emit(options: &WorkerOptions, event: WorkerEvent) {
    if let Some(f) = &options.on_event {
        f(&event);
    }
}
