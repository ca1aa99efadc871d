//! The vault against a real OAuth 2.0 server (oidc-provider), through real HTTP, on SQLite and
//! on PostgreSQL.

mod support;

use std::sync::Arc;
use std::time::Duration;

use chain_runtime::test_util::backend::{Backend, TestDatabase};
use chain_runtime::vault::{
    AccountStatus, OffsetClock, TokenKind, Vault, VaultError, VaultKey, VaultOptions,
};
use support::{CONNECTOR, Harness, authorize, connect};

const KEY: [u8; 32] = [42; 32];

chain_runtime::backend_tests!(
    code_flow_with_pkce_records_granted_scopes_and_subject,
    proactive_refresh_with_rotation,
    disconnect_revokes_the_grant,
    forged_replayed_and_expired_state,
    reconsent_by_another_subject_is_refused,
    no_fallback_to_another_principal,
    wrong_client_secret_is_invalid_client,
    wrong_vault_key_is_refused,
    swapped_ciphertexts_do_not_decrypt,
);

/// A test's database and the directory a SQLite one lives in.
struct Db {
    dir: tempfile::TempDir,
    db: TestDatabase,
}

async fn setup(backend: Backend) -> (Harness, Db, Vault, Arc<OffsetClock>) {
    let harness = Harness::start().await;
    let dir = tempfile::tempdir().unwrap();
    let db = backend.database(dir.path(), "vault").await;
    let clock = Arc::new(OffsetClock::default());
    let vault = harness
        .vault(&db.location_path(), KEY, Arc::clone(&clock))
        .await;
    (harness, Db { dir, db }, vault, clock)
}

/// Code flow with PKCE S256; the granted (narrower) scopes and the upstream subject are recorded.
async fn code_flow_with_pkce_records_granted_scopes_and_subject(backend: Backend) {
    let (h, _dir, vault, _clock) = setup(backend).await;
    let link = vault
        .consent_link("user-1", CONNECTOR, &["api", "read", "write"])
        .await
        .unwrap();
    let q: std::collections::HashMap<_, _> = link.url.query_pairs().into_owned().collect();
    assert_eq!(q["code_challenge_method"], "S256");
    assert_eq!(q["code_challenge"].len(), 43);
    assert_eq!(q["scope"], "api read write");
    assert_eq!(q["state"], link.state);

    // The user unticks `write`: the grant is narrower than the request.
    let (state, code) = authorize(&link.url, "alice", Some("write")).await;
    let account = vault
        .complete_consent("user-1", &state, &code)
        .await
        .unwrap();
    assert_eq!(account.upstream_subject, "alice");
    assert_eq!(account.granted_scopes, vec!["api", "read"]);
    assert_eq!(account.status, AccountStatus::Active);
    assert_eq!(account.principal_id, "user-1");
    assert!(account.expires_at.is_some());

    // The stored access token is live at the server, and belongs to alice.
    let info = vault
        .introspect("user-1", CONNECTOR, TokenKind::Access)
        .await
        .unwrap();
    assert!(info.active);
    assert_eq!(info.subject.as_deref(), Some("alice"));
    assert_eq!(info.scopes, vec!["api", "read"]);
    let rt = vault
        .introspect("user-1", CONNECTOR, TokenKind::Refresh)
        .await
        .unwrap();
    assert!(rt.active);

    // A PKCE code exchange without the verifier would fail: prove the server enforces PKCE.
    let plain = {
        support::install_tls_provider();
        reqwest::Client::new()
    }
    .post(format!("{}/token", h.server.base))
    .form(&[
        ("grant_type", "authorization_code"),
        ("code", "whatever"),
        ("redirect_uri", support::REDIRECT_URI),
        ("client_id", support::CLIENT_ID),
        ("client_secret", h.server.client_secret.as_str()),
    ])
    .send()
    .await
    .unwrap();
    assert_eq!(plain.status(), 400);
}

/// Proactive refresh within the margin, with rotation: the new refresh token is stored, the
/// old one is consumed at the server, and the API call made with the injected token succeeds.
async fn proactive_refresh_with_rotation(backend: Backend) {
    let (h, _dir, vault, clock) = setup(backend).await;
    let before = connect(&vault, "user-1", "alice", &["openid", "api"]).await;
    let client = vault.client("user-1", CONNECTOR);

    // The server's access tokens live 120 s, less than the default 5-minute margin: use a 30 s
    // margin so a fresh token is outside it.
    vault
        .register_provider(h.provider().with_refresh_margin(Duration::from_secs(30)))
        .await
        .unwrap();
    let resp = client.get(h.userinfo_url()).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        h.proxy.refreshes(),
        0,
        "a fresh token must not be refreshed"
    );

    // 100 s later the token (120 s) expires within the 30 s margin: refreshed before the call.
    clock.advance(Duration::from_secs(100));
    let resp = client.get(h.userinfo_url()).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let me: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(me["sub"], "alice");
    assert_eq!(h.proxy.refreshes(), 1);
    let after = vault.account("user-1", CONNECTOR).await.unwrap();
    assert_eq!(after.token_version, before.token_version + 1);
    assert_eq!(after.account_id, before.account_id);
    assert_eq!(after.grant_id, before.grant_id);

    // Rotation: the stored refresh token is the new one and is active.
    assert!(
        vault
            .introspect("user-1", CONNECTOR, TokenKind::Refresh)
            .await
            .unwrap()
            .active
    );
    // Forced refresh after an "expired" classification, with a stale seen version, is skipped.
    vault
        .refresh_after_expiry("user-1", CONNECTOR, before.token_version)
        .await
        .unwrap();
    assert_eq!(h.proxy.refreshes(), 1);
    // With the current version it refreshes (rotates) again.
    client.refresh_after_expiry().await.unwrap();
    assert_eq!(h.proxy.refreshes(), 2);
    assert!(
        vault
            .introspect("user-1", CONNECTOR, TokenKind::Refresh)
            .await
            .unwrap()
            .active
    );
}

/// Reuse of a rotated refresh token: the server revokes the whole grant, and the vault marks the
/// account NeedsReauthorization and never retries it automatically.
#[tokio::test]
async fn reuse_of_rotated_refresh_token_needs_reauthorization() {
    let (h, dir, vault, clock) = setup(Backend::Sqlite).await;
    let dir = &dir.dir;
    connect(&vault, "user-1", "alice", &["api"]).await;
    // A backup of the vault taken now holds the refresh token that is about to be rotated.
    drop(vault);
    let db = dir.path().join("vault.db");
    let backup = dir.path().join("backup.db");
    std::fs::copy(&db, &backup).unwrap();
    if dir.path().join("vault.db-wal").exists() {
        std::fs::copy(
            dir.path().join("vault.db-wal"),
            dir.path().join("backup.db-wal"),
        )
        .unwrap();
    }
    let vault = h.vault(&db, KEY, Arc::clone(&clock)).await;
    clock.advance(Duration::from_secs(3600));
    vault.ensure_fresh("user-1", CONNECTOR).await.unwrap(); // rotates RT1 → RT2
    assert_eq!(h.proxy.refreshes(), 1);

    // The restored backup presents RT1 again: reuse → the server revokes the grant family.
    let restored = h.vault(&backup, KEY, Arc::clone(&clock)).await;
    let err = restored
        .ensure_fresh("user-1", CONNECTOR)
        .await
        .unwrap_err();
    assert!(
        matches!(err, VaultError::GrantRevoked { ref error_code, .. } if error_code.as_deref() == Some("invalid_grant")),
        "{err}"
    );
    assert_eq!(
        restored.account("user-1", CONNECTOR).await.unwrap().status,
        AccountStatus::NeedsReauthorization
    );
    // Never retried automatically.
    let err = restored
        .ensure_fresh("user-1", CONNECTOR)
        .await
        .unwrap_err();
    assert!(
        matches!(err, VaultError::NeedsReauthorization { ref scopes, .. } if scopes == &["api"]),
        "{err}"
    );
    assert_eq!(h.proxy.refreshes(), 2);

    // The family is dead at the server: the primary vault's RT2 was revoked too.
    assert!(
        !vault
            .introspect("user-1", CONNECTOR, TokenKind::Refresh)
            .await
            .unwrap()
            .active
    );
    clock.advance(Duration::from_secs(3600));
    let err = vault.ensure_fresh("user-1", CONNECTOR).await.unwrap_err();
    assert!(matches!(err, VaultError::GrantRevoked { .. }), "{err}");
    assert_eq!(
        vault.account("user-1", CONNECTOR).await.unwrap().status,
        AccountStatus::NeedsReauthorization
    );

    // A fresh consent by the same upstream user restores the account.
    let again = connect(&vault, "user-1", "alice", &["api"]).await;
    assert_eq!(again.status, AccountStatus::Active);
}

/// Disconnect revokes at the server (RFC 7009) and marks the account revoked.
async fn disconnect_revokes_the_grant(backend: Backend) {
    let (h, _dir, vault, _clock) = setup(backend).await;
    connect(&vault, "user-1", "alice", &["openid", "api"]).await;
    let at_before = vault
        .introspect("user-1", CONNECTOR, TokenKind::Access)
        .await
        .unwrap();
    assert!(at_before.active);
    // Keep a direct handle on the current access token's liveness: call userinfo through the vault.
    assert_eq!(
        vault
            .client("user-1", CONNECTOR)
            .get(h.userinfo_url())
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    let info = vault.disconnect("user-1", CONNECTOR).await.unwrap();
    assert_eq!(info.status, AccountStatus::Revoked);
    let err = vault
        .client("user-1", CONNECTOR)
        .get(h.userinfo_url())
        .send()
        .await
        .unwrap_err();
    assert!(matches!(err, VaultError::Revoked { .. }), "{err}");

    // At the server, every token issued to the proxy for this grant is now inactive.
    let http = {
        support::install_tls_provider();
        reqwest::Client::new()
    };
    let issued = h.proxy.issued();
    assert!(issued.len() >= 2, "the proxy saw the issued tokens");
    for secret in issued {
        let body: serde_json::Value = http
            .post(format!("{}/token/introspection", h.server.base))
            .form(&[
                ("token", secret.as_str()),
                ("client_id", support::CLIENT_ID),
                ("client_secret", h.server.client_secret.as_str()),
            ])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            body["active"], false,
            "a token of the revoked grant is still active"
        );
    }
    // Idempotent.
    assert_eq!(
        vault.disconnect("user-1", CONNECTOR).await.unwrap().status,
        AccountStatus::Revoked
    );
}

/// Forged, replayed and expired state values are typed errors and store nothing.
async fn forged_replayed_and_expired_state(backend: Backend) {
    let (h, _dir, vault, clock) = setup(backend).await;
    let link = vault
        .consent_link("user-1", CONNECTOR, &["api"])
        .await
        .unwrap();
    let (state, code) = authorize(&link.url, "alice", None).await;

    let forged = vault
        .complete_consent("user-1", "forged-state-value", &code)
        .await
        .unwrap_err();
    assert!(
        matches!(forged, VaultError::UnknownConsentState),
        "{forged}"
    );
    vault
        .complete_consent("user-1", &state, &code)
        .await
        .unwrap();
    let replayed = vault
        .complete_consent("user-1", &state, &code)
        .await
        .unwrap_err();
    assert!(
        matches!(replayed, VaultError::UnknownConsentState),
        "{replayed}"
    );

    let link = vault
        .consent_link("user-2", CONNECTOR, &["api"])
        .await
        .unwrap();
    let (state, code) = authorize(&link.url, "bob", None).await;
    clock.advance(Duration::from_secs(11 * 60));
    let expired = vault
        .complete_consent("user-2", &state, &code)
        .await
        .unwrap_err();
    assert!(
        matches!(expired, VaultError::ConsentExpired { .. }),
        "{expired}"
    );
    assert!(matches!(
        vault.account("user-2", CONNECTOR).await.unwrap_err(),
        VaultError::NotConnected { .. }
    ));
    // The expired state is consumed too.
    assert!(matches!(
        vault
            .complete_consent("user-2", &state, &code)
            .await
            .unwrap_err(),
        VaultError::UnknownConsentState
    ));
    let _ = h;
}

/// Re-consent by a different upstream user is refused and the stored account is untouched.
async fn reconsent_by_another_subject_is_refused(backend: Backend) {
    let (h, _dir, vault, _clock) = setup(backend).await;
    let original = connect(&vault, "user-1", "alice", &["openid", "api"]).await;
    let link = vault
        .consent_link("user-1", CONNECTOR, &["openid", "api", "read"])
        .await
        .unwrap();
    let (state, code) = authorize(&link.url, "mallory", None).await;
    let err = vault
        .complete_consent("user-1", &state, &code)
        .await
        .unwrap_err();
    match &err {
        VaultError::IdentityDrift {
            stored_subject,
            new_subject,
            ..
        } => {
            assert_eq!(stored_subject, "alice");
            assert_eq!(new_subject, "mallory");
        }
        other => panic!("expected identity drift, got {other}"),
    }
    assert!(err.to_string().contains("identity drift"));
    assert_eq!(vault.account("user-1", CONNECTOR).await.unwrap(), original);
    // Still alice's token on the wire.
    let me: serde_json::Value = vault
        .client("user-1", CONNECTOR)
        .get(h.userinfo_url())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["sub"], "alice");

    // Re-consent by the same user widens the grant and keeps the account id.
    let link = vault
        .consent_link("user-1", CONNECTOR, &["openid", "api", "read"])
        .await
        .unwrap();
    let (state, code) = authorize(&link.url, "alice", None).await;
    let widened = vault
        .complete_consent("user-1", &state, &code)
        .await
        .unwrap();
    assert_eq!(widened.account_id, original.account_id);
    assert_ne!(widened.grant_id, original.grant_id);
    assert_eq!(widened.granted_scopes, vec!["openid", "api", "read"]);
}

/// Resolution only for the given principal: no fallback to another principal's account.
async fn no_fallback_to_another_principal(backend: Backend) {
    let (h, _dir, vault, _clock) = setup(backend).await;
    connect(&vault, "user-1", "alice", &["openid", "api"]).await;
    let err = vault
        .client("user-2", CONNECTOR)
        .get(h.userinfo_url())
        .send()
        .await
        .unwrap_err();
    match err {
        VaultError::NotConnected {
            principal_id,
            connector,
        } => {
            assert_eq!(principal_id, "user-2");
            assert_eq!(connector, CONNECTOR);
        }
        other => panic!("expected NotConnected, got {other}"),
    }
    let err = vault
        .client("user-1", "other-connector")
        .get(h.userinfo_url())
        .send()
        .await
        .unwrap_err();
    assert!(matches!(err, VaultError::UnknownConnector { .. }), "{err}");
}

/// A wrong client secret is a typed InvalidClient error naming no secret; the account is kept.
async fn wrong_client_secret_is_invalid_client(backend: Backend) {
    let (h, _dir, vault, clock) = setup(backend).await;
    let before = connect(&vault, "user-1", "alice", &["api"]).await;
    let wrong = "cs-wrong-secret-0123456789";
    vault
        .register_provider(h.provider_with_secret(wrong))
        .await
        .unwrap();
    clock.advance(Duration::from_secs(3600));
    let err = vault.ensure_fresh("user-1", CONNECTOR).await.unwrap_err();
    assert!(matches!(err, VaultError::InvalidClient { .. }), "{err}");
    let text = format!("{err} {err:?}");
    assert!(!text.contains(wrong) && !text.contains(&h.server.client_secret));
    // Nothing lost: the account is still active with the same token version, and the right
    // secret refreshes it.
    let after = vault.account("user-1", CONNECTOR).await.unwrap();
    assert_eq!(after.status, AccountStatus::Active);
    assert_eq!(after.token_version, before.token_version);
    vault.register_provider(h.provider()).await.unwrap();
    vault.ensure_fresh("user-1", CONNECTOR).await.unwrap();

    // Same for the code exchange.
    vault
        .register_provider(h.provider_with_secret(wrong))
        .await
        .unwrap();
    let link = vault
        .consent_link("user-2", CONNECTOR, &["api"])
        .await
        .unwrap();
    let (state, code) = authorize(&link.url, "bob", None).await;
    let err = vault
        .complete_consent("user-2", &state, &code)
        .await
        .unwrap_err();
    assert!(matches!(err, VaultError::InvalidClient { .. }), "{err}");
    assert!(!format!("{err} {err:?}").contains(wrong));
}

/// A vault opened with another key fails on open with a typed error; the right key still works.
async fn wrong_vault_key_is_refused(backend: Backend) {
    let (h, dir, vault, clock) = setup(backend).await;
    connect(&vault, "user-1", "alice", &["api"]).await;
    drop(vault);
    let path = dir.db.location_path();
    let err = dir
        .db
        .open_vault(VaultKey::from_bytes([7; 32]), VaultOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, VaultError::WrongKey), "{err}");
    // Missing key: a typed error teaching what to do.
    let err = VaultKey::from_env("CHAIN_VAULT_KEY_SURELY_UNSET").unwrap_err();
    assert!(err.to_string().contains("CHAIN_VAULT_KEY_SURELY_UNSET"));
    let vault = h.vault(&path, KEY, clock).await;
    assert!(
        vault
            .introspect("user-1", CONNECTOR, TokenKind::Access)
            .await
            .unwrap()
            .active
    );
}

/// Ciphertexts are bound to their row: swapping tokens between two accounts is detected.
async fn swapped_ciphertexts_do_not_decrypt(backend: Backend) {
    let (h, dir, vault, clock) = setup(backend).await;
    connect(&vault, "user-1", "alice", &["api"]).await;
    connect(&vault, "user-2", "bob", &["api"]).await;
    drop(vault);
    let path = dir.db.location_path();
    dir.db
        .execute_batch(
            "UPDATE vault_accounts SET access_token = \
             (SELECT access_token FROM vault_accounts WHERE principal_id = 'user-1') WHERE principal_id = 'user-2'",
        )
        .await;
    let vault = h.vault(&path, KEY, clock).await;
    let err = vault
        .introspect("user-2", CONNECTOR, TokenKind::Access)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            VaultError::Tampered {
                field: "access_token",
                ..
            }
        ),
        "{err}"
    );
}
