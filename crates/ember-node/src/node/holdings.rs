//! What this node holds for each function, for a cluster's placement: its idle warm and
//! hibernated instances, whether its function snapshot and its dependency image are here,
//! and the node's load. Read from the node's own state (no I/O), cheap enough to take a
//! few times a second.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};

use super::Node;

/// One function's holdings on this node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionHoldings {
    /// BLAKE3 of its code tree: which code the node serves.
    pub code_hash: String,
    /// Instances idle in memory, ready for a request (warm starts).
    pub idle: u32,
    /// Instances in memory, idle or busy.
    pub live: u32,
    /// Instances hibernated on local disk.
    pub hibernated: u32,
    /// Its function snapshot for the code and image it would start from now is cached here.
    pub snapshot: bool,
    /// The dependency image its starts would be restored from is here.
    pub image: bool,
    /// That image is in this node's memory pool, and its page server serves it: other
    /// nodes restore from it.
    #[serde(default)]
    pub image_memory: bool,
    /// No image here, but one in the cluster's pool this node restores from (its pages
    /// from other nodes' memory, or the store).
    #[serde(default)]
    pub image_pooled: bool,
}

/// The node's load.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Load {
    /// Requests being served or waiting for an instance.
    pub in_flight: u32,
    /// Instances in memory, all functions.
    pub instances: u32,
    /// Memory the instances in memory may use (their functions' `memory_mb`), MiB.
    pub memory_mb: u64,
}

/// Everything [`Node::holdings`] reports.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holdings {
    /// By function name (`$LATEST`; published versions are not placed on their own).
    pub functions: BTreeMap<String, FunctionHoldings>,
    pub load: Load,
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl Node {
    /// What the node holds now, per function, and its load.
    pub fn holdings(&self) -> Holdings {
        let mut out = Holdings::default();
        for (name, d) in self.read_functions().iter() {
            // Published versions (`name:N`) share their function's placement.
            if name.contains(':') {
                continue;
            }
            let live = d.pool.live().load(Ordering::SeqCst);
            let idle = d.pool.idle_count();
            let image = self.image_serving(d);
            let snapshot = self.snapshots_on(d) && {
                let parent = self.snapshot_parent(d);
                let key = self.snapshot_key(d, parent.as_ref());
                self.snapshots.holds(&d.record.name, &key)
            };
            out.functions.insert(
                name.clone(),
                FunctionHoldings {
                    code_hash: d.record.code_hash.clone(),
                    idle: count(idle),
                    live: count(live),
                    hibernated: count(self.hibernated_count(d)),
                    snapshot,
                    image: image.is_some(),
                    image_memory: self.serves_pages()
                        && image
                            .as_ref()
                            .is_some_and(|id| self.images.is_in_memory(id)),
                    image_pooled: image.is_none() && self.image_pooled(d).is_some(),
                },
            );
            let busy = live.saturating_sub(idle) + d.pool.waiting();
            out.load.in_flight = out.load.in_flight.saturating_add(count(busy));
            out.load.instances = out.load.instances.saturating_add(count(live));
            out.load.memory_mb += u64::from(d.record.config.memory_mb) * live as u64;
        }
        out
    }
}
