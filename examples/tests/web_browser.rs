//! The web pages in a real browser: headless Chromium driven over WebDriver (chromedriver)
//! with plain HTTP calls. A suspended run's consent link is opened by clicking, passes the
//! sandbox provider's authorize endpoint, lands on the OAuth callback, and the run resumes; a
//! provider refusal (`access_denied`) is shown plainly; a form post without its CSRF token is
//! refused; the "Resume now" form works by clicking; a step waiting for approval is approved
//! by clicking (and its form refused without the CSRF token). Also, over plain HTTP: a
//! principal only sees their own runs and approvals.
//!
//! Needs `chromium` and `chromedriver` on the PATH (`.ci/run` installs them).

use std::time::Duration;

use chain_runtime::audit::AuditStore;
use chain_runtime::journal::RunState;
use chain_runtime::server::{FixedPrincipal, TrustedHeader, WebServer};
use examples::escalate::{UserId, escalate_deal};
use examples::mcp_demo::McpDemo;
use examples::urgent::{REASON, Urgent};
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

    /// Clicks the element `css`, a link or a form's button, and waits for the next page.
    async fn click(&self, css: &str) {
        self.mark_page().await;
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
        self.wait_for_next_page(css).await;
    }

    /// Marks the page shown, so that [`Browser::wait_for_next_page`] can tell it from the next.
    async fn mark_page(&self) {
        self.execute("window.__left_behind = true").await;
    }

    /// Waits until the page marked last is replaced by one fully loaded: WebDriver may answer
    /// a click before the response of the form it submitted arrives, most of all on a busy
    /// machine.
    async fn wait_for_next_page(&self, after: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let state = self
                .execute("return window.__left_behind === true ? 'old' : document.readyState")
                .await;
            if state == "complete" {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no new page within 30 s after {after} (last state: {state})"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
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

    /// Runs `script`, which submits a form, and waits for the next page.
    async fn submit_by_script(&self, script: &str) {
        self.mark_page().await;
        self.execute(script).await;
        self.wait_for_next_page(script).await;
    }

    /// Runs `script` in the page; what it returns.
    async fn execute(&self, script: &str) -> Value {
        self.cmd(
            reqwest::Method::POST,
            "/execute/sync",
            json!({"script": script, "args": []}),
        )
        .await
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
        .submit_by_script("document.querySelector('input[name=csrf]').remove(); document.querySelector('form').submit();")
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

/// Serves the web pages of `urgent`'s runtime for `auth`; returns the base URL.
async fn serve_urgent(urgent: &Urgent, auth: impl chain_runtime::server::Authenticator) -> String {
    let audit: std::sync::Arc<dyn AuditStore> = urgent.runtime.audit.clone();
    let web = WebServer::new(
        urgent.runtime.engine.clone(),
        urgent.runtime.vault().unwrap().clone(),
        audit,
        auth,
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, web.router()).await });
    format!("http://{addr}")
}

#[tokio::test]
async fn a_pending_step_is_approved_by_clicking_and_its_form_needs_the_csrf_token() {
    let db = tempfile::tempdir().unwrap();
    let urgent = Urgent::start(&db.path().join("approve.db"), |b| b)
        .await
        .unwrap();
    let (report, request) = urgent.start_run().await.unwrap();
    let base = serve_urgent(&urgent, FixedPrincipal::new("alice")).await;
    let browser = Browser::start().await;

    // The runs page points to the approvals; the approvals page shows what is asked.
    browser.open(&format!("{base}/runs")).await;
    browser.click("a.approvals").await;
    assert_eq!(browser.url().await, format!("{base}/approvals"));
    let page = browser.source().await;
    assert!(page.contains(REASON), "{page}");
    assert!(page.contains(&request.approval_id), "{page}");
    assert!(
        page.contains("page on-call"),
        "the arguments are shown: {page}"
    );

    // A post without the CSRF token is refused and decides nothing.
    browser
        .submit_by_script("document.querySelector('form.decide input[name=csrf]').remove(); document.querySelector('form.decide').submit();")
        .await;
    let page = browser.source().await;
    assert!(page.contains("missing its CSRF token"), "{page}");
    assert_eq!(
        urgent
            .runtime
            .engine
            .run_status(&report.run_id)
            .await
            .unwrap()
            .state
            .kind(),
        "awaiting_approval"
    );
    assert!(urgent.sandbox.jira.issue_keys().is_empty());

    // Clicking Approve: the run goes on, the issue is opened, the run page says completed.
    browser.open(&format!("{base}/approvals")).await;
    browser.click("button.approve").await;
    assert_eq!(
        browser.url().await,
        format!("{base}/runs/{}", report.run_id)
    );
    let page = browser.source().await;
    assert!(page.contains("id=\"state\">completed<"), "{page}");
    assert!(
        page.contains("approval_decided"),
        "the audit table lists the decision"
    );
    assert_eq!(urgent.sandbox.jira.issue_keys().len(), 1);
    browser.open(&format!("{base}/approvals")).await;
    assert!(
        browser
            .source()
            .await
            .contains("Nothing waits for your approval")
    );
    browser.quit().await;
}

#[tokio::test]
async fn another_principal_neither_sees_nor_decides_an_approval() {
    let db = tempfile::tempdir().unwrap();
    let urgent = Urgent::start(&db.path().join("approve-own.db"), |b| b)
        .await
        .unwrap();
    let (report, request) = urgent.start_run().await.unwrap();
    let base = serve_urgent(&urgent, TrustedHeader::new("x-forwarded-user")).await;
    let http = reqwest::Client::new();
    let page = |user: &'static str| {
        http.get(format!("{base}/approvals"))
            .header("x-forwarded-user", user)
            .send()
    };
    let alice = page("alice").await.unwrap().text().await.unwrap();
    assert!(alice.contains(&request.approval_id));
    let bob = page("bob").await.unwrap().text().await.unwrap();
    assert!(!bob.contains(&request.approval_id) && bob.contains("Nothing waits"));

    // bob, with a pending step of his own, has a valid CSRF token of his own.
    let bobs = urgent
        .runtime
        .engine
        .start::<examples::urgent::escalate_urgently>(
            examples::escalate::UserId("bob".into()),
            (urgent.deal(),),
        )
        .await
        .unwrap();
    assert_eq!(bobs.state.kind(), "awaiting_approval");
    let bob = page("bob").await.unwrap().text().await.unwrap();
    assert!(!bob.contains(&request.approval_id), "{bob}");
    let bob_token = bob
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_owned();
    let runs = http
        .get(format!("{base}/runs/{}", report.run_id))
        .header("x-forwarded-user", "alice")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        runs.contains("class=\"approve\""),
        "alice's run page has the forms"
    );
    let alice_token = runs
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_owned();
    let post = |user: &'static str, token: String| {
        http.post(format!(
            "{base}/runs/{}/approvals/{}/approve",
            report.run_id, request.approval_id
        ))
        .header("x-forwarded-user", user)
        .form(&[("csrf", token)])
        .send()
    };
    // alice's token is bound to alice: bob cannot use it; with his own, alice's approval is
    // not his to decide (as unknown as any run of hers).
    assert_eq!(
        post("bob", alice_token.clone()).await.unwrap().status(),
        403
    );
    assert_eq!(post("bob", bob_token).await.unwrap().status(), 404);
    let state = urgent
        .runtime
        .engine
        .run_status(&report.run_id)
        .await
        .unwrap()
        .state;
    assert_eq!(state.kind(), "awaiting_approval");
    let done = post("alice", alice_token).await.unwrap();
    assert!(done.status().is_success(), "{}", done.status());
    assert_eq!(urgent.sandbox.jira.issue_keys().len(), 1);
}
