//! Authorized, durable AI-agent tool chains.
#![forbid(unsafe_code)]

pub mod classify;
#[cfg(feature = "sandbox")]
pub mod sandbox;
