//! `ember bench snap`: the checkpoint/restore engine against its references, in one run.
//!
//! Per workload (a Python process that imported json, numpy, or scikit-learn + pandas):
//! dump time and image size; then, interleaved round by round so all see the same machine,
//! for each restore policy: restore to first answer (spawn a target, restore the image into
//! it, send a request, read the answer) and the second answer of the same instance; the
//! cold start of the same script to its first answer; and `fork()` of the live process
//! answering the same request (the physical reference).

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use std::sync::Arc;

use ember_snap::lazy::{LazyStats, PageServer, PageSource, Policy};
use ember_snap::{DumpOptions, LoadedImage, RestoreOptions, RestoreStats, Target};
use plotters::style::RGBColor;
use serde::Serialize;

use crate::report::Row;
use crate::stats::{Summary, summarize};

pub const TARGET_PY: &str = include_str!("snap_target.py");
/// Workloads and the packages each needs (the same sets as the examples, so environments
/// are shared with `ember bench invoke`).
pub const WORKLOADS: [(&str, &[&str]); 3] = [
    ("json", &[]),
    ("numpy", &["numpy"]),
    ("sklearn", &["scikit-learn", "pandas"]),
];
const SERIES: [(&str, RGBColor); 7] = [
    ("restore-eager", RGBColor(0x2b, 0x8c, 0xbe)),
    ("restore-lazy", RGBColor(0x7b, 0xcc, 0xc4)),
    ("restore-bulk", RGBColor(0x4e, 0xb3, 0xd3)),
    ("restore-prefetch", RGBColor(0x08, 0x58, 0x9e)),
    ("restore-mapped", RGBColor(0x98, 0x5c, 0xb3)),
    ("cold-start", RGBColor(0xe3, 0x4a, 0x33)),
    ("fork", RGBColor(0x99, 0x99, 0x99)),
];

#[derive(Debug, thiserror::Error)]
pub enum SnapBenchError {
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{workload}: {what}")]
    Target { workload: String, what: String },
    #[error(transparent)]
    Dump(#[from] ember_snap::DumpError),
    #[error(transparent)]
    Image(#[from] ember_snap::ImageError),
    #[error(transparent)]
    Restore(#[from] ember_snap::RestoreError),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> SnapBenchError {
    let what = what.into();
    move |source| SnapBenchError::Io { what, source }
}

/// One workload's figures.
#[derive(Debug, Clone, Serialize)]
pub struct WorkloadResult {
    pub workload: String,
    pub python: PathBuf,
    pub vmas: usize,
    pub pages: u64,
    pub image_bytes: u64,
    pub dump: Summary,
    /// Time the process was stopped during a dump.
    pub dump_frozen: Summary,
    /// Reading the image and checking every hash (once per image, not per restore).
    pub load_ms: f64,
    /// One entry per restore policy measured.
    pub restores: Vec<PolicyResult>,
    pub cold_start: Summary,
    pub fork: Summary,
    /// Layers over the image, taken after one request, against whole dumps of the same
    /// instance (one per policy measured, eager and lazy).
    pub layers: Vec<LayerResult>,
    /// Allocating as many fresh pages as the image stores, in this process: the kernel work
    /// an eager fill cannot avoid, measured in the same run.
    pub page_alloc: Summary,
    pub dump_ms: Vec<f64>,
    pub cold_start_ms: Vec<f64>,
    pub fork_ms: Vec<f64>,
    pub page_alloc_ms: Vec<f64>,
}

/// An instance restored under `policy`, asked one request, then dumped whole and as a layer
/// over the image (with its page server at hand): sizes and dump times (medians).
#[derive(Debug, Clone, Serialize)]
pub struct LayerResult {
    pub policy: String,
    pub whole_pages: u64,
    pub whole_bytes: u64,
    pub whole_dump_ms: f64,
    /// Pages the layer stores (differ from the image's).
    pub layer_pages: u64,
    /// Pages the layer refers to in the image.
    pub parent_pages: u64,
    pub layer_bytes: u64,
    pub layer_dump_ms: f64,
}

/// Restores of one policy from one source.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyResult {
    pub policy: String,
    pub source: String,
    /// RSS and PSS summed over `instances` instances restored side by side, each having
    /// answered one request, in MiB.
    pub instances: usize,
    pub rss_mib: f64,
    pub pss_mib: f64,
    /// Restore to the first answer.
    pub first: Summary,
    /// The next request to the same instance (warm).
    pub second: Summary,
    /// Medians of the restore phases, in ms: attach, map, fill, state, finish.
    pub phases: [f64; 5],
    pub injected_syscalls: usize,
    pub round_trips: usize,
    /// How pages went in for eager (`UffdCopy` or `VmWritev`).
    pub fill: String,
    /// Page server counters over the instance's life (lazy and bulk), medians.
    pub faults: f64,
    pub pages_installed: f64,
    pub blocked_ms: f64,
    pub first_ms: Vec<f64>,
    pub second_ms: Vec<f64>,
    pub servers: Vec<LazyStats>,
}

/// A Python process of ours talked to over pipes.
struct Proc {
    pid: i32,
    w: std::fs::File,
    r: BufReader<std::fs::File>,
}

impl Proc {
    fn ask(&mut self, cmd: &str) -> std::io::Result<String> {
        writeln!(self.w, "{cmd}")?;
        self.line()
    }

    fn line(&mut self) -> std::io::Result<String> {
        let mut s = String::new();
        if self.r.read_line(&mut s)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the process ended without answering",
            ));
        }
        Ok(s.trim_end().to_string())
    }

    fn end(self) {
        // SAFETY: plain integers; the pid is a child of ours, reaped right after.
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
        let mut st = 0;
        // SAFETY: reaping our own child into a local.
        unsafe { libc::waitpid(self.pid, &mut st, 0) };
    }
}

fn spawn(python: &Path, script: &Path, workload: &str) -> Result<Proc, SnapBenchError> {
    let mut child = Command::new(python)
        .arg("-I")
        .arg(script)
        .arg(workload)
        .env("OPENBLAS_NUM_THREADS", "1")
        .env("OMP_NUM_THREADS", "1")
        .env("MKL_NUM_THREADS", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(io(format!("starting {}", python.display())))?;
    let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        return Err(io("pipes")(std::io::Error::other("no pipes")));
    };
    Ok(Proc {
        pid: child.id() as i32,
        w: std::fs::File::from(OwnedFd::from(stdin)),
        r: BufReader::new(std::fs::File::from(OwnedFd::from(stdout))),
    })
}

fn restore_one(
    img: &LoadedImage,
    opts: &RestoreOptions,
) -> Result<(Proc, RestoreStats, Option<PageServer>), SnapBenchError> {
    let (in_r, in_w) = std::io::pipe().map_err(io("pipe"))?;
    let (out_r, out_w) = std::io::pipe().map_err(io("pipe"))?;
    let fds = vec![(0, in_r.as_raw_fd()), (1, out_w.as_raw_fd()), (2, 2)];
    let r = ember_snap::restore(img, Target::Fork { fds }, opts)?;
    Ok((
        Proc {
            pid: r.pid,
            w: std::fs::File::from(OwnedFd::from(in_w)),
            r: BufReader::new(std::fs::File::from(OwnedFd::from(out_r))),
        },
        r.stats,
        r.server,
    ))
}

/// Maps `pages` fresh anonymous pages, writes one byte to each, unmaps them; ms taken.
fn page_alloc_ms(pages: u64) -> f64 {
    let t = Instant::now();
    let Ok(mut m) = ember_snap::sys::Mapping::anonymous((pages.max(1) * 4096) as usize) else {
        return f64::NAN;
    };
    for page in m.as_mut_slice().chunks_mut(4096) {
        page[0] = 1;
    }
    // Read back, so no write can be optimised away.
    let sum: u64 = m
        .as_slice()
        .iter()
        .step_by(4096)
        .map(|&b| u64::from(b))
        .sum();
    let took = ms(t);
    std::hint::black_box(sum);
    took
}

/// Restores `n` instances side by side, has each answer once, and sums their RSS and PSS
/// (MiB, from `/proc/PID/smaps_rollup`); then ends them.
fn instances_memory(
    img: &LoadedImage,
    opts: &RestoreOptions,
    n: usize,
    expected: &str,
) -> Result<(f64, f64), SnapBenchError> {
    let mut procs = Vec::new();
    let mut servers = Vec::new();
    for _ in 0..n {
        let (mut p, _, server) = restore_one(img, opts)?;
        let a = p.ask("work").map_err(io("asking a restored instance"))?;
        if a != expected {
            return Err(SnapBenchError::Target {
                workload: "instances".into(),
                what: format!("an instance answered {a:?}"),
            });
        }
        procs.push(p);
        servers.extend(server);
    }
    let (mut rss, mut pss) = (0u64, 0u64);
    for p in &procs {
        let (r, s) = crate::stats::rss_pss_kib(p.pid).unwrap_or_default();
        rss += r;
        pss += s;
    }
    for p in procs {
        p.end();
    }
    for s in servers {
        let _ = s.wait();
    }
    Ok((rss as f64 / 1024.0, pss as f64 / 1024.0))
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Where a lazy or bulk restore's pages come from in the bench.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    /// The image loaded in this process.
    Memory,
    /// The image's page file, a fresh source (cold chunk cache) per restore.
    File,
    /// A page server on loopback (`ember snap serve`'s code), a fresh connection per restore.
    Remote,
}

impl std::str::FromStr for SourceKind {
    type Err = String;
    fn from_str(s: &str) -> Result<SourceKind, String> {
        match s {
            "memory" => Ok(SourceKind::Memory),
            "file" => Ok(SourceKind::File),
            "remote" => Ok(SourceKind::Remote),
            _ => Err(format!(
                "unknown page source {s:?}: use memory, file or remote"
            )),
        }
    }
}

impl SourceKind {
    fn name(self) -> &'static str {
        match self {
            SourceKind::Memory => "memory",
            SourceKind::File => "file",
            SourceKind::Remote => "remote",
        }
    }
}

const REMOTE_TOKEN: &str = "ember-bench";

/// What one `ember bench snap` run does.
#[derive(Debug, Clone)]
pub struct SnapOptions {
    pub runs: usize,
    pub dumps: usize,
    /// Restore policies to measure, each against the same references.
    pub policies: Vec<Policy>,
    /// Page sources for lazy and bulk restores (eager reads the loaded image).
    pub sources: Vec<SourceKind>,
    /// Instances restored side by side per policy and source for the memory figures.
    pub instances: usize,
    /// Everything else about a restore (fill threads, UFFDIO_COPY); policy and source are
    /// set per series.
    pub restore: RestoreOptions,
}

/// The samples of one policy while a run goes.
#[derive(Default)]
struct Series {
    first: Vec<f64>,
    second: Vec<f64>,
    phases: [Vec<f64>; 5],
    last: RestoreStats,
    servers: Vec<LazyStats>,
}

/// Measures one workload with `python` (an interpreter that has its packages).
/// What the rounds of one workload share: its image, where its pages can come from, and the
/// answer every instance must give.
struct Run<'a> {
    workload: &'a str,
    img: Arc<LoadedImage>,
    image: PathBuf,
    /// The loopback page server's address, when a remote source is measured.
    remote: String,
    working_set: Option<Arc<Vec<u64>>>,
    restore: &'a RestoreOptions,
    expected: String,
}

impl Run<'_> {
    fn err(&self, what: String) -> SnapBenchError {
        SnapBenchError::Target {
            workload: self.workload.to_string(),
            what,
        }
    }

    /// Restore options for `policy` with a fresh source of `kind`.
    fn options(&self, policy: Policy, kind: SourceKind) -> Result<RestoreOptions, SnapBenchError> {
        let img = &self.img;
        let source: Arc<dyn PageSource> = match kind {
            SourceKind::Memory => img.clone(),
            SourceKind::File => {
                Arc::new(ember_snap::lazy::FileSource::open(&self.image, &img.meta)?)
            }
            SourceKind::Remote => Arc::new(
                ember_snap::lazy::RemoteSource::connect(&self.remote, REMOTE_TOKEN, &img.meta)
                    .map_err(|e| self.err(e.to_string()))?,
            ),
        };
        Ok(RestoreOptions {
            policy,
            source: Some(source),
            working_set: self.working_set.clone(),
            ..self.restore.clone()
        })
    }

    /// One restore: its first and second answers (ms), its stats, its page server's counters.
    fn restore_once(
        &self,
        ro: &RestoreOptions,
    ) -> Result<(f64, f64, RestoreStats, Option<LazyStats>), SnapBenchError> {
        let t = Instant::now();
        let (mut p, st, server) = restore_one(&self.img, ro)?;
        let answer = p.ask("work").map_err(io("asking a restored process"))?;
        let first = ms(t);
        let t = Instant::now();
        let again = p
            .ask("work")
            .map_err(io("asking a restored process again"))?;
        let second = ms(t);
        p.end();
        if answer != self.expected || again != self.expected {
            return Err(self.err(format!(
                "a {} restore answered {answer:?} then {again:?}, not {:?}",
                ro.policy, self.expected
            )));
        }
        let lazy = match server {
            Some(s) => Some(s.wait().map_err(|e| self.err(e.to_string()))?),
            None => None,
        };
        Ok((first, second, st, lazy))
    }

    /// A layer after one request to an instance restored under `policy`, against a whole
    /// dump of it, `dumps` times each.
    fn layer(&self, policy: Policy, dumps: usize) -> Result<LayerResult, SnapBenchError> {
        let ro = self.options(policy, SourceKind::Memory)?;
        let (mut p, _, server) = restore_one(&self.img, &ro)?;
        let answer = p.ask("work").map_err(io("asking a restored process"))?;
        if answer != self.expected {
            return Err(self.err(format!("a {policy} restore answered {answer:?}")));
        }
        let dir = self
            .image
            .with_file_name(format!("{}-{policy}", self.workload));
        let (whole, layer) = (dir.join("whole"), dir.join("layer"));
        let opts = DumpOptions {
            inherited: vec![0, 1, 2],
            ..Default::default()
        };
        let (mut whole_ms, mut layer_ms) = (Vec::new(), Vec::new());
        let (mut ws, mut ls) = (Default::default(), Default::default());
        for _ in 0..dumps.max(1) {
            let t = Instant::now();
            let lineage = ember_snap::Lineage {
                parent: None,
                server: server.as_ref(),
            };
            ws = ember_snap::dump_restored(p.pid, &whole, &opts, lineage)?;
            whole_ms.push(ms(t));
            let t = Instant::now();
            let lineage = ember_snap::Lineage {
                parent: Some(&self.img),
                server: server.as_ref(),
            };
            ls = ember_snap::dump_restored(p.pid, &layer, &opts, lineage)?;
            layer_ms.push(ms(t));
        }
        p.end();
        if let Some(s) = server {
            s.wait().map_err(|e| self.err(e.to_string()))?;
        }
        let bytes = |d: &Path| {
            ["meta", "pages"]
                .iter()
                .map(|f| std::fs::metadata(d.join(f)).map(|m| m.len()).unwrap_or(0))
                .sum()
        };
        let (ws, ls): (ember_snap::DumpStats, ember_snap::DumpStats) = (ws, ls);
        let result = LayerResult {
            policy: policy.to_string(),
            whole_pages: ws.pages,
            whole_bytes: bytes(&whole),
            whole_dump_ms: median(whole_ms),
            layer_pages: ls.pages,
            parent_pages: ls.parent_pages,
            layer_bytes: bytes(&layer),
            layer_dump_ms: median(layer_ms),
        };
        let _ = std::fs::remove_dir_all(&dir);
        Ok(result)
    }

    /// Prefetch replays what the first request after a lazy restore touched: record it once
    /// (and store it with the image).
    fn record_working_set(&mut self) -> Result<(), SnapBenchError> {
        let ro = self.options(Policy::Lazy, SourceKind::Memory)?;
        let (mut p, _, server) = restore_one(&self.img, &ro)?;
        p.ask("work").map_err(io("recording the working set"))?;
        let ws = server.as_ref().map(|s| s.working_set()).unwrap_or_default();
        p.end();
        if let Some(s) = server {
            s.wait().map_err(|e| self.err(e.to_string()))?;
        }
        ember_snap::image::write_working_set(&self.image, &self.img.meta, &ws)?;
        self.working_set = Some(Arc::new(ws));
        Ok(())
    }
}

/// A page server on loopback serving `img`; its address.
fn loopback_page_server(img: &Arc<LoadedImage>) -> Result<String, SnapBenchError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(io("page server"))?;
    let addr = listener
        .local_addr()
        .map_err(io("page server"))?
        .to_string();
    let served = vec![img.clone()];
    std::thread::spawn(move || {
        ember_snap::lazy::remote::serve(listener, REMOTE_TOKEN.into(), served)
    });
    Ok(addr)
}

impl Series {
    fn push(&mut self, (first, second, st, lazy): (f64, f64, RestoreStats, Option<LazyStats>)) {
        self.first.push(first);
        self.second.push(second);
        let parts = [
            st.attach_us,
            st.map_us,
            st.fill_us,
            st.state_us,
            st.finish_us,
        ];
        for (v, x) in self.phases.iter_mut().zip(parts) {
            v.push(x as f64 / 1e3);
        }
        self.last = st;
        self.servers.extend(lazy);
    }

    fn result(
        self,
        policy: Policy,
        kind: SourceKind,
        instances: usize,
        (rss_mib, pss_mib): (f64, f64),
    ) -> PolicyResult {
        let m =
            |f: fn(&LazyStats) -> u64| median(self.servers.iter().map(|s| f(s) as f64).collect());
        PolicyResult {
            policy: policy.to_string(),
            source: kind.name().to_string(),
            instances,
            rss_mib,
            pss_mib,
            first: summarize(&self.first),
            second: summarize(&self.second),
            phases: self.phases.clone().map(median),
            injected_syscalls: self.last.injected,
            round_trips: self.last.round_trips,
            fill: format!("{:?}", self.last.fill_mode),
            faults: m(|s| s.faults),
            pages_installed: m(|s| s.pages_installed),
            blocked_ms: m(|s| s.blocked_us) / 1e3,
            first_ms: self.first,
            second_ms: self.second,
            servers: self.servers,
        }
    }
}

pub fn measure(
    workload: &str,
    python: &Path,
    work_dir: &Path,
    opts: &SnapOptions,
) -> Result<WorkloadResult, SnapBenchError> {
    let target_err = |what: String| SnapBenchError::Target {
        workload: workload.to_string(),
        what,
    };
    let script = work_dir.join("snap_target.py");
    std::fs::write(&script, TARGET_PY).map_err(io("writing the target script"))?;
    let mut live = spawn(python, &script, workload)?;
    let ready = live.line().map_err(io("waiting for the target"))?;
    if ready != "ready" {
        return Err(target_err(format!("said {ready:?} instead of ready")));
    }
    let expected = live.ask("work").map_err(io("asking the target"))?;
    let image = work_dir.join(format!("{workload}.img"));
    let (mut dump_ms, mut frozen) = (Vec::new(), Vec::new());
    for _ in 0..opts.dumps.max(1) {
        let t = Instant::now();
        let inherited = vec![0, 1, 2];
        let st = ember_snap::dump(
            live.pid,
            &image,
            &DumpOptions {
                inherited,
                ..Default::default()
            },
        )?;
        dump_ms.push(ms(t));
        frozen.push(st.frozen_us as f64 / 1e3);
    }
    let t = Instant::now();
    let img = Arc::new(LoadedImage::load(&image)?);
    let load_ms = ms(t);
    let size = |f: &str| {
        std::fs::metadata(image.join(f))
            .map(|m| m.len())
            .unwrap_or(0)
    };
    let combos: Vec<(Policy, SourceKind)> = opts
        .policies
        .iter()
        .flat_map(|&p| match p {
            Policy::Eager | Policy::Mapped => vec![(p, SourceKind::Memory)],
            _ => opts.sources.iter().map(|&s| (p, s)).collect(),
        })
        .collect();
    let remote = if combos.iter().any(|c| c.1 == SourceKind::Remote) {
        loopback_page_server(&img)?
    } else {
        String::new()
    };
    let mut run = Run {
        workload,
        img: img.clone(),
        image: image.clone(),
        remote,
        working_set: None,
        restore: &opts.restore,
        expected: expected.clone(),
    };
    if opts.policies.contains(&Policy::Prefetch) {
        run.record_working_set()?;
    }
    let mut series: Vec<Series> = combos.iter().map(|_| Series::default()).collect();
    let (mut cold, mut forks, mut alloc) = (Vec::new(), Vec::new(), Vec::new());
    let kinds = combos.len() + 2;
    for round in 0..opts.runs {
        // Rotate the order so no path always runs right after another.
        for k in 0..kinds {
            let which = (round + k) % kinds;
            if let Some(&(policy, kind)) = combos.get(which) {
                let ro = run.options(policy, kind)?;
                series[which].push(run.restore_once(&ro)?);
                if which == 0 {
                    alloc.push(page_alloc_ms(img.meta.pages.count));
                }
            } else if which == combos.len() {
                let t = Instant::now();
                let mut p = spawn(python, &script, workload)?;
                writeln!(p.w, "work").map_err(io("asking a cold process"))?;
                let mut answer = p.line().map_err(io("cold start"))?;
                if answer == "ready" {
                    answer = p.line().map_err(io("cold start"))?;
                }
                cold.push(ms(t));
                p.end();
                if answer != expected {
                    return Err(target_err(format!("cold start answered {answer:?}")));
                }
            } else {
                let t = Instant::now();
                let answer = live.ask("fork").map_err(io("fork"))?;
                forks.push(ms(t));
                if answer != expected {
                    return Err(target_err(format!("forked child answered {answer:?}")));
                }
            }
        }
    }
    live.end();
    let layers = [Policy::Eager, Policy::Lazy]
        .into_iter()
        .map(|p| run.layer(p, opts.dumps))
        .collect::<Result<Vec<_>, _>>()?;
    let mut restores = Vec::new();
    for (&(policy, kind), se) in combos.iter().zip(series) {
        let ro = run.options(policy, kind)?;
        let mem = instances_memory(&img, &ro, opts.instances, &expected)?;
        restores.push(se.result(policy, kind, opts.instances, mem));
    }
    Ok(WorkloadResult {
        workload: workload.to_string(),
        python: python.to_path_buf(),
        vmas: img.meta.vmas.len(),
        pages: img.meta.pages.count,
        image_bytes: size("meta") + size("pages"),
        dump: summarize(&dump_ms),
        dump_frozen: summarize(&frozen),
        load_ms,
        restores,
        cold_start: summarize(&cold),
        fork: summarize(&forks),
        layers,
        page_alloc: summarize(&alloc),
        dump_ms,
        cold_start_ms: cold,
        fork_ms: forks,
        page_alloc_ms: alloc,
    })
}

/// A figure, or `-` where there is none (no page server for eager restores).
fn dash(v: f64, decimals: usize) -> String {
    if v.is_finite() {
        format!("{v:.decimals$}")
    } else {
        "-".into()
    }
}

pub fn table(results: &[WorkloadResult]) -> String {
    use std::fmt::Write as _;
    let mut t = String::new();
    for r in results {
        let _ = writeln!(
            t,
            "{}: {} VMAs, {} pages, image {:.1} MiB; dump {:.2} ms (process stopped {:.2}); load {:.2} ms; cold start {:.2} (p99 {:.2}); fork {:.2} (p99 {:.2}); allocating its pages alone {:.2}",
            r.workload,
            r.vmas,
            r.pages,
            r.image_bytes as f64 / (1 << 20) as f64,
            r.dump.p50_ms,
            r.dump_frozen.p50_ms,
            r.load_ms,
            r.cold_start.p50_ms,
            r.cold_start.p99_ms,
            r.fork.p50_ms,
            r.fork.p99_ms,
            r.page_alloc.p50_ms,
        );
        let _ = writeln!(
            t,
            "  {:<7} {:<6} {:>8} {:>8} {:>8} {:>8} {:>8} {:>7} {:>8} {:>9} {:>9} {:>9}  phases (attach/map/fill/state/finish)",
            "policy",
            "source",
            "first",
            "p99",
            "second",
            "vs cold",
            "vs fork",
            "faults",
            "pages",
            "blocked",
            "RSS MiB",
            "PSS MiB"
        );
        for l in &r.layers {
            let _ = writeln!(
                t,
                "  layer after one request ({}): {} pages stored + {} the image's, {:.2} MiB, dump {:.2} ms; whole: {} pages, {:.2} MiB, dump {:.2} ms",
                l.policy,
                l.layer_pages,
                l.parent_pages,
                l.layer_bytes as f64 / (1 << 20) as f64,
                l.layer_dump_ms,
                l.whole_pages,
                l.whole_bytes as f64 / (1 << 20) as f64,
                l.whole_dump_ms,
            );
        }
        for p in &r.restores {
            let ph = p.phases;
            let _ = writeln!(
                t,
                "  {:<7} {:<6} {:>8.2} {:>8.2} {:>8.3} {:>7.3}x {:>7.2}x {:>7} {:>8} {:>9} {:>9.1} {:>9.1}  {:.2}/{:.2}/{:.2}/{:.2}/{:.2}",
                p.policy,
                p.source,
                p.first.p50_ms,
                p.first.p99_ms,
                p.second.p50_ms,
                p.first.p50_ms / r.cold_start.p50_ms,
                p.first.p50_ms / r.fork.p50_ms,
                dash(p.faults, 0),
                dash(p.pages_installed, 0),
                dash(p.blocked_ms, 2),
                p.rss_mib,
                p.pss_mib,
                ph[0],
                ph[1],
                ph[2],
                ph[3],
                ph[4],
            );
        }
    }
    let _ = writeln!(
        t,
        "(ms, p50 unless marked p99; first = restore to the first answer, second = the next request; vs = first p50 over the other's p50; faults, pages installed by the page server and the time the process waited on it: medians per restore; RSS and PSS: summed over the instances restored side by side)"
    );
    t
}

/// Bars of each restore policy, cold start and fork per workload.
pub fn write_svg(results: &[WorkloadResult], path: &Path) -> Result<(), crate::plot::PlotError> {
    let mut rows = Vec::new();
    for r in results {
        let row = |p: String, s: Summary| Row {
            workload: r.workload.clone(),
            path: p,
            summary: s,
        };
        for p in r.restores.iter().filter(|p| p.source == "memory") {
            rows.push(row(format!("restore-{}", p.policy), p.first));
        }
        rows.push(row("cold-start".into(), r.cold_start));
        rows.push(row("fork".into(), r.fork));
    }
    crate::plot::bars_svg(
        &rows,
        &SERIES,
        "ember bench snap: to first answer, p50 (bar) and p99 (whisker), ms, log scale",
        path,
    )
}
