//! `{"name": "x"}` -> `{"message": "hello, x", "request_id": ..., "function": ...}`; an event
//! with `"fail": true` returns an error, as a Lambda function written in Rust would.

use lambda_runtime::{Error, LambdaEvent, service_fn};
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Deserialize)]
struct Request {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    fail: bool,
}

async fn handler(event: LambdaEvent<Request>) -> Result<Value, Error> {
    let (req, ctx) = event.into_parts();
    if req.fail {
        return Err("asked to fail".into());
    }
    println!("rust handling {}", ctx.request_id);
    Ok(json!({
        "message": format!("hello, {}", req.name.as_deref().unwrap_or("world")),
        "request_id": ctx.request_id,
        "function_arn": ctx.invoked_function_arn,
        "deadline_ms": ctx.deadline,
    }))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    lambda_runtime::run(service_fn(handler)).await
}
