//! Tests that need what a machine may lack (a Docker engine and compose,
//! a browser, grpcurl and Python's grpcio-tools, promtool) skip themselves
//! with a message, unless the suite says it must be there
//! (`FARM_REQUIRE_DOCKER=1`, `FARM_REQUIRE_BROWSER=1`,
//! `FARM_REQUIRE_INTEROP=1`, `FARM_REQUIRE_PROMTOOL=1`), when its absence
//! fails the test instead.
//!
//! `scripts/test` sets all four, so no test skips itself there and reports
//! a pass it did not earn. What it could not install, it leaves out of the
//! run by name, and the runner reports those tests as skipped. So a test
//! that needs one of these must be found by its name: Docker's live in the
//! `docker` and `compose` test binaries or have `docker` in their name, the
//! browser's in the `browser` binary, promtool's have `promtool` in their
//! name (see the filters in `scripts/test`).

/// Whether the variable `var` says `1`.
pub fn required(var: &str) -> bool {
    std::env::var_os(var).is_some_and(|v| v == "1")
}

/// Whether `program` is a file in one of the `PATH`'s folders.
pub fn installed(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

/// Says on standard error that `test` is skipped because `why`, or fails
/// when `var` requires what is missing. Returns `false`, for
/// `if !available() { return }`.
pub fn skip(var: &str, test: &str, why: &str) -> bool {
    assert!(!required(var), "{test}: {var}=1 but {why}");
    eprintln!("{test}: skipped, {why}");
    false
}
