//! ember-sandbox: every instance in its own namespaces, cgroup, seccomp filter and
//! filesystem view. Knows nothing of snapshots or functions.
//!
//! ```text
//! daemon ──fork──> C1 (unshares pid) ────────────────────────────fork──> C2 (unshares mnt/ipc/uts[/net])
//!                  C1 moves C2 into the cgroup (in parallel with       C2 is pid 1 of the new pid namespace:
//!                  C2's mounts), says so on a pipe, closes its fds     waits for the cgroup, new cgroup ns,
//!                  and relays C2's exit status
//!                                                                      private mounts, tmpfs root with read-only
//!                                                                      binds, /proc, /dev, /tmp; pivot_root;
//!                                                                      rlimits; no capabilities; uid/gid;
//!                                                                      no_new_privs; seccomp; then exec.
//! ```
//!
//! The double fork makes the runtime pid 1 of its namespace (a process cannot move itself into
//! a new pid namespace), and killing C1 kills C2 (death signal), which takes the whole
//! namespace down. The daemon's `spawn()` still returns exactly when C2 has exec'd, or with
//! C2's set-up error, because only C2 keeps the spawn status pipe open.

mod cgroup;
pub mod seccomp;
mod sys;

use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, AtomicU8, Ordering};
use std::time::Duration;

use cgroup::{Cgroup, Hierarchy};
pub use cgroup::{CgroupError, Events, Limits, Version};

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Seccomp(#[from] seccomp::SeccompError),
    #[error(
        "the sandbox needs root (to create namespaces and cgroups); run as root or with --no-sandbox"
    )]
    NotRoot,
    #[error("making the sandbox's first process failed while {step}: {source}")]
    Spawn {
        step: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("path {0:?} cannot be passed to the kernel (it contains NUL)")]
    BadPath(PathBuf),
    #[error("preparing the sandbox root {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Node-wide sandbox settings.
#[derive(Debug, Clone)]
pub struct NodeSandbox {
    /// Normally /sys/fs/cgroup.
    pub cgroup_root: PathBuf,
    /// Names this node's cgroups, so daemons sharing a machine stay apart.
    pub node_id: String,
    /// An empty directory the instance root is mounted on (inside the instance only).
    pub mount_point: PathBuf,
    pub uid: u32,
    pub gid: u32,
    pub pids_max: u64,
    pub tmp_bytes: u64,
    /// Host directories and where every instance sees them (and all below them), so that
    /// what a process records of its files (a snapshot's paths) does not depend on where a
    /// node keeps them: the node's code, package environments and runtime under fixed names
    /// on every node. A path under none of them is seen at its own path.
    pub remap: PathMap,
}

/// Host directories and the fixed paths instances see them at (see [`NodeSandbox::remap`]).
#[derive(Debug, Clone, Default)]
pub struct PathMap(Vec<(PathBuf, PathBuf)>);

impl PathMap {
    /// Host directory `host` seen at `inside` (both absolute). The most specific host
    /// directory wins when they nest.
    pub fn with(mut self, host: impl Into<PathBuf>, inside: impl Into<PathBuf>) -> PathMap {
        self.0.push((host.into(), inside.into()));
        self.0
            .sort_by_key(|(h, _)| std::cmp::Reverse(h.components().count()));
        self
    }

    /// Where an instance sees host path `host`.
    pub fn inside(&self, host: &Path) -> PathBuf {
        for (from, to) in &self.0 {
            if let Ok(rest) = host.strip_prefix(from) {
                return if rest.as_os_str().is_empty() {
                    to.clone()
                } else {
                    to.join(rest)
                };
            }
        }
        host.to_path_buf()
    }
}

/// What one instance needs to see and may use.
#[derive(Debug, Clone)]
pub struct InstanceSpec {
    pub id: String,
    pub memory_bytes: u64,
    /// Host directories (code, environments, bootstrap) mounted read-only, each where
    /// [`NodeSandbox::remap`] says (by default at its own path).
    pub read_only: Vec<PathBuf>,
    /// Host directories mounted read-only at a path of their own (host, inside): a Lambda
    /// function's layers at /opt.
    pub bound_at: Vec<(PathBuf, PathBuf)>,
    /// The size of its /tmp (a tmpfs: what it holds counts against `memory_bytes`); the
    /// node's [`NodeSandbox::tmp_bytes`] when none.
    pub tmp_bytes: Option<u64>,
    /// Working directory: a host path, seen where [`NodeSandbox::remap`] says.
    pub cwd: PathBuf,
    /// The host's network instead of an empty network namespace.
    pub host_network: bool,
    /// Without the host's network: a TCP listener on 127.0.0.1:port in the instance's own
    /// network namespace, for the daemon to serve (a Lambda Runtime API); see
    /// [`Sandbox::take_listener`].
    pub runtime_api_port: Option<u16>,
}

/// What a [`View`] shows (see [`Sandboxes::view`]).
#[derive(Debug, Clone, Default)]
pub struct ViewSpec {
    /// Host directories (environments, bootstrap, code) mounted read-only, each where
    /// [`NodeSandbox::remap`] says.
    pub read_only: Vec<PathBuf>,
    /// Host directories at whose place inside each instance gets an empty tmpfs of its own
    /// (where its code is bound later): made in the view, mounted by each instance. Those
    /// seen below /tmp are covered by its /tmp.
    pub private: Vec<PathBuf>,
    /// Host directories at a path of their own, as [`InstanceSpec::bound_at`].
    pub bound_at: Vec<(PathBuf, PathBuf)>,
    /// The size of each instance's /tmp; the node's when none.
    pub tmp_bytes: Option<u64>,
    pub host_network: bool,
}

/// A mount namespace holding an instance root, shared by the instances forked from a
/// template made in it (each gets a copy with its own /proc, /tmp and private mounts).
pub struct View {
    ns: Arc<std::os::fd::OwnedFd>,
    mounts: Vec<ChildMount>,
    late: Vec<PathBuf>,
}

impl View {
    /// The namespace (for `setns(CLONE_NEWNS)`).
    pub fn mount_ns(&self) -> Arc<std::os::fd::OwnedFd> {
        self.ns.clone()
    }

    /// What each instance mounts itself, in order, in its copy of the view (a `proc` mounted
    /// by the instance's first process shows the instance's own pid namespace).
    pub fn child_mounts(&self) -> &[ChildMount] {
        &self.mounts
    }

    /// Read-only directories below /tmp, bound into each instance after its /tmp is
    /// mounted (with [`Sandbox::add_read_only`]).
    pub fn late_read_only(&self) -> &[PathBuf] {
        &self.late
    }
}

/// One filesystem an instance forked in a [`View`] mounts for itself.
#[derive(Debug, Clone)]
pub struct ChildMount {
    pub fstype: &'static str,
    pub target: PathBuf,
    /// `MS_*` flags.
    pub flags: libc::c_ulong,
    pub data: Option<String>,
}

/// The resource limits every instance runs with: (resource, soft and hard value).
pub const RLIMITS: &[(libc::__rlimit_resource_t, u64)] = &[
    (libc::RLIMIT_CORE, 0),
    (libc::RLIMIT_NOFILE, 1024),
    (libc::RLIMIT_FSIZE, 1 << 30),
];

/// Every instance's host name (in its own uts namespace).
pub const HOSTNAME: &str = "ember";

/// Host paths every runtime needs, mounted read-only when they exist. Symlinks (merged /usr)
/// are recreated as symlinks.
const SYSTEM_PATHS: &[&str] = &[
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib64",
    "/lib32",
    "/libx32",
    "/etc/ld.so.cache",
    "/etc/localtime",
    "/etc/alternatives",
    "/etc/python3.11",
    "/etc/ssl",
    "/etc/ca-certificates",
];
/// Added with the host network: name resolution.
const NETWORK_PATHS: &[&str] = &[
    "/etc/resolv.conf",
    "/etc/hosts",
    "/etc/nsswitch.conf",
    "/etc/gai.conf",
];
const DEVICES: &[&str] = &["/dev/null", "/dev/zero", "/dev/random", "/dev/urandom"];

/// The node's side of the sandbox: cgroup hierarchy and the compiled seccomp filter.
pub struct Sandboxes {
    cfg: NodeSandbox,
    hierarchy: Hierarchy,
    bpf: Arc<seccompiler::BpfProgram>,
}

impl Sandboxes {
    /// Where an instance sees host path `host` ([`NodeSandbox::remap`]).
    pub fn inside(&self, host: &Path) -> PathBuf {
        self.cfg.remap.inside(host)
    }

    /// Checks the machine, creates this node's cgroup base and removes what an earlier run
    /// of this node left behind.
    pub fn open(cfg: NodeSandbox) -> Result<Sandboxes, SandboxError> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(SandboxError::NotRoot);
        }
        let hierarchy = Hierarchy::detect(&cfg.cgroup_root, &cfg.node_id)?;
        hierarchy.init()?;
        let removed = hierarchy.remove_leftovers()?;
        if removed > 0 {
            tracing::info!(removed, "removed cgroups left by an earlier run");
        }
        std::fs::create_dir_all(&cfg.mount_point).map_err(|source| SandboxError::Io {
            path: cfg.mount_point.clone(),
            source,
        })?;
        tracing::info!(cgroup = ?hierarchy.version(), "sandbox ready");
        Ok(Sandboxes {
            cfg,
            hierarchy,
            bpf: Arc::new(seccomp::program()?),
        })
    }

    /// Creates the instance's cgroup and the plan its first process carries out.
    pub fn prepare(&self, spec: &InstanceSpec) -> Result<Sandbox, SandboxError> {
        let cgroup = self.hierarchy.create(
            &spec.id,
            Limits {
                memory_bytes: spec.memory_bytes,
                pids: self.cfg.pids_max,
                cpu_weight: cpu_weight(spec.memory_bytes),
            },
        )?;
        // The network namespace is made here rather than by the first process, so that a
        // listener can be put in it before anything of the instance runs.
        let net = if spec.host_network {
            None
        } else {
            match sys::new_netns(spec.runtime_api_port) {
                Ok(n) => Some(n),
                Err(source) => {
                    let _ = cgroup.remove();
                    return Err(SandboxError::Io {
                        path: PathBuf::from("/proc/thread-self/ns/net"),
                        source,
                    });
                }
            }
        };
        match self.plan(spec, &cgroup, net.as_ref().map(|(fd, _)| fd.as_raw_fd())) {
            Ok(plan) => {
                let (netns, listener) = net.unzip();
                let listener = listener.flatten();
                Ok(Sandbox {
                    cgroup: Some(cgroup),
                    plan: Some(Arc::new(plan)),
                    uid: self.cfg.uid,
                    gid: self.cfg.gid,
                    bpf: self.bpf.clone(),
                    listener,
                    held: netns.into_iter().collect(),
                    first: None,
                    forked: false,
                    spare: Spared::default(),
                    remap: self.cfg.remap.clone(),
                })
            }
            Err(e) => {
                let _ = cgroup.remove();
                Err(e)
            }
        }
    }

    /// A filesystem view for the instances forked from one template (ember-snap's
    /// templates): a mount namespace holding the root an instance's sandbox would show with
    /// `spec.read_only`, read-only, but without /proc and /tmp, which each instance mounts
    /// for itself ([`View::child_mounts`]), and with `spec.private` left empty for each
    /// instance's own tmpfs. Made once, on a thread of its own; the namespace lives as long as
    /// the `View` or anything in it.
    pub fn view(&self, spec: &ViewSpec) -> Result<View, SandboxError> {
        let tmp_bytes = spec.tmp_bytes.unwrap_or(self.cfg.tmp_bytes);
        let (steps, late) = self.steps(
            &spec.read_only,
            &spec.bound_at,
            tmp_bytes,
            spec.host_network,
            Some(&spec.private),
        )?;
        let c = |p: &Path| {
            CString::new(p.as_os_str().as_bytes())
                .map_err(|_| SandboxError::BadPath(p.to_path_buf()))
        };
        let root = c(&self.cfg.mount_point)?;
        let old_root = c(&self.cfg.mount_point.join(".old"))?;
        let ns = std::thread::Builder::new()
            .name("ember-view".into())
            .spawn(move || build_view(&root, &steps, &old_root))
            .and_then(|t| {
                t.join()
                    .map_err(|_| std::io::Error::other("the view thread panicked"))
            })
            .and_then(|r| r)
            .map_err(|source| SandboxError::Io {
                path: self.cfg.mount_point.clone(),
                source,
            })?;
        let mut mounts = vec![
            ChildMount {
                fstype: "tmpfs",
                target: PathBuf::from("/tmp"),
                flags: libc::MS_NOSUID | libc::MS_NODEV,
                data: Some(format!("size={tmp_bytes},mode=1777")),
            },
            ChildMount {
                fstype: "proc",
                target: PathBuf::from("/proc"),
                flags: libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                data: None,
            },
        ];
        let private = spec.private.iter().map(|d| self.inside(d));
        for dir in private.filter(|d| !d.starts_with("/tmp")) {
            mounts.push(ChildMount {
                fstype: "tmpfs",
                target: dir,
                flags: libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                data: Some("size=64k,mode=0755".into()),
            });
        }
        Ok(View {
            ns: Arc::new(ns),
            mounts,
            late,
        })
    }

    /// A sandbox for a process that is not started through it but forked from a template
    /// made in a [`View`]: its cgroups only (limits as for `spec`). The caller moves the
    /// process into [`Sandbox::cgroup_procs`] before it runs, then pins it
    /// ([`Sandbox::pin_first`]) and binds [`View::late_read_only`] and the function's code
    /// with [`Sandbox::add_read_only`], which in such a sandbox writes only below the
    /// instance's own tmpfs mounts (the view's root is shared by every instance of it).
    pub fn prepare_forked(&self, id: &str, memory_bytes: u64) -> Result<Sandbox, SandboxError> {
        let cgroup = self.hierarchy.create(
            id,
            Limits {
                memory_bytes,
                pids: self.cfg.pids_max,
                cpu_weight: cpu_weight(memory_bytes),
            },
        )?;
        Ok(Sandbox {
            cgroup: Some(cgroup),
            plan: None,
            uid: self.cfg.uid,
            gid: self.cfg.gid,
            bpf: self.bpf.clone(),
            listener: None,
            held: Vec::new(),
            first: None,
            forked: true,
            spare: Spared::default(),
            remap: self.cfg.remap.clone(),
        })
    }

    fn plan(
        &self,
        spec: &InstanceSpec,
        cgroup: &Cgroup,
        netns: Option<std::os::fd::RawFd>,
    ) -> Result<Plan, SandboxError> {
        let c = |p: &Path| {
            CString::new(p.as_os_str().as_bytes())
                .map_err(|_| SandboxError::BadPath(p.to_path_buf()))
        };
        let root = &self.cfg.mount_point;
        let inside = |p: &Path| root.join(p.strip_prefix("/").unwrap_or(p));
        let mut p = Plan {
            procs_files: cgroup
                .procs_files()
                .iter()
                .map(|f| c(f))
                .collect::<Result<_, _>>()?,
            unshare_flags: libc::CLONE_NEWNS
                | libc::CLONE_NEWIPC
                | libc::CLONE_NEWUTS
                | if spec.host_network || netns.is_some() {
                    0
                } else {
                    libc::CLONE_NEWNET
                },
            netns: netns.unwrap_or(-1),
            root: c(root)?,
            steps: Vec::new(),
            old_root: c(&inside(Path::new("/.old")))?,
            cwd: c(&self.inside(&spec.cwd))?,
            uid: self.cfg.uid,
            gid: self.cfg.gid,
            bpf: self.bpf.clone(),
            stop_for_restore: false,
        };
        let tmp_bytes = spec.tmp_bytes.unwrap_or(self.cfg.tmp_bytes);
        p.steps = self
            .steps(
                &spec.read_only,
                &spec.bound_at,
                tmp_bytes,
                spec.host_network,
                None,
            )?
            .0;
        Ok(p)
    }

    /// The mount steps of an instance's root: the system paths, `read_only` and the devices,
    /// on a tmpfs at the mount point. For a [`View`] (`view: Some(private)`): no /proc and no
    /// /tmp mounted (each instance mounts its own), the directories of `read_only` below /tmp
    /// left out (returned: each instance binds them once its /tmp is there), and the `private`
    /// directories made empty (each instance mounts a tmpfs of its own there).
    fn steps(
        &self,
        read_only: &[PathBuf],
        bound_at: &[(PathBuf, PathBuf)],
        tmp_bytes: u64,
        host_network: bool,
        view: Option<&[PathBuf]>,
    ) -> Result<(Vec<Step>, Vec<PathBuf>), SandboxError> {
        let c = |p: &Path| {
            CString::new(p.as_os_str().as_bytes())
                .map_err(|_| SandboxError::BadPath(p.to_path_buf()))
        };
        let root = &self.cfg.mount_point;
        let inside = |p: &Path| root.join(p.strip_prefix("/").unwrap_or(p));
        let mut p: Vec<Step> = Vec::new();
        let mut late = Vec::new();
        let mut made = std::collections::BTreeSet::new();
        let mut mkdirs = |p: &mut Vec<Step>, dir: &Path| -> Result<(), SandboxError> {
            let mut acc = PathBuf::from("/");
            for comp in dir.strip_prefix("/").unwrap_or(dir).components() {
                acc.push(comp);
                if made.insert(acc.clone()) {
                    p.push(Step::Mkdir(c(&inside(&acc))?));
                }
            }
            Ok(())
        };
        // /opt as Lambda has it: empty, unless a function's layers are bound there (also
        // later, into an instance of a shared view, whose root cannot be written).
        for d in ["/proc", "/tmp", "/dev", "/.old", "/opt"] {
            mkdirs(&mut p, Path::new(d))?;
        }
        // /tmp first: a read-only path below it (a home under /tmp) is bound on top of it.
        if view.is_none() {
            p.push(Step::Mount {
                fstype: c"tmpfs",
                dst: c(&inside(Path::new("/tmp")))?,
                flags: libc::MS_NOSUID | libc::MS_NODEV,
                opts: Some(CString::new(format!("size={tmp_bytes},mode=1777")).unwrap_or_default()),
            });
            p.push(Step::Mount {
                fstype: c"proc",
                dst: c(&inside(Path::new("/proc")))?,
                flags: libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                opts: None,
            });
        }
        if view.is_some() {
            // The view's /tmp holds only what is bound below it (a home under /tmp), for the
            // template process (its working directory may be there); it is made read-only
            // once the binds are in, and every instance covers it with its own.
            p.push(Step::Mount {
                fstype: c"tmpfs",
                dst: c(&inside(Path::new("/tmp")))?,
                flags: libc::MS_NOSUID | libc::MS_NODEV,
                opts: Some(c"size=1m,mode=0755".to_owned()),
            });
        }
        for dir in view.unwrap_or_default() {
            let dir = self.inside(dir);
            if !dir.starts_with("/tmp") {
                mkdirs(&mut p, &dir)?;
            }
        }
        let extra: Vec<&str> = if host_network {
            NETWORK_PATHS.to_vec()
        } else {
            Vec::new()
        };
        let system = SYSTEM_PATHS.iter().chain(&extra).map(PathBuf::from);
        for path in system.chain(read_only.iter().cloned()) {
            // Where the instance sees it.
            let seen = self.inside(&path);
            // In a view also bound into each instance again, on its own /tmp.
            if view.is_some() && seen.starts_with("/tmp") && path.is_dir() {
                late.push(path.clone());
            }
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if let Some(parent) = seen.parent() {
                mkdirs(&mut p, parent)?;
            }
            if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&path).map_err(|source| SandboxError::Io {
                    path: path.clone(),
                    source,
                })?;
                p.push(Step::Symlink(c(&target)?, c(&inside(&seen))?));
                continue;
            }
            if meta.is_dir() {
                mkdirs(&mut p, &seen)?;
            } else {
                p.push(Step::Touch(c(&inside(&seen))?));
            }
            p.push(Step::Bind {
                src: c(&path)?,
                dst: c(&inside(&seen))?,
                dev: false,
            });
        }
        for (host, seen) in bound_at {
            mkdirs(&mut p, seen)?;
            p.push(Step::Bind {
                src: c(host)?,
                dst: c(&inside(seen))?,
                dev: false,
            });
        }
        for dev in DEVICES {
            let path = Path::new(dev);
            p.push(Step::Touch(c(&inside(path))?));
            p.push(Step::Bind {
                src: c(path)?,
                dst: c(&inside(path))?,
                dev: true,
            });
        }
        for (link, target) in [
            ("/dev/fd", "/proc/self/fd"),
            ("/dev/stdin", "/proc/self/fd/0"),
            ("/dev/stdout", "/proc/self/fd/1"),
            ("/dev/stderr", "/proc/self/fd/2"),
        ] {
            p.push(Step::Symlink(
                c(Path::new(target))?,
                c(&inside(Path::new(link)))?,
            ));
        }
        if view.is_some() {
            p.push(Step::ReadOnly(c(&inside(Path::new("/tmp")))?));
        }
        Ok((p, late))
    }
}

/// Lambda's rule of thumb: CPU in proportion to memory (1769 MB = 1 vCPU).
fn cpu_weight(memory_bytes: u64) -> u64 {
    (memory_bytes >> 20).div_ceil(18).clamp(1, 10_000)
}

enum Step {
    /// The filesystem mounted there made read-only.
    ReadOnly(CString),
    Mkdir(CString),
    Touch(CString),
    Symlink(CString, CString),
    Bind {
        src: CString,
        dst: CString,
        dev: bool,
    },
    Mount {
        fstype: &'static std::ffi::CStr,
        dst: CString,
        flags: libc::c_ulong,
        opts: Option<CString>,
    },
}

/// Everything the instance's first processes do, prepared in the daemon so that nothing is
/// allocated between fork and exec.
struct Plan {
    procs_files: Vec<CString>,
    unshare_flags: libc::c_int,
    /// A network namespace to join instead of a new one (-1: none).
    netns: libc::c_int,
    root: CString,
    steps: Vec<Step>,
    old_root: CString,
    cwd: CString,
    uid: u32,
    gid: u32,
    bpf: Arc<seccompiler::BpfProgram>,
    /// Stop before dropping privileges, for a restore (see [`Sandbox::attach_stopped`]).
    stop_for_restore: bool,
}

impl Sandboxes {
    /// Removes the node's base cgroups once no instance is left in them (a daemon's last
    /// act); instances still running keep them, and the next start removes what is left.
    pub fn remove_base(&self) {
        self.hierarchy.remove_base();
    }

    /// Kills every process left in this node's cgroups and removes them and the base, waiting
    /// (at most 2 s) for the kernel to reap the processes: a daemon's last act, once nothing
    /// is served any more.
    pub async fn remove_all(&self) {
        for _ in 0..100 {
            if self.hierarchy.remove_leftovers().is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.hierarchy.remove_base();
    }
}

impl Drop for Sandboxes {
    fn drop(&mut self) {
        self.remove_base();
    }
}

/// One instance's sandbox: its cgroup, and the plan attached to the command that starts it.
pub struct Sandbox {
    cgroup: Option<Cgroup>,
    plan: Option<Arc<Plan>>,
    uid: u32,
    gid: u32,
    bpf: Arc<seccompiler::BpfProgram>,
    listener: Option<std::net::TcpListener>,
    /// Namespaces the sandbox keeps until it is destroyed: its network namespace (made
    /// ahead), and the mounts of [`Sandbox::hold_mounts`].
    held: Vec<std::os::fd::OwnedFd>,
    /// A pidfd of the first process ([`Sandbox::pin_first`]): later binds enter its mount
    /// namespace through it, never through a pid that may have been reused.
    first: Option<std::os::fd::OwnedFd>,
    /// Made by [`Sandboxes::prepare_forked`]: its root is a [`View`]'s, shared.
    forked: bool,
    /// A process its kills spare ([`Sandbox::spare`]).
    spare: Spared,
    /// Where host directories are seen inside ([`NodeSandbox::remap`]).
    remap: PathMap,
}

/// A process passing through a sandbox's cgroups that its kills must spare: a template an
/// instance was born from there, until it has moved on ([`Sandbox::spare`]).
#[derive(Clone, Default)]
pub struct Spared(Arc<std::sync::atomic::AtomicI32>);

impl Spared {
    /// The process has left: kills spare nothing any more.
    pub fn release(&self) {
        self.0.store(0, std::sync::atomic::Ordering::SeqCst);
    }

    fn pid(&self) -> i32 {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// The credentials and filter a restored process must take on (see [`Sandbox::handoff`]).
#[derive(Debug, Clone)]
pub struct Handoff {
    pub uid: u32,
    pub gid: u32,
    pub filter: Arc<seccompiler::BpfProgram>,
}

impl Handoff {
    /// The filter as the kernel's own `sock_filter` array, for whoever installs it inside
    /// the restored process (a restorer injecting `seccomp(2)`).
    pub fn sock_filters(&self) -> Vec<libc::sock_filter> {
        self.filter
            .iter()
            .map(|f| libc::sock_filter {
                code: f.code,
                jt: f.jt,
                jf: f.jf,
                k: f.k,
            })
            .collect()
    }
}

/// Why the kernel stopped an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitReason {
    /// The memory limit was reached and the OOM killer ran.
    Oom,
    /// The process limit was reached (a fork bomb, runaway threads).
    Pids,
    /// A syscall outside the seccomp allowlist.
    Seccomp,
}

impl LimitReason {
    pub fn as_str(self) -> &'static str {
        match self {
            LimitReason::Oom => "oom",
            LimitReason::Pids => "pids",
            LimitReason::Seccomp => "seccomp",
        }
    }
}

/// The exit code with which a sandboxed runtime killed by the seccomp filter ends (its
/// parent relays 128 + SIGSYS).
pub const SECCOMP_EXIT_CODE: i32 = 128 + libc::SIGSYS;

impl Events {
    /// The limit these counters show was reached, if any (memory first: an OOM kill can
    /// also make forks fail).
    pub fn reason(&self) -> Option<LimitReason> {
        if self.oom_kills > 0 {
            Some(LimitReason::Oom)
        } else if self.pids_max_hits > 0 {
            Some(LimitReason::Pids)
        } else {
            None
        }
    }
}

/// True when a runtime was killed by the seccomp filter: SIGSYS itself, or the exit code the
/// sandbox's relaying parent turns it into.
pub fn killed_by_seccomp(status: &std::process::ExitStatus) -> bool {
    use std::os::unix::process::ExitStatusExt;
    status.signal() == Some(libc::SIGSYS) || status.code() == Some(SECCOMP_EXIT_CODE)
}

impl Sandbox {
    /// Makes the process `cmd` starts run in this sandbox. The caller's own `pre_exec` steps
    /// (registered before) run first, outside the namespaces.
    ///
    /// The working directory is the plan's, entered inside: the command's own is replaced by
    /// the host's root (a path inside may not exist outside).
    pub fn attach(&mut self, cmd: &mut tokio::process::Command) {
        let Some(plan) = self.plan.take() else { return };
        cmd.current_dir("/");
        // SAFETY: `enter` runs between fork and exec; it only makes the async-signal-safe
        // calls in `sys` and reads `plan`, which was fully built before the fork.
        unsafe {
            cmd.pre_exec(move || enter(&plan));
        }
    }

    /// The second way to start: like [`Sandbox::attach`], but the instance's first process
    /// stops itself (SIGSTOP) once it is inside every namespace, its cgroup and its root, with
    /// its rlimits set, and *before* it drops its capabilities, changes user and installs the
    /// seccomp filter, so that a snapshot restore can do its privileged steps. `spawn()`
    /// returns with it stopped; [`Sandbox::first_process`] names it.
    ///
    /// A restore replaces the process image and must then make the steps in [`Handoff`]
    /// itself. Continued (SIGCONT) without a restore, the process drops its privileges,
    /// installs the filter and execs the command as a cold boot would.
    pub fn attach_stopped(&mut self, cmd: &mut tokio::process::Command) {
        if let Some(plan) = self.plan.as_mut().and_then(Arc::get_mut) {
            plan.stop_for_restore = true;
        }
        self.attach(cmd);
    }

    /// The way a restore's sandbox starts (the node's parked sandboxes), without a fork of
    /// the daemon: the instance's first process is made with `clone(CLONE_VM |
    /// CLONE_VFORK | CLONE_NEWPID)`, as posix_spawn makes processes, so none of the
    /// daemon's page tables is copied (nor torn down again by the restore). It builds its
    /// root as [`Sandbox::attach`]'s does while a thread of ours joins it to its cgroups,
    /// leads its own session, and execs `program` (ember-snap's stopper: one code page) by
    /// descriptor, as pid 1 of its namespace, with `fds` (`(number, our descriptor)`, at
    /// most 8) and nothing else open. It is still root with every capability, its
    /// bounding set whole (a restore's [`Handoff`] empties it), and its rlimits set.
    ///
    /// `program` must then wait in a system call (the stopper, an init, waits in
    /// `pause()`). Returns its host pid once it is stopped there (SIGSTOP from here: an
    /// init's own signals are dropped). It is a child of the calling thread and dies with it: call from a
    /// thread that lives as long as the instance (the node keeps threads for this); it
    /// blocks for the set-up, milliseconds. Waiting for it is the caller's (a pidfd).
    pub fn spawn_parked(
        &mut self,
        program: std::os::fd::BorrowedFd<'_>,
        fds: &[(libc::c_int, libc::c_int)],
    ) -> Result<i32, SandboxError> {
        let failed = |step: &'static str| move |source| SandboxError::Spawn { step, source };
        if fds.len() > 8 {
            return Err(failed("arranging its descriptors")(std::io::Error::other(
                "more than 8 descriptors to hand it",
            )));
        }
        let Some(plan) = self.plan.take() else {
            return Err(failed("starting")(std::io::Error::other(
                "this sandbox's first process was already started",
            )));
        };
        let owned = |(r, w): (libc::c_int, libc::c_int)| {
            use std::os::fd::FromRawFd;
            // SAFETY: both ends were just made by pipe2 and are ours alone.
            unsafe {
                (
                    std::os::fd::OwnedFd::from_raw_fd(r),
                    std::os::fd::OwnedFd::from_raw_fd(w),
                )
            }
        };
        let (joined_r, joined_w) = owned(sys::pipe().map_err(failed("making its pipes"))?);
        let (pid_r, pid_w) = owned(sys::pipe().map_err(failed("making its pipes"))?);
        let stack = sys::Stack::new(CHILD_STACK).map_err(failed("making its stack"))?;
        let name = c"ember-stopper";
        let birth = Birth {
            plan: &plan,
            joined_r: joined_r.as_raw_fd(),
            joined_w: joined_w.as_raw_fd(),
            pid_w: pid_w.as_raw_fd(),
            pid_r: pid_r.as_raw_fd(),
            exe: program.as_raw_fd(),
            fds,
            argv: [name.as_ptr(), std::ptr::null()],
            envp: [std::ptr::null()],
            tid: AtomicI32::new(0),
            errno: AtomicI32::new(0),
            step: AtomicU8::new(0),
        };
        let procs = &plan.procs_files;
        let made = std::thread::scope(|s| {
            // The cgroup joins (on v1 each waits for an RCU grace period) run while the
            // process builds its root.
            let joiner = std::thread::Builder::new()
                .name("ember-cgroup-join".into())
                .spawn_scoped(s, || {
                    let mut tid = [0u8; 4];
                    if !sys::read_exact(pid_r.as_raw_fd(), &mut tid) {
                        return; // it ended before it could say
                    }
                    join_cgroups(procs, i32::from_ne_bytes(tid), joined_w.as_raw_fd());
                });
            let joiner = match joiner {
                Ok(j) => j,
                Err(e) => return Err(e),
            };
            // SAFETY: `born` only makes the async-signal-safe calls of `sys` and stores
            // into the atomics of `birth`, then execs or `_exit`s; `birth` and `stack`
            // outlive the call, which returns only once the child has exec'd or ended.
            let pid = unsafe {
                sys::clone_vm(
                    born,
                    &stack,
                    libc::CLONE_NEWPID,
                    (&raw const birth).cast_mut().cast(),
                    birth.tid.as_ptr(),
                )
            };
            // The joiner ends now even if the child never told it its pid.
            drop(pid_w);
            let _ = joiner.join();
            pid
        });
        let pid = made.map_err(failed("cloning it (or starting its cgroup joiner)"))?;
        let errno = birth.errno.load(Ordering::SeqCst);
        if errno != 0 {
            sys::reap(pid);
            let step = BUILD_STEPS
                .get(usize::from(birth.step.load(Ordering::SeqCst)))
                .copied()
                .unwrap_or("starting");
            return Err(SandboxError::Spawn {
                step,
                source: std::io::Error::from_raw_os_error(errno),
            });
        }
        match stop_in_pause(pid) {
            Ok(()) => Ok(pid),
            Err(Some(e)) => {
                sys::kill(pid);
                sys::reap(pid);
                Err(failed("stopping it")(e))
            }
            // Ended (and collected) before it could be stopped.
            Err(None) => Err(failed("stopping it")(std::io::Error::other(
                "it ended before it could be stopped",
            ))),
        }
    }

    /// The listener [`InstanceSpec::runtime_api_port`] asked for, once.
    pub fn take_listener(&mut self) -> Option<std::net::TcpListener> {
        self.listener.take()
    }

    /// Keeps the mount namespace of the instance's first process (host pid `pid`) until the
    /// sandbox is destroyed. The last process to leave a mount namespace unmounts all of it,
    /// waiting for RCU grace periods; holding it moves that wait from the instance's exit
    /// (on a request's path, for a process per request) to the sandbox's removal.
    pub fn hold_mounts(&mut self, pid: i32) {
        let path = format!("/proc/{pid}/ns/mnt");
        match std::fs::File::open(&path) {
            Ok(f) => self.held.push(f.into()),
            Err(e) => tracing::debug!("holding {path} failed: {e}"),
        }
    }

    /// The host pid of the instance's first process (pid 1 inside), once it is running.
    pub fn first_process(&self) -> Option<i32> {
        let pids = self.cgroup.as_ref()?.pids();
        pids.into_iter().find(|p| {
            std::fs::read_to_string(format!("/proc/{p}/status"))
                .map(|s| {
                    s.lines()
                        .any(|l| l.starts_with("NSpid:") && l.trim_end().ends_with("\t1"))
                })
                .unwrap_or(false)
        })
    }

    /// What a restore must do after replacing the stopped process's image, in this order:
    /// `PR_CAPBSET_DROP` of every capability, `PR_CAP_AMBIENT_CLEAR_ALL`,
    /// `PR_SET_SECUREBITS(0)` (a first process of [`Sandbox::spawn_parked`] still has them
    /// all; one of [`Sandbox::attach_stopped`] has an empty bounding set already),
    /// `setgroups(0)`, `setresgid(gid)`, `setresuid(uid)`, a `capset` emptying every set,
    /// `PR_SET_PDEATHSIG(SIGKILL)`, `PR_SET_NO_NEW_PRIVS`, `seccomp(SET_MODE_FILTER,
    /// filter)`.
    pub fn handoff(&self) -> Handoff {
        Handoff {
            uid: self.uid,
            gid: self.gid,
            filter: self.bpf.clone(),
        }
    }

    /// Remembers the instance's first process (host pid `pid`, just found with
    /// [`Sandbox::first_process`]) by a pidfd, for [`Sandbox::add_read_only`].
    pub fn pin_first(&mut self, pid: i32) -> Result<(), SandboxError> {
        let fd = sys::pidfd_open(pid).map_err(|source| SandboxError::Io {
            path: PathBuf::from(format!("/proc/{pid}")),
            source,
        })?;
        self.first = Some(fd);
        Ok(())
    }

    /// Binds host directories read-only (`nosuid`, `nodev`, private) where
    /// [`NodeSandbox::remap`] says into the mount namespace of the instance's first process (pinned with
    /// [`Sandbox::pin_first`]), as [`InstanceSpec::read_only`] would have: for a sandbox made
    /// ahead, before it is known which function's code it will see. The instance's
    /// processes see the directories at once. The daemon enters the instance's mount
    /// namespace as root; the path is walked without following links, through root-owned
    /// directories only.
    pub fn add_read_only(&self, dirs: &[PathBuf]) -> Result<(), SandboxError> {
        let pairs: Vec<(PathBuf, PathBuf)> = dirs
            .iter()
            .map(|d| (d.clone(), self.remap.inside(d)))
            .collect();
        self.add_read_only_at(&pairs)
    }

    /// [`Sandbox::add_read_only`], each host directory at the path inside given with it (as
    /// [`InstanceSpec::bound_at`] would have).
    pub fn add_read_only_at(&self, dirs: &[(PathBuf, PathBuf)]) -> Result<(), SandboxError> {
        let Some(first) = &self.first else {
            return Err(SandboxError::Io {
                path: PathBuf::from("the sandbox's first process"),
                source: std::io::Error::other("not pinned (Sandbox::pin_first)"),
            });
        };
        // Nothing to bind: no thread entering the instance's namespace for it.
        if dirs.is_empty() {
            return Ok(());
        }
        let c = |d: &Path| {
            CString::new(d.as_os_str().as_bytes())
                .map_err(|_| SandboxError::BadPath(d.to_path_buf()))
        };
        let dirs = dirs
            .iter()
            .map(|(d, seen)| Ok((c(d)?, c(seen)?)))
            .collect::<Result<Vec<_>, SandboxError>>()?;
        sys::bind_into(first, &dirs, !self.forked).map_err(|(what, source)| SandboxError::Io {
            path: PathBuf::from(format!("{what} (in the instance's mount namespace)")),
            source,
        })
    }

    /// Sets the size of the instance's /tmp, as [`InstanceSpec::tmp_bytes`] would have: for
    /// a sandbox made ahead (pinned with [`Sandbox::pin_first`]). Fails when its /tmp holds
    /// more already.
    pub fn resize_tmp(&self, bytes: u64) -> Result<(), SandboxError> {
        let Some(first) = &self.first else {
            return Err(SandboxError::Io {
                path: PathBuf::from("the sandbox's first process"),
                source: std::io::Error::other("not pinned (Sandbox::pin_first)"),
            });
        };
        sys::resize_tmp_in(first, bytes).map_err(|source| SandboxError::Io {
            path: PathBuf::from("/tmp (in the instance's mount namespace)"),
            source,
        })
    }

    /// The `cgroup.procs` files of the instance's cgroups (one per hierarchy), for a process
    /// forked into a sandbox of [`Sandboxes::prepare_forked`].
    pub fn cgroup_procs(&self) -> Vec<PathBuf> {
        self.cgroup
            .as_ref()
            .map(Cgroup::procs_files)
            .unwrap_or_default()
    }

    /// Sets the instance's memory limit, and its CPU weight in proportion, as
    /// [`InstanceSpec::memory_bytes`] would have: for a sandbox made ahead. Fails when its
    /// processes already use more than `memory_bytes`.
    pub fn resize(&self, memory_bytes: u64) -> Result<(), SandboxError> {
        let Some(cg) = &self.cgroup else {
            return Ok(());
        };
        Ok(cg.resize(memory_bytes, cpu_weight(memory_bytes))?)
    }

    /// Spares process `pid` (in the sandbox's cgroups for a while, not of the instance)
    /// from the sandbox's kills until the returned handle is released; a removal meanwhile
    /// retries until it has left (at most 2 s, as for any process).
    pub fn spare(&self, pid: i32) -> Spared {
        self.spare.0.store(pid, std::sync::atomic::Ordering::SeqCst);
        self.spare.clone()
    }

    /// Counters of the kernel's interventions so far.
    pub fn events(&self) -> Events {
        self.cgroup.as_ref().map(Cgroup::events).unwrap_or_default()
    }

    /// Kills every process of the instance and removes its cgroup, waiting (at most 2 s) for
    /// the kernel to reap them.
    pub async fn destroy(mut self) {
        let Some(cg) = self.cgroup.take() else { return };
        for _ in 0..100 {
            cg.kill_all(self.spare.pid());
            if cg.remove().is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tracing::warn!(
            "an instance cgroup could not be removed; the next start of this node removes it"
        );
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if let Some(cg) = self.cgroup.take() {
            cg.kill_all(self.spare.pid());
            let _ = cg.remove();
        }
    }
}

/// Stops `pid` (just exec'd into the stopper) where it waits in `pause()`: a restore injects
/// its calls at a system call, and a process caught anywhere else (still inside its exec,
/// or on its way to the call) is continued and caught again, for at most 2 s. `Err(None)`:
/// it ended, and was collected.
fn stop_in_pause(pid: i32) -> Result<(), Option<std::io::Error>> {
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    let late = || {
        Some(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "it did not wait in pause() within 2 s",
        ))
    };
    loop {
        // Polled, sleeping longer each time (20 us to 1 ms): spinning would take the CPU
        // from the very process it waits for when many sandboxes start at once.
        let mut nap = Duration::from_micros(20);
        while !sys::in_syscall(pid, libc::SYS_pause).map_err(Some)? {
            if std::time::Instant::now() > deadline {
                return Err(late());
            }
            std::thread::sleep(nap);
            nap = (nap * 2).min(Duration::from_millis(1));
        }
        match sys::stop_child(pid).map_err(Some)? {
            sys::Stop::Ended => return Err(None),
            sys::Stop::Stopped if sys::in_syscall(pid, libc::SYS_pause).map_err(Some)? => {
                return Ok(());
            }
            sys::Stop::Stopped => {
                if std::time::Instant::now() > deadline {
                    return Err(late());
                }
                sys::continue_child(pid).map_err(Some)?;
            }
        }
    }
}

/// The stack of a first process made by [`Sandbox::spawn_parked`] until its exec.
const CHILD_STACK: usize = 256 << 10;

/// The first descriptor number that is the sandbox's own: 0-2 are stdio and 3 the
/// runtime's protocol socket, which the caller's steps put in place.
const FIRST_PRIVATE_FD: libc::c_int = 4;

/// Runs in the forked child: see the module doc.
fn enter(p: &Plan) -> std::io::Result<()> {
    // Only the pid namespace here: C1 stays in the host's mount namespace, where the cgroup
    // files are (C2's pivot_root would otherwise move C1's root too).
    sys::unshare(libc::CLONE_NEWPID)?;
    let (joined_r, joined_w) = sys::pipe()?;
    // For a stopped start: C2 asks on `stop`, C1 stops it (an init cannot stop itself: the
    // kernel drops signals it sends itself), then closes `go`, on which C2 waits.
    let (stop_r, stop_w, go_r, go_w) = if p.stop_for_restore {
        let (a, b) = sys::pipe()?;
        let (c, d) = sys::pipe()?;
        (a, b, c, d)
    } else {
        (-1, -1, -1, -1)
    };
    let pid = sys::fork()?;
    if pid > 0 {
        // C1 moves C2 into the cgroup while C2 builds its mounts: on cgroup v1 each
        // migration waits for an RCU grace period (~6 ms here), so doing it in parallel
        // takes that off the start path as far as the mounts last.
        sys::close(joined_r);
        join_cgroups(&p.procs_files, pid, joined_w);
        if p.stop_for_restore {
            sys::close(stop_w);
            sys::close(go_r);
            if sys::recv_byte(stop_r) == Some(b'S') {
                sys::signal(pid, libc::SIGSTOP);
                // C1 still holds std's status pipe: the daemon's spawn() returns only when
                // C1 closes it below, and by then C2 is really stopped.
                sys::wait_stopped(pid);
            }
            sys::close(go_w);
        }
        // Keep nothing of the instance open, then mirror how it ends.
        sys::close_from(3);
        sys::relay_exit(pid);
    }
    // C2: pid 1 of the new namespace. It dies with C1 from here (and again after the
    // credential change, which clears the setting): a daemon killed while C2 builds its
    // mounts takes C2 along instead of leaving it to run on, holding the daemon's
    // descriptors. A C1 already gone shows as EOF on `joined` below.
    sys::die_with_parent()?;
    sys::close(joined_w);
    if p.stop_for_restore {
        sys::close(stop_r);
        sys::close(go_w);
    }
    build_instance(p, joined_r, &AtomicU8::new(0))?;
    set_limits()?;
    sys::drop_bounding_set()?;
    if p.stop_for_restore {
        // Close this copy of std's status pipe (every descriptor above the protocol's but
        // the two pipes; C1 closes the last copy once this process is stopped, which is when
        // the daemon's spawn() returns), then be stopped, still privileged, until the
        // restore is done or SIGCONT comes.
        sys::close_from_except(FIRST_PRIVATE_FD as libc::c_uint, [stop_w, go_r]);
        // The pipes were made in a copy of the daemon's descriptor table, at numbers that
        // grow with what the daemon holds (past this process's own limit, with a thousand
        // instances): the parked process holds them at the lowest numbers instead, so that
        // nothing a restore sees of it depends on the daemon.
        let (stop_w, go_r) = sys::move_pair_to(stop_w, go_r, FIRST_PRIVATE_FD)?;
        sys::send_byte(stop_w, b'S');
        let _ = sys::recv_byte(go_r);
        sys::close(stop_w);
        sys::close(go_r);
    }
    sys::become_user(p.uid, p.gid)?;
    sys::die_with_parent()?;
    // No allocation here, not even for the error: errno says what failed.
    seccompiler::apply_filter(&p.bpf).map_err(|_| std::io::Error::last_os_error())?;
    Ok(())
}

/// Moves `pid` into the cgroups of `procs_files` (one `cgroup.procs` each), then says how
/// that went with one byte on `joined_w`: 0, else the errno of the failed write (always
/// < 256), which the process waits for in [`build_instance`]. No allocation: also runs
/// between fork and exec.
fn join_cgroups(procs_files: &[CString], pid: libc::pid_t, joined_w: libc::c_int) {
    let mut buf = [0u8; 12];
    let digits = sys::pid_digits(pid, &mut buf);
    let errno = procs_files
        .iter()
        .find_map(|f| sys::write_file(f, digits).err())
        .map_or(0, |e| e.raw_os_error().unwrap_or(libc::EIO));
    sys::send_byte(joined_w, errno as u8);
}

/// Where the first process of a sandbox was when its set-up failed (for
/// [`SandboxError::Spawn`]).
const BUILD_STEPS: [&str; 5] = [
    "entering its namespaces",
    "building its root",
    "joining its cgroups",
    "arranging its descriptors and limits",
    "executing its program",
];

/// The part of an instance's first process's set-up both ways of starting share, from its
/// namespaces to its cgroups: the network namespace made ahead (or a new one), new mount,
/// uts and ipc namespaces; its root; its host name; its cgroups, which another process
/// joins it to and then says so on `joined_r` (one byte: 0, or the errno of the failure);
/// a cgroup namespace rooted there. `step` tracks the index in [`BUILD_STEPS`]. No
/// allocation: runs between fork and exec.
fn build_instance(p: &Plan, joined_r: libc::c_int, step: &AtomicU8) -> std::io::Result<()> {
    step.store(0, Ordering::Relaxed);
    if p.netns >= 0 {
        sys::setns_net(p.netns)?;
    }
    sys::unshare(p.unshare_flags)?;
    step.store(1, Ordering::Relaxed);
    let none = None;
    sys::mount(none, c"/", none, libc::MS_REC | libc::MS_PRIVATE, none)?;
    sys::mount(
        Some(c"tmpfs"),
        &p.root,
        Some(c"tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV,
        Some(c"size=1m,mode=0755"),
    )?;
    apply_steps(&p.steps)?;
    enter_root(&p.root, &p.old_root)?;
    sys::chdir(&p.cwd)?;
    sys::sethostname(HOSTNAME.as_bytes())?;
    // Nothing of the function runs before the cgroup holds this process; the cgroup
    // namespace is made then, so that it is rooted at the instance's own cgroup.
    step.store(2, Ordering::Relaxed);
    match sys::recv_byte(joined_r) {
        Some(0) => {}
        Some(errno) => return Err(std::io::Error::from_raw_os_error(i32::from(errno))),
        None => return Err(std::io::Error::from_raw_os_error(libc::EIO)),
    }
    sys::close(joined_r);
    sys::unshare(libc::CLONE_NEWCGROUP)?;
    Ok(())
}

/// The instance's rlimits (after its descriptors are in place: the limit on them is low).
fn set_limits() -> std::io::Result<()> {
    for &(res, value) in RLIMITS {
        sys::setrlimit(res, value)?;
    }
    Ok(())
}

/// What the first process made by [`Sandbox::spawn_parked`] reads and writes of the
/// daemon's memory, which it shares until its exec.
struct Birth<'a> {
    plan: &'a Plan,
    /// Its end of the cgroup joiner's answer, and the joiner's end (closed at once).
    joined_r: libc::c_int,
    joined_w: libc::c_int,
    /// Where it tells the joiner its host pid, and the joiner's end (closed at once).
    pid_w: libc::c_int,
    pid_r: libc::c_int,
    exe: libc::c_int,
    fds: &'a [(libc::c_int, libc::c_int)],
    argv: [*const libc::c_char; 2],
    envp: [*const libc::c_char; 1],
    /// Its host pid, stored by the kernel before it runs (`CLONE_PARENT_SETTID`).
    tid: AtomicI32,
    /// Its failure: the errno, and the index in [`BUILD_STEPS`].
    errno: AtomicI32,
    step: AtomicU8,
}

/// The first process of [`Sandbox::spawn_parked`], on its own stack in the daemon's memory
/// (the daemon's thread is suspended until it execs or ends).
extern "C" fn born(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `Birth` spawn_parked keeps alive until clone_vm returns, which is
    // once this process has exec'd or ended; only atomics of it are written.
    let b = unsafe { &*(arg as *const Birth<'_>) };
    let e = match born_steps(b) {
        Ok(exe) => sys::exec_fd(exe, &b.argv, &b.envp),
        Err(e) => e,
    };
    b.errno
        .store(e.raw_os_error().unwrap_or(libc::EIO), Ordering::SeqCst);
    // SAFETY: _exit ends this process without running any teardown of the shared memory.
    unsafe { libc::_exit(127) }
}

/// The steps of [`born`] before its exec; where its program is then.
fn born_steps(b: &Birth<'_>) -> std::io::Result<libc::c_int> {
    // It dies with the daemon's thread that made it, which waits for it meanwhile.
    sys::die_with_parent()?;
    sys::close(b.joined_w);
    sys::close(b.pid_r);
    sys::write_all(b.pid_w, &b.tid.load(Ordering::SeqCst).to_ne_bytes())?;
    sys::close(b.pid_w);
    // Its own session and group, as pid 1 of its namespace: killing the group kills all.
    sys::setsid()?;
    build_instance(b.plan, b.joined_r, &b.step)?;
    b.step.store(3, Ordering::Relaxed);
    let exe = sys::arrange_fds(b.exe, b.fds)?;
    set_limits()?;
    b.step.store(4, Ordering::Relaxed);
    Ok(exe)
}

/// Carries out the mount steps of a plan (no allocation: also runs between fork and exec).
fn apply_steps(steps: &[Step]) -> std::io::Result<()> {
    let none = None;
    for step in steps {
        match step {
            Step::ReadOnly(d) => {
                let flags = libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV;
                sys::mount(none, d, none, flags, none)?;
            }
            Step::Mkdir(d) => sys::mkdir(d, 0o755)?,
            Step::Touch(f) => sys::touch(f)?,
            Step::Symlink(target, link) => sys::symlink(target, link)?,
            Step::Bind { src, dst, dev } => {
                sys::mount(Some(src), dst, none, libc::MS_BIND | libc::MS_REC, none)?;
                let nodev = if *dev { 0 } else { libc::MS_NODEV };
                let flags =
                    libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | libc::MS_NOSUID | nodev;
                sys::mount(none, dst, none, flags, none)?;
            }
            Step::Mount {
                fstype,
                dst,
                flags,
                opts,
            } => {
                sys::mount(Some(fstype), dst, Some(fstype), *flags, opts.as_deref())?;
            }
        }
    }
    Ok(())
}

/// Makes the root built at `root` the calling thread's (and its namespace's), the host's
/// gone from it, read-only.
fn enter_root(root: &std::ffi::CStr, old_root: &std::ffi::CStr) -> std::io::Result<()> {
    let none = None;
    sys::pivot_root(root, old_root)?;
    sys::chdir(c"/")?;
    sys::umount_detach(c"/.old")?;
    sys::rmdir(c"/.old")?;
    sys::mount(
        none,
        c"/",
        none,
        libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV,
        none,
    )
}

/// Runs on a thread of its own (its filesystem context unshared, so the pivot moves only
/// it): a new mount namespace with the instance root of `steps`, returned as a descriptor.
fn build_view(
    root: &std::ffi::CStr,
    steps: &[Step],
    old_root: &std::ffi::CStr,
) -> std::io::Result<std::os::fd::OwnedFd> {
    let none = None;
    sys::unshare(libc::CLONE_FS | libc::CLONE_NEWNS)?;
    let ns = sys::open_own_mount_ns()?;
    sys::mount(none, c"/", none, libc::MS_REC | libc::MS_PRIVATE, none)?;
    sys::mount(
        Some(c"tmpfs"),
        root,
        Some(c"tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV,
        Some(c"size=1m,mode=0755"),
    )?;
    apply_steps(steps)?;
    enter_root(root, old_root)?;
    Ok(ns)
}
