//! The run journal's error type, backend-neutral (no database types).

use crate::audit::AuditError;
use crate::sqlite::DbError;

/// Errors of the run journal; backend-neutral (no database types).
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// The database failed.
    #[error("run journal: {0}")]
    Backend(String),
    /// A value did not (de)serialize.
    #[error("run journal: a stored value does not decode: {0}")]
    Json(#[from] serde_json::Error),
    /// The audit records of a unit of work could not be sealed or stored (nothing of the unit
    /// was committed).
    #[error("run journal: the unit's audit records failed: {0}")]
    Audit(#[from] AuditError),
    /// No such run.
    #[error("no run `{0}` in the journal")]
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
    #[error("run journal row is corrupt: {0}")]
    Corrupt(String),
    /// A background worker is gone.
    #[error("run journal background worker failed: {0}")]
    Background(String),
}

impl From<DbError> for JournalError {
    fn from(e: DbError) -> Self {
        JournalError::Backend(e.message)
    }
}

impl From<rusqlite::Error> for JournalError {
    fn from(e: rusqlite::Error) -> Self {
        DbError::from(e).into()
    }
}
