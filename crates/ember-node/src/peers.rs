//! A cluster's other nodes as a place a dependency image's pages come from (WarmSwap's
//! remote pool). Every node serves the images in its memory pool over ember-snap's page
//! protocol (`ember_snap::lazy::remote`), and publishes which; a node without a copy of an
//! image asks those nodes for its chunks, each checked against the metadata it read from
//! the snapshot store (a peer is trusted with nothing).
//!
//! ```text
//! fetch(chunks) -> the nodes holding the image in memory now (PagePeers, from etcd), the
//!     one that answered last first, those that failed within PEER_BACKOFF last
//!     -> one connection per node, kept; an error drops it and the next node is asked
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ember_snap::image::Meta;
use ember_snap::lazy::{ChunkFetch, RemoteSource};

/// Who holds which image in memory, as the cluster publishes it.
pub trait PagePeers: Send + Sync {
    /// The page servers (`ip:port`) of the other nodes holding image `id` in memory now.
    fn holding(&self, id: &str) -> Vec<String>;
}

/// A node that failed is asked after the others for this long.
const PEER_BACKOFF: Duration = Duration::from_secs(5);

/// An image's chunks from the page servers of the nodes holding it.
pub(crate) struct PeerChunks {
    peers: Arc<dyn PagePeers>,
    image: String,
    token: String,
    meta: Meta,
    conns: Mutex<HashMap<String, Arc<RemoteSource>>>,
    /// The node that answered last.
    last: Mutex<Option<String>>,
    failed: Mutex<HashMap<String, Instant>>,
}

impl PeerChunks {
    pub(crate) fn new(
        peers: Arc<dyn PagePeers>,
        image: &str,
        token: &str,
        meta: &Meta,
    ) -> PeerChunks {
        PeerChunks {
            peers,
            image: image.to_string(),
            token: token.to_string(),
            meta: meta.clone(),
            conns: Mutex::new(HashMap::new()),
            last: Mutex::new(None),
            failed: Mutex::new(HashMap::new()),
        }
    }

    /// The nodes to ask, in order.
    fn order(&self) -> Vec<String> {
        let mut holders = self.peers.holding(&self.image);
        let last = lock(&self.last).clone();
        let failed = lock(&self.failed).clone();
        let rank = |a: &String| {
            let down = failed.get(a).is_some_and(|t| t.elapsed() < PEER_BACKOFF);
            (down, Some(a) != last.as_ref())
        };
        holders.sort_by_key(rank);
        holders
    }

    fn conn(&self, addr: &str) -> Result<Arc<RemoteSource>, String> {
        if let Some(c) = lock(&self.conns).get(addr) {
            return Ok(c.clone());
        }
        let c = Arc::new(
            RemoteSource::connect(addr, &self.token, &self.meta).map_err(|e| e.to_string())?,
        );
        lock(&self.conns).insert(addr.to_string(), c.clone());
        Ok(c)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl ChunkFetch for PeerChunks {
    fn describe(&self) -> String {
        match lock(&self.last).as_deref() {
            Some(a) => format!("peers holding {} (last {a})", self.image),
            None => format!("peers holding {}", self.image),
        }
    }

    fn fetch(&self, chunks: &[u64]) -> Result<Vec<Vec<u8>>, String> {
        let order = self.order();
        if order.is_empty() {
            return Err("no other node holds it in memory now".into());
        }
        let mut why = Vec::new();
        for addr in order {
            let got = self
                .conn(&addr)
                .and_then(|c| ChunkFetch::fetch(c.as_ref(), chunks));
            match got {
                Ok(data) => {
                    *lock(&self.last) = Some(addr.clone());
                    lock(&self.failed).remove(&addr);
                    return Ok(data);
                }
                Err(e) => {
                    lock(&self.conns).remove(&addr);
                    lock(&self.failed).insert(addr.clone(), Instant::now());
                    why.push(e);
                }
            }
        }
        Err(why.join("; "))
    }
}
