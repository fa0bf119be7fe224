//! `snapshot-aware` (vHive's placement, Ember's default): a node with an idle warm instance
//! of the function, then one with a hibernated instance, then one caching its function
//! snapshot, then its dependency image, then one that restores the image from another
//! node's memory (the cluster's pool), then any; within a tier the least loaded.

use super::{Candidate, Placement, Tier, sort_rotating};

pub struct SnapshotAware;

impl Placement for SnapshotAware {
    fn name(&self) -> &'static str {
        "snapshot-aware"
    }

    fn rank(&self, _function: &str, nodes: &mut [Candidate<'_>], turn: usize) {
        sort_rotating(nodes, turn, |c| (Tier::of(c), c.load()));
    }
}
