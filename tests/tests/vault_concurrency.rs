//! Single-flight refresh: 500 concurrent callers on an expired account cause exactly one
//! refresh request at the (real) token endpoint, and all 500 calls succeed with the new token.

mod support;

use std::sync::Arc;
use std::time::Duration;

use chain_runtime::test_util::backend::Backend;
use chain_runtime::vault::{OffsetClock, TokenKind};
use support::{CONNECTOR, Harness, connect};

chain_runtime::backend_tests!(five_hundred_callers_one_refresh,);

async fn five_hundred_callers_one_refresh(backend: Backend) {
    let h = Harness::start().await;
    let dir = tempfile::tempdir().unwrap();
    let db_at = backend.database(dir.path(), "vault").await;
    let clock = Arc::new(OffsetClock::default());
    let vault = h
        .vault(&db_at.location_path(), [9; 32], Arc::clone(&clock))
        .await;
    vault
        .register_provider(h.provider().with_refresh_margin(Duration::from_secs(30)))
        .await
        .unwrap();
    let before = connect(&vault, "user-1", "alice", &["openid", "api"]).await;

    // The account's access token is now expired as far as the vault can tell.
    clock.advance(Duration::from_secs(3600));
    assert_eq!(h.proxy.refreshes(), 0);

    let userinfo = format!("{}/me", h.server.base);
    let barrier = Arc::new(tokio::sync::Barrier::new(500));
    let mut tasks = Vec::new();
    for _ in 0..500 {
        let client = vault.client("user-1", CONNECTOR);
        let barrier = Arc::clone(&barrier);
        let userinfo = userinfo.clone();
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let response = client.get(userinfo).send().await?;
            let status = response.status().as_u16();
            let body: serde_json::Value = response.json().await.unwrap_or_default();
            Ok::<_, chain_runtime::vault::VaultError>((status, body))
        }));
    }
    let mut ok = 0;
    for task in tasks {
        let (status, body) = task.await.unwrap().unwrap();
        assert_eq!(status, 200, "an API call failed: {body}");
        assert_eq!(body["sub"], "alice");
        ok += 1;
    }
    assert_eq!(ok, 500);
    assert_eq!(
        h.proxy.refreshes(),
        1,
        "the token endpoint saw more than one refresh request"
    );
    let after = vault.account("user-1", CONNECTOR).await.unwrap();
    assert_eq!(after.token_version, before.token_version + 1);
    assert!(
        vault
            .introspect("user-1", CONNECTOR, TokenKind::Refresh)
            .await
            .unwrap()
            .active
    );
}
