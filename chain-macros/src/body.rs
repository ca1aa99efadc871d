//! Analysis of a chain body: finds the step call sites, checks that the chain context is
//! only handed to steps, marks each call with its site, and extracts the decision graph.

use proc_macro2::{Span, TokenStream, TokenTree};
use quote::{ToTokens, quote_spanned};
use syn::spanned::Spanned;
use syn::visit_mut::{self, VisitMut};
use syn::{Block, Expr, ExprCall, Ident, Path};

use crate::ctxt::Ctxt;

/// Node ids shared with the runtime's `graph` module.
pub(crate) const START: u32 = 0;
pub(crate) const END: u32 = 1;
pub(crate) const FAIL: u32 = 2;
const FIRST_SITE: u32 = 3;

/// The kind of a decision-graph edge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum EdgeKind {
    Next,
    Branch(String),
    Loop,
    Return,
    Error,
}

/// A step call site, or the model-choice point of a `toolset![...]`.
pub(crate) struct Site {
    /// The step called; `None` for a model-choice node.
    pub(crate) callee: Option<Path>,
    pub(crate) line: u32,
}

/// What the walk found.
#[derive(Default)]
pub(crate) struct Analysis {
    pub(crate) sites: Vec<Site>,
    pub(crate) edges: Vec<(u32, u32, EdgeKind)>,
}

struct LoopFrame {
    continues: Vec<(u32, EdgeKind)>,
    breaks: Vec<(u32, EdgeKind)>,
}

struct Walker<'a> {
    cx: &'a Ctxt,
    ctx: &'a Ident,
    chain: &'a Ident,
    principal: &'a syn::Type,
    out: Analysis,
    frontier: Vec<(u32, EdgeKind)>,
    loops: Vec<LoopFrame>,
    /// Inside a closure or async block, where step calls would escape the journal.
    hidden: u32,
}

/// Walks `block`, rewriting each step call to record its site, and returns the sites and
/// the control-flow edges between them.
pub(crate) fn analyse(
    cx: &Ctxt,
    ctx: &Ident,
    chain: &Ident,
    principal: &syn::Type,
    block: &mut Block,
) -> Analysis {
    let mut walker = Walker {
        cx,
        ctx,
        chain,
        principal,
        out: Analysis::default(),
        frontier: vec![(START, EdgeKind::Next)],
        loops: Vec::new(),
        hidden: 0,
    };
    walker.visit_block_mut(block);
    let rest = std::mem::take(&mut walker.frontier);
    walker.link(rest, END);
    let mut out = walker.out;
    let mut seen = Vec::new();
    out.edges.retain(|e| {
        let fresh = !seen.contains(e);
        seen.push(e.clone());
        fresh
    });
    out
}

impl Walker<'_> {
    fn link(&mut self, from: Vec<(u32, EdgeKind)>, to: u32) {
        for (node, kind) in from {
            self.out.edges.push((node, to, kind));
        }
    }

    fn is_ctx(&self, expr: &Expr) -> bool {
        matches!(expr, Expr::Path(p) if p.qself.is_none() && p.path.is_ident(self.ctx))
    }

    /// `f(ctx, ...)` with `f` a path: a step call.
    fn step_call<'e>(&self, expr: &'e Expr) -> Option<&'e ExprCall> {
        match expr {
            Expr::Call(call)
                if matches!(&*call.func, Expr::Path(p) if p.qself.is_none())
                    && call.args.first().is_some_and(|a| self.is_ctx(a)) =>
            {
                Some(call)
            }
            _ => None,
        }
    }

    fn relabel(frontier: &[(u32, EdgeKind)], kind: EdgeKind) -> Vec<(u32, EdgeKind)> {
        frontier.iter().map(|(n, _)| (*n, kind.clone())).collect()
    }

    fn visit_step_call(&mut self, call: &mut ExprCall, awaited_span: Span) {
        for arg in call.args.iter_mut().skip(1) {
            self.visit_expr_mut(arg);
        }
        let Expr::Path(func) = &*call.func else {
            return;
        };
        if self.hidden > 0 {
            self.cx.syn_error(syn::Error::new(
                awaited_span,
                "step calls go directly in the chain body, not inside a closure or async block: a run executes its steps one at a time, in order, so that a resumed run can replay them",
            ));
            return;
        }
        let index = self.out.sites.len() as u32;
        let node = FIRST_SITE + index;
        let from = std::mem::take(&mut self.frontier);
        self.link(from, node);
        self.frontier = vec![(node, EdgeKind::Next)];
        self.out.sites.push(Site {
            callee: Some(func.path.clone()),
            line: func.path.span().start().line as u32,
        });
        let callee = func.path.clone();
        if let Some(first) = call.args.first_mut() {
            let (ctx, principal) = (self.ctx, self.principal);
            // Spanned at the callee: a step for another principal is reported on its name.
            *first = syn::parse_quote_spanned!(callee.span()=>
                <#callee as ::chain_runtime::__private::StepFor<#principal>>::at_site(#ctx, #index));
        }
    }

    /// `toolset![a, b, c]`: a model-choice node with an edge to each tool and back (the
    /// loop), each tool a site of its own; the macro becomes the runtime's toolset, each entry
    /// checked against the chain's principal like a direct call.
    fn visit_toolset(&mut self, expr: &mut Expr) {
        let Expr::Macro(m) = &*expr else { return };
        let span = m.mac.path.span();
        let parsed = m
            .mac
            .parse_body_with(syn::punctuated::Punctuated::<Path, syn::Token![,]>::parse_terminated);
        let paths: Vec<Path> = match parsed {
            Ok(paths) if !paths.is_empty() => paths.into_iter().collect(),
            Ok(_) => {
                self.cx.error_spanned_by(
                    &m.mac,
                    "a toolset offers at least one step: `toolset![step_a, step_b]`",
                );
                return;
            }
            Err(e) => {
                self.cx.syn_error(syn::Error::new(
                    e.span(),
                    "`toolset![...]` lists #[step] functions by name, separated by commas",
                ));
                return;
            }
        };
        if self.hidden > 0 {
            self.cx.error_spanned_by(
                &m.mac,
                "a toolset goes directly in the chain body, not inside a closure or async block",
            );
            return;
        }
        let choice = self.out.sites.len() as u32;
        let choice_node = FIRST_SITE + choice;
        let from = std::mem::take(&mut self.frontier);
        self.link(from, choice_node);
        self.out.sites.push(Site {
            callee: None,
            line: span.start().line as u32,
        });
        let (principal, chain) = (self.principal, self.chain);
        let mut entries = Vec::new();
        for path in paths {
            let index = self.out.sites.len() as u32;
            let node = FIRST_SITE + index;
            let name = path
                .segments
                .last()
                .map(|s| s.ident.to_string())
                .unwrap_or_default();
            self.out.edges.push((
                choice_node,
                node,
                EdgeKind::Branch(format!("model calls {name}")),
            ));
            self.out.edges.push((node, choice_node, EdgeKind::Loop));
            self.out.edges.push((node, FAIL, EdgeKind::Error));
            self.out.sites.push(Site {
                callee: Some(path.clone()),
                line: path.span().start().line as u32,
            });
            entries.push(quote_spanned!(path.span()=>
                ::chain_runtime::__private::tool_entry::<#principal, #path>(#index)));
        }
        self.out.edges.push((choice_node, FAIL, EdgeKind::Error));
        self.frontier = vec![(choice_node, EdgeKind::Next)];
        *expr = syn::parse_quote_spanned!(span=>
        ::chain_runtime::__private::Toolset::<#principal>::__new(
            &<#chain as ::chain_runtime::__private::Chain>::META,
            #choice,
            ::std::vec![#(#entries),*],
        ));
    }

    fn visit_loop(&mut self, label: String, body: &mut Block, may_skip: bool) {
        let base = std::mem::take(&mut self.frontier);
        let base_nodes: Vec<u32> = base.iter().map(|(n, _)| *n).collect();
        self.frontier = Self::relabel(&base, EdgeKind::Branch(label));
        let mark = self.out.edges.len();
        self.loops.push(LoopFrame {
            continues: Vec::new(),
            breaks: Vec::new(),
        });
        self.visit_block_mut(body);
        let frame = self.loops.pop().unwrap_or(LoopFrame {
            continues: Vec::new(),
            breaks: Vec::new(),
        });
        let mut tail = std::mem::take(&mut self.frontier);
        tail.extend(frame.continues);
        let entries: Vec<u32> = self.out.edges[mark..]
            .iter()
            .filter(|(from, _, _)| base_nodes.contains(from))
            .map(|(_, to, _)| *to)
            .filter(|to| *to >= FIRST_SITE)
            .collect();
        for (node, _) in &tail {
            for entry in &entries {
                self.out.edges.push((*node, *entry, EdgeKind::Loop));
            }
        }
        let mut after = Vec::new();
        if may_skip {
            after.extend(Self::relabel(&base, EdgeKind::Next));
            after.extend(Self::relabel(&tail, EdgeKind::Next));
        }
        after.extend(frame.breaks);
        after.dedup();
        self.frontier = after;
    }

    fn reject_ctx_in_macro(&self, mac: &syn::Macro) {
        fn mentions(tokens: TokenStream, ctx: &Ident) -> bool {
            tokens.into_iter().any(|tt| match tt {
                TokenTree::Ident(i) => i == *ctx,
                TokenTree::Group(g) => mentions(g.stream(), ctx),
                _ => false,
            })
        }
        if mentions(mac.tokens.clone(), self.ctx) {
            let name = mac.path.to_token_stream().to_string();
            self.cx.error_spanned_by(
                mac,
                format!(
                    "`{}` is used inside `{name}!`, where the chain's analysis cannot see it: call steps and context methods outside the macro and pass the result in",
                    self.ctx
                ),
            );
        }
    }
}

/// Source text of a condition, compact, for an edge label.
fn label_of<T: ToTokens>(prefix: &str, tokens: &T) -> String {
    let text = tokens.to_token_stream().to_string();
    let mut text: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if text.chars().count() > 48 {
        text = text.chars().take(47).collect::<String>() + "…";
    }
    if prefix.is_empty() {
        text
    } else {
        format!("{prefix} {text}")
    }
}

fn is_err_call(expr: &Expr) -> bool {
    matches!(expr, Expr::Call(c) if matches!(&*c.func, Expr::Path(p) if p.path.segments.last().is_some_and(|s| s.ident == "Err")))
}

impl VisitMut for Walker<'_> {
    fn visit_item_mut(&mut self, _: &mut syn::Item) {
        // Nested items cannot see the chain context; they are not part of the chain.
    }

    fn visit_expr_mut(&mut self, expr: &mut Expr) {
        let span = expr.span();
        if self.step_call(expr).is_some() {
            self.cx.syn_error(syn::Error::new(
                span,
                "await a step call where you make it: `step(ctx, ...).await?`, so that steps run one at a time, in order",
            ));
            if let Expr::Call(call) = expr {
                for arg in call.args.iter_mut().skip(1) {
                    self.visit_expr_mut(arg);
                }
            }
            return;
        }
        match expr {
            Expr::Await(aw) if self.step_call(&aw.base).is_some() => {
                if let Expr::Call(call) = &mut *aw.base {
                    self.visit_step_call(call, span);
                }
            }
            Expr::Try(t) => {
                self.visit_expr_mut(&mut t.expr);
                let failing: Vec<(u32, EdgeKind)> = Self::relabel(&self.frontier, EdgeKind::Error);
                self.link(failing, FAIL);
            }
            Expr::If(i) => {
                self.visit_expr_mut(&mut i.cond);
                let base = std::mem::take(&mut self.frontier);
                self.frontier = Self::relabel(&base, EdgeKind::Branch(label_of("if", &i.cond)));
                self.visit_block_mut(&mut i.then_branch);
                let mut after = std::mem::take(&mut self.frontier);
                self.frontier = Self::relabel(&base, EdgeKind::Branch("else".into()));
                if let Some((_, else_branch)) = &mut i.else_branch {
                    self.visit_expr_mut(else_branch);
                }
                after.append(&mut self.frontier);
                self.frontier = after;
            }
            Expr::Match(m) => {
                self.visit_expr_mut(&mut m.expr);
                let base = std::mem::take(&mut self.frontier);
                let mut after = Vec::new();
                for arm in &mut m.arms {
                    let label = label_of("", &arm.pat);
                    self.frontier = Self::relabel(&base, EdgeKind::Branch(label));
                    if let syn::Pat::Guard(guarded) = &mut arm.pat {
                        self.visit_expr_mut(&mut guarded.guard);
                    }
                    self.visit_expr_mut(&mut arm.body);
                    after.append(&mut self.frontier);
                }
                self.frontier = after;
            }
            Expr::ForLoop(f) => {
                self.visit_expr_mut(&mut f.expr);
                let label = format!("for {} in {}", label_of("", &f.pat), label_of("", &f.expr));
                self.visit_loop(label, &mut f.body, true);
            }
            Expr::While(w) => {
                self.visit_expr_mut(&mut w.cond);
                self.visit_loop(label_of("while", &w.cond), &mut w.body, true);
            }
            Expr::Loop(l) => self.visit_loop("loop".into(), &mut l.body, false),
            Expr::Return(r) => {
                let to_fail = r.expr.as_deref().is_some_and(is_err_call);
                if let Some(value) = &mut r.expr {
                    self.visit_expr_mut(value);
                }
                let from = Self::relabel(&std::mem::take(&mut self.frontier), EdgeKind::Return);
                self.link(from, if to_fail { FAIL } else { END });
            }
            Expr::Break(b) => {
                if let Some(value) = &mut b.expr {
                    self.visit_expr_mut(value);
                }
                let from = std::mem::take(&mut self.frontier);
                if let Some(frame) = self.loops.last_mut() {
                    frame.breaks.extend(from);
                }
            }
            Expr::Continue(_) => {
                let from = std::mem::take(&mut self.frontier);
                if let Some(frame) = self.loops.last_mut() {
                    frame.continues.extend(from);
                }
            }
            Expr::Closure(_) | Expr::Async(_) => {
                self.hidden += 1;
                visit_mut::visit_expr_mut(self, expr);
                self.hidden -= 1;
            }
            Expr::MethodCall(m) if self.is_ctx(&m.receiver) => {
                for arg in &mut m.args {
                    self.visit_expr_mut(arg);
                }
            }
            Expr::Path(_) if self.is_ctx(expr) => {
                let ctx = self.ctx;
                self.cx.error_spanned_by(
                    &*expr,
                    format!(
                        "the chain context `{ctx}` can only be passed to #[step] functions, as their first argument (`step({ctx}, ...).await`), or used through its methods: that is how the compiler knows every step, and so every scope, this chain can reach"
                    ),
                );
            }
            Expr::Macro(m)
                if m.mac
                    .path
                    .segments
                    .last()
                    .is_some_and(|s| s.ident == "toolset") =>
            {
                self.visit_toolset(expr)
            }
            Expr::Macro(m) => self.reject_ctx_in_macro(&m.mac),
            _ => visit_mut::visit_expr_mut(self, expr),
        }
    }

    fn visit_macro_mut(&mut self, mac: &mut syn::Macro) {
        self.reject_ctx_in_macro(mac);
    }
}

/// `quote_spanned!` helper for edge kinds, used inside the chain expansion's `const` block
/// (where `__cr` names `::chain_runtime::__private`).
pub(crate) fn edge_kind_tokens(kind: &EdgeKind, span: Span) -> TokenStream {
    match kind {
        EdgeKind::Next => quote_spanned!(span=> __cr::EdgeKind::Next),
        EdgeKind::Branch(label) => {
            quote_spanned!(span=> __cr::EdgeKind::Branch(#label))
        }
        EdgeKind::Loop => quote_spanned!(span=> __cr::EdgeKind::Loop),
        EdgeKind::Return => quote_spanned!(span=> __cr::EdgeKind::Return),
        EdgeKind::Error => quote_spanned!(span=> __cr::EdgeKind::Error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use syn::parse_quote;

    fn run(mut block: Block) -> (Analysis, Vec<String>, Block) {
        let cx = Ctxt::new();
        let ctx: Ident = parse_quote!(ctx);
        let chain: Ident = parse_quote!(my_chain);
        let principal: syn::Type = parse_quote!(UserId);
        let analysis = analyse(&cx, &ctx, &chain, &principal, &mut block);
        let errors = cx
            .check()
            .err()
            .map(|e| e.into_iter().map(|e| e.to_string()).collect())
            .unwrap_or_default();
        (analysis, errors, block)
    }

    fn edges(a: &Analysis) -> Vec<(u32, u32, EdgeKind)> {
        a.edges.clone()
    }

    #[test]
    fn sequence_with_question_marks() {
        let (a, errors, block) = run(parse_quote!({
            let x = one(ctx, 1).await?;
            let y = two(ctx, x).await?;
            Ok(y)
        }));
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(a.sites.len(), 2);
        assert_eq!(
            edges(&a),
            vec![
                (START, 3, EdgeKind::Next),
                (3, FAIL, EdgeKind::Error),
                (3, 4, EdgeKind::Next),
                (4, FAIL, EdgeKind::Error),
                (4, END, EdgeKind::Next),
            ]
        );
        let text = block.to_token_stream().to_string();
        assert!(text.contains("< one as :: chain_runtime :: __private :: StepFor < UserId > > :: at_site (ctx , 0u32)"), "{text}");
        assert!(text.contains("at_site (ctx , 1u32)"), "{text}");
    }

    #[test]
    fn branches_and_loops() {
        let (a, errors, _) = run(parse_quote!({
            if big {
                one(ctx).await?;
            } else {
                two(ctx).await?;
            }
            for item in items {
                three(ctx, item).await?;
            }
            Ok(())
        }));
        assert!(errors.is_empty(), "{errors:?}");
        let e = edges(&a);
        assert!(e.contains(&(START, 3, EdgeKind::Branch("if big".into()))));
        assert!(e.contains(&(START, 4, EdgeKind::Branch("else".into()))));
        assert!(e.contains(&(3, 5, EdgeKind::Branch("for item in items".into()))));
        assert!(e.contains(&(5, 5, EdgeKind::Loop)));
        assert!(
            e.contains(&(4, END, EdgeKind::Next)),
            "zero iterations: {e:?}"
        );
        assert!(e.contains(&(5, END, EdgeKind::Next)));
    }

    #[test]
    fn early_return_and_match() {
        let (a, errors, _) = run(parse_quote!({
            let v = one(ctx).await?;
            match v {
                Some(x) => {
                    two(ctx, x).await?;
                }
                None => return Err(ChainError::domain("none")),
            }
            Ok(())
        }));
        assert!(errors.is_empty(), "{errors:?}");
        let e = edges(&a);
        assert!(
            e.contains(&(3, 4, EdgeKind::Branch("Some (x)".into()))),
            "{e:?}"
        );
        assert!(e.contains(&(3, FAIL, EdgeKind::Return)), "{e:?}");
    }

    #[test]
    fn toolset_is_a_model_choice_with_an_edge_to_each_tool() {
        let (a, errors, block) = run(parse_quote!({
            let first = one(ctx).await?;
            let tools = toolset![two, three];
            ctx.run_tools(&tools, &mut chat).await?;
            Ok(())
        }));
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(a.sites.len(), 4);
        assert!(a.sites[1].callee.is_none());
        let e = edges(&a);
        assert!(e.contains(&(3, 4, EdgeKind::Next)), "{e:?}");
        assert!(
            e.contains(&(4, 5, EdgeKind::Branch("model calls two".into()))),
            "{e:?}"
        );
        assert!(
            e.contains(&(4, 6, EdgeKind::Branch("model calls three".into()))),
            "{e:?}"
        );
        assert!(e.contains(&(5, 4, EdgeKind::Loop)), "{e:?}");
        assert!(e.contains(&(6, 4, EdgeKind::Loop)), "{e:?}");
        assert!(e.contains(&(4, END, EdgeKind::Next)), "{e:?}");
        let text = block.to_token_stream().to_string();
        assert!(
            text.contains(":: chain_runtime :: __private :: tool_entry :: < UserId , two > (2u32)"),
            "{text}"
        );
        assert!(
            text.contains("< my_chain as :: chain_runtime :: __private :: Chain > :: META"),
            "{text}"
        );
    }

    #[test]
    fn context_misuse_is_reported() {
        let (_, errors, _) = run(parse_quote!({
            let c = ctx;
            let f = one(ctx);
            let g = || two(ctx).await;
            println!("{:?}", ctx);
            ctx.record("x", async { 1 }).await?;
            Ok(())
        }));
        assert_eq!(errors.len(), 4, "{errors:#?}");
        assert!(errors[0].contains("can only be passed to #[step]"));
        assert!(errors[1].contains("await a step call"));
        assert!(errors[2].contains("closure or async block"));
        assert!(errors[3].contains("println"));
    }
}
