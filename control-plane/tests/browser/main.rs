//! A real browser against the control plane: Debian's `chromium`, driven
//! by npm's `playwright-core` (the dashboard's own packages in `web/`).
//! Every test here needs it; `scripts/test` installs both, and without them
//! a test skips with a message unless `FARM_REQUIRE_BROWSER=1` makes that a
//! failure.
//!
//! - [`bundle`]: the dashboard's sources type-check, pass their unit tests
//!   and build exactly the committed bundle;
//! - [`catalog_view`]: the catalog searched and followed from the page;
//! - [`origins`]: which pages may call the port through gRPC-Web;
//! - [`dashboard`]: the dashboard as its users drive it, with screenshots
//!   in `target/screenshots/`;
//! - [`config_editor`]: its Configuration section: saving, conflicts,
//!   syntax errors, history and rollback.
//! - [`load_test`]: the Load test section: a run from the page, live and
//!   reported, stopped, and refused to a viewer.

mod bundle;
mod catalog_view;
mod config_editor;
mod dashboard;
mod load_test;
mod origins;

use std::time::Duration;

use farm_testkit::browser::Page;

/// How long a page may take to show something: long enough for a 2-core
/// machine running other tests beside.
pub(crate) const SHOWN: Duration = Duration::from_secs(30);

/// Waits until the header says the page is live.
pub(crate) async fn live(page: &Page<'_>) {
    page.wait_text(".link", "live", SHOWN).await;
}

/// The page must not have logged errors or thrown.
pub(crate) async fn no_problems(page: &Page<'_>) {
    let problems = page.problems().await;
    assert!(problems.is_empty(), "the page had problems: {problems:#?}");
}
