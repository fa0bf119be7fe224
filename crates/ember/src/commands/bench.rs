//! `ember bench`: cold and warm latency per workload against a running daemon (`--url`) or
//! one started in this process, with a bare-import baseline measured in the same run.

use std::hash::BuildHasher;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;

use ember_api::client::Client;
use ember_bench::{BenchOptions, Report, driver, workloads};

use crate::daemon;
use crate::settings::DaemonArgs;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Experiment {
    /// Cold and warm invocations of the example workloads over HTTP, with a bare-import baseline
    Invoke,
    /// Sandbox creation to a running first process at several parallelism levels, beside a
    /// plain fork+exec of the same program (needs root)
    Sandbox,
    /// The checkpoint/restore engine: dump time, image size and restore to first answer of
    /// Python processes (json, numpy, sklearn), beside their cold start and fork, and the
    /// size of a layer over the image after one request (needs root)
    Snap,
    /// Dependency images and function snapshots end to end over HTTP: cold boot vs. start
    /// from an image (per policy) vs. from the function's snapshot vs. warm, with phases, the
    /// snapshot layer's size against its image, and one shared image's cache cost vs.
    /// per-function snapshots (needs root)
    Images,
    /// The function-snapshot cache under a Zipf mix of --functions functions with a disk
    /// budget of --budget-percent of their snapshots, LRU against GDSF: hit ratio,
    /// evictions, start latency (needs root)
    SnapshotCache,
    /// The "Cooling Down FaaS" setting: a native helloworld started fresh per request
    /// (cold-only, native and provided) vs. kept warm, at --parallel concurrent requests,
    /// beside Ember's own overhead (a DryRun, and latency minus sandbox, start and function)
    Lambda,
    /// vHive's snapshot modes (its Table 6.2, Fig. 6.1-6.2): each workload's cold start with
    /// no snapshots, from a local function snapshot, from the snapshot store without a local
    /// copy (restored lazily, and fetched whole), and from the store's copy cached locally,
    /// --runs rounds interleaved, on the S3 server EMBER_S3_ENDPOINT names (needs root)
    Vhive,
    /// An Azure-Functions-like trace of --functions functions (periodic, bursty, rare) over
    /// --minutes minutes, replayed --compression times faster against one daemon per
    /// keep-alive setting (--keep-alive-policies): share of starts per rung, p50/p99 latency,
    /// idle memory-time and hibernated disk-time
    Trace,
    /// Knix's swap tier: N instances of a function (--workloads, numpy) kept ready (--pools
    /// N=1,10,50,100) in memory, hibernated to disk, and in memory pushed to the kernel's swap
    /// (a swap file of its own, when the machine allows one) (--knix-modes): memory held
    /// (PSS, swap, disk) and the latency of a burst of N requests (needs root)
    Knix,
    /// vHive's placement (its Fig. 6.3-6.5): the trace (--functions, --minutes,
    /// --compression) replayed through a cluster's gateway once per placement policy
    /// (--placements), each on --nodes nodes of its own on one etcd (--etcd) and the S3
    /// store (EMBER_S3_*); cold-start latency as box and violin plots, the placement's own
    /// time, and the gateway's requests per second against a node's (needs root)
    Cluster,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Which experiment to run
    #[arg(value_enum, default_value = "invoke")]
    pub experiment: Experiment,
    /// sandbox: processes created at once; lambda: concurrent requests; comma-separated
    #[arg(long, value_delimiter = ',', default_value = "1,10,40")]
    pub parallel: Vec<usize>,
    /// sandbox, lambda: rounds per parallelism level; snap: restores (and cold starts, forks)
    /// per workload
    #[arg(long, default_value_t = 50)]
    pub runs: usize,
    /// snap: dumps per workload
    #[arg(long, default_value_t = 5)]
    pub dumps: usize,
    /// sandbox: MiB of heap the benchmark writes and holds first, as a daemon holds its
    /// own (what a fork of it copies grows with it; a daemon measured 17 MiB resident
    /// after a cold boot, its image pool apart)
    #[arg(long, default_value_t = 16)]
    pub resident: usize,
    /// snap: threads filling pages in a restore (0: one per core, up to 4, for large images)
    #[arg(long, default_value_t = 0)]
    pub fill_threads: usize,
    /// snap: fill every page with process_vm_writev instead of UFFDIO_COPY
    #[arg(long)]
    pub no_uffd_fill: bool,
    /// snap: restore policies to measure, comma-separated (eager, lazy, bulk, prefetch, mapped)
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "eager,lazy,bulk,prefetch,mapped"
    )]
    pub policies: Vec<ember_snap::lazy::Policy>,
    /// snap: page sources for lazy and bulk, comma-separated (memory, file, remote)
    #[arg(long, value_delimiter = ',', default_value = "memory,file,remote")]
    pub sources: Vec<ember_bench::snap::SourceKind>,
    /// snap: instances restored side by side per policy and source for RSS/PSS
    #[arg(long, default_value_t = 10)]
    pub instances: usize,
    /// images: restore policies to compare, one daemon each (eager, lazy, bulk, prefetch)
    #[arg(long, value_delimiter = ',', default_value = "eager,bulk")]
    pub image_policies: Vec<ember_snap::lazy::Policy>,
    /// images: leave out the function-snapshot rung (its daemon, snapshot and samples)
    #[arg(long)]
    pub no_function_snapshots: bool,
    /// images: standby instances per image on the `image-standby` daemon (forked ahead from
    /// the image's template, or restored with the first policy with --no-templates; the
    /// `image-<policy>` and `image-template` daemons run with none), and parked sandboxes
    /// on the function-snapshot daemon; 0 leaves the `image-standby` daemon and its row
    /// out, and the function snapshots make their sandboxes on demand
    #[arg(long, default_value_t = 2)]
    pub standby: usize,
    /// images: leave out the `image-template` daemon (each start forked on its path from
    /// the image's template) and restore the standbys instead of forking them
    #[arg(long)]
    pub no_templates: bool,
    /// images: idle instances started at once on the first `image-<policy>` daemon (each
    /// restored) and on the `image-template` one (each forked), whose runtimes' PSS (the
    /// template's included) is compared with one instance's (0 skips it)
    #[arg(long, default_value_t = 10)]
    pub idle_instances: usize,
    /// images, snapshot-cache: seconds to wait for a function's snapshot to be taken after
    /// its first invocation before giving up
    #[arg(long, default_value_t = 120)]
    pub snapshot_wait: u64,
    /// snapshot-cache: functions (each its own size and init cost); trace: functions in the
    /// trace
    #[arg(long, default_value_t = 50)]
    pub functions: usize,
    /// trace: minutes of trace
    #[arg(long, default_value_t = 30)]
    pub minutes: usize,
    /// trace: how many times faster than the trace it is replayed (a trace minute lasts
    /// 60/compression seconds; the policies' windows shrink alike)
    #[arg(long, default_value_t = 60)]
    pub compression: u32,
    /// trace: the keep-alive settings compared, one daemon each: a policy (fixed: 10
    /// trace-minutes; histogram), idle instances stopped, or with +hibernate hibernated for
    /// a trace-hour
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "fixed,fixed+hibernate,histogram+hibernate"
    )]
    pub keep_alive_policies: Vec<String>,
    /// cluster: nodes per cluster
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// cluster: the placement policies compared, one cluster each
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "least-loaded,snapshot-aware"
    )]
    pub placements: Vec<String>,
    /// cluster: etcd's client URL [default: an etcd started for the run from /usr/bin/etcd]
    #[arg(long)]
    pub etcd: Option<String>,
    /// cluster: clients of the closed loops that measure requests per second
    #[arg(long, default_value_t = 16)]
    pub rps_clients: usize,
    /// cluster: seconds of closed loop per target, gateway and node (0 skips it)
    #[arg(long, default_value_t = 6.0)]
    pub rps_seconds: f64,
    /// cluster: rounds of the image pool's first starts (local image, from another node's
    /// memory, cold boot), each on a fresh node (0 skips it)
    #[arg(long, default_value_t = 5)]
    pub pool_rounds: usize,
    /// cluster: the workload (an example with packages) of the image pool's rounds
    #[arg(long, default_value = "numpy")]
    pub pool_workload: String,
    /// knix: the pool sizes N (instances kept ready, and requests in the burst)
    #[arg(long, value_delimiter = ',', default_value = "1,10,50,100")]
    pub pools: Vec<usize>,
    /// knix: where the N instances are kept, one daemon each: memory, hibernated, swap
    #[arg(long, value_delimiter = ',', default_value = "memory,hibernated,swap")]
    pub knix_modes: Vec<String>,
    /// snapshot-cache: measured requests per policy
    #[arg(long, default_value_t = 300)]
    pub requests: usize,
    /// snapshot-cache: requests per policy before the measured ones (the same mix; they fill
    /// the cache and are not counted)
    #[arg(long, default_value_t = 100)]
    pub warmup: usize,
    /// snapshot-cache: the Zipf exponent s of the mix (rank k drawn with weight 1/k^s)
    #[arg(long, default_value_t = 1.0)]
    pub zipf: f64,
    /// snapshot-cache: seed of the functions' sizes and init costs and of the mix
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// snapshot-cache: the disk budget, in percent of all the functions' snapshot bytes
    #[arg(long, default_value_t = 33)]
    pub budget_percent: u64,
    /// snapshot-cache: the largest function's data, MiB (sizes are log-uniform from 1)
    #[arg(long, default_value_t = 32)]
    pub max_mb: u32,
    /// snapshot-cache: the costliest function's init, ms (log-uniform from 10)
    #[arg(long, default_value_t = 300)]
    pub max_init_ms: u32,
    /// images: milliseconds to pause between stopping a function's instances and each
    /// measured start, so that the stopped instance's teardown does not overlap it
    #[arg(long, default_value_t = 0)]
    pub settle_ms: u64,
    /// images: functions sharing one image in the cache-cost comparison (0 skips it)
    #[arg(long, default_value_t = 10)]
    pub share: usize,
    /// invoke, lambda: drive this daemon instead of starting one in this process. Its
    /// functions are left alone: the bench deploys its own, named bench-<run>-<workload>, and
    /// deletes them when done
    #[arg(long, env = "EMBER_URL")]
    pub url: Option<String>,
    /// API token of the daemon at --url
    #[arg(long, env = "EMBER_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Workloads to run, comma-separated [default: all examples; snap: json,numpy,sklearn]
    #[arg(long, value_delimiter = ',')]
    pub workloads: Vec<String>,
    /// Cold starts per workload
    #[arg(long, default_value_t = 10)]
    pub cold: usize,
    /// Warm invocations per workload
    #[arg(long, default_value_t = 200)]
    pub warm: usize,
    /// Warm invocations in flight at once
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
    /// Bare `python -c 'import <packages>'` runs per workload (0 skips the baseline)
    #[arg(long, default_value_t = 10)]
    pub baseline: usize,
    /// Where to write the raw samples and summary as JSON, with the plot beside it as .svg
    /// [default: bench-results/bench-<time>.json]
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// lambda: sandboxes the embedded daemon makes ahead per native function (0: each
    /// request makes its own)
    #[arg(long, default_value_t = 2)]
    pub prestart: usize,
    /// lambda: the native helloworld executable [default: ember-hello beside this binary]
    #[arg(long)]
    pub hello: Option<PathBuf>,
    /// Embedded daemon: run instances without the sandbox (to measure what it costs)
    #[arg(long)]
    pub no_sandbox: bool,
    /// Package environments shared with other daemons, for the embedded daemon
    #[arg(long, env = "EMBER_ENVS_DIR", default_value = ".ember/envs")]
    pub envs_dir: PathBuf,
}

/// The daemon at `--url`, or one started in this process on a temporary home with `extra`
/// settings (returned with its home, to stop when done).
async fn target(
    args: &Args,
    prefix: &str,
    extra: DaemonArgs,
) -> anyhow::Result<(Client, Option<(daemon::Running, tempfile::TempDir)>)> {
    if let Some(u) = &args.url {
        return Ok((Client::new(u, args.token.clone()), None));
    }
    let home = tempfile::Builder::new().prefix(prefix).tempdir()?;
    // An hour unless the experiment sets its own (a field written here would win over
    // `..extra`).
    let keep_alive = extra.keep_alive.clone().or_else(|| Some("1h".into()));
    let settings = DaemonArgs {
        home: Some(home.path().to_path_buf()),
        listen: Some("127.0.0.1:0".into()),
        envs_dir: Some(std::path::absolute(&args.envs_dir)?),
        keep_alive,
        no_sandbox: args.no_sandbox,
        ..extra
    }
    .resolve()?;
    let r = daemon::start(settings).await?;
    Ok((Client::new(&r.url(), None), Some((r, home))))
}

/// The prefix of the function names a bench deploys: none on a daemon of its own, else
/// `bench-<8 random hex digits>-`, so that it never touches a function it did not deploy.
fn own_prefix(shared: bool) -> String {
    if !shared {
        return String::new();
    }
    let r = std::collections::hash_map::RandomState::new().hash_one(std::process::id());
    format!("bench-{:08x}-", r as u32)
}

/// On a shared daemon, refuses a name a function already has (never redeploys over it).
async fn claim(client: &Client, name: &str) -> anyhow::Result<()> {
    match client.get(name).await {
        Err(ember_api::client::ClientError::Api { status: 404, .. }) => Ok(()),
        Ok(_) => anyhow::bail!(
            "the daemon at {} already has a function {name}, which the bench leaves alone; run \
             it again (the next run draws another name)",
            client.base()
        ),
        Err(e) => Err(e).with_context(|| format!("checking that {name} is free")),
    }
}

/// Deletes the functions a bench deployed on a shared daemon.
async fn remove_own(client: &Client, names: &[String]) {
    for n in names {
        match client.delete(n).await {
            Ok(()) | Err(ember_api::client::ClientError::Api { status: 404, .. }) => {}
            Err(e) => eprintln!("could not delete {n} ({e:#}); remove it with `ember rm {n}`"),
        }
    }
}

/// Writes a run's JSON to `out` (default `bench-results/<kind>-<time>.json`), creating its
/// directory; returns it and the path of the plot beside it.
pub(super) fn save(
    out: Option<PathBuf>,
    kind: &str,
    started: u64,
    doc: &impl serde::Serialize,
) -> anyhow::Result<(PathBuf, PathBuf)> {
    let out = out.unwrap_or_else(|| PathBuf::from(format!("bench-results/{kind}-{started}.json")));
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&out, serde_json::to_vec_pretty(doc)?)?;
    let svg = out.with_extension("svg");
    Ok((out, svg))
}

/// Seconds since the epoch: names a run's result files.
pub(super) fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    match args.experiment {
        Experiment::Sandbox => return sandbox(args).await,
        Experiment::Snap => return snap(args).await,
        Experiment::Images => return images(args).await,
        Experiment::Lambda => return lambda(args).await,
        Experiment::SnapshotCache => return snapshot_cache(args).await,
        Experiment::Vhive => return vhive(args).await,
        Experiment::Trace => return trace(args).await,
        Experiment::Knix => return knix(args).await,
        Experiment::Cluster => return super::bench_cluster::run(args).await,
        Experiment::Invoke => {}
    }
    let started = now_unix();
    let opts = BenchOptions {
        cold: args.cold,
        warm: args.warm,
        concurrency: args.concurrency,
        baseline: args.baseline,
    };
    // Cold boots against the bare import: images and function snapshots are `bench images`'.
    let cold_only = DaemonArgs {
        images: Some("off".into()),
        snapshots: Some("off".into()),
        ..Default::default()
    };
    let (client, embedded) = target(&args, "ember-bench-", cold_only).await?;
    let shared = embedded.is_none();
    let prefix = own_prefix(shared);
    let selected: Vec<_> = workloads::select(&args.workloads)?
        .into_iter()
        .map(|w| {
            let f = format!("{prefix}{}", w.name);
            w.deployed_as(f)
        })
        .collect();
    eprintln!(
        "bench: {} workloads, {} cold + {} warm (concurrency {}) each, baseline {} runs, against {}",
        selected.len(),
        opts.cold,
        opts.warm,
        opts.concurrency,
        opts.baseline,
        client.base()
    );
    let mut deployed = Vec::new();
    let measured = async {
        let mut samples = Vec::new();
        for w in &selected {
            if shared {
                claim(&client, &w.function).await?;
                deployed.push(w.function.clone());
            }
            driver::deploy(&client, w, &|l| eprintln!("{l}")).await?;
            eprintln!("measuring {} (function {})", w.name, w.function);
            samples.extend(driver::measure(&client, w, &opts).await?);
        }
        anyhow::Ok(samples)
    }
    .await;
    remove_own(&client, &deployed).await;
    let samples = measured?;
    let report = Report::new(client.base(), opts, samples, started);
    print!("{}", report.table());
    let out = args
        .out
        .unwrap_or_else(|| PathBuf::from(format!("bench-results/bench-{started}.json")));
    report.write_json(&out)?;
    let svg = out.with_extension("svg");
    ember_bench::plot::write_svg(&report, &svg)?;
    eprintln!("raw samples: {}\nplot: {}", out.display(), svg.display());
    if let Some((r, _home)) = embedded {
        r.stop().await?;
    }
    Ok(())
}

async fn lambda(args: Args) -> anyhow::Result<()> {
    use ember_bench::lambda as lb;
    let started = now_unix();
    let hello = match &args.hello {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("ember-hello"),
    };
    let (client, embedded) = target(
        &args,
        "ember-bench-lambda-",
        DaemonArgs {
            images: Some("off".into()),
            prestart: Some(args.prestart),
            ..Default::default()
        },
    )
    .await?;
    let shared = embedded.is_none();
    let prefix = own_prefix(shared);
    let names: Vec<String> = lb::FUNCTIONS
        .iter()
        .map(|f| format!("{prefix}{f}"))
        .collect();
    if shared {
        for n in &names {
            claim(&client, n).await?;
        }
    }
    eprintln!(
        "bench lambda: {} rounds of each series at {:?} concurrent requests, {} against {}",
        args.runs,
        args.parallel,
        hello.display(),
        client.base()
    );
    let measured = async {
        lb::deploy(&client, &hello, &prefix).await?;
        lb::run(&client, &prefix, &args.parallel, args.runs).await
    }
    .await;
    if shared {
        remove_own(&client, &names).await;
    }
    let samples = measured?;
    let rows = lb::rows(&samples);
    print!("{}", lb::table(&rows));
    let (out, svg) = save(
        args.out,
        "lambda",
        started,
        &serde_json::json!({ "rows": rows, "samples": samples }),
    )?;
    lb::write_svg(&rows, &svg)?;
    eprintln!("results: {}\nplot: {}", out.display(), svg.display());
    if let Some((r, _home)) = embedded {
        r.stop().await?;
    }
    Ok(())
}

async fn sandbox(args: Args) -> anyhow::Result<()> {
    let started = now_unix();
    let home = tempfile::Builder::new()
        .prefix("ember-bench-sandbox-")
        .tempdir()?;
    let (program, pargs) = (
        std::path::Path::new("/usr/bin/python3"),
        ["-I", "-c", "pass"],
    );
    eprintln!(
        "bench sandbox: {} rounds at parallelism {:?}, sandboxed and plain, starting {} {}; \
         parked (stopped for a restore) by a fork and by the stopper; {} MiB resident",
        args.runs,
        args.parallel,
        program.display(),
        pargs.join(" "),
        args.resident
    );
    let rows = ember_bench::sandbox::run(
        home.path(),
        program,
        &pargs,
        &args.parallel,
        args.runs,
        args.resident,
    )
    .await?;
    print!("{}", ember_bench::sandbox::table(&rows));
    let (out, _) = save(args.out, "sandbox", started, &rows)?;
    eprintln!("results: {}", out.display());
    Ok(())
}

async fn images(args: Args) -> anyhow::Result<()> {
    use ember_bench::images as ib;
    let started = now_unix();
    if args
        .image_policies
        .contains(&ember_snap::lazy::Policy::Mapped)
    {
        anyhow::bail!("the mapped policy cannot restore into a sandbox; leave it out");
    }
    let selected = workloads::select(&args.workloads)?;
    let envs = std::path::absolute(&args.envs_dir)?;
    let mut homes = Vec::new();
    let mut daemons = Vec::new();
    let mut start = |policy: Option<ember_snap::lazy::Policy>,
                     snapshots: &str,
                     standby: usize,
                     templates: bool|
     -> anyhow::Result<DaemonArgs> {
        let home = tempfile::Builder::new()
            .prefix("ember-bench-images-")
            .tempdir()?;
        let a = DaemonArgs {
            home: Some(home.path().to_path_buf()),
            listen: Some("127.0.0.1:0".into()),
            envs_dir: Some(envs.clone()),
            keep_alive: Some("1h".into()),
            images: Some("off".into()),
            image_policy: policy.map(|p| p.to_string()),
            snapshots: Some(snapshots.into()),
            standby: Some(standby),
            no_templates: !templates,
            // Each daemon measures its own rung, whatever another would measure.
            fixed_ladder: true,
            ..Default::default()
        };
        homes.push(home);
        Ok(a)
    };
    let cold = daemon::start(start(None, "off", 0, false)?.resolve()?).await?;
    let mut ladder = ib::Ladder {
        cold: Client::new(&cold.url(), None),
        images: Vec::new(),
        snapshot: None,
        snapshot_standby: args.standby > 0,
        snapshot_standby_kind: if args.no_templates {
            "sandbox"
        } else {
            "snapshot"
        },
        snapshot_wait: std::time::Duration::from_secs(args.snapshot_wait),
        settle: std::time::Duration::from_millis(args.settle_ms),
    };
    // Restores only (no standby, no template): each policy's own cost.
    for p in &args.image_policies {
        let a = start(Some(*p), "off", 0, false)?;
        let home = a.home.clone().unwrap_or_default();
        let d = daemon::start(a.resolve()?).await?;
        ladder.images.push(ib::ImageDaemon {
            home,
            label: format!("image-{p}"),
            client: Client::new(&d.url(), None),
            standby: false,
            template: false,
        });
        daemons.push(d);
    }
    let first = args.image_policies.first().copied();
    if !args.no_templates {
        // Every start forked on its path from the image's template (no standby).
        let a = start(first, "off", 0, true)?;
        let home = a.home.clone().unwrap_or_default();
        let d = daemon::start(a.resolve()?).await?;
        ladder.images.push(ib::ImageDaemon {
            home,
            label: "image-template".into(),
            client: Client::new(&d.url(), None),
            standby: false,
            template: true,
        });
        daemons.push(d);
    }
    if args.standby > 0 {
        // Standby instances, forked from the image's template unless --no-templates
        // (then restored with the first policy measured).
        let a = start(first, "off", args.standby, !args.no_templates)?;
        let home = a.home.clone().unwrap_or_default();
        let d = daemon::start(a.resolve()?).await?;
        ladder.images.push(ib::ImageDaemon {
            home,
            label: "image-standby".into(),
            client: Client::new(&d.url(), None),
            standby: true,
            template: false,
        });
        daemons.push(d);
    }
    if !args.no_function_snapshots {
        // Restores its layers' parent images with the first policy measured.
        // With parked sandboxes (--standby) as a node has by default.
        let d = daemon::start(start(first, "local", args.standby, !args.no_templates)?.resolve()?)
            .await?;
        ladder.snapshot = Some(Client::new(&d.url(), None));
        daemons.push(d);
    }
    eprintln!(
        "bench images: {} workloads, {} cold starts per path (interleaved), {} warm; policies \
         {:?}; function snapshots {}",
        selected.len(),
        args.cold,
        args.warm,
        args.image_policies,
        if ladder.snapshot.is_some() {
            "on"
        } else {
            "off"
        }
    );
    let mut rows = Vec::new();
    let mut layers = Vec::new();
    let mut costs = Vec::new();
    let mut memory = Vec::new();
    let work = tempfile::Builder::new()
        .prefix("ember-bench-cache-")
        .tempdir()?;
    for w in &selected {
        eprintln!("measuring {}", w.name);
        let (r, layer) =
            ib::ladder(&ladder, w, args.cold, args.warm, &|l| eprintln!("{l}")).await?;
        rows.extend(r);
        layers.extend(layer);
        if args.idle_instances > 0 {
            // Restored each (the first policy's daemon), and forked from the template.
            let restored = ladder.images.iter().find(|d| !d.standby);
            let forked = ladder.images.iter().find(|d| d.label == "image-template");
            for d in restored.into_iter().chain(forked) {
                memory.push(ib::idle_memory(d, w, args.idle_instances).await?);
            }
        }
        let has_packages = w.manifest.packages.as_ref().is_some_and(|p| !p.is_empty());
        if args.share > 0 && has_packages {
            let Some(ib::ImageDaemon { client: c, .. }) = ladder.images.first() else {
                continue;
            };
            let listed = c.images().await?;
            // The image built for this workload's own environment.
            let info = c.get(&w.function).await?;
            let Some(img) = listed["images"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|i| i["installed"] == info["installed"])
                .cloned()
            else {
                continue;
            };
            let python = PathBuf::from(info["python"].as_str().unwrap_or("/usr/bin/python3"));
            let imports: Vec<String> = img["imports"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(String::from))
                .collect();
            let shared = img["bytes"].as_u64().unwrap_or(0);
            eprintln!(
                "cache cost of {}: {} functions dumped warm",
                w.name, args.share
            );
            costs
                .push(ib::cache_cost(w, &python, &imports, shared, args.share, work.path()).await?);
        }
    }
    print!("{}", ib::table(&rows));
    if !layers.is_empty() {
        print!("{}", ib::layer_table(&layers));
    }
    if !costs.is_empty() {
        print!("{}", ib::cache_table(&costs));
    }
    if !memory.is_empty() {
        print!("{}", ib::memory_table(&memory));
    }
    let (out, svg) = save(
        args.out,
        "images",
        started,
        &serde_json::json!({
            "rows": rows,
            "ratios": ib::ratios(&rows),
            "layers": layers,
            "cache_cost": costs,
            "idle_memory": memory,
        }),
    )?;
    let labels: Vec<String> = ladder.images.iter().map(|d| d.label.clone()).collect();
    ib::write_svg(&rows, &labels, &svg)?;
    eprintln!("results: {}\nplot: {}", out.display(), svg.display());
    for d in daemons {
        d.stop().await?;
    }
    cold.stop().await?;
    Ok(())
}

async fn vhive(args: Args) -> anyhow::Result<()> {
    use ember_bench::vhive as vh;
    let started = now_unix();
    let Some(mut store) = ember_store::S3Config::from_env()? else {
        anyhow::bail!(
            "bench vhive needs an S3-compatible store: set EMBER_S3_ENDPOINT, EMBER_S3_BUCKET, \
             AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (scripts/garage starts one on loopback \
             and prints them as EMBER_TEST_S3_*; docs/bench.md)"
        );
    };
    // The run's own prefix: nothing of an earlier run is reused.
    store.prefix = match store.prefix.trim_end_matches('/') {
        "" => format!("bench-vhive-{started}"),
        base => format!("{base}/bench-vhive-{started}"),
    };
    let mut selected = workloads::select(&args.workloads)?;
    if args.workloads.is_empty() {
        selected.retain(|w| ["helloworld", "numpy"].contains(&w.name.as_str()));
    }
    let envs = std::path::absolute(&args.envs_dir)?;
    let mut homes = Vec::new();
    let mut start =
        |snapshots: &str, images: &str, lazy: bool| -> anyhow::Result<crate::settings::Settings> {
            let home = tempfile::Builder::new()
                .prefix("ember-bench-vhive-")
                .tempdir()?;
            let a = DaemonArgs {
                home: Some(home.path().to_path_buf()),
                listen: Some("127.0.0.1:0".into()),
                envs_dir: Some(envs.clone()),
                keep_alive: Some("1h".into()),
                images: Some(images.into()),
                snapshots: Some(snapshots.into()),
                // Restores, not forks from a template: what differs is where the snapshot is.
                no_templates: true,
                fixed_ladder: true,
                no_lazy_remote: !lazy,
                ..Default::default()
            };
            homes.push(home);
            let mut s = a.resolve()?;
            if snapshots == "remote" {
                s.node.store = Some(store.clone());
            }
            Ok(s)
        };
    let baseline = daemon::start(start("off", "off", true)?).await?;
    let local = daemon::start(start("remote", "on-deploy", true)?).await?;
    let remote = daemon::start(start("remote", "on-deploy", true)?).await?;
    let whole = daemon::start(start("remote", "on-deploy", false)?).await?;
    let cached = daemon::start(start("remote", "on-deploy", true)?).await?;
    let d = vh::Daemons {
        baseline: Client::new(&baseline.url(), None),
        local: Client::new(&local.url(), None),
        remote: Client::new(&remote.url(), None),
        whole: Client::new(&whole.url(), None),
        cached: Client::new(&cached.url(), None),
    };
    eprintln!(
        "bench vhive: {} workloads, {} rounds of {:?} interleaved; store {} prefix {}",
        selected.len(),
        args.runs,
        vh::MODES,
        store.endpoint,
        store.prefix
    );
    let wait = std::time::Duration::from_secs(args.snapshot_wait);
    let run = async {
        let mut rows = Vec::new();
        let mut all = Vec::new();
        for w in &selected {
            eprintln!("preparing {}", w.name);
            vh::prepare(&d, w, wait, &|l| eprintln!("{l}")).await?;
            eprintln!("measuring {}", w.name);
            let samples = vh::measure(&d, w, args.runs, &|l| eprintln!("{l}")).await?;
            rows.extend(vh::rows(&w.name, &samples));
            all.extend(
                samples
                    .into_iter()
                    .map(|(m, s)| serde_json::json!({"mode": m, "sample": s})),
            );
        }
        anyhow::Ok((rows, all))
    }
    .await;
    for r in [baseline, local, remote, whole, cached] {
        r.stop().await?;
    }
    drop(homes);
    let (rows, samples) = run?;
    print!("{}", vh::table(&rows));
    let (out, svg) = save(
        args.out,
        "vhive",
        started,
        &serde_json::json!({
            "rows": rows,
            "ratios": vh::ratios(&rows),
            "samples": samples,
        }),
    )?;
    vh::write_svg(&rows, &svg)?;
    eprintln!("results: {}\nplot: {}", out.display(), svg.display());
    Ok(())
}

/// An embedded daemon for the snapshot-cache experiment: images off (its functions have no
/// packages: their snapshots are whole), snapshots on with `budget_mb` and `eviction`.
async fn cache_daemon(
    args: &Args,
    budget_mb: Option<u64>,
    eviction: &str,
) -> anyhow::Result<(daemon::Running, tempfile::TempDir, Client)> {
    let home = tempfile::Builder::new()
        .prefix("ember-bench-snapcache-")
        .tempdir()?;
    let settings = DaemonArgs {
        home: Some(home.path().to_path_buf()),
        listen: Some("127.0.0.1:0".into()),
        envs_dir: Some(std::path::absolute(&args.envs_dir)?),
        keep_alive: Some("1h".into()),
        images: Some("off".into()),
        snapshots: Some("local".into()),
        snapshot_disk_mb: budget_mb,
        snapshot_eviction: Some(eviction.into()),
        no_sandbox: args.no_sandbox,
        // A hit is a start from the cache, whatever a cold boot would have cost.
        fixed_ladder: true,
        ..Default::default()
    }
    .resolve()?;
    let r = daemon::start(settings).await?;
    let c = Client::new(&r.url(), None);
    Ok((r, home, c))
}

async fn snapshot_cache(args: Args) -> anyhow::Result<()> {
    use ember_bench::snapshot_cache as sc;
    let started = now_unix();
    anyhow::ensure!(args.functions > 0, "--functions must be at least 1");
    anyhow::ensure!(
        (1..=100).contains(&args.budget_percent),
        "--budget-percent must be 1..=100"
    );
    let fns = sc::functions(args.functions, args.max_mb, args.max_init_ms, args.seed, "");
    let ws = fns
        .iter()
        .map(|f| sc::workload(f, args.seed))
        .collect::<Result<Vec<_>, _>>()?;
    let wait = std::time::Duration::from_secs(args.snapshot_wait);
    eprintln!(
        "bench snapshot-cache: {} functions (1..{} MiB, 10..{} ms init), Zipf s={} over {} + {} \
         warm-up requests per policy, seed {}, budget {}% of their snapshots",
        args.functions,
        args.max_mb,
        args.max_init_ms,
        args.zipf,
        args.requests,
        args.warmup,
        args.seed,
        args.budget_percent
    );
    // Their snapshot sizes, with an ample budget (the default, 4 GiB, or all of them).
    let (d, home, c) = cache_daemon(&args, None, "lru").await?;
    let sizes = async {
        sc::deploy_all(&c, &ws).await?;
        sc::snapshot_sizes(&c, &ws, wait, &|l| eprintln!("{l}")).await
    }
    .await;
    d.stop().await?;
    drop(home);
    let sizes = sizes?;
    let total: u64 = sizes.iter().sum();
    let budget_mb = ((total * args.budget_percent / 100) >> 20).max(1);
    eprintln!(
        "snapshots: {:.1} MiB in all; budget {budget_mb} MiB",
        total as f64 / 1048576.0
    );
    let sequence = sc::zipf_sequence(ws.len(), args.warmup + args.requests, args.zipf, args.seed);
    let (warm_up, measured) = sequence.split_at(args.warmup.min(sequence.len()));
    let policies = ["lru", "gdsf"];
    let mut daemons = Vec::new();
    let mut clients = Vec::new();
    for policy in policies {
        let (d, home, c) = cache_daemon(&args, Some(budget_mb), policy).await?;
        daemons.push((d, home));
        clients.push(c);
    }
    let run = async {
        for c in &clients {
            sc::deploy_all(c, &ws).await?;
        }
        eprintln!("{} warm-up requests on each daemon", warm_up.len());
        sc::run_interleaved(&clients, &ws, warm_up, "warm-up").await?;
        let mut before = Vec::new();
        for c in &clients {
            before.push(sc::CacheCounters::parse(
                &sc::scrape_metrics(c.base()).await?,
            ));
        }
        eprintln!("{} measured requests on each daemon", measured.len());
        let t0 = std::time::Instant::now();
        let samples = sc::run_interleaved(&clients, &ws, measured, "zipf").await?;
        let mut counters = Vec::new();
        for (c, b) in clients.iter().zip(&before) {
            counters.push(sc::CacheCounters::parse(&sc::scrape_metrics(c.base()).await?).since(b));
        }
        eprintln!("measured in {:.1} s", t0.elapsed().as_secs_f64());
        anyhow::Ok((samples, counters))
    }
    .await;
    for (d, home) in daemons {
        d.stop().await?;
        drop(home);
    }
    let (samples, counters) = run?;
    let results: Vec<_> = policies
        .iter()
        .zip(&samples)
        .zip(&counters)
        .map(|((p, s), c)| sc::result(p, budget_mb << 20, s, *c, &fns))
        .collect();
    let all_samples: Vec<_> = policies
        .iter()
        .zip(&samples)
        .map(|(p, s)| serde_json::json!({ "policy": p, "samples": s }))
        .collect();
    print!("{}", sc::table(&results, &sizes));
    let (out, _) = save(
        args.out,
        "snapshot-cache",
        started,
        &serde_json::json!({
            "functions": fns,
            "snapshot_bytes": sizes,
            "budget_bytes": budget_mb << 20,
            "zipf_s": args.zipf,
            "seed": args.seed,
            "warmup": args.warmup,
            "sequence": sequence,
            "results": results,
            "samples": all_samples,
        }),
    )?;
    eprintln!("results: {}", out.display());
    Ok(())
}

async fn snap(args: Args) -> anyhow::Result<()> {
    use ember_bench::snap;
    let started = now_unix();
    let names: Vec<&str> = if args.workloads.is_empty() {
        snap::WORKLOADS.iter().map(|w| w.0).collect()
    } else {
        args.workloads.iter().map(String::as_str).collect()
    };
    let envs = ember_node::envs::EnvManager::open(
        std::path::absolute(&args.envs_dir)?,
        PathBuf::from("/usr/bin/python3"),
    )
    .await?;
    let work = tempfile::Builder::new()
        .prefix("ember-bench-snap-")
        .tempdir()?;
    eprintln!(
        "bench snap: {} restores, cold starts and forks per workload (interleaved), {} dumps",
        args.runs, args.dumps
    );
    let mut results = Vec::new();
    for name in names {
        let Some((_, packages)) = snap::WORKLOADS.iter().find(|w| w.0 == name) else {
            anyhow::bail!(
                "unknown snap workload {name:?}; choose from {:?}",
                snap::WORKLOADS.map(|w| w.0)
            );
        };
        let packages: Vec<String> = packages.iter().map(|p| p.to_string()).collect();
        let env = envs.ensure(&packages, &|l| eprintln!("{l}")).await?;
        eprintln!("measuring {name}");
        let (python, dir) = (env.python(), work.path().to_path_buf());
        let opts = snap::SnapOptions {
            runs: args.runs,
            dumps: args.dumps,
            policies: args.policies.clone(),
            sources: args.sources.clone(),
            instances: args.instances,
            restore: ember_snap::RestoreOptions {
                fill_threads: args.fill_threads,
                uffd_fill: !args.no_uffd_fill,
                ..Default::default()
            },
        };
        let name = name.to_string();
        let r = tokio::task::spawn_blocking(move || snap::measure(&name, &python, &dir, &opts))
            .await??;
        results.push(r);
    }
    print!("{}", snap::table(&results));
    let (out, svg) = save(args.out, "snap", started, &results)?;
    snap::write_svg(&results, &svg)?;
    eprintln!("results: {}\nplot: {}", out.display(), svg.display());
    Ok(())
}

/// `ember bench trace`: one daemon per keep-alive policy, the same trace replayed against
/// each (its functions deployed anew), then a table and a latency plot per shape.
async fn trace(args: Args) -> anyhow::Result<()> {
    use ember_bench::trace as tr;
    use std::time::{Duration, Instant};
    anyhow::ensure!(
        args.url.is_none(),
        "bench trace starts a daemon per keep-alive policy; it does not take --url"
    );
    anyhow::ensure!(
        args.functions > 0 && args.minutes > 0 && args.compression > 0,
        "--functions, --minutes and --compression must be at least 1"
    );
    anyhow::ensure!(
        args.compression <= 600,
        "--compression above 600 makes a trace minute shorter than the histogram policy's \
         smallest bin (100 ms)"
    );
    let settings = args
        .keep_alive_policies
        .iter()
        .map(|p| tr::Setting::parse(p))
        .collect::<Result<Vec<_>, _>>()
        .map_err(anyhow::Error::msg)?;
    let started = now_unix();
    let minute = Duration::from_secs(60) / args.compression;
    let fns = tr::generate(args.functions, args.minutes, args.seed);
    let arrivals = tr::arrivals(&fns, minute, args.seed);
    eprintln!(
        "bench trace: {} functions, {} minutes, {} invocations, replayed {}x faster ({} s each), \
         policies {}, seed {}",
        fns.len(),
        args.minutes,
        arrivals.len(),
        args.compression,
        (minute * args.minutes as u32).as_secs(),
        args.keep_alive_policies.join(","),
        args.seed
    );
    let zip = tr::handler_zip().context("building the trace functions' zip")?;
    let mut results = Vec::new();
    for (policy, setting) in args.keep_alive_policies.iter().zip(&settings) {
        let extra = DaemonArgs {
            // The fixed policy's 10 minutes, and the histogram's minute bins, in replay time.
            keep_alive: Some(format!("{}ms", (minute * 10).as_millis())),
            keep_alive_policy: Some(setting.policy.clone()),
            keep_alive_bin: Some(format!("{}ms", minute.as_millis())),
            // A trace-hour hibernated, or stopped at once.
            hibernate: Some(match setting.hibernate {
                true => format!("{}ms", (minute * 60).as_millis()),
                false => "off".into(),
            }),
            ..Default::default()
        };
        let (client, embedded) = target(&args, "ember-bench-trace-", extra).await?;
        let names: Vec<String> = (0..fns.len()).map(|i| format!("t{i:03}")).collect();
        for n in &names {
            let body = serde_json::json!({"handler": "main.handler", "memory_mb": 128,
                "code_zip": zip});
            client
                .deploy(n, &body, &mut |_| {})
                .await
                .with_context(|| format!("deploying {n}"))?;
        }
        // The window every function starts with: the fixed keep-alive (the histogram's
        // fallback until it has idle times).
        let keep_alive_s = client.get(&names[0]).await?["keep_alive"]["keep_alive"]
            .as_f64()
            .unwrap_or(0.0);
        let client = std::sync::Arc::new(client);
        // Idle instances' memory and hibernated ones' disk, sampled while the trace plays;
        // failed samples counted.
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let sampler = {
            let (client, done) = (client.clone(), done.clone());
            tokio::spawn(async move {
                let (mut gb_s, mut disk_gb_s, mut failed) = (0.0, 0.0, 0usize);
                let mut last = Instant::now();
                while !done.load(std::sync::atomic::Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    let Ok(list) = client.list().await else {
                        failed += 1;
                        continue;
                    };
                    let idle_mb: f64 = list
                        .iter()
                        .map(|f| {
                            f["instances_idle"].as_f64().unwrap_or(0.0)
                                * f["memory_mb"].as_f64().unwrap_or(0.0)
                        })
                        .sum();
                    let disk_gb = list
                        .iter()
                        .map(|f| f["hibernated_bytes"].as_f64().unwrap_or(0.0))
                        .sum::<f64>()
                        / 1e9;
                    let dt = last.elapsed().as_secs_f64();
                    gb_s += idle_mb / 1024.0 * dt;
                    disk_gb_s += disk_gb * dt;
                    last = Instant::now();
                }
                (gb_s, disk_gb_s, failed)
            })
        };
        let t0 = tokio::time::Instant::now();
        let mut set = tokio::task::JoinSet::new();
        for (at, f) in &arrivals {
            let (client, name, shape, at, f) =
                (client.clone(), names[*f].clone(), fns[*f].shape, *at, *f);
            set.spawn(async move {
                tokio::time::sleep_until(t0 + at).await;
                let t = Instant::now();
                let r = client.invoke(&name, b"{}".to_vec()).await;
                let latency_ms = t.elapsed().as_secs_f64() * 1e3;
                let start = match r {
                    Ok(r) if r.status == 200 => r.start,
                    _ => "error".to_string(),
                };
                tr::Call {
                    function: f,
                    shape,
                    start,
                    latency_ms,
                }
            });
        }
        let mut calls = Vec::new();
        while let Some(c) = set.join_next().await {
            calls.push(c?);
        }
        let replay_s = t0.elapsed().as_secs_f64();
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        let (idle_gb_s, disk_gb_s, sample_failures) = sampler.await?;
        if sample_failures > 0 {
            eprintln!(
                "{policy}: {sample_failures} idle-memory samples failed (their intervals are \
                 counted in the next one)"
            );
        }
        calls.sort_by_key(|c| c.function);
        results.push(tr::PolicyResult {
            policy: policy.clone(),
            calls,
            idle_gb_s,
            disk_gb_s,
            replay_s,
            keep_alive_s,
        });
        if let Some((running, _home)) = embedded {
            running.stop().await?;
        }
    }
    println!(
        "{:<20} {:>6} {:>7} {:>11} {:>9} {:>7} {:>10} {:>9} {:>9} {:>10} {:>10}",
        "policy",
        "calls",
        "warm%",
        "hibernated%",
        "snapshot%",
        "image%",
        "cold-boot%",
        "p50 ms",
        "p99 ms",
        "idle GB-s",
        "disk GB-s"
    );
    for r in &results {
        let l = r.latency();
        println!(
            "{:<20} {:>6} {:>7.1} {:>11.1} {:>9.1} {:>7.1} {:>10.1} {:>9.1} {:>9.1} {:>10.2} {:>10.3}",
            r.policy,
            r.calls.len(),
            r.share("warm"),
            r.share("hibernated"),
            r.share("function-snapshot"),
            r.share("image"),
            r.share("cold-boot"),
            l.p50_ms,
            l.p99_ms,
            r.idle_gb_s,
            r.disk_gb_s
        );
    }
    let errors: usize = results
        .iter()
        .map(|r| r.calls.iter().filter(|c| c.start == "error").count())
        .sum();
    if errors > 0 {
        eprintln!("{errors} invocations failed (counted as `error`, their latency included)");
    }
    // Per shape and policy: latency, for the plot.
    let mut rows = Vec::new();
    for r in &results {
        for shape in [tr::Shape::Periodic, tr::Shape::Bursty, tr::Shape::Rare] {
            let ms: Vec<f64> = r
                .calls
                .iter()
                .filter(|c| c.shape == shape)
                .map(|c| c.latency_ms)
                .collect();
            if !ms.is_empty() {
                rows.push(ember_bench::report::Row {
                    workload: shape.as_str().to_string(),
                    path: r.policy.clone(),
                    summary: ember_bench::stats::summarize(&ms),
                });
            }
        }
    }
    let doc = serde_json::json!({
        "started_unix": started,
        "functions": args.functions,
        "minutes": args.minutes,
        "compression": args.compression,
        "seed": args.seed,
        "trace": fns,
        "results": results,
        "rows": rows,
    });
    let (json, svg) = save(args.out.clone(), "trace", started, &doc)?;
    tr::write_svg(&rows, &args.keep_alive_policies, &svg)?;
    eprintln!("wrote {} and {}", json.display(), svg.display());
    Ok(())
}

/// `ember bench knix`: per mode a daemon of its own, per pool size N the function deployed
/// anew with `min_instances` N; once the N are ready (warm, hibernated, or warm and pushed
/// to swap), what they hold is read and a burst of N requests is timed.
async fn knix(args: Args) -> anyhow::Result<()> {
    use ember_bench::knix::{self as kx, Mode};
    use std::time::{Duration, Instant};
    anyhow::ensure!(
        args.url.is_none(),
        "bench knix starts a daemon per mode; it does not take --url"
    );
    anyhow::ensure!(
        !args.pools.is_empty() && args.pools.iter().all(|&n| (1..=1000).contains(&n)),
        "--pools takes sizes from 1 to 1000"
    );
    let modes = args
        .knix_modes
        .iter()
        .map(|m| Mode::parse(m))
        .collect::<Result<Vec<_>, _>>()
        .map_err(anyhow::Error::msg)?;
    let started = now_unix();
    let name = args.workloads.first().map_or("numpy", String::as_str);
    let w = workloads::load(name)?.deployed_as("knix".into());
    let mut samples = Vec::new();
    let mut skipped = Vec::new();
    for mode in modes {
        if mode == Mode::Swap
            && let Some(why) = kx::swap_unavailable()
        {
            eprintln!("knix: swap mode skipped: {why}");
            skipped.push(serde_json::json!({"mode": "swap", "why": why}));
            continue;
        }
        let hibernated = mode == Mode::Hibernated;
        let extra = DaemonArgs {
            // Hibernated a second after they are made; else kept in memory.
            keep_alive: Some(if hibernated { "1s" } else { "1h" }.into()),
            hibernate: Some(if hibernated { "1h" } else { "off" }.into()),
            // Only the instances kept ready hold memory: none made ahead besides.
            standby: Some(0),
            ..Default::default()
        };
        let (client, embedded) = target(&args, "ember-bench-knix-", extra).await?;
        // Its image first, so that every instance comes from it.
        driver::deploy(&client, &w, &|l| eprintln!("{l}")).await?;
        let first = client.invoke("knix", b"{}".to_vec()).await?;
        anyhow::ensure!(
            first.status == 200,
            "the first invocation failed: {:?}",
            first.error
        );
        let t0 = Instant::now();
        while client.images().await?["images"].as_array().is_none_or(|a| {
            !a.iter()
                .any(|i| i["healthy"] == true && i["functions"].as_u64() >= Some(1))
        }) {
            anyhow::ensure!(
                t0.elapsed() < Duration::from_secs(args.snapshot_wait),
                "no image was built for {name} within {} s",
                args.snapshot_wait
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        for &n in &args.pools {
            let mut manifest = w.manifest.clone();
            manifest.max_instances = Some(manifest.max_instances.unwrap_or(10).max(n as u32));
            let mut body = manifest.deploy_body(&w.zip)?;
            body["min_instances"] = n.into();
            client.deploy("knix", &body, &mut |_| {}).await?;
            let t0 = Instant::now();
            let limit = Duration::from_secs(120 + 3 * n as u64);
            let ready = loop {
                let v = client.instances(Some("knix")).await?;
                let states: Vec<&str> = v["instances"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|i| i["state"].as_str()).collect())
                    .unwrap_or_default();
                let count = |s: &str| states.iter().filter(|x| **x == s).count();
                let done = match hibernated {
                    true => count("hibernated") >= n && states.len() == count("hibernated"),
                    false => count("warm") >= n,
                };
                if done {
                    break v;
                }
                anyhow::ensure!(
                    t0.elapsed() < limit,
                    "{} of {n} instances ready after {} s: {states:?}",
                    if hibernated {
                        count("hibernated")
                    } else {
                        count("warm")
                    },
                    limit.as_secs()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            let ready_s = t0.elapsed().as_secs_f64();
            let pids: Vec<u32> = ready["instances"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|i| i["pid"].as_u64())
                        .map(|p| p as u32)
                        .collect()
                })
                .unwrap_or_default();
            let rss: u64 = pids
                .iter()
                .filter_map(|&p| ember_bench::stats::rss_pss_kib(p as i32))
                .map(|(r, _)| r << 10)
                .sum();
            let swap_file = match mode {
                Mode::Swap => {
                    let path =
                        std::env::temp_dir().join(format!("ember-bench-knix-{started}.swap"));
                    let f =
                        kx::SwapFile::enable(&path, rss + rss / 2).map_err(anyhow::Error::msg)?;
                    for &p in &pids {
                        kx::page_out(p).map_err(anyhow::Error::msg)?;
                    }
                    Some(f)
                }
                _ => None,
            };
            let (mut pss_bytes, mut rss_bytes, mut swap_bytes) = (0, 0, 0);
            for &p in &pids {
                if let Some((r, pss)) = ember_bench::stats::rss_pss_kib(p as i32) {
                    pss_bytes += pss << 10;
                    rss_bytes += r << 10;
                }
                swap_bytes += kx::swapped_bytes(p);
            }
            let disk_bytes = client.instances(Some("knix")).await?["hibernated_bytes"]
                .as_u64()
                .unwrap_or(0);
            let daemon_rss_bytes = ember_bench::stats::rss_pss_kib(std::process::id() as i32)
                .map_or(0, |(r, _)| r << 10);
            // The burst: N at once.
            let client2 = std::sync::Arc::new(client.clone());
            let mut set = tokio::task::JoinSet::new();
            for _ in 0..n {
                let c = client2.clone();
                set.spawn(async move {
                    let t = Instant::now();
                    let r = c.invoke("knix", b"{}".to_vec()).await;
                    (t.elapsed().as_secs_f64() * 1e3, r)
                });
            }
            let (mut ms, mut starts, mut errors) =
                (Vec::new(), std::collections::BTreeMap::new(), 0);
            while let Some(j) = set.join_next().await {
                let (t, r) = j?;
                ms.push(t);
                match r {
                    Ok(r) if r.status == 200 => *starts.entry(r.start).or_insert(0) += 1,
                    _ => errors += 1,
                }
            }
            drop(swap_file);
            let s = kx::Sample {
                mode,
                n,
                ready_s,
                pss_bytes,
                rss_bytes,
                swap_bytes,
                disk_bytes,
                daemon_rss_bytes,
                burst: ember_bench::stats::summarize(&ms),
                starts,
                errors,
            };
            eprint!("{}", kx::table(std::slice::from_ref(&s)));
            samples.push(s);
        }
        if let Some((running, _home)) = embedded {
            running.stop().await?;
        }
    }
    print!("{}", kx::table(&samples));
    let doc = serde_json::json!({
        "started_unix": started,
        "workload": name,
        "pools": args.pools,
        "skipped": skipped,
        "samples": samples,
    });
    let (json, svg) = save(args.out.clone(), "knix", started, &doc)?;
    let mem = kx::write_svgs(&samples, &svg)?;
    eprintln!(
        "wrote {}, {} and {}",
        json.display(),
        svg.display(),
        mem.display()
    );
    Ok(())
}
