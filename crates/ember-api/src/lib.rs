//! Ember's HTTP API (JSON under `/v1`, Prometheus text at `/metrics`) and a client for it.
//!
//! Beside `/v1`, the same router serves Lambda's API (`/2015-03-31/functions/...`, see
//! `lambda.rs`) on the same node.

pub mod client;
mod error;
mod lambda;
pub mod package;
mod routes;
pub mod types;

use std::net::SocketAddr;
use std::sync::Arc;

use ember_node::Node;

pub use error::ApiError;

/// Limits and access settings of the API.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// When set, every request but `/v1/health` needs `Authorization: Bearer <token>`.
    pub token: Option<String>,
    /// Largest invoke payload accepted (413 above it).
    pub max_event_bytes: usize,
    /// Largest deploy request accepted (the zip travels base64-encoded inside it).
    pub max_deploy_bytes: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            token: None,
            max_event_bytes: 6 * 1024 * 1024,
            max_deploy_bytes: 64 * 1024 * 1024,
        }
    }
}

#[derive(Clone)]
pub(crate) struct AppState {
    pub node: Arc<Node>,
    pub cfg: Arc<ApiConfig>,
}

pub fn router(node: Arc<Node>, cfg: ApiConfig) -> axum::Router {
    routes::router(AppState {
        node,
        cfg: Arc::new(cfg),
    })
}

/// Serves the API on `listener` until `shutdown` resolves, then stops every instance.
pub async fn serve(
    listener: tokio::net::TcpListener,
    node: Arc<Node>,
    cfg: ApiConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(node.clone(), cfg);
    let r = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await;
    node.shutdown().await;
    r
}
