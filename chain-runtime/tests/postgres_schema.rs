//! The PostgreSQL backend's own guarantees: versioned migrations that refuse a newer schema,
//! one transaction per unit of work, fencing, one chain across handles, tamper detection on
//! the tables, and no plaintext secret anywhere in the database.

use chain_runtime::audit::{AuditStore, BreakProblem};
use chain_runtime::journal::{JournalError, JournalWrite, RunState, Unit};
use chain_runtime::postgres::{PgDatabase, SCHEMA_VERSION};
use chain_runtime::test_util::backend::Backend;
use tokio_postgres::NoTls;

mod journal_fixtures;
use journal_fixtures::{entry, record, run};

async fn raw(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await.unwrap();
    tokio::spawn(connection);
    client
}

/// Drops `holder`, the journal handle that holds run `r1`, and takes its session's advisory
/// lock on `client` as soon as that session ends: the handle is gone, but its session looks
/// alive to a claim until `client` unlocks the returned key.
async fn outlive_dropped_holder<J>(client: &tokio_postgres::Client, holder: J) -> i64 {
    let name: String = client
        .query_one("SELECT holder FROM run_leases WHERE run_id = 'r1'", &[])
        .await
        .unwrap()
        .get(0);
    let key: i64 = name.trim_start_matches("pg-holder-").parse().unwrap();
    drop(holder);
    client
        .execute("SELECT pg_advisory_lock($1)", &[&key])
        .await
        .unwrap();
    key
}

#[tokio::test]
async fn migrations_run_once_and_a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = Backend::Postgres.database(dir.path(), "schema").await;
    // Two opens (as two workers would) migrate once.
    PgDatabase::connect(&db.location).await.unwrap();
    let client = raw(&db.location).await;
    let version: i32 = client
        .query_one("SELECT version FROM chain_schema", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(version, SCHEMA_VERSION);
    // A newer build migrated the database: this build refuses it, before touching anything.
    client
        .execute(
            "UPDATE chain_schema SET version = $1",
            &[&(SCHEMA_VERSION + 1)],
        )
        .await
        .unwrap();
    // A fresh URL spelling: the process keeps open databases by URL.
    let other_url = format!("{}?application_name=newer", db.location);
    let err = PgDatabase::connect(&other_url).await.unwrap_err();
    assert!(err.message.contains("newer than this build"), "{err}");
    let err = PgDatabase::connect_existing(&other_url).await.unwrap_err();
    assert!(err.message.contains("newer than this build"), "{err}");
}

#[tokio::test]
async fn a_database_at_an_older_version_is_migrated_forward() {
    let dir = tempfile::tempdir().unwrap();
    let db = Backend::Postgres.database(dir.path(), "older").await;
    PgDatabase::connect(&db.location).await.unwrap();
    let client = raw(&db.location).await;
    // Back to version 1, as a database written by the first release: no index on the
    // reference rows by record.
    client
        .batch_execute("DROP INDEX audit_record_refs_by_seq; UPDATE chain_schema SET version = 1;")
        .await
        .unwrap();
    let other_url = format!("{}?application_name=upgrade", db.location);
    PgDatabase::connect(&other_url).await.unwrap();
    let version: i32 = client
        .query_one("SELECT version FROM chain_schema", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(version, SCHEMA_VERSION);
    let indexed: bool = client
        .query_one(
            "SELECT to_regclass('audit_record_refs_by_seq') IS NOT NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(indexed, "migration 2 did not run");
}

#[tokio::test]
async fn an_empty_database_is_not_a_runtime_database_for_tools() {
    let dir = tempfile::tempdir().unwrap();
    let db = Backend::Postgres.database(dir.path(), "empty").await;
    let err = PgDatabase::connect_existing(&db.location)
        .await
        .unwrap_err();
    assert!(
        err.message.contains("not a chain-runtime database"),
        "{err}"
    );
    // …and it created nothing.
    let tables: i64 = raw(&db.location)
        .await
        .query_one(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(tables, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unit_commits_journal_and_audit_together_or_not_at_all() {
    let dir = tempfile::tempdir().unwrap();
    let db = Backend::Postgres.database(dir.path(), "unit").await;
    let journal = db.journal().await;
    let audit = db.audit().await;
    assert_eq!(
        journal.database(),
        audit.database(),
        "one database, one transaction"
    );
    let lease = journal.create_run(run("r1"), "engine-a").await.unwrap();
    let committed = journal
        .commit(
            Some(&lease),
            Unit::of([JournalWrite::Entry {
                entry: entry(0),
                node: 1,
            }])
            .audit(record("r1", 1)),
        )
        .await
        .unwrap();
    assert!(committed.applied);
    assert_eq!(committed.audit.len(), 1);
    // A unit whose state precondition fails writes nothing: neither the entry nor the record.
    let skipped = journal
        .commit(
            Some(&lease),
            Unit::of([
                JournalWrite::Entry {
                    entry: entry(1),
                    node: 2,
                },
                JournalWrite::State {
                    expected: Some("suspended"),
                    state: RunState::Compensating,
                },
            ])
            .audit(record("r1", 2)),
        )
        .await
        .unwrap();
    assert!(!skipped.applied);
    assert_eq!(journal.journal("r1").await.unwrap().len(), 1);
    assert_eq!(audit.run_history("r1").await.unwrap().len(), 1);
    assert_eq!(journal.get_run("r1").await.unwrap().unwrap().node, 1);
    audit.verify(None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_superseded_lease_cannot_write_and_a_dropped_holder_frees_its_runs() {
    let dir = tempfile::tempdir().unwrap();
    let db = Backend::Postgres.database(dir.path(), "fencing").await;
    let first = db.journal().await;
    let second = db.journal().await;
    let lease = first.create_run(run("r1"), "worker-1").await.unwrap();
    // A live holder's lease is not taken.
    match second.claim_run("r1", "worker-2").await {
        Err(JournalError::Claimed { owner, .. }) => assert_eq!(owner, "worker-1"),
        other => panic!("expected Claimed, got {other:?}"),
    }
    // The holder goes away (its process died): its session lock goes with it.
    drop(first);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let taken = loop {
        match second.claim_run("r1", "worker-2").await {
            Ok(lease) => break lease,
            Err(JournalError::Claimed { .. }) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(e) => panic!("the run stayed claimed: {e}"),
        }
    };
    assert!(taken.token > lease.token);
    // The old token is fenced off, inside the write's transaction, units with audit included.
    let audit = db.audit().await;
    let third = db.journal().await;
    let stale = third
        .commit(
            Some(&lease),
            Unit::of([JournalWrite::Entry {
                entry: entry(0),
                node: 1,
            }])
            .audit(record("r1", 1)),
        )
        .await;
    assert!(
        matches!(stale, Err(JournalError::LeaseLost(_))),
        "{stale:?}"
    );
    assert!(third.journal("r1").await.unwrap().is_empty());
    assert!(audit.run_history("r1").await.unwrap().is_empty());
    second.write_entry(&taken, entry(0), 1).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn appends_from_many_handles_form_one_chain_and_tampering_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let db = Backend::Postgres.database(dir.path(), "chain").await;
    let mut tasks = Vec::new();
    for w in 0..4 {
        // A handle per "worker", each on its own pool (distinct URL spellings).
        let url = format!("{}?application_name=worker{w}", db.location);
        tasks.push(tokio::spawn(async move {
            let store = chain_runtime::postgres::PgAuditStore::open(&url)
                .await
                .unwrap();
            for i in 0..25 {
                store.append(record(&format!("w{w}"), i)).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let audit = db.audit().await;
    let verified = audit.verify(None).await.unwrap();
    assert_eq!(verified.records, 100);
    let client = raw(&db.location).await;
    // Edit one column of one record.
    client
        .execute(
            "UPDATE audit_records SET principal = 'mallory' WHERE seq = 40",
            &[],
        )
        .await
        .unwrap();
    let err = audit.verify(None).await.unwrap_err();
    let brk = err.chain_break().expect("a chain break");
    assert_eq!(brk.seq, Some(40), "{brk:?}");
    client
        .execute(
            "UPDATE audit_records SET principal = 'alice' WHERE seq = 40",
            &[],
        )
        .await
        .unwrap();
    audit.verify(None).await.unwrap();
    // Drop the tail: the head row witnesses it.
    client
        .execute("DELETE FROM audit_records WHERE seq > 97", &[])
        .await
        .unwrap();
    let err = audit.verify(None).await.unwrap_err();
    assert!(
        matches!(
            err.chain_break().map(|b| &b.problem),
            Some(BreakProblem::BehindWitness { .. })
        ),
        "{err}"
    );
}

#[tokio::test]
async fn a_run_created_over_a_lease_row_that_outlived_its_run_takes_the_lease_on() {
    let dir = tempfile::tempdir().unwrap();
    let db = Backend::Postgres.database(dir.path(), "outlived").await;
    let journal = db.journal().await;
    let first = journal.create_run(run("x"), "worker-1").await.unwrap();
    journal.release_run(&first).await.unwrap();
    // The run row goes (as a purge would); its lease row stays.
    let client = raw(&db.location).await;
    client
        .execute("DELETE FROM run_runs WHERE run_id = 'x'", &[])
        .await
        .unwrap();
    let again = journal.create_run(run("x"), "worker-1").await.unwrap();
    // The token goes on, so that a write of the old lease is fenced off.
    assert_eq!(again.token, first.token + 1);
    assert!(journal.get_run("x").await.unwrap().is_some());
    assert!(matches!(
        journal.write_entry(&first, entry(0), 1).await,
        Err(JournalError::LeaseLost(_))
    ));
    journal.write_entry(&again, entry(0), 1).await.unwrap();
    // A run with the same id again is a duplicate; nothing of it is written.
    assert!(matches!(
        journal.create_run(run("x"), "worker-2").await,
        Err(JournalError::Duplicate(ref id)) if id == "x"
    ));
    let holders: i64 = client
        .query_one("SELECT count(*) FROM run_leases WHERE run_id = 'x'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(holders, 1);
}

/// A handle dropped in this process frees its runs for a claim however long PostgreSQL takes
/// to see its session end (here: held past the end by another session, as a slow server
/// would): the claim waits for the end instead of guessing how long it takes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_of_a_handle_dropped_in_this_process_is_claimed_once_its_session_ends() {
    let dir = tempfile::tempdir().unwrap();
    let db = Backend::Postgres.database(dir.path(), "dropped").await;
    let first = db.journal().await;
    let second = db.journal().await;
    first.create_run(run("r1"), "worker-1").await.unwrap();
    let client = raw(&db.location).await;
    // Granted once the dropped handle's session ended; held a while longer.
    let key = outlive_dropped_holder(&client, first).await;
    let release = tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        client
            .execute("SELECT pg_advisory_unlock($1)", &[&key])
            .await
            .unwrap();
    });
    let taken = second.claim_run("r1", "worker-2").await.unwrap();
    assert_eq!(taken.token, 2);
    release.await.unwrap();
}

/// One renewal of several leases moves the expiry of the current ones only, and tells which
/// were superseded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_extends_current_leases_only() {
    let dir = tempfile::tempdir().unwrap();
    let db = Backend::Postgres.database(dir.path(), "renew").await;
    let journal = db.journal().await;
    let a = journal.create_run(run("a"), "worker-1").await.unwrap();
    let b = journal.create_run(run("b"), "worker-1").await.unwrap();
    let client = raw(&db.location).await;
    let expiry = |run: &'static str| {
        let client = &client;
        async move {
            client
                .query_one(
                    "SELECT expires_ms FROM run_leases WHERE run_id = $1",
                    &[&run],
                )
                .await
                .unwrap()
                .get::<_, i64>(0)
        }
    };
    // `b` superseded (its token moved on, as a claim elsewhere would), `a` about to expire.
    client
        .batch_execute(
            "UPDATE run_leases SET token = token + 1 WHERE run_id = 'b'; \
             UPDATE run_leases SET expires_ms = 1 WHERE run_id = 'a'",
        )
        .await
        .unwrap();
    let b_before = expiry("b").await;
    let renewed = journal.renew_leases(&[b.clone(), a.clone()]).await.unwrap();
    assert_eq!(renewed, [false, true]);
    assert!(expiry("a").await > 1);
    assert_eq!(expiry("b").await, b_before);
}

/// A claim that watches a live-looking holder does not hold off that holder's release: it
/// watches without the run's lock (the release takes that lock shared, a claim exclusively),
/// and takes the run as soon as the release commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_watching_a_holder_lets_its_release_commit() {
    const LOCK_CLASS: i32 = 0x6368_6c73;
    let dir = tempfile::tempdir().unwrap();
    let db = Backend::Postgres.database(dir.path(), "watched").await;
    let first = db.journal().await;
    let second = db.journal().await;
    let lease = first.create_run(run("r1"), "worker-1").await.unwrap();
    let session = raw(&db.location).await;
    // The holder's handle is gone, its session lives on (held by `session` from its end).
    let key = outlive_dropped_holder(&session, first).await;
    let claim = tokio::spawn(async move { second.claim_run("r1", "worker-2").await });
    // The claim is watching by now (or starts after the release: it then finds the run free).
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    // The holder's release, as its writer commits it: the run's lease lock taken shared.
    let mut releaser = raw(&db.location).await;
    let tx = releaser.transaction().await.unwrap();
    tx.execute(
        "SELECT pg_advisory_xact_lock_shared($1, hashtext('r1'))",
        &[&LOCK_CLASS],
    )
    .await
    .unwrap();
    let token = i64::try_from(lease.token).unwrap();
    tx.execute(
        "UPDATE run_leases SET expires_ms = 0 WHERE run_id = 'r1' AND token = $1",
        &[&token],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let taken = claim.await.unwrap().unwrap();
    assert_eq!(taken.token, lease.token + 1);
    session
        .execute("SELECT pg_advisory_unlock($1)", &[&key])
        .await
        .unwrap();
}
