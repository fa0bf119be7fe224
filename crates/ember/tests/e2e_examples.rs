//! The shipped examples, deployed with the CLI, invoked cold and warm, and again after the
//! daemon restarts.

mod common;

use common::{Daemon, examples};

use ember_bench::workloads::ORDER as ALL;

fn check_result(name: &str, body: &serde_json::Value) {
    match name {
        "noop" => assert_eq!(body, &serde_json::json!({"probe": 1})),
        "helloworld" => assert_eq!(body["message"], "hello, world"),
        "json" => assert_eq!(body["items"], 1000),
        "aes" => assert_eq!(body["ok"], true),
        "chameleon" => assert!(body["bytes"].as_u64().unwrap() > 1000, "{body}"),
        "numpy" => assert!(body["trace"].as_f64().unwrap() > 0.0, "{body}"),
        "sklearn" => assert_eq!(body["predictions"], serde_json::json!([1, 0])),
        _ => unreachable!(),
    }
}

fn event(name: &str) -> &'static str {
    match name {
        "noop" => r#"{"probe": 1}"#,
        "sklearn" => r#"{"features": [[0.5, 1.0, -0.2, 0.0], [-1.0, -0.5, 0.3, 0.2]]}"#,
        _ => "{}",
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn examples_run_cold_then_warm_and_survive_a_restart() {
    let home = tempfile::tempdir().unwrap();
    let d = Daemon::start(home.path(), &[]);
    for name in ALL {
        let dir = examples().join(name);
        let out = d.cli(&["deploy", dir.to_str().unwrap()]);
        assert!(out.ok, "deploy {name}: {}", out.stderr);
        assert!(
            out.stdout.contains(&format!("created {name} version 1")),
            "{}",
            out.stdout
        );
    }
    let ls = d.cli(&["ls"]);
    for name in ALL {
        assert!(ls.stdout.contains(name), "{}", ls.stdout);
    }
    for name in ALL {
        let cold = d.invoke(name, event(name)).await;
        assert_eq!(cold.status, 200, "{name}: {}", cold.raw);
        assert_eq!(cold.start, "cold-boot", "{name}");
        for phase in [
            "spawn",
            "interpreter",
            "import_packages",
            "import_handler",
            "exec",
            "total",
        ] {
            assert!(
                cold.timing.contains(&format!("{phase};dur=")),
                "{name}: {}",
                cold.timing
            );
        }
        check_result(name, &cold.body);
        let warm = d.invoke(name, event(name)).await;
        assert_eq!(
            (warm.status, warm.start.as_str()),
            (200, "warm"),
            "{name}: {}",
            warm.raw
        );
        assert!(!warm.timing.contains("spawn"), "{}", warm.timing);
        check_result(name, &warm.body);
    }
    // The CLI prints the result and, with -v, the start path.
    let out = d.cli(&["invoke", "helloworld", "--data", r#"{"name": "cli"}"#, "-v"]);
    assert!(out.ok, "{}", out.stderr);
    assert!(out.stdout.contains("hello, cli"), "{}", out.stdout);
    assert!(out.stderr.contains("start: warm"), "{}", out.stderr);
    // What the function printed is in its log.
    d.assert_logged(
        "helloworld",
        &["stdout saying hello to cli", "instance started (cold-boot"],
    );
    // Metrics count invocations by start path.
    let metrics = d.metrics().await;
    assert!(
        metrics.contains(
            r#"ember_invocations_total{function="numpy",start="cold-boot",outcome="ok"} 1"#
        ),
        "{metrics}"
    );
    assert!(
        metrics
            .contains(r#"ember_invocations_total{function="numpy",start="warm",outcome="ok"} 1"#)
    );
    assert!(metrics.contains(r#"ember_instances{function="numpy"} 1"#));
    assert!(metrics.contains("ember_init_duration_seconds_bucket"));
    assert!(metrics.contains("ember_execution_duration_seconds_count{function=\"numpy\"} 2"));

    let d = d.restart();
    let ls = d.cli(&["ls"]);
    for name in ALL {
        assert!(ls.stdout.contains(name), "after restart: {}", ls.stdout);
    }
    for name in ["helloworld", "numpy", "sklearn"] {
        let r = d.invoke(name, event(name)).await;
        assert_eq!(
            (r.status, r.start.as_str()),
            (200, "cold-boot"),
            "{name} after restart: {}",
            r.raw
        );
        check_result(name, &r.body);
    }
}

/// The README's first command: `ember up` with its default, relative home.
#[test]
fn up_deploys_and_invokes_every_example_from_a_relative_home() {
    let cwd = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(common::EMBER)
        .args(["up", "--exit", "--listen", "127.0.0.1:0", "--envs-dir"])
        .arg(common::shared_envs())
        .current_dir(cwd.path())
        .env_remove("EMBER_HOME")
        .env("EMBER_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for name in ALL {
        assert!(
            stdout.lines().any(|l| l.starts_with(name)),
            "{name} missing from:\n{stdout}"
        );
    }
    assert!(stdout.contains("hello, ember"), "{stdout}");
    assert!(cwd.path().join(".ember/registry.db").exists());
}
