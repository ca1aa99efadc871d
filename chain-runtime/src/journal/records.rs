//! The stored shapes of the run journal: a run ([`RunRecord`], [`RunState`]), its journal
//! entries and compensations, operator alerts and leases.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::approval::PendingApproval;
use crate::error::StepError;
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
    /// A step that needs a person's approval is about to run: the run waits for the decision
    /// (see [`PendingApproval`]).
    AwaitingApproval(Box<PendingApproval>),
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
            RunState::AwaitingApproval(_) => "awaiting_approval",
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
    /// A person's decision on a step that needs approval (no result while it is pending).
    Approval,
}

impl EntryKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            EntryKind::Step => "step",
            EntryKind::Record => "record",
            EntryKind::Handoff => "handoff",
            EntryKind::Approval => "approval",
        }
    }

    pub(super) fn parse(s: &str) -> Option<Self> {
        match s {
            "step" => Some(EntryKind::Step),
            "record" => Some(EntryKind::Record),
            "handoff" => Some(EntryKind::Handoff),
            "approval" => Some(EntryKind::Approval),
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
