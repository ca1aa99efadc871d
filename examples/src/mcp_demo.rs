//! The MCP demo: the example chains served over MCP against the sandbox providers, with alice
//! connected to Salesforce and Jira but not Slack, plus the web server (OAuth redirect
//! endpoint, run pages) and the streamable HTTP MCP endpoint on one local listener.
//!
//! The first call of `escalate_deal` answers with a consent link for Slack; following it
//! through the sandbox's authorize endpoint lands on the web server's callback, which connects
//! Slack; the client's retry then runs the chain.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use chain_runtime::audit::AuditStore;
use chain_runtime::mcp::auth::SharedKeyJwtVerifier;
use chain_runtime::mcp::{McpServer, McpServerBuilder, ResourceServer, TokenVerifier};
use chain_runtime::server::{FixedPrincipal, WebServer};
use serde_json::{Map, Value, json};

use crate::demo::{Demo, DemoError};
use crate::escalate::{escalate_and_note, escalate_deal};

/// The running MCP demo.
pub struct McpDemo {
    /// The sandbox, vault, engine and stores.
    pub demo: Demo,
    /// Where the web server and the HTTP MCP endpoint listen.
    pub addr: SocketAddr,
    /// The MCP server (serve it over stdio too with [`McpServer::serve_stdio`]).
    pub mcp: McpServer,
    signer: Arc<SharedKeyJwtVerifier>,
}

/// Adds tools to the demo's MCP server.
pub type ToolsFn = Box<dyn FnOnce(McpServerBuilder) -> McpServerBuilder + Send>;

/// Makes the bearer verifier of the HTTP endpoint from the endpoint's URL.
pub type VerifierFn = Box<dyn FnOnce(&str) -> Arc<dyn TokenVerifier> + Send>;

/// What a test changes in the demo's MCP server.
#[derive(Default)]
pub struct McpDemoOptions {
    /// More tools (single steps, other chains) after the two example chains.
    pub tools: Option<ToolsFn>,
    /// The bearer verifier (default: HS256 tokens signed with the demo's key, see
    /// [`McpDemo::token`]).
    pub verifier: Option<VerifierFn>,
    /// The authorization servers the metadata names (default: the web server).
    pub authorization_servers: Option<Vec<String>>,
}

impl McpDemo {
    /// Starts the demo on the SQLite file `db`, listening on `listen` (such as `127.0.0.1:0`).
    /// The MCP principal of stdio sessions is alice.
    pub async fn start(db: &Path, listen: &str) -> Result<Self, DemoError> {
        Self::start_with(db, listen, McpDemoOptions::default()).await
    }

    /// [`McpDemo::start`] with `options`.
    pub async fn start_with(
        db: &Path,
        listen: &str,
        options: McpDemoOptions,
    ) -> Result<Self, DemoError> {
        let demo = Demo::start(db).await?;
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let callback = format!("http://{addr}/oauth/callback");
        for (connector, mut config) in [
            (
                "salesforce",
                demo.sandbox.salesforce.provider_config("salesforce")?,
            ),
            ("jira", demo.sandbox.jira.provider_config("jira")?),
            ("slack", demo.sandbox.slack.provider_config("slack")?),
        ] {
            config.redirect_uri = callback.clone();
            demo.vault.register_provider(config).await?;
            if connector != "slack" {
                demo.connect(connector).await?;
            }
        }
        let mut key = vec![0u8; 32];
        rand_key(&mut key);
        let resource = format!("http://{addr}/mcp");
        let signer = Arc::new(SharedKeyJwtVerifier::new(key.clone(), resource.clone()));
        let verifier: Arc<dyn TokenVerifier> = match options.verifier {
            Some(make) => make(&resource),
            None => Arc::new(SharedKeyJwtVerifier::new(key, resource.clone())),
        };
        let mut builder = McpServer::builder(demo.engine.clone(), demo.vault.clone())
            .chain::<escalate_deal>()
            .chain::<escalate_and_note>();
        if let Some(tools) = options.tools {
            builder = tools(builder);
        }
        let mcp = builder.principal("alice").build()?;
        let authorization_servers = options
            .authorization_servers
            .unwrap_or_else(|| vec![format!("http://{addr}")]);
        let audit: Arc<dyn AuditStore> = demo.audit.clone();
        let web = WebServer::new(
            demo.engine.clone(),
            demo.vault.clone(),
            audit,
            FixedPrincipal::new("alice"),
        );
        let router = web.router().merge(mcp.http_router(
            "/mcp",
            ResourceServer::new(verifier, resource, authorization_servers),
        ));
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Ok(Self {
            demo,
            addr,
            mcp,
            signer,
        })
    }

    /// The web server's base URL.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The streamable HTTP MCP endpoint.
    pub fn mcp_url(&self) -> String {
        format!("http://{}/mcp", self.addr)
    }

    /// A bearer token for `subject`, valid for `ttl_secs` (negative: already expired).
    pub fn token(&self, subject: &str, ttl_secs: i64) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        self.signer.sign(&json!({
            "sub": subject,
            "aud": self.mcp_url(),
            "exp": now + ttl_secs,
            "iat": now,
        }))
    }

    /// The arguments of an `escalate_deal` call on the sandbox's deal.
    pub fn deal_arguments(&self) -> Map<String, Value> {
        let mut args = Map::new();
        args.insert(
            "deal".into(),
            serde_json::to_value(self.demo.deal()).unwrap_or(Value::Null),
        );
        args
    }
}

fn rand_key(key: &mut [u8]) {
    rand::fill(key);
}

/// The demo program: starts everything on a temporary database, prints the web address and
/// the arguments of a demo call to stderr (stdout is the MCP channel), serves MCP over stdio.
pub fn main() -> std::process::ExitCode {
    let mut listen = "127.0.0.1:0".to_owned();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--listen", Some(addr)) => listen = addr,
            _ => {
                eprintln!("usage: mcp_demo [--listen HOST:PORT]");
                return std::process::ExitCode::from(2);
            }
        }
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&listen)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(listen: &str) -> Result<(), DemoError> {
    let dir = tempfile::tempdir()?;
    let demo = McpDemo::start(&dir.path().join("mcp-demo.db"), listen).await?;
    eprintln!("web: {}/runs", demo.base_url());
    eprintln!("mcp (streamable HTTP): {}", demo.mcp_url());
    eprintln!(
        "arguments: {}",
        serde_json::to_string(&demo.deal_arguments())?
    );
    demo.mcp.clone().serve_stdio().await?;
    Ok(())
}
