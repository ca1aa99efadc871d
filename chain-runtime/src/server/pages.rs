//! The HTML of the web pages: plain server-rendered markup, every interpolated value escaped.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use axum::response::Html;

use crate::audit::AuditRecord;
use crate::graph_render::{self, Highlight};
use crate::journal::{EntryResult, JournalEntry, RunRecord, RunState};

/// `body` as an HTML response.
pub(crate) fn html(body: String) -> Html<String> {
    Html(body)
}

/// HTML-escapes `s` for text and attribute values.
pub(crate) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `s` as one percent-encoded URL path segment.
pub(crate) fn url_segment(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// A whole page around `body`.
pub(crate) fn shell(title: &str, body: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title>\
         <style>body{{font-family:sans-serif;margin:2em;max-width:70em}}table{{border-collapse:collapse}}\
         td,th{{border:1px solid #ccc;padding:.3em .6em;text-align:left}}.state{{font-weight:bold}}</style>\
         </head><body><h1>{}</h1>\n{body}\n</body></html>\n",
        esc(title),
        esc(title)
    )
}

/// One escaped paragraph.
pub(crate) fn paragraph(text: &str) -> String {
    format!("<p id=\"message\">{}</p>", esc(text))
}

/// The page after a completed consent: what was connected and which runs resumed.
pub(crate) fn connected(connector: &str, resumed: &[(String, Result<String, String>)]) -> String {
    let mut body = paragraph(&format!("Connected your {connector} account."));
    if resumed.is_empty() {
        body.push_str("<p>No run was waiting for this account.</p>");
    } else {
        body.push_str("<ul id=\"resumed\">");
        for (run_id, result) in resumed {
            let what = match result {
                Ok(state) => format!("resumed, now {state}"),
                Err(e) => format!("not resumed: {e}"),
            };
            let _ = write!(
                body,
                "<li><a href=\"/runs/{}\">{}</a>: <span class=\"state\">{}</span></li>",
                url_segment(run_id),
                esc(run_id),
                esc(&what)
            );
        }
        body.push_str("</ul>");
    }
    body.push_str("<p><a href=\"/runs\">Your runs</a></p>");
    shell("Account connected", &body)
}

/// The list of a principal's runs; suspended ones with their consent link.
pub(crate) fn runs(principal: &str, runs: &[RunRecord]) -> String {
    let mut body = format!("<p>Signed in as <b>{}</b>.</p>", esc(principal));
    if runs.is_empty() {
        body.push_str("<p>You have no runs.</p>");
        return shell("Your runs", &body);
    }
    body.push_str("<table id=\"runs\"><tr><th>Run</th><th>Chain</th><th>State</th><th></th></tr>");
    for run in runs.iter().rev() {
        let id = url_segment(&run.run_id);
        let action = match &run.state {
            RunState::Suspended {
                connector, reason, ..
            } => format!(
                "{} <a class=\"consent\" href=\"/runs/{id}/consent\">Connect {}</a>",
                esc(reason),
                esc(connector)
            ),
            RunState::Blocked { reason } => esc(reason),
            RunState::Failed { error } => esc(error),
            RunState::AwaitingApproval(request) => format!(
                "{}: {} <a class=\"approvals\" href=\"/approvals\">Approve or deny</a>",
                esc(&request.step),
                esc(&request.reason)
            ),
            _ => String::new(),
        };
        let _ = write!(
            body,
            "<tr data-run=\"{}\"><td><a href=\"/runs/{id}\">{}</a></td><td>{}</td><td class=\"state\">{}</td><td>{action}</td></tr>",
            esc(&run.run_id),
            esc(&run.run_id),
            esc(&run.chain),
            run.state.kind(),
        );
    }
    body.push_str("</table>");
    shell("Your runs", &body)
}

/// The decision graph of `run`'s chain with its path and position, when the chain is known.
pub(crate) fn run_svg(run: &RunRecord, journal: &[JournalEntry]) -> Option<String> {
    let meta = crate::registry::chain(&run.chain)?;
    let done: BTreeSet<&str> = journal
        .iter()
        .filter(|e| matches!(e.result, Some(EntryResult::Ok { .. })))
        .map(|e| e.name.as_str())
        .collect();
    let current = match run.state {
        RunState::Completed { .. } => crate::graph::END,
        RunState::Failed { .. } | RunState::Compensated => crate::graph::FAIL,
        _ => run.node,
    };
    let highlight = Highlight::for_run(&meta.graph, current, done);
    Some(graph_render::svg(&meta.graph, &highlight))
}

/// One run: state, consent link or resume form, decision graph, timeline and audit answers.
pub(crate) fn run(
    run: &RunRecord,
    journal: &[JournalEntry],
    history: &[AuditRecord],
    csrf: &str,
    now_unix_ms: i64,
) -> String {
    let id = url_segment(&run.run_id);
    let mut body = format!(
        "<p>Chain <code>{}</code>, state <span class=\"state\" id=\"state\">{}</span>.</p>",
        esc(&run.chain),
        run.state.kind()
    );
    match &run.state {
        RunState::Suspended {
            connector, reason, ..
        } => {
            let _ = write!(
                body,
                "<p id=\"suspended\">Waiting: {}. <a class=\"consent\" id=\"consent\" href=\"/runs/{id}/consent\">Connect {}</a></p>\
                 <form method=\"post\" action=\"/runs/{id}/resume\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
                 <button id=\"resume\" type=\"submit\">Resume now</button></form>",
                esc(reason),
                esc(connector),
                esc(csrf)
            );
        }
        RunState::Completed { output } => {
            let _ = write!(
                body,
                "<p>Output: <code id=\"output\">{}</code></p>",
                esc(&output.to_string())
            );
        }
        RunState::Blocked { reason } => {
            let _ = write!(body, "<p>Blocked: {}</p>", esc(reason));
        }
        RunState::AwaitingApproval(request) => {
            body.push_str(&super::approvals::describe(request, now_unix_ms));
            // Only the run's principal sees this page, and may always decide.
            body.push_str(&super::approvals::forms(request, csrf));
        }
        RunState::Failed { error } => {
            let _ = write!(body, "<p>Failed: {}</p>", esc(error));
        }
        _ => {}
    }
    if let Some(svg) = run_svg(run, journal) {
        body.push_str("<h2>Decision graph</h2><div id=\"graph\">");
        body.push_str(&svg);
        body.push_str("</div>");
    }
    body.push_str("<h2>Timeline</h2><table id=\"timeline\"><tr><th>#</th><th>Step</th><th>Connector</th><th>Upstream subject</th><th>Outcome</th></tr>");
    let steps = crate::registry::chain(&run.chain)
        .map(|m| m.steps)
        .unwrap_or(&[]);
    for entry in journal {
        let connector = steps
            .iter()
            .find(|s| s.name == entry.name)
            .map(|s| s.connector)
            .unwrap_or("");
        let subject = run
            .subjects
            .get(connector)
            .cloned()
            .flatten()
            .unwrap_or_default();
        let approval = entry.kind == crate::journal::EntryKind::Approval;
        let outcome = match &entry.result {
            None if approval => "waiting for approval".to_owned(),
            None => "in progress".to_owned(),
            Some(EntryResult::Ok { .. }) if approval => "approved".to_owned(),
            Some(EntryResult::Ok { .. }) => "succeeded".to_owned(),
            Some(EntryResult::Err { error }) => format!("failed: {error}"),
        };
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            entry.seq,
            esc(&entry.step_id),
            esc(connector),
            esc(&subject),
            esc(&outcome)
        );
    }
    body.push_str("</table><h2>Audit</h2><table id=\"audit\"><tr><th>#</th><th>Event</th><th>Connector</th><th>Subject</th><th>Outcome</th></tr>");
    for record in history {
        let event = serde_json::to_value(&record.event)
            .ok()
            .and_then(|v| v.get("type").and_then(|t| t.as_str()).map(str::to_owned))
            .unwrap_or_default();
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:?}</td></tr>",
            record.seq,
            esc(&event),
            esc(record.connector.as_deref().unwrap_or("")),
            esc(record.upstream_subject.as_deref().unwrap_or("")),
            record.outcome
        );
    }
    body.push_str("</table><p><a href=\"/runs\">Your runs</a></p>");
    shell(&format!("Run {}", run.run_id), &body)
}
