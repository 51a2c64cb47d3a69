//! `loadgen`: parses flags, runs the load test with Ctrl-C as an early stop,
//! and prints the report.

use std::process::ExitCode;

use clap::Parser;
use loadgen::{Cli, Command, RunConfig};

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let Command::Run(args) = Cli::parse().command;
    let config = match RunConfig::try_from(&args) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(2);
        }
    };
    let stop = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let report = match loadgen::run(&config, stop).await {
        Ok(report) => report,
        Err(err) => {
            eprintln!("error: {err:#}");
            return ExitCode::FAILURE;
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
    ExitCode::SUCCESS
}
