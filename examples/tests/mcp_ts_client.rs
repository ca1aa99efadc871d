//! A second, independent MCP client drives the server: the official TypeScript SDK
//! (`tests/mcp-client`, installed with `npm ci --prefix tests/mcp-client`) lists the tools over
//! streamable HTTP with a bearer token, and completes a call after following the consent link.

use std::path::PathBuf;

use examples::mcp_demo::McpDemo;

#[tokio::test]
async fn the_typescript_sdk_lists_the_tools_and_completes_a_call() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/mcp-client");
    assert!(
        dir.join("node_modules/@modelcontextprotocol/sdk").exists(),
        "the TypeScript MCP client is not installed: run `npm ci --prefix tests/mcp-client`"
    );
    let db = tempfile::tempdir().unwrap();
    let demo = McpDemo::start(&db.path().join("ts.db"), "127.0.0.1:0")
        .await
        .unwrap();
    let args = serde_json::to_string(&demo.deal_arguments()).unwrap();
    let output = tokio::time::timeout(
        std::time::Duration::from_secs(120),
        tokio::process::Command::new("node")
            .arg(dir.join("client.mjs"))
            .arg(demo.mcp_url())
            .arg(demo.token("alice", 600))
            .arg("escalate_deal")
            .arg(&args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the TypeScript client finished in time")
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "node failed: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(
        report["tools"],
        serde_json::json!(["escalate_deal", "escalate_and_note"])
    );
    assert_eq!(
        report["elicited"], 1,
        "one consent link (slack) was followed"
    );
    assert_eq!(report["result"]["isError"], false, "{report}");
    assert!(
        report["result"]["structuredContent"]["result"]
            .as_str()
            .unwrap()
            .starts_with("ESC-"),
        "{report}"
    );
    let runs = demo.demo.engine.list_runs().await.unwrap();
    assert_eq!(runs.len(), 1, "the retry continued the call: one run");
}
