//! The `requestState` of a call that waits for the user: which run (or which pending start) a
//! retry continues, sealed with an HMAC so the client cannot change it, bound to the principal
//! and tool as associated data, with an expiry.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use rmcp::model::{RequestStateCodec, SealOptions};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// What a retry continues.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PendingCall {
    /// The tool called.
    pub tool: String,
    /// The principal who called it.
    pub principal: String,
    /// The suspended run, or `None` when preflight stopped the call before any run existed.
    pub run_id: Option<String>,
    /// SHA-256 of the canonical arguments, hex.
    pub args_digest: String,
}

/// Seals and opens request states; remembers pending calls so a client of the 2025-11-25
/// protocol (which retries without a request state) continues the same run.
pub(crate) struct StateBook {
    codec: RequestStateCodec,
    ttl: Duration,
    /// (principal, tool, args digest) → the pending call.
    pending: Mutex<HashMap<(String, String, String), PendingCall>>,
}

impl std::fmt::Debug for StateBook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateBook").finish_non_exhaustive()
    }
}

fn aad(principal: &str, tool: &str) -> Vec<u8> {
    format!("chain-runtime mcp\0{principal}\0{tool}").into_bytes()
}

/// SHA-256 of the JSON arguments (serde_json maps are ordered, so this is canonical).
pub(crate) fn digest(arguments: &Value) -> String {
    let bytes = serde_json::to_vec(arguments).unwrap_or_default();
    Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl StateBook {
    /// A book sealing with `key` (at least 32 bytes) for `ttl`.
    pub fn new(key: Vec<u8>, ttl: Duration) -> Result<Self, String> {
        let codec = RequestStateCodec::try_new(key).map_err(|e| e.to_string())?;
        Ok(Self {
            codec,
            ttl,
            pending: Mutex::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String, String), PendingCall>> {
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records `call` as pending and returns its sealed state.
    pub fn seal(&self, call: &PendingCall) -> Result<String, String> {
        self.lock().insert(
            (
                call.principal.clone(),
                call.tool.clone(),
                call.args_digest.clone(),
            ),
            call.clone(),
        );
        let options = SealOptions::new().ttl(self.ttl);
        let aad = aad(&call.principal, &call.tool);
        self.codec
            .seal_json_with(call, &options.associated_data(&aad))
            .map_err(|e| e.to_string())
    }

    /// Opens a state a client sent back for `principal` calling `tool`. Any failure (forged,
    /// altered, expired, another principal's or another tool's state) is one refusal.
    pub fn open(&self, sealed: &str, principal: &str, tool: &str) -> Option<PendingCall> {
        let call: PendingCall = self
            .codec
            .open_json_with(sealed, &aad(principal, tool))
            .ok()?;
        (call.principal == principal && call.tool == tool).then_some(call)
    }

    /// The pending call of `principal` calling `tool` with these arguments, if any.
    pub fn find(&self, principal: &str, tool: &str, args_digest: &str) -> Option<PendingCall> {
        self.lock()
            .get(&(
                principal.to_owned(),
                tool.to_owned(),
                args_digest.to_owned(),
            ))
            .cloned()
    }

    /// Forgets a pending call once its run finished.
    pub fn finish(&self, call: &PendingCall) {
        self.lock().remove(&(
            call.principal.clone(),
            call.tool.clone(),
            call.args_digest.clone(),
        ));
    }
}
