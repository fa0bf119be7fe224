//! Where a start goes: one trait, one file per policy. The gateway gives a policy the nodes
//! that serve the function's current definition, each with what it holds of the function
//! and its load; the policy orders them, best first. The gateway tries them in that order
//! (the next one when a node refuses the request before running it).
//!
//! | policy | file | order |
//! |---|---|---|
//! | `snapshot-aware` (default) | `snapshot_aware.rs` | an idle warm instance, then a hibernated one, the function snapshot, the dependency image, the image from another node's memory (the pool), nothing; ties by load |
//! | `least-loaded` | `least_loaded.rs` | by load alone (Kubernetes' default scheduler, for comparison) |

mod least_loaded;
mod snapshot_aware;

use ember_node::FunctionHoldings;

pub use least_loaded::LeastLoaded;
pub use snapshot_aware::SnapshotAware;

/// A node that could serve a start, as the gateway sees it now.
#[derive(Debug, Clone)]
pub struct Candidate<'a> {
    pub id: &'a str,
    /// What it holds of the function (none: nothing yet).
    pub holdings: Option<&'a FunctionHoldings>,
    /// Requests it serves or queues (its last published count, plus those this gateway
    /// sent it since).
    pub in_flight: u32,
    /// Memory its live instances may use, MiB.
    pub memory_mb: u64,
    /// Of this gateway's requests now running there, those of this function: each may hold
    /// one of the idle instances the node last published.
    pub own_in_flight: u32,
    /// Some node holds the function's dependency image in memory: a node that restores it
    /// from the cluster's pool gets its pages from there.
    pub pool_has_image: bool,
}

impl Candidate<'_> {
    /// The load ties are broken by: requests, then memory.
    pub fn load(&self) -> (u32, u64) {
        (self.in_flight, self.memory_mb)
    }
}

/// How a node could start the function, best first (what [`SnapshotAware`] ranks by).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Tier {
    Warm,
    Hibernated,
    Snapshot,
    Image,
    /// The image from another node's memory (WarmSwap's pool).
    Pool,
    Nothing,
}

impl Tier {
    pub fn of(c: &Candidate<'_>) -> Tier {
        let Some(h) = c.holdings else {
            return Tier::Nothing;
        };
        if h.idle > c.own_in_flight {
            Tier::Warm
        } else if h.hibernated > 0 {
            Tier::Hibernated
        } else if h.snapshot {
            Tier::Snapshot
        } else if h.image {
            Tier::Image
        } else if h.image_pooled && c.pool_has_image {
            Tier::Pool
        } else {
            Tier::Nothing
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Warm => "warm",
            Tier::Hibernated => "hibernated",
            Tier::Snapshot => "snapshot",
            Tier::Image => "image",
            Tier::Pool => "pool",
            Tier::Nothing => "nothing",
        }
    }
}

/// Whether any node in `records` holds `function`'s dependency image in memory (what
/// [`Candidate::pool_has_image`] says).
pub fn pool_has_image<'a>(
    records: impl IntoIterator<Item = &'a crate::record::NodeRecord>,
    function: &str,
) -> bool {
    records.into_iter().any(|r| {
        r.holdings
            .functions
            .get(function)
            .is_some_and(|h| h.image_memory)
    })
}

/// A placement policy.
pub trait Placement: Send + Sync {
    /// Its name (`--placement`).
    fn name(&self) -> &'static str;
    /// Orders `nodes` best first for a start of `function`. `turn` rotates among equals,
    /// so that equal nodes share the starts.
    fn rank(&self, function: &str, nodes: &mut [Candidate<'_>], turn: usize);
}

/// The policy named `name`, or the names there are.
pub fn by_name(name: &str) -> Result<Box<dyn Placement>, String> {
    match name {
        "snapshot-aware" => Ok(Box::new(SnapshotAware)),
        "least-loaded" => Ok(Box::new(LeastLoaded)),
        other => Err(format!(
            "no placement policy {other:?}: use snapshot-aware or least-loaded"
        )),
    }
}

/// Sorts by `key`, then rotates each run of equal keys by `turn`.
fn sort_rotating<K: Ord>(
    nodes: &mut [Candidate<'_>],
    turn: usize,
    key: impl Fn(&Candidate<'_>) -> K,
) {
    nodes.sort_by(|a, b| key(a).cmp(&key(b)).then_with(|| a.id.cmp(b.id)));
    let mut start = 0;
    while start < nodes.len() {
        let mut end = start + 1;
        while end < nodes.len() && key(&nodes[end]) == key(&nodes[start]) {
            end += 1;
        }
        let run = &mut nodes[start..end];
        let n = run.len();
        run.rotate_left(turn % n);
        start = end;
    }
}

#[cfg(test)]
mod tests;
