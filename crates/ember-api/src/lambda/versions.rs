//! Lambda's published versions and aliases (the node's rules are in `ember_node::versions`).
//!
//! | method | path | Lambda operation |
//! |---|---|---|
//! | POST, GET | /2015-03-31/functions/{name}/versions | PublishVersion, ListVersionsByFunction |
//! | POST, GET | /2015-03-31/functions/{name}/aliases | CreateAlias, ListAliases |
//! | GET, PUT, DELETE | /2015-03-31/functions/{name}/aliases/{alias} | Get/Update/DeleteAlias |

use std::collections::BTreeMap;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use ember_node::AliasChange;
use ember_node::function::{LATEST, function_arn};
use ember_node::versions::Alias;
use serde::Deserialize;

use super::{LambdaError, configuration, json_body, latest_of, read};
use crate::AppState;

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct PublishRequest {
    code_sha256: Option<String>,
    description: Option<String>,
    revision_id: Option<String>,
}

/// `POST .../versions`: PublishVersion.
pub(super) async fn publish(
    State(s): State<AppState>,
    Path(raw): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, LambdaError> {
    let bytes = read(&s, &headers, body, 64 << 10, "PublishVersion").await?;
    let st = latest_of(&s, &raw)?;
    let req: PublishRequest = if bytes.is_empty() {
        PublishRequest::default()
    } else {
        json_body(&bytes)?
    };
    super::check_revision(&st.record, req.revision_id.as_deref())?;
    let version = publish_latest(&s, &st.record, req.description, req.code_sha256).await?;
    Ok((StatusCode::CREATED, axum::Json(version)).into_response())
}

/// Publishes `rec` (the function's `$LATEST` as read, or as just deployed) and returns the
/// version's configuration; refused if the function changed since.
pub(super) async fn publish_latest(
    s: &AppState,
    rec: &ember_node::FunctionRecord,
    description: Option<String>,
    code_sha256: Option<String>,
) -> Result<serde_json::Value, LambdaError> {
    let node = s.node.clone();
    let (name, expected) = (rec.name.clone(), rec.version);
    // In a task of its own: a client that goes away does not leave half a publish.
    let version = tokio::spawn(async move {
        node.publish(&name, description, Some(expected), code_sha256.as_deref())
            .await
    })
    .await
    .map_err(|e| super::lambda_task_failed("the publish", e))??;
    Ok(configuration(s, &version))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct Page {
    marker: Option<String>,
    max_items: Option<usize>,
    function_version: Option<String>,
}

impl Page {
    fn answer(
        &self,
        key: &str,
        items: Vec<(String, serde_json::Value)>,
    ) -> Result<Response, LambdaError> {
        super::paged(key, items, self.marker.as_deref(), self.max_items, 10_000)
    }
}

/// `GET .../versions`: ListVersionsByFunction, `$LATEST` first.
pub(super) async fn list_versions(
    State(s): State<AppState>,
    Path(raw): Path<String>,
    Query(q): Query<Page>,
) -> Result<Response, LambdaError> {
    let st = latest_of(&s, &raw)?;
    let items = s
        .node
        .versions(&st.record.name)?
        .iter()
        .map(|v| {
            let c = configuration(&s, v);
            (c["Version"].as_str().unwrap_or(LATEST).to_string(), c)
        })
        .collect();
    q.answer("Versions", items)
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct RoutingConfig {
    #[serde(default)]
    additional_version_weights: BTreeMap<String, f64>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct AliasRequest {
    /// CreateAlias's; UpdateAlias names the alias in its path.
    name: Option<String>,
    function_version: Option<String>,
    description: Option<String>,
    routing_config: Option<RoutingConfig>,
    revision_id: Option<String>,
}

/// An alias as Lambda's `AliasConfiguration` shows it.
fn alias_json(a: &Alias) -> serde_json::Value {
    let mut v = serde_json::json!({
        "AliasArn": function_arn(&format!("{}:{}", a.function, a.name)),
        "Name": a.name,
        "FunctionVersion": a.version,
        "Description": a.description,
        "RevisionId": alias_revision(a),
    });
    if !a.weights.is_empty() {
        v["RoutingConfig"] = serde_json::json!({ "AdditionalVersionWeights": a.weights });
    }
    v
}

/// An alias's `RevisionId`: new at every change.
fn alias_revision(a: &Alias) -> String {
    format!("{}-{}", a.revision, a.name)
}

/// The alias revision a `RevisionId` names, refused (412, as Lambda) unless it is `a`'s.
fn check_alias_revision(a: &Alias, given: Option<&str>) -> Result<Option<u64>, LambdaError> {
    match given {
        None => Ok(None),
        Some(g) if g == alias_revision(a) => Ok(Some(a.revision)),
        Some(_) => Err(LambdaError::new(
            StatusCode::PRECONDITION_FAILED,
            "PreconditionFailedException",
            "The Revision Id provided does not match the latest Revision Id. Call the GetAlias \
             API to retrieve the latest Revision Id",
        )),
    }
}

/// `POST .../aliases`: CreateAlias.
pub(super) async fn create_alias(
    State(s): State<AppState>,
    Path(raw): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, LambdaError> {
    let bytes = read(&s, &headers, body, 64 << 10, "CreateAlias").await?;
    let st = latest_of(&s, &raw)?;
    let req: AliasRequest = json_body(&bytes)?;
    let name = req
        .name
        .ok_or_else(|| LambdaError::invalid("Name is required"))?;
    let version = req
        .function_version
        .ok_or_else(|| LambdaError::invalid("FunctionVersion is required"))?;
    let change = AliasChange {
        version: Some(version),
        description: req.description,
        weights: req.routing_config.map(|r| r.additional_version_weights),
        expected_revision: None,
    };
    let a = s
        .node
        .put_alias(&st.record.name, &name, change, true)
        .await?;
    Ok((StatusCode::CREATED, axum::Json(alias_json(&a))).into_response())
}

/// `PUT .../aliases/{alias}`: UpdateAlias.
pub(super) async fn update_alias(
    State(s): State<AppState>,
    Path((raw, alias)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, LambdaError> {
    let bytes = read(&s, &headers, body, 64 << 10, "UpdateAlias").await?;
    let st = latest_of(&s, &raw)?;
    let req: AliasRequest = json_body(&bytes)?;
    let current = s.node.alias(&st.record.name, &alias)?;
    let expected_revision = check_alias_revision(&current, req.revision_id.as_deref())?;
    let change = AliasChange {
        version: req.function_version,
        description: req.description,
        weights: req.routing_config.map(|r| r.additional_version_weights),
        expected_revision,
    };
    let a = s
        .node
        .put_alias(&st.record.name, &alias, change, false)
        .await?;
    Ok(axum::Json(alias_json(&a)).into_response())
}

/// `GET .../aliases/{alias}`: GetAlias.
pub(super) async fn get_alias(
    State(s): State<AppState>,
    Path((raw, alias)): Path<(String, String)>,
) -> Result<Response, LambdaError> {
    let st = latest_of(&s, &raw)?;
    let a = s.node.alias(&st.record.name, &alias)?;
    Ok(axum::Json(alias_json(&a)).into_response())
}

/// `DELETE .../aliases/{alias}`: DeleteAlias.
pub(super) async fn delete_alias(
    State(s): State<AppState>,
    Path((raw, alias)): Path<(String, String)>,
) -> Result<Response, LambdaError> {
    let st = latest_of(&s, &raw)?;
    s.node.delete_alias(&st.record.name, &alias).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET .../aliases`: ListAliases (those naming `FunctionVersion`, when given).
pub(super) async fn list_aliases(
    State(s): State<AppState>,
    Path(raw): Path<String>,
    Query(q): Query<Page>,
) -> Result<Response, LambdaError> {
    let st = latest_of(&s, &raw)?;
    let items = s
        .node
        .aliases(&st.record.name)
        .iter()
        .filter(|a| {
            q.function_version
                .as_deref()
                .is_none_or(|v| a.version == v || a.weights.contains_key(v))
        })
        .map(|a| (a.name.clone(), alias_json(a)))
        .collect();
    q.answer("Aliases", items)
}
