//! Rules that look at more than one argument: a write says how it is undone, scopes are
//! well formed, a compensator takes exactly what it undoes.

use proc_macro2::Span;
use syn::{Ident, LitStr};

use crate::attr::{EffectArg, Spanned};
use crate::ctxt::Ctxt;

/// Checks the connector: present, non-empty, no whitespace.
pub(crate) fn connector(cx: &Ctxt, connector: Option<&LitStr>, attr_span: Span, attr: &str) {
    match connector {
        None => cx.syn_error(syn::Error::new(
            attr_span,
            format!("{attr} needs the connector it calls: add `connector = \"salesforce\"` (the provider whose account the step uses)"),
        )),
        Some(lit) => {
            let name = lit.value();
            if name.trim().is_empty() || name.chars().any(char::is_whitespace) {
                cx.error_spanned_by(lit, "a connector name is one word such as \"salesforce\", with no whitespace");
            }
        }
    }
}

/// Checks the scope list: required (non-empty) for writes, each scope one non-empty token,
/// no repeats.
pub(crate) fn scopes(
    cx: &Ctxt,
    scopes: Option<&Spanned<Vec<LitStr>>>,
    is_write: bool,
    fn_name: &Ident,
    attr_span: Span,
    noun: &str,
) {
    match scopes {
        None if is_write => cx.syn_error(syn::Error::new(
            attr_span,
            format!("`{fn_name}` writes, so it must name the scopes it needs: add `scopes = [\"...\"]`, which preflight checks before the first write"),
        )),
        Some(list) if list.value.is_empty() && is_write => cx.syn_error(syn::Error::new(
            list.span,
            format!("this {noun} writes, so its scope list cannot be empty: name the scopes it needs"),
        )),
        _ => {}
    }
    let mut seen: Vec<String> = Vec::new();
    for lit in scopes.map(|s| s.value.as_slice()).unwrap_or_default() {
        let scope = lit.value();
        if scope.is_empty() {
            cx.error_spanned_by(lit, "empty scope: write the scope's name, such as \"api\"");
        } else if scope.chars().any(char::is_whitespace) {
            cx.error_spanned_by(
                lit,
                "a scope is one token without whitespace: split it into separate strings",
            );
        } else if seen.contains(&scope) {
            cx.error_spanned_by(
                lit,
                format!("duplicate scope \"{scope}\": list each scope once"),
            );
        }
        seen.push(scope);
    }
}

/// Checks that a write says how it is undone, and that an irreversible reason is given.
pub(crate) fn effect(
    cx: &Ctxt,
    effect: Option<&EffectArg>,
    fn_name: &Ident,
    connector: Option<&LitStr>,
) {
    match effect {
        None => {
            let target = connector
                .map(|c| format!(" to `{}`", c.value()))
                .unwrap_or_default();
            cx.error_spanned_by(
                fn_name,
                format!(
                    "step `{fn_name}` writes{target} but does not say how to undo it: add `compensate = undo_fn` (a #[compensator] that takes this step's output), `irreversible = \"why it cannot be undone\"`, or `read` if it changes nothing"
                ),
            );
        }
        Some(EffectArg::Irreversible(reason)) if reason.value().trim().is_empty() => {
            cx.error_spanned_by(
                reason,
                "say why the write cannot be undone: operators read this when a run is blocked",
            );
        }
        _ => {}
    }
}
