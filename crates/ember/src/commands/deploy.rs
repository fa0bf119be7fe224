//! `ember deploy PATH`: create or update a function from a directory or a zip file.

use std::path::PathBuf;

use anyhow::{Context, bail};
use ember_api::package;

use super::ClientArgs;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The function's code: a directory (its ember.toml gives defaults) or a .zip file
    pub path: PathBuf,
    /// Function name [default: name in ember.toml]
    #[arg(long)]
    pub name: Option<String>,
    /// Handler as module.function; for native, the executable's path in the code; for
    /// provided, passed to the bootstrap as _HANDLER [default: handler in ember.toml]
    #[arg(long)]
    pub handler: Option<String>,
    /// python, provided (the code's `bootstrap` talks to the Lambda Runtime API) or native
    /// (one process per request, event on stdin, result on stdout) [default: runtime in
    /// ember.toml, else python]
    #[arg(long)]
    pub runtime: Option<String>,
    /// Every request gets a fresh sandboxed instance, which ends with it [default: cold_only
    /// in ember.toml, else off]
    #[arg(long)]
    pub cold_only: bool,
    /// Never start from a dependency image (and build none for this function): every start
    /// that is not warm is a cold boot [default: images in ember.toml, else on]
    #[arg(long)]
    pub no_images: bool,
    /// When a function snapshot is taken, which later cold starts restore instead of running
    /// the init again: after-init (handler imported, before the first event), after-first-invoke
    /// (keeps what the first event left in memory) or off [default: snapshot in ember.toml,
    /// else after-init]
    #[arg(long, value_parser = ["after-init", "after-first-invoke", "off"])]
    pub snapshot: Option<String>,
    /// The network instances see: none (no interface but a loopback) or host (the host's
    /// network) [default: network in ember.toml, else none]
    #[arg(long, value_parser = ["none", "host"])]
    pub network: Option<String>,
    /// pip requirements, comma-separated or repeated (e.g. --packages numpy,pandas==2.2.3)
    /// [default: packages in ember.toml, else none]
    #[arg(long, value_delimiter = ',')]
    pub packages: Option<Vec<String>>,
    /// Memory limit in MiB [default: memory_mb in ember.toml, else 512]
    #[arg(long)]
    pub memory: Option<u32>,
    /// Timeout in seconds [default: timeout_s in ember.toml, else 30]
    #[arg(long)]
    pub timeout: Option<u32>,
    /// Most instances running at once [default: max_instances in ember.toml, else 10]
    #[arg(long)]
    pub max_instances: Option<u32>,
    /// Environment variable for the function, KEY=VALUE (repeatable)
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    #[command(flatten)]
    pub client: ClientArgs,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let (zip, mut m) = package::load_code(&args.path)?;
    if args.name.is_some() {
        m.name = args.name;
    }
    if args.handler.is_some() {
        m.handler = args.handler;
    }
    if args.runtime.is_some() {
        m.runtime = args.runtime;
    }
    if args.cold_only {
        m.cold_only = Some(true);
    }
    if args.no_images {
        m.images = Some(false);
    }
    if args.network.is_some() {
        m.network = args.network;
    }
    if args.snapshot.is_some() {
        m.snapshot = args.snapshot;
    }
    if let Some(p) = args.packages {
        m.packages = Some(
            p.into_iter()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect(),
        );
    }
    m.memory_mb = args.memory.or(m.memory_mb);
    m.timeout_s = args.timeout.or(m.timeout_s);
    m.max_instances = args.max_instances.or(m.max_instances);
    for kv in args.env {
        let Some((k, v)) = kv.split_once('=') else {
            bail!("--env {kv:?} must be KEY=VALUE");
        };
        m.env.insert(k.to_string(), v.to_string());
    }
    let Some(name) = m.name.clone() else {
        bail!(
            "no function name: pass --name or set name in {}/ember.toml",
            args.path.display()
        );
    };
    let body = m.deploy_body(&zip)?;
    let client = args.client.client();
    eprintln!(
        "deploying {name} ({} KiB of code)",
        zip.len().div_ceil(1024)
    );
    let result = client
        .deploy(&name, &body, &mut |line| eprintln!("  {line}"))
        .await
        .with_context(|| format!("deploying {name}"))?;
    let f = &result.function;
    println!(
        "{} {name} version {} (handler {}, packages {})",
        if result.created { "created" } else { "updated" },
        f["version"],
        f["handler"].as_str().unwrap_or("?"),
        f["packages"]
    );
    Ok(())
}
