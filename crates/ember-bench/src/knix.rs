//! `ember bench knix`: Knix's swap tier (issue 18). N instances of one function kept ready
//! (`min_instances`) three ways: in memory; hibernated by Ember (dumped to local disk as
//! layers, their memory freed); and in memory, then pushed out to the kernel's own swap (a
//! swap file this bench enables, when the machine allows one). Per N: what they hold (the
//! instances' proportional set size, their swapped-out bytes, the hibernated bytes on
//! disk) and the latency of a burst of N requests at once.
//!
//! Swap: each instance's memory cgroup limit is lowered for a moment (v1
//! `memory.limit_in_bytes`, the cgroup read from `/proc/PID/cgroup`), so that the kernel
//! reclaims its anonymous pages to swap, then set back; the burst then faults them in. The
//! swap file is made with `fallocate` and `mkswap`, turned on with `swapon` and always
//! turned off and removed again ([`SwapFile`]'s drop). Hand-written here: no library drives
//! a swap file or a cgroup v1 reclaim.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Serialize;

use crate::stats::Summary;

/// Where the N instances are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    Memory,
    Hibernated,
    Swap,
}

impl Mode {
    pub fn parse(s: &str) -> Result<Mode, String> {
        match s {
            "memory" => Ok(Mode::Memory),
            "hibernated" => Ok(Mode::Hibernated),
            "swap" => Ok(Mode::Swap),
            _ => Err(format!(
                "{s:?} is not a mode: write memory, hibernated or swap"
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Memory => "memory",
            Mode::Hibernated => "hibernated",
            Mode::Swap => "swap",
        }
    }
}

/// One mode and pool size.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub mode: Mode,
    pub n: usize,
    /// Seconds until the N instances were ready (warm, or hibernated).
    pub ready_s: f64,
    /// The instances' proportional set size in memory, summed.
    pub pss_bytes: u64,
    /// Their resident set (shared pages counted in each), summed.
    pub rss_bytes: u64,
    /// Their pages out in swap, summed.
    pub swap_bytes: u64,
    /// Hibernated instances' dumps on disk.
    pub disk_bytes: u64,
    /// The daemon's own resident set (its image and snapshot copies among it).
    pub daemon_rss_bytes: u64,
    /// The burst of N requests, each timed by the client.
    pub burst: Summary,
    /// How the burst's requests started, by `Ember-Start`.
    pub starts: BTreeMap<String, usize>,
    pub errors: usize,
}

const MIB: f64 = 1048576.0;

/// The table `ember bench knix` prints.
pub fn table(samples: &[Sample]) -> String {
    let mut out = format!(
        "{:<11} {:>4} {:>9} {:>9} {:>9} {:>9} {:>10} {:>9} {:>9} {:>9}  starts\n",
        "mode",
        "N",
        "ready s",
        "PSS MiB",
        "swap MiB",
        "disk MiB",
        "daemon MiB",
        "p50 ms",
        "p99 ms",
        "max ms"
    );
    for s in samples {
        let starts: Vec<String> = s.starts.iter().map(|(k, v)| format!("{k} {v}")).collect();
        out.push_str(&format!(
            "{:<11} {:>4} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>10.1} {:>9.1} {:>9.1} {:>9.1}  {}{}\n",
            s.mode.as_str(),
            s.n,
            s.ready_s,
            s.pss_bytes as f64 / MIB,
            s.swap_bytes as f64 / MIB,
            s.disk_bytes as f64 / MIB,
            s.daemon_rss_bytes as f64 / MIB,
            s.burst.p50_ms,
            s.burst.p99_ms,
            s.burst.max_ms,
            starts.join(", "),
            if s.errors > 0 {
                format!(" ({} failed)", s.errors)
            } else {
                String::new()
            }
        ));
    }
    out
}

/// Two SVGs beside `path`: the burst's latency per N and mode (p50 bars, p99 whiskers) at
/// `path`, and the memory the instances hold per N and mode at `<path>-memory.svg`.
pub fn write_svgs(samples: &[Sample], path: &Path) -> Result<PathBuf, crate::plot::PlotError> {
    use plotters::style::RGBColor;
    const SERIES: [(&str, RGBColor); 3] = [
        ("memory", RGBColor(0xe3, 0x4a, 0x33)),
        ("hibernated", RGBColor(0x2b, 0x8c, 0xbe)),
        ("swap", RGBColor(0x31, 0xa3, 0x54)),
    ];
    let row = |s: &Sample, summary: Summary| crate::report::Row {
        workload: format!("N={}", s.n),
        path: s.mode.as_str().to_string(),
        summary,
    };
    let latency: Vec<_> = samples.iter().map(|s| row(s, s.burst)).collect();
    crate::plot::bars_svg(
        &latency,
        &SERIES,
        "Burst of N requests on N instances kept ready (ms: p50, p99 whisker)",
        path,
    )?;
    // The bar: what stays in memory (near zero when hibernated, drawn at 0.1 MiB); the
    // whisker: with what is in swap or on disk.
    let memory: Vec<_> = samples
        .iter()
        .map(|s| {
            let mem = (s.pss_bytes as f64 / MIB).max(0.1);
            let all = mem + (s.swap_bytes + s.disk_bytes) as f64 / MIB;
            let mut one = crate::stats::summarize(&[mem]);
            one.p99_ms = all;
            row(s, one)
        })
        .collect();
    let mem_path = path.with_file_name(format!(
        "{}-memory.svg",
        path.file_stem().and_then(|s| s.to_str()).unwrap_or("knix")
    ));
    crate::plot::bars_svg_of(
        &memory,
        &SERIES,
        "N instances kept ready: in memory (PSS, bars), with swap or disk (whiskers)",
        "MiB",
        &mem_path,
    )?;
    Ok(mem_path)
}

/// Why this machine cannot run the swap mode, if it cannot: not root, or swap already on
/// (the bench measures its own swap file alone).
pub fn swap_unavailable() -> Option<String> {
    let euid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().nth(1).map(String::from))
        });
    if euid.as_deref() != Some("0") {
        return Some("turning on a swap file needs root".into());
    }
    match std::fs::read_to_string("/proc/swaps") {
        Ok(t) if t.lines().count() > 1 => {
            Some("swap is already on here; the bench measures a swap file of its own".into())
        }
        Ok(_) => None,
        Err(e) => Some(format!("/proc/swaps cannot be read: {e}")),
    }
}

/// A swap file turned on; turned off and removed when dropped.
pub struct SwapFile {
    path: PathBuf,
}

impl SwapFile {
    /// Makes a swap file of `bytes` at `path` and turns it on.
    pub fn enable(path: &Path, bytes: u64) -> Result<SwapFile, String> {
        let mib = (bytes >> 20).max(64);
        run(Command::new("fallocate")
            .arg("-l")
            .arg(format!("{mib}M"))
            .arg(path))?;
        let swap = SwapFile {
            path: path.to_path_buf(),
        };
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        run(Command::new("mkswap").arg(path))?;
        run(Command::new("swapon").arg(path))?;
        Ok(swap)
    }
}

impl Drop for SwapFile {
    fn drop(&mut self) {
        // Brings every swapped page back first: slow with much swapped, never skipped.
        if let Err(e) = run(Command::new("swapoff").arg(&self.path)) {
            eprintln!("swapoff {} failed: {e}", self.path.display());
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd
        .output()
        .map_err(|e| format!("{:?} could not run: {e}", cmd.get_program()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{:?} failed: {}",
            cmd.get_program(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The v1 memory cgroup directory of process `pid`.
fn memory_cgroup(pid: u32) -> Result<PathBuf, String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .map_err(|e| format!("process {pid}: {e}"))?;
    let rel = text
        .lines()
        .find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, ctrl, path) = (f.next()?, f.next()?, f.next()?);
            ctrl.split(',').any(|c| c == "memory").then_some(path)
        })
        .ok_or_else(|| format!("process {pid} has no v1 memory cgroup"))?;
    let dir = Path::new("/sys/fs/cgroup/memory").join(rel.trim_start_matches('/'));
    if rel.contains("..") || !dir.join("memory.limit_in_bytes").exists() {
        return Err(format!("{} is not a memory cgroup", dir.display()));
    }
    Ok(dir)
}

/// Pushes process `pid`'s memory out to swap: its cgroup's limit lowered to 1 MiB (the
/// kernel reclaims what it can; a limit it cannot meet is refused, after reclaiming), then
/// set back.
pub fn page_out(pid: u32) -> Result<(), String> {
    let dir = memory_cgroup(pid)?;
    let limit = dir.join("memory.limit_in_bytes");
    let old = std::fs::read_to_string(&limit).map_err(|e| format!("{}: {e}", limit.display()))?;
    // Refused (EBUSY) when the kernel could not reclaim enough: what it did stays reclaimed.
    let _ = std::fs::write(&limit, "1M");
    std::fs::write(&limit, old.trim()).map_err(|e| format!("{}: {e}", limit.display()))
}

/// Process `pid`'s bytes in swap (`VmSwap`).
pub fn swapped_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("VmSwap:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib << 10)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_and_the_table_shows_each_sample() {
        assert_eq!(Mode::parse("hibernated").unwrap(), Mode::Hibernated);
        assert!(Mode::parse("disk").is_err());
        let s = Sample {
            mode: Mode::Hibernated,
            n: 10,
            ready_s: 2.0,
            pss_bytes: 0,
            rss_bytes: 0,
            swap_bytes: 0,
            disk_bytes: 30 << 20,
            daemon_rss_bytes: 200 << 20,
            burst: crate::stats::summarize(&[40.0, 80.0]),
            starts: BTreeMap::from([("hibernated".to_string(), 10)]),
            errors: 0,
        };
        let t = table(&[s]);
        assert!(
            t.contains("hibernated") && t.contains("30.0") && t.contains("80.0"),
            "{t}"
        );
        assert!(t.contains("hibernated 10"), "{t}");
    }

    #[test]
    fn a_process_without_a_memory_cgroup_is_refused() {
        assert!(memory_cgroup(u32::MAX).is_err());
    }
}
