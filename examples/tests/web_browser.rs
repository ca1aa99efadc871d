//! The web pages in a real browser: headless Chromium driven over WebDriver (chromedriver)
//! with plain HTTP calls. A suspended run's consent link is opened by clicking, passes the
//! sandbox provider's authorize endpoint, lands on the OAuth callback, and the run resumes; a
//! provider refusal (`access_denied`) is shown plainly; a form post without its CSRF token is
//! refused; the "Resume now" form works by clicking. Also, over plain HTTP: a principal only
//! sees their own runs.
//!
//! Needs `chromium` and `chromedriver` on the PATH (`.ci/run` installs them).

use std::time::Duration;

use chain_runtime::audit::AuditStore;
use chain_runtime::server::{TrustedHeader, WebServer};
use chain_runtime::store::RunState;
use examples::escalate::{UserId, escalate_deal};
use examples::mcp_demo::McpDemo;
use serde_json::{Value, json};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A WebDriver session on a chromedriver child process.
struct Browser {
    http: reqwest::Client,
    base: String,
    session: String,
    _driver: tokio::process::Child,
}

impl Browser {
    async fn start() -> Browser {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let driver = tokio::process::Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver on the PATH (apt-get install chromium chromium-driver)");
        let http = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = http.get(format!("{base}/status")).send().await
                && let Ok(v) = r.json::<Value>().await
                && v["value"]["ready"] == true
            {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "chromedriver did not start"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]}
        }}});
        let v: Value = http
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let session = v["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {v}"))
            .to_owned();
        Browser {
            http,
            base,
            session,
            _driver: driver,
        }
    }

    async fn cmd(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let mut request = self.http.request(method.clone(), url);
        if method != reqwest::Method::GET {
            request = request.json(&body);
        }
        let v: Value = request.send().await.unwrap().json().await.unwrap();
        v["value"].clone()
    }

    async fn open(&self, url: &str) {
        self.cmd(reqwest::Method::POST, "/url", json!({ "url": url }))
            .await;
    }

    async fn click(&self, css: &str) {
        let el = self
            .cmd(
                reqwest::Method::POST,
                "/element",
                json!({"using": "css selector", "value": css}),
            )
            .await;
        let id = el[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}: {el}"))
            .to_owned();
        self.cmd(
            reqwest::Method::POST,
            &format!("/element/{id}/click"),
            json!({}),
        )
        .await;
    }

    async fn source(&self) -> String {
        self.cmd(reqwest::Method::GET, "/source", Value::Null)
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    async fn url(&self) -> String {
        self.cmd(reqwest::Method::GET, "/url", Value::Null)
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    async fn script(&self, script: &str) {
        self.cmd(
            reqwest::Method::POST,
            "/execute/sync",
            json!({"script": script, "args": []}),
        )
        .await;
    }

    async fn quit(self) {
        let _ = self
            .http
            .delete(format!("{}/session/{}", self.base, self.session))
            .send()
            .await;
    }
}

async fn suspended_run(demo: &McpDemo) -> String {
    demo.demo.sandbox.slack.revoke_grant(&demo.demo.subjects[2]);
    let report = demo
        .demo
        .engine
        .start::<escalate_deal>(UserId("alice".into()), (demo.demo.deal(),))
        .await
        .unwrap();
    assert_eq!(report.state.kind(), "suspended");
    report.run_id
}

async fn state(demo: &McpDemo, run_id: &str) -> RunState {
    demo.demo.engine.run_status(run_id).await.unwrap().state
}

#[tokio::test]
async fn consent_links_resume_runs_and_forms_need_their_csrf_token() {
    let db = tempfile::tempdir().unwrap();
    let demo = McpDemo::start(&db.path().join("web.db"), "127.0.0.1:0")
        .await
        .unwrap();
    demo.demo.connect("slack").await.unwrap();
    let run1 = suspended_run(&demo).await;
    let browser = Browser::start().await;
    let base = demo.base_url();

    // The provider refuses: the callback says so plainly, and the run stays suspended.
    demo.demo.sandbox.slack.clear_approver();
    browser.open(&format!("{base}/runs")).await;
    let page = browser.source().await;
    assert!(page.contains("Connect slack"), "{page}");
    browser.click("a.consent").await;
    let page = browser.source().await;
    assert!(
        browser
            .url()
            .await
            .starts_with(&format!("{base}/oauth/callback"))
    );
    assert!(
        page.contains("did not grant access") && page.contains("access_denied"),
        "{page}"
    );
    assert_eq!(state(&demo, &run1).await.kind(), "suspended");

    // The user approves: through the sandbox's authorize endpoint to the callback; the run
    // resumes and completes.
    demo.demo
        .sandbox
        .slack
        .approve_as(&demo.demo.subjects[2])
        .unwrap();
    browser.open(&format!("{base}/runs/{run1}")).await;
    browser.click("#consent").await;
    let page = browser.source().await;
    assert!(page.contains("Connected your slack account"), "{page}");
    assert!(page.contains("resumed, now completed"), "{page}");
    assert!(matches!(
        state(&demo, &run1).await,
        RunState::Completed { .. }
    ));
    browser.open(&format!("{base}/runs/{run1}")).await;
    let page = browser.source().await;
    assert!(page.contains("id=\"state\">completed<"), "{page}");
    assert!(page.contains("<svg"), "the decision graph is drawn");
    assert!(
        page.contains("class=\"node current\""),
        "the run's position is highlighted"
    );
    assert!(page.contains("announce"), "the timeline lists the steps");

    // A second run, consent fixed outside the callback: the "Resume now" form.
    let run2 = suspended_run(&demo).await;
    demo.demo.connect("slack").await.unwrap();
    browser.open(&format!("{base}/runs/{run2}")).await;
    browser
        .script("document.querySelector('input[name=csrf]').remove(); document.querySelector('form').submit();")
        .await;
    let page = browser.source().await;
    assert!(page.contains("missing its CSRF token"), "{page}");
    assert_eq!(
        state(&demo, &run2).await.kind(),
        "suspended",
        "nothing resumed"
    );
    browser.open(&format!("{base}/runs/{run2}")).await;
    browser.click("#resume").await;
    assert_eq!(browser.url().await, format!("{base}/runs/{run2}"));
    assert!(browser.source().await.contains("id=\"state\">completed<"));
    browser.quit().await;
}

#[tokio::test]
async fn a_principal_only_sees_their_own_runs() {
    let db = tempfile::tempdir().unwrap();
    let demo = McpDemo::start(&db.path().join("own.db"), "127.0.0.1:0")
        .await
        .unwrap();
    demo.demo.connect("slack").await.unwrap();
    let run = suspended_run(&demo).await;
    let audit: std::sync::Arc<dyn AuditStore> = demo.demo.audit.clone();
    let web = WebServer::new(
        demo.demo.engine.clone(),
        demo.demo.vault.clone(),
        audit,
        TrustedHeader::new("x-forwarded-user"),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, web.router()).await });
    let http = reqwest::Client::new();
    let get = |path: String, user: Option<&'static str>| {
        let mut r = http.get(format!("http://{addr}{path}"));
        if let Some(u) = user {
            r = r.header("x-forwarded-user", u);
        }
        r.send()
    };
    assert_eq!(get("/runs".into(), None).await.unwrap().status(), 401);
    let alice = get("/runs".into(), Some("alice"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(alice.contains(&run));
    let bob = get("/runs".into(), Some("bob"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!bob.contains(&run) && bob.contains("no runs"));
    for path in [
        format!("/runs/{run}"),
        format!("/runs/{run}/graph.svg"),
        format!("/runs/{run}/consent"),
    ] {
        assert_eq!(
            get(path.clone(), Some("bob")).await.unwrap().status(),
            404,
            "{path}"
        );
    }
    let svg = get(format!("/runs/{run}/graph.svg"), Some("alice"))
        .await
        .unwrap();
    assert_eq!(svg.headers()["content-type"], "image/svg+xml");
    // The callback completes consent only for a signed-in principal; bad redirects are plain
    // 400 pages.
    let callback = "/oauth/callback?state=s&code=c".to_owned();
    assert_eq!(get(callback, None).await.unwrap().status(), 401);
    for query in [
        "error=access_denied&error_description=User%20said%20no",
        "state=forged&error=access_denied",
        "state=forged&code=x",
        "",
    ] {
        let page = get(format!("/oauth/callback?{query}"), Some("alice"))
            .await
            .unwrap();
        assert_eq!(page.status(), 400, "{query}");
    }
}
