//! Publishing, listing and deleting layer versions, and a function's layers merged for /opt
//! at its deploy (the rules are in `crate::layers`).
//!
//! ```text
//! publish: zip -> the code store (checked and unpacked as function code is) -> registry
//!          txn (the next number)
//! deploy with Layers: each named version -> its tree; merged in order into one tree in the
//!          code store (hard links), counted with the function's code against 250 MB
//!          -> the record's opt_hash -> bound read-only at /opt in every instance
//! ```

use super::{Node, NodeError, StoredCode, blocking, now_secs};
use crate::function::InvalidFunction;
use crate::layers::{LayerVersion, parse_layer_ref, validate_layer_name};

/// What PublishLayerVersion gives besides the zip.
#[derive(Debug, Clone, Default)]
pub struct LayerMeta {
    pub description: String,
    pub compatible_runtimes: Vec<String>,
    pub compatible_architectures: Vec<String>,
    pub license_info: Option<String>,
}

impl Node {
    /// Publishes `code` (from [`Node::store_code`]) as the next version of layer `name`.
    pub async fn publish_layer(
        &self,
        name: &str,
        code: StoredCode,
        meta: LayerMeta,
    ) -> Result<LayerVersion, NodeError> {
        validate_layer_name(name)?;
        let (reg, name) = (self.registry.clone(), name.to_string());
        let layer = blocking(move || {
            Ok(reg.publish_layer(&name, |version| LayerVersion {
                name: name.clone(),
                version,
                description: meta.description,
                code_hash: code.hash,
                code_sha256: code.sha256,
                code_size: code.size,
                compatible_runtimes: meta.compatible_runtimes,
                compatible_architectures: meta.compatible_architectures,
                license_info: meta.license_info,
                created_at: now_secs(),
            })?)
        })
        .await?;
        tracing::info!(layer = %layer.name, version = layer.version, "layer published");
        self.write_layers().push(layer.clone());
        Ok(layer)
    }

    /// Every layer version, by name and number (the registry's, kept in memory).
    pub fn layer_versions(&self) -> Vec<LayerVersion> {
        let mut all = self
            .layers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        all.sort_by(|a, b| (&a.name, a.version).cmp(&(&b.name, b.version)));
        all
    }

    /// The zip size of layer version `name:version`, if it exists.
    pub fn layer_code_size(&self, name: &str, version: u64) -> Option<u64> {
        self.layer(name, version).ok().map(|l| l.code_size)
    }

    pub fn layer(&self, name: &str, version: u64) -> Result<LayerVersion, NodeError> {
        self.layers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|l| l.name == name && l.version == version)
            .cloned()
            .ok_or_else(|| NodeError::LayerNotFound(format!("{name}:{version}")))
    }

    fn write_layers(&self) -> std::sync::RwLockWriteGuard<'_, Vec<LayerVersion>> {
        self.layers.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Loads the registry's layer versions (at the node's start).
    pub(in crate::node) async fn load_layers(&self) -> Result<Vec<LayerVersion>, NodeError> {
        let reg = self.registry.clone();
        let all = blocking(move || Ok(reg.load_layers()?)).await?;
        *self.write_layers() = all.clone();
        Ok(all)
    }

    /// Deletes a layer version. Functions that use it keep their copy (their merged tree),
    /// as on Lambda; its tree goes at the node's next start if nothing else has it.
    pub async fn delete_layer(&self, name: &str, version: u64) -> Result<(), NodeError> {
        let (reg, n) = (self.registry.clone(), name.to_string());
        if !blocking(move || Ok(reg.delete_layer(&n, version)?)).await? {
            return Err(NodeError::LayerNotFound(format!("{name}:{version}")));
        }
        self.write_layers()
            .retain(|l| !(l.name == name && l.version == version));
        Ok(())
    }

    /// The merged tree of `layers` for a function whose code is `code_hash`: none without
    /// layers. Refused when a layer version does not exist, or with the code past 250 MB.
    pub(in crate::node) async fn merge_layers(
        &self,
        layers: &[String],
        code_hash: &str,
    ) -> Result<Option<String>, NodeError> {
        if layers.is_empty() {
            return Ok(None);
        }
        if self.sandboxes.is_none() {
            return Err(NodeError::Invalid(InvalidFunction {
                field: "layers",
                value: layers.join(","),
                rule: "are mounted at /opt by the sandbox, and this node runs without it \
                       (--no-sandbox)"
                    .into(),
            }));
        }
        let all = self.layer_versions();
        let mut trees = Vec::new();
        for r in layers {
            let (name, version) = parse_layer_ref(r)?;
            let l = all
                .iter()
                .find(|l| l.name == name && l.version == version)
                .ok_or_else(|| {
                    NodeError::Invalid(InvalidFunction {
                        field: "Layers",
                        value: r.clone(),
                        rule: "names a layer version this node does not have \
                               (list-layer-versions lists those published here)"
                            .into(),
                    })
                })?;
            trees.push(l.code_hash.clone());
        }
        let (store, code) = (self.code.clone(), code_hash.to_string());
        Ok(Some(
            blocking(move || Ok(store.merge(&trees, &code)?)).await?,
        ))
    }
}
