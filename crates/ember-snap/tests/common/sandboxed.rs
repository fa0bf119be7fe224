//! Helpers for the tests that restore into a sandbox's first process.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use ember_sandbox::{InstanceSpec, NodeSandbox, Sandbox, Sandboxes};
use ember_snap::{Handoff, LoadedImage, RestoreOptions};

/// A node's sandboxes (named after `node`) and the image of the Python target, taken in
/// the directory the sandbox binds.
pub fn setup(dir: &Path, node: &str) -> (Sandboxes, LoadedImage, PathBuf) {
    let work = dir.join("work");
    std::fs::create_dir_all(&work).unwrap();
    // The image: a Python process started on the host, in the directory the sandbox binds.
    let img = super::dump_python("target.py", &[], &work, dir);
    let boxes = Sandboxes::open(NodeSandbox {
        cgroup_root: PathBuf::from("/sys/fs/cgroup"),
        node_id: format!("snap-{node}-{}", std::process::id()),
        mount_point: dir.join("root"),
        uid: 65534,
        gid: 65534,
        pids_max: 32,
        tmp_bytes: 1 << 20,
        remap: Default::default(),
    })
    .unwrap();
    (boxes, img, work)
}

pub fn instance(boxes: &Sandboxes, work: &Path) -> Sandbox {
    boxes
        .prepare(&InstanceSpec {
            id: "restored".into(),
            memory_bytes: 256 << 20,
            read_only: vec![work.to_path_buf()],
            bound_at: Vec::new(),
            tmp_bytes: None,
            cwd: work.to_path_buf(),
            host_network: false,
            runtime_api_port: None,
        })
        .unwrap()
}

pub fn handoff_options(sb: &Sandbox) -> RestoreOptions {
    let h = sb.handoff();
    RestoreOptions {
        handoff: Some(Handoff {
            uid: h.uid,
            gid: h.gid,
            die_with_parent: true,
            seccomp: h.sock_filters(),
        }),
        // The image is of a process on the host, the target pid 1 of its namespace (the
        // node's images are of pid 1, restored into pid 1).
        accept_new_tid: true,
        ..RestoreOptions::default()
    }
}

/// Sends each command on the child's stdin and reads one answer line each.
pub async fn ask(child: &mut tokio::process::Child, cmds: &[&'static str]) -> Vec<String> {
    let stdin = child.stdin.take().unwrap().into_owned_fd().unwrap();
    let stdout = child.stdout.take().unwrap().into_owned_fd().unwrap();
    let cmds = cmds.to_vec();
    tokio::task::spawn_blocking(move || {
        let mut w = std::fs::File::from(stdin);
        let mut r = BufReader::new(std::fs::File::from(stdout));
        cmds.iter()
            .map(|cmd| {
                writeln!(w, "{cmd}").unwrap();
                let mut line = String::new();
                r.read_line(&mut line).unwrap();
                line.trim_end().to_string()
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap()
}
