//! Ember's HTTP API (JSON under `/v1`, Prometheus text at `/metrics`) and a client for it.
//!
//! Beside `/v1`, the same router serves Lambda's API (`/2015-03-31/functions/...`, see
//! `lambda.rs`) on the same node.

mod body;
pub mod client;
mod error;
mod event;
pub mod format;
mod lambda;
pub mod package;
mod routes;
mod server;
pub mod sys;
pub mod types;

use std::sync::Arc;
use std::time::Duration;

use ember_node::Node;

pub use body::BodyReader;
pub use error::ApiError;
pub use lambda::error_response as lambda_error;
pub use routes::parse_deploy;

/// Whether `headers` carry `Authorization: Bearer <token>`, or (a Lambda client's signed
/// request) a SigV4 signature whose access key id is the token; compared in constant time
/// (the signature itself is not checked, as on a node).
pub fn bearer_ok(headers: &axum::http::HeaderMap, token: &str) -> bool {
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    let t = match given.strip_prefix(b"Bearer ") {
        Some(t) => t,
        None => lambda::sigv4_key_id(given).unwrap_or_default(),
    };
    routes::same_secret(t, token.as_bytes())
}

/// Serves any `app` (the cluster gateway's) on `listener` with the API's connection limits
/// (head, body and idle timeouts, a connection cap) until `shutdown` resolves.
pub async fn serve_app(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    limits: ConnectionLimits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    server::serve(listener, app, limits, shutdown).await
}

/// Limits and access settings of the API.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// When set, every request but `/v1/health` needs `Authorization: Bearer <token>`.
    pub token: Option<String>,
    /// Largest invoke payload accepted (413 above it).
    pub max_event_bytes: usize,
    /// Largest deploy request accepted (the zip travels base64-encoded inside it).
    pub max_deploy_bytes: usize,
    /// The node is a cluster's (`ember serve --cluster`): its functions come from the
    /// cluster's definitions, so deploys and deletes here are refused (409, sent to the
    /// gateway instead).
    pub cluster_member: bool,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            token: None,
            max_event_bytes: 6 * 1024 * 1024,
            // Lambda's request cap for CreateFunction (a 50 MB zip, base64, in JSON).
            max_deploy_bytes: 70_167_211,
            cluster_member: false,
        }
    }
}

/// How long a client may take, and how many connections it may hold: what keeps slow,
/// idle or too many clients from holding the daemon's descriptors and memory (see
/// `server.rs`).
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// A request head (request line and headers) must arrive within this, counted from the
    /// connection's opening or from the first byte of a later request; else the connection
    /// is closed.
    pub header_timeout: Duration,
    /// A request body must arrive within this, plus one second for each 64 KiB received
    /// (so a large deploy on a slow link is not cut); else 408 and the connection is
    /// closed.
    pub body_timeout: Duration,
    /// A keep-alive connection with no request for this long is closed, as is one whose
    /// client reads none of a response for this long.
    pub idle_timeout: Duration,
    /// Connections held at once; one more is answered 503 `TooManyConnections` with
    /// `Connection: close`. Never more than half the process's descriptor limit.
    pub max_connections: usize,
    /// Request bodies being received hold at most this many bytes together; a body that
    /// would go past it is answered 503 `ServerBusy` (with `Connection: close`), so many
    /// large bodies held at once cannot exhaust the daemon's memory.
    pub max_buffered_body_bytes: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_connections: 10_000,
            max_buffered_body_bytes: 1 << 30,
        }
    }
}

#[derive(Clone)]
pub(crate) struct AppState {
    pub node: Arc<Node>,
    pub cfg: Arc<ApiConfig>,
    pub bodies: BodyReader,
}

pub fn router(node: Arc<Node>, cfg: ApiConfig, limits: ConnectionLimits) -> axum::Router {
    routes::router(AppState {
        node,
        cfg: Arc::new(cfg),
        bodies: BodyReader::new(limits),
    })
}

/// Serves the API on `listener` until `shutdown` resolves, then stops every instance.
pub async fn serve(
    listener: tokio::net::TcpListener,
    node: Arc<Node>,
    cfg: ApiConfig,
    limits: ConnectionLimits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(node.clone(), cfg, limits);
    let r = server::serve(listener, app, limits, shutdown).await;
    node.shutdown().await;
    r
}
