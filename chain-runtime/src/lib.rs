//! Authorized, durable AI-agent tool chains.
#![forbid(unsafe_code)]

pub mod audit;
pub mod classify;
