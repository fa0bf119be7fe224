//! `ember gateway`: a cluster's API front end (docs/cluster.md). Deploys go to etcd (the
//! definition) and the S3 store (the code); invocations are placed on the nodes by what
//! they hold and forwarded. Runs until Ctrl-C or SIGTERM; any number may run.

use std::time::Duration;

use anyhow::Context;
use ember_api::{ApiConfig, ConnectionLimits};
use ember_cluster::gateway::{Gateway, GatewayConfig};

use super::cluster::EtcdArgs;
use crate::daemon;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// etcd's client URLs, comma-separated
    #[arg(long, env = "EMBER_CLUSTER")]
    pub cluster: String,
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// Address to serve the API on
    #[arg(long, env = "EMBER_GATEWAY_LISTEN", default_value = "127.0.0.1:8090")]
    pub listen: String,
    /// Require this bearer token on every request but /v1/health
    #[arg(long, env = "EMBER_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The token the nodes require (their --token) [default: --token]
    #[arg(long, env = "EMBER_NODE_TOKEN", hide_env_values = true)]
    pub node_token: Option<String>,
    /// Where invocations go: snapshot-aware (a node with an idle warm instance, then a
    /// hibernated one, the function snapshot, the image, then the least loaded) or
    /// least-loaded (load alone, as Kubernetes' default scheduler)
    #[arg(long, env = "EMBER_PLACEMENT", default_value = "snapshot-aware")]
    pub placement: String,
    /// Also serve Kubernetes' scheduler-extender prioritize verb (POST /prioritize) on this
    /// address, without the token (kube-scheduler sends none)
    #[arg(long, env = "EMBER_EXTENDER_LISTEN")]
    pub extender_listen: Option<String>,
    /// How long a deploy waits for every node to deploy it
    #[arg(long, env = "EMBER_DEPLOY_WAIT", default_value = "10m")]
    pub deploy_wait: String,
    /// Before an Event invocation whose function failed runs again (twice as long before
    /// its third attempt)
    #[arg(long, env = "EMBER_EVENT_RETRY_DELAY", default_value = "60s")]
    pub event_retry_delay: String,
    /// How long an Event invocation that cannot run (no node, throttled) is retried
    #[arg(long, env = "EMBER_EVENT_MAX_AGE", default_value = "6h")]
    pub event_max_age: String,
    /// Where deployed zips are staged on their way to the store
    #[arg(
        long,
        env = "EMBER_GATEWAY_STAGING",
        default_value = "/tmp/ember-gateway"
    )]
    pub staging: std::path::PathBuf,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let placement =
        ember_cluster::placement::by_name(&args.placement).map_err(anyhow::Error::msg)?;
    let deploy_wait: Duration = humantime::parse_duration(&args.deploy_wait)
        .with_context(|| format!("--deploy-wait {:?} is not a duration", args.deploy_wait))?;
    let (client, keys, code) = super::cluster::open(
        &args.cluster,
        &args.etcd,
        &super::cluster::store()?,
        &args.staging,
    )
    .await?;
    let token = args.token.filter(|t| !t.is_empty());
    let api = ApiConfig::default();
    let limits = ConnectionLimits::default();
    let cfg = GatewayConfig {
        keys,
        placement,
        node_token: args.node_token.filter(|t| !t.is_empty()).or(token.clone()),
        token,
        deploy_wait,
        max_event_bytes: api.max_event_bytes,
        max_deploy_bytes: api.max_deploy_bytes,
        limits,
        event_retry_delay: humantime::parse_duration(&args.event_retry_delay).with_context(
            || {
                format!(
                    "--event-retry-delay {:?} is not a duration",
                    args.event_retry_delay
                )
            },
        )?,
        event_max_age: humantime::parse_duration(&args.event_max_age).with_context(|| {
            format!("--event-max-age {:?} is not a duration", args.event_max_age)
        })?,
    };
    let gateway = Gateway::start(client, code, cfg)
        .await
        .map_err(anyhow::Error::msg)?;
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("listening on {} (use --listen)", args.listen))?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let api_task = tokio::spawn(ember_api::serve_app(
        listener,
        gateway.router(),
        limits,
        async {
            let _ = stopped.await;
        },
    ));
    let (xstop, xstopped) = tokio::sync::oneshot::channel::<()>();
    let extender = match &args.extender_listen {
        None => None,
        Some(a) => {
            let l = tokio::net::TcpListener::bind(a)
                .await
                .with_context(|| format!("listening on {a} (--extender-listen)"))?;
            println!(
                "scheduler extender on http://{}/prioritize",
                l.local_addr()?
            );
            Some(tokio::spawn(ember_api::serve_app(
                l,
                gateway.extender_router(),
                limits,
                async {
                    let _ = xstopped.await;
                },
            )))
        }
    };
    println!(
        "ember gateway listening on http://{addr} (etcd {}, placement {})",
        args.cluster, args.placement
    );
    daemon::signalled().await;
    tracing::info!("shutting down");
    let _ = stop.send(());
    let _ = xstop.send(());
    if let Some(t) = extender {
        let _ = t.await;
    }
    api_task
        .await
        .context("the API task failed")?
        .context("serving the API failed")
}
