//! The PostgreSQL backend (feature `postgres`): the run journal, the audit trail and the
//! vault's account store in one PostgreSQL database, shared by any number of worker processes
//! on any number of machines.
//!
//! - [`PgDatabase`]: a connection pool (`deadpool-postgres` over `tokio-postgres`: prepared
//!   statements cached per connection, no ORM) and the database's identity. Connecting runs
//!   the versioned migrations ([`SCHEMA_VERSION`]) and refuses a database whose schema is
//!   newer than this build.
//! - [`PgJournal`]: [`crate::journal::RunJournal`]. A unit of work (a step's journal writes
//!   and its audit records) is atomic: the lease check (the fencing token compared in the
//!   transaction under the run's lease lock, a transaction-level advisory lock taken shared,
//!   so a concurrent claim, which takes it exclusively, waits for the commit), the journal
//!   writes, then the audit records sealed on the chain head. The units a process has queued
//!   at a moment commit together (group commit, one transaction, one head lock, two pipelined
//!   round trips; a unit whose lease is lost fails alone), and units commit in queue order,
//!   also across batches and failures, so the engine need not wait for deferred ones (see the
//!   `writer` module). The batch commits with `synchronous_commit = off`, so the chain head's
//!   row lock is released at commit, not after the fsync; a synchronous unit is answered only
//!   after a WAL flush that follows the commit (flushes of many batches and workers share
//!   fsyncs), a deferred one at once (made durable by the next flush).
//! - [`PgAuditStore`]: [`crate::audit::AuditStore`]. Every append locks the chain's head row
//!   (`audit_head`, `SELECT … FOR UPDATE`), so appends of every worker form one linear chain;
//!   the head row is also the witness a truncated tail is detected with. Appends go through
//!   the same writer as units of work.
//! - [`PgAccountStore`]: [`crate::vault::AccountStore`]; secrets only ever sealed (`bytea`).
//!
//! Leases: see [`PgJournal`] for how a worker's death is noticed (its session advisory lock
//! goes away with its connection) and how leases expire without a heartbeat.

mod audit;
mod batch;
mod conn;
mod flight;
mod journal;
mod leases;
mod migrate;
mod ops;
mod order;
mod runs;
mod vault;
mod writer;

use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex, Weak};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::NoTls;
use tokio_postgres::error::SqlState;

pub use audit::PgAuditStore;
pub use journal::PgJournal;
pub use migrate::SCHEMA_VERSION;
pub use vault::{PgAccountStore, REFRESH_LOCK_WAIT};
pub use writer::MAX_BATCH;

use crate::sqlite::{DatabaseId, DbError, WriterStats};

/// How many connections one [`PgDatabase`] keeps at most.
pub const POOL_SIZE: usize = 16;

/// How long (milliseconds) the server lets a session of the runtime's sit inside a
/// transaction without a statement before it ends the session, rolling the transaction back
/// and releasing its locks. An append holds the audit chain's head from its read to its
/// `COMMIT`, across round trips to the process (the records are sealed there); a process that
/// stops in between (SIGSTOP, a frozen machine, a lost network) would otherwise hold it, and so
/// stop every other worker's appends, until it came back. The runtime's transactions are idle
/// only while the process works between statements, normally well under a millisecond; a
/// third of the default lease TTL ([`crate::journal::LEASE_TTL`]), so other workers' appends
/// resume long before a stopped worker's runs can be recovered.
pub const IDLE_IN_TRANSACTION_MS: u32 = 10_000;

/// `config` with the settings every session of the runtime's starts with
/// ([`IDLE_IN_TRANSACTION_MS`]); options given in the URL come after them, so they win.
fn session_config(mut config: tokio_postgres::Config) -> tokio_postgres::Config {
    let given = config.get_options().unwrap_or_default().to_owned();
    let options =
        format!("-c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_MS} {given}");
    config.options(options.trim_end());
    config
}

impl From<tokio_postgres::Error> for DbError {
    fn from(e: tokio_postgres::Error) -> Self {
        let constraint = matches!(
            e.code(),
            Some(c) if *c == SqlState::UNIQUE_VIOLATION
                || *c == SqlState::NOT_NULL_VIOLATION
                || *c == SqlState::CHECK_VIOLATION
                || *c == SqlState::FOREIGN_KEY_VIOLATION
        );
        let message = match e.as_db_error() {
            Some(db) => format!("PostgreSQL: {}: {}", db.severity(), db.message()),
            None => format!("PostgreSQL: {e}"),
        };
        Self {
            message,
            constraint,
        }
    }
}

impl From<deadpool_postgres::PoolError> for DbError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match e {
            deadpool_postgres::PoolError::Backend(e) => e.into(),
            other => DbError::other(format!("PostgreSQL connection pool: {other}")),
        }
    }
}

struct Inner {
    id: DatabaseId,
    pool: Pool,
    config: tokio_postgres::Config,
    /// `host:port/dbname`, for messages (never the password).
    label: String,
    /// Group commit of units of work (see [`writer`]).
    writer: writer::Writer,
}

/// One PostgreSQL database: the pool every store on it shares and its identity (equal for
/// every handle on the same URL in a process). Cheap to clone.
#[derive(Clone)]
pub struct PgDatabase {
    inner: Arc<Inner>,
}

impl fmt::Debug for PgDatabase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgDatabase")
            .field("database", &self.inner.label)
            .finish_non_exhaustive()
    }
}

/// Databases open in this process, by URL.
static OPEN: Mutex<Vec<(String, Weak<Inner>)>> = Mutex::new(Vec::new());

fn label(config: &tokio_postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let db = config.get_dbname().unwrap_or("(default)");
    format!("{host}:{port}/{db}")
}

impl PgDatabase {
    /// Connects to the database at `url` (`postgres://user[:password]@host[:port]/dbname`,
    /// or the key=value form), creating or migrating the runtime's tables, or returns the
    /// handle already open in this process for the same URL. Fails when the database's
    /// schema is newer than this build ([`SCHEMA_VERSION`]). TLS is not negotiated: reach the
    /// database over a local network, a Unix socket or a TLS-terminating proxy.
    pub async fn connect(url: &str) -> Result<Self, DbError> {
        Self::open(url, true).await
    }

    /// Like [`PgDatabase::connect`], but creates and migrates nothing: fails unless the
    /// database already has the runtime's tables at a version this build knows (for tools
    /// that inspect a database, such as `chainctl`).
    pub async fn connect_existing(url: &str) -> Result<Self, DbError> {
        Self::open(url, false).await
    }

    async fn open(url: &str, create: bool) -> Result<Self, DbError> {
        if let Some(inner) = Self::lookup(url) {
            return Ok(Self { inner });
        }
        let config = tokio_postgres::Config::from_str(url)
            .map(session_config)
            .map_err(|e| DbError::other(format!("not a PostgreSQL connection URL: {e}")))?;
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .build()
            .map_err(|e| DbError::other(format!("PostgreSQL connection pool: {e}")))?;
        let label = label(&config);
        let db = Self {
            inner: Arc::new(Inner {
                id: DatabaseId::fresh(),
                pool,
                config,
                label,
                writer: writer::Writer::default(),
            }),
        };
        {
            let mut client = db.client().await.map_err(|e| {
                DbError::other(format!(
                    "cannot connect to PostgreSQL at {}: {e}",
                    db.inner.label
                ))
            })?;
            if create {
                migrate::migrate(&mut client).await?;
            } else {
                migrate::existing(&client).await?;
            }
        }
        let mut open = OPEN
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        open.retain(|(_, weak)| weak.strong_count() > 0);
        if let Some(inner) = open
            .iter()
            .find(|(u, _)| u == url)
            .and_then(|(_, weak)| weak.upgrade())
        {
            return Ok(Self { inner });
        }
        open.push((url.to_owned(), Arc::downgrade(&db.inner)));
        Ok(db)
    }

    fn lookup(url: &str) -> Option<Arc<Inner>> {
        OPEN.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .find(|(u, _)| u == url)
            .and_then(|(_, weak)| weak.upgrade())
    }

    /// This database's identity: a journal and an audit store with the same id commit a
    /// unit's journal writes and audit records in one transaction.
    pub fn id(&self) -> DatabaseId {
        self.inner.id
    }

    /// `host:port/dbname` (no credentials).
    pub fn label(&self) -> &str {
        &self.inner.label
    }

    /// How many units of work this process's writer committed, in how many transactions, and
    /// how many WAL flushes it waited for (one per batch holding a synchronous unit).
    pub fn writer_stats(&self) -> WriterStats {
        self.inner.writer.stats()
    }

    /// Commits `job` with the other units queued at the moment (see [`writer`]).
    pub(crate) async fn write(
        &self,
        lease: Option<&crate::journal::Lease>,
        ops: Vec<ops::Op>,
        audit: Vec<crate::audit::seal::Presealed>,
        sync: bool,
    ) -> Result<crate::journal::Committed, crate::journal::JournalError> {
        let (job, answer) = writer::Job::new(lease, ops, audit, sync);
        self.inner.writer.submit(&self.inner.config, job);
        writer::answer(answer).await
    }

    /// A pooled connection.
    pub(crate) async fn client(&self) -> Result<deadpool_postgres::Object, DbError> {
        Ok(self.inner.pool.get().await?)
    }

    /// Waits until the WAL is on disk up to at least every commit this connection made: one
    /// statement in a synchronous transaction of its own that writes a WAL record (a
    /// non-transactional logical message, no table) and so must flush it, and everything
    /// before it, at commit.
    pub(crate) async fn flush_wal(client: &deadpool_postgres::Object) -> Result<(), DbError> {
        client
            .batch_execute(
                "SET synchronous_commit = on; \
                 SELECT txid_current(), pg_logical_emit_message(false, 'chain-runtime', '')",
            )
            .await?;
        Ok(())
    }

    /// A connection of its own, outside the pool, that calls `on_notify` for every
    /// notification (`LISTEN`) it receives.
    pub(crate) async fn listening(
        &self,
        on_notify: impl Fn() + Send + 'static,
    ) -> Result<tokio_postgres::Client, DbError> {
        let (client, mut connection) = self.inner.config.connect(NoTls).await?;
        tokio::spawn(async move {
            loop {
                match futures::future::poll_fn(|cx| connection.poll_message(cx)).await {
                    Some(Ok(tokio_postgres::AsyncMessage::Notification(_))) => on_notify(),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "a listening PostgreSQL connection ended");
                        break;
                    }
                    None => break,
                }
            }
        });
        Ok(client)
    }

    /// A connection of its own, outside the pool (for session state such as advisory locks
    /// that must live exactly as long as a handle).
    pub(crate) async fn dedicated(&self) -> Result<tokio_postgres::Client, DbError> {
        let (client, connection) = self.inner.config.connect(NoTls).await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "a dedicated PostgreSQL connection ended");
            }
        });
        Ok(client)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every session starts with the runtime's settings; options given in the URL come after
    /// them (PostgreSQL applies `-c` settings in order: the URL's win).
    #[test]
    fn options_given_in_the_url_come_after_the_runtimes() {
        let runtime = format!("-c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_MS}");
        let plain = session_config("postgres://u@localhost/db".parse().unwrap());
        assert_eq!(plain.get_options(), Some(runtime.as_str()));
        let given = session_config(
            "postgres://u@localhost/db?options=-c%20idle_in_transaction_session_timeout%3D1s"
                .parse()
                .unwrap(),
        );
        assert_eq!(
            given.get_options(),
            Some(format!("{runtime} -c idle_in_transaction_session_timeout=1s").as_str())
        );
    }
}
