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
        // A batch holds the chain head from its first flight to its `COMMIT`, across a round
        // trip to this process (the records are sealed here). A process that stops in between
        // (SIGSTOP, a frozen machine, a lost network) would hold it, and so stop every other
        // worker's appends, until it came back: the server ends such a session instead.
        let setup = format!(
            "{setup}; SET enable_seqscan = off; SET plan_cache_mode = force_generic_plan; \
             SET idle_in_transaction_session_timeout = {IDLE_IN_BATCH_MS}"
        );
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

/// How long (milliseconds) the server lets a writer's session sit inside a transaction
/// without a statement before it ends the session, rolling the batch back and releasing the
/// chain head (the writer then opens a new session; the batch's units fail as on any lost
/// connection). A batch is idle only while this process seals its records, normally well
/// under a millisecond; a third of the default lease TTL ([`crate::journal::LEASE_TTL`]), so
/// other workers' appends resume long before a stopped worker's runs can be recovered.
pub(crate) const IDLE_IN_BATCH_MS: u32 = 10_000;

/// See [`Conn::flush_wal`].
const FLUSH: &str = "SELECT txid_current(), pg_logical_emit_message(false, 'chain-runtime', '')";

/// [`FLUSH`] on a batch connection (`synchronous_commit = off` for the session): a
/// transaction of its own (no `BEGIN`: the statement commits at once) that turns
/// `synchronous_commit` on for itself, so its commit waits until the WAL is on disk up to its
/// own record, which follows every commit before it. Sent in the same round trip as a batch's
/// `COMMIT`, after it: the chain head's lock is released at that `COMMIT`, before the fsync.
pub(crate) const FLUSH_AFTER: &str = "SELECT set_config('synchronous_commit', 'on', true), \
     txid_current(), pg_logical_emit_message(false, 'chain-runtime', '')";

#[cfg(all(test, feature = "test-util"))]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    /// A writer's session runs with [`IDLE_IN_BATCH_MS`]; a session stopped inside a
    /// transaction (its timeout shortened here) is ended by the server, its row lock goes to
    /// the next session, and the client sees the connection closed (which makes the writer
    /// open a new one).
    #[tokio::test]
    async fn a_writer_session_stopped_inside_a_batch_is_ended_by_the_server() {
        let url = crate::test_util::postgres::database_url().await;
        let config: tokio_postgres::Config = url.parse().unwrap();
        let conn = Conn::open(&config).await.unwrap();
        let timeout: String = conn
            .client
            .query_one("SHOW idle_in_transaction_session_timeout", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(timeout, format!("{}s", IDLE_IN_BATCH_MS / 1000));

        conn.client
            .batch_execute("CREATE TABLE head (id int PRIMARY KEY); INSERT INTO head VALUES (1)")
            .await
            .unwrap();
        conn.client
            .batch_execute(
                "SET idle_in_transaction_session_timeout = 200; \
                 BEGIN; SELECT id FROM head FOR UPDATE",
            )
            .await
            .unwrap();
        let (other, connection) = config.connect(NoTls).await.unwrap();
        tokio::spawn(connection);
        other
            .batch_execute("SET lock_timeout = '30s'; SELECT id FROM head FOR UPDATE")
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !conn.client.is_closed() {
            assert!(
                Instant::now() < deadline,
                "the stopped session is still open"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
