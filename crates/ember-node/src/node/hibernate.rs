//! Hibernating idle instances and waking them (the Knix swap tier, over Ember's snapshots).
//!
//! ```text
//! hibernate: its keep-alive ran out (or a pre-warm window applies at the end of an
//!   invocation) -> out of the pool -> in the background, one at a time per node:
//!   SNAPSHOT (before-snapshot hooks, gc; one thread, within the init timeout)
//!   -> dump: a layer over the function snapshot or image it was restored from (only the
//!      pages it changed since), or whole when cold-booted -> the set (hibernated.rs: disk
//!      budget, oldest evicted) -> the instance stopped, its memory freed
//! wake (ladder/hibernated.rs): the function's newest hibernated instance -> the layer
//!   opened over its parent (in memory), its own pages read from its file as the page
//!   server asks (bulk: the first fault at once, then the rest in the background) -> fresh
//!   sandbox -> restore -> INIT restored (environment reset, reseed, after-restore hooks)
//!   -> READY, with the warm state its earlier invocations built
//! ```
//!
//! A hibernated instance serves only the deploy it came from (a new version or a delete
//! removes it). Anything that fails while hibernating stops the instance (what a stop would
//! have done anyway); a wake that fails before the after-restore hooks falls through to the
//! next rung, never failing the invocation. Only functions whose instances can be
//! snapshotted hibernate: a restorable runtime, the sandbox on, a snapshot point that is not
//! `off`, not cold-only.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ember_snap::LoadedImage;
use ember_snap::lazy::{FileSource, LayerFile, LayerSource, Policy};
use tracing::{Instrument, info_span};

use super::invoke::StartCx;
use super::ladder::RungError;
use super::restore::{Blame, Restored};
use super::snapshot_take::{TakeError, dump_instance};
use super::{Deployed, Node, error_chain, now_secs};
use crate::function::SnapshotPoint;
use crate::hibernated::{Entry, HibernatedError, Origin};
use crate::images::Pages;
use crate::live::Live;

/// Why an instance was stopped instead of hibernated.
#[derive(Debug, thiserror::Error)]
pub enum HibernateError {
    #[error(transparent)]
    Take(#[from] TakeError),
    #[error("what it was restored from cannot be read: {0}")]
    Origin(String),
    #[error(transparent)]
    Set(#[from] HibernatedError),
    #[error("its function was replaced or deleted meanwhile")]
    Superseded,
}

impl HibernateError {
    /// Whether every instance of the same deploy would fail the same way (its threads, its
    /// snapshot point, a dump it refuses, a size over the whole budget).
    fn lasts(&self) -> bool {
        use ember_snap::DumpError as D;
        matches!(
            self,
            HibernateError::Take(
                TakeError::Threads(_)
                    | TakeError::Dump(
                        D::MultiThreaded { .. }
                            | D::Vma { .. }
                            | D::Fd { .. }
                            | D::Path { .. }
                            | D::Cwd { .. }
                    )
            ) | HibernateError::Set(HibernatedError::TooLarge { .. })
        )
    }
}

impl Node {
    /// Whether `d`'s idle instances are hibernated rather than stopped on this node.
    pub(in crate::node) fn hibernates(&self, d: &Deployed) -> bool {
        self.can_hibernate(d) && !d.hibernate_refused.load(Ordering::SeqCst)
    }

    /// Whether `d`'s instances can be hibernated on this node (and its hibernated ones
    /// woken, even once its new ones are stopped instead).
    pub(in crate::node) fn can_hibernate(&self, d: &Deployed) -> bool {
        let c = &d.record.config;
        !self.cfg.hibernate.keep.is_zero()
            && self.sandboxes.is_some()
            && c.runtime.restorable()
            && c.snapshot != SnapshotPoint::Off
            && !d.record.cold_only()
    }

    /// Hibernates `live` (out of its pool, of its pool's `generation`) for `window` in the
    /// background; stops it (`why`) when `d`'s instances are not hibernated, `window` is
    /// zero, or the pool was flushed since (its instances stopped on request).
    pub(in crate::node) fn hibernate_or_stop(
        &self,
        d: &Arc<Deployed>,
        live: Live,
        window: Duration,
        why: &str,
        generation: u64,
    ) {
        if window.is_zero()
            || !self.hibernates(d)
            || live.parked.is_some()
            || generation != d.pool.generation()
            || self.stopping.load(Ordering::SeqCst)
        {
            self.discard(d, live, why);
            return;
        }
        let Some(node) = self.me.upgrade() else {
            self.discard(d, live, why);
            return;
        };
        self.hibernating_mark(live.id(), true);
        d.hibernating.fetch_add(1, Ordering::SeqCst);
        let d = d.clone();
        let span = info_span!("hibernate", function = %d.record.name, instance = %live.id());
        self.spawn_background(
            async move {
                let _one = node.hibernations.acquire().await;
                let mut live = live;
                let id = live.id().to_string();
                let done = node.hibernate_now(&d, &mut live, window, generation).await;
                // Stopped first: it is never listed both live and hibernated.
                let stopped = match &done {
                    Ok(_) => "hibernated",
                    Err(_) => "not hibernated",
                };
                node.discard(&d, live, stopped);
                node.hibernating_mark(&id, false);
                d.hibernating.fetch_sub(1, Ordering::SeqCst);
                match done {
                    Ok(e) => {
                        let msg = format!(
                            "instance hibernated ({}, {} pages of its own, {:.1} MiB on disk, \
                             dumped in {:.0} ms; kept {} s)",
                            e.origin.describe(),
                            e.pages,
                            e.bytes as f64 / f64::from(1 << 20),
                            e.dump_ms,
                            window.as_secs()
                        );
                        node.logs
                            .append(&d.record.name, &id, "event", msg.as_bytes());
                    }
                    Err(e) => {
                        let mut msg = format!("not hibernated: {}", error_chain(&e));
                        // What would fail again for every instance of this deploy: its
                        // instances are stopped from now on, not dumped in vain.
                        if e.lasts() && !d.hibernate_refused.swap(true, Ordering::SeqCst) {
                            msg.push_str(
                                "; this version's instances are stopped instead of \
                                 hibernated from now on",
                            );
                        }
                        tracing::info!(function = %d.record.name, instance = %id, "{msg}");
                        node.logs
                            .append(&d.record.name, &id, "event", msg.as_bytes());
                    }
                }
            }
            .instrument(span),
        );
    }

    /// Marks instance `id` as being hibernated (listings), or not.
    fn hibernating_mark(&self, id: &str, on: bool) {
        let mut h = self.hibernating.lock().unwrap_or_else(|p| p.into_inner());
        if on {
            h.insert(id.to_string());
        } else {
            h.remove(id);
        }
    }

    pub(in crate::node) fn is_hibernating(&self, id: &str) -> bool {
        self.hibernating
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(id)
    }

    /// The dump of `live` into the set; the caller stops it either way.
    async fn hibernate_now(
        &self,
        d: &Arc<Deployed>,
        live: &mut Live,
        window: Duration,
        generation: u64,
    ) -> Result<Entry, HibernateError> {
        // Still its function's current deploy, and not flushed since it left the pool.
        let current = || self.is_current(d) && d.pool.generation() == generation;
        let origin = match (&live.snapshot, &live.image) {
            (Some(id), image) => Origin::Snapshot {
                id: id.clone(),
                image: image.clone(),
            },
            (None, Some(image)) => Origin::Image(image.clone()),
            (None, None) => Origin::Whole,
        };
        if live.from_store && live.pages.as_ref().is_some_and(|s| !s.is_finished()) {
            return Err(HibernateError::Origin(
                "its pages are still coming from the snapshot store".into(),
            ));
        }
        let parent = self.origin_pages(&origin).await?;
        let limit = self.cfg.init_timeout;
        match tokio::time::timeout(limit, live.inst.snapshot_point()).await {
            Err(_) => return Err(TakeError::Hung(limit.as_secs()).into()),
            Ok(Err(e)) => return Err(TakeError::from(e).into()),
            Ok(Ok(ready)) if ready.threads > 1 => {
                return Err(TakeError::Threads(ready.threads).into());
            }
            Ok(Ok(_)) => {}
        }
        if !current() {
            return Err(HibernateError::Superseded);
        }
        let staged = self.hibernated.staging(live.id());
        let t0 = Instant::now();
        let stats = match dump_instance(live, staged.clone(), parent).await {
            Ok(s) => s,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&staged);
                return Err(e.into());
            }
        };
        if !current() {
            let _ = std::fs::remove_dir_all(&staged);
            return Err(HibernateError::Superseded);
        }
        let entry = Entry {
            instance: live.id().to_string(),
            function: d.record.name.clone(),
            deploy: deploy_of(d),
            origin,
            bytes: 0,
            pages: stats.pages,
            dump_ms: t0.elapsed().as_secs_f64() * 1e3,
            at: Instant::now(),
            at_unix: now_secs(),
            until: Instant::now() + window,
            dir: PathBuf::new(),
        };
        let set = self.hibernated.clone();
        let mut entry2 = entry.clone();
        let ready = self.ready_wanted();
        let added = tokio::task::spawn_blocking(move || {
            set.add(&staged, entry, |f| ready.get(f).copied().unwrap_or(0))
        })
        .await
        .map_err(|e| TakeError::Task(e.to_string()))?;
        let (bytes, evicted) = added?;
        entry2.bytes = bytes;
        for e in evicted {
            self.logs.append(
                &e.function,
                &e.instance,
                "event",
                b"hibernated instance removed: the hibernation disk budget is full",
            );
        }
        // Replaced, deleted or flushed meanwhile: it must not outlive that.
        if !current() {
            let (set, id) = (self.hibernated.clone(), entry2.instance.clone());
            let _ = tokio::task::spawn_blocking(move || set.remove(&id)).await;
            return Err(HibernateError::Superseded);
        }
        Ok(entry2)
    }

    /// The pages a hibernated layer over `origin` is over, loaded (None: whole).
    async fn origin_pages(
        &self,
        origin: &Origin,
    ) -> Result<Option<Arc<LoadedImage>>, HibernateError> {
        let (snapshots, images) = (self.snapshots.clone(), self.images.clone());
        let origin = origin.clone();
        let image_pages = move |id: &str| -> Result<Arc<LoadedImage>, String> {
            let co = images.checkout_quiet(id).map_err(|e| error_chain(&e))?;
            Ok(co.pages(true).map_err(|e| error_chain(&e))?.image)
        };
        tokio::task::spawn_blocking(move || match &origin {
            Origin::Whole => Ok(None),
            Origin::Image(id) => image_pages(id).map(Some),
            Origin::Snapshot { id, image } => {
                if let Some(l) = snapshots.cached(id) {
                    return Ok(Some(l));
                }
                let dir = snapshots.path(id);
                let loaded = match image {
                    Some(img) => {
                        let parent = image_pages(img)?;
                        LoadedImage::load_with_parent(&dir, &parent)
                    }
                    None => LoadedImage::load(&dir),
                }
                .map_err(|e| error_chain(&e))?;
                let l = Arc::new(loaded);
                snapshots.keep(id, l.clone());
                Ok(Some(l))
            }
        })
        .await
        .map_err(|e| HibernateError::Origin(e.to_string()))?
        .map_err(HibernateError::Origin)
    }

    /// An instance of `cx.d` woken from hibernated instance `e` (out of the set).
    pub(in crate::node) async fn wake(
        &self,
        cx: &mut StartCx<'_>,
        e: Entry,
    ) -> Result<Live, Blame> {
        let d: &Deployed = cx.d;
        let hid = e.instance.clone();
        let err = |why: String| {
            Blame::Snapshot(RungError::Hibernated {
                id: hid.clone(),
                why,
            })
        };
        let t0 = Instant::now();
        let parent = self.origin_pages(&e.origin).await;
        let (mut spec, sees, _) = match self.snapshot_instance(d, e.origin.image()) {
            Ok(s) => s,
            Err(err) => {
                let set = self.hibernated.clone();
                tokio::task::spawn_blocking(move || set.discard(&e));
                return Err(err.into());
            }
        };
        let dir = e.dir.clone();
        let set = self.hibernated.clone();
        let e2 = e.clone();
        // Its files opened, then removed: the restore reads the page file it holds open,
        // whose blocks are freed once the page server has every page.
        let policy = self.cfg.hibernate.policy;
        let opened = tokio::task::spawn_blocking(move || {
            let pages = parent
                .map_err(|e| error_chain(&e))
                .and_then(|parent| open_pages(&dir, parent, policy));
            set.discard(&e2);
            pages
        })
        .await
        .map_err(|e| err(e.to_string()))?
        .map_err(err)?;
        cx.timing.load = Some(t0.elapsed());
        let sink = self.logs.sink(&d.record.name);
        let span = info_span!("start.hibernated", instance = %spec.instance_id, hibernated = %hid);
        let pooled = self.standby_serves(d);
        let Restored {
            live,
            sandbox,
            restore,
            ..
        } = self
            .restore_instance(&mut spec, sees, &hid, &opened, policy, sink, pooled)
            .instrument(span)
            .await?;
        cx.timing.sandbox = Some(sandbox);
        cx.timing.restore = Some(restore);
        let (mut live, t) = self.init_restored_instance(d, live, &spec).await?;
        // A page of its file that fails its check kills it: the request runs again.
        live.pages_may_fail = policy != Policy::Eager;
        cx.timing.hook = Some(t.hook + t.after_restore);
        live.image = e.origin.image().map(String::from);
        live.snapshot = match &e.origin {
            Origin::Snapshot { id, .. } => Some(id.clone()),
            _ => None,
        };
        let how = format!(
            "woken from hibernation: instance {hid}, {}, hibernated {:.0} s before",
            e.origin.describe(),
            e.at.elapsed().as_secs_f64()
        );
        self.restored_started(d, &spec, &live, &how, cx.timing.init());
        Ok(live)
    }

    /// Under memory pressure (the machine's available memory under
    /// `--memory-pressure-percent` of its total), hibernates the least recently used idle
    /// instance of the functions that hibernate, whatever its keep-alive: one at a time,
    /// the next once it is done.
    pub(in crate::node) fn relieve_memory_pressure(&self) {
        let pct = u64::from(self.cfg.hibernate.pressure_percent);
        if pct == 0
            || !self
                .hibernating
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_empty()
            || super::available_percent().is_none_or(|a| a >= pct)
        {
            return;
        }
        let oldest = self
            .read_functions()
            .values()
            .filter(|d| self.hibernates(d))
            .filter_map(|d| Some((d.pool.oldest_idle()?, d.clone())))
            .min_by_key(|(since, _)| *since);
        let Some((_, d)) = oldest else { return };
        let w = self.keep_alive.windows(&d.record.name);
        if w.hibernate.is_zero() {
            return;
        }
        let generation = d.pool.generation();
        if let Some(live) = d.pool.take_oldest() {
            tracing::info!(function = %d.record.name, instance = live.id(), "memory pressure: an idle instance is hibernated");
            self.hibernate_or_stop(&d, live, w.hibernate, "memory pressure", generation);
        }
    }

    /// Removes hibernated instances past their window, but for those kept ready.
    pub(in crate::node) fn expire_hibernated(&self) {
        if self.hibernated.list().is_empty() {
            return;
        }
        let ready = self.ready_wanted();
        let set = self.hibernated.clone();
        let logs = self.logs.clone();
        tokio::task::spawn_blocking(move || {
            for e in set.expire(Instant::now(), |f| ready.get(f).copied().unwrap_or(0)) {
                logs.append(
                    &e.function,
                    &e.instance,
                    "event",
                    b"hibernated instance removed: its hibernation window ran out",
                );
            }
        });
    }

    /// Per function, how many of its hibernated instances are kept ready: those its
    /// `min_instances` wants beyond its live ones (not counting those being hibernated).
    fn ready_wanted(&self) -> std::collections::HashMap<String, usize> {
        self.read_functions()
            .values()
            .map(|d| {
                let min = d.min_instances.load(Ordering::SeqCst) as usize;
                // Those being hibernated are about to be hibernated ones.
                let live = d
                    .pool
                    .live()
                    .load(Ordering::SeqCst)
                    .saturating_sub(d.hibernating.load(Ordering::SeqCst));
                (d.record.name.clone(), min.saturating_sub(live))
            })
            .collect()
    }

    /// Removes the hibernated instances of `d`'s function that are not of its current deploy
    /// (all of them once it is deleted), in the background.
    pub(in crate::node) fn forget_hibernated(&self, name: &str, keep: Option<u64>) {
        let set = self.hibernated.clone();
        let name = name.to_string();
        tokio::task::spawn_blocking(move || set.remove_function(&name, keep));
    }

    /// How many hibernated instances `d` has.
    pub(in crate::node) fn hibernated_count(&self, d: &Deployed) -> usize {
        self.hibernated.count(&d.record.name, deploy_of(d))
    }
}

/// Which deploy of its function `d` is (what a hibernated instance must match).
pub(in crate::node) fn deploy_of(d: &Deployed) -> u64 {
    d.deploy_id
}

/// A hibernated dump in `dir` opened for its restore: eager, read whole and checked (a
/// layer flattened over `parent`); else for a lazy one, a layer over `parent` (its own
/// pages from its file, the parent's from memory), or a whole image read from its file.
fn open_pages(
    dir: &std::path::Path,
    parent: Option<Arc<LoadedImage>>,
    policy: Policy,
) -> Result<Pages, String> {
    if policy == Policy::Eager {
        let loaded = match parent {
            Some(p) => LoadedImage::load_with_parent(dir, &p),
            None => LoadedImage::load(dir),
        }
        .map_err(|e| error_chain(&e))?;
        return Ok(Pages::in_memory(Arc::new(loaded), None));
    }
    match parent {
        Some(parent) => {
            let (layer, lp) = LoadedImage::open_layer(dir, &parent).map_err(|e| error_chain(&e))?;
            let file = LayerFile::open(dir, &lp.own).map_err(|e| error_chain(&e))?;
            let source = LayerSource::new(lp, parent, Arc::new(file));
            Ok(Pages {
                image: Arc::new(layer),
                source: Arc::new(source),
                working_set: None,
            })
        }
        None => {
            let image = LoadedImage::open(dir).map_err(|e| error_chain(&e))?;
            let source = FileSource::open(dir, &image.meta).map_err(|e| error_chain(&e))?;
            Ok(Pages {
                image: Arc::new(image),
                source: Arc::new(source),
                working_set: None,
            })
        }
    }
}
