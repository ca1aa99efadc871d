//! The whole-chain leak test. Every scenario of the example is played through the [`Demo`]
//! harness (engine, vault, audit trail and run journal on one SQLite file per scenario) with
//! tracing captured at TRACE for every crate. Then everything the runs produced is searched
//! for every secret that existed during them:
//!
//! * haystacks: the captured logs; each [`Report`] as JSON and as `Debug`; the `Display` and
//!   `Debug` of every error we can provoke (resume of a finished run, forged and replayed
//!   consent callbacks, a wrong vault key, unknown runs, the `StepError`s in the journal, the
//!   re-consent refused for identity drift); the `Debug` of every `RunRecord`, `RunState`,
//!   journal entry, compensation and alert, of the audit records and of the vault's accounts;
//!   the audit trail's JSON Lines export; the stdout and stderr of the built `chainctl` for
//!   `--json runs list`, `runs show` (table and JSON), `audit history` and `audit export`;
//!   and the raw bytes of each SQLite file with its `-wal` and `-shm`, read while open and
//!   after everything is closed;
//! * needles: every authorization code, access token and refresh token (rotated ones
//!   included) the three emulators issued, every PKCE `code_verifier` and client secret
//!   presented at their token endpoints, their client secret
//!   ([`chain_runtime::sandbox::Emulator::issued_secrets`]), and the vault key as raw bytes,
//!   standard and URL-safe base64 and lower/upper-case hex.
//!
//! Self-checks make sure the test cannot pass vacuously: the log capture, the database read
//! and the chainctl runs all saw real content; the needle list holds a PKCE verifier
//! (matched against the `code_challenge` of a consent link), a rotated refresh token and
//! a refreshed access token; and every needle planted into a copy of each haystack is found.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use chain_runtime::journal::EntryResult;
use chain_runtime::prelude::*;
use chain_runtime::sandbox::{Emulator, Provider, pkce_challenge};
use chain_runtime::vault::{Vault, VaultKey, VaultOptions};
use examples::demo::{CONSENT_SCOPES, Demo, OPPORTUNITY, Scenario};
use examples::escalate::UserId;
use secrecy::ExposeSecret as _;
use test_support::logs::LogBuffer;

/// One named thing a run produced.
struct Haystack {
    name: String,
    bytes: Vec<u8>,
}

/// One secret to look for; `what` says its kind, never its value.
struct Needle {
    what: String,
    bytes: Vec<u8>,
}

/// The shortest needle: the search indexes needles by their first `PREFIX` bytes.
const PREFIX: usize = 8;

/// A multi-needle search: needles indexed by their first bytes, each haystack scanned once.
struct Finder<'n> {
    by_prefix: HashMap<&'n [u8], Vec<&'n Needle>>,
}

impl<'n> Finder<'n> {
    fn new(needles: &'n [Needle]) -> Self {
        let mut by_prefix: HashMap<&[u8], Vec<&Needle>> = HashMap::new();
        for n in needles {
            assert!(
                n.bytes.len() >= PREFIX,
                "a needle ({}) is shorter than {PREFIX} bytes; the search would be meaningless",
                n.what
            );
            by_prefix.entry(&n.bytes[..PREFIX]).or_default().push(n);
        }
        Self { by_prefix }
    }

    /// The needles found in `haystack`, each once.
    fn find(&self, haystack: &[u8]) -> Vec<&'n Needle> {
        let mut found: Vec<&Needle> = Vec::new();
        if haystack.len() < PREFIX {
            return found;
        }
        for i in 0..=haystack.len() - PREFIX {
            if let Some(candidates) = self.by_prefix.get(&haystack[i..i + PREFIX]) {
                for n in candidates {
                    if haystack[i..].starts_with(&n.bytes)
                        && !found.iter().any(|f| std::ptr::eq(*f, *n))
                    {
                        found.push(n);
                    }
                }
            }
        }
        found
    }
}

fn text(name: impl Into<String>, s: impl Into<String>) -> Haystack {
    Haystack {
        name: name.into(),
        bytes: s.into().into_bytes(),
    }
}

fn err_text(name: &str, e: &dyn std::error::Error) -> Haystack {
    let mut chain = format!("{e} | {e:?}");
    let mut source = e.source();
    while let Some(s) = source {
        chain.push_str(&format!(" | caused by: {s} | {s:?}"));
        source = s.source();
    }
    text(name, chain)
}

fn read_db_files(db: &Path, when: &str, out: &mut Vec<Haystack>) {
    for file in test_support::db::read_db_files(db) {
        out.push(Haystack {
            name: format!("{} ({when})", file.name),
            bytes: file.bytes,
        });
    }
}

/// Runs the built chainctl; returns stdout + stderr as one haystack and stdout alone.
fn chainctl(db: &Path, args: &[&str]) -> (Haystack, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_chainctl"))
        .env_remove("CHAIN_DB")
        .arg("--db")
        .arg(db)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "chainctl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut bytes = out.stdout;
    bytes.extend_from_slice(&out.stderr);
    (
        Haystack {
            name: format!("chainctl {} on {}", args.join(" "), db.display()),
            bytes,
        },
        stdout,
    )
}

fn emulator_secrets<P: Provider>(e: &Emulator<P>, scenario: &str, out: &mut Vec<Needle>) {
    for s in e.issued_secrets() {
        out.push(Needle {
            what: format!("{:?} secret #{} ({scenario})", e, out.len()),
            bytes: s.expose_secret().as_bytes().to_vec(),
        });
    }
}

fn secret_strings<P: Provider>(e: &Emulator<P>) -> Vec<String> {
    e.issued_secrets()
        .iter()
        .map(|s| s.expose_secret().to_owned())
        .collect()
}

/// What one run left behind, read through the library: the resume attempt, the run record
/// and state, the journal with its `StepError`s, the compensations and the audit history.
async fn run_haystacks(demo: &Demo, run_id: &str, name: &str) -> Vec<Haystack> {
    let mut haystacks = Vec::new();
    match demo.engine.resume(run_id).await {
        Err(e) => haystacks.push(err_text(&format!("resume of {name} run"), &e)),
        Ok(r) => haystacks.push(text(format!("resume of {name} run"), format!("{r:?}"))),
    }
    let record = demo.engine.run_status(run_id).await.unwrap();
    haystacks.push(text(
        format!("run record {name}"),
        format!("{record:?} {:?}", record.state),
    ));
    for entry in demo.runs.journal(run_id).await.unwrap() {
        if let Some(EntryResult::Err { error }) = &entry.result {
            haystacks.push(err_text(&format!("journal StepError {name}"), error));
        }
        haystacks.push(text(format!("journal entry {name}"), format!("{entry:?}")));
    }
    for c in demo.runs.compensations(run_id).await.unwrap() {
        if let Some(Some(error)) = &c.result {
            haystacks.push(err_text(&format!("compensation StepError {name}"), error));
        }
        haystacks.push(text(format!("compensation {name}"), format!("{c:?}")));
    }
    let history = demo.audit.run_history(run_id).await.unwrap();
    haystacks.push(text(
        format!("audit records {name}"),
        format!("{history:?}"),
    ));
    haystacks
}

/// What the built chainctl shows of one run: `runs show` (table and JSON) and its audit history.
fn chainctl_run_haystacks(db: &Path, run_id: &str) -> Vec<Haystack> {
    vec![
        chainctl(db, &["runs", "show", run_id]).0,
        chainctl(db, &["--json", "runs", "show", run_id]).0,
        chainctl(db, &["audit", "history", run_id]).0,
    ]
}

// --- A provider that echoes the caller's access token back. ---

/// The tokens the echo provider received (and sent back).
#[derive(Clone, Default)]
struct Echoed(Arc<Mutex<Vec<String>>>);

impl Echoed {
    fn note(&self, headers: &axum::http::HeaderMap) -> String {
        let token = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default()
            .to_owned();
        self.0.lock().unwrap().push(token.clone());
        token
    }
}

/// A local HTTP provider whose every answer contains the bearer token it was sent: refusals
/// with the token in an HTML page, in a JSON `message` and in the JSON `error` code itself,
/// and successes whose fields have the wrong type and quote the token.
async fn start_echo_provider(echoed: Echoed) -> String {
    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode, header};
    use axum::routing::get;
    async fn forbidden_json(State(e): State<Echoed>, h: HeaderMap) -> (StatusCode, String) {
        let t = e.note(&h);
        let body = format!(r#"{{"error":"{t}","message":"token {t} may not read this"}}"#);
        (StatusCode::FORBIDDEN, body)
    }
    async fn forbidden_html(
        State(e): State<Echoed>,
        h: HeaderMap,
    ) -> (StatusCode, [(header::HeaderName, &'static str); 1], String) {
        let t = e.note(&h);
        let body = format!("<html><body>Bearer {t} refused</body></html>");
        (
            StatusCode::FORBIDDEN,
            [(header::CONTENT_TYPE, "text/html")],
            body,
        )
    }
    async fn conflict_text(State(e): State<Echoed>, h: HeaderMap) -> (StatusCode, String) {
        let t = e.note(&h);
        (StatusCode::CONFLICT, t)
    }
    async fn wrong_type(State(e): State<Echoed>, h: HeaderMap) -> String {
        let t = e.note(&h);
        format!(r#"{{"count":"{t}"}}"#)
    }
    async fn wrong_type_nested(State(e): State<Echoed>, h: HeaderMap) -> String {
        let t = e.note(&h);
        format!(r#"{{"count":{{"{t}":["{t}"]}}}}"#)
    }
    async fn bad_syntax(State(e): State<Echoed>, h: HeaderMap) -> String {
        let t = e.note(&h);
        format!(r#"{{"count": {t}}}"#)
    }
    let app = axum::Router::new()
        .route("/forbidden-json", get(forbidden_json))
        .route("/forbidden-html", get(forbidden_html))
        .route("/conflict-text", get(conflict_text))
        .route("/wrong-type", get(wrong_type))
        .route("/wrong-type-nested", get(wrong_type_nested))
        .route("/bad-syntax", get(bad_syntax))
        .with_state(echoed);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

/// The shape a step expects from the echo provider.
#[derive(Debug, Deserialize)]
struct Counted {
    count: u64,
}

/// Reads a count from `url` with the run principal's Salesforce token.
#[step(connector = "salesforce", scopes = ["api"], read)]
async fn read_count(ctx: &StepCtx<UserId>, url: String) -> Result<u64, StepError> {
    let response = ctx.http()?.get(url).send().await?;
    let counted: Counted = response.json()?;
    Ok(counted.count)
}

/// One read from a provider that echoes tokens.
#[chain(principal = UserId)]
async fn echo_chain(ctx: &ChainCtx<UserId>, url: String) -> Result<u64, ChainError> {
    Ok(read_count(ctx, url).await?)
}

/// The echo provider's routes, each with the kind of failure the run must end in.
const ECHO_ROUTES: [(&str, &str); 6] = [
    ("/forbidden-json", "Forbidden"),
    ("/forbidden-html", "Forbidden"),
    ("/conflict-text", "Forbidden"),
    ("/wrong-type", "Runtime"),
    ("/wrong-type-nested", "Runtime"),
    ("/bad-syntax", "Runtime"),
];

/// The scenarios played (all but `crash`, which needs a child process and is covered by the
/// crash tests).
const SCENARIOS: [Scenario; 8] = [
    Scenario::Happy,
    Scenario::Expired,
    Scenario::Revoked,
    Scenario::MissingScope,
    Scenario::ScopeDropped,
    Scenario::Compensate,
    Scenario::Irreversible,
    Scenario::Drift,
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_anywhere_a_whole_chain_run_leaves_output() {
    let logs = LogBuffer::default();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("trace"))
        .with_writer(logs.clone())
        .with_ansi(false)
        .finish();
    tracing::subscriber::set_global_default(subscriber).unwrap();

    // A key whose bytes are not text, so the raw-bytes search means something.
    let key_bytes: [u8; 32] = std::array::from_fn(|i| (i as u8).wrapping_mul(73).wrapping_add(129));
    let dir = tempfile::tempdir().unwrap();

    let mut haystacks: Vec<Haystack> = Vec::new();
    let mut needles: Vec<Needle> = Vec::new();
    let mut dbs: Vec<PathBuf> = Vec::new();
    let mut run_ids: Vec<String> = Vec::new();
    // Self-check material.
    let mut verifier_challenges: Vec<String> = Vec::new();
    let mut rotated_refresh: Vec<Vec<u8>> = Vec::new();
    let mut refreshed_access: Vec<Vec<u8>> = Vec::new();
    let mut refreshes_seen = 0usize;
    let mut alerts_seen = 0usize;
    let mut resumed = false;
    let mut echo_runs = 0usize;

    for scenario in SCENARIOS {
        let name = scenario.name();
        let db = dir.path().join(format!("{name}.db"));
        let demo = Demo::start_with_key(&db, VaultKey::from_bytes(key_bytes))
            .await
            .unwrap();
        let report = demo.play(scenario).await.unwrap();
        refreshes_seen += report.refreshes;
        alerts_seen += report.alerts.len();
        resumed |= report
            .timeline
            .iter()
            .any(|t| t.starts_with("re-consented"));
        haystacks.push(text(
            format!("report {name} (JSON)"),
            serde_json::to_string_pretty(&report).unwrap(),
        ));
        haystacks.push(text(
            format!("report {name} (Debug)"),
            format!("{report:?}"),
        ));

        let alice = demo.user.0.clone();
        if scenario == Scenario::Happy {
            // A consent driven by hand: its verifier must be among the captured secrets, and
            // its code is replayed (and a forged one presented) to get the vault's errors.
            let link = demo
                .vault
                .consent_link(&alice, "jira", CONSENT_SCOPES[1].1)
                .await
                .unwrap();
            let challenge = link
                .url
                .query_pairs()
                .find(|(k, _)| k == "code_challenge")
                .map(|(_, v)| v.into_owned())
                .unwrap();
            verifier_challenges.push(challenge);
            let consent = demo.sandbox.jira.consent(link.url.as_str()).unwrap();
            let (state, code) = (consent.state.unwrap(), consent.code.unwrap());
            let account = demo
                .vault
                .complete_consent(&alice, &state, &code)
                .await
                .unwrap();
            haystacks.push(text(
                "consent link and account",
                format!("{link:?} {account:?}"),
            ));
            let e = demo
                .vault
                .complete_consent(&alice, &state, &code)
                .await
                .unwrap_err();
            haystacks.push(err_text("replayed consent callback", &e));
            let e = demo
                .vault
                .complete_consent(&alice, "forged-state-value", &code)
                .await
                .unwrap_err();
            haystacks.push(err_text("forged consent callback", &e));
            // A code that was issued and never exchanged.
            let link = demo
                .vault
                .consent_link(&alice, "slack", CONSENT_SCOPES[2].1)
                .await
                .unwrap();
            let unused = demo.sandbox.slack.consent(link.url.as_str()).unwrap();
            assert!(unused.code.is_some());
            let e = demo
                .vault
                .complete_consent(
                    &alice,
                    "another-forged-state",
                    unused.code.as_deref().unwrap(),
                )
                .await
                .unwrap_err();
            haystacks.push(err_text("forged state with a live code", &e));
            let e = Vault::open_sqlite(&db, VaultKey::from_bytes([7; 32]), VaultOptions::default())
                .await
                .unwrap_err();
            haystacks.push(err_text("vault opened with a wrong key", &e));
            let e = demo.engine.run_status("no-such-run").await.unwrap_err();
            haystacks.push(err_text("status of an unknown run", &e));
        }
        if scenario == Scenario::Expired {
            // Salesforce never rotates; make Jira (rotation with leeway) and Slack (immediate
            // rotation) refresh too, so rotated refresh tokens exist.
            for (connector, before) in [
                ("jira", secret_strings(&demo.sandbox.jira)),
                ("slack", secret_strings(&demo.sandbox.slack)),
            ] {
                let seen = demo
                    .vault
                    .account(&alice, connector)
                    .await
                    .unwrap()
                    .token_version;
                let account = demo
                    .vault
                    .refresh_after_expiry(&alice, connector, seen)
                    .await;
                haystacks.push(text(
                    format!("forced {connector} refresh"),
                    format!("{account:?}"),
                ));
                let after = if connector == "jira" {
                    secret_strings(&demo.sandbox.jira)
                } else {
                    secret_strings(&demo.sandbox.slack)
                };
                let new: Vec<String> = after.into_iter().filter(|s| !before.contains(s)).collect();
                if connector == "jira" {
                    assert_eq!(
                        new.len(),
                        2,
                        "a Jira refresh issues an access token and a rotated refresh token"
                    );
                    refreshed_access.push(new[0].clone().into_bytes());
                    rotated_refresh.push(new[1].clone().into_bytes());
                }
            }
        }
        if let Some(run_id) = &report.run_id {
            run_ids.push(run_id.clone());
            haystacks.extend(run_haystacks(&demo, run_id, name).await);
        }
        let alerts = demo.runs.alerts(None).await.unwrap();
        haystacks.push(text(format!("alerts {name}"), format!("{alerts:?}")));
        let runs = demo.engine.list_runs().await.unwrap();
        haystacks.push(text(format!("run list {name}"), format!("{runs:?}")));
        let who = demo
            .audit
            .who_authorized("salesforce", OPPORTUNITY)
            .await
            .unwrap();
        haystacks.push(text(format!("who authorized {name}"), format!("{who:?}")));
        for (connector, _) in CONSENT_SCOPES {
            let account = demo.vault.account(&alice, connector).await;
            haystacks.push(text(
                format!("account {connector} {name}"),
                format!("{account:?}"),
            ));
        }
        let mut export: Vec<u8> = Vec::new();
        let records = demo.audit.export_jsonl(&mut export).await.unwrap();
        assert!(
            records > 0 || report.run_id.is_none(),
            "the {name} audit export is empty"
        );
        haystacks.push(Haystack {
            name: format!("audit export {name}"),
            bytes: export,
        });
        haystacks.push(text(
            format!("Debug of the demo's parts {name}"),
            format!(
                "{:?} {:?} {:?} {:?} {:?}",
                demo.vault, demo.engine, demo.sandbox, demo.audit, demo.runs
            ),
        ));

        // The CLI on the database the run wrote, while the demo still holds it open.
        let (list, json) = chainctl(&db, &["--json", "runs", "list"]);
        haystacks.push(list);
        if let Some(run_id) = &report.run_id {
            assert!(
                json.contains(run_id.as_str()),
                "chainctl did not list {run_id}"
            );
            haystacks.extend(chainctl_run_haystacks(&db, run_id));
        }
        let (export, stdout) = chainctl(&db, &["audit", "export"]);
        assert_eq!(
            stdout.lines().count() as u64,
            records,
            "chainctl exported another trail"
        );
        haystacks.push(export);

        read_db_files(&db, "open", &mut haystacks);
        emulator_secrets(&demo.sandbox.salesforce, name, &mut needles);
        emulator_secrets(&demo.sandbox.jira, name, &mut needles);
        emulator_secrets(&demo.sandbox.slack, name, &mut needles);
        dbs.push(db);
        drop(demo);
    }
    // --- Providers that echo the access token in refusals and in mistyped fields. ---
    let echoed = Echoed::default();
    let echo_base = start_echo_provider(echoed.clone()).await;
    {
        let name = "echo";
        let db = dir.path().join("echo.db");
        let demo = Demo::start_with_key(&db, VaultKey::from_bytes(key_bytes))
            .await
            .unwrap();
        demo.engine.register::<echo_chain>();
        demo.connect("salesforce").await.unwrap();
        for (route, kind) in ECHO_ROUTES {
            let started = demo
                .engine
                .start::<echo_chain>(demo.user.clone(), (format!("{echo_base}{route}"),))
                .await
                .unwrap();
            let run_id = started.run_id;
            let failure = demo
                .runs
                .journal(&run_id)
                .await
                .unwrap()
                .into_iter()
                .find_map(|entry| match entry.result {
                    Some(EntryResult::Err { error }) => Some(error),
                    _ => None,
                })
                .unwrap_or_else(|| panic!("the {route} run recorded no step error"));
            assert!(
                format!("{failure:?}").starts_with(kind),
                "the {route} run failed with {failure:?}, expected {kind}"
            );
            echo_runs += 1;
            haystacks.extend(run_haystacks(&demo, &run_id, &format!("{name}{route}")).await);
            haystacks.extend(chainctl_run_haystacks(&db, &run_id));
        }
        let mut export: Vec<u8> = Vec::new();
        demo.audit.export_jsonl(&mut export).await.unwrap();
        haystacks.push(Haystack {
            name: format!("audit export {name}"),
            bytes: export,
        });
        haystacks.push(chainctl(&db, &["--json", "runs", "list"]).0);
        haystacks.push(chainctl(&db, &["audit", "export"]).0);
        read_db_files(&db, "open", &mut haystacks);
        emulator_secrets(&demo.sandbox.salesforce, name, &mut needles);
        dbs.push(db);
        drop(demo);
    }
    for db in &dbs {
        read_db_files(db, "closed", &mut haystacks);
    }

    // The vault key in every spelling.
    let b64 = base64::engine::general_purpose::STANDARD.encode(key_bytes);
    let b64url = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key_bytes);
    let hex: String = key_bytes.iter().map(|b| format!("{b:02x}")).collect();
    for (what, bytes) in [
        ("vault key (raw)", key_bytes.to_vec()),
        ("vault key (base64)", b64.into_bytes()),
        ("vault key (base64url)", b64url.into_bytes()),
        ("vault key (hex)", hex.clone().into_bytes()),
        ("vault key (HEX)", hex.to_uppercase().into_bytes()),
    ] {
        needles.push(Needle {
            what: what.into(),
            bytes,
        });
    }
    // The logs last: everything above ran under the subscriber.
    let log_bytes = logs.0.lock().unwrap().clone();
    haystacks.push(Haystack {
        name: "captured logs (TRACE, every crate)".into(),
        bytes: log_bytes.clone(),
    });

    // --- Self-checks: the test cannot pass vacuously. ---
    let log_text = String::from_utf8_lossy(&log_bytes);
    if let Ok(path) = std::env::var("LEAK_TEST_LOG_DUMP") {
        std::fs::write(path, &log_bytes).unwrap();
    }
    for expected in [
        "vault consent completed",
        "vault access token refreshed",
        "step call classified",
        "TRACE",
    ] {
        assert!(
            log_text.contains(expected),
            "the log capture misses {expected:?}: it does not capture what the runs log"
        );
    }
    assert_eq!(
        run_ids.len(),
        SCENARIOS.len() - 1,
        "missing-scope starts no run"
    );
    assert!(refreshes_seen >= 1, "no scenario refreshed a token");
    assert!(alerts_seen >= 1, "no scenario raised an operator alert");
    assert!(resumed, "no run was suspended and resumed after re-consent");
    let db_open: Vec<&Haystack> = haystacks
        .iter()
        .filter(|h| h.name.ends_with("(open)"))
        .collect();
    assert!(
        db_open.iter().any(|h| h.name.contains("-wal")),
        "expected the WAL files to be read"
    );
    for run_id in &run_ids {
        assert!(
            db_open.iter().any(|h| Finder::new(&[Needle {
                what: "run id".into(),
                bytes: run_id.as_bytes().to_vec()
            }])
            .find(&h.bytes)
            .len()
                == 1),
            "the database search does not see run {run_id}"
        );
    }
    let secrets: Vec<&[u8]> = needles.iter().map(|n| n.bytes.as_slice()).collect();
    for challenge in &verifier_challenges {
        assert!(
            needles
                .iter()
                .any(|n| std::str::from_utf8(&n.bytes)
                    .is_ok_and(|v| pkce_challenge(v) == *challenge)),
            "the PKCE verifier of a consent link is not among the needles"
        );
    }
    assert_eq!(echo_runs, ECHO_ROUTES.len(), "an echo run did not fail");
    let echoed_tokens = echoed.0.lock().unwrap().clone();
    assert!(
        echoed_tokens.len() >= ECHO_ROUTES.len(),
        "the echo provider was not called once per run"
    );
    for token in &echoed_tokens {
        assert!(
            secrets.contains(&token.as_bytes()),
            "a token the echo provider sent back is not among the needles"
        );
    }
    assert_eq!(verifier_challenges.len(), 1);
    assert_eq!(rotated_refresh.len(), 1);
    for token in rotated_refresh.iter().chain(&refreshed_access) {
        assert!(
            secrets.contains(&token.as_slice()),
            "a refreshed token is not among the needles"
        );
    }
    // Per scenario at least: 3 codes, 3 verifiers, 3 access tokens, 2 refresh tokens, 1 client secret.
    assert!(
        needles.len() >= SCENARIOS.len() * 12,
        "too few secrets collected: {}",
        needles.len()
    );
    let finder = Finder::new(&needles);
    // Every needle planted into a copy of every kind of haystack is found.
    for sample in [
        haystacks
            .iter()
            .find(|h| h.name.starts_with("captured logs")),
        haystacks.iter().find(|h| h.name.ends_with("-wal (open)")),
        haystacks
            .iter()
            .find(|h| h.name.starts_with("audit export")),
        haystacks.iter().find(|h| h.name.starts_with("chainctl")),
        haystacks.iter().find(|h| h.name.starts_with("report")),
    ] {
        let sample = sample.expect("a haystack of each kind");
        // The sample cut into pieces with one needle between each two.
        let (len, count) = (sample.bytes.len(), needles.len());
        let mut planted = Vec::new();
        for (i, n) in needles.iter().enumerate() {
            planted.extend_from_slice(&sample.bytes[i * len / count..(i + 1) * len / count]);
            planted.extend_from_slice(&n.bytes);
        }
        let found = finder.find(&planted);
        for n in &needles {
            assert!(
                found.iter().any(|f| std::ptr::eq(*f, n)),
                "the search misses {} planted in a copy of {}",
                n.what,
                sample.name
            );
        }
    }

    // --- The assertion. ---
    let mut leaks: Vec<String> = Vec::new();
    for h in &haystacks {
        for n in finder.find(&h.bytes) {
            leaks.push(format!("{} appears in {}", n.what, h.name));
        }
    }
    let total: usize = haystacks.iter().map(|h| h.bytes.len()).sum();
    let mut stderr = std::io::stderr();
    let _ = writeln!(
        stderr,
        "leak search: {} secrets in {} haystacks ({} bytes, {} bytes of logs)",
        needles.len(),
        haystacks.len(),
        total,
        log_bytes.len()
    );
    assert!(leaks.is_empty(), "secrets leaked:\n{}", leaks.join("\n"));
}
