//! `ember bench cluster`: per placement policy (`--placements`), a cluster of `--nodes` nodes
//! (`ember serve --cluster` processes on loopback, each its own home) and a gateway
//! (`ember gateway`) on one etcd (`--etcd`, or one started for the run from /usr/bin/etcd)
//! and the S3 store (`EMBER_S3_*`, under a prefix of the run's and the policy's own); the
//! trace of `ember bench trace` (`--functions`, `--minutes`, `--compression`, `--seed`)
//! replayed through the gateway. Then, on the last policy's cluster, requests per second of
//! a closed loop of `--rps-clients` clients for `--rps-seconds` through the gateway against
//! the same node directly, interleaved. See docs/bench.md.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use ember_bench::cluster::{ClusterCall, PlacementRun, PoolRun, PoolStart, Throughput};
use ember_bench::trace as tr;
use serde_json::{Value, json};

use super::bench::Args;

/// A child process stopped (SIGTERM, then SIGKILL after 15 s) when dropped.
struct Proc {
    child: Child,
    what: String,
}

impl Proc {
    /// Starts `cmd` and reads the first URL it prints; the rest of its output is dropped.
    fn start(mut cmd: Command, what: &str) -> anyhow::Result<(Proc, String)> {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {what}"))?;
        let mut out = BufReader::new(child.stdout.take().context("no stdout")?);
        let mut line = String::new();
        out.read_line(&mut line)?;
        std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
        let proc = Proc {
            child,
            what: what.to_string(),
        };
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .with_context(|| format!("{what} printed {line:?}, no URL"))?
            .to_string();
        Ok((proc, url))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // Our own child, not waited for yet: its pid is still its own.
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(15) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("{} did not stop within 15 s: killed", self.what);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// An etcd of the run's own on loopback, with its data in `dir`.
async fn start_etcd(dir: &Path) -> anyhow::Result<(Proc, String)> {
    let etcd = Path::new("/usr/bin/etcd");
    if !etcd.is_file() {
        bail!("no etcd at /usr/bin/etcd: install etcd-server, or give one with --etcd URL");
    }
    let (client, peer) = (free_port()?, free_port()?);
    let url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let mut cmd = Command::new(etcd);
    cmd.args(["--name", "bench", "--data-dir"])
        .arg(dir)
        .args([
            "--listen-client-urls",
            &url,
            "--advertise-client-urls",
            &url,
        ])
        .args(["--listen-peer-urls", &peer_url])
        .args(["--initial-advertise-peer-urls", &peer_url])
        .args(["--initial-cluster", &format!("bench={peer_url}")])
        .args([
            "--logger",
            "zap",
            "--log-outputs",
            "stderr",
            "--log-level",
            "error",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let child = cmd.spawn().context("starting etcd")?;
    let proc = Proc {
        child,
        what: "etcd".into(),
    };
    let t0 = Instant::now();
    loop {
        if let Ok(mut c) = ember_cluster::etcd::connect(std::slice::from_ref(&url)).await
            && c.status().await.is_ok()
        {
            return Ok((proc, url));
        }
        if t0.elapsed() > Duration::from_secs(20) {
            bail!("etcd did not answer on {url} within 20 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

struct Cluster {
    gateway: String,
    nodes: Vec<String>,
    // Dropped first: the gateway, then the nodes; then their homes.
    _gateway: Proc,
    _nodes: Vec<Proc>,
    _homes: Vec<tempfile::TempDir>,
}

/// Where a cluster of the run keeps its state: etcd, its prefix there, its prefix in the
/// store.
struct Place<'a> {
    etcd: &'a str,
    prefix: &'a str,
    s3_prefix: &'a str,
}

/// Starts node `name` of the cluster at `at` (a home of its own) with `flags`: the process,
/// its URL and its home.
fn start_node(
    args: &Args,
    at: &Place<'_>,
    name: &str,
    flags: &[&str],
) -> anyhow::Result<(Proc, String, tempfile::TempDir)> {
    let home = tempfile::Builder::new()
        .prefix("ember-bench-cluster-")
        .tempdir()?;
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg("serve")
        .arg("--home")
        .arg(home.path())
        .args(["--listen", "127.0.0.1:0", "--cluster", at.etcd])
        .args(["--cluster-prefix", at.prefix, "--node-name", name])
        .arg("--envs-dir")
        .arg(std::path::absolute(&args.envs_dir)?)
        .args(flags)
        .env("EMBER_S3_PREFIX", at.s3_prefix)
        .env("EMBER_LOG", "warn");
    if args.no_sandbox {
        cmd.arg("--no-sandbox");
    }
    let (p, url) = Proc::start(cmd, &format!("node {name}"))?;
    Ok((p, url, home))
}

/// Starts a gateway of the cluster at `at`: the process, its URL and its staging directory.
fn start_gateway(
    at: &Place<'_>,
    placement: &str,
) -> anyhow::Result<(Proc, String, tempfile::TempDir)> {
    let staging = tempfile::Builder::new()
        .prefix("ember-bench-gateway-")
        .tempdir()?;
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args([
        "gateway",
        "--cluster",
        at.etcd,
        "--cluster-prefix",
        at.prefix,
    ])
    .args(["--listen", "127.0.0.1:0", "--placement", placement])
    .arg("--staging")
    .arg(staging.path())
    .env("EMBER_S3_PREFIX", at.s3_prefix)
    .env("EMBER_LOG", "warn");
    let (gateway, url) = Proc::start(cmd, "the gateway")?;
    Ok((gateway, url, staging))
}

/// Starts the nodes and the gateway of `placement`'s cluster.
async fn start_cluster(
    args: &Args,
    etcd: &str,
    prefix: &str,
    s3_prefix: &str,
    placement: &str,
    keep_alive: Duration,
    http: &reqwest::Client,
) -> anyhow::Result<Cluster> {
    let mut homes = Vec::new();
    let mut nodes = Vec::new();
    let mut urls = Vec::new();
    let keep = format!("{}ms", keep_alive.as_millis());
    let flags = [
        "--keep-alive",
        &keep,
        "--images",
        "off",
        "--hibernate",
        "off",
    ];
    let at = Place {
        etcd,
        prefix,
        s3_prefix,
    };
    for i in 0..args.nodes {
        let (p, url, home) = start_node(args, &at, &format!("b{i}"), &flags)?;
        nodes.push(p);
        urls.push(url);
        homes.push(home);
    }
    let (gateway, gurl, staging) = start_gateway(&at, placement)?;
    homes.push(staging);
    let t0 = Instant::now();
    loop {
        let v: Value = http
            .get(format!("{gurl}/v1/cluster/nodes"))
            .send()
            .await?
            .json()
            .await?;
        if v["nodes"].as_array().map_or(0, Vec::len) == args.nodes {
            break;
        }
        if t0.elapsed() > Duration::from_secs(60) {
            bail!("the gateway saw {v} within 60 s, not {} nodes", args.nodes);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(Cluster {
        gateway: gurl,
        nodes: urls,
        _gateway: gateway,
        _nodes: nodes,
        _homes: homes,
    })
}

/// Response header `name`, or empty.
fn header(r: &reqwest::Response, name: &str) -> String {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

/// One invocation through the gateway, as the run records it.
async fn call(http: &reqwest::Client, url: &str, function: usize, shape: tr::Shape) -> ClusterCall {
    let t = Instant::now();
    let r = http.post(url).body("{}").send().await;
    let mut c = ClusterCall {
        function,
        shape,
        start: "error".into(),
        latency_ms: 0.0,
        node: String::new(),
        tier: String::new(),
        placement_us: f64::NAN,
        tried: 0,
    };
    if let Ok(r) = r {
        let h = |n: &str| header(&r, n);
        let ok = r.status() == 200;
        (c.tier, c.placement_us, c.tried) = ClusterCall::parse_placement(&h("ember-placement"));
        c.node = h("ember-node");
        let start = h("ember-start");
        if r.bytes().await.is_ok() && ok {
            c.start = start;
        }
    }
    c.latency_ms = t.elapsed().as_secs_f64() * 1e3;
    c
}

/// A closed loop of `clients` against `url` for `seconds`.
async fn closed_loop(
    http: &reqwest::Client,
    url: &str,
    clients: usize,
    seconds: f64,
) -> (Vec<f64>, usize) {
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let (http, url) = (http.clone(), url.to_string());
        set.spawn(async move {
            let (mut ms, mut errors) = (Vec::new(), 0usize);
            while Instant::now() < end {
                let t = Instant::now();
                let ok = match http.post(&url).body("{}").send().await {
                    Ok(r) => r.status() == 200 && r.bytes().await.is_ok(),
                    Err(_) => false,
                };
                if ok {
                    ms.push(t.elapsed().as_secs_f64() * 1e3);
                } else {
                    errors += 1;
                }
            }
            (ms, errors)
        });
    }
    let (mut all, mut errors) = (Vec::new(), 0);
    while let Some(r) = set.join_next().await {
        if let Ok((ms, e)) = r {
            all.extend(ms);
            errors += e;
        }
    }
    (all, errors)
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.url.is_none(),
        "bench cluster starts its own nodes and gateways; it does not take --url"
    );
    anyhow::ensure!(
        args.nodes >= 1 && args.functions > 0 && args.minutes > 0 && args.compression > 0,
        "--nodes, --functions, --minutes and --compression must be at least 1"
    );
    for p in &args.placements {
        ember_cluster::placement::by_name(p).map_err(anyhow::Error::msg)?;
    }
    let Some(store) = ember_store::S3Config::from_env()? else {
        bail!(
            "bench cluster needs the S3 store: set EMBER_S3_ENDPOINT, EMBER_S3_BUCKET, \
             AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (docs/store.md)"
        );
    };
    let started = super::bench::now_unix();
    let etcd_dir = tempfile::Builder::new()
        .prefix("ember-bench-etcd-")
        .tempdir()?;
    let (_etcd, etcd) = match &args.etcd {
        Some(u) => (None, u.clone()),
        None => {
            let (p, u) = start_etcd(etcd_dir.path()).await?;
            (Some(p), u)
        }
    };
    let minute = Duration::from_secs(60) / args.compression;
    let fns = tr::generate(args.functions, args.minutes, args.seed);
    let arrivals = tr::arrivals(&fns, minute, args.seed);
    // The fixed keep-alive's 10 trace-minutes, in replay time.
    let keep_alive = minute * 10;
    eprintln!(
        "bench cluster: {} nodes, {} functions, {} minutes, {} invocations, replayed {}x faster \
         ({} s each), keep-alive {} ms, placements {}, etcd {etcd}, store {}",
        args.nodes,
        fns.len(),
        args.minutes,
        arrivals.len(),
        args.compression,
        (minute * args.minutes as u32).as_secs(),
        keep_alive.as_millis(),
        args.placements.join(","),
        store.endpoint
    );
    let zip = tr::handler_zip().context("building the trace functions' zip")?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()?;
    let mut runs = Vec::new();
    let mut throughput = Vec::new();
    let n_placements = args.placements.len();
    for (k, placement) in args.placements.iter().enumerate() {
        let prefix = format!("/ember-bench/{started}-{placement}");
        let s3_prefix = format!("{}bench-cluster-{started}-{placement}/", store.prefix);
        let cluster = start_cluster(
            &args, &etcd, &prefix, &s3_prefix, placement, keep_alive, &http,
        )
        .await?;
        let names: Vec<String> = (0..fns.len()).map(|i| format!("t{i:03}")).collect();
        for n in &names {
            let r = http
                .put(format!("{}/v1/functions/{n}", cluster.gateway))
                .json(&json!({"handler": "main.handler", "memory_mb": 128, "code_zip": zip}))
                .send()
                .await?;
            if !r.status().is_success() {
                bail!("deploying {n} through the gateway: {}", r.text().await?);
            }
        }
        let http = Arc::new(http.clone());
        let t0 = tokio::time::Instant::now();
        let mut set = tokio::task::JoinSet::new();
        for (at, f) in &arrivals {
            let url = format!("{}/v1/functions/{}/invoke", cluster.gateway, names[*f]);
            let (http, at, f, shape) = (http.clone(), *at, *f, fns[*f].shape);
            set.spawn(async move {
                tokio::time::sleep_until(t0 + at).await;
                call(&http, &url, f, shape).await
            });
        }
        let mut calls = Vec::new();
        while let Some(c) = set.join_next().await {
            calls.push(c?);
        }
        let replay_s = t0.elapsed().as_secs_f64();
        calls.sort_by_key(|c| c.function);
        runs.push(PlacementRun {
            placement: placement.clone(),
            calls,
            replay_s,
        });
        if k + 1 == n_placements && args.rps_seconds > 0.0 {
            throughput = rps(&args, &cluster, &zip, &http).await?;
        }
    }
    let pooled = pool(&args, &etcd, started, &store.prefix, &http).await?;
    report(&args, started, &fns, &runs, &throughput, pooled.as_ref())
}

/// Waits until `f` holds of `url`'s JSON, up to `limit`.
async fn wait_json(
    http: &reqwest::Client,
    url: &str,
    limit: Duration,
    what: &str,
    f: impl Fn(&Value) -> bool,
) -> anyhow::Result<Value> {
    let t0 = Instant::now();
    loop {
        let v: Value = match http.get(url).send().await {
            Ok(r) => r.json().await.unwrap_or_default(),
            Err(_) => Value::Null,
        };
        if f(&v) {
            return Ok(v);
        }
        if t0.elapsed() > limit {
            bail!("{what}: not within {} s ({url}: {v})", limit.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The image pool's first starts ([`ember_bench::cluster::PoolRun`]): a cluster of its own
/// whose node p0 builds the workload's image and holds it in memory; per round, a start on
/// p0 from its image, a cold boot on p0, and the first start of a fresh node (q<round>,
/// `--image-pool pool`) that restores the image from p0's memory. Standbys and templates are
/// off, so that every image start is a restore.
async fn pool(
    args: &Args,
    etcd: &str,
    started: u64,
    store_prefix: &str,
    http: &reqwest::Client,
) -> anyhow::Result<Option<PoolRun>> {
    if args.pool_rounds == 0 {
        return Ok(None);
    }
    let w = ember_bench::workloads::load(&args.pool_workload)?;
    let (prefix, s3_prefix) = (
        format!("/ember-bench/{started}-pool"),
        format!("{store_prefix}bench-cluster-{started}-pool/"),
    );
    let at = Place {
        etcd,
        prefix: &prefix,
        s3_prefix: &s3_prefix,
    };
    let flags = [
        "--images",
        "on-deploy",
        "--hibernate",
        "off",
        "--standby",
        "0",
        "--no-templates",
        "--fixed-ladder",
    ];
    let (_p0, holder, _home) = start_node(args, &at, "p0", &flags)?;
    let (_gateway, gateway, _staging) = start_gateway(&at, "snapshot-aware")?;
    let nodes = format!("{gateway}/v1/cluster/nodes");
    let one = |v: &Value| v["nodes"].as_array().is_some_and(|n| n.len() == 1);
    wait_json(http, &nodes, Duration::from_secs(60), "node p0 joins", one).await?;
    let client = ember_api::client::Client::new(&gateway, None);
    let mut body = w
        .manifest
        .deploy_body(&w.zip)
        .map_err(|e| anyhow::anyhow!("{}: {e}", w.name))?;
    body["snapshot"] = json!("off");
    client.deploy("pool", &body, &mut |_| {}).await?;
    body["images"] = json!(false);
    client.deploy("pool-cold", &body, &mut |_| {}).await?;
    eprintln!(
        "bench cluster: image pool, {}: waiting for p0's image (built, in memory, stored)",
        w.name
    );
    let settled = |v: &Value| {
        v["images"].as_array().is_some_and(|a| {
            a.iter().any(|i| {
                i["location"] == "memory" && i["remote"] == "stored" && i["imports_pending"] == 0
            })
        })
    };
    let list = format!("{holder}/v1/images");
    let what = "p0's image in memory and in the store";
    wait_json(http, &list, Duration::from_secs(900), what, settled).await?;
    // One unmeasured start first: the modules the handler imports are learned into the
    // image, which is rebuilt (a new build, stored again); the rounds measure the settled one.
    let event = w.manifest.bench_event();
    first_start(http, &holder, "pool", &event).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let images = wait_json(http, &list, Duration::from_secs(900), what, settled).await?;
    let image_pages = images["images"][0]["pages"].as_u64().unwrap_or(0);
    let mut starts = Vec::new();
    for round in 0..args.pool_rounds {
        for (kind, function) in [("local", "pool"), ("cold-boot", "pool-cold")] {
            let r = http
                .delete(format!("{holder}/v1/functions/{function}/instances"))
                .send()
                .await?;
            anyhow::ensure!(
                r.status().is_success(),
                "stopping p0's instances: {}",
                r.status()
            );
            let (start, latency_ms, timing) = first_start(http, &holder, function, &event).await;
            starts.push(PoolStart {
                round,
                kind: kind.into(),
                start,
                latency_ms,
                chunks_from_peers: 0,
                timing,
            });
        }
        // A fresh node whose first start restores from another node's memory, and one whose
        // first start restores from its own copy (fetched whole from the store first): the
        // same fresh process, the pages from elsewhere or from here.
        let fresh = [
            ("pool", "pool", "pool", 'q'),
            ("fresh-local", "off", "memory", 'f'),
        ];
        for (kind, mode, location, letter) in fresh {
            // Never p0's name: a node does not ask itself.
            let name = format!("{letter}{round}");
            let node_flags = [&flags[..], &["--image-pool", mode]].concat();
            let (node, url, home) = start_node(args, &at, &name, &node_flags)?;
            let list = format!("{url}/v1/images");
            let ready = |v: &Value| {
                v["images"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|i| i["location"] == location))
            };
            let what = format!("node {name}'s image ({location})");
            wait_json(http, &list, Duration::from_secs(300), &what, ready).await?;
            let (start, latency_ms, timing) = first_start(http, &url, "pool", &event).await;
            let v: Value = http.get(&list).send().await?.json().await?;
            let chunks_from_peers = v["images"][0]["pool"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| p["place"].as_str().is_some_and(|s| s.starts_with("peers")))
                .filter_map(|p| p["chunks"].as_u64())
                .sum();
            starts.push(PoolStart {
                round,
                kind: kind.into(),
                start,
                latency_ms,
                chunks_from_peers,
                timing,
            });
            drop(node);
            drop(home);
        }
    }
    Ok(Some(PoolRun {
        workload: w.name.clone(),
        image_pages,
        starts,
    }))
}

/// One invocation of `function` on the node at `url`, timed: its start (`Ember-Start`, or
/// `error`), milliseconds, and the node's `Ember-Timing`.
async fn first_start(
    http: &reqwest::Client,
    url: &str,
    function: &str,
    event: &[u8],
) -> (String, f64, String) {
    let t = Instant::now();
    let r = http
        .post(format!("{url}/v1/functions/{function}/invoke"))
        .body(event.to_vec())
        .send()
        .await;
    let (start, timing) = match r {
        Ok(r) if r.status() == 200 => {
            let (s, timing) = (header(&r, "ember-start"), header(&r, "ember-timing"));
            match r.bytes().await {
                Ok(_) if !s.is_empty() => (s, timing),
                _ => ("error".into(), timing),
            }
        }
        _ => ("error".into(), String::new()),
    };
    (start, t.elapsed().as_secs_f64() * 1e3, timing)
}

/// The gateway against one node, the same warm function, interleaved rounds.
async fn rps(
    args: &Args,
    cluster: &Cluster,
    zip: &str,
    http: &reqwest::Client,
) -> anyhow::Result<Vec<Throughput>> {
    let r = http
        .put(format!("{}/v1/functions/rps", cluster.gateway))
        .json(&json!({"handler": "main.handler", "memory_mb": 128, "code_zip": zip}))
        .send()
        .await?;
    if !r.status().is_success() {
        bail!("deploying rps through the gateway: {}", r.text().await?);
    }
    // Warm it on the node the gateway places it on; the direct loop drives that node.
    let first = http
        .post(format!("{}/v1/functions/rps/invoke", cluster.gateway))
        .body("{}")
        .send()
        .await?;
    let node = first
        .headers()
        .get("ember-node")
        .and_then(|v| v.to_str().ok())
        .and_then(|n| n.strip_prefix('b'))
        .and_then(|i| i.parse::<usize>().ok())
        .context("the gateway named no node")?;
    let targets = [
        (
            "node",
            format!("{}/v1/functions/rps/invoke", cluster.nodes[node]),
        ),
        (
            "gateway",
            format!("{}/v1/functions/rps/invoke", cluster.gateway),
        ),
    ];
    let mut out = Vec::new();
    let rounds = 2;
    let mut samples: Vec<(Vec<f64>, usize, f64)> = vec![(Vec::new(), 0, 0.0); targets.len()];
    // A warm-up of each, not counted.
    for (_, url) in &targets {
        closed_loop(http, url, args.rps_clients, 0.5).await;
    }
    for _ in 0..rounds {
        for (i, (_, url)) in targets.iter().enumerate() {
            let secs = args.rps_seconds / f64::from(rounds);
            let (ms, errors) = closed_loop(http, url, args.rps_clients, secs).await;
            samples[i].0.extend(ms);
            samples[i].1 += errors;
            samples[i].2 += secs;
        }
    }
    for ((target, _), (ms, errors, secs)) in targets.iter().zip(samples) {
        out.push(Throughput {
            target: target.to_string(),
            clients: args.rps_clients,
            seconds: secs,
            requests: ms.len(),
            errors,
            rps: ms.len() as f64 / secs,
            latency: ember_bench::stats::summarize(&ms),
        });
    }
    Ok(out)
}

fn report(
    args: &Args,
    started: u64,
    fns: &[tr::TraceFn],
    runs: &[PlacementRun],
    throughput: &[Throughput],
    pooled: Option<&PoolRun>,
) -> anyhow::Result<()> {
    println!(
        "{:<15} {:>6} {:>6} {:>7} {:>9} {:>10} {:>7} {:>8} {:>8} {:>9} {:>9} {:>8} {:>8}",
        "placement",
        "calls",
        "errors",
        "warm%",
        "snapshot%",
        "cold-boot%",
        "p50 ms",
        "p99 ms",
        "cold n",
        "cold p50",
        "cold p99",
        "place50",
        "place99"
    );
    for r in runs {
        let (l, c, (u50, u99)) = (r.latency(), r.cold_latency(), r.placement_us());
        println!(
            "{:<15} {:>6} {:>6} {:>7.1} {:>9.1} {:>10.1} {:>7.1} {:>8.1} {:>8} {:>9.1} {:>9.1} {:>6.0}us {:>6.0}us",
            r.placement,
            r.calls.len(),
            r.errors(),
            r.share("warm"),
            r.share("function-snapshot"),
            r.share("cold-boot"),
            l.p50_ms,
            l.p99_ms,
            c.count,
            c.p50_ms,
            c.p99_ms,
            u50,
            u99
        );
    }
    if let [a, b] = runs {
        let (ca, cb) = (a.cold_latency(), b.cold_latency());
        println!(
            "cold-start p99: {} {:.1} ms, {} {:.1} ms ({:.2}x); all-calls p99 {:.2}x",
            a.placement,
            ca.p99_ms,
            b.placement,
            cb.p99_ms,
            ca.p99_ms / cb.p99_ms,
            a.latency().p99_ms / b.latency().p99_ms
        );
    }
    for t in throughput {
        println!(
            "{:<8} {} clients, {:.1} s: {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms, {} errors",
            t.target, t.clients, t.seconds, t.rps, t.latency.p50_ms, t.latency.p99_ms, t.errors
        );
    }
    if let Some(p) = pooled {
        println!(
            "image pool ({}, {} pages), first starts: {:<10} {:>3} {:>9} {:>9} {:>6}",
            p.workload, p.image_pages, "kind", "n", "p50 ms", "p99 ms", "wrong"
        );
        for (kind, want) in [
            ("local", "image"),
            ("fresh-local", "image"),
            ("pool", "image"),
            ("cold-boot", "cold-boot"),
        ] {
            let l = p.latency(kind);
            println!(
                "{:<10} {:>3} {:>9.1} {:>9.1} {:>6}",
                kind,
                l.count,
                l.p50_ms,
                l.p99_ms,
                p.wrong(kind, want)
            );
        }
        let (local, fresh, from_pool, cold) = (
            p.latency("local"),
            p.latency("fresh-local"),
            p.latency("pool"),
            p.latency("cold-boot"),
        );
        println!(
            "pool vs local p50 {:.2}x, vs fresh-local {:.2}x; cold boot vs pool p50 {:.2}x",
            from_pool.p50_ms / local.p50_ms,
            from_pool.p50_ms / fresh.p50_ms,
            cold.p50_ms / from_pool.p50_ms
        );
    }
    let doc = json!({
        "started_unix": started,
        "nodes": args.nodes,
        "functions": args.functions,
        "minutes": args.minutes,
        "compression": args.compression,
        "seed": args.seed,
        "trace": fns,
        "runs": runs,
        "throughput": throughput,
        "pool": pooled,
    });
    let (json_path, svg): (PathBuf, PathBuf) =
        super::bench::save(args.out.clone(), "cluster", started, &doc)?;
    if runs.iter().all(|r| r.calls.is_empty()) {
        eprintln!(
            "wrote {} (the trace had no invocations: no plot)",
            json_path.display()
        );
        return Ok(());
    }
    ember_bench::cluster::write_svg(runs, &svg)?;
    eprintln!("wrote {} and {}", json_path.display(), svg.display());
    Ok(())
}
