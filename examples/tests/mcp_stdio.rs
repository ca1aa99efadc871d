//! The MCP demo over stdio with rmcp's client, the server a child process: tools/list, then a
//! call that needs Slack consent (the link followed through the sandbox's authorize endpoint to
//! the demo's web server), whose retry completes the chain.

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, ClientCapabilities, ClientConfig, Implementation,
};
use rmcp::service::ServiceExt;
use rmcp::transport::TokioChildProcess;
use serde_json::{Map, Value};
use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::test]
async fn stdio_lists_tools_and_a_consent_call_completes_on_retry() {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_mcp_demo_server"));
    command.kill_on_drop(true);
    let (transport, stderr) = TokioChildProcess::builder(command)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The demo prints the web address and the call's arguments on stderr.
    let mut lines = BufReader::new(stderr.unwrap()).lines();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut arguments: Option<Map<String, Value>> = None;
    while arguments.is_none() {
        let line = tokio::time::timeout_at(deadline, lines.next_line())
            .await
            .expect("the demo printed its arguments in time")
            .unwrap()
            .expect("stderr open");
        if let Some(json) = line.strip_prefix("arguments: ") {
            arguments = Some(serde_json::from_str(json).unwrap());
        }
    }
    let client = ClientConfig::new(
        ClientCapabilities::default(),
        Implementation::from_build_env(),
    )
    .serve(transport)
    .await
    .unwrap();
    let tools = client.list_all_tools().await.unwrap();
    assert!(tools.iter().any(|t| t.name == "escalate_deal"));

    let mut params = CallToolRequestParams::new("escalate_deal");
    params.arguments = arguments;
    let data = match client.call_tool_once(params.clone()).await {
        Err(rmcp::service::ServiceError::McpError(data)) => data,
        other => panic!("expected the URL elicitation error, got {other:?}"),
    };
    assert_eq!(data.code.0, chain_runtime::mcp::URL_ELICITATION_REQUIRED);
    let url = data.data.unwrap()["elicitations"][0]["url"]
        .as_str()
        .unwrap()
        .to_owned();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let page = reqwest::get(&url).await.unwrap().text().await.unwrap();
    assert!(page.contains("Connected your slack account"), "{page}");
    match client.call_tool_once(params).await.unwrap() {
        CallToolResponse::Complete(result) => {
            assert_eq!(result.is_error, Some(false), "{result:?}");
            let output = result.structured_content.unwrap();
            assert!(output["result"].as_str().unwrap().starts_with("ESC-"));
        }
        other => panic!("expected a completed call, got {other:?}"),
    }
    client.cancel().await.unwrap();
}
