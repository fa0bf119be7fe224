//! What a node publishes under its lease (`<prefix>/nodes/<id>`), as JSON: where its API is,
//! which definitions it has deployed, what it holds per function, and its load. Placement
//! reads nothing else.

use std::collections::BTreeMap;

use ember_node::Holdings;
use serde::{Deserialize, Serialize};

/// A record larger than this is refused (a node with thousands of functions stays far
/// below: a function's holdings are about 150 bytes).
pub const MAX_RECORD_BYTES: usize = 512 << 10;

/// Format of the record; a node that reads a newer one ignores the node, loudly.
pub const RECORD_FORMAT: u32 = 1;

/// Whether `id` may name a node: a host name or a Kubernetes node name (a DNS subdomain:
/// letters, digits, `-`, `.`, `_`; at most 253; beginning and ending with a letter or digit).
pub fn valid_node_id(id: &str) -> bool {
    let ends = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    (1..=253).contains(&id.len())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
        && ends(id.chars().next())
        && ends(id.chars().last())
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub format: u32,
    /// Its name in the cluster (`--node-name`).
    pub id: String,
    /// Its API, as the gateways reach it (`--advertise-url`).
    pub url: String,
    /// Unix seconds when this run of the node started.
    pub started_at: u64,
    /// Each function's definition as this node has deployed it (or failed to).
    pub deployed: BTreeMap<String, Deployment>,
    /// What it holds per function, and its load.
    pub holdings: Holdings,
    /// Its image page server, and the images it serves (those in its memory pool).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pages: Option<PageServerRecord>,
}

/// A node's image page server (WarmSwap's pool), as other nodes reach it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageServerRecord {
    /// `ip:port`.
    pub addr: String,
    /// The ids of the images in its memory pool.
    pub images: Vec<String>,
}

/// Images a record may name as served at most.
pub const MAX_SERVED_IMAGES: usize = 4096;

/// One definition as a node took it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployment {
    /// The definition's etcd revision (`mod_revision`) the node deployed or tried.
    pub revision: i64,
    /// Why its deploy failed here; none: it serves that revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("the record of node {key} is {0} bytes, over the cap of {MAX_RECORD_BYTES}", key = .1)]
    TooLarge(usize, String),
    #[error("the record of node {key} is not a node record: {why}")]
    Invalid { key: String, why: String },
    #[error(
        "node {key} publishes record format {format}, newer than this binary's {RECORD_FORMAT}: \
         upgrade this gateway"
    )]
    Newer { key: String, format: u32 },
}

impl NodeRecord {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Decodes the record stored under `key` (its node's id), checked: its size, its
    /// format, and that it names itself as the key does.
    pub fn decode(key: &str, bytes: &[u8]) -> Result<NodeRecord, RecordError> {
        if bytes.len() > MAX_RECORD_BYTES {
            return Err(RecordError::TooLarge(bytes.len(), key.to_string()));
        }
        let r: NodeRecord = serde_json::from_slice(bytes).map_err(|e| RecordError::Invalid {
            key: key.to_string(),
            why: e.to_string(),
        })?;
        if r.format > RECORD_FORMAT {
            return Err(RecordError::Newer {
                key: key.to_string(),
                format: r.format,
            });
        }
        if r.id != key || !valid_node_id(key) {
            return Err(RecordError::Invalid {
                key: key.to_string(),
                why: format!("it names itself {:?}", r.id),
            });
        }
        // The gateway sends requests (and the nodes' token) there: an http(s) base URL.
        let host = r
            .url
            .strip_prefix("http://")
            .or_else(|| r.url.strip_prefix("https://"));
        if !host.is_some_and(|h| {
            !h.is_empty()
                && h.len() <= 300
                && h.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-._:[]/".contains(c))
        }) {
            return Err(RecordError::Invalid {
                key: key.to_string(),
                why: format!("its URL {:?} is not an http(s) base URL", r.url),
            });
        }
        if let Some(p) = &r.pages {
            let addr_ok = p.addr.parse::<std::net::SocketAddr>().is_ok();
            let ids_ok = p.images.len() <= MAX_SERVED_IMAGES
                && p.images.iter().all(|i| {
                    (1..=128).contains(&i.len())
                        && i.chars()
                            .all(|c| c.is_ascii_alphanumeric() || "-/".contains(c))
                });
            if !addr_ok || !ids_ok {
                return Err(RecordError::Invalid {
                    key: key.to_string(),
                    why: format!(
                        "its page server {:?} is not an ip:port, or its image ids are not ids",
                        p.addr
                    ),
                });
            }
        }
        Ok(r)
    }

    /// This node's page server, if it holds image `key` (`<image id>/<metadata id>`) in
    /// memory.
    pub fn serves_image(&self, key: &str) -> Option<&str> {
        self.pages
            .as_ref()
            .filter(|p| p.images.iter().any(|i| i == key))
            .map(|p| p.addr.as_str())
    }

    /// Whether the node serves revision `revision` of `function` (deployed without error).
    pub fn serves(&self, function: &str, revision: i64) -> bool {
        self.deployed
            .get(function)
            .is_some_and(|d| d.revision == revision && d.error.is_none())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> NodeRecord {
        NodeRecord {
            format: RECORD_FORMAT,
            id: "n1".into(),
            url: "http://10.0.0.1:8080".into(),
            started_at: 1,
            deployed: BTreeMap::from([(
                "f".to_string(),
                Deployment {
                    revision: 7,
                    error: None,
                },
            )]),
            holdings: Holdings::default(),
            pages: Some(PageServerRecord {
                addr: "10.0.0.1:7070".into(),
                images: vec!["img-0123456789ab".into()],
            }),
        }
    }

    #[test]
    fn round_trip_and_checks() {
        let r = record();
        assert_eq!(NodeRecord::decode("n1", &r.encode()).unwrap(), r);
        assert!(r.serves("f", 7));
        assert!(!r.serves("f", 8));
        assert!(matches!(
            NodeRecord::decode("n2", &r.encode()),
            Err(RecordError::Invalid { .. })
        ));
        let mut newer = record();
        newer.format = RECORD_FORMAT + 1;
        assert!(matches!(
            NodeRecord::decode("n1", &newer.encode()),
            Err(RecordError::Newer { .. })
        ));
        assert!(matches!(
            NodeRecord::decode("n1", b"{\"id\": 3"),
            Err(RecordError::Invalid { .. })
        ));
        let mut bad_url = record();
        bad_url.url = "file:///etc/passwd".into();
        assert!(NodeRecord::decode("n1", &bad_url.encode()).is_err());
        assert_eq!(r.serves_image("img-0123456789ab"), Some("10.0.0.1:7070"));
        assert_eq!(r.serves_image("img-other"), None);
        // A page server that is not an ip:port (a name would be resolved by every node), or
        // an image id that is not one, and the record is refused.
        for (addr, image) in [("evil.example:80", "img-1"), ("10.0.0.1:7070", "../x y")] {
            let mut bad = record();
            bad.pages = Some(PageServerRecord {
                addr: addr.into(),
                images: vec![image.into()],
            });
            assert!(
                NodeRecord::decode("n1", &bad.encode()).is_err(),
                "{addr} {image}"
            );
        }
        // An older node's record, without a page server, still reads.
        let mut old = record();
        old.pages = None;
        assert_eq!(NodeRecord::decode("n1", &old.encode()).unwrap().pages, None);
        assert!(valid_node_id("ip-10-0-0-1.ec2.internal"));
        assert!(!valid_node_id("a/b") && !valid_node_id("-a") && !valid_node_id(""));
        let big = vec![b' '; MAX_RECORD_BYTES + 1];
        assert!(matches!(
            NodeRecord::decode("n1", &big),
            Err(RecordError::TooLarge(..))
        ));
    }
}
