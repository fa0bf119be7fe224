//! `ember up`: serve, deploy the examples, invoke each once cold and once warm, print a
//! table, then keep serving.

use std::time::Instant;

use anyhow::Context;
use ember_api::client::Client;
use ember_bench::{driver, workloads};

use crate::daemon;
use crate::settings::DaemonArgs;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub daemon: DaemonArgs,
    /// Stop after printing the table instead of serving on
    #[arg(long)]
    pub exit: bool,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let settings = args.daemon.resolve()?;
    let token = settings.api.token.clone();
    let running = daemon::start(settings).await?;
    let url = running.url();
    eprintln!(
        "ember listening on {url}; deploying the examples (the first run installs their packages)"
    );
    let client = Client::new(&url, token);
    let all = workloads::select(&[])?;
    println!(
        "{:<11} {:>10} {:<10} {:>10}  result",
        "function", "cold ms", "via", "warm ms"
    );
    for w in &all {
        driver::deploy(&client, w, &|l| eprintln!("{l}")).await?;
        client.stop_instances(&w.name).await?;
        let event = w.manifest.bench_event();
        let mut times = Vec::new();
        let mut last = None;
        let mut via = String::new();
        // A cold start is a cold boot, or a restore once the example's image is built (in
        // the background after its deploy).
        for expect in [&["cold-boot", "image"][..], &["warm"]] {
            let t0 = Instant::now();
            let r = client
                .invoke(&w.name, event.clone())
                .await
                .with_context(|| format!("invoking {}", w.name))?;
            times.push(t0.elapsed().as_secs_f64() * 1e3);
            if r.status != 200 || !expect.contains(&r.start.as_str()) {
                anyhow::bail!(
                    "{}: expected a {} answer, got HTTP {} via {}: {}",
                    w.name,
                    expect.join(" or "),
                    r.status,
                    r.start,
                    String::from_utf8_lossy(&r.body)
                );
            }
            if via.is_empty() {
                via = r.start.clone();
            }
            last = Some(r);
        }
        let body = last
            .map(|r| String::from_utf8_lossy(&r.body).into_owned())
            .unwrap_or_default();
        let shown: String = body.chars().take(60).collect();
        println!(
            "{:<11} {:>10.1} {:<10} {:>10.2}  {shown}",
            w.name, times[0], via, times[1]
        );
    }
    if args.exit {
        return running.stop().await;
    }
    println!("\nember is serving on {url}. Try (from the repository's directory):");
    for h in hints(&url) {
        println!("  {h}");
    }
    println!("Ctrl-C stops it.");
    daemon::signalled().await;
    running.stop().await
}

/// What `up` suggests trying next; the CLI commands find this daemon by their default URL,
/// or are told it.
fn hints(url: &str) -> Vec<String> {
    let at = if url == super::DEFAULT_URL {
        String::new()
    } else {
        format!(" --url {url}")
    };
    vec![
        format!(
            "cargo run --release -- invoke helloworld --data '{{\"name\": \"you\"}}' --verbose{at}"
        ),
        format!("curl -s -X POST {url}/v1/functions/numpy/invoke -d '{{\"n\": 100}}' -D -"),
        format!("cargo run --release -- deploy examples/helloworld --name mine{at}"),
        format!("cargo run --release -- ls{at}"),
    ]
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    /// Every `cargo run` hint is a command line the CLI accepts, whatever the address.
    #[test]
    fn hints_parse() {
        for url in [super::super::DEFAULT_URL, "http://127.0.0.1:9999"] {
            for h in super::hints(url) {
                let Some(rest) = h.strip_prefix("cargo run --release -- ") else {
                    continue;
                };
                // The hints quote only JSON in single quotes.
                let mut words = vec!["ember".to_string()];
                for (i, part) in rest.split('\'').enumerate() {
                    if i % 2 == 1 {
                        words.push(part.to_string());
                    } else {
                        words.extend(part.split_whitespace().map(String::from));
                    }
                }
                let cli = crate::Cli::try_parse_from(&words).unwrap_or_else(|e| panic!("{h}: {e}"));
                if url != super::super::DEFAULT_URL {
                    assert!(format!("{cli:?}").contains(url), "{h}");
                }
            }
        }
    }
}
