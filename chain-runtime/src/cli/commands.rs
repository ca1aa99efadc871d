//! The commands.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;

use serde::Serialize;
use serde_json::{Value, json};

use super::open::{db_error, open_audit, open_runs};
use super::output::{self, SyncWriter, table};
use super::{Args, AuditCmd, CliError, CliSetup, Cmd, RunsCmd};
use crate::audit::{AuditStore, Checkpoint, WriteKind, verify_jsonl};
use crate::chain::ChainMeta;
use crate::journal::{RunJournal, RunRecord};

/// Where output goes, and how.
struct Out<'a> {
    w: &'a mut (dyn Write + Send),
    json: bool,
}

impl Out<'_> {
    /// Writes `text` with every control character but its line breaks escaped: ids, principals
    /// and messages end up in it.
    fn text(&mut self, text: &str) -> Result<(), CliError> {
        self.w
            .write_all(super::output::escape_keep_lines(text).as_bytes())
            .map_err(|e| CliError::io("writing to stdout", e))
    }

    fn line(&mut self, text: &str) -> Result<(), CliError> {
        self.text(text)?;
        self.text("\n")
    }

    fn json<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), CliError> {
        let text = serde_json::to_string_pretty(value).map_err(|e| {
            CliError::io(
                "encoding JSON output",
                std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            )
        })?;
        self.line(&text)
    }
}

pub(super) async fn dispatch(
    args: Args,
    setup: &CliSetup,
    w: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    let mut out = Out { w, json: args.json };
    let db = args.db.as_path();
    match args.command {
        Cmd::Runs(RunsCmd::List) => runs_list(db, &mut out).await,
        Cmd::Runs(RunsCmd::Show { run }) => runs_show(db, &run, &mut out).await,
        Cmd::Runs(RunsCmd::Resume { run }) => runs_resume(db, &run, setup, &mut out).await,
        Cmd::Approvals(cmd) => super::approvals::dispatch(db, out.json, cmd, setup, out.w).await,
        #[cfg(feature = "mcp")]
        Cmd::Serve { listen, principal } => {
            super::serve::serve(db, &listen, principal, setup, out.w).await
        }
        Cmd::Audit(AuditCmd::Verify { checkpoint, head }) => {
            audit_verify(db, checkpoint.as_deref(), head, &mut out).await
        }
        Cmd::Audit(AuditCmd::Why {
            connector,
            record_id,
        }) => audit_why(db, &connector, &record_id, &mut out).await,
        Cmd::Audit(AuditCmd::History { run }) => audit_history(db, &run, &mut out).await,
        Cmd::Audit(AuditCmd::Activity {
            principal,
            from_ms,
            to_ms,
        }) => audit_activity(db, &principal, from_ms, to_ms, &mut out).await,
        Cmd::Audit(AuditCmd::Export { out: file }) => {
            audit_export(db, file.as_deref(), &mut out).await
        }
        Cmd::Audit(AuditCmd::VerifyExport { file, checkpoint }) => {
            verify_export(&file, checkpoint.as_deref(), &mut out)
        }
        Cmd::Chains => chains(&mut out),
        Cmd::Scopes { chain } => {
            let meta = find_chain(&chain)?;
            out.line(&meta.manifest().to_json())
        }
        Cmd::Tools {
            chain,
            format,
            whole,
        } => out.json(&super::tools::tools(find_chain(&chain)?, format, whole)?),
        Cmd::Graph { chain, format } => {
            let meta = find_chain(&chain)?;
            if out.json {
                out.json(&meta.graph)
            } else {
                out.text(&crate::graph_render::render(
                    &meta.graph,
                    format,
                    &crate::graph_render::Highlight::none(),
                ))
            }
        }
    }
}

fn find_chain(name: &str) -> Result<&'static ChainMeta, CliError> {
    crate::registry::chain(name).ok_or_else(|| CliError::UnknownChain {
        name: name.to_owned(),
        known: crate::registry::chains()
            .into_iter()
            .map(ChainMeta::path)
            .collect(),
    })
}

fn chains(out: &mut Out<'_>) -> Result<(), CliError> {
    let all = crate::registry::chains();
    if out.json {
        let list: Vec<Value> = all
            .iter()
            .map(|c| {
                json!({
                    "name": c.name,
                    "path": c.path(),
                    "principal": c.principal,
                    "on_auth_failure": c.on_auth_failure,
                    "steps": c.steps.iter().map(|s| s.name).collect::<Vec<_>>(),
                })
            })
            .collect();
        return out.json(&list);
    }
    let rows: Vec<Vec<String>> = all
        .iter()
        .map(|c| {
            vec![
                c.name.to_owned(),
                c.path(),
                c.principal.to_owned(),
                format!("{:?}", c.on_auth_failure).to_lowercase(),
                output::list(c.steps.iter().map(|s| s.name)),
            ]
        })
        .collect();
    out.text(&table(
        &["NAME", "PATH", "PRINCIPAL", "ON AUTH FAILURE", "STEPS"],
        &rows,
    ))
}

async fn get_run(runs: &dyn RunJournal, db: &Path, run_id: &str) -> Result<RunRecord, CliError> {
    runs.get_run(run_id)
        .await
        .map_err(|e| db_error(db, e))?
        .ok_or_else(|| CliError::RunNotFound(run_id.to_owned()))
}

async fn runs_list(db: &Path, out: &mut Out<'_>) -> Result<(), CliError> {
    let runs = open_runs(db).await?;
    let list = runs.list_runs().await.map_err(|e| db_error(db, e))?;
    if out.json {
        return out.json(&list);
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|r| {
            vec![
                r.run_id.clone(),
                r.chain.clone(),
                r.principal_id.clone(),
                r.state.kind().to_owned(),
                r.node.to_string(),
                output::time(r.created_unix_ms),
            ]
        })
        .collect();
    out.text(&table(
        &["ID", "CHAIN", "PRINCIPAL", "STATE", "NODE", "CREATED"],
        &rows,
    ))
}

async fn runs_show(db: &Path, run_id: &str, out: &mut Out<'_>) -> Result<(), CliError> {
    let runs = open_runs(db).await?;
    let run = get_run(runs.as_ref(), db, run_id).await?;
    let dberr = |e| db_error(db, e);
    let journal = runs.journal(run_id).await.map_err(dberr)?;
    let compensations = runs.compensations(run_id).await.map_err(dberr)?;
    let alerts = runs.alerts(Some(run_id)).await.map_err(dberr)?;
    if out.json {
        return out.json(&json!({
            "run": run,
            "journal": journal,
            "compensations": compensations,
            "alerts": alerts,
        }));
    }
    let subjects = output::list(
        run.subjects
            .iter()
            .map(|(c, s)| format!("{c}={}", s.as_deref().unwrap_or("-"))),
    );
    let fields = vec![
        vec!["run".into(), run.run_id.clone()],
        vec!["chain".into(), run.chain.clone()],
        vec!["chain version".into(), run.chain_version.clone()],
        vec!["principal".into(), run.principal_id.clone()],
        vec!["subjects".into(), subjects],
        vec!["state".into(), output::state(&run.state)],
        vec!["node".into(), run.node.to_string()],
        vec!["created".into(), output::time(run.created_unix_ms)],
        vec!["input".into(), run.input.to_string()],
        vec![
            "parent run".into(),
            output::opt(run.parent_run_id.as_deref()),
        ],
    ];
    let mut text = String::new();
    for row in &fields {
        let [name, value] = [&row[0], &row[1]];
        text.push_str(&format!("{name:<14}{value}\n"));
    }
    text.push_str("\njournal\n");
    let rows: Vec<Vec<String>> = journal
        .iter()
        .map(|e| {
            let touched = match &e.result {
                Some(crate::journal::EntryResult::Ok { touched, .. }) => output::list(
                    touched
                        .iter()
                        .map(|r| format!("{}:{}:{}", r.connector, r.kind, r.id)),
                ),
                _ => "-".to_owned(),
            };
            vec![
                e.seq.to_string(),
                e.step_id.clone(),
                format!("{:?}", e.kind).to_lowercase(),
                e.attempt.to_string(),
                output::entry_result(e.result.as_ref()),
                touched,
            ]
        })
        .collect();
    text.push_str(&table(
        &["SEQ", "STEP ID", "KIND", "ATTEMPT", "RESULT", "TOUCHED"],
        &rows,
    ));
    text.push_str("\ncompensations\n");
    let rows: Vec<Vec<String>> = compensations
        .iter()
        .map(|c| {
            let result = match &c.result {
                None => "pending (intent only)".to_owned(),
                Some(None) => "ok".to_owned(),
                Some(Some(e)) => format!("error: {e}"),
            };
            vec![
                c.step_id.clone(),
                c.compensator.clone(),
                c.attempt.to_string(),
                result,
            ]
        })
        .collect();
    text.push_str(&table(
        &["STEP ID", "COMPENSATOR", "ATTEMPT", "RESULT"],
        &rows,
    ));
    text.push_str("\nalerts\n");
    let rows: Vec<Vec<String>> = alerts
        .iter()
        .map(|a| {
            vec![
                output::time(a.time_unix_ms),
                output::opt(a.step_id.as_deref()),
                a.message.clone(),
                output::list(
                    a.records
                        .iter()
                        .map(|r| format!("{}:{}:{}", r.connector, r.kind, r.id)),
                ),
            ]
        })
        .collect();
    text.push_str(&table(&["TIME", "STEP ID", "MESSAGE", "RECORDS"], &rows));
    out.text(&text)
}

async fn runs_resume(
    db: &Path,
    run_id: &str,
    setup: &CliSetup,
    out: &mut Out<'_>,
) -> Result<(), CliError> {
    let runs = open_runs(db).await?;
    let before = get_run(runs.as_ref(), db, run_id).await?;
    let factory = setup.runtime.as_ref().ok_or(CliError::NoEngine)?;
    let runtime = factory(db)
        .map_err(CliError::EngineSetup)?
        .open()
        .await
        .map_err(|e| CliError::EngineSetup(e.to_string()))?;
    let engine = runtime.engine;
    let report = engine.resume(run_id).await.map_err(CliError::engine)?;
    if out.json {
        return out.json(&json!({
            "run_id": report.run_id,
            "previous_state": before.state,
            "state": report.state,
            "output": report.output,
        }));
    }
    out.line(&format!(
        "run {}: {} -> {}",
        report.run_id,
        before.state.kind(),
        output::state(&report.state)
    ))
}

fn read_checkpoint(path: &Path) -> Result<Checkpoint, CliError> {
    let bad = |reason: String| CliError::BadCheckpoint {
        path: path.to_owned(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    serde_json::from_str(&text).map_err(|e| bad(e.to_string()))
}

/// Verifies the whole store; a broken chain is [`CliError::ChainBroken`].
async fn verified_audit(db: &Path) -> Result<std::sync::Arc<dyn AuditStore>, CliError> {
    let audit = open_audit(db).await?;
    audit.verify(None).await.map_err(CliError::audit)?;
    Ok(audit)
}

async fn audit_verify(
    db: &Path,
    checkpoint: Option<&Path>,
    head_only: bool,
    out: &mut Out<'_>,
) -> Result<(), CliError> {
    let checkpoint = checkpoint.map(read_checkpoint).transpose()?;
    let audit = open_audit(db).await?;
    let verified = match audit.verify(checkpoint.clone()).await {
        Ok(v) => v,
        Err(e) => {
            let e = CliError::audit(e);
            if let (CliError::ChainBroken(b), true) = (&e, out.json) {
                out.json(&json!({ "ok": false, "break": b, "message": b.to_string() }))?;
            }
            return Err(e);
        }
    };
    if head_only {
        let head = verified.head.ok_or(CliError::EmptyTrail)?;
        let text = serde_json::to_string(&head).map_err(|e| {
            CliError::io(
                "encoding the checkpoint",
                std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            )
        })?;
        return out.line(&text);
    }
    if out.json {
        return out.json(&json!({
            "ok": true,
            "records": verified.records,
            "head": verified.head,
            "checkpoint": checkpoint,
        }));
    }
    let mut text = format!("audit trail OK: {} records verified", verified.records);
    if let Some(cp) = &checkpoint {
        text.push_str(&format!(" (consistent with checkpoint at seq {})", cp.seq));
    }
    text.push('\n');
    match &verified.head {
        Some(head) => text.push_str(&format!("head: seq {} hash {}\n", head.seq, head.hash)),
        None => text.push_str("head: none (the trail is empty)\n"),
    }
    out.text(&text)
}

async fn audit_why(
    db: &Path,
    connector: &str,
    record_id: &str,
    out: &mut Out<'_>,
) -> Result<(), CliError> {
    let audit = verified_audit(db).await?;
    let writes = audit
        .who_authorized(connector, record_id)
        .await
        .map_err(CliError::audit)?;
    let approvers = super::approvals::approvers(audit.as_ref(), &writes).await?;
    if out.json {
        return out.json(&super::approvals::with_approvers(&writes, &approvers));
    }
    if writes.is_empty() {
        return out.line(&format!(
            "no recorded write to {connector} record `{record_id}`"
        ));
    }
    let rows: Vec<Vec<String>> = writes
        .iter()
        .zip(&approvers)
        .map(|(a, approver)| {
            let write = match &a.write {
                WriteKind::Step { step } => format!("step {step}"),
                WriteKind::Compensation {
                    compensator,
                    compensates_step_id,
                } => format!("undo {compensator} of {compensates_step_id}"),
            };
            vec![
                a.seq.to_string(),
                output::time(a.time_unix_ms),
                a.principal.clone(),
                output::opt(a.upstream_subject.as_deref()),
                output::opt(a.account_id.as_deref()),
                output::opt(a.grant_id.as_deref()),
                output::list(&a.scopes),
                output::opt(a.run_id.as_deref()),
                output::opt(a.step_id.as_deref()),
                write,
                a.outcome.as_str().to_owned(),
                output::opt(approver.as_deref()),
            ]
        })
        .collect();
    out.text(&table(
        &[
            "SEQ",
            "TIME",
            "PRINCIPAL",
            "UPSTREAM SUBJECT",
            "ACCOUNT",
            "GRANT",
            "SCOPES",
            "RUN",
            "STEP ID",
            "WRITE",
            "OUTCOME",
            "APPROVED BY",
        ],
        &rows,
    ))
}

async fn audit_history(db: &Path, run_id: &str, out: &mut Out<'_>) -> Result<(), CliError> {
    let audit = verified_audit(db).await?;
    let records = audit.run_history(run_id).await.map_err(CliError::audit)?;
    if records.is_empty() {
        return Err(CliError::RunNotFound(run_id.to_owned()));
    }
    records_table(&records, out)
}

async fn audit_activity(
    db: &Path,
    principal: &str,
    from_ms: i64,
    to_ms: i64,
    out: &mut Out<'_>,
) -> Result<(), CliError> {
    let audit = verified_audit(db).await?;
    let records = audit
        .principal_activity(principal, from_ms, to_ms)
        .await
        .map_err(CliError::audit)?;
    if records.is_empty() && !out.json {
        return out.text(&format!(
            "no audit record for principal `{principal}` in that range\n"
        ));
    }
    records_table(&records, out)
}

/// Audit records as JSON, or as a table for people.
fn records_table(records: &[crate::audit::AuditRecord], out: &mut Out<'_>) -> Result<(), CliError> {
    if out.json {
        return out.json(&records);
    }
    let rows: Vec<Vec<String>> = records
        .iter()
        .map(|r| {
            vec![
                r.seq.to_string(),
                output::time(r.time_unix_ms),
                r.event.type_name().to_owned(),
                r.outcome.as_str().to_owned(),
                output::opt(r.step_id.as_deref()),
                output::opt(r.connector.as_deref()),
                output::list(
                    r.records
                        .iter()
                        .map(|x| format!("{}:{}:{}", x.connector, x.kind, x.id)),
                ),
            ]
        })
        .collect();
    out.text(&table(
        &[
            "SEQ",
            "TIME",
            "EVENT",
            "OUTCOME",
            "STEP ID",
            "CONNECTOR",
            "RECORDS",
        ],
        &rows,
    ))
}

async fn audit_export(db: &Path, file: Option<&Path>, out: &mut Out<'_>) -> Result<(), CliError> {
    let audit = open_audit(db).await?;
    let Some(file) = file else {
        audit
            .export_jsonl(&mut SyncWriter(&mut *out.w))
            .await
            .map_err(CliError::audit)?;
        return Ok(());
    };
    let what = || format!("writing the export to `{}`", file.display());
    let f = std::fs::File::create(file).map_err(|e| CliError::io(what(), e))?;
    let mut buffered = std::io::BufWriter::new(f);
    let count = audit
        .export_jsonl(&mut SyncWriter(&mut buffered))
        .await
        .map_err(CliError::audit)?;
    buffered
        .into_inner()
        .map_err(|e| CliError::io(what(), e.into_error()))?
        .sync_all()
        .map_err(|e| CliError::io(what(), e))?;
    if out.json {
        return out.json(&json!({ "records": count, "out": file }));
    }
    out.line(&format!(
        "exported {count} audit records to {}",
        file.display()
    ))
}

fn verify_export(
    file: &Path,
    checkpoint: Option<&Path>,
    out: &mut Out<'_>,
) -> Result<(), CliError> {
    let checkpoint = checkpoint.map(read_checkpoint).transpose()?;
    let f = std::fs::File::open(file)
        .map_err(|e| CliError::io(format!("opening export `{}`", file.display()), e))?;
    let reader: Box<dyn BufRead> = Box::new(BufReader::new(f));
    let verified = verify_jsonl(reader, checkpoint.clone()).map_err(CliError::audit)?;
    if out.json {
        return out.json(&json!({
            "ok": true,
            "records": verified.records,
            "head": verified.head,
            "checkpoint": checkpoint,
        }));
    }
    let mut text = format!(
        "export {} OK: {} records verified",
        file.display(),
        verified.records
    );
    if let Some(cp) = &checkpoint {
        text.push_str(&format!(" (consistent with checkpoint at seq {})", cp.seq));
    }
    text.push('\n');
    if let Some(head) = &verified.head {
        text.push_str(&format!("head: seq {} hash {}\n", head.seq, head.hash));
    }
    out.text(&text)
}
