//! [`PgAccountStore`]: the vault's accounts, pending consents and provider configurations in
//! PostgreSQL (tables as in the SQLite store, secrets as sealed `bytea`, never plaintext).
//! Every write is synchronous; the compare-and-swap of `replace_account` is one `UPDATE …
//! WHERE rt_version = $n`, the single use of `take_consent` one `DELETE … RETURNING`.
//!
//! The refresh lock of an account (`refresh_lock`) is a session advisory lock on a key derived
//! from (principal, connector), taken on a connection of its own that the guard holds: every
//! process on the database waits for it, and it goes away with the holder's session if the
//! holder dies. Waiting is bounded by `lock_timeout` ([`REFRESH_LOCK_WAIT`]).

use deadpool_postgres::GenericClient;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use super::PgDatabase;
use crate::sqlite::DbError;
use crate::vault::rows::{ACCOUNT_COLUMNS, scopes_from_text, scopes_to_text, status_from_text};
use crate::vault::{
    AccountStore, RefreshLock, Sealed, StoreError, StoreFuture, StoredAccount, StoredConsent,
    StoredProvider,
};

/// How long a refresh waits for another process's refresh of the same account.
pub const REFRESH_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// The advisory lock key of the refresh lock of (principal, connector).
fn refresh_key(principal_id: &str, connector: &str) -> i64 {
    use sha2::Digest as _;
    let digest = sha2::Sha256::new()
        .chain_update(b"chain-runtime refresh lock\0")
        .chain_update(principal_id.as_bytes())
        .chain_update(b"\0")
        .chain_update(connector.as_bytes())
        .finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(first)
}

/// A PostgreSQL-backed [`AccountStore`].
#[derive(Clone)]
pub struct PgAccountStore {
    db: PgDatabase,
}

impl std::fmt::Debug for PgAccountStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgAccountStore").finish_non_exhaustive()
    }
}

fn db(e: tokio_postgres::Error) -> StoreError {
    DbError::from(e).into()
}

fn account(row: &Row) -> Result<StoredAccount, StoreError> {
    let scopes: String = row.try_get(4).map_err(db)?;
    let status: String = row.try_get(10).map_err(db)?;
    Ok(StoredAccount {
        principal_id: row.try_get(0).map_err(db)?,
        connector: row.try_get(1).map_err(db)?,
        account_id: row.try_get(2).map_err(db)?,
        upstream_subject: row.try_get(3).map_err(db)?,
        granted_scopes: scopes_from_text(&scopes)?,
        access_token: Sealed(row.try_get(5).map_err(db)?),
        refresh_token: row
            .try_get::<_, Option<Vec<u8>>>(6)
            .map_err(db)?
            .map(Sealed),
        expires_at: row.try_get(7).map_err(db)?,
        grant_id: row.try_get(8).map_err(db)?,
        consented_at: row.try_get(9).map_err(db)?,
        status: status_from_text(&status)?,
        rt_version: row.try_get(11).map_err(db)?,
        updated_at: row.try_get(12).map_err(db)?,
    })
}

/// Runs `sql` with the account's thirteen columns bound as `$1`..`$13`, in [`ACCOUNT_COLUMNS`]
/// order, followed by `extra` (`$14`, ...). Returns the number of rows changed.
async fn execute_with_account(
    client: &impl GenericClient,
    sql: &str,
    a: &StoredAccount,
    extra: &[&(dyn ToSql + Sync)],
) -> Result<u64, StoreError> {
    let scopes = scopes_to_text(&a.granted_scopes)?;
    let refresh_token = a.refresh_token.as_ref().map(|s| s.0.as_slice());
    let status = a.status.as_str();
    let mut values: Vec<&(dyn ToSql + Sync)> = vec![
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
    let stmt = client.prepare_cached(sql).await.map_err(db)?;
    client.execute(&stmt, &values).await.map_err(db)
}

impl PgAccountStore {
    /// Connects to the database at `url` (see [`PgDatabase::connect`]) and opens the store.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        Ok(Self::on(PgDatabase::connect(url).await?))
    }

    /// Opens the store on `db`.
    pub fn on(db: PgDatabase) -> Self {
        Self { db }
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        Ok(self.db.client().await?)
    }

    async fn query(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, StoreError> {
        let client = self.client().await?;
        let stmt = client.prepare_cached(sql).await.map_err(db)?;
        client.query(&stmt, params).await.map_err(db)
    }

    async fn execute(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let stmt = client.prepare_cached(sql).await.map_err(db)?;
        client.execute(&stmt, params).await.map_err(db)
    }
}

impl AccountStore for PgAccountStore {
    fn init_key_check(&self, candidate: Sealed) -> StoreFuture<'_, Sealed> {
        Box::pin(async move {
            self.execute(
                "INSERT INTO vault_meta (key, value) VALUES ('key_check', $1) \
                 ON CONFLICT (key) DO NOTHING",
                &[&candidate.0],
            )
            .await?;
            let rows = self
                .query("SELECT value FROM vault_meta WHERE key = 'key_check'", &[])
                .await?;
            let row = rows
                .first()
                .ok_or_else(|| StoreError::Corrupt("vault_meta has no key check".into()))?;
            Ok(Sealed(row.try_get(0).map_err(db)?))
        })
    }

    fn get_account(
        &self,
        principal_id: &str,
        connector: &str,
    ) -> StoreFuture<'_, Option<StoredAccount>> {
        let (principal_id, connector) = (principal_id.to_owned(), connector.to_owned());
        Box::pin(async move {
            let sql = format!(
                "SELECT {ACCOUNT_COLUMNS} FROM vault_accounts WHERE principal_id = $1 AND connector = $2"
            );
            let rows = self.query(&sql, &[&principal_id, &connector]).await?;
            rows.first().map(account).transpose()
        })
    }

    fn insert_account(&self, a: StoredAccount) -> StoreFuture<'_, bool> {
        Box::pin(async move {
            let client = self.client().await?;
            let sql = format!(
                "INSERT INTO vault_accounts ({ACCOUNT_COLUMNS}) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
                 ON CONFLICT DO NOTHING"
            );
            Ok(execute_with_account(&client, &sql, &a, &[]).await? == 1)
        })
    }

    fn replace_account(&self, a: StoredAccount, expected_rt_version: i64) -> StoreFuture<'_, bool> {
        Box::pin(async move {
            let client = self.client().await?;
            let n = execute_with_account(
                &client,
                "UPDATE vault_accounts SET account_id = $3, upstream_subject = $4, granted_scopes = $5, \
                 access_token = $6, refresh_token = $7, expires_at = $8, grant_id = $9, consented_at = $10, \
                 status = $11, rt_version = $12, updated_at = $13 \
                 WHERE principal_id = $1 AND connector = $2 AND rt_version = $14",
                &a,
                &[&expected_rt_version],
            )
            .await?;
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
        Box::pin(async move {
            let n = self
                .execute(
                    "DELETE FROM vault_accounts WHERE principal_id = $1 AND connector = $2 AND rt_version = $3",
                    &[&principal_id, &connector, &expected_rt_version],
                )
                .await?;
            Ok(n == 1)
        })
    }

    fn accounts_with_subject(
        &self,
        connector: &str,
        upstream_subject: &str,
    ) -> StoreFuture<'_, Vec<StoredAccount>> {
        let (connector, subject) = (connector.to_owned(), upstream_subject.to_owned());
        Box::pin(async move {
            let sql = format!(
                "SELECT {ACCOUNT_COLUMNS} FROM vault_accounts \
                 WHERE connector = $1 AND upstream_subject = $2 ORDER BY principal_id"
            );
            let rows = self.query(&sql, &[&connector, &subject]).await?;
            rows.iter().map(account).collect()
        })
    }

    fn put_consent(&self, c: StoredConsent) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let scopes = scopes_to_text(&c.scopes)?;
            self.execute(
                "INSERT INTO vault_consents (state_hash, principal_id, connector, scopes, verifier, created_at, expires_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
                &[&c.state_hash, &c.principal_id, &c.connector, &scopes, &c.verifier.0, &c.created_at, &c.expires_at],
            )
            .await?;
            Ok(())
        })
    }

    fn take_consent(&self, state_hash: &[u8]) -> StoreFuture<'_, Option<StoredConsent>> {
        let state_hash = state_hash.to_vec();
        Box::pin(async move {
            let rows = self
                .query(
                    "DELETE FROM vault_consents WHERE state_hash = $1 \
                     RETURNING principal_id, connector, scopes, verifier, created_at, expires_at",
                    &[&state_hash],
                )
                .await?;
            let Some(r) = rows.first() else {
                return Ok(None);
            };
            let scopes: String = r.try_get(2).map_err(db)?;
            Ok(Some(StoredConsent {
                state_hash,
                principal_id: r.try_get(0).map_err(db)?,
                connector: r.try_get(1).map_err(db)?,
                scopes: scopes_from_text(&scopes)?,
                verifier: Sealed(r.try_get(3).map_err(db)?),
                created_at: r.try_get(4).map_err(db)?,
                expires_at: r.try_get(5).map_err(db)?,
            }))
        })
    }

    fn purge_expired_consents(&self, now: i64) -> StoreFuture<'_, u64> {
        Box::pin(async move {
            self.execute("DELETE FROM vault_consents WHERE expires_at < $1", &[&now])
                .await
        })
    }

    fn put_provider(&self, p: StoredProvider) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            self.execute(
                "INSERT INTO vault_providers (connector, config, client_secret, updated_at) \
                 VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (connector) DO UPDATE SET config = excluded.config, \
                 client_secret = excluded.client_secret, updated_at = excluded.updated_at",
                &[&p.connector, &p.config, &p.client_secret.0, &p.updated_at],
            )
            .await?;
            Ok(())
        })
    }

    fn refresh_lock<'a>(
        &'a self,
        principal_id: &'a str,
        connector: &'a str,
    ) -> StoreFuture<'a, RefreshLock> {
        Box::pin(async move {
            let session = self.db.dedicated().await?;
            let wait = format!("SET lock_timeout = {}", REFRESH_LOCK_WAIT.as_millis());
            session.batch_execute(&wait).await.map_err(db)?;
            let key = refresh_key(principal_id, connector);
            session
                .execute("SELECT pg_advisory_lock($1)", &[&key])
                .await
                .map_err(|e| {
                    StoreError::Backend(format!(
                        "waiting for another process's refresh of this account failed \
                         (gave up after {} s?): {}",
                        REFRESH_LOCK_WAIT.as_secs(),
                        DbError::from(e)
                    ))
                })?;
            Ok(RefreshLock::holding(session))
        })
    }

    fn list_providers(&self) -> StoreFuture<'_, Vec<StoredProvider>> {
        Box::pin(async move {
            let rows = self
                .query(
                    "SELECT connector, config, client_secret, updated_at \
                     FROM vault_providers ORDER BY connector",
                    &[],
                )
                .await?;
            rows.iter()
                .map(|r| {
                    Ok(StoredProvider {
                        connector: r.try_get(0).map_err(db)?,
                        config: r.try_get(1).map_err(db)?,
                        client_secret: Sealed(r.try_get(2).map_err(db)?),
                        updated_at: r.try_get(3).map_err(db)?,
                    })
                })
                .collect()
        })
    }
}
