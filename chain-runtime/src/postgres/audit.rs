//! [`PgAuditStore`]: the audit trail in PostgreSQL. Tables as in the SQLite store
//! (`audit_records`, `audit_record_refs`) plus `audit_head`, the chain's head row: every
//! append locks it (`SELECT … FOR UPDATE`), seals its records on it, inserts them and moves
//! it, all in the appending transaction, so appends of every worker form one linear chain.
//! The head row is also the witness verification compares the chain with (like the SQLite
//! store's head witness file): a chain that ends before it was truncated.

use deadpool_postgres::{GenericClient, Transaction};
use serde_json::Value;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use super::PgDatabase;
use crate::audit::row_hash::{Cell, Cells, cells_to_value};
use crate::audit::rows::{
    self, COLUMNS, INT_COLUMNS, IndexedVerifier, select_columns, seq_to_sql, to_authorization,
    value_to_record,
};
use crate::audit::seal::Presealed;
use crate::audit::{
    AuditError, AuditRecord, AuditStore, Authorization, BoxFuture, Checkpoint, NewRecord, Verified,
};
use crate::journal::JournalError;
use crate::sqlite::{DatabaseId, DbError};

/// How many records verification reads per query (by key: `seq > last ORDER BY seq`).
const PAGE: i64 = 4096;

/// An audit store in a PostgreSQL database; see the module docs. Clones share the pool.
#[derive(Clone)]
pub struct PgAuditStore {
    db: PgDatabase,
}

impl std::fmt::Debug for PgAuditStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgAuditStore")
            .field("database", &self.db.label())
            .finish_non_exhaustive()
    }
}

fn db(e: tokio_postgres::Error) -> AuditError {
    DbError::from(e).into()
}

/// The chain head `(seq, hash)`, its row locked for the transaction.
pub(crate) const LOCK_HEAD: &str = "SELECT seq, hash FROM audit_head WHERE id = 1 FOR UPDATE";

/// Seals `records` in order on the chain head, locked in the open transaction, inserts them
/// and moves the head.
pub(crate) async fn append_in(
    tx: &Transaction<'_>,
    records: Vec<Presealed>,
) -> Result<Vec<AuditRecord>, AuditError> {
    if records.is_empty() {
        return Ok(Vec::new());
    }
    let head = tx.prepare_cached(LOCK_HEAD).await.map_err(db)?;
    let row = tx.query_one(&head, &[]).await.map_err(db)?;
    let head = rows::checkpoint(row.try_get(0).map_err(db)?, row.try_get(1).map_err(db)?)?;
    let (mut seq, mut prev_hash) = (head.seq, head.hash);
    let insert = tx
        .prepare_cached(&format!(
            "INSERT INTO audit_records ({}) VALUES \
             ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)",
            select_columns()
        ))
        .await
        .map_err(db)?;
    let insert_ref = tx
        .prepare_cached(
            "INSERT INTO audit_record_refs (seq, connector, kind, record_id) VALUES ($1, $2, $3, $4)",
        )
        .await
        .map_err(db)?;
    let mut sealed = Vec::with_capacity(records.len());
    for pre in records {
        let (record, columns) = pre.seal(seq + 1, prev_hash);
        let seq_sql = seq_to_sql(record.seq)?;
        let format = i64::from(record.format);
        let outcome = record.outcome.as_str();
        let (scopes, refs, event) = (columns.scopes(), columns.records(), columns.event());
        let values: [&(dyn ToSql + Sync); 16] = [
            &seq_sql,
            &format,
            &record.time_unix_ms,
            &record.run_id,
            &record.step_id,
            &record.principal,
            &record.connector,
            &record.account_id,
            &record.upstream_subject,
            &record.grant_id,
            &scopes,
            &refs,
            &outcome,
            &event,
            &record.prev_hash,
            &record.hash,
        ];
        tx.execute(&insert, &values).await.map_err(db)?;
        for r in &record.records {
            tx.execute(&insert_ref, &[&seq_sql, &r.connector, &r.kind, &r.id])
                .await
                .map_err(db)?;
        }
        seq = record.seq;
        prev_hash = record.hash.clone();
        sealed.push(record);
    }
    let moved = tx
        .prepare_cached("UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1")
        .await
        .map_err(db)?;
    tx.execute(&moved, &[&seq_to_sql(seq)?, &prev_hash])
        .await
        .map_err(db)?;
    Ok(sealed)
}

/// The cells of one row selected with [`select_columns`], borrowed from the row.
fn row_cells(row: &Row) -> Result<Cells<'_>, AuditError> {
    let mut cells = [Cell::Null; COLUMNS.len()];
    for (i, (cell, name)) in cells.iter_mut().zip(COLUMNS).enumerate() {
        *cell = if INT_COLUMNS.contains(&name) {
            row.try_get::<_, Option<i64>>(i)
                .map_err(db)?
                .map_or(Cell::Null, Cell::Int)
        } else {
            row.try_get::<_, Option<&str>>(i)
                .map_err(db)?
                .map_or(Cell::Null, |text| Cell::Text(text.as_bytes()))
        };
    }
    Ok(cells)
}

/// Rebuilds the record object of one row selected with [`select_columns`], faithfully.
fn row_to_value(row: &Row) -> Result<Value, AuditError> {
    Ok(cells_to_value(&row_cells(row)?))
}

impl PgAuditStore {
    /// Connects to the database at `url` (see [`PgDatabase::connect`]) and opens the trail.
    pub async fn open(url: &str) -> Result<Self, AuditError> {
        Ok(Self::on(PgDatabase::connect(url).await?))
    }

    /// Opens the audit store on `db`.
    pub fn on(db: PgDatabase) -> Self {
        Self { db }
    }

    /// The database.
    pub fn db(&self) -> &PgDatabase {
        &self.db
    }

    /// The record objects of `SELECT … FROM audit_records {tail}`.
    async fn values(
        &self,
        tail: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Value>, AuditError> {
        let client = self.db.client().await?;
        let sql = format!("SELECT {} FROM audit_records {tail}", select_columns());
        let stmt = client.prepare_cached(&sql).await.map_err(db)?;
        let rows = client.query(&stmt, params).await.map_err(db)?;
        rows.iter().map(row_to_value).collect()
    }

    async fn records(
        &self,
        where_clause: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<AuditRecord>, AuditError> {
        let tail = format!("WHERE {where_clause} ORDER BY seq");
        let values = self.values(&tail, params).await?;
        values.into_iter().map(value_to_record).collect()
    }

    async fn verify_snapshot(
        &self,
        checkpoint: Option<Checkpoint>,
    ) -> Result<Verified, AuditError> {
        let mut client = self.db.client().await?;
        // One snapshot: the head, the index and the records agree even while others append.
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(db)?;
        let head = tx
            .query_one("SELECT seq, hash FROM audit_head WHERE id = 1", &[])
            .await
            .map_err(db)?;
        let witness = rows::checkpoint(head.try_get(0).map_err(db)?, head.try_get(1).map_err(db)?)?;
        let witness = (witness.seq > 0).then_some(witness);
        let refs = tx
            .query(
                "SELECT seq, connector, kind, record_id FROM audit_record_refs",
                &[],
            )
            .await
            .map_err(db)?
            .iter()
            .map(|r| {
                Ok((
                    r.try_get::<_, i64>(0)?,
                    (r.try_get(1)?, r.try_get(2)?, r.try_get(3)?),
                ))
            })
            .collect::<Result<Vec<_>, tokio_postgres::Error>>()
            .map_err(db)?;
        let page = tx
            .prepare(&format!(
                "SELECT {} FROM audit_records WHERE seq > $1 ORDER BY seq LIMIT $2",
                select_columns()
            ))
            .await
            .map_err(db)?;
        let mut verifier = IndexedVerifier::new(checkpoint.clone().or(witness.clone()), refs);
        let mut after = i64::MIN;
        let outcome = loop {
            let rows = tx.query(&page, &[&after, &PAGE]).await.map_err(db)?;
            let full = i64::try_from(rows.len()).unwrap_or(0) == PAGE;
            let mut broken = None;
            for row in &rows {
                let cells = row_cells(row)?;
                if let Cell::Int(seq) = cells[0] {
                    after = seq;
                }
                if let Err(e) = verifier.push_cells(&cells) {
                    broken = Some(e);
                    break;
                }
            }
            match broken {
                Some(e) => break Err(e),
                None if full => {}
                None => break verifier.finish(),
            }
        };
        tx.commit().await.map_err(db)?;
        // Without a checkpoint of the caller's, the head row is the witness.
        rows::verify_with_witness(checkpoint, witness, |_| outcome)
    }
}

impl AuditStore for PgAuditStore {
    fn append(&self, record: NewRecord) -> BoxFuture<'_, Result<AuditRecord, AuditError>> {
        Box::pin(async move {
            let pre = crate::audit::sqlite::preseal(vec![record])?;
            let committed =
                self.db
                    .write(None, Vec::new(), pre, true)
                    .await
                    .map_err(|e| match e {
                        JournalError::Audit(e) => e,
                        other => AuditError::Backend(other.to_string()),
                    })?;
            committed
                .audit
                .into_iter()
                .next()
                .ok_or_else(|| AuditError::Background("the append sealed no record".into()))
        })
    }

    fn database(&self) -> Option<DatabaseId> {
        Some(self.db.id())
    }

    fn head(&self) -> BoxFuture<'_, Result<Option<Checkpoint>, AuditError>> {
        Box::pin(async move {
            let client = self.db.client().await?;
            let row = client
                .query_opt(
                    "SELECT seq, hash FROM audit_records ORDER BY seq DESC LIMIT 1",
                    &[],
                )
                .await
                .map_err(db)?;
            row.map(|r| rows::checkpoint(r.try_get(0).map_err(db)?, r.try_get(1).map_err(db)?))
                .transpose()
        })
    }

    fn scan_raw(
        &self,
        after_seq: Option<i64>,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<Value>, AuditError>> {
        Box::pin(async move {
            let after = after_seq.unwrap_or(i64::MIN);
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            self.values("WHERE seq > $1 ORDER BY seq LIMIT $2", &[&after, &limit])
                .await
        })
    }

    fn run_history<'a>(
        &'a self,
        run_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<AuditRecord>, AuditError>> {
        Box::pin(async move { self.records("run_id = $1", &[&run_id]).await })
    }

    fn principal_activity<'a>(
        &'a self,
        principal: &'a str,
        from_unix_ms: i64,
        to_unix_ms: i64,
    ) -> BoxFuture<'a, Result<Vec<AuditRecord>, AuditError>> {
        Box::pin(async move {
            self.records(
                "principal = $1 AND time_unix_ms >= $2 AND time_unix_ms < $3",
                &[&principal, &from_unix_ms, &to_unix_ms],
            )
            .await
        })
    }

    fn who_authorized<'a>(
        &'a self,
        connector: &'a str,
        record_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<Authorization>, AuditError>> {
        Box::pin(async move {
            let records = self
                .records(
                    "seq IN (SELECT seq FROM audit_record_refs WHERE connector = $1 AND record_id = $2)",
                    &[&connector, &record_id],
                )
                .await?;
            Ok(records
                .into_iter()
                .flat_map(|r| to_authorization(r, connector, record_id))
                .collect())
        })
    }

    fn verify(
        &self,
        checkpoint: Option<Checkpoint>,
    ) -> BoxFuture<'_, Result<Verified, AuditError>> {
        Box::pin(self.verify_snapshot(checkpoint))
    }
}
