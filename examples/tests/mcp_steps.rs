//! Single steps exposed as MCP tools of their own (`McpServerBuilder::expose_step`), over
//! streamable HTTP with rmcp's own client against the sandbox emulators: the tool carries the
//! step's name, doc comment and argument schema; a call runs the step durably for the session's
//! principal (one run, journaled and audited); a step whose account is not connected asks for
//! consent first and the retry continues the same run; arguments that do not fit start nothing.

use std::sync::{Arc, Mutex};

use chain_runtime::audit::AuditEvent;
use chain_runtime::journal::{RunRecord, RunState};
use chain_runtime::mcp::McpServer;
use examples::escalate::{Issue, announce, escalate_deal, load_stage};
use examples::mcp_demo::{McpDemo, McpDemoOptions};
use rmcp::model::{
    CallToolRequestParams, ClientCapabilities, ClientConfig, ElicitRequestParams, ElicitResult,
    ElicitationAction, ElicitationCapability, Implementation, ProtocolVersion,
    UrlElicitationCapability,
};
use rmcp::service::{ClientLifecycleMode, ClientServiceExt, RequestContext, RoleClient};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::{ClientHandler, ErrorData};
use serde_json::{Value, json};

/// A client that "opens" URL elicitations by following them (the sandbox's authorize endpoint
/// redirects to the web server's OAuth callback).
#[derive(Clone, Default)]
struct Browser {
    opened: Arc<Mutex<Vec<String>>>,
}

impl ClientHandler for Browser {
    fn get_info(&self) -> ClientConfig {
        let mut caps = ClientCapabilities::default();
        caps.elicitation =
            Some(ElicitationCapability::new().with_url(UrlElicitationCapability::new()));
        ClientConfig::new(caps, Implementation::from_build_env())
            .with_protocol_version(ProtocolVersion::V_2026_07_28)
    }

    async fn create_elicitation(
        &self,
        request: ElicitRequestParams,
        _context: RequestContext<RoleClient>,
    ) -> Result<ElicitResult, ErrorData> {
        let ElicitRequestParams::UrlElicitationParams { url, .. } = request else {
            return Ok(ElicitResult::new(ElicitationAction::Decline));
        };
        self.opened.lock().unwrap().push(url.clone());
        let page = reqwest::get(&url).await.unwrap().text().await.unwrap();
        assert!(page.contains("Connected your"), "{page}");
        Ok(ElicitResult::new(ElicitationAction::Accept))
    }
}

async fn start() -> (tempfile::TempDir, McpDemo) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let options = McpDemoOptions {
        tools: Some(Box::new(|b| {
            b.expose_step::<load_stage>().expose_step::<announce>()
        })),
        ..McpDemoOptions::default()
    };
    let demo = McpDemo::start_with(&dir.path().join("mcp.db"), "127.0.0.1:0", options)
        .await
        .unwrap();
    (dir, demo)
}

async fn client(
    demo: &McpDemo,
    subject: &str,
    browser: Browser,
) -> rmcp::service::RunningService<RoleClient, Browser> {
    let config = StreamableHttpClientTransportConfig::with_uri(demo.mcp_url())
        .auth_header(demo.token(subject, 600));
    let lifecycle = ClientLifecycleMode::Discover {
        preferred_versions: vec![ProtocolVersion::V_2026_07_28],
    };
    browser
        .serve_with_lifecycle(
            StreamableHttpClientTransport::from_config(config),
            lifecycle,
        )
        .await
        .expect("connect")
}

fn params(tool: &'static str, arguments: Value) -> CallToolRequestParams {
    let mut params = CallToolRequestParams::new(tool);
    params.arguments = arguments.as_object().cloned();
    params
}

async fn runs(demo: &McpDemo, principal: &str, chain: &str) -> Vec<RunRecord> {
    demo.demo
        .engine
        .list_runs()
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.principal_id == principal && r.chain.ends_with(chain))
        .collect()
}

async fn steps_audited(demo: &McpDemo, run_id: &str) -> Vec<(String, Option<String>)> {
    demo.demo
        .audit
        .run_history(run_id)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|r| match r.event {
            AuditEvent::StepOutcome {
                step,
                failure_class,
                ..
            } => Some((step, failure_class)),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn an_exposed_step_is_a_tool_that_runs_durably_for_the_session_principal() {
    let (_dir, demo) = start().await;
    let browser = Browser::default();
    let client = client(&demo, "alice", browser.clone()).await;
    let tools = client.list_all_tools().await.unwrap();
    let names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
    assert_eq!(
        names,
        [
            "escalate_deal",
            "escalate_and_note",
            "load_stage",
            "announce"
        ]
    );
    let tool = tools.iter().find(|t| t.name == "announce").unwrap();
    assert_eq!(
        tool.description.as_deref(),
        Some("Announces the escalation on Slack.")
    );
    assert_eq!(
        tool.input_schema.get("required"),
        Some(&json!(["channel", "issue", "site"]))
    );
    assert!(tool.input_schema["properties"]["issue"].is_object());
    assert!(tool.output_schema.is_some());

    // A read on a connected account: one run, for alice, journaled and audited.
    let deal = demo.demo.deal();
    let result = client
        .call_tool(params(
            "load_stage",
            json!({"site": deal.sites.salesforce, "opportunity": deal.opportunity}),
        ))
        .await
        .unwrap();
    assert_eq!(result.is_error, Some(false), "{result:?}");
    let stage = result.structured_content.unwrap()["result"].clone();
    assert!(stage.is_string(), "{stage}");
    let loaded = runs(&demo, "alice", "::load_stage").await;
    assert_eq!(loaded.len(), 1);
    assert_eq!(loaded[0].chain, "examples::escalate::load_stage");
    assert!(
        matches!(&loaded[0].state, RunState::Completed { output } if *output == stage),
        "{:?}",
        loaded[0].state
    );
    assert_eq!(
        steps_audited(&demo, &loaded[0].run_id).await,
        [("load_stage".to_owned(), None)]
    );

    // A write on an account alice has not connected: preflight on the step's own scopes asks
    // for Slack consent; rmcp's client follows the link and retries; the retry runs the step.
    let before = demo.demo.sandbox.slack.message_count();
    let issue = Issue {
        site: deal.sites.jira.clone(),
        key: "ESC-7".into(),
    };
    let arguments = json!({"site": deal.sites.slack, "channel": deal.channel, "issue": issue});
    let result = client
        .call_tool(params("announce", arguments.clone()))
        .await
        .unwrap();
    assert_eq!(result.is_error, Some(false), "{result:?}");
    let posted = result.structured_content.unwrap()["result"].clone();
    let opened = browser.opened.lock().unwrap().clone();
    assert_eq!(opened.len(), 1, "one consent link, for slack");
    assert!(opened[0].starts_with(&demo.demo.sandbox.slack.urls().authorize));
    assert_eq!(demo.demo.sandbox.slack.message_count(), before + 1);
    let text = demo
        .demo
        .sandbox
        .slack
        .message(
            posted["channel"].as_str().unwrap(),
            posted["ts"].as_str().unwrap(),
        )
        .unwrap();
    assert!(text.contains("ESC-7"), "{text}");
    let announced = runs(&demo, "alice", "::announce").await;
    assert_eq!(announced.len(), 1, "the retry ran the one run");
    assert_eq!(
        steps_audited(&demo, &announced[0].run_id).await,
        [("announce".to_owned(), None)]
    );

    // Arguments that do not fit the step's parameters: a tool error, nothing started.
    let result = client
        .call_tool(params(
            "announce",
            json!({"site": deal.sites.slack, "channel": deal.channel, "issue": 5}),
        ))
        .await
        .unwrap();
    assert_eq!(result.is_error, Some(true));
    assert_eq!(runs(&demo, "alice", "::announce").await.len(), 1);
    client.cancel().await.unwrap();

    // The principal is the session's: bob's call runs as bob (who has no Salesforce account,
    // so it stops for consent before any run exists).
    let bob = client_without_browser(&demo).await;
    let answer = bob
        .call_tool_once(params(
            "load_stage",
            json!({"site": deal.sites.salesforce, "opportunity": deal.opportunity}),
        ))
        .await
        .unwrap();
    assert!(
        matches!(answer, rmcp::model::CallToolResponse::InputRequired(_)),
        "{answer:?}"
    );
    assert!(runs(&demo, "bob", "::load_stage").await.is_empty());
    assert_eq!(runs(&demo, "alice", "::load_stage").await.len(), 1);
    bob.cancel().await.unwrap();
}

async fn client_without_browser(
    demo: &McpDemo,
) -> rmcp::service::RunningService<RoleClient, Browser> {
    client(demo, "bob", Browser::default()).await
}

#[tokio::test]
async fn two_tools_of_one_name_are_refused() {
    let (_dir, demo) = start().await;
    let built = McpServer::builder(demo.demo.engine.clone(), demo.demo.vault.clone())
        .chain::<escalate_deal>()
        .expose_step::<load_stage>()
        .expose_step::<load_stage>()
        .build();
    let err = built.unwrap_err().to_string();
    assert!(err.contains("`load_stage`"), "{err}");
}
