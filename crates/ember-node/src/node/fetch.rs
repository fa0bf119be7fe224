//! Sets fetched from the snapshot store (`snapshots = "remote"`): a node missing a
//! dependency image fetches it before it builds its own, and one missing a function's
//! snapshot fetches it on the start's path before it falls to the image rung.
//!
//! ```text
//! image build for env  -> image/<id> in the store? -> fetched (every chunk checked), its
//!                         packages and bootstrap compared with this node's, test restore here
//!                         -> added (not uploaded again)      else: built here, uploaded
//! function snapshot miss -> snapshot/<store key> in the store? -> fetched within
//!                         SNAPSHOT_DEADLINE, its parent image compared -> added -> restored
//!                         else: the rung is skipped, a snapshot taken here in the background
//! ```
//!
//! A store that does not hold a set is not asked again for 30 s; one that is down, slow or
//! returns wrong bytes costs at most the deadline, and the start goes on down the ladder. A
//! start that finds the set being fetched (by another start, or by a prefetch: a function's
//! snapshot is fetched in the background at deploy, or once its image is ready) waits for
//! that fetch, within its deadline.
//! Sets are fetched whole before use: their pages are checked before any is installed.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ember_snap::LoadedImage;
use ember_snap::lazy::LayerSource;
use tracing::{Instrument, info_span};

use super::snapshot_take::Parent;
use super::{Deployed, Node, error_chain, now_secs};
use crate::envs::PackageEnv;
use crate::images::ImageInfo;
use crate::remote::{FetchError, Fetched};
use crate::snapshots::{Lookup, SnapshotHandle, SnapshotInfo, snapshot_id};

/// How long the parts of a snapshot's fetch took (those that happened).
#[derive(Debug, Default)]
struct FetchPhases {
    manifest: Option<Duration>,
    bundle: Option<Duration>,
    open: Option<Duration>,
}

/// A function snapshot from the store.
pub(in crate::node) enum FromStore {
    /// Fetched whole, in the cache.
    Cached(SnapshotHandle),
    /// Its metadata and working set here, its own pages coming: restore it lazily.
    Lazy(LazySnapshot),
}

/// A layer to restore before its own pages are all here ([`Node::snapshot_from_store`]).
#[derive(Clone)]
pub(in crate::node) struct LazySnapshot {
    /// Its id in the cache, once whole.
    pub id: String,
    /// Opened over its parent image, its pages not loaded.
    pub layer: Arc<LoadedImage>,
    /// Its own pages from the store (the working set's already here), its parent's from
    /// memory.
    pub source: Arc<LayerSource>,
    /// What a prefetch restore installs first (held pages, `page_data` order).
    pub working_set: Arc<Vec<u64>>,
}

/// The function snapshots being restored lazily while their page files come, by set: a
/// start that misses one meanwhile restores from the same (it would otherwise wait for the
/// whole fetch, and then miss it).
#[derive(Default)]
pub(in crate::node) struct LazySets(Mutex<HashMap<String, LazySnapshot>>);

impl LazySets {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, LazySnapshot>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Snapshot `id` failed an instance restored from it (a page the store could not
    /// give): no more starts from it; its background fetch goes on.
    pub(in crate::node) fn forget(&self, id: &str) {
        self.lock().retain(|_, l| l.id != id);
    }
}

/// The longest an image fetch may take (off the request path).
const IMAGE_DEADLINE: Duration = Duration::from_secs(120);
/// The longest a function snapshot's fetch may hold a start up before the start goes on
/// down the ladder.
pub(in crate::node) const SNAPSHOT_DEADLINE: Duration = Duration::from_secs(5);
/// The longest a prefetch of a function snapshot may take (off the request path).
const PREFETCH_DEADLINE: Duration = Duration::from_secs(120);

impl Node {
    /// Image `id` for `env` fetched from the snapshot store into `staged` and checked (its
    /// environment's packages are `env`'s, its bootstrap this node's, and its test restore
    /// passes here), in place of a build. `None`: not in the store or not usable (said in
    /// the log), and `staged` removed; the caller builds.
    pub(in crate::node) async fn image_from_store(
        &self,
        env: &PackageEnv,
        id: &str,
        staged: &Path,
    ) -> Option<ImageInfo> {
        let remote = self.remote.clone()?;
        let fetched = remote
            .fetch("image", id, staged, IMAGE_DEADLINE, async |f| {
                (f, self.fetched_image(env, id, staged).await)
            })
            .instrument(info_span!("image.fetch", image = %id))
            .await;
        let why = match fetched {
            Ok((f, checked)) => match checked {
                Ok(info) => {
                    log_fetched("image", id, remote.describe(), &f);
                    return Some(info);
                }
                Err(why) => Some(why),
            },
            Err(FetchError::Absent | FetchError::Busy) => None,
            Err(e) => Some(e.to_string()),
        };
        let _ = std::fs::remove_dir_all(staged);
        if let Some(why) = why {
            tracing::warn!(
                image = %id,
                store = remote.describe(),
                "the image in the snapshot store is not used (this node builds its own): {why}"
            );
        }
        None
    }

    /// The description of the image fetched into `staged`, made this node's, once it is
    /// checked.
    async fn fetched_image(
        &self,
        env: &PackageEnv,
        id: &str,
        staged: &Path,
    ) -> Result<ImageInfo, String> {
        let dir = staged.to_path_buf();
        let (mut info, img) = tokio::task::spawn_blocking(move || {
            let info = crate::images::read_info(&dir).map_err(|e| error_chain(&e))?;
            let img = LoadedImage::load(&dir).map_err(|e| error_chain(&e))?;
            Ok::<_, String>((info, img))
        })
        .await
        .map_err(|e| e.to_string())??;
        self.make_image_ours(env, id, &mut info)?;
        self.verify_image(env, id, Arc::new(img))
            .await
            .map_err(|why| format!("its test restore here failed: {why}"))?;
        Ok(info)
    }

    /// `info`, the description of image `id` another node made, made this node's: checked
    /// to be of `env` (the same packages' versions) and this node's bootstrap, its
    /// environment this node's copy of it (the sandbox shows it at the same paths on every
    /// node).
    pub(in crate::node) fn make_image_ours(
        &self,
        env: &PackageEnv,
        id: &str,
        info: &mut ImageInfo,
    ) -> Result<(), String> {
        if info.id != id || info.env_key != env.key {
            return Err(format!(
                "it describes image {} of environment {}, not {id} of {}",
                info.id, info.env_key, env.key
            ));
        }
        if info.installed != env.installed {
            return Err(
                "its packages' versions are not those of this node's environment".to_string(),
            );
        }
        if info.runtime != super::runtime_of(&self.bootstrap) {
            return Err(format!(
                "it runs bootstrap {}, this node {}",
                info.runtime,
                super::runtime_of(&self.bootstrap)
            ));
        }
        info.env_dir = env.dir.clone();
        info.python = env.python();
        Ok(())
    }

    /// `d`'s function snapshot over `parent` (key `key` on this node) from the snapshot
    /// store, for a start that missed it. With `lazy`, a layer whose working set was
    /// recorded comes back before its own pages do ([`FromStore::Lazy`]): its metadata,
    /// working set and pack within `deadline`, the rest in the background, added to the cache
    /// once whole. Otherwise it is fetched whole within `deadline` and added to the cache.
    /// `None`: not in the store, or not usable (said in the log).
    pub(in crate::node) async fn snapshot_from_store(
        &self,
        d: &Arc<Deployed>,
        parent: Option<&Parent>,
        key: &str,
        deadline: Duration,
        lazy: bool,
        timing: &mut super::Timing,
    ) -> Option<FromStore> {
        let remote = self.remote.clone()?;
        let store_key = self.snapshot_store_key(d, parent);
        let id = snapshot_id(&d.record.name, key);
        let staged = self.snapshots.staging(&id);
        let t0 = std::time::Instant::now();
        let span = info_span!("start.fetch", snapshot = %id);
        let mut phases = FetchPhases::default();
        let got = self
            .snapshot_fetch(
                d,
                parent,
                (key, &id, &store_key),
                &staged,
                deadline,
                lazy,
                &mut phases,
            )
            .instrument(span)
            .await;
        timing.fetch = Some(t0.elapsed());
        timing.fetch_manifest = phases.manifest;
        timing.fetch_bundle = phases.bundle;
        timing.fetch_open = phases.open;
        let why = match got {
            Ok(from) => return Some(from),
            Err(FetchError::Busy) => {
                // Another start or a prefetch is fetching it: its result is this start's.
                let _ = tokio::fs::remove_dir_all(&staged).await;
                // Restored lazily by another start (now, or once its first part is here), its
                // pages still coming: from the same. Else the fetch's end is waited for.
                while remote.is_fetching("snapshot", &store_key) && t0.elapsed() < deadline {
                    if lazy && let Some(l) = self.lazy_sets.lock().get(&store_key).cloned() {
                        timing.fetch = Some(t0.elapsed());
                        return Some(FromStore::Lazy(l));
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                timing.fetch = Some(t0.elapsed());
                let (store, name, k) = (
                    self.snapshots.clone(),
                    d.record.name.clone(),
                    key.to_string(),
                );
                return match tokio::task::spawn_blocking(move || store.lookup(&name, &k)).await {
                    Ok(Lookup::Hit(h)) => Some(FromStore::Cached(h)),
                    _ => None,
                };
            }
            Err(FetchError::Absent) => None,
            Err(e) => Some(e.to_string()),
        };
        let _ = tokio::fs::remove_dir_all(&staged).await;
        if let Some(why) = why {
            tracing::warn!(
                function = %d.record.name,
                snapshot = %store_key,
                store = remote.describe(),
                "the function snapshot in the snapshot store is not used (the start goes on \
                 down the ladder; this node takes its own): {why}"
            );
        }
        None
    }

    /// The fetch of [`Node::snapshot_from_store`]: what it gives, or why not (its staged
    /// directory is the caller's to remove on an error); how long its parts took in
    /// `phases`. `names`: the snapshot's key and id here, and its set's in the store.
    #[allow(
        clippy::too_many_arguments,
        reason = "one snapshot's names, how to fetch it, and where its phases' times go"
    )]
    async fn snapshot_fetch(
        &self,
        d: &Arc<Deployed>,
        parent: Option<&Parent>,
        names: (&str, &str, &str),
        staged: &Path,
        deadline: Duration,
        lazy: bool,
        phases: &mut FetchPhases,
    ) -> Result<FromStore, FetchError> {
        let (key, id, store_key) = names;
        use crate::bundle::LAZY_START;
        use ember_snap::image::format::{PAGES_FILE, WORKING_SET_FILE};
        use ember_snap::image::pack::PACK_FILE;
        let remote = self.remote.clone().ok_or(FetchError::Absent)?;
        let guard = remote.begin_fetch("snapshot", store_key)?;
        // The manifest, then (lazily) the bundle and the description, unpacked, or (a set
        // without a bundle) every file but the pages; else, or when the bundle does not
        // unpack, every file but the bundle.
        let first = async {
            let t = Instant::now();
            let m = remote.manifest("snapshot", store_key).await?;
            phases.manifest = Some(t.elapsed());
            let has = |n: &str| m.files.iter().any(|f| f.name == n);
            let bundled = has(LAZY_START);
            let lazy =
                lazy && parent.is_some() && (bundled || (has(WORKING_SET_FILE) && has(PACK_FILE)));
            if lazy && bundled {
                let first = |n: &str| n == LAZY_START || n == crate::snapshots::INFO_FILE;
                let t = Instant::now();
                let got = remote.get_files(&m, staged, first).await;
                phases.bundle = Some(t.elapsed());
                let t = Instant::now();
                match got {
                    Ok(stats) => match unpack_lazy(staged).await {
                        Ok(()) => {
                            phases.open = Some(t.elapsed());
                            return Ok((m, stats, true));
                        }
                        Err(why) => tracing::warn!(
                            set = %format!("snapshot/{store_key}"),
                            "its lazy bundle is not usable (fetched whole instead): {why}"
                        ),
                    },
                    Err(e) => tracing::warn!(
                        set = %format!("snapshot/{store_key}"),
                        "its lazy bundle could not be fetched (fetched whole instead): {e}"
                    ),
                }
            }
            // Lazily without a bundle: each file of the first part on its own.
            let lazy = lazy && !bundled;
            let skip = if lazy { PAGES_FILE } else { LAZY_START };
            let stats = remote.get_files(&m, staged, |n| n != skip).await?;
            Ok((m, stats, lazy))
        };
        let first = match tokio::time::timeout(deadline, first).await {
            Ok(r) => r,
            Err(_) => Err(FetchError::TimedOut(deadline)),
        };
        let (manifest, stats, lazily) = first.inspect_err(|e| guard.record(Err(e)))?;
        let fetched = guard.fetched(&stats);
        if !lazily {
            guard.record(Ok(&stats));
            let added = self
                .fetched_snapshot(d, parent, key, id, store_key, staged)
                .await
                .map_err(FetchError::Store)?;
            log_fetched("snapshot", store_key, remote.describe(), &fetched);
            return Ok(FromStore::Cached(added));
        }
        let parent = parent.ok_or(FetchError::Absent)?;
        let t = Instant::now();
        let lazy = self
            .lazy_snapshot(
                d, parent, key, id, store_key, staged, manifest, stats, guard,
            )
            .await?;
        phases.open = Some(phases.open.unwrap_or_default() + t.elapsed());
        tracing::info!(
            set = %format!("snapshot/{store_key}"),
            store = remote.describe(),
            chunks = fetched.chunks,
            fetched_kib = fetched.stored_bytes >> 10,
            working_set = lazy.working_set.len(),
            ms = fetched.elapsed.as_millis() as u64,
            "restoring lazily from the snapshot store (its working set fetched; the rest \
             follows)"
        );
        Ok(FromStore::Lazy(lazy))
    }

    /// A layer whose metadata, working set and pack were fetched into `staged`, opened over
    /// its parent image with its own pages served from the store; the rest of its page file
    /// fetched in the background (holding `guard`), the snapshot added to the cache once it
    /// is whole. Meanwhile other starts that miss it restore from the same
    /// ([`LazySets`]).
    #[allow(
        clippy::too_many_arguments,
        reason = "the snapshot's names, the manifest and the fetch under way, handed on to \
                  the background"
    )]
    async fn lazy_snapshot(
        &self,
        d: &Arc<Deployed>,
        parent: &Parent,
        key: &str,
        id: &str,
        store_key: &str,
        staged: &Path,
        manifest: ember_store::manifest::Manifest,
        first: ember_store::GetStats,
        guard: crate::remote::FetchGuard,
    ) -> Result<LazySnapshot, FetchError> {
        use ember_snap::image::format::PAGES_FILE;
        let (Some(remote), Some(node)) = (self.remote.clone(), self.me.upgrade()) else {
            return Err(FetchError::Absent);
        };
        let pages_file = manifest
            .files
            .iter()
            .find(|f| f.name == PAGES_FILE)
            .cloned();
        let opened = match pages_file {
            Some(f) => self.open_lazy(d, parent, id, store_key, staged, f).await,
            None => Err("the set has no page file".to_string()),
        };
        let (lazy, chunks) = match opened {
            Ok(o) => o,
            Err(why) => {
                // Counted, and not asked for again for a while, as a whole fetch that failed.
                let e = FetchError::Store(why);
                guard.record(Err(&e));
                return Err(e);
            }
        };
        self.lazy_sets
            .lock()
            .insert(store_key.to_string(), lazy.clone());
        let (d, parent, key, id, store_key, staged) = (
            d.clone(),
            parent.clone(),
            key.to_string(),
            id.to_string(),
            store_key.to_string(),
            staged.to_path_buf(),
        );
        self.spawn_background(async move {
            let rest = remote.get_files(&manifest, &staged, |n| n == PAGES_FILE);
            let rest = match tokio::time::timeout(PREFETCH_DEADLINE, rest).await {
                Ok(r) => r,
                Err(_) => Err(FetchError::TimedOut(PREFETCH_DEADLINE)),
            };
            let whole = rest.map(|r| ember_store::GetStats {
                chunks: first.chunks + r.chunks,
                raw_bytes: first.raw_bytes + r.raw_bytes,
                stored_bytes: first.stored_bytes + r.stored_bytes,
            });
            guard.record(whole.as_ref());
            let added = match whole {
                Ok(stats) => {
                    let f = guard.fetched(&stats);
                    log_fetched("snapshot", &store_key, remote.describe(), &f);
                    node.fetched_snapshot(&d, Some(&parent), &key, &id, &store_key, &staged)
                        .await
                }
                Err(e) => Err(e.to_string()),
            };
            match added {
                Ok(h) => chunks.now_local(&h.dir.join(PAGES_FILE)),
                Err(why) => {
                    let _ = tokio::fs::remove_dir_all(&staged).await;
                    if node.is_current(&d) && !node.snapshots.holds(&d.record.name, &key) {
                        node.snapshot_in_background(&d, key.clone());
                    }
                    tracing::warn!(
                        function = %d.record.name,
                        snapshot = %store_key,
                        "a function snapshot restored lazily from the snapshot store was not \
                         added here (its instances fetch each page they still need): {why}"
                    );
                }
            }
            // Found in the cache from now on (or taken anew): no more starts from this one.
            node.lazy_sets.lock().remove(&store_key);
            drop(guard);
        });
        Ok(lazy)
    }

    /// The layer in `staged` (page file `pages_file` in the store) opened over its parent
    /// image for a lazy restore, its pack's chunks in hand: the snapshot to restore, and
    /// where its own pages come from.
    async fn open_lazy(
        &self,
        d: &Deployed,
        parent: &Parent,
        id: &str,
        store_key: &str,
        staged: &Path,
        pages_file: ember_store::manifest::FileEntry,
    ) -> Result<(LazySnapshot, Arc<crate::remote::StoreChunks>), String> {
        use ember_snap::image::{pack, read_working_set};
        let remote = self.remote.clone().ok_or("no snapshot store")?;
        self.their_info(d, Some(parent), staged).await?;
        let co = self
            .images
            .checkout_quiet(&parent.id)
            .map_err(|e| error_chain(&e))?;
        let dir = staged.to_path_buf();
        let opened = tokio::task::spawn_blocking(move || {
            let parent = co.pages(true).map_err(|e| error_chain(&e))?.image;
            let (layer, lp) =
                LoadedImage::open_layer(&dir, &parent).map_err(|e| error_chain(&e))?;
            let packed = pack::read_pack(&dir, &lp.own).map_err(|e| error_chain(&e))?;
            let ws = read_working_set(&dir, &lp.own)
                .map_err(|e| error_chain(&e))?
                .unwrap_or_default();
            Ok::<_, String>((parent, layer, lp, packed, ws))
        })
        .await
        .map_err(|e| e.to_string())??;
        let (parent_img, layer, lp, packed, ws) = opened;
        let chunks = Arc::new(crate::remote::StoreChunks::new(
            remote,
            "snapshot",
            store_key,
            pages_file,
            lp.own.pages.count,
            lp.own.id,
        ));
        let source = Arc::new(LayerSource::new(lp, parent_img, chunks.clone()));
        if let Some(p) = packed {
            source.offer_pack(p);
        }
        let working_set = Arc::new(layer.flat_indices(&ws));
        let lazy = LazySnapshot {
            id: id.to_string(),
            layer: Arc::new(layer),
            source,
            working_set,
        };
        Ok((lazy, chunks))
    }

    /// In `snapshots = "remote"` mode: `d`'s function snapshot fetched from the store in
    /// the background when this node has none, so that its first start finds it here
    /// (vHive's predictive prefetch). Called at deploy when the function's image is here,
    /// and when an image serving functions becomes ready.
    pub(in crate::node) fn prefetch_snapshot(&self, d: &Arc<Deployed>) {
        if self.remote.is_none()
            || self.stopping.load(std::sync::atomic::Ordering::SeqCst)
            || !self.snapshots_on(d)
            || d.record.config.snapshot != crate::function::SnapshotPoint::AfterInit
        {
            return;
        }
        let Some(node) = self.me.upgrade() else {
            return;
        };
        let d = d.clone();
        self.spawn_background(async move {
            let parent = node.snapshot_parent(&d);
            let key = node.snapshot_key(&d, parent.as_ref());
            if node.snapshots.holds(&d.record.name, &key) {
                return;
            }
            let fetched = node
                .snapshot_from_store(
                    &d,
                    parent.as_ref(),
                    &key,
                    PREFETCH_DEADLINE,
                    false,
                    &mut super::Timing::default(),
                )
                .await;
            if let Some(FromStore::Cached(h)) = fetched {
                tracing::info!(
                    function = %d.record.name,
                    snapshot = %h.info.id,
                    "function snapshot prefetched from the snapshot store"
                );
            }
        });
    }

    /// Adds the snapshot fetched into `staged` to the cache as this node's snapshot `id` of
    /// `d`, once its description agrees with what this node would take.
    async fn fetched_snapshot(
        &self,
        d: &Deployed,
        parent: Option<&Parent>,
        key: &str,
        id: &str,
        store_key: &str,
        staged: &Path,
    ) -> Result<SnapshotHandle, String> {
        let theirs = self.their_info(d, parent, staged).await?;
        let rec = &d.record;
        let info = SnapshotInfo {
            id: id.to_string(),
            function: rec.name.clone(),
            version: rec.version,
            key: key.to_string(),
            parent_image: theirs.parent_image,
            parent_meta_hash: theirs.parent_meta_hash,
            point: theirs.point,
            bytes: 0,
            pages: theirs.pages,
            created_at: now_secs(),
            init_ms: theirs.init_ms,
            dump_ms: theirs.dump_ms,
            store_key: Some(store_key.to_string()),
            fetched: true,
            working_set_pages: theirs.working_set_pages,
        };
        // Deleted or replaced meanwhile (a prefetch outlives a deploy): it must not replace
        // the new version's, nor outlive its own.
        let gone = "the function was deleted or deployed again meanwhile";
        if !self.is_current(d) {
            return Err(gone.into());
        }
        let store = self.snapshots.clone();
        let (name, k, dir) = (rec.name.clone(), key.to_string(), staged.to_path_buf());
        let added = tokio::task::spawn_blocking(move || {
            // The cache writes its own description.
            std::fs::remove_file(dir.join(crate::snapshots::INFO_FILE))
                .map_err(|e| e.to_string())?;
            let evicted = if store.holds(&name, &k) {
                // Taken here or fetched by another meanwhile: that one serves, this goes.
                let _ = std::fs::remove_dir_all(&dir);
                Vec::new()
            } else {
                store.add(&dir, info).map_err(|e| error_chain(&e))?
            };
            match store.lookup(&name, &k) {
                Lookup::Hit(h) => Ok((h, evicted)),
                _ => Err("it left the cache at once (the cache is full)".to_string()),
            }
        })
        .await
        .map_err(|e| e.to_string())??;
        let (added, evicted) = added;
        self.retire_replaced(d, parent, evicted);
        if !self.is_current(d) {
            let (store, sid) = (self.snapshots.clone(), added.info.id.clone());
            let _ = tokio::task::spawn_blocking(move || store.remove(&sid)).await;
            return Err(gone.into());
        }
        Ok(added)
    }

    /// The description of the snapshot fetched into `staged`, once it agrees with what this
    /// node would take of `d` over `parent`.
    async fn their_info(
        &self,
        d: &Deployed,
        parent: Option<&Parent>,
        staged: &Path,
    ) -> Result<SnapshotInfo, String> {
        let dir = staged.to_path_buf();
        let theirs = tokio::task::spawn_blocking(move || {
            crate::snapshots::read_info(&dir).map_err(|e| error_chain(&e))
        })
        .await
        .map_err(|e| e.to_string())??;
        let want_parent = parent.map(|p| (p.id.clone(), p.meta_hash.clone()));
        let their_parent = theirs
            .parent_image
            .clone()
            .zip(theirs.parent_meta_hash.clone());
        if their_parent != want_parent {
            let name = |p: Option<(String, String)>| match p {
                Some((id, hash)) => format!("image {id} (metadata {hash})"),
                None => "no image".to_string(),
            };
            return Err(format!(
                "it was taken over {}, this node serves the function from {}",
                name(their_parent),
                name(want_parent)
            ));
        }
        if theirs.point != d.record.config.snapshot || theirs.function != d.record.name {
            return Err(format!(
                "it is function {}'s snapshot at {}, not {}'s at {}",
                theirs.function,
                theirs.point.as_str(),
                d.record.name,
                d.record.config.snapshot.as_str()
            ));
        }
        Ok(theirs)
    }
}

/// The lazy bundle fetched into `dir` unpacked there (its meta, working set and, when the
/// working set names pages of the layer's own, pack) and removed.
async fn unpack_lazy(dir: &Path) -> Result<(), String> {
    use ember_snap::image::format::{META_FILE, WORKING_SET_FILE};
    use ember_snap::image::pack::PACK_FILE;
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let path = dir.join(crate::bundle::LAZY_START);
        let entries = [META_FILE, WORKING_SET_FILE, PACK_FILE];
        let unpacked = crate::bundle::unpack(&path, &dir, &entries, &entries[..2]);
        let _ = std::fs::remove_file(&path);
        unpacked.map(|_| ()).map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())?
}

fn log_fetched(kind: &str, id: &str, store: &str, f: &Fetched) {
    tracing::info!(
        set = %format!("{kind}/{id}"),
        store,
        chunks = f.chunks,
        kib = f.raw_bytes >> 10,
        fetched_kib = f.stored_bytes >> 10,
        ms = f.elapsed.as_millis() as u64,
        "fetched from the snapshot store"
    );
}
