//! `ember invoke NAME`: run a function once and print its result.

use anyhow::{Context, bail};

use super::ClientArgs;

#[derive(Debug, clap::Args)]
pub struct Args {
    pub name: String,
    /// The event: JSON text, @file to read it from a file, or @- for standard input [default: {}]
    #[arg(long, short)]
    pub data: Option<String>,
    /// Also print how the instance started and the time of each phase (to stderr)
    #[arg(long, short)]
    pub verbose: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

fn event(data: Option<String>) -> anyhow::Result<Vec<u8>> {
    let bytes = match data.as_deref() {
        None => return Ok(b"{}".to_vec()),
        Some("@-") => {
            let mut v = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut v)
                .context("reading the event from stdin")?;
            v
        }
        Some(d) if d.starts_with('@') => {
            std::fs::read(&d[1..]).with_context(|| format!("reading the event from {}", &d[1..]))?
        }
        Some(d) => d.as_bytes().to_vec(),
    };
    if let Err(e) = serde_json::from_slice::<serde_json::Value>(&bytes) {
        bail!("the event is not valid JSON: {e}");
    }
    Ok(bytes)
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let ev = event(args.data)?;
    let r = args.client.client().invoke(&args.name, ev).await?;
    if args.verbose || r.status != 200 {
        eprintln!("start: {}  request: {}", r.start, r.request_id);
        eprintln!("timing (ms): {}", r.timing);
    }
    if r.status == 200 {
        println!("{}", String::from_utf8_lossy(&r.body));
        return Ok(());
    }
    let doc: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
    let e = &doc["error"];
    // The function's frames, as Lambda's stackTrace gives them.
    let frames: Vec<&str> = e["traceback"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l.as_str())
        .collect();
    if !frames.is_empty() {
        eprintln!("Traceback (most recent call last):");
        frames.iter().for_each(|f| eprint!("{f}"));
    }
    let message = e["message"].as_str().unwrap_or("the invocation failed");
    let message = match e["type"].as_str() {
        Some(t) => format!("{t}: {message}"),
        None => message.to_string(),
    };
    bail!(
        "{message} (HTTP {}, {})",
        r.status,
        e["code"].as_str().unwrap_or("?")
    )
}
