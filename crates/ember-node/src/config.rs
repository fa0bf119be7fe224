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
    /// Run every instance in a sandbox (namespaces, cgroup, seccomp, unprivileged user).
    /// Needs root; off means instances run as the daemon's user, unconfined.
    pub sandbox: bool,
    /// The user and group instances run as.
    pub sandbox_uid: u32,
    pub sandbox_gid: u32,
    /// Most processes and threads in one instance.
    pub pids_max: u64,
    /// Size of an instance's private /tmp (counted in its memory limit).
    pub tmp_bytes: u64,
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
            sandbox: true,
            sandbox_uid: 65534,
            sandbox_gid: 65534,
            pids_max: 256,
            tmp_bytes: 64 << 20,
        }
    }
}
