//! The restore the platform will make: into a sandbox's first process, stopped still
//! privileged inside its namespaces and cgroup, ending as the instance (its user and
//! seccomp filter).

mod common;

use std::process::Stdio;

use common::sandboxed::{ask, handoff_options, instance, setup};
use common::{Conv, fds_of, privileged, tmp};
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

/// The stopper spawned as `sb`'s first process with a pipe as its stdin and one as its
/// stdout: its pid, and our ends of the two.
fn parked_stopper(
    sb: &mut ember_sandbox::Sandbox,
) -> (i32, std::io::PipeWriter, std::io::PipeReader) {
    use std::os::fd::AsRawFd;
    let (in_r, in_w) = std::io::pipe().unwrap();
    let (out_r, out_w) = std::io::pipe().unwrap();
    let program = ember_snap::stopper::program_fd().unwrap();
    let fds = [(0, in_r.as_raw_fd()), (1, out_w.as_raw_fd()), (2, 2)];
    (sb.spawn_parked(program, &fds).unwrap(), in_w, out_r)
}

/// The node's way: the sandbox's first process is the stopper, made without a fork of the
/// test process (nothing of ours mapped in it, none of our descriptors), restored into and
/// handed over with no capability left in any set.
#[tokio::test(flavor = "multi_thread")]
async fn restores_into_a_stopper_made_without_a_fork_and_hands_it_over() {
    if !privileged("restores_into_a_stopper_made_without_a_fork_and_hands_it_over") {
        return;
    }
    let dir = tmp();
    let (boxes, img, work) = setup(dir.path(), "stopper");
    let mut sb = instance(&boxes, &work);
    let (pid, in_w, out_r) = parked_stopper(&mut sb);
    let status = |pid: i32| std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |text: &str, name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    let before = status(pid);
    assert_eq!(field(&before, "State:"), "T (stopped)");
    assert_eq!(field(&before, "PPid:"), std::process::id().to_string());
    assert!(field(&before, "NSpid:").ends_with("\t1"), "{before}");
    let ours = status(std::process::id() as i32);
    assert_eq!(
        field(&before, "CapEff:"),
        field(&ours, "CapEff:"),
        "still privileged"
    );
    assert_eq!(sb.first_process(), Some(pid), "in the sandbox's cgroups");
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let kernel = ["[vvar]", "[vvar_vclock]", "[vdso]", "[stack]", "[vsyscall]"];
    for line in maps.lines() {
        let name = line.split_whitespace().nth(5).unwrap_or("");
        assert!(
            kernel.contains(&name) || name == "/memfd:ember-stopper",
            "only the stopper's page and what the kernel maps: {maps}"
        );
    }
    assert_eq!(fds_of(pid), [0, 1, 2]);
    let program = ember_snap::stopper::program_fd().unwrap();
    let again = sb
        .spawn_parked(program, &[(0, 0), (1, 1), (2, 2)])
        .unwrap_err();
    assert!(again.to_string().contains("already started"), "{again}");

    let opts = handoff_options(&sb);
    let restored = tokio::task::spawn_blocking(move || {
        ember_snap::restore(&img, Target::Stopped { pid }, &opts)
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(restored.pid, pid);
    let mut conv = Conv::of(pid, 1, in_w.into(), out_r.into());
    assert_eq!(conv.ask("ping"), "pong 1");
    assert!(conv.ask("creds").starts_with("creds 65534 65534 "));
    let after = status(pid);
    assert_eq!(field(&after, "Seccomp:"), "2");
    assert_eq!(field(&after, "NoNewPrivs:"), "1");
    for set in ["CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:"] {
        assert_eq!(field(&after, set), "0000000000000000", "{set} {after}");
    }
    drop(conv);
    sb.destroy().await;
}

/// A restore that fails kills the stopped first process but leaves it to its parent (the
/// caller) to collect, as `Target::Stopped` promises: collected by the restore, its pid
/// could be reused and the caller's later wait or kill would reach another process.
#[tokio::test(flavor = "multi_thread")]
async fn a_failed_restore_leaves_the_dead_target_for_its_parent_to_collect() {
    if !privileged("a_failed_restore_leaves_the_dead_target_for_its_parent_to_collect") {
        return;
    }
    let dir = tmp();
    let (boxes, img, work) = setup(dir.path(), "failed");
    let mut sb = instance(&boxes, &work);
    let (pid, _in_w, _out_r) = parked_stopper(&mut sb);
    // The image is of a host process, the target pid 1 of its namespace: refused.
    let mut opts = handoff_options(&sb);
    opts.accept_new_tid = false;
    let e = tokio::task::spawn_blocking(move || {
        ember_snap::restore(&img, Target::Stopped { pid }, &opts)
    })
    .await
    .unwrap()
    .unwrap_err();
    assert!(e.to_string().contains("thread id"), "{e}");
    let mut status = 0;
    // SAFETY: waiting for our own child into a live local.
    let got = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
    assert_eq!(got, pid, "the dead target is still ours to collect");
    assert!(libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGKILL);
    sb.destroy().await;
}

/// A first process that cannot exec its program says which step failed, and leaves
/// nothing running in the sandbox.
#[tokio::test(flavor = "multi_thread")]
async fn a_stopper_spawn_that_cannot_exec_says_so_and_leaves_nothing() {
    use std::os::fd::AsFd;
    if !privileged("a_stopper_spawn_that_cannot_exec_says_so_and_leaves_nothing") {
        return;
    }
    let dir = tmp();
    let (boxes, _img, work) = setup(dir.path(), "noexec");
    let mut sb = instance(&boxes, &work);
    let not_a_program = std::fs::File::open("/etc/hostname").unwrap();
    let e = sb
        .spawn_parked(not_a_program.as_fd(), &[(0, 0), (1, 1), (2, 2)])
        .unwrap_err();
    let text = format!("{e}");
    assert!(text.contains("executing its program"), "{text}");
    assert_eq!(sb.first_process(), None);
    sb.destroy().await;
}

/// An instance dumped inside its sandbox carries the sandbox's seccomp filter in its
/// chain; restored into another sandbox with the handoff (which installs that filter
/// itself), it holds the filter once, as a cold-booted instance does.
#[tokio::test(flavor = "multi_thread")]
async fn a_sandboxed_instance_dumped_and_restored_holds_the_sandbox_filter_once() {
    if !privileged("a_sandboxed_instance_dumped_and_restored_holds_the_sandbox_filter_once") {
        return;
    }
    let dir = tmp();
    let (boxes, img, work) = setup(dir.path(), "refilter");
    let mut first = instance(&boxes, &work);
    let mut cmd = tokio::process::Command::new("/bin/false");
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
    first.attach_stopped(&mut cmd);
    let mut child = cmd.spawn().unwrap();
    let pid = first.first_process().unwrap();
    let opts = handoff_options(&first);
    tokio::task::spawn_blocking(move || ember_snap::restore(&img, Target::Stopped { pid }, &opts))
        .await
        .unwrap()
        .unwrap();
    // Talked to directly (not with `ask`, which closes its stdin): the instance must still
    // be waiting for a command when it is dumped.
    let mut talk = Talk::of(&mut child);
    assert_eq!(talk.ask("ping"), "pong 1");
    assert_eq!(seccomp_filters(pid), "1");

    // Dumped inside its sandbox: the image holds the sandbox's filter.
    let out = dir.path().join("instance-image");
    let inherited = vec![0, 1, 2];
    ember_snap::dump(
        pid,
        &out,
        &ember_snap::DumpOptions {
            inherited,
            ..Default::default()
        },
    )
    .unwrap();
    let again = ember_snap::LoadedImage::load(&out).unwrap();
    assert_eq!(again.meta.process.seccomp.len(), 1);
    drop(talk);
    let _ = child.start_kill();
    let _ = child.wait().await;
    first.destroy().await;

    let mut second = instance(&boxes, &work);
    let mut cmd = tokio::process::Command::new("/bin/false");
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
    second.attach_stopped(&mut cmd);
    let mut child = cmd.spawn().unwrap();
    let pid = second.first_process().unwrap();
    let opts = handoff_options(&second);
    tokio::task::spawn_blocking(move || {
        ember_snap::restore(&again, Target::Stopped { pid }, &opts)
    })
    .await
    .unwrap()
    .map_err(|e| common::chain(&e))
    .unwrap();
    let mut talk = Talk::of(&mut child);
    assert_eq!(talk.ask("ping"), "pong 1");
    assert_eq!(seccomp_filters(pid), "1");
    drop(talk);
    let _ = child.start_kill();
    let _ = child.wait().await;
    second.destroy().await;
}

/// `Seccomp_filters` of `/proc/PID/status`.
fn seccomp_filters(pid: i32) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Seccomp_filters:"))
        .map(|v| v.trim().to_string())
        .unwrap_or_default()
}

/// A child's stdin and stdout, kept open between commands.
struct Talk {
    w: std::fs::File,
    r: std::io::BufReader<std::fs::File>,
}

impl Talk {
    fn of(child: &mut tokio::process::Child) -> Talk {
        let w = child.stdin.take().unwrap().into_owned_fd().unwrap();
        let r = child.stdout.take().unwrap().into_owned_fd().unwrap();
        Talk {
            w: std::fs::File::from(w),
            r: std::io::BufReader::new(std::fs::File::from(r)),
        }
    }

    fn ask(&mut self, cmd: &str) -> String {
        use std::io::{BufRead, Write};
        writeln!(self.w, "{cmd}").unwrap();
        let mut line = String::new();
        self.r.read_line(&mut line).unwrap();
        line.trim_end().to_string()
    }
}
