//! Function snapshots on this node: the catalog on disk under a byte budget, the eviction
//! policy that keeps it there, the in-memory tier of loaded layers, and each snapshot's
//! health. Taking one and starting from one are the node's.
//!
//! ```text
//! <home>/snapshots/<id>/meta, pages     ember-snap's image: a layer over the dependency image
//!                                        the instance came from (its parent, named by id,
//!                                        metadata hash and absolute path), or a whole image
//! <home>/snapshots/<id>/snapshot.json   what it is (SnapshotInfo), "format": "ember-snapshot/2", "checksum",
//!                                        written atomically (tmp + rename), read back up to 64 KiB
//! <home>/snapshots/.staging/<uuid>/     a dump being written; emptied at open
//! ```
//!
//! ember-snap's files carry their own magic, version and checksums (checked when the node
//! loads a layer); `snapshot.json` is refused when larger than [`MAX_INFO`], of another
//! `format`, not the description of the directory it is in, or missing its image files.
//! At open such an entry is removed with a warning, never a panic.
//!
//! ```text
//! lookup(function, key)
//!   no snapshot of the function          -> Miss
//!   one, taken with this key             -> Hit (its dir, and its loaded layer if in memory)
//!   one, taken with another key          -> Stale: removed (the node logs it as invalidated)
//! add(staged, info)
//!   larger than the whole disk budget    -> refused (TooBig), the staged dump removed
//!   else moved in, the function's older snapshot removed (Replaced), then the policy's
//!   victims (never the new one) removed until the budget holds (Budget)
//! record_use(id)   a start was served: uses, last use, the policy's frequency/recency
//! failed(id, why)  a restore failed; after `failures_unhealthy` in a row it is removed
//! ```
//!
//! The key is computed by the node from everything a snapshot depends on (code hash, the
//! config that matters, the parent image's id and metadata hash, the bootstrap); the store
//! only compares it. Every method is synchronous; those that remove files block (call them
//! from `spawn_blocking`). A snapshot removed while an instance is restored from it is not
//! disturbed: its loaded layer is held by the instance, and open files outlive unlinking.

pub mod memory;
pub mod policy;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use ember_snap::LoadedImage;
use serde::{Deserialize, Serialize};

use crate::config::SnapshotConfig;
use crate::function::SnapshotPoint;
use crate::images::Location;
use crate::metrics::{Metrics, SnapshotMetrics};
use memory::MemoryTier;
use policy::EvictionPolicy;

/// The `format` of a `snapshot.json`.
pub const FORMAT: &str = "ember-snapshot/2";
/// Largest `snapshot.json` read back.
pub const MAX_INFO: u64 = 64 << 10;
/// A snapshot's description beside its files.
pub const INFO_FILE: &str = "snapshot.json";
const STAGING: &str = ".staging";
/// The files of ember-snap's image a snapshot directory must hold.
const IMAGE_FILES: [&str; 2] = [
    ember_snap::image::format::META_FILE,
    ember_snap::image::format::PAGES_FILE,
];

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot {0:?} does not exist (`ember snapshot ls` lists snapshots)")]
    NotFound(String),
    #[error(
        "snapshot {id} takes {bytes} bytes, more than the whole snapshot cache ({budget} \
         bytes); raise snapshot_disk_mb, or set snapshot = \"off\" for function {function}"
    )]
    TooBig {
        id: String,
        function: String,
        bytes: u64,
        budget: u64,
    },
    #[error("snapshot {id:?} cannot be added: {why}")]
    Invalid { id: String, why: String },
    #[error("{path} is not a usable snapshot description: {why}")]
    Corrupt { path: PathBuf, why: String },
    #[error("{what} {path} failed")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl SnapshotError {
    /// Errors the caller made (as opposed to the node failing).
    pub fn is_user_error(&self) -> bool {
        matches!(self, SnapshotError::NotFound(_))
    }
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotError {
    let path = path.to_path_buf();
    move |source| SnapshotError::Io { what, path, source }
}

/// What a snapshot is, written beside it as `snapshot.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SnapshotInfo {
    pub id: String,
    pub function: String,
    /// The function's version it was taken of.
    pub version: u64,
    /// Hex digest of everything it depends on (computed by the node; compared here only).
    pub key: String,
    /// The dependency image it is a layer over; none: a whole snapshot.
    pub parent_image: Option<String>,
    /// BLAKE3 (hex) of that image's metadata when the layer was taken.
    pub parent_meta_hash: Option<String>,
    pub point: SnapshotPoint,
    /// Bytes of its files on disk (counted by the store when it is added and at open).
    pub bytes: u64,
    /// Pages it stores (a layer: those that differ from its parent's).
    pub pages: u64,
    /// Seconds since the Unix epoch.
    pub created_at: u64,
    /// What the function's init cost when it was taken: what a start from it saves.
    pub init_ms: f64,
    pub dump_ms: f64,
    /// Its name in the snapshot store (`snapshot/<store_key>`): the same on every node for
    /// the same function, code, configuration and image (`snapshots = "remote"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_key: Option<String>,
    /// Fetched from the snapshot store (not taken here).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fetched: bool,
    /// Pages of its recorded working set (what its first restore and invocation touched,
    /// `snapshots = "remote"`): a node without it restores it lazily from the store with
    /// these first. 0: none recorded.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub working_set_pages: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl SnapshotInfo {
    /// Its set's id in the snapshot store.
    pub fn set_id(&self) -> &str {
        self.store_key.as_deref().unwrap_or(&self.id)
    }
}

/// `snapshot.json` on disk.
#[derive(Serialize, Deserialize)]
struct InfoFile {
    format: String,
    /// BLAKE3 (hex) of the compact JSON of `info`: a file edited or torn is refused.
    checksum: String,
    #[serde(flatten)]
    info: SnapshotInfo,
}

fn info_checksum(info: &SnapshotInfo) -> String {
    let body = serde_json::to_vec(info).unwrap_or_default();
    blake3::hash(&body).to_hex().to_string()
}

/// A snapshot as `ember snapshot ls` and `GET /v1/snapshots` show it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SnapshotStatus {
    #[serde(flatten)]
    pub info: SnapshotInfo,
    /// Starts served from it since the daemon started.
    pub uses: u64,
    /// Seconds since the Unix epoch of its last use (since the daemon started).
    pub last_use: Option<u64>,
    /// Whether its loaded layer is held in memory, or it is read from disk at a start.
    pub location: Location,
    /// Failed restores in a row.
    pub failures: u32,
    pub last_error: Option<String>,
    /// In the snapshot store (`snapshots = "remote"`): `uploading`, `stored` or `failed:
    /// <why>`; `None` when this node has not uploaded it (filled in by the node).
    pub remote: Option<String>,
}

/// A snapshot that left the cache when another was added.
#[derive(Debug, Clone, PartialEq)]
pub struct Evicted {
    pub info: SnapshotInfo,
    pub reason: EvictReason,
}

impl Evicted {
    /// Says in the daemon's log that it left the cache.
    pub fn log(&self) {
        let i = &self.info;
        tracing::info!(snapshot = %i.id, function = %i.function, bytes = i.bytes, reason = ?self.reason, "function snapshot left the cache");
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvictReason {
    /// A newer snapshot of the same function took its place.
    Replaced,
    /// The policy chose it to keep the disk budget.
    Budget,
}

/// A snapshot found for a start.
#[derive(Clone)]
pub struct SnapshotHandle {
    pub info: SnapshotInfo,
    /// Its directory (ember-snap's image files).
    pub dir: PathBuf,
    /// Its loaded layer, when the in-memory tier holds it.
    pub loaded: Option<Arc<LoadedImage>>,
}

pub enum Lookup {
    Hit(SnapshotHandle),
    /// The function's snapshot was taken with another key: it has been removed.
    Stale(SnapshotInfo),
    Miss,
}

struct Entry {
    info: SnapshotInfo,
    uses: u64,
    last_use: Option<u64>,
    failures: u32,
    last_error: Option<String>,
}

struct Inner {
    entries: BTreeMap<String, Entry>,
    policy: Box<dyn EvictionPolicy>,
    memory: MemoryTier<Arc<LoadedImage>>,
    disk_bytes: u64,
}

pub struct SnapshotStore {
    dir: PathBuf,
    cfg: SnapshotConfig,
    metrics: SnapshotMetrics,
    inner: Mutex<Inner>,
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn gauge(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A snapshot's id, as the node names them: the function and the start of its key.
pub fn snapshot_id(function: &str, key: &str) -> String {
    let k: String = key
        .chars()
        .filter(char::is_ascii_hexdigit)
        .take(16)
        .collect();
    // A published version `name:N` as `name.N`: ids keep to [A-Za-z0-9._-], and no
    // function name holds a '.'.
    let function = function.replace(':', ".");
    format!("snap-{function}-{k}")
}

/// Ids name directories: `[A-Za-z0-9._-]`, not starting with '.', at most 128 bytes.
fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"._-".contains(&c))
}

impl SnapshotStore {
    /// Opens (or creates) `dir`, loading the catalog from each snapshot's `snapshot.json`.
    /// Entries that are corrupt, oversized, of another format or missing their image files
    /// are removed with a warning; leftover staging dumps are removed; if the catalog is over
    /// the disk budget (a smaller budget than before), the policy evicts down to it.
    pub fn open(
        dir: PathBuf,
        cfg: SnapshotConfig,
        metrics: SnapshotMetrics,
    ) -> Result<SnapshotStore, SnapshotError> {
        let staging = dir.join(STAGING);
        if staging.exists() {
            std::fs::remove_dir_all(&staging).map_err(io_err("emptying", &staging))?;
        }
        std::fs::create_dir_all(&staging).map_err(io_err("creating", &staging))?;
        let mut found: Vec<SnapshotInfo> = Vec::new();
        let read = std::fs::read_dir(&dir).map_err(io_err("listing", &dir))?;
        for e in read.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name == STAGING {
                continue;
            }
            match read_entry(&e.path(), &name) {
                Ok(info) => found.push(info),
                Err(err) => {
                    tracing::warn!(
                        snapshot = %name,
                        "snapshot removed: {}",
                        crate::error_chain(&err)
                    );
                    remove_path(&e.path());
                }
            }
        }
        // Oldest first, so the policies' recency starts in the order they were taken.
        found.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        let mut by_function: BTreeMap<String, SnapshotInfo> = BTreeMap::new();
        for info in found {
            // A daemon that stopped between moving a new snapshot in and removing the old one.
            if let Some(old) = by_function.insert(info.function.clone(), info) {
                tracing::warn!(snapshot = %old.id, function = %old.function, "older snapshot of the function removed");
                remove_path(&dir.join(&old.id));
            }
        }
        let mut found: Vec<SnapshotInfo> = by_function.into_values().collect();
        found.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        let store = SnapshotStore {
            inner: Mutex::new(Inner {
                entries: BTreeMap::new(),
                policy: policy::new(cfg.eviction),
                memory: MemoryTier::new(cfg.memory_bytes),
                disk_bytes: 0,
            }),
            dir,
            cfg,
            metrics,
        };
        let mut doomed = Vec::new();
        {
            let mut inner = store.lock();
            for info in found {
                inner.disk_bytes += info.bytes;
                inner.policy.insert(&info.id, info.bytes, info.init_ms);
                inner.entries.insert(info.id.clone(), entry(info));
            }
            for ev in store.evict_to_budget(&mut inner, "") {
                tracing::info!(snapshot = %ev.info.id, function = %ev.info.function, bytes = ev.info.bytes, "snapshot evicted: the cache is over its disk budget");
                doomed.push(store.path(&ev.info.id));
            }
            store.update_gauges(&inner);
        }
        doomed.iter().for_each(|p| remove_path(p));
        Ok(store)
    }

    pub fn config(&self) -> &SnapshotConfig {
        &self.cfg
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The directory of snapshot `id`.
    pub fn path(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    /// A fresh directory for a dump of snapshot `id` (not created), which
    /// [`SnapshotStore::add`] moves into place; removed at the next open if never added.
    pub fn staging(&self, id: &str) -> PathBuf {
        let tag: String = id
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .take(32)
            .collect();
        self.dir
            .join(STAGING)
            .join(format!("{tag}-{}", uuid::Uuid::new_v4().simple()))
    }

    /// Moves the dump in `staged` into the cache as `info` (its `bytes` counted here), writes
    /// its `snapshot.json`, replaces the function's older snapshot, then evicts by the policy
    /// until the disk budget holds. Returns what left. A snapshot larger than the whole
    /// budget is refused; on any error the staged dump is removed. Blocking.
    pub fn add(&self, staged: &Path, info: SnapshotInfo) -> Result<Vec<Evicted>, SnapshotError> {
        let r = self.add_inner(staged, info);
        if r.is_err() {
            remove_path(staged);
        }
        r
    }

    fn add_inner(
        &self,
        staged: &Path,
        mut info: SnapshotInfo,
    ) -> Result<Vec<Evicted>, SnapshotError> {
        let invalid = |why: &str| SnapshotError::Invalid {
            id: info.id.clone(),
            why: why.to_string(),
        };
        if !valid_id(&info.id) {
            return Err(invalid(
                "ids are [A-Za-z0-9._-], at most 128 bytes, not starting with '.'",
            ));
        }
        if info.point == SnapshotPoint::Off {
            return Err(invalid("its point is \"off\""));
        }
        if let Some(f) = IMAGE_FILES.iter().find(|f| !staged.join(f).is_file()) {
            return Err(invalid(&format!(
                "{} has no {f} file: the dump did not finish",
                staged.display()
            )));
        }
        info.bytes = dir_bytes(staged)?;
        if info.bytes > self.cfg.disk_bytes {
            return Err(SnapshotError::TooBig {
                id: info.id.clone(),
                function: info.function.clone(),
                bytes: info.bytes,
                budget: self.cfg.disk_bytes,
            });
        }
        write_info(staged, &info)?;
        let dst = self.path(&info.id);
        // Under the lock: a concurrent add of the same id must not interleave the renames.
        let mut inner = self.lock();
        if dst.exists() {
            let aside = self.staging(&info.id);
            std::fs::rename(&dst, &aside).map_err(io_err("moving aside", &dst))?;
            remove_path(&aside);
        }
        std::fs::rename(staged, &dst).map_err(io_err("moving into place", staged))?;
        let mut evicted = Vec::new();
        let same: Vec<String> = inner
            .entries
            .values()
            .filter(|e| e.info.function == info.function || e.info.id == info.id)
            .map(|e| e.info.id.clone())
            .collect();
        for id in same {
            if let Some(old) = self.forget(&mut inner, &id)
                && old.id != info.id
            {
                evicted.push(Evicted {
                    info: old,
                    reason: EvictReason::Replaced,
                });
            }
        }
        let id = info.id.clone();
        inner.disk_bytes += info.bytes;
        inner.policy.insert(&id, info.bytes, info.init_ms);
        inner.entries.insert(id.clone(), entry(info));
        let budget = self.evict_to_budget(&mut inner, &id);
        self.metrics.evictions.inc_by(budget.len() as u64);
        evicted.extend(budget);
        let aside: Vec<PathBuf> = evicted
            .iter()
            .filter_map(|ev| self.set_aside(&ev.info.id))
            .collect();
        self.update_gauges(&inner);
        drop(inner);
        aside.iter().for_each(|p| remove_path(p));
        Ok(evicted)
    }

    /// Removes `id` from the catalog, the policy and the memory tier (not its files).
    fn forget(&self, inner: &mut Inner, id: &str) -> Option<SnapshotInfo> {
        let e = inner.entries.remove(id)?;
        inner.policy.remove(id);
        inner.memory.remove(id);
        inner.disk_bytes = inner.disk_bytes.saturating_sub(e.info.bytes);
        Some(e.info)
    }

    /// The policy's victims (never `spare`), forgotten, until the disk budget holds.
    fn evict_to_budget(&self, inner: &mut Inner, spare: &str) -> Vec<Evicted> {
        let mut out = Vec::new();
        while inner.disk_bytes > self.cfg.disk_bytes {
            let Some(victim) = inner.policy.evict(spare) else {
                break;
            };
            if let Some(info) = self.forget(inner, &victim) {
                out.push(Evicted {
                    info,
                    reason: EvictReason::Budget,
                });
            }
        }
        out
    }

    fn update_gauges(&self, inner: &Inner) {
        self.metrics.disk_bytes.set(gauge(inner.disk_bytes));
        self.metrics.memory_bytes.set(gauge(inner.memory.bytes()));
    }

    /// Whether the cache holds `function`'s snapshot with `key` (no metrics counted).
    pub fn holds(&self, function: &str, key: &str) -> bool {
        self.lock()
            .entries
            .values()
            .any(|e| e.info.function == function && e.info.key == key)
    }

    /// The snapshot of `function` taken with `key`. One taken with another key is removed
    /// (blocking) and returned as [`Lookup::Stale`]. Counts hits, misses and stale ones.
    pub fn lookup(&self, function: &str, key: &str) -> Lookup {
        let labels = Metrics::fn_labels(function);
        let mut inner = self.lock();
        let found = inner
            .entries
            .values()
            .find(|e| e.info.function == function)
            .map(|e| (e.info.id.clone(), e.info.key == key));
        match found {
            None => {
                self.metrics.misses.get_or_create(&labels).inc();
                Lookup::Miss
            }
            Some((id, true)) => {
                self.metrics.hits.get_or_create(&labels).inc();
                let loaded = inner.memory.get(&id);
                let info = inner.entries[&id].info.clone();
                Lookup::Hit(SnapshotHandle {
                    dir: self.path(&id),
                    info,
                    loaded,
                })
            }
            Some((id, false)) => {
                self.metrics.stale.get_or_create(&labels).inc();
                let info = self.forget(&mut inner, &id);
                let aside = self.set_aside(&id);
                self.update_gauges(&inner);
                drop(inner);
                aside.iter().for_each(|p| remove_path(p));
                match info {
                    Some(info) => Lookup::Stale(info),
                    None => Lookup::Miss,
                }
            }
        }
    }

    /// A start was served from `id`: its uses, last use and the policy's order; its failures
    /// in a row end.
    pub fn record_use(&self, id: &str) {
        let mut inner = self.lock();
        if let Some(e) = inner.entries.get_mut(id) {
            e.uses += 1;
            e.last_use = Some(now_secs());
            e.failures = 0;
            inner.policy.touch(id);
        }
    }

    /// Counts a failed restore of `id`; after `failures_unhealthy` in a row it is removed
    /// (blocking), and true is returned: the next init takes a new one.
    pub fn failed(&self, id: &str, why: &str) -> bool {
        let mut inner = self.lock();
        let Some(e) = inner.entries.get_mut(id) else {
            return false;
        };
        e.failures += 1;
        e.last_error = Some(why.to_string());
        if e.failures < self.cfg.failures_unhealthy.max(1) {
            return false;
        }
        let n = e.failures;
        self.forget(&mut inner, id);
        let aside = self.set_aside(id);
        self.update_gauges(&inner);
        drop(inner);
        tracing::warn!(
            snapshot = id,
            failures = n,
            "snapshot removed after failing to restore {n} times in a row: {why}"
        );
        aside.iter().for_each(|p| remove_path(p));
        true
    }

    /// Removes snapshot `id` (blocking).
    pub fn remove(&self, id: &str) -> Result<(), SnapshotError> {
        let mut inner = self.lock();
        if self.forget(&mut inner, id).is_none() {
            return Err(SnapshotError::NotFound(id.to_string()));
        }
        // Gone already (removed behind the daemon's back): the catalog entry was all.
        let aside = self.set_aside(id);
        self.update_gauges(&inner);
        drop(inner);
        aside.iter().for_each(|p| remove_path(p));
        Ok(())
    }

    /// Moves `id`'s directory out of the way (call it under the lock): removing it after the
    /// lock is released cannot then remove a newer snapshot added under the same id.
    fn set_aside(&self, id: &str) -> Option<PathBuf> {
        let dir = self.path(id);
        let aside = self.staging(id);
        if let Some(parent) = aside.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        match std::fs::rename(&dir, &aside) {
            Ok(()) => Some(aside),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            // Left in place rather than removed after the lock is released (when it could be
            // a newer snapshot's), without its snapshot.json, so the next start's catalog
            // check removes it rather than loading it again.
            Err(e) => {
                let _ = std::fs::remove_file(dir.join(INFO_FILE));
                tracing::warn!(dir = %dir.display(), "moving a removed snapshot aside failed ({e}); its files go at the next start");
                None
            }
        }
    }

    /// Removes the snapshots of `function` (deleted, or deployed anew); returns them.
    pub fn remove_function(&self, function: &str) -> Vec<SnapshotInfo> {
        let mut inner = self.lock();
        let ids: Vec<String> = inner
            .entries
            .values()
            .filter(|e| e.info.function == function)
            .map(|e| e.info.id.clone())
            .collect();
        let gone: Vec<SnapshotInfo> = ids
            .iter()
            .filter_map(|id| self.forget(&mut inner, id))
            .collect();
        let aside: Vec<PathBuf> = gone.iter().filter_map(|i| self.set_aside(&i.id)).collect();
        self.update_gauges(&inner);
        drop(inner);
        aside.iter().for_each(|p| remove_path(p));
        gone
    }

    /// Records that snapshot `id` now has a working set of `pages` pages (its files written
    /// beside it by the caller): its `snapshot.json` and its bytes updated. Blocking.
    pub fn set_working_set(&self, id: &str, pages: u64) -> Result<SnapshotInfo, SnapshotError> {
        let dir = self.path(id);
        // Counted before the lock every start's lookup takes.
        let bytes = dir_bytes(&dir)?;
        let mut inner = self.lock();
        let Some(e) = inner.entries.get_mut(id) else {
            return Err(SnapshotError::Invalid {
                id: id.to_string(),
                why: "it left the cache".into(),
            });
        };
        let mut info = e.info.clone();
        info.working_set_pages = pages;
        info.bytes = bytes;
        write_info(&dir, &info)?;
        let old = std::mem::replace(&mut e.info, info.clone());
        inner.disk_bytes = (inner.disk_bytes + info.bytes).saturating_sub(old.bytes);
        self.update_gauges(&inner);
        Ok(info)
    }

    /// What the catalog holds for `id` (as [`SnapshotStore::add`] stored it).
    pub fn get(&self, id: &str) -> Option<SnapshotInfo> {
        self.lock().entries.get(id).map(|e| e.info.clone())
    }

    pub fn list(&self) -> Vec<SnapshotStatus> {
        let inner = self.lock();
        inner
            .entries
            .values()
            .map(|e| SnapshotStatus {
                info: e.info.clone(),
                uses: e.uses,
                last_use: e.last_use,
                location: if inner.memory.contains(&e.info.id) {
                    Location::Memory
                } else {
                    Location::Disk
                },
                failures: e.failures,
                last_error: e.last_error.clone(),
                remote: None,
            })
            .collect()
    }

    /// The loaded layer of `id` held in memory.
    pub fn cached(&self, id: &str) -> Option<Arc<LoadedImage>> {
        self.lock().memory.get(id)
    }

    /// Holds the loaded layer of `id` (its pages in memory: `LoadedImage::load` or
    /// `load_with_parent`; a layer is held flattened, so its bytes are all the pages it
    /// names) in memory if it fits `memory_bytes` once the least recently used others have
    /// left; false if it is not in the catalog, not loaded, or cannot fit.
    pub fn keep(&self, id: &str, image: Arc<LoadedImage>) -> bool {
        if !image.is_loaded() {
            return false;
        }
        let bytes = image.page_data().len() as u64;
        let mut inner = self.lock();
        if !inner.entries.contains_key(id) {
            return false;
        }
        let kept = inner.memory.keep(id, image, bytes);
        self.update_gauges(&inner);
        kept
    }

    /// Bytes of snapshot files in the cache, and its budget.
    pub fn disk_bytes(&self) -> (u64, u64) {
        (self.lock().disk_bytes, self.cfg.disk_bytes)
    }

    /// Bytes of loaded layers held in memory, and its budget.
    pub fn memory_bytes(&self) -> (u64, u64) {
        (self.lock().memory.bytes(), self.cfg.memory_bytes)
    }
}

fn entry(info: SnapshotInfo) -> Entry {
    Entry {
        info,
        uses: 0,
        last_use: None,
        failures: 0,
        last_error: None,
    }
}

/// Removes a snapshot's directory (or a stray file or link in its place).
fn remove_path(path: &Path) {
    let is_dir = std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir());
    let r = if is_dir {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    };
    if let Err(e) = r
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(path = %path.display(), "removing a snapshot's files failed: {e}");
    }
}

/// Bytes of the snapshot's image: the regular files directly in `dir` (ember-snap writes no
/// subdirectories) but its description.
fn dir_bytes(dir: &Path) -> Result<u64, SnapshotError> {
    let mut total = 0;
    for e in std::fs::read_dir(dir).map_err(io_err("listing", dir))? {
        let e = e.map_err(io_err("listing", dir))?;
        if e.file_name().to_string_lossy().starts_with(INFO_FILE) {
            continue;
        }
        let md = e.metadata().map_err(io_err("reading", &e.path()))?;
        if md.is_file() {
            total += md.len();
        }
    }
    Ok(total)
}

/// The description of snapshot directory `dir` named `name`, checked: size cap, format, id,
/// its image files present; `bytes` counted again.
fn read_entry(dir: &Path, name: &str) -> Result<SnapshotInfo, SnapshotError> {
    let path = dir.join(INFO_FILE);
    let corrupt = |why: String| SnapshotError::Corrupt {
        path: path.clone(),
        why,
    };
    let mut info = read_info(dir)?;
    if info.id != name {
        return Err(corrupt(format!(
            "it describes snapshot {:?}, not {name:?}",
            info.id
        )));
    }
    if !valid_id(&info.id) {
        return Err(corrupt(format!("{:?} is not a snapshot id", info.id)));
    }
    if info.point == SnapshotPoint::Off {
        return Err(corrupt("its point is \"off\"".into()));
    }
    if let Some(f) = IMAGE_FILES.iter().find(|f| !dir.join(f).is_file()) {
        return Err(corrupt(format!("its image file {f} is missing")));
    }
    info.bytes = dir_bytes(dir)?;
    Ok(info)
}

/// The `snapshot.json` in `dir`, checked.
pub(crate) fn read_info(dir: &Path) -> Result<SnapshotInfo, SnapshotError> {
    let path = dir.join(INFO_FILE);
    let mut text = Vec::new();
    std::fs::File::open(&path)
        .map_err(io_err("reading", &path))?
        .take(MAX_INFO + 1)
        .read_to_end(&mut text)
        .map_err(io_err("reading", &path))?;
    parse_info(&path, &text)
}

/// A `snapshot.json`'s bytes (read from `path`, named in errors), checked.
pub(crate) fn parse_info(path: &Path, text: &[u8]) -> Result<SnapshotInfo, SnapshotError> {
    let corrupt = |why: String| SnapshotError::Corrupt {
        path: path.to_path_buf(),
        why,
    };
    if text.len() as u64 > MAX_INFO {
        return Err(corrupt(format!("larger than {MAX_INFO} bytes")));
    }
    // The format first, so a file of another format is named as such.
    #[derive(Deserialize)]
    struct Format {
        format: Option<String>,
    }
    let f: Format = serde_json::from_slice(text).map_err(|e| corrupt(e.to_string()))?;
    match f.format.as_deref() {
        Some(FORMAT) => {}
        Some(other) => return Err(corrupt(format!("format {other:?}, expected {FORMAT:?}"))),
        None => return Err(corrupt(format!("no format (expected {FORMAT:?})"))),
    }
    let file: InfoFile = serde_json::from_slice(text).map_err(|e| corrupt(e.to_string()))?;
    if info_checksum(&file.info) != file.checksum {
        return Err(corrupt("its checksum does not match its contents".into()));
    }
    Ok(file.info)
}

/// Writes `snapshot.json` in `dir` atomically (a temporary file renamed over it).
pub fn write_info(dir: &Path, info: &SnapshotInfo) -> Result<(), SnapshotError> {
    let path = dir.join(INFO_FILE);
    let tmp = dir.join(format!("{INFO_FILE}.tmp"));
    let file = InfoFile {
        format: FORMAT.to_string(),
        checksum: info_checksum(info),
        info: info.clone(),
    };
    let text = serde_json::to_vec_pretty(&file).map_err(|e| SnapshotError::Io {
        what: "encoding",
        path: path.clone(),
        source: std::io::Error::other(e),
    })?;
    std::fs::write(&tmp, text).map_err(io_err("writing", &tmp))?;
    std::fs::rename(&tmp, &path).map_err(io_err("renaming into place", &tmp))
}

#[cfg(test)]
mod tests;
