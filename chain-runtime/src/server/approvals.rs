//! The approval pages: the steps waiting for the signed-in principal's decision, with approve
//! and deny forms (CSRF-protected like every form), and the posts that decide them.

use std::fmt::Write as _;

use axum::extract::{Form, Path, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Redirect, Response};

use super::pages::{esc, html, shell, url_segment};
use super::{CsrfForm, WebServer, page_error};
use crate::approval::PendingApproval;
use crate::engine::ApprovalError;

/// The approve and deny forms of one pending approval.
pub(crate) fn forms(request: &PendingApproval, csrf: &str) -> String {
    let action = format!(
        "/runs/{}/approvals/{}",
        url_segment(&request.run_id),
        url_segment(&request.approval_id)
    );
    let csrf = esc(csrf);
    format!(
        "<form class=\"decide\" method=\"post\" action=\"{action}/approve\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
         <button class=\"approve\" type=\"submit\">Approve</button></form> \
         <form class=\"decide\" method=\"post\" action=\"{action}/deny\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
         <button class=\"deny\" type=\"submit\">Deny</button></form>"
    )
}

/// What a person is asked to approve, in one paragraph.
pub(crate) fn describe(request: &PendingApproval, now_unix_ms: i64) -> String {
    let minutes = (request.expires_unix_ms - now_unix_ms).max(0) / 60_000;
    format!(
        "<p id=\"approval\">Step <code>{}</code> ({}) waits for approval: <b>{}</b>. Arguments: <code class=\"arguments\">{}</code>. \
         Expires in {minutes} min (then it counts as denied).</p>",
        esc(&request.step),
        esc(&request.connector),
        esc(&request.reason),
        esc(&request.arguments.to_string()),
    )
}

/// `GET /approvals`: the requests the signed-in principal may decide.
pub(super) async fn approvals_page(State(web): State<WebServer>, parts: Parts) -> Response {
    let principal = match web.who(&parts).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let pending = match web.engine.pending_approvals(&principal).await {
        Ok(pending) => pending,
        Err(e) => return page_error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    let now = web.engine.approval_policy().now_unix_ms();
    let csrf = web.csrf.token(&principal);
    let mut body = format!("<p>Signed in as <b>{}</b>.</p>", esc(&principal));
    if pending.is_empty() {
        body.push_str("<p id=\"none\">Nothing waits for your approval.</p>");
    } else {
        body.push_str(
            "<table id=\"approvals\"><tr><th>Run</th><th>Principal</th><th>Step</th><th>Why it needs approval</th>\
             <th>Arguments</th><th>Expires in</th><th></th></tr>",
        );
        for request in &pending {
            let _ = write!(
                body,
                "<tr data-approval=\"{}\"><td><a href=\"/runs/{}\">{}</a></td><td>{}</td><td>{}</td><td>{}</td>\
                 <td><code>{}</code></td><td>{} min</td><td>{}</td></tr>",
                esc(&request.approval_id),
                url_segment(&request.run_id),
                esc(&request.run_id),
                esc(&request.principal),
                esc(&request.step_id),
                esc(&request.reason),
                esc(&request.arguments.to_string()),
                (request.expires_unix_ms - now).max(0) / 60_000,
                forms(request, &csrf),
            );
        }
        body.push_str("</table>");
    }
    body.push_str("<p><a href=\"/runs\">Your runs</a></p>");
    html(shell("Waiting for your approval", &body)).into_response()
}

/// `POST /runs/{id}/approvals/{approval}/approve|deny`, with the form's CSRF token.
pub(super) async fn decide(
    State(web): State<WebServer>,
    Path((run_id, approval_id, verdict)): Path<(String, String, String)>,
    parts: Parts,
    form: Result<Form<CsrfForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let principal = match web.who(&parts).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let token = form.map(|Form(f)| f.csrf).unwrap_or_default();
    if !web.csrf.verify(&principal, &token) {
        return page_error(
            StatusCode::FORBIDDEN,
            "This form is missing its CSRF token or the token is not yours; reload the page and try again.",
        );
    }
    let decided = match verdict.as_str() {
        "approve" => web.engine.approve(&run_id, &approval_id, &principal).await,
        "deny" => web.engine.deny(&run_id, &approval_id, &principal).await,
        _ => return page_error(StatusCode::NOT_FOUND, "No such decision."),
    };
    match decided {
        // The principal may see the run only when it is theirs; an authorized approver of
        // someone else's run goes back to the list.
        Ok(report) if web.own_run(&principal, &report.run_id).await.is_ok() => {
            Redirect::to(&format!("/runs/{}", url_segment(&report.run_id))).into_response()
        }
        Ok(_) => Redirect::to("/approvals").into_response(),
        // Someone else's run: as unknown as any other run of theirs.
        Err(ApprovalError::NotAllowed { .. }) => {
            page_error(StatusCode::NOT_FOUND, "No such approval.")
        }
        Err(ApprovalError::NotPending { .. }) => page_error(
            StatusCode::CONFLICT,
            "This approval is no longer pending: it was decided already.",
        ),
        Err(ApprovalError::Expired { .. }) => page_error(
            StatusCode::CONFLICT,
            "This approval had expired, which counts as a denial: the run did not make the write.",
        ),
        Err(e) => page_error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}
