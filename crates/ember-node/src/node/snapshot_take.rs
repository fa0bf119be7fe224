//! Taking function snapshots: an initialized instance of a function dumped once, as a layer
//! over the dependency image it was restored from (only the pages that differ), or whole when
//! it has no image. The ladder's function-snapshot rung (`ladder/function_snapshot.rs`)
//! restores them.
//!
//! ```text
//! after-init:         a miss on the rung -> in the background, one at a time per function:
//!                     a start from the image (or a cold boot) -> SNAPSHOT (before-snapshot
//!                     hooks, gc) -> dump (layer) -> the instance is stopped -> the cache
//! after-first-invoke: a new instance's first invocation answered -> off the request path:
//!                     SNAPSHOT -> dump -> CONTINUE -> the instance goes back to the pool
//! ```
//!
//! The snapshot's key names everything it depends on (code, packages, handler, memory,
//! environment, network, point, the parent image and its metadata hash, the bootstrap and
//! snapshot format): a start computes the key again and a snapshot with another is stale,
//! removed, and taken anew. A redeploy that changes none of these (a timeout, a description)
//! keeps it.

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
    #[error(transparent)]
    Store(#[from] crate::snapshots::SnapshotError),
}

/// The parent of a function's snapshot: its image and that image's metadata hash.
pub(in crate::node) struct Parent {
    pub id: String,
    pub meta_hash: String,
}

impl Node {
    /// Whether `d` takes and uses function snapshots on this node.
    pub(in crate::node) fn snapshots_on(&self, d: &Deployed) -> bool {
        self.cfg.snapshots.mode == SnapshotMode::Local
            && d.record.config.snapshot != SnapshotPoint::Off
            && d.record.config.runtime.restorable()
            && self.sandboxes.is_some()
    }

    /// The key of `d`'s snapshot over `parent`: a hash of everything it depends on.
    pub(in crate::node) fn snapshot_key(&self, d: &Deployed, parent: Option<&Parent>) -> String {
        let rec = &d.record;
        let c = &rec.config;
        let doc = serde_json::json!({
            "code": rec.code_hash,
            "env": rec.env_key,
            "handler": c.handler,
            "memory_mb": c.memory_mb,
            "environment": c.env,
            "network": c.network,
            "point": c.snapshot.as_str(),
            "parent": parent.map(|p| (&p.id, &p.meta_hash)),
            "runtime": super::runtime_of(&self.bootstrap),
        });
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

    /// Takes `d`'s after-init snapshot in the background, unless one is being taken.
    pub(in crate::node) fn snapshot_in_background(&self, d: &Arc<Deployed>) {
        if d.record.config.snapshot != SnapshotPoint::AfterInit
            || d.snapshotting.swap(true, Ordering::SeqCst)
        {
            return;
        }
        let Some(node) = self.me.upgrade() else {
            d.snapshotting.store(false, Ordering::SeqCst);
            return;
        };
        let d = d.clone();
        let mut tasks = self.background.lock().unwrap_or_else(|p| p.into_inner());
        while tasks.try_join_next().is_some() {}
        tasks.spawn(async move {
            let span = info_span!("snapshot.take", function = %d.record.name);
            node.snapshot_fresh_instance(&d).instrument(span).await;
            d.snapshotting.store(false, Ordering::SeqCst);
        });
    }

    /// Starts an instance of `d` for its snapshot alone (from its image, or a cold boot),
    /// snapshots it at its snapshot point and stops it.
    async fn snapshot_fresh_instance(&self, d: &Arc<Deployed>) {
        let _one = self.auto_builds.acquire().await;
        if d.pool.is_retired() {
            return;
        }
        let mut cx = StartCx {
            node: self,
            d,
            timing: Timing::default(),
        };
        let rungs: [&dyn Rung<StartCx<'_>, Live>; 2] =
            [&ladder::image::Image, &ladder::cold_boot::ColdBoot];
        let live = match ladder::climb(&rungs, &mut cx).await {
            Climbed::Started { inst, .. } => inst,
            // The start failed: logged by its rung; the next miss tries again.
            Climbed::Ended { .. } => return,
        };
        let init = cx.timing.init();
        let (live, taken) = self.snapshot_live(d, live, init).await;
        if let Err(e) = &taken {
            tracing::warn!(function = %d.record.name, "no function snapshot: {}", error_chain(e));
        }
        if let Some(live) = live {
            self.discard(d, live, "it served its function snapshot");
        }
    }

    /// Snapshots `live` at its snapshot point; gives the instance back when it can serve on
    /// (the dump failed or succeeded, the instance is unchanged), or `None` when it broke.
    pub(in crate::node) async fn snapshot_live(
        &self,
        d: &Deployed,
        mut live: Live,
        init: Duration,
    ) -> (Option<Live>, Result<SnapshotInfo, TakeError>) {
        let rec = &d.record;
        let ready = match live.inst.snapshot_point().await {
            Ok(r) => r,
            Err(e @ SnapshotPointError::Hook { .. }) => return (Some(live), Err(e.into())),
            Err(e) => {
                self.discard(d, live, "it failed at its snapshot point");
                return (None, Err(e.into()));
            }
        };
        let taken = if ready.threads > 1 {
            Err(TakeError::Threads(ready.threads))
        } else {
            self.dump_live(d, &mut live, init).await
        };
        if let Err(e) = live.inst.continue_after_snapshot().await {
            self.discard(d, live, "it could not continue after its snapshot");
            return (None, Err(e.into()));
        }
        if let Ok(info) = &taken {
            let parent = info.parent_image.as_deref().unwrap_or("none (whole)");
            self.logs.append(
                &rec.name,
                live.id(),
                "event",
                format!(
                    "function snapshot {} taken ({}, over image {parent}, {} pages, {:.1} MiB, \
                     dumped in {:.0} ms)",
                    info.id,
                    info.point.as_str(),
                    info.pages,
                    info.bytes as f64 / (1 << 20) as f64,
                    info.dump_ms
                )
                .as_bytes(),
            );
        }
        (Some(live), taken)
    }

    /// The dump itself, into the cache.
    async fn dump_live(
        &self,
        d: &Deployed,
        live: &mut Live,
        init: Duration,
    ) -> Result<SnapshotInfo, TakeError> {
        let rec = &d.record;
        let parent = match &live.image {
            Some(id) => {
                let co = self
                    .images
                    .checkout_quiet(id)
                    .map_err(|source| TakeError::Parent {
                        id: id.clone(),
                        source,
                    })?;
                let (co2, id2) = (co.clone(), id.clone());
                let pages = tokio::task::spawn_blocking(move || co2.pages(true))
                    .await
                    .map_err(|e| TakeError::Task(e.to_string()))?
                    .map_err(|source| TakeError::Parent { id: id2, source })?;
                Some((
                    Parent {
                        id: id.clone(),
                        meta_hash: co.meta_hash(),
                    },
                    pages.image,
                ))
            }
            None => None,
        };
        let key = self.snapshot_key(d, parent.as_ref().map(|(p, _)| p));
        let id = snapshot_id(&rec.name, &key);
        let staged = self.snapshots.staging(&id);
        let pid = live
            .sandbox
            .as_ref()
            .and_then(|s| s.first_process())
            .or_else(|| i32::try_from(live.inst.pid()).ok())
            .ok_or(TakeError::Gone)?;
        let t0 = Instant::now();
        // The dump reads pages a lazy restore has not installed yet through its page server:
        // the instance's own, lent to the blocking task and given back.
        let server = live.pages.take();
        let image: Option<Arc<LoadedImage>> = parent.as_ref().map(|(_, i)| i.clone());
        let out = staged.clone();
        let joined = tokio::task::spawn_blocking(move || {
            let lineage = Lineage {
                parent: image.as_deref(),
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
        let stats = match joined {
            Ok((server, r)) => {
                live.pages = server;
                r.map_err(TakeError::Dump)
            }
            Err(e) => Err(TakeError::Task(e.to_string())),
        };
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
        };
        let store = self.snapshots.clone();
        let (i2, st2) = (info.clone(), staged.clone());
        let evicted = tokio::task::spawn_blocking(move || store.add(&st2, i2))
            .await
            .map_err(|e| TakeError::Task(e.to_string()))??;
        for e in evicted {
            tracing::info!(snapshot = %e.id, function = %e.function, bytes = e.bytes, reason = ?e.reason, "function snapshot left the cache");
        }
        Ok(self
            .snapshots
            .list()
            .into_iter()
            .find(|s| s.info.id == info.id)
            .map_or(info, |s| s.info))
    }

    /// Whether an instance that just served its first invocation should be snapshotted
    /// (`after-first-invoke`, none taken for the current key, none being taken); claims the
    /// function's one snapshot in flight when so.
    pub(in crate::node) fn first_invoke_snapshot_wanted(&self, d: &Deployed) -> bool {
        if !self.snapshots_on(d) || d.record.config.snapshot != SnapshotPoint::AfterFirstInvoke {
            return false;
        }
        let key = self.snapshot_key(d, self.snapshot_parent(d).as_ref());
        let have = self
            .snapshots
            .list()
            .iter()
            .any(|s| s.info.function == d.record.name && s.info.key == key);
        !have && !d.snapshotting.swap(true, Ordering::SeqCst)
    }

    /// Snapshots `live` (which has just answered its first invocation) in the background,
    /// then puts it back in the pool.
    pub(in crate::node) fn snapshot_after_first_invoke(
        &self,
        d: &Arc<Deployed>,
        live: Live,
        generation: u64,
        init: Duration,
    ) {
        let Some(node) = self.me.upgrade() else {
            d.snapshotting.store(false, Ordering::SeqCst);
            self.discard(d, live, "daemon shutting down");
            return;
        };
        let d = d.clone();
        tokio::spawn(
            async move {
                let (live, taken) = node.snapshot_live(&d, live, init).await;
                if let Err(e) = &taken {
                    tracing::warn!(function = %d.record.name, "no function snapshot: {}", error_chain(e));
                }
                d.snapshotting.store(false, Ordering::SeqCst);
                if let Some(live) = live
                    && let Some(stale) = d.pool.put_back(live, generation)
                {
                    node.discard(&d, stale, "stopped while busy");
                }
            }
            .instrument(info_span!("snapshot.take")),
        );
    }
}
