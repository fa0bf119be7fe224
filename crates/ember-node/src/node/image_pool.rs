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
use crate::peers::{PagePeers, PeerChunks};

/// The page server's view of the node's memory pool.
struct PoolLookup(Arc<ImageStore>);

impl ImageLookup for PoolLookup {
    fn image(&self, id: &[u8; 16]) -> Option<Arc<ember_snap::LoadedImage>> {
        self.0.loaded_by_meta(id)
    }
}

impl Node {
    /// Joins a cluster's image pool: `peers` says which other nodes hold an image in
    /// memory, and `token` is what their page servers want. Once only.
    pub fn join_page_pool(&self, peers: Arc<dyn PagePeers>, token: String) {
        let _ = self.page_peers.set((peers, token));
    }

    /// Serves the images in this node's memory pool to the cluster's other nodes on
    /// `listener`, to clients that present `token`, on a thread of its own.
    pub fn serve_pages(&self, listener: std::net::TcpListener, token: String) {
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

    /// The images in this node's memory pool (what its page server serves).
    pub fn images_in_memory(&self) -> Vec<String> {
        self.images.in_memory()
    }

    /// Whether another node holds image `id` in memory now.
    pub(in crate::node) fn pool_holds(&self, id: &str) -> bool {
        self.page_peers
            .get()
            .is_some_and(|(p, _)| !p.holding(id).is_empty())
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
        if self.images.is_pooled(&id) {
            return true;
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
