//! The examples' shared code: the escalate-deal chain and the demo harness that plays its
//! failure scenarios against the provider sandbox.

pub mod crash;
pub mod demo;
pub mod escalate;
