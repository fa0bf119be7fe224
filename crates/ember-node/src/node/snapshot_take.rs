//! Taking function snapshots: an initialized instance of a function dumped once, as a layer
//! over the dependency image it was restored from (only the pages that differ), or whole when
//! it has no image. The ladder's function-snapshot rung (`ladder/function_snapshot.rs`)
//! restores them.
//!
//! ```text
//! after-init:         a miss on the rung -> in the background, one take at a time per node:
//!                     a start from the image (or a cold boot), not counted as the function's
//!                     -> SNAPSHOT (before-snapshot hooks, gc; within the init timeout)
//!                     -> dump (layer) -> the cache -> the instance is stopped
//! after-first-invoke: a new instance's first invocation answered -> off the request path,
//!                     holding that invocation's permit: SNAPSHOT -> dump -> stopped (when
//!                     another take is under way it is not waited for: the instance serves
//!                     on, and the function's next new instance tries again)
//! ```
//!
//! An instance that reached its snapshot point is never served again: its before-snapshot
//! hooks ran in it (connections closed, say); instances restored from the snapshot serve.
//!
//! The snapshot's key names everything it depends on (the function's version and creation
//! time, so every deploy inits anew and a function deleted and created again under its name
//! is another; code, packages, handler, memory, environment, network, point; the parent image
//! and its metadata hash; the bootstrap and snapshot format): a start computes the key again
//! and a snapshot with another is stale, removed, and taken anew. A take that fails backs off
//! for its key (1 min, doubling to 1 h); a take that ends after its function was replaced or
//! deleted removes what it added.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ember_runtime::python::SnapshotPointError;
use ember_snap::{DumpOptions, Lineage, LoadedImage};
use tracing::{Instrument, info_span};

use super::invoke::StartCx;
use super::ladder::{self, Climbed, Rung};
use super::{Deployed, Node, Timing, error_chain, now_secs};
use crate::config::SnapshotMode;
use crate::function::SnapshotPoint;
use crate::live::Live;
use crate::ratelimit::RateLimit;
use crate::snapshots::{SnapshotInfo, snapshot_id};

/// The descriptors a restored runtime is handed: stdio and the protocol socket.
const INHERITED: [i32; 4] = [0, 1, 2, 3];

/// Why no snapshot was taken of an instance.
#[derive(Debug, thiserror::Error)]
pub enum TakeError {
    #[error(transparent)]
    Point(#[from] SnapshotPointError),
    #[error(
        "the instance runs {0} threads at its snapshot point and the snapshot engine dumps \
         single-threaded processes; start threads in the handler, not at import, or set \
         snapshot = \"off\""
    )]
    Threads(u32),
    #[error("its dependency image {id} cannot be read for the layer")]
    Parent {
        id: String,
        #[source]
        source: crate::images::ImageError,
    },
    #[error("dumping the instance")]
    Dump(#[source] ember_snap::DumpError),
    #[error("the instance's process is gone")]
    Gone,
    #[error("a background task failed: {0}")]
    Task(String),
    #[error(
        "the runtime did not reach its snapshot point within {0} s (a before-snapshot hook that \
         does not return?)"
    )]
    Hung(u64),
    #[error("the instance to snapshot could not be started ({0})")]
    Start(&'static str),
    #[error(
        "the instance was restored from image {restored_from:?} but image {serving:?} serves \
         the function now; the next start takes a snapshot over it"
    )]
    ParentChanged {
        restored_from: Option<String>,
        serving: Option<String>,
    },
    #[error("the function was replaced or deleted while its snapshot was taken")]
    Superseded,
    #[error("its last snapshot failed to restore repeatedly and was removed: {0}")]
    Unusable(String),
    #[error(transparent)]
    Store(#[from] crate::snapshots::SnapshotError),
}

/// Dumps `live`'s process (stopped at its snapshot point) into `out`: a layer over `parent`,
/// the image it was restored from, or whole. The pages a lazy restore has not installed yet
/// are read through its page server: the instance's own, lent to the blocking task and
/// given back.
pub(in crate::node) async fn dump_instance(
    live: &mut Live,
    out: std::path::PathBuf,
    parent: Option<Arc<LoadedImage>>,
) -> Result<ember_snap::DumpStats, TakeError> {
    let pid = live
        .sandbox
        .as_ref()
        .and_then(|s| s.first_process())
        .or_else(|| i32::try_from(live.inst.pid()).ok())
        .ok_or(TakeError::Gone)?;
    let server = live.pages.take();
    let joined = tokio::task::spawn_blocking(move || {
        let lineage = Lineage {
            parent: parent.as_deref(),
            server: server.as_ref(),
        };
        let opts = DumpOptions {
            inherited: INHERITED.to_vec(),
            ..DumpOptions::default()
        };
        let r = ember_snap::dump_restored(pid, &out, &opts, lineage);
        (server, r)
    })
    .await;
    match joined {
        Ok((server, r)) => {
            live.pages = server;
            r.map_err(TakeError::Dump)
        }
        Err(e) => Err(TakeError::Task(e.to_string())),
    }
}

/// Clears a function's "snapshot being taken" mark when the take ends, however it ends.
struct Taking(Arc<Deployed>);

impl Drop for Taking {
    fn drop(&mut self) {
        self.0.snapshotting.store(false, Ordering::SeqCst);
    }
}

/// A take of a function that failed: takes for the same key wait until `until`.
pub(in crate::node) struct TakeBackoff {
    key: String,
    failures: u32,
    until: Instant,
}

/// The parent of a function's snapshot: its image and that image's metadata hash.
#[derive(Clone)]
pub(in crate::node) struct Parent {
    pub id: String,
    pub meta_hash: String,
}

impl Node {
    /// Whether `d` takes and uses function snapshots on this node.
    pub(in crate::node) fn snapshots_on(&self, d: &Deployed) -> bool {
        self.cfg.snapshots.mode != SnapshotMode::Off
            && d.record.config.snapshot != SnapshotPoint::Off
            && d.record.config.runtime.restorable()
            && self.sandboxes.is_some()
    }

    /// The key of `d`'s snapshot over `parent`: a hash of everything it depends on.
    pub(in crate::node) fn snapshot_key(&self, d: &Deployed, parent: Option<&Parent>) -> String {
        self.snapshot_key_of(d, parent, false)
    }

    /// The name of `d`'s snapshot over `parent` in the snapshot store: what it depends on
    /// that every node of the store computes alike (its code, configuration, image and
    /// runtime, and the function's name; not this node's version number or deploy time).
    pub(in crate::node) fn snapshot_store_key(
        &self,
        d: &Deployed,
        parent: Option<&Parent>,
    ) -> String {
        self.snapshot_key_of(d, parent, true)
    }

    fn snapshot_key_of(&self, d: &Deployed, parent: Option<&Parent>, portable: bool) -> String {
        let rec = &d.record;
        let c = &rec.config;
        let mut doc = serde_json::json!({
            "code": rec.code_hash,
            "opt": rec.opt_hash,
            "env": rec.env_key,
            "handler": c.handler,
            "memory_mb": c.memory_mb,
            // What its instances get (its log settings included: the runtime reads them at
            // import, so a snapshot of other settings is another).
            "environment": c.runtime_env(),
            "network": c.network,
            "point": c.snapshot.as_str(),
            "parent": parent.map(|p| (&p.id, &p.meta_hash)),
            "runtime": super::runtime_of(&self.bootstrap),
        });
        if portable {
            doc["function"] = serde_json::json!(rec.name);
        } else {
            // Every deploy inits anew (Lambda SnapStart: one snapshot per version); a
            // function deleted and created again under its name is another function.
            doc["version"] = serde_json::json!(rec.version);
            doc["created_at"] = serde_json::json!(rec.created_at);
        }
        blake3::hash(doc.to_string().as_bytes())
            .to_hex()
            .to_string()
    }

    /// The parent a snapshot of `d` taken now would have (its image when one serves it).
    pub(in crate::node) fn snapshot_parent(&self, d: &Deployed) -> Option<Parent> {
        let id = self.image_serving(d)?;
        let co = self.images.checkout_quiet(&id).ok()?;
        Some(Parent {
            meta_hash: co.meta_hash(),
            id,
        })
    }

    /// Takes `d`'s after-init snapshot (its current `key`) in the background, unless one is
    /// being taken or a take for the same key failed lately (see [`TakeBackoff`]).
    pub(in crate::node) fn snapshot_in_background(&self, d: &Arc<Deployed>, key: String) {
        if d.record.config.snapshot != SnapshotPoint::AfterInit
            || self.stopping.load(Ordering::SeqCst)
            || self.take_held_back(d, &key)
        {
            return;
        }
        if d.snapshotting.swap(true, Ordering::SeqCst) {
            return;
        }
        let taking = Taking(d.clone());
        let Some(node) = self.me.upgrade() else {
            return;
        };
        let d = d.clone();
        self.spawn_background(async move {
            let _taking = taking;
            let span = info_span!("snapshot.take", function = %d.record.name);
            node.snapshot_fresh_instance(&d, key).instrument(span).await;
        });
    }

    /// Whether a take of `d` for `key` would repeat one that failed within its backoff.
    fn take_held_back(&self, d: &Deployed, key: &str) -> bool {
        let held = d.take_backoff.lock().unwrap_or_else(|p| p.into_inner());
        held.as_ref()
            .is_some_and(|b| b.key == key && Instant::now() < b.until)
    }

    /// A take of `d` succeeded: its failures in a row end.
    fn take_succeeded(&self, d: &Deployed) {
        *d.take_backoff.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Counts a failed take of `d` for `key` (held back 1 min, doubling to 1 h while the key
    /// stays) and says why in the function's log.
    pub(in crate::node) fn take_failed(&self, d: &Deployed, key: String, e: &TakeError) {
        let mut held = d.take_backoff.lock().unwrap_or_else(|p| p.into_inner());
        let failures = match held.as_ref() {
            Some(b) if b.key == key => b.failures + 1,
            _ => 1,
        };
        let wait = Duration::from_secs(60 << (failures - 1).min(6)).min(Duration::from_secs(3600));
        *held = Some(TakeBackoff {
            key,
            failures,
            until: Instant::now() + wait,
        });
        drop(held);
        let msg = format!(
            "no function snapshot: {}; the next try is in {} s at the earliest",
            error_chain(e),
            wait.as_secs()
        );
        self.logs
            .append(&d.record.name, "ember", "event", msg.as_bytes());
        static LIMIT: RateLimit = RateLimit::new(Duration::from_secs(10), 5);
        if let Some(dropped) = LIMIT.allow() {
            tracing::warn!(function = %d.record.name, dropped, "{msg}");
        }
    }

    /// Starts an instance of `d` for its snapshot alone (from its image, or a cold boot),
    /// snapshots it at its snapshot point and stops it.
    async fn snapshot_fresh_instance(&self, d: &Arc<Deployed>, key: String) {
        let _one = self.snapshot_builds.acquire().await;
        if !self.is_current(d) {
            return;
        }
        let mut cx = StartCx {
            node: self,
            d,
            timing: Timing::default(),
            background: true,
        };
        let rungs: [&dyn Rung<StartCx<'_>, Live>; 2] =
            [&ladder::image::Image, &ladder::cold_boot::ColdBoot];
        let live = match ladder::climb(&rungs, &mut cx).await {
            Climbed::Started { inst, .. } => inst,
            Climbed::Ended { outcome, .. } => {
                self.take_failed(d, key, &TakeError::Start(outcome.label()));
                return;
            }
        };
        let init = cx.timing.init();
        self.snapshot_live(d, live, init, self.cfg.init_timeout)
            .await;
    }

    /// Snapshots `live` at its snapshot point, then stops it: its before-snapshot hooks ran in
    /// it, so it is never served again (an instance restored from the snapshot serves instead).
    pub(in crate::node) async fn snapshot_live(
        &self,
        d: &Deployed,
        mut live: Live,
        init: Duration,
        limit: Duration,
    ) {
        let parent = self.snapshot_parent(d);
        let key = self.snapshot_key(d, parent.as_ref());
        // Checked before the hooks run: a take over another image than the one serving now
        // (the image was built meanwhile) is not a failure, and is simply not made.
        if parent.as_ref().map(|p| &p.id) != live.image.as_ref() || !self.is_current(d) {
            tracing::debug!(function = %d.record.name, "no function snapshot: its image changed, or it was replaced, since the instance started");
            self.discard(d, live, "its function snapshot is not wanted any more");
            return;
        }
        let taken = match tokio::time::timeout(limit, live.inst.snapshot_point()).await {
            Err(_) => Err(TakeError::Hung(limit.as_secs())),
            Ok(Err(e)) => Err(e.into()),
            Ok(Ok(ready)) if ready.threads > 1 => Err(TakeError::Threads(ready.threads)),
            Ok(Ok(_)) if !self.is_current(d) => Err(TakeError::Superseded),
            Ok(Ok(_)) => {
                self.dump_live(d, &mut live, parent, key.clone(), init)
                    .await
            }
        };
        match &taken {
            Ok(info) => {
                let parent = info.parent_image.as_deref().unwrap_or("none (whole)");
                self.logs.append(
                    &d.record.name,
                    live.id(),
                    "event",
                    format!(
                        "function snapshot {} taken ({}, over image {parent}, {} pages, \
                         {:.1} MiB, dumped in {:.0} ms)",
                        info.id,
                        info.point.as_str(),
                        info.pages,
                        info.bytes as f64 / (1 << 20) as f64,
                        info.dump_ms
                    )
                    .as_bytes(),
                );
                self.take_succeeded(d);
                self.upload_in_background("snapshot", info.set_id(), self.snapshots.path(&info.id));
            }
            // Not the function's doing, and not worth a note in a log that may be another
            // function's by now.
            Err(e @ (TakeError::Superseded | TakeError::ParentChanged { .. })) => {
                tracing::debug!(function = %d.record.name, "no function snapshot: {}", error_chain(e));
            }
            Err(e) => self.take_failed(d, key, e),
        }
        self.discard(d, live, "its function snapshot was taken (or tried)");
    }

    /// Whether `d` is still the served version of its function (not replaced or deleted).
    pub(in crate::node) fn is_current(&self, d: &Deployed) -> bool {
        !d.pool.is_retired()
            && self
                .read_functions()
                .get(&d.record.name)
                .is_some_and(|now| std::ptr::eq(Arc::as_ptr(now), d))
    }

    /// The dump itself, into the cache, as a layer over `parent` (the image that serves the
    /// function now, which the caller checked `live` was restored from; its metadata is
    /// checked here not to have changed since).
    async fn dump_live(
        &self,
        d: &Deployed,
        live: &mut Live,
        parent: Option<Parent>,
        key: String,
        init: Duration,
    ) -> Result<SnapshotInfo, TakeError> {
        let rec = &d.record;
        let parent = match parent {
            Some(p) => {
                let co = self
                    .images
                    .checkout_quiet(&p.id)
                    .map_err(|source| TakeError::Parent {
                        id: p.id.clone(),
                        source,
                    })?;
                let id2 = p.id.clone();
                let pages = tokio::task::spawn_blocking(move || co.pages(true))
                    .await
                    .map_err(|e| TakeError::Task(e.to_string()))?
                    .map_err(|source| TakeError::Parent { id: id2, source })?;
                if hex::encode(pages.image.meta_hash()) != p.meta_hash {
                    return Err(TakeError::ParentChanged {
                        restored_from: live.image.clone(),
                        serving: Some(p.id),
                    });
                }
                Some((p, pages.image))
            }
            None => None,
        };
        let id = snapshot_id(&rec.name, &key);
        let store_key = Some(self.snapshot_store_key(d, parent.as_ref().map(|(p, _)| p)));
        let staged = self.snapshots.staging(&id);
        let t0 = Instant::now();
        let image: Option<Arc<LoadedImage>> = parent.as_ref().map(|(_, i)| i.clone());
        let stats = dump_instance(live, staged.clone(), image).await;
        let stats = match stats {
            Ok(s) => s,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&staged);
                return Err(e);
            }
        };
        let info = SnapshotInfo {
            id,
            function: rec.name.clone(),
            version: rec.version,
            key,
            parent_image: parent.as_ref().map(|(p, _)| p.id.clone()),
            parent_meta_hash: parent.as_ref().map(|(p, _)| p.meta_hash.clone()),
            point: rec.config.snapshot,
            bytes: 0,
            pages: stats.pages,
            created_at: now_secs(),
            init_ms: init.as_secs_f64() * 1e3,
            dump_ms: t0.elapsed().as_secs_f64() * 1e3,
            store_key,
            fetched: false,
            working_set_pages: 0,
        };
        let store = self.snapshots.clone();
        let (i2, st2) = (info.clone(), staged.clone());
        let remote = self.remote.clone();
        let evicted = tokio::task::spawn_blocking(move || {
            let set = i2.set_id().to_string();
            let added = store.add(&st2, i2);
            // Listed from now on: its store state is its own upload's (queued just after),
            // never an earlier version's.
            if let (Ok(_), Some(remote)) = (&added, remote) {
                remote.mark_uploading("snapshot", &set);
            }
            added
        })
        .await
        .map_err(|e| TakeError::Task(e.to_string()))??;
        self.retire_replaced(d, parent.as_ref().map(|(p, _)| p), evicted);
        // Replaced or deleted while it was taken: it must not outlive its version (a delete
        // removes its function's snapshots after retiring it, so one of the two sees it).
        if !self.is_current(d) {
            let (store, sid) = (self.snapshots.clone(), info.id.clone());
            let _ = tokio::task::spawn_blocking(move || store.remove(&sid)).await;
            return Err(TakeError::Superseded);
        }
        // As stored: the store counts its bytes.
        Ok(self.snapshots.get(&info.id).unwrap_or(info))
    }

    /// Whether an instance that just served its first invocation should be snapshotted
    /// (`after-first-invoke`, none taken for the current key, none being taken, no recent
    /// failure for it); claims the function's one snapshot in flight when so.
    pub(in crate::node) fn first_invoke_snapshot_wanted(&self, d: &Deployed) -> bool {
        // Not while requests wait for this function's permits: the take holds one.
        if !self.snapshots_on(d)
            || d.record.config.snapshot != SnapshotPoint::AfterFirstInvoke
            || self.stopping.load(Ordering::SeqCst)
            || d.pool.waiting() > 0
        {
            return false;
        }
        let key = self.snapshot_key(d, self.snapshot_parent(d).as_ref());
        let have = self
            .snapshots
            .get(&snapshot_id(&d.record.name, &key))
            .is_some_and(|i| i.key == key);
        !have && !self.take_held_back(d, &key) && !d.snapshotting.swap(true, Ordering::SeqCst)
    }

    /// Snapshots `live` (which has just answered its first invocation) in the background,
    /// then stops it. It keeps its invocation's admission `permit` until then, so the
    /// function never has more than `max_instances` instances.
    pub(in crate::node) fn snapshot_after_first_invoke(
        &self,
        d: &Arc<Deployed>,
        live: Live,
        permit: tokio::sync::OwnedSemaphorePermit,
        generation: u64,
        init: Duration,
    ) {
        // Never wait for another take while holding this function's permit (its requests
        // would queue behind an unrelated init): the instance, which has not reached its
        // snapshot point, serves on, and a later new instance tries again.
        let taking = Taking(d.clone());
        let gate = match self.snapshot_builds.clone().try_acquire_owned() {
            Ok(g) => g,
            Err(_) => {
                tracing::debug!(function = %d.record.name, "no after-first-invoke snapshot now: another take is under way; the next new instance tries again");
                if let Some(stale) = d.pool.put_back(live, generation) {
                    self.discard(d, stale, "stopped while busy");
                }
                return;
            }
        };
        let Some(node) = self.me.upgrade() else {
            self.discard(d, live, "daemon shutting down");
            return;
        };
        let d = d.clone();
        self.spawn_background(
            async move {
                let (_permit, _gate, _taking) = (permit, gate, taking);
                // It holds its function's permit: requests queued meanwhile wait at most the
                // queue timeout, so its hooks get half of that, at most the init timeout.
                let limit = (node.cfg.queue_timeout / 2).min(node.cfg.init_timeout);
                node.snapshot_live(&d, live, init, limit).await;
            }
            .instrument(info_span!("snapshot.take")),
        );
    }
}
