//! The hybrid histogram policy of Shahrad et al. ("Serverless in the Wild", ATC 2020), for
//! each function on its own:
//!
//! - its idle times go into a range-limited histogram: 240 bins of `bin` (a minute in the
//!   paper: four hours), those past the range counted apart;
//! - when the histogram is representative, the pre-warm window is its 5th percentile
//!   (rounded down by 10%) and the keep-alive window reaches its 99th percentile (rounded up
//!   by 10%): an instance is stopped as soon as an invocation ends, started again when the
//!   next is about to come, and kept until it is unlikely to come;
//! - when it is not (fewer than 10 idle times, most past the range, or bins too even to
//!   show a pattern: coefficient of variation under 2), the fixed keep-alive applies. The
//!   paper's time-series forecast (ARIMA) for functions idle past the range is not done:
//!   they fall back too.
//!
//! With hibernation on, an instance is hibernated rather than stopped: when its keep-alive
//! window ends, and at the end of an invocation when a pre-warm window applies (the
//! pre-warm then wakes it, its warm state intact, instead of starting a new one). It stays
//! hibernated for the node's hibernation window, which covers the idle times past the
//! histogram's 99th percentile (the late arrivals a stop would have cold-booted).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use super::{Basis, KeepAlive, Windows};

const BINS: usize = 240;
const MIN_SAMPLES: u64 = 10;
const MIN_CV: f64 = 2.0;
const HEAD: f64 = 0.05;
const TAIL: f64 = 0.99;
const MARGIN: f64 = 0.10;

#[derive(Default)]
struct Idle {
    bins: Vec<u64>,
    out_of_range: u64,
}

impl Idle {
    fn samples(&self) -> u64 {
        self.bins.iter().sum::<u64>() + self.out_of_range
    }

    /// The bin below which `q` of the in-range idle times fall.
    fn percentile_bin(&self, q: f64) -> usize {
        let n: u64 = self.bins.iter().sum();
        let want = (q * n as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in self.bins.iter().enumerate() {
            seen += c;
            if seen >= want {
                return i;
            }
        }
        BINS - 1
    }

    /// Coefficient of variation of the bin counts: high when idle times cluster.
    fn cv(&self) -> f64 {
        let n = BINS as f64;
        let mean = self.bins.iter().sum::<u64>() as f64 / n;
        if mean == 0.0 {
            return 0.0;
        }
        let var = self
            .bins
            .iter()
            .map(|c| (*c as f64 - mean).powi(2))
            .sum::<f64>()
            / n;
        var.sqrt() / mean
    }
}

pub struct Histogram {
    fallback: Duration,
    hibernate: Duration,
    bin: Duration,
    idle: Mutex<HashMap<String, Idle>>,
}

impl Histogram {
    pub fn new(fallback: Duration, hibernate: Duration, bin: Duration) -> Histogram {
        Histogram {
            fallback,
            hibernate,
            bin: bin.max(Duration::from_millis(1)),
            idle: Mutex::new(HashMap::new()),
        }
    }

    fn fixed(&self, samples: u64, why: &'static str) -> Windows {
        Windows {
            prewarm: Duration::ZERO,
            keep_alive: self.fallback,
            hibernate: self.hibernate,
            basis: Basis::Fallback { samples, why },
        }
    }
}

impl KeepAlive for Histogram {
    fn name(&self) -> &'static str {
        "histogram"
    }

    fn observe(&self, function: &str, idle: Duration) {
        let mut all = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let h = all.entry(function.to_string()).or_default();
        if h.bins.is_empty() {
            h.bins = vec![0; BINS];
        }
        let i = (idle.as_nanos() / self.bin.as_nanos().max(1)) as usize;
        match h.bins.get_mut(i) {
            Some(c) => *c += 1,
            None => h.out_of_range += 1,
        }
    }

    fn windows(&self, function: &str) -> Windows {
        let all = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let Some(h) = all.get(function).filter(|h| !h.bins.is_empty()) else {
            return self.fixed(0, "no idle times yet");
        };
        let samples = h.samples();
        if samples < MIN_SAMPLES {
            return self.fixed(samples, "too few idle times");
        }
        if h.out_of_range * 2 > samples {
            return self.fixed(samples, "most idle times are past the histogram's range");
        }
        if h.cv() < MIN_CV {
            return self.fixed(samples, "idle times show no pattern");
        }
        let head = h.percentile_bin(HEAD) as f64;
        let tail = (h.percentile_bin(TAIL) + 1) as f64;
        let bin = self.bin.as_secs_f64();
        let prewarm = Duration::from_secs_f64(head * bin * (1.0 - MARGIN));
        let until = Duration::from_secs_f64(tail * bin * (1.0 + MARGIN));
        Windows {
            prewarm,
            keep_alive: until.saturating_sub(prewarm).max(self.bin),
            hibernate: self.hibernate,
            basis: Basis::Histogram { samples },
        }
    }

    fn forget(&self, function: &str) {
        self.idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(function);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn a_regular_function_is_prewarmed_before_it_comes_and_kept_until_it_is_late() {
        let p = Histogram::new(Duration::from_secs(600), Duration::ZERO, MIN);
        // Invoked every 30 minutes, give or take a minute.
        for i in 0..40 {
            p.observe("cron", MIN * (29 + i % 3));
        }
        let w = p.windows("cron");
        assert_eq!(w.basis, Basis::Histogram { samples: 40 });
        assert!(w.prewarm >= MIN * 25 && w.prewarm <= MIN * 29, "{w:?}");
        let until = w.prewarm + w.keep_alive;
        assert!(until >= MIN * 32 && until <= MIN * 36, "{w:?}");
    }

    #[test]
    fn a_busy_function_is_kept_warm_and_briefly() {
        let p = Histogram::new(Duration::from_secs(600), Duration::ZERO, MIN);
        for _ in 0..100 {
            p.observe("hot", Duration::from_secs(5));
        }
        let w = p.windows("hot");
        assert_eq!(w.prewarm, Duration::ZERO);
        assert!(
            w.keep_alive <= MIN * 2,
            "{w:?}: far less than the fixed 10 minutes"
        );
    }

    #[test]
    fn without_a_pattern_the_fixed_keep_alive_applies() {
        let p = Histogram::new(Duration::from_secs(600), Duration::ZERO, MIN);
        let w = p.windows("new");
        assert!(matches!(w.basis, Basis::Fallback { samples: 0, .. }));
        for i in 0..5 {
            p.observe("few", MIN * i);
        }
        assert!(matches!(
            p.windows("few").basis,
            Basis::Fallback { samples: 5, .. }
        ));
        // Spread evenly over the range: no pattern to go by.
        for i in 0..240u32 {
            p.observe("even", MIN * i);
        }
        let w = p.windows("even");
        assert!(matches!(w.basis, Basis::Fallback { .. }), "{w:?}");
        assert_eq!(w.keep_alive, Duration::from_secs(600));
        // Mostly idle for longer than four hours.
        for _ in 0..20 {
            p.observe("rare", MIN * 300);
        }
        assert!(matches!(p.windows("rare").basis, Basis::Fallback { .. }));
        p.forget("rare");
        assert!(matches!(
            p.windows("rare").basis,
            Basis::Fallback { samples: 0, .. }
        ));
    }
}
