//! A content-addressed repository over a [`Backend`]: sets of files (an image, a layer)
//! stored as chunks named by their hash, plus one manifest per set.
//!
//! ```text
//! manifests/<kind>/<id>        the set's Manifest (manifest.rs)
//! chunks/<2 hex>/<64 hex>      one chunk (chunk.rs), shared by every set holding its bytes
//! locks/shared-<id>            an upload in progress (one per upload)
//! locks/exclusive-<id>         a garbage collection in progress
//! gc/generation                the time of the last collection that deleted anything
//! ```
//!
//! **Uploads** write every chunk the store lacks, then the manifest: a manifest never names
//! a chunk that was not there when it was written. A chunk already stored is reused without
//! being sent again.
//!
//! **Garbage collection** deletes the chunks no manifest names. It must never delete a
//! chunk an upload in progress has found stored and is about to name: an S3 store has no
//! conditional delete, so uploads and collections exclude each other with lock objects, as
//! restic's repositories do. An upload writes its shared lock, then lists the locks: an
//! exclusive one (younger than [`LOCK_STALE`]) makes it take its own back and wait. A
//! collection writes its exclusive lock, then lists the locks: any other makes it take its
//! own back and give up ([`RepoError::Busy`]). On a store that reads its own writes (S3,
//! Garage), of two that start at once at least one sees the other. A lock older than
//! [`LOCK_STALE`] is a crashed holder's and is ignored, so an upload must end within it.
//! A collection also spares chunks younger than its grace period, and bumps
//! `gc/generation`, which makes every node forget which chunks it believed stored.
//! A manifest that cannot be read stops the collection before anything is deleted.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};

use crate::backend::{Backend, BackendError, Key};
use crate::chunk::{self, CHUNKS, ChunkError, Hash};
use crate::manifest::{FileEntry, Manifest, ManifestError, valid_name};

/// Chunks of 16 KiB (4 pages, the unit ember-snap checks an image's pages in, so that a
/// lazy restore's faults map onto chunks). Larger chunks share less: a chunk with one
/// differing page is stored again (two numpy functions' layers: 16-71% of 16 KiB chunks
/// shared over two runs, 4-28% at 64 KiB, none at 256 KiB). A 100 MiB image is 6,400
/// requests; a file can ask for other sizes ([`PutFile::with_chunk_size`]).
pub const DEFAULT_CHUNK: u32 = 16 << 10;
/// Chunks in flight at once, per upload or download.
pub const DEFAULT_INFLIGHT: usize = 16;
/// Unreferenced chunks younger than this are kept (an upload that outlived its lock).
pub const DEFAULT_GRACE: Duration = Duration::from_secs(3600);
/// A lock older than this is a crashed holder's: ignored.
pub const LOCK_STALE: Duration = Duration::from_secs(600);
/// How long an upload waits for a collection to end.
const LOCK_WAIT: Duration = Duration::from_secs(30);
const MANIFESTS: &str = "manifests/";
const LOCKS: &str = "locks/";
const GENERATION: &str = "gc/generation";

#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    Chunk(#[from] ChunkError),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("{what} {path}: {source}")]
    File {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("garbage collection stopped before deleting anything: {0}")]
    GcStopped(String),
    #[error("the store is busy: {0}; try again later")]
    Busy(String),
}

/// Which set: `image/img-6e95d419ea78`, `snapshot/snap-numpy-0123`.
/// One file of a set to upload: its name in the set, where it is, the size of its first
/// chunk (its header: 4096 for an image's page file, so that chunks hold whole pages; 0 for
/// none), and its chunk size when not the repository's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutFile {
    pub name: String,
    pub path: PathBuf,
    pub head: u32,
    pub chunk_size: Option<u32>,
}

impl PutFile {
    pub fn new(name: impl Into<String>, path: impl Into<PathBuf>) -> PutFile {
        PutFile {
            name: name.into(),
            path: path.into(),
            head: 0,
            chunk_size: None,
        }
    }

    pub fn with_head(mut self, head: u32) -> PutFile {
        self.head = head;
        self
    }

    /// Chunks of `bytes` for this file (a multiple of 4096 up to 4 MiB).
    pub fn with_chunk_size(mut self, bytes: u32) -> PutFile {
        self.chunk_size = Some(bytes);
        self
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SetRef {
    pub kind: String,
    pub id: String,
}

impl SetRef {
    pub fn new(kind: &str, id: &str) -> Result<SetRef, RepoError> {
        if !valid_name(kind) || !valid_name(id) {
            return Err(RepoError::Invalid(format!(
                "{kind:?}/{id:?} is not a set name (letters, digits, ._-)"
            )));
        }
        Ok(SetRef {
            kind: kind.into(),
            id: id.into(),
        })
    }

    fn key(&self) -> Key {
        // Both parts are plain names: always a valid key.
        Key::new(format!("{MANIFESTS}{}/{}", self.kind, self.id)).unwrap_or_else(|_| unreachable!())
    }
}

impl std::fmt::Display for SetRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.kind, self.id)
    }
}

/// What an upload did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PutStats {
    pub files: usize,
    /// Chunks the files are cut into, and the distinct ones among them.
    pub chunks: usize,
    pub distinct: usize,
    /// Distinct chunks written, and those the store already held (and kept).
    pub written: usize,
    pub reused: usize,
    /// Bytes of the files; of their distinct chunks; of the chunks written, before and
    /// after compression.
    pub raw_bytes: u64,
    pub distinct_bytes: u64,
    pub written_raw: u64,
    pub written_stored: u64,
}

impl PutStats {
    /// Bytes of the files over bytes of their distinct chunks (within the set).
    pub fn dedup_ratio(&self) -> f64 {
        self.raw_bytes as f64 / (self.distinct_bytes.max(1)) as f64
    }

    /// Raw over stored bytes of the chunks written.
    pub fn compression_ratio(&self) -> f64 {
        self.written_raw as f64 / (self.written_stored.max(1)) as f64
    }
}

/// What a download did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GetStats {
    pub chunks: usize,
    pub raw_bytes: u64,
    /// Bytes read from the store (chunk objects as stored).
    pub stored_bytes: u64,
}

/// What a collection did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcStats {
    pub manifests: usize,
    pub chunks: usize,
    pub referenced: usize,
    pub deleted: usize,
    /// Unreferenced, but younger than the grace period.
    pub kept_young: usize,
}

pub struct Repo {
    backend: Arc<dyn Backend>,
    chunk_size: u32,
    inflight: usize,
    grace: Duration,
    lock_stale: Duration,
    /// Chunks this process knows the store holds, as of collection generation `.0`.
    known: Mutex<(String, HashSet<Hash>)>,
}

/// Which lock: an upload's or a collection's.
#[derive(Clone, Copy, PartialEq, Eq)]
enum LockKind {
    Shared,
    Exclusive,
}

impl LockKind {
    fn prefix(self) -> &'static str {
        match self {
            LockKind::Shared => "shared-",
            LockKind::Exclusive => "exclusive-",
        }
    }
}

/// A unique lock name: this process, the time, a counter, hashed.
fn lock_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let seed = format!(
        "{}-{:?}-{}",
        std::process::id(),
        SystemTime::now(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    blake3::hash(seed.as_bytes()).to_hex()[..16].to_string()
}

impl Repo {
    pub fn new(backend: Arc<dyn Backend>) -> Repo {
        Repo {
            backend,
            chunk_size: DEFAULT_CHUNK,
            inflight: DEFAULT_INFLIGHT,
            grace: DEFAULT_GRACE,
            lock_stale: LOCK_STALE,
            known: Mutex::new((String::new(), HashSet::new())),
        }
    }

    /// The age past which a lock is ignored (tests shorten it).
    pub fn with_lock_stale(mut self, stale: Duration) -> Repo {
        self.lock_stale = stale;
        self
    }

    /// Requests in flight per file of an upload or a fetch (at least 1).
    pub fn with_inflight(mut self, n: usize) -> Repo {
        self.inflight = n.max(1);
        self
    }

    /// The grace period of [`Repo::gc`]: unreferenced chunks younger than this are kept.
    pub fn with_grace(mut self, grace: Duration) -> Repo {
        self.grace = grace;
        self
    }

    pub fn with_chunk_size(mut self, bytes: u32) -> Result<Repo, RepoError> {
        self.chunk_size = check_chunk_size(bytes)?;
        Ok(self)
    }

    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// Uploads `files` (`(name in the set, path)`) as set `set`: the chunks the store
    /// lacks, then the manifest (replacing one of the same set).
    pub async fn put_files(
        &self,
        set: &SetRef,
        files: &[PutFile],
    ) -> Result<(Manifest, PutStats), RepoError> {
        let (lock, _) = self.lock_shared().await?;
        let result = tokio::select! {
            r = self.put_locked(set, files) => r,
            e = self.keep_lock(&lock) => Err(e),
        };
        self.release(&lock).await;
        result
    }

    /// Rewrites `lock` every third of the stale age, so that it stays live however long its
    /// holder works; returns only when a rewrite failed (then the holder must stop: its lock
    /// may look stale to others soon).
    async fn keep_lock(&self, lock: &Key) -> RepoError {
        loop {
            tokio::time::sleep(self.lock_stale / 3).await;
            if let Err(e) = self
                .backend
                .put(lock, Bytes::from(unix_now().to_string()))
                .await
            {
                return RepoError::Busy(format!("its lock {lock} could not be renewed: {e}"));
            }
        }
    }

    /// Deletes `lock`; a failure is logged (the lock goes stale by itself).
    async fn release(&self, lock: &Key) {
        if let Err(e) = self.backend.delete(lock).await {
            tracing::warn!(
                "releasing the store lock {lock} failed; it is ignored once stale ({} s): {e}",
                self.lock_stale.as_secs()
            );
        }
    }

    async fn put_locked(
        &self,
        set: &SetRef,
        files: &[PutFile],
    ) -> Result<(Manifest, PutStats), RepoError> {
        self.check_generation().await?;
        let mut stats = PutStats::default();
        let mut entries = Vec::new();
        let mut seen = HashSet::new();
        for f in files {
            let entry = self.put_file(f, &mut seen, &mut stats).await?;
            entries.push(entry);
        }
        stats.files = files.len();
        let manifest = Manifest {
            kind: set.kind.clone(),
            id: set.id.clone(),
            created: unix_now(),
            files: entries,
        };
        let object = manifest.encode()?;
        self.backend.put(&set.key(), Bytes::from(object)).await?;
        Ok((manifest, stats))
    }

    /// The live locks of `kind` but `except`: younger than the stale age by the store's
    /// clock (`now`, the store's time of a lock just written), never this machine's.
    async fn live_locks(
        &self,
        kind: LockKind,
        except: &Key,
        now: SystemTime,
    ) -> Result<Vec<String>, RepoError> {
        let stale_before = now
            .checked_sub(self.lock_stale)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let prefix = format!("{LOCKS}{}", kind.prefix());
        Ok(self
            .backend
            .list(LOCKS)
            .await?
            .into_iter()
            .filter(|l| l.key.starts_with(&prefix) && l.key != except.as_str())
            .filter(|l| l.modified > stale_before)
            .map(|l| l.key)
            .collect())
    }

    /// Writes lock `key`; the store's time of it (its clock, which every node's locks and
    /// chunks are dated by).
    async fn write_lock(&self, key: &Key) -> Result<SystemTime, RepoError> {
        self.backend
            .put(key, Bytes::from(unix_now().to_string()))
            .await?;
        match self.backend.head(key).await {
            Ok(Some(meta)) => Ok(meta.modified),
            Ok(None) => {
                self.release(key).await;
                Err(RepoError::Busy(format!(
                    "its lock {key} vanished as it was written"
                )))
            }
            Err(e) => {
                self.release(key).await;
                Err(e.into())
            }
        }
    }

    fn lock_key(kind: LockKind) -> Key {
        // A fixed prefix and hex digits: always a valid key.
        Key::new(format!("{LOCKS}{}{}", kind.prefix(), lock_id()))
            .unwrap_or_else(|_| unreachable!())
    }

    /// An upload's lock, once no collection holds the store (waiting up to 30 s), and the
    /// store's time.
    async fn lock_shared(&self) -> Result<(Key, SystemTime), RepoError> {
        let key = Self::lock_key(LockKind::Shared);
        let deadline = tokio::time::Instant::now() + LOCK_WAIT;
        loop {
            let now = self.write_lock(&key).await?;
            let gc = match self.live_locks(LockKind::Exclusive, &key, now).await {
                Ok(gc) => gc,
                Err(e) => {
                    self.release(&key).await;
                    return Err(e);
                }
            };
            if gc.is_empty() {
                return Ok((key, now));
            }
            self.release(&key).await;
            if tokio::time::Instant::now() > deadline {
                return Err(RepoError::Busy(format!(
                    "a garbage collection holds it ({})",
                    gc.join(", ")
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Forgets the chunks believed stored when a collection ran since.
    async fn check_generation(&self) -> Result<(), RepoError> {
        let generation = match self.backend.get(&generation_key()).await {
            Ok(g) => String::from_utf8_lossy(&g).into_owned(),
            Err(BackendError::NotFound { .. }) => String::new(),
            Err(e) => return Err(e.into()),
        };
        if let Ok(mut k) = self.known.lock()
            && k.0 != generation
        {
            *k = (generation, HashSet::new());
        }
        Ok(())
    }

    async fn put_file(
        &self,
        f: &PutFile,
        seen: &mut HashSet<Hash>,
        stats: &mut PutStats,
    ) -> Result<FileEntry, RepoError> {
        let path = f.path.as_path();
        let file_err = |what: &'static str| {
            let path = path.to_path_buf();
            move |source| RepoError::File { what, path, source }
        };
        if f.head > chunk::MAX_CHUNK {
            return Err(RepoError::Invalid(format!("a head of {} bytes", f.head)));
        }
        let chunk_size = check_chunk_size(f.chunk_size.unwrap_or(self.chunk_size))?;
        let file = std::fs::File::open(path).map_err(file_err("opening"))?;
        let size = file.metadata().map_err(file_err("reading"))?.len();
        let mut entry = FileEntry {
            name: f.name.clone(),
            size,
            chunk_size,
            head: f.head,
            chunks: Vec::new(),
        };
        let count = FileEntry::chunk_count(size, f.head, chunk_size);
        let file = Arc::new(file);
        let window = self.inflight as u64 * 4;
        let mut first = 0;
        while first < count {
            let n = window.min(count - first);
            // Read a window of chunks off the async threads, then send what is new.
            let ranges: Vec<(u64, u64)> =
                (first..first + n).map(|i| entry.chunk_range(i)).collect();
            let f = file.clone();
            let raws = tokio::task::spawn_blocking(move || read_ranges(&f, &ranges))
                .await
                .map_err(|e| RepoError::Invalid(format!("reading task: {e}")))?
                .map_err(file_err("reading"))?;
            let mut todo = Vec::new();
            for raw in raws {
                let hash = Hash::of(&raw);
                entry.chunks.push(hash);
                stats.chunks += 1;
                stats.raw_bytes += raw.len() as u64;
                if seen.insert(hash) {
                    stats.distinct += 1;
                    stats.distinct_bytes += raw.len() as u64;
                    todo.push((hash, raw));
                }
            }
            let done: Vec<Option<(u64, u64)>> = futures::stream::iter(todo)
                .map(|(hash, raw)| self.ensure_chunk(hash, raw))
                .buffer_unordered(self.inflight)
                .try_collect()
                .await?;
            for d in done {
                match d {
                    Some((raw, stored)) => {
                        stats.written += 1;
                        stats.written_raw += raw;
                        stats.written_stored += stored;
                    }
                    None => stats.reused += 1,
                }
            }
            first += n;
        }
        Ok(entry)
    }

    /// Makes sure the store holds chunk `hash`: `Some((raw, stored))` bytes when it was
    /// written, `None` when the store's copy was reused.
    async fn ensure_chunk(&self, hash: Hash, raw: Bytes) -> Result<Option<(u64, u64)>, RepoError> {
        if self.knows(hash) {
            return Ok(None);
        }
        if self.backend.head(&hash.key()).await?.is_some() {
            self.remember(hash);
            return Ok(None);
        }
        let raw_len = raw.len() as u64;
        let (_, object) = tokio::task::spawn_blocking(move || chunk::encode(&raw))
            .await
            .map_err(|e| RepoError::Invalid(format!("compressing task: {e}")))??;
        let stored = object.len() as u64;
        self.backend.put(&hash.key(), object).await?;
        self.remember(hash);
        Ok(Some((raw_len, stored)))
    }

    fn knows(&self, hash: Hash) -> bool {
        self.known.lock().is_ok_and(|k| k.1.contains(&hash))
    }

    /// Chunk `hash` is not in the store (lost, or deleted here as corrupt): this process
    /// forgets it as stored, and every node's uploads do too (a new collection generation,
    /// as a collection that deleted something writes), so that the next upload naming it
    /// stores it again.
    async fn lost(&self, hash: Hash) {
        if let Ok(mut k) = self.known.lock() {
            k.1.remove(&hash);
        }
        if let Err(e) = self.new_generation().await {
            tracing::warn!("recording that chunk {hash:?} is lost failed: {e}");
        }
    }

    /// Writes a new `gc/generation`: every node forgets which chunks it believed stored.
    async fn new_generation(&self) -> Result<(), BackendError> {
        let generation = format!("{}-{}", unix_now(), lock_id());
        self.backend
            .put(&generation_key(), Bytes::from(generation))
            .await
    }

    fn remember(&self, hash: Hash) {
        if let Ok(mut k) = self.known.lock() {
            k.1.insert(hash);
        }
    }

    /// The manifest of `set`.
    pub async fn manifest(&self, set: &SetRef) -> Result<Manifest, RepoError> {
        let object = self.backend.get(&set.key()).await?;
        let m = Manifest::decode(&set.to_string(), &object)?;
        if m.kind != set.kind || m.id != set.id {
            return Err(RepoError::Invalid(format!(
                "the manifest stored as {set} names {}/{}",
                m.kind, m.id
            )));
        }
        Ok(m)
    }

    /// The ids of the stored sets of `kind`.
    pub async fn sets(&self, kind: &str) -> Result<Vec<String>, RepoError> {
        let prefix = format!("{MANIFESTS}{kind}/");
        Ok(self
            .backend
            .list(&prefix)
            .await?
            .into_iter()
            .filter_map(|o| o.key.strip_prefix(&prefix).map(str::to_string))
            .filter(|id| valid_name(id))
            .collect())
    }

    /// Removes the manifest of `set` (its chunks go at the next collection, unless another
    /// set names them).
    pub async fn delete_set(&self, set: &SetRef) -> Result<(), RepoError> {
        Ok(self.backend.delete(&set.key()).await?)
    }

    /// Chunk `hash`'s bytes, checked against its name.
    pub async fn fetch_chunk(&self, hash: Hash) -> Result<Bytes, RepoError> {
        Ok(self.fetch_chunk_sized(hash).await?.0)
    }

    /// Chunk `hash`'s bytes, checked, and the size of its object in the store.
    ///
    /// A chunk found missing or wrong is forgotten as stored (the next upload that names it
    /// writes it again), and a wrong one is deleted: its name promises bytes it does not hold,
    /// so no manifest can be served by it.
    async fn fetch_chunk_sized(&self, hash: Hash) -> Result<(Bytes, u64), RepoError> {
        let object = match self.backend.get(&hash.key()).await {
            Ok(o) => o,
            Err(e @ BackendError::NotFound { .. }) => {
                self.lost(hash).await;
                return Err(e.into());
            }
            Err(e) => return Err(e.into()),
        };
        let stored = object.len() as u64;
        let decoded = tokio::task::spawn_blocking(move || chunk::decode(hash, &object))
            .await
            .map_err(|e| RepoError::Invalid(format!("decompressing task: {e}")))?;
        match decoded {
            Ok(raw) => Ok((raw, stored)),
            Err(e) => {
                if let Err(d) = self.backend.delete(&hash.key()).await {
                    tracing::warn!("deleting the corrupt chunk {hash:?} failed: {d}");
                }
                self.lost(hash).await;
                Err(e.into())
            }
        }
    }

    /// Writes every file of `manifest` into `dir` (each whole, then renamed into place, not
    /// synced to disk), every chunk checked.
    pub async fn get_files(&self, manifest: &Manifest, dir: &Path) -> Result<GetStats, RepoError> {
        let mut stats = GetStats::default();
        std::fs::create_dir_all(dir).map_err(|source| RepoError::File {
            what: "creating",
            path: dir.to_path_buf(),
            source,
        })?;
        // Every file at once, each with its own requests in flight.
        let files = manifest.files.iter().map(|f| async move {
            let path = dir.join(&f.name);
            let tmp = dir.join(format!(".{}.part", f.name));
            let result = self.get_file(f, &tmp).await.and_then(|stats| {
                std::fs::rename(&tmp, &path).map_err(|source| RepoError::File {
                    what: "writing",
                    path: path.clone(),
                    source,
                })?;
                Ok(stats)
            });
            if result.is_err() {
                let _ = std::fs::remove_file(&tmp);
            }
            result
        });
        for s in futures::future::try_join_all(files).await? {
            stats.chunks += s.chunks;
            stats.raw_bytes += s.raw_bytes;
            stats.stored_bytes += s.stored_bytes;
        }
        Ok(stats)
    }

    /// Bytes `[offset, offset + len)` of file `f` (cut at its end), the chunks covering them
    /// fetched concurrently, each checked: a piece of a set without the rest of it (a lazy
    /// restore's page).
    pub async fn read_range(
        &self,
        f: &FileEntry,
        offset: u64,
        len: u64,
    ) -> Result<(Vec<u8>, GetStats), RepoError> {
        let (first, n) = f.chunks_for(offset, len);
        let hashes = f.chunks.get(first..first + n).ok_or_else(|| {
            RepoError::Invalid(format!(
                "file {} has {} chunks, not {}",
                f.name,
                f.chunks.len(),
                first + n
            ))
        })?;
        let mut stats = GetStats::default();
        let mut out = Vec::with_capacity(len as usize);
        let mut fetched = futures::stream::iter(hashes.iter().copied())
            .map(|h| self.fetch_chunk_sized(h))
            .buffered(self.inflight);
        let mut i = first as u64;
        while let Some(got) = fetched.next().await {
            let (raw, stored) = got?;
            let (start, want) = f.chunk_range(i);
            if raw.len() as u64 != want {
                return Err(RepoError::Invalid(format!(
                    "chunk {i} of file {} holds {} bytes where {want} belong",
                    f.name,
                    raw.len()
                )));
            }
            let lo = offset.max(start) - start;
            let hi = (offset + len).min(start + want) - start;
            out.extend_from_slice(&raw[lo as usize..hi as usize]);
            stats.chunks += 1;
            stats.raw_bytes += want;
            stats.stored_bytes += stored;
            i += 1;
        }
        Ok((out, stats))
    }

    /// Writes file `f` into `tmp`, every chunk checked.
    async fn get_file(&self, f: &FileEntry, tmp: &Path) -> Result<GetStats, RepoError> {
        use std::io::Write;
        let mut stats = GetStats::default();
        let file_err = |source| RepoError::File {
            what: "writing",
            path: tmp.to_path_buf(),
            source,
        };
        let mut out = std::io::BufWriter::new(std::fs::File::create(tmp).map_err(file_err)?);
        let mut fetched = futures::stream::iter(f.chunks.iter().copied())
            .map(|h| self.fetch_chunk_sized(h))
            .buffered(self.inflight);
        let mut i = 0;
        while let Some(got) = fetched.next().await {
            let (raw, stored) = got?;
            stats.stored_bytes += stored;
            let (_, want) = f.chunk_range(i);
            if raw.len() as u64 != want {
                return Err(RepoError::Invalid(format!(
                    "chunk {i} of file {} holds {} bytes where {want} belong",
                    f.name,
                    raw.len()
                )));
            }
            out.write_all(&raw).map_err(file_err)?;
            i += 1;
            stats.chunks += 1;
            stats.raw_bytes += want;
        }
        // Not synced: whoever uses a fetched set checks its files (ember-snap every chunk's
        // hash, the node a description's checksum) and a torn one is fetched again; a sync
        // per file cost a start that waits for a fetch milliseconds.
        out.flush().map_err(file_err)?;
        Ok(stats)
    }

    /// Deletes the chunks no manifest names that are older than the grace period, holding
    /// the store exclusively (see the module doc); [`RepoError::Busy`] while an upload or
    /// another collection runs.
    pub async fn gc(&self) -> Result<GcStats, RepoError> {
        let key = Self::lock_key(LockKind::Exclusive);
        let now = self.write_lock(&key).await?;
        let others = async {
            let mut others = self.live_locks(LockKind::Shared, &key, now).await?;
            others.extend(self.live_locks(LockKind::Exclusive, &key, now).await?);
            Ok::<_, RepoError>(others)
        };
        let result = match others.await {
            Ok(o) if o.is_empty() => tokio::select! {
                r = self.gc_locked(now) => r,
                e = self.keep_lock(&key) => Err(e),
            },
            Ok(o) => Err(RepoError::Busy(format!("held by {}", o.join(", ")))),
            Err(e) => Err(e),
        };
        self.release(&key).await;
        result
    }

    /// The collection, under the exclusive lock; `listed_at` is the store's time of its lock.
    async fn gc_locked(&self, listed_at: SystemTime) -> Result<GcStats, RepoError> {
        let chunks = self.backend.list(CHUNKS).await?;
        let manifests = self.backend.list(MANIFESTS).await?;
        let mut referenced = HashSet::new();
        for m in &manifests {
            let key = Key::new(m.key.clone()).map_err(RepoError::GcStopped)?;
            let object = self
                .backend
                .get(&key)
                .await
                .map_err(|e| RepoError::GcStopped(format!("manifest {key}: {e}")))?;
            let manifest = Manifest::decode(&m.key, &object)
                .map_err(|e| RepoError::GcStopped(e.to_string()))?;
            for f in &manifest.files {
                referenced.extend(f.chunks.iter().copied());
            }
        }
        let old_before = listed_at
            .checked_sub(self.grace)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let mut stats = GcStats {
            manifests: manifests.len(),
            chunks: chunks.len(),
            ..GcStats::default()
        };
        let mut doomed = Vec::new();
        for c in chunks {
            // Objects under chunks/ that are not chunks of ours are left alone.
            let Some(hash) = c.key.rsplit('/').next().and_then(Hash::from_hex) else {
                continue;
            };
            if referenced.contains(&hash) {
                stats.referenced += 1;
            } else if c.modified > old_before {
                stats.kept_young += 1;
            } else {
                doomed.push(hash);
            }
        }
        if !doomed.is_empty() {
            // Every node forgets what it believed stored before the first deletion.
            self.new_generation().await?;
        }
        for hash in doomed {
            self.backend.delete(&hash.key()).await?;
            stats.deleted += 1;
        }
        if let Ok(mut k) = self.known.lock() {
            k.1.clear();
        }
        Ok(stats)
    }
}

/// `bytes` if it is a chunk size a manifest accepts: a multiple of 4096 up to the largest
/// chunk.
fn check_chunk_size(bytes: u32) -> Result<u32, RepoError> {
    if bytes == 0 || bytes > chunk::MAX_CHUNK || !bytes.is_multiple_of(crate::manifest::CHUNK_ALIGN)
    {
        return Err(RepoError::Invalid(format!(
            "chunks of {bytes} bytes: a multiple of 4096 up to {} is needed",
            chunk::MAX_CHUNK
        )));
    }
    Ok(bytes)
}

fn generation_key() -> Key {
    Key::new(GENERATION).unwrap_or_else(|_| unreachable!())
}

/// The bytes of `ranges` (`(offset, length)`) of `file`.
fn read_ranges(file: &std::fs::File, ranges: &[(u64, u64)]) -> std::io::Result<Vec<Bytes>> {
    use std::os::unix::fs::FileExt;
    let mut out = Vec::with_capacity(ranges.len());
    for &(at, len) in ranges {
        let mut buf = vec![0u8; len as usize];
        file.read_exact_at(&mut buf, at)?;
        out.push(Bytes::from(buf));
    }
    Ok(out)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
