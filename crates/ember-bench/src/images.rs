//! `ember bench images`: the dependency-image rung of the start ladder end to end over HTTP,
//! against cold boot and warm in the same run (WarmSwap Fig. 5), and the cache cost of one
//! image shared by ten functions against ten per-function snapshots (WarmSwap Fig. 7; the
//! Prebaking baseline dumps each warm function whole).
//!
//! ```text
//! daemons: one with images off (cold boots), one per restore policy (images built up front)
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
use ember_snap::lazy::Policy;
use serde::Serialize;

use crate::driver::{BenchError, Sample, one};
use crate::stats::summarize;
use crate::workloads::Workload;

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Workload, path (`cold-boot`, `image-<policy>` or `warm`) and latency summary.
    #[serde(flatten)]
    pub row: crate::report::Row,
    /// Median of each phase of the `Ember-Timing` header, in ms.
    pub phases: BTreeMap<String, f64>,
    /// Samples that took another path than asked (an image start that fell back).
    pub off_path: usize,
}

/// The daemons of one run.
pub struct Ladder {
    pub cold: Client,
    pub images: Vec<(Policy, Client)>,
}

fn fail(w: &str, detail: String) -> BenchError {
    BenchError::Failed {
        workload: w.to_string(),
        status: 0,
        body: detail,
    }
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

fn row(workload: &str, path: &str, want: &str, samples: &[Sample]) -> Row {
    let lat: Vec<f64> = samples.iter().map(|s| s.latency_ms).collect();
    let mut phases: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for s in samples {
        for (k, v) in parse_timing(&s.timing) {
            phases.entry(k).or_default().push(v);
        }
    }
    Row {
        row: crate::report::Row {
            workload: workload.to_string(),
            path: path.to_string(),
            summary: summarize(&lat),
        },
        phases: phases
            .into_iter()
            .map(|(k, v)| (k, summarize(&v).p50_ms))
            .collect(),
        off_path: samples.iter().filter(|s| s.path != want).count(),
    }
}

/// Deploys `w` everywhere, builds its image on every image daemon, then measures.
pub async fn ladder(
    l: &Ladder,
    w: &Workload,
    rounds: usize,
    warm: usize,
    log: &(dyn Fn(&str) + Sync),
) -> Result<Vec<Row>, BenchError> {
    crate::driver::deploy(&l.cold, w, log).await?;
    for (policy, c) in &l.images {
        crate::driver::deploy(c, w, log).await?;
        let img = c
            .build_image(&w.manifest.packages.clone().unwrap_or_default())
            .await
            .map_err(|e| fail(&w.name, format!("building its image ({policy}): {e}")))?;
        log(&format!(
            "  [{}] image {} ({} pages) for {policy}",
            w.name, img["id"], img["pages"]
        ));
    }
    let event = w.manifest.bench_event();
    let mut cold = Vec::new();
    let mut from_image: Vec<Vec<Sample>> = vec![Vec::new(); l.images.len()];
    let stop = |c: &Client| {
        let c = c.clone();
        let name = w.function.clone();
        async move {
            c.stop_instances(&name)
                .await
                .map_err(|e| fail(&name, e.to_string()))
        }
    };
    for _ in 0..rounds {
        stop(&l.cold).await?;
        cold.push(one(&l.cold, w, &event, "cold").await?);
        for (i, (_, c)) in l.images.iter().enumerate() {
            stop(c).await?;
            from_image[i].push(one(c, w, &event, "cold").await?);
        }
    }
    one(&l.cold, w, &event, "warm-up").await?;
    let mut warm_samples = Vec::with_capacity(warm);
    for _ in 0..warm {
        warm_samples.push(one(&l.cold, w, &event, "warm").await?);
    }
    let mut rows = vec![row(&w.name, "cold-boot", "cold-boot", &cold)];
    for (i, (policy, _)) in l.images.iter().enumerate() {
        rows.push(row(
            &w.name,
            &format!("image-{policy}"),
            "image",
            &from_image[i],
        ));
    }
    rows.push(row(&w.name, "warm", "warm", &warm_samples));
    Ok(rows)
}

const PHASES: &[&str] = &[
    "fallback",
    "sandbox",
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
        "{:<10} {:<16} {:>8} {:>8}",
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
            "{:<10} {:<16} {:>8.2} {:>8.2}",
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
    let mut workloads: Vec<&str> = rows.iter().map(|r| r.row.workload.as_str()).collect();
    workloads.dedup();
    for w in workloads {
        let get = |p: &str| {
            rows.iter()
                .map(|r| &r.row)
                .find(|r| r.workload == w && r.path == p)
                .map(|r| r.summary.p50_ms)
        };
        let (Some(cold), Some(warm)) = (get("cold-boot"), get("warm")) else {
            continue;
        };
        for r in rows
            .iter()
            .map(|r| &r.row)
            .filter(|r| r.workload == w && r.path.starts_with("image-"))
        {
            let _ = writeln!(
                s,
                "  {w:<10} {:<16} cold/image {:>6.1}x   image/warm {:>6.1}x",
                r.path,
                cold / r.summary.p50_ms,
                r.summary.p50_ms / warm
            );
        }
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

/// The bar plot: per workload, cold boot, each policy's image start, and warm.
pub fn write_svg(
    rows: &[Row],
    policies: &[Policy],
    path: &Path,
) -> Result<(), crate::plot::PlotError> {
    use plotters::style::RGBColor;
    let plot_rows: Vec<crate::report::Row> = rows.iter().map(|r| r.row.clone()).collect();
    let names: Vec<String> = policies.iter().map(|p| format!("image-{p}")).collect();
    let mut series: Vec<(&str, RGBColor)> = vec![("cold-boot", RGBColor(200, 80, 60))];
    for (i, n) in names.iter().enumerate() {
        let shade = 100u8.saturating_add((i as u8).saturating_mul(50));
        series.push((n, RGBColor(60, shade, 200)));
    }
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
}
