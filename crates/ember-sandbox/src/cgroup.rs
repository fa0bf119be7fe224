//! Per-instance cgroups on v1 (one hierarchy per controller, as on these machines) and v2
//! (one unified hierarchy, most current distributions), behind one type.
//!
//! ```text
//! v1: <root>/{memory,pids,cpu}/ember/<node>/<instance>/{memory.limit_in_bytes, pids.max, cpu.shares}
//! v2: <root>/ember/<node>/<instance>/{memory.max, memory.swap.max, pids.max, cpu.weight}
//! ```
//!
//! `<node>` keeps daemons that share a machine apart, so each removes only its own leftovers.
//! Every path starts at a root given by the caller, so the logic is tested on fixture
//! directories without root.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error(
        "no usable cgroup hierarchy under {0}: need the memory and pids controllers, \
         either as cgroup v1 mounts or enabled in cgroup v2 (or run with --no-sandbox)"
    )]
    Unsupported(PathBuf),
    #[error("cgroup {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Resource limits of one instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub memory_bytes: u64,
    pub pids: u64,
    /// Relative CPU weight, 1..=10000 (v2 scale; v1 shares are derived).
    pub cpu_weight: u64,
}

/// The hierarchy of this node's instances.
#[derive(Debug, Clone)]
pub struct Hierarchy {
    version: Version,
    /// v1: one directory per controller; v2: the single unified directory (named "").
    bases: Vec<(&'static str, PathBuf)>,
}

const V1_CONTROLLERS: [&str; 3] = ["memory", "pids", "cpu"];

impl Hierarchy {
    /// Finds the cgroup version under `root` (normally /sys/fs/cgroup) and this node's base.
    pub fn detect(root: &Path, node: &str) -> Result<Hierarchy, CgroupError> {
        let controllers = fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
        let has = |c| controllers.split_whitespace().any(|x| x == c);
        if has("memory") && has("pids") {
            return Ok(Hierarchy {
                version: Version::V2,
                bases: vec![("", root.join("ember").join(node))],
            });
        }
        if root.join("memory/memory.limit_in_bytes").exists() && root.join("pids").is_dir() {
            let bases = V1_CONTROLLERS
                .iter()
                .filter(|c| root.join(c).is_dir())
                .map(|c| (*c, root.join(c).join("ember").join(node)))
                .collect();
            return Ok(Hierarchy {
                version: Version::V1,
                bases,
            });
        }
        Err(CgroupError::Unsupported(root.to_path_buf()))
    }

    pub fn version(&self) -> Version {
        self.version
    }

    /// Creates this node's base directories (and, on v2, delegates the controllers to them).
    pub fn init(&self) -> Result<(), CgroupError> {
        for (_, b) in &self.bases {
            fs::create_dir_all(b).map_err(io_at(b))?;
        }
        if self.version == Version::V2 {
            let base = &self.bases[0].1;
            let (Some(ember), Some(root)) = (base.parent(), base.parent().and_then(Path::parent))
            else {
                return Err(CgroupError::Unsupported(base.clone()));
            };
            for dir in [root, ember, base.as_path()] {
                let f = dir.join("cgroup.subtree_control");
                fs::write(&f, "+memory +pids +cpu").map_err(io_at(&f))?;
            }
        }
        Ok(())
    }

    /// Removes cgroups a previous run of this node left (killing what is still in them).
    pub fn remove_leftovers(&self) -> Result<usize, CgroupError> {
        let mut names = std::collections::BTreeSet::new();
        for (_, b) in &self.bases {
            let Ok(rd) = fs::read_dir(b) else { continue };
            for e in rd.flatten() {
                if e.path().is_dir() {
                    names.insert(e.file_name().to_string_lossy().into_owned());
                }
            }
        }
        for n in &names {
            let cg = Cgroup {
                version: self.version,
                dirs: self.bases.iter().map(|(c, b)| (*c, b.join(n))).collect(),
                counters: None,
            };
            cg.kill_all(0);
            cg.remove()?;
        }
        Ok(names.len())
    }

    /// Removes this node's (empty) base directories.
    pub fn remove_base(&self) {
        for (_, b) in &self.bases {
            let _ = fs::remove_dir(b);
        }
    }

    /// Creates an instance's cgroup with its limits.
    pub fn create(&self, instance: &str, limits: Limits) -> Result<Cgroup, CgroupError> {
        let mut cg = Cgroup {
            version: self.version,
            dirs: self
                .bases
                .iter()
                .map(|(c, b)| (*c, b.join(instance)))
                .collect(),
            counters: None,
        };
        for (_, d) in &cg.dirs {
            fs::create_dir_all(d).map_err(io_at(d))?;
        }
        if let Err(e) = cg.set_limits(limits) {
            let _ = cg.remove();
            return Err(e);
        }
        cg.counters = cg.open_counters();
        Ok(cg)
    }
}

/// One instance's cgroup.
#[derive(Debug)]
pub struct Cgroup {
    version: Version,
    dirs: Vec<(&'static str, PathBuf)>,
    /// The event counter files, held open: the node reads them around every invocation, and
    /// a read on a held descriptor costs ~1 us (quiet machine; ~8 us at load 20) where
    /// open+read+close costs ~10 us (~70 us) on kernfs.
    counters: Option<Counters>,
}

/// `memory.oom_control` (v1) or `memory.events` (v2), and `pids.events`.
#[derive(Debug)]
struct Counters {
    memory: fs::File,
    pids: fs::File,
}

/// Why the kernel stopped an instance, as its cgroup counted it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Events {
    pub oom_kills: u64,
    pub pids_max_hits: u64,
}

impl Events {
    /// What the counters gained since `earlier` (they only grow): the events of one period,
    /// such as one invocation.
    pub fn since(self, earlier: Events) -> Events {
        Events {
            oom_kills: self.oom_kills.saturating_sub(earlier.oom_kills),
            pids_max_hits: self.pids_max_hits.saturating_sub(earlier.pids_max_hits),
        }
    }
}

fn write(dir: &Path, file: &str, value: &str) -> Result<(), CgroupError> {
    let p = dir.join(file);
    fs::write(&p, value).map_err(io_at(&p))
}

/// The number after `key` in a flat-keyed file (`oom_kill 3`), 0 when absent.
fn keyed(text: &str, key: &str) -> u64 {
    text.lines()
        .filter_map(|l| l.split_once(' '))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0)
}

impl Cgroup {
    fn dir(&self, controller: &str) -> Option<&Path> {
        match self.version {
            Version::V2 => self.dirs.first(),
            Version::V1 => self.dirs.iter().find(|(c, _)| *c == controller),
        }
        .map(|(_, d)| d.as_path())
    }

    fn set_limits(&self, l: Limits) -> Result<(), CgroupError> {
        let pids = self
            .dir("pids")
            .ok_or_else(|| CgroupError::Unsupported(PathBuf::new()))?;
        write(pids, "pids.max", &l.pids.to_string())?;
        self.resize(l.memory_bytes, l.cpu_weight)
    }

    /// Sets the memory limit and CPU weight of a cgroup that may already hold processes (a
    /// sandbox made ahead for whichever function takes it). Lowering the limit below what
    /// the processes use fails (`EBUSY` once the kernel's reclaim gives up).
    pub fn resize(&self, memory_bytes: u64, cpu_weight: u64) -> Result<(), CgroupError> {
        let mem = self
            .dir("memory")
            .ok_or_else(|| CgroupError::Unsupported(PathBuf::new()))?;
        let bytes = memory_bytes.to_string();
        match self.version {
            Version::V2 => {
                // v2 takes a limit below the usage and OOM-kills to meet it: refused here
                // instead, as v1 refuses it (EBUSY).
                let current = fs::read_to_string(mem.join("memory.current"))
                    .ok()
                    .and_then(|s| s.trim().parse::<u64>().ok())
                    .unwrap_or(0);
                if current > memory_bytes {
                    return Err(CgroupError::Io {
                        path: mem.join("memory.max"),
                        source: io::Error::from_raw_os_error(libc::EBUSY),
                    });
                }
                write(mem, "memory.max", &bytes)?;
                // No swap: over the limit is an OOM, not a slow crawl.
                let _ = write(mem, "memory.swap.max", "0");
                let weight = cpu_weight.clamp(1, 10_000).to_string();
                let _ = write(mem, "cpu.weight", &weight);
            }
            Version::V1 => {
                // memory+swap may never be below memory: raised first when the limit grows,
                // lowered after it when it shrinks (and absent without swap accounting).
                let memsw = "memory.memsw.limit_in_bytes";
                if write(mem, memsw, &bytes).is_ok() {
                    write(mem, "memory.limit_in_bytes", &bytes)?;
                } else {
                    write(mem, "memory.limit_in_bytes", &bytes)?;
                    let _ = write(mem, memsw, &bytes);
                }
                if let Some(c) = self.dir("cpu") {
                    // v2 weight 100 is v1's 1024 shares.
                    let shares = (cpu_weight * 1024 / 100).max(2);
                    write(c, "cpu.shares", &shares.to_string())?;
                }
            }
        }
        Ok(())
    }

    /// The `cgroup.procs` files a new process writes "0" into to join (one per hierarchy).
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs
            .iter()
            .map(|(_, d)| d.join("cgroup.procs"))
            .collect()
    }

    fn memory_events_file(&self) -> &'static str {
        match self.version {
            Version::V2 => "memory.events",
            Version::V1 => "memory.oom_control",
        }
    }

    fn open_counters(&self) -> Option<Counters> {
        let open = |c: &str, f: &str| fs::File::open(self.dir(c)?.join(f)).ok();
        Some(Counters {
            memory: open("memory", self.memory_events_file())?,
            pids: open("pids", "pids.events")?,
        })
    }

    /// The kernel's interventions so far (the counters only grow).
    pub fn events(&self) -> Events {
        if let Some(c) = &self.counters {
            let read = |f: &fs::File| {
                use std::os::unix::fs::FileExt;
                let mut buf = [0u8; 512];
                let n = f.read_at(&mut buf, 0).unwrap_or(0);
                String::from_utf8_lossy(&buf[..n]).into_owned()
            };
            return Events {
                oom_kills: keyed(&read(&c.memory), "oom_kill"),
                pids_max_hits: keyed(&read(&c.pids), "max"),
            };
        }
        let read = |c: &str, f: &str| {
            self.dir(c)
                .and_then(|d| fs::read_to_string(d.join(f)).ok())
                .unwrap_or_default()
        };
        Events {
            oom_kills: keyed(&read("memory", self.memory_events_file()), "oom_kill"),
            pids_max_hits: keyed(&read("pids", "pids.events"), "max"),
        }
    }

    /// Pids of every process in the cgroup.
    pub fn pids(&self) -> Vec<i32> {
        let mut v: Vec<i32> = self
            .dirs
            .iter()
            .filter_map(|(_, d)| fs::read_to_string(d.join("cgroup.procs")).ok())
            .flat_map(|t| {
                t.lines()
                    .filter_map(|l| l.trim().parse().ok())
                    .collect::<Vec<_>>()
            })
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// SIGKILLs every process in the cgroup.
    /// Kills every process in the cgroup but `spare` (0: none).
    pub fn kill_all(&self, spare: i32) {
        if spare == 0
            && self.version == Version::V2
            && let Some((_, d)) = self.dirs.first()
            && fs::write(d.join("cgroup.kill"), "1").is_ok()
        {
            return;
        }
        for pid in self.pids().into_iter().filter(|p| *p != spare) {
            crate::sys::kill(pid);
        }
    }

    /// Removes the cgroup's directories; fails while processes remain.
    pub fn remove(&self) -> Result<(), CgroupError> {
        for (_, d) in &self.dirs {
            match fs::remove_dir(d) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_at(d)(e)),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(p: &Path, text: &str) {
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    }

    const LIMITS: Limits = Limits {
        memory_bytes: 256 << 20,
        pids: 64,
        cpu_weight: 50,
    };

    #[test]
    fn v1_fixture() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        touch(
            &root.join("memory/memory.limit_in_bytes"),
            "9223372036854771712\n",
        );
        fs::create_dir_all(root.join("pids")).unwrap();
        fs::create_dir_all(root.join("cpu")).unwrap();
        fs::create_dir_all(root.join("unified")).unwrap();
        let h = Hierarchy::detect(root, "n1").unwrap();
        assert_eq!(h.version(), Version::V1);
        h.init().unwrap();
        let cg = h.create("i1", LIMITS).unwrap();
        let read = |p: &str| fs::read_to_string(root.join(p)).unwrap();
        assert_eq!(
            read("memory/ember/n1/i1/memory.limit_in_bytes"),
            "268435456"
        );
        assert_eq!(read("pids/ember/n1/i1/pids.max"), "64");
        assert_eq!(read("cpu/ember/n1/i1/cpu.shares"), "512");
        assert_eq!(cg.procs_files().len(), 3);
        touch(
            &root.join("memory/ember/n1/i1/memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        );
        touch(&root.join("pids/ember/n1/i1/pids.events"), "max 5\n");
        assert_eq!(
            cg.events(),
            Events {
                oom_kills: 2,
                pids_max_hits: 5
            }
        );
        touch(&root.join("pids/ember/n1/i1/cgroup.procs"), "");
    }

    #[test]
    fn v2_fixture_delegates_controllers() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        touch(
            &root.join("cgroup.controllers"),
            "cpuset cpu io memory hugetlb pids rdma misc\n",
        );
        let h = Hierarchy::detect(root, "n2").unwrap();
        assert_eq!(h.version(), Version::V2);
        h.init().unwrap();
        for dir in ["", "ember", "ember/n2"] {
            let f = root.join(dir).join("cgroup.subtree_control");
            assert_eq!(fs::read_to_string(f).unwrap(), "+memory +pids +cpu");
        }
        let cg = h.create("i1", LIMITS).unwrap();
        let read = |p: &str| fs::read_to_string(root.join("ember/n2/i1").join(p)).unwrap();
        assert_eq!(read("memory.max"), "268435456");
        assert_eq!(read("memory.swap.max"), "0");
        assert_eq!(read("pids.max"), "64");
        assert_eq!(read("cpu.weight"), "50");
        touch(
            &root.join("ember/n2/i1/memory.events"),
            "low 0\nhigh 0\nmax 9\noom 1\noom_kill 1\n",
        );
        assert_eq!(cg.events().oom_kills, 1);
    }

    #[test]
    fn no_controllers_is_a_clear_error() {
        let d = tempfile::tempdir().unwrap();
        touch(&d.path().join("cgroup.controllers"), "\n");
        let err = Hierarchy::detect(d.path(), "n").unwrap_err();
        assert!(err.to_string().contains("--no-sandbox"), "{err}");
    }
}
