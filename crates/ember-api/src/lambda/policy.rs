//! Lambda's resource-based policy: AddPermission, RemovePermission and GetPolicy, which deploy
//! tools (SAM, CloudFormation, the Serverless Framework) call to let another service invoke a
//! function. Statements are kept in the function's record and shown back in Lambda's shape;
//! Ember evaluates none of them: on a node, the daemon's token decides who may invoke.
//!
//! | method | path | Lambda operation |
//! |---|---|---|
//! | POST, GET | /2015-03-31/functions/{name}/policy | AddPermission, GetPolicy |
//! | DELETE | /2015-03-31/functions/{name}/policy/{sid} | RemovePermission |

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use ember_node::function::{LATEST, function_arn};
use serde::Deserialize;

use super::{
    LambdaError, QualifierQuery, check_revision, json_body, latest_of, read, redeploy, revision_id,
};
use crate::AppState;

/// Lambda's cap on a function's policy document.
const MAX_POLICY: usize = 20 * 1024;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct AddRequest {
    statement_id: String,
    action: String,
    principal: String,
    source_arn: Option<String>,
    source_account: Option<String>,
    event_source_token: Option<String>,
    #[serde(rename = "PrincipalOrgID")]
    principal_org_id: Option<String>,
    function_url_auth_type: Option<String>,
    invoked_via_function_url: Option<bool>,
    revision_id: Option<String>,
}

/// Only `$LATEST`'s: Ember keeps one policy per function.
fn check_qualifier(q: &QualifierQuery) -> Result<(), LambdaError> {
    match q.qualifier.as_deref() {
        None | Some(LATEST) => Ok(()),
        Some(other) => Err(LambdaError::invalid(format!(
            "Qualifier {other:?}: Ember keeps one policy per function, for all its versions"
        ))),
    }
}

/// The statement Lambda makes of an AddPermission request for function `name`.
fn statement(name: &str, r: &AddRequest) -> Result<serde_json::Value, LambdaError> {
    let sid_ok = (1..=100).contains(&r.statement_id.len())
        && r.statement_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !sid_ok {
        return Err(LambdaError::invalid(
            "StatementId must be 1 to 100 letters, digits, '-' or '_'",
        ));
    }
    let action_ok = r.action == "lambda:*"
        || r.action
            .strip_prefix("lambda:")
            .is_some_and(|a| !a.is_empty() && a.bytes().all(|b| b.is_ascii_alphanumeric()));
    if !action_ok {
        return Err(LambdaError::invalid(format!(
            "Action {:?} must be lambda:<Operation> (lambda:InvokeFunction, say) or lambda:*",
            r.action
        )));
    }
    let principal = if r.principal == "*" {
        serde_json::json!("*")
    } else if r.principal.ends_with(".amazonaws.com") {
        serde_json::json!({ "Service": r.principal })
    } else {
        serde_json::json!({ "AWS": r.principal })
    };
    let mut condition = serde_json::Map::new();
    let mut put = |op: &str, key: &str, v: &Option<String>| {
        if let Some(v) = v {
            let entry = condition
                .entry(op.to_string())
                .or_insert_with(|| serde_json::json!({}));
            entry[key] = v.clone().into();
        }
    };
    put("ArnLike", "AWS:SourceArn", &r.source_arn);
    put("StringEquals", "AWS:SourceAccount", &r.source_account);
    put(
        "StringEquals",
        "lambda:EventSourceToken",
        &r.event_source_token,
    );
    put("StringEquals", "aws:PrincipalOrgID", &r.principal_org_id);
    put(
        "StringEquals",
        "lambda:FunctionUrlAuthType",
        &r.function_url_auth_type,
    );
    let via_url = r
        .invoked_via_function_url
        .filter(|v| *v)
        .map(|_| "true".to_string());
    put("Bool", "lambda:InvokedViaFunctionUrl", &via_url);
    let mut s = serde_json::json!({
        "Sid": r.statement_id,
        "Effect": "Allow",
        "Principal": principal,
        "Action": r.action,
        "Resource": function_arn(name),
    });
    if !condition.is_empty() {
        s["Condition"] = serde_json::Value::Object(condition);
    }
    Ok(s)
}

/// `POST .../policy`: AddPermission.
pub(super) async fn add(
    State(s): State<AppState>,
    Path(raw): Path<String>,
    Query(q): Query<QualifierQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, LambdaError> {
    let bytes = read(&s, &headers, body, 64 << 10, "AddPermission").await?;
    check_qualifier(&q)?;
    let st = latest_of(&s, &raw)?;
    let req: AddRequest = json_body(&bytes)?;
    check_revision(&st.record, req.revision_id.as_deref())?;
    let name = st.record.name.clone();
    let stmt = statement(&name, &req)?;
    let mut config = st.record.config.clone();
    if config.policy.iter().any(|p| p["Sid"] == stmt["Sid"]) {
        return Err(LambdaError::conflict(format!(
            "The statement id ({}) provided already exists. Please provide a new statement \
                 id, or remove the existing statement.",
            req.statement_id
        )));
    }
    config.policy.push(stmt.clone());
    if document(&config.policy).to_string().len() > MAX_POLICY {
        return Err(LambdaError::new(
            StatusCode::BAD_REQUEST,
            "PolicyLengthExceededException",
            "The final policy size is bigger than the limit (20 KB)",
        ));
    }
    redeploy(&s, &st, config).await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(serde_json::json!({ "Statement": stmt.to_string() })),
    )
        .into_response())
}

/// A function's policy document, as GetPolicy shows it.
fn document(statements: &[serde_json::Value]) -> serde_json::Value {
    serde_json::json!({
        "Version": "2012-10-17",
        "Id": "default",
        "Statement": statements,
    })
}

/// `GET .../policy`: GetPolicy.
pub(super) async fn get(
    State(s): State<AppState>,
    Path(raw): Path<String>,
    Query(q): Query<QualifierQuery>,
) -> Result<Response, LambdaError> {
    check_qualifier(&q)?;
    let st = latest_of(&s, &raw)?;
    let c = &st.record.config;
    if c.policy.is_empty() {
        return Err(LambdaError::missing(
            "The resource you requested does not exist.",
        ));
    }
    Ok(axum::Json(serde_json::json!({
        "Policy": document(&c.policy).to_string(),
        "RevisionId": revision_id(&st.record),
    }))
    .into_response())
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct RemoveQuery {
    qualifier: Option<String>,
    revision_id: Option<String>,
}

/// `DELETE .../policy/{sid}`: RemovePermission.
pub(super) async fn remove(
    State(s): State<AppState>,
    Path((raw, sid)): Path<(String, String)>,
    Query(q): Query<RemoveQuery>,
) -> Result<Response, LambdaError> {
    check_qualifier(&QualifierQuery {
        qualifier: q.qualifier,
    })?;
    let st = latest_of(&s, &raw)?;
    check_revision(&st.record, q.revision_id.as_deref())?;
    let mut config = st.record.config.clone();
    let before = config.policy.len();
    config.policy.retain(|p| p["Sid"] != sid.as_str());
    if config.policy.len() == before {
        return Err(LambdaError::missing(format!(
            "Statement {sid} is not found in resource policy."
        )));
    }
    redeploy(&s, &st, config).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(v: serde_json::Value) -> AddRequest {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn statements_have_lambdas_shape() {
        let s = statement(
            "f",
            &req(
                serde_json::json!({"StatementId": "s3-invoke", "Action": "lambda:InvokeFunction",
                "Principal": "s3.amazonaws.com", "SourceArn": "arn:aws:s3:::bucket",
                "SourceAccount": "123456789012"}),
            ),
        )
        .unwrap();
        assert_eq!(s["Principal"]["Service"], "s3.amazonaws.com");
        assert_eq!(
            s["Condition"]["ArnLike"]["AWS:SourceArn"],
            "arn:aws:s3:::bucket"
        );
        assert_eq!(
            s["Condition"]["StringEquals"]["AWS:SourceAccount"],
            "123456789012"
        );
        assert_eq!(s["Resource"], function_arn("f"));
        for bad in [
            serde_json::json!({"StatementId": "a b", "Action": "lambda:InvokeFunction", "Principal": "*"}),
            serde_json::json!({"StatementId": "a", "Action": "s3:GetObject", "Principal": "*"}),
            serde_json::json!({"StatementId": "", "Action": "lambda:*", "Principal": "*"}),
        ] {
            assert!(statement("f", &req(bad.clone())).is_err(), "{bad}");
        }
    }
}
