//! The fastest rung for each function: what each way of starting it measured (the start's
//! time before the handler runs, `Timing::init`), and the rule that a rung which measured
//! slower than another way of starting the same function (its cold boot, its image, its
//! function snapshot) is not tried: with standby instances an image start can beat the
//! function's own snapshot, whose restore is on the request's path.
//!
//! ```text
//! a start served by cold-boot | image | function-snapshot (without a fallback)
//!     -> that path's moving average for the function's version (weight 0.3 on the new one)
//! the image and function-snapshot rungs, before they try:
//!     it and another path measured >= MIN_SAMPLES times each and it is slower? skip it,
//!     except one start in PROBE_EVERY, which tries it anyway (its cost may have changed:
//!     a standby, a rebuilt image, a cached snapshot)
//! ```
//!
//! A rung skipped for the image still falls to the cold boot when the image cannot serve.
//! A function with one measured path keeps its rungs (nothing to compare with); a new
//! version starts over. `GET /v1/functions/{name}` shows the averages (`start_ms`).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use super::ladder::StartPath;
use super::{Deployed, Node};

/// Starts of a path before its average counts.
pub(in crate::node) const MIN_SAMPLES: u32 = 3;
/// A rung measured slower than the cold boot is still tried once in this many starts.
pub(in crate::node) const PROBE_EVERY: u32 = 10;
/// Weight of the newest start in the moving average.
const ALPHA: f64 = 0.3;

#[derive(Debug, Clone, Copy, Default)]
struct Cost {
    ms: f64,
    n: u32,
    /// Starts that skipped this path since it was last tried.
    skipped: u32,
    /// Starts this path served while a later one had too few measures to compare.
    unexplored: u32,
}

/// One function version's start costs per path.
#[derive(Debug, Default)]
pub(in crate::node) struct StartCosts {
    paths: Mutex<BTreeMap<&'static str, Cost>>,
}

impl StartCosts {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<&'static str, Cost>> {
        self.paths.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a start served by `path` that took `init` before the handler ran.
    pub fn record(&self, path: StartPath, init: Duration) {
        if !matches!(
            path,
            StartPath::ColdBoot | StartPath::Image | StartPath::FunctionSnapshot
        ) {
            return;
        }
        let ms = init.as_secs_f64() * 1e3;
        let mut paths = self.lock();
        let c = paths.entry(path.as_str()).or_default();
        c.ms = if c.n == 0 {
            ms
        } else {
            ALPHA * ms + (1.0 - ALPHA) * c.ms
        };
        c.n = c.n.saturating_add(1);
        c.skipped = 0;
    }

    /// Whether `path` should be skipped now: it measured slower than another path (both
    /// often enough), and this is not the start that probes it.
    pub fn skip(&self, path: StartPath) -> bool {
        let mut paths = self.lock();
        let me = path.as_str();
        let best_other = paths
            .iter()
            .filter(|(p, c)| **p != me && c.n >= MIN_SAMPLES)
            .map(|(_, c)| c.ms)
            .fold(f64::INFINITY, f64::min);
        let Some(c) = paths.get_mut(me) else {
            return false;
        };
        if c.n < MIN_SAMPLES || c.ms <= best_other {
            return false;
        }
        c.skipped += 1;
        if c.skipped >= PROBE_EVERY {
            c.skipped = 0;
            return false;
        }
        true
    }

    /// Whether `path` should be passed over this once to measure `next` (a later rung that
    /// can serve): `path` is measured, `next` is not yet often enough, and this is the one
    /// start in [`PROBE_EVERY`] that explores. At most [`MIN_SAMPLES`] starts of a version
    /// go this way, so a faster later rung (an image with standby instances) is found.
    pub fn explore(&self, path: StartPath, next: StartPath) -> bool {
        let mut paths = self.lock();
        if paths.get(next.as_str()).is_some_and(|c| c.n >= MIN_SAMPLES) {
            return false;
        }
        let Some(c) = paths.get_mut(path.as_str()) else {
            return false;
        };
        if c.n < MIN_SAMPLES {
            return false;
        }
        c.unexplored += 1;
        if c.unexplored >= PROBE_EVERY {
            c.unexplored = 0;
            return true;
        }
        false
    }

    /// The averages, ms, per path with at least one start.
    pub fn averages(&self) -> BTreeMap<String, f64> {
        self.lock()
            .iter()
            .map(|(p, c)| (p.to_string(), (c.ms * 100.0).round() / 100.0))
            .collect()
    }
}

impl Node {
    /// Whether `d` should not start from `path` now (see the module doc); counted.
    pub(in crate::node) fn rung_slower(&self, d: &Deployed, path: StartPath) -> bool {
        if self.cfg.fixed_ladder || !d.start_costs.skip(path) {
            return false;
        }
        self.metrics
            .rung_skips
            .get_or_create(&crate::metrics::RungLabels {
                function: d.record.name.clone(),
                rung: path.as_str().to_string(),
            })
            .inc();
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_rung_slower_than_another_is_skipped_but_probed() {
        let c = StartCosts::default();
        // Nothing to compare with: tried.
        for _ in 0..5 {
            c.record(StartPath::Image, ms(30));
        }
        assert!(!c.skip(StartPath::Image));
        for _ in 0..2 {
            c.record(StartPath::ColdBoot, ms(20));
        }
        assert!(!c.skip(StartPath::Image), "too few cold boots yet");
        c.record(StartPath::ColdBoot, ms(20));
        let skips: Vec<bool> = (0..PROBE_EVERY).map(|_| c.skip(StartPath::Image)).collect();
        assert_eq!(skips.iter().filter(|s| **s).count() as u32, PROBE_EVERY - 1);
        assert!(
            !skips[PROBE_EVERY as usize - 1],
            "the tenth start probes it"
        );
        // The probe found it faster now (a standby): the average moves and it is tried.
        for _ in 0..5 {
            c.record(StartPath::Image, ms(3));
        }
        assert!(!c.skip(StartPath::Image));
        assert!(!c.skip(StartPath::FunctionSnapshot), "never measured");
        // A function snapshot slower than the image (a standby) is skipped for it.
        for _ in 0..3 {
            c.record(StartPath::FunctionSnapshot, ms(12));
        }
        assert!(c.skip(StartPath::FunctionSnapshot));
        assert!(!c.skip(StartPath::Image));
        let avg = c.averages();
        assert_eq!(avg.get("cold-boot"), Some(&20.0));
        assert!(avg["image"] < 20.0, "{avg:?}");
    }

    #[test]
    fn a_measured_rung_is_passed_over_now_and_then_until_the_next_is_measured() {
        let c = StartCosts::default();
        let (snap, image) = (StartPath::FunctionSnapshot, StartPath::Image);
        assert!(!c.explore(snap, image), "nothing measured");
        for _ in 0..MIN_SAMPLES {
            c.record(snap, ms(20));
        }
        let n = (0..PROBE_EVERY * 2)
            .filter(|_| c.explore(snap, image))
            .count();
        assert_eq!(n, 2, "one start in PROBE_EVERY");
        for _ in 0..MIN_SAMPLES {
            c.record(image, ms(4));
        }
        assert!(
            (0..PROBE_EVERY * 2).all(|_| !c.explore(snap, image)),
            "measured now"
        );
        assert!(c.skip(snap), "and the snapshot is the slower");
    }

    #[test]
    fn warm_starts_are_not_start_costs() {
        let c = StartCosts::default();
        c.record(StartPath::Warm, ms(1));
        assert!(c.averages().is_empty());
    }
}
