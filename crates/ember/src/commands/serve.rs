//! `ember serve`: run the single-node platform until Ctrl-C or SIGTERM.

use crate::daemon;
use crate::settings::DaemonArgs;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub daemon: DaemonArgs,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let settings = args.daemon.resolve()?;
    let home = settings.node.home.clone();
    let running = daemon::start(settings).await?;
    println!(
        "ember listening on {} (home {})",
        running.url(),
        home.display()
    );
    daemon::signalled().await;
    tracing::info!("shutting down");
    running.stop().await
}
