//! `loadgen`: parses flags, finds the targets, runs the load test (or the
//! swarm) with progress on standard error and Ctrl-C or SIGTERM as an early
//! stop, and prints the report (and writes it as JSON or HTML when asked).
//! The only place that handles signals and chooses exit codes.
//!
//! Exit codes (`loadgen --help` says the same): 0 the run succeeded; 1 no
//! request succeeded, a threshold was crossed, or the report could not be
//! written; 2 bad input (flags, an unreachable control plane, no node to
//! drive).

use std::{path::Path, process::ExitCode};

use clap::Parser;
use loadgen::{
    Cli, Command, Report, RunArgs, RunConfig,
    progress::Progress,
    swarm::{SwarmArgs, SwarmConfig, SwarmError, SwarmProgress, SwarmReport},
};

/// The run did not succeed, or its report could not be written.
const FAILED: u8 = 1;
/// Bad input, as opposed to a failure along the way.
const USAGE: u8 = 2;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    // Bad flags end here with clap's message and exit code 2.
    let cli = Cli::parse();
    let threads = match cli.threads {
        Some(0) => {
            eprintln!("error: --threads must be at least 1");
            return ExitCode::from(USAGE);
        }
        Some(n) => n,
        None => cli.command.default_threads(),
    };
    let runtime = match threads {
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
    };
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the runtime: {err}");
            return ExitCode::from(FAILED);
        }
    };
    runtime.block_on(async {
        match cli.command {
            Command::Run(args) => run(args).await,
            Command::Swarm(args) => swarm(args).await,
        }
    })
}

/// Resolves on the first Ctrl-C (SIGINT) or SIGTERM: the run stops early
/// and reports what it measured.
async fn shutdown() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// `loadgen run`: exit code 0 when the run succeeded, 1 when no request
/// succeeded or a threshold was crossed (the summary says which), 2 for
/// bad input.
async fn run(args: RunArgs) -> ExitCode {
    let targets = match &args.control_plane {
        Some(url) => {
            let (token, group) = (args.token.as_deref(), args.group.as_deref());
            match loadgen::discover::healthy_nodes(url, token, group).await {
                Ok(targets) => targets,
                Err(err) => return fail(USAGE, &err),
            }
        }
        None => args.targets.clone(),
    };
    let config = match RunConfig::from_args(&args, &targets) {
        Ok(config) => config,
        Err(err) => return fail(USAGE, &err),
    };

    let mut progress = Progress::new(config.duration);
    progress.start(&config.describe());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let shown = tokio::spawn(async move {
        while let Some(interval) = rx.recv().await {
            progress.interval(&interval);
        }
        progress.finish();
    });
    let report = loadgen::run_with_progress(&config, shutdown(), move |interval| {
        let _ = tx.send(interval.clone());
    })
    .await;
    let _ = shown.await;
    let report = match report {
        Ok(report) => report,
        Err(err) => return fail(FAILED, &err),
    };
    if let Err(err) = report.write_text(&mut std::io::stdout().lock()) {
        eprintln!("error: cannot print the report: {err}");
        return ExitCode::from(FAILED);
    }
    let mut written = Ok(());
    if let Some(path) = &args.json {
        written = written.and(write_to(path, &report, Report::write_json));
    }
    if let Some(path) = &args.html {
        written = written.and(write_to(path, &report, |r, out| {
            loadgen::html::write_html(r, out)
        }));
    }
    if let Err(message) = written {
        eprintln!("error: {message}");
        return ExitCode::from(FAILED);
    }
    if report.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(FAILED)
    }
}

/// `loadgen swarm`: exit code 2 for bad flags or an unreachable control
/// plane, 1 when nothing registered or the report cannot be written.
async fn swarm(args: SwarmArgs) -> ExitCode {
    let config = match SwarmConfig::try_from(&args) {
        Ok(config) => config,
        Err(err) => return fail(USAGE, &err),
    };
    let progress = (!args.quiet).then_some(|line: &SwarmProgress| eprintln!("{line}"));
    let report = match loadgen::swarm::swarm_with_progress(&config, shutdown(), progress).await {
        Ok(report) => report,
        Err(err @ SwarmError::Unreachable { .. }) => return fail(USAGE, &err),
    };
    if let Err(err) = report.write_text(&mut std::io::stdout().lock()) {
        eprintln!("error: cannot print the report: {err}");
        return ExitCode::from(FAILED);
    }
    if let Some(path) = &args.json
        && let Err(message) = write_to(path, &report, SwarmReport::write_json)
    {
        eprintln!("error: {message}");
        return ExitCode::from(FAILED);
    }
    if report.registered == 0 {
        eprintln!("error: no node could register; see the errors above");
        return ExitCode::from(FAILED);
    }
    ExitCode::SUCCESS
}

/// Prints `err` and its causes, `: `-separated (a cause that repeats the
/// one before it said once), and exits with `code`.
fn fail(code: u8, err: &dyn std::error::Error) -> ExitCode {
    let mut text = err.to_string();
    let mut last = String::new();
    let mut source = err.source();
    while let Some(cause) = source {
        let said = cause.to_string();
        if said != last && !text.ends_with(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        last = said;
        source = cause.source();
    }
    eprintln!("error: {text}");
    ExitCode::from(code)
}

/// Writes `report` to the file `path` with `render`, buffered; the error
/// says which file.
fn write_to<R>(
    path: &Path,
    report: &R,
    render: impl Fn(&R, &mut std::io::BufWriter<std::fs::File>) -> std::io::Result<()>,
) -> Result<(), String> {
    std::fs::File::create(path)
        .and_then(|file| {
            let mut out = std::io::BufWriter::new(file);
            render(report, &mut out)?;
            std::io::Write::flush(&mut out)
        })
        .map_err(|err| format!("cannot write {}: {err}", path.display()))
}
