//! A connection of the group-commit writer's (see [`super::writer`]), with the statements it
//! prepared, and the WAL flush.

use tokio_postgres::{Client, NoTls, Statement};

use crate::sqlite::DbError;

/// A connection of the writer's, with the statements it prepared. A batch's transactions
/// commit without waiting for the WAL flush (`synchronous_commit = off` for the session); a
/// flusher's connection waits for it.
pub(crate) struct Conn {
    pub(crate) client: Client,
    /// Statements prepared on this connection, by the address and length of their (static)
    /// text.
    prepared: Vec<((usize, usize), Statement)>,
}

impl Conn {
    /// Connects a batch connection; the connection is driven by a task on the current runtime.
    pub(crate) async fn open(config: &tokio_postgres::Config) -> Result<Self, DbError> {
        Self::connect(config, "SET synchronous_commit = off").await
    }

    /// Connects a flusher's connection (see [`Conn::flush_wal`]).
    pub(crate) async fn open_flusher(config: &tokio_postgres::Config) -> Result<Self, DbError> {
        Self::connect(config, "SET synchronous_commit = on").await
    }

    async fn connect(config: &tokio_postgres::Config, setup: &str) -> Result<Self, DbError> {
        // Every statement of the writer's reaches a few rows by their primary keys: a plan
        // made while a table was small (a sequential scan, a hash join over one) would scan
        // the whole table on every batch as it grows. And each is planned once per
        // connection (generic plans: the same index lookups whatever the array lengths),
        // not five times and again after every invalidation by the plan cache's custom plans.
        let setup =
            format!("{setup}; SET enable_seqscan = off; SET plan_cache_mode = force_generic_plan");
        let (client, connection) = config.connect(NoTls).await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "a PostgreSQL writer connection ended");
            }
        });
        client.batch_execute(&setup).await?;
        Ok(Self {
            client,
            prepared: Vec::new(),
        })
    }

    pub(crate) async fn prepare(
        &mut self,
        sql: &'static str,
    ) -> Result<Statement, tokio_postgres::Error> {
        // A handful of texts per connection: found by address, never hashed (a text at two
        // addresses is prepared twice).
        let key = (sql.as_ptr() as usize, sql.len());
        if let Some((_, s)) = self.prepared.iter().find(|(k, _)| *k == key) {
            return Ok(s.clone());
        }
        let s = self.client.prepare(sql).await?;
        self.prepared.push((key, s.clone()));
        Ok(s)
    }

    /// Waits, on a flusher's connection ([`Conn::open_flusher`]), until the WAL is on disk up
    /// to at least every commit made before: one statement in a transaction of its own that
    /// takes a transaction id and writes a WAL record (a non-transactional logical message, no
    /// table), so its synchronous commit must flush that record and everything before it.
    pub(crate) async fn flush_wal(&mut self) -> Result<(), DbError> {
        let flush = self.prepare(FLUSH).await?;
        self.client.execute(&flush, &[]).await?;
        Ok(())
    }
}

/// See [`Conn::flush_wal`].
const FLUSH: &str = "SELECT txid_current(), pg_logical_emit_message(false, 'chain-runtime', '')";

/// [`FLUSH`] on a batch connection (`synchronous_commit = off` for the session): a
/// transaction of its own (no `BEGIN`: the statement commits at once) that turns
/// `synchronous_commit` on for itself, so its commit waits until the WAL is on disk up to its
/// own record, which follows every commit before it. Sent in the same round trip as a batch's
/// `COMMIT`, after it: the chain head's lock is released at that `COMMIT`, before the fsync.
pub(crate) const FLUSH_AFTER: &str = "SELECT set_config('synchronous_commit', 'on', true), \
     txid_current(), pg_logical_emit_message(false, 'chain-runtime', '')";
