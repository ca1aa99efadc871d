//! Helpers shared by every test location of the workspace (`tests/tests`, `chain-runtime/tests`,
//! `examples/tests`), so each is written once:
//!
//! - [`logs`]: log capture; [`db`]: a database's bytes with its WAL; [`vault`]: opening a
//!   vault;
//! - [`principal`]: the `UserId` principal of the tests' chains;
//! - [`world`]: the provider emulators, a vault, an audit trail and an engine on one SQLite
//!   file; [`sleeper`]: a retry sleeper that records waits instead of sleeping;
//! - [`oauth`]: a real OAuth authorization server with a recording proxy; [`fake`]: scripted
//!   fake token endpoints; [`tls`]: the TLS provider and a non-redirecting client;
//! - [`recovery`]: recovering a run a simulated crash left behind, once it is released.
//!
//! The cross-crate integration tests themselves live in `tests/tests/`.

pub mod db;
pub mod fake;
pub mod logs;
pub mod oauth;
pub mod principal;
pub mod recovery;
pub mod sleeper;
pub mod tls;
pub mod vault;
pub mod world;

pub use principal::{UserId, alice, bob};
