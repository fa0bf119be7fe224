//! A function snapshot's working set, recorded for other nodes (`snapshots = "remote"`): the
//! first start here from a snapshot taken here restores it lazily (from memory: a fault costs
//! microseconds), and what its restore and first invocation touched is written beside it
//! and uploaded with it, so that a node without the snapshot restores it lazily from the
//! store with those pages first (REAP's record-and-prefetch, across nodes).
//!
//! ```text
//! first restore of a snapshot taken here (remote mode, none recorded) -> lazy, from memory
//!   -> its first invocation answered -> pages touched (+ what any lazy restore installs
//!   first) -> workingset (indices of the layer's index space) + wspages (its own chunks
//!   among them) beside the snapshot, and both with its meta in one bundle (lazystart:
//!   crate::bundle) -> snapshot.json says how many -> uploaded again (only the new chunks
//!   are written)
//! ```

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ember_snap::LoadedImage;
use ember_snap::image::format::{META_FILE, WORKING_SET_FILE};
use ember_snap::image::{pack, read_meta, write_working_set};
use ember_snap::lazy::PageServer;

use super::{Node, error_chain};
use crate::live::Live;

/// How long one start's claim to record a snapshot's working set holds (its instance may
/// never serve an invocation: another start then records).
const CLAIM: Duration = Duration::from_secs(60);

/// The snapshots whose working set a start is recording, since when: one at a time each.
#[derive(Default)]
pub(in crate::node) struct Recording(Mutex<HashMap<String, Instant>>);

/// One start's claim to record snapshot `id`'s working set, with the snapshot's loaded
/// layer; released when dropped (recorded, or the instance gone without serving).
pub(crate) struct Claim {
    recording: Arc<Recording>,
    id: String,
    layer: Arc<LoadedImage>,
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.recording.release(&self.id);
    }
}

impl Recording {
    fn claim(&self, id: &str) -> bool {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        m.retain(|_, t| t.elapsed() < CLAIM);
        if m.contains_key(id) {
            return false;
        }
        m.insert(id.to_string(), Instant::now());
        true
    }

    fn release(&self, id: &str) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
    }
}

impl Node {
    /// A claim to record the working set of function snapshot `info` (its loaded layer
    /// `layer`) from the start restoring it now: remote mode, a layer taken here, none
    /// recorded yet, no other start recording it.
    pub(in crate::node) fn records_working_set(
        &self,
        info: &crate::snapshots::SnapshotInfo,
        layer: &Arc<LoadedImage>,
    ) -> Option<Claim> {
        let wanted = self.remote.is_some()
            && !info.fetched
            && info.working_set_pages == 0
            && info.parent_image.is_some();
        (wanted && self.recording.claim(&info.id)).then(|| Claim {
            recording: self.recording.clone(),
            id: info.id.clone(),
            layer: layer.clone(),
        })
    }

    /// After a recording instance's first invocation: its working set written beside its
    /// snapshot and the snapshot uploaded again, in the background.
    pub(in crate::node) fn record_working_set(&self, live: &mut Live) {
        let Some(claim) = live.records.take() else {
            return;
        };
        let touched = live.pages.as_ref().map(PageServer::working_set);
        let (Some(touched), Some(node)) = (touched, self.me.upgrade()) else {
            return;
        };
        let (id, layer) = (claim.id.clone(), claim.layer.clone());
        self.spawn_background(async move {
            let store = node.snapshots.clone();
            // Listed as uploading from now: a listing must not show the working set beside
            // the earlier upload's "stored".
            let set = store.get(&id).map(|i| i.set_id().to_string());
            let before = match (&node.remote, &set) {
                (Some(r), Some(set)) => {
                    let before = r.state("snapshot", set);
                    r.mark_uploading("snapshot", set);
                    before
                }
                _ => None,
            };
            let sid = id.clone();
            let written = tokio::task::spawn_blocking(move || {
                let mut flat = ember_snap::restore::first_pages(&layer);
                flat.extend(touched);
                let space: Vec<u64> = flat.iter().map(|&i| layer.space_index(i)).collect();
                let dir = store.path(&sid);
                let own = read_meta(&dir).map_err(|e| error_chain(&e))?;
                if own.id != layer.meta.id {
                    return Err("the snapshot was replaced meanwhile".to_string());
                }
                write_working_set(&dir, &own, &space).map_err(|e| error_chain(&e))?;
                let chunks = pack::write_pack(&dir, &own, &space).map_err(|e| error_chain(&e))?;
                // What a lazy restore elsewhere needs first, in one object. Without it
                // (too large) other nodes fetch those files one by one.
                let first: Vec<&str> = [META_FILE, WORKING_SET_FILE, pack::PACK_FILE]
                    .into_iter()
                    .filter(|n| dir.join(n).is_file())
                    .collect();
                if let Err(e) = crate::bundle::write(&dir, crate::bundle::LAZY_START, &first) {
                    let _ = std::fs::remove_file(dir.join(crate::bundle::LAZY_START));
                    tracing::warn!(snapshot = %sid, "no lazy bundle: {}", error_chain(&e));
                }
                let pages = space.iter().collect::<HashSet<_>>().len() as u64;
                let info = store
                    .set_working_set(&sid, pages)
                    .map_err(|e| error_chain(&e))?;
                Ok((info, chunks))
            })
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r);
            drop(claim);
            match written {
                Ok((info, chunks)) => {
                    tracing::info!(
                        snapshot = %id,
                        pages = info.working_set_pages,
                        own_chunks = chunks,
                        "function snapshot's working set recorded"
                    );
                    node.upload_in_background(
                        "snapshot",
                        info.set_id(),
                        node.snapshots.path(&info.id),
                    );
                }
                Err(why) => {
                    if let (Some(r), Some(set)) = (&node.remote, &set) {
                        r.restore_state("snapshot", set, before);
                    }
                    tracing::warn!(
                        snapshot = %id,
                        "the function snapshot's working set was not recorded (other nodes \
                         fetch it whole): {why}"
                    );
                }
            }
        });
    }
}
