//! Privileged: a real process in a real sandbox, asserting on what it sees from inside.

use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::process::Stdio;

use ember_sandbox::{InstanceSpec, NodeSandbox, Sandboxes};

fn privileged() -> bool {
    if std::env::var_os("EMBER_PRIVILEGED_TESTS").is_none() {
        eprintln!("skipped: set EMBER_PRIVILEGED_TESTS=1 (as root) to run sandbox tests");
        return false;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: sandbox tests need root");
        return false;
    }
    true
}

/// A node whose cgroups are named `node` (unique per test: opening a node removes that
/// node's leftovers), with a 32-process limit and a 1 MiB /tmp.
fn open_node(home: &std::path::Path, node: &str) -> Sandboxes {
    Sandboxes::open(NodeSandbox {
        cgroup_root: PathBuf::from("/sys/fs/cgroup"),
        node_id: node.to_string(),
        mount_point: home.join("root"),
        uid: 65534,
        gid: 65534,
        pids_max: 32,
        tmp_bytes: 1 << 20,
        remap: Default::default(),
    })
    .unwrap()
}

/// An instance that sees only the system (no directories of its own), at `/`, without the
/// host's network.
fn bare_spec(id: &str, memory_bytes: u64) -> InstanceSpec {
    InstanceSpec {
        id: id.into(),
        memory_bytes,
        read_only: vec![],
        bound_at: Vec::new(),
        tmp_bytes: None,
        cwd: PathBuf::from("/"),
        host_network: false,
        runtime_api_port: None,
    }
}

async fn run_in_sandbox(script: &str, host_network: bool) -> (i32, String, String) {
    let (code, out, err, _) = run_with_events(script, host_network).await;
    (code, out, err)
}

async fn run_with_events(
    script: &str,
    host_network: bool,
) -> (i32, String, String, ember_sandbox::Events) {
    let home = tempfile::tempdir().unwrap();
    // Unique per call: opening a node removes that node's leftovers.
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let boxes = open_node(home.path(), &format!("test-{}-{n}", std::process::id()));
    let work = home.path().join("work");
    std::fs::create_dir(&work).unwrap();
    std::fs::write(work.join("secret-of-work"), "x").unwrap();
    let mut sb = boxes
        .prepare(&InstanceSpec {
            id: "t1".into(),
            memory_bytes: 128 << 20,
            read_only: vec![work.clone()],
            bound_at: Vec::new(),
            tmp_bytes: None,
            cwd: work.clone(),
            host_network,
            runtime_api_port: None,
        })
        .unwrap();
    let mut cmd = tokio::process::Command::new("/bin/sh");
    cmd.args(["-c", script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env_clear()
        .env("PATH", "/usr/bin:/bin");
    sb.attach(&mut cmd);
    let out = cmd.output().await.unwrap();
    let events = sb.events();
    sb.destroy().await;
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        events,
    )
}

#[tokio::test]
async fn a_sandboxed_process_sees_only_its_own_world() {
    if !privileged() {
        return;
    }
    let script = r#"
        echo "pid=$$"
        echo "host=$(cat /proc/sys/kernel/hostname)"
        echo "uid=$(id -u) gid=$(id -g)"
        grep -E '^(CapEff|CapBnd|NoNewPrivs|Seccomp):' /proc/self/status | tr -s '\t' ' '
        echo "procs=$(ls -d /proc/[0-9]* | wc -l)"
        echo "root=$(ls / | tr '\n' ' ')"
        ls secret-of-work >/dev/null && echo "code=visible"
        touch /usr/x 2>/dev/null || echo "usr=readonly"
        touch secret-of-work 2>/dev/null || echo "code=readonly"
        echo hi > /tmp/t && echo "tmp=writable"
        head -c 2000000 /dev/zero > /tmp/big 2>/dev/null || echo "tmp=full"
        cat /dev/urandom | head -c 4 | wc -c | sed 's/^/urandom=/'
        ls /home /root /var 2>/dev/null || echo "host=hidden"
        ip link 2>/dev/null | grep -c '^[0-9]' | sed 's/^/links=/' || true
    "#;
    let (code, out, err) = run_in_sandbox(script, false).await;
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    for want in [
        "pid=1",
        "host=ember",
        "uid=65534 gid=65534",
        "CapEff: 0000000000000000",
        "CapBnd: 0000000000000000",
        "NoNewPrivs: 1",
        "Seccomp: 2",
        "code=visible",
        "usr=readonly",
        "code=readonly",
        "tmp=writable",
        "tmp=full",
        "urandom=4",
        "host=hidden",
    ] {
        assert!(
            out.contains(want),
            "{want} missing from:\n{out}\nstderr:\n{err}"
        );
    }
    let procs: usize = out
        .lines()
        .find_map(|l| l.strip_prefix("procs="))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(procs <= 4, "sees {procs} processes:\n{out}");
}

#[tokio::test]
async fn limits_are_enforced_and_counted() {
    if !privileged() {
        return;
    }
    // A syscall outside the allowlist kills the process with SIGSYS (relayed as 128 + 31).
    let (code, _, err) = run_in_sandbox("exec unshare --user true", false).await;
    assert_eq!(code, ember_sandbox::SECCOMP_EXIT_CODE, "{err}");
    // The pids limit (32) stops a fork storm and is counted.
    let (_, _, _, ev) = run_with_events("for i in $(seq 60); do sleep 2 & done; wait", false).await;
    assert!(ev.pids_max_hits > 0, "{ev:?}");
    // Over the memory limit (128 MiB) the OOM killer runs, and is counted.
    let (code, _, _, ev) =
        run_with_events("exec python3 -c 'x = b\"x\" * (400 << 20)'", false).await;
    assert_ne!(code, 0);
    assert!(ev.oom_kills > 0, "{ev:?}");
    // Without the host network only a loopback device exists; with it, the host's.
    let links = "cat /proc/net/dev | tail -n +3 | wc -l";
    let (_, none, _) = run_in_sandbox(links, false).await;
    let (_, host, _) = run_in_sandbox(links, true).await;
    assert_eq!(none.trim(), "1", "{none}");
    // With it, exactly the host's interfaces (a private namespace would show only loopback).
    let host_links = std::fs::read_to_string("/proc/net/dev")
        .unwrap()
        .lines()
        .count()
        - 2;
    assert_eq!(host.trim(), host_links.to_string(), "{host}");
}

fn status_of(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default()
}

fn field<'a>(status: &'a str, key: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key).map(|v| v.trim()))
        .unwrap_or("")
}

#[tokio::test]
async fn the_first_process_can_start_stopped_and_privileged_for_a_restore() {
    if !privileged() {
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let boxes = open_node(home.path(), &format!("test-stopped-{}", std::process::id()));
    let mut sb = boxes.prepare(&bare_spec("stopped", 64 << 20)).unwrap();
    let mut cmd = tokio::process::Command::new("/bin/sh");
    cmd.args([
        "-c",
        "echo uid=$(id -u); grep Seccomp: /proc/self/status | tr -s '\\t' ' '",
    ])
    .stdout(Stdio::piped())
    .env_clear()
    .env("PATH", "/usr/bin:/bin");
    sb.attach_stopped(&mut cmd);
    let child = cmd.spawn().unwrap();
    // spawn() returned with the first process parked, inside the sandbox, still privileged.
    let pid = sb
        .first_process()
        .expect("the first process is in the instance's cgroup");
    let st = status_of(pid);
    assert!(field(&st, "State:").starts_with('T'), "{st}");
    assert!(
        field(&st, "NSpid:").ends_with(" 1") || field(&st, "NSpid:").ends_with("\t1"),
        "{st}"
    );
    assert_eq!(
        field(&st, "Uid:").split_whitespace().next(),
        Some("0"),
        "{st}"
    );
    assert_ne!(field(&st, "CapEff:"), "0000000000000000", "{st}");
    assert_eq!(field(&st, "CapBnd:"), "0000000000000000", "{st}");
    assert_eq!(field(&st, "Seccomp:"), "0", "{st}");
    let root: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/root"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        root.contains(&"usr".to_string()) && !root.contains(&"home".to_string()),
        "{root:?}"
    );
    let h = sb.handoff();
    assert_eq!((h.uid, h.gid), (65534, 65534));
    assert!(!h.filter.is_empty());
    // Without a restore, continuing it is a cold boot: unprivileged, filtered, exec'd.
    // SAFETY: kill with a pid found above and SIGCONT.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    let out = child.wait_with_output().await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("uid=65534"), "{text}");
    assert!(text.contains("Seccomp: 2"), "{text}");
    sb.destroy().await;
}

#[tokio::test]
async fn a_runtime_api_listener_lives_in_the_instances_own_network() {
    if !privileged() {
        return;
    }
    use tokio::io::AsyncReadExt;
    let home = tempfile::tempdir().unwrap();
    let boxes = open_node(home.path(), &format!("test-api-{}", std::process::id()));
    let mut sb = boxes
        .prepare(&InstanceSpec {
            id: "api".into(),
            memory_bytes: 64 << 20,
            read_only: vec![],
            bound_at: Vec::new(),
            tmp_bytes: None,
            cwd: PathBuf::from("/"),
            host_network: false,
            runtime_api_port: Some(9001),
        })
        .unwrap();
    let listener = sb.take_listener().expect("a listener was asked for");
    assert_eq!(listener.local_addr().unwrap().to_string(), "127.0.0.1:9001");
    assert!(sb.take_listener().is_none(), "given once");
    listener.set_nonblocking(true).unwrap();
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    // The instance reaches the daemon's listener on its own loopback, and sees no other
    // interface up.
    let mut cmd = tokio::process::Command::new("/usr/bin/python3");
    cmd.args([
        "-I",
        "-c",
        "import socket; s = socket.create_connection(('127.0.0.1', 9001)); \
         s.sendall(open('/proc/net/dev').read().encode())",
    ])
    .env_clear();
    sb.attach(&mut cmd);
    let child = cmd.spawn().unwrap();
    let (mut conn, peer) =
        tokio::time::timeout(std::time::Duration::from_secs(10), listener.accept())
            .await
            .expect("the instance connects")
            .unwrap();
    assert_eq!(peer.ip().to_string(), "127.0.0.1");
    let mut got = String::new();
    conn.read_to_string(&mut got).await.unwrap();
    let ifaces: Vec<&str> = got
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(str::trim)
        .collect();
    assert_eq!(ifaces, vec!["lo"], "{got}");
    let out = child.wait_with_output().await.unwrap();
    assert!(out.status.success(), "{out:?}");
    sb.destroy().await;
}

/// Every route to a namespace is closed from inside an instance (clone's CLONE_NEW* flags,
/// clone3, unshare, setns), while fork and threads keep working (glibc's threads fall back
/// from clone3 to clone on ENOSYS).
#[tokio::test]
async fn no_route_to_a_namespace_is_open() {
    if !privileged() {
        return;
    }
    let probe = include_str!("fixtures/ns_probe.py");
    let script = format!("/usr/bin/python3 -I -c '{}'", probe.replace('\'', "'\\''"));
    let (code, out, err) = run_in_sandbox(&script, false).await;
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    for want in [
        "clone=killed:SIGSYS",
        "clone3=errno:38",
        "unshare=killed:SIGSYS",
        "setns=killed:SIGSYS",
        "af_alg=errno:97",
        "af_packet=errno:97",
        "sockets=ok",
        "fork=ok",
        "thread=ok",
    ] {
        assert!(
            out.contains(want),
            "{want} missing from:\n{out}\nstderr:\n{err}"
        );
    }
}

/// A sandbox made ahead of knowing its function: its code directory is bound in later,
/// read-only, at the same path, and its memory limit set then; the root stays read-only
/// and nothing else of the host shows.
#[tokio::test]
async fn a_sandbox_made_ahead_gets_its_directories_and_limit_later() {
    if !privileged() {
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let node = format!("test-later-{}", std::process::id());
    let boxes = open_node(home.path(), &node);
    let code = home.path().join("code").join("abc123");
    std::fs::create_dir_all(&code).unwrap();
    std::fs::write(code.join("handler.txt"), "the function's code").unwrap();
    std::fs::write(home.path().join("code").join("other.txt"), "not bound").unwrap();
    let mut sb = boxes.prepare(&bare_spec("later", 1 << 30)).unwrap();
    let script = format!(
        "cat {c}/handler.txt; echo; ls {p}; touch {c}/new 2>/dev/null && echo wrote-code; \
         mkdir /x 2>/dev/null && echo wrote-root; grep ' {c} ' /proc/self/mountinfo; true",
        c = code.display(),
        p = code.parent().unwrap().display(),
    );
    let mut cmd = tokio::process::Command::new("/bin/sh");
    cmd.args(["-c", &script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env_clear()
        .env("PATH", "/usr/bin:/bin");
    sb.attach_stopped(&mut cmd);
    let child = cmd.spawn().unwrap();
    let pid = sb.first_process().expect("the first process is parked");
    assert!(sb.add_read_only(&[]).is_err(), "not pinned yet");
    sb.pin_first(pid).unwrap();
    sb.add_read_only(std::slice::from_ref(&code)).unwrap();
    sb.resize(96 << 20).unwrap();
    for limit in [
        format!("/sys/fs/cgroup/memory/ember/{node}/later/memory.limit_in_bytes"),
        format!("/sys/fs/cgroup/ember/{node}/later/memory.max"),
    ] {
        if let Ok(v) = std::fs::read_to_string(&limit) {
            assert_eq!(v.trim(), (96u64 << 20).to_string(), "{limit}");
        }
    }
    // A path with NUL is refused before anything is done.
    let bad = PathBuf::from(std::ffi::OsStr::from_bytes(b"/a\0b"));
    assert!(sb.add_read_only(&[bad]).is_err());
    // SAFETY: kill with the pid found above and SIGCONT.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    let out = child.wait_with_output().await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("the function's code"), "{text}");
    assert!(text.contains("abc123"), "{text}");
    assert!(
        !text.contains("other.txt"),
        "only the bound directory shows: {text}"
    );
    assert!(
        !text.contains("wrote-code"),
        "the code is read-only: {text}"
    );
    assert!(
        !text.contains("wrote-root"),
        "the root stays read-only: {text}"
    );
    // Its own mount, not a peer of the host's (a shared host / must not propagate into it).
    let line = text
        .lines()
        .find(|l| l.contains(" ro,"))
        .unwrap_or_default();
    assert!(!line.is_empty() && !line.contains("shared:"), "{text}");
    sb.destroy().await;
    // The host's directory is untouched.
    assert!(!code.join("new").exists());
}

/// Hostile: an instance that plants a symbolic link (or a directory of its own) where a
/// later bind goes, in its writable /tmp, gets the bind refused; nothing is mounted through
/// the link.
#[tokio::test]
async fn a_later_bind_never_follows_what_the_instance_planted() {
    if !privileged() {
        return;
    }
    let home = tempfile::tempdir().unwrap();
    // Under /tmp on the host, so under the instance's own /tmp inside.
    assert!(home.path().starts_with("/tmp"), "{}", home.path().display());
    let boxes = open_node(home.path(), &format!("test-plant-{}", std::process::id()));
    let code = home.path().join("code");
    std::fs::create_dir_all(&code).unwrap();
    for (plant, what) in [
        // To /, whose root is writable while a bind is made: only O_NOFOLLOW stops it.
        (format!("ln -s / {}", home.path().display()), "link"),
        (format!("mkdir -p {}", home.path().display()), "own dir"),
    ] {
        let mut sb = boxes.prepare(&bare_spec("plant", 64 << 20)).unwrap();
        let mut cmd = tokio::process::Command::new("/bin/sh");
        cmd.args(["-c", &format!("{plant} && echo planted && sleep 10")])
            .stdout(Stdio::piped())
            .env_clear()
            .env("PATH", "/usr/bin:/bin");
        sb.attach(&mut cmd);
        let mut child = cmd.spawn().unwrap();
        let mut out = tokio::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        tokio::io::AsyncBufReadExt::read_line(&mut out, &mut line)
            .await
            .unwrap();
        assert_eq!(line.trim(), "planted", "{what}");
        let pid = sb.first_process().unwrap();
        sb.pin_first(pid).unwrap();
        let err = sb
            .add_read_only(std::slice::from_ref(&code))
            .expect_err(what);
        assert!(
            format!("{err}").contains("mount namespace"),
            "{what}: {err}"
        );
        // Nothing was mounted or made through the link at the instance's root.
        let through = format!("/proc/{pid}/root/code");
        assert!(!std::path::Path::new(&through).exists(), "{what}");
        let _ = child.kill().await;
        sb.destroy().await;
    }
}

/// A later bind from a shared mount on the host (systemd makes `/` shared) is private in the
/// instance: what the host mounts under the directory afterwards does not show inside.
#[tokio::test]
async fn a_later_bind_does_not_propagate_from_the_host() {
    if !privileged() {
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let shared = home.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    let run = |args: &[&str]| {
        let ok = std::process::Command::new("mount")
            .args(args)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mount {args:?}");
    };
    /// Unmounts what the test mounted on the host, also when it fails half-way.
    struct Unmount(Vec<String>);
    impl Drop for Unmount {
        fn drop(&mut self) {
            for m in self.0.iter().rev() {
                let _ = std::process::Command::new("umount")
                    .args(["-l", m])
                    .status();
            }
        }
    }
    let mut mounted = Unmount(Vec::new());
    let shared_s = shared.to_string_lossy().into_owned();
    run(&["-t", "tmpfs", "tmpfs", &shared_s]);
    mounted.0.push(shared_s.clone());
    run(&["--make-shared", &shared_s]);
    let code = shared.join("code");
    std::fs::create_dir(&code).unwrap();
    let boxes = open_node(home.path(), &format!("test-prop-{}", std::process::id()));
    let mut sb = boxes.prepare(&bare_spec("prop", 64 << 20)).unwrap();
    let script = format!(
        "ls {}/late 2>/dev/null && echo saw-late; true",
        code.display()
    );
    let mut cmd = tokio::process::Command::new("/bin/sh");
    cmd.args(["-c", &script])
        .stdout(Stdio::piped())
        .env_clear()
        .env("PATH", "/usr/bin:/bin");
    sb.attach_stopped(&mut cmd);
    let child = cmd.spawn().unwrap();
    let pid = sb.first_process().unwrap();
    sb.pin_first(pid).unwrap();
    sb.add_read_only(std::slice::from_ref(&code)).unwrap();
    // The host mounts under the bound directory after the bind.
    let late = code.join("late");
    std::fs::create_dir(&late).unwrap();
    let late_s = late.to_string_lossy().into_owned();
    run(&["-t", "tmpfs", "tmpfs", &late_s]);
    mounted.0.push(late_s.clone());
    std::fs::write(late.join("secret"), "x").unwrap();
    // SAFETY: kill with the pid found above and SIGCONT.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    let out = child.wait_with_output().await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    sb.destroy().await;
    drop(mounted);
    assert!(!text.contains("secret"), "{text}");
}

/// A template's view: the instance root without /proc (each instance mounts its own),
/// read-only, its private directories made empty, a read-only /tmp with only what is bound
/// below it (each instance mounts its own /tmp and binds those again). Looked at from a thread that
/// enters it, as a template's thread does.
#[test]
fn a_view_shows_the_instance_root_without_proc_or_anything_writable() {
    if !privileged() {
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let boxes = open_node(home.path(), &format!("test-{}-view", std::process::id()));
    let work = home.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let private = PathBuf::from("/var/lib/ember-view-test/code");
    let view = boxes
        .view(&ember_sandbox::ViewSpec {
            read_only: vec![work.clone(), PathBuf::from("/no/such/dir")],
            private: vec![private.clone()],
            host_network: false,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(
        view.late_read_only(),
        std::slice::from_ref(&work),
        "below /tmp: bound later"
    );
    let mounts: Vec<_> = view
        .child_mounts()
        .iter()
        .map(|m| (m.fstype, m.target.clone()))
        .collect();
    assert_eq!(
        mounts,
        [
            ("tmpfs", PathBuf::from("/tmp")),
            ("proc", PathBuf::from("/proc")),
            ("tmpfs", private.clone()),
        ]
    );
    let ns = view.mount_ns();
    let seen = std::thread::spawn(move || {
        use std::os::fd::AsRawFd;
        // SAFETY: unshare and setns take flags and a descriptor; no pointers.
        unsafe {
            assert_eq!(libc::unshare(libc::CLONE_FS), 0);
            assert_eq!(libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNS), 0);
        }
        let list = |p: &str| {
            std::fs::read_dir(p)
                .map(|d| d.count())
                .map_err(|e| e.to_string())
        };
        (
            list("/proc"),
            list("/tmp"),
            std::path::Path::new("/usr/bin/env").exists(),
            list(private.to_str().unwrap()),
            std::fs::create_dir("/planted").unwrap_err().raw_os_error(),
            std::fs::read_dir(home.path().join("work")).is_ok(),
            std::fs::write("/tmp/planted", "x")
                .unwrap_err()
                .raw_os_error(),
        )
    })
    .join()
    .unwrap();
    assert_eq!(seen.0, Ok(0), "no /proc of the host's pid namespace");
    assert_eq!(
        seen.1,
        Ok(1),
        "/tmp holds only the binds below it: {seen:?}"
    );
    assert!(seen.2, "the system is there");
    assert_eq!(seen.3, Ok(0), "the private directory is made, empty");
    assert_eq!(seen.4, Some(libc::EROFS), "the shared root is read-only");
    assert!(seen.5, "the binds below /tmp are there for the template");
    assert_eq!(seen.6, Some(libc::EROFS), "the view's /tmp is read-only");
}
