//! Hibernated instances on local disk (the Knix swap tier): each an idle instance dumped
//! as a layer over the function snapshot or image it was restored from (only the pages it
//! changed since), or whole when it was cold-booted, under `<home>/hibernated/<instance>`,
//! within a disk budget.
//!
//! ```text
//! add     staged dump -> renamed into place -> over the budget? the oldest leave first
//! take    a request for the function: its newest hibernated instance, out of the set
//!         (its files opened, then removed: the restore reads what it holds open)
//! expire  past its window (the keep-alive policy's), unless kept ready
//! ```
//!
//! Eviction is oldest-hibernated first: a hibernated instance was last used when it was
//! hibernated, so this is least-recently-used. The set lives as long as the daemon: the
//! directory is emptied when the node opens (a hibernated instance's record is not kept on
//! disk; the dump itself is the engine's format, with its magic, version and checksums).

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

/// What a hibernated instance's memory is a layer over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Its function's snapshot `id` (itself a layer over `image`, or whole).
    Snapshot { id: String, image: Option<String> },
    /// Dependency image `id`.
    Image(String),
    /// Nothing: dumped whole (a cold-booted instance).
    Whole,
}

impl Origin {
    /// The image its instances run over (their interpreter and packages), if any.
    pub fn image(&self) -> Option<&str> {
        match self {
            Origin::Snapshot { image, .. } => image.as_deref(),
            Origin::Image(id) => Some(id),
            Origin::Whole => None,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Origin::Snapshot { id, .. } => format!("a layer over function snapshot {id}"),
            Origin::Image(id) => format!("a layer over image {id}"),
            Origin::Whole => "whole".to_string(),
        }
    }
}

/// One hibernated instance.
#[derive(Debug, Clone)]
pub struct Entry {
    pub instance: String,
    /// The function (or published version) it is an instance of.
    pub function: String,
    /// Which deploy of it (the node numbers each function version it installs): a
    /// hibernated instance of an earlier deploy never serves a later one.
    pub deploy: u64,
    pub origin: Origin,
    /// Bytes on disk.
    pub bytes: u64,
    /// Pages of its own the dump stored.
    pub pages: u64,
    pub dump_ms: f64,
    pub at: Instant,
    /// Seconds since the epoch, for listings.
    pub at_unix: u64,
    /// Kept until then, unless it is kept ready.
    pub until: Instant,
    pub dir: PathBuf,
}

/// Why an instance could not join the set.
#[derive(Debug, thiserror::Error)]
pub enum HibernatedError {
    #[error(
        "the dump takes {bytes} bytes, more than the whole hibernation budget of {budget}; \
         raise --hibernate-disk-mb"
    )]
    TooLarge { bytes: u64, budget: u64 },
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Default)]
struct Inner {
    /// Oldest first.
    entries: Vec<Entry>,
    bytes: u64,
}

/// The node's hibernated instances.
pub struct HibernatedSet {
    root: PathBuf,
    budget: u64,
    inner: Mutex<Inner>,
}

impl HibernatedSet {
    /// The set under `root`, emptied, with a disk budget of `budget` bytes.
    pub fn open(root: PathBuf, budget: u64) -> Result<HibernatedSet, HibernatedError> {
        let io = |what, path: &Path| {
            let path = path.to_path_buf();
            move |source| HibernatedError::Io { what, path, source }
        };
        if root.exists() {
            std::fs::remove_dir_all(&root).map_err(io("emptying", &root))?;
        }
        std::fs::create_dir_all(&root).map_err(io("creating", &root))?;
        Ok(HibernatedSet {
            root,
            budget,
            inner: Mutex::new(Inner::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn budget(&self) -> u64 {
        self.budget
    }

    /// Where instance `id` is dumped before it joins the set.
    pub fn staging(&self, id: &str) -> PathBuf {
        self.root.join(format!(".staging-{id}"))
    }

    /// Adds the dump in `staged` as `entry` (its `bytes` counted here, its `dir` set), then
    /// evicts the oldest until the set fits its budget, those kept ready last (of each
    /// function's, the `ready(function)` newest); gives back its bytes and those evicted
    /// (their files removed). Blocking.
    pub fn add(
        &self,
        staged: &Path,
        mut entry: Entry,
        ready: impl Fn(&str) -> usize,
    ) -> Result<(u64, Vec<Entry>), HibernatedError> {
        let bytes = dir_bytes(staged);
        if bytes > self.budget {
            let _ = std::fs::remove_dir_all(staged);
            return Err(HibernatedError::TooLarge {
                bytes,
                budget: self.budget,
            });
        }
        let dir = self.root.join(&entry.instance);
        std::fs::rename(staged, &dir).map_err(|source| HibernatedError::Io {
            what: "moving the dump into place at",
            path: dir.clone(),
            source,
        })?;
        entry.bytes = bytes;
        entry.dir = dir;
        let evicted = {
            let mut inner = self.lock();
            inner.bytes += bytes;
            inner.entries.push(entry);
            let mut out = Vec::new();
            while inner.bytes > self.budget && !inner.entries.is_empty() {
                let spared = kept_ready(&inner.entries, &ready);
                let i = (0..inner.entries.len()).find(|&i| !spared[i]).unwrap_or(0);
                let e = inner.entries.remove(i);
                inner.bytes -= e.bytes;
                out.push(e);
            }
            out
        };
        for e in &evicted {
            remove_files(e);
        }
        Ok((bytes, evicted))
    }

    /// Removes instance `id` from the set, with its files. Blocking.
    pub fn remove(&self, id: &str) -> Option<Entry> {
        let e = {
            let mut inner = self.lock();
            let i = inner.entries.iter().position(|e| e.instance == id)?;
            let e = inner.entries.remove(i);
            inner.bytes -= e.bytes;
            e
        };
        remove_files(&e);
        Some(e)
    }

    /// The newest hibernated instance of `function`'s deploy `deploy`, out of the set (its
    /// files stay until the caller removes them with [`HibernatedSet::discard`]).
    pub fn take(&self, function: &str, deploy: u64) -> Option<Entry> {
        let mut inner = self.lock();
        let i = inner
            .entries
            .iter()
            .rposition(|e| e.function == function && e.deploy == deploy)?;
        let e = inner.entries.remove(i);
        inner.bytes -= e.bytes;
        Some(e)
    }

    /// Removes the files of an entry taken out of the set. Blocking.
    pub fn discard(&self, e: &Entry) {
        remove_files(e);
    }

    /// Entries past their window, out of the set, their files removed; of each function's,
    /// the `ready(function)` newest stay whatever their age (instances kept ready).
    /// Blocking.
    pub fn expire(&self, now: Instant, ready: impl Fn(&str) -> usize) -> Vec<Entry> {
        self.remove_where(|entries| {
            let spared = kept_ready(entries, &ready);
            entries
                .iter()
                .zip(spared)
                .map(|(e, spared)| !spared && now >= e.until)
                .collect()
        })
    }

    /// Removes every hibernated instance of `function` whose deploy is not `keep`
    /// (all of them when `None`). Blocking.
    pub fn remove_function(&self, function: &str, keep: Option<u64>) -> Vec<Entry> {
        self.remove_where(|entries| {
            entries
                .iter()
                .map(|e| e.function == function && Some(e.deploy) != keep)
                .collect()
        })
    }

    /// Removes every entry. Blocking.
    pub fn clear(&self) {
        self.remove_where(|entries| vec![true; entries.len()]);
    }

    /// Takes the entries `pick` marks (given all of them, oldest first, under the set's
    /// lock) out of the set and removes their files. Blocking.
    fn remove_where(&self, pick: impl FnOnce(&[Entry]) -> Vec<bool>) -> Vec<Entry> {
        let out = {
            let mut inner = self.lock();
            let leaves = pick(&inner.entries);
            let all = std::mem::take(&mut inner.entries);
            let (mut gone, mut kept) = (Vec::new(), Vec::new());
            for (i, e) in all.into_iter().enumerate() {
                match leaves.get(i).copied().unwrap_or(false) {
                    true => gone.push(e),
                    false => kept.push(e),
                }
            }
            inner.bytes = kept.iter().map(|e| e.bytes).sum();
            inner.entries = kept;
            gone
        };
        for e in &out {
            remove_files(e);
        }
        out
    }

    /// Every hibernated instance, oldest first.
    pub fn list(&self) -> Vec<Entry> {
        self.lock().entries.clone()
    }

    /// How many hibernated instances `function`'s deploy `deploy` has.
    pub fn count(&self, function: &str, deploy: u64) -> usize {
        self.lock()
            .entries
            .iter()
            .filter(|e| e.function == function && e.deploy == deploy)
            .count()
    }

    /// Bytes on disk of `function`'s hibernated instances.
    pub fn function_bytes(&self, function: &str) -> u64 {
        self.lock()
            .entries
            .iter()
            .filter(|e| e.function == function)
            .map(|e| e.bytes)
            .sum()
    }

    /// Bytes on disk, all entries.
    pub fn bytes(&self) -> u64 {
        self.lock().bytes
    }
}

/// Which of `entries` (oldest first) are kept ready: of each function's, the
/// `ready(function)` newest.
fn kept_ready(entries: &[Entry], ready: &impl Fn(&str) -> usize) -> Vec<bool> {
    let mut seen: std::collections::HashMap<&str, usize> = Default::default();
    let mut out = vec![false; entries.len()];
    for (i, e) in entries.iter().enumerate().rev() {
        let n = seen.entry(e.function.as_str()).or_default();
        if *n < ready(&e.function) {
            *n += 1;
            out[i] = true;
        }
    }
    out
}

fn remove_files(e: &Entry) {
    if let Err(err) = std::fs::remove_dir_all(&e.dir)
        && err.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(instance = %e.instance, dir = %e.dir.display(), "a hibernated instance's files could not be removed: {err}");
    }
}

/// Bytes the regular files directly in `dir` take on disk (a dump is flat).
fn dir_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.blocks() * 512)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn entry(set: &HibernatedSet, id: &str, f: &str, bytes: usize, window: Duration) -> Entry {
        let staged = set.staging(id);
        std::fs::create_dir_all(&staged).unwrap();
        std::fs::write(staged.join("pages"), vec![1u8; bytes]).unwrap();
        Entry {
            instance: id.into(),
            function: f.into(),
            deploy: 1,
            origin: Origin::Whole,
            bytes: 0,
            pages: 0,
            dump_ms: 0.0,
            at: Instant::now(),
            at_unix: 0,
            until: Instant::now() + window,
            dir: PathBuf::new(),
        }
    }

    #[test]
    fn the_oldest_leave_first_when_the_budget_is_exceeded() {
        let t = tempfile::tempdir().unwrap();
        let set = HibernatedSet::open(t.path().join("h"), 3 * 4096 * 4).unwrap();
        let hour = Duration::from_secs(3600);
        for i in 0..3 {
            let e = entry(&set, &format!("a-{i}"), "a", 4096 * 4, hour);
            assert!(
                set.add(&set.staging(&e.instance), e, |_| 0)
                    .unwrap()
                    .1
                    .is_empty()
            );
        }
        assert_eq!(set.list().len(), 3);
        let e = entry(&set, "b-0", "b", 4096 * 4, hour);
        let (_, evicted) = set.add(&set.staging("b-0"), e, |_| 0).unwrap();
        assert_eq!(evicted.len(), 1);
        assert_eq!(evicted[0].instance, "a-0");
        assert!(!evicted[0].dir.exists(), "its files are removed");
        assert!(set.bytes() <= set.budget());
        // Newest first, of the right deploy only.
        assert_eq!(set.take("a", 1).unwrap().instance, "a-2");
        assert!(set.take("a", 2).is_none());
        // One larger than the whole budget is refused, its staging removed.
        let e = entry(&set, "c-0", "c", 4096 * 16, hour);
        assert!(matches!(
            set.add(&set.staging("c-0"), e, |_| 0),
            Err(HibernatedError::TooLarge { .. })
        ));
        assert!(!set.staging("c-0").exists());
    }

    #[test]
    fn eviction_takes_those_kept_ready_last() {
        let t = tempfile::tempdir().unwrap();
        let set = HibernatedSet::open(t.path().join("h"), 2 * 4096 * 4).unwrap();
        let hour = Duration::from_secs(3600);
        // The oldest is function a's one instance kept ready: b's older one goes instead.
        for (id, f) in [("a-0", "a"), ("b-0", "b"), ("b-1", "b")] {
            let e = entry(&set, id, f, 4096 * 4, hour);
            set.add(&set.staging(id), e, |f| usize::from(f == "a"))
                .unwrap();
        }
        let left: Vec<_> = set.list().into_iter().map(|e| e.instance).collect();
        assert_eq!(left, ["a-0", "b-1"]);
    }

    #[test]
    fn expiry_spares_those_kept_ready() {
        let t = tempfile::tempdir().unwrap();
        let set = HibernatedSet::open(t.path().join("h"), 1 << 30).unwrap();
        for i in 0..3 {
            let e = entry(&set, &format!("a-{i}"), "a", 4096, Duration::ZERO);
            set.add(&set.staging(&e.instance), e, |_| 0).unwrap();
        }
        let e = entry(&set, "b-0", "b", 4096, Duration::from_secs(3600));
        set.add(&set.staging("b-0"), e, |_| 0).unwrap();
        let gone = set.expire(Instant::now(), |f| if f == "a" { 1 } else { 0 });
        let names: Vec<_> = gone.iter().map(|e| e.instance.as_str()).collect();
        assert_eq!(names, ["a-0", "a-1"]);
        let left: Vec<_> = set.list().into_iter().map(|e| e.instance).collect();
        assert_eq!(left, ["a-2", "b-0"]);
        assert_eq!(set.remove_function("a", None).len(), 1);
        assert_eq!(set.count("b", 1), 1);
    }

    #[test]
    fn opening_empties_what_an_earlier_daemon_left() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("h");
        std::fs::create_dir_all(root.join("old")).unwrap();
        let _set = HibernatedSet::open(root.clone(), 1 << 20).unwrap();
        assert!(!root.join("old").exists());
    }
}
