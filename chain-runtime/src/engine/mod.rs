//! The durable execution engine: runs a `#[chain]` as a persisted state machine.
//!
//! # What a run is
//! [`Engine::start`] runs preflight through the [`Credentials`] seam (not ready: nothing is
//! written, the consents to ask for are returned), records the run (chain path and version,
//! principal, input, the upstream subject of each connector's account) and drives the body.
//! Every step call is journaled: an intent before the side effect, then the result (output
//! JSON and the records it touched) or the failure. Step ids are `{chain}/{step}#{n}` (the
//! n-th call of that step in the run, from 1); the idempotency key is a BLAKE3 hash of
//! (run id, step id), the same on every retry and resume. [`ChainCtx::record`] values and
//! handoffs are journaled the same way.
//!
//! # Replay
//! A resumed or recovered run drives the body again from the start: each journaled result is
//! returned without running the step; a journal entry naming another step at that position is
//! a divergence (the run is Blocked, never silently re-executed); an intent without a result
//! is an unknown outcome: a read runs again, a write blocks the run for an operator (there is
//! no reconcile hook yet). Steps inside one chain body must be awaited one at a time (no
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

mod compensate;
mod driver;
mod notify;
mod outcome;
mod replay;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

pub use notify::{Notifier, NotifyError, TracingNotifier, WebhookNotifier};

use crate::audit::{
    AlertSeverity, AuditError, AuditEvent, AuditStore, ConnectorScopes, NewRecord, Outcome,
    PreflightSummary,
};
use crate::chain::{Chain, ChainCtx, ChainMeta};
use crate::exec::BoxFuture;
use crate::manifest::ScopeManifest;
use crate::preflight::{ConsentNeeded, Grants, Preflight, preflight_manifest};
use crate::principal::Principal;
use crate::step::{Effect, RecordRef, StepMeta};
use crate::store::{Alert, Lease, RunRecord, RunState, RunStore, StoreError};

/// Where the engine gets what it knows about a principal's connected accounts. The vault
/// implements it; [`StaticGrants`] is a tiny in-memory stand-in for tests.
pub trait Credentials: Send + Sync {
    /// The scopes `principal_id` granted, per connected connector (for preflight).
    fn grants<'a>(
        &'a self,
        principal_id: &'a str,
    ) -> BoxFuture<'a, Result<Grants, CredentialsError>>;

    /// The subject the provider knows the principal's account on `connector` as, if one is
    /// connected.
    fn upstream_subject<'a>(
        &'a self,
        principal_id: &'a str,
        connector: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, CredentialsError>>;

    /// The connected account a step on `connector` uses, for the audit trail (account, grant
    /// and scopes at call time). `None` when unknown.
    fn account<'a>(
        &'a self,
        principal_id: &'a str,
        connector: &'a str,
    ) -> BoxFuture<'a, Result<Option<AccountSummary>, CredentialsError>> {
        let _ = (principal_id, connector);
        Box::pin(async { Ok(None) })
    }

    /// The HTTP client a step on `connector` uses for `principal_id`, sending
    /// `idempotency_key`; `None` when these credentials cannot make calls.
    fn step_http(
        &self,
        principal_id: &str,
        connector: &str,
        idempotency_key: &str,
    ) -> Option<crate::connector::StepHttp> {
        let _ = (principal_id, connector, idempotency_key);
        None
    }
}

/// The audit-relevant facts of one connected account; never a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountSummary {
    /// The connected account's id.
    pub account_id: String,
    /// The provider's stable user id.
    pub upstream_subject: String,
    /// The grant (one per completed consent).
    pub grant_id: String,
    /// The scopes granted, as the provider reported them.
    pub scopes: Vec<String>,
}

/// A credentials lookup failed.
#[derive(Debug, thiserror::Error)]
#[error("credentials lookup failed: {0}")]
pub struct CredentialsError(pub String);

/// An in-memory [`Credentials`]: (principal, connector) → granted scopes and upstream subject.
/// For tests and examples until the vault is wired in.
#[derive(Debug, Default)]
pub struct StaticGrants {
    accounts: Mutex<Accounts>,
}

/// (principal, connector) → (granted scopes, upstream subject).
type Accounts = HashMap<(String, String), (BTreeSet<String>, String)>;

impl StaticGrants {
    /// No accounts.
    pub fn new() -> Self {
        Self::default()
    }

    /// Connects (or re-connects) `principal`'s account on `connector`.
    pub fn connect<I, S>(&self, principal: &str, connector: &str, scopes: I, subject: &str)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.lock().insert(
            (principal.to_owned(), connector.to_owned()),
            (
                scopes.into_iter().map(Into::into).collect(),
                subject.to_owned(),
            ),
        );
    }

    /// Removes `principal`'s account on `connector`.
    pub fn disconnect(&self, principal: &str, connector: &str) {
        self.lock()
            .remove(&(principal.to_owned(), connector.to_owned()));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Accounts> {
        self.accounts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Credentials for StaticGrants {
    fn grants<'a>(
        &'a self,
        principal_id: &'a str,
    ) -> BoxFuture<'a, Result<Grants, CredentialsError>> {
        Box::pin(async move {
            let mut grants = Grants::new();
            for ((p, connector), (scopes, _)) in self.lock().iter() {
                if p == principal_id {
                    grants.insert(connector, scopes.iter().cloned());
                }
            }
            Ok(grants)
        })
    }

    fn upstream_subject<'a>(
        &'a self,
        principal_id: &'a str,
        connector: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, CredentialsError>> {
        Box::pin(async move {
            Ok(self
                .lock()
                .get(&(principal_id.to_owned(), connector.to_owned()))
                .map(|(_, s)| s.clone()))
        })
    }
}

/// Why the engine refused or could not finish an operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// Preflight found missing consents; nothing was written.
    #[error(
        "chain `{chain}` cannot start: the principal must first consent to {}",
        describe_consents(.consents)
    )]
    PreflightNotReady {
        /// The chain.
        chain: String,
        /// The consents to ask for.
        consents: Vec<ConsentNeeded>,
    },
    /// The run's chain is not registered with this engine.
    #[error(
        "chain `{chain}` is not registered with this engine; call `engine.register::<{chain}>()` before resuming or recovering its runs"
    )]
    NotRegistered {
        /// The chain path.
        chain: String,
    },
    /// No such run.
    #[error("no run `{run_id}`")]
    NotFound {
        /// The run id.
        run_id: String,
    },
    /// Only a suspended run can be resumed.
    #[error("run `{run_id}` is {state}, not suspended: only a suspended run can be resumed")]
    NotSuspended {
        /// The run id.
        run_id: String,
        /// Its state.
        state: String,
    },
    /// Someone else is driving the run (for example a concurrent resume).
    #[error("run `{run_id}` is being driven by `{owner}` right now; nothing was changed")]
    Busy {
        /// The run id.
        run_id: String,
        /// Who drives it.
        owner: String,
    },
    /// The re-consented account belongs to another upstream identity.
    #[error(
        "run `{run_id}` refuses to resume: the `{connector}` account is now upstream subject `{current}`, but the run started as `{recorded}`; re-consent with the original account (the run stays suspended)"
    )]
    SubjectChanged {
        /// The run id.
        run_id: String,
        /// The connector.
        connector: String,
        /// The subject recorded at start.
        recorded: String,
        /// The subject now connected.
        current: String,
    },
    /// The chain's code changed incompatibly since the run started.
    #[error(
        "run `{run_id}` of `{chain}` cannot continue: the chain's steps changed since it started ({}); finish or cancel it with the old version",
        .steps.join(", ")
    )]
    ChainChanged {
        /// The run id.
        run_id: String,
        /// The chain.
        chain: String,
        /// What changed, one entry per step (`step `x` changed`, `added`, `removed`).
        steps: Vec<String>,
    },
    /// A task driving a run panicked or was cancelled.
    #[error("a task driving a run failed: {0}")]
    Task(String),
    /// A principal or input did not (de)serialize.
    #[error("{0}")]
    Codec(String),
    /// The run store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The audit trail failed.
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// The credentials seam failed.
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
}

fn describe_consents(consents: &[ConsentNeeded]) -> String {
    consents
        .iter()
        .map(|c| {
            format!(
                "{} [{}]",
                c.connector,
                c.scopes.iter().cloned().collect::<Vec<_>>().join(" ")
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// How a run ended (or where it stopped).
#[derive(Debug, Clone, PartialEq)]
pub struct RunReport<O> {
    /// The run id.
    pub run_id: String,
    /// The state the run is in now.
    pub state: RunState,
    /// The chain's output, when it completed.
    pub output: Option<O>,
}

impl RunReport<Value> {
    /// Decodes the output as `T`.
    pub fn output_as<T: DeserializeOwned>(&self) -> Option<Result<T, serde_json::Error>> {
        self.output.clone().map(serde_json::from_value)
    }
}

/// Per step name, the hash of its declaration; and the chain version (hash over them, in
/// step order). A step's declaration is its name, connector, scopes, effect and its
/// compensator's name, connector and scopes.
pub fn chain_version(meta: &ChainMeta) -> (String, BTreeMap<String, String>) {
    let mut all = blake3::Hasher::new();
    let mut steps = BTreeMap::new();
    for step in meta.steps {
        let fp = step_fingerprint(step);
        all.update(step.name.as_bytes());
        all.update(b"=");
        all.update(fp.as_bytes());
        all.update(b"\n");
        steps.insert(step.name.to_owned(), fp);
    }
    (all.finalize().to_hex().to_string(), steps)
}

fn step_fingerprint(step: &StepMeta) -> String {
    let effect = match step.effect {
        Effect::Read => serde_json::json!("read"),
        Effect::Irreversible { reason } => serde_json::json!({ "irreversible": reason }),
        Effect::Compensated { compensator } => serde_json::json!({
            "compensated": {
                "name": compensator.name,
                "connector": compensator.connector,
                "scopes": compensator.scopes,
            }
        }),
    };
    let text = serde_json::json!({
        "name": step.name,
        "connector": step.connector,
        "scopes": step.scopes,
        "effect": effect,
    })
    .to_string();
    blake3::hash(text.as_bytes()).to_hex().to_string()
}

fn version_diff(
    recorded: &BTreeMap<String, String>,
    now: &BTreeMap<String, String>,
) -> Vec<String> {
    let mut out = Vec::new();
    for (name, fp) in recorded {
        match now.get(name) {
            None => out.push(format!("step `{name}` removed")),
            Some(n) if n != fp => out.push(format!("step `{name}` changed")),
            Some(_) => {}
        }
    }
    for name in now.keys() {
        if !recorded.contains_key(name) {
            out.push(format!("step `{name}` added"));
        }
    }
    if out.is_empty() {
        out.push("the order of steps changed".to_owned());
    }
    out
}

/// The idempotency key of step `step_id` in run `run_id`: lowercase hex, 32 characters,
/// deterministic.
pub fn idempotency_key(run_id: &str, step_id: &str) -> String {
    let mut h = blake3::Hasher::new();
    h.update(run_id.as_bytes());
    h.update(&[0]);
    h.update(step_id.as_bytes());
    h.finalize().to_hex()[..32].to_owned()
}

fn new_id(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut h = blake3::Hasher::new();
    h.update(&nanos.to_le_bytes());
    h.update(&std::process::id().to_le_bytes());
    h.update(&COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    format!("{prefix}{}", &h.finalize().to_hex()[..24])
}

/// A chain with its types erased, so a run can be driven from its stored record.
trait ErasedRunner: Send + Sync {
    fn meta(&self) -> &'static ChainMeta;
    fn drive(
        &self,
        engine: Engine,
        run: RunRecord,
        lease: Lease,
        retry: Option<String>,
    ) -> BoxFuture<'static, Result<RunState, EngineError>>;
}

struct Runner<C>(PhantomData<fn() -> C>);

impl<C: Chain> ErasedRunner for Runner<C> {
    fn meta(&self) -> &'static ChainMeta {
        &C::META
    }

    fn drive(
        &self,
        engine: Engine,
        run: RunRecord,
        lease: Lease,
        retry: Option<String>,
    ) -> BoxFuture<'static, Result<RunState, EngineError>> {
        Box::pin(async move {
            let store = Arc::clone(&engine.inner.store);
            let result = Self::drive_leased(engine, run, &lease, retry).await;
            if result.is_err() {
                // `finish` releases the lease on every path it reaches; this covers the rest.
                let _ = store.release_run(&lease).await;
            }
            result
        })
    }
}

impl<C: Chain> Runner<C> {
    async fn drive_leased(
        engine: Engine,
        run: RunRecord,
        lease: &Lease,
        retry: Option<String>,
    ) -> Result<RunState, EngineError> {
        {
            let principal: C::Principal =
                serde_json::from_value(run.principal.clone()).map_err(|e| {
                    EngineError::Codec(format!(
                        "run `{}`: stored principal does not decode as `{}`: {e}",
                        run.run_id,
                        C::META.principal
                    ))
                })?;
            let input: C::Input = serde_json::from_value(run.input.clone()).map_err(|e| {
                EngineError::Codec(format!(
                    "run `{}`: stored input does not decode: {e}",
                    run.run_id
                ))
            })?;
            let journal = engine.inner.store.journal(&run.run_id).await?;
            let driver = Arc::new(driver::Driver::new(
                engine.clone(),
                &C::META,
                run,
                lease.clone(),
                journal,
                retry,
            ));
            let ctx = Arc::new(ChainCtx::new(principal, driver.clone()));
            let body = C::run(ctx, input).await;
            let body = body.and_then(|output| {
                serde_json::to_value(output).map_err(|e| {
                    crate::ChainError::Step(crate::StepError::Runtime(format!(
                        "chain output does not encode: {e}"
                    )))
                })
            });
            driver.finish(body).await
        }
    }
}

pub(crate) struct EngineInner {
    pub(crate) store: Arc<dyn RunStore>,
    pub(crate) audit: Arc<dyn AuditStore>,
    pub(crate) credentials: Arc<dyn Credentials>,
    pub(crate) notifier: Arc<dyn Notifier>,
    runners: RwLock<HashMap<String, Arc<dyn ErasedRunner>>>,
    pub(crate) owner: String,
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
        store: Arc<dyn RunStore>,
        audit: Arc<dyn AuditStore>,
        credentials: Arc<dyn Credentials>,
    ) -> Self {
        Self::with_notifier(store, audit, credentials, Arc::new(TracingNotifier))
    }

    /// Like [`Engine::new`] with another notifier (for example a [`WebhookNotifier`]).
    pub fn with_notifier(
        store: Arc<dyn RunStore>,
        audit: Arc<dyn AuditStore>,
        credentials: Arc<dyn Credentials>,
        notifier: Arc<dyn Notifier>,
    ) -> Self {
        Self {
            inner: Arc::new(EngineInner {
                store,
                audit,
                credentials,
                notifier,
                runners: RwLock::default(),
                owner: new_id("engine-"),
            }),
        }
    }

    /// Registers chain `C` so its runs can be resumed and recovered by id. Idempotent.
    pub fn register<C: Chain>(&self) {
        let mut runners = self
            .inner
            .runners
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        runners
            .entry(C::META.path())
            .or_insert_with(|| Arc::new(Runner::<C>(PhantomData)));
    }

    fn runner(&self, chain: &str) -> Result<Arc<dyn ErasedRunner>, EngineError> {
        self.inner
            .runners
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(chain)
            .cloned()
            .ok_or_else(|| EngineError::NotRegistered {
                chain: chain.to_owned(),
            })
    }

    /// The run store.
    pub fn store(&self) -> &Arc<dyn RunStore> {
        &self.inner.store
    }

    /// Starts a run of `C` for `principal` and drives it until it completes, suspends, is
    /// compensated, blocks or fails. Preflight runs first: when consents are missing nothing
    /// is written and [`EngineError::PreflightNotReady`] lists them.
    pub async fn start<C: Chain>(
        &self,
        principal: C::Principal,
        input: C::Input,
    ) -> Result<RunReport<C::Output>, EngineError> {
        self.register::<C>();
        let runner = self.runner(&C::META.path())?;
        let principal_json = encode(&principal, "principal")?;
        let input_json = encode(&input, "input")?;
        let run_id = new_id("run_");
        let state = self
            .launch(
                runner,
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
        runner: Arc<dyn ErasedRunner>,
        run_id: String,
        principal: Value,
        principal_id: String,
        input: Value,
        parent_run_id: Option<String>,
    ) -> Result<RunState, EngineError> {
        let meta = runner.meta();
        let manifest = ScopeManifest::for_chain(meta);
        let grants = self.inner.credentials.grants(&principal_id).await?;
        let pf = preflight_manifest(&manifest, &principal_id, &grants);
        if !pf.is_ready() {
            return Err(EngineError::PreflightNotReady {
                chain: meta.path(),
                consents: pf.consents_needed().into_iter().cloned().collect(),
            });
        }
        let mut subjects = BTreeMap::new();
        for connector in manifest.connectors.keys() {
            let subject = self
                .inner
                .credentials
                .upstream_subject(&principal_id, connector)
                .await?;
            subjects.insert(connector.clone(), subject);
        }
        let (chain_version, step_versions) = chain_version(meta);
        let run = RunRecord {
            run_id: run_id.clone(),
            chain: meta.path(),
            chain_version: chain_version.clone(),
            step_versions,
            principal,
            principal_id: principal_id.clone(),
            input,
            subjects,
            parent_run_id,
            state: RunState::Running,
            node: crate::graph::START,
            created_unix_ms: crate::audit::now_unix_ms(),
        };
        let lease = self
            .inner
            .store
            .create_run(run.clone(), &self.inner.owner)
            .await?;
        // Deferred, like the run's creation: the first intent's fsync covers both.
        let started = driver::commit(
            self,
            Some(&lease),
            crate::journal::Unit::of(Vec::new())
                .audit(
                    NewRecord::new(
                        principal_id,
                        Outcome::Info,
                        AuditEvent::RunStarted {
                            chain: meta.path(),
                            chain_version,
                            preflight: preflight_summary(&pf),
                        },
                    )
                    .run(&run_id),
                )
                .deferred(),
        )
        .await;
        if let Err(e) = started {
            let _ = self.inner.store.release_run(&lease).await;
            return Err(e);
        }
        runner.drive(self.clone(), run, lease, None).await
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
            Err(StoreError::Claimed { owner, .. }) => {
                return Err(EngineError::Busy {
                    run_id: run_id.to_owned(),
                    owner,
                });
            }
            Err(e) => return Err(e.into()),
        };
        let result = self.resume_claimed(run_id, &lease).await;
        match result {
            Ok((runner, run, retry)) => {
                let state = runner.drive(self.clone(), run, lease, Some(retry)).await?;
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
    ) -> Result<(Arc<dyn ErasedRunner>, RunRecord, String), EngineError> {
        let mut run = self.run_status(run_id).await?;
        let RunState::Suspended { step_id, .. } = &run.state else {
            return Err(EngineError::NotSuspended {
                run_id: run_id.to_owned(),
                state: run.state.kind().to_owned(),
            });
        };
        let suspended_step = step_id.clone();
        let runner = self.runner(&run.chain)?;
        check_version(&run, runner.meta())?;
        let manifest = ScopeManifest::for_chain(runner.meta());
        let grants = self.inner.credentials.grants(&run.principal_id).await?;
        let pf = preflight_manifest(&manifest, &run.principal_id, &grants);
        if !pf.is_ready() {
            return Err(EngineError::PreflightNotReady {
                chain: run.chain.clone(),
                consents: pf.consents_needed().into_iter().cloned().collect(),
            });
        }
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
        Ok((runner, run, suspended_step))
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
            let Ok(runner) = self.runner(&run.chain) else {
                continue;
            };
            let lease = match self
                .inner
                .store
                .claim_run(&run.run_id, &self.inner.owner)
                .await
            {
                Ok(lease) => lease,
                Err(StoreError::Claimed { .. }) => continue,
                Err(e) => return Err(e.into()),
            };
            let engine = self.clone();
            tasks.spawn(async move {
                let run_id = run.run_id.clone();
                (run_id, engine.recover_one(runner, run, lease).await)
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
        runner: Arc<dyn ErasedRunner>,
        run: RunRecord,
        lease: Lease,
    ) -> Result<RunState, EngineError> {
        if let Err(e) = check_version(&run, runner.meta()) {
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
            return compensate::finish_compensation(self, runner.meta(), &run, lease).await;
        }
        runner.drive(self.clone(), run, lease, None).await
    }

    /// A child run for a handoff: continues it if it exists, else starts it.
    pub(crate) async fn run_child(
        &self,
        request: &crate::exec::HandoffRequest,
        child_run_id: String,
        parent_run_id: &str,
    ) -> Result<RunState, EngineError> {
        (request.register)(self);
        let runner = self.runner(&request.chain.path())?;
        match self.inner.store.get_run(&child_run_id).await? {
            Some(run) if run.state == RunState::Running => {
                let lease = self
                    .inner
                    .store
                    .claim_run(&child_run_id, &self.inner.owner)
                    .await?;
                runner.drive(self.clone(), run, lease, None).await
            }
            Some(run) => Ok(run.state),
            None => {
                self.launch(
                    runner,
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

fn check_version(run: &RunRecord, meta: &ChainMeta) -> Result<(), EngineError> {
    let (version, steps) = chain_version(meta);
    if version == run.chain_version {
        return Ok(());
    }
    Err(EngineError::ChainChanged {
        run_id: run.run_id.clone(),
        chain: run.chain.clone(),
        steps: version_diff(&run.step_versions, &steps),
    })
}

fn encode<T: Serialize>(value: &T, what: &str) -> Result<Value, EngineError> {
    serde_json::to_value(value)
        .map_err(|e| EngineError::Codec(format!("the run's {what} does not encode as JSON: {e}")))
}

fn typed_report<C: Chain>(
    run_id: String,
    state: RunState,
) -> Result<RunReport<C::Output>, EngineError> {
    let output = match &state {
        RunState::Completed { output } => {
            Some(serde_json::from_value(output.clone()).map_err(|e| {
                EngineError::Codec(format!("run `{run_id}`: output does not decode: {e}"))
            })?)
        }
        _ => None,
    };
    Ok(RunReport {
        run_id,
        state,
        output,
    })
}

fn erased_report(run_id: String, state: RunState) -> RunReport<Value> {
    let output = match &state {
        RunState::Completed { output } => Some(output.clone()),
        _ => None,
    };
    RunReport {
        run_id,
        state,
        output,
    }
}

fn preflight_summary(pf: &Preflight) -> PreflightSummary {
    PreflightSummary {
        passed: pf.is_ready(),
        missing: Vec::new(),
        unused: pf
            .unused_scopes()
            .into_iter()
            .map(|(connector, scopes)| ConnectorScopes {
                connector: connector.to_owned(),
                scopes: scopes.iter().cloned().collect(),
            })
            .collect(),
    }
}

/// The records a set of touched lists names, without repeats.
pub(crate) fn union_records(lists: impl IntoIterator<Item = Vec<RecordRef>>) -> Vec<RecordRef> {
    let set: BTreeSet<RecordRef> = lists.into_iter().flatten().collect();
    set.into_iter().collect()
}
