//! `ember serve`: run a node until Ctrl-C or SIGTERM: the single-node platform, or with
//! `--cluster` one node of a cluster (it joins etcd, follows the cluster's functions and
//! publishes what it holds; see docs/cluster.md).

use anyhow::Context;
use ember_cluster::member::{Member, MemberConfig};
use std::net::{SocketAddr, ToSocketAddrs};

use ember_node::{PoolMode, SnapshotMode};

use super::cluster::EtcdArgs;
use crate::daemon;
use crate::settings::DaemonArgs;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub daemon: DaemonArgs,
    /// Join a cluster: etcd's client URLs, comma-separated. The node then serves the
    /// cluster's functions (deployed through `ember gateway`) and keeps code and snapshots in
    /// the S3 store (EMBER_S3_*; snapshots = "remote")
    #[arg(long, env = "EMBER_CLUSTER")]
    pub cluster: Option<String>,
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// This node's name in the cluster, unique (a Kubernetes node's name when nodes run as
    /// pods) [default: the host name]
    #[arg(long, env = "EMBER_NODE_NAME")]
    pub node_name: Option<String>,
    /// The URL gateways reach this node's API at; without it --listen must be a routable
    /// address [default: http://<--listen>]
    #[arg(long, env = "EMBER_ADVERTISE_URL")]
    pub advertise_url: Option<String>,
    /// In a cluster, where this node serves the dependency images in its memory to the other
    /// nodes (IP:PORT, or off); clients present a token derived from --token [default: the
    /// advertise URL's address, a free port]
    #[arg(long, env = "EMBER_PAGE_SERVER")]
    pub page_server: Option<String>,
    /// In a cluster, how this node uses an image it has no copy of while another node holds
    /// it: copy (restored lazily from that node's memory, or the store, while its own copy is
    /// fetched), pool (no copy of its own: WarmSwap's remote pool) or off (its own copy
    /// first) [default: copy]
    #[arg(long, env = "EMBER_IMAGE_POOL")]
    pub image_pool: Option<String>,
}

/// Where the page server listens: `flag` (IP:PORT, or off), else the address of `url`'s
/// host on a free port.
fn page_server_addr(flag: Option<&str>, url: &str) -> anyhow::Result<Option<SocketAddr>> {
    if flag == Some("off") {
        return Ok(None);
    }
    let addr = match flag {
        Some(a) => a
            .parse::<SocketAddr>()
            .map_err(|_| anyhow::anyhow!("--page-server {a:?} is not IP:PORT (or off)"))?,
        None => {
            // The URL's host (an IPv6 one without its brackets), resolved.
            let host = reqwest::Url::parse(url)
                .ok()
                .and_then(|u| u.host_str().map(|h| h.trim_matches(['[', ']']).to_string()));
            host.and_then(|h| (h.as_str(), 0).to_socket_addrs().ok()?.next())
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "the advertise URL {url:?} names no address for the page server: give \
                         one with --page-server IP:PORT"
                    )
                })?
        }
    };
    anyhow::ensure!(
        !addr.ip().is_unspecified(),
        "--page-server {addr} is every address: give the one other nodes reach"
    );
    Ok(Some(addr))
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "ember-node".to_string())
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let mut settings = args.daemon.resolve()?;
    // Checked before the node starts: a bad name fails at once.
    let id = args.node_name.clone().unwrap_or_else(host_name);
    anyhow::ensure!(
        args.cluster.is_none() || ember_cluster::record::valid_node_id(&id),
        "--node-name {id:?} is not a node name: letters, digits, '-', '.' and '_', at most 253, \
         beginning and ending with a letter or a digit (a host name)"
    );
    let s3 = match &args.cluster {
        Some(_) => {
            let s3 = super::cluster::store()?;
            settings.node.snapshots.mode = SnapshotMode::Remote;
            settings.node.images.pool = match args.image_pool.as_deref() {
                Some(m) => m
                    .parse::<PoolMode>()
                    .map_err(|e| anyhow::anyhow!("--image-pool: {e}"))?,
                None => PoolMode::Copy,
            };
            settings.node.store = Some(s3.clone());
            settings.api.cluster_member = true;
            Some(s3)
        }
        None => None,
    };
    let home = settings.node.home.clone();
    let token = settings.api.token.clone().unwrap_or_default();
    let running = daemon::start(settings).await?;
    // First: scripts and tests read the URL off this line.
    println!(
        "ember listening on {} (home {})",
        running.url(),
        home.display()
    );
    let member = match (&args.cluster, &s3) {
        (Some(list), Some(s3)) => {
            let staging = home.join("cluster-staging");
            let (client, keys, code) = super::cluster::open(list, &args.etcd, s3, &staging).await?;
            let url = match args.advertise_url {
                Some(u) => u,
                None if running.addr.ip().is_unspecified() => anyhow::bail!(
                    "--listen {} is every address: give the one gateways reach with \
                     --advertise-url",
                    running.addr
                ),
                None => running.url(),
            };
            let mut cfg = MemberConfig::new(keys, id.clone(), url.clone());
            // A page server asked for must start; the default one (the advertise URL's
            // address, which may not be this machine's: NAT, a load balancer) may not.
            let listener = page_server_addr(args.page_server.as_deref(), &url).and_then(|a| {
                a.map(|addr| {
                    std::net::TcpListener::bind(addr)
                        .with_context(|| format!("the page server cannot listen on {addr}"))
                })
                .transpose()
            });
            match listener {
                Ok(Some(listener)) => {
                    let bound = listener.local_addr()?;
                    running.node.serve_pages(listener, &token);
                    tracing::info!("serving images in memory to the cluster's nodes on {bound}");
                    cfg.page_server = Some(bound.to_string());
                }
                Ok(None) => {}
                Err(e) if args.page_server.is_none() => tracing::warn!(
                    "no image page server ({e:#}): other nodes do not restore images from this \
                     one's memory; give --page-server IP:PORT"
                ),
                Err(e) => return Err(e),
            }
            cfg.api_token = token;
            tracing::info!("node {id} joining the cluster at {list}; gateways reach it at {url}");
            Some(Member::start(client, running.node.clone(), code, cfg))
        }
        _ => None,
    };
    daemon::signalled().await;
    tracing::info!("shutting down");
    if let Some(m) = member {
        m.leave().await;
    }
    running.stop().await
}
