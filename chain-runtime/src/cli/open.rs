//! Opening the stores of the database `--db` names, for inspection: an existing SQLite file
//! read-only (never creating or migrating one), or a PostgreSQL database by URL.

use std::path::Path;
use std::sync::Arc;

use super::CliError;
use crate::audit::{AuditError, AuditStore, SqliteAuditStore};
use crate::journal::{JournalError, RunJournal, SqliteJournal};

/// Checks the database exists (never creating it) and opens the run store on it
/// read-only (no migration, no writer, no lease holder).
pub(super) async fn open_runs(path: &Path) -> Result<Arc<dyn RunJournal>, CliError> {
    if let Some(url) = super::postgres::url(path) {
        return super::postgres::runs(url).await;
    }
    check_db(path)?;
    Ok(Arc::new(
        SqliteJournal::open_read_only(path)
            .await
            .map_err(|e| db_error(path, e))?,
    ))
}

/// Checks the database exists (never creating it) and opens the audit trail on it
/// read-only.
pub(super) async fn open_audit(path: &Path) -> Result<Arc<dyn AuditStore>, CliError> {
    if let Some(url) = super::postgres::url(path) {
        return super::postgres::audit(url).await;
    }
    check_db(path)?;
    let store = SqliteAuditStore::open_read_only(path)
        .await
        .map_err(|e| match e {
            AuditError::Backend(inner) => CliError::Database {
                path: path.to_owned(),
                reason: inner,
            },
            other => CliError::Database {
                path: path.to_owned(),
                reason: other.to_string(),
            },
        })?;
    Ok(Arc::new(store))
}

/// The tables a chain-runtime database has; a file without them is refused before any store
/// opens it (opening would create them).
const EXPECTED_TABLES: [&str; 2] = ["run_runs", "audit_records"];

/// Checks, on a read-only connection that creates nothing, that `path` is a SQLite database
/// with the runtime's tables.
fn check_tables(path: &Path) -> Result<(), CliError> {
    let refuse = |reason: String| CliError::Database {
        path: path.to_owned(),
        reason,
    };
    let conn = crate::sqlite::open_read_only_connection(path).map_err(|e| refuse(e.message))?;
    for table in EXPECTED_TABLES {
        let found: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
                [table],
                |row| row.get(0),
            )
            .map_err(|e| refuse(e.to_string()))?;
        if found == 0 {
            return Err(refuse(format!(
                "not a chain-runtime database (no `{table}` table); chainctl reads existing \
                 databases and creates nothing"
            )));
        }
    }
    Ok(())
}

pub(super) fn check_db(path: &Path) -> Result<(), CliError> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() => check_tables(path),
        Ok(_) => Err(CliError::NotAFile(path.to_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(CliError::DatabaseMissing(path.to_owned()))
        }
        Err(e) => Err(CliError::io(
            format!("cannot access database `{}`", path.display()),
            e,
        )),
    }
}

/// A run-store error while opening or reading: a database problem, said plainly.
pub(super) fn db_error(path: &Path, e: JournalError) -> CliError {
    match e {
        JournalError::Backend(inner) => CliError::Database {
            path: path.to_owned(),
            reason: inner,
        },
        JournalError::Json(inner) => CliError::Database {
            path: path.to_owned(),
            reason: format!("a stored value does not decode: {inner}"),
        },
        JournalError::Corrupt(reason) => CliError::Database {
            path: path.to_owned(),
            reason,
        },
        other => CliError::Store(other),
    }
}
