//! Group commit on PostgreSQL: units queued together commit in one transaction on one chain
//! head, and a unit whose lease was superseded, or whose state precondition fails, fails alone
//! without taking its batch with it.

use std::sync::Arc;

use chain_runtime::journal::{
    Committed, JournalError, JournalWrite, Lease, RunJournal, RunState, Unit,
};
use chain_runtime::postgres::PgDatabase;
use chain_runtime::test_util::backend::Backend;
use tokio_postgres::NoTls;

mod journal_fixtures;
use journal_fixtures::{entry, record, run};

fn step_unit(seq: u32, run: &str) -> Unit {
    Unit::of([JournalWrite::Entry {
        entry: entry(seq),
        node: seq + 1,
    }])
    .audit(record(run, i64::from(seq)))
}

/// The first column of every row `sql` returns, as text.
async fn texts(client: &tokio_postgres::Client, sql: &str) -> Vec<String> {
    client
        .query(sql, &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Waits (with a deadline) until a session waits for a lock `client`'s session holds, while
/// `queued` (the commit expected to wait) is not answered. `client` is inside the transaction
/// holding the lock, where `pg_stat_activity` is a snapshot taken at its first use, so the
/// wait is found through the lock manager (`pg_blocking_pids`), which is always current.
async fn until_someone_waits(
    client: &tokio_postgres::Client,
    queued: &mut tokio::task::JoinHandle<Result<Committed, JournalError>>,
) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        if queued.is_finished() {
            panic!(
                "the unit was answered without waiting for the chain head: {:?}",
                queued.await
            );
        }
        let row = client
            .query_one(
                "SELECT count(*) FROM pg_locks \
                 WHERE NOT granted AND pg_backend_pid() = ANY(pg_blocking_pids(pid))",
                &[],
            )
            .await
            .unwrap();
        if row.get::<_, i64>(0) > 0 {
            return;
        }
        if std::time::Instant::now() > deadline {
            client
                .batch_execute("SELECT pg_stat_clear_snapshot()")
                .await
                .unwrap();
            let sessions = texts(
                client,
                "SELECT format('%s %s %s/%s xact=%s: %s', pid, state, wait_event_type, \
                 wait_event, xact_start IS NOT NULL, left(query, 160)) \
                 FROM pg_stat_activity WHERE datname = current_database()",
            )
            .await;
            panic!(
                "the writer never waited for the chain head; the database's sessions:\n{}",
                sessions.join("\n")
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// Holds the chain head in a session of its own, then queues `unit` under `lease` and waits
/// until the writer's batch carrying it waits for the head: the units queued next form the
/// following batch, whole. Returns the session (`ROLLBACK` lets the head go) and the queued
/// commit.
async fn queued_behind_held_head(
    location: &str,
    journal: &Arc<dyn RunJournal>,
    lease: &Lease,
    unit: Unit,
) -> (
    tokio_postgres::Client,
    tokio::task::JoinHandle<Result<Committed, JournalError>>,
) {
    let (head, connection) = tokio_postgres::connect(location, NoTls).await.unwrap();
    tokio::spawn(connection);
    head.batch_execute("BEGIN; SELECT seq FROM audit_head WHERE id = 1 FOR UPDATE")
        .await
        .unwrap();
    let mut earlier = tokio::spawn({
        let (journal, lease) = (Arc::clone(journal), lease.clone());
        async move { journal.commit(Some(&lease), unit).await }
    });
    until_someone_waits(&head, &mut earlier).await;
    (head, earlier)
}

// The units below are queued while the writer's previous batch waits for the chain head (held
// here), so they form the next batch, whole: the writer forms a batch once the previous one
// holds the head.
#[tokio::test]
async fn a_fenced_out_unit_fails_alone_and_the_rest_of_its_batch_commits_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = Backend::Postgres.database(dir.path(), "group").await;
    let journal = db.journal().await;
    let other = db.journal().await;
    let audit = db.audit().await;
    let pg = PgDatabase::connect(&db.location).await.unwrap();
    let a = journal.create_run(run("a"), "worker-1").await.unwrap();
    let b = journal.create_run(run("b"), "worker-1").await.unwrap();
    let c = journal.create_run(run("c"), "worker-1").await.unwrap();
    let d = journal.create_run(run("d"), "worker-1").await.unwrap();
    // Run b changes hands: worker-1's lease on it is fenced off.
    journal.release_run(&b).await.unwrap();
    let taken = other.claim_run("b", "worker-2").await.unwrap();
    assert!(taken.token > b.token);
    let before = pg.writer_stats();
    let (head, earlier) =
        queued_behind_held_head(&db.location, &journal, &d, step_unit(0, "d")).await;

    let deferred = step_unit(1, "a").deferred();
    let precondition = Unit::of([
        JournalWrite::Entry {
            entry: entry(0),
            node: 1,
        },
        JournalWrite::State {
            expected: Some("suspended"),
            state: RunState::Compensating,
        },
    ])
    .audit(record("c", 0));
    let finished = Unit::of([JournalWrite::State {
        expected: Some("running"),
        state: RunState::Compensating,
    }])
    .audit(record("c", 1));
    // Every commit below is queued on its first poll, before the head is let go.
    let (first, stale, second, skipped, after_skip, stale_again, ()) = tokio::join!(
        journal.commit(Some(&a), step_unit(0, "a")),
        journal.commit(Some(&b), step_unit(0, "b")),
        journal.commit(Some(&a), deferred),
        journal.commit(Some(&c), precondition),
        journal.commit(Some(&c), finished),
        journal.commit(Some(&b), step_unit(1, "b")),
        async { head.batch_execute("ROLLBACK").await.unwrap() },
    );
    let earlier = earlier.await.unwrap().unwrap();
    assert!(earlier.applied);
    let (first, second, after_skip) = (first.unwrap(), second.unwrap(), after_skip.unwrap());
    assert!(first.applied && second.applied && after_skip.applied);
    assert!(!skipped.unwrap().applied);
    for stale in [stale, stale_again] {
        assert!(
            matches!(stale, Err(JournalError::LeaseLost(ref run)) if run == "b"),
            "{stale:?}"
        );
    }
    // The earlier unit in a transaction of its own, then the three applied units: one
    // transaction, their records consecutive in queue order, after the earlier one's.
    let stats = pg.writer_stats();
    assert_eq!(stats.writes - before.writes, 4);
    assert_eq!(stats.commits - before.commits, 2);
    let seqs: Vec<u64> = [&earlier, &first, &second, &after_skip]
        .iter()
        .map(|c| c.audit[0].seq)
        .collect();
    assert_eq!(seqs, [seqs[0], seqs[0] + 1, seqs[0] + 2, seqs[0] + 3]);
    assert_eq!(first.audit[0].hash, second.audit[0].prev_hash);

    // Nothing of the refused units was written; everything of the others was.
    assert_eq!(journal.journal("a").await.unwrap().len(), 2);
    assert_eq!(journal.get_run("a").await.unwrap().unwrap().node, 2);
    assert!(journal.journal("b").await.unwrap().is_empty());
    assert!(audit.run_history("b").await.unwrap().is_empty());
    assert!(journal.journal("c").await.unwrap().is_empty());
    let c_run = journal.get_run("c").await.unwrap().unwrap();
    assert!(matches!(c_run.state, RunState::Compensating), "{c_run:?}");
    assert_eq!(audit.run_history("c").await.unwrap().len(), 1);
    let verified = audit.verify(None).await.unwrap();
    assert_eq!(verified.records, 4);
    // The new holder still writes.
    other.write_entry(&taken, entry(0), 1).await.unwrap();
}

// A unit that fails (its step id holds a NUL byte, which PostgreSQL's text refuses) takes
// with it the later units of its run queued before its failure was answered, and only those:
// the units of a run commit in queue order or not at all.
#[tokio::test]
async fn a_failed_unit_fails_the_later_units_of_its_run_queued_before_its_answer() {
    let dir = tempfile::tempdir().unwrap();
    let db = Backend::Postgres.database(dir.path(), "shared").await;
    let journal = db.journal().await;
    let audit = db.audit().await;
    assert!(journal.ordered_commits());
    let a = journal.create_run(run("a"), "worker-1").await.unwrap();
    let b = journal.create_run(run("b"), "worker-1").await.unwrap();
    let (head, earlier) =
        queued_behind_held_head(&db.location, &journal, &b, step_unit(0, "b")).await;

    let mut bad = entry(0);
    bad.step_id = "demo/st\0ep#0".into();
    let failing = Unit::of([JournalWrite::Entry {
        entry: bad,
        node: 1,
    }])
    .audit(record("a", 0))
    .deferred();
    let (failed, after, other, ()) = tokio::join!(
        journal.commit(Some(&a), failing),
        journal.commit(Some(&a), step_unit(1, "a")),
        journal.commit(Some(&b), step_unit(1, "b")),
        async { head.batch_execute("ROLLBACK").await.unwrap() },
    );
    assert!(earlier.await.unwrap().unwrap().applied);
    let failed = failed.unwrap_err().to_string();
    let after = after.unwrap_err().to_string();
    assert!(
        after.contains("an earlier unit of this run failed"),
        "{after}"
    );
    assert!(failed.contains("invalid byte sequence"), "{failed}");
    assert!(after.contains("invalid byte sequence"), "{after}");
    assert!(other.unwrap().applied);
    assert!(journal.journal("a").await.unwrap().is_empty());
    assert!(audit.run_history("a").await.unwrap().is_empty());
    assert_eq!(journal.journal("b").await.unwrap().len(), 2);
    // A unit queued once the failure was answered commits.
    assert!(
        journal
            .commit(Some(&a), step_unit(1, "a"))
            .await
            .unwrap()
            .applied
    );
    assert_eq!(journal.journal("a").await.unwrap().len(), 1);
    assert_eq!(audit.verify(None).await.unwrap().records, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_units_of_two_processes_form_one_chain() {
    let dir = tempfile::tempdir().unwrap();
    let db = Backend::Postgres.database(dir.path(), "many").await;
    let mut tasks = Vec::new();
    for w in 0..2 {
        // Distinct URL spellings: a pool and a writer each, as two processes would have.
        let url = format!("{}?application_name=worker{w}", db.location);
        let pg = PgDatabase::connect(&url).await.unwrap();
        let journal = Arc::new(chain_runtime::postgres::PgJournal::on(pg).await.unwrap());
        for r in 0..8 {
            let journal = Arc::clone(&journal);
            tasks.push(tokio::spawn(async move {
                let id = format!("w{w}-r{r}");
                let lease = journal.create_run(run(&id), "engine").await.unwrap();
                for seq in 0..10 {
                    let unit = step_unit(seq, &id);
                    let unit = if seq % 2 == 0 { unit } else { unit.deferred() };
                    assert!(journal.commit(Some(&lease), unit).await.unwrap().applied);
                }
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    let audit = db.audit().await;
    assert_eq!(audit.verify(None).await.unwrap().records, 160);
    let journal = db.journal().await;
    assert_eq!(journal.journal("w1-r7").await.unwrap().len(), 10);
}

// A synchronous unit's WAL flush is sent in the round trip of its batch's `COMMIT`, on the
// batch's session, as a transaction of its own with `synchronous_commit` on (the batch's
// session commits with it off, so that the chain head is let go before the fsync); no
// separate flusher session waits for it.
#[tokio::test]
async fn a_synchronous_unit_is_flushed_in_its_batchs_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let db = Backend::Postgres.database(dir.path(), "flush").await;
    let journal = db.journal().await;
    let pg = PgDatabase::connect(&db.location).await.unwrap();
    let a = journal.create_run(run("a"), "worker-1").await.unwrap();
    let before = pg.writer_stats();
    let committed = journal.commit(Some(&a), step_unit(0, "a")).await.unwrap();
    assert!(committed.applied);
    let stats = pg.writer_stats();
    assert_eq!(stats.commits - before.commits, 1);
    assert_eq!(stats.syncs - before.syncs, 1);
    let (client, connection) = tokio_postgres::connect(&db.location, NoTls).await.unwrap();
    tokio::spawn(connection);
    // The last statement of every session of this database that emitted the flush record.
    let flushes = texts(
        &client,
        "SELECT query FROM pg_stat_activity WHERE datname = current_database() \
         AND query LIKE '%pg_logical_emit_message%' AND pid <> pg_backend_pid()",
    )
    .await;
    assert_eq!(flushes.len(), 1, "{flushes:?}");
    assert!(
        flushes[0].contains("set_config('synchronous_commit', 'on', true)"),
        "{flushes:?}"
    );
}

// The leases are read once per batch; a release in the batch must not fence off the units
// queued before it under the lease it ends (they were written under a current lease), while a
// batch without other writes reads them with the chain head. Both batches below are formed
// while the head is held here.
#[tokio::test]
async fn a_unit_and_the_release_of_its_lease_in_one_batch_both_commit() {
    let dir = tempfile::tempdir().unwrap();
    let db = Backend::Postgres.database(dir.path(), "release").await;
    let journal = db.journal().await;
    let other = db.journal().await;
    let audit = db.audit().await;
    let a = journal.create_run(run("a"), "worker-1").await.unwrap();
    let b = journal.create_run(run("b"), "worker-1").await.unwrap();
    let (head, earlier) =
        queued_behind_held_head(&db.location, &journal, &b, step_unit(0, "b")).await;
    let (written, released, after, ()) = tokio::join!(
        journal.commit(Some(&a), step_unit(0, "a")),
        journal.release_run(&a),
        journal.commit(Some(&b), step_unit(1, "b")),
        async { head.batch_execute("ROLLBACK").await.unwrap() },
    );
    assert!(earlier.await.unwrap().unwrap().applied);
    assert!(written.unwrap().applied);
    released.unwrap();
    assert!(after.unwrap().applied);
    assert_eq!(journal.journal("a").await.unwrap().len(), 1);
    assert_eq!(journal.journal("b").await.unwrap().len(), 2);
    // Released: another worker takes the run, and the old lease writes no more.
    let taken = other.claim_run("a", "worker-2").await.unwrap();
    assert!(taken.token > a.token);
    let stale = journal.commit(Some(&a), step_unit(1, "a")).await;
    assert!(
        matches!(stale, Err(JournalError::LeaseLost(ref run)) if run == "a"),
        "{stale:?}"
    );
    assert_eq!(audit.verify(None).await.unwrap().records, 3);
}
