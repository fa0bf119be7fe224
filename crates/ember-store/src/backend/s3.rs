//! Objects on an S3-compatible server (Garage, MinIO, AWS), through the object_store
//! crate (request signing, retries, the XML of listings). Every call is bounded: a
//! connect timeout, a request timeout, few retries, and an overall deadline per call, so
//! that a store that is down or slow makes the caller fall back instead of waiting.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use futures::TryStreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as StorePath;
use object_store::prefix::PrefixStore;
use object_store::{ClientOptions, ObjectStore, ObjectStoreExt, RetryConfig};

use super::{Backend, BackendError, Key, MAX_OBJECT, ObjectMeta};
use crate::config::S3Config;

pub struct S3 {
    store: Arc<PrefixStore<AmazonS3>>,
    name: String,
    /// Longest one call may take, retries included.
    deadline: Duration,
    /// Longest a listing may take (many pages of up to 1,000 keys).
    list_deadline: Duration,
}

impl S3 {
    pub fn open(cfg: &S3Config) -> Result<S3, BackendError> {
        let name = match cfg.prefix.as_str() {
            "" => format!("s3 {} bucket {}", cfg.endpoint, cfg.bucket),
            p => format!("s3 {} bucket {} prefix {p}", cfg.endpoint, cfg.bucket),
        };
        let client = ClientOptions::new()
            .with_allow_http(true)
            .with_connect_timeout(cfg.connect_timeout)
            .with_timeout(cfg.request_timeout);
        let retry = RetryConfig {
            max_retries: 2,
            retry_timeout: cfg.request_timeout,
            ..RetryConfig::default()
        };
        let store = AmazonS3Builder::new()
            .with_endpoint(&cfg.endpoint)
            .with_region(&cfg.region)
            .with_bucket_name(&cfg.bucket)
            .with_access_key_id(&cfg.access_key_id)
            .with_secret_access_key(cfg.secret_access_key.expose())
            .with_allow_http(true)
            .with_virtual_hosted_style_request(false)
            .with_client_options(client)
            .with_retry(retry)
            .build()
            .map_err(|e| BackendError::Io {
                store: name.clone(),
                what: "configuring the client".into(),
                source: e.into(),
            })?;
        Ok(S3 {
            store: Arc::new(PrefixStore::new(store, cfg.prefix.as_str())),
            name,
            deadline: cfg.request_timeout * 3 + cfg.connect_timeout,
            list_deadline: (cfg.request_timeout * 3 + cfg.connect_timeout) * 20,
        })
    }

    /// Runs `op` within the deadline, mapping object_store's errors.
    async fn bounded<T>(
        &self,
        what: String,
        key: Option<&Key>,
        op: impl std::future::Future<Output = object_store::Result<T>>,
    ) -> Result<T, BackendError> {
        self.within(self.deadline, what, key, op).await
    }

    async fn within<T>(
        &self,
        deadline: Duration,
        what: String,
        key: Option<&Key>,
        op: impl std::future::Future<Output = object_store::Result<T>>,
    ) -> Result<T, BackendError> {
        match tokio::time::timeout(deadline, op).await {
            Err(_) => Err(BackendError::Timeout {
                store: self.name.clone(),
                what,
                secs: deadline.as_secs(),
            }),
            Ok(Err(object_store::Error::NotFound { .. })) => Err(BackendError::NotFound {
                store: self.name.clone(),
                key: key.map(Key::to_string).unwrap_or_default(),
            }),
            Ok(Err(e)) => Err(BackendError::Io {
                store: self.name.clone(),
                what,
                source: e.into(),
            }),
            Ok(Ok(v)) => Ok(v),
        }
    }
}

fn meta(m: object_store::ObjectMeta) -> ObjectMeta {
    let secs = m.last_modified.timestamp().max(0) as u64;
    ObjectMeta {
        key: m.location.to_string(),
        size: m.size,
        modified: SystemTime::UNIX_EPOCH + Duration::from_secs(secs),
    }
}

#[async_trait]
impl Backend for S3 {
    fn describe(&self) -> String {
        self.name.clone()
    }

    async fn put(&self, key: &Key, data: Bytes) -> Result<(), BackendError> {
        let path = StorePath::from(key.as_str());
        self.bounded(
            format!("writing {key}"),
            Some(key),
            self.store.put(&path, data.into()),
        )
        .await
        .map(drop)
    }

    async fn get(&self, key: &Key) -> Result<Bytes, BackendError> {
        let path = StorePath::from(key.as_str());
        let what = format!("reading {key}");
        let too_large = |size: u64| {
            object_store::Error::Generic {
            store: "S3",
            source: format!(
                "object {key} is {size} bytes or more, more than the {MAX_OBJECT} any Ember object has"
            )
            .into(),
        }
        };
        self.bounded(what, Some(key), async {
            let got = self.store.get(&path).await?;
            if got.meta.size > MAX_OBJECT {
                return Err(too_large(got.meta.size));
            }
            // The announced size is the server's word: the body is read up to the cap
            // whatever it says (a chunked body has no length at all).
            let mut body = Vec::with_capacity(got.meta.size as usize);
            let mut stream = got.into_stream();
            while let Some(part) = stream.try_next().await? {
                if (body.len() + part.len()) as u64 > MAX_OBJECT {
                    return Err(too_large((body.len() + part.len()) as u64));
                }
                body.extend_from_slice(&part);
            }
            Ok(Bytes::from(body))
        })
        .await
    }

    async fn head(&self, key: &Key) -> Result<Option<ObjectMeta>, BackendError> {
        let path = StorePath::from(key.as_str());
        match self
            .bounded(
                format!("looking up {key}"),
                Some(key),
                self.store.head(&path),
            )
            .await
        {
            Ok(m) => Ok(Some(meta(m))),
            Err(BackendError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, BackendError> {
        let dir = StorePath::from(prefix.trim_end_matches('/'));
        let what = format!("listing {prefix}");
        let listing = self.store.list(Some(&dir)).try_collect::<Vec<_>>();
        let listed = self.within(self.list_deadline, what, None, listing).await?;
        let mut out: Vec<ObjectMeta> = listed
            .into_iter()
            .map(meta)
            .filter(|m| m.key.starts_with(prefix))
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn delete(&self, key: &Key) -> Result<(), BackendError> {
        let path = StorePath::from(key.as_str());
        match self
            .bounded(
                format!("deleting {key}"),
                Some(key),
                self.store.delete(&path),
            )
            .await
        {
            Ok(()) | Err(BackendError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}
