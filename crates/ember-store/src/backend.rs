//! One small trait over where objects are kept: whole objects by key, no partial writes.
//! [`local::Local`] keeps them in a directory, [`s3::S3`] on an S3-compatible server.

pub mod local;
pub mod s3;

use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;

/// Largest object read back (a chunk is at most [`crate::chunk::MAX_CHUNK`] plus its
/// header; a manifest at most [`crate::manifest::MAX_BODY`] plus its header).
pub const MAX_OBJECT: u64 = 32 << 20;

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("{store}: object {key} does not exist")]
    NotFound { store: String, key: String },
    #[error("{store}: {what} took longer than {secs} s (is the store up and reachable?)")]
    Timeout {
        store: String,
        what: String,
        secs: u64,
    },
    #[error("{store}: object {key} is {size} bytes, more than the {max} any Ember object has")]
    TooLarge {
        store: String,
        key: String,
        size: u64,
        max: u64,
    },
    #[error("{store}: {what} failed: {source}")]
    Io {
        store: String,
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// An object's name: ASCII letters, digits and `._-/`, no empty, `.` or `..` component,
/// at most 512 bytes. Checked once, so no backend ever sees a path that escapes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(String);

impl Key {
    pub fn new(key: impl Into<String>) -> Result<Key, String> {
        let key = key.into();
        if key.is_empty() || key.len() > 512 {
            return Err(format!("object key of {} bytes (1 to 512)", key.len()));
        }
        if let Some(c) = key
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/')))
        {
            return Err(format!("object key {key:?} holds {c:?}"));
        }
        if key
            .split('/')
            .any(|part| part.is_empty() || part == "." || part == "..")
        {
            return Err(format!(
                "object key {key:?} has an empty, . or .. component"
            ));
        }
        Ok(Key(key))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a listing says of one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    pub key: String,
    pub size: u64,
    /// When it was last written, by the store's clock.
    pub modified: SystemTime,
}

/// Where objects are kept. Every call is bounded in time by the backend.
#[async_trait]
pub trait Backend: Send + Sync {
    /// For messages: "directory /x", "s3 http://127.0.0.1:3900 bucket ember".
    fn describe(&self) -> String;
    /// Writes the whole object (replacing one of the same key).
    async fn put(&self, key: &Key, data: Bytes) -> Result<(), BackendError>;
    /// The whole object, at most [`MAX_OBJECT`] bytes.
    async fn get(&self, key: &Key) -> Result<Bytes, BackendError>;
    /// The object's size and time, `None` when there is none.
    async fn head(&self, key: &Key) -> Result<Option<ObjectMeta>, BackendError>;
    /// Every object whose key starts with `prefix` (a directory-like prefix ending in `/`).
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, BackendError>;
    /// Removes the object; one already gone is fine.
    async fn delete(&self, key: &Key) -> Result<(), BackendError>;
}

#[cfg(test)]
mod tests {
    use super::Key;

    #[test]
    fn keys_that_could_escape_or_confuse_are_refused() {
        for bad in [
            "", "/a", "a/", "a//b", "../a", "a/../b", "a/./b", ".", "a b", "a\0b", "é",
        ] {
            assert!(Key::new(bad).is_err(), "{bad:?}");
        }
        assert!(Key::new("x".repeat(513)).is_err());
        for good in ["chunks/ab/abcd", "manifests/image/img-1.2_3", "a"] {
            assert_eq!(Key::new(good).unwrap().as_str(), good);
        }
    }
}
