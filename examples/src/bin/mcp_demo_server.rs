//! The MCP demo as a plain binary (what `cargo run --example mcp_demo` runs), so tests can
//! start it as a child process and talk MCP over its stdin/stdout.

fn main() -> std::process::ExitCode {
    examples::mcp_demo::main()
}
