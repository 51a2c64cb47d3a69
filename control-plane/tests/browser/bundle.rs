//! The dashboard's sources: they type-check (`tsc --noEmit`, strict), their
//! pure logic passes its unit tests (node's test runner), and the bundle
//! committed in `web/dist` (which the control plane embeds) is exactly what
//! they build, so it cannot go stale. One test, because all three generate
//! `web/gen` from the protos first.

use std::{path::Path, process::Command};

use farm_testkit::browser;

/// Runs `program args` in `web/`; panics with its output unless it succeeds.
fn run_in_web(program: &str, args: &[&str]) -> String {
    let web = browser::modules_dir();
    let output = Command::new(program)
        .args(args)
        .current_dir(&web)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "`{program} {}` in web/ failed: {}\n{text}",
        args.join(" "),
        output.status
    );
    text
}

/// Every file of `dir`, by name, sorted.
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let entry = entry.expect("a folder entry");
            let bytes = std::fs::read(entry.path()).expect("a file");
            (entry.file_name().to_string_lossy().into_owned(), bytes)
        })
        .collect();
    files.sort();
    files
}

#[test]
fn the_sources_check_and_the_committed_bundle_is_what_they_build() {
    if !browser::available("the_sources_check_and_the_committed_bundle_is_what_they_build") {
        return;
    }
    // Generate, type-check, unit-test.
    let checked = run_in_web("npm", &["run", "--silent", "check"]);
    assert!(checked.contains("# fail 0"), "{checked}");

    let built = tempfile::tempdir().expect("a folder");
    let out = built.path().to_str().expect("a UTF-8 path");
    let report = run_in_web("node", &["build.mjs", "--out", out]);
    let fresh = files(built.path());
    let committed = files(&browser::modules_dir().join("dist"));
    let names = |files: &[(String, Vec<u8>)]| files.iter().map(|f| f.0.clone()).collect::<Vec<_>>();
    assert_eq!(
        names(&committed),
        names(&fresh),
        "web/dist is stale: run `npm run build` in web/ and commit web/dist\n{report}"
    );
    for ((name, committed), (_, fresh)) in committed.iter().zip(&fresh) {
        assert!(
            committed == fresh,
            "web/dist/{name} differs from what the sources build: run `npm run build` in web/ and commit web/dist"
        );
    }
    println!("{report}");
}
