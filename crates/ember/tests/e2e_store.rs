//! Privileged, with the S3 server the test script starts (Garage on loopback): in
//! `snapshots = "remote"` mode the node uploads every dependency image and function snapshot
//! it makes, in the background, and the store holds exactly their files.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::{Daemon, eventually, need_sandbox, py};
use ember_store::backend::s3::S3;
use ember_store::{Repo, S3Config, SetRef};
use serde_json::{Value, json};

/// The daemon's environment for the test script's S3 server, under a prefix of `test`'s
/// own; `None` (and why) without one.
fn store_env(test: &str) -> Option<Vec<(String, String)>> {
    let Ok(endpoint) = std::env::var("EMBER_TEST_S3_ENDPOINT") else {
        eprintln!(
            "{test}: skipped: EMBER_TEST_S3_ENDPOINT is unset (./scripts/test starts Garage and sets it)"
        );
        return None;
    };
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    Some(vec![
        ("EMBER_S3_ENDPOINT".into(), endpoint),
        ("EMBER_S3_BUCKET".into(), var("EMBER_TEST_S3_BUCKET")),
        ("EMBER_S3_REGION".into(), var("EMBER_TEST_S3_REGION")),
        (
            "EMBER_S3_PREFIX".into(),
            format!("e2e-{test}-{}", std::process::id()),
        ),
        (
            "AWS_ACCESS_KEY_ID".into(),
            var("EMBER_TEST_S3_AWS_ACCESS_KEY_ID"),
        ),
        (
            "AWS_SECRET_ACCESS_KEY".into(),
            var("EMBER_TEST_S3_AWS_SECRET_ACCESS_KEY"),
        ),
    ])
}

fn listing(d: &Daemon, what: &str, key: &str) -> Vec<Value> {
    let out = d.cli(&[what, "ls", "--json"]);
    assert!(out.ok, "{}", out.stderr);
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    v[key].as_array().cloned().unwrap_or_default()
}

/// Waits until the one entry of `what`'s listing is stored remotely; its id (a snapshot's
/// name in the store is its `store_key`: see [`set_of`]).
fn stored(d: &Daemon, what: &str, key: &str) -> String {
    stored_entry(d, what, key)["id"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// The id of the one snapshot `d` lists, and its set's id in the store.
fn set_of(d: &Daemon) -> (String, String) {
    let one = stored_entry(d, "snapshot", "snapshots");
    let s = |k: &str| one[k].as_str().unwrap_or_default().to_string();
    (s("id"), s("store_key"))
}

fn stored_entry(d: &Daemon, what: &str, key: &str) -> Value {
    let mut entry = Value::Null;
    let ok = eventually(Duration::from_secs(120), || {
        let list = listing(d, what, key);
        match list.as_slice() {
            [one] if one["remote"] == "stored" => {
                entry = one.clone();
                true
            }
            [one]
                if one["remote"]
                    .as_str()
                    .is_some_and(|r| r.starts_with("failed")) =>
            {
                panic!("the upload failed: {one}")
            }
            _ => false,
        }
    });
    assert!(ok, "no {what} was uploaded: {:?}", listing(d, what, key));
    entry
}

/// The snapshot fetches daemon `d` counted as failed.
async fn fetches_failed(d: &Daemon) -> u64 {
    let series = "ember_store_fetches_total{kind=\"snapshot\",result=\"failed\"}";
    common::metric(&d.metrics().await, series)
}

/// File `name` of set `snapshot/<set>` as the store's manifest names it now.
async fn set_file(repo: &Repo, set: &str, name: &str) -> Option<ember_store::manifest::FileEntry> {
    let m = repo
        .manifest(&SetRef::new("snapshot", set).unwrap())
        .await
        .unwrap();
    m.files.into_iter().find(|f| f.name == name)
}

/// Waits until `b` holds a snapshot (prefetched once its image was ready).
fn prefetched(b: &Daemon) {
    assert!(
        eventually(Duration::from_secs(90), || !listing(
            b,
            "snapshot",
            "snapshots"
        )
        .is_empty()),
        "no snapshot prefetched"
    );
}

/// A new instance of `name` on `b` started with `event` once `b`'s copy of its snapshot is
/// removed (the one snapshot `b` lists).
async fn start_without_copy(b: &Daemon, name: &str, event: &str) -> common::Invoked {
    if let Some(s) = listing(b, "snapshot", "snapshots").first() {
        let out = b.cli(&["snapshot", "rm", s["id"].as_str().unwrap()]);
        assert!(out.ok, "{}", out.stderr);
    }
    b.stop_instances(name).await;
    b.invoke(name, event).await
}

/// A start of `name` on `b` without a copy of its snapshot (removed first) while the store
/// fails as `what` says: answered (200), after a fetch that `b` counted as failed (at once,
/// or when its background part failed).
async fn start_while_failing(b: &Daemon, name: &str, event: &str, what: &str) -> common::Invoked {
    let failed_before = fetches_failed(b).await;
    let r = start_without_copy(b, name, event).await;
    assert_eq!(r.status, 200, "{what}: {}", r.raw);
    assert!(
        r.timing.contains("fetch"),
        "{what}: no fetch tried: {}",
        r.timing
    );
    let mut failed = failed_before;
    for _ in 0..150 {
        failed = fetches_failed(b).await;
        if failed > failed_before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(failed > failed_before, "{what}: no failed fetch counted");
    r
}

/// The store a daemon started with `env` uses: its backend, and a repository over it.
fn store_of(env: &[(String, String)]) -> (Arc<S3>, Repo) {
    let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let cfg = S3Config::from_lookup(get).unwrap().unwrap();
    let backend = Arc::new(S3::open(&cfg).unwrap());
    (backend.clone(), Repo::new(backend))
}

/// The set `kind/id` from the store equals the node's directory `dir`, file by file.
async fn same_as_stored(env: &[(String, String)], kind: &str, id: &str, dir: &Path) {
    let (_, repo) = store_of(env);
    let m = repo
        .manifest(&SetRef::new(kind, id).unwrap())
        .await
        .unwrap();
    let out = tempfile::tempdir().unwrap();
    repo.get_files(&m, out.path()).await.unwrap();
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let stored: Vec<String> = m.files.iter().map(|f| f.name.clone()).collect();
    assert_eq!(stored, names, "{kind}/{id}");
    for n in &names {
        let (a, b) = (
            std::fs::read(dir.join(n)).unwrap(),
            std::fs::read(out.path().join(n)).unwrap(),
        );
        assert!(a == b, "{kind}/{id}: {n} differs from the node's");
    }
}

/// A node in remote mode that builds images at deploy.
const REMOTE: [&str; 4] = ["--images", "on-deploy", "--snapshots", "remote"];

/// The node that puts `hello` in the store: deployed, its image stored, invoked once, its
/// snapshot stored. The daemon, its home, the image's id and the snapshot's set.
async fn first_node(env: &[(String, String)]) -> (Daemon, tempfile::TempDir, String, String) {
    first_node_of(env, "hello", deploy_hello).await
}

/// [`first_node`] of function `name`, deployed by `deploy`.
async fn first_node_of(
    env: &[(String, String)],
    name: &str,
    deploy: impl AsyncFnOnce(&Daemon),
) -> (Daemon, tempfile::TempDir, String, String) {
    let home = tempfile::tempdir().unwrap();
    let d = Daemon::start_env(home.path(), &REMOTE, env);
    deploy(&d).await;
    let image = stored(&d, "image", "images");
    let r = d.invoke(name, "{}").await;
    assert_eq!(r.status, 200, "{}", r.raw);
    let (_, set) = set_of(&d);
    (d, home, image, set)
}

/// Node `a` restores `name` from its own snapshot once, so that the snapshot's working set
/// is recorded and stored with it; its working set's size. `a` lists one snapshot.
async fn record_working_set(a: &Daemon, name: &str) -> u64 {
    a.stop_instances(name).await;
    let r = a.invoke(name, "{}").await;
    assert_eq!(r.status, 200, "{}", r.raw);
    assert!(!r.snapshot.is_empty(), "not from its snapshot: {}", r.raw);
    let mut pages = 0;
    let ok = eventually(Duration::from_secs(60), || {
        let l = listing(a, "snapshot", "snapshots");
        pages = l
            .first()
            .filter(|s| s["remote"] == "stored")
            .and_then(|s| s["working_set_pages"].as_u64())
            .unwrap_or(0);
        pages > 0
    });
    assert!(
        ok,
        "no working set recorded and stored: {:?}",
        listing(a, "snapshot", "snapshots")
    );
    pages
}

/// A function without packages (its image is the bare runtime's).
async fn deploy_hello(d: &Daemon) {
    deploy_py(d, "hello", "def handler(e, c):\n    return {'ok': True}\n").await;
}

/// Deploys `name`, a Python function without packages whose `main.py` is `code`.
async fn deploy_py(d: &Daemon, name: &str, code: &str) {
    let (status, body) = d
        .deploy_zip(
            name,
            json!({"handler": "main.handler", "packages": []}),
            &py(code),
        )
        .await;
    assert!(status == 201 || status == 200, "{status} {body}");
}

#[tokio::test]
async fn remote_mode_uploads_every_image_and_snapshot_the_node_makes() {
    if !need_sandbox() {
        return;
    }
    let test = "remote_mode_uploads_every_image_and_snapshot_the_node_makes";
    let Some(env) = store_env(test) else { return };
    let home = tempfile::tempdir().unwrap();
    // Its garbage collections every two seconds: they lose nothing it stored.
    let mut env = env;
    env.push(("EMBER_S3_GC_SECONDS".into(), "2".into()));
    let d = Daemon::start_env(home.path(), &REMOTE, &env);
    deploy_hello(&d).await;
    let image = stored(&d, "image", "images");
    same_as_stored(&env, "image", &image, &d.home.join("images").join(&image)).await;

    // The first start takes the function's snapshot in the background; it is uploaded too.
    let r = d.invoke("hello", "{}").await;
    assert_eq!(r.status, 200, "{}", r.raw);
    let (snap, set) = set_of(&d);
    same_as_stored(
        &env,
        "snapshot",
        &set,
        &d.home.join("snapshots").join(&snap),
    )
    .await;

    let out = d.cli(&["snapshot", "ls"]);
    assert!(out.stdout.contains("+remote"), "{}", out.stdout);
    let m = d.metrics().await;
    for kind in ["image", "snapshot"] {
        let line = format!("ember_store_uploads_total{{kind=\"{kind}\",result=\"stored\"}} 1");
        assert!(m.contains(&line), "{line} in\n{m}");
    }
    assert!(
        !home
            .path()
            .join("uploads")
            .read_dir()
            .unwrap()
            .any(|_| true),
        "staging emptied"
    );
    let done = "ember_store_collections_total{kind=\"chunk\",result=\"done\"}";
    let mut collected = false;
    for _ in 0..100 {
        if d.metrics().await.contains(done) {
            collected = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(collected, "no collection ran:\n{}", d.metrics().await);
    same_as_stored(&env, "image", &image, &d.home.join("images").join(&image)).await;
    same_as_stored(
        &env,
        "snapshot",
        &set,
        &d.home.join("snapshots").join(&snap),
    )
    .await;
}

#[test]
fn remote_mode_without_a_store_refuses_to_start_and_says_what_to_set() {
    let home = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ember"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--snapshots",
            "remote",
            "--no-sandbox",
        ])
        .arg("--home")
        .arg(home.path())
        .env_remove("EMBER_S3_ENDPOINT")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("EMBER_S3_ENDPOINT") && err.contains("remote"),
        "{err}"
    );
}

#[tokio::test]
async fn a_node_switched_to_remote_uploads_what_it_already_holds() {
    if !need_sandbox() {
        return;
    }
    let test = "a_node_switched_to_remote_uploads_what_it_already_holds";
    let Some(env) = store_env(test) else { return };
    let home = tempfile::tempdir().unwrap();
    let mut d = Daemon::start(
        home.path(),
        &["--images", "on-deploy", "--snapshots", "local"],
    );
    deploy_hello(&d).await;
    assert!(
        eventually(Duration::from_secs(120), || listing(&d, "image", "images")
            .len()
            == 1),
        "no image was built"
    );
    assert!(listing(&d, "image", "images")[0]["remote"].is_null());
    d.terminate();
    let d = Daemon::start_env(home.path(), &REMOTE, &env);
    let image = stored(&d, "image", "images");
    same_as_stored(&env, "image", &image, &d.home.join("images").join(&image)).await;
}

#[tokio::test]
async fn a_second_node_restores_a_function_it_never_ran_from_the_store() {
    if !need_sandbox() {
        return;
    }
    let test = "a_second_node_restores_a_function_it_never_ran_from_the_store";
    let Some(env) = store_env(test) else { return };
    let (a, _home_a, image, set) = first_node(&env).await;

    // Another node: its own home and its own package environments (other paths, other
    // files with the same content), the same store.
    let home_b = tempfile::tempdir().unwrap();
    let envs_b = home_b.path().join("own-envs");
    let mut args_b = REMOTE.to_vec();
    args_b.extend(["--envs-dir", envs_b.to_str().unwrap()]);
    let b = Daemon::start_env(home_b.path(), &args_b, &env);
    deploy_hello(&b).await;
    // Its image is the store's (fetched, not built): the same files as the first node's.
    assert_eq!(stored(&b, "image", "images"), image);
    for f in ["meta", "pages"] {
        let (x, y) = (
            std::fs::read(a.home.join("images").join(&image).join(f)).unwrap(),
            std::fs::read(b.home.join("images").join(&image).join(f)).unwrap(),
        );
        assert!(x == y, "image file {f} differs between the nodes");
    }
    // Its first start is restored from the first node's function snapshot: prefetched once
    // the image was ready, or fetched on the start's path (which waits for a prefetch
    // under way).
    let r = b.invoke("hello", "{}").await;
    assert_eq!(r.status, 200, "{}", r.raw);
    assert_eq!(r.body, json!({"ok": true}));
    assert!(
        !r.snapshot.is_empty(),
        "not from a function snapshot: {} {}",
        r.start,
        r.timing
    );
    let (_, set_b) = set_of(&b);
    assert_eq!(
        set_b, set,
        "the second node names the snapshot as the first does"
    );
    let m = b.metrics().await;
    for line in [
        "ember_store_fetches_total{kind=\"image\",result=\"fetched\"} 1",
        "ember_store_fetches_total{kind=\"snapshot\",result=\"fetched\"} 1",
    ] {
        assert!(m.contains(line), "{line} in\n{m}");
    }
    assert!(
        !m.contains("ember_store_uploads_total{kind=\"image\""),
        "a fetched image is not uploaded again:\n{m}"
    );
    // And it serves on from the cached copy.
    let r = b.invoke("hello", "{}").await;
    assert_eq!(r.status, 200, "{}", r.raw);

    // Lazily: once the first node recorded the snapshot's working set, a node without a
    // copy restores it from its metadata, working set and pack, the rest following in the
    // background (added to its cache once whole).
    let ws = record_working_set(&a, "hello").await;
    let set_a = set_of(&a).1;
    let (_, repo) = store_of(&env);
    let m = repo
        .manifest(&SetRef::new("snapshot", &set_a).unwrap())
        .await
        .unwrap();
    let names: Vec<&str> = m.files.iter().map(|f| f.name.as_str()).collect();
    assert!(
        ["workingset", "wspages", "lazystart"]
            .iter()
            .all(|n| names.contains(n)),
        "{names:?}"
    );
    let bundle = m.files.iter().find(|f| f.name == "lazystart").unwrap();
    assert_eq!(
        bundle.chunks.len(),
        1,
        "the bundle is one object: {bundle:?}"
    );
    let r = start_without_copy(&b, "hello", "{\"again\": 1}").await;
    assert_eq!(
        (r.status, &r.body),
        (200, &json!({"ok": true})),
        "{}",
        r.raw
    );
    assert!(
        !r.snapshot.is_empty() && r.timing.contains("fetch") && !r.timing.contains("load"),
        "not restored lazily from the store ({ws} pages in its working set): {} {}",
        r.timing,
        r.raw
    );
    // Its trace, phase by phase: the manifest, the bundle, the layer opened, the restore.
    for phase in ["fetch_manifest", "fetch_bundle", "fetch_open", "restore"] {
        assert!(
            r.timing.contains(&format!("{phase};dur=")),
            "{phase} in {}",
            r.timing
        );
    }
    assert!(
        eventually(Duration::from_secs(60), || !listing(
            &b,
            "snapshot",
            "snapshots"
        )
        .is_empty()),
        "the lazily restored snapshot never became whole in the cache"
    );
    let m = b.metrics().await;
    let line = "ember_store_fetches_total{kind=\"snapshot\",result=\"fetched\"} 2";
    assert!(m.contains(line), "{line} in\n{m}");
    // The whole copy serves the next start.
    b.stop_instances("hello").await;
    let r = b.invoke("hello", "{}").await;
    assert_eq!(r.status, 200, "{}", r.raw);
    assert!(!r.timing.contains("fetch"), "{}", r.timing);
}

#[test]
fn bench_vhive_measures_every_mode_against_the_store() {
    if !need_sandbox() {
        return;
    }
    let test = "bench_vhive_measures_every_mode_against_the_store";
    let Some(env) = store_env(test) else { return };
    let out = tempfile::tempdir().unwrap();
    let json = out.path().join("vhive.json");
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_ember"))
        .args(["bench", "vhive", "--runs", "2", "--workloads", "helloworld"])
        .arg("--envs-dir")
        .arg(common::shared_envs())
        .arg("--out")
        .arg(&json)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(stdout.contains("remote/local"), "{stdout}");
    let v: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let rows = v["rows"].as_array().unwrap();
    for mode in [
        "baseline",
        "local",
        "remote",
        "remote-whole",
        "remote-cached",
    ] {
        let r = rows
            .iter()
            .find(|r| r["mode"] == mode)
            .unwrap_or_else(|| panic!("no {mode} row: {v}"));
        assert_eq!(r["count"], 2, "{r}");
        assert_eq!(r["off_path"], 0, "{mode} took another path: {r}");
    }
    let remote = rows.iter().find(|r| r["mode"] == "remote").unwrap();
    assert!(
        remote["phases"]["fetch"].as_f64().unwrap() > 0.0,
        "{remote}"
    );
    let svg = std::fs::read_to_string(json.with_extension("svg")).unwrap();
    assert!(svg.contains("remote-cached"));
}

/// What the proxy between a node and the store does to each connection.
const PASS: u8 = 0;
/// Accepts and closes at once: a store that is down.
const DROP: u8 = 1;
/// Holds every reply for two seconds: a store slower than the node's timeout.
const SLOW: u8 = 2;

/// A TCP proxy on loopback in front of `upstream`, doing what `mode` says.
async fn proxy(upstream: String, mode: Arc<std::sync::atomic::AtomicU8>) -> String {
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut client, _)) = l.accept().await else {
                return;
            };
            let (upstream, mode) = (upstream.clone(), mode.clone());
            tokio::spawn(async move {
                if mode.load(Ordering::SeqCst) == DROP {
                    return;
                }
                let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await else {
                    return;
                };
                let (mut cr, mut cw) = client.split();
                let (mut sr, mut sw) = server.split();
                let up = tokio::io::copy(&mut cr, &mut sw);
                let down = async {
                    let mut buf = vec![0u8; 64 << 10];
                    loop {
                        let n = sr.read(&mut buf).await?;
                        if n == 0 {
                            return Ok::<_, std::io::Error>(());
                        }
                        match mode.load(Ordering::SeqCst) {
                            SLOW => tokio::time::sleep(Duration::from_secs(2)).await,
                            DROP => return Ok(()),
                            _ => {}
                        }
                        cw.write_all(&buf[..n]).await?;
                    }
                };
                let _ = tokio::join!(up, down);
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_is_down_slow_wrong_or_lossy_costs_a_rung_never_an_answer() {
    use std::sync::atomic::Ordering;
    if !need_sandbox() {
        return;
    }
    let test = "a_store_that_is_down_slow_wrong_or_lossy_costs_a_rung_never_an_answer";
    let Some(env) = store_env(test) else { return };
    let (_a, _home_a, _, set) = first_node(&env).await;

    // The second node reaches the store through the proxy, with a short timeout.
    let mode = Arc::new(std::sync::atomic::AtomicU8::new(PASS));
    let endpoint = env
        .iter()
        .find(|(k, _)| k == "EMBER_S3_ENDPOINT")
        .map(|(_, v)| v.trim_start_matches("http://").to_string())
        .unwrap();
    let via = proxy(endpoint, mode.clone()).await;
    let mut env_b: Vec<(String, String)> = env
        .iter()
        .filter(|(k, _)| k != "EMBER_S3_ENDPOINT")
        .cloned()
        .collect();
    env_b.push(("EMBER_S3_ENDPOINT".into(), via));
    env_b.push(("EMBER_S3_TIMEOUT_MS".into(), "500".into()));
    let home_b = tempfile::tempdir().unwrap();
    let b = Daemon::start_env(home_b.path(), &REMOTE, &env_b);
    deploy_hello(&b).await;
    stored(&b, "image", "images");
    // Its snapshot is prefetched once the image is ready.
    prefetched(&b);

    let (backend, repo) = store_of(&env);
    // The chunks of the set's page file, as the store names them now.
    let page_chunks = || async { set_file(&repo, &set, "pages").await.unwrap().chunks };
    // After a fetch failed, B takes its own snapshot (the same set: its image is A's) and
    // uploads it: wait until that is over, so the set stands still.
    let settle = || {
        eventually(Duration::from_secs(60), || {
            listing(&b, "snapshot", "snapshots")
                .first()
                .is_some_and(|s| {
                    s["remote"] == "stored"
                        || s["remote"]
                            .as_str()
                            .is_some_and(|r| r.starts_with("failed"))
                })
        })
    };

    // Each fault: B has no copy of the snapshot; its start fetches, fails, and is served by
    // a lower rung with the right answer, never from the set.
    let fresh_start = |what: &'static str| {
        let b = &b;
        async move {
            let r = start_while_failing(b, "hello", "{}", what).await;
            assert_eq!(r.body, json!({"ok": true}), "{what}: {}", r.raw);
            assert!(
                r.snapshot.is_empty(),
                "{what}: served from a snapshot: {}",
                r.raw
            );
        }
    };
    // (A set whose fetch failed is not asked for again for 5 s: each fault waits them out.)
    let pause = || tokio::time::sleep(Duration::from_millis(5500));
    for (what, m) in [("down", DROP), ("slow", SLOW)] {
        mode.store(m, Ordering::SeqCst);
        pause().await;
        fresh_start(what).await;
        mode.store(PASS, Ordering::SeqCst);
        assert!(settle(), "{what}: B's own snapshot never settled");
    }
    // Wrong bytes under a chunk's name (another chunk's object).
    let chunks = page_chunks().await;
    let elsewhere = ember_store::Backend::get(backend.as_ref(), &chunks[2].key())
        .await
        .unwrap();
    assert_ne!(chunks[1], chunks[2]);
    ember_store::Backend::put(backend.as_ref(), &chunks[1].key(), elsewhere)
        .await
        .unwrap();
    pause().await;
    fresh_start("wrong bytes").await;
    assert!(settle(), "wrong bytes: B's own snapshot never settled");
    // A chunk lost.
    let chunks = page_chunks().await;
    ember_store::Backend::delete(backend.as_ref(), &chunks[3].key())
        .await
        .unwrap();
    pause().await;
    fresh_start("lost chunk").await;

    // The fetches forgot what they found missing or wrong (the wrong object deleted), so
    // B's own upload after the last one stored every chunk again: the set serves again.
    assert!(settle(), "lost chunk: B's own snapshot never settled");
    let s = listing(&b, "snapshot", "snapshots");
    assert_eq!(s[0]["remote"], "stored", "{s:?}");
    pause().await;
    let r = start_without_copy(&b, "hello", "{}").await;
    assert_eq!(r.status, 200, "{}", r.raw);
    assert!(
        r.timing.contains("fetch") && !r.snapshot.is_empty(),
        "the repaired set was not fetched: {} {}",
        r.timing,
        r.raw
    );
}

/// A function whose init makes 4 MiB of its own (pages of its snapshot's layer) that only a
/// `scan` event reads: a working set recorded from `{}` lacks them.
async fn deploy_scan(d: &Daemon) {
    let code = "import hashlib\nDATA = bytes(range(256)) * 16384\n\
                def handler(e, c):\n    if e.get('scan'):\n        \
                return {'sha': hashlib.sha256(DATA).hexdigest()}\n    return {'ok': True}\n";
    deploy_py(d, "scan", code).await;
}

/// Faults of a lazy restore. Page chunks lost after the working set arrived: an instance
/// that touches a page outside its working set is stopped at that page (never given
/// anything unchecked) and the request runs again on another instance, with the right
/// answer. A lazy bundle (metadata, working set, pack) with wrong bytes: never unpacked; the
/// set is fetched whole instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_fails_a_lazy_restore_costs_a_rung_never_an_answer() {
    if !need_sandbox() {
        return;
    }
    let test = "a_store_that_fails_a_lazy_restore_costs_a_rung_never_an_answer";
    let Some(env) = store_env(test) else { return };
    let (a, _home_a, _, set) = first_node_of(&env, "scan", deploy_scan).await;
    record_working_set(&a, "scan").await;
    let scan = "{\"scan\": true}";
    let want = a.invoke("scan", scan).await;
    assert_eq!(want.status, 200, "{}", want.raw);

    let home_b = tempfile::tempdir().unwrap();
    let b = Daemon::start_env(home_b.path(), &REMOTE, &env);
    deploy_scan(&b).await;
    stored(&b, "image", "images");
    prefetched(&b);
    let (backend, repo) = store_of(&env);
    // Every page chunk lost (the page file's header kept): the restore needs only the pack;
    // the scan reads pages it lacks.
    let pages = set_file(&repo, &set, "pages").await.unwrap();
    for h in &pages.chunks[1..] {
        ember_store::Backend::delete(backend.as_ref(), &h.key())
            .await
            .unwrap();
    }
    let r = start_while_failing(&b, "scan", scan, "page chunks lost").await;
    assert_eq!(r.body, want.body, "page chunks lost: {}", r.raw);
    assert!(
        r.snapshot.is_empty(),
        "page chunks lost: the answer came from the lazily restored snapshot: {}",
        r.raw
    );
    b.assert_logged(
        "scan",
        &[
            "a page failed at its source",
            "the request runs again on another instance",
        ],
    );

    // B took its own snapshot instead, and stored it over the set: once B restored it (and
    // recorded its working set), the set has a lazy bundle again (metadata, working set,
    // pack). Its object then holds other bytes.
    tokio::time::sleep(Duration::from_millis(5500)).await;
    stored_entry(&b, "snapshot", "snapshots");
    record_working_set(&b, "scan").await;
    let pack = set_file(&repo, &set, "lazystart")
        .await
        .expect("a lazy bundle in the store");
    let other = set_file(&repo, &set, "meta").await.unwrap().chunks[0];
    let wrong = ember_store::Backend::get(backend.as_ref(), &other.key())
        .await
        .unwrap();
    ember_store::Backend::put(backend.as_ref(), &pack.chunks[0].key(), wrong)
        .await
        .unwrap();
    // The fetch falls back to the whole set (every other object is right): served from it.
    let r = start_without_copy(&b, "scan", scan).await;
    assert_eq!(
        (r.status, &r.body),
        (200, &want.body),
        "bundle with wrong bytes: {}",
        r.raw
    );
    assert!(
        !r.snapshot.is_empty() && r.timing.contains("fetch") && r.timing.contains("load"),
        "bundle with wrong bytes: not fetched whole: {} {}",
        r.timing,
        r.raw
    );
}

#[tokio::test]
async fn two_functions_on_one_image_store_their_shared_pages_once() {
    if !need_sandbox() {
        return;
    }
    let test = "two_functions_on_one_image_store_their_shared_pages_once";
    let Some(env) = store_env(test) else { return };
    let home = tempfile::tempdir().unwrap();
    let d = Daemon::start_env(home.path(), &REMOTE, &env);
    for (name, answer) in [("one", 1), ("two", 2)] {
        let code = format!("def handler(e, c):\n    return {{'n': {answer}}}\n");
        deploy_py(&d, name, &code).await;
    }
    stored(&d, "image", "images");
    for name in ["one", "two"] {
        assert_eq!(d.invoke(name, "{}").await.status, 200);
    }
    let mut sets = Vec::new();
    assert!(
        eventually(Duration::from_secs(120), || {
            let list = listing(&d, "snapshot", "snapshots");
            sets = list
                .iter()
                .filter(|s| s["remote"] == "stored")
                .filter_map(|s| s["store_key"].as_str().map(String::from))
                .collect();
            sets.len() == 2
        }),
        "both snapshots stored: {:?}",
        listing(&d, "snapshot", "snapshots")
    );
    let (_, repo) = store_of(&env);
    let mut pages = Vec::new();
    for set in &sets {
        let f = set_file(&repo, set, "pages").await.unwrap();
        pages.push(
            f.chunks
                .iter()
                .copied()
                .collect::<std::collections::HashSet<_>>(),
        );
    }
    // Most of one layer's pages are the other's: stored once.
    let shared = pages[0].intersection(&pages[1]).count();
    let smaller = pages[0].len().min(pages[1].len());
    assert!(
        shared * 2 > smaller,
        "{shared} of {smaller} page chunks shared"
    );
}

/// The store's snapshot sets, as the store lists them.
async fn store_sets(repo: &Repo) -> Vec<String> {
    let mut sets = repo.sets("snapshot").await.unwrap();
    sets.sort();
    sets
}

/// Waits until the store's snapshot sets are `want`.
async fn store_sets_become(repo: &Repo, want: &[&str], why: &str) {
    let mut sets = Vec::new();
    for _ in 0..300 {
        sets = store_sets(repo).await;
        if sets == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("{why}: the store holds {sets:?}, not {want:?}");
}

#[tokio::test]
async fn the_store_lists_what_only_it_holds_and_loses_the_sets_no_node_can_use() {
    if !need_sandbox() {
        return;
    }
    let test = "the_store_lists_what_only_it_holds_and_loses_the_sets_no_node_can_use";
    let Some(env) = store_env(test) else { return };
    let (a, _home_a, _image, first) = first_node(&env).await;
    let (_, repo) = store_of(&env);
    assert_eq!(store_sets(&repo).await, vec![first.clone()]);

    // A node that holds nothing lists the store's set, as its producer described it.
    let home_b = tempfile::tempdir().unwrap();
    let b = Daemon::start_env(home_b.path(), &REMOTE, &env);
    let out = b.cli(&["snapshot", "ls", "--json"]);
    assert!(out.ok, "{}", out.stderr);
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["snapshots"], json!([]), "{v}");
    let row = &v["store"][0];
    assert_eq!(
        (row["store_key"].as_str(), row["function"].as_str()),
        (Some(first.as_str()), Some("hello")),
        "{v}"
    );
    let out = b.cli(&["snapshot", "ls"]);
    assert!(
        out.stdout
            .lines()
            .any(|l| l.starts_with(&first) && l.ends_with("remote")),
        "{}",
        out.stdout
    );

    // Deployed anew with other code: the new snapshot replaces the old set in the store.
    deploy_py(&a, "hello", "def handler(e, c):\n    return {'ok': 2}\n").await;
    let r = a.invoke("hello", "{}").await;
    assert_eq!((r.status, &r.body), (200, &json!({"ok": 2})), "{}", r.raw);
    let mut second = String::new();
    assert!(
        eventually(Duration::from_secs(120), || {
            let l = listing(&a, "snapshot", "snapshots");
            second = l
                .first()
                .filter(|s| s["remote"] == "stored" && s["store_key"] != first.as_str())
                .and_then(|s| s["store_key"].as_str())
                .unwrap_or_default()
                .to_string();
            !second.is_empty()
        }),
        "the new version's snapshot never stored: {:?}",
        listing(&a, "snapshot", "snapshots")
    );
    store_sets_become(&repo, &[&second], "deployed anew").await;
    let removed = "ember_store_removed_sets_total{kind=\"snapshot\"}";
    assert!(common::metric(&a.metrics().await, removed) >= 1);

    // A function deleted: its set goes.
    deploy_py(&a, "other", "def handler(e, c):\n    return 3\n").await;
    assert_eq!(a.invoke("other", "{}").await.status, 200);
    assert!(
        eventually(Duration::from_secs(120), || {
            let l = listing(&a, "snapshot", "snapshots");
            l.len() == 2 && l.iter().all(|s| s["remote"] == "stored")
        }),
        "the other function's snapshot never stored: {:?}",
        listing(&a, "snapshot", "snapshots")
    );
    assert_eq!(store_sets(&repo).await.len(), 2);
    assert!(a.cli(&["rm", "other"]).ok);
    store_sets_become(&repo, &[&second], "a function deleted").await;

    // An operator removes a set only the store holds, by its store key; one it does not
    // hold is not found.
    let out = b.cli(&["snapshot", "rm", "--store", &second]);
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(store_sets(&repo).await, Vec::<String>::new());
    let out = b.cli(&["snapshot", "rm", "--store", &second]);
    assert!(
        !out.ok && out.stderr.contains("does not exist"),
        "{} {}",
        out.stdout,
        out.stderr
    );
}
