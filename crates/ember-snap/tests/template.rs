//! Templates: an image restored once into a parked process; instances forked from it share
//! its pages copy-on-write and behave as restored ones.

mod common;

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use common::{Conv, check_memory, privileged, tmp};
use ember_snap::image::vma_flags;
use ember_snap::lazy::Policy;
use ember_snap::template::{self, ForkSpec, Namespaces, Template, TemplateOptions};
use ember_snap::{Handoff, LoadedImage, RestoreOptions};

fn memory_image(dir: &Path) -> Arc<LoadedImage> {
    Arc::new(common::dump_python("memory.py", &[], Path::new("/"), dir))
}

/// The tests' images are dumped from processes of our pid namespace (not pid 1 of their
/// own, as the node's are).
fn forking_any_tid() -> TemplateOptions {
    TemplateOptions {
        accept_new_tid: true,
        ..TemplateOptions::default()
    }
}

/// Forks an instance wired to fresh pipes on 0 and 1 (our stderr on 2) and lets it run.
fn fork(t: &Template, namespaces: Namespaces) -> Conv {
    fork_timed(t, namespaces).0
}

#[test]
fn forked_instances_answer_independently_with_anonymous_memory_semantics() {
    if !privileged("forked_instances_answer_independently_with_anonymous_memory_semantics") {
        return;
    }
    let dir = tmp();
    let img = memory_image(dir.path());
    let tpl = Template::new(img.clone(), &forking_any_tid()).unwrap();
    let mut a = fork(&tpl, Namespaces::default());
    let mut b = fork(&tpl, Namespaces::default());
    // Each is pid 1 of its own pid namespace, holding only the descriptors it was given.
    assert_eq!(a.ask("ping"), "pong 1");
    assert_eq!(b.ask("ping"), "pong 1");
    assert_eq!(common::fds_of(a.pid), [0, 1, 2]);
    // glibc's cached thread id is the instance's own (1), written by CLONE_CHILD_SETTID.
    let task = &img.meta.task;
    let at = ember_snap::restore::words_to_regs(&task.regs).fs_base
        + u64::from(task.glibc_tid_offset.expect("glibc's thread id was found"));
    let mut tid = [0u8; 4];
    ember_snap::sys::read_mem(b.pid, at, &mut tid).unwrap();
    assert_eq!(i32::from_ne_bytes(tid), 1);
    // A write in one is seen neither by the other nor by the template (a later instance).
    assert_eq!(a.ask("set alpha"), "set");
    assert_eq!(a.ask("get"), "get alpha False");
    assert_eq!(b.ask("get"), "get image True");
    let mut c = fork(&tpl, Namespaces::default());
    assert_eq!(c.ask("get"), "get image True");
    assert_eq!(b.ask("set beta"), "set");
    assert_eq!(a.ask("get"), "get alpha False");
    // Grown (mremap), freed, discarded (MADV_DONTNEED reads zeros) and forked memory.
    check_memory(&mut a);
    check_memory(&mut c);
    assert_eq!(b.ask("get"), "get beta False");
    // An instance that ends is collected by us; the template lives on.
    assert_eq!(a.ask("ping"), "pong 1");
    drop(a);
    let mut d = fork(&tpl, Namespaces::default());
    assert_eq!(d.ask("get"), "get image True");
    let template = tpl.pid();
    assert!(Path::new(&format!("/proc/{template}")).exists());
    // Dropping the template ends it, not its instances (still ours to collect).
    drop(tpl);
    assert!(!Path::new(&format!("/proc/{template}")).exists());
    assert_eq!(b.ask("get"), "get beta False");
    assert_eq!(d.ask("ping"), "pong 1");
}

#[test]
fn forked_instances_get_fresh_namespaces() {
    if !privileged("forked_instances_get_fresh_namespaces") {
        return;
    }
    let dir = tmp();
    let img = memory_image(dir.path());
    let tpl = Template::new(img, &forking_any_tid()).unwrap();
    let mut a = fork(&tpl, Namespaces::all());
    assert_eq!(a.ask("ping"), "pong 1");
    let ns = |pid: i32, n: &str| std::fs::read_link(format!("/proc/{pid}/ns/{n}")).unwrap();
    for n in ["pid", "mnt", "uts", "ipc", "net"] {
        assert_ne!(ns(a.pid, n), ns(tpl.pid(), n), "{n}");
    }
    check_memory(&mut a);
}

#[test]
fn a_handoff_makes_the_forked_instance_the_sandbox_user_with_its_filter() {
    if !privileged("a_handoff_makes_the_forked_instance_the_sandbox_user_with_its_filter") {
        return;
    }
    let dir = tmp();
    let img = Arc::new(common::dump_python(
        "target.py",
        &[],
        Path::new("/"),
        dir.path(),
    ));
    let tpl = Template::new(img, &forking_any_tid()).unwrap();
    let (in_r, in_w) = std::io::pipe().unwrap();
    let (out_r, out_w) = std::io::pipe().unwrap();
    // SECCOMP_RET_ALLOW for everything: enough to see a filter installed.
    let allow = libc::sock_filter {
        code: (libc::BPF_RET | libc::BPF_K) as u16,
        jt: 0,
        jf: 0,
        k: libc::SECCOMP_RET_ALLOW,
    };
    let spec = ForkSpec {
        fds: vec![(0, in_r.as_raw_fd()), (1, out_w.as_raw_fd()), (2, 2)],
        namespaces: Namespaces::all(),
        handoff: Some(Handoff {
            uid: 65534,
            gid: 65534,
            die_with_parent: true,
            seccomp: vec![allow],
        }),
        ..ForkSpec::default()
    };
    let f = tpl.fork(spec).unwrap();
    drop((in_r, out_w));
    // SAFETY: a signal to our own child.
    unsafe { libc::kill(f.pid, libc::SIGCONT) };
    let mut c = Conv::of(f.pid, 1, OwnedFd::from(in_w), OwnedFd::from(out_r));
    assert_eq!(c.ask("ping"), "pong 1");
    assert!(c.ask("creds").starts_with("creds 65534 65534 "));
    assert_eq!(c.ask("fork"), "fork 7");
    let status = std::fs::read_to_string(format!("/proc/{}/status", c.pid)).unwrap();
    // No capability left in any set: the bounding and ambient sets are cleared too.
    for want in [
        "Seccomp:\t2",
        "NoNewPrivs:\t1",
        "Uid:\t65534\t65534\t65534\t65534",
        "CapEff:\t0000000000000000",
        "CapPrm:\t0000000000000000",
        "CapBnd:\t0000000000000000",
        "CapAmb:\t0000000000000000",
    ] {
        assert!(status.contains(want), "{want} in {status}");
    }
    // The template itself stays privileged: a second instance without a handoff is root.
    let mut d = fork(&tpl, Namespaces::default());
    assert!(d.ask("creds").starts_with("creds 0 0 "));
    // Its parent is the template's thread (CLONE_PARENT): when the template is dropped,
    // that thread ends, and an instance that asked to die with its parent is killed.
    drop(tpl);
    assert_eq!(common::wait_signal(c.pid), libc::SIGKILL);
    assert!(d.ask("creds").starts_with("creds 0 0 "));
}

#[test]
fn images_a_fork_cannot_reproduce_are_refused_and_a_failed_fork_leaves_the_template() {
    if !privileged(
        "images_a_fork_cannot_reproduce_are_refused_and_a_failed_fork_leaves_the_template",
    ) {
        return;
    }
    let dir = tmp();
    let img = memory_image(dir.path());
    assert_eq!(template::unsuitable(&img.meta), None);
    let flag = |f: u32| {
        let mut m = img.meta.clone();
        m.vmas[0].flags |= f;
        template::unsuitable(&m).unwrap()
    };
    assert!(flag(vma_flags::DONTFORK).contains("MADV_DONTFORK"));
    assert!(flag(vma_flags::WIPEONFORK).contains("MADV_WIPEONFORK"));
    assert!(flag(vma_flags::LOCKED).contains("mlocked"));
    let mut m = img.meta.clone();
    m.process.itimers[0].value_us = 5;
    assert!(template::unsuitable(&m).unwrap().contains("interval timer"));
    let tpl = Template::new(img.clone(), &forking_any_tid()).unwrap();
    let e = tpl
        .fork(ForkSpec {
            fds: vec![(0, 0)],
            ..ForkSpec::default()
        })
        .unwrap_err();
    assert!(e.to_string().contains("[1, 2]"), "{e}");
    let e = tpl
        .fork(ForkSpec {
            fds: vec![(0, 0), (1, 1), (2, 2), (4, 987_654)],
            ..ForkSpec::default()
        })
        .unwrap_err();
    assert!(
        common::chain(&e).contains("pidfd_getfd of fd 987654"),
        "{}",
        common::chain(&e)
    );
    // A child whose fork failed after the clone is killed and collected: our only child
    // is the template.
    assert_eq!(our_children(), [tpl.pid()]);
    let e = tpl
        .fork(ForkSpec {
            fds: vec![(0, 0), (1, 1), (2, 2)],
            cgroup_procs: vec!["/sys/fs/cgroup/no-such-ember-cgroup/cgroup.procs".into()],
            ..ForkSpec::default()
        })
        .unwrap_err();
    assert!(e.to_string().contains("no-such-ember-cgroup"), "{e}");
    assert_eq!(our_children(), [tpl.pid()]);
    // Mounts or a host name outside a namespace of the child's own are refused.
    let e = tpl
        .fork(ForkSpec {
            fds: vec![(0, 0), (1, 1), (2, 2)],
            hostname: Some("x".into()),
            ..ForkSpec::default()
        })
        .unwrap_err();
    assert!(e.to_string().contains("Namespaces::uts"), "{e}");
    let mut a = fork(&tpl, Namespaces::default());
    assert_eq!(a.ask("ping"), "pong 1");
    // An image whose thread id is not 1 is refused unless asked for.
    assert_ne!(img.meta.task.tid, 1);
    let e = Template::new(img, &TemplateOptions::default())
        .err()
        .unwrap();
    assert!(e.to_string().contains("accept_new_tid"), "{e}");
}

/// The children of all our threads (a killed child that was not collected stays listed).
fn our_children() -> Vec<i32> {
    let mut kids = vec![];
    for t in std::fs::read_dir("/proc/self/task").unwrap() {
        // A thread that ended since the listing has no children to show.
        let Ok(text) = std::fs::read_to_string(t.unwrap().path().join("children")) else {
            continue;
        };
        kids.extend(text.split_whitespace().map(|p| p.parse::<i32>().unwrap()));
    }
    kids.sort_unstable();
    kids
}

#[test]
fn a_template_whose_process_died_answers_gone() {
    if !privileged("a_template_whose_process_died_answers_gone") {
        return;
    }
    let dir = tmp();
    let img = memory_image(dir.path());
    let tpl = Template::new(img, &forking_any_tid()).unwrap();
    let mut a = fork(&tpl, Namespaces::default());
    // SAFETY: a signal to the template process, ours.
    unsafe { libc::kill(tpl.pid(), libc::SIGKILL) };
    for _ in 0..2 {
        let e = tpl
            .fork(ForkSpec {
                fds: vec![(0, 0), (1, 1), (2, 2)],
                ..ForkSpec::default()
            })
            .unwrap_err();
        assert!(matches!(e, template::TemplateError::Gone { .. }), "{e:?}");
    }
    // The dead template was collected (its thread ended); its instances live on. The
    // thread ends after it answers, and its children move to another of our threads only
    // as it exits (after a join could return): wait for that, boundedly.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut kids = our_children();
    while kids != [a.pid] && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
        kids = our_children();
    }
    assert_eq!(kids, [a.pid]);
    assert_eq!(a.ask("ping"), "pong 1");
    drop(tpl);
}

/// An image of target.py run as nobody (uid and gid 65534, no capability).
fn unprivileged_image(dir: &Path) -> Arc<LoadedImage> {
    use std::os::unix::process::CommandExt;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/targets/target.py");
    let mut original = Conv::spawn(
        std::process::Command::new("/usr/bin/python3")
            .arg("-I")
            .arg(&script)
            .uid(65534)
            .gid(65534)
            .current_dir("/"),
    );
    assert_eq!(original.line(), "ready");
    Arc::new(common::dump_stdio(original.pid, &dir.join("nobody")))
}

#[test]
fn an_image_dumped_unprivileged_forks_with_namespaces_as_its_own_user() {
    if !privileged("an_image_dumped_unprivileged_forks_with_namespaces_as_its_own_user") {
        return;
    }
    let dir = tmp();
    let img = unprivileged_image(dir.path());
    assert_eq!(img.meta.task.creds.uid, [65534; 4]);
    let tpl = Template::new(img.clone(), &forking_any_tid()).unwrap();
    // The template stays root, with every capability, to clone with namespaces.
    let status = |pid: i32| std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let t = ember_snap::creds::parse_status(&status(tpl.pid())).unwrap();
    assert_eq!(t.uid, [0; 4]);
    assert_ne!(t.effective, 0);
    let mut a = fork(&tpl, Namespaces::all());
    assert_eq!(a.ask("ping"), "pong 1");
    assert_eq!(a.ask("creds"), "creds 65534 65534 made");
    // The child is the image's user: ids, groups, every capability set.
    let c = ember_snap::creds::parse_status(&status(a.pid)).unwrap();
    let want = &img.meta.task.creds;
    assert_eq!(
        c,
        ember_snap::creds::Creds {
            securebits: 0,
            ..want.clone()
        }
    );
    assert_eq!(c.effective, 0);
    assert!(status(a.pid).contains("NoNewPrivs:\t0"));
}

/// A mount namespace made as the node's sandbox makes a view: a copy of ours, private,
/// with a tmpfs holding `marker` mounted on `dir` (an empty directory of ours).
fn prepared_view(dir: &Path) -> Arc<OwnedFd> {
    let dir = dir.to_path_buf();
    std::thread::spawn(move || {
        let c = |s: &str| std::ffi::CString::new(s).unwrap();
        // SAFETY: flags only; this thread alone leaves our filesystem attributes and
        // mount namespace.
        let rc = unsafe { libc::unshare(libc::CLONE_FS | libc::CLONE_NEWNS) };
        assert_eq!(rc, 0);
        let (root, none, tmpfs, at) = (c("/"), c("none"), c("tmpfs"), c(dir.to_str().unwrap()));
        let private = libc::MS_REC | libc::MS_PRIVATE;
        // SAFETY: NUL-terminated strings that outlive the calls.
        unsafe {
            assert_eq!(
                libc::mount(
                    none.as_ptr(),
                    root.as_ptr(),
                    std::ptr::null(),
                    private,
                    std::ptr::null()
                ),
                0
            );
            assert_eq!(
                libc::mount(
                    tmpfs.as_ptr(),
                    at.as_ptr(),
                    tmpfs.as_ptr(),
                    0,
                    std::ptr::null()
                ),
                0
            );
        }
        std::fs::write(dir.join("marker"), "view").unwrap();
        let ns = std::fs::File::open("/proc/thread-self/ns/mnt").unwrap();
        Arc::new(OwnedFd::from(ns))
    })
    .join()
    .unwrap()
}

#[test]
fn a_template_made_in_a_mount_namespace_with_lowered_limits_forks_into_it() {
    if !privileged("a_template_made_in_a_mount_namespace_with_lowered_limits_forks_into_it") {
        return;
    }
    let dir = tmp();
    let img = memory_image(dir.path());
    let view = dir.path().join("view");
    std::fs::create_dir(&view).unwrap();
    let opts = TemplateOptions {
        mount_ns: Some(prepared_view(&view)),
        limits: vec![(libc::RLIMIT_NOFILE, 512)],
        ..forking_any_tid()
    };
    let tpl = Template::new(img.clone(), &opts).unwrap();
    let mut a = fork(&tpl, Namespaces::all());
    assert_eq!(a.ask("ping"), "pong 1");
    let marker = |pid: i32| {
        let root = Path::new("/proc").join(pid.to_string()).join("root");
        std::fs::read_to_string(root.join(view.strip_prefix("/").unwrap()).join("marker")).ok()
    };
    assert_eq!(marker(tpl.pid()).as_deref(), Some("view"));
    assert_eq!(marker(a.pid).as_deref(), Some("view"));
    assert!(
        !view.join("marker").exists(),
        "the view's tmpfs is not ours"
    );
    let ns = |pid: i32| std::fs::read_link(format!("/proc/{pid}/ns/mnt")).unwrap();
    assert_ne!(ns(a.pid), ns(tpl.pid()));
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", a.pid)).unwrap();
    let nofile = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    assert_eq!(
        nofile.split_whitespace().collect::<Vec<_>>()[3..5],
        ["512", "512"]
    );
    check_memory(&mut a);
    // A limit below what the child's descriptors are parked at: an error that says what
    // to raise.
    let low = TemplateOptions {
        limits: vec![(libc::RLIMIT_NOFILE, 24)],
        ..forking_any_tid()
    };
    let tpl = Template::new(img, &low).unwrap();
    let e = tpl
        .fork(ForkSpec {
            fds: vec![(0, 0), (1, 1), (2, 2), (3, 2)],
            ..ForkSpec::default()
        })
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("raise TemplateOptions::limits' RLIMIT_NOFILE"),
        "{e}"
    );
}

/// The host name in `pid`'s uts namespace (read by a thread that joins it).
fn hostname_of(pid: i32) -> String {
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/uts")).unwrap();
    std::thread::spawn(move || {
        // SAFETY: a descriptor we hold; only this thread changes namespace.
        let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWUTS) };
        assert_eq!(rc, 0);
        let mut buf = [0u8; 65];
        // SAFETY: the buffer is live and as long as said.
        let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
        assert_eq!(rc, 0);
        let end = buf.iter().position(|&b| b == 0).unwrap();
        String::from_utf8_lossy(&buf[..end]).into_owned()
    })
    .join()
    .unwrap()
}

#[test]
fn a_forked_child_mounts_its_own_proc_and_tmp_names_its_host_and_leads_its_session() {
    if !privileged(
        "a_forked_child_mounts_its_own_proc_and_tmp_names_its_host_and_leads_its_session",
    ) {
        return;
    }
    let dir = tmp();
    let img = memory_image(dir.path());
    let view = dir.path().join("view");
    std::fs::create_dir(&view).unwrap();
    let opts = TemplateOptions {
        mount_ns: Some(prepared_view(&view)),
        ..forking_any_tid()
    };
    let tpl = Template::new(img, &opts).unwrap();
    let cgroups = Cgroups::new(1);
    let (in_r, in_w) = std::io::pipe().unwrap();
    let (out_r, out_w) = std::io::pipe().unwrap();
    let mount = |fstype: &str, target: &str, data: Option<&str>| template::ForkMount {
        fstype: fstype.into(),
        target: target.into(),
        flags: libc::MS_NOSUID | libc::MS_NODEV,
        data: data.map(Into::into),
    };
    let spec = ForkSpec {
        fds: vec![(0, in_r.as_raw_fd()), (1, out_w.as_raw_fd()), (2, 2)],
        namespaces: Namespaces::all(),
        cgroup_procs: cgroups.procs(0),
        mounts: vec![
            mount("proc", "/proc", None),
            mount("tmpfs", "/tmp", Some("size=1m")),
        ],
        hostname: Some("instance-7".into()),
        ..ForkSpec::default()
    };
    let f = tpl.fork(spec).unwrap();
    drop((in_r, out_w));
    // SAFETY: a signal to our own child.
    unsafe { libc::kill(f.pid, libc::SIGCONT) };
    let mut c = Conv::of(f.pid, 1, OwnedFd::from(in_w), OwnedFd::from(out_r));
    assert_eq!(c.ask("ping"), "pong 1");
    let pid = c.pid;
    // Its own proc and tmpfs, not in the template's view.
    let mounted = |p: i32, point: &str, fstype: &str| {
        let info = std::fs::read_to_string(format!("/proc/{p}/mountinfo")).unwrap();
        info.lines()
            .filter(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                let dash = f.iter().position(|&w| w == "-").unwrap();
                f[4] == point && f[dash + 1] == fstype
            })
            .map(String::from)
            .collect::<Vec<_>>()
    };
    let tmp_mounts = mounted(pid, "/tmp", "tmpfs");
    assert!(
        tmp_mounts.last().is_some_and(|l| l.contains("size=1024k")),
        "{tmp_mounts:?}"
    );
    assert!(!mounted(pid, "/proc", "proc").is_empty());
    assert!(
        !mounted(tpl.pid(), "/tmp", "tmpfs")
            .iter()
            .any(|l| l.contains("size=1024k")),
        "the child's tmpfs did not propagate to the view"
    );
    // Its /proc shows its own pid namespace: itself alone, as pid 1.
    let procs: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/root/proc"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.parse::<u32>().is_ok())
        .collect();
    assert_eq!(procs, ["1"]);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(status.contains(&format!("NSpid:\t{pid}\t1\n")), "{status}");
    assert_eq!(hostname_of(pid), "instance-7");
    assert_ne!(hostname_of(tpl.pid()), "instance-7");
    // SAFETY: plain integer.
    assert_eq!(unsafe { libc::getsid(pid) }, pid);
    // A cgroup namespace of its own, made once it was in its cgroups.
    let ns = |p: i32| std::fs::read_link(format!("/proc/{p}/ns/cgroup")).unwrap();
    assert_ne!(ns(pid), ns(tpl.pid()));
    let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(
        cg.lines()
            .any(|l| l.contains(":memory:") && l.ends_with("/i0")),
        "{cg}"
    );
    assert_eq!(c.ask("fork"), "fork 0");
    drop(c);
    drop(cgroups);
}

/// Fresh v1 cgroups for `n` instances (made ahead, off the measured path), removed on
/// drop once their processes are gone.
struct Cgroups(Vec<std::path::PathBuf>, usize);

const HIERARCHIES: [&str; 4] = ["memory", "pids", "cpu", "freezer"];

impl Cgroups {
    fn new(n: usize) -> Cgroups {
        let name = format!("ember-snap-template-{}", std::process::id());
        let roots: Vec<_> = HIERARCHIES
            .iter()
            .map(|h| Path::new("/sys/fs/cgroup").join(h).join(&name))
            .collect();
        for r in &roots {
            for i in 0..n {
                std::fs::create_dir_all(r.join(format!("i{i}"))).unwrap();
            }
        }
        Cgroups(roots, n)
    }

    fn procs(&self, i: usize) -> Vec<std::path::PathBuf> {
        self.0
            .iter()
            .map(|r| r.join(format!("i{i}/cgroup.procs")))
            .collect()
    }
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        for r in &self.0 {
            for i in 0..self.1 {
                let d = r.join(format!("i{i}"));
                // A cgroup empties once its last process has been collected.
                for _ in 0..100 {
                    if std::fs::remove_dir(&d).is_ok() || !d.exists() {
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
            }
            let _ = std::fs::remove_dir(r);
        }
    }
}

/// PSS (KiB) of a process, from smaps_rollup.
fn pss_kib(pid: i32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap();
    text.lines()
        .find(|l| l.starts_with("Pss:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}

/// A forked instance, not yet running, and how long its fork took (to stopped, clone).
fn fork_timed(t: &Template, namespaces: Namespaces) -> (Conv, u64, u64) {
    let (in_r, in_w) = std::io::pipe().unwrap();
    let (out_r, out_w) = std::io::pipe().unwrap();
    let spec = ForkSpec {
        fds: vec![(0, in_r.as_raw_fd()), (1, out_w.as_raw_fd()), (2, 2)],
        namespaces,
        ..ForkSpec::default()
    };
    let f = t.fork(spec).unwrap();
    drop((in_r, out_w));
    // SAFETY: a signal to our own child.
    unsafe { libc::kill(f.pid, libc::SIGCONT) };
    let c = Conv::of(f.pid, 1, OwnedFd::from(in_w), OwnedFd::from(out_r));
    (c, f.fork_us, f.clone_us)
}

/// Request to first answer of `make`'s instance, p50 over `runs`.
fn to_answer(runs: usize, mut make: impl FnMut() -> Conv) -> u64 {
    median(
        (0..runs)
            .map(|_| {
                let t = Instant::now();
                let mut c = make();
                assert!(c.ask("ping").starts_with("pong "));
                t.elapsed().as_micros() as u64
            })
            .collect(),
    )
}

fn measure(label: &str, img: &Arc<LoadedImage>, runs: usize, opts: &TemplateOptions) {
    let t0 = Instant::now();
    let tpl = Template::new(img.clone(), opts).unwrap();
    let make_us = t0.elapsed().as_micros();
    let (mut fork_us, mut clone_us) = (vec![], vec![]);
    for _ in 0..runs {
        let (_c, f, c) = fork_timed(&tpl, Namespaces::default());
        fork_us.push(f);
        clone_us.push(c);
    }
    // The first and a second answer once running: a forked instance pays copy-on-write
    // faults for what its first answer writes.
    let answers = |c: &mut Conv| {
        let t = Instant::now();
        assert!(c.ask("ping").starts_with("pong "));
        let first = t.elapsed().as_micros() as u64;
        let t = Instant::now();
        assert!(c.ask("ping").starts_with("pong "));
        (first, t.elapsed().as_micros() as u64)
    };
    let (mut ff, mut fs, mut ef, mut es) = (vec![], vec![], vec![], vec![]);
    for _ in 0..runs {
        let (mut c, _, _) = fork_timed(&tpl, Namespaces::default());
        let (a, b) = answers(&mut c);
        ff.push(a);
        fs.push(b);
        let mut r = common::restore(img);
        let (a, b) = answers(&mut r);
        ef.push(a);
        es.push(b);
    }
    let forked = to_answer(runs, || fork_timed(&tpl, Namespaces::default()).0);
    let eager = to_answer(runs, || common::restore(img));
    let mapped_opts = RestoreOptions {
        policy: Policy::Mapped,
        ..RestoreOptions::default()
    };
    let mut servers = vec![];
    let mapped = to_answer(runs, || {
        let (c, s) = common::restore_served(img, &mapped_opts);
        servers.push(s);
        c
    });
    let all_ns = to_answer(runs, || fork_timed(&tpl, Namespaces::all()).0);
    let cgroups = Cgroups::new(runs);
    let mut in_cgroups = vec![];
    for i in 0..runs {
        let (in_r, in_w) = std::io::pipe().unwrap();
        let (out_r, out_w) = std::io::pipe().unwrap();
        let spec = ForkSpec {
            fds: vec![(0, in_r.as_raw_fd()), (1, out_w.as_raw_fd()), (2, 2)],
            namespaces: Namespaces::all(),
            cgroup_procs: cgroups.procs(i),
            ..ForkSpec::default()
        };
        let t = Instant::now();
        let f = tpl.fork(spec).unwrap();
        drop((in_r, out_w));
        // SAFETY: a signal to our own child.
        unsafe { libc::kill(f.pid, libc::SIGCONT) };
        let mut c = Conv::of(f.pid, 1, OwnedFd::from(in_w), OwnedFd::from(out_r));
        assert_eq!(c.ask("ping"), "pong 1");
        in_cgroups.push(t.elapsed().as_micros() as u64);
        let own = cgroups.procs(i)[0].with_file_name("memory.usage_in_bytes");
        let charged: u64 = std::fs::read_to_string(own)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(
            charged < 8 << 20,
            "shared pages stay the template's: {charged} bytes charged to the instance"
        );
    }
    let in_cgroups = median(in_cgroups);
    drop(cgroups);
    let idle = |v: Vec<Conv>| {
        let mut v = v;
        for c in &mut v {
            assert!(c.ask("ping").starts_with("pong "));
        }
        v
    };
    let forks = idle(
        (0..10)
            .map(|_| fork_timed(&tpl, Namespaces::default()).0)
            .collect(),
    );
    let eagers = idle((0..10).map(|_| common::restore(img)).collect());
    let mappeds = idle(
        (0..10)
            .map(|_| {
                let (c, s) = common::restore_served(img, &mapped_opts);
                servers.push(s);
                c
            })
            .collect(),
    );
    std::thread::sleep(std::time::Duration::from_millis(200));
    let sum = |v: &[Conv]| v.iter().map(|c| pss_kib(c.pid)).sum::<u64>();
    let (f, e, m, t) = (sum(&forks), sum(&eagers), sum(&mappeds), pss_kib(tpl.pid()));
    let one = pss_kib(eagers[0].pid);
    eprintln!(
        "[{label}] image {} pages, {} VMAs; template made in {make_us} us (its restore {} us)",
        img.meta.pages.count,
        img.meta.vmas.len(),
        tpl.stats().total_us
    );
    eprintln!(
        "[{label}] fork to stopped child p50 {} us (clone {} us); request to first answer p50: fork {forked} us, fork with pid+mnt+uts+ipc+net {all_ns} us, eager restore {eager} us, mapped restore {mapped} us ({runs} runs each)",
        median(fork_us),
        median(clone_us),
    );
    eprintln!(
        "[{label}] request to first answer p50, forked with every namespace and moved into fresh memory, pids, cpu and freezer cgroups (v1): {in_cgroups} us"
    );
    eprintln!(
        "[{label}] once running, first and second answer p50: forked {} and {} us, eager {} and {} us",
        median(ff),
        median(fs),
        median(ef),
        median(es)
    );
    eprintln!(
        "[{label}] PSS of 10 idle instances: forked {f} KiB (+ template {t} KiB), eager {e} KiB, mapped {m} KiB; one eager instance alone would be ~{one} KiB"
    );
    assert!(f + t < e, "forked {f} + template {t} KiB, eager {e} KiB");
}

/// Numbers for the design (printed; run with --no-capture): time from the request to the
/// first answer of a forked instance, an eager and a mapped restore, and the PSS of ten
/// idle ones. `EMBER_TEMPLATE_NUMPY_PYTHON`: a Python with numpy, measured too.
#[test]
fn forks_against_restores_measured() {
    if !privileged("forks_against_restores_measured") {
        return;
    }
    let runs: usize = std::env::var("EMBER_TEMPLATE_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let dir = tmp();
    let img = memory_image(dir.path());
    measure("memory.py", &img, runs, &forking_any_tid());
    let thp = TemplateOptions {
        collapse: true,
        ..forking_any_tid()
    };
    measure("memory.py, huge pages", &img, runs, &thp);
    if let Some(py) = std::env::var_os("EMBER_TEMPLATE_NUMPY_PYTHON") {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/targets/target.py");
        let mut original = Conv::spawn(
            std::process::Command::new(py)
                .arg("-I")
                .arg(&script)
                .arg("numpy")
                .env("OPENBLAS_NUM_THREADS", "1")
                .env("OMP_NUM_THREADS", "1")
                .current_dir("/"),
        );
        assert_eq!(original.line(), "ready");
        let numpy = Arc::new(common::dump_stdio(original.pid, &dir.path().join("numpy")));
        drop(original);
        measure("numpy", &numpy, runs, &forking_any_tid());
        measure("numpy, huge pages", &numpy, runs, &thp);
    }
}
