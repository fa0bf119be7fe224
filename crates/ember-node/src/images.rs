//! Dependency images on this node: the catalog on disk, the in-memory pool under a byte
//! budget, matching a function to the image of exactly its distributions, and each image's
//! health. Building one and starting from one are the node's (`node/image.rs`).
//!
//! ```text
//! <home>/images/<id>/meta, pages, workingset   ember-snap's image (+ the test restore's working set)
//! <home>/images/<id>/image.json                what it holds: packages, versions, figures
//!
//! checkout(id): in memory? -> pages from the pool copy
//!               else       -> pages from the file (checked per chunk), and a load into the
//!                             pool in the background when it fits (least recently used
//!                             images leave the pool to make room)
//! checkout_pooled(id): an image this node has no copy of (a cluster's): its metadata here,
//!               its pages from other nodes' memory or the snapshot store (`PoolSource`)
//! ```
//!
//! A pooled image is matched only by [`ImageStore::find_pooled`]: snapshots, standbys and
//! templates are made over images this node holds. A copy of its own, once added, replaces it.
//!
//! Eviction only drops the pool's reference: instances restored lazily keep reading pages
//! from their copy until they end, so an evicted image still counts against the budget
//! until then. An image that does not fit is served from disk.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use ember_snap::LoadedImage;
use ember_snap::lazy::{FileSource, PageSource, PoolSource};
use serde::{Deserialize, Serialize};

/// Largest `image.json` read back.
const MAX_INFO: u64 = 1 << 20;
const INFO_FILE: &str = "image.json";

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(
        "dependency images need the sandbox, which needs root: run the daemon as root and \
         without --no-sandbox"
    )]
    NeedsSandbox,
    #[error("image {0:?} does not exist (`ember image ls` lists images)")]
    NotFound(String),
    #[error("building the image for {packages:?} failed while {phase}: {why}")]
    Build {
        packages: Vec<String>,
        phase: &'static str,
        why: String,
    },
    #[error("the image for {packages:?} failed its test restore, so it is not offered: {why}")]
    Verify { packages: Vec<String>, why: String },
    #[error(transparent)]
    Snap(#[from] ember_snap::ImageError),
    #[error("{what} {path} failed")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl ImageError {
    /// Errors the caller made (as opposed to the node failing).
    pub fn is_user_error(&self) -> bool {
        matches!(self, ImageError::NotFound(_))
    }
}

/// What an image holds, written beside it at build.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ImageInfo {
    pub id: String,
    /// The package environment it was built from (its interpreter and site-packages are
    /// what instances restored from it use).
    pub env_key: String,
    pub env_dir: PathBuf,
    pub python: PathBuf,
    pub packages: Vec<String>,
    /// The modules imported before the dump.
    pub imports: Vec<String>,
    /// Every distribution in the image and its version: what matching compares.
    pub installed: BTreeMap<String, String>,
    pub created_at: u64,
    pub pages: u64,
    pub bytes: u64,
    pub vmas: usize,
    /// Pages the test restore touched (installed up front by a prefetch restore).
    pub working_set_pages: u64,
    pub import_ms: f64,
    pub dump_ms: f64,
    pub verify_ms: f64,
    /// The Python bootstrap the image's process runs (its code is in the image's memory):
    /// an image made by another bootstrap speaks another protocol, and is dropped at start.
    #[serde(default)]
    pub runtime: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Location {
    Memory,
    Disk,
    /// Not on this node: its pages from other nodes' memory or the snapshot store.
    Pool,
}

/// An image as `ember image ls` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ImageStatus {
    #[serde(flatten)]
    pub info: ImageInfo,
    pub location: Location,
    pub healthy: bool,
    /// Failed restores in a row.
    pub failures: u32,
    pub restores: u64,
    pub last_error: Option<String>,
    /// Deployed functions it would serve now (filled in by the node).
    pub functions: usize,
    /// Instances of it restored ahead of demand, ready now (filled in by the node).
    pub standby: usize,
    /// Its template (its standbys forked from one parked restore): `kept`, or why it
    /// cannot be one; `None` when none was tried (filled in by the node).
    pub template: Option<String>,
    /// Modules its functions' handlers imported that it does not preload yet: it is
    /// rebuilt with them (filled in by the node).
    pub imports_pending: usize,
    /// In the snapshot store (`snapshots = "remote"`): `uploading`, `stored` or `failed:
    /// <why>`; `None` when this node has not uploaded it (filled in by the node).
    pub remote: Option<String>,
    /// A pooled image's places and the chunks each gave (checked) so far.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pool: Vec<PoolPlace>,
}

/// One place a pooled image's pages come from.
#[derive(Debug, Clone, Serialize)]
pub struct PoolPlace {
    pub place: String,
    pub chunks: u64,
}

impl Location {
    pub fn as_str(self) -> &'static str {
        match self {
            Location::Memory => "memory",
            Location::Disk => "disk",
            Location::Pool => "pool",
        }
    }
}

/// Where a restore gets its pages: the image (its metadata, and its pages when in memory),
/// the source a lazy restore's page server reads, and the working set a prefetch installs.
pub struct Pages {
    pub image: Arc<LoadedImage>,
    pub source: Arc<dyn PageSource>,
    pub working_set: Option<Arc<Vec<u64>>>,
}

impl Pages {
    /// An image whose pages are in memory: it is its own source.
    pub fn in_memory(image: Arc<LoadedImage>, working_set: Option<Arc<Vec<u64>>>) -> Pages {
        Pages {
            source: image.clone(),
            image,
            working_set,
        }
    }
}

/// An image taken for one restore.
#[derive(Clone)]
pub struct Checkout {
    pub id: String,
    /// The pool's copy, or (on disk) the metadata only.
    image: Arc<LoadedImage>,
    working_set: Option<Arc<Vec<u64>>>,
    pub location: Location,
    /// The interpreter and environment instances restored from it run with.
    pub python: PathBuf,
    pub env_dir: PathBuf,
    /// The image is not in memory and would fit: load it (blocking) with
    /// [`ImageStore::load`].
    pub load_after: bool,
    /// A pooled image's source ([`Location::Pool`]).
    pool: Option<Arc<PoolSource>>,
}

impl Checkout {
    /// BLAKE3 (hex) of the image's metadata: what a layer over it records.
    pub fn meta_hash(&self) -> String {
        hex::encode(self.image.meta_hash())
    }

    /// The pages for the restore. In memory: the pool's copy. On disk: the whole image read
    /// and checked now when `whole` (an eager restore needs every page), else a file source
    /// that reads and checks each chunk as the page server asks for it. Pooled: the pool's
    /// source (never whole: restore it lazily). Blocking.
    pub fn pages(&self, whole: bool) -> Result<Pages, ImageError> {
        let ws = self.working_set.clone();
        if let Some(pool) = &self.pool {
            return Ok(Pages {
                source: pool.clone(),
                image: self.image.clone(),
                working_set: ws,
            });
        }
        Ok(match self.location {
            Location::Memory => Pages::in_memory(self.image.clone(), ws),
            Location::Disk if whole => {
                Pages::in_memory(Arc::new(LoadedImage::load(&self.image.dir)?), ws)
            }
            Location::Disk | Location::Pool => Pages {
                source: Arc::new(FileSource::open(&self.image.dir, &self.image.meta)?),
                image: self.image.clone(),
                working_set: ws,
            },
        })
    }
}

struct Entry {
    info: ImageInfo,
    /// Metadata only (pages not read): the disk tier.
    opened: Arc<LoadedImage>,
    loaded: Option<Arc<LoadedImage>>,
    working_set: Option<Arc<Vec<u64>>>,
    last_used: Instant,
    restores: u64,
    failures: u32,
    unhealthy: bool,
    last_error: Option<String>,
    /// Not this node's: where its pages come from, and the directory of its metadata.
    pooled: Option<(Arc<PoolSource>, PathBuf)>,
}

impl Entry {
    /// A catalog entry, not in the pool yet; unhealthy with `broken` (why).
    fn new(
        info: ImageInfo,
        opened: Arc<LoadedImage>,
        working_set: Option<Arc<Vec<u64>>>,
        broken: Option<String>,
        pooled: Option<(Arc<PoolSource>, PathBuf)>,
    ) -> Entry {
        Entry {
            info,
            opened,
            loaded: None,
            working_set,
            last_used: Instant::now(),
            restores: 0,
            failures: 0,
            unhealthy: broken.is_some(),
            last_error: broken,
            pooled,
        }
    }
}

#[derive(Default)]
struct Inner {
    entries: BTreeMap<String, Entry>,
    /// Copies that left the pool but are still read by instances.
    draining: Vec<Weak<LoadedImage>>,
    loading: HashSet<String>,
}

pub struct ImageStore {
    dir: PathBuf,
    budget: u64,
    failures_unhealthy: u32,
    inner: Mutex<Inner>,
}

fn page_bytes(img: &LoadedImage) -> u64 {
    img.page_data().len() as u64
}

/// What an image's pages take in memory once loaded (from its metadata alone).
fn page_bytes_of(img: &LoadedImage) -> u64 {
    img.meta.pages.count * ember_snap::image::PAGE
}

impl ImageStore {
    /// Opens `dir`, reading every image's metadata (not its pages). An image that fails its
    /// checks is listed as unhealthy with the reason, never used.
    pub fn open(
        dir: PathBuf,
        budget: u64,
        failures_unhealthy: u32,
        runtime: &str,
    ) -> Result<ImageStore, ImageError> {
        std::fs::create_dir_all(&dir).map_err(|source| ImageError::Io {
            what: "creating",
            path: dir.clone(),
            source,
        })?;
        let store = ImageStore {
            dir,
            budget,
            failures_unhealthy: failures_unhealthy.max(1),
            inner: Mutex::new(Inner::default()),
        };
        let read = std::fs::read_dir(&store.dir).map_err(|source| ImageError::Io {
            what: "listing",
            path: store.dir.clone(),
            source,
        })?;
        for e in read.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.contains(".tmp") {
                // A build that did not finish.
                let _ = std::fs::remove_dir_all(e.path());
                continue;
            }
            if read_info(&e.path()).is_ok_and(|i| i.runtime != runtime) {
                // Its process runs an earlier bootstrap; the node rebuilds what functions need.
                tracing::info!(image = %name, "image made by an earlier runtime removed");
                let _ = std::fs::remove_dir_all(e.path());
                continue;
            }
            if let Err(err) = store.insert(&e.path()) {
                tracing::error!(image = %name, "image is not usable: {}", crate::error_chain(&err));
            }
        }
        Ok(store)
    }

    pub fn budget(&self) -> u64 {
        self.budget
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Where a build of image `id` writes before [`ImageStore::add`] puts it in place.
    pub fn staging(&self, id: &str) -> PathBuf {
        self.dir
            .join(format!("{id}.tmp-{}", uuid::Uuid::new_v4().simple()))
    }

    pub fn path(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    fn insert(&self, dir: &Path) -> Result<String, ImageError> {
        let info = read_info(dir)?;
        let opened = Arc::new(LoadedImage::open(dir)?);
        let working_set = ember_snap::image::read_working_set(dir, &opened.meta)?.map(Arc::new);
        let id = info.id.clone();
        // Checked once here rather than at every match: an environment removed later makes
        // restores fail, and the image unhealthy, like any other broken file.
        let missing_env = (!info.env_dir.is_dir())
            .then(|| format!("its environment {} is gone", info.env_dir.display()));
        if let Some(why) = &missing_env {
            tracing::error!(image = %id, "image is not usable: {why}; rebuild it");
        }
        let mut inner = self.lock();
        // A pooled image offered meanwhile: this copy replaces it.
        if let Some(old) = inner.entries.remove(&id) {
            drop_entry(&mut inner, old);
        }
        inner.entries.insert(
            id.clone(),
            Entry::new(info, opened, working_set, missing_env, None),
        );
        Ok(id)
    }

    /// Offers image `info.id`, whose metadata (and working set) is in `dir` and whose pages
    /// come from `source`, as a pooled image, unless this node has one of that id already
    /// (then `dir` is removed). `dir` is the store's until the entry goes.
    pub fn add_pooled(
        &self,
        dir: &Path,
        info: &ImageInfo,
        source: Arc<PoolSource>,
    ) -> Result<bool, ImageError> {
        if self.lock().entries.contains_key(&info.id) {
            let _ = std::fs::remove_dir_all(dir);
            return Ok(false);
        }
        write_info(dir, info)?;
        let opened = Arc::new(LoadedImage::open(dir)?);
        if opened.meta.id != source.meta().id {
            let _ = std::fs::remove_dir_all(dir);
            return Err(ImageError::Io {
                what: "matching the pool's source to",
                path: dir.to_path_buf(),
                source: std::io::Error::other("the source serves another image"),
            });
        }
        let working_set = ember_snap::image::read_working_set(dir, &opened.meta)?.map(Arc::new);
        let mut inner = self.lock();
        if inner.entries.contains_key(&info.id) {
            drop(inner);
            let _ = std::fs::remove_dir_all(dir);
            return Ok(false);
        }
        let pooled = Some((source, dir.to_path_buf()));
        inner.entries.insert(
            info.id.clone(),
            Entry::new(info.clone(), opened, working_set, None, pooled),
        );
        Ok(true)
    }

    /// Whether image `id` is a pooled one here, and healthy (`Some(false)`: it failed
    /// its restores).
    pub fn pooled_health(&self, id: &str) -> Option<bool> {
        self.lock()
            .entries
            .get(id)
            .filter(|e| e.pooled.is_some())
            .map(|e| !e.unhealthy)
    }

    /// The metadata id of pooled image `id` (what the nodes holding it serve it by).
    pub fn pooled_meta_id(&self, id: &str) -> Option<[u8; 16]> {
        self.lock()
            .entries
            .get(id)
            .and_then(|e| e.pooled.as_ref())
            .map(|(p, _)| p.meta().id)
    }

    /// The images whose pages are in this node's memory pool (what it serves to other
    /// nodes): their ids and their metadata's.
    pub fn in_memory(&self) -> Vec<(String, [u8; 16])> {
        self.lock()
            .entries
            .iter()
            .filter_map(|(id, e)| e.loaded.as_ref().map(|l| (id.clone(), l.meta.id)))
            .collect()
    }

    /// Whether image `id`'s pages are in the memory pool.
    pub fn is_in_memory(&self, id: &str) -> bool {
        self.lock()
            .entries
            .get(id)
            .is_some_and(|e| e.loaded.is_some())
    }

    /// The in-memory copy of the image whose metadata names itself `meta_id`.
    pub fn loaded_by_meta(&self, meta_id: &[u8; 16]) -> Option<Arc<LoadedImage>> {
        self.lock()
            .entries
            .values()
            .filter_map(|e| e.loaded.as_ref())
            .find(|l| &l.meta.id == meta_id)
            .cloned()
    }

    /// Puts a built and verified image (in `staged`, with its `image.json`) in place,
    /// replacing an older image of the same id, and loads it into the pool when it fits.
    pub fn add(&self, staged: &Path, info: &ImageInfo) -> Result<(), ImageError> {
        write_info(staged, info)?;
        let dst = self.path(&info.id);
        let io = |what, path: &Path| {
            let path = path.to_path_buf();
            move |source| ImageError::Io { what, path, source }
        };
        if dst.exists() {
            let old = self.staging(&info.id);
            std::fs::rename(&dst, &old).map_err(io("moving aside", &dst))?;
            let _ = std::fs::remove_dir_all(&old);
        }
        std::fs::rename(staged, &dst).map_err(io("moving into place", staged))?;
        {
            let mut inner = self.lock();
            if let Some(old) = inner.entries.remove(&info.id) {
                drop_entry(&mut inner, old);
            }
        }
        self.insert(&dst)?;
        self.load(&info.id);
        Ok(())
    }

    pub fn remove(&self, id: &str) -> Result<(), ImageError> {
        {
            let mut inner = self.lock();
            let Some(entry) = inner.entries.remove(id) else {
                return Err(ImageError::NotFound(id.to_string()));
            };
            let pooled = entry.pooled.is_some();
            drop_entry(&mut inner, entry);
            if pooled {
                return Ok(());
            }
        }
        let dir = self.path(id);
        std::fs::remove_dir_all(&dir).map_err(|source| ImageError::Io {
            what: "removing",
            path: dir,
            source,
        })
    }

    pub fn list(&self) -> Vec<ImageStatus> {
        self.lock()
            .entries
            .values()
            .map(|e| ImageStatus {
                info: e.info.clone(),
                location: if e.pooled.is_some() {
                    Location::Pool
                } else if e.loaded.is_some() {
                    Location::Memory
                } else {
                    Location::Disk
                },
                healthy: !e.unhealthy,
                failures: e.failures,
                restores: e.restores,
                last_error: e.last_error.clone(),
                functions: 0,
                standby: 0,
                template: None,
                imports_pending: 0,
                remote: None,
                pool: e.pooled.as_ref().map_or_else(Vec::new, |(p, _)| {
                    p.given()
                        .into_iter()
                        .map(|(place, chunks)| PoolPlace { place, chunks })
                        .collect()
                }),
            })
            .collect()
    }

    /// Bytes of image pages in memory: the pool, and copies that left it but are still read.
    pub fn resident_bytes(&self) -> u64 {
        let mut inner = self.lock();
        resident(&mut inner)
    }

    /// The healthy image of exactly the distributions `installed` (see [`matching`]) that
    /// fits in `memory_bytes`, the instance's memory limit.
    pub fn find(
        &self,
        installed: &BTreeMap<String, String>,
        memory_bytes: u64,
    ) -> Result<String, NoImage> {
        self.find_where(installed, memory_bytes, false)
    }

    /// As [`ImageStore::find`], among the pooled images (those this node has no copy of).
    pub fn find_pooled(
        &self,
        installed: &BTreeMap<String, String>,
        memory_bytes: u64,
    ) -> Result<String, NoImage> {
        self.find_where(installed, memory_bytes, true)
    }

    fn find_where(
        &self,
        installed: &BTreeMap<String, String>,
        memory_bytes: u64,
        pooled: bool,
    ) -> Result<String, NoImage> {
        let inner = self.lock();
        let candidates = inner
            .entries
            .values()
            .filter(|e| !e.unhealthy && e.pooled.is_some() == pooled)
            .map(|e| &e.info);
        choose(candidates, installed, memory_bytes).map(|i| i.id.clone())
    }

    /// The modules image `id` preloads, if this node has it (a pooled image learns nothing:
    /// it is another node's).
    pub fn imports_of(&self, id: &str) -> Option<Vec<String>> {
        self.lock()
            .entries
            .get(id)
            .filter(|e| e.pooled.is_none())
            .map(|e| e.info.imports.clone())
    }

    /// Whether the package environment `env_key` has its own image (a copy on this node).
    pub fn has_image_for(&self, env_key: &str) -> bool {
        self.lock()
            .entries
            .get(&image_id(env_key))
            .is_some_and(|e| e.pooled.is_none())
    }

    /// Takes what a restore of `id` needs, preferring the in-memory copy.
    pub fn checkout(&self, id: &str) -> Result<Checkout, ImageError> {
        self.checkout_where(id, false)
    }

    /// Takes what a restore of the pooled image `id` needs: its pages from the pool.
    pub fn checkout_pooled(&self, id: &str) -> Result<Checkout, ImageError> {
        self.checkout_where(id, true)
    }

    fn checkout_where(&self, id: &str, pooled: bool) -> Result<Checkout, ImageError> {
        let mut inner = self.lock();
        let budget = self.budget;
        let e = inner
            .entries
            .get_mut(id)
            .filter(|e| e.pooled.is_some() == pooled)
            .ok_or_else(|| ImageError::NotFound(id.to_string()))?;
        e.last_used = Instant::now();
        e.restores += 1;
        let mut co = Checkout {
            id: id.to_string(),
            image: e.opened.clone(),
            working_set: e.working_set.clone(),
            location: Location::Disk,
            python: e.info.python.clone(),
            env_dir: e.info.env_dir.clone(),
            load_after: false,
            pool: e.pooled.as_ref().map(|(p, _)| p.clone()),
        };
        if co.pool.is_some() {
            co.location = Location::Pool;
            return Ok(co);
        }
        match &e.loaded {
            Some(l) => {
                co.image = l.clone();
                co.location = Location::Memory;
            }
            None => {
                co.load_after = page_bytes_of(&co.image) <= budget && !inner.loading.contains(id)
            }
        }
        Ok(co)
    }

    /// [`ImageStore::checkout`] without counting a restore or a use (to learn which image a
    /// snapshot would be over, or to read it for a layer).
    pub fn checkout_quiet(&self, id: &str) -> Result<Checkout, ImageError> {
        let inner = self.lock();
        let e = inner
            .entries
            .get(id)
            .filter(|e| e.pooled.is_none())
            .ok_or_else(|| ImageError::NotFound(id.to_string()))?;
        let (image, location) = match &e.loaded {
            Some(l) => (l.clone(), Location::Memory),
            None => (e.opened.clone(), Location::Disk),
        };
        Ok(Checkout {
            id: id.to_string(),
            image,
            working_set: e.working_set.clone(),
            location,
            python: e.info.python.clone(),
            env_dir: e.info.env_dir.clone(),
            load_after: false,
            pool: None,
        })
    }

    /// Reads `id`'s pages into the pool (checking every hash) if they fit the budget once
    /// the least recently used images have left it. Blocking: tens of milliseconds per
    /// 100 MiB.
    pub fn load(&self, id: &str) -> bool {
        let (dir, want) = {
            let mut inner = self.lock();
            let Some(e) = inner.entries.get(id).filter(|e| e.pooled.is_none()) else {
                return false;
            };
            if e.loaded.is_some() || inner.loading.contains(id) {
                return e.loaded.is_some();
            }
            let want = page_bytes_of(&e.opened);
            if !make_room(&mut inner, self.budget, want, id) {
                tracing::info!(
                    image = id,
                    bytes = want,
                    budget = self.budget,
                    "image does not fit the memory pool now; served from disk"
                );
                return false;
            }
            inner.loading.insert(id.to_string());
            (self.path(id), want)
        };
        let loaded = LoadedImage::load(&dir);
        let mut inner = self.lock();
        inner.loading.remove(id);
        match loaded {
            Ok(img) => {
                // Room may have gone while loading: check again, under the lock.
                if !make_room(&mut inner, self.budget, want, id) {
                    return false;
                }
                match inner.entries.get_mut(id) {
                    Some(e) => {
                        e.loaded = Some(Arc::new(img));
                        true
                    }
                    None => false,
                }
            }
            Err(err) => {
                let msg = crate::error_chain(&err);
                tracing::error!(
                    image = id,
                    "loading the image failed, so it is not used: {msg}"
                );
                if let Some(e) = inner.entries.get_mut(id) {
                    e.unhealthy = true;
                    e.last_error = Some(msg);
                }
                false
            }
        }
    }

    pub fn succeeded(&self, id: &str) {
        if let Some(e) = self.lock().entries.get_mut(id) {
            e.failures = 0;
        }
    }

    /// Counts a failed restore of `id`; returns true when this one made it unhealthy.
    pub fn failed(&self, id: &str, why: &str) -> bool {
        let mut inner = self.lock();
        let Some(e) = inner.entries.get_mut(id) else {
            return false;
        };
        e.failures += 1;
        e.last_error = Some(why.to_string());
        if !e.unhealthy && e.failures >= self.failures_unhealthy {
            e.unhealthy = true;
            if let Some(l) = e.loaded.take() {
                inner.draining.push(Arc::downgrade(&l));
            }
            return true;
        }
        false
    }
}

/// The id of the image built from package environment `env_key`: one image per environment.
pub fn image_id(env_key: &str) -> String {
    format!("img-{}", &env_key[..env_key.len().min(12)])
}

/// An entry that left the catalog: its in-memory copy drains (instances may still read it),
/// a pooled one's metadata directory goes.
fn drop_entry(inner: &mut Inner, e: Entry) {
    if let Some(l) = e.loaded {
        inner.draining.push(Arc::downgrade(&l));
    }
    if let Some((_, dir)) = e.pooled {
        let _ = std::fs::remove_dir_all(dir);
    }
}

fn resident(inner: &mut Inner) -> u64 {
    inner.draining.retain(|w| w.strong_count() > 0);
    let pool: u64 = inner
        .entries
        .values()
        .filter_map(|e| e.loaded.as_deref())
        .map(page_bytes)
        .sum();
    let draining: u64 = inner
        .draining
        .iter()
        .filter_map(Weak::upgrade)
        .map(|l| page_bytes(&l))
        .sum();
    pool + draining
}

/// Sends least recently used images (other than `except`) out of the pool until `want`
/// more bytes fit the budget; false if they cannot.
fn make_room(inner: &mut Inner, budget: u64, want: u64, except: &str) -> bool {
    loop {
        if resident(inner) + want <= budget {
            return true;
        }
        let victim = inner
            .entries
            .iter()
            .filter(|(id, e)| e.loaded.is_some() && id.as_str() != except)
            .min_by_key(|(_, e)| e.last_used)
            .map(|(id, _)| id.clone());
        let Some(victim) = victim else { return false };
        if let Some(l) = inner.entries.get_mut(&victim).and_then(|e| e.loaded.take()) {
            tracing::info!(image = %victim, "image left the memory pool (least recently used)");
            inner.draining.push(Arc::downgrade(&l));
        }
    }
}

/// Memory an instance needs beyond its image's pages to be restored and import its handler.
pub const RESTORE_HEADROOM: u64 = 32 << 20;

/// Why no image serves a function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoImage {
    /// None of exactly its distributions (healthy).
    Missing,
    /// Its image and [`RESTORE_HEADROOM`] do not fit in the function's memory limit: the
    /// restore would fail in the function's own cgroup, and the image would be blamed.
    TooBig,
}

impl NoImage {
    pub fn reason(self) -> &'static str {
        match self {
            NoImage::Missing => "no-image",
            NoImage::TooBig => "image-too-big",
        }
    }
}

/// The image [`matching`] `installed`, if it fits in `memory_bytes` with its headroom.
pub fn choose<'a>(
    images: impl Iterator<Item = &'a ImageInfo>,
    installed: &BTreeMap<String, String>,
    memory_bytes: u64,
) -> Result<&'a ImageInfo, NoImage> {
    let found = matching(images, installed).ok_or(NoImage::Missing)?;
    if found.bytes.saturating_add(RESTORE_HEADROOM) > memory_bytes {
        return Err(NoImage::TooBig);
    }
    Ok(found)
}

/// The image whose distributions are exactly `installed`, at the same versions (the smallest
/// if several). Not one that merely includes them: an image's process has imported every
/// package of its own set, whose import-time code (a package one tenant chose and another
/// did not) would otherwise run inside the other tenant's instances.
pub fn matching<'a>(
    images: impl Iterator<Item = &'a ImageInfo>,
    installed: &BTreeMap<String, String>,
) -> Option<&'a ImageInfo> {
    images
        .filter(|i| i.installed == *installed)
        .min_by_key(|i| (i.bytes, i.id.clone()))
}

/// The `image.json` in `dir`.
pub(crate) fn read_info(dir: &Path) -> Result<ImageInfo, ImageError> {
    use std::io::Read;
    let path = dir.join(INFO_FILE);
    let io = |source| ImageError::Io {
        what: "reading",
        path: path.clone(),
        source,
    };
    let mut text = Vec::new();
    std::fs::File::open(&path)
        .map_err(io)?
        .take(MAX_INFO)
        .read_to_end(&mut text)
        .map_err(io)?;
    serde_json::from_slice(&text).map_err(|e| io(std::io::Error::other(e)))
}

fn write_info(dir: &Path, info: &ImageInfo) -> Result<(), ImageError> {
    let path = dir.join(INFO_FILE);
    let text = serde_json::to_vec_pretty(info).map_err(std::io::Error::other);
    text.and_then(|t| std::fs::write(&path, t))
        .map_err(|source| ImageError::Io {
            what: "writing",
            path,
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(id: &str, bytes: u64, installed: &[(&str, &str)]) -> ImageInfo {
        ImageInfo {
            id: id.into(),
            env_key: id.into(),
            env_dir: PathBuf::from("/"),
            python: PathBuf::from("/usr/bin/python3"),
            packages: vec![],
            imports: vec![],
            installed: installed
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
            created_at: 0,
            pages: bytes / 4096,
            bytes,
            vmas: 0,
            working_set_pages: 0,
            import_ms: 0.0,
            dump_ms: 0.0,
            verify_ms: 0.0,
            runtime: String::new(),
        }
    }

    fn set(v: &[(&str, &str)]) -> BTreeMap<String, String> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn only_an_image_of_exactly_the_same_distributions_matches() {
        let images = [
            info(
                "big",
                300,
                &[("numpy", "2.1"), ("pandas", "2.2"), ("scipy", "1.1")],
            ),
            info("numpy", 100, &[("numpy", "2.1")]),
            info("numpy-old", 50, &[("numpy", "1.26")]),
            info("pandas", 200, &[("numpy", "2.1"), ("pandas", "2.2")]),
        ];
        let pick =
            |want: &[(&str, &str)]| matching(images.iter(), &set(want)).map(|i| i.id.as_str());
        assert_eq!(pick(&[("numpy", "2.1")]), Some("numpy"));
        assert_eq!(pick(&[("numpy", "1.26")]), Some("numpy-old"));
        assert_eq!(pick(&[("pandas", "2.2"), ("numpy", "2.1")]), Some("pandas"));
        // An image holding more than the function's own distributions never serves it: its
        // extra packages' import-time code would run in the function's instances.
        assert_eq!(pick(&[("pandas", "2.2")]), None);
        assert_eq!(pick(&[("scipy", "1.1"), ("numpy", "2.1")]), None);
        assert_eq!(pick(&[]), None);
        // Nothing has this version, or this package: cold boot.
        assert_eq!(pick(&[("numpy", "2.0")]), None);
        assert_eq!(pick(&[("numpy", "2.1"), ("requests", "2.32")]), None);
    }

    /// An image too big for the function's memory is never tried: its restore would fail in
    /// the function's cgroup and count against an image other functions use.
    #[test]
    fn an_image_must_fit_in_the_functions_memory() {
        let images = [info("numpy", 100 << 20, &[("numpy", "2.1")])];
        let numpy = set(&[("numpy", "2.1")]);
        let pick = |mb: u64| choose(images.iter(), &numpy, mb << 20).map(|i| i.id.as_str());
        assert_eq!(pick(128), Err(NoImage::TooBig));
        assert_eq!(pick(132), Ok("numpy"));
        assert_eq!(
            choose(images.iter(), &set(&[]), 1 << 40).map(|i| i.id.as_str()),
            Err(NoImage::Missing)
        );
    }

    #[test]
    fn a_hostile_image_json_is_refused_without_panic() {
        let dir = tempfile::tempdir().unwrap();
        for body in [&b"{"[..], b"[]", b"{\"id\": 5}", &[0xff; 64]] {
            std::fs::write(dir.path().join(INFO_FILE), body).unwrap();
            assert!(read_info(dir.path()).is_err());
        }
        let good = info("x", 1, &[]);
        write_info(dir.path(), &good).unwrap();
        assert_eq!(read_info(dir.path()).unwrap(), good);
    }
}
