//! `ember bench cluster` (vHive Fig. 6.3-6.5): a trace replayed through a cluster's gateway
//! once per placement policy, each on a cluster of its own (fresh nodes, its own prefix in the
//! snapshot store and in etcd), so that one policy's snapshots do not serve the other. What
//! each call started on, where it was placed and how long it took; the latency
//! distributions as box and violin plots; the gateway's throughput against a node's.

use serde::Serialize;

use crate::stats::{Summary, percentile, summarize};
use crate::trace::Shape;

/// One invocation of a replay through the gateway.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterCall {
    pub function: usize,
    pub shape: Shape,
    /// The rung it started on (`warm`, `hibernated`, `function-snapshot`, `image`,
    /// `cold-boot`), or `error`.
    pub start: String,
    pub latency_ms: f64,
    /// The node that served it (`Ember-Node`).
    pub node: String,
    /// What the placement found there (`Ember-Placement`'s tier).
    pub tier: String,
    /// The placement decision's own time, µs (`Ember-Placement`'s `us`).
    pub placement_us: f64,
    /// Nodes tried (1 unless one refused).
    pub tried: u32,
}

impl ClusterCall {
    /// Reads `Ember-Placement: <tier>;us=<µs>;tried=<n>` into (tier, µs, tried).
    pub fn parse_placement(h: &str) -> (String, f64, u32) {
        let mut parts = h.split(';');
        let tier = parts.next().unwrap_or_default().to_string();
        let (mut us, mut tried) = (f64::NAN, 0);
        for p in parts {
            if let Some(v) = p.strip_prefix("us=") {
                us = v.parse().unwrap_or(f64::NAN);
            } else if let Some(v) = p.strip_prefix("tried=") {
                tried = v.parse().unwrap_or(0);
            }
        }
        (tier, us, tried)
    }

    /// Whether it needed a new instance (any start but a warm one).
    pub fn cold(&self) -> bool {
        self.start != "warm" && self.start != "error"
    }
}

/// WarmSwap's remote pool (its Fig. 5): first starts of a function from its dependency
/// image, on the node that holds the image in memory (`local`), on a fresh node that restores
/// it from that node's memory (`pool`), on a fresh node from its own copy (`fresh-local`: the
/// same new process, the pages here), and a cold boot on the holder (`cold-boot`).
#[derive(Debug, Clone, Serialize)]
pub struct PoolRun {
    pub workload: String,
    /// The image's pages.
    pub image_pages: u64,
    pub starts: Vec<PoolStart>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PoolStart {
    pub round: usize,
    /// `local`, `fresh-local`, `pool` or `cold-boot`.
    pub kind: String,
    /// The rung it started on (`Ember-Start`), or `error`.
    pub start: String,
    pub latency_ms: f64,
    /// For `pool`: chunks the holder's page server gave.
    pub chunks_from_peers: u64,
    /// Its phases as the node timed them (`Ember-Timing`).
    pub timing: String,
}

impl PoolRun {
    /// The latencies of the starts of `kind` that started as they should.
    pub fn latency(&self, kind: &str) -> Summary {
        let ms: Vec<f64> = self
            .starts
            .iter()
            .filter(|s| s.kind == kind && s.start != "error")
            .map(|s| s.latency_ms)
            .collect();
        summarize(&ms)
    }

    /// Starts of `kind` that did not start as `want`.
    pub fn wrong(&self, kind: &str, want: &str) -> usize {
        self.starts
            .iter()
            .filter(|s| s.kind == kind && s.start != want)
            .count()
    }
}

/// One placement policy's replay.
#[derive(Debug, Clone, Serialize)]
pub struct PlacementRun {
    pub placement: String,
    pub calls: Vec<ClusterCall>,
    pub replay_s: f64,
}

impl PlacementRun {
    /// The share of calls that started on `rung`, in percent.
    pub fn share(&self, rung: &str) -> f64 {
        let n = self.calls.len().max(1) as f64;
        100.0 * self.calls.iter().filter(|c| c.start == rung).count() as f64 / n
    }

    pub fn latency(&self) -> Summary {
        summarize(&self.ms(|_| true))
    }

    /// The calls that needed a new instance.
    pub fn cold_latency(&self) -> Summary {
        summarize(&self.ms(ClusterCall::cold))
    }

    pub fn ms(&self, keep: impl Fn(&ClusterCall) -> bool) -> Vec<f64> {
        self.calls
            .iter()
            .filter(|c| keep(c))
            .map(|c| c.latency_ms)
            .collect()
    }

    /// The placement decisions' p50 and p99, µs.
    pub fn placement_us(&self) -> (f64, f64) {
        let mut us: Vec<f64> = self
            .calls
            .iter()
            .map(|c| c.placement_us)
            .filter(|u| u.is_finite())
            .collect();
        us.sort_by(|a, b| a.total_cmp(b));
        (percentile(&us, 50.0), percentile(&us, 99.0))
    }

    pub fn errors(&self) -> usize {
        self.calls.iter().filter(|c| c.start == "error").count()
    }
}

/// Requests per second of a closed loop against one target.
#[derive(Debug, Clone, Serialize)]
pub struct Throughput {
    /// `node` (a node's API, directly) or `gateway`.
    pub target: String,
    pub clients: usize,
    pub seconds: f64,
    pub requests: usize,
    pub errors: usize,
    pub rps: f64,
    pub latency: Summary,
}

/// Gaussian kernel density of `log10(ms)` at `points` evenly spaced between the samples'
/// extremes: (log10 ms, density), the density's largest value 1.
pub fn violin(ms: &[f64], points: usize) -> Vec<(f64, f64)> {
    let logs: Vec<f64> = ms
        .iter()
        .filter(|v| v.is_finite() && **v > 0.0)
        .map(|v| v.log10())
        .collect();
    if logs.is_empty() || points < 2 {
        return Vec::new();
    }
    let n = logs.len() as f64;
    let mean = logs.iter().sum::<f64>() / n;
    let sd = (logs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt();
    // Silverman's rule of thumb, with a floor for samples all alike.
    let h = (1.06 * sd * n.powf(-0.2)).max(0.02);
    let lo = logs.iter().copied().fold(f64::MAX, f64::min);
    let hi = logs.iter().copied().fold(f64::MIN, f64::max);
    let mut out: Vec<(f64, f64)> = (0..points)
        .map(|i| {
            let y = lo + (hi - lo) * i as f64 / (points - 1) as f64;
            let d: f64 = logs
                .iter()
                .map(|x| (-0.5 * ((y - x) / h).powi(2)).exp())
                .sum();
            (y, d)
        })
        .collect();
    let top = out.iter().map(|p| p.1).fold(0.0, f64::max);
    if top > 0.0 {
        for p in &mut out {
            p.1 /= top;
        }
    }
    out
}

/// Box and violin plots of each run's latency: one slot per run for all its calls, one for
/// the calls that needed a new instance; the box is the quartiles with the median, the
/// whiskers p1 and p99, on a log scale.
pub fn write_svg(
    runs: &[PlacementRun],
    path: &std::path::Path,
) -> Result<(), crate::plot::PlotError> {
    use plotters::prelude::*;
    let err = |e: &dyn std::fmt::Display| crate::plot::PlotError::new(path, e);
    let mut slots: Vec<(String, Vec<f64>)> = Vec::new();
    for r in runs {
        slots.push((
            format!("{}: all", r.placement),
            r.ms(|c| c.start != "error"),
        ));
    }
    for r in runs {
        slots.push((format!("{}: cold", r.placement), r.ms(ClusterCall::cold)));
    }
    let Some((lo, hi)) =
        crate::plot::positive_range(slots.iter().flat_map(|(_, v)| v.iter().copied()))
    else {
        return Err(err(&"no samples to plot"));
    };
    let names: Vec<&str> = slots.iter().map(|(n, _)| n.as_str()).collect();
    let root = SVGBackend::new(path, (960, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = crate::plot::latency_chart(
        &root,
        "Latency through the gateway by placement: violin, box (quartiles), whiskers p1-p99",
        18,
        &names,
        lo / 1.5,
        hi * 1.5,
        "latency (ms)",
    )
    .map_err(|e| err(&e))?;
    let colors = [RGBColor(0xe3, 0x4a, 0x33), RGBColor(0x2b, 0x8c, 0xbe)];
    for (i, (_, ms)) in slots.iter().enumerate() {
        if ms.is_empty() {
            continue;
        }
        let color = colors[i % runs.len().max(1) % colors.len()];
        let mid = i as f64 + 0.5;
        let shape = violin(ms, 64);
        let mut outline: Vec<(f64, f64)> = shape
            .iter()
            .map(|(y, d)| (mid - 0.4 * d, 10f64.powf(*y)))
            .collect();
        outline.extend(
            shape
                .iter()
                .rev()
                .map(|(y, d)| (mid + 0.4 * d, 10f64.powf(*y))),
        );
        chart
            .draw_series(std::iter::once(Polygon::new(
                outline,
                color.mix(0.35).filled(),
            )))
            .map_err(|e| err(&e))?;
        let mut s = ms.clone();
        s.sort_by(|a, b| a.total_cmp(b));
        let q = |p: f64| percentile(&s, p);
        let (p1, q1, med, q3, p99) = (q(1.0), q(25.0), q(50.0), q(75.0), q(99.0));
        let (x0, x1) = (mid - 0.08, mid + 0.08);
        chart
            .draw_series([
                Rectangle::new([(x0, q1), (x1, q3)], BLACK.stroke_width(1)),
                Rectangle::new([(x0, med), (x1, med)], BLACK.stroke_width(2)),
            ])
            .map_err(|e| err(&e))?;
        chart
            .draw_series([
                PathElement::new(vec![(mid, q3), (mid, p99)], BLACK.stroke_width(1)),
                PathElement::new(vec![(mid, p1), (mid, q1)], BLACK.stroke_width(1)),
                PathElement::new(vec![(x0, p99), (x1, p99)], BLACK.stroke_width(1)),
                PathElement::new(vec![(x0, p1), (x1, p1)], BLACK.stroke_width(1)),
            ])
            .map_err(|e| err(&e))?;
    }
    root.present().map_err(|e| err(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(start: &str, ms: f64) -> ClusterCall {
        ClusterCall {
            function: 0,
            shape: Shape::Rare,
            start: start.into(),
            latency_ms: ms,
            node: "n0".into(),
            tier: "warm".into(),
            placement_us: 12.0,
            tried: 1,
        }
    }

    #[test]
    fn placement_headers_parse() {
        assert_eq!(
            ClusterCall::parse_placement("snapshot;us=37;tried=2"),
            ("snapshot".to_string(), 37.0, 2)
        );
        let (tier, us, tried) = ClusterCall::parse_placement("");
        assert_eq!((tier.as_str(), tried), ("", 0));
        assert!(us.is_nan());
    }

    #[test]
    fn runs_summarize_and_plot() {
        let run = PlacementRun {
            placement: "snapshot-aware".into(),
            calls: vec![
                call("warm", 1.0),
                call("warm", 2.0),
                call("function-snapshot", 40.0),
                call("cold-boot", 120.0),
                call("error", 5.0),
            ],
            replay_s: 1.0,
        };
        assert_eq!(run.share("warm"), 40.0);
        assert_eq!(run.cold_latency().count, 2);
        assert_eq!(run.errors(), 1);
        assert_eq!(run.placement_us(), (12.0, 12.0));
        let v = violin(&run.ms(|_| true), 16);
        assert_eq!(v.len(), 16);
        assert!(v.iter().all(|(_, d)| (0.0..=1.0).contains(d)));
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c.svg");
        write_svg(
            &[
                run.clone(),
                PlacementRun {
                    placement: "least-loaded".into(),
                    ..run
                },
            ],
            &p,
        )
        .unwrap();
        let svg = std::fs::read_to_string(&p).unwrap();
        assert!(svg.contains("least-loaded: cold"), "labels");
        assert!(write_svg(&[], &p).is_err());
    }
}
