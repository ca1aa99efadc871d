//! Provider quirks and bad input at the token endpoint, through real HTTP against small fake
//! token endpoints (the provider emulators of `chain_runtime::sandbox` will replace these), on
//! SQLite and PostgreSQL.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use chain_runtime::classify::FailureClass;
use chain_runtime::test_util::backend::{Backend, TestDatabase};
use chain_runtime::vault::{
    AccountStatus, OffsetClock, ScopeSeparator, SubjectSource, Vault, VaultError, VaultKey,
    VaultOptions,
};
use support::{FakeTokenEndpoint, reply};

chain_runtime::backend_tests!(
    slack_errors_with_http_200,
    salesforce_expiry_without_expires_in,
    refresh_token_kept_or_rotated,
    bad_token_responses_lose_nothing,
    lost_race_is_not_revocation,
);

async fn vault_at(path: &std::path::Path, clock: Arc<OffsetClock>, timeout: Duration) -> Vault {
    let options = VaultOptions {
        clock,
        http_timeout: timeout,
        // These tests look at one token response at a time: no retries of transient failures.
        retry_policy: chain_runtime::policy::RetryPolicy {
            max_server_retries: 0,
            ..Default::default()
        },
        ..VaultOptions::default()
    };
    TestDatabase::at(path)
        .open_vault(VaultKey::from_bytes([3; 32]), options)
        .await
        .unwrap()
}

async fn consent(
    vault: &Vault,
    principal: &str,
    connector: &str,
    scopes: &[&str],
) -> chain_runtime::vault::AccountInfo {
    let link = vault
        .consent_link(principal, connector, scopes)
        .await
        .unwrap();
    vault
        .complete_consent(principal, &link.state, "code-1")
        .await
        .unwrap()
}

const SLACK_OK: &str = r#"{"ok":true,"access_token":"xoxe.xoxp-AT1","refresh_token":"xoxe-1-RT1","expires_in":43200,
  "token_type":"user","scope":"chat:write,users:read","team":{"id":"T123"},"authed_user":{"id":"U456"}}"#;

/// Slack: comma-separated scopes, subject from team.id + authed_user.id, and token errors with
/// HTTP 200 + ok:false (dead refresh token → revoked; bad client secret → invalid client).
async fn slack_errors_with_http_200(backend: Backend) {
    let fake = FakeTokenEndpoint::start(|n, _form| match n {
        0 => reply(200, SLACK_OK),
        1 => reply(200, r#"{"ok":false,"error":"bad_client_secret"}"#),
        _ => reply(200, r#"{"ok":false,"error":"invalid_refresh_token"}"#),
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let db_at = backend.database(dir.path(), "vault").await;
    let clock = Arc::new(OffsetClock::default());
    let vault = vault_at(
        &db_at.location_path(),
        Arc::clone(&clock),
        Duration::from_secs(5),
    )
    .await;
    vault
        .register_provider(
            fake.provider("slack")
                .with_provider("slack")
                .with_scope_separator(ScopeSeparator::Comma)
                .with_refresh_margin(Duration::from_secs(2 * 3600))
                .with_subject(SubjectSource::TokenResponse {
                    pointers: vec!["/team/id".into(), "/authed_user/id".into()],
                }),
        )
        .await
        .unwrap();
    let link = vault
        .consent_link(
            "user-1",
            "slack",
            &["chat:write", "users:read", "channels:read"],
        )
        .await
        .unwrap();
    assert!(
        link.url
            .query_pairs()
            .any(|(k, v)| k == "scope" && v == "chat:write,users:read,channels:read")
    );
    let account = vault
        .complete_consent("user-1", &link.state, "code-1")
        .await
        .unwrap();
    assert_eq!(account.upstream_subject, "T123:U456");
    assert_eq!(account.granted_scopes, vec!["chat:write", "users:read"]);

    clock.advance(Duration::from_secs(43200));
    let err = vault.ensure_fresh("user-1", "slack").await.unwrap_err();
    assert!(matches!(err, VaultError::InvalidClient { .. }), "{err}");
    assert_eq!(
        vault.account("user-1", "slack").await.unwrap().status,
        AccountStatus::Active
    );

    let err = vault.ensure_fresh("user-1", "slack").await.unwrap_err();
    assert!(
        matches!(err, VaultError::GrantRevoked { ref error_code, .. } if error_code.as_deref() == Some("invalid_refresh_token")),
        "{err}"
    );
    assert_eq!(
        vault.account("user-1", "slack").await.unwrap().status,
        AccountStatus::NeedsReauthorization
    );
    // Never retried automatically.
    assert!(matches!(
        vault.ensure_fresh("user-1", "slack").await.unwrap_err(),
        VaultError::NeedsReauthorization { .. }
    ));
    assert_eq!(fake.count(), 3);
}

/// Salesforce: no expires_in, issued_at in ms. With an introspection URL the expiry is its `exp`;
/// without one it is issued_at + the configured lifetime. The subject is the `id` URL.
async fn salesforce_expiry_without_expires_in(backend: Backend) {
    let issued_ms = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()) as i64;
    let body = format!(
        r#"{{"access_token":"00Dx!AQ","refresh_token":"5Aep-RT","instance_url":"https://eu1.my.salesforce.com",
        "id":"https://login.salesforce.com/id/00Dx0000000001/005x0000000001","token_type":"Bearer",
        "issued_at":"{issued_ms}","signature":"c2ln","scope":"api refresh_token"}}"#
    );
    let exp = issued_ms / 1000 + 1234;
    let introspection = format!(r#"{{"active":true,"exp":{exp},"sub":"005x0000000001"}}"#);
    let fake = FakeTokenEndpoint::start(move |_n, form| {
        if form.contains_key("token") {
            reply(200, introspection.clone())
        } else {
            reply(200, body.clone())
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let db_at = backend.database(dir.path(), "vault").await;
    let clock = Arc::new(OffsetClock::default());
    let vault = vault_at(&db_at.location_path(), clock, Duration::from_secs(5)).await;
    let subject = SubjectSource::TokenResponse {
        pointers: vec!["/id".into()],
    };
    vault
        .register_provider(
            fake.provider("sf-introspect")
                .with_subject(subject.clone())
                .with_introspection_url(&format!("{}/services/oauth2/introspect", fake.base))
                .unwrap()
                .with_default_token_lifetime(Duration::from_secs(7200)),
        )
        .await
        .unwrap();
    vault
        .register_provider(
            fake.provider("sf-lifetime")
                .with_subject(subject)
                .with_default_token_lifetime(Duration::from_secs(7200)),
        )
        .await
        .unwrap();
    let a = consent(&vault, "user-1", "sf-introspect", &["api", "refresh_token"]).await;
    assert_eq!(a.expires_at, Some(exp));
    assert_eq!(
        a.upstream_subject,
        "https://login.salesforce.com/id/00Dx0000000001/005x0000000001"
    );
    let b = consent(&vault, "user-1", "sf-lifetime", &["api"]).await;
    // The default lifetime counts from receipt on the application's clock, not from the
    // provider's `issued_at`.
    let b_expiry = b.expires_at.unwrap();
    assert!(
        (issued_ms / 1000 + 7200..=issued_ms / 1000 + 7200 + 60).contains(&b_expiry),
        "{b_expiry}"
    );
    assert_eq!(b.granted_scopes, vec!["api", "refresh_token"]);
}

/// Google never returns a new refresh token (keep the old one); Atlassian rotates every time
/// (use the new one next time). Checked at the token endpoint.
async fn refresh_token_kept_or_rotated(backend: Backend) {
    let fake = FakeTokenEndpoint::start(|n, form| {
        let rotating = form.get("refresh_token").is_some_and(|rt| rt.starts_with("atl-")) || form.get("code").is_some_and(|c| c == "atl");
        match (rotating, n) {
            (false, _) if form.contains_key("code") => reply(200, r#"{"access_token":"g-at-0","refresh_token":"g-rt-0","expires_in":3599,"scope":"email","id_token":"x.eyJzdWIiOiIxMDk4NzYifQ.y"}"#),
            (false, _) => reply(200, format!(r#"{{"access_token":"g-at-{n}","expires_in":3599,"scope":"email"}}"#)),
            (true, _) => reply(200, format!(r#"{{"access_token":"atl-at-{n}","refresh_token":"atl-rt-{n}","expires_in":3600,"scope":"read:jira-work"}}"#)),
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let db_at = backend.database(dir.path(), "vault").await;
    let clock = Arc::new(OffsetClock::default());
    let vault = vault_at(
        &db_at.location_path(),
        Arc::clone(&clock),
        Duration::from_secs(5),
    )
    .await;
    vault
        .register_provider(
            fake.provider("google")
                .with_subject(SubjectSource::IdToken {
                    pointers: vec!["/sub".into()],
                }),
        )
        .await
        .unwrap();
    vault
        .register_provider(
            fake.provider("jira")
                .with_subject(SubjectSource::TokenResponse {
                    pointers: vec!["/scope".into()],
                }),
        )
        .await
        .unwrap();

    let g = consent(&vault, "user-1", "google", &["email"]).await;
    assert_eq!(g.upstream_subject, "109876");
    for _ in 0..2 {
        clock.advance(Duration::from_secs(3600));
        vault.ensure_fresh("user-1", "google").await.unwrap();
    }
    let google_refreshes: Vec<_> = fake
        .requests
        .lock()
        .unwrap()
        .iter()
        .filter_map(|f| f.get("refresh_token").cloned())
        .collect();
    assert_eq!(
        google_refreshes,
        vec!["g-rt-0", "g-rt-0"],
        "the old refresh token must be kept"
    );

    let link = vault
        .consent_link("user-1", "jira", &["read:jira-work"])
        .await
        .unwrap();
    vault
        .complete_consent("user-1", &link.state, "atl")
        .await
        .unwrap();
    let start = fake.count();
    for _ in 0..3 {
        clock.advance(Duration::from_secs(3600));
        vault.ensure_fresh("user-1", "jira").await.unwrap();
    }
    let used: Vec<_> = (start..fake.count())
        .map(|i| fake.request(i)["refresh_token"].clone())
        .collect();
    let issued: Vec<_> = (start - 1..fake.count() - 1)
        .map(|i| format!("atl-rt-{i}"))
        .collect();
    assert_eq!(
        used, issued,
        "each refresh must present the most recently issued refresh token"
    );
}

/// Malformed token responses, 5xx and a hanging token endpoint are typed errors, bounded in
/// time, and lose nothing: the original refresh token still works afterwards.
async fn bad_token_responses_lose_nothing(backend: Backend) {
    let hang = Arc::new(AtomicUsize::new(0));
    let hang2 = Arc::clone(&hang);
    let fake = FakeTokenEndpoint::start(move |n, form| {
        if form.contains_key("code") {
            return reply(
                200,
                r#"{"access_token":"at-0","refresh_token":"rt-0","expires_in":60,"sub":"u-1"}"#,
            );
        }
        if form.get("refresh_token").map(String::as_str) != Some("rt-0") {
            return reply(400, r#"{"error":"invalid_grant"}"#);
        }
        match n {
            1 => reply(200, "<html>Service Unavailable</html>"),
            2 => reply(200, "{}"),
            3 => reply(200, r#"{"access_token":42}"#),
            4 => reply(200, r#"{"access_token":"at-x","expires_in":"soon"}"#),
            5 => reply(503, r#"{"error":"temporarily_unavailable"}"#),
            6 => {
                hang2.fetch_add(1, Ordering::SeqCst);
                Box::pin(async {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    (200, String::new())
                })
            }
            _ => reply(
                200,
                r#"{"access_token":"at-good","refresh_token":"rt-1","expires_in":3600}"#,
            ),
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let db_at = backend.database(dir.path(), "vault").await;
    let clock = Arc::new(OffsetClock::default());
    let vault = vault_at(
        &db_at.location_path(),
        Arc::clone(&clock),
        // Bounds each token call; generous so the answered calls never hit it on a loaded
        // machine, while the hung one (an hour) does.
        Duration::from_secs(5),
    )
    .await;
    vault
        .register_provider(
            fake.provider("acme")
                .with_subject(SubjectSource::TokenResponse {
                    pointers: vec!["/sub".into()],
                }),
        )
        .await
        .unwrap();
    let before = consent(&vault, "user-1", "acme", &["api"]).await;
    clock.advance(Duration::from_secs(3600));

    for _ in 0..4 {
        let err = vault.ensure_fresh("user-1", "acme").await.unwrap_err();
        assert!(matches!(err, VaultError::MalformedResponse { .. }), "{err}");
        assert!(!err.to_string().contains("rt-0") && !err.to_string().contains("at-x"));
    }
    let err = vault.ensure_fresh("user-1", "acme").await.unwrap_err();
    assert!(
        matches!(
            err,
            VaultError::TokenEndpoint {
                status: 503,
                class: FailureClass::ServerError,
                ..
            }
        ),
        "{err}"
    );

    let err = vault.ensure_fresh("user-1", "acme").await.unwrap_err();
    assert!(
        matches!(
            err,
            VaultError::Transport {
                timed_out: true,
                ..
            }
        ),
        "{err}"
    );
    // The hung request was cut by the vault's timeout (`timed_out`), not answered.
    assert_eq!(hang.load(Ordering::SeqCst), 1);

    let unchanged = vault.account("user-1", "acme").await.unwrap();
    assert_eq!(
        unchanged, before,
        "a failed refresh changed the stored account"
    );
    // The original refresh token is intact: the next refresh presents it and succeeds.
    let after = vault.ensure_fresh("user-1", "acme").await.unwrap();
    assert_eq!(after.token_version, before.token_version + 1);
    assert_eq!(fake.request(fake.count() - 1)["refresh_token"], "rt-0");
}

/// invalid_grant while the store already holds a newer refresh token is a lost race (the
/// account changed under the refresh): re-read, not revocation. Refreshes of one account are
/// serialized across processes by the store's refresh lock, so the newer token here comes from
/// a re-consent in process A while process B's refresh is in flight (a consent does not wait
/// for the refresh lock).
async fn lost_race_is_not_revocation(backend: Backend) {
    let gate = Arc::new(tokio::sync::Notify::new());
    let gate2 = Arc::clone(&gate);
    let fake = FakeTokenEndpoint::start(move |n, form| {
        if form.contains_key("code") {
            return reply(200, r#"{"access_token":"at-0","refresh_token":"rt-0","expires_in":60,"sub":"u-1"}"#);
        }
        match n {
            // Process B's refresh arrives first and is held until A has rotated.
            1 => {
                let gate = Arc::clone(&gate2);
                Box::pin(async move {
                    gate.notified().await;
                    (400, r#"{"error":"invalid_grant","error_description":"refresh token already used"}"#.to_owned())
                })
            }
            _ => reply(200, r#"{"access_token":"at-1","refresh_token":"rt-1","expires_in":3600}"#),
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let db_at = backend.database(dir.path(), "vault").await;
    let path = db_at.location_path();
    let clock = Arc::new(OffsetClock::default());
    let provider = fake
        .provider("acme")
        .with_subject(SubjectSource::TokenResponse {
            pointers: vec!["/sub".into()],
        });
    let a = vault_at(&path, Arc::clone(&clock), Duration::from_secs(5)).await;
    a.register_provider(provider.clone()).await.unwrap();
    let b = vault_at(&path, Arc::clone(&clock), Duration::from_secs(5)).await;
    b.register_provider(provider).await.unwrap();
    let before = consent(&a, "user-1", "acme", &["api"]).await;
    clock.advance(Duration::from_secs(3600));

    let b_task = tokio::spawn(async move { b.ensure_fresh("user-1", "acme").await });
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while fake.count() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "process B's refresh never reached the token endpoint"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let a_result = consent(&a, "user-1", "acme", &["api"]).await;
    assert!(a_result.token_version > before.token_version);
    gate.notify_one();
    let b_result = b_task
        .await
        .unwrap()
        .expect("a lost race must not be an error");
    assert_eq!(b_result.status, AccountStatus::Active);
    assert_eq!(b_result.token_version, a_result.token_version);
    assert_eq!(
        a.account("user-1", "acme").await.unwrap().status,
        AccountStatus::Active
    );
}
