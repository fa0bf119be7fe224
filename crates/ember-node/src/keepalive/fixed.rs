//! The fixed policy: every idle instance kept for the node's keep-alive, then hibernated
//! for the node's hibernation window (or stopped, when it is zero); none pre-warmed.

use std::time::Duration;

use super::{Basis, KeepAlive, Windows};

pub struct Fixed {
    keep_alive: Duration,
    hibernate: Duration,
}

impl Fixed {
    pub fn new(keep_alive: Duration, hibernate: Duration) -> Fixed {
        Fixed {
            keep_alive,
            hibernate,
        }
    }
}

impl KeepAlive for Fixed {
    fn name(&self) -> &'static str {
        "fixed"
    }

    fn learns(&self) -> bool {
        false
    }

    fn observe(&self, _function: &str, _idle: Duration) {}

    fn windows(&self, _function: &str) -> Windows {
        Windows {
            prewarm: Duration::ZERO,
            keep_alive: self.keep_alive,
            hibernate: self.hibernate,
            basis: Basis::Fixed,
        }
    }

    fn forget(&self, _function: &str) {}
}
