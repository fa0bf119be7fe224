//! The fastest rung for each function: what each way of starting it measured (the start's
//! time before the handler runs, `Timing::init`), and the rule that a rung which measured
//! slower than the function's own cold boot is not tried.
//!
//! ```text
//! a start served by cold-boot | image | function-snapshot (without a fallback)
//!     -> that path's moving average for the function's version (weight 0.3 on the new one)
//! the image and function-snapshot rungs, before they try:
//!     both it and the cold boot measured >= MIN_SAMPLES times and it is slower? skip it,
//!     except one start in PROBE_EVERY, which tries it anyway (its cost may have changed:
//!     a standby, a rebuilt image, a cached snapshot)
//! ```
//!
//! A function that never cold-booted keeps its rungs (nothing to compare with); a new
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

    /// Whether `path` should be skipped now: it measured slower than the cold boot (both
    /// often enough), and this is not the start that probes it.
    pub fn skip(&self, path: StartPath) -> bool {
        let mut paths = self.lock();
        let Some(cold) = paths.get(StartPath::ColdBoot.as_str()).copied() else {
            return false;
        };
        let Some(c) = paths.get_mut(path.as_str()) else {
            return false;
        };
        if c.n < MIN_SAMPLES || cold.n < MIN_SAMPLES || c.ms <= cold.ms {
            return false;
        }
        c.skipped += 1;
        if c.skipped >= PROBE_EVERY {
            c.skipped = 0;
            return false;
        }
        true
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
        if !d.start_costs.skip(path) {
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
    fn a_rung_slower_than_the_cold_boot_is_skipped_but_probed() {
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
        let avg = c.averages();
        assert_eq!(avg.get("cold-boot"), Some(&20.0));
        assert!(avg["image"] < 20.0, "{avg:?}");
    }

    #[test]
    fn warm_starts_are_not_start_costs() {
        let c = StartCosts::default();
        c.record(StartPath::Warm, ms(1));
        assert!(c.averages().is_empty());
    }
}
