//! The Python runtime's function snapshot point and its SnapStart-compatible hooks, against the
//! real bootstrap and `/usr/bin/python3` (unsandboxed, no root needed).
//!
//! A copy restored from a function snapshot cannot tell itself from the process that was
//! dumped: it is blocked reading its next frame after SNAPSHOT_READY either way. So the
//! restored path is tested by sending the restored INIT to the original process.

mod common;

use std::time::Duration;

use common::{Function, call, function, invoke};
use ember_runtime::python::{
    Instance, InvokeError, RestoredInitError, SnapshotPointError, StartError,
};

/// Hooks registered both ways, with arguments and a duplicate; the handler reports what ran.
const HOOKS: &str = r#"
import os
from snapshot_restore_py import register_after_restore, register_before_snapshot

calls = []
restored_as = None
fail_before = False


@register_before_snapshot
def first():
    if fail_before:
        raise RuntimeError("database connection still open")
    calls.append("first")


def second(a, b=None):
    calls.append("second %s %s" % (a, b))


returned = register_before_snapshot(second, 1, b=2)
register_before_snapshot(first)  # twice: runs twice
register_before_snapshot(second, 3)


@register_after_restore
def reconnect():
    global restored_as
    restored_as = os.environ.get("EMBER_INSTANCE_ID")
    calls.append("after")


register_after_restore(lambda tag: calls.append("after " + tag), "x")


def handler(event, context):
    global fail_before
    if "fail_before" in event:
        fail_before = event["fail_before"]
    return {
        "calls": calls,
        "restored_as": restored_as,
        "instance": os.environ.get("EMBER_INSTANCE_ID"),
        "stream": context.log_stream_name,
        "version": context.function_version,
        "init_type": os.environ.get("AWS_LAMBDA_INITIALIZATION_TYPE"),
        "greeting": os.environ.get("GREETING"),
        "returned": [first.__name__, returned is second],
    }
"#;

#[tokio::test]
async fn the_hooks_module_is_there_at_a_cold_boot_and_no_hook_runs() {
    let Some(f) = function("cold", HOOKS) else {
        return;
    };
    let mut inst = f.start().await;
    let v = call(&mut inst, "{}").await;
    assert_eq!(v["calls"], serde_json::json!([]));
    // Registering returns the function, so both forms work as decorators would.
    assert_eq!(v["returned"], serde_json::json!(["first", true]));
    assert_eq!(v["instance"], "i-original");
    assert!(
        v["stream"]
            .as_str()
            .unwrap_or_default()
            .contains("/[$LATEST]"),
        "{v}"
    );
    assert_eq!(v["init_type"], "on-demand");
    assert_eq!(v["greeting"], "original");
    inst.kill();
}

#[tokio::test]
async fn snapshot_point_then_continue_serves_on_with_before_hooks_run_last_first() {
    let Some(f) = function("continue", HOOKS) else {
        return;
    };
    let mut inst = f.start().await;
    let ready = inst.snapshot_point().await.unwrap();
    assert_eq!(ready.threads, 1);
    inst.continue_after_snapshot().await.unwrap();
    let v = call(&mut inst, "{}").await;
    // As AWS's runtime: before-snapshot hooks in reverse order of registration, a duplicate
    // twice. The original that serves on then runs its after-restore hooks, in order, so that
    // what its before-snapshot hooks closed is opened again.
    assert_eq!(
        v["calls"],
        serde_json::json!([
            "second 3 None",
            "first",
            "second 1 2",
            "first",
            "after",
            "after x"
        ])
    );
    assert_eq!(v["restored_as"], "i-original");
    assert_eq!(v["instance"], "i-original");
    // The point can be reached again, between invocations.
    inst.snapshot_point().await.unwrap();
    inst.continue_after_snapshot().await.unwrap();
    assert_eq!(
        call(&mut inst, "{}").await["calls"]
            .as_array()
            .unwrap()
            .len(),
        12
    );
    inst.kill();
}

#[tokio::test]
async fn a_before_snapshot_hook_that_raises_is_reported_and_the_instance_serves_on() {
    let Some(f) = function("hook-raises", HOOKS) else {
        return;
    };
    let mut inst = f.start().await;
    call(&mut inst, r#"{"fail_before": true}"#).await;
    match inst.snapshot_point().await {
        Err(SnapshotPointError::Hook { error, .. }) => {
            assert_eq!(error.error_type, "RuntimeError");
            assert_eq!(error.message, "database connection still open");
            assert!(
                error.traceback.iter().any(|l| l.contains("in first")),
                "{:?}",
                error.traceback
            );
        }
        other => panic!("expected the hook's error, got {other:?}"),
    }
    // Idle again: it serves, and a later snapshot point works once the hook does.
    let v = call(&mut inst, r#"{"fail_before": false}"#).await;
    assert_eq!(v["instance"], "i-original");
    inst.snapshot_point().await.unwrap();
    inst.continue_after_snapshot().await.unwrap();
    let v = call(&mut inst, "{}").await;
    assert_eq!(
        v["calls"],
        // The hooks registered after the one that raised ran before it, at the failed point.
        serde_json::json!([
            "second 3 None",
            "second 3 None",
            "first",
            "second 1 2",
            "first",
            "after",
            "after x"
        ])
    );
    inst.kill();
}

#[tokio::test]
async fn a_restored_copy_runs_its_after_restore_hooks_as_the_new_instance() {
    let Some(f) = function("restored", HOOKS) else {
        return;
    };
    let mut inst = f.start().await;
    inst.snapshot_point().await.unwrap();
    let timing = inst.init_restored(&f.restored_spec()).await.unwrap();
    assert!(inst.hooked());
    assert_eq!(timing.import_handler, Duration::ZERO, "imported again");
    let v = call(&mut inst, "{}").await;
    assert_eq!(
        v["calls"],
        serde_json::json!([
            "second 3 None",
            "first",
            "second 1 2",
            "first",
            "after",
            "after x"
        ])
    );
    // The hook saw the new environment; the handler sees the new identity.
    assert_eq!(v["restored_as"], "i-restored");
    assert_eq!(v["instance"], "i-restored");
    let stream = v["stream"].as_str().unwrap_or_default();
    assert!(stream.contains("/[$LATEST]"), "{v}");
    assert_eq!(v["version"], "$LATEST");
    assert_eq!(v["init_type"], "snap-start");
    assert_eq!(v["greeting"], "restored");
    inst.kill();
}

#[tokio::test]
async fn an_after_restore_hook_that_raises_is_the_functions_init_error() {
    let code = r#"
from snapshot_restore_py import register_after_restore


@register_after_restore
def reconnect():
    raise ConnectionError("no route to the database")


def handler(event, context):
    return {}
"#;
    let Some(f) = function("after-raises", code) else {
        return;
    };
    let mut inst = f.start().await;
    inst.snapshot_point().await.unwrap();
    match inst.init_restored(&f.restored_spec()).await {
        Err(RestoredInitError::Function(StartError::Handler(fe))) => {
            assert_eq!(fe.error_type, "ConnectionError");
            assert_eq!(fe.message, "no route to the database");
            assert!(fe.traceback.iter().any(|l| l.contains("in reconnect")));
        }
        other => panic!("expected the function's init error, got {other:?}"),
    }
    // Past HOOKED: the function's own failure, never the snapshot's.
    assert!(inst.hooked());
    inst.kill();
}

#[tokio::test]
async fn an_invocation_at_the_snapshot_point_is_a_protocol_error() {
    let Some(f) = function("invoke-at-point", HOOKS) else {
        return;
    };
    let mut inst = f.start().await;
    inst.snapshot_point().await.unwrap();
    assert!(matches!(
        invoke(&mut inst, "{}").await,
        Err(InvokeError::Crashed(_))
    ));
    assert!(
        f.log
            .wait_for("expected CONTINUE or INIT after SNAPSHOT_READY, got frame kind 6")
            .await,
        "log:\n{}",
        f.log.text()
    );
    inst.kill();
}

#[tokio::test]
async fn a_second_snapshot_at_the_snapshot_point_is_a_protocol_error() {
    let Some(f) = function("twice", HOOKS) else {
        return;
    };
    let mut inst = f.start().await;
    inst.snapshot_point().await.unwrap();
    let err = inst.snapshot_point().await.unwrap_err();
    assert!(
        matches!(
            err,
            SnapshotPointError::Exited(_) | SnapshotPointError::Protocol(_)
        ),
        "{err:?}"
    );
    assert!(inst.is_gone());
    inst.kill();
}

#[tokio::test]
async fn a_snapshot_before_init_is_refused() {
    let Some(f) = function("not-idle", HOOKS) else {
        return;
    };
    // An image build's runtime waits for INIT, not for an event.
    let (mut inst, prepared) = Instance::start_for_image(&f.spec, f.log.clone(), |_| {})
        .await
        .unwrap();
    assert_eq!(prepared.threads, 1);
    let err = inst.snapshot_point().await.unwrap_err();
    assert!(
        matches!(err, SnapshotPointError::Exited(_)),
        "{err:?}\nlog:\n{}",
        f.log.text()
    );
    assert!(err.to_string().contains("function's log"), "{err}");
    assert!(f.log.wait_for("expected INIT, got frame kind 10").await);
    inst.kill();
}

#[tokio::test]
async fn an_image_restore_is_unchanged_and_has_no_function_hooks_to_run() {
    let Some(f) = function("image", HOOKS) else {
        return;
    };
    let (mut inst, _) = Instance::start_for_image(&f.spec, f.log.clone(), |_| {})
        .await
        .unwrap();
    // As a restored image: INIT(restored) to the process that was prepared for the dump.
    let timing = inst.init_restored(&f.restored_spec()).await.unwrap();
    assert!(timing.import_handler > Duration::ZERO);
    assert_eq!(timing.after_restore, Duration::ZERO);
    let v = call(&mut inst, "{}").await;
    assert_eq!(v["calls"], serde_json::json!([]));
    assert_eq!(v["instance"], "i-restored");
    assert_eq!(v["greeting"], "restored");
    inst.kill();
}

/// A runtime that boots, then answers SNAPSHOT with `reply` (kind, body) and hangs.
fn lying_runtime(test: &str, kind: u8, body: &[u8]) -> Option<Function> {
    let f = function(test, "def handler(event, context):\n    return {}\n")?;
    let hex: String = body.iter().map(|b| format!("{b:02x}")).collect();
    let fake = format!(
        r#"
import os, sys, time


def main():
    fd = int(sys.argv[1])

    def read():
        n = int.from_bytes(os.read(fd, 4), "big")
        return os.read(fd, n)

    def write(kind, body):
        os.write(fd, (len(body) + 1).to_bytes(4, "big") + bytes((kind,)) + body)

    read(), read()
    write(2, b'{{"import_packages_us": 1}}')
    write(4, b'{{"import_handler_us": 1}}')
    read()
    write({kind}, bytes.fromhex("{hex}"))
    time.sleep(60)
"#
    );
    std::fs::write(f.spec.bootstrap.join("ember_bootstrap.py"), fake).unwrap();
    Some(f)
}

#[tokio::test]
async fn a_runtime_that_answers_snapshot_with_anything_else_is_discarded() {
    for (kind, body) in [
        (7u8, &b"\0\0\0\x02{}null"[..]),     // a RESULT
        (11, br#"{"hook_us": 3}"#),          // neither threads nor error
        (11, br#"{"hook_us": "soon"}"#),     // not a number
        (4, br#"{"import_handler_us": 1}"#), // a READY
    ] {
        let Some(f) = lying_runtime("lying", kind, body) else {
            return;
        };
        let mut inst = f.start().await;
        let err = inst.snapshot_point().await.unwrap_err();
        assert!(
            matches!(err, SnapshotPointError::Protocol(_)),
            "kind {kind}: {err:?}"
        );
        assert!(err.to_string().contains("discarded"), "{err}");
        // Killed, not left hanging.
        assert!(inst.exit_status(Duration::from_secs(5)).await.is_some());
    }
}
