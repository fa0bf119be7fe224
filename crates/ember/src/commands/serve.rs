//! `ember serve`: run a node until Ctrl-C or SIGTERM: the single-node platform, or with
//! `--cluster` one node of a cluster (it joins etcd, follows the cluster's functions and
//! publishes what it holds; see docs/cluster.md).

use ember_cluster::member::{Member, MemberConfig};
use ember_node::SnapshotMode;

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
            settings.node.store = Some(s3.clone());
            settings.api.cluster_member = true;
            Some(s3)
        }
        None => None,
    };
    let home = settings.node.home.clone();
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
            tracing::info!("node {id} joining the cluster at {list}; gateways reach it at {url}");
            let cfg = MemberConfig::new(keys, id, url);
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
