//! Escalate a deal: update a Salesforce opportunity, open a Jira issue from it, announce it
//! on Slack — one logical action in three systems, under one identity.
//!
//! ```text
//! cargo run --example escalate_deal                         # the happy path
//! cargo run --example escalate_deal -- --scenario revoked   # one failure mode
//! cargo run --example escalate_deal -- --scenario crash     # kill -9 mid-chain, recover
//! cargo run --example escalate_deal -- --scenario all       # every failure mode
//! cargo run --example escalate_deal -- --json               # machine-readable
//! ```
//!
//! Everything runs locally: the sandbox emulates the three providers (OAuth and API, with
//! their real failure shapes), and one SQLite file holds the vault, the run journal and the
//! audit trail.

use std::path::PathBuf;
use std::process::ExitCode;

use chain_runtime::Chain;
use examples::demo::{Demo, DemoError, Report, Scenario};
use examples::escalate::escalate_deal;

struct Args {
    scenarios: Vec<Scenario>,
    json: bool,
    db: Option<PathBuf>,
}

const USAGE: &str = "usage: escalate_deal [--scenario NAME|all] [--json] [--db PATH]\n\
scenarios: happy expired revoked missing-scope scope-dropped compensate irreversible drift crash";

/// The crash scenario re-runs this program as its child process with this first argument.
const CRASH_CHILD: &str = "--crash-child";

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        scenarios: vec![Scenario::Happy],
        json: false,
        db: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--json" => args.json = true,
            "--scenario" => {
                let name = it.next().ok_or("--scenario needs a name")?;
                args.scenarios = if name == "all" {
                    Scenario::ALL.to_vec()
                } else {
                    vec![
                        Scenario::parse(&name)
                            .ok_or_else(|| format!("unknown scenario `{name}`"))?,
                    ]
                };
            }
            "--db" => args.db = Some(it.next().ok_or("--db needs a path")?.into()),
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    Ok(args)
}

#[tokio::main]
async fn main() -> ExitCode {
    let mut raw = std::env::args().skip(1);
    if raw.next().as_deref() == Some(CRASH_CHILD) {
        let Some(phase) = raw
            .next()
            .as_deref()
            .and_then(examples::crash::Phase::parse)
        else {
            eprintln!("error: {CRASH_CHILD} needs `start` or `recover`");
            return ExitCode::from(2);
        };
        return match examples::crash::child_main(phase).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("crash child: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            if !message.is_empty() {
                eprintln!("error: {message}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), DemoError> {
    let meta = &<escalate_deal as Chain>::META;
    if !args.json {
        println!(
            "Chain `{}` runs as principal `{}`.\n",
            meta.name, meta.principal
        );
        examples::demo::print_chain_overview(
            meta,
            "Scope manifest (the minimal grant per connector):",
        );
    }
    let mut reports = Vec::new();
    for scenario in &args.scenarios {
        // Each scenario gets fresh providers and a fresh store, so they do not interfere.
        let dir = tempfile::tempdir()?;
        let db = args
            .db
            .clone()
            .unwrap_or_else(|| dir.path().join("chains.db"));
        examples::demo::progress(
            args.json,
            &format!(
                "[{}] starting the provider sandbox and the store at {}",
                scenario.name(),
                db.display()
            ),
        );
        let report = if *scenario == Scenario::Crash {
            examples::demo::progress(
                args.json,
                "[crash] connecting alice's accounts, then running the chain in a child process to kill it",
            );
            let me = std::env::current_exe()?;
            examples::crash::play(&db, move || {
                let mut child = std::process::Command::new(&me);
                child.arg(CRASH_CHILD);
                child
            })
            .await?
        } else {
            let demo = Demo::start(&db).await?;
            examples::demo::progress(
                args.json,
                &format!(
                    "[{}] connecting alice's accounts (consent with PKCE), then running",
                    scenario.name()
                ),
            );
            demo.play(*scenario).await?
        };
        if !args.json {
            print_report(&report);
        }
        reports.push(report);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    }
    Ok(())
}

fn print_report(r: &Report) {
    println!(
        "\n=== scenario `{}`: run {} ===",
        r.scenario.name(),
        r.run_id.as_deref().unwrap_or("(none)")
    );
    for line in &r.timeline {
        println!("  · {line}");
    }
    println!("  final state: {}", r.state);
    if let Some(reason) = &r.reason {
        println!("  reason:      {reason}");
    }
    for link in &r.consent_links {
        println!("  consent:     {link}");
    }
    if !r.steps.is_empty() {
        print!("\n{}", examples::demo::StepLine::table("step", &r.steps));
    }
    println!(
        "\n  Who authorized changes to Salesforce Opportunity {}?",
        examples::demo::OPPORTUNITY
    );
    if r.who_authorized.is_empty() {
        println!("    nobody: no write reached it");
    }
    for w in &r.who_authorized {
        println!(
            "    {} by principal `{}` as {} (grant {}, scopes {})",
            w.write,
            w.principal,
            w.upstream_subject,
            w.grant,
            w.scopes.join(" ")
        );
    }
    for alert in &r.alerts {
        println!("  OPERATOR ALERT: {alert}");
    }
    let writes: Vec<String> = r
        .provider_writes
        .iter()
        .map(|(c, n)| format!("{c} {n}"))
        .collect();
    let single = r
        .writing_subjects
        .iter()
        .all(|(_, subjects)| subjects.len() <= 1);
    println!(
        "\n  providers saw writes: {}; token refreshes: {}",
        writes.join(", "),
        r.refreshes
    );
    println!(
        "  one upstream identity per provider wrote: {}",
        if single { "yes" } else { "NO" }
    );
    println!("  opportunity stage now: {}", r.final_stage);
    println!("  audit trail: {}", r.audit_verification);
}
