//! The restore the platform will make: into a sandbox's first process, stopped still
//! privileged inside its namespaces and cgroup, ending as the instance (its user and
//! seccomp filter).

mod common;

use std::path::PathBuf;
use std::process::Stdio;

use common::{privileged, tmp};
use ember_sandbox::{InstanceSpec, NodeSandbox, Sandboxes};
use ember_snap::{Handoff, RestoreOptions, Target};
use std::io::{BufRead, BufReader, Write};

#[tokio::test(flavor = "multi_thread")]
async fn restores_into_a_sandboxed_first_process_and_hands_it_over() {
    if !privileged("restores_into_a_sandboxed_first_process_and_hands_it_over") {
        return;
    }
    let dir = tmp();
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    // The image: a Python process started on the host, in the directory the sandbox binds.
    let img = common::dump_python("target.py", &[], &work, dir.path());

    let boxes = Sandboxes::open(NodeSandbox {
        cgroup_root: PathBuf::from("/sys/fs/cgroup"),
        node_id: format!("snap-test-{}", std::process::id()),
        mount_point: dir.path().join("root"),
        uid: 65534,
        gid: 65534,
        pids_max: 32,
        tmp_bytes: 1 << 20,
    })
    .unwrap();
    let mut sb = boxes
        .prepare(&InstanceSpec {
            id: "restored".into(),
            memory_bytes: 256 << 20,
            read_only: vec![work.clone()],
            cwd: work.clone(),
            host_network: false,
            runtime_api_port: None,
        })
        .unwrap();
    let mut cmd = tokio::process::Command::new("/bin/false");
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
    sb.attach_stopped(&mut cmd);
    let mut child = cmd.spawn().unwrap();
    let pid = sb
        .first_process()
        .expect("the first process is parked in the sandbox");
    let h = sb.handoff();
    let opts = RestoreOptions {
        handoff: Some(Handoff {
            uid: h.uid,
            gid: h.gid,
            die_with_parent: true,
            seccomp: h.sock_filters(),
        }),
        ..RestoreOptions::default()
    };
    let restored = tokio::task::spawn_blocking(move || {
        ember_snap::restore(&img, Target::Stopped { pid }, &opts)
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(restored.pid, pid);

    let stdin = child.stdin.take().unwrap().into_owned_fd().unwrap();
    let stdout = child.stdout.take().unwrap().into_owned_fd().unwrap();
    let answers = tokio::task::spawn_blocking(move || {
        let mut w = std::fs::File::from(stdin);
        let mut r = BufReader::new(std::fs::File::from(stdout));
        ["ping", "creds", "thread", "fork"]
            .iter()
            .map(|cmd| {
                writeln!(w, "{cmd}").unwrap();
                let mut line = String::new();
                r.read_line(&mut line).unwrap();
                line.trim_end().to_string()
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
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
