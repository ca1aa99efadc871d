//! `chainctl serve`: the web pages and the MCP endpoint of the application's runtime on one
//! listener, on a database the demo wrote (vault key from `CHAIN_VAULT_KEY`, MCP token key from
//! `CHAIN_MCP_KEY`).

use std::time::Duration;

use base64::Engine as _;
use chain_runtime::mcp::auth::SharedKeyJwtVerifier;
use chain_runtime::vault::VaultKey;
use examples::demo::{Demo, Scenario};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::test]
async fn serve_shows_the_pages_and_guards_the_mcp_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("chain.db");
    let key_file = dir.path().join("vault.key");
    VaultKey::generate().write_to_file(&key_file).unwrap();
    let vault_key = std::fs::read_to_string(&key_file)
        .unwrap()
        .trim()
        .to_owned();
    let demo = Demo::start_with_key(&db, VaultKey::from_file(&key_file).unwrap())
        .await
        .unwrap();
    let run = demo.play(Scenario::Happy).await.unwrap().run_id.unwrap();
    let mcp_key = vec![7u8; 32];

    // Without the MCP key: a clear refusal.
    let refused = tokio::process::Command::new(env!("CARGO_BIN_EXE_chainctl"))
        .env_remove("CHAIN_MCP_KEY")
        .env("CHAIN_VAULT_KEY", &vault_key)
        .arg("--db")
        .arg(&db)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .output()
        .await
        .unwrap();
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("CHAIN_MCP_KEY"));

    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_chainctl"))
        .env("CHAIN_VAULT_KEY", &vault_key)
        .env(
            "CHAIN_MCP_KEY",
            base64::engine::general_purpose::STANDARD.encode(&mcp_key),
        )
        .arg("--db")
        .arg(&db)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("serve printed its address in time")
        .unwrap()
        .unwrap();
    let base = line
        .strip_prefix("listening on ")
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("{line}"))
        .to_owned();
    let http = reqwest::Client::new();

    let page = http
        .get(format!("{base}/runs"))
        .header("x-forwarded-user", "alice")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains(&run), "{page}");
    let svg = http
        .get(format!("{base}/runs/{run}/graph.svg"))
        .header("x-forwarded-user", "alice")
        .send()
        .await
        .unwrap();
    assert_eq!(svg.status(), 200);
    assert_eq!(
        http.get(format!("{base}/runs"))
            .send()
            .await
            .unwrap()
            .status(),
        401,
        "no principal, no pages"
    );

    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "raw", "version": "1"}}});
    let post = |token: Option<String>| {
        let mut r = http
            .post(format!("{base}/mcp"))
            .header("accept", "application/json, text/event-stream")
            .json(&init);
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    let no_token = post(None).await.unwrap();
    assert_eq!(no_token.status(), 401);
    assert!(
        no_token.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("resource_metadata=")
    );
    let signer = SharedKeyJwtVerifier::new(mcp_key, format!("{base}/mcp"));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let token =
        signer.sign(&json!({"sub": "alice", "aud": format!("{base}/mcp"), "exp": now + 60}));
    let ok = post(Some(token)).await.unwrap();
    assert!(ok.status().is_success(), "{}", ok.status());
    child.kill().await.unwrap();
}
