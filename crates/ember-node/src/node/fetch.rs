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

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ember_snap::LoadedImage;
use tracing::{Instrument, info_span};

use super::snapshot_take::Parent;
use super::{Deployed, Node, error_chain, now_secs};
use crate::envs::PackageEnv;
use crate::images::ImageInfo;
use crate::remote::{FetchError, Fetched};
use crate::snapshots::{Lookup, SnapshotHandle, SnapshotInfo, snapshot_id};

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
        // Its files are this node's copies of the environment's (the sandbox shows them at
        // the same paths on every node).
        info.env_dir = env.dir.clone();
        info.python = env.python();
        self.verify_image(env, id, Arc::new(img))
            .await
            .map_err(|why| format!("its test restore here failed: {why}"))?;
        Ok(info)
    }

    /// `d`'s function snapshot over `parent` (key `key` on this node) fetched from the
    /// snapshot store and added to the cache, for a start that missed it. `None`: not in the
    /// store, being fetched by another start, or not usable (said in the log).
    pub(in crate::node) async fn snapshot_from_store(
        &self,
        d: &Deployed,
        parent: Option<&Parent>,
        key: &str,
        deadline: Duration,
        fetch_time: &mut Option<Duration>,
    ) -> Option<SnapshotHandle> {
        let remote = self.remote.clone()?;
        let store_key = self.snapshot_store_key(d, parent);
        let id = snapshot_id(&d.record.name, key);
        let staged = self.snapshots.staging(&id);
        let t0 = std::time::Instant::now();
        let fetched = remote
            .fetch("snapshot", &store_key, &staged, deadline, async |f| {
                let added = self
                    .fetched_snapshot(d, parent, key, &id, &store_key, &staged)
                    .await;
                (f, added)
            })
            .instrument(info_span!("start.fetch", snapshot = %id))
            .await;
        let why = match fetched {
            Ok((f, added)) => match added {
                Ok(h) => {
                    *fetch_time = Some(t0.elapsed());
                    log_fetched("snapshot", &store_key, remote.describe(), &f);
                    return Some(h);
                }
                Err(why) => Some(why),
            },
            Err(FetchError::Busy) => {
                // Another start or a prefetch is fetching it: its result is this start's.
                let _ = tokio::fs::remove_dir_all(&staged).await;
                remote.wait_fetch("snapshot", &store_key, deadline).await;
                *fetch_time = Some(t0.elapsed());
                let (store, name, k) = (
                    self.snapshots.clone(),
                    d.record.name.clone(),
                    key.to_string(),
                );
                return match tokio::task::spawn_blocking(move || store.lookup(&name, &k)).await {
                    Ok(Lookup::Hit(h)) => Some(h),
                    _ => None,
                };
            }
            Err(FetchError::Absent) => None,
            Err(e) => Some(e.to_string()),
        };
        let _ = tokio::fs::remove_dir_all(&staged).await;
        *fetch_time = Some(t0.elapsed());
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
                .snapshot_from_store(&d, parent.as_ref(), &key, PREFETCH_DEADLINE, &mut None)
                .await;
            if let Some(h) = fetched {
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
        let dir = staged.to_path_buf();
        let theirs = tokio::task::spawn_blocking(move || {
            let info = crate::snapshots::read_info(&dir).map_err(|e| error_chain(&e))?;
            // The cache writes its own.
            std::fs::remove_file(dir.join(crate::snapshots::INFO_FILE))
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(info)
        })
        .await
        .map_err(|e| e.to_string())??;
        let want_parent = parent.map(|p| (p.id.clone(), p.meta_hash.clone()));
        let their_parent = theirs
            .parent_image
            .clone()
            .zip(theirs.parent_meta_hash.clone());
        if their_parent != want_parent {
            return Err(format!(
                "it is a layer over {their_parent:?}, this node serves the function from \
                 {want_parent:?}"
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
            if store.holds(&name, &k) {
                // Taken here or fetched by another meanwhile: that one serves, this goes.
                let _ = std::fs::remove_dir_all(&dir);
            } else {
                let evicted = store.add(&dir, info).map_err(|e| error_chain(&e))?;
                for e in evicted {
                    e.log();
                }
            }
            match store.lookup(&name, &k) {
                Lookup::Hit(h) => Ok(h),
                _ => Err("it left the cache at once (the cache is full)".to_string()),
            }
        })
        .await
        .map_err(|e| e.to_string())??;
        if !self.is_current(d) {
            let (store, sid) = (self.snapshots.clone(), added.info.id.clone());
            let _ = tokio::task::spawn_blocking(move || store.remove(&sid)).await;
            return Err(gone.into());
        }
        Ok(added)
    }
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
