//! Serves the example chains over MCP stdio against the sandbox providers, with alice
//! connected to Salesforce and Jira but not Slack, plus the web server on a printed local
//! address. See the README's "MCP" section for the client configuration.
//!
//! ```text
//! cargo run --example mcp_demo                 # MCP on stdin/stdout, web on 127.0.0.1:<port>
//! cargo run --example mcp_demo -- --listen 127.0.0.1:8765
//! ```

fn main() -> std::process::ExitCode {
    examples::mcp_demo::main()
}
