//! `ember bench snap`: the checkpoint/restore engine against its references, in one run.
//!
//! Per workload (a Python process that imported json, numpy, or scikit-learn + pandas):
//! dump time and image size; then, interleaved round by round so all three see the same
//! machine, restore-to-first-answer (fork a stopped child, restore the image into it, send a
//! request, read the answer), the cold start of the same script to its first answer, and
//! `fork()` of the live process answering the same request (the physical reference).

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

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
const SERIES: [(&str, RGBColor); 3] = [
    ("restore", RGBColor(0x2b, 0x8c, 0xbe)),
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
    pub restore: Summary,
    pub cold_start: Summary,
    pub fork: Summary,
    /// Allocating as many fresh pages as the image stores, in this process: the kernel work
    /// an eager fill cannot avoid, measured in the same run.
    pub page_alloc: Summary,
    /// Medians of the restore phases, in ms: attach, map, fill, state, finish.
    pub restore_phases: [f64; 5],
    pub injected_syscalls: usize,
    pub round_trips: usize,
    /// How pages went in (`UffdCopy` or `VmWritev`) and with how many threads (0: automatic).
    pub fill: String,
    pub samples: Samples,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Samples {
    pub dump_ms: Vec<f64>,
    pub restore_ms: Vec<f64>,
    pub cold_start_ms: Vec<f64>,
    pub fork_ms: Vec<f64>,
    pub page_alloc_ms: Vec<f64>,
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
) -> Result<(Proc, RestoreStats), SnapBenchError> {
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

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Measures one workload with `python` (an interpreter that has its packages).
/// What one `ember bench snap` run does.
#[derive(Debug, Clone)]
pub struct SnapOptions {
    pub runs: usize,
    pub dumps: usize,
    pub restore: RestoreOptions,
}

pub fn measure(
    workload: &str,
    python: &Path,
    work_dir: &Path,
    opts: &SnapOptions,
) -> Result<WorkloadResult, SnapBenchError> {
    let (runs, dumps) = (opts.runs, opts.dumps);
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
    let mut s = Samples::default();
    let mut frozen = Vec::new();
    for _ in 0..dumps.max(1) {
        let t = Instant::now();
        let st = ember_snap::dump(
            live.pid,
            &image,
            &DumpOptions {
                inherited: vec![0, 1, 2],
            },
        )?;
        s.dump_ms.push(ms(t));
        frozen.push(st.frozen_us as f64 / 1e3);
    }
    let t = Instant::now();
    let img = LoadedImage::load(&image)?;
    let load_ms = ms(t);
    let size = |f: &str| {
        std::fs::metadata(image.join(f))
            .map(|m| m.len())
            .unwrap_or(0)
    };
    let mut phases: [Vec<f64>; 5] = Default::default();
    let mut last = RestoreStats::default();
    for round in 0..runs {
        // Rotate the order so no path always runs right after another.
        for k in 0..3 {
            match (round + k) % 3 {
                0 => {
                    let t = Instant::now();
                    let (mut p, st) = restore_one(&img, &opts.restore)?;
                    let answer = p.ask("work").map_err(io("asking a restored process"))?;
                    s.restore_ms.push(ms(t));
                    p.end();
                    if answer != expected {
                        return Err(target_err(format!(
                            "restored process answered {answer:?}, not {expected:?}"
                        )));
                    }
                    s.page_alloc_ms.push(page_alloc_ms(img.meta.pages.count));
                    for (v, x) in phases.iter_mut().zip([
                        st.attach_us,
                        st.map_us,
                        st.fill_us,
                        st.state_us,
                        st.finish_us,
                    ]) {
                        v.push(x as f64 / 1e3);
                    }
                    last = st;
                }
                1 => {
                    let t = Instant::now();
                    let mut p = spawn(python, &script, workload)?;
                    writeln!(p.w, "work").map_err(io("asking a cold process"))?;
                    let mut answer = p.line().map_err(io("cold start"))?;
                    if answer == "ready" {
                        answer = p.line().map_err(io("cold start"))?;
                    }
                    s.cold_start_ms.push(ms(t));
                    p.end();
                    if answer != expected {
                        return Err(target_err(format!("cold start answered {answer:?}")));
                    }
                }
                _ => {
                    let t = Instant::now();
                    let answer = live.ask("fork").map_err(io("fork"))?;
                    s.fork_ms.push(ms(t));
                    if answer != expected {
                        return Err(target_err(format!("forked child answered {answer:?}")));
                    }
                }
            }
        }
    }
    live.end();
    let phases = phases.map(median);
    Ok(WorkloadResult {
        workload: workload.to_string(),
        python: python.to_path_buf(),
        vmas: img.meta.vmas.len(),
        pages: img.meta.pages.count,
        image_bytes: size("meta") + size("pages"),
        dump: summarize(&s.dump_ms),
        dump_frozen: summarize(&frozen),
        load_ms,
        restore: summarize(&s.restore_ms),
        cold_start: summarize(&s.cold_start_ms),
        fork: summarize(&s.fork_ms),
        page_alloc: summarize(&s.page_alloc_ms),
        restore_phases: phases,
        injected_syscalls: last.injected,
        round_trips: last.round_trips,
        fill: format!(
            "{:?}, threads {}",
            last.fill_mode, opts.restore.fill_threads
        ),
        samples: s,
    })
}

pub fn table(results: &[WorkloadResult]) -> String {
    use std::fmt::Write as _;
    let mut t = String::new();
    let _ = writeln!(
        t,
        "{:<8} {:>5} {:>6} {:>8} {:>8} {:>7} | {:>8} {:>8} | {:>8} {:>8} | {:>7} {:>7} | {:>8} {:>8}",
        "workload",
        "VMAs",
        "pages",
        "img MiB",
        "dump ms",
        "load ms",
        "restore",
        "p99",
        "cold",
        "p99",
        "fork",
        "p99",
        "vs cold",
        "vs fork"
    );
    for r in results {
        let _ = writeln!(
            t,
            "{:<8} {:>5} {:>6} {:>8.1} {:>8.2} {:>7.2} | {:>8.2} {:>8.2} | {:>8.2} {:>8.2} | {:>7.2} {:>7.2} | {:>7.3}x {:>7.2}x",
            r.workload,
            r.vmas,
            r.pages,
            r.image_bytes as f64 / (1 << 20) as f64,
            r.dump.p50_ms,
            r.load_ms,
            r.restore.p50_ms,
            r.restore.p99_ms,
            r.cold_start.p50_ms,
            r.cold_start.p99_ms,
            r.fork.p50_ms,
            r.fork.p99_ms,
            r.restore.p50_ms / r.cold_start.p50_ms,
            r.restore.p50_ms / r.fork.p50_ms,
        );
    }
    let _ = writeln!(
        t,
        "(ms, p50 unless marked p99; restore and cold start are to the first answer; vs = restore p50 over the other's p50)"
    );
    for r in results {
        let p = r.restore_phases;
        let _ = writeln!(
            t,
            "{:<8} restore phases p50 ms: attach {:.2}, map {:.2}, fill {:.2} (allocating its {} pages alone: {:.2}), state {:.2}, finish {:.2}; {} syscalls in {} round trips; dump stopped the process {:.2} ms",
            r.workload,
            p[0],
            p[1],
            p[2],
            r.pages,
            r.page_alloc.p50_ms,
            p[3],
            p[4],
            r.injected_syscalls,
            r.round_trips,
            r.dump_frozen.p50_ms
        );
    }
    t
}

/// Bars of restore, cold start and fork per workload.
pub fn write_svg(results: &[WorkloadResult], path: &Path) -> Result<(), crate::plot::PlotError> {
    let rows: Vec<Row> = results
        .iter()
        .flat_map(|r| {
            [
                ("restore", r.restore),
                ("cold-start", r.cold_start),
                ("fork", r.fork),
            ]
            .map(|(p, s)| Row {
                workload: r.workload.clone(),
                path: p.to_string(),
                summary: s,
            })
        })
        .collect();
    crate::plot::bars_svg(
        &rows,
        &SERIES,
        "ember bench snap: to first answer, p50 (bar) and p99 (whisker), ms, log scale",
        path,
    )
}
