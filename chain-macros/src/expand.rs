//! Code generation. Everything here has been parsed and checked already; it only quotes.
//!
//! Generated items refer to the runtime by absolute paths under
//! `::chain_runtime::__private`, never to the user's imports or prelude. Inside the
//! `const _: () = { ... };` block of an expansion that module is imported once as `__cr`
//! (shorter paths: fewer tokens for the macro to build and the compiler to parse and resolve);
//! items outside the block spell the paths out.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Ident, ItemFn, LitStr, Type};

use crate::ast::{self, FnShape, Input};
use crate::attr::{EffectArg, Spanned as SpannedValue};
use crate::body::{self, Analysis};
use crate::rewrite::{BodyInputs, owned_body};

/// What a `#[step]` expansion needs, with defaults standing in for values that failed to
/// parse (their errors are reported beside the expansion).
pub(crate) struct StepPlan<'a> {
    pub(crate) item: &'a ItemFn,
    pub(crate) principal: &'a Type,
    pub(crate) inputs: &'a [Input],
    pub(crate) output: &'a Type,
    pub(crate) connector: Option<&'a LitStr>,
    pub(crate) scopes: Option<&'a SpannedValue<Vec<LitStr>>>,
    pub(crate) effect: Option<&'a EffectArg>,
    pub(crate) idempotent: bool,
    pub(crate) reconcile: Option<&'a syn::Path>,
    pub(crate) approval: Option<&'a LitStr>,
}

fn mixed(name: &str) -> Ident {
    Ident::new(name, Span::mixed_site())
}

fn arg_idents(inputs: &[Input]) -> Vec<Ident> {
    (0..inputs.len())
        .map(|i| format_ident!("__arg{}", i, span = Span::mixed_site()))
        .collect()
}

fn scope_lits(scopes: Option<&SpannedValue<Vec<LitStr>>>) -> Vec<&LitStr> {
    scopes.map(|s| s.value.iter().collect()).unwrap_or_default()
}

/// `type Principal = P;`, spanned at the user's `P` so that "not a principal" points there.
fn principal_item(principal: &Type) -> TokenStream {
    quote_spanned!(principal.span()=> type Principal = #principal;)
}

fn ok_type(output: &Type, trait_name: &str) -> TokenStream {
    let trait_ident = Ident::new(trait_name, Span::call_site());
    quote_spanned!(output.span()=> <#output as __cr::#trait_ident>::Ok)
}

fn text(tokens: &impl quote::ToTokens) -> String {
    let ty: Result<Type, _> = syn::parse2(tokens.to_token_stream());
    match ty {
        Ok(ty) => ast::type_text(&ty),
        Err(_) => tokens.to_token_stream().to_string(),
    }
}

/// `Some("doc")` or `None`, for metadata.
fn description(item: &ItemFn) -> TokenStream {
    match ast::doc_text(&item.attrs) {
        Some(text) => quote!(__cr::Some(#text)),
        None => quote!(__cr::None),
    }
}

/// The `tool` field of a step's or chain's metadata: a function that builds the JSON Schemas
/// of its inputs and output (through the `Step` or `Chain` impl of marker `name`) when they
/// implement `JsonSchema`, and returns `None` otherwise.
fn tool_schemas(name: &Ident, trait_name: &str, inputs: &[Input]) -> TokenStream {
    let names = inputs.iter().map(|i| &i.name);
    let f = mixed("__tool_schemas");
    let tr = Ident::new(trait_name, Span::call_site());
    quote! {{
        fn #f() -> __cr::Option<__cr::ToolSchemas> {
            #[allow(unused_imports)]
            use __cr::{ProbeNoSchemas as _, ProbeSchemas as _};
            (&&__cr::ToolProbe::<
                <#name as __cr::#tr>::Input,
                <#name as __cr::#tr>::Output,
            >::NEW)
                .schemas(&[#(#names),*])
        }
        #f
    }}
}

pub(crate) fn step(plan: StepPlan<'_>) -> TokenStream {
    let StepPlan {
        item,
        principal,
        inputs,
        output,
        connector,
        scopes,
        effect,
        idempotent,
        reconcile,
        approval,
    } = plan;
    let name = &item.sig.ident;
    let vis = &item.vis;
    let attrs = &item.attrs;
    let name_str = name.to_string();
    let connector = connector.map(LitStr::value).unwrap_or_default();
    let scopes = scope_lits(scopes);
    let args = arg_idents(inputs);
    let tys: Vec<&Type> = inputs.iter().map(|i| &i.ty).collect();
    let ty_texts: Vec<String> = tys.iter().map(|t| ast::type_text(t)).collect();
    let output_ok = ok_type(output, "StepReturn");
    let output_text = ast::result_ok_type(output)
        .map(ast::type_text)
        .unwrap_or_else(|| text(output));
    let principal_text = ast::type_text(principal);
    let body_name = mixed("__chain_step_body");
    let body = owned_body(item, &body_name, output, BodyInputs::Tuple);
    let ctx = mixed("__ctx");
    let lt = syn::Lifetime::new("'__chain", Span::mixed_site());

    let (effect_tokens, compensate, compensator_check) = match effect {
        Some(EffectArg::Compensate(path)) => {
            let out_ty: TokenStream = match ast::result_ok_type(output) {
                Some(t) => quote!(#t),
                None => quote!(#output_ok),
            };
            (
                quote_spanned!(path.span()=> __cr::Effect::Compensated {
                    compensator: &<#path as __cr::Compensator>::META
                }),
                quote_spanned!(path.span()=> __cr::Some(<#path as __cr::Compensator>::run_erased)),
                quote_spanned! {path.span()=>
                    const _: () = <#path as __cr::Undoes<#out_ty, #principal>>::CHECKED;
                },
            )
        }
        Some(EffectArg::Irreversible(reason)) => (
            quote!(__cr::Effect::Irreversible { reason: #reason }),
            quote!(__cr::None),
            TokenStream::new(),
        ),
        Some(EffectArg::Read) | None => (
            quote!(__cr::Effect::Read),
            quote!(__cr::None),
            TokenStream::new(),
        ),
    };
    // The step body, called with a context built from the environment and the inputs.
    let run_body = quote_spanned!(output.span()=>
        __cr::run_step(env, input, #body_name)
    );
    let (reconcile_name, reconcile_fn, reconcile_const) = match reconcile {
        Some(path) => {
            let name = quote::ToTokens::to_token_stream(path)
                .to_string()
                .replace(' ', "");
            let clones = args.iter().map(|a| quote!(::core::clone::Clone::clone(#a)));
            let found = quote_spanned! {path.span()=>
                let found: __cr::Option<#output_ok> = {
                    let (#(#args,)*) = &input;
                    #path(&ctx, #(#clones),*).await?
                };
            };
            let call_body = quote_spanned!(output.span()=>
                __cr::step_result(#body_name(&ctx, input).await));
            let f = mixed("__chain_reconcile");
            (
                quote!(__cr::Some(#name)),
                quote! {
                    fn #f(
                        env: __cr::StepEnv,
                        input: (#(#tys,)*),
                    ) -> __cr::BoxFuture<'static, __cr::Result<#output_ok, __cr::StepError>> {
                        __cr::Box::pin(async move {
                            let ctx = __cr::StepCtx::<#principal>::__from_env(env)?;
                            #found
                            match found {
                                __cr::Some(output) => __cr::Ok(output),
                                __cr::None => #call_body,
                            }
                        })
                    }
                },
                quote! {
                    const RECONCILE: __cr::Option<__cr::StepRun<Self::Input, Self::Output>> =
                        __cr::Some(#f);
                },
            )
        }
        None => (quote!(__cr::None), TokenStream::new(), TokenStream::new()),
    };
    let principal_item = principal_item(principal);
    let description = description(item);
    let documented = if ast::doc_text(&item.attrs).is_some() {
        quote!(impl __cr::Documented for #name {})
    } else {
        TokenStream::new()
    };
    let params = inputs.iter().map(|i| &i.name);
    let tool = tool_schemas(name, "Step", inputs);
    let (approval_reason, approval_fn, approval_const) = approval_items(approval, inputs);

    quote! {
        #(#attrs)*
        #vis fn #name<#lt>(#ctx: &#lt ::chain_runtime::ChainCtx<#principal>, #(#args: #tys),*)
            -> ::chain_runtime::__private::StepCall<#lt, #name>
        {
            ::chain_runtime::__private::StepCall::__new(#ctx, (#(#args,)*))
        }

        #[doc(hidden)]
        #[allow(non_camel_case_types)]
        #vis struct #name {}

        const _: () = {
            use ::chain_runtime::__private as __cr;
            #body

            impl __cr::Step for #name {
                #principal_item
                type Input = (#(#tys,)*);
                type Output = #output_ok;
                const META: __cr::StepMeta = __cr::StepMeta {
                    name: #name_str,
                    module: ::core::module_path!(),
                    connector: #connector,
                    scopes: &[#(#scopes),*],
                    effect: #effect_tokens,
                    principal: #principal_text,
                    inputs: &[#(#ty_texts),*],
                    output: #output_text,
                    idempotent: #idempotent,
                    reconcile: #reconcile_name,
                    approval: #approval_reason,
                    compensate: #compensate,
                    description: #description,
                    params: &[#(#params),*],
                    tool: #tool,
                };

                fn run(
                    env: __cr::StepEnv,
                    input: Self::Input,
                ) -> __cr::BoxFuture<'static, __cr::Result<Self::Output, __cr::StepError>> {
                    #run_body
                }

                #reconcile_const
                #approval_const
            }

            #reconcile_fn
            #approval_fn

            impl __cr::StepFor<#principal> for #name {}

            __cr::inventory::submit! {
                __cr::StepRegistration(&<#name as __cr::Step>::META)
            }

            #compensator_check
            #documented
        };
    }
}

/// The `approval` field of a step's metadata and, for a step that needs approval, the
/// function that encodes its arguments for the approver (each through
/// `ApprovalArgument`, spanned at the parameter's type so a type that is not `Serialize`
/// is reported there).
fn approval_items(
    approval: Option<&LitStr>,
    inputs: &[Input],
) -> (TokenStream, TokenStream, TokenStream) {
    let Some(reason) = approval else {
        return (quote!(__cr::None), TokenStream::new(), TokenStream::new());
    };
    let args = arg_idents(inputs);
    let tys = inputs.iter().map(|i| &i.ty);
    let encoded = inputs.iter().zip(&args).map(|(input, arg)| {
        let ty = &input.ty;
        quote_spanned!(ty.span()=> __cr::approval_argument::<#ty>(#arg)?)
    });
    let input = mixed("__input");
    let f = mixed("__chain_approval_arguments");
    (
        quote!(__cr::Some(#reason)),
        quote! {
            fn #f(
                #input: &(#(#tys,)*),
            ) -> __cr::Result<__cr::Vec<__cr::serde_json::Value>, __cr::StepError> {
                let (#(#args,)*) = #input;
                __cr::Ok(__cr::vec![#(#encoded),*])
            }
        },
        quote! {
            const APPROVAL: __cr::Option<__cr::ApprovalArguments<Self::Input>> =
                __cr::Some(#f);
        },
    )
}

/// What a `#[compensator]` expansion needs.
pub(crate) struct CompensatorPlan<'a> {
    pub(crate) item: &'a ItemFn,
    pub(crate) principal: &'a Type,
    pub(crate) input: &'a Input,
    pub(crate) output: &'a Type,
    pub(crate) connector: Option<&'a LitStr>,
    pub(crate) scopes: Option<&'a SpannedValue<Vec<LitStr>>>,
}

pub(crate) fn compensator(plan: CompensatorPlan<'_>) -> TokenStream {
    let CompensatorPlan {
        item,
        principal,
        input,
        output,
        connector,
        scopes,
    } = plan;
    let name = &item.sig.ident;
    let vis = &item.vis;
    let name_str = name.to_string();
    let connector = connector.map(LitStr::value).unwrap_or_default();
    let scopes = scope_lits(scopes);
    let input_ty = ast::strip_ref(&input.ty).0;
    let input_text = ast::type_text(input_ty);
    let principal_text = ast::type_text(principal);
    let body_name = mixed("__chain_compensator_body");
    let body = owned_body(item, &body_name, output, BodyInputs::Single);
    let principal_item = principal_item(principal);
    let run_body = quote_spanned!(output.span()=>
        __cr::run_compensator(env, input, #body_name)
    );

    quote! {
        #[doc(hidden)]
        #[allow(non_camel_case_types)]
        #vis struct #name {}

        const _: () = {
            use ::chain_runtime::__private as __cr;
            #body

            impl __cr::Compensator for #name {
                #principal_item
                type Input = #input_ty;
                const META: __cr::CompensatorMeta = __cr::CompensatorMeta {
                    name: #name_str,
                    module: ::core::module_path!(),
                    connector: #connector,
                    scopes: &[#(#scopes),*],
                    principal: #principal_text,
                    input: #input_text,
                };

                fn run(
                    env: __cr::StepEnv,
                    input: Self::Input,
                ) -> __cr::BoxFuture<'static, __cr::Result<(), __cr::StepError>> {
                    #run_body
                }
            }

            impl __cr::Undoes<#input_ty, #principal> for #name {}


        };
    }
}

/// What a `#[chain]` expansion needs.
pub(crate) struct ChainPlan<'a> {
    pub(crate) item: &'a ItemFn,
    pub(crate) principal: &'a Type,
    pub(crate) ctx_principal: &'a Type,
    pub(crate) shape: &'a FnShape,
    pub(crate) output: &'a Type,
    pub(crate) compensate_on_auth_failure: bool,
    pub(crate) limits: &'a [(String, u32)],
    pub(crate) analysis: &'a Analysis,
}

pub(crate) fn chain(plan: ChainPlan<'_>) -> TokenStream {
    let ChainPlan {
        item,
        principal,
        ctx_principal,
        shape,
        output,
        compensate_on_auth_failure,
        limits,
        analysis,
    } = plan;
    let name = &item.sig.ident;
    let vis = &item.vis;
    let name_str = name.to_string();
    let principal_text = ast::type_text(principal);
    let args = arg_idents(&shape.inputs);
    let tys: Vec<&Type> = shape.inputs.iter().map(|i| &i.ty).collect();
    let output_ok = ok_type(output, "ChainReturn");
    let policy = if compensate_on_auth_failure {
        quote!(__cr::AuthFailurePolicy::Compensate)
    } else {
        quote!(__cr::AuthFailurePolicy::Suspend)
    };

    // The static step list: each distinct callee once, in order of first call.
    let mut distinct: Vec<(String, &syn::Path)> = Vec::new();
    for callee in analysis.sites.iter().filter_map(|s| s.callee.as_ref()) {
        let key = quote::ToTokens::to_token_stream(callee).to_string();
        if !distinct.iter().any(|(k, _)| *k == key) {
            distinct.push((key, callee));
        }
    }
    let steps = distinct
        .iter()
        .map(|(_, path)| quote_spanned!(path.span()=> &<#path as __cr::Step>::META));
    let nodes = analysis.sites.iter().enumerate().map(|(i, site)| {
        let id = 3 + i as u32;
        let line = site.line;
        let Some(path) = &site.callee else {
            return quote! {
                __cr::Node {
                    id: #id,
                    kind: __cr::NodeKind::ModelChoice { line: #line },
                }
            };
        };
        quote_spanned! {path.span()=>
            __cr::Node {
                id: #id,
                kind: __cr::NodeKind::Step {
                    step: &<#path as __cr::Step>::META,
                    line: #line,
                },
            }
        }
    });
    let edges = analysis.edges.iter().map(|(from, to, kind)| {
        let kind = body::edge_kind_tokens(kind, Span::call_site());
        quote!(__cr::Edge { from: #from, to: #to, kind: #kind })
    });
    let (start, end, fail) = (body::START, body::END, body::FAIL);
    let run_output = quote_spanned!(output.span()=> __cr::BoxFuture<'static, __cr::Result<Self::Output, __cr::ChainError>>);
    let principal_item = principal_item(principal);
    // Spanned at the context's principal type: a chain whose context names another principal
    // than `principal = ...` fails here, naming both types.
    let ctx_arg = quote_spanned!(ctx_principal.span()=> &*ctx);
    let returned = mixed("__returned");
    let returned_check = quote_spanned!(output.span()=> __cr::chain_result(#returned));
    let call_body = quote! {
        let #returned = #name(#ctx_arg, #(#args),*).await;
        #returned_check
    };

    let description = description(item);
    let params = shape.inputs.iter().map(|i| &i.name);
    let tool = tool_schemas(name, "Chain", &shape.inputs);
    let limits = limits.iter().map(|(k, v)| {
        let k = Ident::new(k, Span::call_site());
        quote!(limits.#k = #v;)
    });

    quote! {
        #item

        #[doc(hidden)]
        #[allow(non_camel_case_types)]
        #vis struct #name {}

        const _: () = {
            use ::chain_runtime::__private as __cr;
            impl __cr::Chain for #name {
                #principal_item
                type Input = (#(#tys,)*);
                type Output = #output_ok;
                const META: __cr::ChainMeta = __cr::ChainMeta {
                    name: #name_str,
                    module: ::core::module_path!(),
                    principal: #principal_text,
                    on_auth_failure: #policy,
                    steps: &[#(#steps),*],
                    graph: __cr::DecisionGraph {
                        nodes: &[
                            __cr::Node { id: #start, kind: __cr::NodeKind::Start },
                            __cr::Node { id: #end, kind: __cr::NodeKind::End },
                            __cr::Node { id: #fail, kind: __cr::NodeKind::Fail },
                            #(#nodes,)*
                        ],
                        edges: &[#(#edges),*],
                    },
                    run: __cr::run_erased::<Self>,
                    description: #description,
                    params: &[#(#params),*],
                    tool: #tool,
                    tool_limits: {
                        #[allow(unused_mut)]
                        let mut limits = __cr::ToolLimits::DEFAULT;
                        #(#limits)*
                        limits
                    },
                };

                fn run(
                    ctx: __cr::Arc<::chain_runtime::ChainCtx<#principal>>,
                    input: Self::Input,
                ) -> #run_output {
                    __cr::Box::pin(async move {
                        let (#(#args,)*) = input;
                        #call_body
                    })
                }
            }

            __cr::inventory::submit! {
                __cr::ChainRegistration(&<#name as __cr::Chain>::META)
            }

        };
    }
}
