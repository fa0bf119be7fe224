//! Lambda's settings beyond a function's code and basics: each one Ember carries out, or
//! refuses with what to do instead; none is accepted and dropped. Tags (kept, and the
//! `ember:` ones configure the node), reserved concurrency (the function's instance limit),
//! the account's settings, and the settings Ember has no part for (dead-letter queues, EFS,
//! X-Ray, VPCs, KMS, code signing).

use std::collections::BTreeMap;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use ember_node::FunctionConfig;
use ember_node::function::Network;

use super::{LambdaError, json_body, latest_of, parse_function_name, read, redeploy};
use crate::AppState;

/// At most this many tags per function, as Lambda.
const MAX_TAGS: usize = 50;

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct DeadLetterConfig {
    target_arn: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct EphemeralStorage {
    size: u64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct LoggingConfig {
    log_format: Option<String>,
    application_log_level: Option<String>,
    system_log_level: Option<String>,
    log_group: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct TracingConfig {
    mode: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct VpcConfig {
    #[serde(default)]
    subnet_ids: Vec<String>,
    #[serde(default)]
    security_group_ids: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct SnapStart {
    apply_on: Option<String>,
}

/// The settings of CreateFunction and UpdateFunctionConfiguration Ember has no part for, and
/// whatever else a request names: each accepted only at the value that means "not used".
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct Unsupported {
    dead_letter_config: Option<DeadLetterConfig>,
    ephemeral_storage: Option<EphemeralStorage>,
    logging_config: Option<LoggingConfig>,
    #[serde(default)]
    file_system_configs: Vec<serde_json::Value>,
    tracing_config: Option<TracingConfig>,
    vpc_config: Option<VpcConfig>,
    #[serde(rename = "KMSKeyArn")]
    kms_key_arn: Option<String>,
    image_config: Option<serde_json::Value>,
    snap_start: Option<SnapStart>,
    code_signing_config_arn: Option<String>,
    /// Every other field of the request.
    #[serde(flatten)]
    rest: BTreeMap<String, serde_json::Value>,
}

impl Unsupported {
    /// Refuses what Ember would not carry out, for function `name`.
    pub(super) fn check(&self, name: &str) -> Result<(), LambdaError> {
        let refuse = |m: String| Err(LambdaError::invalid(m));
        if let Some(field) = self.rest.keys().next() {
            return refuse(format!(
                "{field} is not a setting Ember knows (docs/lambda.md lists those it takes)"
            ));
        }
        if self
            .dead_letter_config
            .as_ref()
            .is_some_and(|d| d.target_arn.as_deref().is_some_and(|a| !a.is_empty()))
        {
            return refuse(
                "DeadLetterConfig: Ember has no SQS or SNS to send failed events to; a failed \
                 Event invocation is retried twice, then written to the function's log"
                    .into(),
            );
        }
        if let Some(l) = &self.logging_config {
            if l.application_log_level.is_some() && l.log_format.as_deref() != Some("JSON") {
                return refuse(
                    "LoggingConfig.ApplicationLogLevel needs LogFormat JSON in the same request"
                        .into(),
                );
            }
            if l.system_log_level.as_deref().is_some_and(|v| v != "INFO") {
                return refuse(
                    "LoggingConfig.SystemLogLevel: Ember's platform lines (START, END, REPORT) \
                     are not filtered; INFO is the only level"
                        .into(),
                );
            }
            let own = format!("/aws/lambda/{name}");
            if l.log_group.as_deref().is_some_and(|g| g != own) {
                return refuse(format!(
                    "LoggingConfig.LogGroup: a function's log is its own ({own}, `ember logs`)"
                ));
            }
        }
        if !self.file_system_configs.is_empty() {
            return refuse("FileSystemConfigs: Ember mounts no EFS file systems".into());
        }
        if self
            .tracing_config
            .as_ref()
            .is_some_and(|t| t.mode.as_deref().is_some_and(|m| m != "PassThrough"))
        {
            return refuse(
                "TracingConfig.Mode Active: Ember has no X-Ray; PassThrough is the only mode"
                    .into(),
            );
        }
        if self
            .vpc_config
            .as_ref()
            .is_some_and(|v| !v.subnet_ids.is_empty() || !v.security_group_ids.is_empty())
        {
            return refuse(
                "VpcConfig: Ember functions are in no VPC; they have no network, or the host's \
                 with the tag ember:network=host"
                    .into(),
            );
        }
        if self.kms_key_arn.as_deref().is_some_and(|k| !k.is_empty()) {
            return refuse(
                "KMSKeyArn: Ember keeps environment variables in its own registry and uses no \
                 KMS key"
                    .into(),
            );
        }
        if self.image_config.as_ref().is_some_and(|c| !c.is_null()) {
            return refuse(
                "ImageConfig applies to container images, which Ember does not run".into(),
            );
        }
        if let Some(a) = self.snap_start.as_ref().and_then(|s| s.apply_on.as_deref())
            && a != "None"
            && a != "PublishedVersions"
        {
            return refuse(format!(
                "SnapStart.ApplyOn {a:?} must be PublishedVersions or None (Ember snapshots \
                 every published version at publish, and $LATEST at its first start, either \
                 way; `ember deploy --snapshot off` turns that off)"
            ));
        }
        if self
            .code_signing_config_arn
            .as_deref()
            .is_some_and(|a| !a.is_empty())
        {
            return refuse("CodeSigningConfigArn: Ember does not check code signatures".into());
        }
        Ok(())
    }
}

impl Unsupported {
    /// Carries out a request's `EphemeralStorage` on `config`: its /tmp size, 512 to 10240
    /// MB as Lambda's.
    pub(super) fn apply_storage(&self, config: &mut FunctionConfig) -> Result<(), LambdaError> {
        let Some(e) = &self.ephemeral_storage else {
            return Ok(());
        };
        if !(512..=10_240).contains(&e.size) {
            return Err(LambdaError::invalid(format!(
                "EphemeralStorage.Size {} must be from 512 to 10240 (MB)",
                e.size
            )));
        }
        config.tmp_mb = Some(e.size as u32);
        Ok(())
    }

    /// Carries out a request's `LoggingConfig` on `config` (its format and application log
    /// level; the runtime reads them from its environment). Checked by `FunctionConfig`'s
    /// validation.
    pub(super) fn apply_logging(&self, config: &mut FunctionConfig) {
        let Some(l) = &self.logging_config else {
            return;
        };
        if let Some(f) = &l.log_format {
            config.log_format = (f != "Text").then(|| f.clone());
            // Levels go with the JSON format (and come with it in the same request).
            config.log_level = l.application_log_level.clone();
        }
    }
}

/// A function's `LoggingConfig` as Lambda shows it.
pub(super) fn logging(c: &FunctionConfig, name: &str) -> serde_json::Value {
    let mut v = serde_json::json!({
        "LogFormat": c.log_format.as_deref().unwrap_or("Text"),
        "LogGroup": format!("/aws/lambda/{name}"),
    });
    if c.log_format.is_some() {
        v["ApplicationLogLevel"] = c.log_level.as_deref().unwrap_or("INFO").into();
        v["SystemLogLevel"] = "INFO".into();
    }
    v
}

/// Applies Lambda tags to `config`: `ember:` tags set the node's own settings, the others are
/// kept as they are.
pub(super) fn apply_tags(
    config: &mut FunctionConfig,
    tags: &BTreeMap<String, String>,
) -> Result<(), LambdaError> {
    for (k, v) in tags {
        match (k.as_str(), v.as_str()) {
            ("ember:cold-only", v) => config.cold_only = v == "true",
            ("ember:network", "host") => config.network = Network::Host,
            ("ember:network", "none") => config.network = Network::None,
            (k, _) if k.starts_with("ember:") => {
                return Err(LambdaError::invalid(format!(
                    "unknown Ember tag {k:?}: ember:cold-only (true|false) and ember:network \
                     (host|none) are understood"
                )));
            }
            (k, _) if k.starts_with("aws:") => {
                return Err(LambdaError::invalid(format!(
                    "tag {k:?}: the aws: prefix is reserved"
                )));
            }
            (k, v) if k.is_empty() || k.len() > 128 || v.len() > 256 => {
                return Err(LambdaError::invalid(format!(
                    "tag {k:?}: keys are 1 to 128 characters, values at most 256"
                )));
            }
            (k, v) => {
                config.tags.insert(k.to_string(), v.to_string());
            }
        }
    }
    if config.tags.len() > MAX_TAGS {
        return Err(LambdaError::invalid(format!(
            "a function has at most {MAX_TAGS} tags"
        )));
    }
    Ok(())
}

/// A function's tags as Lambda shows them: its own and the `ember:` settings.
pub(super) fn tags(c: &FunctionConfig) -> serde_json::Value {
    let mut t: serde_json::Map<String, serde_json::Value> = c
        .tags
        .iter()
        .map(|(k, v)| (k.clone(), v.clone().into()))
        .collect();
    if c.cold_only {
        t.insert("ember:cold-only".into(), "true".into());
    }
    if c.network == Network::Host {
        t.insert("ember:network".into(), "host".into());
    }
    serde_json::Value::Object(t)
}

/// The function a tagging request's ARN names.
fn tagged(s: &AppState, arn: &str) -> Result<ember_node::FunctionStatus, LambdaError> {
    let (name, qualifier) = parse_function_name(arn)?;
    if qualifier.is_some() {
        return Err(LambdaError::invalid(
            "tags belong to the function, not to a version: give its ARN without a qualifier",
        ));
    }
    Ok(s.node.get(&name)?)
}

/// `GET /2017-03-31/tags/{arn}`: ListTags.
pub(super) async fn list_tags(
    State(s): State<AppState>,
    Path(arn): Path<String>,
) -> Result<Response, LambdaError> {
    let st = tagged(&s, &arn)?;
    Ok(axum::Json(serde_json::json!({ "Tags": tags(&st.record.config) })).into_response())
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TagRequest {
    tags: BTreeMap<String, String>,
}

/// `POST /2017-03-31/tags/{arn}`: TagResource.
pub(super) async fn tag_resource(
    State(s): State<AppState>,
    Path(arn): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, LambdaError> {
    // The body first: an answer sent before it is read would cost the client its connection.
    let bytes = read(&s, &headers, body, 1 << 20, "TagResource").await?;
    let st = tagged(&s, &arn)?;
    let req: TagRequest = json_body(&bytes)?;
    let mut config = st.record.config.clone();
    apply_tags(&mut config, &req.tags)?;
    redeploy(&s, &st, config).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `DELETE /2017-03-31/tags/{arn}?tagKeys=a&tagKeys=b`: UntagResource (an `ember:` key puts
/// that setting back to its default).
pub(super) async fn untag_resource(
    State(s): State<AppState>,
    Path(arn): Path<String>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Result<Response, LambdaError> {
    let st = tagged(&s, &arn)?;
    let keys: Vec<String> = form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .filter(|(k, _)| k == "tagKeys")
        .map(|(_, v)| v.into_owned())
        .collect();
    let mut config = st.record.config.clone();
    for k in &keys {
        match k.as_str() {
            "ember:cold-only" => config.cold_only = false,
            "ember:network" => config.network = Network::None,
            k => {
                config.tags.remove(k);
            }
        }
    }
    redeploy(&s, &st, config).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ConcurrencyRequest {
    reserved_concurrent_executions: u32,
}

/// `PUT /2017-10-31/functions/{name}/concurrency`: PutFunctionConcurrency, the function's
/// instance limit (synchronous calls over it are refused at once with 429).
pub(super) async fn put_concurrency(
    State(s): State<AppState>,
    Path(raw): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, LambdaError> {
    let bytes = read(&s, &headers, body, 1 << 20, "PutFunctionConcurrency").await?;
    let st = latest_of(&s, &raw)?;
    let req: ConcurrencyRequest = json_body(&bytes)?;
    let mut config = st.record.config.clone();
    config.max_instances = req.reserved_concurrent_executions;
    config.concurrency_reserved = true;
    redeploy(&s, &st, config).await?;
    Ok(axum::Json(serde_json::json!({
        "ReservedConcurrentExecutions": req.reserved_concurrent_executions
    }))
    .into_response())
}

/// `GET /2019-09-30/functions/{name}/concurrency`: GetFunctionConcurrency.
pub(super) async fn get_concurrency(
    State(s): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Response, LambdaError> {
    let st = latest_of(&s, &raw)?;
    let c = &st.record.config;
    // Nothing reserved: Lambda answers an empty document.
    let body = match c.concurrency_reserved {
        true => serde_json::json!({ "ReservedConcurrentExecutions": c.max_instances }),
        false => serde_json::json!({}),
    };
    Ok(axum::Json(body).into_response())
}

/// `DELETE /2017-10-31/functions/{name}/concurrency`: DeleteFunctionConcurrency: as many
/// instances as the node holds again.
pub(super) async fn delete_concurrency(
    State(s): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Response, LambdaError> {
    let st = latest_of(&s, &raw)?;
    let mut config = st.record.config.clone();
    config.max_instances = s.node.capacity_instances(config.memory_mb);
    config.concurrency_reserved = false;
    redeploy(&s, &st, config).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /2016-08-19/account-settings`: GetAccountSettings, this node's limits and use.
pub(super) async fn account_settings(State(s): State<AppState>) -> Result<Response, LambdaError> {
    let functions = s.node.list();
    // Functions, not their published versions (which share their code).
    let functions: Vec<_> = functions
        .into_iter()
        .filter(|f| {
            ember_node::versions::split_qualified(&f.record.name)
                .1
                .is_none()
        })
        .collect();
    let code: u64 = functions.iter().map(|f| f.record.code_size).sum();
    Ok(axum::Json(serde_json::json!({
        "AccountLimit": {
            // What this node enforces, and nothing it does not (no account-wide totals).
            "CodeSizeUnzipped": ember_node::code::Limits::default().max_unpacked,
            "CodeSizeZipped": super::MAX_ZIPPED,
        },
        "AccountUsage": {
            "TotalCodeSize": code,
            "FunctionCount": functions.len(),
        },
    }))
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: serde_json::Value) -> Unsupported {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn settings_ember_has_no_part_for_are_refused_unless_unused() {
        let ok = [
            serde_json::json!({}),
            serde_json::json!({"TracingConfig": {"Mode": "PassThrough"},
                "EphemeralStorage": {"Size": 64}, "LoggingConfig": {"LogFormat": "Text",
                "LogGroup": "/aws/lambda/f"}, "VpcConfig": {"SubnetIds": []},
                "SnapStart": {"ApplyOn": "None"}, "DeadLetterConfig": {}}),
            serde_json::json!({"SnapStart": {"ApplyOn": "PublishedVersions"}}),
        ];
        for v in ok {
            parse(v.clone())
                .check("f")
                .unwrap_or_else(|e| panic!("{v}: {e:?}"));
        }
        let refused = [
            (
                serde_json::json!({"DeadLetterConfig": {"TargetArn": "arn:aws:sqs:x"}}),
                "DeadLetterConfig",
            ),
            (
                serde_json::json!({"LoggingConfig": {"SystemLogLevel": "DEBUG"}}),
                "SystemLogLevel",
            ),
            (
                serde_json::json!({"LoggingConfig": {"LogGroup": "/mine"}}),
                "LogGroup",
            ),
            (
                serde_json::json!({"FileSystemConfigs": [{"Arn": "x", "LocalMountPath": "/mnt/x"}]}),
                "EFS",
            ),
            (
                serde_json::json!({"TracingConfig": {"Mode": "Active"}}),
                "X-Ray",
            ),
            (
                serde_json::json!({"VpcConfig": {"SubnetIds": ["s"]}}),
                "VPC",
            ),
            (serde_json::json!({"KMSKeyArn": "arn:aws:kms:x"}), "KMS"),
            (
                serde_json::json!({"ImageConfig": {"Command": ["x"]}}),
                "container",
            ),
            (
                serde_json::json!({"SnapStart": {"ApplyOn": "Always"}}),
                "must be PublishedVersions or None",
            ),
            (
                serde_json::json!({"CodeSigningConfigArn": "arn:x"}),
                "signatures",
            ),
            // UpdateFunctionConfiguration has no Publish (CreateFunction takes it itself).
            (
                serde_json::json!({"Publish": true}),
                "Publish is not a setting",
            ),
            (
                serde_json::json!({"Frobnicate": 1}),
                "Frobnicate is not a setting",
            ),
        ];
        for (v, why) in refused {
            let e = parse(v.clone()).check("f").unwrap_err();
            assert_eq!(e.error_type, "InvalidParameterValueException", "{v}");
            assert!(e.message.contains(why), "{v}: {}", e.message);
        }
    }

    #[test]
    fn ephemeral_storage_is_the_tmp_size_in_lambdas_range() {
        let mut c: FunctionConfig =
            serde_json::from_value(serde_json::json!({"handler": "a.b"})).unwrap();
        parse(serde_json::json!({"EphemeralStorage": {"Size": 1024}}))
            .apply_storage(&mut c)
            .unwrap();
        assert_eq!(c.tmp_mb, Some(1024));
        for bad in [511, 10_241, 0] {
            let e = parse(serde_json::json!({"EphemeralStorage": {"Size": bad}}))
                .apply_storage(&mut c)
                .unwrap_err();
            assert!(e.message.contains("512 to 10240"), "{}", e.message);
        }
        assert_eq!(c.tmp_mb, Some(1024));
    }

    #[test]
    fn tags_are_kept_and_ember_tags_configure() {
        let mut c: FunctionConfig =
            serde_json::from_value(serde_json::json!({"handler": "a.b"})).unwrap();
        let t = BTreeMap::from([
            ("team".to_string(), "data".to_string()),
            ("ember:network".to_string(), "host".to_string()),
        ]);
        apply_tags(&mut c, &t).unwrap();
        assert_eq!(c.network, Network::Host);
        assert_eq!(
            tags(&c),
            serde_json::json!({"team": "data", "ember:network": "host"})
        );
        for bad in ["aws:x", "ember:nope", ""] {
            let t = BTreeMap::from([(bad.to_string(), "v".to_string())]);
            assert!(apply_tags(&mut c, &t).is_err(), "{bad}");
        }
        let many: BTreeMap<String, String> = (0..51)
            .map(|i| (format!("k{i}"), "v".to_string()))
            .collect();
        assert!(apply_tags(&mut c, &many).is_err());
    }
}
