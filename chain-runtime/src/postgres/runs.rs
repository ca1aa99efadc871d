//! A run's start and its lease's release: creating a run is one pipelined flight (see
//! [`super::flight`]), `BEGIN`, one statement that inserts the run row and its lease row, and
//! `COMMIT` (or one statement of a writer's unit); a release is one statement of a writer's
//! unit, so that it commits after every unit queued before it.

use deadpool_postgres::Object;
use futures::future::BoxFuture;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;

use super::flight::{Flight, Reply, fly};
use super::leases::{self, Holder};
use super::ops::{Op, Param};
use crate::journal::rows::RunText;
use crate::journal::{JournalError, Lease, RunRecord};
use crate::sqlite::DbError;

/// Inserts a run row unless one with its id exists.
pub(crate) const INSERT_RUN: &str = "INSERT INTO run_runs (run_id, chain, chain_version, \
     step_versions, principal, principal_id, input, subjects, parent_run_id, state, state_kind, \
     node, created_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
     ON CONFLICT (run_id) DO NOTHING";

/// Inserts a run row unless one with its id exists ($1-$13 as in [`INSERT_RUN`]) and, only
/// when it was inserted, its first lease ($14 owner, $15 holder, $16 expiry). A lease row that
/// outlived its run makes it fail (a unique violation), so that the transaction rolls back.
const CREATE: &str = "WITH r AS (INSERT INTO run_runs (run_id, chain, chain_version, \
     step_versions, principal, principal_id, input, subjects, parent_run_id, state, state_kind, \
     node, created_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
     ON CONFLICT (run_id) DO NOTHING RETURNING run_id) \
     INSERT INTO run_leases (run_id, owner, holder, token, expires_ms) \
     SELECT run_id, $14, $15, 1, $16 FROM r";

const FIRST_LEASE: &str = "INSERT INTO run_leases (run_id, owner, holder, token, expires_ms) \
     VALUES ($1, $2, $3, 1, $4) ON CONFLICT (run_id) DO NOTHING";

/// A lease given back if it is still the current one ($1 run, $2 token), and the listening
/// workers told ($3 channel), at commit, when the run is runnable (a run that ended, or waits
/// for a person or a consent, is claimed by nobody: no worker need wake up).
const RELEASE: &str = "WITH l AS (UPDATE run_leases SET expires_ms = 0 \
     WHERE run_id = $1 AND token = $2 RETURNING 1) \
     SELECT pg_notify($3, '') FROM run_runs WHERE run_id = $1 \
     AND state_kind IN ('running', 'compensating')";

/// A run's end state stored ($1-$4 as in [`super::ops::STATE`]: it must change the run's row)
/// and its lease given back ($5 token), with the listening workers told ($6 channel) when the
/// new state is runnable, as [`RELEASE`]: one statement; one row when the state was stored.
const END: &str = "WITH s AS (UPDATE run_runs SET state = $2, state_kind = $3 \
     WHERE run_id = $1 AND ($4::text IS NULL OR state_kind = $4) RETURNING state_kind), \
     l AS (UPDATE run_leases SET expires_ms = 0 WHERE run_id = $1 AND token = $5 RETURNING 1) \
     SELECT CASE WHEN s.state_kind IN ('running', 'compensating') THEN pg_notify($6, '') END \
     FROM s";

/// `BEGIN` without waiting for the WAL flush at commit.
const BEGIN_DEFERRED: &str = "BEGIN; SET LOCAL synchronous_commit = off";

/// A run row's values, in the order of [`INSERT_RUN`]'s parameters (also the first 13 of
/// `CREATE`'s).
pub(crate) struct RunValues<'r> {
    run: &'r RunRecord,
    text: RunText,
    kind: &'static str,
    node: i64,
}

impl<'r> RunValues<'r> {
    /// Encodes `run`'s JSON columns.
    pub(crate) fn of(run: &'r RunRecord) -> Result<Self, JournalError> {
        Ok(Self {
            run,
            text: RunText::of(run)?,
            kind: run.state.kind(),
            node: i64::from(run.node),
        })
    }

    /// The statement parameters.
    pub(crate) fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        let (run, text) = (self.run, &self.text);
        vec![
            &run.run_id,
            &run.chain,
            &run.chain_version,
            &text.step_versions,
            &text.principal,
            &run.principal_id,
            &text.input,
            &text.subjects,
            &run.parent_run_id,
            &text.state,
            &self.kind,
            &self.node,
            &run.created_unix_ms,
        ]
    }
}

fn db(e: tokio_postgres::Error) -> JournalError {
    DbError::from(e).into()
}

/// The `BEGIN` request of a flight whose transaction commits without waiting for the WAL flush.
fn begin_deferred(client: &Object) -> BoxFuture<'_, Result<Reply, tokio_postgres::Error>> {
    Box::pin(async {
        client
            .batch_execute(BEGIN_DEFERRED)
            .await
            .map(|()| Reply::Nothing)
    })
}

async fn end(client: &Object, commit: bool) -> Result<(), JournalError> {
    let sql = if commit { "COMMIT" } else { "ROLLBACK" };
    client.batch_execute(sql).await.map_err(db)
}

/// Creates `run` claimed for `owner` (deferred: the run's first synchronous write makes it
/// durable); [`JournalError::Duplicate`] when a run with its id exists.
pub(crate) async fn create(
    client: &Object,
    holder: &Holder,
    run: &RunRecord,
    owner: &str,
    now_ms: i64,
    ttl_ms: i64,
) -> Result<Lease, JournalError> {
    let row = RunValues::of(run)?;
    let create = client.prepare_cached(CREATE).await.map_err(db)?;
    let expires = now_ms.saturating_add(ttl_ms);
    let mut params = row.params();
    params.extend::<[&(dyn ToSql + Sync); 3]>([&owner, &holder.id, &expires]);
    let flight: Flight<'_> = vec![
        begin_deferred(client),
        Box::pin(async { client.execute(&create, &params).await.map(Reply::Count) }),
        // Commits, or rolls back when a statement before it failed.
        Box::pin(async {
            client
                .batch_execute("COMMIT")
                .await
                .map(|()| Reply::Nothing)
        }),
    ];
    let mut replies = fly(flight).await.into_iter();
    match (replies.next(), replies.next(), replies.next()) {
        (Some(Ok(_)), Some(Ok(Reply::Count(1))), Some(Ok(_))) => Ok(Lease {
            run_id: run.run_id.clone(),
            owner: owner.to_owned(),
            token: 1,
        }),
        (Some(Ok(_)), Some(Ok(Reply::Count(0))), Some(Ok(_))) => {
            Err(JournalError::Duplicate(run.run_id.clone()))
        }
        (_, Some(Err(e)), _) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
            // Rolled back: a lease row outlived its run. Its token goes on.
            create_claiming(client, holder, run, owner, now_ms, ttl_ms).await
        }
        (begun, created, committed) => Err([begun, created, committed]
            .into_iter()
            .flatten()
            .find_map(Result::err)
            .map_or_else(
                || JournalError::Backend("no answer from PostgreSQL".into()),
                db,
            )),
    }
}

/// [`create`] when a lease row outlived the run: the run row inserted and the lease claimed
/// the long way, in one transaction.
async fn create_claiming(
    client: &Object,
    holder: &Holder,
    run: &RunRecord,
    owner: &str,
    now_ms: i64,
    ttl_ms: i64,
) -> Result<Lease, JournalError> {
    let row = RunValues::of(run)?;
    let insert = client.prepare_cached(INSERT_RUN).await.map_err(db)?;
    let first = client.prepare_cached(FIRST_LEASE).await.map_err(db)?;
    let expires = now_ms.saturating_add(ttl_ms);
    let run_params = row.params();
    let lease_params: [&(dyn ToSql + Sync); 4] = [&run.run_id, &owner, &holder.id, &expires];
    let flight: Flight<'_> = vec![
        begin_deferred(client),
        Box::pin(async { client.execute(&insert, &run_params).await.map(Reply::Count) }),
        Box::pin(async {
            client
                .execute(&first, &lease_params)
                .await
                .map(Reply::Count)
        }),
    ];
    let mut replies = fly(flight).await.into_iter();
    let counts = (replies.next(), replies.next(), replies.next());
    let (inserted, leased) = match counts {
        (Some(Ok(_)), Some(Ok(Reply::Count(run))), Some(Ok(Reply::Count(lease)))) => (run, lease),
        (begun, run, lease) => {
            end(client, false).await?;
            let e = [begun, run, lease]
                .into_iter()
                .flatten()
                .find_map(Result::err)
                .map_or_else(
                    || JournalError::Backend("no answer from PostgreSQL".into()),
                    db,
                );
            return Err(e);
        }
    };
    if inserted == 0 {
        end(client, false).await?;
        return Err(JournalError::Duplicate(run.run_id.clone()));
    }
    let lease = if leased == 1 {
        Lease {
            run_id: run.run_id.clone(),
            owner: owner.to_owned(),
            token: 1,
        }
    } else {
        // A lease row outlived its run: claim it the long way (its token goes on).
        match leases::claim(client, holder, &run.run_id, owner, now_ms, ttl_ms).await {
            Ok((lease, _)) => lease,
            Err(e) => {
                end(client, false).await?;
                return Err(e);
            }
        }
    };
    end(client, true).await?;
    Ok(lease)
}

/// [`CREATE`] as a write of the writer's, for a unit that creates `run` claimed for `owner`
/// with the run's first audit records: it must change one row (the lease's), else a run with
/// that id exists; it fails when a lease row outlived its run (then [`create`] takes over).
pub(crate) fn create_op(
    run: &RunRecord,
    owner: &str,
    holder: &Holder,
    expires_ms: i64,
) -> Result<Op, JournalError> {
    let text = RunText::of(run)?;
    let params: Vec<Param> = vec![
        Box::new(run.run_id.clone()),
        Box::new(run.chain.clone()),
        Box::new(run.chain_version.clone()),
        Box::new(text.step_versions),
        Box::new(text.principal),
        Box::new(run.principal_id.clone()),
        Box::new(text.input),
        Box::new(text.subjects),
        Box::new(run.parent_run_id.clone()),
        Box::new(text.state),
        Box::new(run.state.kind()),
        Box::new(i64::from(run.node)),
        Box::new(run.created_unix_ms),
        Box::new(owner.to_owned()),
        Box::new(holder.id.clone()),
        Box::new(expires_ms),
    ];
    Ok(Op::Statement {
        sql: CREATE,
        params,
        must_change_one: true,
    })
}

/// The write that releases `lease` (see [`RELEASE`]), for a unit of the writer's: alone, or
/// with the run's end state in one transaction.
pub(crate) fn release_op(lease: &Lease) -> Op {
    let token = i64::try_from(lease.token).unwrap_or(-1);
    Op::Statement {
        sql: RELEASE,
        params: vec![
            Box::new(lease.run_id.clone()),
            Box::new(token),
            Box::new(leases::CHANNEL),
        ],
        must_change_one: false,
    }
}

/// Appends the release of `lease` to a unit's `ops` (see [`release_op`]); when the unit's last
/// write stores the run's state (the run's end), both become one statement ([`END`]).
pub(crate) fn release_into(ops: &mut Vec<Op>, lease: &Lease) {
    let token = i64::try_from(lease.token).unwrap_or(-1);
    if let Some(Op::Statement {
        sql,
        params,
        must_change_one: true,
    }) = ops.last_mut()
        && *sql == super::ops::STATE
        && params.len() == 4
    {
        *sql = END;
        params.push(Box::new(token));
        params.push(Box::new(leases::CHANNEL));
        return;
    }
    ops.push(release_op(lease));
}
