//! Workers on one PostgreSQL database: submitted runs are claimed once (`FOR UPDATE SKIP
//! LOCKED`), again after a release, as recoveries after their holder died, superseded leases
//! stay superseded, a submit in one handle wakes the others through `LISTEN/NOTIFY`, several
//! worker loops (each with its own pool, as separate processes) drive every run exactly once,
//! and the refresh lock of an account excludes other handles until its guard is dropped.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use chain_runtime::Runtime;
use chain_runtime::engine::{Engine, WorkerEvent, WorkerOptions};
use chain_runtime::journal::{Drivable, RunJournal, RunState};
use chain_runtime::postgres::{PgAccountStore, PgDatabase, PgJournal};
use chain_runtime::prelude::*;
use chain_runtime::test_util::StaticGrants;
use chain_runtime::test_util::backend::{Backend, TestDatabase};
use chain_runtime::vault::AccountStore;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
/// The test principal.
pub struct UserId(pub String);

impl Principal for UserId {
    fn identifier(&self) -> String {
        self.0.clone()
    }
}

/// How many times each (step, job) ran.
static CALLS: LazyLock<Mutex<HashMap<(&'static str, u64), usize>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

fn called(step: &'static str, job: u64) {
    *CALLS.lock().unwrap().entry((step, job)).or_default() += 1;
}

fn calls(step: &'static str, job: u64) -> usize {
    CALLS
        .lock()
        .unwrap()
        .get(&(step, job))
        .copied()
        .unwrap_or(0)
}

#[step(connector = "crm", scopes = ["crm.read"], read)]
async fn load(ctx: &StepCtx<UserId>, job: u64) -> Result<u64, StepError> {
    let _ = ctx;
    called("load", job);
    Ok(job * 3)
}

#[step(connector = "crm", scopes = ["crm.write"], idempotent, compensate = unsave)]
async fn save(ctx: &StepCtx<UserId>, job: u64, value: u64) -> Result<u64, StepError> {
    let _ = ctx;
    called("save", job);
    Ok(value + 1)
}

#[compensator(connector = "crm", scopes = ["crm.write"])]
async fn unsave(ctx: &StepCtx<UserId>, out: u64) -> Result<(), StepError> {
    let _ = (ctx, out);
    Ok(())
}

#[chain(principal = UserId)]
async fn pg_job(ctx: &ChainCtx<UserId>, job: u64) -> Result<u64, ChainError> {
    let value = load(ctx, job).await?;
    Ok(save(ctx, job, value).await?)
}

static JOB: AtomicUsize = AtomicUsize::new(1);

fn job() -> u64 {
    JOB.fetch_add(1, Ordering::Relaxed) as u64
}

fn grants() -> Arc<StaticGrants> {
    let grants = Arc::new(StaticGrants::new());
    grants.connect("alice", "crm", ["crm.read", "crm.write"], "crm-alice");
    grants
}

/// A runtime with a pool of its own (another URL spelling), as another process would have.
async fn runtime(db: &TestDatabase, name: &str) -> Runtime {
    Runtime::postgres(format!("{}?application_name={name}", db.location))
        .credentials(grants())
        .chain::<pg_job>()
        .open()
        .await
        .unwrap()
}

fn drivable(engine: &Engine) -> Vec<Drivable> {
    engine
        .drivable()
        .into_iter()
        .filter(|d| d.chain.ends_with("pg_job"))
        .collect()
}

async fn journal(db: &TestDatabase, name: &str) -> PgJournal {
    let url = format!("{}?application_name={name}", db.location);
    PgJournal::on(PgDatabase::connect(&url).await.unwrap())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submitted_runs_are_claimed_once_released_recovered_and_fenced() {
    let dir = tempfile::tempdir().unwrap();
    let db = Backend::Postgres.database(dir.path(), "queue").await;
    let rt = runtime(&db, "submitter").await;
    let other = journal(&db, "other").await;
    // Another handle (its own LISTEN session) is woken by this one's submit.
    let mut wake = other.wakeups().unwrap().subscribe();
    let run_id = rt
        .engine
        .submit::<pg_job>(UserId("alice".into()), (job(),))
        .await
        .unwrap();
    assert!(
        wake.wait(Duration::from_secs(10)).await,
        "NOTIFY reaches the other handle"
    );
    assert_eq!(rt.audit.run_history(&run_id).await.unwrap().len(), 1);

    let drivable = drivable(&rt.engine);
    let elsewhere = vec![Drivable {
        chain: drivable[0].chain.clone(),
        version: "another build".into(),
    }];
    assert!(
        rt.runs
            .claim_runnable("w0", &elsewhere, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let first = rt.runs.claim_runnable("w1", &drivable, 10).await.unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!((first[0].lease.token, first[0].recovered), (1, false));
    assert!(
        other
            .claim_runnable("w2", &drivable, 10)
            .await
            .unwrap()
            .is_empty(),
        "a claimed run is not claimed twice"
    );
    rt.runs.release_run(&first[0].lease).await.unwrap();
    assert!(wake.wait(Duration::from_secs(10)).await, "a release wakes");
    let second = other.claim_runnable("w2", &drivable, 10).await.unwrap();
    assert_eq!((second[0].lease.token, second[0].recovered), (2, false));
    assert_eq!(
        rt.runs
            .renew_leases(&[first[0].lease.clone()])
            .await
            .unwrap(),
        [false],
        "superseded for good"
    );
    assert_eq!(
        other
            .renew_leases(&[second[0].lease.clone()])
            .await
            .unwrap(),
        [true]
    );

    // The holder dies (its session ends): its run is claimable at once, as a recovery.
    drop(other);
    let third = journal(&db, "third").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let taken = loop {
        let got = third.claim_runnable("w3", &drivable, 10).await.unwrap();
        if !got.is_empty() {
            break got;
        }
        assert!(
            Instant::now() < deadline,
            "the dead holder's run stayed held"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!((taken[0].lease.token, taken[0].recovered), (3, true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_worker_loops_drive_each_run_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = Backend::Postgres.database(dir.path(), "workers").await;
    let mut runtimes = Vec::new();
    for w in 0..4 {
        runtimes.push(runtime(&db, &format!("worker{w}")).await);
    }
    let jobs: Vec<u64> = (0..60).map(|_| job()).collect();
    let mut ids = Vec::new();
    for (i, job) in jobs.iter().enumerate() {
        let rt = &runtimes[i % runtimes.len()];
        ids.push(
            rt.engine
                .submit::<pg_job>(UserId("alice".into()), (*job,))
                .await
                .unwrap(),
        );
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let claimed = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for rt in &runtimes {
        let engine = rt.engine.clone();
        let mut stop = stop_rx.clone();
        let claimed = Arc::clone(&claimed);
        let options = WorkerOptions {
            concurrency: 4,
            poll_every: Duration::from_millis(200),
            on_event: Some(Arc::new(move |e: &WorkerEvent| {
                if matches!(e, WorkerEvent::Claimed { .. }) {
                    claimed.fetch_add(1, Ordering::Relaxed);
                }
            })),
            ..WorkerOptions::default()
        };
        workers.push(tokio::spawn(async move {
            engine
                .work(options, async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut done = 0;
        for id in &ids {
            if runtimes[0]
                .engine
                .run_status(id)
                .await
                .unwrap()
                .state
                .is_terminal()
            {
                done += 1;
            }
        }
        if done == ids.len() {
            break;
        }
        assert!(Instant::now() < deadline, "only {done} runs ended in time");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop_tx.send(true).unwrap();
    let mut finished = 0;
    for worker in workers {
        let report = tokio::time::timeout(Duration::from_secs(30), worker)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(report.lost + report.failed, 0, "{report:?}");
        finished += report.finished;
    }
    assert_eq!(finished, ids.len());
    assert_eq!(
        claimed.load(Ordering::Relaxed),
        ids.len(),
        "one claim per run"
    );
    for (id, job) in ids.iter().zip(&jobs) {
        let run = runtimes[1].engine.run_status(id).await.unwrap();
        assert_eq!(
            run.state,
            RunState::Completed {
                output: serde_json::json!(job * 3 + 1)
            }
        );
        assert_eq!((calls("load", *job), calls("save", *job)), (1, 1));
    }
    // One chain across the four workers' appends.
    runtimes[2].audit.verify(None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_refresh_lock_excludes_other_handles_until_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let db = Backend::Postgres.database(dir.path(), "lock").await;
    let open = |name: &str| {
        let url = format!("{}?application_name={name}", db.location);
        async move { PgAccountStore::on(PgDatabase::connect(&url).await.unwrap()) }
    };
    let (a, b) = (open("a").await, open("b").await);
    let held = a.refresh_lock("alice", "crm").await.unwrap();
    // Another account's lock is independent.
    drop(b.refresh_lock("bob", "crm").await.unwrap());
    let waiter = tokio::spawn(async move {
        let lock = b.refresh_lock("alice", "crm").await.unwrap();
        drop(lock);
    });
    // Still waiting while the first guard lives (a bounded look, not a timing claim: a
    // waiter that got the lock here would fail the test).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiter.is_finished(),
        "the second lock was granted while held"
    );
    drop(held);
    tokio::time::timeout(Duration::from_secs(30), waiter)
        .await
        .expect("the lock was not handed over")
        .unwrap();
}
