//! The node agent: functions and their code, package environments, instance pools and the
//! start ladder (warm, then cold boot), keep-alive, logs and metrics.

pub mod bundle;
pub mod code;
pub mod config;
pub mod envs;
pub mod function;
pub mod hibernated;
pub mod images;
pub mod keepalive;
pub mod layers;
mod live;
pub mod logs;
pub mod metrics;
mod node;
pub mod peers;
mod pool;
mod ratelimit;
pub mod registry;
pub mod remote;
pub mod snapshots;
mod sys;
pub mod versions;

pub use config::{
    AutoImages, EventConfig, Eviction, HibernateConfig, ImageConfig, NodeConfig, Policy, PoolMode,
    SnapshotConfig, SnapshotMode,
};
pub use function::{FunctionConfig, FunctionRecord, InvalidFunction, Runtime, SnapshotPoint};
pub use node::{
    AliasChange, FunctionHoldings, FunctionStatus, Holdings, InstanceState, InstanceStatus,
    Invocation, InvokeOptions, InvokeOutcome, LayerMeta, Load, Node, NodeError, NodeErrorKind,
    SnapshotUsage, StartPath, StoredCode, StoredSnapshot, Timing, error_chain,
};
pub use peers::PagePeers;
pub use snapshots::{SnapshotError, SnapshotInfo, SnapshotStatus, SnapshotStore};
