//! The run journal: runs, their journaled step executions, compensations and operator alerts.
//!
//! [`RunStore`] is the storage interface the engine uses; it is dyn-compatible (every method
//! returns a [`BoxFuture`]). [`SqliteRunStore`] is the embedded implementation (one SQLite file,
//! WAL, one writer thread with group commit); [`MemoryRunStore`] keeps everything in memory, for
//! tests and for measuring the engine's own overhead.
//!
//! # Leases and fencing
//! Every write that concerns one run takes the [`Lease`] returned by [`RunStore::create_run`] or
//! [`RunStore::claim_run`]. A lease names its owner and carries a fencing token that grows with
//! every claim; a store rejects a write whose token is not the run's current one
//! ([`StoreError::LeaseLost`]). The embedded stores keep leases in process memory (one process
//! owns the file). A PostgreSQL store for many workers implements the same interface with a
//! `run_leases` row per run (`owner`, `token`, `expires_at`), claimed with
//! `SELECT … FOR UPDATE SKIP LOCKED`, renewed while the run is driven, and each write guarded by
//! `WHERE token = $lease_token`, without any change to the engine.

mod memory;
mod sqlite;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use memory::MemoryRunStore;
pub use sqlite::{SqliteRunStore, Synchronous, WriterStats};

use crate::error::StepError;
pub use crate::future::BoxFuture;
use crate::step::RecordRef;

/// The state of a run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum RunState {
    /// The body is being driven (or was, when the process died).
    Running,
    /// The body returned successfully.
    Completed {
        /// The chain's output as JSON.
        output: Value,
    },
    /// An authorization failure stopped the run; it waits for re-consent and [`resume`].
    ///
    /// [`resume`]: crate::engine::Engine::resume
    Suspended {
        /// The step that failed.
        step_id: String,
        /// Its decision-graph node.
        node: u32,
        /// The connector that refused.
        connector: String,
        /// Why, in words.
        reason: String,
        /// The scope set to ask consent for on `connector` (granted ∪ needed ∪ required).
        consent_scopes: Vec<String>,
        /// Extra parameters the consent request must carry (a step-up's `acr_values`, …).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        consent_params: Vec<(String, String)>,
    },
    /// Completed writes are being undone.
    Compensating,
    /// Every completed write was undone.
    Compensated,
    /// Partial state an operator must look at (an alert was raised).
    Blocked {
        /// Why, in words.
        reason: String,
    },
    /// The run failed before writing anything.
    Failed {
        /// Why, in words.
        error: String,
    },
}

impl RunState {
    /// The state's tag: `running`, `completed`, `suspended`, ….
    pub fn kind(&self) -> &'static str {
        match self {
            RunState::Running => "running",
            RunState::Completed { .. } => "completed",
            RunState::Suspended { .. } => "suspended",
            RunState::Compensating => "compensating",
            RunState::Compensated => "compensated",
            RunState::Blocked { .. } => "blocked",
            RunState::Failed { .. } => "failed",
        }
    }

    /// True for states the engine will not leave by itself (all but running and compensating).
    pub fn is_terminal(&self) -> bool {
        !matches!(self, RunState::Running | RunState::Compensating)
    }
}

/// One run as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    /// The run id.
    pub run_id: String,
    /// The chain's path (`module::name`), the key of its registration.
    pub chain: String,
    /// Hash of the chain's step list (see [`crate::engine::chain_version`]).
    pub chain_version: String,
    /// Per step name, the hash of its declaration, to name what changed.
    pub step_versions: BTreeMap<String, String>,
    /// The principal value as JSON.
    pub principal: Value,
    /// The principal's identifier.
    pub principal_id: String,
    /// The chain's input as JSON.
    pub input: Value,
    /// Per connector, the upstream subject of the principal's account at start.
    pub subjects: BTreeMap<String, Option<String>>,
    /// The run that handed off to this one, if any.
    pub parent_run_id: Option<String>,
    /// The current state.
    pub state: RunState,
    /// The decision-graph node the run is at (0 = start).
    pub node: u32,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_unix_ms: i64,
}

/// What a journal entry records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// A step execution.
    Step,
    /// A value recorded with `ChainCtx::record`.
    Record,
    /// A handoff to a child run.
    Handoff,
}

impl EntryKind {
    fn as_str(self) -> &'static str {
        match self {
            EntryKind::Step => "step",
            EntryKind::Record => "record",
            EntryKind::Handoff => "handoff",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "step" => Some(EntryKind::Step),
            "record" => Some(EntryKind::Record),
            "handoff" => Some(EntryKind::Handoff),
            _ => None,
        }
    }
}

/// The result of a journaled execution.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum EntryResult {
    /// It succeeded.
    Ok {
        /// The output as JSON.
        output: Value,
        /// The external records it declared.
        touched: Vec<RecordRef>,
    },
    /// It failed (the failure class is in the error).
    Err {
        /// The error.
        error: StepError,
    },
}

/// One position of a run's journal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalEntry {
    /// Position in the body's sequence of journaled calls, from 0.
    pub seq: u32,
    /// The stable step id (`chain/step#n`).
    pub step_id: String,
    /// Step, record or handoff.
    pub kind: EntryKind,
    /// The step name, record label or child chain.
    pub name: String,
    /// How many times the call was attempted (intent written).
    pub attempt: u32,
    /// `None` while only the intent is journaled.
    pub result: Option<EntryResult>,
}

/// The journaled compensation of one completed step.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompensationEntry {
    /// The forward step's id.
    pub step_id: String,
    /// The compensator's name.
    pub compensator: String,
    /// Attempts so far.
    pub attempt: u32,
    /// `None` while only the intent is journaled; `Some(None)` when it succeeded.
    pub result: Option<Option<StepError>>,
}

/// An operator alert as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alert {
    /// The run concerned.
    pub run_id: String,
    /// The chain's path.
    pub chain: String,
    /// The principal's identifier.
    pub principal: String,
    /// The step concerned, if one.
    pub step_id: Option<String>,
    /// The external records left in place or concerned.
    pub records: Vec<RecordRef>,
    /// What the operator must know.
    pub message: String,
    /// When, milliseconds since the Unix epoch.
    pub time_unix_ms: i64,
}

/// The right to write one run's state and journal; see the module docs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The run.
    pub run_id: String,
    /// Who holds it.
    pub owner: String,
    /// The fencing token: writes carrying an older token are rejected.
    pub token: u64,
}

/// Errors of a run store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed.
    #[error(
        "run store (SQLite) failed: {0}; check that the database file exists, is writable and is not locked by another process"
    )]
    Sqlite(#[from] rusqlite::Error),
    /// A value did not (de)serialize.
    #[error("run store: a stored value does not decode: {0}")]
    Json(#[from] serde_json::Error),
    /// No such run.
    #[error("no run `{0}` in the store")]
    NotFound(String),
    /// A run with that id exists already.
    #[error("a run `{0}` exists already")]
    Duplicate(String),
    /// Another owner holds the run.
    #[error("run `{run_id}` is being driven by `{owner}`; wait for it to finish")]
    Claimed {
        /// The run.
        run_id: String,
        /// Who holds it.
        owner: String,
    },
    /// The lease was superseded: another owner claimed the run; this writer must stop.
    #[error(
        "lease on run `{0}` is no longer current (fencing token superseded); another worker owns the run now"
    )]
    LeaseLost(String),
    /// A stored row is not what this version writes.
    #[error("run store row is corrupt: {0}")]
    Corrupt(String),
    /// The writer thread or a blocking task is gone.
    #[error("run store background worker failed: {0}")]
    Background(String),
}

/// Storage of runs, journals, compensations and alerts. See the module docs for leases.
pub trait RunStore: Send + Sync {
    /// Inserts a new run and claims it for `owner`.
    fn create_run<'a>(
        &'a self,
        run: RunRecord,
        owner: &'a str,
    ) -> BoxFuture<'a, Result<Lease, StoreError>>;

    /// Claims a run for `owner`; [`StoreError::Claimed`] when another owner holds it.
    fn claim_run<'a>(
        &'a self,
        run_id: &'a str,
        owner: &'a str,
    ) -> BoxFuture<'a, Result<Lease, StoreError>>;

    /// Gives a lease back.
    fn release_run<'a>(&'a self, lease: &'a Lease) -> BoxFuture<'a, Result<(), StoreError>>;

    /// One run.
    fn get_run<'a>(
        &'a self,
        run_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<RunRecord>, StoreError>>;

    /// Every run, oldest first.
    fn list_runs(&self) -> BoxFuture<'_, Result<Vec<RunRecord>, StoreError>>;

    /// Sets the state if the current state's kind is `expected` (any when `None`); returns
    /// whether it was set.
    fn set_state<'a>(
        &'a self,
        lease: &'a Lease,
        expected: Option<&'static str>,
        state: RunState,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// The run's journal in position order.
    fn journal<'a>(
        &'a self,
        run_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<JournalEntry>, StoreError>>;

    /// Durably writes (or replaces) the entry at `entry.seq` and moves the run to `node`.
    fn write_entry<'a>(
        &'a self,
        lease: &'a Lease,
        entry: JournalEntry,
        node: u32,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// The run's journaled compensations.
    fn compensations<'a>(
        &'a self,
        run_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<CompensationEntry>, StoreError>>;

    /// Durably writes (or replaces) the compensation of `entry.step_id`.
    fn write_compensation<'a>(
        &'a self,
        lease: &'a Lease,
        entry: CompensationEntry,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Stores an operator alert.
    fn insert_alert(&self, alert: Alert) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Alerts, oldest first, of one run or all.
    fn alerts<'a>(
        &'a self,
        run_id: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Vec<Alert>, StoreError>>;
}

/// In-process lease table shared by the embedded stores.
#[derive(Debug, Default)]
pub(crate) struct LocalLeases {
    table: std::sync::Mutex<(u64, LeaseTable)>,
}

/// run id → (owner, fencing token).
type LeaseTable = std::collections::HashMap<String, (String, u64)>;

impl LocalLeases {
    pub(crate) fn claim(&self, run_id: &str, owner: &str) -> Result<Lease, StoreError> {
        let mut guard = self
            .table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (counter, map) = &mut *guard;
        if let Some((held_by, _)) = map.get(run_id) {
            return Err(StoreError::Claimed {
                run_id: run_id.to_owned(),
                owner: held_by.clone(),
            });
        }
        *counter += 1;
        map.insert(run_id.to_owned(), (owner.to_owned(), *counter));
        Ok(Lease {
            run_id: run_id.to_owned(),
            owner: owner.to_owned(),
            token: *counter,
        })
    }

    pub(crate) fn release(&self, lease: &Lease) {
        let mut guard = self
            .table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if guard.1.get(&lease.run_id).map(|(_, t)| *t) == Some(lease.token) {
            guard.1.remove(&lease.run_id);
        }
    }

    pub(crate) fn check(&self, lease: &Lease) -> Result<(), StoreError> {
        let guard = self
            .table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match guard.1.get(&lease.run_id) {
            Some((_, token)) if *token == lease.token => Ok(()),
            _ => Err(StoreError::LeaseLost(lease.run_id.clone())),
        }
    }
}
