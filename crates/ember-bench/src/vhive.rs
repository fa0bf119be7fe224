//! `ember bench vhive`: vHive's snapshot modes (Ustiugov's thesis, Table 6.2, Fig. 6.1-6.2)
//! on Ember: a function's cold start with no snapshots, from a local function snapshot,
//! from the snapshot store without a local copy (restored lazily, and fetched whole), and
//! from the store's copy cached locally, on a real S3-compatible server, one run
//! interleaved.
//!
//! ```text
//! daemons   baseline   snapshots off, images off: every start a cold boot
//!           local      remote mode, the producer: builds the image, takes the function's
//!                      snapshot (uploaded), and restores each start from its own copy
//!           remote     remote mode, its own home: fetched the image at deploy; before each
//!                      start its copy of the snapshot is removed (once the last start's
//!                      background fetch has made it whole), so the start restores it lazily
//!                      from the store: the producer's recorded working set first
//!           remote-whole  the same with --no-lazy-remote: the start fetches the snapshot
//!                      whole, then restores it
//!           cached     remote mode, its own home: prefetched the snapshot once its image
//!                      was ready, then restores each start from its cached copy
//! per round, per workload, per mode in turn: stop the function's instances, invoke once
//! ```
//!
//! Every daemon restores (no templates), so that what differs is where the snapshot is.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use ember_api::client::Client;
use plotters::prelude::*;
use serde::Serialize;

use crate::driver::{BenchError, Sample, deploy, one};
use crate::stats::percentile;
use crate::workloads::Workload;

/// The modes, in the order each round visits them.
pub const MODES: [&str; 5] = [
    "baseline",
    "local",
    "remote",
    "remote-whole",
    "remote-cached",
];

/// The daemons of one run, one per mode (in [`MODES`] order).
pub struct Daemons {
    pub baseline: Client,
    pub local: Client,
    pub remote: Client,
    pub whole: Client,
    pub cached: Client,
}

impl Daemons {
    fn of(&self, mode: &str) -> &Client {
        match mode {
            "baseline" => &self.baseline,
            "local" => &self.local,
            "remote" => &self.remote,
            "remote-whole" => &self.whole,
            _ => &self.cached,
        }
    }
}

/// One workload's latencies in one mode.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub workload: String,
    pub mode: String,
    pub count: usize,
    pub p25_ms: f64,
    pub p50_ms: f64,
    pub p75_ms: f64,
    pub p90_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
    /// Median of each `Ember-Timing` phase, ms (`fetch` is the store's part).
    pub phases: BTreeMap<String, f64>,
    /// Starts that took another path than the mode's (a fallback): kept in the figures,
    /// counted here.
    pub off_path: usize,
}

fn err(w: &Workload, why: &str) -> BenchError {
    BenchError::setup(&w.name, why)
}

fn client_err(w: &Workload) -> impl Fn(ember_api::client::ClientError) -> BenchError + '_ {
    move |source| BenchError::Client {
        workload: w.name.clone(),
        source,
    }
}

/// Polls `f` every 200 ms until it gives a value or `limit` passes.
async fn until<T, F>(limit: Duration, mut f: impl FnMut() -> F) -> Option<T>
where
    F: std::future::Future<Output = Option<T>>,
{
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if let Some(v) = f().await {
            return Some(v);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    None
}

/// The entry of `function` in daemon `c`'s snapshot listing, if any.
async fn snapshot_of(c: &Client, function: &str) -> Option<serde_json::Value> {
    let v = c.snapshots().await.ok()?;
    v["snapshots"]
        .as_array()?
        .iter()
        .find(|s| s["function"] == function)
        .cloned()
}

/// The id of the image daemon `c` holds for `function`'s package environment.
async fn image_of(c: &Client, function: &str) -> Option<String> {
    let f = c.get(function).await.ok()?;
    let v = c.images().await.ok()?;
    v["images"]
        .as_array()?
        .iter()
        .find(|i| i["env_key"] == f["env_key"])
        .and_then(|i| i["id"].as_str().map(String::from))
}

/// How many sets of `kind` daemon `c` fetched from the store (its metrics).
async fn fetched(c: &Client, kind: &str) -> u64 {
    let Ok(text) = c.metrics().await else {
        return 0;
    };
    let series = format!("ember_store_fetches_total{{kind=\"{kind}\",result=\"fetched\"}}");
    crate::snapshot_cache::metric_sum(&text, &series) as u64
}

/// Deploys `w` everywhere and readies each mode: the producer's image and snapshot in the
/// store, the other remote daemons' images fetched, the cached daemon's snapshot fetched.
pub async fn prepare(
    d: &Daemons,
    w: &Workload,
    wait: Duration,
    log: &(dyn Fn(&str) + Sync),
) -> Result<(), BenchError> {
    let event = w.manifest.bench_event();
    deploy(&d.local, w, log).await?;
    deploy(&d.baseline, w, log).await?;
    // Every function has an image (a function without packages, the bare runtime's).
    let image = until(wait, || image_of(&d.local, &w.function))
        .await
        .ok_or_else(|| err(w, "the local daemon built no image"))?;
    log(&format!("  [{}] image {image} ready", w.name));
    // The first start takes the snapshot, and may teach the image imports (it is rebuilt,
    // and the snapshot over the old one is taken again at a later start). The bench starts
    // the function again until the image has nothing pending and both are in the store,
    // the snapshot over the image as it is now, with its working set recorded (its first
    // restore's, uploaded again).
    let t0 = Instant::now();
    let mut last_start: Option<Instant> = None;
    let stored = loop {
        if last_start.is_none_or(|t| t.elapsed() > Duration::from_secs(5)) {
            d.local
                .stop_instances(&w.function)
                .await
                .map_err(client_err(w))?;
            one(&d.local, w, &event, "prepare").await?;
            last_start = Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let s = snapshot_of(&d.local, &w.function).await;
        let images = d.local.images().await.map_err(client_err(w))?;
        let img = images["images"]
            .as_array()
            .and_then(|a| a.iter().find(|i| i["id"] == image.as_str()).cloned());
        if let (Some(s), Some(img)) = (s, img)
            && s["remote"] == "stored"
            && s["working_set_pages"].as_u64() > Some(0)
            && img["remote"] == "stored"
            && img["imports_pending"] == 0
            && s["created_at"].as_u64() >= img["created_at"].as_u64()
        {
            break s;
        }
        if t0.elapsed() > wait {
            return Err(err(
                w,
                "the local daemon's image or snapshot never settled in the store",
            ));
        }
    };
    log(&format!(
        "  [{}] snapshot {} in the store",
        w.name,
        stored["store_key"].as_str().unwrap_or("?")
    ));
    for c in [&d.remote, &d.whole, &d.cached] {
        let (images_before, snapshots_before) =
            (fetched(c, "image").await, fetched(c, "snapshot").await);
        deploy(c, w, log).await?;
        let has_image = until(wait, || async {
            (image_of(c, &w.function).await.as_ref() == Some(&image)).then_some(())
        })
        .await;
        has_image.ok_or_else(|| err(w, "a remote daemon has no image for the function"))?;
        // Fetched, not built (a built one has the same id).
        if fetched(c, "image").await <= images_before {
            return Err(err(
                w,
                "a remote daemon built the image instead of fetching it from the store",
            ));
        }
        // It prefetches the snapshot once the image is ready; the cached daemon keeps it.
        let theirs = until(wait, || snapshot_of(c, &w.function))
            .await
            .ok_or_else(|| err(w, "a remote daemon has no snapshot of the function"))?;
        if theirs["store_key"] != stored["store_key"] {
            return Err(err(
                w,
                "a remote daemon fetched another snapshot than the producer's (its image is \
                 another version)",
            ));
        }
        if fetched(c, "snapshot").await <= snapshots_before {
            return Err(err(
                w,
                "a remote daemon took its own snapshot instead of fetching the store's",
            ));
        }
    }
    Ok(())
}

/// `runs` rounds over the modes; the samples in [`MODES`] order per round.
pub async fn measure(
    d: &Daemons,
    w: &Workload,
    runs: usize,
    log: &(dyn Fn(&str) + Sync),
) -> Result<Vec<(String, Sample)>, BenchError> {
    let event = w.manifest.bench_event();
    let mut out = Vec::new();
    for round in 0..runs {
        for mode in MODES {
            let c = d.of(mode);
            if mode == "remote" || mode == "remote-whole" {
                // No local copy: the start fetches the snapshot from the store. A lazy start's
                // background fetch adds it once whole: waited for, so that no start finds
                // that fetch under way.
                let s = until(Duration::from_secs(120), || snapshot_of(c, &w.function)).await;
                if let Some(id) = s.as_ref().and_then(|s| s["id"].as_str()) {
                    c.remove_snapshot(id, false).await.map_err(client_err(w))?;
                }
            }
            c.stop_instances(&w.function).await.map_err(client_err(w))?;
            let s = one(c, w, &event, mode).await?;
            out.push((mode.to_string(), s));
        }
        if (round + 1) % 10 == 0 {
            log(&format!("  [{}] {} rounds", w.name, round + 1));
        }
    }
    Ok(out)
}

/// Whether sample `s` took `mode`'s path.
fn on_path(mode: &str, s: &Sample) -> bool {
    match mode {
        "baseline" => s.path == "cold-boot",
        // Lazily: fetched in part, no layer loaded whole.
        "remote" => {
            s.path == "function-snapshot"
                && s.timing.contains("fetch;")
                && !s.timing.contains("load;")
        }
        "remote-whole" => {
            s.path == "function-snapshot"
                && s.timing.contains("fetch;")
                && s.timing.contains("load;")
        }
        _ => s.path == "function-snapshot" && !s.timing.contains("fetch;"),
    }
}

/// The rows of one workload's samples.
pub fn rows(w: &str, samples: &[(String, Sample)]) -> Vec<Row> {
    MODES
        .iter()
        .filter_map(|mode| {
            let mine: Vec<&Sample> = samples
                .iter()
                .filter(|(m, _)| m == mode)
                .map(|(_, s)| s)
                .collect();
            if mine.is_empty() {
                return None;
            }
            let mut lat: Vec<f64> = mine.iter().map(|s| s.latency_ms).collect();
            lat.sort_by(|a, b| a.total_cmp(b));
            let phases = crate::images::phase_medians(mine.iter().copied());
            Some(Row {
                workload: w.to_string(),
                mode: mode.to_string(),
                count: lat.len(),
                p25_ms: percentile(&lat, 25.0),
                p50_ms: percentile(&lat, 50.0),
                p75_ms: percentile(&lat, 75.0),
                p90_ms: percentile(&lat, 90.0),
                p95_ms: percentile(&lat, 95.0),
                p99_ms: percentile(&lat, 99.0),
                min_ms: lat[0],
                max_ms: lat[lat.len() - 1],
                phases,
                off_path: mine.iter().filter(|s| !on_path(mode, s)).count(),
            })
        })
        .collect()
}

/// Per workload: remote (lazy) p50 over local p50, remote-whole p50 over local p50, cached
/// p50 over local p50, and baseline p50 over cached p50 (vHive's speed-up of
/// remote-with-cache over no snapshots).
pub fn ratios(rows: &[Row]) -> BTreeMap<String, BTreeMap<String, f64>> {
    let mut out: BTreeMap<String, BTreeMap<String, f64>> = BTreeMap::new();
    let p50 = |w: &str, m: &str| {
        rows.iter()
            .find(|r| r.workload == w && r.mode == m)
            .map(|r| r.p50_ms)
    };
    for r in rows.iter().filter(|r| r.mode == "local") {
        let w = r.workload.as_str();
        let e = out.entry(w.to_string()).or_default();
        if let (Some(a), Some(b)) = (p50(w, "remote"), p50(w, "local")) {
            e.insert("remote/local".into(), a / b);
        }
        if let (Some(a), Some(b)) = (p50(w, "remote-whole"), p50(w, "local")) {
            e.insert("whole/local".into(), a / b);
        }
        if let (Some(a), Some(b)) = (p50(w, "remote-cached"), p50(w, "local")) {
            e.insert("cached/local".into(), a / b);
        }
        if let (Some(a), Some(b)) = (p50(w, "baseline"), p50(w, "remote-cached")) {
            e.insert("baseline/cached".into(), a / b);
        }
    }
    out
}

pub fn table(rows: &[Row]) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "{:<14} {:<14} {:>5} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8} {:>4}",
        "workload",
        "mode",
        "n",
        "p50 ms",
        "p90 ms",
        "p95 ms",
        "p99 ms",
        "fetch ms",
        "restore",
        "off"
    );
    for r in rows {
        let ph = |k: &str| {
            r.phases
                .get(k)
                .map(|v| format!("{v:.2}"))
                .unwrap_or_else(|| "-".into())
        };
        let _ = writeln!(
            t,
            "{:<14} {:<14} {:>5} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9} {:>8} {:>4}",
            r.workload,
            r.mode,
            r.count,
            r.p50_ms,
            r.p90_ms,
            r.p95_ms,
            r.p99_ms,
            ph("fetch"),
            ph("restore"),
            r.off_path
        );
    }
    for (w, rs) in ratios(rows) {
        let parts: Vec<String> = rs.iter().map(|(k, v)| format!("{k} {v:.2}x")).collect();
        let _ = writeln!(t, "{w}: {}", parts.join(", "));
    }
    for r in rows.iter().filter(|r| r.mode == "remote") {
        let _ = writeln!(
            t,
            "{} remote, phase by phase (p50 ms): {}",
            r.workload,
            trace(r)
        );
    }
    t
}

/// The phases of a start in the order they happen (`Ember-Timing`'s names); `fetch` is
/// left out for its parts.
const PHASE_ORDER: [&str; 18] = [
    "queue",
    "fallback",
    "fetch_manifest",
    "fetch_bundle",
    "fetch_open",
    "load",
    "sandbox",
    "standby",
    "fork",
    "resume",
    "restore",
    "hook",
    "spawn",
    "runtime_init",
    "interpreter",
    "import_packages",
    "import_handler",
    "exec",
];

/// A mode's median start, phase by phase: `fetch_manifest 3.10, fetch_bundle 8.40, ...`.
fn trace(r: &Row) -> String {
    PHASE_ORDER
        .iter()
        .filter_map(|k| r.phases.get(*k).map(|v| format!("{k} {v:.2}")))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A box plot per workload and mode: the box from p25 to p75, the median across it,
/// whiskers from the minimum to p99; log scale.
pub fn write_svg(rows: &[Row], path: &Path) -> Result<(), crate::plot::PlotError> {
    let err = |e: &dyn std::fmt::Display| crate::plot::PlotError::new(path, e);
    let workloads = crate::plot::workloads_of(rows.iter().map(|r| r.workload.as_str()));
    let range = crate::plot::positive_range(rows.iter().flat_map(|r| [r.min_ms, r.p99_ms]));
    let Some((lo, hi)) = range.filter(|_| !workloads.is_empty()) else {
        return Err(err(&"no samples to plot"));
    };
    let (lo, hi) = (lo / 1.5, hi * 1.5);
    let root = SVGBackend::new(path, (960, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let title = "ember bench vhive: cold start by snapshot mode (box p25-p75, median, whiskers min-p99), ms";
    let mut chart =
        crate::plot::latency_chart(&root, title, 16, &workloads, lo, hi, "latency (ms)")
            .map_err(|e| err(&e))?;
    let colors = [
        RGBColor(0xe3, 0x4a, 0x33),
        RGBColor(0x2b, 0x8c, 0xbe),
        RGBColor(0xfd, 0xae, 0x61),
        RGBColor(0x99, 0x70, 0xab),
        RGBColor(0x66, 0xbd, 0x63),
    ];
    let width = 0.8 / MODES.len() as f64;
    for (j, (mode, color)) in MODES.iter().zip(colors).enumerate() {
        let mut boxes = Vec::new();
        let mut lines = Vec::new();
        for r in rows.iter().filter(|r| r.mode == *mode) {
            let Some(i) = workloads.iter().position(|w| *w == r.workload) else {
                continue;
            };
            let x0 = i as f64 + 0.1 + j as f64 * width;
            let x1 = x0 + width * 0.8;
            let xm = (x0 + x1) / 2.0;
            boxes.push(Rectangle::new(
                [(x0, r.p25_ms.max(lo)), (x1, r.p75_ms.max(lo))],
                color.filled(),
            ));
            lines.push(PathElement::new(
                vec![(x0, r.p50_ms), (x1, r.p50_ms)],
                BLACK.stroke_width(2),
            ));
            lines.push(PathElement::new(
                vec![(xm, r.min_ms.max(lo)), (xm, r.p25_ms.max(lo))],
                BLACK.stroke_width(1),
            ));
            lines.push(PathElement::new(
                vec![(xm, r.p75_ms), (xm, r.p99_ms)],
                BLACK.stroke_width(1),
            ));
        }
        chart
            .draw_series(boxes)
            .map_err(|e| err(&e))?
            .label(*mode)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
        chart.draw_series(lines).map_err(|e| err(&e))?;
    }
    crate::plot::finish(chart, &root, SeriesLabelPosition::UpperRight).map_err(|e| err(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(path: &str, ms: f64, timing: &str) -> Sample {
        let mut s = Sample::fixture("numpy", path, ms, None);
        s.timing = timing.into();
        s
    }

    #[test]
    fn rows_ratios_and_plot_of_interleaved_samples() {
        let mut samples = Vec::new();
        for i in 0..20 {
            let x = i as f64;
            samples.push(("baseline".to_string(), sample("cold-boot", 140.0 + x, "")));
            samples.push((
                "local".to_string(),
                sample("function-snapshot", 20.0 + x / 10.0, "restore;dur=9.0"),
            ));
            samples.push((
                "remote".to_string(),
                sample(
                    "function-snapshot",
                    40.0 + x / 10.0,
                    "fetch;dur=20.0, fetch_manifest;dur=3.0, fetch_bundle;dur=12.0, \
                     fetch_open;dur=5.0, restore;dur=9.0, exec;dur=1.5",
                ),
            ));
            samples.push((
                "remote-whole".to_string(),
                sample(
                    "function-snapshot",
                    90.0 + x / 10.0,
                    "fetch;dur=60.0, load;dur=10.0, restore;dur=9.0",
                ),
            ));
            // One fell back to a cold boot: counted, not hidden.
            let path = if i == 3 {
                "cold-boot"
            } else {
                "function-snapshot"
            };
            samples.push((
                "remote-cached".to_string(),
                sample(path, 20.5 + x / 10.0, ""),
            ));
        }
        let rows = rows("numpy", &samples);
        assert_eq!(rows.len(), 5);
        let by = |m: &str| rows.iter().find(|r| r.mode == m).unwrap();
        assert_eq!(by("remote").phases["fetch"], 20.0);
        assert_eq!(by("remote").off_path, 0);
        assert_eq!(by("remote-whole").off_path, 0);
        assert_eq!(by("remote-cached").off_path, 1);
        assert!(
            by("local").p25_ms <= by("local").p50_ms && by("local").p50_ms <= by("local").p99_ms
        );
        let r = ratios(&rows);
        assert!(
            (r["numpy"]["remote/local"] - by("remote").p50_ms / by("local").p50_ms).abs() < 1e-9
        );
        let t = table(&rows);
        assert!(
            t.contains("remote-cached") && t.contains("remote/local"),
            "{t}"
        );
        assert!(
            t.contains(
                "numpy remote, phase by phase (p50 ms): fetch_manifest 3.00, fetch_bundle \
                 12.00, fetch_open 5.00, restore 9.00, exec 1.50"
            ),
            "{t}"
        );
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("vhive.svg");
        write_svg(&rows, &p).unwrap();
        let svg = std::fs::read_to_string(&p).unwrap();
        for m in MODES {
            assert!(svg.contains(m), "{m} missing from the plot");
        }
        assert!(write_svg(&[], &p).is_err());
    }
}
