//! Keep-alive policies: how long a function's idle instance is kept, and whether one is
//! started ahead of its next invocation (pre-warmed), decided per function from what the
//! node saw of its idle times. One node runs one policy (`--keep-alive-policy`).
//!
//! | file | policy |
//! |---|---|
//! | `fixed.rs` | every function's idle instances kept for the node's `keep_alive`, none pre-warmed (the default) |
//! | `histogram.rs` | Shahrad et al.'s hybrid histogram policy ("Serverless in the Wild", ATC 2020): per-function windows from the percentiles of its idle times, the fixed policy as the fallback |
//!
//! ```text
//! invocation ends            -> the end noted; prewarm > 0: the instance is hibernated
//!                               now (stopped when `hibernate` is zero)
//! next invocation starts     -> idle time (from the last end, with none busy) observed
//! keep-alive tick            -> idle instances past `keep_alive` are hibernated for
//!                               `hibernate` (stopped when it is zero); hibernated ones past
//!                               it are removed; prewarm > 0 and `prewarm` since the last
//!                               end: one instance started ahead (a hibernated one woken
//!                               first)
//! ```
//!
//! Each policy so decides, per function and at each moment, between keeping an instance
//! (warm), hibernating it and stopping it.

mod fixed;
mod histogram;

use std::time::Duration;

pub use fixed::Fixed;
pub use histogram::Histogram;

/// What a policy decided for a function now.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Windows {
    /// How long after an invocation ends an instance is started ahead of the next one;
    /// zero: the instance that served is kept instead.
    #[serde(serialize_with = "secs")]
    pub prewarm: Duration,
    /// How long an idle instance is kept (from its last use, or from its pre-warm).
    #[serde(serialize_with = "secs")]
    pub keep_alive: Duration,
    /// How long an instance whose keep-alive ran out is kept hibernated on disk (woken by
    /// the next request, or by the next pre-warm); zero: it is stopped instead.
    #[serde(serialize_with = "secs")]
    pub hibernate: Duration,
    /// What the windows come from.
    pub basis: Basis,
}

fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Basis {
    /// The node's fixed keep-alive.
    Fixed,
    /// The function's idle-time histogram, of `samples` idle times.
    Histogram { samples: u64 },
    /// The fixed keep-alive, since the histogram cannot be trusted yet (`why`).
    Fallback { samples: u64, why: &'static str },
}

/// A keep-alive policy.
pub trait KeepAlive: Send + Sync {
    fn name(&self) -> &'static str;
    /// Whether it decides from idle times (`observe`) and may pre-warm: when not, the node
    /// keeps no per-invocation bookkeeping for it.
    fn learns(&self) -> bool {
        true
    }
    /// `function` was idle for `idle`: from the end of an invocation to the start of the
    /// next, with none busy between.
    fn observe(&self, function: &str, idle: Duration);
    /// Its windows now.
    fn windows(&self, function: &str) -> Windows;
    /// Forgets `function` (deleted: a function made again under its name starts afresh).
    fn forget(&self, function: &str);
}

/// Which policy a node runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PolicyKind {
    #[default]
    Fixed,
    Histogram,
}

impl PolicyKind {
    pub fn parse(s: &str) -> Result<PolicyKind, String> {
        match s {
            "fixed" => Ok(PolicyKind::Fixed),
            "histogram" => Ok(PolicyKind::Histogram),
            other => Err(format!(
                "keep-alive policy {other:?} must be fixed or histogram"
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            PolicyKind::Fixed => "fixed",
            PolicyKind::Histogram => "histogram",
        }
    }

    /// The policy, with the node's fixed `keep_alive` and `hibernate` windows and (for the
    /// histogram) its bin width (a minute in the paper; less to replay a trace compressed
    /// in time).
    pub fn make(
        self,
        keep_alive: Duration,
        hibernate: Duration,
        bin: Duration,
    ) -> Box<dyn KeepAlive> {
        match self {
            PolicyKind::Fixed => Box::new(Fixed::new(keep_alive, hibernate)),
            PolicyKind::Histogram => Box::new(Histogram::new(keep_alive, hibernate, bin)),
        }
    }
}
