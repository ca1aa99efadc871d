//! Slack emulator over real HTTP: PKCE flow at oauth.v2.access, rotation that kills the
//! used refresh token, HTTP-200 error shapes, rate limit, revoke, lost refresh response.

mod common;

use std::time::Duration;

use chain_runtime::sandbox::{FaultKind, Slack};
use common::*;
use reqwest::Client;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};

async fn connected(scope: &str) -> (Slack, String, Value) {
    let slack = Slack::start().await.unwrap();
    let carol = slack.add_user("carol");
    slack.approve_as(&carol).unwrap();
    let c = client();
    let code = authorize(&c, slack.urls(), scope).await;
    let (status, tok) = exchange(&c, slack.urls(), &code, VERIFIER).await;
    assert_eq!((status, &tok["ok"]), (200, &json!(true)), "{tok}");
    (slack, carol, tok)
}

async fn call(
    c: &Client,
    slack: &Slack,
    method: &str,
    at: &str,
    form: &[(&str, &str)],
) -> (u16, HeaderMap, Value) {
    let resp = c
        .post(format!("{}/{method}", slack.urls().api_base))
        .bearer_auth(at)
        .form(form)
        .send()
        .await
        .unwrap();
    let (status, headers) = (resp.status().as_u16(), resp.headers().clone());
    (status, headers, resp.json().await.unwrap())
}

async fn post(c: &Client, slack: &Slack, at: &str) -> (u16, HeaderMap, Value) {
    call(
        c,
        slack,
        "chat.postMessage",
        at,
        &[("channel", "C0DEALS"), ("text", "Deal escalated: OPS-1")],
    )
    .await
}

#[tokio::test]
async fn code_flow_token_shape_and_messages() {
    let slack = Slack::start().await.unwrap();
    let carol = slack.add_user("carol");
    slack.approve_as(&carol).unwrap();
    let c = client();

    let code = authorize(&c, slack.urls(), "chat:write,channels:read").await;
    let (status, body) = exchange(
        &c,
        slack.urls(),
        &code,
        "wrong-wrong-wrong-wrong-wrong-wrong-wrong-wrong",
    )
    .await;
    assert_eq!(
        (status, body),
        (200, json!({"ok": false, "error": "invalid_code"}))
    );

    let code = authorize(&c, slack.urls(), "chat:write,channels:read").await;
    let resp = c
        .post(&slack.urls().token)
        .form(&[
            ("client_id", CLIENT),
            ("client_secret", "wrong"),
            ("code", &code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", VERIFIER),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.json::<Value>().await.unwrap(),
        json!({"ok": false, "error": "bad_client_secret"})
    );

    // No grant_type: Slack treats a bare code as a code exchange.
    let code = authorize(&c, slack.urls(), "chat:write,channels:read").await;
    let (status, tok) = token_form(
        &c,
        slack.urls(),
        &[
            ("code", &code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", VERIFIER),
        ],
    )
    .await;
    assert_eq!((status, &tok["ok"]), (200, &json!(true)));
    assert!(s(&tok, "access_token").starts_with("xoxe.xoxp-"));
    assert!(s(&tok, "refresh_token").starts_with("xoxe-1-"));
    assert_eq!(
        (tok["expires_in"].as_u64(), s(&tok, "scope")),
        (Some(43_200), "chat:write,channels:read".to_owned())
    );
    let subject = format!(
        "{}:{}",
        tok["team"]["id"].as_str().unwrap(),
        tok["authed_user"]["id"].as_str().unwrap()
    );
    assert_eq!(subject, carol);
    assert_eq!(tok["team"]["id"], slack.tenant());

    let at = s(&tok, "access_token");
    let (status, headers, msg) = post(&c, &slack, &at).await;
    assert_eq!(
        (status, &msg["ok"], &msg["channel"]),
        (200, &json!(true), &json!("C0DEALS"))
    );
    assert_eq!(headers["x-oauth-scopes"], "chat:write,channels:read");
    let ts = s(&msg, "ts");
    assert_eq!(
        slack.message("C0DEALS", &ts).as_deref(),
        Some("Deal escalated: OPS-1")
    );
    let (_, _, del) = call(
        &c,
        &slack,
        "chat.delete",
        &at,
        &[("channel", "C0DEALS"), ("ts", &ts)],
    )
    .await;
    assert_eq!(del, json!({"ok": true, "channel": "C0DEALS", "ts": ts}));
    let (status, _, again) = call(
        &c,
        &slack,
        "chat.delete",
        &at,
        &[("channel", "C0DEALS"), ("ts", &ts)],
    )
    .await;
    assert_eq!(
        (status, again),
        (200, json!({"ok": false, "error": "message_not_found"}))
    );
    assert_eq!(slack.message_count(), 0);

    let writes = slack.writes();
    assert_eq!(writes.len(), 2, "the failed delete is a call, not a write");
    assert!(writes.iter().all(|w| w.subject == carol && w.record_id.as_deref() == Some(&format!("C0DEALS/{ts}"))));
    let calls = slack.calls();
    assert_eq!(
        calls.last().unwrap().error.as_deref(),
        Some("message_not_found")
    );
}

#[tokio::test]
async fn refresh_rotates_and_kills_the_used_token() {
    let (slack, carol, tok) = connected("chat:write").await;
    let c = client();
    let rt1 = s(&tok, "refresh_token");
    let (status, fresh) = refresh(&c, slack.urls(), &rt1).await;
    assert_eq!((status, &fresh["ok"]), (200, &json!(true)));
    let rt2 = s(&fresh, "refresh_token");
    assert_ne!(rt1, rt2);
    assert_eq!(
        fresh["authed_user"]["id"],
        json!(carol.split_once(':').unwrap().1)
    );
    assert_eq!(
        refresh(&c, slack.urls(), &rt1).await,
        (200, json!({"ok": false, "error": "invalid_refresh_token"}))
    );
    let (_, latest) = refresh(&c, slack.urls(), &rt2).await;
    assert_eq!(latest["ok"], true);

    // A lost refresh response bricks the grant: the server rotated, the used token is dead.
    let rt3 = s(&latest, "refresh_token");
    slack.lose_next_refresh_response();
    let lost = c
        .post(&slack.urls().token)
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", rt3.as_str()),
            ("client_id", CLIENT),
            ("client_secret", SECRET),
        ])
        .send()
        .await;
    assert!(lost.is_err(), "no response");
    assert_eq!(
        refresh(&c, slack.urls(), &rt3).await.1["error"],
        "invalid_refresh_token"
    );
    let ledger = slack.ledger();
    let tail: Vec<_> = ledger.token_requests()[ledger.token_requests().len() - 2..]
        .iter()
        .map(|t| (t.issued, t.status, t.fault, t.error.clone()))
        .collect();
    assert_eq!(
        tail,
        [
            (true, None, Some(FaultKind::ResponseLost), None),
            (
                false,
                Some(200),
                None,
                Some("invalid_refresh_token".to_owned())
            ),
        ]
    );
}

#[tokio::test]
async fn error_shapes_are_http_200() {
    let (slack, carol, tok) = connected("chat:write,channels:read").await;
    let c = client();
    let at = s(&tok, "access_token");

    slack.expire_access_tokens(&carol);
    assert_eq!(
        post(&c, &slack, &at).await.2,
        json!({"ok": false, "error": "token_expired"})
    );
    let (_, fresh) = refresh(&c, slack.urls(), &s(&tok, "refresh_token")).await;
    let at = s(&fresh, "access_token");
    assert_eq!(post(&c, &slack, &at).await.0, 200);

    slack.drop_scope(&carol, "chat:write");
    let (status, headers, body) = post(&c, &slack, &at).await;
    assert_eq!(
        (status, body),
        (
            200,
            json!({"ok": false, "error": "missing_scope", "needed": "chat:write", "provided": "channels:read"})
        )
    );
    assert_eq!(headers["x-oauth-scopes"], "channels:read");
    assert_eq!(headers["x-accepted-oauth-scopes"], "chat:write");

    let (slack, carol, tok) = connected("chat:write").await;
    let at = s(&tok, "access_token");
    slack.rate_limit_next(&carol, 1, Duration::from_secs(30));
    let (status, headers, body) = post(&c, &slack, &at).await;
    assert_eq!(
        (status, body),
        (429, json!({"ok": false, "error": "ratelimited"}))
    );
    assert_eq!(headers["retry-after"], "30");
    slack.fail_next(&carol, 1);
    assert_eq!(post(&c, &slack, &at).await.0, 500);

    assert_eq!(
        post(&c, &slack, "xoxe.xoxp-unknown").await.2,
        json!({"ok": false, "error": "invalid_auth"})
    );
    let resp = c
        .post(format!("{}/chat.postMessage", slack.urls().api_base))
        .form(&[("channel", "C1")])
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.json::<Value>().await.unwrap(),
        json!({"ok": false, "error": "not_authed"})
    );

    // auth.revoke kills the grant: token_revoked on the API, invalid_refresh_token on refresh.
    let (_, _, revoked) = call(&c, &slack, "auth.revoke", &at, &[]).await;
    assert_eq!(revoked, json!({"ok": true, "revoked": true}));
    assert_eq!(
        post(&c, &slack, &at).await.2,
        json!({"ok": false, "error": "token_revoked"})
    );
    assert_eq!(
        refresh(&c, slack.urls(), &s(&tok, "refresh_token")).await.1["error"],
        "invalid_refresh_token"
    );
}
