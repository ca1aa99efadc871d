//! Examples crate; see the `[[example]]` targets.

pub mod demo_chain;
