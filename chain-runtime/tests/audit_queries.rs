//! who_authorized, run history, time-range activity and concurrent appends on a real audit
//! store, SQLite and PostgreSQL (the group-commit tests at the end are SQLite's writer).

mod audit_support;

use std::collections::BTreeSet;

use audit_support::{accounts_of, failed_write, simulate_run};
use std::sync::Arc;

use chain_runtime::audit::{
    AlertSeverity, AuditEvent, AuditStore, NewRecord, Outcome, RecordRef, SqliteAuditStore,
    WriteKind, verify_jsonl,
};
use chain_runtime::test_util::backend::Backend;

chain_runtime::backend_tests!(
    who_authorized_names_the_one_principal_and_each_connectors_grant,
    who_authorized_lists_compensations_too,
    run_history_and_principal_activity_in_a_time_range,
    concurrent_appends_from_many_tasks_and_connections_form_one_chain,
    records_have_no_field_for_secrets,
);

async fn backend_store(backend: Backend) -> (tempfile::TempDir, Arc<dyn AuditStore>) {
    let dir = tempfile::tempdir().unwrap();
    let db = backend.database(dir.path(), "runtime").await;
    let store = db.audit().await;
    (dir, store)
}

async fn store() -> (tempfile::TempDir, SqliteAuditStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteAuditStore::open(dir.path().join("runtime.db"))
        .await
        .unwrap();
    (dir, store)
}

async fn who_authorized_names_the_one_principal_and_each_connectors_grant(backend: Backend) {
    let (_dir, store) = backend_store(backend).await;
    let touched = simulate_run(store.as_ref(), "alice", "run-a", "1", 1_000).await;
    // Noise: bob's own run on other records, and bob's forbidden attempt on alice's opportunity.
    simulate_run(store.as_ref(), "bob", "run-b", "2", 2_000).await;
    failed_write(store.as_ref(), "bob", "run-c", touched[0].clone(), 3_000).await;
    store.verify(None).await.unwrap();

    let alice = accounts_of("alice");
    for (record, acct) in touched.iter().zip(&alice) {
        assert_eq!(record.connector, acct.connector);
        let writes = store
            .who_authorized(&record.connector, &record.id)
            .await
            .unwrap();
        // One write each: the read of the opportunity and bob's failed attempt are not writes.
        assert_eq!(writes.len(), 1, "{record:?}: {writes:#?}");
        let w = &writes[0];
        assert_eq!(w.principal, "alice");
        assert_eq!(w.grant_id.as_deref(), Some(acct.grant.as_str()));
        assert_eq!(w.upstream_subject.as_deref(), Some(acct.subject.as_str()));
        assert_eq!(w.account_id.as_deref(), Some(acct.account_id.as_str()));
        assert_eq!(
            w.scopes,
            acct.scopes
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
        );
        assert_eq!(w.run_id.as_deref(), Some("run-a"));
        assert!(w.step_id.is_some());
        assert_eq!(&w.record, record);
        assert_eq!(w.outcome, Outcome::Succeeded);
        assert!(matches!(w.write, WriteKind::Step { .. }));
    }
    // Unknown record: nobody.
    assert!(
        store
            .who_authorized("salesforce", "006NOPE")
            .await
            .unwrap()
            .is_empty()
    );
    // Same id on another connector: nobody.
    assert!(
        store
            .who_authorized("jira", &touched[0].id)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn who_authorized_lists_compensations_too(backend: Backend) {
    let (_dir, store) = backend_store(backend).await;
    let touched = simulate_run(store.as_ref(), "alice", "run-a", "7", 1_000).await;
    let issue = touched[1].clone();
    let jira = &accounts_of("alice")[1];
    for (outcome, event) in [
        (
            Outcome::Attempted,
            AuditEvent::CompensationAttempt {
                compensator: "delete_issue".into(),
                compensates_step_id: "s2".into(),
                attempt: 1,
            },
        ),
        (
            Outcome::Succeeded,
            AuditEvent::CompensationOutcome {
                compensator: "delete_issue".into(),
                compensates_step_id: "s2".into(),
                attempt: 1,
                failure_class: None,
                detail: None,
            },
        ),
    ] {
        store
            .append(
                NewRecord::new("alice", outcome, event)
                    .run("run-a")
                    .step("s2.compensate")
                    .account("jira", &jira.account_id, &jira.subject, &jira.grant)
                    .scopes(jira.scopes.iter().copied())
                    .touched(issue.clone()),
            )
            .await
            .unwrap();
    }
    let writes = store.who_authorized("jira", &issue.id).await.unwrap();
    assert_eq!(writes.len(), 2);
    assert!(matches!(writes[0].write, WriteKind::Step { ref step } if step == "open_issue"));
    assert!(matches!(
        writes[1].write,
        WriteKind::Compensation { ref compensator, ref compensates_step_id }
            if compensator == "delete_issue" && compensates_step_id == "s2"
    ));
    assert!(
        writes
            .iter()
            .all(|w| w.principal == "alice" && w.grant_id.as_deref() == Some(jira.grant.as_str()))
    );
    assert!(writes[0].seq < writes[1].seq);
}

async fn run_history_and_principal_activity_in_a_time_range(backend: Backend) {
    let (_dir, store) = backend_store(backend).await;
    simulate_run(store.as_ref(), "alice", "run-a", "1", 10_000).await; // times 10_000..=10_050
    simulate_run(store.as_ref(), "bob", "run-b", "2", 20_000).await; // 20_000..=20_050
    simulate_run(store.as_ref(), "alice", "run-c", "3", 30_000).await; // 30_000..=30_050
    // A handoff from alice's run to a child run of carol's, and an operator alert.
    store
        .append(
            NewRecord::new(
                "alice",
                Outcome::Info,
                AuditEvent::Handoff {
                    child_run_id: "run-d".into(),
                    child_principal: "carol".into(),
                    child_chain: "approve_discount".into(),
                    reason: "co-approval".into(),
                },
            )
            .at(30_060)
            .run("run-c"),
        )
        .await
        .unwrap();
    store
        .append(
            NewRecord::new(
                "alice",
                Outcome::Info,
                AuditEvent::OperatorAlert {
                    severity: AlertSeverity::Critical,
                    message: "run-c blocked".into(),
                },
            )
            .at(40_000),
        )
        .await
        .unwrap();

    let history = store.run_history("run-c").await.unwrap();
    assert_eq!(history.len(), 12);
    assert!(history.windows(2).all(|w| w[0].seq < w[1].seq));
    assert!(history.iter().all(|r| r.run_id.as_deref() == Some("run-c")));
    assert!(matches!(history[0].event, AuditEvent::RunStarted { .. }));
    assert!(matches!(history[11].event, AuditEvent::Handoff { .. }));

    // [20_000, 30_060): bob's run is not alice's; alice's second run without the handoff.
    let activity = store
        .principal_activity("alice", 20_000, 30_060)
        .await
        .unwrap();
    assert_eq!(activity.len(), 11);
    assert!(
        activity
            .iter()
            .all(|r| r.principal == "alice" && r.run_id.as_deref() == Some("run-c"))
    );
    assert!(
        activity
            .iter()
            .all(|r| (20_000..30_060).contains(&r.time_unix_ms))
    );
    // Bounds: inclusive from, exclusive to.
    let edge = store
        .principal_activity("alice", 30_060, 40_001)
        .await
        .unwrap();
    assert_eq!(edge.len(), 2);
    assert!(
        store
            .principal_activity("alice", 40_001, i64::MAX)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store
            .principal_activity("bob", 0, i64::MAX)
            .await
            .unwrap()
            .len(),
        11
    );
    assert!(store.run_history("run-zzz").await.unwrap().is_empty());
}

async fn concurrent_appends_from_many_tasks_and_connections_form_one_chain(backend: Backend) {
    const TASKS: usize = 16;
    const PER_TASK: usize = 50;
    let dir = tempfile::tempdir().unwrap();
    let db = backend.database(dir.path(), "runtime").await;
    // Four handles on the same database: appends are serialized by the database (SQLite's
    // BEGIN IMMEDIATE, PostgreSQL's lock on the chain head), not only by one in-process lock.
    // On PostgreSQL each handle has its own connection pool (another URL spelling).
    let mut stores: Vec<Arc<dyn AuditStore>> = Vec::new();
    let mut sqlite_handles = Vec::new();
    for n in 0..4 {
        stores.push(match db.path() {
            Some(path) => {
                let store = SqliteAuditStore::open(path).await.unwrap();
                sqlite_handles.push(store.clone());
                Arc::new(store)
            }
            None => Arc::new(
                chain_runtime::postgres::PgAuditStore::open(&format!(
                    "{}?application_name=handle{n}",
                    db.location
                ))
                .await
                .unwrap(),
            ),
        });
    }
    let mut handles = Vec::new();
    for task in 0..TASKS {
        let store = Arc::clone(&stores[task % stores.len()]);
        handles.push(tokio::spawn(async move {
            for i in 0..PER_TASK {
                let record = NewRecord::new(
                    format!("user-{task}"),
                    Outcome::Succeeded,
                    AuditEvent::StepOutcome {
                        step: format!("step-{i}"),
                        attempt: 1,
                        effect: chain_runtime::audit::Effect::Write,
                        failure_class: None,
                        detail: None,
                    },
                )
                .run(format!("run-{task}"))
                .step(format!("s{i}"))
                .touched(RecordRef::new("jira", "issue", format!("T{task}-{i}")));
                store.append(record).await.unwrap();
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    let total = (TASKS * PER_TASK) as u64;
    // The handles on one file share the process's one writer thread: they report the same
    // counters, which count every append (and the schema set-up).
    if !sqlite_handles.is_empty() {
        let stats: Vec<_> = sqlite_handles
            .iter()
            .map(SqliteAuditStore::writer_stats)
            .collect();
        assert!(stats.windows(2).all(|w| w[0] == w[1]), "{stats:?}");
        assert!(stats[0].writes >= total && stats[0].commits <= stats[0].writes);
    }
    let verified = stores[0].verify(None).await.unwrap();
    assert_eq!(verified.records, total);
    assert_eq!(verified.head.as_ref().map(|h| h.seq), Some(total));
    // Every task's records are there once, in its own order.
    let mut seen = BTreeSet::new();
    for task in 0..TASKS {
        let history = stores[1].run_history(&format!("run-{task}")).await.unwrap();
        let steps: Vec<_> = history.iter().map(|r| r.step_id.clone().unwrap()).collect();
        let expected: Vec<_> = (0..PER_TASK).map(|i| format!("s{i}")).collect();
        assert_eq!(steps, expected);
        seen.extend(history.iter().map(|r| r.seq));
    }
    assert_eq!(seen, (1..=total).collect::<BTreeSet<_>>());
    // And the export verifies against the head.
    let mut out = Vec::new();
    assert_eq!(stores[2].export_jsonl(&mut out).await.unwrap(), total);
    verify_jsonl(out.as_slice(), verified.head).unwrap();
}

async fn records_have_no_field_for_secrets(backend: Backend) {
    let (_dir, store) = backend_store(backend).await;
    simulate_run(store.as_ref(), "alice", "run-a", "1", 1_000).await;
    let mut out = Vec::new();
    store.export_jsonl(&mut out).await.unwrap();
    fn keys(v: &serde_json::Value, acc: &mut BTreeSet<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    acc.insert(k.clone());
                    keys(v, acc);
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| keys(v, acc)),
            _ => {}
        }
    }
    let mut all = BTreeSet::new();
    for line in String::from_utf8(out).unwrap().lines() {
        keys(&serde_json::from_str(line).unwrap(), &mut all);
    }
    for key in &all {
        for banned in [
            "token",
            "secret",
            "password",
            "verifier",
            "code",
            "key_material",
            "credential",
        ] {
            assert!(
                !key.contains(banned),
                "field `{key}` looks like it could carry a secret"
            );
        }
    }
}

/// An append of `n` for `principal` touching one record; its run id names it.
fn numbered(principal: &str, n: usize) -> NewRecord {
    NewRecord::new(
        principal,
        Outcome::Succeeded,
        AuditEvent::StepOutcome {
            step: "bump".into(),
            attempt: 1,
            effect: chain_runtime::audit::Effect::Write,
            failure_class: None,
            detail: None,
        },
    )
    .run(format!("run-{n}"))
    .step(format!("s{n}"))
    .touched(RecordRef::new("jira", "issue", format!("T-{n}")))
}

/// Holds SQLite's write lock on `path` from a separate connection (as another process would),
/// so the store's writer thread blocks in `BEGIN IMMEDIATE` while appends pile up in its queue.
fn lock_file(path: &std::path::Path) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.execute_batch("BEGIN IMMEDIATE").unwrap();
    conn
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_appends_share_one_commit_and_seal_in_queue_order() {
    const N: usize = 24;
    let (dir, store) = store().await;
    // Two records before, so the batch has to continue an existing chain from the stored head.
    let start = store.writer_stats();
    store.append(numbered("before", 1000)).await.unwrap();
    store.append(numbered("before", 1001)).await.unwrap();
    let before = store.writer_stats();
    assert_eq!(
        (before.writes - start.writes, before.commits - start.commits),
        (2, 2)
    );

    let lock = lock_file(&dir.path().join("runtime.db"));
    let all = futures::future::join_all((0..N).map(|n| store.append(numbered("alice", n))));
    futures::pin_mut!(all);
    // The first poll queues every append (join_all polls each one); none can finish while the
    // file is locked.
    assert!(futures::poll!(all.as_mut()).is_pending());
    lock.execute_batch("COMMIT").unwrap();
    let sealed: Vec<_> = all.await.into_iter().map(Result::unwrap).collect();

    // The writer blocked on the lock with the first batch; everything queued behind it went
    // into the next one: at most two commits for N appends.
    let after = store.writer_stats();
    let (writes, commits) = (after.writes - before.writes, after.commits - before.commits);
    assert_eq!(writes, N as u64);
    assert!(
        commits <= 2 && commits < writes,
        "{commits} commits for {writes} writes"
    );

    // Sealed in queue order, continuing the stored chain: consecutive seqs, each prev_hash the
    // hash of the record before.
    for (n, record) in sealed.iter().enumerate() {
        assert_eq!(record.seq, 3 + n as u64);
        assert_eq!(record.run_id.as_deref(), Some(format!("run-{n}").as_str()));
    }
    for pair in sealed.windows(2) {
        assert_eq!(pair[1].prev_hash, pair[0].hash);
    }
    let verified = store.verify(None).await.unwrap();
    assert_eq!(verified.records, 2 + N as u64);
    assert_eq!(
        verified.head,
        Some(chain_runtime::audit::Checkpoint {
            seq: 2 + N as u64,
            hash: sealed[N - 1].hash.clone(),
        })
    );
    // What the callers got is what is stored, refs index included.
    let stored = store.run_history("run-7").await.unwrap();
    assert_eq!(stored, vec![sealed[7].clone()]);
    let writes = store.who_authorized("jira", "T-7").await.unwrap();
    assert_eq!(writes.len(), 1);
    assert_eq!(writes[0].seq, sealed[7].seq);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_append_fails_alone_and_the_rest_of_its_batch_commits() {
    const N: usize = 21;
    const POISON: usize = 10;
    let (dir, store) = store().await;
    store.append(numbered("before", 1000)).await.unwrap();

    // A trigger makes the insert of one record fail inside the batch, as a constraint would.
    let lock = lock_file(&dir.path().join("runtime.db"));
    lock.execute_batch(
        "CREATE TRIGGER poison BEFORE INSERT ON audit_records WHEN NEW.principal = 'poison'
         BEGIN SELECT RAISE(ABORT, 'poisoned record'); END;",
    )
    .unwrap();
    let before = store.writer_stats();
    let all = futures::future::join_all((0..N).map(|n| {
        let principal = if n == POISON { "poison" } else { "alice" };
        store.append(numbered(principal, n))
    }));
    futures::pin_mut!(all);
    assert!(futures::poll!(all.as_mut()).is_pending());
    lock.execute_batch("COMMIT").unwrap();
    let results = all.await;

    // Each append is its own savepoint of the batch: the poisoned one fails with the backend's
    // message and takes no seq; every other one commits, in queue order.
    let message = results[POISON].as_ref().unwrap_err().to_string();
    assert!(message.contains("poisoned record"), "{message}");
    let failed: Vec<usize> = (0..N).filter(|&n| results[n].is_err()).collect();
    assert_eq!(failed, vec![POISON]);
    let sealed: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    for pair in sealed.windows(2) {
        assert_eq!(pair[1].seq, pair[0].seq + 1);
        assert_eq!(pair[1].prev_hash, pair[0].hash);
    }
    let after = store.writer_stats();
    assert!(after.commits - before.commits <= 2, "{after:?}");

    // Nothing of the failed batch is stored, everything acknowledged is, and the chain is
    // still one verifiable line.
    for (n, result) in results.iter().enumerate() {
        let stored = store.run_history(&format!("run-{n}")).await.unwrap();
        match result {
            Ok(record) => assert_eq!(stored, vec![record.clone()]),
            Err(_) => {
                assert!(stored.is_empty(), "run-{n}: {stored:?}");
                assert!(
                    store
                        .who_authorized("jira", &format!("T-{n}"))
                        .await
                        .unwrap()
                        .is_empty()
                );
            }
        }
    }
    let ok = (N - failed.len()) as u64;
    let verified = store.verify(None).await.unwrap();
    assert_eq!(verified.records, 1 + ok);

    // The writer goes on.
    let next = store.append(numbered("after", 2000)).await.unwrap();
    assert_eq!(next.seq, 2 + ok);
    store.verify(None).await.unwrap();
}
