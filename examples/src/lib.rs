//! The examples' shared code: the escalate-deal chain and the demo harness that plays its
//! failure scenarios against the provider sandbox, and the fixture chain `chainctl` is
//! tested with.

pub mod crash;
pub mod demo;
pub mod demo_chain;
pub mod escalate;
