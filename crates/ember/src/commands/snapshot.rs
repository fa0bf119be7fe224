//! `ember snapshot ls | rm`: the node's function snapshots (its local snapshot cache) and,
//! in `snapshots = "remote"` mode, those only the snapshot store holds.

use super::ClientArgs;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Debug, clap::Subcommand)]
pub enum Cmd {
    /// List function snapshots: function, version, parent image, size, uses, last use, where
    /// (memory or disk, +remote once the snapshot store holds it; in remote mode also those
    /// only the store holds, by store key, as `remote`)
    Ls {
        /// Print the full JSON description instead of a table
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Remove a function snapshot from the node's cache (its function's next init takes a new
    /// one; in remote mode the store's copy is fetched again, unless --store)
    Rm {
        /// A snapshot's id, or with --store a store key that only the store holds
        id: String,
        /// Remove its set from the snapshot store too (remote mode)
        #[arg(long)]
        store: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
}

const MIB: f64 = 1048576.0;

/// Seconds since the epoch.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// How long ago `then` (seconds since the epoch) was, e.g. `42s ago`, `-` for never.
pub fn ago(then: Option<u64>, now: u64) -> String {
    let Some(then) = then else {
        return "-".into();
    };
    let d = now.saturating_sub(then);
    match d {
        0..60 => format!("{d}s ago"),
        60..3600 => format!("{}m ago", d / 60),
        3600..86400 => format!("{}h ago", d / 3600),
        _ => format!("{}d ago", d / 86400),
    }
}

/// Where an image or snapshot of a listing is: `memory` or `disk`, then `+remote` once the
/// snapshot store holds it (`+uploading`, `+upload failed`).
pub fn place(v: &serde_json::Value) -> String {
    let local = v["location"].as_str().unwrap_or("?");
    match v["remote"].as_str() {
        None => local.to_string(),
        Some("stored") => format!("{local}+remote"),
        Some("uploading") => format!("{local}+uploading"),
        Some(_) => format!("{local}+upload failed"),
    }
}

/// One snapshot's line of the table, named by its field `id`.
fn row(s: &serde_json::Value, id: &str, uses: &str, last_use: &str, place: &str) -> String {
    format!(
        "{:<36} {:<20} {:>4} {:<18} {:>8.1} {:>6} {:<10} {}\n",
        s[id].as_str().unwrap_or("?"),
        s["function"].as_str().unwrap_or("?"),
        s["version"].as_u64().unwrap_or(0),
        s["parent_image"].as_str().unwrap_or("(whole)"),
        s["bytes"].as_f64().unwrap_or(0.0) / MIB,
        uses,
        last_use,
        place,
    )
}

/// The table `ember snapshot ls` prints for the answer of `GET /v1/snapshots`.
fn table(v: &serde_json::Value, now: u64) -> String {
    let mut out = format!(
        "{:<36} {:<20} {:>4} {:<18} {:>8} {:>6} {:<10} {}\n",
        "ID", "FUNCTION", "VER", "PARENT IMAGE", "MIB", "USES", "LAST USE", "WHERE"
    );
    for s in v["snapshots"].as_array().into_iter().flatten() {
        let uses = s["uses"].as_u64().unwrap_or(0).to_string();
        let last = ago(s["last_use"].as_u64(), now);
        out += &row(s, "id", &uses, &last, &place(s));
        if let Some(e) = s["last_error"].as_str() {
            out += &format!("  last error: {e}\n");
        }
    }
    for s in v["store"].as_array().into_iter().flatten() {
        out += &row(s, "store_key", "-", "-", "remote");
        if let Some(e) = s["error"].as_str() {
            out += &format!("  unreadable: {e}\n");
        }
    }
    if let Some(e) = v["store_error"].as_str() {
        out += &format!("the snapshot store was not listed: {e}\n");
    }
    let c = &v["cache"];
    out += &format!(
        "snapshots {}, eviction {}: disk {:.1} of {:.1} MiB, memory {:.1} of {:.1} MiB\n",
        c["mode"].as_str().unwrap_or("?"),
        c["eviction"].as_str().unwrap_or("?"),
        c["disk_bytes"].as_f64().unwrap_or(0.0) / MIB,
        c["disk_budget_bytes"].as_f64().unwrap_or(0.0) / MIB,
        c["memory_bytes"].as_f64().unwrap_or(0.0) / MIB,
        c["memory_budget_bytes"].as_f64().unwrap_or(0.0) / MIB,
    );
    out
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        Cmd::Ls { json, client } => {
            let v = client.client().snapshots().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", table(&v, now_secs()));
            }
        }
        Cmd::Rm { id, store, client } => {
            client.client().remove_snapshot(&id, store).await?;
            if store {
                println!("removed {id}, here and from the snapshot store");
            } else {
                println!("removed {id}");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_shows_each_snapshot_and_the_cache() {
        let v = serde_json::json!({
            "snapshots": [
                {"id": "snap-hello-0123456789abcdef", "function": "hello", "version": 3,
                 "parent_image": "img-0123456789ab", "bytes": 3 * 1048576, "uses": 7,
                 "last_use": 1000 - 125, "location": "memory", "last_error": null},
                {"id": "snap-native-ff", "function": "native", "version": 1,
                 "parent_image": null, "bytes": 524288, "uses": 0, "last_use": null,
                 "location": "disk", "last_error": "restore failed: x"},
            ],
            "cache": {"mode": "local", "eviction": "gdsf", "disk_bytes": 3670016,
                      "disk_budget_bytes": 4294967296u64, "memory_bytes": 3145728,
                      "memory_budget_bytes": 536870912},
        });
        let t = table(&v, 1000);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 5, "{t}");
        assert!(
            lines[0].starts_with("ID ") && lines[0].ends_with("WHERE"),
            "{t}"
        );
        let row: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(
            row,
            [
                "snap-hello-0123456789abcdef",
                "hello",
                "3",
                "img-0123456789ab",
                "3.0",
                "7",
                "2m",
                "ago",
                "memory"
            ]
        );
        let row: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(row[3..], ["(whole)", "0.5", "0", "-", "disk"]);
        assert_eq!(lines[3], "  last error: restore failed: x");
        assert_eq!(
            lines[4],
            "snapshots local, eviction gdsf: disk 3.5 of 4096.0 MiB, memory 3.0 of 512.0 MiB"
        );
        let mut remote = v.clone();
        remote["store"] = serde_json::json!([
            {"store_key": "ab12", "id": "snap-other-1", "function": "other", "version": 2,
             "parent_image": "img-0123456789ab", "bytes": 1048576},
            {"store_key": "cd34", "error": "a chunk is missing"},
        ]);
        let t2 = table(&remote, 1000);
        let lines2: Vec<&str> = t2.lines().collect();
        assert_eq!(lines2.len(), 8, "{t2}");
        let row: Vec<&str> = lines2[4].split_whitespace().collect();
        assert_eq!(
            row,
            [
                "ab12",
                "other",
                "2",
                "img-0123456789ab",
                "1.0",
                "-",
                "-",
                "remote"
            ]
        );
        assert_eq!(lines2[6], "  unreadable: a chunk is missing");
        remote["store"] = serde_json::Value::Null;
        remote["store_error"] = "it did not answer".into();
        let t2 = table(&remote, 1000);
        assert!(
            t2.lines().nth(4) == Some("the snapshot store was not listed: it did not answer"),
            "{t2}"
        );
    }

    #[test]
    fn ages_read_in_the_largest_unit() {
        assert_eq!(ago(None, 10), "-");
        assert_eq!(ago(Some(10), 10), "0s ago");
        assert_eq!(ago(Some(0), 7200), "2h ago");
        assert_eq!(ago(Some(0), 3 * 86400), "3d ago");
        // A clock that went back is no panic.
        assert_eq!(ago(Some(20), 10), "0s ago");
    }
}
