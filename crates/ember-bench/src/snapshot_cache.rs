//! `ember bench snapshot-cache`: the function-snapshot cache under a skewed invocation mix
//! with a disk budget that holds about a third of the snapshots, LRU against GDSF.
//!
//! ```text
//! functions: N Python handlers without packages (their snapshots are whole, no image), the
//!            i-th allocating its own MiB of random bytes and sleeping to its own init cost
//! sizes:     one daemon with an ample budget: each function invoked once, its snapshot
//!            waited for; their bytes summed
//! policies:  a fresh daemon per policy (lru, gdsf), budget = sum x --budget-percent, both
//!            up at once; one seeded Zipf(s) sequence of requests, each request sent to both
//!            in turn (interleaved), each a non-warm start (instances stopped first); the
//!            first --warmup requests fill the caches and are not counted
//! ```
//!
//! A request is a hit when `Ember-Start` says `function-snapshot`; the daemon's
//! `ember_snapshot_{hits,misses,stale,evictions}_total` over the measured requests are
//! reported beside it.

use std::fmt::Write as _;
use std::io::{Cursor, Write as _};
use std::time::{Duration, Instant};

use ember_api::client::Client;
use ember_api::package::Manifest;
use serde::Serialize;
use zip::write::SimpleFileOptions;

use crate::driver::{BenchError, Sample, one};
use crate::stats::{Summary, summarize};
use crate::workloads::Workload;

/// SplitMix64: a small seeded generator, so a run's functions and mix are reproducible.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Log-uniform in [lo, hi] (lo > 0): as many small values as large ones per decade.
    pub fn log_uniform(&mut self, lo: f64, hi: f64) -> f64 {
        (lo.ln() + self.unit() * (hi.ln() - lo.ln())).exp()
    }
}

/// `requests` function indices in 0..n drawn from Zipf(s): the function of popularity rank k
/// (1-based) has probability proportional to 1/k^s. Which function has which rank is a
/// seeded shuffle, so that popularity is independent of size and init cost.
pub fn zipf_sequence(n: usize, requests: usize, s: f64, seed: u64) -> Vec<usize> {
    if n == 0 {
        return Vec::new();
    }
    let mut rng = Rng::new(seed);
    let mut rank_to_fn: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        rank_to_fn.swap(i, j);
    }
    let weights: Vec<f64> = (1..=n).map(|k| 1.0 / (k as f64).powf(s)).collect();
    let total: f64 = weights.iter().sum();
    let mut cdf = Vec::with_capacity(n);
    let mut acc = 0.0;
    for w in &weights {
        acc += w / total;
        cdf.push(acc);
    }
    (0..requests)
        .map(|_| {
            let u = rng.unit();
            let rank = cdf.partition_point(|c| *c <= u).min(n - 1);
            rank_to_fn[rank]
        })
        .collect()
}

/// One function of the experiment.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CacheFunction {
    pub name: String,
    /// MiB of random bytes its init allocates (in its snapshot).
    pub data_mb: u32,
    /// Milliseconds its init takes (the allocation, then a sleep up to this).
    pub init_ms: u32,
}

/// `n` functions with seeded, log-uniform sizes (1..=`max_mb` MiB) and init costs
/// (10..=`max_init_ms` ms), drawn independently.
pub fn functions(
    n: usize,
    max_mb: u32,
    max_init_ms: u32,
    seed: u64,
    prefix: &str,
) -> Vec<CacheFunction> {
    let mut rng = Rng::new(seed ^ 0x5EED_F00D);
    (0..n)
        .map(|i| CacheFunction {
            name: format!("{prefix}cache-{i:02}"),
            data_mb: rng.log_uniform(1.0, f64::from(max_mb.max(1))).round() as u32,
            init_ms: rng
                .log_uniform(10.0, f64::from(max_init_ms.max(10)))
                .round() as u32,
        })
        .collect()
}

/// The handler of `f`: its init allocates its bytes and spends its init time.
pub fn handler_code(f: &CacheFunction, seed: u64) -> String {
    format!(
        r#"import random, time

_t0 = time.monotonic()
DATA = random.Random({seed}).randbytes({bytes})
_left = {init_ms} / 1000 - (time.monotonic() - _t0)
if _left > 0:
    time.sleep(_left)


def handler(event, context):
    return {{"function": "{name}", "bytes": len(DATA), "first": DATA[0]}}
"#,
        bytes = u64::from(f.data_mb) << 20,
        init_ms = f.init_ms,
        name = f.name,
    )
}

fn fail(w: &str, detail: String) -> BenchError {
    BenchError::setup(w, detail)
}

/// `f` as a workload the driver deploys: no packages, snapshot after init.
pub fn workload(f: &CacheFunction, seed: u64) -> Result<Workload, BenchError> {
    let text = format!(
        "name = \"{}\"\nhandler = \"main.handler\"\npackages = []\nmemory_mb = 512\n\n[bench]\nevent = {{}}\n",
        f.name
    );
    let manifest = Manifest::parse(&text, std::path::Path::new(&f.name))
        .map_err(|e| fail(&f.name, e.to_string()))?;
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    w.start_file(
        "main.py",
        SimpleFileOptions::default().unix_permissions(0o644),
    )
    .and_then(|()| {
        w.write_all(handler_code(f, seed).as_bytes())
            .map_err(Into::into)
    })
    .map_err(|e| fail(&f.name, e.to_string()))?;
    let zip = w
        .finish()
        .map_err(|e| fail(&f.name, e.to_string()))?
        .into_inner();
    Ok(Workload {
        name: f.name.clone(),
        function: f.name.clone(),
        manifest,
        zip,
    })
}

/// Deploys every function.
pub async fn deploy_all(c: &Client, ws: &[Workload]) -> Result<(), BenchError> {
    for w in ws {
        crate::driver::deploy(c, w, &|_| {}).await?;
    }
    Ok(())
}

/// Invokes each function once, then waits (at most `wait`) until every one has a snapshot
/// listed; returns each one's snapshot bytes, in the order of `ws`.
pub async fn snapshot_sizes(
    c: &Client,
    ws: &[Workload],
    wait: Duration,
    log: &(dyn Fn(&str) + Sync),
) -> Result<Vec<u64>, BenchError> {
    for w in ws {
        one(c, w, &w.manifest.bench_event(), "size").await?;
    }
    let t0 = Instant::now();
    loop {
        let listed = c
            .snapshots()
            .await
            .map_err(|e| fail("snapshot-cache", format!("listing snapshots: {e}")))?;
        let entries = listed["snapshots"].as_array().cloned().unwrap_or_default();
        let sizes: Vec<Option<u64>> = ws
            .iter()
            .map(|w| {
                entries
                    .iter()
                    .find(|s| s["function"] == w.function.as_str())
                    .and_then(|s| s["bytes"].as_u64())
            })
            .collect();
        let missing: Vec<&str> = ws
            .iter()
            .zip(&sizes)
            .filter(|(_, s)| s.is_none())
            .map(|(w, _)| w.function.as_str())
            .collect();
        if missing.is_empty() {
            return Ok(sizes.into_iter().flatten().collect());
        }
        if t0.elapsed() > wait {
            return Err(fail(
                "snapshot-cache",
                format!(
                    "no snapshot of {} was listed {} s after their first invocations; the \
                     functions' logs say why (raise --snapshot-wait if the machine is only slow)",
                    missing.join(", "),
                    wait.as_secs()
                ),
            ));
        }
        log(&format!("  waiting for {} snapshots", missing.len()));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Runs `sequence` (indices into `ws`) on every daemon of `clients`, request by request (the
/// daemons take turns, the first alternating, so that all see the same machine), each request
/// after stopping the function's instances so that none is warm. Returns each daemon's samples.
pub async fn run_interleaved(
    clients: &[Client],
    ws: &[Workload],
    sequence: &[usize],
    phase: &str,
) -> Result<Vec<Vec<Sample>>, BenchError> {
    let mut out = vec![Vec::with_capacity(sequence.len()); clients.len()];
    for (n, &i) in sequence.iter().enumerate() {
        let Some(w) = ws.get(i) else {
            return Err(fail("snapshot-cache", format!("no function {i}")));
        };
        for k in turns(clients.len(), n) {
            let c = &clients[k];
            c.stop_instances(&w.function)
                .await
                .map_err(|e| fail(&w.function, e.to_string()))?;
            out[k].push(one(c, w, &w.manifest.bench_event(), phase).await?);
        }
    }
    Ok(out)
}

/// The order in which `daemons` daemons serve request `n`: rotated by one each request.
pub fn turns(daemons: usize, n: usize) -> impl Iterator<Item = usize> {
    (0..daemons).map(move |k| (k + n) % daemons.max(1))
}

/// The sum over every label set of the Prometheus counter or gauge `name` in `text`.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let value = if rest.starts_with('{') {
                rest.rsplit_once('}')?.1
            } else if rest.starts_with(' ') {
                rest
            } else {
                return None;
            };
            value.split_whitespace().next()?.parse::<f64>().ok()
        })
        .sum()
}

/// `GET <base>/metrics` of a daemon at `http://host:port` (plain HTTP/1.0: the client crate
/// has no call for it).
pub async fn scrape_metrics(base: &str) -> Result<String, BenchError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let err = |d: String| fail("snapshot-cache", format!("reading {base}/metrics: {d}"));
    let host = base
        .strip_prefix("http://")
        .map(|h| h.trim_end_matches('/'))
        .ok_or_else(|| err("only http:// daemons can be scraped".into()))?;
    let read = async {
        let mut conn = tokio::net::TcpStream::connect(host).await?;
        conn.write_all(
            format!("GET /metrics HTTP/1.0\r\nHost: {host}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await?;
        let mut buf = Vec::new();
        conn.read_to_end(&mut buf).await?;
        std::io::Result::Ok(buf)
    };
    let buf = tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .map_err(|_| err("no answer in 30 s".into()))?
        .map_err(|e| err(e.to_string()))?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| err("an answer without headers".into()))?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        return Err(err(head.lines().next().unwrap_or_default().to_string()));
    }
    Ok(body.to_string())
}

/// The cache counters of a daemon's `/metrics`.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct CacheCounters {
    pub hits: f64,
    pub misses: f64,
    pub stale: f64,
    pub evictions: f64,
}

impl CacheCounters {
    pub fn parse(text: &str) -> CacheCounters {
        CacheCounters {
            hits: metric_sum(text, "ember_snapshot_hits_total"),
            misses: metric_sum(text, "ember_snapshot_misses_total"),
            stale: metric_sum(text, "ember_snapshot_stale_total"),
            evictions: metric_sum(text, "ember_snapshot_evictions_total"),
        }
    }

    /// What happened between `before` and `self`.
    pub fn since(&self, before: &CacheCounters) -> CacheCounters {
        CacheCounters {
            hits: self.hits - before.hits,
            misses: self.misses - before.misses,
            stale: self.stale - before.stale,
            evictions: self.evictions - before.evictions,
        }
    }
}

/// One policy's run over the measured requests.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyResult {
    pub policy: String,
    pub budget_bytes: u64,
    pub requests: usize,
    /// Requests served from a function snapshot (`Ember-Start: function-snapshot`).
    pub snapshot_starts: usize,
    /// snapshot_starts / requests.
    pub hit_ratio: f64,
    /// The daemon's counters over the measured requests.
    pub counters: CacheCounters,
    /// hits / (hits + misses + stale) of those counters.
    pub counter_hit_ratio: f64,
    /// The init time the hits skipped: the sum of their functions' `init_ms`, in seconds
    /// (what GDSF weighs; LRU does not).
    pub init_saved_s: f64,
    pub latency: Summary,
    /// Latency of the requests served from a snapshot, and of the others.
    pub hit_latency: Summary,
    pub miss_latency: Summary,
}

/// One policy's result; `fns` gives each function's init cost.
pub fn result(
    policy: &str,
    budget_bytes: u64,
    samples: &[Sample],
    counters: CacheCounters,
    fns: &[CacheFunction],
) -> PolicyResult {
    let lat = |f: &dyn Fn(&Sample) -> bool| -> Vec<f64> {
        samples
            .iter()
            .filter(|s| f(s))
            .map(|s| s.latency_ms)
            .collect()
    };
    let hit = |s: &Sample| s.path == "function-snapshot";
    let hits = samples.iter().filter(|s| hit(s)).count();
    let lookups = counters.hits + counters.misses + counters.stale;
    let init_saved_ms: u64 = samples
        .iter()
        .filter(|s| hit(s))
        .filter_map(|s| fns.iter().find(|f| f.name == s.workload))
        .map(|f| u64::from(f.init_ms))
        .sum();
    PolicyResult {
        policy: policy.to_string(),
        budget_bytes,
        requests: samples.len(),
        snapshot_starts: hits,
        hit_ratio: hits as f64 / samples.len().max(1) as f64,
        counters,
        counter_hit_ratio: if lookups > 0.0 {
            counters.hits / lookups
        } else {
            f64::NAN
        },
        init_saved_s: init_saved_ms as f64 / 1e3,
        latency: summarize(&lat(&|_| true)),
        hit_latency: summarize(&lat(&hit)),
        miss_latency: summarize(&lat(&|s| !hit(s))),
    }
}

pub fn table(results: &[PolicyResult], sizes: &[u64]) -> String {
    let mut s = String::new();
    let total: u64 = sizes.iter().sum();
    let mib = |b: u64| b as f64 / 1048576.0;
    let mut sorted = sizes.to_vec();
    sorted.sort_unstable();
    let _ = writeln!(
        s,
        "\nsnapshot cache: {} functions, snapshots {:.1} MiB in all (each {:.1}..{:.1} MiB, \
         median {:.1}); every request a non-warm start",
        sizes.len(),
        mib(total),
        mib(sorted.first().copied().unwrap_or(0)),
        mib(sorted.last().copied().unwrap_or(0)),
        mib(sorted.get(sorted.len() / 2).copied().unwrap_or(0)),
    );
    let _ = writeln!(
        s,
        "{:<6} {:>10} {:>6} {:>6} {:>8} {:>8} {:>6} {:>6} {:>6} {:>8} {:>9} {:>9} {:>9} {:>9}",
        "policy",
        "budget MiB",
        "reqs",
        "hits",
        "hit %",
        "metric %",
        "miss",
        "stale",
        "evict",
        "saved s",
        "p50 ms",
        "p99 ms",
        "hit p50",
        "miss p50"
    );
    for r in results {
        let _ = writeln!(
            s,
            "{:<6} {:>10.1} {:>6} {:>6} {:>7.1}% {:>7.1}% {:>6} {:>6} {:>6} {:>8.1} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
            r.policy,
            mib(r.budget_bytes),
            r.requests,
            r.snapshot_starts,
            r.hit_ratio * 100.0,
            r.counter_hit_ratio * 100.0,
            r.counters.misses,
            r.counters.stale,
            r.counters.evictions,
            r.init_saved_s,
            r.latency.p50_ms,
            r.latency.p99_ms,
            r.hit_latency.p50_ms,
            r.miss_latency.p50_ms
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipf_is_reproducible_skewed_and_in_range() {
        let a = zipf_sequence(50, 20_000, 1.0, 7);
        assert_eq!(a, zipf_sequence(50, 20_000, 1.0, 7));
        assert_ne!(a, zipf_sequence(50, 20_000, 1.0, 8));
        assert!(a.iter().all(|i| *i < 50));
        let mut counts = [0usize; 50];
        for i in &a {
            counts[*i] += 1;
        }
        counts.sort_unstable_by(|x, y| y.cmp(x));
        // Zipf(1) over 50: rank 1 has 1/H(50) = 22.2% of requests, rank 2 half that,
        // rank 50 1/50 of rank 1 (0.44%).
        let share = |c: usize| c as f64 / a.len() as f64;
        assert!((share(counts[0]) - 0.222).abs() < 0.015, "{counts:?}");
        assert!((share(counts[1]) - 0.111).abs() < 0.012, "{counts:?}");
        assert!(share(counts[49]) < 0.01, "{counts:?}");
        // s = 0 is uniform.
        let u = zipf_sequence(4, 8000, 0.0, 1);
        for f in 0..4 {
            let n = u.iter().filter(|i| **i == f).count();
            assert!((1800..2200).contains(&n), "{f}: {n}");
        }
        assert!(zipf_sequence(0, 10, 1.0, 1).is_empty());
    }

    #[test]
    fn popularity_is_shuffled_away_from_the_function_index() {
        let a = zipf_sequence(50, 5000, 1.0, 3);
        let top = (0..50)
            .max_by_key(|f| a.iter().filter(|i| *i == f).count())
            .unwrap();
        let b = zipf_sequence(50, 5000, 1.0, 4);
        let top_b = (0..50)
            .max_by_key(|f| b.iter().filter(|i| *i == f).count())
            .unwrap();
        assert!(top != 0 || top_b != 0, "rank 1 is always function 0");
    }

    #[test]
    fn daemons_take_turns_going_first() {
        let order = |n| turns(2, n).collect::<Vec<_>>();
        assert_eq!(
            (order(0), order(1), order(2)),
            (vec![0, 1], vec![1, 0], vec![0, 1])
        );
        assert_eq!(turns(3, 4).collect::<Vec<_>>(), [1, 2, 0]);
        assert_eq!(turns(0, 3).count(), 0);
    }

    #[test]
    fn functions_are_seeded_and_within_their_ranges() {
        let f = functions(50, 32, 300, 9, "p-");
        assert_eq!(f, functions(50, 32, 300, 9, "p-"));
        assert_eq!(f[3].name, "p-cache-03");
        assert!(f.iter().all(|f| (1..=32).contains(&f.data_mb)));
        assert!(f.iter().all(|f| (10..=300).contains(&f.init_ms)));
        assert!(f.iter().any(|f| f.data_mb >= 16) && f.iter().any(|f| f.data_mb <= 3));
        let code = handler_code(&f[0], 9);
        assert!(code.contains(&format!("randbytes({})", u64::from(f[0].data_mb) << 20)));
        let w = workload(&f[0], 9).unwrap();
        assert_eq!(w.function, "p-cache-00");
        assert_eq!(w.manifest.packages, Some(vec![]));
    }

    #[test]
    fn metrics_are_summed_over_labels_and_counted_between_two_scrapes() {
        let before = "# HELP ember_snapshot_hits_total x\n\
             # TYPE ember_snapshot_hits_total counter\n\
             ember_snapshot_hits_total{function=\"a\"} 3\n\
             ember_snapshot_hits_total{function=\"b\"} 2\n\
             ember_snapshot_hits_total_other 100\n\
             ember_snapshot_misses_total{function=\"a\"} 1\n\
             ember_snapshot_evictions_total 4\n";
        let after = "ember_snapshot_hits_total{function=\"a\"} 10\n\
             ember_snapshot_hits_total{function=\"b\"} 2\n\
             ember_snapshot_misses_total{function=\"a\"} 6\n\
             ember_snapshot_stale_total{function=\"a\"} 1\n\
             ember_snapshot_evictions_total 9\n";
        let b = CacheCounters::parse(before);
        assert_eq!(
            (b.hits, b.misses, b.stale, b.evictions),
            (5.0, 1.0, 0.0, 4.0)
        );
        let d = CacheCounters::parse(after).since(&b);
        assert_eq!(
            (d.hits, d.misses, d.stale, d.evictions),
            (7.0, 5.0, 1.0, 5.0)
        );
        let s = |p: &str, ms: f64| Sample {
            workload: "f-cache-00".into(),
            path: p.into(),
            phase: "zipf".into(),
            status: 200,
            latency_ms: ms,
            timing: String::new(),
            exec_ms: None,
        };
        let r = result(
            "gdsf",
            3 << 20,
            &[
                s("function-snapshot", 10.0),
                s("function-snapshot", 12.0),
                s("cold-boot", 300.0),
                s("function-snapshot", 11.0),
            ],
            d,
            &functions(1, 4, 100, 1, "f-"),
        );
        assert_eq!((r.snapshot_starts, r.hit_ratio), (3, 0.75));
        let init = f64::from(functions(1, 4, 100, 1, "f-")[0].init_ms);
        assert!((r.init_saved_s - 3.0 * init / 1e3).abs() < 1e-9);
        assert!((r.counter_hit_ratio - 7.0 / 13.0).abs() < 1e-9);
        assert_eq!((r.hit_latency.p50_ms, r.miss_latency.p50_ms), (11.0, 300.0));
        let t = table(&[r], &[1 << 20, 2 << 20, 6 << 20]);
        assert!(t.contains("gdsf"), "{t}");
        assert!(t.contains("75.0%"), "{t}");
        assert!(t.contains("9.0 MiB in all"), "{t}");
    }
}
