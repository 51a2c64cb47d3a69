//! Clients nobody here wrote: grpcurl and Python with grpcio-tools, run as
//! tools, and Python clients generated from `proto/` by the scripts under
//! `control-plane/tests/interop/`. `scripts/test` installs the tools and
//! sets `FARM_REQUIRE_INTEROP=1`, which turns a missing tool into a failure
//! instead of a skip.

use std::{
    path::Path,
    process::{Output, Stdio},
};

/// Whether missing interop tools fail the suite instead of skipping.
pub fn required() -> bool {
    crate::skip::required("FARM_REQUIRE_INTEROP")
}

/// Runs a tool; `None` (skip, said on standard error) when it is missing
/// and not required.
pub async fn run(program: &str, args: &[&str]) -> Option<Output> {
    run_with_env(program, args, &[]).await
}

/// [`run`] with extra environment variables.
async fn run_with_env(program: &str, args: &[&str], env: &[(&str, &str)]) -> Option<Output> {
    match tokio::process::Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .await
    {
        Ok(output) => Some(output),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound && !required() => {
            eprintln!("skipping: {program} is not installed (scripts/test installs it)");
            None
        }
        Err(err) => panic!("cannot run {program}: {err}"),
    }
}

/// A tool's standard output, after checking it succeeded.
pub fn stdout(output: &Output, what: &str) -> String {
    assert!(
        output.status.success(),
        "{what} failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).expect("UTF-8 output")
}

/// Runs the Python client `script` against the control plane at `target`
/// (`host:port`) with `env`: the script generates its code from `proto/`
/// into a folder of its own and prints one JSON object, returned here.
/// `None` (skip) without Python's grpcio-tools, unless required.
pub async fn python_client(
    script: &Path,
    target: &str,
    env: &[(&str, &str)],
) -> Option<serde_json::Value> {
    if !python_with_grpc_tools().await {
        return None;
    }
    let out = tempfile::tempdir().expect("a folder for the generated code");
    let proto = Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto");
    let args = [
        script.to_str().expect("a UTF-8 path"),
        target,
        proto.to_str().expect("a UTF-8 path"),
        out.path().to_str().expect("a UTF-8 path"),
    ];
    let output = run_with_env("python3", &args, env).await.expect("python3");
    let printed = stdout(&output, &format!("python3 {}", script.display()));
    Some(serde_json::from_str(&printed).expect("one JSON object"))
}

/// Whether `python3` can import grpcio-tools; says why the test is skipped
/// when not, and fails instead when the tools are required.
async fn python_with_grpc_tools() -> bool {
    match run("python3", &["-c", "import grpc_tools, grpc"]).await {
        Some(output) if output.status.success() => true,
        _ if !required() => {
            eprintln!(
                "skipping: python3 with grpcio-tools is not installed (scripts/test installs it)"
            );
            false
        }
        Some(output) => panic!(
            "grpcio-tools missing: {}",
            String::from_utf8_lossy(&output.stderr)
        ),
        None => panic!("python3 missing"),
    }
}
