//! The API's connections against hostile and careless clients: idle, slow-loris and
//! slow-body connections are closed, and more connections than the cap get a clear 503
//! while the API keeps serving. A real node (no sandbox, no images) behind a real socket,
//! with timeouts of a second so the tests stay short; every bound asserted is generous. And
//! the client against the server: a failed streamed deploy reports the status it failed with;
//! the function-snapshot cache listed and emptied through `/v1/snapshots`.

use std::net::SocketAddr;
use std::time::Duration;

use ember_api::{ApiConfig, ConnectionLimits};
use ember_node::{AutoImages, ImageConfig, NodeConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Long enough for a loaded 2-core machine to get round to closing a 1 s timeout.
const CLOSED_WITHIN: Duration = Duration::from_secs(15);

struct Server {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    home: tempfile::TempDir,
}

impl Server {
    async fn start(limits: ConnectionLimits) -> Server {
        Server::start_in(tempfile::tempdir().unwrap(), limits).await
    }

    async fn start_in(home: tempfile::TempDir, limits: ConnectionLimits) -> Server {
        let node = ember_node::Node::open(NodeConfig {
            home: home.path().to_path_buf(),
            sandbox: false,
            images: ImageConfig {
                auto: AutoImages::Off,
                ..ImageConfig::default()
            },
            prestart: 0,
            standby: 0,
            fixed_ladder: false,
            ..NodeConfig::default()
        })
        .await
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(ember_api::serve(
            listener,
            node,
            ApiConfig::default(),
            limits,
            async {
                let _ = stopped.await;
            },
        ));
        Server {
            addr,
            stop: Some(stop),
            task: Some(task),
            home,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops the server; gives its home back (to start another server on it).
    async fn stop(mut self) -> tempfile::TempDir {
        let _ = self.stop.take().unwrap().send(());
        let stopped = tokio::time::timeout(CLOSED_WITHIN, self.task.take().unwrap()).await;
        stopped
            .expect("the server stops once its connections are closed")
            .unwrap()
            .unwrap();
        self.home
    }
}

fn short() -> ConnectionLimits {
    ConnectionLimits {
        header_timeout: Duration::from_secs(1),
        body_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(1),
        max_connections: 100,
        max_buffered_body_bytes: 1 << 30,
    }
}

const HEALTH: &[u8] = b"GET /v1/health HTTP/1.1\r\nhost: ember\r\n\r\n";

/// Reads until the server closes the connection (or `CLOSED_WITHIN` passes: then panics);
/// returns what came.
async fn read_until_closed(mut r: impl AsyncReadExt + Unpin, what: &str) -> String {
    let mut got = Vec::new();
    let read = tokio::time::timeout(CLOSED_WITHIN, async {
        let mut buf = [0u8; 4096];
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let got = String::from_utf8_lossy(&got).into_owned();
    assert!(
        read.is_ok(),
        "{what}: still open after {CLOSED_WITHIN:?}; got {got:?}"
    );
    got
}

/// Reads one response with a `content-length` (the connection may stay open). A server that
/// answers before reading the whole request may reset the connection after its answer: what
/// came before counts.
async fn read_response(s: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(CLOSED_WITHIN, s.read(&mut buf))
            .await
            .expect("a response")
            .unwrap_or(0);
        if n == 0 {
            assert!(!got.is_empty(), "closed before answering");
            return String::from_utf8_lossy(&got).into_owned();
        }
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if body.len() >= len {
                return text;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed() {
    let server = Server::start(short()).await;
    // Kept alive after a request, then idle.
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    s.write_all(HEALTH).await.unwrap();
    let first = read_response(&mut s).await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    assert_eq!(
        read_until_closed(s, "an idle keep-alive connection").await,
        ""
    );
    // Opened and never used.
    let s = TcpStream::connect(server.addr).await.unwrap();
    assert_eq!(
        read_until_closed(s, "a connection that sent nothing").await,
        ""
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_loris_is_closed() {
    let server = Server::start(short()).await;
    let s = TcpStream::connect(server.addr).await.unwrap();
    let (r, mut w) = s.into_split();
    // A header byte every 100 ms: never a complete head.
    let trickle = tokio::spawn(async move {
        let _ = w.write_all(b"GET /v1/health HTTP/1.1\r\nx-slow: ").await;
        for _ in 0..1000 {
            if w.write_all(b"a").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let got = read_until_closed(r, "a slow-loris connection").await;
    assert!(!got.contains("200 OK"), "{got}");
    trickle.abort();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_body_is_answered_408_and_closed() {
    let server = Server::start(short()).await;
    for path in ["/v1/functions/f/invoke", "/2015-03-31/functions"] {
        let s = TcpStream::connect(server.addr).await.unwrap();
        let (r, mut w) = s.into_split();
        let head =
            format!("POST {path} HTTP/1.1\r\nhost: ember\r\ncontent-length: 100000\r\n\r\n{{");
        let trickle = tokio::spawn(async move {
            let _ = w.write_all(head.as_bytes()).await;
            for _ in 0..1000 {
                if w.write_all(b" ").await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        let got = read_until_closed(r, "a slow body").await;
        assert!(got.starts_with("HTTP/1.1 408"), "{path}: {got}");
        assert!(
            got.to_ascii_lowercase().contains("connection: close"),
            "{got}"
        );
        assert!(got.contains("did not arrive within 1 s"), "{got}");
        trickle.abort();
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_get_503_and_the_api_recovers() {
    let server = Server::start(ConnectionLimits {
        max_connections: 4,
        idle_timeout: Duration::from_secs(60),
        ..short()
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        s.write_all(HEALTH).await.unwrap();
        assert!(read_response(&mut s).await.starts_with("HTTP/1.1 200"));
        held.push(s);
    }
    // One more: a clear answer, not a hang or a reset.
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    s.write_all(HEALTH).await.unwrap();
    let got = read_until_closed(s, "a connection over the cap").await;
    assert!(got.starts_with("HTTP/1.1 503"), "{got}");
    assert!(got.contains("connection: close"), "{got}");
    let body: serde_json::Value =
        serde_json::from_str(got.split_once("\r\n\r\n").unwrap().1).unwrap();
    assert_eq!(body["error"]["code"], "TooManyConnections", "{got}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("limit of 4")
    );
    // reqwest sees the same, as a status.
    let r = reqwest::get(format!("{}/v1/health", server.url()))
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    // Once the held connections go, a new client is served.
    drop(held);
    let mut served = false;
    for _ in 0..100 {
        let r = reqwest::Client::new()
            .get(format!("{}/v1/health", server.url()))
            .send()
            .await;
        if r.is_ok_and(|r| r.status() == 200) {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served, "the API did not serve again once the cap freed");
    server.stop().await;
}

/// A zip holding `main.py`.
fn handler_zip(code: &str) -> Vec<u8> {
    use std::io::Write;
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    w.start_file("main.py", zip::write::SimpleFileOptions::default())
        .unwrap();
    w.write_all(code.as_bytes()).unwrap();
    w.finish().unwrap().into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_longer_than_the_timeouts_is_served_and_the_connection_kept() {
    let server = Server::start(short()).await;
    let client = ember_api::client::Client::new(&server.url(), None);
    let zip =
        handler_zip("import time\ndef handler(e, c):\n    time.sleep(2.5)\n    return 'slept'\n");
    use base64::Engine;
    let body = serde_json::json!({
        "handler": "main.handler",
        "code_zip": base64::engine::general_purpose::STANDARD.encode(zip),
    });
    client.deploy("sleepy", &body, &mut |_| {}).await.unwrap();
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    // The handler runs past every timeout (1 s): the request is busy, not idle.
    for _ in 0..2 {
        s.write_all(b"POST /v1/functions/sleepy/invoke HTTP/1.1\r\nhost: ember\r\ncontent-length: 2\r\n\r\n{}")
            .await
            .unwrap();
        let got = read_response(&mut s).await;
        assert!(got.starts_with("HTTP/1.1 200"), "{got}");
        assert!(got.ends_with("\"slept\""), "{got}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_streaming_deploy_reports_the_servers_status() {
    let server = Server::start(ConnectionLimits::default()).await;
    let client = ember_api::client::Client::new(&server.url(), None);
    // A first deploy without code: refused by the node after the stream started.
    let e = client
        .deploy(
            "fresh",
            &serde_json::json!({"handler": "main.handler"}),
            &mut |_| {},
        )
        .await
        .unwrap_err();
    match e {
        ember_api::client::ClientError::Api { status, code, .. } => {
            assert_eq!((status, code.as_str()), (400, "CodeRequired"));
        }
        other => panic!("{other}"),
    }
    server.stop().await;
}

/// POSTs `len` bytes of spaces (the event `{}`) to an unknown function on a new connection:
/// 404 once the body was read, or what refused it.
async fn post_spaces(addr: SocketAddr, len: usize) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v1/functions/f/invoke HTTP/1.1\r\nhost: ember\r\ncontent-length: {len}\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let _ = s.write_all(&vec![b' '; len]).await;
    read_response(&mut s).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_past_the_memory_budget_get_503_until_it_frees() {
    let server = Server::start(ConnectionLimits {
        max_buffered_body_bytes: 256 << 10,
        body_timeout: Duration::from_secs(60),
        ..short()
    })
    .await;
    assert!(
        post_spaces(server.addr, 128 << 10)
            .await
            .starts_with("HTTP/1.1 404")
    );
    // One body holds 192 KiB of the 256 KiB and stalls; another 128 KiB does not fit. Which
    // of two bodies arriving together is refused is a race: the holder is given time to be
    // read first, and the round repeated if it lost anyway.
    let mut refused = String::new();
    let mut holder = None;
    for _ in 0..50 {
        let mut h = TcpStream::connect(server.addr).await.unwrap();
        h.write_all(b"POST /v1/functions/f/invoke HTTP/1.1\r\nhost: ember\r\ncontent-length: 1000000\r\n\r\n")
            .await
            .unwrap();
        h.write_all(&vec![b' '; 192 << 10]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        refused = post_spaces(server.addr, 128 << 10).await;
        if refused.starts_with("HTTP/1.1 503") {
            holder = Some(h);
            break;
        }
    }
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    assert!(refused.contains("\"ServerBusy\""), "{refused}");
    assert!(refused.contains("connection: close"), "{refused}");
    // The holder goes: its share is freed.
    drop(holder);
    let mut served = String::new();
    for _ in 0..100 {
        served = post_spaces(server.addr, 128 << 10).await;
        if served.starts_with("HTTP/1.1 404") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served.starts_with("HTTP/1.1 404"), "{served}");
    server.stop().await;
}

/// Puts a function snapshot (made-up image files, a real `snapshot.json`) in `home`'s cache.
fn plant_snapshot(home: &std::path::Path, function: &str) -> String {
    let id = format!("snap-{function}-0123abcd");
    let dir = home.join("snapshots").join(&id);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("meta"), vec![1u8; 4096]).unwrap();
    std::fs::write(dir.join("pages"), vec![2u8; 3 * 4096]).unwrap();
    let info = ember_node::snapshots::SnapshotInfo {
        id: id.clone(),
        function: function.to_string(),
        version: 3,
        key: "0123abcd".into(),
        parent_image: Some("img-0123456789ab".into()),
        parent_meta_hash: Some("ab".repeat(32)),
        point: ember_node::function::SnapshotPoint::AfterInit,
        bytes: 0,
        pages: 3,
        created_at: 1_700_000_000,
        init_ms: 80.5,
        dump_ms: 12.0,
        store_key: None,
        fetched: false,
        working_set_pages: 0,
    };
    ember_node::snapshots::write_info(&dir, &info).unwrap();
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_are_listed_and_removed() {
    // A deployed function (a snapshot of one that is gone is removed at start).
    let server = Server::start(ConnectionLimits::default()).await;
    let client = ember_api::client::Client::new(&server.url(), None);
    use base64::Engine;
    let body = serde_json::json!({
        "handler": "main.handler",
        "code_zip": base64::engine::general_purpose::STANDARD
            .encode(handler_zip("def handler(e, c):\n    return 1\n")),
    });
    client.deploy("hello", &body, &mut |_| {}).await.unwrap();
    let home = server.stop().await;
    let id = plant_snapshot(home.path(), "hello");
    let orphan = plant_snapshot(home.path(), "gone");
    let snap_dir = home.path().join("snapshots").join(&id);
    let server = Server::start_in(home, ConnectionLimits::default()).await;
    assert!(
        !snap_dir.with_file_name(&orphan).exists(),
        "{orphan} outlived its function"
    );
    let client = ember_api::client::Client::new(&server.url(), None);
    let list = client.snapshots().await.unwrap();
    let snaps = list["snapshots"].as_array().unwrap();
    assert_eq!(snaps.len(), 1, "{list}");
    let s = &snaps[0];
    assert_eq!(s["id"], id.as_str());
    assert_eq!(s["function"], "hello");
    assert_eq!(s["version"], 3);
    assert_eq!(s["parent_image"], "img-0123456789ab");
    assert_eq!(s["point"], "after-init");
    // The store counts the image files itself.
    assert_eq!(s["bytes"], 4 * 4096);
    assert_eq!(
        (s["uses"].as_u64(), s["last_use"].is_null()),
        (Some(0), true)
    );
    assert_eq!(s["location"], "disk");
    let cache = &list["cache"];
    assert_eq!(
        (cache["mode"].as_str(), cache["eviction"].as_str()),
        (Some("local"), Some("lru"))
    );
    assert_eq!(cache["disk_bytes"], 4 * 4096);
    assert_eq!(cache["disk_budget_bytes"], 4096u64 << 20);
    assert_eq!(cache["memory_budget_bytes"], 512u64 << 20);

    client.remove_snapshot(&id, false).await.unwrap();
    assert!(!snap_dir.exists());
    let list = client.snapshots().await.unwrap();
    assert_eq!(list["snapshots"].as_array().unwrap().len(), 0);
    assert_eq!(list["cache"]["disk_bytes"], 0);
    match client.remove_snapshot(&id, false).await.unwrap_err() {
        ember_api::client::ClientError::Api {
            status,
            code,
            message,
            ..
        } => {
            assert_eq!((status, code.as_str()), (404, "NotFound"));
            assert_eq!(
                message,
                format!("snapshot {id:?} does not exist (`ember snapshot ls` lists snapshots)")
            );
        }
        other => panic!("{other}"),
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_functions_snapshot_point_is_deployed_and_shown() {
    let server = Server::start(ConnectionLimits::default()).await;
    let client = ember_api::client::Client::new(&server.url(), None);
    use base64::Engine;
    let code = base64::engine::general_purpose::STANDARD
        .encode(handler_zip("def handler(e, c):\n    return 1\n"));
    let body = serde_json::json!({
        "handler": "main.handler",
        "snapshot": "after-first-invoke",
        "code_zip": code,
    });
    let r = client.deploy("snappy", &body, &mut |_| {}).await.unwrap();
    assert_eq!(r.function["snapshot"], "after-first-invoke");
    let listed = client.list().await.unwrap();
    assert_eq!(listed[0]["snapshot"], "after-first-invoke", "{listed:?}");
    let bad = serde_json::json!({"handler": "main.handler", "snapshot": "always"});
    match client
        .deploy("snappy", &bad, &mut |_| {})
        .await
        .unwrap_err()
    {
        ember_api::client::ClientError::Api {
            status, message, ..
        } => {
            assert_eq!(status, 400);
            assert!(
                message.contains(
                    "snapshot \"always\" is invalid: must be after-init, after-first-invoke or off"
                ),
                "{message}"
            );
        }
        other => panic!("{other}"),
    }
    server.stop().await;
}
