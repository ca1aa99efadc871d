//! Authorized, durable AI-agent tool chains.
#![forbid(unsafe_code)]

pub mod classify;
pub mod vault;
