//! Lambda's layers (the node's part is `ember_node`'s `node/layers.rs`).
//!
//! | method | path | Lambda operation |
//! |---|---|---|
//! | POST, GET | /2018-10-31/layers/{name}/versions | PublishLayerVersion, ListLayerVersions |
//! | GET, DELETE | /2018-10-31/layers/{name}/versions/{n} | Get/DeleteLayerVersion |
//! | GET | /2018-10-31/layers | ListLayers; with `find=LayerVersion&Arn=`, GetLayerVersionByArn |

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use ember_node::LayerMeta;
use ember_node::layers::{LayerVersion, layer_arn, parse_layer_ref, validate_layer_name};
use serde::Deserialize;

use super::{CodeLocation, LambdaError, json_body, lambda_time, read, zip_of};
use crate::AppState;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct PublishRequest {
    #[serde(default)]
    content: CodeLocation,
    #[serde(default)]
    description: String,
    #[serde(default)]
    compatible_runtimes: Vec<String>,
    #[serde(default)]
    compatible_architectures: Vec<String>,
    license_info: Option<String>,
}

/// A layer version as Lambda's `ListLayerVersions` items show it.
fn item(l: &LayerVersion) -> serde_json::Value {
    let mut v = serde_json::json!({
        "LayerVersionArn": l.arn(),
        "Version": l.version,
        "Description": l.description,
        "CreatedDate": lambda_time(l.created_at),
        "CompatibleRuntimes": l.compatible_runtimes,
        "CompatibleArchitectures": l.compatible_architectures,
    });
    if let Some(li) = &l.license_info {
        v["LicenseInfo"] = li.clone().into();
    }
    v
}

/// A layer version as `GetLayerVersion` shows it.
fn full(l: &LayerVersion) -> serde_json::Value {
    let mut v = item(l);
    v["LayerArn"] = layer_arn(&l.name).into();
    // The zip is kept unpacked on the node: there is nothing to download.
    v["Content"] = serde_json::json!({"CodeSha256": l.code_sha256, "CodeSize": l.code_size});
    v
}

fn checked_name(name: &str) -> Result<(), LambdaError> {
    validate_layer_name(name).map_err(|e| LambdaError::invalid(e.to_string()))
}

/// `POST /2018-10-31/layers/{name}/versions`: PublishLayerVersion.
pub(super) async fn publish(
    State(s): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, LambdaError> {
    let bytes = read(
        &s,
        &headers,
        body,
        s.cfg.max_deploy_bytes,
        "PublishLayerVersion",
    )
    .await?;
    checked_name(&name)?;
    let req: PublishRequest = json_body(&bytes)?;
    drop(bytes);
    super::check_architectures(&req.compatible_architectures)?;
    if req.description.len() > 256 {
        return Err(LambdaError::invalid(
            "Description must be at most 256 bytes",
        ));
    }
    if req.compatible_runtimes.len() > 15 {
        return Err(LambdaError::invalid(
            "CompatibleRuntimes may name at most 15 runtimes",
        ));
    }
    for r in &req.compatible_runtimes {
        super::parse_runtime(r)?;
    }
    let zip = zip_of(req.content)?;
    let code = s.node.store_code(zip).await?;
    let meta = LayerMeta {
        description: req.description,
        compatible_runtimes: req.compatible_runtimes,
        compatible_architectures: req.compatible_architectures,
        license_info: req.license_info,
    };
    let l = s.node.publish_layer(&name, code, meta).await?;
    Ok((StatusCode::CREATED, axum::Json(full(&l))).into_response())
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct ListQuery {
    marker: Option<String>,
    max_items: Option<usize>,
    compatible_runtime: Option<String>,
    compatible_architecture: Option<String>,
    /// GetLayerVersionByArn: `find=LayerVersion` and `Arn`.
    #[serde(rename = "find")]
    find: Option<String>,
    arn: Option<String>,
}

impl ListQuery {
    fn matches(&self, l: &LayerVersion) -> bool {
        let fits = |wanted: &Option<String>, have: &[String]| {
            wanted
                .as_deref()
                .is_none_or(|w| have.iter().any(|h| h == w))
        };
        fits(&self.compatible_runtime, &l.compatible_runtimes)
            && fits(&self.compatible_architecture, &l.compatible_architectures)
    }

    /// One page of `items` (keyed by their marker), Lambda's at most 50.
    fn answer(
        &self,
        key: &str,
        items: Vec<(String, serde_json::Value)>,
    ) -> Result<Response, LambdaError> {
        super::paged(key, items, self.marker.as_deref(), self.max_items, 50)
    }
}

/// `GET /2018-10-31/layers/{name}/versions`: ListLayerVersions, newest first.
pub(super) async fn list_versions(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<ListQuery>,
) -> Result<Response, LambdaError> {
    checked_name(&name)?;
    let mut versions: Vec<LayerVersion> = s
        .node
        .layer_versions()
        .into_iter()
        .filter(|l| l.name == name && q.matches(l))
        .collect();
    versions.reverse();
    let items = versions
        .iter()
        .map(|l| (l.version.to_string(), item(l)))
        .collect();
    q.answer("LayerVersions", items)
}

/// `GET /2018-10-31/layers`: ListLayers (each with its newest matching version), or
/// GetLayerVersionByArn.
pub(super) async fn list(
    State(s): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Result<Response, LambdaError> {
    if q.find.as_deref() == Some("LayerVersion") {
        let arn = q
            .arn
            .as_deref()
            .ok_or_else(|| LambdaError::invalid("Arn is required"))?;
        let (name, version) =
            parse_layer_ref(arn).map_err(|e| LambdaError::invalid(e.to_string()))?;
        return Ok(axum::Json(full(&s.node.layer(&name, version)?)).into_response());
    }
    let mut newest: std::collections::BTreeMap<String, LayerVersion> = Default::default();
    for l in s.node.layer_versions() {
        if q.matches(&l) {
            newest.insert(l.name.clone(), l);
        }
    }
    let items = newest
        .into_iter()
        .map(|(name, l)| {
            let v = serde_json::json!({
                "LayerName": name,
                "LayerArn": layer_arn(&name),
                "LatestMatchingVersion": item(&l),
            });
            (name, v)
        })
        .collect();
    q.answer("Layers", items)
}

fn version_of(raw: &str) -> Result<u64, LambdaError> {
    raw.parse::<u64>()
        .ok()
        .filter(|v| *v > 0)
        .ok_or_else(|| LambdaError::invalid(format!("VersionNumber {raw:?} is not a version")))
}

/// `GET /2018-10-31/layers/{name}/versions/{n}`: GetLayerVersion.
pub(super) async fn get(
    State(s): State<AppState>,
    Path((name, n)): Path<(String, String)>,
) -> Result<Response, LambdaError> {
    checked_name(&name)?;
    let l = s.node.layer(&name, version_of(&n)?)?;
    Ok(axum::Json(full(&l)).into_response())
}

/// `DELETE /2018-10-31/layers/{name}/versions/{n}`: DeleteLayerVersion. Functions using it
/// keep their copy.
pub(super) async fn delete(
    State(s): State<AppState>,
    Path((name, n)): Path<(String, String)>,
) -> Result<Response, LambdaError> {
    checked_name(&name)?;
    // Lambda: deleting a version that is not there succeeds.
    match s.node.delete_layer(&name, version_of(&n)?).await {
        Ok(()) | Err(ember_node::NodeError::LayerNotFound(_)) => {
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        Err(e) => Err(e.into()),
    }
}

/// A function's `Layers` as its configuration shows them.
pub(super) fn shown(s: &AppState, layers: &[String]) -> serde_json::Value {
    layers
        .iter()
        .map(|r| {
            let mut v = serde_json::json!({ "Arn": r });
            if let Ok((name, version)) = parse_layer_ref(r)
                && let Some(size) = s.node.layer_code_size(&name, version)
            {
                v["CodeSize"] = size.into();
            }
            v
        })
        .collect()
}

/// A function's `Layers` as given, checked and written as layer version ARNs.
pub(super) fn given(layers: Vec<String>) -> Result<Vec<String>, LambdaError> {
    let arns = layers
        .iter()
        .map(|r| {
            parse_layer_ref(r)
                .map(|(n, v)| ember_node::layers::layer_version_arn(&n, v))
                .map_err(|e| LambdaError::invalid(e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    ember_node::layers::validate_layers(&arns).map_err(|e| LambdaError::invalid(e.to_string()))?;
    Ok(arns)
}
