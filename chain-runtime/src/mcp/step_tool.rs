//! A single step exposed as an MCP tool of its own ([`McpServerBuilder::expose_step`]).
//!
//! The step runs as a one-step chain, [`StepTool<S>`]: its metadata lists exactly that step
//! (so preflight checks its connector and scopes and asks for consent first), its decision
//! graph has one call site, and its body calls the step through the same path a written step
//! call or a model's tool call takes. A call is therefore a durable run like any other:
//! journaled, audited, retried, suspended for re-consent and resumed by the client's retry,
//! held for a person's approval when the step asks for one. Its principal is the session's.
//!
//! [`McpServerBuilder::expose_step`]: super::McpServerBuilder::expose_step

use std::marker::PhantomData;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::chain::{AuthFailurePolicy, ChainMeta};
use crate::context::{Chain, ChainCtx, Step, run_erased};
use crate::error::ChainError;
use crate::future::BoxFuture;
use crate::graph::{DecisionGraph, END, Edge, EdgeKind, FAIL, Node, NodeKind, START};
use crate::tool::ToolLimits;

/// The step's call site in the one-step chain's graph (sites are numbered from 3).
const SITE: u32 = 3;

/// Step `S` as a chain of one call: the chain's input is the step's input, its output the
/// step's output, its path the step's path (no chain can share it: a chain and a step are
/// functions, and one module has one function of a name).
pub(crate) struct StepTool<S>(PhantomData<fn() -> S>);

impl<S> Chain for StepTool<S>
where
    S: Step,
    S::Input: Serialize + DeserializeOwned,
{
    type Principal = S::Principal;
    type Input = S::Input;
    type Output = S::Output;
    const META: ChainMeta = ChainMeta {
        name: S::META.name,
        module: S::META.module,
        principal: S::META.principal,
        on_auth_failure: AuthFailurePolicy::Suspend,
        steps: &[&S::META],
        graph: DecisionGraph {
            nodes: &[
                Node {
                    id: START,
                    kind: NodeKind::Start,
                },
                Node {
                    id: END,
                    kind: NodeKind::End,
                },
                Node {
                    id: FAIL,
                    kind: NodeKind::Fail,
                },
                Node {
                    id: SITE,
                    kind: NodeKind::Step {
                        step: &S::META,
                        line: 0,
                    },
                },
            ],
            edges: &[
                Edge {
                    from: START,
                    to: SITE,
                    kind: EdgeKind::Next,
                },
                Edge {
                    from: SITE,
                    to: END,
                    kind: EdgeKind::Next,
                },
                Edge {
                    from: SITE,
                    to: FAIL,
                    kind: EdgeKind::Error,
                },
            ],
        },
        run: run_erased::<Self>,
        description: S::META.description,
        params: S::META.params,
        tool: S::META.tool,
        tool_limits: ToolLimits::DEFAULT,
    };

    fn run(
        ctx: Arc<ChainCtx<S::Principal>>,
        input: S::Input,
    ) -> BoxFuture<'static, Result<S::Output, ChainError>> {
        Box::pin(async move { Ok(ctx.__execute::<S>(SITE, input).await?) })
    }
}
