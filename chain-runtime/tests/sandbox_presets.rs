//! The GitHub, Google and Microsoft presets against their emulators over real HTTP: consent
//! through the vault, the subject read, refresh with each provider's rotation rule, and
//! revocation; plus the wire shapes the classifier relies on.

mod common;

use chain_runtime::classify::{FailureClass, RequestKind, classify};
use chain_runtime::sandbox::{Emulator, Github, Google, Microsoft, Provider};
use chain_runtime::vault::{ProviderConfig, Vault, VaultError};
use common::*;
use serde_json::{Value, json};

async fn vault(dir: &tempfile::TempDir) -> Vault {
    test_support::vault::open_vault(&dir.path().join("vault.db")).await
}

/// A vault on a fresh database in `dir` with `config` registered, and the upstream user
/// `login` added to `em` as the one who approves its next consent; returns the user's subject.
async fn vault_for<P: Provider>(
    dir: &tempfile::TempDir,
    em: &Emulator<P>,
    config: ProviderConfig,
    login: &str,
) -> (Vault, String) {
    let vault = vault(dir).await;
    vault.register_provider(config).await.unwrap();
    let subject = em.add_user(login);
    em.approve_as(&subject).unwrap();
    (vault, subject)
}

async fn refresh(vault: &Vault, connector: &str) -> Result<(), VaultError> {
    let version = vault.account("alice", connector).await?.token_version;
    vault
        .refresh_after_expiry("alice", connector, version)
        .await
        .map(drop)
}

async fn get(url: &str, token: &str) -> (u16, http::HeaderMap, Value) {
    let resp = client().get(url).bearer_auth(token).send().await.unwrap();
    let (status, headers) = (resp.status().as_u16(), resp.headers().clone());
    (status, headers, resp.json().await.unwrap_or(Value::Null))
}

fn class(provider: &str, status: u16, headers: &http::HeaderMap, body: &Value) -> FailureClass {
    classify(
        provider,
        RequestKind::Api,
        status,
        headers,
        body.to_string().as_bytes(),
    )
    .class
}

#[tokio::test]
async fn github_app_preset_consent_refresh_revocation() {
    let dir = tempfile::tempdir().unwrap();
    let gh = Github::start().await.unwrap();
    let (vault, alice) = vault_for(&dir, &gh, gh.provider_config("code").unwrap(), "alice").await;

    let account = gh
        .connect(&vault, "alice", "code", &["repo"])
        .await
        .unwrap();
    // The subject is the numeric id of GET /user; scopes come back comma-separated.
    assert_eq!(account.upstream_subject, alice);
    assert!(alice.chars().all(|c| c.is_ascii_digit()));
    assert_eq!(account.granted_scopes, ["repo"]);
    assert!(account.expires_at.is_some(), "user-to-server tokens expire");
    let link = vault
        .consent_link("alice", "code", &["repo"])
        .await
        .unwrap();
    let query: Vec<(String, String)> = link.url.query_pairs().into_owned().collect();
    assert_eq!(param(&query, "scope"), Some("repo"), "{}", link.url);

    gh.expire_access_tokens(&alice);
    refresh(&vault, "code").await.unwrap();
    assert_eq!(gh.ledger().successful_refreshes(), 1);

    gh.revoke_grant(&alice);
    assert!(matches!(
        refresh(&vault, "code").await,
        Err(VaultError::GrantRevoked { .. })
    ));
    let dead = gh.token_requests().pop().unwrap();
    assert_eq!(
        (dead.status, dead.error.as_deref()),
        (Some(200), Some("bad_refresh_token"))
    );
}

#[tokio::test]
async fn github_rotation_kills_the_old_pair_and_scope_hides_behind_404() {
    let gh = Github::start().await.unwrap();
    let bob = gh.add_user("bob");
    gh.approve_as(&bob).unwrap();
    let c = client();
    let code = authorize(&c, gh.urls(), "user").await;
    let (_, first) = token_form(
        &c,
        gh.urls(),
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", VERIFIER),
        ],
    )
    .await;
    assert_eq!(first["refresh_token_expires_in"], 15_811_200);
    let (at, rt) = (s(&first, "access_token"), s(&first, "refresh_token"));
    let (status, _, _) = get(&format!("{}/user", gh.base_url()), &at).await;
    assert_eq!(status, 200);
    let (status, second) = token_form(
        &c,
        gh.urls(),
        &[("grant_type", "refresh_token"), ("refresh_token", &rt)],
    )
    .await;
    assert_eq!(status, 200);
    assert_ne!(s(&second, "refresh_token"), rt);
    // Both the old refresh token and the old access token died with the refresh.
    let (status, headers, body) = get(&format!("{}/user", gh.base_url()), &at).await;
    assert_eq!(
        (status, body["message"].as_str()),
        (401, Some("Bad credentials"))
    );
    assert_eq!(
        class("github", status, &headers, &body),
        FailureClass::AccessTokenExpired
    );
    let (status, again) = token_form(
        &c,
        gh.urls(),
        &[("grant_type", "refresh_token"), ("refresh_token", &rt)],
    )
    .await;
    assert_eq!(
        (status, s(&again, "error").as_str()),
        (200, "bad_refresh_token")
    );

    // Without `repo` the private issue is a 404; only the scope headers tell why.
    let at = s(&second, "access_token");
    let resp = c
        .post(format!("{}/repos/acme/widgets/issues", gh.base_url()))
        .bearer_auth(&at)
        .json(&json!({ "title": "x" }))
        .send()
        .await
        .unwrap();
    let (status, headers) = (resp.status().as_u16(), resp.headers().clone());
    let body: Value = resp.json().await.unwrap();
    assert_eq!(status, 404);
    assert_eq!(headers["x-accepted-oauth-scopes"], "repo");
    assert_eq!(headers["x-oauth-scopes"], "user");
    assert_eq!(
        class("github", status, &headers, &body),
        FailureClass::InsufficientScope
    );
}

#[tokio::test]
async fn github_oauth_app_tokens_never_expire_and_revoke_through_the_grant_api() {
    let dir = tempfile::tempdir().unwrap();
    let gh = Github::start_with(Github::oauth_app_config())
        .await
        .unwrap();
    let (vault, _alice) =
        vault_for(&dir, &gh, gh.provider_config("github").unwrap(), "alice").await;
    let account = gh
        .connect(&vault, "alice", "github", &["repo", "user"])
        .await
        .unwrap();
    assert_eq!(
        account.expires_at, None,
        "OAuth-app tokens carry no expires_in"
    );
    assert_eq!(account.granted_scopes, ["repo", "user"]);

    // The raw grant API: DELETE /applications/{client_id}/grant with Basic auth.
    let c = client();
    let code = authorize(&c, gh.urls(), "repo").await;
    let (_, tok) = token_form(
        &c,
        gh.urls(),
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", VERIFIER),
        ],
    )
    .await;
    assert!(tok.get("refresh_token").is_none() && tok.get("expires_in").is_none());
    let at = s(&tok, "access_token");
    let revoke = |token: String| {
        c.delete(format!("{}/applications/{CLIENT}/grant", gh.base_url()))
            .basic_auth(CLIENT, Some(SECRET))
            .json(&json!({ "access_token": token }))
            .send()
    };
    assert_eq!(revoke(at.clone()).await.unwrap().status(), 204);
    assert_eq!(revoke(at.clone()).await.unwrap().status(), 422);
    let (status, _, _) = get(&format!("{}/user", gh.base_url()), &at).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn google_preset_offline_access_subject_refresh_revocation() {
    let dir = tempfile::tempdir().unwrap();
    let g = Google::start().await.unwrap();
    let (vault, alice) = vault_for(
        &dir,
        &g,
        g.provider_config("calendar").unwrap(),
        "alice@example.com",
    )
    .await;
    const EVENTS: &str = "https://www.googleapis.com/auth/calendar.events";

    let link = vault
        .consent_link("alice", "calendar", &[EVENTS])
        .await
        .unwrap();
    let query: Vec<(String, String)> = link.url.query_pairs().into_owned().collect();
    for (k, v) in [
        ("access_type", "offline"),
        ("prompt", "consent"),
        ("include_granted_scopes", "true"),
    ] {
        assert_eq!(param(&query, k), Some(v), "{}", link.url);
    }
    assert_eq!(param(&query, "scope"), Some(&*format!("{EVENTS} openid")));

    let account = g
        .connect(&vault, "alice", "calendar", &[EVENTS])
        .await
        .unwrap();
    assert_eq!(account.upstream_subject, alice, "the id_token's sub");
    assert_eq!(account.granted_scopes, [EVENTS, "openid"]);

    g.expire_access_tokens(&alice);
    refresh(&vault, "calendar").await.unwrap();
    refresh(&vault, "calendar").await.unwrap();
    // No rotation: both refreshes used the one refresh token, and neither issued another.
    assert_eq!(g.ledger().successful_refreshes(), 2);

    // Disconnect revokes at /revoke: the grant is gone at Google.
    vault.disconnect("alice", "calendar").await.unwrap();
    assert_eq!(g.granted_scopes(&alice), None);
}

#[tokio::test]
async fn google_needs_access_type_offline_and_reports_invalid_grant() {
    let dir = tempfile::tempdir().unwrap();
    let g = Google::start().await.unwrap();
    let mut config = g.provider_config("calendar").unwrap();
    config
        .extra_authorize_params
        .retain(|(k, _)| k != "access_type");
    let (vault, alice) = vault_for(&dir, &g, config, "alice@example.com").await;
    g.connect(&vault, "alice", "calendar", &["openid"])
        .await
        .unwrap();
    // Without access_type=offline there is no refresh token to refresh with.
    assert!(refresh(&vault, "calendar").await.is_err());
    assert_eq!(g.ledger().refresh_requests(), 0);

    vault
        .register_provider(g.provider_config("calendar").unwrap())
        .await
        .unwrap();
    g.connect(&vault, "alice", "calendar", &["openid"])
        .await
        .unwrap();
    refresh(&vault, "calendar").await.unwrap();
    g.revoke_grant(&alice);
    assert!(matches!(
        refresh(&vault, "calendar").await,
        Err(VaultError::GrantRevoked { .. })
    ));
    let dead = g.token_requests().pop().unwrap();
    assert_eq!(
        (dead.status, dead.error.as_deref()),
        (Some(400), Some("invalid_grant"))
    );
    // A user who already granted the client gets a new refresh token only with prompt=consent.
    g.connect(&vault, "alice", "calendar", &["openid"])
        .await
        .unwrap();
    refresh(&vault, "calendar").await.unwrap();
    let mut config = g.provider_config("calendar").unwrap();
    config.extra_authorize_params.retain(|(k, _)| k != "prompt");
    vault.register_provider(config).await.unwrap();
    g.connect(&vault, "alice", "calendar", &["openid"])
        .await
        .unwrap();
    let before = g.ledger().refresh_requests();
    assert!(refresh(&vault, "calendar").await.is_err());
    assert_eq!(
        g.ledger().refresh_requests(),
        before,
        "no refresh token to send"
    );
}

#[tokio::test]
async fn microsoft_preset_subject_rotation_claims_challenge_aadsts() {
    let dir = tempfile::tempdir().unwrap();
    let ms = Microsoft::start().await.unwrap();
    let (vault, alice) = vault_for(
        &dir,
        &ms,
        ms.provider_config("graph").unwrap(),
        "alice@contoso.example",
    )
    .await;
    let account = ms
        .connect(&vault, "alice", "graph", &["Mail.Send"])
        .await
        .unwrap();
    assert_eq!(account.upstream_subject, alice, "tid:oid of the id_token");
    assert!(alice.starts_with(&format!("{}:", ms.tenant())));
    assert_eq!(
        account.granted_scopes,
        ["Mail.Send", "openid", "offline_access"]
    );
    assert_eq!(vault.provider_name("graph").unwrap(), "microsoft");

    ms.expire_access_tokens(&alice);
    refresh(&vault, "graph").await.unwrap();
    refresh(&vault, "graph").await.unwrap();
    assert_eq!(ms.ledger().successful_refreshes(), 2);

    // Raw: a refresh returns a new refresh token and the used one stays valid.
    let c = client();
    let urls = ms.urls().clone();
    let cfg = ms.provider_config("raw").unwrap();
    let code = {
        let challenge = chain_runtime::sandbox::pkce_challenge(VERIFIER);
        let resp = authorize_raw(
            &c,
            &urls,
            &[
                ("response_type", "code"),
                ("client_id", &cfg.client_id),
                ("redirect_uri", REDIRECT),
                ("scope", "Mail.Send offline_access"),
                ("state", "s"),
                ("code_challenge", &challenge),
                ("code_challenge_method", "S256"),
            ],
        )
        .await;
        param(&location_params(&resp), "code").unwrap().to_owned()
    };
    let post = |form: Vec<(&'static str, String)>| {
        let mut all = vec![
            ("client_id", cfg.client_id.clone()),
            ("client_secret", SECRET.to_owned()),
        ];
        all.extend(form);
        c.post(&urls.token).form(&all).send()
    };
    let first: Value = post(vec![
        ("grant_type", "authorization_code".into()),
        ("code", code),
        ("redirect_uri", REDIRECT.into()),
        ("code_verifier", VERIFIER.into()),
    ])
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert!(first.get("id_token").is_none(), "no openid, no id_token");
    let rt = s(&first, "refresh_token");
    for _ in 0..2 {
        let next: Value = post(vec![
            ("grant_type", "refresh_token".into()),
            ("refresh_token", rt.clone()),
        ])
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
        assert_ne!(
            s(&next, "refresh_token"),
            rt,
            "a new refresh token every time"
        );
    }

    // A revoked grant: Graph answers with a claims challenge, the token endpoint with AADSTS50173.
    let at = s(&first, "access_token");
    ms.revoke_grant(&alice);
    let (status, headers, body) = get(&format!("{}/me", ms.urls().api_base), &at).await;
    assert_eq!(status, 401);
    let challenge = headers["www-authenticate"].to_str().unwrap();
    assert!(
        challenge.contains("error=\"insufficient_claims\", claims=\""),
        "{challenge}"
    );
    assert_eq!(
        class("microsoft", status, &headers, &body),
        FailureClass::StepUpRequired
    );
    let dead: Value = post(vec![
        ("grant_type", "refresh_token".into()),
        ("refresh_token", rt),
    ])
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(dead["error_codes"], json!([50173]));
    assert!(matches!(
        refresh(&vault, "graph").await,
        Err(VaultError::GrantRevoked { .. })
    ));
}
