//! The node's settings, with the embedded defaults `ember serve` starts from.

use std::path::PathBuf;
use std::time::Duration;

pub use ember_snap::lazy::Policy;

/// Which dependency images the node builds by itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AutoImages {
    /// Only those built with `ember image build`.
    Off,
    /// One for each distinct package set a deployed function uses, unless an image already
    /// covers it.
    OnDeploy,
    /// These package sets, built at start if missing (and none on deploy).
    Fixed(Vec<Vec<String>>),
}

/// Dependency images: how they are made, kept and restored.
#[derive(Debug, Clone)]
pub struct ImageConfig {
    pub auto: AutoImages,
    /// Bytes of image pages the in-memory pool may hold; the other images are served from
    /// disk. Images still in use by instances after leaving the pool count until they end.
    pub memory_bytes: u64,
    /// How restored pages reach an instance (`mapped` cannot be used with the sandbox).
    pub policy: Policy,
    /// Memory limit of the sandbox an image is built in.
    pub build_memory_mb: u32,
    /// Failed restores in a row after which an image stops being used until rebuilt.
    pub failures_unhealthy: u32,
    /// In a cluster: how an image this node has no copy of is used (WarmSwap's pool).
    pub pool: PoolMode,
}

/// How a cluster node uses a dependency image it has no copy of while other nodes hold it
/// (WarmSwap's remote pool): its pages from their memory, or from the snapshot store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PoolMode {
    /// Not used before this node has its own copy (fetched whole, or built).
    #[default]
    Off,
    /// Restored lazily from the pool at once, while a copy of its own is fetched.
    Copy,
    /// Restored from the pool, with no copy of its own while another node holds it in
    /// memory (WarmSwap's remote pool: memory spent on one node, not on every node).
    Pool,
}

impl std::str::FromStr for PoolMode {
    type Err = String;
    fn from_str(s: &str) -> Result<PoolMode, String> {
        match s {
            "off" => Ok(PoolMode::Off),
            "copy" => Ok(PoolMode::Copy),
            "pool" => Ok(PoolMode::Pool),
            _ => Err(format!(
                "unknown image pool mode {s:?}: use copy, pool or off"
            )),
        }
    }
}

impl PoolMode {
    pub fn as_str(self) -> &'static str {
        match self {
            PoolMode::Off => "off",
            PoolMode::Copy => "copy",
            PoolMode::Pool => "pool",
        }
    }
}

impl Default for ImageConfig {
    fn default() -> Self {
        ImageConfig {
            auto: AutoImages::OnDeploy,
            memory_bytes: 1 << 30,
            policy: Policy::Eager,
            build_memory_mb: 2048,
            failures_unhealthy: 3,
            pool: PoolMode::Off,
        }
    }
}

/// Whether the node takes and uses function snapshots, and keeps them beyond itself
/// (vHive's modes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SnapshotMode {
    /// None taken, none used (those on disk are kept, listed and removable).
    Off,
    /// Taken and used on this node, in its own cache.
    #[default]
    Local,
    /// As `Local`, and every dependency image and function snapshot is also uploaded to the
    /// snapshot store ([`NodeConfig::store`]) in the background.
    Remote,
}

impl SnapshotMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SnapshotMode::Off => "off",
            SnapshotMode::Local => "local",
            SnapshotMode::Remote => "remote",
        }
    }
}

impl std::str::FromStr for SnapshotMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "off" => Ok(SnapshotMode::Off),
            "local" => Ok(SnapshotMode::Local),
            "remote" => Ok(SnapshotMode::Remote),
            other => Err(format!(
                "snapshots {other:?} is not a mode: write \"off\", \"local\" or \"remote\""
            )),
        }
    }
}

/// Which snapshots leave the cache first when it is over its disk budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Eviction {
    /// Least recently used (vHive's).
    #[default]
    Lru,
    /// Greedy-Dual-Size-Frequency: small, often used snapshots of costly inits stay.
    Gdsf,
}

impl Eviction {
    pub fn as_str(self) -> &'static str {
        match self {
            Eviction::Lru => "lru",
            Eviction::Gdsf => "gdsf",
        }
    }
}

impl std::str::FromStr for Eviction {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "lru" => Ok(Eviction::Lru),
            "gdsf" => Ok(Eviction::Gdsf),
            other => Err(format!(
                "snapshot_eviction {other:?} is not a policy: write \"lru\" or \"gdsf\""
            )),
        }
    }
}

/// Function snapshots: whether they are taken, and the cache that keeps them.
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotConfig {
    pub mode: SnapshotMode,
    /// Bytes of snapshot files the cache keeps on disk; past it, snapshots are evicted.
    pub disk_bytes: u64,
    /// Bytes of loaded snapshot layers kept in memory (least recently used leave first).
    pub memory_bytes: u64,
    pub eviction: Eviction,
    /// Failed restores in a row after which a snapshot is removed (a new one is taken).
    pub failures_unhealthy: u32,
    /// `snapshots = "remote"`: a start missing a function snapshot whose working set was
    /// recorded restores it lazily from the store (its working set first, the rest on fault
    /// and in the background); false: it is fetched whole first.
    pub lazy_remote: bool,
}

impl Default for SnapshotConfig {
    fn default() -> Self {
        SnapshotConfig {
            mode: SnapshotMode::Local,
            disk_bytes: 4096 << 20,
            memory_bytes: 512 << 20,
            eviction: Eviction::Lru,
            failures_unhealthy: 3,
            lazy_remote: true,
        }
    }
}

#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Everything the node keeps lives under this directory.
    pub home: PathBuf,
    /// Package environments; defaults to `<home>/envs`. Several nodes may share one.
    pub envs_dir: Option<PathBuf>,
    /// The base interpreter environments are made from.
    pub python: PathBuf,
    /// Node.js, for `node` functions.
    pub node_js: PathBuf,
    /// Idle instances are stopped after this long unused (the fixed policy's window, and the
    /// histogram policy's fallback).
    pub keep_alive: Duration,
    /// How the keep-alive and pre-warm windows are decided (crate::keepalive).
    pub keep_alive_policy: crate::keepalive::PolicyKind,
    /// The histogram policy's bin width (a minute, as the paper; less to replay a trace
    /// compressed in time).
    pub keep_alive_bin: Duration,
    /// Idle instances whose keep-alive ran out are hibernated (docs/node.md).
    pub hibernate: HibernateConfig,
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
    pub images: ImageConfig,
    pub events: EventConfig,
    pub snapshots: SnapshotConfig,
    /// The snapshot store, for `snapshots = "remote"` (from the environment: see
    /// `ember_store::S3Config::from_env`).
    pub store: Option<ember_store::S3Config>,
    /// Sandboxes made ahead of demand per native function, each with its executable spawned
    /// and stopped before its first instruction, so that a request pays for neither (0: each
    /// request makes its own).
    pub prestart: usize,
    /// Most instances of one dependency image, and of one function snapshot, made ahead of
    /// demand (standby: forked from its template, or restored with templates off), so that a
    /// start pays neither its sandbox nor its fork or restore (0: none).
    pub standby: usize,
    /// Climb the ladder in its order always, never skipping a rung that measured slower than
    /// another way of starting the function (researchers measuring one rung).
    pub fixed_ladder: bool,
    /// Fork an image's standby instances from its template (the image restored once, parked;
    /// the instances share its pages copy-on-write) instead of restoring each.
    pub templates: bool,
}

/// Hibernated instances (the Knix swap tier): an idle instance whose keep-alive ran out is
/// dumped to local disk as a layer over what it was restored from, and restored lazily
/// from there, with its warm state, by the next request that finds no warm instance.
#[derive(Debug, Clone, PartialEq)]
pub struct HibernateConfig {
    /// How long a hibernated instance is kept (the fixed policy's, and the histogram
    /// policy's fallback); zero: idle instances are stopped, never hibernated.
    pub keep: Duration,
    /// Disk budget of the hibernated instances; past it, the oldest are removed.
    pub disk_bytes: u64,
    /// While the machine's available memory is under this percentage of its total, the
    /// least recently used idle instance is hibernated whatever its keep-alive, one at a
    /// time (0: never).
    pub pressure_percent: u8,
    /// How a hibernated instance's pages reach it when it is woken: bulk or lazy (from its
    /// file as it touches them, each chunk checked; bulk then the rest in the background),
    /// or eager (its dump read and checked whole, every page installed before it runs).
    pub policy: Policy,
}

impl Default for HibernateConfig {
    fn default() -> Self {
        HibernateConfig {
            keep: Duration::from_secs(3600),
            disk_bytes: 2048 << 20,
            pressure_percent: 10,
            policy: Policy::Bulk,
        }
    }
}

/// The queue of asynchronous (`Event`) invocations, retried as Lambda retries them.
#[derive(Debug, Clone, PartialEq)]
pub struct EventConfig {
    /// Wait before the first retry of an event whose invocation failed; the second waits
    /// twice as long (Lambda: 1 and 2 minutes). Two retries, then the event is dropped.
    pub retry_delay: Duration,
    /// An event that could not run (throttled, the node failing to start an instance) is
    /// retried with a growing backoff until it is this old.
    pub max_age: Duration,
    /// Events running at once, across functions.
    pub concurrency: usize,
}

impl Default for EventConfig {
    fn default() -> Self {
        EventConfig {
            retry_delay: Duration::from_secs(60),
            max_age: Duration::from_secs(6 * 3600),
            concurrency: 8,
        }
    }
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            home: PathBuf::from(".ember"),
            envs_dir: None,
            python: PathBuf::from("/usr/bin/python3"),
            node_js: PathBuf::from("/usr/bin/node"),
            keep_alive: Duration::from_secs(600),
            keep_alive_policy: crate::keepalive::PolicyKind::Fixed,
            keep_alive_bin: Duration::from_secs(60),
            hibernate: HibernateConfig::default(),
            queue_depth: 100,
            queue_timeout: Duration::from_secs(10),
            init_timeout: Duration::from_secs(60),
            log_max_bytes: 8 << 20,
            sandbox: true,
            sandbox_uid: 65534,
            sandbox_gid: 65534,
            pids_max: 256,
            tmp_bytes: 64 << 20,
            images: ImageConfig::default(),
            events: EventConfig::default(),
            snapshots: SnapshotConfig::default(),
            store: None,
            prestart: 2,
            standby: 2,
            fixed_ladder: false,
            templates: true,
        }
    }
}
