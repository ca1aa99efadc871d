//! Parsing of the attribute arguments into typed, span-keeping values.
//!
//! The arguments are first split into `key [= value]` pairs, so that one bad value does
//! not hide the problems of the others; each key then parses its own value.

use proc_macro2::{Span, TokenStream, TokenTree};
use syn::ext::IdentExt;
use syn::parse::{ParseStream, Parser};
use syn::punctuated::Punctuated;
use syn::{Ident, LitStr, Path, Token, Type};

use crate::ctxt::Ctxt;
use crate::symbol::{self, *};

/// One `key` or `key = value` argument, before interpretation.
pub(crate) struct RawArg {
    pub(crate) key: Ident,
    pub(crate) value: Option<TokenStream>,
}

/// Splits attribute arguments at top-level commas into raw `key [= value]` pairs.
pub(crate) fn split_args(args: TokenStream) -> syn::Result<Vec<RawArg>> {
    let parser = |input: ParseStream| {
        let mut out = Vec::new();
        while !input.is_empty() {
            let key = input.call(Ident::parse_any).map_err(|e| {
                syn::Error::new(e.span(), "expected a key such as `connector = \"name\"`")
            })?;
            let value = if input.peek(Token![=]) {
                input.parse::<Token![=]>()?;
                let mut tokens = TokenStream::new();
                while !input.is_empty() && !input.peek(Token![,]) {
                    tokens.extend([input.parse::<TokenTree>()?]);
                }
                if tokens.is_empty() {
                    return Err(syn::Error::new(
                        key.span(),
                        format!("`{key} =` needs a value"),
                    ));
                }
                Some(tokens)
            } else {
                None
            };
            out.push(RawArg { key, value });
            if input.is_empty() {
                break;
            }
            input.parse::<Token![,]>()?;
        }
        Ok(out)
    };
    parser.parse2(args)
}

/// A value with the span of the tokens it came from.
#[derive(Clone)]
pub(crate) struct Spanned<T> {
    pub(crate) value: T,
    pub(crate) span: Span,
}

/// What a step declares about its effect.
pub(crate) enum EffectArg {
    Compensate(Path),
    Irreversible(LitStr),
    Read,
}

/// `#[step(...)]`, parsed.
#[derive(Default)]
pub(crate) struct StepArgs {
    pub(crate) connector: Option<LitStr>,
    pub(crate) scopes: Option<Spanned<Vec<LitStr>>>,
    pub(crate) effect: Option<EffectArg>,
    pub(crate) idempotent: bool,
    pub(crate) reconcile: Option<Path>,
    /// `approval = "why"`: a person approves each call before it runs.
    pub(crate) approval: Option<LitStr>,
}

/// `#[compensator(...)]`, parsed.
#[derive(Default)]
pub(crate) struct CompensatorArgs {
    pub(crate) connector: Option<LitStr>,
    pub(crate) scopes: Option<Spanned<Vec<LitStr>>>,
}

/// `#[chain(...)]`, parsed.
#[derive(Default)]
pub(crate) struct ChainArgs {
    pub(crate) principal: Option<Type>,
    pub(crate) compensate_on_auth_failure: bool,
    /// Limits on model turns and tool calls, as `(field, value)`.
    pub(crate) limits: Vec<(String, u32)>,
}

/// Rejects an unknown key, suggesting the closest valid one.
fn unknown_key(cx: &Ctxt, key: &Ident, valid: &[&str], attr: &str) {
    let name = key.to_string();
    let list = valid
        .iter()
        .map(|k| format!("`{k}`"))
        .collect::<Vec<_>>()
        .join(", ");
    match symbol::closest(&name, valid) {
        Some(close) => cx.error_spanned_by(
            key,
            format!(
                "unknown key `{name}` in #[{attr}]; did you mean `{close}`? (valid keys: {list})"
            ),
        ),
        None => cx.error_spanned_by(
            key,
            format!("unknown key `{name}` in #[{attr}] (valid keys: {list})"),
        ),
    }
}

fn duplicate(cx: &Ctxt, key: &Ident, attr: &str) {
    cx.error_spanned_by(
        key,
        format!("duplicate key `{key}` in #[{attr}]: give it once"),
    );
}

fn value<'a>(cx: &Ctxt, arg: &'a RawArg, expected: &str) -> Option<&'a TokenStream> {
    if arg.value.is_none() {
        cx.error_spanned_by(
            &arg.key,
            format!("`{}` needs a value: `{} = {expected}`", arg.key, arg.key),
        );
    }
    arg.value.as_ref()
}

fn flag(cx: &Ctxt, arg: &RawArg) {
    if let Some(v) = &arg.value {
        cx.error_spanned_by(
            v,
            format!("`{}` takes no value: write just `{}`", arg.key, arg.key),
        );
    }
}

fn parse_lit_str(cx: &Ctxt, arg: &RawArg, expected: &str) -> Option<LitStr> {
    let tokens = value(cx, arg, expected)?;
    match syn::parse2::<LitStr>(tokens.clone()) {
        Ok(lit) => Some(lit),
        Err(_) => {
            cx.error_spanned_by(
                tokens,
                format!(
                    "`{}` takes a string literal: `{} = {expected}`",
                    arg.key, arg.key
                ),
            );
            None
        }
    }
}

fn parse_scopes(cx: &Ctxt, arg: &RawArg) -> Option<Spanned<Vec<LitStr>>> {
    let tokens = value(cx, arg, "[\"scope\", ...]")?;
    let parser = |input: ParseStream| {
        let content;
        syn::bracketed!(content in input);
        Punctuated::<LitStr, Token![,]>::parse_terminated(&content)
    };
    match parser.parse2(tokens.clone()) {
        Ok(list) => Some(Spanned {
            value: list.into_iter().collect(),
            span: syn::spanned::Spanned::span(tokens),
        }),
        Err(_) => {
            cx.error_spanned_by(
                tokens,
                "`scopes` takes a list of string literals: `scopes = [\"api\", \"refresh_token\"]`",
            );
            None
        }
    }
}

fn parse_path(cx: &Ctxt, arg: &RawArg, expected: &str) -> Option<Path> {
    let tokens = value(cx, arg, expected)?;
    match syn::parse2::<Path>(tokens.clone()) {
        Ok(path) => Some(path),
        Err(_) => {
            cx.error_spanned_by(
                tokens,
                format!(
                    "`{}` takes a function path: `{} = {expected}`",
                    arg.key, arg.key
                ),
            );
            None
        }
    }
}

/// `approval = "why"`: a string literal with a reason the approver is shown.
fn parse_approval(cx: &Ctxt, arg: &RawArg) -> Option<LitStr> {
    let lit = parse_lit_str(cx, arg, "\"why a person must approve\"")?;
    if lit.value().trim().is_empty() {
        cx.error_spanned_by(
            &lit,
            "`approval` needs the reason the approver is shown, such as `approval = \"moves money\"`; this one is empty",
        );
        return None;
    }
    Some(lit)
}

impl StepArgs {
    pub(crate) fn parse(cx: &Ctxt, args: Vec<RawArg>) -> Self {
        let mut out = StepArgs::default();
        let mut seen: Vec<String> = Vec::new();
        for arg in &args {
            let key = arg.key.to_string();
            if !STEP_KEYS.contains(&key.as_str()) {
                unknown_key(cx, &arg.key, STEP_KEYS, "step");
                continue;
            }
            if seen.contains(&key) {
                duplicate(cx, &arg.key, "step");
                continue;
            }
            seen.push(key.clone());
            let effect = match key.as_str() {
                CONNECTOR => {
                    out.connector = parse_lit_str(cx, arg, "\"salesforce\"");
                    None
                }
                SCOPES => {
                    out.scopes = parse_scopes(cx, arg);
                    None
                }
                COMPENSATE => parse_path(cx, arg, "undo_fn").map(EffectArg::Compensate),
                IRREVERSIBLE => parse_lit_str(cx, arg, "\"why it cannot be undone\"")
                    .map(EffectArg::Irreversible),
                IDEMPOTENT => {
                    flag(cx, arg);
                    out.idempotent = true;
                    None
                }
                RECONCILE => {
                    out.reconcile = parse_path(cx, arg, "read_back_fn");
                    None
                }
                APPROVAL => {
                    out.approval = parse_approval(cx, arg);
                    None
                }
                _ => {
                    flag(cx, arg);
                    Some(EffectArg::Read)
                }
            };
            if let Some(effect) = effect {
                if let Some(first) = &out.effect {
                    cx.error_spanned_by(
                        &arg.key,
                        format!(
                            "a step has exactly one effect, but this one is already `{}`: keep one of `compensate = f`, `irreversible = \"why\"` or `read`",
                            effect_name(first)
                        ),
                    );
                } else {
                    out.effect = Some(effect);
                }
            }
        }
        out
    }
}

pub(crate) fn effect_name(effect: &EffectArg) -> &'static str {
    match effect {
        EffectArg::Compensate(_) => COMPENSATE,
        EffectArg::Irreversible(_) => IRREVERSIBLE,
        EffectArg::Read => READ,
    }
}

impl CompensatorArgs {
    pub(crate) fn parse(cx: &Ctxt, args: Vec<RawArg>) -> Self {
        let mut out = CompensatorArgs::default();
        let mut seen: Vec<String> = Vec::new();
        for arg in &args {
            let key = arg.key.to_string();
            if !COMPENSATOR_KEYS.contains(&key.as_str()) {
                if STEP_KEYS.contains(&key.as_str()) {
                    cx.error_spanned_by(
                        &arg.key,
                        format!("a compensator is the undo of a step and has no effect of its own: remove `{key}`"),
                    );
                } else {
                    unknown_key(cx, &arg.key, COMPENSATOR_KEYS, "compensator");
                }
                continue;
            }
            if seen.contains(&key) {
                duplicate(cx, &arg.key, "compensator");
                continue;
            }
            seen.push(key.clone());
            match key.as_str() {
                CONNECTOR => out.connector = parse_lit_str(cx, arg, "\"salesforce\""),
                _ => out.scopes = parse_scopes(cx, arg),
            }
        }
        out
    }
}

impl ChainArgs {
    pub(crate) fn parse(cx: &Ctxt, args: Vec<RawArg>) -> Self {
        let mut out = ChainArgs::default();
        let mut seen: Vec<String> = Vec::new();
        for arg in &args {
            let key = arg.key.to_string();
            if !CHAIN_KEYS.contains(&key.as_str()) {
                unknown_key(cx, &arg.key, CHAIN_KEYS, "chain");
                continue;
            }
            if seen.contains(&key) {
                duplicate(cx, &arg.key, "chain");
                continue;
            }
            seen.push(key.clone());
            let Some(tokens) = value(
                cx,
                arg,
                if key == PRINCIPAL {
                    "UserId"
                } else if LIMIT_KEYS.contains(&key.as_str()) {
                    "8"
                } else {
                    "suspend"
                },
            ) else {
                continue;
            };
            if LIMIT_KEYS.contains(&key.as_str()) {
                match syn::parse2::<syn::LitInt>(tokens.clone()).map(|l| l.base10_parse::<u32>()) {
                    Ok(Ok(n)) if n > 0 => out.limits.push((key, n)),
                    _ => cx.error_spanned_by(
                        tokens,
                        format!("`{key}` takes a positive whole number: `{key} = 8`"),
                    ),
                }
            } else if key == PRINCIPAL {
                match syn::parse2::<Type>(tokens.clone()) {
                    Ok(ty) => out.principal = Some(ty),
                    Err(_) => cx
                        .error_spanned_by(tokens, "`principal` takes a type: `principal = UserId`"),
                }
            } else {
                match syn::parse2::<Ident>(tokens.clone()).map(|i| i.to_string()) {
                    Ok(p) if p == "suspend" => out.compensate_on_auth_failure = false,
                    Ok(p) if p == "compensate" => out.compensate_on_auth_failure = true,
                    _ => cx.error_spanned_by(
                        tokens,
                        "`on_auth_failure` is `suspend` (keep completed writes, wait for re-consent) or `compensate` (undo them)",
                    ),
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quote::quote;

    fn errors(cx: Ctxt) -> Vec<String> {
        match cx.check() {
            Ok(()) => Vec::new(),
            Err(e) => e.into_iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn step_args_parse_every_key() {
        let cx = Ctxt::new();
        let args = StepArgs::parse(
            &cx,
            split_args(quote!(
                connector = "salesforce",
                scopes = ["api", "id"],
                compensate = undo
            ))
            .unwrap(),
        );
        assert!(errors(cx).is_empty());
        assert_eq!(args.connector.unwrap().value(), "salesforce");
        assert_eq!(args.scopes.unwrap().value.len(), 2);
        assert!(matches!(args.effect, Some(EffectArg::Compensate(_))));
    }

    #[test]
    fn step_args_report_all_problems_at_once() {
        let cx = Ctxt::new();
        let _ = StepArgs::parse(
            &cx,
            split_args(quote!(
                conector = "x",
                scopes = "api",
                read,
                read,
                irreversible = 3
            ))
            .unwrap(),
        );
        let errors = errors(cx);
        assert_eq!(errors.len(), 4, "{errors:#?}");
        assert!(errors[0].contains("did you mean `connector`"));
        assert!(errors[1].contains("list of string literals"));
        assert!(errors[2].contains("duplicate key `read`"));
        assert!(errors[3].contains("string literal"));
    }

    #[test]
    fn approval_takes_a_non_empty_string() {
        let cx = Ctxt::new();
        let args = StepArgs::parse(&cx, split_args(quote!(approval = "moves money")).unwrap());
        assert!(errors(cx).is_empty());
        assert_eq!(args.approval.unwrap().value(), "moves money");
        for bad in [
            quote!(approval = "  "),
            quote!(approval = 3),
            quote!(approval),
        ] {
            let cx = Ctxt::new();
            let args = StepArgs::parse(&cx, split_args(bad).unwrap());
            assert!(args.approval.is_none());
            assert_eq!(errors(cx).len(), 1);
        }
    }

    #[test]
    fn two_effects_are_rejected() {
        let cx = Ctxt::new();
        let _ = StepArgs::parse(&cx, split_args(quote!(read, irreversible = "x")).unwrap());
        let errors = errors(cx);
        assert_eq!(errors.len(), 1);
        assert!(errors[0].contains("exactly one effect"));
    }

    #[test]
    fn chain_args() {
        let cx = Ctxt::new();
        let args = ChainArgs::parse(
            &cx,
            split_args(quote!(
                principal = crate::UserId,
                on_auth_failure = compensate
            ))
            .unwrap(),
        );
        assert!(errors(cx).is_empty());
        assert!(args.principal.is_some());
        assert!(args.compensate_on_auth_failure);
    }

    #[test]
    fn malformed_structure_is_an_error_not_a_panic() {
        assert!(split_args(quote!(= "x")).is_err());
        assert!(split_args(quote!(connector =)).is_err());
        assert!(split_args(quote!(connector "x")).is_err());
    }
}
