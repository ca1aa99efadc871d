//! Approval through MCP form elicitation, with rmcp's own client over an in-process byte
//! stream: the MCP caller is alice, the run's principal, so a call that stops at
//! `open_urgent_issue` (approval "pages the on-call team") asks her in a form. On protocol
//! 2025-11-25 the server sends `elicitation/create` during the call; on 2026-07-28 it answers
//! `input_required` and the client's retry (rmcp drives it) carries the answer. Approving
//! completes the same run; declining denies it (the stage change is undone at the Salesforce
//! emulator); cancelling leaves it pending, and the retry continues that run.

use std::sync::{Arc, Mutex};

use chain_runtime::audit::AuditEvent;
use chain_runtime::journal::{RunRecord, RunState};
use chain_runtime::mcp::McpServer;
use examples::escalate::ESCALATED;
use examples::urgent::{REASON, Urgent, escalate_urgently};
use rmcp::model::{
    CallToolRequestParams, ClientCapabilities, ClientConfig, ElicitRequestParams, ElicitResult,
    ElicitationAction, ElicitationCapability, FormElicitationCapability, Implementation,
    ProtocolVersion,
};
use rmcp::service::{ClientLifecycleMode, ClientServiceExt, RequestContext, RoleClient};
use rmcp::{ClientHandler, ErrorData, ServiceExt};
use serde_json::json;

/// A client whose user answers approval forms with `answer` (`None`: dismisses the form).
#[derive(Clone)]
struct Approver {
    answer: Arc<Mutex<Option<bool>>>,
    asked: Arc<Mutex<Vec<String>>>,
    protocol: ProtocolVersion,
}

impl Approver {
    fn new(protocol: ProtocolVersion, answer: Option<bool>) -> Self {
        Self {
            answer: Arc::new(Mutex::new(answer)),
            asked: Arc::default(),
            protocol,
        }
    }
}

impl ClientHandler for Approver {
    fn get_info(&self) -> ClientConfig {
        let mut caps = ClientCapabilities::default();
        caps.elicitation =
            Some(ElicitationCapability::new().with_form(FormElicitationCapability::new()));
        ClientConfig::new(caps, Implementation::from_build_env())
            .with_protocol_version(self.protocol.clone())
    }

    async fn create_elicitation(
        &self,
        request: ElicitRequestParams,
        _context: RequestContext<RoleClient>,
    ) -> Result<ElicitResult, ErrorData> {
        let ElicitRequestParams::FormElicitationParams {
            message,
            requested_schema,
            ..
        } = request
        else {
            return Ok(ElicitResult::new(ElicitationAction::Decline));
        };
        assert!(
            serde_json::to_value(&requested_schema).unwrap()["properties"]["approve"]["type"]
                == "boolean"
        );
        self.asked.lock().unwrap().push(message);
        Ok(match *self.answer.lock().unwrap() {
            Some(approve) => ElicitResult::new(ElicitationAction::Accept)
                .with_content(json!({ "approve": approve })),
            None => ElicitResult::new(ElicitationAction::Cancel),
        })
    }
}

struct Setup {
    urgent: Urgent,
    client: rmcp::service::RunningService<RoleClient, Approver>,
    approver: Approver,
    _dir: tempfile::TempDir,
}

async fn setup(protocol: ProtocolVersion, answer: Option<bool>) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let urgent = Urgent::start(&dir.path().join("mcp-approvals.db"), |b| b)
        .await
        .unwrap();
    let server = McpServer::builder(
        urgent.runtime.engine.clone(),
        urgent.runtime.vault().unwrap().clone(),
    )
    .chain::<escalate_urgently>()
    .principal("alice")
    .build()
    .unwrap();
    let (server_io, client_io) = tokio::io::duplex(1 << 16);
    tokio::spawn(async move {
        if let Ok(running) = server.serve(server_io).await {
            let _ = running.waiting().await;
        }
    });
    let approver = Approver::new(protocol.clone(), answer);
    let client = if protocol == ProtocolVersion::V_2026_07_28 {
        let lifecycle = ClientLifecycleMode::Discover {
            preferred_versions: vec![ProtocolVersion::V_2026_07_28],
        };
        approver
            .clone()
            .serve_with_lifecycle(client_io, lifecycle)
            .await
            .unwrap()
    } else {
        approver.clone().serve(client_io).await.unwrap()
    };
    Setup {
        urgent,
        client,
        approver,
        _dir: dir,
    }
}

fn call(urgent: &Urgent) -> CallToolRequestParams {
    let mut params = CallToolRequestParams::new("escalate_urgently");
    params.arguments = serde_json::to_value(json!({ "deal": urgent.deal() }))
        .unwrap()
        .as_object()
        .cloned();
    params
}

async fn runs(urgent: &Urgent) -> Vec<RunRecord> {
    urgent.runtime.engine.list_runs().await.unwrap()
}

async fn decisions(urgent: &Urgent, run_id: &str) -> Vec<(String, String)> {
    urgent
        .runtime
        .audit
        .run_history(run_id)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|r| match r.event {
            AuditEvent::ApprovalDecided {
                decision,
                decided_by,
                ..
            } => Some((decision, decided_by)),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn the_caller_approves_in_a_form_during_the_call_on_2025_11_25() {
    let s = setup(ProtocolVersion::V_2025_11_25, Some(true)).await;
    let tools = s.client.list_all_tools().await.unwrap();
    let description = tools[0].description.clone().unwrap_or_default();
    assert!(
        description.contains("`open_urgent_issue` (pages the on-call team)"),
        "{description}"
    );
    let result = s.client.call_tool(call(&s.urgent)).await.unwrap();
    assert_eq!(result.is_error, Some(false), "{result:?}");
    let key = result.structured_content.unwrap()["result"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(s.urgent.sandbox.jira.issue(&key).is_some());
    let asked = s.approver.asked.lock().unwrap().clone();
    assert_eq!(asked.len(), 1);
    assert!(
        asked[0].contains("open_urgent_issue") && asked[0].contains(REASON),
        "{asked:?}"
    );
    assert!(asked[0].contains("page on-call"), "the arguments are shown");
    let all = runs(&s.urgent).await;
    assert_eq!(all.len(), 1);
    assert_eq!(
        decisions(&s.urgent, &all[0].run_id).await,
        [("approved".to_owned(), "alice".to_owned())]
    );
    s.client.cancel().await.unwrap();
}

#[tokio::test]
async fn the_caller_approves_through_input_required_and_the_retry_continues_the_run_on_2026_07_28()
{
    let s = setup(ProtocolVersion::V_2026_07_28, Some(true)).await;
    let result = s.client.call_tool(call(&s.urgent)).await.unwrap();
    assert_eq!(result.is_error, Some(false), "{result:?}");
    assert_eq!(s.approver.asked.lock().unwrap().len(), 1);
    let all = runs(&s.urgent).await;
    assert_eq!(all.len(), 1, "the retry continued the same run");
    assert!(matches!(all[0].state, RunState::Completed { .. }));
    assert_eq!(s.urgent.sandbox.jira.issue_keys().len(), 1);
    s.client.cancel().await.unwrap();
}

#[tokio::test]
async fn declining_denies_and_the_run_undoes_its_write() {
    let s = setup(ProtocolVersion::V_2025_11_25, Some(false)).await;
    let result = s.client.call_tool(call(&s.urgent)).await.unwrap();
    assert_eq!(result.is_error, Some(true), "{result:?}");
    let text = serde_json::to_string(&result.content).unwrap();
    assert!(text.contains("undone"), "{text}");
    assert_eq!(s.urgent.stage(), "Negotiation");
    assert!(s.urgent.sandbox.jira.issue_keys().is_empty());
    let all = runs(&s.urgent).await;
    assert_eq!(all[0].state, RunState::Compensated);
    assert_eq!(
        decisions(&s.urgent, &all[0].run_id).await,
        [("denied".to_owned(), "alice".to_owned())]
    );
    s.client.cancel().await.unwrap();
}

#[tokio::test]
async fn dismissing_the_form_keeps_the_run_waiting_and_the_retry_continues_it() {
    let s = setup(ProtocolVersion::V_2025_11_25, None).await;
    let result = s.client.call_tool(call(&s.urgent)).await.unwrap();
    assert_eq!(result.is_error, Some(true), "{result:?}");
    let text = serde_json::to_string(&result.content).unwrap();
    assert!(text.contains("waits for your approval"), "{text}");
    assert_eq!(s.urgent.stage(), ESCALATED);
    let first = runs(&s.urgent).await;
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].state.kind(), "awaiting_approval");

    *s.approver.answer.lock().unwrap() = Some(true);
    let result = s.client.call_tool(call(&s.urgent)).await.unwrap();
    assert_eq!(result.is_error, Some(false), "{result:?}");
    let all = runs(&s.urgent).await;
    assert_eq!(all.len(), 1, "the retry continued the waiting run");
    assert!(matches!(all[0].state, RunState::Completed { .. }));
    assert_eq!(s.approver.asked.lock().unwrap().len(), 2);
    s.client.cancel().await.unwrap();
}
