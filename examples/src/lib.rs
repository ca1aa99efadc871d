//! The examples' shared code: the escalate-deal chain and the demo harness that plays its
//! failure scenarios against the provider sandbox (which also builds the databases `chainctl`
//! is tested with).

pub mod agent;
pub mod crash;
pub mod demo;
pub mod escalate;
pub mod mcp_demo;
pub mod urgent;
pub mod workers;
