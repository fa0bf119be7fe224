//! The AWS Lambda surface: enough of Lambda's REST API (version 2015-03-31) for the AWS CLI
//! and boto3, pointed at Ember with `--endpoint-url`, to manage and invoke functions
//! unchanged.
//!
//! | method | path | Lambda operation |
//! |---|---|---|
//! | POST | /2015-03-31/functions | CreateFunction (`Code.ZipFile`) |
//! | GET | /2015-03-31/functions/ | ListFunctions (`Marker`, `MaxItems`) |
//! | GET, DELETE | /2015-03-31/functions/{name} | GetFunction, DeleteFunction |
//! | GET, PUT | /2015-03-31/functions/{name}/configuration | Get/UpdateFunctionConfiguration |
//! | PUT | /2015-03-31/functions/{name}/code | UpdateFunctionCode (`ZipFile`) |
//! | POST | /2015-03-31/functions/{name}/invocations | Invoke: RequestResponse, Event, DryRun |
//! | ... | /2015-03-31/functions/{name}/versions, .../aliases | versions and aliases (versions.rs) |
//!
//! A `Qualifier` (or `name:qualifier`) is `$LATEST`, a published version's number or an
//! alias, wherever Lambda takes one: GetFunction, GetFunctionConfiguration, Invoke,
//! DeleteFunction (a version). Updates and the function's settings take the function.
//!
//! Errors are Lambda's: the status, `x-amzn-ErrorType` and `{"Type", "message"}` that
//! botocore turns into `ResourceNotFoundException` and its kin. Requests may be signed
//! (SigV4); the signature is not checked: when the daemon has a token, the access key id
//! must be that token (see `auth` in routes.rs).
//!
//! Ember-only settings travel as tags at creation: `ember:cold-only` (`true`) and
//! `ember:network` (`host`).

use std::collections::BTreeMap;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post, put};
use base64::Engine;
use ember_node::function::{ACCOUNT, LATEST, Runtime, SnapshotPoint, function_arn};
use ember_node::versions::{Qualifier, split_qualified};
use ember_node::{
    FunctionConfig, FunctionStatus, InvokeOptions, InvokeOutcome, NodeError, NodeErrorKind,
};
use ember_sandbox::LimitReason;
use serde::Deserialize;

use crate::AppState;
use crate::error::error_chain;
use crate::routes::{ember_headers, read_body, task_failed};

mod event_invoke;
mod layers;
mod policy;
mod provisioned;
mod settings;
mod stream;
pub(crate) mod url;
mod versions;

/// Lambda's limits on invocation payloads.
pub const MAX_SYNC_PAYLOAD: usize = 6 * 1024 * 1024;
pub const MAX_ASYNC_PAYLOAD: usize = 1024 * 1024;
/// Lambda's limit on a zip uploaded directly (50 MB).
const MAX_ZIPPED: usize = 50 * 1024 * 1024;
/// `X-Amz-Log-Result` carries at most this much of the log's end.
const TAIL_BYTES: usize = 4096;

pub(crate) fn router() -> Router<AppState> {
    let r = Router::new()
        .route("/2015-03-31/functions", post(create).get(list))
        .route("/2015-03-31/functions/", post(create).get(list))
        .route(
            "/2015-03-31/functions/{name}",
            get(get_function).delete(delete_function),
        )
        .route(
            "/2015-03-31/functions/{name}/configuration",
            get(get_configuration).put(update_configuration),
        )
        .route("/2015-03-31/functions/{name}/code", put(update_code))
        .route("/2015-03-31/functions/{name}/invocations", post(invoke))
        .route(
            "/2021-11-15/functions/{name}/response-streaming-invocations",
            post(invoke_stream),
        )
        .route(
            "/2015-03-31/functions/{name}/policy",
            post(policy::add).get(policy::get),
        )
        .route(
            "/2015-03-31/functions/{name}/policy/{sid}",
            axum::routing::delete(policy::remove),
        )
        .route(
            "/2015-03-31/functions/{name}/versions",
            post(versions::publish).get(versions::list_versions),
        )
        .route(
            "/2015-03-31/functions/{name}/aliases",
            post(versions::create_alias).get(versions::list_aliases),
        )
        .route(
            "/2015-03-31/functions/{name}/aliases/{alias}",
            get(versions::get_alias)
                .put(versions::update_alias)
                .delete(versions::delete_alias),
        )
        .route(
            "/2019-09-25/functions/{name}/event-invoke-config",
            put(event_invoke::put)
                .post(event_invoke::update)
                .get(event_invoke::get)
                .delete(event_invoke::delete),
        )
        .route(
            "/2019-09-25/functions/{name}/event-invoke-config/list",
            get(event_invoke::list),
        )
        .route(
            "/2019-09-30/functions/{name}/provisioned-concurrency",
            put(provisioned::put)
                .get(provisioned::get)
                .delete(provisioned::delete),
        )
        .route("/2018-10-31/layers", get(layers::list))
        .route("/2018-10-31/layers/", get(layers::list))
        .route(
            "/2018-10-31/layers/{name}/versions",
            post(layers::publish).get(layers::list_versions),
        )
        .route(
            "/2018-10-31/layers/{name}/versions/{n}",
            get(layers::get).delete(layers::delete),
        )
        .route(
            "/2017-03-31/tags/{arn}",
            get(settings::list_tags)
                .post(settings::tag_resource)
                .delete(settings::untag_resource),
        )
        .route(
            "/2017-10-31/functions/{name}/concurrency",
            put(settings::put_concurrency).delete(settings::delete_concurrency),
        )
        .route(
            "/2019-09-30/functions/{name}/concurrency",
            get(settings::get_concurrency),
        )
        .route(
            "/2016-08-19/account-settings",
            get(settings::account_settings),
        )
        .route(
            "/2016-08-19/account-settings/",
            get(settings::account_settings),
        )
        .route(
            "/2021-10-31/functions/{name}/url",
            post(url::create)
                .put(url::update)
                .get(url::get)
                .delete(url::delete),
        )
        .route("/lambda-url/{name}", any(url::serve))
        .route("/lambda-url/{name}/", any(url::serve))
        .route("/lambda-url/{name}/{*path}", any(url::serve));
    // What Ember does not implement, in every API version, says so in the error botocore
    // reads.
    API_VERSIONS.iter().fold(r, |r, v| {
        r.route(&format!("{v}{{*rest}}"), any(unknown_operation))
    })
}

/// Lambda's API versions, each a path prefix of its operations.
const API_VERSIONS: [&str; 11] = [
    "/2015-03-31/",
    "/2016-08-19/",
    "/2017-03-31/",
    "/2017-10-31/",
    "/2018-10-31/",
    "/2019-09-25/",
    "/2019-09-30/",
    "/2020-04-22/",
    "/2020-06-30/",
    "/2021-10-31/",
    "/2021-11-15/",
];

/// On a cluster's node, a Lambda call that would change what the node serves (anything
/// but a read, an invocation or a function URL): refused, as `/v1`'s deploys are, since the
/// node's functions are the cluster's.
pub(crate) fn refused_in_cluster(method: &axum::http::Method, path: &str) -> Option<Response> {
    let invocation = path.ends_with("/invocations")
        || path.ends_with("/response-streaming-invocations")
        || path.starts_with(url::PREFIX);
    if method == axum::http::Method::GET || invocation || !is_lambda_path(path) {
        return None;
    }
    Some(
        LambdaError::new(
            StatusCode::CONFLICT,
            "ResourceConflictException",
            "this node belongs to a cluster: change functions through the cluster's gateway \
             (ember gateway), which every node follows",
        )
        .into_response(),
    )
}

/// Whether `path` is the Lambda API's (or a function URL's): its clients sign with SigV4
/// and read Lambda's errors.
pub(crate) fn is_lambda_path(path: &str) -> bool {
    API_VERSIONS.iter().any(|v| path.starts_with(v)) || path.starts_with(url::PREFIX)
}

/// A Lambda error response.
#[derive(Debug)]
pub(crate) struct LambdaError {
    status: StatusCode,
    error_type: &'static str,
    message: String,
    reason: Option<&'static str>,
}

impl LambdaError {
    fn new(status: StatusCode, error_type: &'static str, message: impl Into<String>) -> Self {
        LambdaError {
            status,
            error_type,
            message: message.into(),
            reason: None,
        }
    }

    fn invalid(message: impl Into<String>) -> Self {
        LambdaError::new(
            StatusCode::BAD_REQUEST,
            "InvalidParameterValueException",
            message,
        )
    }

    /// 404 `ResourceNotFoundException`.
    fn missing(message: impl Into<String>) -> Self {
        LambdaError::new(StatusCode::NOT_FOUND, "ResourceNotFoundException", message)
    }

    /// 409 `ResourceConflictException`.
    fn conflict(message: impl Into<String>) -> Self {
        LambdaError::new(StatusCode::CONFLICT, "ResourceConflictException", message)
    }

    fn not_found(name: &str) -> Self {
        LambdaError::missing(format!("Function not found: {}", function_arn(name)))
    }

    pub(crate) fn unauthorized() -> Self {
        LambdaError::new(
            StatusCode::FORBIDDEN,
            "UnrecognizedClientException",
            "The security token included in the request is invalid: with an Ember token set, \
             the access key id (AWS_ACCESS_KEY_ID) must be that token",
        )
    }
}

/// An error as Lambda's API answers it (`x-amzn-ErrorType`, `{"Type", "message"}`), for
/// a front end that serves Lambda's API on a node's behalf (a cluster's gateway).
pub fn error_response(
    status: StatusCode,
    error_type: &'static str,
    message: impl Into<String>,
) -> Response {
    LambdaError::new(status, error_type, message).into_response()
}

impl IntoResponse for LambdaError {
    fn into_response(self) -> Response {
        let kind = if self.status.is_server_error() {
            "Service"
        } else {
            "User"
        };
        let mut body = serde_json::json!({"Type": kind, "message": self.message});
        if let Some(r) = self.reason {
            body["Reason"] = r.into();
        }
        let mut resp = (self.status, axum::Json(body)).into_response();
        let hs = resp.headers_mut();
        hs.insert(
            "x-amzn-errortype",
            HeaderValue::from_static(self.error_type),
        );
        if let Ok(v) = HeaderValue::from_str(&uuid_v4()) {
            hs.insert("x-amzn-requestid", v);
        }
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            hs.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if matches!(
            self.status,
            StatusCode::PAYLOAD_TOO_LARGE
                | StatusCode::REQUEST_TIMEOUT
                | StatusCode::SERVICE_UNAVAILABLE
        ) {
            // The body was left unread: the connection cannot carry another request.
            hs.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

fn uuid_v4() -> String {
    uuid::Uuid::new_v4().to_string()
}

impl From<NodeError> for LambdaError {
    fn from(e: NodeError) -> LambdaError {
        let message = error_chain(&e);
        match (&e, e.kind()) {
            (NodeError::NotFound(name), _) => LambdaError::not_found(name),
            (_, NodeErrorKind::Conflict) => LambdaError::conflict(format!(
                "The operation cannot be performed at this time: {message}"
            )),
            (NodeError::Throttled { .. }, _) => LambdaError {
                status: StatusCode::TOO_MANY_REQUESTS,
                error_type: "TooManyRequestsException",
                message: format!("Rate Exceeded. {message}"),
                reason: Some("ReservedFunctionConcurrentInvocationLimitExceeded"),
            },
            (NodeError::Code(_), NodeErrorKind::BadRequest) => LambdaError::invalid(format!(
                "Could not unzip uploaded file. Please check your file, then try to upload \
                 again. ({message})"
            )),
            (_, NodeErrorKind::BadRequest | NodeErrorKind::Unprocessable) => {
                LambdaError::invalid(message)
            }
            (_, NodeErrorKind::NotFound) => LambdaError::missing(message),
            _ => {
                tracing::error!("a Lambda API request failed: {message}");
                LambdaError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "ServiceException",
                    message,
                )
            }
        }
    }
}

/// A `FunctionName` as Lambda takes it: a name, `name:qualifier`, or a full or partial ARN.
fn parse_function_name(raw: &str) -> Result<(String, Option<String>), LambdaError> {
    let parts: Vec<&str> = raw.split(':').collect();
    let (name, qualifier) = match parts.iter().position(|p| *p == "function") {
        Some(i) if i + 1 < parts.len() && parts.len() <= i + 3 => {
            (parts[i + 1], parts.get(i + 2).copied())
        }
        None if parts.len() <= 2 => (parts[0], parts.get(1).copied()),
        _ => {
            return Err(LambdaError::invalid(format!(
                "{raw:?} is not a function name, name:qualifier or function ARN"
            )));
        }
    };
    ember_node::function::validate_name(name).map_err(|e| LambdaError::invalid(e.to_string()))?;
    Ok((name.to_string(), qualifier.map(str::to_string)))
}

/// `2026-11-23T10:58:18.000+0000`, as Lambda writes `LastModified`.
fn lambda_time(unix: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix);
    let s = humantime::format_rfc3339_seconds(t).to_string();
    format!("{}.000+0000", s.trim_end_matches('Z'))
}

fn runtime_name(c: &FunctionConfig) -> String {
    c.runtime_name
        .clone()
        .unwrap_or_else(|| c.runtime.as_str().to_string())
}

/// A function's `RevisionId`: new at every change of its code or configuration.
fn revision_id(r: &ember_node::FunctionRecord) -> String {
    format!(
        "{}-{}",
        r.version,
        &r.code_hash[..r.code_hash.len().min(12)]
    )
}

/// Refuses an update whose `RevisionId` is not the function's current one, as Lambda does.
fn check_revision(r: &ember_node::FunctionRecord, given: Option<&str>) -> Result<(), LambdaError> {
    match given {
        Some(g) if g != revision_id(r) => Err(LambdaError::new(
            StatusCode::PRECONDITION_FAILED,
            "PreconditionFailedException",
            "The Revision Id provided does not match the latest Revision Id. Call the \
             GetFunction/GetAlias API to retrieve the latest Revision Id",
        )),
        _ => Ok(()),
    }
}

/// A function as Lambda's `FunctionConfiguration` describes it, on node `s`.
fn configuration(s: &AppState, st: &FunctionStatus) -> serde_json::Value {
    let r = &st.record;
    let c = &r.config;
    let (name, version) = split_qualified(&r.name);
    // A version is Pending while its snapshot is taken, as SnapStart's are.
    let (state, reason) = match (version, st.snapshotting) {
        (Some(_), true) => ("Pending", Some("Creating")),
        _ => ("Active", None),
    };
    let snapshots = c.runtime.restorable() && c.snapshot == SnapshotPoint::AfterInit;
    let mut v = serde_json::json!({
        "FunctionName": name,
        "FunctionArn": function_arn(&r.name),
        "Runtime": runtime_name(c),
        "Role": c.role.clone().unwrap_or_else(|| format!("arn:aws:iam::{ACCOUNT}:role/ember")),
        "Handler": c.handler,
        "CodeSize": r.code_size,
        "Description": c.description,
        "Timeout": c.timeout_s,
        "MemorySize": c.memory_mb,
        "LastModified": lambda_time(r.updated_at),
        "CodeSha256": r.code_sha256,
        "Version": version.unwrap_or(LATEST),
        "Environment": { "Variables": c.env },
        "TracingConfig": { "Mode": "PassThrough" },
        "RevisionId": revision_id(r),
        "State": state,
        "LastUpdateStatus": "Successful",
        "PackageType": "Zip",
        "Architectures": [std::env::consts::ARCH],
        // The size of its instances' /tmp (its own, or the node's).
        "EphemeralStorage": {
            "Size": c.tmp_mb.map_or(s.node.tmp_bytes() >> 20, u64::from)
        },
        "LoggingConfig": settings::logging(c, name),
        // Ember takes a snapshot of every published version at publish (and of $LATEST at
        // its first start), unless the function's snapshot point is off or later.
        "SnapStart": {
            "ApplyOn": if snapshots { "PublishedVersions" } else { "None" },
            "OptimizationStatus": if snapshots && version.is_some() { "On" } else { "Off" },
        },
    });
    if !c.layers.is_empty() {
        v["Layers"] = layers::shown(s, &c.layers);
    }
    if let Some(r) = reason {
        v["StateReasonCode"] = r.into();
        v["StateReason"] = "Its function snapshot is being taken".into();
    }
    v
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Environment {
    #[serde(default)]
    variables: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CodeLocation {
    zip_file: Option<String>,
    s3_bucket: Option<String>,
    image_uri: Option<String>,
}

/// CreateFunction's body; the settings Ember has no part for are refused unless unused
/// ([`settings::Unsupported`]).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CreateRequest {
    function_name: String,
    runtime: Option<String>,
    role: Option<String>,
    handler: Option<String>,
    #[serde(default)]
    code: CodeLocation,
    #[serde(default)]
    description: String,
    timeout: Option<u32>,
    memory_size: Option<u32>,
    environment: Option<Environment>,
    #[serde(default)]
    tags: BTreeMap<String, String>,
    package_type: Option<String>,
    #[serde(default)]
    architectures: Vec<String>,
    /// Publishes the new function's first version too.
    #[serde(default)]
    publish: bool,
    #[serde(default)]
    layers: Vec<String>,
    #[serde(flatten)]
    unsupported: settings::Unsupported,
}

/// The zip of a `Code` or `UpdateFunctionCode` request: only `ZipFile` is served.
fn zip_of(code: CodeLocation) -> Result<Vec<u8>, LambdaError> {
    if code.s3_bucket.is_some() || code.image_uri.is_some() {
        return Err(LambdaError::invalid(
            "Ember takes code as ZipFile only (--zip-file fileb://function.zip); S3 and \
             container images are not supported",
        ));
    }
    let b64 = code
        .zip_file
        .ok_or_else(|| LambdaError::invalid("ZipFile is required"))?;
    let zip = base64::engine::general_purpose::STANDARD
        .decode(b64.as_bytes())
        .map_err(|e| LambdaError::invalid(format!("ZipFile is not valid base64: {e}")))?;
    if zip.len() > MAX_ZIPPED {
        return Err(LambdaError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestEntityTooLargeException",
            format!(
                "Zipped size must be smaller than {MAX_ZIPPED} bytes for a direct upload (this \
                 one is {})",
                zip.len()
            ),
        ));
    }
    Ok(zip)
}

/// Packages a Lambda zip declares in its `requirements.txt`: the function's package set
/// (installed once per set, with its dependency image), for Python functions.
fn packages_of(
    s: &AppState,
    runtime: Runtime,
    code: &ember_node::StoredCode,
) -> Result<Vec<String>, LambdaError> {
    if runtime != Runtime::Python {
        return Ok(Vec::new());
    }
    Ok(s.node.code_requirements(code)?.unwrap_or_default())
}

fn parse_runtime(name: &str) -> Result<Runtime, LambdaError> {
    Runtime::parse(name).map_err(|_| {
        LambdaError::invalid(format!(
            "The runtime parameter of {name} is not supported: Ember runs python3.8 to \
             python3.13 (on the node's interpreter), nodejs18.x, nodejs20.x, nodejs22.x (on the \
             node's Node.js), provided, provided.al2, provided.al2023 \
             and native"
        ))
    })
}

fn check_architectures(a: &[String]) -> Result<(), LambdaError> {
    let here = match std::env::consts::ARCH {
        "aarch64" => "arm64",
        other => other,
    };
    match a.iter().find(|x| x.as_str() != here) {
        Some(x) => Err(LambdaError::invalid(format!(
            "this node runs {here} only, not {x}"
        ))),
        None => Ok(()),
    }
}

fn json_body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, LambdaError> {
    serde_json::from_slice(bytes).map_err(|e| {
        LambdaError::new(
            StatusCode::BAD_REQUEST,
            "InvalidRequestContentException",
            format!("Could not parse request body into json: {e}"),
        )
    })
}

async fn read(
    s: &AppState,
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    operation: &str,
) -> Result<Bytes, LambdaError> {
    read_body(s, headers, body, limit, "request")
        .await
        .map_err(|e| match e.status {
            StatusCode::PAYLOAD_TOO_LARGE => LambdaError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "RequestTooLargeException",
                format!("Request must be smaller than {limit} bytes for the {operation} operation"),
            ),
            StatusCode::REQUEST_TIMEOUT => LambdaError::new(
                StatusCode::REQUEST_TIMEOUT,
                "RequestTimeoutException",
                e.body.message,
            ),
            StatusCode::SERVICE_UNAVAILABLE => LambdaError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceException",
                e.body.message,
            ),
            _ => LambdaError::invalid(e.body.message),
        })
}

async fn create(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, LambdaError> {
    let bytes = read(&s, &headers, body, s.cfg.max_deploy_bytes, "CreateFunction").await?;
    let req: CreateRequest = json_body(&bytes)?;
    drop(bytes);
    let (name, _) = parse_function_name(&req.function_name)?;
    req.unsupported.check(&name)?;
    if req.package_type.as_deref().is_some_and(|p| p != "Zip") {
        return Err(LambdaError::invalid(
            "Ember runs zip packages only (PackageType Zip)",
        ));
    }
    check_architectures(&req.architectures)?;
    let runtime_given = req
        .runtime
        .ok_or_else(|| LambdaError::invalid("Runtime is required for a Zip package"))?;
    let runtime = parse_runtime(&runtime_given)?;
    let handler = req
        .handler
        .ok_or_else(|| LambdaError::invalid("Handler is required for a Zip package"))?;
    if s.node.get(&name).is_ok() {
        return Err(LambdaError::conflict(format!(
            "Function already exist: {name}"
        )));
    }
    let mut config: FunctionConfig =
        serde_json::from_value(serde_json::json!({ "handler": handler }))
            .map_err(|e| LambdaError::invalid(e.to_string()))?;
    config.runtime = runtime;
    config.runtime_name = Some(runtime_given);
    // Lambda's defaults, not Ember's.
    config.timeout_s = req.timeout.unwrap_or(3);
    config.memory_mb = req.memory_size.unwrap_or(128);
    // Without reserved concurrency, as many instances as the node holds for this function.
    config.max_instances = s.node.capacity_instances(config.memory_mb);
    config.env = req.environment.unwrap_or_default().variables;
    config.description = req.description;
    req.unsupported.apply_logging(&mut config);
    // Lambda's /tmp: 512 MB unless the request says otherwise.
    config.tmp_mb = Some(512);
    req.unsupported.apply_storage(&mut config)?;
    config.role = req.role;
    config.layers = layers::given(req.layers)?;
    settings::apply_tags(&mut config, &req.tags)?;
    config
        .validate()
        .map_err(|e| LambdaError::invalid(e.to_string()))?;
    let zip = zip_of(req.code)?;
    let code = s.node.store_code(zip).await?;
    // The deploy checks the configuration again, packages included.
    config.packages = packages_of(&s, config.runtime, &code)?;
    let rec = deploy_record(&s, name, config, Some(code), None).await?;
    if !req.publish {
        let made = configuration(&s, &s.node.get(&rec.name)?);
        return Ok((StatusCode::CREATED, axum::Json(made)).into_response());
    }
    let version = versions::publish_latest(&s, &rec, None, None).await?;
    Ok((StatusCode::CREATED, axum::Json(version)).into_response())
}

/// One page of a Lambda list: `items` (each keyed by its marker) after `marker`, at most
/// `max_items` (1 to `limit`, 50 when none), as `{key: [...], "NextMarker"}`.
fn paged(
    key: &str,
    items: Vec<(String, serde_json::Value)>,
    marker: Option<&str>,
    max_items: Option<usize>,
    limit: usize,
) -> Result<Response, LambdaError> {
    let max = max_items.unwrap_or(50);
    if !(1..=limit).contains(&max) {
        return Err(LambdaError::invalid(format!(
            "MaxItems must be between 1 and {limit}"
        )));
    }
    let start = match marker {
        Some(m) => match items.iter().position(|(k, _)| k == m) {
            Some(i) => i + 1,
            None => return Err(LambdaError::invalid(format!("Marker {m:?} is not valid"))),
        },
        None => 0,
    };
    let rest: Vec<_> = items.into_iter().skip(start).collect();
    let next = (rest.len() > max).then(|| rest[max - 1].0.clone());
    let page: Vec<serde_json::Value> = rest.into_iter().take(max).map(|(_, v)| v).collect();
    let mut body = serde_json::json!({ key: page });
    if let Some(m) = next {
        body["NextMarker"] = m.into();
    }
    Ok(axum::Json(body).into_response())
}

fn lambda_task_failed(what: &str, e: tokio::task::JoinError) -> LambdaError {
    let api = task_failed(what, e);
    LambdaError::new(api.status, "ServiceException", api.body.message)
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListQuery {
    marker: Option<String>,
    max_items: Option<usize>,
    /// `ALL`: the published versions too.
    function_version: Option<String>,
}

async fn list(
    State(s): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Result<Response, LambdaError> {
    let max = q.max_items.unwrap_or(50);
    if !(1..=10_000).contains(&max) {
        return Err(LambdaError::invalid("MaxItems must be between 1 and 10000"));
    }
    let every_version = match q.function_version.as_deref() {
        None => false,
        Some("ALL") => true,
        Some(v) => {
            return Err(LambdaError::invalid(format!(
                "FunctionVersion {v:?} must be ALL"
            )));
        }
    };
    let mut all = s.node.list();
    all.retain(|f| every_version || split_qualified(&f.record.name).1.is_none());
    let after: Vec<&FunctionStatus> = all
        .iter()
        .filter(|f| {
            q.marker
                .as_deref()
                .is_none_or(|m| f.record.name.as_str() > m)
        })
        .collect();
    let page: Vec<serde_json::Value> = after
        .iter()
        .take(max)
        .map(|f| configuration(&s, f))
        .collect();
    let mut body = serde_json::json!({ "Functions": page });
    if after.len() > max {
        body["NextMarker"] = after[max - 1].record.name.clone().into();
    }
    Ok(axum::Json(body).into_response())
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct QualifierQuery {
    qualifier: Option<String>,
}

/// Function `raw` (a name, `name:qualifier` or an ARN) with its qualifier (or `q`):
/// `$LATEST`, a published version, or the version an alias names.
fn status_of(s: &AppState, raw: &str, q: Option<&str>) -> Result<FunctionStatus, LambdaError> {
    let (name, qualifier) = parse_function_name(raw)?;
    let served = s.node.resolve(&name, qualifier.as_deref().or(q), false)?;
    Ok(s.node.get(&served)?)
}

/// Function `raw` itself (`$LATEST`): what updates and the function's own settings take.
fn latest_of(s: &AppState, raw: &str) -> Result<FunctionStatus, LambdaError> {
    let (name, qualifier) = parse_function_name(raw)?;
    if let Some(q) = qualifier.filter(|q| q != LATEST) {
        return Err(LambdaError::invalid(format!(
            "this operation applies to the function, not to its version or alias {q:?}: give \
             its name or unqualified ARN"
        )));
    }
    Ok(s.node.get(&name)?)
}

async fn get_function(
    State(s): State<AppState>,
    Path(raw): Path<String>,
    Query(q): Query<QualifierQuery>,
) -> Result<Response, LambdaError> {
    let st = status_of(&s, &raw, q.qualifier.as_deref())?;
    Ok(axum::Json(serde_json::json!({
        "Configuration": configuration(&s, &st),
        // The code lives unpacked on the node; there is no archive to download.
        "Code": { "RepositoryType": "Ember" },
        "Tags": settings::tags(&st.record.config),
    }))
    .into_response())
}

async fn get_configuration(
    State(s): State<AppState>,
    Path(raw): Path<String>,
    Query(q): Query<QualifierQuery>,
) -> Result<Response, LambdaError> {
    let st = status_of(&s, &raw, q.qualifier.as_deref())?;
    Ok(axum::Json(configuration(&s, &st)).into_response())
}

/// DeleteFunction: the function with its versions and aliases, or (with a qualifier) one
/// published version.
async fn delete_function(
    State(s): State<AppState>,
    Path(raw): Path<String>,
    Query(q): Query<QualifierQuery>,
) -> Result<Response, LambdaError> {
    let (name, qualifier) = parse_function_name(&raw)?;
    let target = match Qualifier::parse(qualifier.as_deref().or(q.qualifier.as_deref()))
        .map_err(|e| LambdaError::invalid(e.to_string()))?
    {
        Qualifier::Latest if qualifier.is_none() && q.qualifier.is_none() => name,
        Qualifier::Latest => {
            return Err(LambdaError::invalid(
                "$LATEST version cannot be deleted without deleting the function",
            ));
        }
        Qualifier::Version(n) => ember_node::versions::qualified(&name, n),
        Qualifier::Alias(_) => {
            return Err(LambdaError::invalid(
                "Deletion of aliases is not supported through DeleteFunction: use DeleteAlias",
            ));
        }
    };
    s.node.delete(&target).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct UpdateConfiguration {
    runtime: Option<String>,
    role: Option<String>,
    handler: Option<String>,
    description: Option<String>,
    timeout: Option<u32>,
    memory_size: Option<u32>,
    environment: Option<Environment>,
    revision_id: Option<String>,
    layers: Option<Vec<String>>,
    #[serde(flatten)]
    unsupported: settings::Unsupported,
}

/// Deploys `config`, `st`'s configuration changed (its code kept), unless the function
/// changed since `st` was read (409); returns the record it made.
async fn redeploy(
    s: &AppState,
    st: &FunctionStatus,
    config: FunctionConfig,
) -> Result<ember_node::FunctionRecord, LambdaError> {
    let version = Some(st.record.version);
    deploy_record(s, st.record.name.clone(), config, None, version).await
}

/// Deploys `config` (and `code`, if new) as `name`, in a task of its own so that a client
/// that goes away does not leave half a deploy. With `expected` (the version a
/// read-modify-write request read), refused with 409 if the function changed meanwhile: two
/// updates from the same state do not both land.
async fn deploy_record(
    s: &AppState,
    name: String,
    config: FunctionConfig,
    code: Option<ember_node::StoredCode>,
    expected: Option<u64>,
) -> Result<ember_node::FunctionRecord, LambdaError> {
    let node = s.node.clone();
    let (rec, _) = tokio::spawn(async move {
        node.deploy_expecting(&name, config, code, &|_| {}, expected)
            .await
    })
    .await
    .map_err(|e| lambda_task_failed("the deploy", e))??;
    Ok(rec)
}

async fn update_configuration(
    State(s): State<AppState>,
    Path(raw): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, LambdaError> {
    // The body first: an answer sent before it is read would cost the client its connection.
    let bytes = read(&s, &headers, body, 1 << 20, "UpdateFunctionConfiguration").await?;
    let st = latest_of(&s, &raw)?;
    let req: UpdateConfiguration = json_body(&bytes)?;
    check_revision(&st.record, req.revision_id.as_deref())?;
    req.unsupported.check(&st.record.name)?;
    let mut config = st.record.config.clone();
    req.unsupported.apply_logging(&mut config);
    req.unsupported.apply_storage(&mut config)?;
    if let Some(r) = req.runtime {
        config.runtime = parse_runtime(&r)?;
        config.runtime_name = Some(r);
    }
    if let Some(h) = req.handler {
        config.handler = h;
    }
    if let Some(d) = req.description {
        config.description = d;
    }
    if let Some(r) = req.role {
        config.role = Some(r);
    }
    config.timeout_s = req.timeout.unwrap_or(config.timeout_s);
    let memory_mb = req.memory_size.unwrap_or(config.memory_mb);
    // Without reserved concurrency the limit follows the memory size.
    if memory_mb != config.memory_mb && !config.concurrency_reserved {
        config.max_instances = s.node.capacity_instances(memory_mb);
    }
    config.memory_mb = memory_mb;
    if let Some(env) = req.environment {
        config.env = env.variables;
    }
    if let Some(l) = req.layers {
        config.layers = layers::given(l)?;
    }
    let rec = redeploy(&s, &st, config).await?;
    Ok(axum::Json(configuration(&s, &s.node.get(&rec.name)?)).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct UpdateCode {
    zip_file: Option<String>,
    s3_bucket: Option<String>,
    image_uri: Option<String>,
    #[serde(default)]
    dry_run: bool,
    #[serde(default)]
    architectures: Vec<String>,
    #[serde(default)]
    publish: bool,
    revision_id: Option<String>,
}

async fn update_code(
    State(s): State<AppState>,
    Path(raw): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, LambdaError> {
    let bytes = read(
        &s,
        &headers,
        body,
        s.cfg.max_deploy_bytes,
        "UpdateFunctionCode",
    )
    .await?;
    let st = latest_of(&s, &raw)?;
    let req: UpdateCode = json_body(&bytes)?;
    drop(bytes);
    check_revision(&st.record, req.revision_id.as_deref())?;
    check_architectures(&req.architectures)?;
    let zip = zip_of(CodeLocation {
        zip_file: req.zip_file,
        s3_bucket: req.s3_bucket,
        image_uri: req.image_uri,
    })?;
    let code = s.node.store_code(zip).await?;
    // The new zip's requirements.txt is the function's package set now (none without one).
    let mut config = st.record.config.clone();
    config.packages = packages_of(&s, config.runtime, &code)?;
    config
        .validate()
        .map_err(|e| LambdaError::invalid(e.to_string()))?;
    if req.dry_run {
        return Ok(axum::Json(configuration(&s, &st)).into_response());
    }
    let version = Some(st.record.version);
    let rec = deploy_record(&s, st.record.name.clone(), config, Some(code), version).await?;
    if !req.publish {
        return Ok(axum::Json(configuration(&s, &s.node.get(&rec.name)?)).into_response());
    }
    // What this update deployed: refused if another change came between.
    let version = versions::publish_latest(&s, &rec, None, Some(rec.code_sha256.clone())).await?;
    Ok(axum::Json(version).into_response())
}

async fn unknown_operation() -> LambdaError {
    LambdaError::new(
        StatusCode::NOT_FOUND,
        "UnknownOperationException",
        "Ember does not implement this Lambda operation; see docs/lambda.md for those it does",
    )
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum InvocationType {
    RequestResponse,
    Event,
    DryRun,
}

async fn invoke(
    State(s): State<AppState>,
    Path(raw): Path<String>,
    Query(q): Query<QualifierQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, LambdaError> {
    invoke_as(&s, &raw, &q, &headers, body, false).await
}

/// `POST /2021-11-15/functions/{name}/response-streaming-invocations`:
/// InvokeWithResponseStream (see stream.rs).
async fn invoke_stream(
    State(s): State<AppState>,
    Path(raw): Path<String>,
    Query(q): Query<QualifierQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, LambdaError> {
    invoke_as(&s, &raw, &q, &headers, body, true).await
}

/// Invoke, answered as Invoke does or (`streamed`) as InvokeWithResponseStream does.
async fn invoke_as(
    s: &AppState,
    raw: &str,
    q: &QualifierQuery,
    headers: &HeaderMap,
    body: Body,
    streamed: bool,
) -> Result<Response, LambdaError> {
    // Only the name it is served under: an invocation does not build the function's whole
    // status. An alias with routing picks its version here.
    let (name, qualifier) = parse_function_name(raw)?;
    let name = s
        .node
        .resolve(&name, qualifier.as_deref().or(q.qualifier.as_deref()), true)?;
    let header_str = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    let kind = match header_str("x-amz-invocation-type") {
        None | Some("RequestResponse") => InvocationType::RequestResponse,
        Some("Event") => InvocationType::Event,
        Some("DryRun") => InvocationType::DryRun,
        Some(other) => {
            return Err(LambdaError::invalid(format!(
                "X-Amz-Invocation-Type {other:?} must be RequestResponse, Event or DryRun"
            )));
        }
    };
    let tail = match header_str("x-amz-log-type") {
        None | Some("None") => false,
        Some("Tail") => true,
        Some(other) => {
            return Err(LambdaError::invalid(format!(
                "X-Amz-Log-Type {other:?} must be None or Tail"
            )));
        }
    };
    let client_context = client_context(header_str("x-amz-client-context"))?;
    if streamed && kind == InvocationType::Event {
        return Err(LambdaError::invalid(
            "InvokeWithResponseStream takes RequestResponse or DryRun; use Invoke for Event",
        ));
    }
    let limit = match kind {
        InvocationType::Event => MAX_ASYNC_PAYLOAD,
        _ => MAX_SYNC_PAYLOAD.min(s.cfg.max_event_bytes),
    };
    let bytes = read(s, headers, body, limit, "Invoke").await?;
    let event = crate::event::check(bytes).map_err(|e| {
        LambdaError::new(
            StatusCode::BAD_REQUEST,
            "InvalidRequestContentException",
            format!("Could not parse request body into json: {e}"),
        )
    })?;
    let version = split_qualified(&name).1.unwrap_or(LATEST).to_string();
    match kind {
        InvocationType::DryRun => Ok(StatusCode::NO_CONTENT.into_response()),
        InvocationType::Event => {
            let id = s.node.enqueue(&name, event.to_vec()).await?;
            let mut resp = StatusCode::ACCEPTED.into_response();
            if let Ok(v) = HeaderValue::from_str(&id) {
                resp.headers_mut().insert("x-amzn-requestid", v);
            }
            Ok(resp)
        }
        InvocationType::RequestResponse
            if !streamed
                && headers
                    .get(crate::types::forwarded::REQUEST)
                    .is_some_and(|v| v == "1") =>
        {
            // A cluster gateway's: it learns when the handler starts (`types::forwarded`).
            let node = s.node.clone();
            Ok(crate::routes::framed(move |running| async move {
                let opts = InvokeOptions {
                    tail,
                    request_id: None,
                    no_queue: true,
                    client_context,
                    running: Some(running),
                };
                match node.invoke_with(&name, &event, opts).await {
                    Ok(inv) => invocation_response(inv, &version).into_response(),
                    Err(e) => LambdaError::from(e).into_response(),
                }
            }))
        }
        InvocationType::RequestResponse => {
            let node = s.node.clone();
            // Lambda answers a synchronous call over the function's concurrency with 429 at
            // once; Ember's own API queues (`--queue-depth`).
            let opts = InvokeOptions {
                tail,
                request_id: None,
                no_queue: true,
                client_context,
                running: None,
            };
            // In a task of its own: a caller that goes away does not cancel the invocation.
            let inv = tokio::spawn(async move { node.invoke_with(&name, &event, opts).await })
                .await
                .map_err(|e| lambda_task_failed("the invocation", e))??;
            match streamed {
                true => stream::response(inv, &version),
                false => invocation_response(inv, &version),
            }
        }
    }
}

/// The Invoke API's `X-Amz-Client-Context`: base64 of a JSON object, at most 3583 bytes.
fn client_context(header: Option<&str>) -> Result<Option<serde_json::Value>, LambdaError> {
    let Some(text) = header else {
        return Ok(None);
    };
    if text.len() > 3583 {
        return Err(LambdaError::invalid(
            "X-Amz-Client-Context must be at most 3583 bytes",
        ));
    }
    let bad = || LambdaError::invalid("X-Amz-Client-Context must be a base64-encoded JSON object");
    let raw = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|_| bad())?;
    match serde_json::from_slice::<serde_json::Value>(&raw) {
        Ok(v @ serde_json::Value::Object(_)) => Ok(Some(v)),
        _ => Err(bad()),
    }
}

/// What the caller gets: the result, or Lambda's error document for a failure of the
/// function; an instance the node could not start is the service's error.
fn lambda_body(
    inv: &mut ember_node::Invocation,
) -> Result<Result<Vec<u8>, serde_json::Value>, LambdaError> {
    let id = &inv.request_id;
    let doc = |t: &str, m: String| serde_json::json!({"errorType": t, "errorMessage": m});
    let outcome = std::mem::replace(&mut inv.outcome, InvokeOutcome::Ok(Vec::new()));
    Ok(Err(match outcome {
        // Lambda's cap on a synchronous response (the Runtime API's own, for `provided`).
        InvokeOutcome::Ok(payload) if payload.len() > MAX_SYNC_PAYLOAD => doc(
            "Function.ResponseSizeTooLarge",
            format!(
                "Response payload size exceeded maximum allowed payload size ({MAX_SYNC_PAYLOAD} \
                 bytes)."
            ),
        ),
        InvokeOutcome::Ok(payload) => return Ok(Ok(payload)),
        // Not the function's failure: the service's.
        InvokeOutcome::StartFailed(msg) => {
            return Err(LambdaError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "ServiceException",
                format!("RequestId: {id} Error: the node could not start an instance: {msg}"),
            ));
        }
        InvokeOutcome::HandlerError(fe) | InvokeOutcome::InitError(fe) => serde_json::json!({
            "errorMessage": fe.message,
            "errorType": fe.error_type,
            "stackTrace": fe.traceback,
            "requestId": id,
        }),
        InvokeOutcome::Timeout(d) => doc(
            "Sandbox.Timedout",
            format!(
                "RequestId: {id} Error: Task timed out after {:.2} seconds",
                d.as_secs_f64()
            ),
        ),
        InvokeOutcome::InitTimeout(d) => doc(
            "Sandbox.Timedout",
            format!(
                "RequestId: {id} Error: the instance's initialisation timed out after {:.2} seconds",
                d.as_secs_f64()
            ),
        ),
        InvokeOutcome::Limit(LimitReason::Oom) => doc(
            "Runtime.OutOfMemory",
            format!(
                "RequestId: {id} Error: Runtime exited with error: signal: killed (out of memory: the function's MemorySize)"
            ),
        ),
        InvokeOutcome::Limit(LimitReason::Pids) => doc(
            "Runtime.ExitError",
            format!(
                "RequestId: {id} Error: Runtime exited: the function reached its limit of processes and threads"
            ),
        ),
        InvokeOutcome::Limit(LimitReason::Seccomp) => doc(
            "Runtime.ExitError",
            format!(
                "RequestId: {id} Error: Runtime exited with error: signal: bad system call (the sandbox forbids it)"
            ),
        ),
        InvokeOutcome::Crashed(msg) => doc(
            "Runtime.ExitError",
            format!("RequestId: {id} Error: Runtime exited: {msg}"),
        ),
    }))
}

fn invocation_response(
    mut inv: ember_node::Invocation,
    version: &str,
) -> Result<Response, LambdaError> {
    let (body, failed) = match lambda_body(&mut inv)? {
        Ok(payload) => (payload, false),
        Err(doc) => (serde_json::to_vec(&doc).unwrap_or_default(), true),
    };
    let mut resp = (StatusCode::OK, body).into_response();
    let hs = resp.headers_mut();
    hs.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    ember_headers(hs, &inv);
    let mut put = |n: &'static str, v: &str| {
        if let Ok(v) = HeaderValue::from_str(v) {
            hs.insert(n, v);
        }
    };
    put("x-amzn-requestid", &inv.request_id);
    put("x-amz-executed-version", version);
    if failed {
        put("x-amz-function-error", "Unhandled");
    }
    if let Some(tail) = log_result(&inv) {
        put("x-amz-log-result", &tail);
    }
    Ok(resp)
}

/// `LogType: Tail`'s `LogResult`: the invocation's log as Lambda shows it, its last 4 KB,
/// base64.
fn log_result(inv: &ember_node::Invocation) -> Option<String> {
    let lines = inv.log_lines.as_ref()?;
    let log = crate::format::lambda_log(inv, lines);
    let b = log.as_bytes();
    let tail = &b[b.len().saturating_sub(TAIL_BYTES)..];
    Some(base64::engine::general_purpose::STANDARD.encode(tail))
}

/// Whether a request's `Authorization` names `token` as a SigV4 access key id
/// (`AWS4-HMAC-SHA256 Credential=<key id>/<date>/<region>/lambda/aws4_request, ...`).
pub(crate) fn sigv4_key_id(authorization: &[u8]) -> Option<&[u8]> {
    let rest = authorization.strip_prefix(b"AWS4-HMAC-SHA256 ")?;
    let at = rest.windows(11).position(|w| w == b"Credential=")?;
    let cred = &rest[at + 11..];
    let end = cred.iter().position(|&c| c == b'/')?;
    Some(&cred[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn function_names_arns_and_qualifiers() {
        let ok = |raw: &str| parse_function_name(raw).unwrap();
        assert_eq!(ok("hello"), ("hello".into(), None));
        assert_eq!(ok("hello:7"), ("hello".into(), Some("7".into())));
        assert_eq!(
            ok("arn:aws:lambda:us-east-1:000000000000:function:hello"),
            ("hello".into(), None)
        );
        assert_eq!(
            ok("arn:aws:lambda:us-east-1:000000000000:function:hello:$LATEST"),
            ("hello".into(), Some("$LATEST".into()))
        );
        assert_eq!(ok("000000000000:function:hello"), ("hello".into(), None));
        assert_eq!(ok("My_Fn-1"), ("My_Fn-1".into(), None));
        for bad in [
            "",
            "Hello.World",
            "a:b:c",
            "arn:aws:lambda:x:y:function",
            "a/b",
            "a\u{0}",
        ] {
            let e = parse_function_name(bad).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{bad:?}");
        }
    }

    #[test]
    fn sigv4_credentials_name_the_key_id() {
        let h = b"AWS4-HMAC-SHA256 Credential=tok123/20261123/us-east-1/lambda/aws4_request, SignedHeaders=host, Signature=ab";
        assert_eq!(sigv4_key_id(h), Some(&b"tok123"[..]));
        assert_eq!(sigv4_key_id(b"Bearer x"), None);
        assert_eq!(sigv4_key_id(b"AWS4-HMAC-SHA256 Credential=nokeyend"), None);
        assert_eq!(sigv4_key_id(b"AWS4-HMAC-SHA256 "), None);
    }

    #[test]
    fn last_modified_has_lambdas_shape() {
        assert_eq!(lambda_time(0), "1970-01-01T00:00:00.000+0000");
    }
}
