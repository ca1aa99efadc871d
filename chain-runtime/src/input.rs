//! How a caller hands a chain its input: as written in the chain's signature.
//!
//! A chain's input is the tuple of its parameters after the context (`type Input` of
//! [`Chain`](crate::Chain)): `()` for none, `(Deal,)` for one, `(A, B)` for two. Starting a
//! chain ([`Engine::start`](crate::engine::Engine::start),
//! [`ChainCtx::handoff`](crate::ChainCtx::handoff)) takes anything that is [`IntoInput`] of
//! that tuple, so a chain with a single parameter takes the value itself:
//!
//! ```
//! use chain_runtime::IntoInput;
//!
//! fn start<I>(input: impl IntoInput<I>) -> I {
//!     input.into_input()
//! }
//! // One parameter: the bare value, or the 1-tuple as before.
//! assert_eq!(start::<(String,)>("deal-7".to_owned()), ("deal-7".to_owned(),));
//! assert_eq!(start::<(u32,)>((7,)), (7,));
//! // Several parameters (or none): the tuple.
//! assert_eq!(start::<(u32, bool)>((7, true)), (7, true));
//! start::<()>(());
//! ```
//!
//! The trait is this crate's own, so it covers every value type, foreign ones such as
//! `String` included (a `From<T> for (T,)` impl is not possible for them: the orphan rule).

/// A value that becomes a chain's input tuple `I`: the tuple itself, or, for a chain with one
/// parameter, that parameter's value. See the [module documentation](self).
pub trait IntoInput<I> {
    /// The input tuple.
    fn into_input(self) -> I;
}

/// The tuple itself (any arity).
impl<T> IntoInput<T> for T {
    fn into_input(self) -> T {
        self
    }
}

/// The single parameter's value, for a chain with one parameter.
impl<T> IntoInput<(T,)> for T {
    fn into_input(self) -> (T,) {
        (self,)
    }
}
