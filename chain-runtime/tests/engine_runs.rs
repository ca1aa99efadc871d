//! Engine tests on real databases, each test once on a SQLite file and once on a PostgreSQL
//! database: journal, compensation, suspension and resume, crash recovery, divergence,
//! handoff, alerts.
//!
//! Steps follow a per-test script (keyed by a tag that is the chain's input): which calls
//! fail with which error, which block until released, and a log of every step and
//! compensator invocation.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, LazyLock, Mutex};

use chain_runtime::Runtime;
use chain_runtime::audit::{AuditEvent, AuditStore, SqliteAuditStore};
use chain_runtime::classify::FailureClass;
use chain_runtime::engine::{Engine, EngineError, WebhookNotifier};
use chain_runtime::journal::{EntryResult, RunJournal, RunState, SqliteJournal};
use chain_runtime::prelude::*;
use chain_runtime::test_util::StaticGrants;
use chain_runtime::test_util::backend::{Backend, TestDatabase};
use test_support::recovery::recover_once_released;
use tokio::sync::Notify;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
/// The test principal.
pub struct UserId(pub String);

impl Principal for UserId {
    fn identifier(&self) -> String {
        self.0.clone()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
/// Names one test scenario.
pub struct Tag(pub String);

#[derive(Clone, Debug, Serialize, Deserialize)]
/// What every test step returns.
pub struct Out {
    tag: Tag,
    step: String,
}

#[derive(Default)]
struct Gate {
    entered: Notify,
    release: Notify,
}

#[derive(Default)]
struct Plan {
    fail: HashMap<&'static str, VecDeque<StepError>>,
    block: HashMap<&'static str, Arc<Gate>>,
    log: Vec<&'static str>,
}

static PLANS: LazyLock<Mutex<HashMap<Tag, Plan>>> = LazyLock::new(Mutex::default);
static FLAGS: LazyLock<Mutex<HashSet<Tag>>> = LazyLock::new(Mutex::default);
static NEXT: AtomicU32 = AtomicU32::new(0);

fn tag(name: &str) -> Tag {
    Tag(format!("{name}-{}", NEXT.fetch_add(1, Ordering::Relaxed)))
}

fn fail(tag: &Tag, step: &'static str, error: StepError) {
    PLANS
        .lock()
        .unwrap()
        .entry(tag.clone())
        .or_default()
        .fail
        .entry(step)
        .or_default()
        .push_back(error);
}

fn block(tag: &Tag, step: &'static str) -> Arc<Gate> {
    let gate = Arc::new(Gate::default());
    PLANS
        .lock()
        .unwrap()
        .entry(tag.clone())
        .or_default()
        .block
        .insert(step, gate.clone());
    gate
}

fn unblock(tag: &Tag, step: &'static str) {
    PLANS
        .lock()
        .unwrap()
        .entry(tag.clone())
        .or_default()
        .block
        .remove(step);
}

fn log(tag: &Tag) -> Vec<&'static str> {
    PLANS
        .lock()
        .unwrap()
        .get(tag)
        .map(|p| p.log.clone())
        .unwrap_or_default()
}

fn calls(tag: &Tag, step: &str) -> usize {
    log(tag).iter().filter(|s| **s == step).count()
}

async fn act(tag: &Tag, name: &'static str) -> Result<(), StepError> {
    let (error, gate) = {
        let mut plans = PLANS.lock().unwrap();
        let plan = plans.entry(tag.clone()).or_default();
        plan.log.push(name);
        (
            plan.fail.get_mut(name).and_then(VecDeque::pop_front),
            plan.block.get(name).cloned(),
        )
    };
    if let Some(gate) = gate {
        gate.entered.notify_one();
        gate.release.notified().await;
    }
    error.map_or(Ok(()), Err)
}

fn revoked(connector: &str) -> StepError {
    StepError::Auth {
        connector: connector.into(),
        class: FailureClass::GrantRevoked,
        needed_scopes: vec![],
        consent_params: vec![],
    }
}

fn insufficient(connector: &str, scope: &str) -> StepError {
    StepError::Auth {
        connector: connector.into(),
        class: FailureClass::InsufficientScope,
        needed_scopes: vec![scope.into()],
        consent_params: vec![],
    }
}

// ---- steps -------------------------------------------------------------------------------

#[step(connector = "crm", scopes = ["crm.write"], compensate = u1)]
async fn s1(ctx: &StepCtx<UserId>, tag: Tag) -> Result<Out, StepError> {
    act(&tag, "s1").await?;
    ctx.touch(RecordRef::new("crm", "Deal", format!("deal-{}", tag.0)));
    Ok(Out {
        tag,
        step: "s1".into(),
    })
}

#[compensator(connector = "crm", scopes = ["crm.write"])]
async fn u1(ctx: &StepCtx<UserId>, out: Out) -> Result<(), StepError> {
    ctx.touch(RecordRef::new("crm", "Deal", format!("deal-{}", out.tag.0)));
    act(&out.tag, "u1").await
}

#[step(connector = "tickets", scopes = ["tickets.write"], compensate = u2)]
async fn s2(ctx: &StepCtx<UserId>, tag: Tag) -> Result<Out, StepError> {
    let _ = ctx;
    act(&tag, "s2").await?;
    Ok(Out {
        tag,
        step: "s2".into(),
    })
}

#[compensator(connector = "tickets", scopes = ["tickets.write"])]
async fn u2(ctx: &StepCtx<UserId>, out: Out) -> Result<(), StepError> {
    let _ = ctx;
    act(&out.tag, "u2").await
}

#[step(connector = "docs", scopes = ["docs.write"], compensate = u3)]
async fn s3(ctx: &StepCtx<UserId>, tag: Tag) -> Result<Out, StepError> {
    let _ = ctx;
    act(&tag, "s3").await?;
    Ok(Out {
        tag,
        step: "s3".into(),
    })
}

#[compensator(connector = "docs", scopes = ["docs.write"])]
async fn u3(ctx: &StepCtx<UserId>, out: Out) -> Result<(), StepError> {
    let _ = ctx;
    act(&out.tag, "u3").await
}

#[step(connector = "chat", scopes = ["chat:write"], irreversible = "a posted message is read at once")]
async fn post(ctx: &StepCtx<UserId>, tag: Tag) -> Result<Out, StepError> {
    act(&tag, "post").await?;
    ctx.touch(RecordRef::new("chat", "message", format!("msg-{}", tag.0)));
    Ok(Out {
        tag,
        step: "post".into(),
    })
}

#[step(connector = "crm", scopes = ["crm.read"], read)]
async fn look(ctx: &StepCtx<UserId>, tag: Tag) -> Result<Out, StepError> {
    let _ = ctx;
    act(&tag, "look").await?;
    Ok(Out {
        tag,
        step: "look".into(),
    })
}

/// Returns the step's idempotency key and the principal it ran as.
#[step(connector = "crm", scopes = ["crm.write"], compensate = u1)]
async fn keyed(ctx: &StepCtx<UserId>, tag: Tag) -> Result<Out, StepError> {
    act(&tag, "keyed").await?;
    Ok(Out {
        tag,
        step: format!("{}|{}", ctx.idempotency_key(), ctx.principal().0),
    })
}

// ---- chains ------------------------------------------------------------------------------

/// Tags whose `rw` write "reached the provider": what `find_rw` reads back.
static COMMITTED: LazyLock<Mutex<HashSet<Tag>>> = LazyLock::new(Mutex::default);

#[step(connector = "crm", scopes = ["crm.write"], compensate = u1, reconcile = find_rw)]
async fn rw(ctx: &StepCtx<UserId>, tag: Tag) -> Result<Out, StepError> {
    let _ = ctx;
    act(&tag, "rw").await?;
    Ok(Out {
        tag,
        step: "rw".into(),
    })
}

/// The read-back of `rw`: did its write happen?
async fn find_rw(ctx: &StepCtx<UserId>, tag: Tag) -> Result<Option<Out>, StepError> {
    let _ = ctx;
    act(&tag, "find_rw").await?;
    let found = COMMITTED.lock().unwrap().contains(&tag);
    Ok(found.then(|| Out {
        tag,
        step: "rw (found)".into(),
    }))
}

#[chain(principal = UserId)]
async fn reconciled(ctx: &ChainCtx<UserId>, tag: Tag) -> Result<String, ChainError> {
    let out = rw(ctx, tag.clone()).await?;
    s3(ctx, tag).await?;
    Ok(out.step)
}

#[chain(principal = UserId)]
async fn three_suspend(ctx: &ChainCtx<UserId>, tag: Tag) -> Result<String, ChainError> {
    s1(ctx, tag.clone()).await?;
    s2(ctx, tag.clone()).await?;
    s3(ctx, tag).await?;
    Ok("done".into())
}

#[chain(principal = UserId, on_auth_failure = compensate)]
async fn three_comp(ctx: &ChainCtx<UserId>, tag: Tag) -> Result<String, ChainError> {
    s1(ctx, tag.clone()).await?;
    s2(ctx, tag.clone()).await?;
    s3(ctx, tag).await?;
    Ok("done".into())
}

#[chain(principal = UserId)]
async fn irrev(ctx: &ChainCtx<UserId>, tag: Tag) -> Result<String, ChainError> {
    s1(ctx, tag.clone()).await?;
    post(ctx, tag.clone()).await?;
    s3(ctx, tag).await?;
    Ok("done".into())
}

#[chain(principal = UserId)]
async fn with_read(ctx: &ChainCtx<UserId>, tag: Tag) -> Result<String, ChainError> {
    s1(ctx, tag.clone()).await?;
    look(ctx, tag.clone()).await?;
    s3(ctx, tag).await?;
    Ok("done".into())
}

#[chain(principal = UserId)]
async fn gives_up(_ctx: &ChainCtx<UserId>, _tag: Tag) -> Result<String, ChainError> {
    Err(ChainError::domain("gave up before its first step"))
}

#[chain(principal = UserId)]
async fn no_steps(_ctx: &ChainCtx<UserId>, _tag: Tag) -> Result<String, ChainError> {
    Ok("nothing to do".into())
}

#[chain(principal = UserId)]
async fn branchy(ctx: &ChainCtx<UserId>, tag: Tag) -> Result<String, ChainError> {
    // Reads mutable state without journaling it: a resumed body can take another path.
    let flag = FLAGS.lock().unwrap().contains(&tag);
    if flag {
        s2(ctx, tag.clone()).await?;
    } else {
        s1(ctx, tag.clone()).await?;
    }
    s3(ctx, tag).await?;
    Ok("done".into())
}

static RECORD_PRODUCED: AtomicU32 = AtomicU32::new(0);

#[chain(principal = UserId)]
async fn recorded(ctx: &ChainCtx<UserId>, tag: Tag) -> Result<u32, ChainError> {
    let choice: u32 = ctx
        .record("choice", async {
            RECORD_PRODUCED.fetch_add(1, Ordering::SeqCst) + 100
        })
        .await?;
    s1(ctx, tag.clone()).await?;
    s2(ctx, tag).await?;
    Ok(choice)
}

#[chain(principal = UserId)]
async fn approve(ctx: &ChainCtx<UserId>, tag: Tag) -> Result<String, ChainError> {
    let out = keyed(ctx, tag).await?;
    Ok(out.step)
}

#[chain(principal = UserId)]
async fn with_approval(ctx: &ChainCtx<UserId>, tag: Tag) -> Result<String, ChainError> {
    s1(ctx, tag.clone()).await?;
    let approval = ctx
        .handoff::<approve>(
            UserId("boss".into()),
            (tag.clone(),),
            "co-approval by a manager",
        )
        .await?;
    s3(ctx, tag).await?;
    let me = ctx.principal().0.clone();
    Ok(format!("{me}:{approval}"))
}

// ---- setup -------------------------------------------------------------------------------

struct Env {
    engine: Engine,
    grants: Arc<StaticGrants>,
    audit: Arc<dyn AuditStore>,
    store: Arc<dyn RunJournal>,
}

/// A test's database and the directory a SQLite one lives in.
struct Db {
    _dir: tempfile::TempDir,
    db: TestDatabase,
}

async fn test_db(backend: Backend) -> Db {
    let dir = tempfile::tempdir().unwrap();
    let db = backend.database(dir.path(), "runs").await;
    Db { _dir: dir, db }
}

fn connect_all(grants: &StaticGrants, principal: &str) {
    grants.connect(
        principal,
        "crm",
        ["crm.write", "crm.read"],
        &format!("crm-{principal}"),
    );
    grants.connect(
        principal,
        "tickets",
        ["tickets.write"],
        &format!("tickets-{principal}"),
    );
    grants.connect(
        principal,
        "docs",
        ["docs.write"],
        &format!("docs-{principal}"),
    );
    grants.connect(
        principal,
        "chat",
        ["chat:write"],
        &format!("chat-{principal}"),
    );
}

async fn open_engine(dir: &Db, grants: Arc<StaticGrants>) -> Env {
    let Runtime {
        engine,
        audit,
        runs: store,
        ..
    } = Runtime::at(&dir.db.location)
        .credentials(grants.clone())
        .open()
        .await
        .unwrap();
    Env {
        engine,
        grants,
        audit,
        store,
    }
}

async fn setup(backend: Backend) -> (Db, Env) {
    let dir = test_db(backend).await;
    let grants = Arc::new(StaticGrants::new());
    connect_all(&grants, "alice");
    connect_all(&grants, "boss");
    let env = open_engine(&dir, grants).await;
    (dir, env)
}

fn alice() -> UserId {
    UserId("alice".into())
}

async fn events(env: &Env, run_id: &str) -> Vec<String> {
    env.audit
        .run_history(run_id)
        .await
        .unwrap()
        .iter()
        .map(|r| r.event.type_name().to_owned())
        .collect()
}

fn count(events: &[String], name: &str) -> usize {
    events.iter().filter(|e| *e == name).count()
}

// ---- tests -------------------------------------------------------------------------------

chain_runtime::backend_tests!(
    compensate_policy_undoes_completed_writes_in_reverse_for_failures_at_each_step,
    suspend_policy_keeps_writes_and_resume_continues_at_the_failed_step,
    a_failing_compensator_does_not_stop_the_others_and_blocks_the_run,
    an_irreversible_write_left_in_place_blocks_with_an_alert_naming_its_records,
    resume_refuses_runs_that_are_not_suspended,
    two_concurrent_resumes_one_wins,
    resume_refuses_a_reconsent_on_another_upstream_subject,
    a_body_that_diverges_from_its_journal_is_blocked_not_reexecuted,
    recorded_values_are_replayed_on_resume,
    resume_across_a_changed_chain_version_is_refused_naming_the_step,
    a_run_left_running_by_a_crash_is_recovered_without_redoing_completed_steps,
    an_intent_without_result_blocks_the_run_instead_of_redoing_the_write,
    an_unknown_outcome_is_settled_by_the_steps_reconcile_hook,
    fifty_concurrent_runs_on_one_store_complete,
    handoff_starts_a_child_run_under_another_principal,
    preflight_not_ready_writes_nothing_and_returns_the_consents,
    the_idempotency_key_is_derived_from_run_id_and_step_id,
    webhook_notifier_posts_alerts_as_json,
    a_crash_during_compensation_resumes_the_compensation_on_recovery,
    a_run_that_journals_nothing_is_stored_with_its_end_and_audit_records,
);

async fn compensate_policy_undoes_completed_writes_in_reverse_for_failures_at_each_step(
    backend: Backend,
) {
    let (_dir, env) = setup(backend).await;
    for k in 1..=3usize {
        let t = tag("comp");
        let failing = ["s1", "s2", "s3"][k - 1];
        fail(&t, failing, revoked(["crm", "tickets", "docs"][k - 1]));
        let report = env
            .engine
            .start::<three_comp>(alice(), (t.clone(),))
            .await
            .unwrap();
        if k == 1 {
            assert!(
                matches!(report.state, RunState::Failed { .. }),
                "{:?}",
                report.state
            );
        } else {
            assert_eq!(report.state, RunState::Compensated);
        }
        let expected: Vec<&str> = match k {
            1 => vec!["s1"],
            2 => vec!["s1", "s2", "u1"],
            _ => vec!["s1", "s2", "s3", "u2", "u1"],
        };
        assert_eq!(log(&t), expected, "failure at step {k}");

        let journal = env.store.journal(&report.run_id).await.unwrap();
        assert_eq!(journal.len(), k);
        assert!(matches!(
            journal[k - 1].result,
            Some(EntryResult::Err { .. })
        ));
        let comps = env.store.compensations(&report.run_id).await.unwrap();
        assert_eq!(comps.len(), k - 1);
        assert!(comps.iter().all(|c| c.result == Some(None)));

        let ev = events(&env, &report.run_id).await;
        assert_eq!(count(&ev, "run_started"), 1);
        assert_eq!(count(&ev, "step_attempt"), k);
        assert_eq!(count(&ev, "step_outcome"), k);
        assert_eq!(count(&ev, "compensation_attempt"), k - 1);
        assert_eq!(count(&ev, "compensation_outcome"), k - 1);
        assert_eq!(count(&ev, "run_finished"), 1);
        assert_eq!(
            env.engine.run_status(&report.run_id).await.unwrap().state,
            report.state
        );
        if k > 1 {
            // The record `s1` touched, and that its compensator `u1` touched undoing it, are
            // in their outcome records.
            let deal = vec![RecordRef::new("crm", "Deal", format!("deal-{}", t.0))];
            let history = env.audit.run_history(&report.run_id).await.unwrap();
            let touched = |matches: &dyn Fn(&AuditEvent) -> bool| {
                history
                    .iter()
                    .find(|r| matches(&r.event))
                    .map(|r| r.records.clone())
            };
            assert_eq!(
                touched(&|e| matches!(e, AuditEvent::StepOutcome { step, .. } if step == "s1")),
                Some(deal.clone())
            );
            assert_eq!(
                touched(&|e| matches!(
                    e,
                    AuditEvent::CompensationOutcome { compensator, .. } if compensator == "u1"
                )),
                Some(deal)
            );
        }
    }
    env.audit.verify(None).await.unwrap();
}

async fn suspend_policy_keeps_writes_and_resume_continues_at_the_failed_step(backend: Backend) {
    let (_dir, env) = setup(backend).await;
    for k in 1..=3usize {
        let t = tag("susp");
        let (failing, connector) = [("s1", "crm"), ("s2", "tickets"), ("s3", "docs")][k - 1];
        fail(&t, failing, insufficient(connector, "extra.scope"));
        let report = env
            .engine
            .start::<three_suspend>(alice(), (t.clone(),))
            .await
            .unwrap();
        let RunState::Suspended {
            step_id,
            node,
            connector: c,
            consent_scopes,
            ..
        } = &report.state
        else {
            panic!("not suspended: {:?}", report.state);
        };
        assert_eq!(step_id, &format!("three_suspend/{failing}#1"));
        assert_eq!(*node, 2 + k as u32);
        assert_eq!(c, connector);
        assert!(
            consent_scopes.contains(&"extra.scope".to_owned()),
            "{consent_scopes:?}"
        );
        let granted_example = match connector {
            "crm" => "crm.read",
            "tickets" => "tickets.write",
            _ => "docs.write",
        };
        assert!(consent_scopes.contains(&granted_example.to_owned()));
        // No compensator ran; completed writes stay.
        assert!(log(&t).iter().all(|s| !s.starts_with('u')));
        let ev = events(&env, &report.run_id).await;
        assert_eq!(count(&ev, "suspended"), 1);
        assert_eq!(count(&ev, "run_finished"), 0);

        let resumed = env.engine.resume(&report.run_id).await.unwrap();
        assert_eq!(
            resumed.state,
            RunState::Completed {
                output: serde_json::json!("done")
            }
        );
        for (j, name) in ["s1", "s2", "s3"].iter().enumerate() {
            let expected = if j + 1 == k { 2 } else { 1 };
            assert_eq!(
                calls(&t, name),
                expected,
                "{name} after failure at step {k}"
            );
        }
        let ev = events(&env, &report.run_id).await;
        assert_eq!(count(&ev, "resumed"), 1);
        assert_eq!(count(&ev, "run_finished"), 1);
        let journal = env.store.journal(&report.run_id).await.unwrap();
        assert_eq!(journal.len(), 3);
        assert_eq!(
            journal[k - 1].attempt,
            2,
            "the failed step was retried, as attempt 2"
        );
        assert!(
            journal
                .iter()
                .all(|e| matches!(e.result, Some(EntryResult::Ok { .. })))
        );
    }
}

async fn a_failing_compensator_does_not_stop_the_others_and_blocks_the_run(backend: Backend) {
    let (_dir, env) = setup(backend).await;
    let t = tag("compfail");
    fail(&t, "s3", StepError::domain("docs said no"));
    fail(
        &t,
        "u2",
        StepError::Unavailable {
            connector: "tickets".into(),
            message: "down".into(),
        },
    );
    let report = env
        .engine
        .start::<three_comp>(alice(), (t.clone(),))
        .await
        .unwrap();
    let RunState::Blocked { reason } = &report.state else {
        panic!("{:?}", report.state)
    };
    assert!(reason.contains("u2"), "{reason}");
    assert_eq!(log(&t), ["s1", "s2", "s3", "u2", "u1"]);
    let comps = env.store.compensations(&report.run_id).await.unwrap();
    assert_eq!(comps.len(), 2);
    assert!(
        comps
            .iter()
            .any(|c| c.compensator == "u2" && matches!(c.result, Some(Some(_))))
    );
    assert!(
        comps
            .iter()
            .any(|c| c.compensator == "u1" && c.result == Some(None))
    );
    let alerts = env.engine.alerts(Some(&report.run_id)).await.unwrap();
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].step_id.as_deref(), Some("three_comp/s2#1"));
    let ev = events(&env, &report.run_id).await;
    assert_eq!(count(&ev, "operator_alert"), 1);
}

async fn an_irreversible_write_left_in_place_blocks_with_an_alert_naming_its_records(
    backend: Backend,
) {
    let (_dir, env) = setup(backend).await;
    let t = tag("irrev");
    fail(&t, "s3", StepError::domain("docs said no"));
    let report = env
        .engine
        .start::<irrev>(alice(), (t.clone(),))
        .await
        .unwrap();
    assert!(
        matches!(report.state, RunState::Blocked { .. }),
        "{:?}",
        report.state
    );
    // The compensable write was still undone.
    assert_eq!(log(&t), ["s1", "post", "s3", "u1"]);
    let alerts = env.engine.alerts(Some(&report.run_id)).await.unwrap();
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].step_id.as_deref(), Some("irrev/post#1"));
    assert_eq!(
        alerts[0].records,
        [RecordRef::new("chat", "message", format!("msg-{}", t.0))]
    );
    assert!(alerts[0].message.contains("irrev/post#1"));
    let ev = events(&env, &report.run_id).await;
    assert_eq!(count(&ev, "operator_alert"), 1);
}

async fn resume_refuses_runs_that_are_not_suspended(backend: Backend) {
    let (_dir, env) = setup(backend).await;
    let t = tag("done");
    let report = env
        .engine
        .start::<three_suspend>(alice(), (t.clone(),))
        .await
        .unwrap();
    assert_eq!(report.output.as_deref(), Some("done"));
    let err = env.engine.resume(&report.run_id).await.unwrap_err();
    assert!(matches!(err, EngineError::NotSuspended { .. }), "{err}");
    assert!(err.to_string().contains("completed"), "{err}");
    assert_eq!(calls(&t, "s1"), 1);
    let err = env.engine.resume("run_nope").await.unwrap_err();
    assert!(matches!(err, EngineError::NotFound { .. }), "{err}");
}

async fn two_concurrent_resumes_one_wins(backend: Backend) {
    let (_dir, env) = setup(backend).await;
    let t = tag("double");
    fail(&t, "s2", revoked("tickets"));
    let report = env
        .engine
        .start::<three_suspend>(alice(), (t.clone(),))
        .await
        .unwrap();
    assert!(matches!(report.state, RunState::Suspended { .. }));
    let (a, b) = tokio::join!(
        env.engine.resume(&report.run_id),
        env.engine.resume(&report.run_id)
    );
    let oks = [a.is_ok(), b.is_ok()].iter().filter(|x| **x).count();
    assert_eq!(oks, 1, "{a:?} {b:?}");
    let err = a.err().or(b.err()).unwrap();
    assert!(
        matches!(
            err,
            EngineError::Busy { .. } | EngineError::NotSuspended { .. }
        ),
        "{err}"
    );
    assert_eq!(calls(&t, "s2"), 2);
    assert_eq!(calls(&t, "s3"), 1);
}

async fn resume_refuses_a_reconsent_on_another_upstream_subject(backend: Backend) {
    let (_dir, env) = setup(backend).await;
    let t = tag("drift");
    fail(&t, "s2", revoked("tickets"));
    let report = env
        .engine
        .start::<three_suspend>(alice(), (t.clone(),))
        .await
        .unwrap();
    assert!(matches!(report.state, RunState::Suspended { .. }));
    env.grants
        .connect("alice", "tickets", ["tickets.write"], "tickets-mallory");
    let err = env.engine.resume(&report.run_id).await.unwrap_err();
    let EngineError::SubjectChanged {
        connector,
        recorded,
        current,
        ..
    } = &err
    else {
        panic!("{err}")
    };
    assert_eq!(
        (connector.as_str(), recorded.as_str(), current.as_str()),
        ("tickets", "tickets-alice", "tickets-mallory")
    );
    assert!(err.to_string().contains("tickets-mallory"));
    let state = env.engine.run_status(&report.run_id).await.unwrap().state;
    assert!(matches!(state, RunState::Suspended { .. }), "{state:?}");
    assert_eq!(calls(&t, "s2"), 1);
    // Re-consent with the original account: the resume goes through.
    env.grants
        .connect("alice", "tickets", ["tickets.write"], "tickets-alice");
    let resumed = env.engine.resume(&report.run_id).await.unwrap();
    assert!(matches!(resumed.state, RunState::Completed { .. }));
}

async fn a_body_that_diverges_from_its_journal_is_blocked_not_reexecuted(backend: Backend) {
    let (_dir, env) = setup(backend).await;
    let t = tag("diverge");
    fail(&t, "s3", revoked("docs"));
    let report = env
        .engine
        .start::<branchy>(alice(), (t.clone(),))
        .await
        .unwrap();
    assert!(matches!(report.state, RunState::Suspended { .. }));
    FLAGS.lock().unwrap().insert(t.clone());
    let resumed = env.engine.resume(&report.run_id).await.unwrap();
    let RunState::Blocked { reason } = &resumed.state else {
        panic!("{:?}", resumed.state)
    };
    assert!(
        reason.contains("branchy/s1#1") && reason.contains("branchy/s2#1"),
        "{reason}"
    );
    assert_eq!(calls(&t, "s2"), 0);
    assert_eq!(calls(&t, "s3"), 1);
    assert_eq!(
        env.engine.alerts(Some(&report.run_id)).await.unwrap().len(),
        1
    );
}

async fn recorded_values_are_replayed_on_resume(backend: Backend) {
    let (_dir, env) = setup(backend).await;
    let t = tag("record");
    fail(&t, "s2", revoked("tickets"));
    let before = RECORD_PRODUCED.load(Ordering::SeqCst);
    let report = env
        .engine
        .start::<recorded>(alice(), (t.clone(),))
        .await
        .unwrap();
    assert!(matches!(report.state, RunState::Suspended { .. }));
    let journal = env.store.journal(&report.run_id).await.unwrap();
    assert_eq!(journal[0].step_id, "recorded/record:choice#1");
    let resumed = env.engine.resume(&report.run_id).await.unwrap();
    let output: u32 = resumed.output_as().unwrap().unwrap();
    let RunState::Completed { .. } = resumed.state else {
        panic!()
    };
    assert_eq!(
        journal[0].result,
        Some(EntryResult::Ok {
            output: serde_json::json!(output),
            touched: vec![]
        })
    );
    // Produced once (other tests may produce too, so compare the journaled value).
    assert!(RECORD_PRODUCED.load(Ordering::SeqCst) > before);
    assert_eq!(calls(&t, "s1"), 1);
}

async fn resume_across_a_changed_chain_version_is_refused_naming_the_step(backend: Backend) {
    let (dir, env) = setup(backend).await;
    let t = tag("version");
    fail(&t, "s2", revoked("tickets"));
    let report = env
        .engine
        .start::<three_suspend>(alice(), (t.clone(),))
        .await
        .unwrap();
    // Simulate a run recorded by an older build whose `s2` was declared differently.
    let edited = match backend {
        Backend::Sqlite => "json_set(step_versions, '$.s2', 'old')",
        Backend::Postgres => "jsonb_set(step_versions::jsonb, '{s2}', '\"old\"')::text",
    };
    dir.db
        .execute_batch(&format!(
            "UPDATE run_runs SET chain_version = 'old', step_versions = {edited} \
             WHERE run_id = '{}'",
            report.run_id
        ))
        .await;
    let err = env.engine.resume(&report.run_id).await.unwrap_err();
    let EngineError::ChainChanged { steps, .. } = &err else {
        panic!("{err}")
    };
    assert_eq!(steps, &["step `s2` changed"]);
    assert!(err.to_string().contains("s2"));
    let state = env.engine.run_status(&report.run_id).await.unwrap().state;
    assert!(matches!(state, RunState::Suspended { .. }));
}

/// Starts `C` in a task, waits until step `blocked` is entered, then kills the task and the
/// engine (a crash: nothing after that point runs).
async fn crash_at<C: Chain<Principal = UserId, Input = (Tag,)>>(
    env: Env,
    t: &Tag,
    blocked: &'static str,
) {
    let gate = block(t, blocked);
    let engine = env.engine.clone();
    let input = (t.clone(),);
    let task = tokio::spawn(async move { engine.start::<C>(alice(), input).await });
    gate.entered.notified().await;
    task.abort();
    let _ = task.await;
    // The aborted run's drop spawned a task that releases its lease (the runner's
    // `ReleaseIfAbandoned`) and holds the engine until it is done; until then the "crashed"
    // engine's lease holder is alive, and a recovery would skip the run as claimed.
    let journal = Arc::downgrade(&env.store);
    drop(env);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while journal.upgrade().is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "the crashed engine's journal was still in use 30 s after its run was aborted"
        );
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    unblock(t, blocked);
}

async fn a_run_left_running_by_a_crash_is_recovered_without_redoing_completed_steps(
    backend: Backend,
) {
    let dir = test_db(backend).await;
    let grants = Arc::new(StaticGrants::new());
    connect_all(&grants, "alice");
    let t = tag("crash");
    let env = open_engine(&dir, grants.clone()).await;
    crash_at::<with_read>(env, &t, "look").await;
    assert_eq!(log(&t), ["s1", "look"]);

    let env = open_engine(&dir, grants).await;
    // The read's intent is deferred: queued before the "crash" (the task aborted, the process
    // alive), it may commit just after it, on PostgreSQL through the old handle's writer.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let runs = loop {
        let runs = env.engine.list_runs().await.unwrap();
        if runs.len() != 1 || runs[0].node == 4 || std::time::Instant::now() > deadline {
            break runs;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].state, RunState::Running);
    assert_eq!(runs[0].node, 4, "the run is at `look`");
    env.engine.register::<with_read>();
    // The abandoned run's lease is given back by a task of the old engine's (on PostgreSQL
    // through its writer, after the units queued before), and its holder's session may take a
    // moment to end: until one of them happened, the run is not yet recoverable.
    let recovered = recover_once_released(&env.engine, deadline).await;
    assert_eq!(recovered.len(), 1);
    assert!(
        matches!(recovered[0].1, Ok(RunState::Completed { .. })),
        "{:?}",
        recovered[0].1
    );
    // The read ran again, the completed write did not.
    assert_eq!(log(&t), ["s1", "look", "look", "s3"]);
    let ev = events(&env, &runs[0].run_id).await;
    assert_eq!(count(&ev, "resumed"), 1);
}

async fn an_intent_without_result_blocks_the_run_instead_of_redoing_the_write(backend: Backend) {
    let dir = test_db(backend).await;
    let grants = Arc::new(StaticGrants::new());
    connect_all(&grants, "alice");
    let t = tag("unknown");
    let env = open_engine(&dir, grants.clone()).await;
    crash_at::<three_suspend>(env, &t, "s2").await;

    let env = open_engine(&dir, grants).await;
    env.engine.register::<three_suspend>();
    let recovered = env.engine.recover().await.unwrap();
    let Ok(RunState::Blocked { reason }) = &recovered[0].1 else {
        panic!("{:?}", recovered[0].1)
    };
    assert!(
        reason.contains("three_suspend/s2#1") && reason.contains("unknown outcome"),
        "{reason}"
    );
    assert_eq!(log(&t), ["s1", "s2"], "s2 is not redone, s3 not reached");
    let alerts = env.engine.alerts(Some(&recovered[0].0)).await.unwrap();
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].step_id.as_deref(), Some("three_suspend/s2#1"));
}

/// An unknown outcome of a step with a `reconcile` hook: the hook reads back whether the write
/// happened. Found: its result is journaled and the body is not redone. Not found: the body
/// runs (once).
async fn an_unknown_outcome_is_settled_by_the_steps_reconcile_hook(backend: Backend) {
    for reached_provider in [true, false] {
        let dir = test_db(backend).await;
        let grants = Arc::new(StaticGrants::new());
        connect_all(&grants, "alice");
        let t = tag("reconcile");
        let env = open_engine(&dir, grants.clone()).await;
        crash_at::<reconciled>(env, &t, "rw").await;
        if reached_provider {
            COMMITTED.lock().unwrap().insert(t.clone());
        }

        let env = open_engine(&dir, grants).await;
        env.engine.register::<reconciled>();
        let recovered = env.engine.recover().await.unwrap();
        let Ok(RunState::Completed { output }) = &recovered[0].1 else {
            panic!("{:?}", recovered[0].1)
        };
        if reached_provider {
            assert_eq!(output, &serde_json::json!("rw (found)"));
            assert_eq!(log(&t), ["rw", "find_rw", "s3"], "the write is not redone");
        } else {
            assert_eq!(output, &serde_json::json!("rw"));
            assert_eq!(
                log(&t),
                ["rw", "find_rw", "rw", "s3"],
                "not found: written once more"
            );
        }
        assert!(
            env.engine
                .alerts(Some(&recovered[0].0))
                .await
                .unwrap()
                .is_empty()
        );
    }
}

async fn fifty_concurrent_runs_on_one_store_complete(backend: Backend) {
    let (dir, env) = setup(backend).await;
    // The SQLite file's shared writer counts every write; PostgreSQL has no such writer.
    let writer = match dir.db.path() {
        Some(path) => Some(SqliteJournal::open(path).await.unwrap()),
        None => None,
    };
    let start = writer.as_ref().map(SqliteJournal::writer_stats);
    let mut set = tokio::task::JoinSet::new();
    let mut tags = Vec::new();
    for _ in 0..50 {
        let t = tag("many");
        tags.push(t.clone());
        let engine = env.engine.clone();
        set.spawn(async move { engine.start::<three_suspend>(alice(), (t,)).await });
    }
    let mut ids = HashSet::new();
    while let Some(result) = set.join_next().await {
        let report = result.unwrap().unwrap();
        assert_eq!(report.output.as_deref(), Some("done"));
        ids.insert(report.run_id);
    }
    assert_eq!(ids.len(), 50);
    for t in &tags {
        assert_eq!(log(t), ["s1", "s2", "s3"]);
    }
    let runs = env.engine.list_runs().await.unwrap();
    assert_eq!(
        runs.iter()
            .filter(|r| matches!(r.state, RunState::Completed { .. }))
            .count(),
        50
    );
    if let (Some(writer), Some(start)) = (&writer, start) {
        let stats = writer.writer_stats();
        let (writes, commits) = (stats.writes - start.writes, stats.commits - start.commits);
        // 50 runs × (3 × (intent + attempt record) each with the result + outcome record of
        // the step before it, the first with the run's insert + lease + run_started, the last
        // result with the final state + run_finished + lease release): the journal and the
        // audit trail share one writer, each write carries its audit records, a step's result
        // rides with the next unit and a run's creation with its first.
        assert_eq!(writes, 50 * 4);
        assert!(commits <= writes);
        eprintln!("group commit: {writes} writes in {commits} transactions");
    }
    env.audit.verify(None).await.unwrap();
}

async fn handoff_starts_a_child_run_under_another_principal(backend: Backend) {
    let (_dir, env) = setup(backend).await;
    let t = tag("handoff");
    let report = env
        .engine
        .start::<with_approval>(alice(), (t.clone(),))
        .await
        .unwrap();
    let output = report.output.clone().unwrap();
    let (parent_principal, approval) = output.split_once(':').unwrap();
    assert_eq!(
        parent_principal, "alice",
        "the parent's principal never changes"
    );
    let (key, child_principal) = approval.split_once('|').unwrap();
    assert_eq!(child_principal, "boss");
    assert_eq!(key.len(), 32);

    let runs = env.engine.list_runs().await.unwrap();
    let child = runs
        .iter()
        .find(|r| r.parent_run_id.as_deref() == Some(&report.run_id))
        .unwrap();
    assert_eq!(child.principal_id, "boss");
    assert!(matches!(child.state, RunState::Completed { .. }));
    let history = env.audit.run_history(&report.run_id).await.unwrap();
    let handoff = history
        .iter()
        .find(|r| r.event.type_name() == "handoff")
        .unwrap();
    assert_eq!(handoff.principal, "alice");
    let child_events = events(&env, &child.run_id).await;
    assert_eq!(count(&child_events, "run_started"), 1);
    assert!(
        env.audit
            .run_history(&child.run_id)
            .await
            .unwrap()
            .iter()
            .all(|r| r.principal == "boss")
    );
    let journal = env.store.journal(&report.run_id).await.unwrap();
    assert_eq!(journal[1].step_id, "with_approval/handoff:approve#1");
    assert_eq!(log(&t), ["s1", "keyed", "s3"]);
}

async fn preflight_not_ready_writes_nothing_and_returns_the_consents(backend: Backend) {
    let (_dir, env) = setup(backend).await;
    env.grants
        .connect("carol", "crm", ["crm.write"], "crm-carol");
    let err = env
        .engine
        .start::<three_suspend>(UserId("carol".into()), (tag("pf"),))
        .await
        .unwrap_err();
    let EngineError::PreflightNotReady { consents, .. } = &err else {
        panic!("{err}")
    };
    let connectors: Vec<&str> = consents.iter().map(|c| c.connector.as_str()).collect();
    assert_eq!(connectors, ["docs", "tickets"]);
    assert!(env.engine.list_runs().await.unwrap().is_empty());
}

async fn the_idempotency_key_is_derived_from_run_id_and_step_id(backend: Backend) {
    let (_dir, env) = setup(backend).await;
    let t = tag("key");
    let report = env
        .engine
        .start::<approve>(alice(), (t.clone(),))
        .await
        .unwrap();
    let key = report.output.unwrap();
    let expected = chain_runtime::engine::idempotency_key(&report.run_id, "approve/keyed#1");
    assert_eq!(key, format!("{expected}|alice"));
}

async fn webhook_notifier_posts_alerts_as_json(backend: Backend) {
    use axum::{Json, Router, routing::post as http_post};
    let received: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
    let sink = received.clone();
    let app = Router::new().route(
        "/alerts",
        http_post(move |Json(body): Json<serde_json::Value>| {
            let sink = sink.clone();
            async move {
                sink.lock().unwrap().push(body);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let dir = test_db(backend).await;
    let grants = Arc::new(StaticGrants::new());
    connect_all(&grants, "alice");
    let notifier = Arc::new(WebhookNotifier::new(format!("http://{addr}/alerts")).unwrap());
    let engine = Runtime::at(&dir.db.location)
        .credentials(grants)
        .notifier(notifier)
        .open()
        .await
        .unwrap()
        .engine;

    let t = tag("webhook");
    fail(&t, "s3", StepError::domain("no"));
    let report = engine.start::<irrev>(alice(), (t,)).await.unwrap();
    assert!(matches!(report.state, RunState::Blocked { .. }));
    let got = received.lock().unwrap().clone();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["run_id"], serde_json::json!(report.run_id));
    assert_eq!(got[0]["step_id"], serde_json::json!("irrev/post#1"));
    assert_eq!(got[0]["records"][0]["kind"], serde_json::json!("message"));
    // The alert row is stored as well.
    assert_eq!(engine.alerts(Some(&report.run_id)).await.unwrap().len(), 1);
}

#[tokio::test]
async fn the_in_memory_store_runs_suspends_and_resumes_too() {
    let dir = tempfile::tempdir().unwrap();
    let grants = Arc::new(StaticGrants::new());
    connect_all(&grants, "alice");
    let audit = Arc::new(
        SqliteAuditStore::open(dir.path().join("audit.sqlite"))
            .await
            .unwrap(),
    );
    let store = Arc::new(chain_runtime::journal::MemoryJournal::new());
    let engine = Engine::new(store.clone(), audit, grants);
    let t = tag("memory");
    fail(&t, "s3", revoked("docs"));
    let report = engine
        .start::<three_suspend>(alice(), (t.clone(),))
        .await
        .unwrap();
    assert!(matches!(report.state, RunState::Suspended { .. }));
    assert_eq!(store.journal(&report.run_id).await.unwrap().len(), 3);
    let resumed = engine.resume(&report.run_id).await.unwrap();
    assert!(matches!(resumed.state, RunState::Completed { .. }));
    assert_eq!(log(&t), ["s1", "s2", "s3", "s3"]);
}

async fn a_crash_during_compensation_resumes_the_compensation_on_recovery(backend: Backend) {
    let dir = test_db(backend).await;
    let grants = Arc::new(StaticGrants::new());
    connect_all(&grants, "alice");
    let t = tag("compcrash");
    fail(&t, "s3", StepError::domain("docs said no"));
    let env = open_engine(&dir, grants.clone()).await;
    crash_at::<three_comp>(env, &t, "u1").await;
    assert_eq!(log(&t), ["s1", "s2", "s3", "u2", "u1"]);

    let env = open_engine(&dir, grants).await;
    let runs = env.engine.list_runs().await.unwrap();
    assert_eq!(runs[0].state, RunState::Compensating);
    env.engine.register::<three_comp>();
    let recovered = env.engine.recover().await.unwrap();
    assert!(
        matches!(recovered[0].1, Ok(RunState::Compensated)),
        "{:?}",
        recovered[0].1
    );
    // u2 had finished and is not run again; u1 had only its intent and runs again.
    assert_eq!(log(&t), ["s1", "s2", "s3", "u2", "u1", "u1"]);
    let comps = env.store.compensations(&runs[0].run_id).await.unwrap();
    let u1 = comps.iter().find(|c| c.compensator == "u1").unwrap();
    assert_eq!((u1.attempt, u1.result.clone()), (2, Some(None)));
}

/// A SQLite run is created with its first unit; a body that journals nothing (it gives up or
/// returns at once) still leaves its run stored, ended, with its start and end audited.
async fn a_run_that_journals_nothing_is_stored_with_its_end_and_audit_records(backend: Backend) {
    let (_dir, env) = setup(backend).await;
    let failed = env
        .engine
        .start::<gives_up>(alice(), tag("gives-up"))
        .await
        .unwrap();
    let done = env
        .engine
        .start::<no_steps>(alice(), tag("no-steps"))
        .await
        .unwrap();
    assert!(
        matches!(done.state, RunState::Completed { .. }),
        "{:?}",
        done.state
    );
    for report in [&failed.run_id, &done.run_id] {
        let stored = env.store.get_run(report).await.unwrap().unwrap();
        assert!(stored.state.is_terminal(), "{:?}", stored.state);
        assert!(env.store.journal(report).await.unwrap().is_empty());
        let events = events(&env, report).await;
        assert_eq!(count(&events, "run_started"), 1, "{events:?}");
        assert_eq!(count(&events, "run_finished"), 1, "{events:?}");
    }
    let failed_state = env.store.get_run(&failed.run_id).await.unwrap().unwrap();
    assert_eq!(failed_state.state, failed.state);
}
