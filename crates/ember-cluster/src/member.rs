//! A node's side of the cluster (`ember serve --cluster`): it registers under a lease,
//! publishes its record (its deployments, holdings and load: `record.rs`) whenever it
//! changes, and follows the function definitions: deploys what etcd defines (the code
//! fetched from the S3 store) and deletes what it no longer does.
//!
//! ```text
//! register: lease (TTL) -> claim <prefix>/nodes/<id> (only if free, or under this node's
//!           previous lease) -> keep alive
//! publish:  every 250 ms, the record if it changed (every 10 s anyway)
//! follow:   mirror of <prefix>/functions/ -> each definition not deployed at its revision:
//!           code from the store -> node deploy (at most 4 at once) -> its outcome published
//!           (a failed one tried again after 30 s, 1 min, ... 16 min)
//! pool:     mirror of <prefix>/nodes/ -> which other nodes' page servers hold which image
//!           in memory (the node's `PagePeers`); this node's page server and its images in
//!           the record
//! ```
//!
//! When etcd cannot be reached the node goes on serving what it has; it registers again
//! (a new lease) and catches up with the definitions once etcd answers. It never deletes
//! a function because of a listing it did not complete.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ember_node::{Node, PagePeers};
use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp};
use tokio::sync::Notify;

use crate::code::CodeStore;
use crate::defs::FunctionDef;
use crate::etcd::{Keys, Mirror, View};
use crate::record::{Deployment, NodeRecord, PageServerRecord, RECORD_FORMAT};

/// How a node joins the cluster.
#[derive(Debug, Clone)]
pub struct MemberConfig {
    pub keys: Keys,
    /// Its name in the cluster: unique; a Kubernetes node's name when it runs as a pod.
    pub id: String,
    /// Its API as gateways reach it.
    pub url: String,
    /// The lease's time to live: a node silent this long is out of placement.
    pub lease_ttl: Duration,
    /// How often the record is compared with the last published one.
    pub publish_every: Duration,
    /// Its image page server (`ip:port`), if it runs one.
    pub page_server: Option<String>,
    /// The nodes' API token (the page servers' is derived from it).
    pub api_token: String,
}

impl MemberConfig {
    pub fn new(keys: Keys, id: String, url: String) -> MemberConfig {
        MemberConfig {
            keys,
            id,
            url,
            lease_ttl: Duration::from_secs(5),
            publish_every: Duration::from_millis(250),
            page_server: None,
            api_token: String::new(),
        }
    }
}

/// Deploys run at once at most.
const DEPLOYS: usize = 4;
/// A record unchanged this long is published again anyway.
const REPUBLISH: Duration = Duration::from_secs(10);

/// The running member; [`Member::leave`] revokes its lease (gateways drop the node at once).
pub struct Member {
    client: Client,
    lease: Arc<Mutex<Option<i64>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

struct Shared {
    node: Arc<Node>,
    code: Arc<CodeStore>,
    cfg: MemberConfig,
    started_at: u64,
    deployed: Mutex<BTreeMap<String, Deployment>>,
    /// Names being deployed now.
    deploying: Mutex<HashSet<String>>,
    /// A deploy ended: reconcile again.
    deploy_ended: Notify,
    /// Definitions whose deploy failed here: (revision, failures, when to try again).
    failed: Mutex<std::collections::HashMap<String, (i64, u32, Instant)>>,
}

impl Member {
    /// Joins the cluster through `client` (made by [`crate::etcd::connect`]).
    pub fn start(
        client: Client,
        node: Arc<Node>,
        code: Arc<CodeStore>,
        cfg: MemberConfig,
    ) -> Member {
        let shared = Arc::new(Shared {
            node,
            code,
            started_at: crate::now_secs(),
            deployed: Mutex::new(BTreeMap::new()),
            deploying: Mutex::new(HashSet::new()),
            deploy_ended: Notify::new(),
            failed: Mutex::new(std::collections::HashMap::new()),
            cfg,
        });
        let lease = Arc::new(Mutex::new(None));
        let defs = Mirror::start(client.clone(), shared.cfg.keys.functions());
        let peers = ClusterPeers {
            nodes: Mirror::start(client.clone(), shared.cfg.keys.nodes()),
            me: shared.cfg.id.clone(),
            decoded: Mutex::new((-1, Arc::new(Vec::new()))),
        };
        shared
            .node
            .join_page_pool(Arc::new(peers), &shared.cfg.api_token);
        let tasks = vec![
            tokio::spawn(register(client.clone(), shared.clone(), lease.clone())),
            tokio::spawn(follow(defs, shared)),
        ];
        Member {
            client,
            lease,
            tasks,
        }
    }

    /// Leaves the cluster: stops publishing and revokes the lease, so that the node's
    /// record goes at once (within 2 s; else it expires with its lease).
    pub async fn leave(mut self) {
        for t in &self.tasks {
            t.abort();
        }
        let lease = *self.lease.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(id) = lease {
            let revoke = self.client.lease_revoke(id);
            if let Err(e) = tokio::time::timeout(Duration::from_secs(2), revoke)
                .await
                .unwrap_or_else(|_| {
                    Err(etcd_client::Error::LeaseKeepAliveError("timed out".into()))
                })
            {
                tracing::warn!("revoking the node's lease failed ({e}): it expires by itself");
            }
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Shared {
    fn record(&self) -> NodeRecord {
        NodeRecord {
            format: RECORD_FORMAT,
            id: self.cfg.id.clone(),
            url: self.cfg.url.clone(),
            started_at: self.started_at,
            deployed: self
                .deployed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            holdings: self.node.holdings(),
            pages: self.cfg.page_server.as_ref().map(|addr| PageServerRecord {
                addr: addr.clone(),
                images: self.node.images_in_memory(),
            }),
        }
    }

    /// Marks `name` as being deployed or deleted here; false when it already is, or when
    /// `cap` changes run already.
    fn begin(&self, name: &str, cap: Option<usize>) -> bool {
        let mut d = self.deploying.lock().unwrap_or_else(|p| p.into_inner());
        if d.contains(name) || cap.is_some_and(|c| d.len() >= c) {
            return false;
        }
        d.insert(name.to_string())
    }

    /// `name`'s change ended: the definitions are reconciled again.
    fn end(&self, name: &str) {
        self.deploying
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        self.deploy_ended.notify_one();
    }

    /// Counts a failed deploy of `name` at `revision` (and when to try it again: 30 s, 1 min,
    /// ... 16 min), or forgets its failures once it deployed.
    fn note_failure(&self, name: &str, revision: i64, failed: bool) {
        let mut f = self.failed.lock().unwrap_or_else(|p| p.into_inner());
        if !failed {
            f.remove(name);
            return;
        }
        let n = match f.get(name) {
            Some((rev, n, _)) if *rev == revision => n.saturating_add(1),
            _ => 1,
        };
        let wait = Duration::from_secs(30) * (1u32 << (n - 1).min(5));
        f.insert(name.to_string(), (revision, n, Instant::now() + wait));
    }

    fn set_deployed(&self, name: &str, d: Option<Deployment>) {
        let mut map = self.deployed.lock().unwrap_or_else(|p| p.into_inner());
        match d {
            Some(d) => map.insert(name.to_string(), d),
            None => map.remove(name),
        };
    }
}

/// The other nodes as the node's image pool sees them: their records (decoded once per
/// change of the nodes' keys), which say which page servers hold which image in memory.
struct ClusterPeers {
    nodes: Mirror,
    me: String,
    /// The other nodes' records, at a revision of the nodes' keys.
    decoded: Mutex<(i64, Arc<Vec<NodeRecord>>)>,
}

impl PagePeers for ClusterPeers {
    fn holding(&self, key: &str) -> Vec<String> {
        let view = self.nodes.view();
        let mut cached = self.decoded.lock().unwrap_or_else(|p| p.into_inner());
        if cached.0 != view.revision {
            // A record that does not decode is left out (gateways log it).
            let others = view
                .entries
                .iter()
                .filter(|(n, _)| **n != self.me)
                .filter_map(|(n, e)| NodeRecord::decode(n, &e.value).ok())
                .collect();
            *cached = (view.revision, Arc::new(others));
        }
        cached
            .1
            .iter()
            .filter_map(|r| r.serves_image(key).map(str::to_string))
            .collect()
    }
}

/// Registers, keeps the lease alive and publishes the record; registers again (a new
/// lease) after any failure.
async fn register(mut client: Client, s: Arc<Shared>, lease: Arc<Mutex<Option<i64>>>) {
    let mut backoff = Duration::from_millis(200);
    // The lease the node's key was last claimed under: a new run of `registered` (after
    // etcd failed for less than the TTL) takes the key over from it.
    let mut previous: Option<i64> = None;
    loop {
        match registered(&mut client, &s, &lease, &mut previous).await {
            Ok(()) => backoff = Duration::from_millis(200),
            Err(e) => {
                tracing::warn!("cluster membership ({}): {e}; registering again", s.cfg.id);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

async fn registered(
    client: &mut Client,
    s: &Shared,
    lease: &Mutex<Option<i64>>,
    previous: &mut Option<i64>,
) -> Result<(), String> {
    let ttl = i64::try_from(s.cfg.lease_ttl.as_secs().max(1)).unwrap_or(5);
    let id = client
        .lease_grant(ttl, None)
        .await
        .map_err(|e| format!("granting a lease: {e}"))?
        .id();
    let key = s.cfg.keys.node(&s.cfg.id);
    // Claim the key: free, or still under this node's previous lease.
    let mut record = s.record();
    let free = Compare::version(key.as_str(), CompareOp::Equal, 0);
    let mut claimed = put_if(client, free, &key, &record, id)
        .await
        .map_err(|e| format!("claiming {key}: {e}"))?;
    if !claimed && let Some(old) = *previous {
        let ours = Compare::lease(key.as_str(), CompareOp::Equal, old);
        claimed = put_if(client, ours, &key, &record, id)
            .await
            .map_err(|e| format!("claiming {key}: {e}"))?;
    }
    if claimed {
        *lease.lock().unwrap_or_else(|p| p.into_inner()) = Some(id);
        if let Some(old) = previous.replace(id)
            && old != id
        {
            // The key is under the new lease now: the old one holds nothing.
            let _ = client.lease_revoke(old).await;
        }
    }
    if !claimed {
        let _ = client.lease_revoke(id).await;
        return Err(format!(
            "{key} is held by another live lease: another node runs under the name {:?} (give \
             each node its own --node-name), or this node's previous run, whose lease expires \
             within {ttl} s",
            s.cfg.id
        ));
    }
    tracing::info!(node = %s.cfg.id, lease = id, "joined the cluster");
    let (mut keeper, mut acks) = client
        .lease_keep_alive(id)
        .await
        .map_err(|e| format!("keeping the lease alive: {e}"))?;
    let mut beat = tokio::time::interval(s.cfg.lease_ttl / 3);
    let mut publish = tokio::time::interval(s.cfg.publish_every);
    let mut last_ack = Instant::now();
    let mut last_put = Instant::now();
    loop {
        tokio::select! {
            _ = beat.tick() => {
                keeper.keep_alive().await.map_err(|e| format!("keeping the lease alive: {e}"))?;
                if last_ack.elapsed() > s.cfg.lease_ttl {
                    return Err("the lease was not renewed within its TTL".into());
                }
            }
            ack = acks.message() => match ack {
                Ok(Some(a)) if a.ttl() > 0 => last_ack = Instant::now(),
                Ok(Some(_)) => return Err("the lease expired".into()),
                Ok(None) => return Err("the lease's stream ended".into()),
                Err(e) => return Err(format!("keeping the lease alive: {e}")),
            },
            _ = publish.tick() => {
                let now = s.record();
                if now != record || last_put.elapsed() > REPUBLISH {
                    // Only while the key is still ours (a lease gone deletes it).
                    let ours = Compare::lease(key.as_str(), CompareOp::Equal, id);
                    let ok = put_if(client, ours, &key, &now, id)
                        .await
                        .map_err(|e| format!("publishing the record: {e}"))?;
                    if !ok {
                        return Err(format!("{key} is no longer held by this node's lease"));
                    }
                    record = now;
                    last_put = Instant::now();
                }
            }
        }
    }
}

/// Puts `record` at `key` under `lease` if `when` holds; whether it did.
async fn put_if(
    client: &mut Client,
    when: Compare,
    key: &str,
    record: &NodeRecord,
    lease: i64,
) -> Result<bool, etcd_client::Error> {
    let txn = Txn::new().when([when]).and_then([TxnOp::put(
        key,
        record.encode(),
        Some(PutOptions::new().with_lease(lease)),
    )]);
    Ok(client.txn(txn).await?.succeeded())
}

/// Follows the definitions: reconciles on every change, when a deploy ends, and every 30 s.
async fn follow(mut defs: Mirror, s: Arc<Shared>) {
    loop {
        reconcile(&defs.view(), &s);
        tokio::select! {
            alive = defs.changed() => if !alive { return },
            () = s.deploy_ended.notified() => {}
            () = tokio::time::sleep(Duration::from_secs(30)) => {}
        }
    }
}

fn reconcile(view: &View, s: &Arc<Shared>) {
    if !view.live {
        // Not listed yet, or etcd unreachable: keep what is deployed.
        return;
    }
    for (name, entry) in &view.entries {
        let done = s
            .deployed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .is_some_and(|d| d.revision == entry.mod_revision);
        // A failed deploy is tried again, later and later (the store was down, say).
        let retry = s
            .failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .is_some_and(|(rev, _, at)| *rev == entry.mod_revision && *at <= Instant::now());
        if done && !retry {
            continue;
        }
        let def = match FunctionDef::decode(name, &entry.value) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!("not deploying {name}: {e}");
                s.set_deployed(
                    name,
                    Some(Deployment {
                        revision: entry.mod_revision,
                        error: Some(e.to_string()),
                    }),
                );
                continue;
            }
        };
        // Picked up again when one of the deploys running ends.
        if !s.begin(name, Some(DEPLOYS)) {
            continue;
        }
        let (s, name, revision) = (s.clone(), name.clone(), entry.mod_revision);
        tokio::spawn(async move {
            let error = deploy(&s, &def).await.err();
            s.note_failure(&name, revision, error.is_some());
            if let Some(e) = &error {
                tracing::warn!(function = %name, revision, "deploying the cluster's definition failed: {e}");
            } else {
                tracing::info!(function = %name, revision, "deployed the cluster's definition");
            }
            s.set_deployed(&name, Some(Deployment { revision, error }));
            s.end(&name);
        });
    }
    // What the cluster no longer defines: forgotten, and deleted where deployed.
    {
        let deploying = s
            .deploying
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let keep = |n: &String| view.entries.contains_key(n) || deploying.contains(n);
        s.deployed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|n, _| keep(n));
        s.failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|n, _| keep(n));
    }
    for status in s.node.list() {
        let name = status.record.name;
        if name.contains(':') || view.entries.contains_key(&name) {
            continue;
        }
        if !s.begin(&name, None) {
            continue;
        }
        let s = s.clone();
        tokio::spawn(async move {
            match s.node.delete(&name).await {
                Ok(()) => {
                    tracing::info!(function = %name, "deleted: the cluster no longer defines it")
                }
                Err(e) => {
                    tracing::warn!(function = %name, "deleting a function the cluster no longer defines: {e}")
                }
            }
            s.set_deployed(&name, None);
            s.end(&name);
        });
    }
}

/// Deploys `def` here, unless this node already serves exactly it (a restart).
async fn deploy(s: &Shared, def: &FunctionDef) -> Result<(), String> {
    if let Ok(have) = s.node.get(&def.name)
        && have.record.config == def.config
        && have.record.code_sha256 == def.code.sha256
        && have.record.code_size == def.code.size
    {
        return Ok(());
    }
    let zip = s
        .code
        .get(&def.code)
        .await
        .map_err(|e| format!("fetching its code: {e}"))?;
    let stored = s.node.store_code(zip).await.map_err(|e| e.to_string())?;
    s.node
        .deploy(&def.name, def.config.clone(), Some(stored), &|_| {})
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}
