//! `ember rm NAME`: delete a function and stop its instances.

use super::ClientArgs;

#[derive(Debug, clap::Args)]
pub struct Args {
    pub name: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    args.client.client().delete(&args.name).await?;
    println!("deleted {}", args.name);
    Ok(())
}
