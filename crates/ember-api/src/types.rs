//! Request and response bodies of the `/v1` API, shared by the server and the client.

use serde::{Deserialize, Serialize};

/// Response headers of an invoke.
pub mod headers {
    /// The start-ladder rung that served the request: `warm`, `image` or `cold-boot`.
    pub const START: &str = "ember-start";
    /// Phase durations in `Server-Timing` syntax (milliseconds).
    pub const TIMING: &str = "ember-timing";
    pub const REQUEST_ID: &str = "ember-request-id";
    /// The dependency image the instance was restored from.
    pub const IMAGE: &str = "ember-image";
    /// The function snapshot the instance was restored from.
    pub const SNAPSHOT: &str = "ember-snapshot";
    pub const INSTANCE: &str = "ember-instance";
    pub const VERSION: &str = "ember-function-version";
    /// `true` when the instance served this request only and has ended (a cold-only or
    /// native function).
    pub const COLD_ONLY: &str = "ember-cold-only";
    /// Present when the invocation failed: `handler`, `init`, `timeout`, `init-timeout`,
    /// `crashed`, `start`, or the limit that stopped the instance: `oom`, `pids`, `seccomp`.
    pub const ERROR: &str = "ember-error";
}

/// A cluster gateway's invoke of a node: with the request header [`forwarded::REQUEST`]
/// set to `1`, the node answers 200 at once with a stream ([`forwarded::CONTENT_TYPE`]):
/// `started\n` when the handler is about to run (absent if it never does), then
/// `answer <AnswerHead as JSON>\n` and the answer's body, `len` bytes: the status, headers
/// and body the plain invoke would have answered. A stream that ends before its answer tells
/// the gateway whether the request may have run (after `started`) or not (before: it may go
/// to another node).
pub mod forwarded {
    use serde::{Deserialize, Serialize};

    pub const REQUEST: &str = "ember-report-start";
    pub const CONTENT_TYPE: &str = "application/vnd.ember.invocation";
    pub const STARTED: &[u8] = b"started\n";
    pub const ANSWER: &[u8] = b"answer ";
    /// An answer's head line is never longer.
    pub const MAX_HEAD_BYTES: usize = 64 << 10;

    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct AnswerHead {
        pub status: u16,
        pub headers: Vec<(String, String)>,
        pub len: u64,
    }
}

/// The `error` member of every error response.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ErrorBody {
    /// Stable machine-readable code, e.g. `NotFound`, `InvalidArchive`, `HandlerError`.
    pub code: String,
    pub message: String,
    /// The exception type, for handler and init errors.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub error_type: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub traceback: Vec<String>,
    /// For instances the sandbox stopped: `oom`, `pids` or `seccomp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorResponse {
    pub error: ErrorBody,
}

/// One line of a streamed (`Accept: application/x-ndjson`) deploy response.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeployEvent {
    Progress(String),
    Done(DeployResult),
    Error(DeployError),
}

/// The `error` line of a streamed deploy. The stream itself was answered 200 before the
/// outcome was known: `status` is what the deploy would have been answered without
/// streaming (422 for a pip failure, 400, 404, 500, ...).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DeployError {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(flatten)]
    pub error: ErrorBody,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeployResult {
    pub created: bool,
    pub function: serde_json::Value,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StopResult {
    pub stopped: usize,
}

/// `GET /v1/snapshots`: every function snapshot on the node, and the cache's use of its
/// budgets. Built from the node's own types; a client reads it as JSON.
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotList {
    pub snapshots: Vec<ember_node::SnapshotStatus>,
    pub cache: ember_node::SnapshotUsage,
    /// In `snapshots = "remote"` mode: the function snapshots the snapshot store holds that
    /// this node has no copy of.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store: Option<Vec<ember_node::StoredSnapshot>>,
    /// Why the snapshot store could not be listed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store_error: Option<String>,
}
