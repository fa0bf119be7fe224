//! Rate limiting for log lines a tenant can trigger (a function that crashes at every start
//! must not flood the daemon's log): at most `burst` lines per `window`, and the next line
//! after a quiet spell says how many were dropped.

use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct RateLimit {
    window: Duration,
    burst: u32,
    state: Mutex<State>,
}

struct State {
    since: Option<Instant>,
    used: u32,
    dropped: u64,
}

impl RateLimit {
    pub const fn new(window: Duration, burst: u32) -> RateLimit {
        RateLimit {
            window,
            burst,
            state: Mutex::new(State {
                since: None,
                used: 0,
                dropped: 0,
            }),
        }
    }

    /// `Some(dropped since the last allowed line)` when a line may be logged now.
    pub fn allow(&self) -> Option<u64> {
        self.allow_at(Instant::now())
    }

    fn allow_at(&self, now: Instant) -> Option<u64> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if s.since.is_none_or(|t| now.duration_since(t) >= self.window) {
            s.since = Some(now);
            s.used = 0;
        }
        if s.used < self.burst {
            s.used += 1;
            Some(std::mem::take(&mut s.dropped))
        } else {
            s.dropped += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_then_reports_what_it_dropped() {
        let r = RateLimit::new(Duration::from_secs(10), 2);
        let t0 = Instant::now();
        assert_eq!(r.allow_at(t0), Some(0));
        assert_eq!(r.allow_at(t0), Some(0));
        assert_eq!(r.allow_at(t0), None);
        assert_eq!(r.allow_at(t0 + Duration::from_secs(1)), None);
        assert_eq!(r.allow_at(t0 + Duration::from_secs(11)), Some(2));
    }
}
