//! The cluster's image pool (WarmSwap's remote pool), on a node: it serves the images in
//! its memory to the other nodes, and uses an image it has no copy of from theirs.
//!
//! ```text
//! serve:  page server (ember-snap's protocol, the node's token) -> the image in this
//!         node's memory pool whose metadata id the client names, or refused
//! join:   an image to build for an environment, none here (pool mode copy or pool):
//!         image/<id> in the store? -> its files but the page file (metadata, working set,
//!         description) -> description checked as a fetched image's -> pooled image:
//!         pages from the nodes holding it in memory, else from the store's page file,
//!         every chunk checked against the store's metadata
//!         copy: the build goes on (the whole image fetched, or built), and replaces it
//!         pool: the build is left out while another node holds the image in memory
//! start:  no image of its own matches the function -> the pooled one, restored lazily
//! ```

use std::sync::Arc;

use ember_snap::lazy::{ChunkFetch, ImageLookup, PoolSource};

use super::{Deployed, Node, error_chain};
use crate::PoolMode;
use crate::envs::PackageEnv;
use crate::images::{ImageStore, image_id};
use crate::peers::{PagePeers, PeerChunks, page_token, pool_key};

/// The page server's view of the node's memory pool.
struct PoolLookup(Arc<ImageStore>);

impl ImageLookup for PoolLookup {
    fn image(&self, id: &[u8; 16]) -> Option<Arc<ember_snap::LoadedImage>> {
        self.0.loaded_by_meta(id)
    }
}

impl Node {
    /// Joins a cluster's image pool: `peers` says which other nodes hold an image in
    /// memory; their page servers want the token derived from `api_token`, the nodes' API
    /// token ([`page_token`]). Once only.
    pub fn join_page_pool(&self, peers: Arc<dyn PagePeers>, api_token: &str) {
        let _ = self.page_peers.set((peers, page_token(api_token)));
    }

    /// Serves the images in this node's memory pool to the cluster's other nodes on
    /// `listener`, to clients that present the token derived from `api_token`, on a thread
    /// of its own.
    pub fn serve_pages(&self, listener: std::net::TcpListener, api_token: &str) {
        let token = page_token(api_token);
        self.serving_pages
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let lookup = Arc::new(PoolLookup(self.images.clone()));
        let counter = self.metrics.page_server_chunks.clone();
        let served = Arc::new(move |n: u64| {
            counter.inc_by(n);
        });
        let spawned = std::thread::Builder::new()
            .name("ember-page-pool".into())
            .spawn(move || {
                if let Err(e) =
                    ember_snap::lazy::remote::serve_lookup(listener, token, lookup, served)
                {
                    tracing::error!("the image page server stopped: {e}");
                }
            });
        if let Err(e) = spawned {
            tracing::error!("the image page server could not start: {e}");
        }
    }

    /// The images this node's page server serves (those in its memory pool), by
    /// [`pool_key`]; none without a page server.
    pub fn images_in_memory(&self) -> Vec<String> {
        if !self.serves_pages() {
            return Vec::new();
        }
        self.images
            .in_memory()
            .iter()
            .map(|(id, meta)| pool_key(id, meta))
            .collect()
    }

    pub(in crate::node) fn serves_pages(&self) -> bool {
        self.serving_pages.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Whether another node holds pooled image `id` in memory now.
    pub(in crate::node) fn pool_holds(&self, id: &str) -> bool {
        let Some(meta) = self.images.pooled_meta_id(id) else {
            return false;
        };
        self.page_peers
            .get()
            .is_some_and(|(p, _)| !p.holding(&pool_key(id, &meta)).is_empty())
    }

    /// Waits (up to 10 s) for a cluster node to join the pool, so that the builds it starts
    /// with use it: the node starts before it joins.
    pub(in crate::node) async fn wait_for_pool(&self) {
        if self.cfg.images.pool == PoolMode::Off || self.remote.is_none() {
            return;
        }
        let t0 = std::time::Instant::now();
        while self.page_peers.get().is_none() && t0.elapsed() < std::time::Duration::from_secs(10) {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// The pooled image that serves `d` now, if any.
    pub(in crate::node) fn image_pooled(&self, d: &Deployed) -> Option<String> {
        if self.cfg.images.pool == PoolMode::Off || self.sandboxes.is_none() {
            return None;
        }
        self.images
            .find_pooled(&d.env.installed, d.record.config.memory_bytes())
            .ok()
    }

    /// Offers `env`'s image from the cluster's pool, when this node has no copy of it and
    /// the snapshot store holds it: its metadata from the store, its pages from the nodes
    /// holding it in memory or else the store. Whether it is offered (now or already).
    pub(in crate::node) async fn image_to_pool(&self, env: &PackageEnv) -> bool {
        let id = image_id(&env.key);
        let (Some(remote), Some((peers, token))) = (self.remote.clone(), self.page_peers.get())
        else {
            return false;
        };
        if self.cfg.images.pool == PoolMode::Off || self.images.has_image_for(&env.key) {
            return false;
        }
        match self.images.pooled_health(&id) {
            Some(true) => return true,
            // Its restores failed: this node gets its own copy instead.
            Some(false) => {
                let _ = self.images.remove(&id);
                return false;
            }
            None => {}
        }
        let staged = self.images.staging(&id);
        let offered = async {
            use ember_snap::image::format::PAGES_FILE;
            let manifest = remote
                .manifest("image", &id)
                .await
                .map_err(|e| e.to_string())?;
            let pages_file = manifest
                .files
                .iter()
                .find(|f| f.name == PAGES_FILE)
                .cloned()
                .ok_or("the set has no page file")?;
            tokio::fs::create_dir_all(&staged)
                .await
                .map_err(|e| e.to_string())?;
            remote
                .get_files(&manifest, &staged, |n| n != PAGES_FILE)
                .await
                .map_err(|e| e.to_string())?;
            let dir = staged.clone();
            let (mut info, meta) = tokio::task::spawn_blocking(move || {
                let info = crate::images::read_info(&dir).map_err(|e| error_chain(&e))?;
                let meta = ember_snap::LoadedImage::open(&dir)
                    .map_err(|e| error_chain(&e))?
                    .meta;
                Ok::<_, String>((info, meta))
            })
            .await
            .map_err(|e| e.to_string())??;
            self.make_image_ours(env, &id, &mut info)?;
            let places: Vec<Arc<dyn ChunkFetch>> = vec![
                Arc::new(PeerChunks::new(peers.clone(), &id, token, &meta)),
                Arc::new(crate::remote::StoreChunks::new(
                    remote.clone(),
                    "image",
                    &id,
                    pages_file,
                    meta.pages.count,
                    meta.id,
                )),
            ];
            let source = Arc::new(PoolSource::new(meta, places));
            let (images, dir) = (self.images.clone(), staged.clone());
            tokio::task::spawn_blocking(move || images.add_pooled(&dir, &info, source))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| error_chain(&e))
        }
        .await;
        match offered {
            Ok(added) => {
                if added {
                    tracing::info!(
                        image = %id,
                        peers_holding = peers.holding(&id).len(),
                        "image offered from the cluster's pool (its pages from other nodes' \
                         memory, or the store)"
                    );
                }
                true
            }
            Err(why) => {
                let _ = tokio::fs::remove_dir_all(&staged).await;
                tracing::info!(image = %id, "image not offered from the pool: {why}");
                false
            }
        }
    }
}
