//! MCP tasks (SEP-2663) with rmcp's own client: a client that declares the tasks extension
//! gets a task at once from `tools/call`; `tasks/get` follows the run (`working`,
//! `input_required` with the consent link or the approval form, `completed` with the chain's
//! output or a tool error); `tasks/update` carries the answers and the same run goes on;
//! `tasks/cancel` leaves the run where it stopped and the same call made again continues it;
//! another principal cannot see or touch the task.
//!
//! Over streamable HTTP (the demo, consent for Slack through the sandbox's authorize endpoint)
//! and over an in-process byte stream (the approval harness).

use std::time::Duration;

use chain_runtime::journal::{RunRecord, RunState};
use chain_runtime::mcp::McpServer;
use examples::mcp_demo::McpDemo;
use examples::urgent::{Urgent, escalate_urgently, open_urgent_issue};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CancelTaskParams, ClientCapabilities, ClientConfig,
    ElicitResult, ElicitationAction, ElicitationCapability, FormElicitationCapability,
    GetTaskParams, Implementation, ProtocolVersion, UpdateTaskParams, UrlElicitationCapability,
};
use rmcp::service::{ClientLifecycleMode, ClientServiceExt, RoleClient, RunningService};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::{ClientHandler, ServiceExt};
use serde_json::{Value, json};

/// A client that declares the tasks extension (and URL and form elicitation).
#[derive(Clone)]
struct TaskClient {
    protocol: ProtocolVersion,
}

impl ClientHandler for TaskClient {
    fn get_info(&self) -> ClientConfig {
        let mut caps = ClientCapabilities::builder().enable_tasks().build();
        caps.elicitation = Some(
            ElicitationCapability::new()
                .with_url(UrlElicitationCapability::new())
                .with_form(FormElicitationCapability::new()),
        );
        ClientConfig::new(caps, Implementation::from_build_env())
            .with_protocol_version(self.protocol.clone())
    }
}

type Client = RunningService<RoleClient, TaskClient>;

async fn http_client(demo: &McpDemo, subject: &str, protocol: ProtocolVersion) -> Client {
    let config = StreamableHttpClientTransportConfig::with_uri(demo.mcp_url())
        .auth_header(demo.token(subject, 600));
    let handler = TaskClient {
        protocol: protocol.clone(),
    };
    let transport = StreamableHttpClientTransport::from_config(config);
    if protocol == ProtocolVersion::V_2026_07_28 {
        let lifecycle = ClientLifecycleMode::Discover {
            preferred_versions: vec![ProtocolVersion::V_2026_07_28],
        };
        handler
            .serve_with_lifecycle(transport, lifecycle)
            .await
            .unwrap()
    } else {
        handler.serve(transport).await.unwrap()
    }
}

/// Calls `params` and returns the task id it answers with.
async fn call_as_task(client: &Client, params: CallToolRequestParams) -> String {
    match client.call_tool_once(params).await.unwrap() {
        CallToolResponse::Task(created) => {
            assert_eq!(created.task.status, rmcp::model::TaskStatus::Working);
            created.task.task_id
        }
        other => panic!("expected a task, got {other:?}"),
    }
}

/// `tasks/get` as JSON.
async fn task(client: &Client, id: &str) -> Value {
    let got = client.get_task(GetTaskParams::new(id)).await.unwrap();
    serde_json::to_value(&got.task).unwrap()
}

/// Polls the task until its status is not `working` (deadline 30 s).
async fn settled(client: &Client, id: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let t = task(client, id).await;
        if t["status"] != "working" {
            return t;
        }
        assert!(tokio::time::Instant::now() < deadline, "still working: {t}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Answers the input request under `key` of task `id`.
async fn answer(client: &Client, id: &str, key: &str, result: ElicitResult) {
    let responses = [(key.to_owned(), serde_json::to_value(result).unwrap())]
        .into_iter()
        .collect();
    client
        .update_task(UpdateTaskParams::new(id, responses))
        .await
        .unwrap();
}

/// The one input request of an `input_required` task: its key and its elicitation params.
fn input_request(task: &Value) -> (String, Value) {
    assert_eq!(task["status"], "input_required", "{task}");
    let requests = task["inputRequests"].as_object().unwrap();
    assert_eq!(requests.len(), 1, "{task}");
    let (key, request) = requests.iter().next().unwrap();
    assert_eq!(request["method"], "elicitation/create", "{request}");
    (key.clone(), request["params"].clone())
}

async fn demo_runs(demo: &McpDemo, principal: &str) -> Vec<RunRecord> {
    demo.demo
        .engine
        .list_runs()
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.principal_id == principal)
        .collect()
}

async fn consent_then_completion(protocol: ProtocolVersion) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let demo = McpDemo::start(&dir.path().join("mcp.db"), "127.0.0.1:0")
        .await
        .unwrap();
    let client = http_client(&demo, "alice", protocol.clone()).await;
    let mut params = CallToolRequestParams::new("escalate_deal");
    params.arguments = Some(demo.deal_arguments());
    let id = call_as_task(&client, params).await;

    // Preflight finds Slack unconnected: the task asks for consent with the link.
    let waiting = settled(&client, &id).await;
    let (key, request) = input_request(&waiting);
    assert_eq!(key, "consent-slack-0");
    assert_eq!(request["mode"], "url", "{request}");
    let url = request["url"].as_str().unwrap();
    assert!(url.starts_with(&demo.demo.sandbox.slack.urls().authorize));
    assert!(demo_runs(&demo, "alice").await.is_empty(), "no run yet");

    // Another principal cannot see, answer or cancel the task.
    let bob = http_client(&demo, "bob", protocol).await;
    let err = bob.get_task(GetTaskParams::new(&id)).await.unwrap_err();
    assert!(err.to_string().contains("unknown task"), "{err}");
    assert!(bob.cancel_task(CancelTaskParams::new(&id)).await.is_err());
    bob.cancel().await.unwrap();

    // The user opens the link (the sandbox redirects to the web server's callback, which
    // connects Slack) and the client answers; the run starts and completes.
    let page = reqwest::get(url).await.unwrap().text().await.unwrap();
    assert!(page.contains("Connected your"), "{page}");
    answer(
        &client,
        &id,
        &key,
        ElicitResult::new(ElicitationAction::Accept),
    )
    .await;
    let done = settled(&client, &id).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["result"]["isError"], false, "{done}");
    let output = done["result"]["structuredContent"]["result"]
        .as_str()
        .unwrap();
    assert!(output.starts_with("ESC-"), "{output}");
    let runs = demo_runs(&demo, "alice").await;
    assert_eq!(runs.len(), 1);
    assert!(matches!(runs[0].state, RunState::Completed { .. }));
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn a_task_asks_for_consent_then_completes_on_2025_11_25() {
    consent_then_completion(ProtocolVersion::V_2025_11_25).await;
}

#[tokio::test]
async fn a_task_asks_for_consent_then_completes_on_2026_07_28() {
    consent_then_completion(ProtocolVersion::V_2026_07_28).await;
}

struct Approvals {
    urgent: Urgent,
    client: Client,
    _dir: tempfile::TempDir,
}

async fn approvals() -> Approvals {
    let dir = tempfile::tempdir().unwrap();
    let urgent = Urgent::start(&dir.path().join("mcp-tasks.db"), |b| b)
        .await
        .unwrap();
    let server = McpServer::builder(
        urgent.runtime.engine.clone(),
        urgent.runtime.vault().unwrap().clone(),
    )
    .chain::<escalate_urgently>()
    .expose_step::<open_urgent_issue>()
    .principal("alice")
    .build()
    .unwrap();
    let (server_io, client_io) = tokio::io::duplex(1 << 16);
    tokio::spawn(async move {
        if let Ok(running) = server.serve(server_io).await {
            let _ = running.waiting().await;
        }
    });
    let client = TaskClient {
        protocol: ProtocolVersion::V_2025_11_25,
    }
    .serve(client_io)
    .await
    .unwrap();
    Approvals {
        urgent,
        client,
        _dir: dir,
    }
}

fn urgent_call(urgent: &Urgent) -> CallToolRequestParams {
    let mut params = CallToolRequestParams::new("escalate_urgently");
    params.arguments = json!({ "deal": urgent.deal() }).as_object().cloned();
    params
}

async fn urgent_runs(urgent: &Urgent) -> Vec<RunRecord> {
    urgent.runtime.engine.list_runs().await.unwrap()
}

fn approve(yes: bool) -> ElicitResult {
    ElicitResult::new(ElicitationAction::Accept).with_content(json!({ "approve": yes }))
}

#[tokio::test]
async fn a_task_asks_for_approval_and_a_cancelled_task_leaves_the_run_to_the_next_call() {
    let a = approvals().await;
    let id = call_as_task(&a.client, urgent_call(&a.urgent)).await;
    let waiting = settled(&a.client, &id).await;
    let (key, form) = input_request(&waiting);
    assert!(key.starts_with("approval-"), "{key}");
    assert_eq!(
        form["requestedSchema"]["properties"]["approve"]["type"],
        "boolean"
    );
    let runs = urgent_runs(&a.urgent).await;
    assert_eq!(runs.len(), 1);
    assert!(matches!(runs[0].state, RunState::AwaitingApproval(_)));
    let run_id = runs[0].run_id.clone();

    // Cancelled while waiting for the decision: the task is cancelled at once, the run is
    // not touched (still waiting for the approval, nothing undone).
    a.client
        .cancel_task(CancelTaskParams::new(&id))
        .await
        .unwrap();
    let cancelled = settled(&a.client, &id).await;
    assert_eq!(cancelled["status"], "cancelled", "{cancelled}");
    let run = a.urgent.runtime.engine.run_status(&run_id).await.unwrap();
    assert!(
        matches!(run.state, RunState::AwaitingApproval(_)),
        "{:?}",
        run.state
    );

    // The same call made again continues that run: asked again, approved, completed.
    let id = call_as_task(&a.client, urgent_call(&a.urgent)).await;
    let (key, _) = input_request(&settled(&a.client, &id).await);
    answer(&a.client, &id, &key, approve(true)).await;
    let done = settled(&a.client, &id).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["result"]["isError"], false, "{done}");
    let runs = urgent_runs(&a.urgent).await;
    assert_eq!(runs.len(), 1, "one run from first call to last");
    assert!(matches!(runs[0].state, RunState::Completed { .. }));
    a.client.cancel().await.unwrap();
}

#[tokio::test]
async fn a_denied_approval_completes_the_task_with_a_tool_error() {
    let a = approvals().await;
    let id = call_as_task(&a.client, urgent_call(&a.urgent)).await;
    let (key, _) = input_request(&settled(&a.client, &id).await);
    answer(&a.client, &id, &key, approve(false)).await;
    let done = settled(&a.client, &id).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["result"]["isError"], true, "{done}");
    let text = done["result"]["content"][0]["text"].as_str().unwrap();
    assert!(text.contains("undone"), "{text}");
    let runs = urgent_runs(&a.urgent).await;
    assert!(matches!(runs[0].state, RunState::Compensated));
    // The stage change was undone at the Salesforce emulator.
    assert_ne!(a.urgent.stage(), examples::escalate::ESCALATED);
    a.client.cancel().await.unwrap();
}

#[tokio::test]
async fn an_exposed_step_that_needs_approval_runs_as_a_task() {
    let a = approvals().await;
    let deal = a.urgent.deal();
    let mut params = CallToolRequestParams::new("open_urgent_issue");
    params.arguments = json!({
        "site": deal.sites.jira,
        "project": deal.project,
        "summary": "page on-call now",
    })
    .as_object()
    .cloned();
    let id = call_as_task(&a.client, params).await;
    let (key, form) = input_request(&settled(&a.client, &id).await);
    assert!(key.starts_with("approval-"), "{key}");
    let message = form["message"].as_str().unwrap();
    assert!(message.contains("page on-call now"), "{message}");
    answer(&a.client, &id, &key, approve(true)).await;
    let done = settled(&a.client, &id).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["result"]["isError"], false, "{done}");
    let issue = &done["result"]["structuredContent"]["result"];
    assert!(
        issue["key"].as_str().unwrap().starts_with("ESC-"),
        "{issue}"
    );
    let runs = urgent_runs(&a.urgent).await;
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].chain, "examples::urgent::open_urgent_issue");
    assert!(matches!(runs[0].state, RunState::Completed { .. }));
    a.client.cancel().await.unwrap();
}

#[tokio::test]
async fn a_run_that_suspends_midway_is_continued_by_its_task() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let demo = McpDemo::start(&dir.path().join("mcp.db"), "127.0.0.1:0")
        .await
        .unwrap();
    demo.demo.connect("slack").await.unwrap();
    demo.demo.sandbox.slack.revoke_grant(&demo.demo.subjects[2]);
    let client = http_client(&demo, "alice", ProtocolVersion::V_2026_07_28).await;
    let mut params = CallToolRequestParams::new("escalate_deal");
    params.arguments = Some(demo.deal_arguments());
    let id = call_as_task(&client, params).await;
    let waiting = settled(&client, &id).await;
    let (key, request) = input_request(&waiting);
    assert_eq!(key, "consent-slack-0");
    let runs = demo_runs(&demo, "alice").await;
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].state.kind(), "suspended", "Slack refused mid-run");
    assert!(
        waiting["statusMessage"]
            .as_str()
            .unwrap()
            .contains(&runs[0].run_id),
        "{waiting}"
    );
    let jira_writes = demo.demo.sandbox.jira.writes().len();
    let url = request["url"].as_str().unwrap();
    reqwest::get(url).await.unwrap().text().await.unwrap();
    answer(
        &client,
        &id,
        &key,
        ElicitResult::new(ElicitationAction::Accept),
    )
    .await;
    let done = settled(&client, &id).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["result"]["isError"], false, "{done}");
    let runs = demo_runs(&demo, "alice").await;
    assert_eq!(runs.len(), 1, "the same run");
    assert!(matches!(runs[0].state, RunState::Completed { .. }));
    assert_eq!(
        demo.demo.sandbox.jira.writes().len(),
        jira_writes,
        "the Jira issue was not created twice"
    );
    client.cancel().await.unwrap();
}
