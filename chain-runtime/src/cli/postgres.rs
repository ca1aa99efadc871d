//! `--db postgres://…`: opening the run journal and the audit trail of an existing PostgreSQL
//! database (creating nothing), with errors that never show the URL's password.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::CliError;
use crate::audit::AuditStore;
use crate::journal::RunJournal;

/// The PostgreSQL URL `--db` names, if it names one (`postgres://…`, `postgresql://…`).
pub(super) fn url(path: &Path) -> Option<&str> {
    path.to_str().filter(|p| {
        matches!(
            crate::runtime::DatabaseLocation::parse(p),
            crate::runtime::DatabaseLocation::Postgres(_)
        )
    })
}

/// The refusal of a PostgreSQL database, naming it without the URL's password.
fn refusal(url: &str, reason: String) -> CliError {
    CliError::Database {
        path: PathBuf::from(crate::runtime::redact_url(url)),
        reason,
    }
}

/// Opens the run journal in the existing PostgreSQL database at `url` (creating nothing).
#[cfg(feature = "postgres")]
pub(super) async fn runs(url: &str) -> Result<Arc<dyn RunJournal>, CliError> {
    let db = crate::postgres::PgDatabase::connect_existing(url)
        .await
        .map_err(|e| refusal(url, e.message))?;
    let journal = crate::postgres::PgJournal::on(db)
        .await
        .map_err(|e| refusal(url, e.to_string()))?;
    Ok(Arc::new(journal))
}

/// Opens the audit trail in the existing PostgreSQL database at `url` (creating nothing).
#[cfg(feature = "postgres")]
pub(super) async fn audit(url: &str) -> Result<Arc<dyn AuditStore>, CliError> {
    let db = crate::postgres::PgDatabase::connect_existing(url)
        .await
        .map_err(|e| refusal(url, e.message))?;
    Ok(Arc::new(crate::postgres::PgAuditStore::on(db)))
}

#[cfg(not(feature = "postgres"))]
pub(super) async fn runs(url: &str) -> Result<Arc<dyn RunJournal>, CliError> {
    Err(no_postgres(url))
}

#[cfg(not(feature = "postgres"))]
pub(super) async fn audit(url: &str) -> Result<Arc<dyn AuditStore>, CliError> {
    Err(no_postgres(url))
}

#[cfg(not(feature = "postgres"))]
fn no_postgres(url: &str) -> CliError {
    refusal(
        url,
        "this build has no PostgreSQL backend (chain-runtime feature `postgres`)".into(),
    )
}
