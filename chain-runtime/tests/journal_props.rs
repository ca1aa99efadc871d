//! Property tests of the journal's row decoder: rows of `run_runs` and `journal_entries`
//! written with arbitrary SQLite values in any column (wrong types, invalid JSON, huge or
//! negative numbers, invalid UTF-8 blobs) are read through the real SQLite journal (opened
//! read-only, as `chainctl` does). Invariants:
//! - reading never panics: every read answers `Ok` or an error;
//! - a row whose every column holds what the journal writes decodes to exactly that record;
//! - a row with a column the decoder cannot take is an error, never a different record.

use std::path::Path;

use chain_runtime::journal::{RunJournal, RunRecord, RunState, SqliteJournal};
use proptest::prelude::*;
use rusqlite::types::Value as Sql;
use serde_json::json;

/// The run the valid columns describe.
fn template() -> RunRecord {
    RunRecord {
        run_id: "run_1".into(),
        chain: "app::escalate".into(),
        chain_version: "v1".into(),
        step_versions: [("fetch".to_owned(), "h1".to_owned())].into(),
        principal: json!({ "id": "alice" }),
        principal_id: "alice".into(),
        input: json!(["deal-1"]),
        subjects: [("slack".to_owned(), Some("U1".to_owned()))].into(),
        parent_run_id: None,
        state: RunState::Running,
        node: 3,
        created_unix_ms: 1_700_000_000_000,
    }
}

/// The columns of `run_runs` as the journal writes the template.
fn valid_run_columns() -> Vec<Sql> {
    let t = template();
    let text = |s: &str| Sql::Text(s.to_owned());
    let json = |v: serde_json::Value| Sql::Text(v.to_string());
    vec![
        text(&t.run_id),
        text(&t.chain),
        text(&t.chain_version),
        json(json!(t.step_versions)),
        json(t.principal.clone()),
        text(&t.principal_id),
        json(t.input.clone()),
        json(json!(t.subjects)),
        Sql::Null,
        json(serde_json::to_value(&t.state).unwrap()),
        text(t.state.kind()),
        Sql::Integer(i64::from(t.node)),
        Sql::Integer(t.created_unix_ms),
    ]
}

/// Any SQLite value: the kind of thing a foreign writer or a damaged file leaves.
fn garbage() -> impl Strategy<Value = Sql> {
    prop_oneof![
        Just(Sql::Null),
        any::<i64>().prop_map(Sql::Integer),
        any::<f64>().prop_map(Sql::Real),
        "\\PC{0,24}".prop_map(Sql::Text),
        Just(Sql::Text("{\"state\":\"suspended\"}".into())),
        Just(Sql::Text("[".repeat(200))),
        prop::collection::vec(any::<u8>(), 0..24).prop_map(Sql::Blob),
    ]
}

/// Each column: the valid value, or (when the flag says so) garbage.
fn row(valid: Vec<Sql>) -> impl Strategy<Value = (Vec<Sql>, bool)> {
    let n = valid.len();
    (
        prop::collection::vec(any::<bool>(), n),
        prop::collection::vec(garbage(), n),
    )
        .prop_map(move |(keep, junk)| {
            let intact = keep.iter().all(|k| *k);
            let columns = keep
                .into_iter()
                .zip(junk)
                .zip(valid.iter().cloned())
                .map(|((k, j), v)| if k { v } else { j })
                .collect();
            (columns, intact)
        })
}

fn valid_entry_columns() -> Vec<Sql> {
    vec![
        Sql::Integer(0),
        Sql::Text("app::escalate/fetch#1".into()),
        Sql::Text("step".into()),
        Sql::Text("fetch".into()),
        Sql::Integer(1),
        Sql::Null,
    ]
}

fn rewrite(db: &Path, run: &[Sql], entry: &[Sql]) {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.execute_batch(
        "PRAGMA synchronous = OFF; DELETE FROM run_runs; DELETE FROM journal_entries;",
    )
    .unwrap();
    conn.execute(
        "INSERT INTO run_runs (run_id, chain, chain_version, step_versions, principal, \
         principal_id, input, subjects, parent_run_id, state, state_kind, node, created_ms) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
        rusqlite::params_from_iter(run.iter()),
    )
    .unwrap();
    conn.execute(
        "INSERT INTO journal_entries (run_id, seq, step_id, kind, name, attempt, result) \
         VALUES ('run_1', ?1, ?2, ?3, ?4, ?5, ?6)",
        rusqlite::params_from_iter(entry.iter()),
    )
    .unwrap();
}

struct Fixture {
    _dir: tempfile::TempDir,
    db: std::path::PathBuf,
    rt: tokio::runtime::Runtime,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("journal.db");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // The journal's columns without their types and constraints: what a foreign writer or a
    // damaged file can hold.
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch(
            "CREATE TABLE run_runs (run_id, chain, chain_version, step_versions, principal, \
             principal_id, input, subjects, parent_run_id, state, state_kind, node, created_ms); \
             CREATE TABLE journal_entries (run_id, seq, step_id, kind, name, attempt, result);",
        )
        .unwrap();
    Fixture { _dir: dir, db, rt }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 160,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn stored_rows_decode_exactly_or_are_refused(
        (run, run_intact) in row(valid_run_columns()),
        (entry, entry_intact) in row(valid_entry_columns()),
    ) {
        thread_local!(static FIXTURE: Fixture = fixture());
        FIXTURE.with(|f| -> Result<(), TestCaseError> {
            // The primary key and `run_id` of the entry are kept so the rows stay findable.
            let mut run = run;
            run[0] = Sql::Text("run_1".into());
            rewrite(&f.db, &run, &entry);
            let (got, listed, journal) = f.rt.block_on(async {
                let journal = SqliteJournal::open_read_only(&f.db).await.unwrap();
                (
                    journal.get_run("run_1").await,
                    journal.list_runs().await,
                    journal.journal("run_1").await,
                )
            });
            match got {
                Ok(Some(record)) => {
                    if run_intact {
                        prop_assert_eq!(&record, &template());
                    }
                    prop_assert_eq!(record.run_id.as_str(), "run_1");
                }
                Ok(None) => prop_assert!(false, "the row is there"),
                Err(e) => prop_assert!(!run_intact, "an intact row was refused: {}", e),
            }
            if run_intact {
                prop_assert_eq!(listed.unwrap(), vec![template()]);
            }
            match journal {
                Ok(entries) => {
                    prop_assert_eq!(entries.len(), 1);
                    if entry_intact {
                        prop_assert_eq!(entries[0].step_id.as_str(), "app::escalate/fetch#1");
                        prop_assert!(entries[0].result.is_none());
                    }
                }
                Err(e) => prop_assert!(!entry_intact, "an intact entry was refused: {}", e),
            }
            Ok(())
        })?;
    }
}
