//! The plot of a bench run: per workload, p50 latency of each start path as a bar and p99 as
//! a whisker, on a log scale (warm invocations take ~0.1 ms, scikit-learn cold boots ~1 s).

use std::path::Path;

use plotters::prelude::*;

use crate::report::{Report, Row};

const PATHS: [(&str, RGBColor); 3] = [
    ("warm", RGBColor(0x2b, 0x8c, 0xbe)),
    ("cold-boot", RGBColor(0xe3, 0x4a, 0x33)),
    ("bare-import", RGBColor(0x99, 0x99, 0x99)),
];

#[derive(Debug, thiserror::Error)]
#[error("drawing {path} failed: {detail}")]
pub struct PlotError {
    path: String,
    detail: String,
}

impl PlotError {
    pub fn new(path: &Path, detail: &dyn std::fmt::Display) -> PlotError {
        PlotError {
            path: path.display().to_string(),
            detail: detail.to_string(),
        }
    }
}

pub fn write_svg(report: &Report, path: &Path) -> Result<(), PlotError> {
    bars_svg(
        &report.rows,
        &PATHS,
        "ember bench: p50 (bar) and p99 (whisker), ms, log scale",
        path,
    )
}

/// A latency chart: one slot per workload along x, named at its middle, and milliseconds
/// from `lo` to `hi` on a log scale.
pub(crate) type LatencyChart<'a, 'b> = ChartContext<
    'a,
    SVGBackend<'b>,
    Cartesian2d<plotters::coord::types::RangedCoordf64, LogCoord<f64>>,
>;

/// Each workload of `names` once, in the order of its first appearance.
pub(crate) fn workloads_of<'a>(names: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
    let mut out: Vec<&str> = Vec::new();
    for n in names {
        if !out.contains(&n) {
            out.push(n);
        }
    }
    out
}

/// The smallest and largest finite positive value, if any.
pub(crate) fn positive_range(values: impl IntoIterator<Item = f64>) -> Option<(f64, f64)> {
    let (lo, hi) = values
        .into_iter()
        .filter(|v| v.is_finite() && *v > 0.0)
        .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    (lo <= hi).then_some((lo, hi))
}

/// A [`LatencyChart`] on `root`, its mesh drawn.
pub(crate) fn latency_chart<'a, 'b>(
    root: &'a DrawingArea<SVGBackend<'b>, plotters::coord::Shift>,
    title: &str,
    title_size: u32,
    workloads: &[&str],
    lo: f64,
    hi: f64,
    y_desc: &str,
) -> Result<LatencyChart<'a, 'b>, String> {
    let n = workloads.len() as f64;
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", title_size))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..n, (lo..hi).log_scale())
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(workloads.len() * 2 + 1)
        .x_label_formatter(&|x| {
            let i = x.floor() as usize;
            if (x - x.floor() - 0.5).abs() < 1e-6 && i < workloads.len() {
                workloads[i].to_string()
            } else {
                String::new()
            }
        })
        .y_desc(y_desc)
        .draw()
        .map_err(|e| e.to_string())?;
    Ok(chart)
}

/// One group of bars per workload, one bar per series (a row's `path`), p99 as a whisker.
pub fn bars_svg(
    rows: &[Row],
    series: &[(&str, RGBColor)],
    title: &str,
    path: &Path,
) -> Result<(), PlotError> {
    bars_svg_of(rows, series, title, "latency (ms)", path)
}

/// [`bars_svg`] of another quantity than latency, named by `y_desc` (its rows' `p50_ms` is
/// the bar, `p99_ms` the whisker's end).
pub fn bars_svg_of(
    rows: &[Row],
    series: &[(&str, RGBColor)],
    title: &str,
    y_desc: &str,
    path: &Path,
) -> Result<(), PlotError> {
    let err = |e: &dyn std::fmt::Display| PlotError {
        path: path.display().to_string(),
        detail: e.to_string(),
    };
    let workloads = workloads_of(rows.iter().map(|r| r.workload.as_str()));
    let values = rows
        .iter()
        .flat_map(|r| [r.summary.p50_ms, r.summary.p99_ms]);
    let Some((lo, hi)) = positive_range(values) else {
        return Err(err(&"the report has no samples to plot"));
    };
    let (lo, hi) = (lo / 2.0, hi * 2.0);
    let root = SVGBackend::new(path, (960, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart =
        latency_chart(&root, title, 20, &workloads, lo, hi, y_desc).map_err(|e| err(&e))?;
    let width = 0.8 / series.len() as f64;
    for (j, &(name, color)) in series.iter().enumerate() {
        let rows: Vec<_> = rows.iter().filter(|r| r.path == name).collect();
        if rows.is_empty() {
            continue;
        }
        let mut bars = Vec::new();
        let mut whiskers = Vec::new();
        for r in rows {
            let Some(i) = workloads.iter().position(|w| *w == r.workload) else {
                continue;
            };
            let x0 = i as f64 + 0.1 + j as f64 * width;
            let x1 = x0 + width * 0.9;
            bars.push(Rectangle::new(
                [(x0, lo), (x1, r.summary.p50_ms)],
                color.filled(),
            ));
            let xm = (x0 + x1) / 2.0;
            whiskers.push(PathElement::new(
                vec![(xm, r.summary.p50_ms), (xm, r.summary.p99_ms)],
                BLACK.stroke_width(1),
            ));
        }
        chart
            .draw_series(bars)
            .map_err(|e| err(&e))?
            .label(name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
        chart.draw_series(whiskers).map_err(|e| err(&e))?;
    }
    finish(chart, &root, SeriesLabelPosition::UpperLeft).map_err(|e| err(&e))
}

/// Draws the legend of `chart` at `at` and writes `root` out.
pub(crate) fn finish<'a, 'b>(
    mut chart: LatencyChart<'a, 'b>,
    root: &'a DrawingArea<SVGBackend<'b>, plotters::coord::Shift>,
    at: SeriesLabelPosition,
) -> Result<(), String> {
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(at)
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::{BenchOptions, Sample};

    #[test]
    fn a_report_becomes_an_svg_with_every_workload() {
        let s = |w: &str, p: &str, ms: f64| Sample::fixture(w, p, ms, Some(0.01));
        let opts = BenchOptions {
            cold: 1,
            warm: 1,
            concurrency: 1,
            baseline: 1,
        };
        let r = Report::new(
            "u",
            opts,
            vec![
                s("noop", "warm", 0.1),
                s("noop", "cold-boot", 12.0),
                s("numpy", "bare-import", 90.0),
            ],
            0,
        );
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("plot.svg");
        write_svg(&r, &p).unwrap();
        let svg = std::fs::read_to_string(&p).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..40]);
        for text in ["noop", "numpy", "cold-boot", "bare-import"] {
            assert!(svg.contains(text), "{text} missing");
        }
        let empty = Report::new("u", r.options.clone(), vec![], 0);
        assert!(write_svg(&empty, &p).is_err());
    }
}
