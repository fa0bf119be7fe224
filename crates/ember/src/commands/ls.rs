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
        "{:<20} {:>4} {:<20} {:>7} {:>8} {:>5} {:>4} {:<18} {:<30}  PACKAGES",
        "NAME", "VER", "HANDLER", "MEM MB", "TIMEOUT", "LIVE", "HIB", "SNAPSHOT", "KEEP-ALIVE"
    );
    for f in fns {
        let pkgs: Vec<&str> = f["packages"]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
            .unwrap_or_default();
        println!(
            "{:<20} {:>4} {:<20} {:>7} {:>7}s {:>5} {:>4} {:<18} {:<30}  {}",
            f["name"].as_str().unwrap_or("?"),
            f["version"].to_string(),
            f["handler"].as_str().unwrap_or("?"),
            f["memory_mb"].to_string(),
            f["timeout_s"].to_string(),
            f["instances_live"].to_string(),
            f["instances_hibernated"].as_u64().unwrap_or(0),
            f["snapshot"].as_str().unwrap_or("-"),
            keep_alive(&f),
            pkgs.join(",")
        );
    }
    Ok(())
}

/// A function's keep-alive as its policy decided it: `fixed 600s`, `histogram 90s+45s`
/// (pre-warm after 90 s, kept 45 s), `fallback 600s` (the histogram cannot be trusted yet),
/// then how long it stays hibernated after (` hib 3600s`; nothing when it is stopped).
fn keep_alive(f: &serde_json::Value) -> String {
    let w = &f["keep_alive"];
    let secs = |k: &str| w[k].as_f64().unwrap_or(0.0);
    let warm = match w["basis"]["kind"].as_str() {
        Some("histogram") => format!(
            "histogram {:.0}s+{:.0}s",
            secs("prewarm"),
            secs("keep_alive")
        ),
        Some(kind) => format!("{kind} {:.0}s", secs("keep_alive")),
        None => return "-".to_string(),
    };
    match secs("hibernate") {
        h if h > 0.0 => format!("{warm} hib {h:.0}s"),
        _ => warm,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_keep_alive_column_says_each_window() {
        let f = serde_json::json!({"keep_alive": {"prewarm": 0.0, "keep_alive": 600.0,
            "hibernate": 3600.0, "basis": {"kind": "fixed"}}});
        assert_eq!(super::keep_alive(&f), "fixed 600s hib 3600s");
        let f = serde_json::json!({"keep_alive": {"prewarm": 90.0, "keep_alive": 45.0,
            "hibernate": 0.0, "basis": {"kind": "histogram", "samples": 12}}});
        assert_eq!(super::keep_alive(&f), "histogram 90s+45s");
        assert_eq!(super::keep_alive(&serde_json::json!({})), "-");
    }
}
