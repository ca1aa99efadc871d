//! Run leases kept in the database, for [`super::SqliteJournal`].
//!
//! `run_leases` has one row per run ever claimed: the `owner` (an engine), the `holder` (the
//! journal handle, one per process and open), the fencing `token` and `expires_ms`. A claim
//! is a compare-and-set inside the writer's `BEGIN IMMEDIATE` transaction (so two processes
//! cannot both win): it succeeds when the run has no row, its lease was released
//! (`expires_ms = 0`), it expired, or its holder is gone; it then bumps the token. The token
//! is never reset (release keeps the row), so a superseded writer's token never matches again,
//! and every journal write checks it in the same transaction as the write.
//!
//! A live holder renews its leases (a heartbeat every third of the TTL, each renewal one TTL
//! ahead; [`LEASE_TTL`] unless the handle was given another, see
//! [`super::SqliteJournal::set_lease_ttl`]). A holder that died is noticed without waiting for expiry: every
//! holder keeps an exclusive lock (`flock`) on its own file `<database>-holders/<holder>.lock`
//! for as long as its journal is open; the operating system drops the lock when the process
//! dies, so a claimer that can lock the file knows the holder is gone. (That works for every
//! process on the machine, which is every process that can share a SQLite file in WAL mode.)

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};

use super::{JournalError, Lease};

/// How long a lease lives without a renewal, by default.
pub const LEASE_TTL: Duration = Duration::from_secs(30);

pub(crate) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS run_leases (
    run_id     TEXT PRIMARY KEY,
    owner      TEXT NOT NULL,
    holder     TEXT NOT NULL,
    token      INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL
);
";

/// A duration in milliseconds, saturating.
pub(crate) fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Index for [`super::RunJournal::claim_runnable`]: unfinished runs, oldest first.
pub(crate) const RUNNABLE_INDEX: &str = "
CREATE INDEX IF NOT EXISTS run_runs_by_state ON run_runs (state_kind, created_ms, run_id);
";

/// This journal handle's identity and its liveness lock.
pub(crate) struct Holder {
    pub(crate) id: String,
    dir: PathBuf,
    /// Held for the handle's life: the lock is what tells other processes it is alive.
    _lock: File,
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.dir.join(format!("{}.lock", self.id)));
    }
}

fn holders_dir(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push("-holders");
    PathBuf::from(name)
}

impl Holder {
    /// A new holder for the database at `db`, locking its liveness file.
    pub(crate) fn new(db: &Path) -> Result<Self, JournalError> {
        let dir = holders_dir(db);
        std::fs::create_dir_all(&dir).map_err(|e| {
            JournalError::Backend(format!(
                "cannot create the lease holders directory `{}`: {e}",
                dir.display()
            ))
        })?;
        let id = crate::sqlite::unique_id("holder-");
        let path = dir.join(format!("{id}.lock"));
        let lock = File::create(&path).map_err(|e| {
            JournalError::Backend(format!("cannot create `{}`: {e}", path.display()))
        })?;
        lock.try_lock()
            .map_err(|e| JournalError::Backend(format!("cannot lock `{}`: {e}", path.display())))?;
        Ok(Self {
            id,
            dir,
            _lock: lock,
        })
    }

    /// Whether the holder `other` is gone: its liveness file is missing or unlocked.
    fn is_gone(&self, other: &str) -> bool {
        if other == self.id {
            return false;
        }
        let path = self.dir.join(format!("{other}.lock"));
        match File::open(&path) {
            Err(_) => true,
            Ok(file) => match file.try_lock() {
                Ok(()) => {
                    let _ = std::fs::remove_file(&path);
                    true
                }
                Err(_) => false,
            },
        }
    }
}

/// Claims `run_id` for `owner` in the open write transaction, for `ttl_ms`.
pub(crate) fn claim(
    conn: &Connection,
    holder: &Holder,
    run_id: &str,
    owner: &str,
    now_ms: i64,
    ttl_ms: i64,
) -> Result<Lease, JournalError> {
    claim_reporting(conn, holder, run_id, owner, now_ms, ttl_ms).map(|(lease, _)| lease)
}

/// [`claim`], also telling whether the previous lease was taken back without a release
/// (expired, or its holder is gone).
pub(crate) fn claim_reporting(
    conn: &Connection,
    holder: &Holder,
    run_id: &str,
    owner: &str,
    now_ms: i64,
    ttl_ms: i64,
) -> Result<(Lease, bool), JournalError> {
    let current: Option<(String, String, i64, i64)> = conn
        .prepare_cached(
            "SELECT owner, holder, token, expires_ms FROM run_leases WHERE run_id = ?1",
        )?
        .query_row([run_id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .optional()?;
    let recovered = current.as_ref().is_some_and(|c| c.3 != 0);
    let token = match current {
        None => 1,
        Some((held_by, held_in, token, expires_ms)) => {
            let free = expires_ms == 0 || expires_ms < now_ms || holder.is_gone(&held_in);
            if !free {
                return Err(JournalError::Claimed {
                    run_id: run_id.to_owned(),
                    owner: held_by,
                });
            }
            token + 1
        }
    };
    conn.prepare_cached(
        "INSERT INTO run_leases (run_id, owner, holder, token, expires_ms) \
         VALUES (?1, ?2, ?3, ?4, ?5) \
         ON CONFLICT (run_id) DO UPDATE SET owner = excluded.owner, holder = excluded.holder, \
         token = excluded.token, expires_ms = excluded.expires_ms",
    )?
    .execute(params![
        run_id,
        owner,
        holder.id,
        token,
        now_ms.saturating_add(ttl_ms)
    ])?;
    let lease = Lease {
        run_id: run_id.to_owned(),
        owner: owner.to_owned(),
        token: u64::try_from(token).unwrap_or(0),
    };
    Ok((lease, recovered))
}

/// Fails with [`JournalError::LeaseLost`] unless `lease` is the run's current lease.
pub(crate) fn check(conn: &Connection, lease: &Lease) -> Result<(), JournalError> {
    let token: Option<i64> = conn
        .prepare_cached("SELECT token FROM run_leases WHERE run_id = ?1 AND expires_ms > 0")?
        .query_row([&lease.run_id], |r| r.get(0))
        .optional()?;
    match token {
        Some(t) if u64::try_from(t).ok() == Some(lease.token) => Ok(()),
        _ => Err(JournalError::LeaseLost(lease.run_id.clone())),
    }
}

/// Releases `lease` if it is still the current one (the row and its token stay).
pub(crate) fn release(conn: &Connection, lease: &Lease) -> Result<(), JournalError> {
    conn.prepare_cached("UPDATE run_leases SET expires_ms = 0 WHERE run_id = ?1 AND token = ?2")?
        .execute(params![
            lease.run_id,
            i64::try_from(lease.token).unwrap_or(-1)
        ])?;
    Ok(())
}

/// Renews every live lease of `holder`.
pub(crate) fn renew(
    conn: &Connection,
    holder: &str,
    now_ms: i64,
    ttl_ms: i64,
) -> Result<(), JournalError> {
    conn.prepare_cached(
        "UPDATE run_leases SET expires_ms = ?2 WHERE holder = ?1 AND expires_ms > 0",
    )?
    .execute(params![holder, now_ms.saturating_add(ttl_ms)])?;
    Ok(())
}

/// Renews one lease if it is still current; returns false only when another claim superseded
/// it (a lease its holder released is not renewed, and not superseded either).
pub(crate) fn renew_one(
    conn: &Connection,
    lease: &Lease,
    now_ms: i64,
    ttl_ms: i64,
) -> Result<bool, JournalError> {
    let token = i64::try_from(lease.token).unwrap_or(-1);
    let n = conn
        .prepare_cached(
            "UPDATE run_leases SET expires_ms = ?3 \
             WHERE run_id = ?1 AND token = ?2 AND expires_ms > 0",
        )?
        .execute(params![lease.run_id, token, now_ms.saturating_add(ttl_ms)])?;
    if n == 1 {
        return Ok(true);
    }
    let current: Option<i64> = conn
        .prepare_cached("SELECT token FROM run_leases WHERE run_id = ?1")?
        .query_row([&lease.run_id], |r| r.get(0))
        .optional()?;
    Ok(current == Some(token))
}

/// Up to `limit` run ids that are runnable now (see [`super::queue`]) among the `drivable`
/// keys (`chain\nversion`, a JSON array), oldest first, in the open write transaction.
pub(crate) fn runnable(
    conn: &Connection,
    holder: &Holder,
    drivable_json: &str,
    now_ms: i64,
    limit: usize,
) -> Result<Vec<String>, JournalError> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    const FILTER: &str = "r.state_kind IN ('running', 'compensating') \
         AND r.chain || char(10) || r.chain_version IN (SELECT value FROM json_each(?1))";
    let mut out: Vec<String> = conn
        .prepare_cached(&format!(
            "SELECT r.run_id FROM run_runs r LEFT JOIN run_leases l ON l.run_id = r.run_id \
             WHERE {FILTER} AND (l.run_id IS NULL OR l.expires_ms = 0 OR l.expires_ms < ?2) \
             ORDER BY r.created_ms, r.run_id LIMIT ?3"
        ))?
        .query_map(params![drivable_json, now_ms, limit], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    if out.len() as i64 >= limit {
        return Ok(out);
    }
    // Live leases of holders that died: few holders, each checked once by its lock file.
    let holders: Vec<String> = conn
        .prepare_cached(
            "SELECT DISTINCT holder FROM run_leases WHERE expires_ms >= ?1 AND holder != ?2",
        )?
        .query_map(params![now_ms, holder.id], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for gone in holders.into_iter().filter(|h| holder.is_gone(h)) {
        let left = limit - out.len() as i64;
        if left <= 0 {
            break;
        }
        let more: Vec<String> = conn
            .prepare_cached(&format!(
                "SELECT r.run_id FROM run_runs r JOIN run_leases l ON l.run_id = r.run_id \
                 WHERE {FILTER} AND l.holder = ?2 AND l.expires_ms >= ?3 \
                 ORDER BY r.created_ms, r.run_id LIMIT ?4"
            ))?
            .query_map(params![drivable_json, gone, now_ms, left], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        out.extend(more);
    }
    Ok(out)
}
