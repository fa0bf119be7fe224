//! The restore the platform will make: into a sandbox's first process, stopped still
//! privileged inside its namespaces and cgroup, ending as the instance (its user and
//! seccomp filter).

mod common;

use std::process::Stdio;

use common::sandboxed::{ask, handoff_options, instance, setup};
use common::{privileged, tmp};
use ember_snap::Target;

#[tokio::test(flavor = "multi_thread")]
async fn restores_into_a_sandboxed_first_process_and_hands_it_over() {
    if !privileged("restores_into_a_sandboxed_first_process_and_hands_it_over") {
        return;
    }
    let dir = tmp();
    let (boxes, img, work) = setup(dir.path(), "handover");
    let mut sb = instance(&boxes, &work);
    let mut cmd = tokio::process::Command::new("/bin/false");
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
    sb.attach_stopped(&mut cmd);
    let mut child = cmd.spawn().unwrap();
    let pid = sb
        .first_process()
        .expect("the first process is parked in the sandbox");
    let opts = handoff_options(&sb);
    let restored = tokio::task::spawn_blocking(move || {
        ember_snap::restore(&img, Target::Stopped { pid }, &opts)
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(restored.pid, pid);

    let answers = ask(&mut child, &["ping", "creds", "thread", "fork"]).await;
    // pid 1 of its namespace (glibc's cached thread id says so too: threads and fork work).
    assert_eq!(answers[0], "pong 1");
    assert!(
        answers[1].starts_with("creds 65534 65534 "),
        "{}",
        answers[1]
    );
    assert_eq!(answers[2], "thread 45");
    assert_eq!(answers[3], "fork 7");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(status.contains("Seccomp:\t2"), "{status}");
    assert!(status.contains("NoNewPrivs:\t1"), "{status}");
    let _ = child.start_kill();
    let _ = child.wait().await;
    sb.destroy().await;
}
