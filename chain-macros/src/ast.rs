//! The shape of an annotated function: its context parameter (and so its principal), its
//! inputs and its output. Reports every shape problem at the user's tokens.

use quote::ToTokens;
use syn::visit::Visit;
use syn::{FnArg, GenericArgument, Ident, ItemFn, Pat, PathArguments, ReturnType, Type};

use crate::ctxt::Ctxt;

/// Which attribute is being expanded; used in messages and to know the context type.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Step,
    Compensator,
    Chain,
}

impl Role {
    pub(crate) fn attr(self) -> &'static str {
        match self {
            Role::Step => "#[step]",
            Role::Compensator => "#[compensator]",
            Role::Chain => "#[chain]",
        }
    }

    pub(crate) fn ctx_type(self) -> &'static str {
        match self {
            Role::Chain => "ChainCtx",
            _ => "StepCtx",
        }
    }

    fn noun(self) -> &'static str {
        match self {
            Role::Step => "step",
            Role::Compensator => "compensator",
            Role::Chain => "chain",
        }
    }
}

/// The context parameter: `ctx: &StepCtx<P>` or `ctx: &ChainCtx<P>`.
pub(crate) struct CtxParam {
    pub(crate) ident: Option<Ident>,
    pub(crate) principal: Type,
}

/// One parameter after the context.
pub(crate) struct Input {
    pub(crate) ty: Type,
    /// The parameter's name (`argN` for a pattern), the tool argument a model fills in.
    pub(crate) name: String,
}

/// The analysed signature.
pub(crate) struct FnShape {
    pub(crate) ctx: Option<CtxParam>,
    pub(crate) inputs: Vec<Input>,
    /// The declared return type, when there is one.
    pub(crate) output: Option<Type>,
    /// An input borrows: no expansion can type-check, so the function is emitted as written.
    pub(crate) borrows: bool,
}

impl FnShape {
    /// Analyses `item`'s signature for `role`, recording every problem in `cx`.
    pub(crate) fn analyse(cx: &Ctxt, item: &ItemFn, role: Role) -> Self {
        let sig = &item.sig;
        let attr = role.attr();
        let noun = role.noun();
        if sig.asyncness.is_none() {
            cx.error_spanned_by(
                sig.fn_token,
                format!(
                    "{attr} goes on an `async fn`: write `async fn {}(...)`",
                    sig.ident
                ),
            );
        }
        if let Some(c) = &sig.constness {
            cx.error_spanned_by(c, format!("a {noun} cannot be `const`"));
        }
        if let syn::Safety::Unsafe(u) = &sig.safety {
            cx.error_spanned_by(u, format!("a {noun} cannot be `unsafe`"));
        }
        if let Some(abi) = &sig.abi {
            cx.error_spanned_by(abi, format!("a {noun} cannot have an `extern` ABI"));
        }
        if let Some(v) = &sig.variadic {
            cx.error_spanned_by(v, format!("a {noun} cannot be variadic"));
        }
        if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
            cx.error_spanned_by(
                &sig.generics,
                format!(
                    "a {noun} cannot be generic: the runtime must know its principal, inputs and output at compile time; use concrete types"
                ),
            );
        }

        let mut args = sig.inputs.iter();
        let ctx = match args.next() {
            None => {
                cx.error_spanned_by(
                    &sig.ident,
                    format!(
                        "a {noun} takes its context first: `async fn {}(ctx: &{}<YourPrincipal>, ...)`",
                        sig.ident,
                        role.ctx_type()
                    ),
                );
                None
            }
            Some(FnArg::Receiver(recv)) => {
                cx.error_spanned_by(
                    recv,
                    format!(
                        "{attr} goes on a free function, not a method: move `{}` out of the `impl` block and take `ctx: &{}<YourPrincipal>` first",
                        sig.ident,
                        role.ctx_type()
                    ),
                );
                None
            }
            Some(FnArg::Typed(pt)) => match ctx_principal(&pt.ty, role.ctx_type()) {
                Some(principal) => Some(CtxParam {
                    ident: pat_ident(&pt.pat),
                    principal,
                }),
                None => {
                    cx.error_spanned_by(
                        &pt.ty,
                        format!(
                            "the first parameter of a {noun} is its context, of type `&{}<YourPrincipal>`; found `{}`",
                            role.ctx_type(),
                            type_text(&pt.ty)
                        ),
                    );
                    None
                }
            },
        };
        if let (Role::Chain, Some(CtxParam { ident: None, .. }), Some(FnArg::Typed(pt))) =
            (role, &ctx, sig.inputs.first())
        {
            cx.error_spanned_by(
                &pt.pat,
                "name the chain context with a plain identifier such as `ctx`",
            );
        }

        let mut inputs = Vec::new();
        let mut borrows = false;
        for arg in args {
            match arg {
                FnArg::Receiver(recv) => {
                    cx.error_spanned_by(recv, "`self` can only be the first parameter")
                }
                FnArg::Typed(pt) => {
                    // A compensator may borrow the output it undoes: the runtime owns it.
                    let checked = if role == Role::Compensator {
                        strip_ref(&pt.ty).0
                    } else {
                        &*pt.ty
                    };
                    if let Some(problem) = borrowed_or_opaque(checked) {
                        borrows = true;
                        cx.error_spanned_by(
                            &pt.ty,
                            format!(
                                "{noun} inputs are moved into the {noun}, which may run later (after a resume), so they cannot {problem}; take an owned type instead (for example `String` for `&str`)"
                            ),
                        );
                    }
                    let name = match pat_ident(&pt.pat) {
                        Some(ident) => ident.to_string(),
                        None => format!("arg{}", inputs.len()),
                    };
                    inputs.push(Input {
                        ty: (*pt.ty).clone(),
                        name: name.trim_start_matches("r#").to_owned(),
                    });
                }
            }
        }

        let output = match &sig.output {
            ReturnType::Type(_, ty) => Some((**ty).clone()),
            ReturnType::Default => {
                let expected = if role == Role::Chain {
                    "ChainError"
                } else {
                    "StepError"
                };
                cx.error_spanned_by(
                    &sig.ident,
                    format!(
                        "a {noun} returns `Result<T, {expected}>`: add `-> Result<T, {expected}>`"
                    ),
                );
                None
            }
        };
        FnShape {
            ctx,
            inputs,
            output,
            borrows,
        }
    }
}

/// `P` when `ty` is `&Name<P>` (any path ending in `Name`).
fn ctx_principal(ty: &Type, name: &str) -> Option<Type> {
    let Type::Reference(r) = ty else { return None };
    if r.mutability.is_some() {
        return None;
    }
    let Type::Path(p) = &*r.elem else { return None };
    let last = p.path.segments.last()?;
    if last.ident != name {
        return None;
    }
    let PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    let mut types = args.args.iter().filter_map(|a| match a {
        GenericArgument::Type(t) => Some(t.clone()),
        _ => None,
    });
    let principal = types.next()?;
    types.next().is_none().then_some(principal)
}

fn pat_ident(pat: &Pat) -> Option<Ident> {
    match pat {
        Pat::Ident(p) if p.subpat.is_none() && p.by_ref.is_none() => Some(p.ident.clone()),
        _ => None,
    }
}

/// Why `ty` cannot be moved into a step that runs later: it borrows or is `impl Trait`.
fn borrowed_or_opaque(ty: &Type) -> Option<&'static str> {
    struct Finder(Option<&'static str>);
    impl<'ast> Visit<'ast> for Finder {
        fn visit_type_reference(&mut self, _: &'ast syn::TypeReference) {
            self.0.get_or_insert("borrow");
        }
        fn visit_lifetime(&mut self, _: &'ast syn::Lifetime) {
            self.0.get_or_insert("borrow");
        }
        fn visit_type_impl_trait(&mut self, _: &'ast syn::TypeImplTrait) {
            self.0.get_or_insert("be `impl Trait`");
        }
    }
    let mut finder = Finder(None);
    finder.visit_type(ty);
    finder.0
}

/// `T` when `ty` is written `Result<T, E>` (for messages and metadata; the type system has
/// the final word through `StepReturn`).
pub(crate) fn result_ok_type(ty: &Type) -> Option<&Type> {
    let Type::Path(p) = ty else { return None };
    let last = p.path.segments.last()?;
    if last.ident != "Result" {
        return None;
    }
    let PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    match args.args.first()? {
        GenericArgument::Type(t) => Some(t),
        _ => None,
    }
}

/// The type with the outer reference removed, and whether there was one.
pub(crate) fn strip_ref(ty: &Type) -> (&Type, bool) {
    match ty {
        Type::Reference(r) => (&r.elem, true),
        other => (other, false),
    }
}

/// The doc comment of an item, lines joined and trimmed; `None` when there is none.
pub(crate) fn doc_text(attrs: &[syn::Attribute]) -> Option<String> {
    let mut lines = Vec::new();
    for attr in attrs {
        if !attr.path().is_ident("doc") {
            continue;
        }
        if let syn::Meta::NameValue(nv) = &attr.meta
            && let syn::Expr::Lit(syn::ExprLit {
                lit: syn::Lit::Str(s),
                ..
            }) = &nv.value
        {
            let line = s.value();
            lines.push(
                line.strip_prefix(' ')
                    .unwrap_or(&line)
                    .trim_end()
                    .to_owned(),
            );
        }
    }
    let text = lines.join("\n").trim().to_owned();
    (!text.is_empty()).then_some(text)
}

/// A type as compact source text, for metadata.
pub(crate) fn type_text(ty: &Type) -> String {
    ty.to_token_stream()
        .to_string()
        .replace(" < ", "<")
        .replace(" >", ">")
        .replace(" , ", ", ")
        .replace(" :: ", "::")
}

#[cfg(test)]
mod tests {
    use super::*;
    use syn::parse_quote;

    fn shape(item: ItemFn, role: Role) -> (FnShape, Vec<String>) {
        let cx = Ctxt::new();
        let shape = FnShape::analyse(&cx, &item, role);
        let errors = cx
            .check()
            .err()
            .map(|e| e.into_iter().map(|e| e.to_string()).collect())
            .unwrap_or_default();
        (shape, errors)
    }

    #[test]
    fn reads_principal_inputs_and_output() {
        let (shape, errors) = shape(
            parse_quote!(
                async fn s(
                    ctx: &StepCtx<crate::UserId>,
                    a: OppId,
                    (b, c): (u8, u8),
                ) -> Result<X, StepError> {
                }
            ),
            Role::Step,
        );
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(type_text(&shape.ctx.unwrap().principal), "crate::UserId");
        assert_eq!(shape.inputs.len(), 2);
        assert_eq!(
            type_text(result_ok_type(shape.output.as_ref().unwrap()).unwrap()),
            "X"
        );
    }

    #[test]
    fn reports_every_shape_problem() {
        let (_, errors) = shape(
            parse_quote!(
                fn s<T>(ctx: &Other<U>, a: &str) {}
            ),
            Role::Step,
        );
        assert_eq!(errors.len(), 5, "{errors:#?}");
        assert!(errors[0].contains("async fn"));
        assert!(errors[1].contains("generic"));
        assert!(errors[2].contains("&StepCtx<YourPrincipal>"));
        assert!(errors[3].contains("owned type"));
        assert!(errors[4].contains("Result<T, StepError>"));
    }

    #[test]
    fn rejects_receivers_and_missing_context() {
        let (_, errors) = shape(
            parse_quote!(
                async fn s(&self) -> Result<(), StepError> {}
            ),
            Role::Step,
        );
        assert!(errors[0].contains("free function"), "{errors:?}");
        let (_, errors) = shape(
            parse_quote!(
                async fn c() -> Result<(), ChainError> {}
            ),
            Role::Chain,
        );
        assert!(errors[0].contains("&ChainCtx<YourPrincipal>"), "{errors:?}");
    }
}
