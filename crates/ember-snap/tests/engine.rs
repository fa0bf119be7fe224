//! Dump and restore of a C process: every piece of state the restored process must have,
//! asserted on what it says.

mod common;

use std::process::Command;

use common::{Conv, privileged, testee, tmp};
use ember_snap::LoadedImage;

struct Fixture {
    _dir: tempfile::TempDir,
    image: LoadedImage,
    original: Conv,
    data: std::path::PathBuf,
}

/// Starts the testee, dumps it, and keeps it alive (for comparisons).
fn fixture() -> Fixture {
    let dir = tmp();
    let data = dir.path().join("data.txt");
    std::fs::write(&data, format!("hello mapped file{}", " ".repeat(9000))).unwrap();
    let mut original = Conv::spawn(Command::new(testee()).arg(&data));
    let ready = original.line();
    assert!(ready.starts_with("ready"), "{ready}");
    let out = dir.path().join("image");
    let image = common::dump_stdio(original.pid, &out);
    Fixture {
        _dir: dir,
        image,
        original,
        data,
    }
}

#[test]
fn restored_process_answers_and_keeps_its_state() {
    if !privileged("restored_process_answers_and_keeps_its_state") {
        return;
    }
    let mut f = fixture();
    // The original goes on after the dump.
    assert!(f.original.ask("ping").starts_with("pong"));
    assert_eq!(f.original.ask("heap"), "heap ok");
    let mut r = common::restore(&f.image);
    assert_eq!(r.ask("ping"), format!("pong {}", r.tid));
    assert_eq!(r.ask("relro"), "relro beta");
    assert_eq!(r.ask("file"), "file Xello hello");
    assert_eq!(r.ask("avx"), "avx ok");
    assert_eq!(r.ask("mask"), "mask usr2=1 usr1=0");
    assert_eq!(r.ask("sig"), "sig 2");
    assert_eq!(r.ask("heap"), "heap ok");
    assert_eq!(r.ask("thread"), "thread 42");
    assert_eq!(r.ask("fork"), "fork 42");
    assert_eq!(r.ask("pi"), "pi ok");
    assert_eq!(r.ask("rseq"), "rseq 0 1");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let said: i64 = r
        .ask("clock")
        .strip_prefix("clock ")
        .unwrap()
        .parse()
        .unwrap();
    assert!((said - now).abs() <= 2, "restored clock {said}, ours {now}");
    // The regular file it held open is reopened at the same position, in append mode.
    assert_eq!(r.ask("log"), "log ok");
    let log = std::fs::read_to_string(f.data.with_extension("txt.log")).unwrap();
    assert_eq!(log, "before\nafter\n");
    // The restored thread's robust list is the one the kernel walks when it exits.
    r.send("robust-exit");
    assert_eq!(r.line(), "robust ownerdead");
}

#[test]
fn restored_maps_equal_the_originals() {
    if !privileged("restored_maps_equal_the_originals") {
        return;
    }
    let f = fixture();
    let want = common::merged_maps(f.original.pid);
    let r = common::restore(&f.image);
    assert_eq!(common::merged_maps(r.pid), want);
}

/// A child of this test, stopped, talking on two pipes as its stdin and stdout (the test
/// keeps the other ends), with nothing else open; with `at_limit`, also a descriptor at
/// 1023 under a 1024 limit: what a sandbox's first process looked like when its creator
/// held a thousand descriptors.
fn stopped_target(at_limit: bool) -> (i32, std::fs::File, std::io::BufReader<std::fs::File>) {
    let (in_r, in_w) = std::io::pipe().unwrap();
    let (out_r, out_w) = std::io::pipe().unwrap();
    use std::os::fd::AsRawFd;
    let (a, b) = (in_r.as_raw_fd(), out_w.as_raw_fd());
    let lim = libc::rlimit {
        rlim_cur: 1024,
        rlim_max: 1024,
    };
    // SAFETY: the child only calls async-signal-safe functions, then stops or exits.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: async-signal-safe calls in the child on descriptors it inherited and a
        // stack rlimit.
        unsafe {
            libc::dup2(a, 0);
            libc::dup2(b, 1);
            libc::syscall(libc::SYS_close_range, 3, u32::MAX, 0);
            if at_limit {
                libc::dup2(0, 1023);
                libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            }
            libc::kill(libc::getpid(), libc::SIGSTOP);
            libc::_exit(1);
        }
    }
    let mut st = 0;
    // SAFETY: waiting for our own child into a local.
    unsafe { libc::waitpid(pid, &mut st, libc::WUNTRACED) };
    assert!(libc::WIFSTOPPED(st));
    drop((in_r, out_w));
    let w = std::fs::File::from(std::os::fd::OwnedFd::from(in_w));
    let rd = std::io::BufReader::new(std::fs::File::from(std::os::fd::OwnedFd::from(out_r)));
    (pid, w, rd)
}

/// Options for a target whose thread id is not the image's (the fixture's is the original's).
fn new_tid() -> ember_snap::RestoreOptions {
    ember_snap::RestoreOptions {
        accept_new_tid: true,
        ..ember_snap::RestoreOptions::default()
    }
}

/// Sends `cmd` to the restored target and returns its answer line.
fn ask(w: &mut std::fs::File, rd: &mut std::io::BufReader<std::fs::File>, cmd: &str) -> String {
    use std::io::{BufRead, Write};
    writeln!(w, "{cmd}").unwrap();
    let mut line = String::new();
    rd.read_line(&mut line).unwrap();
    line.trim_end().to_string()
}

#[test]
fn restores_into_a_stopped_process_the_caller_created() {
    if !privileged("restores_into_a_stopped_process_the_caller_created") {
        return;
    }
    let f = fixture();
    let (pid, mut w, mut rd) = stopped_target(false);
    let r = ember_snap::restore(&f.image, ember_snap::Target::Stopped { pid }, &new_tid()).unwrap();
    assert_eq!(r.pid, pid);
    assert_eq!(ask(&mut w, &mut rd, "ping"), format!("pong {pid}"));
    use std::io::Write;
    writeln!(w, "exit").unwrap();
    assert_eq!(common::wait_exit(pid), 0);
}

#[test]
fn a_target_holding_a_descriptor_at_its_limit_restores_with_only_the_images() {
    if !privileged("a_target_holding_a_descriptor_at_its_limit_restores_with_only_the_images") {
        return;
    }
    let f = fixture();
    let (pid, mut w, mut rd) = stopped_target(true);
    assert_eq!(common::fds_of(pid), vec![0, 1, 2, 1023]);
    let r = ember_snap::restore(&f.image, ember_snap::Target::Stopped { pid }, &new_tid())
        .map_err(|e| common::chain(&e))
        .unwrap();
    assert_eq!(r.pid, pid);
    // The image's own descriptors (stdio and its log file), and nothing of the target's.
    assert_eq!(common::fds_of(pid), vec![0, 1, 2, 3]);
    assert_eq!(ask(&mut w, &mut rd, "ping"), format!("pong {pid}"));
    assert_eq!(ask(&mut w, &mut rd, "log"), "log ok");
    use std::io::Write;
    writeln!(w, "exit").unwrap();
    assert_eq!(common::wait_exit(pid), 0);
}

#[test]
fn a_stopped_target_with_another_thread_id_is_refused_before_anything_changes() {
    if !privileged("a_stopped_target_with_another_thread_id_is_refused_before_anything_changes") {
        return;
    }
    let f = fixture();
    let (pid, _w, _rd) = stopped_target(false);
    let e = ember_snap::restore(
        &f.image,
        ember_snap::Target::Stopped { pid },
        &ember_snap::RestoreOptions::default(),
    )
    .map(|r| r.pid)
    .unwrap_err();
    let e = common::chain(&e);
    let want = f.image.meta.task.tid;
    assert_eq!(want, f.original.pid);
    assert!(
        e.contains(&format!("thread id {want} in its pid namespace"))
            && e.contains(&format!("process {pid} has {pid} in its own"))
            && e.contains("accept_new_tid"),
        "{e}"
    );
    // Not left stopped: killed and collected, as on any refusal.
    let mut st = 0;
    // SAFETY: reaping our own child into a local.
    let rc = unsafe { libc::waitpid(pid, &mut st, libc::WNOHANG) };
    assert!(
        (rc == pid && libc::WIFSIGNALED(st)) || rc == -1,
        "rc {rc} status {st:#x}"
    );
}

/// The pid namespace `pid` is in.
fn pidns_of(pid: &str) -> std::path::PathBuf {
    std::fs::read_link(format!("/proc/{pid}/ns/pid")).unwrap()
}

#[test]
fn a_forked_target_keeps_the_images_pid_in_a_namespace_that_ends_with_it() {
    if !privileged("a_forked_target_keeps_the_images_pid_in_a_namespace_that_ends_with_it") {
        return;
    }
    let f = fixture();
    let mut r = common::restore(&f.image);
    // Its own pid is the original's (still alive, in our namespace), ours is another.
    assert_ne!(r.pid, f.original.pid);
    assert_eq!(r.ask("ping"), format!("pong {}", f.original.pid));
    let status = std::fs::read_to_string(format!("/proc/{}/status", r.pid)).unwrap();
    let nspid = format!("NSpid:\t{}\t{}", r.pid, f.original.pid);
    assert!(status.contains(&nspid), "{status}");
    // Its namespace is its own, with an init that is ours (the caller stays the parent of
    // both) ...
    let ns = pidns_of(&r.pid.to_string());
    assert_ne!(ns, pidns_of("self"));
    let init: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|p| p.parse::<i32>().is_ok_and(|p| p != r.pid))
        .filter(|p| std::fs::read_link(format!("/proc/{p}/ns/pid")).ok() == Some(ns.clone()))
        .collect();
    assert_eq!(init.len(), 1, "{init:?}");
    let init_status = std::fs::read_to_string(format!("/proc/{}/status", init[0])).unwrap();
    assert!(
        init_status.contains(&format!("NSpid:\t{}\t1\n", init[0])),
        "{init_status}"
    );
    assert!(
        init_status.contains(&format!("PPid:\t{}\n", std::process::id())),
        "{init_status}"
    );
    // ... and this thread's children go into our namespace again.
    assert_eq!(
        std::fs::read_link("/proc/thread-self/ns/pid_for_children").unwrap(),
        pidns_of("self")
    );
    // The init ends once the target has ended and been collected; the next restore of this
    // kind collects it.
    use std::io::Write;
    writeln!(r.writer(), "exit").unwrap();
    assert_eq!(common::wait_exit(r.pid), 0);
    std::mem::forget(r);
    let state = |p: &str| {
        std::fs::read_to_string(format!("/proc/{p}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("State:"))
                    .map(String::from)
            })
    };
    let ended = (0..200).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(10));
        state(&init[0]).is_none_or(|s| s.contains("zombie"))
    });
    assert!(
        ended,
        "the init {} still runs: {:?}",
        init[0],
        state(&init[0])
    );
    let again = common::restore(&f.image);
    let gone = !std::path::Path::new(&format!("/proc/{}", init[0])).exists();
    drop(again);
    let left = std::fs::read_to_string(format!("/proc/{}/status", init[0])).unwrap_or_default();
    assert!(gone, "the init {} is still there: {left}", init[0]);
}

#[test]
fn an_image_of_a_namespace_init_restores_as_the_init_of_a_fresh_namespace() {
    if !privileged("an_image_of_a_namespace_init_restores_as_the_init_of_a_fresh_namespace") {
        return;
    }
    let dir = tmp();
    let data = dir.path().join("data.txt");
    std::fs::write(&data, format!("hello mapped file{}", " ".repeat(9000))).unwrap();
    // The testee as pid 1 of its own namespace (as the node's instances are).
    let mut outer = Conv::spawn(
        Command::new("unshare")
            .args(["--pid", "--fork", "--kill-child"])
            .arg(testee())
            .arg(&data),
    );
    assert_eq!(outer.line(), "ready 1");
    let children = format!("/proc/{}/task/{}/children", outer.pid, outer.pid);
    let init: i32 = std::fs::read_to_string(children)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let out = dir.path().join("image");
    let image = common::dump_stdio(init, &out);
    assert_eq!(image.meta.task.tid, 1);
    let mut r = common::restore(&image);
    assert_eq!(r.ask("ping"), "pong 1");
    let status = std::fs::read_to_string(format!("/proc/{}/status", r.pid)).unwrap();
    assert!(
        status.contains(&format!("NSpid:\t{}\t1\n", r.pid)),
        "{status}"
    );
    assert_eq!(r.ask("relro"), "relro beta");
    assert_eq!(outer.ask("ping"), "pong 1");
}

/// What `accept_new_tid` gives up (docs/snap.md): an error-checking mutex the process held
/// at the dump names the old thread id as its owner, so the owner's second lock, which
/// says EDEADLK under its own id, waits forever under the new one.
#[test]
fn with_a_new_thread_id_a_held_error_checking_mutex_is_no_longer_the_owners() {
    if !privileged("with_a_new_thread_id_a_held_error_checking_mutex_is_no_longer_the_owners") {
        return;
    }
    let dir = tmp();
    let src =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fidelity/mutex_errorcheck.c");
    let bin = dir.path().join("mutex_errorcheck");
    let built = Command::new("gcc")
        .args(["-O1", "-pie", "-fPIE", "-pthread", "-Wall", "-o"])
        .arg(&bin)
        .arg(&src)
        .status()
        .unwrap();
    assert!(built.success());
    let mut cmd = Command::new(&bin);
    use std::os::unix::process::CommandExt;
    // SAFETY: close_range is async-signal-safe; it drops descriptors inherited from the
    // test runner, which would otherwise end up in the image.
    unsafe {
        cmd.pre_exec(|| {
            libc::syscall(libc::SYS_close_range, 3, u32::MAX, 0);
            Ok(())
        });
    }
    let mut original = Conv::spawn(&mut cmd);
    assert_eq!(original.line(), "ready");
    assert_eq!(original.ask("check"), "ok");
    let out = dir.path().join("image");
    let image = common::dump_stdio(original.pid, &out);
    drop(original);
    // Under its own id (Target::Fork) the check passes.
    let mut same = common::restore(&image);
    assert_eq!(same.ask("check"), "ok");
    // Under another one it never answers.
    let (pid, mut w, rd) = stopped_target(false);
    ember_snap::restore(&image, ember_snap::Target::Stopped { pid }, &new_tid()).unwrap();
    use std::io::{BufRead, Write};
    writeln!(w, "check").unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut rd = rd;
        let mut line = String::new();
        let _ = rd.read_line(&mut line);
        let _ = tx.send(line);
    });
    let answer = rx.recv_timeout(std::time::Duration::from_secs(2));
    // SAFETY: plain integers; the pid is our child, reaped below.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    common::wait_signal(pid);
    assert!(answer.is_err(), "answered {answer:?}");
}
