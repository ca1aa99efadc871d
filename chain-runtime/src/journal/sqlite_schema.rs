//! The SQLite journal's tables (see [`super::SqliteJournal`]; the leases' table is
//! [`super::leases::SCHEMA`]).

/// The journal's tables, created if missing.
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS run_runs (
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
    node          INTEGER NOT NULL,
    created_ms    INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS journal_entries (
    run_id  TEXT NOT NULL,
    seq     INTEGER NOT NULL,
    step_id TEXT NOT NULL,
    kind    TEXT NOT NULL,
    name    TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    result  TEXT,
    PRIMARY KEY (run_id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS journal_compensations (
    run_id      TEXT NOT NULL,
    step_id     TEXT NOT NULL,
    compensator TEXT NOT NULL,
    attempt     INTEGER NOT NULL,
    result      TEXT,
    PRIMARY KEY (run_id, step_id)
);
CREATE TABLE IF NOT EXISTS alert_alerts (
    id      INTEGER PRIMARY KEY,
    run_id  TEXT NOT NULL,
    alert   TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS alert_alerts_by_run ON alert_alerts (run_id, id);
";
