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
//!   among them) beside the snapshot -> snapshot.json says how many -> uploaded again (only
//!   the new chunks are written)
//! ```

use std::collections::HashSet;

use ember_snap::image::{pack, read_meta, write_working_set};
use ember_snap::lazy::PageServer;

use super::{Node, error_chain};
use crate::live::Live;

impl Node {
    /// Whether a start restoring function snapshot `info` here should record its working
    /// set: remote mode, a layer taken here, none recorded yet.
    pub(in crate::node) fn records_working_set(
        &self,
        info: &crate::snapshots::SnapshotInfo,
    ) -> bool {
        self.remote.is_some()
            && !info.fetched
            && info.working_set_pages == 0
            && info.parent_image.is_some()
    }

    /// After a recording instance's first invocation: its working set written beside its
    /// snapshot and the snapshot uploaded again, in the background.
    pub(in crate::node) fn record_working_set(&self, live: &mut Live) {
        let Some((id, layer)) = live.records.take() else {
            return;
        };
        let Some(touched) = live.pages.as_ref().map(PageServer::working_set) else {
            return;
        };
        let Some(node) = self.me.upgrade() else {
            return;
        };
        self.spawn_background(async move {
            let store = node.snapshots.clone();
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
                let pages = space.iter().collect::<HashSet<_>>().len() as u64;
                let info = store
                    .set_working_set(&sid, pages)
                    .map_err(|e| error_chain(&e))?;
                Ok((info, chunks))
            })
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r);
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
                Err(why) => tracing::warn!(
                    snapshot = %id,
                    "the function snapshot's working set was not recorded (other nodes fetch it \
                     whole): {why}"
                ),
            }
        });
    }
}
