//! Model-chosen steps: a chain body offers a model a statically listed set of steps
//! (`toolset![a, b, c]`) and dispatches what it chooses ([`ChainCtx::run_tools`],
//! [`ChainCtx::model_turn`]).
//!
//! `#[chain]` sees the toolset, so the chain's step list (and so its manifest, preflight and
//! consent) covers every tool, and its decision graph has a model-choice node with an edge
//! to each tool and back. Each model turn is journaled (the response, with a digest of the
//! request) as a recorded value: a replay after a crash, a suspension or a resume never asks
//! the model again and dispatches the same calls in the same order. Each tool call runs
//! through the same path as a written step call, so it is journaled, audited, retried,
//! suspended and compensated like one.
//!
//! [`ChainCtx::run_tools`]: crate::ChainCtx::run_tools
//! [`ChainCtx::model_turn`]: crate::ChainCtx::model_turn

mod turn;

use serde::de::DeserializeOwned;
use serde_json::Value;

pub use turn::Conversation;

use crate::chain::ChainMeta;
use crate::context::{ChainCtx, StepFor};
use crate::future::BoxFuture;
use crate::principal::Principal;
use crate::step::{StepError, StepMeta};
use crate::tool::{ToolDefinition, ToolInput, ToolType};

/// Proof that a step has a doc comment, which becomes its description for a model.
/// `#[step]` implements it for documented steps.
#[diagnostic::on_unimplemented(
    message = "step `{Self}` has no doc comment, so a model cannot be told what it does",
    label = "offered to a model here",
    note = "add a `///` comment above the step: it becomes the tool's description"
)]
pub trait Documented {}

type Dispatch<P> = for<'a> fn(
    &'a ChainCtx<P>,
    u32,
    Value,
) -> Result<BoxFuture<'a, Result<Value, StepError>>, String>;

/// One step of a toolset.
pub struct ToolEntry<P> {
    meta: &'static StepMeta,
    site: u32,
    dispatch: Dispatch<P>,
}

impl<P> std::fmt::Debug for ToolEntry<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToolEntry")
            .field("step", &self.meta.name)
            .field("site", &self.site)
            .finish()
    }
}

/// The toolset entry for step `S` at call site `site`. `toolset![...]` calls it for each
/// entry, so offering a step of another principal, an undocumented step, or one whose types
/// have no JSON Schema is a compile error at that entry, each with its own message.
#[doc(hidden)]
pub fn tool_entry<P: Principal, S>(site: u32) -> ToolEntry<P>
where
    S: StepFor<P> + Documented,
    S::Input: ToolInput + DeserializeOwned,
    S::Output: ToolType,
{
    ToolEntry {
        meta: &S::META,
        site,
        dispatch: dispatch::<P, S>,
    }
}

fn dispatch<'a, P: Principal, S: StepFor<P>>(
    ctx: &'a ChainCtx<P>,
    site: u32,
    args: Value,
) -> Result<BoxFuture<'a, Result<Value, StepError>>, String>
where
    S::Input: DeserializeOwned,
{
    let input: S::Input = serde_json::from_value(args).map_err(|e| e.to_string())?;
    let call = S::narrow(ctx).__execute::<S>(site, input);
    Ok(Box::pin(async move {
        let output = call.await?;
        serde_json::to_value(output)
            .map_err(|e| StepError::Runtime(format!("step output does not encode: {e}")))
    }))
}

/// The steps a chain offers a model, built by `toolset![a, b, c]` in a `#[chain]` body.
pub struct Toolset<P> {
    chain: &'static ChainMeta,
    choice_site: u32,
    entries: Vec<ToolEntry<P>>,
}

impl<P> std::fmt::Debug for Toolset<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Toolset")
            .field("chain", &self.chain.name)
            .field("tools", &self.entries)
            .finish()
    }
}

impl<P: Principal> Toolset<P> {
    #[doc(hidden)]
    pub fn __new(chain: &'static ChainMeta, choice_site: u32, entries: Vec<ToolEntry<P>>) -> Self {
        Self {
            chain,
            choice_site,
            entries,
        }
    }

    /// The tool names, in the order listed.
    pub fn names(&self) -> Vec<&'static str> {
        self.entries.iter().map(|e| e.meta.name).collect()
    }

    /// The tool definitions the model is given.
    pub fn definitions(&self) -> Vec<ToolDefinition> {
        self.entries
            .iter()
            .filter_map(|e| e.meta.tool_definition())
            .collect()
    }

    fn entry(&self, name: &str) -> Option<&ToolEntry<P>> {
        self.entries.iter().find(|e| e.meta.name == name)
    }
}

/// `toolset![step_a, step_b]` in a `#[chain]` body: the steps a model may choose from. The
/// chain macro replaces it; anywhere else it does not compile.
#[macro_export]
macro_rules! toolset {
    ($($tt:tt)*) => {
        ::core::compile_error!("`toolset![...]` goes in the body of a #[chain] function, which turns it into the chain's toolset")
    };
}
