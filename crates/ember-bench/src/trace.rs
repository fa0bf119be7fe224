//! Azure-Functions-like traces for keep-alive experiments (`ember bench trace`): per function,
//! invocations per minute drawn from the shapes Shahrad et al. published for Azure Functions
//! ("Serverless in the Wild", ATC 2020), then arrival times within each minute, replayed
//! against a node at a time compression.
//!
//! | shape | share | per minute |
//! |---|---|---|
//! | periodic | 40% | one invocation every 2 to 15 minutes (a timer), now and then a minute late |
//! | bursty | 30% | an on/off chain: on (1 in 20 per minute, staying on 70%), Poisson(3) each minute on |
//! | rare | 30% | one in 20 to 90 minutes, at random |
//!
//! Arrivals within a minute are uniform, as those of a Poisson process given their count.

use std::time::Duration;

use serde::Serialize;

use crate::snapshot_cache::Rng;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    Periodic,
    Bursty,
    Rare,
}

impl Shape {
    pub fn as_str(self) -> &'static str {
        match self {
            Shape::Periodic => "periodic",
            Shape::Bursty => "bursty",
            Shape::Rare => "rare",
        }
    }
}

/// One function of a trace: its shape and invocations per minute.
#[derive(Debug, Clone, Serialize)]
pub struct TraceFn {
    pub shape: Shape,
    pub per_minute: Vec<u32>,
}

/// Poisson(`lambda`) by Knuth's method (small lambdas only).
fn poisson(rng: &mut Rng, lambda: f64) -> u32 {
    let limit = (-lambda).exp();
    let (mut k, mut p) = (0, 1.0);
    loop {
        p *= rng.unit();
        if p <= limit || k >= 1000 {
            return k;
        }
        k += 1;
    }
}

/// `functions` functions over `minutes` minutes, reproducibly from `seed`.
pub fn generate(functions: usize, minutes: usize, seed: u64) -> Vec<TraceFn> {
    let mut rng = Rng::new(seed);
    (0..functions)
        .map(|i| {
            let shape = match i % 10 {
                0..=3 => Shape::Periodic,
                4..=6 => Shape::Bursty,
                _ => Shape::Rare,
            };
            let mut per_minute = vec![0u32; minutes];
            match shape {
                Shape::Periodic => {
                    let every = 2 + (rng.next_u64() % 14) as usize;
                    let mut m = (rng.next_u64() as usize) % every;
                    while m < minutes {
                        let late = usize::from(rng.unit() < 0.1);
                        if let Some(c) = per_minute.get_mut(m + late) {
                            *c += 1;
                        }
                        m += every;
                    }
                }
                Shape::Bursty => {
                    let mut on = false;
                    for c in &mut per_minute {
                        on = if on {
                            rng.unit() < 0.7
                        } else {
                            rng.unit() < 0.05
                        };
                        if on {
                            *c = poisson(&mut rng, 3.0);
                        }
                    }
                }
                Shape::Rare => {
                    let p = 1.0 / (20.0 + rng.unit() * 70.0);
                    for c in &mut per_minute {
                        *c = u32::from(rng.unit() < p);
                    }
                }
            }
            TraceFn { shape, per_minute }
        })
        .collect()
}

/// Every invocation of `trace` as (time from the start, function index), in time order, a
/// trace minute lasting `minute`.
pub fn arrivals(trace: &[TraceFn], minute: Duration, seed: u64) -> Vec<(Duration, usize)> {
    let mut rng = Rng::new(seed ^ 0x5eed);
    let mut out = Vec::new();
    for (f, t) in trace.iter().enumerate() {
        for (m, count) in t.per_minute.iter().enumerate() {
            for _ in 0..*count {
                let at = minute.mul_f64(m as f64 + rng.unit());
                out.push((at, f));
            }
        }
    }
    out.sort();
    out
}

/// The function every trace function deploys (base64 of its zip): a handler that answers
/// at once, so that what is measured is the start.
pub fn handler_zip() -> Result<String, zip::result::ZipError> {
    use std::io::Write as _;
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    w.start_file("main.py", zip::write::SimpleFileOptions::default())?;
    w.write_all(b"def handler(event, context):\n    return {'ok': True}\n")?;
    let bytes = w.finish()?.into_inner();
    Ok(base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        bytes,
    ))
}

/// One invocation of a replay.
#[derive(Debug, Clone, Serialize)]
pub struct Call {
    pub function: usize,
    pub shape: Shape,
    /// The rung it started on (`warm`, `function-snapshot`, `image`, `cold-boot`), or
    /// `error`.
    pub start: String,
    pub latency_ms: f64,
}

/// What one policy's replay gave.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyResult {
    pub policy: String,
    pub calls: Vec<Call>,
    /// Idle instances' memory (their `memory_mb`) over the replay, GB-seconds of replay
    /// time (times the compression for trace time).
    pub idle_gb_s: f64,
    /// Hibernated instances' bytes on disk over the replay, GB-seconds of replay time.
    pub disk_gb_s: f64,
    pub replay_s: f64,
    /// The keep-alive window the daemon gave a function before any idle time (the fixed
    /// policy's, the histogram's fallback), seconds of replay time.
    pub keep_alive_s: f64,
}

/// A compared setting of `ember bench trace`: a keep-alive policy, with hibernation
/// (`histogram+hibernate`) or without (`fixed`: idle instances stopped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    pub policy: String,
    pub hibernate: bool,
}

impl Setting {
    /// `fixed`, `histogram`, `fixed+hibernate` or `histogram+hibernate`.
    pub fn parse(s: &str) -> Result<Setting, String> {
        let (policy, hibernate) = match s.strip_suffix("+hibernate") {
            Some(p) => (p, true),
            None => (s, false),
        };
        match policy {
            "fixed" | "histogram" => Ok(Setting {
                policy: policy.to_string(),
                hibernate,
            }),
            _ => Err(format!(
                "{s:?} is not a setting: write fixed, histogram, fixed+hibernate or \
                 histogram+hibernate"
            )),
        }
    }
}

impl PolicyResult {
    /// The share of calls that started on `rung`, in percent.
    pub fn share(&self, rung: &str) -> f64 {
        let n = self.calls.len().max(1) as f64;
        100.0 * self.calls.iter().filter(|c| c.start == rung).count() as f64 / n
    }

    pub fn latency(&self) -> crate::stats::Summary {
        let ms: Vec<f64> = self.calls.iter().map(|c| c.latency_ms).collect();
        crate::stats::summarize(&ms)
    }
}

/// The latency per shape and policy (p50 bars, p99 whiskers) as an SVG.
pub fn write_svg(
    rows: &[crate::report::Row],
    policies: &[String],
    path: &std::path::Path,
) -> Result<(), crate::plot::PlotError> {
    use plotters::style::RGBColor;
    const COLORS: [RGBColor; 4] = [
        RGBColor(0xe3, 0x4a, 0x33),
        RGBColor(0x2b, 0x8c, 0xbe),
        RGBColor(0x31, 0xa3, 0x54),
        RGBColor(0x88, 0x56, 0xa7),
    ];
    let series: Vec<(&str, RGBColor)> = policies
        .iter()
        .zip(COLORS.iter().cycle())
        .map(|(p, c)| (p.as_str(), *c))
        .collect();
    crate::plot::bars_svg(
        rows,
        &series,
        "Latency per trace shape and keep-alive policy (p50, p99 whisker)",
        path,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_name_a_policy_and_whether_it_hibernates() {
        assert_eq!(
            Setting::parse("histogram+hibernate").unwrap(),
            Setting {
                policy: "histogram".into(),
                hibernate: true
            }
        );
        assert!(!Setting::parse("fixed").unwrap().hibernate);
        assert!(Setting::parse("lru+hibernate").is_err());
        assert!(Setting::parse("fixed+swap").is_err());
    }

    #[test]
    fn traces_are_reproducible_and_have_their_shapes() {
        let a = generate(50, 120, 7);
        let b = generate(50, 120, 7);
        assert_eq!(
            a.iter().map(|t| t.per_minute.clone()).collect::<Vec<_>>(),
            b.iter().map(|t| t.per_minute.clone()).collect::<Vec<_>>()
        );
        let total = |s: Shape| -> u32 {
            a.iter()
                .filter(|t| t.shape == s)
                .map(|t| t.per_minute.iter().sum::<u32>())
                .sum()
        };
        assert_eq!(a.iter().filter(|t| t.shape == Shape::Periodic).count(), 20);
        // Timers fire every 2 to 15 minutes: 8 to 60 times in two hours each.
        for t in a.iter().filter(|t| t.shape == Shape::Periodic) {
            let n: u32 = t.per_minute.iter().sum();
            assert!((7..=61).contains(&n), "{n}");
        }
        assert!(total(Shape::Rare) < total(Shape::Periodic), "rare is rare");
        let arr = arrivals(&a, Duration::from_secs(1), 7);
        assert_eq!(
            arr.len() as u32,
            total(Shape::Periodic) + total(Shape::Bursty) + total(Shape::Rare)
        );
        assert!(arr.windows(2).all(|w| w[0].0 <= w[1].0), "in time order");
        assert!(arr.last().unwrap().0 < Duration::from_secs(120));
    }
}
