//! `ember`: the command-line interface and the daemon of Ember, a serverless function platform.

mod commands;
mod daemon;
mod settings;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(
    name = "ember",
    version,
    about = "Ember: serverless functions with fast cold starts"
)]
struct Cli {
    /// Log format of the daemon: text or json
    #[arg(long, global = true, env = "EMBER_LOG_FORMAT", default_value = "text")]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a node: the single-node platform (API on 127.0.0.1:8080 by default), or with
    /// --cluster one node of a cluster
    Serve(commands::serve::Args),
    /// Run a cluster's gateway: the API front end that stores deploys in etcd and the S3
    /// store and places invocations on the nodes
    Gateway(commands::gateway::Args),
    /// Serve, deploy the examples, invoke each cold and warm, then keep serving
    Up(commands::up::Args),
    /// Create or update a function from a directory or a zip file
    Deploy(commands::deploy::Args),
    /// Invoke a function and print its result
    Invoke(commands::invoke::Args),
    /// List deployed functions
    Ls(commands::ls::Args),
    /// Delete a function
    Rm(commands::rm::Args),
    /// Show a function's log
    Logs(commands::logs::Args),
    /// Measure cold and warm latency of the example workloads
    Bench(commands::bench::Args),
    /// The checkpoint/restore engine: dump, restore and inspect process images
    Snap(commands::snap::Args),
    /// Dependency images: build, list and remove them
    Image(commands::image::Args),
    /// Function snapshots (the node's local snapshot cache): list and remove them
    Snapshot(commands::snapshot::Args),
    /// Instances: list them, warm, busy or hibernated, with the bytes each holds
    Instances(commands::instances::Args),
}

fn init_tracing(format: &str) {
    let filter = EnvFilter::try_from_env("EMBER_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        b.json().init();
    } else {
        b.init();
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_tracing(&cli.log_format);
    let r = match cli.command {
        Command::Serve(a) => commands::serve::run(a).await,
        Command::Gateway(a) => commands::gateway::run(a).await,
        Command::Up(a) => commands::up::run(a).await,
        Command::Deploy(a) => commands::deploy::run(a).await,
        Command::Invoke(a) => commands::invoke::run(a).await,
        Command::Ls(a) => commands::ls::run(a).await,
        Command::Rm(a) => commands::rm::run(a).await,
        Command::Logs(a) => commands::logs::run(a).await,
        Command::Bench(a) => commands::bench::run(a).await,
        Command::Snap(a) => commands::snap::run(a).await,
        Command::Image(a) => commands::image::run(a).await,
        Command::Snapshot(a) => commands::snapshot::run(a).await,
        Command::Instances(a) => commands::instances::run(a).await,
    };
    match r {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
