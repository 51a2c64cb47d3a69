//! `loadgen`: parses flags, finds the targets, runs the load test (or the
//! swarm) with progress on standard error and Ctrl-C or SIGTERM as an early
//! stop, and prints the report (and writes it as JSON or HTML when asked).
//! The only place that handles signals and chooses exit codes.
//!
//! Exit codes: 0 done, 2 bad input (flags, an unreachable control plane, no
//! node to drive), 1 anything else.

use std::{path::Path, process::ExitCode};

use clap::Parser;
use loadgen::{
    Cli, Command, Report, RunConfig,
    progress::Progress,
    swarm::{SwarmArgs, SwarmConfig, SwarmError},
};

/// Bad input, as opposed to a failure along the way.
const USAGE: u8 = 2;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let cli = Cli::parse();
    let runtime = match cli.threads {
        Some(0) => {
            eprintln!("error: --threads must be at least 1");
            return ExitCode::from(USAGE);
        }
        Some(1) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        Some(n) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
        None => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
    };
    match runtime {
        Ok(runtime) => runtime.block_on(run(cli.command)),
        Err(err) => {
            eprintln!("error: cannot start the runtime: {err}");
            ExitCode::FAILURE
        }
    }
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

async fn run(command: Command) -> ExitCode {
    let args = match command {
        Command::Run(args) => args,
        Command::Swarm(args) => return swarm(args).await,
    };
    let targets = match &args.control_plane {
        Some(url) => {
            match loadgen::discover::healthy_nodes(
                url,
                args.token.as_deref(),
                args.group.as_deref(),
            )
            .await
            {
                Ok(targets) => targets,
                Err(err) => {
                    eprintln!("error: {err}");
                    return ExitCode::from(USAGE);
                }
            }
        }
        None => args.targets.clone(),
    };
    let config = match RunConfig::from_args(&args, &targets) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(USAGE);
        }
    };

    let mut progress = Progress::new(config.duration);
    progress.start(&describe(&config));
    let stop = shutdown();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let shown = tokio::spawn(async move {
        while let Some(interval) = rx.recv().await {
            progress.interval(&interval);
        }
        progress.finish();
    });
    let report = loadgen::run_with_progress(&config, stop, move |interval| {
        let _ = tx.send(interval.clone());
    })
    .await;
    let _ = shown.await;
    let report = match report {
        Ok(report) => report,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(err) = report.write_text(&mut std::io::stdout().lock()) {
        eprintln!("error: cannot print the report: {err}");
        return ExitCode::FAILURE;
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
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn describe(config: &RunConfig) -> String {
    let shape = match config.rate {
        Some(rate) => format!(
            "{rate} req/s (open loop, at most {} in flight)",
            config.concurrency
        ),
        None => format!("closed loop, {} in flight", config.concurrency),
    };
    let warmup = if config.warmup.is_zero() {
        String::new()
    } else {
        format!(
            " after {} of warm-up",
            humantime::format_duration(config.warmup)
        )
    };
    format!(
        "loadgen: {} requests to {} target{} for {}{warmup}, {shape}",
        config.mode.name(),
        config.targets.len(),
        if config.targets.len() == 1 { "" } else { "s" },
        humantime::format_duration(config.duration),
    )
}

fn write_to(
    path: &Path,
    report: &Report,
    render: impl Fn(&Report, &mut std::io::BufWriter<std::fs::File>) -> std::io::Result<()>,
) -> Result<(), String> {
    std::fs::File::create(path)
        .and_then(|file| {
            let mut out = std::io::BufWriter::new(file);
            render(report, &mut out)?;
            std::io::Write::flush(&mut out)
        })
        .map_err(|err| format!("cannot write {}: {err}", path.display()))
}

/// `loadgen swarm`: validates the flags, runs with Ctrl-C as an early stop,
/// and prints the report. Exit code 2 for bad flags or an unreachable
/// control plane, 1 when nothing registered or the report cannot be written.
async fn swarm(args: SwarmArgs) -> ExitCode {
    let config = match SwarmConfig::try_from(&args) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(USAGE);
        }
    };
    let progress = (!args.quiet).then_some(|line: &loadgen::swarm::SwarmProgress| {
        eprintln!("{line}");
    });
    let report = match loadgen::swarm::swarm_with_progress(&config, shutdown(), progress).await {
        Ok(report) => report,
        Err(err @ SwarmError::Unreachable { .. }) => {
            eprintln!("error: {}", chain(&err));
            return ExitCode::from(USAGE);
        }
    };
    if let Err(err) = report.write_text(&mut std::io::stdout().lock()) {
        eprintln!("error: cannot print the report: {err}");
        return ExitCode::FAILURE;
    }
    if let Some(path) = &args.json {
        let written = std::fs::File::create(path).and_then(|mut file| report.write_json(&mut file));
        if let Err(err) = written {
            eprintln!("error: cannot write {}: {err}", path.display());
            return ExitCode::FAILURE;
        }
    }
    if report.registered == 0 {
        eprintln!("error: no node could register; see the errors above");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// An error and its causes, `: `-separated (a cause that repeats the
/// one before it said once).
fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut last = String::new();
    let mut source = err.source();
    while let Some(cause) = source {
        let said = cause.to_string();
        if said != last {
            text.push_str(": ");
            text.push_str(&said);
        }
        last = said;
        source = cause.source();
    }
    text
}
