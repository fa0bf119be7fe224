//! Objects as files under a directory the operator chose (`<root>/<key>`): the store of a
//! single node, and of tests. A write goes to a temporary file beside the object and is
//! renamed over it, so a reader sees the old object or the new one, never a part.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;

use super::{Backend, BackendError, Key, MAX_OBJECT, ObjectMeta};

/// Temporary files end with this (never a key: keys hold no `~`).
const TMP_SUFFIX: &str = "~tmp";

pub struct Local {
    root: PathBuf,
}

impl Local {
    /// Objects under `root` (made if missing).
    pub fn open(root: &Path) -> Result<Local, BackendError> {
        std::fs::create_dir_all(root).map_err(|e| BackendError::Io {
            store: format!("directory {}", root.display()),
            what: "creating the directory".into(),
            source: e.into(),
        })?;
        Ok(Local {
            root: root.to_path_buf(),
        })
    }

    fn path(&self, key: &Key) -> PathBuf {
        self.root.join(key.as_str())
    }

    fn io(&self, what: String) -> impl FnOnce(std::io::Error) -> BackendError + '_ {
        move |e| BackendError::Io {
            store: self.describe(),
            what,
            source: e.into(),
        }
    }
}

#[async_trait]
impl Backend for Local {
    fn describe(&self) -> String {
        format!("directory {}", self.root.display())
    }

    async fn put(&self, key: &Key, data: Bytes) -> Result<(), BackendError> {
        let path = self.path(key);
        let store = self.describe();
        let what = format!("writing {key}");
        tokio::task::spawn_blocking(move || write_atomic(&path, &data))
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r)
            .map_err(|e| BackendError::Io {
                store,
                what,
                source: e.into(),
            })
    }

    async fn get(&self, key: &Key) -> Result<Bytes, BackendError> {
        let path = self.path(key);
        let store = self.describe();
        let read = tokio::task::spawn_blocking(move || read_capped(&path))
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r);
        match read {
            Ok(Some(data)) => Ok(Bytes::from(data)),
            Ok(None) => Err(BackendError::TooLarge {
                store,
                key: key.to_string(),
                size: MAX_OBJECT + 1,
                max: MAX_OBJECT,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(BackendError::NotFound {
                store,
                key: key.to_string(),
            }),
            Err(e) => Err(BackendError::Io {
                store,
                what: format!("reading {key}"),
                source: e.into(),
            }),
        }
    }

    async fn head(&self, key: &Key) -> Result<Option<ObjectMeta>, BackendError> {
        match tokio::fs::metadata(self.path(key)).await {
            Ok(m) if m.is_file() => Ok(Some(ObjectMeta {
                key: key.to_string(),
                size: m.len(),
                modified: m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            })),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.io(format!("looking up {key}"))(e)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, BackendError> {
        let root = self.root.clone();
        let prefix = prefix.to_string();
        let store = self.describe();
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            // From the deepest directory the prefix names (keys are checked: no `..`).
            let dir = match prefix.rfind('/') {
                Some(i) => root.join(&prefix[..i]),
                None => root.clone(),
            };
            walk(&root, &dir, &mut out).map_err(|e| BackendError::Io {
                store: store.clone(),
                what: format!("listing {prefix}"),
                source: e.into(),
            })?;
            out.retain(|o| o.key.starts_with(&prefix));
            out.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(out)
        })
        .await
        .map_err(|e| BackendError::Io {
            store: self.describe(),
            what: "listing".into(),
            source: e.into(),
        })?
    }

    async fn delete(&self, key: &Key) -> Result<(), BackendError> {
        match tokio::fs::remove_file(self.path(key)).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.io(format!("deleting {key}"))(e)),
        }
    }
}

/// Every object file below `dir` (links are not followed; temporary files left out).
fn walk(root: &Path, dir: &Path, out: &mut Vec<ObjectMeta>) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let kind = match entry.file_type() {
            Ok(k) => k,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let path = entry.path();
        if kind.is_dir() {
            walk(root, &path, out)?;
        } else if kind.is_file() {
            let Ok(rel) = path.strip_prefix(root) else {
                continue;
            };
            let Some(key) = rel.to_str() else { continue };
            if key.ends_with(TMP_SUFFIX) || Key::new(key).is_err() {
                continue;
            }
            // Deleted since the directory was read (a released lock): not listed.
            let meta = match entry.metadata() {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            out.push(ObjectMeta {
                key: key.to_string(),
                size: meta.len(),
                modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            });
        }
    }
    Ok(())
}

/// Writes `data` to `path` whole: a temporary file of this process's own beside it, synced,
/// then renamed over it (a crash leaves the old object or the new one, never an empty one).
fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = PathBuf::from(format!(
        "{}.{}-{}{TMP_SUFFIX}",
        path.display(),
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// The regular file at `path` (not following a link at its last component), at most
/// [`MAX_OBJECT`] bytes: `None` when larger.
fn read_capped(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "not a regular file",
        ));
    }
    let mut data = Vec::new();
    f.take(MAX_OBJECT + 1).read_to_end(&mut data)?;
    Ok((data.len() as u64 <= MAX_OBJECT).then_some(data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lists_under_a_prefix_only() {
        let dir = tempfile::tempdir().unwrap();
        let l = Local::open(dir.path()).unwrap();
        for k in ["manifests/image/a", "manifests/snapshot/b", "chunks/00/c"] {
            l.put(&Key::new(k).unwrap(), Bytes::from_static(b"x"))
                .await
                .unwrap();
        }
        let keys = |v: Vec<ObjectMeta>| v.into_iter().map(|o| o.key).collect::<Vec<_>>();
        assert_eq!(
            keys(l.list("manifests/image/").await.unwrap()),
            ["manifests/image/a"]
        );
        assert_eq!(keys(l.list("manifests/").await.unwrap()).len(), 2);
        assert_eq!(keys(l.list("chunks/").await.unwrap()), ["chunks/00/c"]);
    }
}
