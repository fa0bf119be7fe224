//! Lambda's event-invoke configuration: how a function's asynchronous invocations are
//! retried, how long they may wait, and the functions that get the record of each success
//! and failure (carried out by the node's event worker, `ember_node`'s `node/events.rs`).
//!
//! | method | path | Lambda operation |
//! |---|---|---|
//! | PUT, POST, GET, DELETE | /2019-09-25/functions/{name}/event-invoke-config | Put/Update/Get/DeleteFunctionEventInvokeConfig |
//! | GET | /2019-09-25/functions/{name}/event-invoke-config/list | ListFunctionEventInvokeConfigs |

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use ember_node::function::{EventInvoke, FunctionConfig, LATEST, function_arn};
use serde::Deserialize;

use super::{LambdaError, QualifierQuery, json_body, latest_of, read, redeploy};
use crate::AppState;

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct Destination {
    destination: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct DestinationConfig {
    on_success: Option<Destination>,
    on_failure: Option<Destination>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct Request {
    maximum_retry_attempts: Option<u32>,
    maximum_event_age_in_seconds: Option<u32>,
    destination_config: Option<DestinationConfig>,
}

/// The configuration as Lambda shows it.
fn shown(name: &str, e: &EventInvoke) -> serde_json::Value {
    let dest = |d: &Option<String>| match d {
        Some(d) => serde_json::json!({ "Destination": d }),
        None => serde_json::json!({}),
    };
    let mut v = serde_json::json!({
        "LastModified": e.updated_at,
        "FunctionArn": format!("{}:{LATEST}", function_arn(name)),
        "DestinationConfig": {
            "OnSuccess": dest(&e.on_success),
            "OnFailure": dest(&e.on_failure),
        },
    });
    if let Some(r) = e.max_retries {
        v["MaximumRetryAttempts"] = r.into();
    }
    if let Some(a) = e.max_age_s {
        v["MaximumEventAgeInSeconds"] = a.into();
    }
    v
}

/// Only `$LATEST`'s: a published version keeps the configuration it was published with.
fn check_qualifier(q: &QualifierQuery) -> Result<(), LambdaError> {
    match q.qualifier.as_deref() {
        None | Some(LATEST) => Ok(()),
        Some(other) => Err(LambdaError::invalid(format!(
            "Qualifier {other:?}: Ember keeps the event-invoke configuration of $LATEST only; a \
             published version has the one $LATEST had when it was published"
        ))),
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Put (`replace`) or Update: the request's settings over none or over the current ones.
async fn set(
    s: &AppState,
    raw: &str,
    q: &QualifierQuery,
    headers: &HeaderMap,
    body: Body,
    replace: bool,
) -> Result<Response, LambdaError> {
    let bytes = read(s, headers, body, 64 << 10, "FunctionEventInvokeConfig").await?;
    check_qualifier(q)?;
    let st = latest_of(s, raw)?;
    let req: Request = json_body(&bytes)?;
    // Put starts from nothing, Update from what there is; either takes what the request names.
    let mut e = match (replace, &st.record.config.event_invoke) {
        (false, Some(e)) => e.clone(),
        _ => EventInvoke::default(),
    };
    if let Some(r) = req.maximum_retry_attempts {
        e.max_retries = Some(r);
    }
    if let Some(a) = req.maximum_event_age_in_seconds {
        e.max_age_s = Some(a);
    }
    if let Some(d) = req.destination_config {
        let given = |d: Destination| d.destination.filter(|d| !d.is_empty());
        if let Some(x) = d.on_success {
            e.on_success = given(x);
        }
        if let Some(x) = d.on_failure {
            e.on_failure = given(x);
        }
    }
    e.updated_at = now_secs();
    e.validate()
        .map_err(|err| LambdaError::invalid(err.to_string()))?;
    for d in e.on_success.iter().chain(&e.on_failure) {
        let (name, q) = ember_node::function::parse_destination(d)
            .map_err(|err| LambdaError::invalid(err.to_string()))?;
        if name == st.record.name {
            return Err(LambdaError::invalid(
                "A function cannot be its own destination",
            ));
        }
        if s.node.resolve(&name, q.as_deref(), false).is_err() {
            return Err(LambdaError::invalid(format!(
                "The destination function {d} does not exist"
            )));
        }
    }
    let mut config: FunctionConfig = st.record.config.clone();
    config.event_invoke = Some(e.clone());
    redeploy(s, &st, config).await?;
    Ok(axum::Json(shown(&st.record.name, &e)).into_response())
}

/// `PUT .../event-invoke-config`: PutFunctionEventInvokeConfig (replaces).
pub(super) async fn put(
    State(s): State<AppState>,
    Path(raw): Path<String>,
    Query(q): Query<QualifierQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, LambdaError> {
    set(&s, &raw, &q, &headers, body, true).await
}

/// `POST .../event-invoke-config`: UpdateFunctionEventInvokeConfig (what it names).
pub(super) async fn update(
    State(s): State<AppState>,
    Path(raw): Path<String>,
    Query(q): Query<QualifierQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, LambdaError> {
    set(&s, &raw, &q, &headers, body, false).await
}

fn none_yet(name: &str) -> LambdaError {
    LambdaError::missing(format!(
        "The function {}:{LATEST} doesn't have an EventInvokeConfig",
        function_arn(name)
    ))
}

/// `GET .../event-invoke-config`: GetFunctionEventInvokeConfig.
pub(super) async fn get(
    State(s): State<AppState>,
    Path(raw): Path<String>,
    Query(q): Query<QualifierQuery>,
) -> Result<Response, LambdaError> {
    check_qualifier(&q)?;
    let st = latest_of(&s, &raw)?;
    let e = st
        .record
        .config
        .event_invoke
        .as_ref()
        .ok_or_else(|| none_yet(&st.record.name))?;
    Ok(axum::Json(shown(&st.record.name, e)).into_response())
}

/// `DELETE .../event-invoke-config`: DeleteFunctionEventInvokeConfig.
pub(super) async fn delete(
    State(s): State<AppState>,
    Path(raw): Path<String>,
    Query(q): Query<QualifierQuery>,
) -> Result<Response, LambdaError> {
    check_qualifier(&q)?;
    let st = latest_of(&s, &raw)?;
    if st.record.config.event_invoke.is_none() {
        return Err(none_yet(&st.record.name));
    }
    let mut config = st.record.config.clone();
    config.event_invoke = None;
    redeploy(&s, &st, config).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET .../event-invoke-config/list`: ListFunctionEventInvokeConfigs.
pub(super) async fn list(
    State(s): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Response, LambdaError> {
    let st = latest_of(&s, &raw)?;
    let configs: Vec<serde_json::Value> = st
        .record
        .config
        .event_invoke
        .iter()
        .map(|e| shown(&st.record.name, e))
        .collect();
    Ok(axum::Json(serde_json::json!({ "FunctionEventInvokeConfigs": configs })).into_response())
}
