//! The rewrite of a step's or compensator's body into a plain function the runtime's generic
//! glue can call through a function pointer.

use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned};
use syn::{FnArg, Ident, ItemFn, Type};

use crate::ast;

fn mixed(name: &str) -> Ident {
    Ident::new(name, Span::mixed_site())
}

/// How a rewritten body takes the parameters after its context.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyInputs {
    /// A step's: all of them as one tuple (`Step::Input`).
    Tuple,
    /// A compensator's: its one input, by value even when the user borrows it.
    Single,
}

/// The user's function, renamed and rewritten to borrow its context, take its inputs by
/// value and return its future boxed: `fn body<'a>(ctx: &'a StepCtx<P>, input: I) ->
/// BoxFuture<'a, R>`, a plain function pointer for the runtime's generic `run_step` /
/// `run_compensator`, which own the context, so no glue is compiled per step and the body's
/// future does not own (or drop) the context. The user's parameter patterns are bound at the
/// top of the `async` block and the user's block is kept verbatim inside it, so errors in it
/// point at the user's code as usual. It goes inside an expansion's `const` block, where
/// `__cr` names `::chain_runtime::__private`.
pub(crate) fn owned_body(
    item: &ItemFn,
    name: &Ident,
    output: &Type,
    mode: BodyInputs,
) -> TokenStream {
    let owned_ctx = mixed("__chain_ctx");
    let owned_input = mixed("__chain_input");
    let typed: Vec<&syn::PatType> = item
        .sig
        .inputs
        .iter()
        .filter_map(|arg| match arg {
            FnArg::Typed(pt) => Some(pt),
            FnArg::Receiver(_) => None,
        })
        .collect();
    let Some((ctx, rest)) = typed.split_first() else {
        return quote!(#item);
    };
    let (ctx_ty, ctx_pat, ctx_ref) = (ast::strip_ref(&ctx.ty).0, &ctx.pat, &ctx.ty);
    let (input_ty, bind_inputs) = match (mode, rest) {
        (BodyInputs::Single, [input]) => {
            let (ty, by_ref) = ast::strip_ref(&input.ty);
            let (attrs, pat, full) = (&input.attrs, &input.pat, &input.ty);
            let value = if by_ref {
                quote!(&#owned_input)
            } else {
                quote!(#owned_input)
            };
            (quote!(#ty), quote!(#(#attrs)* let #pat: #full = #value;))
        }
        _ => {
            let attrs = rest.iter().flat_map(|p| &p.attrs);
            let pats = rest.iter().map(|p| &p.pat);
            let tys = rest.iter().map(|p| &p.ty);
            (
                quote!((#(#tys,)*)),
                quote!(#(#attrs)* let (#(#pats,)*) = #owned_input;),
            )
        }
    };
    let attrs = &item.attrs;
    let (params, where_clause) = (&item.sig.generics.params, &item.sig.generics.where_clause);
    let block = &item.block;
    // Spanned at the function's name: a body whose future is not `Send` is reported there.
    let boxed = quote_spanned!(item.sig.ident.span()=>
        __cr::boxed::<#output, _>);
    let lt = syn::Lifetime::new("'__chain", Span::mixed_site());
    quote! {
        #[allow(clippy::all, clippy::pedantic, dead_code)]
        #(#attrs)*
        fn #name<#lt, #params>(#owned_ctx: &#lt #ctx_ty, #owned_input: #input_ty)
            -> __cr::BoxFuture<#lt, #output> #where_clause
        {
            #boxed(async move {
                let #ctx_pat: #ctx_ref = #owned_ctx;
                #bind_inputs
                #block
            })
        }
    }
}
