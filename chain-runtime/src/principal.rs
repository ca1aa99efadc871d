//! The identity anchor of a chain.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The identity on whose authority every step of a run acts.
///
/// A chain declares its principal type with `#[chain(principal = Type)]`; every step it calls
/// must take `&StepCtx<Type>`, and the compiler rejects any other. At run time the value is
/// bound when the run starts and cannot be changed: the connected accounts of exactly this
/// identifier are the only credentials the run's steps can use.
///
/// ```
/// use chain_runtime::Principal;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
/// pub struct UserId(pub String);
///
/// impl Principal for UserId {
///     fn identifier(&self) -> String {
///         self.0.clone()
///     }
/// }
/// assert_eq!(UserId("u-42".into()).identifier(), "u-42");
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a principal",
    label = "this type must implement `chain_runtime::Principal`",
    note = "implement `Principal` for it: `fn identifier(&self) -> String` returns the id that keys its connected accounts"
)]
pub trait Principal:
    Clone + std::fmt::Debug + Send + Sync + Serialize + DeserializeOwned + 'static
{
    /// The stable identifier that keys this principal's connected accounts.
    fn identifier(&self) -> String;
}
