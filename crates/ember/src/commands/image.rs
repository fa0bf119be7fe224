//! `ember image build | ls | rm`: the node's dependency images.

use super::ClientArgs;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Debug, clap::Subcommand)]
pub enum Cmd {
    /// Build (or rebuild) the image for a package set: import it in a sandbox, dump it,
    /// test-restore it
    Build {
        /// Comma-separated pip requirements, e.g. numpy or pandas==2.2.3,scikit-learn
        /// (none, or an empty list: the bare runtime with the standard modules)
        #[arg(long, value_delimiter = ',')]
        packages: Vec<String>,
        /// Print the image's JSON description
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List images: packages, size, pages, where they are, functions they serve, health
    Ls {
        /// Print the full JSON description instead of a table
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Remove an image (instances restored from it keep running)
    Rm {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        Cmd::Build {
            packages,
            json,
            client,
        } => {
            let packages: Vec<String> = packages.into_iter().filter(|p| !p.is_empty()).collect();
            let img = client.client().build_image(&packages).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&img)?);
            } else {
                println!(
                    "built {} ({} MiB, {} pages, working set {} pages): import {:.0} ms, dump {:.0} ms, test restore {:.0} ms",
                    img["id"].as_str().unwrap_or("?"),
                    img["bytes"].as_u64().unwrap_or(0) >> 20,
                    img["pages"],
                    img["working_set_pages"],
                    img["import_ms"].as_f64().unwrap_or(0.0),
                    img["dump_ms"].as_f64().unwrap_or(0.0),
                    img["verify_ms"].as_f64().unwrap_or(0.0),
                );
            }
        }
        Cmd::Ls { json, client } => {
            let v = client.client().images().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            println!(
                "{:<18} {:>8} {:>8} {:<13} {:>4} {:>7} {:<8} {:<9} {:>8}  PACKAGES",
                "ID", "MIB", "PAGES", "WHERE", "FNS", "STANDBY", "TEMPLATE", "HEALTH", "RESTORES"
            );
            for i in v["images"].as_array().into_iter().flatten() {
                let pkgs: Vec<&str> = i["packages"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
                    .unwrap_or_default();
                let health = if i["healthy"].as_bool().unwrap_or(false) {
                    "ok"
                } else {
                    "unhealthy"
                };
                let template = match i["template"].as_str() {
                    Some("kept") => "kept",
                    Some(_) => "no",
                    None => "-",
                };
                println!(
                    "{:<18} {:>8.1} {:>8} {:<13} {:>4} {:>7} {:<8} {:<9} {:>8}  {}",
                    i["id"].as_str().unwrap_or("?"),
                    i["bytes"].as_f64().unwrap_or(0.0) / 1048576.0,
                    i["pages"].as_u64().unwrap_or(0),
                    super::snapshot::place(i),
                    i["functions"].as_u64().unwrap_or(0),
                    i["standby"].as_u64().unwrap_or(0),
                    template,
                    health,
                    i["restores"].as_u64().unwrap_or(0),
                    pkgs.join(",")
                );
                if let Some(e) = i["last_error"].as_str() {
                    println!("  last error: {e}");
                }
                if let Some(why) = i["template"]
                    .as_str()
                    .and_then(|t| t.strip_prefix("none: "))
                {
                    println!("  no template: {why}");
                }
            }
            let m = &v["memory"];
            println!(
                "memory pool: {:.1} of {:.1} MiB",
                m["resident_bytes"].as_f64().unwrap_or(0.0) / 1048576.0,
                m["budget_bytes"].as_f64().unwrap_or(0.0) / 1048576.0
            );
        }
        Cmd::Rm { id, client } => {
            client.client().remove_image(&id).await?;
            println!("removed {id}");
        }
    }
    Ok(())
}
