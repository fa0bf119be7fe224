//! vHive's integration point: a Kubernetes scheduler extender's `prioritize` verb, for
//! operators who run Ember's nodes as pods. kube-scheduler POSTs `ExtenderArgs` (the pod,
//! and the candidate nodes as a `NodeList` or, for a node-cache-capable extender, as
//! `NodeNames`); the answer is a `HostPriorityList`, a score from 0 to 10 (the extender
//! API's `MaxExtenderPriority`) per node, by what the node of that name holds of the pod's
//! function (its label or annotation `ember.dev/function`):
//!
//! | the node | score |
//! |---|---|
//! | has an idle warm instance | 10 |
//! | a hibernated instance | 8 |
//! | the function snapshot | 6 |
//! | the dependency image | 4 |
//! | is an Ember node holding none of these | 2 |
//! | is not an Ember node of this cluster (or the pod names no function) | 0 |
//!
//! The field names are the Go structs' (`k8s.io/kube-scheduler/extender/v1`): `Pod`, `Nodes`,
//! `NodeNames`, `Host`, `Score`; the pod and nodes inside are Kubernetes objects (`metadata`,
//! `items`, ...). Only the fields read here are parsed; the rest is ignored.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::placement::{Candidate, Tier};
use crate::record::NodeRecord;

/// The label (or annotation) that names a pod's function.
pub const FUNCTION_LABEL: &str = "ember.dev/function";

/// Most candidate nodes scored in one call (a larger request is refused, not truncated).
pub const MAX_NODES: usize = 10_000;

#[derive(Debug, Default, Deserialize)]
pub struct ExtenderArgs {
    #[serde(rename = "Pod", alias = "pod", default)]
    pub pod: Option<Object>,
    #[serde(rename = "Nodes", alias = "nodes", default)]
    pub nodes: Option<NodeList>,
    #[serde(
        rename = "NodeNames",
        alias = "nodenames",
        alias = "nodeNames",
        default
    )]
    pub node_names: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct NodeList {
    #[serde(default)]
    pub items: Vec<Object>,
}

/// A Kubernetes object, as far as it is read here.
#[derive(Debug, Default, Deserialize)]
pub struct Object {
    #[serde(default)]
    pub metadata: Metadata,
}

#[derive(Debug, Default, Deserialize)]
pub struct Metadata {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub labels: HashMap<String, String>,
    #[serde(default)]
    pub annotations: HashMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostPriority {
    #[serde(rename = "Host")]
    pub host: String,
    #[serde(rename = "Score")]
    pub score: i64,
}

impl ExtenderArgs {
    /// The function the pod is for.
    pub fn function(&self) -> Option<&str> {
        let m = &self.pod.as_ref()?.metadata;
        m.labels
            .get(FUNCTION_LABEL)
            .or_else(|| m.annotations.get(FUNCTION_LABEL))
            .map(String::as_str)
    }

    /// The candidate nodes' names, in the order given.
    pub fn node_names(&self) -> Vec<&str> {
        match (&self.node_names, &self.nodes) {
            (Some(names), _) => names.iter().map(String::as_str).collect(),
            (None, Some(list)) => list
                .items
                .iter()
                .map(|n| n.metadata.name.as_str())
                .collect(),
            (None, None) => Vec::new(),
        }
    }
}

fn score(tier: Tier) -> i64 {
    match tier {
        Tier::Warm => 10,
        Tier::Hibernated => 8,
        Tier::Snapshot => 6,
        Tier::Image => 4,
        Tier::Pool => 3,
        Tier::Nothing => 2,
    }
}

/// Scores every candidate of `args` by the cluster's nodes `records` (by node id).
pub fn prioritize(
    args: &ExtenderArgs,
    records: &BTreeMap<String, NodeRecord>,
) -> Result<Vec<HostPriority>, String> {
    let names = args.node_names();
    if names.len() > MAX_NODES {
        return Err(format!(
            "{} candidate nodes, over the {MAX_NODES} one call may score",
            names.len()
        ));
    }
    let function = args.function();
    let pool = function.is_some_and(|f| crate::placement::pool_has_image(records.values(), f));
    Ok(names
        .into_iter()
        .map(|host| {
            let score = match (function, records.get(host)) {
                (Some(f), Some(r)) => score(Tier::of(&Candidate {
                    id: host,
                    holdings: r.holdings.functions.get(f),
                    in_flight: r.holdings.load.in_flight,
                    memory_mb: r.holdings.load.memory_mb,
                    own_in_flight: 0,
                    pool_has_image: pool,
                })),
                _ => 0,
            };
            HostPriority {
                host: host.to_string(),
                score,
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use ember_node::{FunctionHoldings, Holdings};

    use super::*;
    use crate::record::RECORD_FORMAT;

    fn node(id: &str, f: Option<FunctionHoldings>) -> (String, NodeRecord) {
        let mut holdings = Holdings::default();
        if let Some(f) = f {
            holdings.functions.insert("hello".into(), f);
        }
        (
            id.to_string(),
            NodeRecord {
                format: RECORD_FORMAT,
                id: id.into(),
                url: String::new(),
                started_at: 0,
                deployed: BTreeMap::new(),
                holdings,
                pages: None,
            },
        )
    }

    fn records() -> BTreeMap<String, NodeRecord> {
        BTreeMap::from([
            node(
                "warm",
                Some(FunctionHoldings {
                    idle: 1,
                    ..Default::default()
                }),
            ),
            node(
                "snap",
                Some(FunctionHoldings {
                    snapshot: true,
                    image: true,
                    ..Default::default()
                }),
            ),
            node("empty", None),
        ])
    }

    /// The request kube-scheduler sends an extender that is not node-cache-capable (the
    /// shape of `ExtenderArgs` marshalled by Go: no JSON tags, so Go's field names).
    #[test]
    fn scores_a_node_list_request() {
        let req = r#"{
          "Pod": {"apiVersion": "v1", "kind": "Pod",
                  "metadata": {"name": "hello-7d9", "namespace": "default",
                               "labels": {"ember.dev/function": "hello", "app": "x"}},
                  "spec": {"containers": [{"name": "c", "image": "i"}]}},
          "Nodes": {"metadata": {}, "items": [
              {"metadata": {"name": "warm"}, "status": {"capacity": {"cpu": "2"}}},
              {"metadata": {"name": "snap"}},
              {"metadata": {"name": "empty"}},
              {"metadata": {"name": "not-ember"}}]},
          "NodeNames": null
        }"#;
        let args: ExtenderArgs = serde_json::from_str(req).unwrap();
        let out = prioritize(&args, &records()).unwrap();
        let json = serde_json::to_value(&out).unwrap();
        assert_eq!(
            json,
            serde_json::json!([
                {"Host": "warm", "Score": 10},
                {"Host": "snap", "Score": 6},
                {"Host": "empty", "Score": 2},
                {"Host": "not-ember", "Score": 0}
            ])
        );
    }

    /// A node-cache-capable extender gets names only; the function may be an annotation.
    #[test]
    fn scores_node_names_and_annotations() {
        let req = r#"{"Pod": {"metadata": {"annotations": {"ember.dev/function": "hello"}}},
                      "NodeNames": ["snap", "warm"]}"#;
        let args: ExtenderArgs = serde_json::from_str(req).unwrap();
        let out = prioritize(&args, &records()).unwrap();
        assert_eq!(out[0].score, 6);
        assert_eq!(out[1].score, 10);
        // A pod that names no function: every node neutral.
        let args: ExtenderArgs =
            serde_json::from_str(r#"{"Pod": {"metadata": {}}, "NodeNames": ["warm"]}"#).unwrap();
        assert_eq!(prioritize(&args, &records()).unwrap()[0].score, 0);
    }
}
