//! Authorized, durable AI-agent tool chains.
//!
//! Write an agent's tools as async functions marked [`step`](macro@step), compose them in a function
//! marked [`chain`](macro@chain), and the compiler checks that one principal authorizes every step, that
//! every write says how it is undone, and which scopes each connector needs. See the
//! repository README for a tour.
#![forbid(unsafe_code)]

extern crate self as chain_runtime;

pub mod accounts;
pub mod agent;
pub mod approval;
pub mod audit;
pub mod chain;
pub mod classify;
#[cfg(feature = "cli")]
pub mod cli;
pub mod connector;
pub mod context;
pub mod engine;
pub mod error;
pub mod future;
pub mod graph;
pub mod graph_render;
pub mod input;
pub mod journal;
pub mod manifest;
#[cfg(feature = "mcp")]
pub mod mcp;
pub mod model;
pub mod policy;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod preflight;
pub mod principal;
pub mod registry;
pub mod runtime;
mod runtime_consent;
#[cfg(feature = "sandbox")]
pub mod sandbox;
#[cfg(feature = "server")]
pub mod server;
pub mod sqlite;
pub mod step;
#[cfg(feature = "test-util")]
pub mod test_util;
pub mod token;
pub mod tool;
pub mod vault;

pub use chain::{AuthFailurePolicy, ChainMeta};
pub use chain_macros::{chain, compensator, step};
pub use context::{Chain, ChainCtx, Step, StepCtx};
pub use engine::{Engine, EngineError, RunReport};
pub use error::{ChainError, StepError};
pub use future::BoxFuture;
pub use input::IntoInput;
pub use journal::RunState;
pub use manifest::ScopeManifest;
pub use principal::Principal;
pub use runtime::{DatabaseLocation, Runtime, RuntimeBuilder, RuntimeError};
pub use runtime_consent::ConsentResumed;
pub use schemars;
pub use step::{CompensatorMeta, Effect, RecordRef, StepMeta};

/// Everything a module that defines steps and chains needs.
pub mod prelude {
    pub use crate::agent::{Conversation, Toolset};
    pub use crate::{
        Chain, ChainCtx, ChainError, IntoInput, Principal, RecordRef, StepCtx, StepError, chain,
        compensator, step, toolset,
    };
    pub use schemars::JsonSchema;
    pub use serde::{Deserialize, Serialize};
}

/// Items the macros' generated code refers to. Not public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::agent::{Documented, ToolEntry, Toolset, tool_entry};
    pub use crate::chain::{AuthFailurePolicy, ChainMeta};
    pub use crate::context::{
        ApprovalArguments, Body, Chain, ChainCtx, Compensator, Step, StepCall, StepCtx, StepFor,
        StepFuture, StepRun, Undoes, boxed, run_compensator, run_erased, run_step,
    };
    pub use crate::error::{ChainError, StepError};
    pub use crate::future::BoxFuture;
    pub use crate::graph::{DecisionGraph, Edge, EdgeKind, Node, NodeKind};
    pub use crate::registry::{ChainRegistration, StepRegistration};
    pub use crate::step::{CompensatorMeta, Effect, ErasedCompensate, StepEnv, StepMeta};
    pub use crate::tool::{
        ProbeNoSchemas, ProbeSchemas, ToolLimits, ToolProbe, ToolSchemas, no_schemas,
    };
    pub use ::core::option::Option::{self, None, Some};
    pub use ::core::result::Result::{self, Ok};
    pub use ::std::boxed::Box;
    pub use ::std::sync::Arc;
    pub use ::std::vec;
    pub use ::std::vec::Vec;
    pub use inventory;
    pub use serde_json;

    /// The `T` of a step's `Result<T, StepError>`.
    #[diagnostic::on_unimplemented(
        message = "a #[step] or #[compensator] must return `Result<T, StepError>`, not `{Self}`",
        label = "return `Result<_, chain_runtime::StepError>` here"
    )]
    pub trait StepReturn: Sized {
        /// The success type.
        type Ok;
        /// The value as a `Result`.
        fn into_result(self) -> ::core::result::Result<Self::Ok, StepError>;
    }
    impl<T> StepReturn for ::core::result::Result<T, StepError> {
        type Ok = T;
        fn into_result(self) -> Self {
            self
        }
    }

    /// The `T` of a chain's `Result<T, ChainError>`.
    #[diagnostic::on_unimplemented(
        message = "a #[chain] must return `Result<T, ChainError>`, not `{Self}`",
        label = "return `Result<_, chain_runtime::ChainError>` here"
    )]
    pub trait ChainReturn {
        /// The success type.
        type Ok;
        /// The value as a `Result`.
        fn into_result(self) -> ::core::result::Result<Self::Ok, ChainError>;
    }
    impl<T> ChainReturn for ::core::result::Result<T, ChainError> {
        type Ok = T;
        fn into_result(self) -> Self {
            self
        }
    }

    /// A value a step that needs approval takes: shown to the approver and digested, so it
    /// must serialize.
    #[diagnostic::on_unimplemented(
        message = "a step with `approval = \"...\"` shows its arguments to the approver and binds the approval to their digest, so `{Self}` must implement `Serialize`",
        label = "this parameter's type is not `Serialize`"
    )]
    pub trait ApprovalArgument {
        /// The value as JSON.
        fn to_approval_json(&self) -> ::core::result::Result<serde_json::Value, StepError>;
    }
    impl<T: serde::Serialize + ?Sized> ApprovalArgument for T {
        fn to_approval_json(&self) -> ::core::result::Result<serde_json::Value, StepError> {
            serde_json::to_value(self).map_err(|e| {
                StepError::Runtime(format!(
                    "an argument shown for approval does not encode: {e}"
                ))
            })
        }
    }

    /// One argument of a step that needs approval, as JSON.
    pub fn approval_argument<T: ApprovalArgument + ?Sized>(
        value: &T,
    ) -> ::core::result::Result<serde_json::Value, StepError> {
        value.to_approval_json()
    }

    /// The `Result<T, StepError>` a step body returned, seen through [`StepReturn`].
    pub fn step_result<R: StepReturn>(r: R) -> ::core::result::Result<R::Ok, StepError> {
        r.into_result()
    }

    /// The `Result<T, ChainError>` a chain body returned, seen through [`ChainReturn`].
    pub fn chain_result<R: ChainReturn>(r: R) -> ::core::result::Result<R::Ok, ChainError> {
        r.into_result()
    }
}
