//! A native helloworld: `{"name": "x"}` in, `{"message": "hello, x"}` out.
//!
//! Run by Ember's `native` runtime, it reads one event on stdin and writes the result on
//! stdout. Deployed as `provided` (copied to `bootstrap`), it finds `AWS_LAMBDA_RUNTIME_API`
//! set and serves events from Lambda's Runtime API in a loop, over a few lines of plain
//! HTTP/1.1 (no runtime library: the point is a start that costs nothing).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;

fn answer(event: &[u8]) -> Result<Vec<u8>, String> {
    let v: serde_json::Value =
        serde_json::from_slice(event).map_err(|e| format!("the event is not JSON: {e}"))?;
    let name = v.get("name").and_then(|n| n.as_str()).unwrap_or("world");
    Ok(serde_json::json!({ "message": format!("hello, {name}") })
        .to_string()
        .into_bytes())
}

fn main() {
    match std::env::var("AWS_LAMBDA_RUNTIME_API") {
        Ok(api) => runtime_api(&api),
        Err(_) => {
            let mut event = Vec::new();
            if let Err(e) = std::io::stdin().read_to_end(&mut event) {
                eprintln!("reading the event failed: {e}");
                std::process::exit(2);
            }
            match answer(&event) {
                Ok(out) => {
                    let _ = std::io::stdout().write_all(&out);
                }
                Err(msg) => {
                    eprintln!("{msg}");
                    std::process::exit(1);
                }
            }
        }
    }
}

/// One request on a kept-alive connection: (status, request id header, body).
fn request(
    conn: &mut BufReader<TcpStream>,
    method: &str,
    path: &str,
    body: &[u8],
) -> std::io::Result<(u16, Option<String>, Vec<u8>)> {
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: runtime\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    // One write: a head and a body sent apart would wait for a delayed ACK (Nagle).
    let mut msg = head.into_bytes();
    msg.extend_from_slice(body);
    conn.get_mut().write_all(&msg)?;
    let mut line = String::new();
    conn.read_line(&mut line)?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let (mut len, mut id) = (0usize, None);
    loop {
        line.clear();
        if conn.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            let v = v.trim();
            match k.to_ascii_lowercase().as_str() {
                "content-length" => len = v.parse().unwrap_or(0),
                "lambda-runtime-aws-request-id" => id = Some(v.to_string()),
                _ => {}
            }
        }
    }
    let mut out = vec![0; len];
    conn.read_exact(&mut out)?;
    Ok((status, id, out))
}

fn runtime_api(api: &str) {
    let mut conn = match TcpStream::connect(api) {
        Ok(s) => {
            let _ = s.set_nodelay(true);
            BufReader::new(s)
        }
        Err(e) => {
            eprintln!("cannot reach the Runtime API at {api}: {e}");
            std::process::exit(1);
        }
    };
    loop {
        let next = request(&mut conn, "GET", "/2018-06-01/runtime/invocation/next", b"");
        let (event, id) = match next {
            Ok((200, Some(id), event)) => (event, id),
            other => {
                eprintln!("invocation/next failed: {other:?}");
                std::process::exit(1);
            }
        };
        let (path, body) = match answer(&event) {
            Ok(out) => (format!("/2018-06-01/runtime/invocation/{id}/response"), out),
            Err(msg) => (
                format!("/2018-06-01/runtime/invocation/{id}/error"),
                serde_json::json!({"errorMessage": msg, "errorType": "InvalidEvent"})
                    .to_string()
                    .into_bytes(),
            ),
        };
        if let Err(e) = request(&mut conn, "POST", &path, &body) {
            eprintln!("posting the answer failed: {e}");
            std::process::exit(1);
        }
    }
}
