//! A provider described only by a user rule set, classified end to end: a chain step calls a
//! local axum server through the connector (`ctx.http()`), with a token the vault got from the
//! sandbox's OAuth emulator, and the connector's provider configuration carries the rules
//! (loaded from TOML). Every verdict below is one only the rules can produce: without them the
//! standards path reads these bodies as plain 400/403 refusals.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::http::{HeaderMap, StatusCode};
use chain_runtime::audit::SqliteAuditStore;
use chain_runtime::classify::{FailureClass, RequestKind, RuleSet, classify, classify_with};
use chain_runtime::engine::Engine;
use chain_runtime::journal::{RunState, SqliteJournal};
use chain_runtime::prelude::*;
use chain_runtime::sandbox::Salesforce;
use chain_runtime::vault::{AccountStatus, Vault, VaultKey, VaultOptions};

/// The test principal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct User(pub String);

impl Principal for User {
    fn identifier(&self) -> String {
        self.0.clone()
    }
}

#[derive(Deserialize)]
struct Counted {
    count: u64,
}

/// Reads a count from the acme API.
#[step(connector = "acme", scopes = ["api"], read)]
async fn read_acme(ctx: &StepCtx<User>, url: String) -> Result<u64, StepError> {
    let response = ctx.http()?.get(url).send().await?;
    Ok(response.json::<Counted>()?.count)
}

/// One acme read.
#[chain(principal = User)]
async fn acme_chain(ctx: &ChainCtx<User>, url: String) -> Result<u64, ChainError> {
    Ok(read_acme(ctx, url).await?)
}

const RULES: &str = r#"
code_pointers = ["/fault/kind"]
scope_pointers = ["/fault/needs"]
reset_headers = ["X-Acme-Reset"]

[codes]
ACME_NEEDS_SCOPE = "insufficient_scope"
ACME_SLOW_DOWN = "rate_limited"
ACME_TOKEN_GONE = "grant_revoked"
"#;

/// The acme API: `/scope` lacks a scope, `/slow` is rate limited once (400 + reset header)
/// then answers, `/gone` says the grant is revoked.
async fn start_acme(slow_calls: Arc<AtomicUsize>) -> String {
    use axum::routing::get;
    let app = axum::Router::new()
        .route(
            "/scope",
            get(|| async {
                (
                    StatusCode::FORBIDDEN,
                    r#"{"fault":{"kind":"ACME_NEEDS_SCOPE","needs":["acme.admin"]}}"#,
                )
            }),
        )
        .route(
            "/slow",
            get(move || {
                let n = slow_calls.fetch_add(1, Ordering::SeqCst);
                async move {
                    let mut headers = HeaderMap::new();
                    if n == 0 {
                        headers.insert("x-acme-reset", "1".parse().unwrap());
                        (
                            StatusCode::BAD_REQUEST,
                            headers,
                            r#"{"fault":{"kind":"ACME_SLOW_DOWN"}}"#,
                        )
                    } else {
                        (StatusCode::OK, headers, r#"{"count":3}"#)
                    }
                }
            }),
        )
        .route(
            "/gone",
            get(|| async {
                (
                    StatusCode::FORBIDDEN,
                    r#"{"fault":{"kind":"ACME_TOKEN_GONE"}}"#,
                )
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_described_only_by_rules_is_classified_through_the_connector() {
    let rules = RuleSet::from_toml(RULES).unwrap();
    // The same bodies without the rules: plain refusals.
    for body in [
        r#"{"fault":{"kind":"ACME_NEEDS_SCOPE","needs":["acme.admin"]}}"#,
        r#"{"fault":{"kind":"ACME_SLOW_DOWN"}}"#,
        r#"{"fault":{"kind":"ACME_TOKEN_GONE"}}"#,
    ] {
        let c = classify(
            "acme",
            RequestKind::Api,
            403,
            &HeaderMap::new(),
            body.as_bytes(),
        );
        assert_eq!(c.class, FailureClass::Forbidden, "{body}");
        let c = classify_with(
            "acme",
            Some(&rules),
            RequestKind::Api,
            403,
            &HeaderMap::new(),
            body.as_bytes(),
        );
        assert_ne!(c.class, FailureClass::Forbidden, "{body}");
    }

    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("acme.db");
    let idp = Salesforce::start().await.unwrap();
    let vault = Vault::open_sqlite(&db, VaultKey::generate(), VaultOptions::default())
        .await
        .unwrap();
    vault
        .register_provider(
            idp.provider_config("acme")
                .unwrap()
                .with_provider("acme")
                .with_classification_rules(rules),
        )
        .await
        .unwrap();
    let subject = idp.add_user("alice@acme.example");
    idp.approve_as(&subject).unwrap();
    idp.connect(&vault, "alice", "acme", &["api", "refresh_token"])
        .await
        .unwrap();
    let runs = Arc::new(SqliteJournal::open(&db).await.unwrap());
    let audit = Arc::new(SqliteAuditStore::open(&db).await.unwrap());
    let engine = Engine::new(runs, audit, Arc::new(vault.clone()));
    engine.register::<acme_chain>();

    let slow_calls = Arc::new(AtomicUsize::new(0));
    let api = start_acme(slow_calls.clone()).await;
    let user = User("alice".into());

    // A missing scope named by the rules' pointer: suspended for consent to that scope.
    let report = engine
        .start::<acme_chain>(user.clone(), format!("{api}/scope"))
        .await
        .unwrap();
    match &report.state {
        RunState::Suspended {
            connector,
            consent_scopes,
            ..
        } => {
            assert_eq!(connector, "acme");
            assert!(
                consent_scopes.iter().any(|s| s == "acme.admin"),
                "{consent_scopes:?}"
            );
        }
        other => panic!("the scope run ended {other:?}"),
    }

    // A rate limit the rules recognise on a 400, with their reset header: waited out, retried.
    let report = engine
        .start::<acme_chain>(user.clone(), format!("{api}/slow"))
        .await
        .unwrap();
    match &report.state {
        RunState::Completed { output } => assert_eq!(output, &serde_json::json!(3)),
        other => panic!("the slow run ended {other:?}"),
    }
    assert_eq!(slow_calls.load(Ordering::SeqCst), 2);

    // A revocation the rules recognise: the account now needs a new consent.
    let report = engine
        .start::<acme_chain>(user.clone(), format!("{api}/gone"))
        .await
        .unwrap();
    assert!(
        matches!(report.state, RunState::Suspended { .. }),
        "the gone run ended {:?}",
        report.state
    );
    let account = vault.account("alice", "acme").await.unwrap();
    assert_eq!(account.status, AccountStatus::NeedsReauthorization);
}

/// What the test token endpoint answers, set by the test.
type Reply = Arc<std::sync::Mutex<(u16, &'static str)>>;

/// A token endpoint that answers every request with the current `reply`.
async fn start_token_endpoint(reply: Reply) -> String {
    let app = axum::Router::new().route(
        "/token",
        axum::routing::post(move || {
            let (status, body) = *reply.lock().unwrap();
            async move {
                (
                    StatusCode::from_u16(status).unwrap(),
                    [("content-type", "application/json")],
                    body,
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/token")
}

/// The vault's refresh path classifies token-endpoint errors with the provider's rules and the
/// classifier's one token-code table: a code only the rules know revokes the grant; a code the
/// table does not give this provider (`token_revoked` is Slack's) is transient, even inside an
/// HTTP 200, and the account stays usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_refresh_path_classifies_with_the_providers_rules_and_the_one_code_table() {
    const TOKEN_RULES: &str = r#"
code_pointers = ["/error"]

[token_codes]
acme_session_ended = "grant_revoked"
"#;
    let idp = Salesforce::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let vault = Vault::open_sqlite(
        &dir.path().join("acme.db"),
        VaultKey::generate(),
        VaultOptions::default(),
    )
    .await
    .unwrap();
    let config = idp
        .provider_config("acme")
        .unwrap()
        .with_provider("acme")
        .with_classification_rules(RuleSet::from_toml(TOKEN_RULES).unwrap());
    vault.register_provider(config.clone()).await.unwrap();
    let subject = idp.add_user("alice@acme.example");
    idp.approve_as(&subject).unwrap();
    idp.connect(&vault, "alice", "acme", &["api", "refresh_token"])
        .await
        .unwrap();

    // The same provider, its token endpoint now answering with errors.
    let mut broken = config.clone();
    let reply: Reply = Arc::new(std::sync::Mutex::new((200, r#"{"error":"token_revoked"}"#)));
    broken.token_url = start_token_endpoint(reply.clone()).await.parse().unwrap();
    vault.register_provider(broken).await.unwrap();

    let version = vault.account("alice", "acme").await.unwrap().token_version;
    let transient = vault.refresh_after_expiry("alice", "acme", version).await;
    assert!(transient.is_err(), "{transient:?}");
    let account = vault.account("alice", "acme").await.unwrap();
    assert_eq!(
        account.status,
        AccountStatus::Active,
        "an undocumented code is not a revocation: {transient:?}"
    );

    *reply.lock().unwrap() = (400, r#"{"error":"acme_session_ended"}"#);
    let revoked = vault.refresh_after_expiry("alice", "acme", version).await;
    assert!(revoked.is_err(), "{revoked:?}");
    let account = vault.account("alice", "acme").await.unwrap();
    assert_eq!(
        account.status,
        AccountStatus::NeedsReauthorization,
        "the rules say `acme_session_ended` revokes: {revoked:?}"
    );
}
