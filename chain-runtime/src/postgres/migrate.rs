//! Versioned schema migrations. `chain_schema` holds the version the database is at; each
//! migration runs once, in order, inside one transaction that holds an advisory lock (so
//! workers starting together migrate once). A database at a version newer than this build
//! knows is refused: an older worker must never write to a schema it does not understand.

use deadpool_postgres::Object;

use crate::audit::GENESIS_HASH;
use crate::sqlite::DbError;

/// The advisory lock key that serializes migrations (any constant unique to this crate).
const MIGRATION_LOCK: i64 = 0x6368_6169_6e5f_7631;

/// The migrations, in order; version `n` is `MIGRATIONS[n - 1]`.
const MIGRATIONS: &[&str] = &[V1, V2];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i32 = 2;

const _: () = assert!(MIGRATIONS.len() == SCHEMA_VERSION as usize);

/// Journal, leases, alerts, audit trail (records, refs, head), vault.
const V1: &str = "
CREATE TABLE run_runs (
    run_id        TEXT PRIMARY KEY,
    chain         TEXT NOT NULL,
    chain_version TEXT NOT NULL,
    step_versions TEXT NOT NULL,
    principal     TEXT NOT NULL,
    principal_id  TEXT NOT NULL,
    input         TEXT NOT NULL,
    subjects      TEXT NOT NULL,
    parent_run_id TEXT,
    state         TEXT NOT NULL,
    state_kind    TEXT NOT NULL,
    node          BIGINT NOT NULL,
    created_ms    BIGINT NOT NULL
);
CREATE INDEX run_runs_by_created ON run_runs (created_ms, run_id);
CREATE INDEX run_runs_by_state ON run_runs (state_kind);
CREATE TABLE run_leases (
    run_id     TEXT PRIMARY KEY,
    owner      TEXT NOT NULL,
    holder     TEXT NOT NULL,
    token      BIGINT NOT NULL,
    expires_ms BIGINT NOT NULL
);
CREATE INDEX run_leases_by_holder ON run_leases (holder) WHERE expires_ms > 0;
CREATE TABLE journal_entries (
    run_id  TEXT NOT NULL,
    seq     BIGINT NOT NULL,
    step_id TEXT NOT NULL,
    kind    TEXT NOT NULL,
    name    TEXT NOT NULL,
    attempt BIGINT NOT NULL,
    result  TEXT,
    PRIMARY KEY (run_id, seq)
);
CREATE SEQUENCE journal_compensations_ord;
CREATE TABLE journal_compensations (
    run_id      TEXT NOT NULL,
    step_id     TEXT NOT NULL,
    compensator TEXT NOT NULL,
    attempt     BIGINT NOT NULL,
    result      TEXT,
    ord         BIGINT NOT NULL,
    PRIMARY KEY (run_id, step_id)
);
CREATE TABLE alert_alerts (
    id     BIGSERIAL PRIMARY KEY,
    run_id TEXT NOT NULL,
    alert  TEXT NOT NULL
);
CREATE INDEX alert_alerts_by_run ON alert_alerts (run_id, id);
CREATE TABLE audit_records (
    seq              BIGINT PRIMARY KEY,
    format           BIGINT NOT NULL,
    time_unix_ms     BIGINT NOT NULL,
    run_id           TEXT,
    step_id          TEXT,
    principal        TEXT NOT NULL,
    connector        TEXT,
    account_id       TEXT,
    upstream_subject TEXT,
    grant_id         TEXT,
    scopes           TEXT NOT NULL,
    records          TEXT NOT NULL,
    outcome          TEXT NOT NULL,
    event            TEXT NOT NULL,
    prev_hash        TEXT NOT NULL,
    hash             TEXT NOT NULL
);
CREATE INDEX audit_records_by_run ON audit_records (run_id, seq);
CREATE INDEX audit_records_by_principal_time ON audit_records (principal, time_unix_ms);
CREATE TABLE audit_record_refs (
    seq       BIGINT NOT NULL,
    connector TEXT NOT NULL,
    kind      TEXT NOT NULL,
    record_id TEXT NOT NULL
);
CREATE INDEX audit_record_refs_lookup ON audit_record_refs (connector, record_id, seq);
CREATE TABLE audit_head (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    seq  BIGINT NOT NULL,
    hash TEXT NOT NULL
);
CREATE TABLE vault_meta (
    key   TEXT PRIMARY KEY,
    value BYTEA NOT NULL
);
CREATE TABLE vault_accounts (
    principal_id     TEXT NOT NULL,
    connector        TEXT NOT NULL,
    account_id       TEXT NOT NULL UNIQUE,
    upstream_subject TEXT NOT NULL,
    granted_scopes   TEXT NOT NULL,
    access_token     BYTEA NOT NULL,
    refresh_token    BYTEA,
    expires_at       BIGINT,
    grant_id         TEXT NOT NULL,
    consented_at     BIGINT NOT NULL,
    status           TEXT NOT NULL,
    rt_version       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL,
    PRIMARY KEY (principal_id, connector)
);
CREATE INDEX vault_accounts_by_subject ON vault_accounts (connector, upstream_subject);
CREATE TABLE vault_consents (
    state_hash   BYTEA PRIMARY KEY,
    principal_id TEXT NOT NULL,
    connector    TEXT NOT NULL,
    scopes       TEXT NOT NULL,
    verifier     BYTEA NOT NULL,
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL
);
CREATE TABLE vault_providers (
    connector     TEXT PRIMARY KEY,
    config        TEXT NOT NULL,
    client_secret BYTEA NOT NULL,
    updated_at    BIGINT NOT NULL
);
";

/// The reference rows by record: verification reads them by ranges of `seq`, one range per
/// part of the chain, which without this index scans the whole table once per part.
const V2: &str = "CREATE INDEX audit_record_refs_by_seq ON audit_record_refs (seq);";

fn too_new(found: i32) -> DbError {
    DbError::other(format!(
        "the database schema is at version {found}, newer than this build of chain-runtime \
         knows (version {SCHEMA_VERSION}); it refuses to run against it: upgrade the workers \
         (or restore a backup taken before the upgrade)"
    ))
}

/// Checks, creating nothing, that the database has the runtime's tables at a version this
/// build knows; returns the version.
pub(crate) async fn existing(client: &Object) -> Result<i32, DbError> {
    let row = client
        .query_one("SELECT to_regclass('chain_schema') IS NOT NULL", &[])
        .await?;
    let found: i32 = if row.try_get::<_, bool>(0)? {
        client
            .query_one("SELECT version FROM chain_schema WHERE id = 1", &[])
            .await?
            .try_get(0)?
    } else {
        0
    };
    if found == 0 {
        return Err(DbError::other(
            "not a chain-runtime database (no `chain_schema` table); open it with the runtime \
             first, which creates its tables",
        ));
    }
    if found > SCHEMA_VERSION {
        return Err(too_new(found));
    }
    Ok(found)
}

/// Brings the database to [`SCHEMA_VERSION`]; returns the version it was at.
pub(crate) async fn migrate(client: &mut Object) -> Result<i32, DbError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS chain_schema (
             id      INTEGER PRIMARY KEY CHECK (id = 1),
             version INTEGER NOT NULL
         );
         INSERT INTO chain_schema (id, version) VALUES (1, 0) ON CONFLICT (id) DO NOTHING;",
    )
    .await?;
    let found: i32 = tx
        .query_one("SELECT version FROM chain_schema WHERE id = 1", &[])
        .await?
        .try_get(0)?;
    if found > SCHEMA_VERSION {
        return Err(too_new(found));
    }
    let from = usize::try_from(found).unwrap_or(0);
    for sql in MIGRATIONS.iter().skip(from) {
        tx.batch_execute(sql).await?;
    }
    if found == 0 {
        tx.execute(
            "INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, $1) ON CONFLICT (id) DO NOTHING",
            &[&GENESIS_HASH],
        )
        .await?;
    }
    if found < SCHEMA_VERSION {
        tx.execute(
            "UPDATE chain_schema SET version = $1 WHERE id = 1",
            &[&SCHEMA_VERSION],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(found)
}
