//! Compile-time guardrails, proven by compiling user code: every `cases/fail/*.rs` must fail
//! with exactly the error in its `.stderr`, every `cases/pass/*.rs` must compile.
//!
//! The snapshots are pinned to the toolchain in `rust-toolchain.toml`; after a toolchain
//! bump, regenerate with `TRYBUILD=overwrite cargo test -p ui-tests` and review the diff.

/// The toolchain the `.stderr` snapshots were written for.
const SNAPSHOT_TOOLCHAIN: &str = "1.95";

#[test]
fn ui() {
    // On another toolchain the compiler's wording differs: fail loudly instead of comparing
    // (or silently skipping) snapshots that were never reviewed for it.
    if !rustversion::cfg!(stable(1.95)) {
        panic!(
            "the compile-fail snapshots in ui-tests/cases were written for Rust {SNAPSHOT_TOOLCHAIN} \
             (rust-toolchain.toml); run the suite on that toolchain, or regenerate them with \
             `TRYBUILD=overwrite cargo test -p ui-tests` and review the diff"
        );
    }
    let t = trybuild::TestCases::new();
    t.compile_fail("cases/fail/*.rs");
    t.pass("cases/pass/*.rs");
}
