//! `ember ls`: the deployed functions.

use super::ClientArgs;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print the full JSON description instead of a table
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let fns = args.client.client().list().await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&fns)?);
        return Ok(());
    }
    println!(
        "{:<20} {:>4} {:<20} {:>7} {:>8} {:>5} {:<18} {:<22}  PACKAGES",
        "NAME", "VER", "HANDLER", "MEM MB", "TIMEOUT", "LIVE", "SNAPSHOT", "KEEP-ALIVE"
    );
    for f in fns {
        let pkgs: Vec<&str> = f["packages"]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
            .unwrap_or_default();
        println!(
            "{:<20} {:>4} {:<20} {:>7} {:>7}s {:>5} {:<18} {:<22}  {}",
            f["name"].as_str().unwrap_or("?"),
            f["version"].to_string(),
            f["handler"].as_str().unwrap_or("?"),
            f["memory_mb"].to_string(),
            f["timeout_s"].to_string(),
            f["instances_live"].to_string(),
            f["snapshot"].as_str().unwrap_or("-"),
            keep_alive(&f),
            pkgs.join(",")
        );
    }
    Ok(())
}

/// A function's keep-alive as its policy decided it: `fixed 600s`, `histogram 90s+45s`
/// (pre-warm after 90 s, kept 45 s), `fallback 600s` (the histogram cannot be trusted yet).
fn keep_alive(f: &serde_json::Value) -> String {
    let w = &f["keep_alive"];
    let secs = |k: &str| w[k].as_f64().unwrap_or(0.0);
    match w["basis"]["kind"].as_str() {
        Some("histogram") => format!(
            "histogram {:.0}s+{:.0}s",
            secs("prewarm"),
            secs("keep_alive")
        ),
        Some(kind) => format!("{kind} {:.0}s", secs("keep_alive")),
        None => "-".to_string(),
    }
}
