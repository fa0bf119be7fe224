//! What the API shows and removes of the function-snapshot cache (`ember snapshot ls|rm`,
//! `/v1/snapshots`), and, in `snapshots = "remote"` mode, of the snapshot store: the sets
//! only the store holds, and the sets no node can use any more (removed from it).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use futures::StreamExt;
use serde::Serialize;

use super::snapshot_take::Parent;
use super::{Deployed, Node, NodeError};
use crate::snapshots::{EvictReason, Evicted, SnapshotInfo, SnapshotStatus};

/// How long a listing waits for the snapshot store before it shows what it has.
const STORE_LISTING_DEADLINE: Duration = Duration::from_secs(5);
/// Descriptions of stored sets read at once by a listing.
const STORE_READS: usize = 8;
/// Descriptions of stored sets kept between listings (a set's description never changes
/// but for its working set's size).
const DESCRIPTIONS_KEPT: usize = 4096;

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

/// A function snapshot the snapshot store holds and this node has no copy of.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StoredSnapshot {
    /// Its set in the store, `snapshot/<store_key>` (what `ember snapshot rm --store` takes).
    pub store_key: String,
    /// As the node that stored it described it (its id, function, version there, parent
    /// image, bytes, pages, working set); none when that description could not be read.
    #[serde(flatten)]
    pub info: Option<SnapshotInfo>,
    /// Why its description could not be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Descriptions of stored sets, by store key, read once.
#[derive(Default)]
pub(in crate::node) struct StoreDescriptions(Mutex<HashMap<String, SnapshotInfo>>);

impl StoreDescriptions {
    fn get(&self, key: &str) -> Option<SnapshotInfo> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned()
    }

    fn put(&self, key: &str, info: SnapshotInfo) {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() >= DESCRIPTIONS_KEPT {
            m.clear();
        }
        m.insert(key.to_string(), info);
    }

    fn forget(&self, key: &str) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
    }
}

/// What now serves a function whose snapshot left this node's cache: the store key of its
/// snapshot now, the image that snapshot is over, and the store key the function as
/// deployed now would give a snapshot over the old one's parent.
pub(in crate::node) struct Successor<'a> {
    pub store_key: String,
    pub parent: Option<&'a Parent>,
    pub key_over_old_parent: String,
}

/// Whether `old`'s set in the snapshot store is of use to no node any more, now that `now`
/// serves its function (none: the function was deleted): the function as deployed now names
/// another set even over the old one's parent (its code or configuration changed), or its
/// image was rebuilt (a node fetching the image gets the new one, which the old layer does
/// not fit). Not when only this node's view changed (an image not serving here for now, or
/// another one), nor after a deploy that changed nothing the set depends on.
pub(in crate::node) fn superseded(old: &SnapshotInfo, now: Option<&Successor<'_>>) -> bool {
    let Some(key) = &old.store_key else {
        return false;
    };
    let Some(now) = now else {
        return true;
    };
    if *key == now.store_key {
        return false;
    }
    if let (Some(p), Some(id), Some(hash)) = (now.parent, &old.parent_image, &old.parent_meta_hash)
        && p.id == *id
        && p.meta_hash != *hash
    {
        return true;
    }
    now.key_over_old_parent != *key
}

impl Node {
    pub fn snapshots(&self) -> Vec<SnapshotStatus> {
        let mut list = self.snapshots.list();
        for s in &mut list {
            s.remote = self.remote_state("snapshot", s.info.set_id());
        }
        list
    }

    /// In `snapshots = "remote"` mode (else none): the function snapshots the store holds
    /// that this node has no copy of, or why the store could not be listed within 5 s.
    pub async fn snapshots_only_in_store(&self) -> Option<Result<Vec<StoredSnapshot>, String>> {
        let remote = self.remote.clone()?;
        let local: HashSet<String> = self
            .snapshots
            .list()
            .into_iter()
            .filter_map(|s| s.info.store_key)
            .collect();
        let listing = async {
            let keys = remote.set_ids("snapshot").await?;
            let rows = futures::stream::iter(keys.into_iter().filter(|k| !local.contains(k)))
                .map(|key| {
                    let remote = remote.clone();
                    async move {
                        if let Some(info) = self.store_descriptions.get(&key) {
                            return described(key, Ok(info));
                        }
                        let text = remote
                            .read_small(
                                "snapshot",
                                &key,
                                crate::snapshots::INFO_FILE,
                                crate::snapshots::MAX_INFO,
                            )
                            .await
                            .map_err(|e| e.to_string());
                        let name = std::path::PathBuf::from(format!(
                            "snapshot/{key}/{}",
                            crate::snapshots::INFO_FILE
                        ));
                        let info = text.and_then(|t| {
                            crate::snapshots::parse_info(&name, &t).map_err(|e| e.to_string())
                        });
                        if let Ok(i) = &info {
                            self.store_descriptions.put(&key, i.clone());
                        }
                        described(key, info)
                    }
                })
                .buffer_unordered(STORE_READS)
                .collect::<Vec<StoredSnapshot>>()
                .await;
            Ok::<_, String>(rows)
        };
        Some(
            match tokio::time::timeout(STORE_LISTING_DEADLINE, listing).await {
                Ok(Ok(mut rows)) => {
                    rows.sort_by(|a, b| a.store_key.cmp(&b.store_key));
                    Ok(rows)
                }
                Ok(Err(e)) => Err(format!("listing {} failed: {e}", remote.describe())),
                Err(_) => Err(format!(
                    "{} did not answer within {STORE_LISTING_DEADLINE:?}",
                    remote.describe()
                )),
            },
        )
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

    /// Removes snapshot `id` from this node's cache (its function's next init takes a new
    /// one, or fetches the store's). With `from_store` (`snapshots = "remote"`), its set is
    /// removed from the snapshot store too; `id` may then also be a store key that only the
    /// store holds ([`Node::snapshots_only_in_store`]).
    pub async fn remove_snapshot(&self, id: &str, from_store: bool) -> Result<(), NodeError> {
        if from_store && self.remote.is_none() {
            return Err(NodeError::Store(
                "this node has no snapshot store (it runs with snapshots = \"remote\" only \
                 when configured so): remove the snapshot without --store"
                    .into(),
            ));
        }
        let local = self.snapshots.get(id);
        if local.is_some() {
            let (store, sid) = (self.snapshots.clone(), id.to_string());
            // Removing its files blocks.
            tokio::task::spawn_blocking(move || store.remove(&sid))
                .await
                .map_err(|e| NodeError::Store(format!("removing the snapshot: {e}")))??;
            tracing::info!(snapshot = id, "snapshot removed");
        }
        if !from_store {
            return match local {
                Some(_) => Ok(()),
                None => Err(crate::snapshots::SnapshotError::NotFound(id.to_string()).into()),
            };
        }
        let Some(remote) = &self.remote else {
            return Ok(());
        };
        let set = local
            .as_ref()
            .map_or(id.to_string(), |i| i.set_id().to_string());
        if local.is_none()
            && !remote
                .stored("snapshot", &set)
                .await
                .map_err(NodeError::Store)?
        {
            return Err(crate::snapshots::SnapshotError::NotFound(id.to_string()).into());
        }
        remote
            .drop_set("snapshot", &set)
            .await
            .map_err(NodeError::Store)?;
        self.store_descriptions.forget(&set);
        Ok(())
    }

    /// In `snapshots = "remote"` mode: removes from the snapshot store, in the background,
    /// the sets of `old` (snapshots of `d` that left this node's cache: stale, replaced,
    /// or, with `now` none, of a deleted function) that no node can use any more
    /// ([`superseded`]).
    pub(in crate::node) fn retire_from_store(
        &self,
        now: Option<(&Deployed, Option<&Parent>)>,
        old: impl IntoIterator<Item = SnapshotInfo>,
    ) {
        let Some(remote) = self.remote.clone() else {
            return;
        };
        // The function's store key now, once for all of `old`.
        let current = now.map(|(d, parent)| (d, parent, self.snapshot_store_key(d, parent)));
        let sets: Vec<String> = old
            .into_iter()
            .filter(|o| {
                let now = current.as_ref().map(|(d, parent, key)| {
                    let old_parent = o
                        .parent_image
                        .clone()
                        .zip(o.parent_meta_hash.clone())
                        .map(|(id, meta_hash)| Parent { id, meta_hash });
                    Successor {
                        store_key: key.clone(),
                        parent: *parent,
                        key_over_old_parent: self.snapshot_store_key(d, old_parent.as_ref()),
                    }
                });
                superseded(o, now.as_ref())
            })
            .filter_map(|o| o.store_key)
            .collect();
        if sets.is_empty() {
            return;
        }
        let snapshots = self.snapshots.clone();
        self.spawn_background(async move {
            for set in sets {
                // A function made again meanwhile with the same code holds the same set.
                let held = snapshots
                    .list()
                    .iter()
                    .any(|s| s.info.store_key.as_deref() == Some(set.as_str()));
                if held {
                    continue;
                }
                if let Err(e) = remote.drop_set("snapshot", &set).await {
                    tracing::warn!(
                        set = %format!("snapshot/{set}"),
                        "a function snapshot no node can use stays in the snapshot store \
                         (`ember snapshot rm --store` removes it): {e}"
                    );
                }
            }
        });
    }

    /// [`Node::retire_from_store`] for the snapshots that left the cache as `d`'s snapshot
    /// over `parent` was added (logged here): those it replaced.
    pub(in crate::node) fn retire_replaced(
        &self,
        d: &Deployed,
        parent: Option<&Parent>,
        evicted: Vec<Evicted>,
    ) {
        evicted.iter().for_each(Evicted::log);
        let replaced = evicted
            .into_iter()
            .filter(|e| e.reason == EvictReason::Replaced)
            .map(|e| e.info);
        self.retire_from_store(Some((d, parent)), replaced);
    }
}

fn described(store_key: String, info: Result<SnapshotInfo, String>) -> StoredSnapshot {
    match info {
        Ok(mut info) => {
            // Said once, as the row's own.
            info.store_key = None;
            StoredSnapshot {
                store_key,
                info: Some(info),
                error: None,
            }
        }
        Err(e) => StoredSnapshot {
            store_key,
            info: None,
            error: Some(e),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(version: u64, key: Option<&str>, parent: Option<(&str, &str)>) -> SnapshotInfo {
        SnapshotInfo {
            id: "snap-f-1".into(),
            function: "f".into(),
            version,
            key: "k".into(),
            parent_image: parent.map(|p| p.0.to_string()),
            parent_meta_hash: parent.map(|p| p.1.to_string()),
            point: crate::function::SnapshotPoint::AfterInit,
            bytes: 1,
            pages: 1,
            created_at: 0,
            init_ms: 0.0,
            dump_ms: 0.0,
            store_key: key.map(str::to_string),
            fetched: false,
            working_set_pages: 0,
        }
    }

    #[test]
    fn a_set_goes_from_the_store_only_when_no_node_can_use_it() {
        let img = Parent {
            id: "img-a".into(),
            meta_hash: "h2".into(),
        };
        let now = |key: &str, parent, over_old: &str| Successor {
            store_key: key.into(),
            parent,
            key_over_old_parent: over_old.into(),
        };
        let old = info(3, Some("k1"), Some(("img-a", "h1")));
        // Deleted: it goes.
        assert!(superseded(&old, None));
        // Never stored: nothing to remove.
        assert!(!superseded(&info(3, None, None), None));
        // The same set serves on (deployed again with the same code and configuration).
        assert!(!superseded(&old, Some(&now("k1", Some(&img), "k1"))));
        // Deployed anew with other code: over the old parent it names another set: it goes.
        assert!(superseded(&old, Some(&now("k2", None, "k3"))));
        // Deployed anew with nothing the set depends on changed (tags, a URL), now over no
        // image here: other nodes with the image still restore it.
        assert!(!superseded(&old, Some(&now("k0", None, "k1"))));
        // Its image rebuilt: it goes.
        assert!(superseded(&old, Some(&now("k2", Some(&img), "k1"))));
        // Only this node's view changed (another image serves here): stays.
        let other = Parent {
            id: "img-b".into(),
            meta_hash: "h9".into(),
        };
        assert!(!superseded(&old, Some(&now("k2", Some(&other), "k1"))));
        // A whole snapshot, an image serving now: nodes without the image still use it.
        let whole = info(3, Some("k0"), None);
        assert!(!superseded(&whole, Some(&now("k1", Some(&img), "k0"))));
    }
}
