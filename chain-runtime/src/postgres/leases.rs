//! Run leases in PostgreSQL, for [`super::PgJournal`]: the same `run_leases` rows and rules as
//! the SQLite journal (see `crate::journal`): a claim is a compare-and-set on the run's row
//! (`SELECT … FOR UPDATE`, then the token bumped), free when released, expired or held by a
//! holder that is gone; the token is never reset; every write checks it in its transaction.
//!
//! A holder is one journal handle. It holds a session-level advisory lock on its key on a
//! connection of its own for as long as it lives; PostgreSQL drops the lock when that
//! connection ends (the handle dropped, the process killed, the machine gone and its TCP
//! session timed out). A claimer that can take the lock (`pg_try_advisory_xact_lock`) knows
//! the holder is gone; otherwise it waits for the lease to expire (`LEASE_TTL` after the
//! holder's last heartbeat), which also covers a holder that is alive but partitioned or
//! paused.

use deadpool_postgres::GenericClient;

use crate::journal::leases::ttl_ms;
use crate::journal::{JournalError, Lease};
use crate::sqlite::DbError;

/// The holder id's prefix; the rest is its advisory lock key.
const PREFIX: &str = "pg-holder-";

/// This journal handle's identity and the session that proves it alive.
pub(crate) struct Holder {
    pub(crate) id: String,
    key: i64,
    /// Holds the advisory lock on `key`; dropping it ends the session and frees the lock.
    _session: tokio_postgres::Client,
}

impl Holder {
    /// A new holder, locking its key on `session` (a connection of its own).
    pub(crate) async fn new(session: tokio_postgres::Client) -> Result<Self, JournalError> {
        let key: i64 = rand::random();
        session
            .execute("SELECT pg_advisory_lock($1)", &[&key])
            .await
            .map_err(DbError::from)?;
        Ok(Self {
            id: format!("{PREFIX}{key}"),
            key,
            _session: session,
        })
    }
}

async fn is_gone(
    tx: &impl GenericClient,
    holder: &Holder,
    other: &str,
) -> Result<bool, JournalError> {
    if other == holder.id {
        return Ok(false);
    }
    let Some(key) = other
        .strip_prefix(PREFIX)
        .and_then(|k| k.parse::<i64>().ok())
    else {
        // Not a holder this backend writes: only expiry frees it.
        return Ok(false);
    };
    if key == holder.key {
        return Ok(false);
    }
    let row = tx
        .query_one("SELECT pg_try_advisory_xact_lock($1)", &[&key])
        .await
        .map_err(DbError::from)?;
    Ok(row.try_get::<_, bool>(0).map_err(DbError::from)?)
}

/// How long a claim watches a live-looking holder: a handle dropped a moment ago still holds
/// its lock until PostgreSQL has seen its session end.
const GONE_GRACE: std::time::Duration = std::time::Duration::from_millis(500);

/// Whether `other` is gone, watching it for up to [`GONE_GRACE`].
async fn is_gone_soon(
    tx: &impl GenericClient,
    holder: &Holder,
    other: &str,
) -> Result<bool, JournalError> {
    let deadline = tokio::time::Instant::now() + GONE_GRACE;
    loop {
        if is_gone(tx, holder, other).await? {
            return Ok(true);
        }
        if other == holder.id || tokio::time::Instant::now() >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
}

/// Claims `run_id` for `owner` in the open transaction.
pub(crate) async fn claim(
    tx: &impl GenericClient,
    holder: &Holder,
    run_id: &str,
    owner: &str,
    now_ms: i64,
) -> Result<Lease, JournalError> {
    let expires = now_ms.saturating_add(ttl_ms());
    let current = tx
        .query_opt(
            "SELECT owner, holder, token, expires_ms FROM run_leases WHERE run_id = $1 FOR UPDATE",
            &[&run_id],
        )
        .await
        .map_err(DbError::from)?;
    let token: i64 = match current {
        None => {
            let inserted = tx
                .execute(
                    "INSERT INTO run_leases (run_id, owner, holder, token, expires_ms) \
                     VALUES ($1, $2, $3, 1, $4) ON CONFLICT (run_id) DO NOTHING",
                    &[&run_id, &owner, &holder.id, &expires],
                )
                .await
                .map_err(DbError::from)?;
            if inserted == 0 {
                return Err(JournalError::Claimed {
                    run_id: run_id.to_owned(),
                    owner: "another worker".to_owned(),
                });
            }
            1
        }
        Some(row) => {
            let held_by: String = row.try_get(0).map_err(DbError::from)?;
            let held_in: String = row.try_get(1).map_err(DbError::from)?;
            let token: i64 = row.try_get(2).map_err(DbError::from)?;
            let expires_ms: i64 = row.try_get(3).map_err(DbError::from)?;
            let free = expires_ms == 0
                || expires_ms < now_ms
                || is_gone_soon(tx, holder, &held_in).await?;
            if !free {
                return Err(JournalError::Claimed {
                    run_id: run_id.to_owned(),
                    owner: held_by,
                });
            }
            tx.execute(
                "UPDATE run_leases SET owner = $2, holder = $3, token = $4, expires_ms = $5 \
                 WHERE run_id = $1",
                &[&run_id, &owner, &holder.id, &(token + 1), &expires],
            )
            .await
            .map_err(DbError::from)?;
            token + 1
        }
    };
    Ok(Lease {
        run_id: run_id.to_owned(),
        owner: owner.to_owned(),
        token: u64::try_from(token).unwrap_or(0),
    })
}

/// Fails with [`JournalError::LeaseLost`] unless `lease` is the run's current lease. Locks the
/// lease row for share: a concurrent claim waits until this transaction ends.
pub(crate) async fn check(tx: &impl GenericClient, lease: &Lease) -> Result<(), JournalError> {
    let token = i64::try_from(lease.token).unwrap_or(-1);
    let stmt = tx
        .prepare_cached("SELECT 1 FROM run_leases WHERE run_id = $1 AND token = $2 AND expires_ms > 0 FOR SHARE")
        .await
        .map_err(DbError::from)?;
    match tx
        .query_opt(&stmt, &[&lease.run_id, &token])
        .await
        .map_err(DbError::from)?
    {
        Some(_) => Ok(()),
        None => Err(JournalError::LeaseLost(lease.run_id.clone())),
    }
}

/// Releases `lease` if it is still the current one (the row and its token stay).
pub(crate) async fn release(
    client: &impl GenericClient,
    lease: &Lease,
) -> Result<(), JournalError> {
    let token = i64::try_from(lease.token).unwrap_or(-1);
    client
        .execute(
            "UPDATE run_leases SET expires_ms = 0 WHERE run_id = $1 AND token = $2",
            &[&lease.run_id, &token],
        )
        .await
        .map_err(DbError::from)?;
    Ok(())
}

/// Renews every live lease of `holder`.
pub(crate) async fn renew(
    client: &impl GenericClient,
    holder: &str,
    now_ms: i64,
) -> Result<(), JournalError> {
    client
        .execute(
            "UPDATE run_leases SET expires_ms = $2 WHERE holder = $1 AND expires_ms > 0",
            &[&holder, &now_ms.saturating_add(ttl_ms())],
        )
        .await
        .map_err(DbError::from)?;
    Ok(())
}
