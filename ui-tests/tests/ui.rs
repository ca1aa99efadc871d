//! Compile-time guardrails, proven by compiling user code: every `cases/fail/*.rs` must fail
//! with exactly the error in its `.stderr`, every `cases/pass/*.rs` must compile.
//!
//! The snapshots are pinned to the toolchain in `rust-toolchain.toml`; after a toolchain
//! bump, regenerate with `TRYBUILD=overwrite cargo test -p ui-tests` and review the diff.

#[rustversion::attr(not(stable(1.95)), ignore = "UI snapshots are pinned to Rust 1.95")]
#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("cases/fail/*.rs");
    t.pass("cases/pass/*.rs");
}
