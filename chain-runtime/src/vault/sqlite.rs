//! The embedded [`AccountStore`]: tables prefixed `vault_` on the process's shared
//! [`Database`] for the file (see [`crate::sqlite`]: WAL, `synchronous=FULL`, one busy
//! timeout, one group-commit writer, one reader pool, shared with the run journal and the
//! audit trail). Every write is synchronous (on disk when it resolves); the compare-and-swap
//! of [`AccountStore::replace_account`] and the read-and-delete of
//! [`AccountStore::take_consent`] each run inside one write transaction.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, ToSql, params};

use crate::sqlite::{Database, DbError, Durability};

use super::rows::{ACCOUNT_COLUMNS, scopes_from_text, scopes_to_text, status_from_text};
use super::store::{
    AccountStatus, AccountStore, RefreshLock, Sealed, StoreError, StoreFuture, StoredAccount,
    StoredConsent, StoredProvider,
};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS vault_meta (
    key   TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS vault_accounts (
    principal_id     TEXT NOT NULL,
    connector        TEXT NOT NULL,
    account_id       TEXT NOT NULL UNIQUE,
    upstream_subject TEXT NOT NULL,
    granted_scopes   TEXT NOT NULL,
    access_token     BLOB NOT NULL,
    refresh_token    BLOB,
    expires_at       INTEGER,
    grant_id         TEXT NOT NULL,
    consented_at     INTEGER NOT NULL,
    status           TEXT NOT NULL,
    rt_version       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    PRIMARY KEY (principal_id, connector)
);
CREATE TABLE IF NOT EXISTS vault_consents (
    state_hash   BLOB PRIMARY KEY,
    principal_id TEXT NOT NULL,
    connector    TEXT NOT NULL,
    scopes       TEXT NOT NULL,
    verifier     BLOB NOT NULL,
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS vault_providers (
    connector     TEXT PRIMARY KEY,
    config        TEXT NOT NULL,
    client_secret BLOB NOT NULL,
    updated_at    INTEGER NOT NULL
);
";

/// The accounts of one principal (`?1`), unsorted (see `principal_accounts`).
fn principal_accounts_sql() -> String {
    format!("SELECT {ACCOUNT_COLUMNS} FROM vault_accounts WHERE principal_id = ?1")
}

/// A SQLite-backed [`AccountStore`].
#[derive(Clone)]
pub struct SqliteStore {
    db: Database,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").finish_non_exhaustive()
    }
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

impl From<DbError> for StoreError {
    fn from(e: DbError) -> Self {
        StoreError::Backend(e.message)
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database file on the process's shared [`Database`] and
    /// creates the `vault_` tables.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::on(Database::open(path).await?).await
    }

    /// Opens the vault tables on `db`.
    pub async fn on(db: Database) -> Result<Self, StoreError> {
        db.ensure_schema(SCHEMA).await?;
        Ok(Self { db })
    }

    /// Runs `f` in the shared writer's transaction (its own savepoint), synchronously durable.
    fn write<T, F>(&self, f: F) -> StoreFuture<'static, T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let db = self.db.clone();
        Box::pin(async move { db.write(Durability::Sync, move |tx| f(tx.conn())).await })
    }

    /// Runs `f` through the writer (see [`Database::read_via_writer`]).
    fn read_via_writer<T, F>(&self, f: F) -> StoreFuture<'static, T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let db = self.db.clone();
        Box::pin(async move { db.read_via_writer(f).await })
    }

    /// Runs `f` on a pooled read connection.
    fn read<T, F>(&self, f: F) -> StoreFuture<'static, T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let db = self.db.clone();
        Box::pin(async move { db.read(move |conn| f(conn)).await })
    }
}

/// The account of `principal_id` on `connector`, if any.
fn select_account(
    conn: &Connection,
    principal_id: &str,
    connector: &str,
) -> Result<Option<StoredAccount>, StoreError> {
    let found = conn
        .prepare_cached(&format!(
            "SELECT {ACCOUNT_COLUMNS} FROM vault_accounts WHERE principal_id = ?1 AND connector = ?2"
        ))
        .map_err(backend)?
        .query_row(params![principal_id, connector], account_from_row)
        .optional()
        .map_err(backend)?;
    found.map(decode_account).transpose()
}

/// Runs `sql` with the account's thirteen columns bound as `?1`..`?13`, in [`ACCOUNT_COLUMNS`]
/// order, followed by `extra` (`?14`, ...). Returns the number of rows changed.
fn execute_with_account(
    conn: &Connection,
    sql: &str,
    a: &StoredAccount,
    extra: &[&dyn ToSql],
) -> Result<usize, StoreError> {
    let scopes = scopes_to_text(&a.granted_scopes)?;
    let refresh_token = a.refresh_token.as_ref().map(|s| &s.0);
    let status = a.status.as_str();
    let mut values: Vec<&dyn ToSql> = vec![
        &a.principal_id,
        &a.connector,
        &a.account_id,
        &a.upstream_subject,
        &scopes,
        &a.access_token.0,
        &refresh_token,
        &a.expires_at,
        &a.grant_id,
        &a.consented_at,
        &status,
        &a.rt_version,
        &a.updated_at,
    ];
    values.extend_from_slice(extra);
    conn.execute(sql, values.as_slice()).map_err(backend)
}

/// An account read by [`account_from_row`], with its scopes and status decoded from their text.
fn decode_account(
    (mut account, scopes, status): (StoredAccount, String, String),
) -> Result<StoredAccount, StoreError> {
    account.granted_scopes = scopes_from_text(&scopes)?;
    account.status = status_from_text(&status)?;
    Ok(account)
}

fn account_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<(StoredAccount, String, String)> {
    Ok((
        StoredAccount {
            principal_id: row.get(0)?,
            connector: row.get(1)?,
            account_id: row.get(2)?,
            upstream_subject: row.get(3)?,
            granted_scopes: Vec::new(),
            access_token: Sealed(row.get(5)?),
            refresh_token: row.get::<_, Option<Vec<u8>>>(6)?.map(Sealed),
            expires_at: row.get(7)?,
            grant_id: row.get(8)?,
            consented_at: row.get(9)?,
            status: AccountStatus::Active,
            rt_version: row.get(11)?,
            updated_at: row.get(12)?,
        },
        row.get(4)?,
        row.get(10)?,
    ))
}

impl AccountStore for SqliteStore {
    fn init_key_check(&self, candidate: Sealed) -> StoreFuture<'_, Sealed> {
        self.write(move |conn| {
            conn.execute(
                "INSERT OR IGNORE INTO vault_meta (key, value) VALUES ('key_check', ?1)",
                params![candidate.0],
            )
            .map_err(backend)?;
            let value: Vec<u8> = conn
                .query_row(
                    "SELECT value FROM vault_meta WHERE key = 'key_check'",
                    [],
                    |r| r.get(0),
                )
                .map_err(backend)?;
            Ok(Sealed(value))
        })
    }

    fn get_account(
        &self,
        principal_id: &str,
        connector: &str,
    ) -> StoreFuture<'_, Option<StoredAccount>> {
        let (principal_id, connector) = (principal_id.to_owned(), connector.to_owned());
        self.read(move |conn| select_account(conn, &principal_id, &connector))
    }

    fn get_account_for_call(
        &self,
        principal_id: &str,
        connector: &str,
    ) -> StoreFuture<'_, Option<StoredAccount>> {
        // Through the writer (see `Database::read_via_writer`): on the calling thread when the
        // writer is idle, else in queue order with the run's intent (usually in its batch); no
        // thread of its own to wake, and the writer's page cache is warm where a pooled
        // reader's is emptied by every commit.
        let (principal_id, connector) = (principal_id.to_owned(), connector.to_owned());
        self.read_via_writer(move |conn| select_account(conn, &principal_id, &connector))
    }

    fn principal_accounts<'a>(
        &'a self,
        principal_id: &'a str,
        _connectors: &'a [String],
    ) -> StoreFuture<'a, Vec<StoredAccount>> {
        let principal_id = principal_id.to_owned();
        // A new run's preflight: through the writer, as a step's account read.
        self.read_via_writer(move |conn| {
            // Sorted here, not by `ORDER BY connector`: with an equality on a bound parameter
            // and an ORDER BY on the next column of the same index, SQLite (built with STAT4,
            // as rusqlite's bundled build is) prepares the statement again whenever `?1` is
            // bound, so the cached statement was parsed and planned anew at every run (about
            // 80 000 instructions, some 5 % of the engine's own work on a four-step run).
            let mut stmt = conn
                .prepare_cached(&principal_accounts_sql())
                .map_err(backend)?;
            let rows = stmt
                .query_map(params![principal_id], account_from_row)
                .map_err(backend)?;
            let mut accounts = rows
                .map(|row| decode_account(row.map_err(backend)?))
                .collect::<Result<Vec<_>, _>>()?;
            accounts.sort_by(|a, b| a.connector.cmp(&b.connector));
            Ok(accounts)
        })
    }

    fn insert_account(&self, a: StoredAccount) -> StoreFuture<'_, bool> {
        self.write(move |conn| {
            let n = execute_with_account(
                conn,
                &format!(
                    "INSERT OR IGNORE INTO vault_accounts ({ACCOUNT_COLUMNS}) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"
                ),
                &a,
                &[],
            )?;
            Ok(n == 1)
        })
    }

    fn replace_account(&self, a: StoredAccount, expected_rt_version: i64) -> StoreFuture<'_, bool> {
        self.write(move |conn| {
            let n = execute_with_account(
                conn,
                "UPDATE vault_accounts SET account_id = ?3, upstream_subject = ?4, granted_scopes = ?5, \
                 access_token = ?6, refresh_token = ?7, expires_at = ?8, grant_id = ?9, consented_at = ?10, \
                 status = ?11, rt_version = ?12, updated_at = ?13 \
                 WHERE principal_id = ?1 AND connector = ?2 AND rt_version = ?14",
                &a,
                &[&expected_rt_version],
            )?;
            Ok(n == 1)
        })
    }

    fn delete_account(
        &self,
        principal_id: &str,
        connector: &str,
        expected_rt_version: i64,
    ) -> StoreFuture<'_, bool> {
        let (principal_id, connector) = (principal_id.to_owned(), connector.to_owned());
        self.write(move |conn| {
            let n = conn
                .execute(
                    "DELETE FROM vault_accounts WHERE principal_id = ?1 AND connector = ?2 AND rt_version = ?3",
                    params![principal_id, connector, expected_rt_version],
                )
                .map_err(backend)?;
            Ok(n == 1)
        })
    }

    fn accounts_with_subject(
        &self,
        connector: &str,
        upstream_subject: &str,
    ) -> StoreFuture<'_, Vec<StoredAccount>> {
        let (connector, subject) = (connector.to_owned(), upstream_subject.to_owned());
        self.read(move |conn| {
            let mut stmt = conn
                .prepare(&format!(
                    "SELECT {ACCOUNT_COLUMNS} FROM vault_accounts \
                     WHERE connector = ?1 AND upstream_subject = ?2 ORDER BY principal_id"
                ))
                .map_err(backend)?;
            let rows = stmt
                .query_map(params![connector, subject], account_from_row)
                .map_err(backend)?;
            rows.map(|row| decode_account(row.map_err(backend)?))
                .collect()
        })
    }

    fn put_consent(&self, c: StoredConsent) -> StoreFuture<'_, ()> {
        self.write(move |conn| {
            let scopes = scopes_to_text(&c.scopes)?;
            conn.execute(
                "INSERT INTO vault_consents (state_hash, principal_id, connector, scopes, verifier, created_at, expires_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![c.state_hash, c.principal_id, c.connector, scopes, c.verifier.0, c.created_at, c.expires_at],
            )
            .map_err(backend)?;
            Ok(())
        })
    }

    fn take_consent(&self, state_hash: &[u8]) -> StoreFuture<'_, Option<StoredConsent>> {
        let state_hash = state_hash.to_vec();
        self.write(move |conn| {
            let found = conn
                .query_row(
                    "SELECT principal_id, connector, scopes, verifier, created_at, expires_at \
                     FROM vault_consents WHERE state_hash = ?1",
                    params![state_hash],
                    |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, String>(2)?,
                            r.get::<_, Vec<u8>>(3)?,
                            r.get::<_, i64>(4)?,
                            r.get::<_, i64>(5)?,
                        ))
                    },
                )
                .optional()
                .map_err(backend)?;
            let Some((principal_id, connector, scopes, verifier, created_at, expires_at)) = found
            else {
                return Ok(None);
            };
            conn.execute(
                "DELETE FROM vault_consents WHERE state_hash = ?1",
                params![state_hash],
            )
            .map_err(backend)?;
            Ok(Some(StoredConsent {
                state_hash,
                principal_id,
                connector,
                scopes: scopes_from_text(&scopes)?,
                verifier: Sealed(verifier),
                created_at,
                expires_at,
            }))
        })
    }

    fn purge_expired_consents(&self, now: i64) -> StoreFuture<'_, u64> {
        self.write(move |conn| {
            let n = conn
                .execute(
                    "DELETE FROM vault_consents WHERE expires_at < ?1",
                    params![now],
                )
                .map_err(backend)?;
            Ok(n as u64)
        })
    }

    fn put_provider(&self, p: StoredProvider) -> StoreFuture<'_, ()> {
        self.write(move |conn| {
            conn.execute(
                "INSERT INTO vault_providers (connector, config, client_secret, updated_at) \
                 VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (connector) DO UPDATE SET config = excluded.config, \
                 client_secret = excluded.client_secret, updated_at = excluded.updated_at",
                params![p.connector, p.config, p.client_secret.0, p.updated_at],
            )
            .map_err(backend)?;
            Ok(())
        })
    }

    fn list_providers(&self) -> StoreFuture<'_, Vec<StoredProvider>> {
        self.read(move |conn| {
            let mut stmt = conn
                .prepare(
                    "SELECT connector, config, client_secret, updated_at \
                     FROM vault_providers ORDER BY connector",
                )
                .map_err(backend)?;
            let rows = stmt
                .query_map([], |r| {
                    Ok(StoredProvider {
                        connector: r.get(0)?,
                        config: r.get(1)?,
                        client_secret: Sealed(r.get(2)?),
                        updated_at: r.get(3)?,
                    })
                })
                .map_err(backend)?;
            rows.collect::<Result<Vec<_>, _>>()
                .map_err(|e| StoreError::Corrupt(format!("vault_providers: {e}")))
        })
    }

    /// An exclusive file lock beside the database; see the `file_lock` module.
    fn refresh_lock<'a>(
        &'a self,
        principal_id: &'a str,
        connector: &'a str,
    ) -> StoreFuture<'a, RefreshLock> {
        Box::pin(super::file_lock::refresh_lock(
            self.db.path(),
            principal_id,
            connector,
        ))
    }
}

#[cfg(test)]
mod tests {
    use rusqlite::{Connection, StatementStatus};

    use super::super::store::{AccountStatus, AccountStore, Sealed, StoredAccount};
    use super::{SCHEMA, SqliteStore, principal_accounts_sql};

    fn account(principal_id: &str, connector: &str) -> StoredAccount {
        StoredAccount {
            principal_id: principal_id.into(),
            connector: connector.into(),
            account_id: format!("{principal_id}-{connector}"),
            upstream_subject: "s".into(),
            granted_scopes: vec!["api".into()],
            access_token: Sealed(vec![0]),
            refresh_token: None,
            expires_at: None,
            grant_id: "g".into(),
            consented_at: 0,
            status: AccountStatus::Active,
            rt_version: 0,
            updated_at: 0,
        }
    }

    /// The preflight's statement stays prepared across runs: binding another principal does
    /// not make SQLite parse and plan it again (as `ORDER BY connector` did, at every run).
    #[test]
    fn the_preflight_read_is_not_prepared_again_at_each_bind() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        let sql = principal_accounts_sql();
        for (principal, expected) in [("alice", 0), ("bob", 0), ("alice", 0), ("carol", 0)] {
            let mut stmt = conn.prepare_cached(&sql).unwrap();
            let rows = stmt.query_map([principal], |_| Ok(())).unwrap().count();
            assert_eq!(rows, expected);
            assert_eq!(stmt.get_status(StatementStatus::RePrepare), 0, "{sql}");
        }
    }

    /// The accounts come back sorted by connector, as before.
    #[tokio::test]
    async fn principal_accounts_are_sorted_by_connector() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("v.db")).await.unwrap();
        for (principal, connector) in [("alice", "slack"), ("bob", "jira"), ("alice", "jira")] {
            assert!(
                store
                    .insert_account(account(principal, connector))
                    .await
                    .unwrap()
            );
        }
        let accounts = store.principal_accounts("alice", &[]).await.unwrap();
        let connectors: Vec<&str> = accounts.iter().map(|a| a.connector.as_str()).collect();
        assert_eq!(connectors, ["jira", "slack"]);
    }
}
