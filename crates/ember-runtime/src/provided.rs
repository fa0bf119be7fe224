//! The `provided` runtime: Lambda's custom runtimes. The instance runs the code's
//! `bootstrap` executable with `AWS_LAMBDA_RUNTIME_API` naming an HTTP endpoint of its own,
//! served here, on which it asks for events and posts results, as on Lambda:
//!
//! | method | path | what |
//! |---|---|---|
//! | GET | /2018-06-01/runtime/invocation/next | blocks until an event; its headers say the request id, the deadline, the function's ARN and a trace id |
//! | POST | /2018-06-01/runtime/invocation/{id}/response | the result (at most 6 MiB) |
//! | POST | /2018-06-01/runtime/invocation/{id}/error | an error: `{"errorMessage", "errorType", "stackTrace"}` |
//! | POST | /2018-06-01/runtime/init/error | initialisation failed; the instance is discarded |
//!
//! ```text
//! spawn bootstrap --(its init)--> first GET next: ready (or init/error, or exit: init failed)
//! invoke: event queued --> GET next returns it --> POST response|error --> the caller's answer
//! ```
//!
//! Each instance has its own listener, so a connection's instance is known without a token:
//! in the sandbox the listener is in the instance's own network namespace (127.0.0.1:9001,
//! reachable from nothing else); without it, or with the host's network, it is an ephemeral
//! port on the host's loopback. Written on axum because the endpoint is HTTP/1.1 with
//! long polls, as every Lambda runtime client expects.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::process::Command;
use tokio::sync::{mpsc, oneshot};

use crate::exec::{ExecSpec, Spawned, spawn};
use crate::native::{MAX_RESULT, micros};
use crate::protocol::FunctionError;
use crate::python::{InvokeError, LogSink, Outcome, StartError};

/// The port a sandboxed instance finds its Runtime API on (Lambda's own).
pub const SANDBOX_PORT: u16 = 9001;

/// Largest error document a runtime may post.
const MAX_ERROR_BODY: usize = 1024 * 1024;

/// One event handed to the runtime.
struct Job {
    request_id: String,
    deadline_ms: u64,
    trace_id: String,
    /// The caller's client context, JSON.
    client_context: Option<String>,
    event: Bytes,
    reply: oneshot::Sender<Reply>,
}

enum Reply {
    Ok(Bytes),
    Err(FunctionError),
}

enum InitSignal {
    Ready,
    Failed(FunctionError),
}

struct Api {
    jobs: tokio::sync::Mutex<mpsc::Receiver<Job>>,
    /// The event the runtime holds: its request id and where its answer goes.
    current: Mutex<Option<(String, oneshot::Sender<Reply>)>>,
    /// Taken by the first `next` (ready) or by `init/error`.
    init: Mutex<Option<oneshot::Sender<InitSignal>>>,
    function_arn: String,
}

impl Api {
    fn current(&self) -> std::sync::MutexGuard<'_, Option<(String, oneshot::Sender<Reply>)>> {
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn signal_init(&self, s: InitSignal) -> bool {
        let tx = self.init.lock().unwrap_or_else(|p| p.into_inner()).take();
        tx.map(|tx| tx.send(s)).is_some()
    }

    /// Takes the answer slot of `id`, if the runtime holds that event.
    fn take(&self, id: &str) -> Option<oneshot::Sender<Reply>> {
        let mut cur = self.current();
        match cur.as_ref() {
            Some((held, _)) if held == id => cur.take().map(|(_, tx)| tx),
            _ => None,
        }
    }
}

fn error(status: StatusCode, error_type: &str, message: impl Into<String>) -> Response {
    let body = serde_json::json!({"errorMessage": message.into(), "errorType": error_type});
    (status, axum::Json(body)).into_response()
}

fn accepted() -> Response {
    (
        StatusCode::ACCEPTED,
        axum::Json(serde_json::json!({"status": "OK"})),
    )
        .into_response()
}

fn router(api: Arc<Api>) -> Router {
    Router::new()
        .route("/2018-06-01/runtime/invocation/next", get(next))
        .route(
            "/2018-06-01/runtime/invocation/{id}/response",
            post(response),
        )
        .route(
            "/2018-06-01/runtime/invocation/{id}/error",
            post(invoke_error),
        )
        .route("/2018-06-01/runtime/init/error", post(init_error))
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                "InvalidRequest",
                "no such Runtime API route (this endpoint speaks the 2018-06-01 Runtime API)",
            )
        })
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(api)
}

async fn next(State(api): State<Arc<Api>>) -> Response {
    api.signal_init(InitSignal::Ready);
    let job = {
        let mut jobs = api.jobs.lock().await;
        jobs.recv().await
    };
    let Some(job) = job else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Runtime.Shutdown",
            "the instance is being shut down",
        );
    };
    // Asking for the next event without answering this one drops its answer slot: the
    // caller sees the runtime give up on it.
    *api.current() = Some((job.request_id.clone(), job.reply));
    let mut h = HeaderMap::new();
    let mut put = |name: &'static str, v: &str| {
        if let Ok(v) = HeaderValue::from_str(v) {
            h.insert(name, v);
        }
    };
    put("lambda-runtime-aws-request-id", &job.request_id);
    put("lambda-runtime-deadline-ms", &job.deadline_ms.to_string());
    put("lambda-runtime-invoked-function-arn", &api.function_arn);
    put("lambda-runtime-trace-id", &job.trace_id);
    if let Some(cc) = &job.client_context {
        put("lambda-runtime-client-context", cc);
    }
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    (StatusCode::OK, h, job.event).into_response()
}

async fn response(State(api): State<Arc<Api>>, Path(id): Path<String>, body: Body) -> Response {
    let Ok(bytes) = axum::body::to_bytes(body, MAX_RESULT).await else {
        if let Some(tx) = api.take(&id) {
            let _ = tx.send(Reply::Err(FunctionError {
                error_type: "Function.ResponseSizeTooLarge".into(),
                message: format!("the response is larger than the limit of {MAX_RESULT} bytes"),
                traceback: Vec::new(),
                duration_us: 0,
                marshal: false,
            }));
        }
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestEntityTooLarge",
            format!("Exceeded maximum allowed payload size ({MAX_RESULT} bytes)."),
        );
    };
    match api.take(&id) {
        Some(tx) => {
            let _ = tx.send(Reply::Ok(bytes));
            accepted()
        }
        None => unknown_request(&id),
    }
}

fn unknown_request(id: &str) -> Response {
    error(
        StatusCode::BAD_REQUEST,
        "InvalidRequestID",
        format!("request {id:?} is not the event this runtime holds"),
    )
}

/// `v` as JSON of ASCII only (what is not ASCII as `\uXXXX` escapes), so that it can travel
/// in an HTTP header.
fn ascii_json(v: &serde_json::Value) -> String {
    let text = v.to_string();
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{u:04x}"));
            }
        }
    }
    out
}

/// A runtime's error document, read leniently: what is not JSON becomes the message.
fn function_error(headers: &HeaderMap, body: &[u8], fallback_type: &str) -> FunctionError {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Doc {
        error_message: Option<String>,
        error_type: Option<String>,
        /// Node.js runtime clients name it `trace`.
        #[serde(default, alias = "trace")]
        stack_trace: serde_json::Value,
    }
    let header_type = headers
        .get("lambda-runtime-function-error-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let (message, doc_type, trace) = match serde_json::from_slice::<Doc>(body) {
        Ok(d) => (
            d.error_message.unwrap_or_default(),
            d.error_type,
            match d.stack_trace {
                serde_json::Value::Array(v) => v
                    .into_iter()
                    .map(|l| match l {
                        serde_json::Value::String(s) => s,
                        other => other.to_string(),
                    })
                    .collect(),
                _ => Vec::new(),
            },
        ),
        Err(_) => (String::from_utf8_lossy(body).into_owned(), None, Vec::new()),
    };
    FunctionError {
        error_type: doc_type
            .or(header_type)
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| fallback_type.to_string()),
        message,
        traceback: trace,
        duration_us: 0,
        marshal: false,
    }
}

async fn invoke_error(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Ok(bytes) = axum::body::to_bytes(body, MAX_ERROR_BODY).await else {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestEntityTooLarge",
            format!("an error document is at most {MAX_ERROR_BODY} bytes"),
        );
    };
    match api.take(&id) {
        Some(tx) => {
            let _ = tx.send(Reply::Err(function_error(
                &headers,
                &bytes,
                "Runtime.Unknown",
            )));
            accepted()
        }
        None => unknown_request(&id),
    }
}

async fn init_error(State(api): State<Arc<Api>>, headers: HeaderMap, body: Body) -> Response {
    let bytes = axum::body::to_bytes(body, MAX_ERROR_BODY)
        .await
        .unwrap_or_default();
    let fe = function_error(&headers, &bytes, "Runtime.InitError");
    if api.signal_init(InitSignal::Failed(fe)) {
        accepted()
    } else {
        error(
            StatusCode::FORBIDDEN,
            "InvalidStateTransition",
            "init/error is only valid before the first invocation/next",
        )
    }
}

/// Serves the Runtime API: HTTP/1.1 with header names in title case, as Lambda sends them
/// (clients that look headers up case-sensitively exist), and answers sent at once rather
/// than after the runtime's delayed ACK. Connections end with the server task.
async fn serve(listener: tokio::net::TcpListener, app: Router) {
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // Out of descriptors, most likely: wait rather than spin.
                tracing::debug!("a Runtime API listener failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let svc = hyper_util::service::TowerToHyperService::new(app.clone());
        conns.spawn(async move {
            let served = hyper::server::conn::http1::Builder::new()
                .title_case_headers(true)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
            if let Err(e) = served {
                tracing::debug!("a Runtime API connection ended: {e}");
            }
        });
        while conns.try_join_next().is_some() {}
    }
}

/// A running custom runtime and its Runtime API.
pub struct Instance {
    id: String,
    proc: Spawned,
    jobs: mpsc::Sender<Job>,
    server: Server,
}

/// The Runtime API's task, which ends when this is dropped: with the instance, or with a
/// start that fails or is given up on (a caller's timeout drops the start midway).
struct Server(tokio::task::JoinHandle<()>);

impl Drop for Server {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Instance {
    /// Serves the Runtime API on `listener`, starts the bootstrap with `runtime_api` (the
    /// address it reaches the listener at) and returns once it asks for its first event. A
    /// runtime that posts `init/error` or exits first fails the start; the caller bounds the
    /// wait.
    pub async fn start(
        spec: &ExecSpec,
        function_arn: String,
        listener: std::net::TcpListener,
        runtime_api: &str,
        logs: Arc<dyn LogSink>,
        confine: impl FnOnce(&mut Command),
    ) -> Result<(Instance, Duration), StartError> {
        let t0 = Instant::now();
        listener.set_nonblocking(true).map_err(StartError::Socket)?;
        let listener = tokio::net::TcpListener::from_std(listener).map_err(StartError::Socket)?;
        let (jobs_tx, jobs_rx) = mpsc::channel(1);
        let (init_tx, init_rx) = oneshot::channel();
        let api = Arc::new(Api {
            jobs: tokio::sync::Mutex::new(jobs_rx),
            current: Mutex::new(None),
            init: Mutex::new(Some(init_tx)),
            function_arn,
        });
        let server = Server(tokio::spawn(serve(listener, router(api))));
        let mut proc = spawn(spec, Some(runtime_api), false, logs, confine)?;
        tokio::select! {
            s = init_rx => match s {
                Ok(InitSignal::Ready) => {}
                Ok(InitSignal::Failed(fe)) => {
                    proc.kill();
                    return Err(StartError::Handler(fe));
                }
                Err(_) => {
                    proc.kill();
                    return Err(StartError::Socket(std::io::Error::other("the Runtime API ended")));
                }
            },
            st = proc.child.wait() => {
                return Err(match st {
                    Ok(st) => StartError::Exited(st),
                    Err(e) => StartError::Socket(e),
                });
            }
        }
        Ok((
            Instance {
                id: spec.instance_id.clone(),
                proc,
                jobs: jobs_tx,
                server,
            },
            t0.elapsed(),
        ))
    }

    /// Hands the event to the runtime and waits for its answer. The caller bounds the wait
    /// and kills the instance when the function's timeout passes.
    /// `client_context`: the caller's (the runtime's `Lambda-Runtime-Client-Context` header).
    pub async fn invoke(
        &mut self,
        request_id: &str,
        deadline: SystemTime,
        event: &[u8],
        client_context: Option<&serde_json::Value>,
    ) -> Result<Outcome, InvokeError> {
        let t0 = Instant::now();
        let (tx, rx) = oneshot::channel();
        let job = Job {
            request_id: request_id.to_string(),
            deadline_ms: deadline
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            trace_id: trace_id(request_id),
            client_context: client_context.map(ascii_json),
            event: Bytes::copy_from_slice(event),
            reply: tx,
        };
        if self.jobs.send(job).await.is_err() {
            return Err(InvokeError::Exited("its Runtime API has stopped".into()));
        }
        tokio::select! {
            r = rx => match r {
                Ok(Reply::Ok(payload)) => Ok(Outcome::Result { payload: payload.to_vec(), exec: t0.elapsed() }),
                Ok(Reply::Err(mut fe)) => {
                    fe.duration_us = micros(t0.elapsed());
                    Ok(Outcome::Error(fe))
                }
                Err(_) => Err(InvokeError::Exited(
                    "the runtime asked for its next event without answering this one".into(),
                )),
            },
            st = self.proc.child.wait() => Err(InvokeError::Exited(match st {
                Ok(st) => format!("the runtime exited ({st})"),
                Err(e) => format!("waiting for the runtime failed: {e}"),
            })),
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid
    }

    pub fn is_gone(&mut self) -> bool {
        self.server.0.is_finished() || self.proc.exited()
    }

    pub async fn exit_status(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        self.proc.exit_status(within).await
    }

    pub fn kill(self) {
        self.proc.kill();
    }
}

/// An X-Ray style trace header for one request (`Root=1-<time>-<96 bits>;...;Sampled=0`),
/// derived from the request id so that it is unique per request.
fn trace_id(request_id: &str) -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let hex: String = request_id.chars().filter(char::is_ascii_hexdigit).collect();
    let root = format!("{:0<24}", &hex[..hex.len().min(24)]);
    let parent = format!("{:0<16}", &hex[hex.len().saturating_sub(16)..]);
    format!("Root=1-{secs:08x}-{root};Parent={parent};Sampled=0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_context_travels_as_ascii_json() {
        let v = serde_json::json!({"custom": {"name": "Zo\u{e9} \u{1F525}"}});
        let text = ascii_json(&v);
        assert!(text.is_ascii(), "{text}");
        assert!(HeaderValue::from_str(&text).is_ok());
        assert_eq!(serde_json::from_str::<serde_json::Value>(&text).unwrap(), v);
    }

    #[test]
    fn trace_ids_have_lambdas_shape() {
        let t = trace_id("8476a536-e9f4-11e8-9739-2dfe598c3fcd");
        let root = t.split(';').next().unwrap();
        assert!(root.starts_with("Root=1-"), "{t}");
        assert_eq!(root.len(), "Root=1-".len() + 8 + 1 + 24, "{t}");
        assert!(t.ends_with(";Sampled=0"));
        // Hostile or short ids still give the right shape.
        assert_eq!(trace_id("").split(';').count(), 3);
    }

    #[test]
    fn error_documents_are_read_leniently() {
        let h = HeaderMap::new();
        let fe = function_error(
            &h,
            br#"{"errorMessage":"boom","errorType":"ValueError","stackTrace":["a","b"]}"#,
            "X",
        );
        assert_eq!(
            (fe.error_type.as_str(), fe.message.as_str()),
            ("ValueError", "boom")
        );
        assert_eq!(fe.traceback, vec!["a", "b"]);
        let mut h = HeaderMap::new();
        h.insert(
            "lambda-runtime-function-error-type",
            HeaderValue::from_static("Custom"),
        );
        let fe = function_error(&h, b"not json \xff", "X");
        assert_eq!(fe.error_type, "Custom");
        assert!(fe.message.starts_with("not json"));
        let fe = function_error(&HeaderMap::new(), b"", "Runtime.InitError");
        assert_eq!(fe.error_type, "Runtime.InitError");
    }
}
