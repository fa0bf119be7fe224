//! The node's side of the snapshot store (ember-store) in `snapshots = "remote"` mode:
//! every dependency image and function snapshot the node makes is uploaded in the
//! background, off the request path, as the set `image/<id>` or `snapshot/<id>`; `ember
//! image ls` and `ember snapshot ls` show where each one is. A node missing an image or a
//! function snapshot fetches it ([`Remote::fetch`]) before it builds or takes its own.
//!
//! The files are hard-linked into a staging directory under `<home>/uploads` as soon as the
//! set is made: images and snapshots are replaced by renaming directories, never written in
//! place, so the links hold one version of every file however long the upload waits. Of
//! several versions of one set queued, the newest is uploaded.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ember_store::backend::s3::S3;
use ember_store::manifest::{FileEntry, Manifest};
use ember_store::{GetStats, PutFile, PutStats, Repo, S3Config, SetRef};

use crate::metrics::{KindLabels, StoreMetrics, TakeLabels};

/// Uploads at once (each has up to 16 chunks in flight).
const UPLOADS: usize = 2;

/// How long a set the store was found not to hold is not asked for again.
const ABSENT_FOR: Duration = Duration::from_secs(30);
/// How long a set whose fetch failed (the store down, slow, or its bytes wrong) is not
/// asked for again: starts meanwhile do not each pay the deadline.
const FAILED_FOR: Duration = Duration::from_secs(5);

/// A set fetched from the store.
#[derive(Debug, Clone, Copy)]
pub struct Fetched {
    pub chunks: usize,
    pub raw_bytes: u64,
    /// Read from the store (compressed).
    pub stored_bytes: u64,
    pub elapsed: Duration,
}

/// Why a set was not fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("the snapshot store does not hold it")]
    Absent,
    #[error("it is being fetched already")]
    Busy,
    #[error("fetching it took longer than {0:?}")]
    TimedOut(Duration),
    #[error("{0}")]
    Store(String),
}

/// Where a set stands in the store, as this node knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoteState {
    Uploading,
    Stored,
    Failed(String),
}

impl RemoteState {
    /// `uploading`, `stored`, or `failed: <why>`.
    pub fn describe(&self) -> String {
        match self {
            RemoteState::Uploading => "uploading".into(),
            RemoteState::Stored => "stored".into(),
            RemoteState::Failed(why) => format!("failed: {why}"),
        }
    }
}

pub struct Remote {
    repo: Repo,
    describe: String,
    staging: PathBuf,
    states: Mutex<HashMap<(String, String), RemoteState>>,
    /// The newest upload queued per set: an older one still waiting is dropped.
    queued: Mutex<HashMap<(String, String), u64>>,
    next: std::sync::atomic::AtomicU64,
    slots: tokio::sync::Semaphore,
    metrics: StoreMetrics,
    /// Sets not to ask the store for now, and why.
    skip: Mutex<HashMap<(String, String), Skip>>,
    /// Sets being fetched now, each with what says when its fetch ends (see also
    /// [`Remote::is_fetching`]).
    fetching: Mutex<std::collections::HashSet<(String, String)>>,
}

/// Why a set is not asked for.
#[derive(Debug, Clone, Copy)]
enum Skip {
    /// The store did not hold it, at this time ([`ABSENT_FOR`]).
    Absent(Instant),
    /// Its fetch failed at this time ([`FAILED_FOR`]).
    Failed(Instant),
    /// Fetched before, it failed to restore here: never again ([`Remote::refuse`]).
    Refused,
}

impl Skip {
    /// Whether it still holds.
    fn holds(self) -> bool {
        match self {
            Skip::Absent(t) => t.elapsed() < ABSENT_FOR,
            Skip::Failed(t) => t.elapsed() < FAILED_FOR,
            Skip::Refused => true,
        }
    }
}

/// A fetch of one set in progress, owned, so that it can outlive the call that began it (a
/// lazy fetch's rest ends in the background): the set leaves [`Remote::fetching`] when this
/// is dropped.
pub struct FetchGuard {
    remote: Arc<Remote>,
    kind: String,
    id: String,
    t0: Instant,
}

impl FetchGuard {
    /// Records how the fetch ended: metrics, the set's state, and (failed, or absent) not
    /// asked for again for a while.
    pub fn record(&self, result: Result<&GetStats, &FetchError>) {
        let r = &self.remote;
        let (kind, id) = (&self.kind, &self.id);
        let labels = |result: &str| TakeLabels {
            kind: kind.to_string(),
            result: result.to_string(),
        };
        let kind_label = KindLabels {
            kind: kind.to_string(),
        };
        match result {
            Ok(stats) => {
                r.metrics.fetches.get_or_create(&labels("fetched")).inc();
                r.metrics
                    .fetched_bytes
                    .get_or_create(&kind_label)
                    .inc_by(stats.stored_bytes);
                r.metrics
                    .fetch_seconds
                    .get_or_create(&kind_label)
                    .observe(self.t0.elapsed().as_secs_f64());
                r.set_state(kind, id, RemoteState::Stored);
            }
            Err(e) => {
                let (result, skip) = match e {
                    FetchError::Absent => ("absent", Skip::Absent(Instant::now())),
                    _ => ("failed", Skip::Failed(Instant::now())),
                };
                r.metrics.fetches.get_or_create(&labels(result)).inc();
                let mut skips = r.skip.lock().unwrap_or_else(|p| p.into_inner());
                skips.retain(|_, s| s.holds());
                skips.insert((kind.clone(), id.clone()), skip);
            }
        }
    }

    /// What the fetch that gave `stats` fetched, and in how long since it began.
    pub fn fetched(&self, stats: &GetStats) -> Fetched {
        Fetched {
            chunks: stats.chunks,
            raw_bytes: stats.raw_bytes,
            stored_bytes: stats.stored_bytes,
            elapsed: self.t0.elapsed(),
        }
    }
}

impl Drop for FetchGuard {
    fn drop(&mut self) {
        let mut f = self
            .remote
            .fetching
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        f.remove(&(self.kind.clone(), self.id.clone()));
    }
}

impl Remote {
    /// The store `cfg` names; staging under `home/uploads` (emptied: what a crash left).
    pub fn open(cfg: &S3Config, home: &Path, metrics: StoreMetrics) -> Result<Remote, String> {
        let backend = S3::open(cfg).map_err(|e| e.to_string())?;
        let staging = home.join("uploads");
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir_all(&staging)
            .map_err(|e| format!("creating {}: {e}", staging.display()))?;
        let describe = ember_store::Backend::describe(&backend);
        Ok(Remote {
            repo: Repo::new(Arc::new(backend)),
            describe,
            staging,
            states: Mutex::new(HashMap::new()),
            queued: Mutex::new(HashMap::new()),
            next: std::sync::atomic::AtomicU64::new(0),
            slots: tokio::sync::Semaphore::new(UPLOADS),
            metrics,
            skip: Mutex::new(HashMap::new()),
            fetching: Mutex::default(),
        })
    }

    /// For messages: the store's endpoint, bucket and prefix.
    pub fn describe(&self) -> &str {
        &self.describe
    }

    /// Where set `kind/id` stands, if this node uploaded it (or tried).
    pub fn state(&self, kind: &str, id: &str) -> Option<RemoteState> {
        let states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        states.get(&(kind.to_string(), id.to_string())).cloned()
    }

    /// Whether the store holds a usable manifest of set `kind/id`.
    pub async fn stored(&self, kind: &str, id: &str) -> Result<bool, String> {
        let set = SetRef::new(kind, id).map_err(|e| e.to_string())?;
        use ember_store::{BackendError, RepoError};
        match self.repo.manifest(&set).await {
            Ok(_) => Ok(true),
            // Missing, or unusable (uploaded again over it).
            Err(RepoError::Backend(BackendError::NotFound { .. }))
            | Err(RepoError::Manifest(_))
            | Err(RepoError::Invalid(_)) => Ok(false),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Fetches set `kind/id` into `dir` (made here; the caller removes it on error), whole,
    /// every chunk checked against its hash, within `deadline`, then runs `then` on it (the
    /// caller checks and adds it) before the fetch counts as ended ([`Remote::is_fetching`]).
    /// A set the store was found not to hold is not asked for again for a while, nor one
    /// whose fetch failed; one fetch of a set at a time.
    pub async fn fetch<T>(
        self: &Arc<Self>,
        kind: &str,
        id: &str,
        dir: &Path,
        deadline: Duration,
        then: impl AsyncFnOnce(Fetched) -> T,
    ) -> Result<T, FetchError> {
        let guard = self.begin_fetch(kind, id)?;
        let result = match tokio::time::timeout(deadline, self.get(kind, id, dir)).await {
            Ok(r) => r,
            Err(_) => Err(FetchError::TimedOut(deadline)),
        };
        guard.record(result.as_ref());
        let fetched = guard.fetched(&result?);
        Ok(then(fetched).await)
    }

    /// Begins a fetch of set `kind/id`: refused when the store was found not to hold it
    /// lately, its fetch failed lately, it was refused, or another fetch of it is under way
    /// ([`FetchError::Busy`]). The fetch lasts as long as the guard.
    pub fn begin_fetch(self: &Arc<Self>, kind: &str, id: &str) -> Result<FetchGuard, FetchError> {
        let key = (kind.to_string(), id.to_string());
        let skip = self
            .skip
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .copied();
        match skip.filter(|s| s.holds()) {
            Some(Skip::Absent(_) | Skip::Refused) => return Err(FetchError::Absent),
            Some(Skip::Failed(t)) => {
                return Err(FetchError::Store(format!(
                    "a fetch failed {} ms ago; not tried again for {} s",
                    t.elapsed().as_millis(),
                    FAILED_FOR.as_secs()
                )));
            }
            None => {}
        }
        let mut fetching = self.fetching.lock().unwrap_or_else(|p| p.into_inner());
        if !fetching.insert(key) {
            return Err(FetchError::Busy);
        }
        Ok(FetchGuard {
            remote: self.clone(),
            kind: kind.to_string(),
            id: id.to_string(),
            t0: Instant::now(),
        })
    }

    /// Set `kind/id`'s manifest ([`FetchError::Absent`] when the store has none).
    pub async fn manifest(&self, kind: &str, id: &str) -> Result<Manifest, FetchError> {
        use ember_store::{BackendError, RepoError};
        let set = SetRef::new(kind, id).map_err(|e| FetchError::Store(e.to_string()))?;
        match self.repo.manifest(&set).await {
            Ok(m) => Ok(m),
            Err(RepoError::Backend(BackendError::NotFound { .. })) => Err(FetchError::Absent),
            Err(e) => Err(FetchError::Store(e.to_string())),
        }
    }

    /// The files of `manifest` that `which` names, written into `dir`, every chunk checked.
    pub async fn get_files(
        &self,
        manifest: &Manifest,
        dir: &Path,
        which: impl Fn(&str) -> bool,
    ) -> Result<GetStats, FetchError> {
        let mut some = manifest.clone();
        some.files.retain(|f| which(&f.name));
        self.repo
            .get_files(&some, dir)
            .await
            .map_err(|e| FetchError::Store(e.to_string()))
    }

    /// Bytes `[offset, offset + len)` of a file of a set, every chunk covering them checked.
    pub async fn read_range(
        &self,
        f: &FileEntry,
        offset: u64,
        len: u64,
    ) -> Result<(Vec<u8>, GetStats), String> {
        self.repo
            .read_range(f, offset, len)
            .await
            .map_err(|e| e.to_string())
    }

    /// The ids of the sets of `kind` the store holds.
    pub async fn set_ids(&self, kind: &str) -> Result<Vec<String>, String> {
        self.repo.sets(kind).await.map_err(|e| e.to_string())
    }

    /// File `name` of set `kind/id`, whole, every chunk checked; refused when the manifest
    /// says it is larger than `max` bytes (a listing reads descriptions, not page files).
    pub async fn read_small(
        &self,
        kind: &str,
        id: &str,
        name: &str,
        max: u64,
    ) -> Result<Vec<u8>, FetchError> {
        let m = self.manifest(kind, id).await?;
        let Some(f) = m.files.iter().find(|f| f.name == name) else {
            return Err(FetchError::Store(format!(
                "set {kind}/{id} has no file {name}"
            )));
        };
        if f.size > max {
            return Err(FetchError::Store(format!(
                "{name} of set {kind}/{id} is {} bytes, more than the {max} it may be",
                f.size
            )));
        }
        let (bytes, _) = self
            .read_range(f, 0, f.size)
            .await
            .map_err(FetchError::Store)?;
        Ok(bytes)
    }

    /// Removes set `kind/id` from the store (its chunks go at a collection once no other
    /// set names them). An upload of it still queued here is dropped, and one under way
    /// removes what it stored when it ends; this node no longer lists it as stored.
    pub async fn drop_set(&self, kind: &str, id: &str) -> Result<(), String> {
        let key = (kind.to_string(), id.to_string());
        self.queued
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key);
        self.states
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key);
        let set = SetRef::new(kind, id).map_err(|e| e.to_string())?;
        self.repo
            .delete_set(&set)
            .await
            .map_err(|e| e.to_string())?;
        self.metrics
            .dropped
            .get_or_create(&KindLabels {
                kind: kind.to_string(),
            })
            .inc();
        tracing::info!(set = %set, store = %self.describe, "removed from the snapshot store");
        Ok(())
    }

    /// Set `kind/id`, fetched before, failed to restore here: this node does not fetch it
    /// again (it takes its own instead).
    pub fn refuse(&self, kind: &str, id: &str) {
        let mut skips = self.skip.lock().unwrap_or_else(|p| p.into_inner());
        skips.insert((kind.to_string(), id.to_string()), Skip::Refused);
    }

    /// Whether a fetch of set `kind/id` is under way.
    pub fn is_fetching(&self, kind: &str, id: &str) -> bool {
        let fetching = self.fetching.lock().unwrap_or_else(|p| p.into_inner());
        fetching.contains(&(kind.to_string(), id.to_string()))
    }

    /// Sets what this node knows of set `kind/id` back to `state` (none: nothing known).
    pub fn restore_state(&self, kind: &str, id: &str, state: Option<RemoteState>) {
        let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        let key = (kind.to_string(), id.to_string());
        match state {
            Some(s) => states.insert(key, s),
            None => states.remove(&key),
        };
    }

    async fn get(&self, kind: &str, id: &str, dir: &Path) -> Result<GetStats, FetchError> {
        let manifest = self.manifest(kind, id).await?;
        self.get_files(&manifest, dir, |_| true).await
    }

    /// Deletes the chunks no manifest names (older than the store's grace period, an hour),
    /// holding the store exclusively: an upload or a collection by another node meanwhile
    /// makes it give up until the next time (see docs/store.md).
    pub async fn collect(&self) {
        let labels = |result: &str| TakeLabels {
            kind: "chunk".to_string(),
            result: result.to_string(),
        };
        match self.repo.gc().await {
            Ok(stats) => {
                self.metrics.gcs.get_or_create(&labels("done")).inc();
                self.metrics.gc_deleted.inc_by(stats.deleted as u64);
                tracing::info!(
                    store = %self.describe,
                    manifests = stats.manifests,
                    chunks = stats.chunks,
                    deleted = stats.deleted,
                    kept_young = stats.kept_young,
                    "snapshot store collected"
                );
            }
            Err(ember_store::RepoError::Busy(why)) => {
                self.metrics.gcs.get_or_create(&labels("busy")).inc();
                tracing::debug!(store = %self.describe, "no collection this time: {why}");
            }
            Err(e) => {
                self.metrics.gcs.get_or_create(&labels("failed")).inc();
                tracing::warn!(store = %self.describe, "collecting the snapshot store failed: {e}");
            }
        }
    }

    /// Records that an upload of set `kind/id` is queued ([`Remote::upload`] says so too).
    pub fn mark_uploading(&self, kind: &str, id: &str) {
        self.set_state(kind, id, RemoteState::Uploading);
    }

    /// Records that the store holds set `kind/id` (found there at start).
    pub fn mark_stored(&self, kind: &str, id: &str) {
        self.set_state(kind, id, RemoteState::Stored);
    }

    fn set_state(&self, kind: &str, id: &str, state: RemoteState) {
        let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        states.insert((kind.to_string(), id.to_string()), state);
    }

    /// Uploads the regular files of `dir` as set `kind/id` (replacing a stored one),
    /// recording how it went. Call from a background task, as soon as the set is made: its
    /// files are linked into the staging directory at once, before waiting for a slot, and
    /// an upload of an older version of the set still waiting then is dropped.
    pub async fn upload(&self, kind: &str, id: &str, dir: &Path) {
        let set = (kind.to_string(), id.to_string());
        let mine = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.queued
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(set.clone(), mine);
        self.set_state(kind, id, RemoteState::Uploading);
        let stage = self.staging.join(format!("{kind}-{id}-{mine}"));
        let (from, to, k) = (dir.to_path_buf(), stage.clone(), kind.to_string());
        let linked = tokio::task::spawn_blocking(move || link_files(&k, &from, &to))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r);
        let result = match (linked, self.slots.acquire().await) {
            (Err(e), _) => Err(e),
            (Ok(_), Err(_)) => Err("the node is stopping".into()),
            (Ok(files), Ok(_slot)) => {
                let newest = self
                    .queued
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&set)
                    == Some(&mine);
                if !newest {
                    // A newer version of the set is queued: it will be uploaded instead.
                    let _ = tokio::fs::remove_dir_all(&stage).await;
                    return;
                }
                self.put(kind, id, &files).await
            }
        };
        let _ = tokio::fs::remove_dir_all(&stage).await;
        let labels = |result: &str| TakeLabels {
            kind: kind.to_string(),
            result: result.to_string(),
        };
        match result {
            Ok(stats) => {
                let kind_label = KindLabels {
                    kind: kind.to_string(),
                };
                self.metrics.uploads.get_or_create(&labels("stored")).inc();
                self.metrics
                    .uploaded_bytes
                    .get_or_create(&kind_label)
                    .inc_by(stats.written_stored);
                self.metrics
                    .reused_chunks
                    .get_or_create(&kind_label)
                    .inc_by(stats.reused as u64);
                tracing::info!(
                    set = %format!("{kind}/{id}"),
                    store = %self.describe,
                    chunks = stats.chunks,
                    written = stats.written,
                    reused = stats.reused,
                    mib = stats.raw_bytes >> 20,
                    stored_kib = stats.written_stored >> 10,
                    dedup = format!("{:.2}", stats.dedup_ratio()),
                    compression = format!("{:.2}", stats.compression_ratio()),
                    "uploaded to the snapshot store"
                );
                // A newer version queued meanwhile is not stored yet: the set stays
                // "uploading" until that one is. One dropped meanwhile goes again.
                let queued = self
                    .queued
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&set)
                    .copied();
                match queued {
                    Some(newest) if newest == mine => self.set_state(kind, id, RemoteState::Stored),
                    Some(_) => {}
                    None => {
                        if let Err(e) = self.drop_set(kind, id).await {
                            tracing::warn!(set = %format!("{kind}/{id}"), "a set removed while it was uploaded is still stored: {e}");
                        }
                    }
                }
            }
            Err(why) => {
                self.metrics.uploads.get_or_create(&labels("failed")).inc();
                tracing::warn!(
                    set = %format!("{kind}/{id}"),
                    store = %self.describe,
                    "an upload to the snapshot store failed (the node serves it from its own \
                     copy; it is uploaded again when it is made again): {why}"
                );
                self.set_state(kind, id, RemoteState::Failed(why));
            }
        }
    }

    async fn put(&self, kind: &str, id: &str, files: &[PutFile]) -> Result<PutStats, String> {
        let set = SetRef::new(kind, id).map_err(|e| e.to_string())?;
        self.repo
            .put_files(&set, files)
            .await
            .map(|(_, stats)| stats)
            .map_err(|e| e.to_string())
    }
}

/// Hard-links every regular file of `from` (the set `kind/...`) into a new directory `to`.
/// A page file's first 4 KiB (its header) is a chunk of its own, so that the chunks after
/// it hold whole pages. A function snapshot's pages go in chunks of one page: two
/// functions' layers over one image share most of their pages, but not at whole 16 KiB
/// runs (measured on two numpy functions: 89% of one's pages are the other's, 16% of its
/// 16 KiB chunks); an image's go in the store's 16 KiB chunks (ember-snap's own hashed unit),
/// a quarter of the requests.
fn link_files(set_kind: &str, from: &Path, to: &Path) -> Result<Vec<PutFile>, String> {
    std::fs::create_dir(to).map_err(|e| format!("creating {}: {e}", to.display()))?;
    let mut files = Vec::new();
    let entries =
        std::fs::read_dir(from).map_err(|e| format!("reading {}: {e}", from.display()))?;
    for entry in entries {
        let entry = entry.map_err(|e| format!("reading {}: {e}", from.display()))?;
        let kind = entry.file_type().map_err(|e| e.to_string())?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !kind.is_file() || !ember_store::manifest::valid_name(&name) {
            continue;
        }
        let dst = to.join(&name);
        std::fs::hard_link(entry.path(), &dst).map_err(|e| {
            format!(
                "linking {} into {} (the staging directory must be on the same filesystem as \
                 the node's home): {e}",
                entry.path().display(),
                to.display()
            )
        })?;
        let page = ember_snap::image::PAGE as u32;
        let file = match (name.as_str(), set_kind) {
            (ember_snap::image::format::PAGES_FILE, "snapshot") => PutFile::new(name, dst)
                .with_head(page)
                .with_chunk_size(page),
            (ember_snap::image::format::PAGES_FILE, _) => PutFile::new(name, dst).with_head(page),
            // One object (up to 4 MiB a chunk): what a lazy restore elsewhere waits for.
            (ember_snap::image::pack::PACK_FILE | crate::bundle::LAZY_START, _) => {
                PutFile::new(name, dst).with_chunk_size(4 << 20)
            }
            _ => PutFile::new(name, dst),
        };
        files.push(file);
    }
    files.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(files)
}

/// The longest one call for a lazy restore's chunks may take (each request is bounded by
/// the store's own timeout and retries): past it the page is not had, and the process that
/// waits for it is killed, never given anything unchecked.
const CHUNKS_DEADLINE: Duration = Duration::from_secs(10);
/// Chunks fetched at once for one call.
const CHUNKS_IN_FLIGHT: usize = 16;

/// A layer's own chunks (ember-snap's hashed unit), or a pooled image's, for a lazy
/// restore, read from its page file in the store until the whole file is here
/// ([`StoreChunks::now_local`]), then from it.
/// Called from page-server threads, outside the runtime: each call blocks on it.
pub struct StoreChunks {
    remote: Arc<Remote>,
    /// `snapshot` or `image`.
    kind: &'static str,
    set: String,
    file: FileEntry,
    /// Stored pages of the layer.
    pages: u64,
    /// The layer's id (its page file's header names it).
    image: [u8; 16],
    runtime: tokio::runtime::Handle,
    /// The whole page file, opened when it was added to the cache (held open: the cache may
    /// replace the path's file meanwhile).
    local: Mutex<Option<Arc<std::fs::File>>>,
}

impl StoreChunks {
    /// The chunks of `file` (the page file of set `<kind>/<set>`, `pages` stored pages).
    pub fn new(
        remote: Arc<Remote>,
        kind: &'static str,
        set: &str,
        file: FileEntry,
        pages: u64,
        image: [u8; 16],
    ) -> StoreChunks {
        StoreChunks {
            remote,
            kind,
            set: set.to_string(),
            file,
            pages,
            image,
            runtime: tokio::runtime::Handle::current(),
            local: Mutex::new(None),
        }
    }

    /// The whole page file is at `path` now: later chunks are read from it (checked by the
    /// caller as a fetched one is).
    /// Ignored unless the file's header names this layer (the cache may hold another
    /// snapshot under the name: one taken here meanwhile).
    pub fn now_local(&self, path: &Path) {
        use std::os::unix::fs::FileExt;
        let Ok(f) = std::fs::File::open(path) else {
            return;
        };
        let mut id = [0u8; 16];
        if f.read_exact_at(&mut id, 16).is_ok() && id == self.image {
            *self.local.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(f));
        }
    }

    fn range(&self, c: u64) -> (u64, u64) {
        use ember_snap::image::{PAGE, format::CHUNK_PAGES, pack::chunk_bytes};
        (PAGE * (1 + c * CHUNK_PAGES), chunk_bytes(self.pages, c))
    }

    fn read_local(&self, f: &std::fs::File, chunks: &[u64]) -> std::io::Result<Vec<Vec<u8>>> {
        use std::os::unix::fs::FileExt;
        chunks
            .iter()
            .map(|&c| {
                let (off, len) = self.range(c);
                let mut b = vec![0u8; len as usize];
                f.read_exact_at(&mut b, off)?;
                Ok(b)
            })
            .collect()
    }
}

impl ember_snap::lazy::ChunkFetch for StoreChunks {
    fn describe(&self) -> String {
        format!(
            "snapshot store {} (set {}/{})",
            self.remote.describe, self.kind, self.set
        )
    }

    fn fetch(&self, chunks: &[u64]) -> Result<Vec<Vec<u8>>, String> {
        use futures::StreamExt;
        let local = self.local.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(f) = local
            && let Ok(data) = self.read_local(&f, chunks)
        {
            return Ok(data);
        }
        let reads = futures::stream::iter(chunks.iter().map(|&c| {
            let (off, len) = self.range(c);
            self.remote.read_range(&self.file, off, len)
        }))
        .buffered(CHUNKS_IN_FLIGHT)
        .collect::<Vec<_>>();
        let got = self
            .runtime
            .block_on(async { tokio::time::timeout(CHUNKS_DEADLINE, reads).await })
            .map_err(|_| format!("no answer within {CHUNKS_DEADLINE:?}"))?;
        let mut out = Vec::with_capacity(got.len());
        let mut bytes = 0;
        for r in got {
            let (data, stats) = r?;
            bytes += stats.stored_bytes;
            out.push(data);
        }
        let kind = KindLabels {
            kind: self.kind.into(),
        };
        self.remote
            .metrics
            .fetched_bytes
            .get_or_create(&kind)
            .inc_by(bytes);
        Ok(out)
    }
}
