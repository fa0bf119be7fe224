//! Turning samples into the tables a researcher reads and the JSON later experiments reuse.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::driver::{BenchOptions, Sample};
use crate::stats::{Summary, summarize};
use crate::workloads::ORDER;

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub workload: String,
    pub path: String,
    #[serde(flatten)]
    pub summary: Summary,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub started_unix: u64,
    pub url: String,
    pub options: BenchOptions,
    pub rows: Vec<Row>,
    /// Warm invoke latency minus the handler's own time, for the `noop` workload.
    pub platform_overhead: Option<Summary>,
    /// Per workload: cold-boot p50 divided by the bare-import p50 of the same run.
    pub cold_vs_bare: BTreeMap<String, f64>,
    /// Per workload: p50 of (cold-boot latency - handler time) over the bare-import p50: the
    /// start-up cost alone against the interpreter importing the same packages.
    pub start_vs_bare: BTreeMap<String, f64>,
    pub samples: Vec<Sample>,
}

fn order(w: &str) -> usize {
    ORDER.iter().position(|o| *o == w).unwrap_or(ORDER.len())
}

fn path_order(p: &str) -> usize {
    ["warm", "cold-boot", "bare-import"]
        .iter()
        .position(|o| *o == p)
        .unwrap_or(9)
}

impl Report {
    pub fn new(
        url: &str,
        options: BenchOptions,
        samples: Vec<Sample>,
        started_unix: u64,
    ) -> Report {
        let mut groups: BTreeMap<(usize, String, usize, String), Vec<f64>> = BTreeMap::new();
        for s in &samples {
            groups
                .entry((
                    order(&s.workload),
                    s.workload.clone(),
                    path_order(&s.path),
                    s.path.clone(),
                ))
                .or_default()
                .push(s.latency_ms);
        }
        let rows: Vec<Row> = groups
            .into_iter()
            .map(|((_, workload, _, path), v)| Row {
                workload,
                path,
                summary: summarize(&v),
            })
            .collect();
        let overhead: Vec<f64> = samples
            .iter()
            .filter(|s| s.workload == "noop" && s.path == "warm")
            .filter_map(|s| s.exec_ms.map(|e| s.latency_ms - e))
            .collect();
        let p50 = |w: &str, p: &str| {
            rows.iter()
                .find(|r| r.workload == w && r.path == p)
                .map(|r| r.summary.p50_ms)
        };
        let mut cold_vs_bare = BTreeMap::new();
        let mut start_vs_bare = BTreeMap::new();
        for r in rows.iter().filter(|r| r.path == "cold-boot") {
            if let Some(bare) = p50(&r.workload, "bare-import") {
                cold_vs_bare.insert(r.workload.clone(), r.summary.p50_ms / bare);
                let start: Vec<f64> = samples
                    .iter()
                    .filter(|s| s.workload == r.workload && s.path == "cold-boot")
                    .filter_map(|s| s.exec_ms.map(|e| s.latency_ms - e))
                    .collect();
                if !start.is_empty() {
                    start_vs_bare.insert(r.workload.clone(), summarize(&start).p50_ms / bare);
                }
            }
        }
        Report {
            started_unix,
            url: url.to_string(),
            options,
            rows,
            platform_overhead: (!overhead.is_empty()).then(|| summarize(&overhead)),
            cold_vs_bare,
            start_vs_bare,
            samples,
        }
    }

    pub fn table(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(
            t,
            "{:<11} {:<12} {:>6} {:>10} {:>10} {:>10}",
            "workload", "path", "count", "p50 ms", "p99 ms", "mean ms"
        );
        for r in &self.rows {
            let s = &r.summary;
            let _ = writeln!(
                t,
                "{:<11} {:<12} {:>6} {:>10.3} {:>10.3} {:>10.3}",
                r.workload, r.path, s.count, s.p50_ms, s.p99_ms, s.mean_ms
            );
        }
        if let Some(o) = &self.platform_overhead {
            let _ = writeln!(
                t,
                "\nplatform overhead (noop warm, latency - handler time): p50 {:.3} ms, p99 {:.3} ms, n={}",
                o.p50_ms, o.p99_ms, o.count
            );
        }
        if !self.cold_vs_bare.is_empty() {
            let _ = writeln!(
                t,
                "\n{:<11} {:>18} {:>26}",
                "workload", "cold-boot / bare", "(cold-boot - exec) / bare"
            );
        }
        for (w, ratio) in &self.cold_vs_bare {
            let start = self.start_vs_bare.get(w).copied().unwrap_or(f64::NAN);
            let _ = writeln!(t, "{w:<11} {ratio:>17.2}x {start:>25.2}x");
        }
        if !self.cold_vs_bare.is_empty() {
            let _ = writeln!(
                t,
                "(p50 over p50; bare = <env python> -I -c 'import <packages>; os._exit(0)', same run)"
            );
        }
        t
    }

    pub fn write_json(&self, path: &Path) -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let data = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(path, data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(w: &str, path: &str, ms: f64, exec: Option<f64>) -> Sample {
        Sample::fixture(w, path, ms, exec)
    }

    #[test]
    fn rows_ratios_and_overhead() {
        let opts = BenchOptions {
            cold: 1,
            warm: 2,
            concurrency: 1,
            baseline: 1,
        };
        let r = Report::new(
            "u",
            opts,
            vec![
                s("numpy", "cold-boot", 120.0, Some(1.0)),
                s("numpy", "bare-import", 100.0, None),
                s("noop", "warm", 0.5, Some(0.1)),
                s("noop", "warm", 0.7, Some(0.1)),
            ],
            0,
        );
        assert_eq!(r.rows[0].workload, "noop");
        assert!((r.cold_vs_bare["numpy"] - 1.2).abs() < 1e-9);
        let o = r.platform_overhead.unwrap();
        assert!((o.p50_ms - 0.4).abs() < 1e-9);
        assert!((r.start_vs_bare["numpy"] - 1.19).abs() < 1e-9);
        assert!(
            r.table().contains("numpy                    1.20x"),
            "{}",
            r.table()
        );
    }
}
