//! Runnable runs and workers in one process, on SQLite and on PostgreSQL from one body
//! (`sqlite::…`, `postgres::…`; two journal handles on one database are two lease holders,
//! like two processes): `Engine::submit`, the journal's `claim_runnable` / `renew_leases` /
//! wake-ups (on PostgreSQL through `LISTEN/NOTIFY`, across handles), claims again after a
//! release and as recoveries after the holder died, superseded leases stay superseded,
//! `Engine::work` draining a queue with four engines on one database, a run handed back by
//! `Engine::resume_later` retrying its suspended step (also after the worker that took it died),
//! when a recovery retries a refused step and when it replays it, and the vault's refresh lock
//! across
//! handles; and a worker on the in-memory journal. The multi-process tests (SIGKILL, SIGSTOP,
//! many workers) are in `examples/tests/workers.rs`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use chain_runtime::Runtime;
use chain_runtime::audit::{AuditStore, SqliteAuditStore};
use chain_runtime::engine::{Engine, WorkerEvent, WorkerOptions};
use chain_runtime::journal::{
    Claim, Drivable, EntryKind, EntryResult, JournalEntry, JournalWrite, MemoryJournal, RunJournal,
    RunState, SqliteJournal, Unit,
};
use chain_runtime::postgres::{PgAccountStore, PgDatabase, PgJournal};
use chain_runtime::prelude::*;
use chain_runtime::test_util::StaticGrants;
use chain_runtime::test_util::backend::{Backend, TestDatabase};
use chain_runtime::vault::{AccountStore, SqliteStore};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
/// The test principal.
pub struct UserId(pub String);

impl Principal for UserId {
    fn identifier(&self) -> String {
        self.0.clone()
    }
}

/// Calls per (step, job).
static CALLS: LazyLock<Mutex<HashMap<(String, u64), usize>>> = LazyLock::new(Mutex::default);

fn called(step: &str, job: u64) {
    *CALLS
        .lock()
        .unwrap()
        .entry((step.to_owned(), job))
        .or_default() += 1;
}

fn calls(step: &str, job: u64) -> usize {
    CALLS
        .lock()
        .unwrap()
        .get(&(step.to_owned(), job))
        .copied()
        .unwrap_or(0)
}

#[step(connector = "crm", scopes = ["crm.read"], read)]
async fn fetch(ctx: &StepCtx<UserId>, job: u64) -> Result<u64, StepError> {
    let _ = ctx;
    called("fetch", job);
    Ok(job * 2)
}

#[step(connector = "crm", scopes = ["crm.write"], irreversible = "a test write")]
async fn store(ctx: &StepCtx<UserId>, job: u64, value: u64) -> Result<u64, StepError> {
    let _ = ctx;
    called("store", job);
    Ok(value + 1)
}

/// Fails with a revoked grant on its first call for a job, succeeds after.
#[step(connector = "crm", scopes = ["crm.write"], irreversible = "a test write")]
async fn post(ctx: &StepCtx<UserId>, job: u64) -> Result<u64, StepError> {
    let _ = ctx;
    called("post", job);
    if calls("post", job) == 1 {
        return Err(StepError::Auth {
            connector: "crm".into(),
            class: chain_runtime::classify::FailureClass::GrantRevoked,
            needed_scopes: vec![],
            consent_params: vec![],
        });
    }
    Ok(job)
}

#[chain(principal = UserId)]
async fn consented(ctx: &ChainCtx<UserId>, job: u64) -> Result<u64, ChainError> {
    let value = fetch(ctx, job).await?;
    Ok(post(ctx, value).await?)
}

#[chain(principal = UserId)]
async fn queued(ctx: &ChainCtx<UserId>, job: u64) -> Result<u64, ChainError> {
    let value = fetch(ctx, job).await?;
    Ok(store(ctx, job, value).await?)
}

fn grants() -> Arc<StaticGrants> {
    let grants = Arc::new(StaticGrants::new());
    grants.connect("alice", "crm", ["crm.read", "crm.write"], "crm-alice");
    grants
}

/// Where handle `name` opens `db`: on PostgreSQL a URL of its own (another spelling), so the
/// handle gets a pool and a lease holder of its own, as another process would have.
fn location(db: &TestDatabase, name: &str) -> String {
    match db.backend {
        Backend::Sqlite => db.location.clone(),
        Backend::Postgres => format!("{}?application_name={name}", db.location),
    }
}

/// A runtime on `db` with a journal handle of its own.
async fn runtime(db: &TestDatabase, name: &str) -> Runtime {
    Runtime::at(&location(db, name))
        .credentials(grants())
        .chain::<queued>()
        .open()
        .await
        .unwrap()
}

/// Another journal handle on `db` (another lease holder).
async fn journal(db: &TestDatabase, name: &str) -> Arc<dyn RunJournal> {
    let at = location(db, name);
    match db.backend {
        Backend::Sqlite => Arc::new(SqliteJournal::open(&at).await.unwrap()),
        Backend::Postgres => Arc::new(
            PgJournal::on(PgDatabase::connect(&at).await.unwrap())
                .await
                .unwrap(),
        ),
    }
}

/// Another account store handle on `db`.
async fn accounts(db: &TestDatabase, name: &str) -> Arc<dyn AccountStore> {
    let at = location(db, name);
    match db.backend {
        Backend::Sqlite => Arc::new(SqliteStore::open(&at).await.unwrap()),
        Backend::Postgres => Arc::new(PgAccountStore::on(PgDatabase::connect(&at).await.unwrap())),
    }
}

fn drivable(engine: &Engine) -> Vec<Drivable> {
    engine
        .drivable()
        .into_iter()
        .filter(|d| d.chain.ends_with("queued"))
        .collect()
}

static JOB: AtomicUsize = AtomicUsize::new(1_000);

fn job() -> u64 {
    JOB.fetch_add(1, Ordering::Relaxed) as u64
}

chain_runtime::backend_tests!(
    a_submitted_run_is_claimed_once_released_and_fenced,
    a_dead_holders_runs_are_claimed_as_recoveries,
    four_worker_loops_drive_each_run_exactly_once,
    a_run_resumed_for_the_workers_retries_its_suspended_step,
    a_resumed_run_whose_taker_died_is_retried_by_the_next_worker,
    a_recovery_retries_a_refusal_only_as_the_journals_last_entry,
    the_refresh_lock_excludes_other_handles_until_dropped,
);

async fn a_submitted_run_is_claimed_once_released_and_fenced(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let db = backend.database(dir.path(), "queue").await;
    let rt = runtime(&db, "submitter").await;
    let other = journal(&db, "other").await;
    // Who hears of the submit: on PostgreSQL another handle (its own LISTEN session, as in
    // another process); a SQLite journal's wake-ups stay in its handle (other processes poll).
    let waker = match backend {
        Backend::Sqlite => rt.runs.wakeups(),
        Backend::Postgres => other.wakeups(),
    };
    let mut wake = waker.unwrap().subscribe();

    let run_id = rt
        .engine
        .submit::<queued>(UserId("alice".into()), (job(),))
        .await
        .unwrap();
    assert!(
        wake.wait(Duration::from_secs(10)).await,
        "submit wakes workers"
    );
    let run = rt.engine.run_status(&run_id).await.unwrap();
    assert_eq!(run.state, RunState::Running);
    let history = rt.audit.run_history(&run_id).await.unwrap();
    assert_eq!(
        history.len(),
        1,
        "the run_started record commits with the run"
    );

    let drivable = drivable(&rt.engine);
    assert_eq!(drivable.len(), 1);
    let none: Vec<Drivable> = vec![Drivable {
        chain: drivable[0].chain.clone(),
        version: "another build".into(),
    }];
    assert!(
        rt.runs
            .claim_runnable("w0", &none, 10)
            .await
            .unwrap()
            .is_empty()
    );

    let first = rt.runs.claim_runnable("w1", &drivable, 10).await.unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].run.run_id, run_id);
    assert_eq!((first[0].lease.token, first[0].recovered), (1, false));
    assert!(
        other
            .claim_runnable("w2", &drivable, 10)
            .await
            .unwrap()
            .is_empty(),
        "a claimed run is not claimed twice"
    );
    assert_eq!(
        rt.runs
            .renew_leases(&[first[0].lease.clone()])
            .await
            .unwrap(),
        [true]
    );

    rt.runs.release_run(&first[0].lease).await.unwrap();
    assert!(
        wake.wait(Duration::from_secs(10)).await,
        "a release wakes workers"
    );
    let second = other.claim_runnable("w2", &drivable, 10).await.unwrap();
    assert_eq!(second.len(), 1);
    assert_eq!(
        (second[0].lease.token, second[0].recovered),
        (2, false),
        "a released lease is not a recovery"
    );
    assert_eq!(
        rt.runs
            .renew_leases(&[first[0].lease.clone()])
            .await
            .unwrap(),
        [false],
        "the first lease is superseded for good"
    );
    assert_eq!(
        other
            .renew_leases(&[second[0].lease.clone()])
            .await
            .unwrap(),
        [true]
    );
}

/// Claims runnable runs with `journal` until some come, or fails at a deadline.
async fn claim_some(journal: &dyn RunJournal, drivable: &[Drivable]) -> Vec<Claim> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = journal.claim_runnable("w", drivable, 10).await.unwrap();
        if !got.is_empty() {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "the dead holder's runs stayed held"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn a_dead_holders_runs_are_claimed_as_recoveries(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let db = backend.database(dir.path(), "dead").await;
    let rt = runtime(&db, "live").await;
    let drivable = drivable(&rt.engine);
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(
            rt.engine
                .submit::<queued>(UserId("alice".into()), (job(),))
                .await
                .unwrap(),
        );
    }
    let dying = journal(&db, "dying").await;
    let held = dying.claim_runnable("dying", &drivable, 2).await.unwrap();
    assert_eq!(held.len(), 2);
    let rest = rt.runs.claim_runnable("w", &drivable, 10).await.unwrap();
    assert_eq!(rest.len(), 1, "two runs are held by a live holder");
    assert!(!rest[0].recovered);
    // The holder goes away without releasing (SQLite: its lock file; PostgreSQL: its session
    // and the advisory lock on it): its runs are free, long before their leases expire.
    drop(dying);
    let taken = claim_some(rt.runs.as_ref(), &drivable).await;
    assert_eq!(taken.len(), 2);
    assert!(taken.iter().all(|c| c.recovered && c.lease.token == 2));
    let mut got: Vec<String> = taken.iter().map(|c| c.run.run_id.clone()).collect();
    got.push(rest[0].run.run_id.clone());
    got.sort();
    ids.sort();
    assert_eq!(got, ids);
}

/// Waits until every run of `ids` is in a terminal state.
async fn wait_terminal(journal: &dyn RunJournal, ids: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut done = 0;
        for id in ids {
            let run = journal.get_run(id).await.unwrap().unwrap();
            if run.state.is_terminal() {
                done += 1;
            }
        }
        if done == ids.len() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {done} of {} runs ended in time",
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn four_worker_loops_drive_each_run_exactly_once(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let db = backend.database(dir.path(), "workers").await;
    let mut runtimes = Vec::new();
    for w in 0..4 {
        runtimes.push(runtime(&db, &format!("worker{w}")).await);
    }
    let jobs: Vec<u64> = (0..40).map(|_| job()).collect();
    let mut ids = Vec::new();
    for (i, job) in jobs.iter().enumerate() {
        let rt = &runtimes[i % runtimes.len()];
        ids.push(
            rt.engine
                .submit::<queued>(UserId("alice".into()), (*job,))
                .await
                .unwrap(),
        );
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let events = Arc::new(Mutex::new(Vec::new()));
    let mut workers = Vec::new();
    for rt in &runtimes {
        let engine = rt.engine.clone();
        let mut stop = stop_rx.clone();
        let events = events.clone();
        let options = WorkerOptions {
            concurrency: 4,
            poll_every: Duration::from_millis(100),
            on_event: Some(Arc::new(move |e: &WorkerEvent| {
                events.lock().unwrap().push(e.clone())
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
    wait_terminal(runtimes[0].runs.as_ref(), &ids).await;
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
    for (id, job) in ids.iter().zip(&jobs) {
        let run = runtimes[1].engine.run_status(id).await.unwrap();
        assert_eq!(
            run.state,
            RunState::Completed {
                output: serde_json::json!(job * 2 + 1)
            }
        );
        assert_eq!((calls("fetch", *job), calls("store", *job)), (1, 1));
    }
    let claimed = events
        .lock()
        .unwrap()
        .iter()
        .filter(|e| matches!(e, WorkerEvent::Claimed { .. }))
        .count();
    assert_eq!(claimed, ids.len(), "each run was claimed exactly once");
    // One audit chain across the four workers' appends.
    runtimes[2].audit.verify(None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_drains_a_memory_journal() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Arc::new(MemoryJournal::new());
    let audit = Arc::new(
        SqliteAuditStore::open(dir.path().join("audit.db"))
            .await
            .unwrap(),
    );
    let engine = Engine::new(journal.clone(), audit.clone(), grants());
    engine.register::<queued>();
    let jobs: Vec<u64> = (0..10).map(|_| job()).collect();
    let mut ids = Vec::new();
    for job in &jobs {
        ids.push(
            engine
                .submit::<queued>(UserId("alice".into()), (*job,))
                .await
                .unwrap(),
        );
    }
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let worker = {
        let engine = engine.clone();
        tokio::spawn(async move {
            engine
                .work(WorkerOptions::default(), async move {
                    let _ = stop_rx.wait_for(|s| *s).await;
                })
                .await
        })
    };
    wait_terminal(journal.as_ref(), &ids).await;
    stop_tx.send(true).unwrap();
    let report = worker.await.unwrap();
    assert_eq!((report.claimed, report.finished), (10, 10));
    for id in &ids {
        let history = audit.run_history(id).await.unwrap();
        assert!(
            history.len() >= 3,
            "run_started, steps, the end: {history:?}"
        );
    }
    for job in &jobs {
        assert_eq!((calls("fetch", *job), calls("store", *job)), (1, 1));
    }
}

async fn a_run_resumed_for_the_workers_retries_its_suspended_step(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let db = backend.database(dir.path(), "resumed").await;
    let rt = runtime(&db, "resumer").await;
    rt.engine.register::<consented>();
    let job = job();
    let run_id = rt
        .engine
        .submit::<consented>(UserId("alice".into()), (job,))
        .await
        .unwrap();
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let (finished_tx, mut finished) = tokio::sync::mpsc::unbounded_channel();
    let worker = {
        let engine = rt.engine.clone();
        let options = WorkerOptions {
            poll_every: Duration::from_secs(30),
            on_event: Some(Arc::new(move |e: &WorkerEvent| {
                if let WorkerEvent::Finished { state, .. } = e {
                    let _ = finished_tx.send(state.clone());
                }
            })),
            ..WorkerOptions::default()
        };
        tokio::spawn(async move {
            engine
                .work(options, async move {
                    let _ = stop_rx.wait_for(|s| *s).await;
                })
                .await
        })
    };
    // The worker let go of the run (its lease released: the state is stored just before).
    let state = tokio::time::timeout(Duration::from_secs(60), finished.recv())
        .await
        .expect("the run did not suspend in time");
    assert_eq!(state.as_deref(), Some("suspended"));

    // The re-consent happened (the step succeeds from now on); a worker takes the run up at
    // once: the release wakes it (its fallback poll is 30 s away).
    rt.engine.resume_later(&run_id).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let run = rt.engine.run_status(&run_id).await.unwrap();
        if run.state.kind() == "completed" {
            break;
        }
        assert!(Instant::now() < deadline, "not completed: {:?}", run.state);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        calls("post", job * 2),
        2,
        "the suspended step ran again, once"
    );
    assert_eq!(calls("fetch", job), 1, "the completed step was replayed");
    stop_tx.send(true).unwrap();
    let report = worker.await.unwrap();
    assert_eq!((report.claimed, report.finished), (2, 2), "{report:?}");
    assert!(matches!(
        rt.engine.resume_later(&run_id).await,
        Err(chain_runtime::engine::EngineError::NotSuspended { .. })
    ));
}

/// The hand-back of `Engine::resume_later` is in the journal: a holder that claims the resumed
/// run and dies before retrying leaves it to the next worker, which claims it as a recovery
/// and still retries the suspended step (replaying its failure would suspend the run again).
async fn a_resumed_run_whose_taker_died_is_retried_by_the_next_worker(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let db = backend.database(dir.path(), "taker").await;
    let rt = runtime(&db, "resumer").await;
    rt.engine.register::<consented>();
    let job = job();
    let report = rt
        .engine
        .start::<consented>(UserId("alice".into()), (job,))
        .await
        .unwrap();
    assert_eq!(report.state.kind(), "suspended", "{:?}", report.state);
    let run_id = report.run_id;
    rt.engine.resume_later(&run_id).await.unwrap();

    let drivable: Vec<Drivable> = rt
        .engine
        .drivable()
        .into_iter()
        .filter(|d| d.chain.ends_with("consented"))
        .collect();
    let taker = journal(&db, "taker").await;
    let took = taker.claim_runnable("taker", &drivable, 10).await.unwrap();
    assert_eq!(took.len(), 1);
    assert!(!took[0].recovered);
    drop(taker);

    let events = Arc::new(Mutex::new(Vec::new()));
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let worker = {
        let engine = rt.engine.clone();
        let events = events.clone();
        let options = WorkerOptions {
            poll_every: Duration::from_millis(50),
            on_event: Some(Arc::new(move |e: &WorkerEvent| {
                events.lock().unwrap().push(e.clone())
            })),
            ..WorkerOptions::default()
        };
        tokio::spawn(async move {
            engine
                .work(options, async move {
                    let _ = stop_rx.wait_for(|s| *s).await;
                })
                .await
        })
    };
    wait_terminal(rt.runs.as_ref(), std::slice::from_ref(&run_id)).await;
    stop_tx.send(true).unwrap();
    let report = worker.await.unwrap();
    assert_eq!((report.claimed, report.finished), (1, 1), "{report:?}");
    assert!(
        matches!(
            &events.lock().unwrap()[0],
            WorkerEvent::Claimed {
                recovered: true,
                ..
            }
        ),
        "the worker recovered the dead taker's run"
    );
    let run = rt.engine.run_status(&run_id).await.unwrap();
    assert_eq!(
        run.state,
        RunState::Completed {
            output: serde_json::json!(job * 2)
        }
    );
    assert_eq!(calls("post", job * 2), 2, "the suspended step ran again");
    assert_eq!(calls("fetch", job), 1, "the completed step was replayed");
}

/// Drives every runnable run of `rt` with one worker loop until the runs of `ids` ended.
async fn drain(rt: &Runtime, ids: &[String]) -> chain_runtime::engine::WorkerReport {
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let worker = {
        let engine = rt.engine.clone();
        let options = WorkerOptions {
            poll_every: Duration::from_millis(50),
            ..WorkerOptions::default()
        };
        tokio::spawn(async move {
            engine
                .work(options, async move {
                    let _ = stop_rx.wait_for(|s| *s).await;
                })
                .await
        })
    };
    wait_terminal(rt.runs.as_ref(), ids).await;
    stop_tx.send(true).unwrap();
    worker.await.unwrap()
}

/// A driver that died right after journaling a refused step (before storing the suspended
/// state) leaves the journal of a resumed run: the recovering worker retries the step, and a
/// refusal that persists suspends the run again. When the body went on after the refusal
/// (here a record follows it), the recovery replays the refusal instead: the body keeps the
/// path its journal took.
async fn a_recovery_retries_a_refusal_only_as_the_journals_last_entry(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let db = backend.database(dir.path(), "refused").await;
    let rt = runtime(&db, "worker").await;
    rt.engine.register::<consented>();
    let drivable: Vec<Drivable> = rt
        .engine
        .drivable()
        .into_iter()
        .filter(|d| d.chain.ends_with("consented"))
        .collect();
    let refused = StepError::Auth {
        connector: "crm".into(),
        class: chain_runtime::classify::FailureClass::GrantRevoked,
        needed_scopes: vec![],
        consent_params: vec![],
    };
    let mut runs = Vec::new();
    for then_record in [false, true] {
        let job = job();
        let run_id = rt
            .engine
            .submit::<consented>(UserId("alice".into()), (job,))
            .await
            .unwrap();
        // The dying driver: `fetch` done, `post` refused (and, in the second run, a record).
        let dying = journal(&db, "dying").await;
        let claim = dying
            .claim_runnable("dying", &drivable, 1)
            .await
            .unwrap()
            .pop()
            .unwrap();
        assert_eq!(claim.run.run_id, run_id);
        let entry = |seq: u32, kind: EntryKind, name: &str, result: EntryResult| JournalEntry {
            seq,
            step_id: format!("consented/{name}#1"),
            kind,
            name: name.to_owned(),
            attempt: 1,
            result: Some(result),
        };
        let mut writes = vec![
            entry(
                0,
                EntryKind::Step,
                "fetch",
                EntryResult::Ok {
                    output: serde_json::json!(job * 2),
                    touched: vec![],
                },
            ),
            entry(
                1,
                EntryKind::Step,
                "post",
                EntryResult::Err {
                    error: refused.clone(),
                },
            ),
        ];
        if then_record {
            writes.push(entry(
                2,
                EntryKind::Record,
                "fallback",
                EntryResult::Ok {
                    output: serde_json::json!(null),
                    touched: vec![],
                },
            ));
        }
        let unit = Unit::of(
            writes
                .into_iter()
                .map(|entry| JournalWrite::Entry { entry, node: 0 }),
        );
        dying.commit(Some(&claim.lease), unit).await.unwrap();
        drop(dying);
        runs.push((run_id, job, then_record));
    }
    let ids: Vec<String> = runs.iter().map(|(id, ..)| id.clone()).collect();
    let report = drain(&rt, &ids).await;
    assert_eq!(report.finished, 2, "{report:?}");
    for (run_id, job, then_record) in runs {
        let run = rt.engine.run_status(&run_id).await.unwrap();
        assert_eq!(calls("fetch", job), 0, "`fetch` replayed");
        if then_record {
            assert_eq!(calls("post", job * 2), 0, "the refusal was replayed");
        } else {
            assert_eq!(calls("post", job * 2), 1, "the refused step was retried");
            assert!(
                matches!(&run.state, RunState::Suspended { step_id, .. } if step_id == "consented/post#1"),
                "refused again: suspended again, {:?}",
                run.state
            );
        }
    }
}

async fn the_refresh_lock_excludes_other_handles_until_dropped(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let db = backend.database(dir.path(), "lock").await;
    let (a, b) = (accounts(&db, "a").await, accounts(&db, "b").await);
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
