//! The vault tests' harness, now in the shared test-support library (`tests/src`): a real
//! oidc-provider authorization server with a recording proxy, a non-interactive "browser",
//! scripted fake token endpoints and a log capture. Re-exported here so the vault tests keep
//! their `support::` paths.
#![allow(unused_imports)]

pub use test_support::fake::{FakeReply, FakeTokenEndpoint, reply};
pub use test_support::logs::LogBuffer;
pub use test_support::oauth::*;
