//! The function-snapshot rung: an instance restored from the function's own snapshot, a
//! layer over its dependency image (or a whole snapshot when it has none), taken after its
//! init (`node/snapshot_take.rs`). Nothing is imported: the restored runtime resets its
//! environment, reseeds, runs the function's after-restore hooks and is ready.
//!
//! ```text
//! key (code, config, parent image and its hash, bootstrap) -> the cache: hit? stale? miss?
//!     -> the layer loaded over its parent (or from the cache's memory tier)
//!     -> fresh sandbox, first process parked -> restore -> INIT restored -> READY
//! ```
//!
//! A miss or a stale snapshot skips the rung (and has a snapshot taken in the background);
//! a snapshot that fails to load or restore, or whose restored process fails before HOOKED,
//! falls through to the image rung, and is removed after repeated failures. After HOOKED, a
//! failure (an after-restore hook that raises) is the function's own.

use std::sync::Arc;
use std::time::Instant;

use ember_runtime::StartSpec;

use ember_snap::LoadedImage;
use ember_snap::lazy::Policy;
use tracing::{Instrument, info_span};

use super::{Attempt, AttemptFuture, Rung, RungError, StartPath};
use crate::function::Network;
use crate::images::{Checkout, Pages};
use crate::live::Live;
use crate::node::fetch::{FromStore, LazySnapshot, SNAPSHOT_DEADLINE};
use crate::node::invoke::StartCx;
use crate::node::restore::{Blame, Restored, Sees};
use crate::node::snapshot_take::{Parent, TakeError};
use crate::node::{Deployed, Node, error_chain, instance_id};
use crate::snapshots::{Lookup, SnapshotHandle};

/// The function-snapshot rung.
pub(in crate::node) struct FunctionSnapshot;

impl<'c> Rung<StartCx<'c>, Live> for FunctionSnapshot {
    fn path(&self) -> StartPath {
        StartPath::FunctionSnapshot
    }
    fn name(&self) -> &'static str {
        "function snapshot"
    }
    fn starts_new(&self) -> bool {
        true
    }
    fn attempt<'a>(&'a self, cx: &'a mut StartCx<'c>) -> AttemptFuture<'a, Live> {
        Box::pin(async move {
            let (node, d) = (cx.node, cx.d);
            if !node.snapshots_on(d) {
                return Attempt::Skipped;
            }
            if !cx.background
                && (node.rung_slower(d, StartPath::FunctionSnapshot)
                    || (!node.cfg.fixed_ladder
                        && d.start_costs
                            .explore(StartPath::FunctionSnapshot, StartPath::Image)
                        && node.image_serving(d).is_some()))
            {
                return Attempt::Skipped;
            }
            let parent = node.snapshot_parent(d);
            let key = node.snapshot_key(d, parent.as_ref());
            let store = node.snapshots.clone();
            let (name, k) = (d.record.name.clone(), key.clone());
            let found = tokio::task::spawn_blocking(move || store.lookup(&name, &k)).await;
            let handle = match found {
                Ok(Lookup::Hit(h)) => h,
                Ok(missed) => {
                    // Not here (or stale, removed): the store may hold it.
                    let fetched = node
                        .snapshot_from_store(
                            d,
                            parent.as_ref(),
                            &key,
                            SNAPSHOT_DEADLINE,
                            node.cfg.snapshots.lazy_remote,
                            &mut cx.timing,
                        )
                        .await;
                    match (fetched, missed) {
                        (Some(FromStore::Cached(h)), _) => h,
                        (Some(FromStore::Lazy(l)), _) => {
                            let what = format!(
                                "function snapshot {} (restored lazily from the snapshot store)",
                                l.id
                            );
                            return match node.lazy_snapshot_start(cx, l, parent).await {
                                Ok(live) => Attempt::Started(live),
                                Err(Blame::Function(outcome)) => Attempt::Ended(outcome),
                                // Not counted against the snapshot: the cache does not hold
                                // it yet (it is added once whole, and counted from then on).
                                Err(Blame::Snapshot(error)) => Attempt::Failed { what, error },
                            };
                        }
                        (None, missed) => {
                            if let Lookup::Stale(old) = missed {
                                node.logs.append(
                                    &d.record.name,
                                    "ember",
                                    "event",
                                    format!(
                                        "function snapshot {} is stale (its code, configuration \
                                         or image changed): removed, a new one is taken",
                                        old.id
                                    )
                                    .as_bytes(),
                                );
                                node.retire_from_store(Some((d, parent.as_ref())), [old]);
                            }
                            node.snapshot_in_background(d, key.clone());
                            return Attempt::Skipped;
                        }
                    }
                }
                Err(e) => {
                    return Attempt::Failed {
                        what: "the function snapshot cache".into(),
                        error: RungError::Task(e.to_string()),
                    };
                }
            };
            let id = handle.info.id.clone();
            let dir = handle.dir.clone();
            // Fetched from the store: its set, refused if it cannot be restored here.
            let fetched = handle
                .info
                .fetched
                .then(|| handle.info.set_id().to_string());
            match node.snapshot_start(cx, handle, parent).await {
                Ok(live) => Attempt::Started(live),
                Err(Blame::Function(outcome)) => Attempt::Ended(outcome),
                Err(Blame::Snapshot(error)) => {
                    let msg = error_chain(&error);
                    let store = node.snapshots.clone();
                    let sid = id.clone();
                    // Its files gone: no retry can succeed, it goes now (and is taken anew).
                    let gone = !dir.join("meta").exists();
                    let removed = tokio::task::spawn_blocking(move || {
                        if gone {
                            store.remove(&sid).is_ok()
                        } else {
                            store.failed(&sid, &msg)
                        }
                    })
                    .await
                    .unwrap_or(false);
                    if removed && gone {
                        node.snapshot_in_background(d, key.clone());
                    } else if removed && let (Some(set), Some(remote)) = (&fetched, &node.remote) {
                        // Another node's snapshot that does not restore here: this node
                        // takes its own (its own could; the store's copy is not fetched again).
                        remote.refuse("snapshot", set);
                        node.snapshot_in_background(d, key.clone());
                    } else if removed {
                        // The same function, image and bootstrap would give the same snapshot:
                        // not taken again before the backoff.
                        let why = TakeError::Unusable(error_chain(&error));
                        node.take_failed(d, key, &why);
                    }
                    if removed && gone {
                        tracing::error!(snapshot = %id, "function snapshot removed: its files are gone; a new one is taken");
                    } else if removed {
                        tracing::error!(
                            snapshot = %id,
                            "function snapshot removed after {} failed restores in a row; a new \
                             one is taken",
                            node.cfg.snapshots.failures_unhealthy
                        );
                    }
                    Attempt::Failed {
                        what: format!("function snapshot {id}"),
                        error,
                    }
                }
            }
        })
    }
}

impl Node {
    /// An instance of `cx.d` restored from its snapshot `h` (over `parent`, the image that
    /// serves the function now: the key says the snapshot was taken over it).
    async fn snapshot_start(
        &self,
        cx: &mut StartCx<'_>,
        h: SnapshotHandle,
        parent: Option<Parent>,
    ) -> Result<Live, Blame> {
        let d: &Deployed = cx.d;
        let rec = &d.record;
        let id = h.info.id.clone();
        let snap_err = |why: String| {
            Blame::Snapshot(RungError::Snapshot {
                id: id.clone(),
                why,
            })
        };
        let (mut spec, sees, parent_image) =
            self.snapshot_instance(d, parent.as_ref().map(|p| p.id.as_str()))?;
        let layer = match &h.loaded {
            Some(l) => l.clone(),
            None => {
                let dir = h.dir.clone();
                let t0 = Instant::now();
                let loaded = tokio::task::spawn_blocking(move || match parent_image {
                    Some(co) => {
                        let parent = co.pages(true).map_err(|e| error_chain(&e))?;
                        LoadedImage::load_with_parent(&dir, &parent.image)
                            .map_err(|e| error_chain(&e))
                    }
                    None => LoadedImage::load(&dir).map_err(|e| error_chain(&e)),
                })
                .await
                .map_err(|e| snap_err(e.to_string()))?
                .map_err(snap_err)?;
                cx.timing.load = Some(t0.elapsed());
                let layer = Arc::new(loaded);
                let (store, sid, l) = (self.snapshots.clone(), id.clone(), layer.clone());
                tokio::task::spawn_blocking(move || store.keep(&sid, l));
                layer
            }
        };
        let policy = self.cfg.images.policy;
        // Forked from the snapshot's template when one is kept; else restored, and the
        // template made in the background for the next start.
        let forked = match !cx.background && self.templates_serve(d) {
            true => {
                let t0 = Instant::now();
                let span = info_span!("start.fork", instance = %spec.instance_id, snapshot = %id);
                let mut standby = None;
                let live = self
                    .snapshot_fork_now(d, &id, &mut spec, &mut standby)
                    .instrument(span)
                    .await;
                if live.is_none() {
                    self.snapshot_template_ensure(&id, layer.clone(), &sees);
                }
                live.map(|l| (l, standby.ok_or(t0.elapsed())))
            }
            false => None,
        };
        let (live, how) = match forked {
            Some((live, Ok(standby))) => {
                cx.timing.standby = Some(standby);
                let how = format!("function snapshot {id}, a standby forked from its template");
                (live, how)
            }
            Some((live, Err(fork))) => {
                cx.timing.fork = Some(fork);
                let how = format!("function snapshot {id}, forked from its template");
                (live, how)
            }
            None => {
                // Its working set recorded for other nodes: lazily, from memory.
                let records = match cx.background {
                    true => None,
                    false => self.records_working_set(&h.info, &layer),
                };
                let policy = if records.is_some() {
                    Policy::Lazy
                } else {
                    policy
                };
                let pages = Pages::in_memory(layer.clone(), None);
                let sink = self.logs.sink(&rec.name);
                let span = info_span!("start.function_snapshot", instance = %spec.instance_id, snapshot = %id);
                let pooled = !cx.background && self.standby_serves(d);
                let Restored {
                    mut live,
                    sandbox,
                    restore,
                    ..
                } = self
                    .restore_instance(&mut spec, sees, &id, &pages, policy, sink, pooled)
                    .instrument(span)
                    .await?;
                live.records = records;
                cx.timing.sandbox = Some(sandbox);
                cx.timing.restore = Some(restore);
                (live, format!("function snapshot {id}, {policy}"))
            }
        };
        self.snapshot_started(cx, live, &spec, parent, &id, &how)
            .await
    }

    /// An instance of `cx.d` restored lazily from snapshot `l`, coming from the snapshot
    /// store: its working set installed before it runs, the rest of its own pages fetched as
    /// it touches them (read from this node's copy once the background fetch has it whole).
    pub(in crate::node) async fn lazy_snapshot_start(
        &self,
        cx: &mut StartCx<'_>,
        l: LazySnapshot,
        parent: Option<Parent>,
    ) -> Result<Live, Blame> {
        let d: &Deployed = cx.d;
        let rec = &d.record;
        let (mut spec, sees, _) =
            self.snapshot_instance(d, parent.as_ref().map(|p| p.id.as_str()))?;
        let pages = Pages {
            image: l.layer,
            source: l.source,
            working_set: Some(l.working_set),
        };
        let sink = self.logs.sink(&rec.name);
        let span =
            info_span!("start.function_snapshot", instance = %spec.instance_id, snapshot = %l.id);
        let pooled = !cx.background && self.standby_serves(d);
        let Restored {
            mut live,
            sandbox,
            restore,
            ..
        } = self
            .restore_instance(
                &mut spec,
                sees,
                &l.id,
                &pages,
                Policy::Prefetch,
                sink,
                pooled,
            )
            .instrument(span)
            .await?;
        live.from_store = true;
        live.pages_may_fail = true;
        cx.timing.sandbox = Some(sandbox);
        cx.timing.restore = Some(restore);
        let how = format!(
            "function snapshot {}, restored lazily from the snapshot store",
            l.id
        );
        self.snapshot_started(cx, live, &spec, parent, &l.id, &how)
            .await
    }

    /// What an instance restored from a snapshot of `d` over `image` starts with: its spec
    /// (the interpreter and packages the snapshot was taken with: its image's, or the
    /// function's own), what its sandbox shows it, and the image, checked out.
    pub(in crate::node) fn snapshot_instance(
        &self,
        d: &Deployed,
        image: Option<&str>,
    ) -> Result<(StartSpec, Sees, Option<Checkout>), RungError> {
        let (python, env_dir, co) = match image {
            Some(id) => {
                let co = self
                    .images
                    .checkout(id)
                    .map_err(|source| RungError::Checkout {
                        id: id.to_string(),
                        source,
                    })?;
                (co.python.clone(), co.env_dir.clone(), Some(co))
            }
            None => (d.env.python(), d.env.dir.clone(), None),
        };
        let rec = &d.record;
        let spec = self.instance_spec(d, instance_id(&rec.name), python, Vec::new());
        let sees = Sees {
            read_only: vec![d.code_dir.clone(), env_dir, self.bootstrap.clone()],
            bound_at: d.opt_binds(),
            tmp_bytes: Some(d.tmp_bytes(&self.cfg)),
            host_network: rec.config.network == Network::Host,
        };
        Ok((spec, sees, co))
    }

    /// The second half of a start from function snapshot `id`: INIT restored, then counted
    /// and said (`how`).
    async fn snapshot_started(
        &self,
        cx: &mut StartCx<'_>,
        live: Live,
        spec: &StartSpec,
        parent: Option<Parent>,
        id: &str,
        how: &str,
    ) -> Result<Live, Blame> {
        let d: &Deployed = cx.d;
        let (mut live, t) = self.init_restored_instance(d, live, spec).await?;
        let timing = &mut cx.timing;
        timing.hook = Some(t.hook + t.after_restore);
        live.image = parent.map(|p| p.id);
        live.snapshot = Some(id.to_string());
        let store = self.snapshots.clone();
        let sid = id.to_string();
        tokio::task::spawn_blocking(move || store.record_use(&sid));
        self.restored_started(d, spec, &live, how, timing.init());
        Ok(live)
    }
}
