//! What the API shows and removes of the function-snapshot cache (`ember snapshot ls|rm`,
//! `/v1/snapshots`).

use serde::Serialize;

use super::{Node, NodeError};
use crate::snapshots::SnapshotStatus;

/// The cache's use of its budgets and how it runs, shown beside the list.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SnapshotUsage {
    /// `off` or `local`.
    pub mode: &'static str,
    /// `lru` or `gdsf`.
    pub eviction: &'static str,
    pub disk_bytes: u64,
    pub disk_budget_bytes: u64,
    pub memory_bytes: u64,
    pub memory_budget_bytes: u64,
}

impl Node {
    pub fn snapshots(&self) -> Vec<SnapshotStatus> {
        let mut list = self.snapshots.list();
        for s in &mut list {
            s.remote = self.remote_state("snapshot", s.info.set_id());
        }
        list
    }

    pub fn snapshot_usage(&self) -> SnapshotUsage {
        let cfg = self.snapshots.config();
        let (disk_bytes, disk_budget_bytes) = self.snapshots.disk_bytes();
        let (memory_bytes, memory_budget_bytes) = self.snapshots.memory_bytes();
        SnapshotUsage {
            mode: cfg.mode.as_str(),
            eviction: cfg.eviction.as_str(),
            disk_bytes,
            disk_budget_bytes,
            memory_bytes,
            memory_budget_bytes,
        }
    }

    /// Removes snapshot `id` (its function's next init takes a new one). Blocking briefly.
    pub fn remove_snapshot(&self, id: &str) -> Result<(), NodeError> {
        self.snapshots.remove(id)?;
        tracing::info!(snapshot = id, "snapshot removed");
        Ok(())
    }
}
