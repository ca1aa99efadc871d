//! The command-line tool over a chain-runtime database, as a library entry point (feature `cli`).
//!
//! The tool needs the user's chains: `scopes CHAIN` and `graph CHAIN` read the registrations
//! that `#[chain]` leaves in the binary, and `runs resume` drives a run through an [`Engine`](crate::Engine)
//! with the chain registered. So the tool is not a fixed binary: each application builds its own
//! in a few lines, supplying how to build its engine from the opened stores.
//!
//! ```no_run
//! use chain_runtime::Runtime;
//! use chain_runtime::cli::CliSetup;
//! use chain_runtime::vault::VaultKey;
//!
//! fn main() -> std::process::ExitCode {
//!     chain_runtime::cli::main(CliSetup::new("chainctl").runtime(|db: &std::path::Path| {
//!         let key = VaultKey::from_env("CHAIN_VAULT_KEY")?;
//!         Ok::<_, chain_runtime::vault::KeyError>(Runtime::at(&db.to_string_lossy()).vault_key(key))
//!         // .chain::<my_app::escalate_deal>()
//!     }))
//! }
//! ```
//!
//! # Commands
//! Global options: `--db PATH` (default: the `CHAIN_DB` environment variable, else
//! `./chain.db`), `--json` (machine-readable output instead of aligned tables).
//!
//! | Command | What it does |
//! |---|---|
//! | `runs list` | every run: id, chain, principal, state, node, created |
//! | `runs show RUN` | one run with its journal, compensations and operator alerts |
//! | `runs resume RUN` | resumes a suspended run through the engine, prints the new state |
//! | `audit verify [--checkpoint FILE \| --head]` | verifies the hash chain; prints the head checkpoint (`--head`: only the checkpoint JSON, to save) |
//! | `audit why CONNECTOR RECORD_ID` | every write to that external record and under whose authorization |
//! | `audit history RUN` | every audit record of a run |
//! | `audit activity PRINCIPAL [--from-ms T] [--to-ms T]` | everything a principal did in a time range |
//! | `audit export [--out FILE]` | the trail as JSON Lines |
//! | `audit verify-export FILE [--checkpoint FILE]` | verifies an export (no database needed) |
//! | `approvals list [--principal ID]` | steps waiting for a person's approval: run, approval id, principal, step, reason, arguments, expiry |
//! | `approvals approve\|deny RUN APPROVAL --approver ID` | decides one (the run's principal, or whom the application's approval policy authorizes) and drives the run on |
//! | `chains` | the chains compiled into this binary |
//! | `scopes CHAIN` | the chain's scope manifest as JSON |
//! | `serve [--listen ADDR] [--principal ID]` | web pages, OAuth callback and MCP endpoint on one listener (features `server`, `mcp`; key in `CHAIN_MCP_KEY`) |
//! | `graph CHAIN [--format mermaid\|dot\|svg]` | the chain's decision graph as a picture (`--json`: as JSON) |
//!
//! `audit why`, `audit history` and `audit activity` verify the chain first and refuse to answer
//! from a broken one.
//!
//! # Exit codes
//! `0` success; `1` an error (missing, unreadable or corrupt database, unknown run or chain, I/O);
//! `2` bad arguments; `3` the audit chain is broken (tampered). Errors go to stderr as one
//! `error: …` message; the tool never panics on bad input and never creates a database.

mod approvals;
mod commands;
mod open;
mod output;
mod postgres;
#[cfg(feature = "mcp")]
mod serve;
mod tools;

use std::ffi::OsString;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::audit::{AuditError, ChainBreak};
use crate::engine::EngineError;
use crate::journal::JournalError;
use crate::runtime::RuntimeBuilder;

/// Given the database file, how to wire the application's runtime (credentials and chains).
type RuntimeFactory = dyn Fn(&Path) -> Result<RuntimeBuilder, String> + Send + Sync + 'static;

/// What an application supplies to the tool: its name and how to wire its runtime.
pub struct CliSetup {
    name: String,
    runtime: Option<Box<RuntimeFactory>>,
    #[cfg(feature = "mcp")]
    mcp_tools: Option<Box<McpTools>>,
}

/// Adds the application's chains to the MCP server of `serve`.
#[cfg(feature = "mcp")]
type McpTools = dyn Fn(crate::mcp::McpServerBuilder) -> crate::mcp::McpServerBuilder + Send + Sync;

impl fmt::Debug for CliSetup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CliSetup")
            .field("name", &self.name)
            .field("runtime", &self.runtime.is_some())
            .finish()
    }
}

impl CliSetup {
    /// A tool called `name` (shown in help and usage) with no runtime: every command but
    /// `runs resume` works.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            runtime: None,
            #[cfg(feature = "mcp")]
            mcp_tools: None,
        }
    }

    /// The chains `serve` exposes as MCP tools, e.g. `|b| b.chain::<escalate_deal>()`.
    #[cfg(feature = "mcp")]
    pub fn mcp_tools<F>(mut self, tools: F) -> Self
    where
        F: Fn(crate::mcp::McpServerBuilder) -> crate::mcp::McpServerBuilder + Send + Sync + 'static,
    {
        self.mcp_tools = Some(Box::new(tools));
        self
    }

    /// How to wire the runtime for `runs resume`: given the database file (which exists),
    /// return a [`RuntimeBuilder`] on it with the application's credentials and its chains.
    /// The tool opens it.
    pub fn runtime<F, E>(mut self, factory: F) -> Self
    where
        F: Fn(&Path) -> Result<RuntimeBuilder, E> + Send + Sync + 'static,
        E: fmt::Display,
    {
        self.runtime = Some(Box::new(move |db| factory(db).map_err(|e| e.to_string())));
        self
    }

    /// The tool's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// Why a command failed. [`CliError::exit_code`] maps it to the process exit code.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CliError {
    /// The arguments do not parse; the message is clap's usage error.
    #[error("{0}")]
    Usage(String),
    /// The database file does not exist. The tool never creates one.
    #[error(
        "database `{}` does not exist; pass --db PATH or set CHAIN_DB to the SQLite file your \
         application writes (this tool never creates a database)",
        .0.display()
    )]
    DatabaseMissing(PathBuf),
    /// The path exists but is not a regular file.
    #[error("database path `{}` is not a file", .0.display())]
    NotAFile(PathBuf),
    /// The file could not be opened or read as a chain-runtime database.
    #[error(
        "cannot read `{}` as a chain-runtime database: {reason}; is it the SQLite file your \
         application writes, and is it intact?",
        .path.display()
    )]
    Database {
        /// The file.
        path: PathBuf,
        /// What SQLite or the store said.
        reason: String,
    },
    /// No run with that id.
    #[error("no run `{0}` in the database; `runs list` shows the runs")]
    RunNotFound(String),
    /// No chain with that name is compiled into this binary.
    #[error(
        "no chain `{name}` in this binary; known chains: {}",
        if .known.is_empty() { "none".to_owned() } else { .known.join(", ") }
    )]
    UnknownChain {
        /// The name asked for.
        name: String,
        /// The chains this binary knows (paths).
        known: Vec<String>,
    },
    /// The binary was built without a runtime factory.
    #[error(
        "`runs resume` needs the application's runtime, and this binary has none; build the tool \
         with `CliSetup::runtime(..)` registering your chains"
    )]
    NoEngine,
    /// Wiring the runtime failed.
    #[error("building the runtime failed: {0}")]
    EngineSetup(String),
    /// The audit chain is broken: the first bad record is named.
    #[error("{0}")]
    ChainBroken(ChainBreak),
    /// The audit trail is empty, so there is no checkpoint.
    #[error("the audit trail is empty: there is no head checkpoint yet")]
    EmptyTrail,
    /// A checkpoint file is missing or not a checkpoint.
    #[error(
        "checkpoint file `{}`: {reason} (expected JSON {{\"seq\": N, \"hash\": \"…\"}} as \
         printed by `audit verify --head`)",
        .path.display()
    )]
    BadCheckpoint {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Reading or writing a file (or stdout) failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// The engine refused or failed.
    #[error(transparent)]
    Engine(EngineError),
    /// A decision on an approval was refused.
    #[error(transparent)]
    Approval(crate::engine::ApprovalError),
    /// The run store failed.
    #[error(transparent)]
    Store(JournalError),
    /// The audit trail failed.
    #[error(transparent)]
    Audit(AuditError),
}

impl CliError {
    /// The process exit code: 2 for bad arguments, 3 for a broken audit chain, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => 2,
            CliError::ChainBroken(_) => 3,
            CliError::Audit(AuditError::ChainBroken(_)) => 3,
            _ => 1,
        }
    }

    fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        CliError::Io {
            what: what.into(),
            source,
        }
    }

    /// An audit error, with a broken chain lifted to [`CliError::ChainBroken`].
    fn audit(e: AuditError) -> Self {
        match e {
            AuditError::ChainBroken(b) => CliError::ChainBroken(b),
            other => CliError::Audit(other),
        }
    }

    fn engine(e: EngineError) -> Self {
        match e {
            EngineError::Audit(a) => CliError::audit(a),
            other => CliError::Engine(other),
        }
    }
}

/// Arguments of the tool.
#[derive(Debug, Parser)]
#[command(
    about = "Inspect and resume chain runs, verify and query the audit trail, print scope manifests",
    version
)]
struct Args {
    /// The SQLite database shared by the run store, the audit trail and the vault.
    #[arg(
        long,
        global = true,
        env = "CHAIN_DB",
        default_value = "chain.db",
        value_name = "PATH"
    )]
    db: PathBuf,
    /// Print JSON for machines instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Runs: list, show, resume.
    #[command(subcommand)]
    Runs(RunsCmd),
    /// The audit trail: verify, why, history, export, verify-export.
    #[command(subcommand)]
    Audit(AuditCmd),
    /// Steps waiting for a person's approval: list, approve, deny.
    #[command(subcommand)]
    Approvals(approvals::ApprovalsCmd),
    /// The chains compiled into this binary.
    Chains,
    /// A chain's scope manifest (the minimal grant per connector) as JSON.
    Scopes {
        /// The chain's name or path.
        chain: String,
    },
    /// A chain's decision graph as a picture (`--json`: as JSON).
    Graph {
        /// The chain's name or path.
        chain: String,
        /// `mermaid`, `dot` (Graphviz) or `svg`.
        #[arg(long, default_value = "mermaid")]
        format: crate::graph_render::Format,
    },
    /// Serves the web pages, the OAuth redirect endpoint and the MCP endpoint (bearer tokens
    /// signed with the key in CHAIN_MCP_KEY) on one listener.
    #[cfg(feature = "mcp")]
    Serve {
        /// The address to listen on, e.g. 127.0.0.1:8765.
        #[arg(long, default_value = "127.0.0.1:8765")]
        listen: String,
        /// Every page request is this principal (a single-user local tool); without it the
        /// principal is the X-Forwarded-User header set by an authenticating proxy.
        #[arg(long)]
        principal: Option<String>,
    },
    /// The tool definitions of a chain's steps (or of the chain as one tool), as JSON.
    Tools {
        /// The chain's name or path.
        chain: String,
        /// openai (Chat Completions), openai-responses, anthropic or mcp.
        #[arg(long, default_value = "openai", value_parser = tools::parse_format)]
        format: crate::tool::ToolFormat,
        /// The whole chain as one tool instead of its steps.
        #[arg(long)]
        whole: bool,
    },
}

#[derive(Debug, Subcommand)]
enum RunsCmd {
    /// Every run, oldest first.
    List,
    /// One run with its journal, compensations and operator alerts.
    Show {
        /// The run id.
        run: String,
    },
    /// Resumes a suspended run (after re-consent) and prints the state it reached.
    Resume {
        /// The run id.
        run: String,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCmd {
    /// Verifies the hash chain and prints the head checkpoint.
    Verify {
        /// Also check against a checkpoint saved earlier (detects a truncated tail).
        #[arg(long, value_name = "FILE", conflicts_with = "head")]
        checkpoint: Option<PathBuf>,
        /// Print only the verified head checkpoint as JSON (to save for later checks).
        #[arg(long)]
        head: bool,
    },
    /// Who authorized the writes to one external record.
    Why {
        /// The connector, such as `salesforce`.
        connector: String,
        /// The record's id in that system.
        record_id: String,
    },
    /// Every audit record of one run.
    History {
        /// The run id.
        run: String,
    },
    /// Everything a principal did (runs, consents, refreshes) in a time range.
    Activity {
        /// The principal's identifier.
        principal: String,
        /// From this instant, Unix milliseconds (inclusive; default: the beginning).
        #[arg(long, value_name = "UNIX_MS", default_value_t = 0)]
        from_ms: i64,
        /// Until this instant, Unix milliseconds (exclusive; default: the end).
        #[arg(long, value_name = "UNIX_MS", default_value_t = i64::MAX)]
        to_ms: i64,
    },
    /// Writes the trail as JSON Lines (stdout unless --out).
    Export {
        /// The file to write.
        #[arg(long, short, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Verifies a JSON Lines export (no database needed).
    VerifyExport {
        /// The export file.
        file: PathBuf,
        /// Also check against a checkpoint saved earlier.
        #[arg(long, value_name = "FILE")]
        checkpoint: Option<PathBuf>,
    },
}

/// Parses `args` (the first item is the program name) and runs the command, writing its
/// output to `out`. Help and version are written to `out` and return `Ok`.
pub async fn run<I, T>(
    args: I,
    setup: &CliSetup,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let command = Args::command()
        .name(setup.name.clone())
        .bin_name(setup.name.clone());
    let matches = match command.try_get_matches_from(args) {
        Ok(m) => m,
        Err(e) => {
            use clap::error::ErrorKind;
            return match e.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => write!(out, "{}", e.render())
                    .map_err(|io| CliError::io("writing to stdout", io)),
                _ => Err(CliError::Usage(e.render().to_string())),
            };
        }
    };
    let args = Args::from_arg_matches(&matches).map_err(|e| CliError::Usage(e.to_string()))?;
    commands::dispatch(args, setup, out).await
}

/// Runs the tool inside an existing Tokio runtime on the process arguments; prints errors to
/// stderr and returns the exit code.
pub async fn main_async(setup: CliSetup) -> ExitCode {
    let mut out = std::io::BufWriter::new(std::io::stdout());
    let result = run(std::env::args_os(), &setup, &mut out).await;
    let flushed = out.flush();
    report(result.and_then(|()| flushed.map_err(|e| CliError::io("writing to stdout", e))))
}

/// Runs the tool on the process arguments (builds its own Tokio runtime); prints errors to
/// stderr and returns the exit code. Call it from `fn main`.
pub fn main(setup: CliSetup) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return report(Err(CliError::io("starting the async runtime", e)));
        }
    };
    runtime.block_on(main_async(setup))
}

/// Prints an error to stderr and turns the result into an exit code.
fn report(result: Result<(), CliError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // A closed stdout (`| head`) is not an error worth a message.
        Err(CliError::Io { source, .. }) if source.kind() == std::io::ErrorKind::BrokenPipe => {
            ExitCode::SUCCESS
        }
        Err(e) => {
            let code = e.exit_code();
            let mut stderr = std::io::stderr().lock();
            let _ = match &e {
                // clap renders its own `error:` prefix and usage.
                CliError::Usage(text) => write!(stderr, "{text}"),
                other => writeln!(stderr, "error: {}", output::escape(&other.to_string())),
            };
            ExitCode::from(code)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::open::check_db;
    use super::*;

    fn refused(path: &Path) -> String {
        match check_db(path) {
            Err(CliError::Database { reason, .. }) => reason,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn files_without_the_runtime_tables_are_refused_and_left_untouched() {
        let dir = tempfile::tempdir().unwrap();
        // An empty file: SQLite would happily make it a database.
        let empty = dir.path().join("empty.db");
        std::fs::write(&empty, b"").unwrap();
        assert!(refused(&empty).contains("not a chain-runtime database (no `run_runs` table)"));
        assert_eq!(std::fs::metadata(&empty).unwrap().len(), 0);
        // Another application's database.
        let other = dir.path().join("other.db");
        rusqlite::Connection::open(&other)
            .unwrap()
            .execute_batch("CREATE TABLE notes (body TEXT)")
            .unwrap();
        let before = std::fs::read(&other).unwrap();
        assert!(refused(&other).contains("no `run_runs` table"));
        assert_eq!(std::fs::read(&other).unwrap(), before);
        // Not a database at all.
        let text = dir.path().join("notes.txt");
        std::fs::write(&text, "hello, this is not SQLite at all, just some text").unwrap();
        assert!(
            refused(&text).contains("not a database"),
            "{}",
            refused(&text)
        );
    }
}
