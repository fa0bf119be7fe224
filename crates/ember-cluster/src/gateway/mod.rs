//! The gateway (`ember gateway`): the cluster's API front end; any number may run, each
//! reading the same etcd. It keeps the nodes' records and the function definitions in
//! memory (watched), so a placement reads no store.
//!
//! | method | path | what |
//! |---|---|---|
//! | GET | /v1/health | liveness, and whether etcd is followed now (never needs the token) |
//! | GET | /v1/functions | the definitions, each with its state on every node |
//! | PUT | /v1/functions/{name} | deploy: code to the S3 store, definition to etcd; answers once every node has deployed it or failed to (or `--deploy-wait` passed) |
//! | GET, DELETE | /v1/functions/{name} | describe, delete (every node follows) |
//! | POST | /v1/functions/{name}/invoke | placed, then forwarded to the node (`forward.rs`) |
//! | GET | /v1/cluster/nodes | the nodes in placement: records, holdings, load |
//! | GET | /v1/cluster/events | the Event queue: queued, running; this gateway's done, put back, dropped |
//! | POST | /2015-03-31/functions/{name}/invocations | Lambda's Invoke: RequestResponse forwarded, Event queued in etcd (`events.rs`), DryRun (`lambda.rs`) |
//!
//! Kubernetes' scheduler-extender `prioritize` is served on a listener of its own
//! ([`Gateway::extender_router`]): kube-scheduler sends no token.

mod events;
mod forward;
mod lambda;

pub use events::MAX_EVENT_PAYLOAD;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use ember_api::ApiError;
use ember_api::types::{DeployEvent, DeployResult};
use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp};
use serde_json::json;

use crate::code::CodeStore;
use crate::defs::{DEF_FORMAT, FunctionDef};
use crate::etcd::{Entry, Keys, Mirror};
use crate::placement::Placement;
use crate::record::NodeRecord;

/// The gateway's settings.
pub struct GatewayConfig {
    pub keys: Keys,
    pub placement: Box<dyn Placement>,
    /// Clients must send it (`Authorization: Bearer`), but to `/v1/health`.
    pub token: Option<String>,
    /// Sent to the nodes (their `--token`).
    pub node_token: Option<String>,
    /// How long a deploy waits for the nodes to deploy it.
    pub deploy_wait: Duration,
    pub max_event_bytes: usize,
    pub max_deploy_bytes: usize,
    /// Its API's connection limits (the body timeout and buffered-bytes budget among them).
    pub limits: ember_api::ConnectionLimits,
    /// Before an Event whose function failed runs again (times its attempts).
    pub event_retry_delay: Duration,
    /// An Event that could not run this long is dropped.
    pub event_max_age: Duration,
}

pub struct Gateway {
    etcd: Client,
    cfg: GatewayConfig,
    nodes: Mirror,
    defs: Mirror,
    code: Arc<CodeStore>,
    http: reqwest::Client,
    /// The nodes' records decoded, at the nodes mirror's revision.
    decoded: Mutex<(i64, Arc<BTreeMap<String, NodeRecord>>)>,
    /// This gateway's requests running on each node, per function.
    own: Mutex<HashMap<(String, String), u32>>,
    /// Nodes that refused a connection lately: out of placement until then.
    unreachable: Mutex<HashMap<String, Instant>>,
    turn: AtomicUsize,
    /// Reads request bodies within the limits.
    bodies: ember_api::BodyReader,
    events: events::EventStats,
    /// The Event queue (`<prefix>/events/`).
    event_queue: Mirror,
}

/// How long a node that refused a connection stays out of placement (its lease may still
/// run for seconds after it died).
const UNREACHABLE_FOR: Duration = Duration::from_secs(3);

impl Gateway {
    /// Starts following etcd; waits up to 5 s for the first listing (placement before it
    /// would see no node).
    pub async fn start(
        etcd: Client,
        code: Arc<CodeStore>,
        cfg: GatewayConfig,
    ) -> Result<Arc<Gateway>, String> {
        let mut nodes = Mirror::start(etcd.clone(), cfg.keys.nodes());
        let mut defs = Mirror::start(etcd.clone(), cfg.keys.functions());
        let wait = Duration::from_secs(5);
        if !nodes.wait_live(wait).await || !defs.wait_live(wait).await {
            tracing::warn!(
                "etcd did not answer within 5 s: serving, and following it once it does"
            );
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| format!("making the HTTP client: {e}"))?;
        let event_queue = Mirror::start(etcd.clone(), cfg.keys.events());
        let bodies = ember_api::BodyReader::new(cfg.limits);
        let gateway = Arc::new(Gateway {
            etcd,
            cfg,
            nodes,
            defs,
            code,
            http,
            decoded: Mutex::new((-1, Arc::new(BTreeMap::new()))),
            own: Mutex::new(HashMap::new()),
            unreachable: Mutex::new(HashMap::new()),
            turn: AtomicUsize::new(0),
            bodies,
            events: events::EventStats::default(),
            event_queue,
        });
        gateway.start_events();
        tokio::spawn(compact(gateway.etcd.clone()));
        // The records decoded as they change, off the requests' path.
        let (weak, mut nodes) = (Arc::downgrade(&gateway), gateway.nodes.clone());
        tokio::spawn(async move {
            while nodes.changed().await {
                let Some(g) = weak.upgrade() else { return };
                g.records();
            }
        });
        Ok(gateway)
    }

    /// The API's routes.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/v1/health", get(health))
            .route("/v1/functions", get(list))
            .route(
                "/v1/functions/{name}",
                put(deploy).get(describe).delete(remove),
            )
            .route("/v1/functions/{name}/invoke", post(forward::invoke))
            .route("/v1/cluster/nodes", get(nodes))
            .route("/v1/cluster/events", get(event_stats))
            .route(
                "/2015-03-31/functions/{name}/invocations",
                post(lambda::invoke),
            )
            .fallback(|| async {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    "NoSuchRoute",
                    "no such route on the gateway; see docs/cluster.md",
                )
            })
            .layer(middleware::from_fn_with_state(self.clone(), auth))
            .layer(axum::extract::DefaultBodyLimit::disable())
            .with_state(self.clone())
    }

    /// The scheduler extender's routes (`POST /prioritize`).
    pub fn extender_router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/prioritize", post(prioritize))
            .layer(axum::extract::DefaultBodyLimit::max(16 << 20))
            .with_state(self.clone())
    }

    /// The nodes in the cluster now (records that do not decode are left out, logged):
    /// decoded once per change of the nodes' keys (by a task that follows them, or here if
    /// a request comes first).
    pub fn records(&self) -> Arc<BTreeMap<String, NodeRecord>> {
        let view = self.nodes.view();
        let mut cached = self.decoded.lock().unwrap_or_else(|p| p.into_inner());
        if cached.0 == view.revision && cached.0 >= 0 {
            return cached.1.clone();
        }
        let mut out = BTreeMap::new();
        for (id, e) in &view.entries {
            match NodeRecord::decode(id, &e.value) {
                Ok(r) => {
                    out.insert(id.clone(), r);
                }
                Err(err) => tracing::warn!("leaving node {id} out of placement: {err}"),
            }
        }
        *cached = (view.revision, Arc::new(out));
        cached.1.clone()
    }

    fn definition(&self, name: &str) -> Result<(FunctionDef, Entry), ApiError> {
        let view = self.defs.view();
        let entry = view.entries.get(name).cloned().ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("function {name:?} does not exist (GET /v1/functions lists them)"),
            )
        })?;
        let def = FunctionDef::decode(name, &entry.value).map_err(|e| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "Internal", e.to_string())
        })?;
        Ok((def, entry))
    }

    /// A definition as the API shows it: its fields, version, and its state on each node.
    fn describe_def(&self, def: &FunctionDef, entry: &Entry) -> serde_json::Value {
        let records = self.records();
        let sum = |f: fn(&ember_node::FunctionHoldings) -> u32| -> u64 {
            records
                .values()
                .filter_map(|r| r.holdings.functions.get(&def.name))
                .map(|h| u64::from(f(h)))
                .sum()
        };
        let (live, idle, hibernated) = (sum(|h| h.live), sum(|h| h.idle), sum(|h| h.hibernated));
        let nodes: BTreeMap<&str, String> = records
            .values()
            .map(|r| {
                let state = match r.deployed.get(&def.name) {
                    Some(d) if d.revision == entry.mod_revision => match &d.error {
                        None => "ready".to_string(),
                        Some(e) => format!("failed: {e}"),
                    },
                    Some(d) if d.revision > entry.mod_revision => "newer".to_string(),
                    _ => "deploying".to_string(),
                };
                (r.id.as_str(), state)
            })
            .collect();
        let mut doc = serde_json::to_value(&def.config).unwrap_or_else(|_| json!({}));
        if let Some(o) = doc.as_object_mut() {
            o.insert("name".into(), json!(def.name));
            o.insert("version".into(), json!(entry.version));
            o.insert("revision".into(), json!(entry.mod_revision));
            o.insert("code_sha256".into(), json!(def.code.sha256));
            o.insert("code_size".into(), json!(def.code.size));
            o.insert("code_key".into(), json!(def.code.key));
            o.insert("created_at".into(), json!(def.created_at));
            o.insert("updated_at".into(), json!(def.updated_at));
            o.insert("nodes".into(), json!(nodes));
            // The cluster's, summed over the nodes' last records.
            o.insert("instances_live".into(), json!(live));
            o.insert("instances_idle".into(), json!(idle));
            o.insert("instances_hibernated".into(), json!(hibernated));
        }
        doc
    }

    fn mark_unreachable(&self, node: &str) {
        let mut u = self.unreachable.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        u.retain(|_, until| *until > now);
        u.insert(node.to_string(), now + UNREACHABLE_FOR);
    }

    fn reachable(&self, node: &str) -> bool {
        let mut u = self.unreachable.lock().unwrap_or_else(|p| p.into_inner());
        match u.get(node) {
            Some(until) if *until > Instant::now() => false,
            Some(_) => {
                u.remove(node);
                true
            }
            None => true,
        }
    }
}

/// Revisions of etcd's history kept: every record a node publishes is one, and etcd keeps
/// them all until compacted (its database would fill its quota in hours).
const KEEP_REVISIONS: i64 = 10_000;

/// Compacts etcd's history every 5 minutes, keeping the last [`KEEP_REVISIONS`] (any
/// gateway may; a compaction already done is refused, harmlessly).
async fn compact(mut etcd: Client) {
    loop {
        tokio::time::sleep(Duration::from_secs(300)).await;
        let Ok(status) = etcd.status().await else {
            continue;
        };
        let Some(rev) = status.header().map(|h| h.revision() - KEEP_REVISIONS) else {
            continue;
        };
        if rev > 0 {
            match etcd.compact(rev, None).await {
                Ok(_) => tracing::debug!("compacted etcd's history to revision {rev}"),
                Err(e) => tracing::debug!("compacting etcd's history to {rev}: {e}"),
            }
        }
    }
}

async fn auth(State(g): State<Arc<Gateway>>, req: Request, next: Next) -> Response {
    if let Some(token) = &g.cfg.token
        && req.uri().path() != "/v1/health"
        && !ember_api::bearer_ok(req.headers(), token)
    {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "missing or wrong API token: send 'Authorization: Bearer <token>' (the CLI reads --token or EMBER_TOKEN)",
        )
        .into_response();
    }
    next.run(req).await
}

async fn health(State(g): State<Arc<Gateway>>) -> Response {
    let (nodes, defs) = (g.nodes.view(), g.defs.view());
    axum::Json(json!({
        "status": "ok",
        "role": "gateway",
        "version": env!("CARGO_PKG_VERSION"),
        "etcd": if nodes.live && defs.live { "following" } else { "unreachable" },
        "nodes": g.records().len(),
        "placement": g.cfg.placement.name(),
    }))
    .into_response()
}

async fn nodes(State(g): State<Arc<Gateway>>) -> Response {
    let records = g.records();
    let nodes: Vec<serde_json::Value> = records
        .values()
        .map(|r| {
            let mut v = serde_json::to_value(r).unwrap_or_default();
            v["reachable"] = json!(g.reachable(&r.id));
            v
        })
        .collect();
    axum::Json(json!({"nodes": nodes, "placement": g.cfg.placement.name()})).into_response()
}

async fn event_stats(State(g): State<Arc<Gateway>>) -> Result<Response, ApiError> {
    use std::sync::atomic::Ordering::Relaxed;
    let mut etcd = g.etcd.clone();
    let count = |r: etcd_client::GetResponse| r.count();
    let opts = || {
        Some(
            etcd_client::GetOptions::new()
                .with_prefix()
                .with_count_only(),
        )
    };
    let queued = etcd
        .get(g.cfg.keys.events(), opts())
        .await
        .map_err(|e| etcd_failed("counting the events", e))?;
    let claimed = etcd
        .get(g.cfg.keys.claims(), opts())
        .await
        .map_err(|e| etcd_failed("counting the events", e))?;
    Ok(axum::Json(json!({
        "queued": count(queued),
        "running": count(claimed),
        "done": g.events.done.load(Relaxed),
        "retried": g.events.retried.load(Relaxed),
        "dropped": g.events.dropped.load(Relaxed),
    }))
    .into_response())
}

async fn list(State(g): State<Arc<Gateway>>) -> Response {
    let view = g.defs.view();
    let functions: Vec<serde_json::Value> = view
        .entries
        .iter()
        .filter_map(|(name, e)| match FunctionDef::decode(name, &e.value) {
            Ok(d) => Some(g.describe_def(&d, e)),
            Err(err) => {
                tracing::warn!("{err}");
                None
            }
        })
        .collect();
    axum::Json(json!({"functions": functions})).into_response()
}

async fn describe(
    State(g): State<Arc<Gateway>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let (def, entry) = g.definition(&name)?;
    Ok(axum::Json(g.describe_def(&def, &entry)).into_response())
}

pub(super) fn etcd_failed(what: &str, e: etcd_client::Error) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "ClusterUnavailable",
        format!("{what}: etcd did not answer ({e}); try again"),
    )
}

async fn remove(
    State(g): State<Arc<Gateway>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    ember_node::function::validate_name(&name)
        .map_err(|e| ApiError::bad_request("InvalidFunction", e.to_string()))?;
    let deleted = g
        .etcd
        .clone()
        .delete(g.cfg.keys.function(&name), None)
        .await
        .map_err(|e| etcd_failed("deleting the definition", e))?
        .deleted();
    if deleted == 0 {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("function {name:?} does not exist"),
        ));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn deploy(
    State(g): State<Arc<Gateway>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    ember_node::function::validate_name(&name)
        .map_err(|e| ApiError::bad_request("InvalidFunction", e.to_string()))?;
    let bytes = g
        .bodies
        .read(&headers, body, g.cfg.max_deploy_bytes, "deploy request")
        .await?;
    let streaming = headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/x-ndjson"));
    if !streaming {
        let (created, doc) = g.deploy(&name, &bytes, &|_| {}).await?;
        let status = if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        return Ok((status, axum::Json(doc)).into_response());
    }
    // Streamed as a node streams it: progress lines (the store, each node), then one `done`
    // or `error` line. The deploy goes on if the client goes away.
    let (tx, rx) =
        tokio::sync::mpsc::unbounded_channel::<Result<axum::body::Bytes, std::io::Error>>();
    let send = |tx: &tokio::sync::mpsc::UnboundedSender<_>, ev: &DeployEvent| {
        let mut line = serde_json::to_vec(ev).unwrap_or_default();
        line.push(b'\n');
        let _ = tx.send(Ok(axum::body::Bytes::from(line)));
    };
    tokio::spawn(async move {
        let ptx = tx.clone();
        let progress = move |l: &str| send(&ptx, &DeployEvent::Progress(l.to_string()));
        let last = match g.deploy(&name, &bytes, &progress).await {
            Ok((created, function)) => DeployEvent::Done(DeployResult { created, function }),
            Err(e) => e.deploy_event(),
        };
        send(&tx, &last);
    });
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(tokio_stream::wrappers::UnboundedReceiverStream::new(rx)),
    )
        .into_response())
}

impl Gateway {
    /// A deploy: the code to the store, the definition to etcd (only if unchanged since
    /// read), then the wait for the nodes. Whether the function is new, and its document.
    async fn deploy(
        &self,
        name: &str,
        body: &[u8],
        progress: &(dyn Fn(&str) + Send + Sync),
    ) -> Result<(bool, serde_json::Value), ApiError> {
        let (config, zip) = ember_api::parse_deploy(body)?;
        config
            .validate()
            .map_err(|e| ApiError::bad_request("InvalidFunction", e.to_string()))?;
        let key = self.cfg.keys.function(name);
        let previous = self
            .etcd
            .clone()
            .get(key.as_str(), None)
            .await
            .map_err(|e| etcd_failed("reading the definition", e))?;
        let previous_version = previous.kvs().first().map_or(0, |kv| kv.version());
        let previous = previous
            .kvs()
            .first()
            .map(|kv| (kv.mod_revision(), kv.value().to_vec()));
        let previous_def = match &previous {
            Some((_, v)) => FunctionDef::decode(name, v).ok(),
            None => None,
        };
        let code = match zip {
            Some(zip) => {
                if zip.len() as u64 > crate::code::MAX_ZIP_BYTES {
                    return Err(ApiError::bad_request(
                        "InvalidArchive",
                        format!("the zip is over {} bytes", crate::code::MAX_ZIP_BYTES),
                    ));
                }
                let code = self.code.put(&zip).await.map_err(|e| {
                    ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "StoreUnavailable",
                        e.to_string(),
                    )
                })?;
                progress(&format!(
                    "code stored ({} bytes, {})",
                    code.size,
                    &code.key[..16]
                ));
                code
            }
            None => match &previous_def {
                Some(d) => d.code.clone(),
                None => {
                    return Err(ApiError::bad_request(
                        "CodeRequired",
                        format!("function {name:?} is new: its deploy needs code_zip"),
                    ));
                }
            },
        };
        let now = crate::now_secs();
        let def = FunctionDef {
            format: DEF_FORMAT,
            name: name.to_string(),
            config,
            code,
            created_at: previous_def.as_ref().map_or(now, |d| d.created_at),
            updated_at: now,
        };
        // Written only if nobody changed it since it was read.
        let unchanged = match &previous {
            Some((rev, _)) => Compare::mod_revision(key.as_str(), CompareOp::Equal, *rev),
            None => Compare::version(key.as_str(), CompareOp::Equal, 0),
        };
        let txn =
            Txn::new()
                .when([unchanged])
                .and_then([TxnOp::put(key.as_str(), def.encode(), None)]);
        let resp = self
            .etcd
            .clone()
            .txn(txn)
            .await
            .map_err(|e| etcd_failed("writing the definition", e))?;
        if !resp.succeeded() {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "Conflict",
                format!("function {name:?} changed while this deploy was made: deploy again"),
            ));
        }
        let revision = resp.header().map_or(0, |h| h.revision());
        progress(&format!(
            "defined in etcd (revision {revision}); waiting for the nodes"
        ));
        let outcome = self.wait_deployed(name, revision, progress).await;
        let failed: Vec<(&String, &String)> = outcome
            .iter()
            .filter_map(|(n, e)| e.as_ref().map(|e| (n, e)))
            .collect();
        if !outcome.is_empty() && failed.len() == outcome.len() {
            let (node, why) = failed[0];
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "DeployFailed",
                format!(
                    "no node could deploy it (node {node}: {why}); the definition stands: fix \
                     it and deploy again, or delete it"
                ),
            ));
        }
        // As written (the mirror may not have seen it yet).
        let entry = Entry {
            value: Vec::new(),
            mod_revision: revision,
            version: previous_version + 1,
        };
        let mut doc = self.describe_def(&def, &entry);
        if let Some(o) = doc.as_object_mut() {
            o.insert("nodes_waited".into(), json!(outcome.len()));
        }
        Ok((previous.is_none(), doc))
    }
}

impl Gateway {
    /// Waits until every node in the cluster has taken revision `revision` of `name` (or a
    /// later one), up to `deploy_wait`; returns each node's error (none: deployed).
    async fn wait_deployed(
        &self,
        name: &str,
        revision: i64,
        progress: &(dyn Fn(&str) + Send + Sync),
    ) -> BTreeMap<String, Option<String>> {
        let deadline = tokio::time::Instant::now() + self.cfg.deploy_wait;
        let mut nodes = self.nodes.clone();
        let mut reported: Vec<String> = Vec::new();
        loop {
            let records = self.records();
            let mut done = BTreeMap::new();
            let mut waiting = false;
            for r in records.values() {
                match r.deployed.get(name) {
                    Some(d) if d.revision >= revision => {
                        if !reported.contains(&r.id) {
                            reported.push(r.id.clone());
                            match &d.error {
                                None => progress(&format!("node {}: ready", r.id)),
                                Some(e) => progress(&format!("node {}: failed: {e}", r.id)),
                            }
                        }
                        done.insert(r.id.clone(), d.error.clone());
                    }
                    _ => waiting = true,
                }
            }
            if !waiting || tokio::time::Instant::now() >= deadline {
                return done;
            }
            let _ = tokio::time::timeout_at(deadline, nodes.changed()).await;
        }
    }
}

async fn prioritize(State(g): State<Arc<Gateway>>, body: axum::body::Bytes) -> Response {
    let args: crate::extender::ExtenderArgs = match serde_json::from_slice(&body) {
        Ok(a) => a,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("not ExtenderArgs JSON: {e}"),
            )
                .into_response();
        }
    };
    match crate::extender::prioritize(&args, &g.records()) {
        Ok(list) => axum::Json(list).into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, e).into_response(),
    }
}
