//! Starting the node and its API in this process (for `serve`, `up` and embedded benches).

use std::net::SocketAddr;

use anyhow::Context;
use ember_node::Node;
use tokio::sync::oneshot;

use crate::settings::Settings;

pub struct Running {
    pub addr: SocketAddr,
    pub node: std::sync::Arc<Node>,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Running {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops serving and every instance.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        self.task
            .await
            .context("the API task failed")?
            .context("serving the API failed")
    }
}

/// Raises this process's descriptor limit to its hard limit: each connection, instance,
/// image and log holds descriptors, and the usual soft limit of 1024 runs out at about 200
/// live instances. A failure is logged, not fatal: the API caps its connections by the
/// limit it has.
fn raise_descriptor_limit() {
    match ember_api::sys::raise_nofile_limit() {
        Ok(n) => tracing::debug!("descriptor limit (RLIMIT_NOFILE): {n}"),
        Err(e) => tracing::warn!("raising the descriptor limit (RLIMIT_NOFILE) failed: {e}"),
    }
}

pub async fn start(settings: Settings) -> anyhow::Result<Running> {
    raise_descriptor_limit();
    let node = Node::open(settings.node.clone())
        .await
        .with_context(|| format!("starting the node in {}", settings.node.home.display()))?;
    let listener = tokio::net::TcpListener::bind(&settings.listen)
        .await
        .with_context(|| {
            format!(
                "listening on {} (is another daemon there? use --listen)",
                settings.listen
            )
        })?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(ember_api::serve(
        listener,
        node.clone(),
        settings.api.clone(),
        settings.connections,
        async {
            let _ = stopped.await;
        },
    ));
    Ok(Running {
        addr,
        node,
        stop,
        task,
    })
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn signalled() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}
