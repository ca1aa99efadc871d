//! Tampering with a real audit store's tables (SQLite and PostgreSQL) and with JSON Lines
//! exports: verification must name the first bad record, the same way on the store and on its
//! export.

mod audit_support;

use audit_support::simulate_run;
use chain_runtime::audit::{
    AuditError, AuditStore, BreakProblem, ChainBreak, Checkpoint, SqliteAuditStore, canonical_json,
    record_hash, verify_jsonl,
};
use std::sync::Arc;

use chain_runtime::test_util::backend::{Backend, TestDatabase};
use rusqlite::Connection;
use serde_json::Value;

chain_runtime::backend_tests!(
    intact_store_and_export_verify_with_checkpoint,
    editing_a_column_is_caught_at_that_record,
    editing_inside_the_event_json_or_scopes_is_caught,
    deleting_a_record_is_caught_at_its_successor,
    deleting_and_renumbering_is_caught_by_the_hash_link,
    swapping_two_records_is_caught_at_the_first,
    inserting_a_forged_record_is_caught,
    truncating_the_tail_is_caught_against_a_checkpoint,
    rewritten_history_is_caught_by_the_checkpoint,
    a_checkpoint_from_another_chain_does_not_match,
    editing_the_lookup_index_is_caught,
);

struct Fixture {
    _dir: tempfile::TempDir,
    db: TestDatabase,
    store: Arc<dyn AuditStore>,
    checkpoint: Checkpoint,
}

/// A store holding one simulated run (11 records), its head checkpoint taken after verifying.
async fn fixture_on(backend: Backend) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let db = backend.database(dir.path(), "runtime").await;
    let store = db.audit().await;
    simulate_run(store.as_ref(), "alice", "run-1", "1", 1_700_000_000_000).await;
    let verified = store.verify(None).await.unwrap();
    assert_eq!(verified.records, 11);
    let checkpoint = verified.head.clone().unwrap();
    assert_eq!(store.head().await.unwrap(), Some(checkpoint.clone()));
    Fixture {
        _dir: dir,
        db,
        store,
        checkpoint,
    }
}

/// The SQLite fixture, for the export and file tests.
async fn fixture() -> Fixture {
    fixture_on(Backend::Sqlite).await
}

async fn pg_client(db: &TestDatabase) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&db.location, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
}

/// Runs raw SQL on the database through a separate connection, as an attacker would.
async fn tamper(db: &TestDatabase, sql: &str) {
    match db.path() {
        Some(path) => Connection::open(path).unwrap().execute_batch(sql).unwrap(),
        None => pg_client(db).await.batch_execute(sql).await.unwrap(),
    }
}

/// `text` as an SQL literal (`NULL` for none).
fn sql_literal(text: Option<&str>) -> String {
    text.map_or("NULL".to_owned(), |t| {
        format!("'{}'", t.replace('\'', "''"))
    })
}

async fn export(store: &dyn AuditStore) -> Vec<u8> {
    let mut out = Vec::new();
    store.export_jsonl(&mut out).await.unwrap();
    out
}

/// Verifies the store (through a freshly opened store on the same database) and its export,
/// asserts both fail the same way, and returns the break.
async fn broken(db: &TestDatabase, checkpoint: Option<Checkpoint>) -> ChainBreak {
    let store = db.audit().await;
    let on_store = match store.verify(checkpoint.clone()).await {
        Err(AuditError::ChainBroken(b)) => b,
        other => panic!("store verification should fail, got {other:?}"),
    };
    let exported = export(store.as_ref()).await;
    let on_export = match verify_jsonl(exported.as_slice(), checkpoint) {
        Err(AuditError::ChainBroken(b)) => b,
        other => panic!("export verification should fail, got {other:?}"),
    };
    assert_eq!(
        on_store, on_export,
        "store and export must report the same first bad record"
    );
    // The message names the position and teaches what happened.
    assert!(
        on_store
            .to_string()
            .contains(&format!("position {}", on_store.position))
    );
    on_store
}

async fn hash_of(db: &TestDatabase, seq: i64) -> String {
    match db.path() {
        Some(path) => Connection::open(path)
            .unwrap()
            .query_row(
                "SELECT hash FROM audit_records WHERE seq = ?1",
                [seq],
                |r| r.get(0),
            )
            .unwrap(),
        None => pg_client(db)
            .await
            .query_one("SELECT hash FROM audit_records WHERE seq = $1", &[&seq])
            .await
            .unwrap()
            .get(0),
    }
}

async fn intact_store_and_export_verify_with_checkpoint(backend: Backend) {
    let f = fixture_on(backend).await;
    let verified = f.store.verify(Some(f.checkpoint.clone())).await.unwrap();
    assert_eq!(verified.records, 11);
    let exported = export(f.store.as_ref()).await;
    let from_export = verify_jsonl(exported.as_slice(), Some(f.checkpoint.clone())).unwrap();
    assert_eq!(from_export, verified);
    // A checkpoint in the middle of the chain is fine too.
    let mid = Checkpoint {
        seq: 4,
        hash: hash_of(&f.db, 4).await,
    };
    f.store.verify(Some(mid)).await.unwrap();
}

async fn editing_a_column_is_caught_at_that_record(backend: Backend) {
    let f = fixture_on(backend).await;
    tamper(
        &f.db,
        "UPDATE audit_records SET principal = 'mallory' WHERE seq = 4",
    )
    .await;
    let b = broken(&f.db, None).await;
    assert_eq!((b.position, b.seq), (4, Some(4)));
    assert!(
        matches!(b.problem, BreakProblem::HashMismatch { .. }),
        "{b}"
    );
}

async fn editing_inside_the_event_json_or_scopes_is_caught(backend: Backend) {
    let f = fixture_on(backend).await;
    let edit = match backend {
        Backend::Sqlite => "json_set(event, '$.step', 'harmless')",
        Backend::Postgres => "jsonb_set(event::jsonb, '{step}', '\"harmless\"')::text",
    };
    tamper(
        &f.db,
        &format!("UPDATE audit_records SET event = {edit} WHERE seq = 7"),
    )
    .await;
    let b = broken(&f.db, None).await;
    assert_eq!((b.position, b.seq), (7, Some(7)));
    assert!(
        matches!(b.problem, BreakProblem::HashMismatch { .. }),
        "{b}"
    );

    let f = fixture_on(backend).await;
    tamper(
        &f.db,
        r#"UPDATE audit_records SET scopes = '["api"]' WHERE seq = 5"#,
    )
    .await;
    let b = broken(&f.db, None).await;
    assert_eq!((b.position, b.seq), (5, Some(5)));
    assert!(
        matches!(b.problem, BreakProblem::HashMismatch { .. }),
        "{b}"
    );

    // Back-dating a record by one millisecond is an edit as well.
    let f = fixture_on(backend).await;
    tamper(
        &f.db,
        "UPDATE audit_records SET time_unix_ms = time_unix_ms - 1 WHERE seq = 2",
    )
    .await;
    let b = broken(&f.db, None).await;
    assert_eq!((b.position, b.seq), (2, Some(2)));
    assert!(
        matches!(b.problem, BreakProblem::HashMismatch { .. }),
        "{b}"
    );
}

async fn deleting_a_record_is_caught_at_its_successor(backend: Backend) {
    let f = fixture_on(backend).await;
    tamper(&f.db, "DELETE FROM audit_records WHERE seq = 5").await;
    let b = broken(&f.db, None).await;
    assert_eq!((b.position, b.seq), (5, Some(6)));
    assert_eq!(
        b.problem,
        BreakProblem::SeqMismatch {
            expected: 5,
            found: 6
        }
    );
}

async fn deleting_and_renumbering_is_caught_by_the_hash_link(backend: Backend) {
    let f = fixture_on(backend).await;
    tamper(
        &f.db,
        // (through an offset: PostgreSQL checks the key row by row)
        "DELETE FROM audit_records WHERE seq = 5;
         UPDATE audit_records SET seq = seq + 1000 WHERE seq > 5;
         UPDATE audit_records SET seq = seq - 1001 WHERE seq > 1000;",
    )
    .await;
    let b = broken(&f.db, None).await;
    assert_eq!((b.position, b.seq), (5, Some(5)));
    assert!(
        matches!(b.problem, BreakProblem::PrevHashMismatch { .. }),
        "{b}"
    );
}

async fn swapping_two_records_is_caught_at_the_first(backend: Backend) {
    let f = fixture_on(backend).await;
    tamper(
        &f.db,
        "UPDATE audit_records SET seq = -1 WHERE seq = 3;
         UPDATE audit_records SET seq = 3 WHERE seq = 8;
         UPDATE audit_records SET seq = 8 WHERE seq = -1;",
    )
    .await;
    let b = broken(&f.db, None).await;
    assert_eq!((b.position, b.seq), (3, Some(3)));
    assert!(
        matches!(b.problem, BreakProblem::PrevHashMismatch { .. }),
        "{b}"
    );
}

async fn inserting_a_forged_record_is_caught(backend: Backend) {
    // Naive forgery at the tail: the hash is made up.
    let f = fixture_on(backend).await;
    let head = f.checkpoint.hash.clone();
    tamper(
        &f.db,
        &format!(
            "INSERT INTO audit_records SELECT 12, format, time_unix_ms, run_id, step_id, 'mallory',
                connector, account_id, upstream_subject, grant_id, scopes, '[]', outcome, event,
                '{head}', 'feedface' FROM audit_records WHERE seq = 9"
        ),
    )
    .await;
    let b = broken(&f.db, None).await;
    assert_eq!((b.position, b.seq), (12, Some(12)));
    assert!(
        matches!(b.problem, BreakProblem::HashMismatch { .. }),
        "{b}"
    );

    // A capable forger: makes room in the middle (renumbering records and index), links the
    // forged record to its predecessor and computes its hash with the public algorithm.
    let f = fixture_on(backend).await;
    let store_view = f.db.audit().await;
    let mut forged: Value = store_view.scan_raw(Some(8), 1).await.unwrap().remove(0);
    forged["seq"] = 10.into();
    forged["principal"] = "mallory".into();
    forged["records"] = serde_json::json!([]);
    forged["prev_hash"] = hash_of(&f.db, 9).await.into();
    forged["hash"] = record_hash(&forged).into();
    let text = |k: &str| sql_literal(forged[k].as_str());
    let json = |k: &str| sql_literal(Some(&forged[k].to_string()));
    let insert = format!(
        "INSERT INTO audit_records VALUES (10, 1, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {})",
        forged["time_unix_ms"].as_i64().unwrap(),
        text("run_id"),
        text("step_id"),
        text("principal"),
        text("connector"),
        text("account_id"),
        text("upstream_subject"),
        text("grant_id"),
        json("scopes"),
        json("records"),
        text("outcome"),
        json("event"),
        text("prev_hash"),
        text("hash"),
    );
    tamper(
        &f.db,
        &format!(
            "UPDATE audit_records SET seq = seq + 1000 WHERE seq >= 10;
             UPDATE audit_records SET seq = seq - 999 WHERE seq >= 1000;
             UPDATE audit_record_refs SET seq = seq + 1 WHERE seq >= 10;
             {insert};"
        ),
    )
    .await;
    let b = broken(&f.db, None).await;
    // The forged record is self-consistent; the chain breaks at the record it displaced.
    assert_eq!((b.position, b.seq), (11, Some(11)));
    assert!(
        matches!(b.problem, BreakProblem::PrevHashMismatch { .. }),
        "{b}"
    );
}

async fn truncating_the_tail_is_caught_against_a_checkpoint(backend: Backend) {
    let f = fixture_on(backend).await;
    tamper(
        &f.db,
        "DELETE FROM audit_records WHERE seq > 7; DELETE FROM audit_record_refs WHERE seq > 7;",
    )
    .await;
    // Without a checkpoint an exported truncated chain is indistinguishable from a shorter
    // one...
    let store = f.db.audit().await;
    let exported = export(store.as_ref()).await;
    assert_eq!(verify_jsonl(exported.as_slice(), None).unwrap().records, 7);
    // ...but the store knows the head it last committed (its head witness)...
    let b = match store.verify(None).await {
        Err(AuditError::ChainBroken(b)) => b,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        b.problem,
        BreakProblem::BehindWitness {
            witness_seq: 11,
            last_seq: 7
        }
    );
    // ...with one it is caught.
    let b = broken(&f.db, Some(f.checkpoint.clone())).await;
    assert_eq!((b.position, b.seq), (8, None));
    assert_eq!(
        b.problem,
        BreakProblem::Truncated {
            checkpoint_seq: 11,
            last_seq: 7
        }
    );
}

async fn rewritten_history_is_caught_by_the_checkpoint(backend: Backend) {
    // The strongest attacker: edits record 4 and recomputes every later hash and link.
    let f = fixture_on(backend).await;
    let mut values = f.store.scan_raw(None, 100).await.unwrap();
    values[3]["principal"] = "mallory".into();
    for i in 3..values.len() {
        if i > 0 {
            let prev = values[i - 1]["hash"].clone();
            values[i]["prev_hash"] = prev;
        }
        let h = record_hash(&values[i]);
        values[i]["hash"] = h.into();
    }
    let mut sql = String::new();
    for v in &values[3..] {
        sql.push_str(&format!(
            "UPDATE audit_records SET principal = {}, prev_hash = {}, hash = {} WHERE seq = {};\n",
            sql_literal(v["principal"].as_str()),
            sql_literal(v["prev_hash"].as_str()),
            sql_literal(v["hash"].as_str()),
            v["seq"].as_i64().unwrap()
        ));
    }
    tamper(&f.db, &sql).await;
    // Self-consistent without a checkpoint (the documented limit of a keyless chain)...
    let exported = export(f.db.audit().await.as_ref()).await;
    verify_jsonl(exported.as_slice(), None).unwrap();
    // (the store itself still knows the hash of the head it last committed)
    assert!(f.db.audit().await.verify(None).await.is_err());
    // ...but not against the checkpoint kept elsewhere.
    let b = broken(&f.db, Some(f.checkpoint.clone())).await;
    assert_eq!((b.position, b.seq), (11, Some(11)));
    assert!(
        matches!(b.problem, BreakProblem::CheckpointMismatch { .. }),
        "{b}"
    );
}

async fn a_checkpoint_from_another_chain_does_not_match(backend: Backend) {
    let f = fixture_on(backend).await;
    let wrong = Checkpoint {
        seq: 6,
        hash: "ab".repeat(32),
    };
    let b = broken(&f.db, Some(wrong)).await;
    assert_eq!((b.position, b.seq), (6, Some(6)));
    assert!(
        matches!(b.problem, BreakProblem::CheckpointMismatch { .. }),
        "{b}"
    );
}

async fn editing_the_lookup_index_is_caught(backend: Backend) {
    let f = fixture_on(backend).await;
    // Hiding the Jira write from who_authorized by deleting its index row.
    let before = f.store.who_authorized("jira", "OPS-1").await.unwrap();
    assert_eq!(before.len(), 1);
    let seq = before[0].seq;
    tamper(
        &f.db,
        &format!("DELETE FROM audit_record_refs WHERE seq = {seq}"),
    )
    .await;
    assert!(
        f.store
            .who_authorized("jira", "OPS-1")
            .await
            .unwrap()
            .is_empty()
    );
    let b = match f.store.verify(None).await {
        Err(AuditError::ChainBroken(b)) => b,
        other => panic!("expected an index mismatch, got {other:?}"),
    };
    assert_eq!(b.seq, Some(seq));
    assert!(
        matches!(b.problem, BreakProblem::IndexMismatch { .. }),
        "{b}"
    );
}

// ---- JSON Lines exports tampered directly ----

/// A text column holding a byte that is not UTF-8, with the record's hash forged over the
/// column's bytes as they are: verification reads the text as the record object does (the byte
/// becomes U+FFFD), so the record does not hash to its stored hash. Were the bytes hashed as
/// stored, the record would pass and the chain would only break at its successor.
#[tokio::test]
async fn a_column_that_is_not_utf8_is_caught_even_when_hashed_as_stored() {
    let f = fixture().await;
    let value = f.store.scan_raw(Some(3), 1).await.unwrap().remove(0);
    assert_eq!(value["seq"], 4);
    let principal = value["principal"].as_str().unwrap().to_owned();
    let mut object = value.clone();
    object.as_object_mut().unwrap().remove("hash");
    let canonical = canonical_json(&object);
    let member = format!("\"principal\":\"{principal}\"");
    assert_eq!(canonical.matches(&member).count(), 1);
    let mut edited = principal.into_bytes();
    edited[1] = 0xff;
    let at = canonical.find(&member).unwrap() + "\"principal\":\"".len();
    let mut forged = canonical.as_bytes().to_vec();
    forged.splice(at..at + edited.len(), edited.iter().copied());
    let hash = blake3::hash(&forged).to_hex().to_string();
    let hex: String = edited.iter().map(|b| format!("{b:02x}")).collect();
    tamper(
        &f.db,
        &format!(
            "UPDATE audit_records SET principal = CAST(x'{hex}' AS TEXT), hash = '{hash}' \
             WHERE seq = 4"
        ),
    )
    .await;
    let b = broken(&f.db, None).await;
    assert_eq!((b.position, b.seq), (4, Some(4)));
    match b.problem {
        BreakProblem::HashMismatch { stored, .. } => assert_eq!(stored, hash),
        other => panic!("{other:?}"),
    }
}

async fn exported_lines() -> (Vec<String>, Checkpoint) {
    let f = fixture().await;
    let text = String::from_utf8(export(f.store.as_ref()).await).unwrap();
    let lines: Vec<String> = text.lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 11);
    (lines, f.checkpoint)
}

fn verify_lines(lines: &[String], checkpoint: Option<Checkpoint>) -> Result<u64, ChainBreak> {
    let text = lines.join("\n") + "\n";
    match verify_jsonl(text.as_bytes(), checkpoint) {
        Ok(v) => Ok(v.records),
        Err(AuditError::ChainBroken(b)) => Err(b),
        Err(e) => panic!("unexpected error {e}"),
    }
}

#[tokio::test]
async fn export_lines_are_canonical_and_independently_checkable() {
    let (lines, cp) = exported_lines().await;
    assert_eq!(verify_lines(&lines, Some(cp)), Ok(11));
    for line in &lines {
        let v: Value = serde_json::from_str(line).unwrap();
        // Independent check: hash = BLAKE3(canonical JSON without `hash`); lines are canonical.
        assert_eq!(chain_runtime::audit::canonical_json(&v), *line);
        let mut without = v.as_object().unwrap().clone();
        let stored = without.remove("hash").unwrap();
        let canonical = chain_runtime::audit::canonical_json(&Value::Object(without));
        assert_eq!(
            stored.as_str().unwrap(),
            blake3::hash(canonical.as_bytes()).to_hex().as_str()
        );
    }
}

#[tokio::test]
async fn tampered_exports_are_caught_at_the_first_bad_line() {
    let (lines, cp) = exported_lines().await;

    // Edit a field.
    let mut edited = lines.clone();
    edited[3] = edited[3].replace("\"alice\"", "\"mallory\"");
    assert_ne!(edited[3], lines[3]);
    let b = verify_lines(&edited, None).unwrap_err();
    assert_eq!((b.position, b.seq), (4, Some(4)));
    assert!(matches!(b.problem, BreakProblem::HashMismatch { .. }));

    // Add a field.
    let mut added = lines.clone();
    let mut v: Value = serde_json::from_str(&added[2]).unwrap();
    v["note"] = "approved by the CFO".into();
    added[2] = v.to_string();
    let b = verify_lines(&added, None).unwrap_err();
    assert_eq!((b.position, b.seq), (3, Some(3)));
    assert!(matches!(b.problem, BreakProblem::HashMismatch { .. }));

    // Delete a line.
    let mut deleted = lines.clone();
    deleted.remove(4);
    let b = verify_lines(&deleted, None).unwrap_err();
    assert_eq!((b.position, b.seq), (5, Some(6)));
    assert_eq!(
        b.problem,
        BreakProblem::SeqMismatch {
            expected: 5,
            found: 6
        }
    );

    // Swap two lines.
    let mut swapped = lines.clone();
    swapped.swap(2, 6);
    let b = verify_lines(&swapped, None).unwrap_err();
    assert_eq!((b.position, b.seq), (3, Some(7)));
    assert_eq!(
        b.problem,
        BreakProblem::SeqMismatch {
            expected: 3,
            found: 7
        }
    );

    // Insert a well-formed forged line (correct link and hash) in the middle.
    let mut inserted = lines.clone();
    let mut forged: Value = serde_json::from_str(&lines[5]).unwrap();
    forged["principal"] = "mallory".into();
    forged["prev_hash"] = serde_json::from_str::<Value>(&lines[4]).unwrap()["hash"].clone();
    forged["hash"] = record_hash(&forged).into();
    inserted.insert(5, forged.to_string());
    let b = verify_lines(&inserted, None).unwrap_err();
    assert_eq!((b.position, b.seq), (7, Some(6)));
    assert_eq!(
        b.problem,
        BreakProblem::SeqMismatch {
            expected: 7,
            found: 6
        }
    );

    // Replace a record by a forged one (correct link and hash): the next one breaks.
    let mut replaced = lines.clone();
    replaced[5] = forged.to_string();
    let b = verify_lines(&replaced, None).unwrap_err();
    assert_eq!((b.position, b.seq), (7, Some(7)));
    assert!(matches!(b.problem, BreakProblem::PrevHashMismatch { .. }));

    // Truncate the tail.
    let truncated = lines[..8].to_vec();
    assert_eq!(verify_lines(&truncated, None), Ok(8));
    let b = verify_lines(&truncated, Some(cp.clone())).unwrap_err();
    assert_eq!(
        b.problem,
        BreakProblem::Truncated {
            checkpoint_seq: 11,
            last_seq: 8
        }
    );

    // A line that is not JSON.
    let mut garbage = lines.clone();
    garbage[1] = "{not json".into();
    let b = verify_lines(&garbage, None).unwrap_err();
    assert_eq!(b.position, 2);
    assert!(matches!(b.problem, BreakProblem::Malformed { .. }));
}

/// A deleted `-wal` file takes the newest commits with it and leaves a consistent older
/// database; the head witness beside the database makes the gap visible.
#[tokio::test]
async fn a_deleted_wal_file_is_caught_by_the_head_witness() {
    let f = fixture().await;
    // Move everything so far into the database file, then commit more, which stays in the WAL.
    tamper(&f.db, "PRAGMA wal_checkpoint(TRUNCATE);").await;
    let path = f.db.path().unwrap().to_owned();
    simulate_run(f.store.as_ref(), "alice", "run-2", "2", 1_700_000_100_000).await;
    let head = f.store.verify(None).await.unwrap().head.unwrap();
    assert_eq!(head.seq, 22);
    // What a deleted -wal leaves: the database file as of the checkpoint (copied while the
    // store is open, so nothing is checkpointed on close), with the witness beside it.
    let copy = path.with_file_name("copy.db");
    std::fs::copy(&path, &copy).unwrap();
    let witness = |p: &std::path::Path| format!("{}-audit-head", p.display());
    std::fs::copy(witness(&path), witness(&copy)).unwrap();
    let store = SqliteAuditStore::open(&copy).await.unwrap();
    let b = match store.verify(None).await {
        Err(AuditError::ChainBroken(b)) => b,
        other => panic!("a lost WAL must not verify, got {other:?}"),
    };
    assert_eq!(
        b.problem,
        BreakProblem::BehindWitness {
            witness_seq: 22,
            last_seq: 11
        }
    );
    assert!(b.to_string().contains("-wal"), "{b}");
    // Without the witness (moved away with the WAL) only a checkpoint kept elsewhere helps.
    std::fs::remove_file(witness(&copy)).unwrap();
    let store = SqliteAuditStore::open(&copy).await.unwrap();
    assert_eq!(store.verify(None).await.unwrap().records, 11);
    assert!(store.verify(Some(head)).await.is_err());
}
