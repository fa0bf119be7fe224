//! A cluster's other nodes as a place a dependency image's pages come from (WarmSwap's
//! remote pool). Every node serves the images in its memory pool over ember-snap's page
//! protocol (`ember_snap::lazy::remote`), and publishes which; a node without a copy of an
//! image asks those nodes for its chunks, each checked against the metadata it read from
//! the snapshot store (a peer is trusted with nothing).
//!
//! ```text
//! fetch(chunks) -> the nodes holding the image in memory now (PagePeers, from etcd), the
//!     one that answered last first, none that failed within PEER_BACKOFF
//!     -> one connection per node, kept; a kept one that fails is made again once; an
//!        error there and the next node is asked
//! ```
//!
//! The page servers' token is not the nodes' API token but derived from it one way
//! ([`page_token`]): a page server named by a hostile record learns nothing that opens a
//! node's API.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ember_snap::image::Meta;
use ember_snap::lazy::{ChunkFetch, RemoteSource};

/// Who holds which image in memory, as the cluster publishes it.
pub trait PagePeers: Send + Sync {
    /// The page servers (`ip:port`) of the other nodes holding image `key` ([`pool_key`])
    /// in memory now.
    fn holding(&self, key: &str) -> Vec<String>;
}

/// How the cluster names an image held in memory: its id and its metadata's id
/// (`img-…/<32 hex digits>`), so that two builds of one environment's image (a rebuild with
/// learned imports on one node) are told apart.
pub fn pool_key(id: &str, meta_id: &[u8; 16]) -> String {
    format!("{id}/{}", hex::encode(meta_id))
}

/// The token the cluster's page servers want, from the nodes' API token: a one-way
/// derivation, so that it opens image pages and nothing else. Empty without an API token
/// (then, as the API, the page servers are open to whoever reaches them).
pub fn page_token(api_token: &str) -> String {
    if api_token.is_empty() {
        return String::new();
    }
    hex::encode(blake3::derive_key(
        "ember 2026-12 page server token",
        api_token.as_bytes(),
    ))
}

/// A node that failed is not asked again for this long.
const PEER_BACKOFF: Duration = Duration::from_secs(5);

/// An image's chunks from the page servers of the nodes holding it.
pub(crate) struct PeerChunks {
    peers: Arc<dyn PagePeers>,
    /// The image's [`pool_key`].
    key: String,
    token: String,
    meta: Meta,
    conns: Mutex<HashMap<String, Arc<RemoteSource>>>,
    /// The node that answered last.
    last: Mutex<Option<String>>,
    failed: Mutex<HashMap<String, Instant>>,
}

impl PeerChunks {
    /// The chunks of image `id` (metadata `meta`) from `peers`' page servers, which want
    /// `token` (a [`page_token`]).
    pub(crate) fn new(peers: Arc<dyn PagePeers>, id: &str, token: &str, meta: &Meta) -> PeerChunks {
        PeerChunks {
            peers,
            key: pool_key(id, &meta.id),
            token: token.to_string(),
            meta: meta.clone(),
            conns: Mutex::new(HashMap::new()),
            last: Mutex::new(None),
            failed: Mutex::new(HashMap::new()),
        }
    }

    /// The nodes to ask, in order: the one that answered last first; none that failed
    /// within [`PEER_BACKOFF`].
    fn order(&self) -> Vec<String> {
        let mut holders = self.peers.holding(&self.key);
        let last = lock(&self.last).clone();
        let failed = lock(&self.failed).clone();
        holders.retain(|a| failed.get(a).is_none_or(|t| t.elapsed() >= PEER_BACKOFF));
        holders.sort_by_key(|a| Some(a) != last.as_ref());
        holders
    }

    /// A connection to `addr`: the kept one (and that it was kept), else a new one.
    fn conn(&self, addr: &str) -> Result<(Arc<RemoteSource>, bool), String> {
        if let Some(c) = lock(&self.conns).get(addr) {
            return Ok((c.clone(), true));
        }
        let c = Arc::new(
            RemoteSource::connect(addr, &self.token, &self.meta).map_err(|e| e.to_string())?,
        );
        lock(&self.conns).insert(addr.to_string(), c.clone());
        Ok((c, false))
    }

    /// `chunks` from `addr`, on a new connection when the kept one fails (the server closes
    /// one idle for long).
    fn fetch_from(&self, addr: &str, chunks: &[u64]) -> Result<Vec<Vec<u8>>, String> {
        let (c, kept) = self.conn(addr)?;
        match ChunkFetch::fetch(c.as_ref(), chunks) {
            Err(_) if kept => {
                lock(&self.conns).remove(addr);
                let (c, _) = self.conn(addr)?;
                ChunkFetch::fetch(c.as_ref(), chunks)
            }
            r => r,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl ChunkFetch for PeerChunks {
    fn describe(&self) -> String {
        match lock(&self.last).as_deref() {
            Some(a) => format!("peers holding {} (last {a})", self.key),
            None => format!("peers holding {}", self.key),
        }
    }

    fn fetch(&self, chunks: &[u64]) -> Result<Vec<Vec<u8>>, String> {
        let order = self.order();
        if order.is_empty() {
            return Err("no other node that answers holds it in memory now".into());
        }
        let mut why = Vec::new();
        for addr in order {
            match self.fetch_from(&addr, chunks) {
                Ok(data) => {
                    *lock(&self.last) = Some(addr.clone());
                    lock(&self.failed).remove(&addr);
                    return Ok(data);
                }
                Err(e) => {
                    lock(&self.conns).remove(&addr);
                    lock(&self.failed).insert(addr.clone(), Instant::now());
                    why.push(format!("{addr}: {e}"));
                }
            }
        }
        Err(why.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_tokens() {
        assert_eq!(
            pool_key("img-abc", &[0xab; 16]),
            format!("img-abc/{}", "ab".repeat(16))
        );
        assert_eq!(page_token(""), "");
        let t = page_token("secret");
        assert_eq!(t.len(), 64);
        assert_ne!(t, page_token("secret2"));
        assert!(!t.contains("secret"));
    }
}
