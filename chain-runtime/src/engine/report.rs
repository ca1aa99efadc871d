//! What the engine tells a caller about a run it drove.

use serde::de::DeserializeOwned;
use serde_json::Value;

use super::EngineError;
use crate::context::Chain;
use crate::journal::RunState;

/// How a run ended (or where it stopped).
#[derive(Debug, Clone, PartialEq)]
pub struct RunReport<O> {
    /// The run id.
    pub run_id: String,
    /// The state the run is in now.
    pub state: RunState,
    /// The chain's output, when it completed.
    pub output: Option<O>,
}

impl RunReport<Value> {
    /// Decodes the output as `T`.
    pub fn output_as<T: DeserializeOwned>(&self) -> Option<Result<T, serde_json::Error>> {
        self.output.clone().map(serde_json::from_value)
    }
}

pub(super) fn typed_report<C: Chain>(
    run_id: String,
    state: RunState,
) -> Result<RunReport<C::Output>, EngineError> {
    let output = match &state {
        RunState::Completed { output } => {
            Some(serde_json::from_value(output.clone()).map_err(|e| {
                EngineError::Codec(format!("run `{run_id}`: output does not decode: {e}"))
            })?)
        }
        _ => None,
    };
    Ok(RunReport {
        run_id,
        state,
        output,
    })
}

pub(super) fn erased_report(run_id: String, state: RunState) -> RunReport<Value> {
    let output = match &state {
        RunState::Completed { output } => Some(output.clone()),
        _ => None,
    };
    RunReport {
        run_id,
        state,
        output,
    }
}
