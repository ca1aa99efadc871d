//! Running one test suite against both storage backends (features `test-util` and
//! `postgres`): a [`Backend`] makes a fresh database (a SQLite file in a directory the test
//! owns, or a new PostgreSQL database from [`super::postgres`]) and opens stores on it.

use std::path::Path;
use std::sync::Arc;

use crate::audit::{AuditStore, SqliteAuditStore};
use crate::journal::{RunJournal, SqliteJournal};
use crate::postgres::{PgAccountStore, PgAuditStore, PgDatabase, PgJournal};
use crate::runtime::{DatabaseLocation, Runtime, RuntimeBuilder};
use crate::vault::{AccountStore, SqliteStore};

/// A storage backend to run a test against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// A SQLite file.
    Sqlite,
    /// A PostgreSQL database (see [`super::postgres`] for where the server comes from).
    Postgres,
}

/// A database made for one test, with where it is.
#[derive(Clone, Debug)]
pub struct TestDatabase {
    /// The backend.
    pub backend: Backend,
    /// The database: a SQLite path or a PostgreSQL URL.
    pub location: String,
}

impl Backend {
    /// A fresh database: `dir/<name>.db` for SQLite, a new database for PostgreSQL. Panics
    /// (failing the test) when no PostgreSQL server can be had, saying how to provide one.
    pub async fn database(self, dir: &Path, name: &str) -> TestDatabase {
        let location = match self {
            Backend::Sqlite => dir
                .join(format!("{name}.db"))
                .to_string_lossy()
                .into_owned(),
            Backend::Postgres => super::postgres::database_url().await,
        };
        TestDatabase {
            backend: self,
            location,
        }
    }
}

impl TestDatabase {
    /// A runtime builder on this database.
    pub fn runtime(&self) -> RuntimeBuilder {
        Runtime::on(self.database_location())
    }

    /// The location as the runtime takes it.
    pub fn database_location(&self) -> DatabaseLocation {
        DatabaseLocation::parse(&self.location)
    }

    /// The SQLite file, for SQLite.
    pub fn path(&self) -> Option<&Path> {
        match self.backend {
            Backend::Sqlite => Some(Path::new(&self.location)),
            Backend::Postgres => None,
        }
    }

    /// The audit store on this database (a new handle each call).
    pub async fn audit(&self) -> Arc<dyn AuditStore> {
        match self.backend {
            Backend::Sqlite => Arc::new(SqliteAuditStore::open(&self.location).await.unwrap()),
            Backend::Postgres => Arc::new(PgAuditStore::on(self.pg().await)),
        }
    }

    /// The run journal on this database (a new handle, with its own lease holder).
    pub async fn journal(&self) -> Arc<dyn RunJournal> {
        match self.backend {
            Backend::Sqlite => Arc::new(SqliteJournal::open(&self.location).await.unwrap()),
            Backend::Postgres => Arc::new(PgJournal::on(self.pg().await).await.unwrap()),
        }
    }

    /// The vault's account store on this database.
    pub async fn accounts(&self) -> Arc<dyn AccountStore> {
        match self.backend {
            Backend::Sqlite => Arc::new(SqliteStore::open(&self.location).await.unwrap()),
            Backend::Postgres => Arc::new(PgAccountStore::on(self.pg().await)),
        }
    }

    /// The PostgreSQL database handle (panics for SQLite).
    pub async fn pg(&self) -> PgDatabase {
        assert_eq!(
            self.backend,
            Backend::Postgres,
            "not a PostgreSQL test database"
        );
        PgDatabase::connect(&self.location).await.unwrap()
    }
}
