//! The errors step and chain code returns: what the engine journals and the chain policy
//! acts on.

use serde::{Deserialize, Serialize};

use crate::classify::FailureClass;

/// Why a step failed.
#[derive(Debug, Clone, thiserror::Error, Serialize, Deserialize, PartialEq, Eq)]
#[non_exhaustive]
pub enum StepError {
    /// An authorization failure the runtime could not recover by itself (revoked grant,
    /// missing scope, step-up, invalid client). The chain policy decides what happens next.
    #[error("{connector}: {class:?}{}", needed_scopes_suffix(.needed_scopes))]
    Auth {
        /// The connector that failed.
        connector: String,
        /// The failure class.
        class: FailureClass,
        /// Scopes the provider said it needs.
        needed_scopes: Vec<String>,
        /// Extra authorization-request parameters the new consent must carry, such as
        /// RFC 9470's `acr_values` and `max_age` for a step-up.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        consent_params: Vec<(String, String)>,
    },
    /// The user may not touch this record; a domain error, no consent loop.
    #[error("{connector}: forbidden: {message}")]
    Forbidden {
        /// The connector that refused.
        connector: String,
        /// The provider's message.
        message: String,
    },
    /// The provider kept failing (5xx, rate limit or transport) after the bounded retries.
    #[error("{connector}: unavailable after retries: {message}")]
    Unavailable {
        /// The connector that failed.
        connector: String,
        /// What the last attempt said.
        message: String,
    },
    /// A write got no answer (connection lost after sending) and its provider does not
    /// deduplicate by idempotency key, so it was not sent again: it may or may not have been
    /// committed. The engine runs the step's `reconcile` hook, or blocks the run for an
    /// operator.
    #[error("{connector}: no answer to a write that is not idempotent; it may have been committed")]
    OutcomeUnknown {
        /// The connector that did not answer.
        connector: String,
    },
    /// The step's own logic refused.
    #[error("{0}")]
    Domain(String),
    /// The runtime could not run the step (store, decoding, configuration).
    #[error("runtime: {0}")]
    Runtime(String),
}

fn needed_scopes_suffix(scopes: &[String]) -> String {
    if scopes.is_empty() {
        String::new()
    } else {
        format!(" (needs {})", scopes.join(" "))
    }
}

impl StepError {
    /// A domain failure with a message for people.
    pub fn domain(message: impl Into<String>) -> Self {
        StepError::Domain(message.into())
    }
}

/// Why a chain run did not complete.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChainError {
    /// A step failed.
    #[error("step failed: {0}")]
    Step(#[from] StepError),
    /// The chain's own logic gave up.
    #[error("{0}")]
    Domain(String),
}

impl ChainError {
    /// A failure of the chain's own logic, with a message for people.
    pub fn domain(message: impl Into<String>) -> Self {
        ChainError::Domain(message.into())
    }
}
