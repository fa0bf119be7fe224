//! The `/v1` routes.
//!
//! | method | path | what |
//! |---|---|---|
//! | GET | /v1/health | liveness (never needs the token) |
//! | GET | /v1/functions | list |
//! | PUT | /v1/functions/{name} | create or update (`code_zip`: base64 zip) |
//! | GET, DELETE | /v1/functions/{name} | describe, delete |
//! | POST | /v1/functions/{name}/invoke | synchronous invoke; the body is the event |
//! | DELETE | /v1/functions/{name}/instances | stop the function's instances |
//! | GET | /v1/functions/{name}/logs?lines=N | tail of the function's log |
//! | GET, POST | /v1/images | list, build (`{"packages": [...]}`) |
//! | DELETE | /v1/images/{id} | remove an image |
//! | GET | /v1/snapshots | list function snapshots, with the cache's use of its budgets (and, in remote mode, those only the snapshot store holds) |
//! | DELETE | /v1/snapshots/{id}[?store=true] | remove a function snapshot (with `store`, its set in the snapshot store too; `id` may be a store key) |
//! | GET | /metrics | Prometheus text |

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use base64::Engine;
use ember_node::function::validate_name;
use ember_node::{FunctionConfig, Invocation, InvokeOutcome};
use ember_sandbox::LimitReason;
use serde::Deserialize;
use tokio_stream::wrappers::UnboundedReceiverStream;

use crate::AppState;
use crate::error::ApiError;
use crate::types::{DeployEvent, DeployResult, ErrorBody, StopResult, headers as h};

pub(crate) fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/functions", get(list))
        .route(
            "/v1/functions/{name}",
            put(deploy).get(describe).delete(remove),
        )
        .route("/v1/functions/{name}/invoke", post(invoke))
        .route("/v1/functions/{name}/instances", delete(stop_instances))
        .route("/v1/functions/{name}/logs", get(logs))
        .route("/v1/images", get(list_images).post(build_image))
        .route("/v1/images/{id}", delete(remove_image))
        .route("/v1/instances", get(list_instances))
        .route("/v1/snapshots", get(list_snapshots))
        .route("/v1/snapshots/{id}", delete(remove_snapshot))
        .route("/metrics", get(metrics))
        .merge(crate::lambda::router())
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "NoSuchRoute",
                "no such API route; see docs/api.md",
            )
        })
        .layer(middleware::from_fn_with_state(state.clone(), auth))
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(state)
}

/// Compares without an early exit, so response time does not reveal the token.
pub(crate) fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn auth(State(s): State<AppState>, req: Request, next: Next) -> Response {
    if let Some(token) = &s.cfg.token
        && req.uri().path() != "/v1/health"
        && !crate::lambda::url::is_public(&s, &req)
    {
        let auth = req
            .headers()
            .get(header::AUTHORIZATION)
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        let lambda = crate::lambda::is_lambda_path(req.uri().path());
        // Lambda clients sign their requests: the access key id must be the token (the
        // signature itself is not checked).
        let given = match auth.strip_prefix(b"Bearer ") {
            Some(t) => t,
            None if lambda => crate::lambda::sigv4_key_id(auth).unwrap_or_default(),
            None => b"",
        };
        if !same_secret(given, token.as_bytes()) {
            if lambda {
                return crate::lambda::LambdaError::unauthorized().into_response();
            }
            return ApiError::new(
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                "missing or wrong API token: send 'Authorization: Bearer <token>' (the CLI reads --token or EMBER_TOKEN)",
            )
            .into_response();
        }
    }
    if s.cfg.cluster_member
        && let Some(refused) = crate::lambda::refused_in_cluster(req.method(), req.uri().path())
    {
        return refused;
    }
    next.run(req).await
}

/// Reads a request's body within the API's limits ([`crate::BodyReader`]).
pub(crate) async fn read_body(
    s: &AppState,
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    what: &str,
) -> Result<Bytes, ApiError> {
    s.bodies.read(headers, body, limit, what).await
}

async fn health() -> impl IntoResponse {
    axum::Json(serde_json::json!({"status": "ok", "version": env!("CARGO_PKG_VERSION")}))
}

async fn list(State(s): State<AppState>) -> impl IntoResponse {
    axum::Json(serde_json::json!({ "functions": s.node.list() }))
}

async fn describe(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    Ok(axum::Json(s.node.get(&name)?).into_response())
}

async fn remove(State(s): State<AppState>, Path(name): Path<String>) -> Result<Response, ApiError> {
    refuse_in_cluster(&s)?;
    s.node.delete(&name).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn stop_instances(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let stopped = s.node.stop_instances(&name).await?;
    Ok(axum::Json(StopResult { stopped }).into_response())
}

#[derive(Deserialize)]
struct InstancesQuery {
    function: Option<String>,
}

/// Every instance (of `?function=` only): warm, busy, hibernating or hibernated, with the
/// bytes it holds; and the hibernated instances' disk use against its budget.
async fn list_instances(
    State(s): State<AppState>,
    Query(q): Query<InstancesQuery>,
) -> Result<Response, ApiError> {
    if let Some(f) = &q.function {
        s.node.get(f)?;
    }
    let (bytes, budget) = s.node.hibernated_bytes();
    // Each instance's memory is read from /proc (its page tables walked): off the runtime.
    let node = s.node.clone();
    let instances = tokio::task::spawn_blocking(move || node.instances(q.function.as_deref()))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "Internal", e.to_string()))?;
    Ok(axum::Json(serde_json::json!({
        "instances": instances,
        "hibernated_bytes": bytes,
        "hibernated_budget_bytes": budget,
    }))
    .into_response())
}

#[derive(Deserialize)]
struct LogQuery {
    lines: Option<usize>,
}

async fn logs(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<LogQuery>,
) -> Result<Response, ApiError> {
    let text = s.node.logs(&name, q.lines.unwrap_or(100).min(10_000))?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response())
}

async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.node.metrics().encode(),
    )
}

/// Parses a deploy body: the function's configuration plus an optional `code_zip`.
/// A cluster's node takes its functions from the cluster's definitions (etcd): changing
/// them here would last only until the node next reconciles.
fn refuse_in_cluster(s: &AppState) -> Result<(), ApiError> {
    if s.cfg.cluster_member {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "ClusterManaged",
            "this node belongs to a cluster: deploy and delete functions through the \
             cluster's gateway (ember gateway), which every node follows",
        ));
    }
    Ok(())
}

/// A deploy request's body (`PUT /v1/functions/{name}`): the function's configuration and
/// its zip, decoded (`code_zip`, optional on update).
pub fn parse_deploy(body: &[u8]) -> Result<(FunctionConfig, Option<Vec<u8>>), ApiError> {
    let mut doc: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(body)
        .map_err(|e| {
            ApiError::bad_request(
                "InvalidJson",
                format!("the request body is not a JSON object: {e}"),
            )
        })?;
    let zip = match doc.remove("code_zip") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(b64)) => Some(
            base64::engine::general_purpose::STANDARD
                .decode(b64.as_bytes())
                .map_err(|e| {
                    ApiError::bad_request(
                        "InvalidArchive",
                        format!("code_zip is not valid base64: {e}"),
                    )
                })?,
        ),
        Some(_) => {
            return Err(ApiError::bad_request(
                "InvalidArchive",
                "code_zip must be a base64 string",
            ));
        }
    };
    let config: FunctionConfig =
        serde_json::from_value(serde_json::Value::Object(doc)).map_err(|e| {
            ApiError::bad_request(
                "InvalidFunction",
                format!("invalid function configuration: {e}"),
            )
        })?;
    config
        .validate()
        .map_err(|e| ApiError::bad_request("InvalidFunction", e.to_string()))?;
    Ok((config, zip))
}

async fn deploy(
    State(s): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    validate_name(&name).map_err(|e| ApiError::bad_request("InvalidFunction", e.to_string()))?;
    refuse_in_cluster(&s)?;
    let bytes = read_body(&s, &headers, body, s.cfg.max_deploy_bytes, "deploy request").await?;
    let (config, zip) = parse_deploy(&bytes)?;
    drop(bytes);
    let code_hash = match zip {
        Some(zip) => Some(s.node.store_code(zip).await?),
        None => None,
    };
    let streaming = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/x-ndjson"));
    if !streaming {
        let (_, created) = s.node.deploy(&name, config, code_hash, &|_| {}).await?;
        let status = if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        return Ok((status, axum::Json(s.node.get(&name)?)).into_response());
    }
    // Streamed: progress lines, then one `done` or `error` line. The deploy goes on to the
    // end even if the client goes away.
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Result<Bytes, std::io::Error>>();
    let send = |tx: &tokio::sync::mpsc::UnboundedSender<_>, ev: &DeployEvent| {
        let mut line = serde_json::to_vec(ev).unwrap_or_default();
        line.push(b'\n');
        let _ = tx.send(Ok(Bytes::from(line)));
    };
    let node = s.node.clone();
    tokio::spawn(async move {
        let ptx = tx.clone();
        let progress = move |l: &str| send(&ptx, &DeployEvent::Progress(l.to_string()));
        let last = match node.deploy(&name, config, code_hash, &progress).await {
            Ok((_, created)) => match node.get(&name) {
                Ok(st) => DeployEvent::Done(DeployResult {
                    created,
                    function: serde_json::to_value(st).unwrap_or_default(),
                }),
                Err(e) => ApiError::from(e).deploy_event(),
            },
            Err(e) => ApiError::from(e).deploy_event(),
        };
        send(&tx, &last);
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(UnboundedReceiverStream::new(rx)),
    )
        .into_response())
}

async fn list_images(State(s): State<AppState>) -> Result<Response, ApiError> {
    let (resident, budget) = s.node.image_memory();
    Ok(axum::Json(serde_json::json!({
        "images": s.node.images(),
        "memory": { "resident_bytes": resident, "budget_bytes": budget },
    }))
    .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BuildImage {
    packages: Vec<String>,
}

async fn build_image(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_body(&s, &headers, body, 64 << 10, "image request").await?;
    let req: BuildImage = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::bad_request(
            "InvalidImageRequest",
            format!("expected {{\"packages\": [\"name==version\", ...]}}: {e}"),
        )
    })?;
    // The same rules as a function's packages.
    ember_node::function::validate_packages(&req.packages)
        .map_err(|e| ApiError::bad_request("InvalidImageRequest", e.to_string()))?;
    let node = s.node.clone();
    // In a task of its own: a client that goes away does not leave half a build.
    let built = tokio::spawn(async move { node.build_image(&req.packages, &|_| {}).await })
        .await
        .map_err(|e| task_failed("the image build", e))??;
    Ok((StatusCode::CREATED, axum::Json(built)).into_response())
}

/// A request's own task panicked or was cancelled: the daemon's fault, told as such.
pub(crate) fn task_failed(what: &str, e: tokio::task::JoinError) -> ApiError {
    tracing::error!("{what} task failed: {e}");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "Internal",
        format!("{what} failed inside ember; see the daemon's log"),
    )
}

async fn remove_image(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    s.node.remove_image(&id)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn list_snapshots(State(s): State<AppState>) -> Result<Response, ApiError> {
    let (store, store_error) = match s.node.snapshots_only_in_store().await {
        None => (None, None),
        Some(Ok(rows)) => (Some(rows), None),
        Some(Err(e)) => (None, Some(e)),
    };
    Ok(axum::Json(crate::types::SnapshotList {
        snapshots: s.node.snapshots(),
        cache: s.node.snapshot_usage(),
        store,
        store_error,
    })
    .into_response())
}

#[derive(Deserialize)]
struct RemoveSnapshotQuery {
    #[serde(default)]
    store: bool,
}

async fn remove_snapshot(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<RemoveSnapshotQuery>,
) -> Result<Response, ApiError> {
    s.node.remove_snapshot(&id, q.store).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn invoke(
    State(s): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_body(&s, &headers, body, s.cfg.max_event_bytes, "event").await?;
    let event = crate::event::check(bytes)
        .map_err(|e| ApiError::bad_request("InvalidJson", e.to_string()))?;
    if headers
        .get(crate::types::forwarded::REQUEST)
        .is_some_and(|v| v == "1")
    {
        return Ok(invoke_reporting_start(&s, name, event));
    }
    // In a task of its own: a caller that goes away does not cancel the invocation, whose
    // instance then goes back to the pool (or is stopped) as usual.
    let node = s.node.clone();
    let inv = tokio::spawn(async move { node.invoke(&name, &event).await })
        .await
        .map_err(|e| task_failed("the invocation", e))??;
    Ok(invocation_response(inv))
}

/// A gateway's invoke (see [`crate::types::forwarded`]): `started` once the handler is
/// about to run, then the answer framed.
fn invoke_reporting_start(s: &AppState, name: String, event: Bytes) -> Response {
    let node = s.node.clone();
    framed(move |running| async move {
        let opts = ember_node::InvokeOptions {
            running: Some(running),
            ..Default::default()
        };
        // In a task of its own: a caller that goes away does not cancel the invocation.
        match tokio::spawn(async move { node.invoke_with(&name, &event, opts).await }).await {
            Ok(Ok(inv)) => invocation_response(inv),
            Ok(Err(e)) => ApiError::from(e).into_response(),
            Err(e) => task_failed("the invocation", e).into_response(),
        }
    })
}

/// Answers at once with the framed stream of [`crate::types::forwarded`]: `started` when the
/// flag `answer` is given turns true (the handler is about to run), then the response
/// `answer` makes, framed. `answer` runs in a task of its own (a gateway that goes away does
/// not cancel it).
pub(crate) fn framed<F>(
    answer: impl FnOnce(std::sync::Arc<tokio::sync::watch::Sender<bool>>) -> F,
) -> Response
where
    F: std::future::Future<Output = Response> + Send + 'static,
{
    use crate::types::forwarded::{ANSWER, AnswerHead, CONTENT_TYPE, STARTED};
    let (running, mut ran) = tokio::sync::watch::channel(false);
    let mut task = tokio::spawn(answer(std::sync::Arc::new(running)));
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Result<Bytes, std::io::Error>>();
    tokio::spawn(async move {
        let mut watching = true;
        let result = loop {
            tokio::select! {
                r = &mut task => break r,
                changed = ran.changed(), if watching => match changed {
                    Ok(()) if *ran.borrow() => {
                        watching = false;
                        let _ = tx.send(Ok(Bytes::from_static(STARTED)));
                    }
                    Ok(()) => {}
                    Err(_) => watching = false,
                },
            }
        };
        // A handler that started and ended before this loop saw the flag: `started` still
        // comes first.
        if watching && *ran.borrow() {
            let _ = tx.send(Ok(Bytes::from_static(STARTED)));
        }
        let resp = match result {
            Ok(r) => r,
            Err(e) => task_failed("the invocation", e).into_response(),
        };
        let (parts, body) = resp.into_parts();
        let body = axum::body::to_bytes(body, usize::MAX)
            .await
            .unwrap_or_default();
        let head = AnswerHead {
            status: parts.status.as_u16(),
            headers: parts
                .headers
                .iter()
                .filter_map(|(k, v)| Some((k.to_string(), v.to_str().ok()?.to_string())))
                .collect(),
            len: body.len() as u64,
        };
        let mut line = ANSWER.to_vec();
        line.extend(serde_json::to_vec(&head).unwrap_or_default());
        line.push(b'\n');
        let _ = tx.send(Ok(Bytes::from(line)));
        let _ = tx.send(Ok(body));
    });
    (
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        Body::from_stream(UnboundedReceiverStream::new(rx)),
    )
        .into_response()
}

fn invocation_response(mut inv: Invocation) -> Response {
    let failure = |status,
                   kind: &str,
                   code: &str,
                   message: String,
                   fe: Option<ember_runtime::protocol::FunctionError>,
                   reason: Option<LimitReason>| {
        let (error_type, traceback) = fe
            .map(|f| (Some(f.error_type), f.traceback))
            .unwrap_or_default();
        let reason = reason.map(|r| r.as_str().to_string());
        let body = ErrorBody {
            code: code.to_string(),
            message,
            error_type,
            traceback,
            reason,
        };
        (
            status,
            kind.to_string(),
            serde_json::to_vec(&crate::types::ErrorResponse { error: body }).unwrap_or_default(),
        )
    };
    let outcome = std::mem::replace(&mut inv.outcome, InvokeOutcome::Ok(Vec::new()));
    let (status, error_kind, body) = match outcome {
        InvokeOutcome::Ok(payload) => (StatusCode::OK, String::new(), payload),
        InvokeOutcome::HandlerError(fe) => {
            let msg = format!("{}: {}", fe.error_type, fe.message);
            failure(
                StatusCode::BAD_GATEWAY,
                "handler",
                "HandlerError",
                msg,
                Some(fe),
                None,
            )
        }
        InvokeOutcome::InitError(fe) => {
            let msg = format!(
                "importing the handler failed: {}: {}",
                fe.error_type, fe.message
            );
            failure(
                StatusCode::BAD_GATEWAY,
                "init",
                "InitError",
                msg,
                Some(fe),
                None,
            )
        }
        InvokeOutcome::Timeout(d) => failure(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            "Timeout",
            format!(
                "the function ran past its timeout of {} s; its instance was stopped",
                d.as_secs()
            ),
            None,
            None,
        ),
        InvokeOutcome::InitTimeout(d) => failure(
            StatusCode::GATEWAY_TIMEOUT,
            "init-timeout",
            "InitTimeout",
            format!("starting an instance took longer than {} s", d.as_secs()),
            None,
            None,
        ),
        InvokeOutcome::Limit(reason) => {
            let (code, message) = match reason {
                LimitReason::Oom => (
                    "OutOfMemory",
                    "the function ran out of memory (its memory_mb limit); its instance was stopped",
                ),
                LimitReason::Pids => (
                    "TooManyProcesses",
                    "the function reached its limit of processes and threads; its instance was stopped",
                ),
                LimitReason::Seccomp => (
                    "ForbiddenSyscall",
                    "the function made a system call the sandbox does not allow; its instance was stopped",
                ),
            };
            failure(
                StatusCode::BAD_GATEWAY,
                reason.as_str(),
                code,
                message.to_string(),
                None,
                Some(reason),
            )
        }
        InvokeOutcome::StartFailed(msg) => failure(
            StatusCode::BAD_GATEWAY,
            "start",
            "InstanceStartFailed",
            format!("the node could not start an instance: {msg}"),
            None,
            None,
        ),
        InvokeOutcome::Crashed(msg) => failure(
            StatusCode::BAD_GATEWAY,
            "crashed",
            "InstanceCrashed",
            format!("the instance died or broke the protocol ({msg}); see `ember logs`"),
            None,
            None,
        ),
    };
    let mut resp = (status, body).into_response();
    let hs = resp.headers_mut();
    hs.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    ember_headers(hs, &inv);
    if !error_kind.is_empty()
        && let Ok(v) = HeaderValue::from_str(&error_kind)
    {
        hs.insert(h::ERROR, v);
    }
    resp
}

/// The headers saying how an invocation was served (on `/v1` and Lambda responses alike).
pub(crate) fn ember_headers(hs: &mut HeaderMap, inv: &Invocation) {
    let mut put = |name: &'static str, value: &str| {
        if let Ok(v) = HeaderValue::from_str(value) {
            hs.insert(name, v);
        }
    };
    put(h::START, inv.start.as_str());
    put(h::TIMING, &crate::format::server_timing(&inv.timing));
    if let Some(image) = &inv.image {
        put(h::IMAGE, image);
    }
    if let Some(snapshot) = &inv.snapshot {
        put(h::SNAPSHOT, snapshot);
    }
    put(h::REQUEST_ID, &inv.request_id);
    put(h::VERSION, &inv.version.to_string());
    if !inv.instance.is_empty() {
        put(h::INSTANCE, &inv.instance);
    }
    if inv.cold_only {
        put(h::COLD_ONLY, "true");
    }
}
