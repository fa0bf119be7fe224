//! Lambda's provisioned concurrency: instances of a published version (or of the version an
//! alias names) kept started and ready, the node's `min_instances` (`ember_node`'s
//! `node/provisioned.rs`).
//!
//! | method | path | Lambda operation |
//! |---|---|---|
//! | PUT, GET, DELETE | /2019-09-30/functions/{name}/provisioned-concurrency?Qualifier= | Put/Get/DeleteProvisionedConcurrencyConfig |
//! | GET | /2019-09-30/functions/{name}/provisioned-concurrency?List=ALL | ListProvisionedConcurrencyConfigs |

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use ember_node::function::function_arn;
use ember_node::versions::{Qualifier, split_qualified};
use serde::Deserialize;

use super::{LambdaError, json_body, lambda_time, latest_of, parse_function_name, read};
use crate::AppState;

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct ProvisionedQuery {
    qualifier: Option<String>,
    list: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct PutRequest {
    provisioned_concurrent_executions: u32,
}

/// The published version (`name:N`) a request's qualifier names: a version, or the one an
/// alias names. `$LATEST` cannot have provisioned concurrency, as on Lambda.
fn version_of(s: &AppState, raw: &str, q: &ProvisionedQuery) -> Result<String, LambdaError> {
    let (name, qualifier) = parse_function_name(raw)?;
    let qualifier = qualifier.or(q.qualifier.clone());
    let parsed =
        Qualifier::parse(qualifier.as_deref()).map_err(|e| LambdaError::invalid(e.to_string()))?;
    if parsed == Qualifier::Latest {
        return Err(LambdaError::invalid(
            "Provisioned Concurrency Configs cannot be applied to unpublished function versions \
             ($LATEST): publish a version, or name an alias",
        ));
    }
    let internal = s.node.resolve(&name, qualifier.as_deref(), false)?;
    if split_qualified(&internal).1.is_none() {
        return Err(LambdaError::invalid(
            "Provisioned Concurrency Configs cannot be applied to an alias of $LATEST: point \
             the alias at a published version",
        ));
    }
    Ok(internal)
}

/// A version's provisioned concurrency as Lambda shows it.
fn shown(s: &AppState, internal: &str) -> Result<serde_json::Value, LambdaError> {
    let (wanted, live) = s.node.min_instances(internal)?;
    let ready = live.min(wanted as usize);
    let st = s.node.get(internal)?;
    Ok(serde_json::json!({
        "RequestedProvisionedConcurrentExecutions": wanted,
        "AvailableProvisionedConcurrentExecutions": ready,
        "AllocatedProvisionedConcurrentExecutions": ready,
        "Status": if ready >= wanted as usize { "READY" } else { "IN_PROGRESS" },
        "LastModified": lambda_time(st.record.updated_at),
        "FunctionArn": function_arn(internal),
    }))
}

fn not_configured(internal: &str) -> LambdaError {
    LambdaError::new(
        StatusCode::NOT_FOUND,
        "ProvisionedConcurrencyConfigNotFoundException",
        format!(
            "No Provisioned Concurrency Config found for this function: {}",
            function_arn(internal)
        ),
    )
}

/// `PUT`: PutProvisionedConcurrencyConfig.
pub(super) async fn put(
    State(s): State<AppState>,
    Path(raw): Path<String>,
    Query(q): Query<ProvisionedQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, LambdaError> {
    let bytes = read(
        &s,
        &headers,
        body,
        64 << 10,
        "PutProvisionedConcurrencyConfig",
    )
    .await?;
    let internal = version_of(&s, &raw, &q)?;
    let req: PutRequest = json_body(&bytes)?;
    if req.provisioned_concurrent_executions == 0 {
        return Err(LambdaError::invalid(
            "ProvisionedConcurrentExecutions must be at least 1 (delete the config for none)",
        ));
    }
    s.node
        .set_min_instances(&internal, req.provisioned_concurrent_executions)
        .await?;
    let mut v = shown(&s, &internal)?;
    if let Some(o) = v.as_object_mut() {
        o.remove("FunctionArn");
    }
    Ok((StatusCode::ACCEPTED, axum::Json(v)).into_response())
}

/// `GET`: GetProvisionedConcurrencyConfig, or with `List=ALL`
/// ListProvisionedConcurrencyConfigs.
pub(super) async fn get(
    State(s): State<AppState>,
    Path(raw): Path<String>,
    Query(q): Query<ProvisionedQuery>,
) -> Result<Response, LambdaError> {
    if q.list.as_deref() == Some("ALL") {
        let st = latest_of(&s, &raw)?;
        let mut configs = Vec::new();
        for v in s.node.versions(&st.record.name)? {
            if split_qualified(&v.record.name).1.is_some() && v.record.config.min_instances > 0 {
                configs.push(shown(&s, &v.record.name)?);
            }
        }
        return Ok(
            axum::Json(serde_json::json!({ "ProvisionedConcurrencyConfigs": configs }))
                .into_response(),
        );
    }
    let internal = version_of(&s, &raw, &q)?;
    if s.node.min_instances(&internal)?.0 == 0 {
        return Err(not_configured(&internal));
    }
    let mut v = shown(&s, &internal)?;
    if let Some(o) = v.as_object_mut() {
        o.remove("FunctionArn");
    }
    Ok(axum::Json(v).into_response())
}

/// `DELETE`: DeleteProvisionedConcurrencyConfig.
pub(super) async fn delete(
    State(s): State<AppState>,
    Path(raw): Path<String>,
    Query(q): Query<ProvisionedQuery>,
) -> Result<Response, LambdaError> {
    let internal = version_of(&s, &raw, &q)?;
    if s.node.min_instances(&internal)?.0 == 0 {
        return Err(LambdaError::missing(format!(
            "No Provisioned Concurrency Config found for this function: {}",
            function_arn(&internal)
        )));
    }
    s.node.set_min_instances(&internal, 0).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
