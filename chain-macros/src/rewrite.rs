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

/// The user's function, renamed and rewritten to take its context and its inputs by value
/// and to return its future boxed: `fn body(ctx: StepCtx<P>, input: I) -> BoxFuture<R>`, a
/// plain function pointer for the runtime's generic `run_step` / `run_compensator`, so no
/// glue is compiled per step. The user's parameter patterns are bound at the top of the
/// `async` block and the user's block is kept verbatim inside it, so errors in it point at
/// the user's code as usual.
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
    let (generics, where_clause) = (&item.sig.generics, &item.sig.generics.where_clause);
    let block = &item.block;
    // Spanned at the function's name: a body whose future is not `Send` is reported there.
    let boxed = quote_spanned!(item.sig.ident.span()=>
        ::chain_runtime::__private::boxed::<#output, _>);
    quote! {
        #[allow(clippy::all, clippy::pedantic, dead_code)]
        #(#attrs)*
        fn #name #generics(#owned_ctx: #ctx_ty, #owned_input: #input_ty)
            -> ::chain_runtime::__private::BoxFuture<'static, #output> #where_clause
        {
            #boxed(async move {
                let #ctx_pat: #ctx_ref = &#owned_ctx;
                #bind_inputs
                #block
            })
        }
    }
}
