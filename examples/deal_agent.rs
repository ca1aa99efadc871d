//! Escalate a deal with a model choosing the steps: the scripted model (the sandbox's
//! OpenAI-compatible emulator) picks among the seed's tools plus `find_issue`, which needs a
//! scope alice has not granted yet.
//!
//! ```text
//! cargo run --example deal_agent                          # every scenario
//! cargo run --example deal_agent -- --scenario crash      # one of them
//! cargo run --example deal_agent -- --json                # machine-readable
//! ```
//!
//! Scenarios: `preflight` (consent for the whole toolset before anything runs), `rejected`
//! (an unknown tool and invalid arguments, fed back and never run), `crash` (a crash mid-run
//! whose replay does not ask the model again), `revoked` (a revocation suspends the run; the
//! resume continues the conversation).

use std::process::ExitCode;

use chain_runtime::Chain;
use examples::agent::{AgentDemo, AgentReport, AgentScenario, escalate_deal_agent};
use examples::demo::DemoError;

const USAGE: &str = "usage: deal_agent [--scenario NAME|all] [--json]\n\
scenarios: preflight rejected crash revoked";

fn parse_args() -> Result<(Vec<AgentScenario>, bool), String> {
    let mut scenarios = AgentScenario::ALL.to_vec();
    let mut json = false;
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--json" => json = true,
            "--scenario" => {
                let name = it.next().ok_or("--scenario needs a name")?;
                if name != "all" {
                    scenarios = vec![
                        AgentScenario::parse(&name)
                            .ok_or_else(|| format!("unknown scenario `{name}`"))?,
                    ];
                }
            }
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    Ok((scenarios, json))
}

#[tokio::main]
async fn main() -> ExitCode {
    let (scenarios, json) = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            if !message.is_empty() {
                eprintln!("error: {message}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(scenarios, json).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(scenarios: Vec<AgentScenario>, json: bool) -> Result<(), DemoError> {
    let meta = &<escalate_deal_agent as Chain>::META;
    if !json {
        println!(
            "Chain `{}` runs as principal `{}`; a model chooses its steps.\n",
            meta.name, meta.principal
        );
        examples::demo::print_chain_overview(
            meta,
            "Scope manifest (the union over the toolset, compensators included):",
        );
    }
    let mut reports = Vec::new();
    for scenario in scenarios {
        let dir = tempfile::tempdir()?;
        let db = dir.path().join("chains.db");
        examples::demo::progress(
            json,
            &format!(
                "[{}] starting the provider sandbox, the scripted model and the store at {}",
                scenario.name(),
                db.display()
            ),
        );
        let agent = AgentDemo::start(&db).await?;
        let report = agent.play(scenario).await?;
        if !json {
            print_report(&report);
        }
        reports.push(report);
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    }
    Ok(())
}

fn print_report(r: &AgentReport) {
    println!(
        "\n=== scenario `{}`: run {} ===",
        r.scenario.name(),
        r.run_id.as_deref().unwrap_or("(none)")
    );
    for line in &r.timeline {
        println!("  · {line}");
    }
    println!("  final state: {}", r.state);
    if let Some(answer) = &r.answer {
        println!("  model said:  {answer}");
    }
    for link in &r.consent_links {
        println!("  consent:     {link}");
    }
    for rejected in &r.rejected {
        println!("  rejected:    {rejected}");
    }
    if !r.steps.is_empty() {
        print!(
            "\n{}",
            examples::demo::StepLine::table("tool call", &r.steps)
        );
    }
    let writes: Vec<String> = r
        .provider_writes
        .iter()
        .map(|(c, n)| format!("{c} {n}"))
        .collect();
    println!(
        "\n  model: {} requests for {} journaled turns; credentials in what it saw: {}",
        r.model_requests, r.model_turns, r.secrets_seen_by_model
    );
    println!("  providers saw writes: {}", writes.join(", "));
    println!("  opportunity stage now: {}", r.final_stage);
    println!("  audit trail: {}", r.audit_verification);
}
