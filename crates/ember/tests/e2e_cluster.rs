//! Privileged, with the etcd and the S3 server the test script starts on loopback: a
//! cluster of three nodes, each `ember serve --cluster` in a network namespace of its own
//! (its own address on a bridge, as separate hosts would be), and a gateway in the root
//! namespace. The nodes reach etcd and the store through forwarders on the bridge.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use common::netns::{Net, Proxy, netns_available};
use common::{EMBER, py, shared_envs};
use serde_json::{Value, json};

const NODES: usize = 3;

/// What the test script started; `None` (and why) without it.
fn services(test: &str) -> Option<(String, Vec<(String, String)>)> {
    if !netns_available() {
        return None;
    }
    let (Ok(etcd), Ok(s3)) = (
        std::env::var("EMBER_TEST_ETCD"),
        std::env::var("EMBER_TEST_S3_ENDPOINT"),
    ) else {
        eprintln!(
            "{test}: skipped: EMBER_TEST_ETCD or EMBER_TEST_S3_ENDPOINT is unset (./scripts/test \
             starts etcd and Garage and sets them)"
        );
        return None;
    };
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    Some((
        etcd,
        vec![
            ("EMBER_S3_ENDPOINT".into(), s3),
            ("EMBER_S3_BUCKET".into(), var("EMBER_TEST_S3_BUCKET")),
            ("EMBER_S3_REGION".into(), var("EMBER_TEST_S3_REGION")),
            (
                "EMBER_S3_PREFIX".into(),
                format!("cluster-{test}-{}", std::process::id()),
            ),
            (
                "AWS_ACCESS_KEY_ID".into(),
                var("EMBER_TEST_S3_AWS_ACCESS_KEY_ID"),
            ),
            (
                "AWS_SECRET_ACCESS_KEY".into(),
                var("EMBER_TEST_S3_AWS_SECRET_ACCESS_KEY"),
            ),
        ],
    ))
}

/// The first line `child` prints; the rest of its output is read (and dropped) by a thread,
/// so that it never writes to a closed pipe.
fn first_line(child: &mut Child) -> String {
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    line
}

fn addr_of(url: &str) -> std::net::SocketAddr {
    url.trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .unwrap_or_else(|e| panic!("{url}: {e}"))
}

struct Cluster {
    net: Net,
    etcd: Proxy,
    _s3: Proxy,
    prefix: String,
    placement: String,
    /// The store's variables as the gateway uses them (loopback).
    store: Vec<(String, String)>,
    /// As the nodes use them (through the bridge).
    node_store: Vec<(String, String)>,
    homes: Vec<tempfile::TempDir>,
    /// `--images` of every node (`off` unless a test needs images).
    images: String,
    /// Flags of a node's own, given before it starts.
    node_args: Vec<Vec<String>>,
    nodes: Vec<Option<Child>>,
    gateway: Option<Child>,
    gateway_url: String,
    staging: tempfile::TempDir,
    http: reqwest::Client,
}

impl Cluster {
    async fn start(test: &str, placement: &str) -> Option<Cluster> {
        Self::start_nodes(test, placement, NODES).await
    }

    /// A cluster with `running` of its hosts' nodes started (the others: [`Cluster::start_late`]).
    async fn start_nodes(test: &str, placement: &str, running: usize) -> Option<Cluster> {
        Self::start_with(test, placement, (running, NODES), "off").await
    }

    /// [`Cluster::start_nodes`] on `hosts` hosts, the nodes with `--images images`.
    async fn start_with(
        test: &str,
        placement: &str,
        (running, hosts): (usize, usize),
        images: &str,
    ) -> Option<Cluster> {
        let (etcd_url, store) = services(test)?;
        let net = Net::new(hosts).expect("make the hosts");
        let etcd = net.proxy(addr_of(&etcd_url)).await.expect("etcd forwarder");
        let s3_addr = addr_of(&store[0].1);
        let s3 = net.proxy(s3_addr).await.expect("store forwarder");
        let mut node_store = store.clone();
        node_store[0].1 = format!("http://{}", s3.addr());
        let mut c = Cluster {
            net,
            etcd,
            _s3: s3,
            placement: String::new(),
            prefix: format!("/ember-test/{test}-{}", std::process::id()),
            store,
            node_store,
            homes: Vec::new(),
            images: images.to_string(),
            node_args: vec![Vec::new(); hosts],
            nodes: Vec::new(),
            gateway: None,
            gateway_url: String::new(),
            staging: tempfile::tempdir().unwrap(),
            http: reqwest::Client::new(),
        };
        for i in 0..hosts {
            c.homes.push(tempfile::tempdir().unwrap());
            let child = (i < running).then(|| c.start_node(i));
            c.nodes.push(child);
        }
        c.placement = placement.to_string();
        c.start_gateway();
        c.wait_nodes(running).await;
        Some(c)
    }

    /// Starts node `i`, not started with the others.
    async fn start_late(&mut self, i: usize) {
        assert!(self.nodes[i].is_none());
        let n = self.nodes.iter().filter(|c| c.is_some()).count();
        self.nodes[i] = Some(self.start_node(i));
        self.wait_nodes(n + 1).await;
    }

    /// kill -9 of the gateway, and a new one in its place.
    fn restart_gateway(&mut self) {
        if let Some(mut g) = self.gateway.take() {
            let _ = g.kill();
            let _ = g.wait();
        }
        self.start_gateway();
    }

    fn node_url(&self, i: usize) -> String {
        format!("http://{}:8080", self.net.host_ip(i))
    }

    fn start_node(&self, i: usize) -> Child {
        let mut cmd = self.net.command(i, EMBER);
        cmd.arg("serve")
            .arg("--home")
            .arg(self.homes[i].path())
            .args(["--listen", &format!("{}:8080", self.net.host_ip(i))])
            .args(["--cluster", &format!("http://{}", self.etcd.addr())])
            .args(["--cluster-prefix", &self.prefix])
            .args(["--node-name", &format!("n{i}")])
            .arg("--envs-dir")
            .arg(shared_envs())
            .args(["--images", &self.images])
            .args(["--hibernate", "off", "--standby", "0"])
            .arg("--fixed-ladder")
            .args(&self.node_args[i])
            .env_remove("EMBER_TOKEN")
            .env("EMBER_LOG", "warn")
            .envs(self.node_store.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().expect("start a node");
        let line = first_line(&mut child);
        assert!(line.contains("listening"), "node {i} printed {line:?}");
        child
    }

    fn start_gateway(&mut self) {
        let placement = self.placement.clone();
        // Through the forwarder too, so that a test can cut etcd off from everyone.
        let mut child = std::process::Command::new(EMBER)
            .arg("gateway")
            .args(["--cluster", &format!("http://{}", self.etcd.addr())])
            .args(["--cluster-prefix", &self.prefix])
            .args(["--listen", "127.0.0.1:0", "--placement", &placement])
            .arg("--staging")
            .arg(self.staging.path())
            .env_remove("EMBER_TOKEN")
            .env("EMBER_LOG", "warn")
            // An Event whose node died runs again a second later.
            .env("EMBER_EVENT_RETRY_DELAY", "1s")
            .envs(self.store.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the gateway");
        let line = first_line(&mut child);
        self.gateway_url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap_or_else(|| panic!("the gateway printed {line:?}"))
            .to_string();
        self.gateway = Some(child);
    }

    async fn get(&self, url: &str) -> Value {
        let r = self.http.get(url).send().await.unwrap();
        r.json().await.unwrap_or_default()
    }

    async fn text(&self, url: &str) -> String {
        let r = self.http.get(url).send().await.unwrap();
        r.text().await.unwrap()
    }

    /// The nodes the gateway sees.
    async fn nodes(&self) -> Vec<Value> {
        let v = self
            .get(&format!("{}/v1/cluster/nodes", self.gateway_url))
            .await;
        v["nodes"].as_array().cloned().unwrap_or_default()
    }

    async fn wait_nodes(&self, n: usize) {
        let t0 = Instant::now();
        while self.nodes().await.len() != n {
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "the gateway sees {:?}, not {n} nodes",
                self.nodes().await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until `f` holds of the node records the gateway sees.
    async fn wait_records(&self, what: &str, mut f: impl FnMut(&[Value]) -> bool) {
        let t0 = Instant::now();
        loop {
            let nodes = self.nodes().await;
            if f(&nodes) {
                return;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(90),
                "{what}: never so; the nodes: {nodes:#?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn deploy(&self, name: &str, config: Value, zip: &[u8]) -> (u16, Value) {
        let mut body = config;
        body["code_zip"] = json!(base64::engine::general_purpose::STANDARD.encode(zip));
        let r = self
            .http
            .put(format!("{}/v1/functions/{name}", self.gateway_url))
            .json(&body)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or_default())
    }

    /// Invokes through the gateway: (status, node, placement, start, body).
    async fn invoke(&self, name: &str, event: Value) -> Served {
        self.invoke_at(&self.gateway_url, name, event).await
    }

    async fn invoke_at(&self, base: &str, name: &str, event: Value) -> Served {
        let url = format!("{base}/v1/functions/{name}/invoke");
        served(&self.http, &url, &event).await
    }

    fn kill9(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in self
            .nodes
            .iter_mut()
            .chain(std::iter::once(&mut self.gateway))
        {
            if let Some(mut c) = c.take() {
                let pid = nix::unistd::Pid::from_raw(c.id() as i32);
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
                let t0 = Instant::now();
                while t0.elapsed() < Duration::from_secs(10) {
                    if let Ok(Some(_)) = c.try_wait() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// POSTs `event` to the invoke route `url`: what came back.
async fn served(http: &reqwest::Client, url: &str, event: &Value) -> Served {
    let r = http.post(url).json(event).send().await.unwrap();
    let h = |n: &str| common::header(&r, n);
    let (status, node, placement, start) = (
        r.status().as_u16(),
        h("ember-node"),
        h("ember-placement"),
        h("ember-start"),
    );
    let raw = r.text().await.unwrap();
    Served {
        status,
        node,
        placement,
        start,
        body: serde_json::from_str(&raw).unwrap_or(Value::String(raw)),
    }
}

#[derive(Debug)]
struct Served {
    status: u16,
    node: String,
    placement: String,
    start: String,
    body: Value,
}

const HELLO: &str = "import os\n\ndef handler(event, context):\n    return {'hi': event.get('who'), 'pid': os.getpid()}\n";

fn by_id<'a>(nodes: &'a [Value], id: &str) -> Option<&'a Value> {
    nodes.iter().find(|n| n["id"] == id)
}

/// A deploy through the gateway reaches every node; each serves the function; the
/// least-loaded gateway spreads cold starts over all of them; a node refuses deploys of
/// its own; a delete through the gateway reaches every node.
#[tokio::test(flavor = "multi_thread")]
async fn deploy_once_serve_everywhere() {
    let Some(c) = Cluster::start("everywhere", "least-loaded").await else {
        return;
    };
    let (status, doc) = c
        .deploy("hello", json!({"handler": "main.handler"}), &py(HELLO))
        .await;
    assert_eq!(status, 201, "{doc}");
    assert_eq!(doc["nodes_waited"], 3, "{doc}");
    for i in 0..NODES {
        assert_eq!(doc["nodes"][format!("n{i}")], "ready", "{doc}");
        let r = c
            .invoke_at(&c.node_url(i), "hello", json!({"who": i}))
            .await;
        assert_eq!(r.status, 200, "node {i}: {r:?}");
        assert_eq!(r.body["hi"], i, "{r:?}");
    }
    // Those direct invocations left one idle instance on each node: stop them, so the
    // gateway's starts are cold and spread by load.
    for i in 0..NODES {
        let r = c
            .http
            .delete(format!("{}/v1/functions/hello/instances", c.node_url(i)))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    c.wait_records("no idle instances", |nodes| {
        nodes
            .iter()
            .all(|n| n["holdings"]["functions"]["hello"]["live"] == 0)
    })
    .await;
    let mut seen = std::collections::BTreeSet::new();
    for k in 0..6 {
        let r = c.invoke("hello", json!({"who": k})).await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.body["hi"], k);
        assert!(r.placement.contains("us="), "{r:?}");
        seen.insert(r.node.clone());
        if seen.len() == NODES {
            break;
        }
        // The node publishes its new instance within a quarter second.
        tokio::time::sleep(Duration::from_millis(800)).await;
    }
    assert_eq!(seen.len(), NODES, "least-loaded used only {seen:?}");
    // `ember ls` through the gateway: the cluster's instances, summed over the nodes.
    c.wait_records("three live instances", |nodes| {
        nodes
            .iter()
            .all(|n| n["holdings"]["functions"]["hello"]["live"] == 1)
    })
    .await;
    let described = c
        .get(&format!("{}/v1/functions/hello", c.gateway_url))
        .await;
    assert_eq!(described["instances_live"], 3, "{described}");
    let out = common::cli_at(&c.gateway_url, &["ls"]);
    assert!(out.ok, "{}", out.stderr);
    assert!(out.stdout.contains("hello"), "{}", out.stdout);

    // The CLI deploys and invokes through the gateway as through a node.
    let dir = common::examples().join("helloworld");
    let out = common::cli_at(
        &c.gateway_url,
        &["deploy", dir.to_str().unwrap(), "--name", "viacli"],
    );
    assert!(out.ok, "{}", out.stderr);
    assert!(
        out.stdout.starts_with("created viacli version 1"),
        "{}",
        out.stdout
    );
    assert!(out.stderr.contains("node n2: ready"), "{}", out.stderr);
    let out = common::cli_at(&c.gateway_url, &["invoke", "viacli"]);
    assert!(out.ok, "{}", out.stderr);

    // A node of a cluster takes no deploy of its own.
    let r = c
        .http
        .put(format!("{}/v1/functions/other", c.node_url(0)))
        .json(&json!({"handler": "main.handler",
            "code_zip": base64::engine::general_purpose::STANDARD.encode(py(HELLO))}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "ClusterManaged", "{body}");
    // Nor one through Lambda's API (its invocations stay open).
    let r = c
        .http
        .delete(format!("{}/2015-03-31/functions/hello", c.node_url(0)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    assert_eq!(r.headers()["x-amzn-errortype"], "ResourceConflictException");
    let r = c
        .http
        .post(format!(
            "{}/2015-03-31/functions/hello/invocations",
            c.node_url(0)
        ))
        .json(&json!({"who": "lambda"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let listed = c.get(&format!("{}/v1/functions", c.gateway_url)).await;
    assert_eq!(listed["functions"][0]["name"], "hello", "{listed}");
    assert_eq!(listed["functions"][0]["version"], 1, "{listed}");
    assert_eq!(listed["functions"][1]["name"], "viacli", "{listed}");

    let r = c
        .http
        .delete(format!("{}/v1/functions/hello", c.gateway_url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let t0 = Instant::now();
    for i in 0..NODES {
        loop {
            let r = c
                .http
                .get(format!("{}/v1/functions/hello", c.node_url(i)))
                .send()
                .await
                .unwrap();
            if r.status() == 404 {
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(30), "node {i} kept it");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let r = c.invoke("hello", json!({})).await;
    assert_eq!(r.status, 404, "{r:?}");
}

/// Snapshot-aware placement: a start goes where the function's snapshot is cached, then
/// where its warm instance is; with that node killed (kill -9), requests go to the others
/// and none is lost.
#[tokio::test(flavor = "multi_thread")]
async fn placement_follows_the_snapshot_and_survives_a_kill() {
    if !common::need_sandbox() {
        return;
    }
    let Some(mut c) = Cluster::start("snapshot", "snapshot-aware").await else {
        return;
    };
    let (status, doc) = c
        .deploy("hello", json!({"handler": "main.handler"}), &py(HELLO))
        .await;
    assert_eq!(status, 201, "{doc}");
    let first = c.invoke("hello", json!({"who": "a"})).await;
    assert_eq!(first.status, 200, "{first:?}");
    assert_eq!(first.start, "cold-boot", "{first:?}");
    let holder = first.node.clone();
    // Its snapshot is taken after the init, in the background.
    c.wait_records("the snapshot cached", |nodes| {
        by_id(nodes, &holder)
            .is_some_and(|n| n["holdings"]["functions"]["hello"]["snapshot"] == true)
    })
    .await;
    let i: usize = holder[1..].parse().unwrap();
    let r = c
        .http
        .delete(format!("{}/v1/functions/hello/instances", c.node_url(i)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    c.wait_records("no idle instance", |nodes| {
        by_id(nodes, &holder).is_some_and(|n| n["holdings"]["functions"]["hello"]["idle"] == 0)
    })
    .await;
    let snap = c.invoke("hello", json!({"who": "b"})).await;
    assert_eq!(snap.status, 200, "{snap:?}");
    assert_eq!(snap.node, holder, "{snap:?}");
    assert!(snap.placement.starts_with("snapshot;"), "{snap:?}");
    assert_eq!(snap.start, "function-snapshot", "{snap:?}");
    c.wait_records("a warm instance", |nodes| {
        by_id(nodes, &holder).is_some_and(|n| n["holdings"]["functions"]["hello"]["idle"] == 1)
    })
    .await;
    let warm = c.invoke("hello", json!({"who": "c"})).await;
    assert_eq!(warm.node, holder, "{warm:?}");
    assert!(warm.placement.starts_with("warm;"), "{warm:?}");
    assert_eq!(warm.start, "warm", "{warm:?}");

    // The holder dies: its lease still runs for seconds, but requests go elsewhere.
    c.kill9(i);
    for k in 0..5 {
        let r = c.invoke("hello", json!({"who": k})).await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_ne!(r.node, holder, "{r:?}");
        assert_eq!(r.body["hi"], k);
    }
    // And it leaves placement once its lease expires.
    c.wait_records("the killed node gone", |nodes| {
        nodes.len() == NODES - 1 && by_id(nodes, &holder).is_none()
    })
    .await;
}

/// `slow` (sleeps `event.sleep` s), one instance per node: a second request there waits in
/// its queue.
async fn deploy_slow(c: &Cluster) {
    let (status, doc) = c
        .deploy(
            "slow",
            json!({"handler": "main.handler", "max_instances": 1, "snapshot": "off"}),
            &py(SLOW),
        )
        .await;
    assert_eq!(status, 201, "{doc}");
}

/// The first node seen with at least `n` requests in flight.
async fn busy_node(c: &Cluster, n: u64) -> String {
    let mut victim = String::new();
    c.wait_records("a busy node", |nodes| {
        match nodes
            .iter()
            .find(|r| r["holdings"]["load"]["in_flight"].as_u64() >= Some(n))
        {
            Some(r) => {
                victim = r["id"].as_str().unwrap().to_string();
                true
            }
            None => false,
        }
    })
    .await;
    victim
}

const SLOW: &str = "import time\n\ndef handler(event, context):\n    print('running', event['who'], flush=True)\n    time.sleep(event['sleep'])\n    return {'who': event['who']}\n";

/// kill -9 of a node under load: the request its instance was running is answered 502
/// `NodeLost` (it may have run: not run again), the ones queued there go to other nodes and
/// are answered; none is lost, none runs twice.
#[tokio::test(flavor = "multi_thread")]
async fn a_node_killed_under_load_hands_on_what_it_had_not_started() {
    if !common::need_sandbox() {
        return;
    }
    let Some(mut c) = Cluster::start("killed", "snapshot-aware").await else {
        return;
    };
    deploy_slow(&c).await;
    let requests: Vec<_> = (0..6)
        .map(|k| {
            let http = c.http.clone();
            let url = format!("{}/v1/functions/slow/invoke", c.gateway_url);
            tokio::spawn(
                async move { (k, served(&http, &url, &json!({"who": k, "sleep": 2})).await) },
            )
        })
        .collect();
    // The node with a request running and one queued.
    let victim = busy_node(&c, 2).await;
    // Its first request's handler is running (it said so in the node's log).
    let i: usize = victim[1..].parse().unwrap();
    let t0 = Instant::now();
    loop {
        let log = c
            .text(&format!(
                "{}/v1/functions/slow/logs?lines=50",
                c.node_url(i)
            ))
            .await;
        if log.contains("running") {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no handler ran: {log}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    c.kill9(i);
    let mut lost = 0;
    let mut handed_on = 0;
    for r in requests {
        let (
            k,
            Served {
                status,
                node,
                placement,
                body,
                ..
            },
        ) = r.await.unwrap();
        match status {
            200 => {
                assert_eq!(body["who"], k, "{body}");
                assert_ne!(node, victim, "answered by the killed node? {placement}");
                if !placement.ends_with("tried=1") {
                    handed_on += 1;
                }
            }
            502 => {
                assert_eq!(body["error"]["code"], "NodeLost", "{body}");
                lost += 1;
            }
            other => panic!("request {k}: {other} {body}"),
        }
    }
    assert_eq!(lost, 1, "one request was running on the killed node");
    assert!(handed_on >= 1, "the queued request went elsewhere");
}

/// etcd cut off from every node and the gateway for seconds (longer than the nodes' leases):
/// invocations go on; a deploy is refused as unavailable; once etcd answers, the nodes
/// register again and take the next deploy. Then the gateway is killed and replaced: it
/// lost nothing.
#[tokio::test(flavor = "multi_thread")]
async fn etcd_briefly_unreachable_and_a_gateway_restarted() {
    let Some(mut c) = Cluster::start("outage", "snapshot-aware").await else {
        return;
    };
    let v1 = "def handler(event, context):\n    return {'v': 1}\n";
    let v2 = "def handler(event, context):\n    return {'v': 2}\n";
    let config = json!({"handler": "main.handler"});
    let (status, doc) = c.deploy("f", config.clone(), &py(v1)).await;
    assert_eq!(status, 201, "{doc}");

    c.etcd.cut();
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(7) {
        let r = c.invoke("f", json!({})).await;
        assert_eq!(r.status, 200, "while etcd is unreachable: {r:?}");
        assert_eq!(r.body["v"], 1);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let (status, doc) = c.deploy("f", config.clone(), &py(v2)).await;
    assert_eq!(status, 503, "{doc}");
    assert_eq!(doc["error"]["code"], "ClusterUnavailable", "{doc}");
    let health = c.get(&format!("{}/v1/health", c.gateway_url)).await;
    assert_eq!(health["etcd"], "unreachable", "{health}");
    c.etcd.restore();

    // The gateway lists etcd anew (the nodes' leases expired meanwhile), then sees each
    // node register again.
    let t0 = Instant::now();
    loop {
        let health = c.get(&format!("{}/v1/health", c.gateway_url)).await;
        if health["etcd"] == "following" && health["nodes"] == NODES {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "{health}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, doc) = c.deploy("f", config.clone(), &py(v2)).await;
    assert_eq!(status, 200, "{doc}");
    assert_eq!(doc["nodes_waited"], 3, "{doc}");
    assert_eq!(doc["version"], 2, "{doc}");
    for i in 0..NODES {
        let r = c.invoke_at(&c.node_url(i), "f", json!({})).await;
        assert_eq!(r.body["v"], 2, "node {i}: {r:?}");
    }

    c.restart_gateway();
    c.wait_nodes(NODES).await;
    let listed = c.get(&format!("{}/v1/functions", c.gateway_url)).await;
    assert_eq!(listed["functions"][0]["version"], 2, "{listed}");
    let r = c.invoke("f", json!({})).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["v"], 2);
}

/// A node that joins after the deploy and after another node took the function's snapshot
/// deploys the function from the cluster's definition (its code from the store) and restores
/// the snapshot the store holds.
#[tokio::test(flavor = "multi_thread")]
async fn a_late_node_deploys_and_restores_from_the_store() {
    if !common::need_sandbox() {
        return;
    }
    let Some(mut c) = Cluster::start_nodes("late", "snapshot-aware", 2).await else {
        return;
    };
    let (status, doc) = c
        .deploy("hello", json!({"handler": "main.handler"}), &py(HELLO))
        .await;
    assert_eq!(status, 201, "{doc}");
    assert_eq!(doc["nodes_waited"], 2, "{doc}");
    let first = c.invoke("hello", json!({"who": 1})).await;
    assert_eq!(first.status, 200, "{first:?}");
    let i: usize = first.node[1..].parse().unwrap();
    // Its snapshot, taken after the init, uploaded in the background.
    let t0 = Instant::now();
    loop {
        let v = c.get(&format!("{}/v1/snapshots", c.node_url(i))).await;
        if v["snapshots"]
            .as_array()
            .is_some_and(|a| a.iter().any(|s| s["remote"] == "stored"))
        {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(90),
            "never uploaded: {v}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    c.start_late(2).await;
    c.wait_records("the late node serves it", |nodes| {
        by_id(nodes, "n2").is_some_and(|n| {
            n["deployed"]["hello"]["error"].is_null() && n["deployed"]["hello"]["revision"].is_i64()
        })
    })
    .await;
    let r = c
        .invoke_at(&c.node_url(2), "hello", json!({"who": 2}))
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.start, "function-snapshot", "{r:?}");
    assert_eq!(r.body["hi"], 2);
}

/// This node's images as `GET /v1/images` lists them.
async fn images_of(c: &Cluster, i: usize) -> Vec<Value> {
    let v = c.get(&format!("{}/v1/images", c.node_url(i))).await;
    v["images"].as_array().cloned().unwrap_or_default()
}

/// Chunks the pooled image `img` got from the place whose description starts with `place`.
fn given(img: &Value, place: &str) -> u64 {
    img["pool"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["place"].as_str().is_some_and(|s| s.starts_with(place)))
        .filter_map(|p| p["chunks"].as_u64())
        .sum()
}

/// A handler that walks every object the interpreter holds (the image's heap, frozen out
/// of the collector's sight at the dump: unfrozen first), and so touches pages a first
/// request does not.
const WALKER: &str = "import gc\n\ndef handler(event, context):\n    if event.get('walk'):\n        gc.unfreeze()\n        n = len(gc.get_objects())\n        gc.collect()\n    else:\n        n = 0\n    return {'hi': event.get('who'), 'objects': n}\n";

/// WarmSwap's remote pool. Two nodes hold the function's image in memory. A third joins
/// late in the default mode (`copy`) and ends with a copy of its own. A fourth joins in
/// `--image-pool pool` mode: it makes no copy, and restores the image lazily from the
/// memory of the nodes that hold it (their page servers), every chunk checked against the
/// store's metadata. With those nodes killed, the chunks it still lacks come from the store.
#[tokio::test(flavor = "multi_thread")]
async fn late_nodes_restore_an_image_from_the_pool() {
    if !common::need_sandbox() {
        return;
    }
    let Some(mut c) = Cluster::start_with("pool", "snapshot-aware", (2, 4), "on-deploy").await
    else {
        return;
    };
    let config = json!({"handler": "main.handler", "snapshot": "off"});
    let (status, doc) = c.deploy("walker", config, &py(WALKER)).await;
    assert_eq!(status, 201, "{doc}");
    let in_memory = |nodes: &[Value], id: &str| {
        by_id(nodes, id).is_some_and(|n| {
            let h = &n["holdings"]["functions"]["walker"];
            h["image"] == true && h["image_memory"] == true
        })
    };
    // Both nodes build (or fetch) the image, hold it in memory, and one uploads it.
    c.wait_records("the image in both nodes' memory", |nodes| {
        in_memory(nodes, "n0") && in_memory(nodes, "n1")
    })
    .await;
    let t0 = Instant::now();
    'stored: loop {
        for i in 0..2 {
            if images_of(&c, i)
                .await
                .iter()
                .any(|img| img["remote"] == "stored")
            {
                break 'stored;
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(90),
            "the image never stored"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The default: served from the pool at once, and a copy of its own in the end.
    c.start_late(2).await;
    c.wait_records("the third node's own copy", |nodes| in_memory(nodes, "n2"))
        .await;
    let images = images_of(&c, 2).await;
    assert_eq!(images.len(), 1, "{images:#?}");
    assert_eq!(images[0]["location"], "memory", "{images:#?}");
    let r = c
        .invoke_at(&c.node_url(2), "walker", json!({"who": 0}))
        .await;
    assert_eq!((r.status, r.start.as_str()), (200, "image"), "{r:?}");

    c.node_args[3] = vec!["--image-pool".into(), "pool".into()];
    c.start_late(3).await;
    c.wait_records(
        "the fourth node restores the image from the pool",
        |nodes| {
            by_id(nodes, "n3").is_some_and(|n| {
                let h = &n["holdings"]["functions"]["walker"];
                h["image_pooled"] == true && h["image"] == false
            })
        },
    )
    .await;
    let r = c
        .invoke_at(&c.node_url(3), "walker", json!({"who": 1}))
        .await;
    assert_eq!((r.status, r.start.as_str()), (200, "image"), "{r:?}");
    assert_eq!(r.body["hi"], 1);
    let images = images_of(&c, 3).await;
    assert_eq!(images.len(), 1, "{images:#?}");
    assert_eq!(images[0]["location"], "pool", "{images:#?}");
    let from_peers = given(&images[0], "peers");
    assert!(from_peers > 0, "{images:#?}");
    assert_eq!(given(&images[0], "snapshot store"), 0, "{images:#?}");
    let mut served = 0;
    for i in 0..3 {
        let text = c.text(&format!("{}/metrics", c.node_url(i))).await;
        served += common::metric(&text, "ember_page_server_chunks_total");
    }
    assert_eq!(served, from_peers);

    // Every holder dies. A new instance walks the whole heap: what the pool has not given
    // yet comes from the store, checked the same way, and the node still has no copy.
    for i in 0..3 {
        c.kill9(i);
    }
    let r = c
        .http
        .delete(format!("{}/v1/functions/walker/instances", c.node_url(3)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .invoke_at(&c.node_url(3), "walker", json!({"who": 2, "walk": true}))
        .await;
    assert_eq!((r.status, r.start.as_str()), (200, "image"), "{r:?}");
    assert!(r.body["objects"].as_u64().unwrap_or(0) > 1000, "{r:?}");
    let images = images_of(&c, 3).await;
    assert_eq!(images[0]["location"], "pool", "{images:#?}");
    assert!(given(&images[0], "snapshot store") > 0, "{images:#?}");
}

/// `ember bench cluster` end to end, small: both placements replayed through their own
/// cluster, the throughput measured, the JSON and the plot written.
#[tokio::test(flavor = "multi_thread")]
async fn bench_cluster_runs_and_reports() {
    if !common::need_sandbox() {
        return;
    }
    let Some((etcd, store)) = services("bench") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("c.json");
    let run = std::process::Command::new(EMBER)
        .args(["bench", "cluster", "--functions", "4", "--minutes", "3"])
        .args([
            "--compression",
            "120",
            "--rps-seconds",
            "1",
            "--rps-clients",
            "2",
        ])
        .args(["--pool-rounds", "2", "--pool-workload", "helloworld"])
        .args(["--etcd", &etcd])
        .arg("--envs-dir")
        .arg(shared_envs())
        .arg("--out")
        .arg(&out)
        .envs(store.iter().map(|(k, v)| (k, v)))
        .env("EMBER_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(stdout.contains("cold-start p99"), "{stdout}");
    let doc: Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    let runs = doc["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2, "{doc}");
    for r in runs {
        let calls = r["calls"].as_array().unwrap();
        assert!(!calls.is_empty(), "{r}");
        for c in calls {
            assert_ne!(c["start"], "error", "{c}");
            assert!(c["node"].as_str().unwrap().starts_with('b'), "{c}");
            assert!(c["placement_us"].as_f64().is_some(), "{c}");
        }
    }
    let t = doc["throughput"].as_array().unwrap();
    assert_eq!(t.len(), 2, "{doc}");
    assert!(t.iter().all(|t| t["requests"].as_u64() > Some(0)), "{doc}");
    let svg = std::fs::read_to_string(out.with_extension("svg")).unwrap();
    assert!(svg.contains("snapshot-aware: cold"), "the plot");
    // The image pool's rounds: every start as it should be, the fresh nodes' pages from p0.
    assert!(stdout.contains("pool vs local"), "{stdout}");
    let starts = doc["pool"]["starts"].as_array().unwrap();
    assert_eq!(starts.len(), 8, "{doc}");
    for s in starts {
        let want = if s["kind"] == "cold-boot" {
            "cold-boot"
        } else {
            "image"
        };
        assert_eq!(s["start"], want, "{s}");
        if s["kind"] == "pool" {
            assert!(s["chunks_from_peers"].as_u64() > Some(0), "{s}");
        }
    }
}

/// Event invocations through the gateway's Lambda API are queued in etcd and run on the
/// nodes; with a node killed while it runs one, every event still completes (the one it was
/// running, again elsewhere: at least once), and none is dropped. RequestResponse through
/// the Lambda API answers as Lambda does.
#[tokio::test(flavor = "multi_thread")]
async fn events_complete_when_a_node_is_killed() {
    if !common::need_sandbox() {
        return;
    }
    let Some(mut c) = Cluster::start("events", "snapshot-aware").await else {
        return;
    };
    deploy_slow(&c).await;
    let lambda = format!("{}/2015-03-31/functions/slow/invocations", c.gateway_url);
    let r = c
        .http
        .post(&lambda)
        .json(&json!({"who": "rr", "sleep": 0}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().contains_key("ember-node"));
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["who"], "rr");
    let r = c
        .http
        .post(format!(
            "{}/2015-03-31/functions/nope/invocations",
            c.gateway_url
        ))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["x-amzn-errortype"], "ResourceNotFoundException");

    let events = 6;
    for k in 0..events {
        let r = c
            .http
            .post(&lambda)
            .header("x-amz-invocation-type", "Event")
            .json(&json!({"who": k, "sleep": 2}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        assert!(r.headers().contains_key("x-amzn-requestid"));
    }
    // A node running one of them.
    let victim = busy_node(&c, 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.kill9(victim[1..].parse().unwrap());
    let t0 = Instant::now();
    let stats = loop {
        let s = c.get(&format!("{}/v1/cluster/events", c.gateway_url)).await;
        if s["queued"] == 0 {
            break s;
        }
        assert!(t0.elapsed() < Duration::from_secs(90), "{s}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(stats["done"], events, "{stats}");
    assert_eq!(stats["dropped"], 0, "{stats}");
    // The killed node's event went back to the queue and ran again elsewhere.
    assert!(stats["retried"].as_u64() >= Some(1), "{stats}");
}
