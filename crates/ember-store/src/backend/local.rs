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
        if let Some(dir) = path.parent() {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(self.io(format!("creating the directory of {key}")))?;
        }
        let tmp = PathBuf::from(format!(
            "{}.{}{TMP_SUFFIX}",
            path.display(),
            std::process::id()
        ));
        tokio::fs::write(&tmp, &data)
            .await
            .map_err(self.io(format!("writing {key}")))?;
        if let Err(e) = tokio::fs::rename(&tmp, &path).await {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(self.io(format!("writing {key}"))(e));
        }
        Ok(())
    }

    async fn get(&self, key: &Key) -> Result<Bytes, BackendError> {
        let path = self.path(key);
        let meta = match tokio::fs::metadata(&path).await {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(BackendError::NotFound {
                    store: self.describe(),
                    key: key.to_string(),
                });
            }
            Err(e) => return Err(self.io(format!("reading {key}"))(e)),
        };
        if meta.len() > MAX_OBJECT {
            return Err(BackendError::TooLarge {
                store: self.describe(),
                key: key.to_string(),
                size: meta.len(),
                max: MAX_OBJECT,
            });
        }
        let data = tokio::fs::read(&path)
            .await
            .map_err(self.io(format!("reading {key}")))?;
        Ok(Bytes::from(data))
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
            walk(&root, &root, &mut out).map_err(|e| BackendError::Io {
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
        let kind = entry.file_type()?;
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
            let meta = entry.metadata()?;
            out.push(ObjectMeta {
                key: key.to_string(),
                size: meta.len(),
                modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            });
        }
    }
    Ok(())
}
