//! `serve`: the web pages, the OAuth redirect endpoint and the streamable HTTP MCP endpoint of
//! the application's runtime on one listener (features `server` and `mcp`).

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use base64::Engine as _;

use super::{CliError, CliSetup};
use crate::audit::AuditStore;
use crate::mcp::auth::SharedKeyJwtVerifier;
use crate::mcp::{McpServer, ResourceServer};
use crate::server::{FixedPrincipal, TrustedHeader, WebServer};

/// The environment variable with the key (base64, at least 32 bytes) of the HS256 bearer
/// tokens the MCP endpoint accepts.
pub const MCP_KEY_ENV: &str = "CHAIN_MCP_KEY";

/// The header naming the signed-in principal of a page request when `--principal` is not
/// given (set it in the authenticating proxy in front of the tool).
pub const PRINCIPAL_HEADER: &str = "x-forwarded-user";

/// Serves until the process is stopped; prints the address it listens on first.
pub(super) async fn serve(
    db: &Path,
    listen: &str,
    principal: Option<String>,
    setup: &CliSetup,
    w: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    let key = std::env::var(MCP_KEY_ENV)
        .ok()
        .and_then(|v| {
            let v = v.trim().to_owned();
            base64::engine::general_purpose::STANDARD
                .decode(&v)
                .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(&v))
                .ok()
        })
        .filter(|k| k.len() >= 32)
        .ok_or_else(|| {
            CliError::EngineSetup(format!(
                "`serve` verifies MCP bearer tokens with the HS256 key in {MCP_KEY_ENV} (base64 of at least 32 bytes); set it"
            ))
        })?;
    let factory = setup.runtime.as_ref().ok_or(CliError::NoEngine)?;
    let runtime = factory(db)
        .map_err(CliError::EngineSetup)?
        .open()
        .await
        .map_err(|e| CliError::EngineSetup(e.to_string()))?;
    let vault = runtime.vault.clone().ok_or_else(|| {
        CliError::EngineSetup("`serve` needs the vault: give the runtime a vault key".into())
    })?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| CliError::io(format!("listening on {listen}"), e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| CliError::io("reading the listen address", e))?;
    let audit: Arc<dyn AuditStore> = runtime.audit.clone();
    let web = match principal {
        Some(p) => WebServer::new(
            runtime.engine.clone(),
            vault.clone(),
            audit,
            FixedPrincipal::new(p),
        ),
        None => WebServer::new(
            runtime.engine.clone(),
            vault.clone(),
            audit,
            TrustedHeader::new(PRINCIPAL_HEADER),
        ),
    };
    let mut builder = McpServer::builder(runtime.engine.clone(), vault);
    if let Some(tools) = &setup.mcp_tools {
        builder = tools(builder);
    }
    let mcp = builder
        .build()
        .map_err(|e| CliError::EngineSetup(e.to_string()))?;
    let resource = format!("http://{addr}/mcp");
    let verifier = SharedKeyJwtVerifier::new(key, resource.clone());
    let router = web.router().merge(mcp.http_router(
        "/mcp",
        ResourceServer::new(verifier, resource.clone(), Vec::new()),
    ));
    writeln!(
        w,
        "listening on http://{addr} (pages: /runs, MCP: {resource})"
    )
    .and_then(|()| w.flush())
    .map_err(|e| CliError::io("writing to stdout", e))?;
    axum::serve(listener, router)
        .await
        .map_err(|e| CliError::io("serving", e))
}
