//! Provider configurations persist in the vault's database (SQLite and PostgreSQL): a second
//! vault opened on the same database with the same key has them (and refreshes and calls with them, against the real OAuth
//! server), the client secret is sealed (absent from the file bytes, -wal included), a wrong key
//! still fails at open, and a tampered row is a typed error until the provider is registered again.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chain_runtime::test_util::backend::{Backend, TestDatabase};
use chain_runtime::vault::{OffsetClock, Vault, VaultError, VaultKey, VaultOptions};
use support::{CLIENT_ID, CONNECTOR, Harness, connect};

chain_runtime::backend_tests!(
    a_second_vault_on_the_same_file_has_the_provider,
    the_client_secret_is_sealed_and_re_registering_replaces,
    a_wrong_key_fails_at_open,
);

const KEY: [u8; 32] = [42; 32];

async fn open(path: &Path, key: [u8; 32], clock: &Arc<OffsetClock>) -> Result<Vault, VaultError> {
    let options = VaultOptions {
        clock: Arc::clone(clock) as _,
        ..VaultOptions::default()
    };
    TestDatabase::at(path)
        .open_vault(VaultKey::from_bytes(key), options)
        .await
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// The database's bytes: for SQLite the file and its -wal and -shm companions, concatenated;
/// for PostgreSQL every table's rows as text.
async fn file_bytes(db: &Path) -> Vec<u8> {
    let db = TestDatabase::at(db);
    if db.backend == Backend::Postgres {
        return db.all_text().await.into_bytes();
    }
    let db = db.location_path();
    let mut all = Vec::new();
    for suffix in ["", "-wal", "-shm"] {
        let path = format!("{}{suffix}", db.display());
        if let Ok(bytes) = std::fs::read(&path) {
            all.extend(bytes);
        }
    }
    all
}

fn sql(db: &Path, statement: &str) {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.execute_batch(statement).unwrap();
}

/// A second vault on the same file (as another process would open it) registers nothing and
/// still has the provider: it refreshes an expired token and calls the API with it, and runs a
/// whole new consent.
async fn a_second_vault_on_the_same_file_has_the_provider(backend: Backend) {
    let h = Harness::start().await;
    let dir = tempfile::tempdir().unwrap();
    let db_at = backend.database(dir.path(), "vault").await;
    let db = db_at.location_path();
    let clock = Arc::new(OffsetClock::default());
    let first = h.vault(&db, KEY, Arc::clone(&clock)).await;
    connect(&first, "user-1", "alice", &["openid", "api"]).await;
    drop(first);

    let second = open(&db, KEY, &clock).await.unwrap();
    assert_eq!(second.connectors(), [CONNECTOR]);
    assert_eq!(second.provider_name(CONNECTOR).unwrap(), CONNECTOR);
    // The access token expired: the refresh uses the stored token URL and client secret (the
    // server authenticates the client), then the call goes out with the new token.
    clock.advance(Duration::from_secs(3600));
    let before = h.proxy.refreshes();
    let response = second
        .client("user-1", CONNECTOR)
        .get(h.userinfo_url())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(h.proxy.refreshes(), before + 1, "exactly one refresh");
    // Consent too: authorize URL, client id, redirect URI and introspection all came back.
    let bob = connect(&second, "user-2", "bob", &["api"]).await;
    assert_eq!(bob.upstream_subject, "bob");
}

/// The client secret is sealed: neither the first nor a replacing secret is anywhere in the
/// file bytes (WAL included), while the plain fields are (so the search looks at the right
/// bytes). Re-registering replaces the stored row, as a fresh vault shows.
async fn the_client_secret_is_sealed_and_re_registering_replaces(backend: Backend) {
    let h = Harness::start().await;
    let dir = tempfile::tempdir().unwrap();
    let db_at = backend.database(dir.path(), "vault").await;
    let db = db_at.location_path();
    let clock = Arc::new(OffsetClock::default());
    let vault = h.vault(&db, KEY, Arc::clone(&clock)).await;
    connect(&vault, "user-1", "alice", &["api"]).await;

    let bytes = file_bytes(&db).await;
    assert!(
        contains(&bytes, CLIENT_ID.as_bytes()),
        "the configuration row is in the file"
    );
    assert!(contains(&bytes, h.proxy.base.as_bytes()));
    assert!(!contains(&bytes, h.server.client_secret.as_bytes()));

    let replaced = "cs-replacement-secret-not-known-to-the-server";
    vault
        .register_provider(h.provider_with_secret(replaced))
        .await
        .unwrap();
    let bytes = file_bytes(&db).await;
    assert!(!contains(&bytes, replaced.as_bytes()));
    assert!(!contains(&bytes, h.server.client_secret.as_bytes()));
    let rows = TestDatabase::at(&db)
        .all_text()
        .await
        .lines()
        .filter(|l| l.starts_with("vault_providers\t"))
        .count();
    assert_eq!(rows, 1);

    // A fresh vault has the replacement: the server refuses that secret.
    let fresh = open(&db, KEY, &clock).await.unwrap();
    clock.advance(Duration::from_secs(3600));
    let err = fresh.ensure_fresh("user-1", CONNECTOR).await.unwrap_err();
    assert!(matches!(err, VaultError::InvalidClient { .. }), "{err}");
    // And back.
    fresh.register_provider(h.provider()).await.unwrap();
    let again = open(&db, KEY, &clock).await.unwrap();
    again.ensure_fresh("user-1", CONNECTOR).await.unwrap();
}

/// Stored providers do not weaken the key check: another key fails at open.
async fn a_wrong_key_fails_at_open(backend: Backend) {
    let h = Harness::start().await;
    let dir = tempfile::tempdir().unwrap();
    let db_at = backend.database(dir.path(), "vault").await;
    let db = db_at.location_path();
    let clock = Arc::new(OffsetClock::default());
    drop(h.vault(&db, KEY, Arc::clone(&clock)).await);
    let err = open(&db, [7; 32], &clock).await.unwrap_err();
    assert!(matches!(err, VaultError::WrongKey), "{err}");
    open(&db, KEY, &clock).await.unwrap();
}

/// Editing the sealed secret, editing the plain configuration (pointing the token endpoint
/// elsewhere) or copying the secret into another connector's row: the connector is refused
/// with a typed error that shows no secret. Registering again repairs it.
#[tokio::test]
async fn a_tampered_provider_row_is_a_typed_error() {
    let h = Harness::start().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("vault.db");
    let clock = Arc::new(OffsetClock::default());
    let vault = h.vault(&db, KEY, Arc::clone(&clock)).await;
    connect(&vault, "user-1", "alice", &["api"]).await;
    drop(vault);

    type Tamper = Box<dyn Fn(&rusqlite::Connection)>;
    let tampers: [(&str, Tamper); 2] = [
        (
            "one bit of the sealed secret flipped",
            Box::new(|conn| {
                let mut blob: Vec<u8> = conn
                    .query_row(
                        "SELECT client_secret FROM vault_providers WHERE connector = ?1",
                        [CONNECTOR],
                        |r| r.get(0),
                    )
                    .unwrap();
                blob[30] ^= 0x01;
                let n = conn
                    .execute(
                        "UPDATE vault_providers SET client_secret = ?1 WHERE connector = ?2",
                        rusqlite::params![blob, CONNECTOR],
                    )
                    .unwrap();
                assert_eq!(n, 1);
            }),
        ),
        (
            "the token endpoint pointed elsewhere",
            Box::new(|conn| {
                let n = conn
                    .execute(
                        "UPDATE vault_providers SET config = replace(config, \
                         '\"token_url\":\"http://127.0.0.1', '\"token_url\":\"http://evil.invalid') \
                         WHERE connector = ?1 AND config LIKE '%\"token_url\":\"http://127.0.0.1%'",
                        [CONNECTOR],
                    )
                    .unwrap();
                assert_eq!(n, 1);
            }),
        ),
    ];
    for (what, tamper) in tampers {
        tamper(&rusqlite::Connection::open(&db).unwrap());
        // The key is right: the vault opens, but the tampered connector is refused.
        let vault = open(&db, KEY, &clock).await.unwrap();
        let err = vault
            .consent_link("user-1", CONNECTOR, &["api"])
            .await
            .unwrap_err();
        assert!(
            matches!(&err, VaultError::ProviderTampered { connector } if connector == CONNECTOR),
            "{what}: {err}"
        );
        let err = vault
            .client("user-1", CONNECTOR)
            .get(h.userinfo_url())
            .send()
            .await
            .unwrap_err();
        assert!(
            matches!(err, VaultError::ProviderTampered { .. }),
            "{what}: {err}"
        );
        let text = format!("{err} {err:?}");
        assert!(!text.contains(&h.server.client_secret), "{text}");
        assert!(text.contains("register the provider again"), "{text}");

        // Registering again replaces the bad row, for this vault and the next.
        vault.register_provider(h.provider()).await.unwrap();
        vault.ensure_fresh("user-1", CONNECTOR).await.unwrap();
        let repaired = open(&db, KEY, &clock).await.unwrap();
        repaired.ensure_fresh("user-1", CONNECTOR).await.unwrap();
    }

    // The intact row copied under another connector name (configuration adjusted to match):
    // the secret does not open there.
    sql(
        &db,
        "INSERT INTO vault_providers (connector, config, client_secret, updated_at) \
         SELECT 'copy', replace(config, '\"connector\":\"idp\"', '\"connector\":\"copy\"'), \
         client_secret, updated_at FROM vault_providers WHERE connector = 'idp'",
    );
    let vault = open(&db, KEY, &clock).await.unwrap();
    assert_eq!(vault.connectors(), ["copy", CONNECTOR]);
    let err = vault
        .consent_link("user-1", "copy", &["api"])
        .await
        .unwrap_err();
    assert!(
        matches!(&err, VaultError::ProviderTampered { connector } if connector == "copy"),
        "{err}"
    );
    // The intact connector still works.
    vault.ensure_fresh("user-1", CONNECTOR).await.unwrap();
}
