//! The node's Prometheus metrics (text format at `/metrics`).
//!
//! | metric | labels |
//! |---|---|
//! | `ember_invocations_total` | function, start, outcome |
//! | `ember_init_duration_seconds` (histogram) | function, start |
//! | `ember_execution_duration_seconds` (histogram) | function |
//! | `ember_instances` (gauge, live instances) | function |
//! | `ember_throttled_total` | function |

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

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

fn latency_histogram() -> Histogram {
    // 100 us .. ~52 s
    Histogram::new(exponential_buckets(0.0001, 2.0, 20))
}

pub struct Metrics {
    registry: Registry,
    pub invocations: Family<InvokeLabels, Counter>,
    pub init_seconds: Family<StartLabels, Histogram>,
    pub exec_seconds: Family<FunctionLabels, Histogram>,
    pub instances: Family<FunctionLabels, Gauge>,
    pub throttled: Family<FunctionLabels, Counter>,
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
        Metrics {
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
