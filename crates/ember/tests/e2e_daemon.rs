//! The instance pool (concurrency, queueing, 429, keep-alive) and the daemon's own
//! guarantees: tokens, one daemon per home, crash-safe deploys, no orphans after kill -9.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::{Daemon, eventually, instance_pids_under, py};
use serde_json::json;

const SLEEPER: &str = r#"
import os, time

def handler(event, context):
    time.sleep(event.get("sleep", 0))
    return {"instance": os.environ["EMBER_INSTANCE_ID"], "greeting": os.environ.get("GREETING")}
"#;

#[tokio::test(flavor = "multi_thread")]
async fn concurrency_queues_then_throttles_and_idle_instances_expire() {
    let home = tempfile::tempdir().unwrap();
    let d = Daemon::start(
        home.path(),
        &[
            "--queue-depth",
            "1",
            "--queue-timeout",
            "400ms",
            "--keep-alive",
            "1500ms",
        ],
    );
    let config = json!({"handler": "main.handler", "max_instances": 2, "env": {"GREETING": "hi"}});
    let (status, body) = d.deploy_zip("sleepy", config, &py(SLEEPER)).await;
    assert_eq!(status, 201, "{body}");

    // Two run at once; a third waits in the queue past its timeout; a fourth finds the
    // queue full. Both of those get 429.
    let mut tasks = Vec::new();
    for i in 0..4 {
        let (url, http) = (d.url.clone(), d.http());
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(if i < 2 { 0 } else { 300 + 50 * i })).await;
            let r = http
                .post(format!("{url}/v1/functions/sleepy/invoke"))
                .body(r#"{"sleep": 1.5}"#)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            (
                status,
                r.json::<serde_json::Value>().await.unwrap_or_default(),
            )
        }));
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    let ok: Vec<_> = results.iter().filter(|r| r.0 == 200).collect();
    let throttled: Vec<_> = results.iter().filter(|r| r.0 == 429).collect();
    assert_eq!((ok.len(), throttled.len()), (2, 2), "{results:?}");
    assert_ne!(
        ok[0].1["instance"], ok[1].1["instance"],
        "two instances served in parallel"
    );
    assert_eq!(
        ok[0].1["greeting"], "hi",
        "the function's environment reaches it"
    );
    assert_eq!(throttled[0].1["error"]["code"], "TooManyRequests");
    let st = d.get_json("/v1/functions/sleepy").await;
    assert_eq!(st["instances_live"], 2, "{st}");

    // Idle instances stop after the keep-alive time; the next request cold-boots.
    assert!(eventually(Duration::from_secs(6), || instance_pids_under(
        &d.home
    )
    .is_empty()));
    let st = d.get_json("/v1/functions/sleepy").await;
    assert_eq!(st["instances_live"], 0, "{st}");
    assert_eq!(d.invoke("sleepy", "{}").await.start, "cold-boot");
    let metrics = d.metrics().await;
    assert!(
        metrics.contains(r#"ember_throttled_total{function="sleepy"} 2"#),
        "{metrics}"
    );

    // Stopping instances on request (what `ember bench` does to force a cold start).
    let r = d
        .http()
        .delete(format!("{}/v1/functions/sleepy/instances", d.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<serde_json::Value>().await.unwrap()["stopped"], 1);
    assert_eq!(d.invoke("sleepy", "{}").await.start, "cold-boot");
    // An update serves the new code at once and stops the old instances.
    let (status, _) = d
        .deploy_zip(
            "sleepy",
            json!({"handler": "main.handler"}),
            &py("def handler(e, c):\n    return 'v2'\n"),
        )
        .await;
    assert_eq!(status, 200);
    let r = d.invoke("sleepy", "{}").await;
    assert_eq!(
        (r.body.clone(), r.start.as_str()),
        (json!("v2"), "cold-boot")
    );
    // Delete removes the function and its instances.
    assert!(d.cli(&["rm", "sleepy"]).ok);
    assert_eq!(d.invoke("sleepy", "{}").await.status, 404);
    assert!(eventually(Duration::from_secs(2), || instance_pids_under(
        &d.home
    )
    .is_empty()));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_token_guards_every_route_but_health() {
    let home = tempfile::tempdir().unwrap();
    let d = Daemon::start(home.path(), &["--token", "s3cret"]);
    let c = d.http();
    let r = c
        .get(format!("{}/v1/functions", d.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = c
        .get(format!("{}/v1/functions", d.url))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = c.get(format!("{}/metrics", d.url)).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = c.get(format!("{}/v1/health", d.url)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .get(format!("{}/v1/functions", d.url))
        .bearer_auth("s3cret")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let out = d.cli(&["ls"]);
    assert!(
        !out.ok && out.stderr.contains("API token"),
        "{}",
        out.stderr
    );
    let out = std::process::Command::new(common::EMBER)
        .args(["ls", "--url", &d.url])
        .env("EMBER_TOKEN", "s3cret")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn one_daemon_per_home_and_no_orphans_after_kill_9() {
    let home = tempfile::tempdir().unwrap();
    let mut d = Daemon::start(home.path(), &[]);
    let (status, _) = d
        .deploy_zip(
            "sleepy",
            json!({"handler": "main.handler", "max_instances": 3}),
            &py(SLEEPER),
        )
        .await;
    assert_eq!(status, 201);
    let out = std::process::Command::new(common::EMBER)
        .args(["serve", "--listen", "127.0.0.1:0", "--home"])
        .arg(home.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("another ember daemon"),
        "{out:?}"
    );

    let mut tasks = Vec::new();
    for _ in 0..3 {
        let (url, http) = (d.url.clone(), d.http());
        tasks.push(tokio::spawn(async move {
            http.post(format!("{url}/v1/functions/sleepy/invoke"))
                .body(r#"{"sleep": 0.3}"#)
                .send()
                .await
                .map(|r| r.status().as_u16())
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), 200);
    }
    assert_eq!(instance_pids_under(&d.home).len(), 3);
    d.kill9();
    assert!(
        eventually(Duration::from_secs(2), || instance_pids_under(home.path())
            .is_empty()),
        "instances outlived the daemon: {:?}",
        instance_pids_under(home.path())
    );
    let d = Daemon::start(home.path(), &[]);
    assert_eq!(d.invoke("sleepy", "{}").await.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deploy_killed_midway_leaves_the_previous_version() {
    let home = tempfile::tempdir().unwrap();
    // A base interpreter whose pip hangs: the deploy of a new package set never finishes.
    let slow = home.path().join("slow-python");
    std::fs::write(
        &slow,
        "#!/bin/sh\nif [ \"$1 $2\" = \"-m pip\" ]; then sleep 31.7; fi\nexec /usr/bin/python3 \"$@\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&slow, std::fs::Permissions::from_mode(0o755)).unwrap();
    let envs = home.path().join("envs");
    let args = [
        "--python",
        slow.to_str().unwrap(),
        "--envs-dir",
        envs.to_str().unwrap(),
    ];
    let mut d = Daemon::start(home.path(), &args);
    let v1 = py("def handler(e, c):\n    return 'v1'\n");
    let (status, _) = d
        .deploy_zip("f", json!({"handler": "main.handler"}), &v1)
        .await;
    assert_eq!(status, 201);

    let url = d.url.clone();
    let v2 = py("def handler(e, c):\n    return 'v2'\n");
    let pending = tokio::spawn(async move {
        let mut body = json!({"handler": "main.handler", "packages": ["six"]});
        body["code_zip"] =
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &v2).into();
        reqwest::Client::new()
            .put(format!("{url}/v1/functions/f"))
            .json(&body)
            .send()
            .await
    });
    // Wait until the new code is stored and pip is running, then kill the daemon.
    assert!(eventually(Duration::from_secs(10), || {
        std::fs::read_dir(&envs)
            .map(|r| r.count() >= 3)
            .unwrap_or(false)
    }));
    std::thread::sleep(Duration::from_millis(300));
    d.kill9();
    assert!(
        pending.await.unwrap().is_err(),
        "the deploy cannot have answered"
    );
    // pip died with the daemon instead of writing into envs/ behind its back, and so did
    // what it started (the `sleep` its wrapper runs stands for pip's own subprocesses).
    let alive = |needle: &str| {
        std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
            std::fs::read(e.path().join("cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(needle))
                .unwrap_or(false)
        })
    };
    assert!(eventually(Duration::from_secs(2), || {
        !alive(slow.to_str().unwrap()) && !alive("sleep\x0031.7")
    }));

    let d = Daemon::start(home.path(), &args);
    let st = d.get_json("/v1/functions/f").await;
    assert_eq!(st["version"], 1, "{st}");
    let r = d.invoke("f", "{}").await;
    assert_eq!((r.status, r.body.clone()), (200, json!("v1")), "{}", r.raw);
    // The unreferenced v2 code was collected at start.
    assert_eq!(
        std::fs::read_dir(home.path().join("code")).unwrap().count(),
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_invocation_completes_when_its_caller_goes_away() {
    let home = tempfile::tempdir().unwrap();
    let d = Daemon::start(home.path(), &[]);
    let (status, _) = d
        .deploy_zip("sleepy", json!({"handler": "main.handler"}), &py(SLEEPER))
        .await;
    assert_eq!(status, 201);
    let gone = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap()
        .post(format!("{}/v1/functions/sleepy/invoke", d.url))
        .body(r#"{"sleep": 0.8}"#)
        .send()
        .await;
    assert!(gone.is_err(), "the client should have given up");
    // The invocation runs to its end and its instance goes back to the pool.
    std::thread::sleep(Duration::from_millis(1000));
    let st = d.get_json("/v1/functions/sleepy").await;
    assert_eq!(
        (st["instances_live"].as_u64(), st["instances_idle"].as_u64()),
        (Some(1), Some(1)),
        "{st}"
    );
    assert_eq!(d.invoke("sleepy", "{}").await.start, "warm");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_function_whose_environment_cannot_be_rebuilt_does_not_stop_the_daemon() {
    let home = tempfile::tempdir().unwrap();
    let envs = home.path().join("envs");
    let mut d = Daemon::start(home.path(), &["--envs-dir", envs.to_str().unwrap()]);
    let (status, _) = d
        .deploy_zip("f", json!({"handler": "main.handler"}), &py(SLEEPER))
        .await;
    assert_eq!(status, 201);
    d.terminate();
    // The environment is gone, and the interpreter cannot make a new one.
    std::fs::remove_dir_all(&envs).unwrap();
    let broken = home.path().join("broken-python");
    std::fs::write(&broken, "#!/bin/sh\ncase \"$*\" in *venv*) echo 'no venv here' >&2; exit 1;; esac\nexec /usr/bin/python3 \"$@\"\n").unwrap();
    std::fs::set_permissions(&broken, std::fs::Permissions::from_mode(0o755)).unwrap();
    let d = Daemon::start(
        home.path(),
        &[
            "--envs-dir",
            envs.to_str().unwrap(),
            "--python",
            broken.to_str().unwrap(),
        ],
    );
    let health = d.get_json("/v1/health").await;
    assert_eq!(health["status"], "ok");
    assert_eq!(d.invoke("f", "{}").await.status, 404);
}

/// The histogram keep-alive policy learns a function invoked every 3 s: after ten idle
/// times its instance stops as each invocation ends and one is pre-warmed ahead of the
/// next, which finds it warm. (Bins of 200 ms stand for the paper's minutes.)
#[tokio::test]
async fn the_histogram_policy_prewarms_a_regular_function_and_stops_it_between() {
    let home = tempfile::tempdir().unwrap();
    let d = Daemon::start(
        home.path(),
        &[
            "--keep-alive-policy",
            "histogram",
            "--keep-alive-bin",
            "200ms",
            "--keep-alive",
            "60s",
        ],
    );
    d.deploy_ok(
        "tick",
        json!({"handler": "main.handler"}),
        &py("def handler(e, c):\n    return 'tock'\n"),
    )
    .await;
    let status = || d.get_json("/v1/functions/tick");
    // Ten idle times of 3 s: until then, the fixed keep-alive (the fallback) keeps it.
    for _ in 0..11 {
        assert_eq!(d.invoke("tick", "{}").await.status, 200);
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    let st = status().await;
    let w = &st["keep_alive"];
    assert_eq!(st["keep_alive_policy"], "histogram", "{st}");
    assert_eq!(w["basis"]["kind"], "histogram", "{st}");
    let prewarm = w["prewarm"].as_f64().unwrap();
    assert!((2.3..=3.0).contains(&prewarm), "{w}");
    // Now: stopped as the invocation ends, pre-warmed before the next one.
    let mut warm = 0;
    for _ in 0..3 {
        let r = d.invoke("tick", "{}").await;
        assert_eq!(r.status, 200);
        warm += usize::from(r.start == "warm");
        let mut gone = false;
        for _ in 0..20 {
            if status().await["instances_live"] == 0 {
                gone = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(gone, "the instance is stopped until its pre-warm");
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    assert!(warm >= 2, "pre-warmed starts: {warm} of 3");
}
