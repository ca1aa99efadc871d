//! `approvals list|approve|deny`: the steps waiting for a person's approval, and deciding
//! them; and who approved a write, for `audit why`.

use std::io::Write;
use std::path::Path;

use clap::Subcommand;
use serde_json::{Value, json};

use super::open::{db_error, open_runs};
use super::output::{self, table};
use super::{CliError, CliSetup};
use crate::approval::PendingApproval;
use crate::audit::{AuditEvent, AuditStore, Authorization};
use crate::journal::RunState;

/// `approvals ...`.
#[derive(Debug, Subcommand)]
pub(super) enum ApprovalsCmd {
    /// Steps waiting for a person's approval: run, approval id, principal, step, reason,
    /// arguments, expiry.
    List {
        /// Only the runs of this principal.
        #[arg(long)]
        principal: Option<String>,
    },
    /// Approves a pending step as APPROVER (the run's principal, or whom the application's
    /// approval policy authorizes) and drives the run on.
    Approve {
        /// The run.
        run: String,
        /// The approval id (`approvals list`).
        approval: String,
        /// Who approves.
        #[arg(long)]
        approver: String,
    },
    /// Denies a pending step as APPROVER: the run goes down its failure path (compensation).
    Deny {
        /// The run.
        run: String,
        /// The approval id (`approvals list`).
        approval: String,
        /// Who denies.
        #[arg(long)]
        approver: String,
    },
}

fn write(w: &mut (dyn Write + Send), text: &str) -> Result<(), CliError> {
    w.write_all(output::escape_keep_lines(text).as_bytes())
        .map_err(|e| CliError::io("writing to stdout", e))
}

fn write_json(w: &mut (dyn Write + Send), value: &Value) -> Result<(), CliError> {
    let text = serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string());
    write(w, &format!("{text}\n"))
}

pub(super) async fn dispatch(
    db: &Path,
    json: bool,
    cmd: ApprovalsCmd,
    setup: &CliSetup,
    w: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    match cmd {
        ApprovalsCmd::List { principal } => list(db, principal.as_deref(), json, w).await,
        ApprovalsCmd::Approve {
            run,
            approval,
            approver,
        } => decide(db, &run, &approval, &approver, true, setup, json, w).await,
        ApprovalsCmd::Deny {
            run,
            approval,
            approver,
        } => decide(db, &run, &approval, &approver, false, setup, json, w).await,
    }
}

async fn list(
    db: &Path,
    principal: Option<&str>,
    json: bool,
    w: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    let runs = open_runs(db).await?;
    let pending: Vec<PendingApproval> = runs
        .list_runs()
        .await
        .map_err(|e| db_error(db, e))?
        .into_iter()
        .filter_map(|run| match run.state {
            RunState::AwaitingApproval(request) => Some(*request),
            _ => None,
        })
        .filter(|r| principal.is_none_or(|p| r.principal == p))
        .collect();
    if json {
        return write_json(w, &json!(pending));
    }
    if pending.is_empty() {
        return write(w, "no step waits for approval\n");
    }
    let now = crate::audit::now_unix_ms();
    let rows: Vec<Vec<String>> = pending
        .iter()
        .map(|r| {
            vec![
                r.run_id.clone(),
                r.approval_id.clone(),
                r.principal.clone(),
                r.step_id.clone(),
                r.reason.clone(),
                r.arguments.to_string(),
                if r.is_expired(now) {
                    format!("{} (expired)", output::time(r.expires_unix_ms))
                } else {
                    output::time(r.expires_unix_ms)
                },
            ]
        })
        .collect();
    write(
        w,
        &table(
            &[
                "RUN",
                "APPROVAL",
                "PRINCIPAL",
                "STEP ID",
                "REASON",
                "ARGUMENTS",
                "EXPIRES",
            ],
            &rows,
        ),
    )
}

#[allow(clippy::too_many_arguments)]
async fn decide(
    db: &Path,
    run_id: &str,
    approval_id: &str,
    approver: &str,
    approve: bool,
    setup: &CliSetup,
    json: bool,
    w: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    // Refuse an unknown run before building the runtime.
    let runs = open_runs(db).await?;
    let before = runs
        .get_run(run_id)
        .await
        .map_err(|e| db_error(db, e))?
        .ok_or_else(|| CliError::RunNotFound(run_id.to_owned()))?;
    let factory = setup.runtime.as_ref().ok_or(CliError::NoEngine)?;
    let runtime = factory(db)
        .map_err(CliError::EngineSetup)?
        .open()
        .await
        .map_err(|e| CliError::EngineSetup(e.to_string()))?;
    let engine = runtime.engine;
    let report = if approve {
        engine.approve(run_id, approval_id, approver).await
    } else {
        engine.deny(run_id, approval_id, approver).await
    }
    .map_err(CliError::Approval)?;
    if json {
        return write_json(
            w,
            &json!({
                "run_id": report.run_id,
                "decision": if approve { "approved" } else { "denied" },
                "approver": approver,
                "previous_state": before.state.kind(),
                "state": report.state,
                "output": report.output,
            }),
        );
    }
    write(
        w,
        &format!(
            "run {}: {} by {approver}; {} -> {}\n",
            report.run_id,
            if approve { "approved" } else { "denied" },
            before.state.kind(),
            output::state(&report.state)
        ),
    )
}

/// For each write `audit why` lists, who approved the step that made it (when the step
/// needed approval): the `approval_decided` record of the same run and step id.
pub(super) async fn approvers(
    audit: &dyn AuditStore,
    writes: &[Authorization],
) -> Result<Vec<Option<String>>, CliError> {
    let mut out = Vec::with_capacity(writes.len());
    for write in writes {
        let (Some(run_id), Some(step_id)) = (&write.run_id, &write.step_id) else {
            out.push(None);
            continue;
        };
        let history = audit.run_history(run_id).await.map_err(CliError::audit)?;
        out.push(history.into_iter().find_map(|r| match r.event {
            AuditEvent::ApprovalDecided {
                decision,
                decided_by,
                ..
            } if r.step_id.as_deref() == Some(step_id) && decision == "approved" => {
                Some(decided_by)
            }
            _ => None,
        }));
    }
    Ok(out)
}

/// `audit why --json`: each write with `approved_by` added where a person approved it.
pub(super) fn with_approvers(writes: &[Authorization], approvers: &[Option<String>]) -> Value {
    Value::Array(
        writes
            .iter()
            .zip(approvers)
            .map(|(write, approver)| {
                let mut value = serde_json::to_value(write).unwrap_or(Value::Null);
                if let (Some(approver), Value::Object(map)) = (approver, &mut value) {
                    map.insert("approved_by".to_owned(), Value::String(approver.clone()));
                }
                value
            })
            .collect(),
    )
}
