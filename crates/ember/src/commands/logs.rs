//! `ember logs NAME`: what a function's instances printed, and the node's notes about them.

use super::ClientArgs;

#[derive(Debug, clap::Args)]
pub struct Args {
    pub name: String,
    /// How many of the last lines to show
    #[arg(long, short = 'n', default_value_t = 100)]
    pub lines: usize,
    #[command(flatten)]
    pub client: ClientArgs,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    print!(
        "{}",
        args.client.client().logs(&args.name, args.lines).await?
    );
    Ok(())
}
