//! Model-chosen steps, through real HTTP against the scripted model emulator: the toolset in
//! the manifest, preflight and graph (rule 1), journaled model turns that a replay never asks
//! again (rule 2), rejected calls fed back and never run (rule 3), several calls in order
//! (rule 4), and what the model sees (rule 6). Authorization failures inside a tool (rule 5)
//! are tested against the provider emulators in `examples/tests/deal_agent.rs`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use chain_runtime::audit::{AuditEvent, AuditStore, Outcome, SqliteAuditStore};
use chain_runtime::engine::{Engine, EngineError};
use chain_runtime::graph::{EdgeKind, NodeKind};
use chain_runtime::journal::{EntryKind, EntryResult, RunJournal, RunState, SqliteJournal};
use chain_runtime::model::{OpenAiCompatible, register_model};
use chain_runtime::policy::RetryPolicy;
use chain_runtime::prelude::*;
use chain_runtime::sandbox::{ModelFault, ScriptedModel, ScriptedTurn};
use chain_runtime::test_util::StaticGrants;
use serde_json::{Value, json};
use test_support::UserId;
use test_support::recovery::recover_once_released;
use tokio::sync::Notify;

/// A note.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
struct Note {
    /// Its key.
    key: String,
    /// Its text.
    text: String,
}

/// How urgent a note is.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
enum Priority {
    /// Now.
    High,
    /// Whenever.
    Low,
}

/// The id of a written note.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
struct NoteId(String);

/// Every step and compensator invocation, per run: (step, argument).
static LOG: LazyLock<Mutex<Vec<(String, String, String)>>> = LazyLock::new(Mutex::default);
/// Entered, then released.
type Gate = Arc<(Notify, Notify)>;
/// Keys whose lookup blocks until released (the crash test).
static GATES: LazyLock<Mutex<HashMap<String, Gate>>> = LazyLock::new(Mutex::default);
static NEXT: AtomicU32 = AtomicU32::new(0);

fn log(run: &str, step: &str, arg: &str) {
    LOG.lock()
        .unwrap()
        .push((run.to_owned(), step.to_owned(), arg.to_owned()));
}

fn logged(run: &str) -> Vec<(String, String)> {
    LOG.lock()
        .unwrap()
        .iter()
        .filter(|(r, _, _)| r == run)
        .map(|(_, s, a)| (s.clone(), a.clone()))
        .collect()
}

/// Looks up a note by its key.
#[step(connector = "notes", scopes = ["notes.read"], read)]
async fn lookup(ctx: &StepCtx<UserId>, key: String) -> Result<Note, StepError> {
    log(ctx.run_id(), "lookup", &key);
    let gate = GATES.lock().unwrap().get(&key).cloned();
    if let Some(gate) = gate {
        gate.0.notify_one();
        gate.1.notified().await;
    }
    if key == "missing" {
        return Err(StepError::domain("no note has the key `missing`"));
    }
    Ok(Note {
        text: format!("text of {key}"),
        key,
    })
}

/// Writes a note.
#[step(connector = "notes", scopes = ["notes.write"], compensate = erase_note)]
async fn write_note(
    ctx: &StepCtx<UserId>,
    text: String,
    priority: Priority,
) -> Result<NoteId, StepError> {
    let _ = priority;
    log(ctx.run_id(), "write_note", &text);
    Ok(NoteId(format!("note-{text}")))
}

/// Erases a note.
#[compensator(connector = "notes", scopes = ["notes.delete"])]
async fn erase_note(ctx: &StepCtx<UserId>, id: NoteId) -> Result<(), StepError> {
    log(ctx.run_id(), "erase_note", &id.0);
    Ok(())
}

/// Pages someone.
#[step(connector = "pager", scopes = ["pager.send"], irreversible = "a page wakes someone up")]
async fn page(ctx: &StepCtx<UserId>, who: String) -> Result<(), StepError> {
    log(ctx.run_id(), "page", &who);
    Ok(())
}

/// Answers a request with the notes tools.
#[chain(principal = UserId)]
async fn assistant(
    ctx: &ChainCtx<UserId>,
    model: String,
    ask: String,
) -> Result<String, ChainError> {
    let tools = toolset![lookup, write_note, page];
    let mut chat = Conversation::new(model).system("You keep notes.").user(ask);
    ctx.run_tools(&tools, &mut chat).await
}

/// Like `assistant`, with tight limits.
#[chain(principal = UserId, max_model_turns = 3, max_tool_calls = 4, max_rejected_tool_calls = 1)]
async fn strict_assistant(
    ctx: &ChainCtx<UserId>,
    model: String,
    ask: String,
) -> Result<String, ChainError> {
    let tools = toolset![lookup, write_note];
    let mut chat = Conversation::new(model).user(ask);
    ctx.run_tools(&tools, &mut chat).await
}

struct Env {
    engine: Engine,
    store: Arc<SqliteJournal>,
    audit: Arc<SqliteAuditStore>,
    model: ScriptedModel,
    name: String,
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    grants: Arc<StaticGrants>,
}

fn grants(with_pager: bool) -> Arc<StaticGrants> {
    let g = Arc::new(StaticGrants::new());
    g.connect(
        "alice",
        "notes",
        ["notes.read", "notes.write", "notes.delete"],
        "notes-alice",
    );
    if with_pager {
        g.connect("alice", "pager", ["pager.send"], "pager-alice");
    }
    g
}

async fn env_with(grants: Arc<StaticGrants>, retry: RetryPolicy) -> Env {
    test_support::tls::install_tls_provider();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chain.db");
    let store = Arc::new(SqliteJournal::open(&path).await.unwrap());
    let audit = Arc::new(SqliteAuditStore::open(&path).await.unwrap());
    let engine = Engine::new(store.clone(), audit.clone(), grants.clone());
    let model = ScriptedModel::start().await.unwrap();
    let name = format!("scripted-{}", NEXT.fetch_add(1, Ordering::Relaxed));
    let client = OpenAiCompatible::new(model.base_url(), "scripted")
        .unwrap()
        .with_retry_policy(retry);
    register_model(name.clone(), Arc::new(client));
    Env {
        engine,
        store,
        audit,
        model,
        name,
        _dir: dir,
        path,
        grants,
    }
}

fn fast_retries() -> RetryPolicy {
    RetryPolicy {
        base_backoff: Duration::from_millis(1),
        ..RetryPolicy::default()
    }
}

async fn env() -> Env {
    env_with(grants(true), fast_retries()).await
}

fn alice() -> UserId {
    UserId("alice".into())
}

/// The `role: tool` messages of a recorded request.
fn tool_results(request: &Value) -> Vec<Value> {
    request["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "tool")
        .cloned()
        .collect()
}

async fn step_audit(env: &Env, run: &str) -> Vec<(String, Outcome, Option<String>)> {
    env.audit
        .run_history(run)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|r| match r.event {
            AuditEvent::StepOutcome { step, detail, .. } => Some((step, r.outcome, detail)),
            _ => None,
        })
        .collect()
}

#[test]
fn the_toolset_is_in_the_step_list_manifest_and_graph() {
    let meta = &<assistant as Chain>::META;
    let names: Vec<&str> = meta.steps.iter().map(|s| s.name).collect();
    assert_eq!(names, ["lookup", "write_note", "page"]);
    let manifest = meta.manifest();
    assert_eq!(
        manifest.scopes("notes").into_iter().collect::<Vec<_>>(),
        ["notes.delete", "notes.read", "notes.write"],
        "the compensator's scope is part of the union"
    );
    assert_eq!(manifest.scopes("pager").len(), 1);
    let choice = meta
        .graph
        .nodes
        .iter()
        .find(|n| matches!(n.kind, NodeKind::ModelChoice { .. }))
        .expect("a model-choice node");
    for tool in ["lookup", "write_note", "page"] {
        let node = meta
            .graph
            .nodes
            .iter()
            .find(|n| matches!(&n.kind, NodeKind::Step { step, .. } if step.name == tool))
            .unwrap();
        let edges: Vec<_> = meta.graph.edges.iter().collect();
        assert!(
            edges.iter().any(|e| e.from == choice.id
                && e.to == node.id
                && matches!(e.kind, EdgeKind::Branch(_))),
            "choice -> {tool}"
        );
        assert!(
            edges
                .iter()
                .any(|e| e.from == node.id && e.to == choice.id && e.kind == EdgeKind::Loop),
            "{tool} -> choice (the loop)"
        );
    }
    assert!(meta.graph.mermaid().contains("model chooses"));
    assert_eq!(
        <strict_assistant as Chain>::META
            .tool_limits
            .max_rejected_tool_calls,
        1
    );
}

#[tokio::test]
async fn preflight_asks_for_the_whole_toolset_before_the_model_is_called() {
    let env = env_with(grants(false), fast_retries()).await;
    env.model.push(ScriptedTurn::text("never asked"));
    let err = env
        .engine
        .start::<assistant>(alice(), (env.name.clone(), "hi".into()))
        .await
        .unwrap_err();
    let EngineError::PreflightNotReady { consents, .. } = err else {
        panic!("{err:?}")
    };
    assert_eq!(consents.len(), 1);
    assert_eq!(consents[0].connector, "pager");
    assert!(
        env.model.requests().is_empty(),
        "no model turn before consent"
    );
    assert!(env.store.list_runs().await.unwrap().is_empty());
    let _ = &env.grants;
}

#[tokio::test]
async fn several_calls_of_one_turn_run_in_order_each_journaled_and_audited() {
    let env = env().await;
    env.model.push(
        ScriptedTurn::calls()
            .call("lookup", json!({ "key": "a" }))
            .call("write_note", json!({ "text": "hello", "priority": "High" }))
            .call("lookup", json!({ "key": "missing" })),
    );
    env.model.push(ScriptedTurn::text("done"));
    let report = env
        .engine
        .start::<assistant>(alice(), (env.name.clone(), "note it".into()))
        .await
        .unwrap();
    assert_eq!(report.output.as_deref(), Some("done"), "{:?}", report.state);
    let run = &report.run_id;
    assert_eq!(
        logged(run),
        [
            ("lookup".to_owned(), "a".to_owned()),
            ("write_note".to_owned(), "hello".to_owned()),
            ("lookup".to_owned(), "missing".to_owned()),
        ]
    );
    let journal = env.store.journal(run).await.unwrap();
    let kinds: Vec<(EntryKind, &str)> = journal.iter().map(|e| (e.kind, e.name.as_str())).collect();
    assert_eq!(
        kinds,
        [
            (EntryKind::Record, "model_turn"),
            (EntryKind::Step, "lookup"),
            (EntryKind::Step, "write_note"),
            (EntryKind::Step, "lookup"),
            (EntryKind::Record, "model_turn"),
        ]
    );
    let audited: Vec<String> = step_audit(&env, run)
        .await
        .into_iter()
        .map(|a| a.0)
        .collect();
    assert_eq!(audited, ["lookup", "write_note", "lookup"]);
    // What the model saw: the tool definitions, then the steps' outputs as tool results and
    // the domain error as the classified message.
    let requests = env.model.requests();
    assert_eq!(requests.len(), 2);
    let tools: Vec<&str> = requests[0]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["function"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(tools, ["lookup", "write_note", "page"]);
    let results = tool_results(&requests[1]);
    assert_eq!(results.len(), 3);
    let first: Value = serde_json::from_str(results[0]["content"].as_str().unwrap()).unwrap();
    assert_eq!(first, json!({ "key": "a", "text": "text of a" }));
    assert_eq!(results[1]["content"], "\"note-hello\"");
    assert!(
        results[2]["content"]
            .as_str()
            .unwrap()
            .contains("no note has the key `missing`")
    );
    assert_eq!(
        results[0]["tool_call_id"],
        requests[1]["messages"][2]["tool_calls"][0]["id"]
    );
}

#[tokio::test]
async fn unknown_tools_and_invalid_arguments_go_back_to_the_model_and_never_run() {
    let env = env().await;
    env.model.push(
        ScriptedTurn::calls()
            .call("drop_database", json!({}))
            .call("write_note", json!({ "text": 5, "priority": "High" }))
            .call("write_note", json!({ "text": "x", "priority": "Urgent" }))
            .call_raw("write_note", "{\"text\": "),
    );
    env.model.push(ScriptedTurn::text("sorry"));
    // The chain's default limit is 3 rejected calls: the fourth ends the run.
    let report = env
        .engine
        .start::<assistant>(alice(), (env.name.clone(), "break things".into()))
        .await
        .unwrap();
    let run = &report.run_id;
    assert!(
        logged(run).is_empty(),
        "nothing was executed: {:?}",
        logged(run)
    );
    let requests = env.model.requests();
    assert_eq!(
        requests.len(),
        1,
        "the fourth rejection ends the run at the limit"
    );
    assert!(
        matches!(
            report.state,
            RunState::Failed { .. } | RunState::Compensated
        ),
        "{:?}",
        report.state
    );
    let audited = step_audit(&env, run).await;
    assert_eq!(audited.len(), 4, "{audited:?}");
    assert!(
        audited
            .iter()
            .all(|(s, o, _)| s == "rejected_tool_call" && *o == Outcome::Failed)
    );
    let details: Vec<String> = audited.into_iter().filter_map(|a| a.2).collect();
    assert!(
        details[0].contains("unknown tool `drop_database`"),
        "{details:?}"
    );
    assert!(details[1].contains("/text must be of type"), "{details:?}");
    assert!(details[2].contains("/priority"), "{details:?}");
    assert!(details[3].contains("not valid JSON"), "{details:?}");
}

#[tokio::test]
async fn rejected_calls_are_fed_back_as_tool_results() {
    let env = env().await;
    env.model.push(
        ScriptedTurn::calls()
            .call("drop_database", json!({}))
            .call("lookup", json!({ "key": "k", "extra": true })),
    );
    env.model
        .push(ScriptedTurn::calls().call("lookup", json!({ "key": "k" })));
    env.model.push(ScriptedTurn::text("found it"));
    let report = env
        .engine
        .start::<assistant>(alice(), (env.name.clone(), "find k".into()))
        .await
        .unwrap();
    assert_eq!(
        report.output.as_deref(),
        Some("found it"),
        "{:?}",
        report.state
    );
    assert_eq!(
        logged(&report.run_id),
        [("lookup".to_owned(), "k".to_owned())]
    );
    let requests = env.model.requests();
    let results = tool_results(&requests[1]);
    assert_eq!(results.len(), 2);
    let unknown = results[0]["content"].as_str().unwrap();
    assert!(
        unknown.contains("unknown tool `drop_database`: the tools are lookup, write_note, page"),
        "{unknown}"
    );
    let invalid = results[1]["content"].as_str().unwrap();
    assert!(invalid.contains("unknown field `extra`"), "{invalid}");
}

#[tokio::test]
async fn reaching_a_limit_ends_the_run_through_compensation() {
    let env = env().await;
    env.model.push(
        ScriptedTurn::calls().call("write_note", json!({ "text": "kept", "priority": "Low" })),
    );
    env.model.push(
        ScriptedTurn::calls()
            .call("nope", json!({}))
            .call("nope", json!({})),
    );
    let report = env
        .engine
        .start::<strict_assistant>(alice(), (env.name.clone(), "go".into()))
        .await
        .unwrap();
    assert_eq!(report.state, RunState::Compensated, "{:?}", report.state);
    let run = &report.run_id;
    assert_eq!(
        logged(run),
        [
            ("write_note".to_owned(), "kept".to_owned()),
            ("erase_note".to_owned(), "note-kept".to_owned()),
        ]
    );
}

#[tokio::test]
async fn the_turn_limit_stops_a_model_that_never_answers() {
    let env = env().await;
    for _ in 0..5 {
        env.model
            .push(ScriptedTurn::calls().call("lookup", json!({ "key": "again" })));
    }
    let report = env
        .engine
        .start::<strict_assistant>(alice(), (env.name.clone(), "loop".into()))
        .await
        .unwrap();
    assert!(
        matches!(report.state, RunState::Failed { .. }),
        "{:?}",
        report.state
    );
    assert_eq!(env.model.requests().len(), 3, "max_model_turns = 3");
}

#[tokio::test]
async fn model_http_faults_are_retried_within_bounds() {
    let env = env().await;
    env.model.fault(ModelFault::RateLimited {
        retry_after_secs: 0,
    });
    env.model.fault(ModelFault::ServerError);
    env.model.fault(ModelFault::MalformedJson);
    env.model.push(ScriptedTurn::text("made it"));
    let report = env
        .engine
        .start::<assistant>(alice(), (env.name.clone(), "hi".into()))
        .await
        .unwrap();
    assert_eq!(
        report.output.as_deref(),
        Some("made it"),
        "{:?}",
        report.state
    );
    assert_eq!(env.model.requests().len(), 4);
}

#[tokio::test]
async fn exhausted_model_retries_fail_the_run_through_compensation() {
    let retry = RetryPolicy {
        max_server_retries: 1,
        ..fast_retries()
    };
    let env = env_with(grants(true), retry).await;
    env.model.push(
        ScriptedTurn::calls().call("write_note", json!({ "text": "first", "priority": "Low" })),
    );
    env.model.fault(ModelFault::ServerError);
    env.model.fault(ModelFault::ServerError);
    env.model.push(ScriptedTurn::text("too late"));
    let report = env
        .engine
        .start::<assistant>(alice(), (env.name.clone(), "hi".into()))
        .await
        .unwrap();
    assert_eq!(report.state, RunState::Compensated, "{:?}", report.state);
    assert_eq!(env.model.requests().len(), 3);
    assert_eq!(env.model.remaining(), 1);
    let run = &report.run_id;
    assert_eq!(logged(run).last().unwrap().0, "erase_note");
    let journal = env.store.journal(run).await.unwrap();
    let Some(EntryResult::Ok { output, .. }) = &journal.last().unwrap().result else {
        panic!("{journal:?}")
    };
    assert!(
        output["response"]["Err"]
            .as_str()
            .unwrap()
            .contains("HTTP 500"),
        "{output}"
    );
}

#[tokio::test]
async fn a_crash_mid_turn_replays_the_journaled_turn_without_asking_the_model_again() {
    let env = env().await;
    let gate = Arc::new((Notify::new(), Notify::new()));
    let key = format!("slow-{}", env.name);
    GATES.lock().unwrap().insert(key.clone(), gate.clone());
    env.model.push(
        ScriptedTurn::calls()
            .call("write_note", json!({ "text": "once", "priority": "High" }))
            .call("lookup", json!({ "key": key }))
            .call("page", json!({ "who": "bob" })),
    );
    env.model.push(ScriptedTurn::text("after the crash"));
    let engine = env.engine.clone();
    let input = (env.name.clone(), "crash".to_owned());
    let task = tokio::spawn(async move { engine.start::<assistant>(alice(), input).await });
    tokio::time::timeout(Duration::from_secs(30), gate.0.notified())
        .await
        .expect("the slow lookup starts");
    task.abort();
    let _ = task.await;
    GATES.lock().unwrap().remove(&key);
    assert_eq!(env.model.requests().len(), 1);

    // A new process: a new engine on the same file, the same model endpoint.
    let store = Arc::new(SqliteJournal::open(&env.path).await.unwrap());
    let audit = Arc::new(SqliteAuditStore::open(&env.path).await.unwrap());
    let engine = Engine::new(store.clone(), audit, env.grants.clone());
    engine.register::<assistant>();
    // The aborted run is claimed until its drop's task has released it.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let recovered = recover_once_released(&engine, deadline).await;
    assert_eq!(recovered.len(), 1);
    let (run, state) = &recovered[0];
    assert!(matches!(state, Ok(RunState::Completed { .. })), "{state:?}");
    assert_eq!(
        env.model.requests().len(),
        2,
        "the journaled turn was replayed, only the next one asked the model"
    );
    let calls: Vec<String> = logged(run).into_iter().map(|c| c.0).collect();
    assert_eq!(
        calls,
        ["write_note", "lookup", "lookup", "page"],
        "the write is not redone; the interrupted read runs again; the rest in order"
    );
    // The second request carries the three results in the order of the calls.
    let results = tool_results(&env.model.requests()[1]);
    assert_eq!(results.len(), 3);
    assert_eq!(results[0]["content"], "\"note-once\"");
}
