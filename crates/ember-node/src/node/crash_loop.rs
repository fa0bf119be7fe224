//! A function's crash-loop backoff: a function whose instances keep failing to start (its
//! import raises, crashes, hits a limit or times out) stops costing the node a sandbox and a
//! runtime at every request.
//!
//! ```text
//! start failed: failures += 1; from the FREE-th failure in a row on, no start is tried for
//!               BASE * 2^(failures - FREE) (at most MAX); requests in that window get the
//!               last failure at once, with the time left
//! started:      failures = 0, no window
//! ```
//!
//! It belongs to one deployed version: a new deploy starts with a clean slate, as does
//! stopping the function's instances (`DELETE /v1/functions/{name}/instances`). A function's
//! failures never reach the dependency image it starts from (that is the image's own count).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::InvokeOutcome;

/// Failed starts in a row that are retried at once.
pub const FREE: u32 = 3;
/// The first window, doubled at each further failure.
pub const BASE: Duration = Duration::from_secs(1);
/// The longest window.
pub const MAX: Duration = Duration::from_secs(60);

#[derive(Default)]
pub struct CrashLoop {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    failures: u32,
    until: Option<Instant>,
    last: Option<InvokeOutcome>,
}

impl CrashLoop {
    /// In a backoff window: the failure to answer with (the last one, its message saying
    /// so) instead of trying a start.
    pub fn holds(&self, now: Instant) -> Option<InvokeOutcome> {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let until = s.until.filter(|u| *u > now)?;
        let left = until - now;
        let note = format!(
            " (crash loop: {} failed starts in a row, next start in {:.1} s)",
            s.failures,
            left.as_secs_f64()
        );
        s.last.as_ref().map(|o| o.with_note(&note))
    }

    /// Counts a failed start that was the function's own doing; `outcome` is what its
    /// request got (a start the node itself could not make is not counted).
    pub fn failed(&self, outcome: &InvokeOutcome, now: Instant) {
        if !outcome.is_function_start_failure() {
            return;
        }
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.failures = s.failures.saturating_add(1);
        s.last = Some(outcome.clone());
        if s.failures >= FREE {
            let doublings = (s.failures - FREE).min(16);
            let wait = BASE.saturating_mul(1 << doublings).min(MAX);
            s.until = Some(now + wait);
        }
    }

    /// A start succeeded (or an operator asked for fresh starts): the slate is clean.
    pub fn started(&self) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if s.failures > 0 {
            *s = State::default();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_opens_after_free_failures_doubles_and_closes_on_success() {
        let c = CrashLoop::default();
        let t = Instant::now();
        let crash = InvokeOutcome::Crashed("exit status 1".into());
        for _ in 0..FREE - 1 {
            c.failed(&crash, t);
            assert!(c.holds(t).is_none());
        }
        c.failed(&crash, t);
        match c.holds(t) {
            Some(InvokeOutcome::Crashed(m)) => {
                assert!(m.starts_with("exit status 1 (crash loop: 3 failed"), "{m}")
            }
            other => panic!("{other:?}"),
        }
        assert!(c.holds(t + BASE).is_none());
        c.failed(&crash, t + BASE);
        assert!(c.holds(t + BASE + BASE).is_some(), "the window doubled");
        for _ in 0..20 {
            c.failed(&crash, t);
        }
        assert!(c.holds(t + MAX).is_none(), "never more than MAX");
        c.started();
        assert!(c.holds(t).is_none());
    }
}
