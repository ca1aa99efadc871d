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

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

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

/// Holders dropped in this process, by key, the newest last (at most [`DROPPED_KEPT`]).
static DROPPED: Mutex<VecDeque<i64>> = Mutex::new(VecDeque::new());
const DROPPED_KEPT: usize = 1024;

fn dropped() -> std::sync::MutexGuard<'static, VecDeque<i64>> {
    DROPPED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Drop for Holder {
    /// Its session closes after this, when its connection task runs and PostgreSQL sees the
    /// session end; until then its lock looks alive. Remembered, so that a claim in this
    /// process waits for that instead of guessing (see [`watch`]).
    fn drop(&mut self) {
        let mut keys = dropped();
        if keys.len() >= DROPPED_KEPT {
            keys.pop_front();
        }
        keys.push_back(self.key);
    }
}

/// The advisory lock key of the holder id `other`, unless it is `holder` itself or not a
/// holder this backend writes.
fn key_of(holder: &Holder, other: &str) -> Option<i64> {
    if other == holder.id {
        return None;
    }
    other
        .strip_prefix(PREFIX)
        .and_then(|k| k.parse::<i64>().ok())
        .filter(|k| *k != holder.key)
}

async fn is_gone(
    tx: &impl GenericClient,
    holder: &Holder,
    other: &str,
) -> Result<bool, JournalError> {
    // Not a holder this backend writes: only expiry frees it.
    let Some(key) = key_of(holder, other) else {
        return Ok(false);
    };
    let row = tx
        .query_one("SELECT pg_try_advisory_xact_lock($1)", &[&key])
        .await
        .map_err(DbError::from)?;
    Ok(row.try_get::<_, bool>(0).map_err(DbError::from)?)
}

/// How long a claim watches a live-looking holder of another process: one that was dropped
/// or killed a moment ago still holds its lock until PostgreSQL has seen its session end.
const GONE_GRACE: Duration = Duration::from_millis(500);

/// How long a claim waits for the session of a holder dropped in this process to end: that
/// it ends is certain, only not when (its connection task must run, the server must see it),
/// so this bounds a hang, it is not a guess.
const DROPPED_WAIT: Duration = Duration::from_secs(60);

/// Before a claim takes `run_id`'s lock: while its lease is held by another holder that looks
/// alive, re-reads the lease until it is released or expired or its holder is gone, for up to
/// [`GONE_GRACE`] ([`DROPPED_WAIT`] for a holder dropped in this process). Without the lock:
/// the holder's last writes and its release take the run's lock shared, so a claim watching
/// under its exclusive lock would hold off the very release it waits for (an engine whose run
/// was abandoned releases it from a task of its own, which outlives the engine's handle).
async fn watch(tx: &impl GenericClient, holder: &Holder, run_id: &str) -> Result<(), JournalError> {
    let started = tokio::time::Instant::now();
    loop {
        let Some(row) = tx
            .query_opt(
                "SELECT holder, expires_ms FROM run_leases WHERE run_id = $1",
                &[&run_id],
            )
            .await
            .map_err(DbError::from)?
        else {
            return Ok(());
        };
        let held_in: String = row.try_get(0).map_err(DbError::from)?;
        let expires_ms: i64 = row.try_get(1).map_err(DbError::from)?;
        if expires_ms == 0 || expires_ms < crate::audit::now_unix_ms() {
            return Ok(());
        }
        // This holder's own lease, or not a holder's: decided under the lock.
        let Some(key) = key_of(holder, &held_in) else {
            return Ok(());
        };
        if is_gone(tx, holder, &held_in).await? {
            return Ok(());
        }
        let wait = if dropped().contains(&key) {
            DROPPED_WAIT
        } else {
            GONE_GRACE
        };
        if started.elapsed() >= wait {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
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
    watch(tx, holder, run_id).await?;
    let now_ms = now_ms.max(crate::audit::now_unix_ms());
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
            let free =
                expires_ms == 0 || expires_ms < now_ms || is_gone(tx, holder, &held_in).await?;
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

/// Renews `leases` if still current; see [`renew_many`].
const RENEW_MANY: &str = "WITH x AS (SELECT * FROM unnest($1::text[], $2::bigint[]) AS x(run_id, token)), \
     k AS (SELECT run_id, token, expires_ms FROM run_leases WHERE run_id = ANY($1) \
     ORDER BY run_id FOR UPDATE SKIP LOCKED), \
     r AS (UPDATE run_leases l SET expires_ms = $3 FROM x, k \
     WHERE l.run_id = x.run_id AND k.run_id = x.run_id AND k.token = x.token \
     AND k.expires_ms > 0 RETURNING 1) \
     SELECT x.run_id, COALESCE(k.token, l.token) FROM x \
     LEFT JOIN k ON k.run_id = x.run_id LEFT JOIN run_leases l ON l.run_id = x.run_id";

/// Renews each of `leases` that is still current, `expires_ms` being its new expiry; per
/// lease, false only when another claim superseded it (a lease its holder released is not
/// renewed, and not superseded either). One statement, so no lock outlives it even when this
/// process stops in the middle (SIGSTOP, a long pause): a claimer then never waits for a
/// paused worker's renewal, only for its lease to expire. Never waits either: a lease row
/// another transaction has locked is only read (and renewed next time).
pub(crate) async fn renew_many(
    client: &impl GenericClient,
    leases: &[Lease],
    expires_ms: i64,
) -> Result<Vec<bool>, JournalError> {
    let runs: Vec<&str> = leases.iter().map(|l| l.run_id.as_str()).collect();
    let tokens: Vec<i64> = leases
        .iter()
        .map(|l| i64::try_from(l.token).unwrap_or(-1))
        .collect();
    let stmt = client
        .prepare_cached(RENEW_MANY)
        .await
        .map_err(DbError::from)?;
    let rows = client
        .query(&stmt, &[&runs, &tokens, &expires_ms])
        .await
        .map_err(DbError::from)?;
    let mut current: std::collections::HashMap<String, Option<i64>> =
        std::collections::HashMap::with_capacity(rows.len());
    for row in rows {
        current.insert(
            row.try_get(0).map_err(DbError::from)?,
            row.try_get(1).map_err(DbError::from)?,
        );
    }
    Ok(leases
        .iter()
        .zip(&tokens)
        .map(|(l, token)| current.get(&l.run_id).copied().flatten() == Some(*token))
        .collect())
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
