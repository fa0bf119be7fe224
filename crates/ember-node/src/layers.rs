//! Lambda layers: zips of files published once as numbered, immutable versions, which
//! functions name (at most five) to find the files merged at /opt, in order. The node keeps
//! each layer version's unpacked tree in the code store and, per function, the merged tree
//! of its layers (so deleting a layer version leaves the functions using it unchanged, as on
//! Lambda).

use serde::{Deserialize, Serialize};

use crate::function::{ACCOUNT, InvalidFunction, REGION, invalid, lambda_name};

/// At most this many layers per function, as Lambda.
pub const MAX_LAYERS: usize = 5;

/// One published version of a layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerVersion {
    pub name: String,
    pub version: u64,
    #[serde(default)]
    pub description: String,
    /// BLAKE3 of its unpacked tree in the code store.
    pub code_hash: String,
    /// SHA-256 of its zip, base64 (Lambda's `CodeSha256`).
    pub code_sha256: String,
    pub code_size: u64,
    #[serde(default)]
    pub compatible_runtimes: Vec<String>,
    #[serde(default)]
    pub compatible_architectures: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub license_info: Option<String>,
    /// Seconds since the Unix epoch.
    pub created_at: u64,
}

impl LayerVersion {
    pub fn arn(&self) -> String {
        layer_version_arn(&self.name, self.version)
    }
}

/// `arn:aws:lambda:<region>:<account>:layer:<name>`
pub fn layer_arn(name: &str) -> String {
    format!("arn:aws:lambda:{REGION}:{ACCOUNT}:layer:{name}")
}

pub fn layer_version_arn(name: &str, version: u64) -> String {
    format!("{}:{version}", layer_arn(name))
}

/// Lambda's rule for layer names: 1 to 140 of `[A-Za-z0-9_-]`.
pub fn validate_layer_name(name: &str) -> Result<(), InvalidFunction> {
    if lambda_name(name, 140) {
        Ok(())
    } else {
        Err(invalid(
            "LayerName",
            name,
            "must be 1 to 140 letters, digits, '-' or '_'",
        ))
    }
}

/// The layer version a function names: a layer version ARN of this node's region and
/// account, or `name:version`.
pub fn parse_layer_ref(r: &str) -> Result<(String, u64), InvalidFunction> {
    let tail = match r.strip_prefix("arn:aws:lambda:") {
        Some(rest) => {
            let prefix = format!("{REGION}:{ACCOUNT}:layer:");
            rest.strip_prefix(prefix.as_str()).ok_or_else(|| {
                invalid(
                    "Layers",
                    r,
                    format!(
                        "names a layer of another account or region: this node serves the \
                         layers published to it ({}), so publish the layer's zip here with \
                         publish-layer-version",
                        layer_arn("<name>")
                    ),
                )
            })?
        }
        None => r,
    };
    let bad = || {
        invalid(
            "Layers",
            r,
            "must be a layer version ARN (arn:aws:lambda:<region>:<account>:layer:<name>:<version>) \
             or <name>:<version>",
        )
    };
    let (name, version) = tail.rsplit_once(':').ok_or_else(bad)?;
    validate_layer_name(name).map_err(|_| bad())?;
    let version = version
        .parse::<u64>()
        .ok()
        .filter(|v| *v > 0)
        .ok_or_else(bad)?;
    Ok((name.to_string(), version))
}

/// Checks a function's list of layers: at most five, each named once, each a layer version
/// reference.
pub fn validate_layers(layers: &[String]) -> Result<(), InvalidFunction> {
    if layers.len() > MAX_LAYERS {
        return Err(invalid(
            "Layers",
            layers.len().to_string(),
            "a function may have at most 5 layers",
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for l in layers {
        let (name, _) = parse_layer_ref(l)?;
        if !seen.insert(name) {
            return Err(invalid(
                "Layers",
                l,
                "names a layer twice: a function takes one version of each",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_references_are_this_nodes_arns_or_name_and_version() {
        assert_eq!(parse_layer_ref("deps:3"), Ok(("deps".into(), 3)));
        assert_eq!(
            parse_layer_ref(&layer_version_arn("my_deps-2", 12)),
            Ok(("my_deps-2".into(), 12))
        );
        let foreign = parse_layer_ref("arn:aws:lambda:eu-west-1:123456789012:layer:x:1");
        assert!(foreign.unwrap_err().rule.contains("publish-layer-version"));
        for bad in ["deps", "deps:0", "deps:x", "a b:1", ":1", "deps:-1"] {
            assert!(parse_layer_ref(bad).is_err(), "{bad}");
        }
        let five: Vec<String> = (1..=5).map(|i| format!("l{i}:1")).collect();
        assert!(validate_layers(&five).is_ok());
        let six: Vec<String> = (1..=6).map(|i| format!("l{i}:1")).collect();
        assert!(validate_layers(&six).is_err());
        assert!(validate_layers(&["a:1".into(), "a:2".into()]).is_err());
        assert!(validate_layer_name(&"n".repeat(140)).is_ok());
        assert!(validate_layer_name(&"n".repeat(141)).is_err());
    }
}
