//! `ember instances ls`: every instance on the node, warm, busy, hibernating or hibernated,
//! with the bytes it holds (memory, or disk once hibernated).

use super::ClientArgs;
use super::snapshot::{ago, now_secs};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Debug, clap::Subcommand)]
pub enum Cmd {
    /// List instances: function, state (warm, busy, hibernating, hibernated, prestarted),
    /// bytes held (proportional set size in memory; the dump's size on disk once
    /// hibernated), since when, and what a hibernated one's dump is a layer over
    Ls {
        /// Only this function's (or published version's, `name:N`)
        #[arg(long)]
        function: Option<String>,
        /// Print the full JSON description instead of a table
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
}

const MIB: f64 = 1048576.0;

pub async fn run(args: Args) -> anyhow::Result<()> {
    let Cmd::Ls {
        function,
        json,
        client,
    } = args.command;
    let v = client.client().instances(function.as_deref()).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    print!("{}", table(&v, now_secs()));
    Ok(())
}

/// The listing as a table, `now` in seconds since the epoch.
fn table(v: &serde_json::Value, now: u64) -> String {
    let mut out = format!(
        "{:<34} {:<20} {:<12} {:>9} {:<6} {:<10}  LAYER OVER\n",
        "INSTANCE", "FUNCTION", "STATE", "MIB", "WHERE", "SINCE"
    );
    let empty = Vec::new();
    for i in v["instances"].as_array().unwrap_or(&empty) {
        let state = i["state"].as_str().unwrap_or("?");
        out.push_str(&format!(
            "{:<34} {:<20} {:<12} {:>9.1} {:<6} {:<10}  {}\n",
            i["instance"].as_str().unwrap_or("?"),
            i["function"].as_str().unwrap_or("?"),
            state,
            i["bytes"].as_f64().unwrap_or(0.0) / MIB,
            if state == "hibernated" {
                "disk"
            } else {
                "memory"
            },
            ago(i["since"].as_u64(), now),
            i["layer_over"].as_str().unwrap_or("-"),
        ));
    }
    out.push_str(&format!(
        "hibernated: {:.1} of {:.0} MiB on disk\n",
        v["hibernated_bytes"].as_f64().unwrap_or(0.0) / MIB,
        v["hibernated_budget_bytes"].as_f64().unwrap_or(0.0) / MIB,
    ));
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_table_shows_each_state_and_where_its_bytes_are() {
        let v = serde_json::json!({
            "instances": [
                {"instance": "f-1", "function": "f", "state": "warm", "bytes": 31457280, "since": 90},
                {"instance": "f-2", "function": "f", "state": "hibernated", "bytes": 1048576,
                 "since": 40, "layer_over": "a layer over function snapshot s1"},
            ],
            "hibernated_bytes": 1048576,
            "hibernated_budget_bytes": 2147483648u64,
        });
        let t = super::table(&v, 100);
        assert!(t.contains("f-1"), "{t}");
        assert!(
            t.contains("warm") && t.contains("30.0") && t.contains("memory"),
            "{t}"
        );
        assert!(
            t.contains("hibernated") && t.contains("disk") && t.contains("1m ago"),
            "{t}"
        );
        assert!(t.contains("function snapshot s1"), "{t}");
        assert!(t.contains("1.0 of 2048 MiB"), "{t}");
    }
}
