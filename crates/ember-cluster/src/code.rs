//! Function code in the S3 store: each zip as the set `code/<BLAKE3 of the zip>` (one file,
//! `code.zip`), content-addressed, so a deploy of unchanged code writes nothing and every
//! node fetches the same bytes, checked against the name.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ember_store::backend::s3::S3;
use ember_store::{PutFile, Repo, S3Config, SetRef};
use serde::{Deserialize, Serialize};

/// The set kind code is stored under.
const KIND: &str = "code";
const FILE: &str = "code.zip";

/// Lambda's cap for a deploy's zip (unzipped code is capped by the node, at 250 MiB).
pub const MAX_ZIP_BYTES: u64 = 250 << 20;

/// A zip in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodeRef {
    /// BLAKE3 of the zip, hex: its set's id.
    pub key: String,
    /// SHA-256 of the zip, base64 (Lambda's `CodeSha256`).
    pub sha256: String,
    pub size: u64,
}

impl CodeRef {
    pub fn of(zip: &[u8]) -> CodeRef {
        use sha2::Digest;
        CodeRef {
            key: blake3::hash(zip).to_hex().to_string(),
            sha256: base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                sha2::Sha256::digest(zip),
            ),
            size: zip.len() as u64,
        }
    }

    /// Whether it could name a stored zip (a definition read from etcd is checked).
    pub fn check(&self) -> Result<(), String> {
        if self.key.len() != 64 || !self.key.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("{:?} is not a BLAKE3 digest", self.key));
        }
        if self.size > MAX_ZIP_BYTES {
            return Err(format!(
                "its code is {} bytes, over {MAX_ZIP_BYTES}",
                self.size
            ));
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CodeError {
    #[error("the snapshot store: {0}")]
    Store(String),
    #[error("the snapshot store's copy of code {key} is wrong: {why}")]
    Corrupt { key: String, why: String },
    #[error("writing the code to a staging file {path}: {source}")]
    Staging {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the staging directory {path}: {why} (give another with --staging)")]
    StagingDir { path: PathBuf, why: String },
}

pub struct CodeStore {
    repo: Repo,
    staging: PathBuf,
}

static STAGED: AtomicU64 = AtomicU64::new(0);

impl CodeStore {
    /// The store `cfg` names; zips are staged in `staging` (a private directory) on their
    /// way up.
    pub fn open(cfg: &S3Config, staging: PathBuf) -> Result<CodeStore, CodeError> {
        let backend = S3::open(cfg).map_err(|e| CodeError::Store(e.to_string()))?;
        private_dir(&staging).map_err(|e| CodeError::StagingDir {
            path: staging.clone(),
            why: e.to_string(),
        })?;
        Ok(CodeStore {
            repo: Repo::new(Arc::new(backend)),
            staging,
        })
    }

    /// Stores `zip` (unless stored already) and names it.
    pub async fn put(&self, zip: &[u8]) -> Result<CodeRef, CodeError> {
        let code = CodeRef::of(zip);
        let set = SetRef::new(KIND, &code.key).map_err(|e| CodeError::Store(e.to_string()))?;
        if self.repo.manifest(&set).await.is_ok() {
            return Ok(code);
        }
        let n = STAGED.fetch_add(1, Ordering::Relaxed);
        let path = self.staging.join(format!(
            "{}-{n}-{}.zip",
            std::process::id(),
            &code.key[..16]
        ));
        let write = {
            let (path, zip) = (path.clone(), zip.to_vec());
            tokio::task::spawn_blocking(move || {
                use std::io::Write;
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&path)?;
                f.write_all(&zip)
            })
        };
        let written = write
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)))
            .map_err(|source| CodeError::Staging {
                path: path.clone(),
                source,
            });
        let put = match written {
            Ok(()) => self
                .repo
                .put_files(&set, &[PutFile::new(FILE, &path)])
                .await
                .map(|_| ())
                .map_err(|e| CodeError::Store(e.to_string())),
            Err(e) => Err(e),
        };
        let _ = std::fs::remove_file(&path);
        put.map(|()| code)
    }

    /// The zip `code` names, checked against its digest.
    pub async fn get(&self, code: &CodeRef) -> Result<Vec<u8>, CodeError> {
        code.check().map_err(|why| CodeError::Corrupt {
            key: code.key.clone(),
            why,
        })?;
        let set = SetRef::new(KIND, &code.key).map_err(|e| CodeError::Store(e.to_string()))?;
        let manifest = self
            .repo
            .manifest(&set)
            .await
            .map_err(|e| CodeError::Store(e.to_string()))?;
        let corrupt = |why: String| CodeError::Corrupt {
            key: code.key.clone(),
            why,
        };
        let file = match manifest.files.as_slice() {
            [f] if f.name == FILE && f.size == code.size => f,
            _ => {
                return Err(corrupt(
                    "its manifest does not hold the one zip named".into(),
                ));
            }
        };
        let (bytes, _) = self
            .repo
            .read_range(file, 0, file.size)
            .await
            .map_err(|e| CodeError::Store(e.to_string()))?;
        if blake3::hash(&bytes).to_hex().as_str() != code.key {
            return Err(corrupt("its bytes do not hash to its name".into()));
        }
        Ok(bytes)
    }
}

/// Makes `dir` (if missing) a directory of this user's alone (mode 700), and refuses one
/// that is a link or another user's: a zip staged there goes to the store under its digest,
/// and another user able to write there could swap it on its way.
fn private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let m = std::fs::symlink_metadata(dir)?;
    if !m.is_dir() || m.uid() != nix::unistd::geteuid().as_raw() {
        return Err(std::io::Error::other(
            "it is not a directory of this user's (or it is a link)",
        ));
    }
    if m.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refs_are_checked() {
        let c = CodeRef::of(b"zip");
        assert!(c.check().is_ok());
        assert_eq!(c.size, 3);
        let bad = CodeRef {
            key: "zz".into(),
            ..c.clone()
        };
        assert!(bad.check().is_err());
        let big = CodeRef {
            size: MAX_ZIP_BYTES + 1,
            ..c
        };
        assert!(big.check().is_err());
    }
}
