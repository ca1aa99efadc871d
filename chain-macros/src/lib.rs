//! Attribute macros of `chain-runtime`: `#[step]`, `#[compensator]` and `#[chain]`.
//!
//! Use them through `chain_runtime` (which re-exports them); generated code refers to
//! `::chain_runtime` and nothing else. Each macro runs in three phases: parse the attribute
//! and the function into typed values (`attr`, `ast`), check the rules that span several
//! values (`check`, `body`), then quote (`expand`). Errors are collected, never thrown one
//! at a time, and when the function's signature is usable the expansion is emitted beside
//! them so that callers do not drown in follow-up errors.
#![forbid(unsafe_code)]

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::quote;
use syn::ItemFn;
use syn::parse::{Parse, ParseStream};
use syn::spanned::Spanned;

mod ast;
mod attr;
mod body;
mod check;
mod ctxt;
mod expand;
mod rewrite;
mod symbol;

use ast::{FnShape, Role};
use attr::{ChainArgs, CompensatorArgs, EffectArg, StepArgs};
use ctxt::Ctxt;

/// Declares an async function as a step of a chain: an authorized call to one connector.
///
/// `#[step(connector = "name", scopes = ["..."], EFFECT)]` where EFFECT is one of
/// `compensate = undo_fn`, `irreversible = "why"` or `read`; add `idempotent` when the
/// provider deduplicates the step's writes by its `Idempotency-Key` header (a write with an
/// unknown outcome after a crash is then resent instead of blocking the run), and
/// `reconcile = read_back` to name an `async fn read_back(ctx: &StepCtx<P>, <the step's inputs>)
/// -> Result<Option<Output>, StepError>` that tells, after a crash, whether the write happened.
/// `approval = "why"` makes a write wait for a person's approval before each call: the run
/// suspends with the step's arguments and the reason shown to the approver (the arguments
/// must implement `Serialize`).
#[proc_macro_attribute]
pub fn step(args: TokenStream, item: TokenStream) -> TokenStream {
    let item: TokenStream2 = item.into();
    expand_lazy(item, |fun| step_impl(args.into(), fun)).into()
}

/// Declares the undo of a compensated step: `#[compensator(connector = "name", scopes = [...])]`
/// on `async fn undo(ctx: &StepCtx<P>, output: StepOutput) -> Result<(), StepError>`.
#[proc_macro_attribute]
pub fn compensator(args: TokenStream, item: TokenStream) -> TokenStream {
    let item: TokenStream2 = item.into();
    expand_lazy(item, |fun| compensator_impl(args.into(), fun)).into()
}

/// Declares a chain: `#[chain(principal = Type)]` on
/// `async fn name(ctx: &ChainCtx<Type>, ...) -> Result<T, ChainError>`.
#[proc_macro_attribute]
pub fn chain(args: TokenStream, item: TokenStream) -> TokenStream {
    let item: TokenStream2 = item.into();
    expand_with(item.clone(), |fun| chain_impl(args.into(), fun)).into()
}

/// Parses the item as a function and runs `expand`; on a parse failure the item is emitted
/// unchanged beside the error (tokio's approach), so editors keep working.
fn expand_with(item: TokenStream2, expand: impl FnOnce(ItemFn) -> TokenStream2) -> TokenStream2 {
    match syn::parse2::<ItemFn>(item.clone()) {
        Ok(fun) => expand(fun),
        Err(e) => {
            let error = syn::Error::new(e.span(), format!("expected an `async fn`: {e}"))
                .into_compile_error();
            quote!(#item #error)
        }
    }
}

/// Like [`expand_with`] for a step or compensator, whose body the macro only copies: the
/// signature is parsed, the body is kept as the tokens it is (one verbatim statement inside
/// its braces) instead of being parsed with the full expression grammar and printed again.
/// That is most of a step's expansion time in a debug build of the macro; a syntax error in
/// the body is then reported by the compiler, at the same tokens.
fn expand_lazy(item: TokenStream2, expand: impl FnOnce(ItemFn) -> TokenStream2) -> TokenStream2 {
    match syn::parse2::<LazyFn>(item.clone()) {
        Ok(LazyFn(fun)) => expand(fun),
        Err(_) => expand_with(item, expand),
    }
}

/// An `ItemFn` whose block holds its statements unparsed (see [`expand_lazy`]).
struct LazyFn(ItemFn);

impl Parse for LazyFn {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let mut attrs = input.call(syn::Attribute::parse_outer)?;
        let vis: syn::Visibility = input.parse()?;
        let sig: syn::Signature = input.parse()?;
        let content;
        let brace_token = syn::braced!(content in input);
        attrs.extend(content.call(syn::Attribute::parse_inner)?);
        let body: TokenStream2 = content.parse()?;
        let stmts = if body.is_empty() {
            Vec::new()
        } else {
            vec![syn::Stmt::Item(syn::Item::Verbatim(body))]
        };
        Ok(LazyFn(ItemFn {
            attrs,
            vis,
            modifiers: syn::FnModifiers::default(),
            sig,
            block: Box::new(syn::Block { brace_token, stmts }),
        }))
    }
}

fn errors_beside(cx: Ctxt, expansion: TokenStream2) -> TokenStream2 {
    match cx.check() {
        Ok(()) => expansion,
        Err(e) => {
            let errors = e.into_compile_error();
            quote!(#expansion #errors)
        }
    }
}

fn attr_span(args: &TokenStream2) -> Span {
    if args.is_empty() {
        Span::call_site()
    } else {
        args.span()
    }
}

fn step_impl(args: TokenStream2, item: ItemFn) -> TokenStream2 {
    let cx = Ctxt::new();
    let span = attr_span(&args);
    let parsed = match attr::split_args(args) {
        Ok(raw) => StepArgs::parse(&cx, raw),
        Err(e) => {
            cx.syn_error(e);
            StepArgs {
                effect: Some(EffectArg::Read),
                ..StepArgs::default()
            }
        }
    };
    let shape = FnShape::analyse(&cx, &item, Role::Step);
    let is_write = !matches!(parsed.effect, Some(EffectArg::Read));
    check::connector(&cx, parsed.connector.as_ref(), span, "#[step]");
    check::scopes(
        &cx,
        parsed.scopes.as_ref(),
        is_write,
        &item.sig.ident,
        span,
        "step",
    );
    check::effect(
        &cx,
        parsed.effect.as_ref(),
        &item.sig.ident,
        parsed.connector.as_ref(),
    );
    if let (false, Some(path)) = (is_write, &parsed.reconcile) {
        cx.error_spanned_by(
            path,
            "a `read` step changes nothing, so there is nothing to reconcile: remove `reconcile`",
        );
    }
    if let (false, Some(reason)) = (is_write, &parsed.approval) {
        cx.error_spanned_by(
            reason,
            "a `read` step changes nothing, so there is nothing to approve: remove `approval`, or declare the write the approver protects (`compensate = undo_fn` or `irreversible = \"why\"`)",
        );
    }
    let expansion = match (&shape.ctx, &shape.output) {
        (Some(ctx), Some(output)) if !shape.borrows => expand::step(expand::StepPlan {
            item: &item,
            principal: &ctx.principal,
            inputs: &shape.inputs,
            output,
            connector: parsed.connector.as_ref(),
            scopes: parsed.scopes.as_ref(),
            effect: parsed.effect.as_ref(),
            idempotent: parsed.idempotent,
            reconcile: parsed.reconcile.as_ref(),
            approval: parsed.approval.as_ref(),
        }),
        _ => quote!(#item),
    };
    errors_beside(cx, expansion)
}

fn compensator_impl(args: TokenStream2, item: ItemFn) -> TokenStream2 {
    let cx = Ctxt::new();
    let span = attr_span(&args);
    let parsed = match attr::split_args(args) {
        Ok(raw) => CompensatorArgs::parse(&cx, raw),
        Err(e) => {
            cx.syn_error(e);
            CompensatorArgs::default()
        }
    };
    let shape = FnShape::analyse(&cx, &item, Role::Compensator);
    check::connector(&cx, parsed.connector.as_ref(), span, "#[compensator]");
    check::scopes(
        &cx,
        parsed.scopes.as_ref(),
        true,
        &item.sig.ident,
        span,
        "compensator",
    );
    if shape.inputs.len() != 1 && shape.ctx.is_some() {
        cx.error_spanned_by(
            &item.sig.inputs,
            format!(
                "a compensator takes its context and the output of the step it undoes: `async fn {}(ctx: &StepCtx<P>, done: StepOutput)`",
                item.sig.ident
            ),
        );
    }
    let expansion = match (&shape.ctx, &shape.output, shape.inputs.as_slice()) {
        (Some(ctx), Some(output), [input]) if !shape.borrows => {
            expand::compensator(expand::CompensatorPlan {
                item: &item,
                principal: &ctx.principal,
                input,
                output,
                connector: parsed.connector.as_ref(),
                scopes: parsed.scopes.as_ref(),
            })
        }
        _ => quote!(#item),
    };
    errors_beside(cx, expansion)
}

fn chain_impl(args: TokenStream2, mut item: ItemFn) -> TokenStream2 {
    let cx = Ctxt::new();
    let span = attr_span(&args);
    let parsed = match attr::split_args(args) {
        Ok(raw) => ChainArgs::parse(&cx, raw),
        Err(e) => {
            cx.syn_error(e);
            ChainArgs::default()
        }
    };
    if parsed.principal.is_none() {
        cx.syn_error(syn::Error::new(
            span,
            "#[chain] needs the principal whose authority every step uses: add `principal = YourPrincipal`",
        ));
    }
    let shape = FnShape::analyse(&cx, &item, Role::Chain);
    let analysis = match (
        shape.ctx.as_ref().and_then(|c| c.ident.clone()),
        &parsed.principal,
    ) {
        (Some(ctx_ident), Some(principal)) => {
            let chain = item.sig.ident.clone();
            Some(body::analyse(
                &cx,
                &ctx_ident,
                &chain,
                principal,
                &mut item.block,
            ))
        }
        _ => None,
    };
    let expansion = match (&parsed.principal, &shape.ctx, &shape.output, &analysis) {
        (Some(principal), Some(ctx), Some(output), Some(analysis)) => {
            expand::chain(expand::ChainPlan {
                item: &item,
                principal,
                ctx_principal: &ctx.principal,
                shape: &shape,
                output,
                compensate_on_auth_failure: parsed.compensate_on_auth_failure,
                limits: &parsed.limits,
                analysis,
            })
        }
        _ => quote!(#item),
    };
    errors_beside(cx, expansion)
}
