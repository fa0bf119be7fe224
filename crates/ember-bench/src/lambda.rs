//! `ember bench lambda`: the "Cooling Down FaaS" setting. A native helloworld (Ember's
//! `ember-hello`) started fresh for every request, cold-only, beside the same executable kept
//! warm, at several numbers of concurrent requests, with Ember's own overhead measured in the
//! same run:
//!
//! | series | what runs per request |
//! |---|---|
//! | `native cold-only` | a new sandbox, the executable (event on stdin), its exit |
//! | `provided cold-only` | a new sandbox, the executable as a Runtime API client, its first `next` |
//! | `provided warm` | a kept instance's `next` returns the event |
//! | `dry-run` | Lambda's `DryRun`: the HTTP API and the function lookup, no instance |
//!
//! Rounds interleave the series, so each sees the same machine. A request's platform
//! overhead is its latency minus what the sandbox, the process start and the function took
//! (from `Ember-Timing`): HTTP, routing, queueing and bookkeeping.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use ember_api::client::Client;
use serde::Serialize;

use crate::driver::BenchError;
use crate::images::parse_timing;
use crate::report::Row;
use crate::stats::{Summary, summarize};

pub const SERIES: [&str; 4] = [
    "native cold-only",
    "provided cold-only",
    "provided warm",
    "dry-run",
];

/// The functions of the experiment, named `<prefix>hello-native` etc.
pub const FUNCTIONS: [&str; 3] = ["hello-native", "hello-cold", "hello-warm"];

/// Function (without its prefix) and invocation type of each series.
fn target(series: &str) -> (&'static str, &'static str) {
    match series {
        "native cold-only" => ("hello-native", "RequestResponse"),
        "provided cold-only" => ("hello-cold", "RequestResponse"),
        "provided warm" => ("hello-warm", "RequestResponse"),
        _ => ("hello-warm", "DryRun"),
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct LambdaSample {
    pub series: String,
    pub concurrency: usize,
    pub latency_ms: f64,
    pub timing: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct LambdaRow {
    pub series: String,
    pub concurrency: usize,
    #[serde(flatten)]
    pub summary: Summary,
    /// Latency minus sandbox, process start and function time.
    pub platform: Summary,
    /// Median of each `Ember-Timing` phase.
    pub phases: BTreeMap<String, f64>,
}

fn fail(detail: String) -> BenchError {
    BenchError::setup("hello", detail)
}

/// A zip holding `exe` as `name`, executable.
fn zip_exe(name: &str, exe: &[u8]) -> Result<Vec<u8>, BenchError> {
    use std::io::Write;
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default().unix_permissions(0o755);
    w.start_file(name, opts).map_err(|e| fail(e.to_string()))?;
    w.write_all(exe).map_err(|e| fail(e.to_string()))?;
    Ok(w.finish().map_err(|e| fail(e.to_string()))?.into_inner())
}

/// Deploys the three functions of the experiment from the helloworld executable, each
/// name prefixed with `prefix`.
pub async fn deploy(client: &Client, hello: &Path, prefix: &str) -> Result<(), BenchError> {
    let exe = std::fs::read(hello).map_err(|e| {
        fail(format!(
            "reading {}: {e} (built beside `ember` by cargo build; or pass --hello)",
            hello.display()
        ))
    })?;
    let b64 = |z: Vec<u8>| base64::Engine::encode(&base64::engine::general_purpose::STANDARD, z);
    let native = b64(zip_exe("hello", &exe)?);
    let provided = b64(zip_exe("bootstrap", &exe)?);
    let functions = [
        (FUNCTIONS[0], "native", "hello", false, &native),
        (FUNCTIONS[1], "provided", "hello", true, &provided),
        (FUNCTIONS[2], "provided", "hello", false, &provided),
    ];
    for (name, runtime, handler, cold_only, zip) in functions {
        let name = format!("{prefix}{name}");
        let body = serde_json::json!({
            "runtime": runtime, "handler": handler, "cold_only": cold_only,
            "memory_mb": 128, "max_instances": 64, "code_zip": zip,
        });
        client
            .deploy(&name, &body, &mut |_| {})
            .await
            .map_err(|e| fail(format!("deploying {name}: {e}")))?;
    }
    Ok(())
}

/// `n` requests of one series at once.
async fn burst(
    client: &Client,
    prefix: &str,
    series: &str,
    n: usize,
) -> Result<Vec<LambdaSample>, BenchError> {
    let (name, kind) = target(series);
    let name: std::sync::Arc<str> = format!("{prefix}{name}").into();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        let c = client.clone();
        let name = name.clone();
        set.spawn(async move {
            let event = format!(r#"{{"name": "r{i}"}}"#).into_bytes();
            let t0 = Instant::now();
            let r = c.lambda_invoke(&name, kind, event).await;
            (t0.elapsed().as_secs_f64() * 1e3, r)
        });
    }
    let mut out = Vec::new();
    for (ms, r) in set.join_all().await {
        let r = r.map_err(|e| fail(format!("{series}: {e}")))?;
        if r.error.is_some() || !(200..300).contains(&r.status) {
            return Err(fail(format!(
                "{series}: {} {}",
                r.status,
                String::from_utf8_lossy(&r.body)
            )));
        }
        out.push(LambdaSample {
            series: series.to_string(),
            concurrency: n,
            latency_ms: ms,
            timing: r.timing,
        });
    }
    Ok(out)
}

/// Runs every series at every concurrency, `rounds` bursts each, interleaved, on the
/// functions [`deploy`] made with `prefix`.
pub async fn run(
    client: &Client,
    prefix: &str,
    parallel: &[usize],
    rounds: usize,
) -> Result<Vec<LambdaSample>, BenchError> {
    let mut samples = Vec::new();
    for &n in parallel {
        // n warm instances before the warm series is measured, and a first cold start of
        // each function outside the samples.
        for s in SERIES {
            burst(client, prefix, s, n).await?;
        }
        for _ in 0..rounds {
            for s in SERIES {
                samples.extend(burst(client, prefix, s, n).await?);
            }
        }
    }
    Ok(samples)
}

pub fn rows(samples: &[LambdaSample]) -> Vec<LambdaRow> {
    let mut groups: BTreeMap<(usize, usize), Vec<&LambdaSample>> = BTreeMap::new();
    for s in samples {
        let i = SERIES.iter().position(|x| *x == s.series).unwrap_or(9);
        groups.entry((s.concurrency, i)).or_default().push(s);
    }
    groups
        .into_values()
        .map(|v| {
            let lat: Vec<f64> = v.iter().map(|s| s.latency_ms).collect();
            let timings: Vec<BTreeMap<String, f64>> =
                v.iter().map(|s| parse_timing(&s.timing)).collect();
            let platform: Vec<f64> = v
                .iter()
                .zip(&timings)
                .map(|(s, t)| {
                    let inside: f64 = ["sandbox", "spawn", "runtime_init", "exec"]
                        .iter()
                        .filter_map(|p| t.get(*p))
                        .sum();
                    s.latency_ms - inside
                })
                .collect();
            let mut names: Vec<&String> = timings.iter().flat_map(|t| t.keys()).collect();
            names.sort();
            names.dedup();
            let phases = names
                .into_iter()
                .map(|n| {
                    let vals: Vec<f64> = timings.iter().filter_map(|t| t.get(n).copied()).collect();
                    (n.clone(), summarize(&vals).p50_ms)
                })
                .collect();
            LambdaRow {
                series: v[0].series.clone(),
                concurrency: v[0].concurrency,
                summary: summarize(&lat),
                platform: summarize(&platform),
                phases,
            }
        })
        .collect()
}

pub fn table(rows: &[LambdaRow]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<20} {:>5} {:>5} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "series",
        "conc",
        "n",
        "p50 ms",
        "p99 ms",
        "platform",
        "sandbox",
        "spawn",
        "rt init",
        "exec"
    );
    let ph = |r: &LambdaRow, p: &str| {
        r.phases
            .get(p)
            .map_or("-".to_string(), |v| format!("{v:.2}"))
    };
    for r in rows {
        let _ = writeln!(
            out,
            "{:<20} {:>5} {:>5} {:>9.2} {:>9.2} {:>9.2} {:>9} {:>9} {:>9} {:>9}",
            r.series,
            r.concurrency,
            r.summary.count,
            r.summary.p50_ms,
            r.summary.p99_ms,
            r.platform.p50_ms,
            ph(r, "sandbox"),
            ph(r, "spawn"),
            ph(r, "runtime_init"),
            ph(r, "exec"),
        );
    }
    let p50 = |s: &str, c: usize| {
        rows.iter()
            .find(|r| r.series == s && r.concurrency == c)
            .map(|r| r.summary.p50_ms)
    };
    let mut cs: Vec<usize> = rows.iter().map(|r| r.concurrency).collect();
    cs.dedup();
    for c in cs {
        if let (Some(cold), Some(warm)) = (p50("native cold-only", c), p50("provided warm", c)) {
            let _ = writeln!(
                out,
                "concurrency {c}: native cold-only p50 is {:.1}x warm p50 ({cold:.2} ms vs {warm:.2} ms)",
                cold / warm
            );
        }
    }
    out
}

/// The plot: per concurrency, p50 bars and p99 whiskers of each series.
pub fn write_svg(rows: &[LambdaRow], path: &Path) -> Result<(), crate::plot::PlotError> {
    use plotters::style::RGBColor;
    let series = [
        (SERIES[0], RGBColor(0xe3, 0x4a, 0x33)),
        (SERIES[1], RGBColor(0xfd, 0xae, 0x61)),
        (SERIES[2], RGBColor(0x2b, 0x8c, 0xbe)),
        (SERIES[3], RGBColor(0x99, 0x99, 0x99)),
    ];
    let rows: Vec<Row> = rows
        .iter()
        .map(|r| Row {
            workload: format!("{} concurrent", r.concurrency),
            path: r.series.clone(),
            summary: r.summary,
        })
        .collect();
    crate::plot::bars_svg(
        &rows,
        &series,
        "ember bench lambda: native helloworld, p50 (bar) and p99 (whisker), ms, log scale",
        path,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_split_platform_time_from_sandbox_start_and_function() {
        let s = |series: &str, ms: f64, timing: &str| LambdaSample {
            series: series.into(),
            concurrency: 1,
            latency_ms: ms,
            timing: timing.into(),
        };
        let samples = vec![
            s(
                "native cold-only",
                5.0,
                "sandbox;dur=1.0, spawn;dur=2.0, exec;dur=1.0",
            ),
            s("provided warm", 0.8, "exec;dur=0.5"),
        ];
        let r = rows(&samples);
        assert_eq!(r[0].series, "native cold-only");
        assert!((r[0].platform.p50_ms - 1.0).abs() < 1e-9);
        assert!((r[1].platform.p50_ms - 0.3).abs() < 1e-9);
        assert!(table(&r).contains("6.2x warm"));
    }
}
