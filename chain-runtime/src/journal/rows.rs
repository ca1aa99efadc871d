//! Row encoding shared by the database-backed journals (SQLite, PostgreSQL): which values are
//! stored as JSON text, and how a row's columns turn back into a record. The backends differ
//! only in how they bind and fetch the columns.

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{CompensationEntry, EntryKind, JournalEntry, JournalError, RunRecord};

/// Decodes one JSON text column.
pub(crate) fn decode<T: DeserializeOwned>(text: &str) -> Result<T, JournalError> {
    Ok(serde_json::from_str(text)?)
}

/// Encodes an optional value as an optional JSON text column.
pub(crate) fn encode_opt<T: Serialize>(value: Option<&T>) -> Result<Option<String>, JournalError> {
    Ok(value.map(serde_json::to_string).transpose()?)
}

/// The JSON text columns of a run, in `run_runs` column order.
pub(crate) struct RunText {
    /// `step_versions`.
    pub(crate) step_versions: String,
    /// `principal`.
    pub(crate) principal: String,
    /// `input`.
    pub(crate) input: String,
    /// `subjects`.
    pub(crate) subjects: String,
    /// `state`.
    pub(crate) state: String,
}

impl RunText {
    /// Encodes the JSON columns of `run`.
    pub(crate) fn of(run: &RunRecord) -> Result<Self, JournalError> {
        Ok(Self {
            step_versions: serde_json::to_string(&run.step_versions)?,
            principal: serde_json::to_string(&run.principal)?,
            input: serde_json::to_string(&run.input)?,
            subjects: serde_json::to_string(&run.subjects)?,
            state: serde_json::to_string(&run.state)?,
        })
    }
}

/// The columns of `run_runs` read back, as [`RUN_COLUMNS`] lists them.
pub(crate) struct RunRow {
    pub(crate) run_id: String,
    pub(crate) chain: String,
    pub(crate) chain_version: String,
    pub(crate) step_versions: String,
    pub(crate) principal: String,
    pub(crate) principal_id: String,
    pub(crate) input: String,
    pub(crate) subjects: String,
    pub(crate) parent_run_id: Option<String>,
    pub(crate) state: String,
    pub(crate) node: i64,
    pub(crate) created_ms: i64,
}

/// The `run_runs` columns a [`RunRow`] is read from, in order.
pub(crate) const RUN_COLUMNS: &str = "run_id, chain, chain_version, step_versions, principal, \
                                      principal_id, input, subjects, parent_run_id, state, node, \
                                      created_ms";

fn small(value: i64, what: &str) -> Result<u32, JournalError> {
    u32::try_from(value)
        .map_err(|_| JournalError::Corrupt(format!("{what} {value} is out of range")))
}

impl RunRow {
    /// Decodes the row into a run.
    pub(crate) fn decode(self) -> Result<RunRecord, JournalError> {
        Ok(RunRecord {
            run_id: self.run_id,
            chain: self.chain,
            chain_version: self.chain_version,
            step_versions: decode(&self.step_versions)?,
            principal: decode(&self.principal)?,
            principal_id: self.principal_id,
            input: decode(&self.input)?,
            subjects: decode(&self.subjects)?,
            parent_run_id: self.parent_run_id,
            state: decode(&self.state)?,
            node: small(self.node, "node")?,
            created_unix_ms: self.created_ms,
        })
    }
}

/// The columns of `journal_entries` read back (`seq, step_id, kind, name, attempt, result`).
pub(crate) struct EntryRow {
    pub(crate) seq: i64,
    pub(crate) step_id: String,
    pub(crate) kind: String,
    pub(crate) name: String,
    pub(crate) attempt: i64,
    pub(crate) result: Option<String>,
}

impl EntryRow {
    /// Decodes the row into a journal entry.
    pub(crate) fn decode(self) -> Result<JournalEntry, JournalError> {
        Ok(JournalEntry {
            seq: small(self.seq, "entry seq")?,
            kind: EntryKind::parse(&self.kind).ok_or_else(|| {
                JournalError::Corrupt(format!("unknown entry kind `{}`", self.kind))
            })?,
            step_id: self.step_id,
            name: self.name,
            attempt: small(self.attempt, "attempt")?,
            result: self.result.as_deref().map(decode).transpose()?,
        })
    }
}

/// The columns of `journal_compensations` read back (`step_id, compensator, attempt, result`).
pub(crate) struct CompensationRow {
    pub(crate) step_id: String,
    pub(crate) compensator: String,
    pub(crate) attempt: i64,
    pub(crate) result: Option<String>,
}

impl CompensationRow {
    /// Decodes the row into a compensation entry.
    pub(crate) fn decode(self) -> Result<CompensationEntry, JournalError> {
        Ok(CompensationEntry {
            step_id: self.step_id,
            compensator: self.compensator,
            attempt: small(self.attempt, "attempt")?,
            result: self.result.as_deref().map(decode).transpose()?,
        })
    }
}
