//! The leak test: a full flow with tracing at TRACE captured; then the captured logs, the
//! database (the SQLite files including -wal; every PostgreSQL table's text), every error
//! message and every Debug output are searched for every token and secret used (access and
//! refresh tokens, id tokens, client secrets, the vault key, PKCE verifiers and authorization
//! codes). None may appear.

mod support;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use chain_runtime::test_util::backend::Backend;
use chain_runtime::vault::{OffsetClock, TokenKind, VaultKey};
use support::{CONNECTOR, Harness, LogBuffer, authorize};

chain_runtime::backend_tests!(no_secret_in_logs_database_errors_or_debug);

/// The process's log capture (one global subscriber for both backends' runs).
fn logs() -> LogBuffer {
    static LOGS: std::sync::OnceLock<LogBuffer> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = LogBuffer::default();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("trace"))
            .with_writer(logs.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::set_global_default(subscriber).unwrap();
        logs
    })
    .clone()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

async fn no_secret_in_logs_database_errors_or_debug(backend: Backend) {
    let logs = logs();

    let key_bytes: [u8; 32] = *b"leak-test-vault-key-32-bytes!!!!";
    let h = Harness::start().await;
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(OffsetClock::default());
    let test_db = backend.database(dir.path(), "vault").await;
    let db = test_db.location_path();
    let vault = h.vault(&db, key_bytes, Arc::clone(&clock)).await;
    vault
        .register_provider(h.provider().with_refresh_margin(Duration::from_secs(30)))
        .await
        .unwrap();

    let mut outputs: Vec<String> = Vec::new();
    let mut record_err = |e: &dyn std::fmt::Debug, d: String| outputs.push(format!("{d} | {e:?}"));

    // Consent (narrowed), API calls, proactive and forced refresh, introspection.
    let link = vault
        .consent_link("user-1", CONNECTOR, &["openid", "api", "write"])
        .await
        .unwrap();
    let (state, code) = authorize(&link.url, "alice", Some("write")).await;
    let account = vault
        .complete_consent("user-1", &state, &code)
        .await
        .unwrap();
    let client = vault.client("user-1", CONNECTOR);
    let response = client.get(h.userinfo_url()).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let response_debug = format!("{response:?}");
    clock.advance(Duration::from_secs(100));
    client.get(h.userinfo_url()).send().await.unwrap();
    client.refresh_after_expiry().await.unwrap();
    let introspection = vault
        .introspect("user-1", CONNECTOR, TokenKind::Access)
        .await
        .unwrap();

    // Errors: replayed state, forged state, identity drift, wrong client secret, wrong vault key,
    // a key from a malformed env var, a missing account.
    let e = vault
        .complete_consent("user-1", &state, &code)
        .await
        .unwrap_err();
    record_err(&e, e.to_string());
    let e = vault
        .complete_consent("user-1", "forged", "forged-code")
        .await
        .unwrap_err();
    record_err(&e, e.to_string());
    let link2 = vault
        .consent_link("user-1", CONNECTOR, &["openid", "api"])
        .await
        .unwrap();
    let (state2, code2) = authorize(&link2.url, "mallory", None).await;
    let e = vault
        .complete_consent("user-1", &state2, &code2)
        .await
        .unwrap_err();
    record_err(&e, e.to_string());
    let wrong_secret = "cs-wrong-leak-test-secret";
    vault
        .register_provider(
            h.provider_with_secret(wrong_secret)
                .with_refresh_margin(Duration::from_secs(30)),
        )
        .await
        .unwrap();
    clock.advance(Duration::from_secs(3600));
    let e = client.get(h.userinfo_url()).send().await.unwrap_err();
    record_err(&e, e.to_string());
    vault
        .register_provider(h.provider().with_refresh_margin(Duration::from_secs(30)))
        .await
        .unwrap();
    client.get(h.userinfo_url()).send().await.unwrap();
    let e = test_db
        .open_vault(VaultKey::from_bytes([1; 32]), Default::default())
        .await
        .unwrap_err();
    record_err(&e, e.to_string());
    let e = vault
        .client("user-2", CONNECTOR)
        .get(h.userinfo_url())
        .send()
        .await
        .unwrap_err();
    record_err(&e, e.to_string());
    let bad_key = base64::engine::general_purpose::STANDARD.encode(&key_bytes[..31]);
    let key_path = dir.path().join("bad.key");
    std::fs::write(&key_path, &bad_key).unwrap();
    let e = VaultKey::from_file(&key_path).unwrap_err();
    record_err(&e, e.to_string());

    // Debug output of everything a caller can hold.
    outputs.push(format!(
        "{vault:?} {client:?} {account:?} {link:?} {introspection:?} {response_debug}"
    ));
    outputs.push(format!("{:?}", VaultKey::from_bytes(key_bytes)));
    outputs.push(format!("{:?}", h.provider()));
    outputs.push(format!(
        "{:?}",
        vault.account("user-1", CONNECTOR).await.unwrap()
    ));

    // Disconnect (revocation) last.
    vault.disconnect("user-1", CONNECTOR).await.unwrap();

    // Everything secret that was used on the wire, plus the key.
    let mut secrets: Vec<Vec<u8>> = h
        .proxy
        .secrets()
        .into_iter()
        .map(String::into_bytes)
        .collect();
    assert!(
        secrets.len() >= 10,
        "the proxy recorded too few secrets: {}",
        secrets.len()
    );
    secrets.push(h.server.client_secret.clone().into_bytes());
    secrets.push(wrong_secret.as_bytes().to_vec());
    secrets.push(code.clone().into_bytes());
    secrets.push(code2.clone().into_bytes());
    secrets.push(key_bytes.to_vec());
    secrets.push(
        base64::engine::general_purpose::STANDARD
            .encode(key_bytes)
            .into_bytes(),
    );
    secrets.push(bad_key.into_bytes());
    secrets.push(
        key_bytes
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
            .into_bytes(),
    );

    // Read the database files while the vault is still open (the WAL holds recent pages) and after;
    // on PostgreSQL, every row of every table as text (bytea included).
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    let read_files = |files: &mut Vec<(String, Vec<u8>)>| {
        for suffix in ["", "-wal", "-shm"] {
            let p = dir.path().join(format!("vault.db{suffix}"));
            if let Ok(bytes) = std::fs::read(&p) {
                files.push((p.display().to_string(), bytes));
            }
        }
    };
    if backend == Backend::Sqlite {
        read_files(&mut files);
        assert!(
            files.iter().any(|(name, _)| name.ends_with("-wal")),
            "expected a WAL file"
        );
    } else {
        let text = test_db.all_text().await;
        files.push(("the PostgreSQL tables".into(), text.into_bytes()));
    }
    drop(client);
    drop(vault);
    if backend == Backend::Sqlite {
        read_files(&mut files);
    } else {
        files.push((
            "the PostgreSQL tables after disconnect".into(),
            test_db.all_text().await.into_bytes(),
        ));
    }

    let log_text = logs.text();
    assert!(
        log_text.contains("vault consent completed"),
        "the log capture does not work"
    );
    assert!(log_text.contains("vault access token refreshed"));
    assert!(
        files.iter().any(|(_, b)| contains(b, b"alice")),
        "the database search does not work"
    );

    for (i, secret) in secrets.iter().enumerate() {
        let shown = format!("#{i}, {} bytes", secret.len());
        assert!(
            !contains(log_text.as_bytes(), secret),
            "a secret ({shown}) appears in the logs"
        );
        for (name, bytes) in &files {
            assert!(
                !contains(bytes, secret),
                "a secret ({shown}) appears in {name}"
            );
        }
        for out in &outputs {
            assert!(
                !contains(out.as_bytes(), secret),
                "a secret ({shown}) appears in an error or Debug output: {out}"
            );
        }
    }
}
