//! ember-store: where snapshots live beyond one node.
//!
//! ```text
//!  Repo (repo.rs)            content-addressed sets of files: a manifest per set, chunks by hash
//!    │  put_files / manifest / fetch_chunk / get_files / gc
//!    ▼
//!  dyn Backend (backend.rs)  put / get / head / list / delete of whole objects
//!    ├── Local (backend/local.rs)   a directory
//!    └── S3 (backend/s3.rs)         an S3-compatible server (the object_store crate)
//! ```
//!
//! Files (an image's `meta`, `pages`, working set; a layer's) are cut into fixed-size chunks
//! at the same offsets in every file, each stored once under the BLAKE3 hash of its bytes,
//! zstd-compressed ([`chunk`]); a [`manifest`] names the chunks of each file of a set.
//! Identical chunks across images, layers and functions are stored and fetched once. Every
//! chunk is checked against its name before a byte of it is returned.
//!
//! Written here: the chunk and manifest formats (magic, version, BLAKE3, size caps, as
//! every Ember format) and the repository logic; the wire protocol and request signing are
//! the object_store crate's.

pub mod backend;
pub mod chunk;
pub mod config;
pub mod manifest;
pub mod repo;

pub use backend::{Backend, BackendError, Key, ObjectMeta};
pub use chunk::{ChunkError, Hash};
pub use config::{ConfigError, S3Config};
pub use manifest::{FileEntry, Manifest, ManifestError};
pub use repo::{GcStats, GetStats, PutFile, PutStats, Repo, RepoError, SetRef};
