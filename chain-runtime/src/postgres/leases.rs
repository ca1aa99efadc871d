//! Run leases in PostgreSQL, for [`super::PgJournal`]: the same `run_leases` rows and rules as
//! the SQLite journal (see `crate::journal`): a claim is a compare-and-set on the run's row
//! (`SELECT … FOR UPDATE`, then the token bumped, under the run's lease lock, see
//! [`LOCK_CLASS`]), free when released, expired or held by a holder that is gone; the token is
//! never reset; every write checks it in its transaction (see `super::batch`).
//!
//! A holder is one journal handle. It holds a session-level advisory lock on its key on a
//! connection of its own for as long as it lives; PostgreSQL drops the lock when that
//! connection ends (the handle dropped, the process killed, the machine gone and its TCP
//! session timed out). A claimer that can take the lock (`pg_try_advisory_xact_lock`) knows
//! the holder is gone; otherwise it waits for the lease to expire (`LEASE_TTL` after the
//! holder's last heartbeat), which also covers a holder that is alive but partitioned or
//! paused.

use deadpool_postgres::GenericClient;

use crate::journal::{JournalError, Lease};
use crate::sqlite::DbError;

/// The first key of a run's lease lock, a transaction-level advisory lock on
/// `(LOCK_CLASS, hashtext(run_id))` (a key space apart from the holders' single-key locks).
/// Every transaction that writes under a lease holds its run's lock shared from before it
/// reads the fencing token until it commits; a claim, which moves the token, holds it
/// exclusively. So a claim waits for the writes under the lease it supersedes to commit, and a
/// write that begins after the claim reads the new token and is refused. The lock lives in the
/// server's lock table only: no row is locked or written for it. Two runs whose ids hash alike
/// share a lock, which costs a wait, never a wrong answer.
pub(crate) const LOCK_CLASS: i32 = 0x6368_6c73;

/// Takes `run_id`'s lease lock exclusively (see [`LOCK_CLASS`]) in the open transaction,
/// waiting for the writes under its current lease to commit.
async fn lock_exclusive(tx: &impl GenericClient, run_id: &str) -> Result<(), JournalError> {
    tx.execute(
        "SELECT pg_advisory_xact_lock($1, hashtext($2))",
        &[&LOCK_CLASS, &run_id],
    )
    .await
    .map_err(DbError::from)?;
    Ok(())
}

/// Like [`lock_exclusive`] without waiting: whether the lock was free.
async fn try_lock_exclusive(tx: &impl GenericClient, run_id: &str) -> Result<bool, JournalError> {
    let row = tx
        .query_one(
            "SELECT pg_try_advisory_xact_lock($1, hashtext($2))",
            &[&LOCK_CLASS, &run_id],
        )
        .await
        .map_err(DbError::from)?;
    Ok(row.try_get::<_, bool>(0).map_err(DbError::from)?)
}

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

/// Claims `run_id` for `owner` in the open transaction, for `ttl_ms`; also tells whether the
/// previous lease was taken back without a release (it expired, or its holder is gone).
pub(crate) async fn claim(
    tx: &impl GenericClient,
    holder: &Holder,
    run_id: &str,
    owner: &str,
    now_ms: i64,
    ttl_ms: i64,
) -> Result<(Lease, bool), JournalError> {
    let expires = now_ms.saturating_add(ttl_ms);
    lock_exclusive(tx, run_id).await?;
    let current = tx
        .query_opt(
            "SELECT owner, holder, token, expires_ms FROM run_leases WHERE run_id = $1 FOR UPDATE",
            &[&run_id],
        )
        .await
        .map_err(DbError::from)?;
    let mut recovered = false;
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
            recovered = expires_ms != 0;
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
    let lease = Lease {
        run_id: run_id.to_owned(),
        owner: owner.to_owned(),
        token: u64::try_from(token).unwrap_or(0),
    };
    Ok((lease, recovered))
}

/// Renews every live lease of `holder`, `ttl_ms` ahead.
pub(crate) async fn renew(
    client: &impl GenericClient,
    holder: &str,
    now_ms: i64,
    ttl_ms: i64,
) -> Result<(), JournalError> {
    client
        .execute(
            // Rows a write or a claim has locked are skipped (renewed next time): the heartbeat
            // never waits, so it can be in no lock cycle.
            "UPDATE run_leases SET expires_ms = $2 WHERE run_id IN (SELECT run_id FROM \
             run_leases WHERE holder = $1 AND expires_ms > 0 ORDER BY run_id \
             FOR UPDATE SKIP LOCKED)",
            &[&holder, &now_ms.saturating_add(ttl_ms)],
        )
        .await
        .map_err(DbError::from)?;
    Ok(())
}

/// The channel every submit and release notifies, and every journal listens on.
pub(crate) const CHANNEL: &str = "chain_runnable";

/// Tells every listening worker (at commit) that a run may have become runnable.
pub(crate) async fn notify(tx: &impl GenericClient) -> Result<(), JournalError> {
    tx.execute("SELECT pg_notify($1, '')", &[&CHANNEL])
        .await
        .map_err(DbError::from)?;
    Ok(())
}

/// Renews one lease if it is still current; returns false only when another claim superseded
/// it (a lease its holder released is not renewed, and not superseded either). Never waits: a
/// lease row another transaction has locked is only read (and renewed next time).
pub(crate) async fn renew_one(
    tx: &impl GenericClient,
    lease: &Lease,
    expires_ms: i64,
) -> Result<bool, JournalError> {
    let token = i64::try_from(lease.token).unwrap_or(-1);
    let locked = tx
        .query_opt(
            "SELECT token, expires_ms FROM run_leases WHERE run_id = $1 FOR UPDATE SKIP LOCKED",
            &[&lease.run_id],
        )
        .await
        .map_err(DbError::from)?;
    let current = match locked {
        Some(row) => {
            let current: i64 = row.try_get(0).map_err(DbError::from)?;
            let expires: i64 = row.try_get(1).map_err(DbError::from)?;
            if current == token && expires > 0 {
                tx.execute(
                    "UPDATE run_leases SET expires_ms = $2 WHERE run_id = $1",
                    &[&lease.run_id, &expires_ms],
                )
                .await
                .map_err(DbError::from)?;
            }
            Some(current)
        }
        None => tx
            .query_opt(
                "SELECT token FROM run_leases WHERE run_id = $1",
                &[&lease.run_id],
            )
            .await
            .map_err(DbError::from)?
            .map(|row| row.try_get::<_, i64>(0))
            .transpose()
            .map_err(DbError::from)?,
    };
    Ok(current == Some(token))
}

/// Claims `run_id` (whose run row the transaction has locked) for `owner` if its lease is
/// free now, without waiting: `None` when another transaction has its lease row locked (a
/// write of the holder, another claim) or the lease is live.
pub(crate) async fn try_claim(
    tx: &impl GenericClient,
    holder: &Holder,
    run_id: &str,
    owner: &str,
    now_ms: i64,
    ttl_ms: i64,
) -> Result<Option<(Lease, bool)>, JournalError> {
    let expires = now_ms.saturating_add(ttl_ms);
    if !try_lock_exclusive(tx, run_id).await? {
        // A write under the run's lease is committing, or another claim holds it.
        return Ok(None);
    }
    let exists = tx
        .query_opt("SELECT 1 FROM run_leases WHERE run_id = $1", &[&run_id])
        .await
        .map_err(DbError::from)?
        .is_some();
    if !exists {
        let inserted = tx
            .execute(
                "INSERT INTO run_leases (run_id, owner, holder, token, expires_ms) \
                 VALUES ($1, $2, $3, 1, $4) ON CONFLICT (run_id) DO NOTHING",
                &[&run_id, &owner, &holder.id, &expires],
            )
            .await
            .map_err(DbError::from)?;
        let lease = Lease {
            run_id: run_id.to_owned(),
            owner: owner.to_owned(),
            token: 1,
        };
        return Ok((inserted == 1).then_some((lease, false)));
    }
    let Some(row) = tx
        .query_opt(
            "SELECT holder, token, expires_ms FROM run_leases WHERE run_id = $1 \
             FOR UPDATE SKIP LOCKED",
            &[&run_id],
        )
        .await
        .map_err(DbError::from)?
    else {
        return Ok(None);
    };
    let held_in: String = row.try_get(0).map_err(DbError::from)?;
    let token: i64 = row.try_get(1).map_err(DbError::from)?;
    let expires_ms: i64 = row.try_get(2).map_err(DbError::from)?;
    let free = expires_ms == 0 || expires_ms < now_ms || is_gone(tx, holder, &held_in).await?;
    if !free {
        return Ok(None);
    }
    tx.execute(
        "UPDATE run_leases SET owner = $2, holder = $3, token = $4, expires_ms = $5 \
         WHERE run_id = $1",
        &[&run_id, &owner, &holder.id, &(token + 1), &expires],
    )
    .await
    .map_err(DbError::from)?;
    let lease = Lease {
        run_id: run_id.to_owned(),
        owner: owner.to_owned(),
        token: u64::try_from(token + 1).unwrap_or(0),
    };
    Ok(Some((lease, expires_ms != 0)))
}

/// Which runs are runnable among the drivable `(chain, version)` pairs.
const RUNNABLE: &str = "r.state_kind IN ('running', 'compensating') \
     AND (r.chain, r.chain_version) IN (SELECT * FROM unnest($1::text[], $2::text[]))";

/// Up to `limit` run ids that are runnable now (see `crate::journal::queue`) among the
/// drivable `chains`/`versions` (pairwise), oldest first, their run rows locked in the open
/// transaction; rows another claimer has locked are skipped (`FOR UPDATE SKIP LOCKED`).
pub(crate) async fn runnable(
    tx: &impl GenericClient,
    holder: &Holder,
    chains: &[String],
    versions: &[String],
    now_ms: i64,
    limit: i64,
) -> Result<Vec<String>, JournalError> {
    let free = tx
        .prepare_cached(&format!(
            "SELECT r.run_id FROM run_runs r LEFT JOIN run_leases l ON l.run_id = r.run_id \
             WHERE {RUNNABLE} AND (l.run_id IS NULL OR l.expires_ms = 0 OR l.expires_ms < $3) \
             ORDER BY r.created_ms, r.run_id LIMIT $4 FOR UPDATE OF r SKIP LOCKED"
        ))
        .await
        .map_err(DbError::from)?;
    let mut out: Vec<String> = tx
        .query(&free, &[&chains, &versions, &now_ms, &limit])
        .await
        .map_err(DbError::from)?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()
        .map_err(DbError::from)?;
    if i64::try_from(out.len()).unwrap_or(i64::MAX) >= limit {
        return Ok(out);
    }
    // Live leases of holders that died: few holders, each checked once by its session lock.
    let holders: Vec<String> = tx
        .query(
            "SELECT DISTINCT holder FROM run_leases WHERE expires_ms >= $1 AND holder <> $2",
            &[&now_ms, &holder.id],
        )
        .await
        .map_err(DbError::from)?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()
        .map_err(DbError::from)?;
    let of_holder = tx
        .prepare_cached(&format!(
            "SELECT r.run_id FROM run_runs r JOIN run_leases l ON l.run_id = r.run_id \
             WHERE {RUNNABLE} AND l.holder = $3 AND l.expires_ms >= $4 \
             ORDER BY r.created_ms, r.run_id LIMIT $5 FOR UPDATE OF r SKIP LOCKED"
        ))
        .await
        .map_err(DbError::from)?;
    for other in holders {
        let left = limit - i64::try_from(out.len()).unwrap_or(i64::MAX);
        if left <= 0 {
            break;
        }
        if !is_gone(tx, holder, &other).await? {
            continue;
        }
        let more = tx
            .query(&of_holder, &[&chains, &versions, &other, &now_ms, &left])
            .await
            .map_err(DbError::from)?;
        for row in more {
            out.push(row.try_get(0).map_err(DbError::from)?);
        }
    }
    Ok(out)
}
