//! Running one test suite against both storage backends (features `test-util` and
//! `postgres`): a [`Backend`] makes a fresh database (a SQLite file in a directory the test
//! owns, or a new PostgreSQL database from [`super::postgres`]) and opens stores on it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::audit::{AuditStore, SqliteAuditStore};
use crate::journal::{RunJournal, SqliteJournal};
use crate::postgres::{PgAccountStore, PgAuditStore, PgDatabase, PgJournal};
use crate::vault::{AccountStore, SqliteStore, Vault, VaultError, VaultKey, VaultOptions};

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
    /// The database at `location` (a PostgreSQL URL or a SQLite path), as
    /// [`TestDatabase::location_path`] gave it (for example to a child process).
    pub fn at(location: impl AsRef<Path>) -> Self {
        let location = location.as_ref().to_string_lossy().into_owned();
        let backend =
            if location.starts_with("postgres://") || location.starts_with("postgresql://") {
                Backend::Postgres
            } else {
                Backend::Sqlite
            };
        Self { backend, location }
    }

    /// The location as a path argument, for helpers that take a database path
    /// ([`TestDatabase::at`] reads it back; `Runtime::at` takes its text).
    pub fn location_path(&self) -> PathBuf {
        PathBuf::from(&self.location)
    }

    /// Opens a vault on this database (like `Vault::open_sqlite` for SQLite).
    pub async fn open_vault(
        &self,
        key: VaultKey,
        options: VaultOptions,
    ) -> Result<Vault, VaultError> {
        match self.backend {
            Backend::Sqlite => Vault::open_sqlite(&self.location, key, options).await,
            Backend::Postgres => {
                let db = PgDatabase::connect(&self.location)
                    .await
                    .map_err(|e| VaultError::from(crate::vault::StoreError::from(e)))?;
                Vault::open(Arc::new(PgAccountStore::on(db)), key, options).await
            }
        }
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

    /// Runs `sql` (one or more statements) on a connection of its own, as an operator or an
    /// attacker with database access would.
    pub async fn execute_batch(&self, sql: &str) {
        match self.backend {
            Backend::Sqlite => {
                let conn = rusqlite::Connection::open(&self.location).unwrap();
                // The test's own runtime may be committing on the same file.
                conn.busy_timeout(std::time::Duration::from_secs(10))
                    .unwrap();
                conn.execute_batch(sql).unwrap();
            }
            Backend::Postgres => self.raw().await.batch_execute(sql).await.unwrap(),
        }
    }

    /// Every row of every table, each column as text (`bytea`/blobs as hex), one line per row:
    /// for checking that a value (a secret) appears nowhere in the database.
    pub async fn all_text(&self) -> String {
        let mut out = String::new();
        match self.backend {
            Backend::Sqlite => {
                let conn = rusqlite::Connection::open(&self.location).unwrap();
                let tables: Vec<String> = conn
                    .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")
                    .unwrap()
                    .query_map([], |r| r.get(0))
                    .unwrap()
                    .collect::<Result<_, _>>()
                    .unwrap();
                for table in tables {
                    let mut stmt = conn.prepare(&format!("SELECT * FROM \"{table}\"")).unwrap();
                    let n = stmt.column_count();
                    let mut rows = stmt.query([]).unwrap();
                    while let Some(row) = rows.next().unwrap() {
                        out.push_str(&table);
                        for i in 0..n {
                            out.push('\t');
                            out.push_str(&match row.get_ref(i).unwrap() {
                                rusqlite::types::ValueRef::Null => String::new(),
                                rusqlite::types::ValueRef::Integer(v) => v.to_string(),
                                rusqlite::types::ValueRef::Real(v) => v.to_string(),
                                rusqlite::types::ValueRef::Text(t) => {
                                    String::from_utf8_lossy(t).into_owned()
                                }
                                rusqlite::types::ValueRef::Blob(b) => {
                                    String::from_utf8_lossy(b).into_owned()
                                }
                            });
                        }
                        out.push('\n');
                    }
                }
            }
            Backend::Postgres => {
                let client = self.raw().await;
                let tables = client
                    .query(
                        "SELECT tablename FROM pg_tables WHERE schemaname = 'public'",
                        &[],
                    )
                    .await
                    .unwrap();
                for table in tables {
                    let table: String = table.get(0);
                    // Each row as text (bytea as its escape form, which keeps ASCII as is).
                    let rows = client
                        .query(
                            &format!("SELECT t::text FROM (SELECT * FROM \"{table}\") t"),
                            &[],
                        )
                        .await
                        .unwrap();
                    for row in rows {
                        out.push_str(&table);
                        out.push('\t');
                        out.push_str(row.get::<_, &str>(0));
                        out.push('\n');
                    }
                    let blobs = client
                        .query(
                            "SELECT column_name FROM information_schema.columns \
                             WHERE table_schema = 'public' AND table_name = $1 \
                             AND data_type = 'bytea'",
                            &[&table],
                        )
                        .await
                        .unwrap();
                    for column in blobs {
                        let column: String = column.get(0);
                        let values = client
                            .query(&format!("SELECT \"{column}\" FROM \"{table}\""), &[])
                            .await
                            .unwrap();
                        for v in values {
                            if let Some(bytes) = v.get::<_, Option<Vec<u8>>>(0) {
                                out.push_str(&String::from_utf8_lossy(&bytes));
                                out.push('\n');
                            }
                        }
                    }
                }
            }
        }
        out
    }

    async fn raw(&self) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(&self.location, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        client
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

/// Runs each named `async fn NAME(backend: Backend)` of the calling test file once per
/// backend, as the tests `sqlite::NAME` and `postgres::NAME` (multi-threaded runtime).
#[macro_export]
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::test_util::backend::Backend::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::test_util::backend::Backend::Postgres).await
                }
            )*
        }
    };
}
