//! Tests that need what a machine may lack (a Docker engine, a browser,
//! grpcurl) skip themselves with a message, unless the suite says it must
//! be there (`FARM_REQUIRE_DOCKER=1`, `FARM_REQUIRE_BROWSER=1`,
//! `FARM_REQUIRE_INTEROP=1`, set by `scripts/test` once it installed them),
//! when its absence fails the test instead.

/// Whether the variable `var` says `1`.
pub fn required(var: &str) -> bool {
    std::env::var_os(var).is_some_and(|v| v == "1")
}

/// Says on standard error that `test` is skipped because `why`, or fails
/// when `var` requires what is missing. Returns `false`, for
/// `if !available() { return }`.
pub fn skip(var: &str, test: &str, why: &str) -> bool {
    assert!(!required(var), "{test}: {var}=1 but {why}");
    eprintln!("{test}: skipped, {why}");
    false
}
