//! What `ember serve --cluster` and `ember gateway` share: where etcd is, the key prefix,
//! and the S3 store that holds the code.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use ember_cluster::code::CodeStore;
use ember_cluster::etcd::Keys;

#[derive(Debug, Clone, clap::Args)]
pub struct EtcdArgs {
    /// Key prefix of this cluster in etcd (clusters may share one etcd)
    #[arg(long, env = "EMBER_CLUSTER_PREFIX", default_value = "/ember")]
    pub cluster_prefix: String,
}

/// etcd client URLs from `--cluster` (comma-separated).
pub fn endpoints(list: &str) -> anyhow::Result<Vec<String>> {
    let v: Vec<String> = list
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            if s.contains("://") {
                s.to_string()
            } else {
                format!("http://{s}")
            }
        })
        .collect();
    if v.is_empty() {
        bail!("--cluster names no etcd endpoint: give its client URLs, e.g. http://10.0.0.1:2379");
    }
    Ok(v)
}

/// The S3 store a cluster keeps its code and snapshots in (`EMBER_S3_*`): required.
pub fn store() -> anyhow::Result<ember_store::S3Config> {
    ember_store::S3Config::from_env()?.context(
        "a cluster keeps its code and snapshots in an S3 store: set EMBER_S3_ENDPOINT, \
         EMBER_S3_BUCKET, AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (docs/store.md)",
    )
}

/// etcd's client, the keys, and the code store in `s3` (staging under `staging`).
pub async fn open(
    list: &str,
    args: &EtcdArgs,
    s3: &ember_store::S3Config,
    staging: &Path,
) -> anyhow::Result<(etcd_client::Client, Keys, Arc<CodeStore>)> {
    let keys = Keys::new(&args.cluster_prefix)?;
    let code = CodeStore::open(s3, staging.to_path_buf())?;
    let client = ember_cluster::etcd::connect(&endpoints(list)?).await?;
    Ok((client, keys, Arc::new(code)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_urls() {
        assert_eq!(
            endpoints("10.0.0.1:2379, http://h:1").unwrap(),
            ["http://10.0.0.1:2379", "http://h:1"]
        );
        assert!(endpoints(" , ").is_err());
    }
}
