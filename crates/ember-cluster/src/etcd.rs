//! The cluster's etcd: the client, the key layout, and mirrors of key prefixes.
//!
//! Keys (the prefix is `--cluster-prefix`, `/ember` by default, so that clusters can share
//! one etcd):
//!
//! | key | value | written by |
//! |---|---|---|
//! | `<prefix>/nodes/<node>` | [`crate::record::NodeRecord`] JSON, under the node's lease | the node |
//! | `<prefix>/functions/<name>` | [`crate::defs::FunctionDef`] JSON | a gateway |
//! | `<prefix>/events/<id>` | an Event invocation queued (`gateway/events.rs`) | a gateway |
//! | `<prefix>/event-claims/<id>` | the gateway running it, under that gateway's lease | a gateway |
//!
//! A [`Mirror`] holds one prefix in memory: listed, then followed by a watch from the next
//! revision; when etcd cannot be reached it keeps what it had (nodes go on serving, the
//! gateway goes on placing) and lists again once it can.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, EventType, GetOptions, WatchOptions};
use tokio::sync::watch;

/// Values larger than this are not Ember's (and are not read).
pub const MAX_VALUE_BYTES: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error(
        "cannot reach etcd at {endpoints}: {source} (is etcd running there? give its client URLs \
         with --cluster, comma-separated)"
    )]
    Connect {
        endpoints: String,
        #[source]
        source: etcd_client::Error,
    },
    #[error("etcd: {0}")]
    Call(#[from] etcd_client::Error),
    #[error("{0:?} is not a key prefix: it must start with '/' and hold no spaces")]
    BadPrefix(String),
}

/// The key layout under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// `prefix` like `/ember` (a trailing `/` is dropped).
    pub fn new(prefix: &str) -> Result<Keys, EtcdError> {
        let p = prefix.trim_end_matches('/');
        if !prefix.starts_with('/') || p.chars().any(char::is_whitespace) {
            return Err(EtcdError::BadPrefix(prefix.to_string()));
        }
        Ok(Keys {
            prefix: p.to_string(),
        })
    }

    pub fn nodes(&self) -> String {
        format!("{}/nodes/", self.prefix)
    }

    pub fn node(&self, id: &str) -> String {
        format!("{}{id}", self.nodes())
    }

    pub fn functions(&self) -> String {
        format!("{}/functions/", self.prefix)
    }

    pub fn function(&self, name: &str) -> String {
        format!("{}{name}", self.functions())
    }

    /// Event invocations queued by gateways.
    pub fn events(&self) -> String {
        format!("{}/events/", self.prefix)
    }

    pub fn event(&self, id: &str) -> String {
        format!("{}{id}", self.events())
    }

    /// Which gateway runs an event now (a key under that gateway's lease).
    pub fn claims(&self) -> String {
        format!("{}/event-claims/", self.prefix)
    }

    pub fn claim(&self, id: &str) -> String {
        format!("{}{id}", self.claims())
    }
}

/// Connects to etcd (`endpoints`: client URLs). The connection is made lazily and
/// re-made after a failure; every call has a deadline.
pub async fn connect(endpoints: &[String]) -> Result<Client, EtcdError> {
    let opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(5))
        // etcd refuses pings closer than 5 s apart (its --grpc-keepalive-min-time) by
        // closing the connection: 6 s, and 3 s for the answer.
        .with_keep_alive(Duration::from_secs(6), Duration::from_secs(3));
    Client::connect(endpoints, Some(opts))
        .await
        .map_err(|source| EtcdError::Connect {
            endpoints: endpoints.join(","),
            source,
        })
}

/// One key of a mirrored prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub value: Vec<u8>,
    /// The revision of its last change (unique, rising across the whole store).
    pub mod_revision: i64,
    /// Puts since it was created (1 for a new key).
    pub version: i64,
}

/// A prefix as last seen.
#[derive(Debug, Clone, Default)]
pub struct View {
    /// By key, the prefix cut off.
    pub entries: BTreeMap<String, Entry>,
    /// The store's revision this view is at.
    pub revision: i64,
    /// False until listed once, and while etcd cannot be reached (the entries are then as
    /// they were).
    pub live: bool,
}

/// A prefix kept in memory by a background task; [`Mirror::changed`] wakes on changes.
#[derive(Clone)]
pub struct Mirror {
    rx: watch::Receiver<Arc<View>>,
}

impl Mirror {
    /// Starts following `prefix`; the task ends when every [`Mirror`] of it is dropped.
    pub fn start(client: Client, prefix: String) -> Mirror {
        let (tx, rx) = watch::channel(Arc::new(View::default()));
        tokio::spawn(follow(client, prefix, tx));
        Mirror { rx }
    }

    /// The prefix now.
    pub fn view(&self) -> Arc<View> {
        self.rx.borrow().clone()
    }

    /// Waits for the next change; false once the mirror stopped.
    pub async fn changed(&mut self) -> bool {
        self.rx.changed().await.is_ok()
    }

    /// Waits until the mirror has listed its prefix once, up to `limit`.
    pub async fn wait_live(&mut self, limit: Duration) -> bool {
        let live = self.rx.wait_for(|v| v.live);
        matches!(tokio::time::timeout(limit, live).await, Ok(Ok(_)))
    }
}

async fn follow(mut client: Client, prefix: String, tx: watch::Sender<Arc<View>>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match follow_once(&mut client, &prefix, &tx).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!("following {prefix} in etcd: {e}; trying again");
                tx.send_modify(|v| Arc::make_mut(v).live = false);
                if tx.is_closed() {
                    return;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// Lists `prefix`, then applies its watch's events; returns Ok when nobody reads the
/// mirror any more, Err when etcd failed (the caller lists again).
async fn follow_once(
    client: &mut Client,
    prefix: &str,
    tx: &watch::Sender<Arc<View>>,
) -> Result<(), etcd_client::Error> {
    let listed = client
        .get(prefix, Some(GetOptions::new().with_prefix()))
        .await?;
    let revision = listed.header().map_or(0, |h| h.revision());
    let mut entries = BTreeMap::new();
    for kv in listed.kvs() {
        if let Some((key, entry)) = entry_of(prefix, kv) {
            entries.insert(key, entry);
        }
    }
    tx.send_replace(Arc::new(View {
        entries,
        revision,
        live: true,
    }));
    let mut stream = client
        .watch(
            prefix,
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(revision + 1)
                    .with_progress_notify(),
            ),
        )
        .await?;
    loop {
        if tx.is_closed() {
            return Ok(());
        }
        let msg = tokio::select! {
            m = stream.message() => m?,
            () = tx.closed() => return Ok(()),
        };
        let Some(resp) = msg else {
            return Err(etcd_client::Error::WatchError("the watch ended".into()));
        };
        if resp.canceled() {
            return Err(etcd_client::Error::WatchError(format!(
                "the watch was cancelled: {} (compacted at {})",
                resp.cancel_reason(),
                resp.compact_revision()
            )));
        }
        let at = resp.header().map(|h| h.revision());
        tx.send_modify(|v| {
            let v = Arc::make_mut(v);
            for ev in resp.events() {
                let Some(kv) = ev.kv() else { continue };
                match ev.event_type() {
                    EventType::Put => {
                        if let Some((key, entry)) = entry_of(prefix, kv) {
                            v.entries.insert(key, entry);
                        }
                    }
                    EventType::Delete => {
                        if let Some(key) = kv.key_str().ok().and_then(|k| k.strip_prefix(prefix)) {
                            v.entries.remove(key);
                        }
                    }
                }
            }
            if let Some(at) = at {
                v.revision = v.revision.max(at);
            }
            v.live = true;
        });
    }
}

fn entry_of(prefix: &str, kv: &etcd_client::KeyValue) -> Option<(String, Entry)> {
    let key = kv.key_str().ok()?.strip_prefix(prefix)?;
    if key.is_empty() || kv.value().len() > MAX_VALUE_BYTES {
        tracing::warn!(
            "ignoring {prefix}{key} in etcd: empty name or over {MAX_VALUE_BYTES} bytes"
        );
        return None;
    }
    Some((
        key.to_string(),
        Entry {
            value: kv.value().to_vec(),
            mod_revision: kv.mod_revision(),
            version: kv.version(),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_under_their_prefix() {
        let k = Keys::new("/ember/").unwrap();
        assert_eq!(k.node("n1"), "/ember/nodes/n1");
        assert_eq!(k.function("f"), "/ember/functions/f");
        assert!(Keys::new("ember").is_err());
        assert!(Keys::new("/a b").is_err());
    }
}
