//! Ember as a cluster: several nodes behind any number of gateways, sharing etcd (membership,
//! function definitions, what each node holds) and the S3 snapshot store (code, dependency
//! images, function snapshots).
//!
//! ```text
//! client -> gateway (gateway/)  PUT: code -> S3 store (code.rs), definition -> etcd (defs.rs)
//!                               invoke: placement (placement/) over the nodes' holdings
//!                               -> forwarded to a node's /v1 API (gateway/forward.rs)
//! node (member.rs): registers under a lease, publishes its holdings (record.rs) as they
//!                   change, follows the definitions: deploys and deletes what etcd says
//! etcd (etcd.rs):   <prefix>/nodes/<id> (leased), <prefix>/functions/<name>
//! ```
//!
//! | file | its job |
//! |---|---|
//! | `etcd.rs` | the etcd client, the key layout, mirrors of key prefixes kept by watches |
//! | `record.rs` | what a node publishes: its address, deployments, holdings and load |
//! | `defs.rs` | function definitions in etcd |
//! | `code.rs` | function code in the S3 store |
//! | `member.rs` | a node's side: registration, publishing, following the definitions |
//! | `placement/` | where a start goes: one trait, one file per policy |
//! | `extender.rs` | a Kubernetes scheduler extender's `prioritize`, scored by the holdings |
//! | `gateway/` | the gateway's API: deploys, invocations forwarded, the cluster's state |

pub mod code;
pub mod defs;
pub mod etcd;
pub mod extender;
pub mod gateway;
pub mod member;
pub mod placement;
pub mod record;

use std::time::{SystemTime, UNIX_EPOCH};

pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
