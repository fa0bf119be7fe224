//! The node's Prometheus metrics (text format at `/metrics`).
//!
//! | metric | labels |
//! |---|---|
//! | `ember_invocations_total` | function, start, outcome |
//! | `ember_init_duration_seconds` (histogram) | function, start |
//! | `ember_execution_duration_seconds` (histogram) | function |
//! | `ember_instances` (gauge, live instances) | function |
//! | `ember_throttled_total` | function |
//! | `ember_cold_boot_reasons_total` (no image could serve: no-image, no-sandbox, images-off) | function, reason |
//! | `ember_image_failures_total` (restores that fell back to a cold boot) | image |
//! | `ember_start_fallbacks_total` (a rung's failed attempt, another rung served) | function, rung |
//! | `ember_image_page_faults_total` (faults served after a lazy or prefetch restore) | image |
//! | `ember_image_pages_installed_total` (pages those faults installed) | image |
//! | `ember_image_page_bytes_fetched_total` (bytes read from the page source for them) | image |
//! | `ember_image_page_fault_blocked_seconds_total` (time instances waited on faults) | image |
//! | `ember_image_memory_bytes` (gauge: image pages in memory) | |
//! | `ember_page_server_chunks_total` (image chunks this node's page server sent to other nodes, in a cluster) | |
//! | `ember_rung_skips_total` (a rung not tried: it measured slower than another way of starting the function) | function, rung |
//! | `ember_standby_ready` (gauge: instances made ahead of images, `image`, and of function snapshots, `snapshot`; parked sandboxes, `sandbox`) | kind |
//! | `ember_standby_takes_total` (a start looked for one: hit, miss, unusable; `forked`: none was ready, forked on the path) | kind, result |
//! | `ember_snapshot_hits_total` (a function snapshot of the function's current key found) | function |
//! | `ember_snapshot_misses_total` (none found for the function) | function |
//! | `ember_snapshot_stale_total` (one found for another code, config or parent: removed) | function |
//! | `ember_snapshot_evictions_total` (snapshots evicted to hold the disk budget) | |
//! | `ember_snapshot_disk_bytes` (gauge: snapshot files in the cache) | |
//! | `ember_snapshot_memory_bytes` (gauge: snapshot layers held in memory) | |
//! | `ember_store_uploads_total` (uploads to the snapshot store, `snapshots = "remote"`) | kind, result |
//! | `ember_store_uploaded_bytes_total` (compressed bytes of new chunks written) | kind |
//! | `ember_store_reused_chunks_total` (chunks the store already held: not sent) | kind |

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InvokeLabels {
    pub function: String,
    pub start: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StartLabels {
    pub function: String,
    pub start: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FunctionLabels {
    pub function: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub function: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TakeLabels {
    pub kind: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RungLabels {
    pub function: String,
    pub rung: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ImageLabels {
    pub image: String,
}

fn latency_histogram() -> Histogram {
    // 100 us .. ~52 s
    Histogram::new(exponential_buckets(0.0001, 2.0, 20))
}

/// The function-snapshot cache's metrics; the store holds a clone and updates them.
#[derive(Clone, Debug, Default)]
pub struct SnapshotMetrics {
    pub hits: Family<FunctionLabels, Counter>,
    pub misses: Family<FunctionLabels, Counter>,
    pub stale: Family<FunctionLabels, Counter>,
    pub evictions: Counter,
    pub disk_bytes: Gauge,
    pub memory_bytes: Gauge,
}

impl SnapshotMetrics {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "snapshot_hits",
            "Starts that found a function snapshot of the function's current code and config",
            self.hits.clone(),
        );
        registry.register(
            "snapshot_misses",
            "Starts that found no function snapshot for the function",
            self.misses.clone(),
        );
        registry.register(
            "snapshot_stale",
            "Function snapshots found stale (another code version, config or parent image) \
             and removed",
            self.stale.clone(),
        );
        registry.register(
            "snapshot_evictions",
            "Function snapshots evicted to keep the cache within its disk budget",
            self.evictions.clone(),
        );
        registry.register(
            "snapshot_disk_bytes",
            "Bytes of function snapshots on disk",
            self.disk_bytes.clone(),
        );
        registry.register(
            "snapshot_memory_bytes",
            "Bytes of function snapshot layers held in memory",
            self.memory_bytes.clone(),
        );
    }
}

/// The snapshot store's metrics (`snapshots = "remote"`); the uploader holds a clone.
#[derive(Clone, Debug)]
pub struct StoreMetrics {
    pub uploads: Family<TakeLabels, Counter>,
    pub uploaded_bytes: Family<KindLabels, Counter>,
    pub reused_chunks: Family<KindLabels, Counter>,
    pub fetches: Family<TakeLabels, Counter>,
    pub fetched_bytes: Family<KindLabels, Counter>,
    pub fetch_seconds: Family<KindLabels, Histogram>,
    pub gcs: Family<TakeLabels, Counter>,
    pub gc_deleted: Counter,
    pub dropped: Family<KindLabels, Counter>,
}

impl Default for StoreMetrics {
    fn default() -> StoreMetrics {
        StoreMetrics {
            uploads: Family::default(),
            uploaded_bytes: Family::default(),
            reused_chunks: Family::default(),
            fetches: Family::default(),
            fetched_bytes: Family::default(),
            fetch_seconds: Family::new_with_constructor(latency_histogram as fn() -> _),
            gcs: Family::default(),
            gc_deleted: Counter::default(),
            dropped: Family::default(),
        }
    }
}

impl StoreMetrics {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "store_uploads",
            "Uploads of dependency images (kind image) and function snapshots (kind snapshot) \
             to the snapshot store, by result: stored or failed",
            self.uploads.clone(),
        );
        registry.register(
            "store_removed_sets",
            "Sets this node removed from the snapshot store: function snapshots of code or \
             images no longer served, of deleted functions, or removed by an operator",
            self.dropped.clone(),
        );
        registry.register(
            "store_uploaded_bytes",
            "Bytes written to the snapshot store: new chunks, compressed",
            self.uploaded_bytes.clone(),
        );
        registry.register(
            "store_reused_chunks",
            "Chunks an upload found already stored (not sent again)",
            self.reused_chunks.clone(),
        );
        registry.register(
            "store_fetches",
            "Fetches of dependency images and function snapshots from the snapshot store, by \
             result: fetched, absent (the store does not hold it), failed",
            self.fetches.clone(),
        );
        registry.register(
            "store_fetched_bytes",
            "Bytes read from the snapshot store: chunks as stored (compressed)",
            self.fetched_bytes.clone(),
        );
        registry.register(
            "store_collections",
            "Garbage collections of the snapshot store this node ran, by result: done, busy \
             (an upload or another collection held the store), failed",
            self.gcs.clone(),
        );
        registry.register(
            "store_collected_chunks",
            "Chunks no manifest named that this node's collections deleted",
            self.gc_deleted.clone(),
        );
        registry.register(
            "store_fetch_seconds",
            "Time to fetch a whole set (manifest and every chunk, checked) from the store",
            self.fetch_seconds.clone(),
        );
    }
}

pub struct Metrics {
    registry: Registry,
    pub invocations: Family<InvokeLabels, Counter>,
    pub init_seconds: Family<StartLabels, Histogram>,
    pub exec_seconds: Family<FunctionLabels, Histogram>,
    pub instances: Family<FunctionLabels, Gauge>,
    pub throttled: Family<FunctionLabels, Counter>,
    pub cold_boot_reasons: Family<ReasonLabels, Counter>,
    pub image_failures: Family<ImageLabels, Counter>,
    pub start_fallbacks: Family<RungLabels, Counter>,
    pub rung_skips: Family<RungLabels, Counter>,
    pub page_faults: Family<ImageLabels, Counter>,
    pub pages_installed: Family<ImageLabels, Counter>,
    pub page_bytes_fetched: Family<ImageLabels, Counter>,
    pub page_fault_blocked: Family<ImageLabels, Counter<f64, AtomicU64>>,
    pub image_memory: Gauge,
    pub page_server_chunks: Counter,
    /// Standbys ready now, by kind (set at each scrape).
    pub standby_ready: Family<KindLabels, Gauge>,
    pub standby_takes: Family<TakeLabels, Counter>,
    /// Asynchronous invocations by what became of an attempt: ok, retried, dropped.
    pub events: Family<ReasonLabels, Counter>,
    /// Asynchronous invocations waiting or running, per function (set at each scrape).
    pub events_queued: Family<FunctionLabels, Gauge>,
    /// Shared with the snapshot store, which updates them.
    pub snapshots: SnapshotMetrics,
    pub store: StoreMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("ember");
        let invocations = Family::<InvokeLabels, Counter>::default();
        let init_seconds =
            Family::<StartLabels, Histogram>::new_with_constructor(latency_histogram as fn() -> _);
        let exec_seconds = Family::<FunctionLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> _,
        );
        let instances = Family::<FunctionLabels, Gauge>::default();
        let throttled = Family::<FunctionLabels, Counter>::default();
        registry.register(
            "invocations",
            "Invocations by function, start path and outcome",
            invocations.clone(),
        );
        registry.register(
            "init_duration_seconds",
            "Time to get an instance ready to run the event, by start path",
            init_seconds.clone(),
        );
        registry.register(
            "execution_duration_seconds",
            "Handler execution time",
            exec_seconds.clone(),
        );
        registry.register("instances", "Live instances", instances.clone());
        registry.register(
            "throttled",
            "Invocations refused with 429 because the function's queue was full",
            throttled.clone(),
        );
        let events = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "events",
            "Attempts of asynchronous (Event) invocations, by function and result (reason): \
             ok, retried or dropped",
            events.clone(),
        );
        let events_queued = Family::<FunctionLabels, Gauge>::default();
        registry.register(
            "events_queued",
            "Asynchronous (Event) invocations waiting or running, by function",
            events_queued.clone(),
        );
        let cold_boot_reasons = Family::<ReasonLabels, Counter>::default();
        let image_failures = Family::<ImageLabels, Counter>::default();
        let start_fallbacks = Family::<RungLabels, Counter>::default();
        registry.register(
            "start_fallbacks",
            "Attempts of a rung of the start ladder that failed, after which another served, \
             by function and rung",
            start_fallbacks.clone(),
        );
        let rung_skips = Family::<RungLabels, Counter>::default();
        registry.register(
            "rung_skips",
            "Rungs of the start ladder not tried because they measured slower than another \
             way of starting the function, by function and rung",
            rung_skips.clone(),
        );
        let page_faults = Family::<ImageLabels, Counter>::default();
        let pages_installed = Family::<ImageLabels, Counter>::default();
        let page_bytes_fetched = Family::<ImageLabels, Counter>::default();
        let page_fault_blocked = Family::<ImageLabels, Counter<f64, AtomicU64>>::default();
        let image_memory = Gauge::default();
        registry.register(
            "cold_boot_reasons",
            "Cold boots because no dependency image could serve, by reason",
            cold_boot_reasons.clone(),
        );
        registry.register(
            "image_failures",
            "Starts from an image that failed and fell back to a cold boot",
            image_failures.clone(),
        );
        registry.register(
            "image_page_faults",
            "Page faults served to instances restored lazily",
            page_faults.clone(),
        );
        registry.register(
            "image_pages_installed",
            "Pages installed on those faults",
            pages_installed.clone(),
        );
        registry.register(
            "image_page_bytes_fetched",
            "Bytes read from the page source for those faults",
            page_bytes_fetched.clone(),
        );
        registry.register(
            "image_page_fault_blocked_seconds",
            "Time restored instances waited on page faults",
            page_fault_blocked.clone(),
        );
        registry.register(
            "image_memory_bytes",
            "Bytes of image pages in memory",
            image_memory.clone(),
        );
        let page_server_chunks = Counter::default();
        registry.register(
            "page_server_chunks",
            "Image chunks this node's page server sent to other nodes",
            page_server_chunks.clone(),
        );
        let standby_ready = Family::<KindLabels, Gauge>::default();
        registry.register(
            "standby_ready",
            "Standbys ready now: instances made ahead of demand of images (kind image) and \
             of function snapshots (kind snapshot), sandboxes with their first process parked \
             (kind sandbox)",
            standby_ready.clone(),
        );
        let standby_takes = Family::<TakeLabels, Counter>::default();
        registry.register(
            "standby_takes",
            "Starts that looked for a standby, by kind and result: hit, miss (none ready), \
             forked (none ready: forked from the template on the start's path), unusable \
             (dead, stale, or it could not be set up: the start made its own)",
            standby_takes.clone(),
        );
        let snapshots = SnapshotMetrics::default();
        snapshots.register(&mut registry);
        let store = StoreMetrics::default();
        store.register(&mut registry);
        Metrics {
            store,
            standby_ready,
            standby_takes,
            snapshots,
            cold_boot_reasons,
            image_failures,
            start_fallbacks,
            rung_skips,
            page_faults,
            pages_installed,
            page_bytes_fetched,
            page_fault_blocked,
            image_memory,
            page_server_chunks,
            events,
            events_queued,
            registry,
            invocations,
            init_seconds,
            exec_seconds,
            instances,
            throttled,
        }
    }
}

impl Metrics {
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!("encoding metrics failed: {e}");
        }
        out
    }

    pub fn fn_labels(function: &str) -> FunctionLabels {
        FunctionLabels {
            function: function.to_string(),
        }
    }
}
