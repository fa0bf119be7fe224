//! The Python runtime against what Lambda's own Python runtime (awslambdaric) gives a
//! handler: its logging, its result encoding, its `context` and environment, its error
//! documents and init errors, with the real bootstrap and `/usr/bin/python3`.

mod common;

use common::{call, function, invoke};
use ember_runtime::python::{Instance, Outcome, StartError};

const PARITY: &str = r#"
import collections, decimal, logging, os, sys

logger = logging.getLogger()
logger.setLevel(logging.INFO)
logger.info("at import")
Point = collections.namedtuple("Point", "x y")


def nested(n):
    raise ValueError("bad %d" % n)


def handler(event, context):
    kind = event.get("kind")
    if kind == "log":
        logger.info("hello %s", event["x"])
        logging.getLogger("child").warning("careful")
        return 1
    if kind == "raise":
        nested(7)
    if kind == "decimal":
        return {"d": decimal.Decimal("1.10"), "e": [decimal.Decimal("-2E+3")], "s": "1.10"}
    if kind == "bytes":
        return b"raw \xff bytes"
    if kind == "nested-bytes":
        return {"b": b"text", "p": Point(1, 2)._asdict()}
    if kind == "object":
        return {"o": object()}
    if kind == "nan":
        return decimal.Decimal("NaN")
    env = os.environ
    return {
        "function_name": context.function_name,
        "function_version": context.function_version,
        "memory_limit_in_mb": context.memory_limit_in_mb,
        "invoked_function_arn": context.invoked_function_arn,
        "log_group_name": context.log_group_name,
        "log_stream_name": context.log_stream_name,
        "aws_request_id": context.aws_request_id,
        "identity": [context.identity.cognito_identity_id,
                     context.identity.cognito_identity_pool_id],
        "client_context": context.client_context,
        "remaining": context.get_remaining_time_in_millis() > 0,
        "env": {k: env.get(k) for k in [
            "AWS_REGION", "AWS_DEFAULT_REGION", "LAMBDA_TASK_ROOT", "LAMBDA_RUNTIME_DIR",
            "AWS_EXECUTION_ENV", "_HANDLER", "TZ", "AWS_LAMBDA_LOG_GROUP_NAME",
            "AWS_LAMBDA_LOG_STREAM_NAME", "AWS_LAMBDA_INITIALIZATION_TYPE",
            "AWS_LAMBDA_FUNCTION_VERSION"]},
        "python": "%d.%d" % sys.version_info[:2],
    }
"#;

#[tokio::test]
async fn context_and_environment_are_lambdas() {
    let Some(f) = function("parity-context", PARITY) else {
        return;
    };
    let mut inst = f.start().await;
    let v = call(&mut inst, "{}").await;
    assert_eq!(v["function_name"], "snappy");
    assert_eq!(v["function_version"], "$LATEST");
    assert_eq!(v["memory_limit_in_mb"], "128", "a string, as Lambda's");
    assert_eq!(
        v["invoked_function_arn"],
        "arn:aws:lambda:us-east-1:000000000000:function:snappy"
    );
    assert_eq!(v["log_group_name"], "/aws/lambda/snappy");
    assert_eq!(v["aws_request_id"], "req-1");
    assert_eq!(v["identity"], serde_json::json!([null, null]));
    assert_eq!(v["client_context"], serde_json::Value::Null);
    assert_eq!(v["remaining"], true);
    let env = &v["env"];
    assert_eq!(env["AWS_REGION"], "us-east-1");
    assert_eq!(env["AWS_DEFAULT_REGION"], "us-east-1");
    assert_eq!(env["LAMBDA_TASK_ROOT"], f.spec.code_dir.to_str().unwrap());
    assert_eq!(
        env["LAMBDA_RUNTIME_DIR"],
        f.spec.bootstrap.to_str().unwrap()
    );
    assert_eq!(
        env["AWS_EXECUTION_ENV"],
        format!("AWS_Lambda_python{}", v["python"].as_str().unwrap())
    );
    assert_eq!(env["_HANDLER"], "main.handler");
    assert_eq!(env["TZ"], ":UTC");
    assert_eq!(env["AWS_LAMBDA_LOG_GROUP_NAME"], "/aws/lambda/snappy");
    assert_eq!(env["AWS_LAMBDA_LOG_STREAM_NAME"], v["log_stream_name"]);
    assert_eq!(env["AWS_LAMBDA_INITIALIZATION_TYPE"], "on-demand");
    assert_eq!(env["AWS_LAMBDA_FUNCTION_VERSION"], "$LATEST");
    inst.kill();
}

#[tokio::test]
async fn logging_writes_lambdas_records_with_the_request_id() {
    let Some(f) = function("parity-logging", PARITY) else {
        return;
    };
    let mut inst = f.start().await;
    assert_eq!(call(&mut inst, r#"{"kind": "log", "x": 42}"#).await, 1);
    assert!(f.log.wait_for("careful").await, "{}", f.log.text());
    let lines = f.log.0.lock().unwrap().clone();
    let record = |msg: &str| {
        lines
            .iter()
            .find(|l| l.ends_with(msg))
            .unwrap_or_else(|| panic!("no record {msg:?} in {lines:?}"))
            .clone()
    };
    // [LEVEL] TIME.mmmZ REQUEST-ID message, tab-separated; no request during the import.
    let init = record("\tat import");
    let parts: Vec<&str> = init.split('\t').collect();
    assert_eq!(parts.len(), 4, "{init:?}");
    assert_eq!((parts[0], parts[2]), ("[INFO]", ""), "{init:?}");
    let ts = parts[1];
    assert!(
        ts.len() == 24 && ts.ends_with('Z') && ts.as_bytes()[19] == b'.',
        "{ts:?}"
    );
    assert!(record("\treq-1\thello 42").starts_with("[INFO]\t"));
    assert!(record("\treq-1\tcareful").starts_with("[WARNING]\t"));
    inst.kill();
}

#[tokio::test]
async fn results_are_encoded_as_lambdas_runtime_encodes_them() {
    let Some(f) = function("parity-marshal", PARITY) else {
        return;
    };
    let mut inst = f.start().await;
    let raw = |o: Outcome| match o {
        Outcome::Result { payload, .. } => String::from_utf8_lossy(&payload).into_owned(),
        other => panic!("{other:?}"),
    };
    let r = invoke(&mut inst, r#"{"kind": "decimal"}"#).await.unwrap();
    // A Decimal keeps its digits; a string that looks like one stays a string.
    assert_eq!(raw(r), r#"{"d": 1.10, "e": [-2E+3], "s": "1.10"}"#);
    let r = invoke(&mut inst, r#"{"kind": "nested-bytes"}"#)
        .await
        .unwrap();
    assert_eq!(raw(r), r#"{"b": "text", "p": {"x": 1, "y": 2}}"#);
    match invoke(&mut inst, r#"{"kind": "bytes"}"#).await.unwrap() {
        Outcome::Result { payload, .. } => assert_eq!(payload, b"raw \xff bytes"),
        other => panic!("{other:?}"),
    }
    for (kind, message) in [
        (
            "object",
            "Unable to marshal response: Object of type object is not JSON serializable",
        ),
        (
            "nan",
            "Unable to marshal response: Out of range float values are not JSON compliant: NaN",
        ),
    ] {
        match invoke(&mut inst, &format!(r#"{{"kind": "{kind}"}}"#))
            .await
            .unwrap()
        {
            Outcome::Error(fe) => {
                assert_eq!(fe.error_type, "Runtime.MarshalError");
                assert_eq!(fe.message, message);
                assert!(fe.marshal && fe.traceback.is_empty(), "{fe:?}");
            }
            other => panic!("{kind}: {other:?}"),
        }
    }
    // Still serving.
    assert_eq!(call(&mut inst, r#"{"kind": "log", "x": 1}"#).await, 1);
    inst.kill();
}

#[tokio::test]
async fn an_exception_is_lambdas_error_document_and_its_log_record() {
    let Some(f) = function("parity-error", PARITY) else {
        return;
    };
    let mut inst = f.start().await;
    let fe = match invoke(&mut inst, r#"{"kind": "raise"}"#).await.unwrap() {
        Outcome::Error(fe) => fe,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        (fe.error_type.as_str(), fe.message.as_str()),
        ("ValueError", "bad 7")
    );
    // One string per frame of the function's own, no header, no bootstrap frame.
    assert_eq!(fe.traceback.len(), 2, "{:?}", fe.traceback);
    let main = f.spec.code_dir.join("main.py");
    assert!(
        fe.traceback[0].starts_with(&format!("  File \"{}\", line ", main.display()))
            && fe.traceback[0].contains(", in handler\n    nested(7)\n"),
        "{:?}",
        fe.traceback
    );
    assert!(fe.traceback[1].contains("in nested\n    raise ValueError"));
    assert!(
        f.log
            .wait_for("[ERROR] ValueError: bad 7\rTraceback (most recent call last):\r")
            .await,
        "{}",
        f.log.text()
    );
    inst.kill();
}

#[tokio::test]
async fn init_errors_are_named_as_lambda_names_them() {
    let cases = [
        (
            "import",
            "import not_a_module\ndef handler(e, c):\n    return 1\n",
            "main.handler",
            "Runtime.ImportModuleError",
            "Unable to import module 'main': No module named 'not_a_module'",
        ),
        (
            "missing",
            "x = 1\n",
            "main.handler",
            "Runtime.HandlerNotFound",
            "Handler 'handler' missing on module 'main'",
        ),
        (
            "syntax",
            "def handler(e, c)\n    return 1\n",
            "main.handler",
            "Runtime.UserCodeSyntaxError",
            "Syntax error in module 'main': expected ':' (main.py, line 1)",
        ),
        (
            "malformed",
            "x = 1\n",
            "nodots",
            "Runtime.MalformedHandlerName",
            "Bad handler 'nodots': not enough values to unpack (expected 2, got 1)",
        ),
        (
            "builtin",
            "x = 1\n",
            "sys.handler",
            "Runtime.BuiltInModuleConflict",
            "Cannot use built-in module sys as a handler module",
        ),
        (
            "raises",
            "raise RuntimeError('no config')\n",
            "main.handler",
            "RuntimeError",
            "no config",
        ),
    ];
    for (name, code, handler, error_type, message) in cases {
        let Some(mut f) = function(&format!("parity-init-{name}"), code) else {
            return;
        };
        f.spec.handler = handler.into();
        let fe = match Instance::start(&f.spec, f.log.clone(), |_| {}).await {
            Err(StartError::Handler(fe)) => fe,
            other => panic!("{name}: {other:?}"),
        };
        assert_eq!(
            (fe.error_type.as_str(), fe.message.as_str()),
            (error_type, message),
            "{name}"
        );
        let head = format!("[ERROR] {error_type}: {message}\rTraceback (most recent call last):");
        assert!(f.log.wait_for(&head).await, "{name}: {}", f.log.text());
        match name {
            "syntax" => assert!(
                fe.traceback.len() == 1 && fe.traceback[0].contains("main.py\" Line 1\n"),
                "{:?}",
                fe.traceback
            ),
            "raises" => assert!(
                fe.traceback.iter().any(|l| l.contains("main.py")),
                "{:?}",
                fe.traceback
            ),
            _ => assert!(fe.traceback.is_empty(), "{name}: {:?}", fe.traceback),
        }
    }
}

#[tokio::test]
async fn the_json_log_format_writes_lambdas_json_records() {
    let code = r#"
import logging
log = logging.getLogger("app")

def handler(event, context):
    log.debug("too fine")
    log.info("counted %d", 3)
    try:
        1 / 0
    except ZeroDivisionError:
        log.exception("failed")
    raise ValueError("last")
"#;
    let Some(mut f) = function("parity-json-logs", code) else {
        return;
    };
    f.spec
        .env
        .insert("AWS_LAMBDA_LOG_FORMAT".into(), "JSON".into());
    let mut inst = f.start().await;
    match invoke(&mut inst, "{}").await.unwrap() {
        Outcome::Error(fe) => assert_eq!(fe.error_type, "ValueError"),
        other => panic!("{other:?}"),
    }
    assert!(
        f.log.wait_for("\"log_level\": \"ERROR\"").await,
        "{}",
        f.log.text()
    );
    let records: Vec<serde_json::Value> = f
        .log
        .0
        .lock()
        .unwrap()
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let find = |m: &str| records.iter().find(|r| r["message"] == m).cloned();
    // INFO by default with JSON: the debug record is not written.
    assert!(find("too fine").is_none(), "{records:?}");
    let info = find("counted 3").unwrap();
    assert_eq!(
        (&info["level"], &info["logger"], &info["requestId"]),
        (&"INFO".into(), &"app".into(), &"req-1".into())
    );
    let ts = info["timestamp"].as_str().unwrap();
    assert!(
        ts.len() == 24 && ts.ends_with('Z') && ts.as_bytes()[19] == b'.',
        "{ts}"
    );
    let failed = find("failed").unwrap();
    assert_eq!(failed["errorType"], "ZeroDivisionError");
    assert!(
        failed["stackTrace"]
            .as_array()
            .is_some_and(|t| !t.is_empty())
    );
    let last = records
        .iter()
        .find(|r| r["errorType"] == "ValueError")
        .unwrap();
    assert_eq!(
        (&last["errorMessage"], &last["requestId"]),
        (&"last".into(), &"req-1".into())
    );
    inst.kill();
}
