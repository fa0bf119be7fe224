//! The node's settings, with the embedded defaults `ember serve` starts from.

use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Everything the node keeps lives under this directory.
    pub home: PathBuf,
    /// Package environments; defaults to `<home>/envs`. Several nodes may share one.
    pub envs_dir: Option<PathBuf>,
    /// The base interpreter environments are made from.
    pub python: PathBuf,
    /// Idle instances are stopped after this long unused.
    pub keep_alive: Duration,
    /// Requests that may wait per function when all its instances are busy.
    pub queue_depth: usize,
    /// How long a request waits in the queue before it is throttled.
    pub queue_timeout: Duration,
    /// Longest a cold boot (interpreter, packages, handler import) may take.
    pub init_timeout: Duration,
    /// Size at which a function's log is rotated.
    pub log_max_bytes: u64,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            home: PathBuf::from(".ember"),
            envs_dir: None,
            python: PathBuf::from("/usr/bin/python3"),
            keep_alive: Duration::from_secs(600),
            queue_depth: 100,
            queue_timeout: Duration::from_secs(10),
            init_timeout: Duration::from_secs(60),
            log_max_bytes: 8 << 20,
        }
    }
}
