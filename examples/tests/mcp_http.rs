//! The MCP server end to end over streamable HTTP with rmcp's own client: tools/list, a call
//! that needs consent (URL elicitation; the link followed through the sandbox provider's real
//! authorize endpoint to the web server's callback; the retry continues the same run), a run
//! that suspends mid-way and resumes on retry, a retry by another principal refused, the
//! 2025-11-25 error form, bad and expired bearer tokens refused with the right challenge, and
//! malformed requests answered with clear errors.

use std::sync::{Arc, Mutex};

use chain_runtime::journal::RunState;
use examples::mcp_demo::McpDemo;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, ClientCapabilities, ClientConfig, ElicitRequestParams,
    ElicitResult, ElicitationAction, ElicitationCapability, Implementation, ProtocolVersion,
    UrlElicitationCapability,
};
use rmcp::service::{
    ClientLifecycleMode, ClientServiceExt, RequestContext, RoleClient, RunningService,
};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::{ClientHandler, ErrorData, ServiceExt};

/// A client that "opens" URL elicitations by following them with an HTTP client (the
/// sandbox's authorize endpoint redirects to the web server's OAuth callback).
#[derive(Clone)]
struct Browser {
    opened: Arc<Mutex<Vec<String>>>,
    progress: Arc<Mutex<Vec<String>>>,
    protocol: ProtocolVersion,
}

impl Browser {
    fn new(protocol: ProtocolVersion) -> Self {
        Self {
            opened: Arc::default(),
            progress: Arc::default(),
            protocol,
        }
    }
}

async fn follow(url: &str) -> String {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let response = reqwest::get(url).await.expect("follow the consent link");
    assert!(
        response.status().is_success(),
        "callback page: {}",
        response.status()
    );
    response.text().await.unwrap()
}

impl ClientHandler for Browser {
    fn get_info(&self) -> ClientConfig {
        let mut caps = ClientCapabilities::default();
        caps.elicitation =
            Some(ElicitationCapability::new().with_url(UrlElicitationCapability::new()));
        ClientConfig::new(caps, Implementation::from_build_env())
            .with_protocol_version(self.protocol.clone())
    }

    async fn on_progress(
        &self,
        params: rmcp::model::ProgressNotificationParam,
        _context: rmcp::service::NotificationContext<RoleClient>,
    ) {
        self.progress
            .lock()
            .unwrap()
            .push(params.message.unwrap_or_default());
    }

    async fn create_elicitation(
        &self,
        request: ElicitRequestParams,
        _context: RequestContext<RoleClient>,
    ) -> Result<ElicitResult, ErrorData> {
        match request {
            ElicitRequestParams::UrlElicitationParams { url, .. } => {
                self.opened.lock().unwrap().push(url.clone());
                let page = follow(&url).await;
                assert!(page.contains("Connected your"), "{page}");
                Ok(ElicitResult::new(ElicitationAction::Accept))
            }
            _ => Ok(ElicitResult::new(ElicitationAction::Decline)),
        }
    }
}

async fn client(
    demo: &McpDemo,
    subject: &str,
    browser: Browser,
) -> RunningService<RoleClient, Browser> {
    let config = StreamableHttpClientTransportConfig::with_uri(demo.mcp_url())
        .auth_header(demo.token(subject, 600));
    let transport = StreamableHttpClientTransport::from_config(config);
    if browser.protocol == ProtocolVersion::V_2026_07_28 {
        // The 2026-07-28 lifecycle: `server/discover`, no initialize.
        let lifecycle = ClientLifecycleMode::Discover {
            preferred_versions: vec![ProtocolVersion::V_2026_07_28],
        };
        browser
            .serve_with_lifecycle(transport, lifecycle)
            .await
            .expect("connect")
    } else {
        browser.serve(transport).await.expect("connect")
    }
}

fn call(demo: &McpDemo) -> CallToolRequestParams {
    let mut params = CallToolRequestParams::new("escalate_deal");
    params.arguments = Some(demo.deal_arguments());
    params
}

async fn start() -> (tempfile::TempDir, McpDemo) {
    let dir = tempfile::tempdir().unwrap();
    let demo = McpDemo::start(&dir.path().join("mcp.db"), "127.0.0.1:0")
        .await
        .unwrap();
    (dir, demo)
}

async fn runs_of(demo: &McpDemo, principal: &str) -> Vec<chain_runtime::journal::RunRecord> {
    demo.demo
        .engine
        .list_runs()
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.principal_id == principal)
        .collect()
}

#[tokio::test]
async fn lists_the_chains_as_tools() {
    let (_dir, demo) = start().await;
    let client = client(&demo, "alice", Browser::new(ProtocolVersion::LATEST)).await;
    let tools = client.list_all_tools().await.unwrap();
    let names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
    assert_eq!(names, ["escalate_deal", "escalate_and_note"]);
    let tool = &tools[0];
    // The generated definition: the chain's doc comment and the JSON Schema of its inputs,
    // named after its parameters.
    assert_eq!(
        tool.description.as_deref(),
        Some("Escalates a deal across Salesforce, Jira and Slack.")
    );
    assert_eq!(
        tool.input_schema.get("type"),
        Some(&serde_json::json!("object"))
    );
    assert_eq!(
        tool.input_schema.get("required"),
        Some(&serde_json::json!(["deal"]))
    );
    assert!(tool.input_schema["properties"]["deal"].is_object());
    assert!(tool.output_schema.is_some());
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn consent_needed_then_the_retry_continues_the_same_call() {
    let (_dir, demo) = start().await;
    let browser = Browser::new(ProtocolVersion::LATEST);
    let client = client(&demo, "alice", browser.clone()).await;
    // rmcp's client drives the input-required round itself: it "opens" the link (our
    // Browser follows it through the sandbox's authorize endpoint to the callback) and
    // retries with the sealed request state.
    let mut params = call(&demo);
    let mut meta = rmcp::model::RequestMetaObject::default();
    meta.set_progress_token(rmcp::model::ProgressToken(
        rmcp::model::NumberOrString::Number(7),
    ));
    params.meta = Some(meta);
    let result = client.call_tool(params).await.unwrap();
    assert_eq!(result.is_error, Some(false), "{result:?}");
    let output = result.structured_content.unwrap();
    assert!(
        output["result"].as_str().unwrap().starts_with("ESC-"),
        "{output}"
    );
    let opened = browser.opened.lock().unwrap().clone();
    assert_eq!(opened.len(), 1, "one consent link, for slack");
    assert!(opened[0].starts_with(&demo.demo.sandbox.slack.urls().authorize));
    // Progress notifications: the first round stopped before a run (preflight), the retry
    // ran it to completion.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while !browser
        .progress
        .lock()
        .unwrap()
        .iter()
        .any(|m| m == "run completed")
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "progress: {:?}",
            browser.progress.lock().unwrap()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(
        browser
            .progress
            .lock()
            .unwrap()
            .iter()
            .any(|m| m == "run started")
    );
    let runs = runs_of(&demo, "alice").await;
    assert_eq!(runs.len(), 1, "the retry did not start a second run");
    assert!(matches!(runs[0].state, RunState::Completed { .. }));
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn a_run_that_suspends_midway_resumes_on_retry() {
    let (_dir, demo) = start().await;
    demo.demo.connect("slack").await.unwrap();
    demo.demo.sandbox.slack.revoke_grant(&demo.demo.subjects[2]);
    let browser = Browser::new(ProtocolVersion::LATEST);
    let client = client(&demo, "alice", browser.clone()).await;
    let first = client.call_tool_once(call(&demo)).await.unwrap();
    let CallToolResponse::InputRequired(input) = first else {
        panic!("expected input_required, got {first:?}");
    };
    let runs = runs_of(&demo, "alice").await;
    assert_eq!(runs.len(), 1);
    assert_eq!(
        runs[0].state.kind(),
        "suspended",
        "Salesforce and Jira written, Slack refused"
    );
    let jira_writes = demo.demo.sandbox.jira.writes().len();
    // Follow the link, then retry with the request state.
    let requests = input.input_requests.unwrap();
    assert_eq!(requests.len(), 1);
    let url = serde_json::to_value(requests.values().next().unwrap()).unwrap()["params"]["url"]
        .as_str()
        .unwrap()
        .to_owned();
    let page = follow(&url).await;
    assert!(page.contains("resumed, now completed"), "{page}");
    let mut retry = call(&demo);
    retry.request_state = input.request_state.clone();
    let result = client.call_tool(retry).await.unwrap();
    assert_eq!(result.is_error, Some(false), "{result:?}");
    let runs = runs_of(&demo, "alice").await;
    assert_eq!(runs.len(), 1, "same run");
    assert!(matches!(runs[0].state, RunState::Completed { .. }));
    assert_eq!(
        demo.demo.sandbox.jira.writes().len(),
        jira_writes,
        "the Jira issue was not created twice"
    );
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn a_retry_by_another_principal_is_refused() {
    let (_dir, demo) = start().await;
    let alice = client(&demo, "alice", Browser::new(ProtocolVersion::LATEST)).await;
    let CallToolResponse::InputRequired(input) = alice.call_tool_once(call(&demo)).await.unwrap()
    else {
        panic!("expected input_required");
    };
    let bob = client(&demo, "bob", Browser::new(ProtocolVersion::LATEST)).await;
    let mut retry = call(&demo);
    retry.request_state = input.request_state.clone();
    let err = bob.call_tool_once(retry).await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains("belongs to another principal"), "{text}");
    // A tampered state is refused the same way.
    let mut tampered = call(&demo);
    tampered.request_state = input.request_state.map(|s| format!("{s}x"));
    let err = alice.call_tool_once(tampered).await.unwrap_err();
    assert!(
        err.to_string().contains("request state is invalid"),
        "{err}"
    );
    assert!(runs_of(&demo, "bob").await.is_empty());
    alice.cancel().await.unwrap();
    bob.cancel().await.unwrap();
}

#[tokio::test]
async fn clients_of_2025_11_25_get_the_url_elicitation_error_and_their_retry_continues() {
    let (_dir, demo) = start().await;
    let client = client(&demo, "alice", Browser::new(ProtocolVersion::V_2025_11_25)).await;
    let err = client.call_tool_once(call(&demo)).await.unwrap_err();
    let rmcp::service::ServiceError::McpError(data) = err else {
        panic!("expected a JSON-RPC error, got {err:?}");
    };
    assert_eq!(data.code.0, chain_runtime::mcp::URL_ELICITATION_REQUIRED);
    let elicitation = &data.data.as_ref().unwrap()["elicitations"][0];
    assert_eq!(elicitation["mode"], "url");
    follow(elicitation["url"].as_str().unwrap()).await;
    // The 2025-11-25 client retries the same call without a request state.
    let result = client.call_tool(call(&demo)).await.unwrap();
    assert_eq!(result.is_error, Some(false), "{result:?}");
    assert_eq!(runs_of(&demo, "alice").await.len(), 1);
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn bad_input_is_answered_with_clear_errors() {
    let (_dir, demo) = start().await;
    demo.demo.connect("slack").await.unwrap();
    let client = client(&demo, "alice", Browser::new(ProtocolVersion::LATEST)).await;
    let err = client
        .call_tool_once(CallToolRequestParams::new("no_such_tool"))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("unknown tool `no_such_tool`"),
        "{err}"
    );
    // Arguments that do not fit the chain: a tool error, and no run.
    let mut bad = CallToolRequestParams::new("escalate_deal");
    bad.arguments = Some(
        serde_json::json!({"deal": {"opportunity": 7}})
            .as_object()
            .unwrap()
            .clone(),
    );
    let result = client.call_tool(bad).await.unwrap();
    assert_eq!(result.is_error, Some(true));
    let text = serde_json::to_string(&result.content).unwrap();
    assert!(text.contains("do not fit the chain"), "{text}");
    // Oversized arguments.
    let mut big = CallToolRequestParams::new("escalate_deal");
    big.arguments = Some(
        serde_json::json!({"deal": "x".repeat(300 * 1024)})
            .as_object()
            .unwrap()
            .clone(),
    );
    let err = client.call_tool_once(big).await.unwrap_err();
    assert!(err.to_string().contains("bytes"), "{err}");
    assert!(runs_of(&demo, "alice").await.is_empty(), "nothing started");
    // The server still serves after all that.
    let result = client.call_tool(call(&demo)).await.unwrap();
    assert_eq!(result.is_error, Some(false));
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn bearer_tokens_are_checked_with_the_right_challenge() {
    let (_dir, demo) = start().await;
    let http = reqwest::Client::new();
    let body = serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "raw", "version": "1"}}});
    let post = |token: Option<String>| {
        let mut req = http
            .post(demo.mcp_url())
            .header("accept", "application/json, text/event-stream")
            .json(&body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send()
    };
    let metadata_url = format!(
        "{}/.well-known/oauth-protected-resource/mcp",
        demo.base_url()
    );
    for (token, error) in [
        (None, None),
        (Some("not-a-jwt".to_owned()), Some("invalid_token")),
        (Some(demo.token("alice", -300)), Some("invalid_token")),
    ] {
        let response = post(token).await.unwrap();
        assert_eq!(response.status(), 401);
        let challenge = response.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(challenge.starts_with("Bearer "), "{challenge}");
        assert!(
            challenge.contains(&format!("resource_metadata=\"{metadata_url}\"")),
            "{challenge}"
        );
        match error {
            Some(e) => assert!(challenge.contains(&format!("error=\"{e}\"")), "{challenge}"),
            None => assert!(!challenge.contains("error="), "{challenge}"),
        }
    }
    let expired = post(Some(demo.token("alice", -300))).await.unwrap();
    let challenge = expired.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(challenge.contains("expired"), "{challenge}");
    // The metadata document (RFC 9728).
    let metadata: serde_json::Value = http
        .get(&metadata_url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(metadata["resource"], demo.mcp_url());
    assert_eq!(metadata["authorization_servers"][0], demo.base_url());
    // A good token passes.
    let ok = post(Some(demo.token("alice", 60))).await.unwrap();
    assert!(ok.status().is_success(), "{}", ok.status());
}
