//! `ember bench images`: the dependency-image rung of the start ladder end to end over HTTP,
//! against cold boot and warm in the same run (WarmSwap Fig. 5), and the cache cost of one
//! image shared by ten functions against ten per-function snapshots (WarmSwap Fig. 7; the
//! Prebaking baseline dumps each warm function whole).
//!
//! ```text
//! daemons: one with images off (cold boots), one per restore policy (images built up front),
//!          all with function snapshots off; one with images built up front AND function
//!          snapshots on (its snapshot taken, and waited for, before measuring)
//! per workload, per round: stop instances + invoke on every daemon in turn (interleaved)
//!          then warm invocations on the cold daemon's warm instance
//! cache:   N functions on one image (its page bytes) vs. each function cold-booted, invoked
//!          once and dumped whole with ember-snap (the sum of their page bytes)
//! ```

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ember_api::client::Client;
use ember_runtime::{Instance, LogSink, Outcome, StartSpec, Stream};
use ember_snap::DumpOptions;
use serde::Serialize;

use crate::driver::{BenchError, Sample, one};
use crate::stats::summarize;
use crate::workloads::Workload;
use std::path::PathBuf;

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Workload, path (`cold-boot`, `image-<policy>`, `function-snapshot` or `warm`) and
    /// latency summary.
    #[serde(flatten)]
    pub row: crate::report::Row,
    /// Median of each phase of the `Ember-Timing` header, in ms.
    pub phases: BTreeMap<String, f64>,
    /// Samples that took another path than asked (an image or snapshot start that fell back).
    pub off_path: usize,
}

/// What idle instances of one image hold in memory: one alone, then `--idle-instances` at
/// once (their runtimes' PSS, from `/proc/PID/smaps_rollup`).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct IdleMemory {
    pub workload: String,
    pub path: String,
    /// PSS of the one instance's runtime, KiB.
    pub one_kib: u64,
    /// Instances found after the concurrent starts (each request found none idle).
    pub instances: usize,
    /// Their PSS summed, KiB.
    pub all_kib: u64,
}

impl IdleMemory {
    /// All the instances' PSS over one instance's.
    pub fn ratio(&self) -> f64 {
        self.all_kib as f64 / self.one_kib.max(1) as f64
    }
}

/// A daemon whose starts are image starts.
pub struct ImageDaemon {
    /// The daemon's home: its instances' runtimes are found by it (their command line names
    /// its bootstrap).
    pub home: PathBuf,
    /// The row's path: `image-<policy>` restores on demand (`--standby 0 --no-templates`),
    /// `image-template` forks each start from the image's template, `image-standby` takes an
    /// instance made ahead.
    pub label: String,
    pub client: Client,
    /// Each measured start waits (at most [`STANDBY_WAIT`]) for a standby instance of the
    /// workload's image to be ready, so that the sample is a standby start and the refill
    /// after the previous one does not overlap it.
    pub standby: bool,
    /// Before the first measured start, waits (at most [`STANDBY_WAIT`]) for the
    /// template of the workload's image to be kept.
    pub template: bool,
}

/// The longest wait for a standby instance before a measured start (it starts anyway).
pub const STANDBY_WAIT: Duration = Duration::from_secs(10);

/// The daemons of one run.
pub struct Ladder {
    pub cold: Client,
    pub images: Vec<ImageDaemon>,
    /// The daemon with function snapshots on (and the workload's image built up front).
    pub snapshot: Option<Client>,
    /// That daemon keeps standbys (of [`Ladder::snapshot_standby_kind`]): each measured
    /// start waits (at most [`STANDBY_WAIT`]) for one, as for [`ImageDaemon::standby`].
    pub snapshot_standby: bool,
    /// What the function snapshot's starts take: `snapshot` (an instance forked ahead from
    /// the snapshot's template) or `sandbox` (a parked sandbox, `--no-templates`).
    pub snapshot_standby_kind: &'static str,

    /// How long to wait for a function's snapshot to be listed after its first invocation.
    pub snapshot_wait: Duration,
    /// Pause between stopping a function's instances and the measured start (the stopped
    /// instance's teardown then does not overlap it).
    pub settle: Duration,
}

/// A function snapshot's size against the dependency image it is a layer over.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LayerSize {
    pub workload: String,
    pub snapshot: String,
    /// Bytes of the snapshot's files on disk and the pages it stores.
    pub layer_bytes: u64,
    pub layer_pages: u64,
    /// The image it is a layer over; none: a whole snapshot.
    pub parent_image: Option<String>,
    pub image_bytes: Option<u64>,
    pub image_pages: Option<u64>,
    /// layer / image, of bytes and of pages (none for a whole snapshot).
    pub bytes_ratio: Option<f64>,
    pub pages_ratio: Option<f64>,
}

/// The size of `function`'s snapshot in a `GET /v1/snapshots` answer against its parent in a
/// `GET /v1/images` answer; none when the function has no snapshot listed.
pub fn layer_size(
    workload: &str,
    function: &str,
    snapshots: &serde_json::Value,
    images: &serde_json::Value,
) -> Option<LayerSize> {
    let s = snapshots["snapshots"]
        .as_array()?
        .iter()
        .find(|s| s["function"] == function)?;
    let parent = s["parent_image"].as_str().map(String::from);
    let image = parent.as_ref().and_then(|id| {
        images["images"]
            .as_array()?
            .iter()
            .find(|i| i["id"] == id.as_str())
    });
    let (layer_bytes, layer_pages) = (s["bytes"].as_u64()?, s["pages"].as_u64()?);
    let image_bytes = image.and_then(|i| i["bytes"].as_u64());
    let image_pages = image.and_then(|i| i["pages"].as_u64());
    let ratio = |a: u64, b: Option<u64>| b.filter(|b| *b > 0).map(|b| a as f64 / b as f64);
    Some(LayerSize {
        workload: workload.to_string(),
        snapshot: s["id"].as_str().unwrap_or_default().to_string(),
        layer_bytes,
        layer_pages,
        parent_image: parent,
        image_bytes,
        image_pages,
        bytes_ratio: ratio(layer_bytes, image_bytes),
        pages_ratio: ratio(layer_pages, image_pages),
    })
}

/// p50 ratios of one start path against cold boot and warm, of one workload in one run.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Ratio {
    pub workload: String,
    pub path: String,
    /// cold-boot p50 / this path's p50: how many times faster than a cold boot.
    pub cold_over_path: f64,
    /// this path's p50 / warm p50: how many times slower than a warm invocation.
    pub path_over_warm: f64,
}

/// For every path other than `cold-boot` and `warm`, its ratios to them (same workload).
pub fn ratios(rows: &[Row]) -> Vec<Ratio> {
    let get = |w: &str, p: &str| {
        rows.iter()
            .map(|r| &r.row)
            .find(|r| r.workload == w && r.path == p)
            .map(|r| r.summary.p50_ms)
    };
    rows.iter()
        .map(|r| &r.row)
        .filter(|r| r.path != "cold-boot" && r.path != "warm")
        .filter_map(|r| {
            let (cold, warm) = (get(&r.workload, "cold-boot")?, get(&r.workload, "warm")?);
            Some(Ratio {
                workload: r.workload.clone(),
                path: r.path.clone(),
                cold_over_path: cold / r.summary.p50_ms,
                path_over_warm: r.summary.p50_ms / warm,
            })
        })
        .collect()
}

fn fail(w: &str, detail: String) -> BenchError {
    BenchError::setup(w, detail)
}

/// `name;dur=1.2, other;dur=3` -> {name: 1.2, other: 3}.
pub fn parse_timing(h: &str) -> BTreeMap<String, f64> {
    h.split(',')
        .filter_map(|p| {
            let (name, dur) = p.trim().split_once(";dur=")?;
            Some((name.to_string(), dur.parse().ok()?))
        })
        .collect()
}

/// The median of each `Ember-Timing` phase over the samples that have it.
pub fn phase_medians<'a>(samples: impl IntoIterator<Item = &'a Sample>) -> BTreeMap<String, f64> {
    let mut phases: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for s in samples {
        for (k, v) in parse_timing(&s.timing) {
            phases.entry(k).or_default().push(v);
        }
    }
    phases
        .into_iter()
        .map(|(k, v)| (k, summarize(&v).p50_ms))
        .collect()
}

fn row(workload: &str, path: &str, want: &str, samples: &[Sample]) -> Row {
    let lat: Vec<f64> = samples.iter().map(|s| s.latency_ms).collect();
    Row {
        row: crate::report::Row {
            workload: workload.to_string(),
            path: path.to_string(),
            summary: summarize(&lat),
        },
        phases: phase_medians(samples),
        off_path: samples.iter().filter(|s| s.path != want).count(),
    }
}

/// Deploys `w` everywhere, builds its image on every image daemon (and the snapshot daemon),
/// makes sure its function snapshot exists, then measures. Returns the rows and the size of
/// its snapshot against its image.
pub async fn ladder(
    l: &Ladder,
    w: &Workload,
    rounds: usize,
    warm: usize,
    log: &(dyn Fn(&str) + Sync),
) -> Result<(Vec<Row>, Option<LayerSize>), BenchError> {
    crate::driver::deploy(&l.cold, w, log).await?;
    let packages = w.manifest.packages.clone().unwrap_or_default();
    let with_images = l.images.iter().map(|d| (d.label.clone(), &d.client)).chain(
        l.snapshot
            .iter()
            .map(|c| ("function-snapshot".to_string(), c)),
    );
    for (label, c) in with_images {
        crate::driver::deploy(c, w, log).await?;
        let img = c
            .build_image(&packages)
            .await
            .map_err(|e| fail(&w.name, format!("building its image ({label}): {e}")))?;
        log(&format!(
            "  [{}] image {} ({} pages) for {label}",
            w.name, img["id"], img["pages"]
        ));
    }
    let event = w.manifest.bench_event();
    // A first start teaches each image the submodules the handler imports, and the image is
    // rebuilt with them (ember-node's learn.rs): that lands before anything is measured.
    let learners = l
        .images
        .iter()
        .map(|d| &d.client)
        .chain(l.snapshot.iter())
        .collect::<Vec<_>>();
    for c in &learners {
        c.stop_instances(&w.function)
            .await
            .map_err(|e| fail(&w.name, e.to_string()))?;
        one(c, w, &event, "warm-up").await?;
    }
    for c in &learners {
        learned(c, &w.function).await?;
    }
    for d in l.images.iter().filter(|d| d.template) {
        template_ready(&d.client, &w.function).await?;
    }
    let layer = match &l.snapshot {
        Some(c) => Some(ensure_snapshot(c, w, &event, l.snapshot_wait, log).await?),
        None => None,
    };
    let mut cold = Vec::new();
    let mut from_image: Vec<Vec<Sample>> = vec![Vec::new(); l.images.len()];
    let mut from_snapshot = Vec::new();
    let stop = |c: &Client| {
        let c = c.clone();
        let name = w.function.clone();
        let settle = l.settle;
        async move {
            c.stop_instances(&name)
                .await
                .map_err(|e| fail(&name, e.to_string()))?;
            if !settle.is_zero() {
                tokio::time::sleep(settle).await;
            }
            Ok::<_, BenchError>(())
        }
    };
    for _ in 0..rounds {
        stop(&l.cold).await?;
        cold.push(one(&l.cold, w, &event, "cold").await?);
        for (i, d) in l.images.iter().enumerate() {
            stop(&d.client).await?;
            if d.standby {
                standby_ready(&d.client, &w.function).await?;
            }
            from_image[i].push(one(&d.client, w, &event, "cold").await?);
        }
        if let Some(c) = &l.snapshot {
            stop(c).await?;
            if l.snapshot_standby {
                standby_kind_ready(c, &w.function, l.snapshot_standby_kind).await?;
            }
            from_snapshot.push(one(c, w, &event, "cold").await?);
        }
    }
    one(&l.cold, w, &event, "warm-up").await?;
    let mut warm_samples = Vec::with_capacity(warm);
    for _ in 0..warm {
        warm_samples.push(one(&l.cold, w, &event, "warm").await?);
    }
    let mut rows = vec![row(&w.name, "cold-boot", "cold-boot", &cold)];
    for (i, d) in l.images.iter().enumerate() {
        let mut r = row(&w.name, &d.label, "image", &from_image[i]);
        // An image start that found no standby (the wait ran out), or no template to fork
        // from, is off this row's path.
        let phase = match (d.standby, d.template) {
            (true, _) => Some("standby;"),
            (false, true) => Some("fork;"),
            (false, false) => None,
        };
        if let Some(phase) = phase {
            r.off_path += from_image[i]
                .iter()
                .filter(|s| s.path == "image" && !s.timing.contains(phase))
                .count();
        }
        rows.push(r);
    }
    if l.snapshot.is_some() {
        rows.push(row(
            &w.name,
            "function-snapshot",
            "function-snapshot",
            &from_snapshot,
        ));
    }
    rows.push(row(&w.name, "warm", "warm", &warm_samples));
    Ok((rows, layer))
}

/// PSS of the runtimes of `home`'s instances, KiB, and how many there are.
pub fn runtimes_pss(home: &std::path::Path) -> (usize, u64) {
    let needle = home.join("runtime").to_string_lossy().into_owned();
    let mut n = 0;
    let mut kib = 0;
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return (0, 0);
    };
    for e in dir.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        if !String::from_utf8_lossy(&cmd).contains(&needle) {
            continue;
        }
        if let Some((_, pss)) = crate::stats::rss_pss_kib(pid) {
            n += 1;
            kib += pss;
        }
    }
    (n, kib)
}

/// One idle instance of `w` on image daemon `d`, then `count` started at once (concurrent
/// requests, none finding an idle instance): their runtimes' PSS.
pub async fn idle_memory(
    d: &ImageDaemon,
    w: &Workload,
    count: usize,
) -> Result<IdleMemory, BenchError> {
    let event = w.manifest.bench_event();
    let settle = || tokio::time::sleep(Duration::from_millis(300));
    d.client
        .stop_instances(&w.function)
        .await
        .map_err(|e| fail(&w.name, e.to_string()))?;
    settle().await;
    one(&d.client, w, &event, "idle-memory").await?;
    let (_, one_kib) = runtimes_pss(&d.home);
    d.client
        .stop_instances(&w.function)
        .await
        .map_err(|e| fail(&w.name, e.to_string()))?;
    settle().await;
    let mut starts = tokio::task::JoinSet::new();
    for _ in 0..count {
        let (c, w, e) = (d.client.clone(), w.clone(), event.clone());
        starts.spawn(async move { one(&c, &w, &e, "idle-memory").await.map(|_| ()) });
    }
    while let Some(r) = starts.join_next().await {
        r.map_err(|e| fail(&w.name, e.to_string()))??;
    }
    let (instances, all_kib) = runtimes_pss(&d.home);
    d.client
        .stop_instances(&w.function)
        .await
        .map_err(|e| fail(&w.name, e.to_string()))?;
    Ok(IdleMemory {
        workload: w.name.clone(),
        path: d.label.clone(),
        one_kib,
        instances,
        all_kib,
    })
}

pub fn memory_table(m: &[IdleMemory]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\nidle instances of one image, PSS of their runtimes (one alone, then N started at once)"
    );
    let _ = writeln!(
        s,
        "{:<10} {:<16} {:>10} {:>10} {:>12} {:>8}",
        "workload", "path", "one MiB", "instances", "all MiB", "all/one"
    );
    for r in m {
        let _ = writeln!(
            s,
            "{:<10} {:<16} {:>10.1} {:>10} {:>12.1} {:>7.1}x",
            r.workload,
            r.path,
            r.one_kib as f64 / 1024.0,
            r.instances,
            r.all_kib as f64 / 1024.0,
            r.ratio()
        );
    }
    s
}

/// How long the bench waits for an image to be rebuilt with what its first start taught it.
pub const LEARN_WAIT: Duration = Duration::from_secs(300);

/// Waits until the image that serves `function` on `c` has no learned imports pending.
async fn learned(c: &Client, function: &str) -> Result<(), BenchError> {
    let t0 = std::time::Instant::now();
    let info = c
        .get(function)
        .await
        .map_err(|e| fail(function, e.to_string()))?;
    loop {
        let pending: u64 = images_of(c, function, &info)
            .await?
            .iter()
            .map(|i| i["imports_pending"].as_u64().unwrap_or(0))
            .sum();
        if pending == 0 {
            return Ok(());
        }
        if t0.elapsed() > LEARN_WAIT {
            return Err(fail(
                function,
                format!(
                    "its image was not rebuilt with the {pending} modules its first start \
                     imported within {} s; see the daemon's log",
                    LEARN_WAIT.as_secs()
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `c`'s images of exactly the distributions of `function` (`info`, its `GET`), as
/// `GET /v1/images` lists them.
async fn images_of(
    c: &Client,
    function: &str,
    info: &serde_json::Value,
) -> Result<Vec<serde_json::Value>, BenchError> {
    let listed = c
        .images()
        .await
        .map_err(|e| fail(function, format!("listing images: {e}")))?;
    Ok(listed["images"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|i| i["installed"] == info["installed"])
        .cloned()
        .collect())
}

/// Waits (at most [`STANDBY_WAIT`]) until `c` lists a standby instance of the image that
/// serves `function`.
async fn standby_ready(c: &Client, function: &str) -> Result<(), BenchError> {
    image_shows(c, function, |i| i["standby"].as_u64().unwrap_or(0) > 0).await
}

/// Waits (at most [`STANDBY_WAIT`]) until `c` keeps a template of the image that serves
/// `function`.
async fn template_ready(c: &Client, function: &str) -> Result<(), BenchError> {
    image_shows(c, function, |i| i["template"] == "kept").await
}

/// Waits (at most [`STANDBY_WAIT`]) until an image of `function`'s distributions on `c`
/// is as `shows` wants.
async fn image_shows(
    c: &Client,
    function: &str,
    shows: impl Fn(&serde_json::Value) -> bool,
) -> Result<(), BenchError> {
    let t0 = std::time::Instant::now();
    let info = c
        .get(function)
        .await
        .map_err(|e| fail(function, e.to_string()))?;
    while t0.elapsed() < STANDBY_WAIT {
        if images_of(c, function, &info).await?.iter().any(&shows) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Waits (at most [`STANDBY_WAIT`]) until `c`'s metrics show a standby of `kind` ready.
async fn standby_kind_ready(c: &Client, function: &str, kind: &str) -> Result<(), BenchError> {
    let prefix = format!("ember_standby_ready{{kind=\"{kind}\"}}");
    let t0 = std::time::Instant::now();
    while t0.elapsed() < STANDBY_WAIT {
        let text = c
            .metrics()
            .await
            .map_err(|e| fail(function, format!("reading metrics: {e}")))?;
        let ready = text
            .lines()
            .filter_map(|l| l.strip_prefix(prefix.as_str()))
            .any(|v| v.trim().parse::<f64>().is_ok_and(|n| n > 0.0));
        if ready {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Invokes `w` once on `c` (a start that takes its function snapshot in the background), then
/// polls `GET /v1/snapshots` until the function has one, for at most `wait`.
async fn ensure_snapshot(
    c: &Client,
    w: &Workload,
    event: &[u8],
    wait: Duration,
    log: &(dyn Fn(&str) + Sync),
) -> Result<LayerSize, BenchError> {
    c.stop_instances(&w.function)
        .await
        .map_err(|e| fail(&w.name, e.to_string()))?;
    let first = one(c, w, event, "snapshot").await?;
    let t0 = std::time::Instant::now();
    loop {
        let listed = c
            .snapshots()
            .await
            .map_err(|e| fail(&w.name, format!("listing snapshots: {e}")))?;
        if listed["snapshots"]
            .as_array()
            .is_some_and(|a| a.iter().any(|s| s["function"] == w.function.as_str()))
        {
            let images = c
                .images()
                .await
                .map_err(|e| fail(&w.name, format!("listing images: {e}")))?;
            let size = layer_size(&w.name, &w.function, &listed, &images).ok_or_else(|| {
                fail(
                    &w.name,
                    format!("its snapshot is listed without a size: {listed}"),
                )
            })?;
            log(&format!(
                "  [{}] function snapshot {} ({} pages, over {}) after a {} start, {:.1} s",
                w.name,
                size.snapshot,
                size.layer_pages,
                size.parent_image.as_deref().unwrap_or("no image"),
                first.path,
                t0.elapsed().as_secs_f64()
            ));
            return Ok(size);
        }
        if t0.elapsed() > wait {
            return Err(fail(
                &w.name,
                format!(
                    "no function snapshot of {} was listed {} s after its first invocation (a \
                     {} start); see `ember logs {}` on the snapshot daemon, or raise \
                     --snapshot-wait",
                    w.function,
                    wait.as_secs(),
                    first.path,
                    w.function
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

const PHASES: &[&str] = &[
    "fallback",
    "sandbox",
    "standby",
    "fork",
    "restore",
    "hook",
    "spawn",
    "interpreter",
    "import_packages",
    "import_handler",
    "exec",
];

pub fn table(rows: &[Row]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\nend to end over HTTP, ms (p50 unless noted; phases are medians of Ember-Timing)"
    );
    let _ = write!(
        s,
        "{:<10} {:<18} {:>8} {:>8}",
        "workload", "path", "p50", "p99"
    );
    for p in PHASES {
        let _ = write!(s, " {:>9}", &p[..p.len().min(9)]);
    }
    let _ = writeln!(s, " {:>4}", "off");
    for r in rows {
        let base = &r.row;
        let _ = write!(
            s,
            "{:<10} {:<18} {:>8.2} {:>8.2}",
            base.workload, base.path, base.summary.p50_ms, base.summary.p99_ms
        );
        for p in PHASES {
            match r.phases.get(*p) {
                Some(v) => {
                    let _ = write!(s, " {v:>9.2}");
                }
                None => {
                    let _ = write!(s, " {:>9}", "-");
                }
            }
        }
        let _ = writeln!(s, " {:>4}", r.off_path);
    }
    let _ = writeln!(s, "\nratios of p50 (same run):");
    for r in ratios(rows) {
        let _ = writeln!(
            s,
            "  {:<10} {:<18} cold-boot/this {:>7.1}x   this/warm {:>7.1}x",
            r.workload, r.path, r.cold_over_path, r.path_over_warm
        );
    }
    s
}

/// Each function snapshot's size against its image's.
pub fn layer_table(layers: &[LayerSize]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\nfunction snapshots: the layer against the image it is over (a whole snapshot: no image)"
    );
    let _ = writeln!(
        s,
        "{:<10} {:>10} {:>9} {:>10} {:>9} {:>8} {:>8}",
        "workload", "layer MiB", "pages", "image MiB", "pages", "bytes", "pages"
    );
    let mib = |b: u64| format!("{:.1}", b as f64 / 1048576.0);
    let pct = |r: Option<f64>| r.map_or("-".to_string(), |r| format!("{:.1}%", r * 100.0));
    for l in layers {
        let _ = writeln!(
            s,
            "{:<10} {:>10} {:>9} {:>10} {:>9} {:>8} {:>8}",
            l.workload,
            mib(l.layer_bytes),
            l.layer_pages,
            l.image_bytes.map_or("-".to_string(), mib),
            l.image_pages.map_or("-".to_string(), |p| p.to_string()),
            pct(l.bytes_ratio),
            pct(l.pages_ratio)
        );
    }
    s
}

/// The Prebaking comparison.
#[derive(Debug, Clone, Serialize)]
pub struct CacheCost {
    pub workload: String,
    pub functions: usize,
    /// Page bytes of the one image all of them start from.
    pub shared_bytes: u64,
    /// Page bytes of each function's own snapshot (dumped warm, after one invocation).
    pub per_function_bytes: Vec<u64>,
    pub per_function_total: u64,
    /// 1 - shared / total.
    pub saving: f64,
}

struct Quiet;

impl LogSink for Quiet {
    fn line(&self, _: &str, _: Stream, _: &[u8]) {}
}

/// Code of the `i`-th of the functions sharing one image: the workload's own handler with a
/// different constant, so that each is its own function and snapshot.
fn variant(w: &Workload, i: usize) -> Result<String, BenchError> {
    use std::io::Read;
    let mut main = String::new();
    zip::ZipArchive::new(std::io::Cursor::new(&w.zip))
        .and_then(|mut z| {
            z.by_name("main.py")?.read_to_string(&mut main)?;
            Ok(())
        })
        .map_err(|e| fail(&w.name, format!("reading its main.py: {e}")))?;
    Ok(format!("{main}\n\nEMBER_BENCH_VARIANT = {i}\n"))
}

/// Starts `n` variants of `w` (imports, handler, one invocation), dumps each whole, and
/// compares their bytes with `shared_bytes`. Needs root (ptrace).
pub async fn cache_cost(
    w: &Workload,
    python: &Path,
    imports: &[String],
    shared_bytes: u64,
    n: usize,
    work: &Path,
) -> Result<CacheCost, BenchError> {
    let io = |e: std::io::Error| fail(&w.name, e.to_string());
    let bootstrap = ember_runtime::python::install_bootstrap(&work.join("runtime")).map_err(io)?;
    let event = w.manifest.bench_event();
    let mut per = Vec::with_capacity(n);
    for i in 0..n {
        let code = work.join(format!("{}-fn{i}", w.name));
        std::fs::create_dir_all(&code).map_err(io)?;
        std::fs::write(code.join("main.py"), variant(w, i)?).map_err(io)?;
        let spec = StartSpec {
            instance_id: format!("{}-fn{i}", w.name),
            function: format!("{}-fn{i}", w.name),
            version: 1,
            handler: w
                .manifest
                .handler
                .clone()
                .unwrap_or_else(|| "main.handler".into()),
            memory_mb: 1024,
            python: python.to_path_buf(),
            bootstrap: bootstrap.clone(),
            code_dir: code.clone(),
            imports: imports.to_vec(),
            env: BTreeMap::new(),
        };
        let (mut inst, _) = Instance::start(&spec, Arc::new(Quiet), |_| {})
            .await
            .map_err(|e| fail(&w.name, format!("starting function {i}: {e}")))?;
        let deadline = SystemTime::now() + Duration::from_secs(60);
        match inst.invoke("warm", deadline, &event).await {
            Ok(Outcome::Result { .. }) => {}
            other => {
                inst.kill();
                return Err(fail(&w.name, format!("function {i}: {other:?}")));
            }
        }
        let (pid, out) = (
            inst.pid() as i32,
            work.join(format!("{}-fn{i}.img", w.name)),
        );
        // Only the pages are compared: every descriptor it holds is declared the caller's.
        let inherited: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map_err(io)?
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect();
        let dumped = tokio::task::spawn_blocking(move || {
            ember_snap::dump(
                pid,
                &out,
                &DumpOptions {
                    inherited,
                    ..Default::default()
                },
            )
        })
        .await;
        inst.kill();
        let stats = dumped
            .map_err(|e| fail(&w.name, e.to_string()))?
            .map_err(|e| fail(&w.name, format!("dumping function {i}: {e}")))?;
        per.push(stats.pages * ember_snap::image::PAGE);
        let _ = std::fs::remove_dir_all(work.join(format!("{}-fn{i}.img", w.name)));
    }
    let total: u64 = per.iter().sum();
    Ok(CacheCost {
        workload: w.name.clone(),
        functions: n,
        shared_bytes,
        per_function_bytes: per,
        per_function_total: total,
        saving: 1.0 - shared_bytes as f64 / total.max(1) as f64,
    })
}

pub fn cache_table(c: &[CacheCost]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\ncache cost: functions sharing one image vs. one snapshot per warm function (Prebaking)"
    );
    let _ = writeln!(
        s,
        "{:<10} {:>4} {:>14} {:>18} {:>16} {:>8}",
        "workload", "fns", "shared MiB", "per-function MiB", "each (p50) MiB", "saving"
    );
    for r in c {
        let mut each = r.per_function_bytes.clone();
        each.sort_unstable();
        let mid = each.get(each.len() / 2).copied().unwrap_or(0);
        let _ = writeln!(
            s,
            "{:<10} {:>4} {:>14.1} {:>18.1} {:>16.1} {:>7.1}%",
            r.workload,
            r.functions,
            r.shared_bytes as f64 / 1048576.0,
            r.per_function_total as f64 / 1048576.0,
            mid as f64 / 1048576.0,
            r.saving * 100.0
        );
    }
    s
}

/// The bar plot: per workload, cold boot, each policy's image start, the function snapshot
/// start, and warm.
pub fn write_svg(
    rows: &[Row],
    image_paths: &[String],
    path: &Path,
) -> Result<(), crate::plot::PlotError> {
    use plotters::style::RGBColor;
    let plot_rows: Vec<crate::report::Row> = rows.iter().map(|r| r.row.clone()).collect();
    let names = image_paths;
    let mut series: Vec<(&str, RGBColor)> = vec![("cold-boot", RGBColor(200, 80, 60))];
    for (i, n) in names.iter().enumerate() {
        let shade = 100u8.saturating_add((i as u8).saturating_mul(50));
        series.push((n, RGBColor(60, shade, 200)));
    }
    series.push(("function-snapshot", RGBColor(230, 160, 30)));
    series.push(("warm", RGBColor(90, 170, 90)));
    crate::plot::bars_svg(
        &plot_rows,
        &series,
        "Start from a dependency image vs. cold boot and warm (p50, p99 whisker), ms",
        path,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timing_headers_parse_and_bad_parts_are_skipped() {
        let t = parse_timing("queue;dur=0.05, sandbox;dur=12.5, restore;dur=x, exec;dur=3");
        assert_eq!(t.get("sandbox"), Some(&12.5));
        assert_eq!(t.get("exec"), Some(&3.0));
        assert!(!t.contains_key("restore"));
        assert!(parse_timing("").is_empty());
    }

    fn sample(path: &str, ms: f64, timing: &str) -> Sample {
        Sample {
            workload: "sk".into(),
            path: path.into(),
            phase: "cold".into(),
            status: 200,
            latency_ms: ms,
            timing: timing.into(),
            exec_ms: None,
        }
    }

    #[test]
    fn the_snapshot_row_counts_starts_off_its_path_and_its_ratios_are_against_cold_and_warm() {
        let rows = vec![
            row(
                "sk",
                "cold-boot",
                "cold-boot",
                &[sample("cold-boot", 1000.0, "")],
            ),
            row(
                "sk",
                "image-eager",
                "image",
                &[sample("image", 100.0, "restore;dur=50")],
            ),
            row(
                "sk",
                "function-snapshot",
                "function-snapshot",
                &[
                    sample("function-snapshot", 20.0, "restore;dur=8, hook;dur=1"),
                    sample("function-snapshot", 10.0, "restore;dur=6, hook;dur=3"),
                    sample("image", 90.0, "restore;dur=40"),
                ],
            ),
            row("sk", "warm", "warm", &[sample("warm", 0.5, "exec;dur=0.2")]),
        ];
        let fs = &rows[2];
        assert_eq!(fs.off_path, 1);
        assert_eq!(fs.row.summary.p50_ms, 20.0);
        assert_eq!(fs.phases.get("restore"), Some(&8.0));
        let r = ratios(&rows);
        assert_eq!(
            r.iter().map(|r| r.path.as_str()).collect::<Vec<_>>(),
            ["image-eager", "function-snapshot"]
        );
        assert_eq!((r[1].cold_over_path, r[1].path_over_warm), (50.0, 40.0));
        assert_eq!((r[0].cold_over_path, r[0].path_over_warm), (10.0, 200.0));
        let t = table(&rows);
        assert!(t.contains("function-snapshot"), "{t}");
        assert!(
            t.contains("function-snapshot  cold-boot/this    50.0x   this/warm    40.0x"),
            "{t}"
        );
        // Without a warm row there is nothing to compare with.
        assert!(ratios(&rows[..3]).is_empty());
    }

    #[test]
    fn a_layer_is_measured_against_its_parent_image_and_a_whole_snapshot_has_none() {
        let snaps = serde_json::json!({"snapshots": [
            {"id": "s1", "function": "numpy", "parent_image": "img1", "bytes": 2000, "pages": 10},
            {"id": "s2", "function": "hello", "parent_image": null, "bytes": 500, "pages": 4},
        ]});
        let images = serde_json::json!({"images": [
            {"id": "img0", "bytes": 1, "pages": 1},
            {"id": "img1", "bytes": 20000, "pages": 200},
        ]});
        let l = layer_size("numpy", "numpy", &snaps, &images).unwrap();
        assert_eq!(
            (l.layer_bytes, l.image_bytes, l.bytes_ratio, l.pages_ratio),
            (2000, Some(20000), Some(0.1), Some(0.05))
        );
        let whole = layer_size("hello", "hello", &snaps, &images).unwrap();
        assert_eq!((whole.image_bytes, whole.bytes_ratio), (None, None));
        assert!(layer_size("x", "x", &snaps, &images).is_none());
        let t = layer_table(&[l, whole]);
        assert!(t.contains("10.0%"), "{t}");
        assert!(t.contains("hello"), "{t}");
    }
}
