//! A restore into a sandbox's first process never depends on how many descriptors the
//! restoring process (the daemon) holds: the parked process holds only its own few, at the
//! lowest numbers, and the restored one only the image's.
//!
//! Alone in its test binary: it changes the process's descriptor limit and fills its table.

mod common;

use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::Stdio;
use std::sync::Arc;

use common::sandboxed::{ask, handoff_options, instance, setup};
use common::{fds_of, privileged, tmp};
use ember_sandbox::Sandboxes;
use ember_snap::{LoadedImage, Target};

fn set_nofile(soft: u64, hard: u64) {
    let lim = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: setrlimit reads the rlimit on our stack.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }, 0);
}

fn nofile() -> (u64, u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the rlimit on our stack.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    (lim.rlim_cur, lim.rlim_max)
}

/// Parks a sandbox's first process the way the runtime does (its protocol socket at 3),
/// checks what it holds, restores the image into it and checks the result.
async fn park_and_restore(boxes: &Sandboxes, img: &Arc<LoadedImage>, work: &std::path::Path) {
    let mut sb = instance(boxes, work);
    let mut cmd = tokio::process::Command::new("/bin/false");
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    let proto = theirs.as_raw_fd();
    // SAFETY: dup2 is async-signal-safe; `proto` stays open until the spawn returns.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(proto, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    sb.attach_stopped(&mut cmd);
    let mut child = cmd.spawn().unwrap();
    drop(theirs);
    let pid = sb
        .first_process()
        .expect("the first process is parked in the sandbox");
    // Parked: stdio, the protocol socket and the two pipes of its stop, at the lowest
    // numbers; none of ours.
    eprintln!("PARKED {:?}", fds_of(pid));
    let opts = handoff_options(&sb);
    let img = img.clone();
    let restored = tokio::task::spawn_blocking(move || {
        ember_snap::restore(&img, Target::Stopped { pid }, &opts).map_err(|e| common::chain(&e))
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(restored.pid, pid);
    // The image's descriptors only (it inherited 0, 1 and 2).
    assert_eq!(fds_of(pid), vec![0, 1, 2]);
    let answers = ask(&mut child, &["ping", "json"]).await;
    assert_eq!(answers, ["pong 1", r#"json {"a": null, "b": [1, 2]}"#]);
    drop(ours);
    let _ = child.start_kill();
    let _ = child.wait().await;
    sb.destroy().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restore_does_not_depend_on_how_many_descriptors_the_restorer_holds() {
    let name = "a_restore_does_not_depend_on_how_many_descriptors_the_restorer_holds";
    if !privileged(name) {
        return;
    }
    let dir = tmp();
    let (boxes, img, work) = setup(dir.path(), "fds");
    let img = Arc::new(img);
    let (soft, hard) = nofile();

    // 1. A daemon at the usual 1024 soft limit with its table nearly full: all but the
    //    few descriptors one start needs are taken (the pipes of the start land at the
    //    top of the limit).
    set_nofile(1024, hard.max(1024));
    let mut held: Vec<File> = Vec::new();
    loop {
        match File::open("/dev/null") {
            Ok(f) => held.push(f),
            Err(e) if e.raw_os_error() == Some(libc::EMFILE) => break,
            Err(e) => panic!("opening /dev/null: {e}"),
        }
    }
    // A start takes 2 (socket) + 6 (stdio and status pipes) here and 6 in the sandbox's
    // first process.
    held.truncate(held.len() - 16);
    park_and_restore(&boxes, &img, &work).await;

    // 2. A daemon that raised its limit and holds more descriptors than an instance may
    //    have: every number one of its descriptors gets is above 1,100.
    set_nofile(soft.max(4096), hard.max(4096));
    while held.len() < 1100 {
        held.push(File::open("/dev/null").unwrap());
    }
    park_and_restore(&boxes, &img, &work).await;
    drop(held);
    set_nofile(soft, hard);
}
